//! The broker's listening socket, created where nobody else can interfere.
//!
//! The path is walked one component at a time from `/` with
//! `openat(O_NOFOLLOW|O_DIRECTORY)` ([`Dir::walk`], the same walk
//! `wardenctl install` uses), so no symlink is ever followed, and each
//! directory is checked as it is opened (no check-then-use gap on the path):
//!
//! 1. every ancestor of the socket's directory is owned by root (or the
//!    broker's uid) and not writable by others (nor by a non-root group);
//! 2. the socket's directory is created 0755 if missing, or else must be
//!    owned by root or the broker's uid and not writable by group or others
//!    (systemd's `RuntimeDirectory=` passes);
//! 3. a lock file beside the socket (`<name>.lock`, `flock`) keeps a second
//!    broker out;
//! 4. anything already at the socket name is refused, naming its owner,
//!    unless it is a socket owned by the broker's uid that refuses
//!    connections (stale): only that is removed;
//! 5. the socket is bound under umask 0077, then given the configured group
//!    and mode.
//!
//! Nothing is created or removed when a check fails (except the socket's
//! directory in step 2 and the lock file, both the broker's own).

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, Flock, FlockArg, OFlag};
use nix::sys::socket::{listen, Backlog};
use nix::sys::stat::{fstat, fstatat, umask, FileStat, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, UnlinkatFlags};

use super::fs_at::{Dir, FileKind, Meta, OpenDirError, StatError, WalkStep};

/// Bytes available for a path in `sockaddr_un` (without the final NUL).
const SUN_PATH_MAX: usize = 107;
/// `listen(2)` backlog.
const LISTEN_BACKLOG: i32 = 1024;

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// Absolute socket path.
    pub path: PathBuf,
    /// Final mode of the socket file (e.g. `0o666`).
    pub mode: u32,
    /// Group to give the socket file.
    pub group: Option<u32>,
    /// Create the socket's directory (0755) if it is missing.
    pub create_dir: bool,
}

/// Why the broker cannot listen at the requested path. Every variant names
/// the path; those about something found there name its owner.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The path is not absolute and normalized.
    #[error("socket path {path} must be absolute, without '.', '..' or empty components")]
    NotAbsolute {
        /// The path.
        path: PathBuf,
    },
    /// The path does not fit in `sockaddr_un`.
    #[error("socket path {path} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A directory on the path is owned by someone untrusted.
    #[error("refusing to use {path}: owned by uid {owner}, expected root (uid 0) or the broker's uid {expected}")]
    BadOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The broker's uid.
        expected: u32,
    },
    /// A directory on the path is writable by others.
    #[error("refusing to use {path}: owned by uid {owner} but writable by {who} (mode {mode:04o}); other users could replace the socket")]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// "others" or "group".
        who: &'static str,
        /// Its mode.
        mode: u32,
    },
    /// A symlink where a directory or the socket should be.
    #[error("refusing to use {path}: it is a symlink (owner uid {owner}); symlinks are never followed on the socket path")]
    Symlink {
        /// Where.
        path: PathBuf,
        /// The symlink's owner.
        owner: u32,
    },
    /// Something other than a directory where a directory should be, or
    /// other than a socket at the socket name.
    #[error("refusing to use {path}: it is a {kind}, not a {expected} (owner uid {owner}); remove it if it is not needed")]
    WrongType {
        /// Where.
        path: PathBuf,
        /// What was found.
        kind: &'static str,
        /// What was expected.
        expected: &'static str,
        /// Its owner.
        owner: u32,
    },
    /// A socket owned by another user is at the path.
    #[error("refusing to use {path}: a socket owned by uid {owner} is there (the broker runs as uid {expected}); it is left untouched")]
    ForeignSocket {
        /// The socket.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The broker's uid.
        expected: u32,
    },
    /// Another broker holds the path.
    #[error("{path} is in use by another running broker ({how}); stop it first")]
    InUse {
        /// The socket.
        path: PathBuf,
        /// How that was detected.
        how: &'static str,
    },
    /// A missing directory and `create_dir` is off.
    #[error("directory {path} does not exist")]
    MissingDir {
        /// The directory.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl From<OpenDirError> for EndpointError {
    fn from(e: OpenDirError) -> Self {
        match e {
            OpenDirError::BadName { dir, name } => EndpointError::NotAbsolute {
                path: dir.join(name),
            },
            OpenDirError::Symlink { path, owner } => EndpointError::Symlink { path, owner },
            OpenDirError::NotADirectory { path, kind, owner } => EndpointError::WrongType {
                path,
                kind,
                expected: "directory",
                owner,
            },
            OpenDirError::Missing { path } => EndpointError::MissingDir { path },
            OpenDirError::Io { op, path, source } => EndpointError::Io { op, path, source },
        }
    }
}

