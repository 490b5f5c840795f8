//! `reload`: the `ReloadUnit` job (`ExecReload=`, see `unit.rs`), and the
//! rewrite of an installed unit that no longer matches its config before a
//! restart.

use super::bus::BUS_GRACE;
use super::state::UnitState;
use super::unit;
use super::SystemdBackend;
use crate::error::{DaemonError, Result};
use crate::spec::ServiceSpec;

impl SystemdBackend {
    /// Reloads a running unit: `ReloadUnit`, its job waited on like the
    /// others. For a notify daemon the job lasts until its `READY=1` (the
    /// unit's first `ExecReload=` says `RELOADING=1` for it).
    pub(super) async fn reload_unit(&self, spec: &ServiceSpec) -> Result<()> {
        let unit = Self::unit(spec)?;
        let state = self.owned_state(spec, &unit).await?.unwrap_or_default();
        if !matches!(state.active.as_str(), "active" | "reloading") || state.main_pid == 0 {
            return Err(DaemonError::NotRunning {
                name: spec.name.clone(),
                state: state.status().to_string(),
            });
        }
        let timeout = spec.startup_timeout + BUS_GRACE;
        let result = self
            .run_job(&spec.name, format!("ReloadUnit {unit}"), timeout, || {
                self.manager.reload_unit(&unit, "replace")
            })
            .await?;
        if result == "done" {
            return Ok(());
        }
        let after = self.unit_state(&unit).await?.unwrap_or_default();
        if !after.is_up() {
            return Err(DaemonError::ReloadFailed {
                name: spec.name.clone(),
                reason: format!(
                    "the reload job of {unit} ended with result '{result}', and the daemon is {}",
                    after.status()
                ),
            });
        }
        Err(DaemonError::ReloadFailed {
            name: spec.name.clone(),
            reason: format!(
                "the reload job of {unit} ended with result '{result}' (the ExecReload= command failed, \
                 or a notify daemon sent no READY=1 within TimeoutStartSec)"
            ),
        })
    }

    /// Before a restart: an installed unit of ours whose file differs from
    /// what the config renders now is written again and the manager
    /// reloaded (only a regular file of ours at the manager's
    /// `FragmentPath`; anything else is left as it is, with a warning).
    pub(super) async fn rewrite_drifted(
        &self,
        spec: &ServiceSpec,
        state: &UnitState,
    ) -> Result<()> {
        if state.transient || state.load != "loaded" {
            return Ok(());
        }
        let Ok(unit_spec) = self.unit_spec(spec) else {
            return Ok(());
        };
        if self.drift_of(&unit_spec, state).await != Some(true) {
            return Ok(());
        }
        // Read and written where the manager is (this machine, or the
        // remote host over ssh: see files.rs), never through a link.
        let path = self.unit_file_path(state);
        let ours = self
            .read_unit_file(&path)
            .await?
            .is_some_and(|t| unit::text_is_ours(&t));
        let (Some(dir), Some(file)) = (path.parent(), path.file_name().and_then(|f| f.to_str()))
        else {
            return Ok(());
        };
        if !ours || file != unit_spec.unit {
            tracing::warn!(unit = %unit_spec.unit, path = %path.display(), "the unit file differs from the config but is not ours to rewrite: restarting it as it is");
            return Ok(());
        }
        let text = unit_spec.render()?;
        self.write_unit_file(dir, file, &text).await?;
        self.reload().await?;
        tracing::info!(unit = %unit_spec.unit, path = %path.display(), "unit file rewritten from the config before the restart, manager reloaded");
        Ok(())
    }
}
