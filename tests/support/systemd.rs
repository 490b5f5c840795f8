//! A private, real `systemd --user` for tests, started per test.
//!
//! Only systemd enters a namespace: `unshare --mount` with a tmpfs on `/run`
//! holding an empty `/run/systemd/system` (so it believes it was booted by
//! systemd) while `XDG_RUNTIME_DIR` points at a temp dir outside `/run`: its
//! bus socket (`$XDG_RUNTIME_DIR/bus`) is reachable from the test process,
//! and PIDs are the host's, so tests check real processes. It runs in a
//! private cgroup of its own in every hierarchy, so parallel instances do
//! not share `app.slice`, and teardown can kill whatever is left.
//!
//! Needs root and util-linux `unshare` (CI has both). When they are missing
//! the tests skip with a note — unless `DAEMON_LIFECYCLE_REQUIRE_SYSTEMD=1`,
//! when they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether tests that need systemd must fail instead of skipping.
pub fn systemd_required() -> bool {
    std::env::var("DAEMON_LIFECYCLE_REQUIRE_SYSTEMD").is_ok_and(|v| v == "1")
}

/// Skips (returns `None`) or fails, per [`systemd_required`].
pub fn unavailable<T>(why: &str) -> Option<T> {
    if systemd_required() {
        panic!("systemd is required (DAEMON_LIFECYCLE_REQUIRE_SYSTEMD=1) but unavailable: {why}");
    }
    eprintln!("SKIPPED: no systemd for this test: {why}");
    None
}

/// A running private user manager; stopped and cleaned up on drop.
pub struct UserManager {
    child: Option<Child>,
    /// `XDG_RUNTIME_DIR` of the manager (the bus socket is `bus` in it).
    pub runtime_dir: tempfile::TempDir,
    /// `XDG_CONFIG_HOME` of the manager: user units go in `systemd/user` below it.
    pub config_home: PathBuf,
    cgroups: Vec<PathBuf>,
    /// The D-Bus address of its session bus.
    pub bus_address: String,
    /// How long it took to come up.
    pub startup: Duration,
}

const SYSTEMD: &str = "/lib/systemd/systemd";