impl From<StatError> for EndpointError {
    fn from(e: StatError) -> Self {
        match e {
            StatError::BadName { dir, name } => EndpointError::NotAbsolute {
                path: dir.join(name),
            },
            StatError::Io { path, source } => EndpointError::Io {
                op: "checking",
                path,
                source,
            },
        }
    }
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> EndpointError + 'a {
    move |e| EndpointError::Io {
        op,
        path: path.to_owned(),
        source: io::Error::from(e),
    }
}

fn kind_of(st: &FileStat) -> &'static str {
    Meta::from_stat(st).kind.describe()
}

fn stat_identity(st: &FileStat) -> (u64, u64, i64, i64) {
    (st.st_dev, st.st_ino, st.st_ctime, st.st_ctime_nsec)
}

fn is(st: &FileStat, t: SFlag) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == t.bits()
}

/// A listening socket bound by [`bind_secure`], with the lock that keeps
/// other brokers away. Dropping it keeps the socket file; call
/// [`BoundEndpoint::remove_socket`] at shutdown.
#[derive(Debug)]
pub struct BoundEndpoint {
    listener: Option<UnixListener>,
    path: PathBuf,
    dir: OwnedFd,
    name: OsString,
    /// (device, inode, ctime s, ctime ns) of the socket after setup: an
    /// inode number alone can be reused by a new file at once.
    identity: (u64, u64, i64, i64),
    reclaimed: bool,
    _lock: Flock<OwnedFd>,
}

impl BoundEndpoint {
    /// The listener (non-blocking, close-on-exec), until taken.
    pub fn listener(&self) -> Option<&UnixListener> {
        self.listener.as_ref()
    }

    /// Takes the listener, to hand it to an async runtime. The endpoint
    /// stays alive to hold the lock and remove the socket later.
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if a stale socket of the broker's own was removed.
    pub fn reclaimed_stale(&self) -> bool {
        self.reclaimed
    }

    /// Removes the socket file, but only if it is still the very socket
    /// this endpoint bound (same device and inode). Idempotent.
    ///
    /// # Errors
    /// A failing `unlinkat` other than "already gone".
    pub fn remove_socket(&self) -> Result<(), EndpointError> {
        match fstatat(
            &self.dir,
            self.name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if is(&st, SFlag::S_IFSOCK) && stat_identity(&st) == self.identity => {
                match unlinkat(&self.dir, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(io_at("removing", &self.path)(e)),
                }
            }
            Ok(_) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_at("checking", &self.path)(e)),
        }
    }
}

/// Checks a directory on the way to the socket.
fn check_dir(path: &Path, meta: &Meta, me: u32, is_socket_dir: bool) -> Result<(), EndpointError> {
    if meta.kind != FileKind::Directory {
        return Err(EndpointError::WrongType {
            path: path.to_owned(),
            kind: meta.kind.describe(),
            expected: "directory",
            owner: meta.uid,
        });
    }
    if meta.uid != 0 && meta.uid != me {
        return Err(EndpointError::BadOwner {
            path: path.to_owned(),
            owner: meta.uid,
            expected: me,
        });
    }
    let mode = meta.mode;
    if mode & 0o002 != 0 {
        return Err(EndpointError::Writable {
            path: path.to_owned(),
            owner: meta.uid,
            who: "others",
            mode,
        });
    }
    if mode & 0o020 != 0 && (is_socket_dir || meta.gid != 0) {
        return Err(EndpointError::Writable {
            path: path.to_owned(),
            owner: meta.uid,
            who: "its group",
            mode,
        });
    }
    Ok(())
}

