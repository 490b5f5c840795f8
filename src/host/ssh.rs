//! [`SshHost`]: another machine, reached over `ssh` the way `systemctl -H`
//! reaches it. Nothing of ours runs there: the host needs an sshd that lets
//! us in, `/bin/sh`, and for the systemd backend `systemd-stdio-bridge` and
//! a bus.
//!
//! One multiplexed connection per host: a master `ssh -M -N` (our child,
//! killed when the [`SshHost`] is dropped, and on Linux when the thread that
//! connected dies) with its control socket in a private directory of ours
//! (0700, checked before use). Every later command, the bus bridge included,
//! is a session on that master (`ControlMaster=no`, and `ProxyCommand=false`
//! so that a vanished master is an error, never a second connection). All
//! of them run with `BatchMode=yes` (no prompt ever waits for a human) and
//! a null or scripted stdin.
//!
//! Commands never pass user data through the remote login shell: the remote
//! command is always the constant `/bin/sh -s`, and the script it reads on
//! stdin carries every path or name single-quoted ([`sh_quote`]), so a
//! hostile string stays one word whatever it holds.
//!
//! Timeouts: [`SshOptions::connect_timeout`] bounds reaching and logging in
//! to the host (ssh's `ConnectTimeout`, and our own bound on the whole
//! login); [`SshOptions::command_timeout`] bounds each command run there
//! (host checks, file writes, probes). Neither is an operation's timeout:
//! those stay the config's, enforced by the host's systemd.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Scope;
use crate::error::{DaemonError, RemoteProblem, Result};

/// Where a remote host is: `[user@]hostname[:port]`, checked and split.
///
/// The host name is a DNS name or an IPv4 address (`[A-Za-z0-9.-]`, not
/// starting with `-` or `.`), or an IPv6 address in brackets
/// (`[::1]:2222`); the user is `[A-Za-z0-9._-]`, not starting with `-`. Any
/// other character is refused: the string ends up as ssh's arguments, where
/// a leading `-` or a space would mean something else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshDestination {
    user: Option<String>,
    host: String,
    port: Option<u16>,
}

impl SshDestination {
    /// Parses `[user@]hostname[:port]`; anything else is
    /// [`DaemonError::InvalidConfig`] for the field `host`.
    pub fn parse(text: &str) -> Result<SshDestination> {
        let bad = |why: &str| {
            DaemonError::invalid(
                "host",
                format!(
                    "{} is not user@hostname[:port]: {why}",
                    crate::text::quote(text)
                ),
            )
        };
        if text.is_empty() || text.len() > 512 {
            return Err(bad("empty or longer than 512 bytes"));
        }
        let (user, rest) = match text.split_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, text),
        };
        if let Some(u) = user {
            let ok = u
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if u.is_empty() || u.starts_with('-') || !ok || u.len() > 64 {
                return Err(bad(
                    "the user may hold A-Z a-z 0-9 . _ - and not start with -",
                ));
            }
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| bad("no ] after ["))?;
            if addr.is_empty()
                || !addr.contains(':')
                || !addr
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
            {
                return Err(bad("not an IPv6 address in brackets"));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (addr, port)
        } else {
            let (host, port) = match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            let ok = host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b));
            if host.is_empty() || host.len() > 253 || !ok || host.starts_with(['-', '.']) {
                return Err(bad(
                    "the host name may hold A-Z a-z 0-9 . - and not start with - or . (IPv6: in brackets)",
                ));
            }
            (host, port)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
                _ => return Err(bad("the port is not 1 to 65535")),
            },
        };
        Ok(SshDestination {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        })
    }

    /// The user to log in as (`None`: ssh's default, from its config).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The host name or address (an IPv6 address without brackets).
    pub fn hostname(&self) -> &str {
        &self.host
    }

    /// The port (`None`: ssh's default, from its config).
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl FromStr for SshDestination {
    type Err = DaemonError;
    fn from_str(s: &str) -> Result<Self> {
        SshDestination::parse(s)
    }
}

impl fmt::Display for SshDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        match (self.host.contains(':'), self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.host),
            (false, Some(p)) => write!(f, "{}:{p}", self.host),
            (_, None) => f.write_str(&self.host),
        }
    }
}

/// How we run ssh: the program, an optional ssh config file (`ssh -F`: host
/// aliases, keys, known hosts), and the two timeouts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SshOptions {
    /// The ssh client (default `ssh`, found in `PATH`).
    pub program: PathBuf,
    /// An ssh config file used instead of `~/.ssh/config` (`ssh -F FILE`).
    pub config_file: Option<PathBuf>,
    /// How long reaching and logging in to the host may take (default
    /// 10 s): ssh's `ConnectTimeout`, and our bound on the whole login.
    pub connect_timeout: Duration,
    /// How long one command on the host may take (a host check, a unit
    /// file write, one probe attempt; default 30 s).
    pub command_timeout: Duration,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            program: PathBuf::from("ssh"),
            config_file: None,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
        }
    }
}

