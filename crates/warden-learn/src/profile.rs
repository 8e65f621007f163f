//! Sandbox profiles suggested from a capture.
//!
//! A suggestion grants what the program was seen to do successfully,
//! never more: the accesses the capture recorded (each process's first
//! successful open of each file), the programs it executed, and what
//! exec itself needs for the command (see [`exec_chain`]). What the
//! program tried and was refused is *not* granted: a refusal may be the
//! very thing the sandbox is for (a write under `/etc`, a read of
//! `/etc/shadow`), so it is listed, with what granting it would take, for
//! a person to decide. From those this module derives:
//! - a Landlock ruleset: path-beneath rules with the access rights each
//!   path needs (file rights on files; directory rights such as
//!   `make_reg` on the directory where a file was created), as JSON that
//!   `wardenctl learn --verify` applies, with the refusals in `refused`;
//! - systemd sandboxing directives: `ProtectSystem=strict` with
//!   `ReadWritePaths=` for what the program wrote, and the refusals as
//!   comments (a commented-out `InaccessiblePaths=` for what it was
//!   refused and never used).
//!
//! Landlock does not govern `stat`, `access`, `chmod`, `chown`, signals or
//! `ptrace`: refusals of those are noted as such. A denial that came from
//! file permissions (DAC) stays a denial under any profile.

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
    /// What the program was refused during the capture, and what granting
    /// it would take: listed, never granted (`--verify` ignores it).
    #[serde(default)]
    pub refused: Vec<String>,
}

/// One path-beneath rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockRule {
    /// The file or directory.
    pub path: String,
    /// Rights granted on it (and beneath it, for a directory).
    pub access: Vec<String>,
}

/// What a profile is made of: path → rights the program used, what must
/// stay writable, and the refusals (never granted).
#[derive(Debug, Default)]
struct Needs {
    rights: BTreeMap<String, BTreeSet<&'static str>>,
    writable: BTreeSet<String>,
    /// Paths the program was refused.
    refused: BTreeSet<String>,
    used: BTreeSet<String>,
    /// One line per distinct refusal: what was refused, what granting it
    /// would take.
    refusals: Vec<String>,
    /// Why a refusal cannot be granted by any rule (in a scratch set).
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

    /// A refusal: recorded with what granting it would take, not granted.
    fn refusal(&mut self, d: &Denial) {
        let mut would = Needs::default();
        would.denial(d);
        let what = format!(
            "{} {} {}{}",
            d.syscall,
            d.errno,
            d.path.as_deref().unwrap_or("-"),
            d.path2
                .as_deref()
                .map(|p| format!(" -> {p}"))
                .unwrap_or_default()
        );
        let line = if would.notes.is_empty() {
            let rights: Vec<String> = would
                .rights
                .iter()
                .map(|(p, r)| {
                    let r: Vec<&str> = r.iter().copied().collect();
                    format!("{} on {p}", r.join(","))
                })
                .chain(
                    would
                        .writable
                        .iter()
                        .filter(|w| !would.rights.contains_key(*w))
                        .map(|w| format!("{w} writable")),
                )
                .collect();
            format!("{what}: not granted (would need {})", rights.join("; "))
        } else {
            format!("{what}: {}", would.notes.join("; "))
        };
        if !self.refusals.contains(&line) {
            self.refusals.push(line);
        }
        if let Some(p) = &d.path {
            self.refused.insert(p.clone());
        }
    }

