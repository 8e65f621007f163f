//! How commands print: one JSON line per result under `--json`, a human
//! rendering otherwise, and errors on stderr (the broker's error also as
//! one JSON object on stdout under `--json`).

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

    /// Reports a failure: on stderr, and, for the broker's error under
    /// `--json`, as `{"error": {"code", "message"}}` on stdout. `policy
    /// explain`'s deny prints nothing more (the decision was printed).
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

/// The JSON object of an error that has one: the broker's error.
#[must_use]
pub fn error_json(e: &Error) -> Option<Value> {
    e.wire()
        .map(|w| serde_json::json!({ "error": { "code": w.code.as_str(), "message": w.message } }))
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
