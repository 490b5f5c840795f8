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
                        let safe = match path {
                            Ok(path) if self.remote.is_some() => {
                                let host = self.remote_files().expect("remote");
                                make_remote_transient_file_reload_safe(
                                    host,
                                    unit_spec,
                                    Path::new(&path),
                                )
                                .await
                            }
                            Ok(path) => {
                                make_transient_file_reload_safe(unit_spec, &self.local_path(&path))
                            }
                            Err(e) => {
                                tracing::warn!(%unit, %e, "cannot read the new transient unit");
                                false
                            }
                        };
                        if safe {
                            self.reload_if_reread_early(unit_spec, &owned).await;
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

/// The exec properties a `daemon-reload` can change: what systemd 252
/// writes back with `$` and `;` escaped.
const EXEC_PROPERTIES: [&str; 3] = ["ExecStart", "ExecReload", "ExecStartPost"];

/// One exec command as we send it (`(sasb)`: path, argv, ignore-failure).
type ExecCommand = (String, Vec<String>, bool);

/// One exec command as systemd reports it (`a(sasbttttuii)`).
type ExecStatus = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);

/// The exec commands among the transient properties we send, as
/// (property, [(path, argv, ignore-failure)]).
fn exec_commands(
    sent: &[(&'static str, zbus::zvariant::OwnedValue)],
) -> Vec<(&'static str, Vec<ExecCommand>)> {
    sent.iter()
        .filter(|(k, _)| EXEC_PROPERTIES.contains(k))
        .filter_map(|(k, v)| Some((*k, v.try_clone().ok()?.try_into().ok()?)))
        .collect()
}

impl SystemdBackend {
    /// A `daemon-reload` that landed between `StartTransientUnit` and our
    /// rewrite of the transient file re-read systemd's own version: its
    /// `$` and `;` come back escaped, so the unit's commands (a reload's
    /// `${MAINPID}`, an argument with `$`) are not the ones we sent. Only
    /// where a command has one of those characters: the commands as the
    /// manager holds them now are compared with what we sent, and if they
    /// differ the manager is reloaded once more, which re-reads our
    /// rewritten file. Best effort (a failure is logged): the unit runs.
    async fn reload_if_reread_early(
        &self,
        unit_spec: &UnitSpec,
        sent: &[(&'static str, zbus::zvariant::OwnedValue)],
    ) {
        let sent = exec_commands(sent);
        let risky = sent.iter().any(|(_, cmds)| {
            cmds.iter()
                .any(|(_, argv, _)| argv.iter().any(|a| a.contains(['$', ';'])))
        });
        if !risky {
            return;
        }
        let unit = unit_spec.unit.as_str();
        let object = super::dbus::unit_object_path(unit);
        let conn = self.manager.inner().connection();
        let get = |property: &'static str| {
            let object = object.clone();
            async move {
                let what = format!("Get {property} of {unit}");
                let args = ("org.freedesktop.systemd1.Service", property);
                let call = conn.call_method(
                    Some("org.freedesktop.systemd1"),
                    object.as_str(),
                    Some("org.freedesktop.DBus.Properties"),
                    "Get",
                    &args,
                );
                let reply = super::bus::bounded(&what, super::bus::QUERY_GRACE, call)
                    .await?
                    .map_err(|e| super::errors::bus_error(what.clone(), e))?;
                let value: zbus::zvariant::OwnedValue = reply
                    .body()
                    .deserialize()
                    .map_err(|e| super::errors::bus_error(what.clone(), e))?;
                Vec::<ExecStatus>::try_from(value)
                    .map_err(|e| super::errors::bus_error(what, e.into()))
            }
        };
        // All at once: one round trip's wait.
        let held = futures_util::future::join_all(sent.iter().map(|(k, _)| get(k))).await;
        let mut changed = false;
        for ((property, cmds), now) in sent.iter().zip(held) {
            let now = match now {
                Ok(now) => now,
                Err(e) => {
                    tracing::warn!(%unit, %e, "cannot read {property} back");
                    return;
                }
            };
            let now: Vec<(&str, &[String])> =
                now.iter().map(|c| (c.0.as_str(), c.1.as_slice())).collect();
            let ours: Vec<(&str, &[String])> = cmds
                .iter()
                .map(|c| (c.0.as_str(), c.1.as_slice()))
                .collect();
            changed |= now != ours;
        }
        if changed {
            tracing::warn!(%unit, "a daemon-reload re-read systemd's own transient file before our rewrite: reloading again so the unit's commands are the config's");
            if let Err(e) = self.reload().await {
                tracing::warn!(%unit, %e, "the repairing daemon-reload failed");
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
fn make_transient_file_reload_safe(unit_spec: &UnitSpec, path: &Path) -> bool {
    let check = || -> std::result::Result<(), String> {
        // The path is the manager's answer: it must be a file in a
        // `transient` directory, reached without `..`, a regular file owned
        // by the manager's user (root, or us for a user manager), read
        // without following a link.
        in_transient_dir(path)?;
        let (bytes, meta) = crate::fsutil::read_regular(path, 1 << 20)
            .map_err(|e| e.to_string())?
            .ok_or("the file is gone")?;
        {
            use std::os::unix::fs::MetadataExt;
            if !crate::fsutil::trusted_uid(meta.uid()) {
                return Err(format!("owned by UID {}, not the manager's", meta.uid()));
            }
        }
        let Some(new) = rewritten(unit_spec, bytes)? else {
            return Ok(());
        };
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
        return false;
    }
    match check() {
        Ok(()) => {
            tracing::debug!(unit = %unit_spec.unit, path = %path.display(), "transient unit file is reload-safe");
            true
        }
        Err(why) => {
            tracing::warn!(
                unit = %unit_spec.unit,
                path = %path.display(),
                %why,
                "cannot make the transient unit file reload-safe: after a daemon-reload, arguments with '$' or ';' may change"
            );
            false
        }
    }
}

/// The path is the manager's answer: it must be a file in a `transient`
/// directory, reached without `..`.
fn in_transient_dir(path: &Path) -> std::result::Result<(), String> {
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
        || path.parent().and_then(|d| d.file_name()) != Some(std::ffi::OsStr::new("transient"))
    {
        return Err("not in the manager's transient directory".into());
    }
    Ok(())
}

/// What the transient file `bytes` must become (`None`: it is right
/// already); refused unless it is systemd's transient file of our unit.
fn rewritten(unit_spec: &UnitSpec, bytes: Vec<u8>) -> std::result::Result<Option<String>, String> {
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
    Ok((new != text).then_some(new))
}

/// [`make_transient_file_reload_safe`] on a remote host: the same checks
/// on what the host's read gives (a regular file, never a link, owned by
/// root, or for a user manager by the UID of its `/run/user/UID`), then an
/// atomic write there that keeps the file's mtime.
async fn make_remote_transient_file_reload_safe(
    host: &crate::host::SshHost,
    unit_spec: &UnitSpec,
    path: &Path,
) -> bool {
    use crate::host::ssh::RemoteFile;
    let rewrite = async {
        in_transient_dir(path)?;
        let (uid, bytes) = match host.read_file(path, 1 << 20).await {
            Ok(RemoteFile::Regular { uid, bytes }) => (uid, bytes),
            Ok(other) => return Err(format!("not a regular file ({other:?})")),
            Err(e) => return Err(e.to_string()),
        };
        let users = path
            .strip_prefix("/run/user")
            .ok()
            .and_then(|rest| rest.components().next())
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok());
        if uid != 0 && Some(uid) != users {
            return Err(format!("owned by UID {uid}, not the manager's"));
        }
        let Some(new) = rewritten(unit_spec, bytes)? else {
            return Ok(());
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("no file name")?;
        host.write_into_dir(dir, name, new.as_bytes(), true)
            .await
            .map_err(|e| e.to_string())
    };
    match rewrite.await {
        Ok(()) => {
            tracing::debug!(unit = %unit_spec.unit, path = %path.display(), host = host.name(), "transient unit file is reload-safe");
            true
        }
        Err(why) => {
            tracing::warn!(
                unit = %unit_spec.unit,
                path = %path.display(),
                host = host.name(),
                %why,
                "cannot make the transient unit file reload-safe: after a daemon-reload, arguments with '$' or ';' may change"
            );
            false
        }
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

    #[test]
    fn the_exec_commands_sent_are_read_back_for_the_early_reload_check() {
        let sent = unit_spec().transient_properties();
        let cmds = exec_commands(&sent);
        let start = cmds.iter().find(|(k, _)| *k == "ExecStart").unwrap();
        assert_eq!(start.1[0].0, "/bin/echo");
        assert_eq!(start.1[0].1, ["/bin/echo", "$$HOME;x"]);
        // The default reload, SIGHUP to `${MAINPID}`, is there too.
        let reload = cmds.iter().find(|(k, _)| *k == "ExecReload").unwrap();
        assert!(
            reload
                .1
                .iter()
                .any(|c| c.1.iter().any(|a| a == "${MAINPID}")),
            "{reload:?}"
        );
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
