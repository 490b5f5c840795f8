//! `daemonctl list`: a row per daemon from configs, directories of configs,
//! the fork backend's registry, and the systemd units of ours.
mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::systemd::UserManager;
use support::Sandbox;

/// `daemonctl ARGS` with the registry in the sandbox (`XDG_STATE_HOME`).
fn daemonctl(sb: &Sandbox, args: &[&str]) -> Output {
    Command::new(support::daemonctl())
        .args(args)
        .env("XDG_STATE_HOME", sb.path("state"))
        .env_remove("NO_COLOR")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The row of `name` in a table, split into its columns (two spaces or more apart).
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.split("  ").next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name}:\n{table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn configs_and_directories_give_one_row_each_errors_included() {
    let sb = Sandbox::new("list_configs");
    let dir = sb.path("configs");
    std::fs::create_dir(&dir).unwrap();
    let mut running = sb.config(&["--status", "serving", "--ready-after", "100"]);
    running.name = Some(format!("{}-a", sb.tag));
    running.pid_file = sb.path("a.pid");
    running.readiness = Some(daemon_lifecycle::Readiness::Notify);
    let mut stopped = sb.config(&[]);
    stopped.name = Some(format!("{}-b", sb.tag));
    stopped.pid_file = sb.path("b.pid");
    std::fs::write(dir.join("a.toml"), toml::to_string(&running).unwrap()).unwrap();
    std::fs::write(dir.join("b.toml"), toml::to_string(&stopped).unwrap()).unwrap();
    std::fs::write(dir.join("broken.toml"), "binray_path = \"/bin/true\"\n").unwrap();
    std::fs::write(dir.join("not-a-config.txt"), "ignored").unwrap();
    let a = dir.join("a.toml");
    let pid: u32 = ok(daemonctl(&sb, &["--backend", "fork", "start", p(&a)]))
        .trim()
        .parse()
        .unwrap();

    let table = ok(daemonctl(&sb, &["--backend", "fork", "list", p(&dir)]));
    // A pipe: no colour.
    assert!(!table.contains('\x1b'), "{table:?}");
    let header = table.lines().next().unwrap();
    for col in [
        "NAME",
        "BACKEND",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
        "STATUS",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert_eq!(table.lines().count(), 4, "{table}");
    let r = row(&table, &format!("{}-a", sb.tag));
    assert_eq!(&r[1..4], ["fork", "running", &pid.to_string()], "{table}");
    assert!(r[4].ends_with('s'), "uptime {r:?}");
    assert_eq!(r[5], "0");
    assert_eq!(r.last(), Some(&"ready"), "{table}");
    let r = row(&table, &format!("{}-b", sb.tag));
    assert_eq!(&r[1..3], ["fork", "stopped"]);
    // The unreadable config is a row with its error, not an abort.
    let broken = dir.join("broken.toml");
    let r = row(&table, p(&broken));
    assert_eq!(r[2], "error");
    assert!(
        r.last().unwrap().contains("did you mean `binary_path`?"),
        "{r:?}"
    );

    // --json: the objects `status --json` prints, in the same order.
    let list: serde_json::Value = serde_json::from_str(&ok(daemonctl(
        &sb,
        &["--backend", "fork", "list", "--json", p(&dir)],
    )))
    .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    let status: serde_json::Value = serde_json::from_str(&ok(daemonctl(
        &sb,
        &["--backend", "fork", "status", "--json", p(&a)],
    )))
    .unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&list[0]), keys(&status));
    assert_eq!(list[0]["pid"], status["pid"]);
    assert_eq!(list[0]["state"], "running");
    assert_eq!(list[1]["state"], "stopped");
    assert_eq!(list[2]["config"], p(&broken));
    assert!(list[2]["error"].as_str().unwrap().contains("binary_path"));

    // Configs named one by one, a missing one among them.
    let table = ok(daemonctl(
        &sb,
        &[
            "--backend",
            "fork",
            "list",
            p(&a),
            p(&sb.path("missing.toml")),
        ],
    ));
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(row(&table, p(&sb.path("missing.toml")))
        .last()
        .unwrap()
        .contains("cannot read it"));

    ok(daemonctl(&sb, &["--backend", "fork", "stop", p(&a)]));
    sb.assert_no_leaks();
}

