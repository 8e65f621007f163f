//! Learning mode's ring-buffer record decoder (`warden_learn::event`'s
//! `decode`, through its `#[doc(hidden)] fuzz_decode_record`), and its
//! path normalization.
//!
//! The records come from the kernel half (`src/bpf/learn.h`), but what is
//! in them (comm, the paths a process named, the directory names the
//! kernel walked) is chosen by the captured process, so the decoder gets
//! arbitrary bytes here.
//!
//! Input: byte 0 picks the mode. Raw (even): the rest is the record.
//! Patched (odd): byte 1 picks a record length (each struct's exact size,
//! one less, or one more), the record starts as that many zero bytes with
//! byte 2's kind in its header, and the rest is patches `off_hi off_lo len
//! bytes…`; so small inputs reach the 2.8 to 5.8 KB records and their
//! path fields.
//!
//! Checked, for every record:
//! - decoding never panics, and a record is decoded only if it is at least
//!   its kind's struct size (48-byte header; fork, exit, left 56; exec
//!   2880; access 2896; denial 5768), of a known kind, and the event is the
//!   one of that kind, with the header's pid;
//! - bytes after the struct change nothing (a decoded record decodes the
//!   same with junk appended);
//! - no string contains a NUL, `comm` is at most 16 bytes before lossy
//!   UTF-8 replacement (48 after);
//! - `errno` is `EPERM`, `EACCES` or `errno N`; `target_pid` is set only
//!   for kill, tkill, tgkill and ptrace;
//! - the event survives its JSON form (`learn.events`) exactly.
//!
//! And for the text of the input as a path, `normalize` gives an absolute
//! path with no empty, `.` or `..` component, no trailing slash (but
//! `/`), is idempotent, and leaves an already normal path unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_learn::event::{fuzz_decode_record, normalize, Event, Record};

const HEADER: usize = 48;
const SMALL: usize = 56;
const EXEC: usize = 48 + 2832;
const ACCESS: usize = 2896;
const DENIAL: usize = 5768;

fn min_len(kind: u32) -> Option<usize> {
    match kind {
        1 => Some(DENIAL),
        2 | 4 | 5 => Some(SMALL),
        3 => Some(EXEC),
        6 => Some(ACCESS),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let record = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        patched(rest)
    };
    check_record(&record);
    check_normalize(&String::from_utf8_lossy(rest));
});

fn patched(p: &[u8]) -> Vec<u8> {
    let (Some(&len_sel), Some(&kind)) = (p.first(), p.get(1)) else {
        return Vec::new();
    };
    let sizes = [HEADER, SMALL, EXEC, ACCESS, DENIAL];
    let base = sizes[usize::from(len_sel) % sizes.len()];
    let len = match (len_sel / 8) % 3 {
        0 => base,
        1 => base - 1,
        _ => base + 1,
    };
    let mut b = vec![0u8; len];
    b[0..4].copy_from_slice(&u32::from(kind % 8).to_ne_bytes());
    let mut p = &p[2..];
    while p.len() >= 3 {
        let off = usize::from(u16::from_be_bytes([p[0], p[1]])) % len;
        let n = usize::from(p[2]).min(p.len() - 3).min(len - off);
        b[off..off + n].copy_from_slice(&p[3..3 + n]);
        p = &p[3 + n..];
    }
    b
}

fn check_record(b: &[u8]) {
    let got = fuzz_decode_record(b);
    let kind = b
        .get(0..4)
        .map(|k| u32::from_ne_bytes([k[0], k[1], k[2], k[3]]));
    let Some(Record { header, event }) = got.clone() else {
        if let Some(need) = kind.and_then(min_len) {
            // Known kind, long enough: only an access without a path (the
            // one field that is required) may be refused.
            if b.len() >= need && kind != Some(6) {
                panic!("a kind {kind:?} record of {} bytes was refused", b.len());
            }
        }
        return;
    };
    let kind = kind.expect("decoded, so it has a header");
    let need = min_len(kind).unwrap_or_else(|| panic!("decoded unknown kind {kind}"));
    assert!(
        b.len() >= need,
        "kind {kind}: decoded {} bytes, needs {need}",
        b.len()
    );
    assert_eq!(header.kind, kind);
    let tgid = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
    assert_eq!(header.tgid, tgid);
    assert!(!header.comm.contains('\0'));
    assert!(header.comm.len() <= 48, "{:?}", header.comm);
    let raw_comm = &b[32..48];
    let raw_comm = &raw_comm[..raw_comm.iter().position(|&c| c == 0).unwrap_or(16)];
    assert_eq!(header.comm, String::from_utf8_lossy(raw_comm));

    // Junk after the struct changes nothing.
    let mut longer = b.to_vec();
    longer.extend_from_slice(&[0xa5; 17]);
    assert_eq!(
        fuzz_decode_record(&longer),
        got,
        "trailing bytes changed the record"
    );

    let strings: Vec<&str> = match &event {
        Event::Denial(d) => {
            assert_eq!(kind, 1);
            assert_eq!(d.pid, tgid);
            assert_eq!(d.comm, header.comm);
            assert!(
                d.errno == "EPERM" || d.errno == "EACCES" || d.errno.starts_with("errno "),
                "{}",
                d.errno
            );
            if d.target_pid.is_some() {
                assert!(
                    matches!(d.nr, 62 | 200 | 234 | 101),
                    "target_pid for {}",
                    d.nr
                );
            }
            assert_eq!(d.syscall, warden_learn::syscall_name(d.nr));
            [&d.comm, &d.syscall, &d.errno]
                .into_iter()
                .map(String::as_str)
                .chain(
                    [&d.path, &d.path2, &d.path_note]
                        .into_iter()
                        .flatten()
                        .map(String::as_str),
                )
                .collect()
        }
        Event::Fork { pid, .. } => {
            assert_eq!(kind, 2);
            assert_eq!(*pid, tgid);
            vec![]
        }
        Event::Exec { pid, exe, comm } => {
            assert_eq!(kind, 3);
            assert_eq!(*pid, tgid);
            assert_eq!(comm, &header.comm);
            exe.iter().map(String::as_str).collect()
        }
        Event::Exit { pid, .. } => {
            assert_eq!(kind, 4);
            assert_eq!(*pid, tgid);
            vec![]
        }
        Event::Left { pid, reason } => {
            assert_eq!(kind, 5);
            assert_eq!(*pid, tgid);
            assert!(
                ["secure_exec", "credentials", "non_dumpable", "unknown"]
                    .contains(&reason.as_str()),
                "{reason}"
            );
            vec![]
        }
        Event::Access(a) => {
            assert_eq!(kind, 6);
            assert_eq!(a.pid, tgid);
            vec![a.path.as_str(), a.syscall.as_str(), a.access.as_str()]
        }
    };
    for s in strings {
        assert!(!s.contains('\0'), "NUL in {s:?}");
    }

    let json = serde_json::to_string(&event).expect("an event serializes");
    let back: Event = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(back, event, "{json}");
}

fn check_normalize(p: &str) {
    let n = normalize(p);
    assert!(n.starts_with('/'), "{p:?} -> {n:?}");
    if n != "/" {
        assert!(!n.ends_with('/'), "{p:?} -> {n:?}");
        for c in n[1..].split('/') {
            assert!(!c.is_empty() && c != "." && c != "..", "{p:?} -> {n:?}");
        }
    }
    assert_eq!(normalize(&n), n, "not idempotent on {p:?}");
    let already = p.starts_with('/')
        && (p == "/"
            || (!p.ends_with('/')
                && p[1..]
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..")));
    if already {
        assert_eq!(n, p, "changed a normal path");
    }
}
