//! `launchctl_sim`: a launchctl simulator, so the launchd backend can be
//! tested where there is no launchd (`DAEMON_LIFECYCLE_LAUNCHCTL` names
//! it). Written from launchctl's documented behaviour (launchctl(1),
//! launchd.plist(5)) and what its users report (Homebrew's `brew
//! services`, nix-installer, the "Bootstrap failed: 5" reports); it has
//! never been compared with a real launchd.
//!
//! ```text
//! launchctl_sim print DOMAIN/LABEL
//! launchctl_sim bootstrap DOMAIN PLIST
//! launchctl_sim bootout DOMAIN/LABEL
//! launchctl_sim enable|disable DOMAIN/LABEL
//! launchctl_sim kickstart [-k] DOMAIN/LABEL
//! launchctl_sim kill SIGNAL DOMAIN/LABEL   (the signal to the running job's process)
//! launchctl_sim __shutdown          (tests: end every simulated domain)
//! ```
//!
//! Domains: `system`, `gui/UID`, `user/UID`. Its state lives in
//! `$LAUNCHCTL_SIM_DIR` (required), so separate invocations share it: a
//! background "launchd" process per domain (`launchctl_sim __launchd DIR
//! DOMAIN`) owns the jobs and answers over a Unix socket in that
//! directory; the first `bootstrap` into a domain starts it, unless a test
//! started it first (as `tests/support/launchd.rs` does, so that the test
//! reaps it; with `$LAUNCHCTL_SIM_PARENT` set to the test's PID it also
//! ends when the test does). `enable`/`disable` overrides are files there;
//! every invocation is appended to `calls.log` with its exit code.
//!
//! What it does, as launchd does:
//! - spawns `ProgramArguments` (no shell, no PATH search) with a base
//!   environment (`PATH=/usr/bin:/bin:/usr/sbin:/sbin`, `XPC_SERVICE_NAME`,
//!   `XPC_FLAGS`) plus `EnvironmentVariables`, in `WorkingDirectory` (else
//!   `/`), stdin `/dev/null`, stdout/stderr appended to
//!   `StandardOutPath`/`StandardErrorPath` (else `/dev/null`), as a new
//!   process group, with `SoftResourceLimits`/`HardResourceLimits`
//!   (`NumberOfFiles`, `NumberOfProcesses`, `CPU`), and as
//!   `UserName`/`GroupName` in the system domain when it runs as root; a
//!   spawn that fails ends with launchd's `78: EX_CONFIG`;
//! - `RunAtLoad` starts the job at bootstrap; `KeepAlive` (`true`, or
//!   `{ SuccessfulExit = BOOL }`) restarts it after it ends, at the earliest
//!   `ThrottleInterval` (default 10 s) after its last start, in state
//!   `spawn scheduled` meanwhile;
//! - a stop (`bootout`, `kickstart -k`) sends SIGTERM, SIGKILL after
//!   `ExitTimeOut` (default 20 s); once the job's process ends, the rest of
//!   its process group gets SIGKILL unless `AbandonProcessGroup`; the
//!   simulated launchd reaps orphans (a child subreaper on Linux) as PID 1
//!   does;
//! - `print` answers in launchctl's format (tab-indented `key = value`
//!   lines, nested blocks, `last exit code = (never exited)` /
//!   `78: EX_CONFIG` / `last terminating signal = Terminated: 15`).
//!
//! And the nasty cases:
//! - `bootout` returns (0) at once, before the job is gone: `print` still
//!   shows it until its processes have ended, and a second `bootout`
//!   meanwhile answers 36 (operation now in progress);
//! - `bootstrap` of a label still loaded, or booted out less than
//!   `$LAUNCHCTL_SIM_EIO_MS` (default 1500) ago, fails with 5
//!   (`Bootstrap failed: 5: Input/output error`);
//! - after `disable`, `bootstrap` fails with 119 until `enable`
//!   (`$LAUNCHCTL_SIM_IGNORE_ENABLE=1` makes `enable` a no-op, to see the
//!   119 through); a `Disabled` key in the plist disables nothing;
//! - unknown jobs: `print` and `kickstart` 113, `bootout` 3;
//! - no GUI session: `$LAUNCHCTL_SIM_GUI=absent` makes every `gui/UID`
//!   command fail with 112 (no such domain), `=elsewhere` makes `bootstrap`
//!   into `gui/UID` fail with 125 (domain does not support the action, as
//!   over SSH); `user/UID` refuses an agent whose `LimitLoadToSessionType`
//!   lacks `Background` (5, as the real CLI shows launchd's 134);
//! - 122 for a plist not owned by the caller (root for `system`) or
//!   writable by group or others; 1 for changes in `system` without root;
//! - the legacy verbs (`load`, `unload`, `list`, ...) are refused (64).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

