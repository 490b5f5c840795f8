//! [`DaemonConfig`]: what to run and how, its TOML form, and its validation.
//!
//! Validation is the single gate every backend passes through before it touches
//! anything: a config that fails it changes nothing on disk or in the process
//! table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{DaemonError, Result};

mod file;
pub(crate) mod instance;

pub(crate) mod validate;

/// Longest accepted timeout: a year. Larger values would overflow `Instant`
/// arithmetic on some platforms and are certainly typos.
pub(crate) const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;
/// Longest accepted daemon name (it becomes a file name and a systemd unit name).
const MAX_NAME_LEN: usize = 128;

/// Everything needed to run one daemon.
///
/// Field names are the TOML keys (`env` is a table). Build it with a struct
/// literal ending in `..Default::default()`, with [`DaemonConfig::new`] and the
/// `with_*` setters, or from TOML with [`DaemonConfig::from_toml_file`]:
///
/// ```
/// use daemon_lifecycle::DaemonConfig;
///
/// let config: DaemonConfig = toml::from_str(r#"
///     binary_path = "/bin/sleep"
///     args = ["1000"]
///     pid_file = "/tmp/sleeper.pid"
///     [env]
///     RUST_LOG = "info"
/// "#).unwrap();
/// assert_eq!(config.name(), "sleep");
/// assert_eq!(config.startup_timeout_secs, 30);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Daemon name, used in messages, unit names and the default PID file
    /// path. Default: the file name of `binary_path`. 1–128 bytes, no control
    /// characters or `/`, not starting with `.` or `-`. The systemd unit is
    /// `NAME.service`, escaped with the systemd-escape algorithm unless NAME
    /// only holds `A-Z a-z 0-9 : _ . -`.
    pub name: Option<String>,

    /// Absolute path of the executable. It is executed directly, never
    /// through a shell.
    pub binary_path: PathBuf,

    /// Arguments after the executable (argv\[1..\]).
    pub args: Vec<String>,

    /// Absolute path of the PID file (content: the PID and a newline). Empty
    /// means the default location, see [`DaemonConfig::effective_pid_file`].
    pub pid_file: PathBuf,

    /// Working directory of the daemon (absolute). Default: `/`.
    pub working_dir: Option<PathBuf>,

    /// Environment of the daemon, on top of a clean base environment (see the
    /// crate docs). Keys match `[A-Za-z_][A-Za-z0-9_]*`.
    pub env: HashMap<String, String>,

    /// How long start-up may take, in seconds (1 s to a year). Default 30.
    pub startup_timeout_secs: u64,

    /// How long the daemon gets between SIGTERM and SIGKILL, in seconds (1 s to
    /// a year). Default 10.
    pub shutdown_timeout_secs: u64,

    /// systemd: run as a system unit (system bus) or a user unit (the
    /// user's bus); launchd: a daemon (`system` domain) or an agent
    /// (`gui/UID`). Default: system as root, user otherwise. The fork
    /// backend ignores it.
    pub scope: Option<Scope>,

    /// How to tell that the daemon is ready. Default: ready once running.
    pub readiness: Option<Readiness>,

    /// Whether and how a daemon that exits on its own is started again.
    pub restart: RestartConfig,

    /// The daemon must send `WATCHDOG=1` over `$NOTIFY_SOCKET` at least
    /// this often, in seconds (1 s to a year); it gets `WATCHDOG_USEC` and
    /// `WATCHDOG_PID` as systemd sets them. A missed deadline (or
    /// `WATCHDOG=trigger`) aborts it with SIGABRT and the restart policy
    /// applies; the status reason is `watchdog timeout`. systemd:
    /// `WatchdogSec=`; launchd has none (named in the plist warning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchdog_secs: Option<u64>,

    /// A probe run after the daemon is ready, for as long as it runs: after
    /// `failures` consecutive failures the daemon is stopped (SIGTERM, then
    /// SIGKILL) and the restart policy applies (as after a crash); the status
    /// reason is `liveness probe failed: …`. See [`Liveness`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Liveness>,

    /// How `reload` asks the running daemon to re-read its configuration.
    /// Default: SIGHUP to its main process. See [`ReloadConfig`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadConfig>,

    /// Where stdout and stderr go. Default: `/dev/null` (fork backend), the
    /// journal (systemd backend).
    pub logs: Option<LogsConfig>,

    /// Resource limits applied before the daemon starts.
    pub limits: Limits,

    /// Run as this user (needs root; systemd: system scope only).
    pub user: Option<String>,

    /// Run with this primary group (needs root; systemd: system scope only).
    pub group: Option<String>,

    /// systemd and launchd: act on a unit (a launchd job, or plist) of this
    /// name even though daemon-lifecycle did not create it (no ownership
    /// marker; for launchd, loaded from another plist, or a plist running
    /// another program), taking it over. Default false: such a unit is
    /// refused with [`crate::DaemonError::NotOwned`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,

    /// Run this instance of a template config: `{instance}` in `args`,
    /// `env` values, `working_dir`, `pid_file` and the log paths is replaced
    /// by it (`{{instance}}` stands for a literal `{instance}`). systemd:
    /// the unit is `NAME@INSTANCE.service` (the instance escaped as
    /// `systemd-escape` does); fork backend: the default PID file is
    /// `NAME@INSTANCE.pid`. 1–128 bytes, no control characters or `/`.
    /// Usually given per command (`daemonctl --instance gpu0`,
    /// [`DaemonConfig::with_instance`]) rather than in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,

    /// systemd only: run the daemon on another machine, `user@hostname[:port]`
    /// (user and port optional: ssh's config decides), driving its systemd
    /// over `ssh` and `systemd-stdio-bridge`, as `systemctl -H` does. The
    /// fork and launchd backends refuse it; `auto` means systemd there.
    /// Host checks, readiness probes and unit files are the remote
    /// machine's. See [`crate::host::SshHost`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Which systemd manager runs the unit. Also a [`clap::ValueEnum`]
