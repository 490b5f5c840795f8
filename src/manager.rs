//! [`DaemonManager`]: the async API of the crate. It validates the config,
//! picks a backend (explicitly or automatically) and forwards to it, logging
//! every operation with `tracing`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::backend::{Backend, BackendKind, DaemonStatus, StatusReport};
use crate::config::DaemonConfig;
use crate::error::DaemonError;
use crate::error::Result;
use crate::fork::ForkBackend;
use crate::host::{self, Host, LocalHost, SshHost, SshOptions};
use crate::launchd::LaunchdBackend;
use crate::spec::ServiceSpec;
use crate::systemd::SystemdBackend;

/// Which backend a [`DaemonManager`] uses.
///
/// Choices will be added with backends (hence `#[non_exhaustive]`): match
/// with a `_` arm.
///
/// Also a [`clap::ValueEnum`] (`auto`, `fork`, `systemd`, `launchd`), so a CLI can take it
/// as an argument and list the choices in its help, as `daemonctl --backend`
/// does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[non_exhaustive]
pub enum BackendChoice {
    /// systemd when a systemd manager answers on the bus of the config's
    /// scope, the fork backend otherwise.
    #[default]
    Auto,
    /// The fork/PID-file backend.
    Fork,
    /// The systemd backend; an error (never a silent fallback) when no
    /// manager answers.
    Systemd,
    /// The launchd backend, through launchctl; never chosen by auto; an
    /// error where there is no launchd, unless $DAEMON_LIFECYCLE_LAUNCHCTL
    /// names a launchctl program.
    Launchd,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "fork" => Ok(BackendChoice::Fork),
            "systemd" => Ok(BackendChoice::Systemd),
            "launchd" => Ok(BackendChoice::Launchd),
            other => Err(format!(
                "unknown backend {} (expected auto, fork, systemd or launchd)",
                crate::text::quote(other)
            )),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Fork => "fork",
            BackendChoice::Systemd => "systemd",
            BackendChoice::Launchd => "launchd",
        })
    }
}

/// Manages one daemon, described by a [`DaemonConfig`].
///
/// ```no_run
/// use daemon_lifecycle::{DaemonConfig, DaemonManager, DaemonStatus};
///
/// # async fn demo() -> daemon_lifecycle::Result<()> {
/// let config = DaemonConfig::new("/usr/local/bin/queen-rbee", "/run/queen-rbee.pid")
///     .with_args(["--config", "/etc/rbee/queen.toml"]);
/// let manager = DaemonManager::new(config);
/// let pid = manager.start().await?;
/// assert_eq!(manager.status().await?, DaemonStatus::Running(pid));
/// manager.stop().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DaemonManager {
    config: DaemonConfig,
    choice: BackendChoice,
    backend: OnceCell<Arc<dyn Backend>>,
    /// The config resolved, built at the first operation.
    spec: std::sync::OnceLock<ServiceSpec>,
    host: Arc<dyn Host>,
    /// How a config with `host` reaches it.
    ssh: SshOptions,
}

impl DaemonManager {
    /// A manager for `config` on the automatically chosen backend. Nothing is
    /// checked or touched until the first operation.
    pub fn new(config: DaemonConfig) -> Self {
        DaemonManager::with_choice(config, BackendChoice::Auto)
    }

    /// A manager for `config` on the chosen backend.
    pub fn with_choice(config: DaemonConfig, choice: BackendChoice) -> Self {
        DaemonManager {
            config,
            choice,
            backend: OnceCell::new(),
            spec: std::sync::OnceLock::new(),
            host: Arc::new(LocalHost),
            ssh: SshOptions::from_env(),
        }
    }

    /// How a config with [`DaemonConfig::host`] reaches the host (default:
    /// [`SshOptions::from_env`]).
    pub fn with_ssh_options(mut self, options: SshOptions) -> Self {
        self.ssh = options;
        self
    }

