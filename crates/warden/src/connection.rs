//! One connection: a reader (this task) and a writer task.
//!
//! The reader owns the connection's private state (policy snapshot,
//! subscriptions, provided names) and is the only place frames from this
//! peer enter the broker. It enforces the hello deadline and the
//! half-sent-frame deadline (slow-loris), rejects file descriptors sent
//! with `SCM_RIGHTS`, and stops at once when the broker closes.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use warden_policy::{Action, Caller, CallerPolicy};
use warden_proto::{
    ErrorCode, FrameDecoder, FrameError, Identity, Message, MethodName, RequestId, TopicName,
    Welcome, WelcomeLimits, PROTOCOL_VERSION,
};
use warden_sys::PeerIdentity;

use crate::hub::{lock, Conn, ConnShared, Hub};
use crate::queue::QueuedFrame;

/// Topic of the event that tells a client what a policy reload took away.
pub(crate) const REVOKED_TOPIC: &str = "warden.policy.revoked";

/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes the writer gathers before one write.
const WRITE_BATCH: usize = 64 * 1024;
/// Extra `ctl` queue slots beyond the in-flight limit, for errors the
/// broker sends on its own (bad frames, cancels, lag notices).
const CTL_QUEUE_SLACK: usize = 64;
/// How long the reader waits for the writer to flush the last frames.
const WRITER_FLUSH_GRACE: Duration = Duration::from_secs(1);

/// What to do after a frame.
pub(crate) enum Flow {
    Continue,
    Close,
}

/// The reader's private state.
pub(crate) struct ConnState {
    pub(crate) hub: Arc<Hub>,
    pub(crate) conn: Conn,
    pub(crate) policy: CallerPolicy,
    pub(crate) subscriptions: HashSet<TopicName>,
    pub(crate) provided: HashSet<MethodName>,
    hello_done: bool,
    /// Replies produced while handling one read's worth of frames, sent to
    /// the writer as one batch: one queue operation and one wake-up per
    /// read instead of one per frame.
    out: Option<QueuedFrame>,
    /// Other connections whose wires got frames during this read (routed
    /// calls and answers); written at the end of the read, in one go each.
    pub(crate) dirty: Vec<Conn>,
    /// `Some(with_payloads)` while this connection monitors.
    pub(crate) monitoring: Option<bool>,
}

