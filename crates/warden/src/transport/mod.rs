//! The transport layer: a connection's socket, read by its task
//! ([`connection`]) and written through its [`wire::Wire`].
//!
//! Frames are decoded here with hard limits, and each request handed to
//! the semantic layer ([`crate::router`]); this is the only layer that
//! touches sockets.

pub(crate) mod connection;
pub(crate) mod wire;
