//! Persistent units: where unit files go ([`SystemdBackend::default_unit_dir`],
//! a directory the manager loads from), [`SystemdBackend::install`] and
//! [`SystemdBackend::uninstall`], the checks on the file itself (a symlink
//! is an alias; a file without `X-DaemonLifecycle=` is not ours), and drift
//! (the installed file against what the config renders now).

use std::path::{Path, PathBuf};

use super::bus::{bounded, QUERY_GRACE, RELOAD_GRACE};
use super::errors::{bus_error, is_no_such_unit};
use super::ownership::check_owned;
use super::state::{Read, UnitState};
use super::unit::{self, UnitSpec, OWNERSHIP_KEY};
use super::SystemdBackend;
use crate::config::Scope;
use crate::error::{DaemonError, Result};
use crate::spec::ServiceSpec;

impl SystemdBackend {
    /// Refuses a unit directory the manager does not load units from (its
    /// `UnitPath`): a unit written there would never be seen. Compared by
    /// path, under the manager's name for it
    /// ([`SystemdBackend::with_path_seen_as`]), or by identity (the same
    /// directory under another name).
    async fn check_unit_dir(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let unit_path = bounded("Get UnitPath", QUERY_GRACE, self.manager.unit_path())
            .await?
            .map_err(|e| bus_error("Get UnitPath", e))?;
        let trim = |p: &Path| PathBuf::from(p.to_string_lossy().trim_end_matches('/'));
        let mut names = vec![trim(dir)];
        for (ours, managers) in &self.path_aliases {
            if let Ok(rest) = dir.strip_prefix(ours) {
                names.push(trim(&managers.join(rest)));
            }
        }
        // A remote host's directories are compared by path only (their
        // identity is not ours to stat).
        let local = self.remote.is_none();
        let id = |p: &Path| {
            local
                .then(|| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino())))
                .flatten()
        };
        let dir_id = id(dir);
        let loaded = unit_path.iter().any(|entry| {
            let entry = Path::new(entry);
            names.contains(&trim(entry)) || (dir_id.is_some() && id(entry) == dir_id)
        });
        if loaded {
            return Ok(());
        }
        Err(DaemonError::invalid(
            "unit_dir",
            format!(
                "{} is not a directory the systemd manager loads units from (its UnitPath: {}); nothing was written",
                dir.display(),
                unit_path.join(", ")
            ),
        ))
    }

    /// Where persistent units of `scope` go by default:
    /// `/etc/systemd/system`, or `$XDG_CONFIG_HOME/systemd/user`
    /// (`~/.config/systemd/user`).
    pub fn default_unit_dir(scope: Scope) -> Result<PathBuf> {
        match scope {
            Scope::System => Ok(PathBuf::from("/etc/systemd/system")),
            Scope::User => {
                let config = match std::env::var_os("XDG_CONFIG_HOME") {
                    Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
                    _ => match std::env::var_os("HOME") {
                        Some(h) if Path::new(&h).is_absolute() => PathBuf::from(h).join(".config"),
                        _ => {
                            return Err(DaemonError::invalid(
                                "scope",
                                "neither XDG_CONFIG_HOME nor HOME is set: pass a unit directory",
                            ))
                        }
                    },
                };
                Ok(config.join("systemd").join("user"))
            }
        }
    }

    /// Writes the persistent unit into `unit_dir` (default:
    /// [`SystemdBackend::default_unit_dir`]) atomically, reloads the manager
    /// only when the content changed, and enables it when asked. Returns
    /// whether the file changed.
    pub async fn install(
        &self,
        spec: &ServiceSpec,
        unit_dir: Option<&Path>,
        enable: bool,
    ) -> Result<bool> {
        self.install_from(spec, None, unit_dir, enable).await
    }

    /// [`SystemdBackend::install`], naming the config file `source` in the
    /// unit file's header comment (as `daemonctl install` does).
    pub async fn install_from(
        &self,
        spec: &ServiceSpec,
        source: Option<&str>,
        unit_dir: Option<&Path>,
        enable: bool,
    ) -> Result<bool> {
        if spec.instance.is_some() {
            // The file is the template; its instances need no file of their own.
            return Err(DaemonError::invalid(
                "instance",
                "install the template (without an instance): every instance starts from its NAME@.service",
            ));
        }
        if enable && spec.is_template() {
            return Err(DaemonError::invalid(
                "instance",
                "a template is not enabled itself: install it, then enable an instance (systemctl enable NAME@INSTANCE.service)",
            ));
        }
        self.check_host(spec).await?;
        let mut unit_spec = self.unit_spec(spec)?;
        self.check_probe_helper(&unit_spec).await?;
        unit_spec.source = source.map(str::to_owned);
        let text = unit_spec.render()?;
        let dir = self.unit_dir_or_default(unit_dir).await?;
        self.check_unit_dir(&dir).await?;
        let path = dir.join(&unit_spec.unit);
        self.refuse_alias_link(spec, &unit_spec.unit, &path).await?;
        let existing = self.read_unit_file(&path).await?;
        match &existing {
            // A file we wrote: whatever the manager loaded under that name
            // came from it (or is the same unit name, not yet reloaded).
            Some(old) if unit::text_is_ours(old) => {}
            Some(_) if !spec.adopt => {
                return Err(DaemonError::NotOwned {
                    unit: unit_spec.unit.clone(),
                    reason: format!(
                        "{} was not written by daemon-lifecycle (no {OWNERSHIP_KEY}= in [Unit])",
                        path.display()
                    ),
                })
            }
            // A template cannot be loaded itself (only its instances), so
            // only its file is checked.
            _ if unit_spec.template => {}
            _ => {
                // A unit of that name loaded from elsewhere (a vendor or
                // hand-written unit, an alias): ours would shadow it.
                let state = self.load_state(&unit_spec.unit).await?;
                check_owned(spec, &unit_spec.unit, &state)?;
            }
        }
        let changed = existing.as_deref() != Some(text.as_str());
        if changed {
            self.write_unit_file(&dir, &unit_spec.unit, &text).await?;
            self.reload().await?;
            tracing::info!(unit = %unit_spec.unit, path = %path.display(), "unit file written, manager reloaded");
        } else {
            tracing::info!(unit = %unit_spec.unit, path = %path.display(), "unit file unchanged");
        }
        if enable {
            // By name, not path: the unit directory is one the manager loads
            // from, and the manager may see it under another path (a
            // container or namespace).
            let what = format!("EnableUnitFiles {}", unit_spec.unit);
            let enabled = match bounded(
                &what,
                QUERY_GRACE,
                self.manager
                    .enable_unit_files(&[unit_spec.unit.as_str()], false, true),
            )
            .await
            {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(bus_error(what.clone(), e)),
                Err(e) => Err(e),
            };
            let (_, changes) = match enabled {
                Ok(r) => r,
                Err(e) => {
                    // Leave nothing written: the old file back, or none.
                    if changed {
                        let undo = match &existing {
                            Some(old) => self.write_unit_file(&dir, &unit_spec.unit, old).await,
                            None => self.remove_unit_file(&path).await,
                        };
                        if let Err(undo) = undo {
                            tracing::warn!(path = %path.display(), %undo, "cannot undo the unit file write");
                        }
                        let _ = self.reload().await;
                    }
                    return Err(e);
                }
            };
            tracing::info!(unit = %unit_spec.unit, changes = changes.len(), "enabled");
            self.reload().await?;
        }
        Ok(changed)
    }

    /// Disables and removes the persistent unit and reloads the manager; a
    /// running unit is stopped first. Returns whether there was one to
    /// remove: nothing in `unit_dir` is `Ok(false)`, unless the manager
    /// loads a unit of that name from another directory (a wrong
    /// `unit_dir`), which is refused naming it.
    pub async fn uninstall(&self, spec: &ServiceSpec, unit_dir: Option<&Path>) -> Result<bool> {
        let unit_spec = self.unit_spec(spec)?;
        let dir = self.unit_dir_or_default(unit_dir).await?;
        let path = dir.join(&unit_spec.unit);
        self.refuse_alias_link(spec, &unit_spec.unit, &path).await?;
        let existing = match self.read_unit_file(&path).await? {
            Some(text) => text,
            None if unit_spec.template => return Ok(false),
            None => {
                let state = self.load_state(&unit_spec.unit).await?;
                if state.load == "loaded" && !state.transient && !state.fragment_path.is_empty() {
                    return Err(DaemonError::invalid(
                        "unit_dir",
                        format!(
                            "nothing is installed at {}, but the manager loads {} from {}: pass the directory it is in",
                            path.display(),
                            unit_spec.unit,
                            state.fragment_path
                        ),
                    ));
                }
                return Ok(false);
            }
        };
        if !spec.adopt && !unit::text_is_ours(&existing) {
            return Err(DaemonError::NotOwned {
                unit: unit_spec.unit.clone(),
                reason: format!(
                    "{} was not written by daemon-lifecycle (no {OWNERSHIP_KEY}= in [Unit])",
                    path.display()
                ),
            });
        }
        if unit_spec.template {
            // Its running instances go with it (each checked as ours).
            for instance in self.loaded_instances(&unit_spec.unit).await? {
                match self.owned_state_with(spec, &instance, Read::Lean).await {
                    Ok(state) => self.stop_state(spec, &instance, state).await?,
                    // Someone's transient unit of that name: not ours to stop.
                    Err(DaemonError::NotOwned { .. }) => {
                        tracing::warn!(unit = %instance, "not ours: left running");
                    }
                    Err(e) => return Err(e),
                }
            }
        } else {
            // The unit the manager has under that name must be ours too (it
            // may come from another directory, or be someone's transient unit).
            let state = self
                .owned_state_with(spec, &unit_spec.unit, Read::Lean)
                .await?;
            self.stop_state(spec, &unit_spec.unit, state).await?;
        }
        let what = format!("DisableUnitFiles {}", unit_spec.unit);
        match bounded(
            &what,
            QUERY_GRACE,
            self.manager
                .disable_unit_files(&[unit_spec.unit.as_str()], false),
        )
        .await?
        {
            Ok(_) => {}
            Err(e) if is_no_such_unit(&e) => {}
            Err(e) => return Err(bus_error(what, e)),
        }
        // The stop and the disable took a while: the file must still be the
        // one we checked (ours, not a link) when it is removed.
        self.refuse_alias_link(spec, &unit_spec.unit, &path).await?;
        match self.read_unit_file(&path).await? {
            Some(now) if !spec.adopt && !unit::text_is_ours(&now) => {
                return Err(DaemonError::NotOwned {
                    unit: unit_spec.unit.clone(),
                    reason: format!(
                        "{} was replaced while the unit stopped: it is no longer ours",
                        path.display()
                    ),
                })
            }
            Some(_) => self.remove_unit_file(&path).await?,
            None => {}
        }
        self.reload().await?;
        let _ = self.reset_failed(&unit_spec.unit).await;
        Ok(true)
    }

    /// The loaded instances of the template `NAME@.service`.
    async fn loaded_instances(&self, template: &str) -> Result<Vec<String>> {
        // fnmatch: the `\` of an escaped name must not escape the next byte.
        let prefix = template.strip_suffix("@.service").unwrap_or(template);
        let pattern = format!("{}@*.service", prefix.replace('\\', "\\\\"));
        let what = format!("ListUnitsByPatterns {pattern}");
        let units = bounded(
            &what,
            QUERY_GRACE,
            self.manager
                .list_units_by_patterns(&[], &[pattern.as_str()]),
        )
        .await?
        .map_err(|e| bus_error(what, e))?;
        Ok(units.into_iter().map(|u| u.0).collect())
    }

    /// `Reload` (daemon-reload), bounded: a reload re-reads every unit and
    /// takes seconds on a big host, so it gets more than a query.
    pub(super) async fn reload(&self) -> Result<()> {
        bounded("Reload", RELOAD_GRACE, self.manager.reload())
            .await?
            .map_err(|e| bus_error("Reload", e))
    }
}

