//! Start, status, stop on the fork backend with a real daemon process.
mod support;

use daemon_lifecycle::{BackendKind, DaemonStatus};
use support::{alive, within, Sandbox};

#[tokio::test]
async fn start_status_stop() {
    let sb = Sandbox::new("start_stop");
    let dump = sb.path("dump.json");
    let config = sb
        .config(&["--dump", dump.to_str().unwrap()])
        .with_env("GREETING", "hello world")
        .with_working_dir(sb.dir.path());
    let m = sb.manager(config.clone());

    let pid = within(20, m.start()).await.unwrap();
    assert!(alive(pid));
    assert_eq!(
        within(5, m.status()).await.unwrap(),
        DaemonStatus::Running(pid)
    );
    assert_eq!(m.get_pid().await.unwrap(), Some(pid));
    assert!(m.is_running().await);
    assert_eq!(m.backend_kind().await.unwrap(), BackendKind::Fork);
    m.wait_ready(5).await.unwrap();

    // The PID file is the seed's format; the identity record sits beside it.
    let pid_file = sb.path("daemon.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{pid}\n")
    );
    assert!(sb.path("daemon.pid.identity").exists());

    // The daemon got a clean environment plus ours, in its own session.
    let dump = support::eventually(10, || async { std::fs::read_to_string(&dump).ok() }).await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["env"]["GREETING"], "hello world");
    assert!(dump["env"]["PATH"].as_str().unwrap().contains("/usr/bin"));
    assert!(
        dump["env"].get("CARGO").is_none(),
        "caller's environment leaked: {dump}"
    );
    assert_eq!(dump["cwd"], sb.dir.path().to_str().unwrap());
    assert_eq!(dump["pid"], pid);
    assert_eq!(dump["pgid"], pid, "daemon leads its own process group");
    assert_eq!(dump["sid"], pid, "daemon leads its own session");

    // Starting again is idempotent.
    assert_eq!(within(20, m.start()).await.unwrap(), pid);

    within(20, m.stop()).await.unwrap();
    assert!(!alive(pid));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    assert_eq!(m.get_pid().await.unwrap(), None);
    assert!(!pid_file.exists());
    // A stopped daemon leaves nothing but what the test wrote itself.
    let mut left: Vec<_> = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["dump.json"]);

    // Stopping a stopped daemon is fine.
    within(20, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn restart_gives_a_new_pid_and_kill_is_immediate() {
    let sb = Sandbox::new("restart_kill");
    let m = sb.manager(sb.config(&["--ignore-term"]).with_shutdown_timeout_secs(1));
    let first = within(20, m.start()).await.unwrap();
    let second = within(20, m.restart()).await.unwrap();
    assert_ne!(first, second);
    assert!(!alive(first));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(second));

    // SIGKILL at once: with a 30 s shutdown timeout, none of it is waited
    // (the bound is loose on purpose: it checks behaviour, not speed).
    let m = sb.manager(sb.config(&["--ignore-term"]).with_shutdown_timeout_secs(30));
    let t = std::time::Instant::now();
    within(20, m.kill()).await.unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    assert!(!alive(second));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();
}