    /// What granting denial `d` would take, into `self` (a scratch set).
    fn denial(&mut self, d: &Denial) {
        let Some(path) = d.path.clone() else {
            self.notes
                .push("not a filesystem access; no profile rule can grant it".into());
            return;
        };
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
                self.notes.push(
                    "file metadata; Landlock does not govern it (file ownership and \
                     permissions do)"
                        .into(),
                );
            }
            _ => self
                .notes
                .push("Landlock does not govern it (file permissions do)".into()),
        }
    }

    fn from_report(r: &Report) -> Needs {
        let mut n = Needs::default();
        for e in &r.events {
            match e {
                Event::Access(a) => {
                    n.used.insert(a.path.clone());
                    match a.access.as_str() {
                        // A directory opened without O_DIRECTORY is still
                        // a directory read (Landlock checks read_dir).
                        "read" if is_dir(&a.path) => n.grant(&a.path, &["read_dir"]),
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
                Event::Denial(d) => n.refusal(d),
                _ => {}
            }
        }
        n
    }

    /// What exec needs for `program` (see [`exec_chain`]).
    fn exec_program(&mut self, program: &Path) {
        for p in exec_chain(program) {
            self.used.insert(p.clone());
            self.grant(&p, &["execute", "read_file"]);
        }
    }
}

/// How deep `#!` interpreters may nest (the kernel allows a few levels;
/// more is a loop).
const MAX_INTERPRETER_DEPTH: usize = 5;

/// The files exec opens to start `program`: the file itself, and, for a
/// `#!` script, its interpreter and that one's (recursively, up to
/// [`MAX_INTERPRETER_DEPTH`]), and for an ELF executable its dynamic
/// loader. Landlock checks `execute` and `read_file` on each (the kernel
/// opens them for the program; no syscall of the program shows them),
/// so a profile for a script grants them, or the script cannot start.
/// Paths as named (a symlink's rule applies to the file it names).
pub fn exec_chain(program: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(program.to_path_buf());
    while let Some(p) = next.take() {
        if out.len() > MAX_INTERPRETER_DEPTH {
            break;
        }
        let name = p.display().to_string();
        if out.contains(&name) {
            break;
        }
        out.push(name);
        if let Some(interp) = shebang_interpreter(&p) {
            next = Some(interp.into());
        } else if let Some(loader) = elf_interpreter(&p) {
            if !out.contains(&loader) {
                out.push(loader);
            }
        }
    }
    out
}

/// The interpreter a `#!` line names (its first word), if `path` starts
/// with one.
pub fn shebang_interpreter(path: &Path) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    // The kernel reads at most this much of the line (BINPRM_BUF_SIZE).
    let mut head = Vec::with_capacity(256);
    f.take(256).read_to_end(&mut head).ok()?;
    let line = head.strip_prefix(b"#!")?;
    let line = line.split(|&c| c == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let interp = text.split_whitespace().next()?;
    interp.starts_with('/').then(|| interp.to_owned())
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

/// The Landlock ruleset a capture suggests. `program`: the command's
/// executable as exec'd (its [`exec_chain`] is granted), when known.
pub fn landlock(r: &Report, program: Option<&Path>) -> LandlockProfile {
    let mut needs = Needs::from_report(r);
    if let Some(p) = program {
        needs.exec_program(p);
    }
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
        refused: needs.refusals,
    }
}

/// systemd unit directives a capture suggests: writable only what the
/// program wrote; its refusals as comments.
pub fn systemd(r: &Report, command: &str) -> String {
    let needs = Needs::from_report(r);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Sandboxing suggested by `wardenctl learn` for: {command}"
    );
    let _ = writeln!(
        s,
        "# Everything is read-only except what the program was seen to write."
    );
    let _ = writeln!(s, "ProtectSystem=strict");
    let _ = writeln!(s, "PrivateTmp=no");
    for w in &needs.writable {
        let _ = writeln!(s, "ReadWritePaths=-{w}");
    }
    if !needs.refusals.is_empty() {
        let _ = writeln!(
            s,
            "# Refused during the capture (not granted; grant one only if the program \
             must have it):"
        );
        for line in &needs.refusals {
            let _ = writeln!(s, "#   {line}");
        }
    }
    let hidden: Vec<&String> = needs
        .refused
        .iter()
        .filter(|p| !needs.used.contains(*p) && !needs.writable.contains(*p))
        .collect();
    if !hidden.is_empty() {
        let _ = writeln!(
            s,
            "# Refused and never used: hiding them would change nothing for this program."
        );
        for h in hidden {
            let _ = writeln!(s, "#InaccessiblePaths=-{h}");
        }
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
    fn landlock_rules_grant_what_was_used_and_list_what_was_refused() {
        let p = landlock(&sample(), None);
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
        // Refused: listed, not granted.
        assert_eq!(find("/etc/shadow"), None);
        assert_eq!(find("/tmp/ro"), None);
        assert!(
            p.refused
                .iter()
                .any(|l| l
                    .starts_with("openat EACCES /etc/shadow: not granted (would need read_file")),
            "{:?}",
            p.refused
        );
        assert!(
            p.refused
                .iter()
                .any(|l| l.starts_with("chmod EACCES /tmp/f: file metadata")),
            "{:?}",
            p.refused
        );
        assert_eq!(find("/tmp/f"), None);
        assert_eq!(p.handled.len(), FS_RIGHTS.len());
        let json = serde_json::to_string(&p).unwrap_or_default();
        let back: LandlockProfile = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, p);
    }

    #[test]
    fn a_scripts_exec_chain_is_its_file_its_interpreter_and_the_loader() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("warden-learn-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let outer = dir.join("outer");
        let inner = dir.join("inner");
        std::fs::write(&inner, "#!/bin/sh\necho hi\n")?;
        std::fs::write(&outer, format!("#! {} -x\n", inner.display()))?;
        let chain = exec_chain(&outer);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(chain[0], outer.display().to_string());
        assert_eq!(chain[1], inner.display().to_string());
        assert_eq!(chain[2], "/bin/sh");
        assert!(
            chain.get(3).is_some_and(|l| l.contains("ld-linux")),
            "{chain:?}"
        );
        assert_eq!(chain.len(), 4, "{chain:?}");
        // A loop of scripts ends.
        assert_eq!(shebang_interpreter(Path::new("/etc/passwd")), None);
        Ok(())
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
    fn systemd_makes_writable_only_what_was_written() {
        let mut r = sample();
        r.add(Event::Access(Access {
            pid: 1,
            syscall: "openat".into(),
            path: "/var/lib/app/state".into(),
            access: "create".into(),
        }));
        let s = systemd(&r, "t");
        assert!(s.contains("ProtectSystem=strict"));
        assert!(s.contains("\nReadWritePaths=-/var/lib/app\n"), "{s}");
        // The refused creations and mkdir are comments, never directives.
        for refused in ["/tmp/ro", "/tmp/x", "/etc/shadow", "/tmp/f"] {
            for line in s.lines().filter(|l| l.contains(refused)) {
                assert!(line.starts_with('#'), "{refused} granted: {line}\n{s}");
            }
        }
        assert!(
            s.contains("#   openat EACCES /tmp/ro/new: not granted"),
            "{s}"
        );
        assert!(s.contains("#InaccessiblePaths=-/etc/shadow"), "{s}");
        assert!(!s.contains("InaccessiblePaths=-/etc/ld.so.cache"), "{s}");
        assert!(s.contains("#   chmod EACCES /tmp/f: file metadata"), "{s}");
    }
}
