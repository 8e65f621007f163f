//! Calls: built-ins, routing to providers, deadlines and cancellation.
//!
//! A call is authorized in the caller's task before anything else, so an
//! unauthorized caller cannot even learn whether a method exists. Routed
//! calls and their answers are queued on the other connection's wire
//! without waiting (nobody's task ever blocks on another peer), and
//! written when the current read's batch is flushed. What a peer can pile
//! up is bounded by the in-flight limit per connection and the queued-bytes
//! limit per uid. The answer is sent exactly once, by whichever of reply,
//! error, timeout, cancel, provider loss or shutdown comes first.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use warden_policy::Action;
use warden_proto::{ErrorCode, Message, MethodName, Payload, RequestId, WireError};

use crate::connection::ConnState;
use crate::handler::HandlerContext;
use crate::hub::{lock, Conn, ConnShared, Deadline, Hub, Routed, WeakConn};
use crate::queue::QueuedFrame;

impl ConnState {
    /// Records a finished call: counters, and the monitors' answer event.
    fn done(
        &self,
        id: RequestId,
        method: &str,
        code: Option<ErrorCode>,
        started: std::time::Instant,
        rule: Option<&str>,
        result: Option<&Payload>,
    ) {
        let resolved = self.hub.resolves(method);
        self.hub.count(method, resolved, code, started);
        self.hub.monitor_answer(&crate::monitor::CallRecord {
            conn: &self.conn,
            id,
            method,
            code,
            started,
            rule,
            result,
        });
    }

    /// Records a call that failed before reaching a handler or provider,
    /// and answers it with `code`.
    async fn fail_call(
        &mut self,
        id: RequestId,
        method: &str,
        code: ErrorCode,
        started: std::time::Instant,
        rule: Option<&str>,
        message: impl Into<String>,
    ) -> Result<(), ()> {
        self.done(id, method, Some(code), started, rule, None);
        self.send(Message::error(Some(id), code, message)).await
    }

