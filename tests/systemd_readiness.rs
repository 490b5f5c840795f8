//! Readiness on the systemd backend: Type=notify waits for READY=1 (the start
//! job), tcp/http probes wait for the port, early death and timeouts are typed.
mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use daemon_lifecycle::{DaemonError, DaemonStatus, Readiness};
use support::systemd::UserManager;
use support::{within, Sandbox};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

#[tokio::test]
async fn notify_start_returns_after_ready_with_status_text() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_notify");
    let stamp = sb.path("ready.stamp");
    let mut config = sb.config(&[
        "--ready-after",
        "700",
        "--status",
        "warming up",
        "--ready-stamp",
        stamp.to_str().unwrap(),
    ]);
    config.readiness = Some(Readiness::Notify);
    let m = sb.systemd_manager(&um, config).await;
    let pid = within(30, m.start()).await.unwrap();
    let returned = now_us();
    let ready: u128 = std::fs::read_to_string(&stamp)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ready <= returned, "start returned before READY=1");
    let report = m.status_report().await.unwrap();
    assert_eq!(report.status, DaemonStatus::Running(pid));
    assert_eq!(report.status_text.as_deref(), Some("ready"));
    m.wait_ready(5).await.unwrap();
    within(30, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn notify_never_ready_is_a_timeout_and_nothing_runs() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_notify_never");
    let mut config = sb.config(&[]).with_startup_timeout_secs(1);
    config.readiness = Some(Readiness::Notify);
    let m = sb.systemd_manager(&um, config).await;
    let err = within(30, m.start()).await.unwrap_err();
    assert!(matches!(err, DaemonError::Timeout { .. }), "{err:?}");
    assert!(!matches!(
        m.status().await.unwrap(),
        DaemonStatus::Running(_)
    ));
    sb.assert_no_leaks();
}

#[tokio::test]
async fn tcp_and_http_probes_wait_for_the_port() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    for kind in ["tcp", "http"] {
        let sb = Sandbox::new(&format!("sd_probe_{kind}"));
        let addr = format!("127.0.0.1:{}", free_port());
        let stamp = sb.path("ready.stamp");
        let flag = if kind == "tcp" { "--listen" } else { "--http" };
        let mut config = sb.config(&[
            flag,
            &addr,
            "--ready-after",
            "500",
            "--ready-stamp",
            stamp.to_str().unwrap(),
        ]);
        config.readiness = Some(match kind {
            "tcp" => Readiness::Tcp {
                address: addr.clone(),
                interval_ms: Some(20),
            },
            _ => Readiness::Http {
                url: format!("http://{addr}/health"),
                interval_ms: Some(20),
            },
        });
        let m = sb.systemd_manager(&um, config).await;
        let pid = within(30, m.start()).await.unwrap();
        let returned = now_us();
        let ready: u128 = std::fs::read_to_string(&stamp)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            ready <= returned,
            "{kind}: start returned before the server was up"
        );
        std::net::TcpStream::connect(&addr).unwrap();
        assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
        m.wait_ready(5).await.unwrap();
        within(30, m.stop()).await.unwrap();
        sb.assert_no_leaks();
    }
}

#[tokio::test]
async fn death_before_readiness_is_start_failed_with_the_code() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_probe_dies");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut config = sb.config(&["--crash-after", "300:9"]);
    config.readiness = Some(Readiness::Tcp {
        address: addr,
        interval_ms: Some(20),
    });
    let m = sb.systemd_manager(&um, config).await;
    let err = within(30, m.start()).await.unwrap_err();
    match &err {
        DaemonError::StartFailed { reason, .. } => assert!(reason.contains("code 9"), "{reason}"),
        other => panic!("expected StartFailed, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    sb.assert_no_leaks();
}

#[tokio::test]
async fn probe_timeout_stops_the_unit() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_probe_timeout");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut config = sb.config(&[]).with_startup_timeout_secs(1);
    config.readiness = Some(Readiness::Tcp {
        address: addr,
        interval_ms: Some(50),
    });
    let m = sb.systemd_manager(&um, config).await;
    let err = within(30, m.start()).await.unwrap_err();
    assert!(matches!(err, DaemonError::Timeout { .. }), "{err:?}");
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    assert!(um.unit_processes().is_empty(), "{:?}", um.unit_processes());
    sb.assert_no_leaks();
}
