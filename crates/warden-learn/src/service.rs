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
//! # One task owns the sessions
//! All session state (the running sessions, the starts under way per uid,
//! the next session id, the connections watched for their close) belongs
//! to one tokio task, started with the service. The handlers do not share
//! it under a lock: each sends the task a typed `Command` over a bounded
//! channel and awaits its answer on a oneshot; a connection's close
//! reaches the task the same way. One owner that handles one command at a
//! time keeps the invariants (a session is in the table exactly while its
//! capture runs, a uid's running plus starting sessions within its limit)
//! without any lock to hold across kernel work.
//!
//! The task itself never blocks: reading `/proc` and the caller's pidfd,
//! loading and attaching the eBPF programs, and stopping a capture (which
//! joins its reader thread) block, sometimes for long, and a blocked
//! runtime thread would stall every other connection. That work runs on
//! blocking threads (`spawn_blocking`); its result comes back to the task
//! as another command (`Started`) or goes straight to the caller (a
//! stopped session, already out of the table). Meanwhile the task serves
//! everyone else: one user's slow `learn.start` delays neither another
//! user's `learn.stop` nor any other broker traffic.
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
//! `max_sessions_per_uid` is checked and the slot reserved by the owner
//! task, in one step, before anything is loaded or attached; the
//! reservation is given back when the start's result (`Started`) comes
//! back, becoming the running session if it succeeded. So concurrent
//! `learn.start` calls cannot pass the check together. The uid's share
//! of the kernel's tracking table is enforced by the kernel half (see
//! `capture`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Notify};
use warden::{CallerChannel, Charge, Handler, HandlerContext, HandlerFuture, Pushed};
use warden_policy::Action;
use warden_proto::{ErrorCode, Payload, TopicName, WireError};
use warden_sys::ProcessFacts;

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

/// Commands the owner task may have waiting; senders wait for room (the
/// callers' in-flight limits bound how many wait).
const COMMAND_QUEUE: usize = 256;

/// Learning mode, as registered with the broker: a handle on the task
/// that owns the sessions.
#[derive(Debug)]
pub struct LearnService {
    capture: Arc<Capture>,
    commands: mpsc::Sender<Command>,
}

/// What a command is answered with: the method's result.
type Reply = oneshot::Sender<Result<Value, WireError>>;

/// What the owner task is asked to do.
enum Command {
    /// `learn.start`, its target checked: reserve a place, then attach.
    Start {
        ctx: HandlerContext,
        checked: Checked,
        reply: Reply,
    },
    /// A start's attach (on a blocking thread) is done: its place is
    /// given back, and the session registered if it started.
    Started {
        uid: u32,
        result: Result<(Pending, Session), WireError>,
        reply: Reply,
    },
    /// `learn.events`.
    Events {
        ctx: HandlerContext,
        session: u64,
        reply: Reply,
    },
    /// `learn.stop`.
    Stop {
        ctx: HandlerContext,
        session: u64,
        reply: Reply,
    },
    /// A connection with sessions has closed: they end.
    ConnectionClosed { connection: u64 },
    /// Broker shutdown: every session ends, `done` once all have.
    StopAll { done: oneshot::Sender<()> },
}

/// A `learn.start` target that passed the checks (read on a blocking
/// thread): the caller may learn it.
struct Checked {
    pid: u32,
    accesses: bool,
    /// Pins the target from the first read to the attach.
    pidfd: OwnedFd,
    facts: ProcessFacts,
    owned: bool,
    /// The rule that allowed it.
    rule: String,
}

/// A start past the limit check, attaching, its place reserved.
struct Pending {
    ctx: HandlerContext,
    checked: Checked,
    live: Arc<Live>,
}

/// A running session, as the owner task keeps it.
struct Entry {
    live: Arc<Live>,
    /// Stopped (on a blocking thread) when the entry leaves the table.
    session: Session,
    uid: u32,
    connection: u64,
    /// Set once `learn.events` started the stream.
    streaming: bool,
}

/// The session state shared by the reader thread (which records into
/// it), the stream task (which pushes from it) and the thread that stops
/// the session.
struct Live {
    id: u64,
    /// The session's root process (the target of `learn.start`).
    root: u32,
    buffer: Mutex<Buffer>,
    /// The broker's frame limit: an event larger than a frame is lost.
    max_frame: usize,
    wake: Notify,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("id", &self.id)
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
    /// The program the root process runs: its executable at the start,
    /// then after each of its execs (for the audit log: the command
    /// `wardenctl learn -- CMD` ran, not the helper that became it).
    command: Option<String>,
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
                if *pid == self.root {
                    b.command.clone_from(exe);
                }
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

