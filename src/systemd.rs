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

pub(crate) mod dbus;
pub mod escape;
pub mod unit;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use crate::backend::{Backend, BackendKind, BoxFuture, DaemonStatus, ExitInfo, StatusReport};
use crate::config::{DaemonConfig, Readiness, Scope};
use crate::error::{DaemonError, Result};
use crate::readiness::{self, ProbeError};
use dbus::ManagerProxy;
pub use unit::UnitSpec;

/// How long we wait for the manager to answer when connecting, and what a
/// job may take beyond the config's own timeouts (systemd enforces those;
/// this only bounds a manager that stopped answering).
const BUS_GRACE: Duration = Duration::from_secs(5);

/// Where the systemd manager's bus is. The one place a connection is made,
/// so other transports (for example systemd's stdio bridge over SSH, as
/// `systemctl -H` uses) are a new variant here and nothing else changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusTarget {
    /// The system bus (`$DBUS_SYSTEM_BUS_ADDRESS` or the standard socket).
    System,
    /// The session bus (`$DBUS_SESSION_BUS_ADDRESS`, else
    /// `$XDG_RUNTIME_DIR/bus`), where the user manager lives.
    Session,
    /// A D-Bus address such as `unix:path=/run/user/1000/bus`.
    Address(String),
}

impl BusTarget {
    /// The bus of the manager for `scope`.
    pub fn for_scope(scope: Scope) -> BusTarget {
        match scope {
            Scope::System => BusTarget::System,
            Scope::User => BusTarget::Session,
        }
    }

    fn describe(&self) -> String {
        match self {
            BusTarget::System => "the system bus".into(),
            BusTarget::Session => "the session bus".into(),
            BusTarget::Address(a) => format!("bus {a}"),
        }
    }

    /// Connects (bounded by a few seconds).
    pub async fn connect(&self) -> Result<zbus::Connection> {
        let unavailable = |reason: String| DaemonError::BackendUnavailable {
            backend: "systemd",
            reason: format!("cannot connect to {}: {reason}", self.describe()),
        };
        let builder = match self {
            BusTarget::System => zbus::connection::Builder::system(),
            BusTarget::Session => match std::env::var("DBUS_SESSION_BUS_ADDRESS") {
                Ok(a) if !a.is_empty() => zbus::connection::Builder::address(a.as_str()),
                _ => match std::env::var_os("XDG_RUNTIME_DIR") {
                    Some(dir) => zbus::connection::Builder::address(
                        format!("unix:path={}/bus", Path::new(&dir).display()).as_str(),
                    ),
                    None => zbus::connection::Builder::session(),
                },
            },
            BusTarget::Address(a) => zbus::connection::Builder::address(a.as_str()),
        }
        .map_err(|e| unavailable(e.to_string()))?;
        match tokio::time::timeout(BUS_GRACE, builder.build()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable(format!(
                "no answer within {}s",
                BUS_GRACE.as_secs()
            ))),
        }
    }
}

/// The systemd backend: one bus connection, one scope.
#[derive(Debug, Clone)]
pub struct SystemdBackend {
    manager: ManagerProxy<'static>,
    scope: Scope,
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
    pub async fn from_connection(conn: zbus::Connection, scope: Scope) -> Result<SystemdBackend> {
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(|e| bus_error("connect", e))?;
        let unavailable = |reason: String| DaemonError::BackendUnavailable {
            backend: "systemd",
            reason,
        };
        match tokio::time::timeout(BUS_GRACE, manager.version()).await {
            Ok(Ok(version)) => tracing::debug!(%version, %scope, "systemd manager answers"),
            Ok(Err(e)) => return Err(unavailable(format!("no systemd manager answers: {e}"))),
            Err(_) => return Err(unavailable("the systemd manager did not answer".into())),
        }
        manager
            .subscribe()
            .await
            .map_err(|e| bus_error("Subscribe", e))?;
        Ok(SystemdBackend { manager, scope })
    }