const STATE_ENV: &str = "LAUNCHCTL_SIM_DIR";
const GUI_ENV: &str = "LAUNCHCTL_SIM_GUI";
const EIO_ENV: &str = "LAUNCHCTL_SIM_EIO_MS";
const IGNORE_ENABLE_ENV: &str = "LAUNCHCTL_SIM_IGNORE_ENABLE";
/// A domain's launchd started by a test (not by a `bootstrap`) ends when
/// that process does: it is given its PID here.
const PARENT_ENV: &str = "LAUNCHCTL_SIM_PARENT";
const BASE_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

/// What the CLI asks a domain's launchd.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    verb: String,
    label: Option<String>,
    path: Option<String>,
    kill: bool,
    euid: u32,
    /// `kill`: the signal number.
    #[serde(default)]
    signal: Option<i32>,
}

/// What launchctl prints and exits with.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Reply {
    fn ok() -> Reply {
        Reply::default()
    }
    fn fail(code: i32, stderr: impl Into<String>) -> Reply {
        Reply {
            code,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__launchd") && args.len() == 3 {
        domain_main(Path::new(&args[1]), &args[2]);
    }
    let Some(dir) = std::env::var_os(STATE_ENV).map(PathBuf::from) else {
        eprintln!("launchctl_sim: set {STATE_ENV} to the simulator's state directory");
        std::process::exit(64);
    };
    let reply = cli(&dir, &args);
    print!("{}", reply.stdout);
    eprint!("{}", reply.stderr);
    if let Ok(mut log) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("calls.log"))
    {
        let _ = writeln!(log, "{} -> {}", args.join(" "), reply.code);
    }
    std::process::exit(reply.code);
}

// ---------------------------------------------------------------- the CLI

fn usage() -> Reply {
    Reply::fail(
        64,
        "Usage: launchctl_sim print|bootstrap|bootout|enable|disable|kickstart ...\n",
    )
}

fn cli(dir: &Path, args: &[String]) -> Reply {
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("print") if args.len() == 2 => match split_target(&args[1]) {
            Some((domain, Some(label))) => {
                if let Err(r) = domain_access(&domain, false) {
                    return r;
                }
                match ask(dir, &domain, false, "print", Some(label.clone()), None, false) {
                    Some(r) => r,
                    None => not_found(&label),
                }
            }
            _ => usage(),
        },
        Some("bootstrap") if args.len() == 3 => {
            let Some((domain, None)) = split_target(&args[1]) else {
                return usage();
            };
            if let Err(r) = domain_access(&domain, true) {
                return r;
            }
            if domain.starts_with("gui/") && gui_mode() == "elsewhere" {
                return Reply::fail(125, "Bootstrap failed: 125: Domain does not support specified action\n");
            }
            let path = absolute(&args[2]);
            ask(dir, &domain, true, "bootstrap", None, Some(path), false).unwrap_or_else(|| {
                Reply::fail(5, "Bootstrap failed: 5: Input/output error\n")
            })
        }
        Some("bootout") if args.len() == 2 => match split_target(&args[1]) {
            Some((domain, Some(label))) => {
                if let Err(r) = domain_access(&domain, true) {
                    return r;
                }
                ask(dir, &domain, false, "bootout", Some(label), None, false)
                    .unwrap_or_else(|| Reply::fail(3, "Boot-out failed: 3: No such process\n"))
            }
            _ => usage(),
        },
        Some("kickstart") => {
            let kill = arg(1) == Some("-k");
            let target = if kill { arg(2) } else { arg(1) };
            let expected = if kill { 3 } else { 2 };
            match target.and_then(split_target) {
                Some((domain, Some(label))) if args.len() == expected => {
                    if let Err(r) = domain_access(&domain, true) {
                        return r;
                    }
                    ask(dir, &domain, false, "kickstart", Some(label.clone()), None, kill)
                        .unwrap_or_else(|| not_found(&label))
                }
                _ => usage(),
            }
        }
        Some("kill") if args.len() == 3 => {
            // `kill SIGNAL TARGET`: a name (`HUP`, `SIGHUP`) or a number.
            let name = args[1].to_ascii_uppercase();
            let full = if name.starts_with("SIG") { name } else { format!("SIG{name}") };
            let signal = match args[1].parse::<i32>() {
                Ok(n) => Some(n),
                Err(_) => full.parse::<nix::sys::signal::Signal>().ok().map(|s| s as i32),
            };
            match (signal, split_target(&args[2])) {
                (Some(signal), Some((domain, Some(label)))) => {
                    if let Err(r) = domain_access(&domain, true) {
                        return r;
                    }
                    let Some(mut stream) = connect(dir, &domain, false) else {
                        return not_found(&label);
                    };
                    let request = Request {
                        verb: "kill".into(),
                        label: Some(label.clone()),
                        path: None,
                        kill: false,
                        euid: nix::unistd::Uid::effective().as_raw(),
                        signal: Some(signal),
                    };
                    send_request(&mut stream, &request).unwrap_or_else(|| not_found(&label))
                }
                _ => usage(),
            }
        }
        Some(verb @ ("enable" | "disable")) if args.len() == 2 => match split_target(&args[1]) {
            Some((domain, Some(label))) => {
                if let Err(r) = domain_access(&domain, true) {
                    return r;
                }
                let file = override_file(dir, &domain, &label);
                if verb == "disable" {
                    let _ = std::fs::create_dir_all(file.parent().unwrap());
                    let _ = std::fs::write(&file, "disabled\n");
                } else if std::env::var_os(IGNORE_ENABLE_ENV).is_none() {
                    let _ = std::fs::remove_file(&file);
                }
                Reply::ok()
            }
            _ => usage(),
        },
        Some("__shutdown") => {
            shutdown_all(dir);
            Reply::ok()
        }
        Some(legacy @ ("load" | "unload" | "list" | "start" | "stop" | "submit" | "remove")) => {
            Reply::fail(
                64,
                format!("launchctl_sim: the legacy verb `{legacy}` is not simulated (daemon-lifecycle must never use it)\n"),
            )
        }
        _ => usage(),
    }
}

