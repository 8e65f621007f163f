//! Opening a file only root can have put there: a module a host loads.
//!
//! The file and every directory on its path must be owned by root and
//! writable by nobody else (no group or other write bit), checked
//! component by component from `/` without following a symlink. The caller gets the open
//! descriptor, so the file checked is the file used (loaded through
//! `/proc/self/fd/N`), whatever is renamed over the path afterwards.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use super::fs_at::{FileKind, Meta, OpenDirError, ReadFileError};

/// Why a file was not trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustedFileError {
    /// Not an absolute path of plain components.
    #[error("{0}: a module path must be absolute, without `.` or `..`")]
    NotAbsolute(PathBuf),
    /// A directory on the way could be changed by someone other than root.
    #[error("{path} is owned by uid {uid} with mode {mode:o}: every directory above a module must be root's and writable by nobody else")]
    UntrustedDir {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its mode.
        mode: u32,
    },
    /// The file itself could be changed by someone other than root.
    #[error("{path} is owned by uid {uid} with mode {mode:o}: a module must be root's and writable by nobody else")]
    UntrustedFile {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its mode.
        mode: u32,
    },
    /// Nothing there.
    #[error("{0} does not exist")]
    Missing(PathBuf),
    /// A directory could not be walked.
    #[error(transparent)]
    Dir(#[from] OpenDirError),
    /// The file could not be opened (a symlink, not a regular file...).
    #[error(transparent)]
    File(#[from] ReadFileError),
}

fn trusted(meta: &Meta) -> bool {
    meta.uid == 0 && meta.mode & 0o022 == 0
}

/// Opens `path` for reading if it and every directory above it are
/// root's and writable by nobody else (see the module docs).
///
/// Directories are walked with `O_PATH` descriptors (no read access to
/// them is needed: a host under Landlock may load a module it was granted
/// without being allowed to list `/`), each checked with `fstat`; only the
/// file itself is opened for reading.
///
/// # Errors
/// [`TrustedFileError`], naming the component that failed.
pub fn open_trusted_file(path: &Path) -> Result<OwnedFd, TrustedFileError> {
    use nix::errno::Errno;
    use nix::fcntl::{openat, OFlag, AT_FDCWD};
    use nix::sys::stat::{fstat, Mode};
    let not_abs = || TrustedFileError::NotAbsolute(path.to_owned());
    if !path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(not_abs());
    }
    let name: &OsStr = path.file_name().ok_or_else(not_abs)?;
    let parent = path.parent().ok_or_else(not_abs)?;
    let io = |op: &'static str, at: &Path, e: Errno| {
        TrustedFileError::Dir(OpenDirError::Io {
            op,
            path: at.to_owned(),
            source: std::io::Error::from(e),
        })
    };
    let check_dir = |fd: &OwnedFd, at: &Path| -> Result<(), TrustedFileError> {
        let st = fstat(fd).map_err(|e| io("checking", at, e))?;
        let meta = Meta::from_stat(&st);
        if trusted(&meta) {
            Ok(())
        } else {
            Err(TrustedFileError::UntrustedDir {
                path: at.to_owned(),
                uid: meta.uid,
                mode: meta.mode,
            })
        }
    };
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut at = PathBuf::from("/");
    let mut dir =
        openat(AT_FDCWD, "/", dir_flags, Mode::empty()).map_err(|e| io("opening", &at, e))?;
    check_dir(&dir, &at)?;
    for part in parent.components().skip(1) {
        at.push(part);
        dir = match openat(&dir, part.as_os_str(), dir_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(TrustedFileError::Missing(path.to_owned())),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(TrustedFileError::File(ReadFileError::Symlink {
                    path: at.clone(),
                    owner: u32::MAX,
                }))
            }
            Err(e) => return Err(io("opening", &at, e)),
        };
        check_dir(&dir, &at)?;
    }
    let file_flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match openat(&dir, name, file_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Err(TrustedFileError::Missing(path.to_owned())),
        Err(Errno::ELOOP) => {
            return Err(TrustedFileError::File(ReadFileError::Symlink {
                path: path.to_owned(),
                owner: u32::MAX,
            }))
        }
        Err(e) => return Err(io("opening", path, e)),
    };
    let st = fstat(&fd).map_err(|e| io("checking", path, e))?;
    let meta = Meta::from_stat(&st);
    if meta.kind != FileKind::Regular {
        return Err(TrustedFileError::File(ReadFileError::NotAFile {
            path: path.to_owned(),
            kind: meta.kind.describe(),
            owner: meta.uid,
        }));
    }
    if !trusted(&meta) {
        return Err(TrustedFileError::UntrustedFile {
            path: path.to_owned(),
            uid: meta.uid,
            mode: meta.mode,
        });
    }
    Ok(fd)
}

