//! Sandbox profiles suggested from a capture.
//!
//! What a program needs is what it did (the accesses the capture recorded,
//! and the programs it executed) plus what it tried and was refused (the
//! denials). From those this module derives:
//! - a Landlock ruleset: path-beneath rules with the access rights each
//!   path needs (file rights on files; directory rights such as
//!   `make_reg` or `remove_file` on the directory where the entry is
//!   created or removed), as JSON that `wardenctl learn --verify` applies;
//! - systemd sandboxing directives: `ProtectSystem=strict` with
//!   `ReadWritePaths=` for what must stay writable, and
//!   `InaccessiblePaths=` for what the program was refused and never used.
//!
//! Landlock does not govern `stat`, `access`, `chmod`, `chown`, signals or
//! `ptrace`: denials of those are listed as comments, not rules. A denial
//! that came from file permissions (DAC) stays a denial under any profile.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::event::{Denial, Event};
use crate::report::Report;

/// Landlock filesystem rights, by the names the JSON uses (the kernel's
/// `LANDLOCK_ACCESS_FS_*` without the prefix, lower case).
pub const FS_RIGHTS: &[&str] = &[
    "execute",
    "write_file",
    "read_file",
    "read_dir",
    "remove_dir",
    "remove_file",
    "make_char",
    "make_dir",
    "make_reg",
    "make_sock",
    "make_fifo",
    "make_block",
    "make_sym",
    "refer",
    "truncate",
];

/// Rights that only make sense on a regular file.
const FILE_RIGHTS: &[&str] = &["execute", "write_file", "read_file", "truncate"];

/// A Landlock ruleset (`--format landlock-json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockProfile {
    /// Format version (1).
    pub version: u32,
    /// Rights the ruleset governs: anything not granted below is denied.
    pub handled: Vec<String>,
    /// Path-beneath rules.
    pub rules: Vec<LandlockRule>,
}

/// One path-beneath rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockRule {
    /// The file or directory.
    pub path: String,
    /// Rights granted on it (and beneath it, for a directory).
    pub access: Vec<String>,
}

/// What a profile is made of: path → rights, and notes.
#[derive(Debug, Default)]
struct Needs {
    rights: BTreeMap<String, BTreeSet<&'static str>>,
    writable: BTreeSet<String>,
    refused: BTreeSet<String>,
    used: BTreeSet<String>,
    notes: Vec<String>,
}

fn parent(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => path[..i].to_owned(),
    }
}

const O_ACCMODE: u64 = 3;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const O_DIRECTORY: u64 = 0o200000;
const AT_REMOVEDIR: u64 = 0x200;

/// A process's own `/proc/PID/...` files are named by pid, which differs
/// on every run: a rule for them is a rule for `/proc`.
fn stable(path: &str) -> &str {
    let rest = path.strip_prefix("/proc/").unwrap_or("");
    let first = rest.split('/').next().unwrap_or("");
    if !first.is_empty()
        && (first.bytes().all(|b| b.is_ascii_digit()) || first == "self" || first == "thread-self")
    {
        "/proc"
    } else {
        path
    }
}

impl Needs {
    fn grant(&mut self, path: &str, rights: &[&'static str]) {
        let path = stable(path);
        let rights: Vec<&'static str> = if path == "/proc" {
            // Only reading, whatever the call asked.
            rights
                .iter()
                .copied()
                .filter(|r| *r == "read_file" || *r == "read_dir")
                .chain(["read_file"])
                .collect()
        } else {
            rights.to_vec()
        };
        let e = self.rights.entry(path.to_owned()).or_default();
        e.extend(rights);
    }

