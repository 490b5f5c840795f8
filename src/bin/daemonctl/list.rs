//! `daemonctl list`: one row per daemon, like `pm2 ls`.

use std::path::{Path, PathBuf};

use daemon_lifecycle::{
    BackendChoice, DaemonConfig, DaemonManager, DaemonStatus, ForkBackend, Scope, StatusReport,
    SystemdBackend,
};

/// One row: a daemon's report, or why there is none.
pub enum Row {
    Report(StatusReport),
    /// A config (or registry entry) that could not be read or asked.
    Error {
        source: PathBuf,
        message: String,
    },
}

/// What `list` looks at, and how.
pub struct Sources<'a> {
    pub paths: &'a [PathBuf],
    pub choice: BackendChoice,
    pub scope: Option<Scope>,
    pub adopt: bool,
}

/// Every row, in order: the configs given (a directory: its `*.toml`,
/// sorted), or without any the fork registry and the systemd units of ours.
pub async fn rows(sources: &Sources<'_>) -> Vec<Row> {
    let mut rows = Vec::new();
    if !sources.paths.is_empty() {
        for config in expand(sources.paths, &mut rows) {
            rows.push(config_row(sources, &config).await);
        }
        return rows;
    }
    if sources.choice != BackendChoice::Systemd {
        match ForkBackend::new().list_registered().await {
            Ok(found) => rows.extend(found.into_iter().map(|r| match r {
                Ok(report) => Row::Report(report),
                Err((source, e)) => Row::Error {
                    source,
                    message: e.to_string(),
                },
            })),
            Err(e) => rows.push(Row::Error {
                source: PathBuf::from("(fork registry)"),
                message: e.to_string(),
            }),
        }
    }
    if sources.choice != BackendChoice::Fork {
        let scope = sources
            .scope
            .unwrap_or_else(Scope::default_for_current_user);
        let listed = match SystemdBackend::connect(scope).await {
            Ok(systemd) => systemd.list_owned().await,
            Err(e) => Err(e),
        };
        match listed {
            Ok(reports) => rows.extend(reports.into_iter().map(Row::Report)),
            // auto: no manager here, nothing of systemd's to list.
            Err(_) if sources.choice == BackendChoice::Auto => {}
            Err(e) => rows.push(Row::Error {
                source: PathBuf::from(format!("(systemd {scope} manager)")),
                message: e.to_string(),
            }),
        }
    }
    rows
}

/// The config files named: a directory stands for its `*.toml` files.
fn expand(paths: &[PathBuf], rows: &mut Vec<Row>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(path.clone());
            continue;
        }
        match std::fs::read_dir(path) {
            Ok(dir) => {
                let mut found: Vec<PathBuf> = dir
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                    .collect();
                found.sort();
                out.extend(found);
            }
            Err(e) => rows.push(Row::Error {
                source: path.clone(),
                message: format!("cannot read the directory: {e}"),
            }),
        }
    }
    out
}

async fn config_row(sources: &Sources<'_>, path: &Path) -> Row {
    let error = |e: daemon_lifecycle::DaemonError| Row::Error {
        source: path.to_owned(),
        message: crate::error_line(path, &e)
            .split_once(": ")
            .map(|(_, what)| what.to_owned())
            .unwrap_or_default(),
    };
    let mut config = match DaemonConfig::from_toml_file(path) {
        Ok(c) => c,
        Err(e) => return error(e),
    };
    if let Some(scope) = sources.scope {
        config.scope = Some(scope);
    }
    config.adopt |= sources.adopt;
    match DaemonManager::with_choice(config, sources.choice)
        .status_report()
        .await
    {
        Ok(report) => Row::Report(report),
        Err(e) => error(e),
    }
}

/// The rows as JSON: an array of what `status --json` prints, and for a
/// row with no report `{"config": PATH, "error": MESSAGE}`.
pub fn json(rows: &[Row]) -> String {
    let values: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| match row {
            Row::Report(r) => serde_json::to_value(r).expect("a report serializes"),
            Row::Error { source, message } => serde_json::json!({
                "config": source.display().to_string(),
                "error": message,
            }),
        })
        .collect();
    serde_json::to_string(&values).expect("JSON values serialize")
}

/// The columns of the table.
const HEADER: [&str; 8] = [
    "NAME",
    "BACKEND",
    "STATE",
    "PID",
    "UPTIME",
    "RESTARTS",
    "LAST EXIT",
    "STATUS",
];

/// The rows as a table, columns padded to their widest cell; `colour`
/// paints the state (never the padding).
pub fn table(rows: &[Row], colour: bool) -> String {
    let dash = || "-".to_owned();
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|row| match row {
            Row::Report(r) => [
                r.name.clone(),
                r.backend.to_string(),
                r.status.state_name().to_owned(),
                r.status.pid().map(|p| p.to_string()).unwrap_or_else(dash),
                r.uptime_secs.map(uptime).unwrap_or_else(dash),
                r.restarts.to_string(),
                r.last_exit.map(|e| e.to_string()).unwrap_or_else(dash),
                status_column(r),
            ],
            Row::Error { source, message } => [
                source.display().to_string(),
                dash(),
                "error".to_owned(),
                dash(),
                dash(),
                dash(),
                dash(),
                message.clone(),
            ],
        })
        .map(|cells| cells.map(|c| crate::printable(&c)))
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String; 8], state_colour: Option<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let last = i == cells.len() - 1;
            let pad = if last {
                String::new()
            } else {
                " ".repeat(w - cell.chars().count() + 2)
            };
            match (i, state_colour) {
                (2, Some(code)) => text.push_str(&format!("\x1b[{code}m{cell}\x1b[0m{pad}")),
                _ => text.push_str(&format!("{cell}{pad}")),
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&HEADER.map(str::to_owned), None);
    for (row, cells) in rows.iter().zip(&cells) {
        let code = colour.then(|| state_colour(row));
        line(cells, code);
    }
    out
}

/// The STATUS column: why it failed, else the daemon's `STATUS=` text, else
/// what is wrong beside its state.
fn status_column(r: &StatusReport) -> String {
    match (&r.status, &r.status_text) {
        (DaemonStatus::Failed(reason), Some(text)) => format!("{reason} (STATUS={text})"),
        (DaemonStatus::Failed(reason), None) => reason.clone(),
        (_, Some(text)) => text.clone(),
        (_, None) => r.problem.clone().unwrap_or_default(),
    }
}

/// ANSI SGR colour of a row's state.
fn state_colour(row: &Row) -> &'static str {
    match row {
        Row::Report(r) => match r.status {
            DaemonStatus::Running(_) => "32",  // green
            DaemonStatus::Starting(_) => "36", // cyan
            DaemonStatus::Stale(_) => "33",    // yellow
            DaemonStatus::Failed(_) => "31",   // red
            _ => "2",                          // dim
        },
        Row::Error { .. } => "31",
    }
}

/// `42s`, `5m`, `3h`, `2d`, as `pm2 ls` shows uptimes.
fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Whether to colour: stdout is a terminal and `NO_COLOR` is unset or
/// empty (no-color.org).
pub fn use_colour() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