/// (`system`, `user`), as `daemonctl --scope` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The system manager, over the system bus (`/etc/systemd/system`).
    System,
    /// The calling user's manager, over the session bus (`~/.config/systemd/user`).
    User,
}

impl Scope {
    /// The default scope: system as root, user otherwise.
    pub fn default_for_current_user() -> Scope {
        if nix::unistd::Uid::effective().is_root() {
            Scope::System
        } else {
            Scope::User
        }
    }

    /// `system` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::System => "system",
            Scope::User => "user",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "system" => Ok(Scope::System),
            "user" => Ok(Scope::User),
            other => Err(format!(
                "unknown scope {} (expected system or user)",
                crate::text::quote(other)
            )),
        }
    }
}

/// How readiness is detected. TOML: a table with `kind` and the kind's keys,
/// e.g. `readiness = { kind = "tcp", address = "127.0.0.1:8080" }`.
///
/// New kinds may be added (hence `#[non_exhaustive]`): a `match` outside
/// this crate needs a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum Readiness {
    /// The daemon sends `READY=1` over `$NOTIFY_SOCKET` (sd_notify), as a
    /// systemd `Type=notify` service does.
    Notify,
    /// A TCP connection to `address` succeeds.
    Tcp {
        /// `host:port`, e.g. `127.0.0.1:8080`.
        address: String,
        /// Time between attempts, in milliseconds (default 100).
        interval_ms: Option<u64>,
    },
    /// An HTTP GET of `url` answers 2xx.
    Http {
        /// `http://host:port/path`.
        url: String,
        /// Time between attempts, in milliseconds (default 100).
        interval_ms: Option<u64>,
    },
    /// A command exits 0 (executed directly, no shell).
    Command {
        /// Absolute executable and its arguments.
        argv: Vec<String>,
        /// Time between attempts, in milliseconds (default 100).
        interval_ms: Option<u64>,
    },
}

impl Readiness {
    /// Default time between probe attempts.
    pub const DEFAULT_INTERVAL_MS: u64 = 100;

    /// The probe interval (the default where unset; none for `notify`).
    pub fn interval(&self) -> std::time::Duration {
        let ms = match self {
            Readiness::Notify => None,
            Readiness::Tcp { interval_ms, .. }
            | Readiness::Http { interval_ms, .. }
            | Readiness::Command { interval_ms, .. } => *interval_ms,
        };
        std::time::Duration::from_millis(ms.unwrap_or(Self::DEFAULT_INTERVAL_MS))
    }
}

