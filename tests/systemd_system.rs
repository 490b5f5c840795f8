//! System scope, the production case: a real systemd in system mode (PID 1 of
//! its own namespaces), driven over its system bus from this process.
mod support;

use std::os::unix::fs::PermissionsExt;

use daemon_lifecycle::{BusTarget, DaemonManager, DaemonStatus, Scope, SystemdBackend, UnitSpec};
use support::systemd::SystemManager;
use support::{eventually, within, Sandbox};

#[tokio::test]
async fn persistent_unit_as_nobody_over_the_system_bus() {
    let Some(sm) = SystemManager::start() else {
        return;
    };
    let sb = Sandbox::new("sd_system");
    // The daemon runs as nobody: it must be able to write its dump here.
    let out = sb.path("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dump = out.join("dump.json");
    let mut config = sb.config(&["--dump", dump.to_str().unwrap()]);
    config.user = Some("nobody".into());
    config.scope = Some(Scope::System);
    let unit = UnitSpec::from_config(&config, Scope::System).unwrap().unit;

    // The harness binds sm.unit_dir over its /etc/systemd/system.
    let backend =
        SystemdBackend::connect_to(&BusTarget::Address(sm.bus_address.clone()), Scope::System)
            .await
            .unwrap()
            .with_path_seen_as(&sm.unit_dir, "/etc/systemd/system");
    assert!(within(
        30,
        backend.install(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&sm.unit_dir),
            true
        )
    )
    .await
    .unwrap());
    let unit_file = sm.unit_dir.join(&unit);
    assert!(std::fs::read_to_string(&unit_file)
        .unwrap()
        .contains("\nUser=nobody\n"));
    // (The link points at /etc/systemd/system as systemd sees it: do not follow it.)
    let wants = sm.unit_dir.join("multi-user.target.wants").join(&unit);
    assert!(wants.symlink_metadata().is_ok(), "not enabled");

    let m = DaemonManager::with_backend(config.clone(), std::sync::Arc::new(backend.clone()));
    let pid = within(30, m.start()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    let text = eventually(10, || async { std::fs::read_to_string(&dump).ok() }).await;
    let dumped: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dumped["uid"], 65534, "User=nobody not honoured: {dumped}");
    // systemd runs in its own PID namespace: the PID it reports is its own.
    assert_eq!(dumped["pid"], pid);

    within(30, m.stop()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    within(
        30,
        backend.uninstall(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&sm.unit_dir),
        ),
    )
    .await
    .unwrap();
    assert!(!unit_file.exists());
    assert!(wants.symlink_metadata().is_err(), "still enabled");
    sb.assert_no_leaks();
}

/// A caller the system manager refuses (not root, no polkit rule) gets
/// `PermissionDenied` naming the action, and nothing is started.
#[test]
fn unprivileged_caller_gets_permission_denied() {
    let Some(sm) = SystemManager::start() else {
        return;
    };
    let sb = Sandbox::new("sd_system_denied");
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = sb.config(&[]);
    config.scope = Some(Scope::System);
    let toml = sb.write_toml(&config);
    std::fs::set_permissions(&toml, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The bus socket lives under the harness's temp dir: let nobody reach it.
    sm.open_bus_to_everyone();
    // Run as root, the tests reach nobody through setpriv (CI is root).
    let out = support::daemonctl_unprivileged()
        .args(["--backend", "systemd", "--scope", "system", "start"])
        .arg(&toml)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &sm.bus_address)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("permission denied") && stderr.contains("StartTransientUnit"),
        "{stderr}"
    );
    assert!(sb.processes().is_empty());
    sb.assert_no_leaks();
}

