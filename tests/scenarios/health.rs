//! Keeping a daemon healthy after its start (issue 15): the watchdog (a
//! daemon that stops sending `WATCHDOG=1` is aborted with SIGABRT and the
//! restart policy applies), the liveness probe (an HTTP daemon whose
//! `/health` turns to 500 is stopped after 3 failures in a row and
//! restarted; one failure alone changes nothing), and `reload` (SIGHUP
//! exactly once, waited for until `READY=1`; a stopped daemon is
//! `NotRunning`).

use daemon_lifecycle::{DaemonStatus, Liveness, Readiness, RestartPolicy};

use super::harness::{poll, settle, words, Ctx};
use crate::support::{free_addr, within};

fn lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Polls (at most `secs`) until `path` has at least `n` lines; their count.
async fn wait_lines(path: &str, n: usize, secs: u64) -> usize {
    poll(secs, || async { (lines(path).len() >= n).then_some(()) }).await;
    lines(path).len()
}

/// A daemon that pings for 1.5 s with `watchdog_secs = 1`, then hangs.
fn hanging(ctx: &Ctx, starts: &str, policy: RestartPolicy) -> daemon_lifecycle::DaemonConfig {
    let mut config = ctx.config(&["--starts", starts, "--watchdog-stop-after", "1500"]);
    config.watchdog_secs = Some(1);
    config.restart.policy = policy;
    config.restart.delay_ms = 100;
    config
}

scenario!(watchdog_stops_pinging_is_aborted_and_restarted, |ctx| {
    let starts = ctx.out("starts");
    let config = hanging(&ctx, &starts, RestartPolicy::OnFailure);
    let m = ctx.manager(&config).await;
    let r = within(30, m.start()).await;
    if !ctx.check_outcome("start", &r, "ok") {
        return;
    }
    // While it pings, status shows the last ping.
    let pinged = poll(10, || async {
        m.status_report()
            .await
            .ok()
            .and_then(|r| r.last_watchdog_ping_ms)
    })
    .await;
    ctx.check("a ping in the status", pinged.is_some(), true);
    // It stops pinging: aborted, then started again by the restart policy.
    ctx.check("runs", wait_lines(&starts, 2, 30).await >= 2, true);
    let report = settle(&m, 10, |r| {
        matches!(r.status, DaemonStatus::Running(_)) && r.restarts >= 1
    })
    .await;
    ctx.check(
        "after the abort",
        format!(
            "{} after {} restart(s)",
            report.status.state_name(),
            report.restarts.min(1)
        ),
        "running after 1 restart(s)",
    );
    ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
    ctx.check_left_behind("after stop").await;
});

scenario!(watchdog_timeout_reads_watchdog_timeout, |ctx| {
    let starts = ctx.out("starts");
    let dump = ctx.out("dump.json");
    let mut config = hanging(&ctx, &starts, RestartPolicy::Never);
    config.args.extend(["--dump".to_owned(), dump.clone()]);
    let m = ctx.manager(&config).await;
    let r = within(30, m.start()).await;
    if !ctx.check_outcome("start", &r, "ok") {
        return;
    }
    let pid = r.unwrap();
    // As systemd sets them: the interval, and the PID it is meant for.
    let env = poll(10, || async {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&dump).ok()?).ok()?;
        Some(v["env"].clone())
    })
    .await
    .unwrap_or_default();
    ctx.check(
        "WATCHDOG_USEC and WATCHDOG_PID",
        format!("{} {}", env["WATCHDOG_USEC"], env["WATCHDOG_PID"]),
        format!("\"1000000\" \"{pid}\""),
    );
    let report = settle(&m, 20, |r| matches!(r.status, DaemonStatus::Failed(_))).await;
    ctx.check_status(
        "after the missed ping",
        &report,
        "failed",
        "watchdog timeout",
        "killed by signal 6 (SIGABRT)",
    );
    ctx.check("runs", lines(&starts).len(), 1);
    within(30, m.cleanup_stale()).await.unwrap();
    ctx.check_left_behind("after cleanup").await;
});