/// Releases the connection's slots in the global and per-uid counts.
struct SlotGuard {
    hub: Arc<Hub>,
    account: Arc<crate::queue::UidAccount>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.hub.conn_count.fetch_sub(1, Ordering::AcqRel);
        self.account.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends one error frame straight to a socket that has no writer task yet.
fn refuse(stream: &UnixStream, code: ErrorCode, message: String) {
    if let Some(frame) = Message::error(None, code, message).to_frame(usize::MAX) {
        // Best effort: a fresh socket's send buffer has room for one frame.
        let _ = stream.try_write(&frame);
    }
}

pub(crate) async fn run(hub: Arc<Hub>, stream: UnixStream, mut peer: PeerIdentity) {
    let limits = &hub.settings.limits;
    let account = hub.uid_account(peer.uid);
    let total = hub.conn_count.fetch_add(1, Ordering::AcqRel) + 1;
    let per_uid = account.connections.fetch_add(1, Ordering::AcqRel) + 1;
    let _slot = SlotGuard {
        hub: Arc::clone(&hub),
        account: Arc::clone(&account),
    };
    if total as u64 > limits.max_connections {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            "refused: global connection limit reached"
        );
        refuse(
            &stream,
            ErrorCode::LimitExceeded,
            format!(
                "the broker has reached its connection limit ({}); try again later",
                limits.max_connections
            ),
        );
        return;
    }
    if per_uid as u64 > limits.max_connections_per_uid {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            "refused: per-uid connection limit reached"
        );
        refuse(
            &stream,
            ErrorCode::LimitExceeded,
            format!(
                "uid {} already has {} connections open (max_connections_per_uid = {}); close some first",
                peer.uid,
                per_uid - 1,
                limits.max_connections_per_uid
            ),
        );
        return;
    }
    if hub.draining.load(Ordering::Acquire) {
        refuse(
            &stream,
            ErrorCode::ShuttingDown,
            "the broker is shutting down".into(),
        );
        return;
    }

    let identity = Identity {
        uid: peer.uid,
        gid: peer.gid,
        groups: peer.groups.clone(),
        pid: peer.pid,
    };
    let ctl_cap = limits.max_in_flight_per_connection as usize + CTL_QUEUE_SLACK;
    let ev_cap = usize::try_from(limits.subscriber_queue_len).unwrap_or(1024);
    let (ctl_tx, ctl_rx) = mpsc::channel(ctl_cap);
    let (ev_tx, ev_rx) = mpsc::channel(ev_cap);
    let id = hub.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let conn: Conn = Arc::new(ConnShared {
        id,
        identity: identity.clone(),
        // Display only, and chosen by the peer: confirmed through the
        // pidfd to belong to the process that connected.
        comm: warden_sys::process_comm_confirmed(peer.pid, peer.pidfd.as_ref().map(AsFd::as_fd)),
        pidfd: peer.pidfd.take(),
        connected_at: SystemTime::now(),
        ctl_tx,
        ev_tx,
        missed: AtomicU64::new(0),
        account,
        in_flight: AtomicU32::new(0),
        routed: Mutex::default(),
        outstanding: Mutex::default(),
        broker_ids: warden_proto::IdSequence::new(),
        kill: Notify::new(),
        killed: AtomicBool::new(false),
        kill_reason: std::sync::atomic::AtomicU8::new(0),
        wire: Wire::new(stream),
        calls: AtomicU64::new(0),
    });
    lock(&hub.conns).insert(id, Arc::clone(&conn));
    tracing::debug!(conn = id, uid = peer.uid, pid = peer.pid, "connected");

    let policy = hub.current_policy().for_caller(&Caller::from(&identity));
    let (stop_tx, stop_rx) = oneshot::channel();
    let mut writer = tokio::spawn(writer(
        ctl_rx,
        ev_rx,
        Arc::clone(&conn),
        stop_rx,
        hub.settings.max_frame,
    ));

    let mut state = ConnState {
        hub: Arc::clone(&hub),
        conn: Arc::clone(&conn),
        policy,
        subscriptions: HashSet::new(),
        provided: HashSet::new(),
        hello_done: false,
        out: None,
        dirty: Vec::new(),
        monitoring: None,
    };
    state.read_loop().await;
    state.cleanup();

    let _ = stop_tx.send(());
    match tokio::time::timeout(WRITER_FLUSH_GRACE, &mut writer).await {
        Err(_) => writer.abort(),
        // The writer is part of this connection: its panic is this task's,
        // which the broker treats as fatal.
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(_) => {}
    }
    tracing::debug!(conn = id, "closed");
}

