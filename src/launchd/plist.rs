//! [`PlistSpec`]: the launchd rendering of a [`ServiceSpec`], a job
//! property list (launchd.plist(5)) written with the `plist` crate's XML
//! serializer, never a text template.
//!
//! Every key comes from one field of the model; what launchd cannot
//! express (notify readiness, a memory limit, the back-off ceiling, the
//! start limit, log rotation) is named in [`PlistSpec::warning`], never
//! silently dropped. Values launchd or XML cannot carry (control
//! characters but TAB, paths that are not UTF-8) are refused with a typed
//! error naming the field, as for systemd. The output is byte-for-byte the same
//! for the same spec: keys in a fixed order, the environment sorted.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Limit, Readiness, RestartPolicy, Scope};
use crate::error::{DaemonError, Result};
use crate::spec::ServiceSpec;

/// The launchd job label for a daemon name: the name itself, when it only
/// holds `A-Z a-z 0-9 . _ -` (reverse-DNS names such as
/// `com.example.queen-rbee` do). Any other name is refused, not escaped: a
/// label is also the plist's file name and what a person types after
/// `launchctl print gui/501/`, and an escaped label would be neither
/// readable nor guessable. Give such a daemon a `name` that is a label.
/// One instance of a template config is `NAME@INSTANCE` (the instance
/// in the same alphabet); a template itself has no plist.
///
/// ```
/// use daemon_lifecycle::launchd::label;
///
/// assert_eq!(label("com.example.queen-rbee").unwrap(), "com.example.queen-rbee");
/// assert!(label("my daemon").is_err());
/// ```
pub fn label(name: &str) -> Result<String> {
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(DaemonError::invalid(
            "name",
            format!(
                "{name:?} contains {c:?}; a launchd label (and the plist's file name) only holds \
                 A-Z a-z 0-9 . _ - : give the daemon a `name` such as com.example.NAME"
            ),
        ));
    }
    if name.is_empty() || name.starts_with('.') || name.starts_with('-') {
        return Err(DaemonError::invalid(
            "name",
            format!("{name:?} is not a launchd label"),
        ));
    }
    Ok(name.to_owned())
}

/// The label of one instance of a template config: `NAME@INSTANCE`, both
/// parts within the label alphabet (`@` only ever separates them, so no
/// two name/instance pairs share a label).
fn instance_label(name: &str, instance: &str) -> Result<String> {
    let name = label(name)?;
    if instance.is_empty()
        || !instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(DaemonError::invalid(
            "instance",
            format!(
                "{instance:?}: a launchd label (NAME@INSTANCE) only holds A-Z a-z 0-9 . _ - \
                 in the instance"
            ),
        ));
    }
    Ok(format!("{name}@{instance}"))
}

/// What launchd restarts, the `KeepAlive` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeepAlive {
    /// `KeepAlive = false`: restart policy `never`.
    Never,
    /// `KeepAlive = { SuccessfulExit = false }`: restart after an exit with
    /// a non-zero code or by a signal (policy `on-failure`).
    OnFailure,
    /// `KeepAlive = true`: restart after any exit (policy `always`).
    Always,
}

/// The session type an agent is loaded into (`LimitLoadToSessionType`):
/// set only when the job goes into a `user/UID` domain, which is the
/// `Background` session and refuses a plain (Aqua) agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionType {
    Background,
}

/// A launchd job as we mean it, rendered by [`PlistSpec::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlistSpec {
    /// `Label` (see [`label`]).
    pub label: String,
    /// `ProgramArguments`: the executable, then the arguments, verbatim.
    pub program_arguments: Vec<String>,
    /// `EnvironmentVariables`, sorted by key.
    pub environment: BTreeMap<String, String>,
    /// `WorkingDirectory` (unset: launchd's `/`).
    pub working_directory: Option<String>,
    /// `KeepAlive`.
    pub keep_alive: KeepAlive,
    /// `ThrottleInterval`: the restart delay in whole seconds (rounded up).
    pub throttle_interval: u64,
    /// `ExitTimeOut`: seconds between SIGTERM and SIGKILL.
    pub exit_timeout: u64,
    /// `StandardOutPath`.
    pub stdout: Option<String>,
    /// `StandardErrorPath`.
    pub stderr: Option<String>,
    /// `SoftResourceLimits` and `HardResourceLimits` (both the same):
    /// `NumberOfFiles`.
    pub number_of_files: Option<u64>,
    /// `NumberOfProcesses`.
    pub number_of_processes: Option<u64>,
    /// `CPU` (seconds).
    pub cpu: Option<u64>,
    /// `UserName` (daemons, system scope, only).
    pub user_name: Option<String>,
    /// `GroupName` (daemons only).
    pub group_name: Option<String>,
    /// Agent (`user`) or daemon (`system`).
    pub scope: Scope,
    /// The config fields launchd cannot express, with why.
    pub unexpressed: Vec<String>,
    pub(crate) session_type: Option<SessionType>,
}

