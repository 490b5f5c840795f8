//! Test support shared by the integration tests: where the binaries are, a
//! per-test sandbox that kills whatever the test left running (and says so),
//! and timeouts for everything that waits.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_lifecycle::{DaemonConfig, DaemonManager, ForkBackend};

/// `daemonctl`, built by cargo for the integration tests.
pub fn daemonctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_daemonctl"))
}

/// The `testd` example (cargo builds examples before it runs tests).
pub fn testd() -> PathBuf {
    let bin = daemonctl();
    let path = bin.parent().unwrap().join("examples").join("testd");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test` (it builds the examples)",
        path.display()
    );
    path
}

/// One test's sandbox: a temp dir for PID files and outputs, and a unique tag
/// that every process it starts carries on its command line (the daemon's
/// `--tag`, the supervisor's name), so leftovers can be found and killed.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub tag: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Sandbox {
    pub fn new(test: &str) -> Sandbox {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("dltest-{test}-{}-{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir()
            .unwrap();
        Sandbox { dir, tag }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config running `testd --tag TAG EXTRA...`, named after the tag.
    pub fn config(&self, extra: &[&str]) -> DaemonConfig {
        let mut args = vec!["--tag".to_owned(), self.tag.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        DaemonConfig::new(testd(), self.path("daemon.pid"))
            .with_name(self.tag.clone())
            .with_args(args)
            .with_shutdown_timeout_secs(5)
            .with_startup_timeout_secs(10)
    }

    /// A manager on the fork backend with `daemonctl` as supervisor program.
    pub fn manager(&self, config: DaemonConfig) -> DaemonManager {
        DaemonManager::with_backend(config, Arc::new(fork_backend()))
    }

    /// Writes `config` as TOML into the sandbox and returns its path.
    pub fn write_toml(&self, config: &DaemonConfig) -> PathBuf {
        let path = self.path("daemon.toml");
        std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
        path
    }

    /// PIDs of live processes whose command line carries the tag.
    pub fn processes(&self) -> Vec<u32> {
        processes_matching(&self.tag)
    }

    /// Fails the test if any tagged process is still alive after a short
    /// grace period (processes that were just signalled need a moment to be
    /// reaped by their parent). Leftovers are killed either way.
    pub fn assert_no_leaks(&self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = self.processes();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let listing: Vec<String> = left.iter().map(|p| describe(*p)).collect();
                kill_all(&left);
                panic!("test left processes behind: {listing:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let left = self.processes();
        if !left.is_empty() {
            eprintln!("sandbox {}: killing leftovers {left:?}", self.tag);
            kill_all(&left);
        }
    }
}

/// The fork backend with `daemonctl` as its supervisor program (test binaries
/// cannot call `supervisor_init` in their own `main`).
pub fn fork_backend() -> ForkBackend {
    ForkBackend::with_supervisor(daemonctl())
}

fn kill_all(pids: &[u32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Live (non-zombie) processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me || is_zombie(pid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

pub fn is_zombie(pid: u32) -> bool {
    match proc_stat(pid) {
        Some(fields) => fields[0] == "Z" || fields[0] == "X",
        None => true,
    }
}

/// The fields of `/proc/PID/stat` after the command name: `[0]` the state,
/// `[1]` the parent's PID, `[19]` the start time in clock ticks. `None` when
/// the process is gone.
pub fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(") ")?;
    Some(after.split(' ').map(str::to_owned).collect())
}

/// Whether `pid` is a live, non-zombie process.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn describe(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    format!("{pid}: {}", cmdline.trim())
}

/// Runs `fut` with a deadline; a test that hangs fails instead.
pub async fn within<F: Future>(secs: u64, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("test step did not finish within {secs}s"))
}

/// Polls `f` until it returns `Some`, at most `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a PID written by testd (`--grandchild PATH`), waiting for it.
pub async fn read_pid_file(path: &Path) -> u32 {
    eventually(10, || async {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await
}

pub mod launchd;
pub mod sshd;
pub mod systemd;

impl Sandbox {
    /// A manager on a real systemd (the private user manager `um`).
    pub async fn systemd_manager(
        &self,
        um: &systemd::UserManager,
        config: DaemonConfig,
    ) -> DaemonManager {
        let backend = daemon_lifecycle::SystemdBackend::connect_to(
            &daemon_lifecycle::BusTarget::Address(um.bus_address.clone()),
            daemon_lifecycle::Scope::User,
        )
        .await
        .expect("connect to the private user manager");
        DaemonManager::with_backend(config, Arc::new(backend))
    }
}

/// A free loopback address (`127.0.0.1:PORT`) for a test daemon to listen on.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The identity record beside the sandbox's PID file, as JSON.
pub fn identity(sb: &Sandbox) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(sb.path("daemon.pid.identity")).ok()?;
    serde_json::from_str(&text).ok()
}

/// A `daemonctl` command that runs unprivileged: as `nobody` through
/// `setpriv` when the tests run as root (as in CI), as the caller otherwise.
pub fn daemonctl_unprivileged() -> std::process::Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(daemonctl());
        c
    } else {
        std::process::Command::new(daemonctl())
    }
}

/// For tests that need root: `true` when running as root. Otherwise they
/// skip with a note — except in CI (`CI` set, as `.ci/run` does), where a
/// skip would be counted as a pass, so they fail.
pub fn have_root(why: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test needs root ({why}) and CI must run it");
    }
    eprintln!("SKIPPED: needs root ({why})");
    false
}

/// Runs `cmd` to completion with its stdout and stderr captured, at most
/// `secs`: a command that hangs is killed (SIGKILL) and the test fails,
/// instead of hanging.
pub fn output_within(cmd: &mut std::process::Command, secs: u64) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the command");
    let pipe = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = pipe(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = pipe(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {secs}s (killed)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A sandbox whose directory is shared like `/tmp` (mode 1777), so another
/// user (`nobody`, the hostile neighbour of the attack tests) can plant
/// files in it.
pub fn shared_sandbox(name: &str) -> Sandbox {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new(name);
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    sb
}

/// Runs `script` with `sh` as `nobody` (UID 65534); its outcome is returned.
pub fn nobody_sh(script: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
}

/// [`nobody_sh`], which must succeed.
pub fn as_nobody(script: &str) {
    let out = nobody_sh(script);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
