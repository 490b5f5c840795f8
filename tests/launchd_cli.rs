//! `daemonctl --backend launchd` against the launchctl simulator (named by
//! `DAEMON_LIFECYCLE_LAUNCHCTL`): the interface scripts drive (output,
//! JSON, exit codes), and a clear `BackendUnavailable` without launchd.
mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::launchd::{uid, Sim};
use support::{alive, Sandbox};

fn daemonctl(sb: &Sandbox, sim: Option<&Sim>, args: &[&str], config: &Path) -> Output {
    let mut cmd = Command::new(support::daemonctl());
    cmd.args(["--backend", "launchd", "--scope", "user"])
        .args(args)
        .arg(config)
        .env("HOME", sb.path("home"))
        .env_remove("DAEMON_LIFECYCLE_LAUNCHCTL");
    if let Some(sim) = sim {
        cmd.env("DAEMON_LIFECYCLE_LAUNCHCTL", &sim.launchctl);
    }
    support::output_within(&mut cmd, 60)
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn lifecycle_through_daemonctl() {
    let sb = Sandbox::new("lc_cli");
    let sim = Sim::new(&sb);
    let toml = sb.write_toml(&sb.config(&[]));
    let name = sb.tag.clone();
    let plist = sb
        .path("home")
        .join("Library/LaunchAgents")
        .join(format!("{name}.plist"));

    let out = daemonctl(&sb, Some(&sim), &["status", "--json"], &toml);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["backend"], "launchd");
    assert_eq!(json(&out)["state"], "stopped");

    let out = daemonctl(&sb, Some(&sim), &["start"], &toml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    assert!(plist.exists(), "written to $HOME/Library/LaunchAgents");

    let out = daemonctl(&sb, Some(&sim), &["status", "--json"], &toml);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        json(&out),
        serde_json::json!({"name": name, "backend": "launchd", "state": "running", "pid": pid,
            "reason": null, "status_text": null, "restarts": 0, "uptime_secs": null, "last_exit": null,
            "problem": null, "drift": false, "last_watchdog_ping_ms": null})
    );
    let out = daemonctl(&sb, Some(&sim), &["status"], &toml);
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.contains("running") && line.contains("[launchd]"),
        "{line}"
    );

    let out = daemonctl(&sb, Some(&sim), &["restart"], &toml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid2: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid, pid2);

    assert!(daemonctl(&sb, Some(&sim), &["stop"], &toml)
        .status
        .success());
    assert!(!alive(pid2));
    assert_eq!(
        daemonctl(&sb, Some(&sim), &["status"], &toml).status.code(),
        Some(3)
    );

    // `run` is the fork backend's.
    let out = daemonctl(&sb, Some(&sim), &["run"], &toml);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("launchd supervises"));

    // install writes (and enables) without loading; uninstall removes it.
    let out = daemonctl(&sb, Some(&sim), &["install", "--enable"], &toml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(plist.exists());
    assert!(sim.print(&format!("gui/{}/{name}", uid())).is_none());
    let out = daemonctl(&sb, Some(&sim), &["uninstall"], &toml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!plist.exists());
    let out = daemonctl(&sb, Some(&sim), &["uninstall"], &toml);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to uninstall"));
    drop(sim);
    sb.assert_no_leaks();
}

#[test]
fn without_launchd_the_backend_is_unavailable() {
    let sb = Sandbox::new("lc_none");
    let toml = sb.write_toml(&sb.config(&[]));
    for command in ["start", "status", "stop", "uninstall"] {
        let out = daemonctl(&sb, None, &[command], &toml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if cfg!(target_os = "macos") {
            continue;
        }
        assert!(!out.status.success(), "{command}");
        assert!(
            stderr.contains("backend launchd is not available")
                && stderr.contains("DAEMON_LIFECYCLE_LAUNCHCTL"),
            "{command}: {stderr}"
        );
    }
    // A launchctl that is not there: the same error, naming it.
    let mut cmd = Command::new(support::daemonctl());
    cmd.args(["--backend", "launchd", "--scope", "user", "start"])
        .arg(&toml)
        .env("DAEMON_LIFECYCLE_LAUNCHCTL", sb.path("no-such-launchctl"));
    let out = support::output_within(&mut cmd, 30);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("backend launchd is not available") && stderr.contains("no-such-launchctl"),
        "{stderr}"
    );
    // auto never picks launchd.
    let out = support::output_within(
        Command::new(support::daemonctl())
            .args(["--backend", "auto", "status", "--json"])
            .arg(&toml)
            .env("DAEMON_LIFECYCLE_LAUNCHCTL", "/bin/true"),
        30,
    );
    assert_ne!(json(&out)["backend"], "launchd");
    // Rendering needs no launchd.
    let out = daemonctl(&sb, None, &["render", "--format", "launchd"], &toml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sb.assert_no_leaks();
}
