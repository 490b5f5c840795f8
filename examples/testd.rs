//! `testd`: the demo and test daemon. One small program whose behaviour the
//! command line picks, so tests use a real executable (not a shell one-liner)
//! and the README demo has something to run.
//!
//! ```text
//! testd [--tag TEXT] [--exit-code N] [--ignore-term] [--grandchild PIDFILE]
//!       [--dump PATH] [--heartbeat PATH] [--ready-after MS] [--status TEXT]
//!       [--extend-timeout-ms MS] [--ready-stamp PATH] [--mainpid-grandchild]
//!       [--notify-from-outsider] [--listen ADDR] [--http ADDR] [--http-status N]
//!       [--crash-after MS:CODE] [--lines N] [--stderr-lines N] [--line-bytes N]
//!       [--starts PATH] [--dump-limits PATH] [--orphans N]
//!       [--signal-state PATH] [--print-env NAME] [--tick-ms MS]
//!       [--reload-log PATH] [--reload-ms MS] [--watchdog-stop-after MS]
//!       [--watchdog-usec USEC] [--watchdog-trigger-after MS]
//!       [--health-fail-file PATH] [--health-log PATH] [-- PAYLOAD...]
//! ```
//!
//! - `--tag TEXT`: ignored; lets tests find their processes by command line.
//! - `--exit-code N`: exit with code N right away.
//! - `--ignore-term`: ignore SIGTERM (only SIGKILL ends it).
//! - `--grandchild PIDFILE`: spawn a child that sleeps forever (in our process
//!   group), write its PID to PIDFILE.
//! - `--dump PATH`: write argv, environment and working directory as JSON.
//! - `--heartbeat PATH`: append a line with a counter every 200 ms.
//! - `--tick-ms MS`: print `tick N` on stdout every MS milliseconds.
//! - `--print-env NAME`: print `NAME=value` of its environment on stdout
//!   (the demo shows that `env` reaches the daemon, through its log).
//! - `--ready-after MS`: after MS milliseconds become ready: send `READY=1`
//!   over `$NOTIFY_SOCKET` (with the `sd-notify` crate) and start the
//!   `--listen`/`--http` servers. Without it a notify daemon never gets ready
//!   (servers start at once).
//! - `--status TEXT`: send `STATUS=TEXT` at start-up (and `STATUS=ready` with
//!   `READY=1`).
//! - `--extend-timeout-ms MS`: send `EXTEND_TIMEOUT_USEC` at start-up.
//! - `--ready-stamp PATH`: write the time (µs since the epoch) just before
//!   `READY=1` is sent.
//! - `--mainpid-grandchild`: with `--grandchild`, send `MAINPID=<grandchild>`.
//! - `--notify-from-outsider`: at start-up, a process in another session
//!   sends `READY=1` and `STATUS=outsider` (to be ignored).
//! - `--listen ADDR`: accept TCP connections on ADDR.
//! - `--http ADDR`: serve HTTP on ADDR: `GET /health` answers `--http-status`
//!   (default 200), anything else 404. A minimal hand-written server: the test
//!   side is the library's HTTP client under test.
//! - `--crash-after MS:CODE`: exit with CODE after MS milliseconds.
//! - `--lines N` / `--stderr-lines N`: write N numbered lines to stdout /
//!   stderr at start-up (`out 000001 xxx…`), `--line-bytes` long (default 40).
//! - `--starts PATH`: append our PID and the time (µs since the epoch) to
//!   PATH at start-up (counts restarts, shows the back-off).
//! - `--dump-limits PATH`: write our rlimits, uid, gid and groups as JSON.
//! - `--orphans N`: make N orphans: children that leave a grandchild behind
//!   and exit; each grandchild exits after 300 ms (someone must reap it).
//! - `--signal-state PATH`: write `Pid`, `PPid`, and the signal mask and
//!   ignored signals as `exec` left them (Linux; captured before the Rust
//!   runtime ignores SIGPIPE), as `SigBlk`/`SigIgn` lines in the format of
//!   `/proc/PID/status`, to PATH, then catch SIGTERM: on it, append `SIGTERM` to `PATH.received` and
//!   exit 0 (proves a stop reached us as SIGTERM, not as a SIGKILL later).
//! - `--reload-log PATH`: handle SIGHUP as a reload: send `RELOADING=1`
//!   (when it has a `$NOTIFY_SOCKET`), wait `--reload-ms` (default 0),
//!   append `hup PID` to PATH, then send `READY=1` and `STATUS=reloaded N`.
//!   PATH is created (empty) once SIGHUP is handled.
//! - `--watchdog-stop-after MS`: with `$WATCHDOG_USEC` set, send
//!   `WATCHDOG=1` every quarter of it, and stop sending after MS ms (a hung
//!   daemon); without this option it pings for as long as it runs.
//! - `--watchdog-usec USEC`: send `WATCHDOG_USEC=USEC` at start-up (a new
//!   watchdog interval).
//! - `--watchdog-trigger-after MS`: send `WATCHDOG=trigger` after MS ms.
//! - `--health-fail-file PATH`: with `--http`, while PATH holds a number
//!   K > 0, a `/health` request answers 500 and leaves K - 1 there (so a
//!   test decides how many fail, and when); otherwise `--http-status`.
//! - `--health-log PATH`: append `PID CODE` for every `/health` answer.
//! - `--`: the rest is payload, not options (argv round-trip tests).
//!
//! Otherwise it waits for SIGTERM and exits 0.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Default)]
struct Options {
    heartbeat: Option<String>,
    tick_ms: Option<u64>,
    ready_after: Option<u64>,
    status: Option<String>,
    extend_ms: Option<u64>,
    ready_stamp: Option<String>,
    grandchild: Option<u32>,
    mainpid_grandchild: bool,
    listen: Option<String>,
    http: Option<String>,
    http_status: u16,
    crash_after: Option<(u64, i32)>,
    reload_log: Option<String>,
    reload_ms: u64,
    watchdog_stop_after: Option<u64>,
    watchdog_usec: Option<u32>,
    watchdog_trigger_after: Option<u64>,
    health_fail: Option<String>,
    health_log: Option<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--sleep-forever") => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Some("--send-notify") => {
            // Helper mode for --notify-from-outsider.
            let _ = sd_notify::notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status("outsider"),
            ]);
            return;
        }
        Some("--orphan-maker") => {
            // Leave a grandchild behind and exit: it becomes an orphan.
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .arg("--sleep-ms")
                .args(&args[2..])
                .spawn()
                .expect("spawn orphan");
            std::mem::forget(child);
            return;
        }
        Some("--victim") => {
            // A bystander for attack tests: logs (one name a line, to the
            // file given) every signal it receives; SIGKILL shows as death.
            use nix::sys::signal::{SigSet, SigmaskHow, Signal};
            let log = args.get(2).expect("--victim FILE").clone();
            let mut set = SigSet::empty();
            for sig in Signal::iterator().filter(|s| *s != Signal::SIGKILL && *s != Signal::SIGSTOP)
            {
                set.add(sig);
            }
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).expect("mask");
            std::fs::write(&log, "").expect("victim log");
            loop {
                if let Ok(sig) = set.wait() {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&log)
                        .expect("log");
                    writeln!(f, "{}", sig.as_str()).unwrap();
                }
            }
        }
        Some("--sleep-ms") => {
            std::thread::sleep(Duration::from_millis(300));
            return;
        }
        _ => {}
    }
    let mut o = Options {
        http_status: 200,
        ..Default::default()
    };
    let mut lines = 0u64;
    let mut stderr_lines = 0u64;
    let mut line_bytes = 40usize;
    let mut i = 1;
    while i < args.len() {
        let value = |i: usize| -> String {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| panic!("{} needs a value", args[i]))
        };
        let mut takes_value = true;
        match args[i].as_str() {
            "--tag" => {}
            // Everything after `--` is payload (for argv round-trip tests).
            "--" => break,
            "--exit-code" => std::process::exit(value(i).parse().expect("exit code")),
            "--ignore-term" => {
                takes_value = false;
                // SAFETY: setting a signal disposition to SIG_IGN installs no handler code.
                unsafe {
                    nix::sys::signal::signal(
                        nix::sys::signal::Signal::SIGTERM,
                        nix::sys::signal::SigHandler::SigIgn,
                    )
                }
                .expect("ignore SIGTERM");
            }
            "--stubborn-grandchild" => {
                // A grandchild in its own session that ignores SIGTERM: it
                // outlives the daemon until SIGKILL.
                use std::os::unix::process::CommandExt;
                let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
                cmd.arg("--sleep-forever").args(&args[1..]);
                // SAFETY: setsid and signal() are async-signal-safe and allocate nothing.
                unsafe {
                    cmd.pre_exec(|| {
                        nix::unistd::setsid()?;
                        nix::sys::signal::signal(
                            nix::sys::signal::Signal::SIGTERM,
                            nix::sys::signal::SigHandler::SigIgn,
                        )?;
                        Ok(())
                    });
                }
                let child = cmd.spawn().expect("spawn stubborn grandchild");
                write_atomic(&value(i), &format!("{}\n", child.id()));
                std::mem::forget(child);
            }
            "--setsid-grandchild" | "--daemonize" => {
                // A grandchild that leaves the daemon's process group and
                // session (setsid), as a double-forking daemon's does; with
                // --daemonize the daemon then exits 0 at once.
                use std::os::unix::process::CommandExt;
                let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
                cmd.arg("--sleep-forever").args(&args[1..]);
                // SAFETY: setsid is async-signal-safe and allocates nothing.
                unsafe {
                    cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
                }
                let child = cmd.spawn().expect("spawn setsid grandchild");
                write_atomic(&value(i), &format!("{}\n", child.id()));
                std::mem::forget(child);
                if args[i] == "--daemonize" {
                    std::process::exit(0);
                }
            }
            "--grandchild" => {
                let child = std::process::Command::new(std::env::current_exe().unwrap())
                    .arg("--sleep-forever")
                    .args(&args[1..]) // carries --tag, so tests can find it
                    .spawn()
                    .expect("spawn grandchild");
                write_atomic(&value(i), &format!("{}\n", child.id()));
                o.grandchild = Some(child.id());
                // Deliberately not waited for: it must outlive us if the
                // supervisor does not take care of the whole group.
                std::mem::forget(child);
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
            }
            "--heartbeat" => o.heartbeat = Some(value(i)),
            "--tick-ms" => o.tick_ms = Some(value(i).parse().expect("ms")),
            "--print-env" => {
                let name = value(i);
                let v = std::env::var(&name).unwrap_or_default();
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{name}={v}").and_then(|()| out.flush());
            }
            "--ready-after" => o.ready_after = Some(value(i).parse().expect("ms")),
            "--status" => o.status = Some(value(i)),
            "--extend-timeout-ms" => o.extend_ms = Some(value(i).parse().expect("ms")),
            "--ready-stamp" => o.ready_stamp = Some(value(i)),
            "--mainpid-grandchild" => {
                takes_value = false;
                o.mainpid_grandchild = true;
            }
            "--notify-from-outsider" => {
                takes_value = false;
                let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
                cmd.arg("--send-notify").args(&args[1..]);
                // SAFETY: setsid is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
                }
                let _ = cmd.status();
            }
            "--reload-log" => o.reload_log = Some(value(i)),
            "--reload-ms" => o.reload_ms = value(i).parse().expect("ms"),
            "--watchdog-stop-after" => o.watchdog_stop_after = Some(value(i).parse().expect("ms")),
            "--health-fail-file" => o.health_fail = Some(value(i)),
            "--watchdog-usec" => o.watchdog_usec = Some(value(i).parse().expect("usec")),
            "--watchdog-trigger-after" => {
                o.watchdog_trigger_after = Some(value(i).parse().expect("ms"))
            }
            "--health-log" => o.health_log = Some(value(i)),
            "--listen" => o.listen = Some(value(i)),
            "--http" => o.http = Some(value(i)),
            "--http-status" => o.http_status = value(i).parse().expect("status"),
            "--crash-after" => {
                let v = value(i);
                let (ms, code) = v.split_once(':').expect("MS:CODE");
                o.crash_after = Some((ms.parse().expect("ms"), code.parse().expect("code")));
            }
            "--lines" => lines = value(i).parse().expect("count"),
            "--stderr-lines" => stderr_lines = value(i).parse().expect("count"),
            "--line-bytes" => line_bytes = value(i).parse().expect("bytes"),
            "--starts" => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(value(i))
                    .expect("starts file");
                writeln!(f, "{} {}", std::process::id(), now_micros()).unwrap();
            }
            "--signal-state" => record_signal_state(&value(i)),
            "--dump-limits" => write_atomic(&value(i), &limits_json().to_string()),
            "--orphans" => {
                for _ in 0..value(i).parse::<u32>().expect("count") {
                    let mut maker = std::process::Command::new(std::env::current_exe().unwrap())
                        .arg("--orphan-maker")
                        .args(&args[1..])
                        .spawn()
                        .expect("spawn orphan maker");
                    let _ = maker.wait();
                }
            }
            other => {
                eprintln!("testd: unknown argument {other:?}");
                std::process::exit(64);
            }
        }
        i += if takes_value { 2 } else { 1 };
    }
    write_lines(&mut std::io::stdout().lock(), "out", lines, line_bytes);
    write_lines(
        &mut std::io::stderr().lock(),
        "err",
        stderr_lines,
        line_bytes,
    );
    run(o);
}