/// A daemon that sends `extra` (`WATCHDOG=trigger`, or a shorter
/// `WATCHDOG_USEC=` and no ping) with an hour's watchdog: ended at once,
/// `failed: watchdog timeout`, only if the backend understands the message.
async fn watchdog_message(ctx: Ctx, extra: &[&str]) {
    let starts = ctx.out("starts");
    let mut args = vec!["--starts", starts.as_str()];
    args.extend_from_slice(extra);
    let mut config = ctx.config(&args);
    config.watchdog_secs = Some(3600);
    let m = ctx.manager(&config).await;
    let r = within(30, m.start()).await;
    if !ctx.check_outcome("start", &r, "ok") {
        return;
    }
    let report = settle(&m, 20, |r| matches!(r.status, DaemonStatus::Failed(_))).await;
    ctx.check_status(
        "after the message",
        &report,
        "failed",
        "watchdog timeout",
        "killed by signal 6 (SIGABRT)",
    );
    within(30, m.cleanup_stale()).await.unwrap();
    ctx.check_left_behind("after cleanup").await;
}

// The message comes well after `start` returns on every target (over ssh a
// start takes several round trips after the daemon runs), and long before
// the hour's watchdog.
scenario!(watchdog_trigger_aborts_at_once, |ctx| {
    watchdog_message(ctx, &["--watchdog-trigger-after", "2000"]).await;
});

scenario!(watchdog_usec_changes_the_interval, |ctx| {
    // Three seconds from now on (long enough for `start` to return first,
    // over ssh too), and never a ping.
    watchdog_message(
        ctx,
        &["--watchdog-usec", "3000000", "--watchdog-stop-after", "0"],
    )
    .await;
});

/// The files of an HTTP daemon under test.
struct Http {
    config: daemon_lifecycle::DaemonConfig,
    starts: String,
    /// `PID CODE` per `/health` answer.
    health: String,
    /// The count of `/health` answers still to fail (written by the test).
    fail: String,
    url: String,
}

/// An HTTP daemon with a liveness probe of its `/health` (100 ms apart, 3
/// failures in a row). No readiness probe: the private system manager's
/// daemons live in a network namespace of their own, out of the caller's
/// reach (see the `http_readiness` row), while the probe runs beside them.
fn http_daemon(ctx: &Ctx, policy: RestartPolicy) -> Http {
    let addr = free_addr();
    let starts = ctx.out("starts");
    let health = ctx.out("health");
    let fail = ctx.out("fail");
    let mut config = ctx.config(&[
        "--http",
        &addr,
        "--health-fail-file",
        &fail,
        "--health-log",
        &health,
        "--starts",
        &starts,
    ]);
    let url = format!("http://{addr}/health");
    config.liveness = Some(
        toml::from_str::<toml::Value>(&format!(
            "kind = \"http\"\nurl = \"{url}\"\ninterval_ms = 100\ntimeout_ms = 1000\nfailures = 3"
        ))
        .unwrap()
        .try_into::<Liveness>()
        .unwrap(),
    );
    config.restart.policy = policy;
    config.restart.delay_ms = 100;
    Http {
        config,
        starts,
        health,
        fail,
        url,
    }
}

/// Waits until the probe saw `n` good answers (it runs), then makes the
/// next `count` answers fail.
async fn then_fail(ctx: &Ctx, h: &Http, count: u32) -> bool {
    let ok = wait_lines(&h.health, 2, 20).await >= 2;
    std::fs::write(&h.fail, format!("{count}\n")).unwrap();
    ctx.check("the probe runs", ok, true)
}

/// How many `/health` answers of `pid` were 500.
fn failures_of(health: &str, pid: &str) -> usize {
    lines(health)
        .iter()
        .filter(|l| l.starts_with(&format!("{pid} ")) && l.ends_with(" 500"))
        .count()
}