/// A unit file that is a symlink is an alias (or a linked unit) of another
/// unit: writing or removing it would act on that one. Refused unless
/// adopted.
pub(super) fn refuse_alias_link(spec: &ServiceSpec, unit: &str, path: &Path) -> Result<()> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link || spec.adopt {
        return Ok(());
    }
    let target = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    Err(DaemonError::NotOwned {
        unit: unit.to_owned(),
        reason: format!(
            "{} is a symlink to {target} (an alias of another unit)",
            path.display()
        ),
    })
}

/// An installed unit file as text (`None`: nothing there), read without
/// following a link; bytes that are not UTF-8 are kept lossily, so a foreign
/// file still reads as not ours rather than as absent.
pub(super) fn read_unit_file(path: &Path) -> Result<Option<String>> {
    match crate::fsutil::read_regular(path, 1 << 20) {
        Ok(found) => Ok(found.map(|(bytes, _)| String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) => Err(DaemonError::io(format!("read {}", path.display()), e)),
    }
}

/// Whether the installed unit file differs from what `spec` renders now.
/// `None`: not a persistent unit, or its file cannot be read here.
/// `file` is the unit's `FragmentPath`, as we see it.
/// An instance started from an installed template is not compared: the
/// template's text holds `%I` where the instance's rendering holds the name.
pub(super) fn drift(unit_spec: &UnitSpec, state: &UnitState, file: &Path) -> Option<bool> {
    if !may_drift(unit_spec, state) {
        return None;
    }
    // The path is the manager's answer: read without following links,
    // only a regular file, bounded.
    let installed = read_unit_file(file).ok()??;
    differs(unit_spec, &installed)
}

/// Whether a unit in `state` has an installed file to compare at all.
pub(super) fn may_drift(unit_spec: &UnitSpec, state: &UnitState) -> bool {
    !(state.transient
        || state.load != "loaded"
        || state.fragment_path.is_empty()
        || (unit_spec.unit.contains('@') && !unit_spec.template))
}

/// Whether the installed text differs from what `unit_spec` renders.
pub(super) fn differs(unit_spec: &UnitSpec, installed: &str) -> Option<bool> {
    // Comments (the header names the generator's version and the config
    // file) are not the unit.
    let directives = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    Some(directives(&unit_spec.render().ok()?) != directives(installed))
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

    #[test]
    fn a_unit_file_that_is_a_symlink_is_an_alias() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.service");
        std::fs::write(&real, "[Unit]\n").unwrap();
        let link = dir.path().join("t.service");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        match refuse_alias_link(&spec(false), "t.service", &link) {
            Err(DaemonError::NotOwned { unit, reason }) => {
                assert_eq!(unit, "t.service");
                assert!(reason.contains("is a symlink to"), "{reason}");
                assert!(reason.contains("real.service"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(refuse_alias_link(&spec(true), "t.service", &link).is_ok());
        assert!(refuse_alias_link(&spec(false), "real.service", &real).is_ok());
        let none = dir.path().join("none.service");
        assert!(refuse_alias_link(&spec(false), "none.service", &none).is_ok());
    }

    #[test]
    fn unit_files_are_read_without_following_links_and_lossily() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.service");
        assert_eq!(read_unit_file(&path).unwrap(), None);
        std::fs::write(&path, b"[Unit]\nDescription=\xff\n").unwrap();
        assert_eq!(
            read_unit_file(&path).unwrap().as_deref(),
            Some("[Unit]\nDescription=\u{fffd}\n")
        );
        let link = dir.path().join("l.service");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(read_unit_file(&link), Err(DaemonError::Io { .. })));
    }

    #[test]
    fn drift_compares_the_installed_file_with_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.service");
        let unit_spec = UnitSpec::from_spec(&spec(false), Scope::User).unwrap();
        let rendered = unit_spec.render().unwrap();
        let installed = UnitState {
            load: "loaded".into(),
            fragment_path: file.display().to_string(),
            ..UnitState::default()
        };
        // Cannot be read here: unknown.
        assert_eq!(drift(&unit_spec, &installed, &file), None);
        std::fs::write(&file, &rendered).unwrap();
        assert_eq!(drift(&unit_spec, &installed, &file), Some(false));
        // A comment (another version's or config's header) is not drift.
        std::fs::write(&file, format!("# from elsewhere\n{rendered}")).unwrap();
        assert_eq!(drift(&unit_spec, &installed, &file), Some(false));
        std::fs::write(&file, format!("{rendered}Nice=5\n")).unwrap();
        assert_eq!(drift(&unit_spec, &installed, &file), Some(true));
        // Not a persistent unit: no drift to speak of.
        let transient = UnitState {
            transient: true,
            ..installed.clone()
        };
        assert_eq!(drift(&unit_spec, &transient, &file), None);
        let not_loaded = UnitState {
            load: "not-found".into(),
            ..installed.clone()
        };
        assert_eq!(drift(&unit_spec, &not_loaded, &file), None);
        let no_fragment = UnitState {
            fragment_path: String::new(),
            ..installed
        };
        assert_eq!(drift(&unit_spec, &no_fragment, &file), None);
    }
}
