//! A PID file naming a process that is not our daemon is `Stale`, and that
//! process is never signalled by stop, kill or cleanup.
mod support;

use std::process::{Child, Command};

use daemon_lifecycle::{DaemonError, DaemonStatus};
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
    within(20, m.stop()).await.unwrap();
    assert!(alive(pid), "stop signalled an unrelated process");
    // Not ours (no identity record beside it): never removed, by start,
    // stop or cleanup; the errors say why.
    let err = within(20, m.cleanup_stale()).await.unwrap_err();
    assert!(
        matches!(&err, DaemonError::UntrustedFile { path, .. } if path == &pid_file),
        "{err:?}"
    );
    assert!(err.to_string().contains("no identity record"), "{err}");
    let err = within(20, m.start()).await.unwrap_err();
    assert!(matches!(&err, DaemonError::UntrustedFile { .. }), "{err:?}");
    assert!(
        alive(pid),
        "cleanup or start signalled an unrelated process"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{pid}\n")
    );
    let report = m.status_report().await.unwrap();
    assert_eq!(report.status, DaemonStatus::Stale(pid));
    assert!(report
        .problem
        .unwrap()
        .contains("not written by daemon-lifecycle"));
    assert!(bystander.0.try_wait().unwrap().is_none());
    std::fs::remove_file(&pid_file).unwrap();
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

/// Another program's PID file (here: naming a dead PID, no identity record)
/// is not ours: `start` refuses to replace it, and leaves it as it was.
#[tokio::test]
async fn a_pid_file_we_did_not_write_is_never_replaced() {
    let sb = Sandbox::new("stale_dead");
    let mut gone = Command::new("/bin/true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    std::fs::write(sb.path("daemon.pid"), format!("{dead}\n")).unwrap();
    let m = sb.manager(sb.config(&[]));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stale(dead));
    let err = within(20, m.start()).await.unwrap_err();
    assert!(matches!(&err, DaemonError::UntrustedFile { .. }), "{err:?}");
    assert_eq!(
        std::fs::read_to_string(sb.path("daemon.pid")).unwrap(),
        format!("{dead}\n")
    );
    // Nothing else was created beside it (no lock, no record, no socket).
    let names: Vec<_> = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("daemon.pid"))
        .collect();
    assert_eq!(names, ["daemon.pid"]);
    std::fs::remove_file(sb.path("daemon.pid")).unwrap();
    sb.assert_no_leaks();
}

/// Our own stale files (supervisor and daemon both SIGKILLed) are ours to
/// replace: status says what happened, and start runs a new daemon.
#[tokio::test]
async fn supervisor_and_daemon_killed_status_says_so_and_start_replaces() {
    let sb = Sandbox::new("stale_ours");
    let m = sb.manager(sb.config(&[]));
    let pid = within(20, m.start()).await.unwrap();
    let rec = support::identity(&sb).unwrap();
    let sup = rec["supervisor"]["pid"].as_u64().unwrap() as u32;
    for p in [sup, pid] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        support::eventually(5, || async move { (!alive(p)).then_some(()) }).await;
    }
    match m.status().await.unwrap() {
        DaemonStatus::Failed(reason) => assert!(
            reason.starts_with(&format!("supervisor gone; daemon {pid} exited")),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    let new = within(20, m.start()).await.unwrap();
    assert_ne!(new, pid);
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(new));
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
