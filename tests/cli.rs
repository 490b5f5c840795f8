//! `daemonctl`: the exact interface scripts drive (output, JSON, exit codes).
mod support;

use std::process::{Command, Output};

use daemon_lifecycle::DaemonStatus;
use support::{alive, Sandbox};

fn daemonctl(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(support::daemonctl())
        .args(args)
        .arg(config)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn lifecycle_output_and_exit_codes() {
    let sb = Sandbox::new("cli_lifecycle");
    let toml = sb.write_toml(&sb.config(&[]));
    let name = sb.tag.clone();

    // Stopped: exit 3, JSON with nulls.
    let out = daemonctl(&["status", "--json"], &toml);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        json(&out),
        serde_json::json!({"name": name, "backend": "fork", "state": "stopped", "pid": null, "reason": null,
            "status_text": null, "restarts": 0, "uptime_secs": null, "last_exit": null, "problem": null, "drift": null,
            "last_watchdog_ping_ms": null})
    );

    // start prints the PID and nothing else.
    let out = daemonctl(&["start"], &toml);
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

    let out = daemonctl(&["status", "--json"], &toml);
    assert_eq!(out.status.code(), Some(0));
    let mut v = json(&out);
    // Seconds up: 0 or 1 this soon after the start.
    let uptime = v.as_object_mut().unwrap().remove("uptime_secs").unwrap();
    assert!(uptime.as_u64().is_some_and(|s| s < 5), "{uptime}");
    assert_eq!(
        v,
        serde_json::json!({"name": name, "backend": "fork", "state": "running", "pid": pid, "reason": null,
            "status_text": null, "restarts": 0, "last_exit": null, "problem": null, "drift": null,
            "last_watchdog_ping_ms": null})
    );
    let out = daemonctl(&["status"], &toml);
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line.lines().count(), 1);
    assert!(
        line.contains("running") && line.contains(&pid.to_string()),
        "{line}"
    );

    assert!(daemonctl(&["wait-ready", "--timeout", "5"], &toml)
        .status
        .success());

    let out = daemonctl(&["restart"], &toml);
    assert!(out.status.success());
    let new_pid: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, pid);

    let out = daemonctl(&["stop"], &toml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert!(!alive(new_pid));
    assert_eq!(daemonctl(&["status"], &toml).status.code(), Some(3));
    // wait-ready on a stopped daemon: LSB "not running".
    let out = daemonctl(&["wait-ready"], &toml);
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    sb.assert_no_leaks();
}

#[test]
fn failed_and_stale_states() {
    let sb = Sandbox::new("cli_states");
    let toml = sb.write_toml(&sb.config(&["--exit-code", "3"]));
    assert!(daemonctl(&["start"], &toml).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let out = loop {
        let out = daemonctl(&["status", "--json"], &toml);
        if json(&out)["state"] != "running" || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(out.status.code(), Some(3));
    let v = json(&out);
    assert_eq!(v["state"], "failed");
    assert_eq!(v["pid"], serde_json::Value::Null);
    assert!(v["reason"].as_str().unwrap().contains("code 3"), "{v}");
    assert!(daemonctl(&["cleanup"], &toml).status.success());
    assert_eq!(
        json(&daemonctl(&["status", "--json"], &toml))["state"],
        "stopped"
    );

    // Stale: a PID file naming an unrelated process; exit 1.
    let mut bystander = Command::new("/bin/sleep").arg("300").spawn().unwrap();
    std::fs::write(sb.path("daemon.pid"), format!("{}\n", bystander.id())).unwrap();
    let out = daemonctl(&["status", "--json"], &toml);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["state"], "stale");
    assert_eq!(v["pid"], bystander.id());
    assert!(v["reason"].is_string());
    assert!(daemonctl(&["kill"], &toml).status.success());
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "kill signalled a stranger"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    sb.assert_no_leaks();
}

#[test]
fn systemd_backend_is_a_clear_error_and_bad_backend_is_usage() {
    let sb = Sandbox::new("cli_backend");
    let toml = sb.write_toml(&sb.config(&[]));
    let out = daemonctl(&["--backend", "systemd", "start"], &toml);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("systemd") && stderr.contains("not available"),
        "{stderr}"
    );
    assert_eq!(
        daemonctl(&["--backend", "systemd", "status"], &toml)
            .status
            .code(),
        Some(4)
    );

    let out = daemonctl(&["--backend", "upstart", "start"], &toml);
    assert_eq!(out.status.code(), Some(2));
    assert!(sb.processes().is_empty());
    sb.assert_no_leaks();
}

#[test]
fn verbose_flag_shows_tracing_events() {
    let sb = Sandbox::new("cli_verbose");
    let toml = sb.write_toml(&sb.config(&[]));
    let out = Command::new(support::daemonctl())
        .args(["-v", "start"])
        .arg(&toml)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("op=\"start\"") || stderr.contains("op=start"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&sb.tag) && stderr.contains("elapsed_ms"),
        "{stderr}"
    );
    assert!(daemonctl(&["stop"], &toml).status.success());
    sb.assert_no_leaks();
}

