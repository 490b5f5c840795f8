//! The launchctl driver: runs the `launchctl` program with the modern verbs
//! only (`enable`, `bootstrap`, `bootout`, `kickstart`, `print`; never the
//! legacy `load`, `unload` or `list`), every run bounded, and turns its
//! exit codes into what the backend acts on.
//!
//! launchctl's exit code is launchd's error number (`launchctl error N`
//! explains one). The ones that matter here:
//!
//! | code | meaning | what we do |
//! |---|---|---|
//! | 0 | done | |
//! | 1 | operation not permitted | [`DaemonError::PermissionDenied`] |
//! | 3 | no such process (`bootout` of a job that is gone) | success for bootout |
//! | 5, 36, 37 | input/output error (a bootstrap right after a bootout), operation now / already in progress | retried, bounded ([`RETRY_BOUND`]) |
//! | 112 | could not find the domain (no GUI session for `gui/UID`) | the next domain (`user/UID`) |
//! | 113 | could not find the service | not loaded |
//! | 119 | service is disabled | typed error: `enable` it |
//! | 122 | bad ownership or permissions of the plist | typed error |
//! | 125 | domain does not support the action (`gui/UID` from outside the GUI session) | the next domain |
//! | 134 | service cannot load in the requested session | typed error |
//! | 155 | (not in launchctl's documentation we could find) | typed error, with launchctl's own words |
//!
//! `print`'s output "is NOT API": the exit code is read first, then only
//! the top-level `key = value` lines of the job (one tab deep; nested
//! blocks such as the resource coalition have their own `state =`), and
//! only `state`, `pid`, `runs`, `path`, `last exit code` and `last
//! terminating signal`; other lines are ignored, and an answer without the
//! job's header or `state` is an error, never "stopped".

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::ExitInfo;
use crate::error::{DaemonError, Result};

/// launchd's error numbers that the driver tells apart.
pub(crate) mod code {
    /// Operation not permitted.
    pub const EPERM: i32 = 1;
    /// No such process: `bootout` of a job that is already gone.
    pub const ESRCH: i32 = 3;
    /// Input/output error: `bootstrap` while a booted-out job is still going.
    pub const EIO: i32 = 5;
    /// Operation now in progress.
    pub const EINPROGRESS: i32 = 36;
    /// Operation already in progress.
    pub const EALREADY: i32 = 37;
    /// Could not find specified domain.
    pub const NO_DOMAIN: i32 = 112;
    /// Could not find specified service.
    pub const NO_SERVICE: i32 = 113;
    /// Service is disabled.
    pub const DISABLED: i32 = 119;
    /// Path had bad ownership/permissions.
    pub const BAD_OWNERSHIP: i32 = 122;
    /// Domain does not support specified action.
    pub const UNSUPPORTED_IN_DOMAIN: i32 = 125;
    /// Service cannot load in requested session.
    pub const WRONG_SESSION: i32 = 134;
    /// Undocumented where we looked; mapped with launchctl's own words.
    pub const REFUSED_155: i32 = 155;
}

/// How long a transient refusal (5, 36, 37) is retried: at least 10 s, the
/// time a booted-out job takes to leave launchd on a busy Mac.
pub const RETRY_BOUND: Duration = Duration::from_secs(10);

/// The deadline of one launchctl run: it talks to launchd over Mach and
/// answers at once, so only a hung launchd (or program) hits this.
const RUN_TIMEOUT: Duration = Duration::from_secs(15);

/// Most of `print`'s output we read; a job's answer is a few KiB.
const MAX_OUTPUT: usize = 1 << 20;

/// The launchctl program, and how to run it.
#[derive(Debug, Clone)]
pub(crate) struct Launchctl {
    program: PathBuf,
}

/// What one run of launchctl said.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The exit code (a signal, or no code, is -1).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// launchctl's own message (stderr, else stdout), on one line, clipped.
    pub fn message(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        crate::text::clip_middle(&one_line, 400)
    }

    pub fn is_transient(&self) -> bool {
        matches!(self.code, code::EIO | code::EINPROGRESS | code::EALREADY)
    }

    /// The domain is not there for us (no GUI session): try the next one.
    pub fn no_domain(&self) -> bool {
        matches!(self.code, code::NO_DOMAIN | code::UNSUPPORTED_IN_DOMAIN)
    }
}

/// The answer of `print DOMAIN/LABEL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Loaded in that domain.
    Found(JobInfo),
    /// The domain has no such job (113).
    NotFound,
    /// No such domain for us (112, 125).
    NoDomain,
}

