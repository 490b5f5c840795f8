//! Remote hosts (issue 13): the systemd backend over ssh against real
//! hosts: Debian's sshd inside the mount namespace of a private system-mode
//! systemd (`tests/support/sshd.rs`), so its `systemd-stdio-bridge` reaches
//! that systemd. Every operation, the host checks with hostile strings, and
//! the faults (a refused key, a port that never answers, a host without the
//! bridge, a bridge that dies during a start); each fault ends in a typed
//! error naming the host within its bound, and leaves no ssh behind.
mod support;

use std::path::PathBuf;
use std::time::Duration;

use daemon_lifecycle::host::{Host, SshDestination, SshHost, SshOptions};
use daemon_lifecycle::{
    BackendChoice, DaemonConfig, DaemonError, DaemonManager, DaemonStatus, Readiness,
    RemoteProblem, Scope,
};
use support::sshd::{our_ssh_clients, Sshd, Variant};
use support::systemd::SystemManager;
use support::Sandbox;

/// A system manager and one sshd in it.
fn host(variant: Variant) -> Option<(SystemManager, Sshd)> {
    let manager = SystemManager::start()?;
    let sshd = Sshd::start(&manager, variant)?;
    Some((manager, sshd))
}

fn ssh_options(sshd: &Sshd) -> SshOptions {
    SshOptions::default()
        .with_config_file(sshd.client_config())
        .with_connect_timeout(Duration::from_secs(3))
}

fn remote_config(sb: &Sandbox, sshd: &Sshd, extra: &[&str]) -> DaemonConfig {
    let mut config = sb.config(extra).with_host(format!("root@{}", sshd.alias));
    config.scope = Some(Scope::System);
    config
}

/// Waits (bounded) until no ssh client of ours is alive: what a dropped
/// [`SshHost`] must leave.
async fn no_ssh_left() -> Vec<u32> {
    poll_until(Duration::from_secs(5), || async {
        our_ssh_clients().is_empty().then_some(())
    })
    .await;
    our_ssh_clients()
}

