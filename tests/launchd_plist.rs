//! launchd plists from the one model: every plist parses with the `plist`
//! crate and with Python's `plistlib`, `ProgramArguments` and
//! `EnvironmentVariables` are the config's exact strings for hostile input
//! (TAB included), the other control characters are refused naming the
//! field, what launchd cannot
//! express is named in one warning, and the bytes are reproducible (also
//! across processes, whose `HashMap` orders differ).
mod support;

use std::collections::BTreeMap;
use std::process::Command;

use daemon_lifecycle::{
    DaemonConfig, DaemonError, PlistSpec, Readiness, RestartPolicy, Scope, ServiceSpec,
};
use support::Sandbox;

/// Arguments and values that break naive quoting somewhere.
const HOSTILE: &[&str] = &[
    "",
    " ",
    "  leading and trailing  ",
    "a b",
    "\"double\"",
    "'single'",
    "&<>",
    "&amp; &lt;",
    "<![CDATA[x]]>",
    "]]>",
    "<key>Label</key>",
    "100%",
    "%n%s%%",
    "$HOME",
    "${HOME}",
    "$$",
    "back\\slash\\",
    "\\n\\t",
    "tab\there",
    "\ttab first",
    "ünïcödé",
    "日本語",
    "emoji 🚀",
    "--",
    "-x",
    ";",
    "|",
    "`id`",
    "$(id)",
    "a=b",
    "=",
    "state = running",
    "pid = 1",
    "}",
    "\u{7f}",
    "\u{a0}nbsp",
    "\u{2028}",
    "\u{85}",
];

fn hostile_config() -> DaemonConfig {
    let mut config = DaemonConfig::new("/usr/bin/env", "/tmp/x.pid")
        .with_name("com.example.hostile")
        .with_args(HOSTILE.iter().copied());
    config.args.push("x".repeat(64 * 1024));
    for (i, value) in HOSTILE.iter().enumerate() {
        config = config.with_env(format!("V{i}"), *value);
    }
    config.with_env("_", "underscore")
}

fn render(config: &DaemonConfig, scope: Scope) -> Vec<u8> {
    let spec = ServiceSpec::from_config(config).unwrap();
    PlistSpec::from_spec(&spec, scope)
        .unwrap()
        .render()
        .unwrap()
}

fn argv_and_env(config: &DaemonConfig) -> (Vec<String>, BTreeMap<String, String>) {
    let mut argv = vec![config.binary_path.to_str().unwrap().to_owned()];
    argv.extend(config.args.iter().cloned());
    (argv, config.env.clone().into_iter().collect())
}

#[test]
fn hostile_arguments_and_environment_round_trip_through_the_plist_crate() {
    let config = hostile_config();
    let bytes = render(&config, Scope::User);
    let value: plist::Value = plist::from_bytes(&bytes).unwrap();
    let dict = value.as_dictionary().unwrap();
    let args: Vec<String> = dict["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_string().unwrap().to_owned())
        .collect();
    let env: BTreeMap<String, String> = dict["EnvironmentVariables"]
        .as_dictionary()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_string().unwrap().to_owned()))
        .collect();
    let (want_argv, want_env) = argv_and_env(&config);
    assert_eq!(args, want_argv);
    assert_eq!(env, want_env);
    assert_eq!(dict["Label"].as_string(), Some("com.example.hostile"));
}

