//! The supervisor and the daemon start in a clean process state, as systemd
//! gives a service: an empty signal mask and every disposition at its
//! default, whatever the caller had; and the daemon is `execve`d, never run
//! through `/bin/sh` (execvp's ENOEXEC fallback).
mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use daemon_lifecycle::DaemonError;
use support::{output_within, within, Sandbox};

const IGNORED_BY_CALLER: [libc::c_int; 4] =
    [libc::SIGQUIT, libc::SIGUSR2, libc::SIGALRM, libc::SIGXFSZ];

/// `daemonctl ARGS` run by a careless caller: SIGTERM blocked and
/// QUIT/USR2/ALRM/XFSZ ignored (both survive `exec`).
fn daemonctl_from_careless_caller(args: &[&str], config: &Path) -> Command {
    let mut cmd = Command::new(support::daemonctl());
    cmd.args(args).arg(config);
    // SAFETY: sigprocmask and sigaction are async-signal-safe; the sets are
    // built on the stack.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for sig in IGNORED_BY_CALLER {
                if libc::signal(sig, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// A `/proc/PID/status` field holding a hex signal set, as a bit mask.
fn sigset_field(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

fn bit(sig: libc::c_int) -> u64 {
    1 << (sig - 1)
}

/// The signal names in a mask, for readable failures.
fn names(mask: u64) -> Vec<String> {
    (1..=64)
        .filter(|s| mask & bit(*s) != 0)
        .map(|s| {
            nix::sys::signal::Signal::try_from(s)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| format!("signal {s}"))
        })
        .collect()
}

#[test]
fn a_careless_callers_signal_state_reaches_neither_supervisor_nor_daemon() {
    let sb = Sandbox::new("careless_caller");
    let state = sb.path("signals");
    let config = sb
        .config(&["--signal-state", state.to_str().unwrap()])
        .with_shutdown_timeout_secs(5);
    let toml = sb.write_toml(&config);

    let out = output_within(&mut daemonctl_from_careless_caller(&["start"], &toml), 30);
    assert!(
        out.status.success(),
        "start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = within_secs(10, || std::fs::read_to_string(&state).ok());
    let blocked = sigset_field(&daemon, "SigBlk:");
    let ignored = sigset_field(&daemon, "SigIgn:");
    assert_eq!(
        (names(blocked), names(ignored)),
        (vec![], vec![]),
        "the daemon started with signals blocked / ignored:\n{daemon}"
    );

    // The supervisor is the daemon's parent. It keeps SIGPIPE ignored (as
    // every Rust program does; a caller gone away must not kill it), nothing else.
    let ppid = sigset_field_dec(&daemon, "PPid:");
    let sup = std::fs::read_to_string(format!("/proc/{ppid}/status")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).starts_with("daemon-lifecycle-supervise"),
        "the daemon's parent {ppid} is not its supervisor"
    );
    assert_eq!(
        (
            names(sigset_field(&sup, "SigBlk:")),
            names(sigset_field(&sup, "SigIgn:") & !bit(libc::SIGPIPE))
        ),
        (vec![], vec![]),
        "the supervisor runs with signals blocked / ignored:\n{sup}"
    );

    // A stop from the same kind of caller reaches the daemon as SIGTERM (the
    // daemon records it), not as a SIGKILL after the shutdown timeout.
    let out = output_within(&mut daemonctl_from_careless_caller(&["stop"], &toml), 60);
    assert!(
        out.status.success(),
        "stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received = std::fs::read_to_string(sb.path("signals.received")).unwrap_or_default();
    assert_eq!(received, "SIGTERM\n", "the daemon never got SIGTERM");
    sb.assert_no_leaks();
}

fn sigset_field_dec(status: &str, field: &str) -> u32 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .parse()
        .unwrap()
}

/// Polls `f` for up to `secs` seconds.
fn within_secs<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "not within {secs}s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn an_executable_without_shebang_is_never_run_through_a_shell() {
    let sb = Sandbox::new("no_shebang");
    let marker = sb.path("marker");
    let script = sb.path("script");
    // What /bin/sh would do with it.
    executable(&script, &format!("touch {}\n", marker.display()));
    let mut config = sb.config(&[]);
    config.binary_path = script.clone();
    let m = sb.manager(config);
    let result = within(20, m.start()).await;
    // Give a shell, had one been started, time to run its first line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists(), "the script was run through a shell");
    let err = result.unwrap_err();
    assert!(
        matches!(&err, DaemonError::StartFailed { .. })
            && err.to_string().to_lowercase().contains("exec format error"),
        "{err:?}"
    );
    assert_eq!(entries(sb.dir.path()), vec!["script"]);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn exec_errors_keep_their_types() {
    let sb = Sandbox::new("exec_errors");
    // ENOENT from execve itself: the interpreter named by `#!` is missing.
    let script = sb.path("missing-interpreter");
    executable(
        &script,
        &format!("#!{}\n", sb.path("no-such-interpreter").display()),
    );
    let mut config = sb.config(&[]);
    config.binary_path = script.clone();
    let err = within(20, sb.manager(config).start()).await.unwrap_err();
    assert!(
        matches!(&err, DaemonError::BinaryNotFound { path } if *path == script),
        "{err:?}"
    );
    // EACCES from execve: the interpreter is not executable (even for root).
    let interpreter = sb.path("not-executable");
    std::fs::write(&interpreter, "").unwrap();
    let script = sb.path("bad-interpreter");
    executable(&script, &format!("#!{}\n", interpreter.display()));
    let mut config = sb.config(&[]);
    config.binary_path = script.clone();
    let err = within(20, sb.manager(config).start()).await.unwrap_err();
    assert!(
        matches!(&err, DaemonError::PermissionDenied { .. }),
        "{err:?}"
    );
    assert_eq!(
        entries(sb.dir.path()),
        vec!["bad-interpreter", "missing-interpreter", "not-executable"]
    );
    sb.assert_no_leaks();
}
