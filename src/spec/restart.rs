//! The restart rules every backend shares: which exit is clean, which exit
//! is restarted, the back-off between restarts and the start limit. The
//! fork supervisor runs them; the systemd unit maps them to `Restart=`,
//! `RestartSec=` and `StartLimitBurst=` (systemd then applies its own copy
//! of the same rules).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::ExitInfo;
use crate::config::{RestartConfig, RestartPolicy};

/// The restart policy with its durations resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RestartSpec {
    /// When to restart.
    pub policy: RestartPolicy,
    /// Delay before the first restart.
    pub delay: Duration,
    /// Cap of the doubling delay.
    pub max_delay: Duration,
    /// At most this many restarts within `window`.
    pub max_restarts: u32,
    /// The start-limit window.
    pub window: Duration,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec::from_config(&RestartConfig::default())
    }
}

impl RestartSpec {
    /// The spec of a (well-formed) `restart` table.
    pub fn from_config(c: &RestartConfig) -> RestartSpec {
        RestartSpec {
            policy: c.policy,
            delay: Duration::from_millis(c.delay_ms),
            max_delay: Duration::from_millis(c.max_delay_ms),
            max_restarts: c.max_restarts,
            window: Duration::from_secs(c.window_secs),
        }
    }

    /// systemd's rule: `on-failure` restarts after an unclean end (a
    /// non-zero code, or a signal other than HUP, INT, TERM and PIPE);
    /// `always` after any end a stop did not ask for.
    pub fn restarts_after(&self, exit: ExitInfo) -> bool {
        match self.policy {
            RestartPolicy::Never => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !is_clean_exit(exit),
        }
    }

    /// The delay before restart number `n + 1` within the window:
    /// `delay · 2^n`, capped at `max_delay`.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.delay.saturating_mul(factor).min(self.max_delay)
    }

    /// How many starts systemd should allow in the window: it counts every
    /// start, the first included, where `max_restarts` counts restarts only.
    pub fn start_limit_burst(&self) -> u32 {
        self.max_restarts.saturating_add(1)
    }
}

/// systemd's rule for a service: exit code 0 and the signals HUP, INT, TERM
/// and PIPE are a clean end, anything else is a failure.
pub fn is_clean_exit(exit: ExitInfo) -> bool {
    match exit {
        ExitInfo::Code(code) => code == 0,
        ExitInfo::Signal(sig) => {
            [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGPIPE].contains(&sig)
        }
    }
}

/// The restarts of one supervisor within the start-limit window.
#[derive(Debug, Default)]
pub struct StartLimit {
    recent: VecDeque<Instant>,
}

impl StartLimit {
    /// Asks for a restart at `now`: `Some(delay)` (and the restart is
    /// counted), or `None` when `max_restarts` restarts already happened
    /// within the window, i.e. the start limit is hit.
    pub fn next(&mut self, spec: &RestartSpec, now: Instant) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > spec.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= spec.max_restarts as usize {
            return None;
        }
        let delay = spec.backoff(self.recent.len() as u32);
        self.recent.push_back(now);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: RestartPolicy) -> RestartSpec {
        RestartSpec::from_config(&RestartConfig {
            policy,
            delay_ms: 100,
            max_delay_ms: 1000,
            max_restarts: 3,
            window_secs: 10,
        })
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = spec(RestartPolicy::Always);
        let ms: Vec<u128> = (0..6).map(|n| s.backoff(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(s.backoff(200).as_millis(), 1000);
    }

    #[test]
    fn clean_exits_follow_systemd() {
        for clean in [
            ExitInfo::Code(0),
            ExitInfo::Signal(libc::SIGTERM),
            ExitInfo::Signal(libc::SIGHUP),
            ExitInfo::Signal(libc::SIGINT),
            ExitInfo::Signal(libc::SIGPIPE),
        ] {
            assert!(is_clean_exit(clean), "{clean:?}");
        }
        for unclean in [
            ExitInfo::Code(3),
            ExitInfo::Signal(libc::SIGKILL),
            ExitInfo::Signal(libc::SIGSEGV),
        ] {
            assert!(!is_clean_exit(unclean), "{unclean:?}");
        }
    }

    #[test]
    fn policies_decide_which_exits_restart() {
        let crash = ExitInfo::Code(3);
        let clean = ExitInfo::Code(0);
        assert!(!spec(RestartPolicy::Never).restarts_after(crash));
        assert!(spec(RestartPolicy::OnFailure).restarts_after(crash));
        assert!(!spec(RestartPolicy::OnFailure).restarts_after(clean));
        assert!(spec(RestartPolicy::Always).restarts_after(clean));
    }

    #[test]
    fn the_start_limit_counts_restarts_in_the_window() {
        let s = spec(RestartPolicy::Always);
        let mut limit = StartLimit::default();
        let t0 = Instant::now();
        let delays: Vec<Option<u128>> = (0..4)
            .map(|i| {
                limit
                    .next(&s, t0 + Duration::from_secs(i))
                    .map(|d| d.as_millis())
            })
            .collect();
        assert_eq!(delays, [Some(100), Some(200), Some(400), None]);
        // Once the first restarts leave the window, restarts are allowed
        // again, with the back-off of the restarts still inside it.
        assert_eq!(
            limit
                .next(&s, t0 + Duration::from_millis(11_500))
                .map(|d| d.as_millis()),
            Some(200)
        );
        assert_eq!(s.start_limit_burst(), 4);
    }
}
