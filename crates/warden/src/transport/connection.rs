//! One connection: a reader (this task) and a writer task.
//!
//! The reader owns the connection's policy snapshot and is the only place
//! frames from this peer enter the broker. It enforces the hello deadline
//! and the half-sent-frame deadline (slow-loris), rejects file
//! descriptors sent with `SCM_RIGHTS`, hands each request to the semantic
//! layer ([`crate::router::request`]), sends what that returns in one
//! batch per read, and stops at once when the broker closes. What a
//! connection registered lives in the registry, which also undoes it when
//! the connection ends.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use warden_policy::{Caller, CallerPolicy};
use warden_proto::{
    ErrorCode, FrameDecoder, FrameError, Identity, Message, MethodName, RequestId, TopicName,
    Welcome, WelcomeLimits, PROTOCOL_VERSION,
};
use warden_sys::PeerIdentity;

use super::wire::{writer, Wire, WRITE_BATCH};
use crate::calls::Dirty;
use crate::peer::{KillSwitch, Peer, PeerParts, PeerRef};
use crate::queue::QueuedFrame;
use crate::router::Services;
use crate::view::{CallerView, Outcome};

/// With test hooks on, a call to this method panics in the caller's
/// connection task, outside any handler (to test that such a panic is
/// fatal). Unknown without test hooks.
pub const TEST_PANIC_METHOD: &str = "warden.test.panic_connection";

/// Topic of the event that tells a client what a policy reload took away.
pub(crate) const REVOKED_TOPIC: &str = "warden.policy.revoked";

/// Frames waiting in a connection's [`Wire`] beyond which the reader stops
/// reading requests until the writer has caught up.
const WIRE_BACKLOG_MAX: usize = 64;
/// Extra `ctl` queue slots beyond the in-flight limit, for errors the
/// broker sends on its own (bad frames, cancels, lag notices).
const CTL_QUEUE_SLACK: usize = 64;
/// How long the reader waits for the writer to flush the last frames.
const WRITER_FLUSH_GRACE: Duration = Duration::from_secs(1);

/// What to do after a frame.
enum Flow {
    Continue,
    Close,
}

/// The reader's private state.
struct ConnState {
    svc: Arc<Services>,
    peer: PeerRef,
    wire: Arc<Wire>,
    policy: CallerPolicy,
    hello_done: bool,
    /// Replies produced while handling one read's worth of frames, sent as
    /// one batch: one write per read instead of one per frame.
    out: Option<QueuedFrame>,
    /// Other connections whose wires got frames during this read (routed
    /// calls and answers); written at the end of the read, in one go each.
    dirty: Dirty,
}

/// Sends one error frame straight to a socket that has no writer task yet.
fn refuse(stream: &UnixStream, code: ErrorCode, message: String) {
    if let Some(frame) = Message::error(None, code, message).to_frame(usize::MAX) {
        // Best effort: a fresh socket's send buffer has room for one frame.
        let _ = stream.try_write(&frame);
    }
}

/// Serves one connection. `host` is the configured name of the child host
/// whose channel this is (identity assigned by the broker), `None` for an
/// accepted connection.
pub(crate) async fn run(
    svc: Arc<Services>,
    stream: UnixStream,
    mut peer: PeerIdentity,
    host: Option<(String, Option<String>)>,
) {
    let reg = &svc.reg;
    let limits = &reg.settings.limits;
    let (slot, total, per_uid) = reg.take_slot(peer.uid);
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
    if reg.is_draining() {
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
        session: host.as_ref().and_then(|(_, s)| s.clone()),
        host: host.map(|(h, _)| h),
    };
    let ctl_cap = limits.max_in_flight_per_connection as usize + CTL_QUEUE_SLACK;
    let ev_cap = usize::try_from(limits.subscriber_queue_len).unwrap_or(1024);
    let (ctl_tx, ctl_rx) = mpsc::channel(ctl_cap);
    let (ev_tx, ev_rx) = mpsc::channel(ev_cap);
    let id = reg.next_connection_id();
    let kill = Arc::new(KillSwitch::default());
    let wire = Arc::new(Wire::new(Arc::new(stream), Arc::clone(&kill), id));
    let conn: PeerRef = Arc::new(Peer::new(PeerParts {
        id,
        identity: identity.clone(),
        // Display only, and chosen by the peer: confirmed through the
        // pidfd to belong to the process that connected.
        comm: warden_sys::process_comm_confirmed(peer.pid, peer.pidfd.as_ref().map(AsFd::as_fd)),
        pidfd: peer.pidfd.take(),
        ctl_tx,
        ev_tx,
        account: Arc::clone(&slot.account),
        kill,
        outbox: Arc::clone(&wire) as Arc<dyn crate::peer::Outbox>,
    }));
    reg.add_connection(Arc::clone(&conn));
    tracing::debug!(conn = id, uid = peer.uid, pid = peer.pid, "connected");

    let policy = reg.current_policy().for_caller(&Caller::from(&identity));
    let (stop_tx, stop_rx) = oneshot::channel();
    let mut writer = tokio::spawn(writer(
        ctl_rx,
        ev_rx,
        Arc::clone(&conn),
        Arc::clone(&wire),
        stop_rx,
        reg.settings.max_frame,
    ));

    let mut state = ConnState {
        svc: Arc::clone(&svc),
        peer: Arc::clone(&conn),
        wire: Arc::clone(&wire),
        policy,
        hello_done: false,
        out: None,
        dirty: Dirty::default(),
    };
    state.read_loop().await;
    crate::calls::connection_gone(reg, id);

    let _ = stop_tx.send(());
    match tokio::time::timeout(WRITER_FLUSH_GRACE, &mut writer).await {
        Err(_) => writer.abort(),
        // The writer is part of this connection: its panic is this task's,
        // which the broker treats as fatal.
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(_) => {}
    }
    // The connection's memory goes before its slot: whoever sees the
    // count fall (wardend's heap trim) finds it freed.
    drop(state);
    drop(writer);
    drop(wire);
    drop(conn);
    drop(slot);
    tracing::debug!(conn = id, "closed");
}

