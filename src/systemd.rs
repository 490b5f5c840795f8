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
//! `make_transient_file_reload_safe`.

pub(crate) mod dbus;
mod escape;
mod list;
mod unit;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use crate::backend::{Backend, BackendKind, BoxFuture, DaemonStatus, ExitInfo, StatusReport};
use crate::config::{Readiness, Scope};
use crate::error::{DaemonError, Result};
use crate::readiness::{self, ProbeError};
use crate::spec::ServiceSpec;
use dbus::ManagerProxy;
pub use unit::{unit_name, UnitSpec, OWNERSHIP_KEY, OWNERSHIP_MARK};
/// The zbus this crate is built with, so a [`zbus::Connection`] you pass to
/// [`SystemdBackend::from_connection`] is of the same version.
pub use zbus;

/// How long we wait for the manager to answer when connecting, and what a
/// job may take beyond the config's own timeouts (systemd enforces those;
/// this only bounds a manager that stopped answering).
const BUS_GRACE: Duration = Duration::from_secs(5);

/// The deadline of every query and quick call (GetUnit, LoadUnit, GetAll,
/// Subscribe, ResetFailedUnit, KillUnit, Reload, ...): a live manager answers
/// them at once, so only a frozen or vanished one hits it.
const QUERY_GRACE: Duration = BUS_GRACE;

/// The deadline of `Reload`.
const RELOAD_GRACE: Duration = Duration::from_secs(30);

