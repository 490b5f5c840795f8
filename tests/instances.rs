//! Instances of one template config (issue 11): `{instance}` in args and
//! paths, one daemon per instance, each driven on its own.
mod support;

use daemon_lifecycle::{DaemonError, DaemonStatus};
use support::{within, Sandbox};

fn template(sb: &Sandbox) -> daemon_lifecycle::DaemonConfig {
    let mut config = sb.config(&["--", "--gpu", "{instance}", "{{instance}}"]);
    config.pid_file = sb.path("worker@{instance}.pid");
    config
}

/// The command line of `pid`, argument by argument.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[tokio::test]
async fn three_instances_run_and_stop_independently_on_the_fork_backend() {
    let sb = Sandbox::new("instances_fork");
    let managers: Vec<_> = ["gpu0", "gpu1", "gpu2"]
        .iter()
        .map(|i| sb.manager(template(&sb).with_instance(*i)))
        .collect();
    let mut pids = Vec::new();
    for (m, i) in managers.iter().zip(["gpu0", "gpu1", "gpu2"]) {
        let pid = within(20, m.start()).await.unwrap();
        let argv = cmdline(pid);
        let n = argv.len();
        assert_eq!(argv[n - 3..], ["--gpu", i, "{instance}"], "{argv:?}");
        assert!(sb.path(&format!("worker@{i}.pid")).exists());
        pids.push(pid);
    }
    assert_eq!(
        pids.iter().collect::<std::collections::HashSet<_>>().len(),
        3
    );
    within(20, managers[1].stop()).await.unwrap();
    assert_eq!(
        within(5, managers[1].status()).await.unwrap(),
        DaemonStatus::Stopped
    );
    for k in [0, 2] {
        assert_eq!(
            within(5, managers[k].status()).await.unwrap(),
            DaemonStatus::Running(pids[k])
        );
    }
    for k in [0, 2] {
        within(20, managers[k].stop()).await.unwrap();
    }
    sb.assert_no_leaks();
}

#[tokio::test]
async fn a_template_without_an_instance_and_hostile_instances_are_refused() {
    let sb = Sandbox::new("instances_bad");
    let err = within(10, sb.manager(template(&sb)).start())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DaemonError::InvalidConfig { field, .. } if field == "instance"),
        "{err:?}"
    );
    for bad in [
        "",
        "a/b",
        "../x",
        "x\ny",
        ".hidden",
        "-flag",
        &"x".repeat(200),
    ] {
        let err = within(10, sb.manager(template(&sb).with_instance(bad)).start())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DaemonError::InvalidConfig { field, .. } if field == "instance"),
            "{bad:?}: {err:?}"
        );
    }
    // A fixed PID file would be shared by every instance.
    let mut shared = template(&sb).with_instance("gpu0");
    shared.pid_file = sb.path("one.pid");
    let err = within(10, sb.manager(shared).start()).await.unwrap_err();
    assert!(
        matches!(&err, DaemonError::InvalidConfig { field, .. } if field == "pid_file"),
        "{err:?}"
    );
    assert_eq!(std::fs::read_dir(sb.path("")).unwrap().count(), 0);
    sb.assert_no_leaks();
}
