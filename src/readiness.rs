//! Readiness probes every backend shares: a TCP connect, an HTTP GET that
//! answers 2xx (through `ureq`, `http://` only), a command that exits 0.
//!
//! `notify` (sd_notify `READY=1`) is not a probe: who owns the socket differs
//! per backend (our supervisor, or systemd), so each backend handles it.
//!
//! [`wait_until_ready`] repeats one probe every `interval_ms` until it
//! succeeds, the deadline passes, or `still_alive` says the daemon is gone —
//! a daemon that died during start-up must be reported as such, not waited
//! for until the timeout.

use std::process::Stdio;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Readiness;

/// Why [`wait_until_ready`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeError {
    /// `still_alive` returned false: the daemon ended before it was ready.
    DaemonGone,
    /// The deadline passed; `last` is what the last attempt saw.
    Timeout {
        /// The last attempt's failure, for the error message.
        last: Option<String>,
    },
    /// `notify` is not something a caller can probe.
    NotAProbe,
}

/// Upper bound of one attempt, so a probe that hangs (a server that accepts
/// but never answers) is retried rather than eating the whole deadline.
const MAX_ATTEMPT: Duration = Duration::from_secs(5);

/// Probes until ready, the deadline, or the daemon's end. `still_alive` is
/// asked once after every failed attempt (it may be a D-Bus round trip, so
/// not more often): a daemon that died is reported at once, not waited for.
pub(crate) async fn wait_until_ready<F, Fut>(
    probe: &Readiness,
    deadline: Instant,
    still_alive: F,
) -> Result<(), ProbeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_ready_with(probe, deadline, still_alive, probe_once).await
}

/// [`wait_until_ready`] with each attempt made by `attempt` (a probe run
/// elsewhere: on a remote host, over ssh).
pub(crate) async fn wait_until_ready_with<'p, F, Fut, A, AFut>(
    probe: &'p Readiness,
    deadline: Instant,
    mut still_alive: F,
    attempt: A,
) -> Result<(), ProbeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
    A: Fn(&'p Readiness, Duration) -> AFut,
    AFut: std::future::Future<Output = Result<(), String>>,
{
    if matches!(probe, Readiness::Notify) {
        return Err(ProbeError::NotAProbe);
    }
    let interval = probe.interval();
    let mut last = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ProbeError::Timeout { last });
        }
        let budget = (deadline - now).min(MAX_ATTEMPT);
        match attempt(probe, budget).await {
            Ok(()) => {
                tracing::debug!(%probe, "readiness probe succeeded");
                return Ok(());
            }
            Err(why) => {
                tracing::trace!(%probe, %why, "readiness probe failed");
                last = Some(why);
            }
        }
        if !still_alive().await {
            return Err(ProbeError::DaemonGone);
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + interval)).await;
    }
}

/// One liveness probe: [`probe_once`] with `timeout` as its budget, and a
/// last bound a second later (a probe whose own bound did not hold); the
/// words are the same wherever it runs (the fork supervisor, the systemd
/// probe helper).
pub(crate) async fn probe_bounded(probe: Readiness, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(
        timeout + Duration::from_secs(1),
        probe_once(&probe, timeout),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!("{probe}: timed out")),
    }
}

/// One attempt, bounded by `budget`. `Err` carries what went wrong, in words.
pub(crate) async fn probe_once(probe: &Readiness, budget: Duration) -> Result<(), String> {
    match probe {
        Readiness::Notify => Err("notify is not a probe".into()),
        Readiness::Tcp { address, .. } => {
            match tokio::time::timeout(budget, tokio::net::TcpStream::connect(address.as_str()))
                .await
            {
                Ok(Ok(_stream)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect {address}: {e}")),
                Err(_) => Err(format!("connect {address}: timed out")),
            }
        }
        Readiness::Http { url, .. } => {
            let url = url.clone();
            // ureq is blocking: run it off the async threads.
            let task = tokio::task::spawn_blocking(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(budget))
                    .http_status_as_error(false)
                    .build()
                    .into();
                match agent.get(&url).call() {
                    Ok(resp) if resp.status().is_success() => Ok(()),
                    Ok(resp) => Err(format!("GET {url}: status {}", resp.status())),
                    Err(e) => Err(format!("GET {url}: {e}")),
                }
            });
            task.await
                .unwrap_or_else(|e| Err(format!("HTTP probe task: {e}")))
        }
        Readiness::Command { argv, .. } => {
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // A probe that outlives its budget must not linger.
                .kill_on_drop(true);
            let mut child = cmd.spawn().map_err(|e| format!("run {}: {e}", argv[0]))?;
            match tokio::time::timeout(budget, child.wait()).await {
                Ok(Ok(status)) if status.success() => Ok(()),
                // In the words of ExitInfo, as the fork supervisor says it.
                Ok(Ok(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    let how = match (status.code(), status.signal()) {
                        (Some(code), _) => crate::backend::ExitInfo::Code(code),
                        (None, Some(sig)) => crate::backend::ExitInfo::Signal(sig),
                        (None, None) => return Err(format!("{} {status}", argv[0])),
                    };
                    Err(format!("{} {how}", argv[0]))
                }
                Ok(Err(e)) => Err(format!("wait for {}: {e}", argv[0])),
                Err(_) => {
                    let _ = child.kill().await;
                    Err(format!("{} timed out", argv[0]))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(address: &str) -> Readiness {
        Readiness::Tcp {
            address: address.into(),
            interval_ms: Some(20),
        }
    }

    #[tokio::test]
    async fn tcp_probe_sees_a_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            wait_until_ready(&tcp(&addr), deadline, || async { true }).await,
            Ok(())
        );
        drop(listener);
        // A port bound but not listening refuses every connection. (A port
        // merely closed again may be picked as the probe's own source port,
        // and a TCP self-connect then succeeds: that made this test flaky.)
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let refused = socket.local_addr().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_millis(200);
        assert!(matches!(
            wait_until_ready(&tcp(&refused), deadline, || async { true }).await,
            Err(ProbeError::Timeout { last: Some(_) })
        ));
        drop(socket);
    }

    #[tokio::test]
    async fn a_dead_daemon_ends_the_wait() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let r = wait_until_ready(&tcp("127.0.0.1:1"), deadline, || async { false }).await;
        assert_eq!(r, Err(ProbeError::DaemonGone));
    }

    #[tokio::test]
    async fn command_probe_uses_the_exit_code() {
        let ok = Readiness::Command {
            argv: vec!["/bin/true".into()],
            interval_ms: None,
        };
        let bad = Readiness::Command {
            argv: vec!["/bin/false".into()],
            interval_ms: Some(10),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            wait_until_ready(&ok, deadline, || async { true }).await,
            Ok(())
        );
        let deadline = Instant::now() + Duration::from_millis(100);
        assert!(matches!(
            wait_until_ready(&bad, deadline, || async { true }).await,
            Err(ProbeError::Timeout { .. })
        ));
        assert_eq!(
            wait_until_ready(&Readiness::Notify, deadline, || async { true }).await,
            Err(ProbeError::NotAProbe)
        );
    }
}