    pub(crate) async fn handle_call(
        &mut self,
        id: RequestId,
        method: MethodName,
        params: Payload,
        caller_field: Option<warden_proto::Identity>,
    ) -> Result<(), ()> {
        let hub = Arc::clone(&self.hub);
        let started = std::time::Instant::now();
        self.conn.calls.fetch_add(1, Ordering::Relaxed);
        if caller_field.is_some() {
            return self
                .fail_call(
                    id,
                    method.as_str(),
                    ErrorCode::BadRequest,
                    started,
                    None,
                    "the \"caller\" field is set by the broker on routed calls; a client must not send it",
                )
                .await;
        }
        if hub.draining.load(Ordering::Acquire) {
            return self
                .fail_call(
                    id,
                    method.as_str(),
                    ErrorCode::ShuttingDown,
                    started,
                    None,
                    "the broker is shutting down and takes no new calls",
                )
                .await;
        }
        let decision = self.policy.decide(Action::Call, method.as_str());
        if !decision.allowed {
            let reason = decision.reason();
            self.audit_denied("call", method.as_str(), &reason);
            return self
                .fail_call(
                    id,
                    method.as_str(),
                    ErrorCode::Denied,
                    started,
                    Some(&reason),
                    format!(
                        "uid {} may not call {method} ({})",
                        self.conn.identity.uid,
                        decision.reason()
                    ),
                )
                .await;
        }
        // The deciding rule, spelled out only when someone monitors.
        let rule = hub.monitoring().then(|| decision.reason());
        if let Some(rule) = &rule {
            hub.monitor_call(&self.conn, id, method.as_str(), rule, &params);
        }
        let max_in_flight = hub.settings.limits.max_in_flight_per_connection;
        if u64::from(self.conn.in_flight.load(Ordering::Acquire)) >= max_in_flight {
            return self
                .fail_call(
                    id,
                    method.as_str(),
                    ErrorCode::LimitExceeded,
                    started,
                    rule.as_deref(),
                    format!(
                        "this connection already has {max_in_flight} calls in flight \
                         (max_in_flight_per_connection); wait for replies first"
                    ),
                )
                .await;
        }
        if method.is_reserved() {
            let answer = crate::builtins::call(&hub, self, method.as_str(), params);
            self.done(
                id,
                method.as_str(),
                answer.as_ref().err().map(|e| e.code),
                started,
                rule.as_deref(),
                answer.as_ref().ok(),
            );
            return self.send(answer_message(id, answer)).await;
        }
        if let Some(h) = hub.handlers.get(method.as_str()).cloned() {
            let ctx = HandlerContext {
                caller: self.conn.identity.clone(),
                connection: self.conn.id,
                is_admin: self.policy.is_admin(),
                policy: Arc::clone(self.policy.policy()),
                channel: crate::CallerChannel::new(
                    &self.conn,
                    hub.settings.max_frame,
                    hub.settings.limits.max_queued_bytes_per_uid,
                ),
            };
            self.conn.in_flight.fetch_add(1, Ordering::AcqRel);
            hub.routed_in_flight.fetch_add(1, Ordering::AcqRel);
            let fut = h.call(ctx, params);
            tokio::spawn(run_handler(
                Arc::clone(&hub),
                Arc::clone(&self.conn),
                id,
                method,
                started,
                rule,
                fut,
            ));
            return Ok(());
        }
        let provider = lock(&hub.providers).get(&method).cloned();
        let Some(provider) = provider else {
            return self
                .fail_call(
                    id,
                    method.as_str(),
                    ErrorCode::UnknownMethod,
                    started,
                    rule.as_deref(),
                    format!("no built-in or provider serves {method}"),
                )
                .await;
        };
        if lock(&self.conn.outstanding).contains_key(&id) {
            return self
                .reject(
                    Some(id),
                    &format!("call id {id} is already in flight on this connection; use a new id"),
                )
                .await;
        }
        let broker_id = provider.next_id();
        let forward = Message::Call {
            id: broker_id,
            method: method.clone(),
            params,
            caller: Some(self.conn.identity.clone()),
        };
        let Some(bytes) = forward.to_frame(hub.settings.max_frame) else {
            return self
                .fail_call(id, method.as_str(), ErrorCode::TooLarge, started, rule.as_deref(), format!(
                        "the call with the caller's identity attached exceeds the frame limit of {} bytes",
                        hub.settings.max_frame
                    ))
                .await;
        };
        // Charged to the caller's uid, which caused it, and to the
        // caller's budget at the provider's uid: a busy provider's queue
        // is not one caller's to fill, and its own uid's budget stays its
        // own (for its replies on every connection).
        let limits = &hub.settings.limits;
        let at_provider = self.conn.account.at_provider(provider.identity.uid);
        let Some(frame) = QueuedFrame::charge_both(
            bytes,
            &self.conn.account,
            limits.max_queued_bytes_per_uid,
            &at_provider,
            limits.max_queued_bytes_per_caller_at_provider,
        ) else {
            return self
                .fail_call(id, method.as_str(), ErrorCode::LimitExceeded, started, rule.as_deref(), format!(
                    "uid {} has too many bytes of calls waiting for the provider of {method} to read them \
                     (max_queued_bytes_per_caller_at_provider, max_queued_bytes_per_uid); wait for answers, then try again",
                    self.conn.identity.uid
                ))
                .await;
        };
        self.conn.in_flight.fetch_add(1, Ordering::AcqRel);
        hub.routed_in_flight.fetch_add(1, Ordering::AcqRel);
        lock(&self.conn.outstanding).insert(id, (Arc::downgrade(&provider), broker_id.get()));
        lock(&provider.routed).insert(
            broker_id.get(),
            Routed {
                caller: Arc::clone(&self.conn),
                caller_id: id,
                method: method.clone(),
                started,
                rule,
            },
        );
        let deadline = Instant::now() + hub.settings.call_timeout;
        {
            let mut heap = lock(&hub.deadlines);
            // Entries of calls already answered stay until they expire;
            // compact when they outnumber live calls, so a high call rate
            // cannot grow the heap without bound.
            if heap.len() > 4 * hub.routed_in_flight.load(Ordering::Relaxed) + 4096 {
                let old = std::mem::take(&mut *heap);
                *heap = old
                    .into_iter()
                    .filter(|d| {
                        d.1 .0
                            .upgrade()
                            .is_some_and(|p| lock(&p.routed).contains_key(&d.0 .0 .1))
                    })
                    .collect();
            }
            let earliest = heap.peek().is_none_or(|d| deadline.into_std() < d.0 .0 .0);
            heap.push(Deadline(
                Reverse((deadline.into_std(), broker_id.get())),
                WeakConn(Arc::downgrade(&provider)),
            ));
            if earliest {
                hub.deadline_added.notify_one();
            }
        }
        // Queued now, written when this read's batch is flushed.
        if provider.wire.enqueue(frame) {
            self.mark_dirty(&provider);
        } else {
            let routed = lock(&provider.routed).remove(&broker_id.get());
            if let Some(r) = routed {
                finish(
                    &hub,
                    r,
                    Err(WireError::new(
                        ErrorCode::Unavailable,
                        format!("the provider of {method} went away; try again later"),
                    )),
                    None,
                );
            }
        }
        Ok(())
    }

