//! [`SystemdBackend`]: runs a daemon as a systemd service unit and drives it
//! over D-Bus with zbus — no `systemctl` subprocesses, no parsing of text.
//!
//! Every job follows the same order: subscribe to `JobRemoved`, make the call,
//! wait for the `JobRemoved` whose job path is the one returned (so no
//! completion can be missed), then confirm the unit's state (for
//! `Type=exec` "done" only means the exec succeeded).
//!
//! Units are transient by default (`StartTransientUnit`); a unit installed
//! with [`SystemdBackend::install`] (`daemonctl install`) is started as the
//! persistent unit. Both are built from the same [`UnitSpec`].
//!
//! Only our units are acted on: every unit we create carries
//! [`OWNERSHIP_MARK`] as its `Documentation` (and unit files
//! [`OWNERSHIP_KEY`]); a unit of the config's name without it, or an alias,
//! is refused with [`DaemonError::NotOwned`] unless the config sets `adopt`.
//! Every bus call has a deadline. Transient units are kept reload-safe: see
//! `transient.rs`.
//!
//! # Where things are
//!
//! This file holds [`SystemdBackend`], its constructors and its
//! [`Backend`] implementation; each step it takes has a file of its own
//! under `src/systemd/`:
//!
//! | file | owns |
//! |---|---|
//! | `bus.rs` | [`BusTarget`], connecting, the deadline of every bus call |
//! | `dbus.rs` | the `#[proxy]` of the Manager calls we make; unit object paths |
//! | `errors.rs` | D-Bus errors → [`DaemonError`] |
//! | `job.rs` | the job protocol: queue a job, wait for its `JobRemoved` |
//! | `state.rs` | what we read of a unit (property reads) and unit state → [`DaemonStatus`] |
//! | `ownership.rs` | whether a loaded unit is ours (`NotOwned`, aliases) |
//! | `start.rs`, `stop.rs` | the start sequence (readiness included), the stop job |
//! | `transient.rs` | `StartTransientUnit` and the reload-safe transient file |
//! | `install.rs` | persistent units: unit directories, install, uninstall, drift |
//! | `unit.rs`, `escape.rs` | the unit model and its rendering, systemd quoting |

mod bus;
pub(crate) mod dbus;
mod errors;
mod escape;
mod files;
mod install;
mod job;
mod list;
mod ownership;
mod private;
pub(crate) mod probe_helper;
mod reload;
mod start;
mod state;
mod stop;
mod transient;
mod unit;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{Backend, BackendKind, BoxFuture, DaemonStatus, StatusReport};
use crate::config::{Readiness, Scope};
use crate::error::{DaemonError, Result};
use crate::host::SshHost;
use crate::spec::ServiceSpec;
use bus::{bounded, BUS_GRACE, QUERY_GRACE};
use dbus::ManagerProxy;
use errors::{bus_error, is_no_such_unit};
use state::{Read, UnitState};

pub use bus::BusTarget;
pub use unit::{
    spec_unit_name, unit_name, UnitSpec, LIVENESS_HELPER_ARG, OWNERSHIP_KEY, OWNERSHIP_MARK,
};
/// The zbus this crate is built with, so a [`zbus::Connection`] you pass to
/// [`SystemdBackend::from_connection`] is of the same version.
pub use zbus;

/// The systemd backend: one bus connection, one scope.
///
/// One backend serves many daemons at once — this is the batch API: share
/// it (`Arc`) among managers built with [`DaemonManager::with_backend`]
/// and run their operations concurrently. They share the one connection
/// (the manager's private socket where we may use it, see [`BusTarget`]):
/// their calls are pipelined on it, and each start or stop waits for its
/// own job's `JobRemoved`.
///
/// ```no_run
/// use std::sync::Arc;
/// use daemon_lifecycle::{Backend, DaemonConfig, DaemonManager, Scope, SystemdBackend};
///
/// # async fn demo() -> daemon_lifecycle::Result<()> {
/// let backend: Arc<dyn Backend> = Arc::new(SystemdBackend::connect(Scope::User).await?);
/// let workers: Vec<DaemonManager> = (0..100)
///     .map(|i| {
///         let config = DaemonConfig::new("/usr/bin/worker", "/run/unused.pid")
///             .with_name(format!("worker-{i}"));
///         DaemonManager::with_backend(config, backend.clone())
///     })
///     .collect();
/// // Started together: one connection, a hundred jobs in flight.
/// for pid in futures_util::future::join_all(workers.iter().map(|m| m.start())).await {
///     println!("started {}", pid?);
/// }
/// let states = futures_util::future::join_all(workers.iter().map(|m| m.status())).await;
/// # let _ = states;
/// # Ok(()) }
/// ```
///
/// [`DaemonManager::with_backend`]: crate::DaemonManager::with_backend
#[derive(Debug, Clone)]
pub struct SystemdBackend {
    manager: ManagerProxy<'static>,
    scope: Scope,
    /// Directories the manager sees under another path (it runs in another
    /// mount namespace): (our path, the manager's path).
    path_aliases: Vec<(PathBuf, PathBuf)>,
    /// The liveness probe helper program (see [`SystemdBackend::with_probe_helper`]).
    probe_helper: Option<PathBuf>,
    /// The machine the manager runs on, when it is another one (the bus
    /// goes over its ssh connection, and so do host checks, unit file
    /// writes and readiness probes).
    remote: Option<Arc<SshHost>>,
    /// On a bus: the unique name owning `org.freedesktop.systemd1`, the only
    /// sender whose job signals count (`job.rs`). Unused peer to peer.
    owner: Arc<Mutex<Option<zbus::names::OwnedUniqueName>>>,
}