    /// `entry` is created or removed: `rights` on its directory, which
    /// must stay writable.
    fn change_entry(&mut self, entry: &str, rights: &[&'static str]) {
        let dir = parent(entry);
        self.grant(&dir, rights);
        self.writable.insert(dir);
    }

    /// `path` itself is written: `rights` on it, and it must stay writable.
    fn write(&mut self, path: &str, rights: &[&'static str]) {
        self.grant(path, rights);
        self.writable.insert(path.to_owned());
    }

    fn open(&mut self, path: &str, flags: u64) {
        let acc = flags & O_ACCMODE;
        if flags & O_CREAT != 0 {
            self.change_entry(path, &["make_reg"]);
        }
        if flags & O_DIRECTORY != 0 {
            self.grant(path, &["read_dir"]);
            return;
        }
        let mut r: Vec<&'static str> = Vec::new();
        if acc == 0 || acc == 2 {
            r.push("read_file");
        }
        if acc == 1 || acc == 2 {
            r.push("write_file");
            self.writable.insert(path.to_owned());
        }
        if flags & O_TRUNC != 0 {
            r.push("truncate");
        }
        if flags & O_CREAT != 0 {
            // The file may not exist yet: grant on the directory.
            let dir = parent(path);
            self.grant(&dir, &r);
        } else {
            self.grant(path, &r);
        }
    }

    fn denial(&mut self, d: &Denial) {
        let Some(path) = d.path.clone() else {
            self.notes.push(format!(
                "{} {} {}: not a filesystem access; no profile rule can grant it",
                d.syscall,
                d.errno,
                d.target_pid
                    .map(|p| format!("(pid {p})"))
                    .unwrap_or_default()
            ));
            return;
        };
        self.refused.insert(path.clone());
        let a = d.args;
        match d.syscall.as_str() {
            "open" => self.open(&path, a[1]),
            "openat" => self.open(&path, a[2]),
            "creat" => self.open(&path, O_CREAT | 1 | O_TRUNC),
            "openat2" => self.open(&path, 0),
            "execve" | "execveat" => self.grant(&path, &["execute", "read_file"]),
            "mkdir" | "mkdirat" => {
                self.change_entry(&path, &["make_dir"]);
            }
            "rmdir" => {
                self.change_entry(&path, &["remove_dir"]);
            }
            "unlink" => {
                self.change_entry(&path, &["remove_file"]);
            }
            "unlinkat" => {
                let r = if a[2] & AT_REMOVEDIR != 0 {
                    "remove_dir"
                } else {
                    "remove_file"
                };
                self.change_entry(&path, &[r]);
            }
            "mknod" | "mknodat" => {
                self.change_entry(&path, &["make_reg"]);
            }
            "symlink" | "symlinkat" => {
                self.change_entry(&path, &["make_sym"]);
            }
            "bind" => {
                self.change_entry(&path, &["make_sock"]);
            }
            "rename" | "renameat" | "renameat2" | "link" | "linkat" => {
                self.change_entry(&path, &["remove_file", "refer"]);
                if let Some(p2) = &d.path2 {
                    self.change_entry(p2, &["make_reg", "refer"]);
                }
            }
            "truncate" | "ftruncate" => self.write(&path, &["truncate", "write_file"]),
            "chmod" | "fchmod" | "fchmodat" | "fchmodat2" | "chown" | "fchown" | "lchown"
            | "fchownat" | "utime" | "utimes" | "utimensat" | "futimesat" | "setxattr"
            | "lsetxattr" | "fsetxattr" | "removexattr" | "lremovexattr" | "fremovexattr" => {
                self.writable.insert(path.clone());
                self.notes.push(format!(
                    "{} {} on {path}: file metadata; Landlock does not govern it (file \
                     ownership/permissions do)",
                    d.syscall, d.errno
                ));
            }
            other => self.notes.push(format!(
                "{other} {} on {path}: Landlock does not govern it (file permissions do)",
                d.errno
            )),
        }
    }

    fn from_report(r: &Report) -> Needs {
        let mut n = Needs::default();
        for e in &r.events {
            match e {
                Event::Access(a) => {
                    n.used.insert(a.path.clone());
                    match a.access.as_str() {
                        "read" => n.grant(&a.path, &["read_file"]),
                        "write" => n.write(&a.path, &["write_file"]),
                        "read_write" => n.write(&a.path, &["read_file", "write_file"]),
                        "read_dir" => n.grant(&a.path, &["read_dir"]),
                        "create" => {
                            // Opened with O_CREAT: it may be new. The file
                            // itself, and the right to create it.
                            n.grant(&a.path, &["read_file", "write_file", "truncate"]);
                            n.change_entry(&a.path, &["make_reg"]);
                        }
                        _ => {}
                    }
                }
                Event::Exec { exe: Some(x), .. } => {
                    n.used.insert(x.clone());
                    n.grant(x, &["execute", "read_file"]);
                    // The kernel opens a dynamic executable's loader
                    // itself (no syscall of the program's shows it), and
                    // Landlock checks it: grant it too.
                    if let Some(interp) = elf_interpreter(Path::new(x)) {
                        n.used.insert(interp.clone());
                        n.grant(&interp, &["execute", "read_file"]);
                    }
                }
                Event::Denial(d) => n.denial(d),
                _ => {}
            }
        }
        n
    }
}

/// The `PT_INTERP` of a 64-bit little-endian ELF file (its dynamic
/// loader), if it has one.
pub fn elf_interpreter(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h).ok()?;
    // "\x7fELF", ELFCLASS64, ELFDATA2LSB.
    if h[0..4] != *b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |b: &[u8], o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(&h, 0x20)?;
    let phentsize = u64::from(u16_at(&h, 0x36)?);
    let phnum = u64::from(u16_at(&h, 0x38)?);
    if phentsize < 56 || phnum > 512 {
        return None;
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff + i * phentsize)).ok()?;
        f.read_exact(&mut ph).ok()?;
        if u32_at(&ph, 0)? != 3 {
            continue;
        }
        let off = u64_at(&ph, 8)?;
        let size = u64_at(&ph, 32)?;
        if size == 0 || size > 4096 {
            return None;
        }
        let mut buf = vec![0u8; usize::try_from(size).ok()?];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut buf).ok()?;
        let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
        return String::from_utf8(buf[..end].to_vec()).ok();
    }
    None
}

