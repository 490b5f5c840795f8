//! Twenty concurrent `daemonctl start`s of one config give exactly one
//! daemon. (Twenty library starts, on every backend:
//! `tests/scenarios/concurrency.rs`.)
mod support;

use std::process::Command;

use support::Sandbox;

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