impl PlistSpec {
    /// The launchd rendering of `spec` for `scope` (an agent for
    /// [`Scope::User`], a daemon for [`Scope::System`]). Refuses what a
    /// plist cannot carry: control characters in any value, paths that
    /// are not UTF-8, `user`/`group` for an agent, a name that is not a
    /// label. Pure: nothing on the host is looked at.
    pub fn from_spec(spec: &ServiceSpec, scope: Scope) -> Result<PlistSpec> {
        if spec.is_template() {
            return Err(DaemonError::invalid(
                "instance",
                "launchd has no template jobs: render or run one instance of it \
                 (daemonctl --instance NAME)",
            ));
        }
        let label = match &spec.instance {
            Some(instance) => instance_label(&spec.name, instance)?,
            None => label(&spec.name)?,
        };
        let mut program_arguments = vec![text_path("binary_path", &spec.program)?];
        for (i, arg) in spec.args.iter().enumerate() {
            program_arguments.push(text(&format!("args[{i}]"), arg)?);
        }
        let mut environment = BTreeMap::new();
        for (key, value) in &spec.env {
            environment.insert(key.clone(), text(&format!("env.{key}"), value)?);
        }
        let path = |field: &str, p: &Option<std::path::PathBuf>| {
            p.as_deref().map(|p| text_path(field, p)).transpose()
        };
        if scope == Scope::User {
            for (field, value) in [("user", &spec.run_as.user), ("group", &spec.run_as.group)] {
                if value.is_some() {
                    return Err(DaemonError::invalid(
                        field,
                        "a launchd agent runs as its user; UserName/GroupName need scope = \"system\" (a daemon)",
                    ));
                }
            }
        }
        let user_name = spec
            .run_as
            .user
            .as_deref()
            .map(|u| text("user", u))
            .transpose()?;
        let group_name = spec
            .run_as
            .group
            .as_deref()
            .map(|g| text("group", g))
            .transpose()?;
        Ok(PlistSpec {
            label,
            program_arguments,
            environment,
            working_directory: path("working_dir", &spec.working_dir)?,
            keep_alive: match spec.restart.policy {
                RestartPolicy::Never => KeepAlive::Never,
                RestartPolicy::OnFailure => KeepAlive::OnFailure,
                RestartPolicy::Always => KeepAlive::Always,
            },
            throttle_interval: whole_seconds(spec.restart.delay),
            exit_timeout: whole_seconds(spec.shutdown_timeout),
            stdout: path("logs.stdout", &spec.logs.stdout)?,
            stderr: path("logs.stderr", &spec.logs.stderr)?,
            number_of_files: spec.limits.nofile,
            number_of_processes: spec.limits.processes,
            cpu: spec.limits.cpu_secs,
            user_name,
            group_name,
            scope,
            unexpressed: unexpressed(spec),
            session_type: None,
        })
    }

    /// The same job for a `user/UID` domain (the Background session).
    pub(crate) fn for_session(mut self, session: Option<SessionType>) -> PlistSpec {
        self.session_type = session;
        self
    }

    /// The one warning about what the plist leaves out, naming every field
    /// (`None`: everything in the config is in the plist).
    pub fn warning(&self) -> Option<String> {
        if self.unexpressed.is_empty() {
            return None;
        }
        Some(format!(
            "launchd cannot express {}; the plist for {} leaves {} out",
            self.unexpressed.join(", "),
            self.label,
            if self.unexpressed.len() == 1 {
                "it"
            } else {
                "them"
            }
        ))
    }

    /// The file name, `LABEL.plist`.
    pub fn file_name(&self) -> String {
        format!("{}.plist", self.label)
    }

    /// Writes the plist into a package tree rooted at `destdir`:
    /// `Library/LaunchDaemons/LABEL.plist` for a daemon,
    /// `Library/LaunchAgents/LABEL.plist` for an agent (loaded for every
    /// user at login); returns the path written.
    pub fn write_into(&self, destdir: &Path) -> Result<std::path::PathBuf> {
        let bytes = self.render()?;
        let dir = destdir.join(match self.scope {
            Scope::System => "Library/LaunchDaemons",
            Scope::User => "Library/LaunchAgents",
        });
        crate::fsutil::write_into_dir(&dir, &self.file_name(), &bytes, "plist")
    }

