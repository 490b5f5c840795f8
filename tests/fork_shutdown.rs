//! A killed supervisor does not strand the daemon: stop still takes its
//! group. (The shutdown sequence, grandchildren and kill, on every backend:
//! `tests/scenarios/shutdown.rs`.)
mod support;

use daemon_lifecycle::DaemonStatus;
use support::{alive, read_pid_file, within, Sandbox};

#[tokio::test]
async fn a_killed_supervisor_does_not_strand_the_daemon() {
    let sb = Sandbox::new("supervisor_killed");
    let gc_file = sb.path("grandchild.pid");
    let m = sb.manager(sb.config(&["--grandchild", gc_file.to_str().unwrap()]));
    let pid = within(20, m.start()).await.unwrap();
    let grandchild = within(10, read_pid_file(&gc_file)).await;
    // Find and SIGKILL the supervisor (the daemon's parent).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: i32 = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ppid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    support::eventually(5, || async { (!alive(ppid as u32)).then_some(()) }).await;

    // The daemon is still reported running, and stop still takes the group.
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    within(30, m.stop()).await.unwrap();
    assert!(!alive(pid));
    assert!(!alive(grandchild));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}
