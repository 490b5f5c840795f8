//! The shutdown sequence: SIGTERM, SIGKILL after `shutdown_timeout_secs`;
//! grandchildren (in the daemon's group, in a session of their own, one
//! ignoring SIGTERM) go with the daemon on stop and on kill; kill is
//! immediate and never restarted.

use std::time::{Duration, Instant};

use daemon_lifecycle::{DaemonStatus, RestartPolicy};

use super::harness::{poll, took_words, Ctx};
use crate::support::within;

/// Whether every daemon process ignores SIGTERM (SigIgn bit 14), at least one.
fn all_ignore_sigterm(ctx: &Ctx, want: usize) -> bool {
    let pids = ctx.daemon_processes();
    pids.len() == want
        && pids.iter().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("SigIgn:"))
                        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                })
                .is_some_and(|mask| mask & (1 << 14) != 0)
        })
}

/// Waits for the PID files testd writes for its grandchildren.
async fn grandchildren_written(files: &[&str]) -> bool {
    poll(10, || async {
        files
            .iter()
            .all(|f| std::path::Path::new(f).exists())
            .then_some(())
    })
    .await
    .is_some()
}

scenario!(stop_escalates_to_sigkill, |ctx| {
    let config = ctx.config(&["--ignore-term"]).with_shutdown_timeout_secs(1);
    let m = ctx.manager(&config).await;
    let pid = within(30, m.start()).await.unwrap();
    ctx.check(
        "status after start",
        m.status().await.unwrap(),
        DaemonStatus::Running(pid),
    );
    let ignoring = poll(10, || async { all_ignore_sigterm(&ctx, 1).then_some(()) }).await;
    if !ctx.check("the daemon ignores SIGTERM", ignoring.is_some(), true) {
        return;
    }
    let t = Instant::now();
    ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
    ctx.check(
        "stop took",
        took_words(t.elapsed(), 1),
        "the shutdown timeout, plus less than 3 s",
    );
    ctx.check(
        "daemon processes after stop",
        ctx.daemon_processes_settled(0).await,
        0,
    );
    let r = m.status_report().await.unwrap();
    ctx.check_status(
        "after stop",
        &r,
        "stopped",
        "-",
        "killed by signal 9 (SIGKILL)",
    );
    ctx.check_left_behind("after stop").await;
});

scenario!(stop_takes_grandchildren, |ctx| {
    // One grandchild in the daemon's process group, one that left it for a
    // session of its own (as a double-forking daemon's does).
    let (gc, setsid) = (ctx.out("grandchild.pid"), ctx.out("setsid.pid"));
    let config = ctx.config(&["--grandchild", &gc, "--setsid-grandchild", &setsid]);
    let m = ctx.manager(&config).await;
    let pid = within(30, m.start()).await.unwrap();
    ctx.check(
        "grandchildren started",
        grandchildren_written(&[&gc, &setsid]).await,
        true,
    );
    ctx.check(
        "daemon processes after start",
        ctx.daemon_processes_settled(3).await,
        3,
    );
    ctx.check(
        "status after start",
        m.status().await.unwrap(),
        DaemonStatus::Running(pid),
    );
    ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
    ctx.check(
        "daemon processes after stop",
        ctx.daemon_processes_settled(0).await,
        0,
    );
    let r = m.status_report().await.unwrap();
    ctx.check_status("after stop", &r, "stopped", "-", "-");
    ctx.check_left_behind("after stop").await;
});

scenario!(kill_takes_grandchildren_and_is_not_restarted, |ctx| {
    // Everything ignores SIGTERM, one grandchild in a session of its own; a
    // 30 s shutdown timeout that kill must not wait; a restart policy that
    // kill must not trigger.
    let (gc, stubborn, starts) = (
        ctx.out("grandchild.pid"),
        ctx.out("stubborn.pid"),
        ctx.out("starts"),
    );
    let mut config = ctx
        .config(&[
            "--starts",
            &starts,
            "--ignore-term",
            "--grandchild",
            &gc,
            "--stubborn-grandchild",
            &stubborn,
        ])
        .with_shutdown_timeout_secs(30);
    config.restart.policy = RestartPolicy::Always;
    config.restart.delay_ms = 100;
    config.restart.max_delay_ms = 100;
    let m = ctx.manager(&config).await;
    let pid = within(30, m.start()).await.unwrap();
    ctx.check(
        "grandchildren started",
        grandchildren_written(&[&gc, &stubborn]).await,
        true,
    );
    let ignoring = poll(10, || async { all_ignore_sigterm(&ctx, 3).then_some(()) }).await;
    ctx.check("all three ignore SIGTERM", ignoring.is_some(), true);
    ctx.check(
        "status after start",
        m.status().await.unwrap(),
        DaemonStatus::Running(pid),
    );
    let t = Instant::now();
    ctx.check_outcome("kill", &within(30, m.kill()).await, "ok");
    ctx.check(
        "kill took less than 5 s",
        t.elapsed() < Duration::from_secs(5),
        true,
    );
    ctx.check(
        "daemon processes after kill",
        ctx.daemon_processes_settled(0).await,
        0,
    );
    let r = m.status_report().await.unwrap();
    ctx.check_status("after kill", &r, "stopped", "-", "-");
    // Past the restart delay: nothing came back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let runs = std::fs::read_to_string(&starts)
        .unwrap_or_default()
        .lines()
        .count();
    ctx.check("runs after kill", runs, 1);
    ctx.check(
        "daemon processes a while after kill",
        ctx.daemon_processes().len(),
        0,
    );
    let r = m.status_report().await.unwrap();
    ctx.check_status("a while after kill", &r, "stopped", "-", "-");
    ctx.check_left_behind("a while after kill").await;
});
