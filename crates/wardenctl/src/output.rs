//! How commands print: one JSON line per result under `--json`, a human
//! rendering otherwise, and errors on stderr (under `--json` also as one
//! JSON object on stdout, `{"error": {"code", "message"}}`, whatever
//! failed: the broker's error, or a connection that could not be made).

use serde_json::Value;

use crate::error::Error;
use crate::term;

/// Where a command prints its result, and how.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`: machine-readable output on stdout.
    pub json: bool,
}

impl Output {
    /// Prints a result: `v` as one JSON line under `--json`, otherwise
    /// what `human` renders from it.
    pub fn emit(&self, v: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            json_line(v);
        } else {
            human(v);
        }
    }

    /// Prints a result whose human form is pretty JSON (`call`).
    pub fn emit_pretty(&self, v: &Value) {
        self.emit(v, pretty);
    }

    /// Reports a failure: on stderr, and under `--json` as
    /// `{"error": {"code", "message"}}` on stdout. `policy explain`'s deny
    /// prints nothing more (the decision was printed).
    pub fn error(&self, e: &Error) {
        if let Some(v) = error_json(e).filter(|_| self.json) {
            json_line(&v);
        }
        match e {
            Error::Denied => {}
            Error::Capture { .. } | Error::CaptureClosed(_) => {
                eprintln!("wardenctl learn: {e}");
            }
            _ => match e.wire() {
                Some(w) => eprintln!("error: {}: {}", w.code, term::escape(&w.message)),
                None => eprintln!("error: {e}"),
            },
        }
    }
}

/// The JSON object of a failure: the broker's error as it sent it, or
/// one of the same shape with wardenctl's own code (see
/// [`Error::code`]) and the message printed on stderr. `None` for
/// `policy explain`'s deny.
#[must_use]
pub fn error_json(e: &Error) -> Option<Value> {
    let code = e.code()?;
    let message = match e.wire() {
        Some(w) => w.message.clone(),
        None => e.to_string(),
    };
    Some(serde_json::json!({ "error": { "code": code, "message": message } }))
}

/// How a column of a [`table`] lines up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// A plain-text table: each column as wide as its widest cell (header
/// included), one space between columns, no trailing blanks. Cells are
/// counted in characters, so they should be escaped already (see
/// [`term::escape`]).
#[must_use]
pub fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = columns.iter().map(|(h, _)| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, ((_, align), w)) in columns.iter().zip(&widths).enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            if i > 0 {
                line.push(' ');
            }
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            match align {
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                Align::Right => {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A JSON number or string as a table cell (`-` when absent): a JSON
/// value's own `Display` ignores width and alignment.
#[must_use]
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => term::escape(s).into_owned(),
        other => other.to_string(),
    }
}

/// One compact JSON line on stdout.
pub fn json_line(v: &Value) {
    println!(
        "{}",
        serde_json::to_string(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Pretty JSON for people: serde escapes C0 controls inside strings but
/// not C1 or bidi controls, which a provider's answer may carry.
pub fn pretty(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    println!("{}", term::escape_text(&text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_line_up_whatever_the_cell_widths() {
        let rows = vec![
            vec![
                "1".to_owned(),
                "a-rather-long-user-name".to_owned(),
                "7".to_owned(),
            ],
            vec!["123456".to_owned(), "b".to_owned(), "1234567890".to_owned()],
        ];
        let t = table(
            &[
                ("ID", Align::Right),
                ("USER", Align::Left),
                ("CALLS", Align::Right),
            ],
            &rows,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        // Right-aligned last column: every line ends at the same place;
        // the left-aligned column starts at the same place.
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
        let user_at = lines[0].find("USER").unwrap_or(usize::MAX);
        assert_eq!(lines[1].find("a-rather"), Some(user_at), "{t}");
        assert_eq!(lines[2].find('b'), Some(user_at), "{t}");
    }
    use warden_client::{CallError, ConnectError};

    #[test]
    fn every_failure_but_a_deny_has_an_error_object() {
        let refused = ConnectError::Connect {
            path: "/run/x.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let v = error_json(&Error::Connect(refused)).unwrap_or_default();
        assert_eq!(v["error"]["code"], "connect_failed", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("/run/x.sock")),
            "{v}"
        );
        let closed = Error::Call(CallError::Disconnected { reason: None });
        let v = error_json(&closed).unwrap_or_default();
        assert_eq!(v["error"]["code"], "disconnected", "{v}");
        assert_eq!(
            error_json(&Error::Revoked("r".into())).unwrap_or_default()["error"]["code"],
            "revoked"
        );
        assert!(error_json(&Error::Denied).is_none());
    }
}