    /// The scope this backend manages.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Where persistent units of `scope` go by default:
    /// `/etc/systemd/system`, or `$XDG_CONFIG_HOME/systemd/user`
    /// (`~/.config/systemd/user`).
    pub fn default_unit_dir(scope: Scope) -> Result<PathBuf> {
        match scope {
            Scope::System => Ok(PathBuf::from("/etc/systemd/system")),
            Scope::User => {
                let config = match std::env::var_os("XDG_CONFIG_HOME") {
                    Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
                    _ => match std::env::var_os("HOME") {
                        Some(h) if Path::new(&h).is_absolute() => PathBuf::from(h).join(".config"),
                        _ => {
                            return Err(DaemonError::invalid(
                                "scope",
                                "neither XDG_CONFIG_HOME nor HOME is set: pass a unit directory",
                            ))
                        }
                    },
                };
                Ok(config.join("systemd").join("user"))
            }
        }
    }

    /// The unit name alone (no rendering): what status, stop, kill, restart,
    /// wait-ready and cleanup need.
    fn unit(config: &DaemonConfig) -> Result<String> {
        unit::unit_name(&config.name())
    }

    fn spec(&self, config: &DaemonConfig) -> Result<UnitSpec> {
        UnitSpec::from_config(config, self.scope)
    }

    /// Writes the persistent unit into `unit_dir` (default:
    /// [`SystemdBackend::default_unit_dir`]) atomically, reloads the manager
    /// only when the content changed, and enables it when asked. Returns
    /// whether the file changed.
    pub async fn install(
        &self,
        config: &DaemonConfig,
        unit_dir: Option<&Path>,
        enable: bool,
    ) -> Result<bool> {
        config.validate()?;
        let spec = self.spec(config)?;
        let text = spec.render()?;
        let dir = match unit_dir {
            Some(d) => d.to_owned(),
            None => Self::default_unit_dir(self.scope)?,
        };
        let path = dir.join(&spec.unit);
        let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
        if changed {
            std::fs::create_dir_all(&dir)
                .map_err(|e| DaemonError::io(format!("create {}", dir.display()), e))?;
            crate::fork::pidfile::write_atomic(&path, text.as_bytes()).map_err(|e| match e {
                DaemonError::PidFileError { path, source } => {
                    DaemonError::io(format!("write unit file {}", path.display()), source)
                }
                other => other,
            })?;
            self.manager
                .reload()
                .await
                .map_err(|e| bus_error("Reload", e))?;
            tracing::info!(unit = %spec.unit, path = %path.display(), "unit file written, manager reloaded");
        } else {
            tracing::info!(unit = %spec.unit, path = %path.display(), "unit file unchanged");
        }
        if enable {
            // By name, not path: the unit directory is one the manager loads
            // from, and the manager may see it under another path (a
            // container or namespace).
            let (_, changes) = self
                .manager
                .enable_unit_files(&[spec.unit.as_str()], false, true)
                .await
                .map_err(|e| bus_error(format!("EnableUnitFiles {}", spec.unit), e))?;
            tracing::info!(unit = %spec.unit, ?changes, "enabled");
            self.manager
                .reload()
                .await
                .map_err(|e| bus_error("Reload", e))?;
        }
        Ok(changed)
    }

    /// Disables and removes the persistent unit and reloads the manager.
    /// Removing a unit that is not installed is `Ok`. A running unit is
    /// stopped first.
    pub async fn uninstall(&self, config: &DaemonConfig, unit_dir: Option<&Path>) -> Result<()> {
        config.validate()?;
        let spec = self.spec(config)?;
        let dir = match unit_dir {
            Some(d) => d.to_owned(),
            None => Self::default_unit_dir(self.scope)?,
        };
        let path = dir.join(&spec.unit);
        if !path.exists() {
            return Ok(());
        }
        self.stop_unit(config, &spec.unit).await?;
        match self
            .manager
            .disable_unit_files(&[spec.unit.as_str()], false)
            .await
        {
            Ok(_) => {}
            Err(e) if is_no_such_unit(&e) => {}
            Err(e) => return Err(bus_error(format!("DisableUnitFiles {}", spec.unit), e)),
        }
        std::fs::remove_file(&path)
            .map_err(|e| DaemonError::io(format!("remove {}", path.display()), e))?;
        self.manager
            .reload()
            .await
            .map_err(|e| bus_error("Reload", e))?;
        let _ = self.manager.reset_failed_unit(&spec.unit).await;
        Ok(())
    }

