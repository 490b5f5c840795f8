//! The launchctl simulator (`examples/launchctl_sim.rs`) for the launchd
//! tests: one per test, its state, its plist directory and a `launchctl`
//! wrapper script inside the test's sandbox. The simulated launchd of each
//! domain is started here (so this process reaps it) and ended on drop,
//! with every job it ran.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_lifecycle::{DaemonConfig, DaemonManager, LaunchdBackend, Scope};

use super::Sandbox;

/// The simulator binary (cargo builds examples before integration tests).
pub fn launchctl_sim() -> PathBuf {
    let path = super::daemonctl()
        .parent()
        .unwrap()
        .join("examples")
        .join("launchctl_sim");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` (cargo test builds them)",
        path.display()
    );
    path
}

/// This process's UID, as in `gui/UID`.
pub fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// One simulated launchd (its domains) for one test.
pub struct Sim {
    /// `$LAUNCHCTL_SIM_DIR`.
    pub state: PathBuf,
    /// The `launchctl` to drive: a script running the simulator with this
    /// test's environment.
    pub launchctl: PathBuf,
    /// Where the backend writes plists (a test's `~/Library/LaunchAgents`).
    pub plists: PathBuf,
    domains: Vec<Child>,
    /// Its own directory, when it has no sandbox ([`Sim::detached`]).
    _dir: Option<tempfile::TempDir>,
}

impl Sim {
    /// A simulator with the default behaviour (a GUI session exists).
    pub fn new(sb: &Sandbox) -> Sim {
        Sim::with_env(sb, &[])
    }

    /// A simulator with `LAUNCHCTL_SIM_*` settings (`("LAUNCHCTL_SIM_GUI",
    /// "absent")`, ...).
    pub fn with_env(sb: &Sandbox, env: &[(&str, &str)]) -> Sim {
        Sim::in_dir(sb.dir.path(), env)
    }

    /// A simulator in a directory of its own, outside any sandbox: its
    /// simulated launchd processes do not carry a test's tag (the scenario
    /// suite counts a run's processes by tag). They end on drop, when the
    /// directory goes, or when this process does.
    pub fn detached(env: &[(&str, &str)]) -> Sim {
        let dir = tempfile::Builder::new()
            .prefix("launchctl-sim-")
            .tempdir()
            .unwrap();
        let mut sim = Sim::in_dir(dir.path(), env);
        sim._dir = Some(dir);
        sim
    }

    fn in_dir(root: &Path, env: &[(&str, &str)]) -> Sim {
        let state = root.join("launchd");
        let plists = root.join("LaunchAgents");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&plists).unwrap();
        let sim = launchctl_sim();
        let mut script = format!(
            "#!/bin/sh\nexport LAUNCHCTL_SIM_DIR='{}'\n",
            state.display()
        );
        for (k, v) in env {
            script.push_str(&format!("export {k}='{v}'\n"));
        }
        script.push_str(&format!("exec '{}' \"$@\"\n", sim.display()));
        let launchctl = root.join("launchctl");
        std::fs::write(&launchctl, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&launchctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut domains = Vec::new();
        for domain in [
            format!("gui/{}", uid()),
            format!("user/{}", uid()),
            "system".to_owned(),
        ] {
            let log =
                std::fs::File::create(state.join(format!("{}.log", domain.replace('/', "-"))))
                    .unwrap();
            let child = Command::new(&sim)
                .arg("__launchd")
                .arg(&state)
                .arg(&domain)
                .env("LAUNCHCTL_SIM_DIR", &state)
                .env("LAUNCHCTL_SIM_PARENT", std::process::id().to_string())
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start the simulated launchd");
            domains.push(child);
            let sock = state.join(format!("{}.sock", domain.replace('/', "-")));
            let deadline = Instant::now() + Duration::from_secs(5);
            while !sock.exists() {
                assert!(
                    Instant::now() < deadline,
                    "{} never appeared",
                    sock.display()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Sim {
            state,
            launchctl,
            plists,
            domains,
            _dir: None,
        }
    }

    /// A backend on this simulator for `scope`.
    pub fn backend(&self, scope: Scope) -> LaunchdBackend {
        LaunchdBackend::new(&self.launchctl, scope).with_plist_dir(&self.plists)
    }

    /// A manager for `config` on the user-scope backend.
    pub fn manager(&self, config: DaemonConfig) -> DaemonManager {
        DaemonManager::with_backend(config, Arc::new(self.backend(Scope::User)))
    }

    /// Runs the simulated launchctl itself (`print gui/UID/LABEL`, ...).
    pub fn launchctl(&self, args: &[&str]) -> Output {
        super::output_within(Command::new(&self.launchctl).args(args), 20)
    }

    /// `print DOMAIN/LABEL`'s stdout, `None` on a non-zero exit.
    pub fn print(&self, target: &str) -> Option<String> {
        let out = self.launchctl(&["print", target]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every launchctl invocation so far, `ARGS -> CODE`, one a line.
    pub fn calls(&self) -> String {
        std::fs::read_to_string(self.state.join("calls.log")).unwrap_or_default()
    }

    /// The plist file of `label`.
    pub fn plist(&self, label: &str) -> PathBuf {
        self.plists.join(format!("{label}.plist"))
    }

    pub fn state(&self) -> &Path {
        &self.state
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = Command::new(&self.launchctl)
            .arg("__shutdown")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for child in &mut self.domains {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    }
}

/// The line `key = value` of `print`'s top level.
pub fn field(print: &str, key: &str) -> Option<String> {
    print.lines().find_map(|l| {
        let top = l.strip_prefix('\t').filter(|t| !t.starts_with('\t'))?;
        top.strip_prefix(&format!("{key} = ")).map(str::to_owned)
    })
}
