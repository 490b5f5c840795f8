//! Readiness on the fork backend: `start` returns once the daemon is ready
//! (sd_notify READY=1 over the supervisor's NOTIFY_SOCKET, or a TCP, HTTP or
//! command probe); not ready in time → `Timeout` with nothing left running;
//! dead before ready → `StartFailed` with its exit code and stderr. (Notify,
//! tcp and http readiness, a probe timeout and death before readiness on
//! every backend: `tests/scenarios/readiness.rs`.)
mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use daemon_lifecycle::{DaemonError, DaemonStatus, LogsConfig, Readiness};
use support::{alive, free_addr, identity, within, Sandbox};

fn notify() -> Option<Readiness> {
    Some(Readiness::Notify)
}

/// After a failed start: no daemon, no PID file, nothing of ours running.
async fn assert_nothing_left(sb: &Sandbox, m: &daemon_lifecycle::DaemonManager) {
    assert!(!sb.path("daemon.pid").exists(), "PID file left behind");
    assert!(!matches!(
        m.status().await.unwrap(),
        DaemonStatus::Running(_)
    ));
    sb.assert_no_leaks();
}

#[tokio::test]
async fn notify_start_returns_after_ready_with_status_text() {
    let sb = Sandbox::new("notify_ready");
    let stamp = sb.path("ready.stamp");
    let mut cfg = sb.config(&[
        "--status",
        "warming up",
        "--ready-after",
        "700",
        "--ready-stamp",
        stamp.to_str().unwrap(),
    ]);
    cfg.readiness = notify();
    let m = sb.manager(cfg);
    let t = Instant::now();
    let pid = within(20, m.start()).await.unwrap();
    let returned_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros();
    // Not before READY=1 (sent after 700 ms) ...
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    let ready_us: u128 = std::fs::read_to_string(&stamp)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(returned_us >= ready_us);
    eprintln!(
        "measured: READY=1 → start() returned in {} µs",
        returned_us - ready_us
    );
    let report = m.status_report().await.unwrap();
    assert_eq!(report.status, DaemonStatus::Running(pid));
    assert_eq!(report.status_text.as_deref(), Some("ready"));
    within(10, m.wait_ready(5)).await.unwrap();
    // The socket lives in a private 0700 directory next to the PID file.
    use std::os::unix::fs::PermissionsExt;
    let dir = sb.path("daemon.pid.notify");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    within(20, m.stop()).await.unwrap();
    assert!(!dir.exists(), "notify directory left behind");
    sb.assert_no_leaks();
}

