//! The one error type of `wardenctl`, and the exit-code table it maps to.
//!
//! Every command returns [`Error`]; `main` prints it (see
//! [`crate::output::Output::error`]) and exits with [`Error::exit_code`].
//! The library errors stay attached as `#[source]`; each variant's message
//! is the full text `wardenctl` prints after `error: `.

use warden_client::{CallError, ConnectError};
use warden_proto::WireError;

/// Exit status: the broker answered with an error (`policy explain`:
/// deny), or a local operation (install, uninstall) failed.
pub const EXIT_REMOTE_ERROR: u8 = 1;
/// Exit status: usage error, or the command could not be evaluated (bad
/// flags, unreadable config, bad JSON).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: could not connect, or the server identity check failed.
pub const EXIT_CONNECT: u8 = 3;
/// Exit status: the broker did not answer within `--timeout`.
pub const EXIT_TIMEOUT: u8 = 4;
/// Exit status: the broker revoked what the command was using (a
/// subscription, after a policy reload).
pub const EXIT_REVOKED: u8 = 5;

/// The exit-code table as `--help` and the man page show it.
pub const EXIT_CODES_HELP: &str = "\
Durations (--timeout, learn --duration, top --interval): a number and a
unit: 500ms, 25s, 10m, 1h (or sums: 1m30s). A bare number is an error.

Exit status:
  0  success (policy explain: allow)
  1  the broker answered with an error (stderr: `error: <code>: <message>`;
     with --json, the error object is printed on stdout; learn: on stderr,
     since stdout is the command's); policy explain:
     deny; learn: the capture was refused or failed; install/uninstall failed
  2  usage error, or the command could not be evaluated (bad flags,
     unreadable config, bad JSON)
  3  could not connect to the broker, or its identity check failed
  4  timed out: the broker did not answer within --timeout
  5  the broker revoked what the command was using (e.g. a subscription
     after a policy reload)
  learn -- CMD: once CMD has run, CMD's exit status (128+N for signal N)

With --json, every failure is also printed on stdout as one line
{\"error\": {\"code\": CODE, \"message\": TEXT}}: CODE is the broker's error code
when the broker answered with one, otherwise wardenctl's own:
connect_failed (3), disconnected (3), timeout (4), revoked (5), usage (2),
failed (1), capture_failed (1).";

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting (or the hello) failed: exit 3; 1 when the broker refused
    /// the connection with an error, 4 when it did not answer in time.
    #[error("{}", connect_message(.0))]
    Connect(#[source] ConnectError),
    /// A request failed: exit 1 for the broker's error, 3 for a closed
    /// connection, 4 for no answer in time, 2 for a request that could not
    /// be made.
    #[error("{}", call_message(.0))]
    Call(#[source] CallError),
    /// The connection closed while a stream (subscribe, monitor) waited
    /// for its next event: exit 3.
    #[error("the connection to the broker closed{}", .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed {
        /// The broker's last word, if it said one.
        reason: Option<WireError>,
    },
    /// The broker revoked what the command used: exit 5.
    #[error("{0}")]
    Revoked(String),
    /// Install, uninstall or dump failed: exit 1.
    #[error("{}", chain(.0))]
    Service(#[source] warden_service::ServiceError),
    /// Another local operation failed: exit 1.
    #[error("{0}")]
    Operation(String),
    /// A configuration file could not be used: exit 2.
    #[error("{0}")]
    Config(#[source] warden_policy::ConfigError),
    /// A local I/O step (the terminal, running systemctl) failed: exit 2.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Bad input (a flag, JSON, a user name) or a failed local step:
    /// exit 2.
    #[error("{0}")]
    Usage(String),
    /// `policy explain` decided deny: exit 1, nothing more to print.
    #[error("denied")]
    Denied,
    /// `learn` could not capture: exit 1 (3 for a lost connection, 4 for
    /// no answer in time, as [`Error::Call`]). Printed after
    /// `wardenctl learn: `.
    #[error("{what}{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Capture {
        /// What failed.
        what: String,
        /// The failed request, if one failed.
        #[source]
        source: Option<CallError>,
    },
    /// `learn` lost the broker during the capture: exit 3.
    #[error("{0}")]
    CaptureClosed(String),
}

impl Error {
    /// The exit status (the table in [`EXIT_CODES_HELP`]).
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Connect(ConnectError::Refused(_)) => EXIT_REMOTE_ERROR,
            Error::Connect(ConnectError::Timeout { .. }) => EXIT_TIMEOUT,
            Error::Connect(_) | Error::Closed { .. } | Error::CaptureClosed(_) => EXIT_CONNECT,
            Error::Call(e) => call_exit(e, EXIT_USAGE),
            Error::Capture { source, .. } => source
                .as_ref()
                .map_or(EXIT_REMOTE_ERROR, |e| call_exit(e, EXIT_REMOTE_ERROR)),
            Error::Revoked(_) => EXIT_REVOKED,
            Error::Service(_) | Error::Operation(_) | Error::Denied => EXIT_REMOTE_ERROR,
            Error::Config(_) | Error::Io { .. } | Error::Usage(_) => EXIT_USAGE,
        }
    }

    /// The `code` of the error object `--json` prints: the broker's code
    /// when it answered with an error, otherwise one of wardenctl's own
    /// (the table in [`EXIT_CODES_HELP`]); `None` for `policy explain`'s
    /// deny, whose decision was already printed.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        if let Some(w) = self.wire() {
            return Some(w.code.as_str());
        }
        Some(match self {
            Error::Denied => return None,
            Error::Connect(ConnectError::Timeout { .. }) => "timeout",
            Error::Connect(_) => "connect_failed",
            Error::Closed { .. } | Error::CaptureClosed(_) => "disconnected",
            Error::Revoked(_) => "revoked",
            Error::Call(e) => call_code(e, "usage"),
            Error::Capture {
                source: Some(e), ..
            } => call_code(e, "capture_failed"),
            Error::Capture { source: None, .. } => "capture_failed",
            Error::Service(_) | Error::Operation(_) => "failed",
            Error::Config(_) | Error::Io { .. } | Error::Usage(_) => "usage",
        })
    }

    /// The broker's error, when the broker answered with one.
    #[must_use]
    pub fn wire(&self) -> Option<&WireError> {
        match self {
            Error::Call(CallError::Remote(w)) | Error::Connect(ConnectError::Refused(w)) => Some(w),
            _ => None,
        }
    }

    /// `what` failed because of the OS error `source`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// `learn` failed: `what`.
    pub fn capture(what: impl Into<String>) -> Error {
        Error::Capture {
            what: what.into(),
            source: None,
        }
    }

    /// `learn` failed: `what`, because the request failed with `e`.
    pub fn capture_call(what: impl Into<String>, e: CallError) -> Error {
        Error::Capture {
            what: what.into(),
            source: Some(e),
        }
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        Error::Call(e)
    }
}

