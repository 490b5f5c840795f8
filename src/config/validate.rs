//! The pure layer of validation: whether a [`DaemonConfig`] is well formed
//! (absolute paths, names, value ranges, characters). It reads no file and
//! asks no host, so a unit can be rendered on a build machine; what the host
//! that runs the daemon must offer is checked by [`crate::host::check`].

use std::path::Path;

use super::{
    DaemonConfig, Liveness, LogsConfig, Readiness, ReloadConfig, RestartConfig, MAX_NAME_LEN,
    MAX_TIMEOUT_SECS,
};
use crate::error::{DaemonError, Result};

/// Checks every field; the first problem found is a typed error naming the
/// field.
pub(crate) fn well_formed(config: &DaemonConfig) -> Result<()> {
    // The executable is never a per-instance one: a token there would be
    // replaced in a template unit (it is one word of ExecStart=) but run
    // literally everywhere else.
    if config
        .binary_path
        .to_str()
        .is_some_and(super::instance::uses_token)
    {
        return Err(DaemonError::invalid(
            "binary_path",
            "{instance} is replaced only in args, env values, working_dir, pid_file and the log paths",
        ));
    }
    if let Some(instance) = &config.instance {
        validate_instance(config, instance)?;
    }
    if let Some(host) = &config.host {
        crate::host::SshDestination::parse(host)?;
    }
    program_path(&config.binary_path)?;
    validate_name(config)?;
    for (i, arg) in config.args.iter().enumerate() {
        no_nul(&format!("args[{i}]"), arg)?;
    }
    let pid_file = config.effective_pid_file();
    no_nul_path("pid_file", &pid_file)?;
    if !pid_file.is_absolute() {
        return Err(DaemonError::invalid(
            "pid_file",
            format!("{} is not an absolute path", pid_file.display()),
        ));
    }
    if pid_file.file_name().is_none() || config.pid_file.to_string_lossy().ends_with('/') {
        return Err(DaemonError::invalid(
            "pid_file",
            format!("{} does not name a file", pid_file.display()),
        ));
    }
    if let Some(dir) = &config.working_dir {
        no_nul_path("working_dir", dir)?;
        if !dir.is_absolute() {
            return Err(DaemonError::invalid(
                "working_dir",
                format!("{} is not an absolute path", dir.display()),
            ));
        }
    }
    let mut keys: Vec<_> = config.env.keys().collect();
    keys.sort();
    for key in keys {
        if !is_env_key(key) {
            return Err(DaemonError::invalid(
                format!("env.{key}"),
                "environment variable names must match [A-Za-z_][A-Za-z0-9_]*",
            ));
        }
        no_nul(&format!("env.{key}"), &config.env[key])?;
    }
    for (field, secs) in [
        ("startup_timeout_secs", config.startup_timeout_secs),
        ("shutdown_timeout_secs", config.shutdown_timeout_secs),
    ] {
        if secs == 0 || secs > MAX_TIMEOUT_SECS {
            return Err(DaemonError::invalid(
                field,
                format!("{secs} is out of range (1 to {MAX_TIMEOUT_SECS} seconds)"),
            ));
        }
    }
    if let Some(readiness) = &config.readiness {
        validate_readiness(readiness)?;
    }
    validate_restart(&config.restart)?;
    if let Some(secs) = config.watchdog_secs {
        if secs == 0 || secs > MAX_TIMEOUT_SECS {
            return Err(DaemonError::invalid(
                "watchdog_secs",
                format!("{secs} is out of range (1 to {MAX_TIMEOUT_SECS} seconds)"),
            ));
        }
    }
    if let Some(liveness) = &config.liveness {
        validate_liveness(liveness)?;
    }
    if let Some(reload) = &config.reload {
        validate_reload(reload)?;
    }
    if let Some(logs) = &config.logs {
        validate_logs(logs)?;
    }
    for (limit, value) in config.limits.entries() {
        if value == Some(0) || value.is_some_and(|v| v > i64::MAX as u64) {
            return Err(DaemonError::invalid(
                limit.field(),
                "must be between 1 and 2^63-1",
            ));
        }
    }
    for (field, value) in [("user", &config.user), ("group", &config.group)] {
        if let Some(v) = value {
            if !is_account_name(v) {
                return Err(DaemonError::invalid(
                    field,
                    format!(
                        "{} is not a valid user or group name (or numeric id)",
                        crate::text::quote(v)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn validate_instance(config: &DaemonConfig, instance: &str) -> Result<()> {
    let bad = |reason: String| Err(DaemonError::invalid("instance", reason));
    if instance.is_empty() || instance.len() > MAX_NAME_LEN {
        return bad(format!("must be 1 to {MAX_NAME_LEN} bytes long"));
    }
    // `/` would leave the PID file's directory; a control character would
    // reach file names and messages. The rest is escaped where it goes.
    if let Some(c) = instance.chars().find(|c| c.is_control() || *c == '/') {
        return bad(format!(
            "{instance:?} contains {c:?}; control characters and '/' are not allowed"
        ));
    }
    if instance.starts_with('.') || instance.starts_with('-') {
        return bad(format!("{instance:?} must not start with '.' or '-'"));
    }
    // Every instance would share one PID file, and so one daemon.
    if config.pid_file.to_str().is_none() {
        return Err(DaemonError::invalid(
            "pid_file",
            "must be UTF-8 for an instance ({instance} is replaced in text)",
        ));
    }
    let pid_file = config.pid_file.to_string_lossy();
    if !pid_file.is_empty() && !super::instance::uses_token(&pid_file) {
        return Err(DaemonError::invalid(
            "pid_file",
            format!("{pid_file} would be shared by every instance: put {{instance}} in it, or leave it empty"),
        ));
    }
    Ok(())
}

fn validate_name(config: &DaemonConfig) -> Result<()> {
    let name = config.name();
    let field = if config.name.is_some() {
        "name"
    } else {
        "binary_path"
    };
    let bad = |reason: String| Err(DaemonError::invalid(field, reason));
    if name.is_empty() {
        return bad("the daemon name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return bad(format!(
            "name {} is longer than {MAX_NAME_LEN} bytes",
            crate::text::quote(&name)
        ));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad(format!(
            "name {} must not start with '.' or '-'",
            crate::text::quote(&name)
        ));
    }
    // Any other character is fine: the name becomes a file name (no `/`)
    // and a unit name (escaped with the systemd-escape algorithm where needed).
    if let Some(c) = name.chars().find(|c| c.is_control() || *c == '/') {
        return bad(format!(
            "name {} contains {}; control characters and '/' are not allowed",
            crate::text::quote(&name),
            if c == '/' {
                "`/`".to_owned()
            } else {
                format!("U+{:04X}", c as u32)
            }
        ));
    }
    Ok(())
}

fn program_path(path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(DaemonError::invalid("binary_path", "is missing"));
    }
    no_nul_path("binary_path", path)?;
    if !path.is_absolute() {
        return Err(DaemonError::invalid(
            "binary_path",
            format!(
                "{} is not an absolute path (the daemon is executed without a shell or PATH search)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The probe's own fields as readiness checks them (the same kinds and
/// rules, under `liveness.`), then the liveness knobs.
fn validate_liveness(l: &Liveness) -> Result<()> {
    validate_probe("liveness", &l.probe())?;
    let range = |field: &str, value: u64, lo: u64, hi: u64, unit: &str| {
        if !(lo..=hi).contains(&value) {
            return Err(DaemonError::invalid(
                format!("liveness.{field}"),
                format!("{value} is out of range ({lo} to {hi}{unit})"),
            ));
        }
        Ok(())
    };
    range(
        "interval_ms",
        l.interval().as_millis() as u64,
        10,
        60_000,
        " ms",
    )?;
    range(
        "timeout_ms",
        l.timeout().as_millis() as u64,
        10,
        600_000,
        " ms",
    )?;
    range("failures", u64::from(l.failures()), 1, 1000, "")?;
    Ok(())
}

/// The signal names `reload.signal` takes: `HUP` or `SIGHUP`, any signal
/// but the two a process cannot handle.
pub(crate) fn reload_signal(name: &str) -> Option<nix::sys::signal::Signal> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>().ok().filter(|s| {
        !matches!(
            s,
            nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP
        )
    })
}

fn validate_reload(r: &ReloadConfig) -> Result<()> {
    match (&r.signal, &r.argv) {
        (Some(_), Some(_)) => Err(DaemonError::invalid(
            "reload",
            "set either `signal` or `argv`, not both",
        )),
        (Some(sig), None) => match reload_signal(sig) {
            Some(_) => Ok(()),
            None => Err(DaemonError::invalid(
                "reload.signal",
                format!(
                    "{} is not a signal name a daemon can handle (HUP, USR1, USR2, ...; not KILL or STOP)",
                    crate::text::quote(sig)
                ),
            )),
        },
        (None, Some(argv)) => {
            let Some(program) = argv.first() else {
                return Err(DaemonError::invalid("reload.argv", "is empty"));
            };
            for (i, a) in argv.iter().enumerate() {
                no_nul(&format!("reload.argv[{i}]"), a)?;
                if a.chars().any(|c| c == '\n' || c == '\r') {
                    return Err(DaemonError::invalid(
                        format!("reload.argv[{i}]"),
                        "contains a line break",
                    ));
                }
            }
            if !Path::new(program).is_absolute() {
                return Err(DaemonError::invalid(
                    "reload.argv",
                    format!(
                        "{} is not an absolute path (no shell or PATH search)",
                        crate::text::quote(program)
                    ),
                ));
            }
            Ok(())
        }
        (None, None) => Ok(()),
    }
}

fn validate_readiness(r: &Readiness) -> Result<()> {
    validate_probe("readiness", r)
}

/// A probe's fields, named under `prefix` (`readiness` or `liveness`).
fn validate_probe(prefix: &str, r: &Readiness) -> Result<()> {
    let interval = match r {
        Readiness::Notify => None,
        Readiness::Tcp {
            address,
            interval_ms,
        } => {
            no_nul(&format!("{prefix}.address"), address)?;
            let ok = address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(DaemonError::invalid(
                    format!("{prefix}.address"),
                    format!("{} is not host:port", crate::text::quote(address)),
                ));
            }
            *interval_ms
        }
        Readiness::Http { url, interval_ms } => {
            no_nul(&format!("{prefix}.url"), url)?;
            let rest = url.strip_prefix("http://");
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/'))
                || url.chars().any(char::is_control)
            {
                return Err(DaemonError::invalid(
                    format!("{prefix}.url"),
                    format!(
                        "{} is not an http:// URL with a host",
                        crate::text::quote(url)
                    ),
                ));
            }
            *interval_ms
        }
        Readiness::Command { argv, interval_ms } => {
            let Some(program) = argv.first() else {
                return Err(DaemonError::invalid(format!("{prefix}.argv"), "is empty"));
            };
            for (i, a) in argv.iter().enumerate() {
                no_nul(&format!("{prefix}.argv[{i}]"), a)?;
            }
            if !Path::new(program).is_absolute() {
                return Err(DaemonError::invalid(
                    format!("{prefix}.argv"),
                    format!(
                        "{} is not an absolute path (no shell or PATH search)",
                        crate::text::quote(program)
                    ),
                ));
            }
            *interval_ms
        }
    };
    if let Some(ms) = interval {
        if !(10..=60_000).contains(&ms) {
            return Err(DaemonError::invalid(
                format!("{prefix}.interval_ms"),
                format!("{ms} is out of range (10 to 60000)"),
            ));
        }
    }
    Ok(())
}

fn validate_restart(r: &RestartConfig) -> Result<()> {
    if r.delay_ms > MAX_TIMEOUT_SECS * 1000 {
        return Err(DaemonError::invalid(
            "restart.delay_ms",
            "is longer than a year",
        ));
    }
    if r.max_delay_ms < r.delay_ms || r.max_delay_ms > MAX_TIMEOUT_SECS * 1000 {
        return Err(DaemonError::invalid(
            "restart.max_delay_ms",
            format!(
                "{} must be at least delay_ms ({}) and at most a year",
                r.max_delay_ms, r.delay_ms
            ),
        ));
    }
    if r.max_restarts == 0 {
        return Err(DaemonError::invalid(
            "restart.max_restarts",
            "must be at least 1",
        ));
    }
    if r.window_secs == 0 || r.window_secs > MAX_TIMEOUT_SECS {
        return Err(DaemonError::invalid(
            "restart.window_secs",
            format!("{} is out of range (1 s to a year)", r.window_secs),
        ));
    }
    Ok(())
}

fn validate_logs(logs: &LogsConfig) -> Result<()> {
    for (field, path) in [("logs.stdout", &logs.stdout), ("logs.stderr", &logs.stderr)] {
        if let Some(p) = path {
            no_nul_path(field, p)?;
            if !p.is_absolute() || p.file_name().is_none() {
                return Err(DaemonError::invalid(
                    field,
                    format!("{} is not an absolute file path", p.display()),
                ));
            }
            if p.to_str().is_none_or(|s| s.chars().any(char::is_control)) {
                return Err(DaemonError::invalid(
                    field,
                    "must be UTF-8 without control characters",
                ));
            }
        }
    }
    if logs.max_bytes == Some(0) {
        return Err(DaemonError::invalid("logs.max_bytes", "must be at least 1"));
    }
    if logs.keep == Some(0) || logs.keep.is_some_and(|k| k > 1000) {
        return Err(DaemonError::invalid(
            "logs.keep",
            "must be between 1 and 1000",
        ));
    }
    Ok(())
}

/// A POSIX-portable user or group name (`[A-Za-z_][A-Za-z0-9_.-]*`, at most 32
/// bytes, optionally ending in `$`), or a numeric id.
fn is_account_name(s: &str) -> bool {
    if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u32>().is_ok();
    }
    let body = s.strip_suffix('$').unwrap_or(s);
    let mut chars = body.chars();
    !body.is_empty()
        && s.len() <= 32
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `[A-Za-z_][A-Za-z0-9_]*`: the names every shell and systemd accept.
pub(crate) fn is_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn no_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(DaemonError::invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

fn no_nul_path(field: &str, value: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if value.as_os_str().as_bytes().contains(&0) {
        return Err(DaemonError::invalid(field, "contains a NUL byte"));
    }
    Ok(())
}