    pub(crate) async fn handle_provide(
        &mut self,
        id: RequestId,
        method: MethodName,
    ) -> Result<(), ()> {
        let hub = Arc::clone(&self.hub);
        if method.is_reserved() {
            return self
                .send(Message::error(
                    Some(id),
                    ErrorCode::Denied,
                    format!(
                        "{method} is in the reserved warden.* namespace and cannot be provided"
                    ),
                ))
                .await;
        }
        let decision = self.policy.decide(Action::Provide, method.as_str());
        if !decision.allowed {
            self.audit_denied("provide", method.as_str(), &decision.reason());
            return self
                .send(Message::error(
                    Some(id),
                    ErrorCode::Denied,
                    format!(
                        "uid {} may not provide {method} ({})",
                        self.conn.identity.uid,
                        decision.reason()
                    ),
                ))
                .await;
        }
        if self.provided.contains(&method) {
            return self.send(provided_reply(id, &method)).await;
        }
        let max = hub.settings.limits.max_provided_per_connection;
        if self.provided.len() as u64 >= max {
            return self
                .send(Message::error(
                    Some(id),
                    ErrorCode::LimitExceeded,
                    format!("this connection already provides {max} methods (max_provided_per_connection)"),
                ))
                .await;
        }
        if hub.handlers.contains_key(method.as_str()) {
            return self
                .send(Message::error(
                    Some(id),
                    ErrorCode::Unavailable,
                    format!("{method} is served by the broker itself and cannot be provided"),
                ))
                .await;
        }
        let taken = {
            let mut providers = lock(&hub.providers);
            match providers.get(&method) {
                Some(other) => Some(format!(
                    "{method} is already provided by another connection (uid {}, pid {})",
                    other.identity.uid, other.identity.pid
                )),
                None => {
                    providers.insert(method.clone(), Arc::clone(&self.conn));
                    None
                }
            }
        };
        if let Some(msg) = taken {
            return self
                .send(Message::error(Some(id), ErrorCode::Unavailable, msg))
                .await;
        }
        self.provided.insert(method.clone());
        tracing::info!(conn = self.conn.id, uid = self.conn.identity.uid, method = %method, "provider registered");
        self.send(provided_reply(id, &method)).await
    }
}

fn provided_reply(id: RequestId, method: &MethodName) -> Message {
    Message::Reply {
        id,
        result: Payload::from_value(&serde_json::json!({ "method": method.as_str() }))
            .unwrap_or_default(),
    }
}

fn answer_message(id: RequestId, answer: Result<Payload, WireError>) -> Message {
    match answer {
        Ok(result) => Message::Reply { id, result },
        Err(error) => Message::Error {
            id: Some(id),
            error,
        },
    }
}

