//! From what we can see to a [`DaemonStatus`]: the live supervisor's answer
//! on the control socket when there is one (the truth, whatever the files
//! say), else the PID file and identity record on disk.
//!
//! Pure decisions live here (with their table tested below); the I/O that
//! gathers the inputs is in [`super`].

use super::control::{ControlReply, Phase};
use super::pidfile::Record;
use super::proc::ProcRef;
use crate::backend::{DaemonStatus, ExitInfo};
use crate::spec::is_clean_exit;

/// What one look found.
#[derive(Debug)]
pub(crate) struct Inspection {
    pub status: DaemonStatus,
    /// The record to act on: the live supervisor's, else the one on disk.
    pub record: Option<Record>,
    /// The daemon is dead but its live supervisor has not recorded the exit
    /// yet: look again in a moment.
    pub exit_in_progress: bool,
    /// A live supervisor answered (its PID, as it says and the kernel confirms).
    pub live: Option<ControlReply>,
    /// A PID file with no identity record beside it: not ours to remove.
    pub foreign_pid_file: bool,
    /// What is wrong beside the state, in words.
    pub problem: Option<String>,
}

/// What the files on disk say (each `Err` is the reason it is unreadable).
pub(crate) struct Disk {
    pub pid: Result<Option<u32>, String>,
    pub record: Result<Option<Record>, String>,
}

/// The state from a live supervisor's answer, with what the disk says
/// differently as `problem`.
pub(crate) fn from_live(reply: ControlReply, disk: &Disk, pid_file: &str) -> Inspection {
    let rec = &reply.record;
    let pid = rec.daemon.pid;
    let status = match reply.phase {
        Phase::Starting => DaemonStatus::Starting(pid),
        // Still running until its tree is gone: a status during our own stop
        // is never a false "stale".
        Phase::Running | Phase::Stopping => DaemonStatus::Running(pid),
        Phase::Backoff => match (&rec.exit_reason, rec.last_exit) {
            (Some(why), _) => DaemonStatus::Failed(format!("{why}; restart pending")),
            (None, Some(exit)) => DaemonStatus::Failed(format!("{exit}; restart pending")),
            (None, None) => DaemonStatus::Failed("restart pending".into()),
        },
        Phase::Exited => match rec.last_exit {
            Some(_) if rec.restart_pending => ended(rec, true),
            Some(_) => ended(rec, false),
            None => DaemonStatus::Stopped,
        },
    };
    let daemon_runs = matches!(
        reply.phase,
        Phase::Starting | Phase::Running | Phase::Stopping
    );
    let mut problems = Vec::new();
    match &disk.pid {
        Err(why) => problems.push(format!("PID file {pid_file}: {why}")),
        Ok(None) if daemon_runs => problems.push(format!("PID file {pid_file} is missing")),
        Ok(Some(p)) if *p != pid && daemon_runs => problems.push(format!("PID file names {p}")),
        Ok(_) => {}
    }
    match &disk.record {
        Err(why) => problems.push(format!("identity record: {why}")),
        Ok(None) => problems.push("identity record is missing".into()),
        Ok(Some(r)) if r.supervisor != rec.supervisor => {
            problems.push("identity record belongs to another supervisor".into())
        }
        Ok(Some(r)) if daemon_runs && r.daemon != rec.daemon => {
            problems.push(format!("identity record names PID {}", r.daemon.pid))
        }
        Ok(_) => {}
    }
    let problem = (!problems.is_empty()).then(|| {
        let what = if daemon_runs {
            format!("supervisor {} runs daemon {pid}", reply.supervisor)
        } else {
            format!("supervisor {} runs no daemon now", reply.supervisor)
        };
        format!("{}, {what}", problems.join(", "))
    });
    Inspection {
        status,
        record: Some(reply.record.clone()),
        exit_in_progress: false,
        live: Some(reply),
        foreign_pid_file: false,
        problem,
    }
}

