//! What `daemonctl` shows a person at a terminal and nothing else: the
//! live line while a start waits for readiness, and "already running".
//! Driven in a real pseudo-terminal (openpty) for stderr, with stdout a pipe,
//! so the test also proves stdout stays exactly the PID.
mod support;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::Sandbox;

/// A pseudo-terminal of 120 columns: (master, slave).
fn openpty() -> (std::fs::File, OwnedFd) {
    let mut master = -1;
    let mut slave = -1;
    let mut size = libc::winsize {
        ws_row: 24,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: valid out-pointers; on success both descriptors are ours.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::addr_of_mut!(size),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: just opened, owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    }
}

/// Runs `daemonctl ARGS CONFIG` with stderr on a pseudo-terminal and stdout
/// on a pipe; returns (stdout, what the terminal showed, exit code).
fn on_terminal(args: &[&str], config: &Path) -> (String, String, Option<i32>) {
    let (mut master, slave) = openpty();
    let mut child = Command::new(support::daemonctl())
        .args(args)
        .arg(config)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    // Our copy of the slave went into the Command and is closed once spawned:
    // the master reads EOF (EIO) when the child's copy closes.
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let code = child.wait().unwrap().code();
    (stdout, reader.join().unwrap(), code)
}

fn slow_notify_config(sb: &Sandbox) -> std::path::PathBuf {
    let mut config = sb.config(&["--status", "loading the model", "--ready-after", "1500"]);
    config.readiness = Some(daemon_lifecycle::Readiness::Notify);
    sb.write_toml(&config)
}

#[test]
fn a_terminal_shows_the_waiting_line_and_stdout_stays_the_pid() {
    let sb = Sandbox::new("tty_line");
    let toml = slow_notify_config(&sb);
    let (stdout, terminal, code) = on_terminal(&["--backend", "fork", "start"], &toml);
    assert_eq!(code, Some(0), "{terminal}");
    // stdout: the PID and a newline, nothing else.
    let pid: u32 = stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("{stdout:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{stdout:?}"));
    assert!(support::alive(pid));
    // The terminal saw the line: what is starting, the time, the STATUS= text.
    assert!(
        terminal.contains(&format!("starting {}", sb.tag)),
        "{terminal:?}"
    );
    assert!(terminal.contains("loading the model"), "{terminal:?}");
    assert!(
        terminal.contains("(1s)") || terminal.contains("(0s)"),
        "{terminal:?}"
    );
    // ... redrawn in place (carriage returns / erase-line), then cleared.
    assert!(
        terminal.contains('\r') || terminal.contains("\x1b[2K"),
        "{terminal:?}"
    );

    // A second start finds it running and says so, on the terminal only.
    let (stdout2, terminal2, code) = on_terminal(&["--backend", "fork", "start"], &toml);
    assert_eq!(code, Some(0));
    assert_eq!(stdout2, stdout);
    assert!(terminal2.contains("already running"), "{terminal2:?}");

    // restart and wait-ready show it too.
    let (stdout3, terminal3, code) = on_terminal(&["--backend", "fork", "restart"], &toml);
    assert_eq!(code, Some(0), "{terminal3}");
    assert!(stdout3.trim().parse::<u32>().is_ok(), "{stdout3:?}");
    assert!(terminal3.contains("restarting"), "{terminal3:?}");
    let (_, _, code) = on_terminal(&["--backend", "fork", "wait-ready"], &toml);
    assert_eq!(code, Some(0));

    let out = Command::new(support::daemonctl())
        .args(["--backend", "fork", "stop"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(out.status.success());
    sb.assert_no_leaks();
}

#[test]
fn a_pipe_gets_nothing_but_the_pid() {
    let sb = Sandbox::new("tty_pipe");
    let toml = slow_notify_config(&sb);
    for _ in 0..2 {
        // The second start finds it running: still only the PID.
        let out = support::output_within(
            Command::new(support::daemonctl())
                .args(["--backend", "fork", "start"])
                .arg(&toml),
            30,
        );
        assert!(out.status.success());
        assert!(
            out.stderr.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stdout.strip_suffix('\n').unwrap().parse::<u32>().is_ok(),
            "{stdout:?}"
        );
    }
    let out = Command::new(support::daemonctl())
        .args(["--backend", "fork", "stop"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(10));
    sb.assert_no_leaks();
}

/// `list` colours its states on a terminal, unless NO_COLOR is set.
#[test]
fn list_colours_only_on_a_terminal_without_no_color() {
    let sb = Sandbox::new("tty_list");
    let toml = sb.write_toml(&sb.config(&[]));
    let run = |no_color: Option<&str>| {
        let (mut master, slave) = openpty();
        let mut cmd = Command::new(support::daemonctl());
        cmd.args(["--backend", "fork", "list"]).arg(&toml);
        match no_color {
            Some(v) => cmd.env("NO_COLOR", v),
            None => cmd.env_remove("NO_COLOR"),
        };
        let mut child = cmd.stdout(Stdio::from(slave)).spawn().unwrap();
        // The Command holds the slave until dropped: the master's EOF waits for it.
        drop(cmd);
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let _ = master.read_to_end(&mut seen);
            String::from_utf8_lossy(&seen).into_owned()
        });
        assert!(child.wait().unwrap().success());
        reader.join().unwrap()
    };
    assert!(
        run(None).contains("\x1b[2mstopped\x1b[0m"),
        "{:?}",
        run(None)
    );
    assert!(!run(Some("1")).contains('\x1b'));
}