fn run(o: Options) {
    if let Some(path) = o.reload_log.clone() {
        handle_reloads(path, o.reload_ms);
    }
    if let Some(usec) = o.watchdog_usec {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::WatchdogUsec(usec)]);
    }
    if let Some(ms) = o.watchdog_trigger_after {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            let _ = sd_notify::notify(&[sd_notify::NotifyState::WatchdogTrigger]);
        });
    }
    if let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let stop_after = o.watchdog_stop_after.map(Duration::from_millis);
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while stop_after.is_none_or(|d| started.elapsed() < d) {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                std::thread::sleep(Duration::from_micros(usec / 4));
            }
        });
    }
    if let Some(text) = &o.status {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(text)]);
    }
    if let Some(ms) = o.extend_ms {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(
            (ms * 1000) as u32,
        )]);
    }
    if let Some((ms, code)) = o.crash_after {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            eprintln!("testd: crashing with code {code} as asked");
            std::process::exit(code);
        });
    }
    if let Some(ms) = o.ready_after {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if let Some(addr) = o.listen.clone() {
        let listener = std::net::TcpListener::bind(&addr).expect("listen");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
    }
    if let Some(addr) = o.http.clone() {
        let listener = std::net::TcpListener::bind(&addr).expect("http listen");
        let status = o.http_status;
        let fail = o.health_fail.clone();
        let log = o.health_log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                serve_http(conn, status, fail.as_deref(), log.as_deref());
            }
        });
    }
    if o.ready_after.is_some() {
        if let Some(path) = &o.ready_stamp {
            write_atomic(path, &format!("{}\n", now_micros()));
        }
        let mut states = vec![
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("ready"),
        ];
        if let (true, Some(gc)) = (o.mainpid_grandchild, o.grandchild) {
            states.push(sd_notify::NotifyState::MainPid(gc));
        }
        let _ = sd_notify::notify(&states);
    }
    if let Some(ms) = o.tick_ms {
        std::thread::spawn(move || {
            for n in 0u64.. {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "tick {n:06}").and_then(|()| out.flush());
                drop(out);
                std::thread::sleep(Duration::from_millis(ms));
            }
        });
    }
    let mut n = 0u64;
    loop {
        if let Some(path) = &o.heartbeat {
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

/// `PREFIX 000001 xxxx…`: numbered, fixed-width lines for rotation checks.
fn write_lines(out: &mut dyn Write, prefix: &str, count: u64, bytes: usize) {
    for n in 1..=count {
        let head = format!("{prefix} {n:06} ");
        let pad = "x".repeat(bytes.saturating_sub(head.len() + 1));
        // One write per line, as a line-buffered program would do.
        out.write_all(format!("{head}{pad}\n").as_bytes()).unwrap();
    }
    out.flush().unwrap();
}

/// Handles SIGHUP as a reload (see `--reload-log`): SIGHUP is blocked here,
/// before any other thread starts (they inherit the mask), and one thread
/// takes it with `sigwait`.
fn handle_reloads(path: String, reload_ms: u64) {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).expect("mask");
    // The file says SIGHUP is handled from now on (a test waits for it).
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("reload log");
    std::thread::spawn(move || {
        let notify = std::env::var_os("NOTIFY_SOCKET").is_some();
        let mut n = 0u64;
        while set.wait().is_ok() {
            n += 1;
            if notify {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
            }
            std::thread::sleep(Duration::from_millis(reload_ms));
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("reload log");
            writeln!(f, "hup {}", std::process::id()).unwrap();
            drop(f);
            if notify {
                let status = format!("reloaded {n}");
                let _ = sd_notify::notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status(&status),
                ]);
            }
        }
    });
}

