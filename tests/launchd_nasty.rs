//! launchd's nasty cases, against the launchctl simulator: `bootout`
//! returning before the job is gone, 5 on an early re-bootstrap (retried,
//! bounded), 119 after a `disable`, 113 for unknown jobs, no GUI session
//! (112, 125: the `user/UID` domain), the system domain, and an answer of
//! `print` that cannot be read.
mod support;

use std::time::{Duration, Instant};

use daemon_lifecycle::{DaemonError, DaemonManager, DaemonStatus, LaunchdBackend, Scope};
use support::launchd::{field, uid, Sim};
use support::{alive, within, Sandbox};

#[tokio::test]
async fn bootout_returns_early_and_stop_waits_for_the_processes() {
    let sb = Sandbox::new("ln_bootout");
    let sim = Sim::new(&sb);
    let m = sim.manager(sb.config(&["--ignore-term"]).with_shutdown_timeout_secs(2));
    let pid = within(20, m.start()).await.unwrap();
    let t = Instant::now();
    within(30, m.stop()).await.unwrap();
    let took = t.elapsed();
    assert!(!alive(pid), "stop returns only once the process is gone");
    assert!(
        took >= Duration::from_millis(1900),
        "SIGKILL after ExitTimeOut: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
    // launchctl bootout said 0 at once, and print still found the job after.
    let calls = sim.calls();
    let target = format!("gui/{}/{}", uid(), sb.tag);
    let after = &calls[calls
        .find(&format!("bootout {target} -> 0"))
        .expect("bootout")..];
    assert!(after.contains(&format!("print {target} -> 0")), "{after}");
    assert!(
        after
            .trim_end()
            .ends_with(&format!("print {target} -> 113")),
        "{after}"
    );
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn an_early_rebootstrap_gets_5_and_is_retried() {
    let sb = Sandbox::new("ln_eio");
    let sim = Sim::new(&sb);
    let m = sim.manager(sb.config(&[]));
    within(20, m.start()).await.unwrap();
    within(30, m.stop()).await.unwrap();
    let t = Instant::now();
    let pid = within(30, m.start()).await.unwrap();
    assert!(alive(pid));
    // The simulated launchd refuses for 1.5 s after the job left.
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    let calls = sim.calls();
    let bootstraps: Vec<&str> = calls
        .lines()
        .filter(|l| l.starts_with("bootstrap "))
        .collect();
    assert!(bootstraps.len() >= 3, "{calls}");
    assert!(bootstraps[1].ends_with("-> 5"), "{calls}");
    assert!(bootstraps.last().unwrap().ends_with("-> 0"), "{calls}");
    within(30, m.stop()).await.unwrap();
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn the_retry_of_5_is_bounded() {
    let sb = Sandbox::new("ln_bound");
    let sim = Sim::with_env(&sb, &[("LAUNCHCTL_SIM_EIO_MS", "60000")]);
    let m = sim.manager(sb.config(&[]));
    within(20, m.start()).await.unwrap();
    within(30, m.stop()).await.unwrap();
    let t = Instant::now();
    let err = within(40, m.start()).await.unwrap_err();
    let took = t.elapsed();
    match &err {
        DaemonError::Launchctl {
            code: 5, advice, ..
        } => {
            assert!(advice.contains("10s"), "{advice}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        took >= daemon_lifecycle::launchd::RETRY_BOUND && took < Duration::from_secs(16),
        "{took:?}"
    );
    let left = sb.processes();
    assert_eq!(left.len(), 3, "only the simulated domains run: {left:?}");
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_stale_disable_cannot_block_a_start_and_119_is_typed() {
    let sb = Sandbox::new("ln_disabled");
    let sim = Sim::new(&sb);
    let target = format!("gui/{}/{}", uid(), sb.tag);
    assert!(sim.launchctl(&["disable", &target]).status.success());
    let m = sim.manager(sb.config(&[]));
    let pid = within(20, m.start()).await.unwrap();
    assert!(alive(pid), "start enables first");
    within(30, m.stop()).await.unwrap();
    drop(sim);

    // A launchd where enable does not take: the 119 comes through, typed.
    let sim = Sim::with_env(&sb, &[("LAUNCHCTL_SIM_IGNORE_ENABLE", "1")]);
    assert!(sim.launchctl(&["disable", &target]).status.success());
    let m = sim.manager(sb.config(&[]));
    let err = within(20, m.start()).await.unwrap_err();
    match &err {
        DaemonError::Launchctl {
            code: 119, advice, ..
        } => {
            assert!(advice.contains("launchctl enable"), "{advice}")
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("119"), "{err}");
    assert_eq!(within(20, m.status()).await.unwrap(), DaemonStatus::Stopped);
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn unknown_jobs_are_stopped_not_errors() {
    let sb = Sandbox::new("ln_unknown");
    let sim = Sim::new(&sb);
    let m = sim.manager(sb.config(&[]));
    assert_eq!(within(20, m.status()).await.unwrap(), DaemonStatus::Stopped);
    within(20, m.stop()).await.unwrap();
    within(20, m.kill()).await.unwrap();
    within(20, m.cleanup_stale()).await.unwrap();
    assert!(matches!(
        within(20, m.wait_ready(1)).await,
        Err(DaemonError::NotRunning { .. })
    ));
    let calls = sim.calls();
    assert!(
        calls.contains(&format!("print gui/{}/{} -> 113", uid(), sb.tag)),
        "{calls}"
    );
    assert!(!calls.contains("bootout"), "nothing to boot out: {calls}");
    drop(sim);
    sb.assert_no_leaks();
}

async fn falls_back_to_the_user_domain(test: &str, gui: &str, code: i32) {
    let sb = Sandbox::new(test);
    let sim = Sim::with_env(&sb, &[("LAUNCHCTL_SIM_GUI", gui)]);
    let m = sim.manager(sb.config(&[]));
    let pid = within(30, m.start()).await.unwrap();
    let print = sim
        .print(&format!("user/{}/{}", uid(), sb.tag))
        .expect("in the user domain");
    assert_eq!(field(&print, "pid"), Some(pid.to_string()));
    assert!(sim.print(&format!("gui/{}/{}", uid(), sb.tag)).is_none());
    let bytes = std::fs::read(sim.plist(&sb.tag)).unwrap();
    let value: plist::Value = plist::from_bytes(&bytes).unwrap();
    assert_eq!(
        value.as_dictionary().unwrap()["LimitLoadToSessionType"].as_string(),
        Some("Background"),
        "user/UID is the Background session"
    );
    assert!(
        sim.calls().contains(&format!("-> {code}")),
        "{gui}: {}",
        sim.calls()
    );
    // Another manager (a later daemonctl) finds it there.
    let again = sim.manager(sb.config(&[]));
    assert_eq!(
        within(20, again.status()).await.unwrap(),
        DaemonStatus::Running(pid)
    );
    let pid2 = within(30, again.restart()).await.unwrap();
    assert_ne!(pid, pid2);
    within(30, again.stop()).await.unwrap();
    assert!(!alive(pid2));
    assert_eq!(
        within(20, again.status()).await.unwrap(),
        DaemonStatus::Stopped
    );
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn no_gui_domain_112_falls_back_to_the_user_domain() {
    falls_back_to_the_user_domain("ln_gui_absent", "absent", 112).await;
}

#[tokio::test]
async fn a_gui_domain_that_refuses_125_falls_back_to_the_user_domain() {
    falls_back_to_the_user_domain("ln_gui_elsewhere", "elsewhere", 125).await;
}

#[tokio::test]
async fn system_scope_is_a_daemon_in_the_system_domain() {
    if !support::have_root("a daemon in the system domain, run as nobody") {
        return;
    }
    let sb = Sandbox::new("ln_system");
    let sim = Sim::new(&sb);
    // Somewhere nobody may write its dump.
    let out = sb.path("out");
    std::fs::create_dir(&out).unwrap();
    for dir in [sb.dir.path(), out.as_path()] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    let dump = out.join("dump.json");
    let mut config = sb.config(&["--dump", dump.to_str().unwrap()]);
    config.user = Some("nobody".into());
    let backend = sim.backend(Scope::System);
    let m = DaemonManager::with_backend(config, std::sync::Arc::new(backend));
    let pid = within(20, m.start()).await.unwrap();
    let print = sim
        .print(&format!("system/{}", sb.tag))
        .expect("in the system domain");
    assert_eq!(field(&print, "type").as_deref(), Some("LaunchDaemon"));
    assert_eq!(field(&print, "pid"), Some(pid.to_string()));
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(sim.plist(&sb.tag)).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, 0, 0o644));
    let dumped: serde_json::Value = support::eventually(10, || async {
        std::fs::read(&dump)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    })
    .await;
    assert_eq!(dumped["uid"], 65534, "UserName = nobody");
    within(30, m.stop()).await.unwrap();
    assert!(!alive(pid));
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn an_unreadable_print_is_an_error_not_stopped() {
    let sb = Sandbox::new("ln_garbage");
    let fake = sb.path("launchctl");
    std::fs::write(&fake, "#!/bin/sh\necho 'state = running'\nexit 0\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let backend = LaunchdBackend::new(&fake, Scope::User).with_plist_dir(sb.path("agents"));
    let m = DaemonManager::with_backend(sb.config(&[]), std::sync::Arc::new(backend));
    let err = within(20, m.status()).await.unwrap_err();
    assert!(
        matches!(err, DaemonError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::InvalidData),
        "{err:?}"
    );
    assert!(!m.is_running().await);
    sb.assert_no_leaks();
}