/// True if `path` is a directory on this machine (rules on a directory
/// may carry directory rights; on a file, only file rights).
fn is_dir(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

/// The Landlock ruleset a capture suggests.
pub fn landlock(r: &Report) -> LandlockProfile {
    let needs = Needs::from_report(r);
    let mut rules = Vec::new();
    for (path, rights) in &needs.rights {
        let dir = is_dir(path);
        let access: Vec<String> = rights
            .iter()
            .filter(|x| dir || FILE_RIGHTS.contains(x))
            .map(|x| (*x).to_owned())
            .collect();
        if access.is_empty() {
            continue;
        }
        rules.push(LandlockRule {
            path: path.clone(),
            access,
        });
    }
    LandlockProfile {
        version: 1,
        handled: FS_RIGHTS.iter().map(|s| (*s).to_owned()).collect(),
        rules,
    }
}

/// systemd unit directives a capture suggests.
pub fn systemd(r: &Report, command: &str) -> String {
    let needs = Needs::from_report(r);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Sandboxing suggested by `wardenctl learn` for: {command}"
    );
    let _ = writeln!(
        s,
        "# Everything is read-only except what the program wrote or tried to write."
    );
    let _ = writeln!(s, "ProtectSystem=strict");
    let _ = writeln!(s, "PrivateTmp=no");
    for w in &needs.writable {
        let _ = writeln!(s, "ReadWritePaths=-{w}");
    }
    let hidden: Vec<&String> = needs
        .refused
        .iter()
        .filter(|p| !needs.used.contains(*p) && !needs.writable.contains(*p))
        .collect();
    if !hidden.is_empty() {
        let _ = writeln!(
            s,
            "# Refused during the capture and never used: hiding them changes nothing for \
             this program."
        );
        for h in hidden {
            let _ = writeln!(s, "InaccessiblePaths=-{h}");
        }
    }
    for n in &needs.notes {
        let _ = writeln!(s, "# note: {n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Access;

    fn denial(syscall: &str, path: &str, args: [u64; 4]) -> Event {
        Event::Denial(Denial {
            time_ns: 0,
            pid: 1,
            tid: 1,
            comm: "t".into(),
            exe: None,
            uid: 1000,
            syscall: syscall.into(),
            nr: 0,
            errno: "EACCES".into(),
            path: Some(path.into()),
            path2: None,
            path_note: None,
            target_pid: None,
            args,
        })
    }

    fn sample() -> Report {
        let mut r = Report::default();
        r.add(Event::Exec {
            pid: 1,
            exe: Some("/usr/bin/true".into()),
            comm: "true".into(),
        });
        r.add(Event::Access(Access {
            pid: 1,
            syscall: "openat".into(),
            path: "/etc/ld.so.cache".into(),
            access: "read".into(),
        }));
        r.add(denial("openat", "/etc/shadow", [0, 0, 0, 0]));
        r.add(denial("openat", "/tmp/ro/new", [0, 0, 0o101, 0]));
        r.add(denial("mkdir", "/tmp/x/y", [0; 4]));
        r.add(denial("chmod", "/tmp/f", [0; 4]));
        r
    }

    #[test]
    fn landlock_rules_follow_the_capture() {
        let p = landlock(&sample());
        let find = |path: &str| {
            p.rules
                .iter()
                .find(|r| r.path == path)
                .map(|r| r.access.clone())
        };
        assert_eq!(
            find("/usr/bin/true"),
            Some(vec!["execute".into(), "read_file".into()])
        );
        assert_eq!(find("/etc/ld.so.cache"), Some(vec!["read_file".into()]));
        assert_eq!(find("/etc/shadow"), Some(vec!["read_file".into()]));
        // chmod is not Landlock's business: no rule for /tmp/f.
        assert_eq!(find("/tmp/f"), None);
        assert_eq!(p.handled.len(), FS_RIGHTS.len());
        let json = serde_json::to_string(&p).unwrap_or_default();
        let back: LandlockProfile = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, p);
    }

    #[test]
    fn finds_the_loader_of_a_dynamic_executable() {
        let sh = elf_interpreter(Path::new("/bin/sh"));
        assert!(
            sh.as_deref().is_some_and(|p| p.contains("ld-linux")),
            "{sh:?}"
        );
        assert_eq!(elf_interpreter(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn systemd_directives() {
        let s = systemd(&sample(), "t");
        assert!(s.contains("ProtectSystem=strict"));
        assert!(s.contains("ReadWritePaths=-/tmp/ro"), "{s}");
        assert!(s.contains("ReadWritePaths=-/tmp/x"), "{s}");
        assert!(s.contains("InaccessiblePaths=-/etc/shadow"), "{s}");
        assert!(!s.contains("InaccessiblePaths=-/etc/ld.so.cache"), "{s}");
        assert!(s.contains("# note: chmod"), "{s}");
    }
}
