//! Starting a child host: a process as another user, tied to the thread
//! that started it, entered into a cgroup of its own before it runs any
//! code, with nothing inherited but what the broker chose.
//!
//! Everything the child needs is resolved here in the parent before the
//! fork (the argument and environment strings, the group list, the
//! descriptors); between fork and exec the child runs only the raw system
//! calls of [`prepare_child`], which allocate nothing and take no lock (a
//! forked child of a multi-threaded process may do nothing else). The
//! fork, the exec and the report of an exec failure are
//! `std::process::Command`'s, which does them carefully; the steps of our
//! own run in its `pre_exec` hook, in this order, each for a reason:
//!
//! 1. **cgroup**: write "0" to the leaf's `cgroup.procs` (opened by the
//!    parent), while the child still has the broker's privileges and
//!    before the program starts, so nothing it forks escapes the leaf.
//! 2. **credentials**: `setgroups` (the target's full list, never the
//!    broker's), `setresgid`, `setresuid`, in that order (after `setresuid`
//!    the others are no longer allowed).
//! 3. **parent-death signal**: `PR_SET_PDEATHSIG`, *after* the credential
//!    change because the kernel clears it on one; then a check that the
//!    parent is still the process that forked us (if it died in between,
//!    the signal will never come, so the child exits).
//! 4. **no_new_privs**: no set-uid or file-capability gain at exec or ever
//!    after (also what seccomp needs without `CAP_SYS_ADMIN`).
//! 5. **descriptors**: every descriptor above 2 is marked close-on-exec
//!    (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`), so only stdin, stdout
//!    and stderr cross the exec, however the broker's other descriptors
//!    were opened. (Marked rather than closed: `Command` reports an exec
//!    failure over a close-on-exec pipe of its own.)
//!
//! The child's stdin is the channel to the broker (one end of a
//! `socketpair`: no path anyone could squat); stdout is `/dev/null`;
//! stderr is a pipe the broker reads. The environment is exactly what the
//! spec lists; the working directory is `/`.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//! not the process: call [`spawn_child`] from a thread that lives as long
//! as the children should (the supervisor's spawner thread), never from a
//! pool thread that may be retired.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Who the child runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCredentials {
    /// Real, effective and saved user id.
    pub uid: u32,
    /// Real, effective and saved group id.
    pub gid: u32,
    /// The supplementary groups (the target user's own list).
    pub groups: Vec<u32>,
}

/// What to start and how. Build it completely before calling
/// [`spawn_child`]: nothing is looked up in the child.
#[derive(Debug)]
pub struct ChildSpec {
    /// The program, an absolute path.
    pub program: PathBuf,
    /// Arguments after argv\[0\] (which is the program path).
    pub args: Vec<OsString>,
    /// The whole environment, as (name, value).
    pub env: Vec<(OsString, OsString)>,
    /// Switch to these credentials; `None` keeps the broker's.
    pub credentials: Option<ChildCredentials>,
    /// The child's stdin: its channel to the broker.
    pub channel: OwnedFd,
    /// Where the child's stderr goes (the write end of a pipe); `None`:
    /// `/dev/null`.
    pub stderr: Option<OwnedFd>,
    /// The cgroup leaf's `cgroup.procs`, opened for writing; the child
    /// enters it before the exec.
    pub cgroup_procs: Option<OwnedFd>,
    /// The signal the child gets when the spawning thread exits.
    pub death_signal: i32,
    /// A Landlock ruleset ([`crate::landlock_ruleset`]) the child restricts
    /// itself to before the exec.
    pub landlock: Option<OwnedFd>,
    /// A seccomp filter ([`crate::seccomp_deny_filter`]) the child installs
    /// last before the exec.
    pub seccomp: Option<Vec<libc::sock_filter>>,
}

/// A started child: its pid and a pidfd for it (from before anyone could
/// reap it, so it names this process and no recycled one).
#[derive(Debug)]
pub struct SpawnedChild {
    /// The process (wait for it through this).
    pub child: Child,
    /// A pidfd of the process: readable once it exited.
    pub pidfd: OwnedFd,
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program path is not absolute.
    #[error("the program {0:?} is not an absolute path")]
    NotAbsolute(PathBuf),
    /// A group list longer than the kernel takes.
    #[error("{0} supplementary groups: the kernel takes at most {max}", max = MAX_GROUPS)]
    TooManyGroups(usize),
    /// A step before the exec failed in the child, or the exec itself
    /// (`Command` reports both as the child's errno).
    #[error("starting {program:?} failed: {source}")]
    Start {
        /// The program.
        program: PathBuf,
        /// The errno of the failing step.
        #[source]
        source: io::Error,
    },
    /// The child started but no pidfd could be opened for it (it has been
    /// killed again).
    #[error("no pidfd for the started child {pid}: {source}")]
    Pidfd {
        /// Its pid.
        pid: u32,
        /// The `pidfd_open` error.
        #[source]
        source: io::Error,
    },
}

