//! The audit log: one record per security-relevant event (a denial, a
//! policy reload, a monitor or learning session started), in one shape.
//!
//! Every record has the same fields, in the same order: `uid`, `gid`,
//! `pid`, `comm`, `exe` (who; each a value or `null`), `conn` (the
//! connection, or `null`), `action`, `target` (a name, an array of names,
//! or `null`), `rule` (the deciding rule, or `null`) and `result`, then
//! the event's own extra fields. Values are JSON values, never Rust
//! `Debug` text. `exe` is read when the record is made, through the pidfd
//! the broker holds, and is `null` when it cannot be read (another user's
//! `/proc/PID/exe` needs `CAP_SYS_PTRACE`) or the process is gone.
//!
//! A record is a `tracing` event with target [`TARGET`] whose fields
//! [`JSON_FIELD`] and [`TEXT_FIELD`] carry it already rendered, as a JSON
//! object and as `key=value` text. `wardend` prints one of them in place
//! of the event's fields (see its `--log-format`); any other subscriber
//! shows both as strings.
//!
//! # Rate limit
//! A caller that is denied in a loop must not flood the log, so records
//! are limited per (uid, action): at most [`AUDIT_BURST`] per
//! [`AUDIT_WINDOW`]. What is held back is counted and reported in one
//! line, `N similar events suppressed` (`result` `"suppressed"`), before
//! the next record for that key or at the next [`flush`], whichever
//! comes first. The table of keys holds at most [`AUDIT_RATE_KEYS`];
//! when it is full of live windows, every other key shares one window
//! (reported with `action` `"*"`), so many uids cannot make it grow.
//!
//! The table is process-wide, like the log it guards.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::peer::Peer;

/// The `tracing` target of audit records.
pub const TARGET: &str = "warden::audit";
/// The field that carries a record as a JSON object.
pub const JSON_FIELD: &str = "audit_json";
/// The field that carries a record as `key=value` text.
pub const TEXT_FIELD: &str = "audit_text";
/// Records one (uid, action) may produce per [`AUDIT_WINDOW`].
pub const AUDIT_BURST: u32 = 20;
/// The rate-limit window.
pub const AUDIT_WINDOW: Duration = Duration::from_secs(10);
/// (uid, action) keys the rate limiter tracks at once.
pub const AUDIT_RATE_KEYS: usize = 1024;

/// Who did it. Every field may be unknown (`null` in the record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// Effective uid.
    pub uid: Option<u32>,
    /// Effective gid.
    pub gid: Option<u32>,
    /// Process id.
    pub pid: Option<u32>,
    /// The process's `comm` (chosen by the process: shown escaped).
    pub comm: Option<String>,
    /// The process's executable, if the broker may read it.
    pub exe: Option<String>,
    /// The broker connection.
    pub conn: Option<u64>,
}

/// `/proc/PID/exe` of the process `pidfd` refers to, kept only if that
/// process is still alive afterwards (so the pid was not reused).
fn exe_confirmed(pid: u32, pidfd: Option<BorrowedFd<'_>>) -> Option<String> {
    let pidfd = pidfd?;
    if pid == 0 {
        return None;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    match warden_sys::pidfd_exited(pidfd) {
        Ok(false) => Some(exe.display().to_string()),
        Ok(true) | Err(_) => None,
    }
}

impl Actor {
    /// The broker itself, or a cause outside any connection (a signal).
    pub fn none() -> Actor {
        Actor::default()
    }

    /// The caller of a handler.
    pub fn of_caller(ctx: &crate::HandlerContext) -> Actor {
        let c = &ctx.caller;
        let (comm, exe) = ctx
            .channel
            .with_caller_pidfd(|fd| {
                (
                    warden_sys::process_comm_confirmed(c.pid, Some(fd)),
                    exe_confirmed(c.pid, Some(fd)),
                )
            })
            .unwrap_or((None, None));
        Actor {
            uid: Some(c.uid),
            gid: Some(c.gid),
            pid: Some(c.pid),
            comm,
            exe,
            conn: Some(ctx.connection),
        }
    }

    /// A connection's peer.
    pub(crate) fn of_peer(peer: &Peer) -> Actor {
        use std::os::fd::AsFd;
        let i = &peer.identity;
        Actor {
            uid: Some(i.uid),
            gid: Some(i.gid),
            pid: Some(i.pid),
            comm: peer.comm.clone(),
            exe: exe_confirmed(i.pid, peer.pidfd.as_ref().map(AsFd::as_fd)),
            conn: Some(peer.id),
        }
    }
}

/// One audit record.
#[derive(Debug)]
pub struct Record<'a> {
    /// Who.
    pub actor: &'a Actor,
    /// What: `call`, `provide`, `subscribe`, `publish`, `monitor`,
    /// `policy.reload`, `policy.revoke`, `learn.start`, `learn.stop`,
    /// `module.load`, `module.unload`, `module.reload`.
    pub action: &'a str,
    /// On what: a name, an array of names, or `null`.
    pub target: Value,
    /// The deciding rule (`Decision::reason`), if a rule decided.
    pub rule: Option<&'a str>,
    /// `denied`, `allowed`, `ok`, `failed`, `started`, `revoked`, ...
    pub result: &'a str,
    /// The line's message, for people.
    pub message: &'a str,
    /// The event's own fields (an object), after the common ones.
    pub extra: Value,
}

