//! [`UnitSpec`]: the one typed model of a systemd service built from a
//! [`DaemonConfig`], and its two outputs — the persistent unit file (askama
//! template `templates/unit.service`) and the `StartTransientUnit`
//! properties. Both come from the same fields, so a config means the same
//! thing either way.
//!
//! Every string that reaches the unit file passes through
//! [`super::escape`]; the D-Bus properties carry raw values (D-Bus needs no
//! quoting) with environment expansion switched off, so both paths deliver
//! the exact bytes of the config.

use std::time::Duration;

use askama::Template;
use zbus::zvariant::{OwnedValue, Value};

use super::escape;
use crate::config::{DaemonConfig, Limit, Limits, RestartPolicy, Scope};
use crate::error::{DaemonError, Result};
use crate::spec::ServiceSpec;

/// The ownership marker every unit we create carries, read back over D-Bus
/// as the unit's `Documentation` (persistent and transient units alike; it
/// is serialized into the transient unit file and survives `daemon-reload`
/// and `daemon-reexec`). A unit without it is not ours.
pub const OWNERSHIP_MARK: &str =
    "https://docs.rs/daemon-lifecycle#unit-created-by-daemon-lifecycle";

/// The unit-file key (ignored by systemd: `X-` keys are for applications)
/// that marks a unit file on disk as ours, so `install` and `uninstall`
/// can tell before the manager has loaded it.
pub const OWNERSHIP_KEY: &str = "X-DaemonLifecycle";

/// Whether unit-file text carries our [`OWNERSHIP_KEY`] in `[Unit]`.
pub fn text_is_ours(text: &str) -> bool {
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Unit]"
            && line
                .strip_prefix(OWNERSHIP_KEY)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return true;
        }
    }
    false
}

/// A systemd service as we mean it, escaped-by-construction on output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// The unit name: `NAME.service` (see [`unit_name`]), for an instance
    /// `NAME@INSTANCE.service`, for a template `NAME@.service` (see
    /// [`spec_unit_name`]).
    pub unit: String,
    /// A template unit (`NAME@.service`): `{instance}` in the values is
    /// written as the `%I` specifier.
    pub template: bool,
    /// The config file it came from, named in the unit file's header
    /// comment (`daemonctl` sets it; control characters are escaped).
    pub source: Option<String>,
    /// `Description=`.
    pub description: String,
    /// Absolute path of the executable.
    pub executable: String,
    /// The full argv, argv\[0\] = the executable.
    pub argv: Vec<String>,
    /// `Environment=`, sorted by key.
    pub environment: Vec<(String, String)>,
    /// `WorkingDirectory=`.
    pub working_directory: Option<String>,
    /// `Type=notify` (readiness notify) or `Type=exec`.
    pub notify: bool,
    /// `TimeoutStartSec=`.
    pub timeout_start: Duration,
    /// `TimeoutStopSec=`.
    pub timeout_stop: Duration,
    /// `Restart=`.
    pub restart: RestartPolicy,
    /// `RestartSec=` (the first delay; systemd 252 has no exponential backoff).
    pub restart_delay: Duration,
    /// `StartLimitBurst=`.
    pub start_limit_burst: u32,
    /// `StartLimitIntervalSec=`.
    pub start_limit_interval: Duration,
    /// `LimitNOFILE=`, `MemoryMax=`, `LimitCPU=`, `TasksMax=`.
    pub limits: Limits,
    /// `StandardOutput=append:PATH`; `None`: the journal.
    pub stdout_append: Option<String>,
    /// `StandardError=append:PATH`; `None`: the journal.
    pub stderr_append: Option<String>,
    /// `User=` (system scope only).
    pub user: Option<String>,
    /// `Group=` (system scope only).
    pub group: Option<String>,
    /// Which manager it is for.
    pub scope: Scope,
    /// `WatchdogSec=`: the config's `watchdog_secs`, or for a liveness
    /// probe the time within which the probe helper must ping.
    pub watchdog: Option<Duration>,
    /// `WatchdogSignal=SIGTERM` for a liveness probe (its stop is SIGTERM
    /// then SIGKILL); `None`: systemd's SIGABRT.
    pub watchdog_signal: Option<i32>,
    /// `NotifyAccess=`: `exec` for a notify daemon (the reload's
    /// `RELOADING=1` comes from `ExecReload=`), `all` with a liveness
    /// probe (its helper pings from inside the unit).
    pub notify_access: Option<&'static str>,
    /// `ExecReload=` lines, each an argv; `${MAINPID}` in one is systemd's
    /// variable (every other `$` is literal).
    pub exec_reload: Vec<Vec<String>>,
    /// `ExecStartPost=`: the liveness probe helper, if any.
    pub exec_start_post: Option<Vec<String>>,
}

