//! Issue 15 on a real systemd (a private `systemd --user`, 252 here): the
//! watchdog, reload and liveness properties of a transient unit survive a
//! `daemon-reload` (systemd re-reads its transient file then) and mean the
//! same as the unit file's; a reload still works after the daemon-reload;
//! `restart` of an installed unit whose config changed rewrites the unit
//! file and reloads the manager first, so the new config runs.
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use daemon_lifecycle::{
    BusTarget, DaemonConfig, DaemonManager, Liveness, Readiness, ReloadConfig, Scope, ServiceSpec,
    SystemdBackend, UnitSpec,
};
use support::systemd::UserManager;
use support::{eventually, free_addr, within, Sandbox};

type ExecEntry = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);

async fn backend(um: &UserManager) -> SystemdBackend {
    SystemdBackend::connect_to(&BusTarget::Address(um.bus_address.clone()), Scope::User)
        .await
        .unwrap()
        .with_probe_helper(support::daemonctl())
}

/// The health properties as the manager reports them.
async fn health_meaning(um: &UserManager, unit: &str) -> BTreeMap<String, String> {
    let service = um
        .unit_properties(unit, "org.freedesktop.systemd1.Service")
        .await;
    let mut out = BTreeMap::new();
    for k in ["WatchdogUSec", "WatchdogSignal", "NotifyAccess", "Type"] {
        out.insert(k.to_owned(), format!("{:?}", service.get(k).map(|v| &**v)));
    }
    for k in ["ExecReload", "ExecStartPost"] {
        let entries: Vec<ExecEntry> = service[k].try_clone().unwrap().try_into().unwrap();
        let argv: Vec<(String, Vec<String>)> = entries.into_iter().map(|e| (e.0, e.1)).collect();
        out.insert(k.to_owned(), format!("{argv:?}"));
    }
    out
}

async fn daemon_reload(um: &UserManager, unit: &str) {
    um.manager_call("Reload").await;
    let state = eventually(20, || async {
        let u = um
            .unit_properties(unit, "org.freedesktop.systemd1.Unit")
            .await;
        let load = String::try_from(u["LoadState"].try_clone().ok()?).ok()?;
        (load == "loaded").then_some(load)
    })
    .await;
    assert_eq!(state, "loaded");
}

/// A notify daemon with a watchdog and a reload command with `$`, `;`,
/// `%` and spaces; and an HTTP daemon with a liveness probe and a reload
/// signal.
fn configs(sb: &Sandbox) -> Vec<DaemonConfig> {
    let log = sb.path("reloads").to_str().unwrap().to_owned();
    let mut watchdog = sb
        .config(&["--ready-after", "100", "--reload-log", &log])
        .with_name(format!("{}-wd", sb.tag));
    watchdog.readiness = Some(Readiness::Notify);
    watchdog.watchdog_secs = Some(30);
    let mut reload = ReloadConfig::default();
    // No shell of ours: `$MAINPID` is the shell's, from the environment
    // systemd (and the fork supervisor) give a reload command.
    reload.argv = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        "kill -s HUP \"$MAINPID\" && test '100% $x;y' = '100% $x;y'".into(),
    ]);
    watchdog.reload = Some(reload);
    let addr = free_addr();
    let mut live = sb
        .config(&["--http", &addr])
        .with_name(format!("{}-live", sb.tag));
    live.pid_file = sb.path("live.pid");
    live.liveness = Some(
        toml::from_str(&format!(
            "kind = \"http\"\nurl = \"http://{addr}/health?a=$x;y 100%\"\ninterval_ms = 200"
        ))
        .unwrap(),
    );
    let mut reload = ReloadConfig::default();
    reload.signal = Some("USR1".into());
    live.reload = Some(reload);
    vec![watchdog, live]
}

#[tokio::test]
async fn health_properties_survive_daemon_reload_and_match_the_unit_file() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_health_props");
    let backend = backend(&um).await;
    for config in configs(&sb) {
        let spec = ServiceSpec::from_config(&config).unwrap();
        let unit = UnitSpec::from_spec_with_helper(&spec, Scope::User, Some(&support::daemonctl()))
            .unwrap()
            .unit;
        let m = DaemonManager::with_backend(config.clone(), Arc::new(backend.clone()));
        within(30, m.start()).await.unwrap();
        let transient = health_meaning(&um, &unit).await;
        assert!(
            transient["ExecReload"].contains("/bin/kill")
                || transient["ExecReload"].contains("/bin/sh"),
            "{transient:?}"
        );
        daemon_reload(&um, &unit).await;
        assert_eq!(
            health_meaning(&um, &unit).await,
            transient,
            "{unit}: changed by a daemon-reload"
        );
        if config.readiness == Some(Readiness::Notify) {
            // The reload command still reaches the daemon, and its
            // READY=1 is awaited: the line is there when reload returns.
            within(30, m.reload()).await.unwrap();
            let log = std::fs::read_to_string(sb.path("reloads")).unwrap();
            assert_eq!(log.lines().count(), 1, "{log}");
        }
        within(30, m.stop()).await.unwrap();
        // The same config as a unit file means the same.
        backend
            .install(&spec, Some(&um.unit_dir()), false)
            .await
            .unwrap();
        within(30, m.start()).await.unwrap();
        assert_eq!(
            health_meaning(&um, &unit).await,
            transient,
            "{unit}: the unit file and the transient unit differ"
        );
        backend
            .uninstall(&spec, Some(&um.unit_dir()))
            .await
            .unwrap();
    }
    sb.assert_no_leaks();
}

#[tokio::test]
async fn restart_rewrites_a_drifted_unit_file_first() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_health_drift");
    let dump = sb.path("dump.json");
    let config = sb.config(&["--dump", dump.to_str().unwrap()]);
    let spec = ServiceSpec::from_config(&config).unwrap();
    let backend = backend(&um).await;
    backend
        .install(&spec, Some(&um.unit_dir()), false)
        .await
        .unwrap();
    let m = DaemonManager::with_backend(config.clone(), Arc::new(backend.clone()));
    within(30, m.start()).await.unwrap();
    let changed = config.clone().with_env("NEW_SETTING", "yes");
    let m2 = DaemonManager::with_backend(changed.clone(), Arc::new(backend.clone()));
    assert_eq!(m2.status_report().await.unwrap().drift, Some(true));
    let _ = std::fs::remove_file(&dump);
    let pid = within(30, m2.restart()).await.unwrap();
    assert_eq!(m2.status_report().await.unwrap().drift, Some(false));
    let text = std::fs::read_to_string(
        um.unit_dir()
            .join(UnitSpec::from_config(&changed, Scope::User).unwrap().unit),
    )
    .unwrap();
    assert!(text.contains("Environment=\"NEW_SETTING=yes\""), "{text}");
    let env = eventually(10, || async {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&dump).ok()?).ok()?;
        Some(v["env"].clone())
    })
    .await;
    assert_eq!(
        env["NEW_SETTING"], "yes",
        "the restarted daemon runs the new config: {env}"
    );
    assert_eq!(m2.get_pid().await.unwrap(), Some(pid));
    backend
        .uninstall(&spec, Some(&um.unit_dir()))
        .await
        .unwrap();
    sb.assert_no_leaks();
}

/// What a `Liveness` deserializes from, for the unit test of the model.
#[test]
fn liveness_defaults() {
    let l: Liveness = toml::from_str("kind = \"tcp\"\naddress = \"127.0.0.1:1\"").unwrap();
    assert_eq!(l.failures(), 3);
    assert_eq!(l.interval().as_millis(), 10_000);
    assert_eq!(l.timeout().as_millis(), 1_000);
}