fn serve_http(mut conn: std::net::TcpStream, status: u16, fail: Option<&str>, log: Option<&str>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 2048];
    let mut request = Vec::new();
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request);
    let code = if line.starts_with("GET /health ") {
        let left = fail
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let code = if left > 0 {
            write_atomic(fail.unwrap(), &format!("{}\n", left - 1));
            500
        } else {
            status
        };
        if let Some(path) = log {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("health log");
            writeln!(f, "{} {code}", std::process::id()).unwrap();
        }
        code
    } else {
        404
    };
    let body = format!("{code}\n");
    let _ = write!(
        conn,
        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Our limits and ids, straight from libc: nix 0.30 has no `RLIMIT_NPROC` or
/// `getgroups` on Apple targets, and libc has both everywhere.
fn limits_json() -> serde_json::Value {
    let lim = |resource| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid resource and a pointer to a live rlimit.
        assert_eq!(unsafe { libc::getrlimit(resource, &mut r) }, 0, "getrlimit");
        serde_json::json!([r.rlim_cur, r.rlim_max])
    };
    serde_json::json!({
        "nofile": lim(libc::RLIMIT_NOFILE),
        "as": lim(libc::RLIMIT_AS),
        "cpu": lim(libc::RLIMIT_CPU),
        "nproc": lim(libc::RLIMIT_NPROC),
        "uid": nix::unistd::getuid().as_raw(),
        "euid": nix::unistd::geteuid().as_raw(),
        "gid": nix::unistd::getgid().as_raw(),
        "egid": nix::unistd::getegid().as_raw(),
        "groups": groups(),
        "env_user": std::env::var("USER").ok(),
        "env_home": std::env::var("HOME").ok(),
    })
}

