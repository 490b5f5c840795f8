//! A supervisor killed (SIGKILL: it records nothing), then its daemon exits:
//! `status` says what happened ("supervisor gone; daemon N exited"), not
//! "PID N is not the daemon" as for a PID file naming a stranger.
mod support;

use std::process::Command;

use daemon_lifecycle::DaemonStatus;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{alive, eventually, output_within, within, Sandbox};

/// The parent of `pid` (for a daemon: its supervisor).
fn parent_of(pid: u32) -> u32 {
    support::proc_stat(pid).unwrap()[1].parse().unwrap()
}

#[tokio::test]
async fn a_daemon_that_exits_after_its_supervisor_was_killed_is_reported_so() {
    let sb = Sandbox::new("supervisor_gone");
    let config = sb.config(&[]);
    let toml = sb.write_toml(&config);
    let m = sb.manager(config);
    let pid = within(20, m.start()).await.unwrap();
    let supervisor = parent_of(pid);
    kill(Pid::from_raw(supervisor as i32), Signal::SIGKILL).unwrap();
    eventually(5, || async { (!alive(supervisor)).then_some(()) }).await;
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));

    // Nobody of ours sees it go, so nobody records how.
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    eventually(5, || async { (!alive(pid)).then_some(()) }).await;

    let reason = format!("supervisor gone; daemon {pid} exited");
    let status = within(10, m.status()).await.unwrap();
    assert_eq!(status, DaemonStatus::Failed(reason.clone()));
    let out = output_within(
        Command::new(support::daemonctl()).arg("status").arg(&toml),
        10,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("failed: {reason}")) && !stdout.contains("is not the daemon"),
        "{stdout}"
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}");

    // As for any failed daemon: cleanup clears it.
    within(10, m.cleanup_stale()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}