/// The kernel's `NGROUPS_MAX`.
const MAX_GROUPS: usize = 65536;

/// Starts the child `spec` describes (see the module docs for what happens
/// in the child and in which order).
///
/// # Errors
/// [`SpawnError`]; a failed step in the child is reported with its errno
/// and the child is reaped.
pub fn spawn_child(spec: ChildSpec) -> Result<SpawnedChild, SpawnError> {
    if !spec.program.is_absolute() {
        return Err(SpawnError::NotAbsolute(spec.program));
    }
    if let Some(c) = &spec.credentials {
        if c.groups.len() > MAX_GROUPS {
            return Err(SpawnError::TooManyGroups(c.groups.len()));
        }
    }
    let plan = ChildPlan {
        parent: std::process::id(),
        cgroup_procs: spec.cgroup_procs.as_ref().map(AsRawFd::as_raw_fd),
        credentials: spec.credentials.clone(),
        death_signal: spec.death_signal,
        landlock: spec.landlock.as_ref().map(AsRawFd::as_raw_fd),
        seccomp: spec.seccomp.clone(),
    };
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::from(spec.channel))
        .stdout(Stdio::null())
        .stderr(spec.stderr.map_or_else(Stdio::null, Stdio::from));
    // SAFETY: `prepare_child` makes only async-signal-safe raw system calls
    // on values computed before the fork (the plan is moved in; the group
    // list is a Vec allocated now, only read in the child), allocates
    // nothing, takes no lock and touches no state of other threads.
    unsafe {
        cmd.pre_exec(move || prepare_child(&plan));
    }
    let child = cmd.spawn().map_err(|source| SpawnError::Start {
        program: spec.program.clone(),
        source,
    })?;
    // The cgroup descriptor (moved into `plan`, copied as a raw number)
    // stays open in `spec.cgroup_procs` until here.
    drop(spec.cgroup_procs);
    drop(spec.landlock);
    let pid = child.id();
    match super::target::pidfd_open(pid) {
        Ok(pidfd) => Ok(SpawnedChild { child, pidfd }),
        Err(source) => {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            Err(SpawnError::Pidfd { pid, source })
        }
    }
}

/// What the child does before the exec, resolved before the fork.
#[derive(Debug)]
struct ChildPlan {
    parent: u32,
    cgroup_procs: Option<RawFd>,
    credentials: Option<ChildCredentials>,
    death_signal: i32,
    landlock: Option<RawFd>,
    seccomp: Option<Vec<libc::sock_filter>>,
}

/// Returns the last OS error (no allocation: an `io::Error` of a raw
/// errno is a plain value).
fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// The child's steps between fork and exec, in the order the module docs
/// give. Raw system calls only.
fn prepare_child(plan: &ChildPlan) -> io::Result<()> {
    if let Some(fd) = plan.cgroup_procs {
        // SAFETY: `fd` is an open descriptor the parent keeps open across
        // the fork; the buffer is a static byte string.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(last_error());
        }
    }
    if let Some(c) = &plan.credentials {
        // SAFETY: the pointer and length describe the Vec's initialised
        // elements, which live (unchanged) for the whole call.
        if unsafe { libc::setgroups(c.groups.len(), c.groups.as_ptr()) } != 0 {
            return Err(last_error());
        }
        // SAFETY: plain integer arguments.
        if unsafe { libc::setresgid(c.gid, c.gid, c.gid) } != 0 {
            return Err(last_error());
        }
        // SAFETY: plain integer arguments.
        if unsafe { libc::setresuid(c.uid, c.uid, c.uid) } != 0 {
            return Err(last_error());
        }
    }
    let signal = libc::c_ulong::try_from(plan.death_signal)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) } != 0 {
        return Err(last_error());
    }
    // SAFETY: getppid cannot fail and takes no arguments.
    let parent = unsafe { libc::getppid() };
    if u32::try_from(parent).ok() != Some(plan.parent) {
        // The spawner died before the signal was armed: it will never come.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(last_error());
    }
    // SAFETY: plain integer arguments; marking descriptors close-on-exec
    // touches no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        return Err(last_error());
    }
    if let Some(fd) = plan.landlock {
        // SAFETY: a ruleset descriptor the parent keeps open across the
        // fork, and a zero flags word.
        if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) } != 0 {
            return Err(last_error());
        }
    }
    if let Some(filter) = &plan.seccomp {
        let prog = libc::sock_fprog {
            len: u16::try_from(filter.len())
                .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points to `len` instructions of a Vec that lives
        // (unchanged) for the whole call; the kernel copies them.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
                0,
                0,
            )
        };
        if rc != 0 {
            return Err(last_error());
        }
    }
    Ok(())
}