fn gui_mode() -> String {
    std::env::var(GUI_ENV).unwrap_or_else(|_| "yes".into())
}

fn not_found(label: &str) -> Reply {
    Reply::fail(
        113,
        format!("Could not find service \"{label}\" in domain for port\n"),
    )
}

fn absolute(path: &str) -> String {
    let p = Path::new(path);
    if p.is_absolute() {
        return path.to_owned();
    }
    std::env::current_dir()
        .map(|d| d.join(p).to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_owned())
}

/// `system[/LABEL]`, `gui/UID[/LABEL]`, `user/UID[/LABEL]`.
fn split_target(target: &str) -> Option<(String, Option<String>)> {
    let parts: Vec<&str> = target.split('/').collect();
    let nonempty = |s: &&str| !s.is_empty();
    match parts.as_slice() {
        ["system"] => Some(("system".into(), None)),
        ["system", label] if nonempty(label) => Some(("system".into(), Some(label.to_string()))),
        [kind @ ("gui" | "user"), uid] if uid.parse::<u32>().is_ok() => {
            Some((format!("{kind}/{uid}"), None))
        }
        [kind @ ("gui" | "user"), uid, label] if uid.parse::<u32>().is_ok() && nonempty(label) => {
            Some((format!("{kind}/{uid}"), Some(label.to_string())))
        }
        _ => None,
    }
}

/// Whether this caller may use (`modify`: change) the domain.
fn domain_access(domain: &str, modify: bool) -> Result<(), Reply> {
    if domain.starts_with("gui/") && gui_mode() == "absent" {
        return Err(Reply::fail(
            112,
            format!("Could not find domain for {domain}: no GUI session\n"),
        ));
    }
    let euid = nix::unistd::Uid::effective().as_raw();
    if !modify || euid == 0 {
        return Ok(());
    }
    let owner = domain.split('/').nth(1).and_then(|u| u.parse::<u32>().ok());
    if domain == "system" || owner.is_some_and(|uid| uid != nix::unistd::getuid().as_raw()) {
        return Err(Reply::fail(1, "Operation not permitted while not root\n"));
    }
    Ok(())
}

fn safe(domain: &str) -> String {
    domain.replace('/', "-")
}

fn override_file(dir: &Path, domain: &str, label: &str) -> PathBuf {
    dir.join("overrides").join(safe(domain)).join(label)
}

fn socket_path(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("{}.sock", safe(domain)))
}

/// Sends a request to the domain's launchd, starting it first when `spawn`;
/// `None` when the domain has no launchd (nothing was ever loaded there).
fn ask(
    dir: &Path,
    domain: &str,
    spawn: bool,
    verb: &str,
    label: Option<String>,
    path: Option<String>,
    kill: bool,
) -> Option<Reply> {
    let mut stream = connect(dir, domain, spawn)?;
    let request = Request {
        verb: verb.into(),
        label,
        path,
        kill,
        euid: nix::unistd::Uid::effective().as_raw(),
        signal: None,
    };
    send_request(&mut stream, &request)
}

