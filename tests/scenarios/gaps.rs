//! Where a backend says something else than every other: the one table.
//!
//! Every check of the suite compares what a backend says with what all
//! backends must say. A row here names a check on which the listed targets
//! say something else, what they say, and why. The check then passes on
//! those targets only if they say exactly that, and fails once they say what
//! the others say (so a fixed gap fails until its row goes), and a row no
//! check consults fails too. README.md ("Where backends differ") shows the
//! same rows; `readme_lists_every_known_gap` keeps the two equal.

use super::harness::Target;

/// One known difference.
pub struct Gap {
    /// The scenario (its test function's name).
    pub scenario: &'static str,
    /// The check's name in that scenario.
    pub check: &'static str,
    /// The targets that differ.
    pub on: &'static [Target],
    /// What they say instead.
    pub says: &'static str,
    /// What every other target says (and the scenario wants).
    pub expected: &'static str,
    /// Why.
    pub why: &'static str,
}

const SYSTEMD: &[Target] = &[
    Target::UserTransient,
    Target::UserUnit,
    Target::SystemTransient,
    Target::SystemUnit,
];

/// The table.
pub const KNOWN_GAPS: &[Gap] = &[
    Gap {
        scenario: "stop_escalates_to_sigkill",
        check: "after stop",
        on: &[Target::Fork],
        says: "stopped (reason: -; last exit: -)",
        expected: "stopped (reason: -; last exit: killed by signal 9 (SIGKILL))",
        why: "the fork backend removes its record on stop, so it keeps no last exit after a stop",
    },
    Gap {
        scenario: "stop_escalates_to_sigkill",
        check: "after stop: left behind",
        on: &[Target::UserTransient, Target::SystemTransient],
        says: "unit NAME.service",
        expected: "nothing",
        why: "systemd leaves the unit `failed` (`Result=timeout`) when its stop needed SIGKILL; the backend reads that as stopped, with the SIGKILL as last exit, and the unit stays loaded until cleanup or the next start",
    },
    Gap {
        scenario: "clean_exit_is_stopped",
        check: "after the exit",
        on: SYSTEMD,
        says: "stopped (reason: -; last exit: -)",
        expected: "stopped (reason: -; last exit: exited with code 0)",
        why: "systemd collects a transient unit that ended cleanly at once, and the backend reports no last exit for an inactive installed unit (so that it reads like a stopped transient one); the fork backend keeps the exit's record until cleanup",
    },
    Gap {
        scenario: "newlines_in_argv_and_env",
        check: "newline in an argument: start",
        on: SYSTEMD,
        says: "InvalidConfig(args)",
        expected: "ok",
        why: "a unit file cannot carry CR or LF in a value, nor can the transient file systemd writes and reads again on daemon-reload: refused, never mangled; the fork backend execs the bytes as they are",
    },
    Gap {
        scenario: "newlines_in_argv_and_env",
        check: "newline in an environment value: start",
        on: SYSTEMD,
        says: "InvalidConfig(env)",
        expected: "ok",
        why: "as for arguments: `Environment=` is one line",
    },
    Gap {
        scenario: "notify_never_ready_times_out",
        check: "start",
        on: SYSTEMD,
        says: "Timeout(start (systemd TimeoutStartSec))",
        expected: "Timeout(readiness (READY=1 over NOTIFY_SOCKET))",
        why: "on systemd the wait for READY=1 is the start job, so the timeout is systemd's `TimeoutStartSec` and the error names that",
    },
    Gap {
        scenario: "notify_never_ready_times_out",
        check: "after the timeout",
        on: SYSTEMD,
        says: "failed (reason: timeout (killed by signal 15 (SIGTERM)); last exit: killed by signal 15 (SIGTERM))",
        expected: "stopped (reason: -; last exit: -)",
        why: "systemd fails the unit at its start timeout (`Result=timeout`, SIGTERM) and the backend reports that as it is; the fork backend stops the daemon, as `DaemonStatus::Starting` documents (a tcp probe that times out is stopped on every backend)",
    },
    Gap {
        scenario: "tcp_readiness",
        check: "start",
        on: &[Target::SystemTransient, Target::SystemUnit],
        says: "Timeout(readiness probe)",
        expected: "ok",
        why: "the test harness, not the backend: the private system manager runs in a network namespace of its own (`unshare --net`), so the caller's probe cannot reach the daemon's 127.0.0.1",
    },
    Gap {
        scenario: "http_readiness",
        check: "start",
        on: &[Target::SystemTransient, Target::SystemUnit],
        says: "Timeout(readiness probe)",
        expected: "ok",
        why: "as for `tcp_readiness`: the harness's network namespace",
    },
];

/// The README's row for a gap.
pub fn readme_row(gap: &Gap) -> String {
    let on: Vec<&str> = gap.on.iter().map(|t| t.name()).collect();
    let on = if gap.on == SYSTEMD {
        "systemd (all four: user and system, transient and unit file)".to_owned()
    } else {
        on.join("; ")
    };
    format!(
        "| `{}` | {} | {} | `{}` | `{}` | {} |",
        gap.scenario, gap.check, on, gap.says, gap.expected, gap.why
    )
}