/// The argument that turns the supervisor program (`daemonctl`, or a
/// program calling [`crate::supervisor_init`]) into the liveness probe
/// helper of a systemd unit: `PROGRAM --daemon-lifecycle-liveness UNIT JSON`.
pub const LIVENESS_HELPER_ARG: &str = "--daemon-lifecycle-liveness";

/// What the probe helper runs: the liveness probe, and the readiness
/// probe to wait for first (tcp/http/command readiness), as JSON in its
/// argv.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HelperArgs {
    pub liveness: crate::spec::LivenessSpec,
    pub readiness: Option<crate::config::Readiness>,
    pub startup_timeout_ms: u64,
}

/// Where `kill` is on every systemd host (util-linux or procps).
const KILL: &str = "/bin/kill";
/// `systemd-notify`, which by default waits until the manager has
/// processed its message (a barrier, systemd 246+).
const SYSTEMD_NOTIFY: &str = "/usr/bin/systemd-notify";

/// The supervisor program to run as the liveness helper when none is
/// given: `$DAEMON_LIFECYCLE_SUPERVISOR`, else this program when it called
/// [`crate::supervisor_init`] (as `daemonctl` does).
pub(crate) fn default_probe_helper() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(crate::fork::SUPERVISOR_PATH_ENV) {
        let p = std::path::PathBuf::from(p);
        if p.is_absolute() {
            return Some(p);
        }
    }
    if crate::fork::INIT.load(std::sync::atomic::Ordering::Relaxed)
        == crate::fork::InitState::Called as u8
    {
        return std::env::current_exe().ok();
    }
    None
}

/// The service unit name for a daemon name: the name itself plus `.service`
/// when it is already a valid unit name (`A-Z a-z 0-9 : _ . -`), else the
/// name escaped with the `systemd-escape` algorithm. The mapping is
/// injective: escaped names always contain `\`, verbatim ones never do.
pub fn unit_name(name: &str) -> Result<String> {
    let verbatim = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-'));
    let unit = if verbatim {
        format!("{name}.service")
    } else {
        escape::service_unit_name(name).map_err(|e| DaemonError::invalid("name", e.to_string()))?
    };
    if unit.len() > 255 {
        return Err(DaemonError::invalid(
            "name",
            format!(
                "unit name {} is longer than systemd's 255 bytes",
                crate::text::quote(&unit)
            ),
        ));
    }
    Ok(unit)
}

/// The unit a spec runs as: `NAME.service`; for an instance
/// `NAME@INSTANCE.service`, the instance escaped as `systemd-escape` does
/// (so the `%I` specifier gives it back exactly: `-` is `\x2d`, not a
/// path separator); for a template without an instance, `NAME@.service`.
pub fn spec_unit_name(spec: &ServiceSpec) -> Result<String> {
    let base = unit_name(&spec.name)?;
    let prefix = base.strip_suffix(".service").unwrap_or(&base);
    let unit = match (&spec.instance, spec.is_template()) {
        (Some(instance), _) => format!("{prefix}@{}.service", escape::unit_name_escape(instance)),
        (None, true) => format!("{prefix}@.service"),
        (None, false) => return Ok(base),
    };
    if unit.len() > 255 {
        return Err(DaemonError::invalid(
            "instance",
            format!("unit name {unit:?} is longer than systemd's 255 bytes"),
        ));
    }
    Ok(unit)
}

fn utf8(field: &str, path: &std::path::Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| DaemonError::invalid(field, "systemd needs UTF-8 paths"))
}

impl UnitSpec {
    /// The systemd rendering of `spec` for the manager of `scope`
    /// (normally `spec.scope`; a [`crate::SystemdBackend`] uses its own
    /// bus's). Refuses what systemd
    /// cannot express for that scope (`User=` in a user unit, paths that
    /// are not UTF-8 or not normalized). Pure: nothing on the host is
    /// looked at.
    pub fn from_spec(spec: &ServiceSpec, scope: Scope) -> Result<UnitSpec> {
        Self::from_spec_with_helper(spec, scope, None)
    }

