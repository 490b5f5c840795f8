//! The D-Bus calls we make to systemd, and nothing else: one zbus `#[proxy]`
//! trait per interface, each method named as in `org.freedesktop.systemd1(5)`.

use zbus::proxy;
use zbus::zvariant::{OwnedObjectPath, Value};

/// `org.freedesktop.systemd1.Manager` at `/org/freedesktop/systemd1`.
#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
pub(crate) trait Manager {
    /// Enables the signals we wait on (`JobRemoved`) for this client.
    fn subscribe(&self) -> zbus::Result<()>;

    /// Queues a start job; returns the job's path.
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Queues a stop job; returns the job's path.
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Queues a restart job; returns the job's path.
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Sends a signal to the unit's processes (`whom`: main, control, all).
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;

    /// Clears the failed state (and lets a transient unit be collected).
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    /// The object path of a loaded unit; `NoSuchUnit` when not loaded.
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// Loads a unit from disk if needed and returns its path.
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// Creates and starts a transient unit: `a(sv)` properties and
    /// `a(sa(sv))` auxiliary units (we send none).
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;

    /// Re-reads unit files.
    fn reload(&self) -> zbus::Result<()>;

    /// Enables unit files; returns (carries_install_info, changes).
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;

    /// Disables unit files; returns the changes.
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;

    /// A job finished: `result` is done, canceled, timeout, failed,
    /// dependency, skipped (or newer values).
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;

    /// The manager's version string.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    /// initializing, starting, running, degraded, maintenance, stopping.
    #[zbus(property)]
    fn system_state(&self) -> zbus::Result<String>;
}

/// `org.freedesktop.systemd1.Unit` on a unit's object path.
#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    gen_blocking = false
)]
pub(crate) trait Unit {
    /// active, reloading, inactive, failed, activating, deactivating.
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;

    /// The unit-type specific state (running, exited, auto-restart, …).
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;

    /// loaded, not-found, bad-setting, error, masked.
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;

    /// The unit file it was loaded from (transient units: under /run/systemd/transient).
    #[zbus(property)]
    fn fragment_path(&self) -> zbus::Result<String>;

    /// Whether it was created with StartTransientUnit.
    #[zbus(property)]
    fn transient(&self) -> zbus::Result<bool>;
}

/// `org.freedesktop.systemd1.Service` on a service unit's object path.
#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1",
    gen_blocking = false
)]
pub(crate) trait Service {
    /// The main process, 0 when none.
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;

    /// How the last run ended: success, exit-code, signal, core-dump,
    /// timeout, start-limit-hit, …
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;

    /// `CLD_EXITED` (1), `CLD_KILLED` (2) or `CLD_DUMPED` (3); 0 if none.
    #[zbus(property)]
    fn exec_main_code(&self) -> zbus::Result<i32>;

    /// The exit code or signal number.
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;

    /// Automatic restarts so far.
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;

    /// The last `STATUS=` text the service sent.
    #[zbus(property)]
    fn status_text(&self) -> zbus::Result<String>;

    /// ExecStart as systemd parsed it: (path, argv, ignore_errors, start/stop
    /// timestamps, pid, code, status).
    #[zbus(property)]
    #[allow(clippy::type_complexity)]
    fn exec_start(
        &self,
    ) -> zbus::Result<Vec<(String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32)>>;
}