impl UserManager {
    /// Starts one, or skips/fails (see [`systemd_required`]).
    pub async fn start() -> Option<UserManager> {
        if !nix::unistd::Uid::effective().is_root() {
            return unavailable("the private user manager needs root (for unshare and cgroups)");
        }
        for tool in [SYSTEMD, "/usr/bin/unshare", "/usr/bin/dbus-daemon"] {
            if !Path::new(tool).exists() {
                return unavailable(&format!("{tool} is not installed"));
            }
        }
        // The user manager socket-activates its bus from this unit.
        if !Path::new("/usr/lib/systemd/user/dbus.socket").exists() {
            return unavailable(
                "dbus-user-session is not installed (no /usr/lib/systemd/user/dbus.socket)",
            );
        }
        let t0 = Instant::now();
        let runtime_dir = tempfile::Builder::new()
            .prefix("dl-sd-user-")
            .tempdir()
            .unwrap();
        let config_home = runtime_dir.path().join("config");
        std::fs::create_dir_all(config_home.join("systemd/user")).unwrap();
        let cgroups = make_cgroups(&format!(
            "dltest-{}-{}",
            std::process::id(),
            runtime_dir.path().file_name().unwrap().to_string_lossy()
        ));
        let joins: String = cgroups
            .iter()
            .map(|cg| format!("echo $$ > '{}/cgroup.procs' 2>/dev/null; ", cg.display()))
            .collect();
        let log = std::fs::File::create(runtime_dir.path().join("systemd.log")).unwrap();
        let child = Command::new("/usr/bin/unshare")
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(format!(
                "{joins}mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/systemd/system && exec {SYSTEMD} --user --log-target=console"
            ))
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", runtime_dir.path())
            .env("XDG_RUNTIME_DIR", runtime_dir.path())
            .env("XDG_CONFIG_HOME", &config_home)
            .env("USER", "root")
            .env("LOGNAME", "root")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn unshare + systemd --user");
        let bus_address = format!("unix:path={}/bus", runtime_dir.path().display());
        let mut manager = UserManager {
            child: Some(child),
            runtime_dir,
            config_home,
            cgroups,
            bus_address,
            startup: Duration::ZERO,
        };
        // Wait for the socket-activated bus and a "running" manager.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = manager.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(manager.runtime_dir.path().join("systemd.log"))
                    .unwrap_or_default();
                return unavailable(&format!("systemd --user exited ({status}): {log}"));
            }
            if manager.runtime_dir.path().join("bus").exists() {
                if let Ok(state) = manager.system_state().await {
                    if state == "running" || state == "degraded" {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(manager.runtime_dir.path().join("systemd.log"))
                    .unwrap_or_default();
                drop(manager);
                return unavailable(&format!("systemd --user did not come up in 20 s: {log}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        manager.startup = t0.elapsed();
        Some(manager)
    }

    async fn system_state(&self) -> zbus::Result<String> {
        let conn = zbus::connection::Builder::address(self.bus_address.as_str())?
            .build()
            .await?;
        let reply = call(
            &conn,
            MANAGER_PATH,
            "org.freedesktop.DBus.Properties",
            "Get",
            &("org.freedesktop.systemd1.Manager", "SystemState"),
        )
        .await?;
        let value: zbus::zvariant::OwnedValue = reply.body().deserialize()?;
        Ok(String::try_from(value)?)
    }

    /// Where `daemonctl install --unit-dir` must write so this manager sees it.
    pub fn unit_dir(&self) -> PathBuf {
        self.config_home.join("systemd/user")
    }

    /// Environment for a `daemonctl` child that should talk to this manager.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DBUS_SESSION_BUS_ADDRESS", self.bus_address.clone()),
            (
                "XDG_RUNTIME_DIR",
                self.runtime_dir.path().display().to_string(),
            ),
            ("XDG_CONFIG_HOME", self.config_home.display().to_string()),
        ]
    }

    /// PIDs in the manager's cgroup other than the manager itself: the units'
    /// processes (and the socket-activated bus).
    pub fn unit_processes(&self) -> Vec<u32> {
        let me = self.child.as_ref().map(|c| c.id());
        let mut pids = Vec::new();
        for cg in &self.cgroups {
            for entry in walkdir(cg) {
                if let Ok(text) = std::fs::read_to_string(entry.join("cgroup.procs")) {
                    pids.extend(text.lines().filter_map(|l| l.parse::<u32>().ok()));
                }
            }
        }
        pids.sort();
        pids.dedup();
        pids.retain(|p| Some(*p) != me && !is_dbus(*p));
        pids
    }
}

const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// One method call to systemd (`org.freedesktop.systemd1`).
async fn call<B>(
    conn: &zbus::Connection,
    path: &str,
    interface: &str,
    method: &str,
    body: &B,
) -> zbus::Result<zbus::message::Message>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    conn.call_method(
        Some("org.freedesktop.systemd1"),
        path,
        Some(interface),
        method,
        body,
    )
    .await
}

fn is_dbus(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "dbus-daemon")
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// A private cgroup in every writable hierarchy (v1 cpuset skipped: it needs
/// cpus/mems set before it takes processes).
fn make_cgroups(name: &str) -> Vec<PathBuf> {
    let mut made = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return made;
    };
    let mut roots: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        if root.ends_with("cpuset") || !root.join("cgroup.procs").exists() {
            continue;
        }
        let dir = root.join(name);
        if std::fs::create_dir(&dir).is_ok() {
            made.push(dir);
        }
    }
    made
}

