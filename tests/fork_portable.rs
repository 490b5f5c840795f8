//! The portable code paths (what macOS and the BSDs run: no pidfd, no /proc,
//! no child subreaper), forced on Linux with DAEMON_LIFECYCLE_PORTABLE=1 so
//! CI exercises them. Every test in this binary sets it before anything runs.
mod support;

use std::time::{Duration, Instant};

use daemon_lifecycle::{DaemonStatus, PORTABLE_ENV};
use support::{alive, read_pid_file, within, Sandbox};

fn portable() {
    // Read once per process by the library, inherited by the supervisor.
    std::env::set_var(PORTABLE_ENV, "1");
}

#[tokio::test]
async fn start_status_stop_on_the_portable_path() {
    portable();
    let sb = Sandbox::new("portable_basic");
    let gc = sb.path("gc.pid");
    let m = sb.manager(sb.config(&["--grandchild", gc.to_str().unwrap()]));
    let pid = within(20, m.start()).await.unwrap();
    let grandchild = read_pid_file(&gc).await;
    // No /proc start time or boot id: the supervisor took the portable path.
    let rec = support::identity(&sb).unwrap();
    assert!(rec["daemon"]["start_time"].is_null(), "{rec}");
    assert!(rec["daemon"]["boot_id"].is_null(), "{rec}");
    // And so did we: without start times, status still knows the daemon.
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    within(20, m.stop()).await.unwrap();
    assert!(!alive(pid));
    assert!(!alive(grandchild));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn sigterm_timeout_and_exit_codes_on_the_portable_path() {
    portable();
    let sb = Sandbox::new("portable_term");
    let m = sb.manager(sb.config(&["--ignore-term"]).with_shutdown_timeout_secs(2));
    within(20, m.start()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    within(30, m.stop()).await.unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    // Not much more than the timeout (a loaded CI machine adds a little).
    assert!(took < Duration::from_millis(5000), "{took:?}");

    let failing = sb.manager(sb.config(&["--exit-code", "3"]));
    within(20, failing.start()).await.unwrap();
    let status = support::eventually(10, || async {
        let s = failing.status().await.unwrap();
        matches!(s, DaemonStatus::Failed(_)).then_some(s)
    })
    .await;
    assert_eq!(status, DaemonStatus::Failed("exited with code 3".into()));
    within(20, failing.cleanup_stale()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn restart_and_notify_on_the_portable_path() {
    portable();
    let sb = Sandbox::new("portable_restart");
    let mut cfg = sb.config(&["--ready-after", "100", "--crash-after", "400:9"]);
    cfg.readiness = Some(daemon_lifecycle::Readiness::Notify);
    cfg.restart.policy = daemon_lifecycle::RestartPolicy::OnFailure;
    cfg.restart.delay_ms = 10;
    let m = sb.manager(cfg);
    let first = within(20, m.start()).await.unwrap();
    support::eventually(20, || async {
        let r = m.status_report().await.unwrap();
        matches!(r.status, DaemonStatus::Running(p) if p != first && r.restarts >= 1).then_some(())
    })
    .await;
    within(20, m.stop()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}
