//! Starting a supervisor: the [`Request`] rendered from the
//! [`ServiceSpec`], the daemon's base environment, the supervisor program,
//! and reading its answers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use super::pidfile::Paths;
use super::supervise::{self, Request, Response};
use super::{limits, logs, PORTABLE_ENV};
use crate::error::{DaemonError, Result};
use crate::spec::ServiceSpec;

/// systemd's default `PATH` for services, so a daemon finds the same programs
/// under either backend.
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the supervisor needs, checked and resolved here in the
/// caller, so a refused user or limit changes nothing.
pub(super) fn build_request(spec: &ServiceSpec, paths: &Paths) -> Result<Request> {
    let credentials = limits::resolve(spec)?;
    limits::check_limits(spec)?;
    for (field, path) in spec.logs.files() {
        check_log_dir(field, path)?;
        logs::check_log_file(path)?;
    }
    Ok(Request {
        version: supervise::REQUEST_VERSION,
        name: spec.name.clone(),
        binary_path: spec.program.clone(),
        args: spec.args.clone(),
        env: daemon_env(spec, credentials.as_ref()),
        working_dir: spec
            .working_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/")),
        pid_file: paths.pid_file.clone(),
        shutdown_timeout_ms: spec.shutdown_timeout.as_millis() as u64,
        startup_timeout_ms: spec.startup_timeout.as_millis() as u64,
        notify: spec.notify(),
        restart: spec.restart.clone(),
        logs: spec.logs.clone(),
        limits: spec.limits.clone(),
        credentials,
        await_probe: spec.probe().is_some(),
        watchdog_usec: spec.watchdog.map(|d| d.as_micros() as u64),
        liveness: spec.liveness.clone(),
        reload: spec.reload.clone(),
    })
}

/// A log file's directory must exist (we do not create directories the
/// operator did not ask for) and be writable.
pub(super) fn check_log_dir(field: &str, path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(DaemonError::invalid(
            field,
            format!("directory {} does not exist", dir.display()),
        ));
    }
    if nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_err()
        && !path.exists()
    {
        return Err(DaemonError::PermissionDenied {
            action: format!("create log file {} ({field})", path.display()),
            source: None,
        });
    }
    Ok(())
}

/// The daemon's environment: a clean base (as systemd gives a service) plus
/// the config's `env`, which wins.
pub(super) fn daemon_env(
    spec: &ServiceSpec,
    creds: Option<&limits::Credentials>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
    if let Some(c) = creds.filter(|c| c.name.is_some()) {
        // The user the daemon runs as, not the caller.
        let name = c.name.clone().unwrap_or_default();
        env.insert("USER".to_owned(), name.clone());
        env.insert("LOGNAME".to_owned(), name);
        env.extend(c.home.clone().map(|h| ("HOME".to_owned(), h)));
        env.extend(c.shell.clone().map(|s| ("SHELL".to_owned(), s)));
    } else if creds.is_some_and(|c| c.switch) {
        // A numeric user with no passwd entry: no HOME/USER to give (the
        // caller's would be wrong), as systemd does.
    } else if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::effective()) {
        env.insert("HOME".to_owned(), user.dir.to_string_lossy().into_owned());
        env.insert("USER".to_owned(), user.name.clone());
        env.insert("LOGNAME".to_owned(), user.name);
        env.insert(
            "SHELL".to_owned(),
            user.shell.to_string_lossy().into_owned(),
        );
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The running executable, for re-execution as supervisor. On Linux
/// `/proc/self/exe` still works after the file was replaced by an upgrade.
pub(super) fn self_exe() -> Result<PathBuf> {
    if cfg!(target_os = "linux") {
        return Ok(PathBuf::from("/proc/self/exe"));
    }
    std::env::current_exe().map_err(|e| DaemonError::io("locate the running executable", e))
}

/// Starts the supervisor program, hands it the request and reads its answer.
pub(super) async fn run_supervisor(
    program: &Path,
    name: &str,
    request: &Request,
    timeout: Duration,
) -> Result<Response> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg0(format!("daemon-lifecycle-supervise: {name}"))
        .env_clear()
        .env(supervise::SUPERVISE_ENV, "1")
        .envs(std::env::var_os(PORTABLE_ENV).map(|v| (PORTABLE_ENV, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(false);
    let start_failed = |reason: String, source: Option<std::io::Error>| DaemonError::StartFailed {
        name: name.to_owned(),
        reason,
        source,
    };
    let mut child = cmd.spawn().map_err(|e| {
        start_failed(
            format!("cannot run supervisor program {}", program.display()),
            Some(e),
        )
    })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let json = serde_json::to_vec(request).expect("a Request always serializes");
    // A program that is not a supervisor may not read its stdin: do not let
    // a full pipe block us.
    let write = async move {
        // Bounded too: a program that never reads would otherwise hold us
        // here once the request outgrows the pipe's buffer.
        let _ = tokio::time::timeout(timeout, stdin.write_all(&json)).await;
    };
    let stdout = child.stdout.take().expect("piped stdout");
    // Lines until a final one; `Extended` lines (EXTEND_TIMEOUT_USEC from a
    // notify daemon) push the deadline out.
    let read = async move {
        let mut reader = BufReader::new(stdout);
        let mut deadline = Instant::now() + timeout;
        loop {
            let mut line = String::new();
            match tokio::time::timeout_at(deadline, reader.read_line(&mut line)).await {
                Err(_) => return Err(()),
                Ok(Ok(n)) if n > 0 => {
                    if let Ok(Response::Extended { timeout_ms }) =
                        serde_json::from_str::<Response>(line.trim_end())
                    {
                        let wanted = Instant::now() + Duration::from_millis(timeout_ms) + timeout;
                        deadline = deadline.max(wanted);
                        continue;
                    }
                    return Ok((Ok(n), line));
                }
                Ok(other) => return Ok((other, line)),
            }
        }
    };
    let answer = async { tokio::join!(write, read).1 }.await;
    // The first process exits right after forking; reap it so no zombie stays.
    let first_pid = child.id();
    let reaped = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let not_a_supervisor = || {
        start_failed(
            format!(
                "{} did not answer as a supervisor (does its main() call daemon_lifecycle::supervisor_init() first?)",
                program.display()
            ),
            None,
        )
    };
    let kill_first = |child: &mut tokio::process::Child| {
        let _ = child.start_kill();
        tracing::debug!(
            first_pid = first_pid.unwrap_or(0),
            "killed unresponsive supervisor program"
        );
    };
    match answer {
        Ok((Ok(n), line)) if n > 0 => match serde_json::from_str::<Response>(line.trim_end()) {
            Ok(resp) => Ok(resp),
            Err(_) => {
                if reaped.is_err() {
                    kill_first(&mut child);
                }
                Err(not_a_supervisor())
            }
        },
        Ok(_) => Err(not_a_supervisor()),
        Err(_) => {
            kill_first(&mut child);
            Err(DaemonError::Timeout {
                name: name.to_owned(),
                operation: "waiting for the supervisor to start the daemon",
                after: timeout,
            })
        }
    }
}
