//! Turning untrusted strings into systemd unit-file text.
//!
//! This module owns every rule for writing caller-supplied strings (daemon
//! names, paths, arguments, environment values) into a unit file so that
//! systemd reads back exactly the input. Input it cannot represent is refused
//! with an [`EscapeError`], never silently changed. Crate policy: CR, LF and
//! NUL never appear in unit-file text, escaped or not.
//!
//! The rules (systemd 252, checked against its binaries in the tests):
//! - Values go through specifier expansion, so `%` is written `%%`. `Exec*=`
//!   words are C-unescaped *before* specifiers are expanded
//!   (`config_parse_exec`, src/core/load-fragment.c): `\x25n` still expands to
//!   the unit name, so only `%%` is safe.
//! - `Exec*=` and `Environment=` words are split with
//!   `extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE)`. Inside `"..."`
//!   only `\` and `"` need escaping; `'`, `;`, `{}`, spaces and UTF-8 are
//!   literal (systemd.syntax(7), "QUOTING").
//! - In `Exec*=` arguments `$` is expanded when the process starts and `$$`
//!   gives a literal `$` (systemd.service(5), "COMMAND LINES"). In
//!   `Environment=` `$` has no special meaning (systemd.exec(5)).
//! - A line ending in a backslash continues on the next line
//!   (systemd.syntax(7)). Quoted words end in `"`; plain values refuse a
//!   trailing `\`.

use std::fmt;

/// Longest unit name systemd accepts, suffix included (`unit_name_is_valid`
/// requires `strlen < UNIT_NAME_MAX`, which is 256).
pub const UNIT_NAME_MAX: usize = 255;

/// Longest value produced here: systemd refuses unit-file lines longer than
/// `LONG_LINE_MAX` (1 MiB); 4 KiB is left for the `Key=` part.
pub const MAX_VALUE_LEN: usize = 1024 * 1024 - 4096;

/// Why a string cannot be turned into unit-file text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EscapeError {
    /// A control character this position cannot carry.
    ControlChar {
        /// Which value it is in, e.g. `ExecStart= argument 2`.
        what: String,
        /// The character.
        ch: char,
        /// Its byte offset in that value.
        index: usize,
    },
    /// The daemon name is empty.
    EmptyName,
    /// The escaped unit name is longer than [`UNIT_NAME_MAX`] bytes.
    NameTooLong {
        /// The unit name produced.
        unit: String,
    },
    /// The executable is not an absolute path.
    RelativeExecutable {
        /// The path as given.
        path: String,
    },
    /// The executable path cannot be written so that systemd runs exactly it.
    InvalidExecutable {
        /// The path as given.
        path: String,
        /// Why, e.g. `contains a quote or backslash`.
        reason: &'static str,
    },
    /// An environment variable name is not `[A-Za-z_][A-Za-z0-9_]*`.
    InvalidEnvKey {
        /// The name as given.
        key: String,
    },
    /// A value that systemd would read differently from what was given.
    InvalidValue {
        /// Which value, e.g. `WorkingDirectory= value`.
        what: String,
        /// Why, e.g. `is not an absolute path`.
        reason: &'static str,
    },
    /// The escaped value is longer than [`MAX_VALUE_LEN`] bytes.
    TooLong {
        /// Which value.
        what: String,
        /// Its escaped length in bytes.
        len: usize,
    },
}

impl fmt::Display for EscapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ControlChar { what, ch, index } => {
                write!(
                    f,
                    "{what} contains control character {ch:?} at byte {index}"
                )
            }
            Self::EmptyName => f.write_str("daemon name is empty"),
            Self::NameTooLong { unit } => {
                write!(f, "unit name {unit:?} is longer than {UNIT_NAME_MAX} bytes")
            }
            Self::RelativeExecutable { path } => {
                write!(f, "executable {path:?} is not an absolute path")
            }
            Self::InvalidExecutable { path, reason } => write!(f, "executable {path:?} {reason}"),
            Self::InvalidEnvKey { key } => write!(
                f,
                "environment variable name {key:?} does not match [A-Za-z_][A-Za-z0-9_]*"
            ),
            Self::InvalidValue { what, reason } => write!(f, "{what} {reason}"),
            Self::TooLong { what, len } => {
                write!(
                    f,
                    "{what} is {len} bytes escaped, over the limit of {MAX_VALUE_LEN}"
                )
            }
        }
    }
}

