//! Routed calls: forwarding a call to its provider, delivering its one
//! answer, withdrawing it, and the deadline sweeper.
//!
//! A call is answered exactly once, by whichever of reply, error,
//! timeout, cancel, provider loss or shutdown comes first: each of those
//! paths starts by taking the call out of the registry
//! ([`Registry::take_call`]), and only the one that gets it answers.
//!
//! The caller is either a connection or feature code in the broker (the
//! in-process call API, [`crate::BrokerHandle`]); both go through
//! [`forward`] and [`finish`], so limits, deadlines, cancellation and
//! provider loss behave the same for both.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use warden_proto::{ErrorCode, Identity, Message, MethodName, Payload, RequestId, WireError};

use crate::peer::{Peer, PeerRef};
use crate::queue::QueuedFrame;
use crate::registry::{Answerer, CallKey, PendingCall, Registry};

/// Connections whose outbox got frames while one batch of input was
/// handled; each is flushed once at the end of the batch (one write for
/// many frames). Without a batch, frames are written at once.
#[derive(Debug, Default)]
pub(crate) struct Dirty(Vec<PeerRef>);

impl Dirty {
    pub(crate) fn mark(&mut self, peer: &PeerRef) {
        if !self.0.iter().any(|c| c.id == peer.id) {
            self.0.push(Arc::clone(peer));
        }
    }

    /// Writes what each marked connection has pending.
    pub(crate) fn flush(&mut self) {
        for p in self.0.drain(..) {
            p.outbox.flush();
        }
    }
}

/// Queues `frame` on `peer`: into the batch if there is one, else written
/// now.
fn deliver(peer: &PeerRef, frame: QueuedFrame, dirty: Option<&mut Dirty>) {
    match dirty {
        Some(d) => {
            if peer.outbox.enqueue(frame) {
                d.mark(peer);
            }
        }
        None => peer.send(frame),
    }
}

/// The message answering request `id`.
pub(crate) fn answer_message(id: RequestId, answer: Result<Payload, WireError>) -> Message {
    match answer {
        Ok(result) => Message::Reply { id, result },
        Err(error) => Message::Error {
            id: Some(id),
            error,
        },
    }
}

/// The frame answering `id` on `peer`, charged to its uid. An answer
/// past the frame limit becomes `too_large`, one past the uid's
/// queued-bytes limit `limit_exceeded`.
pub(crate) fn answer_frame(
    reg: &Registry,
    peer: &Peer,
    id: RequestId,
    method: &MethodName,
    answer: Result<Payload, WireError>,
) -> QueuedFrame {
    let max = reg.settings.max_frame;
    let (code, text) = match answer_message(id, answer).to_frame(max) {
        Some(bytes) => {
            match QueuedFrame::charge(
                bytes,
                &peer.account,
                reg.settings.limits.max_queued_bytes_per_uid,
            ) {
                Some(f) => return f,
                None => (
                    ErrorCode::LimitExceeded,
                    format!(
                        "the answer of {method} was dropped: uid {} has more than \
                         max_queued_bytes_per_uid bytes waiting to be read; read your replies",
                        peer.identity.uid
                    ),
                ),
            }
        }
        None => (
            ErrorCode::TooLarge,
            format!("the answer of {method} exceeds the frame limit of {max} bytes"),
        ),
    };
    let err = Message::error(Some(id), code, text);
    QueuedFrame::force(err.to_frame(usize::MAX).unwrap_or_default(), &peer.account)
}

/// What [`forward`] needs to know about a call.
pub(crate) struct Forward {
    pub(crate) answerer: Answerer,
    pub(crate) method: MethodName,
    pub(crate) params: Payload,
    /// The identity the provider sees in `caller`.
    pub(crate) identity: Identity,
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    pub(crate) rule: Option<String>,
}

