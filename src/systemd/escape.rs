//! Turning untrusted strings into systemd unit-file text.
//!
//! This module owns every rule for writing caller-supplied strings (names,
//! paths, arguments, environment values) into a unit file so that systemd
//! reads back exactly the input. Input it cannot represent is refused with an
//! [`EscapeError`], never silently changed. Crate policy: CR, LF and NUL never
//! appear in unit-file text, escaped or not.
//!
//! Rules (systemd 252; the tests check them against its binaries):
//! - Values go through specifier expansion, so `%` is written `%%`. `Exec*=`
//!   words are C-unescaped *before* that (`config_parse_exec`,
//!   src/core/load-fragment.c), so an escaped `\x25n` would still expand.
//! - `Exec*=` and `Environment=` words are split by `extract_first_word(
//!   EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE)`: inside `"..."` only `\` and `"` need
//!   escaping; `'`, `;`, `{}`, spaces, UTF-8 are literal (systemd.syntax(7)).
//! - `$` is expanded in `Exec*=` words at start-up, `$$` gives `$`
//!   (systemd.service(5), "COMMAND LINES"); it is literal in `Environment=`.
//! - A line ending in `\` continues on the next (systemd.syntax(7)): quoted
//!   words end in `"`, and plain values refuse a trailing `\`.

use std::fmt;

/// Longest unit name systemd accepts, suffix included (`unit_name_is_valid`
/// requires `strlen < UNIT_NAME_MAX`, which is 256).
pub const UNIT_NAME_MAX: usize = 255;

/// Longest value produced here ([`EscapeError::TooLong`]): systemd refuses
/// unit-file lines over 1 MiB (`LONG_LINE_MAX`); 4 KiB is left for `Key=`.
pub const MAX_VALUE_LEN: usize = 1024 * 1024 - 4096;

/// Why a string cannot be turned into unit-file text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EscapeError {
    /// A control character this position cannot carry.
    ControlChar {
        /// Which value it is in, e.g. `Exec*= argument 2`.
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
                    "{what} has control character U+{:04X} at byte {index}",
                    *ch as u32
                )
            }
            Self::EmptyName => f.write_str("daemon name is empty"),
            Self::NameTooLong { unit } => write!(
                f,
                "unit {} is over {UNIT_NAME_MAX} bytes",
                crate::text::quote(unit)
            ),
            Self::RelativeExecutable { path } => {
                write!(f, "executable {} is not absolute", crate::text::quote(path))
            }
            Self::InvalidExecutable { path, reason } => {
                write!(f, "executable {} {reason}", crate::text::quote(path))
            }
            Self::InvalidEnvKey { key } => write!(
                f,
                "invalid environment variable name {}",
                crate::text::quote(key)
            ),
            Self::InvalidValue { what, reason } => write!(f, "{what} {reason}"),
            Self::TooLong { what, len } => write!(f, "{what} is {len} bytes, over {MAX_VALUE_LEN}"),
        }
    }
}

impl std::error::Error for EscapeError {}

fn control_char(what: &str, (index, ch): (usize, char)) -> EscapeError {
    let what = what.into();
    EscapeError::ControlChar { what, ch, index }
}

fn invalid(what: &str, reason: &'static str) -> EscapeError {
    let what = what.into();
    EscapeError::InvalidValue { what, reason }
}

/// Refuses ASCII control characters (U+0000..=U+001F, U+007F). Others are
/// fine: systemd splits lines only at `\n`, `\r` and NUL, and accepts UTF-8.
fn no_control(what: &str, s: &str) -> Result<(), EscapeError> {
    match s.char_indices().find(|&(_, c)| c.is_ascii_control()) {
        Some(found) => Err(control_char(what, found)),
        None => Ok(()),
    }
}

fn check_len(what: &str, value: String) -> Result<String, EscapeError> {
    if value.len() > MAX_VALUE_LEN {
        let (what, len) = (what.into(), value.len());
        return Err(EscapeError::TooLong { what, len });
    }
    Ok(value)
}

