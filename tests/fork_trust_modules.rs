//! The fork backend's notify directory, log tail and control socket under
//! attack by another local user (run as `nobody` with `setpriv`), root being
//! the victim. See also `tests/fork_trust.rs`.
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use daemon_lifecycle::{DaemonConfig, DaemonError, LogsConfig, Readiness};
use support::{have_root, nobody_sh, shared_sandbox, within, Sandbox};

/// A config running `sh -c SCRIPT TAG` as `nobody`, readiness by notify (so
/// an exit before `READY=1` is a start-up failure quoting the stderr log).
fn shell_as_nobody(sb: &Sandbox, script: &str, stderr: &Path) -> DaemonConfig {
    let mut cfg = DaemonConfig::new(PathBuf::from("/bin/sh"), sb.path("daemon.pid"))
        .with_name(sb.tag.clone())
        .with_args(vec!["-c".to_owned(), script.to_owned(), sb.tag.clone()])
        .with_shutdown_timeout_secs(5)
        .with_startup_timeout_secs(10);
    cfg.user = Some("nobody".into());
    cfg.readiness = Some(Readiness::Notify);
    cfg.logs = Some(LogsConfig {
        stderr: Some(stderr.to_owned()),
        ..Default::default()
    });
    cfg
}

/// A log directory the daemon's user owns (as `/var/log/APP` would be).
fn log_dir_of_nobody(sb: &Sandbox) -> PathBuf {
    let dir = sb.path("logs");
    std::fs::create_dir(&dir).unwrap();
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    nix::unistd::chown(&dir, nobody, None).unwrap();
    dir
}

/// While a daemon that switched to `nobody` runs, its notify directory is
/// root's (group nobody's, 0710): nobody can neither plant a link in it nor
/// swap its socket, so root never chowns or unlinks through a link there.
#[tokio::test]
async fn the_notify_directory_stays_roots_while_the_daemon_runs_as_another_user() {
    if !have_root("attacks need root as the victim of a hostile user") {
        return;
    }
    let sb = shared_sandbox("modules_notify_dir");
    let mut cfg = sb.config(&["--ready-after", "100"]);
    cfg.user = Some("nobody".into());
    cfg.readiness = Some(Readiness::Notify);
    let m = sb.manager(cfg);
    // READY=1 arrives from the unprivileged daemon: it can still connect.
    within(20, m.start()).await.unwrap();
    let dir = sb.path("daemon.pid.notify");
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, nobody.gid.as_raw(), 0o710),
        "the notify directory was handed over"
    );
    let socket = std::fs::symlink_metadata(dir.join("notify")).unwrap();
    assert_eq!(socket.uid(), nobody.uid.as_raw());
    assert_eq!(socket.mode() & 0o777, 0o600);
    let precious = sb.path("precious");
    std::fs::create_dir(&precious).unwrap();
    for attack in [
        format!("ln -s {} {}/planted", precious.display(), dir.display()),
        format!(
            "mv {d}/notify {d}/moved && ln -s {} {d}/notify",
            precious.display(),
            d = dir.display()
        ),
        format!("chmod 0777 {}", dir.display()),
    ] {
        let out = nobody_sh(&attack);
        assert!(
            !out.status.success(),
            "nobody could `{attack}` in root's notify directory"
        );
    }
    within(20, m.stop()).await.unwrap();
    assert!(!dir.exists(), "the notify directory was left behind");
    let p = std::fs::symlink_metadata(&precious).unwrap();
    assert_eq!(
        (p.uid(), p.gid()),
        (0, 0),
        "root chowned a directory elsewhere"
    );
    sb.assert_no_leaks();
}