/// Opens (or, with `create`, creates 0700) the directory `path` the way
/// the socket's directory is reached: walked from `/` one component at a
/// time without following a symlink, every ancestor owned by root or the
/// caller and writable by nobody else (a root-owned group-writable
/// ancestor excepted, as for the socket), and `path` itself owned by root
/// or the caller and writable by neither group nor others. For files that
/// hold secrets: the invitation store, a token written by `wardenctl
/// invite create --output`. `/tmp` and other shared directories are
/// refused.
///
/// # Errors
/// [`EndpointError`], naming the path that failed the check and its owner.
pub fn open_private_dir(path: &Path, create: bool) -> Result<Dir, EndpointError> {
    let me = nix::unistd::geteuid().as_raw();
    let not_absolute = || EndpointError::NotAbsolute {
        path: path.to_owned(),
    };
    let mut parts = Vec::new();
    let mut comps = path.components();
    if comps.next() != Some(Component::RootDir) {
        return Err(not_absolute());
    }
    for c in comps {
        match c {
            Component::Normal(n) => parts.push(n.to_owned()),
            _ => return Err(not_absolute()),
        }
    }
    let Some((dir_name, ancestors)) = parts.split_last() else {
        return Err(not_absolute());
    };
    let ancestors: PathBuf = ancestors.iter().collect();
    walk_to_own_dir(&ancestors, Path::new(dir_name), create.then_some(0o700), me)
}

/// Opens `/ancestors/dir_name` one component at a time from `/`, each
/// directory checked as it is opened ([`check_dir`]: root's or ours, not
/// writable by others, nor by a group other than root's; `dir_name` not
/// by its group at all). `dir_name` is created with exactly the mode
/// `create` (the walk fchmods what it makes, whatever the umask) if it is
/// missing and `create` is given.
fn walk_to_own_dir(
    ancestors: &Path,
    dir_name: &Path,
    create: Option<u32>,
    me: u32,
) -> Result<Dir, EndpointError> {
    let root = Path::new("/");
    let top = Dir::open(root)?;
    check_dir(root, &top.meta()?, me, false)?;
    let parent = top.walk(ancestors, None, |s: &WalkStep<'_>| {
        check_dir(s.dir.path(), &s.meta, me, false)
    })?;
    parent.walk(dir_name, create, |s: &WalkStep<'_>| {
        check_dir(s.dir.path(), &s.meta, me, true)
    })
}

/// Creates the broker's listening socket at `spec.path`, refusing any path
/// another user could interfere with. See the module docs for the rules.
///
/// Sets the process umask briefly: call it before starting threads that
/// create files.
///
/// # Errors
/// [`EndpointError`], naming the path (and the owner of whatever is in the
/// way); nothing of anyone else's is touched.
pub fn bind_secure(spec: &EndpointSpec) -> Result<BoundEndpoint, EndpointError> {
    let path = &spec.path;
    let me = nix::unistd::geteuid().as_raw();
    let parts = validate_path(path)?;
    let (at, dir) = open_socket_dir(&parts, spec.create_dir, me)?;
    let lock = take_lock(&dir, &at, &parts.name, path, me)?;
    let reclaimed = reclaim_stale(&dir, &parts.name, path, me)?;
    let listener = bind_with_mode(spec, &dir, &parts.name)?;
    let identity = record_identity(&dir, &parts.name, path)?;
    Ok(BoundEndpoint {
        listener: Some(listener),
        path: path.clone(),
        dir,
        name: parts.name,
        identity,
        reclaimed,
        _lock: lock,
    })
}

/// A socket path split by [`validate_path`]: `/<ancestors>/<dir_name>/<name>`.
struct SocketPath {
    /// The directories above the socket's directory, relative to `/`
    /// (empty when the socket's directory is directly under `/`).
    ancestors: PathBuf,
    /// The socket's directory, by name.
    dir_name: OsString,
    /// The socket's file name.
    name: OsString,
}

