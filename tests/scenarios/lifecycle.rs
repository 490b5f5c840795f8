//! start, status, restart, stop; stop, kill and cleanup of a stopped daemon.

use daemon_lifecycle::DaemonStatus;

use super::harness::took_words;
use crate::support::within;

scenario!(start_status_stop, |ctx| {
    let config = ctx.config(&[]);
    let m = ctx.manager(&config).await;
    let r = m.status_report().await.unwrap();
    ctx.check_status("before start", &r, "stopped", "-", "-");
    ctx.check_outcome("stop before any start", &within(30, m.stop()).await, "ok");

    let pid = within(30, m.start()).await.unwrap();
    ctx.check(
        "daemon processes after start",
        ctx.daemon_processes_settled(1).await,
        1,
    );
    ctx.check(
        "status after start",
        m.status().await.unwrap(),
        DaemonStatus::Running(pid),
    );
    ctx.check(
        "get_pid",
        format!("{:?}", m.get_pid().await.unwrap()),
        format!("{:?}", Some(pid)),
    );
    ctx.check("is_running", m.is_running().await, true);
    ctx.check(
        "start of a running daemon",
        within(30, m.start()).await.unwrap(),
        pid,
    );
    ctx.check_outcome("wait_ready", &within(30, m.wait_ready(5)).await, "ok");

    let new = within(30, m.restart()).await.unwrap();
    ctx.check("restart gives a new PID", new != pid, true);
    ctx.check(
        "status after restart",
        m.status().await.unwrap(),
        DaemonStatus::Running(new),
    );
    ctx.check(
        "daemon processes after restart",
        ctx.daemon_processes_settled(1).await,
        1,
    );

    // testd dies on SIGTERM at once: the 5 s shutdown timeout is not waited.
    let t = std::time::Instant::now();
    ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
    ctx.check(
        "stop took",
        took_words(t.elapsed(), config.shutdown_timeout_secs),
        "less than the shutdown timeout",
    );
    ctx.check(
        "daemon processes after stop",
        ctx.daemon_processes_settled(0).await,
        0,
    );
    let r = m.status_report().await.unwrap();
    ctx.check_status("after stop", &r, "stopped", "-", "-");
    ctx.check_left_behind("after stop").await;
    ctx.check(
        "after stop: status_text",
        format!("{:?}", r.status_text),
        "None",
    );
    ctx.check(
        "get_pid after stop",
        format!("{:?}", m.get_pid().await.unwrap()),
        "None",
    );
    ctx.check("is_running after stop", m.is_running().await, false);

    ctx.check_outcome(
        "stop of a stopped daemon",
        &within(30, m.stop()).await,
        "ok",
    );
    ctx.check_outcome(
        "kill of a stopped daemon",
        &within(30, m.kill()).await,
        "ok",
    );
    ctx.check_outcome(
        "cleanup of a stopped daemon",
        &within(30, m.cleanup_stale()).await,
        "ok",
    );
    let r = m.status_report().await.unwrap();
    ctx.check_status("at the end", &r, "stopped", "-", "-");
    ctx.check_left_behind("at the end").await;
});
