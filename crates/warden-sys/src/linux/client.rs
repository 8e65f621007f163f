//! The client's side: connect, then check who is listening before sending
//! anything.
//!
//! A client may be pointed at a path any user could have created (an
//! abstract name, a path under `/tmp`, a socket in that user's own home
//! or `/run/user/UID`, named in a shared script's `WARDEN_SOCKET`) or at a
//! broker that died and whose name someone else took. `SO_PEERCRED` on the
//! connected socket names the uid that created the listening socket; the
//! client refuses any uid it has no reason to trust.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::Path;

use crate::linux::identity::server_uid;
use crate::linux::login_defs::SystemAccounts;

/// Which server uids a client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerTrust {
    /// Root, the client's own uid, and the owner of the socket's directory
    /// when that owner is a **system account** and every ancestor of the
    /// directory is owned by root and not writable by others: only root
    /// could have handed that directory to a service account, as with the
    /// `warden` user's `/run/warden`. A system account is a uid up to
    /// `SYS_UID_MAX` in `/etc/login.defs` (else `UID_MIN − 1`, else 999),
    /// never 65534 (`nobody`); see [`crate::SystemAccounts`]. An ordinary
    /// user's directory (`/home/USER`, `/run/user/UID`) is root-controlled
    /// too, but its owner is not trusted: anyone may listen in their own
    /// directory. For an abstract name: root and the client's own uid only.
    Default,
    /// Exactly this uid.
    Pin(u32),
}

/// Why the client refused the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerCheckError {
    /// The server runs as a uid the client does not trust.
    #[error("the server at {path} runs as uid {found}, which is not trusted (trusted: {trusted}); if this is expected, pin it with --server-uid {found}")]
    Untrusted {
        /// The socket.
        path: String,
        /// The server's uid.
        found: u32,
        /// The uids that would have been accepted.
        trusted: String,
    },
    /// The server's credentials could not be read.
    #[error("cannot read the credentials of the server at {path}")]
    Credentials {
        /// The socket.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Connects to `path`, or to the abstract name after `@`. The socket is
/// blocking and close-on-exec.
///
/// # Errors
/// The `connect` error.
pub fn connect_unix(path: &str) -> io::Result<UnixStream> {
    match path.strip_prefix('@') {
        Some(name) => UnixStream::connect_addr(&SocketAddr::from_abstract_name(name.as_bytes())?),
        None => UnixStream::connect(path),
    }
}

/// Connects to `path`, or to the abstract name after `@`, without
/// waiting: the socket is non-blocking and close-on-exec. A Unix stream
/// connect completes at once or fails; when the listener's queue of
/// connections it has not accepted yet is full, it fails with `EAGAIN`
/// (see [`is_listen_queue_full`]) where a blocking one would wait.
///
/// # Errors
/// The `socket` or `connect` error.
pub fn connect_unix_nonblocking(path: &str) -> io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = match path.strip_prefix('@') {
        Some(name) => UnixAddr::new_abstract(name.as_bytes()),
        None => UnixAddr::new(path),
    }
    .map_err(io::Error::from)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(io::Error::from)?;
    // Never sleeps (non-blocking), so never EINTR.
    connect(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    Ok(UnixStream::from(fd))
}

/// True for the error [`connect_unix_nonblocking`] returns when the
/// listener's queue is full (`EAGAIN`): the server is not accepting
/// connections as fast as they come, or not at all.
pub fn is_listen_queue_full(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAGAIN)
}

/// The owner of `dir` if `dir` and each of its ancestors is owned by root
/// (the directory itself may be owned by anyone) and none of the ancestors
/// is writable by others; symlinks anywhere disqualify.
fn root_controlled_dir_owner(dir: &Path) -> Option<u32> {
    let meta = std::fs::symlink_metadata(dir).ok()?;
    if !meta.is_dir() {
        return None;
    }
    let mut cur = dir.parent();
    while let Some(p) = cur {
        let m = std::fs::symlink_metadata(if p.as_os_str().is_empty() {
            Path::new("/")
        } else {
            p
        })
        .ok()?;
        if !m.is_dir() || m.uid() != 0 || m.mode() & 0o002 != 0 {
            return None;
        }
        cur = p.parent();
    }
    if !dir.is_absolute() {
        return None;
    }
    Some(meta.uid())
}

/// Checks the uid of the server at the other end of `stream`.
///
/// # Errors
/// [`ServerCheckError::Untrusted`] if the uid is not accepted by `trust`;
/// nothing must be sent to the server then.
pub fn verify_server(
    stream: BorrowedFd<'_>,
    socket_path: &str,
    trust: ServerTrust,
) -> Result<u32, ServerCheckError> {
    let found = server_uid(stream.as_fd()).map_err(|source| ServerCheckError::Credentials {
        path: socket_path.to_owned(),
        source,
    })?;
    let trusted: Vec<u32> = match trust {
        ServerTrust::Pin(uid) => vec![uid],
        ServerTrust::Default => {
            let mut v = vec![0, nix::unistd::geteuid().as_raw()];
            if !socket_path.starts_with('@') {
                // Rule 3: a system account's root-controlled directory.
                if let Some(owner) = Path::new(socket_path)
                    .parent()
                    .and_then(root_controlled_dir_owner)
                    .filter(|&owner| SystemAccounts::load().contains(owner))
                {
                    v.push(owner);
                }
            }
            v.sort_unstable();
            v.dedup();
            v
        }
    };
    if trusted.contains(&found) {
        return Ok(found);
    }
    Err(ServerCheckError::Untrusted {
        path: socket_path.to_owned(),
        found,
        trusted: trusted
            .iter()
            .map(|u| format!("uid {u}"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn own_uid_is_trusted_and_a_pin_to_another_is_not() -> Result<(), Box<dyn std::error::Error>> {
        let name = format!("@warden-sys-test-{}", std::process::id());
        let _l = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name.as_bytes()[1..])?)?;
        let s = connect_unix(&name)?;
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(verify_server(s.as_fd(), &name, ServerTrust::Default)?, me);
        assert_eq!(verify_server(s.as_fd(), &name, ServerTrust::Pin(me))?, me);
        let e = verify_server(s.as_fd(), &name, ServerTrust::Pin(me + 1));
        assert!(matches!(e, Err(ServerCheckError::Untrusted { found, .. }) if found == me));
        Ok(())
    }

    #[test]
    fn root_controlled_dirs() {
        assert_eq!(root_controlled_dir_owner(Path::new("/")), Some(0));
        assert_eq!(root_controlled_dir_owner(Path::new("/etc")), Some(0));
        // /tmp itself is root's, but anything under it has a
        // world-writable ancestor.
        assert_eq!(root_controlled_dir_owner(Path::new("/tmp/x")), None);
    }
}
