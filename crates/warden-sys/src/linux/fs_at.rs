//! Files and directories reached from an open directory, never through a
//! symlink.
//!
//! A [`Dir`] holds an `O_DIRECTORY` descriptor. Everything below it is
//! reached one component at a time with `openat(O_NOFOLLOW|O_DIRECTORY)`
//! ([`Dir::walk`], [`Dir::open_dir_nofollow`]), and every name an
//! operation takes is one component (no `/`, no `.` or `..`), so no
//! operation leaves the directory it starts from or is sent elsewhere by a
//! symlink planted on the way. A file is written the way the broker's
//! socket directory is made ([`Dir::write_file_atomic`]): created under a
//! fresh name with `O_CREAT|O_EXCL|O_NOFOLLOW`, given its mode with
//! `fchmod`, written, `fsync`ed, and moved into place with `renameat` in
//! the same directory (or `linkat`, which never replaces, for
//! [`Dir::create_file_atomic`]). Removal is `unlinkat` on one name.
//!
//! # Attacker model
//! Someone may be able to write into a directory being walked (an image a
//! user prepared, a service's state directory) and plant symlinks, FIFOs or
//! files at any name at any time, the temporary names included. They cannot
//! make an operation here follow a symlink, open a FIFO for writing, or
//! touch anything outside the directories walked; they can make it fail.
//! Whether a directory is trustworthy (its owner and mode) is the caller's
//! decision: [`Dir::walk`] hands each directory's [`Meta`] to the caller's
//! check as it is opened, before anything below it is touched, so there is
//! no gap between the check and the use.
//!
//! Temporary names are predictable (`.wardentmp.<pid>.<counter>.<ns>`):
//! `O_CREAT|O_EXCL|O_NOFOLLOW` fails on *any* existing entry, a symlink or
//! a dangling symlink included, so knowing the name lets nobody redirect
//! the write; a squatted name only costs a retry (at most
//! [`TEMP_NAME_ATTEMPTS`]). No random source is needed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fsync, linkat, unlinkat, UnlinkatFlags};

/// How many fresh temporary names a write tries before giving up (each
/// failure means something already sat at the name).
pub const TEMP_NAME_ATTEMPTS: u32 = 16;

/// What kind of file a [`Meta`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A regular file.
    Regular,
    /// A symbolic link (never followed here).
    Symlink,
    /// A Unix socket.
    Socket,
    /// A FIFO.
    Fifo,
    /// A character or block device.
    Device,
    /// Anything else.
    Other,
}

impl FileKind {
    fn from_mode(mode: u32) -> FileKind {
        match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => FileKind::Directory,
            SFlag::S_IFREG => FileKind::Regular,
            SFlag::S_IFLNK => FileKind::Symlink,
            SFlag::S_IFSOCK => FileKind::Socket,
            SFlag::S_IFIFO => FileKind::Fifo,
            SFlag::S_IFCHR | SFlag::S_IFBLK => FileKind::Device,
            _ => FileKind::Other,
        }
    }

    /// The kind in words, for messages ("regular file", "symlink", ...).
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Directory => "directory",
            FileKind::Regular => "regular file",
            FileKind::Symlink => "symlink",
            FileKind::Socket => "socket",
            FileKind::Fifo => "fifo",
            FileKind::Device => "device",
            FileKind::Other => "special file",
        }
    }
}

/// What `stat` says about a file: enough to decide whether to trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Its kind.
    pub kind: FileKind,
    /// Owner uid.
    pub uid: u32,
    /// Group gid.
    pub gid: u32,
    /// Permission bits, with setuid, setgid and sticky (`& 0o7777`).
    pub mode: u32,
}

impl Meta {
    pub(crate) fn from_stat(st: &FileStat) -> Meta {
        Meta {
            kind: FileKind::from_mode(st.st_mode),
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        }
    }
}

