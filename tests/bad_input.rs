//! Bad input gets a clear, typed error and changes nothing: no file
//! written, no process started.
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use daemon_lifecycle::{DaemonConfig, DaemonError};
use support::{within, Sandbox};

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn missing_binary_is_typed_and_leaves_nothing() {
    let sb = Sandbox::new("missing_binary");
    let mut config = sb.config(&[]);
    config.binary_path = sb.path("no-such-daemon");
    let m = sb.manager(config);
    let err = within(10, m.start()).await.unwrap_err();
    assert!(
        matches!(&err, DaemonError::BinaryNotFound { path } if path.ends_with("no-such-daemon")),
        "{err:?}"
    );
    assert!(err.to_string().contains("no-such-daemon"), "{err}");
    assert!(
        entries(sb.dir.path()).is_empty(),
        "{:?}",
        entries(sb.dir.path())
    );
    sb.assert_no_leaks();
}

#[tokio::test]
async fn invalid_fields_are_typed_and_leave_nothing() {
    let sb = Sandbox::new("invalid_fields");
    let cases: Vec<(DaemonConfig, &str)> = vec![
        (sb.config(&[]).with_name("bad\nname"), "name"),
        (sb.config(&[]).with_name("x/../../etc"), "name"),
        (sb.config(&[]).with_env("BAD-KEY", "v"), "env.BAD-KEY"),
        (sb.config(&[]).with_env("OK", "nul\0inside"), "env.OK"),
        (sb.config(&["arg\0nul"]), "args[2]"),
        (
            sb.config(&[]).with_working_dir("relative/dir"),
            "working_dir",
        ),
        (
            sb.config(&[]).with_startup_timeout_secs(0),
            "startup_timeout_secs",
        ),
        (
            {
                let mut c = sb.config(&[]);
                c.pid_file = "relative.pid".into();
                c
            },
            "pid_file",
        ),
        (
            {
                let mut c = sb.config(&[]);
                c.binary_path = "testd".into();
                c
            },
            "binary_path",
        ),
    ];
    for (config, field) in cases {
        let m = sb.manager(config);
        for result in [
            m.start().await.map(|_| ()),
            m.stop().await,
            m.kill().await,
            m.cleanup_stale().await,
        ] {
            match result {
                Err(DaemonError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
    assert!(
        entries(sb.dir.path()).is_empty(),
        "{:?}",
        entries(sb.dir.path())
    );
    sb.assert_no_leaks();
}

#[tokio::test]
async fn non_executable_binary_is_typed() {
    let sb = Sandbox::new("not_executable");
    let file = sb.path("plain-file");
    std::fs::write(&file, "#!/bin/sh\n").unwrap();
    let mut config = sb.config(&[]);
    config.binary_path = file.clone();
    let err = within(10, sb.manager(config).start()).await.unwrap_err();
    assert!(
        matches!(err, DaemonError::BinaryNotExecutable { .. }),
        "{err:?}"
    );
    assert_eq!(entries(sb.dir.path()), vec!["plain-file"]);
    sb.assert_no_leaks();
}

#[tokio::test]
async fn missing_pid_directory_is_a_config_error() {
    // The directory of a pid_file the config names is the config's to get
    // right (issue 14: daemonctl exits 6 for it, as for any bad field).
    let sb = Sandbox::new("missing_pid_dir");
    let mut config = sb.config(&[]);
    config.pid_file = sb.path("no/such/dir/d.pid");
    let err = within(10, sb.manager(config).start()).await.unwrap_err();
    assert!(
        matches!(&err, DaemonError::InvalidConfig { field, .. } if field == "pid_file"),
        "{err:?}"
    );
    assert!(err.to_string().contains("no/such/dir"), "{err}");
    assert!(entries(sb.dir.path()).is_empty());
    sb.assert_no_leaks();
}

/// The PID directory exists but may not be written. As root (CI) the check
/// runs `daemonctl` as `nobody`, since root may write anywhere.
#[test]
fn unwritable_pid_directory_is_a_pid_file_error() {
    let sb = Sandbox::new("unwritable_pid_dir");
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ro = sb.path("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut config = sb.config(&[]);
    config.pid_file = ro.join("d.pid");
    let toml = sb.write_toml(&config);
    std::fs::set_permissions(&toml, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut cmd = support::daemonctl_unprivileged();
    let out = cmd
        .args(["--backend", "fork", "start"])
        .arg(&toml)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    assert!(
        stderr.contains("PID file") && stderr.contains("d.pid") && stderr.contains("not writable"),
        "{stderr}"
    );
    assert!(entries(&ro).is_empty(), "{:?}", entries(&ro));
    assert!(out.stdout.is_empty());
    sb.assert_no_leaks();
}

#[test]
fn malformed_toml_is_one_line_naming_the_file() {
    let sb = Sandbox::new("malformed_toml");
    let path = sb.path("broken.toml");
    for (text, needle) in [
        ("binary_path = \n", "broken.toml"),
        ("binary_path = \"/bin/sleep\"\nargz = []\n", "argz"),
        (
            "binary_path = \"/bin/sleep\"\nstartup_timeout_secs = \"soon\"\n",
            "startup_timeout_secs",
        ),
        ("binary_path = \"/bin/sleep\"\n[env]\nA = 1\n", "line 3"),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = Command::new(support::daemonctl())
            .arg("start")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{text:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("broken.toml") && stderr.contains(needle),
            "{needle}: {stderr}"
        );
    }
    let out = Command::new(support::daemonctl())
        .arg("status")
        .arg(sb.path("absent.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.toml"));
    assert_eq!(entries(sb.dir.path()), vec!["broken.toml"]);
    sb.assert_no_leaks();
}
