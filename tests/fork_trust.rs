//! The fork backend acts only on what is ours: attacks by another local user
//! (run as `nobody` with `setpriv`) against root's operations, and tampering
//! by an unlucky operator. A victim process logs every signal it receives, to
//! prove that nothing outside the daemon's tree was signalled.
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daemon_lifecycle::{DaemonError, DaemonManager, DaemonStatus, LogsConfig};
use support::{alive, as_nobody, eventually, have_root, shared_sandbox, within, Sandbox};

/// A bystander that logs each signal it gets; killed when the test ends.
struct Victim {
    child: Child,
    log: PathBuf,
}

impl Victim {
    fn start(dir: &Path) -> Victim {
        let log = dir.join("victim.log");
        let child = Command::new(support::testd())
            .arg("--victim")
            .arg(&log)
            .spawn()
            .unwrap();
        let v = Victim { child, log };
        let t = Instant::now();
        while !v.log.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "victim did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        v
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Alive and signalled by nobody.
    fn assert_untouched(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the victim was killed"
        );
        let got = std::fs::read_to_string(&self.log).unwrap();
        assert!(got.is_empty(), "the victim received signals: {got}");
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The process start time in clock ticks (field 22 of /proc/PID/stat).
fn start_time(pid: u32) -> u64 {
    support::proc_stat(pid).unwrap()[19].parse().unwrap()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned()
}

/// Every operation of root against `m`; each must be refused as
/// `UntrustedFile` (status included), with nothing signalled.
async fn every_operation_is_refused(m: &DaemonManager, what: &str) -> Vec<String> {
    let mut messages = Vec::new();
    let status = within(20, m.status_report()).await;
    let results: Vec<(&str, Result<(), DaemonError>)> = vec![
        ("status", status.map(|_| ())),
        ("stop", within(20, m.stop()).await),
        ("kill", within(20, m.kill()).await),
        ("start", within(20, m.start()).await.map(|_| ())),
        ("restart", within(20, m.restart()).await.map(|_| ())),
        ("cleanup", within(20, m.cleanup_stale()).await),
    ];
    for (op, r) in results {
        match r {
            Err(e @ DaemonError::UntrustedFile { .. }) => messages.push(e.to_string()),
            other => panic!("{what}: {op} was not refused: {other:?}"),
        }
    }
    messages
}

#[tokio::test]
async fn planted_records_are_refused_and_nothing_is_signalled() {
    if !have_root("attacks need root as the victim of a hostile user") {
        return;
    }
    let sb = shared_sandbox("trust_planted");
    let mut victim = Victim::start(sb.dir.path());
    let v = victim.pid();
    // A directory the forged record names as its notify socket's: a root
    // that deleted it recursively would be turned against the machine.
    let precious = sb.path("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("keep"), "keep").unwrap();
    let forged = serde_json::json!({
        "daemon": {"pid": v, "start_time": start_time(v), "boot_id": boot_id()},
        "supervisor": null,
        "started_at_ms": 1,
        "last_exit": null,
        "notify_dir": precious,
    });
    let pid_file = sb.path("daemon.pid");
    as_nobody(&format!(
        "printf '{v}\\n' > {pid} && printf '%s' '{rec}' > {pid}.identity && mkdir {pid}.notify",
        pid = pid_file.display(),
        rec = forged
    ));
    let m = sb.manager(sb.config(&[]));
    let messages = every_operation_is_refused(&m, "forged record").await;
    assert!(
        messages.iter().all(|m| m.contains("owned by UID 65534")),
        "{messages:#?}"
    );
    victim.assert_untouched();
    assert!(
        precious.join("keep").exists(),
        "a directory named by a record was deleted"
    );
    assert!(pid_file.exists() && sb.path("daemon.pid.notify").is_dir());
    // Nothing of root's was created beside the planted files.
    assert!(!sb.path("daemon.pid.lock").exists());
    drop(victim);
    sb.assert_no_leaks();
}

/// A copy of a genuine record of another daemon of ours is not about this
/// one: refused, whoever copied it (root included), and that daemon is left alone.
#[tokio::test]
async fn a_copied_genuine_record_is_refused() {
    if !have_root("attacks need root as the victim of a hostile user") {
        return;
    }
    let other = Sandbox::new("trust_copied_src");
    let other_m = other.manager(other.config(&[]));
    let running = within(20, other_m.start()).await.unwrap();

    let sb = shared_sandbox("trust_copied");
    let m = sb.manager(sb.config(&[]));
    // Planted by nobody: not ours by owner.
    as_nobody(&format!(
        "cp {src} {dst} && cp {src}.identity {dst}.identity",
        src = other.path("daemon.pid").display(),
        dst = sb.path("daemon.pid").display()
    ));
    every_operation_is_refused(&m, "copy by nobody").await;
    assert!(alive(running));
    // Copied by root: owner fine, but it belongs to another PID file.
    for f in ["daemon.pid", "daemon.pid.identity"] {
        std::fs::remove_file(sb.path(f)).unwrap();
        std::fs::copy(other.path(f), sb.path(f)).unwrap();
    }
    let messages = every_operation_is_refused(&m, "copy by root").await;
    assert!(
        messages.iter().all(|m| m.contains("another PID file")),
        "{messages:#?}"
    );
    assert!(alive(running));
    assert_eq!(
        other_m.status().await.unwrap(),
        DaemonStatus::Running(running)
    );
    within(20, other_m.stop()).await.unwrap();
    for f in ["daemon.pid", "daemon.pid.identity"] {
        std::fs::remove_file(sb.path(f)).unwrap();
    }
    other.assert_no_leaks();
    sb.assert_no_leaks();
}

/// Symbolic links planted where each file of the set should be: refused,
/// never followed (no file created at a link's target, no secret quoted).
#[tokio::test]
async fn planted_symlinks_are_refused_for_every_file() {
    if !have_root("attacks need root as the victim of a hostile user") {
        return;
    }
    let sb = shared_sandbox("trust_symlinks");
    let secret = sb.path("secret");
    std::fs::write(&secret, "TOPSECRET-4242\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let target = sb.path("created-by-root");
    let mut cfg = sb.config(&[]);
    cfg.logs = Some(LogsConfig {
        stdout: Some(sb.path("out.log")),
        ..Default::default()
    });
    let m = sb.manager(cfg);
    for (name, to) in [
        ("daemon.pid", &secret),
        ("daemon.pid.identity", &secret),
        ("daemon.pid.lock", &target),
        ("daemon.pid.ctl", &target),
        ("out.log", &target),
    ] {
        let link = sb.path(name);
        as_nobody(&format!("ln -s {} {}", to.display(), link.display()));
        let err = within(20, m.start()).await.unwrap_err();
        assert!(
            matches!(&err, DaemonError::UntrustedFile { path, .. } if path == &link),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains("symbolic link"), "{name}: {err}");
        for op in [
            within(20, m.stop()).await,
            within(20, m.kill()).await,
            within(20, m.cleanup_stale()).await,
        ] {
            if let Err(e) = op {
                assert!(!e.to_string().contains("TOPSECRET"), "{name}: {e}");
            }
        }
        if let Err(e) = within(20, m.status()).await {
            assert!(!e.to_string().contains("TOPSECRET"), "{name}: {e}");
        }
        assert!(
            !target.exists(),
            "{name}: root created a file at the link's target"
        );
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "TOPSECRET-4242\n"
        );
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        std::fs::remove_file(&link).unwrap();
        assert!(sb.processes().is_empty(), "{name}: a daemon was started");
    }
    sb.assert_no_leaks();
}

/// A lock planted and held by another user is refused at once; our own lock
/// held too long gives `LockTimeout` naming the holder, and the process
/// exits then (it does not wait for the holder).
#[tokio::test]
async fn a_held_lock_never_blocks_past_the_timeout() {
    if !have_root("attacks need root as the victim of a hostile user") {
        return;
    }
    let sb = shared_sandbox("trust_lock");
    let lock = sb.path("daemon.pid.lock");
    let mut holder = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["flock"])
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    eventually(10, || async { lock.exists().then_some(()) }).await;
    let m = sb.manager(sb.config(&[]));
    let t = Instant::now();
    let err = within(20, m.start()).await.unwrap_err();
    assert!(matches!(err, DaemonError::UntrustedFile { .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    let _ = holder.kill();
    let _ = holder.wait();
    std::fs::remove_file(&lock).unwrap();

    // Root's own lock, held by a root process that never lets go.
    std::fs::write(&lock, "").unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let cfg = sb
        .config(&[])
        .with_startup_timeout_secs(1)
        .with_shutdown_timeout_secs(1);
    let toml = sb.write_toml(&cfg);
    let t = Instant::now();
    let out = Command::new(support::daemonctl())
        .arg("start")
        .arg(&toml)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is held by PID"), "{stderr}");
    assert!(stderr.contains("daemon.pid.lock"), "{stderr}");
    // Bounded by the operation's timeouts (1 s + 1 s + 5 s grace), not by
    // the holder's 60 s.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let _ = holder.kill();
    let _ = holder.wait();
    std::fs::remove_file(&lock).unwrap();
    sb.assert_no_leaks();
}

/// How many daemons of this sandbox run (the daemon itself, not its
/// supervisor: only testd's command line starts with its path).
fn daemons(sb: &Sandbox) -> usize {
    let testd = support::testd();
    sb.processes()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    c.starts_with(testd.as_os_str().as_encoded_bytes())
                        && !String::from_utf8_lossy(&c).contains("--victim")
                })
                .unwrap_or(false)
        })
        .count()
}

/// Damage done to the files of a running daemon (the sandbox, a victim PID).
type Tamper = fn(&Sandbox, u32);

/// The ways an operator can damage the files under a running daemon; after
/// each, status says what is wrong, start runs no second copy, and stop
/// stops the real daemon and leaves nothing.
#[tokio::test]
async fn tampering_never_loses_a_running_daemon() {
    let kinds: [(&str, Tamper); 4] = [
        ("PID file names 1", |sb, _| {
            std::fs::write(sb.path("daemon.pid"), "1\n").unwrap()
        }),
        ("PID file names a victim", |sb, victim| {
            std::fs::write(sb.path("daemon.pid"), format!("{victim}\n")).unwrap()
        }),
        ("record deleted", |sb, _| {
            std::fs::remove_file(sb.path("daemon.pid.identity")).unwrap()
        }),
        ("record edited to name a victim", |sb, victim| {
            let path = sb.path("daemon.pid.identity");
            let mut rec: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            rec["daemon"]["pid"] = victim.into();
            rec["daemon"]["start_time"] = start_time(victim).into();
            rec["pgid"] = victim.into();
            std::fs::write(&path, rec.to_string()).unwrap();
        }),
    ];
    for (what, tamper) in kinds {
        let sb = Sandbox::new("trust_tamper");
        let mut victim = Victim::start(sb.dir.path());
        let m = sb.manager(sb.config(&[]));
        let pid = within(20, m.start()).await.unwrap();
        tamper(&sb, victim.pid());

        let report = within(20, m.status_report()).await.unwrap();
        assert_eq!(report.status, DaemonStatus::Running(pid), "{what}");
        let problem = report.problem.unwrap_or_default();
        assert!(
            problem.contains(&format!("runs daemon {pid}")),
            "{what}: {problem}"
        );
        // No second copy.
        assert_eq!(within(20, m.start()).await.unwrap(), pid, "{what}");
        assert_eq!(daemons(&sb), 1, "{what}: a second daemon runs");
        within(20, m.stop()).await.unwrap();
        assert!(!alive(pid), "{what}: stop left the daemon running");
        victim.assert_untouched();
        drop(victim);
        let left: Vec<_> = std::fs::read_dir(sb.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("daemon.pid"))
            .collect();
        assert!(left.is_empty(), "{what}: stop left {left:?}");
        assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped, "{what}");
        sb.assert_no_leaks();
    }
}

