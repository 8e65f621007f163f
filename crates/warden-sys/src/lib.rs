//! Warden's OS boundary.
//!
//! Every system call Warden makes goes through this crate, behind small
//! functions with neutral types ([`PeerIdentity`], [`EndpointSpec`],
//! [`ServerTrust`]), so no `#[cfg]` reaches the other crates' signatures and
//! a Windows backend (see `docs/windows.md`) can supply the same functions.
//! It is the only crate with `unsafe`; each block says why it is sound.
//!
//! # Attacker model
//! Any local user may race the broker on the file system (pre-create the
//! socket path, plant symlinks, swap directories in world-writable places),
//! connect and disconnect at will, send file descriptors, and exit so that
//! its pid is reused. The functions here never follow a symlink on the
//! socket path or below a [`Dir`], never remove what they did not verify as
//! the broker's own, and capture a caller's identity once, from the kernel,
//! failing closed.
#![cfg_attr(not(target_os = "linux"), allow(unused))]

#[cfg(target_os = "linux")]
mod linux;

#[cfg(target_os = "linux")]
pub use linux::activation::{inherited_listener, ActivationError, InheritedListener};
#[cfg(target_os = "linux")]
pub use linux::client::{connect_unix, verify_server, ServerCheckError, ServerTrust};
#[cfg(target_os = "linux")]
pub use linux::endpoint::{bind_secure, BoundEndpoint, EndpointError, EndpointSpec};
#[cfg(target_os = "linux")]
pub use linux::fds::recv_reject_fds;
#[cfg(target_os = "linux")]
pub use linux::fs_at::{
    Dir, FileKind, Meta, OpenDirError, ReadFileError, RemoveDirOutcome, RemoveError, StatError,
    WalkStep, WriteFileError, TEMP_NAME_ATTEMPTS,
};
#[cfg(target_os = "linux")]
pub use linux::identity::{peer_identity, server_uid, PeerIdentity, PeerIdentityError};
#[cfg(target_os = "linux")]
pub use linux::login_defs::{SystemAccounts, DEFAULT_SYS_UID_MAX, LOGIN_DEFS, NOBODY_UID};
#[cfg(target_os = "linux")]
pub use linux::process::{
    effective_gid, effective_uid, is_fd_exhaustion, pidfd_exited, process_comm,
    process_comm_confirmed, raise_nofile_limit,
};
#[cfg(target_os = "linux")]
pub use linux::target::{
    confirm_same_process, pid_namespace_inode, pid_ns_levels, pidfd_alive, pidfd_open,
    process_facts, wait_for_gate, ProcessFacts,
};
#[cfg(target_os = "linux")]
pub use linux::users::{
    group_by_name, group_name, groups_of_user, user_by_name, user_by_uid, UserInfo,
};
