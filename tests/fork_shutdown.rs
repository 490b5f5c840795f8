//! The shutdown sequence: SIGTERM to the whole group, SIGKILL after the
//! timeout, woken by the exit rather than a fixed sleep.
mod support;

use std::time::{Duration, Instant};

use daemon_lifecycle::DaemonStatus;
use support::{alive, read_pid_file, within, Sandbox};

#[tokio::test]
async fn daemon_ignoring_sigterm_is_killed_after_the_timeout() {
    let sb = Sandbox::new("ignore_term");
    let m = sb.manager(sb.config(&["--ignore-term"]).with_shutdown_timeout_secs(2));
    let pid = within(20, m.start()).await.unwrap();
    // Give it a moment to install SIG_IGN (it does so first thing).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t = Instant::now();
    within(30, m.stop()).await.unwrap();
    let took = t.elapsed();
    assert!(!alive(pid));
    // About the timeout: not before it, and not much more (no sleep loop).
    assert!(took >= Duration::from_secs(2), "stopped after {took:?}");
    assert!(took < Duration::from_millis(5000), "stopped after {took:?}");
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn stop_returns_as_soon_as_the_daemon_exits() {
    let sb = Sandbox::new("prompt_stop");
    let m = sb.manager(sb.config(&[]).with_shutdown_timeout_secs(10));
    let pid = within(20, m.start()).await.unwrap();
    let t = Instant::now();
    within(30, m.stop()).await.unwrap();
    // testd dies on SIGTERM at once; a 10 s timeout must not be waited.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!alive(pid));
    sb.assert_no_leaks();
}

#[tokio::test]
async fn grandchildren_go_with_the_daemon() {
    let sb = Sandbox::new("grandchild");
    let gc_file = sb.path("grandchild.pid");
    let m = sb.manager(sb.config(&["--grandchild", gc_file.to_str().unwrap()]));
    let pid = within(20, m.start()).await.unwrap();
    let grandchild = within(10, read_pid_file(&gc_file)).await;
    assert!(alive(grandchild));
    assert_ne!(grandchild, pid);

    within(30, m.stop()).await.unwrap();
    assert!(!alive(pid));
    assert!(!alive(grandchild), "grandchild {grandchild} survived stop");
    sb.assert_no_leaks();
}

#[tokio::test]
async fn kill_takes_grandchildren_too() {
    let sb = Sandbox::new("kill_grandchild");
    let gc_file = sb.path("grandchild.pid");
    let m = sb.manager(sb.config(&["--ignore-term", "--grandchild", gc_file.to_str().unwrap()]));
    let pid = within(20, m.start()).await.unwrap();
    let grandchild = within(10, read_pid_file(&gc_file)).await;
    within(10, m.kill()).await.unwrap();
    assert!(!alive(pid));
    assert!(!alive(grandchild));
    sb.assert_no_leaks();
}

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
