//! Logs on the fork backend: stdout/stderr appended to files through pipes the
//! supervisor reads, rotated by size between lines, so every line the daemon
//! wrote lands exactly once, in order.
mod support;

use daemon_lifecycle::LogsConfig;
use support::{eventually, within, Sandbox};

/// Every line of `base`, `base.1` … `base.keep`, oldest file first.
fn all_lines(base: &std::path::Path, keep: u32) -> Vec<String> {
    let mut out = Vec::new();
    for i in (1..=keep).rev() {
        let p = format!("{}.{i}", base.display());
        if let Ok(text) = std::fs::read_to_string(&p) {
            out.extend(text.lines().map(str::to_owned));
        }
    }
    if let Ok(text) = std::fs::read_to_string(base) {
        out.extend(text.lines().map(str::to_owned));
    }
    out
}

fn numbers(lines: &[String], prefix: &str) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn rotation_never_loses_or_duplicates_a_line() {
    let sb = Sandbox::new("logs_rotate");
    let out = sb.path("out.log");
    const N: u64 = 20_000;
    let keep = 50;
    let mut cfg = sb.config(&["--lines", &N.to_string(), "--line-bytes", "50"]);
    cfg.logs = Some(LogsConfig {
        stdout: Some(out.clone()),
        max_bytes: Some(100_000),
        keep: Some(keep),
        ..Default::default()
    });
    let m = sb.manager(cfg);
    within(20, m.start()).await.unwrap();
    let lines = eventually(20, || async {
        let l = all_lines(&out, keep);
        (l.len() as u64 >= N).then_some(l)
    })
    .await;
    let nums = numbers(&lines, "out ");
    assert_eq!(nums.len() as u64, N, "lines lost or duplicated");
    assert_eq!(nums, (1..=N).collect::<Vec<_>>(), "lines out of order");
    assert!(lines.iter().all(|l| l.len() == 49), "a line was split");
    let rotated = (1..=keep)
        .filter(|i| std::path::Path::new(&format!("{}.{i}", out.display())).exists())
        .count();
    // 1 MB in 100 kB files: about ten rotations, none over the limit.
    assert!(rotated >= 9, "only {rotated} rotated files");
    for i in 1..=rotated {
        let len = std::fs::metadata(format!("{}.{i}", out.display()))
            .unwrap()
            .len();
        assert!(len <= 100_000, "{}.{i} has {len} bytes", out.display());
    }
    eprintln!(
        "measured: {N} lines across {} files ({rotated} rotated), each exactly once",
        rotated + 1
    );
    within(20, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn stdout_and_stderr_can_share_a_file_line_by_line() {
    let sb = Sandbox::new("logs_shared");
    let log = sb.path("all.log");
    let mut cfg = sb.config(&["--lines", "2000", "--stderr-lines", "2000"]);
    cfg.logs = Some(LogsConfig {
        stdout: Some(log.clone()),
        stderr: Some(log.clone()),
        max_bytes: Some(20_000),
        keep: Some(20),
    });
    let m = sb.manager(cfg);
    within(20, m.start()).await.unwrap();
    let lines = eventually(20, || async {
        let l = all_lines(&log, 20);
        (l.len() >= 4000).then_some(l)
    })
    .await;
    assert_eq!(lines.len(), 4000);
    assert_eq!(numbers(&lines, "out "), (1..=2000).collect::<Vec<_>>());
    assert_eq!(numbers(&lines, "err "), (1..=2000).collect::<Vec<_>>());
    within(20, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn logs_append_across_starts_and_devnull_without_logs() {
    let sb = Sandbox::new("logs_append");
    let log = sb.path("out.log");
    let mut cfg = sb.config(&["--lines", "3"]);
    cfg.logs = Some(LogsConfig {
        stdout: Some(log.clone()),
        ..Default::default()
    });
    let m = sb.manager(cfg);
    for round in 1..=2 {
        let pid = within(20, m.start()).await.unwrap();
        // stdout is a pipe to the supervisor, stderr /dev/null (not configured).
        let fd1 = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
        let fd2 = std::fs::read_link(format!("/proc/{pid}/fd/2")).unwrap();
        assert!(fd1.to_string_lossy().starts_with("pipe:"), "{fd1:?}");
        assert_eq!(fd2, std::path::Path::new("/dev/null"));
        eventually(10, || async {
            (all_lines(&log, 1).len() == 3 * round).then_some(())
        })
        .await;
        within(20, m.stop()).await.unwrap();
    }
    // Without logs: both on /dev/null.
    let plain = sb.manager(sb.config(&[]));
    let pid = within(20, plain.start()).await.unwrap();
    for fd in [0, 1, 2] {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap(),
            std::path::Path::new("/dev/null")
        );
    }
    within(20, plain.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_log_in_a_missing_directory_is_refused_before_anything_starts() {
    let sb = Sandbox::new("logs_baddir");
    let mut cfg = sb.config(&[]);
    cfg.logs = Some(LogsConfig {
        stdout: Some(sb.path("no/such/dir/out.log")),
        ..Default::default()
    });
    let m = sb.manager(cfg);
    let err = within(20, m.start()).await.unwrap_err();
    assert!(
        matches!(&err, daemon_lifecycle::DaemonError::InvalidConfig { field, .. } if field == "logs.stdout"),
        "{err:?}"
    );
    assert_eq!(std::fs::read_dir(sb.dir.path()).unwrap().count(), 0);
    sb.assert_no_leaks();
}