/// The record's fields, in their order.
fn fields(r: &Record<'_>) -> Vec<(String, Value)> {
    let a = r.actor;
    let mut out: Vec<(String, Value)> = [
        ("uid", json!(a.uid)),
        ("gid", json!(a.gid)),
        ("pid", json!(a.pid)),
        ("comm", json!(a.comm)),
        ("exe", json!(a.exe)),
        ("conn", json!(a.conn)),
        ("action", json!(r.action)),
        ("target", r.target.clone()),
        ("rule", json!(r.rule)),
        ("result", json!(r.result)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(extra) = r.extra.as_object() {
        for (k, v) in extra {
            // Never a second value for a common field.
            if !out.iter().any(|(c, _)| c == k) {
                out.push((k.clone(), v.clone()));
            }
        }
    }
    out
}

/// Renders the fields as a JSON object (in order) and as `key=value` text.
pub fn render(pairs: &[(String, Value)]) -> (String, String) {
    let mut js = String::from("{");
    let mut text = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        let v = v.to_string();
        if i > 0 {
            js.push(',');
            text.push(' ');
        }
        js.push_str(&Value::from(k.as_str()).to_string());
        js.push(':');
        js.push_str(&v);
        text.push_str(k);
        text.push('=');
        text.push_str(&v);
    }
    js.push('}');
    (js, text)
}

fn emit(r: &Record<'_>) {
    let (js, text) = render(&fields(r));
    tracing::info!(
        target: "warden::audit",
        audit_json = js.as_str(),
        audit_text = text.as_str(),
        "{}",
        r.message
    );
}

/// Writes an audit record, unless its (uid, action) is over the rate
/// limit (then it is counted and reported later as suppressed).
pub fn record(r: Record<'_>) {
    if admitted(r.actor.uid, r.action) {
        write(&r);
    }
}

/// Counts a record of (uid, action) against the rate limit: true if it may
/// be written (with [`write()`]). Reports first what an ended window held
/// back. For callers that would rather not build a record (read `exe`)
/// that is then suppressed.
pub fn admitted(uid: Option<u32>, action: &str) -> bool {
    let (verdict, reports) = lock(limiter()).admit((uid, action.to_owned()), Instant::now());
    for rep in reports {
        emit_suppressed(&rep);
    }
    verdict == Verdict::Emit
}

/// Writes a record [`admitted`] let through.
pub fn write(r: &Record<'_>) {
    emit(r);
}

/// Reports what windows that have ended held back, and forgets them.
/// `wardend` calls this every [`AUDIT_WINDOW`].
pub fn flush() {
    let reports = lock(limiter()).expire(Instant::now());
    for rep in reports {
        emit_suppressed(&rep);
    }
}

fn emit_suppressed(rep: &Suppressed) {
    let actor = Actor {
        uid: rep.uid,
        ..Actor::default()
    };
    let message = if rep.overflow {
        format!(
            "{} similar events suppressed (of several uids and actions: the rate-limit table was full)",
            rep.count
        )
    } else {
        format!("{} similar events suppressed", rep.count)
    };
    emit(&Record {
        actor: &actor,
        action: &rep.action,
        target: Value::Null,
        rule: None,
        result: "suppressed",
        message: &message,
        extra: json!({
            "suppressed": rep.count,
            "window_s": AUDIT_WINDOW.as_secs(),
        }),
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn limiter() -> &'static Mutex<Limiter> {
    static LIMITER: OnceLock<Mutex<Limiter>> = OnceLock::new();
    LIMITER.get_or_init(|| {
        Mutex::new(Limiter::new(
            AUDIT_RATE_KEYS,
            AUDIT_BURST,
            AUDIT_WINDOW,
            Instant::now(),
        ))
    })
}

type Key = (Option<u32>, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Emit,
    Suppress,
}

/// Records held back in a window that has ended.
#[derive(Debug, PartialEq, Eq)]
struct Suppressed {
    uid: Option<u32>,
    action: String,
    count: u64,
    /// The shared window of keys that found the table full.
    overflow: bool,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    seen: u32,
    suppressed: u64,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            start: now,
            seen: 0,
            suppressed: 0,
        }
    }

    /// Counts one record in the window; `Some(n)` if a window that held
    /// back `n > 0` records ended first.
    fn admit(&mut self, now: Instant, burst: u32, window: Duration) -> (Verdict, Option<u64>) {
        let mut ended = None;
        if now.duration_since(self.start) >= window {
            ended = (self.suppressed > 0).then_some(self.suppressed);
            *self = Window::new(now);
        }
        if self.seen < burst {
            self.seen += 1;
            (Verdict::Emit, ended)
        } else {
            self.suppressed += 1;
            (Verdict::Suppress, ended)
        }
    }
}

/// The rate limiter's state: a window per (uid, action), at most `max`,
/// and one shared window for keys that find the table full.
#[derive(Debug)]
struct Limiter {
    keys: HashMap<Key, Window>,
    overflow: Window,
    max: usize,
    burst: u32,
    window: Duration,
}

impl Limiter {
    fn new(max: usize, burst: u32, window: Duration, now: Instant) -> Limiter {
        Limiter {
            keys: HashMap::new(),
            overflow: Window::new(now),
            max,
            burst,
            window,
        }
    }

    fn admit(&mut self, key: Key, now: Instant) -> (Verdict, Vec<Suppressed>) {
        let mut reports = Vec::new();
        if !self.keys.contains_key(&key) && self.keys.len() >= self.max {
            reports = self.expire(now);
        }
        let (burst, window) = (self.burst, self.window);
        if !self.keys.contains_key(&key) && self.keys.len() >= self.max {
            let (v, ended) = self.overflow.admit(now, burst, window);
            if let Some(count) = ended {
                reports.push(overflow_report(count));
            }
            return (v, reports);
        }
        let w = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| Window::new(now));
        let (v, ended) = w.admit(now, burst, window);
        if let Some(count) = ended {
            reports.push(Suppressed {
                uid: key.0,
                action: key.1,
                count,
                overflow: false,
            });
        }
        (v, reports)
    }

    /// Removes the windows that have ended, reporting what they held back.
    fn expire(&mut self, now: Instant) -> Vec<Suppressed> {
        let window = self.window;
        let mut reports = Vec::new();
        self.keys.retain(|(uid, action), w| {
            if now.duration_since(w.start) < window {
                return true;
            }
            if w.suppressed > 0 {
                reports.push(Suppressed {
                    uid: *uid,
                    action: action.clone(),
                    count: w.suppressed,
                    overflow: false,
                });
            }
            false
        });
        if now.duration_since(self.overflow.start) >= window {
            if self.overflow.suppressed > 0 {
                reports.push(overflow_report(self.overflow.suppressed));
            }
            self.overflow = Window::new(now);
        }
        reports
    }
}

