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
//! topic `warden.learn.events` (`{"session", "events": [...]}`, batches
//! of at most [`BATCH_BYTES`]), ending with one `{"session", "end":
//! {...}}` after `learn.stop`. A session ends with `learn.stop` or when
//! its connection closes, whichever comes first.
//!
//! # What a session may make the broker hold
//! A client that starts a session and stops reading must not make the
//! broker's memory grow. Every buffered event is charged to the caller's
//! uid (as JSON text, like the frames it becomes), within
//! `max_queued_bytes_per_uid` together with everything else the broker
//! holds for that uid; the frames keep the charge until written. The
//! reader keeps draining the kernel's ring buffer whatever the client
//! does, and an event the uid's budget (or the session's
//! [`SESSION_BUFFER`]) cannot hold is dropped and counted as
//! `lost_in_broker`. The per-session table of executables forgets a
//! process when it exits or leaves the capture and holds at most
//! [`MAX_EXES`] entries.
//!
//! # Limits per uid
//! `max_sessions_per_uid` is checked and the slot reserved under one lock
//! before anything is loaded or attached (a [`Reservation`], released if
//! the start fails), so concurrent `learn.start` calls cannot pass the
//! check together. The uid's share of the kernel's tracking table is
//! enforced by the kernel half (see `capture`).

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Notify;
use warden::{CallerChannel, Charge, Handler, HandlerContext, HandlerFuture, Pushed};
use warden_policy::Action;
use warden_proto::{ErrorCode, Payload, TopicName, WireError};

use crate::capture::{
    Capture, CaptureError, Session, SessionStats, Target, DEFAULT_MAX_TRACKED_PER_UID, MAX_TRACKED,
};
use crate::event::{Event, Record, EVENTS_TOPIC};

/// Events a session keeps for its client before counting them as lost
/// (besides their bytes counting against the uid's
/// `max_queued_bytes_per_uid`).
pub const SESSION_BUFFER: usize = 65_536;
/// Bytes of events per pushed frame, at most (an event larger than that
/// goes in a frame of its own).
pub const BATCH_BYTES: usize = 64 * 1024;
/// Processes whose executable a session remembers at once, to name the
/// program of each denial: as many as the tracking table holds. Entries
/// go when their process exits or leaves the capture; past the cap (only
/// if the kernel lost exit records), new processes' denials carry no
/// `exe`.
pub const MAX_EXES: usize = MAX_TRACKED as usize;
/// An event frame's bytes around its events, at most: the length prefix,
/// the envelope (`kind`, `topic`, `missed`) and `{"session":N,"events":[`.
const FRAME_OVERHEAD: usize = 256;
/// Room buffered events leave in the uid's budget, so that turning them
/// into a frame (whose envelope is charged on top) always finds room
/// once the frames already queued are read.
const ENVELOPE_HEADROOM: u64 = 2 * FRAME_OVERHEAD as u64;
/// The part of the uid's budget (1/`REPLY_SHARE`) buffered events leave
/// to everything else, so that a flooding session does not make the
/// uid's replies (`learn.stop`'s among them) fail with `limit_exceeded`.
const REPLY_SHARE: u64 = 16;

/// Settings from the `[learn]` section.
#[derive(Debug, Clone)]
pub struct LearnSettings {
    /// Sessions one uid may run at once.
    pub max_sessions_per_uid: usize,
    /// Processes one uid's sessions may track at once, together (its share
    /// of the kernel's tracking table).
    pub max_tracked_per_uid: u32,
    /// Test hook: pause this long between checking the target and
    /// attaching (to test pid-reuse races). Zero in production.
    pub attach_delay: Duration,
}

impl Default for LearnSettings {
    fn default() -> Self {
        LearnSettings {
            max_sessions_per_uid: 4,
            max_tracked_per_uid: DEFAULT_MAX_TRACKED_PER_UID,
            attach_delay: Duration::ZERO,
        }
    }
}

/// Learning mode, as registered with the broker.
#[derive(Debug)]
pub struct LearnService {
    capture: Arc<Capture>,
    settings: LearnSettings,
    sessions: Mutex<Sessions>,
    next_id: AtomicU64,
}

/// The sessions, and the starts under way, in one lock.
#[derive(Debug, Default)]
struct Sessions {
    live: HashMap<u64, Arc<Live>>,
    /// Per uid: `learn.start` calls past the limit check and not yet
    /// finished (each holds a [`Reservation`]).
    starting: HashMap<u32, usize>,
}