/// Reads once, closing any file descriptors that came with the bytes.
async fn read_some(stream: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, bool)> {
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || {
            warden_sys::recv_reject_fds(stream.as_fd(), buf)
        }) {
            Ok(r) => return Ok(r),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

impl ConnState {
    pub(crate) fn mark_dirty(&mut self, other: &Conn) {
        if !self.dirty.iter().any(|c| c.id == other.id) {
            self.dirty.push(Arc::clone(other));
        }
    }

    async fn read_loop(&mut self) {
        let stream = Arc::clone(&self.conn.wire.stream);
        self.read_frames(&stream).await;
        let _ = self.flush().await;
    }

    /// Writes the batched replies: straight to the socket when nothing is
    /// waiting before them (no hand-off to the writer task, no wake-up),
    /// else after what is waiting. Waits while too much is waiting, so a
    /// peer that does not read its replies only slows itself.
    pub(crate) async fn flush(&mut self) -> Result<(), ()> {
        for other in std::mem::take(&mut self.dirty) {
            other.wire.send_pending(&other);
        }
        let Some(f) = self.out.take() else {
            return Ok(());
        };
        let wire = &self.conn.wire;
        if !wire.send_now(f, &self.conn) {
            return Err(());
        }
        loop {
            let drained = wire.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            match wire.backlog() {
                None => return Err(()),
                Some(n) if n <= WIRE_BACKLOG_MAX => return Ok(()),
                Some(_) => drained.await,
            }
        }
    }

    async fn read_frames(&mut self, read: &UnixStream) {
        let limits = self.hub.settings.limits.clone();
        let mut close_rx = self.hub.close_tx.subscribe();
        let mut policy_rx = self.hub.policy_tx.subscribe();
        policy_rx.mark_unchanged();
        let mut decoder = FrameDecoder::new(self.hub.settings.max_frame);
        let mut buf = vec![0u8; READ_CHUNK];
        let hello_deadline = Instant::now() + Duration::from_millis(limits.hello_timeout_ms);
        let frame_timeout = Duration::from_millis(limits.frame_timeout_ms);
        let mut frame_deadline: Option<Instant> = None;
        let mut fds_pending = false;
        loop {
            if *close_rx.borrow() {
                self.say_goodbye();
                return;
            }
            let deadline = match (self.hello_done, frame_deadline) {
                (false, Some(f)) => Some(f.min(hello_deadline)),
                (false, None) => Some(hello_deadline),
                (true, f) => f,
            };
            tokio::select! {
                biased;
                _ = self.conn.kill.notified() => {
                    if self.conn.kill_reason.load(Ordering::Acquire) != crate::hub::KILL_SLOW {
                        return;
                    }
                    tracing::info!(conn = self.conn.id, uid = self.conn.identity.uid, "disconnected a slow subscriber");
                    self.hub.try_send_ctl(&self.conn, &Message::error(
                        None,
                        ErrorCode::LimitExceeded,
                        "disconnected: this subscriber did not read its events fast enough \
                         (on_slow_subscriber = \"disconnect\")",
                    ));
                    return;
                }
                _ = close_rx.changed() => {
                    self.say_goodbye();
                    return;
                }
                _ = policy_rx.changed() => {
                    let policy = Arc::clone(&policy_rx.borrow_and_update());
                    if self.apply_policy(policy).await.is_err() {
                        return;
                    }
                }
                _ = sleep_until_opt(deadline) => {
                    let what = if self.hello_done { "a frame stayed half-sent" } else { "no hello" };
                    let ms = if self.hello_done { limits.frame_timeout_ms } else { limits.hello_timeout_ms };
                    tracing::info!(conn = self.conn.id, uid = self.conn.identity.uid, "disconnected: {what} for {ms} ms");
                    self.hub.try_send_ctl(&self.conn, &Message::error(
                        None,
                        ErrorCode::Timeout,
                        format!("disconnected: {what} within {ms} ms"),
                    ));
                    return;
                }
                r = read_some(read, &mut buf) => {
                    let (n, fds) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(conn = self.conn.id, error = %e, "read failed");
                            return;
                        }
                    };
                    if n == 0 {
                        return;
                    }
                    if fds {
                        tracing::info!(conn = self.conn.id, uid = self.conn.identity.uid,
                            "closed file descriptors the peer sent with SCM_RIGHTS");
                        fds_pending = true;
                    }
                    decoder.push(&buf[..n]);
                    loop {
                        match decoder.next_frame_ref() {
                            Ok(Some(body)) => {
                                if std::mem::take(&mut fds_pending) {
                                    let id = Message::decode(body).ok().and_then(|m| m.id());
                                    let msg = Message::error(id, ErrorCode::BadRequest,
                                        "file descriptors (SCM_RIGHTS) are not accepted; they were closed and this frame was discarded");
                                    if self.send(msg).await.is_err() {
                                        return;
                                    }
                                    continue;
                                }
                                if let Flow::Close = self.handle_frame(body).await {
                                    return;
                                }
                            }
                            Ok(None) => {
                                if self.flush().await.is_err() {
                                    return;
                                }
                                break;
                            }
                            Err(e) => {
                                let code = match e {
                                    FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                                    FrameError::Empty => ErrorCode::BadRequest,
                                };
                                tracing::info!(conn = self.conn.id, uid = self.conn.identity.uid, error = %e, "closing: bad frame");
                                let _ = self.send(Message::error(None, code, format!("{e}; closing the connection"))).await;
                                return;
                            }
                        }
                    }
                    frame_deadline = if decoder.is_mid_frame() {
                        Some(frame_deadline.unwrap_or_else(|| Instant::now() + frame_timeout))
                    } else {
                        None
                    };
                }
            }
        }
    }

    /// Records a denied request in the audit log (target `warden::audit`):
    /// who (uid, gid, pid, comm, connection), what (action, target), the
    /// deciding rule, and the result.
    pub(crate) fn audit_denied(&self, action: &str, target: &str, rule: &str) {
        let i = &self.conn.identity;
        tracing::info!(
            target: "warden::audit",
            uid = i.uid,
            gid = i.gid,
            pid = i.pid,
            comm = self.conn.comm.as_deref().unwrap_or("?"),
            conn = self.conn.id,
            action,
            target,
            rule,
            result = "denied",
            "request denied"
        );
    }

    /// Recompiles this connection's policy snapshot after a reload, and
    /// drops the subscriptions and provided names it no longer permits,
    /// telling the client with an event on `warden.policy.revoked`.
    async fn apply_policy(&mut self, policy: Arc<warden_policy::Policy>) -> Result<(), ()> {
        self.policy = policy.for_caller(&Caller::from(&self.conn.identity));
        let lost_topics: Vec<TopicName> = self
            .subscriptions
            .iter()
            .filter(|t| !self.policy.decide(Action::Subscribe, t.as_str()).allowed)
            .cloned()
            .collect();
        let lost_methods: Vec<MethodName> = self
            .provided
            .iter()
            .filter(|m| !self.policy.decide(Action::Provide, m.as_str()).allowed)
            .cloned()
            .collect();
        if lost_topics.is_empty() && lost_methods.is_empty() {
            return Ok(());
        }
        {
            let mut topics = lock(&self.hub.topics);
            for t in &lost_topics {
                self.subscriptions.remove(t);
                if let Some(subs) = topics.get_mut(t) {
                    subs.retain(|c| c.id != self.conn.id);
                    if subs.is_empty() {
                        topics.remove(t);
                    }
                }
            }
        }
        {
            let mut providers = lock(&self.hub.providers);
            for m in &lost_methods {
                self.provided.remove(m);
                if providers.get(m).is_some_and(|c| c.id == self.conn.id) {
                    providers.remove(m);
                }
            }
        }
        tracing::info!(
            target: "warden::audit",
            uid = self.conn.identity.uid,
            pid = self.conn.identity.pid,
            comm = self.conn.comm.as_deref().unwrap_or("?"),
            conn = self.conn.id,
            action = "policy.revoke",
            target = ?lost_topics.iter().map(TopicName::as_str).chain(lost_methods.iter().map(MethodName::as_str)).collect::<Vec<_>>(),
            result = "revoked",
            "policy reload revoked subscriptions or provided methods"
        );
        let data = serde_json::json!({
            "subscriptions": lost_topics.iter().map(TopicName::as_str).collect::<Vec<_>>(),
            "provided": lost_methods.iter().map(MethodName::as_str).collect::<Vec<_>>(),
        });
        let Ok(topic) = TopicName::try_from(REVOKED_TOPIC) else {
            return Ok(());
        };
        let event = Message::Event {
            topic,
            data: warden_proto::Payload::from_value(&data).unwrap_or_default(),
            missed: 0,
            publisher: None,
        };
        self.send(event).await?;
        self.flush().await
    }

    fn say_goodbye(&self) {
        self.hub.try_send_ctl(
            &self.conn,
            &Message::error(None, ErrorCode::ShuttingDown, "the broker is shutting down"),
        );
    }

    /// Queues a frame for this connection in the current batch; hands a
    /// full batch to the writer, waiting for queue space (which only this
    /// connection's own reading speed governs).
    pub(crate) async fn send(&mut self, msg: Message) -> Result<(), ()> {
        let max = self.hub.settings.max_frame;
        let max_queued = self.hub.settings.limits.max_queued_bytes_per_uid;
        let id = msg.id();
        let (bytes, force) = match msg.to_frame(max) {
            Some(bytes) => (bytes, false),
            None => (
                self.error_frame(
                    id,
                    ErrorCode::TooLarge,
                    format!("the reply exceeds the frame limit of {max} bytes"),
                ),
                true,
            ),
        };
        if self
            .out
            .as_ref()
            .is_some_and(|o| o.len() + bytes.len() > WRITE_BATCH)
        {
            self.flush().await?;
        }
        let appended = match self.out.as_mut() {
            Some(out) => out.append(&bytes, max_queued, force),
            None => match QueuedFrame::charge(
                bytes.clone(),
                &self.conn.account,
                if force { u64::MAX } else { max_queued },
            ) {
                Some(f) => {
                    self.out = Some(f);
                    true
                }
                None => false,
            },
        };
        if !appended {
            let err = self.error_frame(
                id,
                ErrorCode::LimitExceeded,
                format!(
                    "reply dropped: uid {} has more than max_queued_bytes_per_uid = {max_queued} bytes waiting to be read; read your replies",
                    self.conn.identity.uid
                ),
            );
            match self.out.as_mut() {
                Some(out) => {
                    out.append(&err, 0, true);
                }
                None => self.out = Some(QueuedFrame::force(err, &self.conn.account)),
            }
        }
        Ok(())
    }

    fn error_frame(&self, id: Option<RequestId>, code: ErrorCode, text: String) -> Vec<u8> {
        Message::error(id, code, text)
            .to_frame(usize::MAX)
            .unwrap_or_default()
    }

    async fn handle_frame(&mut self, body: &[u8]) -> Flow {
        let msg = match Message::decode(body) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(conn = self.conn.id, error = %e, "bad envelope");
                if !self.hello_done {
                    let _ = self
                        .send(Message::Error {
                            id: e.id,
                            error: e.to_wire(),
                        })
                        .await;
                    return Flow::Close;
                }
                return match self
                    .send(Message::Error {
                        id: e.id,
                        error: e.to_wire(),
                    })
                    .await
                {
                    Ok(()) => Flow::Continue,
                    Err(()) => Flow::Close,
                };
            }
        };
        if !self.hello_done {
            return self.handle_hello(msg).await;
        }
        let result = match msg {
            Message::Hello(_) => {
                self.reject(None, "hello was already received on this connection")
                    .await
            }
            Message::Welcome(_) | Message::Event { .. } | Message::Lagged { .. } => {
                let kind = msg.kind();
                self.reject(
                    msg.id(),
                    &format!("{kind:?} messages are sent only by the broker"),
                )
                .await
            }
            Message::Call { method, .. }
                if self.hub.settings.test_hooks
                    && method.as_str() == crate::broker::TEST_PANIC_METHOD =>
            {
                panic!("test hook: a panic in a connection task, outside any handler");
            }
            Message::Call {
                id,
                method,
                params,
                caller,
            } => self.handle_call(id, method, params, caller).await,
            Message::Reply { id, result } => {
                crate::router::provider_answer(
                    &self.hub,
                    &self.conn,
                    id,
                    Ok(result),
                    &mut self.dirty,
                );
                Ok(())
            }
            Message::Error {
                id: Some(id),
                error,
            } => {
                crate::router::provider_answer(
                    &self.hub,
                    &self.conn,
                    id,
                    Err(error),
                    &mut self.dirty,
                );
                Ok(())
            }
            Message::Error { id: None, error } => {
                tracing::info!(conn = self.conn.id, %error, "peer reported an error");
                Ok(())
            }
            Message::Cancel { id } => {
                crate::router::cancel(&self.hub, &self.conn, id);
                Ok(())
            }
            Message::Provide { id, method } => self.handle_provide(id, method).await,
            Message::Subscribe { id, topic } => self.handle_subscribe(id, topic).await,
            Message::Unsubscribe { id, topic } => self.handle_unsubscribe(id, topic).await,
            Message::Publish { id, topic, data } => self.handle_publish(id, topic, data).await,
        };
        match result {
            Ok(()) => Flow::Continue,
            Err(()) => Flow::Close,
        }
    }

    pub(crate) async fn reject(&mut self, id: Option<RequestId>, why: &str) -> Result<(), ()> {
        self.send(Message::error(id, ErrorCode::BadRequest, why))
            .await
    }

    async fn handle_hello(&mut self, msg: Message) -> Flow {
        let hello = match msg {
            Message::Hello(h) => h,
            other => {
                let _ = self
                    .send(Message::error(
                        other.id(),
                        ErrorCode::BadRequest,
                        format!("the first frame must be a hello, not {:?}", other.kind()),
                    ))
                    .await;
                return Flow::Close;
            }
        };
        if hello.invitation.is_some() {
            let _ = self
                .send(Message::error(
                    None,
                    ErrorCode::Unavailable,
                    "joining by invitation is not implemented yet; connect without an invitation",
                ))
                .await;
            return Flow::Close;
        }
        if hello.version < 1 {
            let _ = self
                .send(Message::error(
                    None,
                    ErrorCode::BadRequest,
                    format!(
                        "unsupported protocol version {}; this broker speaks {PROTOCOL_VERSION}",
                        hello.version
                    ),
                ))
                .await;
            return Flow::Close;
        }
        let limits = &self.hub.settings.limits;
        let welcome = Message::Welcome(Welcome {
            version: hello.version.min(PROTOCOL_VERSION),
            server: crate::SERVER_NAME.to_owned(),
            identity: self.conn.identity.clone(),
            limits: WelcomeLimits {
                max_frame: self.hub.settings.max_frame as u64,
                max_in_flight: u32::try_from(limits.max_in_flight_per_connection)
                    .unwrap_or(u32::MAX),
                call_timeout_ms: limits.call_timeout_ms,
            },
        });
        self.hello_done = true;
        tracing::debug!(conn = self.conn.id, client = ?hello.client, "hello");
        match self.send(welcome).await {
            Ok(()) => Flow::Continue,
            Err(()) => Flow::Close,
        }
    }

    fn cleanup(&mut self) {
        self.stop_monitor();
        let hub = &self.hub;
        let conn = &self.conn;
        lock(&hub.conns).remove(&conn.id);
        {
            let mut providers = lock(&hub.providers);
            for m in self.provided.drain() {
                if providers.get(&m).is_some_and(|c| c.id == conn.id) {
                    providers.remove(&m);
                }
            }
        }
        {
            let mut topics = lock(&hub.topics);
            for t in self.subscriptions.drain() {
                if let Some(subs) = topics.get_mut(&t) {
                    subs.retain(|c| c.id != conn.id);
                    if subs.is_empty() {
                        topics.remove(&t);
                    }
                }
            }
        }
        crate::router::connection_gone(hub, conn);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Frames waiting in a connection's [`Wire`] beyond which the reader stops
/// reading requests until the writer has caught up.
const WIRE_BACKLOG_MAX: usize = 64;

/// The socket, shared by the reader (which writes its own replies directly
/// when nothing is waiting) and the writer task (which writes frames other
/// tasks queued, and finishes whatever the socket did not take at once).
/// Every write happens under `state`'s lock and starts with what is
/// pending, so frames never interleave and never reorder.
#[derive(Debug)]
pub(crate) struct Wire {
    pub(crate) stream: Arc<UnixStream>,
    state: std::sync::Mutex<WireState>,
    /// The writer has work: something is pending.
    wake: Notify,
    /// Pending became empty.
    drained: Notify,
}

#[derive(Debug, Default)]
struct WireState {
    pending: std::collections::VecDeque<QueuedFrame>,
    /// Bytes of the front frame already written.
    offset: usize,
    failed: bool,
}

impl Wire {
    pub(crate) fn new(stream: UnixStream) -> Wire {
        Wire {
            stream: Arc::new(stream),
            state: std::sync::Mutex::default(),
            wake: Notify::new(),
            drained: Notify::new(),
        }
    }

    /// Writes pending frames until done or the socket is full. `Ok(true)`
    /// when nothing is left.
    fn drain(&self, st: &mut WireState) -> std::io::Result<bool> {
        while let Some(front) = st.pending.front() {
            match self.stream.try_write(&front.bytes()[st.offset..]) {
                Ok(n) => {
                    st.offset += n;
                    if st.offset >= front.len() {
                        st.pending.pop_front();
                        st.offset = 0;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.drained.notify_waiters();
        Ok(true)
    }

    /// Appends frames and writes what the socket takes now; the writer
    /// task is woken for the rest. Returns false if the socket has failed.
    fn push(&self, frames: impl IntoIterator<Item = QueuedFrame>, conn: &ConnShared) -> bool {
        let mut st = lock(&self.state);
        if st.failed {
            return false;
        }
        st.pending.extend(frames);
        match self.drain(&mut st) {
            Ok(true) => true,
            Ok(false) => {
                drop(st);
                self.wake.notify_one();
                true
            }
            Err(e) => {
                st.failed = true;
                st.pending.clear();
                drop(st);
                self.drained.notify_waiters();
                tracing::debug!(conn = conn.id, error = %e, "write failed; closing");
                conn.kill();
                false
            }
        }
    }

    fn send_now(&self, frame: QueuedFrame, conn: &ConnShared) -> bool {
        self.push(std::iter::once(frame), conn)
    }

    /// Writes `frame` now (after anything pending), from any task.
    pub(crate) fn send(&self, frame: QueuedFrame, conn: &ConnShared) {
        self.push(std::iter::once(frame), conn);
    }

    /// Queues `frame` without writing; the caller must later call
    /// [`Wire::send_pending`]. Returns false if the socket has failed.
    pub(crate) fn enqueue(&self, frame: QueuedFrame) -> bool {
        let mut st = lock(&self.state);
        if st.failed {
            return false;
        }
        st.pending.push_back(frame);
        true
    }

    /// Writes what is pending (see [`Wire::enqueue`]).
    pub(crate) fn send_pending(&self, conn: &ConnShared) {
        self.push(std::iter::empty(), conn);
    }

    /// Frames pending, or `None` once the socket has failed.
    fn backlog(&self) -> Option<usize> {
        let st = lock(&self.state);
        (!st.failed).then_some(st.pending.len())
    }
}

/// Writes what other tasks queued (`ctl` first, then events), and
/// finishes writes the socket could not take at once.
async fn writer(
    mut ctl_rx: mpsc::Receiver<QueuedFrame>,
    mut ev_rx: mpsc::Receiver<QueuedFrame>,
    conn: Conn,
    mut stop: oneshot::Receiver<()>,
    max_frame: usize,
) {
    let wire = &conn.wire;
    let mut stopping = false;
    let mut batch: Vec<QueuedFrame> = Vec::new();
    loop {
        let Some(backlog) = wire.backlog() else {
            return;
        };
        if backlog > 0 {
            // Finish what the socket did not take.
            tokio::select! {
                biased;
                r = wire.stream.writable() => {
                    if r.is_err() {
                        conn.kill();
                        return;
                    }
                    if !wire.push(std::iter::empty(), &conn) {
                        return;
                    }
                }
                _ = &mut stop, if !stopping => stopping = true,
            }
            continue;
        }
        // A killed connection gets no more events: its last frames are the
        // replies and the reason it was closed.
        let events_off = stopping || conn.killed.load(Ordering::Acquire);
        if stopping {
            match ctl_rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => return,
            }
        } else {
            tokio::select! {
                biased;
                f = ctl_rx.recv() => match f { Some(f) => batch.push(f), None => return },
                f = ev_rx.recv(), if !events_off => match f { Some(f) => batch.push(f), None => return },
                _ = wire.wake.notified() => continue,
                _ = &mut stop => { stopping = true; continue; }
            }
        }
        let mut bytes: usize = batch.iter().map(QueuedFrame::len).sum();
        while bytes < WRITE_BATCH {
            let next = match ctl_rx.try_recv() {
                Ok(f) => f,
                Err(_) if !events_off => match ev_rx.try_recv() {
                    Ok(f) => f,
                    Err(_) => break,
                },
                Err(_) => break,
            };
            bytes += next.len();
            batch.push(next);
        }
        if !events_off && ev_rx.is_empty() && conn.missed.load(Ordering::Relaxed) > 0 {
            let missed = conn.missed.swap(0, Ordering::AcqRel);
            if missed > 0 {
                if let Some(f) = (Message::Lagged { missed }).to_frame(max_frame) {
                    batch.push(QueuedFrame::force(f, &conn.account));
                }
            }
        }
        if !wire.push(batch.drain(..), &conn) {
            return;
        }
    }
}
