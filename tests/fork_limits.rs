//! Resource limits and user/group on the fork backend: applied between fork
//! and exec (setrlimit, setgroups, setgid, setuid); refused up front when the
//! caller may not grant them.
mod support;

use std::process::Command;
use std::time::Duration;

use daemon_lifecycle::DaemonError;
use support::{eventually, within, Sandbox};

async fn dump(sb: &Sandbox, path: &std::path::Path) -> serde_json::Value {
    let _ = sb;
    eventually(10, || async {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    })
    .await
}

#[tokio::test]
async fn rlimits_reach_the_daemon() {
    let sb = Sandbox::new("limits_rlimit");
    let out = sb.path("limits.json");
    let mut cfg = sb.config(&["--dump-limits", out.to_str().unwrap()]);
    cfg.limits.nofile = Some(256);
    cfg.limits.cpu_secs = Some(3600);
    cfg.limits.memory_bytes = Some(8 << 30);
    cfg.limits.processes = Some(4096);
    let m = sb.manager(cfg);
    within(20, m.start()).await.unwrap();
    let d = dump(&sb, &out).await;
    assert_eq!(d["nofile"], serde_json::json!([256, 256]));
    assert_eq!(d["cpu"], serde_json::json!([3600, 3600]));
    assert_eq!(d["as"], serde_json::json!([8u64 << 30, 8u64 << 30]));
    assert_eq!(d["nproc"], serde_json::json!([4096, 4096]));
    within(20, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

/// The numeric groups `id -G USER` reports (the group database's view).
fn id_groups(user: &str) -> Vec<u64> {
    let out = Command::new("id").args(["-G", user]).output().unwrap();
    let mut g: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    g.sort();
    g
}

#[tokio::test]
async fn root_drops_to_nobody_with_its_groups_and_notify_still_works() {
    if !support::have_root("switching to another user") {
        return;
    }
    let sb = Sandbox::new("limits_user");
    // nobody must be able to write its dump into the sandbox.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = sb.path("ids.json");
    let mut cfg = sb.config(&[
        "--dump-limits",
        out.to_str().unwrap(),
        "--ready-after",
        "100",
    ]);
    cfg.user = Some("nobody".into());
    cfg.readiness = Some(daemon_lifecycle::Readiness::Notify);
    let m = sb.manager(cfg);
    // READY=1 arrives from the unprivileged daemon: the socket was handed over.
    within(20, m.start()).await.unwrap();
    let d = dump(&sb, &out).await;
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(d["uid"], nobody.uid.as_raw());
    assert_eq!(d["euid"], nobody.uid.as_raw());
    assert_eq!(d["gid"], nobody.gid.as_raw());
    let mut groups: Vec<u64> = d["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    groups.sort();
    groups.dedup();
    assert_eq!(groups, id_groups("nobody"), "supplementary groups");
    assert!(!groups.contains(&0), "root's group 0 kept");
    assert_eq!(d["env_user"], "nobody");
    within(20, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn unknown_user_or_group_is_refused_before_anything_starts() {
    let sb = Sandbox::new("limits_unknown");
    let mut cfg = sb.config(&[]);
    cfg.user = Some("no-such-user-dltest".into());
    let m = sb.manager(cfg);
    let err = within(10, m.start()).await.unwrap_err();
    assert!(
        matches!(&err, DaemonError::InvalidConfig { field, .. } if field == "user"),
        "{err:?}"
    );
    let mut cfg = sb.config(&[]);
    cfg.group = Some("no-such-group-dltest".into());
    let err = within(10, sb.manager(cfg).start()).await.unwrap_err();
    assert!(
        matches!(&err, DaemonError::InvalidConfig { field, .. } if field == "group"),
        "{err:?}"
    );
    assert_eq!(std::fs::read_dir(sb.dir.path()).unwrap().count(), 0);
    sb.assert_no_leaks();
}

#[test]
fn non_root_asking_for_another_user_or_a_higher_limit_is_permission_denied() {
    let sb = Sandbox::new("limits_nonroot");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let run_as_nobody = |cfg: &daemon_lifecycle::DaemonConfig| {
        let toml = sb.write_toml(cfg);
        std::fs::set_permissions(&toml, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut cmd = support::daemonctl_unprivileged();
        cmd.args(["--backend", "fork", "start"])
            .arg(&toml)
            .output()
            .unwrap()
    };
    let mut cfg = sb.config(&[]);
    cfg.user = Some("root".into());
    let out = run_as_nobody(&cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");

    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    // `rlim_t` is u64 on Linux and macOS, i64 on FreeBSD.
    #[allow(clippy::useless_conversion)]
    let hard = u64::try_from(hard).unwrap_or(u64::MAX);
    if hard < u64::MAX / 2 {
        let mut cfg = sb.config(&[]);
        cfg.limits.nofile = Some(hard + 1);
        // As root the hard limit can be raised; as nobody it cannot.
        let out = run_as_nobody(&cfg);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!sb.path("daemon.pid").exists());
    std::thread::sleep(Duration::from_millis(100));
    sb.assert_no_leaks();
}
