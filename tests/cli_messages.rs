//! What `daemonctl` says to a person: one error-line form, no Rust Debug
//! text, a suggestion for a misspelt key, and an exit code for each kind
//! of failure (README, Exit codes).
mod support;

use std::process::{Command, Output};

use support::Sandbox;

fn daemonctl(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(support::daemonctl())
        .args(args)
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Rust's Debug forms that must never reach a person.
fn assert_no_debug_text(text: &str) {
    for debug in ["Some(", "None", "Ok(", "Err(", "{ ", " }", "\\\"", "\\n"] {
        assert!(!text.contains(debug), "Debug text {debug:?} in:\n{text}");
    }
}

#[test]
fn every_error_line_is_daemonctl_config_what() {
    let sb = Sandbox::new("msg_lines");
    let write = |name: &str, text: &str| {
        let p = sb.path(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let testd = support::testd();
    let cases = [
        (sb.path("missing.toml"), 6, "cannot read it"),
        (write("syntax.toml", "binary_path = \n"), 6, "line 1"),
        (write("type.toml", "binary_path = 1\n"), 6, "invalid type"),
        (
            write(
                "field.toml",
                "binary_path = \"/bin/true\"\n[env]\n\"BAD-KEY\" = \"x\"\n",
            ),
            6,
            "`env.BAD-KEY`",
        ),
        (
            write("binary.toml", "binary_path = \"/nonexistent/bin/x\"\n"),
            5,
            "/nonexistent/bin/x",
        ),
        (
            write(
                "piddir.toml",
                &format!(
                    "binary_path = \"{}\"\npid_file = \"{}\"\n",
                    testd.display(),
                    sb.path("no-such-dir/d.pid").display()
                ),
            ),
            6,
            "`pid_file`: directory",
        ),
    ];
    for (config, code, what) in &cases {
        let out = daemonctl(&["--backend", "fork", "start"], config);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(*code),
            "{}: {err}",
            config.display()
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        let prefix = format!("daemonctl: {}: ", config.display());
        assert!(err.starts_with(&prefix), "not `{prefix}...`: {err}");
        assert!(err.contains(what), "{err}");
        // The file is named once, not again by the library's own words.
        assert!(
            !err.contains("config /") && !err.contains("cannot read config"),
            "{err}"
        );
        assert_no_debug_text(&err);
    }
    assert!(sb.processes().is_empty());
}

#[test]
fn an_unknown_key_names_the_nearest_known_one() {
    let sb = Sandbox::new("msg_unknown_key");
    for (text, want) in [
        (
            "binray_path = \"/bin/true\"\n",
            "did you mean `binary_path`?",
        ),
        (
            "binary_path = \"/bin/true\"\nstartup_timeout = 3\n",
            "did you mean `startup_timeout_secs`?",
        ),
        (
            "binary_path = \"/bin/true\"\n[restart]\npolcy = \"always\"\n",
            "did you mean `policy`?",
        ),
        (
            "binary_path = \"/bin/true\"\nreadiness = { kind = \"tpc\", address = \"x:1\" }\n",
            "did you mean `tcp`?",
        ),
    ] {
        let toml = sb.path("d.toml");
        std::fs::write(&toml, text).unwrap();
        let out = daemonctl(&["status"], &toml);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(err.contains(want), "{text}: {err}");
        assert!(err.contains("unknown"), "{err}");
        // And a start says the same with the config exit code.
        assert_eq!(daemonctl(&["start"], &toml).status.code(), Some(6));
    }
}

#[test]
fn a_readiness_timeout_has_its_own_exit_code_and_reads_as_words() {
    let sb = Sandbox::new("msg_not_ready");
    let mut config = sb.config(&[]);
    config.startup_timeout_secs = 1;
    config.readiness = Some(daemon_lifecycle::Readiness::Tcp {
        address: "127.0.0.1:1".into(),
        interval_ms: None,
    });
    let toml = sb.write_toml(&config);
    let out = daemonctl(&["-vv", "--backend", "fork", "start"], &toml);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(150), "{err}");
    assert!(out.stdout.is_empty());
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with(&format!("daemonctl: {}: ", toml.display())),
        "{err}"
    );
    assert!(last.contains("within 1 s"), "{err}");
    // -vv shows the tracing events, none of them in Rust Debug form.
    assert!(err.contains("connect 127.0.0.1:1"), "{err}");
    assert_no_debug_text(&err);
    sb.assert_no_leaks();
    // Then status says failed, as systemd says for a start timeout.
    let out = daemonctl(&["--backend", "fork", "status", "--json"], &toml);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["reason"], "not ready within 1 s", "{v}");
}

/// The same with notify readiness (the supervisor's own deadline): failed,
/// with the daemon's last STATUS= text kept, until `cleanup`.
#[test]
fn notify_not_ready_is_failed_until_cleanup() {
    let sb = Sandbox::new("msg_notify_not_ready");
    let mut config = sb.config(&["--status", "loading the model"]);
    config.startup_timeout_secs = 1;
    config.readiness = Some(daemon_lifecycle::Readiness::Notify);
    let toml = sb.write_toml(&config);
    let out = daemonctl(&["--backend", "fork", "start"], &toml);
    assert_eq!(out.status.code(), Some(150), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not ready within 1 s"),
        "{}",
        stderr(&out)
    );
    let out = daemonctl(&["--backend", "fork", "status", "--json"], &toml);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["reason"], "not ready within 1 s", "{v}");
    assert_eq!(v["status_text"], "loading the model", "{v}");
    assert_eq!(v["last_exit"], "killed by signal 15 (SIGTERM)", "{v}");
    assert!(!sb.path("daemon.pid").exists());
    assert!(daemonctl(&["--backend", "fork", "cleanup"], &toml)
        .status
        .success());
    let out = daemonctl(&["--backend", "fork", "status", "--json"], &toml);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "stopped", "{v}");
    sb.assert_no_leaks();
}

#[test]
fn verbose_lifecycle_has_no_debug_text() {
    let sb = Sandbox::new("msg_verbose");
    let toml = sb.write_toml(&sb.config(&[]));
    for cmd in [
        "start",
        "status",
        "restart",
        "wait-ready",
        "stop",
        "cleanup",
    ] {
        let out = daemonctl(&["-vvv", "--backend", "fork", cmd], &toml);
        assert!(
            out.status.code().is_some_and(|c| c == 0 || c == 3),
            "{cmd}: {}",
            stderr(&out)
        );
        assert_no_debug_text(&stderr(&out));
    }
    sb.assert_no_leaks();
}
