//! `daemonctl logs [-f] [-n N] CONFIG`: the configured files across their
//! rotations (fork, and systemd's append: files), the journal read as JSON
//! entries (systemd), and where the output went when nothing keeps it.
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::systemd::UserManager;
use support::Sandbox;

fn daemonctl(args: &[&str], config: &Path) -> Output {
    Command::new(support::daemonctl())
        .args(args)
        .arg(config)
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

/// The tick numbers of `tick N` lines, which must follow each other.
fn ticks(text: &str) -> Vec<u64> {
    let ticks: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .map(|n| n.parse().unwrap())
        .collect();
    for w in ticks.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a gap or a repeat: {w:?} in\n{text}");
    }
    ticks
}

fn rotating_config(sb: &Sandbox) -> daemon_lifecycle::DaemonConfig {
    let mut config = sb.config(&["--tick-ms", "10"]);
    config.logs = Some(daemon_lifecycle::LogsConfig {
        stdout: Some(sb.path("out.log")),
        stderr: None,
        max_bytes: Some(240),
        keep: Some(4),
    });
    config
}

#[test]
fn files_across_rotations_in_order_and_the_last_n() {
    let sb = Sandbox::new("logs_rotations");
    let toml = sb.write_toml(&rotating_config(&sb));
    ok(daemonctl(&["--backend", "fork", "start"], &toml));
    // Until it rotated a few times.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sb.path("out.log.3").exists() {
        assert!(Instant::now() < deadline, "no rotation");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(daemonctl(&["--backend", "fork", "stop"], &toml));
    let all = ok(daemonctl(&["--backend", "fork", "logs"], &toml));
    let seen = ticks(&all);
    // Every line of every kept file, oldest first: as many as the files hold.
    let on_disk: usize = [
        "out.log.4",
        "out.log.3",
        "out.log.2",
        "out.log.1",
        "out.log",
    ]
    .iter()
    .filter_map(|f| std::fs::read_to_string(sb.path(f)).ok())
    .map(|t| t.lines().count())
    .sum();
    assert_eq!(seen.len(), on_disk, "{all}");
    assert!(seen.len() > 40, "{all}");
    let last = ok(daemonctl(&["--backend", "fork", "logs", "-n", "5"], &toml));
    assert_eq!(ticks(&last), seen[seen.len() - 5..].to_vec());
    sb.assert_no_leaks();
}

#[test]
fn follow_goes_on_through_rotations_without_gap_or_repeat() {
    let sb = Sandbox::new("logs_follow");
    let toml = sb.write_toml(&rotating_config(&sb));
    ok(daemonctl(&["--backend", "fork", "start"], &toml));
    let mut follower = Command::new(support::daemonctl())
        .args(["--backend", "fork", "logs", "-f"])
        .arg(&toml)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follower.stdout.take().unwrap());
    // 150 lines of 12 bytes: 240-byte files rotate every 20 lines.
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while text.lines().count() < 150 {
        assert!(Instant::now() < deadline, "follow stalled:\n{text}");
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        text.push_str(&line);
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
    let seen = ticks(&text);
    assert!(seen.len() >= 150, "{text}");
    assert!(sb.path("out.log.4").exists(), "it did rotate");
    ok(daemonctl(&["--backend", "fork", "stop"], &toml));
    sb.assert_no_leaks();
}

#[test]
fn without_logs_it_says_where_output_went() {
    let sb = Sandbox::new("logs_none");
    let toml = sb.write_toml(&sb.config(&[]));
    let out = daemonctl(&["--backend", "fork", "logs"], &toml);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("daemonctl: {}: ", toml.display())),
        "{err}"
    );
    assert!(
        err.contains("/dev/null") && err.contains("`logs.stdout`"),
        "{err}"
    );
}

#[test]
fn stdout_and_stderr_files_each_with_a_header() {
    let sb = Sandbox::new("logs_two");
    let mut config = sb.config(&["--lines", "3", "--stderr-lines", "2"]);
    config.logs = Some(daemon_lifecycle::LogsConfig {
        stdout: Some(sb.path("out.log")),
        stderr: Some(sb.path("err.log")),
        ..Default::default()
    });
    let toml = sb.write_toml(&config);
    ok(daemonctl(&["--backend", "fork", "start"], &toml));
    std::thread::sleep(Duration::from_millis(300));
    ok(daemonctl(&["--backend", "fork", "stop"], &toml));
    let text = ok(daemonctl(&["--backend", "fork", "logs"], &toml));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!("==> {} <==", sb.path("out.log").display())
    );
    assert!(lines[1].starts_with("out 000001 "), "{text}");
    let err_header = format!("==> {} <==", sb.path("err.log").display());
    let at = lines.iter().position(|l| *l == err_header).expect(&text);
    assert_eq!(at, 4, "{text}");
    assert!(lines[5].starts_with("err 000001 "), "{text}");
    sb.assert_no_leaks();
}

#[tokio::test]
async fn systemd_append_files_and_the_journal() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("logs_systemd");
    // append: files, as on the fork backend.
    let mut config = sb.config(&["--lines", "3"]);
    config.logs = Some(daemon_lifecycle::LogsConfig {
        stdout: Some(sb.path("out.log")),
        ..Default::default()
    });
    let toml = sb.write_toml(&config);
    let sd = |args: &[&str], extra_path: Option<&Path>| {
        let mut cmd = Command::new(support::daemonctl());
        cmd.args(["--backend", "systemd", "--scope", "user"])
            .args(args)
            .arg(&toml)
            .envs(um.env());
        if let Some(dir) = extra_path {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        cmd.output().unwrap()
    };
    ok(sd(&["start"], None));
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = ok(sd(&["logs"], None));
        if text.lines().count() >= 3 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.starts_with("out 000001 "), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    ok(sd(&["stop"], None));

    // No files: the journal, through journalctl's JSON output (a stand-in
    // journalctl here: the private manager has no journald).
    let toml_text = toml::to_string(&sb.config(&[])).unwrap();
    std::fs::write(&toml, toml_text).unwrap();
    let bin = sb.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let args_file = sb.path("journalctl.args");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n\
         echo '{{\"__REALTIME_TIMESTAMP\":\"1714564800000000\",\"SYSLOG_IDENTIFIER\":\"testd\",\"_PID\":\"42\",\"MESSAGE\":\"hello from the journal\"}}'\n\
         echo '{{\"__REALTIME_TIMESTAMP\":\"1714564801000000\",\"SYSLOG_IDENTIFIER\":\"testd\",\"_PID\":\"42\",\"MESSAGE\":[98,121,116,101,115]}}'\n",
        args_file.display()
    );
    let fake = bin.join("journalctl");
    std::fs::write(&fake, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = ok(sd(&["logs", "-n", "20"], Some(&bin)));
    assert_eq!(
        text,
        "2024-05-01 12:00:00 testd[42]: hello from the journal\n2024-05-01 12:00:01 testd[42]: bytes\n"
    );
    let args = std::fs::read_to_string(&args_file).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert!(
        args.contains(&format!("--user-unit={}.service", sb.tag).as_str()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--output=json") && args.contains(&"--lines=20"),
        "{args:?}"
    );
    sb.assert_no_leaks();
}