impl From<ConnectError> for Error {
    fn from(e: ConnectError) -> Self {
        Error::Connect(e)
    }
}

impl From<warden_service::ServiceError> for Error {
    fn from(e: warden_service::ServiceError) -> Self {
        Error::Service(e)
    }
}

impl From<warden_policy::ConfigError> for Error {
    fn from(e: warden_policy::ConfigError) -> Self {
        Error::Config(e)
    }
}

/// The exit status of a failed request; `other` for a request that was
/// never answered for a local reason.
fn call_exit(e: &CallError, other: u8) -> u8 {
    match e {
        CallError::Remote(_) => EXIT_REMOTE_ERROR,
        CallError::Disconnected { .. } => EXIT_CONNECT,
        CallError::Timeout { .. } => EXIT_TIMEOUT,
        _ => other,
    }
}

/// The `--json` error code of a failed request; `other` for a request
/// that was never answered for a local reason.
fn call_code<'a>(e: &'a CallError, other: &'a str) -> &'a str {
    match e {
        CallError::Remote(w) => w.code.as_str(),
        CallError::Disconnected { .. } => "disconnected",
        CallError::Timeout { .. } => "timeout",
        _ => other,
    }
}

fn connect_message(e: &ConnectError) -> String {
    match e {
        ConnectError::Refused(w) => format!("{}: {}", w.code, w.message),
        ConnectError::Timeout { .. } => format!("{e}; `--timeout` sets how long to wait"),
        ConnectError::Connect { path, source } => match connect_hint(path, source) {
            Some(hint) => format!("{}: {hint}", chain(e)),
            None => chain(e),
        },
        other => chain(other),
    }
}