/// In words, for messages and logs: `notify`, `tcp 127.0.0.1:8080`,
/// `http http://...`, `command /usr/bin/check --quick`.
impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Readiness::Notify => f.write_str("notify"),
            Readiness::Tcp { address, .. } => {
                write!(f, "tcp {}", crate::text::clip_middle(address, 200))
            }
            Readiness::Http { url, .. } => write!(f, "http {}", crate::text::clip_middle(url, 200)),
            Readiness::Command { argv, .. } => {
                write!(
                    f,
                    "command {}",
                    crate::text::clip_middle(&argv.join(" "), 200)
                )
            }
        }
    }
}

/// A liveness probe: the readiness probe kinds (same code), run every
/// `interval_ms` once the daemon is ready. TOML: a table with `kind` and
/// the kind's keys, e.g.
/// `liveness = { kind = "http", url = "http://127.0.0.1:8080/health", failures = 3 }`.
///
/// Who runs it outlives the caller: on the fork backend the daemon's
/// supervisor, on systemd a small probe process inside the unit (see the
/// README), so it keeps working after `daemonctl` exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum Liveness {
    /// A TCP connection to `address` succeeds.
    Tcp {
        /// `host:port`.
        address: String,
        /// Time between probes, in milliseconds (default 10000).
        interval_ms: Option<u64>,
        /// How long one probe may take, in milliseconds (default 1000).
        timeout_ms: Option<u64>,
        /// Consecutive failures that mean dead (default 3).
        failures: Option<u32>,
    },
    /// An HTTP GET of `url` answers 2xx.
    Http {
        /// `http://host:port/path`.
        url: String,
        /// Time between probes, in milliseconds (default 10000).
        interval_ms: Option<u64>,
        /// How long one probe may take, in milliseconds (default 1000).
        timeout_ms: Option<u64>,
        /// Consecutive failures that mean dead (default 3).
        failures: Option<u32>,
    },
    /// A command exits 0 (executed directly, no shell).
    Command {
        /// Absolute executable and its arguments.
        argv: Vec<String>,
        /// Time between probes, in milliseconds (default 10000).
        interval_ms: Option<u64>,
        /// How long one probe may take, in milliseconds (default 1000).
        timeout_ms: Option<u64>,
        /// Consecutive failures that mean dead (default 3).
        failures: Option<u32>,
    },
}

impl Liveness {
    /// Default time between probes.
    pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
    /// Default bound of one probe.
    pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
    /// Default number of consecutive failures that mean dead.
    pub const DEFAULT_FAILURES: u32 = 3;

    fn knobs(&self) -> (Option<u64>, Option<u64>, Option<u32>) {
        match self {
            Liveness::Tcp {
                interval_ms,
                timeout_ms,
                failures,
                ..
            }
            | Liveness::Http {
                interval_ms,
                timeout_ms,
                failures,
                ..
            }
            | Liveness::Command {
                interval_ms,
                timeout_ms,
                failures,
                ..
            } => (*interval_ms, *timeout_ms, *failures),
        }
    }

    /// Time between probes.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.knobs().0.unwrap_or(Self::DEFAULT_INTERVAL_MS))
    }

    /// Bound of one probe.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.knobs().1.unwrap_or(Self::DEFAULT_TIMEOUT_MS))
    }

    /// Consecutive failures that mean dead.
    pub fn failures(&self) -> u32 {
        self.knobs().2.unwrap_or(Self::DEFAULT_FAILURES)
    }

    /// The same check as a [`Readiness`] probe: both run the one probe code.
    pub fn probe(&self) -> Readiness {
        let interval_ms = Some(self.interval().as_millis() as u64);
        match self {
            Liveness::Tcp { address, .. } => Readiness::Tcp {
                address: address.clone(),
                interval_ms,
            },
            Liveness::Http { url, .. } => Readiness::Http {
                url: url.clone(),
                interval_ms,
            },
            Liveness::Command { argv, .. } => Readiness::Command {
                argv: argv.clone(),
                interval_ms,
            },
        }
    }
}

/// The `reload` table: a signal to the daemon's main process
/// (`reload = { signal = "HUP" }`, the default) or a command run directly
/// (`reload = { argv = ["/usr/sbin/nginx", "-s", "reload"] }`, with
/// `$MAINPID` in its environment). Exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ReloadConfig {
    /// Signal name (`HUP`, `USR1`, `SIGUSR2`, …); not KILL or STOP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Absolute executable and its arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
}

