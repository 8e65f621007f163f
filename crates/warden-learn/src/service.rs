//! The broker side of learning mode: `learn.start`, `learn.events` and
//! `learn.stop`.
//!
//! # Who may learn what
//! A caller may trace a process only if policy grants it the `learn`
//! action on `own` and the process is its own: real, effective, saved and
//! filesystem uid equal to the caller's uid, every gid one of the caller's
//! groups, no capabilities, and dumpable (`/proc/PID` owned by the caller).
//! That is the kernel's own test for "may this user ptrace that process",
//! minus the parts that do not apply. Root callers may trace any process
//! if policy grants `learn` on `any`. The target is pinned with a pidfd
//! before anything is read, its credentials come from the pidfd itself,
//! and the kernel side binds the tracked pid to the process's start time:
//! a pid recycled at any point between the request and the attach cannot
//! be captured (the start fails with "exited").
//!
//! # Streams
//! A session buffers what the kernel reports in its own bounded buffer;
//! `learn.events` makes the broker push it to the caller as events on
//! topic `warden.learn.events` (`{"session", "events": [...]}`), ending
//! with one `{"session", "end": {...}}` after `learn.stop`. When the
//! buffer is full, further events are counted, not kept, and the count is
//! in the end record. A session ends with `learn.stop` or when its
//! connection closes, whichever comes first.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Notify;
use warden::{CallerChannel, Handler, HandlerContext, Pushed};
use warden_policy::Action;
use warden_proto::{ErrorCode, Payload, TopicName, WireError};

use crate::capture::{Capture, CaptureError, Session, SessionStats, Target};
use crate::event::{Event, Record, EVENTS_TOPIC};

/// Events a session keeps for its client before counting them as lost.
pub const SESSION_BUFFER: usize = 65_536;
/// Events per pushed frame.
const BATCH: usize = 256;

/// Settings from the `[learn]` section.
#[derive(Debug, Clone)]
pub struct LearnSettings {
    /// Sessions one uid may run at once.
    pub max_sessions_per_uid: usize,
    /// Test hook: pause this long between checking the target and
    /// attaching (to test pid-reuse races). Zero in production.
    pub attach_delay: Duration,
}

impl Default for LearnSettings {
    fn default() -> Self {
        LearnSettings {
            max_sessions_per_uid: 4,
            attach_delay: Duration::ZERO,
        }
    }
}

/// Learning mode, as registered with the broker.
#[derive(Debug)]
pub struct LearnService {
    capture: Arc<Capture>,
    settings: LearnSettings,
    sessions: Mutex<HashMap<u64, Arc<Live>>>,
    next_id: AtomicU64,
}

