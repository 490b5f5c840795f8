//! Only our units (issue 8): a unit of the config's name that
//! daemon-lifecycle did not create — a hand-made transient unit, a
//! hand-written unit file, an alias, a vendor unit found by binary name — is
//! refused by every command with `NotOwned`, and left exactly as it was;
//! `adopt = true` takes it over.
mod support;

use daemon_lifecycle::{DaemonConfig, DaemonError, DaemonStatus, Scope, SystemdBackend, UnitSpec};
use support::systemd::UserManager;
use support::{alive, within, Sandbox};

fn not_owned(result: Result<impl std::fmt::Debug, DaemonError>, unit: &str, what: &str) -> String {
    match result {
        Err(DaemonError::NotOwned { unit: u, reason }) => {
            assert_eq!(u, unit, "{what}");
            reason
        }
        other => panic!("{what}: expected NotOwned for {unit}, got {other:?}"),
    }
}

async fn main_pid(um: &UserManager, unit: &str) -> u32 {
    let props = um
        .unit_properties(unit, "org.freedesktop.systemd1.Service")
        .await;
    u32::try_from(&props["MainPID"]).unwrap()
}

async fn backend(um: &UserManager) -> SystemdBackend {
    SystemdBackend::connect_to(
        &daemon_lifecycle::BusTarget::Address(um.bus_address.clone()),
        Scope::User,
    )
    .await
    .unwrap()
}

/// Every command on `config` is refused and the unit keeps its process.
async fn all_refused(um: &UserManager, sb: &Sandbox, config: &DaemonConfig, unit: &str, pid: u32) {
    let m = sb.systemd_manager(um, config.clone()).await;
    let reason = not_owned(m.status_report().await, unit, "status");
    assert!(reason.contains("did not create"), "{reason}");
    not_owned(within(30, m.start()).await, unit, "start");
    not_owned(within(30, m.stop()).await, unit, "stop");
    not_owned(within(30, m.kill()).await, unit, "kill");
    not_owned(within(30, m.restart()).await, unit, "restart");
    not_owned(within(30, m.cleanup_stale()).await, unit, "cleanup");
    not_owned(within(30, m.wait_ready(1)).await, unit, "wait_ready");
    assert!(alive(pid), "the foreign unit's process was touched");
    assert_eq!(
        main_pid(um, unit).await,
        pid,
        "the foreign unit was replaced"
    );
}

#[tokio::test]
async fn a_hand_made_transient_unit_is_refused_until_adopted() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_own_run");
    let config = sb.config(&[]);
    let unit = UnitSpec::from_config(&config, Scope::User).unwrap().unit;
    let out = um
        .command("systemd-run")
        .arg(format!("--unit={unit}"))
        .arg(support::testd())
        .args(["--tag", &sb.tag]) // tagged, so the sandbox finds it if it leaks
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = support::eventually(10, || async {
        let pid = main_pid(&um, &unit).await;
        (pid != 0).then_some(pid)
    })
    .await;
    all_refused(&um, &sb, &config, &unit, pid).await;

    // adopt = true: ours to report and to act on.
    let mut adopted = config.clone();
    adopted.adopt = true;
    let m = sb.systemd_manager(&um, adopted).await;
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    within(30, m.stop()).await.unwrap();
    assert!(!alive(pid));
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_hand_written_unit_file_is_neither_started_nor_overwritten_nor_removed() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_own_file");
    let config = sb.config(&[]);
    let unit = UnitSpec::from_config(&config, Scope::User).unwrap().unit;
    let path = um.unit_dir().join(&unit);
    let text = format!(
        "[Service]\nExecStart={} --tag {}\n",
        support::testd().display(),
        sb.tag
    );
    std::fs::write(&path, &text).unwrap();
    let backend = backend(&um).await;
    not_owned(
        backend
            .install(
                &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
                Some(&um.unit_dir()),
                true,
            )
            .await,
        &unit,
        "install",
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "install overwrote it"
    );
    not_owned(
        backend
            .uninstall(
                &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
                Some(&um.unit_dir()),
            )
            .await,
        &unit,
        "uninstall",
    );
    assert!(path.exists(), "uninstall removed it");
    let m = sb.systemd_manager(&um, config.clone()).await;
    let reason = not_owned(within(30, m.start()).await, &unit, "start");
    assert!(reason.contains(&path.display().to_string()), "{reason}");
    assert!(
        sb.processes().is_empty(),
        "the hand-written unit was started"
    );

    // Started by hand, every command leaves it alone.
    let out = um
        .command("systemctl")
        .args(["start", &unit])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = main_pid(&um, &unit).await;
    all_refused(&um, &sb, &config, &unit, pid).await;

    // Adopted: install takes the file over and uninstall removes it.
    let mut adopted = config.clone();
    adopted.adopt = true;
    assert!(backend
        .install(
            &daemon_lifecycle::ServiceSpec::from_config(&adopted).unwrap(),
            Some(&um.unit_dir()),
            false
        )
        .await
        .unwrap());
    backend
        .uninstall(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir()),
        )
        .await
        .unwrap();
    assert!(!path.exists());
    assert!(!alive(pid));
    sb.assert_no_leaks();
}