/// The state from the files alone (no supervisor answered). `alive` says
/// whether a recorded process is still the same live process, `exists`
/// whether any process has a PID (a reused one included).
pub(crate) fn from_disk(
    pid: Option<u32>,
    record: Option<Record>,
    alive: &dyn Fn(&ProcRef) -> bool,
    exists: &dyn Fn(u32) -> bool,
) -> Inspection {
    let mut exit_in_progress = false;
    let mut foreign_pid_file = false;
    let mut problem = None;
    let supervisor_alive = |r: &Record| r.supervisor.as_ref().is_some_and(alive);
    let status = match (pid, &record) {
        (Some(pid), Some(rec)) if rec.daemon.pid == pid => {
            if alive(&rec.daemon) {
                DaemonStatus::Running(pid)
            } else if supervisor_alive(rec) {
                // Dead, and a live supervisor has not recorded it yet (after a
                // restart `last_exit` is the previous run's, so a live
                // supervisor always gets the moment to record this one).
                exit_in_progress = true;
                DaemonStatus::Stale(pid)
            } else if exists(pid) {
                // The PID lives on in another process: reused, not ours.
                DaemonStatus::Stale(pid)
            } else {
                // A supervisor that recorded the end would have removed the
                // PID file: it was killed first.
                supervisor_gone(pid)
            }
        }
        // The record names another PID (the PID file was rewritten by
        // hand, or the supervisor is between rewriting the two).
        (Some(pid), Some(rec)) => {
            if supervisor_alive(rec) {
                exit_in_progress = true;
                DaemonStatus::Stale(pid)
            } else if alive(&rec.daemon) {
                problem = Some(format!(
                    "PID file names {pid}, but the identity record's daemon {} runs (its supervisor is gone)",
                    rec.daemon.pid
                ));
                DaemonStatus::Running(rec.daemon.pid)
            } else {
                DaemonStatus::Stale(pid)
            }
        }
        // A PID file with no record: we cannot prove who that PID is, so it
        // is never treated as ours (never signalled, never removed).
        (Some(pid), None) => {
            foreign_pid_file = true;
            problem = Some(
                "the PID file has no identity record beside it: it was not written by daemon-lifecycle \
                 (or its record was removed); nothing is signalled or removed"
                    .into(),
            );
            DaemonStatus::Stale(pid)
        }
        // The record comes before the PID file on start; or the PID file was
        // removed by hand under a live daemon.
        (None, Some(rec)) if alive(&rec.daemon) => {
            if !supervisor_alive(rec) {
                problem = Some(format!(
                    "PID file is missing, but the identity record's daemon {} runs",
                    rec.daemon.pid
                ));
            }
            DaemonStatus::Running(rec.daemon.pid)
        }
        (None, Some(rec)) => match (rec.last_exit, &rec.failure) {
            (Some(_), _) => ended(rec, supervisor_alive(rec)),
            // A failure recorded with no exit: a start stopped because it
            // was not ready in time.
            (None, Some(failure)) if !supervisor_alive(rec) => {
                DaemonStatus::Failed(failure.clone())
            }
            (None, _) => {
                exit_in_progress = supervisor_alive(rec);
                DaemonStatus::Stopped
            }
        },
        (None, None) => DaemonStatus::Stopped,
    };
    Inspection {
        status,
        record,
        exit_in_progress,
        live: None,
        foreign_pid_file,
        problem,
    }
}

/// A supervisor killed (SIGKILL) before it could record its daemon's end.
fn supervisor_gone(pid: u32) -> DaemonStatus {
    DaemonStatus::Failed(format!("supervisor gone; daemon {pid} exited"))
}

/// The state of a daemon that is not running, from its record.
/// `supervisor_alive` says whether a supervisor still waits to restart it.
pub(crate) fn ended(rec: &Record, supervisor_alive: bool) -> DaemonStatus {
    if let Some(failure) = &rec.failure {
        return DaemonStatus::Failed(failure.clone());
    }
    let exit = rec.last_exit.expect("called with an exit");
    // A run the supervisor ended (watchdog, liveness) says why, not how.
    let why = rec.exit_reason.clone();
    if rec.restart_pending && supervisor_alive {
        let what = why.unwrap_or_else(|| exit.to_string());
        return DaemonStatus::Failed(format!("{what}; restart pending"));
    }
    match why {
        Some(why) => DaemonStatus::Failed(why),
        None => failed_or_stopped(exit),
    }
}

