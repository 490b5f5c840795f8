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

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::names::OwnedErrorName;

    /// The error of a method call the manager answered with `name`.
    fn method_error(name: &str, message: Option<&str>) -> zbus::Error {
        let call = zbus::Message::method_call("/org/freedesktop/systemd1", "GetUnit")
            .unwrap()
            .build(&())
            .unwrap();
        zbus::Error::MethodError(
            OwnedErrorName::try_from(name).unwrap(),
            message.map(str::to_owned),
            call,
        )
    }

    #[test]
    fn no_such_unit_is_recognised_by_its_name() {
        assert!(is_no_such_unit(&method_error(
            "org.freedesktop.systemd1.NoSuchUnit",
            Some("Unit t.service not loaded.")
        )));
        assert!(!is_no_such_unit(&method_error(
            "org.freedesktop.systemd1.UnitExists",
            None
        )));
        assert!(!is_no_such_unit(&zbus::Error::Failure("x".into())));
    }

    #[test]
    fn access_denials_become_permission_denied() {
        let cases = [
            (
                zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied("no".into()))),
                "org.freedesktop.DBus.Error.AccessDenied",
            ),
            (
                method_error("org.freedesktop.DBus.Error.AccessDenied", Some("denied")),
                "org.freedesktop.DBus.Error.AccessDenied",
            ),
            (
                zbus::Error::FDO(Box::new(
                    zbus::fdo::Error::InteractiveAuthorizationRequired("polkit".into()),
                )),
                "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
            ),
        ];
        for (e, name) in cases {
            match bus_error("StartUnit t.service", e) {
                DaemonError::PermissionDenied { action, source } => {
                    assert_eq!(action, format!("StartUnit t.service ({name})"));
                    assert!(source.is_none());
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_errors_keep_the_remote_name_and_message() {
        match bus_error(
            "StartTransientUnit t.service",
            method_error(
                "org.freedesktop.systemd1.UnitExists",
                Some("Unit t.service was already loaded or has a fragment file."),
            ),
        ) {
            DaemonError::Bus {
                operation,
                error_name,
                message,
            } => {
                assert_eq!(operation, "StartTransientUnit t.service");
                assert_eq!(
                    error_name.as_deref(),
                    Some("org.freedesktop.systemd1.UnitExists")
                );
                assert_eq!(
                    message,
                    "Unit t.service was already loaded or has a fragment file."
                );
            }
            other => panic!("{other:?}"),
        }
        // An error with no remote name (a local zbus failure): none kept,
        // zbus' own words as the message.
        match bus_error("GetUnit t.service", zbus::Error::Failure("broken".into())) {
            DaemonError::Bus {
                error_name,
                message,
                ..
            } => {
                assert_eq!(error_name, None);
                assert!(message.contains("broken"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // An FDO error keeps its name too.
        match bus_error(
            "Get FragmentPath",
            zbus::Error::FDO(Box::new(zbus::fdo::Error::UnknownObject("gone".into()))),
        ) {
            DaemonError::Bus { error_name, .. } => assert_eq!(
                error_name.as_deref(),
                Some("org.freedesktop.DBus.Error.UnknownObject")
            ),
            other => panic!("{other:?}"),
        }
    }
}
