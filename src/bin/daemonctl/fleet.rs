//! `daemonctl --hosts a,b,c COMMAND CONFIG`: one command on many hosts at
//! once (the library's `fleet::run_each`), one result per host: with
//! `--json` one JSON object per line as each host finishes, else a table
//! in the order the hosts were given once all are done.

use std::path::Path;

use daemon_lifecycle::fleet::{self, HostResult, Operation, Outcome};
use daemon_lifecycle::host::SshOptions;
use daemon_lifecycle::{BackendChoice, DaemonConfig, DaemonError};

use crate::printable;

/// The fleet operation of a command, with whether it asked for JSON;
/// `None` for a command that does not run on hosts.
pub(crate) fn operation(command: &crate::Command, default_wait: u64) -> Option<(Operation, bool)> {
    use crate::Command as C;
    Some(match command {
        C::Start { json, .. } => (Operation::Start, *json),
        C::Stop { json, .. } => (Operation::Stop, *json),
        C::Kill { json, .. } => (Operation::Kill, *json),
        C::Restart { json, .. } => (Operation::Restart, *json),
        C::Reload { json, .. } => (Operation::Reload, *json),
        C::Status { json, .. } => (Operation::Status, *json),
        C::Cleanup { json, .. } => (Operation::Cleanup, *json),
        C::WaitReady { timeout, json, .. } => {
            (Operation::WaitReady(timeout.unwrap_or(default_wait)), *json)
        }
        _ => return None,
    })
}

/// Runs the command on every host; the exit code is 0 only when every
/// host succeeded (for `status`: the daemon runs on every host).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    config: DaemonConfig,
    config_path: &Path,
    command: &crate::Command,
    hosts: &[String],
    parallel: usize,
    choice: BackendChoice,
    ssh: &SshOptions,
) -> Result<u8, DaemonError> {
    let Some((op, json)) = operation(command, config.startup_timeout_secs) else {
        return Err(DaemonError::InvalidConfig {
            field: "hosts".into(),
            reason:
                "--hosts runs start, stop, kill, restart, reload, status, wait-ready and cleanup"
                    .into(),
        });
    };
    let mut all = Vec::new();
    fleet::run_each(&config, hosts, op, parallel, choice, ssh, |r| {
        if json {
            println!("{}", r.to_json());
        }
        all.push(r);
    })
    .await;
    if !json {
        // In the order given, not the order they finished.
        all.sort_by_key(|r| hosts.iter().position(|h| *h == r.host));
        print!("{}", table(&all, config_path));
    }
    Ok(if all.iter().all(HostResult::succeeded) {
        0
    } else {
        1
    })
}

/// The results as a table: HOST, RESULT, DETAIL.
fn table(results: &[HostResult], config_path: &Path) -> String {
    let rows: Vec<[String; 3]> = results
        .iter()
        .map(|r| {
            let detail = match &r.result {
                Ok(Outcome::Pid(pid)) => format!("PID {pid}"),
                Ok(Outcome::Status(report)) => format!("{} [{}]", report.status, report.backend),
                Ok(_) => "done".to_owned(),
                Err(e) => crate::error_line(config_path, e),
            };
            [
                printable(&r.host),
                if r.succeeded() { "ok" } else { "FAILED" }.to_owned(),
                printable(&detail),
            ]
        })
        .collect();
    let header = ["HOST".to_owned(), "RESULT".to_owned(), "DETAIL".to_owned()];
    let width = |i: usize| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows.iter()) {
        out.push_str(&format!("{:<w0$}  {:<w1$}  {}\n", row[0], row[1], row[2]));
    }
    out
}
