//! Resource limits and the user/group the daemon runs as.
//!
//! Everything that can fail for a reason the caller should hear about (an
//! unknown user, a non-root caller asking for another user, a limit above the
//! hard limit) is checked in the caller, before anything starts. Names are
//! resolved there too: looking up a user reads files and may allocate, which
//! is not allowed between fork and exec. What is left for the child
//! ([`apply_in_child`]) is a handful of syscalls: `setrlimit`, `setgroups`,
//! `setgid`, `setuid`, in that order (groups first, while still privileged).
//!
//! std's `CommandExt::uid`/`gid` are not used: std calls `setuid` before the
//! `pre_exec` closures run, after which `setgroups` is no longer permitted, and
//! it can only clear the supplementary groups, not set them.

use nix::sys::resource::{getrlimit, Resource};
use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};

use crate::config::{DaemonConfig, Limits};
use crate::error::{DaemonError, Result};

/// Who the daemon runs as, fully resolved to numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's, from the group database).
    pub groups: Vec<u32>,
    /// Whether to switch at all (false when the caller already is that user).
    pub switch: bool,
    /// For `HOME`, `USER`, `LOGNAME`, `SHELL`.
    pub name: Option<String>,
    pub home: Option<String>,
    pub shell: Option<String>,
}

/// Resolves `user`/`group`. `None` when neither is set. A non-root caller may
/// only name itself (and its own groups): anything else is `PermissionDenied`.
pub(crate) fn resolve(config: &DaemonConfig) -> Result<Option<Credentials>> {
    if config.user.is_none() && config.group.is_none() {
        return Ok(None);
    }
    let lookup_err = |field: &str, e: nix::Error| {
        DaemonError::io(format!("look up {field}"), std::io::Error::from(e))
    };
    let user = match &config.user {
        None => None,
        Some(spec) => {
            let found = match spec.parse::<u32>() {
                Ok(uid) => User::from_uid(Uid::from_raw(uid)).map_err(|e| lookup_err("user", e))?,
                Err(_) => User::from_name(spec).map_err(|e| lookup_err("user", e))?,
            };
            match (found, spec.parse::<u32>()) {
                (Some(u), _) => Some((u.uid.as_raw(), Some(u))),
                // A numeric id without a passwd entry is allowed, as in systemd.
                (None, Ok(uid)) => Some((uid, None)),
                (None, Err(_)) => {
                    return Err(DaemonError::invalid(
                        "user",
                        format!("no such user {spec:?}"),
                    ))
                }
            }
        }
    };
    let gid = match &config.group {
        Some(spec) => match spec.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match Group::from_name(spec).map_err(|e| lookup_err("group", e))? {
                Some(g) => g.gid.as_raw(),
                None => {
                    return Err(DaemonError::invalid(
                        "group",
                        format!("no such group {spec:?}"),
                    ))
                }
            },
        },
        None => match &user {
            Some((_, Some(u))) => u.gid.as_raw(),
            _ => Gid::effective().as_raw(),
        },
    };
    let uid = user
        .as_ref()
        .map_or(Uid::effective().as_raw(), |(uid, _)| *uid);
    let entry = user.and_then(|(_, u)| u);

    let me = Uid::effective();
    if !me.is_root() {
        let my_groups = nix::unistd::getgroups().unwrap_or_default();
        let own_group =
            gid == Gid::effective().as_raw() || my_groups.iter().any(|g| g.as_raw() == gid);
        if uid != me.as_raw() || !own_group {
            return Err(DaemonError::PermissionDenied {
                action: format!(
                    "run {} as user {} group {} (only root can switch users; running as uid {})",
                    config.name(),
                    config.user.as_deref().unwrap_or("(self)"),
                    config.group.as_deref().unwrap_or("(default)"),
                    me
                ),
                source: None,
            });
        }
        // Already that user: nothing to switch (and no right to setgroups).
        return Ok(Some(Credentials {
            uid,
            gid,
            groups: Vec::new(),
            switch: false,
            name: entry.as_ref().map(|u| u.name.clone()),
            home: entry.as_ref().map(|u| u.dir.to_string_lossy().into_owned()),
            shell: entry
                .as_ref()
                .map(|u| u.shell.to_string_lossy().into_owned()),
        }));
    }

    let mut groups = match &entry {
        Some(u) => supplementary_groups(&u.name, gid)?,
        None => Vec::new(),
    };
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    Ok(Some(Credentials {
        uid,
        gid,
        groups,
        switch: true,
        name: entry.as_ref().map(|u| u.name.clone()),
        home: entry.as_ref().map(|u| u.dir.to_string_lossy().into_owned()),
        shell: entry
            .as_ref()
            .map(|u| u.shell.to_string_lossy().into_owned()),
    }))
}