fn failed_or_stopped(exit: ExitInfo) -> DaemonStatus {
    if is_clean_exit(exit) {
        DaemonStatus::Stopped
    } else {
        DaemonStatus::Failed(exit.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn proc(pid: u32) -> ProcRef {
        ProcRef {
            pid,
            start_time: Some(pid as u64 * 10),
            boot_id: None,
        }
    }

    fn record(daemon: u32, supervisor: u32) -> Record {
        Record::started(proc(daemon), Some(proc(supervisor)))
    }

    /// Every (PID file, record, who lives) combination and the state it gives.
    #[test]
    fn disk_table() {
        let live = |pids: &'static [u32]| move |p: &ProcRef| pids.contains(&p.pid);
        let exists = |p: u32| p == 1;
        // Running daemon, live supervisor.
        let i = from_disk(Some(10), Some(record(10, 9)), &live(&[10, 9]), &exists);
        assert_eq!(i.status, DaemonStatus::Running(10));
        assert!(i.problem.is_none());
        // PID file rewritten by hand (names 1), supervisor gone, daemon alive:
        // the record's daemon is the truth, and the problem is named.
        let i = from_disk(Some(1), Some(record(10, 9)), &live(&[1, 10]), &exists);
        assert_eq!(i.status, DaemonStatus::Running(10));
        assert!(i.problem.unwrap().contains("PID file names 1"));
        // Same, daemon dead too: stale, ours to clean.
        let i = from_disk(Some(1), Some(record(10, 9)), &live(&[1]), &exists);
        assert_eq!(i.status, DaemonStatus::Stale(1));
        assert!(!i.foreign_pid_file);
        // A PID file with no record: never ours.
        let i = from_disk(Some(1), None, &live(&[1]), &exists);
        assert_eq!(i.status, DaemonStatus::Stale(1));
        assert!(i.foreign_pid_file);
        // Supervisor killed, then its daemon exited: said so.
        let i = from_disk(Some(10), Some(record(10, 9)), &live(&[]), &exists);
        assert!(
            matches!(&i.status, DaemonStatus::Failed(r) if r.starts_with("supervisor gone; daemon 10 exited")),
            "{:?}",
            i.status
        );
        // Daemon dead, live supervisor not done recording: look again.
        let i = from_disk(Some(10), Some(record(10, 9)), &live(&[9]), &exists);
        assert!(i.exit_in_progress);
        // An unclean recorded exit, supervisor gone: failed with the exit.
        let mut r = record(10, 9);
        r.last_exit = Some(ExitInfo::Code(3));
        let i = from_disk(None, Some(r.clone()), &live(&[]), &exists);
        assert_eq!(i.status, DaemonStatus::Failed("exited with code 3".into()));
        // A restart pending while the supervisor waits.
        r.restart_pending = true;
        let i = from_disk(None, Some(r), &live(&[9]), &exists);
        assert_eq!(
            i.status,
            DaemonStatus::Failed("exited with code 3; restart pending".into())
        );
        // The PID lives on in another process (reused): stale.
        let mut forged = record(1, 9);
        forged.daemon.start_time = Some(12345);
        let i = from_disk(Some(1), Some(forged), &live(&[]), &exists);
        assert_eq!(i.status, DaemonStatus::Stale(1));
        // Nothing at all.
        assert_eq!(
            from_disk(None, None, &live(&[]), &exists).status,
            DaemonStatus::Stopped
        );
    }

    #[test]
    fn live_answer_wins_over_tampered_files() {
        let reply = |phase| ControlReply {
            v: 1,
            supervisor: 9,
            pid_file: PathBuf::from("/run/d.pid"),
            phase,
            record: record(10, 9),
        };
        let disk = Disk {
            pid: Ok(Some(1)),
            record: Ok(None),
        };
        let i = from_live(reply(Phase::Running), &disk, "/run/d.pid");
        assert_eq!(i.status, DaemonStatus::Running(10));
        let p = i.problem.unwrap();
        assert!(p.contains("PID file names 1"), "{p}");
        assert!(p.contains("supervisor 9 runs daemon 10"), "{p}");
        // During our own stop: still running, never stale.
        let ok = Disk {
            pid: Ok(Some(10)),
            record: Ok(Some(record(10, 9))),
        };
        let i = from_live(reply(Phase::Stopping), &ok, "/run/d.pid");
        assert_eq!(i.status, DaemonStatus::Running(10));
        assert!(i.problem.is_none());
        assert_eq!(
            from_live(reply(Phase::Starting), &ok, "/run/d.pid").status,
            DaemonStatus::Starting(10)
        );
    }
}
