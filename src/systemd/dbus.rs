//! The D-Bus calls we make to systemd, and nothing else: a zbus `#[proxy]`
//! for the Manager, each method named as in `org.freedesktop.systemd1(5)`.
//! Unit and service properties are read with one `GetAll` per interface
//! (`org.freedesktop.DBus.Properties`), not property by property; a unit's
//! object path is derived from its name as systemd does ([`unit_object_path`]).

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

    /// Queues a reload job (`ExecReload=`); returns the job's path.
    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

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

    /// The loaded units whose names match the glob `patterns` (any state
    /// when `states` is empty): name, description, load, active, sub,
    /// following, path, job id, job type, job path.
    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;

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

    /// The directories the manager loads unit files from.
    #[zbus(property)]
    fn unit_path(&self) -> zbus::Result<Vec<String>>;

    /// The manager's version string.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

/// The object path of a unit: `/org/freedesktop/systemd1/unit/` and the
/// name with every byte but `A-Z a-z 0-9` (and a leading digit) written
/// `_xx` in hex, as sd-bus' `bus_label_escape` does.
pub(super) fn unit_object_path(unit: &str) -> String {
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
}