/// The user's groups from the group database (what `initgroups` would set).
#[cfg(not(target_vendor = "apple"))]
fn supplementary_groups(name: &str, gid: u32) -> Result<Vec<u32>> {
    let cname = std::ffi::CString::new(name).map_err(|_| DaemonError::invalid("user", "NUL"))?;
    nix::unistd::getgrouplist(&cname, Gid::from_raw(gid))
        .map(|v| v.into_iter().map(|g| g.as_raw()).collect())
        .map_err(|e| DaemonError::io(format!("groups of user {name}"), e.into()))
}

/// macOS: nix has no `getgrouplist` there; its libc one takes `c_int`s.
#[cfg(target_vendor = "apple")]
fn supplementary_groups(name: &str, gid: u32) -> Result<Vec<u32>> {
    let cname = std::ffi::CString::new(name).map_err(|_| DaemonError::invalid("user", "NUL"))?;
    let mut groups = vec![0 as libc::c_int; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: valid C string, buffer of `n` c_ints.
        let r = unsafe {
            libc::getgrouplist(
                cname.as_ptr(),
                gid as libc::c_int,
                groups.as_mut_ptr(),
                &mut n,
            )
        };
        if r >= 0 {
            groups.truncate(n as usize);
            return Ok(groups.into_iter().map(|g| g as u32).collect());
        }
        if groups.len() >= 65536 {
            return Err(DaemonError::io(
                format!("groups of user {name}"),
                std::io::Error::other("too many groups"),
            ));
        }
        let len = groups.len() * 2;
        groups.resize(len, 0);
    }
}

/// The limits as (resource, value) pairs, soft = hard = value (as systemd's
/// `LimitNOFILE=N` does).
pub(crate) fn rlimits(limits: &Limits) -> Vec<(Resource, u64)> {
    let mut out = Vec::new();
    let pairs = [
        (Resource::RLIMIT_NOFILE, limits.nofile),
        (Resource::RLIMIT_AS, limits.memory_bytes),
        (Resource::RLIMIT_CPU, limits.cpu_secs),
        (Resource::RLIMIT_NPROC, limits.processes),
    ];
    for (resource, value) in pairs {
        if let Some(v) = value {
            out.push((resource, v));
        }
    }
    out
}

/// Refuses, before anything starts, a limit that the OS would refuse in the
/// child: raising a hard limit needs privilege.
pub(crate) fn check_limits(config: &DaemonConfig) -> Result<()> {
    if Uid::effective().is_root() {
        return Ok(());
    }
    let fields = [
        (
            "limits.nofile",
            Resource::RLIMIT_NOFILE,
            config.limits.nofile,
        ),
        (
            "limits.memory_bytes",
            Resource::RLIMIT_AS,
            config.limits.memory_bytes,
        ),
        (
            "limits.cpu_secs",
            Resource::RLIMIT_CPU,
            config.limits.cpu_secs,
        ),
        (
            "limits.processes",
            Resource::RLIMIT_NPROC,
            config.limits.processes,
        ),
    ];
    for (field, resource, value) in fields {
        let Some(v) = value else { continue };
        let (_, hard) = getrlimit(resource)
            .map_err(|e| DaemonError::io(format!("getrlimit for {field}"), e.into()))?;
        if v > hard {
            return Err(DaemonError::PermissionDenied {
                action: format!("set {field} = {v} above the hard limit {hard} (needs root)"),
                source: None,
            });
        }
    }
    Ok(())
}

/// Runs in the child between fork and exec: only async-signal-safe calls,
/// no allocation (everything was computed before the fork).
pub(crate) fn apply_in_child(
    limits: &[(Resource, u64)],
    creds: Option<&Credentials>,
    groups: &[libc::gid_t],
) -> std::io::Result<()> {
    for (resource, value) in limits {
        nix::sys::resource::setrlimit(*resource, *value, *value)?;
    }
    if let Some(c) = creds.filter(|c| c.switch) {
        // SAFETY: plain syscalls with a pointer to a live, pre-built slice.
        unsafe {
            if libc::setgroups(groups.len() as _, groups.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setgid(c.gid as libc::gid_t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setuid(c.uid as libc::uid_t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_refused_by_field() {
        let mut c = DaemonConfig::new("/bin/sh", "/tmp/x.pid");
        c.user = Some("no-such-user-dltest".into());
        assert!(
            matches!(resolve(&c), Err(DaemonError::InvalidConfig { field, .. }) if field == "user")
        );
        c.user = None;
        c.group = Some("no-such-group-dltest".into());
        assert!(
            matches!(resolve(&c), Err(DaemonError::InvalidConfig { field, .. }) if field == "group")
        );
    }

    #[test]
    fn naming_yourself_needs_no_switch_or_is_root() {
        let mut c = DaemonConfig::new("/bin/sh", "/tmp/x.pid");
        c.user = Some(Uid::effective().as_raw().to_string());
        let creds = resolve(&c).unwrap().unwrap();
        assert_eq!(creds.uid, Uid::effective().as_raw());
        assert_eq!(creds.switch, Uid::effective().is_root());
    }
}
