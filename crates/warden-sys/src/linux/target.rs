//! Another process, pinned by a pidfd: who owns it, when it started, and
//! whether it is still the process the pid named.
//!
//! Learning mode traces a process on a caller's behalf. The caller names it
//! by pid, and a pid can be recycled at any moment, so everything here goes
//! through a pidfd opened first: the credentials come from
//! `PIDFD_GET_INFO` (Linux 6.13+), which answers for the pidfd's process
//! or fails with `ESRCH` once it has exited; facts only `/proc` has (start
//! time, capabilities, dumpability) are read by pid and then confirmed by
//! asking the pidfd whether its process is still alive: if it is, the pid
//! still named it while `/proc` was read.

// pidfd_open, PIDFD_GET_INFO and borrowing raw descriptors need unsafe
// (allowed crate-wide in lib.rs).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// A process's credentials and the facts needed to decide whether a caller
/// may trace it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessFacts {
    /// The pid (in the broker's pid namespace).
    pub pid: u32,
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gids: [u32; 4],
    /// Permitted capabilities (a bit mask; 0 for an ordinary process).
    pub cap_permitted: u64,
    /// Effective capabilities.
    pub cap_effective: u64,
    /// Owner of `/proc/PID`: root when the process is not dumpable (it
    /// exec'd something setuid, or asked not to be traced).
    pub proc_owner: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    /// `comm`.
    pub comm: String,
    /// The executable, when readable.
    pub exe: Option<std::path::PathBuf>,
    /// Pid namespace depth: 1 when the process is in the broker's
    /// namespace and no deeper (the `NSpid:` line has one entry).
    pub pid_ns_levels: usize,
}

/// Opens a pidfd for `pid`.
///
/// # Errors
/// `ESRCH` when no such process exists; other OS errors as they come.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let raw = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    if raw <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new file
    // descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing
    // else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// `struct pidfd_info` (include/uapi/linux/pidfd.h), version 0: 64 bytes.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

const PIDFD_INFO_PID: u64 = 1 << 0;
const PIDFD_INFO_CREDS: u64 = 1 << 1;
/// `_IOWR(PIDFS_IOCTL_MAGIC (0xFF), 11, struct pidfd_info)`.
const PIDFD_GET_INFO: u64 = (3 << 30) | ((size_of::<PidfdInfo>() as u64) << 16) | (0xFF << 8) | 11;

/// Credentials straight from the pidfd (`PIDFD_GET_INFO`). `Ok(None)` when
/// the kernel is too old for the ioctl.
fn pidfd_info(pidfd: BorrowedFd<'_>) -> io::Result<Option<PidfdInfo>> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_PID | PIDFD_INFO_CREDS,
        ..PidfdInfo::default()
    };
    // SAFETY: `info` is a live, writable `struct pidfd_info` of the size
    // encoded in the request number; the kernel writes at most that many
    // bytes into it.
    let rc = unsafe {
        libc::ioctl(
            pidfd.as_raw_fd(),
            PIDFD_GET_INFO as libc::Ioctl,
            std::ptr::addr_of_mut!(info),
        )
    };
    if rc == 0 {
        return Ok(Some(info));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOTTY | libc::EINVAL) => Ok(None),
        _ => Err(e),
    }
}

/// True while the pidfd's process has not exited.
///
/// # Errors
/// OS errors other than "exited".
pub fn pidfd_alive(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: pidfd_send_signal with signal 0 and a null info pointer only
    // checks that the process exists and may be signalled; no memory is
    // passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ESRCH) => Ok(false),
        // Alive, just not ours to signal.
        Some(libc::EPERM) => Ok(true),
        _ => Err(e),
    }
}

fn exited() -> io::Error {
    io::Error::from_raw_os_error(libc::ESRCH)
}