impl Drop for UserManager {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            // SIGTERM to a user manager starts exit.target: every unit stops.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        // Whatever is left in our cgroups dies, then the cgroups go.
        for _ in 0..100 {
            let mut left = false;
            for cg in self.cgroups.iter().rev() {
                for dir in walkdir(cg).into_iter().rev() {
                    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                        for pid in text.lines().filter_map(|l| l.parse::<i32>().ok()) {
                            left = true;
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    }
                    let _ = std::fs::remove_dir(&dir);
                }
            }
            if !left && self.cgroups.iter().all(|c| !c.exists()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl UserManager {
    /// The PID of the `systemd --user` process (to freeze it with SIGSTOP).
    pub fn manager_pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// One call to a Manager method (`Reload`, `Reexecute`, ...) with no
    /// arguments and no reply body. `Reexecute` never replies (the manager
    /// execs itself and drops off the bus, as `systemctl daemon-reexec`
    /// expects): its `NoReply` counts as done.
    pub async fn manager_call(&self, method: &str) {
        let conn = self.connection().await;
        match call(&conn, MANAGER_PATH, MANAGER, method, &()).await {
            Ok(_) => {}
            Err(zbus::Error::MethodError(name, _, _))
                if method == "Reexecute"
                    && name.as_str() == "org.freedesktop.DBus.Error.NoReply" => {}
            Err(e) => panic!("{method}: {e}"),
        }
    }

    /// A `systemctl --user` (or `systemd-run --user`) talking to this manager.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("--user").envs(self.env());
        cmd
    }

    /// A fresh connection to this manager's bus.
    pub async fn connection(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.bus_address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap()
    }

    /// All properties of `interface` (e.g. `org.freedesktop.systemd1.Service`)
    /// of a loaded unit, read over D-Bus.
    pub async fn unit_properties(
        &self,
        unit: &str,
        interface: &str,
    ) -> std::collections::HashMap<String, zbus::zvariant::OwnedValue> {
        let conn = self.connection().await;
        let reply = call(&conn, MANAGER_PATH, MANAGER, "GetUnit", &(unit,))
            .await
            .unwrap_or_else(|e| panic!("GetUnit {unit}: {e}"));
        let path: zbus::zvariant::OwnedObjectPath = reply.body().deserialize().unwrap();
        let reply = call(
            &conn,
            path.as_str(),
            "org.freedesktop.DBus.Properties",
            "GetAll",
            &(interface,),
        )
        .await
        .unwrap();
        reply.body().deserialize().unwrap()
    }

    /// Names of the units this manager has loaded whose name starts with `prefix`.
    pub async fn units_named(&self, prefix: &str) -> Vec<String> {
        units_named(&self.bus_address, prefix).await
    }

    /// Where this manager keeps its transient unit files.
    pub fn transient_dir(&self) -> PathBuf {
        self.runtime_dir.path().join("systemd/transient")
    }
}

/// Names of the units the manager at `bus_address` has loaded whose name
/// starts with `prefix` (`ListUnits`).
pub async fn units_named(bus_address: &str, prefix: &str) -> Vec<String> {
    let conn = zbus::connection::Builder::address(bus_address)
        .unwrap()
        .build()
        .await
        .unwrap();
    let reply = call(&conn, MANAGER_PATH, MANAGER, "ListUnits", &())
        .await
        .unwrap();
    #[allow(clippy::type_complexity)]
    let units: Vec<(
        String,
        String,
        String,
        String,
        String,
        String,
        zbus::zvariant::OwnedObjectPath,
        u32,
        String,
        zbus::zvariant::OwnedObjectPath,
    )> = reply.body().deserialize().unwrap();
    units
        .into_iter()
        .map(|u| u.0)
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// A real systemd in system mode, PID 1 of its own namespaces (see
/// `tests/support/systemd-system-harness.sh`), with its system bus reachable
/// from the test process. Units inside share the host's files, but have their
/// own `/run`, `/etc/systemd` and PID namespace (so their PIDs are not ours).
pub struct SystemManager {
    name: String,
    base: tempfile::TempDir,
    /// `unix:path=…` of its system bus.
    pub bus_address: String,
    /// The host path of its `/etc/systemd/system`.
    pub unit_dir: PathBuf,
    /// The host path of its `/run` (the harness binds `$S/run` there).
    pub run_dir: PathBuf,
}

fn harness_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/systemd-system-harness.sh")
}

impl SystemManager {
    /// Boots one, or skips/fails (see [`systemd_required`]).
    pub fn start() -> Option<SystemManager> {
        if !nix::unistd::Uid::effective().is_root() {
            return unavailable("the system-mode harness needs root");
        }
        for tool in [
            SYSTEMD,
            "/usr/bin/unshare",
            "/usr/bin/nsenter",
            "/usr/bin/script",
            "/usr/bin/busctl",
            "/usr/bin/dbus-daemon",
        ] {
            if !Path::new(tool).exists() {
                return unavailable(&format!("{tool} is not installed"));
            }
        }
        let base = tempfile::Builder::new()
            .prefix("dl-sysh-")
            .tempdir()
            .unwrap();
        let name = format!(
            "dl{}-{}",
            std::process::id(),
            base.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("dl-sysh-")
        );
        let out = Command::new("bash")
            .arg(harness_script())
            .args(["start", &name])
            .env("SYSH_BASE", base.path())
            .stdin(Stdio::null())
            .output()
            .expect("run the system harness");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut manager = SystemManager {
            name,
            bus_address: String::new(),
            unit_dir: PathBuf::new(),
            run_dir: PathBuf::new(),
            base,
        };
        if !out.status.success() {
            let why = format!(
                "system harness failed: {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
            drop(manager);
            return unavailable(&why);
        }
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("harness did not print {key}: {stdout}"))
        };
        manager.bus_address = value("DBUS_SYSTEM_BUS_ADDRESS");
        manager.unit_dir = PathBuf::from(value("SYSH_ETC_SYSTEMD_SYSTEM"));
        // $S/etc-systemd/system → $S/run
        manager.run_dir = manager
            .unit_dir
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("run");
        assert!(
            manager.run_dir.join("systemd").is_dir(),
            "harness layout changed"
        );
        Some(manager)
    }
}

impl Drop for SystemManager {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(harness_script())
            .args(["stop", &self.name])
            .env("SYSH_BASE", self.base.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

impl SystemManager {
    /// One call to a Manager method of this system manager, e.g.
    /// `("Reload", &())` or `("KillUnit", &(unit, "main", 9))`.
    pub async fn manager_call<B>(&self, method: &str, body: &B)
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let conn = zbus::connection::Builder::address(self.bus_address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap();
        call(&conn, MANAGER_PATH, MANAGER, method, body)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
    }

    /// Names of the units this manager has loaded whose name starts with `prefix`.
    pub async fn units_named(&self, prefix: &str) -> Vec<String> {
        units_named(&self.bus_address, prefix).await
    }

    /// The host PID of its systemd (PID 1 inside): `nsenter -t` enters its
    /// namespaces through it.
    pub fn init_pid(&self) -> u32 {
        let out = Command::new("bash")
            .arg(harness_script())
            .args(["status", &self.name])
            .env("SYSH_BASE", self.base.path())
            .stdin(Stdio::null())
            .output()
            .expect("run the system harness");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("host-pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("harness status: {text}"))
    }

    /// Where this manager keeps its transient unit files (host path).
    pub fn transient_dir(&self) -> PathBuf {
        self.run_dir.join("systemd/transient")
    }

    /// Makes the path to the bus socket traversable by any user (the
    /// harness keeps its state in a root-only temp dir), so a test can call
    /// the manager as an unprivileged user.
    pub fn open_bus_to_everyone(&self) {
        use std::os::unix::fs::PermissionsExt;
        let socket = PathBuf::from(self.bus_address.trim_start_matches("unix:path="));
        let mut dir = socket.parent();
        while let Some(d) = dir {
            if d == Path::new("/") || !d.starts_with(self.base.path()) && d != self.base.path() {
                break;
            }
            let mode = std::fs::metadata(d).unwrap().permissions().mode();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
            dir = d.parent();
        }
    }
}