    /// Stops the capture and marks the stream's end. Blocks: stopping
    /// joins the reader, so everything the kernel wrote has been recorded
    /// and the session's slot is free when it returns.
    fn finish(&self, mut session: Session, why: &'static str) -> SessionStats {
        let stats = session.stop();
        drop(session);
        {
            let mut b = lock(&self.buffer);
            if b.end.is_none() {
                b.end = Some((stats, why));
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
    /// first session), and its owner task.
    ///
    /// # Panics
    /// Outside a tokio runtime (the owner task is spawned here).
    pub fn new(settings: LearnSettings) -> Arc<Self> {
        let capture = Arc::new(Capture::with_max_tracked_per_uid(
            settings.max_tracked_per_uid,
        ));
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let owner = Owner {
            capture: Arc::clone(&capture),
            settings,
            commands: commands.downgrade(),
            sessions: HashMap::new(),
            starting: HashMap::new(),
            watched: HashSet::new(),
            next_id: 1,
            stopping: false,
        };
        tokio::spawn(owner.run(rx));
        Arc::new(LearnService { capture, commands })
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

    /// Stops every session (broker shutdown), returning once all have
    /// stopped. Starts that finish later are stopped at once and fail,
    /// as do new ones.
    pub async fn stop_all(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::StopAll { done }).await.is_ok() {
            let _ = finished.await;
        }
    }
}

/// The task that owns the sessions (see the module docs).
struct Owner {
    capture: Arc<Capture>,
    settings: LearnSettings,
    /// For the commands the task's own helpers send back (weak, so that
    /// the task ends once the service and its helpers are gone).
    commands: mpsc::WeakSender<Command>,
    sessions: HashMap<u64, Entry>,
    /// Per uid: starts past the limit check and not yet `Started`.
    starting: HashMap<u32, usize>,
    /// Connections with a task waiting for their close.
    watched: HashSet<u64>,
    next_id: u64,
    /// Set by `StopAll`.
    stopping: bool,
}

/// Runs blocking work on a blocking thread, not waiting for it.
fn blocking(f: impl FnOnce() + Send + 'static) {
    drop(tokio::task::spawn_blocking(f));
}

/// Sends `cmd` to the owner task; if the task has gone, what the command
/// holds (a session, whose drop stops it) is dropped on a blocking thread.
async fn send(tx: &mpsc::Sender<Command>, cmd: Command) {
    if let Err(mpsc::error::SendError(cmd)) = tx.send(cmd).await {
        blocking(move || drop(cmd));
    }
}

fn stopping() -> WireError {
    wire(ErrorCode::Unavailable, "the broker is stopping")
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Start {
                    ctx,
                    checked,
                    reply,
                } => self.start(ctx, checked, reply),
                Command::Started { uid, result, reply } => self.started(uid, result, reply),
                Command::Events {
                    ctx,
                    session,
                    reply,
                } => {
                    let _ = reply.send(self.events(&ctx, session));
                }
                Command::Stop {
                    ctx,
                    session,
                    reply,
                } => self.stop(ctx, session, reply),
                Command::ConnectionClosed { connection } => self.connection_closed(connection),
                Command::StopAll { done } => self.stop_all(done),
            }
        }
        // Nobody can send any more: what is left ends, off the runtime.
        let left: Vec<Entry> = self.sessions.drain().map(|(_, e)| e).collect();
        if !left.is_empty() {
            blocking(move || {
                for e in left {
                    e.live.finish(e.session, "broker_stopping");
                }
            });
        }
    }

    /// Takes one of `uid`'s session places, or says why not.
    fn reserve(&mut self, uid: u32) -> Result<(), WireError> {
        let running = self.sessions.values().filter(|e| e.uid == uid).count();
        let starting = self.starting.get(&uid).copied().unwrap_or(0);
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
        *self.starting.entry(uid).or_default() += 1;
        Ok(())
    }

