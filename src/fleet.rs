//! Fleets: one operation on the same daemon on many hosts at once
//! ([`run`]), as `daemonctl --hosts a,b,c COMMAND CONFIG` does.
//!
//! Each host gets its own [`DaemonManager`] (the config with `host` set to
//! it, so its own ssh connection), and at most `parallel` hosts are worked
//! on at a time. A host that is down or hangs costs only its own bounds
//! (the connection timeout, then the operation's): the others' results
//! come as they finish, in that order ([`run_each`] hands each one over at
//! once).

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::backend::{DaemonStatus, StatusReport};
use crate::config::DaemonConfig;
use crate::error::{DaemonError, RemoteProblem, Result};
use crate::host::SshOptions;
use crate::manager::{BackendChoice, DaemonManager};

/// The operation a fleet runs on every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// [`DaemonManager::start`].
    Start,
    /// [`DaemonManager::stop`].
    Stop,
    /// [`DaemonManager::kill`].
    Kill,
    /// [`DaemonManager::restart`].
    Restart,
    /// [`DaemonManager::reload`].
    Reload,
    /// [`DaemonManager::status_report`].
    Status,
    /// [`DaemonManager::wait_ready`] with this many seconds.
    WaitReady(u64),
    /// [`DaemonManager::cleanup_stale`].
    Cleanup,
}

impl Operation {
    /// Its name, as the CLI spells the command.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Kill => "kill",
            Operation::Restart => "restart",
            Operation::Reload => "reload",
            Operation::Status => "status",
            Operation::WaitReady(_) => "wait-ready",
            Operation::Cleanup => "cleanup",
        }
    }
}

/// What an operation gave on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// `start`, `restart`: the daemon's PID.
    Pid(u32),
    /// `status`: the report.
    Status(StatusReport),
    /// The other operations.
    Done,
}

/// One host's result.
#[derive(Debug)]
#[non_exhaustive]
pub struct HostResult {
    /// The host, as given.
    pub host: String,
    /// What the operation gave, or its error.
    pub result: Result<Outcome>,
    /// When it finished, counted from the start of the fleet run.
    pub finished_after: Duration,
}

impl HostResult {
    /// Whether the operation succeeded there; for `status`, whether the
    /// daemon runs (as `daemonctl status` exits 0).
    pub fn succeeded(&self) -> bool {
        match &self.result {
            Ok(Outcome::Status(report)) => matches!(
                report.status,
                DaemonStatus::Running(_) | DaemonStatus::Starting(_)
            ),
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// The result as one JSON object: `host`, `ok`, and `pid`, the status
    /// report's fields (under `status`), or `error` (with `problem` for a
    /// host's own failure).
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("host".into(), self.host.clone().into());
        obj.insert("ok".into(), self.succeeded().into());
        match &self.result {
            Ok(Outcome::Pid(pid)) => {
                obj.insert("pid".into(), (*pid).into());
            }
            Ok(Outcome::Status(report)) => {
                obj.insert(
                    "status".into(),
                    serde_json::to_value(report).unwrap_or(serde_json::Value::Null),
                );
            }
            Ok(Outcome::Done) => {}
            Err(e) => {
                obj.insert("error".into(), e.to_string().into());
                if let DaemonError::Remote { problem, .. } = e {
                    obj.insert("problem".into(), problem_name(*problem).into());
                }
            }
        }
        obj.insert(
            "elapsed_ms".into(),
            (self.finished_after.as_millis() as u64).into(),
        );
        serde_json::Value::Object(obj)
    }
}

/// A [`RemoteProblem`] as a JSON word.
pub fn problem_name(problem: RemoteProblem) -> &'static str {
    match problem {
        RemoteProblem::Unreachable => "unreachable",
        RemoteProblem::AuthRefused => "auth-refused",
        RemoteProblem::ConnectTimeout => "connect-timeout",
        RemoteProblem::Missing => "missing",
        RemoteProblem::ConnectionLost => "connection-lost",
        RemoteProblem::CommandTimeout => "command-timeout",
    }
}

/// The default of `parallel`: how many hosts are worked on at once.
pub const DEFAULT_PARALLEL: usize = 16;

/// Runs `op` on the daemon of `config` on every host of `hosts` (each
/// `user@hostname[:port]`), at most `parallel` at a time (0 counts as 1),
/// with `choice` (`auto` or `systemd`: a remote host is always systemd).
/// Returns one result per host, in the order they finished.
pub async fn run(
    config: &DaemonConfig,
    hosts: &[String],
    op: Operation,
    parallel: usize,
    choice: BackendChoice,
    ssh: &SshOptions,
) -> Vec<HostResult> {
    let mut out = Vec::with_capacity(hosts.len());
    run_each(config, hosts, op, parallel, choice, ssh, |r| out.push(r)).await;
    out
}

/// [`run`], handing each host's result to `each` as soon as it is there
/// (a CLI prints it at once).
pub async fn run_each(
    config: &DaemonConfig,
    hosts: &[String],
    op: Operation,
    parallel: usize,
    choice: BackendChoice,
    ssh: &SshOptions,
    mut each: impl FnMut(HostResult),
) {
    let t0 = Instant::now();
    let mut results = futures_util::stream::iter(hosts.iter().cloned())
        .map(|host| {
            let config = config.clone().with_host(host.clone());
            let ssh = ssh.clone();
            async move {
                let manager = DaemonManager::with_choice(config, choice).with_ssh_options(ssh);
                let result = match op {
                    Operation::Start => manager.start().await.map(Outcome::Pid),
                    Operation::Restart => manager.restart().await.map(Outcome::Pid),
                    Operation::Stop => manager.stop().await.map(|()| Outcome::Done),
                    Operation::Kill => manager.kill().await.map(|()| Outcome::Done),
                    Operation::Reload => manager.reload().await.map(|()| Outcome::Done),
                    Operation::Cleanup => manager.cleanup_stale().await.map(|()| Outcome::Done),
                    Operation::WaitReady(secs) => {
                        manager.wait_ready(secs).await.map(|()| Outcome::Done)
                    }
                    Operation::Status => manager.status_report().await.map(Outcome::Status),
                };
                // The connection ends here, before the result is handed on.
                drop(manager);
                HostResult {
                    host,
                    result,
                    finished_after: t0.elapsed(),
                }
            }
        })
        .buffer_unordered(parallel.max(1));
    while let Some(result) = results.next().await {
        tracing::info!(host = %result.host, ok = result.succeeded(), op = op.name(), "host done");
        each(result);
    }
}
