//! The supervisor as PID 1 of a PID namespace (a container without an init):
//! `daemonctl run` supervises in the foreground, reaps every orphan, and
//! forwards SIGTERM/SIGINT to the daemon. Run under `unshare --pid --fork`.
mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::Sandbox;

/// pid → (ppid, state) for every process.
fn process_table() -> HashMap<u32, (u32, char)> {
    let mut t = HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut f = rest.split(' ');
        let state = f.next().unwrap().chars().next().unwrap();
        let ppid = f.next().unwrap().parse().unwrap();
        t.insert(pid, (ppid, state));
    }
    t
}

fn descendants(root: u32) -> Vec<(u32, char)> {
    let t = process_table();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, (ppid, state)) in &t {
            if *ppid == p {
                out.push((*pid, *state));
                frontier.push(*pid);
            }
        }
    }
    out
}

fn wait_with_timeout(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("unshare … daemonctl run did not end within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid1_run(test: &str, signal: Signal) {
    if !support::have_root("unshare --pid") {
        return;
    }
    let sb = Sandbox::new(test);
    // Three orphans per wave: their parents exit at once, they exit 300 ms later.
    let cfg = sb.config(&["--orphans", "3"]);
    let toml = sb.write_toml(&cfg);
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(support::daemonctl())
        .args(["--backend", "fork", "run"])
        .arg(&toml)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // The namespace's PID 1 is unshare's child: `daemonctl run`.
    let deadline = Instant::now() + Duration::from_secs(10);
    let init = loop {
        if let Some((pid, _)) = descendants(unshare.id()).first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "no namespace init appeared");
        std::thread::sleep(Duration::from_millis(10));
    };
    let nspid = std::fs::read_to_string(format!("/proc/{init}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap()
        .to_owned();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "supervisor is not PID 1: {nspid}"
    );

    // The daemon runs (its PID file holds its PID inside the namespace).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sb.path("daemon.pid").exists() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Orphans have come and gone: none may linger as a zombie.
    std::thread::sleep(Duration::from_millis(1200));
    let procs = descendants(init);
    let zombies: Vec<_> = procs.iter().filter(|(_, s)| *s == 'Z').collect();
    assert!(zombies.is_empty(), "zombies in the namespace: {zombies:?}");
    assert!(!procs.is_empty(), "the daemon is not running");

    // SIGTERM/SIGINT to PID 1 reaches the daemon; `run` ends with 0 (a stop).
    kill(Pid::from_raw(init as i32), signal).unwrap();
    let status = wait_with_timeout(&mut unshare, 20);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!sb.path("daemon.pid").exists(), "PID file left after stop");
    sb.assert_no_leaks();
}

#[test]
fn pid1_reaps_orphans_and_forwards_sigterm() {
    pid1_run("pid1_term", Signal::SIGTERM);
}

#[test]
fn pid1_forwards_sigint() {
    pid1_run("pid1_int", Signal::SIGINT);
}

#[test]
fn run_ends_with_the_daemons_exit_code() {
    let sb = Sandbox::new("run_exit_code");
    let toml = sb.write_toml(&sb.config(&["--crash-after", "200:7"]));
    let mut run = Command::new(support::daemonctl())
        .args(["--backend", "fork", "run"])
        .arg(&toml)
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut run, 20);
    assert_eq!(status.code(), Some(7));
    sb.assert_no_leaks();
}