impl SystemdBackend {
    /// Connects to the manager of `scope` on its usual bus.
    pub async fn connect(scope: Scope) -> Result<SystemdBackend> {
        Self::connect_to(&BusTarget::for_scope(scope), scope).await
    }

    /// Connects to the manager of `scope` at `target`.
    pub async fn connect_to(target: &BusTarget, scope: Scope) -> Result<SystemdBackend> {
        let conn = target.connect().await?;
        Self::from_connection(conn, scope)
            .await
            .map_err(|e| match e {
                DaemonError::BackendUnavailable { reason, .. } => DaemonError::BackendUnavailable {
                    backend: "systemd",
                    reason: format!("{}: {reason}", target.describe()),
                },
                other => other,
            })
    }

    /// Uses an existing connection; checks that a systemd manager answers
    /// on it and subscribes to its job signals.
    ///
    /// The one place a zbus type is in this crate's API, on purpose: for
    /// callers who own the bus (a connection they share with their own
    /// D-Bus services, a peer-to-peer connection, a transport [`BusTarget`]
    /// has no variant for). Build it with the re-exported [`zbus`], so the
    /// versions match.
    pub async fn from_connection(conn: zbus::Connection, scope: Scope) -> Result<SystemdBackend> {
        // No property cache: it would fetch (unbounded) and watch
        // properties we read once.
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| bus_error("connect", e))?;
        let unavailable = |reason: String| DaemonError::BackendUnavailable {
            backend: "systemd",
            reason,
        };
        let owner = Arc::new(Mutex::new(None));
        if conn.is_bus() {
            // Three questions sent together (one round trip): does a manager
            // answer, who is it on this bus, and its job signals for us.
            let dbus = zbus::fdo::DBusProxy::new(&conn)
                .await
                .map_err(|e| bus_error("connect", e))?;
            let name =
                zbus::names::WellKnownName::from_static_str_unchecked("org.freedesktop.systemd1");
            let (version, subscribed, name_owner) = match tokio::time::timeout(
                BUS_GRACE,
                futures_util::future::join3(
                    manager.version(),
                    manager.subscribe(),
                    dbus.get_name_owner(name.into()),
                ),
            )
            .await
            {
                Ok(answers) => answers,
                Err(_) => {
                    return Err(unavailable(format!(
                        "the systemd manager did not answer Get Version within {}",
                        crate::text::duration(BUS_GRACE)
                    )))
                }
            };
            match version {
                Ok(version) => tracing::debug!(%version, %scope, "systemd manager answers"),
                Err(e) => return Err(unavailable(format!("no systemd manager answers: {e}"))),
            }
            subscribed.map_err(|e| bus_error("Subscribe", e))?;
            *owner.lock().unwrap() = name_owner.ok();
        } else {
            // Peer to peer: the peer is the manager (the private socket, see
            // bus.rs, or a connection the caller made), and answers or not
            // at the first call. systemd sends its signals to every private
            // connection unasked (252 does); Subscribe is sent all the same,
            // for a manager that would want it, without waiting for the
            // answer: it is on the wire before any job call, and the manager
            // handles a connection's calls in order.
            bounded(
                "Subscribe",
                QUERY_GRACE,
                manager.inner().call_noreply("Subscribe", &()),
            )
            .await?
            .map_err(|e| bus_error("Subscribe", e))?;
        }
        Ok(SystemdBackend {
            manager,
            scope,
            path_aliases: Vec::new(),
            probe_helper: None,
            remote: None,
            owner,
        })
    }

    /// Connects to the manager of `scope` on the machine behind `host`,
    /// over its ssh connection (see [`crate::host::SshHost`]): checks that
    /// `systemd-stdio-bridge` and the bus are there first. Every failure is
    /// [`DaemonError::Remote`] naming the host.
    pub async fn connect_remote(host: Arc<SshHost>, scope: Scope) -> Result<SystemdBackend> {
        let conn = bus::connect_remote(&host, scope).await?;
        let mut backend = Self::from_connection(conn, scope)
            .await
            .map_err(|e| match e {
                DaemonError::BackendUnavailable { reason, .. } => host.remote(
                    crate::error::RemoteProblem::Missing,
                    format!("no systemd {scope} manager on the bus: {reason}"),
                ),
                other => other,
            })?;
        backend.remote = Some(host);
        Ok(backend)
    }

    /// The remote machine this backend drives (`None`: this one).
    pub fn host(&self) -> Option<&Arc<SshHost>> {
        self.remote.as_ref()
    }

    /// The scope this backend manages.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Says that the manager runs in another mount namespace (a container,
    /// a test harness) where our directory `ours` is its `managers`: unit
    /// directories are checked against its `UnitPath` under its name, and
    /// the unit files it names (`FragmentPath`: drift, the transient file)
    /// are read and written under ours. Call once per bind mount.
    pub fn with_path_seen_as(
        mut self,
        ours: impl Into<PathBuf>,
        managers: impl Into<PathBuf>,
    ) -> Self {
        self.path_aliases.push((ours.into(), managers.into()));
        self
    }

    /// Runs a config's liveness probe with `program` (`daemonctl`, or a
    /// program calling [`crate::supervisor_init`]) inside the unit; without
    /// it, `$DAEMON_LIFECYCLE_SUPERVISOR`, else the running program if it
    /// called `supervisor_init`. The unit names its absolute path, so it must
    /// stay there while the unit exists.
    pub fn with_probe_helper(mut self, program: impl Into<PathBuf>) -> Self {
        self.probe_helper = Some(program.into());
        self
    }

    /// Our path for a path as the manager names it.
    fn local_path(&self, managers_path: &str) -> PathBuf {
        let p = Path::new(managers_path);
        for (ours, managers) in &self.path_aliases {
            if let Ok(rest) = p.strip_prefix(managers) {
                return ours.join(rest);
            }
        }
        p.to_owned()
    }

    /// Warns when the installed unit file differs from the config.
    async fn warn_drift(&self, unit_spec: &UnitSpec, state: &UnitState) {
        if self.drift_of(unit_spec, state).await == Some(true) {
            tracing::warn!(
                unit = %unit_spec.unit,
                path = %state.fragment_path,
                "the installed unit file differs from the config: run `daemonctl install` to update it; starting the installed unit"
            );
        }
    }

    /// The unit name alone (no rendering): what status, stop, kill, restart,
    /// wait-ready and cleanup need.
    fn unit(spec: &ServiceSpec) -> Result<String> {
        unit::spec_unit_name(spec)
    }

    /// The unit for this backend's manager.
    fn unit_spec(&self, spec: &ServiceSpec) -> Result<UnitSpec> {
        UnitSpec::from_spec_with_helper(spec, self.scope, self.probe_helper.as_deref())
    }

    /// `ResetFailedUnit`; a unit that is not loaded is fine.
    async fn reset_failed(&self, unit: &str) -> Result<()> {
        let what = format!("ResetFailedUnit {unit}");
        match bounded(&what, QUERY_GRACE, self.manager.reset_failed_unit(unit)).await? {
            Ok(()) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Ok(()),
            Err(e) => Err(bus_error(what, e)),
        }
    }
}

