//! One model, two outputs: the same config as a transient unit and as an
//! installed unit file means the same thing to a real systemd, and hostile
//! arguments and environment values reach the process byte for byte.
mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use daemon_lifecycle::{DaemonConfig, DaemonError, DaemonStatus, Scope, SystemdBackend, UnitSpec};
use support::systemd::UserManager;
use support::{eventually, within, Sandbox};
use zbus::zvariant::OwnedValue;

/// Arguments and values that break naive unit-file writers.
fn hostile() -> Vec<String> {
    [
        "plain",
        "two words",
        "",
        "\"double\" 'single'",
        "100% %n %h %%",
        "$HOME ${HOME} $$",
        ";",
        "a;b",
        "back\\slash \\n not a newline",
        "trailing backslash\\",
        "{}{{}}",
        "unicodé 日本 🦀",
        "tab\there",
        "-dash",
        "  leading and trailing  ",
        "=equals=",
        "#hash ;semicolon",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn hostile_config(sb: &Sandbox, dump: &std::path::Path) -> DaemonConfig {
    let mut args = vec![
        "--dump".to_owned(),
        dump.display().to_string(),
        "--".to_owned(),
    ];
    args.extend(hostile());
    let mut config = sb.config(&[]);
    config.args.extend(args);
    for (i, value) in hostile().into_iter().enumerate() {
        config.env.insert(format!("HOSTILE_{i}"), value);
    }
    config.with_working_dir(sb.dir.path())
}

async fn read_dump(path: &std::path::Path) -> serde_json::Value {
    let text = eventually(10, || async { std::fs::read_to_string(path).ok() }).await;
    serde_json::from_str(&text).unwrap()
}

fn check_dump(dump: &serde_json::Value, config: &DaemonConfig, how: &str) {
    let argv: Vec<String> = serde_json::from_value(dump["argv"].clone()).unwrap();
    assert_eq!(argv[1..], config.args[..], "{how}: argv differs");
    let env: BTreeMap<String, String> = serde_json::from_value(dump["env"].clone()).unwrap();
    for (k, v) in &config.env {
        assert_eq!(env.get(k), Some(v), "{how}: env {k} differs");
    }
}

/// One `ExecStart` entry as systemd reports it: path, argv, ignore-failure,
/// start/stop timestamps, PID, exit code and status.
type ExecEntry = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);

/// The properties that say what the unit means.
async fn meaning(um: &UserManager, unit: &str) -> BTreeMap<String, String> {
    let service = um
        .unit_properties(unit, "org.freedesktop.systemd1.Service")
        .await;
    let u = um
        .unit_properties(unit, "org.freedesktop.systemd1.Unit")
        .await;
    let mut out = BTreeMap::new();
    let show = |m: &HashMap<String, OwnedValue>, k: &str| format!("{:?}", m.get(k).map(|v| &**v));
    for k in [
        "Environment",
        "WorkingDirectory",
        "TimeoutStartUSec",
        "TimeoutStopUSec",
        "Type",
        "Restart",
        "RestartUSec",
        "LimitNOFILE",
        "LimitNOFILESoft",
        "LimitCPU",
        "MemoryMax",
        "TasksMax",
        "KillMode",
        "StandardOutput",
        "StandardError",
    ] {
        out.insert(k.to_owned(), show(&service, k));
    }
    // ExecStart: keep path and argv, drop run-time timestamps and PIDs.
    let exec: Vec<ExecEntry> = service["ExecStart"]
        .try_clone()
        .unwrap()
        .try_into()
        .unwrap();
    // Both say `$$` for `$` (systemd keeps it until exec time, where it
    // becomes `$`): the transient unit's ExecStart expands variables like a
    // unit file's. The bytes the process gets are checked by the dumps.
    let argv_of = |e: &ExecEntry| e.1.clone();
    out.insert(
        "ExecStart".into(),
        format!(
            "{:?}",
            exec.iter().map(|e| (&e.0, argv_of(e))).collect::<Vec<_>>()
        ),
    );
    for k in [
        "StartLimitBurst",
        "StartLimitIntervalUSec",
        "Description",
        "Documentation",
    ] {
        out.insert(k.to_owned(), show(&u, k));
    }
    out
}

#[tokio::test]
async fn hostile_argv_and_env_arrive_byte_for_byte_both_ways_and_mean_the_same() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_bytes");
    let dump = sb.path("dump.json");
    let mut config = hostile_config(&sb, &dump);
    config.limits.nofile = Some(4096);
    config.limits.cpu_secs = Some(3600);
    config.limits.processes = Some(64);
    config.restart.policy = daemon_lifecycle::RestartPolicy::OnFailure;
    config.restart.delay_ms = 250;
    let unit = UnitSpec::from_config(&config, Scope::User).unwrap().unit;

    // 1. Transient.
    let m = sb.systemd_manager(&um, config.clone()).await;
    within(30, m.start()).await.unwrap();
    check_dump(&read_dump(&dump).await, &config, "transient unit");
    let transient = meaning(&um, &unit).await;
    within(30, m.stop()).await.unwrap();
    std::fs::remove_file(&dump).unwrap();

    // 2. Installed unit file, started as a persistent unit.
    let backend = SystemdBackend::connect_to(
        &daemon_lifecycle::BusTarget::Address(um.bus_address.clone()),
        Scope::User,
    )
    .await
    .unwrap();
    assert!(backend
        .install(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir()),
            false
        )
        .await
        .unwrap());
    within(30, m.start()).await.unwrap();
    let props = um
        .unit_properties(&unit, "org.freedesktop.systemd1.Unit")
        .await;
    assert_eq!(
        String::try_from(props["FragmentPath"].try_clone().unwrap()).unwrap(),
        um.unit_dir().join(&unit).display().to_string(),
        "started the installed unit"
    );
    check_dump(&read_dump(&dump).await, &config, "unit file");
    let persistent = meaning(&um, &unit).await;
    within(30, m.stop()).await.unwrap();
    backend
        .uninstall(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir()),
        )
        .await
        .unwrap();

    assert_eq!(transient, persistent, "the two paths differ in meaning");
    sb.assert_no_leaks();
}

