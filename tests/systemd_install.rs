//! Install that says what it did (issue 8): drift between the installed
//! unit file and the config is reported; a unit directory the manager does
//! not load from is refused before anything is written; a failed enable
//! leaves nothing written; uninstall from the wrong directory says so and
//! leaves the installed unit alone.
mod support;

use std::process::Command;

use daemon_lifecycle::{BusTarget, DaemonError, DaemonStatus, Scope, SystemdBackend, UnitSpec};
use support::systemd::UserManager;
use support::{alive, within, Sandbox};

async fn backend(um: &UserManager) -> SystemdBackend {
    SystemdBackend::connect_to(&BusTarget::Address(um.bus_address.clone()), Scope::User)
        .await
        .unwrap()
}

fn daemonctl(um: &UserManager, args: &[&str], toml: &std::path::Path) -> std::process::Output {
    Command::new(support::daemonctl())
        .args(["--backend", "systemd", "--scope", "user"])
        .args(args)
        .arg(toml)
        .envs(um.env())
        .output()
        .unwrap()
}

fn invalid_unit_dir(result: Result<impl std::fmt::Debug, DaemonError>) -> String {
    match result {
        Err(DaemonError::InvalidConfig { field, reason }) if field == "unit_dir" => reason,
        other => panic!("expected InvalidConfig unit_dir, got {other:?}"),
    }
}

#[tokio::test]
async fn drift_is_reported_by_status_and_start_warns() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_drift");
    let config = sb.config(&[]);
    let backend = backend(&um).await;
    // Transient: no installed file, no drift to speak of.
    let m = sb.systemd_manager(&um, config.clone()).await;
    within(30, m.start()).await.unwrap();
    assert_eq!(m.status_report().await.unwrap().drift, None);
    within(30, m.stop()).await.unwrap();

    backend
        .install(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir()),
            true,
        )
        .await
        .unwrap();
    let pid = within(30, m.start()).await.unwrap();
    assert_eq!(m.status_report().await.unwrap().drift, Some(false));

    let changed = config.clone().with_env("NEW", "1");
    let toml = sb.write_toml(&changed);
    let m2 = sb.systemd_manager(&um, changed.clone()).await;
    assert_eq!(m2.status_report().await.unwrap().drift, Some(true));
    let out = daemonctl(&um, &["status", "--json"], &toml);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["drift"], true, "{v}");
    assert_eq!(v["pid"], pid);
    // start finds it running (the old file) and says so.
    let out = daemonctl(&um, &["start"], &toml);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("differs from the config"), "{stderr}");

    backend
        .uninstall(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir()),
        )
        .await
        .unwrap();
    assert!(!alive(pid));
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_unit_dir_the_manager_does_not_load_from_is_refused_before_writing() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_unitdir");
    let config = sb.config(&[]);
    let unit = UnitSpec::from_config(&config, Scope::User).unwrap().unit;
    let elsewhere = sb.path("not-a-unit-dir");
    let backend = backend(&um).await;
    let reason = invalid_unit_dir(
        backend
            .install(
                &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
                Some(&elsewhere),
                true,
            )
            .await,
    );
    assert!(reason.contains("UnitPath"), "{reason}");
    assert!(!elsewhere.exists(), "something was written");
    let toml = sb.write_toml(&config);
    let out = daemonctl(
        &um,
        &["install", "--unit-dir", elsewhere.to_str().unwrap()],
        &toml,
    );
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!elsewhere.exists(), "something was written");
    assert!(!um.unit_dir().join(&unit).exists());
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_failed_enable_leaves_nothing_written() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_enable_fails");
    let config = sb.config(&[]);
    let unit = UnitSpec::from_config(&config, Scope::User).unwrap().unit;
    // The enable link cannot be made: its directory is a file.
    let blocker = um.unit_dir().join("default.target.wants");
    std::fs::write(&blocker, "").unwrap();
    let backend = backend(&um).await;
    let err = backend
        .install(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir()),
            true,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("EnableUnitFiles"), "{err}");
    assert!(
        !um.unit_dir().join(&unit).exists(),
        "the unit file was left behind"
    );
    // And the manager forgot it again.
    let m = sb.systemd_manager(&um, config.clone()).await;
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    std::fs::remove_file(&blocker).unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn uninstall_from_the_wrong_dir_says_so_and_leaves_the_unit() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_uninstall_wrong");
    let config = sb.config(&[]);
    let unit = UnitSpec::from_config(&config, Scope::User).unwrap().unit;
    let backend = backend(&um).await;
    backend
        .install(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir()),
            true,
        )
        .await
        .unwrap();
    let m = sb.systemd_manager(&um, config.clone()).await;
    let pid = within(30, m.start()).await.unwrap();
    let wrong = sb.path("wrong");
    let reason = invalid_unit_dir(
        backend
            .uninstall(
                &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
                Some(&wrong),
            )
            .await,
    );
    assert!(
        reason.contains(&um.unit_dir().join(&unit).display().to_string()),
        "{reason}"
    );
    assert!(um.unit_dir().join(&unit).exists());
    assert!(um
        .unit_dir()
        .join("default.target.wants")
        .join(&unit)
        .exists());
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    let toml = sb.write_toml(&config);
    let out = daemonctl(
        &um,
        &["uninstall", "--unit-dir", wrong.to_str().unwrap()],
        &toml,
    );
    assert_eq!(out.status.code(), Some(6));

    assert!(backend
        .uninstall(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir())
        )
        .await
        .unwrap());
    assert!(!alive(pid));
    // Nothing anywhere: fine, and said.
    assert!(!backend
        .uninstall(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir())
        )
        .await
        .unwrap());
    let out = daemonctl(
        &um,
        &["uninstall", "--unit-dir", um.unit_dir().to_str().unwrap()],
        &toml,
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to uninstall"));
    sb.assert_no_leaks();
}