impl Sessions {
    fn unreserve(&mut self, uid: u32) {
        if let Some(n) = self.starting.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.starting.remove(&uid);
            }
        }
    }
}

/// One of a uid's `max_sessions_per_uid` places, taken under the sessions
/// lock when `learn.start` checks the limit, before anything is loaded or
/// attached. Given back on drop (the start failed) unless
/// [`Reservation::commit`] turned it into a running session.
struct Reservation<'a> {
    service: &'a LearnService,
    uid: u32,
    committed: bool,
}

impl Reservation<'_> {
    /// Registers the started session in the place reserved for it.
    fn commit(mut self, live: Arc<Live>) {
        let mut s = lock(&self.service.sessions);
        s.live.insert(live.id, live);
        s.unreserve(self.uid);
        self.committed = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            lock(&self.service.sessions).unreserve(self.uid);
        }
    }
}

/// The per-session state shared by the reader thread, the stream task and
/// the handlers.
struct Live {
    id: u64,
    uid: u32,
    connection: u64,
    session: Mutex<Option<Session>>,
    buffer: Mutex<Buffer>,
    /// The broker's frame limit: an event larger than a frame is lost.
    max_frame: usize,
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
    /// Events as JSON text, oldest first.
    events: VecDeque<String>,
    /// The bytes of `events` (each with one byte for its separator),
    /// charged to the caller's uid.
    charge: Option<Charge>,
    /// Events dropped because the uid's budget or the buffer was full
    /// (`lost_in_broker`).
    overflow: u64,
    /// Set when the capture has stopped: (kernel counters, end reason).
    end: Option<(SessionStats, &'static str)>,
    /// pid → executable, from the start, execs and forks; a process is
    /// forgotten when it exits or leaves. At most [`MAX_EXES`].
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

/// Remembers `pid`'s executable, unless the table is full.
fn remember(exes: &mut HashMap<u32, Option<String>>, pid: u32, exe: Option<String>) {
    if exes.len() < MAX_EXES || exes.contains_key(&pid) {
        exes.insert(pid, exe);
    }
}

impl Live {
    fn record(&self, r: Record) {
        let mut b = lock(&self.buffer);
        let mut event = r.event;
        // The table of executables is kept even for events dropped below.
        match &mut event {
            Event::Denial(d) => {
                d.exe = b.exes.get(&d.pid).cloned().flatten();
                b.denials += 1;
            }
            Event::Exec { pid, exe, .. } => {
                remember(&mut b.exes, *pid, exe.clone());
            }
            Event::Fork { pid, child } => {
                let exe = b.exes.get(pid).cloned().flatten();
                remember(&mut b.exes, *child, exe);
            }
            Event::Exit { pid, .. } | Event::Left { pid, .. } => {
                b.exes.remove(pid);
            }
            Event::Access(_) => {}
        }
        if b.events.len() >= SESSION_BUFFER {
            b.overflow += 1;
            return;
        }
        let Ok(text) = serde_json::to_string(&event) else {
            b.overflow += 1;
            return;
        };
        // Never more than fits in one frame, and only what the uid's
        // budget holds.
        let cost = text.len() as u64 + 1;
        let fits = text.len() + 1 + FRAME_OVERHEAD <= self.max_frame
            && b.charge
                .as_mut()
                .is_some_and(|c| c.try_add(cost, ENVELOPE_HEADROOM + c.limit() / REPLY_SHARE));
        if !fits {
            b.overflow += 1;
            return;
        }
        b.events.push_back(text);
        drop(b);
        self.wake.notify_one();
    }

    /// Forgets what is buffered (its client has gone), giving the bytes
    /// back to the uid.
    fn discard(&self) {
        let mut b = lock(&self.buffer);
        b.events = VecDeque::new();
        b.charge = None;
        b.exes = HashMap::new();
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
                "untracked_children": stats.untracked + stats.over_share,
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
    let max = BATCH_BYTES.min(channel.max_frame().saturating_sub(FRAME_OVERHEAD));
    loop {
        let (batch, bytes, charge, end) = {
            let mut b = lock(&live.buffer);
            let (mut n, mut bytes) = (0, 0);
            for e in &b.events {
                if n > 0 && bytes + e.len() + 1 > max {
                    break;
                }
                bytes += e.len() + 1;
                n += 1;
            }
            let batch: Vec<String> = b.events.drain(..n).collect();
            let charge = b.charge.as_mut().map(|c| c.split(bytes as u64));
            let end = if b.events.is_empty() { b.end } else { None };
            (batch, bytes, charge, end)
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let mut text = String::with_capacity(bytes + 64);
            text.push_str(&format!("{{\"session\":{},\"events\":[", live.id));
            for (i, e) in batch.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(e);
            }
            text.push_str("]}");
            drop(batch);
            let (Ok(payload), Some(charge)) = (Payload::from_raw_json(&text), charge) else {
                lock(&live.buffer).overflow += n;
                continue;
            };
            drop(text);
            match channel.push_charged(&topic, payload, charge).await {
                Pushed::Closed => return,
                Pushed::Dropped => lock(&live.buffer).overflow += n,
                Pushed::Queued => {}
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
            capture: Arc::new(Capture::with_max_tracked_per_uid(
                settings.max_tracked_per_uid,
            )),
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
        let all: Vec<Arc<Live>> = lock(&self.sessions).live.drain().map(|(_, l)| l).collect();
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
        let reservation = self.reserve(caller.uid)?;
        let charge = ctx
            .channel
            .charge()
            .ok_or_else(|| wire(ErrorCode::Unavailable, "the calling connection has closed"))?;
        if !self.settings.attach_delay.is_zero() {
            std::thread::sleep(self.settings.attach_delay);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let live = Arc::new(Live {
            id,
            uid: caller.uid,
            connection: ctx.connection,
            session: Mutex::new(None),
            buffer: Mutex::new(Buffer {
                charge: Some(charge),
                ..Buffer::default()
            }),
            max_frame: ctx.channel.max_frame(),
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
            owner: caller.uid,
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
        reservation.commit(Arc::clone(&live));
        // The session ends with its connection.
        let watch = ctx.channel.clone();
        let sessions_live = Arc::clone(&live);
        tokio::spawn(async move {
            watch.closed().await;
            sessions_live.finish("client_disconnected");
            sessions_live.discard();
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

    /// Takes one of `uid`'s session places, or says why not.
    fn reserve(&self, uid: u32) -> Result<Reservation<'_>, WireError> {
        let mut s = lock(&self.sessions);
        let running = s.live.values().filter(|l| l.uid == uid).count();
        let starting = s.starting.get(&uid).copied().unwrap_or(0);
        let max = self.settings.max_sessions_per_uid;
        if running + starting >= max {
            return Err(wire(
                ErrorCode::LimitExceeded,
                format!(
                    "uid {uid} already runs {running} learning sessions and starts {starting} \
                     (max_sessions_per_uid = {max}); stop one first"
                ),
            ));
        }
        *s.starting.entry(uid).or_default() += 1;
        Ok(Reservation {
            service: self,
            uid,
            committed: false,
        })
    }

    fn own_session(&self, ctx: &HandlerContext, id: u64) -> Result<Arc<Live>, WireError> {
        let sessions = lock(&self.sessions);
        match sessions.live.get(&id) {
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
        lock(&self.sessions).live.remove(&p.session);
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
            "untracked_children": stats.untracked + stats.over_share,
        }))
    }

    /// Forgets sessions whose capture has ended (their connection closed).
    fn reap(&self) {
        lock(&self.sessions)
            .live
            .retain(|_, l| lock(&l.session).is_some());
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
    fn call(&self, ctx: HandlerContext, params: Payload) -> HandlerFuture {
        let service = Arc::clone(&self.service);
        let kind = self.kind;
        Box::pin(async move {
            // Loading BPF, reading /proc and joining threads block.
            tokio::task::spawn_blocking(move || LearnMethod::serve(&service, kind, &ctx, &params))
                .await
                .map_err(|e| wire(ErrorCode::Internal, format!("learning mode failed: {e}")))?
        })
    }
}

impl LearnMethod {
    fn serve(
        service: &Arc<LearnService>,
        kind: Kind,
        ctx: &HandlerContext,
        params: &Payload,
    ) -> Result<Payload, WireError> {
        let this = LearnMethod {
            service: Arc::clone(service),
            kind,
        };
        this.call_now(ctx, params)
    }

    fn call_now(&self, ctx: &HandlerContext, params: &Payload) -> Result<Payload, WireError> {
        self.service.reap();
        let v = match self.kind {
            Kind::Start => self.service.start(ctx, params)?,
            Kind::Events => self.service.events(ctx, params)?,
            Kind::Stop => self.service.stop(ctx, params)?,
        };
        Payload::from_value(&v).map_err(|e| wire(ErrorCode::Internal, e.to_string()))
    }
}
