//! Where the manager is and how we talk to it: [`BusTarget`] (the one place
//! a connection is made) and the deadlines every bus call runs under
//! ([`bounded`] and the graces), so a manager that stops answering is an
//! error, not a hang.

use std::path::Path;
use std::time::Duration;

use crate::config::Scope;
use crate::error::{DaemonError, Result};

/// How long we wait for the manager to answer when connecting, and what a
/// job may take beyond the config's own timeouts (systemd enforces those;
/// this only bounds a manager that stopped answering).
pub(super) const BUS_GRACE: Duration = Duration::from_secs(5);

/// The deadline of every query and quick call (GetUnit, LoadUnit, GetAll,
/// Subscribe, ResetFailedUnit, KillUnit, Reload, ...): a live manager answers
/// them at once, so only a frozen or vanished one hits it.
pub(super) const QUERY_GRACE: Duration = BUS_GRACE;

/// The deadline of `Reload`.
pub(super) const RELOAD_GRACE: Duration = Duration::from_secs(30);

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

    pub(super) fn describe(&self) -> String {
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

/// Connects to the systemd manager of `scope` on another machine, as
/// `systemctl -H` does: checks that the host has `systemd-stdio-bridge` and
/// the bus socket (a clear [`DaemonError::Remote`] naming what is missing,
/// instead of a hang), then runs the bridge with the bus path given
/// explicitly (`-p unix:path=…`; `--user` can silently serve the system
/// bus) as a session on the host's ssh master, its stdio a socket pair
/// whose other end is this connection. Bounded like [`BusTarget::connect`];
/// the ssh login itself was bounded by [`crate::host::SshOptions::connect_timeout`].
pub(crate) async fn connect_remote(
    host: &crate::host::SshHost,
    scope: Scope,
) -> Result<zbus::Connection> {
    use crate::error::RemoteProblem;
    let (bridge, socket) = host.bridge_command(scope).await?;
    let stream = host.open_bridge(&bridge, &socket)?;
    let lost = |reason: String| {
        let said = host.bridge_log();
        host.remote(
            RemoteProblem::ConnectionLost,
            if said.is_empty() {
                reason
            } else {
                format!("{reason} ({said})")
            },
        )
    };
    stream
        .set_nonblocking(true)
        .map_err(|e| DaemonError::io("set the bridge socket non-blocking", e))?;
    let stream = tokio::net::UnixStream::from_std(stream)
        .map_err(|e| DaemonError::io("register the bridge socket", e))?;
    match tokio::time::timeout(
        BUS_GRACE,
        zbus::connection::Builder::unix_stream(stream).build(),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(lost(format!(
            "the bus bridge {bridge} -p unix:path={socket} did not give a bus: {e}"
        ))),
        Err(_) => Err(lost(format!(
            "the bus bridge {bridge} did not answer within {}",
            crate::text::duration(BUS_GRACE)
        ))),
    }
}

/// Runs one bus call with a deadline. The outer error is the manager not
/// answering within `bound`, or the connection to it breaking (both
/// `BackendUnavailable`, naming the call); the inner one is the manager's
/// own answer, for the caller to inspect.
pub(super) async fn bounded<T>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_has_its_bus() {
        assert_eq!(BusTarget::for_scope(Scope::System), BusTarget::System);
        assert_eq!(BusTarget::for_scope(Scope::User), BusTarget::Session);
        assert_eq!(
            BusTarget::Address("unix:path=/x".into()).describe(),
            "bus unix:path=/x"
        );
    }

    #[tokio::test]
    async fn a_call_that_does_not_answer_in_time_is_backend_unavailable() {
        let never = std::future::pending::<zbus::Result<()>>();
        match bounded("GetUnit t.service", Duration::from_millis(20), never).await {
            Err(DaemonError::BackendUnavailable { backend, reason }) => {
                assert_eq!(backend, "systemd");
                assert!(
                    reason.contains("did not answer GetUnit t.service within"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_broken_connection_is_backend_unavailable_and_answers_pass_through() {
        let broken = async {
            Err::<(), _>(zbus::Error::InputOutput(std::sync::Arc::new(
                std::io::Error::from(std::io::ErrorKind::BrokenPipe),
            )))
        };
        match bounded("Reload", Duration::from_secs(5), broken).await {
            Err(DaemonError::BackendUnavailable { reason, .. }) => {
                assert!(reason.contains("went away during Reload"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // The manager's own answer, good or bad, is the caller's to read.
        let answer = async { Ok::<_, zbus::Error>(7) };
        assert_eq!(
            bounded("x", Duration::from_secs(5), answer)
                .await
                .unwrap()
                .unwrap(),
            7
        );
        let refused = async { Err::<(), _>(zbus::Error::Failure("no".into())) };
        assert!(matches!(
            bounded("x", Duration::from_secs(5), refused).await,
            Ok(Err(zbus::Error::Failure(_)))
        ));
    }
}