    /// A manager for `config` on a backend value you built (for example a
    /// [`ForkBackend`] with its own supervisor program).
    pub fn with_backend(config: DaemonConfig, backend: Arc<dyn Backend>) -> Self {
        let choice = match backend.kind() {
            BackendKind::Fork => BackendChoice::Fork,
            BackendKind::Systemd => BackendChoice::Systemd,
            BackendKind::Launchd => BackendChoice::Launchd,
        };
        DaemonManager {
            config,
            choice,
            backend: OnceCell::new_with(Some(backend)),
            spec: std::sync::OnceLock::new(),
            host: Arc::new(LocalHost),
            ssh: SshOptions::from_env(),
        }
    }

    /// The config this manager acts on.
    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    /// The resolved model every operation hands the backend: the config
    /// checked for well-formedness (no host needed) with its defaults
    /// resolved. Built once.
    pub fn spec(&self) -> Result<&ServiceSpec> {
        if let Some(spec) = self.spec.get() {
            return Ok(spec);
        }
        let spec = ServiceSpec::from_config(&self.config)?;
        Ok(self.spec.get_or_init(|| spec))
    }

    /// The backend in use, choosing it now if needed.
    pub async fn backend_kind(&self) -> Result<BackendKind> {
        Ok(self.backend().await?.kind())
    }

    async fn backend(&self) -> Result<&Arc<dyn Backend>> {
        let scope = self.spec()?.scope;
        let remote = self.spec()?.host.clone();
        self.backend
            .get_or_try_init(|| async {
                if let Some(dest) = remote {
                    return self.remote_backend(&dest, scope).await;
                }
                let backend: Arc<dyn Backend> = match self.choice {
                    BackendChoice::Fork => Arc::new(ForkBackend::new()),
                    BackendChoice::Systemd => Arc::new(SystemdBackend::connect(scope).await?),
                    BackendChoice::Launchd => Arc::new(LaunchdBackend::from_env(scope)?),
                    BackendChoice::Auto => match SystemdBackend::connect(scope).await {
                        Ok(systemd) => Arc::new(systemd),
                        Err(why) => {
                            tracing::debug!(%scope, %why, "no systemd manager: using the fork backend");
                            Arc::new(ForkBackend::new())
                        }
                    },
                };
                tracing::debug!(choice = %self.choice, backend = %backend.kind(), "backend chosen");
                Ok(backend)
            })
            .await
    }

    /// The backend for a config with `host`: systemd on that machine, or an
    /// error; never the fork backend (`auto` included) and never launchd.
    async fn remote_backend(
        &self,
        dest: &host::SshDestination,
        scope: crate::config::Scope,
    ) -> Result<Arc<dyn Backend>> {
        let refuse = |backend| DaemonError::Unsupported {
            backend,
            operation: "host",
            reason: format!(
                "`host = \"{dest}\"` runs the daemon on another machine, which only the \
                 systemd backend does (over ssh); use --backend systemd or auto"
            ),
        };
        match self.choice {
            BackendChoice::Fork => return Err(refuse(BackendKind::Fork)),
            BackendChoice::Launchd => return Err(refuse(BackendKind::Launchd)),
            _ => {}
        }
        let host = Arc::new(SshHost::connect(dest, self.ssh.clone()).await?);
        let backend = SystemdBackend::connect_remote(host, scope).await?;
        tracing::debug!(host = %dest, "systemd backend over ssh");
        Ok(Arc::new(backend))
    }

    /// An error of an operation on a remote host, naming the host: the
    /// manager not answering there is the connection's failure as much as
    /// the manager's.
    fn on_host<T>(&self, backend: &Arc<dyn Backend>, result: Result<T>) -> Result<T> {
        match (result, backend.remote_host()) {
            (Err(DaemonError::BackendUnavailable { reason, .. }), Some(host)) => {
                Err(host.remote(crate::error::RemoteProblem::ConnectionLost, reason))
            }
            (result, _) => result,
        }
    }