/// Reads a process's facts through its pidfd; `pid` must be the pid the
/// pidfd was opened for.
///
/// # Errors
/// `ESRCH` if the process exited (or its pid was recycled) while it was
/// read; other OS errors as they come.
pub fn process_facts(pidfd: BorrowedFd<'_>, pid: u32) -> io::Result<ProcessFacts> {
    let proc_dir = format!("/proc/{pid}");
    let not_found = |e: io::Error| {
        if e.kind() == io::ErrorKind::NotFound {
            exited()
        } else {
            e
        }
    };
    let proc_owner = std::fs::metadata(&proc_dir).map_err(not_found)?.uid();
    let status = std::fs::read_to_string(format!("{proc_dir}/status")).map_err(not_found)?;
    let stat = std::fs::read_to_string(format!("{proc_dir}/stat")).map_err(not_found)?;
    let exe = std::fs::read_link(format!("{proc_dir}/exe")).ok();
    let parsed = parse_status(&status)
        .ok_or_else(|| io::Error::other(format!("{proc_dir}/status has an unexpected format")))?;
    let start_ticks = parse_start_ticks(&stat)
        .ok_or_else(|| io::Error::other(format!("{proc_dir}/stat has an unexpected format")))?;
    // Everything read by pid above belongs to the pidfd's process if that
    // process is still alive now. PIDFD_GET_INFO answers for the pidfd
    // itself and fails with ESRCH once it has exited.
    let (uids, gids) = match pidfd_info(pidfd)? {
        Some(info) => {
            if info.pid != pid {
                return Err(exited());
            }
            (
                [info.ruid, info.euid, info.suid, info.fsuid],
                [info.rgid, info.egid, info.sgid, info.fsgid],
            )
        }
        None => {
            if !pidfd_alive(pidfd)? {
                return Err(exited());
            }
            (parsed.uids, parsed.gids)
        }
    };
    Ok(ProcessFacts {
        pid,
        uids,
        gids,
        cap_permitted: parsed.cap_permitted,
        cap_effective: parsed.cap_effective,
        proc_owner,
        start_ticks,
        comm: parsed.name,
        exe,
        pid_ns_levels: parsed.ns_levels,
    })
}

/// Confirms that the pidfd's process is alive and is still `pid` started
/// at `start_ticks`.
///
/// # Errors
/// `ESRCH` if it is not.
pub fn confirm_same_process(pidfd: BorrowedFd<'_>, pid: u32, start_ticks: u64) -> io::Result<()> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| exited())?;
    if parse_start_ticks(&stat) != Some(start_ticks) || !pidfd_alive(pidfd)? {
        return Err(exited());
    }
    Ok(())
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Status {
    name: String,
    uids: [u32; 4],
    gids: [u32; 4],
    cap_permitted: u64,
    cap_effective: u64,
    ns_levels: usize,
}

fn parse_ids(v: &str) -> Option<[u32; 4]> {
    let mut out = [0u32; 4];
    let mut it = v.split_whitespace();
    for slot in &mut out {
        *slot = it.next()?.parse().ok()?;
    }
    Some(out)
}

fn parse_status(text: &str) -> Option<Status> {
    let mut s = Status::default();
    let (mut have_uid, mut have_gid) = (false, false);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Name" => s.name = v.to_owned(),
            "Uid" => {
                s.uids = parse_ids(v)?;
                have_uid = true;
            }
            "Gid" => {
                s.gids = parse_ids(v)?;
                have_gid = true;
            }
            "CapPrm" => s.cap_permitted = u64::from_str_radix(v, 16).ok()?,
            "CapEff" => s.cap_effective = u64::from_str_radix(v, 16).ok()?,
            "NSpid" => s.ns_levels = v.split_whitespace().count(),
            _ => {}
        }
    }
    (have_uid && have_gid).then_some(s)
}

/// Field 22 of `/proc/PID/stat`, counted after the `)` that ends `comm`
/// (which may itself contain spaces and parentheses).
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is the first; field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The number of pid namespaces `pid` is nested in, counting ours
/// (`NSpid:` entries). Works for any process: `/proc/PID/status` is
/// world-readable.
///
/// # Errors
/// `ESRCH` when the process is gone.
pub fn pid_ns_levels(pid: u32) -> io::Result<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| exited())?;
    parse_status(&status)
        .map(|s| s.ns_levels)
        .ok_or_else(|| io::Error::other("unexpected /proc status format"))
}

/// The inode number of the pid namespace `pid` lives in (`stat
/// /proc/PID/ns/pid`; `None`: this process's own, `/proc/self/ns/pid`).
/// Learning mode's kernel half numbers pids as this namespace does. The
/// inode names a namespace uniquely on a running system (nsfs is one
/// file system for all of them).
///
/// # Errors
/// `ESRCH` when the process is gone; other errors when `/proc` is not
/// mounted or not readable.
pub fn pid_namespace_inode(pid: Option<u32>) -> io::Result<u32> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/ns/pid"),
        None => "/proc/self/ns/pid".to_owned(),
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound && pid.is_some() {
            exited()
        } else {
            io::Error::new(e.kind(), format!("{path}: {e}"))
        }
    })?;
    u32::try_from(meta.ino())
        .map_err(|_| io::Error::other(format!("{path}: inode {} out of range", meta.ino())))
}

