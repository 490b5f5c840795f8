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
    Target::SystemRemote,
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
        on: &[
            Target::UserTransient,
            Target::SystemTransient,
            Target::SystemRemote,
        ],
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
        says: "Timeout(readiness (systemd TimeoutStartSec))",
        expected: "Timeout(readiness (READY=1 over NOTIFY_SOCKET))",
        why: "on systemd the wait for READY=1 is the start job, so the timeout is systemd's `TimeoutStartSec` and the error names that",
    },
    Gap {
        scenario: "tcp_probe_timeout_stops_the_daemon",
        check: "after the timeout",
        on: &[
            Target::UserTransient,
            Target::UserUnit,
            Target::SystemTransient,
            Target::SystemUnit,
            Target::Launchd,
            Target::SystemRemote,
        ],
        says: "stopped (reason: -; last exit: -)",
        expected: "failed (reason: not ready within 1 s; last exit: -)",
        why: "the probe is ours, not the manager's: the backend stops the unit (or boots the job out), and neither systemd nor launchd keeps a failure reason for what was stopped on request; the fork supervisor records it",
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
    Gap {
        scenario: "stop_escalates_to_sigkill",
        check: "after stop",
        on: &[Target::Launchd],
        says: "stopped (reason: -; last exit: -)",
        expected: "stopped (reason: -; last exit: killed by signal 9 (SIGKILL))",
        why: "stop is `launchctl bootout`, after which launchd has forgotten the job, its last exit with it",
    },
    Gap {
        scenario: "stop_takes_grandchildren",
        check: "daemon processes after stop",
        on: &[Target::Launchd],
        says: "1",
        expected: "0",
        why: "launchd kills what is left of the job's process group (`AbandonProcessGroup = false`), not a descendant that moved to a session of its own (the grandchild that called `setsid`), and nothing else on macOS finds it (the fork backend, on Linux, is its subreaper)",
    },
    Gap {
        scenario: "stop_takes_grandchildren",
        check: "after stop: left behind",
        on: &[Target::Launchd],
        says: "1 processes",
        expected: "nothing",
        why: "that grandchild",
    },
    Gap {
        scenario: "stop_takes_grandchildren",
        check: "teardown: left behind",
        on: &[Target::Launchd],
        says: "1 processes",
        expected: "nothing",
        why: "that grandchild, which the harness then kills",
    },
    Gap {
        scenario: "kill_takes_grandchildren_and_is_not_restarted",
        check: "daemon processes after kill",
        on: &[Target::Launchd],
        says: "1",
        expected: "0",
        why: "kill is SIGKILL to the job's process group, then `launchctl bootout`: the grandchild in a session of its own escapes both, as on stop",
    },
    Gap {
        scenario: "kill_takes_grandchildren_and_is_not_restarted",
        check: "daemon processes a while after kill",
        on: &[Target::Launchd],
        says: "1",
        expected: "0",
        why: "the same grandchild",
    },
    Gap {
        scenario: "kill_takes_grandchildren_and_is_not_restarted",
        check: "a while after kill: left behind",
        on: &[Target::Launchd],
        says: "1 processes",
        expected: "nothing",
        why: "the same grandchild",
    },
    Gap {
        scenario: "kill_takes_grandchildren_and_is_not_restarted",
        check: "teardown: left behind",
        on: &[Target::Launchd],
        says: "1 processes",
        expected: "nothing",
        why: "the same grandchild, which the harness then kills",
    },
    Gap {
        scenario: "newlines_in_argv_and_env",
        check: "newline in an argument: start",
        on: &[Target::Launchd],
        says: "InvalidConfig(args[5])",
        expected: "ok",
        why: "a LF would let a value fake a line of `launchctl print`'s answer (and an XML parser reads a CR as a LF): refused, naming the argument, never mangled",
    },
    Gap {
        scenario: "newlines_in_argv_and_env",
        check: "newline in an environment value: start",
        on: &[Target::Launchd],
        says: "InvalidConfig(env.NL)",
        expected: "ok",
        why: "as for arguments",
    },
];

