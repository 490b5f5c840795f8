//! Instances of a template config: `{instance}` in `args`, `env` values,
//! `working_dir`, `pid_file` and the log paths stands for the instance name
//! (`{{instance}}` for a literal `{instance}`). One config then runs many
//! workers, as systemd's `NAME@.service` templates do.
//!
//! One scanner serves every use, so the token means the same thing
//! everywhere: substituted for an instance, rendered as a systemd
//! specifier in a template unit, found by [`uses_token`].

/// The placeholder.
pub const TOKEN: &str = "{instance}";
const LITERAL: &str = "{{instance}}";

/// `text` with each `{instance}` replaced by `with` and each
/// `{{instance}}` by a literal `{instance}`.
pub fn substitute(text: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix(LITERAL) {
            out.push_str(TOKEN);
            rest = after;
        } else if let Some(after) = rest.strip_prefix(TOKEN) {
            out.push_str(with);
            rest = after;
        } else {
            out.push('{');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Whether `text` holds the placeholder itself (not its `{{instance}}`
/// escape).
pub fn uses_token(text: &str) -> bool {
    // A marker no config text can hold (NUL is refused everywhere).
    substitute(text, "\0").contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_and_its_escape() {
        assert_eq!(substitute("--gpu={instance}", "0"), "--gpu=0");
        assert_eq!(substitute("{instance}{instance}", "ab"), "abab");
        assert_eq!(
            substitute("{{instance}} is {instance}", "x"),
            "{instance} is x"
        );
        assert_eq!(substitute("{inst} {} {", "x"), "{inst} {} {");
        assert_eq!(substitute("{{{instance}}}", "x"), "{{instance}}");
        assert_eq!(substitute("é{instance}ü", "ß"), "éßü");
        assert!(uses_token("a{instance}"));
        assert!(!uses_token("a{{instance}}"));
        assert!(!uses_token("plain"));
    }
}