scenario!(liveness_failures_restart_the_daemon, |ctx| {
    let h = http_daemon(&ctx, RestartPolicy::OnFailure);
    let (starts, health) = (&h.starts, &h.health);
    let m = ctx.manager(&h.config).await;
    let r = within(30, m.start()).await;
    // Exactly three 500s, then good answers again: the run that answered
    // them is stopped (3 failures in a row) and the next one stays up.
    // (Resetting the count only once the next run started raced with that
    // run's own first probes.)
    if !ctx.check_outcome("start", &r, "ok") || !then_fail(&ctx, &h, 3).await {
        return;
    }
    ctx.check("runs", wait_lines(starts, 2, 30).await >= 2, true);
    let first = lines(starts)[0]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    ctx.check(
        "500s the first run answered before it was stopped",
        failures_of(health, &first),
        3,
    );
    let report = settle(&m, 10, |r| {
        matches!(r.status, DaemonStatus::Running(_)) && r.restarts >= 1
    })
    .await;
    ctx.check(
        "after the probe failed",
        format!(
            "{} after {} restart(s)",
            report.status.state_name(),
            report.restarts.min(1)
        ),
        "running after 1 restart(s)",
    );
    ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
    ctx.check_left_behind("after stop").await;
});

scenario!(liveness_failure_reads_liveness_probe_failed, |ctx| {
    let h = http_daemon(&ctx, RestartPolicy::Never);
    let m = ctx.manager(&h.config).await;
    let r = within(30, m.start()).await;
    if !ctx.check_outcome("start", &r, "ok") || !then_fail(&ctx, &h, 1_000_000).await {
        return;
    }
    let (starts, url) = (&h.starts, &h.url);
    let report = settle(&m, 20, |r| matches!(r.status, DaemonStatus::Failed(_))).await;
    let (state, reason, _) = words(&report);
    ctx.check(
        "after the probe failed",
        format!("{state}: {reason}"),
        format!("failed: liveness probe failed: GET {url}: status 500 Internal Server Error"),
    );
    ctx.check("runs", lines(starts).len(), 1);
    within(30, m.cleanup_stale()).await.unwrap();
    ctx.check_left_behind("after cleanup").await;
});

scenario!(one_liveness_failure_does_not_restart, |ctx| {
    let h = http_daemon(&ctx, RestartPolicy::OnFailure);
    let (starts, health) = (&h.starts, &h.health);
    let m = ctx.manager(&h.config).await;
    let r = within(30, m.start()).await;
    // One answer fails.
    if !ctx.check_outcome("start", &r, "ok") || !then_fail(&ctx, &h, 1).await {
        return;
    }
    let pid = r.unwrap();
    // The failure, then three good answers: the count went back to 0.
    poll(30, || async {
        let seen = lines(health);
        let failed_at = seen.iter().position(|l| l.ends_with(" 500"))?;
        (seen.len() >= failed_at + 4).then_some(())
    })
    .await;
    let seen = lines(health);
    ctx.check(
        "answers after the one failure",
        seen.iter()
            .skip_while(|l| !l.ends_with(" 500"))
            .skip(1)
            .take(3)
            .all(|l| l.ends_with(" 200"))
            && seen.iter().filter(|l| l.ends_with(" 200")).count() >= 5,
        true,
    );
    ctx.check("runs", lines(starts).len(), 1);
    let report = m.status_report().await.unwrap();
    ctx.check(
        "status",
        format!("{} (restarts {})", report.status, report.restarts),
        format!("{} (restarts 0)", DaemonStatus::Running(pid)),
    );
    ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
    ctx.check_left_behind("after stop").await;
});