/// Issue 8: systemd 252 wrote our transient ExecStartEx as `ExecStartEx=`,
/// which it cannot read back: after any daemon-reload the unit was
/// `bad-setting` and a crash was never restarted. (And a plain ExecStart is
/// serialized with `$` and `;` as `\$` and `\;`, read back literally.)
#[tokio::test]
async fn transient_units_survive_daemon_reload_and_reexec_byte_for_byte() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_reload");
    let dump = sb.path("dump.json");
    let mut config = hostile_config(&sb, &dump);
    config.restart.policy = daemon_lifecycle::RestartPolicy::Always;
    config.restart.delay_ms = 100;
    config.limits.nofile = Some(4096);
    config.limits.cpu_secs = Some(3600);
    config.limits.processes = Some(64);
    config.logs = Some(daemon_lifecycle::LogsConfig {
        stdout: Some(sb.path("out 100% $x;y.log")),
        ..Default::default()
    });
    let unit = UnitSpec::from_config(&config, Scope::User).unwrap().unit;
    let m = sb.systemd_manager(&um, config.clone()).await;
    let mut pid = within(30, m.start()).await.unwrap();
    check_dump(&read_dump(&dump).await, &config, "before any reload");
    let before = meaning(&um, &unit).await;
    for method in ["Reload", "Reexecute"] {
        std::fs::remove_file(&dump).unwrap();
        um.manager_call(method).await;
        // Reexecute returns before the new manager answers.
        let load = support::eventually(20, || async {
            let conn = zbus::connection::Builder::address(um.bus_address.as_str())
                .ok()?
                .build()
                .await
                .ok()?;
            let reply = conn
                .call_method(
                    Some("org.freedesktop.systemd1"),
                    "/org/freedesktop/systemd1",
                    Some("org.freedesktop.systemd1.Manager"),
                    "GetUnit",
                    &(unit.as_str(),),
                )
                .await
                .ok()?;
            let path: zbus::zvariant::OwnedObjectPath = reply.body().deserialize().ok()?;
            let reply = conn
                .call_method(
                    Some("org.freedesktop.systemd1"),
                    path.as_str(),
                    Some("org.freedesktop.DBus.Properties"),
                    "Get",
                    &("org.freedesktop.systemd1.Unit", "LoadState"),
                )
                .await
                .ok()?;
            let value: OwnedValue = reply.body().deserialize().ok()?;
            String::try_from(value).ok()
        })
        .await;
        assert_eq!(load, "loaded", "after {method}");
        let after = meaning(&um, &unit).await;
        assert_eq!(after, before, "after {method}: the unit changed");
        assert!(
            after["Documentation"].contains(daemon_lifecycle::systemd::OWNERSHIP_MARK),
            "after {method}: the ownership marker is gone: {}",
            after["Documentation"]
        );
        // A crash is still restarted, with the same argv and environment.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let new_pid = support::eventually(20, || async {
            match m.status().await {
                Ok(DaemonStatus::Running(p)) if p != pid => Some(p),
                _ => None,
            }
        })
        .await;
        check_dump(
            &read_dump(&dump).await,
            &config,
            &format!("restarted after {method}"),
        );
        pid = new_pid;
    }
    within(30, m.stop()).await.unwrap();
    assert!(!support::alive(pid));
    sb.assert_no_leaks();
}

