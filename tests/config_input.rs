//! Config input is bounded and never reaches the terminal raw: a FIFO, a
//! device or an oversized file is refused at once with a typed error (no
//! hang, no unbounded read), and error lines quote little of the file, with
//! control characters escaped.
mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use daemon_lifecycle::{DaemonConfig, DaemonError};
use support::{output_within, Sandbox};

/// `daemonctl start CONFIG`, bounded in time (a hang fails the test) and in
/// memory (1 GiB of address space: an unbounded read fails instead of
/// taking the machine down).
fn start(config: &Path) -> Output {
    let mut cmd = Command::new(support::daemonctl());
    cmd.arg("start").arg(config);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    output_within(&mut cmd, 10)
}

/// The one error line of a failed `daemonctl start` (exit 6: not configured).
fn config_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

/// A valid config for a daemon of this sandbox, as TOML text: top-level
/// keys only, no `startup_timeout_secs`, so the tests can append lines.
fn valid_toml(sb: &Sandbox) -> String {
    format!(
        "name = {:?}\nbinary_path = {:?}\npid_file = {:?}\nargs = [\"--tag\", {:?}]\n",
        sb.tag,
        support::testd().to_str().unwrap(),
        sb.path("daemon.pid").to_str().unwrap(),
        sb.tag
    )
}

#[test]
fn a_fifo_config_is_refused_at_once() {
    let sb = Sandbox::new("fifo_config");
    let fifo = sb.path("daemon.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = config_error(&start(&fifo));
    assert!(err.contains("daemon.toml") && err.contains("FIFO"), "{err}");
    // The library gives the same, typed.
    match DaemonConfig::from_toml_file(&fifo) {
        Err(DaemonError::ConfigRead { path, source }) => {
            assert_eq!(path, fifo);
            assert!(
                source.to_string().contains("not a regular file"),
                "{source}"
            );
        }
        other => panic!("{other:?}"),
    }
    sb.assert_no_leaks();
}

#[test]
fn devices_and_directories_are_refused() {
    let sb = Sandbox::new("device_config");
    for (path, what) in [
        (Path::new("/dev/zero"), "character device"),
        (sb.dir.path(), "directory"),
    ] {
        let err = config_error(&start(path));
        assert!(
            err.contains("not a regular file") && err.contains(what),
            "{err}"
        );
    }
    sb.assert_no_leaks();
}

#[test]
fn a_config_over_one_mib_is_refused() {
    let sb = Sandbox::new("big_config");
    let path = sb.path("daemon.toml");
    // Valid TOML throughout: a daemon would start if the size were not checked.
    let mut text = valid_toml(&sb);
    while text.len() < 2 << 20 {
        text.push_str("# padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&path, &text).unwrap();
    let err = config_error(&start(&path));
    assert!(err.contains("larger than 1024 KiB"), "{err}");
    assert!(!sb.path("daemon.pid").exists());

    // One 10 MB line: refused as well, in a short line.
    let mut line = String::from("startup_timeout_secs = \"");
    line.push_str(&"A".repeat(10 << 20));
    line.push_str("\"\n");
    std::fs::write(&path, valid_toml(&sb) + &line).unwrap();
    let out = start(&path);
    assert!(
        out.stderr.len() < 1024,
        "{} bytes on stderr",
        out.stderr.len()
    );
    config_error(&out);
    sb.assert_no_leaks();
}

#[test]
fn a_long_line_with_an_error_is_quoted_in_part() {
    let sb = Sandbox::new("long_line");
    let path = sb.path("daemon.toml");
    // Under the size limit, so it is parsed: the parser's message quotes
    // the value and the error line quotes the source line; both are cut.
    // Multi-byte text too: cuts must fall on character boundaries.
    for filler in ["A", "日本é"] {
        let value = filler.repeat((900 << 10) / filler.len());
        std::fs::write(
            &path,
            format!("{}startup_timeout_secs = \"{value}\"\n", valid_toml(&sb)),
        )
        .unwrap();
        let out = start(&path);
        assert!(
            out.stderr.len() < 1024,
            "{} bytes on stderr",
            out.stderr.len()
        );
        let err = config_error(&out);
        assert!(
            err.contains("startup_timeout_secs") && err.contains("line ") && err.contains('…'),
            "{err}"
        );
    }
    // An error far into a long line is quoted around where it is.
    let args = "\"x\", ".repeat(100_000) + "1, " + &"\"y\", ".repeat(1000);
    let without_args: String = valid_toml(&sb)
        .lines()
        .filter(|l| !l.starts_with("args"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, format!("{without_args}args = [{args}]\n")).unwrap();
    let out = start(&path);
    assert!(
        out.stderr.len() < 1024,
        "{} bytes on stderr",
        out.stderr.len()
    );
    let err = config_error(&out);
    assert!(
        err.contains("\"x\",  1, \"y\"") || err.contains("\"x\", 1, \"y\""),
        "{err}"
    );
    sb.assert_no_leaks();
}

#[test]
fn escape_sequences_from_the_file_never_reach_the_terminal() {
    let sb = Sandbox::new("esc_config");
    let path = sb.path("daemon.toml");
    let cases = [
        // A raw ESC in a value: a TOML error quoting that line.
        (
            format!(
                "{}startup_timeout_secs = \"\x1b[2J\x1b]0;owned\x07\"\n",
                valid_toml(&sb)
            ),
            "line ",
        ),
        // An escaped ESC in a string, a valid TOML type error quoting it.
        (
            format!(
                "{}startup_timeout_secs = \"\\u001b[31mred\"\n",
                valid_toml(&sb)
            ),
            "startup_timeout_secs",
        ),
        // An escaped ESC in an env key: valid TOML, refused by validation.
        (
            format!("{}\n[env]\n\"\\u001b[31mKEY\" = \"v\"\n", valid_toml(&sb)),
            "env.",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(&path, &text).unwrap();
        let out = start(&path);
        assert!(
            !out.stderr.iter().any(|b| *b == 0x1b || *b == 0x07),
            "raw control bytes on stderr: {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = config_error(&out);
        assert!(
            err.contains(needle) && err.contains("\\u{1b}"),
            "{needle}: {err}"
        );
    }
    sb.assert_no_leaks();
}