/// A daemon with a liveness command (100 ms apart, `timeout_ms`, 2
/// failures) and no restart: `failed` with the probe's words.
async fn liveness_command(ctx: &Ctx, argv: Vec<String>, timeout_ms: u64, trigger: &str) -> String {
    let mut config = ctx.config(&[]);
    config.liveness = Some(
        toml::from_str::<toml::Value>(&format!(
            "kind = \"command\"\ninterval_ms = 100\ntimeout_ms = {timeout_ms}\nfailures = 2"
        ))
        .map(|mut v| {
            v.as_table_mut()
                .unwrap()
                .insert("argv".into(), toml::Value::try_from(argv).unwrap());
            v
        })
        .unwrap()
        .try_into::<Liveness>()
        .unwrap(),
    );
    let m = ctx.manager(&config).await;
    let r = within(30, m.start()).await;
    if !ctx.check_outcome("start", &r, "ok") {
        return String::new();
    }
    std::fs::write(trigger, "").unwrap();
    let report = settle(&m, 20, |r| matches!(r.status, DaemonStatus::Failed(_))).await;
    let (state, reason, _) = words(&report);
    within(30, m.cleanup_stale()).await.unwrap();
    // The probe's own processes are gone too.
    ctx.check_left_behind("after cleanup").await;
    format!("{state}: {reason}")
}

scenario!(a_failing_liveness_command_stops_the_daemon, |ctx| {
    let flag = ctx.out("unhealthy");
    let check = format!("test ! -e '{flag}'");
    let got = liveness_command(
        &ctx,
        vec!["/bin/sh".into(), "-c".into(), check],
        5000,
        &flag,
    )
    .await;
    ctx.check(
        "after the command failed",
        got,
        "failed: liveness probe failed: /bin/sh exited with code 1",
    );
});

scenario!(a_hanging_liveness_command_times_out, |ctx| {
    // Once the test says so (after `start` returned, which over ssh takes
    // several round trips), the probe execs testd, tagged, that never
    // exits: killed at each probe's timeout.
    let testd = crate::support::testd().to_str().unwrap().to_owned();
    let flag = ctx.out("hang");
    let script = format!(
        "test ! -e '{flag}' || exec '{testd}' --sleep-forever --tag '{}'",
        ctx.tag()
    );
    let argv = vec!["/bin/sh".into(), "-c".into(), script];
    let got = liveness_command(&ctx, argv, 200, &flag).await;
    ctx.check(
        "after the command hung",
        got,
        "failed: liveness probe failed: /bin/sh timed out",
    );
});

// Exclusive: on systemd 252 a daemon-reload of the manager while a reload
// job waits (another scenario's install) can end the job before the
// daemon's READY=1 (README, "Reload on systemd 252").
scenario!(
    reload_sends_sighup_once_and_waits_for_ready,
    exclusive,
    |ctx| {
        let log = ctx.out("reloads");
        // On SIGHUP: RELOADING=1, 500 ms of work, the line, then READY=1.
        let mut config = ctx.config(&[
            "--ready-after",
            "100",
            "--reload-log",
            &log,
            "--reload-ms",
            "500",
        ]);
        config.readiness = Some(Readiness::Notify);
        let m = ctx.manager(&config).await;
        let r = within(30, m.start()).await;
        if !ctx.check_outcome("start", &r, "ok") {
            return;
        }
        let pid = r.unwrap();
        ctx.check_outcome("reload", &within(30, m.reload()).await, "ok");
        // The line comes just before READY=1: there when reload returns.
        ctx.check("reloads seen when reload returned", lines(&log).len(), 1);
        let report = m.status_report().await.unwrap();
        ctx.check(
            "status after reload",
            &report.status,
            DaemonStatus::Running(pid),
        );
        ctx.check(
            "status_text after reload",
            format!("{:?}", report.status_text),
            r#"Some("reloaded 1")"#,
        );
        ctx.check_outcome("a second reload", &within(30, m.reload()).await, "ok");
        ctx.check("reloads after the second", lines(&log).len(), 2);
        ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
        ctx.check_left_behind("after stop").await;
    }
);

