//! The Warden wire protocol: the contract between the broker and every client.
//!
//! Everything that crosses the socket is defined here once and documented in
//! `docs/protocol.md` (whose byte examples are checked by this crate's tests).
//! This crate does no I/O and knows nothing of the OS: it turns bytes into
//! validated messages and back, with a hard limit on every dimension of the
//! input, so the broker can hand it bytes from an attacker.
//!
//! # Encoding
//! A frame is a 4-byte big-endian length followed by that many bytes of one
//! UTF-8 JSON object (the envelope). JSON was chosen because every language
//! has a parser in its standard library or one step away, payloads are
//! already JSON in most callers, and a frame can be read in a hex dump; the
//! length prefix keeps framing binary-safe and lets the broker reject an
//! oversized frame from its first four bytes, before buffering any of it.
//!
//! # Attacker model
//! Input is hostile. Decoding never panics, never allocates more than the
//! frame limit for a frame body, bounds JSON nesting before parsing, and
//! rejects unknown kinds, unknown fields and invalid names with a typed error
//! that maps to one wire error code.
#![forbid(unsafe_code)]

pub mod depth;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod invitation;
pub mod limits;
pub mod name;

pub use envelope::{
    CallTarget, DecodeError, IdSequence, Message, Payload, RequestId, MAX_SESSION_ID_LEN,
};
pub use error::{ErrorCode, WireError};
pub use frame::{encode_frame, FrameDecoder, FrameError};
pub use handshake::{Hello, Identity, Welcome, WelcomeLimits};
pub use limits::*;
pub use name::{MethodName, NameError, TopicName};

/// The method the broker calls on a child host's connection to load,
/// unload or reload one of its modules (params `{"op": "load" | "unload" |
/// "reload", "module": PATH_OR_NAME}`). It is in the reserved `warden.*`
/// namespace, which no connection can provide: a host receives it only
/// from the broker.
pub const HOST_MODULE_METHOD: &str = "warden.host.module";