#[tokio::test]
async fn an_alias_is_not_followed() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_own_alias");
    // The real unit is ours; the alias name is what the config asks for.
    let real = sb.config(&[]).with_name(format!("{}-real", sb.tag));
    let real_unit = UnitSpec::from_config(&real, Scope::User).unwrap().unit;
    let backend = backend(&um).await;
    backend
        .install(
            &daemon_lifecycle::ServiceSpec::from_config(&real).unwrap(),
            Some(&um.unit_dir()),
            false,
        )
        .await
        .unwrap();
    let nick = sb.config(&[]).with_name(format!("{}-nick", sb.tag));
    let nick_unit = UnitSpec::from_config(&nick, Scope::User).unwrap().unit;
    std::os::unix::fs::symlink(&real_unit, um.unit_dir().join(&nick_unit)).unwrap();
    um.manager_call("Reload").await;
    let m_real = sb.systemd_manager(&um, real.clone()).await;
    let pid = within(30, m_real.start()).await.unwrap();

    let m = sb.systemd_manager(&um, nick.clone()).await;
    let reason = not_owned(m.status_report().await, &nick_unit, "status");
    assert!(
        reason.contains(&format!("alias of {real_unit}")),
        "{reason}"
    );
    not_owned(within(30, m.start()).await, &nick_unit, "start");
    not_owned(within(30, m.stop()).await, &nick_unit, "stop");
    not_owned(within(30, m.kill()).await, &nick_unit, "kill");
    not_owned(within(30, m.restart()).await, &nick_unit, "restart");
    assert_eq!(m_real.status().await.unwrap(), DaemonStatus::Running(pid));
    // Neither installed over (the link would become a unit of its own) nor
    // uninstalled (that would stop the real unit).
    let reason = not_owned(
        backend
            .install(
                &daemon_lifecycle::ServiceSpec::from_config(&nick).unwrap(),
                Some(&um.unit_dir()),
                false,
            )
            .await,
        &nick_unit,
        "install",
    );
    assert!(reason.contains("symlink"), "{reason}");
    not_owned(
        backend
            .uninstall(
                &daemon_lifecycle::ServiceSpec::from_config(&nick).unwrap(),
                Some(&um.unit_dir()),
            )
            .await,
        &nick_unit,
        "uninstall",
    );
    assert!(um
        .unit_dir()
        .join(&nick_unit)
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(m_real.status().await.unwrap(), DaemonStatus::Running(pid));

    std::fs::remove_file(um.unit_dir().join(&nick_unit)).unwrap();
    backend
        .uninstall(
            &daemon_lifecycle::ServiceSpec::from_config(&real).unwrap(),
            Some(&um.unit_dir()),
        )
        .await
        .unwrap();
    assert!(!alive(pid));
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_vendor_unit_found_by_binary_name_is_not_started_and_the_bus_is_not_killed() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_own_vendor");
    let vendor = std::path::Path::new("/usr/lib/systemd/user/gpg-agent.service");
    if !vendor.exists() || !std::path::Path::new("/usr/bin/gpg-agent").exists() {
        support::systemd::unavailable::<()>("gpg-agent and its user unit are not installed");
        return;
    }
    // No `name`: it is derived from the binary, gpg-agent.service.
    let config =
        DaemonConfig::new("/usr/bin/gpg-agent", sb.path("gpg.pid")).with_args(["--supervised"]);
    assert_eq!(config.name(), "gpg-agent");
    let m = sb.systemd_manager(&um, config.clone()).await;
    let reason = not_owned(within(30, m.start()).await, "gpg-agent.service", "start");
    assert!(reason.contains(&vendor.display().to_string()), "{reason}");
    let props = um
        .unit_properties("gpg-agent.service", "org.freedesktop.systemd1.Unit")
        .await;
    assert_eq!(
        String::try_from(props["ActiveState"].try_clone().unwrap()).unwrap(),
        "inactive",
        "the vendor unit was started"
    );
    let backend = backend(&um).await;
    not_owned(
        backend
            .install(
                &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
                Some(&um.unit_dir()),
                false,
            )
            .await,
        "gpg-agent.service",
        "install over a vendor unit",
    );
    assert!(!um.unit_dir().join("gpg-agent.service").exists());

    // A config named `dbus`: the user bus is not ours to kill.
    let dbus = sb.config(&[]).with_name("dbus");
    let m = sb.systemd_manager(&um, dbus).await;
    let bus_pid = main_pid(&um, "dbus.service").await;
    assert_ne!(bus_pid, 0);
    not_owned(within(30, m.kill()).await, "dbus.service", "kill dbus");
    not_owned(within(30, m.stop()).await, "dbus.service", "stop dbus");
    assert!(alive(bus_pid), "the user bus was killed");
    sb.assert_no_leaks();
}

#[tokio::test]
async fn daemonctl_says_a_foreign_unit_is_not_ours_and_adopt_takes_it_over() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_own_cli");
    let config = sb.config(&[]);
    let unit = UnitSpec::from_config(&config, Scope::User).unwrap().unit;
    let out = um
        .command("systemd-run")
        .arg(format!("--unit={unit}"))
        .arg(support::testd())
        .args(["--tag", &sb.tag])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = support::eventually(10, || async {
        let pid = main_pid(&um, &unit).await;
        (pid != 0).then_some(pid)
    })
    .await;
    let toml = sb.write_toml(&config);
    let run = |args: &[&str]| {
        std::process::Command::new(support::daemonctl())
            .args(["--backend", "systemd", "--scope", "user"])
            .args(args)
            .arg(&toml)
            .envs(um.env())
            .output()
            .unwrap()
    };
    let out = run(&["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("is not ours") && stderr.contains("--adopt"),
        "{stderr}"
    );
    for cmd in ["start", "stop", "kill", "restart", "cleanup"] {
        let out = run(&[cmd]);
        assert_eq!(
            out.status.code(),
            Some(6),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(alive(pid));
    let out = run(&["--adopt", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "running");
    assert_eq!(v["pid"], pid);
    let out = run(&["--adopt", "stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!alive(pid));
    sb.assert_no_leaks();
}
