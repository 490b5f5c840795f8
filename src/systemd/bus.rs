//! Where the manager is and how we talk to it: [`BusTarget`] (the one place
//! a connection is made) and the deadlines every bus call runs under
//! ([`bounded`] and the graces), so a manager that stops answering is an
//! error, not a hang.
//!
//! Like `systemctl`, the usual buses of a manager are reached through its
//! private socket when we may ([`private_socket`]): peer to peer, with no
//! bus daemon relaying every message (half the hops, no `Hello`, no
//! `AddMatch`); the bus stays the way when the socket is absent or not the
//! manager's.

use std::path::{Path, PathBuf};
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
///
/// [`BusTarget::System`] (as root) and [`BusTarget::Session`] reach the
/// manager through its private socket when it is there and is the
/// manager's (`/run/systemd/private`, `$XDG_RUNTIME_DIR/systemd/private`),
/// as `systemctl` does: no bus daemon between us, half the hops per call.
/// Otherwise, or with `DAEMON_LIFECYCLE_PRIVATE_SOCKET=0`, the bus.
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

    /// Connects (bounded by a few seconds): to the manager's private socket
    /// when [`private_socket`] names one that answers as the manager, else
    /// to the bus.
    pub(crate) async fn connect(&self) -> Result<zbus::Connection> {
        if let Some((path, owner)) = private_socket(self) {
            match super::private::connect(&path, owner).await {
                Ok(conn) => return Ok(conn),
                Err(why) => {
                    tracing::debug!(path = %path.display(), %why, "private socket not used: connecting to the bus")
                }
            }
        }
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

/// Set to `0` to always connect through the bus, never to the manager's
/// private socket (to compare the two, or where a socket at the private
/// path is not to be used).
pub(super) const PRIVATE_SOCKET_ENV: &str = "DAEMON_LIFECYCLE_PRIVATE_SOCKET";

/// The manager's private socket for `target`, and the UID that must own it
/// and serve it: `/run/systemd/private` (root only, as systemd makes it) for
/// the system bus, `$XDG_RUNTIME_DIR/systemd/private` for the session bus.
/// Only where `target` is that manager's usual bus: a bus address set in the
/// environment to something else means another manager, so no private
/// socket then (nor for an explicit [`BusTarget::Address`]).
pub(super) fn private_socket(target: &BusTarget) -> Option<(PathBuf, u32)> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    private_socket_for(target, nix::unistd::Uid::effective().as_raw(), &|k| {
        std::env::var(k).ok()
    })
}

/// [`private_socket`] for a caller of UID `euid` whose environment `env` reads.
fn private_socket_for(
    target: &BusTarget,
    euid: u32,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(PathBuf, u32)> {
    if env(PRIVATE_SOCKET_ENV).as_deref() == Some("0") {
        return None;
    }
    let address_is = |var: &str, usual: &[String]| match env(var) {
        Some(a) if !a.is_empty() => usual.contains(&a),
        _ => true,
    };
    match target {
        BusTarget::System => {
            let usual = [
                "unix:path=/run/dbus/system_bus_socket".to_owned(),
                "unix:path=/var/run/dbus/system_bus_socket".to_owned(),
            ];
            (euid == 0 && address_is("DBUS_SYSTEM_BUS_ADDRESS", &usual))
                .then(|| (PathBuf::from("/run/systemd/private"), 0))
        }
        BusTarget::Session => {
            let dir = PathBuf::from(env("XDG_RUNTIME_DIR").filter(|d| !d.is_empty())?);
            if !dir.is_absolute() {
                return None;
            }
            let usual = [format!("unix:path={}/bus", dir.display())];
            address_is("DBUS_SESSION_BUS_ADDRESS", &usual)
                .then(|| (dir.join("systemd/private"), euid))
        }
        _ => None,
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

    #[test]
    fn the_private_socket_only_for_the_managers_usual_bus() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let run = "/run/user/1000";
        let private = |owner| Some((PathBuf::from(format!("{run}/systemd/private")), owner));
        let user =
            |e: &dyn Fn(&str) -> Option<String>| private_socket_for(&BusTarget::Session, 1000, e);
        assert_eq!(
            user(&env(&[("XDG_RUNTIME_DIR", "/run/user/1000")])),
            private(1000)
        );
        assert_eq!(
            user(&env(&[
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
                ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1000/bus"),
            ])),
            private(1000)
        );
        // Another bus than XDG_RUNTIME_DIR's: another manager, so the bus.
        assert_eq!(
            user(&env(&[
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
                ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/tmp/other/bus"),
            ])),
            None
        );
        assert_eq!(user(&env(&[("XDG_RUNTIME_DIR", "relative")])), None);
        assert_eq!(user(&env(&[])), None);
        assert_eq!(
            user(&env(&[
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
                ("DAEMON_LIFECYCLE_PRIVATE_SOCKET", "0"),
            ])),
            None
        );
        let system = |euid, e: &dyn Fn(&str) -> Option<String>| {
            private_socket_for(&BusTarget::System, euid, e)
        };
        let root = Some((PathBuf::from("/run/systemd/private"), 0));
        assert_eq!(system(0, &env(&[])), root);
        assert_eq!(
            system(
                0,
                &env(&[(
                    "DBUS_SYSTEM_BUS_ADDRESS",
                    "unix:path=/run/dbus/system_bus_socket"
                )])
            ),
            root
        );
        assert_eq!(system(1000, &env(&[])), None, "root only");
        assert_eq!(
            system(0, &env(&[("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/tmp/b")])),
            None
        );
        let address = BusTarget::Address("unix:path=/run/user/1000/bus".into());
        assert_eq!(
            private_socket_for(&address, 0, &env(&[("XDG_RUNTIME_DIR", "/run/user/1000")])),
            None
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