/// Forwards a call to `provider`: the frame is charged (to the caller's
/// uid and the caller's budget at the provider's uid, for a connection
/// caller) and queued on the provider, and the call recorded as pending
/// until `deadline`. Returns its key.
pub(crate) fn forward(
    reg: &Registry,
    provider: &PeerRef,
    call: Forward,
    dirty: Option<&mut Dirty>,
) -> Result<CallKey, WireError> {
    let Forward {
        answerer,
        method,
        params,
        identity,
        started,
        deadline,
        rule,
    } = call;
    let broker_id = provider.next_id();
    let msg = Message::Call {
        id: broker_id,
        method: method.clone(),
        params,
        caller: Some(identity),
        target: None,
    };
    let max = reg.settings.max_frame;
    let Some(bytes) = msg.to_frame(max) else {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!(
                "the call with the caller's identity attached exceeds the frame limit of {max} bytes"
            ),
        ));
    };
    let limits = &reg.settings.limits;
    let frame = match &answerer {
        // Charged to the caller's uid, which caused it, and to the
        // caller's budget at the provider's uid: a busy provider's queue
        // is not one caller's to fill, and its own uid's budget stays its
        // own (for its replies on every connection).
        Answerer::Peer { peer, .. } => {
            let at_provider = peer.account.at_provider(provider.identity.uid);
            QueuedFrame::charge_both(
                bytes,
                &peer.account,
                limits.max_queued_bytes_per_uid,
                &at_provider,
                limits.max_queued_bytes_per_caller_at_provider,
            )
        }
        // The broker's own calls are bounded by their callers' (feature
        // code's) concurrency; charged to the provider's uid.
        Answerer::Local(_) => Some(QueuedFrame::force(bytes, &provider.account)),
    };
    let Some(frame) = frame else {
        let uid = match &answerer {
            Answerer::Peer { peer, .. } => peer.identity.uid,
            Answerer::Local(_) => 0,
        };
        return Err(WireError::new(
            ErrorCode::LimitExceeded,
            format!(
                "uid {uid} has too many bytes of calls waiting for the provider of {method} to read them \
                 (max_queued_bytes_per_caller_at_provider, max_queued_bytes_per_uid); wait for answers, then try again"
            ),
        ));
    };
    let key = (provider.id, broker_id.get());
    reg.add_call(
        key,
        PendingCall {
            answerer,
            method: method.clone(),
            started,
            rule,
        },
        deadline,
    );
    if provider.outbox.enqueue(frame) {
        if let Some(d) = dirty {
            d.mark(provider);
        } else {
            provider.outbox.flush();
        }
    } else if let Some(call) = reg.take_call(key) {
        finish(
            reg,
            call,
            Err(WireError::new(
                ErrorCode::Unavailable,
                format!("the provider of {method} went away; try again later"),
            )),
            None,
        );
    }
    Ok(key)
}

/// Delivers the one answer of a routed call, counts it and shows it to
/// monitors.
pub(crate) fn finish(
    reg: &Registry,
    call: PendingCall,
    answer: Result<Payload, WireError>,
    dirty: Option<&mut Dirty>,
) {
    let PendingCall {
        answerer,
        method,
        started,
        rule,
    } = call;
    match answerer {
        Answerer::Peer { peer, id } => {
            // It reached a provider, so the name resolved when it arrived.
            let frame = resolved_answer(reg, &peer, id, &method, started, rule.as_deref(), answer);
            // The slot is free before the answer can arrive: a caller
            // that sends its next call on seeing the answer finds it free.
            reg.call_finished(Some(&peer));
            deliver(&peer, frame, dirty);
        }
        Answerer::Local(tx) => {
            let code = answer.as_ref().err().map(|e| e.code);
            reg.record_call(method.as_str(), true, code, started);
            // The in-process caller may have gone (dropped its future).
            let _ = tx.send(answer);
            reg.call_finished(None);
        }
    }
}

/// Counts the answered call `id` of `peer`, whose method resolved when it
/// arrived (statistics, monitors), and makes the frame that answers it.
pub(crate) fn resolved_answer(
    reg: &Registry,
    peer: &Peer,
    id: RequestId,
    method: &MethodName,
    started: Instant,
    rule: Option<&str>,
    answer: Result<Payload, WireError>,
) -> QueuedFrame {
    let call = Answered {
        peer,
        id,
        method: method.as_str(),
        resolved: true,
        started,
        rule,
    };
    call.record(reg, &answer);
    answer_frame(reg, peer, id, method, answer)
}

