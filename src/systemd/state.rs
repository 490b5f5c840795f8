//! What we read of a unit and what it means: [`UnitState`] (the Unit and
//! Service properties we use), the reads that fill it (`GetUnit`/`LoadUnit`,
//! then one `GetAll` per interface, or less: [`Read`]), and the decisions
//! made from it alone — unit state → [`DaemonStatus`], the failure reason, the
//! last exit.

use std::collections::HashMap;

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use super::bus::{bounded, QUERY_GRACE};
use super::dbus::unit_object_path;
use super::errors::{bus_error, is_no_such_unit};
use super::unit::OWNERSHIP_MARK;
use super::SystemdBackend;
use crate::backend::{DaemonStatus, ExitInfo};
use crate::error::{DaemonError, Result};

/// How much of a unit's state to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// The Unit and Service interfaces (`GetAll` each, sent together).
    All,
    /// The Unit interface, then the Service interface only if there is a
    /// unit (`UnitState::present`): `LoadUnit` of a new name.
    Load,
    /// The Unit interface and the service's `MainPID` (sent together):
    /// all a stop needs, and a start that went well.
    Lean,
}

fn prop_string(m: &HashMap<String, OwnedValue>, k: &str) -> String {
    m.get(k)
        .and_then(|v| String::try_from(v.clone()).ok())
        .unwrap_or_default()
}

fn prop_u32(m: &HashMap<String, OwnedValue>, k: &str) -> u32 {
    m.get(k).and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

fn prop_i32(m: &HashMap<String, OwnedValue>, k: &str) -> i32 {
    m.get(k).and_then(|v| i32::try_from(v).ok()).unwrap_or(0)
}

/// What we read of a unit.
#[derive(Debug, Clone, Default)]
pub(super) struct UnitState {
    /// The unit's own name: another name than the one asked for is an alias.
    pub(super) id: String,
    /// `Documentation`: holds [`OWNERSHIP_MARK`] for our units.
    pub(super) documentation: Vec<String>,
    pub(super) fragment_path: String,
    /// The pending job, if any.
    pub(super) job: Option<OwnedObjectPath>,
    pub(super) active: String,
    pub(super) sub: String,
    pub(super) load: String,
    pub(super) transient: bool,
    pub(super) main_pid: u32,
    pub(super) result: String,
    pub(super) exec_main_code: i32,
    pub(super) exec_main_status: i32,
    pub(super) n_restarts: u32,
    pub(super) status_text: String,
    /// `Restart=` (no, on-failure, always, ...).
    pub(super) restart: String,
    pub(super) start_limit_burst: u32,
}

impl UnitState {
    /// The `org.freedesktop.systemd1.Unit` part of the state.
    fn from_unit_props(u: &HashMap<String, OwnedValue>) -> UnitState {
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
    fn add_service_props(&mut self, s: &HashMap<String, OwnedValue>) {
        self.main_pid = prop_u32(s, "MainPID");
        self.result = prop_string(s, "Result");
        self.exec_main_code = prop_i32(s, "ExecMainCode");
        self.exec_main_status = prop_i32(s, "ExecMainStatus");
        self.n_restarts = prop_u32(s, "NRestarts");
        self.status_text = prop_string(s, "StatusText");
        self.restart = prop_string(s, "Restart");
    }

    /// Whether there is a unit at all: loaded from somewhere, or still
    /// running (a `not-found` unit that is inactive is only a name).
    pub(super) fn present(&self) -> bool {
        !matches!(self.load.as_str(), "not-found" | "")
            || !matches!(self.active.as_str(), "inactive" | "")
    }

    /// Whether it carries our marker.
    pub(super) fn ours(&self) -> bool {
        self.documentation.iter().any(|d| d == OWNERSHIP_MARK)
    }

    /// Up and not on its way down: a deactivating unit's PID is about to go.
    pub(super) fn is_running(&self) -> bool {
        matches!(self.active.as_str(), "active" | "reloading" | "activating")
    }

    pub(super) fn is_up(&self) -> bool {
        matches!(
            self.active.as_str(),
            "active" | "reloading" | "activating" | "deactivating"
        )
    }

    pub(super) fn last_exit(&self) -> Option<ExitInfo> {
        // CLD_EXITED = 1, CLD_KILLED = 2, CLD_DUMPED = 3 (siginfo codes).
        match self.exec_main_code {
            1 => Some(ExitInfo::Code(self.exec_main_status)),
            2 | 3 => Some(ExitInfo::Signal(self.exec_main_status)),
            _ => None,
        }
    }

    /// `StartFailed` saying `{what} {active}: {failure reason}`.
    pub(super) fn start_failed(&self, name: &str, what: &str) -> DaemonError {
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

    pub(super) fn status(&self) -> DaemonStatus {
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

impl SystemdBackend {
    /// The unit's state, `None` when it is not loaded.
    pub(super) async fn unit_state(&self, unit: &str) -> Result<Option<UnitState>> {
        self.unit_state_with(unit, Read::All).await
    }

    /// [`Self::unit_state`], reading what `read` says.
    pub(super) async fn unit_state_with(
        &self,
        unit: &str,
        read: Read,
    ) -> Result<Option<UnitState>> {
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
    pub(super) async fn load_state(&self, unit: &str) -> Result<UnitState> {
        let what = format!("LoadUnit {unit}");
        let path = bounded(&what, QUERY_GRACE, self.manager.load_unit(unit))
            .await?
            .map_err(|e| bus_error(what, e))?;
        self.state_at(unit, path, Read::Load).await
    }

    /// The unit's `FragmentPath` in one call: its object path is the name
    /// escaped as systemd does (`unit_dbus_path_from_name`).
    pub(super) async fn fragment_path(&self, unit: &str) -> Result<String> {
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

    /// Reads the unit's properties at `path`: one `GetAll` per interface,
    /// sent together (they are answered in order, one round trip for both),
    /// or less, as `read` says.
    async fn state_at(&self, unit: &str, path: OwnedObjectPath, read: Read) -> Result<UnitState> {
        type Props = HashMap<String, OwnedValue>;
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
}
