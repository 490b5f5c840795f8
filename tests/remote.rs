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
use support::sshd::{ssh_clients_with, Sshd, Variant};
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

/// Waits (bounded) until no ssh client of this test is alive (found by
/// `needle` in its command line: its ssh config file, or `-p PORT`): what
/// a dropped [`SshHost`] must leave. Other tests run ssh meanwhile.
async fn no_ssh_left(needle: &str) -> Vec<u32> {
    poll_until(Duration::from_secs(5), || async {
        ssh_clients_with(needle).is_empty().then_some(())
    })
    .await;
    ssh_clients_with(needle)
}

/// The needle of [`no_ssh_left`] for an sshd's client config.
fn needle(sshd: &Sshd) -> String {
    sshd.client_config().to_str().unwrap().to_owned()
}

/// The needle of [`no_ssh_left`] for a port given in `host`.
fn port_needle(port: u16) -> String {
    format!("-p\0{port}\0")
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
    assert_eq!(no_ssh_left(&needle(&sshd)).await, Vec::<u32>::new());
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
    // A backend handed over must drive the config's host: a local one is refused.
    let m =
        DaemonManager::with_backend(config.clone(), std::sync::Arc::new(support::fork_backend()));
    match m.start().await {
        Err(DaemonError::Unsupported { operation, .. }) => assert_eq!(operation, "host"),
        other => panic!("{other:?}"),
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
    assert_eq!(no_ssh_left(&port_needle(1)).await, Vec::<u32>::new());
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
    let dir = h.control_dir().to_owned();
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    }
    let master = h.master_pid().unwrap();
    assert!(support::alive(master));
    // The leak check sees a live connection (it is not vacuous).
    assert_eq!(ssh_clients_with(&needle(&sshd)), vec![master]);
    drop(h);
    assert_eq!(no_ssh_left(&needle(&sshd)).await, Vec::<u32>::new());
    assert!(!support::alive(master), "the ssh master outlived its host");
    assert!(!dir.exists(), "the control directory is left");
}

/// A fault: the operation's error names the host and the problem, comes
/// within `bound` (a bounded wait, not a timed assertion: the error must
/// come at all), and no ssh is left.
async fn fault(
    config: DaemonConfig,
    opts: SshOptions,
    needle: String,
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
    assert_eq!(no_ssh_left(&needle).await, Vec::<u32>::new());
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
        needle(&sshd),
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
        port_needle(port),
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
        needle(&sshd),
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
    assert_eq!(no_ssh_left(&needle(&sshd)).await, Vec::<u32>::new());
    // The unit it started is still there: stopped through a new connection.
    let m = DaemonManager::new(config).with_ssh_options(ssh_options(&sshd));
    m.stop().await.unwrap();
    drop(m);
    assert_eq!(no_ssh_left(&needle(&sshd)).await, Vec::<u32>::new());
    poll_until(Duration::from_secs(5), || async {
        manager.units_named(&sb.tag).await.is_empty().then_some(())
    })
    .await;
    assert!(manager.units_named(&sb.tag).await.is_empty());
}

