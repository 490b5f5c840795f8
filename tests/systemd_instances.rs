//! Instances on a real systemd (issue 11): one installed template
//! `NAME@.service`, three instances started from it, each its own process
//! with its own instance in argv; stopping one leaves the others; without
//! the template an instance is a transient `NAME@INSTANCE.service`.
mod support;

use std::process::Command;

use daemon_lifecycle::systemd::spec_unit_name;
use daemon_lifecycle::{BusTarget, DaemonConfig, DaemonStatus, Scope, ServiceSpec, SystemdBackend};
use support::systemd::UserManager;
use support::{alive, within, Sandbox};

fn template(sb: &Sandbox) -> DaemonConfig {
    let mut config = sb.config(&["--", "--gpu", "{instance}", "{{instance}}"]);
    config.pid_file = Default::default();
    config
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

async fn backend(um: &UserManager) -> SystemdBackend {
    SystemdBackend::connect_to(&BusTarget::Address(um.bus_address.clone()), Scope::User)
        .await
        .unwrap()
}

#[tokio::test]
async fn three_instances_from_one_installed_template() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_instances");
    let config = template(&sb);
    let backend = backend(&um).await;
    let spec = ServiceSpec::from_config(&config).unwrap();
    assert!(spec.is_template());
    backend
        .install(&spec, Some(&um.unit_dir()), false)
        .await
        .unwrap();
    let template_file = um.unit_dir().join(format!("{}@.service", sb.tag));
    assert!(template_file.exists());

    let instances = ["gpu0", "gpu1", "gpu2"];
    let mut managers = Vec::new();
    let mut pids = Vec::new();
    for i in instances {
        let m = sb
            .systemd_manager(&um, config.clone().with_instance(i))
            .await;
        let pid = within(30, m.start()).await.unwrap();
        let argv = cmdline(pid);
        assert_eq!(
            argv[argv.len() - 3..],
            ["--gpu", i, "{instance}"],
            "{argv:?}"
        );
        pids.push(pid);
        managers.push(m);
    }
    // Started from the installed template, not as transient units.
    let toml = sb.write_toml(&config);
    let out = Command::new(support::daemonctl())
        .args([
            "--backend",
            "systemd",
            "--scope",
            "user",
            "--instance",
            "gpu1",
        ])
        .args(["status", "--json"])
        .arg(&toml)
        .envs(um.env())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["pid"], pids[1], "{v}");
    let unit =
        spec_unit_name(&ServiceSpec::from_config(&config.clone().with_instance("gpu1")).unwrap())
            .unwrap();
    assert_eq!(unit, format!("{}@gpu1.service", sb.tag));
    assert!(um.units_named(&format!("{}@gpu1", sb.tag)).await.len() == 1);

    within(30, managers[1].stop()).await.unwrap();
    assert!(!alive(pids[1]));
    assert_eq!(managers[1].status().await.unwrap(), DaemonStatus::Stopped);
    for k in [0, 2] {
        assert_eq!(
            managers[k].status().await.unwrap(),
            DaemonStatus::Running(pids[k])
        );
    }
    within(30, managers[0].stop()).await.unwrap();
    // Uninstalling the template stops its instance still running.
    backend
        .uninstall(&spec, Some(&um.unit_dir()))
        .await
        .unwrap();
    assert!(!template_file.exists());
    assert!(!alive(pids[2]));
    assert_eq!(managers[2].status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn without_a_template_an_instance_is_a_transient_unit_and_hostile_names_are_escaped() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_inst_transient");
    // Spaces, quotes, `$`, `;`, `%`, `-` and unicode: escaped in the unit
    // name, byte for byte in argv.
    let hostile = "gpu 0;$x%i-é\"";
    let m = sb
        .systemd_manager(&um, template(&sb).with_instance(hostile))
        .await;
    let pid = within(30, m.start()).await.unwrap();
    let argv = cmdline(pid);
    assert_eq!(
        argv[argv.len() - 3..],
        ["--gpu", hostile, "{instance}"],
        "{argv:?}"
    );
    let units = um.units_named(&sb.tag).await;
    assert_eq!(units.len(), 1, "{units:?}");
    assert!(
        units[0].contains('@') && units[0].contains("\\x20"),
        "{units:?}"
    );
    within(30, m.stop()).await.unwrap();
    assert!(!alive(pid));
    sb.assert_no_leaks();
}