/// A sealed in-memory copy of the open file `src` (a module checked with
/// [`open_trusted_file`]), named `name` in `/proc/PID/maps`
/// (`/memfd:NAME`): loading it gives a new object even when the loader
/// already holds one made from the same file (a reload), and the seals
/// (write, grow, shrink, seal) mean nobody can change the copy once it is
/// made, not even through the descriptor.
///
/// # Errors
/// `memfd_create`, the copy or the seals failed (`ENOMEM`, `EMFILE`...).
pub fn sealed_copy(src: &OwnedFd, name: &str) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let mut from = std::fs::File::from(src.try_clone()?);
    std::io::Seek::seek(&mut from, std::io::SeekFrom::Start(0))?;
    // MFD_EXEC (Linux 6.3): executable even where vm.memfd_noexec makes
    // memfds noexec by default; older kernels refuse the flag (EINVAL).
    const MFD_EXEC: MFdFlags = MFdFlags::from_bits_retain(0x0010);
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let mem = match memfd_create(name, flags | MFD_EXEC) {
        Err(nix::errno::Errno::EINVAL) => memfd_create(name, flags),
        r => r,
    }
    .map_err(std::io::Error::from)?;
    let mut to = std::fs::File::from(mem);
    std::io::copy(&mut from, &mut to)?;
    let mem = OwnedFd::from(to);
    fcntl(
        &mem,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(std::io::Error::from)?;
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn relative_and_dotted_paths_are_refused() {
        for p in ["lib/x.so", "/usr/lib/../lib/x.so", "./x.so"] {
            assert!(
                matches!(
                    open_trusted_file(Path::new(p)),
                    Err(TrustedFileError::NotAbsolute(_))
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn a_sealed_copy_has_the_same_bytes_and_cannot_be_written() {
        use std::io::{Read, Write};
        let sh =
            std::fs::canonicalize("/bin/sh").unwrap_or_else(|_| PathBuf::from("/usr/bin/dash"));
        let fd = open_trusted_file(&sh).unwrap_or_else(|e| panic!("{e}"));
        let copy = sealed_copy(&fd, "warden-t").unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = Vec::new();
        let mut f = std::fs::File::from(copy);
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).unwrap_or_else(|e| panic!("{e}"));
        f.read_to_end(&mut bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bytes, std::fs::read(&sh).unwrap_or_else(|e| panic!("{e}")));
        match f.write_all(b"x") {
            Ok(()) => panic!("a sealed copy must refuse writes"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(nix::libc::EPERM), "{e}"),
        }
    }

    #[test]
    fn a_root_owned_system_file_is_trusted() {
        // /bin/sh's target is root's on every Debian system; /bin may be a
        // symlink (usrmerge), so take the real directory.
        let sh =
            std::fs::canonicalize("/bin/sh").unwrap_or_else(|_| PathBuf::from("/usr/bin/dash"));
        assert!(open_trusted_file(&sh).is_ok(), "{}", sh.display());
    }

    #[test]
    #[ignore = "needs root"]
    fn writable_files_and_directories_and_symlinks_are_refused() {
        let base = PathBuf::from(format!("/run/warden-trusted-t-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        };
        std::fs::create_dir_all(base.join("ok")).unwrap_or_else(|e| panic!("{e}"));
        set(&base, 0o755);
        set(&base.join("ok"), 0o755);
        let file = base.join("ok/m.so");
        std::fs::write(&file, b"x").unwrap_or_else(|e| panic!("{e}"));
        set(&file, 0o644);
        assert!(open_trusted_file(&file).is_ok());
        // Group-writable file.
        set(&file, 0o664);
        assert!(matches!(
            open_trusted_file(&file),
            Err(TrustedFileError::UntrustedFile { .. })
        ));
        set(&file, 0o644);
        // World-writable directory on the way.
        set(&base.join("ok"), 0o777);
        assert!(matches!(
            open_trusted_file(&file),
            Err(TrustedFileError::UntrustedDir { .. })
        ));
        set(&base.join("ok"), 0o755);
        // A file owned by someone else.
        nix::unistd::chown(&file, Some(nix::unistd::Uid::from_raw(64_901)), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            open_trusted_file(&file),
            Err(TrustedFileError::UntrustedFile { uid: 64_901, .. })
        ));
        // A symlink to a trusted file is not followed.
        let link = base.join("ok/link.so");
        std::os::unix::fs::symlink("/usr/bin/env", &link).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            open_trusted_file(&link),
            Err(TrustedFileError::File(ReadFileError::Symlink { .. }))
        ));
        let _ = std::fs::remove_dir_all(&base);
    }
}