/// The first line systemd writes into a transient unit's file.
const TRANSIENT_HEADER: &str =
    "# This is a transient unit file, created programmatically via the systemd API. Do not edit.";

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
    pub(crate) async fn connect(&self) -> Result<zbus::Connection> {
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
    /// Directories the manager sees under another path (it runs in another
    /// mount namespace): (our path, the manager's path).
    path_aliases: Vec<(PathBuf, PathBuf)>,
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
        match tokio::time::timeout(BUS_GRACE, manager.version()).await {
            Ok(Ok(version)) => tracing::debug!(%version, %scope, "systemd manager answers"),
            Ok(Err(e)) => return Err(unavailable(format!("no systemd manager answers: {e}"))),
            Err(_) => {
                return Err(unavailable(format!(
                    "the systemd manager did not answer Get Version within {}",
                    crate::text::duration(BUS_GRACE)
                )))
            }
        }
        bounded("Subscribe", QUERY_GRACE, manager.subscribe())
            .await?
            .map_err(|e| bus_error("Subscribe", e))?;
        Ok(SystemdBackend {
            manager,
            scope,
            path_aliases: Vec::new(),
        })
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

    /// Refuses a unit directory the manager does not load units from (its
    /// `UnitPath`): a unit written there would never be seen. Compared by
    /// path, under the manager's name for it
    /// ([`SystemdBackend::with_path_seen_as`]), or by identity (the same
    /// directory under another name).
    async fn check_unit_dir(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let unit_path = bounded("Get UnitPath", QUERY_GRACE, self.manager.unit_path())
            .await?
            .map_err(|e| bus_error("Get UnitPath", e))?;
        let trim = |p: &Path| PathBuf::from(p.to_string_lossy().trim_end_matches('/'));
        let mut names = vec![trim(dir)];
        for (ours, managers) in &self.path_aliases {
            if let Ok(rest) = dir.strip_prefix(ours) {
                names.push(trim(&managers.join(rest)));
            }
        }
        let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        let dir_id = id(dir);
        let loaded = unit_path.iter().any(|entry| {
            let entry = Path::new(entry);
            names.contains(&trim(entry)) || (dir_id.is_some() && id(entry) == dir_id)
        });
        if loaded {
            return Ok(());
        }
        Err(DaemonError::invalid(
            "unit_dir",
            format!(
                "{} is not a directory the systemd manager loads units from (its UnitPath: {}); nothing was written",
                dir.display(),
                unit_path.join(", ")
            ),
        ))
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
    fn unit(spec: &ServiceSpec) -> Result<String> {
        unit::unit_name(&spec.name)
    }

    /// The unit for this backend's manager.
    fn unit_spec(&self, spec: &ServiceSpec) -> Result<UnitSpec> {
        UnitSpec::from_spec(spec, self.scope)
    }

    /// Writes the persistent unit into `unit_dir` (default:
    /// [`SystemdBackend::default_unit_dir`]) atomically, reloads the manager
    /// only when the content changed, and enables it when asked. Returns
    /// whether the file changed.
    pub async fn install(
        &self,
        spec: &ServiceSpec,
        unit_dir: Option<&Path>,
        enable: bool,
    ) -> Result<bool> {
        crate::host::check(&crate::host::LocalHost, spec)?;
        let unit_spec = self.unit_spec(spec)?;
        let text = unit_spec.render()?;
        let dir = match unit_dir {
            Some(d) => d.to_owned(),
            None => Self::default_unit_dir(self.scope)?,
        };
        self.check_unit_dir(&dir).await?;
        let path = dir.join(&unit_spec.unit);
        refuse_alias_link(spec, &unit_spec.unit, &path)?;
        let existing = read_unit_file(&path)?;
        match &existing {
            // A file we wrote: whatever the manager loaded under that name
            // came from it (or is the same unit name, not yet reloaded).
            Some(old) if unit::text_is_ours(old) => {}
            Some(_) if !spec.adopt => {
                return Err(DaemonError::NotOwned {
                    unit: unit_spec.unit.clone(),
                    reason: format!(
                        "{} was not written by daemon-lifecycle (no {OWNERSHIP_KEY}= in [Unit])",
                        path.display()
                    ),
                })
            }
            _ => {
                // A unit of that name loaded from elsewhere (a vendor or
                // hand-written unit, an alias): ours would shadow it.
                let state = self.load_state(&unit_spec.unit).await?;
                check_owned(spec, &unit_spec.unit, &state)?;
            }
        }
        let changed = existing.as_deref() != Some(text.as_str());
        if changed {
            std::fs::create_dir_all(&dir)
                .map_err(|e| DaemonError::io(format!("create {}", dir.display()), e))?;
            crate::fork::pidfile::write_atomic(&path, text.as_bytes()).map_err(|e| match e {
                DaemonError::PidFileError { path, source } => {
                    DaemonError::io(format!("write unit file {}", path.display()), source)
                }
                other => other,
            })?;
            self.reload().await?;
            tracing::info!(unit = %unit_spec.unit, path = %path.display(), "unit file written, manager reloaded");
        } else {
            tracing::info!(unit = %unit_spec.unit, path = %path.display(), "unit file unchanged");
        }
        if enable {
            // By name, not path: the unit directory is one the manager loads
            // from, and the manager may see it under another path (a
            // container or namespace).
            let what = format!("EnableUnitFiles {}", unit_spec.unit);
            let enabled = match bounded(
                &what,
                QUERY_GRACE,
                self.manager
                    .enable_unit_files(&[unit_spec.unit.as_str()], false, true),
            )
            .await
            {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(bus_error(what.clone(), e)),
                Err(e) => Err(e),
            };
            let (_, changes) = match enabled {
                Ok(r) => r,
                Err(e) => {
                    // Leave nothing written: the old file back, or none.
                    if changed {
                        let undo = match &existing {
                            Some(old) => crate::fork::pidfile::write_atomic(&path, old.as_bytes()),
                            None => std::fs::remove_file(&path).map_err(|e| {
                                DaemonError::io(format!("remove {}", path.display()), e)
                            }),
                        };
                        if let Err(undo) = undo {
                            tracing::warn!(path = %path.display(), %undo, "cannot undo the unit file write");
                        }
                        let _ = self.reload().await;
                    }
                    return Err(e);
                }
            };
            tracing::info!(unit = %unit_spec.unit, changes = changes.len(), "enabled");
            self.reload().await?;
        }
        Ok(changed)
    }

    /// Disables and removes the persistent unit and reloads the manager; a
    /// running unit is stopped first. Returns whether there was one to
    /// remove: nothing in `unit_dir` is `Ok(false)`, unless the manager
    /// loads a unit of that name from another directory (a wrong
    /// `unit_dir`), which is refused naming it.
    pub async fn uninstall(&self, spec: &ServiceSpec, unit_dir: Option<&Path>) -> Result<bool> {
        let unit_spec = self.unit_spec(spec)?;
        let dir = match unit_dir {
            Some(d) => d.to_owned(),
            None => Self::default_unit_dir(self.scope)?,
        };
        let path = dir.join(&unit_spec.unit);
        refuse_alias_link(spec, &unit_spec.unit, &path)?;
        let existing = match read_unit_file(&path)? {
            Some(text) => text,
            None => {
                let state = self.load_state(&unit_spec.unit).await?;
                if state.load == "loaded" && !state.transient && !state.fragment_path.is_empty() {
                    return Err(DaemonError::invalid(
                        "unit_dir",
                        format!(
                            "nothing is installed at {}, but the manager loads {} from {}: pass the directory it is in",
                            path.display(),
                            unit_spec.unit,
                            state.fragment_path
                        ),
                    ));
                }
                return Ok(false);
            }
        };
        if !spec.adopt && !unit::text_is_ours(&existing) {
            return Err(DaemonError::NotOwned {
                unit: unit_spec.unit.clone(),
                reason: format!(
                    "{} was not written by daemon-lifecycle (no {OWNERSHIP_KEY}= in [Unit])",
                    path.display()
                ),
            });
        }
        // The unit the manager has under that name must be ours too (it may
        // come from another directory, or be someone's transient unit).
        let state = self
            .owned_state_with(spec, &unit_spec.unit, Read::Lean)
            .await?;
        self.stop_state(spec, &unit_spec.unit, state).await?;
        let what = format!("DisableUnitFiles {}", unit_spec.unit);
        match bounded(
            &what,
            QUERY_GRACE,
            self.manager
                .disable_unit_files(&[unit_spec.unit.as_str()], false),
        )
        .await?
        {
            Ok(_) => {}
            Err(e) if is_no_such_unit(&e) => {}
            Err(e) => return Err(bus_error(what, e)),
        }
        std::fs::remove_file(&path)
            .map_err(|e| DaemonError::io(format!("remove {}", path.display()), e))?;
        self.reload().await?;
        let _ = self.reset_failed(&unit_spec.unit).await;
        Ok(true)
    }

    /// `Reload` (daemon-reload), bounded: a reload re-reads every unit and
    /// takes seconds on a big host, so it gets more than a query.
    async fn reload(&self) -> Result<()> {
        bounded("Reload", RELOAD_GRACE, self.manager.reload())
            .await?
            .map_err(|e| bus_error("Reload", e))
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

    /// Subscribes to `JobRemoved`, runs `call` (which queues a job), and
    /// waits for that job's result. The call and the wait together are
    /// bounded by `timeout`.
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
        let deadline = Instant::now() + timeout;
        // Subscribe first: the job may finish before the call's reply arrives.
        let mut removed = bounded(
            "subscribe to JobRemoved",
            QUERY_GRACE,
            self.manager.receive_job_removed(),
        )
        .await?
        .map_err(|e| bus_error("subscribe to JobRemoved", e))?;
        let job = bounded(&what, timeout, call())
            .await?
            .map_err(|e| bus_error(what.clone(), e))?;
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
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Some(result)) => {
                tracing::debug!(%what, %result, "job finished");
                Ok(result)
            }
            Ok(None) => Err(DaemonError::BackendUnavailable {
                backend: "systemd",
                reason: format!(
                    "the systemd manager went away while waiting for the job of {what}"
                ),
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
        self.unit_state_with(unit, Read::All).await
    }

    /// [`Self::unit_state`], reading what `read` says.
    async fn unit_state_with(&self, unit: &str, read: Read) -> Result<Option<UnitState>> {
        let what = format!("GetUnit {unit}");
        let path = match bounded(&what, QUERY_GRACE, self.manager.get_unit(unit)).await? {
            Ok(p) => p,
            Err(e) if is_no_such_unit(&e) => return Ok(None),
            Err(e) => return Err(bus_error(what, e)),
        };
        self.state_at(unit, path, read).await.map(Some)
    }

    /// `LoadUnit` (loads a unit file not loaded yet) and the unit's state;
    /// the service properties only when there is a unit ([`Read::Load`]).
    async fn load_state(&self, unit: &str) -> Result<UnitState> {
        let what = format!("LoadUnit {unit}");
        let path = bounded(&what, QUERY_GRACE, self.manager.load_unit(unit))
            .await?
            .map_err(|e| bus_error(what, e))?;
        self.state_at(unit, path, Read::Load).await
    }

    /// The unit's `FragmentPath` in one call: its object path is the name
    /// escaped as systemd does (`unit_dbus_path_from_name`).
    async fn fragment_path(&self, unit: &str) -> Result<String> {
        let what = format!("Get FragmentPath of {unit}");
        let object = unit_object_path(unit);
        let call = self.manager.inner().connection().call_method(
            Some("org.freedesktop.systemd1"),
            object.as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.freedesktop.systemd1.Unit", "FragmentPath"),
        );
        let reply = bounded(&what, QUERY_GRACE, call)
            .await?
            .map_err(|e| bus_error(what.clone(), e))?;
        let value: OwnedValue = reply
            .body()
            .deserialize()
            .map_err(|e| bus_error(what.clone(), e))?;
        String::try_from(value).map_err(|e| bus_error(what, e.into()))
    }

    /// The unit's state, refused with `NotOwned` when the unit exists and is
    /// not ours (see [`check_owned`]).
    async fn owned_state(&self, spec: &ServiceSpec, unit: &str) -> Result<Option<UnitState>> {
        self.owned_state_with(spec, unit, Read::All).await
    }

    /// [`Self::owned_state`], reading what `read` says.
    async fn owned_state_with(
        &self,
        spec: &ServiceSpec,
        unit: &str,
        read: Read,
    ) -> Result<Option<UnitState>> {
        let state = self.unit_state_with(unit, read).await?;
        if let Some(s) = &state {
            check_owned(spec, unit, s)?;
        }
        Ok(state)
    }

    /// Reads the unit's properties at `path`: one `GetAll` per interface,
    /// sent together (they are answered in order, one round trip for both),
    /// or less, as `read` says.
    async fn state_at(&self, unit: &str, path: OwnedObjectPath, read: Read) -> Result<UnitState> {
        type Props = std::collections::HashMap<String, OwnedValue>;
        const UNIT: &str = "org.freedesktop.systemd1.Unit";
        const SERVICE: &str = "org.freedesktop.systemd1.Service";
        let what = format!("properties of {unit}");
        let props = zbus::fdo::PropertiesProxy::builder(self.manager.inner().connection())
            .destination("org.freedesktop.systemd1")
            .and_then(|b| b.path(path))
            .map_err(|e| bus_error(what.clone(), e))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build();
        let props = bounded(&what, QUERY_GRACE, props)
            .await?
            .map_err(|e| bus_error(what.clone(), e))?;
        let get_all = |iface: &'static str| {
            let props = &props;
            async move {
                let what = format!("GetAll {iface} of {unit}");
                bounded(&what, QUERY_GRACE, async {
                    props
                        .get_all(zbus::names::InterfaceName::from_static_str_unchecked(iface))
                        .await
                        .map_err(zbus::Error::from)
                })
                .await?
                .map_err(|e| bus_error(what, e))
            }
        };
        let (u, s): (Props, Props) = match read {
            Read::All => futures_util::future::try_join(get_all(UNIT), get_all(SERVICE)).await?,
            Read::Load => {
                let u = get_all(UNIT).await?;
                // A name with no unit (not found, inactive: a new transient
                // unit's) has no service state worth a GetAll.
                let s = if UnitState::from_unit_props(&u).present() {
                    get_all(SERVICE).await?
                } else {
                    Props::new()
                };
                (u, s)
            }
            Read::Lean => {
                let main_pid = async {
                    let what = format!("Get MainPID of {unit}");
                    bounded(&what, QUERY_GRACE, async {
                        props
                            .get(
                                zbus::names::InterfaceName::from_static_str_unchecked(SERVICE),
                                "MainPID",
                            )
                            .await
                            .map_err(zbus::Error::from)
                    })
                    .await?
                    .map_err(|e| bus_error(what, e))
                };
                let (u, pid) = futures_util::future::try_join(get_all(UNIT), main_pid).await?;
                (u, Props::from([("MainPID".to_owned(), pid)]))
            }
        };
        let mut state = UnitState::from_unit_props(&u);
        state.add_service_props(&s);
        Ok(state)
    }

    /// Waits for the unit's pending job (a stop in progress) to finish, at
    /// most until `deadline`. Subscribes before reading the job, so its end
    /// cannot be missed.
    async fn wait_for_pending_job(
        &self,
        name: &str,
        unit: &str,
        deadline: Instant,
        bound: Duration,
    ) -> Result<()> {
        let mut removed = bounded(
            "subscribe to JobRemoved",
            QUERY_GRACE,
            self.manager.receive_job_removed(),
        )
        .await?
        .map_err(|e| bus_error("subscribe to JobRemoved", e))?;
        let Some(job) = self.unit_state(unit).await?.and_then(|s| s.job) else {
            return Ok(());
        };
        let wait = async {
            while let Some(signal) = removed.next().await {
                if signal.args().is_ok_and(|a| a.job == job) {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(DaemonError::BackendUnavailable {
                backend: "systemd",
                reason: format!(
                    "the systemd manager went away while waiting for the pending job of {unit}"
                ),
            }),
            Err(_) => Err(DaemonError::Timeout {
                name: name.to_owned(),
                operation: "waiting for the pending stop before starting",
                after: bound,
            }),
        }
    }

    async fn start_unit(&self, spec: &ServiceSpec) -> Result<u32> {
        let unit_spec = self.unit_spec(spec)?;
        let unit = unit_spec.unit.clone();
        let name = spec.name.clone();
        // A start during a stop waits for the stop, then starts: a
        // deactivating unit's PID is about to be gone.
        let stop_bound = spec.shutdown_timeout + BUS_GRACE;
        let stop_deadline = Instant::now() + stop_bound;
        // One look answers three questions: running already? installed as a
        // unit file? a leftover transient unit holding the name? (LoadUnit
        // also loads a unit file that is not loaded yet.)
        let before = loop {
            let before = self.load_state(&unit).await?;
            check_owned(spec, &unit, &before)?;
            if before.active != "deactivating" {
                break before;
            }
            tracing::info!(%unit, "stopping: waiting for the stop job before starting");
            self.wait_for_pending_job(&name, &unit, stop_deadline, stop_bound)
                .await?;
            if Instant::now() >= stop_deadline {
                return Err(DaemonError::Timeout {
                    name,
                    operation: "waiting for the pending stop before starting",
                    after: stop_bound,
                });
            }
            // The stop may leave the job list before the state settles.
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if before.is_running() && before.main_pid != 0 {
            tracing::info!(%unit, pid = before.main_pid, "already running");
            if !before.transient {
                warn_drift(&unit_spec, &before, &self.local_path(&before.fragment_path));
            }
            return Ok(before.main_pid);
        }
        let job_timeout = spec.startup_timeout + BUS_GRACE;
        let result = if before.load == "loaded" && !before.transient {
            warn_drift(&unit_spec, &before, &self.local_path(&before.fragment_path));
            if before.active == "failed" {
                // As for a transient unit: a failed unit (start limit hit
                // included) is reset, then started.
                self.reset_failed(&unit).await?;
            }
            self.run_job(&name, format!("StartUnit {unit}"), job_timeout, || {
                self.manager.start_unit(&unit, "replace")
            })
            .await?
        } else {
            self.start_transient(&name, &unit_spec, job_timeout, before.transient)
                .await?
        };
        // A start that went well shows in the Unit interface and MainPID;
        // the rest of the service's state is read to explain a failure.
        let mut state = self
            .unit_state_with(&unit, Read::Lean)
            .await?
            .unwrap_or_default();
        if result != "done" || !state.is_up() || state.main_pid == 0 {
            state = self.unit_state(&unit).await?.unwrap_or_default();
        }
        if result != "done" && (result == "timeout" || state.result == "timeout") {
            // Not ready within TimeoutStartSec: systemd stopped it already.
            return Err(DaemonError::Timeout {
                name,
                operation: "readiness (systemd TimeoutStartSec)",
                after: spec.startup_timeout,
            });
        }
        if result != "done" || !state.is_up() {
            return Err(state.start_failed(
                &name,
                &format!("systemd start job of {unit} ended with result '{result}'; unit is"),
            ));
        }
        if let Some(probe) = spec.probe() {
            if let Err(e) = self
                .probe_ready(spec, &unit, probe, spec.startup_timeout)
                .await
            {
                if matches!(e, DaemonError::Timeout { .. }) {
                    // Not ready in time: nothing is left running (as on the
                    // fork backend).
                    let _ = self.stop_unit(spec, &unit).await;
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
        unit_spec: &UnitSpec,
        timeout: Duration,
        leftover: bool,
    ) -> Result<String> {
        let unit = unit_spec.unit.as_str();
        if leftover {
            // A failed (or not yet collected) unit holds the name.
            self.reset_failed(unit).await?;
        }
        let owned = unit_spec.transient_properties();
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
                .run_job(
                    name,
                    format!("StartTransientUnit {unit}"),
                    timeout,
                    || async {
                        let job = self
                            .manager
                            .start_transient_unit(unit, "fail", &props, &aux)
                            .await?;
                        // At once, not after the job: a reload during a long
                        // start-up would read systemd's version of the file.
                        match self.fragment_path(unit).await {
                            Ok(path) => {
                                make_transient_file_reload_safe(unit_spec, &self.local_path(&path))
                            }
                            Err(e) => {
                                tracing::warn!(%unit, %e, "cannot read the new transient unit")
                            }
                        }
                        Ok(job)
                    },
                )
                .await;
            match outcome {
                Err(DaemonError::Bus {
                    error_name: Some(ref n),
                    ..
                }) if n == "org.freedesktop.systemd1.UnitExists" && attempts < 50 => {
                    // Someone else created it a moment ago (a concurrent
                    // start), or the reset unit is not collected yet.
                    if let Some(state) = self.unit_state(unit).await? {
                        // Made by someone else in the meantime: not ours
                        // to start.
                        if !state.ours() {
                            return Err(not_owned(unit, &state));
                        }
                        if state.is_up() || state.active == "activating" {
                            return self
                                .run_job(name, format!("StartUnit {unit}"), timeout, || {
                                    self.manager.start_unit(unit, "replace")
                                })
                                .await;
                        }
                        self.reset_failed(unit).await?;
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
        spec: &ServiceSpec,
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
                tracing::info!(%unit, last = %last.as_deref().unwrap_or("no attempt finished"), "not ready in time");
                Err(DaemonError::Timeout {
                    name: spec.name.clone(),
                    operation: "readiness probe",
                    after: timeout,
                })
            }
            Err(ProbeError::DaemonGone | ProbeError::NotAProbe) => {
                let state = self.unit_state(unit).await?.unwrap_or_default();
                Err(state.start_failed(&spec.name, &format!("before it became ready, {unit} is")))
            }
        }
    }

    async fn stop_unit(&self, spec: &ServiceSpec, unit: &str) -> Result<()> {
        let state = self.unit_state_with(unit, Read::Lean).await?;
        self.stop_state(spec, unit, state).await
    }

    /// [`Self::stop_unit`] with the state just read.
    async fn stop_state(
        &self,
        spec: &ServiceSpec,
        unit: &str,
        state: Option<UnitState>,
    ) -> Result<()> {
        let Some(state) = state else {
            return Ok(());
        };
        if state.active == "inactive" || state.active == "failed" {
            return Ok(());
        }
        let timeout = spec.shutdown_timeout + BUS_GRACE;
        let result = self
            .run_job(&spec.name, format!("StopUnit {unit}"), timeout, || {
                self.manager.stop_unit(unit, "replace")
            })
            .await;
        match result {
            Ok(r) if r == "done" => Ok(()),
            Ok(r) => Err(DaemonError::StopFailed {
                name: spec.name.clone(),
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

/// How much of a unit's state to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The Unit and Service interfaces (`GetAll` each, sent together).
    All,
    /// The Unit interface, then the Service interface only if there is a
    /// unit (`UnitState::present`): `LoadUnit` of a new name.
    Load,
    /// The Unit interface and the service's `MainPID` (sent together):
    /// all a stop needs, and a start that went well.
    Lean,
}

fn prop_string(m: &std::collections::HashMap<String, OwnedValue>, k: &str) -> String {
    m.get(k)
        .and_then(|v| String::try_from(v.clone()).ok())
        .unwrap_or_default()
}

fn prop_u32(m: &std::collections::HashMap<String, OwnedValue>, k: &str) -> u32 {
    m.get(k).and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

fn prop_i32(m: &std::collections::HashMap<String, OwnedValue>, k: &str) -> i32 {
    m.get(k).and_then(|v| i32::try_from(v).ok()).unwrap_or(0)
}

/// What we read of a unit.
#[derive(Debug, Clone, Default)]
struct UnitState {
    /// The unit's own name: another name than the one asked for is an alias.
    id: String,
    /// `Documentation`: holds [`OWNERSHIP_MARK`] for our units.
    documentation: Vec<String>,
    fragment_path: String,
    /// The pending job, if any.
    job: Option<OwnedObjectPath>,
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
    /// `Restart=` (no, on-failure, always, ...).
    restart: String,
    start_limit_burst: u32,
    /// `TimeoutStartUSec`, to say how long a start that timed out waited.
    timeout_start_usec: Option<u64>,
    /// `ExecMainStartTimestamp` (µs since the epoch), for the uptime.
    main_started_usec: u64,
}

impl UnitState {
    /// The `org.freedesktop.systemd1.Unit` part of the state.
    fn from_unit_props(u: &std::collections::HashMap<String, OwnedValue>) -> UnitState {
        let documentation = u
            .get("Documentation")
            .and_then(|v| v.try_clone().ok())
            .and_then(|v| Vec::<String>::try_from(v).ok())
            .unwrap_or_default();
        // Job: (id, path); id 0 when no job is pending.
        let job = u
            .get("Job")
            .and_then(|v| v.try_clone().ok())
            .and_then(|v| <(u32, OwnedObjectPath)>::try_from(v).ok())
            .filter(|(id, _)| *id != 0)
            .map(|(_, p)| p);
        UnitState {
            id: prop_string(u, "Id"),
            documentation,
            fragment_path: prop_string(u, "FragmentPath"),
            job,
            active: prop_string(u, "ActiveState"),
            sub: prop_string(u, "SubState"),
            load: prop_string(u, "LoadState"),
            transient: u
                .get("Transient")
                .and_then(|v| bool::try_from(v).ok())
                .unwrap_or(false),
            start_limit_burst: prop_u32(u, "StartLimitBurst"),
            ..UnitState::default()
        }
    }

    /// Adds the `org.freedesktop.systemd1.Service` part (what of it was read).
    fn add_service_props(&mut self, s: &std::collections::HashMap<String, OwnedValue>) {
        self.main_pid = prop_u32(s, "MainPID");
        self.result = prop_string(s, "Result");
        self.exec_main_code = prop_i32(s, "ExecMainCode");
        self.exec_main_status = prop_i32(s, "ExecMainStatus");
        self.n_restarts = prop_u32(s, "NRestarts");
        self.status_text = prop_string(s, "StatusText");
        self.restart = prop_string(s, "Restart");
        self.timeout_start_usec = s
            .get("TimeoutStartUSec")
            .and_then(|v| u64::try_from(v).ok());
        self.main_started_usec = s
            .get("ExecMainStartTimestamp")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0);
    }

    /// Whether there is a unit at all: loaded from somewhere, or still
    /// running (a `not-found` unit that is inactive is only a name).
    fn present(&self) -> bool {
        !matches!(self.load.as_str(), "not-found" | "")
            || !matches!(self.active.as_str(), "inactive" | "")
    }

    /// Whether it carries our marker.
    fn ours(&self) -> bool {
        self.documentation.iter().any(|d| d == OWNERSHIP_MARK)
    }

    /// Up and not on its way down: a deactivating unit's PID is about to go.
    fn is_running(&self) -> bool {
        matches!(self.active.as_str(), "active" | "reloading" | "activating")
    }

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
            // TimeoutStartSec ran out (a stop timeout that ended in SIGKILL is
            // `stopped`, see `stopped_by_sigkill`): the fork backend's words.
            ("timeout", _) => match self.timeout_start_usec {
                Some(usec) => crate::backend::not_ready_reason(Duration::from_micros(usec)),
                None => "not ready within TimeoutStartSec".to_owned(),
            },
            _ if self.start_limit_hit() => "start limit hit".to_owned(),
            ("exit-code" | "signal" | "core-dump", Some(exit)) => exit.to_string(),
            (result, Some(exit)) => format!("{result} ({exit})"),
            (result, None) => result.to_owned(),
        })
    }

    /// systemd 252 keeps the failure's own `Result` (`exit-code`, ...) when
    /// the start limit then refuses the automatic restart, so
    /// `start-limit-hit` never shows: a failed unit whose restart policy
    /// would restart it and that used up its `StartLimitBurst` is one.
    fn start_limit_hit(&self) -> bool {
        self.active == "failed"
            && matches!(self.restart.as_str(), "on-failure" | "always")
            && self.start_limit_burst > 0
            && self.n_restarts >= self.start_limit_burst
    }

    /// A stop that had to escalate: TimeoutStopSec ran out and SIGKILL
    /// ended it. systemd calls that `failed` (`Result=timeout`); it was
    /// asked to stop and it stopped, so it is `stopped`, as on the fork
    /// backend, with the SIGKILL in `last_exit`.
    fn stopped_by_sigkill(&self) -> bool {
        self.active == "failed"
            && self.result == "timeout"
            && self.last_exit() == Some(ExitInfo::Signal(libc::SIGKILL))
    }

    fn status(&self) -> DaemonStatus {
        match self.active.as_str() {
            "failed" if self.stopped_by_sigkill() => DaemonStatus::Stopped,
            "failed" => {
                DaemonStatus::Failed(self.failure_reason().unwrap_or_else(|| "failed".to_owned()))
            }
            // Waiting out RestartSec: the fork backend's words for it.
            "activating" if self.sub == "auto-restart" => {
                DaemonStatus::Failed(match self.last_exit() {
                    Some(exit) => format!("{exit}; restart pending"),
                    None => "restart pending".to_owned(),
                })
            }
            // The start job runs (Type=notify before READY=1): the fork
            // backend's `starting`.
            "activating" if self.sub == "start" && self.main_pid != 0 => {
                DaemonStatus::Starting(self.main_pid)
            }
            _ if self.is_up() && self.main_pid != 0 => DaemonStatus::Running(self.main_pid),
            _ => DaemonStatus::Stopped,
        }
    }
}

/// Refuses a unit that exists and is not ours (no [`OWNERSHIP_MARK`]), or
/// whose loaded `Id` is another name (an alias), unless the config adopts it.
fn check_owned(spec: &ServiceSpec, unit: &str, state: &UnitState) -> Result<()> {
    if !state.present() || spec.adopt {
        return Ok(());
    }
    if !state.id.is_empty() && state.id != unit {
        return Err(DaemonError::NotOwned {
            unit: unit.to_owned(),
            reason: format!("it is an alias of {}", state.id),
        });
    }
    if state.ours() {
        return Ok(());
    }
    Err(not_owned(unit, state))
}

/// A unit file that is a symlink is an alias (or a linked unit) of another
/// unit: writing or removing it would act on that one. Refused unless
/// adopted.
fn refuse_alias_link(spec: &ServiceSpec, unit: &str, path: &Path) -> Result<()> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link || spec.adopt {
        return Ok(());
    }
    let target = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    Err(DaemonError::NotOwned {
        unit: unit.to_owned(),
        reason: format!(
            "{} is a symlink to {target} (an alias of another unit)",
            path.display()
        ),
    })
}

fn not_owned(unit: &str, state: &UnitState) -> DaemonError {
    let origin = if state.transient {
        "a transient unit".to_owned()
    } else if state.fragment_path.is_empty() {
        "a unit".to_owned()
    } else {
        format!("a unit loaded from {}", state.fragment_path)
    };
    DaemonError::NotOwned {
        unit: unit.to_owned(),
        reason: format!(
            "{origin} ({}) that daemon-lifecycle did not create (no Documentation={OWNERSHIP_MARK})",
            state.active
        ),
    }
}

/// Whether the installed unit file differs from what `spec` renders now.
/// `None`: not a persistent unit, or its file cannot be read here.
/// `file` is the unit's `FragmentPath`, as we see it.
fn drift(unit_spec: &UnitSpec, state: &UnitState, file: &Path) -> Option<bool> {
    if state.transient || state.load != "loaded" || state.fragment_path.is_empty() {
        return None;
    }
    let installed = std::fs::read_to_string(file).ok()?;
    Some(unit_spec.render().ok()? != installed)
}

fn warn_drift(unit_spec: &UnitSpec, state: &UnitState, file: &Path) {
    if drift(unit_spec, state, file) == Some(true) {
        tracing::warn!(
            unit = %unit_spec.unit,
            path = %file.display(),
            "the installed unit file differs from the config: run `daemonctl install` to update it; starting the installed unit"
        );
    }
}

/// systemd 252 serializes the `ExecStart` of a transient unit into its
/// `transient/` file with `$` and `;` written `\$` and `\;`, which its own
/// parser reads back literally: after a `daemon-reload` or `daemon-reexec`
/// the argv would change. Rewrites that file (only if it is systemd's
/// transient file for our unit) with our quoting, which systemd reads back
/// unchanged, keeping its mtime so the unit does not read as changed on
/// disk. Where the file is out of reach (the manager in another mount
/// namespace not described with `with_path_seen_as`), says so and leaves it.
fn make_transient_file_reload_safe(unit_spec: &UnitSpec, path: &Path) {
    let check = || -> std::result::Result<(), String> {
        // The path is the manager's answer: it must be a file in a
        // `transient` directory, reached without `..`, a regular file owned
        // by the manager's user (root, or us for a user manager), read
        // without following a link.
        if path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
            || path.parent().and_then(|d| d.file_name()) != Some(std::ffi::OsStr::new("transient"))
        {
            return Err("not in the manager's transient directory".into());
        }
        let (bytes, meta) = crate::fsutil::read_regular(path, 1 << 20)
            .map_err(|e| e.to_string())?
            .ok_or("the file is gone")?;
        {
            use std::os::unix::fs::MetadataExt;
            let me = nix::unistd::Uid::effective().as_raw();
            if meta.uid() != 0 && meta.uid() != me {
                return Err(format!("owned by UID {}, not the manager's", meta.uid()));
            }
        }
        let text = String::from_utf8(bytes).map_err(|_| "not text".to_string())?;
        if !text.starts_with(TRANSIENT_HEADER) {
            return Err("not systemd's transient unit file".into());
        }
        if !text.contains(&format!("Documentation={OWNERSHIP_MARK}")) {
            return Err("not our unit's file".into());
        }
        let new = unit_spec
            .render_transient_file()
            .map_err(|e| e.to_string())?;
        if new == text {
            return Ok(());
        }
        let mtime = meta.modified().map_err(|e| e.to_string())?;
        // Atomic, but no fsync: the file lives in the manager's runtime
        // directory and is gone at reboot anyway.
        let dir = path.parent().unwrap_or(Path::new("/"));
        let io = |e: std::io::Error| e.to_string();
        let mut tmp = tempfile::Builder::new()
            .prefix(".daemon-lifecycle-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(dir)
            .map_err(io)?;
        std::io::Write::write_all(&mut tmp, new.as_bytes()).map_err(io)?;
        tmp.as_file().set_modified(mtime).map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    };
    if path.as_os_str().is_empty() {
        return;
    }
    match check() {
        Ok(()) => {
            tracing::debug!(unit = %unit_spec.unit, path = %path.display(), "transient unit file is reload-safe")
        }
        Err(why) => tracing::warn!(
            unit = %unit_spec.unit,
            path = %path.display(),
            %why,
            "cannot make the transient unit file reload-safe: after a daemon-reload, arguments with '$' or ';' may change"
        ),
    }
}

/// An installed unit file as text (`None`: nothing there), read without
/// following a link; bytes that are not UTF-8 are kept lossily, so a foreign
/// file still reads as not ours rather than as absent.
fn read_unit_file(path: &Path) -> Result<Option<String>> {
    match crate::fsutil::read_regular(path, 1 << 20) {
        Ok(found) => Ok(found.map(|(bytes, _)| String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) => Err(DaemonError::io(format!("read {}", path.display()), e)),
    }
}

/// The object path of a unit: `/org/freedesktop/systemd1/unit/` and the
/// name with every byte but `A-Z a-z 0-9` (and a leading digit) written
/// `_xx` in hex, as sd-bus' `bus_label_escape` does.
fn unit_object_path(unit: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    if unit.is_empty() {
        path.push('_');
    }
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            path.push(b as char);
        } else {
            path.push_str(&format!("_{b:02x}"));
        }
    }
    path
}

/// Runs one bus call with a deadline. The outer error is the manager not
/// answering within `bound`, or the connection to it breaking (both
/// `BackendUnavailable`, naming the call); the inner one is the manager's
/// own answer, for the caller to inspect.
async fn bounded<T>(
    what: &str,
    bound: Duration,
    call: impl std::future::Future<Output = zbus::Result<T>>,
) -> Result<zbus::Result<T>> {
    match tokio::time::timeout(bound, call).await {
        Err(_) => Err(DaemonError::BackendUnavailable {
            backend: "systemd",
            reason: format!(
                "the systemd manager did not answer {what} within {}",
                crate::text::duration(bound)
            ),
        }),
        Ok(Err(zbus::Error::InputOutput(e))) => Err(DaemonError::BackendUnavailable {
            backend: "systemd",
            reason: format!("the systemd manager went away during {what} ({e})"),
        }),
        Ok(r) => Ok(r),
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
                report.restarts = s.n_restarts;
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
                if !s.transient && s.load == "loaded" {
                    report.drift = UnitSpec::from_spec(spec, self.scope)
                        .ok()
                        .and_then(|spec| drift(&spec, s, &self.local_path(&s.fragment_path)));
                }
            }
            Ok(report)
        })
    }

    fn restart<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<u32>> {
        Box::pin(async move {
            let unit = Self::unit(spec)?;
            match self.owned_state(spec, &unit).await? {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_object_paths_are_escaped_like_sd_bus() {
        let p = |u| unit_object_path(u).replace("/org/freedesktop/systemd1/unit/", "");
        // As systemd reports them (busctl tree org.freedesktop.systemd1).
        assert_eq!(p("t1.service"), "t1_2eservice");
        assert_eq!(p("dbus.service"), "dbus_2eservice");
        assert_eq!(p("1a-b.service"), "_31a_2db_2eservice");
        assert_eq!(p("my\\x20d.service"), "my_5cx20d_2eservice");
    }

    #[test]
    fn unit_file_text_is_ours_only_with_the_key_in_unit() {
        assert!(unit::text_is_ours("[Unit]\nX-DaemonLifecycle=yes\n"));
        assert!(unit::text_is_ours(
            "[Unit]\nDescription=x\nX-DaemonLifecycle = yes\n[Service]\n"
        ));
        assert!(!unit::text_is_ours("[Service]\nX-DaemonLifecycle=yes\n"));
        assert!(!unit::text_is_ours("[Unit]\n# X-DaemonLifecycle=yes\n"));
        assert!(!unit::text_is_ours("[Unit]\nX-DaemonLifecycleX=yes\n"));
    }
}
