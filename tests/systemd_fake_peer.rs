//! Fast edge cases of the systemd backend against a fake systemd: a zbus
//! peer over a socket pair that answers like the manager but lets a test
//! pick what real systemd rarely does — job results other than `done`,
//! `JobRemoved` arriving before the method reply, access denied. The real
//! behaviour is proven against a real systemd in the other `systemd_*`
//! tests; this only adds the corners.
mod support;

use std::sync::{Arc, Mutex};

use daemon_lifecycle::{DaemonConfig, DaemonError, DaemonManager, Scope, SystemdBackend};
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue};

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum SystemdError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
}

/// What the fake does on StartTransientUnit.
#[derive(Clone)]
enum OnStart {
    /// Emit JobRemoved with this result *before* replying.
    JobResult(&'static str),
    /// Refuse as polkit would.
    Deny,
    /// Hang up on reading the unit's state (the manager goes away mid-call).
    VanishOnStatus,
}

struct FakeManager {
    on_start: OnStart,
    calls: Arc<Mutex<Vec<String>>>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeManager {
    async fn subscribe(&self) {}

    async fn get_unit(&self, name: &str) -> Result<OwnedObjectPath, SystemdError> {
        Err(SystemdError::NoSuchUnit(format!("Unit {name} not loaded.")))
    }

    async fn load_unit(&self, _name: &str) -> OwnedObjectPath {
        ObjectPath::try_from(FAKE_UNIT_PATH).unwrap().into()
    }

    async fn start_transient_unit(
        &self,
        name: &str,
        _mode: &str,
        properties: Vec<(String, OwnedValue)>,
        _aux: Vec<(String, Vec<(String, OwnedValue)>)>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        self.calls.lock().unwrap().push(format!(
            "StartTransientUnit {name} {:?}",
            properties.iter().map(|p| p.0.as_str()).collect::<Vec<_>>()
        ));
        let job = ObjectPath::try_from("/org/freedesktop/systemd1/job/42").unwrap();
        match self.on_start {
            OnStart::JobResult(result) => {
                // The job is over before the caller even has its path: a
                // client that subscribed after the call would wait forever.
                Self::job_removed(&emitter, 42, job.clone(), name, result).await?;
                Ok(job.into())
            }
            OnStart::Deny => Err(zbus::fdo::Error::AccessDenied(
                "Interactive authentication required.".into(),
            )),
            OnStart::VanishOnStatus => unreachable!("status only"),
        }
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;

    #[zbus(property)]
    async fn version(&self) -> String {
        "252-fake".into()
    }
}

/// The unit object of `fake-daemon.service` (at the path derived from its
/// name, where the backend reads it): not installed.
struct FakeUnit {
    on_start: OnStart,
}

/// `/org/freedesktop/systemd1/unit/` and `fake-daemon.service` escaped.
const FAKE_UNIT_PATH: &str = "/org/freedesktop/systemd1/unit/fake_2ddaemon_2eservice";

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl FakeUnit {
    #[zbus(property)]
    async fn load_state(&self) -> String {
        "not-found".into()
    }
    #[zbus(property)]
    async fn active_state(&self, #[zbus(connection)] conn: &zbus::Connection) -> String {
        if let OnStart::VanishOnStatus = self.on_start {
            // Close the socket under the pending call, never reply.
            let conn = conn.clone();
            tokio::spawn(async move {
                let _ = conn.close().await;
            });
            std::future::pending::<()>().await;
        }
        "inactive".into()
    }
    #[zbus(property)]
    async fn sub_state(&self) -> String {
        "dead".into()
    }
    #[zbus(property)]
    async fn transient(&self) -> bool {
        false
    }
}

struct FakeService;

#[zbus::interface(name = "org.freedesktop.systemd1.Service")]
impl FakeService {
    #[zbus(property, name = "MainPID")]
    async fn main_pid(&self) -> u32 {
        0
    }
}

/// A backend connected to a fake manager, and the calls it received.
async fn fake(on_start: OnStart) -> (SystemdBackend, Arc<Mutex<Vec<String>>>, zbus::Connection) {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let guid = zbus::Guid::generate();
    let server = zbus::connection::Builder::unix_stream(a)
        .server(guid)
        .unwrap()
        .p2p()
        .serve_at(
            "/org/freedesktop/systemd1",
            FakeManager {
                on_start: on_start.clone(),
                calls: calls.clone(),
            },
        )
        .unwrap()
        .serve_at(FAKE_UNIT_PATH, FakeUnit { on_start })
        .unwrap()
        .serve_at(FAKE_UNIT_PATH, FakeService)
        .unwrap()
        .build();
    let client = zbus::connection::Builder::unix_stream(b).p2p().build();
    let (server, client) = tokio::join!(server, client);
    let backend = SystemdBackend::from_connection(client.unwrap(), Scope::User)
        .await
        .unwrap();
    (backend, calls, server.unwrap())
}

fn config() -> DaemonConfig {
    DaemonConfig::new("/bin/sleep", "/nonexistent/unused.pid")
        .with_name("fake-daemon")
        .with_args(["1000"])
}

#[tokio::test]
async fn job_results_other_than_done_are_typed_errors_naming_the_result() {
    for result in ["failed", "canceled", "dependency", "skipped", "invalid"] {
        let (backend, calls, _server) = fake(OnStart::JobResult(result)).await;
        let m = DaemonManager::with_backend(config(), Arc::new(backend));
        let err = support::within(10, m.start()).await.unwrap_err();
        match &err {
            DaemonError::StartFailed { reason, .. } => {
                assert!(
                    reason.contains(&format!("'{result}'")),
                    "{result}: {reason}"
                )
            }
            other => panic!("{result}: expected StartFailed, got {other:?}"),
        }
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert!(
            calls[0].starts_with("StartTransientUnit fake-daemon.service"),
            "{calls:?}"
        );
        assert!(
            // ExecStart, never ExecStartEx (systemd 252 cannot read it back
            // after a reload); Documentation carries the ownership marker.
            calls[0].contains("\"ExecStart\"")
                && !calls[0].contains("ExecStartEx")
                && calls[0].contains("Documentation")
                && calls[0].contains("KillMode"),
            "{calls:?}"
        );
    }
}

#[tokio::test]
async fn a_job_timeout_is_a_timeout() {
    let (backend, _, _server) = fake(OnStart::JobResult("timeout")).await;
    let m = DaemonManager::with_backend(config(), Arc::new(backend));
    let err = support::within(10, m.start()).await.unwrap_err();
    assert!(
        matches!(err, DaemonError::Timeout { ref name, .. } if name == "fake-daemon"),
        "{err:?}"
    );
}

#[tokio::test]
async fn access_denied_is_permission_denied_naming_the_action() {
    let (backend, _, _server) = fake(OnStart::Deny).await;
    let m = DaemonManager::with_backend(config(), Arc::new(backend));
    let err = support::within(10, m.start()).await.unwrap_err();
    match err {
        DaemonError::PermissionDenied { action, .. } => {
            assert!(
                action.contains("StartTransientUnit fake-daemon.service"),
                "{action}"
            );
            assert!(
                action.contains("org.freedesktop.DBus.Error.AccessDenied"),
                "{action}"
            );
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

/// Issue 8: "I/O error: failed to read from socket" said nothing about
/// what happened; the manager vanishing mid-call names the call.
#[tokio::test]
async fn a_manager_that_goes_away_mid_call_is_named() {
    let (backend, _, _server) = fake(OnStart::VanishOnStatus).await;
    let m = DaemonManager::with_backend(config(), Arc::new(backend));
    let err = support::within(10, m.status()).await.unwrap_err();
    match err {
        DaemonError::BackendUnavailable { reason, .. } => assert!(
            reason.contains("went away during properties of fake-daemon.service"),
            "{reason}"
        ),
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
}
