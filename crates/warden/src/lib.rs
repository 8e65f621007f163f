//! The Warden broker runtime.
//!
//! A [`Broker`] accepts connections on a listening Unix socket and runs one
//! task per connection. Every frame enters through that task, which
//! decodes it with hard limits (`warden-proto`), checks it against the
//! caller's policy snapshot (`warden-policy`, compiled once at connect from
//! the identity the kernel reported), and dispatches it: to a built-in
//! method, to the connection that provides the method (calls in both
//! directions on one connection), or to the subscribers of a topic.
//!
//! # Attacker model
//! Any local user can connect and send any bytes. Identity comes from the
//! kernel at accept (`SO_PEERCRED`, `SO_PEERGROUPS`, `SO_PEERPIDFD`) and is
//! never read from a payload. Every queue is bounded and every resource a
//! connection can consume is limited per connection, per uid or globally,
//! so one caller cannot exhaust the broker or stall other callers: a slow
//! reader only ever slows itself. A panic in a handler is confined to that
//! call.
//!
//! # Layout
//! - [`broker`]: the builder, the accept loop, shutdown and drain.
//! - `hub`: state shared by connection tasks (registry, providers, topics,
//!   per-uid accounting), behind short locks never held across `.await`.
//! - `connection`: the per-connection reader and writer.
//! - `router`: calls — built-ins, routing to providers, deadlines, cancel.
//! - `pubsub`: subscribe, publish and fan-out with lag accounting.
//! - `builtins`: the `warden.*` methods.

pub mod broker;
mod builtins;
mod channel;
mod connection;
mod handler;
mod hub;
mod monitor;
mod pubsub;
mod queue;
mod router;
mod shutdown;

pub use broker::{Broker, BrokerBuilder, BrokerError, ServeError, TEST_PANIC_METHOD};
pub use channel::{CallerChannel, Pushed};
pub use handler::{Handler, HandlerContext, HandlerFuture};
pub use queue::Charge;
pub use shutdown::{Shutdown, ShutdownTrigger};

/// Software name reported in `welcome` and `warden.version`.
pub const SERVER_NAME: &str = concat!("wardend/", env!("CARGO_PKG_VERSION"));
