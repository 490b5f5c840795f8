//! Benchmark: start, query and stop 200 transient units on a real (private)
//! `systemd --user`, through the library (one D-Bus connection, job signals)
//! and through the tools it replaces (`systemd-run --user`, `systemctl --user
//! show`, `systemctl --user stop` in a loop), in the same run; prints ratios.
//!
//! Run: `cargo bench --bench systemd_units` (root and util-linux `unshare`
//! needed, as for the tests). `UNITS=50` for a shorter run.

#[path = "../tests/support/systemd.rs"]
#[allow(dead_code)]
mod systemd_support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_lifecycle::{
    BusTarget, DaemonConfig, DaemonManager, DaemonStatus, Scope, SystemdBackend,
};

fn run(um: &systemd_support::UserManager, args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .envs(um.env())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{args:?}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let units: usize = std::env::var("UNITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let Some(um) = systemd_support::UserManager::start().await else {
        eprintln!("no systemd available: nothing measured");
        return;
    };
    let tag = format!("dlbench{}", std::process::id());

    // The library: one backend (one connection) for all units.
    let backend = Arc::new(
        SystemdBackend::connect_to(&BusTarget::Address(um.bus_address.clone()), Scope::User)
            .await
            .unwrap(),
    );
    let t = Instant::now();
    for i in 0..units {
        let config = DaemonConfig::new("/bin/sleep", "/nonexistent/unused.pid")
            .with_name(format!("{tag}-lib-{i}"))
            .with_args(["1000"]);
        let m = DaemonManager::with_backend(config, backend.clone());
        let pid = m.start().await.unwrap();
        assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
        m.stop().await.unwrap();
    }
    let lib = t.elapsed();

    // The tools, one process per step, as a shell script would do it.
    let t = Instant::now();
    for i in 0..units {
        let unit = format!("{tag}-cli-{i}.service");
        run(
            &um,
            &[
                "systemd-run",
                "--user",
                "--quiet",
                "--collect",
                "--property=Type=exec",
                &format!("--unit={unit}"),
                "/bin/sleep",
                "1000",
            ],
        );
        let out = Command::new("systemctl")
            .args(["--user", "show", &unit, "-p", "ActiveState,MainPID"])
            .envs(um.env())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ActiveState=active"), "{text}");
        run(&um, &["systemctl", "--user", "stop", &unit]);
    }
    let cli = t.elapsed();

    let per = |d: Duration| d.as_secs_f64() * 1000.0 / units as f64;
    println!("{units} transient units, start + status + stop each, private systemd --user:");
    println!(
        "  daemon-lifecycle (zbus, JobRemoved)            {:8.1} ms total  {:6.2} ms/unit",
        lib.as_secs_f64() * 1000.0,
        per(lib)
    );
    println!(
        "  systemd-run / systemctl show / systemctl stop  {:8.1} ms total  {:6.2} ms/unit",
        cli.as_secs_f64() * 1000.0,
        per(cli)
    );
    println!(
        "  ratio (tools / library): {:.2}x",
        cli.as_secs_f64() / lib.as_secs_f64()
    );
}
