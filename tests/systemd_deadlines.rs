//! Never hang, never lie about readiness (issue 8): with the manager frozen
//! (SIGSTOP) for longer than the bound, every call returns within its bound
//! with an error naming the call; a start during a slow stop waits for the
//! stop and returns the new PID, never the dying one.
mod support;

use std::time::Duration;

use daemon_lifecycle::{DaemonError, DaemonStatus, Scope, UnitSpec};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::systemd::UserManager;
use support::{alive, within, Sandbox};

/// SIGSTOPs a process; SIGCONTs it on drop (a failed test never leaves a
/// frozen manager behind).
struct Frozen(Pid);

impl Frozen {
    fn new(pid: u32) -> Frozen {
        let pid = Pid::from_raw(pid as i32);
        kill(pid, Signal::SIGSTOP).unwrap();
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

fn unavailable_naming(result: Result<impl std::fmt::Debug, DaemonError>, call: &str) {
    match result {
        Err(DaemonError::BackendUnavailable { reason, .. }) => {
            assert!(reason.contains(call), "{reason:?} does not name {call}")
        }
        other => panic!("expected BackendUnavailable naming {call}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_frozen_manager_gives_errors_naming_the_call_within_the_bound() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_frozen");
    let config = sb
        .config(&[])
        .with_startup_timeout_secs(1)
        .with_shutdown_timeout_secs(1);
    let unit = UnitSpec::from_config(&config, Scope::User).unwrap().unit;
    let m = sb.systemd_manager(&um, config.clone()).await;
    let pid = within(30, m.start()).await.unwrap();

    // Frozen until the end of the test: without a deadline these calls
    // would never return (`within` turns that into a failure). Queries are
    // bounded by the fixed grace (5 s).
    let frozen = Frozen::new(um.manager_pid());
    // Every operation's first call is the read of the unit's properties
    // (one round trip at the unit's object path).
    let read = format!("properties of {unit}");
    unavailable_naming(within(15, m.status_report()).await, &read);
    unavailable_naming(within(15, m.stop()).await, &read);
    unavailable_naming(within(15, m.start()).await, &read);
    // A new connection: Version() is bounded too.
    let err = within(
        15,
        daemon_lifecycle::SystemdBackend::connect_to(
            &daemon_lifecycle::BusTarget::Address(um.bus_address.clone()),
            Scope::User,
        ),
    )
    .await
    .unwrap_err();
    unavailable_naming(Err::<(), _>(err), "Get Version");
    drop(frozen);

    // Thawed: the same backend works again and nothing was changed.
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    within(30, m.stop()).await.unwrap();
    sb.assert_no_leaks();
}

#[tokio::test]
async fn start_during_a_slow_stop_waits_for_it_and_returns_the_new_pid() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    let sb = Sandbox::new("sd_start_stopping");
    // Ignores SIGTERM: the stop takes the whole TimeoutStopSec (3 s).
    let config = sb.config(&["--ignore-term"]).with_shutdown_timeout_secs(3);
    let unit = UnitSpec::from_config(&config, Scope::User).unwrap().unit;
    let m = sb.systemd_manager(&um, config.clone()).await;
    let old = within(30, m.start()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // SIGTERM handler installed

    let stopper = sb.systemd_manager(&um, config.clone()).await;
    let stop = tokio::spawn(async move { stopper.stop().await });
    support::eventually(10, || async {
        let props = um
            .unit_properties(&unit, "org.freedesktop.systemd1.Unit")
            .await;
        (String::try_from(props["ActiveState"].try_clone().unwrap()).unwrap() == "deactivating")
            .then_some(())
    })
    .await;
    let new = within(30, m.start()).await.unwrap();
    assert_ne!(new, old, "start returned the dying PID");
    assert!(!alive(old));
    assert!(alive(new));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(new));
    // The stop was not cancelled by the start: it completed.
    within(30, stop).await.unwrap().unwrap();
    within(30, m.kill()).await.unwrap();
    sb.assert_no_leaks();
}
