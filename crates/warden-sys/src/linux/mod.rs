//! The Linux backend.
#![cfg(target_os = "linux")]

pub(crate) mod activation;
pub(crate) mod client;
pub(crate) mod endpoint;
pub(crate) mod env;
pub(crate) mod fds;
pub(crate) mod fs_at;
pub(crate) mod identity;
pub(crate) mod login_defs;
pub(crate) mod process;
pub(crate) mod sandbox;
pub(crate) mod spawn;
pub(crate) mod target;
pub(crate) mod trusted;
pub(crate) mod users;
