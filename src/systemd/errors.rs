//! D-Bus errors in our words: a failed call becomes a [`DaemonError`] that
//! keeps the remote error name (`Bus { error_name }`), access denials become
//! `PermissionDenied`, and `NoSuchUnit` is recognised where "not loaded" is
//! an answer rather than a failure.

use crate::error::DaemonError;

/// Whether a call failed because the unit is not loaded.
pub(super) fn is_no_such_unit(e: &zbus::Error) -> bool {
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
pub(super) fn bus_error(operation: impl Into<String>, e: zbus::Error) -> DaemonError {
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
