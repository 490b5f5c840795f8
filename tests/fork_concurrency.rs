//! Twenty concurrent starts of one config give exactly one daemon.
mod support;

use std::process::Command;

use daemon_lifecycle::DaemonStatus;
use support::{within, Sandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_library_starts_give_one_daemon() {
    let sb = Sandbox::new("concurrent_lib");
    let config = sb.config(&[]);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let m = sb.manager(config.clone());
        tasks.push(tokio::spawn(async move { m.start().await }));
    }
    let mut pids = Vec::new();
    for t in tasks {
        pids.push(within(60, t).await.unwrap().unwrap());
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "different PIDs: {pids:?}");
    let daemons: Vec<u32> = sb
        .processes()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.starts_with(support::testd().as_os_str().as_encoded_bytes()))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(daemons, pids, "daemon processes running");
    let m = sb.manager(config);
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pids[0]));
    within(20, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[test]
fn twenty_concurrent_cli_starts_give_one_daemon() {
    let sb = Sandbox::new("concurrent_cli");
    let toml = sb.write_toml(&sb.config(&[]));
    let handles: Vec<_> = (0..20)
        .map(|_| {
            Command::new(support::daemonctl())
                .args(["--backend", "fork", "start"])
                .arg(&toml)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut pids: Vec<String> = handles
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .collect();
    pids.dedup();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let status = Command::new(support::daemonctl())
        .args(["stop"])
        .arg(&toml)
        .status()
        .unwrap();
    assert!(status.success());
    sb.assert_no_leaks();
}
