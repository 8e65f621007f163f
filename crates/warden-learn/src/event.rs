//! Learning-mode events: the JSON form clients see, and the decoding of
//! the records the kernel half writes (`src/bpf/learn.h`).
// Without the `capture` feature (wardenctl's build) nothing reads kernel
// records, so the decoder is unused there; it stays compiled so that its
// tests run in every build.
#![cfg_attr(not(feature = "capture"), allow(dead_code))]

use serde::{Deserialize, Serialize};

use crate::syscalls::syscall_name;

/// Topic of the events `learn.events` streams: `{"session", "events":
/// [...]}` frames, then one `{"session", "end": {...}}`.
pub const EVENTS_TOPIC: &str = "warden.learn.events";

/// One thing a capture saw, as sent on the wire (`learn.events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A system call failed with `EACCES` or `EPERM`.
    Denial(Denial),
    /// A tracked process succeeded in opening or executing a file (only
    /// when the session records accesses, for profile suggestions).
    Access(Access),
    /// A tracked process executed a program.
    Exec {
        /// Process id.
        pid: u32,
        /// The program, resolved to an absolute path by the kernel.
        exe: Option<String>,
        /// `comm` after the exec.
        comm: String,
    },
    /// A tracked process forked; the child is tracked too.
    Fork {
        /// The parent.
        pid: u32,
        /// The new process.
        child: u32,
    },
    /// A tracked process exited.
    Exit {
        /// Process id.
        pid: u32,
        /// Its exit status as the kernel encodes it (`code << 8 | signal`).
        status: i32,
    },
    /// A process left the capture: it gained privileges the session's
    /// owner does not have (setuid/setgid/file-capability exec, or other
    /// credentials), or, for a non-root caller, it stopped being dumpable
    /// (it exec'd an execute-only program, or called
    /// `prctl(PR_SET_DUMPABLE, 0)`), so its memory is no longer the
    /// caller's to read. Nothing more is reported for it or its
    /// descendants.
    Left {
        /// Process id.
        pid: u32,
        /// `secure_exec`, `credentials` or `non_dumpable` (see
        /// [`left_reason`]).
        reason: String,
    },
}

/// A denied operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// Kernel monotonic time of the failure, in nanoseconds.
    pub time_ns: u64,
    /// Process id (thread group).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// `comm` of the thread.
    pub comm: String,
    /// The process's program, when known.
    pub exe: Option<String>,
    /// Real uid of the thread.
    pub uid: u32,
    /// Syscall name (`syscall_N` for numbers this table does not name).
    pub syscall: String,
    /// Syscall number (x86-64).
    pub nr: i64,
    /// `EACCES` or `EPERM`.
    pub errno: String,
    /// The path the call named, absolute, when it named one.
    pub path: Option<String>,
    /// The second path (rename, link), absolute.
    pub path2: Option<String>,
    /// Why a path is incomplete, when it is (`truncated`, `unreadable`,
    /// `detached`, `bad_fd`).
    pub path_note: Option<String>,
    /// For kill/tkill/tgkill/ptrace: the target pid.
    pub target_pid: Option<i32>,
    /// The raw first four arguments (flags, modes), for tools.
    pub args: [u64; 4],
}

/// A successful file access (for profile suggestions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Process id.
    pub pid: u32,
    /// Syscall name.
    pub syscall: String,
    /// The file, absolute.
    pub path: String,
    /// What was done: `read`, `write`, `read_write`, `execute`, `read_dir`,
    /// `create`.
    pub access: String,
}

/// Record kinds (`enum wl_kind`).
pub(crate) const EV_DENIAL: u32 = 1;
pub(crate) const EV_FORK: u32 = 2;
pub(crate) const EV_EXEC: u32 = 3;
pub(crate) const EV_EXIT: u32 = 4;
pub(crate) const EV_LEFT: u32 = 5;
pub(crate) const EV_ACCESS: u32 = 6;

