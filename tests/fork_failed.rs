//! A daemon that exits on its own is reported `Failed` with its exit code,
//! until cleanup or the next start.
mod support;

use daemon_lifecycle::{DaemonStatus, ExitInfo};
use support::{eventually, within, Sandbox};

#[tokio::test]
async fn exit_code_3_is_failed_with_the_code() {
    let sb = Sandbox::new("exit3");
    let m = sb.manager(sb.config(&["--exit-code", "3"]));
    within(20, m.start()).await.unwrap();

    let status = eventually(10, || async {
        let s = m.status().await.unwrap();
        (!matches!(s, DaemonStatus::Running(_))).then_some(s)
    })
    .await;
    let DaemonStatus::Failed(reason) = status else {
        panic!("expected Failed, got {status:?}");
    };
    assert!(reason.contains("code 3"), "{reason}");
    assert_eq!(
        m.status_report().await.unwrap().last_exit,
        Some(ExitInfo::Code(3))
    );
    assert!(
        !sb.path("daemon.pid").exists(),
        "PID file of a dead daemon remains"
    );
    assert!(!m.is_running().await);
    assert_eq!(m.get_pid().await.unwrap(), None);

    // stop keeps the failure on record (like a failed systemd unit) ...
    within(20, m.stop()).await.unwrap();
    assert!(matches!(m.status().await.unwrap(), DaemonStatus::Failed(_)));
    // ... cleanup clears it, and leaves nothing behind.
    within(20, m.cleanup_stale()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    assert_eq!(std::fs::read_dir(sb.dir.path()).unwrap().count(), 0);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_clean_exit_is_stopped_not_failed() {
    let sb = Sandbox::new("exit0");
    let m = sb.manager(sb.config(&["--exit-code", "0"]));
    within(20, m.start()).await.unwrap();
    let report = eventually(10, || async {
        let r = m.status_report().await.unwrap();
        r.last_exit.is_some().then_some(r)
    })
    .await;
    assert_eq!(report.status, DaemonStatus::Stopped);
    assert_eq!(report.last_exit, Some(ExitInfo::Code(0)));
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_failed_daemon_can_be_started_again() {
    let sb = Sandbox::new("failed_again");
    let failing = sb.manager(sb.config(&["--exit-code", "7"]));
    within(20, failing.start()).await.unwrap();
    eventually(10, || async {
        matches!(failing.status().await.unwrap(), DaemonStatus::Failed(_)).then_some(())
    })
    .await;
    // Same name and PID file, now a healthy daemon.
    let healthy = sb.manager(sb.config(&[]));
    let pid = within(20, healthy.start()).await.unwrap();
    assert_eq!(healthy.status().await.unwrap(), DaemonStatus::Running(pid));
    within(20, healthy.stop()).await.unwrap();
    sb.assert_no_leaks();
}