/// Reads once, closing any file descriptors that came with the bytes.
///
/// A read that returns less than the room it had found the socket's
/// queue empty, so the readiness is cleared then (as tokio's own
/// `poll_read` does) instead of by one more `recvmsg` that would only
/// fail with `EAGAIN`; tokio keeps the readiness if an event arrived
/// meanwhile, so no wakeup is lost.
async fn read_some(stream: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, bool)> {
    loop {
        stream.readable().await?;
        let room = buf.len();
        let mut got = None;
        let r = stream.try_io(Interest::READABLE, || {
            let r = warden_sys::recv_reject_fds(stream.as_fd(), buf)?;
            got = Some(r);
            if r.0 > 0 && r.0 < room {
                Err(std::io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match (r, got) {
            (_, Some(read)) => return Ok(read),
            (Err(e), None) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            (Err(e), None) => return Err(e),
            (Ok(()), None) => continue,
        }
    }
}

impl ConnState {
    async fn read_loop(&mut self) {
        let stream = Arc::clone(&self.wire.stream);
        self.read_frames(&stream).await;
        let _ = self.flush().await;
    }

    /// Writes the batched replies: straight to the socket when nothing is
    /// waiting before them (no hand-off to the writer task, no wake-up),
    /// else after what is waiting. Waits while too much is waiting, so a
    /// peer that does not read its replies only slows itself.
    async fn flush(&mut self) -> Result<(), ()> {
        self.dirty.flush();
        let Some(f) = self.out.take() else {
            return Ok(());
        };
        let wire = &self.wire;
        if !wire.push(std::iter::once(f)) {
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
        let limits = self.svc.reg.settings.limits.clone();
        let mut close_rx = self.svc.reg.close_tx.subscribe();
        let mut policy_rx = self.svc.reg.policy_tx.subscribe();
        policy_rx.mark_unchanged();
        let mut decoder = FrameDecoder::new(self.svc.reg.settings.max_frame);
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
                _ = self.peer.kill.killed() => {
                    if !self.peer.kill.was_slow() {
                        return;
                    }
                    tracing::info!(conn = self.peer.id, uid = self.peer.identity.uid, "disconnected a slow subscriber");
                    self.ctl(Message::error(
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
                    tracing::info!(conn = self.peer.id, uid = self.peer.identity.uid, "disconnected: {what} for {ms} ms");
                    self.ctl(Message::error(
                        None,
                        ErrorCode::Timeout,
                        format!("disconnected: {what} within {ms} ms"),
                    ));
                    return;
                }
                // Straight into the decoder's buffer: small until traffic
                // grows it (see `FrameDecoder`).
                r = read_some(read, decoder.read_space()) => {
                    let (n, fds) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(conn = self.peer.id, error = %e, "read failed");
                            return;
                        }
                    };
                    if n == 0 {
                        return;
                    }
                    if fds {
                        tracing::info!(conn = self.peer.id, uid = self.peer.identity.uid,
                            "closed file descriptors the peer sent with SCM_RIGHTS");
                        fds_pending = true;
                    }
                    decoder.filled(n);
                    loop {
                        match decoder.next_frame_ref() {
                            Ok(Some(body)) => {
                                if std::mem::take(&mut fds_pending) {
                                    let id = Message::decode(body).map_or_else(|e| e.id, |m| m.id());
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
                                tracing::info!(conn = self.peer.id, uid = self.peer.identity.uid, error = %e, "closing: bad frame");
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

    /// Recompiles this connection's policy snapshot after a reload, and
    /// drops the subscriptions and provided names it no longer permits,
    /// telling the client with an event on `warden.policy.revoked`.
    async fn apply_policy(&mut self, policy: Arc<warden_policy::Policy>) -> Result<(), ()> {
        // A role whose invitation was revoked (or whose role the reload
        // removed) is dropped before anything is decided.
        let dropped_role = match self.peer.grant() {
            Some(g) if g.is_revoked() || policy.role(&g.role).is_none() => {
                self.peer.set_grant(None);
                Some(g.role.clone())
            }
            _ => None,
        };
        self.policy = policy.for_caller(&self.peer.caller());
        if let Some(role) = &dropped_role {
            tracing::info!(conn = self.peer.id, uid = self.peer.identity.uid, role = %role, "dropped the role of a revoked invitation");
            crate::audit::record(crate::audit::Record {
                actor: &crate::audit::Actor::of_peer(&self.peer),
                action: "invitation.drop",
                target: role.as_str().into(),
                rule: None,
                result: "revoked",
                message: "the connection's invitation was revoked or its role no longer fits: it lost the role",
                extra: serde_json::Value::Null,
            });
        }
        let policy = &mut self.policy;
        let revoked = self.svc.reg.revoke(self.peer.id, |action, name| {
            policy.decide(action, name).allowed
        });
        let (lost_topics, lost_methods) = (revoked.topics, revoked.methods);
        if lost_topics.is_empty() && lost_methods.is_empty() && dropped_role.is_none() {
            return Ok(());
        }
        let lost: Vec<&str> = lost_topics
            .iter()
            .map(TopicName::as_str)
            .chain(lost_methods.iter().map(MethodName::as_str))
            .collect();
        if !lost.is_empty() {
            crate::audit::record(crate::audit::Record {
                actor: &crate::audit::Actor::of_peer(&self.peer),
                action: "policy.revoke",
                target: serde_json::json!(lost),
                rule: None,
                result: "revoked",
                message: "policy reload revoked subscriptions or provided methods",
                extra: serde_json::Value::Null,
            });
        }
        let mut data = serde_json::json!({
            "subscriptions": lost_topics.iter().map(TopicName::as_str).collect::<Vec<_>>(),
            "provided": lost_methods.iter().map(MethodName::as_str).collect::<Vec<_>>(),
        });
        if let Some(role) = dropped_role {
            data["role"] = role.into();
        }
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
        self.ctl(Message::error(
            None,
            ErrorCode::ShuttingDown,
            "the broker is shutting down",
        ));
    }

    /// Queues a small frame the broker sends on its own (errors) on the
    /// ctl queue, without waiting.
    fn ctl(&self, msg: Message) {
        self.peer
            .try_send_ctl(&msg, self.svc.reg.settings.max_frame);
    }

    /// Queues a frame for this connection in the current batch; hands a
    /// full batch to the writer, waiting for queue space (which only this
    /// connection's own reading speed governs).
    pub(crate) async fn send(&mut self, msg: Message) -> Result<(), ()> {
        let max = self.svc.reg.settings.max_frame;
        let max_queued = self.svc.reg.settings.limits.max_queued_bytes_per_uid;
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
                &self.peer.account,
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
                    self.peer.identity.uid
                ),
            );
            match self.out.as_mut() {
                Some(out) => {
                    out.append(&err, 0, true);
                }
                None => self.out = Some(QueuedFrame::force(err, &self.peer.account)),
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
                tracing::debug!(conn = self.peer.id, error = %e, "bad envelope");
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
        if let Message::Call { method, .. } = &msg {
            if self.svc.reg.settings.test_hooks && method.as_str() == TEST_PANIC_METHOD {
                panic!("test hook: a panic in a connection task, outside any handler");
            }
        }
        let view = CallerView {
            peer: &self.peer,
            policy: &mut self.policy,
        };
        match crate::router::request(&self.svc, view, msg, &mut self.dirty) {
            Outcome::Later => Flow::Continue,
            Outcome::Answer(m) => match self.send(m).await {
                Ok(()) => Flow::Continue,
                Err(()) => Flow::Close,
            },
        }
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
        let role = match &hello.invitation {
            None => None,
            Some(text) => match self.join(text).await {
                Some(role) => Some(role),
                None => return Flow::Close,
            },
        };
        let limits = &self.svc.reg.settings.limits;
        let welcome = Message::Welcome(Welcome {
            version: hello.version.min(PROTOCOL_VERSION),
            server: crate::SERVER_NAME.to_owned(),
            identity: self.peer.identity.clone(),
            limits: WelcomeLimits {
                max_frame: self.svc.reg.settings.max_frame as u64,
                max_in_flight: u32::try_from(limits.max_in_flight_per_connection)
                    .unwrap_or(u32::MAX),
                call_timeout_ms: limits.call_timeout_ms,
            },
            role,
        });
        self.hello_done = true;
        tracing::debug!(
            conn = self.peer.id,
            client = hello.client.as_deref().unwrap_or("-"),
            "hello"
        );
        match self.send(welcome).await {
            Ok(()) => {
                self.peer
                    .greeted
                    .store(true, std::sync::atomic::Ordering::Release);
                Flow::Continue
            }
            Err(()) => Flow::Close,
        }
    }
}

impl ConnState {
    /// Joins by invitation (see [`crate::invitations`]): on success the
    /// connection holds the role and its policy is recompiled with it;
    /// the role's name is returned. On failure the refusal is sent and
    /// `None` returned (the caller closes): `bad_request` for a malformed
    /// token, `limit_exceeded` while the uid is throttled, and one
    /// identical `denied` for everything else.
    async fn join(&mut self, text: &warden_proto::invitation::InvitationText) -> Option<String> {
        use warden_proto::invitation::Token;
        let reg = Arc::clone(&self.svc.reg);
        let who = self.peer.identity.clone();
        let actor = crate::audit::Actor::of_peer(&self.peer);
        let audit = |target: serde_json::Value, result: &str, message: &str, extra| {
            crate::audit::record(crate::audit::Record {
                actor: &actor,
                action: "invitation.join",
                target,
                rule: None,
                result,
                message,
                extra,
            });
        };
        let refuse = |code: ErrorCode, text: String| Message::error(None, code, text);
        if who.host.is_some() {
            let _ = self
                .send(refuse(
                    ErrorCode::BadRequest,
                    "a child host's connection cannot join by invitation".into(),
                ))
                .await;
            return None;
        }
        let token = match Token::parse(text.expose()) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(
                    conn = self.peer.id,
                    uid = who.uid,
                    pid = who.pid,
                    "refused a malformed invitation"
                );
                audit(
                    serde_json::Value::Null,
                    "malformed",
                    "malformed invitation",
                    serde_json::Value::Null,
                );
                let _ = self
                    .send(refuse(ErrorCode::BadRequest, e.to_string()))
                    .await;
                return None;
            }
        };
        if let Err(wait) = reg.invitations.attempt(who.uid) {
            audit(
                token.id.to_string().into(),
                "throttled",
                "invitation attempt refused unchecked: too many failed attempts from this uid",
                serde_json::Value::Null,
            );
            let secs = wait.as_secs().max(1);
            let _ = self
                .send(refuse(
                    ErrorCode::LimitExceeded,
                    format!(
                        "too many failed invitation attempts from uid {}; try again in {secs} s",
                        who.uid
                    ),
                ))
                .await;
            return None;
        }
        let policy = reg.current_policy();
        match reg.invitations.redeem(&policy, &token, &who) {
            Ok((grant, events)) => {
                reg.invitations.succeeded(who.uid);
                let role = grant.role.clone();
                tracing::info!(conn = self.peer.id, uid = who.uid, pid = who.pid, id = %grant.id, role = %role, "joined by invitation");
                audit(
                    grant.id.to_string().into(),
                    "ok",
                    "joined by invitation",
                    serde_json::json!({"role": role, "creator_uid": grant.creator_uid}),
                );
                self.peer.set_grant(Some(grant));
                self.policy = policy.for_caller(&self.peer.caller());
                crate::pubsub::publish_invitation_events(&reg, events);
                Some(role)
            }
            Err((why, id)) => {
                tracing::warn!(
                    conn = self.peer.id,
                    uid = who.uid,
                    pid = who.pid,
                    id = %id.map(|i| i.to_string()).unwrap_or_else(|| "unknown".into()),
                    reason = why.as_str(),
                    "refused an invitation"
                );
                audit(
                    id.map_or(serde_json::Value::Null, |i| i.to_string().into()),
                    "denied",
                    "invitation refused",
                    serde_json::json!({"reason": why.as_str()}),
                );
                let _ = self
                    .send(refuse(
                        ErrorCode::Denied,
                        crate::invitations::REFUSED.to_owned(),
                    ))
                    .await;
                None
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