/// The per-session state shared by the reader thread, the stream task and
/// the handlers.
struct Live {
    id: u64,
    uid: u32,
    connection: u64,
    session: Mutex<Option<Session>>,
    buffer: Mutex<Buffer>,
    wake: Notify,
    /// Set once `learn.events` started the stream.
    streaming: AtomicBool,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("id", &self.id)
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Buffer {
    events: VecDeque<Value>,
    /// Events dropped because the buffer was full.
    overflow: u64,
    /// Set when the capture has stopped: (kernel counters, end reason).
    end: Option<(SessionStats, &'static str)>,
    /// pid → executable, from the start, execs and forks.
    exes: HashMap<u32, Option<String>>,
    denials: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn wire(code: ErrorCode, msg: impl Into<String>) -> WireError {
    WireError::new(code, msg.into())
}

fn bad_request(e: impl std::fmt::Display) -> WireError {
    wire(ErrorCode::BadRequest, format!("invalid parameters: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartParams {
    pid: u32,
    #[serde(default)]
    accesses: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionParams {
    session: u64,
}

impl Live {
    fn record(&self, r: Record) {
        let mut b = lock(&self.buffer);
        let mut event = r.event;
        match &mut event {
            Event::Denial(d) => {
                d.exe = b.exes.get(&d.pid).cloned().flatten();
                b.denials += 1;
            }
            Event::Exec { pid, exe, .. } => {
                b.exes.insert(*pid, exe.clone());
            }
            Event::Fork { pid, child } => {
                let exe = b.exes.get(pid).cloned().flatten();
                b.exes.insert(*child, exe);
            }
            Event::Exit { .. } | Event::Left { .. } | Event::Access(_) => {}
        }
        if b.events.len() >= SESSION_BUFFER {
            b.overflow += 1;
            return;
        }
        match serde_json::to_value(&event) {
            Ok(v) => b.events.push_back(v),
            Err(_) => b.overflow += 1,
        }
        drop(b);
        self.wake.notify_one();
    }

    /// Stops the capture (idempotent) and marks the stream's end.
    fn finish(&self, why: &'static str) -> Option<SessionStats> {
        // Stopping joins the reader: everything the kernel wrote has been
        // recorded, and the session's slot is free.
        let stats = lock(&self.session).take().map(|mut s| s.stop());
        if let Some(s) = stats {
            let mut b = lock(&self.buffer);
            if b.end.is_none() {
                b.end = Some((s, why));
            }
        }
        self.wake.notify_one();
        stats
    }

    fn end_record(&self, stats: SessionStats, why: &str) -> Value {
        let b = lock(&self.buffer);
        json!({
            "session": self.id,
            "end": {
                "reason": why,
                "denials": b.denials,
                "kernel_events": stats.events,
                "lost_in_kernel": stats.lost,
                "lost_in_broker": b.overflow,
                "stale_discarded": stats.stale,
                "untracked_children": stats.untracked,
            }
        })
    }
}

/// Pushes a session's buffered events to its client until the stream
/// ends.
async fn stream(live: Arc<Live>, channel: CallerChannel) {
    let Ok(topic) = TopicName::try_from(EVENTS_TOPIC) else {
        return;
    };
    loop {
        let (batch, end) = {
            let mut b = lock(&live.buffer);
            let n = b.events.len().min(BATCH);
            let batch: Vec<Value> = b.events.drain(..n).collect();
            let end = if b.events.is_empty() { b.end } else { None };
            (batch, end)
        };
        if !batch.is_empty() {
            let data = json!({ "session": live.id, "events": batch });
            let Ok(payload) = Payload::from_value(&data) else {
                continue;
            };
            if channel.push_wait(&topic, payload).await == Pushed::Closed {
                return;
            }
            continue;
        }
        if let Some((stats, why)) = end {
            if let Ok(p) = Payload::from_value(&live.end_record(stats, why)) {
                let _ = channel.push_wait(&topic, p).await;
            }
            return;
        }
        tokio::select! {
            _ = live.wake.notified() => {}
            _ = channel.closed() => return,
        }
    }
}

impl LearnService {
    /// A service with nothing loaded yet (the eBPF programs load with the
    /// first session).
    pub fn new(settings: LearnSettings) -> Arc<Self> {
        Arc::new(LearnService {
            capture: Arc::new(Capture::new()),
            settings,
            sessions: Mutex::default(),
            next_id: AtomicU64::new(1),
        })
    }

    /// The capture (for status and tests).
    pub fn capture(&self) -> &Arc<Capture> {
        &self.capture
    }

    /// Handlers to register: (method, handler).
    pub fn handlers(self: &Arc<Self>) -> Vec<(&'static str, LearnMethod)> {
        [
            ("learn.start", Kind::Start),
            ("learn.events", Kind::Events),
            ("learn.stop", Kind::Stop),
        ]
        .into_iter()
        .map(|(name, kind)| {
            (
                name,
                LearnMethod {
                    service: Arc::clone(self),
                    kind,
                },
            )
        })
        .collect()
    }

    /// Stops every session (broker shutdown).
    pub fn stop_all(&self) {
        let all: Vec<Arc<Live>> = lock(&self.sessions).drain().map(|(_, l)| l).collect();
        for l in all {
            l.finish("broker_stopping");
        }
    }

    fn start(&self, ctx: &HandlerContext, params: &Payload) -> Result<Value, WireError> {
        let p: StartParams = params.parse().map_err(bad_request)?;
        let caller = &ctx.caller;
        let denied = |why: String| {
            tracing::warn!(
                target: "warden::audit",
                uid = caller.uid, pid = caller.pid, action = "learn.start",
                target_pid = p.pid, result = "denied", "{why}"
            );
            wire(ErrorCode::Denied, why)
        };
        // The caller must still be who it was at connect, in our pid
        // namespace (the pid it sent is read in ours).
        let caller_now = ctx
            .channel
            .with_caller_pidfd(|fd| warden_sys::process_facts(fd, caller.pid))
            .ok_or_else(|| wire(ErrorCode::Unavailable, "the calling process has gone away"))?
            .map_err(|_| wire(ErrorCode::Unavailable, "the calling process has gone away"))?;
        if caller_now.pid_ns_levels != 1 {
            return Err(denied(
                "learning mode needs the caller in the broker's pid namespace (the pid you \
                 sent cannot be interpreted from inside a container)"
                    .into(),
            ));
        }
        if caller_now.uids[0] != caller.uid || caller_now.uids[1] != caller.uid {
            return Err(denied(format!(
                "the calling process's real/effective uid ({}/{}) is no longer uid {} it \
                 connected with",
                caller_now.uids[0], caller_now.uids[1], caller.uid
            )));
        }
        let pidfd = warden_sys::pidfd_open(p.pid).map_err(|e| {
            if e.raw_os_error() == Some(libc::ESRCH) {
                wire(
                    ErrorCode::BadRequest,
                    format!("no process {} exists", p.pid),
                )
            } else {
                wire(
                    ErrorCode::Unavailable,
                    format!("cannot pin process {}: {e}", p.pid),
                )
            }
        })?;
        let facts = warden_sys::process_facts(pidfd.as_fd(), p.pid).map_err(|e| {
            wire(
                ErrorCode::BadRequest,
                format!("cannot read process {}: {e}", p.pid),
            )
        })?;
        let mut caller_groups = caller.groups.clone();
        caller_groups.push(caller.gid);
        let owned = facts.uids.iter().all(|&u| u == caller.uid)
            && facts.gids.iter().all(|g| caller_groups.contains(g))
            && (caller.uid == 0 || (facts.cap_permitted == 0 && facts.cap_effective == 0))
            && facts.proc_owner == caller.uid;
        let name = if owned { "own" } else { "any" };
        let decision = ctx.decide(Action::Learn, name);
        if !decision.allowed {
            return Err(denied(if owned {
                format!(
                    "uid {} may not learn its own processes ({})",
                    caller.uid,
                    decision.reason()
                )
            } else {
                format!(
                    "process {} is not yours (uids {:?}, gids {:?}{}); learning another user's \
                     process needs `learn` on `any` ({})",
                    p.pid,
                    facts.uids,
                    facts.gids,
                    if facts.cap_permitted != 0 {
                        ", holds capabilities"
                    } else {
                        ""
                    },
                    decision.reason()
                )
            }));
        }
        if !owned && caller.uid != 0 {
            return Err(denied(format!(
                "process {} is not yours, and only root may learn other users' processes",
                p.pid
            )));
        }
        {
            let sessions = lock(&self.sessions);
            let mine = sessions.values().filter(|l| l.uid == caller.uid).count();
            if mine >= self.settings.max_sessions_per_uid {
                return Err(wire(
                    ErrorCode::LimitExceeded,
                    format!(
                        "uid {} already runs {mine} learning sessions (max_sessions_per_uid = {}); \
                         stop one first",
                        caller.uid, self.settings.max_sessions_per_uid
                    ),
                ));
            }
        }
        if !self.settings.attach_delay.is_zero() {
            std::thread::sleep(self.settings.attach_delay);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let live = Arc::new(Live {
            id,
            uid: caller.uid,
            connection: ctx.connection,
            session: Mutex::new(None),
            buffer: Mutex::new(Buffer::default()),
            wake: Notify::new(),
            streaming: AtomicBool::new(false),
        });
        lock(&live.buffer)
            .exes
            .insert(p.pid, facts.exe.as_ref().map(|e| e.display().to_string()));
        let target = Target {
            pid: p.pid,
            start_ticks: facts.start_ticks,
            uid: facts.uids[1],
            accesses: p.accesses,
            // Root may read any process's memory; others only dumpable
            // ones (the ptrace rule), so theirs leave when they stop being.
            leave_non_dumpable: caller.uid != 0,
        };
        let sink_live = Arc::clone(&live);
        let start_ticks = facts.start_ticks;
        let session = self
            .capture
            .start(
                &target,
                || warden_sys::confirm_same_process(pidfd.as_fd(), p.pid, start_ticks).is_ok(),
                Box::new(move |r| sink_live.record(r)),
            )
            .map_err(|e| match e {
                CaptureError::Exited(_) | CaptureError::Busy(_) => {
                    wire(ErrorCode::BadRequest, e.to_string())
                }
                CaptureError::Full => wire(ErrorCode::LimitExceeded, e.to_string()),
                CaptureError::PidNamespace(ref source) => {
                    wire(ErrorCode::Unavailable, format!("{e}: {source}"))
                }
                CaptureError::Load(_) | CaptureError::Map(_) => {
                    wire(ErrorCode::Unavailable, e.to_string())
                }
            })?;
        *lock(&live.session) = Some(session);
        lock(&self.sessions).insert(id, Arc::clone(&live));
        // The session ends with its connection.
        let watch = ctx.channel.clone();
        let sessions_live = Arc::clone(&live);
        tokio::spawn(async move {
            watch.closed().await;
            sessions_live.finish("client_disconnected");
        });
        tracing::info!(
            target: "warden::audit",
            uid = caller.uid, pid = caller.pid, action = "learn.start", session = id,
            target_pid = p.pid, target_exe = ?facts.exe, rule = %decision.reason(), result = "allowed",
            "learning session started"
        );
        Ok(json!({
            "session": id,
            "pid": p.pid,
            "comm": facts.comm,
            "exe": facts.exe.map(|e| e.display().to_string()),
            "owned": owned,
            "accesses": p.accesses,
        }))
    }

    fn own_session(&self, ctx: &HandlerContext, id: u64) -> Result<Arc<Live>, WireError> {
        let sessions = lock(&self.sessions);
        match sessions.get(&id) {
            Some(l) if l.connection == ctx.connection => Ok(Arc::clone(l)),
            _ => Err(wire(
                ErrorCode::BadRequest,
                format!("no learning session {id} on this connection"),
            )),
        }
    }

    fn events(&self, ctx: &HandlerContext, params: &Payload) -> Result<Value, WireError> {
        let p: SessionParams = params.parse().map_err(bad_request)?;
        let live = self.own_session(ctx, p.session)?;
        if !live.streaming.swap(true, Ordering::AcqRel) {
            tokio::spawn(stream(Arc::clone(&live), ctx.channel.clone()));
        }
        Ok(json!({ "session": p.session, "topic": EVENTS_TOPIC }))
    }

    fn stop(&self, ctx: &HandlerContext, params: &Payload) -> Result<Value, WireError> {
        let p: SessionParams = params.parse().map_err(bad_request)?;
        let live = self.own_session(ctx, p.session)?;
        lock(&self.sessions).remove(&p.session);
        let stats = live.finish("stopped").unwrap_or_default();
        let b = lock(&live.buffer);
        tracing::info!(
            target: "warden::audit",
            uid = ctx.caller.uid, pid = ctx.caller.pid, action = "learn.stop",
            session = p.session, denials = b.denials, result = "ok",
            "learning session stopped"
        );
        Ok(json!({
            "session": p.session,
            "denials": b.denials,
            "kernel_events": stats.events,
            "lost_in_kernel": stats.lost,
            "lost_in_broker": b.overflow,
            "stale_discarded": stats.stale,
        }))
    }

    /// Forgets sessions whose capture has ended (their connection closed).
    fn reap(&self) {
        lock(&self.sessions).retain(|_, l| lock(&l.session).is_some());
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Start,
    Events,
    Stop,
}

/// One of the `learn.*` methods, bound to the service.
#[derive(Debug)]
pub struct LearnMethod {
    service: Arc<LearnService>,
    kind: Kind,
}

impl Handler for LearnMethod {
    fn call(&self, ctx: &HandlerContext, params: &Payload) -> Result<Payload, WireError> {
        self.service.reap();
        let v = match self.kind {
            Kind::Start => self.service.start(ctx, params)?,
            Kind::Events => self.service.events(ctx, params)?,
            Kind::Stop => self.service.stop(ctx, params)?,
        };
        Payload::from_value(&v).map_err(|e| wire(ErrorCode::Internal, e.to_string()))
    }
}