impl Backend for SystemdBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Systemd
    }

    fn start<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<u32>> {
        Box::pin(self.start_unit(spec))
    }

    fn stop<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let unit = Self::unit(spec)?;
            let state = self.owned_state_with(spec, &unit, Read::Lean).await?;
            self.stop_state(spec, &unit, state).await
        })
    }

    fn kill<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let unit = Self::unit(spec)?;
            let Some(state) = self.owned_state(spec, &unit).await? else {
                return Ok(());
            };
            if state.is_up() {
                let what = format!("KillUnit {unit}");
                match bounded(
                    &what,
                    QUERY_GRACE,
                    self.manager.kill_unit(&unit, "all", libc::SIGKILL),
                )
                .await?
                {
                    Ok(()) => {}
                    Err(e) if is_no_such_unit(&e) => return Ok(()),
                    Err(e) => return Err(bus_error(what, e)),
                }
                // A stop job after the kill: no restart policy brings it back,
                // and the caller returns once systemd saw everything go.
                self.stop_unit(spec, &unit).await?;
            }
            // As with the fork backend, a kill ends in "stopped", not "failed".
            let _ = self.reset_failed(&unit).await;
            Ok(())
        })
    }

    fn status<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<StatusReport>> {
        Box::pin(async move {
            let unit = Self::unit(spec)?;
            let state = self.owned_state(spec, &unit).await?;
            let status = state
                .as_ref()
                .map_or(DaemonStatus::Stopped, UnitState::status);
            let mut report = StatusReport::new(spec.name.clone(), BackendKind::Systemd, status);
            if let Some(s) = &state {
                tracing::trace!(%unit, sub = %s.sub, "unit state");
                report.restarts = s.restarts();
                report.uptime_secs =
                    crate::backend::uptime_since(&report.status, s.main_started_usec / 1000);
                // A stopped unit reads the same whether it is persistent
                // (still loaded, keeping its last run's exit and STATUS=)
                // or transient (collected, nothing left): nothing, unless
                // the stop had to SIGKILL it.
                if s.active != "inactive" {
                    report.last_exit = s.last_exit();
                }
                if report.status != DaemonStatus::Stopped {
                    report.status_text = Some(s.status_text.clone()).filter(|t| !t.is_empty());
                }
                // Pings of this run only (systemd keeps the last one's time).
                if report.status.pid().is_some() && s.watchdog_usec >= s.main_started_usec {
                    report.last_watchdog_ping_ms =
                        Some(s.watchdog_usec / 1000).filter(|ms| *ms > 0);
                }
                if !s.transient && s.load == "loaded" {
                    report.drift = match self.unit_spec(spec) {
                        Ok(unit_spec) => self.drift_of(&unit_spec, s).await,
                        Err(_) => None,
                    };
                }
            }
            Ok(report)
        })
    }

    fn reload<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.reload_unit(spec))
    }

    fn restart<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let unit = Self::unit(spec)?;
            let state = self.owned_state(spec, &unit).await?;
            if let Some(s) = &state {
                // An installed unit whose file the config no longer matches:
                // written again and the manager reloaded, so the restart runs
                // the config as it is now.
                self.rewrite_drifted(spec, s).await?;
            }
            match state {
                Some(state) if state.is_up() => {
                    self.stop_unit(spec, &unit).await?;
                    self.start_unit(spec).await
                }
                _ => self.start_unit(spec).await,
            }
        })
    }

    fn wait_ready<'a>(
        &'a self,
        spec: &'a ServiceSpec,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let unit = Self::unit(spec)?;
            let state = self.owned_state(spec, &unit).await?.unwrap_or_default();
            // Stopping, or waiting out a restart delay, is not "starting":
            // a start job queued now would cancel the stop or skip RestartSec.
            let starting = state.active == "activating" && state.sub != "auto-restart";
            if !(state.active == "active" || state.active == "reloading" || starting) {
                return Err(DaemonError::NotRunning {
                    name: spec.name.clone(),
                    state: state.status().to_string(),
                });
            }
            match &spec.readiness {
                // Type=notify: "active" means READY=1 arrived.
                Some(Readiness::Notify) | None if !starting => Ok(()),
                Some(Readiness::Notify) | None => {
                    // Still activating: a start job is pending; ours merges
                    // with it ("fail" never replaces a conflicting job) and
                    // reports its result.
                    let result = self
                        .run_job(&spec.name, format!("StartUnit {unit}"), timeout, || {
                            self.manager.start_unit(&unit, "fail")
                        })
                        .await?;
                    if result == "done" {
                        Ok(())
                    } else {
                        Err(DaemonError::StartFailed {
                            name: spec.name.clone(),
                            reason: format!("start job of {unit} ended with result '{result}'"),
                            source: None,
                        })
                    }
                }
                Some(probe) => self.probe_ready(spec, &unit, probe, timeout).await,
            }
        })
    }

    fn cleanup_stale<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let unit = Self::unit(spec)?;
            self.owned_state(spec, &unit).await?;
            self.reset_failed(&unit).await
        })
    }

    fn remote_host(&self) -> Option<Arc<SshHost>> {
        self.remote.clone()
    }
}