/// Sends one request and reads the domain's answer.
fn send_request(stream: &mut std::os::unix::net::UnixStream, request: &Request) -> Option<Reply> {
    let mut line = serde_json::to_string(request).unwrap();
    line.push('\n');
    stream.write_all(line.as_bytes()).ok()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(serde_json::from_str(&answer).unwrap_or_else(|e| {
        Reply::fail(
            5,
            format!("launchctl_sim: bad answer from the domain ({e})\n"),
        )
    }))
}

fn connect(dir: &Path, domain: &str, spawn: bool) -> Option<UnixStream> {
    let sock = socket_path(dir, domain);
    if let Ok(s) = UnixStream::connect(&sock) {
        return Some(s);
    }
    if !spawn {
        return None;
    }
    // One invocation at a time starts the domain's launchd.
    let lock = File::create(dir.join(format!("{}.lock", safe(domain)))).ok()?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).ok()?;
    if let Ok(s) = UnixStream::connect(&sock) {
        return Some(s);
    }
    let _ = std::fs::remove_file(&sock);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{}.log", safe(domain))))
        .ok()?;
    let exe = std::env::current_exe().ok()?;
    Command::new(exe)
        .arg("__launchd")
        .arg(dir)
        .arg(domain)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(s) = UnixStream::connect(&sock) {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Ends every domain's launchd in `dir`, and with them their jobs.
fn shutdown_all(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(domain) = name.strip_suffix(".sock") else {
            continue;
        };
        let domain = domain.replacen('-', "/", 1);
        let _ = ask(dir, &domain, false, "__shutdown", None, None, false);
    }
}

