//! The stop job: `StopUnit` for a unit that is up, its result checked; a
//! unit that is already down, or gone, is stopped.

use super::bus::BUS_GRACE;
use super::state::{Read, UnitState};
use super::SystemdBackend;
use crate::error::{DaemonError, Result};
use crate::spec::ServiceSpec;

impl SystemdBackend {
    pub(super) async fn stop_unit(&self, spec: &ServiceSpec, unit: &str) -> Result<()> {
        let state = self.unit_state_with(unit, Read::Lean).await?;
        self.stop_state(spec, unit, state).await
    }

    /// [`Self::stop_unit`] with the state just read.
    pub(super) async fn stop_state(
        &self,
        spec: &ServiceSpec,
        unit: &str,
        state: Option<UnitState>,
    ) -> Result<()> {
        let Some(state) = state else {
            return Ok(());
        };
        if state.active == "inactive" || state.active == "failed" {
            return Ok(());
        }
        let timeout = spec.shutdown_timeout + BUS_GRACE;
        let result = self
            .run_job(&spec.name, format!("StopUnit {unit}"), timeout, || {
                self.manager.stop_unit(unit, "replace")
            })
            .await;
        match result {
            Ok(r) if r == "done" => Ok(()),
            Ok(r) => Err(DaemonError::StopFailed {
                name: spec.name.clone(),
                pid: state.main_pid,
                reason: format!("systemd stop job of {unit} ended with result '{r}'"),
            }),
            Err(DaemonError::Bus {
                error_name: Some(ref n),
                ..
            }) if n == "org.freedesktop.systemd1.NoSuchUnit" => Ok(()),
            Err(e) => Err(e),
        }
    }
}