#[tokio::test]
async fn install_is_idempotent_and_uninstall_cleans_up() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_install");
    let config = sb.config(&[]);
    let unit = UnitSpec::from_config(&config, Scope::User).unwrap().unit;
    let backend = SystemdBackend::connect_to(
        &daemon_lifecycle::BusTarget::Address(um.bus_address.clone()),
        Scope::User,
    )
    .await
    .unwrap();
    let path = um.unit_dir().join(&unit);
    assert!(backend
        .install(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir()),
            true
        )
        .await
        .unwrap());
    let first = std::fs::read_to_string(&path).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    // Same content: nothing written, no reload.
    assert!(!backend
        .install(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir()),
            true
        )
        .await
        .unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    assert!(
        um.unit_dir()
            .join("default.target.wants")
            .join(&unit)
            .exists(),
        "enabled"
    );

    let m = sb.systemd_manager(&um, config.clone()).await;
    let pid = within(30, m.start()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));

    // A changed config rewrites the file.
    let changed = config.clone().with_env("NEW", "1");
    assert!(backend
        .install(
            &daemon_lifecycle::ServiceSpec::from_config(&changed).unwrap(),
            Some(&um.unit_dir()),
            false
        )
        .await
        .unwrap());
    assert_ne!(std::fs::read_to_string(&path).unwrap(), first);

    // Uninstall stops, disables, removes; twice is fine.
    backend
        .uninstall(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir()),
        )
        .await
        .unwrap();
    backend
        .uninstall(
            &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
            Some(&um.unit_dir()),
        )
        .await
        .unwrap();
    assert!(!path.exists());
    assert!(!um
        .unit_dir()
        .join("default.target.wants")
        .join(&unit)
        .exists());
    assert!(!support::alive(pid));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    // No temp files left in the unit directory.
    let left: Vec<_> = std::fs::read_dir(um.unit_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.iter().all(|n| n == "default.target.wants"), "{left:?}");
    sb.assert_no_leaks();
}

fn with_logs(sb: &Sandbox, stdout: Option<&str>, stderr: Option<&str>) -> DaemonConfig {
    let mut config = sb.config(&[]);
    config.logs = Some(daemon_lifecycle::LogsConfig {
        stdout: stdout.map(Into::into),
        stderr: stderr.map(Into::into),
        ..Default::default()
    });
    config
}