#[test]
fn with_no_argument_the_fork_registry_lists_what_was_started() {
    let sb = Sandbox::new("list_registry");
    let mut one = sb.config(&[]);
    one.name = Some(format!("{}-one", sb.tag));
    one.pid_file = sb.path("one.pid");
    let mut two = sb.config(&["--exit-code", "3"]);
    two.name = Some(format!("{}-two", sb.tag));
    two.pid_file = sb.path("two.pid");
    let one_toml = sb.path("one.toml");
    let two_toml = sb.path("two.toml");
    std::fs::write(&one_toml, toml::to_string(&one).unwrap()).unwrap();
    std::fs::write(&two_toml, toml::to_string(&two).unwrap()).unwrap();
    let list = || ok(daemonctl(&sb, &["--backend", "fork", "list"]));
    assert_eq!(list().lines().count(), 1, "an empty registry: the header");

    let pid = ok(daemonctl(
        &sb,
        &["--backend", "fork", "start", p(&one_toml)],
    ));
    ok(daemonctl(
        &sb,
        &["--backend", "fork", "start", p(&two_toml)],
    ));
    // Two exits with code 3 at once: failed, with its last exit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let table = loop {
        let table = list();
        if table.contains("failed") || std::time::Instant::now() > deadline {
            break table;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let r = row(&table, &format!("{}-one", sb.tag));
    assert_eq!(&r[1..4], ["fork", "running", pid.trim()], "{table}");
    let r = row(&table, &format!("{}-two", sb.tag));
    assert_eq!(&r[2..3], ["failed"], "{table}");
    assert!(table.contains("exited with code 3"), "{table}");

    // The registry is private and holds only small entries of ours.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let reg = sb.path("state/daemon-lifecycle/fork");
    assert_eq!(
        std::fs::metadata(&reg).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for e in std::fs::read_dir(&reg).unwrap().flatten() {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        assert!(m.is_file() && m.uid() == nix::unistd::Uid::effective().as_raw());
    }
    // A link planted among the entries is a row with an error, never followed.
    std::os::unix::fs::symlink("/etc/passwd", reg.join("0000000000000000.json")).unwrap();
    let table = list();
    assert!(table.contains("symbolic link"), "{table}");
    assert!(!table.contains("root:"), "{table}");
    std::fs::remove_file(reg.join("0000000000000000.json")).unwrap();

    // Stopped and cleaned up: gone from the list (the entries go with the files).
    ok(daemonctl(&sb, &["--backend", "fork", "stop", p(&one_toml)]));
    ok(daemonctl(
        &sb,
        &["--backend", "fork", "cleanup", p(&two_toml)],
    ));
    assert_eq!(list().lines().count(), 1, "{}", list());
    assert_eq!(std::fs::read_dir(&reg).unwrap().count(), 0);

    // An entry whose daemon's files vanished some other way is dropped.
    ok(daemonctl(
        &sb,
        &["--backend", "fork", "start", p(&two_toml)],
    ));
    std::thread::sleep(std::time::Duration::from_millis(500));
    for f in ["two.pid", "two.pid.identity", "two.pid.lock"] {
        let _ = std::fs::remove_file(sb.path(f));
    }
    assert_eq!(list().lines().count(), 1, "{}", list());
    sb.assert_no_leaks();
}

#[tokio::test]
async fn systemd_units_of_ours_are_listed_by_their_marker() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("list_systemd");
    let mut config = sb.config(&["--status", "serving", "--ready-after", "100"]);
    config.readiness = Some(daemon_lifecycle::Readiness::Notify);
    let toml = sb.write_toml(&config);
    let run = |args: &[&str]| {
        Command::new(support::daemonctl())
            .args(["--backend", "systemd", "--scope", "user"])
            .args(args)
            .envs(um.env())
            .env("XDG_STATE_HOME", sb.path("state"))
            .output()
            .unwrap()
    };
    let pid = ok(run(&["start", p(&toml)]));
    // A unit that is not ours, running beside it: never listed.
    let out = um
        .command("systemd-run")
        .args([
            "--user",
            "--unit",
            &format!("{}-foreign", sb.tag),
            "/bin/sleep",
            "300",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let table = ok(run(&["list"]));
    let r = row(&table, &sb.tag);
    assert_eq!(&r[1..4], ["systemd", "running", pid.trim()], "{table}");
    assert_eq!(r.last(), Some(&"ready"), "{table}");
    assert!(!table.contains("foreign"), "{table}");
    assert_eq!(table.lines().count(), 2, "{table}");
    // --json: the same object status --json gives (the uptime aside).
    let list: serde_json::Value = serde_json::from_str(&ok(run(&["list", "--json"]))).unwrap();
    let mut status: serde_json::Value =
        serde_json::from_str(&ok(run(&["status", "--json", p(&toml)]))).unwrap();
    let mut listed = list[0].clone();
    for v in [&mut listed, &mut status] {
        v.as_object_mut().unwrap().remove("uptime_secs");
        v.as_object_mut().unwrap().remove("drift");
    }
    assert_eq!(listed, status);
    // And from the config itself.
    let table = ok(run(&["list", p(&toml)]));
    assert_eq!(&row(&table, &sb.tag)[1..3], ["systemd", "running"]);

    ok(run(&["stop", p(&toml)]));
    let _ = um
        .command("systemctl")
        .args(["--user", "stop", &format!("{}-foreign", sb.tag)])
        .output();
    let table = ok(run(&["list"]));
    assert_eq!(table.lines().count(), 1, "{table}");
    sb.assert_no_leaks();
}