/// Why a directory could not be opened (or created) without following a
/// symlink. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum OpenDirError {
    /// A name that is not one plain component, or a relative path with
    /// `.`, `..`, empty or absolute components.
    #[error(
        "{name:?} below {dir} is not a plain relative name (no '/', '.', '..' or empty components)"
    )]
    BadName {
        /// The directory it was to be looked up in.
        dir: PathBuf,
        /// The name.
        name: OsString,
    },
    /// A symlink where a directory should be.
    #[error("refusing to use {path}: it is a symlink (owner uid {owner}); symlinks are never followed here")]
    Symlink {
        /// Where.
        path: PathBuf,
        /// The symlink's owner.
        owner: u32,
    },
    /// Something other than a directory.
    #[error("refusing to use {path}: it is a {kind}, not a directory (owner uid {owner})")]
    NotADirectory {
        /// Where.
        path: PathBuf,
        /// What is there ([`FileKind::describe`]).
        kind: &'static str,
        /// Its owner.
        owner: u32,
    },
    /// Nothing there (and not asked to create it).
    #[error("directory {path} does not exist")]
    Missing {
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

/// Why `stat` of a name failed.
#[derive(Debug, thiserror::Error)]
pub enum StatError {
    /// Not one plain component.
    #[error("{name:?} in {dir} is not a plain file name")]
    BadName {
        /// The directory.
        dir: PathBuf,
        /// The name.
        name: OsString,
    },
    /// `fstat`/`fstatat` failed.
    #[error("checking {path}")]
    Io {
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    /// Not one plain component.
    #[error("{name:?} in {dir} is not a plain file name")]
    BadName {
        /// The directory.
        dir: PathBuf,
        /// The name.
        name: OsString,
    },
    /// A symlink at the name.
    #[error("refusing to read {path}: it is a symlink (owner uid {owner}); symlinks are never followed here")]
    Symlink {
        /// The file.
        path: PathBuf,
        /// The symlink's owner.
        owner: u32,
    },
    /// Not a regular file.
    #[error("refusing to read {path}: it is a {kind}, not a regular file (owner uid {owner})")]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What is there.
        kind: &'static str,
        /// Its owner.
        owner: u32,
    },
    /// Longer than the caller's limit.
    #[error("{path} is too large ({len} bytes, max {max})")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
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

/// Why a file could not be written into place.
#[derive(Debug, thiserror::Error)]
pub enum WriteFileError {
    /// Not one plain component.
    #[error("{name:?} in {dir} is not a plain file name")]
    BadName {
        /// The directory.
        dir: PathBuf,
        /// The name.
        name: OsString,
    },
    /// [`Dir::create_file_atomic`]: something is already at the name.
    #[error("refusing to create {path}: something is already there")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Every temporary name tried was taken.
    #[error(
        "no free temporary name in {dir} after {attempts} attempts; something keeps creating them"
    )]
    NoTempName {
        /// The directory.
        dir: PathBuf,
        /// How many were tried.
        attempts: u32,
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

/// Why a name could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// Not one plain component.
    #[error("{name:?} in {dir} is not a plain file name")]
    BadName {
        /// The directory.
        dir: PathBuf,
        /// The name.
        name: OsString,
    },
    /// `unlinkat` failed.
    #[error("removing {path}")]
    Io {
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What [`Dir::remove_dir`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveDirOutcome {
    /// The directory was empty and is gone.
    Removed,
    /// It holds something, so it was kept.
    NotEmpty,
    /// There was nothing at the name.
    Missing,
}

/// One directory [`Dir::walk`] opened, shown to the caller's check.
#[derive(Debug)]
pub struct WalkStep<'a> {
    /// The directory (its [`Dir::path`] is the full path, for messages).
    pub dir: &'a Dir,
    /// Its path relative to where the walk started.
    pub rel: &'a Path,
    /// Its owner, group and mode, from `fstat` on the open descriptor.
    pub meta: Meta,
    /// True if the walk created it.
    pub created: bool,
}

/// An open directory, and its path for messages.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn errno_io(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// True if `name` is one plain component: not empty, no `/`, not `.` or
/// `..`, no NUL.
fn plain_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
}

/// The components of a relative path, if it is exactly that: every
/// component plain, no leading `/`, no empty or `.` components (the text
/// must round-trip).
fn plain_components(rel: &Path) -> Option<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) if plain_name(n) => out.push(n),
            _ => return None,
        }
    }
    let rebuilt: PathBuf = out.iter().collect();
    (rebuilt.as_os_str() == rel.as_os_str()).then_some(out)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_name() -> OsString {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    OsString::from(format!(".wardentmp.{}.{n}.{ns:x}", std::process::id()))
}

