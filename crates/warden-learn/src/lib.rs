//! Learning mode: capture the access denials (`EACCES`/`EPERM`) of a
//! process tree a caller owns, and turn them into a sandbox profile.
//!
//! - [`event`]: what a capture reports, in the JSON form clients see.
//! - [`report`]: a capture summarised for people (and `--json`).
//! - [`profile`]: a Landlock ruleset and systemd sandboxing directives
//!   suggested from a capture, and the ruleset's application.
//! - `capture` (feature `capture`): the eBPF programs and per-session ring
//!   buffers.
//! - `service` (feature `capture`): the broker's `learn.*` methods, with
//!   the ownership checks.
//!
//! See docs/learning-mode.md for how it works and what it cannot see.
#![forbid(unsafe_code)]

pub mod event;
pub mod profile;
pub mod report;
mod syscalls;

#[cfg(feature = "capture")]
pub mod capture;
#[cfg(feature = "capture")]
pub mod service;

pub use event::{Access, Denial, Event, EVENTS_TOPIC};
pub use syscalls::syscall_name;
