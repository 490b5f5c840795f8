//! The job protocol: subscribe to `JobRemoved`, make the call that queues a
//! job, and wait for the `JobRemoved` of that job path (subscribing first, so
//! a job that ends before the call's reply is not missed), all under one
//! deadline.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use zbus::zvariant::OwnedObjectPath;

use super::bus::{bounded, QUERY_GRACE};
use super::errors::bus_error;
use super::SystemdBackend;
use crate::error::{DaemonError, Result};

impl SystemdBackend {
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
        let mut removed = bounded(
            "subscribe to JobRemoved",
            QUERY_GRACE,
            self.manager.receive_job_removed(),
        )
        .await?
        .map_err(|e| bus_error("subscribe to JobRemoved", e))?;
        let job = bounded(&what, timeout, call())
            .await?
            .map_err(|e| bus_error(what.clone(), e))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                if let Ok(args) = signal.args() {
                    if args.job == job {
                        return Some(args.result);
                    }
                }
            }
            None
        };
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
        let mut removed = bounded(
            "subscribe to JobRemoved",
            QUERY_GRACE,
            self.manager.receive_job_removed(),
        )
        .await?
        .map_err(|e| bus_error("subscribe to JobRemoved", e))?;
        let Some(job) = self.unit_state(unit).await?.and_then(|s| s.job) else {
            return Ok(());
        };
        let wait = async {
            while let Some(signal) = removed.next().await {
                if signal.args().is_ok_and(|a| a.job == job) {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(DaemonError::BackendUnavailable {
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
