//! The closed set of wire error codes.
//!
//! Every failure the broker reports maps to exactly one of these codes. Their
//! snake_case names are stable: clients match on them, so a code is never
//! renamed or reused for another meaning.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::limits::MAX_TEXT_LEN;

/// A wire error code. The set is closed: a frame with any other code is
/// rejected as `bad_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Policy does not allow this caller to perform this action.
    Denied,
    /// No built-in handler or provider serves this method.
    UnknownMethod,
    /// The frame or envelope is malformed, or the request is invalid here.
    BadRequest,
    /// The frame exceeds the frame limit.
    TooLarge,
    /// A per-uid, per-connection or global limit would be exceeded.
    LimitExceeded,
    /// The target exists but cannot serve now (e.g. its provider went away).
    Unavailable,
    /// The call's deadline passed before a reply arrived.
    Timeout,
    /// The call was cancelled by its caller.
    Cancelled,
    /// The broker is shutting down and takes no new work.
    ShuttingDown,
    /// A bug or unexpected failure inside the broker or a provider.
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::Denied,
        ErrorCode::UnknownMethod,
        ErrorCode::BadRequest,
        ErrorCode::TooLarge,
        ErrorCode::LimitExceeded,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Cancelled,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
    ];

    /// The stable wire name, e.g. `"unknown_method"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Denied => "denied",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as carried on the wire: a code and a human-readable message that
/// says what went wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireError {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// Text for people; never parsed by programs.
    pub message: String,
}

impl WireError {
    /// Builds an error, truncating the message to [`MAX_TEXT_LEN`] bytes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        truncate_utf8(&mut message, MAX_TEXT_LEN);
        WireError { code, message }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for WireError {}

/// Truncates `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_stable_snake_case_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap_or(ErrorCode::Internal);
            assert_eq!(back, code);
        }
        let names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "denied",
                "unknown_method",
                "bad_request",
                "too_large",
                "limit_exceeded",
                "unavailable",
                "timeout",
                "cancelled",
                "shutting_down",
                "internal"
            ]
        );
    }

    #[test]
    fn unknown_code_is_rejected() {
        assert!(serde_json::from_str::<ErrorCode>("\"oops\"").is_err());
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let e = WireError::new(ErrorCode::Internal, "é".repeat(MAX_TEXT_LEN));
        assert!(e.message.len() <= MAX_TEXT_LEN);
        assert!(e.message.chars().all(|c| c == 'é'));
    }
}
