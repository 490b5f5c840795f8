//! Real ssh hosts for tests: Debian's `sshd`, started inside the mount
//! namespace of a private system-mode systemd ([`SystemManager`]), so that
//! its `systemd-stdio-bridge -p unix:path=/run/dbus/system_bus_socket`
//! reaches that systemd's bus; it stays in the host's network namespace and
//! listens on `127.0.0.1` on a free port. Its host key, and the client key
//! in its `authorized_keys`, are made per instance (`ssh-keygen`); the
//! client side is an ssh config file naming the instance by an alias.
//! Killed (and its sessions with it) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::systemd::{unavailable, SystemManager};

/// How an instance differs from a plain host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// A host as it should be.
    Plain,
    /// `authorized_keys` holds another key than the client's: the key is
    /// refused.
    RefusesKey,
    /// Every session runs with `PATH=/nowhere` (a `ForceCommand`): a login
    /// finds no `systemd-stdio-bridge`, as on a host without systemd.
    NoBridge,
    /// No listener: each connection is an `sshd -i` (inetd mode) that the
    /// client's `ProxyCommand` starts inside the manager's mount *and*
    /// network namespaces, so the host's `127.0.0.1` is the daemons' (its
    /// readiness probes reach them, as on a real remote machine).
    InNetns,
    /// sshd in this machine's own namespaces, not the manager's: the
    /// bridge is installed, but no systemd (and no system bus) runs here,
    /// as on a host without systemd.
    NoSystemd,
}

/// One running sshd.
pub struct Sshd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `InNetns`: the client's proxy command.
    proxy: Option<String>,
    /// `NoSystemd`: the host's `/run/sshd` we made (removed on drop).
    made_run_sshd: bool,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// The alias the client config gives it (`host = "root@ALIAS"`).
    pub alias: String,
}

impl Sshd {
    /// Starts one in `manager`'s mount namespace, or skips/fails.
    pub fn start(manager: &SystemManager, variant: Variant) -> Option<Sshd> {
        for tool in ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"] {
            if !Path::new(tool).exists() {
                return unavailable(&format!("{tool} is not installed (package openssh-server)"));
            }
        }
        let init = manager.init_pid();
        let dir = tempfile::Builder::new()
            .prefix("dl-sshd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for key in ["hostkey", "userkey", "otherkey"] {
            let st = Command::new("/usr/bin/ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(d.join(key))
                .stdin(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "ssh-keygen");
        }
        let authorized = match variant {
            Variant::RefusesKey => "otherkey.pub",
            _ => "userkey.pub",
        };
        std::fs::copy(d.join(authorized), d.join("authorized_keys")).unwrap();
        // sshd wants its privilege-separation directory (in the namespace).
        let mut made_run_sshd = false;
        if variant == Variant::NoSystemd {
            made_run_sshd = std::fs::create_dir("/run/sshd").is_ok();
        } else {
            let st = Command::new("/usr/bin/nsenter")
                .args(["-m", "-t", &init.to_string(), "--"])
                .args(["mkdir", "-p", "/run/sshd"])
                .status()
                .unwrap();
            assert!(st.success(), "mkdir /run/sshd in the namespace");
        }
        let force = match variant {
            Variant::NoBridge => {
                "ForceCommand /usr/bin/env PATH=/nowhere /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n"
            }
            _ => "",
        };
        // A free port: bound and released (sshd binds it a moment later).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/hostkey\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPidFile none\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nLogLevel VERBOSE\n\
                 MaxSessions 100\nMaxStartups 100\n{force}",
                d = d.display()
            ),
        )
        .unwrap();
        let alias = format!("dlhost{port}");
        let hostkey = std::fs::read_to_string(d.join("hostkey.pub")).unwrap();
        let hostkey: Vec<&str> = hostkey.split_whitespace().take(2).collect();
        let known_as = match variant {
            Variant::InNetns => alias.clone(),
            _ => format!("[127.0.0.1]:{port}"),
        };
        std::fs::write(
            d.join("known_hosts"),
            format!("{known_as} {}\n", hostkey.join(" ")),
        )
        .unwrap();
        if variant == Variant::InNetns {
            let proxy = format!(
                "/usr/bin/nsenter -m -n -t {init} -- /usr/sbin/sshd -i -e -f {}/sshd_config",
                d.display()
            );
            return Some(Sshd {
                child: None,
                dir,
                proxy: Some(proxy),
                made_run_sshd,
                port: 0,
                alias,
            });
        }
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let mut cmd = match variant {
            Variant::NoSystemd => Command::new("/usr/sbin/sshd"),
            _ => {
                let mut c = Command::new("/usr/bin/nsenter");
                c.args(["-m", "-t", &init.to_string(), "--", "/usr/sbin/sshd"]);
                c
            }
        };
        let child = cmd
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut sshd = Sshd {
            child: Some(child),
            dir,
            proxy: None,
            made_run_sshd,
            port,
            alias,
        };
        // Up once it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = sshd.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap();
                drop(sshd);
                return unavailable(&format!("sshd exited ({st}): {log}"));
            }
            if Instant::now() > deadline {
                drop(sshd);
                return unavailable("sshd did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(sshd)
    }

    /// The client config's entry for this host: `Host ALIAS` with its port,
    /// the client key and a known_hosts holding its host key.
    pub fn client_entry(&self) -> String {
        let d = self.dir.path().display();
        let reach = match &self.proxy {
            Some(proxy) => format!("ProxyCommand {proxy}"),
            None => format!("HostName 127.0.0.1\n  Port {}", self.port),
        };
        format!(
            "Host {alias}\n  {reach}\n  User root\n  IdentityFile {d}/userkey\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n  \
             LogLevel ERROR\n",
            alias = self.alias,
        )
    }

    /// A client config file (in this instance's directory) with this
    /// host's entry.
    pub fn client_config(&self) -> PathBuf {
        let path = self.dir.path().join("ssh_config");
        std::fs::write(&path, self.client_entry()).unwrap();
        path
    }

    /// sshd's PID (its sessions are its descendants).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a listening sshd").id()
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The PIDs of the `systemd-stdio-bridge` processes its sessions run.
    pub fn bridges(&self) -> Vec<u32> {
        descendants(self.pid())
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd-stdio-b")
            })
            .collect()
    }

    /// The PIDs below sshd (its sessions and what they run).
    pub fn sessions(&self) -> Vec<u32> {
        descendants(self.pid())
    }
}

/// Every descendant of `pid` (through /proc's children lists).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for c in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// Every live `ssh` client process, anywhere, whose command line holds
/// `needle` (an ssh config file of one test): what a `daemonctl` child
/// may have left (its orphans are not our descendants).
pub fn ssh_clients_with(needle: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            comm.trim() == "ssh"
                && !super::is_zombie(*p)
                && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

/// Every live `ssh` client process that is our descendant (masters and
/// sessions; zombies are not alive).
pub fn our_ssh_clients() -> Vec<u32> {
    descendants(std::process::id())
        .into_iter()
        .filter(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let alive = state
                .rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'));
            comm.trim() == "ssh" && alive
        })
        .collect()
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if self.made_run_sshd {
            let _ = std::fs::remove_dir("/run/sshd");
        }
        if let Some(mut child) = self.child.take() {
            let sessions = descendants(child.id());
            let _ = child.kill();
            let _ = child.wait();
            // Its sessions (per-connection sshd processes) outlive a killed
            // listener: they go too.
            for p in sessions {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
