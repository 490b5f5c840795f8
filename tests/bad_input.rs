//! Bad input gets a clear, typed error and changes nothing: no file
//! written, no process started. (Invalid fields and missing or
//! non-executable binaries on every backend:
//! `tests/scenarios/input.rs`.)
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use daemon_lifecycle::DaemonError;
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
async fn missing_pid_directory_is_a_config_error() {
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