impl std::error::Error for EscapeError {}

fn control_char(what: &str, (index, ch): (usize, char)) -> EscapeError {
    EscapeError::ControlChar {
        what: what.into(),
        ch,
        index,
    }
}

fn invalid(what: &str, reason: &'static str) -> EscapeError {
    EscapeError::InvalidValue {
        what: what.into(),
        reason,
    }
}

/// The first ASCII control character (U+0000..=U+001F, U+007F) in `s`.
/// Other characters are fine: systemd splits lines only at `\n`, `\r` and
/// NUL, and accepts any UTF-8.
fn find_control(s: &str) -> Option<(usize, char)> {
    s.char_indices().find(|&(_, c)| c.is_ascii_control())
}

fn check_len(what: &str, value: String) -> Result<String, EscapeError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(EscapeError::TooLong {
            what: what.into(),
            len: value.len(),
        });
    }
    Ok(value)
}

/// Escapes `s` exactly as `systemd-escape STRING` (no `--path`) does:
/// `/` becomes `-`; ASCII letters, digits, `:`, `_` and `.` are kept, except
/// a leading `.`; every other byte (`-`, `\`, each byte of a multi-byte UTF-8
/// character, ...) becomes `\xNN` in lowercase hex (`do_escape` in
/// src/basic/unit-name.c).
pub fn unit_name_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, &b) in s.as_bytes().iter().enumerate() {
        match b {
            b'/' => out.push('-'),
            // A leading '.' would make a hidden unit file.
            b'.' if i == 0 => push_hex_escape(&mut out, b),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(char::from(b)),
            _ => push_hex_escape(&mut out, b),
        }
    }
    out
}

