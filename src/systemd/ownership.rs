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

/// The `NotOwned` refusal of a unit that is not ours, saying where it came
/// from (transient, or the file it was loaded from) and its state.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DaemonConfig;

    fn spec(adopt: bool) -> ServiceSpec {
        let mut spec =
            ServiceSpec::from_config(&DaemonConfig::new("/bin/echo", "/tmp/x.pid")).unwrap();
        spec.adopt = adopt;
        spec
    }

    fn state(id: &str, load: &str, active: &str, ours: bool) -> UnitState {
        UnitState {
            id: id.into(),
            load: load.into(),
            active: active.into(),
            documentation: if ours {
                vec!["man:x(1)".into(), OWNERSHIP_MARK.into()]
            } else {
                vec!["man:x(1)".into()]
            },
            ..UnitState::default()
        }
    }

    /// `None`: accepted; `Some(words)`: `NotOwned` whose reason has them.
    fn verdict(adopt: bool, s: &UnitState) -> Option<String> {
        match check_owned(&spec(adopt), "t.service", s) {
            Ok(()) => None,
            Err(DaemonError::NotOwned { unit, reason }) => {
                assert_eq!(unit, "t.service");
                Some(reason)
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_our_units_are_acted_on() {
        let alias = state("other.service", "loaded", "active", true);
        let foreign = state("t.service", "loaded", "active", false);
        let table: Vec<(&str, UnitState, bool, Option<&str>)> = vec![
            (
                "ours",
                state("t.service", "loaded", "active", true),
                false,
                None,
            ),
            (
                "no unit: only a name",
                state("t.service", "not-found", "inactive", false),
                false,
                None,
            ),
            ("nothing read", UnitState::default(), false, None),
            (
                "a unit without the mark",
                foreign.clone(),
                false,
                Some("a unit (active) that daemon-lifecycle did not create"),
            ),
            ("adopted", foreign, true, None),
            (
                "an alias, even with the mark",
                alias.clone(),
                false,
                Some("it is an alias of other.service"),
            ),
            ("an adopted alias", alias, true, None),
            (
                "running after its file went away",
                state("t.service", "not-found", "active", false),
                false,
                Some("did not create"),
            ),
            (
                "no Id read: judged by the mark",
                state("", "loaded", "inactive", true),
                false,
                None,
            ),
        ];
        for (case, s, adopt, want) in table {
            match (verdict(adopt, &s), want) {
                (None, None) => {}
                (Some(reason), Some(words)) => {
                    assert!(reason.contains(words), "{case}: {reason}")
                }
                (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_refusal_says_where_the_unit_came_from() {
        let mut s = state("t.service", "loaded", "failed", false);
        let reason = |s: &UnitState| match not_owned("t.service", s) {
            DaemonError::NotOwned { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(&s),
            format!(
                "a unit (failed) that daemon-lifecycle did not create (no Documentation={OWNERSHIP_MARK})"
            )
        );
        s.fragment_path = "/etc/systemd/system/t.service".into();
        assert!(reason(&s).starts_with("a unit loaded from /etc/systemd/system/t.service (failed)"));
        s.transient = true;
        assert!(reason(&s).starts_with("a transient unit (failed)"));
    }
}