/// A scenario a target does not run at all: what it tests does not exist
/// there (the backend says so in its docs, and its renderer in a warning).
pub struct NotRun {
    /// The scenario (its test function's name).
    pub scenario: &'static str,
    /// The targets that skip it.
    pub on: &'static [Target],
    /// Why.
    pub why: &'static str,
}

/// The scenarios some targets do not run.
pub const NOT_RUN: &[NotRun] = &[
    NotRun {
        scenario: "watchdog_stops_pinging_is_aborted_and_restarted",
        on: &[Target::Launchd],
        why: "launchd has no watchdog (named in the plist warning): a daemon that stops pinging stays running",
    },
    NotRun {
        scenario: "watchdog_timeout_reads_watchdog_timeout",
        on: &[Target::Launchd],
        why: "as above: there is no watchdog to time out",
    },
    NotRun {
        scenario: "watchdog_trigger_aborts_at_once",
        on: &[Target::Launchd],
        why: "as above: `WATCHDOG=trigger` has no one to reach",
    },
    NotRun {
        scenario: "watchdog_usec_changes_the_interval",
        on: &[Target::Launchd],
        why: "as above: no watchdog interval to change",
    },
    NotRun {
        scenario: "liveness_failures_restart_the_daemon",
        on: &[Target::Launchd],
        why: "launchd has no liveness probe (named in the plist warning): a daemon whose probe fails stays running",
    },
    NotRun {
        scenario: "liveness_failure_reads_liveness_probe_failed",
        on: &[Target::Launchd],
        why: "as above: no probe runs",
    },
    NotRun {
        scenario: "a_failing_liveness_command_stops_the_daemon",
        on: &[Target::Launchd],
        why: "as above: no probe runs",
    },
    NotRun {
        scenario: "a_hanging_liveness_command_times_out",
        on: &[Target::Launchd],
        why: "as above: no probe runs",
    },
    NotRun {
        scenario: "one_liveness_failure_does_not_restart",
        on: &[Target::Launchd],
        why: "as above: no probe runs",
    },
    NotRun {
        scenario: "reload_sends_sighup_once_and_waits_for_ready",
        on: &[Target::Launchd],
        why: "launchd has no `READY=1` protocol, so a reload is the signal alone (`launchctl kill HUP`), waited for by nothing; `reload_sends_the_signal` runs there",
    },
    NotRun {
        scenario: "restart_on_failure_until_the_start_limit",
        on: &[Target::Launchd],
        why: "launchd has no start limit: `KeepAlive` restarts every `ThrottleInterval` without end (named in the plist warning), so the count of runs is only a matter of time",
    },
    NotRun {
        scenario: "start_after_the_start_limit_starts_again",
        on: &[Target::Launchd],
        why: "as above: there is no start limit to hit",
    },
    NotRun {
        scenario: "notify_readiness",
        on: &[Target::Launchd],
        why: "launchd has no `READY=1` protocol (named in the plist warning): the job counts as ready once running, and no `STATUS=` is kept",
    },
    NotRun {
        scenario: "notify_never_ready_times_out",
        on: &[Target::Launchd],
        why: "as above: nothing waits for `READY=1`",
    },
];

/// The README's row for a scenario some targets do not run.
pub fn not_run_row(n: &NotRun) -> String {
    let on: Vec<&str> = n.on.iter().map(|t| t.name()).collect();
    format!(
        "| `{}` | (not run) | {} | — | — | {} |",
        n.scenario,
        on.join("; "),
        n.why
    )
}

/// The README's row for a gap.
pub fn readme_row(gap: &Gap) -> String {
    let on: Vec<&str> = gap.on.iter().map(|t| t.name()).collect();
    let on = if gap.on == SYSTEMD {
        "systemd (all five: user and system, transient and unit file, and system over ssh)"
            .to_owned()
    } else {
        on.join("; ")
    };
    format!(
        "| `{}` | {} | {} | `{}` | `{}` | {} |",
        gap.scenario, gap.check, on, gap.says, gap.expected, gap.why
    )
}
