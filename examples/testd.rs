//! `testd`: the demo and test daemon. One small program whose behaviour the
//! command line picks, so tests use a real executable (not a shell one-liner)
//! and the README demo has something to run.
//!
//! ```text
//! testd [--tag TEXT] [--exit-code N] [--ignore-term] [--grandchild PIDFILE]
//!       [--dump PATH] [--heartbeat PATH]
//! ```
//!
//! - `--tag TEXT`: ignored; lets tests find their processes by command line.
//! - `--exit-code N`: exit with code N right away.
//! - `--ignore-term`: ignore SIGTERM (only SIGKILL ends it).
//! - `--grandchild PIDFILE`: spawn a child that sleeps forever (in our process
//!   group), write its PID to PIDFILE.
//! - `--dump PATH`: write argv, environment and working directory as JSON.
//! - `--heartbeat PATH`: append a line with a counter every 200 ms.
//!
//! Otherwise it waits for SIGTERM and exits 0.

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--sleep-forever") {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let mut i = 1;
    let mut heartbeat = None;
    while i < args.len() {
        let value = |i: usize| -> String {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| panic!("{} needs a value", args[i]))
        };
        match args[i].as_str() {
            "--tag" => i += 1,
            // Everything after `--` is payload (for argv round-trip tests).
            "--" => break,
            "--exit-code" => std::process::exit(value(i).parse().expect("exit code")),
            "--ignore-term" => {
                // SAFETY: setting a signal disposition to SIG_IGN installs no handler code.
                unsafe {
                    nix::sys::signal::signal(
                        nix::sys::signal::Signal::SIGTERM,
                        nix::sys::signal::SigHandler::SigIgn,
                    )
                }
                .expect("ignore SIGTERM");
            }
            "--grandchild" => {
                let child = std::process::Command::new(std::env::current_exe().unwrap())
                    .arg("--sleep-forever")
                    .args(&args[1..]) // carries --tag, so tests can find it
                    .spawn()
                    .expect("spawn grandchild");
                write_atomic(&value(i), &format!("{}\n", child.id()));
                // Deliberately not waited for: it must outlive us if the
                // supervisor does not take care of the whole group.
                std::mem::forget(child);
                i += 1;
            }
            "--dump" => {
                let dump = serde_json::json!({
                    "argv": args,
                    "env": std::env::vars().collect::<std::collections::BTreeMap<_, _>>(),
                    "cwd": std::env::current_dir().unwrap(),
                    "pid": std::process::id(),
                    "pgid": nix::unistd::getpgrp().as_raw(),
                    "sid": nix::unistd::getsid(None).unwrap().as_raw(),
                    "uid": nix::unistd::getuid().as_raw(),
                    "gid": nix::unistd::getgid().as_raw(),
                });
                write_atomic(&value(i), &dump.to_string());
                i += 1;
            }
            "--heartbeat" => {
                heartbeat = Some(value(i));
                i += 1;
            }
            other => {
                eprintln!("testd: unknown argument {other:?}");
                std::process::exit(64);
            }
        }
        i += 1;
    }
    let mut n = 0u64;
    loop {
        if let Some(path) = &heartbeat {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("heartbeat file");
            writeln!(f, "testd {} heartbeat {n}", std::process::id()).unwrap();
            n += 1;
        }
        // Default SIGTERM disposition ends the process while it sleeps.
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write_atomic(path: &str, content: &str) {
    let tmp = format!("{path}.tmp{}", std::process::id());
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