/// A notify directory planted by another user, holding a socket of theirs:
/// root neither empties nor removes it.
#[tokio::test]
async fn a_planted_notify_directory_is_not_emptied_by_root() {
    if !have_root("attacks need root as the victim of a hostile user") {
        return;
    }
    let sb = shared_sandbox("modules_notify_planted");
    let dir = sb.path("daemon.pid.notify");
    let out = nobody_sh(&format!("mkdir -m 0755 {}", dir.display()));
    assert!(out.status.success());
    // The socket is bound by root and given to nobody: as if nobody bound it.
    let socket = dir.join("notify");
    let _bound = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    nix::unistd::chown(&socket, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let mut cfg = sb.config(&["--ready-after", "100"]);
    cfg.readiness = Some(Readiness::Notify);
    let m = sb.manager(cfg);
    let cleanup = within(20, m.cleanup_stale()).await;
    assert!(cleanup.is_err(), "cleanup accepted nobody's directory");
    let start = within(20, m.start()).await;
    assert!(start.is_err(), "start accepted nobody's directory");
    assert!(
        std::fs::symlink_metadata(&socket).is_ok(),
        "root removed the socket in nobody's directory"
    );
    assert!(dir.is_dir());
    sb.assert_no_leaks();
}

/// A daemon whose user swaps its stderr log for a link to a secret before
/// dying: the start-up failure quotes no byte of the secret.
#[tokio::test]
async fn a_swapped_stderr_log_is_not_quoted() {
    if !have_root("attacks need root as the victim of a hostile user") {
        return;
    }
    let sb = shared_sandbox("modules_tail_link");
    let secret = sb.path("secret");
    std::fs::write(&secret, "TOPSECRET-4242\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let logs = log_dir_of_nobody(&sb);
    let err_log = logs.join("err.log");
    let script = format!(
        "echo dying >&2; rm -f {log} && ln -s {secret} {log}; exit 3",
        log = err_log.display(),
        secret = secret.display()
    );
    let m = sb.manager(shell_as_nobody(&sb, &script, &err_log));
    let err = within(20, m.start()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DaemonError::StartFailed { .. }), "{err:?}");
    assert!(
        std::fs::symlink_metadata(&err_log)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the daemon did not swap its log"
    );
    assert!(
        !text.contains("TOPSECRET"),
        "root quoted the secret: {text}"
    );
    sb.assert_no_leaks();
}

/// A stderr log swapped for a FIFO does not hang root's start.
#[tokio::test]
async fn a_stderr_log_swapped_for_a_fifo_does_not_hang_the_start() {
    if !have_root("attacks need root as the victim of a hostile user") {
        return;
    }
    let sb = shared_sandbox("modules_tail_fifo");
    let logs = log_dir_of_nobody(&sb);
    let err_log = logs.join("err.log");
    let script = format!(
        "rm -f {log} && mkfifo {log}; exit 3",
        log = err_log.display()
    );
    let m = sb.manager(shell_as_nobody(&sb, &script, &err_log));
    let t = Instant::now();
    // On a thread of its own: a start blocked in open(2) on the FIFO fails
    // the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _ = tx.send(rt.block_on(m.start()).map(|_| ()));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the start hung on a FIFO at the stderr log's path");
    assert!(
        matches!(got, Err(DaemonError::StartFailed { .. })),
        "{got:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(20));
    sb.assert_no_leaks();
}

/// A control socket whose server never accepts (a SIGSTOPped supervisor)
/// and whose backlog is full: `status` fails within the query timeout
/// instead of blocking in connect(2) for ever.
#[test]
fn a_full_control_backlog_fails_status_instead_of_hanging() {
    use std::os::fd::AsRawFd;
    let sb = Sandbox::new("modules_backlog");
    let ctl = sb.path("daemon.pid.ctl");
    let listener = std::os::unix::net::UnixListener::bind(&ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The smallest backlog; then fill it with connections nobody accepts.
    // SAFETY: a valid listening socket.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut queued = Vec::new();
    rt.block_on(async {
        loop {
            match tokio::net::UnixStream::connect(&ctl).await {
                Ok(s) => queued.push(s),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
                Err(e) => panic!("filling the backlog: {e}"),
            }
            assert!(queued.len() < 1000, "the backlog does not fill");
        }
    });
    let toml = sb.write_toml(&sb.config(&[]));
    let t = Instant::now();
    let out = support::output_within(
        Command::new(support::daemonctl()).arg("status").arg(&toml),
        20,
    );
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "status succeeded: {stderr}");
    assert!(stderr.contains("daemon.pid.ctl"), "{stderr}");
    assert!(took < Duration::from_secs(10), "status took {took:?}");
    drop(queued);
    drop(listener);
    sb.assert_no_leaks();
}

/// A PID file so deep that its control and notify sockets' paths do not fit
/// in `sun_path`: the control socket is reached through a descriptor of its
/// directory (held across the non-blocking connect), the notify socket lives
/// in a private directory elsewhere; start, status and stop all work.
#[tokio::test]
async fn a_deep_pid_file_still_reaches_its_supervisor() {
    let sb = Sandbox::new("modules_deep");
    let mut deep = sb.dir.path().to_owned();
    while deep.as_os_str().len() < 150 {
        deep.push("d".repeat(20));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let mut cfg = sb.config(&["--ready-after", "50"]);
    cfg.pid_file = deep.join("daemon.pid");
    cfg.readiness = Some(Readiness::Notify);
    let m = sb.manager(cfg);
    within(20, m.start()).await.unwrap();
    let report = within(20, m.status_report()).await.unwrap();
    assert!(
        matches!(report.status, daemon_lifecycle::DaemonStatus::Running(_)),
        "{report:?}"
    );
    within(20, m.stop()).await.unwrap();
    assert!(!deep.join("daemon.pid.ctl").exists());
    sb.assert_no_leaks();
}
