//! The process that kills the hosts once the broker is gone.
//!
//! After a SIGKILL of the broker, the parent-death signal kills its direct
//! children (the hosts) but not what a module started (grandchildren), and
//! nobody is left to write `cgroup.kill`. Without systemd (which kills a
//! stopped unit's cgroup itself) something outside the broker must. The
//! reaper is that: a small process started by the broker with the read
//! end of a pipe as its stdin, the broker holding the only write end
//! (close-on-exec, so no host inherits it). The kernel closes the write
//! end however the broker ends; the reaper's read then returns EOF and it
//! writes `1` to the hosts' parent cgroup's `cgroup.kill`, which kills
//! every process below it, removes the emptied cgroups, then exits. It runs in a process group of its
//! own, so a Ctrl-C or a signal to the broker's group does not take it
//! along.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// A running reaper. Dropping it closes the pipe: the reaper kills the
/// cgroup (empty by then, after an orderly stop) and exits.
#[derive(Debug)]
pub struct Reaper {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Reaper {
    /// Starts `program args…` as the reaper (e.g. `warden-reaper CGROUP`).
    ///
    /// # Errors
    /// The spawn error.
    pub fn start<I, S>(program: &Path, args: I) -> io::Result<Reaper>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Reaper { child, pipe })
    }

    /// The reaper's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.pipe.take());
        let _ = self.child.wait();
    }
}

/// The reaper's own work: waits for EOF on stdin, then kills every
/// process in `cgroup` (a cgroup v2 directory) with `cgroup.kill`.
///
/// # Errors
/// Reading stdin or writing `cgroup.kill` failed (the error names the
/// file).
pub fn reaper_main(cgroup: &Path) -> io::Result<()> {
    let kill = cgroup.join("cgroup.kill");
    if !kill.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} does not exist: not a cgroup v2 directory, or a kernel older than 5.14",
                kill.display()
            ),
        ));
    }
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Any other error: the broker's end is unusable; kill too.
            Err(_) => break,
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&kill)
        .and_then(|mut f| f.write_all(b"1"))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", kill.display())))?;
    remove_emptied(cgroup);
    Ok(())
}

/// Removes `cgroup`'s leaves and `cgroup` itself once the kill has emptied
/// them (it is asynchronous; up to 2 s). `rmdir` of a cgroup that still
/// has processes fails, so this never removes a populated one.
pub(crate) fn remove_emptied(cgroup: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        if let Ok(entries) = std::fs::read_dir(cgroup) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        if std::fs::remove_dir(cgroup).is_ok() || !cgroup.exists() {
            return;
        }
        if std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
