//! # daemon-lifecycle
//!
//! Start, stop, kill, restart and report on daemons from one typed
//! [`DaemonConfig`], the same way on every machine:
//!
//! - the **fork backend** ([`ForkBackend`]) runs the daemon under a small
//!   supervising process of ours, with a PID file (`12345\n`) and an identity
//!   record (process start time, boot id) beside it, so a reused PID is
//!   reported [`DaemonStatus::Stale`] and never signalled; the supervisor is
//!   reached through a control socket, so a tampered file never loses a
//!   daemon, and only files it wrote are ever trusted;
//! - the **systemd backend** ([`SystemdBackend`]) runs it as a transient or
//!   installed unit, driven over D-Bus with zbus, from the same config
//!   ([`UnitSpec`] renders both the unit file and the transient properties);
//! - the **launchd backend** ([`LaunchdBackend`]) runs it as a launchd job
//!   through `launchctl`'s modern verbs, from a plist [`PlistSpec`] renders
//!   (chosen explicitly: `auto` never picks it).
//!
//! Between the config and every backend sits one resolved model,
//! [`ServiceSpec`]: the manager builds it once (pure checks, no host
//! needed), asks the host that will run the daemon what a start needs
//! ([`host::check`]), and hands the spec to the backend, which renders it
//! (a unit, transient properties, a supervisor request).
//!
//! [`BackendChoice::Auto`] picks systemd when a manager answers on the bus of
//! the config's scope, the fork backend otherwise.
//!
//! [`DaemonManager`] is the async API; [`blocking::DaemonManager`] mirrors it
//! for callers without a runtime.
//!
//! The API can grow without breaking callers: the enums that will gain
//! members ([`DaemonError`], [`DaemonStatus`], [`BackendKind`],
//! [`BackendChoice`], [`Readiness`], ...) are `#[non_exhaustive]`, and what a
//! backend cannot do at all is [`DaemonError::Unsupported`]. A
//! [`StatusReport`] serializes (serde) to exactly what `daemonctl status
//! --json` prints; [`BackendChoice`] and [`Scope`] are `clap::ValueEnum`s
//! for programs with their own CLI.
//!
//! ## The supervisor program
//!
//! The fork backend never forks the caller without exec: it runs a
//! supervisor *program*. A program that uses the fork backend either calls
//! [`supervisor_init`] first thing in `main` (the one line it needs; the
//! program is then re-executed as the supervisor), or names a supervisor
//! program such as an installed `daemonctl` in `$DAEMON_LIFECYCLE_SUPERVISOR`
//! or with [`ForkBackend::with_supervisor`].
//!
//! ```no_run
//! use daemon_lifecycle::{DaemonConfig, DaemonManager, DaemonStatus};
//!
//! fn main() -> Result<(), daemon_lifecycle::DaemonError> {
//!     // First, before any runtime or thread: this binary is also the supervisor.
//!     daemon_lifecycle::supervisor_init();
//!     tokio::runtime::Runtime::new().expect("runtime").block_on(async {
//!         let config = DaemonConfig {
//!             binary_path: "/usr/local/bin/queen-rbee".into(),
//!             args: vec!["--config".into(), "/etc/rbee/queen.toml".into()],
//!             pid_file: "/run/queen-rbee.pid".into(),
//!             ..Default::default()
//!         };
//!         let manager = DaemonManager::new(config);
//!         let pid = manager.start().await?;
//!         println!("Started daemon with PID {pid}");
//!         match manager.status().await? {
//!             DaemonStatus::Running(pid) => println!("running with PID {pid}"),
//!             DaemonStatus::Stale(_) => manager.cleanup_stale().await?,
//!             other => eprintln!("{other}"),
//!         }
//!         manager.stop().await
//!     })
//! }
//! ```
#![warn(missing_docs)]

mod backend;
pub mod blocking;
mod config;
mod error;
pub mod fleet;
mod fork;
mod fsutil;
pub mod host;
pub mod launchd;
mod manager;
mod readiness;
mod spec;
pub mod systemd;
mod text;

pub use backend::{Backend, BackendKind, BoxFuture, DaemonStatus, ExitInfo, StatusReport};
pub use config::{
    DaemonConfig, Limit, Limits, Liveness, LogsConfig, Readiness, ReloadConfig, RestartConfig,
    RestartPolicy, Scope, MAX_CONFIG_BYTES,
};
pub use error::{DaemonError, RemoteProblem, Result};
pub use fork::{ForkBackend, SupervisorProgram, PORTABLE_ENV, SUPERVISOR_PATH_ENV};
pub use launchd::{LaunchdBackend, PlistSpec};
pub use manager::{BackendChoice, DaemonManager};
pub use spec::{LivenessSpec, LogSpec, ReloadSpec, RestartSpec, RunAs, ServiceSpec};
pub use systemd::{BusTarget, SystemdBackend, UnitSpec};

