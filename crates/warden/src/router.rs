//! What a request means: authorization, then built-ins, in-process
//! handlers, routing to providers, and pub/sub.
//!
//! Everything here is a plain function over a narrow view of the caller
//! ([`CallerView`]: its peer handle and policy snapshot) that returns what
//! to send back ([`Outcome`]) and marks the other connections it queued
//! frames on ([`Dirty`]); nothing here reads a socket or awaits. A call is
//! authorized before anything else, so an unauthorized caller cannot even
//! learn whether a method exists. Routed calls are queued on the
//! provider without waiting (nobody's task ever blocks on another peer);
//! what a peer can pile up is bounded by the in-flight limit per
//! connection and the queued-bytes limits per uid.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use warden_policy::Action;
use warden_proto::{ErrorCode, Message, MethodName, Payload, RequestId, WireError};

use crate::calls::{self, answer_message, Dirty, Forward};
use crate::handler::{CatchPanic, Handler, HandlerContext, HandlerFuture};
use crate::peer::PeerRef;
use crate::registry::{Answerer, ProvideRefused, Registry, Route};
use crate::view::{audit_denied, CallerView, Outcome};

/// What the semantic layer works with: the registry and the handlers
/// registered at build time.
pub(crate) struct Services {
    pub(crate) reg: Arc<Registry>,
    pub(crate) handlers: HashMap<String, Arc<dyn Handler>>,
    /// Loads the configuration again, for `warden.reload` (`None`: the
    /// embedding program gave none, and the built-in is `unavailable`).
    pub(crate) reloader: Option<crate::builtins::Reloader>,
    /// Which session a caller is in (per-session hosts).
    pub(crate) sessions: Option<Arc<dyn crate::SessionLookup>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Services {
    /// True if `method` names a built-in, a handler or a current provider.
    pub(crate) fn resolves(&self, method: &str) -> bool {
        crate::builtins::BUILTINS.contains(&method)
            || self.handlers.contains_key(method)
            || self.reg.has_provider(method)
    }
}

/// Handles one request after the hello (the transport handles the hello
/// itself and frames only the broker may send).
pub(crate) fn request(
    svc: &Services,
    view: CallerView<'_>,
    msg: Message,
    dirty: &mut Dirty,
) -> Outcome {
    match msg {
        Message::Call {
            id,
            method,
            params,
            caller,
            target,
        } => call(
            svc,
            view,
            Request {
                id,
                method,
                params,
                caller_field: caller.is_some(),
                target,
            },
            dirty,
        ),
        Message::Reply { id, result } => {
            calls::provider_answer(&svc.reg, view.peer, id, Ok(result), dirty);
            Outcome::Later
        }
        Message::Error {
            id: Some(id),
            error,
        } => {
            calls::provider_answer(&svc.reg, view.peer, id, Err(error), dirty);
            Outcome::Later
        }
        Message::Error { id: None, error } => {
            tracing::info!(conn = view.peer.id, %error, "peer reported an error");
            Outcome::Later
        }
        Message::Cancel { id } => {
            calls::cancel(&svc.reg, view.peer.id, id);
            Outcome::Later
        }
        Message::Provide {
            id,
            method,
            description,
        } => provide(svc, view, id, method, description),
        Message::Unprovide { id, method } => {
            // Idempotent, like unsubscribe: afterwards the connection does
            // not provide it. Calls already routed here keep their answers.
            if svc.reg.unprovide(view.peer.id, &method) {
                tracing::info!(conn = view.peer.id, method = %method, "provider withdrawn");
            }
            Outcome::Answer(Message::Reply {
                id,
                result: Payload::from_value(&serde_json::json!({ "method": method.as_str() }))
                    .unwrap_or_default(),
            })
        }
        Message::Subscribe { id, topic } => crate::pubsub::subscribe(&svc.reg, view, id, topic),
        Message::Unsubscribe { id, topic } => crate::pubsub::unsubscribe(&svc.reg, view, id, topic),
        Message::Publish { id, topic, data } => {
            crate::pubsub::publish_request(&svc.reg, view, id, topic, data)
        }
        Message::Hello(_) => Outcome::Answer(Message::error(
            None,
            ErrorCode::BadRequest,
            "hello was already received on this connection",
        )),
        Message::Welcome(_) | Message::Event { .. } | Message::Lagged { .. } => {
            let kind = msg.kind();
            Outcome::Answer(Message::error(
                msg.id(),
                ErrorCode::BadRequest,
                format!("{kind:?} messages are sent only by the broker"),
            ))
        }
    }
}

/// Records a finished call (counters, the monitors' answer event) and
/// answers it.
fn answered(
    svc: &Services,
    peer: &PeerRef,
    id: RequestId,
    method: &str,
    started: Instant,
    rule: Option<&str>,
    answer: Result<Payload, WireError>,
) -> Outcome {
    let call = calls::Answered {
        peer,
        id,
        method,
        resolved: svc.resolves(method),
        started,
        rule,
    };
    call.record(&svc.reg, &answer);
    Outcome::Answer(answer_message(id, answer))
}

/// One `call` as it arrived.
struct Request {
    id: RequestId,
    method: MethodName,
    params: Payload,
    /// The client sent `caller` (which only the broker may set).
    caller_field: bool,
    target: Option<warden_proto::CallTarget>,
}

fn call(svc: &Services, view: CallerView<'_>, req: Request, dirty: &mut Dirty) -> Outcome {
    let Request {
        id,
        method,
        params,
        caller_field,
        target,
    } = req;
    let reg = &svc.reg;
    let peer = view.peer;
    let started = Instant::now();
    peer.calls.fetch_add(1, Ordering::Relaxed);
    let fail = |code: ErrorCode, rule: Option<&str>, text: String| {
        answered(
            svc,
            peer,
            id,
            method.as_str(),
            started,
            rule,
            Err(WireError::new(code, text)),
        )
    };
    if caller_field {
        return fail(
            ErrorCode::BadRequest,
            None,
            "the \"caller\" field is set by the broker on routed calls; a client must not send it"
                .into(),
        );
    }
    if target.is_some() && (method.is_reserved() || svc.handlers.contains_key(method.as_str())) {
        return fail(
            ErrorCode::BadRequest,
            None,
            format!("{method} is served by the broker itself: a call to it takes no target"),
        );
    }
    if reg.is_draining() {
        return fail(
            ErrorCode::ShuttingDown,
            None,
            "the broker is shutting down and takes no new calls".into(),
        );
    }
    let decision = view.policy.decide(Action::Call, method.as_str());
    if !decision.allowed {
        let reason = decision.reason();
        audit_denied(peer, "call", method.as_str(), &reason);
        let text = format!("uid {} may not call {method} ({reason})", peer.identity.uid);
        return fail(ErrorCode::Denied, Some(&reason), text);
    }
    // The deciding rule, spelled out only when someone monitors.
    let rule = reg.monitoring().then(|| decision.reason());
    if let Some(rule) = &rule {
        crate::monitor::call(reg, peer, id, method.as_str(), rule, &params);
    }
    let max_in_flight = reg.settings.limits.max_in_flight_per_connection;
    if u64::from(peer.in_flight.load(Ordering::Acquire)) >= max_in_flight {
        return fail(
            ErrorCode::LimitExceeded,
            rule.as_deref(),
            format!(
                "this connection already has {max_in_flight} calls in flight \
                 (max_in_flight_per_connection); wait for replies first"
            ),
        );
    }
    if method.as_str() == crate::builtins::RELOAD {
        // Reading the file and resolving names block: a task of its own,
        // like a handler's call, under the caller's in-flight limit.
        let fut = crate::builtins::reload(
            Arc::clone(reg),
            Arc::clone(peer),
            svc.reloader.clone(),
            decision.reason(),
        );
        return spawn_call(reg, peer, id, method, started, rule, fut);
    }
    if method.as_str().starts_with(crate::invite_methods::PREFIX)
        && crate::builtins::BUILTINS.contains(&method.as_str())
    {
        // Saving the invitation table blocks: a task of its own.
        let fut = crate::invite_methods::call(
            Arc::clone(reg),
            Arc::clone(peer),
            method.as_str().to_owned(),
            params,
            decision.reason(),
        );
        return spawn_call(reg, peer, id, method, started, rule, fut);
    }
    if method.is_reserved() {
        // Introspection needs the handlers, which the router has.
        let answer = if method.as_str() == crate::builtins::INTROSPECT {
            introspect(svc, &view)
        } else {
            crate::builtins::call(reg, &view, method.as_str(), params)
        };
        return answered(
            svc,
            peer,
            id,
            method.as_str(),
            started,
            rule.as_deref(),
            answer,
        );
    }
    if let Some(h) = svc.handlers.get(method.as_str()) {
        let ctx = HandlerContext {
            caller: peer.identity.clone(),
            role: peer.role(),
            connection: peer.id,
            is_admin: view.policy.is_admin(),
            policy: Arc::clone(view.policy.policy()),
            channel: crate::CallerChannel::new(
                peer,
                reg.settings.max_frame,
                reg.settings.limits.max_queued_bytes_per_uid,
            ),
            broker: crate::BrokerHandle::new(Arc::clone(reg)),
        };
        let fut = h.call(ctx, params);
        return spawn_call(reg, peer, id, method, started, rule, fut);
    }
    let route = match &target {
        None => reg.route(&method, &peer.identity),
        Some(t) => match reg.route_target(&method, t) {
            // Another user's session: only with the `target` action.
            Route::To(p) if p.identity.uid != peer.identity.uid => {
                let d = view.policy.decide(Action::Target, method.as_str());
                if !d.allowed {
                    let reason = d.reason();
                    audit_denied(peer, "target", method.as_str(), &reason);
                    return fail(
                        ErrorCode::Denied,
                        Some(&reason),
                        format!(
                            "uid {} may not call {method} in another user's session ({reason}); that needs the `target` action on {method}",
                            peer.identity.uid
                        ),
                    );
                }
                Route::To(p)
            }
            Route::NotScoped => {
                return fail(
                    ErrorCode::BadRequest,
                    rule.as_deref(),
                    crate::registry::unroutable(&method, peer.identity.uid, &Route::NotScoped),
                )
            }
            other => other,
        },
    };
    let provider = match route {
        Route::To(p) => p,
        Route::Unknown => {
            return fail(
                ErrorCode::UnknownMethod,
                rule.as_deref(),
                format!("no built-in or provider serves {method}"),
            )
        }
        Route::Several { .. } if target.is_none() && svc.sessions.is_some() => {
            if reg.caller_has_call(peer.id, id) {
                return id_in_flight(id);
            }
            // Which of the caller's sessions: ask the session manager
            // (once per connection), off the read loop.
            if let Some(lookup) = svc.sessions.clone() {
                tokio::spawn(route_by_session(
                    Arc::clone(reg),
                    lookup,
                    Arc::clone(peer),
                    id,
                    method,
                    params,
                    started,
                    rule,
                ));
            }
            return Outcome::Later;
        }
        other => {
            return fail(
                ErrorCode::Unavailable,
                rule.as_deref(),
                crate::registry::unroutable(&method, peer.identity.uid, &other),
            )
        }
    };
    if reg.caller_has_call(peer.id, id) {
        return id_in_flight(id);
    }
    let forwarded = forward_for(
        reg,
        peer,
        &provider,
        (id, method.clone(), params),
        started,
        rule.clone(),
        Some(dirty),
    );
    match forwarded {
        Ok(_) => Outcome::Later,
        Err(e) => answered(
            svc,
            peer,
            id,
            method.as_str(),
            started,
            rule.as_deref(),
            Err(e),
        ),
    }
}

/// The answer to a call whose id is already in flight on its connection.
fn id_in_flight(id: RequestId) -> Outcome {
    Outcome::Answer(Message::error(
        Some(id),
        ErrorCode::BadRequest,
        format!("call id {id} is already in flight on this connection; use a new id"),
    ))
}

/// Forwards `peer`'s call `(id, method, params)` to `provider`, acting
/// for `peer`, with the broker's call deadline.
fn forward_for(
    reg: &Registry,
    peer: &PeerRef,
    provider: &PeerRef,
    (id, method, params): (RequestId, MethodName, Payload),
    started: Instant,
    rule: Option<String>,
    dirty: Option<&mut Dirty>,
) -> Result<crate::registry::CallKey, WireError> {
    calls::forward(
        reg,
        provider,
        Forward {
            answerer: Answerer::Peer {
                peer: Arc::clone(peer),
                id,
            },
            identity: peer.identity.clone(),
            method,
            params,
            started,
            deadline: started + reg.settings.call_timeout,
            rule,
        },
        dirty,
    )
}

/// Routes a call to a per-session host's method for a caller whose user
/// has several sessions with an instance: to the instance of the session
/// the session manager reports for the caller's pinned pid (looked up
/// once per connection; `None` if the process has exited since, so a
/// reused pid is never asked about), else `unavailable` naming them.
#[expect(clippy::too_many_arguments, reason = "one routed call's parts")]
async fn route_by_session(
    reg: Arc<Registry>,
    lookup: Arc<dyn crate::SessionLookup>,
    peer: PeerRef,
    id: RequestId,
    method: MethodName,
    params: Payload,
    started: Instant,
    rule: Option<String>,
) {
    let session = peer
        .session
        .get_or_init(|| async {
            let s = lookup.session_of(peer.identity.pid).await;
            let alive = peer.pidfd.as_ref().is_some_and(|fd| {
                matches!(
                    warden_sys::pidfd_exited(std::os::fd::AsFd::as_fd(fd)),
                    Ok(false)
                )
            });
            s.filter(|_| alive)
        })
        .await
        .clone();
    let answer = match reg.route_in_session(&method, &peer.identity, session.as_deref()) {
        Route::To(provider) => {
            let forwarded = forward_for(
                &reg,
                &peer,
                &provider,
                (id, method.clone(), params),
                started,
                rule.clone(),
                None,
            );
            match forwarded {
                Ok(_) => return,
                Err(e) => Err(e),
            }
        }
        Route::Unknown => Err(WireError::new(
            ErrorCode::UnknownMethod,
            format!("no built-in or provider serves {method}"),
        )),
        other => {
            let why = crate::registry::unroutable(&method, peer.identity.uid, &other);
            Err(WireError::new(
                ErrorCode::Unavailable,
                match &session {
                    Some(s) => format!("{why} (your process is in session {s}, which has none)"),
                    None => why,
                },
            ))
        }
    };
    let frame = calls::resolved_answer(&reg, &peer, id, &method, started, rule.as_deref(), answer);
    peer.send(frame);
}

/// Awaits a handler's answer in a task of its own and delivers it to the
/// caller; a panic becomes `internal`, and at shutdown past the drain
/// timeout the call is answered `shutting_down`.
/// Runs a call answered by the broker as a task of its own (a handler's,
/// or a built-in that blocks), counted in the caller's calls in flight.
fn spawn_call(
    reg: &Arc<Registry>,
    peer: &PeerRef,
    id: RequestId,
    method: MethodName,
    started: Instant,
    rule: Option<String>,
    fut: HandlerFuture,
) -> Outcome {
    reg.handler_call_started(peer);
    tokio::spawn(run_handler(
        Arc::clone(reg),
        Arc::clone(peer),
        id,
        method,
        started,
        rule,
        fut,
    ));
    Outcome::Later
}

async fn run_handler(
    reg: Arc<Registry>,
    caller: PeerRef,
    id: RequestId,
    method: MethodName,
    started: Instant,
    rule: Option<String>,
    fut: HandlerFuture,
) {
    let mut close = reg.close_tx.subscribe();
    let answer = tokio::select! {
        r = CatchPanic(Box::pin(fut)) => r.unwrap_or_else(|()| {
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
    let frame =
        calls::resolved_answer(&reg, &caller, id, &method, started, rule.as_deref(), answer);
    // The slot is free before the answer can arrive.
    reg.call_finished(Some(&caller));
    caller.send(frame);
}

/// The most methods `warden.introspect` lists (then `"truncated": true`).
const INTROSPECT_MAX: usize = 4096;

/// `warden.introspect`: the methods the caller may call (built-ins, the
/// broker's own handlers, provided methods, modules' included), each with
/// its description and who serves it; nothing the caller's policy does
/// not let it call.
fn introspect(svc: &Services, view: &CallerView<'_>) -> Result<Payload, WireError> {
    use serde_json::json;
    // The policy itself, not the connection's decision cache: listing
    // thousands of names must not crowd out the names the caller uses.
    let caller = view.peer.caller();
    let policy = view.policy.policy();
    let may = |name: &str| policy.decide(&caller, Action::Call, name).allowed;
    let mut methods = Vec::new();
    for name in crate::builtins::BUILTINS {
        if may(name) {
            methods.push(json!({
                "name": name,
                "description": crate::builtins::builtin_description(name),
                "served_by": {"kind": "builtin"},
            }));
        }
    }
    for (name, h) in &svc.handlers {
        if may(name) {
            methods.push(json!({
                "name": name,
                "description": h.description(),
                "served_by": {"kind": "broker"},
            }));
        }
    }
    for (name, peer, description) in svc.reg.providers_described() {
        if may(&name) {
            let by = match &peer.identity.host {
                Some(host) if peer.identity.session.is_some() => {
                    json!({"kind": "host", "host": host, "scope": "session"})
                }
                Some(host) => json!({"kind": "host", "host": host}),
                None => {
                    json!({"kind": "provider", "uid": peer.identity.uid, "pid": peer.identity.pid})
                }
            };
            methods.push(json!({"name": name, "description": description, "served_by": by}));
        }
    }
    methods.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let truncated = methods.len() > INTROSPECT_MAX;
    methods.truncate(INTROSPECT_MAX);
    Payload::from_value(&json!({"methods": methods, "truncated": truncated}))
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
}

fn provide(
    svc: &Services,
    view: CallerView<'_>,
    id: RequestId,
    method: MethodName,
    description: Option<String>,
) -> Outcome {
    let peer = view.peer;
    let err = |code, text: String| Outcome::Answer(Message::error(Some(id), code, text));
    if method.is_reserved() {
        return err(
            ErrorCode::Denied,
            format!("{method} is in the reserved warden.* namespace and cannot be provided"),
        );
    }
    let decision = view.policy.decide(Action::Provide, method.as_str());
    if !decision.allowed {
        let reason = decision.reason();
        audit_denied(peer, "provide", method.as_str(), &reason);
        return err(
            ErrorCode::Denied,
            format!(
                "uid {} may not provide {method} ({reason})",
                peer.identity.uid
            ),
        );
    }
    if svc.handlers.contains_key(method.as_str()) {
        return err(
            ErrorCode::Unavailable,
            format!("{method} is served by the broker itself and cannot be provided"),
        );
    }
    match svc.reg.provide(peer.id, &method, description) {
        Ok(()) => {}
        Err(ProvideRefused::Limit(max)) => {
            return err(
                ErrorCode::LimitExceeded,
                format!(
                    "this connection already provides {max} methods (max_provided_per_connection)"
                ),
            )
        }
        Err(ProvideRefused::Taken(uid, pid)) => {
            return err(
                ErrorCode::Unavailable,
                format!(
                    "{method} is already provided by another connection (uid {uid}, pid {pid})"
                ),
            )
        }
    }
    tracing::info!(conn = peer.id, uid = peer.identity.uid, method = %method, "provider registered");
    Outcome::Answer(Message::Reply {
        id,
        result: Payload::from_value(&serde_json::json!({ "method": method.as_str() }))
            .unwrap_or_default(),
    })
}
