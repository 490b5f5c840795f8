//! The blocking facade offers the same names without a runtime.
mod support;

use std::sync::Arc;

use daemon_lifecycle::blocking::DaemonManager;
use daemon_lifecycle::{BackendKind, DaemonStatus};
use support::Sandbox;

#[test]
fn blocking_facade_runs_the_whole_lifecycle() {
    let sb = Sandbox::new("blocking");
    let (tx, rx) = std::sync::mpsc::channel();
    let config = sb.config(&[]);
    // The body runs on a thread so a hang fails the test instead of blocking it.
    std::thread::spawn(move || {
        let m = DaemonManager::with_backend(config, Arc::new(support::fork_backend()));
        let result = (|| -> daemon_lifecycle::Result<()> {
            assert_eq!(m.backend_kind()?, BackendKind::Fork);
            let pid = m.start()?;
            assert_eq!(m.status()?, DaemonStatus::Running(pid));
            assert_eq!(m.get_pid()?, Some(pid));
            assert!(m.is_running());
            m.wait_ready(5)?;
            let new_pid = m.restart()?;
            assert_ne!(new_pid, pid);
            assert_eq!(m.status_report()?.status, DaemonStatus::Running(new_pid));
            m.stop()?;
            assert_eq!(m.status()?, DaemonStatus::Stopped);
            m.cleanup_stale()?;
            m.kill()?;
            assert!(!m.is_running());
            Ok(())
        })();
        tx.send(result).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("blocking lifecycle did not finish within 60 s")
        .unwrap();
    sb.assert_no_leaks();
}
