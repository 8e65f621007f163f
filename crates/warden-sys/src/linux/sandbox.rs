//! What a child host may do, built in the parent and applied in the child
//! between fork and exec (see `spawn.rs`): a Landlock ruleset (which files
//! it may read, execute and write) and a seccomp filter (system calls it
//! is refused with `EPERM`).
//!
//! Both are prepared completely here, before the fork: the ruleset as a
//! descriptor (the child only calls `landlock_restrict_self` on it), the
//! filter as BPF instructions (the child only installs them). Both apply
//! to the child's exec and everything it runs afterwards, modules and
//! their children included; neither can be lifted.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Access to the file system, for [`landlock_ruleset`].
#[derive(Debug, Clone, Default)]
pub struct FsAccess {
    /// Read (files and directories) and execute, beneath each path.
    pub read: Vec<PathBuf>,
    /// Read, execute and write (create, remove, truncate...), beneath each.
    pub write: Vec<PathBuf>,
}

/// Why a sandbox could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel has no (usable) Landlock.
    #[error("this kernel does not support Landlock ({0}); remove the host's read_paths and write_paths, or run a kernel with Landlock (5.13+, lsm=landlock)")]
    LandlockUnsupported(String),
    /// A path could not be opened for a rule.
    #[error("{path}: {source} (a Landlock rule needs an existing path)")]
    Path {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The ruleset could not be built.
    #[error("building the Landlock ruleset: {0}")]
    Landlock(String),
    /// A system call name this machine's table does not know.
    #[error("unknown system call {0:?} (x86-64 names, as in syscall(2))")]
    UnknownSyscall(String),
}

/// A Landlock ruleset handling every file-system access this kernel
/// knows, granting only `access`; returned as its descriptor, for
/// [`crate::ChildSpec::landlock`]. A path that does not exist is an error:
/// a rule silently left out would deny what the administrator granted.
///
/// # Errors
/// [`SandboxError`].
pub fn landlock_ruleset(access: &FsAccess) -> Result<OwnedFd, SandboxError> {
    use landlock::{
        Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, ABI,
    };
    let abi = ABI::V5;
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        .and_then(|r| r.create())
        .map_err(|e| SandboxError::LandlockUnsupported(e.to_string()))?;
    let rule = |p: &Path| {
        PathFd::new(p).map_err(|e| SandboxError::Path {
            path: p.to_owned(),
            source: io::Error::other(e.to_string()),
        })
    };
    // A rule on a file may only carry rights that apply to files.
    let file = AccessFs::from_file(abi);
    let fit = |p: &Path, want: landlock::BitFlags<AccessFs>| {
        if p.is_dir() {
            want
        } else {
            want & file
        }
    };
    for p in &access.read {
        ruleset = ruleset
            .add_rule(PathBeneath::new(rule(p)?, fit(p, read)))
            .map_err(|e| SandboxError::Landlock(format!("{}: {e}", p.display())))?;
    }
    for p in &access.write {
        ruleset = ruleset
            .add_rule(PathBeneath::new(rule(p)?, fit(p, all)))
            .map_err(|e| SandboxError::Landlock(format!("{}: {e}", p.display())))?;
    }
    Option::<OwnedFd>::from(ruleset)
        .ok_or_else(|| SandboxError::LandlockUnsupported("no ruleset descriptor".into()))
}

/// The number of the system call `name` on this machine.
///
/// # Errors
/// [`SandboxError::UnknownSyscall`].
pub fn syscall_number(name: &str) -> Result<u32, SandboxError> {
    let n: syscalls::Sysno = name
        .parse()
        .map_err(|_| SandboxError::UnknownSyscall(name.to_owned()))?;
    u32::try_from(n.id()).map_err(|_| SandboxError::UnknownSyscall(name.to_owned()))
}

/// A seccomp program: BPF instructions, as [`seccomp_deny_filter`] makes
/// them and [`crate::ChildSpec::seccomp`] takes them.
pub type SeccompProgram = Vec<libc::sock_filter>;

/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Syscall numbers at or above this are the x32 ABI's.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// A seccomp filter that refuses the system calls `denied` (numbers) with
/// `EPERM` and allows everything else; a call from another architecture
/// (or the x32 ABI, whose numbers would slip past the list) kills the
/// process. For [`crate::ChildSpec::seccomp`].
pub fn seccomp_deny_filter(denied: &[u32]) -> SeccompProgram {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let ret_errno = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
    let mut f = vec![
        // seccomp_data.arch
        stmt(BPF_LD | BPF_W | BPF_ABS, 4),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        // seccomp_data.nr
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
        jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    for &nr in denied {
        f.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1));
        f.push(stmt(BPF_RET | BPF_K, ret_errno));
    }
    f.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_names_resolve_and_unknown_ones_are_refused() {
        assert_eq!(syscall_number("ptrace").ok(), Some(101));
        assert_eq!(syscall_number("getpgid").ok(), Some(121));
        assert!(matches!(
            syscall_number("nosuchcall"),
            Err(SandboxError::UnknownSyscall(_))
        ));
    }

    #[test]
    fn the_filter_checks_the_architecture_first_and_ends_allowing() {
        let f = seccomp_deny_filter(&[101, 121]);
        assert_eq!(f.len(), 6 + 2 * 2 + 1);
        assert_eq!(f[0].k, 4, "loads the arch");
        assert_eq!(f[1].k, AUDIT_ARCH_X86_64);
        assert_eq!(f[6].k, 101);
        assert_eq!(f[8].k, 121);
        assert_eq!(f[10].k, libc::SECCOMP_RET_ALLOW);
    }
}