fn push_hex_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\x");
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// Escapes an absolute path as `systemd-escape --path` does: duplicate `/`
/// and `.` components are dropped, leading and trailing `/` removed, and the
/// rest goes through [`unit_name_escape`]; the root becomes `-`.
///
/// # Errors
/// [`EscapeError::InvalidValue`] for a relative path (`systemd-escape` only
/// warns) or a `..` component (`systemd-escape` refuses it too).
pub fn unit_name_escape_path(path: &str) -> Result<String, EscapeError> {
    let what = "path for a unit name";
    if !path.starts_with('/') {
        return Err(invalid(what, "is not an absolute path"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !matches!(*c, "" | "."))
        .collect();
    if parts.contains(&"..") {
        return Err(invalid(what, "contains a \"..\" component"));
    }
    if parts.is_empty() {
        return Ok("-".into());
    }
    Ok(unit_name_escape(&parts.join("/")))
}

/// The unit name `<escaped name>.service` for a daemon name, escaped with
/// [`unit_name_escape`].
///
/// # Errors
/// An empty name, an ASCII control character (a daemon name with a newline is
/// a mistake, even though it could be escaped), or a result longer than
/// [`UNIT_NAME_MAX`].
pub fn service_unit_name(name: &str) -> Result<String, EscapeError> {
    if name.is_empty() {
        return Err(EscapeError::EmptyName);
    }
    if let Some(found) = find_control(name) {
        return Err(control_char("daemon name", found));
    }
    let unit = format!("{}.service", unit_name_escape(name));
    if unit.len() > UNIT_NAME_MAX {
        return Err(EscapeError::NameTooLong { unit });
    }
    Ok(unit)
}

/// Doubles every `%`, so that specifier expansion (systemd.unit(5),
/// "SPECIFIERS") gives the text back unchanged.
pub fn escape_specifiers(s: &str) -> String {
    s.replace('%', "%%")
}

/// Quotes one argument of an `Exec*=` line so that systemd's parser gives
/// back exactly `s`. The argument is wrapped in `"..."`; `\` and `"` get a
/// backslash; `%` becomes `%%` and `$` becomes `$$`, so nothing is expanded;
/// tab and the other ASCII control characters become C escapes (`\t`, `\x01`,
/// ...). All else (`'`, `;`, `{}`, spaces, non-ASCII) is written as is.
/// Because the word is quoted, a lone `;` is an argument: systemd only treats
/// an unquoted `;` as a command separator.
///
/// # Errors
/// [`EscapeError::ControlChar`] for CR, LF or NUL; [`EscapeError::TooLong`].
pub fn quote_exec_arg(s: &str) -> Result<String, EscapeError> {
    quote_word(s, "ExecStart= argument", Parser::Exec)
}

/// The value of an `Exec*=` setting (`ExecStart=`, `ExecStop=`, ...) running
/// `executable` with argv `[executable, args...]`: each word is quoted as
/// [`quote_exec_arg`] does and the words are joined by spaces. No prefix
/// (`-@:+!`) is written, and the path starts with `/`, so it cannot be taken
/// for one.
///
/// # Errors
/// [`EscapeError::RelativeExecutable`] unless the path starts with `/`;
/// [`EscapeError::InvalidExecutable`] if it contains a quote or `\` (systemd
/// refuses them: `string_is_safe`), `$` (systemd expands variables in argv\[0\]
/// but not in the path it executes, so no escaping keeps both equal), ends
/// with `/`, or is too long; [`EscapeError::ControlChar`] for any control
/// character in the path, or CR, LF or NUL in an argument.
pub fn exec_line(executable: &str, args: &[String]) -> Result<String, EscapeError> {
    let bad = |reason| EscapeError::InvalidExecutable {
        path: executable.into(),
        reason,
    };
    if !executable.starts_with('/') {
        return Err(EscapeError::RelativeExecutable {
            path: executable.into(),
        });
    }
    if let Some(found) = find_control(executable) {
        return Err(control_char("executable path", found));
    }
    if executable.contains(['"', '\'', '\\']) {
        return Err(bad("contains a quote or backslash, which systemd refuses"));
    }
    if executable.contains('$') {
        return Err(bad(
            "contains '$', which systemd would expand in argv[0] only",
        ));
    }
    if executable.ends_with('/') {
        return Err(bad("ends with '/'"));
    }
    // path_is_valid(): under PATH_MAX bytes, each component at most NAME_MAX.
    if executable.len() >= 4096 || executable.split('/').any(|c| c.len() > 255) {
        return Err(bad(
            "is longer than PATH_MAX or has a component longer than NAME_MAX",
        ));
    }
    let mut line = quote_word(executable, "executable path", Parser::Exec)?;
    for (i, arg) in args.iter().enumerate() {
        line.push(' ');
        line += &quote_word(arg, &format!("ExecStart= argument {}", i + 1), Parser::Exec)?;
    }
    check_len("ExecStart= line", line)
}

/// The value of one `Environment=` line: `"KEY=value"` with `\` and `"`
/// backslash-escaped, tab written `\t`, and `%` written `%%`. `$` is written
/// as is: systemd.exec(5) says "Variable expansion is not performed inside
/// the strings and the "$" character has no special meaning"
/// (`config_parse_environ` only unquotes, C-unescapes and expands specifiers).
///
/// # Errors
/// [`EscapeError::InvalidEnvKey`] unless `key` matches
/// `[A-Za-z_][A-Za-z0-9_]*`; [`EscapeError::ControlChar`] for any ASCII
/// control character but tab in `value`. systemd.exec(5) says non-printable
/// characters are rejected (systemd 252 in fact accepts `\x01`).
pub fn environment_assignment(key: &str, value: &str) -> Result<String, EscapeError> {
    let mut chars = key.chars();
    let valid_start = matches!(chars.next(), Some('a'..='z' | 'A'..='Z' | '_'));
    if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(EscapeError::InvalidEnvKey { key: key.into() });
    }
    let what = format!("Environment= value of {key}");
    let quoted = quote_word(value, &what, Parser::Environment)?;
    // `quoted` is `"..."`: put `KEY=` after the opening quote.
    check_len(&what, format!("\"{key}={}", &quoted[1..]))
}

/// A value for a single-line setting that is not unquoted, such as
/// `Description=`: quotes and backslashes are literal there, so only `%` is
/// rewritten (`%%`). `field` names the setting in errors. Use
/// [`absolute_path_value`] for paths. Characters that mean something at the
/// start of a particular setting are the caller's concern.
///
/// # Errors
/// Refused rather than changed: any ASCII control character; an empty value
/// (for most settings it resets the setting); a leading or trailing space
/// (systemd strips it); a trailing `\` (a line continuation: systemd 252 joins
/// only on an odd number of backslashes, older versions on any).
pub fn plain_value(field: &str, s: &str) -> Result<String, EscapeError> {
    let what = format!("{field}= value");
    if let Some(found) = find_control(s) {
        return Err(control_char(&what, found));
    }
    let reason = if s.is_empty() {
        "is empty, which resets the setting"
    } else if s.starts_with(' ') || s.ends_with(' ') {
        "starts or ends with a space, which systemd strips"
    } else if s.ends_with('\\') {
        "ends with a backslash, which continues the line"
    } else {
        return check_len(&what, escape_specifiers(s));
    };
    Err(invalid(&what, reason))
}

/// Like [`plain_value`], for path settings (`WorkingDirectory=`, the PATH of
/// `StandardOutput=append:PATH`, `PIDFile=`, ...). Duplicate `/`, `.`
/// components and a trailing `/` are accepted: systemd simplifies them away
/// and the path means the same.
///
/// # Errors
/// As [`plain_value`], and [`EscapeError::InvalidValue`] for a relative path
/// or a `..` component (systemd refuses it: "path is not normalized").
pub fn absolute_path_value(field: &str, path: &str) -> Result<String, EscapeError> {
    let what = format!("{field}= path");
    if !path.starts_with('/') {
        return Err(invalid(&what, "is not an absolute path"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(invalid(&what, "contains a \"..\" component"));
    }
    plain_value(field, path)
}

/// Which systemd parser a quoted word is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parser {
    /// `Exec*=`: `$` is expanded at start-up; control characters can be escaped.
    Exec,
    /// `Environment=`: `$` is literal; tab is the only control character allowed.
    Environment,
}

/// Double-quotes `s` with the escapes that `extract_first_word(EXTRACT_UNQUOTE|
/// EXTRACT_CUNESCAPE)` undoes, plus `%%` (and `$$` for `Exec*=`).
fn quote_word(s: &str, what: &str, parser: Parser) -> Result<String, EscapeError> {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for (index, ch) in s.char_indices() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if parser == Parser::Exec => out.push_str("$$"),
            '\t' => out.push_str("\\t"),
            '\0' | '\n' | '\r' => return Err(control_char(what, (index, ch))),
            '\u{7}' if parser == Parser::Exec => out.push_str("\\a"),
            '\u{8}' if parser == Parser::Exec => out.push_str("\\b"),
            '\u{b}' if parser == Parser::Exec => out.push_str("\\v"),
            '\u{c}' if parser == Parser::Exec => out.push_str("\\f"),
            // ASCII, so `as u8` is exact.
            c if c.is_ascii_control() && parser == Parser::Exec => {
                push_hex_escape(&mut out, c as u8)
            }
            c if c.is_ascii_control() => return Err(control_char(what, (index, c))),
            c => out.push(c),
        }
    }
    out.push('"');
    check_len(what, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind::NotFound;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Output};

    /// A missing systemd tool fails the test only with DAEMON_LIFECYCLE_REQUIRE_SYSTEMD=1.
    fn skip(why: &str) {
        if std::env::var("DAEMON_LIFECYCLE_REQUIRE_SYSTEMD").as_deref() == Ok("1") {
            panic!("{why}, and DAEMON_LIFECYCLE_REQUIRE_SYSTEMD=1");
        }
        eprintln!("note: {why}; skipped (DAEMON_LIFECYCLE_REQUIRE_SYSTEMD=1 makes this fail)");
    }

    /// Runs a command; `None` if the program is not installed.
    fn run(cmd: &mut Command) -> Option<Output> {
        match cmd.output() {
            Err(e) if e.kind() == NotFound => None,
            r => Some(r.expect("run command")),
        }
    }

    /// xorshift64, for deterministic inputs without a rand dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        fn string(&mut self, pool: &[&str], max_parts: usize) -> String {
            let n = self.below(max_parts + 1);
            (0..n).map(|_| pool[self.below(pool.len())]).collect()
        }
    }

    #[rustfmt::skip]
    const POOL: &[&str] = &[
        "a", "Z", "0", "9", ":", "_", ".", "..", "-", "/", "\\", " ", "\t", "!", "\"", "#", "$",
        "%", "&", "'", "(", ")", "*", "+", ",", ";", "<", "=", ">", "?", "@", "[", "]", "^", "`",
        "{", "|", "}", "~", "é", "ü", "日本", "🎉", "\u{1}", "\u{7f}", "x", "y", "\u{a0}",
    ];

    /// Compares with `systemd-escape [flag] -- inputs...` (outputs are space-separated).
    fn compare_with_systemd_escape(flag: &[&str], inputs: &[String], ours: fn(&str) -> String) {
        for chunk in inputs.chunks(200) {
            let cmd = Command::new("systemd-escape")
                .args(flag)
                .arg("--")
                .args(chunk)
                .output();
            let out = match cmd {
                Err(e) if e.kind() == NotFound => return skip("systemd-escape not found"),
                r => r.unwrap(),
            };
            assert!(out.status.success(), "systemd-escape failed: {out:?}");
            let text = String::from_utf8(out.stdout).unwrap();
            let theirs: Vec<&str> = text.trim_end_matches('\n').split(' ').collect();
            assert_eq!(theirs.len(), chunk.len());
            for (input, theirs) in chunk.iter().zip(theirs) {
                assert_eq!(ours(input), theirs, "input {input:?}");
            }
        }
    }

    #[test]
    fn unit_name_escape_matches_systemd_escape() {
        assert_eq!(unit_name_escape("foo/bar-baz"), "foo-bar\\x2dbaz");
        assert_eq!(
            unit_name_escape(".a b\\é:_."),
            "\\x2ea\\x20b\\x5c\\xc3\\xa9:_."
        );
        #[rustfmt::skip]
        let fixed = [
            "", ".", "..", ".a", "a.", "-", "/", "//", "/a/", "a/b", "\\", "a b", "é", "日本",
            "🎉", "-.mount", "foo@bar.service", "\n\r\t", "\u{7f}", "%i", "$HOME",
        ];
        let mut inputs: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
        inputs.push("x".repeat(300));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        inputs.extend((0..500).map(|_| rng.string(POOL, 12)));
        compare_with_systemd_escape(&[], &inputs, unit_name_escape);
    }

    #[test]
    fn unit_name_escape_path_matches_systemd_escape() {
        assert_eq!(unit_name_escape_path("/a//b/./c/").unwrap(), "a-b-c");
        assert!(unit_name_escape_path("a/b").is_err());
        let pool = ["a", "b", "/", "//", ".", "..", "-", " ", "é", "\\", ".x"];
        let mut rng = Rng(42);
        let (mut good, mut bad) = (vec!["/".to_string(), "/./".into(), "/.x".into()], vec![]);
        for _ in 0..300 {
            let p = format!("/{}", rng.string(&pool, 8));
            match unit_name_escape_path(&p) {
                Ok(_) => good.push(p),
                Err(_) => bad.push(p), // only ".." components can fail here
            }
        }
        compare_with_systemd_escape(&["--path"], &good, |p| unit_name_escape_path(p).unwrap());
        assert!(!bad.is_empty());
        for p in bad.iter().take(5) {
            let out = run(Command::new("systemd-escape").args(["--path", "--", p]));
            assert!(
                out.is_none_or(|o| !o.status.success()),
                "systemd-escape took {p:?}"
            );
        }
    }

    #[test]
    fn service_unit_names() {
        assert_eq!(
            service_unit_name("queen-rbee").unwrap(),
            "queen\\x2drbee.service"
        );
        assert_eq!(service_unit_name(".x/y").unwrap(), "\\x2ex-y.service");
        assert_eq!(service_unit_name(""), Err(EscapeError::EmptyName));
        let e = EscapeError::ControlChar {
            what: "daemon name".into(),
            ch: '\n',
            index: 1,
        };
        assert_eq!(service_unit_name("a\nb"), Err(e));
        assert_eq!(service_unit_name(&"a".repeat(247)).unwrap().len(), 255);
        let long = service_unit_name(&"a".repeat(248));
        assert!(matches!(long, Err(EscapeError::NameTooLong { unit }) if unit.len() == 256));
        // Escaped length counts: "é" is 8 bytes escaped.
        let long = service_unit_name(&"é".repeat(31));
        assert!(matches!(long, Err(EscapeError::NameTooLong { .. })));
    }

    #[test]
    fn exec_arg_quoting() {
        #[rustfmt::skip]
        let cases = [
            ("", r#""""#), ("a b", r#""a b""#), ("say \"hi\"", r#""say \"hi\"""#),
            ("it's", r#""it's""#), ("\\", r#""\\""#), ("end\\", r#""end\\""#),
            ("100%", r#""100%%""#), ("%n", r#""%%n""#), ("$VAR", r#""$$VAR""#),
            ("${VAR}", r#""$${VAR}""#), ("$$", r#""$$$$""#), (";", r#"";""#),
            ("\\;", r#""\\;""#), ("{}", r#""{}""#), ("é日本🎉", "\"é日本🎉\""),
            ("\t\u{7}\u{8}\u{b}\u{c}\u{1}\u{1b}\u{7f}", r#""\t\a\b\v\f\x01\x1b\x7f""#),
        ];
        for (input, want) in cases {
            assert_eq!(quote_exec_arg(input).unwrap(), want, "input {input:?}");
        }
        for (input, ch, index) in [("a\nb", '\n', 1), ("\r", '\r', 0), ("ab\0", '\0', 2)] {
            let want = EscapeError::ControlChar {
                what: "ExecStart= argument".into(),
                ch,
                index,
            };
            assert_eq!(quote_exec_arg(input), Err(want));
        }
        let long = quote_exec_arg(&"%".repeat(MAX_VALUE_LEN / 2));
        assert!(matches!(long, Err(EscapeError::TooLong { .. })));
    }

    #[test]
    fn exec_lines() {
        let args = vec![";".to_string(), "$X y".into(), String::new()];
        let line = exec_line("/opt/my app/50%", &args).unwrap();
        assert_eq!(line, r#""/opt/my app/50%%" ";" "$$X y" """#);
        assert_eq!(exec_line("/bin/true", &[]).unwrap(), r#""/bin/true""#);
        for p in ["echo", "-/bin/echo", "@/bin/echo", "", "./x"] {
            let want = EscapeError::RelativeExecutable { path: p.into() };
            assert_eq!(exec_line(p, &[]), Err(want));
        }
        let long = format!("/{}", "a".repeat(256));
        for p in [
            "/opt/it's",
            "/opt/\"q\"",
            "/a\\b",
            "/opt/$HOME",
            "/opt/dir/",
            &long,
        ] {
            let e = exec_line(p, &[]);
            assert!(
                matches!(e, Err(EscapeError::InvalidExecutable { .. })),
                "{p:?}"
            );
        }
        let e = exec_line("/opt/a\tb", &[]);
        assert!(matches!(e, Err(EscapeError::ControlChar { index: 6, .. })));
        let e = exec_line("/bin/echo", &["ok".into(), "x\ny".into()]);
        let want = EscapeError::ControlChar {
            what: "ExecStart= argument 2".into(),
            ch: '\n',
            index: 1,
        };
        assert_eq!(e, Err(want));
    }

    #[test]
    fn environment_assignments() {
        let ok = |k, v| environment_assignment(k, v).unwrap();
        assert_eq!(ok("A", "b c"), r#""A=b c""#);
        let hostile = "$HOME ${X} 50% \"q\" it's ;\\";
        assert_eq!(
            ok("_x9", hostile),
            r#""_x9=$HOME ${X} 50%% \"q\" it's ;\\""#
        );
        assert_eq!(ok("T", "a\tb=c"), r#""T=a\tb=c""#);
        assert_eq!(ok("E", ""), r#""E=""#);
        for k in ["", "1X", "A-B", "A B", "é", "A=B"] {
            let want = EscapeError::InvalidEnvKey { key: k.into() };
            assert_eq!(environment_assignment(k, "v"), Err(want));
        }
        for (v, ch) in [
            ("a\nb", '\n'),
            ("a\rb", '\r'),
            ("a\0b", '\0'),
            ("a\u{1}b", '\u{1}'),
        ] {
            let what = "Environment= value of K".into();
            let want = EscapeError::ControlChar { what, ch, index: 1 };
            assert_eq!(environment_assignment("K", v), Err(want));
        }
    }

    #[test]
    fn plain_and_path_values() {
        let text = "50% \"done\" it's $X \\o/";
        assert_eq!(
            plain_value("Description", text).unwrap(),
            "50%% \"done\" it's $X \\o/"
        );
        assert_eq!(escape_specifiers("%i%%"), "%%i%%%%");
        let reason = |r: Result<String, EscapeError>| match r {
            Err(EscapeError::InvalidValue { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason(plain_value("Description", "")).contains("empty"));
        assert!(reason(plain_value("Description", " x")).contains("space"));
        assert!(reason(plain_value("Description", "x ")).contains("space"));
        assert!(reason(plain_value("Description", "x\\")).contains("backslash"));
        let what = "Description= value".into();
        let want = EscapeError::ControlChar {
            what,
            ch: '\t',
            index: 1,
        };
        assert_eq!(plain_value("Description", "a\tb"), Err(want));
        let path = absolute_path_value("WorkingDirectory", "/srv/a b/%h");
        assert_eq!(path.unwrap(), "/srv/a b/%%h");
        assert!(reason(absolute_path_value("WorkingDirectory", "~")).contains("absolute"));
        assert!(reason(absolute_path_value("WorkingDirectory", "/a/../b")).contains(".."));
        assert!(absolute_path_value("WorkingDirectory", "/a/..b/").is_ok());
    }

    // ---- Round trips through systemd's own unit-file parser ----

    const NAME: &str = "dl test-é/x";
    const DESCRIPTION: &str = "Daemon \"x\" at 100% for $USER \\o/ it's é";
    const WORKDIR: &str = "/srv/my dir/50%/é'\"\\x";
    const LOG: &str = "/var/log/a b/%n;{}.log";
    #[rustfmt::skip]
    const ENV: &[(&str, &str)] = &[
        ("PLAIN", "v"), ("SPACES", " a  b "), ("DOLLAR", "$HOME ${X} $$"), ("PCT", "100% %n"),
        ("QUOTES", "\"it's\" \\"), ("TAB", "a\tb"), ("UNI", "é日本🎉"), ("EMPTY", ""), ("SEMI", ";"),
    ];

    fn hostile_args() -> Vec<String> {
        #[rustfmt::skip]
        let fixed = [
            "", " ", "a b", "\"", "'", "it's", "\\", "trailing\\", "%", "%n", "%%", "$", "$$",
            "$VAR", "${VAR}", ";", "\\;", "a;b", "{}", "${}", "é日本🎉", "a\tb", "\u{1}\u{1b}\u{7f}",
            "\u{7}\u{8}\u{b}\u{c}", "-", "@", "+", "!", ":", "# no comment", "[Unit]", "\\x41\\n",
        ];
        let mut rng = Rng(7);
        let random = (0..60).map(|_| rng.string(POOL, 6));
        fixed.iter().map(|s| s.to_string()).chain(random).collect()
    }

    /// A unit using every generator, with `extra` appended to [Service].
    fn unit_text(exec_start: &str, extra: &str) -> String {
        let description = plain_value("Description", DESCRIPTION).unwrap();
        let workdir = absolute_path_value("WorkingDirectory", WORKDIR).unwrap();
        let mut text = format!(
            "[Unit]\nDescription={description}\nDefaultDependencies=no\n[Service]\nType=oneshot\n\
             ExecStart={exec_start}\nWorkingDirectory={workdir}\n{extra}"
        );
        for (k, v) in ENV {
            text += &format!("Environment={}\n", environment_assignment(k, v).unwrap());
        }
        text
    }

    /// A directory every user can read, holding one unit file; removed on drop.
    struct Scratch(std::path::PathBuf);
    impl Scratch {
        fn new(tag: &str, unit: &str, text: &str) -> Self {
            let nanos = std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos();
            let name = format!("dl-escape-{tag}-{}-{nanos}", std::process::id());
            let dir = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(unit), text).unwrap();
            let set_mode = |p, mode| std::fs::set_permissions(p, PermissionsExt::from_mode(mode));
            set_mode(dir.join(unit), 0o644).unwrap();
            set_mode(dir.clone(), 0o755).unwrap();
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn systemd_analyze_verify_accepts_generated_unit() {
        let name = service_unit_name(NAME).unwrap();
        let text = unit_text(&exec_line("/bin/echo", &hostile_args()).unwrap(), "");
        let dir = Scratch::new("verify", &name, &text);
        let Some(out) = run(Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.0.join(&name)))
        else {
            return skip("systemd-analyze not found");
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{stderr}\nunit:\n{text}"
        );
    }

    /// Decodes a dumped "Command Line:" (`quote_command_line()`: bare words, or
    /// `"..."` with backslash escapes, C escapes and 3-digit octal).
    fn decode_command_line(s: &str) -> Vec<String> {
        let (b, mut i, mut words) = (s.as_bytes(), 0, vec![]);
        while i < b.len() {
            let (mut word, quoted) = (vec![], b[i] == b'"');
            i += usize::from(quoted);
            while i < b.len() && b[i] != if quoted { b'"' } else { b' ' } {
                if quoted && b[i] == b'\\' {
                    i += 1;
                    word.push(match b[i] {
                        b'a' => 7,
                        b'b' => 8,
                        b't' => 9,
                        b'n' => 10,
                        b'v' => 11,
                        b'f' => 12,
                        b'r' => 13,
                        b'0'..=b'3' => {
                            i += 2;
                            u8::from_str_radix(&s[i - 2..=i], 8).unwrap()
                        }
                        c => c,
                    });
                } else {
                    word.push(b[i]);
                }
                i += 1;
            }
            words.push(String::from_utf8(word).unwrap());
            i += 1 + usize::from(quoted); // closing quote, separating space
        }
        words
    }

    /// `systemd --test` parses units with the real parser and dumps them, with
    /// no running manager. It refuses to run as root, so root drops to nobody.
    #[test]
    fn systemd_test_mode_reads_back_exact_values() {
        let systemd = ["/usr/lib/systemd/systemd", "/lib/systemd/systemd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(systemd) = systemd else {
            return skip("systemd binary not found");
        };
        let name = service_unit_name(NAME).unwrap();
        let (args, odd_exe) = (hostile_args(), "/opt/odd dir/50%/run{}é;");
        let post = exec_line(odd_exe, &[";".into()]).unwrap();
        let log = absolute_path_value("StandardOutput", LOG).unwrap();
        let extra = format!("ExecStartPost={post}\nStandardOutput=append:{log}\n");
        let text = unit_text(&exec_line("/bin/echo", &args).unwrap(), &extra);
        let dir = Scratch::new("dump", &name, &text);
        let runtime = dir.0.join("runtime");
        std::fs::create_dir(&runtime).unwrap();
        std::fs::set_permissions(&runtime, PermissionsExt::from_mode(0o777)).unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let root = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split('\t').nth(2) == Some("0"));
        let mut cmd = Command::new(if root { "setpriv" } else { systemd });
        if root {
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", systemd]);
        }
        cmd.args(["--test", "--user", "--no-pager", &format!("--unit={name}")])
            .env("SYSTEMD_UNIT_PATH", &dir.0)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("HOME", &dir.0)
            .env("SYSTEMD_LOG_TARGET", "console");
        let Some(out) = run(&mut cmd) else {
            return skip("setpriv not found");
        };
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains(&name),
            "{stderr}\nunit:\n{text}"
        );

        let header = format!("\t-> Unit {name}:");
        let unit: Vec<&str> = (stdout.lines().skip_while(|l| *l != header).skip(1))
            .take_while(|l| !l.starts_with("\t-> Unit "))
            .collect();
        let field = |key: &str| -> Vec<&str> {
            let value = |l: &&str| {
                l.strip_prefix("\t\t")?
                    .strip_prefix(key)?
                    .strip_prefix(": ")
            };
            unit.iter().filter_map(value).collect()
        };
        let command = |setting: &str| {
            let at = unit
                .iter()
                .position(|l| *l == format!("\t\t-> {setting}:"))
                .expect(setting);
            let line = unit[at..]
                .iter()
                .find_map(|l| l.strip_prefix("\t\t\tCommand Line: "));
            decode_command_line(line.unwrap())
        };
        // The dump shows argv before `$` expansion, which turns `$$` into `$` at start-up.
        let dollars = args.iter().map(|a| a.replace('$', "$$"));
        let want: Vec<String> = std::iter::once("/bin/echo".into()).chain(dollars).collect();
        assert_eq!(command("ExecStart"), want);
        assert_eq!(command("ExecStartPost"), [odd_exe, ";"]);
        let env: Vec<String> = ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(field("Environment"), env);
        assert_eq!(field("Description"), [DESCRIPTION]);
        assert_eq!(field("WorkingDirectory"), [WORKDIR]);
        assert_eq!(field("StandardOutputFileToAppend"), [LOG]);
    }
}