impl SshOptions {
    /// Uses `file` as ssh's config (`ssh -F`).
    pub fn with_config_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.config_file = Some(file.into());
        self
    }

    /// Sets the connection timeout (at least 1 s; ssh counts in seconds).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_secs(1));
        self
    }

    /// Sets the bound of each command on the host.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The ssh client program and config as `$DAEMON_LIFECYCLE_SSH` and
    /// `$DAEMON_LIFECYCLE_SSH_CONFIG` name them (unset: `ssh` and ssh's own
    /// config).
    pub fn from_env() -> SshOptions {
        let mut opts = SshOptions::default();
        if let Some(p) = std::env::var_os("DAEMON_LIFECYCLE_SSH").filter(|p| !p.is_empty()) {
            opts.program = PathBuf::from(p);
        }
        if let Some(f) = std::env::var_os("DAEMON_LIFECYCLE_SSH_CONFIG").filter(|f| !f.is_empty()) {
            opts.config_file = Some(PathBuf::from(f));
        }
        opts
    }
}

/// `s` as one word of a POSIX shell: single-quoted, each `'` written `'\''`.
/// A NUL cannot be passed at all (it would end the C string there):
/// refused, naming `field`.
pub fn sh_quote(field: &str, s: &[u8]) -> Result<Vec<u8>> {
    if s.contains(&0) {
        return Err(DaemonError::invalid(field, "holds a NUL byte"));
    }
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'\'');
    for &b in s {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    Ok(out)
}

/// A script for `/bin/sh -s`: `set --` with the quoted arguments, then
/// `body`, which reads them as `"$1"`, `"$2"`, ...
fn script(field: &str, args: &[&[u8]], body: &str) -> Result<Vec<u8>> {
    let mut s = b"set --".to_vec();
    for a in args {
        s.push(b' ');
        s.extend(sh_quote(field, a)?);
    }
    s.push(b'\n');
    s.extend_from_slice(body.as_bytes());
    s.push(b'\n');
    Ok(s)
}

/// A file on a remote host, as [`SshHost::read_file`] found it.
#[derive(Debug)]
pub(crate) enum RemoteFile {
    /// Nothing there.
    Absent,
    /// A symlink, and where it points.
    Link(String),
    /// Not a regular file, or too big.
    Other,
    /// A regular file: its owner and content.
    Regular {
        /// Its owner's UID there.
        uid: u32,
        /// Its bytes.
        bytes: Vec<u8>,
    },
}

/// What a command on the host left.
#[derive(Debug)]
pub(crate) struct Output {
    /// Its exit code (`None`: ended by a signal).
    pub code: Option<i32>,
    /// Its stdout, at most [`MAX_OUTPUT`] bytes.
    pub stdout: Vec<u8>,
}

/// The most of a command's output we keep.
const MAX_OUTPUT: u64 = 4 << 20;

/// The status of an ssh client that could not reach the host (or lost it).
const SSH_FAILED: i32 = 255;

/// A host reached over one multiplexed ssh connection. Dropping it ends the
/// connection and every session on it (the bus bridges included) and
/// removes the private directory.
pub struct SshHost {
    dest: SshDestination,
    /// The destination as given, for messages.
    name: String,
    opts: SshOptions,
    /// Private (0700, ours): the control socket and ssh's logs.
    dir: tempfile::TempDir,
    master: Mutex<Option<Child>>,
    /// The bus bridges' ssh clients, ended with the host.
    bridges: Mutex<Vec<Child>>,
}