const HEADER_LEN: usize = 48;
const PATH_LEN: usize = 2832;
const PATH_NAME_OFF: usize = 16;
const PATH_NAME_BYTES: usize = 512;
const PATH_DIR_OFF: usize = 528;
const PATH_DIR_BYTES: usize = 2048 + 256;
const DENIAL_LEN: usize = 5768;
const DENIAL_PATHS_OFF: usize = 104;
const SMALL_LEN: usize = 56;
const EXEC_LEN: usize = HEADER_LEN + PATH_LEN;
const ACCESS_LEN: usize = 64 + PATH_LEN;

/// The fixed part every record starts with (`struct wl_header`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Record kind.
    pub kind: u32,
    /// The session generation the record was written for.
    pub gen: u32,
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Kernel monotonic time, ns.
    pub ktime_ns: u64,
    /// Real uid of the thread.
    pub uid: u32,
    /// `comm` of the thread.
    pub comm: String,
}

/// A record decoded, before the session adds what it knows (exe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The fixed part.
    pub header: Header,
    /// The event.
    pub event: Event,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn i32_at(b: &[u8], off: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}
fn i64_at(b: &[u8], off: usize) -> Option<i64> {
    Some(i64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// A NUL-terminated string in a fixed buffer, lossily as UTF-8.
fn c_str(b: &[u8]) -> String {
    let end = memchr(b).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == 0)
}

fn header(b: &[u8]) -> Option<Header> {
    Some(Header {
        kind: u32_at(b, 0)?,
        gen: u32_at(b, 4)?,
        tgid: u32_at(b, 8)?,
        tid: u32_at(b, 12)?,
        ktime_ns: u64_at(b, 16)?,
        uid: u32_at(b, 24)?,
        comm: c_str(b.get(32..48)?),
    })
}

/// `struct wl_path`, resolved: (path, note).
fn path(b: &[u8]) -> Option<(Option<String>, Option<String>)> {
    let used = *b.get(12)?;
    if used == 0 {
        return Some((None, None));
    }
    let name_len = u32_at(b, 4)? as usize;
    let dir_len = u32_at(b, 8)? as usize;
    let name_state = *b.get(13)?;
    let dir_state = *b.get(14)?;
    let name_buf = b.get(PATH_NAME_OFF..PATH_NAME_OFF + PATH_NAME_BYTES)?;
    let dir_buf = b.get(PATH_DIR_OFF..PATH_DIR_OFF + PATH_DIR_BYTES)?;
    let name = c_str(&name_buf[..name_len.min(PATH_NAME_BYTES)]);
    let mut note = match name_state {
        2 => Some("truncated".to_owned()),
        3 => Some("unreadable".to_owned()),
        _ => None,
    };
    if name_state == 4 {
        // An abstract socket: not a path at all.
        return Some((Some(name), None));
    }
    if name_state == 3 {
        return Some((None, note));
    }
    if name.starts_with('/') {
        return Some((Some(normalize(&name)), note));
    }
    // A walk that did not reach the root is marked in front of the path.
    let mut mark = "";
    let dir = match dir_state {
        1 => Some(join_components(&dir_buf[..dir_len.min(PATH_DIR_BYTES)])),
        2 => {
            note = Some("truncated".to_owned());
            mark = "…";
            Some(join_components(&dir_buf[..dir_len.min(PATH_DIR_BYTES)]))
        }
        3 => {
            note = Some("detached".to_owned());
            mark = "(detached)";
            Some(join_components(&dir_buf[..dir_len.min(PATH_DIR_BYTES)]))
        }
        4 => {
            note = Some("bad_fd".to_owned());
            None
        }
        _ => None,
    };
    let full = match (dir, name.is_empty()) {
        (Some(d), true) => Some(d),
        (Some(d), false) if d == "/" => Some(normalize(&format!("/{name}"))),
        (Some(d), false) => Some(normalize(&format!("{d}/{name}"))),
        (None, false) => Some(name),
        (None, true) => None,
    };
    Some((full.map(|f| format!("{mark}{f}")), note))
}

/// The directory names the kernel wrote leaf first, as an absolute path.
fn join_components(buf: &[u8]) -> String {
    let parts: Vec<String> = buf
        .split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    if parts.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::new();
    for p in parts.iter().rev() {
        out.push('/');
        out.push_str(p);
    }
    out
}

/// Lexical normalization of an absolute path: drops `.` components and
/// repeated slashes, and lets `..` take away the component before it
/// (`/etc/../etc/shadow` is `/etc/shadow`; `..` at the root stays at the
/// root). Nothing is looked up: the broker never resolves a path a
/// captured process named (the file system is the process's, and a
/// symlink may name anything). So when a component before a `..` is a
/// symlink, the normalized path differs from the one the kernel walked
/// (see docs/learning-mode.md, "Paths").
pub fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(p.len());
    for part in parts {
        out.push('/');
        out.push_str(part);
    }
    out
}

