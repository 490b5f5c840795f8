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
//!
//! Platforms: the limits go through libc's `getrlimit`/`setrlimit`, whose
//! four constants exist on Linux, macOS and FreeBSD alike (nix 0.30 has no
//! `RLIMIT_NPROC` on Apple targets nor `RLIMIT_AS` on FreeBSD, and FreeBSD's
//! `rlim_t` is signed). `limits.memory_bytes` is `RLIMIT_AS` everywhere:
//! FreeBSD's `RLIMIT_AS` is its `RLIMIT_VMEM`, macOS's is its `RLIMIT_RSS`.
//! The group lookups nix leaves out on Apple targets come from libc there
//! (module `groups`). Only Linux runs this code in the tests; macOS and
//! FreeBSD are type-checked (`scripts/check-platforms.sh`).

use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

use crate::config::{Limit, Limits};
use crate::error::{DaemonError, Result};
use crate::spec::ServiceSpec;

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
pub(crate) fn resolve(spec: &ServiceSpec) -> Result<Option<Credentials>> {
    if spec.run_as.is_default() {
        return Ok(None);
    }
    let user = spec
        .run_as
        .user
        .as_deref()
        .map(crate::host::user)
        .transpose()?;
    let gid = match &spec.run_as.group {
        Some(spec) => crate::host::group(spec)?.as_raw(),
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
        let own_group = gid == Gid::effective().as_raw() || groups::caller_groups().contains(&gid);
        if uid != me.as_raw() || !own_group {
            return Err(DaemonError::PermissionDenied {
                action: format!(
                    "run {} as user {} group {} (only root can switch users; running as uid {})",
                    spec.name,
                    spec.run_as.user.as_deref().unwrap_or("(self)"),
                    spec.run_as.group.as_deref().unwrap_or("(default)"),
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
        Some(u) => groups::supplementary_groups(&u.name, gid)?,
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

/// Group lookups: nix's on every platform that has them.
#[cfg(not(target_vendor = "apple"))]
mod groups {
    use nix::unistd::Gid;

    use crate::error::{DaemonError, Result};

    /// The caller's supplementary groups (empty if they cannot be read).
    pub(super) fn caller_groups() -> Vec<u32> {
        nix::unistd::getgroups()
            .unwrap_or_default()
            .into_iter()
            .map(Gid::as_raw)
            .collect()
    }

    /// The user's groups from the group database (what `initgroups` would set).
    pub(super) fn supplementary_groups(name: &str, gid: u32) -> Result<Vec<u32>> {
        let cname =
            std::ffi::CString::new(name).map_err(|_| DaemonError::invalid("user", "NUL"))?;
        nix::unistd::getgrouplist(&cname, Gid::from_raw(gid))
            .map(|v| v.into_iter().map(|g| g.as_raw()).collect())
            .map_err(|e| DaemonError::io(format!("groups of user {name}"), e.into()))
    }
}

/// Group lookups on macOS: nix 0.30 has neither `getgroups` nor
/// `getgrouplist` there, so these call libc (whose `getgrouplist` takes
/// `c_int`s).
#[cfg(target_vendor = "apple")]
mod groups {
    use crate::error::{DaemonError, Result};

    /// The caller's supplementary groups as the kernel holds them for this
    /// process (empty if they cannot be read).
    pub(super) fn caller_groups() -> Vec<u32> {
        // SAFETY: a zero count with a null buffer only returns the count.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let Ok(len) = usize::try_from(n) else {
            return Vec::new();
        };
        let mut groups: Vec<libc::gid_t> = vec![0; len];
        // SAFETY: a buffer of `n` gid_t.
        let n = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
        match usize::try_from(n) {
            Ok(len) => {
                groups.truncate(len);
                groups
            }
            Err(_) => Vec::new(),
        }
    }

    /// The user's groups from the group database (what `initgroups` would set).
    pub(super) fn supplementary_groups(name: &str, gid: u32) -> Result<Vec<u32>> {
        let cname =
            std::ffi::CString::new(name).map_err(|_| DaemonError::invalid("user", "NUL"))?;
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
}

/// The resource argument of libc's `getrlimit`/`setrlimit`: glibc declares
/// it as its own enum type, every other libc as `c_int`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
type ResourceId = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type ResourceId = libc::c_int;

/// One limit to set in the child: soft = hard = `value` (as systemd's
/// `LimitNOFILE=N` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rlimit {
    resource: ResourceId,
    value: libc::rlim_t,
}

/// The config's limits, each with its field name and resource: the one list
/// of them in the fork backend.
fn limit_fields(limits: &Limits) -> impl Iterator<Item = (&'static str, ResourceId, Option<u64>)> {
    limits.entries().into_iter().map(|(limit, value)| {
        let resource = match limit {
            Limit::OpenFiles => libc::RLIMIT_NOFILE,
            Limit::MemoryBytes => libc::RLIMIT_AS,
            Limit::CpuSecs => libc::RLIMIT_CPU,
            Limit::Processes => libc::RLIMIT_NPROC,
        };
        (limit.field(), resource, value)
    })
}

/// A config value as an `rlim_t`: values past the platform's largest limit
/// (`RLIM_INFINITY`, `i64::MAX` on FreeBSD and macOS) mean unlimited.
fn to_rlim(value: u64) -> libc::rlim_t {
    match libc::rlim_t::try_from(value) {
        Ok(v) if v < libc::RLIM_INFINITY => v,
        _ => libc::RLIM_INFINITY,
    }
}

/// The set limits, in the order the child applies them.
pub(crate) fn rlimits(limits: &Limits) -> Vec<Rlimit> {
    limit_fields(limits)
        .filter_map(|(_, resource, value)| {
            value.map(|v| Rlimit {
                resource,
                value: to_rlim(v),
            })
        })
        .collect()
}

/// Refuses, before anything starts, a limit that the OS would refuse in the
/// child: raising a hard limit needs privilege.
pub(crate) fn check_limits(spec: &ServiceSpec) -> Result<()> {
    if Uid::effective().is_root() {
        return Ok(());
    }
    for (field, resource, value) in limit_fields(&spec.limits) {
        let Some(v) = value else { continue };
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid resource and a pointer to a live rlimit.
        if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
            return Err(DaemonError::io(
                format!("getrlimit for {field}"),
                std::io::Error::last_os_error(),
            ));
        }
        let hard = current.rlim_max;
        if to_rlim(v) > hard {
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
    limits: &[Rlimit],
    creds: Option<&Credentials>,
    groups: &[libc::gid_t],
) -> std::io::Result<()> {
    for limit in limits {
        let value = libc::rlimit {
            rlim_cur: limit.value,
            rlim_max: limit.value,
        };
        // SAFETY: a valid resource and a pointer to a live rlimit.
        if unsafe { libc::setrlimit(limit.resource, &value) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
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
    use crate::config::DaemonConfig;

    fn spec(c: &DaemonConfig) -> ServiceSpec {
        ServiceSpec::from_config(c).unwrap()
    }

    #[test]
    fn unknown_names_are_refused_by_field() {
        let mut c = DaemonConfig::new("/bin/sh", "/tmp/x.pid");
        c.user = Some("no-such-user-dltest".into());
        assert!(
            matches!(resolve(&spec(&c)), Err(DaemonError::InvalidConfig { field, .. }) if field == "user")
        );
        c.user = None;
        c.group = Some("no-such-group-dltest".into());
        assert!(
            matches!(resolve(&spec(&c)), Err(DaemonError::InvalidConfig { field, .. }) if field == "group")
        );
    }

    #[test]
    fn limits_map_to_their_resources_and_values_past_the_maximum_mean_unlimited() {
        let limits = Limits {
            nofile: Some(64),
            processes: Some(u64::MAX),
            ..Limits::default()
        };
        assert_eq!(
            rlimits(&limits),
            [
                Rlimit {
                    resource: libc::RLIMIT_NOFILE,
                    value: 64
                },
                Rlimit {
                    resource: libc::RLIMIT_NPROC,
                    value: libc::RLIM_INFINITY
                },
            ]
        );
    }

    #[test]
    fn naming_yourself_needs_no_switch_or_is_root() {
        let mut c = DaemonConfig::new("/bin/sh", "/tmp/x.pid");
        c.user = Some(Uid::effective().as_raw().to_string());
        let creds = resolve(&spec(&c)).unwrap().unwrap();
        assert_eq!(creds.uid, Uid::effective().as_raw());
        assert_eq!(creds.switch, Uid::effective().is_root());
    }
}
