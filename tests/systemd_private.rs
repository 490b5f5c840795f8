//! The manager's private socket (issue 12), against a real `systemd --user`:
//! `SystemdBackend::connect` reaches the manager through
//! `$XDG_RUNTIME_DIR/systemd/private` where there is no bus at all, and
//! every job wait works over it; a socket there that is not the manager's
//! (here: a symbolic link to it) is not used. Environment variables are set
//! for this process: one test in this file, so nothing else reads them.
mod support;

use std::sync::Arc;

use daemon_lifecycle::{DaemonError, DaemonManager, DaemonStatus, Scope, SystemdBackend};
use support::systemd::UserManager;
use support::{alive, within, Sandbox};

#[tokio::test]
async fn the_private_socket_is_used_when_it_is_the_managers_and_only_then() {
    let Some(um) = UserManager::start().await else {
        return;
    };
    // A runtime directory with the manager's private socket and no bus:
    // a hard link is the same socket, as systemd made it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("systemd")).unwrap();
    let private = um.runtime_dir.path().join("systemd/private");
    std::fs::hard_link(&private, dir.path().join("systemd/private")).unwrap();
    std::env::set_var("XDG_RUNTIME_DIR", dir.path());
    std::env::remove_var("DBUS_SESSION_BUS_ADDRESS");

    let backend = within(15, SystemdBackend::connect(Scope::User))
        .await
        .expect("connects through the private socket, with no bus there");
    let sb = Sandbox::new("sd_private");
    let m = DaemonManager::with_backend(sb.config(&[]), Arc::new(backend));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    // Start and stop each wait for their job's JobRemoved, which the
    // manager sends over this connection.
    let pid = within(30, m.start()).await.unwrap();
    assert!(alive(pid));
    assert!(um.unit_processes().contains(&pid));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Running(pid));
    let new = within(30, m.restart()).await.unwrap();
    assert_ne!(new, pid);
    assert!(!alive(pid));
    within(30, m.stop()).await.unwrap();
    assert!(!alive(new));
    assert_eq!(m.status().await.unwrap(), DaemonStatus::Stopped);
    sb.assert_no_leaks();

    // A symbolic link in its place is not followed: with no bus either,
    // nothing answers.
    std::fs::remove_file(dir.path().join("systemd/private")).unwrap();
    std::os::unix::fs::symlink(&private, dir.path().join("systemd/private")).unwrap();
    match within(15, SystemdBackend::connect(Scope::User)).await {
        Err(DaemonError::BackendUnavailable { .. }) => {}
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
    // Opted out: the bus, which is not there either.
    std::fs::remove_file(dir.path().join("systemd/private")).unwrap();
    std::fs::hard_link(&private, dir.path().join("systemd/private")).unwrap();
    std::env::set_var("DAEMON_LIFECYCLE_PRIVATE_SOCKET", "0");
    match within(15, SystemdBackend::connect(Scope::User)).await {
        Err(DaemonError::BackendUnavailable { .. }) => {}
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
    std::env::remove_var("DAEMON_LIFECYCLE_PRIVATE_SOCKET");
}
