//! The job protocol: subscribe to `JobRemoved`, make the call that queues a
//! job, and wait for the `JobRemoved` of that job path (subscribing first, so
//! a job that ends before the call's reply is not missed), all under one
//! deadline.
//!
//! The signals are read from a match rule of our own ([`SystemdBackend::job_signals`]),
//! not through the proxy's signal stream: that one costs three round trips
//! on the bus for every job (`AddMatch` for `NameOwnerChanged`,
//! `GetNameOwner`, `AddMatch` for the signal), and on the private socket it
//! drops every signal (it asks a bus that is not there who the sender is).
//! On the bus a signal counts only from the owner of
//! `org.freedesktop.systemd1` ([`SystemdBackend::sent_by_manager`]); on the
//! private socket the manager is the only peer.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use zbus::zvariant::OwnedObjectPath;

use super::bus::{bounded, QUERY_GRACE};
use super::errors::bus_error;
use super::SystemdBackend;
use crate::error::{DaemonError, Result};

/// The bus name of the manager.
const MANAGER_NAME: &str = "org.freedesktop.systemd1";

/// How many signals may wait in a job stream before the connection's
/// reader stalls (zbus waits for room): far more than the jobs in flight
/// of a batch, so a wait that is still sending its call never blocks the
/// reader that would deliver the call's reply.
const MAX_QUEUED_SIGNALS: usize = 1 << 14;

impl SystemdBackend {
    /// A stream of the manager's `JobRemoved` signals, from now on. On the
    /// private socket there is no bus to ask: no round trip.
    pub(super) async fn job_signals(&self) -> Result<zbus::MessageStream> {
        let what = "subscribe to JobRemoved";
        let conn = self.manager.inner().connection();
        let rule = (|| {
            let mut rule = zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .path("/org/freedesktop/systemd1")?
                .interface("org.freedesktop.systemd1.Manager")?
                .member("JobRemoved")?;
            if conn.is_bus() {
                // The bus routes us the manager's signals only; a signal sent
                // to us directly by anyone else is caught in `sent_by_manager`.
                rule = rule.sender(MANAGER_NAME)?;
            }
            Ok::<_, zbus::Error>(rule.build())
        })()
        .map_err(|e| bus_error(what, e))?;
        bounded(
            what,
            QUERY_GRACE,
            zbus::MessageStream::for_match_rule(rule, conn, Some(MAX_QUEUED_SIGNALS)),
        )
        .await?
        .map_err(|e| bus_error(what, e))
    }

    /// Whether `msg` comes from the manager: on the bus, from the owner of
    /// its name (asked again when another sender shows up, as after a
    /// `daemon-reexec`); on the private socket, always.
    async fn sent_by_manager(&self, msg: &zbus::Message) -> bool {
        let conn = self.manager.inner().connection();
        if !conn.is_bus() {
            return true;
        }
        let Some(sender) = msg.header().sender().map(|s| s.to_owned()) else {
            return false;
        };
        let known = self.owner.lock().unwrap().clone();
        if known.is_some_and(|o| o.as_str() == sender.as_str()) {
            return true;
        }
        let owner = bounded(
            "GetNameOwner org.freedesktop.systemd1",
            QUERY_GRACE,
            async {
                zbus::fdo::DBusProxy::new(conn)
                    .await?
                    .get_name_owner(
                        zbus::names::WellKnownName::from_static_str_unchecked(MANAGER_NAME).into(),
                    )
                    .await
                    .map_err(zbus::Error::from)
            },
        )
        .await;
        match owner {
            Ok(Ok(owner)) => {
                let ours = owner.as_str() == sender.as_str();
                *self.owner.lock().unwrap() = Some(owner);
                ours
            }
            _ => false,
        }
    }

    /// Reads `stream` until the manager's `JobRemoved` of `job`: its result,
    /// or `None` when the connection ends.
    async fn job_result(
        &self,
        stream: &mut zbus::MessageStream,
        job: &OwnedObjectPath,
    ) -> Option<String> {
        while let Some(msg) = stream.next().await {
            let Ok(msg) = msg else { continue };
            let Ok((_id, path, _unit, result)) = msg
                .body()
                .deserialize::<(u32, OwnedObjectPath, String, String)>()
            else {
                continue;
            };
            if &path == job && self.sent_by_manager(&msg).await {
                return Some(result);
            }
        }
        None
    }

    /// Subscribes to `JobRemoved`, runs `call` (which queues a job), and
    /// waits for that job's result. The call and the wait together are
    /// bounded by `timeout`.
    pub(super) async fn run_job<F, Fut>(
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
        let mut removed = self.job_signals().await?;
        let job = bounded(&what, timeout, call())
            .await?
            .map_err(|e| bus_error(what.clone(), e))?;
        let wait = self.job_result(&mut removed, &job);
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

    /// Waits for the unit's pending job (a stop in progress) to finish, at
    /// most until `deadline`. Subscribes before reading the job, so its end
    /// cannot be missed.
    pub(super) async fn wait_for_pending_job(
        &self,
        name: &str,
        unit: &str,
        deadline: Instant,
        bound: Duration,
    ) -> Result<()> {
        let mut removed = self.job_signals().await?;
        let Some(job) = self.unit_state(unit).await?.and_then(|s| s.job) else {
            return Ok(());
        };
        let wait = self.job_result(&mut removed, &job);
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(DaemonError::BackendUnavailable {
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
}
