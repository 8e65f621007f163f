//! Warden's OS boundary.
//!
//! Every system call Warden makes goes through this crate, behind small
//! functions with neutral types ([`PeerIdentity`], [`EndpointSpec`],
//! [`ServerTrust`]), so no `#[cfg]` reaches the other crates' signatures and
//! a Windows backend (see `docs/windows.md`) can supply the same functions.
//! It is the only crate with `unsafe`; each block says why it is sound.
//!
//! # Platforms
//! The backend is chosen once, below: `#[cfg(target_os = "linux")] mod
//! linux;` and `use linux as imp;`, and every public item is a plain
//! re-export from `imp`. Adding Windows is one more choice of the same form
//! (`#[cfg(windows)] mod windows; #[cfg(windows)] use windows as imp;`) and a
//! `windows` module with the same items; no re-export changes. Any other
//! target stops at a `compile_error!` naming the missing backend.
//!
//! # Unsafe code
//! The workspace denies `unsafe_code`; this crate alone expects it (crate
//! attribute below). The modules that use it are `linux::activation`,
//! `linux::env` (scrubbing a secret from the environment block), `linux::fds`, `linux::identity`, `linux::process` (`malloc_trim`, `mallopt`), `linux::spawn`
//! (the child's steps between fork and exec) and `linux::target`, and every `unsafe`
//! block carries a `SAFETY:` comment (clippy's `undocumented_unsafe_blocks`
//! is denied).
//!
//! # Attacker model
//! Any local user may race the broker on the file system (pre-create the
//! socket path, plant symlinks, swap directories in world-writable places),
//! connect and disconnect at will, send file descriptors, and exit so that
//! its pid is reused. The functions here never follow a symlink on the
//! socket path or below a [`Dir`], never remove what they did not verify as
//! the broker's own, and capture a caller's identity once, from the kernel,
//! failing closed.
#![expect(
    unsafe_code,
    reason = "the one crate that talks to the OS through libc; every unsafe block has a SAFETY comment"
)]
#![cfg_attr(not(target_os = "linux"), allow(unused))]

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as imp;

#[cfg(not(target_os = "linux"))]
compile_error!("warden-sys has no backend for this target (only Linux; see docs/windows.md)");

pub use imp::activation::{inherited_listener, ActivationError, InheritedListener};
pub use imp::client::{
    connect_unix, connect_unix_nonblocking, is_listen_queue_full, verify_server, ServerCheckError,
    ServerTrust,
};
pub use imp::endpoint::{
    bind_secure, open_private_dir, BoundEndpoint, EndpointError, EndpointSpec,
};
pub use imp::env::take_env_scrubbed;
pub use imp::fds::recv_reject_fds;
pub use imp::fs_at::{
    Dir, FileKind, Meta, OpenDirError, ReadFileError, RemoveDirOutcome, RemoveError, StatError,
    WalkStep, WriteFileError, TEMP_NAME_ATTEMPTS,
};
pub use imp::identity::{peer_identity, server_uid, PeerIdentity, PeerIdentityError};
pub use imp::login_defs::{SystemAccounts, DEFAULT_SYS_UID_MAX, LOGIN_DEFS, NOBODY_UID};
pub use imp::process::{
    effective_gid, effective_uid, fix_heap_thresholds, is_dumpable, is_fd_exhaustion,
    make_non_dumpable, open_reserve_fd, pidfd_exited, pipe_cloexec, process_comm,
    process_comm_confirmed, raise_nofile_limit, release_free_heap, take_stdin_socket,
};
pub use imp::sandbox::{
    landlock_ruleset, seccomp_deny_filter, syscall_number, FsAccess, SandboxError, SeccompProgram,
};
pub use imp::spawn::{
    cgroup2_mount, pidfd_signal, spawn_child, AsyncPidfd, ChildCredentials, ChildSpec, SpawnError,
    SpawnedChild,
};
pub use imp::target::{
    confirm_same_process, gate_pipe, open_gate, pid_namespace_inode, pid_ns_levels, pidfd_alive,
    pidfd_open, process_facts, wait_for_gate, ProcessFacts,
};
pub use imp::trusted::{open_trusted_file, sealed_copy, TrustedFileError};
pub use imp::users::{
    group_by_name, group_name, groups_of_user, user_by_name, user_by_uid, UserInfo,
};