    /// [`UnitSpec::from_spec`] with `helper` as the liveness probe helper
    /// (the supervisor program: `daemonctl`, or a program calling
    /// [`crate::supervisor_init`]); `None`: `$DAEMON_LIFECYCLE_SUPERVISOR`,
    /// else the running program if it called `supervisor_init`. A config
    /// with `liveness` and no helper is refused.
    pub fn from_spec_with_helper(
        spec: &ServiceSpec,
        scope: Scope,
        helper: Option<&std::path::Path>,
    ) -> Result<UnitSpec> {
        let name = &spec.name;
        let executable = utf8("binary_path", &spec.program)?;
        let mut argv = vec![executable.clone()];
        argv.extend(spec.args.iter().cloned());
        let environment: Vec<(String, String)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let working_directory = spec
            .working_dir
            .as_deref()
            .map(|d| utf8("working_dir", d))
            .transpose()?;
        let stdout_append = spec
            .logs
            .stdout
            .as_deref()
            .map(|p| utf8("logs.stdout", p))
            .transpose()?;
        let stderr_append = spec
            .logs
            .stderr
            .as_deref()
            .map(|p| utf8("logs.stderr", p))
            .transpose()?;
        // systemd drops a StandardOutput=append: path that is not normalized
        // (and the logs silently go to the journal), while the transient
        // property fails with a raw bus error: refuse both here, the same way.
        for (field, path) in [
            ("logs.stdout", &stdout_append),
            ("logs.stderr", &stderr_append),
        ] {
            if let Some(p) = path {
                escape::normalized_path(field, p)
                    .map_err(|e| DaemonError::invalid(field, e.to_string()))?;
            }
        }
        if scope == Scope::User {
            for (field, value) in [("user", &spec.run_as.user), ("group", &spec.run_as.group)] {
                if value.is_some() {
                    return Err(DaemonError::invalid(
                        field,
                        "a user unit runs as its user; User=/Group= need scope = \"system\"",
                    ));
                }
            }
        }
        let (watchdog, watchdog_signal, exec_start_post) = match &spec.liveness {
            None => (spec.watchdog, None, None),
            Some(_) if spec.watchdog.is_some() => {
                return Err(DaemonError::invalid(
                    "liveness",
                    "on systemd a liveness probe drives the unit's watchdog (WatchdogSec=), \
                     so it cannot be combined with watchdog_secs",
                ))
            }
            Some(l) => {
                let helper = match helper {
                    Some(h) => h.to_owned(),
                    None => default_probe_helper().ok_or_else(|| {
                        DaemonError::invalid(
                            "liveness",
                            format!(
                                "on systemd the probe runs in a helper inside the unit: the supervisor \
                                 program (daemonctl, or a program calling supervisor_init()); set \
                                 {}=/usr/bin/daemonctl",
                                crate::fork::SUPERVISOR_PATH_ENV
                            ),
                        )
                    })?,
                };
                let args = HelperArgs {
                    liveness: l.clone(),
                    readiness: spec.probe().cloned(),
                    startup_timeout_ms: spec.startup_timeout.as_millis() as u64,
                };
                let json = serde_json::to_string(&args).expect("helper args serialize");
                // The helper pings after every probe: a gap longer than
                // this means the helper itself is gone or hung.
                let round = l.interval + l.timeout;
                (
                    Some(round * 2 + Duration::from_secs(5)),
                    Some(libc::SIGTERM),
                    Some(vec![
                        utf8("liveness", &helper)?,
                        LIVENESS_HELPER_ARG.to_owned(),
                        spec_unit_name(spec)?,
                        json,
                    ]),
                )
            }
        };
        let mut exec_reload = Vec::new();
        if spec.notify() {
            // A notify daemon answers a reload with READY=1. On systemd 252
            // the reload job ends with the last ExecReload= command unless
            // the manager already heard RELOADING=1: sent first, from here,
            // and waited for (systemd-notify's barrier), the job then waits
            // for the daemon's READY=1.
            exec_reload.push(vec![SYSTEMD_NOTIFY.to_owned(), "RELOADING=1".to_owned()]);
        }
        match &spec.reload {
            crate::spec::ReloadSpec::Command(argv) => exec_reload.push(argv.clone()),
            other => {
                let sig = match other {
                    crate::spec::ReloadSpec::Signal(name) => name.clone(),
                    _ => "HUP".to_owned(),
                };
                exec_reload.push(vec![
                    KILL.to_owned(),
                    "-s".to_owned(),
                    sig,
                    "${MAINPID}".to_owned(),
                ]);
            }
        }
        let notify_access = match (&exec_start_post, spec.notify()) {
            (Some(_), _) => Some("all"),
            (None, true) => Some("exec"),
            (None, false) => None,
        };
        let spec = UnitSpec {
            unit: spec_unit_name(spec)?,
            template: spec.is_template(),
            source: None,
            description: match &spec.instance {
                Some(instance) => format!("{name}@{instance} (daemon-lifecycle)"),
                None => format!("{name} (daemon-lifecycle)"),
            },
            executable,
            argv,
            environment,
            working_directory,
            notify: spec.notify(),
            timeout_start: spec.startup_timeout,
            timeout_stop: spec.shutdown_timeout,
            restart: spec.restart.policy,
            restart_delay: spec.restart.delay,
            start_limit_burst: spec.restart.start_limit_burst(),
            start_limit_interval: spec.restart.window,
            limits: spec.limits.clone(),
            stdout_append,
            stderr_append,
            user: spec.run_as.user.clone(),
            group: spec.run_as.group.clone(),
            scope,
            watchdog,
            watchdog_signal,
            notify_access,
            exec_reload,
            exec_start_post,
        };
        // Render once so every refusal of the quoting rules happens here,
        // before anything is sent or written.
        spec.render()?;
        Ok(spec)
    }