/// In a child started by `wardenctl learn`: waits until the parent writes
/// one byte to the inherited pipe `fd` (the capture is attached) and
/// returns true, or false if the parent closed it without writing (the
/// capture failed; the child must not run the command). The parent's
/// side is [`gate_pipe`] and [`open_gate`].
///
/// # Errors
/// `EBADF` if `fd` is not an open pipe this process inherited.
pub fn wait_for_gate(fd: i32) -> io::Result<bool> {
    if fd < 3 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // Refuse a number that is not open, rather than borrowing garbage.
    nix::fcntl::fcntl(
        // SAFETY: F_GETFD on a raw number only asks whether it is open; the
        // borrow does not outlive this call.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(io::Error::from)?;
    // SAFETY: the descriptor was checked open above, was handed to us by
    // our parent for exactly this purpose, and stays open (we never close
    // it; it is close-on-exec) for the life of the borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(
        borrowed,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(io::Error::from)?;
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(borrowed, &mut byte) {
            Ok(n) => return Ok(n == 1),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates the gate pipe a parent holds a child with until it may run
/// (`wardenctl learn` and its `learn-exec` helper): `(read, write)`.
///
/// The read end is inheritable (no close-on-exec): pass its number to the
/// child, which waits on it with [`wait_for_gate`], and drop it in the
/// parent once the child is started. The write end is close-on-exec, so no
/// other child holds the gate open. Open the gate with [`open_gate`]; drop
/// the write end unopened to make the child give up.
///
/// # Errors
/// The OS error of `pipe2` or of clearing close-on-exec on the read end.
pub fn gate_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    nix::fcntl::fcntl(
        read.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(io::Error::from)?;
    Ok((read, write))
}

/// Opens the gate: writes the one byte [`wait_for_gate`] waits for, then
/// closes the write end (the child's `wait_for_gate` returns true).
///
/// # Errors
/// The OS error of the write (e.g. `EPIPE` when the child already exited).
pub fn open_gate(write: OwnedFd) -> io::Result<()> {
    loop {
        match nix::unistd::write(&write, b"g") {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn the_gate_opens_or_closes_unopened() -> io::Result<()> {
        let (read, write) = gate_pipe()?;
        open_gate(write)?;
        assert!(wait_for_gate(read.as_raw_fd())?);
        let (read, write) = gate_pipe()?;
        drop(write);
        assert!(!wait_for_gate(read.as_raw_fd())?);
        Ok(())
    }

    #[test]
    fn facts_of_self() -> io::Result<()> {
        let me = std::process::id();
        let fd = pidfd_open(me)?;
        let f = process_facts(fd.as_fd(), me)?;
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(f.uids[0], uid);
        assert_eq!(f.uids[1], nix::unistd::geteuid().as_raw());
        assert!(f.start_ticks > 0);
        assert_eq!(f.pid_ns_levels, 1);
        confirm_same_process(fd.as_fd(), me, f.start_ticks)?;
        assert!(confirm_same_process(fd.as_fd(), me, f.start_ticks + 1).is_err());
        Ok(())
    }

    #[test]
    fn an_exited_process_is_refused_through_its_pidfd() -> io::Result<()> {
        let mut child = std::process::Command::new("true").spawn()?;
        let pid = child.id();
        let fd = pidfd_open(pid)?;
        child.wait()?;
        // Reaped: the pid may be free or recycled; the pidfd knows better.
        assert!(!pidfd_alive(fd.as_fd())?);
        let err = process_facts(fd.as_fd(), pid).err();
        assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::ESRCH));
        Ok(())
    }

    #[test]
    fn pid_namespace_of_self_and_of_a_child_agree() -> io::Result<()> {
        let mine = pid_namespace_inode(None)?;
        assert_eq!(pid_namespace_inode(Some(std::process::id()))?, mine);
        // The link text names the same inode: "pid:[INODE]".
        let link = std::fs::read_link("/proc/self/ns/pid")?;
        assert_eq!(link.to_string_lossy(), format!("pid:[{mine}]"));
        let mut child = std::process::Command::new("sleep").arg("5").spawn()?;
        let theirs = pid_namespace_inode(Some(child.id()));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(theirs?, mine);
        Ok(())
    }

    #[test]
    fn stat_start_time_survives_odd_names() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_ticks(line), Some(98765));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn status_lines() {
        let s = parse_status(
            "Name:\tcat\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t6\t7\t8\nCapPrm:\t0000000000000000\nCapEff:\t00000000000000ff\nNSpid:\t10\t1\n",
        );
        let s = s.unwrap_or_default();
        assert_eq!(s.uids, [1000, 1001, 1002, 1003]);
        assert_eq!(s.gids, [5, 6, 7, 8]);
        assert_eq!(s.cap_effective, 0xff);
        assert_eq!(s.ns_levels, 2);
        assert_eq!(parse_status("Name:\tx\n"), None);
    }
}