/// The descriptor `on_sigterm` appends to (`-1`: none).
static TERM_LOG: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_sigterm(_: libc::c_int) {
    let fd = TERM_LOG.load(std::sync::atomic::Ordering::SeqCst);
    let line = b"SIGTERM\n";
    // SAFETY: write and _exit are async-signal-safe; the buffer is static.
    unsafe {
        libc::write(fd, line.as_ptr().cast(), line.len());
        libc::_exit(0);
    }
}

/// The signal mask and the ignored signals as `exec` left them, captured
/// before the Rust runtime starts (it ignores SIGPIPE before `main`), as
/// `/proc/PID/status` shows them: bit `n - 1` for signal `n`.
static EXEC_SIGBLK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static EXEC_SIGIGN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static CAPTURE_EXEC_SIGNAL_STATE: extern "C" fn() = capture_exec_signal_state;

/// Runs from `.init_array`, before std's runtime init. Asks the kernel
/// directly (`rt_sigaction`, `rt_sigprocmask`): glibc's wrappers refuse its
/// reserved real-time signals 32 and 33.
#[cfg(target_os = "linux")]
extern "C" fn capture_exec_signal_state() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut blocked = 0u64;
    // SAFETY: plain syscalls on buffers on the stack; 8 words hold the
    // kernel's struct sigaction, whose first word is the handler.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            std::ptr::null::<u64>(),
            &mut blocked as *mut u64,
            8usize,
        );
        let mut ignored = 0u64;
        for sig in 1..=64u64 {
            let mut old = [0usize; 8];
            if libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<usize>(),
                old.as_mut_ptr(),
                8usize,
            ) == 0
                && old[0] == libc::SIG_IGN
            {
                ignored |= 1 << (sig - 1);
            }
        }
        EXEC_SIGIGN.store(ignored, SeqCst);
    }
    EXEC_SIGBLK.store(blocked, SeqCst);
}