    /// [`UnitSpec::from_spec`] of the config's [`ServiceSpec`] for `scope`:
    /// a shortcut for callers that only hold a config.
    pub fn from_config(config: &DaemonConfig, scope: Scope) -> Result<UnitSpec> {
        UnitSpec::from_spec(&ServiceSpec::from_config(config)?, scope)
    }

    fn service_type(&self) -> &'static str {
        if self.notify {
            "notify"
        } else {
            "exec"
        }
    }

    fn restart_str(&self) -> &'static str {
        match self.restart {
            RestartPolicy::Never => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }

    /// The persistent unit file's text.
    pub fn render(&self) -> Result<String> {
        self.render_as(false)
    }

    /// Writes the unit file into the package root `destdir`, where a
    /// package installs it: `usr/lib/systemd/system/UNIT` for the system
    /// scope, `usr/lib/systemd/user/UNIT` for the user scope (directories
    /// created, mode 0755). Atomic, and a link planted at the file is
    /// refused, not followed. Returns the path written.
    pub fn write_into(&self, destdir: &std::path::Path) -> Result<std::path::PathBuf> {
        let text = self.render()?;
        let dir = destdir.join(match self.scope {
            Scope::System => "usr/lib/systemd/system",
            Scope::User => "usr/lib/systemd/user",
        });
        crate::fsutil::write_into_dir(&dir, &self.unit, text.as_bytes(), "unit file")
    }

    /// The text systemd should have serialized for our transient unit into
    /// its `transient/` directory: the unit file without `[Install]`. See
    /// `SystemdBackend`'s start: systemd 252 writes `$` and `;` in
    /// `ExecStart=` arguments as `\$` and `\;`, which it reads back
    /// literally, so a reload would change the argv; this text is what it
    /// reads back unchanged (our quoting, checked against systemd's parser).
    pub(crate) fn render_transient_file(&self) -> Result<String> {
        self.render_as(true)
    }

    fn render_as(&self, transient: bool) -> Result<String> {
        let field =
            |f: &'static str| move |e: escape::EscapeError| DaemonError::invalid(f, e.to_string());
        // A template's values hold `{instance}`: after escaping (which
        // doubles every `%` of the config), the token becomes the `%I`
        // specifier, and `{{instance}}` a literal `{instance}`.
        let spec_token = |escaped: String| {
            if self.template {
                crate::config::instance::substitute(&escaped, "%I")
            } else {
                escaped
            }
        };
        let environment = self
            .environment
            .iter()
            .map(|(k, v)| {
                escape::environment_assignment(k, v)
                    .map(spec_token)
                    .map_err(field("env"))
            })
            .collect::<Result<Vec<_>>>()?;
        let append = |f: &'static str, p: &Option<String>| -> Result<Option<String>> {
            p.as_deref()
                .map(|p| {
                    escape::plain_value(f, p)
                        .map(|v| format!("append:{}", spec_token(v)))
                        .map_err(field(f))
                })
                .transpose()
        };
        let template = UnitFile {
            description: match self.template {
                // `NAME@%I (daemon-lifecycle)`: each instance describes itself.
                true => escape::plain_value("name", &self.description)
                    .map(|d| match d.strip_suffix(" (daemon-lifecycle)") {
                        Some(name) => format!("{name}@%I (daemon-lifecycle)"),
                        None => d,
                    })
                    .map_err(field("name"))?,
                false => escape::plain_value("name", &self.description).map_err(field("name"))?,
            },
            documentation: OWNERSHIP_MARK,
            ownership_key: OWNERSHIP_KEY,
            transient,
            service_type: self.service_type(),
            exec_start: escape::exec_line(&self.executable, &self.argv[1..])
                .map(spec_token)
                .map_err(field("args"))?,
            environment,
            working_directory: self
                .working_directory
                .as_deref()
                .map(|d| {
                    escape::absolute_path_value("WorkingDirectory", d)
                        .map(spec_token)
                        .map_err(field("working_dir"))
                })
                .transpose()?,
            timeout_start: span(self.timeout_start),
            timeout_stop: span(self.timeout_stop),
            // `Restart=no` is systemd's fixed default (not a setting of
            // system.conf): left out. The rest are written even where they
            // equal a default, since those defaults are host settings.
            restart: Some(self.restart_str()).filter(|r| *r != "no"),
            // Without restarts the delay means nothing.
            restart_sec: (self.restart != RestartPolicy::Never).then(|| span(self.restart_delay)),
            generator: concat!("daemon-lifecycle ", env!("CARGO_PKG_VERSION")),
            source: self.source.as_deref().map(crate::text::escape_controls),
            start_limit_burst: self.start_limit_burst,
            start_limit_interval: span(self.start_limit_interval),
            limits: self
                .limits
                .entries()
                .into_iter()
                .filter_map(|(limit, value)| Some((directive(limit).0, value?)))
                .collect(),
            standard_output: append("logs.stdout", &self.stdout_append)?,
            standard_error: append("logs.stderr", &self.stderr_append)?,
            user: self
                .user
                .as_deref()
                .map(|u| escape::plain_value("user", u).map_err(field("user")))
                .transpose()?,
            group: self
                .group
                .as_deref()
                .map(|g| escape::plain_value("group", g).map_err(field("group")))
                .transpose()?,
            wanted_by: match self.scope {
                Scope::System => "multi-user.target",
                Scope::User => "default.target",
            },
            watchdog_sec: self.watchdog.map(span),
            watchdog_signal: self.watchdog_signal.map(signal_name),
            notify_access: self.notify_access,
            exec_reload: self
                .exec_reload
                .iter()
                .map(|argv| exec_line_with_mainpid(argv).map_err(field("reload.argv")))
                .collect::<Result<Vec<_>>>()?,
            exec_start_post: self
                .exec_start_post
                .as_ref()
                .map(|argv| escape::exec_line(&argv[0], &argv[1..]).map_err(field("liveness")))
                .transpose()?,
        };
        let mut text = template.render().map_err(|e| DaemonError::Io {
            context: "render unit template".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(text)
    }

    /// The properties for `StartTransientUnit`, from the same fields as
    /// [`UnitSpec::render`].
    pub(crate) fn transient_properties(&self) -> Vec<(&'static str, OwnedValue)> {
        fn v<'a>(value: impl Into<Value<'a>>) -> OwnedValue {
            OwnedValue::try_from(value.into()).expect("plain values have no file descriptors")
        }
        let usec = |d: Duration| d.as_micros() as u64;
        let mut props = vec![
            ("Description", v(self.description.as_str())),
            ("Type", v(self.service_type())),
            ("Documentation", v(vec![OWNERSHIP_MARK.to_owned()])),
            // ExecStart (`a(sasb)`), not ExecStartEx: systemd 252 serializes
            // ExecStartEx into the transient unit file as `ExecStartEx=`,
            // which it cannot read back, so every daemon-reload broke the
            // unit. ExecStart expands `$` at exec time, so `$` is written
            // `$$`, exactly as in the unit file; the process gets the bytes
            // of the config either way.
            (
                "ExecStart",
                v(vec![(
                    self.executable.clone(),
                    self.argv
                        .iter()
                        .map(|a| a.replace('$', "$$"))
                        .collect::<Vec<_>>(),
                    false,
                )]),
            ),
            (
                "Environment",
                v(self
                    .environment
                    .iter()
                    .map(|(k, val)| format!("{k}={val}"))
                    .collect::<Vec<_>>()),
            ),
            ("TimeoutStartUSec", v(usec(self.timeout_start))),
            ("TimeoutStopUSec", v(usec(self.timeout_stop))),
            ("Restart", v(self.restart_str())),
            ("RestartUSec", v(usec(self.restart_delay))),
            ("StartLimitBurst", v(self.start_limit_burst)),
            ("StartLimitIntervalUSec", v(usec(self.start_limit_interval))),
            ("KillMode", v("control-group")),
        ];
        if let Some(dir) = &self.working_directory {
            props.push(("WorkingDirectory", v(dir.as_str())));
        }
        for (limit, value) in self.limits.entries() {
            let Some(n) = value else { continue };
            let (name, soft) = directive(limit);
            props.push((name, v(n)));
            props.extend(soft.map(|soft| (soft, v(n))));
        }
        if let Some(p) = &self.stdout_append {
            props.push(("StandardOutputFileToAppend", v(p.as_str())));
        }
        if let Some(p) = &self.stderr_append {
            props.push(("StandardErrorFileToAppend", v(p.as_str())));
        }
        if let Some(u) = &self.user {
            props.push(("User", v(u.as_str())));
        }
        if let Some(g) = &self.group {
            props.push(("Group", v(g.as_str())));
        }
        if let Some(w) = self.watchdog {
            props.push(("WatchdogUSec", v(usec(w))));
        }
        if let Some(sig) = self.watchdog_signal {
            props.push(("WatchdogSignal", v(sig)));
        }
        if let Some(access) = self.notify_access {
            props.push(("NotifyAccess", v(access)));
        }
        // Exec properties expand `$` at exec time: literal ones are `$$`,
        // as in the unit file; `${MAINPID}` stays the variable.
        let exec = |argv: &[String]| {
            (
                argv[0].clone(),
                argv.iter()
                    .map(|a| match a.as_str() {
                        "${MAINPID}" => a.clone(),
                        _ => a.replace('$', "$$"),
                    })
                    .collect::<Vec<_>>(),
                false,
            )
        };
        props.push((
            "ExecReload",
            v(self.exec_reload.iter().map(|a| exec(a)).collect::<Vec<_>>()),
        ));
        if let Some(argv) = &self.exec_start_post {
            props.push(("ExecStartPost", v(vec![exec(argv)])));
        }
        props
    }
}