/// When a daemon that exited on its own is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never (default).
    #[default]
    Never,
    /// After an unclean exit (non-zero code, or a signal other than
    /// HUP/INT/TERM/PIPE).
    OnFailure,
    /// After any exit that `stop`/`kill` did not ask for.
    Always,
}

impl RestartPolicy {
    /// `never`, `on-failure` or `always`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

/// The `restart` table. Defaults match systemd's: at most 5 starts in 10 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartConfig {
    /// When to restart.
    pub policy: RestartPolicy,
    /// Delay before the first restart, in milliseconds (default 100).
    pub delay_ms: u64,
    /// Cap of the exponentially growing delay, in milliseconds (default 10000).
    pub max_delay_ms: u64,
    /// At most this many restarts within `window_secs` (default 5); then the
    /// daemon stays down with status `Failed("start limit hit")`.
    pub max_restarts: u32,
    /// The window for `max_restarts`, in seconds (default 10).
    pub window_secs: u64,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            policy: RestartPolicy::Never,
            delay_ms: 100,
            max_delay_ms: 10_000,
            max_restarts: 5,
            window_secs: 10,
        }
    }
}

/// The `logs` table: append stdout/stderr to files, rotated by size.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// File for stdout (absolute). Unset: `/dev/null`.
    pub stdout: Option<PathBuf>,
    /// File for stderr (absolute; may equal `stdout`). Unset: `/dev/null`.
    pub stderr: Option<PathBuf>,
    /// Rotate a file once it would grow past this size (fork backend).
    pub max_bytes: Option<u64>,
    /// How many rotated files to keep: `name.1` … `name.keep` (default 5).
    pub keep: Option<u32>,
}

/// The `limits` table, applied with `setrlimit` (fork) or the matching
/// systemd settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open files (`RLIMIT_NOFILE`, `LimitNOFILE=`).
    pub nofile: Option<u64>,
    /// Memory in bytes (`RLIMIT_AS`, `MemoryMax=`).
    pub memory_bytes: Option<u64>,
    /// CPU seconds (`RLIMIT_CPU`, `LimitCPU=`).
    pub cpu_secs: Option<u64>,
    /// Processes (`RLIMIT_NPROC`, `TasksMax=`).
    pub processes: Option<u64>,
}

/// One of the [`Limits`], for code that treats them alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// `limits.nofile`.
    OpenFiles,
    /// `limits.memory_bytes`.
    MemoryBytes,
    /// `limits.cpu_secs`.
    CpuSecs,
    /// `limits.processes`.
    Processes,
}

impl Limit {
    /// The config field, e.g. `limits.nofile`.
    pub fn field(self) -> &'static str {
        match self {
            Limit::OpenFiles => "limits.nofile",
            Limit::MemoryBytes => "limits.memory_bytes",
            Limit::CpuSecs => "limits.cpu_secs",
            Limit::Processes => "limits.processes",
        }
    }
}

impl Limits {
    /// Every limit with its value (`None`: not set): the one list of them
    /// that validation and every backend's mapping walk.
    pub fn entries(&self) -> [(Limit, Option<u64>); 4] {
        [
            (Limit::OpenFiles, self.nofile),
            (Limit::MemoryBytes, self.memory_bytes),
            (Limit::CpuSecs, self.cpu_secs),
            (Limit::Processes, self.processes),
        ]
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            name: None,
            binary_path: PathBuf::new(),
            args: Vec::new(),
            pid_file: PathBuf::new(),
            working_dir: None,
            env: HashMap::new(),
            startup_timeout_secs: 30,
            shutdown_timeout_secs: 10,
            scope: None,
            readiness: None,
            restart: RestartConfig::default(),
            watchdog_secs: None,
            liveness: None,
            reload: None,
            logs: None,
            limits: Limits::default(),
            user: None,
            group: None,
            adopt: false,
            instance: None,
            host: None,
        }
    }
}