/// An ssh config with the entries of all `hosts`.
fn fleet_config(dir: &std::path::Path, hosts: &[&Sshd]) -> PathBuf {
    let path = dir.join("ssh_config");
    let text: String = hosts.iter().map(|h| h.client_entry()).collect();
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_runs_everywhere_at_once_and_a_hanging_host_delays_no_other() {
    // Two hosts: two private system managers, each with its own sshd.
    let Some((manager_a, sshd_a)) = host(Variant::Plain) else {
        return;
    };
    let Some((manager_b, sshd_b)) = host(Variant::Plain) else {
        return;
    };
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_host = format!("root@127.0.0.1:{}", hang.local_addr().unwrap().port());
    let sb = Sandbox::new("remote-fleet");
    let ssh_config = fleet_config(sb.dir.path(), &[&sshd_a, &sshd_b]);
    let (a, b) = (
        format!("root@{}", sshd_a.alias),
        format!("root@{}", sshd_b.alias),
    );
    let mut config = sb.config(&[]);
    config.scope = Some(Scope::System);
    // The hanging host's bound (8 s + 1) is far beyond what a real host's
    // start takes even on a loaded machine, so the order below is the
    // fleet's doing, not a race.
    let opts = SshOptions::default()
        .with_config_file(&ssh_config)
        .with_connect_timeout(Duration::from_secs(8));
    // The hanging host is listed before b: b's result still comes first.
    let hosts = vec![a.clone(), hang_host.clone(), b.clone()];
    let results = tokio::time::timeout(
        Duration::from_secs(60),
        daemon_lifecycle::fleet::run(
            &config,
            &hosts,
            daemon_lifecycle::fleet::Operation::Start,
            16,
            BackendChoice::Auto,
            &opts,
        ),
    )
    .await
    .expect("the fleet did not finish");
    let order: Vec<&str> = results.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(order.len(), 3);
    assert_eq!(
        order[2], hang_host,
        "the hanging host is not last: {order:?}"
    );
    for r in &results[..2] {
        assert!(
            matches!(r.result, Ok(daemon_lifecycle::fleet::Outcome::Pid(_))),
            "{}: {:?}",
            r.host,
            r.result
        );
        assert!(r.finished_after < results[2].finished_after);
    }
    assert_eq!(
        results[2].result.as_ref().err().and_then(problem),
        Some((hang_host.clone(), RemoteProblem::ConnectTimeout))
    );
    let unit = format!("{}.service", sb.tag);
    assert_eq!(manager_a.units_named(&sb.tag).await, vec![unit.clone()]);
    assert_eq!(manager_b.units_named(&sb.tag).await, vec![unit.clone()]);
    // The bound holds: one at a time, b waits for the hanging host.
    let results = daemon_lifecycle::fleet::run(
        &config,
        &hosts,
        daemon_lifecycle::fleet::Operation::Status,
        1,
        BackendChoice::Auto,
        &opts,
    )
    .await;
    let order: Vec<&str> = results.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(order, [a.as_str(), hang_host.as_str(), b.as_str()]);
    assert!(results[0].succeeded() && !results[1].succeeded() && results[2].succeeded());
    assert_eq!(
        no_ssh_left(ssh_config.to_str().unwrap()).await,
        Vec::<u32>::new()
    );

    // The CLI: one JSON object per host; exit 0 only if all succeeded.
    let toml = sb.write_toml(&config);
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(support::daemonctl());
        cmd.arg("--ssh-config")
            .arg(&ssh_config)
            .args(["--connect-timeout", "8"])
            .args(args)
            .arg(&toml)
            .stdin(std::process::Stdio::null());
        support::output_within(&mut cmd, 60)
    };
    let out = cli(&["--hosts", &format!("{a},{b}"), "status", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out.status.code(), Some(0), "{lines:?}");
    let mut seen: Vec<&str> = lines.iter().map(|l| l["host"].as_str().unwrap()).collect();
    seen.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(seen, want);
    for l in &lines {
        assert_eq!(l["ok"], true, "{l}");
        assert_eq!(l["status"]["state"], "running", "{l}");
    }
    let out = cli(&["--hosts", &format!("{a},{hang_host},{b}"), "stop", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[2]["host"], hang_host.as_str(), "{text}");
    assert_eq!(lines[2]["problem"], "connect-timeout", "{text}");
    assert!(lines[..2].iter().all(|l| l["ok"] == true), "{text}");
    // The table, in the order given.
    let out = cli(&["--hosts", &format!("{b},{a}"), "status"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stopped everywhere: not all running"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("HOST"), "{text}");
    assert!(rows[1].starts_with(&b) && rows[2].starts_with(&a), "{text}");
    assert!(rows[1].contains("stopped"), "{text}");
    // One host, --host.
    let out = cli(&["--host", &a, "start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = cli(&["--host", &a, "status"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("running (PID {pid})")));
    let out = cli(&["--host", &a, "--backend", "fork", "status"]);
    assert_eq!(out.status.code(), Some(4), "status's code for an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("only the systemd backend"));
    let out = cli(&["--host", &a, "stop"]);
    assert!(out.status.success());
    let needle = ssh_config.to_str().unwrap();
    assert_eq!(
        support::sshd::ssh_clients_with(needle),
        Vec::<u32>::new(),
        "a daemonctl left ssh behind"
    );
    drop(hang);
    assert_eq!(
        no_ssh_left(ssh_config.to_str().unwrap()).await,
        Vec::<u32>::new()
    );
    assert!(manager_a.units_named(&sb.tag).await.is_empty());
    assert!(manager_b.units_named(&sb.tag).await.is_empty());
}

async fn remote_backend(sshd: &Sshd) -> daemon_lifecycle::SystemdBackend {
    let dest = SshDestination::parse(&format!("root@{}", sshd.alias)).unwrap();
    let host = SshHost::connect(&dest, ssh_options(sshd)).await.unwrap();
    daemon_lifecycle::SystemdBackend::connect_remote(std::sync::Arc::new(host), Scope::System)
        .await
        .unwrap()
}

/// Issue 8 over ssh: the transient file on the remote host is rewritten
/// there, so argv and environment survive a daemon-reload byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_transient_unit_survives_daemon_reload() {
    let Some((manager, sshd)) = host(Variant::Plain) else {
        return;
    };
    let sb = Sandbox::new("remote-reload");
    let dump = sb.path("dump.json");
    let mut config = remote_config(&sb, &sshd, &["--dump", dump.to_str().unwrap(), "--"]);
    config
        .args
        .extend(["$HOME ${HOME} $$", ";", "a;b", "100% %n", "q\"uote\\'s"].map(String::from));
    config = config.with_env("HOSTILE", "v$1 ${X} %n \"q\" ; '");
    config.restart.policy = daemon_lifecycle::RestartPolicy::Always;
    config.restart.delay_ms = 100;
    let unit = daemon_lifecycle::UnitSpec::from_config(&config, Scope::System)
        .unwrap()
        .unit;
    let backend = remote_backend(&sshd).await;
    let m = DaemonManager::with_backend(config.clone(), std::sync::Arc::new(backend));
    let pid = m.start().await.unwrap();
    let read = || async {
        let text = poll_until(Duration::from_secs(10), || async {
            std::fs::read_to_string(&dump).ok()
        })
        .await
        .expect("no dump");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let check = |v: &serde_json::Value, how: &str| {
        let argv: Vec<String> = serde_json::from_value(v["argv"].clone()).unwrap();
        assert_eq!(argv[1..], config.args[..], "{how}: argv differs");
        assert_eq!(
            v["env"]["HOSTILE"], config.env["HOSTILE"],
            "{how}: env differs"
        );
    };
    check(&read().await, "before the reload");
    std::fs::remove_file(&dump).unwrap();
    manager.manager_call("Reload", &()).await;
    manager
        .manager_call("KillUnit", &(unit.as_str(), "main", 9i32))
        .await;
    let new = poll_until(Duration::from_secs(20), || async {
        match m.status().await {
            Ok(DaemonStatus::Running(p)) if p != pid => Some(p),
            _ => None,
        }
    })
    .await
    .expect("not restarted");
    assert_ne!(new, pid);
    check(&read().await, "restarted after the reload");
    m.stop().await.unwrap();
    drop(m);
    assert_eq!(no_ssh_left(&needle(&sshd)).await, Vec::<u32>::new());
    sb.assert_no_leaks();
}

/// install writes the unit on the host (atomically, never through a
/// link), reloads and enables there; drift reads the host's file;
/// uninstall takes it all back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_and_uninstall_on_a_remote_host() {
    let Some((manager, sshd)) = host(Variant::Plain) else {
        return;
    };
    let sb = Sandbox::new("remote-install");
    let config = remote_config(&sb, &sshd, &[]);
    let spec = daemon_lifecycle::ServiceSpec::from_config(&config).unwrap();
    let unit = format!("{}.service", sb.tag);
    let backend = std::sync::Arc::new(remote_backend(&sshd).await);
    // The host's /etc/systemd/system is the harness's unit_dir here.
    assert!(backend.install(&spec, None, true).await.unwrap());
    let file = manager.unit_dir.join(&unit);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("X-DaemonLifecycle="), "{text}");
    assert!(manager
        .unit_dir
        .join("multi-user.target.wants")
        .join(&unit)
        .symlink_metadata()
        .is_ok());
    // Unchanged: nothing written.
    assert!(!backend.install(&spec, None, true).await.unwrap());
    let m = DaemonManager::with_backend(config.clone(), backend.clone());
    let pid = m.start().await.unwrap();
    let report = m.status_report().await.unwrap();
    assert_eq!(report.status, DaemonStatus::Running(pid));
    assert_eq!(report.drift, Some(false));
    let changed = config
        .clone()
        .with_args(["--tag", sb.tag.as_str(), "--other"]);
    let m2 = DaemonManager::with_backend(changed, backend.clone());
    assert_eq!(m2.status_report().await.unwrap().drift, Some(true));
    // A symlink where the unit would go is an alias: refused, untouched.
    let alias_config = remote_config(&sb, &sshd, &[]).with_name(format!("{}-alias", sb.tag));
    let alias_spec = daemon_lifecycle::ServiceSpec::from_config(&alias_config).unwrap();
    let alias = manager.unit_dir.join(format!("{}-alias.service", sb.tag));
    std::os::unix::fs::symlink(&file, &alias).unwrap();
    match backend.install(&alias_spec, None, false).await {
        Err(DaemonError::NotOwned { reason, .. }) => {
            assert!(reason.contains("symlink"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(std::fs::symlink_metadata(&alias).unwrap().is_symlink());
    std::fs::remove_file(&alias).unwrap();
    // A unit file that is not ours is refused.
    let foreign_config = remote_config(&sb, &sshd, &[]).with_name(format!("{}-foreign", sb.tag));
    let foreign_spec = daemon_lifecycle::ServiceSpec::from_config(&foreign_config).unwrap();
    let foreign = manager.unit_dir.join(format!("{}-foreign.service", sb.tag));
    std::fs::write(&foreign, "[Service]\nExecStart=/bin/sleep 1000\n").unwrap();
    assert!(matches!(
        backend.install(&foreign_spec, None, false).await,
        Err(DaemonError::NotOwned { .. })
    ));
    assert!(matches!(
        backend.uninstall(&foreign_spec, None).await,
        Err(DaemonError::NotOwned { .. })
    ));
    // The unit it defines is not ours either: running, it is not started,
    // stopped or killed over ssh (the ownership checks hold remotely).
    let foreign_unit = format!("{}-foreign.service", sb.tag);
    manager
        .manager_call("StartUnit", &(foreign_unit.as_str(), "replace"))
        .await;
    let foreign_m = DaemonManager::with_backend(foreign_config.clone(), backend.clone());
    for (op, r) in [
        ("start", foreign_m.start().await.map(drop)),
        ("stop", foreign_m.stop().await),
        ("kill", foreign_m.kill().await),
    ] {
        assert!(
            matches!(r, Err(DaemonError::NotOwned { .. })),
            "{op}: {r:?}"
        );
    }
    assert_eq!(
        manager.units_named(&format!("{}-foreign", sb.tag)).await,
        vec![foreign_unit.clone()]
    );
    drop(foreign_m);
    manager
        .manager_call("StopUnit", &(foreign_unit.as_str(), "replace"))
        .await;
    assert_eq!(
        std::fs::read_to_string(&foreign).unwrap(),
        "[Service]\nExecStart=/bin/sleep 1000\n"
    );
    std::fs::remove_file(&foreign).unwrap();
    // A hostile unit_dir is one path, not a command.
    let pwned = sb.path("pwned");
    let hostile = PathBuf::from(format!("/nonexistent'; touch {}; '", pwned.display()));
    assert!(backend.install(&spec, Some(&hostile), false).await.is_err());
    assert!(!pwned.exists());
    // Uninstall: stopped, disabled, removed.
    assert!(backend.uninstall(&spec, None).await.unwrap());
    assert!(!file.exists());
    assert!(manager
        .unit_dir
        .join("multi-user.target.wants")
        .join(&unit)
        .symlink_metadata()
        .is_err());
    assert!(!backend.uninstall(&spec, None).await.unwrap());
    assert!(sb.processes().is_empty());
    drop((m, m2, backend));
    assert_eq!(no_ssh_left(&needle(&sshd)).await, Vec::<u32>::new());
    poll_until(Duration::from_secs(5), || async {
        manager.units_named(&sb.tag).await.is_empty().then_some(())
    })
    .await;
    assert!(manager.units_named(&sb.tag).await.is_empty());
}

/// ssh expands `%` in ControlPath and splits options at blanks: a private
/// directory under such a path still works (a `daemonctl` child, whose
/// `$XDG_RUNTIME_DIR` is odd). And a user's ssh config that sets a
/// `RemoteCommand`, a forwarding and agent forwarding changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_odd_runtime_directory_still_holds_the_control_socket() {
    let Some((_manager, sshd)) = host(Variant::Plain) else {
        return;
    };
    let sb = Sandbox::new("remote-odd");
    let odd = sb.path("a %h %% b");
    std::fs::create_dir(&odd).unwrap();
    let config = remote_config(&sb, &sshd, &[]);
    let toml = sb.write_toml(&config);
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let user_config = sb.path("user_ssh_config");
    std::fs::write(
        &user_config,
        format!(
            "{}  RemoteCommand echo hijacked\n  ForwardAgent yes\n  LocalForward 127.0.0.1:{free} 127.0.0.1:9\n",
            sshd.client_entry()
        ),
    )
    .unwrap();
    let out = support::output_within(
        std::process::Command::new(support::daemonctl())
            .arg("--ssh-config")
            .arg(&user_config)
            .arg("status")
            .arg(&toml)
            .env("XDG_RUNTIME_DIR", &odd)
            .stdin(std::process::Stdio::null()),
        30,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stopped [systemd]"), "{stdout}");
    // Its private directory was there, and is gone.
    assert_eq!(std::fs::read_dir(&odd).unwrap().count(), 0);
    assert_eq!(
        no_ssh_left(user_config.to_str().unwrap()).await,
        Vec::<u32>::new()
    );
}

/// A host with the bridge but no systemd (sshd in this machine's own
/// namespaces, where no manager and no system bus run): `Missing`, naming
/// the bus, within the bound, nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_systemd_is_missing_it() {
    let Some((_manager, sshd)) = host(Variant::NoSystemd) else {
        return;
    };
    let sb = Sandbox::new("remote-nosystemd");
    let said = fault(
        remote_config(&sb, &sshd, &[]),
        ssh_options(&sshd),
        needle(&sshd),
        RemoteProblem::Missing,
        Duration::from_secs(15),
    )
    .await;
    assert!(
        said.contains("system bus") || said.contains("systemd system manager"),
        "{said}"
    );
}

/// A `daemonctl` killed with SIGKILL while its start waits for `READY=1`
/// leaves no ssh behind (the master and the bridge die with it). What it
/// cannot remove is its private directory, with the dead control socket
/// (as any temp directory of a killed process): its `$XDG_RUNTIME_DIR` is
/// the sandbox's here, so that goes with the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_caller_leaves_no_ssh_behind() {
    let Some((manager, sshd)) = host(Variant::Plain) else {
        return;
    };
    let sb = Sandbox::new("remote-killed");
    let mut config = remote_config(&sb, &sshd, &["--ready-after", "30000"]);
    config.readiness = Some(Readiness::Notify);
    let toml = sb.write_toml(&config);
    let ssh_config = sshd.client_config();
    let runtime = sb.path("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let mut child = std::process::Command::new(support::daemonctl())
        .arg("--ssh-config")
        .arg(&ssh_config)
        .arg("start")
        .arg(&toml)
        .env("XDG_RUNTIME_DIR", &runtime)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seen = poll_until(Duration::from_secs(20), || async {
        (manager.units_named(&sb.tag).await.len() == 1).then_some(())
    })
    .await;
    assert!(seen.is_some(), "the unit never appeared");
    let needle = ssh_config.to_str().unwrap();
    assert!(
        ssh_clients_with(needle).len() >= 2,
        "no master and bridge to kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(no_ssh_left(needle).await, Vec::<u32>::new());
    let left: Vec<_> = std::fs::read_dir(&runtime).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "its private directory");
    assert!(left[0].file_name().to_string_lossy().starts_with("dl-ssh-"));
    // The unit it left starting is stopped over a new connection.
    let m = DaemonManager::new(config).with_ssh_options(ssh_options(&sshd));
    m.stop().await.unwrap();
    drop(m);
    assert_eq!(no_ssh_left(needle).await, Vec::<u32>::new());
    poll_until(Duration::from_secs(5), || async {
        manager.units_named(&sb.tag).await.is_empty().then_some(())
    })
    .await;
    assert!(manager.units_named(&sb.tag).await.is_empty());
}