/// A PID directory made read-only (for the daemon's user) while the
/// supervisor restarts the daemon: the new daemon is still found and
/// stopped, and no second one is started.
#[tokio::test]
async fn a_read_only_directory_during_a_restart_loses_nothing() {
    if !have_root("the test switches to nobody so that a mode 0555 directory binds") {
        return;
    }
    let sb = Sandbox::new("trust_readonly");
    std::os::unix::fs::chown(sb.dir.path(), Some(65534), Some(65534)).unwrap();
    let mut cfg = sb.config(&["--crash-after", "700:3"]);
    cfg.restart.policy = daemon_lifecycle::RestartPolicy::Always;
    cfg.restart.delay_ms = 300;
    let toml = sb.write_toml(&cfg);
    std::fs::set_permissions(&toml, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |args: &[&str]| {
        support::daemonctl_unprivileged()
            .args(["--backend", "fork"])
            .args(args)
            .arg(&toml)
            .output()
            .unwrap()
    };
    let out = run(&["start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    // The supervisor restarts it but can write neither record nor PID file.
    let json = eventually(10, || async {
        let out = run(&["status", "--json"]);
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (j["state"] == "running" && j["pid"].as_u64() != Some(first as u64)).then_some(j)
    })
    .await;
    let second = json["pid"].as_u64().unwrap() as u32;
    assert!(alive(second));
    assert!(
        json["problem"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("runs daemon {second}")),
        "{json}"
    );
    let out = run(&["start"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        second.to_string()
    );
    assert_eq!(daemons(&sb), 1, "a second daemon runs");
    // stop stops the real daemon (it may say the files could not be removed).
    let _ = run(&["stop"]);
    assert!(!alive(second), "stop left the restarted daemon running");
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&["cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    sb.assert_no_leaks();
}

/// Garbage in our own files (once no daemon of ours runs) is cleared by
/// `cleanup`; while one runs, the live supervisor still answers.
#[tokio::test]
async fn cleanup_clears_garbage_once_no_daemon_of_ours_runs() {
    let sb = Sandbox::new("trust_garbage");
    let m = sb.manager(sb.config(&[]));
    let pid = within(20, m.start()).await.unwrap();
    std::fs::write(sb.path("daemon.pid"), "garbage\n").unwrap();
    std::fs::write(sb.path("daemon.pid.identity"), "{not json").unwrap();
    let report = within(20, m.status_report()).await.unwrap();
    assert_eq!(report.status, DaemonStatus::Running(pid));
    assert!(report.problem.unwrap().contains("not a PID file"));
    // cleanup leaves a running daemon alone.
    within(20, m.cleanup_stale()).await.unwrap();
    assert!(alive(pid));
    within(20, m.stop()).await.unwrap();
    assert!(!alive(pid));

    std::fs::write(sb.path("daemon.pid"), "garbage\n").unwrap();
    std::fs::write(sb.path("daemon.pid.identity"), "{not json").unwrap();
    let err = m.status().await.unwrap_err();
    assert!(err.to_string().contains("`cleanup` removes it"), "{err}");
    within(20, m.cleanup_stale()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    assert!(!sb.path("daemon.pid").exists() && !sb.path("daemon.pid.identity").exists());
    sb.assert_no_leaks();
}

/// A grandchild that left the daemon's process group (setsid) is stopped
/// with it: the supervisor is a child subreaper and reaps the whole tree.
#[tokio::test]
async fn stop_and_kill_leave_no_descendant_alive() {
    for force in [false, true] {
        let sb = Sandbox::new("trust_setsid");
        let gc_file = sb.path("grandchild.pid");
        let m = sb.manager(sb.config(&["--setsid-grandchild", gc_file.to_str().unwrap()]));
        let pid = within(20, m.start()).await.unwrap();
        let gc = support::read_pid_file(&gc_file).await;
        assert_ne!(
            nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(gc as i32))).unwrap(),
            nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap(),
            "the grandchild did not leave the session"
        );
        if force {
            within(20, m.kill()).await.unwrap();
        } else {
            within(20, m.stop()).await.unwrap();
        }
        assert!(!alive(pid));
        assert!(
            !alive(gc),
            "the setsid grandchild survived (force = {force})"
        );
        sb.assert_no_leaks();
    }
}

/// A program that puts itself in the background and exits 0 is never
/// reported `stopped` while its processes live: they are stopped, and the
/// state says why.
#[tokio::test]
async fn a_self_daemonizing_program_is_refused_clearly() {
    let sb = Sandbox::new("trust_daemonize");
    let gc_file = sb.path("background.pid");
    let m = sb.manager(sb.config(&["--daemonize", gc_file.to_str().unwrap()]));
    let _ = within(20, m.start()).await;
    let gc = support::read_pid_file(&gc_file).await;
    let reason = eventually(10, || async {
        match m.status().await.unwrap() {
            DaemonStatus::Failed(r) => Some(r),
            DaemonStatus::Stopped => panic!("reported stopped"),
            _ => None,
        }
    })
    .await;
    assert!(reason.contains("self-daemonizing"), "{reason}");
    eventually(10, || async { (!alive(gc)).then_some(()) }).await;
    within(20, m.cleanup_stale()).await.unwrap();
    sb.assert_no_leaks();
}

/// `kill` during a slow `stop` (a daemon that ignores SIGTERM, 20 s
/// shutdown timeout) sends SIGKILL at once instead of waiting for the stop.
#[tokio::test]
async fn kill_during_a_slow_stop_is_immediate() {
    let sb = Sandbox::new("trust_kill_stop");
    let cfg = sb.config(&["--ignore-term"]).with_shutdown_timeout_secs(20);
    let m = std::sync::Arc::new(sb.manager(cfg.clone()));
    let pid = within(20, m.start()).await.unwrap();
    let stopper = {
        let m = m.clone();
        tokio::spawn(async move { m.stop().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(pid), "the stop did not wait for the shutdown timeout");
    let t = Instant::now();
    let killer = sb.manager(cfg);
    within(20, killer.kill()).await.unwrap();
    assert!(!alive(pid));
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "kill waited for the stop: {:?}",
        t.elapsed()
    );
    within(20, stopper).await.unwrap().unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}

/// `daemonctl start` interrupted (SIGINT) while it probes readiness leaves
/// no half-started daemon: status says `starting`, and the supervisor stops
/// it once the start-up timeout has passed; a second start in between
/// waits for readiness as the first would have, and does not call it ready.
#[tokio::test]
async fn an_interrupted_start_leaves_no_half_started_daemon() {
    let sb = Sandbox::new("trust_interrupt");
    let mut cfg = sb.config(&[]).with_startup_timeout_secs(3);
    // Nothing listens there: the probe never succeeds.
    cfg.readiness = Some(daemon_lifecycle::Readiness::Tcp {
        address: support::free_addr(),
        interval_ms: Some(100),
    });
    let toml = sb.write_toml(&cfg);
    let mut starter = Command::new(support::daemonctl())
        .arg("start")
        .arg(&toml)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let m = sb.manager(cfg);
    let pid = eventually(10, || async {
        match m.status().await.unwrap() {
            DaemonStatus::Starting(pid) => Some(pid),
            _ => None,
        }
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(starter.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(!starter.wait().unwrap().success());
    // Still starting, not ready.
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Starting(pid));
    // A second start does not report it ready: it probes, times out, stops it.
    let err = within(30, m.start()).await.unwrap_err();
    assert!(matches!(err, DaemonError::Timeout { .. }), "{err:?}");
    assert!(!alive(pid));
    // Stopped, and said so (issue 14): failed until cleanup or a start.
    assert_eq!(
        m.status().await.unwrap(),
        DaemonStatus::Failed("not ready within 3 s".into())
    );

    // And with nobody left to probe, the supervisor stops it by itself.
    let mut starter = Command::new(support::daemonctl())
        .arg("start")
        .arg(&toml)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = eventually(10, || async {
        match m.status().await.unwrap() {
            DaemonStatus::Starting(pid) => Some(pid),
            _ => None,
        }
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(starter.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = starter.wait();
    eventually(15, || async { (!alive(pid)).then_some(()) }).await;
    eventually(5, || async {
        (m.status().await.unwrap() == DaemonStatus::Failed("not ready within 3 s".into()))
            .then_some(())
    })
    .await;
    within(10, m.cleanup_stale()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}

/// No false alarm: status calls made while our own stop and kill run never
/// report `stale`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_never_says_stale_during_our_own_stop() {
    let sb = Sandbox::new("trust_no_false_stale");
    let cfg = sb.config(&["--grandchild", sb.path("gc.pid").to_str().unwrap()]);
    let m = std::sync::Arc::new(sb.manager(cfg));
    let mut calls = 0;
    for round in 0..10 {
        within(20, m.start()).await.unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (m, done) = (m.clone(), done.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    seen.push(m.status().await.unwrap());
                    tokio::task::yield_now().await;
                }
                seen
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        if round % 2 == 0 {
            within(20, m.stop()).await.unwrap();
        } else {
            within(20, m.kill()).await.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = watcher.await.unwrap();
        calls += seen.len();
        assert!(
            !seen.iter().any(|s| matches!(s, DaemonStatus::Stale(_))),
            "round {round}: {seen:?}"
        );
    }
    assert!(calls > 20, "only {calls} status calls were made");
    sb.assert_no_leaks();
}

/// A `pid_file` that is a directory is refused and leaves nothing behind; a
/// PID directory other users can write (not sticky) is refused by every
/// operation, as root.
#[tokio::test]
async fn bad_pid_paths_are_refused_by_every_operation() {
    let sb = Sandbox::new("trust_dirs");
    std::fs::create_dir(sb.path("daemon.pid")).unwrap();
    let m = sb.manager(sb.config(&[]));
    let err = within(20, m.start()).await.unwrap_err();
    assert!(
        matches!(&err, DaemonError::InvalidConfig { field, .. } if field == "pid_file"),
        "{err:?}"
    );
    let left: Vec<_> = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    std::fs::remove_dir(sb.path("daemon.pid")).unwrap();

    if !have_root("a world-writable directory is a danger to root") {
        return;
    }
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // A daemon's files as root left them: still refused in such a directory.
    std::fs::write(sb.path("daemon.pid"), "1\n").unwrap();
    for (op, r) in [
        ("status", within(20, m.status()).await.map(|_| ())),
        ("stop", within(20, m.stop()).await),
        ("kill", within(20, m.kill()).await),
        ("cleanup", within(20, m.cleanup_stale()).await),
        ("start", within(20, m.start()).await.map(|_| ())),
    ] {
        let err = r.expect_err(op);
        assert!(err.to_string().contains("not sticky"), "{op}: {err}");
    }
    std::fs::remove_file(sb.path("daemon.pid")).unwrap();
    sb.assert_no_leaks();
}

/// The default PID directory of a non-root user is a predictable name
/// (`$XDG_RUNTIME_DIR/daemon-lifecycle`, else `/tmp/daemon-lifecycle-UID`):
/// planted by another user, every operation refuses it, and nothing of the
/// planter's choosing is signalled.
#[tokio::test]
async fn a_planted_default_directory_is_refused_by_every_operation() {
    if !have_root("the test plays two unprivileged users") {
        return;
    }
    let sb = shared_sandbox("trust_default_dir");
    let xdg = sb.path("xdg");
    std::fs::create_dir(&xdg).unwrap();
    std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o1777)).unwrap();
    // The victim runs as the caller (nobody), so the caller could signal it.
    let log = sb.path("victim.log");
    let mut victim = Victim {
        child: Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(support::testd())
            .arg("--victim")
            .arg(&log)
            .spawn()
            .unwrap(),
        log: log.clone(),
    };
    eventually(10, || async { log.exists().then_some(()) }).await;
    let planted = xdg.join("daemon-lifecycle");
    let mut cfg = sb.config(&[]);
    cfg.pid_file = PathBuf::new();
    let name = cfg.name();
    // Another unprivileged user (UID 65533) plants the directory and a PID
    // file naming the victim.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65533",
            "--regid=65533",
            "--clear-groups",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!(
            "mkdir -m 755 {dir} && printf '{pid}\\n' > {dir}/{name}.pid",
            dir = planted.display(),
            pid = victim.pid()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = sb.write_toml(&cfg);
    std::fs::set_permissions(&toml, std::fs::Permissions::from_mode(0o644)).unwrap();
    for op in ["status", "stop", "kill", "cleanup", "start"] {
        let out = support::daemonctl_unprivileged()
            .env("XDG_RUNTIME_DIR", &xdg)
            .args(["--backend", "fork", op])
            .arg(&toml)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{op} succeeded");
        assert!(
            stderr.contains("is not a private directory owned by UID 65534"),
            "{op}: {stderr}"
        );
    }
    victim.assert_untouched();
    drop(victim);
    sb.assert_no_leaks();
}

/// The daemon's process group ID is its first process's PID: once that
/// process is reaped and the group empties, the number can be reused by
/// another process group, and a `killpg` would hit it. So the supervisor
/// keeps the group leader a zombie (unreaped) while anything of the tree
/// still lives — here a grandchild in its own session that ignores SIGTERM.
#[tokio::test]
async fn the_group_leader_stays_unreaped_while_its_tree_lives() {
    let sb = Sandbox::new("trust_pgid_reuse");
    let gc_file = sb.path("stubborn.pid");
    let cfg = sb
        .config(&[
            "--stubborn-grandchild",
            gc_file.to_str().unwrap(),
            "--exit-code",
            "0",
        ])
        .with_shutdown_timeout_secs(3);
    let m = sb.manager(cfg);
    let leader = within(20, m.start()).await.unwrap();
    let gc = support::read_pid_file(&gc_file).await;
    // The leader exited at once; the grandchild ignores the SIGTERM sent to
    // the tree and lives until the SIGKILL 3 s later. Meanwhile the leader's
    // PID stays taken: a zombie child of the supervisor.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(alive(gc), "the stubborn grandchild is already gone");
    let stat = support::proc_stat(leader)
        .unwrap_or_else(|| panic!("leader {leader} was reaped while its tree lived"));
    assert_eq!(stat[0], "Z", "{stat:?}");
    eventually(10, || async { (!alive(gc)).then_some(()) }).await;
    eventually(10, || async {
        (!std::path::Path::new(&format!("/proc/{leader}")).exists()).then_some(())
    })
    .await;
    let _ = within(20, m.cleanup_stale()).await;
    sb.assert_no_leaks();
}

/// A directory's owner can rename or remove anything in it, sticky bit or
/// not: a PID directory (or a symbolic link on the way to it) owned by
/// another user is refused.
#[tokio::test]
async fn a_pid_directory_owned_by_another_user_is_refused() {
    if !have_root("attacks need root as the victim of a hostile user") {
        return;
    }
    let sb = shared_sandbox("trust_dir_owner");
    // nobody's own sticky directory: sticky does not restrict its owner.
    let theirs = sb.path("theirs");
    as_nobody(&format!("mkdir -m 1777 {}", theirs.display()));
    let mut cfg = sb.config(&[]);
    cfg.pid_file = theirs.join("d.pid");
    let m = sb.manager(cfg);
    let err = within(20, m.start()).await.unwrap_err();
    assert!(err.to_string().contains("owned by UID 65534"), "{err}");
    assert!(std::fs::read_dir(&theirs).unwrap().next().is_none());
    // A symbolic link planted by nobody on the way to a root directory.
    let real = sb.path("real");
    std::fs::create_dir(&real).unwrap();
    let link = sb.path("link");
    as_nobody(&format!("ln -s {} {}", real.display(), link.display()));
    let mut cfg = sb.config(&[]);
    cfg.pid_file = link.join("d.pid");
    let m = sb.manager(cfg);
    for (op, r) in [
        ("start", within(20, m.start()).await.map(|_| ())),
        ("status", within(20, m.status()).await.map(|_| ())),
    ] {
        let err = r.expect_err(op);
        assert!(
            err.to_string()
                .contains("symbolic link is owned by UID 65534"),
            "{op}: {err}"
        );
    }
    assert!(std::fs::read_dir(&real).unwrap().next().is_none());
    sb.assert_no_leaks();
}

/// Garbage at the PID file's path with no record of ours beside it may be
/// another program's file caught half-written: cleanup refuses it.
#[tokio::test]
async fn cleanup_never_removes_garbage_it_cannot_prove_it_wrote() {
    let sb = Sandbox::new("trust_garbage_foreign");
    std::fs::write(sb.path("daemon.pid"), "").unwrap();
    let m = sb.manager(sb.config(&[]));
    let err = within(20, m.cleanup_stale()).await.unwrap_err();
    assert!(matches!(err, DaemonError::UntrustedFile { .. }), "{err:?}");
    assert!(sb.path("daemon.pid").exists());
    std::fs::remove_file(sb.path("daemon.pid")).unwrap();
    sb.assert_no_leaks();
}