/// A call of a connection, as it is answered.
pub(crate) struct Answered<'a> {
    pub(crate) peer: &'a Peer,
    pub(crate) id: RequestId,
    pub(crate) method: &'a str,
    /// It named something that serves calls when it arrived.
    pub(crate) resolved: bool,
    pub(crate) started: Instant,
    /// The deciding rule, when someone monitors.
    pub(crate) rule: Option<&'a str>,
}

impl Answered<'_> {
    /// Counts the answered call and shows it to monitors.
    pub(crate) fn record(&self, reg: &Registry, answer: &Result<Payload, WireError>) {
        let code = answer.as_ref().err().map(|e| e.code);
        reg.record_call(self.method, self.resolved, code, self.started);
        if reg.monitoring() {
            crate::monitor::answer(
                reg,
                &crate::monitor::CallRecord {
                    conn: self.peer,
                    id: self.id,
                    method: self.method,
                    code,
                    started: self.started,
                    rule: self.rule,
                    result: answer.as_ref().ok(),
                },
            );
        }
    }
}

/// A reply or error from `provider` for a call the broker routed to it.
pub(crate) fn provider_answer(
    reg: &Registry,
    provider: &Peer,
    id: RequestId,
    answer: Result<Payload, WireError>,
    dirty: &mut Dirty,
) {
    match reg.take_call((provider.id, id.get())) {
        Some(call) => finish(reg, call, answer, Some(dirty)),
        None => tracing::debug!(
            conn = provider.id,
            id = id.get(),
            "answer for no pending call (late after timeout or cancel); ignored"
        ),
    }
}

/// Takes a routed call back from its provider, telling the provider with
/// a `cancel`, and answers the caller with `error(method)`. Does nothing
/// if the call was already answered.
pub(crate) fn withdraw(reg: &Registry, key: CallKey, error: impl FnOnce(&MethodName) -> WireError) {
    if let Some(call) = reg.take_call(key) {
        withdrawn(reg, key, call, error);
    }
}

/// Finishes a call already taken from the registry: `cancel` to its
/// provider, `error` to its caller.
fn withdrawn(
    reg: &Registry,
    key: CallKey,
    call: PendingCall,
    error: impl FnOnce(&MethodName) -> WireError,
) {
    if let (Some(provider), Some(bid)) = (reg.peer(key.0), RequestId::new(key.1)) {
        provider.try_send_ctl(&Message::Cancel { id: bid }, reg.settings.max_frame);
    }
    let e = error(&call.method);
    finish(reg, call, Err(e), None);
}

/// The caller on connection `caller` cancels its call `id`.
pub(crate) fn cancel(reg: &Registry, caller: u64, id: RequestId) {
    if let Some((key, call)) = reg.take_call_of(caller, id) {
        withdrawn(reg, key, call, |_| {
            WireError::new(ErrorCode::Cancelled, "the call was cancelled by its caller")
        });
    }
}

/// A connection closed: remove it from the registry, fail the calls routed
/// to it, withdraw the calls it made.
pub(crate) fn connection_gone(reg: &Registry, conn: u64) {
    let removed = reg.remove_connection(conn);
    for call in removed.routed_to_it {
        let msg = format!(
            "the provider of {} disconnected before answering",
            call.method
        );
        finish(
            reg,
            call,
            Err(WireError::new(ErrorCode::Unavailable, msg)),
            None,
        );
    }
    for (key, call) in removed.its_calls {
        withdrawn(reg, key, call, |_| {
            WireError::new(ErrorCode::Cancelled, "the caller disconnected")
        });
    }
}

/// Answers every routed call still pending (at shutdown).
pub(crate) fn fail_all(reg: &Registry, error: &WireError) {
    for call in reg.take_all_calls() {
        finish(reg, call, Err(error.clone()), None);
    }
}

/// Times out routed calls whose deadline passed.
pub(crate) async fn deadline_sweeper(reg: Arc<Registry>, mut close: watch::Receiver<bool>) {
    loop {
        let next = reg.next_deadline();
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = close.changed() => return,
            _ = reg.deadline_added.notified() => continue,
            _ = sleep => {}
        }
        for key in reg.expired(Instant::now()) {
            let timeout_ms = reg.settings.call_timeout.as_millis();
            withdraw(&reg, key, |method| {
                WireError::new(
                    ErrorCode::Timeout,
                    format!("the provider of {method} did not answer within {timeout_ms} ms"),
                )
            });
        }
    }
}
