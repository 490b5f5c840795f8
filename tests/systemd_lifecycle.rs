//! The systemd backend against a real `systemd --user` (private instance):
//! transient start, status, stop, kill, restart, with the daemon in the
//! manager's cgroup. (The lifecycle scenarios on every backend:
//! `tests/scenarios/`.)
mod support;

use std::time::{Duration, Instant};

use daemon_lifecycle::{BackendKind, DaemonStatus};
use support::systemd::UserManager;
use support::{alive, within, Sandbox};

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