/// What to do about a socket that could not be reached: start the broker
/// (no socket, nobody listening), or get the right to connect (the
/// socket's or its directory's mode and group).
fn connect_hint(path: &str, source: &std::io::Error) -> Option<String> {
    use std::io::ErrorKind;
    match source.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => Some(format!(
            "is wardend running? Start it with `sudo systemctl start warden.socket` \
             (the service `sudo wardenctl install` sets up) or run `sudo wardend`; \
             a broker listening elsewhere than {path} is reached with --socket PATH \
             or WARDEN_SOCKET"
        )),
        ErrorKind::PermissionDenied => Some(permission_hint(std::path::Path::new(path))),
        _ => None,
    }
}

/// Why connecting to `path` was denied: the mode, owner and group of the
/// socket (or of the directory that could not be searched), and which
/// group to join.
fn permission_hint(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let (what, meta) = match std::fs::metadata(path) {
        Ok(m) => ("the socket", m),
        Err(_) => match path.parent().map(std::fs::metadata) {
            Some(Ok(m)) => ("its directory", m),
            _ => {
                return "the socket or its directory is not open to you; ask an \
                        administrator which group may connect"
                    .into()
            }
        },
    };
    let mode = meta.mode() & 0o7777;
    let (uid, gid) = (u64::from(meta.uid()), u64::from(meta.gid()));
    let group = u32::try_from(gid)
        .ok()
        .and_then(|g| warden_sys::group_name(g).ok().flatten());
    let described = format!(
        "{what} is mode {mode:04o}, owner {}, group {}",
        crate::cmds::user_name(uid),
        crate::cmds::group_name(gid)
    );
    let group_opens = if what == "the socket" {
        mode & 0o060 == 0o060
    } else {
        mode & 0o010 != 0
    };
    match group {
        Some(g) if group_opens => format!(
            "{described}: only that group's members (and its owner) may connect; \
             join it with `sudo usermod -aG {g} $USER`, then log in again \
             (a running session keeps its old groups)"
        ),
        _ => format!(
            "{described}, which does not let you in; ask an administrator to set \
             socket_mode and socket_group in the broker's configuration"
        ),
    }
}

fn call_message(e: &CallError) -> String {
    match e {
        CallError::Remote(w) => format!("{}: {}", w.code, w.message),
        CallError::Timeout { .. } => {
            format!("{e}: the broker is overloaded or stuck; `--timeout` sets how long to wait")
        }
        other => other.to_string(),
    }
}

/// `e`'s message followed by its causes'. A cause whose text the message
/// already ends with (an error that also keeps the cause as its `source`)
/// is not repeated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> WireError {
        serde_json::from_value(serde_json::json!({"code": "denied", "message": "no"}))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_error_maps_to_the_table() {
        let cases = [
            (Error::Call(CallError::Remote(wire())), EXIT_REMOTE_ERROR),
            (
                Error::Call(CallError::Disconnected { reason: None }),
                EXIT_CONNECT,
            ),
            (Error::Call(CallError::TooLarge { max: 1 }), EXIT_USAGE),
            (
                Error::Connect(ConnectError::Refused(wire())),
                EXIT_REMOTE_ERROR,
            ),
            (Error::Closed { reason: None }, EXIT_CONNECT),
            (Error::Revoked("r".into()), EXIT_REVOKED),
            (Error::Operation("o".into()), EXIT_REMOTE_ERROR),
            (Error::Usage("u".into()), EXIT_USAGE),
            (Error::Denied, EXIT_REMOTE_ERROR),
            (Error::capture("c"), EXIT_REMOTE_ERROR),
            (
                Error::capture_call("c", CallError::Disconnected { reason: None }),
                EXIT_CONNECT,
            ),
            (
                Error::capture_call("c", CallError::Remote(wire())),
                EXIT_REMOTE_ERROR,
            ),
            (Error::CaptureClosed("c".into()), EXIT_CONNECT),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e:?}");
        }
    }

    #[test]
    fn the_library_error_stays_the_source() {
        use std::error::Error as _;
        let e = Error::Call(CallError::Disconnected { reason: None });
        assert!(e.source().is_some());
        assert_eq!(e.to_string(), "the connection to the broker closed");
    }
}
