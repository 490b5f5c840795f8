//! [`LaunchdBackend`]: runs a daemon as a launchd job, driven through the
//! `launchctl` program with the modern verbs only (`enable`, `bootstrap`,
//! `kickstart`, `bootout`, `print`; never `load`, `unload` or `list`),
//! from the same [`ServiceSpec`] as every backend ([`PlistSpec`] renders
//! the property list).
//!
//! - **Where.** [`Scope::User`]: an agent in `~/Library/LaunchAgents/LABEL.plist`,
//!   in domain `gui/UID`, or `user/UID` when there is no GUI session (launchctl
//!   answers 112 or 125 for `gui/UID`, or, on macOS, an SSH login whose user
//!   does not own the console: then `user/UID` is tried first). An agent for
//!   `user/UID` carries `LimitLoadToSessionType = Background`, the session
//!   that domain is. [`Scope::System`]: a daemon in
//!   `/Library/LaunchDaemons/LABEL.plist`, domain `system`.
//! - **Start.** The plist is written atomically (mode 0644, the caller's, or
//!   root:wheel for a daemon); `enable` (so that a `disable` left behind
//!   cannot make the bootstrap fail with 119); a job already loaded but not
//!   running is booted out first, and waited for until `print` no longer
//!   finds it; `bootstrap`, then `kickstart` if it did not start
//!   (`RunAtLoad`); then `print` until it runs, within `startup_timeout`.
//! - **Stop.** `bootout` (a plain kill or `launchctl stop` is undone by
//!   `KeepAlive`), which returns before the job is gone: `print` is read
//!   until launchd has forgotten the job, and the job's processes (its
//!   process group: `AbandonProcessGroup = false`) are waited for, within
//!   `shutdown_timeout` plus a grace. A job that is loaded but not running
//!   (and not about to be restarted) is left loaded, so its failure stays
//!   on record until `cleanup` or the next start, as on the other
//!   backends. `kill` sends SIGKILL to the process group first. Restart is `kickstart -k`, or a bootout and a start when
//!   the plist on disk is not what the config renders now.
//! - **Retries.** A refusal with 5, 36 or 37 (a bootstrap right after a
//!   bootout, for seconds) is retried for at least [`RETRY_BOUND`].
//! - **Ownership.** A loaded job whose `path` is not our plist, or an
//!   existing plist file that does not run our program under our label,
//!   is refused with [`DaemonError::NotOwned`] unless the config sets `adopt`.
//!
//! Where it runs: only explicitly (`BackendChoice::Launchd`, `daemonctl
//! --backend launchd`); `auto` never picks it. The launchctl program is
//! `$DAEMON_LIFECYCLE_LAUNCHCTL`, else `/bin/launchctl` on macOS; elsewhere
//! [`LaunchdBackend::from_env`] is [`DaemonError::BackendUnavailable`].
//! The tests drive a launchctl simulator (`examples/launchctl_sim.rs`)
//! through that variable; nothing here has run against a real launchd.

mod launchctl;
mod plist;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Backend, BackendKind, BoxFuture, DaemonStatus, StatusReport};
use crate::config::{Readiness, Scope};
use crate::error::{DaemonError, Result};
use crate::readiness::{self, ProbeError};
use crate::spec::{is_clean_exit, ServiceSpec};
use launchctl::{code, refusal, JobInfo, Launchctl, Lookup};
use plist::SessionType;

pub use launchctl::RETRY_BOUND;
pub use plist::{label, KeepAlive, PlistSpec};

/// The environment variable naming the launchctl program to drive (the
/// tests' simulator, or a launchctl elsewhere than `/bin`).
pub const LAUNCHCTL_ENV: &str = "DAEMON_LIFECYCLE_LAUNCHCTL";

/// launchctl on macOS.
pub const DEFAULT_LAUNCHCTL: &str = "/bin/launchctl";

/// What a stop may take beyond `shutdown_timeout` (launchd's own
/// `ExitTimeOut` escalation, then the process group's end).
const GRACE: Duration = Duration::from_secs(5);

/// Largest plist we read back (ours are a few KiB).
const MAX_PLIST: u64 = 1 << 20;

/// The launchd backend: one launchctl program, one scope.
///
/// ```no_run
/// use std::sync::Arc;
/// use daemon_lifecycle::{DaemonConfig, DaemonManager, LaunchdBackend, Scope};
///
/// # async fn demo() -> daemon_lifecycle::Result<()> {
/// let backend = LaunchdBackend::new("/bin/launchctl", Scope::User);
/// let config = DaemonConfig::new("/usr/local/bin/queen-rbee", "")
///     .with_name("com.example.queen-rbee");
/// let manager = DaemonManager::with_backend(config, Arc::new(backend));
/// let pid = manager.start().await?; // an agent in gui/UID
/// manager.stop().await?; // bootout, and its processes gone
/// # let _ = pid; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LaunchdBackend {
    launchctl: Launchctl,
    scope: Scope,
    plist_dir: Option<PathBuf>,
    uid: u32,
}

