//! The one documented line for library users: `supervisor_init()` first in
//! `main` makes the host binary its own supervisor; calling it inside a
//! runtime is reported, not silently broken.
mod support;

use std::process::Command;

use support::Sandbox;

fn embedded() -> std::path::PathBuf {
    let path = support::testd().with_file_name("embedded");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test`",
        path.display()
    );
    path
}

#[test]
fn host_binary_supervises_its_own_daemon() {
    let sb = Sandbox::new("embedded");
    let pid_file = sb.path("d.pid");
    let out = Command::new(embedded())
        .arg(support::testd())
        .arg(&pid_file)
        .env_remove("DAEMON_LIFECYCLE_SUPERVISOR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("started ") && stdout.contains("stopped"),
        "{stdout}"
    );
    let exe = stdout
        .lines()
        .find_map(|l| l.strip_prefix("supervisor "))
        .unwrap();
    assert_eq!(
        std::path::Path::new(exe),
        embedded(),
        "the supervisor was not the host binary"
    );
    assert!(!pid_file.exists());
    assert!(support::processes_matching("--tag\0embedded").is_empty());
}

#[test]
fn init_inside_a_runtime_is_reported() {
    let sb = Sandbox::new("embedded_bad");
    let out = Command::new(embedded())
        .arg(support::testd())
        .arg(sb.path("d.pid"))
        .arg("--init-inside-runtime")
        .env_remove("DAEMON_LIFECYCLE_SUPERVISOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("inside a tokio runtime") && stderr.contains("fn main()"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(sb.dir.path()).unwrap().count(),
        0,
        "something was written"
    );
}
