//! The version handshake.
//!
//! The first frame on a connection is the client's [`Hello`]; the broker
//! answers with a [`Welcome`] that states the protocol version both will
//! speak, the limits in force, and the identity the broker attached to the
//! connection from the kernel (never from anything the client sent). Any
//! other first frame is refused with `bad_request` and the connection closed.

use serde::{Deserialize, Serialize};

/// The OS identity of a peer as the broker saw it when the connection was
/// accepted (`SO_PEERCRED`, `SO_PEERGROUPS`). Sent in `welcome`, returned by
/// `warden.whoami`, and attached to calls routed to providers and to events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Effective user id of the peer process at connect time.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
    /// Process id at connect time (the broker holds a pidfd for it, so a
    /// recycled pid is never confused with the caller).
    pub pid: u32,
    /// For the connection of a child host the broker started: the host's
    /// configured name (its uid, gid and groups are the ones the broker
    /// gave it at spawn). Absent for every other connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// For the connection of a per-session host: the logind session it
    /// serves (its uid, gid and groups are that session's user's). Absent
    /// for every other connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// The client's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The highest protocol version the client speaks: any integer from 1
    /// to 2^64-1 (the broker answers with the lower of this and its own).
    pub version: u64,
    /// Free-form client software name, for logs (e.g. `"wardenctl/0.1.0"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// An invitation token (see [`crate::invitation`]), for a process that
    /// joins by invitation: the connection then holds the invitation's
    /// role. Printed as `[REDACTED]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation: Option<crate::invitation::InvitationText>,
}

/// Limits the broker enforces on this connection, so a client can stay
/// within them instead of discovering them by error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WelcomeLimits {
    /// Maximum frame body in bytes.
    pub max_frame: u64,
    /// Maximum calls this connection may have in flight.
    pub max_in_flight: u32,
    /// Default deadline of a call, in milliseconds.
    pub call_timeout_ms: u64,
}

/// The broker's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version both sides speak from now on: the lower of the
    /// hello's and the broker's.
    pub version: u64,
    /// Broker software name and version, e.g. `"wardend/0.1.0"`.
    pub server: String,
    /// The identity the broker attached to this connection.
    pub identity: Identity,
    /// Limits in force on this connection.
    pub limits: WelcomeLimits,
    /// The role this connection holds because it joined by invitation;
    /// sent only then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}
