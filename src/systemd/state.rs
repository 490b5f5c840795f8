//! What we read of a unit and what it means: [`UnitState`] (the Unit and
//! Service properties we use), the reads that fill it (`GetUnit`/`LoadUnit`,
//! then one `GetAll` per interface, or less: [`Read`]), and the decisions
//! made from it alone — unit state → [`DaemonStatus`], the failure reason, the
//! last exit.

use std::collections::HashMap;

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use super::bus::{bounded, QUERY_GRACE};
use super::dbus::unit_object_path;
use super::errors::bus_error;
use super::unit::OWNERSHIP_MARK;
use super::SystemdBackend;
use crate::backend::{DaemonStatus, ExitInfo};
use crate::error::{DaemonError, Result};

/// How much of a unit's state to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// Everything [`UnitState`] holds.
    All,
    /// A start's (or an install's) first look, at a unit that may not be
    /// loaded yet: as `Lean` (running already? which file? ours?); a start
    /// that fails reads `All` to explain.
    Load,
    /// The unit's identity and state and the service's `MainPID`: all a
    /// stop needs, and a start that went well.
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
    /// `TimeoutStartUSec`, to say how long a start that timed out waited.
    pub(super) timeout_start_usec: Option<u64>,
    /// `ExecMainStartTimestamp` (µs since the epoch), for the uptime.
    pub(super) main_started_usec: u64,
    /// `WatchdogTimestamp` (µs since the epoch): the last `WATCHDOG=1`.
    pub(super) watchdog_usec: u64,
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
        self.timeout_start_usec = s
            .get("TimeoutStartUSec")
            .and_then(|v| u64::try_from(v).ok());
        self.main_started_usec = s
            .get("ExecMainStartTimestamp")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0);
        self.watchdog_usec = s
            .get("WatchdogTimestamp")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0);
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
            // TimeoutStartSec ran out (a stop timeout that ended in SIGKILL is
            // `stopped`, see `stopped_by_sigkill`): the fork backend's words.
            ("timeout", _) => match self.timeout_start_usec {
                Some(usec) => {
                    crate::backend::not_ready_reason(std::time::Duration::from_micros(usec))
                }
                None => "not ready within TimeoutStartSec".to_owned(),
            },
            _ if self.start_limit_hit() => "start limit hit".to_owned(),
            ("watchdog", _) => self.watchdog_reason(),
            ("exit-code" | "signal" | "core-dump", Some(exit)) => exit.to_string(),
            (result, Some(exit)) => format!("{result} ({exit})"),
            (result, None) => result.to_owned(),
        })
    }

    /// A watchdog failure in the fork backend's words: `liveness probe
    /// failed: …` when the probe helper said so (its `STATUS=` before it
    /// triggered the watchdog), else `watchdog timeout`.
    fn watchdog_reason(&self) -> String {
        if self.status_text.starts_with(crate::spec::LIVENESS_FAILED) {
            self.status_text.clone()
        } else {
            crate::spec::WATCHDOG_TIMEOUT.to_owned()
        }
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

    /// How often the unit was restarted after exiting on its own, as the
    /// fork backend counts: at the start limit, `NRestarts` also counts the
    /// restart that the limit refused.
    pub(super) fn restarts(&self) -> u32 {
        if self.start_limit_hit() {
            self.n_restarts.saturating_sub(1)
        } else {
            self.n_restarts
        }
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
                    _ if self.result == "watchdog" => {
                        format!("{}; restart pending", self.watchdog_reason())
                    }
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

/// The Service properties we read, one `Get` each. The Unit interface is
/// read with one `GetAll` (a hundred small properties, 3.5 KB); the
/// Service's `GetAll` would be 10 KB of exec lines and sandboxing to build
/// and decode for these ten. All are sent together and answered in order:
/// one round trip. (Measured on systemd 252 against 18 single `Get`s and
/// two `GetAll`s: the fewest messages for what we need is the quickest, the
/// manager's time per message being most of a status.)
const SERVICE_PROPS: &[&str] = &[
    "MainPID",
    "Result",
    "ExecMainCode",
    "ExecMainStatus",
    "NRestarts",
    "StatusText",
    "Restart",
    "TimeoutStartUSec",
    "ExecMainStartTimestamp",
    "WatchdogTimestamp",
];

/// Whether a `Get` failed only because the object has no such property
/// (or interface), not because the manager failed.
fn is_missing_property(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if matches!(
        name.as_str(),
        "org.freedesktop.DBus.Error.UnknownProperty"
            | "org.freedesktop.DBus.Error.UnknownInterface"
            | "org.freedesktop.DBus.Error.InvalidArgs"
    ))
}

impl SystemdBackend {
    /// The unit's state, `None` when there is no unit (not loaded, or only
    /// a name: see [`UnitState::present`]).
    pub(super) async fn unit_state(&self, unit: &str) -> Result<Option<UnitState>> {
        self.unit_state_with(unit, Read::All).await
    }

    /// [`Self::unit_state`], reading what `read` says.
    ///
    /// Read at the unit's object path, derived from its name as systemd
    /// does: no `GetUnit` round trip first. (systemd loads a unit looked up
    /// by path, as `LoadUnit` would; a name with no unit then reads
    /// `not-found`/`inactive`, which is `None` here.)
    pub(super) async fn unit_state_with(
        &self,
        unit: &str,
        read: Read,
    ) -> Result<Option<UnitState>> {
        let state = self.state_at(unit, read).await?;
        Ok(state.present().then_some(state))
    }

    /// The unit's state, loading a unit file not loaded yet (what `LoadUnit`
    /// does; a lookup by object path does the same). A name with no unit
    /// reads `not-found`.
    pub(super) async fn load_state(&self, unit: &str) -> Result<UnitState> {
        self.state_at(unit, Read::Load).await
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

    /// Reads the unit's properties as `read` says: `GetAll` of the Unit
    /// interface and a `Get` per Service property, all sent before the first
    /// answer is awaited (one round trip).
    async fn state_at(&self, unit: &str, read: Read) -> Result<UnitState> {
        type Props = HashMap<String, OwnedValue>;
        const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
        const DEST: &str = "org.freedesktop.systemd1";
        const SERVICE: &str = "org.freedesktop.systemd1.Service";
        let object = unit_object_path(unit);
        let object = object.as_str();
        let conn = self.manager.inner().connection();
        let service_props: &[&str] = match read {
            Read::All => SERVICE_PROPS,
            // Two messages, not ten: the manager handles each in turn, and
            // its time per message is most of a read.
            Read::Load | Read::Lean => &["MainPID"],
        };
        let what = format!("properties of {unit}");
        let went_away = |e: &std::sync::Arc<std::io::Error>| DaemonError::BackendUnavailable {
            backend: "systemd",
            reason: format!("the systemd manager went away during {what} ({e})"),
        };
        let pairs: Vec<(&str, &str)> = service_props.iter().map(|p| (SERVICE, *p)).collect();
        let unit_all = conn.call_method(
            Some(DEST),
            object,
            Some(PROPERTIES),
            "GetAll",
            &("org.freedesktop.systemd1.Unit",),
        );
        let gets = futures_util::future::join_all(
            pairs
                .iter()
                .map(|pair| conn.call_method(Some(DEST), object, Some(PROPERTIES), "Get", pair)),
        );
        let (unit_all, replies) = bounded(&what, QUERY_GRACE, async {
            Ok(futures_util::future::join(unit_all, gets).await)
        })
        .await?
        .map_err(|e: zbus::Error| bus_error(what.clone(), e))?;
        let u: Props = match unit_all {
            Ok(reply) => reply
                .body()
                .deserialize()
                .map_err(|e| bus_error(what.clone(), e))?,
            Err(zbus::Error::InputOutput(e)) => return Err(went_away(&e)),
            Err(e) => return Err(bus_error(format!("GetAll of {unit}"), e)),
        };
        let mut s = Props::new();
        for ((_, prop), reply) in pairs.iter().zip(replies) {
            let reply = match reply {
                Ok(r) => r,
                // A property this manager does not have (an older one): as
                // if empty, as a GetAll would have left it out.
                Err(e) if is_missing_property(&e) => continue,
                Err(zbus::Error::InputOutput(e)) => return Err(went_away(&e)),
                Err(e) => return Err(bus_error(format!("Get {prop} of {unit}"), e)),
            };
            let value: OwnedValue = reply
                .body()
                .deserialize()
                .map_err(|e| bus_error(what.clone(), e))?;
            s.insert((*prop).to_owned(), value);
        }
        let mut state = UnitState::from_unit_props(&u);
        state.add_service_props(&s);
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::{ObjectPath, Value};

    /// A unit as `GetAll` would describe it: `load`/`active`/`sub`, the
    /// service's `Result` and main PID.
    fn unit(load: &str, active: &str, sub: &str, result: &str, main_pid: u32) -> UnitState {
        UnitState {
            id: "t.service".into(),
            load: load.into(),
            active: active.into(),
            sub: sub.into(),
            result: result.into(),
            main_pid,
            ..UnitState::default()
        }
    }

    /// `ExecMainCode`/`ExecMainStatus` (CLD_EXITED = 1, CLD_KILLED = 2,
    /// CLD_DUMPED = 3).
    fn exited(mut s: UnitState, code: i32, status: i32) -> UnitState {
        s.exec_main_code = code;
        s.exec_main_status = status;
        s
    }

    /// `Restart=`, `NRestarts`, `StartLimitBurst`.
    fn restarting(mut s: UnitState, restart: &str, n: u32, burst: u32) -> UnitState {
        s.restart = restart.into();
        s.n_restarts = n;
        s.start_limit_burst = burst;
        s
    }

    fn failed(why: &str) -> DaemonStatus {
        DaemonStatus::Failed(why.to_owned())
    }

    #[test]
    fn unit_state_to_status() {
        use DaemonStatus::{Running, Starting, Stopped};
        let table: Vec<(&str, UnitState, DaemonStatus)> = vec![
            (
                "active/running",
                unit("loaded", "active", "running", "success", 42),
                Running(42),
            ),
            (
                "reloading",
                unit("loaded", "reloading", "reload", "success", 42),
                Running(42),
            ),
            (
                "activating/start (Type=notify before READY=1)",
                unit("loaded", "activating", "start", "success", 42),
                Starting(42),
            ),
            (
                "activating/start-pre: no main process yet",
                unit("loaded", "activating", "start-pre", "success", 0),
                Stopped,
            ),
            (
                "activating/start with no main PID yet",
                unit("loaded", "activating", "start", "success", 0),
                Stopped,
            ),
            (
                "deactivating: still up until it is gone",
                unit("loaded", "deactivating", "stop-sigterm", "success", 42),
                Running(42),
            ),
            (
                "activating/auto-restart: waiting out RestartSec",
                exited(
                    unit("loaded", "activating", "auto-restart", "exit-code", 0),
                    1,
                    3,
                ),
                failed("exited with code 3; restart pending"),
            ),
            (
                "activating/auto-restart, no exit seen",
                unit("loaded", "activating", "auto-restart", "success", 0),
                failed("restart pending"),
            ),
            (
                "failed with exit code 3",
                exited(unit("loaded", "failed", "failed", "exit-code", 0), 1, 3),
                failed("exited with code 3"),
            ),
            (
                "failed with a signal",
                exited(unit("loaded", "failed", "failed", "signal", 0), 2, 15),
                failed("killed by signal 15 (SIGTERM)"),
            ),
            (
                "failed with a core dump",
                exited(unit("loaded", "failed", "failed", "core-dump", 0), 3, 11),
                failed("killed by signal 11 (SIGSEGV)"),
            ),
            (
                "failed, another result with an exit",
                exited(unit("loaded", "failed", "failed", "oom-kill", 0), 2, 9),
                failed("oom-kill (killed by signal 9 (SIGKILL))"),
            ),
            (
                "failed, a result and no exit",
                unit("loaded", "failed", "failed", "resources", 0),
                failed("resources"),
            ),
            (
                "failed with no result",
                unit("loaded", "failed", "failed", "", 0),
                failed("failed"),
            ),
            (
                "start-limit-hit",
                unit("loaded", "failed", "failed", "start-limit-hit", 0),
                failed("start limit hit"),
            ),
            (
                "start limit hit as systemd 252 shows it (Result stays exit-code)",
                restarting(
                    exited(unit("loaded", "failed", "failed", "exit-code", 0), 1, 3),
                    "on-failure",
                    5,
                    5,
                ),
                failed("start limit hit"),
            ),
            (
                "restarts left: the failure itself",
                restarting(
                    exited(unit("loaded", "failed", "failed", "exit-code", 0), 1, 3),
                    "on-failure",
                    2,
                    5,
                ),
                failed("exited with code 3"),
            ),
            (
                "Restart=no never reads as the start limit",
                restarting(
                    exited(unit("loaded", "failed", "failed", "exit-code", 0), 1, 3),
                    "no",
                    5,
                    5,
                ),
                failed("exited with code 3"),
            ),
            (
                "a stop that had to SIGKILL (TimeoutStopSec): stopped",
                exited(
                    unit("loaded", "failed", "failed", "timeout", 0),
                    2,
                    libc::SIGKILL,
                ),
                Stopped,
            ),
            (
                "a start timeout is a failure, in the fork backend's words",
                UnitState {
                    timeout_start_usec: Some(2_000_000),
                    ..unit("loaded", "failed", "failed", "timeout", 0)
                },
                failed("not ready within 2 s"),
            ),
            (
                "a start timeout, TimeoutStartUSec not read",
                unit("loaded", "failed", "failed", "timeout", 0),
                failed("not ready within TimeoutStartSec"),
            ),
            (
                "inactive/dead",
                unit("loaded", "inactive", "dead", "success", 0),
                Stopped,
            ),
            (
                "inactive/dead keeping its last exit",
                exited(unit("loaded", "inactive", "dead", "success", 0), 1, 0),
                Stopped,
            ),
            (
                "not-found",
                unit("not-found", "inactive", "dead", "", 0),
                Stopped,
            ),
            ("nothing read", UnitState::default(), Stopped),
        ];
        for (case, state, want) in table {
            assert_eq!(state.status(), want, "{case}: {state:?}");
        }
    }

    #[test]
    fn last_exit_follows_the_siginfo_code() {
        let s = |code, status| exited(UnitState::default(), code, status).last_exit();
        assert_eq!(s(0, 0), None);
        assert_eq!(s(1, 3), Some(ExitInfo::Code(3)));
        assert_eq!(s(2, 15), Some(ExitInfo::Signal(15)));
        assert_eq!(s(3, 11), Some(ExitInfo::Signal(11)));
        assert_eq!(s(4, 5), None);
    }

    #[test]
    fn up_running_and_present() {
        // (load, active) -> (is_running, is_up, present)
        let table = [
            ("loaded", "active", (true, true, true)),
            ("loaded", "reloading", (true, true, true)),
            ("loaded", "activating", (true, true, true)),
            ("loaded", "deactivating", (false, true, true)),
            ("loaded", "failed", (false, false, true)),
            ("loaded", "inactive", (false, false, true)),
            ("not-found", "inactive", (false, false, false)),
            // Its file removed while it still runs: still a unit.
            ("not-found", "active", (true, true, true)),
            ("", "", (false, false, false)),
        ];
        for (load, active, want) in table {
            let s = unit(load, active, "", "", 1);
            assert_eq!(
                (s.is_running(), s.is_up(), s.present()),
                want,
                "{load}/{active}"
            );
        }
    }

    #[test]
    fn start_failed_names_the_state_and_the_reason() {
        let s = exited(unit("loaded", "failed", "failed", "exit-code", 0), 1, 3);
        match s.start_failed("d", "right after starting, t.service is") {
            DaemonError::StartFailed { name, reason, .. } => {
                assert_eq!(name, "d");
                assert_eq!(
                    reason,
                    "right after starting, t.service is failed: exited with code 3"
                );
            }
            other => panic!("{other:?}"),
        }
        let s = unit("loaded", "inactive", "dead", "success", 0);
        match s.start_failed("d", "t.service is") {
            DaemonError::StartFailed { reason, .. } => assert_eq!(reason, "t.service is inactive"),
            other => panic!("{other:?}"),
        }
    }

    fn owned(v: Value<'_>) -> OwnedValue {
        OwnedValue::try_from(v).unwrap()
    }

    #[test]
    fn properties_fill_the_state() {
        let job = ObjectPath::try_from("/org/freedesktop/systemd1/job/7").unwrap();
        let u: HashMap<String, OwnedValue> = HashMap::from([
            ("Id".to_owned(), owned(Value::from("t.service"))),
            (
                "Documentation".to_owned(),
                owned(Value::from(vec![OWNERSHIP_MARK.to_owned()])),
            ),
            (
                "FragmentPath".to_owned(),
                owned(Value::from("/run/systemd/transient/t.service")),
            ),
            ("Job".to_owned(), owned(Value::from((7u32, job.clone())))),
            ("ActiveState".to_owned(), owned(Value::from("active"))),
            ("SubState".to_owned(), owned(Value::from("running"))),
            ("LoadState".to_owned(), owned(Value::from("loaded"))),
            ("Transient".to_owned(), owned(Value::from(true))),
            ("StartLimitBurst".to_owned(), owned(Value::from(5u32))),
        ]);
        let s: HashMap<String, OwnedValue> = HashMap::from([
            ("MainPID".to_owned(), owned(Value::from(42u32))),
            ("Result".to_owned(), owned(Value::from("success"))),
            ("ExecMainCode".to_owned(), owned(Value::from(1i32))),
            ("ExecMainStatus".to_owned(), owned(Value::from(0i32))),
            ("NRestarts".to_owned(), owned(Value::from(2u32))),
            ("StatusText".to_owned(), owned(Value::from("ready"))),
            ("Restart".to_owned(), owned(Value::from("on-failure"))),
        ]);
        let mut state = UnitState::from_unit_props(&u);
        assert_eq!(state.id, "t.service");
        assert!(state.ours());
        assert_eq!(state.fragment_path, "/run/systemd/transient/t.service");
        assert_eq!(state.job.as_deref(), Some(&job));
        assert_eq!(
            (
                state.active.as_str(),
                state.sub.as_str(),
                state.load.as_str()
            ),
            ("active", "running", "loaded")
        );
        assert!(state.transient);
        assert_eq!(state.start_limit_burst, 5);
        assert_eq!(state.main_pid, 0, "service properties not read yet");
        state.add_service_props(&s);
        assert_eq!(state.main_pid, 42);
        assert_eq!(state.result, "success");
        assert_eq!(state.last_exit(), Some(ExitInfo::Code(0)));
        assert_eq!(state.n_restarts, 2);
        assert_eq!(state.status_text, "ready");
        assert_eq!(state.restart, "on-failure");
        assert_eq!(state.status(), DaemonStatus::Running(42));
    }

    #[test]
    fn no_pending_job_is_job_id_zero_and_missing_properties_are_empty() {
        let u: HashMap<String, OwnedValue> = HashMap::from([(
            "Job".to_owned(),
            owned(Value::from((0u32, ObjectPath::try_from("/").unwrap()))),
        )]);
        let state = UnitState::from_unit_props(&u);
        assert_eq!(state.job, None);
        assert!(!state.ours());
        assert!(!state.transient);
        assert!(!state.present());
        assert_eq!(state.status(), DaemonStatus::Stopped);
    }
}
