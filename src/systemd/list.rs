//! The units of ours a manager has loaded, for `daemonctl list`: found by
//! the ownership marker ([`super::OWNERSHIP_MARK`] in `Documentation=`),
//! never by their names. `ListUnitsByPatterns` gives the loaded services
//! (instances of a template each on their own), then each one's state is
//! read as `status` reads it.

use super::bus::{bounded, QUERY_GRACE};
use super::{bus_error, SystemdBackend, UnitState};
use crate::backend::{BackendKind, StatusReport};
use crate::error::Result;

/// What `UnitSpec` puts after the daemon's name in `Description=`.
const DESCRIPTION_SUFFIX: &str = " (daemon-lifecycle)";

impl SystemdBackend {
    /// A status report for every loaded service unit of ours (with the
    /// ownership marker), sorted by unit name. The daemon's name comes from
    /// the unit's `Description=` (`NAME (daemon-lifecycle)`).
    pub async fn list_owned(&self) -> Result<Vec<StatusReport>> {
        let what = "ListUnitsByPatterns *.service";
        let mut units = bounded(
            what,
            QUERY_GRACE,
            self.manager.list_units_by_patterns(&[], &["*.service"]),
        )
        .await?
        .map_err(|e| bus_error(what, e))?;
        units.sort_by(|a, b| a.0.cmp(&b.0));
        let mut reports = Vec::new();
        for (unit, description, ..) in units {
            let Some(state) = self.unit_state(&unit).await? else {
                continue;
            };
            if !state.ours() || state.id != unit {
                continue; // not ours, or an alias of another unit
            }
            let name = description
                .strip_suffix(DESCRIPTION_SUFFIX)
                .map(str::to_owned)
                .unwrap_or_else(|| unit.trim_end_matches(".service").to_owned());
            reports.push(report(name, &state));
        }
        Ok(reports)
    }
}

/// The report `status` gives for this state (without the drift check,
/// which needs the config).
fn report(name: String, s: &UnitState) -> StatusReport {
    let status = s.status();
    let mut report = StatusReport::new(name, BackendKind::Systemd, status.clone());
    report.restarts = s.n_restarts;
    report.uptime_secs = crate::backend::uptime_since(&status, s.main_started_usec / 1000);
    if s.active != "inactive" {
        report.last_exit = s.last_exit();
    }
    if status != crate::backend::DaemonStatus::Stopped {
        report.status_text = Some(s.status_text.clone()).filter(|t| !t.is_empty());
    }
    report
}
