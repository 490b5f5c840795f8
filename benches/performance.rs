//! The performance table of issue 12, every row in one run: ours, the peer
//! tool or the floor, and the ratio, each as median (min–max), with the
//! target and whether it holds. Where systemd is involved it is a private
//! `systemd --user` (tests/support/systemd.rs), reached as a user's tools
//! reach theirs (`XDG_RUNTIME_DIR`, `DBUS_SESSION_BUS_ADDRESS`): the library
//! and `daemonctl` through the manager's private socket, as `systemctl` does.
//!
//! Run: `cargo bench --bench performance` (root and util-linux `unshare`, as
//! for the tests; `cargo build --release --examples` first for the notify
//! row, which needs `testd`). Knobs (environment): `RUNS` (samples per
//! one-at-a-time row, 30), `STATUS_RUNS` (library status samples, 300),
//! `BATCH` (units started together, 200), `SCALE_FORK` (1000) and
//! `SCALE_UNITS` (500), each also measured at a tenth for the scale rows.
//! `SCALE_FORK=200 SCALE_UNITS=100 RUNS=10` is a quick look.
//!
//! One process per CLI operation, as a script uses the tools; samples of
//! ours and of the peer alternate, so a busy machine slows both alike. The
//! ratio is `peer ÷ ours` for "faster than" rows, `ours ÷ floor` for the
//! floor rows; its min and max are over the pairs of samples.

#[path = "../tests/support/systemd.rs"]
#[allow(dead_code)]
mod systemd_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use daemon_lifecycle::{
    Backend, DaemonConfig, DaemonManager, DaemonStatus, ForkBackend, Readiness, Scope,
    SystemdBackend,
};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What a row must show.
#[derive(Clone, Copy)]
enum Target {
    /// peer ÷ ours at least this.
    Faster(f64),
    /// ours at most this (in the row's unit).
    AtMost(f64),
    /// ours ÷ floor at most this.
    WithinFloor(f64),
    /// ours (at the full size) ÷ peer (at a tenth) at most this.
    Flat(f64),
    /// Shown for context.
    None,
}

struct Row {
    op: String,
    unit: &'static str,
    ours: Vec<f64>,
    peer: Option<Vec<f64>>,
    target: Target,
    command: String,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else if x >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn spread(v: &[f64], unit: &str) -> String {
    format!(
        "{} {unit} ({}–{})",
        fmt_num(median(v)),
        fmt_num(min(v)),
        fmt_num(max(v))
    )
}

impl Row {
    /// The ratio the target speaks of: per pair of samples where there are
    /// pairs, else of the medians.
    fn ratios(&self) -> Option<Vec<f64>> {
        let peer = self.peer.as_ref()?;
        let r = |o: f64, p: f64| match self.target {
            Target::Faster(_) | Target::None => p / o,
            _ => o / p,
        };
        Some(if peer.len() == self.ours.len() {
            self.ours.iter().zip(peer).map(|(o, p)| r(*o, *p)).collect()
        } else {
            vec![r(median(&self.ours), median(peer))]
        })
    }

