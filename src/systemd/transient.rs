//! Transient units: `StartTransientUnit` with the properties of the
//! [`UnitSpec`] (retrying when the name is taken for a moment), and the
//! rewrite that keeps systemd's own file of the unit reload-safe.

use std::path::Path;
use std::time::Duration;

use super::ownership::not_owned;
use super::unit::{UnitSpec, OWNERSHIP_MARK};
use super::SystemdBackend;
use crate::error::{DaemonError, Result};

/// The first line systemd writes into a transient unit's file.
const TRANSIENT_HEADER: &str =
    "# This is a transient unit file, created programmatically via the systemd API. Do not edit.";

impl SystemdBackend {
    /// `StartTransientUnit`, after clearing a failed unit of the same name.
    /// `leftover`: a transient unit of this name is still loaded (failed, or
    /// not collected yet) and must be reset first.
    pub(super) async fn start_transient(
        &self,
        name: &str,
        unit_spec: &UnitSpec,
        timeout: Duration,
        leftover: bool,
    ) -> Result<String> {
        let unit = unit_spec.unit.as_str();
        if leftover {
            // A failed (or not yet collected) unit holds the name.
            self.reset_failed(unit).await?;
        }
        let owned = unit_spec.transient_properties();
        let props: Vec<(&str, zbus::zvariant::Value<'_>)> = owned
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    zbus::zvariant::Value::from(v.try_clone().expect("no fds")),
                )
            })
            .collect();
        let aux: Vec<(&str, &[(&str, zbus::zvariant::Value<'_>)])> = Vec::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = self
                .run_job(
                    name,
                    format!("StartTransientUnit {unit}"),
                    timeout,
                    || async {
                        // The unit's file is asked for at once, in the same
                        // round trip (the manager answers in order, so the
                        // unit exists by then), not after the job: a reload
                        // during a long start-up would read systemd's
                        // version of the file.
                        let (job, path) = futures_util::future::join(
                            self.manager
                                .start_transient_unit(unit, "fail", &props, &aux),
                            self.fragment_path(unit),
                        )
                        .await;
                        let job = job?;
                        match path {
                            Ok(path) => {
                                make_transient_file_reload_safe(unit_spec, &self.local_path(&path))
                            }
                            Err(e) => {
                                tracing::warn!(%unit, %e, "cannot read the new transient unit")
                            }
                        }
                        Ok(job)
                    },
                )
                .await;
            match outcome {
                Err(DaemonError::Bus {
                    error_name: Some(ref n),
                    ..
                }) if n == "org.freedesktop.systemd1.UnitExists" && attempts < 50 => {
                    // Someone else created it a moment ago (a concurrent
                    // start), or the reset unit is not collected yet.
                    if let Some(state) = self.unit_state(unit).await? {
                        // Made by someone else in the meantime: not ours
                        // to start.
                        if !state.ours() {
                            return Err(not_owned(unit, &state));
                        }
                        if state.is_up() || state.active == "activating" {
                            return self
                                .run_job(name, format!("StartUnit {unit}"), timeout, || {
                                    self.manager.start_unit(unit, "replace")
                                })
                                .await;
                        }
                        self.reset_failed(unit).await?;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }
}

/// systemd 252 serializes the `ExecStart` of a transient unit into its
/// `transient/` file with `$` and `;` written `\$` and `\;`, which its own
/// parser reads back literally: after a `daemon-reload` or `daemon-reexec`
/// the argv would change. Rewrites that file (only if it is systemd's
/// transient file for our unit) with our quoting, which systemd reads back
/// unchanged, keeping its mtime so the unit does not read as changed on
/// disk. Where the file is out of reach (the manager in another mount
/// namespace not described with `with_path_seen_as`), says so and leaves it.
fn make_transient_file_reload_safe(unit_spec: &UnitSpec, path: &Path) {
    let check = || -> std::result::Result<(), String> {
        // The path is the manager's answer: it must be a file in a
        // `transient` directory, reached without `..`, a regular file owned
        // by the manager's user (root, or us for a user manager), read
        // without following a link.
        if path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
            || path.parent().and_then(|d| d.file_name()) != Some(std::ffi::OsStr::new("transient"))
        {
            return Err("not in the manager's transient directory".into());
        }
        let (bytes, meta) = crate::fsutil::read_regular(path, 1 << 20)
            .map_err(|e| e.to_string())?
            .ok_or("the file is gone")?;
        {
            use std::os::unix::fs::MetadataExt;
            if !crate::fsutil::trusted_uid(meta.uid()) {
                return Err(format!("owned by UID {}, not the manager's", meta.uid()));
            }
        }
        let text = String::from_utf8(bytes).map_err(|_| "not text".to_string())?;
        if !text.starts_with(TRANSIENT_HEADER) {
            return Err("not systemd's transient unit file".into());
        }
        if !text.contains(&format!("Documentation={OWNERSHIP_MARK}")) {
            return Err("not our unit's file".into());
        }
        let new = unit_spec
            .render_transient_file()
            .map_err(|e| e.to_string())?;
        if new == text {
            return Ok(());
        }
        let mtime = meta.modified().map_err(|e| e.to_string())?;
        // Atomic, but no fsync: the file lives in the manager's runtime
        // directory and is gone at reboot anyway.
        let dir = path.parent().unwrap_or(Path::new("/"));
        let io = |e: std::io::Error| e.to_string();
        let mut tmp = tempfile::Builder::new()
            .prefix(".daemon-lifecycle-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(dir)
            .map_err(io)?;
        std::io::Write::write_all(&mut tmp, new.as_bytes()).map_err(io)?;
        tmp.as_file().set_modified(mtime).map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    };
    if path.as_os_str().is_empty() {
        return;
    }
    match check() {
        Ok(()) => {
            tracing::debug!(unit = %unit_spec.unit, path = %path.display(), "transient unit file is reload-safe")
        }
        Err(why) => tracing::warn!(
            unit = %unit_spec.unit,
            path = %path.display(),
            %why,
            "cannot make the transient unit file reload-safe: after a daemon-reload, arguments with '$' or ';' may change"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DaemonConfig, Scope};
    use crate::spec::ServiceSpec;
    use std::os::unix::fs::MetadataExt;

    fn unit_spec() -> UnitSpec {
        // `$` and `;`: what systemd 252 writes back escaped.
        let config = DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_args(["$HOME;x"]);
        UnitSpec::from_spec(&ServiceSpec::from_config(&config).unwrap(), Scope::User).unwrap()
    }

    /// `dir/transient/t.service` holding `text`, its mtime an hour back.
    fn planted(dir: &Path, sub: &str, text: &str) -> std::path::PathBuf {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("t.service");
        std::fs::write(&path, text).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        path
    }

    fn systemds_version() -> String {
        format!(
            "{TRANSIENT_HEADER}\n[Unit]\nDocumentation={OWNERSHIP_MARK}\n[Service]\nExecStart=/bin/echo \\$HOME\\;x\n"
        )
    }

    #[test]
    fn our_transient_file_is_rewritten_keeping_its_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = planted(dir.path(), "transient", &systemds_version());
        let before = std::fs::metadata(&path).unwrap();
        let spec = unit_spec();
        make_transient_file_reload_safe(&spec, &path);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            spec.render_transient_file().unwrap()
        );
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(after.modified().unwrap(), before.modified().unwrap());
        assert_ne!(after.ino(), before.ino(), "replaced by a rename");
        // Once ours, it is left as it is.
        make_transient_file_reload_safe(&spec, &path);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), after.ino());
    }

    #[test]
    fn other_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let spec = unit_spec();
        let ours = systemds_version();
        let cases = [
            ("not in a transient directory", "system", ours.clone()),
            (
                "not systemd's transient file",
                "transient",
                ours.replace(TRANSIENT_HEADER, "# hand-written"),
            ),
            (
                "not our unit",
                "transient",
                ours.replace(OWNERSHIP_MARK, "man:other(1)"),
            ),
        ];
        for (i, (case, sub, text)) in cases.into_iter().enumerate() {
            let root = dir.path().join(i.to_string());
            let path = planted(&root, sub, &text);
            make_transient_file_reload_safe(&spec, &path);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "{case}");
        }
        // A path through `..`, and a link: neither followed nor replaced.
        let real = planted(&dir.path().join("x"), "transient", &ours);
        let dotdot = dir.path().join("x/transient/../transient/t.service");
        make_transient_file_reload_safe(&spec, &dotdot);
        assert_eq!(std::fs::read_to_string(&real).unwrap(), ours);
        let link = dir.path().join("y/transient/t.service");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        make_transient_file_reload_safe(&spec, &link);
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), ours);
        // No path (the manager did not say): nothing to do.
        make_transient_file_reload_safe(&spec, Path::new(""));
    }
}
