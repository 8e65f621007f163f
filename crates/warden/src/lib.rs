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
//! Layers point one way, from the socket down to the shared state:
//! - [`broker`]: the builder, the accept loop, shutdown and drain.
//! - `transport`: a connection's task (frame reading, hello, limits at
//!   connect) and its `wire` (the writer, its queues, vectored writes).
//!   The only layer that touches sockets.
//! - semantics: `router` (what a request means: authorization, built-ins,
//!   handlers, routing), `builtins`, `invite_methods` (the
//!   `warden.invite.*` built-ins), `pubsub`, over a narrow view of the
//!   caller (`view`); they return what to send and never await.
//! - [`audit`]: the audit log's records and their rate limit.
//! - `handler` ([`Handler`], [`HandlerContext`]) and `local`
//!   ([`BrokerHandle`], the in-process call API).
//! - `calls`: routed calls (forward, the one answer, withdraw, deadlines),
//!   shared by connection callers and in-process callers; `monitor`.
//! - `registry`: the one owner of providers, topics, monitors, pending
//!   calls and statistics, and of their invariants.
//! - leaves: `peer` (a connection as others see it, reaching its socket
//!   through the `Outbox` trait the transport implements), `channel`,
//!   `queue` (byte accounting), `stats`, `shutdown`, `session_lookup`
//!   ([`SessionLookup`], which login session a caller is in, supplied by
//!   the embedding program), `invitations` (the invitation table, the
//!   grants connections hold, the throttle of failed joins).

pub mod audit;
pub mod broker;
mod builtins;
mod calls;
mod channel;
mod handler;
mod invitations;
mod invite_methods;
mod local;
mod monitor;
mod peer;
mod pubsub;
mod queue;
mod registry;
mod router;
mod session_lookup;
mod shutdown;
mod stats;
mod transport;
mod view;

pub use broker::{AdoptError, Broker, BrokerBuilder, BrokerError, ServeError, TEST_PANIC_METHOD};
pub use builtins::Reloader;
pub use channel::{CallerChannel, Pushed};
pub use handler::{Handler, HandlerContext, HandlerFuture};
pub use local::{BrokerHandle, CallOptions};
pub use queue::Charge;
pub use session_lookup::SessionLookup;
pub use shutdown::{Shutdown, ShutdownTrigger};

/// Software name reported in `welcome` and `warden.version`.
pub const SERVER_NAME: &str = concat!("wardend/", env!("CARGO_PKG_VERSION"));
