//! The systemd backend against a real `systemd --user` (private instance):
//! transient start, status, stop, kill, restart, failures.
mod support;

use std::time::{Duration, Instant};

use daemon_lifecycle::{BackendKind, DaemonStatus, ExitInfo};
use support::systemd::UserManager;
use support::{alive, read_pid_file, within, Sandbox};

#[tokio::test]
async fn transient_start_status_stop_kill_restart() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_lifecycle");
    let m = sb.systemd_manager(&um, sb.config(&[])).await;
    assert_eq!(m.backend_kind().await.unwrap(), BackendKind::Systemd);
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);

    let pid = within(30, m.start()).await.unwrap();
    assert!(alive(pid));
    assert!(
        um.unit_processes().contains(&pid),
        "PID {pid} is not in the manager's cgroup"
    );
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    assert_eq!(m.get_pid().await.unwrap(), Some(pid));
    // Idempotent start.
    assert_eq!(within(30, m.start()).await.unwrap(), pid);
    m.wait_ready(5).await.unwrap();

    let new_pid = within(30, m.restart()).await.unwrap();
    assert_ne!(new_pid, pid);
    assert!(!alive(pid));

    within(30, m.stop()).await.unwrap();
    assert!(!alive(new_pid));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    within(30, m.stop()).await.unwrap(); // stopping a stopped unit is fine

    let pid = within(30, m.start()).await.unwrap();
    let t = Instant::now();
    within(30, m.kill()).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!alive(pid));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    assert!(um.unit_processes().is_empty(), "{:?}", um.unit_processes());
    sb.assert_no_leaks();
}

#[tokio::test]
async fn crash_is_failed_with_the_exit_code_until_cleanup() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_crash");
    let m = sb
        .systemd_manager(&um, sb.config(&["--exit-code", "3"]))
        .await;
    // Type=exec: the exec succeeds, then the daemon dies; start may see it
    // alive or already failed, and the status must settle on Failed.
    let _ = within(30, m.start()).await;
    let status = support::eventually(10, || async {
        match m.status().await.unwrap() {
            DaemonStatus::Running(_) => None,
            other => Some(other),
        }
    })
    .await;
    let DaemonStatus::Failed(reason) = status else {
        panic!("expected Failed, got {status:?}")
    };
    assert!(reason.contains("code 3"), "{reason}");
    assert_eq!(
        m.status_report().await.unwrap().last_exit,
        Some(ExitInfo::Code(3))
    );
    // Failed stays until cleanup; stop does not clear it.
    within(30, m.stop()).await.unwrap();
    assert!(matches!(m.status().await.unwrap(), DaemonStatus::Failed(_)));
    // The name can be started again at once (a healthy daemon now).
    let healthy = sb.systemd_manager(&um, sb.config(&[])).await;
    let pid = within(30, healthy.start()).await.unwrap();
    assert_eq!(healthy.status().await.unwrap(), DaemonStatus::Running(pid));
    within(30, healthy.stop()).await.unwrap();
    // And cleanup turns a failed unit into a stopped one.
    let _ = within(30, m.start()).await;
    support::eventually(10, || async {
        matches!(m.status().await.unwrap(), DaemonStatus::Failed(_)).then_some(())
    })
    .await;
    within(30, m.cleanup_stale()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn sigterm_ignored_is_killed_after_timeout_stop_sec() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_ignore_term");
    let m = sb
        .systemd_manager(
            &um,
            sb.config(&["--ignore-term"]).with_shutdown_timeout_secs(2),
        )
        .await;
    let pid = within(30, m.start()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    within(30, m.stop()).await.unwrap();
    let took = t.elapsed();
    assert!(!alive(pid));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(5000),
        "{took:?}"
    );
    sb.assert_no_leaks();
}

#[tokio::test]
async fn grandchildren_go_with_the_unit() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_grandchild");
    let gc_file = sb.path("grandchild.pid");
    let m = sb
        .systemd_manager(&um, sb.config(&["--grandchild", gc_file.to_str().unwrap()]))
        .await;
    let pid = within(30, m.start()).await.unwrap();
    let grandchild = within(10, read_pid_file(&gc_file)).await;
    assert!(alive(grandchild));
    within(30, m.stop()).await.unwrap();
    assert!(!alive(pid));
    assert!(!alive(grandchild), "grandchild survived the stop");
    sb.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_starts_give_one_unit() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_concurrent");
    let config = sb.config(&[]);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let m = sb.systemd_manager(&um, config.clone()).await;
        tasks.push(tokio::spawn(async move { m.start().await }));
    }
    let mut pids = Vec::new();
    for t in tasks {
        pids.push(within(60, t).await.unwrap().unwrap());
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert_eq!(um.unit_processes(), pids);
    let m = sb.systemd_manager(&um, config).await;
    within(30, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}
