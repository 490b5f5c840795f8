//! [`ServiceSpec`]: the one resolved, backend-neutral model of a daemon,
//! between the [`DaemonConfig`] a user writes and every output.
//!
//! [`crate::DaemonManager`] builds it once from the config
//! ([`ServiceSpec::from_config`]: the pure well-formedness checks, then
//! every default resolved), and each backend renders it: the systemd unit
//! file and the transient-unit properties (`crate::systemd::UnitSpec`), the
//! fork supervisor's request. No backend reads a `DaemonConfig`, so adding a
//! config field means the config, this model, and one mapping per output.
//!
//! Building a spec never looks at the host: rendering a unit for
//! `/usr/bin/queen-rbee` works on a machine where it is not installed.
//! Whether the host that will run the daemon can run it is
//! [`crate::host::check`]'s question, asked before a start.

mod restart;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, DaemonConfig, Limits, Readiness, Scope};
use crate::error::Result;
use serde::{Deserialize, Serialize};

pub use restart::RestartSpec;
pub(crate) use restart::{is_clean_exit, StartLimit};

/// A daemon as every backend runs it: validated, defaults resolved.
///
/// Build it with [`ServiceSpec::from_config`]; its fields are public to
/// read (for a custom [`crate::Backend`]) and it cannot be built by hand,
/// so every spec passed the config's well-formedness checks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceSpec {
    /// The daemon's name: the config's `name`, or the file name of the
    /// binary. Checked: 1–128 bytes, no control characters or `/`, not
    /// starting with `.` or `-`.
    pub name: String,
    /// Absolute path of the executable (argv\[0\]).
    pub program: PathBuf,
    /// Its arguments (argv\[1..\]), byte for byte as configured.
    pub args: Vec<String>,
    /// The config's environment, sorted by key (every backend adds its own
    /// clean base underneath).
    pub env: BTreeMap<String, String>,
    /// Working directory; `None`: `/`.
    pub working_dir: Option<PathBuf>,
    /// The PID file (the config's, or the default location; see
    /// [`DaemonConfig::effective_pid_file`]). The fork backend's files live
    /// beside it.
    pub pid_file: PathBuf,
    /// How long start-up may take.
    pub startup_timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub shutdown_timeout: Duration,
    /// The systemd manager asked for (the config's, or the caller's default).
    pub scope: Scope,
    /// How readiness is detected; `None`: ready once running.
    pub readiness: Option<Readiness>,
    /// Whether and how a daemon that exits on its own is started again.
    pub restart: RestartSpec,
    /// `watchdog_secs`: the longest the daemon may go without `WATCHDOG=1`.
    pub watchdog: Option<Duration>,
    /// The liveness probe run while the daemon runs, once ready.
    pub liveness: Option<LivenessSpec>,
    /// How `reload` asks the daemon to re-read its configuration.
    pub reload: ReloadSpec,
    /// Where stdout and stderr go.
    pub logs: LogSpec,
    /// Resource limits.
    pub limits: Limits,
    /// Who it runs as.
    pub run_as: RunAs,
    /// systemd: take over a unit of this name that we did not create.
    pub adopt: bool,
    /// The instance of a template config this spec runs, with every
    /// `{instance}` already replaced (see [`DaemonConfig::instance`]).
    pub instance: Option<String>,
    /// The machine that runs it (`None`: this one): systemd over ssh.
    pub host: Option<crate::host::SshDestination>,
    /// A template without an instance: it can be rendered (as systemd's
    /// `NAME@.service`), not run.
    template: bool,
    /// Whether `pid_file` is the default location (whose directory the fork
    /// backend creates, private), not one the config named.
    pid_file_is_default: bool,
}

/// Who the daemon runs as: names or numeric IDs, resolved on the host that
/// runs it (they may not exist where a unit is only rendered).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RunAs {
    /// `user` (name or UID); `None`: the caller (fork) or the manager's user.
    pub user: Option<String>,
    /// `group` (name or GID); `None`: the user's primary group.
    pub group: Option<String>,
}

impl RunAs {
    /// Whether neither a user nor a group is asked for.
    pub fn is_default(&self) -> bool {
        self.user.is_none() && self.group.is_none()
    }
}

/// A liveness probe with its defaults resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LivenessSpec {
    /// What is probed (tcp, http or command; the readiness probe code).
    pub probe: Readiness,
    /// Time between the start of one probe and the next.
    pub interval: Duration,
    /// Bound of one probe.
    pub timeout: Duration,
    /// Consecutive failures after which the daemon is stopped.
    pub failures: u32,
}

