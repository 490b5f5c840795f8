//! The liveness probe helper of a systemd unit: systemd has no liveness
//! probe, so the unit runs one of its own.
//!
//! `ExecStartPost=PROGRAM --daemon-lifecycle-liveness UNIT JSON` starts the
//! supervisor program (`daemonctl`, or a program calling
//! [`crate::supervisor_init`]) once the start is complete (after `READY=1`
//! for a notify daemon). It forks: the `ExecStartPost=` command ends at
//! once, and the child stays inside the unit's cgroup, as one of its
//! processes, so it lives exactly as long as the unit runs (a stop or
//! restart kills it with the rest) and needs nothing else on the host.
//!
//! The unit has `WatchdogSec=` (two probe rounds and 5 s),
//! `WatchdogSignal=SIGTERM` and `NotifyAccess=all`. The helper first waits
//! for the readiness probe, if the config has one; then it probes every
//! `interval_ms` and sends `WATCHDOG=1` after every round that does not
//! end the daemon. After `failures` failures in a row it sends
//! `STATUS=liveness probe failed: …` and `WATCHDOG=trigger`: systemd
//! stops the unit (SIGTERM, SIGKILL after `TimeoutStopSec`), records
//! `Result=watchdog`, and `Restart=` applies. A helper that dies or hangs
//! stops pinging, and the watchdog ends the unit too: the probe can fail
//! only towards a restart.

use std::time::Duration;

use tokio::time::Instant;

use super::unit::HelperArgs;

/// Runs the helper; called by [`crate::supervisor_init`] for
/// `--daemon-lifecycle-liveness`. Never returns.
pub(crate) fn main(args: Vec<std::ffi::OsString>) -> ! {
    // argv: PROGRAM --daemon-lifecycle-liveness UNIT JSON
    let parsed = args
        .get(3)
        .and_then(|j| j.to_str())
        .and_then(|j| serde_json::from_str::<HelperArgs>(j).ok());
    let Some(helper) = parsed else {
        eprintln!("daemon-lifecycle liveness helper: bad arguments (PROGRAM --daemon-lifecycle-liveness UNIT JSON)");
        std::process::exit(2);
    };
    // Single-threaded here (supervisor_init comes first in main): fork is
    // safe. The parent's exit ends the ExecStartPost= command.
    // SAFETY: no other thread exists; the child only continues this program.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            eprintln!("daemon-lifecycle liveness helper: fork: {e}");
            std::process::exit(1);
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("helper runtime");
    let code = runtime.block_on(run(helper));
    std::process::exit(code);
}

async fn run(helper: HelperArgs) -> i32 {
    let Some(socket) = Notifier::from_env() else {
        eprintln!(
            "daemon-lifecycle liveness helper: no NOTIFY_SOCKET (NotifyAccess=all is needed)"
        );
        return 1;
    };
    let l = &helper.liveness;
    socket.send("WATCHDOG=1");
    if let Some(readiness) = &helper.readiness {
        // After ready, as on the fork backend: probe failures during
        // start-up are the readiness probe's business. The caller stops a
        // daemon that is not ready in time.
        let deadline = Instant::now() + Duration::from_millis(helper.startup_timeout_ms);
        loop {
            let budget = (deadline - Instant::now().min(deadline)).min(Duration::from_secs(5));
            if Instant::now() >= deadline
                || crate::readiness::probe_once(readiness, budget)
                    .await
                    .is_ok()
            {
                break;
            }
            socket.send("WATCHDOG=1");
            tokio::time::sleep(readiness.interval()).await;
        }
    }
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(l.interval).await;
        let result = crate::readiness::probe_bounded(l.probe.clone(), l.timeout).await;
        match result {
            Ok(()) => failures = 0,
            Err(why) => {
                failures += 1;
                if failures >= l.failures {
                    let text = format!(
                        "{}: {}",
                        crate::spec::LIVENESS_FAILED,
                        crate::text::clip_middle(&why, 200)
                    );
                    // One line: a STATUS= text ends at the line's end.
                    let text = text.replace(['\n', '\r'], " ");
                    socket.send(&format!("STATUS={text}"));
                    socket.send("WATCHDOG=trigger");
                    return 0;
                }
            }
        }
        socket.send("WATCHDOG=1");
    }
}

/// The manager's `NOTIFY_SOCKET` (a path, or on Linux an abstract name).
struct Notifier {
    socket: std::os::unix::net::UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let socket = std::os::unix::net::UnixDatagram::unbound().ok()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.first() {
            #[cfg(target_os = "linux")]
            Some(b'@') => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..]).ok()?
            }
            Some(b'/') => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
            _ => return None,
        };
        Some(Notifier { socket, addr })
    }

    fn send(&self, message: &str) {
        let _ = self.socket.send_to_addr(message.as_bytes(), &self.addr);
    }
}
