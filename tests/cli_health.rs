//! Issue 15 through `daemonctl`: a liveness probe keeps working after the
//! `daemonctl` that started the daemon has exited (the fork supervisor
//! runs it; on systemd, a helper inside the unit), and `reload` of a
//! stopped daemon is a clear error with exit code 7.
mod support;

use std::process::{Command, Output};

use daemon_lifecycle::{DaemonConfig, RestartPolicy};
use support::systemd::UserManager;
use support::{eventually, free_addr, Sandbox};

fn daemonctl(
    backend: &[&str],
    um: Option<&UserManager>,
    args: &[&str],
    toml: &std::path::Path,
) -> Output {
    let mut cmd = Command::new(support::daemonctl());
    cmd.args(backend)
        .args(args)
        .arg(toml)
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    if let Some(um) = um {
        cmd.envs(um.env());
    }
    cmd.output().unwrap()
}

/// An HTTP daemon with a liveness probe on `/health` (100 ms apart, 3
/// failures), which fails once the test writes a count into `fail`.
fn config(sb: &Sandbox, fail: &str) -> DaemonConfig {
    let addr = free_addr();
    let mut config = sb.config(&["--http", &addr, "--health-fail-file", fail]);
    config.liveness = Some(
        toml::from_str(&format!(
            "kind = \"http\"\nurl = \"http://{addr}/health\"\ninterval_ms = 100"
        ))
        .unwrap(),
    );
    config.restart.policy = RestartPolicy::Never;
    config
}

async fn probe_outlives_daemonctl(backend: &[&str], um: Option<&UserManager>, sb: &Sandbox) {
    let fail = sb.path("fail").to_str().unwrap().to_owned();
    let toml = sb.write_toml(&config(sb, &fail));
    let out = daemonctl(backend, um, &["start"], &toml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // That daemonctl has exited (output() waited for it); no daemonctl of
    // ours runs from here on but the short `status` calls.
    std::fs::write(&fail, "1000000\n").unwrap();
    let status = || {
        let out = daemonctl(backend, um, &["status", "--json"], &toml);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let report = eventually(30, || async {
        let v = status();
        (v["state"] == "failed").then_some(v)
    })
    .await;
    let reason = report["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.starts_with("liveness probe failed: GET http://")
            && reason.ends_with("/health: status 500 Internal Server Error"),
        "{report}"
    );
    let out = daemonctl(backend, um, &["cleanup"], &toml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A stopped daemon cannot reload: exit 7, saying so.
    let out = daemonctl(backend, um, &["reload"], &toml);
    assert_eq!(out.status.code(), Some(7));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not running (stopped)"), "{stderr}");
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_liveness_probe_outlives_daemonctl_on_the_fork_backend() {
    let sb = Sandbox::new("cli_live_fork");
    probe_outlives_daemonctl(&["--backend", "fork"], None, &sb).await;
}

#[tokio::test]
async fn a_liveness_probe_outlives_daemonctl_on_systemd() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("cli_live_sd");
    probe_outlives_daemonctl(&["--backend", "systemd", "--scope", "user"], Some(&um), &sb).await;
}