impl LaunchdBackend {
    /// A backend driving `launchctl` (a path to the program) for `scope`:
    /// agents (`gui/UID`, falling back to `user/UID`) for [`Scope::User`],
    /// daemons (`system`) for [`Scope::System`]. Nothing is run yet.
    pub fn new(launchctl: impl Into<PathBuf>, scope: Scope) -> LaunchdBackend {
        LaunchdBackend {
            launchctl: Launchctl::new(launchctl.into()),
            scope,
            plist_dir: None,
            uid: nix::unistd::getuid().as_raw(),
        }
    }

    /// The backend for this machine: the launchctl named by
    /// `$DAEMON_LIFECYCLE_LAUNCHCTL`, else `/bin/launchctl` on macOS. On a
    /// platform without launchd, and without that variable,
    /// [`DaemonError::BackendUnavailable`] saying so.
    pub fn from_env(scope: Scope) -> Result<LaunchdBackend> {
        let unavailable = |reason: String| DaemonError::BackendUnavailable {
            backend: "launchd",
            reason,
        };
        let program = match std::env::var_os(LAUNCHCTL_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ if cfg!(target_os = "macos") => PathBuf::from(DEFAULT_LAUNCHCTL),
            _ => {
                return Err(unavailable(format!(
                    "launchd runs only on macOS (this is {}); set {LAUNCHCTL_ENV} to a launchctl \
                     program to drive one anyway",
                    std::env::consts::OS
                )))
            }
        };
        use crate::host::Host;
        if let Err(e) = crate::host::LocalHost.check_executable(&program) {
            return Err(unavailable(format!("launchctl {}: {e}", program.display())));
        }
        Ok(LaunchdBackend::new(program, scope))
    }