fn errno_name(ret: i64) -> String {
    // In i128: `-ret` overflows i64 for i64::MIN, which a record may hold.
    match -i128::from(ret) {
        1 => "EPERM".to_owned(),
        13 => "EACCES".to_owned(),
        n => format!("errno {n}"),
    }
}

/// Decodes one ring-buffer record. `None` for a record that is too short
/// or of an unknown kind (never trusted further).
pub(crate) fn decode(b: &[u8]) -> Option<Record> {
    let h = header(b)?;
    let event = match h.kind {
        EV_DENIAL if b.len() >= DENIAL_LEN => {
            let nr = i64_at(b, 48)?;
            let ret = i64_at(b, 56)?;
            let args = [
                u64_at(b, 64)?,
                u64_at(b, 72)?,
                u64_at(b, 80)?,
                u64_at(b, 88)?,
            ];
            let target = i32_at(b, 96)?;
            let (p1, n1) = path(b.get(DENIAL_PATHS_OFF..DENIAL_PATHS_OFF + PATH_LEN)?)?;
            let (p2, n2) =
                path(b.get(DENIAL_PATHS_OFF + PATH_LEN..DENIAL_PATHS_OFF + 2 * PATH_LEN)?)?;
            let syscall = syscall_name(nr);
            let is_signal = matches!(nr, 62 | 200 | 234 | 101);
            Event::Denial(Denial {
                time_ns: h.ktime_ns,
                pid: h.tgid,
                tid: h.tid,
                comm: h.comm.clone(),
                exe: None,
                uid: h.uid,
                syscall,
                nr,
                errno: errno_name(ret),
                path: p1,
                path2: p2,
                path_note: n1.or(n2),
                target_pid: is_signal.then_some(target),
                args,
            })
        }
        EV_FORK if b.len() >= SMALL_LEN => Event::Fork {
            pid: h.tgid,
            child: u32_at(b, 48)?,
        },
        EV_EXIT if b.len() >= SMALL_LEN => Event::Exit {
            pid: h.tgid,
            status: i32_at(b, 48)?,
        },
        EV_LEFT if b.len() >= SMALL_LEN => Event::Left {
            pid: h.tgid,
            reason: left_reason(u32_at(b, 48)?).to_owned(),
        },
        EV_EXEC if b.len() >= EXEC_LEN => Event::Exec {
            pid: h.tgid,
            exe: path(b.get(HEADER_LEN..HEADER_LEN + PATH_LEN)?)?.0,
            comm: h.comm.clone(),
        },
        EV_ACCESS if b.len() >= ACCESS_LEN => {
            let nr = i64_at(b, 48)?;
            let mode = u32_at(b, 56)?;
            let (p, _) = path(b.get(64..64 + PATH_LEN)?)?;
            Event::Access(Access {
                pid: h.tgid,
                syscall: syscall_name(nr),
                path: p?,
                access: access_name(mode).to_owned(),
            })
        }
        _ => return None,
    };
    Some(Record { header: h, event })
}

/// The ring-buffer record decoder, for the fuzz target
/// (`fuzz/fuzz_targets/learn_record.rs`) only: not an API, no stability.
#[doc(hidden)]
pub fn fuzz_decode_record(b: &[u8]) -> Option<Record> {
    decode(b)
}

/// `enum wl_left_reason`, as the wire names it. A reason this table does
/// not know is still a departure: it is reported, as `unknown`.
pub fn left_reason(code: u32) -> &'static str {
    match code {
        1 => "secure_exec",
        2 => "credentials",
        3 => "non_dumpable",
        _ => "unknown",
    }
}