fn overflow_report(count: u64) -> Suppressed {
    Suppressed {
        uid: None,
        action: "*".to_owned(),
        count,
        overflow: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uid: u32, action: &str) -> Key {
        (Some(uid), action.to_owned())
    }

    #[test]
    fn every_record_has_the_common_fields_in_order_as_json_values() {
        let actor = Actor {
            uid: Some(1000),
            gid: Some(1000),
            pid: Some(42),
            comm: Some("sh".into()),
            exe: None,
            conn: Some(7),
        };
        let r = Record {
            actor: &actor,
            action: "policy.revoke",
            target: json!(["news.a", "svc.b"]),
            rule: None,
            result: "revoked",
            message: "m",
            extra: json!({ "session": 3, "uid": 5 }),
        };
        let (js, text) = render(&fields(&r));
        assert_eq!(
            js,
            r#"{"uid":1000,"gid":1000,"pid":42,"comm":"sh","exe":null,"conn":7,"action":"policy.revoke","target":["news.a","svc.b"],"rule":null,"result":"revoked","session":3}"#
        );
        assert_eq!(
            text,
            r#"uid=1000 gid=1000 pid=42 comm="sh" exe=null conn=7 action="policy.revoke" target=["news.a","svc.b"] rule=null result="revoked" session=3"#
        );
        assert!(!text.contains("Some(") && !text.contains("None"));
        // Control characters in a caller-chosen comm come out escaped.
        let actor = Actor {
            comm: Some("\u{1b}]0;pwn\u{7}".into()),
            ..Actor::default()
        };
        let r = Record {
            actor: &actor,
            action: "call",
            target: json!("x"),
            rule: Some("denied by rule 1 at f:2"),
            result: "denied",
            message: "m",
            extra: Value::Null,
        };
        let (js, text) = render(&fields(&r));
        assert!(!js.contains('\u{1b}') && !text.contains('\u{1b}'), "{text}");
        assert!(text.starts_with("uid=null gid=null pid=null comm=\"\\u001b]0;pwn\\u0007\""));
    }

    #[test]
    fn a_burst_past_the_limit_is_reported_as_suppressed_once() {
        let t0 = Instant::now();
        let mut l = Limiter::new(8, 3, Duration::from_secs(10), t0);
        let mut emitted = 0;
        for _ in 0..10 {
            let (v, reports) = l.admit(key(1, "call"), t0);
            assert!(reports.is_empty());
            emitted += usize::from(v == Verdict::Emit);
        }
        assert_eq!(emitted, 3);
        // Another key is not affected.
        assert_eq!(l.admit(key(2, "call"), t0).0, Verdict::Emit);
        assert_eq!(l.admit(key(1, "publish"), t0).0, Verdict::Emit);
        // The next window starts with the report of the last one.
        let t1 = t0 + Duration::from_secs(11);
        let (v, reports) = l.admit(key(1, "call"), t1);
        assert_eq!(v, Verdict::Emit);
        assert_eq!(
            reports,
            vec![Suppressed {
                uid: Some(1),
                action: "call".into(),
                count: 7,
                overflow: false
            }]
        );
        // Or flush reports it, and forgets the windows that ended.
        for _ in 0..5 {
            l.admit(key(3, "call"), t1);
        }
        let reports = l.expire(t1 + Duration::from_secs(11));
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!((reports[0].uid, reports[0].count), (Some(3), 2));
        assert!(l.keys.is_empty());
    }

    #[test]
    fn many_uids_cannot_grow_the_table_past_its_cap() {
        let t0 = Instant::now();
        let mut l = Limiter::new(16, 2, Duration::from_secs(10), t0);
        let mut emitted = 0u32;
        for uid in 0..100_000 {
            emitted += u32::from(l.admit(key(uid, "call"), t0).0 == Verdict::Emit);
        }
        assert_eq!(l.keys.len(), 16);
        // 16 keys with their own window, then everyone else shares one.
        assert_eq!(emitted, 16 + 2);
        let reports = l.expire(t0 + Duration::from_secs(10));
        assert_eq!(
            reports,
            vec![Suppressed {
                uid: None,
                action: "*".into(),
                count: 100_000 - 16 - 2,
                overflow: true
            }]
        );
        // Windows that ended make room again.
        assert_eq!(
            l.admit(key(200_000, "call"), t0 + Duration::from_secs(10))
                .0,
            Verdict::Emit
        );
        assert_eq!(l.keys.len(), 1);
    }
}
