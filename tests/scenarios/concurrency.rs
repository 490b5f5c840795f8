//! Twenty concurrent starts of one config, each on a connection of its own
//! (as twenty callers would be), give exactly one daemon.

use std::collections::BTreeSet;

use daemon_lifecycle::DaemonStatus;

use super::harness::outcome;
use crate::support::within;

scenario!(twenty_concurrent_starts_give_one_daemon, |ctx| {
    let config = ctx.config(&[]);
    // Installed once (a unit-file target), then twenty callers start it.
    let m = ctx.manager(&config).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let m = ctx.manager_on_own_connection(&config).await;
        tasks.push(tokio::spawn(async move { within(60, m.start()).await }));
    }
    let mut outcomes = BTreeSet::new();
    let mut pids = BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        outcomes.insert(outcome(&r));
        if let Ok(pid) = r {
            pids.insert(pid);
        }
    }
    ctx.check("start outcomes", format!("{outcomes:?}"), r#"{"ok"}"#);
    ctx.check("distinct PIDs returned", pids.len(), 1);
    ctx.check("daemon processes", ctx.daemon_processes_settled(1).await, 1);
    if let Some(pid) = pids.first() {
        ctx.check(
            "status",
            m.status().await.unwrap(),
            DaemonStatus::Running(*pid),
        );
    }
    ctx.check_outcome("stop", &within(30, m.stop()).await, "ok");
    ctx.check(
        "daemon processes after stop",
        ctx.daemon_processes_settled(0).await,
        0,
    );
    ctx.check_left_behind("after stop").await;
});
