//! Text that other processes chose, made safe to print on a terminal.
//!
//! A caller names itself (`PR_SET_NAME` sets the `comm` that `status`,
//! `top` and `monitor` show), a provider writes its own error messages,
//! and a traced program picks the file names `learn` reports. Printed raw,
//! an escape sequence in any of them retitles or clears the operator's
//! terminal, or forges lines; a bidi override reorders what is shown.
//! Every human-readable output passes such text through [`escape`] (or
//! [`escape_text`] for multi-line reports); `--json` output is left as
//! serde writes it, for programs.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal as itself: C0 controls, DEL, C1
/// controls (U+0080–U+009F), and the Unicode bidi controls (embeddings and
/// overrides U+202A–U+202E, isolates U+2066–U+2069, marks U+200E, U+200F
/// and U+061C).
fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}' | '\u{80}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        | '\u{200e}' | '\u{200f}' | '\u{61c}')
}

fn escape_with(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_unsafe(c) || keep(c) {
            out.push(c);
        } else if u32::from(c) < 0x80 {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

/// `s` with every control and bidi character written as `\x1b` or
/// `\u{202e}`, so it prints as one inert line.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_with(s, |_| false)
}

/// Like [`escape`], keeping newlines and tabs: for reports of many lines.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape_with(s, |c| c == '\n' || c == '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(escape("wardenctl café ü 日本"), Cow::Borrowed(_)));
    }

    #[test]
    fn controls_and_bidi_are_written_out() {
        assert_eq!(escape("\x1b]0;pwned\x07"), "\\x1b]0;pwned\\x07");
        assert_eq!(escape("a\nb\tc\rd\x7f"), "a\\x0ab\\x09c\\x0dd\\x7f");
        assert_eq!(escape("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(escape("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(
            escape("\u{2066}x\u{2069}\u{200f}"),
            "\\u{2066}x\\u{2069}\\u{200f}"
        );
        assert_eq!(
            escape_text("line 1\n\tline 2\x1b[2J\n"),
            "line 1\n\tline 2\\x1b[2J\n"
        );
        for c in ('\u{0}'..='\u{10ffff}').filter(|c| is_unsafe(*c)) {
            let e = escape(&c.to_string()).into_owned();
            assert!(!e.chars().any(is_unsafe), "{c:?} survived as {e:?}");
        }
    }
}
