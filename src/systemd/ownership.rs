//! Whether a loaded unit is ours to act on: it carries [`OWNERSHIP_MARK`]
//! and its `Id` is the name we asked for (not an alias), unless the config
//! adopts it. The checks on unit *files* (symlinks, `X-DaemonLifecycle=`)
//! are in `install.rs`.

use super::state::{Read, UnitState};
use super::unit::OWNERSHIP_MARK;
use super::SystemdBackend;
use crate::error::{DaemonError, Result};
use crate::spec::ServiceSpec;

impl SystemdBackend {
    /// The unit's state, refused with `NotOwned` when the unit exists and is
    /// not ours (see [`check_owned`]).
    pub(super) async fn owned_state(
        &self,
        spec: &ServiceSpec,
        unit: &str,
    ) -> Result<Option<UnitState>> {
        self.owned_state_with(spec, unit, Read::All).await
    }

    /// [`Self::owned_state`], reading what `read` says.
    pub(super) async fn owned_state_with(
        &self,
        spec: &ServiceSpec,
        unit: &str,
        read: Read,
    ) -> Result<Option<UnitState>> {
        let state = self.unit_state_with(unit, read).await?;
        if let Some(s) = &state {
            check_owned(spec, unit, s)?;
        }
        Ok(state)
    }
}

/// Refuses a unit that exists and is not ours (no [`OWNERSHIP_MARK`]), or
/// whose loaded `Id` is another name (an alias), unless the config adopts it.
pub(super) fn check_owned(spec: &ServiceSpec, unit: &str, state: &UnitState) -> Result<()> {
    if !state.present() || spec.adopt {
        return Ok(());
    }
    if !state.id.is_empty() && state.id != unit {
        return Err(DaemonError::NotOwned {
            unit: unit.to_owned(),
            reason: format!("it is an alias of {}", state.id),
        });
    }
    if state.ours() {
        return Ok(());
    }
    Err(not_owned(unit, state))
}

pub(super) fn not_owned(unit: &str, state: &UnitState) -> DaemonError {
    let origin = if state.transient {
        "a transient unit".to_owned()
    } else if state.fragment_path.is_empty() {
        "a unit".to_owned()
    } else {
        format!("a unit loaded from {}", state.fragment_path)
    };
    DaemonError::NotOwned {
        unit: unit.to_owned(),
        reason: format!(
            "{origin} ({}) that daemon-lifecycle did not create (no Documentation={OWNERSHIP_MARK})",
            state.active
        ),
    }
}