/// `enum wl_access_mode`.
fn access_name(mode: u32) -> &'static str {
    match mode {
        1 => "read",
        2 => "write",
        3 => "read_write",
        4 => "execute",
        5 => "read_dir",
        6 => "create",
        _ => "other",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a `struct wl_path` the way the kernel half writes it.
    pub(crate) fn path_bytes(
        name: Option<&str>,
        dir_leaf_first: &[&str],
        dir_state: u8,
    ) -> Vec<u8> {
        let mut b = vec![0u8; PATH_LEN];
        b[12] = 1;
        if let Some(n) = name {
            b[PATH_NAME_OFF..PATH_NAME_OFF + n.len()].copy_from_slice(n.as_bytes());
            b[4..8].copy_from_slice(&((n.len() + 1) as u32).to_ne_bytes());
            b[13] = 1;
        }
        let mut off = 0;
        for c in dir_leaf_first {
            b[PATH_DIR_OFF + off..PATH_DIR_OFF + off + c.len()].copy_from_slice(c.as_bytes());
            off += c.len() + 1;
        }
        b[8..12].copy_from_slice(&(off as u32).to_ne_bytes());
        b[14] = dir_state;
        b
    }

    fn header_bytes(kind: u32, tgid: u32, comm: &str) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&kind.to_ne_bytes());
        b[4..8].copy_from_slice(&7u32.to_ne_bytes());
        b[8..12].copy_from_slice(&tgid.to_ne_bytes());
        b[12..16].copy_from_slice(&tgid.to_ne_bytes());
        b[24..28].copy_from_slice(&1000u32.to_ne_bytes());
        b[32..32 + comm.len()].copy_from_slice(comm.as_bytes());
        b
    }

    fn denial(nr: i64, ret: i64, p1: Vec<u8>, p2: Option<Vec<u8>>) -> Vec<u8> {
        let mut b = header_bytes(EV_DENIAL, 42, "cat");
        b.extend_from_slice(&nr.to_ne_bytes());
        b.extend_from_slice(&ret.to_ne_bytes());
        b.extend_from_slice(&[0u8; 32]);
        b.extend_from_slice(&0i32.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&p1);
        b.extend_from_slice(&p2.unwrap_or_else(|| vec![0u8; PATH_LEN]));
        assert_eq!(b.len(), DENIAL_LEN);
        b
    }

    #[test]
    fn absolute_name_is_reported_as_is() {
        let r = decode(&denial(
            257,
            -13,
            path_bytes(Some("/etc//shadow"), &[], 0),
            None,
        ));
        let Some(Record {
            event: Event::Denial(d),
            header,
        }) = r
        else {
            panic!("not a denial: {r:?}");
        };
        assert_eq!(header.gen, 7);
        assert_eq!(d.syscall, "openat");
        assert_eq!(d.errno, "EACCES");
        assert_eq!(d.path.as_deref(), Some("/etc/shadow"));
        assert_eq!(d.comm, "cat");
        assert_eq!(d.path_note, None);
    }

    #[test]
    fn relative_name_is_joined_to_the_directory_the_kernel_walked() {
        let r = decode(&denial(
            83,
            -1,
            path_bytes(Some("./sub/x"), &["work", "alice", "home"], 1),
            None,
        ));
        let Some(Record {
            event: Event::Denial(d),
            ..
        }) = r
        else {
            panic!("not a denial");
        };
        assert_eq!(d.syscall, "mkdir");
        assert_eq!(d.errno, "EPERM");
        assert_eq!(d.path.as_deref(), Some("/home/alice/work/sub/x"));
    }

    #[test]
    fn dot_dot_and_repeated_slashes_are_normalized_lexically() {
        for (raw, want) in [
            ("/etc/../etc/shadow", "/etc/shadow"),
            ("//etc/./ssl//private/", "/etc/ssl/private"),
            ("/../../etc", "/etc"),
            ("/a/b/../..", "/"),
            ("/", "/"),
        ] {
            assert_eq!(normalize(raw), want, "{raw}");
        }
        // A relative name with `..`, against the directory the kernel walked.
        let r = decode(&denial(
            257,
            -13,
            path_bytes(Some("../../etc/shadow"), &["alice", "home"], 1),
            None,
        ));
        let Some(Record {
            event: Event::Denial(d),
            ..
        }) = r
        else {
            panic!("not a denial");
        };
        assert_eq!(d.path.as_deref(), Some("/etc/shadow"));
    }

    #[test]
    fn cwd_at_root_and_fd_targets() {
        let r = decode(&denial(87, -13, path_bytes(Some("f"), &[], 1), None));
        let Some(Record {
            event: Event::Denial(d),
            ..
        }) = r
        else {
            panic!("not a denial");
        };
        assert_eq!(d.path.as_deref(), Some("/f"));
        // fchmod(fd): no name, the walk started at the file itself.
        let r = decode(&denial(91, -1, path_bytes(None, &["file", "tmp"], 1), None));
        let Some(Record {
            event: Event::Denial(d),
            ..
        }) = r
        else {
            panic!("not a denial");
        };
        assert_eq!(d.path.as_deref(), Some("/tmp/file"));
    }

    #[test]
    fn rename_reports_both_paths_and_truncation_is_flagged() {
        let r = decode(&denial(
            316,
            -13,
            path_bytes(Some("/a"), &[], 0),
            Some(path_bytes(Some("b"), &["deep"], 2)),
        ));
        let Some(Record {
            event: Event::Denial(d),
            ..
        }) = r
        else {
            panic!("not a denial");
        };
        assert_eq!(d.path.as_deref(), Some("/a"));
        assert_eq!(d.path2.as_deref(), Some("…/deep/b"));
        assert_eq!(d.path_note.as_deref(), Some("truncated"));
    }

    #[test]
    fn any_return_value_is_named() {
        // Found by the learn_record fuzz target: negating i64::MIN
        // overflowed (a panic with overflow checks, as in tests).
        let r = decode(&denial(257, i64::MIN, path_bytes(Some("/x"), &[], 0), None));
        let Some(Record {
            event: Event::Denial(d),
            ..
        }) = r
        else {
            panic!("not a denial: {r:?}");
        };
        assert_eq!(d.errno, "errno 9223372036854775808");
        assert_eq!(errno_name(i64::MAX), "errno -9223372036854775807");
        assert_eq!(errno_name(-1), "EPERM");
        assert_eq!(errno_name(-13), "EACCES");
        assert_eq!(errno_name(-2), "errno 2");
    }

    #[test]
    fn short_or_unknown_records_are_refused() {
        assert_eq!(decode(&[0u8; 10]), None);
        let mut b = denial(2, -13, path_bytes(Some("/x"), &[], 0), None);
        b.truncate(DENIAL_LEN - 1);
        assert_eq!(decode(&b), None);
        let mut b = header_bytes(99, 1, "x");
        b.resize(SMALL_LEN, 0);
        assert_eq!(decode(&b), None);
    }

    #[test]
    fn small_records() {
        let mut b = header_bytes(EV_FORK, 10, "sh");
        b.extend_from_slice(&11u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        assert_eq!(
            decode(&b).map(|r| r.event),
            Some(Event::Fork { pid: 10, child: 11 })
        );
        let mut b = header_bytes(EV_LEFT, 10, "su");
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        assert_eq!(
            decode(&b).map(|r| r.event),
            Some(Event::Left {
                pid: 10,
                reason: "secure_exec".into()
            })
        );
    }

    #[test]
    fn left_reasons_keep_their_wire_names() {
        for (code, name) in [
            (1u32, "secure_exec"),
            (2, "credentials"),
            (3, "non_dumpable"),
            (9, "unknown"),
        ] {
            let mut b = header_bytes(EV_LEFT, 10, "agent");
            b.extend_from_slice(&code.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            assert_eq!(
                decode(&b).map(|r| r.event),
                Some(Event::Left {
                    pid: 10,
                    reason: name.into()
                }),
                "reason {code}"
            );
        }
    }

    #[test]
    fn events_round_trip_as_json() -> Result<(), serde_json::Error> {
        let e = Event::Exit {
            pid: 3,
            status: 256,
        };
        let s = serde_json::to_string(&e)?;
        assert_eq!(s, r#"{"kind":"exit","pid":3,"status":256}"#);
        assert_eq!(serde_json::from_str::<Event>(&s)?, e);
        Ok(())
    }
}
