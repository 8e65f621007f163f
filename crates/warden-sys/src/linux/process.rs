//! Process-wide facts and limits.

use std::io;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, so the broker can
/// hold as many connections as the system lets it. Returns (old, new).
///
/// # Errors
/// The `getrlimit`/`setrlimit` error.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok((soft, hard.max(soft)))
}

/// True for `EMFILE` (process out of descriptors) and `ENFILE` (system out
/// of descriptors): the accept loop backs off on these instead of spinning.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The effective gid of this process.
pub fn effective_gid() -> u32 {
    nix::unistd::getegid().as_raw()
}

/// The `comm` (short command name) of a process, for logs. Best effort:
/// the process may be gone, or the name changed since; never use it for a
/// security decision.
pub fn process_comm(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_soft_reaches_hard() -> io::Result<()> {
        let (_, new) = raise_nofile_limit()?;
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
        assert_eq!(soft, hard);
        assert_eq!(new, soft);
        Ok(())
    }

    #[test]
    fn fd_exhaustion_errors() {
        assert!(is_fd_exhaustion(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_fd_exhaustion(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_fd_exhaustion(&io::Error::from_raw_os_error(
            libc::EAGAIN
        )));
    }

    #[test]
    fn comm_of_self() {
        assert!(process_comm(std::process::id()).is_some());
        assert_eq!(process_comm(0), None);
    }
}
