//! What is there for a daemon: its files read without trusting them, and
//! the live supervisor asked over its control socket, merged into one
//! [`Inspection`] (the table in [`super::state`] turns it into a state).

use std::path::Path;
use std::time::Duration;

use super::pidfile::{self, Paths, Record};
use super::state::{self, Inspection};
use super::{control, proc};
use crate::error::{DaemonError, Result};

/// How long [`ForkBackend::inspect`] waits for a live supervisor to record a
/// daemon's exit (it does so right after reaping it).
pub(super) const EXIT_RECORD_WAIT: Duration = Duration::from_secs(2);

/// The files as they are; content that is not ours becomes a reason, a file
/// that is not ours (link, other owner) an error.
pub(super) fn read_disk(paths: &Paths) -> Result<state::Disk> {
    fn soft<T>(r: Result<T>) -> Result<std::result::Result<T, String>> {
        match r {
            Ok(v) => Ok(Ok(v)),
            Err(DaemonError::PidFileError { source, .. })
                if source.kind() == std::io::ErrorKind::InvalidData =>
            {
                Ok(Err(source.to_string()))
            }
            Err(e) => Err(e),
        }
    }
    Ok(state::Disk {
        pid: soft(pidfile::read_pid(&paths.pid_file))?,
        record: soft(pidfile::read_record(&paths.identity))?,
    })
}

pub(super) async fn inspect_once(paths: &Paths) -> Result<Inspection> {
    if let Some(mut client) = control::Client::connect(&paths.control).await? {
        let peer = client.peer_pid;
        match client
            .call(control::Op::Status, control::QUERY_TIMEOUT)
            .await
        {
            // The kernel's word on who answered beats the answer's own.
            Ok(reply) if peer.is_some_and(|p| p != reply.supervisor) => {
                return Err(pidfile::untrusted(
                    &paths.control,
                    None,
                    format!(
                        "is served by PID {}, which claims to be supervisor {}",
                        peer.unwrap_or_default(),
                        reply.supervisor
                    ),
                ))
            }
            Ok(reply) if reply.pid_file == paths.pid_file => {
                let disk = read_disk(paths)?;
                return Ok(state::from_live(
                    reply,
                    &disk,
                    &paths.pid_file.display().to_string(),
                ));
            }
            Ok(reply) => {
                return Err(pidfile::untrusted(
                    &paths.control,
                    None,
                    format!(
                        "is served by a supervisor of another PID file ({})",
                        reply.pid_file.display()
                    ),
                ))
            }
            // It exited between connect and answer: the disk tells the rest.
            Err(DaemonError::Io { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let disk = read_disk(paths)?;
    let garbage = |path: &Path, why: String| {
        DaemonError::pid_file(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{why}; no supervisor of ours answers: `cleanup` removes it"),
            ),
        )
    };
    let pid = disk.pid.map_err(|why| garbage(&paths.pid_file, why))?;
    let record = disk.record.map_err(|why| garbage(&paths.identity, why))?;
    check_record_belongs(paths, record.as_ref())?;
    Ok(state::from_disk(
        pid,
        record,
        &|p: &proc::ProcRef| p.is_same_live_process(),
        &proc::is_alive,
    ))
}

/// A record names the PID file it was written for: a copy of another
/// daemon's record (even a genuine one) is not about this daemon.
pub(super) fn check_record_belongs(paths: &Paths, record: Option<&Record>) -> Result<()> {
    match record.and_then(|r| r.pid_file.as_ref()) {
        Some(p) if p != &paths.pid_file => Err(pidfile::untrusted(
            &paths.identity,
            None,
            format!(
                "is the identity record of another PID file ({}): a copy, not ours",
                p.display()
            ),
        )),
        _ => Ok(()),
    }
}