impl fmt::Debug for SshHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshHost")
            .field("host", &self.name)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl SshHost {
    /// Connects to `dest` (the master connection), bounded by
    /// [`SshOptions::connect_timeout`] plus a second. A refused key, an
    /// unreachable host and a port that never answers are
    /// [`DaemonError::Remote`] naming the host, and leave nothing running.
    pub async fn connect(dest: &SshDestination, opts: SshOptions) -> Result<SshHost> {
        let dir = private_dir()?;
        let host = SshHost {
            name: dest.to_string(),
            dest: dest.clone(),
            opts,
            dir,
            master: Mutex::new(None),
            bridges: Mutex::new(Vec::new()),
        };
        let log = host.log_file("master.log")?;
        let mut cmd = host.base_command();
        cmd.args(["-o", "ControlMaster=yes", "-o", "ControlPersist=no"])
            // Nothing runs in the master's own session: it only carries the others.
            .args(["-N", "-T"])
            .args(host.destination_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| {
            host.remote(
                RemoteProblem::Unreachable,
                format!("cannot run {}: {e}", host.opts.program.display()),
            )
        })?;
        *host.master.lock().unwrap() = Some(child);
        let bound = host.opts.connect_timeout + Duration::from_secs(1);
        let deadline = Instant::now() + bound;
        let socket = host.control_path();
        // ssh creates the control socket once logged in; until then the
        // master either exits (refused, unreachable) or the bound passes.
        loop {
            if std::fs::symlink_metadata(&socket).is_ok() {
                check_socket(&socket).map_err(|e| host.remote(RemoteProblem::Unreachable, e))?;
                tracing::debug!(host = %host.name, "ssh master connected");
                return Ok(host);
            }
            let exited = host
                .master
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let said = host.read_log("master.log");
                host.stop_master();
                return Err(host.remote(classify(&said), format!("ssh exited ({status}): {said}")));
            }
            if Instant::now() >= deadline {
                host.stop_master();
                let said = host.read_log("master.log");
                return Err(host.remote(
                    RemoteProblem::ConnectTimeout,
                    format!(
                        "not logged in within {}{}",
                        crate::text::duration(bound),
                        if said.is_empty() {
                            String::new()
                        } else {
                            format!(" ({said})")
                        }
                    ),
                ));
            }
            // The login is a network round trip or three; 10 ms is cheap.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The host as the config gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The destination.
    pub fn destination(&self) -> &SshDestination {
        &self.dest
    }

    /// The options it was connected with.
    pub fn options(&self) -> &SshOptions {
        &self.opts
    }

    /// The PID of the master ssh (tests check it is gone after a drop).
    pub fn master_pid(&self) -> Option<u32> {
        self.master.lock().unwrap().as_ref().map(|c| c.id())
    }

    /// The private directory holding the control socket.
    pub fn control_dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn remote(&self, problem: RemoteProblem, reason: impl Into<String>) -> DaemonError {
        DaemonError::Remote {
            host: self.name.clone(),
            problem,
            reason: reason.into(),
        }
    }

    fn control_path(&self) -> PathBuf {
        self.dir.path().join("m")
    }

    /// `ssh [-F config] -o ...`: what every ssh we run shares.
    fn base_command(&self) -> Command {
        let mut cmd = Command::new(&self.opts.program);
        if let Some(config) = &self.opts.config_file {
            cmd.arg("-F").arg(config);
        }
        // ssh expands `%` tokens in ControlPath and splits an option at
        // blanks: `%` doubled, the path quoted (private_dir refuses `"`).
        let mut control = OsString::from("ControlPath=\"");
        control.push(std::ffi::OsStr::from_bytes(
            &self
                .control_path()
                .as_os_str()
                .as_bytes()
                .iter()
                .flat_map(|&b| if b == b'%' { vec![b'%', b'%'] } else { vec![b] })
                .collect::<Vec<u8>>(),
        ));
        control.push("\"");
        cmd.args(["-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!(
                "ConnectTimeout={}",
                self.opts.connect_timeout.as_secs().max(1)
            ))
            // A host that goes silent breaks the connection within about
            // 15 s rather than never.
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"])
            // Whatever the user's ssh config says: no agent or X11 handed
            // to the host, no forwardings opened, no local command, no
            // RemoteCommand in place of ours.
            .args(["-o", "ForwardAgent=no", "-o", "ForwardX11=no"])
            .args([
                "-o",
                "ClearAllForwardings=yes",
                "-o",
                "PermitLocalCommand=no",
            ])
            .args(["-o", "RemoteCommand=none"])
            .arg("-o")
            .arg(control)
            .env_remove("SSH_ASKPASS")
            .env_remove("DISPLAY");
        cmd
    }

    /// `[-l user] [-p port] -- host`: the destination as separate words,
    /// never one string ssh would parse.
    fn destination_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(u) = &self.dest.user {
            args.push("-l".into());
            args.push(u.into());
        }
        if let Some(p) = self.dest.port {
            args.push("-p".into());
            args.push(p.to_string().into());
        }
        args.push("--".into());
        args.push(self.dest.host.clone().into());
        args
    }

    /// An ssh session on the master running `remote` (words the remote
    /// login shell joins and runs: constants only).
    fn session(&self, remote: &[&str]) -> Command {
        let mut cmd = self.base_command();
        // Only through the master: were it gone, `false` as the proxy makes
        // that an error instead of a second login.
        cmd.args(["-o", "ControlMaster=no", "-o", "ProxyCommand=false", "-T"])
            .args(self.destination_args())
            .args(remote);
        cmd
    }

    fn log_file(&self, name: &str) -> Result<std::fs::File> {
        let path = self.dir.path().join(name);
        crate::fsutil::open_nofollow(&path, std::fs::OpenOptions::new().create(true).append(true))
            .map_err(|e| DaemonError::io(format!("open {}", path.display()), e))
    }

    /// The end of one of ssh's logs, as one line.
    fn read_log(&self, name: &str) -> String {
        let path = self.dir.path().join(name);
        let text = crate::fsutil::read_regular(&path, 1 << 20)
            .ok()
            .flatten()
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        crate::text::clip_middle(&lines.join("; "), 600)
    }

    fn stop_master(&self) {
        if let Some(mut child) = self.master.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `script` under `/bin/sh -s` on the host, at most
    /// [`SshOptions::command_timeout`]. An ssh that could not run it (the
    /// connection is gone) is [`RemoteProblem::ConnectionLost`].
    pub(crate) async fn run_script(&self, script: Vec<u8>) -> Result<Output> {
        self.run_script_for(script, self.opts.command_timeout).await
    }

    pub(crate) async fn run_script_for(&self, script: Vec<u8>, bound: Duration) -> Result<Output> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut cmd = tokio::process::Command::from(self.session(&["/bin/sh", "-s"]));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| self.remote(RemoteProblem::ConnectionLost, format!("run ssh: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let run = async {
            let write = async {
                let r = stdin.write_all(&script).await;
                drop(stdin);
                r
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut stdout = (&mut stdout).take(MAX_OUTPUT);
            let mut stderr = (&mut stderr).take(64 << 10);
            let read_out = stdout.read_to_end(&mut out);
            let read_err = stderr.read_to_end(&mut err);
            let (w, _, _) = tokio::join!(write, read_out, read_err);
            let status = child.wait().await;
            (w, status, out, err)
        };
        match tokio::time::timeout(bound, run).await {
            Err(_) => Err(self.remote(
                RemoteProblem::CommandTimeout,
                format!(
                    "a command did not finish within {}",
                    crate::text::duration(bound)
                ),
            )),
            Ok((_, Err(e), _, _)) => Err(self.remote(RemoteProblem::ConnectionLost, e.to_string())),
            Ok((_, Ok(status), out, err)) => self.output(status, out, &err),
        }
    }

    /// [`SshHost::run_script`] for callers that are not async (the
    /// [`crate::host::Host`] checks): a plain child, its output read by a
    /// thread, the wait bounded.
    pub(crate) fn run_script_blocking(&self, script: Vec<u8>) -> Result<Output> {
        use std::io::Write;
        let bound = self.opts.command_timeout;
        let mut child = self
            .session(&["/bin/sh", "-s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.remote(RemoteProblem::ConnectionLost, format!("run ssh: {e}")))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let mut stdin = child.stdin.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut stdout = child.stdout.take().expect("piped");
            let mut stderr = child.stderr.take().expect("piped");
            let errs = std::thread::spawn(move || {
                let _ = (&mut stderr).take(64 << 10).read_to_end(&mut err);
                err
            });
            let _ = (&mut stdout).take(MAX_OUTPUT).read_to_end(&mut out);
            let err = errs.join().unwrap_or_default();
            let _ = tx.send((child.wait(), out, err));
        });
        // The script is small; a host that does not read it is caught by
        // the bound below (the write fails once the child is killed).
        let _ = stdin.write_all(&script);
        drop(stdin);
        match rx.recv_timeout(bound) {
            Ok((Ok(status), out, err)) => self.output(status, out, &err),
            Ok((Err(e), _, _)) => Err(self.remote(RemoteProblem::ConnectionLost, e.to_string())),
            Err(_) => {
                // Not reaped yet (the thread still waits on it): the PID is
                // still our child's.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                Err(self.remote(
                    RemoteProblem::CommandTimeout,
                    format!(
                        "a command did not finish within {}",
                        crate::text::duration(bound)
                    ),
                ))
            }
        }
    }

    fn output(
        &self,
        status: std::process::ExitStatus,
        stdout: Vec<u8>,
        stderr: &[u8],
    ) -> Result<Output> {
        if status.code() == Some(SSH_FAILED) {
            let said = String::from_utf8_lossy(stderr);
            return Err(self.remote(
                RemoteProblem::ConnectionLost,
                format!("ssh failed: {}", crate::text::clip_middle(said.trim(), 600)),
            ));
        }
        Ok(Output {
            code: status.code(),
            stdout,
        })
    }

    /// Checks that the host can serve a systemd bus for `scope`:
    /// `systemd-stdio-bridge` is installed and the bus socket is there.
    /// Returns the bridge's path and the bus socket's, or
    /// [`RemoteProblem::Missing`] naming what is not there.
    pub(crate) async fn bridge_command(&self, scope: Scope) -> Result<(String, String)> {
        let socket = match scope {
            Scope::System => "/run/dbus/system_bus_socket",
            Scope::User => "/run/user/$(id -u)/bus",
        };
        let body = format!(
            r#"b=$(command -v systemd-stdio-bridge) || {{ echo missing; exit 0; }}
s="{socket}"
[ -S "$s" ] || {{ echo "nobus $s"; exit 0; }}
echo "ok $s $b""#
        );
        let out = self.run_script(script("host", &[], &body)?).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        let words: Vec<&str> = line.split(' ').collect();
        let safe = |p: &str| {
            p.starts_with('/')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b))
        };
        match words.as_slice() {
            ["ok", socket, bridge] if safe(socket) && safe(bridge) => {
                Ok(((*bridge).to_owned(), (*socket).to_owned()))
            }
            ["missing"] => Err(self.remote(
                RemoteProblem::Missing,
                "systemd-stdio-bridge is not installed (not in the PATH of a login over ssh): \
                 the systemd backend needs it (package systemd)",
            )),
            ["nobus", socket] => Err(self.remote(
                RemoteProblem::Missing,
                format!(
                    "no {scope} bus at {socket}: no systemd {scope} manager runs there{}",
                    if scope == Scope::User {
                        " (a user manager runs while the user has a session, or with lingering enabled)"
                    } else {
                        ""
                    }
                ),
            )),
            _ => Err(self.remote(
                RemoteProblem::Missing,
                format!(
                    "cannot tell whether systemd-stdio-bridge is there (/bin/sh said {} and exited {:?})",
                    crate::text::quote(&crate::text::clip_middle(text.trim(), 200)),
                    out.code
                ),
            )),
        }
    }

    /// Starts `BRIDGE -punix:path=SOCKET` on the host as a session on the
    /// master, its stdio one end of a socket pair; returns the other end.
    /// The bus address is passed explicitly (`--user` can silently serve
    /// the system bus). The session ends with the host, or when the other
    /// end is closed.
    pub(crate) fn open_bridge(
        &self,
        bridge: &str,
        socket: &str,
    ) -> Result<std::os::unix::net::UnixStream> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| DaemonError::io("create a socket pair", e))?;
        let out = theirs
            .try_clone()
            .map_err(|e| DaemonError::io("duplicate a socket", e))?;
        let log = self.log_file("bridge.log")?;
        let path = format!("-punix:path={socket}");
        let mut cmd = self.session(&["exec", bridge, &path]);
        cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(out)))
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| self.remote(RemoteProblem::ConnectionLost, format!("run ssh: {e}")))?;
        tracing::debug!(host = %self.name, pid = child.id(), "bus bridge started");
        let mut bridges = self.bridges.lock().unwrap();
        // Bridges that ended (their connection was dropped) are reaped here.
        bridges.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        bridges.push(child);
        Ok(ours)
    }

    /// One attempt of a readiness probe, made on the host (where the
    /// daemon's `127.0.0.1` is), bounded by `budget`: a command runs there
    /// as given; a TCP probe connects from there (with bash's `/dev/tcp`,
    /// else `nc -z`); an HTTP probe is a GET from there (`curl`, else
    /// `wget`). `Err` says what went wrong, in words.
    pub(crate) async fn probe_once(
        &self,
        probe: &crate::config::Readiness,
        budget: Duration,
    ) -> std::result::Result<(), String> {
        use crate::config::Readiness;
        let secs = budget.as_secs().max(1).to_string();
        let (args, body, what): (Vec<Vec<u8>>, &str, String) = match probe {
            Readiness::Notify => return Err("notify is not a probe".into()),
            Readiness::Command { argv, .. } => (
                argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
                r#""$@" </dev/null >/dev/null 2>&1 || exit 1"#,
                argv.first().cloned().unwrap_or_default(),
            ),
            Readiness::Tcp { address, .. } => {
                let (host, port) = address
                    .rsplit_once(':')
                    .ok_or_else(|| format!("{address} is not host:port"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                (
                    vec![host.into(), port.into(), secs.into_bytes()],
                    r#"if command -v bash >/dev/null 2>&1; then
  exec bash -c 'exec 3<>"/dev/tcp/$1/$2"' probe "$1" "$2" 2>/dev/null || exit 1
elif command -v nc >/dev/null 2>&1; then
  exec nc -z -w "$3" "$1" "$2" 2>/dev/null || exit 1
fi
exit 99"#,
                    format!("connect {address}"),
                )
            }
            Readiness::Http { url, .. } => (
                vec![url.as_bytes().to_vec(), secs.into_bytes()],
                r#"if command -v curl >/dev/null 2>&1; then
  exec curl -fsS -o /dev/null --max-time "$2" -- "$1" 2>/dev/null || exit 1
elif command -v wget >/dev/null 2>&1; then
  exec wget -q -O /dev/null -T "$2" -- "$1" 2>/dev/null || exit 1
fi
exit 99"#,
                format!("GET {url}"),
            ),
        };
        let arg_refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let s = script("readiness", &arg_refs, body).map_err(|e| e.to_string())?;
        match self.run_script_for(s, budget).await {
            Ok(Output { code: Some(0), .. }) => Ok(()),
            Ok(Output { code: Some(99), .. }) => Err(format!(
                "{what} on {}: the host has none of the tools this probe uses (bash or nc; curl or wget)",
                self.name
            )),
            Ok(Output { code, .. }) => Err(format!("{what} on {}: failed ({code:?})", self.name)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A file on the host as we may trust it: read only when it is a
    /// regular file (a link is reported, never followed), at most `max`
    /// bytes, with its owner.
    pub(crate) async fn read_file(&self, path: &Path, max: u64) -> Result<RemoteFile> {
        let s = script(
            "unit_dir",
            &[path.as_os_str().as_bytes(), max.to_string().as_bytes()],
            r#"if [ -L "$1" ]; then printf 'link\n'; exec readlink -- "$1"; fi
[ -e "$1" ] || { printf 'absent\n'; exit 0; }
[ -f "$1" ] || { printf 'other\n'; exit 0; }
[ "$(wc -c <"$1")" -le "$2" ] || { printf 'big\n'; exit 0; }
printf 'file %s\n' "$(stat -c %u -- "$1")"
exec cat -- "$1""#,
        )?;
        let out = self.run_script(s).await?;
        let text = out.stdout;
        let (head, rest) = match text.iter().position(|b| *b == b'\n') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (&text[..], &[][..]),
        };
        let head = String::from_utf8_lossy(head);
        let words: Vec<&str> = head.split(' ').collect();
        Ok(match words.as_slice() {
            ["absent"] => RemoteFile::Absent,
            ["link"] => RemoteFile::Link(
                String::from_utf8_lossy(rest)
                    .trim_end_matches('\n')
                    .to_owned(),
            ),
            ["other"] | ["big"] => RemoteFile::Other,
            ["file", uid] if out.code == Some(0) => match uid.parse() {
                Ok(uid) => RemoteFile::Regular {
                    uid,
                    bytes: rest.to_vec(),
                },
                Err(_) => return Err(self.unexpected("stat", out.code)),
            },
            _ => return Err(self.unexpected("reading a file", out.code)),
        })
    }

    /// Writes `bytes` as `dir/name` on the host atomically: a temporary
    /// file in `dir` (0644), then `mv -T` over the name, which is refused
    /// when it is a symlink (an alias) or `dir` is one. `keep_mtime`: only
    /// an existing file is replaced, and the new one takes its
    /// modification time. `dir` is created (0755) when missing.
    pub(crate) async fn write_into_dir(
        &self,
        dir: &Path,
        name: &str,
        bytes: &[u8],
        keep_mtime: bool,
    ) -> Result<()> {
        let s = script(
            "unit_dir",
            &[
                dir.as_os_str().as_bytes(),
                name.as_bytes(),
                bytes,
                if keep_mtime { b"keep" } else { b"new" },
            ],
            r#"[ -L "$1" ] && exit 3
[ -d "$1" ] || mkdir -p -m 0755 -- "$1" || exit 3
[ -d "$1" ] && [ ! -L "$1" ] || exit 3
[ -L "$1/$2" ] && exit 4
t=$(mktemp "$1/.daemon-lifecycle-XXXXXX") || exit 5
if printf '%s' "$3" >"$t" && chmod 0644 "$t" &&
   { [ "$4" != keep ] || touch -r "$1/$2" "$t"; }; then
  # keep: only a file still there is replaced (the manager may have
  # removed it meanwhile, with its unit).
  if [ "$4" = keep ] && [ ! -f "$1/$2" ]; then rm -f -- "$t"; exit 7; fi
  mv -T -f -- "$t" "$1/$2" && exit 0
fi
rm -f -- "$t"
exit 6"#,
        )?;
        let path = dir.join(name);
        match self.run_script(s).await?.code {
            Some(0) => Ok(()),
            Some(3) => Err(DaemonError::invalid(
                "unit_dir",
                format!(
                    "{} on {} is not a directory (or is a link)",
                    dir.display(),
                    self.name
                ),
            )),
            Some(7) => Err(DaemonError::io(
                format!("replace {} on {}", path.display(), self.name),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )),
            Some(4) => Err(DaemonError::NotOwned {
                unit: name.to_owned(),
                reason: format!(
                    "{} on {} is a symlink (an alias of another unit)",
                    path.display(),
                    self.name
                ),
            }),
            code => Err(DaemonError::io(
                format!("write {} on {}", path.display(), self.name),
                std::io::Error::other(format!("the write exited {code:?}")),
            )),
        }
    }

    /// Removes the regular file `path` on the host (never a link); whether
    /// there was one.
    pub(crate) async fn remove_file(&self, path: &Path) -> Result<bool> {
        let s = script(
            "unit_dir",
            &[path.as_os_str().as_bytes()],
            r#"[ -L "$1" ] && exit 4
[ -e "$1" ] || exit 3
[ -f "$1" ] || exit 5
rm -f -- "$1""#,
        )?;
        match self.run_script(s).await?.code {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            code => Err(DaemonError::io(
                format!("remove {} on {}", path.display(), self.name),
                std::io::Error::other(format!("not a regular file (exit {code:?})")),
            )),
        }
    }

    /// Where the login user's user units go on the host:
    /// `${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user`.
    pub(crate) async fn user_unit_dir(&self) -> Result<PathBuf> {
        let s = script(
            "scope",
            &[],
            r#"c=${XDG_CONFIG_HOME:-$HOME/.config}
case $c in /*) printf '%s/systemd/user' "$c";; *) exit 3;; esac"#,
        )?;
        let out = self.run_script(s).await?;
        match out.code {
            Some(0) if !out.stdout.is_empty() => {
                Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&out.stdout)))
            }
            _ => Err(DaemonError::invalid(
                "scope",
                format!(
                    "neither XDG_CONFIG_HOME nor HOME is set on {}: pass a unit directory",
                    self.name
                ),
            )),
        }
    }

    /// What ssh said about the bridges, for an error message.
    pub(crate) fn bridge_log(&self) -> String {
        self.read_log("bridge.log")
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        for mut child in std::mem::take(&mut *self.bridges.lock().unwrap()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stop_master();
        // The master is gone: the directory (socket, logs) goes with the
        // TempDir; nothing in it is followed.
    }
}

/// A new directory only we can enter, for the control socket: in
/// `$XDG_RUNTIME_DIR` when there is one (per user already), else the temp
/// directory. Checked after creation: a directory, ours, 0700, not a link.
fn private_dir() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("dl-ssh-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(|e| {
            DaemonError::io(
                format!("create a private directory in {}", base.display()),
                e,
            )
        })?;
    let meta = std::fs::symlink_metadata(dir.path())
        .map_err(|e| DaemonError::io(format!("stat {}", dir.path().display()), e))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(crate::fsutil::untrusted(
            dir.path(),
            Some(meta.uid()),
            "the ssh control directory is not a private directory of ours",
        ));
    }
    if dir.path().as_os_str().as_bytes().contains(&b'"') {
        return Err(DaemonError::invalid(
            "host",
            format!(
                "the temp directory {} holds a '\"', which ssh's ControlPath cannot carry: set TMPDIR",
                base.display()
            ),
        ));
    }
    // A socket path is at most about 100 bytes.
    if dir.path().as_os_str().as_bytes().len() > 90 {
        return Err(DaemonError::invalid(
            "host",
            format!(
                "the ssh control socket path under {} would be too long for a socket: set TMPDIR to a shorter directory",
                base.display()
            ),
        ));
    }
    Ok(dir)
}

fn check_socket(path: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_socket() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!("{} is not our control socket", path.display()));
    }
    Ok(())
}

/// What ssh's words say went wrong.
fn classify(said: &str) -> RemoteProblem {
    let s = said.to_ascii_lowercase();
    if s.contains("permission denied")
        || s.contains("host key verification failed")
        || s.contains("too many authentication failures")
    {
        RemoteProblem::AuthRefused
    } else if s.contains("timed out") || s.contains("timeout") {
        RemoteProblem::ConnectTimeout
    } else {
        RemoteProblem::Unreachable
    }
}

/// On Linux the ssh children die with the thread that started them (ours:
/// a runtime's worker or the caller's), so a caller killed with SIGKILL
/// leaves no master behind. Elsewhere they end when the [`SshHost`] drops.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// The [`crate::host::Host`] checks, asked on the host: `test` and
/// `getent` in one short script each, the path or name passed quoted.
impl crate::host::Host for SshHost {
    fn check_executable(&self, path: &Path) -> Result<()> {
        let s = script(
            "binary_path",
            &[path.as_os_str().as_bytes()],
            r#"[ -e "$1" ] || exit 3
[ -f "$1" ] && [ -x "$1" ] || exit 4
exit 0"#,
        )?;
        match self.run_script_blocking(s)?.code {
            Some(0) => Ok(()),
            Some(3) => Err(DaemonError::BinaryNotFound {
                path: path.to_owned(),
            }),
            Some(4) => Err(DaemonError::BinaryNotExecutable {
                path: path.to_owned(),
            }),
            other => Err(self.unexpected("test -x", other)),
        }
    }

    fn check_directory(&self, field: &str, path: &Path) -> Result<()> {
        let s = script(field, &[path.as_os_str().as_bytes()], r#"[ -d "$1" ]"#)?;
        match self.run_script_blocking(s)?.code {
            Some(0) => Ok(()),
            Some(1) => Err(DaemonError::invalid(
                field,
                format!(
                    "{} is not an existing directory on {}",
                    path.display(),
                    self.name
                ),
            )),
            other => Err(self.unexpected("test -d", other)),
        }
    }

    fn check_user(&self, user: &str) -> Result<()> {
        if user.parse::<u32>().is_ok() {
            return Ok(());
        }
        self.check_account("user", "passwd", user)
    }

    fn check_group(&self, group: &str) -> Result<()> {
        if group.parse::<u32>().is_ok() {
            return Ok(());
        }
        self.check_account("group", "group", group)
    }
}

impl SshHost {
    fn check_account(&self, field: &str, database: &str, name: &str) -> Result<()> {
        let s = script(
            field,
            &[database.as_bytes(), name.as_bytes()],
            r#"getent "$1" -- "$2" >/dev/null"#,
        )?;
        match self.run_script_blocking(s)?.code {
            Some(0) => Ok(()),
            // getent: 2 = no such key.
            Some(2) => Err(DaemonError::invalid(
                field,
                format!(
                    "no such {field} {} on {}",
                    crate::text::quote(name),
                    self.name
                ),
            )),
            other => Err(self.unexpected("getent", other)),
        }
    }

    fn unexpected(&self, what: &str, code: Option<i32>) -> DaemonError {
        self.remote(
            RemoteProblem::Missing,
            format!("{what} on the host exited {code:?} (is /bin/sh there?)"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_into_their_parts() {
        let d = SshDestination::parse("root@web-1.example.org:2222").unwrap();
        assert_eq!(
            (d.user(), d.hostname(), d.port()),
            (Some("root"), "web-1.example.org", Some(2222))
        );
        assert_eq!(d.to_string(), "root@web-1.example.org:2222");
        let d = SshDestination::parse("h").unwrap();
        assert_eq!((d.user(), d.hostname(), d.port()), (None, "h", None));
        let d = SshDestination::parse("a@[::1]:22").unwrap();
        assert_eq!((d.hostname(), d.port()), ("::1", Some(22)));
        assert_eq!(d.to_string(), "a@[::1]:22");
        assert_eq!(
            SshDestination::parse("[fe80::1]").unwrap().hostname(),
            "fe80::1"
        );
        assert_eq!(
            SshDestination::parse("10.0.0.1").unwrap().hostname(),
            "10.0.0.1"
        );
    }

    #[test]
    fn hostile_destinations_are_invalid_config() {
        for bad in [
            "",
            "-oProxyCommand=sh",
            "root@-oProxyCommand=x",
            "-l@host",
            "a b",
            "host;rm -rf /",
            "host$(id)",
            "h`id`",
            "user@host@other",
            "host:0",
            "host:65536",
            "host:+22",
            "host:",
            "host:22:22",
            "::1",
            "[::1",
            "[::1]x",
            "[]",
            "[h]",
            ".host",
            "host\n",
            "ho\u{0}st",
            "üser@host",
            "@host",
            "'host'",
        ] {
            match SshDestination::parse(bad) {
                Err(DaemonError::InvalidConfig { field, .. }) => {
                    assert_eq!(field, "host", "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn quoting_keeps_every_byte_one_word() {
        assert_eq!(sh_quote("f", b"plain").unwrap(), b"'plain'");
        assert_eq!(sh_quote("f", b"it's").unwrap(), b"'it'\\''s'");
        assert!(matches!(
            sh_quote("f", b"a\0b"),
            Err(DaemonError::InvalidConfig { .. })
        ));
        // What /bin/sh makes of it: the very bytes, as one argument.
        let hostile: &[&[u8]] = &[
            b"$(touch /tmp/pwned)",
            b"`id`",
            b"a'b\"c\\d",
            b"'; exit 7; '",
            b"new\nline",
            b" lead and trail ",
            b"*",
            b"-n",
            b"\xff\xfe",
            b"",
        ];
        for h in hostile {
            let s = script("f", &[h], r#"printf '%s' "$1"; [ $# = 1 ] || exit 9"#).unwrap();
            let out = std::process::Command::new("/bin/sh")
                .arg("-s")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(&s)?;
                    c.wait_with_output()
                })
                .unwrap();
            assert!(out.status.success(), "{h:?}: {:?}", out.status);
            assert_eq!(&out.stdout[..], *h);
        }
    }

    #[test]
    fn ssh_words_are_classified() {
        assert_eq!(
            classify("root@127.0.0.1: Permission denied (publickey)."),
            RemoteProblem::AuthRefused
        );
        assert_eq!(
            classify("Connection timed out during banner exchange"),
            RemoteProblem::ConnectTimeout
        );
        assert_eq!(
            classify("connect to host 127.0.0.1 port 1: Connection refused"),
            RemoteProblem::Unreachable
        );
    }
}
