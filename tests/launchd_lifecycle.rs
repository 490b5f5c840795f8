//! The launchd backend's lifecycle against the launchctl simulator
//! (`examples/launchctl_sim.rs`): start, status, stop, kill, restart,
//! cleanup, uninstall, readiness, concurrent starts, ownership. Real
//! processes (testd) run under the simulated launchd; nothing is left
//! running or on disk.
mod support;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_lifecycle::{DaemonConfig, DaemonError, DaemonStatus, Readiness, Scope};
use support::launchd::{field, uid, Sim};
use support::{alive, eventually, within, Sandbox};

fn gui(label: &str) -> String {
    format!("gui/{}/{label}", uid())
}

#[tokio::test]
async fn start_status_stop() {
    let sb = Sandbox::new("ld_start");
    let sim = Sim::new(&sb);
    let dump = sb.path("dump.json");
    let config = sb
        .config(&[
            "--dump",
            dump.to_str().unwrap(),
            "--",
            "a b",
            "$HOME",
            "%",
            "",
        ])
        .with_env("GREETING", "hello \"world\" & <you>")
        .with_working_dir(sb.dir.path());
    let m = sim.manager(config.clone());
    assert_eq!(within(20, m.status()).await.unwrap(), DaemonStatus::Stopped);

    let pid = within(20, m.start()).await.unwrap();
    assert!(alive(pid));
    assert_eq!(
        within(20, m.status()).await.unwrap(),
        DaemonStatus::Running(pid)
    );
    let report = within(20, m.status_report()).await.unwrap();
    assert_eq!(report.backend, daemon_lifecycle::BackendKind::Launchd);
    assert_eq!(report.drift, Some(false));
    assert_eq!(
        within(20, m.start()).await.unwrap(),
        pid,
        "start finds it running"
    );

    // launchd's view.
    let print = sim.print(&gui(&sb.tag)).expect("loaded");
    assert_eq!(field(&print, "state").as_deref(), Some("running"));
    assert_eq!(field(&print, "pid"), Some(pid.to_string()));
    let plist_path = sim.plist(&sb.tag);
    assert_eq!(
        field(&print, "path"),
        Some(plist_path.display().to_string())
    );
    let meta = std::fs::metadata(&plist_path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o644);
    assert_eq!(meta.uid(), nix::unistd::Uid::effective().as_raw());

    // The daemon got the config's argv, environment and working directory.
    let dumped: serde_json::Value = eventually(10, || async {
        std::fs::read(&dump)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    })
    .await;
    let mut argv = vec![config.binary_path.to_str().unwrap().to_owned()];
    argv.extend(config.args.iter().cloned());
    assert_eq!(dumped["argv"], serde_json::json!(argv));
    assert_eq!(dumped["env"]["GREETING"], "hello \"world\" & <you>");
    assert_eq!(dumped["env"]["XPC_SERVICE_NAME"], sb.tag.as_str());
    assert_eq!(dumped["cwd"], sb.dir.path().to_str().unwrap());
    assert_eq!(dumped["pgid"], pid, "launchd makes the job a process group");

    within(30, m.stop()).await.unwrap();
    assert!(!alive(pid));
    assert_eq!(within(20, m.status()).await.unwrap(), DaemonStatus::Stopped);
    assert!(sim.print(&gui(&sb.tag)).is_none(), "booted out");
    assert!(
        plist_path.exists(),
        "the agent stays installed until uninstall"
    );
    within(30, m.stop()).await.unwrap();

    let calls = sim.calls();
    for legacy in [" load ", " unload ", " list "] {
        assert!(!format!(" {calls}").contains(legacy), "{calls}");
    }
    let enable = calls.find("enable ").expect("enable");
    let bootstrap = calls.find("bootstrap ").expect("bootstrap");
    assert!(enable < bootstrap, "enable before bootstrap: {calls}");
    assert!(
        calls.contains(&format!("bootout {} -> 0", gui(&sb.tag))),
        "{calls}"
    );
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn grandchildren_go_with_stop_and_kill() {
    let sb = Sandbox::new("ld_group");
    let sim = Sim::new(&sb);
    for op in ["stop", "kill"] {
        let grandchild = sb.path(&format!("grandchild-{op}"));
        let m = sim.manager(sb.config(&["--grandchild", grandchild.to_str().unwrap()]));
        let pid = within(20, m.start()).await.unwrap();
        let gpid = support::read_pid_file(&grandchild).await;
        assert!(alive(gpid));
        let t = Instant::now();
        match op {
            "stop" => within(30, m.stop()).await.unwrap(),
            _ => within(30, m.kill()).await.unwrap(),
        }
        assert!(
            !alive(pid) && !alive(gpid),
            "{op}: both gone when it returns"
        );
        if op == "kill" {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "kill does not wait out ExitTimeOut"
            );
        }
        assert_eq!(within(20, m.status()).await.unwrap(), DaemonStatus::Stopped);
    }
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn restart_is_kickstart_k_until_the_plist_changes() {
    let sb = Sandbox::new("ld_restart");
    let sim = Sim::new(&sb);
    let config = sb.config(&[]);
    let m = sim.manager(config.clone());
    let pid = within(20, m.start()).await.unwrap();
    let pid2 = within(30, m.restart()).await.unwrap();
    assert_ne!(pid, pid2);
    assert!(!alive(pid) && alive(pid2));
    assert!(sim
        .calls()
        .contains(&format!("kickstart -k {} -> 0", gui(&sb.tag))));
    assert_eq!(within(20, m.status_report()).await.unwrap().restarts, 1);

    // A changed config: the plist on disk drifts, and restart reloads it
    // (bootout, then a bootstrap that launchd refuses with 5 for a while).
    let changed = sim.manager(config.with_env("NEW", "1"));
    assert_eq!(
        within(20, changed.status_report()).await.unwrap().drift,
        Some(true)
    );
    let pid3 = within(40, changed.restart()).await.unwrap();
    assert!(!alive(pid2) && alive(pid3));
    assert_eq!(
        within(20, changed.status_report()).await.unwrap().drift,
        Some(false)
    );
    let calls = sim.calls();
    let after_bootout = &calls[calls.rfind("bootout ").unwrap()..];
    assert!(
        after_bootout.contains("-> 5\n") && after_bootout.trim_end().ends_with("-> 0"),
        "the early re-bootstrap failed with 5 and was retried: {after_bootout}"
    );
    // Restart of a stopped daemon starts it.
    within(30, changed.stop()).await.unwrap();
    let pid4 = within(40, changed.restart()).await.unwrap();
    assert!(alive(pid4));
    within(30, changed.stop()).await.unwrap();
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_crash_is_failed_until_cleanup() {
    let sb = Sandbox::new("ld_crash");
    let sim = Sim::new(&sb);
    // Exits at once: the start fails naming the code, or (when the exit
    // came after launchd was seen running it) the status says it.
    let m = sim.manager(sb.config(&["--exit-code", "3"]));
    if let Err(err) = within(20, m.start()).await {
        assert!(
            matches!(err, DaemonError::StartFailed { ref reason, .. } if reason.contains("exited with code 3")),
            "{err:?}"
        );
    }
    let status = eventually(10, || async {
        Some(m.status().await.unwrap()).filter(|s| !matches!(s, DaemonStatus::Running(_)))
    })
    .await;
    assert_eq!(status, DaemonStatus::Failed("exited with code 3".into()));
    // stop keeps the failure on record; cleanup clears it.
    within(30, m.stop()).await.unwrap();
    assert_eq!(
        within(20, m.status()).await.unwrap(),
        DaemonStatus::Failed("exited with code 3".into())
    );
    let report = within(20, m.status_report()).await.unwrap();
    assert_eq!(report.last_exit, Some(daemon_lifecycle::ExitInfo::Code(3)));
    within(30, m.cleanup_stale()).await.unwrap();
    assert_eq!(within(20, m.status()).await.unwrap(), DaemonStatus::Stopped);
    assert!(sim.print(&gui(&sb.tag)).is_none());

    // Crashes later: running first, failed after.
    let m = sim.manager(sb.config(&["--crash-after", "300:4"]));
    let pid = within(20, m.start()).await.unwrap();
    let status = eventually(10, || async {
        Some(m.status().await.unwrap()).filter(|s| *s != DaemonStatus::Running(pid))
    })
    .await;
    assert_eq!(status, DaemonStatus::Failed("exited with code 4".into()));
    // A start of the failed job boots it out and loads it anew.
    let pid = within(20, m.start()).await.unwrap();
    assert!(alive(pid));
    within(30, m.stop()).await.unwrap();
    // Cleanup leaves a running daemon alone.
    let m = sim.manager(sb.config(&[]));
    let pid = within(20, m.start()).await.unwrap();
    within(20, m.cleanup_stale()).await.unwrap();
    assert_eq!(
        within(20, m.status()).await.unwrap(),
        DaemonStatus::Running(pid)
    );
    within(30, m.stop()).await.unwrap();
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn uninstall_boots_out_removes_the_plist_and_clears_a_disable() {
    let sb = Sandbox::new("ld_uninstall");
    let sim = Sim::new(&sb);
    let m = sim.manager(sb.config(&[]));
    let pid = within(20, m.start()).await.unwrap();
    let backend = sim.backend(Scope::User);
    let spec = m.spec().unwrap();
    let target = gui(&sb.tag);
    assert!(sim.launchctl(&["disable", &target]).status.success());
    let override_file = sim
        .state
        .join("overrides")
        .join(format!("gui-{}", uid()))
        .join(&sb.tag);
    assert!(override_file.exists());
    assert!(within(30, backend.uninstall(spec, None)).await.unwrap());
    assert!(!alive(pid));
    assert!(!sim.plist(&sb.tag).exists());
    assert!(sim.print(&target).is_none());
    assert!(!override_file.exists(), "the disable is cleared");
    assert!(
        !within(30, backend.uninstall(spec, None)).await.unwrap(),
        "nothing left"
    );

    // install writes the plist (and enables) without loading it.
    let spec = m.spec().unwrap();
    assert!(within(30, backend.install(spec, None, true)).await.unwrap());
    assert!(
        !within(30, backend.install(spec, None, true)).await.unwrap(),
        "unchanged"
    );
    assert!(sim.plist(&sb.tag).exists());
    assert!(sim.print(&target).is_none());
    assert!(within(30, backend.uninstall(spec, None)).await.unwrap());
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn concurrent_starts_give_one_job() {
    let sb = Sandbox::new("ld_concurrent");
    let sim = Sim::new(&sb);
    let backend = Arc::new(sim.backend(Scope::User));
    let config = sb.config(&[]);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let m = daemon_lifecycle::DaemonManager::with_backend(config.clone(), backend.clone());
        tasks.push(tokio::spawn(async move { m.start().await }));
    }
    let mut pids = Vec::new();
    for t in tasks {
        pids.push(within(60, t).await.unwrap().unwrap());
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert_eq!(
        sb.processes().len(),
        4,
        "one daemon and the three simulated domains"
    );
    let m = sim.manager(config);
    within(30, m.stop()).await.unwrap();
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn readiness_probes_gate_start() {
    let sb = Sandbox::new("ld_ready");
    let sim = Sim::new(&sb);
    let addr = support::free_addr();
    let mut config = sb.config(&["--ready-after", "600", "--listen", &addr]);
    config.readiness = Some(Readiness::Tcp {
        address: addr.clone(),
        interval_ms: Some(20),
    });
    let m = sim.manager(config);
    let t = Instant::now();
    let pid = within(20, m.start()).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    std::net::TcpStream::connect(&addr).expect("listening when start returned");
    within(20, m.wait_ready(5)).await.unwrap();
    within(30, m.stop()).await.unwrap();
    assert!(!alive(pid));
    let err = within(20, m.wait_ready(1)).await.unwrap_err();
    assert!(matches!(err, DaemonError::NotRunning { .. }), "{err:?}");

    // Never ready: a timeout, and nothing left loaded or running.
    let mut config = sb.config(&[]);
    config.readiness = Some(Readiness::Tcp {
        address: support::free_addr(),
        interval_ms: Some(20),
    });
    let m = sim.manager(config.with_startup_timeout_secs(1));
    let err = within(30, m.start()).await.unwrap_err();
    assert!(matches!(err, DaemonError::Timeout { .. }), "{err:?}");
    assert_eq!(within(20, m.status()).await.unwrap(), DaemonStatus::Stopped);
    assert!(sim.print(&gui(&sb.tag)).is_none());

    // notify: launchd has no READY=1; ready once running.
    let mut config = sb.config(&[]);
    config.readiness = Some(Readiness::Notify);
    let m = sim.manager(config);
    within(20, m.start()).await.unwrap();
    within(20, m.wait_ready(2)).await.unwrap();
    within(30, m.stop()).await.unwrap();
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn jobs_and_plists_that_are_not_ours_are_refused() {
    let sb = Sandbox::new("ld_owner");
    let sim = Sim::new(&sb);
    // Someone else's job under our label, loaded from their plist.
    let theirs_dir = sb.path("theirs");
    std::fs::create_dir(&theirs_dir).unwrap();
    let theirs = theirs_dir.join(format!("{}.plist", sb.tag));
    let spec = daemon_lifecycle::ServiceSpec::from_config(&sb.config(&["--", "theirs"])).unwrap();
    let bytes = daemon_lifecycle::PlistSpec::from_spec(&spec, Scope::User)
        .unwrap()
        .render()
        .unwrap();
    std::fs::write(&theirs, bytes).unwrap();
    let out = sim.launchctl(&[
        "bootstrap",
        &format!("gui/{}", uid()),
        theirs.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let their_pid: u32 = field(&sim.print(&gui(&sb.tag)).unwrap(), "pid")
        .unwrap()
        .parse()
        .unwrap();

    let m = sim.manager(sb.config(&[]));
    for (op, result) in [
        ("start", m.start().await.map(drop)),
        ("stop", m.stop().await),
        ("kill", m.kill().await),
        ("status", m.status().await.map(drop)),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, DaemonError::NotOwned { ref reason, .. } if reason.contains("theirs")),
            "{op}: {err:?}"
        );
    }
    assert!(alive(their_pid), "untouched");
    // adopt takes it over.
    let mut adopting = sb.config(&[]);
    adopting.adopt = true;
    within(30, sim.manager(adopting).stop()).await.unwrap();
    assert!(!alive(their_pid));

    // A plist file of another program where ours would go.
    let foreign = sim.plist(&sb.tag);
    let text = std::fs::read_to_string(&theirs)
        .unwrap()
        .replace(support::testd().to_str().unwrap(), "/usr/bin/other-program");
    std::fs::write(&foreign, &text).unwrap();
    let err = within(20, m.start()).await.unwrap_err();
    assert!(matches!(err, DaemonError::NotOwned { .. }), "{err:?}");
    assert_eq!(
        std::fs::read_to_string(&foreign).unwrap(),
        text,
        "untouched"
    );
    let spec = m.spec().unwrap();
    let err = within(20, sim.backend(Scope::User).uninstall(spec, None))
        .await
        .unwrap_err();
    assert!(matches!(err, DaemonError::NotOwned { .. }), "{err:?}");
    assert!(foreign.exists());
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn user_and_group_need_a_daemon() {
    let sb = Sandbox::new("ld_agent_user");
    let sim = Sim::new(&sb);
    let mut config: DaemonConfig = sb.config(&[]);
    config.user = Some("nobody".into());
    let err = within(20, sim.manager(config).start()).await.unwrap_err();
    assert!(
        matches!(err, DaemonError::InvalidConfig { ref field, .. } if field == "user"),
        "{err:?}"
    );
    assert!(!sim.plist(&sb.tag).exists(), "nothing written");
    drop(sim);
    sb.assert_no_leaks();
}