    /// Writes plists into `dir` instead of the scope's default
    /// ([`LaunchdBackend::default_plist_dir`]).
    pub fn with_plist_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plist_dir = Some(dir.into());
        self
    }

    /// The scope this backend manages.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The launchctl program it runs.
    pub fn launchctl(&self) -> &Path {
        self.launchctl.program()
    }

    /// Where launchd loads plists of `scope` from at login or boot:
    /// `~/Library/LaunchAgents` (from `$HOME`), or `/Library/LaunchDaemons`.
    pub fn default_plist_dir(scope: Scope) -> Result<PathBuf> {
        match scope {
            Scope::System => Ok(PathBuf::from("/Library/LaunchDaemons")),
            Scope::User => match std::env::var_os("HOME") {
                Some(h) if Path::new(&h).is_absolute() => {
                    Ok(PathBuf::from(h).join("Library").join("LaunchAgents"))
                }
                _ => Err(DaemonError::invalid(
                    "scope",
                    "HOME is not set: pass a plist directory",
                )),
            },
        }
    }

    /// The plist file of `spec` (`DIR/LABEL.plist`).
    pub fn plist_path(&self, spec: &ServiceSpec) -> Result<PathBuf> {
        let plist = PlistSpec::from_spec(spec, self.scope)?;
        self.path_in(&plist, None)
    }

    fn path_in(&self, plist: &PlistSpec, dir: Option<&Path>) -> Result<PathBuf> {
        let dir = match dir.or(self.plist_dir.as_deref()) {
            Some(d) => d.to_owned(),
            None => Self::default_plist_dir(self.scope)?,
        };
        Ok(dir.join(plist.file_name()))
    }

    /// The rendering for this backend, its warning logged.
    fn plist_spec(&self, spec: &ServiceSpec) -> Result<PlistSpec> {
        let plist = PlistSpec::from_spec(spec, self.scope)?;
        if let Some(warning) = plist.warning() {
            tracing::warn!(name = %spec.name, "{warning}");
        }
        Ok(plist)
    }

    /// The domains a job of this scope may be in, in the order tried.
    fn domains(&self) -> Vec<String> {
        match self.scope {
            Scope::System => vec!["system".to_owned()],
            Scope::User => {
                let (gui, user) = (format!("gui/{}", self.uid), format!("user/{}", self.uid));
                if no_gui_session(self.uid) {
                    vec![user, gui]
                } else {
                    vec![gui, user]
                }
            }
        }
    }

    /// Where the job is loaded, and what `print` says of it.
    /// The loaded job of `spec` in this scope's domains, checked as ours
    /// (see [`Self::check_loaded_owned`]): its plist model, domain and
    /// state; `None` when launchd has no such job.
    async fn loaded_owned(
        &self,
        spec: &ServiceSpec,
    ) -> Result<Option<(PlistSpec, String, JobInfo)>> {
        let plist = PlistSpec::from_spec(spec, self.scope)?;
        let path = self.path_in(&plist, None)?;
        let Some((domain, info)) = self.locate(spec, &plist.label).await? else {
            return Ok(None);
        };
        let target = format!("{domain}/{}", plist.label);
        self.check_loaded_owned(spec, &target, &info, &path)?;
        Ok(Some((plist, domain, info)))
    }

    async fn locate(&self, spec: &ServiceSpec, label: &str) -> Result<Option<(String, JobInfo)>> {
        for domain in self.domains() {
            match self.launchctl.print(&spec.name, &domain, label).await? {
                Lookup::Found(info) => return Ok(Some((domain, info))),
                Lookup::NotFound | Lookup::NoDomain => {}
            }
        }
        Ok(None)
    }

    /// A loaded job is ours if launchd loaded it from our plist.
    fn check_loaded_owned(
        &self,
        spec: &ServiceSpec,
        target: &str,
        info: &JobInfo,
        ours: &Path,
    ) -> Result<()> {
        match &info.path {
            Some(path) if !spec.adopt && !same_path(path, ours) => Err(DaemonError::NotOwned {
                unit: target.to_owned(),
                reason: format!(
                    "launchd loaded it from {}, not from {}",
                    crate::text::escape_controls(path),
                    ours.display()
                ),
            }),
            // Loaded from no plist at all (`launchctl submit`, or by hand):
            // not one of ours.
            None if !spec.adopt => Err(DaemonError::NotOwned {
                unit: target.to_owned(),
                reason: "launchd shows no plist for it".into(),
            }),
            _ => Ok(()),
        }
    }

    /// The plist file at `path`, if any, after checking that it is ours: a
    /// regular file (not a link) of the caller or root that runs our
    /// program under our label. Another program's plist is refused unless
    /// the config adopts it.
    fn existing_plist(
        &self,
        spec: &ServiceSpec,
        path: &Path,
        plist: &PlistSpec,
    ) -> Result<Option<Vec<u8>>> {
        use std::os::unix::fs::MetadataExt;
        let not_ours = |reason: String| DaemonError::NotOwned {
            unit: path.display().to_string(),
            reason,
        };
        let (bytes, meta) = match crate::fsutil::read_regular(path, MAX_PLIST) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(DaemonError::io(format!("read {}", path.display()), e))
            }
            Err(e) if spec.adopt => {
                tracing::warn!(path = %path.display(), %e, "replacing it (adopt)");
                return Ok(None);
            }
            Err(e) => return Err(not_ours(e.to_string())),
        };
        if spec.adopt {
            return Ok(Some(bytes));
        }
        if !crate::fsutil::trusted_uid(meta.uid()) {
            return Err(not_ours(format!("it belongs to UID {}", meta.uid())));
        }
        let value: ::plist::Value = ::plist::from_bytes(&bytes)
            .map_err(|e| not_ours(format!("it is not a plist we wrote ({e})")))?;
        let dict = value.as_dictionary();
        let label = dict
            .and_then(|d| d.get("Label"))
            .and_then(|v| v.as_string());
        let program = dict.and_then(|d| {
            d.get("ProgramArguments")
                .and_then(|a| a.as_array())
                .and_then(|a| a.first())
                .or_else(|| d.get("Program"))
                .and_then(|v| v.as_string())
        });
        let ours = &plist.program_arguments[0];
        if label != Some(plist.label.as_str()) || program != Some(ours.as_str()) {
            return Err(not_ours(format!(
                "it runs {} as label {}, not {ours} as {}: another program's plist",
                program.map_or("nothing".into(), crate::text::escape_controls),
                label.map_or("(none)".into(), crate::text::escape_controls),
                plist.label
            )));
        }
        Ok(Some(bytes))
    }

    /// Writes the plist atomically: mode 0644, the caller's file (root:wheel
    /// for a daemon written by root).
    fn write_plist(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let err = |what: &str, e: std::io::Error| {
            DaemonError::io(format!("{what} {}", path.display()), e)
        };
        std::fs::create_dir_all(dir).map_err(|e| err("create the directory of", e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".daemon-lifecycle-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| err("write", e))?;
        tmp.write_all(bytes).map_err(|e| err("write", e))?;
        // Explicitly: the umask must not decide who may read it.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| err("chmod", e))?;
        if self.scope == Scope::System && nix::unistd::Uid::effective().is_root() {
            std::os::unix::fs::fchown(tmp.as_file(), Some(0), Some(0))
                .map_err(|e| err("chown", e))?;
        }
        tmp.as_file().sync_all().map_err(|e| err("write", e))?;
        tmp.persist(path).map_err(|e| err("rename into", e.error))?;
        Ok(())
    }

    /// `bootstrap DOMAIN PLIST`, retrying 5/36/37 within [`RETRY_BOUND`];
    /// `Ok(Some(outcome))` when the domain is not there for us (112, 125).
    /// A retry finds out whether the job got loaded meanwhile (a
    /// concurrent start of the same daemon).
    async fn bootstrap(
        &self,
        spec: &ServiceSpec,
        domain: &str,
        label: &str,
        path: &Path,
    ) -> Result<Option<launchctl::Outcome>> {
        let path_arg = path
            .to_str()
            .ok_or_else(|| DaemonError::invalid("plist_dir", "launchd needs UTF-8 paths"))?;
        let deadline = Instant::now() + RETRY_BOUND;
        let mut pause = Duration::from_millis(50);
        loop {
            let out = self
                .launchctl
                .run(&spec.name, &["bootstrap", domain, path_arg])
                .await?;
            if out.code == 0 {
                return Ok(None);
            }
            if out.no_domain() {
                return Ok(Some(out));
            }
            if !out.is_transient() || Instant::now() >= deadline {
                return Err(refusal(
                    format!("launchctl bootstrap {domain} {path_arg}"),
                    &out,
                ));
            }
            if let Lookup::Found(info) = self.launchctl.print(&spec.name, domain, label).await? {
                if info.path.as_deref().is_none_or(|p| same_path(p, path)) {
                    tracing::info!(%domain, %label, "loaded meanwhile (a concurrent start)");
                    return Ok(None);
                }
            }
            tracing::debug!(
                code = out.code,
                ?pause,
                "bootstrap refused for now: retrying"
            );
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Writes the plist for each domain in turn, enables and bootstraps it;
    /// returns the domain that took it.
    async fn bootstrap_somewhere(
        &self,
        spec: &ServiceSpec,
        plist: &PlistSpec,
        path: &Path,
    ) -> Result<String> {
        let mut refused = None;
        for domain in self.domains() {
            let bytes = plist.clone().for_session(session_of(&domain)).render()?;
            self.write_plist(path, &bytes)?;
            let target = format!("{domain}/{}", plist.label);
            let out = self
                .launchctl
                .run_retrying(&spec.name, &["enable", &target])
                .await?;
            if out.no_domain() {
                tracing::info!(%domain, code = out.code, "no such session here: trying the next domain");
                refused = Some((format!("launchctl enable {target}"), out));
                continue;
            }
            if out.code != 0 {
                return Err(refusal(format!("launchctl enable {target}"), &out));
            }
            match self.bootstrap(spec, &domain, &plist.label, path).await? {
                None => {
                    tracing::info!(%target, path = %path.display(), "bootstrapped");
                    return Ok(domain);
                }
                Some(out) => {
                    tracing::info!(%domain, code = out.code, "no such session here: trying the next domain");
                    refused = Some((
                        format!("launchctl bootstrap {domain} {}", path.display()),
                        out,
                    ));
                }
            }
        }
        let (operation, out) = refused.expect("at least one domain");
        Err(refusal(operation, &out))
    }

    /// `kickstart [-k] TARGET`; 37 (already in progress) is as good as done.
    async fn kickstart(&self, spec: &ServiceSpec, target: &str, kill: bool) -> Result<()> {
        let mut args = vec!["kickstart"];
        if kill {
            args.push("-k");
        }
        args.push(target);
        let out = self
            .launchctl
            .run_retrying_on(&spec.name, &args, &[code::EIO, code::EINPROGRESS])
            .await?;
        match out.code {
            0 | code::EALREADY => Ok(()),
            _ => Err(refusal(format!("launchctl {}", args.join(" ")), &out)),
        }
    }

    /// Polls `print` until the job runs with a PID other than `old`.
    /// A start (`runs_before` `None`) kickstarts it once if launchd did not
    /// start it; a run that ended before we saw it run (any run for a
    /// start, a run after `runs_before` for a restart) is a failed start.
    #[allow(clippy::too_many_arguments)]
    async fn wait_running(
        &self,
        spec: &ServiceSpec,
        domain: &str,
        label: &str,
        old: Option<u32>,
        runs_before: Option<u32>,
        within: Duration,
        operation: &'static str,
    ) -> Result<u32> {
        let target = format!("{domain}/{label}");
        let deadline = Instant::now() + within;
        let mut kicked = runs_before.is_some();
        let mut pause = Duration::from_millis(10);
        loop {
            match self.launchctl.print(&spec.name, domain, label).await? {
                Lookup::Found(info) => match info.running_pid() {
                    Some(pid) if Some(pid) != old => return Ok(pid),
                    Some(_) => {}
                    None => {
                        let ended = match runs_before {
                            None => ran(&info),
                            Some(before) => info.runs.unwrap_or(0) > before,
                        };
                        if ended {
                            return Err(start_failed(spec, &target, &info));
                        }
                        if !kicked {
                            self.kickstart(spec, &target, false).await?;
                            kicked = true;
                        }
                    }
                },
                Lookup::NotFound | Lookup::NoDomain => {
                    return Err(DaemonError::StartFailed {
                        name: spec.name.clone(),
                        reason: format!(
                            "{target} left launchd while starting (booted out by someone else?)"
                        ),
                        source: None,
                    })
                }
            }
            if Instant::now() >= deadline {
                return Err(DaemonError::Timeout {
                    name: spec.name.clone(),
                    operation,
                    after: within,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// `bootout TARGET`, then waits until `print` no longer finds the job
    /// and its processes are gone (`pid` and any PID `print` shows
    /// meanwhile, and their process groups), within `shutdown_timeout`
    /// plus [`GRACE`]. A job that is already gone is fine.
    async fn bootout_and_wait(
        &self,
        spec: &ServiceSpec,
        domain: &str,
        label: &str,
        pid: Option<u32>,
    ) -> Result<()> {
        let target = format!("{domain}/{label}");
        let bound = spec.shutdown_timeout + GRACE;
        let deadline = Instant::now() + bound;
        // 36 (a bootout in progress, ours or another's) is waited out below.
        let out = self
            .launchctl
            .run_retrying_on(
                &spec.name,
                &["bootout", &target],
                &[code::EIO, code::EALREADY],
            )
            .await?;
        match out.code {
            0 | code::EINPROGRESS | code::ESRCH | code::NO_SERVICE => {}
            _ if out.no_domain() => {}
            _ => return Err(refusal(format!("launchctl bootout {target}"), &out)),
        }
        let timeout = || DaemonError::Timeout {
            name: spec.name.clone(),
            operation: "stop (launchctl bootout)",
            after: bound,
        };
        let mut pids: Vec<u32> = pid.into_iter().collect();
        let mut pause = Duration::from_millis(10);
        // bootout returns before the job is gone: launchd still lists it
        // while it stops.
        loop {
            match self.launchctl.print(&spec.name, domain, label).await? {
                Lookup::Found(info) => {
                    if let Some(p) = info.pid.filter(|p| !pids.contains(p)) {
                        pids.push(p);
                    }
                }
                Lookup::NotFound | Lookup::NoDomain => break,
            }
            if Instant::now() >= deadline {
                return Err(timeout());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        while !pids.iter().all(|p| process_gone(*p)) {
            if Instant::now() >= deadline {
                return Err(timeout());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(%target, "booted out; its processes are gone");
        Ok(())
    }

    async fn probe_ready(
        &self,
        spec: &ServiceSpec,
        domain: &str,
        label: &str,
        probe: &Readiness,
        timeout: Duration,
    ) -> Result<()> {
        let still_up = || async {
            match self.launchctl.print(&spec.name, domain, label).await {
                Ok(Lookup::Found(info)) => info.running_pid().is_some(),
                Ok(_) => false,
                // A launchctl hiccup is not a death: keep probing.
                Err(_) => true,
            }
        };
        let deadline = Instant::now() + timeout;
        match readiness::wait_until_ready(probe, deadline, still_up).await {
            Ok(()) => Ok(()),
            Err(ProbeError::Timeout { last }) => {
                tracing::info!(%label, ?last, "not ready in time");
                Err(DaemonError::Timeout {
                    name: spec.name.clone(),
                    operation: "readiness probe",
                    after: timeout,
                })
            }
            Err(ProbeError::DaemonGone | ProbeError::NotAProbe) => {
                // How it ended, when launchd still has the job.
                let how = match self.launchctl.print(&spec.name, domain, label).await {
                    Ok(Lookup::Found(JobInfo {
                        last_exit: Some(exit),
                        ..
                    })) => exit.to_string(),
                    _ => "ended".to_owned(),
                };
                Err(DaemonError::StartFailed {
                    name: spec.name.clone(),
                    reason: format!("{domain}/{label} {how} before it became ready"),
                    source: None,
                })
            }
        }
    }

    /// After a start or restart: the probe, if any; a daemon not ready in
    /// time is booted out (nothing is left running, as on the fork backend).
    async fn after_start(
        &self,
        spec: &ServiceSpec,
        domain: &str,
        label: &str,
        pid: u32,
    ) -> Result<u32> {
        let Some(probe) = spec.probe() else {
            return Ok(pid);
        };
        if let Err(e) = self
            .probe_ready(spec, domain, label, probe, spec.startup_timeout)
            .await
        {
            if matches!(e, DaemonError::Timeout { .. }) {
                let _ = self.bootout_and_wait(spec, domain, label, Some(pid)).await;
            }
            return Err(e);
        }
        // The PID now (KeepAlive may have restarted it meanwhile).
        match self.launchctl.print(&spec.name, domain, label).await? {
            Lookup::Found(info) => Ok(info.running_pid().unwrap_or(pid)),
            _ => Ok(pid),
        }
    }

    async fn start_job(&self, spec: &ServiceSpec) -> Result<u32> {
        let plist = self.plist_spec(spec)?;
        let path = self.path_in(&plist, None)?;
        let label = plist.label.clone();
        if let Some((domain, info)) = self.locate(spec, &label).await? {
            let target = format!("{domain}/{label}");
            self.check_loaded_owned(spec, &target, &info, &path)?;
            if let Some(pid) = info.running_pid() {
                tracing::info!(%target, pid, "already running");
                return Ok(pid);
            }
            // Loaded, not running (ended, failed, or waiting out its
            // ThrottleInterval): out, so the plist is loaded as it is now.
            self.bootout_and_wait(spec, &domain, &label, info.pid)
                .await?;
        }
        self.existing_plist(spec, &path, &plist)?;
        let domain = self.bootstrap_somewhere(spec, &plist, &path).await?;
        let pid = match self
            .wait_running(
                spec,
                &domain,
                &label,
                None,
                None,
                spec.startup_timeout,
                "start",
            )
            .await
        {
            Ok(pid) => pid,
            Err(e) => {
                if matches!(e, DaemonError::Timeout { .. }) {
                    let _ = self.bootout_and_wait(spec, &domain, &label, None).await;
                }
                return Err(e);
            }
        };
        self.after_start(spec, &domain, &label, pid).await
    }

    async fn restart_job(&self, spec: &ServiceSpec) -> Result<u32> {
        let plist = self.plist_spec(spec)?;
        let path = self.path_in(&plist, None)?;
        let label = plist.label.clone();
        let Some((domain, info)) = self.locate(spec, &label).await? else {
            return self.start_job(spec).await;
        };
        let target = format!("{domain}/{label}");
        self.check_loaded_owned(spec, &target, &info, &path)?;
        let rendered = plist.clone().for_session(session_of(&domain)).render()?;
        let on_disk = self.existing_plist(spec, &path, &plist)?;
        if on_disk.as_deref() != Some(rendered.as_slice()) {
            tracing::info!(%target, "the plist changed: booting out and starting anew");
            self.bootout_and_wait(spec, &domain, &label, info.pid)
                .await?;
            return self.start_job(spec).await;
        }
        let old = info.running_pid();
        self.kickstart(spec, &target, true).await?;
        let within = spec.shutdown_timeout + spec.startup_timeout + GRACE;
        let runs_before = Some(info.runs.unwrap_or(0));
        let pid = self
            .wait_running(spec, &domain, &label, old, runs_before, within, "restart")
            .await?;
        self.after_start(spec, &domain, &label, pid).await
    }

    /// Writes the plist where launchd loads it at login (agents) or boot
    /// (daemons), atomically and only when it changed, without loading it
    /// now; with `enable`, also clears a `disable` of the job. Returns
    /// whether the file changed.
    pub async fn install(
        &self,
        spec: &ServiceSpec,
        plist_dir: Option<&Path>,
        enable: bool,
    ) -> Result<bool> {
        crate::host::check(&crate::host::LocalHost, spec)?;
        let plist = self.plist_spec(spec)?;
        let path = self.path_in(&plist, plist_dir)?;
        let existing = self.existing_plist(spec, &path, &plist)?;
        let bytes = plist.render()?;
        let changed = existing.as_deref() != Some(bytes.as_slice());
        if changed {
            self.write_plist(&path, &bytes)?;
            tracing::info!(path = %path.display(), "plist written");
        }
        if enable {
            self.enable_everywhere(spec, &plist.label, true).await?;
        }
        Ok(changed)
    }

    /// Boots the job out (if loaded), removes its plist and clears a
    /// `disable` of it. Returns whether there was a plist to remove.
    pub async fn uninstall(&self, spec: &ServiceSpec, plist_dir: Option<&Path>) -> Result<bool> {
        let plist = PlistSpec::from_spec(spec, self.scope)?;
        let path = self.path_in(&plist, plist_dir)?;
        // The plist first: one that is not ours is refused before anything
        // is stopped.
        let existing = self.existing_plist(spec, &path, &plist)?;
        if let Some((domain, info)) = self.locate(spec, &plist.label).await? {
            let target = format!("{domain}/{}", plist.label);
            self.check_loaded_owned(spec, &target, &info, &path)?;
            self.bootout_and_wait(spec, &domain, &plist.label, info.pid)
                .await?;
        }
        self.enable_everywhere(spec, &plist.label, false).await?;
        if existing.is_some() {
            std::fs::remove_file(&path)
                .map_err(|e| DaemonError::io(format!("remove {}", path.display()), e))?;
            tracing::info!(path = %path.display(), "plist removed");
        }
        Ok(existing.is_some())
    }

    /// `enable` in every domain of the scope that exists here (`first`:
    /// only the first that does).
    async fn enable_everywhere(&self, spec: &ServiceSpec, label: &str, first: bool) -> Result<()> {
        for domain in self.domains() {
            let target = format!("{domain}/{label}");
            let out = self
                .launchctl
                .run_retrying(&spec.name, &["enable", &target])
                .await?;
            if out.no_domain() {
                continue;
            }
            if out.code != 0 {
                return Err(refusal(format!("launchctl enable {target}"), &out));
            }
            if first {
                break;
            }
        }
        Ok(())
    }
}

/// The state of a loaded job, in the words every backend uses.
fn job_status(info: &JobInfo) -> Result<DaemonStatus> {
    if let Some(pid) = info.running_pid() {
        return Ok(DaemonStatus::Running(pid));
    }
    Ok(match info.state.as_str() {
        // Waiting out ThrottleInterval before KeepAlive restarts it: the
        // words of the fork backend and systemd's auto-restart.
        "spawn scheduled" => DaemonStatus::Failed(match info.last_exit {
            Some(exit) => format!("{exit}; restart pending"),
            None => "restart pending".to_owned(),
        }),
        "not running" | "waiting" | "exited" => match info.last_exit {
            Some(exit) if !is_clean_exit(exit) => DaemonStatus::Failed(exit.to_string()),
            _ => DaemonStatus::Stopped,
        },
        other => match info.pid {
            Some(pid) => DaemonStatus::Running(pid),
            None => {
                return Err(DaemonError::Io {
                    context: "read `launchctl print`".into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "launchd reports state {:?} without a pid, which we do not know",
                            crate::text::escape_controls(other)
                        ),
                    ),
                })
            }
        },
    })
}

/// Whether launchd spawned the job at least once.
fn ran(info: &JobInfo) -> bool {
    info.runs.unwrap_or(0) > 0 || info.last_exit.is_some()
}

fn start_failed(spec: &ServiceSpec, target: &str, info: &JobInfo) -> DaemonError {
    let how = info
        .last_exit
        .map_or_else(|| "ended".to_owned(), |e| e.to_string());
    let restarting = if info.state == "spawn scheduled" {
        "; launchd will start it again (KeepAlive): stop it to end that"
    } else {
        ""
    };
    DaemonError::StartFailed {
        name: spec.name.clone(),
        reason: format!("{target} {how} right after it started{restarting}"),
        source: None,
    }
}

/// `LimitLoadToSessionType` for a domain: `user/UID` is the Background
/// session, which refuses a plain (Aqua) agent.
fn session_of(domain: &str) -> Option<SessionType> {
    domain
        .starts_with("user/")
        .then_some(SessionType::Background)
}

fn same_path(reported: &str, ours: &Path) -> bool {
    if Path::new(reported) == ours {
        return true;
    }
    match (std::fs::canonicalize(reported), std::fs::canonicalize(ours)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Neither the process nor a process group of that ID exists any more.
fn process_gone(pid: u32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::{kill, killpg};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    let pid = Pid::from_raw(raw);
    kill(pid, None) == Err(Errno::ESRCH) && killpg(pid, None) == Err(Errno::ESRCH)
}

/// A `reload.argv` command, run directly (no shell), with `MAINPID` set;
/// bounded by the start-up timeout, and killed past it.
async fn run_reload_command(spec: &ServiceSpec, argv: &[String], pid: u32) -> Result<()> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("MAINPID", pid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| DaemonError::io(format!("run the reload command {}", argv[0]), e))?;
    match tokio::time::timeout(spec.startup_timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(DaemonError::ReloadFailed {
            name: spec.name.clone(),
            reason: format!("the reload command {} {status}", argv[0]),
        }),
        Ok(Err(e)) => Err(DaemonError::io(format!("wait for {}", argv[0]), e)),
        Err(_) => Err(DaemonError::Timeout {
            name: spec.name.clone(),
            operation: "reload",
            after: spec.startup_timeout,
        }),
    }
}

/// SIGKILL to the job's process group (launchd makes each job a group
/// leader), or to the process alone if it left the group.
fn kill_group(pid: u32) -> Result<()> {
    use nix::errno::Errno;
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    let result = match killpg(pid, Signal::SIGKILL) {
        Err(Errno::ESRCH) => kill(pid, Signal::SIGKILL),
        other => other,
    };
    match result {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(DaemonError::io(
            format!("SIGKILL to process group {pid}"),
            std::io::Error::from(e),
        )),
    }
}

/// On macOS, an SSH login whose user does not own the console has no GUI
/// session (Homebrew's rule): `user/UID` first.
#[cfg(target_os = "macos")]
fn no_gui_session(uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ssh = std::env::var_os("SSH_CONNECTION").is_some() || std::env::var_os("SSH_TTY").is_some();
    ssh && std::fs::metadata("/dev/console").map_or(true, |m| m.uid() != uid)
}

#[cfg(not(target_os = "macos"))]
fn no_gui_session(_uid: u32) -> bool {
    false
}

impl Backend for LaunchdBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Launchd
    }

    fn start<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<u32>> {
        Box::pin(self.start_job(spec))
    }

    fn stop<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some((plist, domain, info)) = self.loaded_owned(spec).await? else {
                return Ok(());
            };
            if info.pid.is_none() && info.state != "spawn scheduled" {
                // Not running, and launchd will not start it by itself: its
                // last exit stays on record until cleanup or the next
                // start, as on the other backends.
                return Ok(());
            }
            self.bootout_and_wait(spec, &domain, &plist.label, info.pid)
                .await
        })
    }

    fn kill<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some((plist, domain, info)) = self.loaded_owned(spec).await? else {
                return Ok(());
            };
            if let Some(pid) = info.pid {
                kill_group(pid)?;
            }
            // Then out of launchd, or KeepAlive starts it again.
            self.bootout_and_wait(spec, &domain, &plist.label, info.pid)
                .await
        })
    }

    fn status<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<StatusReport>> {
        Box::pin(async move {
            let plist = PlistSpec::from_spec(spec, self.scope)?;
            let path = self.path_in(&plist, None)?;
            let Some((domain, info)) = self.locate(spec, &plist.label).await? else {
                return Ok(StatusReport::new(
                    spec.name.clone(),
                    BackendKind::Launchd,
                    DaemonStatus::Stopped,
                ));
            };
            let target = format!("{domain}/{}", plist.label);
            self.check_loaded_owned(spec, &target, &info, &path)?;
            let mut report =
                StatusReport::new(spec.name.clone(), BackendKind::Launchd, job_status(&info)?);
            report.restarts = info.runs.map_or(0, |r| r.saturating_sub(1));
            report.last_exit = info.last_exit;
            // Whether the plist on disk is what the config renders now.
            if let Ok(Some(on_disk)) = self.existing_plist(spec, &path, &plist) {
                report.drift = plist
                    .for_session(session_of(&domain))
                    .render()
                    .ok()
                    .map(|now| now != on_disk);
            }
            Ok(report)
        })
    }

    fn restart<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<u32>> {
        Box::pin(self.restart_job(spec))
    }

    /// The signal through `launchctl kill SIGNAL DOMAIN/LABEL` (launchd
    /// sends it to the job's process); a `reload.argv` command is run here,
    /// directly, with `MAINPID` set. launchd has no `READY=1`, so nothing is
    /// waited for after the signal.
    fn reload<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let not_running = |state: String| DaemonError::NotRunning {
                name: spec.name.clone(),
                state,
            };
            let Some((plist, domain, info)) = self.loaded_owned(spec).await? else {
                return Err(not_running(DaemonStatus::Stopped.to_string()));
            };
            let Some(pid) = info.running_pid() else {
                return Err(not_running(job_status(&info)?.to_string()));
            };
            match &spec.reload {
                crate::spec::ReloadSpec::Command(argv) => run_reload_command(spec, argv, pid).await,
                other => {
                    let name = match other {
                        crate::spec::ReloadSpec::Signal(name) => format!("SIG{name}"),
                        _ => "SIGHUP".to_owned(),
                    };
                    let target = format!("{domain}/{}", plist.label);
                    let args = ["kill", name.as_str(), target.as_str()];
                    let out = self.launchctl.run(&spec.name, &args).await?;
                    match out.code {
                        0 => Ok(()),
                        // The job ended between the look and the kill.
                        3 | 113 => Err(not_running(DaemonStatus::Stopped.to_string())),
                        _ => Err(refusal(format!("launchctl {}", args.join(" ")), &out)),
                    }
                }
            }
        })
    }

    fn wait_ready<'a>(
        &'a self,
        spec: &'a ServiceSpec,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let plist = PlistSpec::from_spec(spec, self.scope)?;
            let label = plist.label;
            let (domain, info) = match self.locate(spec, &label).await? {
                Some(found) if found.1.running_pid().is_some() => found,
                other => {
                    let state = match other {
                        Some((_, info)) => job_status(&info)?.to_string(),
                        None => DaemonStatus::Stopped.to_string(),
                    };
                    return Err(DaemonError::NotRunning {
                        name: spec.name.clone(),
                        state,
                    });
                }
            };
            tracing::trace!(%domain, state = %info.state, "running");
            match spec.probe() {
                Some(probe) => {
                    self.probe_ready(spec, &domain, &label, probe, timeout)
                        .await
                }
                // notify: launchd has no READY=1; running is ready.
                None => Ok(()),
            }
        })
    }

    fn cleanup_stale<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some((plist, domain, info)) = self.loaded_owned(spec).await? else {
                return Ok(());
            };
            let target = format!("{domain}/{}", plist.label);
            if matches!(job_status(&info)?, DaemonStatus::Failed(_)) {
                tracing::info!(%target, "failed: booting it out");
                self.bootout_and_wait(spec, &domain, &plist.label, info.pid)
                    .await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ExitInfo;

    fn info(state: &str, pid: Option<u32>, last_exit: Option<ExitInfo>) -> JobInfo {
        JobInfo {
            state: state.into(),
            pid,
            last_exit,
            ..JobInfo::default()
        }
    }

    #[test]
    fn job_states_map_to_daemon_states() {
        assert_eq!(
            job_status(&info("running", Some(7), None)).unwrap(),
            DaemonStatus::Running(7)
        );
        assert_eq!(
            job_status(&info("not running", None, Some(ExitInfo::Code(0)))).unwrap(),
            DaemonStatus::Stopped
        );
        assert_eq!(
            job_status(&info("not running", None, Some(ExitInfo::Code(3)))).unwrap(),
            DaemonStatus::Failed("exited with code 3".into())
        );
        assert_eq!(
            job_status(&info("spawn scheduled", None, Some(ExitInfo::Code(3)))).unwrap(),
            DaemonStatus::Failed("exited with code 3; restart pending".into())
        );
        assert_eq!(
            job_status(&info(
                "waiting",
                None,
                Some(ExitInfo::Signal(libc::SIGTERM))
            ))
            .unwrap(),
            DaemonStatus::Stopped
        );
        assert_eq!(
            job_status(&info("xpcproxy", Some(9), None)).unwrap(),
            DaemonStatus::Running(9)
        );
        assert!(job_status(&info("brand new state", None, None)).is_err());
    }

    #[test]
    fn domains_follow_the_scope() {
        let user = LaunchdBackend::new("/bin/false", Scope::User);
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(
            user.domains(),
            [format!("gui/{uid}"), format!("user/{uid}")]
        );
        let system = LaunchdBackend::new("/bin/false", Scope::System);
        assert_eq!(system.domains(), ["system"]);
        assert_eq!(session_of("user/501"), Some(SessionType::Background));
        assert_eq!(session_of("gui/501"), None);
    }

    #[test]
    fn without_launchd_the_backend_is_unavailable() {
        if std::env::var_os(LAUNCHCTL_ENV).is_some() || cfg!(target_os = "macos") {
            return;
        }
        let err = LaunchdBackend::from_env(Scope::User).unwrap_err();
        assert!(
            matches!(err, DaemonError::BackendUnavailable { backend: "launchd", ref reason } if reason.contains(LAUNCHCTL_ENV)),
            "{err:?}"
        );
    }
}