/// Checks that `path` fits in `sockaddr_un` and is absolute and normalized
/// (no `.`, `..`, empty components or trailing `/`, and at least a
/// directory and a name), and splits it.
fn validate_path(path: &Path) -> Result<SocketPath, EndpointError> {
    let not_absolute = || EndpointError::NotAbsolute {
        path: path.to_owned(),
    };
    let len = path.as_os_str().as_bytes().len();
    if len > SUN_PATH_MAX {
        return Err(EndpointError::TooLong {
            path: path.to_owned(),
            len,
            max: SUN_PATH_MAX,
        });
    }
    let mut parts = Vec::new();
    let mut comps = path.components();
    if comps.next() != Some(Component::RootDir) {
        return Err(not_absolute());
    }
    for c in comps {
        match c {
            Component::Normal(n) => parts.push(n.to_owned()),
            _ => return Err(not_absolute()),
        }
    }
    // `Path::components` drops "." and empty components silently; insist
    // that the text round-trips, so what we check is what was asked for.
    let rebuilt: PathBuf = std::iter::once(OsString::from("/"))
        .chain(parts.iter().cloned())
        .collect();
    if rebuilt.as_os_str() != path.as_os_str()
        || path.as_os_str().as_bytes().ends_with(b"/")
        || parts.len() < 2
    {
        return Err(not_absolute());
    }
    let Some((name, dirs)) = parts.split_last() else {
        return Err(not_absolute());
    };
    let Some((dir_name, ancestors)) = dirs.split_last() else {
        return Err(not_absolute());
    };
    Ok(SocketPath {
        ancestors: ancestors.iter().collect(),
        dir_name: dir_name.clone(),
        name: name.clone(),
    })
}

/// Steps 1 and 2: walks from `/` to the socket's directory without
/// following symlinks, checking each ancestor as it is opened, then opens
/// (or, if `create_dir`, creates 0755) the socket's directory and checks it
/// the stricter way. Returns the directory's path and descriptor.
fn open_socket_dir(
    parts: &SocketPath,
    create_dir: bool,
    me: u32,
) -> Result<(PathBuf, OwnedFd), EndpointError> {
    // 1. Walk the ancestors, each checked as it is opened; 2. the socket's
    // directory: created 0755 if missing and allowed.
    let dir = walk_to_own_dir(
        &parts.ancestors,
        Path::new(&parts.dir_name),
        create_dir.then_some(0o755),
        me,
    )?;
    let at = dir.path().to_owned();
    Ok((at, dir.into_fd()))
}

/// Step 3: opens (creating 0600) `<name>.lock` in the socket's directory,
/// refusing a symlink or anything but a regular file of the broker's, and
/// takes its `flock` without waiting; a lock held elsewhere means another
/// broker is running ([`EndpointError::InUse`]).
fn take_lock(
    dir: &OwnedFd,
    at: &Path,
    name: &OsString,
    path: &Path,
    me: u32,
) -> Result<Flock<OwnedFd>, EndpointError> {
    let mut lock_name = name.clone();
    lock_name.push(".lock");
    let lock_path = at.join(&lock_name);
    let lock_fd = openat(
        dir,
        lock_name.as_os_str(),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| match e {
        Errno::ELOOP => EndpointError::Symlink {
            path: lock_path.clone(),
            owner: fstatat(
                dir,
                lock_name.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map(|s| s.st_uid)
            .unwrap_or(u32::MAX),
        },
        e => io_at("opening", &lock_path)(e),
    })?;
    let lst = fstat(&lock_fd).map_err(io_at("checking", &lock_path))?;
    if !is(&lst, SFlag::S_IFREG) || lst.st_uid != me {
        return Err(EndpointError::WrongType {
            path: lock_path,
            kind: kind_of(&lst),
            expected: "regular file owned by the broker",
            owner: lst.st_uid,
        });
    }
    Flock::lock(lock_fd, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| match e {
        Errno::EWOULDBLOCK => EndpointError::InUse {
            path: path.to_owned(),
            how: "its lock file is held",
        },
        e => io_at("locking", &lock_path)(e),
    })
}

/// Step 4: looks at whatever is already at the socket name. Nothing there
/// is fine; a socket of the broker's uid that refuses connections is stale
/// and removed (returns `true`); anything else (a symlink, another kind of
/// file, another user's socket, a live socket) is refused and left alone.
fn reclaim_stale(
    dir: &OwnedFd,
    name: &OsString,
    path: &Path,
    me: u32,
) -> Result<bool, EndpointError> {
    match fstatat(
        dir,
        name.as_os_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(io_at("checking", path)(e)),
        Ok(st) if is(&st, SFlag::S_IFLNK) => Err(EndpointError::Symlink {
            path: path.to_owned(),
            owner: st.st_uid,
        }),
        Ok(st) if !is(&st, SFlag::S_IFSOCK) => Err(EndpointError::WrongType {
            path: path.to_owned(),
            kind: kind_of(&st),
            expected: "socket",
            owner: st.st_uid,
        }),
        Ok(st) if st.st_uid != me => Err(EndpointError::ForeignSocket {
            path: path.to_owned(),
            owner: st.st_uid,
            expected: me,
        }),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(EndpointError::InUse {
                path: path.to_owned(),
                how: "its socket accepts connections",
            }),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                    .map_err(io_at("removing the stale socket", path))?;
                Ok(true)
            }
            Err(e) => Err(EndpointError::Io {
                op: "probing the existing socket",
                path: path.to_owned(),
                source: e,
            }),
        },
    }
}

