//! Child hosts: the processes the broker starts, watches and restarts.
//!
//! The broker's job here is the one svchost's SCM and systemd do for their
//! services, for processes that must not outlive it:
//!
//! - [`Spawner`]: every child is forked from **one long-lived thread**.
//!   `PR_SET_PDEATHSIG` fires when the thread that forked a child exits,
//!   and tokio's blocking threads come and go; a thread that lives as long
//!   as the supervisor makes the parent-death signal mean "the broker
//!   died". The OS steps are [`warden_sys::spawn_child`]'s.
//! - [`supervise`]: one task per host watches its child through a pidfd
//!   (never a pid that could be reused), restarts it after an exit with
//!   exponential backoff and jitter ([`Backoff`]), marks it `failed` after
//!   too many crashes in a window, and stops it (SIGTERM, then SIGKILL
//!   after the grace period).
//! - [`Reaper`]: the parent-death signal reaches only direct children,
//!   and after a SIGKILL of the broker nobody is left to write
//!   `cgroup.kill`. A small process started at boot holds the read end of
//!   a pipe from the broker; when it reads EOF (the broker is gone, however
//!   it died) it kills the hosts' cgroup, grandchildren included.
//! - [`forward_stderr`]: a host's stderr, line by line, into the broker's
//!   log with the host's name and pid, control characters escaped (a
//!   host must not be able to write escape sequences on an admin's
//!   terminal).

mod backoff;
mod reaper;
mod spawner;
mod supervise;

pub use backoff::{Backoff, RestartPolicy, Verdict};
pub use reaper::{reaper_main, Reaper};
pub use spawner::Spawner;
pub use supervise::{
    forward_stderr, supervise, HostCommand, HostCommander, HostHandle, HostState, HostStatus,
    Launch,
};
