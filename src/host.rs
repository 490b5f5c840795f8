//! Host checks shared by every backend: facts about the machine that will
//! run the daemon (today always this one), as opposed to the pure checks of
//! the config. Account lookups live here so the fork backend's credentials
//! and the systemd backend's `User=`/`Group=` check read names the same way.

use nix::unistd::{Gid, Group, Uid, User};

use crate::error::{DaemonError, Result};

fn lookup_err(field: &str, e: nix::Error) -> DaemonError {
    DaemonError::io(format!("look up {field}"), std::io::Error::from(e))
}

/// `user` as a name or a numeric UID: its UID and passwd entry. A numeric
/// UID without an entry is allowed (as systemd allows it); an unknown name
/// is `InvalidConfig { field: "user" }`.
pub(crate) fn user(spec: &str) -> Result<(u32, Option<User>)> {
    let numeric = spec.parse::<u32>().ok();
    let found = match numeric {
        Some(uid) => User::from_uid(Uid::from_raw(uid)),
        None => User::from_name(spec),
    }
    .map_err(|e| lookup_err("user", e))?;
    match (found, numeric) {
        (Some(u), _) => Ok((u.uid.as_raw(), Some(u))),
        (None, Some(uid)) => Ok((uid, None)),
        (None, None) => Err(DaemonError::invalid(
            "user",
            format!("no such user {spec:?} on this host"),
        )),
    }
}

/// `group` as a name or a numeric GID; an unknown name is
/// `InvalidConfig { field: "group" }`.
pub(crate) fn group(spec: &str) -> Result<Gid> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    match Group::from_name(spec).map_err(|e| lookup_err("group", e))? {
        Some(g) => Ok(g.gid),
        None => Err(DaemonError::invalid(
            "group",
            format!("no such group {spec:?} on this host"),
        )),
    }
}