    /// The spec and the backend, for an operation that does not start
    /// anything (no host checks: a daemon whose binary is gone can still be
    /// stopped).
    async fn ready(&self) -> Result<(&ServiceSpec, &Arc<dyn Backend>)> {
        let spec = self.spec()?;
        spec.runnable()?;
        if (self.choice == BackendChoice::Systemd || spec.host.is_some())
            && self.backend.get().is_none()
        {
            // What systemd cannot express for this scope (`user` in a user
            // unit, ...) is a config error, even where no bus answers.
            crate::systemd::UnitSpec::from_spec(spec, spec.scope)?;
        }
        if self.choice == BackendChoice::Launchd && self.backend.get().is_none() {
            // The same for a plist (a name that is no label, ...).
            crate::launchd::PlistSpec::from_spec(spec, spec.scope)?;
        }
        let backend = self.backend().await?;
        if let Some(dest) = &spec.host {
            // A backend given to the manager must drive that very host:
            // never the daemon of another machine, never this one.
            match backend.remote_host() {
                Some(h) if h.destination() == dest => {}
                Some(h) => {
                    return Err(DaemonError::invalid(
                        "host",
                        format!(
                            "the config names host {dest}, but the backend drives {}",
                            h.name()
                        ),
                    ))
                }
                None => {
                    return Err(DaemonError::Unsupported {
                        backend: backend.kind(),
                        operation: "host",
                        reason: format!(
                            "the config names host {dest}, but this backend drives this machine \
                             (a remote host needs SystemdBackend::connect_remote)"
                        ),
                    })
                }
            }
        }
        Ok((spec, backend))
    }

    /// [`Self::ready`] plus the host checks a start needs.
    async fn ready_to_start(&self) -> Result<(&ServiceSpec, &Arc<dyn Backend>)> {
        let spec = self.spec()?;
        if spec.host.is_none() && self.backend.get().is_none_or(|b| b.remote_host().is_none()) {
            host::check(self.host.as_ref(), spec)?;
            return self.ready().await;
        }
        // Asked on the remote machine: each answer is an ssh round trip,
        // so off the async threads (a fleet's other hosts go on meanwhile).
        let (spec, backend) = self.ready().await?;
        let Some(host) = backend.remote_host() else {
            host::check(self.host.as_ref(), spec)?;
            return Ok((spec, backend));
        };
        let owned = spec.clone();
        host::off_thread(host, move |h| host::check(h, &owned)).await?;
        Ok((spec, backend))
    }

    /// Starts the daemon and returns its PID; if it already runs, returns the
    /// running PID (concurrent starts give one daemon).
    pub async fn start(&self) -> Result<u32> {
        let t = Instant::now();
        let (spec, backend) = self.ready_to_start().await?;
        let result = self.on_host(backend, backend.start(spec).await);
        self.log("start", t, &result);
        result
    }

    /// Stops the daemon: SIGTERM to all its processes, SIGKILL after
    /// `shutdown_timeout_secs`. Stopping a stopped daemon is `Ok`.
    pub async fn stop(&self) -> Result<()> {
        let t = Instant::now();
        let (spec, backend) = self.ready().await?;
        let result = self.on_host(backend, backend.stop(spec).await);
        self.log("stop", t, &result);
        result
    }

    /// SIGKILL to all the daemon's processes at once.
    pub async fn kill(&self) -> Result<()> {
        let t = Instant::now();
        let (spec, backend) = self.ready().await?;
        let result = self.on_host(backend, backend.kill(spec).await);
        self.log("kill", t, &result);
        result
    }

    /// The daemon's state.
    pub async fn status(&self) -> Result<DaemonStatus> {
        Ok(self.status_report().await?.status)
    }

    /// The daemon's state with details (backend, last exit).
    pub async fn status_report(&self) -> Result<StatusReport> {
        let t = Instant::now();
        let (spec, backend) = self.ready().await?;
        let result = self.on_host(backend, backend.status(spec).await);
        if let Ok(report) = &result {
            tracing::debug!(name = %report.name, status = %report.status, elapsed_ms = t.elapsed().as_millis() as u64, "status");
        }
        result
    }

