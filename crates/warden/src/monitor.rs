//! Live monitoring: a copy of what passes through the broker, for
//! administrators (`wardenctl monitor`).
//!
//! A connection subscribes to `warden.monitor` (policy: `monitor` on
//! `calls`) or `warden.monitor.payloads` (also `monitor` on `payloads`).
//! Each call, answer and publication, and each subscription or
//! publication policy refuses, then produces one event for every monitor,
//! with the caller's identity, the method or topic, the latency, the
//! answer's code and the rule that decided; payloads are redacted unless
//! the monitor is allowed to see them.
//!
//! When nobody monitors, the cost is one relaxed atomic load per call.
//! Monitor events go through the monitor's bounded event queue like any
//! event: a monitor that stops reading lags (and is told how many events
//! it missed); it never slows the traffic it watches.

use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use warden_policy::Action;
use warden_proto::{ErrorCode, Message, Payload, RequestId, TopicName};

use crate::peer::Peer;
use crate::queue::QueuedFrame;
use crate::registry::Registry;

/// Topic of monitor events without payloads.
pub(crate) const MONITOR_TOPIC: &str = "warden.monitor";
/// Topic of monitor events with payloads.
pub(crate) const MONITOR_PAYLOADS_TOPIC: &str = "warden.monitor.payloads";

/// What a finished call looked like.
pub(crate) struct CallRecord<'a> {
    pub(crate) conn: &'a Peer,
    pub(crate) id: RequestId,
    pub(crate) method: &'a str,
    pub(crate) code: Option<ErrorCode>,
    pub(crate) started: Instant,
    pub(crate) rule: Option<&'a str>,
    pub(crate) result: Option<&'a Payload>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn who(conn: &Peer) -> Value {
    json!({
        "conn": conn.id,
        "uid": conn.identity.uid,
        "gid": conn.identity.gid,
        "pid": conn.identity.pid,
        "comm": conn.comm,
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

fn payload_value(p: Option<&Payload>) -> Value {
    p.and_then(|p| p.parse::<Value>().ok())
        .unwrap_or(Value::Null)
}

/// A call arrived and policy decided it.
pub(crate) fn call(
    reg: &Registry,
    conn: &Peer,
    id: RequestId,
    method: &str,
    rule: &str,
    params: &Payload,
) {
    if !reg.monitoring() {
        return;
    }
    emit(
        reg,
        || {
            with(
                who(conn),
                json!({"time_ms": now_ms(), "kind": "call", "id": id.get(), "method": method, "rule": rule}),
            )
        },
        || json!({ "params": payload_value(Some(params)) }),
    );
}

/// A call was answered (or refused).
pub(crate) fn answer(reg: &Registry, r: &CallRecord<'_>) {
    if !reg.monitoring() {
        return;
    }
    let latency_us = r.started.elapsed().as_micros() as u64;
    emit(
        reg,
        || {
            with(
                who(r.conn),
                json!({
                    "time_ms": now_ms(),
                    "kind": if r.code.is_some() { "error" } else { "reply" },
                    "id": r.id.get(),
                    "method": r.method,
                    "code": r.code.map_or("ok", ErrorCode::as_str),
                    "latency_us": latency_us,
                    "rule": r.rule,
                }),
            )
        },
        || {
            // An invitation's token is shown once, to its creator: never to
            // a monitor.
            if r.method.starts_with(crate::invitations::METHOD_PREFIX) {
                json!({ "result": "[REDACTED]" })
            } else {
                json!({ "result": payload_value(r.result) })
            }
        },
    );
}

/// An event was published.
pub(crate) fn publish(
    reg: &Registry,
    conn: &Peer,
    topic: &str,
    rule: &str,
    delivered: u64,
    dropped: u64,
    data: &Payload,
) {
    if !reg.monitoring() {
        return;
    }
    emit(
        reg,
        || {
            with(
                who(conn),
                json!({
                    "time_ms": now_ms(), "kind": "publish", "topic": topic, "rule": rule,
                    "delivered": delivered, "dropped": dropped,
                }),
            )
        },
        || json!({ "data": payload_value(Some(data)) }),
    );
}

/// A subscription or publication was refused by policy: kind
/// `subscribe_denied` (also for a refused monitor subscription, whose
/// topic is then `warden.monitor…`) or `publish_denied`, with the topic
/// and the deciding rule. There is no payload to show.
pub(crate) fn denied(reg: &Registry, conn: &Peer, action: Action, topic: &str, rule: &str) {
    if !reg.monitoring() {
        return;
    }
    let kind = match action {
        Action::Publish => "publish_denied",
        _ => "subscribe_denied",
    };
    emit(
        reg,
        || {
            with(
                who(conn),
                json!({
                    "time_ms": now_ms(), "kind": kind, "topic": topic,
                    "code": ErrorCode::Denied.as_str(), "rule": rule,
                }),
            )
        },
        || json!({}),
    );
}

/// Sends an event to every monitor: `base()`'s fields, plus
/// `payload()`'s for monitors allowed to see payloads and
/// `"redacted": true` for the rest. Nothing is built for monitors whose
/// queue is full: they are only told, later, how many they missed, so a
/// monitor that stopped reading costs next to nothing.
fn emit(reg: &Registry, base: impl Fn() -> Value, payload: impl Fn() -> Value) {
    let monitors = reg.monitors();
    let max = reg.settings.max_frame;
    let max_queued = reg.settings.limits.max_queued_bytes_per_uid;
    let mut frames: [Option<Vec<u8>>; 2] = [None, None];
    let mut base_value: Option<Value> = None;
    for (conn, payloads) in monitors {
        if conn.ev_tx.capacity() == 0 {
            conn.missed.fetch_add(1, Ordering::AcqRel);
            continue;
        }
        let slot = usize::from(payloads);
        if frames[slot].is_none() {
            let b = base_value.get_or_insert_with(&base).clone();
            let (topic, data) = if payloads {
                (MONITOR_PAYLOADS_TOPIC, with(b, payload()))
            } else {
                (MONITOR_TOPIC, with(b, json!({"redacted": true})))
            };
            let Ok(topic) = TopicName::try_from(topic) else {
                continue;
            };
            let Ok(data) = Payload::from_value(&data) else {
                continue;
            };
            let msg = Message::Event {
                topic,
                data,
                missed: 0,
                publisher: None,
            };
            frames[slot] = msg.to_frame(max);
        }
        let Some(bytes) = &frames[slot] else { continue };
        let sent = QueuedFrame::charge(bytes.clone(), &conn.account, max_queued)
            .is_some_and(|f| conn.ev_tx.try_send(f).is_ok());
        if !sent {
            // The monitor lags: counted, reported to it later.
            conn.missed.fetch_add(1, Ordering::AcqRel);
        }
    }
}
