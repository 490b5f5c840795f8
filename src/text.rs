//! Quoting untrusted text in messages: clipped to a bound, control
//! characters escaped, so a file's or a daemon's bytes can never forge or
//! flood an error message or a log line.

/// `text` cut to about `max` bytes around byte offset `at` (with `…` where
/// something was cut), control characters escaped.
pub(crate) fn clip(text: &str, at: usize, max: usize) -> String {
    if text.len() <= max {
        return escape_controls(text);
    }
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    // A third of the room before the point of interest, the rest after it.
    let from = floor(
        at.saturating_sub(max / 3)
            .min(text.len().saturating_sub(max)),
    );
    let to = floor(from + max);
    format!(
        "{}{}{}",
        if from > 0 { "…" } else { "" },
        escape_controls(&text[from..to]),
        if to < text.len() { "…" } else { "" }
    )
}

/// `text` cut to about `max` bytes by dropping its middle (a message's
/// start and end say the most), control characters escaped.
pub(crate) fn clip_middle(text: &str, max: usize) -> String {
    if text.len() <= max {
        return escape_controls(text);
    }
    let mut head = max * 2 / 3;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - (max - head);
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}…{}",
        escape_controls(&text[..head]),
        escape_controls(&text[tail..])
    )
}

/// Control characters (C0, DEL, C1) and the bidirectional-text overrides
/// written as `\u{..}` escapes, so text from a file cannot drive the
/// terminal that shows an error (ESC sequences) or disguise itself.
pub(crate) fn escape_controls(text: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(|c| c.is_control() || bidi(c)) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() || bidi(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// A value from a config or a daemon, quoted for a message: in backticks,
/// cut to about 200 bytes, control characters escaped (never Rust's
/// `{:?}`, whose escaped-debug form is not for people).
pub(crate) fn quote(text: &str) -> String {
    format!("`{}`", clip_middle(text, 200))
}

/// A duration in words: `2 s`, `1.5 s`, `250 ms`.
pub(crate) fn duration(d: std::time::Duration) -> String {
    if d.as_secs() == 0 && d.subsec_millis() != 0 {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quotes_and_durations_read_as_words() {
        assert_eq!(quote("a\u{1b}b"), "`a\\u{1b}b`");
        assert_eq!(duration(Duration::from_secs(2)), "2 s");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(duration(Duration::from_millis(250)), "250 ms");
    }
}
