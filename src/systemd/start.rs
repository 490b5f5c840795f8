//! The start sequence: wait out a stop in progress, return a unit already
//! running, start the installed unit or a transient one, confirm the state
//! the job left (and the readiness probe, when the config has one).

use std::time::Duration;

use tokio::time::Instant;

use super::bus::BUS_GRACE;
use super::ownership::check_owned;
use super::state::Read;
use super::SystemdBackend;
use crate::config::Readiness;
use crate::error::{DaemonError, Result};
use crate::readiness::{self, ProbeError};
use crate::spec::ServiceSpec;

impl SystemdBackend {
    pub(super) async fn start_unit(&self, spec: &ServiceSpec) -> Result<u32> {
        let unit_spec = self.unit_spec(spec)?;
        self.check_probe_helper(&unit_spec).await?;
        let unit = unit_spec.unit.clone();
        let name = spec.name.clone();
        // A start during a stop waits for the stop, then starts: a
        // deactivating unit's PID is about to be gone.
        let stop_bound = spec.shutdown_timeout + BUS_GRACE;
        let stop_deadline = Instant::now() + stop_bound;
        // One look answers three questions: running already? installed as a
        // unit file? a leftover transient unit holding the name? (LoadUnit
        // also loads a unit file that is not loaded yet.)
        let before = loop {
            let before = self.load_state(&unit).await?;
            check_owned(spec, &unit, &before)?;
            if before.active != "deactivating" {
                break before;
            }
            tracing::info!(%unit, "stopping: waiting for the stop job before starting");
            self.wait_for_pending_job(&name, &unit, stop_deadline, stop_bound)
                .await?;
            if Instant::now() >= stop_deadline {
                return Err(DaemonError::Timeout {
                    name,
                    operation: "waiting for the pending stop before starting",
                    after: stop_bound,
                });
            }
            // The stop may leave the job list before the state settles.
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if before.is_running() && before.main_pid != 0 {
            tracing::info!(%unit, pid = before.main_pid, "already running");
            if !before.transient {
                self.warn_drift(&unit_spec, &before).await;
            }
            return Ok(before.main_pid);
        }
        let job_timeout = spec.startup_timeout + BUS_GRACE;
        let result = if before.load == "loaded" && !before.transient {
            self.warn_drift(&unit_spec, &before).await;
            if before.active == "failed" {
                // As for a transient unit: a failed unit (start limit hit
                // included) is reset, then started.
                self.reset_failed(&unit).await?;
            }
            self.run_job(&name, format!("StartUnit {unit}"), job_timeout, || {
                self.manager.start_unit(&unit, "replace")
            })
            .await?
        } else {
            self.start_transient(&name, &unit_spec, job_timeout, before.transient)
                .await?
        };
        // A start that went well shows in the Unit interface and MainPID;
        // the rest of the service's state is read to explain a failure.
        let mut state = self
            .unit_state_with(&unit, Read::Lean)
            .await?
            .unwrap_or_default();
        if result != "done" || !state.is_up() || state.main_pid == 0 {
            state = self.unit_state(&unit).await?.unwrap_or_default();
        }
        if result != "done" && (result == "timeout" || state.result == "timeout") {
            // Not ready within TimeoutStartSec: systemd stopped it already.
            return Err(DaemonError::Timeout {
                name,
                operation: "readiness (systemd TimeoutStartSec)",
                after: spec.startup_timeout,
            });
        }
        if result != "done" || !state.is_up() {
            return Err(state.start_failed(
                &name,
                &format!("systemd start job of {unit} ended with result '{result}'; unit is"),
            ));
        }
        if let Some(probe) = spec.probe() {
            if let Err(e) = self
                .probe_ready(spec, &unit, probe, spec.startup_timeout)
                .await
            {
                if matches!(e, DaemonError::Timeout { .. }) {
                    // Not ready in time: nothing is left running (as on the
                    // fork backend).
                    let _ = self.stop_unit(spec, &unit).await;
                }
                return Err(e);
            }
            state = self.unit_state(&unit).await?.unwrap_or_default();
        }
        if !state.is_up() || state.main_pid == 0 {
            return Err(state.start_failed(&name, &format!("right after starting, {unit} is")));
        }
        Ok(state.main_pid)
    }

    /// Runs the shared probe (crate::readiness) until ready; between
    /// attempts, systemd says whether the unit is still up.
    pub(super) async fn probe_ready(
        &self,
        spec: &ServiceSpec,
        unit: &str,
        probe: &Readiness,
        timeout: Duration,
    ) -> Result<()> {
        let still_up = || async {
            match self.unit_state(unit).await {
                Ok(state) => state.is_some_and(|s| s.is_up()),
                // A bus hiccup is not a death: keep probing until the deadline.
                Err(e) => {
                    tracing::debug!(%unit, %e, "unit state unknown during readiness probe");
                    true
                }
            }
        };
        let deadline = Instant::now() + timeout;
        // A remote daemon's `127.0.0.1` is the host's: its probes run there.
        let outcome = match &self.remote {
            Some(host) => {
                readiness::wait_until_ready_with(probe, deadline, still_up, |p, budget| {
                    host.probe_once(p, budget)
                })
                .await
            }
            None => readiness::wait_until_ready(probe, deadline, still_up).await,
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(ProbeError::Timeout { last }) => {
                tracing::info!(%unit, last = %last.as_deref().unwrap_or("no attempt finished"), "not ready in time");
                Err(DaemonError::Timeout {
                    name: spec.name.clone(),
                    operation: "readiness probe",
                    after: timeout,
                })
            }
            Err(ProbeError::DaemonGone | ProbeError::NotAProbe) => {
                let state = self.unit_state(unit).await?.unwrap_or_default();
                Err(state.start_failed(&spec.name, &format!("before it became ready, {unit} is")))
            }
        }
    }
}
