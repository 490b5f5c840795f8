//! The caller's side of a running supervisor: control calls, stop and kill
//! requests, and signalling a recorded process group only while it is
//! provably ours.

use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::pidfile::{self, Paths, Record};
use super::{control, notify, proc, SUPERVISOR_GRACE};
use crate::error::{DaemonError, Result};

/// One control request to the live supervisor, if there is one.
/// A supervisor that closes the connection without answering is exiting:
/// that is `Ok(None)` too.
pub(super) async fn control_call(
    paths: &Paths,
    op: control::Op,
) -> Result<Option<control::ControlReply>> {
    match control::Client::connect(&paths.control).await? {
        Some(mut c) => match c.call(op, control::QUERY_TIMEOUT).await {
            Ok(reply) => Ok(Some(reply)),
            Err(DaemonError::Io { .. }) => Ok(None),
            Err(e) => Err(e),
        },
        None => Ok(None),
    }
}

/// Asks the live supervisor to stop (or kill) and waits for its exit, which
/// closes the connection. Past the deadline the daemon's group and the
/// supervisor (each after checking it is still the recorded process) get
/// SIGKILL. `Ok(false)`: no supervisor answered any more.
pub(super) async fn stop_live(
    name: &str,
    paths: &Paths,
    live: &control::ControlReply,
    force: bool,
    grace: Duration,
) -> Result<bool> {
    let Some(mut client) = control::Client::connect(&paths.control).await? else {
        return Ok(false);
    };
    // The same supervisor that answered the look (the kernel says who serves
    // this connection): a socket swapped in between is not told to stop.
    if client.peer_pid.is_some_and(|p| p != live.supervisor) {
        return Ok(false);
    }
    let op = if force {
        control::Op::Kill
    } else {
        control::Op::Stop
    };
    let reply = match client.call(op, control::QUERY_TIMEOUT).await {
        Ok(r) => r,
        Err(DaemonError::Io { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    if reply.pid_file != paths.pid_file {
        return Err(pidfile::untrusted(
            &paths.control,
            None,
            "is served by a supervisor of another PID file",
        ));
    }
    let rec = &reply.record;
    let deadline = Instant::now() + grace + SUPERVISOR_GRACE;
    // End of file: the supervisor stopped and reaped the whole tree, removed
    // its files and is exiting. Nothing more to wait for.
    if !client.wait_closed(deadline).await {
        tracing::warn!(%name, supervisor = live.supervisor, "supervisor did not finish the stop in time: killing");
        let group = rec.group_is_ours();
        signal_recorded(rec, Signal::SIGKILL);
        if let Some(sup) = &rec.supervisor {
            kill_supervisor(sup).await;
        }
        if group && !proc::wait_group_gone(rec.pgid(), Instant::now() + SUPERVISOR_GRACE).await {
            return Err(DaemonError::StopFailed {
                name: name.to_owned(),
                pid: rec.daemon.pid,
                reason: "processes of its group survived SIGKILL".into(),
            });
        }
    }
    // A supervisor that finished removed its files; one that had to be
    // killed left them: ours to remove, while they are its generation's.
    match pidfile::read_record(&paths.identity) {
        Ok(Some(on_disk)) if on_disk.supervisor != rec.supervisor => {}
        _ => {
            pidfile::remove(&paths.pid_file)?;
            pidfile::remove(&paths.identity)?;
        }
    }
    clear_dead_supervisor_files(paths).await?;
    Ok(true)
}

/// What a supervisor that was killed leaves: its control socket (nobody
/// answers on it) and its notify directory. Both paths come from the config.
pub(super) async fn clear_dead_supervisor_files(paths: &Paths) -> Result<()> {
    if pidfile::present(&paths.control) && control::Client::connect(&paths.control).await?.is_none()
    {
        pidfile::remove_socket(&paths.control)?;
    }
    if pidfile::present(&paths.notify_dir) {
        notify::remove_dir(&paths.notify_dir)
            .map_err(|e| DaemonError::pid_file(&paths.notify_dir, e))?;
    }
    Ok(())
}

/// Tells a live supervisor whose daemon is down (restart pending, or still
/// recording the exit) to give up, and waits for it. Returns whether there
/// was one.
pub(super) async fn retire_supervisor(
    rec: &Record,
    force: bool,
    shutdown: Duration,
) -> Result<bool> {
    let Some(sup) = rec.supervisor.as_ref().filter(|_| rec.supervisor_alive()) else {
        return Ok(false);
    };
    if rec.daemon.is_same_live_process() {
        return Ok(false);
    }
    ask_supervisor_to_stop(sup, force, Instant::now() + shutdown + SUPERVISOR_GRACE).await?;
    Ok(true)
}

/// SIGTERM (stop) or SIGUSR1 (kill) to a live supervisor, then wait for its
/// exit; past `deadline` it is SIGKILLed — after checking that its PID still
/// names it, since the PID may have been reused while we waited. Returns
/// whether it exited on its own.
pub(super) async fn ask_supervisor_to_stop(
    sup: &proc::ProcRef,
    force: bool,
    deadline: Instant,
) -> Result<bool> {
    if !sup.is_same_live_process() {
        return Ok(true);
    }
    send(
        sup.pid,
        if force {
            Signal::SIGUSR1
        } else {
            Signal::SIGTERM
        },
    )?;
    if proc::wait_exit(sup.pid, deadline).await {
        return Ok(true);
    }
    if sup.is_same_live_process() {
        let _ = kill(Pid::from_raw(sup.pid as i32), Signal::SIGKILL);
    }
    Ok(false)
}

/// `sig` to the recorded process group while its leader is provably ours
/// (its ID could name another group once the leader was reaped); otherwise
/// to the recorded daemon alone, if it is still that process.
pub(super) fn signal_recorded(record: &Record, sig: Signal) {
    if record.group_is_ours() {
        let _ = killpg(Pid::from_raw(record.pgid() as i32), sig);
    } else if record.daemon.is_same_live_process() {
        let _ = kill(Pid::from_raw(record.daemon.pid as i32), sig);
    }
}

/// SIGKILL to a supervisor that did not finish in time, if its PID still
/// names it, and a bounded wait for its exit.
pub(super) async fn kill_supervisor(sup: &proc::ProcRef) {
    if sup.is_same_live_process() {
        let _ = kill(Pid::from_raw(sup.pid as i32), Signal::SIGKILL);
        proc::wait_exit(sup.pid, Instant::now() + SUPERVISOR_GRACE).await;
    }
}

/// SIGTERM to the recorded group, wait up to `grace`, SIGKILL, wait. True
/// when it is gone at the end. The group is signalled only while its leader
/// is still ours (its ID could name another group once the leader was
/// reaped); otherwise only the daemon itself, identity checked.
pub(super) async fn terminate_group(record: &Record, grace: Duration) -> bool {
    let pgid = record.pgid();
    let send_all = |sig: Signal| signal_recorded(record, sig);
    let gone = |deadline: Instant| async move {
        if record.group_is_ours() {
            proc::wait_group_gone(pgid, deadline).await
        } else {
            proc::wait_exit(record.daemon.pid, deadline).await
        }
    };
    if !grace.is_zero() {
        send_all(Signal::SIGTERM);
        if gone(Instant::now() + grace).await {
            return true;
        }
    }
    send_all(Signal::SIGKILL);
    gone(Instant::now() + SUPERVISOR_GRACE).await
}

pub(super) fn send(pid: u32, signal: Signal) -> Result<()> {
    match kill(Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(nix::errno::Errno::EPERM) => Err(DaemonError::PermissionDenied {
            action: format!("send {} to PID {pid}", signal.as_str()),
            source: Some(std::io::Error::from_raw_os_error(libc::EPERM)),
        }),
        Err(e) => Err(DaemonError::io(
            format!("send {} to PID {pid}", signal.as_str()),
            e.into(),
        )),
    }
}
