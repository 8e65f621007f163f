//! Socket activation: the listening socket passed by the service manager
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`; see `sd_listen_fds(3)`).
//!
//! The descriptor is checked before it is used: it must be a Unix stream
//! socket that is listening. Anything else (a file, a datagram socket, a
//! socket that is not listening) is refused with an error that says what
//! was found, so a unit misconfiguration is caught at start, not on the
//! first client.
// Adopting the inherited descriptor (fd 3) as an owned socket needs unsafe (allowed crate-wide in lib.rs).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};
use nix::sys::stat::{fstat, SFlag};

/// `SD_LISTEN_FDS_START`: the first passed descriptor.
const LISTEN_FDS_START: RawFd = 3;

/// A listening socket received from the service manager.
#[derive(Debug)]
pub struct InheritedListener {
    /// The listener (close-on-exec, non-blocking).
    pub listener: UnixListener,
    /// Its name from `LISTEN_FDNAMES`, if given.
    pub name: Option<String>,
    /// The path it is bound to, if it has one.
    pub path: Option<PathBuf>,
}

/// Why the passed descriptor cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// An environment variable is malformed.
    #[error("{var}={value:?} is not a valid number")]
    BadVariable {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// More than one descriptor was passed.
    #[error("the service manager passed {count} descriptors (LISTEN_FDS); wardend takes exactly one listening socket: give the socket unit one ListenStream=")]
    TooMany {
        /// How many.
        count: usize,
    },
    /// The descriptor is not what it must be.
    #[error("the descriptor passed by the service manager (fd {fd}) is {found}, not a listening Unix stream socket; check the socket unit's ListenStream=")]
    WrongKind {
        /// The descriptor.
        fd: RawFd,
        /// What it is.
        found: String,
    },
    /// A check failed.
    #[error("cannot check the descriptor passed by the service manager (fd {fd})")]
    Io {
        /// The descriptor.
        fd: RawFd,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Ensures the passed descriptor is adopted at most once per process.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Returns the listening socket the service manager passed, if it passed
/// one to this process (`LISTEN_PID` is our pid). Removes the `LISTEN_*`
/// variables so children do not inherit them. Call it before starting
/// threads (it changes the environment).
///
/// # Errors
/// [`ActivationError`] if the variables are malformed, more than one
/// descriptor was passed, or the descriptor is not a listening Unix stream
/// socket.
pub fn inherited_listener() -> Result<Option<InheritedListener>, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadVariable {
            var: "LISTEN_PID",
            value: pid.clone(),
        })?;
    if pid != std::process::id() {
        // Meant for another process (e.g. our parent): not ours to take.
        return Ok(None);
    }
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadVariable {
            var: "LISTEN_FDS",
            value: fds.clone(),
        })?;
    match count {
        0 => return Ok(None),
        1 => {}
        n => return Err(ActivationError::TooMany { count: n }),
    }
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    let fd = LISTEN_FDS_START;
    // SAFETY: fd 3 is open (LISTEN_FDS=1 for this very pid, per the
    // sd_listen_fds protocol), nothing in this process has claimed it (the
    // protocol hands it to exactly one consumer, `TAKEN` makes this the only
    // adoption, and the variables are now unset), so taking ownership of it
    // once is sound; if it is not what we need it is closed on drop.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    check_listening_unix_stream(owned.as_fd(), fd)?;
    let io_err = |source: io::Error| ActivationError::Io { fd, source };
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| io_err(e.into()))?;
    let path = getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&owned))
        .ok()
        .and_then(|a| a.as_unix_addr().and_then(|u| u.path()).map(PathBuf::from));
    let listener = UnixListener::from(owned);
    listener.set_nonblocking(true).map_err(io_err)?;
    let name = names
        .and_then(|n| n.split(':').next().map(str::to_owned))
        .filter(|n| !n.is_empty());
    Ok(Some(InheritedListener {
        listener,
        name,
        path,
    }))
}

fn check_listening_unix_stream(fd: BorrowedFd<'_>, raw: RawFd) -> Result<(), ActivationError> {
    let wrong = |found: String| ActivationError::WrongKind { fd: raw, found };
    let io_err = |e: nix::Error| ActivationError::Io {
        fd: raw,
        source: e.into(),
    };
    let st = fstat(fd).map_err(io_err)?;
    let fmt = st.st_mode & SFlag::S_IFMT.bits();
    if fmt != SFlag::S_IFSOCK.bits() {
        let what = match SFlag::from_bits_truncate(fmt) {
            SFlag::S_IFREG => "a regular file",
            SFlag::S_IFDIR => "a directory",
            SFlag::S_IFIFO => "a pipe",
            SFlag::S_IFCHR => "a character device",
            _ => "not a socket",
        };
        return Err(wrong(what.into()));
    }
    let family = getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .map_err(io_err)?
        .family();
    if family != Some(AddressFamily::Unix) {
        return Err(wrong(format!("a socket of family {family:?}")));
    }
    let ty = getsockopt(&fd, sockopt::SockType).map_err(io_err)?;
    if ty != SockType::Stream {
        return Err(wrong(format!("a Unix {ty:?} socket")));
    }
    if !getsockopt(&fd, sockopt::AcceptConn).map_err(io_err)? {
        return Err(wrong("a Unix stream socket that is not listening".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_listening_unix_stream_sockets() -> Result<(), Box<dyn std::error::Error>> {
        let name = format!("warden-sys-act-{}", std::process::id());
        let addr = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name.as_bytes())?;
        let l = UnixListener::bind_addr(&addr)?;
        assert!(check_listening_unix_stream(l.as_fd(), 0).is_ok());
        let (a, _b) = std::os::unix::net::UnixStream::pair()?;
        let e = check_listening_unix_stream(a.as_fd(), 0)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().unwrap_or("").contains("not listening"),
            "{e:?}"
        );
        let d = std::os::unix::net::UnixDatagram::unbound()?;
        let e = check_listening_unix_stream(d.as_fd(), 0)
            .err()
            .map(|e| e.to_string());
        assert!(e.as_deref().unwrap_or("").contains("Datagram"), "{e:?}");
        let f = std::fs::File::open("/dev/null")?;
        let e = check_listening_unix_stream(f.as_fd(), 0)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().unwrap_or("").contains("character device"),
            "{e:?}"
        );
        Ok(())
    }
}