/// Issue 9: rendering needs only the pure checks, so a packager renders a
/// unit for a binary that is not installed on the build machine; status and
/// stop need no binary either (an upgrade may have removed it), while a
/// start asks the host and changes nothing when it cannot.
#[test]
fn render_status_and_stop_need_no_installed_binary() {
    let sb = Sandbox::new("cli_uninstalled");
    let mut config = sb.config(&[]);
    config.binary_path = "/usr/bin/queen-rbee-not-installed".into();
    config.name = Some(sb.tag.clone());
    let toml = sb.write_toml(&config);

    let out = daemonctl(
        &["--scope", "system", "render", "--format", "systemd"],
        &toml,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = String::from_utf8(out.stdout).unwrap();
    assert!(
        unit.lines()
            .any(|l| l.starts_with("ExecStart=\"/usr/bin/queen-rbee-not-installed\" ")),
        "{unit}"
    );

    let out = daemonctl(&["--backend", "fork", "status"], &toml);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = daemonctl(&["--backend", "fork", "stop"], &toml);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = daemonctl(&["--backend", "fork", "start"], &toml);
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("queen-rbee-not-installed"), "{err}");
    assert!(!config.effective_pid_file().exists());
    sb.assert_no_leaks();
}

#[test]
fn help_lists_and_explains_backend_and_scope_values() {
    let out = Command::new(support::daemonctl())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    // Each possible value on its own line with what it means.
    for (value, meaning) in [
        ("auto", "the fork backend otherwise"),
        ("fork", "fork/PID-file backend"),
        ("systemd", "never a silent fallback"),
        ("launchd", "never chosen by auto"),
        ("system", "system bus"),
        ("user", "session bus"),
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("- {value}:")) && l.contains(meaning)),
            "no line for {value}: {help}"
        );
    }

    // A bad value is a usage error that names the choices, before any config is read.
    for (flag, listed) in [
        (
            "--backend",
            "[possible values: auto, fork, systemd, launchd]",
        ),
        ("--scope", "[possible values: system, user]"),
    ] {
        let out = Command::new(support::daemonctl())
            .args([flag, "bogus", "status", "/nonexistent.toml"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(listed), "{stderr}");
    }
}

#[test]
fn what_a_backend_cannot_do_is_unsupported_exit_3() {
    let sb = Sandbox::new("cli_unsupported");
    let toml = sb.write_toml(&sb.config(&[]));
    let units = sb.path("units");
    std::fs::create_dir(&units).unwrap();
    let units = units.to_str().unwrap();
    for (args, backend, operation) in [
        (vec!["--backend", "systemd", "run"], "systemd", "run"),
        (
            vec!["--backend", "fork", "install", "--unit-dir", units],
            "fork",
            "install",
        ),
        (
            vec!["--backend", "fork", "uninstall", "--unit-dir", units],
            "fork",
            "uninstall",
        ),
    ] {
        let out = daemonctl(&args, &toml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // LSB: 3 = unimplemented feature.
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "the {backend} backend does not support {operation}: "
            )),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
    assert!(sb.processes().is_empty(), "something was started");
    assert_eq!(std::fs::read_dir(sb.path("units")).unwrap().count(), 0);
    sb.assert_no_leaks();
}

/// `status --json` is the library's `StatusReport` serialized: the same
/// object, key for key, in every state.
#[tokio::test]
async fn status_json_is_the_serialized_report() {
    let sb = Sandbox::new("cli_json_report");
    let config = sb.config(&[]);
    let toml = sb.write_toml(&config);
    let manager = sb.manager(config);
    let same = |what: &str, cli: serde_json::Value, report: daemon_lifecycle::StatusReport| {
        let lib = serde_json::to_value(&report).unwrap();
        // The uptime may tick between the two looks; the rest is equal.
        let without_uptime = |v: &serde_json::Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("uptime_secs");
            v
        };
        assert_eq!(without_uptime(&cli), without_uptime(&lib), "{what}");
        // Every key, always; the state's keys flattened in.
        let keys: Vec<&str> = lib
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "name",
                "backend",
                "state",
                "pid",
                "reason",
                "status_text",
                "restarts",
                "uptime_secs",
                "last_exit",
                "problem",
                "drift",
                "last_watchdog_ping_ms"
            ],
            "{what}"
        );
        assert_eq!(lib["state"], report.status.state_name(), "{what}");
        assert_eq!(lib["pid"], serde_json::json!(report.status.pid()), "{what}");
    };

    let cli = json(&daemonctl(&["status", "--json"], &toml));
    same("stopped", cli, manager.status_report().await.unwrap());

    assert!(daemonctl(&["start"], &toml).status.success());
    let cli = json(&daemonctl(&["status", "--json"], &toml));
    same("running", cli, manager.status_report().await.unwrap());

    assert!(daemonctl(&["kill"], &toml).status.success());
    let cli = json(&daemonctl(&["status", "--json"], &toml));
    same("killed", cli, manager.status_report().await.unwrap());

    // Failed, with a reason and the last exit in words.
    let failing = sb.config(&["--exit-code", "3"]);
    let toml = sb.write_toml(&failing);
    let manager = sb.manager(failing);
    assert!(daemonctl(&["start"], &toml).status.success());
    let report = support::eventually(10, || async {
        let r = manager.status_report().await.unwrap();
        matches!(r.status, DaemonStatus::Failed(_)).then_some(r)
    })
    .await;
    let cli = json(&daemonctl(&["status", "--json"], &toml));
    assert_eq!(cli["last_exit"], "exited with code 3", "{cli}");
    assert!(cli["reason"].as_str().unwrap().contains("code 3"), "{cli}");
    same("failed", cli, report);
    assert!(daemonctl(&["cleanup"], &toml).status.success());

    let mut bystander = Command::new("/bin/sleep").arg("300").spawn().unwrap();
    std::fs::write(sb.path("daemon.pid"), format!("{}\n", bystander.id())).unwrap();
    let cli = json(&daemonctl(&["status", "--json"], &toml));
    same("stale", cli, manager.status_report().await.unwrap());
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    sb.assert_no_leaks();
}