#[test]
fn hostile_arguments_and_environment_round_trip_through_python_plistlib() {
    let sb = Sandbox::new("plist_python");
    let config = hostile_config();
    let path = sb.path("hostile.plist");
    std::fs::write(&path, render(&config, Scope::User)).unwrap();
    let out = support::output_within(
        Command::new("python3")
            .args([
                "-c",
                "import json, plistlib, sys\n\
             d = plistlib.load(open(sys.argv[1], 'rb'))\n\
             print(json.dumps({'argv': d['ProgramArguments'], 'env': d['EnvironmentVariables'], \
             'keys': list(d)}))",
            ])
            .arg(&path),
        30,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (argv, env) = argv_and_env(&config);
    assert_eq!(got["argv"], serde_json::json!(argv));
    assert_eq!(got["env"], serde_json::json!(env));
    // The keys, in the order we write them.
    assert_eq!(
        got["keys"],
        serde_json::json!([
            "Label",
            "ProgramArguments",
            "EnvironmentVariables",
            "RunAtLoad",
            "KeepAlive",
            "ThrottleInterval",
            "ExitTimeOut",
            "ProcessType",
            "AbandonProcessGroup"
        ])
    );
}

#[test]
fn every_config_field_is_in_the_plist_or_named_in_the_warning() {
    let sb = Sandbox::new("plist_full");
    let mut config = DaemonConfig::new("/usr/bin/env", "/tmp/x.pid")
        .with_name("com.example.full")
        .with_working_dir("/var/tmp")
        .with_shutdown_timeout_secs(7)
        .with_env("K", "v");
    config.restart.policy = RestartPolicy::Always;
    config.restart.delay_ms = 2500;
    config.limits.nofile = Some(512);
    config.limits.processes = Some(64);
    config.limits.cpu_secs = Some(3600);
    config.limits.memory_bytes = Some(1 << 30);
    config.readiness = Some(Readiness::Notify);
    config.user = Some("nobody".into());
    config.group = Some("nogroup".into());
    // Issue 15: no watchdog and no probe in launchd (reload is `launchctl
    // kill`, not a plist key).
    config.watchdog_secs = Some(10);
    config.liveness = Some(toml::from_str("kind = \"tcp\"\naddress = \"127.0.0.1:80\"").unwrap());
    config.logs = Some(daemon_lifecycle::LogsConfig {
        stdout: Some("/var/log/full.out".into()),
        stderr: Some("/var/log/full.err".into()),
        max_bytes: Some(1 << 20),
        keep: Some(3),
    });
    let spec = ServiceSpec::from_config(&config).unwrap();
    let plist = PlistSpec::from_spec(&spec, Scope::System).unwrap();
    let bytes = plist.render().unwrap();
    std::fs::write(sb.path("full.plist"), &bytes).unwrap();
    let value: plist::Value = plist::from_bytes(&bytes).unwrap();
    let d = value.as_dictionary().unwrap();
    let int = |v: &plist::Value| v.as_unsigned_integer().unwrap();
    assert_eq!(d["WorkingDirectory"].as_string(), Some("/var/tmp"));
    assert_eq!(d["KeepAlive"].as_boolean(), Some(true));
    assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
    assert_eq!(int(&d["ThrottleInterval"]), 3, "2.5 s rounds up");
    assert_eq!(int(&d["ExitTimeOut"]), 7);
    assert_eq!(d["StandardOutPath"].as_string(), Some("/var/log/full.out"));
    assert_eq!(
        d["StandardErrorPath"].as_string(),
        Some("/var/log/full.err")
    );
    for key in ["SoftResourceLimits", "HardResourceLimits"] {
        let limits = d[key].as_dictionary().unwrap();
        assert_eq!(int(&limits["NumberOfFiles"]), 512);
        assert_eq!(int(&limits["NumberOfProcesses"]), 64);
        assert_eq!(int(&limits["CPU"]), 3600);
        assert_eq!(limits.len(), 3, "{key}");
    }
    assert_eq!(d["UserName"].as_string(), Some("nobody"));
    assert_eq!(d["GroupName"].as_string(), Some("nogroup"));
    assert_eq!(d["InitGroups"].as_boolean(), Some(true));
    assert_eq!(d["ProcessType"].as_string(), Some("Standard"));
    assert_eq!(d["AbandonProcessGroup"].as_boolean(), Some(false));
    assert!(
        !d.contains_key("Disabled"),
        "Disabled disables nothing any more"
    );
    let warning = plist.warning().expect("a warning");
    assert_eq!(warning.lines().count(), 1, "{warning}");
    for field in [
        "readiness = notify",
        "limits.memory_bytes",
        "restart.delay_ms",
        "restart.max_delay_ms",
        "restart.max_restarts",
        "logs.max_bytes",
        "watchdog_secs",
        "liveness",
    ] {
        assert!(warning.contains(field), "{field}: {warning}");
    }
}

#[test]
fn control_characters_are_refused_naming_the_field() {
    let base = || DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_name("cc");
    let cases: Vec<(DaemonConfig, &str)> = vec![
        (base().with_args(["ok", "line\nbreak"]), "args[1]"),
        (base().with_args(["carriage\rreturn"]), "args[0]"),
        (base().with_args(["bell\u{7}"]), "args[0]"),
        (base().with_args(["\u{1b}[2J"]), "args[0]"),
        (base().with_args(["unit\u{1f}sep"]), "args[0]"),
        (base().with_args(["nul\0byte"]), "args[0]"),
        (base().with_env("E", "a\nb"), "env.E"),
        (base().with_env("E", "\u{1}"), "env.E"),
        (base().with_working_dir("/tmp/a\nb"), "working_dir"),
    ];
    for (config, field) in cases {
        let err = ServiceSpec::from_config(&config)
            .and_then(|spec| PlistSpec::from_spec(&spec, Scope::User))
            .unwrap_err();
        match err {
            DaemonError::InvalidConfig { field: f, .. } => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn names_that_are_not_labels_are_refused() {
    for name in ["my daemon", "a:b", "naïve", "a@b"] {
        let config = DaemonConfig::new("/bin/echo", "/tmp/x.pid").with_name(name);
        let spec = ServiceSpec::from_config(&config).unwrap();
        let err = PlistSpec::from_spec(&spec, Scope::User).unwrap_err();
        assert!(
            matches!(err, DaemonError::InvalidConfig { ref field, ref reason } if field == "name" && reason.contains("label")),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn daemonctl_render_is_reproducible_across_processes() {
    let sb = Sandbox::new("plist_render");
    let mut config = hostile_config();
    config.scope = Some(Scope::User);
    for i in 0..40 {
        config = config.with_env(format!("MANY_{i}"), i.to_string());
    }
    let toml = sb.write_toml(&config);
    let run = || {
        support::output_within(
            Command::new(support::daemonctl())
                .args(["render", "--format", "launchd"])
                .arg(&toml),
            30,
        )
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for _ in 0..3 {
        assert_eq!(run().stdout, first.stdout);
    }
    assert_eq!(first.stdout, render(&config, Scope::User));
    // Nothing launchd cannot express here: no warning.
    assert!(
        first.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // One warning line on stderr for what is left out; the plist on stdout.
    config.limits.memory_bytes = Some(1 << 30);
    let toml = sb.write_toml(&config);
    let out = run();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("limits.memory_bytes"),
        "{stderr}"
    );
    plist::from_bytes::<plist::Value>(&out.stdout).unwrap();

    // Into a package tree: Library/LaunchAgents (an agent for every user).
    let destdir = sb.path("pkg");
    let out = support::output_within(
        Command::new(support::daemonctl())
            .args(["render", "--format", "launchd", "--out"])
            .arg(&destdir)
            .arg(&toml),
        30,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = destdir
        .join("Library/LaunchAgents")
        .join(format!("{}.plist", config.name.as_deref().unwrap()));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        written.display().to_string()
    );
    assert_eq!(
        std::fs::read(&written).unwrap(),
        render(&config, Scope::User)
    );

    // A name that is no label: a config error (exit 6), nothing printed.
    config.name = Some("not a label".into());
    sb.write_toml(&config);
    let out = run();
    assert_eq!(out.status.code(), Some(6));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("label"));
}