/// Polls `f` every 20 ms until it returns `Some`, at most `bound`.
async fn poll_until<T, F, Fut>(bound: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + bound;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn problem(e: &DaemonError) -> Option<(String, RemoteProblem)> {
    match e {
        DaemonError::Remote { host, problem, .. } => Some((host.clone(), *problem)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_over_ssh() {
    let Some((manager, sshd)) = host(Variant::Plain) else {
        return;
    };
    let sb = Sandbox::new("remote-ops");
    let mut config = remote_config(&sb, &sshd, &["--ready-after", "200"]);
    config.readiness = Some(Readiness::Notify);
    let m = DaemonManager::new(config.clone()).with_ssh_options(ssh_options(&sshd));
    let pid = m
        .start()
        .await
        .unwrap_or_else(|e| panic!("start: {e}\n{}", sshd.log()));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    let report = m.status_report().await.unwrap();
    assert_eq!(report.backend.to_string(), "systemd");
    m.wait_ready(5).await.unwrap();
    let unit = format!("{}.service", sb.tag);
    assert_eq!(manager.units_named(&sb.tag).await, vec![unit.clone()]);
    let again = m.restart().await.unwrap();
    assert_ne!(again, pid);
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(again));
    m.stop().await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    m.start().await.unwrap();
    m.kill().await.unwrap();
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    m.cleanup_stale().await.unwrap();
    assert!(sb.processes().is_empty(), "left {:?}", sb.processes());
    // All of it over one ssh connection (the master) and one bridge.
    let logins = sshd.log().matches("Accepted publickey").count();
    assert_eq!(logins, 1, "{}", sshd.log());
    drop(m);
    assert_eq!(no_ssh_left().await, Vec::<u32>::new());
    assert!(manager.units_named(&sb.tag).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_with_a_host_is_systemd_there_and_fork_or_launchd_are_refused() {
    let sb = Sandbox::new("remote-choice");
    let config = sb.config(&[]).with_host("root@127.0.0.1:1");
    for choice in [BackendChoice::Fork, BackendChoice::Launchd] {
        let m = DaemonManager::with_choice(config.clone(), choice);
        match m.status().await {
            Err(DaemonError::Unsupported { operation, .. }) => assert_eq!(operation, "host"),
            other => panic!("{choice}: {other:?}"),
        }
    }
    // auto: an unreachable host is an error naming it, not the fork backend.
    let m = DaemonManager::new(config)
        .with_ssh_options(SshOptions::default().with_connect_timeout(Duration::from_secs(2)));
    let e = m.status().await.unwrap_err();
    assert_eq!(
        problem(&e),
        Some(("root@127.0.0.1:1".into(), RemoteProblem::Unreachable)),
        "{e}"
    );
    assert!(sb.processes().is_empty());
    assert_eq!(no_ssh_left().await, Vec::<u32>::new());
}

#[test]
fn a_bad_host_string_is_invalid_config() {
    let sb = Sandbox::new("remote-bad");
    for bad in ["-oProxyCommand=touch /tmp/x", "a b", "root@h;id", "h:99999"] {
        let config = sb.config(&[]).with_host(bad);
        match daemon_lifecycle::ServiceSpec::from_config(&config) {
            Err(DaemonError::InvalidConfig { field, .. }) => assert_eq!(field, "host"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_checks_run_on_the_host_and_hostile_strings_stay_strings() {
    let Some((_manager, sshd)) = host(Variant::Plain) else {
        return;
    };
    let dest = SshDestination::parse(&format!("root@{}", sshd.alias)).unwrap();
    let h = SshHost::connect(&dest, ssh_options(&sshd)).await.unwrap();
    let sb = Sandbox::new("remote-checks");
    let pwned = sb.path("pwned");
    let hostile = [
        format!("/x'; touch {}; '", pwned.display()),
        format!("/x$(touch {})", pwned.display()),
        format!("/x`touch {}`", pwned.display()),
        format!("/x\ntouch {}", pwned.display()),
        format!("/x\" ; touch {} ; \"", pwned.display()),
    ];
    let h = std::sync::Arc::new(h);
    let checks = {
        let h = h.clone();
        let testd = support::testd();
        let dir = sb.dir.path().to_owned();
        let hostile = hostile.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            out.push(format!(
                "{:?}",
                h.check_executable(&testd).map_err(|e| e.to_string())
            ));
            out.push(format!(
                "{:?}",
                h.check_directory("working_dir", &dir)
                    .map_err(|e| e.to_string())
            ));
            out.push(format!(
                "{:?}",
                h.check_user("root").map_err(|e| e.to_string())
            ));
            out.push(format!(
                "{:?}",
                h.check_group("root").map_err(|e| e.to_string())
            ));
            for s in &hostile {
                let p = PathBuf::from(s);
                out.push(match h.check_executable(&p) {
                    Err(DaemonError::BinaryNotFound { path }) if path == p => "not found".into(),
                    other => format!("{other:?}"),
                });
                out.push(match h.check_directory("working_dir", &p) {
                    Err(DaemonError::InvalidConfig { field, .. }) if field == "working_dir" => {
                        "no dir".into()
                    }
                    other => format!("{other:?}"),
                });
                out.push(match h.check_user(s) {
                    Err(DaemonError::InvalidConfig { field, .. }) if field == "user" => {
                        "no user".into()
                    }
                    other => format!("{other:?}"),
                });
            }
            out.push(match h.check_user("nosuchuser-dl") {
                Err(DaemonError::InvalidConfig { reason, .. }) => reason,
                other => format!("{other:?}"),
            });
            out
        })
        .await
        .unwrap()
    };
    assert_eq!(&checks[..4], ["Ok(())"; 4]);
    for (i, s) in hostile.iter().enumerate() {
        assert_eq!(
            &checks[4 + 3 * i..7 + 3 * i],
            ["not found", "no dir", "no user"],
            "{s:?}"
        );
    }
    assert!(
        checks
            .last()
            .unwrap()
            .contains(&format!("on root@{}", sshd.alias)),
        "{checks:?}"
    );
    assert!(!pwned.exists(), "a hostile string ran as a command");
    drop(h);
    assert_eq!(no_ssh_left().await, Vec::<u32>::new());
}

/// A fault: the operation's error names the host and the problem, comes
/// within `bound` (a bounded wait, not a timed assertion: the error must
/// come at all), and no ssh is left.
async fn fault(
    config: DaemonConfig,
    opts: SshOptions,
    want: RemoteProblem,
    bound: Duration,
) -> String {
    let host = config.host.clone().unwrap();
    let m = DaemonManager::new(config).with_ssh_options(opts);
    let e = match tokio::time::timeout(bound, m.start()).await {
        Ok(Err(e)) => e,
        Ok(Ok(pid)) => panic!("started ({pid})"),
        Err(_) => panic!("no error within {bound:?}"),
    };
    assert_eq!(problem(&e), Some((host, want)), "{e}");
    drop(m);
    assert_eq!(no_ssh_left().await, Vec::<u32>::new());
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_is_auth_refused() {
    let Some((_manager, sshd)) = host(Variant::RefusesKey) else {
        return;
    };
    let sb = Sandbox::new("remote-key");
    let said = fault(
        remote_config(&sb, &sshd, &[]),
        ssh_options(&sshd),
        RemoteProblem::AuthRefused,
        Duration::from_secs(10),
    )
    .await;
    assert!(said.contains("Permission denied"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_never_answers_is_a_connect_timeout() {
    // Accepts, then says nothing: the TCP connect succeeds, SSH never starts.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sb = Sandbox::new("remote-hang");
    let config = sb.config(&[]).with_host(format!("root@127.0.0.1:{port}"));
    let opts = SshOptions::default().with_connect_timeout(Duration::from_secs(2));
    fault(
        config,
        opts,
        RemoteProblem::ConnectTimeout,
        Duration::from_secs(10),
    )
    .await;
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_the_bridge_is_missing_it() {
    let Some((_manager, sshd)) = host(Variant::NoBridge) else {
        return;
    };
    let sb = Sandbox::new("remote-nobridge");
    let said = fault(
        remote_config(&sb, &sshd, &[]),
        ssh_options(&sshd),
        RemoteProblem::Missing,
        Duration::from_secs(10),
    )
    .await;
    assert!(said.contains("systemd-stdio-bridge"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_that_dies_during_a_start_is_connection_lost() {
    let Some((manager, sshd)) = host(Variant::Plain) else {
        return;
    };
    let sb = Sandbox::new("remote-bridge-dies");
    // READY=1 only after 30 s: the start waits for it over the bridge.
    let mut config = remote_config(&sb, &sshd, &["--ready-after", "30000"]);
    config.readiness = Some(Readiness::Notify);
    let m = DaemonManager::new(config.clone()).with_ssh_options(ssh_options(&sshd));
    let start = tokio::spawn(async move {
        let r = m.start().await;
        (r, m)
    });
    // Once the unit is activating, the bridge on the host is killed.
    let unit = format!("{}.service", sb.tag);
    let seen = poll_until(Duration::from_secs(20), || async {
        (manager.units_named(&sb.tag).await == vec![unit.clone()]).then_some(())
    })
    .await;
    assert!(seen.is_some(), "the unit never appeared");
    let bridges = sshd.bridges();
    assert_eq!(bridges.len(), 1, "{bridges:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bridges[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (result, m) = tokio::time::timeout(Duration::from_secs(15), start)
        .await
        .expect("the start did not end after its bridge died")
        .unwrap();
    let e = result.unwrap_err();
    assert_eq!(
        problem(&e),
        Some((
            format!("root@{}", sshd.alias),
            RemoteProblem::ConnectionLost
        )),
        "{e}"
    );
    drop(m);
    assert_eq!(no_ssh_left().await, Vec::<u32>::new());
    // The unit it started is still there: stopped through a new connection.
    let m = DaemonManager::new(config).with_ssh_options(ssh_options(&sshd));
    m.stop().await.unwrap();
    drop(m);
    assert_eq!(no_ssh_left().await, Vec::<u32>::new());
    poll_until(Duration::from_secs(5), || async {
        manager.units_named(&sb.tag).await.is_empty().then_some(())
    })
    .await;
    assert!(manager.units_named(&sb.tag).await.is_empty());
}
