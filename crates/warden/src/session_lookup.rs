//! Which login session a caller is in, for calls to per-session hosts.
//!
//! The broker itself knows no session manager: the embedding program
//! (wardend, with logind) gives it a [`SessionLookup`]. A call to a method
//! that several session instances serve goes to the instance in the
//! caller's own session; the session of a connection is looked up once,
//! on the pid the broker pinned at connect, and kept while the connection
//! lives.

use std::future::Future;
use std::pin::Pin;

/// Answers which login session a process is in.
pub trait SessionLookup: Send + Sync + 'static {
    /// The session of process `pid`, or `None` if it is in none (or the
    /// session manager cannot be asked).
    fn session_of(&self, pid: u32) -> Pin<Box<dyn Future<Output = Option<String>> + Send + '_>>;
}
