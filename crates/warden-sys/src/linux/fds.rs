//! Receiving bytes while refusing file descriptors.
//!
//! A peer can attach descriptors to any byte it sends (`SCM_RIGHTS`). A
//! plain `read` makes the kernel discard them, but silently; reading with
//! `recvmsg` and a control buffer lets the broker see that it happened,
//! close every descriptor at once, and answer the frame with
//! `bad_request`, so a peer can neither smuggle descriptors nor fill the
//! broker's descriptor table.

// Adopting the descriptors the kernel hands over needs unsafe (allowed crate-wide in lib.rs).

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Descriptors one control buffer has room for; more are truncated by the
/// kernel (and closed by it), which is reported like any other.
const MAX_FDS_SEEN: usize = 64;

/// Reads from a stream socket. Returns the number of bytes and whether any
/// file descriptors (or credentials-less truncated control data) came with
/// them. Received descriptors are closed before this returns.
///
/// # Errors
/// The `recvmsg` error (`WouldBlock` on a non-blocking socket with no data).
pub fn recv_reject_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS_SEEN]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut got_fds = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let bytes = msg.bytes;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = c {
                got_fds = true;
                for raw in fds {
                    // SAFETY: the kernel installed `raw` in our table for
                    // this message; nothing else refers to it. Wrapping it
                    // in OwnedFd and dropping it closes it exactly once.
                    drop(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
    }
    Ok((bytes, got_fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::{IoSlice, Write};
    use std::os::fd::AsFd;

    /// Descriptors of this process that point at `path` (other tests run
    /// in parallel threads, so count only those).
    fn fds_on(path: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.flatten()
                    .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == path))
                    .count()
            })
            .unwrap_or(0)
    }

    #[test]
    fn plain_bytes_pass() -> io::Result<()> {
        let (mut a, b) = std::os::unix::net::UnixStream::pair()?;
        a.write_all(b"hello")?;
        let mut buf = [0u8; 16];
        let (n, fds) = recv_reject_fds(b.as_fd(), &mut buf)?;
        assert_eq!((&buf[..n], fds), (&b"hello"[..], false));
        Ok(())
    }

    #[test]
    fn descriptors_are_detected_and_closed() -> Result<(), Box<dyn std::error::Error>> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        let path = std::env::temp_dir().join(format!("warden-sys-fds-{}", std::process::id()));
        std::fs::write(&path, "x")?;
        let f = std::fs::File::open(&path)?;
        assert_eq!(fds_on(&path), 1);
        let raw = [f.as_raw_fd(), f.as_raw_fd()];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(b"x")],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )?;
        let mut buf = [0u8; 16];
        let (n, fds) = recv_reject_fds(b.as_fd(), &mut buf)?;
        assert_eq!((n, fds), (1, true));
        assert_eq!(fds_on(&path), 1, "received descriptors must be closed");
        drop(f);
        std::fs::remove_file(&path)?;
        Ok(())
    }
}