scenario!(reload_sends_the_signal, |ctx| {
    let log = ctx.out("reloads");
    let config = ctx.config(&["--reload-log", &log]);
    let m = ctx.manager(&config).await;
    let r = within(30, m.start()).await;
    if !ctx.check_outcome("start", &r, "ok") {
        return;
    }
    let pid = r.unwrap();
    // A SIGHUP before the daemon handles it would end it.
    let handled = poll(10, || async {
        std::path::Path::new(&log).exists().then_some(())
    })
    .await;
    ctx.check("the daemon handles SIGHUP", handled.is_some(), true);
    ctx.check_outcome("reload", &within(30, m.reload()).await, "ok");
    ctx.check("reloads", wait_lines(&log, 1, 10).await, 1);
    ctx.check(
        "the daemon that reloaded",
        lines(&log).first().cloned().unwrap_or_default(),
        format!("hup {pid}"),
    );
    ctx.check(
        "status after reload",
        m.status().await.unwrap(),
        DaemonStatus::Running(pid),
    );
    ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
    ctx.check_left_behind("after stop").await;
});

// Exclusive: its command has a `$` (`"$MAINPID"`), which a daemon-reload
// landing before the backend's rewrite of the transient file would read
// back escaped on systemd 252 (see `Sharing::Exclusive`); over ssh that
// moment is a round trip long.
scenario!(reload_runs_the_command, exclusive, |ctx| {
    let log = ctx.out("reloads");
    let mut config = ctx.config(&["--reload-log", &log]);
    // Run directly (no shell of ours), with MAINPID in its environment.
    config.reload =
        Some(toml::from_str(r#"argv = ["/bin/sh", "-c", "kill -s HUP \"$MAINPID\""]"#).unwrap());
    let m = ctx.manager(&config).await;
    let r = within(30, m.start()).await;
    if !ctx.check_outcome("start", &r, "ok") {
        return;
    }
    let pid = r.unwrap();
    let handled = poll(10, || async {
        std::path::Path::new(&log).exists().then_some(())
    })
    .await;
    ctx.check("the daemon handles SIGHUP", handled.is_some(), true);
    ctx.check_outcome("reload", &within(30, m.reload()).await, "ok");
    ctx.check("reloads", wait_lines(&log, 1, 10).await, 1);
    ctx.check(
        "the daemon that reloaded",
        lines(&log).first().cloned().unwrap_or_default(),
        format!("hup {pid}"),
    );
    ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
    ctx.check_left_behind("after stop").await;
});

scenario!(a_failing_reload_command_is_reload_failed, |ctx| {
    let mut config = ctx.config(&[]);
    config.reload = Some(toml::from_str(r#"argv = ["/bin/false"]"#).unwrap());
    let m = ctx.manager(&config).await;
    let r = within(30, m.start()).await;
    if !ctx.check_outcome("start", &r, "ok") {
        return;
    }
    let pid = r.unwrap();
    ctx.check_outcome("reload", &within(30, m.reload()).await, "ReloadFailed");
    ctx.check(
        "status after the failed reload",
        m.status().await.unwrap(),
        DaemonStatus::Running(pid),
    );
    ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
    ctx.check_left_behind("after stop").await;
});

scenario!(reload_of_a_stopped_daemon_is_not_running, |ctx| {
    let log = ctx.out("reloads");
    let config = ctx.config(&["--reload-log", &log]);
    let m = ctx.manager(&config).await;
    let r = within(30, m.reload()).await;
    ctx.check_outcome("reload", &r, "NotRunning");
    ctx.check(
        "the error",
        r.err().map(|e| e.to_string()).unwrap_or_default(),
        format!("{} is not running (stopped)", ctx.tag()),
    );
    // (A unit-file target keeps its installed unit until the teardown.)
    ctx.check_left_behind("after the reload").await;
});
