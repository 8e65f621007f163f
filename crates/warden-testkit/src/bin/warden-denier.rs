//! `warden-denier DIR`: the learning-mode test program. Run as an
//! unprivileged user, it is denied exactly these operations, and nothing
//! else (`DIR` is prepared by the test, see `learn.rs` in the cross tests):
//!
//! 1. `openat("/etc/shadow", O_RDONLY)`: EACCES (root-only file);
//! 2. `openat("DIR/rootdir/new", O_CREAT|O_WRONLY)`: EACCES (a root-owned
//!    0755 directory);
//! 3. `openat("DIR/ro555/new", O_CREAT|O_WRONLY)`: EACCES (the user's own
//!    directory, mode 0555);
//! 4. `fchmodat("DIR/otherfile", 0600)`: EPERM (another user's file);
//! 5. in a grandchild (a child of a child), with its cwd in
//!    `DIR/rootdir`: `openat(AT_FDCWD, "rel-new", O_CREAT|O_WRONLY)`:
//!    EACCES, reported as `DIR/rootdir/rel-new`.
//!
//! It exits with status 7 once its child (and so its grandchild) is done.
//!
//! `warden-denier secrets DIR XONLY`: the non-dumpable test. Is denied
//! `/etc/shadow` itself (a process that stays dumpable), then runs two
//! children that each try to create a file with a secret name in
//! `DIR/rootdir` (EACCES) after becoming non-dumpable:
//! - `warden-denier nondumpable PATH`: `prctl(PR_SET_DUMPABLE, 0)` first
//!   (what ssh-agent and gpg-agent do);
//! - `XONLY open PATH`: `XONLY` is a copy of this program the user may
//!   execute but not read (0711), so the exec leaves it non-dumpable.
//!
//! The secret names are built here, not passed on a command line, as a
//! path compiled into a binary would be: `SECRET_NONDUMPABLE` and
//! `SECRET_EXEC_ONLY` below. Exits with status 7.
//!
//! `warden-denier root-nondumpable DIR` (DIR unused): for root, whom file permissions do not
//! stop: `prctl(PR_SET_DUMPABLE, 0)`, then `unlink("/proc/version")`,
//! which procfs refuses with EPERM. Exits with status 7.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, ExitCode};

fn create(path: &Path) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path);
}

/// The file name `nondumpable` tries to create (the test looks for it).
const SECRET_NONDUMPABLE: &str = "warden-secret-after-prctl-5c91e7";
/// The file name `open` tries to create.
const SECRET_EXEC_ONLY: &str = "warden-secret-in-execute-only-0a7d3b";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: warden-denier main|child|grandchild DIR");
        return ExitCode::from(2);
    };
    let dir = Path::new(dir);
    let me = std::env::current_exe().unwrap_or_default();
    match mode.as_str() {
        "main" => {
            let _ = std::fs::File::open("/etc/shadow");
            create(&dir.join("rootdir/new"));
            create(&dir.join("ro555/new"));
            let _ = std::fs::set_permissions(
                dir.join("otherfile"),
                std::fs::Permissions::from_mode(0o600),
            );
            let status = Command::new(&me).arg("child").arg(dir).status();
            if !status.is_ok_and(|s| s.success()) {
                eprintln!("warden-denier: the child failed");
                return ExitCode::from(1);
            }
            ExitCode::from(7)
        }
        "child" => {
            let status = Command::new(&me)
                .arg("grandchild")
                .arg(dir)
                .current_dir(dir.join("rootdir"))
                .status();
            if status.is_ok_and(|s| s.success()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        "secrets" => {
            let Some(xonly) = args.get(3) else {
                eprintln!("usage: warden-denier secrets DIR XONLY");
                return ExitCode::from(2);
            };
            let _ = std::fs::File::open("/etc/shadow");
            let a = Command::new(&me).arg("nondumpable").arg(dir).status();
            let b = Command::new(xonly).arg("open").arg(dir).status();
            if !a.is_ok_and(|s| s.success()) || !b.is_ok_and(|s| s.success()) {
                eprintln!("warden-denier: a child failed");
                return ExitCode::from(1);
            }
            ExitCode::from(7)
        }
        "nondumpable" => {
            if let Err(e) = nix::sys::prctl::set_dumpable(false) {
                eprintln!("warden-denier: prctl(PR_SET_DUMPABLE, 0): {e}");
                return ExitCode::from(1);
            }
            create(&dir.join("rootdir").join(SECRET_NONDUMPABLE));
            ExitCode::SUCCESS
        }
        "open" => {
            create(&dir.join("rootdir").join(SECRET_EXEC_ONLY));
            ExitCode::SUCCESS
        }
        "root-nondumpable" => {
            if let Err(e) = nix::sys::prctl::set_dumpable(false) {
                eprintln!("warden-denier: prctl(PR_SET_DUMPABLE, 0): {e}");
                return ExitCode::from(1);
            }
            let _ = std::fs::remove_file("/proc/version");
            ExitCode::from(7)
        }
        "grandchild" => {
            create(Path::new("rel-new"));
            ExitCode::SUCCESS
        }
        _ => ExitCode::from(2),
    }
}