    /// Subscribes to `JobRemoved`, runs `call` (which queues a job), and
    /// waits for that job's result.
    async fn run_job<F, Fut>(
        &self,
        name: &str,
        what: String,
        timeout: Duration,
        call: F,
    ) -> Result<String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = zbus::Result<OwnedObjectPath>>,
    {
        // Subscribe first: the job may finish before the call's reply arrives.
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .map_err(|e| bus_error("subscribe to JobRemoved", e))?;
        let job = call().await.map_err(|e| bus_error(what.clone(), e))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                if let Ok(args) = signal.args() {
                    if args.job == job {
                        return Some(args.result);
                    }
                }
            }
            None
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(result)) => {
                tracing::debug!(%what, %result, "job finished");
                Ok(result)
            }
            Ok(None) => Err(DaemonError::Bus {
                operation: what,
                error_name: None,
                message: "the bus connection closed while waiting for the job".into(),
            }),
            Err(_) => Err(DaemonError::Timeout {
                name: name.to_owned(),
                operation: "waiting for the systemd job",
                after: timeout,
            }),
        }
    }

    /// The unit's state, `None` when it is not loaded.
    async fn unit_state(&self, unit: &str) -> Result<Option<UnitState>> {
        let path = match self.manager.get_unit(unit).await {
            Ok(p) => p,
            Err(e) if is_no_such_unit(&e) => return Ok(None),
            Err(e) => return Err(bus_error(format!("GetUnit {unit}"), e)),
        };
        self.state_at(unit, path).await.map(Some)
    }

    async fn state_at(&self, unit: &str, path: OwnedObjectPath) -> Result<UnitState> {
        let props = zbus::fdo::PropertiesProxy::builder(self.manager.inner().connection())
            .destination("org.freedesktop.systemd1")
            .and_then(|b| b.path(path))
            .map_err(|e| bus_error(format!("properties of {unit}"), e))?
            .build()
            .await
            .map_err(|e| bus_error(format!("properties of {unit}"), e))?;
        let get_all = |iface: &'static str| {
            let props = &props;
            async move {
                props
                    .get_all(zbus::names::InterfaceName::from_static_str_unchecked(iface))
                    .await
                    .map_err(|e| bus_error(format!("GetAll {iface} of {unit}"), e.into()))
            }
        };
        let u = get_all("org.freedesktop.systemd1.Unit").await?;
        let s = get_all("org.freedesktop.systemd1.Service").await?;
        let string = |m: &std::collections::HashMap<String, OwnedValue>, k: &str| -> String {
            m.get(k)
                .and_then(|v| String::try_from(v.clone()).ok())
                .unwrap_or_default()
        };
        let u32_of = |m: &std::collections::HashMap<String, OwnedValue>, k: &str| -> u32 {
            m.get(k).and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
        };
        let i32_of = |m: &std::collections::HashMap<String, OwnedValue>, k: &str| -> i32 {
            m.get(k).and_then(|v| i32::try_from(v).ok()).unwrap_or(0)
        };
        Ok(UnitState {
            active: string(&u, "ActiveState"),
            sub: string(&u, "SubState"),
            load: string(&u, "LoadState"),
            transient: u
                .get("Transient")
                .and_then(|v| bool::try_from(v).ok())
                .unwrap_or(false),
            main_pid: u32_of(&s, "MainPID"),
            result: string(&s, "Result"),
            exec_main_code: i32_of(&s, "ExecMainCode"),
            exec_main_status: i32_of(&s, "ExecMainStatus"),
            n_restarts: u32_of(&s, "NRestarts"),
            status_text: string(&s, "StatusText"),
        })
    }

    async fn start_unit(&self, config: &DaemonConfig) -> Result<u32> {
        let spec = self.spec(config)?;
        let unit = spec.unit.clone();
        let name = config.name();
        // One look answers three questions: running already? installed as a
        // unit file? a leftover transient unit holding the name? (LoadUnit
        // also loads a unit file that is not loaded yet.)
        let path = self
            .manager
            .load_unit(&unit)
            .await
            .map_err(|e| bus_error(format!("LoadUnit {unit}"), e))?;
        let before = self.state_at(&unit, path).await?;
        if before.is_up() && before.main_pid != 0 {
            tracing::info!(%unit, pid = before.main_pid, "already running");
            return Ok(before.main_pid);
        }
        let job_timeout = config.startup_timeout() + BUS_GRACE;
        let result = if before.load == "loaded" && !before.transient {
            self.run_job(&name, format!("StartUnit {unit}"), job_timeout, || {
                self.manager.start_unit(&unit, "replace")
            })
            .await?
        } else {
            self.start_transient(&name, &spec, job_timeout, before.transient)
                .await?
        };
        let mut state = self.unit_state(&unit).await?.unwrap_or_default();
        if result != "done" && (result == "timeout" || state.result == "timeout") {
            // Not ready within TimeoutStartSec: systemd stopped it already.
            return Err(DaemonError::Timeout {
                name,
                operation: "start (systemd TimeoutStartSec)",
                after: config.startup_timeout(),
            });
        }
        if result != "done" || !state.is_up() {
            return Err(state.start_failed(
                &name,
                &format!("systemd start job of {unit} ended with result '{result}'; unit is"),
            ));
        }
        if let Some(probe) = config
            .readiness
            .as_ref()
            .filter(|r| !matches!(r, Readiness::Notify))
        {
            if let Err(e) = self
                .probe_ready(config, &unit, probe, config.startup_timeout())
                .await
            {
                if matches!(e, DaemonError::Timeout { .. }) {
                    // Not ready in time: nothing is left running (as on the
                    // fork backend).
                    let _ = self.stop_unit(config, &unit).await;
                }
                return Err(e);
            }
            state = self.unit_state(&unit).await?.unwrap_or_default();
        }
        if !state.is_up() || state.main_pid == 0 {
            return Err(state.start_failed(&name, &format!("right after starting, {unit} is")));
        }
        Ok(state.main_pid)
    }

    /// `StartTransientUnit`, after clearing a failed unit of the same name.
    /// `leftover`: a transient unit of this name is still loaded (failed, or
    /// not collected yet) and must be reset first.
    async fn start_transient(
        &self,
        name: &str,
        spec: &UnitSpec,
        timeout: Duration,
        leftover: bool,
    ) -> Result<String> {
        let unit = spec.unit.as_str();
        if leftover {
            // A failed (or not yet collected) unit holds the name.
            match self.manager.reset_failed_unit(unit).await {
                Ok(()) => {}
                Err(e) if is_no_such_unit(&e) => {}
                Err(e) => return Err(bus_error(format!("ResetFailedUnit {unit}"), e)),
            }
        }
        let owned = spec.transient_properties();
        let props: Vec<(&str, zbus::zvariant::Value<'_>)> = owned
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    zbus::zvariant::Value::from(v.try_clone().expect("no fds")),
                )
            })
            .collect();
        let aux: Vec<(&str, &[(&str, zbus::zvariant::Value<'_>)])> = Vec::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = self
                .run_job(name, format!("StartTransientUnit {unit}"), timeout, || {
                    self.manager
                        .start_transient_unit(unit, "fail", &props, &aux)
                })
                .await;
            match outcome {
                Err(DaemonError::Bus {
                    error_name: Some(ref n),
                    ..
                }) if n == "org.freedesktop.systemd1.UnitExists" && attempts < 50 => {
                    // Someone else created it a moment ago (a concurrent
                    // start), or the reset unit is not collected yet.
                    if let Some(state) = self.unit_state(unit).await? {
                        if state.is_up() || state.active == "activating" {
                            return self
                                .run_job(name, format!("StartUnit {unit}"), timeout, || {
                                    self.manager.start_unit(unit, "replace")
                                })
                                .await;
                        }
                        let _ = self.manager.reset_failed_unit(unit).await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }

    /// Runs the shared probe (crate::readiness) until ready; between
    /// attempts, systemd says whether the unit is still up.
    async fn probe_ready(
        &self,
        config: &DaemonConfig,
        unit: &str,
        probe: &Readiness,
        timeout: Duration,
    ) -> Result<()> {
        let still_up = || async {
            match self.unit_state(unit).await {
                Ok(state) => state.is_some_and(|s| s.is_up()),
                // A bus hiccup is not a death: keep probing until the deadline.
                Err(e) => {
                    tracing::debug!(%unit, %e, "unit state unknown during readiness probe");
                    true
                }
            }
        };
        let deadline = Instant::now() + timeout;
        match readiness::wait_until_ready(probe, deadline, still_up).await {
            Ok(()) => Ok(()),
            Err(ProbeError::Timeout { last }) => {
                tracing::info!(%unit, ?last, "not ready in time");
                Err(DaemonError::Timeout {
                    name: config.name(),
                    operation: "readiness probe",
                    after: timeout,
                })
            }
            Err(ProbeError::DaemonGone | ProbeError::NotAProbe) => {
                let state = self.unit_state(unit).await?.unwrap_or_default();
                Err(state.start_failed(
                    &config.name(),
                    &format!("before it became ready, {unit} is"),
                ))
            }
        }
    }

    async fn stop_unit(&self, config: &DaemonConfig, unit: &str) -> Result<()> {
        let Some(state) = self.unit_state(unit).await? else {
            return Ok(());
        };
        if state.active == "inactive" || state.active == "failed" {
            return Ok(());
        }
        let timeout = config.shutdown_timeout() + BUS_GRACE;
        let result = self
            .run_job(&config.name(), format!("StopUnit {unit}"), timeout, || {
                self.manager.stop_unit(unit, "replace")
            })
            .await;
        match result {
            Ok(r) if r == "done" => Ok(()),
            Ok(r) => Err(DaemonError::StopFailed {
                name: config.name(),
                pid: state.main_pid,
                reason: format!("systemd stop job of {unit} ended with result '{r}'"),
            }),
            Err(DaemonError::Bus {
                error_name: Some(ref n),
                ..
            }) if n == "org.freedesktop.systemd1.NoSuchUnit" => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What we read of a unit.
#[derive(Debug, Clone, Default)]
struct UnitState {
    active: String,
    sub: String,
    load: String,
    transient: bool,
    main_pid: u32,
    result: String,
    exec_main_code: i32,
    exec_main_status: i32,
    n_restarts: u32,
    status_text: String,
}

impl UnitState {
    fn is_up(&self) -> bool {
        matches!(
            self.active.as_str(),
            "active" | "reloading" | "activating" | "deactivating"
        )
    }

    fn last_exit(&self) -> Option<ExitInfo> {
        // CLD_EXITED = 1, CLD_KILLED = 2, CLD_DUMPED = 3 (siginfo codes).
        match self.exec_main_code {
            1 => Some(ExitInfo::Code(self.exec_main_status)),
            2 | 3 => Some(ExitInfo::Signal(self.exec_main_status)),
            _ => None,
        }
    }

    /// `StartFailed` saying `{what} {active}: {failure reason}`.
    fn start_failed(&self, name: &str, what: &str) -> DaemonError {
        let why = self
            .failure_reason()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        DaemonError::StartFailed {
            name: name.to_owned(),
            reason: format!("{what} {}{why}", self.active),
            source: None,
        }
    }

    fn failure_reason(&self) -> Option<String> {
        if self.result.is_empty() || self.result == "success" {
            return None;
        }
        Some(match (self.result.as_str(), self.last_exit()) {
            ("start-limit-hit", _) => "start limit hit".to_owned(),
            ("exit-code" | "signal" | "core-dump", Some(exit)) => exit.to_string(),
            (result, Some(exit)) => format!("{result} ({exit})"),
            (result, None) => result.to_owned(),
        })
    }

    fn status(&self) -> DaemonStatus {
        match self.active.as_str() {
            "failed" => {
                DaemonStatus::Failed(self.failure_reason().unwrap_or_else(|| "failed".to_owned()))
            }
            _ if self.is_up() && self.main_pid != 0 => DaemonStatus::Running(self.main_pid),
            _ => DaemonStatus::Stopped,
        }
    }
}

/// Whether a call failed because the unit is not loaded.
fn is_no_such_unit(e: &zbus::Error) -> bool {
    dbus_error_name(e).as_deref() == Some("org.freedesktop.systemd1.NoSuchUnit")
}

/// The remote error name of a failed method call.
fn dbus_error_name(e: &zbus::Error) -> Option<String> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(fdo) => Some(zbus::DBusError::name(fdo.as_ref()).to_string()),
        _ => None,
    }
}

/// Maps a zbus error to ours: access denials become `PermissionDenied`
/// naming the action; the remote error name is kept.
fn bus_error(operation: impl Into<String>, e: zbus::Error) -> DaemonError {
    let operation = operation.into();
    let name = dbus_error_name(&e);
    match name.as_deref() {
        Some(
            "org.freedesktop.DBus.Error.AccessDenied"
            | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        ) => DaemonError::PermissionDenied {
            action: format!("{operation} ({})", name.as_deref().unwrap_or_default()),
            source: None,
        },
        _ => {
            let message = match &e {
                zbus::Error::MethodError(_, Some(msg), _) => msg.clone(),
                other => other.to_string(),
            };
            DaemonError::Bus {
                operation,
                error_name: name,
                message,
            }
        }
    }
}

impl Backend for SystemdBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Systemd
    }

    fn start<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<u32>> {
        Box::pin(self.start_unit(config))
    }

    fn stop<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let unit = Self::unit(config)?;
            self.stop_unit(config, &unit).await
        })
    }

    fn kill<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let unit = Self::unit(config)?;
            let Some(state) = self.unit_state(&unit).await? else {
                return Ok(());
            };
            if state.is_up() {
                match self.manager.kill_unit(&unit, "all", libc::SIGKILL).await {
                    Ok(()) => {}
                    Err(e) if is_no_such_unit(&e) => return Ok(()),
                    Err(e) => return Err(bus_error(format!("KillUnit {unit}"), e)),
                }
                // A stop job after the kill: no restart policy brings it back,
                // and the caller returns once systemd saw everything go.
                self.stop_unit(config, &unit).await?;
            }
            // As with the fork backend, a kill ends in "stopped", not "failed".
            let _ = self.manager.reset_failed_unit(&unit).await;
            Ok(())
        })
    }

    fn status<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<StatusReport>> {
        Box::pin(async move {
            let unit = Self::unit(config)?;
            let state = self.unit_state(&unit).await?;
            let status = state
                .as_ref()
                .map_or(DaemonStatus::Stopped, UnitState::status);
            let mut report = StatusReport::new(config.name(), BackendKind::Systemd, status);
            report.last_exit = state.as_ref().and_then(UnitState::last_exit);
            if let Some(s) = &state {
                tracing::trace!(%unit, sub = %s.sub, "unit state");
                report.restarts = s.n_restarts;
                report.status_text = Some(s.status_text.clone()).filter(|t| !t.is_empty());
            }
            Ok(report)
        })
    }

    fn restart<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let unit = Self::unit(config)?;
            match self.unit_state(&unit).await? {
                Some(state) if state.is_up() => {
                    self.stop_unit(config, &unit).await?;
                    self.start_unit(config).await
                }
                _ => self.start_unit(config).await,
            }
        })
    }

    fn wait_ready<'a>(
        &'a self,
        config: &'a DaemonConfig,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let unit = Self::unit(config)?;
            let state = self.unit_state(&unit).await?.unwrap_or_default();
            // Stopping, or waiting out a restart delay, is not "starting":
            // a start job queued now would cancel the stop or skip RestartSec.
            let starting = state.active == "activating" && state.sub != "auto-restart";
            if !(state.active == "active" || state.active == "reloading" || starting) {
                return Err(DaemonError::NotRunning {
                    name: config.name(),
                    state: state.status().to_string(),
                });
            }
            match &config.readiness {
                // Type=notify: "active" means READY=1 arrived.
                Some(Readiness::Notify) | None if !starting => Ok(()),
                Some(Readiness::Notify) | None => {
                    // Still activating: a start job is pending; ours merges
                    // with it ("fail" never replaces a conflicting job) and
                    // reports its result.
                    let result = self
                        .run_job(&config.name(), format!("StartUnit {unit}"), timeout, || {
                            self.manager.start_unit(&unit, "fail")
                        })
                        .await?;
                    if result == "done" {
                        Ok(())
                    } else {
                        Err(DaemonError::StartFailed {
                            name: config.name(),
                            reason: format!("start job of {unit} ended with result '{result}'"),
                            source: None,
                        })
                    }
                }
                Some(probe) => self.probe_ready(config, &unit, probe, timeout).await,
            }
        })
    }

    fn cleanup_stale<'a>(&'a self, config: &'a DaemonConfig) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let unit = Self::unit(config)?;
            match self.manager.reset_failed_unit(&unit).await {
                Ok(()) => Ok(()),
                Err(e) if is_no_such_unit(&e) => Ok(()),
                Err(e) => Err(bus_error(format!("ResetFailedUnit {unit}"), e)),
            }
        })
    }
}