    fn unreserve(&mut self, uid: u32) {
        if let Some(n) = self.starting.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.starting.remove(&uid);
            }
        }
    }

    /// Reserves the caller's place and hands the attach to a blocking
    /// thread (after the test hook's pause); its result comes back as
    /// `Started`.
    fn start(&mut self, ctx: HandlerContext, checked: Checked, reply: Reply) {
        if self.stopping {
            let _ = reply.send(Err(stopping()));
            return;
        }
        let uid = ctx.caller.uid;
        if let Err(e) = self.reserve(uid) {
            let _ = reply.send(Err(e));
            return;
        }
        let (Some(charge), Some(tx)) = (ctx.channel.charge(), self.commands.upgrade()) else {
            self.unreserve(uid);
            let _ = reply.send(Err(wire(
                ErrorCode::Unavailable,
                "the calling connection has closed",
            )));
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        let mut buffer = Buffer {
            charge: Some(charge),
            ..Buffer::default()
        };
        let exe = checked.facts.exe.as_ref().map(|e| e.display().to_string());
        buffer.command.clone_from(&exe);
        buffer.exes.insert(checked.pid, exe);
        let live = Arc::new(Live {
            id,
            root: checked.pid,
            buffer: Mutex::new(buffer),
            max_frame: ctx.channel.max_frame(),
            wake: Notify::new(),
        });
        let pending = Pending { ctx, checked, live };
        let capture = Arc::clone(&self.capture);
        let delay = self.settings.attach_delay;
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let result = tokio::task::spawn_blocking(move || {
                attach(&capture, &pending).map(|session| (pending, session))
            })
            .await
            .unwrap_or_else(|e| {
                Err(wire(
                    ErrorCode::Internal,
                    format!("learning mode failed: {e}"),
                ))
            });
            send(&tx, Command::Started { uid, result, reply }).await;
        });
    }

    /// A start's attach is done: the place it reserved becomes its
    /// session, or is given back.
    fn started(&mut self, uid: u32, result: Result<(Pending, Session), WireError>, reply: Reply) {
        self.unreserve(uid);
        let (pending, session) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let Pending { ctx, checked, live } = pending;
        if self.stopping {
            blocking(move || {
                live.finish(session, "broker_stopping");
            });
            let _ = reply.send(Err(stopping()));
            return;
        }
        let id = live.id;
        self.sessions.insert(
            id,
            Entry {
                live,
                session,
                uid,
                connection: ctx.connection,
                streaming: false,
            },
        );
        // The session ends with its connection.
        self.watch(&ctx);
        let Checked {
            pid,
            accesses,
            facts,
            owned,
            rule,
            ..
        } = checked;
        warden::audit::record(warden::audit::Record {
            actor: &warden::audit::Actor::of_caller(&ctx),
            action: "learn.start",
            target: format!("pid {pid}").into(),
            rule: Some(&rule),
            result: "allowed",
            message: "learning session started",
            extra: json!({ "session": id, "target_pid": pid, "owned": owned }),
        });
        let _ = reply.send(Ok(json!({
            "session": id,
            "pid": pid,
            "comm": facts.comm,
            "exe": facts.exe.map(|e| e.display().to_string()),
            "owned": owned,
            "accesses": accesses,
        })));
    }

    /// Has a task tell us when the caller's connection closes (one per
    /// connection; if it has closed already, at once).
    fn watch(&mut self, ctx: &HandlerContext) {
        if !self.watched.insert(ctx.connection) {
            return;
        }
        let Some(tx) = self.commands.upgrade() else {
            return;
        };
        let channel = ctx.channel.clone();
        let connection = ctx.connection;
        tokio::spawn(async move {
            channel.closed().await;
            send(&tx, Command::ConnectionClosed { connection }).await;
        });
    }

    fn own_session(&mut self, ctx: &HandlerContext, id: u64) -> Result<&mut Entry, WireError> {
        match self.sessions.get_mut(&id) {
            Some(e) if e.connection == ctx.connection => Ok(e),
            _ => Err(wire(
                ErrorCode::BadRequest,
                format!("no learning session {id} on this connection"),
            )),
        }
    }

    fn events(&mut self, ctx: &HandlerContext, id: u64) -> Result<Value, WireError> {
        let e = self.own_session(ctx, id)?;
        if !e.streaming {
            e.streaming = true;
            tokio::spawn(stream(Arc::clone(&e.live), ctx.channel.clone()));
        }
        Ok(json!({ "session": id, "topic": EVENTS_TOPIC }))
    }

    /// Takes the session out of the table and stops it on a blocking
    /// thread, which answers once it has stopped.
    fn stop(&mut self, ctx: HandlerContext, id: u64, reply: Reply) {
        if let Err(e) = self.own_session(&ctx, id) {
            let _ = reply.send(Err(e));
            return;
        }
        let Some(entry) = self.sessions.remove(&id) else {
            return;
        };
        blocking(move || {
            let stats = entry.live.finish(entry.session, "stopped");
            let b = lock(&entry.live.buffer);
            warden::audit::record(warden::audit::Record {
                actor: &warden::audit::Actor::of_caller(&ctx),
                action: "learn.stop",
                target: format!("pid {}", entry.live.root).into(),
                rule: None,
                result: "ok",
                message: "learning session stopped",
                extra: json!({ "session": id, "denials": b.denials, "command": b.command }),
            });
            let _ = reply.send(Ok(json!({
                "session": id,
                "denials": b.denials,
                "kernel_events": stats.events,
                "lost_in_kernel": stats.lost,
                "lost_in_broker": b.overflow,
                "stale_discarded": stats.stale,
                "untracked_children": stats.untracked + stats.over_share,
            })));
        });
    }

    /// The connection's sessions end, and what they buffered is given
    /// back to the uid.
    fn connection_closed(&mut self, connection: u64) {
        self.watched.remove(&connection);
        let ids: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.connection == connection)
            .map(|(&id, _)| id)
            .collect();
        let ended: Vec<Entry> = ids
            .iter()
            .filter_map(|id| self.sessions.remove(id))
            .collect();
        if !ended.is_empty() {
            blocking(move || {
                for e in ended {
                    e.live.finish(e.session, "client_disconnected");
                    e.live.discard();
                }
            });
        }
    }

    fn stop_all(&mut self, done: oneshot::Sender<()>) {
        self.stopping = true;
        let all: Vec<Entry> = self.sessions.drain().map(|(_, e)| e).collect();
        tokio::spawn(async move {
            let _ = tokio::task::spawn_blocking(move || {
                for e in all {
                    e.live.finish(e.session, "broker_stopping");
                }
            })
            .await;
            let _ = done.send(());
        });
    }
}