/// Sends `signal` to the process `pidfd` refers to (`pidfd_send_signal`:
/// never to a process that reused its pid).
///
/// # Errors
/// `ESRCH` once it has exited (been reaped); `EPERM` without the right.
pub fn pidfd_signal(pidfd: std::os::fd::BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a descriptor number, a signal number, a null siginfo (the
    // kernel fills in a default one) and a zero flags word.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc != 0 {
        return Err(last_error());
    }
    Ok(())
}

/// A pidfd registered with the tokio reactor: await the exit of the
/// process it names.
#[derive(Debug)]
pub struct AsyncPidfd(tokio::io::unix::AsyncFd<OwnedFd>);

impl AsyncPidfd {
    /// Registers `pidfd` (which it owns from now on) with the current
    /// tokio runtime.
    ///
    /// # Errors
    /// The registration error (no runtime with I/O enabled, or epoll
    /// refused the descriptor).
    pub fn new(pidfd: OwnedFd) -> io::Result<AsyncPidfd> {
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open
        // and names the same pidfd until the AsyncFd is dropped; nothing
        // hands out a way to replace it (only `as_fd` borrows it).
        let afd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(AsyncPidfd(afd))
    }

    /// Waits until the process has exited (the pidfd is readable). It is
    /// not reaped: wait for it (`Child::try_wait`) afterwards.
    ///
    /// # Errors
    /// The reactor's error.
    pub async fn exited(&self) -> io::Result<()> {
        loop {
            let mut guard = self.0.readable().await?;
            if super::process::pidfd_exited(self.0.get_ref().as_fd())? {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// The pidfd.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a
/// unified system, `/sys/fs/cgroup/unified` on a hybrid one), from
/// `/proc/self/mounts`; `None` without one.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(at))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// Root-only tests are `#[ignore = "needs root"]` (scripts/test runs
    /// them as root and in CI); run without root anyway, they fail.
    fn need_root(what: &str) -> bool {
        assert!(is_root(), "{what} needs root");
        true
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .unwrap_or_else(|e| panic!("pipe2: {e}"));
        (r, w)
    }

    fn sh(script: &str, stderr: OwnedFd) -> (ChildSpec, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap_or_else(|e| panic!("socketpair: {e}"));
        let spec = ChildSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("WARDEN_T".into(), "1".into()),
            ],
            credentials: None,
            channel: OwnedFd::from(theirs),
            stderr: Some(stderr),
            cgroup_procs: None,
            death_signal: libc::SIGKILL,
            landlock: None,
            seccomp: None,
        };
        (spec, ours)
    }

    fn run_to_end(spec: ChildSpec, mut out: std::fs::File) -> String {
        let mut s = match spawn_child(spec) {
            Ok(s) => s,
            Err(e) => panic!("spawn: {e}"),
        };
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        let status = s.child.wait().unwrap_or_else(|e| panic!("wait: {e}"));
        assert!(status.success(), "child failed ({status}): {text}");
        text
    }

    const REPORT: &str = "grep -E '^(Uid|Gid|Groups|NoNewPrivs):' /proc/self/status >&2; \
                          ls /proc/self/fd >&2; env >&2; cat /proc/self/cgroup >&2";

    #[test]
    fn the_child_gets_only_its_environment_and_stdio() {
        let (r, w) = pipe();
        // A descriptor the parent holds without close-on-exec: the child
        // must still not inherit it.
        let (leak_r, _leak_w) = nix::unistd::pipe().unwrap_or_else(|e| panic!("pipe: {e}"));
        let script = format!(
            "{REPORT}; if test -e /proc/self/fd/{}; then echo LEAKED >&2; fi",
            leak_r.as_raw_fd()
        );
        let (cmd_spec, _ours) = sh(&script, w);
        let text = run_to_end(cmd_spec, std::fs::File::from(r));
        assert!(
            !text.contains("LEAKED"),
            "an inheritable descriptor crossed the exec: {text}"
        );
        assert!(text.contains("NoNewPrivs:\t1"), "{text}");
        assert!(text.contains("WARDEN_T=1"), "{text}");
        assert!(
            !text.contains("HOME="),
            "the broker's environment leaked: {text}"
        );
        // fds: 0 1 2 and the one `ls` opens for /proc/self/fd.
        let fds: Vec<&str> = text
            .lines()
            .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
            .collect();
        assert_eq!(fds, ["0", "1", "2", "3"], "{text}");
    }

    #[test]
    fn a_failed_exec_is_reported_with_its_errno() {
        let (_r, w) = pipe();
        let (mut spec, _ours) = sh("true", w);
        spec.program = PathBuf::from("/nonexistent/warden-host");
        match spawn_child(spec) {
            Err(SpawnError::Start { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{source}");
            }
            other => panic!("expected a start error, got {other:?}"),
        }
        let (_r, w) = pipe();
        let (mut spec, _ours) = sh("true", w);
        spec.program = PathBuf::from("bin/sh");
        assert!(matches!(spawn_child(spec), Err(SpawnError::NotAbsolute(_))));
    }

    #[test]
    #[ignore = "needs root"]
    fn the_child_runs_as_the_target_user_with_its_groups() {
        if !need_root("switching credentials") {
            return;
        }
        let (r, w) = pipe();
        let (mut spec, _ours) = sh(REPORT, w);
        spec.credentials = Some(ChildCredentials {
            uid: 64_901,
            gid: 64_902,
            groups: vec![64_903, 64_904],
        });
        let text = run_to_end(spec, std::fs::File::from(r));
        assert!(text.contains("Uid:\t64901\t64901\t64901\t64901"), "{text}");
        assert!(text.contains("Gid:\t64902\t64902\t64902\t64902"), "{text}");
        assert!(text.contains("Groups:\t64903 64904"), "{text}");
    }

    /// The child dies with the spawning thread, also after a credential
    /// change (which clears the signal if armed before it).
    #[test]
    fn the_child_dies_with_the_thread_that_spawned_it() {
        let switch = is_root();
        let (_r, w) = pipe();
        let spawned = std::thread::spawn(move || {
            let (mut spec, ours) = sh("exec sleep 30", w);
            if switch {
                spec.credentials = Some(ChildCredentials {
                    uid: 64_901,
                    gid: 64_902,
                    groups: vec![],
                });
            }
            (spawn_child(spec).map_err(|e| e.to_string()), ours)
        })
        .join();
        let (spawned, _ours) = match spawned {
            Ok(v) => v,
            Err(_) => panic!("the spawning thread panicked"),
        };
        let mut s = spawned.unwrap_or_else(|e| panic!("spawn: {e}"));
        // The thread has exited: the pidfd becomes readable once the child
        // is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&s.pidfd),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)).unwrap_or(0) > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the child outlived its spawning thread"
            );
        }
        let status = s.child.wait().unwrap_or_else(|e| panic!("wait: {e}"));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    #[test]
    #[ignore = "needs root"]
    fn the_child_enters_its_cgroup_before_it_runs() {
        if !need_root("creating a cgroup") {
            return;
        }
        let Some(root) = cgroup2_mount() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "no cgroup v2 hierarchy mounted, and CI has one"
            );
            eprintln!("skipping: no cgroup v2 hierarchy");
            return;
        };
        let leaf = root.join(format!("warden-spawn-t-{}", std::process::id()));
        let _ = std::fs::create_dir(&leaf);
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(leaf.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("{}: {e}", leaf.display()));
        let (r, w) = pipe();
        let (mut spec, _ours) = sh("cat /proc/self/cgroup >&2", w);
        spec.cgroup_procs = Some(OwnedFd::from(procs));
        let text = run_to_end(spec, std::fs::File::from(r));
        let name = leaf.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let _ = std::fs::remove_dir(&leaf);
        assert!(
            text.lines()
                .any(|l| l.starts_with("0::") && l.ends_with(name)),
            "{text}"
        );
    }
}
