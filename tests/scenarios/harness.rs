//! How a scenario runs on every backend: the targets, the private systemd
//! managers they share, the per-target context a scenario gets, checks that
//! consult [`KNOWN_GAPS`], and the teardown and leak checks after each run.

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use daemon_lifecycle::{
    BusTarget, DaemonConfig, DaemonError, DaemonManager, DaemonStatus, LaunchdBackend, Scope,
    StatusReport, SystemdBackend,
};

use super::gaps::{KNOWN_GAPS, NOT_RUN};
use crate::support::sshd::{Sshd, Variant};
use crate::support::systemd::{self, SystemManager, UserManager};
use crate::support::{self, Sandbox};
use daemon_lifecycle::host::{SshDestination, SshHost, SshOptions};

/// Where a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `ForkBackend` (our supervisor and a PID file).
    Fork,
    /// A transient unit on the private `systemd --user`.
    UserTransient,
    /// An installed (and enabled) unit file on the private `systemd --user`.
    UserUnit,
    /// A transient unit on the private system-mode systemd.
    SystemTransient,
    /// An installed (and enabled) unit file on the private system-mode systemd.
    SystemUnit,
    /// An agent (`gui/UID`) on the launchctl simulator
    /// (`examples/launchctl_sim.rs`), one per run.
    Launchd,
    /// A transient unit on the private system-mode systemd, driven as a
    /// remote host: over ssh to an sshd inside its mount namespace
    /// (`tests/support/sshd.rs`), its own connection per run.
    SystemRemote,
}

impl Target {
    /// Every target, in the order results are reported.
    pub const ALL: [Target; 7] = [
        Target::Fork,
        Target::UserTransient,
        Target::UserUnit,
        Target::SystemTransient,
        Target::SystemUnit,
        Target::Launchd,
        Target::SystemRemote,
    ];

    /// The name the README's table uses.
    pub fn name(self) -> &'static str {
        match self {
            Target::Fork => "fork",
            Target::UserTransient => "systemd user, transient",
            Target::UserUnit => "systemd user, unit file",
            Target::SystemTransient => "systemd system, transient",
            Target::SystemUnit => "systemd system, unit file",
            Target::Launchd => "launchd (simulated)",
            Target::SystemRemote => "systemd system, remote (ssh)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Target::Fork => "fork",
            Target::UserTransient => "ut",
            Target::UserUnit => "uu",
            Target::SystemTransient => "st",
            Target::SystemUnit => "su",
            Target::Launchd => "ld",
            Target::SystemRemote => "sr",
        }
    }

    fn is_unit_file(self) -> bool {
        matches!(self, Target::UserUnit | Target::SystemUnit)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How much one target's run of a scenario may take (teardown apart).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);

/// One shared private systemd, as the scenarios reach it.
#[derive(Debug, Clone)]
struct Bus {
    address: String,
    scope: Scope,
    /// Where installed units go (host path).
    unit_dir: PathBuf,
    /// Where the manager keeps transient unit files (host path).
    transient_dir: PathBuf,
    /// The system manager's `/run` (it runs in its own mount namespace).
    run_dir: Option<PathBuf>,
    /// For the remote target: `host` and the ssh config that reaches it.
    remote: Option<(String, PathBuf)>,
}

/// The managers every scenario of this test process shares: `Ok(None)`
/// when systemd is not available and not required (those targets skip).
struct Shared {
    user: Result<Option<Bus>, String>,
    system: Result<Option<Bus>, String>,
    /// The system manager again, reached over ssh.
    remote: Result<Option<Bus>, String>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
/// The managers themselves, stopped when the test process exits (statics
/// are never dropped: an `atexit` handler drops them).
#[allow(clippy::type_complexity)]
static OWNED: Mutex<(Option<UserManager>, Option<SystemManager>, Option<Sshd>)> =
    Mutex::new((None, None, None));

extern "C" fn stop_shared_managers() {
    let (user, system, sshd) = match OWNED.lock() {
        Ok(mut owned) => std::mem::take(&mut *owned),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    // The ssh host first: its sessions are in the system manager's namespace.
    drop(sshd);
    // Both stop at once: each takes a moment to shut its units down.
    let system = std::thread::spawn(move || drop(system));
    drop(user);
    let _ = system.join();
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

/// Starts both managers once per test process (in parallel, about a second).
fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        // SAFETY: registers a plain `extern "C"` function that takes no
        // arguments; it runs once, at process exit.
        unsafe { libc::atexit(stop_shared_managers) };
        let user = std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(UserManager::start())
        });
        let system = std::thread::spawn(SystemManager::start);
        let user = match user.join() {
            Ok(Some(um)) => {
                let bus = Bus {
                    address: um.bus_address.clone(),
                    scope: Scope::User,
                    unit_dir: um.unit_dir(),
                    transient_dir: um.transient_dir(),
                    run_dir: None,
                    remote: None,
                };
                eprintln!("shared systemd --user up in {:?}", um.startup);
                OWNED.lock().unwrap().0 = Some(um);
                Ok(Some(bus))
            }
            Ok(None) => Ok(None),
            Err(payload) => Err(panic_text(&*payload)),
        };
        let mut remote = Ok(None);
        let system = match system.join() {
            Ok(Some(sm)) => {
                let bus = Bus {
                    address: sm.bus_address.clone(),
                    scope: Scope::System,
                    unit_dir: sm.unit_dir.clone(),
                    transient_dir: sm.transient_dir(),
                    run_dir: Some(sm.run_dir.clone()),
                    remote: None,
                };
                remote = match std::panic::catch_unwind(|| Sshd::start(&sm, Variant::InNetns)) {
                    Ok(Some(sshd)) => {
                        let remote = Bus {
                            remote: Some((format!("root@{}", sshd.alias), sshd.client_config())),
                            ..bus.clone()
                        };
                        OWNED.lock().unwrap().2 = Some(sshd);
                        Ok(Some(remote))
                    }
                    Ok(None) => Ok(None),
                    Err(payload) => Err(panic_text(&*payload)),
                };
                OWNED.lock().unwrap().1 = Some(sm);
                Ok(Some(bus))
            }
            Ok(None) => Ok(None),
            Err(payload) => Err(panic_text(&*payload)),
        };
        Shared {
            user,
            system,
            remote,
        }
    })
}