#[tokio::test]
async fn notify_never_ready_is_a_timeout_and_leaves_nothing() {
    let sb = Sandbox::new("notify_never");
    let mut cfg = sb
        .config(&["--status", "stuck", "--ignore-term"])
        .with_startup_timeout_secs(1)
        .with_shutdown_timeout_secs(1);
    cfg.readiness = notify();
    let m = sb.manager(cfg);
    let t = Instant::now();
    let err = within(20, m.start()).await.unwrap_err();
    assert!(
        matches!(err, DaemonError::Timeout { .. }),
        "expected Timeout, got {err:?}"
    );
    // 1 s to give up, then SIGTERM (ignored) and SIGKILL after 1 s more.
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    // Stopped, and said so as systemd says it for a start timeout: failed,
    // with the time it waited (not the time the stop then took).
    let report = m.status_report().await.unwrap();
    assert_eq!(
        report.status,
        DaemonStatus::Failed("not ready within 1 s".into())
    );
    assert_eq!(report.status_text.as_deref(), Some("stuck"));
    assert_nothing_left(&sb, &m).await;
    within(10, m.cleanup_stale()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
}

#[tokio::test]
async fn extend_timeout_usec_gives_more_time() {
    let sb = Sandbox::new("notify_extend");
    let mut cfg = sb
        .config(&["--extend-timeout-ms", "4000", "--ready-after", "1500"])
        .with_startup_timeout_secs(1);
    cfg.readiness = notify();
    let m = sb.manager(cfg);
    let pid = within(20, m.start()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    within(20, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn notify_daemon_dying_before_ready_reports_code_and_stderr() {
    let sb = Sandbox::new("notify_dies");
    let mut cfg = sb.config(&["--stderr-lines", "3", "--crash-after", "300:4"]);
    cfg.readiness = notify();
    cfg.logs = Some(LogsConfig {
        stderr: Some(sb.path("err.log")),
        ..Default::default()
    });
    let m = sb.manager(cfg);
    let err = within(20, m.start()).await.unwrap_err();
    let DaemonError::StartFailed { reason, .. } = &err else {
        panic!("expected StartFailed, got {err:?}");
    };
    assert!(reason.contains("code 4"), "{reason}");
    assert!(reason.contains("crashing with code 4"), "{reason}");
    assert!(reason.contains("err 000003"), "{reason}");
    assert!(matches!(m.status().await.unwrap(), DaemonStatus::Failed(_)));
    assert_nothing_left(&sb, &m).await;
}

#[tokio::test]
async fn notify_from_outside_the_process_group_is_ignored() {
    let sb = Sandbox::new("notify_outsider");
    let mut cfg = sb
        .config(&["--notify-from-outsider"])
        .with_startup_timeout_secs(1);
    cfg.readiness = notify();
    let m = sb.manager(cfg);
    let err = within(20, m.start()).await.unwrap_err();
    assert!(matches!(err, DaemonError::Timeout { .. }), "{err:?}");
    assert_nothing_left(&sb, &m).await;
}

#[tokio::test]
async fn mainpid_moves_the_pid_file_within_the_group() {
    let sb = Sandbox::new("notify_mainpid");
    let gc = sb.path("gc.pid");
    let mut cfg = sb.config(&[
        "--grandchild",
        gc.to_str().unwrap(),
        "--mainpid-grandchild",
        "--ready-after",
        "100",
    ]);
    cfg.readiness = notify();
    let m = sb.manager(cfg);
    let pid = within(20, m.start()).await.unwrap();
    let grandchild = support::read_pid_file(&gc).await;
    assert_eq!(pid, grandchild, "MAINPID= was not honoured");
    let on_disk: u32 = std::fs::read_to_string(sb.path("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(on_disk, grandchild);
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(grandchild));
    within(20, m.stop()).await.unwrap();
    assert!(!alive(grandchild));
    sb.assert_no_leaks();
}

#[tokio::test]
async fn tcp_probe_timeout_stops_the_daemon() {
    let sb = Sandbox::new("tcp_timeout");
    let mut cfg = sb.config(&[]).with_startup_timeout_secs(1);
    cfg.readiness = Some(Readiness::Tcp {
        address: free_addr(),
        interval_ms: None,
    });
    let m = sb.manager(cfg);
    let err = within(20, m.start()).await.unwrap_err();
    assert!(matches!(err, DaemonError::Timeout { .. }), "{err:?}");
    assert!(err.is_readiness_timeout());
    assert_eq!(
        m.status().await.unwrap(),
        DaemonStatus::Failed("not ready within 1 s".into())
    );
    assert_nothing_left(&sb, &m).await;
    // The next start starts afresh (the failed record is cleared).
    let err = within(20, m.start()).await.unwrap_err();
    assert!(err.is_readiness_timeout(), "{err:?}");
    within(10, m.cleanup_stale()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
}

#[tokio::test]
async fn tcp_probe_sees_the_daemon_die() {
    let sb = Sandbox::new("tcp_dies");
    let mut cfg = sb
        .config(&["--crash-after", "200:5"])
        .with_startup_timeout_secs(30);
    cfg.readiness = Some(Readiness::Tcp {
        address: free_addr(),
        interval_ms: None,
    });
    let m = sb.manager(cfg);
    let t = Instant::now();
    let err = within(20, m.start()).await.unwrap_err();
    let DaemonError::StartFailed { reason, .. } = &err else {
        panic!("expected StartFailed, got {err:?}");
    };
    assert!(reason.contains("code 5"), "{reason}");
    // Noticed at the death, not at the 30 s timeout.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_nothing_left(&sb, &m).await;
}

#[tokio::test]
async fn http_probe_needs_a_2xx() {
    let sb = Sandbox::new("http_ready");
    let addr = free_addr();
    let mut cfg = sb.config(&["--http", &addr, "--ready-after", "300"]);
    cfg.readiness = Some(Readiness::Http {
        url: format!("http://{addr}/health"),
        interval_ms: Some(50),
    });
    let m = sb.manager(cfg);
    let pid = within(20, m.start()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    within(10, m.wait_ready(5)).await.unwrap();
    within(20, m.stop()).await.unwrap();

    // A server that answers 503 is not ready.
    let sb2 = Sandbox::new("http_503");
    let addr = free_addr();
    let mut cfg = sb2
        .config(&["--http", &addr, "--http-status", "503"])
        .with_startup_timeout_secs(1);
    cfg.readiness = Some(Readiness::Http {
        url: format!("http://{addr}/health"),
        interval_ms: Some(50),
    });
    let m2 = sb2.manager(cfg);
    let err = within(20, m2.start()).await.unwrap_err();
    assert!(matches!(err, DaemonError::Timeout { .. }), "{err:?}");
    assert_nothing_left(&sb2, &m2).await;
    sb.assert_no_leaks();
}

#[tokio::test]
async fn command_probe_uses_exit_status() {
    let sb = Sandbox::new("cmd_ready");
    let flag = sb.path("ready.flag");
    let mut cfg = sb.config(&[
        "--ready-after",
        "300",
        "--ready-stamp",
        flag.to_str().unwrap(),
    ]);
    cfg.readiness = Some(Readiness::Command {
        argv: vec![
            "/usr/bin/test".into(),
            "-e".into(),
            flag.display().to_string(),
        ],
        interval_ms: Some(20),
    });
    let m = sb.manager(cfg);
    within(20, m.start()).await.unwrap();
    assert!(
        flag.exists(),
        "start returned before the command probe passed"
    );
    within(20, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn wait_ready_on_a_stopped_daemon_is_not_running() {
    let sb = Sandbox::new("wait_ready_stopped");
    let mut cfg = sb.config(&[]);
    cfg.readiness = notify();
    let m = sb.manager(cfg);
    let err = within(10, m.wait_ready(1)).await.unwrap_err();
    assert!(matches!(err, DaemonError::NotRunning { .. }), "{err:?}");
    sb.assert_no_leaks();
}

#[test]
fn daemonctl_start_waits_for_notify_and_shows_status_text() {
    let sb = Sandbox::new("cli_notify");
    let mut cfg = sb.config(&["--status", "booting", "--ready-after", "400"]);
    cfg.readiness = notify();
    let toml = sb.write_toml(&cfg);
    let run = |args: &[&str]| {
        std::process::Command::new(support::daemonctl())
            .args(["--backend", "fork"])
            .args(args)
            .arg(&toml)
            .output()
            .unwrap()
    };
    let t = Instant::now();
    let out = run(&["start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.elapsed() >= Duration::from_millis(400));
    let out = run(&["wait-ready", "--timeout", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "running");
    assert_eq!(json["status_text"], "ready");
    assert_eq!(json["restarts"], 0);
    assert_eq!(identity(&sb).unwrap()["ready"], true);
    assert!(run(&["stop"]).status.success());
    sb.assert_no_leaks();
}

/// `wait_ready` on a notify daemon that is still starting returns once
/// READY=1 is recorded, not before. (That the record's write wakes it, not
/// the 1 s recheck, is proven without timing by the unit test
/// `fork::pidfile::tests::a_record_write_wakes_the_watch_not_its_recheck`;
/// a time bound here failed on loaded machines.)
#[tokio::test]
async fn wait_ready_wakes_on_ready_not_on_a_timer() {
    let sb = Sandbox::new("wait_ready_event");
    let stamp = sb.path("ready.stamp");
    let mut cfg = sb.config(&[
        "--ready-after",
        "1500",
        "--ready-stamp",
        stamp.to_str().unwrap(),
    ]);
    cfg.readiness = notify();
    let toml = sb.write_toml(&cfg);
    // `daemonctl start` blocks until READY=1; meanwhile the test waits too.
    let mut starter = std::process::Command::new(support::daemonctl())
        .arg("start")
        .arg(&toml)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let m = sb.manager(cfg);
    // Until READY=1 the daemon runs but is not ready: `starting`.
    support::eventually(10, || async {
        matches!(m.status().await.unwrap(), DaemonStatus::Starting(_)).then_some(())
    })
    .await;
    assert!(
        !stamp.exists(),
        "ready before wait_ready began: the test shows nothing"
    );
    within(10, m.wait_ready(10)).await.unwrap();
    let returned = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let ready: u128 = std::fs::read_to_string(&stamp)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(returned >= ready, "wait_ready returned before READY=1");
    assert!(starter.wait().unwrap().success());
    within(20, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}