/// The checks of `learn.start` (blocking: reads the caller's and the
/// target's `/proc` entries): who the caller is now, whose the target
/// is, and whether policy lets the caller learn it.
fn check(ctx: &HandlerContext, p: &StartParams) -> Result<Checked, WireError> {
    let caller = &ctx.caller;
    let denied = |why: String| {
        warden::audit::record(warden::audit::Record {
            actor: &warden::audit::Actor::of_caller(ctx),
            action: "learn.start",
            target: format!("pid {}", p.pid).into(),
            rule: None,
            result: "denied",
            message: &why,
            extra: json!({ "target_pid": p.pid }),
        });
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
    Ok(Checked {
        pid: p.pid,
        accesses: p.accesses,
        pidfd,
        facts,
        owned,
        rule: decision.reason(),
    })
}

/// Loads the programs if need be and attaches to the checked target
/// (blocking).
fn attach(capture: &Arc<Capture>, p: &Pending) -> Result<Session, WireError> {
    let c = &p.checked;
    let caller = &p.ctx.caller;
    let target = Target {
        pid: c.pid,
        start_ticks: c.facts.start_ticks,
        uid: c.facts.uids[1],
        owner: caller.uid,
        accesses: c.accesses,
        // Root may read any process's memory; others only dumpable
        // ones (the ptrace rule), so theirs leave when they stop being.
        leave_non_dumpable: caller.uid != 0,
    };
    let sink = Arc::clone(&p.live);
    capture
        .start(
            &target,
            || {
                warden_sys::confirm_same_process(c.pidfd.as_fd(), c.pid, c.facts.start_ticks)
                    .is_ok()
            },
            Box::new(move |r| sink.record(r)),
        )
        .map_err(|e| capture_error_to_wire(&e))
}

/// The one mapping of a capture failure to what the caller is told: its
/// wire code, and its message with the cause.
fn capture_error_to_wire(e: &CaptureError) -> WireError {
    match e {
        CaptureError::Exited(_) | CaptureError::Busy(_) => {
            wire(ErrorCode::BadRequest, e.to_string())
        }
        CaptureError::Full => wire(ErrorCode::LimitExceeded, e.to_string()),
        CaptureError::PidNamespace(source) => {
            wire(ErrorCode::Unavailable, format!("{e}: {source}"))
        }
        CaptureError::Load(_) | CaptureError::Map(_) => wire(ErrorCode::Unavailable, e.to_string()),
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
        let commands = self.service.commands.clone();
        let kind = self.kind;
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let cmd = match kind {
                Kind::Start => {
                    let p: StartParams = params.parse().map_err(bad_request)?;
                    // Reading /proc blocks: not on the runtime's threads.
                    let (ctx, checked) = tokio::task::spawn_blocking(move || {
                        let checked = check(&ctx, &p);
                        (ctx, checked)
                    })
                    .await
                    .map_err(|e| wire(ErrorCode::Internal, format!("learning mode failed: {e}")))?;
                    Command::Start {
                        ctx,
                        checked: checked?,
                        reply,
                    }
                }
                Kind::Events => {
                    let p: SessionParams = params.parse().map_err(bad_request)?;
                    Command::Events {
                        ctx,
                        session: p.session,
                        reply,
                    }
                }
                Kind::Stop => {
                    let p: SessionParams = params.parse().map_err(bad_request)?;
                    Command::Stop {
                        ctx,
                        session: p.session,
                        reply,
                    }
                }
            };
            commands
                .send(cmd)
                .await
                .map_err(|_| wire(ErrorCode::Unavailable, "learning mode has stopped"))?;
            let v = answer.await.map_err(|_| {
                wire(
                    ErrorCode::Internal,
                    "learning mode failed: the request was dropped",
                )
            })??;
            Payload::from_value(&v).map_err(|e| wire(ErrorCode::Internal, e.to_string()))
        })
    }
}
