//! Peer identity from the kernel: `SO_PEERCRED`, `SO_PEERGROUPS`,
//! `SO_PEERPIDFD`.
//!
//! Captured once per connection at accept. The kernel records the
//! credentials when the peer calls `connect`, so a peer cannot change them
//! later; the pidfd pins the peer process, so a recycled pid can never be
//! mistaken for the caller. If any part cannot be read, the caller gets an
//! error and the connection must be refused (fail closed).
// The one getsockopt call nix does not wrap (SO_PEERGROUPS) needs unsafe (allowed crate-wide in lib.rs).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use crate::linux::target::pidfd_open;
use nix::sys::socket::{getsockopt, sockopt};

/// The identity of the process at the other end of a Unix socket, as the
/// kernel recorded it when that process connected.
#[derive(Debug)]
pub struct PeerIdentity {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary gids.
    pub groups: Vec<u32>,
    /// Pid (0 if the peer is in a pid namespace the broker cannot see).
    pub pid: u32,
    /// A pidfd for the peer process, immune to pid reuse (`None` only when
    /// the pid is 0).
    pub pidfd: Option<OwnedFd>,
}

/// Why a peer's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    /// `SO_PEERCRED` failed.
    #[error("cannot read the peer's credentials (SO_PEERCRED)")]
    Credentials(#[source] io::Error),
    /// `SO_PEERGROUPS` failed.
    #[error("cannot read the peer's groups (SO_PEERGROUPS)")]
    Groups(#[source] io::Error),
    /// Neither `SO_PEERPIDFD` nor `pidfd_open` gave a pidfd.
    #[error("cannot pin the peer process {pid} with a pidfd")]
    Pidfd {
        /// The peer's pid.
        pid: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The peer exited, or its pid changed, while its identity was read.
    #[error("the peer process {pid} went away while its identity was read")]
    Raced {
        /// The pid first seen.
        pid: u32,
    },
}

impl PeerIdentityError {
    /// True if the process (or system) ran out of file descriptors while
    /// reading the identity (the pidfd could not be allocated).
    pub fn is_fd_exhaustion(&self) -> bool {
        match self {
            PeerIdentityError::Pidfd { source, .. }
            | PeerIdentityError::Credentials(source)
            | PeerIdentityError::Groups(source) => crate::linux::process::is_fd_exhaustion(source),
            PeerIdentityError::Raced { .. } => false,
        }
    }
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Reads the peer's uid, gid, groups, pid and a pidfd.
///
/// Headline: `getsockopt(SO_PEERCRED)`, `getsockopt(SO_PEERGROUPS)`,
/// `getsockopt(SO_PEERPIDFD)` (Linux 6.5+), falling back to
/// [`pidfd_open(2)`](https://man7.org/linux/man-pages/man2/pidfd_open.2.html)
/// and a second `SO_PEERCRED` to check the pid still names the peer.
///
/// # Errors
/// [`PeerIdentityError`] if any part cannot be read; the caller must then
/// refuse the connection.
pub fn peer_identity(fd: BorrowedFd<'_>) -> Result<PeerIdentity, PeerIdentityError> {
    let cred = getsockopt(&fd, sockopt::PeerCredentials)
        .map_err(|e| PeerIdentityError::Credentials(io_err(e)))?;
    let pid = u32::try_from(cred.pid()).unwrap_or(0);
    let groups = peer_groups(fd).map_err(PeerIdentityError::Groups)?;
    let pidfd = if pid == 0 {
        None
    } else {
        match getsockopt(&fd, sockopt::PeerPidfd) {
            Ok(pidfd) => Some(pidfd),
            Err(Errno::ENOPROTOOPT | Errno::EINVAL) => {
                // Older kernel: open a pidfd by pid, then make sure the pid
                // still belongs to the peer (it cannot have been reused if
                // the socket's recorded pid is unchanged and the pidfd's
                // process is alive).
                let pidfd = pidfd_open(pid).map_err(|source| match source.raw_os_error() {
                    Some(libc::ESRCH) => PeerIdentityError::Raced { pid },
                    _ => PeerIdentityError::Pidfd { pid, source },
                })?;
                let again = getsockopt(&fd, sockopt::PeerCredentials)
                    .map_err(|e| PeerIdentityError::Credentials(io_err(e)))?;
                if again.pid() != cred.pid() {
                    return Err(PeerIdentityError::Raced { pid });
                }
                Some(pidfd)
            }
            Err(Errno::ESRCH) => return Err(PeerIdentityError::Raced { pid }),
            Err(e) => {
                return Err(PeerIdentityError::Pidfd {
                    pid,
                    source: io_err(e),
                })
            }
        }
    };
    Ok(PeerIdentity {
        uid: cred.uid(),
        gid: cred.gid(),
        groups,
        pid,
        pidfd,
    })
}

/// `getsockopt(SO_PEERGROUPS)`, growing the buffer on `ERANGE`.
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| io::Error::other("too many groups"))?;
        // SAFETY: `groups` is a live buffer of `len` bytes that the kernel
        // writes gids into; `len` is updated to the bytes written (or
        // needed, on ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() && needed <= 65536 {
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

/// The uid of the process that created the listening socket a connected
/// client socket is connected to.
///
/// # Errors
/// The `getsockopt` error.
pub fn server_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    getsockopt(&fd, sockopt::PeerCredentials)
        .map(|c| c.uid())
        .map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn identity_of_a_socketpair_peer_is_our_own() -> Result<(), Box<dyn std::error::Error>> {
        let (a, _b) = std::os::unix::net::UnixStream::pair()?;
        let id = peer_identity(a.as_fd())?;
        assert_eq!(id.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(id.gid, nix::unistd::getegid().as_raw());
        assert_eq!(id.pid, std::process::id());
        assert!(id.pidfd.is_some());
        let mut mine: Vec<u32> = nix::unistd::getgroups()?
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut theirs = id.groups.clone();
        mine.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, mine);
        assert_eq!(server_uid(a.as_fd())?, id.uid);
        Ok(())
    }
}