    /// The XML property list, ending in a newline.
    pub fn render(&self) -> Result<Vec<u8>> {
        let limits = ResourceLimits {
            cpu: self.cpu,
            number_of_files: self.number_of_files,
            number_of_processes: self.number_of_processes,
        };
        let limits = (!limits.is_empty()).then_some(&limits);
        let doc = Document {
            label: &self.label,
            program_arguments: &self.program_arguments,
            environment_variables: &self.environment,
            working_directory: self.working_directory.as_deref(),
            run_at_load: true,
            keep_alive: match self.keep_alive {
                KeepAlive::Never => KeepAliveValue::Bool(false),
                KeepAlive::Always => KeepAliveValue::Bool(true),
                KeepAlive::OnFailure => KeepAliveValue::Conditions {
                    successful_exit: false,
                },
            },
            throttle_interval: self.throttle_interval,
            exit_timeout: self.exit_timeout,
            standard_out_path: self.stdout.as_deref(),
            standard_error_path: self.stderr.as_deref(),
            soft_resource_limits: limits,
            hard_resource_limits: limits,
            user_name: self.user_name.as_deref(),
            group_name: self.group_name.as_deref(),
            init_groups: self.user_name.is_some().then_some(true),
            limit_load_to_session_type: self.session_type.map(|s| match s {
                SessionType::Background => "Background",
            }),
            process_type: "Standard",
            abandon_process_group: false,
        };
        let mut out = Vec::new();
        plist::to_writer_xml(&mut out, &doc).map_err(|e| DaemonError::Io {
            context: format!("serialize the plist of {}", self.label),
            source: std::io::Error::other(e.to_string()),
        })?;
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        Ok(out)
    }
}