/// Step 5: binds under umask 0077 (so the socket is never briefly open to
/// others), listens, then gives the socket the configured group and mode
/// and makes the listener non-blocking.
fn bind_with_mode(
    spec: &EndpointSpec,
    dir: &OwnedFd,
    name: &OsString,
) -> Result<UnixListener, EndpointError> {
    let path = &spec.path;
    let old = umask(Mode::from_bits_truncate(0o077));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound.map_err(|source| EndpointError::Io {
        op: "binding",
        path: path.clone(),
        source,
    })?;
    listen(
        &listener,
        Backlog::new(LISTEN_BACKLOG).unwrap_or(Backlog::MAXCONN),
    )
    .map_err(io_at("listening on", path))?;
    if let Some(gid) = spec.group {
        fchownat(
            dir,
            name.as_os_str(),
            None,
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_at("setting the group of", path))?;
    }
    // The directory is ours and checked, and the name is the socket we just
    // bound (same inode), so setting its mode through the path is safe.
    std::fs::set_permissions(
        path,
        std::os::unix::fs::PermissionsExt::from_mode(spec.mode & 0o777),
    )
    .map_err(|source| EndpointError::Io {
        op: "setting the mode of",
        path: path.clone(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| EndpointError::Io {
            op: "configuring",
            path: path.clone(),
            source,
        })?;
    Ok(listener)
}

/// Records the bound socket's identity (device, inode, ctime), so that
/// [`BoundEndpoint::remove_socket`] later removes only this very socket.
fn record_identity(
    dir: &OwnedFd,
    name: &OsString,
    path: &Path,
) -> Result<(u64, u64, i64, i64), EndpointError> {
    let st = fstatat(
        dir,
        name.as_os_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io_at("checking", path))?;
    Ok(stat_identity(&st))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::atomic::{AtomicU32, Ordering};

    type R = Result<(), Box<dyn std::error::Error>>;

    /// A fresh root-owned directory under /run, or `None` (with the reason
    /// printed) when not root outside CI.
    fn run_dir(tag: &str) -> Option<PathBuf> {
        static N: AtomicU32 = AtomicU32::new(0);
        if nix::unistd::geteuid().as_raw() != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{tag}: needs root (a root-owned directory under /run); CI=true forbids skipping"
            );
            eprintln!("SKIP {tag}: needs root for a root-owned directory under /run");
            return None;
        }
        let p = PathBuf::from(format!(
            "/run/warden-sys-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).ok()?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).ok()?;
        Some(p)
    }

    fn spec(path: PathBuf) -> EndpointSpec {
        EndpointSpec {
            path,
            mode: 0o666,
            group: None,
            create_dir: true,
        }
    }

    #[test]
    fn refuses_relative_and_odd_paths() {
        for p in [
            "rel/x.sock",
            "/a/../b.sock",
            "/a/./b.sock",
            "/x.sock",
            "/a//b.sock",
        ] {
            let e = bind_secure(&spec(PathBuf::from(p)));
            assert!(
                matches!(e, Err(EndpointError::NotAbsolute { .. })),
                "{p}: {e:?}"
            );
        }
        let long = format!("/run/{}/x.sock", "a".repeat(120));
        assert!(matches!(
            bind_secure(&spec(PathBuf::from(long))),
            Err(EndpointError::TooLong { .. })
        ));
    }

    #[test]
    fn refuses_a_world_writable_ancestor() {
        let p = PathBuf::from(format!("/tmp/warden-sys-{}/x/w.sock", std::process::id()));
        let e = bind_secure(&spec(p));
        // /tmp is writable by others: refused before anything is created.
        match e {
            Err(EndpointError::Writable { path, owner: 0, .. }) => {
                assert_eq!(path, Path::new("/tmp"))
            }
            Err(EndpointError::MissingDir { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(!Path::new(&format!("/tmp/warden-sys-{}", std::process::id())).exists());
    }

    #[test]
    fn binds_with_mode_and_removes_only_its_own_socket() -> R {
        let Some(d) = run_dir("bind") else {
            return Ok(());
        };
        let sock = d.join("s/w.sock");
        let mut ep = bind_secure(&spec(sock.clone()))?;
        assert!(!ep.reclaimed_stale());
        let meta = std::fs::symlink_metadata(&sock)?;
        assert_eq!(meta.mode() & 0o777, 0o666);
        assert_eq!(std::fs::metadata(d.join("s"))?.mode() & 0o777, 0o755);
        assert!(ep.take_listener().is_some());
        // A second broker is kept out by the lock, and the first's socket
        // stays.
        let second = bind_secure(&spec(sock.clone()));
        assert!(
            matches!(second, Err(EndpointError::InUse { .. })),
            "{second:?}"
        );
        assert!(sock.exists());
        ep.remove_socket()?;
        assert!(!sock.exists());
        ep.remove_socket()?;
        // Something else at the name later is not removed.
        std::fs::write(&sock, "not ours")?;
        ep.remove_socket()?;
        assert!(sock.exists());
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn reclaims_a_stale_socket_of_its_own() -> R {
        let Some(d) = run_dir("stale") else {
            return Ok(());
        };
        let sock = d.join("w.sock");
        drop(UnixListener::bind(&sock)?);
        let ep = bind_secure(&spec(sock.clone()))?;
        assert!(ep.reclaimed_stale());
        assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn refuses_a_live_socket_and_foreign_things() -> R {
        let Some(d) = run_dir("squat") else {
            return Ok(());
        };
        // A live socket of ours that is not a broker's lock holder.
        let live = d.join("live.sock");
        let _l = UnixListener::bind(&live)?;
        assert!(matches!(
            bind_secure(&spec(live.clone())),
            Err(EndpointError::InUse { .. })
        ));
        // Another user's socket.
        let foreign = d.join("foreign.sock");
        drop(UnixListener::bind(&foreign)?);
        std::os::unix::fs::lchown(&foreign, Some(65534), Some(65534))?;
        match bind_secure(&spec(foreign.clone())) {
            Err(e @ EndpointError::ForeignSocket { owner: 65534, .. }) => {
                assert!(e.to_string().contains("uid 65534"), "{e}");
                assert!(
                    e.to_string().contains(&foreign.display().to_string()),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::symlink_metadata(&foreign)?.uid(), 65534);
        // A symlink to a root-owned file: refused, target untouched.
        let target = d.join("target");
        std::fs::write(&target, "keep")?;
        let link = d.join("link.sock");
        std::os::unix::fs::symlink(&target, &link)?;
        assert!(matches!(
            bind_secure(&spec(link.clone())),
            Err(EndpointError::Symlink { owner: 0, .. })
        ));
        assert_eq!(std::fs::read_to_string(&target)?, "keep");
        // A regular file.
        let file = d.join("file.sock");
        std::fs::write(&file, "x")?;
        assert!(matches!(
            bind_secure(&spec(file.clone())),
            Err(EndpointError::WrongType {
                kind: "regular file",
                ..
            })
        ));
        // A symlinked directory on the way.
        let real = d.join("real");
        std::fs::create_dir(&real)?;
        std::os::unix::fs::symlink(&real, d.join("via"))?;
        assert!(matches!(
            bind_secure(&spec(d.join("via/x.sock"))),
            Err(EndpointError::Symlink { .. })
        ));
        // A socket directory writable by others.
        let open = d.join("open");
        std::fs::create_dir(&open)?;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777))?;
        assert!(matches!(
            bind_secure(&spec(open.join("x.sock"))),
            Err(EndpointError::Writable { who: "others", .. })
        ));
        assert!(!open.join("x.sock").exists());
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }
}
