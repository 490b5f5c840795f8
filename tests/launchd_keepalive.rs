//! `KeepAlive` on the launchd backend, against the launchctl simulator:
//! what each restart policy restarts, the state while a restart waits out
//! `ThrottleInterval`, and that a plain SIGKILL is undone by KeepAlive while
//! the backend's stop and kill (bootout) are not.
mod support;

use std::time::Duration;

use daemon_lifecycle::{DaemonConfig, DaemonStatus, ExitInfo, RestartPolicy};
use support::launchd::Sim;
use support::{alive, eventually, within, Sandbox};

fn with_policy(config: DaemonConfig, policy: RestartPolicy, delay_ms: u64) -> DaemonConfig {
    let mut config = config;
    config.restart.policy = policy;
    config.restart.delay_ms = delay_ms;
    config.restart.max_delay_ms = config.restart.max_delay_ms.max(delay_ms);
    config
}

/// Lines in testd's `--starts` file: one per start.
fn starts(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[tokio::test]
async fn each_policy_restarts_what_it_says() {
    let sb = Sandbox::new("ka_policy");
    let sim = Sim::new(&sb);
    // (policy, exit code, restarted?)
    for (policy, code, restarted) in [
        (RestartPolicy::Always, "0", true),
        (RestartPolicy::OnFailure, "3", true),
        (RestartPolicy::OnFailure, "0", false),
        (RestartPolicy::Never, "3", false),
    ] {
        let log = sb.path(&format!("starts-{}-{code}", policy.as_str()));
        let crash = format!("300:{code}");
        let config = sb.config(&["--starts", log.to_str().unwrap(), "--crash-after", &crash]);
        let m = sim.manager(with_policy(config, policy, 1000));
        let pid = within(20, m.start()).await.unwrap();
        if restarted {
            // ThrottleInterval = 1 s after the last start.
            let pid2 = eventually(10, || async {
                m.get_pid().await.unwrap().filter(|p| *p != pid)
            })
            .await;
            assert!(alive(pid2), "{policy:?}");
            assert!(starts(&log) >= 2, "{policy:?}");
            let report = within(20, m.status_report()).await.unwrap();
            assert!(report.restarts >= 1, "{policy:?}: {report:?}");
            assert_eq!(
                report.last_exit,
                Some(ExitInfo::Code(code.parse().unwrap()))
            );
        } else {
            let status = eventually(10, || async {
                Some(m.status().await.unwrap()).filter(|s| *s != DaemonStatus::Running(pid))
            })
            .await;
            let want = if code == "0" {
                DaemonStatus::Stopped
            } else {
                DaemonStatus::Failed(format!("exited with code {code}"))
            };
            assert_eq!(status, want, "{policy:?}");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(starts(&log), 1, "{policy:?}: not restarted");
        }
        within(30, m.stop()).await.unwrap();
        within(30, m.cleanup_stale()).await.unwrap();
    }
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_pending_restart_reads_failed_restart_pending() {
    let sb = Sandbox::new("ka_pending");
    let sim = Sim::new(&sb);
    let config = sb.config(&["--crash-after", "200:3"]);
    // ThrottleInterval 3 s: the restart waits about 2.8 s after the crash.
    let m = sim.manager(with_policy(config, RestartPolicy::OnFailure, 3000));
    within(20, m.start()).await.unwrap();
    let status = eventually(10, || async {
        Some(m.status().await.unwrap()).filter(|s| matches!(s, DaemonStatus::Failed(_)))
    })
    .await;
    assert_eq!(
        status,
        DaemonStatus::Failed("exited with code 3; restart pending".into())
    );
    // stop during the wait: booted out, no restart comes.
    within(30, m.stop()).await.unwrap();
    assert_eq!(within(20, m.status()).await.unwrap(), DaemonStatus::Stopped);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(within(20, m.status()).await.unwrap(), DaemonStatus::Stopped);
    assert!(support::processes_matching(&format!("testd --tag {}", sb.tag)).is_empty());
    drop(sim);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn keepalive_undoes_a_plain_kill_but_not_stop_or_kill() {
    let sb = Sandbox::new("ka_kill");
    let sim = Sim::new(&sb);
    let m = sim.manager(with_policy(sb.config(&[]), RestartPolicy::Always, 1000));
    let pid = within(20, m.start()).await.unwrap();
    // A SIGKILL from outside: launchd starts it again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let pid2 = eventually(10, || async {
        m.get_pid().await.unwrap().filter(|p| *p != pid)
    })
    .await;
    assert!(alive(pid2));
    // The backend's kill is a bootout too: it stays down.
    within(30, m.kill()).await.unwrap();
    assert!(!alive(pid2));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(within(20, m.status()).await.unwrap(), DaemonStatus::Stopped);
    // And so does stop.
    let pid3 = within(20, m.start()).await.unwrap();
    within(30, m.stop()).await.unwrap();
    assert!(!alive(pid3));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(within(20, m.status()).await.unwrap(), DaemonStatus::Stopped);
    drop(sim);
    sb.assert_no_leaks();
}