/// Awaits a handler's answer in a task of its own and delivers it to the
/// caller; a panic becomes `internal`, and at shutdown past the drain
/// timeout the call is answered `shutting_down`.
async fn run_handler(
    hub: Arc<Hub>,
    caller: Conn,
    id: RequestId,
    method: MethodName,
    started: std::time::Instant,
    rule: Option<String>,
    fut: crate::handler::HandlerFuture,
) {
    let mut close = hub.close_tx.subscribe();
    let answer = tokio::select! {
        r = crate::handler::CatchPanic(Box::pin(fut)) => r.unwrap_or_else(|()| {
            tracing::error!(method = %method, "handler panicked; the broker carries on");
            Err(WireError::new(
                ErrorCode::Internal,
                format!("the handler of {method} failed unexpectedly; the failure was logged"),
            ))
        }),
        _ = close.wait_for(|v| *v) => Err(WireError::new(
            ErrorCode::ShuttingDown,
            "the broker is shutting down and the call did not finish within the drain timeout",
        )),
    };
    let code = answer.as_ref().err().map(|e| e.code);
    hub.count(method.as_str(), true, code, started);
    if hub.monitoring() {
        hub.monitor_answer(&crate::monitor::CallRecord {
            conn: &caller,
            id,
            method: method.as_str(),
            code,
            started,
            rule: rule.as_deref(),
            result: answer.as_ref().ok(),
        });
    }
    let frame = answer_frame(&hub, &caller, id, &method, answer);
    caller.in_flight.fetch_sub(1, Ordering::AcqRel);
    caller.wire.send(frame, &caller);
    hub.routed_done();
}

/// The frame answering `caller_id`, charged to the caller's uid; an answer
/// past the frame limit or the uid's queued-bytes limit becomes an error.
fn answer_frame(
    hub: &Hub,
    caller: &ConnShared,
    caller_id: RequestId,
    method: &MethodName,
    answer: Result<Payload, WireError>,
) -> QueuedFrame {
    answer_message(caller_id, answer)
        .to_frame(hub.settings.max_frame)
        .and_then(|bytes| {
            QueuedFrame::charge(bytes, &caller.account, hub.settings.limits.max_queued_bytes_per_uid)
        })
        .unwrap_or_else(|| {
            let err = Message::error(
                Some(caller_id),
                ErrorCode::LimitExceeded,
                format!("the answer from the provider of {method} exceeds the frame limit or the caller's queued-bytes limit"),
            );
            QueuedFrame::force(err.to_frame(usize::MAX).unwrap_or_default(), &caller.account)
        })
}

/// Delivers the one answer of a routed call to its caller. With `dirty`,
/// the answer is queued on the caller's wire and written when the current
/// read's batch is flushed (one write for many answers); without, it is
/// written now.
pub(crate) fn finish(
    hub: &Hub,
    r: Routed,
    answer: Result<Payload, WireError>,
    dirty: Option<&mut Vec<Conn>>,
) {
    let Routed {
        caller,
        caller_id,
        method,
        started,
        rule,
    } = r;
    lock(&caller.outstanding).remove(&caller_id);
    let code = answer.as_ref().err().map(|e| e.code);
    let answer_payload = if hub.monitoring() {
        answer.as_ref().ok().cloned()
    } else {
        None
    };
    let frame = answer_frame(hub, &caller, caller_id, &method, answer);
    caller.in_flight.fetch_sub(1, Ordering::AcqRel);
    // It reached a provider, so the name resolved when it arrived.
    hub.count(method.as_str(), true, code, started);
    if hub.monitoring() {
        hub.monitor_answer(&crate::monitor::CallRecord {
            conn: &caller,
            id: caller_id,
            method: method.as_str(),
            code,
            started,
            rule: rule.as_deref(),
            result: answer_payload.as_ref(),
        });
    }
    match dirty {
        Some(dirty) => {
            if caller.wire.enqueue(frame) && !dirty.iter().any(|c| c.id == caller.id) {
                dirty.push(Arc::clone(&caller));
            }
        }
        None => caller.wire.send(frame, &caller),
    }
    hub.routed_done();
}