/// The words a status gives for a daemon its liveness probe stopped.
pub(crate) const LIVENESS_FAILED: &str = "liveness probe failed";
/// The words a status gives for a daemon its watchdog aborted.
pub(crate) const WATCHDOG_TIMEOUT: &str = "watchdog timeout";

/// How `reload` reaches the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ReloadSpec {
    /// This signal (its name without `SIG`, e.g. `HUP`) to the main process.
    Signal(String),
    /// This command, run directly, with `MAINPID` in its environment.
    Command(Vec<String>),
}

impl Default for ReloadSpec {
    fn default() -> Self {
        ReloadSpec::Signal("HUP".into())
    }
}

impl ReloadSpec {
    /// The spec of a (well-formed) `reload` table; none: SIGHUP.
    pub fn from_config(c: Option<&config::ReloadConfig>) -> ReloadSpec {
        match c {
            Some(config::ReloadConfig {
                argv: Some(argv), ..
            }) => ReloadSpec::Command(argv.clone()),
            Some(config::ReloadConfig {
                signal: Some(sig), ..
            }) => match config::validate::reload_signal(sig) {
                Some(s) => ReloadSpec::Signal(s.as_str().trim_start_matches("SIG").to_owned()),
                None => ReloadSpec::default(),
            },
            _ => ReloadSpec::default(),
        }
    }

    /// The signal number, for [`ReloadSpec::Signal`].
    pub fn signal_number(&self) -> Option<i32> {
        match self {
            ReloadSpec::Signal(name) => config::validate::reload_signal(name).map(|s| s as i32),
            ReloadSpec::Command(_) => None,
        }
    }
}

/// Where the daemon's stdout and stderr go.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LogSpec {
    /// Append stdout to this file; `None`: `/dev/null` (fork), the journal
    /// (systemd).
    pub stdout: Option<PathBuf>,
    /// Append stderr to this file (may equal `stdout`).
    pub stderr: Option<PathBuf>,
    /// Rotate a file once it would grow past this size (fork backend).
    pub max_bytes: Option<u64>,
    /// How many rotated files to keep.
    pub keep: u32,
}

impl LogSpec {
    /// Rotated files kept when the config does not say.
    pub const DEFAULT_KEEP: u32 = 5;

    /// The configured files with their config field names.
    pub fn files(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        [("logs.stdout", &self.stdout), ("logs.stderr", &self.stderr)]
            .into_iter()
            .filter_map(|(field, path)| path.as_ref().map(|p| (field, p)))
    }
}

impl ServiceSpec {
    /// Checks that `config` is well formed and resolves it. Pure: reads no
    /// file and asks no host (only the caller's UID and `$XDG_RUNTIME_DIR`
    /// for the defaults of `scope` and `pid_file`); the first problem is a
    /// typed error naming the field.
    pub fn from_config(config: &DaemonConfig) -> Result<ServiceSpec> {
        let template = config.instance.is_none() && config.is_template();
        let config = &config.expanded();
        config::validate::well_formed(config)?;
        let logs = config.logs.clone().unwrap_or_default();
        Ok(ServiceSpec {
            name: config.name(),
            program: config.binary_path.clone(),
            args: config.args.clone(),
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            working_dir: config.working_dir.clone(),
            pid_file: config.effective_pid_file(),
            startup_timeout: config.startup_timeout(),
            shutdown_timeout: config.shutdown_timeout(),
            scope: config.scope.unwrap_or_else(Scope::default_for_current_user),
            readiness: config.readiness.clone(),
            restart: RestartSpec::from_config(&config.restart),
            watchdog: config.watchdog_secs.map(Duration::from_secs),
            liveness: config.liveness.as_ref().map(|l| LivenessSpec {
                probe: l.probe(),
                interval: l.interval(),
                timeout: l.timeout(),
                failures: l.failures(),
            }),
            reload: ReloadSpec::from_config(config.reload.as_ref()),
            logs: LogSpec {
                stdout: logs.stdout,
                stderr: logs.stderr,
                max_bytes: logs.max_bytes,
                keep: logs.keep.unwrap_or(LogSpec::DEFAULT_KEEP),
            },
            limits: config.limits.clone(),
            run_as: RunAs {
                user: config.user.clone(),
                group: config.group.clone(),
            },
            adopt: config.adopt,
            instance: config.instance.clone(),
            host: match &config.host {
                Some(h) => Some(crate::host::SshDestination::parse(h)?),
                None => None,
            },
            template,
            pid_file_is_default: config.pid_file.as_os_str().is_empty(),
        })
    }

