//! `daemonctl`: start, stop, kill, restart, check and clean up a daemon
//! described by a TOML file. Also the fork backend's supervisor program.

#[path = "daemonctl/fleet.rs"]
mod fleet;
#[path = "daemonctl/list.rs"]
mod list;
#[path = "daemonctl/logs.rs"]
mod logs;
#[path = "daemonctl/progress.rs"]
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use daemon_lifecycle::host::{self, LocalHost};
use daemon_lifecycle::{
    BackendChoice, BackendKind, DaemonConfig, DaemonError, DaemonManager, DaemonStatus,
    LaunchdBackend, PlistSpec, Scope, ServiceSpec, SystemdBackend, UnitSpec,
};

/// Start, stop, check and report on a daemon described by a TOML config
/// (keys: the DaemonConfig fields), on systemd or the fork backend.
#[derive(Debug, Parser)]
#[command(name = "daemonctl", version)]
struct Cli {
    /// Which backend runs the daemon.
    #[arg(long, global = true, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,

    /// systemd scope: the system manager (default as root) or the user's; the
    /// fork backend ignores it.
    #[arg(long, global = true, value_enum)]
    scope: Option<Scope>,

    /// systemd only: act on a unit of the config's name that daemon-lifecycle
    /// did not create (no ownership marker), taking it over (as `adopt = true`).
    #[arg(long, global = true)]
    adopt: bool,

    /// Drive this instance of a template config: `{instance}` in it is
    /// replaced by NAME (systemd unit `NAME@INSTANCE.service`).
    #[arg(long, global = true, value_name = "NAME")]
    instance: Option<String>,

    /// Run the daemon on this machine over ssh, `user@hostname[:port]`
    /// (overrides the config's `host`; systemd only).
    #[arg(long, global = true, value_name = "HOST", conflicts_with = "hosts")]
    host: Option<String>,

    /// Run the command on each of these hosts at once (comma-separated
    /// `user@hostname[:port]`): one result per host, a table (or with
    /// --json one JSON object per line); exit 0 only if every host
    /// succeeded. start, stop, kill, restart, status, wait-ready, cleanup.
    #[arg(long, global = true, value_name = "HOST,...", value_delimiter = ',')]
    hosts: Vec<String>,

    /// With --hosts: how many hosts are worked on at once.
    #[arg(long, global = true, value_name = "N", default_value_t = daemon_lifecycle::fleet::DEFAULT_PARALLEL)]
    parallel: usize,

    /// The ssh config file for remote hosts (`ssh -F FILE`; default: ssh's
    /// own, or $DAEMON_LIFECYCLE_SSH_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    ssh_config: Option<PathBuf>,

    /// Seconds that reaching and logging in to a remote host may take
    /// (ssh's ConnectTimeout and our bound on the login; apart from the
    /// operation's own timeouts).
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10)]
    connect_timeout: u64,

    /// More log output on stderr (-v: info, -vv: debug, -vvv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

