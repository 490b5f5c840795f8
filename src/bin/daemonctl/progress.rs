//! Live feedback while a start waits for readiness: one updating line on
//! stderr (a spinner, the time waited, the daemon's latest `STATUS=` text),
//! only when stderr is a terminal, gone once the wait is over. stdout is
//! never touched: it stays the PID alone.

use std::future::Future;
use std::time::Duration;

use daemon_lifecycle::{BackendChoice, DaemonConfig, DaemonManager, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the daemon's `STATUS=` text is asked for.
const STATUS_POLL: Duration = Duration::from_millis(250);

/// Runs `op` (a start, restart or wait-ready of `config`), showing the line
/// meanwhile when stderr is a terminal.
pub async fn while_waiting<T>(
    what: &str,
    config: &DaemonConfig,
    choice: BackendChoice,
    op: impl Future<Output = Result<T>>,
) -> Result<T> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return op.await;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} ({elapsed}) {wide_msg}")
            .expect("a valid template")
            .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
    );
    bar.set_prefix(format!("{what} {}", crate::printable(&config.name())));
    bar.set_message("waiting until it is ready");
    bar.enable_steady_tick(Duration::from_millis(100));
    // A second look at the same daemon: status needs no lock, so it
    // answers while the operation waits.
    let watcher = DaemonManager::with_choice(config.clone(), choice);
    let watch = async {
        loop {
            tokio::time::sleep(STATUS_POLL).await;
            match watcher.status_report().await {
                Err(e) => tracing::debug!(error = %e, "status while waiting"),
                Ok(report) => {
                    if let Some(text) = report.status_text {
                        bar.set_message(crate::printable(&text));
                    }
                }
            }
        }
    };
    let result = tokio::select! {
        r = op => r,
        () = watch => unreachable!("the watch never ends"),
    };
    bar.finish_and_clear();
    result
}