/// See `--signal-state`.
fn record_signal_state(path: &str) {
    use std::sync::atomic::Ordering::SeqCst;
    let state = format!(
        "Pid:\t{}\nPPid:\t{}\nSigBlk:\t{:016x}\nSigIgn:\t{:016x}\n",
        std::process::id(),
        std::os::unix::process::parent_id(),
        EXEC_SIGBLK.load(SeqCst),
        EXEC_SIGIGN.load(SeqCst),
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{path}.received"))
        .expect("signal log");
    TERM_LOG.store(std::os::fd::IntoRawFd::into_raw_fd(log), SeqCst);
    // SAFETY: the handler only calls async-signal-safe functions.
    unsafe {
        nix::sys::signal::sigaction(
            nix::sys::signal::Signal::SIGTERM,
            &nix::sys::signal::SigAction::new(
                nix::sys::signal::SigHandler::Handler(on_sigterm),
                nix::sys::signal::SaFlags::empty(),
                nix::sys::signal::SigSet::empty(),
            ),
        )
    }
    .expect("catch SIGTERM");
    write_atomic(path, &state);
}

/// Our supplementary groups (`getgroups`).
fn groups() -> Vec<libc::gid_t> {
    // SAFETY: a zero count with a null buffer only returns the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut groups: Vec<libc::gid_t> = vec![0; usize::try_from(n).expect("getgroups")];
    // SAFETY: a buffer of `n` gid_t.
    let n = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    groups.truncate(usize::try_from(n).expect("getgroups"));
    groups
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

fn write_atomic(path: &str, content: &str) {
    let tmp = format!("{path}.tmp{}", std::process::id());
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