/// A duration as a person writes it in a unit file (systemd.time(7)):
/// `10s`, `100ms`, `1min 30s`, `2h`; `0` for zero. Exact to the
/// microsecond, so systemd reads back the same value.
fn span(d: Duration) -> String {
    let mut us = d.as_micros();
    if us == 0 {
        return "0".into();
    }
    let mut parts = Vec::new();
    for (unit, size) in [
        ("d", 86_400_000_000u128),
        ("h", 3_600_000_000),
        ("min", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
        ("us", 1),
    ] {
        if us >= size {
            parts.push(format!("{}{unit}", us / size));
            us %= size;
        }
    }
    parts.join(" ")
}

/// An `ExecReload=` line: the argv quoted as every Exec line, where the
/// word `${MAINPID}` is systemd's variable (a daemon's own `$` stay
/// literal, `$$`).
fn exec_line_with_mainpid(argv: &[String]) -> std::result::Result<String, escape::EscapeError> {
    let mainpid = argv.last().is_some_and(|a| a == "${MAINPID}");
    let words = if mainpid {
        &argv[1..argv.len() - 1]
    } else {
        &argv[1..]
    };
    let mut line = escape::exec_line(&argv[0], words)?;
    if mainpid {
        line.push_str(" ${MAINPID}");
    }
    Ok(line)
}

/// `SIGTERM` for 15: what `WatchdogSignal=` reads.
fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| sig.to_string())
}