#[tokio::test]
async fn refused_bad_input_changes_nothing() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_bad_input");
    let backend = SystemdBackend::connect_to(
        &daemon_lifecycle::BusTarget::Address(um.bus_address.clone()),
        Scope::User,
    )
    .await
    .unwrap();
    let injections: Vec<(DaemonConfig, &str)> = vec![
        (
            sb.config(&["x\nExecStartPre=/bin/touch /tmp/pwned"]),
            "args",
        ),
        (
            sb.config(&[]).with_env("A", "v\nExecStartPost=/bin/true"),
            "env",
        ),
        (sb.config(&[]).with_env("B", "carriage\rreturn"), "env"),
        (sb.config(&[]).with_name("evil\nname"), "name"),
        // Issue 8: systemd drops a log path that is not normalized.
        (with_logs(&sb, Some("/tmp/../x.log"), None), "logs.stdout"),
        (
            with_logs(
                &sb,
                Some(&format!("{}//out.log", sb.dir.path().display())),
                None,
            ),
            "logs.stdout",
        ),
        (
            with_logs(
                &sb,
                None,
                Some(&format!("{}/./err.log", sb.dir.path().display())),
            ),
            "logs.stderr",
        ),
        (
            {
                let mut c = sb.config(&[]);
                c.user = Some("root".into()); // user units cannot switch users
                c
            },
            "user",
        ),
    ];
    for (config, field) in injections {
        let m = sb.systemd_manager(&um, config.clone()).await;
        let err = m.start().await.unwrap_err();
        assert!(
            matches!(&err, DaemonError::InvalidConfig { field: f, .. } if f == field),
            "{field}: {err:?}"
        );
        // Refused as a spec already, or by install for this scope.
        let err = match daemon_lifecycle::ServiceSpec::from_config(&config) {
            Err(e) => e,
            Ok(spec) => backend
                .install(&spec, Some(&um.unit_dir()), true)
                .await
                .unwrap_err(),
        };
        assert!(matches!(err, DaemonError::InvalidConfig { .. }), "{err:?}");
    }
    assert_eq!(
        std::fs::read_dir(um.unit_dir()).unwrap().count(),
        0,
        "a unit file was written"
    );
    assert!(
        um.units_named("dltest-").await.is_empty(),
        "a unit was created"
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());
    sb.assert_no_leaks();
}

#[test]
fn rendered_units_pass_systemd_analyze_verify() {
    let sb = Sandbox::new("sd_verify");
    let dump = sb.path("dump.json");
    let mut configs = vec![sb.config(&[]), hostile_config(&sb, &dump)];
    let mut full = sb.config(&["--ignore-term"]);
    full.readiness = Some(daemon_lifecycle::Readiness::Notify);
    full.restart.policy = daemon_lifecycle::RestartPolicy::Always;
    full.limits.nofile = Some(1024);
    full.limits.memory_bytes = Some(1 << 30);
    full.limits.cpu_secs = Some(60);
    full.limits.processes = Some(32);
    full.logs = Some(daemon_lifecycle::LogsConfig {
        stdout: Some(sb.path("out 100%.log")),
        stderr: Some(sb.path("err.log")),
        ..Default::default()
    });
    full.watchdog_secs = Some(10);
    full.reload = Some(toml::from_str("argv = [\"/bin/kill\", \"-s\", \"USR1\", \"$x\"]").unwrap());
    configs.push(full);
    // Issue 15: the liveness helper (ExecStartPost=, WatchdogSec=, SIGTERM).
    let mut live = sb.config(&[]);
    live.liveness = Some(
        toml::from_str("kind = \"http\"\nurl = \"http://127.0.0.1:1/health?a=100%&b=$c\"").unwrap(),
    );
    configs.push(live);
    // (Not `nobody`: systemd-analyze warns that sharing it is unsafe.)
    for (scope, extra_user) in [(Scope::User, None), (Scope::System, Some("daemon"))] {
        for config in &configs {
            let mut config = config.clone();
            config.user = extra_user.map(str::to_owned);
            let spec = UnitSpec::from_spec_with_helper(
                &daemon_lifecycle::ServiceSpec::from_config(&config).unwrap(),
                scope,
                Some(&support::daemonctl()),
            )
            .unwrap();
            let path = sb.path(&spec.unit);
            std::fs::write(&path, spec.render().unwrap()).unwrap();
            let mut cmd = Command::new("systemd-analyze");
            if scope == Scope::User {
                // --user looks up the runtime directory of the (absent) user manager.
                cmd.arg("--user").env("XDG_RUNTIME_DIR", sb.dir.path());
            }
            let out = cmd.args(["verify", "--man=no"]).arg(&path).output();
            let out = match out {
                Ok(o) => o,
                Err(e) if !support::systemd::systemd_required() => {
                    eprintln!("SKIPPED: systemd-analyze not runnable: {e}");
                    return;
                }
                Err(e) => panic!("systemd-analyze: {e}"),
            };
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.trim().is_empty(),
                "systemd-analyze verify {scope} {}:\n{stderr}\n---\n{}",
                spec.unit,
                spec.render().unwrap()
            );
            std::fs::remove_file(&path).unwrap();
        }
    }
}