/// The help of every `CONFIG` argument.
const CONFIG_HELP: &str = "The daemon's config file (TOML; keys: the DaemonConfig fields)";

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the daemon (or find it running) and print its PID.
    ///
    /// Returns once it is ready (readiness in the config), printing only
    /// the PID on stdout.
    Start {
        /// With --hosts: one JSON object per host instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Stop it: SIGTERM, then SIGKILL after shutdown_timeout_secs.
    Stop {
        /// With --hosts: one JSON object per host instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// SIGKILL all its processes at once.
    Kill {
        /// With --hosts: one JSON object per host instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Stop it if running, start it again, print the new PID.
    Restart {
        /// With --hosts: one JSON object per host instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Ask the running daemon to reload its configuration (no restart).
    ///
    /// The config's `reload`: SIGHUP (default) or another signal to its
    /// main process, or a command; a notify daemon is waited for until it
    /// sends READY=1 again. Re-reads nothing itself: the daemon re-reads its
    /// own files. A daemon that is not running: exit 7.
    Reload {
        /// With --hosts: one JSON object per host instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Report its state in one line, or one JSON object.
    ///
    /// Exit code: 0 running or starting, 1 stale, 3 stopped or failed,
    /// 4 unknown (an error).
    Status {
        /// Print one JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Wait until it is ready.
    WaitReady {
        /// Seconds to wait (default: the config's startup_timeout_secs).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// With --hosts: one JSON object per host instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Remove a stale PID file and identity record, or clear a failed state.
    Cleanup {
        /// With --hosts: one JSON object per host instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Supervise the daemon in the foreground until it is gone (fork backend).
    ///
    /// Meant as a container entrypoint: as PID 1 it reaps orphans and
    /// forwards SIGTERM and SIGINT to the daemon. The PID file, restarts,
    /// logs and limits work as with `start`, so `status` and `stop` work
    /// from another shell. The exit code is 0 after a requested stop, else
    /// the daemon's own (128 + the signal number when a signal ended it).
    /// With --backend systemd it is refused (exit 3): systemd supervises its
    /// units itself.
    Run {
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Write the persistent systemd unit (atomically; reload only if changed),
    /// or with --backend launchd the plist (loaded at the next login or boot).
    Install {
        /// Also enable it (EnableUnitFiles; launchd: `launchctl enable`).
        #[arg(long)]
        enable: bool,
        /// Unit directory (default /etc/systemd/system, or ~/.config/systemd/user for --scope user;
        /// launchd: /Library/LaunchDaemons, or ~/Library/LaunchAgents).
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Stop, disable and remove the persistent unit, then reload (launchd:
    /// boot the job out, remove the plist, clear a `disable`).
    Uninstall {
        /// Unit (or plist) directory it was installed into.
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Print the rendered unit or plist, or write it into a package tree.
    ///
    /// Needs no manager and no installed binary, so it takes no backend;
    /// --scope picks a system or a user unit, --format a systemd unit or a
    /// launchd plist. Nothing is started.
    Render {
        /// Output format.
        #[arg(long, value_enum, default_value_t = RenderFormat::Systemd)]
        format: RenderFormat,
        /// Write into this package root (DESTDIR) instead of printing:
        /// usr/lib/systemd/system/UNIT (system scope) or
        /// usr/lib/systemd/user/UNIT (user scope); launchd:
        /// Library/LaunchDaemons/LABEL.plist or Library/LaunchAgents/LABEL.plist;
        /// prints each path written.
        #[arg(long, value_name = "DESTDIR")]
        out: Option<PathBuf>,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
        #[command(flatten)]
        ignored: NoBackend,
    },
    /// List daemons, one row each: name, backend, state, PID, uptime,
    /// restarts, last exit, STATUS= text.
    ///
    /// With configs or directories of configs (their *.toml files), those
    /// daemons; with none, every daemon this user started on the fork
    /// backend (its registry) and the systemd units of ours (found by their
    /// ownership marker). A config that cannot be read is a row with its
    /// error. Colour only on a terminal, never with NO_COLOR.
    List {
        /// Print a JSON array of what `status --json` prints, one per daemon
        /// (`{"config", "error"}` for a row with no report).
        #[arg(long)]
        json: bool,
        /// Config files, or directories of them (*.toml); none: every daemon started here.
        #[arg(value_name = "DIR|CONFIG")]
        paths: Vec<PathBuf>,
    },
    /// Show the daemon's output: its log files across rotations, or its
    /// journal (systemd without log files).
    ///
    /// With logs.stdout/logs.stderr in the config: those files, oldest
    /// rotation first (name.N ... name.1, name); on systemd without them,
    /// the unit's journal (journalctl --output=json, read as entries); on
    /// the fork backend without them the output went to /dev/null, and it
    /// says so.
    Logs {
        /// Keep printing new lines as they come, through rotations (Ctrl-C ends it).
        #[arg(short, long)]
        follow: bool,
        /// Print only the last N lines (default: all; with -f, 10).
        #[arg(short = 'n', long, value_name = "N")]
        lines: Option<usize>,
        #[arg(help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Print a shell completion script for daemonctl on stdout.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        #[command(flatten)]
        ignored: NoBackend,
        #[command(flatten)]
        no_scope: NoScope,
    },
    /// Print daemonctl's man page (roff) on stdout.
    Man {
        #[command(flatten)]
        ignored: NoBackend,
        #[command(flatten)]
        no_scope: NoScope,
    },
}

/// The global options a command has no use for, hidden from its help (and
/// its completions): a subcommand's own argument of the same name keeps the
/// global one from being offered there. Still accepted, and ignored, so
/// `daemonctl --backend fork render X` keeps working.
#[derive(Debug, clap::Args)]
struct NoBackend {
    #[arg(long, hide = true, value_enum)]
    backend: Option<BackendChoice>,
    #[arg(long, hide = true)]
    adopt: bool,
}

/// [`NoBackend`] for `--scope`.
#[derive(Debug, clap::Args)]
struct NoScope {
    #[arg(long, hide = true, value_enum)]
    scope: Option<Scope>,
}

/// What `render` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RenderFormat {
    /// A systemd service unit file.
    Systemd,
    /// A launchd property list (XML); what launchd cannot express is named
    /// in one warning on stderr.
    Launchd,
}

impl Command {
    /// The config file the command acts on; `None` for the commands that
    /// need none (completions, man).
    fn config(&self) -> Option<&Path> {
        Some(match self {
            Command::Start { config, .. }
            | Command::Stop { config, .. }
            | Command::Kill { config, .. }
            | Command::Restart { config, .. }
            | Command::Reload { config, .. }
            | Command::Status { config, .. }
            | Command::WaitReady { config, .. }
            | Command::Cleanup { config, .. }
            | Command::Run { config }
            | Command::Install { config, .. }
            | Command::Uninstall { config, .. }
            | Command::Render { config, .. }
            | Command::Logs { config, .. } => config,
            Command::Completions { .. } | Command::Man { .. } | Command::List { .. } => {
                return None
            }
        })
    }
}

fn main() -> ExitCode {
    // First: when the fork backend runs us as its supervisor, this never returns.
    daemon_lifecycle::supervisor_init();

    let cli = Cli::parse();
    match &cli.command {
        Command::Completions { shell, .. } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "daemonctl", &mut script);
            return write_stdout(&script);
        }
        Command::Man { .. } => {
            let mut page = Vec::new();
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut page) {
                eprintln!("daemonctl: cannot render the man page: {e}");
                return ExitCode::from(1);
            }
            return write_stdout(&page);
        }
        _ => {}
    }
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("daemonctl: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Command::List { json, paths } = &cli.command {
        let sources = list::Sources {
            paths,
            choice: cli.backend,
            scope: cli.scope,
            adopt: cli.adopt,
        };
        let rows = runtime.block_on(list::rows(&sources));
        let text = if *json {
            list::json(&rows) + "\n"
        } else {
            list::table(&rows, list::use_colour())
        };
        return write_stdout(text.as_bytes());
    }
    let is_status = matches!(cli.command, Command::Status { .. });
    let config_path = cli.command.config().map(Path::to_owned).unwrap_or_default();
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!(
                "daemonctl: {}",
                printable(&error_line(&config_path, &error))
            );
            ExitCode::from(if is_status { 4 } else { exit_code(&error) })
        }
    }
}

/// Writes `bytes` on stdout; a reader that went away (`daemonctl man | head`)
/// is not an error.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daemonctl: cannot write to stdout: {e}");
            ExitCode::from(1)
        }
    }
}

/// An error as daemonctl says it, after `daemonctl: `: always `CONFIG: what
/// is wrong` (the library's config errors name the file themselves; here
/// the file comes first, once).
pub(crate) fn error_line(config: &Path, error: &DaemonError) -> String {
    let what = match error {
        DaemonError::ConfigRead { source, .. } => format!("cannot read it: {source}"),
        DaemonError::ConfigParse { message, .. } => message.clone(),
        other => other.to_string(),
    };
    format!("{}: {what}", config.display())
}

/// Longest error line printed; the library already keeps the config text it
/// quotes short, this bounds the rest (a 10 MB path in a config).
const MAX_ERROR_LINE: usize = 2048;

/// An error line safe for a terminal: one line, control characters (ESC
/// sequences from a config file among them) escaped, at most
/// [`MAX_ERROR_LINE`] bytes (the middle dropped).
pub(crate) fn printable(line: &str) -> String {
    let escape = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    format!("\\u{{{:x}}}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
    };
    if line.len() <= MAX_ERROR_LINE {
        return escape(line);
    }
    let mut head = MAX_ERROR_LINE * 2 / 3;
    while !line.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = line.len() - (MAX_ERROR_LINE - head);
    while !line.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{} … {}", escape(&line[..head]), escape(&line[tail..]))
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// LSB init-script exit codes for actions: 1 generic error, 3 unimplemented
/// feature, 4 insufficient privilege, 5 program not installed, 6 program not
/// configured, 7 not running; and from LSB's range for applications
/// (150–199): 150 not ready within the start-up timeout.
fn exit_code(error: &DaemonError) -> u8 {
    if error.is_readiness_timeout() {
        return EXIT_NOT_READY;
    }
    match error {
        DaemonError::InvalidConfig { .. }
        | DaemonError::ConfigParse { .. }
        | DaemonError::ConfigRead { .. } => 6,
        DaemonError::BinaryNotFound { .. } | DaemonError::BinaryNotExecutable { .. } => 5,
        DaemonError::PermissionDenied { .. } => 4,
        DaemonError::NotRunning { .. } => 7,
        DaemonError::Unsupported { .. } => 3,
        // Not ours: like a config that names the wrong thing.
        DaemonError::NotOwned { .. } => 6,
        _ => 1,
    }
}

/// Exit code of a start, restart or wait-ready that ran out of time
/// waiting for readiness.
const EXIT_NOT_READY: u8 = 150;

async fn run(cli: Cli) -> Result<u8, DaemonError> {
    let choice = cli.backend;
    let config_path = cli.command.config().expect("a command with a config");
    let mut config = DaemonConfig::from_toml_file(config_path)?;
    if let Some(scope) = cli.scope {
        config.scope = Some(scope);
    }
    if cli.adopt {
        config.adopt = true;
    }
    if let Some(instance) = &cli.instance {
        config.instance = Some(instance.clone());
    }
    let ssh = ssh_options(&cli);
    if !cli.hosts.is_empty() {
        return fleet::run(
            config,
            config_path,
            &cli.command,
            &cli.hosts,
            cli.parallel,
            choice,
            &ssh,
        )
        .await;
    }
    if let Some(host) = &cli.host {
        config.host = Some(host.clone());
    }
    // Checked before connecting, so a bad config is reported as such even
    // where no bus answers. Only the pure checks: rendering, uninstalling
    // and stopping need no installed binary.
    let spec = ServiceSpec::from_config(&config)?;
    let scope = spec.scope;
    // Named in the header of a rendered or installed unit file.
    let source = config_path.display().to_string();
    if let Some(dest) = &spec.host {
        // Only systemd drives another machine; `run` supervises here.
        let refused = match (&cli.command, choice) {
            (Command::Render { .. }, _) => None,
            (Command::Run { .. }, _) | (_, BackendChoice::Fork) => Some(BackendKind::Fork),
            (_, BackendChoice::Launchd) => Some(BackendKind::Launchd),
            _ => None,
        };
        if let Some(backend) = refused {
            return Err(DaemonError::Unsupported {
                backend,
                operation: "host",
                reason: format!(
                    "`host = \"{dest}\"` runs the daemon on another machine, which only the \
                     systemd backend does (over ssh); use --backend systemd or auto"
                ),
            });
        }
    }
    match &cli.command {
        Command::Render {
            format: RenderFormat::Systemd,
            out,
            ..
        } => {
            let mut unit = UnitSpec::from_spec(&spec, scope)?;
            unit.source = Some(source);
            match out {
                None => print!("{}", unit.render()?),
                Some(destdir) => println!("{}", unit.write_into(destdir)?.display()),
            }
            return Ok(0);
        }
        Command::Render {
            format: RenderFormat::Launchd,
            out,
            ..
        } => {
            use std::io::Write;
            let plist = PlistSpec::from_spec(&spec, scope)?;
            let bytes = plist.render()?;
            if let Some(warning) = plist.warning() {
                eprintln!("daemonctl: warning: {warning}");
            }
            match out {
                None => std::io::stdout()
                    .write_all(&bytes)
                    .map_err(|source| DaemonError::Io {
                        context: "write the plist to stdout".into(),
                        source,
                    })?,
                Some(destdir) => println!("{}", plist.write_into(destdir)?.display()),
            }
            return Ok(0);
        }
        Command::Install {
            enable, unit_dir, ..
        } if choice == BackendChoice::Launchd => {
            host::check(&LocalHost, &spec)?;
            PlistSpec::from_spec(&spec, scope)?;
            let launchd = LaunchdBackend::from_env(scope)?;
            let changed = launchd.install(&spec, unit_dir.as_deref(), *enable).await?;
            tracing::info!(changed, "install");
            return Ok(0);
        }
        Command::Uninstall { unit_dir, .. } if choice == BackendChoice::Launchd => {
            let plist = PlistSpec::from_spec(&spec, scope)?;
            let launchd = LaunchdBackend::from_env(scope)?;
            if !launchd.uninstall(&spec, unit_dir.as_deref()).await? {
                let path = match unit_dir {
                    Some(d) => d.join(plist.file_name()),
                    None => launchd.plist_path(&spec)?,
                };
                eprintln!(
                    "daemonctl: {}: nothing to uninstall: {} does not exist",
                    config_path.display(),
                    path.display()
                );
            }
            return Ok(0);
        }
        Command::Install {
            enable, unit_dir, ..
        } => {
            refuse_on_fork(choice, "install")?;
            if spec.host.is_none() {
                // Installing is for this host: its host checks first (a
                // remote host's are asked there, by the install).
                host::check(&LocalHost, &spec)?;
            }
            UnitSpec::from_spec(&spec, scope)?;
            let systemd = systemd_for(&spec, &ssh).await?;
            let changed = systemd
                .install_from(&spec, Some(&source), unit_dir.as_deref(), *enable)
                .await?;
            tracing::info!(changed, "install");
            return Ok(0);
        }
        Command::Uninstall { unit_dir, .. } => {
            refuse_on_fork(choice, "uninstall")?;
            let unit = UnitSpec::from_spec(&spec, scope)?.unit;
            let systemd = systemd_for(&spec, &ssh).await?;
            if !systemd.uninstall(&spec, unit_dir.as_deref()).await? {
                let dir = match unit_dir {
                    Some(d) => d.clone(),
                    None => SystemdBackend::default_unit_dir(scope)?,
                };
                eprintln!(
                    "daemonctl: {}: nothing to uninstall: {} does not exist",
                    config_path.display(),
                    dir.join(unit).display()
                );
            }
            return Ok(0);
        }
        Command::Run { .. } => {
            let supervised_by = match choice {
                BackendChoice::Systemd => {
                    Some((BackendKind::Systemd, "systemd supervises its units"))
                }
                BackendChoice::Launchd => {
                    Some((BackendKind::Launchd, "launchd supervises its jobs"))
                }
                _ => None,
            };
            if let Some((backend, who)) = supervised_by {
                return Err(DaemonError::Unsupported {
                    backend,
                    operation: "run",
                    reason: format!(
                        "`run` supervises the daemon in the foreground, which only the fork \
                         backend does; {who} itself (use `start`)"
                    ),
                });
            }
            let code = daemon_lifecycle::ForkBackend::new()
                .run_foreground(&spec)
                .await?;
            return Ok(code.clamp(0, 255) as u8);
        }
        _ => {}
    }
    if spec.host.is_some() {
        if let Command::Logs { .. } = &cli.command {
            return Err(DaemonError::Unsupported {
                backend: BackendKind::Systemd,
                operation: "logs",
                reason: "the logs of a daemon on another host are its journal there \
                         (there is no journalctl -H): run `ssh HOST journalctl -u UNIT`"
                    .into(),
            });
        }
    }
    let manager = DaemonManager::with_choice(config, choice).with_ssh_options(ssh.clone());
    if let Command::Logs { follow, lines, .. } = &cli.command {
        // Log files need no backend; without them, which one runs it decides.
        let kind = match choice {
            _ if spec.logs.files().next().is_some() => BackendKind::Fork,
            BackendChoice::Fork => BackendKind::Fork,
            _ => manager.backend_kind().await?,
        };
        return logs::show(&spec, kind, scope, *follow, *lines, config_path).await;
    }
    match cli.command {
        Command::Render { .. }
        | Command::Install { .. }
        | Command::Uninstall { .. }
        | Command::Run { .. }
        | Command::Completions { .. }
        | Command::List { .. }
        | Command::Logs { .. }
        | Command::Man { .. } => {
            unreachable!("handled above")
        }
        Command::Start { .. } => {
            // On a terminal, a start that finds the daemon running says so
            // (stdout stays the PID alone, for scripts).
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let before = match tty {
                true => manager.status().await.ok().and_then(|s| match s {
                    DaemonStatus::Running(pid) => Some(pid),
                    _ => None,
                }),
                false => None,
            };
            let pid =
                progress::while_waiting("starting", manager.config(), choice, manager.start())
                    .await?;
            println!("{pid}");
            if before == Some(pid) {
                eprintln!(
                    "daemonctl: {}",
                    printable(&format!(
                        "{}: {} is already running (PID {pid})",
                        config_path.display(),
                        manager.config().name()
                    ))
                );
            }
        }
        Command::Restart { .. } => {
            let pid =
                progress::while_waiting("restarting", manager.config(), choice, manager.restart())
                    .await?;
            println!("{pid}");
        }
        Command::Reload { .. } => manager.reload().await?,
        Command::Stop { .. } => manager.stop().await?,
        Command::Kill { .. } => manager.kill().await?,
        Command::Cleanup { .. } => manager.cleanup_stale().await?,
        Command::WaitReady { timeout, .. } => {
            let secs = timeout.unwrap_or(manager.config().startup_timeout_secs);
            progress::while_waiting(
                "waiting for",
                manager.config(),
                choice,
                manager.wait_ready(secs),
            )
            .await?;
        }
        Command::Status { json, .. } => {
            let report = manager.status_report().await?;
            if json {
                let line = serde_json::to_string(&report).map_err(|e| DaemonError::Io {
                    context: "serialize the status report".into(),
                    source: e.into(),
                })?;
                println!("{line}");
            } else {
                // The reason may carry a daemon's or a record's text.
                println!(
                    "{}",
                    printable(&format!(
                        "{}: {} [{}]",
                        report.name, report.status, report.backend
                    ))
                );
                if let Some(problem) = &report.problem {
                    eprintln!(
                        "daemonctl: {}",
                        printable(&format!("{}: warning: {problem}", config_path.display()))
                    );
                }
            }
            return Ok(match report.status {
                DaemonStatus::Running(_) | DaemonStatus::Starting(_) => 0,
                DaemonStatus::Stale(_) => 1,
                DaemonStatus::Stopped | DaemonStatus::Failed(_) => 3,
                _ => 4,
            });
        }
    }
    Ok(0)
}

/// How remote hosts are reached: `$DAEMON_LIFECYCLE_SSH{,_CONFIG}`, then
/// `--ssh-config` and `--connect-timeout`.
fn ssh_options(cli: &Cli) -> daemon_lifecycle::host::SshOptions {
    let mut opts = daemon_lifecycle::host::SshOptions::from_env()
        .with_connect_timeout(std::time::Duration::from_secs(cli.connect_timeout));
    if let Some(file) = &cli.ssh_config {
        opts = opts.with_config_file(file);
    }
    opts
}

/// The systemd backend of the config's host: this machine's manager, or
/// the remote one over ssh.
async fn systemd_for(
    spec: &ServiceSpec,
    ssh: &daemon_lifecycle::host::SshOptions,
) -> Result<SystemdBackend, DaemonError> {
    match &spec.host {
        None => SystemdBackend::connect(spec.scope).await,
        Some(dest) => {
            let host = daemon_lifecycle::host::SshHost::connect(dest, ssh.clone()).await?;
            SystemdBackend::connect_remote(std::sync::Arc::new(host), spec.scope).await
        }
    }
}

/// `install` and `uninstall` write and remove a persistent systemd unit:
/// the fork backend has nothing of the kind.
fn refuse_on_fork(choice: BackendChoice, operation: &'static str) -> Result<(), DaemonError> {
    if choice != BackendChoice::Fork {
        return Ok(());
    }
    Err(DaemonError::Unsupported {
        backend: BackendKind::Fork,
        operation,
        reason: "the fork backend has no persistent units; this writes a systemd unit \
                 (use --backend systemd or auto; `render` prints it without a manager)"
            .into(),
    })
}