/// Issue 8: an unknown `user`/`group` used to create a unit that failed
/// with exit 217/216, naming nothing. Now it is refused before anything is
/// written or sent, naming the field.
#[tokio::test]
async fn an_unknown_user_or_group_is_refused_before_any_unit_exists() {
    let Some(sm) = SystemManager::start() else {
        return;
    };
    let sb = Sandbox::new("sd_system_nouser");
    let backend =
        SystemdBackend::connect_to(&BusTarget::Address(sm.bus_address.clone()), Scope::System)
            .await
            .unwrap();
    for (field, user, group) in [
        ("user", Some("no-such-user-dl8"), None),
        ("group", None, Some("no-such-group-dl8")),
    ] {
        let mut config = sb.config(&[]);
        config.scope = Some(Scope::System);
        config.user = user.map(str::to_owned);
        config.group = group.map(str::to_owned);
        let unit = UnitSpec::from_config(&config, Scope::System).unwrap().unit;
        let m = DaemonManager::with_backend(config.clone(), std::sync::Arc::new(backend.clone()));
        let err = within(30, m.start()).await.unwrap_err();
        assert!(
            matches!(&err, daemon_lifecycle::DaemonError::InvalidConfig { field: f, .. } if f == field),
            "{err:?}"
        );
        let err = within(
            30,
            backend.install(
                &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
                Some(&sm.unit_dir),
                true,
            ),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, daemon_lifecycle::DaemonError::InvalidConfig { field: f, .. } if f == field),
            "{err:?}"
        );
        assert!(!sm.unit_dir.join(&unit).exists(), "a unit file was written");
        assert_eq!(
            m.status().await.unwrap(),
            DaemonStatus::Stopped,
            "a unit was created"
        );
    }
    sb.assert_no_leaks();
}

/// Issue 8 on the system manager: a transient unit keeps its argv and
/// environment byte for byte across a daemon-reload, and a crash is still
/// restarted (the manager runs in its own mount namespace: the backend is
/// told where its /run is).
#[tokio::test]
async fn a_transient_system_unit_survives_daemon_reload() {
    let Some(sm) = SystemManager::start() else {
        return;
    };
    let sb = Sandbox::new("sd_system_reload");
    let dump = sb.path("dump.json");
    let mut config = sb.config(&["--dump", dump.to_str().unwrap(), "--"]);
    config
        .args
        .extend(["$HOME ${HOME} $$", ";", "a;b", "100% %n", "q\"uote\\"].map(String::from));
    config = config.with_env("HOSTILE", "v$1 ${X} %n \"q\" ;");
    config.scope = Some(Scope::System);
    config.restart.policy = daemon_lifecycle::RestartPolicy::Always;
    config.restart.delay_ms = 100;
    let unit = UnitSpec::from_config(&config, Scope::System).unwrap().unit;
    let backend =
        SystemdBackend::connect_to(&BusTarget::Address(sm.bus_address.clone()), Scope::System)
            .await
            .unwrap()
            .with_path_seen_as(&sm.run_dir, "/run");
    let m = DaemonManager::with_backend(config.clone(), std::sync::Arc::new(backend));
    let pid = within(30, m.start()).await.unwrap();
    let read = || async {
        let text = eventually(10, || async { std::fs::read_to_string(&dump).ok() }).await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v
    };
    let check = |v: &serde_json::Value, how: &str| {
        let argv: Vec<String> = serde_json::from_value(v["argv"].clone()).unwrap();
        assert_eq!(argv[1..], config.args[..], "{how}: argv differs");
        assert_eq!(
            v["env"]["HOSTILE"], config.env["HOSTILE"],
            "{how}: env differs"
        );
    };
    check(&read().await, "before the reload");
    std::fs::remove_file(&dump).unwrap();
    sm.manager_call("Reload", &()).await;
    // A crash after the reload: restarted, with the same argv and environment.
    sm.manager_call("KillUnit", &(unit.as_str(), "main", 9i32))
        .await;
    let new = eventually(20, || async {
        match m.status().await {
            Ok(DaemonStatus::Running(p)) if p != pid => Some(p),
            _ => None,
        }
    })
    .await;
    check(&read().await, "restarted after the reload");
    assert_ne!(new, pid);
    within(30, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}