/// What a scenario gets: one target, its own sandbox (a unique tag and
/// name), and checks that know the known-gaps table.
#[derive(Clone)]
pub struct Ctx {
    inner: Arc<Inner>,
}

struct Inner {
    scenario: &'static str,
    target: Target,
    sb: Sandbox,
    bus: Option<Bus>,
    backend: tokio::sync::OnceCell<SystemdBackend>,
    /// The launchd target's simulator (dropped, with its jobs, at teardown).
    sim: Mutex<Option<crate::support::launchd::Sim>>,
    launchd: Option<LaunchdBackend>,
    /// Every config a manager was made for (torn down after the run).
    configs: Mutex<Vec<DaemonConfig>>,
    failures: Mutex<Vec<String>>,
    /// Indexes into KNOWN_GAPS that a check consulted.
    consulted: Mutex<Vec<usize>>,
}

impl Ctx {
    fn new(scenario: &'static str, target: Target, bus: Option<Bus>) -> Ctx {
        let sb = Sandbox::new(&format!("{scenario}-{}", target.short()));
        std::fs::create_dir(sb.path("out")).unwrap();
        let sim = (target == Target::Launchd).then(|| crate::support::launchd::Sim::detached(&[]));
        let launchd = sim.as_ref().map(|sim| sim.backend(Scope::User));
        Ctx {
            inner: Arc::new(Inner {
                scenario,
                target,
                sb,
                bus,
                backend: tokio::sync::OnceCell::new(),
                sim: Mutex::new(sim),
                launchd,
                configs: Mutex::new(Vec::new()),
                failures: Mutex::new(Vec::new()),
                consulted: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Where this run is.
    pub fn target(&self) -> Target {
        self.inner.target
    }

    /// The unique tag every process of this run carries (its daemon name).
    pub fn tag(&self) -> &str {
        &self.inner.sb.tag
    }

    /// A config running `testd --tag TAG EXTRA...`, named after the tag,
    /// in the scope of the target's manager.
    pub fn config(&self, extra: &[&str]) -> DaemonConfig {
        let mut config = self.inner.sb.config(extra);
        config.scope = match self.target() {
            Target::Launchd => Some(Scope::User),
            _ => self.inner.bus.as_ref().map(|b| b.scope),
        };
        if let Some((host, _)) = self.inner.bus.as_ref().and_then(|b| b.remote.as_ref()) {
            config.host = Some(host.clone());
        }
        config
    }

    /// A path for the scenario's own files (the daemon's dumps, stamps):
    /// everything else in the sandbox must be gone after the run.
    pub fn out(&self, name: &str) -> String {
        self.inner
            .sb
            .path("out")
            .join(name)
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// Whether a TCP connect to `addr` succeeds where the daemon runs:
    /// here, or for the remote target on the host (over ssh).
    pub fn port_answers(&self, addr: &str) -> bool {
        let Some((host, ssh_config)) = self.inner.bus.as_ref().and_then(|b| b.remote.as_ref())
        else {
            return std::net::TcpStream::connect(addr).is_ok();
        };
        let (ip, port) = addr.rsplit_once(':').unwrap();
        let out = support::output_within(
            std::process::Command::new("ssh")
                .arg("-F")
                .arg(ssh_config)
                .args(["-o", "BatchMode=yes", host, "bash", "-c"])
                .arg(format!("'exec 3<>/dev/tcp/{ip}/{port}'"))
                .stdin(std::process::Stdio::null()),
            10,
        );
        out.status.success()
    }

    /// The sandbox directory (the PID file's).
    pub fn dir(&self) -> &Path {
        self.inner.sb.dir.path()
    }

    async fn systemd(&self) -> SystemdBackend {
        self.inner
            .backend
            .get_or_init(|| self.connect())
            .await
            .clone()
    }

    async fn connect(&self) -> SystemdBackend {
        let bus = self.inner.bus.as_ref().expect("a systemd target");
        if let Some((host, ssh_config)) = &bus.remote {
            let dest = SshDestination::parse(host).unwrap();
            let opts = SshOptions::default().with_config_file(ssh_config);
            let host = SshHost::connect(&dest, opts)
                .await
                .unwrap_or_else(|e| panic!("ssh to {host}: {e}"));
            // The host shares this machine's files: the same daemonctl
            // is the probe helper there.
            return SystemdBackend::connect_remote(Arc::new(host), bus.scope)
                .await
                .unwrap_or_else(|e| panic!("systemd over ssh: {e}"))
                .with_probe_helper(support::daemonctl());
        }
        let backend =
            SystemdBackend::connect_to(&BusTarget::Address(bus.address.clone()), bus.scope)
                .await
                .unwrap_or_else(|e| panic!("connect to {}: {e}", bus.address))
                // Liveness probes run in `daemonctl` inside the unit.
                .with_probe_helper(support::daemonctl());
        match &bus.run_dir {
            // The harness binds these over its /run and /etc/systemd/system.
            Some(run) => backend
                .with_path_seen_as(run, "/run")
                .with_path_seen_as(&bus.unit_dir, "/etc/systemd/system"),
            None => backend,
        }
    }

    fn remember(&self, config: &DaemonConfig) {
        self.inner.configs.lock().unwrap().push(config.clone());
    }

    /// A manager for `config` on this target; for a unit-file target the
    /// config is installed (and enabled) first, so a changed config is
    /// installed again. An install that fails is a failed check.
    pub async fn manager(&self, config: &DaemonConfig) -> DaemonManager {
        match self.try_manager(config).await {
            Ok(m) => m,
            Err(e) => panic!("install: {e}"),
        }
    }

    /// [`Ctx::manager`], with the install's error returned.
    pub async fn try_manager(&self, config: &DaemonConfig) -> Result<DaemonManager, DaemonError> {
        self.remember(config);
        if self.target().is_unit_file() {
            self.install(config).await?;
        }
        Ok(self.manager_without_install(config).await)
    }

    /// Installs the unit file (unit-file targets only).
    pub async fn install(&self, config: &DaemonConfig) -> Result<bool, DaemonError> {
        self.remember(config);
        let bus = self.inner.bus.as_ref().expect("a systemd target");
        // Enabled: a unit nothing refers to is unloaded once inactive, which
        // would hide what a loaded one reports.
        self.systemd()
            .await
            .install(
                &daemon_lifecycle::ServiceSpec::from_config(config)?,
                Some(&bus.unit_dir),
                true,
            )
            .await
    }

    /// A manager for `config`, installing nothing.
    pub async fn manager_without_install(&self, config: &DaemonConfig) -> DaemonManager {
        self.remember(config);
        match self.target() {
            Target::Fork => {
                DaemonManager::with_backend(config.clone(), Arc::new(support::fork_backend()))
            }
            Target::Launchd => {
                DaemonManager::with_backend(config.clone(), Arc::new(self.launchd()))
            }
            _ => DaemonManager::with_backend(config.clone(), Arc::new(self.systemd().await)),
        }
    }

    fn launchd(&self) -> LaunchdBackend {
        self.inner.launchd.clone().expect("the launchd target")
    }

    /// A manager on a connection of its own (a separate caller, as another
    /// process would be); installs nothing.
    pub async fn manager_on_own_connection(&self, config: &DaemonConfig) -> DaemonManager {
        self.remember(config);
        match self.target() {
            Target::Fork => {
                DaemonManager::with_backend(config.clone(), Arc::new(support::fork_backend()))
            }
            Target::Launchd => {
                DaemonManager::with_backend(config.clone(), Arc::new(self.launchd()))
            }
            _ => DaemonManager::with_backend(config.clone(), Arc::new(self.connect().await)),
        }
    }

    /// Records a failure of this run (the scenario goes on).
    pub fn fail(&self, what: String) {
        self.inner.failures.lock().unwrap().push(what);
    }

    /// Compares what this backend says with what every backend must say,
    /// unless KNOWN_GAPS has a row for this scenario, check and target: then
    /// it must say exactly what the row says (a row that is no longer true
    /// fails). Returns whether `got` is what every backend must say.
    pub fn check(&self, check: &str, got: impl Display, want: impl Display) -> bool {
        self.check_with(check, got.to_string(), want.to_string(), None)
    }

    /// [`Ctx::check`] of an operation's [`outcome`]; a mismatch shows the
    /// whole error.
    pub fn check_outcome<T>(
        &self,
        check: &str,
        result: &Result<T, DaemonError>,
        want: impl Display,
    ) -> bool {
        let detail = result.as_ref().err().map(|e| e.to_string());
        self.check_with(check, outcome(result), want.to_string(), detail)
    }

    fn check_with(&self, check: &str, got: String, want: String, detail: Option<String>) -> bool {
        let detail = detail.map(|d| format!(" [{d}]")).unwrap_or_default();
        let target = self.target();
        let gap = KNOWN_GAPS.iter().enumerate().find(|(_, g)| {
            g.scenario == self.inner.scenario && g.check == check && g.on.contains(&target)
        });
        let Some((i, gap)) = gap else {
            if got != want {
                self.fail(format!("{check}: got {got:?}, want {want:?}{detail}"));
            }
            return got == want;
        };
        self.inner.consulted.lock().unwrap().push(i);
        if gap.expected != want {
            self.fail(format!(
                "{check}: the KNOWN_GAPS row expects {:?} elsewhere, but the scenario wants {want:?}: update the row",
                gap.expected
            ));
        } else if got == want {
            self.fail(format!(
                "{check}: the KNOWN_GAPS row says this backend says {:?}, but it now says {got:?} like the others: remove it from the row (and the README)",
                gap.says
            ));
        } else if got != gap.says {
            self.fail(format!(
                "{check}: got {got:?}, want {want:?} (the KNOWN_GAPS row says {:?} here){detail}",
                gap.says
            ));
        } else {
            eprintln!(
                "{} on {target}: known gap: {check}: {got:?} (elsewhere {want:?})",
                self.inner.scenario
            );
        }
        false
    }

    /// Checks a report's words as one check named `step`: the state, the
    /// failure's reason (`-`: none) and the last exit (`-`: none), as
    /// `stopped (reason: -; last exit: killed by signal 9 (SIGKILL))`.
    pub fn check_status(
        &self,
        step: &str,
        report: &StatusReport,
        state: &str,
        reason: &str,
        last_exit: &str,
    ) -> bool {
        let (s, r, e) = words(report);
        self.check(
            step,
            format!("{s} (reason: {r}; last exit: {e})"),
            format!("{state} (reason: {reason}; last exit: {last_exit})"),
        )
    }

    /// This run's daemon processes: live processes carrying the tag whose
    /// program is testd (the daemon and its descendants; not the fork
    /// backend's supervisor). Host PIDs, whatever PID namespace they run in.
    pub fn daemon_processes(&self) -> Vec<u32> {
        let testd = support::testd();
        self.inner
            .sb
            .processes()
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                    c.split(|b| *b == 0)
                        .next()
                        .is_some_and(|argv0| argv0 == testd.as_os_str().as_encoded_bytes())
                })
            })
            .collect()
    }

    /// How many daemon processes there are, polled for up to 2 s until
    /// there are `want` (a process just killed needs its parent to reap
    /// it; one just started may not have forked its children yet).
    pub async fn daemon_processes_settled(&self, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let n = self.daemon_processes().len();
            if n == want || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops and removes whatever the run left (every config it used), then
    /// checks nothing is left: no process, no unit, no unit file, nothing in
    /// the sandbox but `out/`.
    async fn teardown(&self) {
        let configs = std::mem::take(&mut *self.inner.configs.lock().unwrap());
        let mut seen = Vec::new();
        for config in configs.into_iter().rev() {
            if seen.contains(&config.name) {
                continue;
            }
            seen.push(config.name.clone());
            let m = self.manager_without_install(&config).await;
            let _ = tokio::time::timeout(Duration::from_secs(30), m.kill()).await;
            let _ = tokio::time::timeout(Duration::from_secs(30), m.cleanup_stale()).await;
            if let (true, Ok(spec)) = (
                self.target().is_unit_file(),
                daemon_lifecycle::ServiceSpec::from_config(&config),
            ) {
                let bus = self.inner.bus.as_ref().unwrap();
                let backend = self.systemd().await;
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    backend.uninstall(&spec, Some(&bus.unit_dir)),
                )
                .await;
            }
            if let (Target::Launchd, Ok(spec)) = (
                self.target(),
                daemon_lifecycle::ServiceSpec::from_config(&config),
            ) {
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    self.launchd().uninstall(&spec, None),
                )
                .await;
            }
        }
        self.inner.configs.lock().unwrap().clear();
        // The simulated launchd goes, with whatever it still runs. What
        // escaped its jobs' process groups (launchd kills only those) is a
        // check of its own, then killed, so the leak check below sees the rest.
        let sim = self.inner.sim.lock().unwrap().take();
        if let Some(sim) = sim {
            tokio::task::spawn_blocking(move || drop(sim))
                .await
                .unwrap();
            let left = poll(2, || async {
                let left = self.inner.sb.processes();
                left.is_empty().then_some(())
            })
            .await;
            let escaped = self.inner.sb.processes();
            let got = match (left, escaped.len()) {
                (Some(()), _) | (None, 0) => "nothing".to_owned(),
                (None, n) => format!("{n} processes"),
            };
            self.check("teardown: left behind", got, "nothing");
            for pid in escaped {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        self.check_nothing_left().await;
    }

    /// Checks, as the check `{step}: left behind`, that nothing of this run
    /// is left where it stopped: no process carrying the tag (the fork
    /// backend's supervisor included), no file beside the PID file but
    /// `out/` (PID file, identity record, lock, sockets), and for a
    /// transient target no unit. (A unit-file target keeps its installed,
    /// enabled unit until the teardown.)
    pub async fn check_left_behind(&self, step: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        let tag = self.tag().to_owned();
        let left = loop {
            let mut left = Vec::new();
            let processes = self.inner.sb.processes().len();
            if processes > 0 {
                left.push(format!("{processes} processes"));
            }
            if let Some(bus) = &self.inner.bus {
                if !self.target().is_unit_file() {
                    // Named with NAME for the daemon's name (unique per run).
                    left.extend(
                        systemd::units_named(&bus.address, &tag)
                            .await
                            .into_iter()
                            .map(|u| format!("unit {}", u.replace(&tag, "NAME"))),
                    );
                }
            }
            let mut files: Vec<String> = std::fs::read_dir(self.dir())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "out")
                .map(|n| format!("file {n}"))
                .collect();
            files.sort();
            left.extend(files);
            if left.is_empty() || Instant::now() >= deadline {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let got = if left.is_empty() {
            "nothing".to_owned()
        } else {
            left.join(", ")
        };
        self.check(&format!("{step}: left behind"), got, "nothing")
    }

    /// Checks that nothing of this run exists: no process carrying the tag,
    /// no unit or unit file named after it, no file beside the PID file
    /// but `out/` (each one found is a failure).
    pub async fn check_nothing_created(&self) {
        self.check_nothing_left().await
    }

    async fn check_nothing_left(&self) {
        let tag = self.tag().to_owned();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = self.inner.sb.processes();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                self.fail(format!("left processes behind: {left:?}"));
                break; // the sandbox kills them when dropped
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(bus) = &self.inner.bus {
            // A unit of ours that just stopped may take a moment to unload.
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let units = systemd::units_named(&bus.address, &tag).await;
                if units.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    self.fail(format!("left units behind: {units:?}"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for dir in [&bus.unit_dir, &bus.transient_dir] {
                let files = files_named(dir, &tag);
                if !files.is_empty() {
                    self.fail(format!("left unit files behind: {files:?}"));
                }
            }
        }
        let mut left: Vec<String> = std::fs::read_dir(self.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "out")
            .collect();
        left.sort();
        if !left.is_empty() {
            self.fail(format!("left files in the PID file's directory: {left:?}"));
        }
    }

    fn unconsulted_gaps(&self) {
        let consulted = self.inner.consulted.lock().unwrap().clone();
        for (i, gap) in KNOWN_GAPS.iter().enumerate() {
            if gap.scenario == self.inner.scenario
                && gap.on.contains(&self.target())
                && !consulted.contains(&i)
            {
                self.fail(format!(
                    "the KNOWN_GAPS row for check {:?} was never consulted (no such check, or the run stopped before it)",
                    gap.check
                ));
            }
        }
    }
}

/// How long a stop took, in words.
pub fn took_words(took: Duration, timeout_secs: u64) -> &'static str {
    let timeout = Duration::from_secs(timeout_secs);
    if took < timeout {
        "less than the shutdown timeout"
    } else if took < timeout + Duration::from_secs(3) {
        "the shutdown timeout, plus less than 3 s"
    } else {
        "much longer than the shutdown timeout"
    }
}

/// Files and links below `dir` (two levels: `*.wants/` too) whose name
/// contains `tag`.
fn files_named(dir: &Path, tag: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().contains(tag) {
            out.push(path.clone());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Ok(rd) = std::fs::read_dir(&path) {
                out.extend(
                    rd.flatten()
                        .filter(|e| e.file_name().to_string_lossy().contains(tag))
                        .map(|e| e.path()),
                );
            }
        }
    }
    out
}

/// A report as words: the state, the failure's reason (`-`: none), the
/// last exit (`-`: none).
pub fn words(report: &StatusReport) -> (String, String, String) {
    let reason = match &report.status {
        DaemonStatus::Failed(r) => r.clone(),
        _ => "-".to_owned(),
    };
    (
        report.status.state_name().to_owned(),
        reason,
        report
            .last_exit
            .map(|e| e.to_string())
            .unwrap_or_else(|| "-".to_owned()),
    )
}

/// An operation's outcome as words: `ok`, or the error's variant with the
/// field or operation it names (`InvalidConfig(env.A)`, `Timeout(start)`).
pub fn outcome<T>(result: &Result<T, DaemonError>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(DaemonError::InvalidConfig { field, .. }) => format!("InvalidConfig({field})"),
        Err(DaemonError::Timeout { operation, .. }) => format!("Timeout({operation})"),
        Err(other) => {
            let debug = format!("{other:?}");
            debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    }
}

/// How a scenario shares the managers with the other scenarios running at
/// the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Its runs share each manager with other scenarios' runs.
    Shared,
    /// No other scenario uses a manager while it does, and its two targets
    /// on one manager run one after the other: nothing reloads the manager
    /// meanwhile. For checks that a `daemon-reload` changes on systemd 252:
    /// it resets a unit's start-limit counter (restarts beyond
    /// `max_restarts`), and a reload in the moment between
    /// `StartTransientUnit` and the backend's rewrite of the transient file
    /// re-reads systemd's own version (`$` and `;` read back escaped). Every
    /// install reloads its manager.
    Exclusive,
}

/// One lock per shared manager (user, system): scenarios hold it shared,
/// an exclusive one holds it alone.
static MANAGER_LOCKS: [tokio::sync::RwLock<()>; 2] = [
    tokio::sync::RwLock::const_new(()),
    tokio::sync::RwLock::const_new(()),
];

/// How long a run may wait for its manager (an exclusive scenario elsewhere).
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// A manager's lock, held for a run (or a group of runs).
#[allow(dead_code)] // held for its drop
enum Held {
    Nothing,
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Exclusive(tokio::sync::RwLockWriteGuard<'static, ()>),
}

/// Takes the lock of `target`'s manager as `sharing` says, waiting at most
/// [`LOCK_TIMEOUT`] (`None`: it did not come).
async fn hold(target: Target, sharing: Sharing) -> Option<Held> {
    let Some(lock) = lock_of(target) else {
        return Some(Held::Nothing);
    };
    let held = match sharing {
        Sharing::Shared => tokio::time::timeout(LOCK_TIMEOUT, lock.read())
            .await
            .map(Held::Shared),
        Sharing::Exclusive => tokio::time::timeout(LOCK_TIMEOUT, lock.write())
            .await
            .map(Held::Exclusive),
    };
    held.ok()
}

/// Which shared manager a target runs on (an index into MANAGER_LOCKS).
fn manager_of(target: Target) -> Option<usize> {
    match target {
        Target::Fork | Target::Launchd => None,
        Target::UserTransient | Target::UserUnit => Some(0),
        Target::SystemTransient | Target::SystemUnit | Target::SystemRemote => Some(1),
    }
}

fn lock_of(target: Target) -> Option<&'static tokio::sync::RwLock<()>> {
    manager_of(target).map(|i| &MANAGER_LOCKS[i])
}

/// Runs `scenario` on every available target at once, each in its own
/// sandbox under a deadline, then tears each down and checks that nothing is
/// left. Fails listing every target whose run went wrong.
pub async fn run<F, Fut>(scenario: &'static str, sharing: Sharing, f: F)
where
    F: Fn(Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let f = Arc::new(f);
    let shared = tokio::task::spawn_blocking(shared).await.unwrap();
    let mut problems = Vec::new();
    // Groups of targets run at once; the targets of one group one after the
    // other, under one lock of their manager.
    let mut groups: Vec<Vec<Ctx>> = Vec::new();
    for target in Target::ALL {
        let (which, bus) = match target {
            Target::Fork | Target::Launchd => ("", Ok(None)),
            Target::UserTransient | Target::UserUnit => ("user", shared.user.clone()),
            Target::SystemTransient | Target::SystemUnit => ("system", shared.system.clone()),
            Target::SystemRemote => ("remote system", shared.remote.clone()),
        };
        let bus = match (target, bus) {
            (Target::Fork | Target::Launchd, _) => None,
            (_, Ok(Some(bus))) => Some(bus),
            (_, Ok(None)) => {
                eprintln!("SKIPPED: {scenario} on {target}: no {which} manager");
                continue;
            }
            (_, Err(e)) => {
                problems.push(format!(
                    "{target}: the shared {which} manager did not start: {e}"
                ));
                continue;
            }
        };
        if let Some(not_run) = NOT_RUN
            .iter()
            .find(|n| n.scenario == scenario && n.on.contains(&target))
        {
            eprintln!("NOT RUN: {scenario} on {target}: {}", not_run.why);
            continue;
        }
        let ctx = Ctx::new(scenario, target, bus);
        let joins = groups.iter_mut().find(|g| {
            sharing == Sharing::Exclusive
                && manager_of(target).is_some()
                && manager_of(g[0].target()) == manager_of(target)
        });
        match joins {
            Some(group) => group.push(ctx),
            None => groups.push(vec![ctx]),
        }
    }
    let tasks: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let f = f.clone();
            tokio::spawn(async move {
                let target = group[0].target();
                let Some(_held) = hold(target, sharing).await else {
                    return vec![(target, vec!["waited too long for its manager".to_owned()])];
                };
                let mut results = Vec::new();
                for ctx in group {
                    results.push(run_one(scenario, ctx, &*f).await);
                }
                results
            })
        })
        .collect();
    for task in futures_util::future::join_all(tasks).await {
        for (target, failures) in task.unwrap() {
            problems.extend(failures.into_iter().map(|f| format!("{target}: {f}")));
        }
    }
    assert!(
        problems.is_empty(),
        "scenario {scenario}:\n  {}",
        problems.join("\n  ")
    );
}

/// One target's run: the scenario under its deadline (a panic is a
/// failure), the teardown, the known-gaps bookkeeping.
async fn run_one<F, Fut>(scenario: &'static str, ctx: Ctx, f: &F) -> (Target, Vec<String>)
where
    F: Fn(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let t0 = Instant::now();
    let task = tokio::spawn(tokio::time::timeout(SCENARIO_TIMEOUT, f(ctx.clone())));
    match task.await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => ctx.fail(format!("did not finish within {SCENARIO_TIMEOUT:?}")),
        Err(e) if e.is_panic() => ctx.fail(format!("panicked: {}", panic_text(&*e.into_panic()))),
        Err(e) => ctx.fail(format!("task failed: {e}")),
    }
    let ran = t0.elapsed();
    if tokio::time::timeout(Duration::from_secs(60), ctx.teardown())
        .await
        .is_err()
    {
        ctx.fail("teardown did not finish within 60 s".into());
    }
    ctx.unconsulted_gaps();
    let failures = std::mem::take(&mut *ctx.inner.failures.lock().unwrap());
    eprintln!(
        "{scenario} on {}: {} in {:.2} s (teardown {:.2} s)",
        ctx.target(),
        if failures.is_empty() { "ok" } else { "FAILED" },
        ran.as_secs_f64(),
        (t0.elapsed() - ran).as_secs_f64()
    );
    (ctx.target(), failures)
}

/// Polls `f` every 20 ms until it returns `Some`, at most `secs`; `None`
/// when it never did.
pub async fn poll<T, F, Fut>(secs: u64, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the status until `done` holds, at most `secs`; returns the last
/// report either way (a run that never settles shows what it got).
///
/// One error is retried, loudly: `ECONNRESET` from the fork backend's
/// control socket, which a status gets when it connects just as the
/// supervisor exits (the daemon exited and no restart follows):
/// `fork/control.rs` `Client::connect` takes `ECONNREFUSED`/`ENOENT` for
/// "no supervisor" but not `ECONNRESET`. A bug of the backend, reported;
/// remove this once it is fixed.
pub async fn settle(
    m: &DaemonManager,
    secs: u64,
    done: impl Fn(&StatusReport) -> bool,
) -> StatusReport {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let report = match m.status_report().await {
            Ok(r) => r,
            Err(DaemonError::Io { context, source })
                if source.kind() == std::io::ErrorKind::ConnectionReset
                    && Instant::now() < deadline =>
            {
                eprintln!(
                    "status failed ({context}: {source}), the known ECONNRESET race: retried"
                );
                continue;
            }
            Err(e) => panic!("status: {e}"),
        };
        if done(&report) || Instant::now() >= deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The reason of a failed status, if it is one.
pub fn reason(report: &StatusReport) -> Option<&str> {
    match &report.status {
        DaemonStatus::Failed(r) => Some(r),
        _ => None,
    }
}