/// The job's keys in the order they are written.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Document<'a> {
    label: &'a str,
    program_arguments: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    environment_variables: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_directory: Option<&'a str>,
    run_at_load: bool,
    keep_alive: KeepAliveValue,
    throttle_interval: u64,
    #[serde(rename = "ExitTimeOut")]
    exit_timeout: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    standard_out_path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    standard_error_path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    soft_resource_limits: Option<&'a ResourceLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hard_resource_limits: Option<&'a ResourceLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    init_groups: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit_load_to_session_type: Option<&'static str>,
    process_type: &'static str,
    abandon_process_group: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum KeepAliveValue {
    Bool(bool),
    Conditions {
        #[serde(rename = "SuccessfulExit")]
        successful_exit: bool,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ResourceLimits {
    #[serde(rename = "CPU", skip_serializing_if = "Option::is_none")]
    cpu: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    number_of_files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    number_of_processes: Option<u64>,
}

impl ResourceLimits {
    fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.number_of_files.is_none() && self.number_of_processes.is_none()
    }
}

/// Whole seconds, rounded up (launchd's intervals are integers).
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A value as a plist string: no C0 control character but TAB (CR, LF,
/// NUL and the others: XML 1.0 cannot carry most of them at all, a parser
/// turns a CR into a LF, and a LF would let a value fake a line of
/// launchctl's line-oriented `print`), and neither of the two code points
/// XML forbids. TAB is carried as it is (as on systemd and the fork
/// backend).
fn text(field: &str, value: &str) -> Result<String> {
    if let Some(c) = value.chars().find(|c| {
        (c.is_ascii_control() && !matches!(c, '\t' | '\u{7f}'))
            || matches!(c, '\u{fffe}' | '\u{ffff}')
    }) {
        return Err(DaemonError::invalid(
            field,
            format!(
                "contains the control character U+{:04X}, which a launchd plist cannot carry",
                c as u32
            ),
        ));
    }
    Ok(value.to_owned())
}

fn text_path(field: &str, path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| DaemonError::invalid(field, "launchd needs UTF-8 paths"))?;
    text(field, s)
}

/// What the plist leaves out: the config fields launchd has no key for.
fn unexpressed(spec: &ServiceSpec) -> Vec<String> {
    let mut out = Vec::new();
    if matches!(spec.readiness, Some(Readiness::Notify)) {
        out.push(
            "readiness = notify (launchd has no READY=1 protocol: the job counts as ready once running)"
                .to_owned(),
        );
    }
    for (limit, value) in spec.limits.entries() {
        if limit == Limit::MemoryBytes && value.is_some() {
            out.push("limits.memory_bytes (launchd has no address-space limit)".to_owned());
        }
    }
    let restart = &spec.restart;
    if restart.policy != RestartPolicy::Never {
        if restart.delay.subsec_nanos() > 0 {
            out.push(format!(
                "restart.delay_ms below whole seconds (ThrottleInterval = {} s)",
                whole_seconds(restart.delay)
            ));
        }
        if restart.max_delay > restart.delay {
            out.push(
                "restart.max_delay_ms (no back-off: launchd waits ThrottleInterval every time)"
                    .to_owned(),
            );
        }
        out.push(
            "restart.max_restarts / restart.window_secs (no start limit: launchd restarts without end)"
                .to_owned(),
        );
    }
    if spec.logs.max_bytes.is_some() {
        out.push("logs.max_bytes / logs.keep (launchd does not rotate log files)".to_owned());
    }
    if spec.watchdog.is_some() {
        out.push("watchdog_secs (launchd has no watchdog: a hung daemon stays running)".to_owned());
    }
    if spec.liveness.is_some() {
        out.push(
            "liveness (launchd has no liveness probe: a daemon that stops answering stays running)"
                .to_owned(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DaemonConfig;

    fn spec(config: DaemonConfig) -> ServiceSpec {
        ServiceSpec::from_config(&config).unwrap()
    }

    #[test]
    fn labels_are_names_within_the_label_alphabet() {
        assert_eq!(label("a.b_c-D9").unwrap(), "a.b_c-D9");
        for bad in ["a b", "a/b", "é", "a:b", "a@b", ""] {
            assert!(label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn instances_are_name_at_instance_and_templates_have_no_plist() {
        let config = DaemonConfig::new("/bin/sleep", "")
            .with_name("com.example.worker")
            .with_args(["{instance}"]);
        let err = PlistSpec::from_spec(&spec(config.clone()), Scope::User).unwrap_err();
        assert!(matches!(err, DaemonError::InvalidConfig { ref field, .. } if field == "instance"));
        let plist = PlistSpec::from_spec(&spec(config.clone().with_instance("gpu-0")), Scope::User)
            .unwrap();
        assert_eq!(plist.label, "com.example.worker@gpu-0");
        assert_eq!(plist.program_arguments[1], "gpu-0");
        let err =
            PlistSpec::from_spec(&spec(config.with_instance("gpu 0")), Scope::User).unwrap_err();
        assert!(matches!(err, DaemonError::InvalidConfig { ref field, .. } if field == "instance"));
    }

    #[test]
    fn renders_a_minimal_agent() {
        let config = DaemonConfig::new("/bin/sleep", "/tmp/x.pid")
            .with_name("com.example.sleep")
            .with_args(["1000"]);
        let plist = PlistSpec::from_spec(&spec(config), Scope::User).unwrap();
        let text = String::from_utf8(plist.render().unwrap()).unwrap();
        assert!(text.starts_with("<?xml"), "{text}");
        assert!(text.contains("<key>Label</key>"), "{text}");
        assert!(text.contains("<key>AbandonProcessGroup</key>"), "{text}");
        assert!(!text.contains("UserName"), "{text}");
        assert!(!text.contains("LimitLoadToSessionType"), "{text}");
        assert_eq!(plist.warning(), None);
        let value: plist::Value = plist::from_bytes(text.as_bytes()).unwrap();
        let dict = value.as_dictionary().unwrap();
        assert_eq!(dict["KeepAlive"], plist::Value::Boolean(false));
        assert_eq!(dict["ExitTimeOut"], plist::Value::Integer(10.into()));
        assert_eq!(dict["ProcessType"], plist::Value::String("Standard".into()));
    }

    #[test]
    fn keep_alive_follows_the_restart_policy() {
        let with = |policy| {
            let mut config = DaemonConfig::new("/bin/sleep", "/tmp/x.pid");
            config.restart.policy = policy;
            let bytes = PlistSpec::from_spec(&spec(config), Scope::User)
                .unwrap()
                .render()
                .unwrap();
            let value: plist::Value = plist::from_bytes(&bytes).unwrap();
            value.as_dictionary().unwrap()["KeepAlive"].clone()
        };
        assert_eq!(with(RestartPolicy::Never), plist::Value::Boolean(false));
        assert_eq!(with(RestartPolicy::Always), plist::Value::Boolean(true));
        let on_failure = with(RestartPolicy::OnFailure);
        assert_eq!(
            on_failure.as_dictionary().unwrap()["SuccessfulExit"],
            plist::Value::Boolean(false)
        );
    }

    #[test]
    fn control_characters_are_refused_naming_the_field() {
        for (config, field) in [
            (
                DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_args(["ok", "a\nb"]),
                "args[1]",
            ),
            (
                DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_args(["bell\u{7}"]),
                "args[0]",
            ),
            (
                DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_env("A", "x\ry"),
                "env.A",
            ),
            (
                DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_args(["\u{1b}[31m"]),
                "args[0]",
            ),
            (
                DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_args(["\u{ffff}"]),
                "args[0]",
            ),
        ] {
            let err = PlistSpec::from_spec(&spec(config), Scope::User).unwrap_err();
            assert!(
                matches!(err, DaemonError::InvalidConfig { field: ref f, .. } if f == field),
                "{err:?}"
            );
        }
    }

    #[test]
    fn tabs_are_carried() {
        let config = DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_args(["tab\there"]);
        let bytes = PlistSpec::from_spec(&spec(config), Scope::User)
            .unwrap()
            .render()
            .unwrap();
        let value: plist::Value = plist::from_bytes(&bytes).unwrap();
        let args = value.as_dictionary().unwrap()["ProgramArguments"].clone();
        assert_eq!(args.as_array().unwrap()[1].as_string(), Some("tab\there"));
    }

    #[test]
    fn agents_refuse_user_and_group() {
        let mut config = DaemonConfig::new("/bin/echo", "/tmp/x.pid");
        config.user = Some("nobody".into());
        let err = PlistSpec::from_spec(&spec(config.clone()), Scope::User).unwrap_err();
        assert!(matches!(err, DaemonError::InvalidConfig { ref field, .. } if field == "user"));
        let bytes = PlistSpec::from_spec(&spec(config), Scope::System)
            .unwrap()
            .render()
            .unwrap();
        let value: plist::Value = plist::from_bytes(&bytes).unwrap();
        let dict = value.as_dictionary().unwrap();
        assert_eq!(dict["UserName"], plist::Value::String("nobody".into()));
        assert_eq!(dict["InitGroups"], plist::Value::Boolean(true));
    }

    #[test]
    fn the_unexpressible_is_named_in_one_warning() {
        let mut config = DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_name("w");
        config.readiness = Some(Readiness::Notify);
        config.limits.memory_bytes = Some(1 << 30);
        config.limits.nofile = Some(256);
        config.restart.policy = RestartPolicy::OnFailure;
        config.logs = Some(crate::config::LogsConfig {
            stdout: Some("/tmp/out.log".into()),
            max_bytes: Some(1000),
            ..Default::default()
        });
        let plist = PlistSpec::from_spec(&spec(config), Scope::User).unwrap();
        let warning = plist.warning().unwrap();
        for field in [
            "readiness = notify",
            "limits.memory_bytes",
            "restart.max_delay_ms",
            "restart.max_restarts",
            "logs.max_bytes",
            "restart.delay_ms",
        ] {
            assert!(warning.contains(field), "{field} missing from {warning}");
        }
        assert!(!warning.contains("nofile"), "{warning}");
        assert_eq!(warning.lines().count(), 1);
    }

    #[test]
    fn the_same_spec_renders_the_same_bytes() {
        let config = DaemonConfig::new("/bin/echo", "/tmp/x.pid")
            .with_env("B", "2")
            .with_env("A", "1")
            .with_env("C", "3");
        let a = PlistSpec::from_spec(&spec(config.clone()), Scope::User)
            .unwrap()
            .render()
            .unwrap();
        for _ in 0..5 {
            let b = PlistSpec::from_spec(&spec(config.clone()), Scope::User)
                .unwrap()
                .render()
                .unwrap();
            assert_eq!(a, b);
        }
        let text = String::from_utf8(a).unwrap();
        let (ia, ib, ic) = (
            text.find("<key>A</key>").unwrap(),
            text.find("<key>B</key>").unwrap(),
            text.find("<key>C</key>").unwrap(),
        );
        assert!(ia < ib && ib < ic, "{text}");
    }

    #[test]
    fn the_user_domain_gets_the_background_session() {
        let config = DaemonConfig::new("/bin/echo", "/tmp/x.pid");
        let bytes = PlistSpec::from_spec(&spec(config), Scope::User)
            .unwrap()
            .for_session(Some(SessionType::Background))
            .render()
            .unwrap();
        let value: plist::Value = plist::from_bytes(&bytes).unwrap();
        assert_eq!(
            value.as_dictionary().unwrap()["LimitLoadToSessionType"],
            plist::Value::String("Background".into())
        );
    }
}