impl Dir {
    /// Opens the directory at `path` (`open(2)` with `O_DIRECTORY`), as a
    /// starting point. The path is resolved by the kernel as given,
    /// symlinks included: pass only a path the caller chose (`/`, an
    /// administrator's `--root`) and check the result's [`Dir::meta`]; go
    /// below it with [`Dir::walk`].
    ///
    /// # Errors
    /// [`OpenDirError::Missing`], [`OpenDirError::NotADirectory`] or
    /// [`OpenDirError::Io`].
    pub fn open(path: &Path) -> Result<Dir, OpenDirError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        match openat(AT_FDCWD, path, flags, Mode::empty()) {
            Ok(fd) => Ok(Dir {
                fd,
                path: path.to_owned(),
            }),
            Err(Errno::ENOENT) => Err(OpenDirError::Missing {
                path: path.to_owned(),
            }),
            Err(Errno::ENOTDIR) => {
                let st =
                    fstatat(AT_FDCWD, path, AtFlags::empty()).map_err(|e| OpenDirError::Io {
                        op: "checking",
                        path: path.to_owned(),
                        source: errno_io(e),
                    })?;
                Err(OpenDirError::NotADirectory {
                    path: path.to_owned(),
                    kind: Meta::from_stat(&st).kind.describe(),
                    owner: st.st_uid,
                })
            }
            Err(e) => Err(OpenDirError::Io {
                op: "opening",
                path: path.to_owned(),
                source: errno_io(e),
            }),
        }
    }

    /// The directory's path (what it was opened as, joined with the names
    /// walked), for messages. The descriptor, not this path, is what every
    /// operation uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives up the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Owner, group and mode of the open directory itself (`fstat`).
    ///
    /// # Errors
    /// [`StatError::Io`].
    pub fn meta(&self) -> Result<Meta, StatError> {
        fstat(&self.fd)
            .map(|st| Meta::from_stat(&st))
            .map_err(|e| StatError::Io {
                path: self.path.clone(),
                source: errno_io(e),
            })
    }

    /// What is at `name` in this directory, without following a symlink
    /// (`fstatat(AT_SYMLINK_NOFOLLOW)`); `None` if nothing is.
    ///
    /// # Errors
    /// [`StatError::BadName`] for a name that is not one component;
    /// [`StatError::Io`].
    pub fn stat_at(&self, name: &OsStr) -> Result<Option<Meta>, StatError> {
        if !plain_name(name) {
            return Err(StatError::BadName {
                dir: self.path.clone(),
                name: name.to_owned(),
            });
        }
        match fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::from_stat(&st))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(StatError::Io {
                path: self.path.join(name),
                source: errno_io(e),
            }),
        }
    }

    /// Opens the directory `name` in this one with
    /// `openat(O_DIRECTORY|O_NOFOLLOW)`; `None` if nothing is there.
    ///
    /// # Errors
    /// [`OpenDirError::Symlink`] or [`OpenDirError::NotADirectory`] (naming
    /// the owner of what is there instead), [`OpenDirError::BadName`],
    /// [`OpenDirError::Io`].
    pub fn open_dir_nofollow(&self, name: &OsStr) -> Result<Option<Dir>, OpenDirError> {
        if !plain_name(name) {
            return Err(OpenDirError::BadName {
                dir: self.path.clone(),
                name: name.to_owned(),
            });
        }
        let path = self.path.join(name);
        match openat(&self.fd, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir { fd, path })),
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let st = fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| {
                    OpenDirError::Io {
                        op: "checking",
                        path: path.clone(),
                        source: errno_io(e),
                    }
                })?;
                let meta = Meta::from_stat(&st);
                if meta.kind == FileKind::Symlink {
                    Err(OpenDirError::Symlink {
                        path,
                        owner: meta.uid,
                    })
                } else {
                    Err(OpenDirError::NotADirectory {
                        path,
                        kind: meta.kind.describe(),
                        owner: meta.uid,
                    })
                }
            }
            Err(e) => Err(OpenDirError::Io {
                op: "opening",
                path,
                source: errno_io(e),
            }),
        }
    }

    /// Opens `name`, creating it first with `mode` if it is missing
    /// (`mkdirat`, then `openat(O_NOFOLLOW)` and `fchmod`, so the umask
    /// does not decide the mode). Returns the directory and whether this
    /// call created it (a directory someone else created or swapped in
    /// between is opened, not claimed, and its mode is left alone).
    ///
    /// # Errors
    /// As [`Dir::open_dir_nofollow`], and [`OpenDirError::Io`] for a
    /// failing `mkdirat` or `fchmod`.
    pub fn create_dir(&self, name: &OsStr, mode: u32) -> Result<(Dir, bool), OpenDirError> {
        if let Some(d) = self.open_dir_nofollow(name)? {
            return Ok((d, false));
        }
        let path = self.path.join(name);
        let created = match mkdirat(&self.fd, name, Mode::from_bits_truncate(mode & 0o7777)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => {
                return Err(OpenDirError::Io {
                    op: "creating",
                    path,
                    source: errno_io(e),
                })
            }
        };
        let dir = self
            .open_dir_nofollow(name)?
            .ok_or(OpenDirError::Missing { path: path.clone() })?;
        // What is there now is ours only if we own it: in a directory
        // others can write, ours could have been swapped for theirs
        // between mkdirat and openat. Theirs is neither chmodded nor
        // claimed.
        let created =
            created && fstat(&dir.fd).is_ok_and(|st| st.st_uid == nix::unistd::geteuid().as_raw());
        if created {
            fchmod(&dir.fd, Mode::from_bits_truncate(mode & 0o7777)).map_err(|e| {
                OpenDirError::Io {
                    op: "setting the mode of",
                    path,
                    source: errno_io(e),
                }
            })?;
        }
        Ok((dir, created))
    }

    /// Walks `rel` down from this directory one component at a time with
    /// `openat(O_DIRECTORY|O_NOFOLLOW)`, creating missing components with
    /// `create` (a mode) if given, and calls `check` on each directory as
    /// it is opened, before going below it. Returns the last one (a
    /// duplicate of this one for an empty `rel`).
    ///
    /// This is the one routine for "reach a directory nobody can redirect":
    /// the broker's socket directory and the files `wardenctl install`
    /// writes are both reached through it.
    ///
    /// # Errors
    /// The first error of `check`, or an [`OpenDirError`] (converted into
    /// `E`): [`OpenDirError::Missing`] for a missing component when `create`
    /// is `None`, [`OpenDirError::Symlink`], [`OpenDirError::NotADirectory`],
    /// [`OpenDirError::BadName`] for a `rel` that is not plain and relative.
    pub fn walk<E, F>(&self, rel: &Path, create: Option<u32>, mut check: F) -> Result<Dir, E>
    where
        E: From<OpenDirError>,
        F: FnMut(&WalkStep<'_>) -> Result<(), E>,
    {
        let parts = plain_components(rel).ok_or_else(|| OpenDirError::BadName {
            dir: self.path.clone(),
            name: rel.as_os_str().to_owned(),
        })?;
        let mut cur = self.try_clone()?;
        let mut at = PathBuf::new();
        for part in parts {
            at.push(part);
            let (next, created) = match create {
                Some(mode) => cur.create_dir(part, mode)?,
                None => (
                    cur.open_dir_nofollow(part)?
                        .ok_or_else(|| OpenDirError::Missing {
                            path: cur.path.join(part),
                        })?,
                    false,
                ),
            };
            let meta = fstat(&next.fd)
                .map(|st| Meta::from_stat(&st))
                .map_err(|e| OpenDirError::Io {
                    op: "checking",
                    path: next.path.clone(),
                    source: errno_io(e),
                })?;
            check(&WalkStep {
                dir: &next,
                rel: &at,
                meta,
                created,
            })?;
            cur = next;
        }
        Ok(cur)
    }

    fn try_clone(&self) -> Result<Dir, OpenDirError> {
        Ok(Dir {
            fd: self.fd.try_clone().map_err(|source| OpenDirError::Io {
                op: "duplicating the descriptor of",
                path: self.path.clone(),
                source,
            })?,
            path: self.path.clone(),
        })
    }

    /// Reads the regular file `name` (at most `max` bytes), opened with
    /// `O_NOFOLLOW|O_NONBLOCK` (a FIFO planted at the name cannot block
    /// the reader) and checked with `fstat`. Returns its bytes and its
    /// [`Meta`] (owner and mode, to decide whether to trust it), or `None`
    /// if nothing is there.
    ///
    /// # Errors
    /// [`ReadFileError::Symlink`], [`ReadFileError::NotAFile`],
    /// [`ReadFileError::TooLarge`], [`ReadFileError::BadName`],
    /// [`ReadFileError::Io`].
    pub fn read_file(
        &self,
        name: &OsStr,
        max: u64,
    ) -> Result<Option<(Vec<u8>, Meta)>, ReadFileError> {
        if !plain_name(name) {
            return Err(ReadFileError::BadName {
                dir: self.path.clone(),
                name: name.to_owned(),
            });
        }
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => {
                let owner = fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map(|s| s.st_uid)
                    .unwrap_or(u32::MAX);
                return Err(ReadFileError::Symlink { path, owner });
            }
            Err(e) => {
                return Err(ReadFileError::Io {
                    op: "opening",
                    path,
                    source: errno_io(e),
                })
            }
        };
        let st = fstat(&fd).map_err(|e| ReadFileError::Io {
            op: "checking",
            path: path.clone(),
            source: errno_io(e),
        })?;
        let meta = Meta::from_stat(&st);
        if meta.kind != FileKind::Regular {
            return Err(ReadFileError::NotAFile {
                path,
                kind: meta.kind.describe(),
                owner: meta.uid,
            });
        }
        let len = u64::try_from(st.st_size).unwrap_or(u64::MAX);
        if len > max {
            return Err(ReadFileError::TooLarge { path, len, max });
        }
        let mut bytes = Vec::new();
        File::from(fd)
            .take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| ReadFileError::Io {
                op: "reading",
                path: path.clone(),
                source,
            })?;
        let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if read > max {
            return Err(ReadFileError::TooLarge {
                path,
                len: read,
                max,
            });
        }
        Ok(Some((bytes, meta)))
    }

    /// Writes `bytes` to `name` with exactly `mode`, replacing whatever
    /// entry is at `name` (a symlink there is replaced, never followed):
    /// a fresh temporary file is created with
    /// `openat(O_CREAT|O_EXCL|O_NOFOLLOW)`, `fchmod`ed, written,
    /// `fsync`ed, and `renameat`ed onto `name` in this directory, which is
    /// then `fsync`ed. Readers see the old file or the new one, never a
    /// part.
    ///
    /// # Errors
    /// [`WriteFileError::BadName`], [`WriteFileError::NoTempName`],
    /// [`WriteFileError::Io`] (naming the step). The temporary file is
    /// removed on failure.
    pub fn write_file_atomic(
        &self,
        name: &OsStr,
        bytes: &[u8],
        mode: u32,
    ) -> Result<(), WriteFileError> {
        self.write_file(name, bytes, mode, true)
    }

    /// Like [`Dir::write_file_atomic`], but never replaces: the finished
    /// temporary file is put in place with `linkat`, which fails if
    /// anything (a symlink included) is at `name`.
    ///
    /// # Errors
    /// [`WriteFileError::Exists`] if something is at `name`; otherwise as
    /// [`Dir::write_file_atomic`].
    pub fn create_file_atomic(
        &self,
        name: &OsStr,
        bytes: &[u8],
        mode: u32,
    ) -> Result<(), WriteFileError> {
        self.write_file(name, bytes, mode, false)
    }

    fn write_file(
        &self,
        name: &OsStr,
        bytes: &[u8],
        mode: u32,
        replace: bool,
    ) -> Result<(), WriteFileError> {
        if !plain_name(name) {
            return Err(WriteFileError::BadName {
                dir: self.path.clone(),
                name: name.to_owned(),
            });
        }
        let path = self.path.join(name);
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |e: Errno| WriteFileError::Io {
                op,
                path,
                source: errno_io(e),
            }
        };
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOFOLLOW
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let mut attempt = 0;
        let (tmp, fd) = loop {
            if attempt == TEMP_NAME_ATTEMPTS {
                return Err(WriteFileError::NoTempName {
                    dir: self.path.clone(),
                    attempts: attempt,
                });
            }
            attempt += 1;
            let tmp = temp_name();
            match openat(
                &self.fd,
                tmp.as_os_str(),
                flags,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => break (tmp, fd),
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(io("creating a temporary file in", &self.path)(e)),
            }
        };
        let tmp_path = self.path.join(&tmp);
        let result = (|| {
            fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777))
                .map_err(io("setting the mode of", &tmp_path))?;
            let mut file = File::from(fd);
            file.write_all(bytes).map_err(|source| WriteFileError::Io {
                op: "writing",
                path: tmp_path.clone(),
                source,
            })?;
            file.sync_all().map_err(|source| WriteFileError::Io {
                op: "syncing",
                path: tmp_path.clone(),
                source,
            })?;
            drop(file);
            if replace {
                renameat(&self.fd, tmp.as_os_str(), &self.fd, name)
                    .map_err(io("moving into place", &path))?;
            } else {
                match linkat(&self.fd, tmp.as_os_str(), &self.fd, name, AtFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) => {
                        return Err(WriteFileError::Exists { path: path.clone() })
                    }
                    Err(e) => return Err(io("linking into place", &path)(e)),
                }
                let _ = unlinkat(&self.fd, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
            fsync(&self.fd).map_err(io("syncing", &self.path))
        })();
        if result.is_err() {
            // Our own temporary name (or, after a rename, nothing).
            let _ = unlinkat(&self.fd, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
        result
    }

    /// Removes the entry `name` (not a directory) with `unlinkat`; a
    /// symlink there is removed itself, its target untouched. Returns
    /// false if nothing was there.
    ///
    /// # Errors
    /// [`RemoveError::BadName`]; [`RemoveError::Io`] (`EISDIR` for a
    /// directory).
    pub fn unlink(&self, name: &OsStr) -> Result<bool, RemoveError> {
        if !plain_name(name) {
            return Err(RemoveError::BadName {
                dir: self.path.clone(),
                name: name.to_owned(),
            });
        }
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(RemoveError::Io {
                path: self.path.join(name),
                source: errno_io(e),
            }),
        }
    }

    /// Removes the directory `name` if it is empty
    /// (`unlinkat(AT_REMOVEDIR)`; a symlink at the name is not followed
    /// and gives `ENOTDIR`).
    ///
    /// # Errors
    /// [`RemoveError::BadName`]; [`RemoveError::Io`] for anything but
    /// "not empty" and "missing".
    pub fn remove_dir(&self, name: &OsStr) -> Result<RemoveDirOutcome, RemoveError> {
        if !plain_name(name) {
            return Err(RemoveError::BadName {
                dir: self.path.clone(),
                name: name.to_owned(),
            });
        }
        match unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
            Ok(()) => Ok(RemoveDirOutcome::Removed),
            Err(Errno::ENOENT) => Ok(RemoveDirOutcome::Missing),
            Err(Errno::ENOTEMPTY | Errno::EEXIST) => Ok(RemoveDirOutcome::NotEmpty),
            Err(e) => Err(RemoveError::Io {
                path: self.path.join(name),
                source: errno_io(e),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    type R = Result<(), Box<dyn std::error::Error>>;

    /// A fresh directory under the temp dir (no root needed).
    fn scratch(tag: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "warden-sys-fs_at-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        Ok(p)
    }

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn names_with_slashes_dots_or_nothing_are_refused_everywhere() -> R {
        let d = scratch("names")?;
        let dir = Dir::open(&d)?;
        for bad in ["", ".", "..", "a/b", "../x", "/etc/passwd"] {
            assert!(
                matches!(dir.stat_at(os(bad)), Err(StatError::BadName { .. })),
                "{bad:?}"
            );
            assert!(
                matches!(
                    dir.open_dir_nofollow(os(bad)),
                    Err(OpenDirError::BadName { .. })
                ),
                "{bad:?}"
            );
            assert!(
                matches!(dir.unlink(os(bad)), Err(RemoveError::BadName { .. })),
                "{bad:?}"
            );
            assert!(
                matches!(dir.remove_dir(os(bad)), Err(RemoveError::BadName { .. })),
                "{bad:?}"
            );
            assert!(
                matches!(
                    dir.read_file(os(bad), 10),
                    Err(ReadFileError::BadName { .. })
                ),
                "{bad:?}"
            );
            assert!(
                matches!(
                    dir.write_file_atomic(os(bad), b"x", 0o644),
                    Err(WriteFileError::BadName { .. })
                ),
                "{bad:?}"
            );
        }
        for bad in ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "a/"] {
            let r: Result<Dir, OpenDirError> = dir.walk(Path::new(bad), Some(0o755), |_| Ok(()));
            if bad.is_empty() {
                // An empty walk is the directory itself.
                assert!(r.is_ok());
            } else {
                assert!(
                    matches!(r, Err(OpenDirError::BadName { .. })),
                    "{bad:?}: {r:?}"
                );
            }
        }
        assert_eq!(std::fs::read_dir(&d)?.count(), 0, "nothing was created");
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn walk_creates_with_the_mode_checks_each_step_and_refuses_symlinks() -> R {
        let d = scratch("walk")?;
        let dir = Dir::open(&d)?;
        let mut seen = Vec::new();
        let leaf: Dir = dir.walk(
            Path::new("a/b/c"),
            Some(0o751),
            |s: &WalkStep<'_>| -> Result<(), OpenDirError> {
                seen.push((s.rel.to_path_buf(), s.created, s.meta.mode, s.meta.kind));
                Ok(())
            },
        )?;
        assert_eq!(leaf.path(), d.join("a/b/c"));
        assert_eq!(
            seen,
            ["a", "a/b", "a/b/c"].map(|p| (PathBuf::from(p), true, 0o751, FileKind::Directory))
        );
        assert_eq!(std::fs::metadata(d.join("a/b"))?.mode() & 0o7777, 0o751);
        // Again: nothing created.
        let mut created = 0;
        dir.walk(
            Path::new("a/b"),
            Some(0o755),
            |s: &WalkStep<'_>| -> Result<(), OpenDirError> {
                created += usize::from(s.created);
                Ok(())
            },
        )?;
        assert_eq!(created, 0);
        // Missing without create.
        let r: Result<Dir, OpenDirError> = dir.walk(Path::new("a/nope/x"), None, |_| Ok(()));
        assert!(matches!(r, Err(OpenDirError::Missing { path }) if path == d.join("a/nope")));
        // A check's refusal stops the walk before going below.
        let r: Result<Dir, OpenDirError> = dir.walk(Path::new("a/b/new"), Some(0o755), |s| {
            if s.rel == Path::new("a/b") {
                Err(OpenDirError::Missing {
                    path: s.dir.path().to_owned(),
                })
            } else {
                Ok(())
            }
        });
        assert!(r.is_err());
        assert!(
            !d.join("a/b/new").exists(),
            "nothing is created below a refused directory"
        );
        // A symlinked component, to a directory or to a file: refused,
        // nothing created through it.
        let elsewhere = scratch("walk-elsewhere")?;
        std::os::unix::fs::symlink(&elsewhere, d.join("link"))?;
        let r: Result<Dir, OpenDirError> = dir.walk(Path::new("link/x"), Some(0o755), |_| Ok(()));
        assert!(
            matches!(r, Err(OpenDirError::Symlink { ref path, .. }) if *path == d.join("link")),
            "{r:?}"
        );
        assert_eq!(std::fs::read_dir(&elsewhere)?.count(), 0);
        std::fs::write(d.join("file"), "x")?;
        let r: Result<Dir, OpenDirError> = dir.walk(Path::new("file/x"), Some(0o755), |_| Ok(()));
        assert!(
            matches!(
                r,
                Err(OpenDirError::NotADirectory {
                    kind: "regular file",
                    ..
                })
            ),
            "{r:?}"
        );
        std::fs::remove_dir_all(&d)?;
        std::fs::remove_dir_all(&elsewhere)?;
        Ok(())
    }

    #[test]
    fn write_file_atomic_sets_the_mode_and_replaces_a_symlink_without_following_it() -> R {
        let d = scratch("write")?;
        let dir = Dir::open(&d)?;
        dir.write_file_atomic(os("f"), b"one", 0o640)?;
        assert_eq!(std::fs::read(d.join("f"))?, b"one");
        assert_eq!(std::fs::metadata(d.join("f"))?.mode() & 0o7777, 0o640);
        dir.write_file_atomic(os("f"), b"two", 0o644)?;
        assert_eq!(std::fs::read(d.join("f"))?, b"two");
        assert_eq!(std::fs::metadata(d.join("f"))?.mode() & 0o7777, 0o644);
        // A symlink at the final name is replaced; its target is untouched.
        let victim = d.join("victim");
        std::fs::write(&victim, "keep")?;
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600))?;
        std::os::unix::fs::symlink(&victim, d.join("g"))?;
        dir.write_file_atomic(os("g"), b"new", 0o644)?;
        assert!(std::fs::symlink_metadata(d.join("g"))?
            .file_type()
            .is_file());
        assert_eq!(std::fs::read_to_string(&victim)?, "keep");
        assert_eq!(std::fs::metadata(&victim)?.mode() & 0o7777, 0o600);
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(&d)?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(".wardentmp")),
            "{names:?}"
        );
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn create_file_atomic_never_replaces_not_even_a_dangling_symlink() -> R {
        let d = scratch("create")?;
        let dir = Dir::open(&d)?;
        dir.create_file_atomic(os("c"), b"first", 0o644)?;
        assert!(matches!(
            dir.create_file_atomic(os("c"), b"second", 0o644),
            Err(WriteFileError::Exists { .. })
        ));
        assert_eq!(std::fs::read(d.join("c"))?, b"first");
        let target = d.join("would-be-created");
        std::os::unix::fs::symlink(&target, d.join("dangling"))?;
        assert!(matches!(
            dir.create_file_atomic(os("dangling"), b"x", 0o644),
            Err(WriteFileError::Exists { .. })
        ));
        assert!(!target.exists());
        let names: Vec<String> = std::fs::read_dir(&d)?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(".wardentmp")),
            "{names:?}"
        );
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn read_file_refuses_symlinks_fifos_and_oversized_files() -> R {
        let d = scratch("read")?;
        let dir = Dir::open(&d)?;
        assert!(dir.read_file(os("none"), 10)?.is_none());
        std::fs::write(d.join("f"), "hello")?;
        let Some((bytes, meta)) = dir.read_file(os("f"), 10)? else {
            panic!("f is there")
        };
        assert_eq!(bytes, b"hello");
        assert_eq!(meta.kind, FileKind::Regular);
        assert!(matches!(
            dir.read_file(os("f"), 4),
            Err(ReadFileError::TooLarge { len: 5, max: 4, .. })
        ));
        std::os::unix::fs::symlink(d.join("f"), d.join("l"))?;
        assert!(matches!(
            dir.read_file(os("l"), 10),
            Err(ReadFileError::Symlink { .. })
        ));
        nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o600))?;
        // O_NONBLOCK: returns at once instead of waiting for a writer.
        assert!(matches!(
            dir.read_file(os("fifo"), 10),
            Err(ReadFileError::NotAFile { kind: "fifo", .. })
        ));
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn unlink_removes_a_symlink_not_its_target_and_remove_dir_keeps_what_is_not_empty() -> R {
        let d = scratch("unlink")?;
        let dir = Dir::open(&d)?;
        let victim = d.join("victim");
        std::fs::write(&victim, "keep")?;
        std::os::unix::fs::symlink(&victim, d.join("l"))?;
        assert!(dir.unlink(os("l"))?);
        assert!(!dir.unlink(os("l"))?);
        assert!(victim.exists());
        std::fs::create_dir(d.join("full"))?;
        std::fs::write(d.join("full/x"), "")?;
        assert_eq!(dir.remove_dir(os("full"))?, RemoveDirOutcome::NotEmpty);
        std::fs::create_dir(d.join("empty"))?;
        assert_eq!(dir.remove_dir(os("empty"))?, RemoveDirOutcome::Removed);
        assert_eq!(dir.remove_dir(os("empty"))?, RemoveDirOutcome::Missing);
        // A symlink to a directory is not followed by remove_dir.
        let other = scratch("unlink-other")?;
        std::os::unix::fs::symlink(&other, d.join("dl"))?;
        assert!(dir.remove_dir(os("dl")).is_err());
        assert!(other.exists());
        assert!(matches!(
            dir.unlink(os("full")),
            Err(RemoveError::Io { .. })
        ));
        std::fs::remove_dir_all(&d)?;
        std::fs::remove_dir_all(&other)?;
        Ok(())
    }
}