impl DaemonConfig {
    /// A config for `binary_path` with its PID file at `pid_file` and every
    /// other field at its default.
    pub fn new(binary_path: impl Into<PathBuf>, pid_file: impl Into<PathBuf>) -> Self {
        DaemonConfig {
            binary_path: binary_path.into(),
            pid_file: pid_file.into(),
            ..Default::default()
        }
    }

    /// Sets the name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the arguments.
    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Adds one environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the working directory.
    pub fn with_working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Sets the start-up timeout in seconds.
    pub fn with_startup_timeout_secs(mut self, secs: u64) -> Self {
        self.startup_timeout_secs = secs;
        self
    }

    /// Sets the shutdown timeout (SIGTERM → SIGKILL) in seconds.
    pub fn with_shutdown_timeout_secs(mut self, secs: u64) -> Self {
        self.shutdown_timeout_secs = secs;
        self
    }

    /// Reads and parses a TOML file. Unknown keys are errors (a typo must not be
    /// silently ignored). The result is not yet validated.
    ///
    /// Reading is bounded: a config is a regular file of at most
    /// [`MAX_CONFIG_BYTES`]; a FIFO, a device (`/dev/zero`), a directory or
    /// a larger file is refused at once with [`DaemonError::ConfigRead`]
    /// saying why, never waited on or read without end. Parse errors quote at
    /// most about 200 bytes of the file, with control characters escaped.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = file::read_config(path).map_err(|source| DaemonError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| DaemonError::ConfigParse {
            path: path.to_owned(),
            message: file::parse_message(&text, &e),
        })
    }

    /// The daemon's name: `name`, or else the file name of `binary_path`.
    pub fn name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self
                .binary_path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// The PID file in use: `pid_file`, or when it is empty
    /// `$XDG_RUNTIME_DIR/daemon-lifecycle/NAME.pid` for a user with a runtime
    /// directory, `/run/daemon-lifecycle/NAME.pid` for root, and
    /// `/tmp/daemon-lifecycle-UID/NAME.pid` otherwise. For an instance,
    /// `{instance}` in `pid_file` is replaced, and the default is
    /// `NAME@INSTANCE.pid`.
    pub fn effective_pid_file(&self) -> PathBuf {
        if !self.pid_file.as_os_str().is_empty() {
            return match (&self.instance, self.pid_file.to_str()) {
                (Some(i), Some(text)) => PathBuf::from(instance::substitute(text, i)),
                (None, Some(text)) if !instance::uses_token(text) => {
                    PathBuf::from(instance::substitute(text, instance::TOKEN))
                }
                _ => self.pid_file.clone(),
            };
        }
        let file = match &self.instance {
            Some(i) => format!("{}@{i}.pid", self.name()),
            None => format!("{}.pid", self.name()),
        };
        default_runtime_dir().join(file)
    }

    /// Sets the instance of a template config (see [`DaemonConfig::instance`]).
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Runs the daemon on another machine (see [`DaemonConfig::host`]).
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Whether the config uses `{instance}` anywhere it is replaced: a
    /// template, which runs only as an instance.
    pub fn is_template(&self) -> bool {
        let path = |p: &Path| p.to_str().is_some_and(instance::uses_token);
        self.args.iter().any(|a| instance::uses_token(a))
            || self.env.values().any(|v| instance::uses_token(v))
            || self.working_dir.as_deref().is_some_and(path)
            || path(&self.pid_file)
            || self.logs.as_ref().is_some_and(|l| {
                l.stdout.as_deref().is_some_and(path) || l.stderr.as_deref().is_some_and(path)
            })
    }

    /// The config with `{instance}` replaced everywhere it stands for the
    /// instance (the config itself when no instance is set).
    pub(crate) fn expanded(&self) -> DaemonConfig {
        let i = match self.instance.as_deref() {
            Some(i) => i,
            // A template keeps its tokens, for rendering as NAME@.service.
            None if self.is_template() => return self.clone(),
            // No token to replace: only `{{instance}}` escapes to undo.
            None => instance::TOKEN,
        };
        let sub = |t: &str| instance::substitute(t, i);
        let sub_path = |p: &PathBuf| match p.to_str() {
            Some(t) => PathBuf::from(sub(t)),
            None => p.clone(),
        };
        let mut c = self.clone();
        c.args = self.args.iter().map(|a| sub(a)).collect();
        c.env = self.env.iter().map(|(k, v)| (k.clone(), sub(v))).collect();
        c.working_dir = self.working_dir.as_ref().map(sub_path);
        // `pid_file` stays as written: `effective_pid_file` replaces the
        // token once (and names the default after the instance).
        if let Some(logs) = &mut c.logs {
            logs.stdout = logs.stdout.as_ref().map(sub_path);
            logs.stderr = logs.stderr.as_ref().map(sub_path);
        }
        c
    }

    /// The start-up timeout as a [`Duration`].
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_secs(self.startup_timeout_secs)
    }

    /// The shutdown timeout as a [`Duration`].
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// Checks every field, then checks this machine can run it: the pure
    /// well-formedness checks of [`crate::ServiceSpec::from_config`]
    /// followed by the host checks of [`crate::host::check`] against
    /// [`crate::host::LocalHost`]. The first problem found is returned as a
    /// typed error naming the field. Nothing is changed on disk.
    pub fn validate(&self) -> Result<()> {
        let spec = crate::spec::ServiceSpec::from_config(self)?;
        crate::host::check(&crate::host::LocalHost, &spec)
    }
}