    /// Whether [`ServiceSpec::pid_file`] is the default location, not one
    /// the config named.
    pub fn pid_file_is_default(&self) -> bool {
        self.pid_file_is_default
    }

    /// Whether this is a template without an instance: the fields still
    /// hold `{instance}`, so it can be rendered (systemd: `NAME@.service`
    /// with the token as a specifier) but not run.
    pub fn is_template(&self) -> bool {
        self.template
    }

    /// `Ok` unless this is a template without an instance, which no
    /// backend can run (or find: its PID file holds the token).
    pub fn runnable(&self) -> Result<()> {
        if self.template {
            return Err(crate::DaemonError::invalid(
                "instance",
                format!(
                    "{} is a template ({{instance}} in its config): run one instance of it \
                     (daemonctl --instance NAME, DaemonConfig::with_instance)",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// The same daemon for another systemd scope.
    pub fn with_scope(mut self, scope: Scope) -> ServiceSpec {
        self.scope = scope;
        self
    }

    /// Whether the daemon reports readiness itself (`READY=1` over
    /// `$NOTIFY_SOCKET`): systemd's `Type=notify`.
    pub fn notify(&self) -> bool {
        matches!(self.readiness, Some(Readiness::Notify))
    }

    /// The readiness probe the caller runs (tcp, http or command), if any.
    pub fn probe(&self) -> Option<&Readiness> {
        self.readiness
            .as_ref()
            .filter(|r| !matches!(r, Readiness::Notify))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_needs_no_installed_binary() {
        let config = DaemonConfig::new("/usr/bin/not-installed-anywhere", "/tmp/x.pid");
        let spec = ServiceSpec::from_config(&config).unwrap();
        assert_eq!(spec.name, "not-installed-anywhere");
        assert_eq!(spec.logs.keep, LogSpec::DEFAULT_KEEP);
        // ... while the whole check, against this host, refuses it.
        assert!(matches!(
            config.validate(),
            Err(crate::DaemonError::BinaryNotFound { .. })
        ));
    }

    #[test]
    fn malformed_configs_are_refused_without_a_host() {
        let config = DaemonConfig::new("relative/path", "/tmp/x.pid");
        assert!(ServiceSpec::from_config(&config).is_err());
    }

    #[test]
    fn the_instance_escape_means_the_same_with_or_without_an_instance() {
        let config =
            DaemonConfig::new("/bin/true", "/tmp/{{instance}}.pid").with_args(["{{instance}}"]);
        let spec = ServiceSpec::from_config(&config).unwrap();
        assert!(!spec.is_template());
        assert_eq!(spec.args, ["{instance}"]);
        assert_eq!(spec.pid_file, std::path::Path::new("/tmp/{instance}.pid"));
        let spec = ServiceSpec::from_config(&config.clone().with_instance("a")).unwrap_err();
        // A fixed PID file (no token) would be shared by every instance.
        assert!(
            matches!(spec, crate::DaemonError::InvalidConfig { ref field, .. } if field == "pid_file")
        );
    }

    #[test]
    fn the_token_is_refused_where_it_is_not_replaced() {
        let config = DaemonConfig::new("/opt/{instance}/bin/worker", "");
        let err = ServiceSpec::from_config(&config).unwrap_err();
        assert!(
            matches!(err, crate::DaemonError::InvalidConfig { ref field, .. } if field == "binary_path"),
            "{err:?}"
        );
        // A PID file that is not text cannot hold the token reliably.
        use std::os::unix::ffi::OsStrExt;
        let mut config = DaemonConfig::new("/bin/true", "").with_instance("gpu0");
        config.pid_file = std::ffi::OsStr::from_bytes(b"/tmp/\xff{instance}.pid").into();
        let err = ServiceSpec::from_config(&config).unwrap_err();
        assert!(
            matches!(err, crate::DaemonError::InvalidConfig { ref field, .. } if field == "pid_file"),
            "{err:?}"
        );
    }

    #[test]
    fn probe_and_notify_split_readiness() {
        let mut config = DaemonConfig::new("/bin/true", "/tmp/x.pid");
        config.readiness = Some(Readiness::Notify);
        let spec = ServiceSpec::from_config(&config).unwrap();
        assert!(spec.notify() && spec.probe().is_none());
        config.readiness = Some(Readiness::Tcp {
            address: "127.0.0.1:1".into(),
            interval_ms: None,
        });
        let spec = ServiceSpec::from_config(&config).unwrap();
        assert!(!spec.notify() && spec.probe().is_some());
    }
}