/// What we read of a loaded job in `print`'s output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct JobInfo {
    /// `state` (`running`, `not running`, `waiting`, `spawn scheduled`, ...).
    pub state: String,
    /// `pid`, while it runs.
    pub pid: Option<u32>,
    /// `runs`: how often launchd spawned it.
    pub runs: Option<u32>,
    /// `path`: the plist it was loaded from.
    pub path: Option<String>,
    /// `last exit code` or `last terminating signal` (the latter replaces
    /// the former in launchctl's output).
    pub last_exit: Option<ExitInfo>,
}

impl JobInfo {
    /// The PID while it runs (`running`, or the trampoline `xpcproxy`
    /// that execs into the program in the same process).
    pub fn running_pid(&self) -> Option<u32> {
        match self.state.as_str() {
            "running" | "xpcproxy" => self.pid,
            _ => None,
        }
    }
}

impl Launchctl {
    pub fn new(program: PathBuf) -> Launchctl {
        Launchctl { program }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// One run of `launchctl ARGS...`, bounded by [`RUN_TIMEOUT`] (then
    /// killed). `name` is the daemon's, for the timeout error.
    pub async fn run(&self, name: &str, args: &[&str]) -> Result<Outcome> {
        tracing::debug!(launchctl = %self.program.display(), ?args, "launchctl");
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            DaemonError::io(
                format!("run {} {}", self.program.display(), args.join(" ")),
                e,
            )
        })?;
        let output = match tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return Err(DaemonError::io(
                    format!("wait for {} {}", self.program.display(), args.join(" ")),
                    e,
                ))
            }
            Err(_) => {
                return Err(DaemonError::Timeout {
                    name: name.to_owned(),
                    operation: "launchctl",
                    after: RUN_TIMEOUT,
                })
            }
        };
        let text = |bytes: &[u8]| {
            String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OUTPUT)]).into_owned()
        };
        let outcome = Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: text(&output.stdout),
            stderr: text(&output.stderr),
        };
        tracing::debug!(?args, code = outcome.code, "launchctl exited");
        Ok(outcome)
    }

    /// [`Launchctl::run`], again while it answers 5, 36 or 37, at most
    /// [`RETRY_BOUND`]: 50 ms between tries at first, doubling up to 1 s.
    pub async fn run_retrying(&self, name: &str, args: &[&str]) -> Result<Outcome> {
        self.run_retrying_on(name, args, &[code::EIO, code::EINPROGRESS, code::EALREADY])
            .await
    }

    /// [`Launchctl::run_retrying`] for the codes in `transient` only.
    pub async fn run_retrying_on(
        &self,
        name: &str,
        args: &[&str],
        transient: &[i32],
    ) -> Result<Outcome> {
        let deadline = Instant::now() + RETRY_BOUND;
        let mut pause = Duration::from_millis(50);
        loop {
            let out = self.run(name, args).await?;
            if !transient.contains(&out.code) || Instant::now() >= deadline {
                return Ok(out);
            }
            tracing::debug!(
                ?args,
                code = out.code,
                ?pause,
                "transient launchctl refusal: retrying"
            );
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// `print DOMAIN/LABEL`, its exit code first.
    pub async fn print(&self, name: &str, domain: &str, label: &str) -> Result<Lookup> {
        let target = format!("{domain}/{label}");
        let out = self.run_retrying(name, &["print", &target]).await?;
        match out.code {
            0 => parse_print(&out.stdout, &target)
                .map(Lookup::Found)
                .map_err(|why| DaemonError::Io {
                    context: format!("read `launchctl print {target}`"),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
                }),
            code::NO_SERVICE => Ok(Lookup::NotFound),
            _ if out.no_domain() => Ok(Lookup::NoDomain),
            _ => Err(refusal(format!("launchctl print {target}"), &out)),
        }
    }
}

/// The typed error for a launchctl refusal, saying what to do.
pub(crate) fn refusal(operation: String, out: &Outcome) -> DaemonError {
    let message = out.message();
    if out.code == code::EPERM {
        return DaemonError::PermissionDenied {
            action: format!("{operation}: {message}"),
            source: None,
        };
    }
    let advice = match out.code {
        code::DISABLED => "the job is disabled in launchd's overrides (a `launchctl disable` left behind; \
             `Disabled` in a plist no longer counts): run `launchctl enable DOMAIN/LABEL`, which start \
             does first, and find what disables it again"
            .to_owned(),
        code::BAD_OWNERSHIP => "launchd refuses the plist's ownership or mode: it must be a regular file \
             owned by the user of the domain (root:wheel for /Library/LaunchDaemons), mode 0644, in a \
             directory nobody else can write"
            .to_owned(),
        code::UNSUPPORTED_IN_DOMAIN | code::NO_DOMAIN => "there is no GUI session for this user here (SSH, \
             sudo, or nobody logged in at the console): the user/UID domain was tried too; log in at the \
             console, or use scope = \"system\" as root"
            .to_owned(),
        code::WRONG_SESSION => "launchd will not load this agent in this session type (LimitLoadToSessionType): \
             start it from the GUI session, or as a daemon (scope = \"system\")"
            .to_owned(),
        code::REFUSED_155 => "launchd refused the job; `launchctl error 155` and the system log \
             (`log show --last 5m --predicate 'process == \"launchd\"'`) say why"
            .to_owned(),
        code::EIO | code::EINPROGRESS | code::EALREADY => format!(
            "launchd kept answering that for {}s (a job of that label still going away, or a plist it \
             rejects: the system log says which)",
            RETRY_BOUND.as_secs()
        ),
        code::NO_SERVICE => "launchd has no such job".to_owned(),
        _ => format!("see `launchctl error {}`", out.code),
    };
    DaemonError::Launchctl {
        operation,
        code: out.code,
        message,
        advice,
    }
}

/// Reads `print DOMAIN/LABEL`'s answer: the header `TARGET = {`, then the
/// top-level `key = value` lines (exactly one tab deep).
pub(crate) fn parse_print(text: &str, target: &str) -> std::result::Result<JobInfo, String> {
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    let header = lines.next().ok_or("empty answer")?;
    let Some(named) = header.trim_end().strip_suffix(" = {") else {
        return Err(format!(
            "no job header in {:?}",
            crate::text::clip(header, 0, 120)
        ));
    };
    // launchctl names the job by its full target (or, on some versions,
    // by its label alone).
    let label = target.rsplit('/').next().unwrap_or(target);
    if named != target && named != label {
        return Err(format!("answer is about {named:?}, not {target:?}"));
    }
    let mut info = JobInfo::default();
    let mut state = None;
    for line in lines {
        let Some(top) = line.strip_prefix('\t') else {
            continue;
        };
        if top.starts_with('\t') {
            continue;
        }
        let Some((key, value)) = top.split_once(" = ") else {
            continue;
        };
        let value = value.trim();
        match key {
            "state" => state = Some(value.to_owned()),
            "pid" => {
                info.pid = Some(value.parse().map_err(|_| format!("pid = {value:?}"))?);
            }
            "runs" => info.runs = value.parse().ok(),
            "path" => info.path = Some(value.to_owned()),
            // `0`, `3`, `78: EX_CONFIG`; `(never exited)` is none.
            "last exit code" if info.last_exit.is_none() && !value.starts_with('(') => {
                let number = value.split(':').next().unwrap_or("").trim();
                info.last_exit = Some(ExitInfo::Code(
                    number
                        .parse()
                        .map_err(|_| format!("last exit code = {value:?}"))?,
                ));
            }
            "last terminating signal" => {
                // `Terminated: 15`: it outranks an exit code line.
                match value.rsplit(':').next().and_then(|n| n.trim().parse().ok()) {
                    Some(sig) => info.last_exit = Some(ExitInfo::Signal(sig)),
                    None => tracing::debug!(%value, "unreadable last terminating signal"),
                }
            }
            _ => {}
        }
    }
    info.state = state.ok_or("no `state =` line")?;
    if info.state == "running" && info.pid.is_none() {
        return Err("state = running without a pid".into());
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = "gui/501/com.example.d = {
\tactive count = 1
\tpath = /Users/me/Library/LaunchAgents/com.example.d.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /usr/local/bin/d
\targuments = {
\t\t/usr/local/bin/d
\t\tstate = not running
\t\tpid = 1
\t}

\tresource coalition = {
\t\tID = 1114
\t\tstate = active
\t}

\truns = 2
\tpid = 4242
\timmediate reason = speculative
\tlast terminating signal = Terminated: 15
\tproperties = keepalive | runatload | inferred program
}
";

    #[test]
    fn reads_only_the_top_level_lines() {
        let info = parse_print(RUNNING, "gui/501/com.example.d").unwrap();
        assert_eq!(info.state, "running");
        assert_eq!(info.pid, Some(4242));
        assert_eq!(info.runs, Some(2));
        assert_eq!(
            info.path.as_deref(),
            Some("/Users/me/Library/LaunchAgents/com.example.d.plist")
        );
        assert_eq!(info.last_exit, Some(ExitInfo::Signal(15)));
        assert_eq!(info.running_pid(), Some(4242));
    }

    #[test]
    fn reads_every_exit_shape() {
        let job = |line: &str| {
            parse_print(
                &format!("system/x = {{\n\tstate = not running\n\t{line}\n}}\n"),
                "system/x",
            )
            .map(|i| i.last_exit)
        };
        assert_eq!(job("last exit code = (never exited)"), Ok(None));
        assert_eq!(job("last exit code = 0"), Ok(Some(ExitInfo::Code(0))));
        assert_eq!(
            job("last exit code = 78: EX_CONFIG"),
            Ok(Some(ExitInfo::Code(78)))
        );
        assert_eq!(
            job("last terminating signal = Killed: 9"),
            Ok(Some(ExitInfo::Signal(9)))
        );
        assert!(job("last exit code = banana").is_err());
    }

    #[test]
    fn unparsable_answers_are_errors() {
        for bad in [
            "",
            "Could not find service",
            "gui/501/other = {\n\tstate = running\n\tpid = 1\n}\n",
            "gui/501/x = {\n\tpid = 12\n}\n",
            "gui/501/x = {\n\tstate = running\n}\n",
            "gui/501/x = {\n\tstate = running\n\tpid = twelve\n}\n",
        ] {
            assert!(parse_print(bad, "gui/501/x").is_err(), "{bad:?}");
        }
        // A bare label as header, and unknown lines, are fine.
        let info =
            parse_print("x = {\n\tnew key = 1\n\tstate = waiting\n}\n", "gui/501/x").unwrap();
        assert_eq!(info.state, "waiting");
        assert_eq!(info.running_pid(), None);
    }

    fn script(dir: &Path, body: &str) -> Launchctl {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("launchctl");
        std::fs::write(
            &path,
            format!("#!/bin/sh\n[ \"$1\" = --probe ] && exit 0\n{body}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A child another test thread forks while the file is open for
        // writing holds that descriptor until it execs: running the script
        // meanwhile fails with ETXTBSY. Wait that moment out (harmlessly:
        // `--probe` does nothing), so the test sees launchctl's answers.
        for _ in 0..200 {
            match std::process::Command::new(&path).arg("--probe").status() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                other => {
                    assert!(other.unwrap().success());
                    break;
                }
            }
        }
        Launchctl::new(path)
    }

    #[tokio::test]
    async fn exit_codes_map_to_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (code, expect) in [
            (119, "enable"),
            (122, "ownership"),
            (125, "GUI session"),
            (134, "session type"),
            (155, "launchctl error 155"),
        ] {
            let lc = script(
                dir.path(),
                &format!("echo \"Bootstrap failed: {code}: whatever\" >&2; exit {code}"),
            );
            let out = lc.run("x", &["bootstrap", "gui/1", "/p"]).await.unwrap();
            let err = refusal("launchctl bootstrap gui/1 /p".into(), &out);
            match &err {
                DaemonError::Launchctl {
                    code: c,
                    message,
                    advice,
                    ..
                } => {
                    assert_eq!(*c, code);
                    assert!(message.contains("whatever"), "{message}");
                    assert!(advice.contains(expect), "{code}: {advice}");
                }
                other => panic!("{code}: {other:?}"),
            }
            assert!(err.to_string().contains(&code.to_string()), "{err}");
        }
        let lc = script(dir.path(), "echo 'Operation not permitted' >&2; exit 1");
        let out = lc.run("x", &["bootstrap", "system", "/p"]).await.unwrap();
        assert!(matches!(
            refusal("bootstrap".into(), &out),
            DaemonError::PermissionDenied { .. }
        ));
    }

    #[tokio::test]
    async fn print_reads_the_exit_code_first() {
        let dir = tempfile::tempdir().unwrap();
        let lc = script(dir.path(), "echo 'Could not find service' >&2; exit 113");
        assert_eq!(lc.print("x", "gui/1", "x").await.unwrap(), Lookup::NotFound);
        let lc = script(dir.path(), "exit 112");
        assert_eq!(lc.print("x", "gui/1", "x").await.unwrap(), Lookup::NoDomain);
        // Exit 0 with garbage is an error, not "stopped".
        let lc = script(dir.path(), "echo 'state = running'; exit 0");
        assert!(lc.print("x", "gui/1", "x").await.is_err());
        let lc = script(dir.path(), "exit 64");
        assert!(matches!(
            lc.print("x", "gui/1", "x").await,
            Err(DaemonError::Launchctl { code: 64, .. })
        ));
    }

    #[tokio::test]
    async fn transient_refusals_are_retried_until_they_clear() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        // Fails with 5 twice, then succeeds.
        let lc = script(
            dir.path(),
            &format!(
                "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; \
                 [ $n -ge 3 ] && exit 0; echo 'Bootstrap failed: 5: Input/output error' >&2; exit 5",
                c = count.display()
            ),
        );
        let out = lc
            .run_retrying("x", &["bootstrap", "gui/1", "/p"])
            .await
            .unwrap();
        assert_eq!(out.code, 0);
        assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");
    }
}