/// Turns this process into a supervisor when the fork backend started it as
/// one; otherwise returns at once (and lets the fork backend use this
/// executable as its supervisor program).
///
/// Call it first in a plain `fn main()`, before starting any runtime or
/// thread (so not inside `#[tokio::main]`): the supervisor forks once while
/// it is still single-threaded. Called inside a tokio runtime it does not
/// enable the running executable as supervisor, and the fork backend's
/// `start` then says why.
///
/// ```no_run
/// fn main() {
///     daemon_lifecycle::supervisor_init();
///     let runtime = tokio::runtime::Runtime::new().unwrap();
///     runtime.block_on(async {
///         // ... DaemonManager::new(config).start().await ...
///     });
/// }
/// ```
// The example is about `main` itself, so it shows one.
#[allow(clippy::needless_doctest_main)]
pub fn supervisor_init() {
    if std::env::var_os(fork::supervise::SUPERVISE_ENV).is_some() {
        fork::supervise::main();
    }
    // The liveness probe helper of a systemd unit (an ExecStartPost= of
    // ours): by argv, since the unit's environment is the daemon's too.
    let args: Vec<std::ffi::OsString> = std::env::args_os().take(4).collect();
    if args
        .get(1)
        .is_some_and(|a| a == systemd::LIVENESS_HELPER_ARG)
    {
        systemd::probe_helper::main(args);
    }
    let state = if tokio::runtime::Handle::try_current().is_ok() {
        fork::InitState::InsideRuntime
    } else {
        fork::InitState::Called
    };
    fork::INIT.store(state as u8, std::sync::atomic::Ordering::Relaxed);
}

// The README's examples are compiled as doctests, so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The enums that will gain members are `#[non_exhaustive]`: a `match`
/// outside the crate without a `_` arm does not compile.
///
/// ```compile_fail,E0004
/// fn name(kind: daemon_lifecycle::BackendKind) -> &'static str {
///     match kind {
///         daemon_lifecycle::BackendKind::Fork => "fork",
///         daemon_lifecycle::BackendKind::Systemd => "systemd",
///     }
/// }
/// ```
///
/// ```compile_fail,E0004
/// fn name(choice: daemon_lifecycle::BackendChoice) -> &'static str {
///     use daemon_lifecycle::BackendChoice::*;
///     match choice {
///         Auto => "auto",
///         Fork => "fork",
///         Systemd => "systemd",
///     }
/// }
/// ```
///
/// ```compile_fail,E0004
/// fn is_probe(readiness: &daemon_lifecycle::Readiness) -> bool {
///     use daemon_lifecycle::Readiness::*;
///     match readiness {
///         Notify => false,
///         Tcp { .. } | Http { .. } | Command { .. } => true,
///     }
/// }
/// ```
///
/// With the `_` arm they do:
///
/// ```
/// fn name(kind: daemon_lifecycle::BackendKind) -> &'static str {
///     match kind {
///         daemon_lifecycle::BackendKind::Fork => "fork",
///         daemon_lifecycle::BackendKind::Systemd => "systemd",
///         _ => "another backend",
///     }
/// }
/// ```
#[cfg(doctest)]
pub struct NonExhaustiveDoctests;

/// What `systemd` makes public: [`UnitSpec`], [`systemd::unit_name`], the
/// ownership marks, [`SystemdBackend::from_connection`] and the zbus it
/// takes. Its quoting and unit modules are not part of the API:
///
/// ```compile_fail,E0603
/// let _ = daemon_lifecycle::systemd::escape::unit_name_escape("a b");
/// ```
///
/// ```compile_fail,E0603
/// let _ = daemon_lifecycle::systemd::unit::unit_name("a b");
/// ```
///
/// and no zbus type leaks out but the connection a caller hands in:
///
/// ```compile_fail,E0624
/// # async fn f() {
/// let _ = daemon_lifecycle::BusTarget::Session.connect().await;
/// # }
/// ```
///
/// ```compile_fail,E0624
/// # fn f(spec: daemon_lifecycle::UnitSpec) {
/// let _ = spec.transient_properties();
/// # }
/// ```
///
/// ```
/// use daemon_lifecycle::systemd::{self, zbus, OWNERSHIP_MARK};
///
/// assert_eq!(systemd::unit_name("my daemon").unwrap(), r"my\x20daemon.service");
/// assert!(OWNERSHIP_MARK.starts_with("https://"));
/// async fn own_bus(conn: zbus::Connection) -> daemon_lifecycle::Result<systemd::SystemdBackend> {
///     systemd::SystemdBackend::from_connection(conn, daemon_lifecycle::Scope::User).await
/// }
/// ```
#[cfg(doctest)]
pub struct SystemdApiDoctests;