/// A limit's unit-file directive (also its transient property), and the
/// property that sets the soft limit where the directive sets both.
/// `MemoryMax=` and `TasksMax=` are cgroup limits: stronger than the fork
/// backend's `RLIMIT_AS` and `RLIMIT_NPROC`, since they count the whole
/// unit, not one process or user.
fn directive(limit: Limit) -> (&'static str, Option<&'static str>) {
    match limit {
        Limit::OpenFiles => ("LimitNOFILE", Some("LimitNOFILESoft")),
        Limit::MemoryBytes => ("MemoryMax", None),
        Limit::CpuSecs => ("LimitCPU", Some("LimitCPUSoft")),
        Limit::Processes => ("TasksMax", None),
    }
}

/// The askama view of a [`UnitSpec`]: every string already escaped.
#[derive(Template)]
#[template(path = "unit.service", escape = "none")]
struct UnitFile {
    description: String,
    documentation: &'static str,
    ownership_key: &'static str,
    /// The text for a transient unit's file (no `[Install]`).
    transient: bool,
    service_type: &'static str,
    exec_start: String,
    environment: Vec<String>,
    working_directory: Option<String>,
    timeout_start: String,
    timeout_stop: String,
    restart: Option<&'static str>,
    restart_sec: Option<String>,
    /// `daemon-lifecycle VERSION`, for the header.
    generator: &'static str,
    /// The config file, for the header.
    source: Option<String>,
    start_limit_burst: u32,
    start_limit_interval: String,
    /// `(directive, value)` of each set limit.
    limits: Vec<(&'static str, u64)>,
    standard_output: Option<String>,
    standard_error: Option<String>,
    user: Option<String>,
    group: Option<String>,
    wanted_by: &'static str,
    watchdog_sec: Option<String>,
    watchdog_signal: Option<String>,
    notify_access: Option<&'static str>,
    exec_reload: Vec<String>,
    exec_start_post: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(config: DaemonConfig) -> UnitSpec {
        UnitSpec::from_config(&config, Scope::User).unwrap()
    }

    #[test]
    fn unit_file_text_is_ours_only_with_the_key_in_unit() {
        assert!(text_is_ours("[Unit]\nX-DaemonLifecycle=yes\n"));
        assert!(text_is_ours(
            "[Unit]\nDescription=x\nX-DaemonLifecycle = yes\n[Service]\n"
        ));
        assert!(!text_is_ours("[Service]\nX-DaemonLifecycle=yes\n"));
        assert!(!text_is_ours("[Unit]\n# X-DaemonLifecycle=yes\n"));
        assert!(!text_is_ours("[Unit]\nX-DaemonLifecycleX=yes\n"));
    }

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("queen-rbee").unwrap(), "queen-rbee.service");
        assert_eq!(unit_name("a.b_c:d").unwrap(), "a.b_c:d.service");
        assert_eq!(unit_name("my daemon").unwrap(), "my\\x20daemon.service");
        assert_eq!(unit_name("a@b").unwrap(), "a\\x40b.service");
        assert!(unit_name(&"x".repeat(300)).is_err());
    }

    #[test]
    fn renders_a_hostile_config_safely() {
        let config = DaemonConfig::new("/bin/echo", "/tmp/x.pid")
            .with_name("hostile")
            .with_args(["a b", "100%", "$HOME", ";", "quote\"d", "back\\slash\\"])
            .with_env("GREETING", "hello \"world\" 50% $USER");
        let text = spec(config).render().unwrap();
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert!(exec.contains("%%") && exec.contains("$$HOME"), "{exec}");
        assert!(!exec.contains(" ; "), "a lone ; must be quoted: {exec}");
        let env = text
            .lines()
            .find(|l| l.starts_with("Environment="))
            .unwrap();
        assert!(env.starts_with("Environment=\"GREETING="), "{env}");
        assert!(env.contains("50%%"), "{env}");
    }

    #[test]
    fn control_characters_are_refused() {
        let config =
            DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_args(["a\nExecStartPre=/bin/evil"]);
        let err = UnitSpec::from_config(&config, Scope::User).unwrap_err();
        assert!(
            matches!(err, DaemonError::InvalidConfig { ref field, .. } if field == "args"),
            "{err:?}"
        );
        let config = DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_env("A", "x\ry");
        assert!(UnitSpec::from_config(&config, Scope::User).is_err());
    }

    #[test]
    fn templates_write_the_instance_as_a_specifier_and_instances_are_escaped() {
        let mut config = DaemonConfig::new("/usr/bin/llm-worker-rbee", "")
            .with_args(["--gpu", "{instance}", "100%", "{{instance}}"])
            .with_env("WORKER", "w-{instance}")
            .with_working_dir("/var/lib/worker/{instance}");
        let template = UnitSpec::from_config(&config, Scope::System).unwrap();
        assert_eq!(template.unit, "llm-worker-rbee@.service");
        let text = template.render().unwrap();
        for line in [
            "ExecStart=\"/usr/bin/llm-worker-rbee\" \"--gpu\" \"%I\" \"100%%\" \"{instance}\"",
            "Environment=\"WORKER=w-%I\"",
            "WorkingDirectory=/var/lib/worker/%I",
            "Description=llm-worker-rbee@%I (daemon-lifecycle)",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        config.instance = Some("gpu-0 é".into());
        let instance = UnitSpec::from_config(&config, Scope::System).unwrap();
        // systemd-escape: `-` and non-ASCII as \xNN, so %I gives the name back.
        assert_eq!(
            instance.unit,
            "llm-worker-rbee@gpu\\x2d0\\x20\\xc3\\xa9.service"
        );
        assert_eq!(instance.argv[2], "gpu-0 é");
        assert_eq!(instance.argv[4], "{instance}");
        assert!(!instance.template);
    }

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        let ms = Duration::from_millis;
        assert_eq!(span(ms(0)), "0");
        assert_eq!(span(ms(100)), "100ms");
        assert_eq!(span(ms(10_000)), "10s");
        assert_eq!(span(ms(90_500)), "1min 30s 500ms");
        assert_eq!(span(ms(7_200_000)), "2h");
        assert_eq!(span(Duration::from_secs(365 * 86_400)), "365d");
        assert_eq!(span(Duration::from_micros(1_000_001)), "1s 1us");
    }

    #[test]
    fn health_directives() {
        let line = |text: &str, key: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with(key))
                .map(str::to_owned)
                .collect()
        };
        // Default: SIGHUP to the main PID; no watchdog, no NotifyAccess.
        let text = spec(DaemonConfig::new("/bin/echo", "/tmp/x.pid"))
            .render()
            .unwrap();
        assert_eq!(
            line(&text, "ExecReload="),
            [r#"ExecReload="/bin/kill" "-s" "HUP" ${MAINPID}"#]
        );
        assert!(line(&text, "Watchdog").is_empty() && line(&text, "NotifyAccess").is_empty());
        // A notify daemon with a watchdog and a reload command.
        let mut config = DaemonConfig::new("/bin/echo", "/tmp/x.pid");
        config.readiness = Some(crate::config::Readiness::Notify);
        config.watchdog_secs = Some(20);
        config.reload = Some(crate::config::ReloadConfig {
            argv: Some(vec!["/usr/sbin/reload-it".into(), "$x 100%".into()]),
            signal: None,
        });
        let text = spec(config.clone()).render().unwrap();
        assert_eq!(line(&text, "WatchdogSec="), ["WatchdogSec=20s"]);
        assert_eq!(line(&text, "NotifyAccess="), ["NotifyAccess=exec"]);
        assert_eq!(
            line(&text, "ExecReload="),
            [
                r#"ExecReload="/usr/bin/systemd-notify" "RELOADING=1""#,
                r#"ExecReload="/usr/sbin/reload-it" "$$x 100%%""#
            ]
        );
        // A liveness probe: the helper, its watchdog, SIGTERM, NotifyAccess=all.
        config.readiness = None;
        config.liveness = Some(
            toml::from_str("kind = \"tcp\"\naddress = \"127.0.0.1:80\"\ninterval_ms = 1000")
                .unwrap(),
        );
        let spec_of = ServiceSpec::from_config(&config).unwrap();
        let err = UnitSpec::from_spec_with_helper(
            &spec_of,
            Scope::User,
            Some("/usr/bin/daemonctl".as_ref()),
        )
        .unwrap_err();
        assert!(matches!(err, DaemonError::InvalidConfig { ref field, .. } if field == "liveness"));
        config.watchdog_secs = None;
        let spec_of = ServiceSpec::from_config(&config).unwrap();
        let unit = UnitSpec::from_spec_with_helper(
            &spec_of,
            Scope::User,
            Some("/usr/bin/daemonctl".as_ref()),
        )
        .unwrap();
        let text = unit.render().unwrap();
        assert_eq!(line(&text, "WatchdogSec="), ["WatchdogSec=9s"]);
        assert_eq!(line(&text, "WatchdogSignal="), ["WatchdogSignal=SIGTERM"]);
        assert_eq!(line(&text, "NotifyAccess="), ["NotifyAccess=all"]);
        let post = line(&text, "ExecStartPost=");
        assert_eq!(post.len(), 1);
        assert!(
            post[0].starts_with(r#"ExecStartPost="/usr/bin/daemonctl" "--daemon-lifecycle-liveness" "echo.service" "{"#),
            "{post:?}"
        );
        // The helper's arguments read back as the probe.
        let props = unit.transient_properties();
        let (_, value) = props.iter().find(|(k, _)| *k == "ExecStartPost").unwrap();
        let entries: Vec<(String, Vec<String>, bool)> =
            value.try_clone().unwrap().try_into().unwrap();
        let args: HelperArgs = serde_json::from_str(&entries[0].1[3]).unwrap();
        assert_eq!(args.liveness, spec_of.liveness.unwrap());
    }

    #[test]
    fn user_scope_refuses_user_and_group() {
        let mut config = DaemonConfig::new("/bin/echo", "/tmp/x.pid");
        config.user = Some("nobody".into());
        let err = UnitSpec::from_config(&config, Scope::User).unwrap_err();
        assert!(matches!(err, DaemonError::InvalidConfig { ref field, .. } if field == "user"));
        let text = UnitSpec::from_config(&config, Scope::System)
            .unwrap()
            .render()
            .unwrap();
        assert!(text.contains("\nUser=nobody\n"), "{text}");
    }
}
