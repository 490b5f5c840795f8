//! A daemon that exits on its own: exit code 3 is `failed` with the same
//! words everywhere until cleanup; a clean exit is `stopped`; the restart
//! policy restarts a crash with its delay, until the start limit; a daemon
//! stopped at its start limit starts again with a fixed config.

use std::time::Duration;

use daemon_lifecycle::{DaemonStatus, RestartPolicy};

use super::harness::{reason, settle};
use crate::support::within;

fn runs(path: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

scenario!(exit_code_3_is_failed_until_cleanup, |ctx| {
    let config = ctx.config(&["--exit-code", "3"]);
    let m = ctx.manager(&config).await;
    // The exit may come before or after start returns (systemd Type=exec,
    // the fork supervisor's exec): only the state it settles in is compared.
    let _ = within(30, m.start()).await;
    let r = settle(&m, 10, |r| r.status.state_name() == "failed").await;
    ctx.check_status(
        "after the exit",
        &r,
        "failed",
        "exited with code 3",
        "exited with code 3",
    );
    ctx.check("is_running", m.is_running().await, false);
    ctx.check(
        "get_pid",
        format!("{:?}", m.get_pid().await.unwrap()),
        "None",
    );
    ctx.check("daemon processes", ctx.daemon_processes_settled(0).await, 0);
    // (systemd writes none; the fork backend's names no dead daemon.)
    ctx.check("a PID file", config.pid_file.exists(), false);
    // stop keeps the failure on record ...
    ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
    let r = m.status_report().await.unwrap();
    ctx.check_status(
        "after stop",
        &r,
        "failed",
        "exited with code 3",
        "exited with code 3",
    );
    // ... cleanup clears it.
    ctx.check_outcome("cleanup", &within(30, m.cleanup_stale()).await, "ok");
    let r = m.status_report().await.unwrap();
    ctx.check_status("after cleanup", &r, "stopped", "-", "-");
    ctx.check_left_behind("after cleanup").await;
    // Failed again: the same name with a fixed config starts at once, no
    // cleanup needed.
    let _ = within(30, m.start()).await;
    let r = settle(&m, 10, |r| r.status.state_name() == "failed").await;
    ctx.check_status(
        "after the second exit",
        &r,
        "failed",
        "exited with code 3",
        "exited with code 3",
    );
    let fixed = ctx.manager(&ctx.config(&[])).await;
    let pid = within(30, fixed.start()).await.unwrap();
    ctx.check(
        "status of the fixed config",
        fixed.status().await.unwrap(),
        DaemonStatus::Running(pid),
    );
    ctx.check(
        "daemon processes of the fixed config",
        ctx.daemon_processes_settled(1).await,
        1,
    );
    ctx.check_outcome(
        "stop of the fixed config",
        &within(30, fixed.stop()).await,
        "ok",
    );
});

scenario!(clean_exit_is_stopped, |ctx| {
    let config = ctx.config(&["--crash-after", "300:0"]);
    let m = ctx.manager(&config).await;
    // Not compared: under load the daemon may die before a systemd start
    // has confirmed it runs (StartFailed there, ok on the fork backend).
    let _ = within(30, m.start()).await;
    ctx.check(
        "daemon processes after the exit",
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            ctx.daemon_processes_settled(0).await
        },
        0,
    );
    let r = settle(&m, 5, |r| r.status.state_name() != "running").await;
    ctx.check_status("after the exit", &r, "stopped", "-", "exited with code 0");
});

scenario!(restart_on_failure_until_the_start_limit, exclusive, |ctx| {
    let starts = ctx.out("starts");
    let mut config = ctx.config(&["--starts", &starts, "--crash-after", "200:3"]);
    config.restart.policy = RestartPolicy::OnFailure;
    config.restart.delay_ms = 100;
    config.restart.max_delay_ms = 100;
    config.restart.max_restarts = 2;
    config.restart.window_secs = 60;
    let m = ctx.manager(&config).await;
    // Not compared: under load the daemon may die before a systemd start
    // has confirmed it runs (StartFailed there, ok on the fork backend).
    let _ = within(30, m.start()).await;
    let r = settle(&m, 20, |r| reason(r) == Some("start limit hit")).await;
    ctx.check_status(
        "at the start limit",
        &r,
        "failed",
        "start limit hit",
        "exited with code 3",
    );
    ctx.check("at the start limit: restarts", r.restarts, 2);
    ctx.check("runs", runs(&starts), 3);
    // It stays down.
    tokio::time::sleep(Duration::from_millis(400)).await;
    ctx.check("runs a while later", runs(&starts), 3);
    ctx.check("daemon processes", ctx.daemon_processes_settled(0).await, 0);
    let r = m.status_report().await.unwrap();
    ctx.check_status(
        "a while later",
        &r,
        "failed",
        "start limit hit",
        "exited with code 3",
    );
    ctx.check_outcome("cleanup", &within(30, m.cleanup_stale()).await, "ok");
    let r = m.status_report().await.unwrap();
    ctx.check_status("after cleanup", &r, "stopped", "-", "-");
});

scenario!(
    restart_pending_during_the_delay_and_stop_cancels_it,
    |ctx| {
        let starts = ctx.out("starts");
        let mut config = ctx.config(&["--starts", &starts, "--crash-after", "300:3"]);
        config.restart.policy = RestartPolicy::OnFailure;
        // Long enough to be seen, short enough for a test.
        config.restart.delay_ms = 1000;
        config.restart.max_delay_ms = 1000;
        let m = ctx.manager(&config).await;
        // Not compared: under load the daemon may die before a systemd start
        // has confirmed it runs (StartFailed there, ok on the fork backend).
        let _ = within(30, m.start()).await;
        let r = settle(&m, 10, |r| {
            reason(r).is_some_and(|r| r.contains("restart pending"))
        })
        .await;
        ctx.check_status(
            "during the restart delay",
            &r,
            "failed",
            "exited with code 3; restart pending",
            "exited with code 3",
        );
        ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
        let r = m.status_report().await.unwrap();
        ctx.check_status("after stop", &r, "stopped", "-", "-");
        // Past the delay: the restart was cancelled.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        ctx.check("runs", runs(&starts), 1);
        let r = m.status_report().await.unwrap();
        ctx.check_status("after the delay", &r, "stopped", "-", "-");
        ctx.check_left_behind("after the delay").await;
    }
);

scenario!(start_after_the_start_limit_starts_again, exclusive, |ctx| {
    // Fails until the start limit stops it...
    let mut failing = ctx.config(&["--crash-after", "200:3"]);
    failing.restart.policy = RestartPolicy::OnFailure;
    failing.restart.delay_ms = 100;
    failing.restart.max_delay_ms = 100;
    failing.restart.max_restarts = 1;
    failing.restart.window_secs = 60;
    let m = ctx.manager(&failing).await;
    let _ = within(30, m.start()).await;
    let r = settle(&m, 20, |r| reason(r) == Some("start limit hit")).await;
    if !ctx.check_status(
        "at the start limit",
        &r,
        "failed",
        "start limit hit",
        "exited with code 3",
    ) {
        return;
    }
    // ... then the fixed config starts at once, no cleanup needed.
    let m = ctx.manager(&ctx.config(&[])).await;
    let pid = within(30, m.start()).await.unwrap();
    ctx.check(
        "status after start",
        m.status().await.unwrap(),
        DaemonStatus::Running(pid),
    );
    ctx.check("daemon processes", ctx.daemon_processes_settled(1).await, 1);
});
