//! `daemonctl --backend systemd`: the same demo as on the fork backend, on a
//! real (private) user manager; plus render/install/uninstall and the errors.
mod support;

use std::process::{Command, Output};

use support::systemd::UserManager;
use support::{alive, Sandbox};

fn daemonctl(um: Option<&UserManager>, args: &[&str], config: &std::path::Path) -> Output {
    let mut cmd = Command::new(support::daemonctl());
    cmd.args(args)
        .arg(config)
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    if let Some(um) = um {
        cmd.envs(um.env());
    }
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test]
async fn demo_on_systemd_and_auto_picks_it() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_cli");
    let toml = sb.write_toml(&sb.config(&[]));
    let sd = ["--backend", "systemd", "--scope", "user"];
    fn with<'a>(sd: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
        [sd, cmd].concat()
    }

    let pid: u32 = stdout(&daemonctl(Some(&um), &with(&sd, &["start"]), &toml))
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    let out = daemonctl(Some(&um), &with(&sd, &["status", "--json"]), &toml);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["backend"], "systemd");
    assert_eq!(v["state"], "running");
    assert_eq!(v["pid"], pid);
    // auto finds the same manager for the user scope.
    let out = daemonctl(Some(&um), &["--scope", "user", "status", "--json"], &toml);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["backend"], "systemd");
    assert_eq!(v["pid"], pid);

    stdout(&daemonctl(Some(&um), &with(&sd, &["stop"]), &toml));
    assert!(!alive(pid));
    let out = daemonctl(Some(&um), &with(&sd, &["status"]), &toml);
    assert_eq!(out.status.code(), Some(3));
    sb.assert_no_leaks();
}

/// A start that is not ready within TimeoutStartSec: exit 150, and
/// `status` says what the fork backend says (`failed: not ready within
/// 2 s`), from systemd's own `Result=timeout`.
#[tokio::test]
async fn not_ready_in_time_is_failed_as_on_fork() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_cli_not_ready");
    let mut config = sb.config(&["--status", "loading the model"]);
    config.startup_timeout_secs = 2;
    config.readiness = Some(daemon_lifecycle::Readiness::Notify);
    let toml = sb.write_toml(&config);
    let sd = ["--backend", "systemd", "--scope", "user"];
    let out = daemonctl(Some(&um), &[&sd[..], &["start"]].concat(), &toml);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(150), "{stderr}");
    assert!(stderr.contains("not ready within 2 s"), "{stderr}");
    let out = daemonctl(Some(&um), &[&sd[..], &["status", "--json"]].concat(), &toml);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "systemd", "{v}");
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["reason"], "not ready within 2 s", "{v}");
    assert_eq!(v["status_text"], "loading the model", "{v}");
    stdout(&daemonctl(
        Some(&um),
        &[&sd[..], &["cleanup"]].concat(),
        &toml,
    ));
    let out = daemonctl(Some(&um), &[&sd[..], &["status", "--json"]].concat(), &toml);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "stopped", "{v}");
    sb.assert_no_leaks();
}

#[tokio::test]
async fn render_install_uninstall() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_cli_install");
    let toml = sb.write_toml(&sb.config(&[]).with_env("PCT", "100%"));
    let text = stdout(&daemonctl(
        None,
        &["--scope", "user", "render", "--format", "systemd"],
        &toml,
    ));
    assert!(
        text.contains("[Service]") && text.contains("Environment=\"PCT=100%%\""),
        "{text}"
    );
    assert!(text.contains("WantedBy=default.target"));

    let unit_dir = um.unit_dir();
    let dir = unit_dir.to_str().unwrap();
    stdout(&daemonctl(
        Some(&um),
        &["--scope", "user", "install", "--enable", "--unit-dir", dir],
        &toml,
    ));
    let unit = format!("{}.service", sb.tag);
    assert_eq!(std::fs::read_to_string(unit_dir.join(&unit)).unwrap(), text);
    stdout(&daemonctl(
        Some(&um),
        &["--scope", "user", "install", "--unit-dir", dir],
        &toml,
    ));
    let pid: u32 = stdout(&daemonctl(
        Some(&um),
        &["--backend", "systemd", "--scope", "user", "start"],
        &toml,
    ))
    .trim()
    .parse()
    .unwrap();
    assert!(alive(pid));
    stdout(&daemonctl(
        Some(&um),
        &["--scope", "user", "uninstall", "--unit-dir", dir],
        &toml,
    ));
    assert!(!unit_dir.join(&unit).exists());
    assert!(!alive(pid));
    sb.assert_no_leaks();
}

#[test]
fn unreachable_bus_is_a_clear_error_never_a_fallback() {
    let sb = Sandbox::new("sd_cli_nobus");
    let toml = sb.write_toml(&sb.config(&[]));
    let no_bus = format!("unix:path={}", sb.path("no-bus").display());
    let run = |args: &[&str]| {
        Command::new(support::daemonctl())
            .args(args)
            .arg(&toml)
            .env("DBUS_SESSION_BUS_ADDRESS", &no_bus)
            .output()
            .unwrap()
    };
    let out = run(&["--backend", "systemd", "--scope", "user", "start"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("systemd") && stderr.contains("not available") && stderr.contains("no-bus"),
        "{stderr}"
    );
    assert!(sb.processes().is_empty(), "something was started");
    // status: LSB "unknown".
    let out = run(&["--backend", "systemd", "--scope", "user", "status"]);
    assert_eq!(out.status.code(), Some(4));
    // auto with no manager: the fork backend.
    let out = run(&["--scope", "user", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "fork");
    sb.assert_no_leaks();
}

/// Issue 8: `user =` in a user-scope config is a config error (LSB 6,
/// naming the field) even when no session bus answers; the bus error used
/// to hide it.
#[test]
fn user_in_a_user_scope_config_is_a_config_error_without_a_bus() {
    let sb = Sandbox::new("sd_cli_user_nobus");
    let mut config = sb.config(&[]);
    config.user = Some("nobody".into());
    let toml = sb.write_toml(&config);
    let no_bus = format!("unix:path={}", sb.path("no-bus").display());
    for cmd in ["start", "stop", "status", "install", "uninstall"] {
        let out = Command::new(support::daemonctl())
            .args(["--backend", "systemd", "--scope", "user", cmd])
            .arg(&toml)
            .env("DBUS_SESSION_BUS_ADDRESS", &no_bus)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = if cmd == "status" { 4 } else { 6 };
        assert_eq!(out.status.code(), Some(want), "{cmd}: {stderr}");
        assert!(
            stderr.contains("`user`") && !stderr.contains("no-bus"),
            "{cmd}: {stderr}"
        );
    }
    assert!(sb.processes().is_empty(), "something was started");
}
