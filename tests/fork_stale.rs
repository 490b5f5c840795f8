//! A PID file naming a process that is not our daemon is `Stale`, and that
//! process is never signalled by stop, kill or cleanup.
mod support;

use std::process::{Child, Command};

use daemon_lifecycle::DaemonStatus;
use support::{alive, within, Sandbox};

/// An unrelated process, killed when the test ends.
struct Bystander(Child);

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn unrelated_live_pid_is_stale_and_untouched() {
    let sb = Sandbox::new("stale_live");
    // Its own tag, so the sandbox's leak check does not count it.
    let mut bystander = Bystander(Command::new("/bin/sleep").arg("300").spawn().unwrap());
    let pid = bystander.0.id();
    let pid_file = sb.path("daemon.pid");
    std::fs::write(&pid_file, format!("{pid}\n")).unwrap();

    let m = sb.manager(sb.config(&[]));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stale(pid));
    assert_eq!(m.get_pid().await.unwrap(), None);
    assert!(!m.is_running().await);

    within(20, m.kill()).await.unwrap();
    assert!(alive(pid), "kill signalled an unrelated process");
    std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
    within(20, m.stop()).await.unwrap();
    assert!(alive(pid), "stop signalled an unrelated process");
    std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
    within(20, m.cleanup_stale()).await.unwrap();
    assert!(alive(pid), "cleanup signalled an unrelated process");
    assert!(!pid_file.exists());
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    assert!(bystander.0.try_wait().unwrap().is_none());
    sb.assert_no_leaks();
}

#[tokio::test]
async fn reused_pid_with_old_identity_is_stale() {
    let sb = Sandbox::new("stale_reused");
    let m = sb.manager(sb.config(&[]));
    let pid = within(20, m.start()).await.unwrap();
    let identity = std::fs::read_to_string(sb.path("daemon.pid.identity")).unwrap();
    within(20, m.stop()).await.unwrap();

    // Simulate PID reuse: an unrelated live process gets the old records.
    // Start times are in clock ticks (10 ms at USER_HZ 100): a process started
    // in the same tick as the daemon would be indistinguishable, so the
    // stand-in for the reused PID starts a few ticks later, as a real reuse
    // (after the PID space wrapped) always does.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut bystander = Bystander(Command::new("/bin/sleep").arg("300").spawn().unwrap());
    let other = bystander.0.id();
    let forged = identity.replace(&format!("\"pid\":{pid}"), &format!("\"pid\":{other}"));
    assert_ne!(forged, identity);
    std::fs::write(sb.path("daemon.pid.identity"), forged).unwrap();
    std::fs::write(sb.path("daemon.pid"), format!("{other}\n")).unwrap();

    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stale(other));
    within(20, m.kill()).await.unwrap();
    within(20, m.stop()).await.unwrap();
    assert!(alive(other));
    assert!(bystander.0.try_wait().unwrap().is_none());
    sb.assert_no_leaks();
}

#[tokio::test]
async fn dead_pid_is_stale_and_start_replaces_it() {
    let sb = Sandbox::new("stale_dead");
    let mut gone = Command::new("/bin/true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    std::fs::write(sb.path("daemon.pid"), format!("{dead}\n")).unwrap();
    let m = sb.manager(sb.config(&[]));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stale(dead));
    let pid = within(20, m.start()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    within(20, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn garbage_pid_file_is_a_typed_error() {
    let sb = Sandbox::new("stale_garbage");
    std::fs::write(sb.path("daemon.pid"), "not a pid\n").unwrap();
    let m = sb.manager(sb.config(&[]));
    let err = m.status().await.unwrap_err();
    assert!(
        matches!(&err, daemon_lifecycle::DaemonError::PidFileError { path, .. } if path.ends_with("daemon.pid")),
        "{err:?}"
    );
    // Start refuses too, and leaves the file as it was.
    assert!(m.start().await.is_err());
    assert_eq!(
        std::fs::read_to_string(sb.path("daemon.pid")).unwrap(),
        "not a pid\n"
    );
    sb.assert_no_leaks();
}
