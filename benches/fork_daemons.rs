//! Benchmark: start, query and stop 200 daemons on the fork backend, through
//! the library and through the tool it replaces, Debian's `start-stop-daemon`
//! (`--start --background --make-pidfile`, `--status`, `--stop --retry`), in
//! the same run; prints ratios.
//!
//! Run: `cargo bench --bench fork_daemons` (`DAEMONS=50` for a shorter run).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_lifecycle::{DaemonConfig, DaemonManager, DaemonStatus, ForkBackend};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("DAEMONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(ForkBackend::with_supervisor(env!(
        "CARGO_BIN_EXE_daemonctl"
    )));

    let t = Instant::now();
    for i in 0..n {
        let config = DaemonConfig::new("/bin/sleep", dir.path().join(format!("lib-{i}.pid")))
            .with_name(format!("bench-{i}"))
            .with_args(["1000"]);
        let m = DaemonManager::with_backend(config, backend.clone());
        let pid = m.start().await.unwrap();
        assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
        m.stop().await.unwrap();
    }
    let lib = t.elapsed();

    // start-stop-daemon double-forks: its daemons are orphans that PID 1
    // must reap, and `--stop --retry` waits until the zombie is gone. Where
    // PID 1 reaps lazily (this CI machine's init takes 1-2 s) that is all it
    // measures, so the loop runs under a prompt reaper: bash as PID 1 of a
    // fresh PID namespace. (The library's supervisor reaps its own daemon.)
    let have_ssd = Command::new("start-stop-daemon")
        .arg("--version")
        .output()
        .is_ok();
    let script = format!(
        "for i in $(seq {n}); do p={dir}/ssd-$i.pid; \
         start-stop-daemon --start --background --make-pidfile --pidfile $p --exec /bin/sleep -- 1000 || exit 1; \
         start-stop-daemon --status --pidfile $p || exit 2; \
         start-stop-daemon --stop --pidfile $p --retry TERM/10/KILL/5 --remove-pidfile >/dev/null || exit 3; \
         done",
        dir = dir.path().display()
    );
    let cli = if have_ssd {
        let namespaced =
            nix::unistd::Uid::effective().is_root() && Path::new("/usr/bin/unshare").exists();
        let mut cmd = if namespaced {
            let mut c = Command::new("/usr/bin/unshare");
            c.args(["--pid", "--fork", "--mount-proc", "bash", "-c", &script]);
            c
        } else {
            let mut c = Command::new("bash");
            c.args(["-c", &script]);
            c
        };
        let t = Instant::now();
        let status = cmd.status().expect("run the start-stop-daemon loop");
        assert!(status.success(), "start-stop-daemon loop failed: {status}");
        Some((t.elapsed(), namespaced))
    } else {
        None
    };

    let per = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
    println!("{n} daemons (/bin/sleep), start + status + stop each, fork backend:");
    println!(
        "  daemon-lifecycle (supervisor, control socket){:8.1} ms total  {:6.2} ms/daemon",
        lib.as_secs_f64() * 1000.0,
        per(lib)
    );
    match cli {
        Some((cli, namespaced)) => {
            let how = if namespaced {
                "under a reaping PID 1"
            } else {
                "under this machine's PID 1"
            };
            println!("  start-stop-daemon --start/--status/--stop   {:8.1} ms total  {:6.2} ms/daemon ({how})", cli.as_secs_f64() * 1000.0, per(cli));
            println!(
                "  ratio (start-stop-daemon / library): {:.2}x",
                cli.as_secs_f64() / lib.as_secs_f64()
            );
        }
        None => println!("  start-stop-daemon not installed: no comparison"),
    }
}