// ------------------------------------------------------ a domain's launchd

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn successful(self) -> bool {
        self == Exit::Code(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepAlive {
    Never,
    Always,
    /// `{ SuccessfulExit = BOOL }`: restart when the exit's success is BOOL.
    SuccessfulExit(bool),
}

#[derive(Debug, Clone, Default)]
struct Limits {
    files: Option<u64>,
    processes: Option<u64>,
    cpu: Option<u64>,
}

/// The plist keys the simulator acts on.
#[derive(Debug, Clone)]
struct JobPlist {
    program_arguments: Vec<String>,
    environment: BTreeMap<String, String>,
    working_directory: Option<String>,
    run_at_load: bool,
    keep_alive: KeepAlive,
    throttle_interval: u64,
    exit_timeout: u64,
    stdout: Option<String>,
    stderr: Option<String>,
    soft: Limits,
    hard: Limits,
    user_name: Option<String>,
    group_name: Option<String>,
    abandon_process_group: bool,
    session_types: Vec<String>,
}

impl JobPlist {
    fn parse(value: &plist::Value) -> Result<(String, JobPlist), String> {
        let dict = value.as_dictionary().ok_or("not a dictionary")?;
        let string = |k: &str| dict.get(k).and_then(|v| v.as_string()).map(str::to_owned);
        let uint = |k: &str| dict.get(k).and_then(|v| v.as_unsigned_integer());
        let boolean = |k: &str| dict.get(k).and_then(|v| v.as_boolean());
        let label = string("Label").ok_or("no Label")?;
        let mut program_arguments: Vec<String> = dict
            .get("ProgramArguments")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_string().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(program) = string("Program") {
            if program_arguments.is_empty() {
                program_arguments.push(program);
            } else {
                program_arguments[0] = program;
            }
        }
        if program_arguments.is_empty() {
            return Err("no Program or ProgramArguments".into());
        }
        let environment = dict
            .get("EnvironmentVariables")
            .and_then(|v| v.as_dictionary())
            .map(|d| {
                d.iter()
                    .filter_map(|(k, v)| v.as_string().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let keep_alive = match dict.get("KeepAlive") {
            Some(plist::Value::Boolean(true)) => KeepAlive::Always,
            Some(plist::Value::Dictionary(d)) => {
                match d.get("SuccessfulExit").and_then(|v| v.as_boolean()) {
                    Some(b) => KeepAlive::SuccessfulExit(b),
                    None => KeepAlive::Never,
                }
            }
            _ => KeepAlive::Never,
        };
        let limits = |k: &str| {
            let d = dict.get(k).and_then(|v| v.as_dictionary());
            let get = |n: &str| {
                d.and_then(|d| d.get(n))
                    .and_then(|v| v.as_unsigned_integer())
            };
            Limits {
                files: get("NumberOfFiles"),
                processes: get("NumberOfProcesses"),
                cpu: get("CPU"),
            }
        };
        let session_types = match dict.get("LimitLoadToSessionType") {
            Some(plist::Value::String(s)) => vec![s.clone()],
            Some(plist::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_string().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Ok((
            label,
            JobPlist {
                program_arguments,
                environment,
                working_directory: string("WorkingDirectory"),
                run_at_load: boolean("RunAtLoad").unwrap_or(false),
                keep_alive,
                throttle_interval: uint("ThrottleInterval").unwrap_or(10),
                exit_timeout: uint("ExitTimeOut").unwrap_or(20),
                stdout: string("StandardOutPath"),
                stderr: string("StandardErrorPath"),
                soft: limits("SoftResourceLimits"),
                hard: limits("HardResourceLimits"),
                user_name: string("UserName"),
                group_name: string("GroupName"),
                abandon_process_group: boolean("AbandonProcessGroup").unwrap_or(false),
                session_types,
            },
        ))
    }
}

#[derive(Debug)]
struct Job {
    label: String,
    path: String,
    plist: JobPlist,
    pid: Option<i32>,
    started: Option<Instant>,
    runs: u32,
    last_exit: Option<Exit>,
    /// Its process ended; the rest of its group is still going.
    group_left: Option<i32>,
    /// SIGTERM sent; SIGKILL at this time.
    kill_at: Option<Instant>,
    /// Restart after it ends (`kickstart -k`).
    respawn: bool,
    /// Leave the domain after it ends (`bootout`).
    booting_out: bool,
    /// KeepAlive's next start.
    scheduled: Option<Instant>,
}

struct Domain {
    name: String,
    dir: PathBuf,
    jobs: BTreeMap<String, Job>,
    /// Labels booted out recently: a bootstrap before this time gets 5.
    draining: BTreeMap<String, Instant>,
    eio_window: Duration,
}

fn domain_main(dir: &Path, name: &str) -> ! {
    let sock = socket_path(dir, name);
    let listener = match UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("launchctl_sim: {name}: bind {}: {e}", sock.display());
            std::process::exit(1);
        }
    };
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    // launchd is PID 1: it reaps every orphan. A subreaper does as much.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let eio_ms = std::env::var(EIO_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let mut domain = Domain {
        name: name.to_owned(),
        dir: dir.to_owned(),
        jobs: BTreeMap::new(),
        draining: BTreeMap::new(),
        eio_window: Duration::from_millis(eio_ms),
    };
    let parent: Option<i32> = std::env::var(PARENT_ENV).ok().and_then(|p| p.parse().ok());
    let mut last_look = Instant::now();
    loop {
        while let Ok((stream, _)) = listener.accept() {
            if domain.serve(stream) {
                let _ = std::fs::remove_file(&sock);
                std::process::exit(0);
            }
        }
        domain.reap();
        domain.tick();
        if last_look.elapsed() > Duration::from_millis(500) {
            last_look = Instant::now();
            // The test's directory, or the test, is gone: so are we.
            let orphaned = parent.is_some_and(|p| nix::unistd::getppid().as_raw() != p);
            if orphaned || !sock.exists() {
                domain.shutdown();
                std::process::exit(0);
            }
        }
        let mut fds = [nix::poll::PollFd::new(
            listener.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, 10u8);
    }
}

impl Domain {
    /// Answers one connection; `true` to shut down.
    fn serve(&mut self, stream: UnixStream) -> bool {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        if reader.read_line(&mut line).is_err() {
            return false;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(_) => return false,
        };
        let shutdown = request.verb == "__shutdown";
        if shutdown {
            self.shutdown();
        }
        let reply = self.handle(&request);
        let mut out = &stream;
        let _ = out.write_all(serde_json::to_string(&reply).unwrap().as_bytes());
        shutdown
    }

    fn handle(&mut self, r: &Request) -> Reply {
        let label = r.label.clone().unwrap_or_default();
        match r.verb.as_str() {
            "print" => match self.jobs.get(&label) {
                Some(job) => Reply {
                    code: 0,
                    stdout: self.print(job),
                    stderr: String::new(),
                },
                None => not_found(&label),
            },
            "bootstrap" => self.bootstrap(r.path.as_deref().unwrap_or(""), r.euid),
            "bootout" => self.bootout(&label),
            "kickstart" => self.kickstart(&label, r.kill),
            "kill" => match self.jobs.get(&label) {
                None => not_found(&label),
                Some(job) => match (job.pid, r.signal) {
                    (Some(pid), Some(sig)) => {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::try_from(sig).ok(),
                        );
                        Reply::ok()
                    }
                    _ => Reply::fail(3, "Could not kill service: 3: No such process\n"),
                },
            },
            "__shutdown" => Reply::ok(),
            _ => usage(),
        }
    }

    fn bootstrap(&mut self, path: &str, euid: u32) -> Reply {
        let eio = || Reply::fail(5, "Bootstrap failed: 5: Input/output error\n");
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(_) => return Reply::fail(2, "Bootstrap failed: 2: No such file or directory\n"),
        };
        let owner_ok = if self.name == "system" {
            meta.uid() == 0
        } else {
            meta.uid() == euid || meta.uid() == 0
        };
        if !meta.is_file() || !owner_ok || meta.mode() & 0o022 != 0 {
            return Reply::fail(
                122,
                "Bootstrap failed: 122: Path had bad ownership/permissions\n",
            );
        }
        let Ok(value) = plist::Value::from_file(path) else {
            return eio();
        };
        let Ok((label, plist)) = JobPlist::parse(&value) else {
            return eio();
        };
        if override_file(&self.dir, &self.name, &label).exists() {
            return Reply::fail(119, "Bootstrap failed: 119: Service is disabled\n");
        }
        let now = Instant::now();
        self.draining.retain(|_, until| *until > now);
        if self.jobs.contains_key(&label) || self.draining.contains_key(&label) {
            return eio();
        }
        let session_ok = |wanted: &str, default_ok: bool| {
            if plist.session_types.is_empty() {
                default_ok
            } else {
                plist.session_types.iter().any(|s| s == wanted)
            }
        };
        let session_fits = if self.name.starts_with("user/") {
            // The Background session; a plain agent is Aqua (launchd: 134).
            session_ok("Background", false)
        } else if self.name.starts_with("gui/") {
            session_ok("Aqua", true)
        } else {
            true
        };
        if !session_fits {
            return eio();
        }
        let run_at_load = plist.run_at_load;
        self.jobs.insert(
            label.clone(),
            Job {
                label: label.clone(),
                path: path.to_owned(),
                plist,
                pid: None,
                started: None,
                runs: 0,
                last_exit: None,
                group_left: None,
                kill_at: None,
                respawn: false,
                booting_out: false,
                scheduled: None,
            },
        );
        if run_at_load {
            let job = self.jobs.get_mut(&label).unwrap();
            spawn(&self.name, job);
        }
        Reply::ok()
    }

    fn bootout(&mut self, label: &str) -> Reply {
        let Some(job) = self.jobs.get_mut(label) else {
            return Reply::fail(3, "Boot-out failed: 3: No such process\n");
        };
        if job.booting_out {
            return Reply::fail(36, "Boot-out failed: 36: Operation now in progress\n");
        }
        job.booting_out = true;
        job.scheduled = None;
        job.respawn = false;
        if job.pid.is_some() {
            begin_stop(job);
        } else if job.group_left.is_none() {
            self.remove(label);
        }
        // Either way, before the job is gone.
        Reply::ok()
    }

    fn kickstart(&mut self, label: &str, kill_first: bool) -> Reply {
        let name = self.name.clone();
        let Some(job) = self.jobs.get_mut(label) else {
            return not_found(label);
        };
        if job.booting_out {
            return Reply::fail(36, "Kickstart failed: 36: Operation now in progress\n");
        }
        if job.pid.is_some() {
            if kill_first {
                job.respawn = true;
                begin_stop(job);
            }
        } else if job.group_left.is_some() {
            job.respawn = true;
        } else {
            spawn(&name, job);
        }
        Reply::ok()
    }

    fn remove(&mut self, label: &str) {
        self.jobs.remove(label);
        self.draining
            .insert(label.to_owned(), Instant::now() + self.eio_window);
    }

    /// Collects every ended child (the jobs, and orphans we reap as launchd).
    fn reap(&mut self) {
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            if let Some(job) = self.jobs.values_mut().find(|j| j.pid == Some(pid.as_raw())) {
                job.pid = None;
                job.kill_at = None;
                job.last_exit = Some(exit);
                if !job.plist.abandon_process_group {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
                job.group_left = Some(pid.as_raw());
            }
        }
    }

    /// Stop escalation, the end of a job's process group, KeepAlive starts.
    fn tick(&mut self) {
        let now = Instant::now();
        let name = self.name.clone();
        let mut gone = Vec::new();
        for job in self.jobs.values_mut() {
            if let (Some(pid), Some(at)) = (job.pid, job.kill_at) {
                if now >= at {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    job.kill_at = None;
                }
            }
            if let Some(pgid) = job.group_left {
                // pgid 0: nothing was spawned.
                if pgid > 0
                    && !job.plist.abandon_process_group
                    && killpg(Pid::from_raw(pgid), None) != Err(Errno::ESRCH)
                {
                    continue;
                }
                job.group_left = None;
                if job.booting_out {
                    gone.push(job.label.clone());
                } else if std::mem::take(&mut job.respawn) {
                    spawn(&name, job);
                } else if restarts(job.plist.keep_alive, job.last_exit) {
                    let earliest = job.started.map_or(now, |s| {
                        s + Duration::from_secs(job.plist.throttle_interval)
                    });
                    job.scheduled = Some(earliest.max(now));
                }
            }
            if job.scheduled.is_some_and(|at| now >= at) {
                spawn(&name, job);
            }
        }
        for label in gone {
            self.remove(&label);
        }
    }

    /// Kills every job's process group and waits (briefly) for them.
    fn shutdown(&mut self) {
        for job in self.jobs.values_mut() {
            job.scheduled = None;
            job.respawn = false;
            job.booting_out = true;
            if let Some(pid) = job.pid {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.jobs.is_empty() && Instant::now() < deadline {
            self.reap();
            self.tick();
            std::thread::sleep(Duration::from_millis(5));
        }
        // Orphans that were reparented to us.
        while Instant::now() < deadline {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    /// `print DOMAIN/LABEL`, in launchctl's shape.
    fn print(&self, job: &Job) -> String {
        let p = &job.plist;
        let state = if job.pid.is_some() {
            "running"
        } else if job.scheduled.is_some() {
            "spawn scheduled"
        } else {
            "not running"
        };
        let mut o = String::new();
        let mut line = |s: String| {
            o.push_str(&s);
            o.push('\n');
        };
        line(format!("{}/{} = {{", self.name, job.label));
        line(format!("\tactive count = {}", u8::from(job.pid.is_some())));
        line(format!("\tpath = {}", job.path));
        let kind = if self.name == "system" {
            "LaunchDaemon"
        } else {
            "LaunchAgent"
        };
        line(format!("\ttype = {kind}"));
        line(format!("\tstate = {state}"));
        line(String::new());
        line(format!("\tprogram = {}", p.program_arguments[0]));
        line("\targuments = {".into());
        for a in &p.program_arguments {
            line(format!("\t\t{a}"));
        }
        line("\t}".into());
        line(String::new());
        line(format!(
            "\tworking directory = {}",
            p.working_directory.as_deref().unwrap_or("/")
        ));
        line(String::new());
        if let Some(out) = &p.stdout {
            line(format!("\tstdout path = {out}"));
        }
        if let Some(err) = &p.stderr {
            line(format!("\tstderr path = {err}"));
        }
        line("\tdefault environment = {".into());
        line(format!("\t\tPATH => {BASE_PATH}"));
        line("\t}".into());
        line(String::new());
        line("\tenvironment = {".into());
        for (k, v) in &p.environment {
            line(format!("\t\t{k} => {v}"));
        }
        line(format!("\t\tXPC_SERVICE_NAME => {}", job.label));
        line("\t}".into());
        line(String::new());
        line(format!("\tdomain = {}", self.name));
        line(format!("\tminimum runtime = {}", p.throttle_interval));
        line(format!("\texit timeout = {}", p.exit_timeout));
        line(format!("\truns = {}", job.runs));
        if let Some(pid) = job.pid {
            line(format!("\tpid = {pid}"));
        }
        line("\timmediate reason = speculative".into());
        line("\tforks = 0".into());
        line(format!("\texecs = {}", job.runs));
        line(match job.last_exit {
            None => "\tlast exit code = (never exited)".into(),
            Some(Exit::Code(78)) => "\tlast exit code = 78: EX_CONFIG".into(),
            Some(Exit::Code(c)) => format!("\tlast exit code = {c}"),
            Some(Exit::Signal(s)) => format!("\tlast terminating signal = {}: {s}", signal_name(s)),
        });
        line(String::new());
        line("\tresource coalition = {".into());
        line("\t\tID = 1114".into());
        line("\t\ttype = resource".into());
        line("\t\tstate = active".into());
        line(format!(
            "\t\tactive count = {}",
            u8::from(job.pid.is_some())
        ));
        line(format!("\t\tname = {}", job.label));
        line("\t}".into());
        line(String::new());
        line("\tspawn type = daemon (3)".into());
        let mut props = Vec::new();
        if p.keep_alive != KeepAlive::Never {
            props.push("keepalive");
        }
        if p.run_at_load {
            props.push("runatload");
        }
        props.push("inferred program");
        line(format!("\tproperties = {}", props.join(" | ")));
        line("}".into());
        o
    }
}

/// Whether KeepAlive starts the job again after `exit`.
fn restarts(keep_alive: KeepAlive, exit: Option<Exit>) -> bool {
    match keep_alive {
        KeepAlive::Never => false,
        KeepAlive::Always => true,
        KeepAlive::SuccessfulExit(wanted) => exit.is_some_and(|e| e.successful() == wanted),
    }
}

/// SIGTERM now, SIGKILL after `ExitTimeOut`.
fn begin_stop(job: &mut Job) {
    if let Some(pid) = job.pid {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        job.kill_at = Some(Instant::now() + Duration::from_secs(job.plist.exit_timeout));
    }
}

/// A plist integer as the platform's `rlim_t` (u64, or i64 on FreeBSD).
#[allow(clippy::useless_conversion)]
fn rlim(value: u64) -> libc::rlim_t {
    libc::rlim_t::try_from(value).unwrap_or(libc::rlim_t::MAX)
}

/// Darwin's `strsignal` words for the signals a test sees.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "Hangup",
        libc::SIGINT => "Interrupt",
        libc::SIGQUIT => "Quit",
        libc::SIGABRT => "Abort trap",
        libc::SIGKILL => "Killed",
        libc::SIGSEGV => "Segmentation fault",
        libc::SIGPIPE => "Broken pipe",
        libc::SIGTERM => "Terminated",
        _ => "Signal",
    }
}

fn spawn(domain: &str, job: &mut Job) {
    job.runs += 1;
    job.started = Some(Instant::now());
    job.scheduled = None;
    let p = &job.plist;
    let output = |path: &Option<String>| -> Stdio {
        match path {
            Some(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(path)
                .map_or_else(|_| Stdio::null(), Stdio::from),
            None => Stdio::null(),
        }
    };
    let mut cmd = Command::new(&p.program_arguments[0]);
    cmd.args(&p.program_arguments[1..])
        .env_clear()
        .env("PATH", BASE_PATH)
        .env("XPC_SERVICE_NAME", &job.label)
        .env("XPC_FLAGS", "0x0")
        .envs(&p.environment)
        .current_dir(p.working_directory.as_deref().unwrap_or("/"))
        .stdin(Stdio::null())
        .stdout(output(&p.stdout))
        .stderr(output(&p.stderr))
        .process_group(0);
    if domain == "system" && nix::unistd::Uid::effective().is_root() {
        if let Some(user) = p
            .user_name
            .as_deref()
            .and_then(|u| nix::unistd::User::from_name(u).ok().flatten())
        {
            let group = p
                .group_name
                .as_deref()
                .and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
                .map_or(user.gid.as_raw(), |g| g.gid.as_raw());
            cmd.uid(user.uid.as_raw()).gid(group);
        }
    }
    // libc's constants: nix has no RLIMIT_NPROC on macOS.
    let limits = [
        (libc::RLIMIT_NOFILE, p.soft.files, p.hard.files),
        (libc::RLIMIT_NPROC, p.soft.processes, p.hard.processes),
        (libc::RLIMIT_CPU, p.soft.cpu, p.hard.cpu),
    ];
    if limits.iter().any(|(_, s, h)| s.is_some() || h.is_some()) {
        // SAFETY: between fork and exec only getrlimit(2) and setrlimit(2),
        // which are async-signal-safe, and no allocation.
        unsafe {
            cmd.pre_exec(move || {
                for (resource, soft, hard) in limits {
                    if soft.is_none() && hard.is_none() {
                        continue;
                    }
                    let mut now = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(resource, &mut now) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let hard = hard.map_or(now.rlim_max, rlim);
                    let new = libc::rlimit {
                        rlim_cur: soft.map_or(now.rlim_cur, rlim).min(hard),
                        rlim_max: hard,
                    };
                    if libc::setrlimit(resource, &new) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    match cmd.spawn() {
        Ok(child) => job.pid = Some(child.id() as i32),
        Err(_) => {
            // launchd's word for a job it could not spawn.
            job.pid = None;
            job.last_exit = Some(Exit::Code(78));
            job.group_left = Some(0);
        }
    }
}