/// A reply or error from a provider for a call the broker routed to it.
pub(crate) fn provider_answer(
    hub: &Hub,
    provider: &ConnShared,
    id: RequestId,
    answer: Result<Payload, WireError>,
    dirty: &mut Vec<Conn>,
) {
    let routed = lock(&provider.routed).remove(&id.get());
    match routed {
        Some(r) => finish(hub, r, answer, Some(dirty)),
        None => tracing::debug!(
            conn = provider.id,
            id = id.get(),
            "answer for no pending call (late after timeout or cancel); ignored"
        ),
    }
}

/// Takes a routed call back from its provider (telling the provider with a
/// `cancel`) and answers the caller with `error(method)`. Does nothing if
/// the call was already answered.
fn withdraw(
    hub: &Hub,
    provider: &std::sync::Weak<ConnShared>,
    broker_id: u64,
    error: impl FnOnce(&MethodName) -> WireError,
) {
    let Some(provider) = provider.upgrade() else {
        return;
    };
    let routed = lock(&provider.routed).remove(&broker_id);
    if let Some(r) = routed {
        if let Some(bid) = RequestId::new(broker_id) {
            hub.try_send_ctl(&provider, &Message::Cancel { id: bid });
        }
        let e = error(&r.method);
        finish(hub, r, Err(e), None);
    }
}

/// The caller cancels one of its calls.
pub(crate) fn cancel(hub: &Hub, caller: &ConnShared, id: RequestId) {
    let entry = lock(&caller.outstanding).remove(&id);
    if let Some((provider, broker_id)) = entry {
        withdraw(hub, &provider, broker_id, |_| {
            WireError::new(ErrorCode::Cancelled, "the call was cancelled by its caller")
        });
    }
}

/// A connection closed: fail the calls routed to it, withdraw the calls it
/// made.
pub(crate) fn connection_gone(hub: &Hub, conn: &ConnShared) {
    let routed: Vec<Routed> = lock(&conn.routed).drain().map(|(_, r)| r).collect();
    for r in routed {
        let msg = format!("the provider of {} disconnected before answering", r.method);
        finish(
            hub,
            r,
            Err(WireError::new(ErrorCode::Unavailable, msg)),
            None,
        );
    }
    let outstanding: Vec<_> = lock(&conn.outstanding).drain().collect();
    for (_, (provider, broker_id)) in outstanding {
        withdraw(hub, &provider, broker_id, |_| {
            WireError::new(ErrorCode::Cancelled, "the caller disconnected")
        });
    }
}

/// Answers every routed call still pending (at shutdown).
pub(crate) fn fail_all_routed(hub: &Hub, error: WireError) {
    let conns: Vec<_> = lock(&hub.conns).values().cloned().collect();
    for c in conns {
        let routed: Vec<Routed> = lock(&c.routed).drain().map(|(_, r)| r).collect();
        for r in routed {
            finish(hub, r, Err(error.clone()), None);
        }
    }
}

/// Times out routed calls whose deadline passed.
pub(crate) async fn deadline_sweeper(hub: Arc<Hub>, mut close: watch::Receiver<bool>) {
    loop {
        let next = lock(&hub.deadlines).peek().map(|d| d.0 .0 .0);
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = close.changed() => return,
            _ = hub.deadline_added.notified() => continue,
            _ = sleep => {}
        }
        let now = std::time::Instant::now();
        loop {
            let expired = {
                let mut heap = lock(&hub.deadlines);
                match heap.peek() {
                    Some(d) if d.0 .0 .0 <= now => heap.pop(),
                    _ => None,
                }
            };
            let Some(Deadline(Reverse((_, broker_id)), WeakConn(provider))) = expired else {
                break;
            };
            let timeout_ms = hub.settings.call_timeout.as_millis();
            withdraw(&hub, &provider, broker_id, |method| {
                WireError::new(
                    ErrorCode::Timeout,
                    format!("the provider of {method} did not answer within {timeout_ms} ms"),
                )
            });
        }
    }
}