    /// Stops the daemon if it runs and starts it again; returns the new PID.
    pub async fn restart(&self) -> Result<u32> {
        let t = Instant::now();
        let (spec, backend) = self.ready_to_start().await?;
        let result = self.on_host(backend, backend.restart(spec).await);
        self.log("restart", t, &result);
        result
    }

    /// Asks the running daemon to reload its configuration, without a
    /// restart: the config's `reload` (SIGHUP to its main process by
    /// default, another signal, or a command run directly), and for a
    /// notify daemon a wait (at most `startup_timeout_secs`) until it sends
    /// `READY=1` again. A daemon that is not running is
    /// [`DaemonError::NotRunning`](crate::DaemonError::NotRunning).
    ///
    /// What each call re-reads: `reload` re-reads nothing of the config but
    /// `reload` itself (the daemon re-reads its own files); the daemon keeps
    /// its argv, environment and limits. `restart` starts it from the
    /// config as it is now (for an installed systemd unit whose file
    /// differs from the config, the file is rewritten and the manager
    /// reloaded first).
    pub async fn reload(&self) -> Result<()> {
        let t = Instant::now();
        let (spec, backend) = self.ready().await?;
        let result = self.on_host(backend, backend.reload(spec).await);
        self.log("reload", t, &result);
        result
    }

    /// Waits until the daemon is ready, at most `timeout_secs` seconds. Without
    /// a readiness probe, ready means running.
    pub async fn wait_ready(&self, timeout_secs: u64) -> Result<()> {
        let t = Instant::now();
        let (spec, backend) = self.ready().await?;
        // Clamped like the config's timeouts: `Instant + u64::MAX s` would panic.
        let timeout = Duration::from_secs(timeout_secs.min(crate::config::MAX_TIMEOUT_SECS));
        let result = self.on_host(backend, backend.wait_ready(spec, timeout).await);
        self.log("wait_ready", t, &result);
        result
    }

    /// The PID of the running daemon; `None` unless it is running or
    /// starting (a stale PID file's PID is not returned).
    pub async fn get_pid(&self) -> Result<Option<u32>> {
        Ok(match self.status().await? {
            DaemonStatus::Running(pid) | DaemonStatus::Starting(pid) => Some(pid),
            _ => None,
        })
    }

    /// Whether the daemon is running (ready or still starting); any error
    /// counts as "no".
    pub async fn is_running(&self) -> bool {
        matches!(
            self.status().await,
            Ok(DaemonStatus::Running(_) | DaemonStatus::Starting(_))
        )
    }

    /// Removes a stale PID file and its identity record, or clears a failed
    /// state; never signals anything and leaves a running daemon alone.
    pub async fn cleanup_stale(&self) -> Result<()> {
        let t = Instant::now();
        let (spec, backend) = self.ready().await?;
        let result = self.on_host(backend, backend.cleanup_stale(spec).await);
        self.log("cleanup_stale", t, &result);
        result
    }

    fn log<T: LogValue>(&self, op: &'static str, t: Instant, result: &Result<T>) {
        let name = self.config.name();
        let elapsed_ms = t.elapsed().as_millis() as u64;
        match result {
            Ok(value) => match value.pid() {
                Some(pid) => tracing::info!(%name, op, pid, elapsed_ms, "done"),
                None => tracing::info!(%name, op, elapsed_ms, "done"),
            },
            // info, not warn: the error is returned to the caller, who reports it.
            Err(error) => tracing::info!(%name, op, %error, elapsed_ms, "failed"),
        }
    }
}

/// What an operation's log line says about its result: the PID for
/// `start` and `restart`, nothing for the others.
trait LogValue {
    fn pid(&self) -> Option<u32>;
}

impl LogValue for u32 {
    fn pid(&self) -> Option<u32> {
        Some(*self)
    }
}

impl LogValue for () {
    fn pid(&self) -> Option<u32> {
        None
    }
}