/// Escapes `s` exactly as `systemd-escape STRING` does (`do_escape` in
/// src/basic/unit-name.c): `/` becomes `-`; ASCII letters, digits, `:`, `_`
/// and `.` are kept, except a leading `.`; every other byte (`-`, `\`, each
/// byte of multi-byte UTF-8, ...) becomes `\xNN` in lowercase hex.
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

/// Escapes an absolute path as `systemd-escape --path` does: `//` and `.`
/// components dropped, outer `/` removed, the rest [`unit_name_escape`]d; the
/// root becomes `-`. A relative path (`systemd-escape` only warns) and a `..`
/// component (`systemd-escape` refuses it too) give [`EscapeError::InvalidValue`].
// No unit of ours is named after a path yet (mount or path units would be);
// kept with its systemd-escape comparison test for when one is.
#[allow(dead_code)]
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

/// The unit name `<name escaped by [`unit_name_escape`]>.service`. Refuses an
/// empty name, ASCII control characters (a name with a newline is a mistake,
/// even if it could be escaped) and a result over [`UNIT_NAME_MAX`] bytes.
pub fn service_unit_name(name: &str) -> Result<String, EscapeError> {
    if name.is_empty() {
        return Err(EscapeError::EmptyName);
    }
    no_control("daemon name", name)?;
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
/// back exactly `s`: it is wrapped in `"..."`, `\` and `"` get a backslash,
/// `%` becomes `%%` and `$` becomes `$$` (nothing is expanded), tab becomes
/// `\t` and other ASCII control characters `\xNN`. All else (`'`, `;`, `{}`,
/// spaces, non-ASCII) is kept. Being quoted, a lone `;` is an argument:
/// systemd only takes an unquoted `;` as a command separator. CR, LF and NUL
/// are refused.
// The rule `exec_line` applies to each word, tested on its own.
#[allow(dead_code)]
pub fn quote_exec_arg(s: &str) -> Result<String, EscapeError> {
    quote_word(s, "Exec*= argument", Parser::Exec)
}

/// The value of an `Exec*=` setting (`ExecStart=`, `ExecStop=`, ...) running
/// `executable` with argv `[executable, args...]`, every word quoted by
/// [`quote_exec_arg`]'s rules, joined by spaces. No prefix (`-@:+!`) is
/// written, and the path must start with `/`, so it cannot be taken for one.
/// The path may not contain control characters, quotes or `\` (systemd
/// refuses them: `string_is_safe`), nor `$`: systemd expands variables in
/// argv\[0\] but not in the path it executes, so no escaping keeps both equal.
pub fn exec_line(executable: &str, args: &[String]) -> Result<String, EscapeError> {
    let bad = |reason| EscapeError::InvalidExecutable {
        path: executable.into(),
        reason,
    };
    if !executable.starts_with('/') {
        let path = executable.into();
        return Err(EscapeError::RelativeExecutable { path });
    }
    no_control("executable path", executable)?;
    if executable.contains(['"', '\'', '\\']) {
        return Err(bad("contains a quote or backslash, which systemd refuses"));
    }
    if executable.contains('$') {
        return Err(bad("contains '$', which systemd expands in argv[0] only"));
    }
    if executable.ends_with('/') {
        return Err(bad("ends with '/'"));
    }
    // path_is_valid(): under PATH_MAX bytes, each component at most NAME_MAX.
    if executable.len() >= 4096 || executable.split('/').any(|c| c.len() > 255) {
        return Err(bad("is over PATH_MAX, or has a component over NAME_MAX"));
    }
    let mut line = quote_word(executable, "executable path", Parser::Exec)?;
    for (i, arg) in args.iter().enumerate() {
        line.push(' ');
        line += &quote_word(arg, &format!("Exec*= argument {}", i + 1), Parser::Exec)?;
    }
    check_len("Exec*= line", line)
}

/// The value of one `Environment=` line: `"KEY=value"` with `\` and `"`
/// backslash-escaped, tab written `\t` and `%` written `%%`. `$` is kept:
/// systemd.exec(5) says "Variable expansion is not performed inside the
/// strings and the "$" character has no special meaning". `key` must match
/// `[A-Za-z_][A-Za-z0-9_]*`. Other ASCII control characters are refused, as
/// systemd.exec(5) says systemd does (though 252 accepts `\x01`).
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

/// A value for a single-line setting that expands specifiers but is not
/// unquoted, e.g. `Description=`: quotes and backslashes are literal there, so
/// only `%` is rewritten (`%%`); `field` names the setting in errors. Refused
/// rather than changed: ASCII control characters; an empty value (it resets
/// most settings); a leading or trailing space (systemd strips it); a trailing
/// `\` (a line ending in an odd number of them continues on the next; refusing
/// any is simpler). Prefixes special to one setting (`-`, `~`) are the caller's.
pub fn plain_value(field: &str, s: &str) -> Result<String, EscapeError> {
    let what = format!("{field}= value");
    no_control(&what, s)?;
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

/// systemd's `path_is_normalized()` rule for settings that need it (the PATH
/// of `StandardOutput=append:PATH`): absolute, no `.` or `..` component, no
/// `//`, no trailing `/`. Checked, never rewritten.
pub fn normalized_path(field: &str, path: &str) -> Result<(), EscapeError> {
    let what = format!("{field} path");
    if !path.starts_with('/') {
        return Err(invalid(&what, "is not an absolute path"));
    }
    let body = &path[1..];
    if body.is_empty() || path.ends_with('/') {
        return Err(invalid(&what, "does not name a file (ends with '/')"));
    }
    for c in body.split('/') {
        let reason = match c {
            "" => "contains \"//\" (systemd wants a normalized path)",
            "." => "contains a \".\" component (systemd wants a normalized path)",
            ".." => "contains a \"..\" component (systemd wants a normalized path)",
            _ => continue,
        };
        return Err(invalid(&what, reason));
    }
    Ok(())
}

/// [`plain_value`] for path settings (`WorkingDirectory=`, the PATH of
/// `StandardOutput=append:PATH`, ...): also refuses a relative path and a `..`
/// component (systemd: "path is not normalized"). `//`, `.` components and a
/// trailing `/` are kept; systemd simplifies them to the same path.
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
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;
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

    fn cc(what: &str, ch: char, index: usize) -> Result<String, EscapeError> {
        Err(control_char(what, (index, ch)))
    }

    /// The `reason` of an [`EscapeError::InvalidValue`].
    fn reason(r: Result<String, EscapeError>) -> &'static str {
        match r {
            Err(EscapeError::InvalidValue { reason, .. }) => reason,
            other => panic!("expected InvalidValue, got {other:?}"),
        }
    }

    /// xorshift64, for deterministic inputs without a rand dependency.
    struct Rng(u64);
    impl Rng {
        fn string(&mut self, pool: &[&str], max_parts: u64) -> String {
            let mut next = |n: u64| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 % n
            };
            let (parts, len) = (next(max_parts + 1), pool.len() as u64);
            (0..parts).map(|_| pool[next(len) as usize]).collect()
        }
    }

    #[rustfmt::skip]
    const POOL: &[&str] = &[
        "a", "Z", "0", "9", ":", "_", ".", "..", "-", "/", "\\", " ", "\t", "!", "\"", "#", "$",
        "%", "&", "'", "(", ")", "*", "+", ",", ";", "<", "=", ">", "?", "@", "[", "]", "^", "`",
        "{", "|", "}", "~", "é", "ü", "日本", "🎉", "\u{1}", "\u{7f}", "x", "y", "\u{a0}",
    ];

    /// Compares with `systemd-escape [flag] -- inputs...` (it prints them space-separated).
    fn compare_with_systemd_escape(flag: &[&str], inputs: &[String], ours: fn(&str) -> String) {
        for chunk in inputs.chunks(200) {
            let mut cmd = Command::new("systemd-escape");
            let Some(out) = run(cmd.args(flag).arg("--").args(chunk)) else {
                return skip("systemd-escape not found");
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
        assert_eq!(unit_name_escape("a/b-c"), "a-b\\x2dc");
        let escaped = unit_name_escape(".a b\\é:_.");
        assert_eq!(escaped, "\\x2ea\\x20b\\x5c\\xc3\\xa9:_.");
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
        assert!(reason(unit_name_escape_path("a/b")).contains("absolute"));
        let pool = ["a", "b", "/", "//", ".", "..", "-", " ", "é", "\\", ".x"];
        let mut rng = Rng(42);
        let paths = (0..300).map(|_| format!("/{}", rng.string(&pool, 8)));
        let paths = paths.chain(["/", "/./", "/.x"].map(String::from));
        // Only a ".." component can fail here; systemd-escape refuses it too.
        let (good, bad): (Vec<_>, Vec<_>) = paths.partition(|p| unit_name_escape_path(p).is_ok());
        compare_with_systemd_escape(&["--path"], &good, |p| unit_name_escape_path(p).unwrap());
        assert!(!bad.is_empty());
        for p in bad.iter().take(5) {
            let out = run(Command::new("systemd-escape").args(["--path", "--", p]));
            assert!(out.is_none_or(|o| !o.status.success()), "accepted {p:?}");
        }
    }

    #[test]
    fn service_unit_names() {
        assert_eq!(service_unit_name("rbee-d").unwrap(), "rbee\\x2dd.service");
        assert_eq!(service_unit_name(".x/y").unwrap(), "\\x2ex-y.service");
        assert_eq!(service_unit_name(""), Err(EscapeError::EmptyName));
        assert_eq!(service_unit_name("a\nb"), cc("daemon name", '\n', 1));
        assert_eq!(service_unit_name(&"a".repeat(247)).unwrap().len(), 255);
        let long = service_unit_name(&"a".repeat(248));
        assert!(matches!(long, Err(EscapeError::NameTooLong { unit }) if unit.len() == 256));
        // The escaped length counts: "é" is 8 bytes escaped.
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
            ("\t\u{7}\u{8}\u{b}\u{c}\u{1}\u{1b}\u{7f}", r#""\t\x07\x08\x0b\x0c\x01\x1b\x7f""#),
        ];
        for (input, want) in cases {
            assert_eq!(quote_exec_arg(input).unwrap(), want, "input {input:?}");
        }
        for (input, ch, index) in [("a\nb", '\n', 1), ("\r", '\r', 0), ("ab\0", '\0', 2)] {
            assert_eq!(quote_exec_arg(input), cc("Exec*= argument", ch, index));
        }
        let long = quote_exec_arg(&"%".repeat(MAX_VALUE_LEN / 2));
        assert!(matches!(long, Err(EscapeError::TooLong { .. })));
    }

    #[test]
    fn exec_lines() {
        let args = [";", "$X y", ""].map(String::from);
        let line = exec_line("/opt/my app/50%", &args).unwrap();
        assert_eq!(line, r#""/opt/my app/50%%" ";" "$$X y" """#);
        assert_eq!(exec_line("/bin/true", &[]).unwrap(), r#""/bin/true""#);
        for path in ["echo", "-/bin/echo", "@/bin/echo", "", "./x"].map(String::from) {
            let want = EscapeError::RelativeExecutable { path: path.clone() };
            assert_eq!(exec_line(&path, &[]), Err(want));
        }
        let long = format!("/{}", "a".repeat(256));
        for p in ["/it's", "/\"q\"", "/a\\b", "/$HOME", "/dir/", &long] {
            let e = exec_line(p, &[]);
            let invalid = matches!(e, Err(EscapeError::InvalidExecutable { .. }));
            assert!(invalid, "{p:?}");
        }
        assert_eq!(exec_line("/opt/a\tb", &[]), cc("executable path", '\t', 6));
        let e = exec_line("/bin/echo", &["ok".into(), "x\ny".into()]);
        assert_eq!(e, cc("Exec*= argument 2", '\n', 1));
    }

    #[test]
    fn environment_assignments() {
        let ok = |k, v| environment_assignment(k, v).unwrap();
        assert_eq!(ok("A", "b c"), r#""A=b c""#);
        let hostile = ok("_x9", "$HOME ${X} 50% \"q\" it's ;\\");
        assert_eq!(hostile, r#""_x9=$HOME ${X} 50%% \"q\" it's ;\\""#);
        assert_eq!(ok("T", "a\tb=c"), r#""T=a\tb=c""#);
        assert_eq!(ok("E", ""), r#""E=""#);
        for key in ["", "1X", "A-B", "A B", "é", "A=B"].map(String::from) {
            let want = Err(EscapeError::InvalidEnvKey { key: key.clone() });
            assert_eq!(environment_assignment(&key, "v"), want);
        }
        for ch in ['\n', '\r', '\0', '\u{1}'] {
            let got = environment_assignment("K", &format!("a{ch}b"));
            assert_eq!(got, cc("Environment= value of K", ch, 1));
        }
    }

    #[test]
    fn plain_and_path_values() {
        let text = plain_value("Description", "50% \"done\" it's $X \\o/");
        assert_eq!(text.unwrap(), "50%% \"done\" it's $X \\o/");
        assert_eq!(escape_specifiers("%i%%"), "%%i%%%%");
        assert!(reason(plain_value("Description", "")).contains("empty"));
        assert!(reason(plain_value("Description", " x")).contains("space"));
        assert!(reason(plain_value("Description", "x ")).contains("space"));
        assert!(reason(plain_value("Description", "x\\")).contains("backslash"));
        let tab = plain_value("Description", "a\tb");
        assert_eq!(tab, cc("Description= value", '\t', 1));
        let path = absolute_path_value("WorkingDirectory", "/srv/a b/%h");
        assert_eq!(path.unwrap(), "/srv/a b/%%h");
        assert!(reason(absolute_path_value("WorkingDirectory", "~")).contains("absolute"));
        assert!(reason(absolute_path_value("WorkingDirectory", "/a/../b")).contains(".."));
        assert!(absolute_path_value("WorkingDirectory", "/a/..b/").is_ok());
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
                    let named = b"abtnvfr".iter().position(|&c| c == b[i]);
                    word.push(match named {
                        Some(k) => b"\x07\x08\t\n\x0b\x0c\r"[k],
                        None if b[i].is_ascii_digit() => {
                            i += 2;
                            u8::from_str_radix(&s[i - 2..=i], 8).unwrap()
                        }
                        None => b[i],
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

    /// Removes a scratch directory when the test ends, unless it failed.
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    /// Writes one unit with every generator, checks it with `systemd-analyze
    /// verify`, then reads it back with `systemd --test`, which loads units
    /// with the real parser and dumps them without a running manager. `--test`
    /// refuses to run as root, so root runs it as nobody.
    #[test]
    fn systemd_parses_back_exact_values() {
        let (description, workdir) = ("Daemon \"x\" 100% $USER \\o/ é", "/srv/a b/50%/é'\"\\x");
        let log = "/var/log/a b/%n;{}.log";
        #[rustfmt::skip]
        let env = [
            ("PLAIN", "v"), ("SPACES", " a  b "), ("DOLLAR", "$HOME ${X} $$"), ("PCT", "100% %n"),
            ("QUOTES", "\"it's\" \\"), ("TAB", "a\tb"), ("UNI", "é日本🎉"), ("EMPTY", ""), ("SEMI", ";"),
        ];
        #[rustfmt::skip]
        let fixed = [
            "", " ", "a b", "\"", "'", "it's", "\\", "trailing\\", "%", "%n", "%%", "$", "$$",
            "$VAR", "${VAR}", ";", "\\;", "a;b", "{}", "${}", "é日本🎉", "a\tb", "\u{1}\u{1b}\u{7f}",
            "\u{7}\u{8}\u{b}\u{c}", "-", "@", "+", "!", ":", "# no comment", "[Unit]", "\\x41\\n",
        ];
        let mut rng = Rng(7);
        let random = (0..60).map(|_| rng.string(POOL, 6));
        let args: Vec<String> = fixed.iter().map(|s| s.to_string()).chain(random).collect();

        let nanos = std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("dl-escape-{}-{nanos}", std::process::id()));
        let (runtime, _cleanup) = (dir.join("runtime"), Cleanup(dir.clone()));
        std::fs::create_dir_all(dir.join("odd dir/50%")).unwrap();
        std::fs::create_dir(&runtime).unwrap();
        let odd_exe = format!("{}/odd dir/50%/run{{}}é;", dir.display());
        std::os::unix::fs::symlink("/bin/echo", &odd_exe).unwrap();
        let name = service_unit_name("dl test-é/x").unwrap();
        let unit_path = dir.join(&name);
        let mut text = format!(
            "[Unit]\nDescription={}\nDefaultDependencies=no\n[Service]\nType=oneshot\n\
             ExecStart={}\nExecStartPost={}\nWorkingDirectory={}\nStandardOutput=append:{}\n",
            plain_value("Description", description).unwrap(),
            exec_line("/bin/echo", &args).unwrap(),
            exec_line(&odd_exe, &[";".into()]).unwrap(),
            absolute_path_value("WorkingDirectory", workdir).unwrap(),
            absolute_path_value("StandardOutput", log).unwrap(),
        );
        for (k, v) in env {
            text += &format!("Environment={}\n", environment_assignment(k, v).unwrap());
        }
        std::fs::write(&unit_path, &text).unwrap();
        // Readable by nobody, see below.
        for (path, mode) in [(&unit_path, 0o644), (&dir, 0o755), (&runtime, 0o777)] {
            std::fs::set_permissions(path, PermissionsExt::from_mode(mode)).unwrap();
        }
        let mut cmd = Command::new("systemd-analyze");
        let Some(out) = run(cmd.arg("verify").arg(&unit_path)) else {
            return skip("systemd-analyze not found");
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        let clean = out.status.success() && stderr.is_empty();
        assert!(clean, "{stderr}\nunit:\n{text}");

        let systemd = ["/usr/lib/systemd/systemd", "/lib/systemd/systemd"];
        let Some(systemd) = systemd.into_iter().find(|p| Path::new(p).exists()) else {
            return skip("systemd binary not found");
        };
        // /proc/self belongs to our effective user.
        let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        let mut cmd = Command::new(if root { "setpriv" } else { systemd });
        if root {
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", systemd]);
        }
        cmd.args(["--test", "--user", "--no-pager", &format!("--unit={name}")])
            .env("SYSTEMD_UNIT_PATH", &dir)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("HOME", &dir)
            .env("SYSTEMD_LOG_TARGET", "console");
        let Some(out) = run(&mut cmd) else {
            return skip("setpriv not found");
        };
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let clean = out.status.success() && !stderr.contains(&name);
        assert!(clean, "{stderr}\nunit:\n{text}");

        let (header, mut units) = (format!("{name}:\n"), stdout.split("\n\t-> Unit "));
        let Some(unit) = units.find(|u| u.starts_with(&header)) else {
            panic!("{name} is not in the dump:\n{stdout}");
        };
        let unit: Vec<&str> = unit.lines().collect();
        let field = |key: &str| -> Vec<&str> {
            let key = format!("\t\t{key}: ");
            unit.iter().filter_map(|l| l.strip_prefix(&key)).collect()
        };
        let command = |setting: &str| {
            let header = format!("\t\t-> {setting}:");
            let mut lines = unit.iter().skip_while(|l| **l != header);
            let line = lines.find_map(|l| l.strip_prefix("\t\t\tCommand Line: "));
            decode_command_line(line.expect(setting))
        };
        // The dump shows argv before `$` expansion, which turns `$$` into `$` at start-up.
        let dollars = args.iter().map(|a| a.replace('$', "$$"));
        let want: Vec<String> = std::iter::once("/bin/echo".into()).chain(dollars).collect();
        assert_eq!(command("ExecStart"), want);
        assert_eq!(command("ExecStartPost"), [odd_exe.as_str(), ";"]);
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(field("Environment"), env);
        assert_eq!(field("Description"), [description]);
        assert_eq!(field("WorkingDirectory"), [workdir]);
        assert_eq!(field("StandardOutputFileToAppend"), [log]);
    }
}
