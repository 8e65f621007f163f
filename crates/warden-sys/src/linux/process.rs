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

/// Makes this process non-dumpable (`PR_SET_DUMPABLE 0`): the account it
/// runs as can no longer ptrace it or read its memory through /proc, so
/// it cannot borrow the connection a child host holds to the broker.
///
/// # Errors
/// The `prctl` error.
pub fn make_non_dumpable() -> io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(io::Error::from)
}

/// True if this process is dumpable (`PR_GET_DUMPABLE`).
///
/// # Errors
/// The `prctl` error.
pub fn is_dumpable() -> io::Result<bool> {
    nix::sys::prctl::get_dumpable().map_err(io::Error::from)
}

/// Takes the socket a child host inherited as its stdin (its channel to
/// the broker): moves it to a new close-on-exec descriptor, so a module's
/// children do not inherit it, and puts `/dev/null` on fd 0.
///
/// # Errors
/// fd 0 is not a socket, or a descriptor operation failed.
pub fn take_stdin_socket() -> io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    // SAFETY: fd 0 is open for the whole process lifetime (it is only
    // replaced below, after this borrow ends).
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    let st = nix::sys::stat::fstat(stdin).map_err(io::Error::from)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "stdin is not a socket: warden-host is started by wardend, with its channel on stdin",
        ));
    }
    let moved = nix::fcntl::fcntl(stdin, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map_err(io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC just returned `moved` as a new descriptor
    // that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(moved) };
    let null = std::fs::File::open("/dev/null")
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/null for stdin: {e}")))?;
    nix::unistd::dup2_stdin(&null).map_err(io::Error::from)?;
    Ok(std::os::unix::net::UnixStream::from(socket))
}

/// A pipe with both ends close-on-exec: (read, write).
///
/// # Errors
/// The `pipe2` error.
pub fn pipe_cloexec() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Gives the C allocator's free memory back to the kernel: glibc's
/// `malloc_trim(0)`, which walks every arena and returns free pages from
/// the middle of the heaps too. After a burst of connections closes, the
/// heap keeps its high-water mark otherwise (the memory is free, not
/// leaked, but stays resident). True if memory was released; without
/// glibc, does nothing.
pub fn release_free_heap() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes no pointers; it only walks glibc's own
        // arenas, each under its own lock, and may be called from any
        // thread at any time.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// The heap size above which glibc gives free memory at the top back to the
/// kernel, and the allocation size from which it maps memory of its own:
/// both 128 KiB, glibc's starting values.
pub const HEAP_RELEASE_THRESHOLD: usize = 128 * 1024;

/// Keeps glibc's trim and mmap thresholds at [`HEAP_RELEASE_THRESHOLD`].
/// By default glibc raises both after a large block is freed (up to 32 MiB
/// on 64-bit), so after thousands of connections close their buffers stay
/// resident and later tables come from the heap instead of their own maps;
/// a long-running broker whose load comes in bursts wants its memory back.
/// Setting the values turns the adjustment off. Call once at start, before
/// threads. True if glibc took both; without glibc, does nothing.
pub fn fix_heap_thresholds() -> bool {
    #[cfg(target_env = "gnu")]
    {
        let value = HEAP_RELEASE_THRESHOLD as libc::c_int;
        // SAFETY: mallopt takes two integers and only changes glibc's own
        // allocator parameters, under the main arena's lock.
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, value) };
        // SAFETY: as above.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, value) };
        trim == 1 && mmap == 1
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// True for `EMFILE` (process out of descriptors) and `ENFILE` (system out
/// of descriptors): the accept loop backs off on these instead of spinning.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Opens a descriptor to hold in reserve: `/dev/null`, read-only and
/// close-on-exec. A process that runs out of descriptors closes it to get
/// one back for a moment (the broker, to accept a connection and tell its
/// client why it is refused), then opens it again.
///
/// # Errors
/// The `open` error (`EMFILE`/`ENFILE` while descriptors are still short:
/// see [`is_fd_exhaustion`]).
pub fn open_reserve_fd() -> io::Result<std::os::fd::OwnedFd> {
    // std opens with O_CLOEXEC.
    std::fs::File::open("/dev/null").map(std::os::fd::OwnedFd::from)
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

/// The `comm` of the process `pidfd` refers to (whose pid is `pid`), for
/// display: read from `/proc/PID/comm`, then kept only if the pidfd's
/// process is still alive afterwards. A live process keeps its pid, so the
/// name read belongs to it and not to a later process that reused the pid.
/// `None` when that cannot be confirmed (the process exited, or there is
/// no pidfd). The name is chosen by the process itself (`PR_SET_NAME`):
/// escape it before printing it on a terminal.
pub fn process_comm_confirmed(
    pid: u32,
    pidfd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Option<String> {
    let pidfd = pidfd?;
    let comm = process_comm(pid)?;
    match pidfd_exited(pidfd) {
        Ok(false) => Some(comm),
        Ok(true) | Err(_) => None,
    }
}

/// True once the process `pidfd` refers to has exited (`poll(2)`: a pidfd
/// becomes readable then). Unlike a signal-0 probe this needs no
/// permission over the process.
///
/// # Errors
/// The `poll` error.
pub fn pidfd_exited(pidfd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::ZERO).map_err(io::Error::from)?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_confirmed_only_while_the_process_lives() -> io::Result<()> {
        use std::os::fd::AsFd;
        let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
        let pidfd = crate::linux::target::pidfd_open(child.id())?;
        // Until it has exec'd, the child still has this thread's name.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_comm(child.id()).as_deref() != Some("sleep") {
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            process_comm_confirmed(child.id(), Some(pidfd.as_fd())).as_deref(),
            Some("sleep")
        );
        assert_eq!(process_comm_confirmed(child.id(), None), None);
        child.kill()?;
        // Exited but not reaped: /proc still has the name, the pidfd says
        // the process is gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pidfd_exited(pidfd.as_fd())? {
            assert!(std::time::Instant::now() < deadline, "never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            process_comm_confirmed(child.id(), Some(pidfd.as_fd())),
            None
        );
        child.wait()?;
        Ok(())
    }

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
