//! Crash recovery on the fork backend: the supervisor restarts the daemon per
//! the `restart` policy with exponential back-off, gives up after the start
//! limit, counts restarts, and never restarts what stop or kill ended.
mod support;

use std::time::Duration;

use daemon_lifecycle::{DaemonStatus, ExitInfo, RestartPolicy};
use support::{eventually, within, Sandbox};

/// (PID, start time in µs) per start, from testd's `--starts` file.
fn starts(path: &std::path::Path) -> Vec<(u32, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (pid, us) = l.split_once(' ').unwrap();
            (pid.parse().unwrap(), us.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn on_failure_backs_off_exponentially_then_hits_the_start_limit() {
    let sb = Sandbox::new("restart_limit");
    let log = sb.path("starts.log");
    let mut cfg = sb.config(&["--starts", log.to_str().unwrap(), "--crash-after", "100:3"]);
    cfg.restart.policy = RestartPolicy::OnFailure;
    cfg.restart.delay_ms = 100;
    cfg.restart.max_delay_ms = 400;
    cfg.restart.max_restarts = 3;
    cfg.restart.window_secs = 60;
    let m = sb.manager(cfg);
    within(20, m.start()).await.unwrap();
    let report = eventually(20, || async {
        let r = m.status_report().await.unwrap();
        (r.status == DaemonStatus::Failed("start limit hit".into())).then_some(r)
    })
    .await;
    assert_eq!(report.restarts, 3);
    assert_eq!(report.last_exit, Some(ExitInfo::Code(3)));
    let s = starts(&log);
    assert_eq!(s.len(), 4, "one start and three restarts: {s:?}");
    // Each gap is the run (100 ms) plus a delay of at least 100, 200, 400 ms.
    for (i, min_delay_ms) in [100u128, 200, 400].into_iter().enumerate() {
        let gap_ms = (s[i + 1].1 - s[i].1) / 1000;
        assert!(
            gap_ms >= 100 + min_delay_ms,
            "gap {i} was {gap_ms} ms: {s:?}"
        );
    }
    // Stays down: no supervisor left to restart it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(starts(&log).len(), 4);

    // JSON through daemonctl shows the count and the last exit.
    let toml = sb.write_toml(m.config());
    let out = std::process::Command::new(support::daemonctl())
        .args(["--backend", "fork", "status", "--json"])
        .arg(&toml)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "failed");
    assert_eq!(json["reason"], "start limit hit");
    assert_eq!(json["restarts"], 3);
    assert_eq!(json["last_exit"], "exited with code 3");
    within(20, m.cleanup_stale()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn always_restarts_a_clean_exit_and_rewrites_the_pid_file() {
    let sb = Sandbox::new("restart_always");
    let log = sb.path("starts.log");
    let mut cfg = sb.config(&["--starts", log.to_str().unwrap(), "--crash-after", "300:0"]);
    cfg.restart.policy = RestartPolicy::Always;
    cfg.restart.delay_ms = 50;
    cfg.restart.max_restarts = 100;
    let m = sb.manager(cfg);
    let first = within(20, m.start()).await.unwrap();
    let (pid, report) = eventually(20, || async {
        let r = m.status_report().await.unwrap();
        match r.status {
            DaemonStatus::Running(pid) if pid != first && r.restarts >= 1 => Some((pid, r)),
            _ => None,
        }
    })
    .await;
    assert_eq!(report.last_exit, Some(ExitInfo::Code(0)));
    let on_disk: u32 = std::fs::read_to_string(sb.path("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(0);
    // The PID file follows the restarts (it may already name a newer run,
    // which logs its start a moment after it was spawned).
    eventually(5, || async {
        (starts(&log).iter().any(|(p, _)| *p == on_disk) || on_disk == 0).then_some(())
    })
    .await;
    eventually(5, || async {
        starts(&log).iter().any(|(p, _)| *p == pid).then_some(())
    })
    .await;

    // stop never triggers a restart.
    within(20, m.stop()).await.unwrap();
    let n = starts(&log).len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(starts(&log).len(), n, "restarted after stop");
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_crash_by_signal_is_restarted_on_failure() {
    let sb = Sandbox::new("restart_signal");
    let log = sb.path("starts.log");
    let mut cfg = sb.config(&["--starts", log.to_str().unwrap()]);
    cfg.restart.policy = RestartPolicy::OnFailure;
    cfg.restart.delay_ms = 10;
    let m = sb.manager(cfg);
    let pid = within(20, m.start()).await.unwrap();
    // SIGKILL from outside (an OOM kill, say): unclean, so restarted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let report = eventually(20, || async {
        let r = m.status_report().await.unwrap();
        matches!(r.status, DaemonStatus::Running(p) if p != pid).then_some(r)
    })
    .await;
    assert_eq!(report.restarts, 1);
    assert_eq!(report.last_exit, Some(ExitInfo::Signal(9)));
    within(20, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_killed_supervisor_leaves_a_manageable_daemon() {
    let sb = Sandbox::new("restart_sup_killed");
    let mut cfg = sb.config(&[]);
    cfg.restart.policy = RestartPolicy::Always;
    let m = sb.manager(cfg);
    let pid = within(20, m.start()).await.unwrap();
    let rec = support::identity(&sb).unwrap();
    let sup = rec["supervisor"]["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(5, || async { (!support::alive(sup as u32)).then_some(()) }).await;
    // Nothing lost: the PID file still names the daemon, status finds it.
    assert_eq!(
        std::fs::read_to_string(sb.path("daemon.pid")).unwrap(),
        format!("{pid}\n")
    );
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    within(20, m.stop()).await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}

/// `cleanup` while a supervisor waits out its restart delay retires that
/// supervisor: a following `start` gives one daemon, not two.
#[tokio::test]
async fn cleanup_during_the_back_off_retires_the_supervisor() {
    let sb = Sandbox::new("restart_backoff_cleanup");
    let log = sb.path("starts.log");
    let mut cfg = sb.config(&["--starts", log.to_str().unwrap(), "--crash-after", "100:2"]);
    cfg.restart.policy = RestartPolicy::OnFailure;
    cfg.restart.delay_ms = 1500;
    cfg.restart.max_delay_ms = 1500;
    let crashing = sb.manager(cfg);
    within(20, crashing.start()).await.unwrap();
    eventually(10, || async {
        matches!(crashing.status().await.unwrap(), DaemonStatus::Failed(r) if r.contains("restart pending"))
            .then_some(())
    })
    .await;
    within(20, crashing.cleanup_stale()).await.unwrap();
    // The same name and PID file, now a daemon that stays up.
    let healthy = sb.manager(sb.config(&["--starts", log.to_str().unwrap()]));
    let pid = within(20, healthy.start()).await.unwrap();
    // Past the old delay: had the old supervisor survived, it would have
    // started a second daemon by now.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(starts(&log).len(), 2, "{:?}", starts(&log));
    assert_eq!(healthy.status().await.unwrap(), DaemonStatus::Running(pid));
    within(20, healthy.stop()).await.unwrap();
    sb.assert_no_leaks();
}