    fn verdict(&self) -> (String, &'static str) {
        let ratio = self.ratios().map(|r| median(&r));
        let m = median(&self.ours);
        match (self.target, ratio) {
            (Target::Faster(x), Some(r)) => (format!("≥ {}x", fmt_num(x)), yes(r >= x)),
            (Target::AtMost(x), _) => (format!("≤ {} {}", fmt_num(x), self.unit), yes(m <= x)),
            (Target::WithinFloor(x), Some(r)) => (format!("≤ {x}x floor"), yes(r <= x)),
            (Target::Flat(x), Some(r)) => (format!("≤ {x}x of a tenth"), yes(r <= x)),
            _ => ("—".into(), ""),
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

fn print_table(rows: &[Row]) {
    println!("| operation | ours | peer / floor | ratio | target | holds | command |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        let peer = row
            .peer
            .as_ref()
            .map_or("—".to_owned(), |p| spread(p, row.unit));
        let ratio = match row.ratios() {
            Some(r) if r.len() > 1 => format!(
                "{}x ({}–{})",
                fmt_num(median(&r)),
                fmt_num(min(&r)),
                fmt_num(max(&r))
            ),
            Some(r) => format!("{}x", fmt_num(median(&r))),
            None => "—".into(),
        };
        let (target, holds) = row.verdict();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.op,
            spread(&row.ours, row.unit),
            peer,
            ratio,
            target,
            holds,
            row.command
        );
    }
}

/// Runs `cmd` (stdout and stderr to /dev/null); its wall time and peak RSS
/// (KiB, from wait4). Panics if it fails: a failed step measures nothing.
fn timed(cmd: &mut Command) -> (f64, u64) {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let t = Instant::now();
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = ms(t.elapsed());
    assert_eq!(r, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed ({status})"
    );
    std::mem::forget(child); // reaped above
    (elapsed, usage.ru_maxrss as u64)
}

fn write_config(path: &Path, name: &str, pid_file: &Path) {
    std::fs::write(
        path,
        format!(
            "name = \"{name}\"\nbinary_path = \"/bin/sleep\"\nargs = [\"1000\"]\npid_file = \"{}\"\nshutdown_timeout_secs = 5\n",
            pid_file.display()
        ),
    )
    .unwrap();
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// `testd`, the example daemon (built by `cargo build --release --examples`).
fn testd() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let p = dir.join("examples/testd");
    p.exists().then_some(p)
}

/// systemd's own time for the jobs, with nothing of ours around them: a
/// bare zbus connection to the bus, `StartTransientUnit` (Type=exec,
/// `/bin/sleep 1000`) and `StopUnit`, each timed from the call to its
/// `JobRemoved`. What every start and stop, ours and the tools', waits for.
async fn raw_jobs(bus: &str, tag: &str, n: usize) -> (Vec<f64>, Vec<f64>) {
    use futures_util::StreamExt;
    use zbus::zvariant::{OwnedObjectPath, Value};
    const DEST: &str = "org.freedesktop.systemd1";
    const PATH: &str = "/org/freedesktop/systemd1";
    const MANAGER: &str = "org.freedesktop.systemd1.Manager";
    let conn = zbus::connection::Builder::address(bus)
        .unwrap()
        .build()
        .await
        .unwrap();
    conn.call_method(Some(DEST), PATH, Some(MANAGER), "Subscribe", &())
        .await
        .unwrap();
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(MANAGER)
        .unwrap()
        .member("JobRemoved")
        .unwrap()
        .build();
    let mut signals = zbus::MessageStream::for_match_rule(rule, &conn, Some(4096))
        .await
        .unwrap();
    let mut wait = async |job: OwnedObjectPath| {
        while let Some(Ok(msg)) = signals.next().await {
            if let Ok((_, path, _, _)) = msg
                .body()
                .deserialize::<(u32, OwnedObjectPath, String, String)>()
            {
                if path == job {
                    return;
                }
            }
        }
    };
    let (mut starts, mut stops) = (vec![], vec![]);
    for i in 0..n {
        let unit = format!("{tag}-raw{i}.service");
        let exec = vec![(
            "/bin/sleep".to_owned(),
            vec!["/bin/sleep".to_owned(), "1000".to_owned()],
            false,
        )];
        let props: Vec<(&str, Value<'_>)> = vec![
            ("Type", Value::from("exec")),
            ("ExecStart", Value::from(exec)),
        ];
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let t = Instant::now();
        let reply = conn
            .call_method(
                Some(DEST),
                PATH,
                Some(MANAGER),
                "StartTransientUnit",
                &(unit.as_str(), "fail", props, aux),
            )
            .await
            .unwrap();
        wait(reply.body().deserialize().unwrap()).await;
        starts.push(ms(t.elapsed()));
        let t = Instant::now();
        let reply = conn
            .call_method(
                Some(DEST),
                PATH,
                Some(MANAGER),
                "StopUnit",
                &(unit.as_str(), "replace"),
            )
            .await
            .unwrap();
        wait(reply.body().deserialize().unwrap()).await;
        stops.push(ms(t.elapsed()));
    }
    (starts, stops)
}

/// VmRSS and Pss (MiB) of the supervisor named in the identity record.
fn supervisor_memory(identity: &Path) -> (f64, f64) {
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(identity).unwrap()).unwrap();
    let sup = record["supervisor"]["pid"].as_u64().unwrap();
    let kib = |file: &str, key: &str| -> f64 {
        std::fs::read_to_string(format!("/proc/{sup}/{file}"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (
        kib("status", "VmRSS:") / 1024.0,
        kib("smaps_rollup", "Pss:") / 1024.0,
    )
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    raise_fd_limit();
    let runs = knob("RUNS", 30);
    let status_runs = knob("STATUS_RUNS", 300);
    let batch = knob("BATCH", 200);
    let scale_fork = knob("SCALE_FORK", 1000);
    let scale_units = knob("SCALE_UNITS", 500);
    let daemonctl = env!("CARGO_BIN_EXE_daemonctl");
    let dir = tempfile::Builder::new()
        .prefix("dl-perf-")
        .tempdir()
        .unwrap();
    let tag = format!("dlperf{}", std::process::id());
    let load_before = loadavg();
    let t_all = Instant::now();
    let mut rows: Vec<Row> = Vec::new();

    let Some(um) = systemd_support::UserManager::start().await else {
        eprintln!("no systemd available: nothing measured");
        return;
    };
    // As a user's shell has it: our tools and the library find this manager
    // (and its private socket) the usual way.
    for (k, v) in um.env() {
        std::env::set_var(k, v);
    }
    let sd = |args: &[&str]| {
        let mut c = Command::new(daemonctl);
        c.args(["--backend", "systemd", "--scope", "user"])
            .args(args);
        c
    };

    // ---- CLI on systemd -------------------------------------------------
    let (mut c_start, mut p_start, mut c_status, mut p_status, mut c_stop, mut p_stop) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut status_rss = Vec::new();
    for i in 0..runs {
        let cfg = dir.path().join(format!("c{i}.toml"));
        write_config(
            &cfg,
            &format!("{tag}-c{i}"),
            &dir.path().join(format!("c{i}.pid")),
        );
        let cfg = cfg.to_str().unwrap();
        let unit = format!("{tag}-p{i}.service");
        let unit_arg = format!("--unit={unit}");
        let ours_first = i % 2 == 0;
        let pair = |ours: &mut Command, peer: &mut Command| {
            if ours_first {
                let o = timed(ours);
                (o, timed(peer).0)
            } else {
                let p = timed(peer).0;
                (timed(ours), p)
            }
        };
        let ((o, _), p) = pair(
            &mut sd(&["start", cfg]),
            Command::new("systemd-run").args([
                "--user",
                "--quiet",
                "-p",
                "Type=exec",
                &unit_arg,
                "/bin/sleep",
                "1000",
            ]),
        );
        c_start.push(o);
        p_start.push(p);
        let ((o, rss), p) = pair(
            &mut sd(&["status", cfg]),
            Command::new("systemctl").args([
                "--user",
                "show",
                &unit,
                "-p",
                "ActiveState,SubState,MainPID",
            ]),
        );
        c_status.push(o);
        p_status.push(p);
        status_rss.push(rss as f64 / 1024.0);
        let ((o, _), p) = pair(
            &mut sd(&["stop", cfg]),
            Command::new("systemctl").args(["--user", "stop", &unit]),
        );
        c_stop.push(o);
        p_stop.push(p);
    }
    rows.push(Row {
        op: "CLI `status` (systemd user)".into(),
        unit: "ms",
        ours: c_status,
        peer: Some(p_status.clone()),
        target: Target::Faster(1.5),
        command: "`daemonctl status` vs `systemctl --user show -p ActiveState,SubState,MainPID`"
            .into(),
    });
    rows.push(Row {
        op: "CLI `start` (Type=exec)".into(),
        unit: "ms",
        ours: c_start,
        peer: Some(p_start),
        target: Target::Faster(1.5),
        command: "`daemonctl start` vs `systemd-run --user -p Type=exec`".into(),
    });
    rows.push(Row {
        op: "CLI `stop`".into(),
        unit: "ms",
        ours: c_stop,
        peer: Some(p_stop),
        target: Target::Faster(1.5),
        command: "`daemonctl stop` vs `systemctl --user stop`".into(),
    });

    // ---- CLI on the fork backend ----------------------------------------
    // start-stop-daemon double-forks: its daemon is PID 1's to reap, and
    // `--stop --retry` polls until it is gone; a lazy PID 1 (this CI
    // machine's takes 1-2 s) would be all it measures. So both tools run
    // under bash as PID 1 of a fresh PID namespace, a prompt reaper, each
    // step timed by bash itself ($EPOCHREALTIME).
    {
        let mut script = String::from(
            "t() { local s=$EPOCHREALTIME; \"${@:2}\" >/dev/null 2>&1 || exit 9; local e=$EPOCHREALTIME; echo \"$1 $(( ${e/./} - ${s/./} ))\"; }\n",
        );
        for i in 0..runs {
            let cfg = dir.path().join(format!("f{i}.toml"));
            write_config(
                &cfg,
                &format!("{tag}-f{i}"),
                &dir.path().join(format!("f{i}.pid")),
            );
            let cfg = cfg.display().to_string();
            let pid = dir.path().join(format!("s{i}.pid")).display().to_string();
            let ours_start = format!("t ours_start {daemonctl} --backend fork start {cfg}");
            let ssd_start = format!("t ssd_start start-stop-daemon --start --background --make-pidfile --pidfile {pid} --exec /bin/sleep -- 1000");
            let ours_stop = format!("t ours_stop {daemonctl} --backend fork stop {cfg}");
            let ssd_stop = format!("t ssd_stop start-stop-daemon --stop --pidfile {pid} --retry TERM/5/KILL/5 --remove-pidfile");
            let lines = if i % 2 == 0 {
                [ours_start, ssd_start, ours_stop, ssd_stop]
            } else {
                [ssd_start, ours_start, ssd_stop, ours_stop]
            };
            for l in lines {
                script.push_str(&l);
                script.push('\n');
            }
        }
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
        let out = cmd.stderr(Stdio::inherit()).output().expect("bash");
        assert!(
            out.status.success(),
            "fork CLI loop failed: {:?}",
            out.status
        );
        let get = |label: &str| -> Vec<f64> {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix(label)?.trim().parse::<f64>().ok())
                .map(|us| us / 1000.0)
                .collect()
        };
        let (os, ss, ot, st) = (
            get("ours_start "),
            get("ssd_start "),
            get("ours_stop "),
            get("ssd_stop "),
        );
        let how = if namespaced {
            "(both under a reaping PID 1)"
        } else {
            "(under this machine's PID 1)"
        };
        rows.push(Row {
            op: "CLI fork `start`".into(),
            unit: "ms",
            ours: os,
            peer: Some(ss),
            target: Target::Faster(0.8),
            command: format!("`daemonctl --backend fork start` vs `start-stop-daemon --start --background --make-pidfile` {how}"),
        });
        rows.push(Row {
            op: "CLI fork `stop` (exits on TERM)".into(),
            unit: "ms",
            ours: ot,
            peer: Some(st),
            target: Target::Faster(6.0),
            command: "`daemonctl --backend fork stop` vs `start-stop-daemon --stop --retry TERM/5/KILL/5`"
                .into(),
        });
    }

    // ---- library on systemd ---------------------------------------------
    let backend: Arc<dyn Backend> = Arc::new(
        SystemdBackend::connect(Scope::User)
            .await
            .expect("connect to the private manager"),
    );
    let sleeper = |name: String| {
        DaemonConfig::new("/bin/sleep", "/nonexistent/unused.pid")
            .with_name(name)
            .with_args(["1000"])
    };
    {
        let (mut l_start, mut p_run, mut l_stop, mut p_stop) = (vec![], vec![], vec![], vec![]);
        for i in 0..runs {
            let m = DaemonManager::with_backend(sleeper(format!("{tag}-l{i}")), backend.clone());
            let unit = format!("{tag}-q{i}.service");
            let unit_arg = format!("--unit={unit}");
            let mut run = Command::new("systemd-run");
            run.args([
                "--user",
                "--quiet",
                "-p",
                "Type=exec",
                &unit_arg,
                "/bin/sleep",
                "1000",
            ]);
            let mut stop = Command::new("systemctl");
            stop.args(["--user", "stop", &unit]);
            let t = Instant::now();
            m.start().await.expect("library start");
            l_start.push(ms(t.elapsed()));
            p_run.push(timed(&mut run).0);
            let t = Instant::now();
            m.stop().await.expect("library stop");
            l_stop.push(ms(t.elapsed()));
            p_stop.push(timed(&mut stop).0);
        }
        // Status of one running unit, again and again.
        let m = DaemonManager::with_backend(sleeper(format!("{tag}-s")), backend.clone());
        let pid = m.start().await.unwrap();
        let mut l_status = Vec::new();
        for _ in 0..status_runs {
            let t = Instant::now();
            let s = m.status().await.unwrap();
            l_status.push(ms(t.elapsed()));
            assert_eq!(s, DaemonStatus::Running(pid));
        }
        m.stop().await.unwrap();
        let run_rate = 1000.0 / median(&p_run);
        let (job_start, job_stop) = raw_jobs(&um.bus_address, &tag, runs).await;
        rows.push(Row {
            op: "systemd's own start job (the floor of every start)".into(),
            unit: "ms",
            ours: job_start,
            peer: None,
            target: Target::None,
            command: "bare zbus on the bus: `StartTransientUnit` (Type=exec) → its `JobRemoved`"
                .into(),
        });
        rows.push(Row {
            op: "systemd's own stop job (the floor of every stop)".into(),
            unit: "ms",
            ours: job_stop,
            peer: None,
            target: Target::None,
            command: "bare zbus on the bus: `StopUnit` → its `JobRemoved`".into(),
        });
        rows.push(Row {
            op: "library systemd `status`".into(),
            unit: "ms",
            ours: l_status,
            peer: Some(p_status.clone()),
            target: Target::AtMost(0.6),
            command: "`DaemonManager::status` vs `systemctl --user show` (a process each)".into(),
        });
        rows.push(Row {
            op: "library systemd `start`".into(),
            unit: "ms",
            ours: l_start,
            peer: Some(p_run),
            target: Target::Faster(2.0),
            command: "`DaemonManager::start` vs `systemd-run --user -p Type=exec`".into(),
        });
        rows.push(Row {
            op: "library systemd `stop`".into(),
            unit: "ms",
            ours: l_stop,
            peer: Some(p_stop),
            target: Target::Faster(2.5),
            command: "`DaemonManager::stop` vs `systemctl --user stop`".into(),
        });

        // Many units at once over the one backend (one connection).
        let (mut b_start, mut b_status, mut b_stop) = (vec![], vec![], vec![]);
        for rep in 0..3 {
            let ms_: Vec<DaemonManager> = (0..batch)
                .map(|i| {
                    DaemonManager::with_backend(
                        sleeper(format!("{tag}-b{rep}-{i}")),
                        backend.clone(),
                    )
                })
                .collect();
            let t = Instant::now();
            let pids = futures_util::future::join_all(ms_.iter().map(|m| m.start())).await;
            b_start.push(ms(t.elapsed()) / batch as f64);
            let t = Instant::now();
            let states = futures_util::future::join_all(ms_.iter().map(|m| m.status())).await;
            b_status.push(ms(t.elapsed()) / batch as f64);
            for (p, s) in pids.into_iter().zip(states) {
                assert_eq!(s.unwrap(), DaemonStatus::Running(p.unwrap()));
            }
            let t = Instant::now();
            for r in futures_util::future::join_all(ms_.iter().map(|m| m.stop())).await {
                r.unwrap();
            }
            b_stop.push(ms(t.elapsed()) / batch as f64);
        }
        let rate = |v: &[f64]| v.iter().map(|x| 1000.0 / x).collect::<Vec<_>>();
        rows.push(Row {
            op: format!("library, {batch} units started together (one backend)"),
            unit: "units/s",
            ours: rate(&b_start),
            peer: Some(vec![run_rate]),
            target: Target::Faster(300.0 / run_rate),
            command: format!(
                "`join_all` of `start` on one `Arc<SystemdBackend>` vs a `systemd-run` loop (≥ 300 units/s is {:.2}x of it)",
                300.0 / run_rate
            ),
        });
        rows.push(Row {
            op: format!("library, status of {batch} units together"),
            unit: "ms/unit",
            ours: b_status,
            peer: None,
            target: Target::AtMost(0.1),
            command: "`join_all` of `status` on one backend".into(),
        });
        rows.push(Row {
            op: format!("library, stop of {batch} units together"),
            unit: "ms/unit",
            ours: b_stop,
            peer: None,
            target: Target::None,
            command: "`join_all` of `stop` on one backend".into(),
        });
    }

    // READY=1 → start() returns.
    match testd() {
        Some(testd) => {
            let mut waits = Vec::new();
            for i in 0..runs.min(20) {
                let stamp = dir.path().join(format!("ready{i}"));
                let mut config = DaemonConfig::new(&testd, "/nonexistent/unused.pid")
                    .with_name(format!("{tag}-n{i}"))
                    .with_args([
                        "--ready-after",
                        "0",
                        "--ready-stamp",
                        stamp.to_str().unwrap(),
                    ]);
                config.readiness = Some(Readiness::Notify);
                let m = DaemonManager::with_backend(config, backend.clone());
                m.start().await.expect("notify start");
                let returned = now_us();
                let ready: u64 = std::fs::read_to_string(&stamp)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                waits.push(returned.saturating_sub(ready) as f64 / 1000.0);
                m.stop().await.unwrap();
            }
            rows.push(Row {
                op: "library, notify readiness: READY=1 → `start()` returns".into(),
                unit: "ms",
                ours: waits,
                peer: None,
                target: Target::AtMost(2.0),
                command: "`testd --ready-after 0 --ready-stamp` (Type=notify) on systemd".into(),
            });
        }
        None => eprintln!(
            "note: no examples/testd beside this bench (cargo build --release --examples): notify row skipped"
        ),
    }

    // ---- library on the fork backend ------------------------------------
    let fork: Arc<dyn Backend> = Arc::new(ForkBackend::with_supervisor(daemonctl));
    let forked = |name: String| {
        DaemonConfig::new("/bin/sleep", dir.path().join(format!("{name}.pid")))
            .with_name(name)
            .with_args(["1000"])
    };
    {
        // The idle supervisor's memory: a fresh one (asked nothing yet),
        // and the one below after the status loop.
        let idle = DaemonManager::with_backend(forked(format!("{tag}-fi")), fork.clone());
        idle.start().await.unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let (idle_rss, idle_pss) =
            supervisor_memory(&dir.path().join(format!("{tag}-fi.pid.identity")));
        idle.stop().await.unwrap();
        let m = DaemonManager::with_backend(forked(format!("{tag}-fs")), fork.clone());
        let pid = m.start().await.unwrap();
        let (mut ours, mut floor) = (vec![], vec![]);
        let stat = format!("/proc/{pid}/stat");
        for _ in 0..status_runs {
            let t = Instant::now();
            let s = m.status().await.unwrap();
            ours.push(ms(t.elapsed()));
            assert_eq!(s, DaemonStatus::Running(pid));
            let t = Instant::now();
            let alive =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
            let text = std::fs::read_to_string(&stat).unwrap();
            floor.push(ms(t.elapsed()));
            assert!(alive && !text.is_empty());
        }
        let (busy_rss, _) = supervisor_memory(&dir.path().join(format!("{tag}-fs.pid.identity")));
        m.stop().await.unwrap();
        rows.push(Row {
            op: "library fork `status`".into(),
            unit: "ms",
            ours,
            peer: Some(floor),
            target: Target::WithinFloor(4.0),
            command: "`DaemonManager::status` vs floor `kill(pid, 0)` + read `/proc/PID/stat`"
                .into(),
        });
        let (mut ours, mut floor) = (vec![], vec![]);
        for i in 0..runs {
            let m = DaemonManager::with_backend(forked(format!("{tag}-ft{i}")), fork.clone());
            m.start().await.unwrap();
            let t = Instant::now();
            m.stop().await.unwrap();
            ours.push(ms(t.elapsed()));
            let t = Instant::now();
            let mut child = Command::new("/bin/sleep").arg("1000").spawn().unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            child.wait().unwrap();
            floor.push(ms(t.elapsed()));
        }
        rows.push(Row {
            op: "library fork `stop` (exits on TERM)".into(),
            unit: "ms",
            ours,
            peer: Some(floor),
            target: Target::AtMost(1.0),
            command: "`DaemonManager::stop` vs floor spawn + SIGTERM + reap".into(),
        });
        rows.push(Row {
            op: format!(
                "idle supervisor memory (Pss {} MiB; {} MiB RSS after {status_runs} status requests)",
                fmt_num(idle_pss),
                fmt_num(busy_rss)
            ),
            unit: "MiB",
            ours: vec![idle_rss],
            peer: None,
            target: Target::AtMost(2.0),
            command: "VmRSS of the supervisor of one idle `/bin/sleep`, 0.3 s after its start".into(),
        });
        rows.push(Row {
            op: "`daemonctl status` peak memory".into(),
            unit: "MiB",
            ours: status_rss,
            peer: None,
            target: Target::AtMost(8.0),
            command: "ru_maxrss of `daemonctl status` (systemd) from wait4".into(),
        });
    }

    // ---- scale ------------------------------------------------------------
    // Start all, status all, stop all, together, at the full size and at a
    // tenth: the per-daemon cost must stay flat.
    async fn phases(managers: &[DaemonManager]) -> [f64; 3] {
        let n = managers.len() as f64;
        let t = Instant::now();
        let pids = futures_util::future::join_all(managers.iter().map(|m| m.start())).await;
        let start = ms(t.elapsed()) / n;
        let t = Instant::now();
        let states = futures_util::future::join_all(managers.iter().map(|m| m.status())).await;
        let status = ms(t.elapsed()) / n;
        for (p, s) in pids.into_iter().zip(states) {
            assert_eq!(s.unwrap(), DaemonStatus::Running(p.unwrap()));
        }
        let t = Instant::now();
        for r in futures_util::future::join_all(managers.iter().map(|m| m.stop())).await {
            r.unwrap();
        }
        [start, status, ms(t.elapsed()) / n]
    }
    for (what, full, make) in [
        (
            "fork daemons",
            scale_fork,
            &(|n: usize, i: usize| {
                DaemonManager::with_backend(forked(format!("{tag}-x{n}-{i}")), fork.clone())
            }) as &dyn Fn(usize, usize) -> DaemonManager,
        ),
        ("transient units", scale_units, &|n: usize, i: usize| {
            DaemonManager::with_backend(sleeper(format!("{tag}-y{n}-{i}")), backend.clone())
        }),
    ] {
        let tenth = (full / 10).max(1);
        let small: Vec<_> = (0..tenth).map(|i| make(tenth, i)).collect();
        let at_tenth = phases(&small).await;
        let big: Vec<_> = (0..full).map(|i| make(full, i)).collect();
        let at_full = phases(&big).await;
        for (k, phase) in ["start", "status", "stop"].iter().enumerate() {
            rows.push(Row {
                op: format!("scale: {full} {what}, {phase} all"),
                unit: "ms/daemon",
                ours: vec![at_full[k]],
                peer: Some(vec![at_tenth[k]]),
                target: Target::Flat(1.3),
                command: format!(
                    "`join_all` of `{phase}` on one backend; peer column: {tenth} of them"
                ),
            });
        }
    }

    println!();
    println!(
        "issue 12 performance table: {} CPUs, load average {load_before} before, {} after; {:.0} s; RUNS={runs} STATUS_RUNS={status_runs} BATCH={batch} SCALE_FORK={scale_fork} SCALE_UNITS={scale_units}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        t_all.elapsed().as_secs_f64()
    );
    println!();
    print_table(&rows);
    let failed = rows.iter().filter(|r| r.verdict().1 == "NO").count();
    println!();
    println!(
        "{} of {} targets hold",
        rows.iter().filter(|r| r.verdict().1 == "yes").count(),
        rows.iter().filter(|r| !r.verdict().1.is_empty()).count()
    );
    if failed > 0 {
        println!("({failed} do not: see the README's Performance section for where the time goes)");
    }
    drop(um);
}
