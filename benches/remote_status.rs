//! Benchmark: the status of one unit on each of 10 remote hosts, over ssh
//! (issue 13). The hosts are 10 sshd instances inside one private
//! system-mode systemd's mount namespace (`tests/support/sshd.rs`): ten
//! logins, ten bridges, one manager behind them. Measured, per round of
//! 10 statuses: sequential and concurrent (`fleet::run`), each with a new
//! ssh connection per call (login, bridge check, bridge, status: what a
//! `daemonctl --host` process does) and over connections made once and
//! reused (what a long-lived caller holding its backends does).
//!
//! Run: `cargo bench --bench remote_status` (root, util-linux and
//! openssh-server needed, as for the tests). `HOSTS=4 ROUNDS=3` for a
//! shorter run.

#[path = "../tests/support/systemd.rs"]
#[allow(dead_code)]
mod systemd;

#[path = "../tests/support/sshd.rs"]
#[allow(dead_code)]
mod sshd;

/// What `sshd.rs` asks of the test support it comes from.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(true)
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_lifecycle::fleet::{self, Operation};
use daemon_lifecycle::host::{SshDestination, SshHost, SshOptions};
use daemon_lifecycle::{
    BackendChoice, DaemonConfig, DaemonManager, DaemonStatus, Scope, SystemdBackend,
};
use sshd::{Sshd, Variant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn per_status(d: Duration, statuses: usize) -> f64 {
    d.as_secs_f64() * 1000.0 / statuses as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let hosts_n = env("HOSTS", 10);
    let rounds = env("ROUNDS", 5);
    let Some(sm) = systemd::SystemManager::start() else {
        eprintln!("no systemd available: nothing measured");
        return;
    };
    let sshds: Vec<Sshd> = (0..hosts_n)
        .map(|_| Sshd::start(&sm, Variant::Plain).expect("sshd"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let ssh_config = dir.path().join("ssh_config");
    std::fs::write(
        &ssh_config,
        sshds.iter().map(|s| s.client_entry()).collect::<String>(),
    )
    .unwrap();
    let opts = SshOptions::default().with_config_file(&ssh_config);
    let hosts: Vec<String> = sshds.iter().map(|s| format!("root@{}", s.alias)).collect();
    let tag = format!("dlbench{}", std::process::id());
    let mut config = DaemonConfig::new("/bin/sleep", "/nonexistent/unused.pid").with_args(["1000"]);
    config.scope = Some(Scope::System);
    // One unit per host (each its own name: the hosts share one manager).
    let config_of = |i: usize| {
        config
            .clone()
            .with_name(format!("{tag}-{i}"))
            .with_host(hosts[i].clone())
    };

    // Connections made once, reused for every call.
    let mut backends = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let dest = SshDestination::parse(h).unwrap();
        let host = SshHost::connect(&dest, opts.clone()).await.unwrap();
        let backend = Arc::new(
            SystemdBackend::connect_remote(Arc::new(host), Scope::System)
                .await
                .unwrap(),
        );
        let m = DaemonManager::with_backend(config_of(i), backend.clone());
        m.start().await.unwrap();
        backends.push(m);
    }
    let statuses = hosts_n * rounds;

    let t = Instant::now();
    for _ in 0..rounds {
        for m in &backends {
            assert!(matches!(
                m.status().await.unwrap(),
                DaemonStatus::Running(_)
            ));
        }
    }
    let seq_reused = t.elapsed();

    let t = Instant::now();
    for _ in 0..rounds {
        let all = futures_util::future::join_all(backends.iter().map(|m| m.status())).await;
        assert!(all
            .iter()
            .all(|s| matches!(s, Ok(DaemonStatus::Running(_)))));
    }
    let conc_reused = t.elapsed();

    let t = Instant::now();
    for _ in 0..rounds {
        for i in 0..hosts_n {
            let m = DaemonManager::new(config_of(i)).with_ssh_options(opts.clone());
            assert!(matches!(
                m.status().await.unwrap(),
                DaemonStatus::Running(_)
            ));
        }
    }
    let seq_new = t.elapsed();

    // Each host its own config name: one fleet run per host list is the
    // same daemon everywhere, so the fleet here is one call per host, all
    // at once, as `fleet::run` does it.
    let t = Instant::now();
    for _ in 0..rounds {
        let runs = (0..hosts_n).map(|i| {
            let config = config_of(i);
            let host = vec![hosts[i].clone()];
            let opts = opts.clone();
            async move {
                fleet::run(
                    &config,
                    &host,
                    Operation::Status,
                    16,
                    BackendChoice::Auto,
                    &opts,
                )
                .await
            }
        });
        let all = futures_util::future::join_all(runs).await;
        assert!(all.iter().flatten().all(|r| r.succeeded()));
    }
    let conc_new = t.elapsed();

    for m in &backends {
        m.stop().await.unwrap();
    }
    drop(backends);
    println!(
        "status of one unit on each of {hosts_n} hosts, {rounds} rounds ({statuses} statuses):"
    );
    println!(
        "  reused connection, sequential: {:8.2} ms/status",
        per_status(seq_reused, statuses)
    );
    println!(
        "  reused connection, concurrent: {:8.2} ms/status",
        per_status(conc_reused, statuses)
    );
    println!(
        "  new ssh per call,  sequential: {:8.2} ms/status",
        per_status(seq_new, statuses)
    );
    println!(
        "  new ssh per call,  concurrent: {:8.2} ms/status",
        per_status(conc_new, statuses)
    );
    println!(
        "  a round of {hosts_n}: reused {:.1} ms sequential, {:.1} ms concurrent; new ssh {:.1} ms sequential, {:.1} ms concurrent",
        seq_reused.as_secs_f64() * 1000.0 / rounds as f64,
        conc_reused.as_secs_f64() * 1000.0 / rounds as f64,
        seq_new.as_secs_f64() * 1000.0 / rounds as f64,
        conc_new.as_secs_f64() * 1000.0 / rounds as f64,
    );
}