/// Largest config file [`DaemonConfig::from_toml_file`] reads: 1 MiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Where default PID files go, see [`DaemonConfig::effective_pid_file`].
fn default_runtime_dir() -> PathBuf {
    let uid = nix::unistd::Uid::effective();
    if uid.is_root() {
        return PathBuf::from("/run/daemon-lifecycle");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir).join("daemon-lifecycle"),
        _ => PathBuf::from(format!("/tmp/daemon-lifecycle-{uid}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_config() -> DaemonConfig {
        DaemonConfig::new("/bin/sh", "/tmp/x.pid")
    }

    fn field_of(err: DaemonError) -> String {
        match err {
            DaemonError::InvalidConfig { field, .. } => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_seed() {
        let c = ok_config();
        assert_eq!(c.startup_timeout_secs, 30);
        assert_eq!(c.shutdown_timeout_secs, 10);
        assert_eq!(c.name(), "sh");
        c.validate().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let c = ok_config().with_name("bad\nname");
        assert_eq!(field_of(c.validate().unwrap_err()), "name");
        let c = ok_config().with_name("a/b");
        assert_eq!(field_of(c.validate().unwrap_err()), "name");
        ok_config().with_name("my daemon é").validate().unwrap();
        let c = ok_config().with_name("");
        assert_eq!(field_of(c.validate().unwrap_err()), "name");
        let c = ok_config().with_name(".hidden");
        assert_eq!(field_of(c.validate().unwrap_err()), "name");
        let c = ok_config().with_env("1BAD", "x");
        assert_eq!(field_of(c.validate().unwrap_err()), "env.1BAD");
        let c = ok_config().with_env("A-B", "x");
        assert_eq!(field_of(c.validate().unwrap_err()), "env.A-B");
        let c = ok_config().with_env("GOOD", "a\0b");
        assert_eq!(field_of(c.validate().unwrap_err()), "env.GOOD");
        let c = ok_config().with_args(["ok", "x\0y"]);
        assert_eq!(field_of(c.validate().unwrap_err()), "args[1]");
        let c = DaemonConfig::new("/bin/sh", "relative.pid");
        assert_eq!(field_of(c.validate().unwrap_err()), "pid_file");
        let c = DaemonConfig::new("/bin/sh", "/tmp/dir/");
        assert_eq!(field_of(c.validate().unwrap_err()), "pid_file");
        let c = DaemonConfig::new("bin/sh", "/tmp/x.pid");
        assert_eq!(field_of(c.validate().unwrap_err()), "binary_path");
        let c = ok_config().with_working_dir("rel");
        assert_eq!(field_of(c.validate().unwrap_err()), "working_dir");
        let c = ok_config().with_startup_timeout_secs(0);
        assert_eq!(field_of(c.validate().unwrap_err()), "startup_timeout_secs");
        let c = ok_config().with_shutdown_timeout_secs(u64::MAX);
        assert_eq!(field_of(c.validate().unwrap_err()), "shutdown_timeout_secs");
    }

    #[test]
    fn missing_and_non_executable_binaries_are_typed() {
        let c = DaemonConfig::new("/nonexistent/daemon", "/tmp/x.pid");
        assert!(matches!(
            c.validate(),
            Err(DaemonError::BinaryNotFound { .. })
        ));
        let file = tempfile::NamedTempFile::new().unwrap(); // mode 0600: not executable
                                                            // (Named: the temp file's own name starts with '.'.)
        let c = DaemonConfig::new(file.path(), "/tmp/x.pid").with_name("x");
        assert!(matches!(
            c.validate(),
            Err(DaemonError::BinaryNotExecutable { .. })
        ));
        let c = DaemonConfig::new("/tmp", "/tmp/x.pid");
        assert!(matches!(
            c.validate(),
            Err(DaemonError::BinaryNotExecutable { .. })
        ));
    }

    #[test]
    fn toml_rejects_unknown_keys_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.toml");
        std::fs::write(&path, "binary_path = \"/bin/sh\"\nbinary_pth = \"x\"\n").unwrap();
        let err = DaemonConfig::from_toml_file(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DaemonError::ConfigParse { .. }));
        assert!(
            msg.contains("d.toml") && msg.contains("binary_pth"),
            "{msg}"
        );
    }

    #[test]
    fn full_toml_round_trips() {
        let text = r#"
            binary_path = "/bin/sh"
            scope = "user"
            readiness = { kind = "tcp", address = "127.0.0.1:8080", interval_ms = 50 }
            restart = { policy = "on-failure", delay_ms = 200, max_restarts = 3 }
            logs = { stdout = "/tmp/out.log", stderr = "/tmp/out.log", max_bytes = 1024, keep = 2 }
            limits = { nofile = 1024, memory_bytes = 1000000000 }
            user = "nobody"
            group = "nogroup"
        "#;
        let c: DaemonConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.scope, Some(Scope::User));
        assert_eq!(c.restart.policy, RestartPolicy::OnFailure);
        assert_eq!(c.restart.window_secs, 10);
        assert_eq!(c.readiness.as_ref().unwrap().interval().as_millis(), 50);
        let again: DaemonConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        for kind in [
            r#"readiness = { kind = "notify" }"#,
            r#"readiness = { kind = "http", url = "http://127.0.0.1:1/health" }"#,
            r#"readiness = { kind = "command", argv = ["/bin/true"] }"#,
        ] {
            let c: DaemonConfig =
                toml::from_str(&format!("binary_path = \"/bin/sh\"\n{kind}")).unwrap();
            c.validate().unwrap();
        }
        assert!(toml::from_str::<DaemonConfig>(
            "binary_path = \"/bin/sh\"\nreadiness = { kind = \"tcp\", adress = \"x\" }"
        )
        .is_err());
        assert!(toml::from_str::<DaemonConfig>(
            "binary_path = \"/bin/sh\"\nrestart = { policy = \"sometimes\" }"
        )
        .is_err());
    }

    #[test]
    fn bad_extended_fields_are_named() {
        let base = || ok_config();
        let mut c = base();
        c.readiness = Some(Readiness::Tcp {
            address: "localhost".into(),
            interval_ms: None,
        });
        assert_eq!(field_of(c.validate().unwrap_err()), "readiness.address");
        c.readiness = Some(Readiness::Http {
            url: "https://x/".into(),
            interval_ms: None,
        });
        assert_eq!(field_of(c.validate().unwrap_err()), "readiness.url");
        c.readiness = Some(Readiness::Command {
            argv: vec!["true".into()],
            interval_ms: None,
        });
        assert_eq!(field_of(c.validate().unwrap_err()), "readiness.argv");
        c.readiness = Some(Readiness::Tcp {
            address: "127.0.0.1:80".into(),
            interval_ms: Some(1),
        });
        assert_eq!(field_of(c.validate().unwrap_err()), "readiness.interval_ms");
        let mut c = base();
        c.restart.max_delay_ms = 1;
        assert_eq!(field_of(c.validate().unwrap_err()), "restart.max_delay_ms");
        let mut c = base();
        c.restart.max_restarts = 0;
        assert_eq!(field_of(c.validate().unwrap_err()), "restart.max_restarts");
        let mut c = base();
        c.logs = Some(LogsConfig {
            stdout: Some("rel.log".into()),
            ..Default::default()
        });
        assert_eq!(field_of(c.validate().unwrap_err()), "logs.stdout");
        let mut c = base();
        c.limits.nofile = Some(0);
        assert_eq!(field_of(c.validate().unwrap_err()), "limits.nofile");
        let mut c = base();
        c.user = Some("root\nUser=evil".into());
        assert_eq!(field_of(c.validate().unwrap_err()), "user");
        let mut c = base();
        c.watchdog_secs = Some(0);
        assert_eq!(field_of(c.validate().unwrap_err()), "watchdog_secs");
        let liveness = |text: &str| {
            let mut c = base();
            c.liveness = Some(toml::from_str(text).unwrap());
            c.validate().err().map(field_of)
        };
        assert_eq!(liveness("kind = \"tcp\"\naddress = \"127.0.0.1:80\""), None);
        assert_eq!(
            liveness("kind = \"tcp\"\naddress = \"nowhere\""),
            Some("liveness.address".into())
        );
        assert_eq!(
            liveness("kind = \"http\"\nurl = \"https://x/\""),
            Some("liveness.url".into())
        );
        assert_eq!(
            liveness("kind = \"command\"\nargv = [\"check\"]"),
            Some("liveness.argv".into())
        );
        assert_eq!(
            liveness("kind = \"tcp\"\naddress = \"127.0.0.1:80\"\nfailures = 0"),
            Some("liveness.failures".into())
        );
        assert_eq!(
            liveness("kind = \"tcp\"\naddress = \"127.0.0.1:80\"\ntimeout_ms = 1"),
            Some("liveness.timeout_ms".into())
        );
        let reload = |text: &str| {
            let mut c = base();
            c.reload = Some(toml::from_str(text).unwrap());
            c.validate().err().map(field_of)
        };
        assert_eq!(reload("signal = \"USR1\""), None);
        assert_eq!(reload("signal = \"SIGHUP\""), None);
        assert_eq!(reload("signal = \"KILL\""), Some("reload.signal".into()));
        assert_eq!(reload("signal = \"NOPE\""), Some("reload.signal".into()));
        assert_eq!(reload("argv = [\"nginx\"]"), Some("reload.argv".into()));
        assert_eq!(reload("argv = []"), Some("reload.argv".into()));
        assert_eq!(
            reload("signal = \"HUP\"\nargv = [\"/bin/true\"]"),
            Some("reload".into())
        );
        // Unknown keys are refused, as everywhere.
        assert!(toml::from_str::<DaemonConfig>(
            "binary_path = \"/bin/sh\"\nreload = { signl = \"HUP\" }"
        )
        .is_err());
        assert!(toml::from_str::<DaemonConfig>(
            "binary_path = \"/bin/sh\"\nliveness = { kind = \"tcp\", address = \"127.0.0.1:1\", failurs = 2 }"
        )
        .is_err());
    }

    #[test]
    fn health_keys_resolve_into_the_spec() {
        let c: DaemonConfig = toml::from_str(
            "binary_path = \"/bin/sh\"\nwatchdog_secs = 5\nreload = { signal = \"usr2\" }\n\
             liveness = { kind = \"http\", url = \"http://127.0.0.1:1/\", interval_ms = 500 }",
        )
        .unwrap();
        let spec = crate::ServiceSpec::from_config(&c).unwrap();
        assert_eq!(spec.watchdog, Some(Duration::from_secs(5)));
        assert_eq!(spec.reload, crate::ReloadSpec::Signal("USR2".into()));
        assert_eq!(spec.reload.signal_number(), Some(libc::SIGUSR2));
        let l = spec.liveness.unwrap();
        assert_eq!(
            (l.interval.as_millis(), l.timeout.as_millis(), l.failures),
            (500, 1000, 3)
        );
        let again: DaemonConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        // Nothing said: SIGHUP.
        let spec = crate::ServiceSpec::from_config(&ok_config()).unwrap();
        assert_eq!(spec.reload, crate::ReloadSpec::Signal("HUP".into()));
    }

    #[test]
    fn default_pid_file_uses_the_name() {
        let c = DaemonConfig::new("/bin/sh", "").with_name("queen");
        let p = c.effective_pid_file();
        assert!(p.is_absolute());
        assert!(p.ends_with("queen.pid"), "{}", p.display());
    }
}
