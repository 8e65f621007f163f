//! The `warden.*` built-in methods.
//!
//! They are authorized like any other method (the default policy opens
//! ping, whoami, version and echo to everyone, and status to
//! administrators). `whoami` returns exactly the identity the broker
//! attached at connect, so a caller can check what the broker believes.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use serde_json::json;
use warden_proto::{ErrorCode, Payload, WireError, PROTOCOL_VERSION};

use crate::connection::ConnState;
use crate::hub::{lock, Hub};

/// Names of the built-in methods.
pub(crate) const BUILTINS: [&str; 7] = [
    "warden.ping",
    "warden.whoami",
    "warden.version",
    "warden.echo",
    "warden.status",
    "warden.explain",
    "warden.metrics",
];

fn payload(v: serde_json::Value) -> Result<Payload, WireError> {
    Payload::from_value(&v).map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
}

pub(crate) fn call(
    hub: &Hub,
    state: &ConnState,
    method: &str,
    params: Payload,
) -> Result<Payload, WireError> {
    match method {
        "warden.ping" => payload(json!({ "pong": true })),
        "warden.whoami" => {
            let i = &state.conn.identity;
            payload(json!({
                "uid": i.uid,
                "gid": i.gid,
                "groups": i.groups,
                "pid": i.pid,
                "connection": state.conn.id,
            }))
        }
        "warden.version" => payload(json!({
            "server": crate::SERVER_NAME,
            "protocol": PROTOCOL_VERSION,
        })),
        "warden.echo" => Ok(params),
        "warden.status" => status(hub),
        "warden.explain" => explain(hub, state, &params),
        "warden.metrics" => metrics(hub),
        other => Err(WireError::new(
            ErrorCode::UnknownMethod,
            format!(
                "{other} is not a built-in method; built-ins are {}",
                BUILTINS.join(", ")
            ),
        )),
    }
}

/// Parameters of `warden.explain`: the subject (a hypothetical caller),
/// the action and the name.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainParams {
    uid: u32,
    gid: u32,
    #[serde(default)]
    groups: Vec<u32>,
    action: String,
    name: String,
}

/// `warden.explain`: the decision the current policy makes for a subject,
/// with the rule that makes it. The very same `Policy::decide` as every
/// request. Explaining another uid's access needs administrator rights.
fn explain(hub: &Hub, state: &ConnState, params: &Payload) -> Result<Payload, WireError> {
    let p: ExplainParams = params.parse().map_err(|e| {
        WireError::new(
            ErrorCode::BadRequest,
            format!(
                "warden.explain takes {{\"uid\", \"gid\", \"groups\", \"action\", \"name\"}}: {e}"
            ),
        )
    })?;
    // A non-administrator may explain only itself, with groups it really
    // has: otherwise it could map out rules for groups it is not in.
    let me = &state.conn.identity;
    let own_groups = p
        .groups
        .iter()
        .chain(std::iter::once(&p.gid))
        .all(|g| *g == me.gid || me.groups.contains(g));
    if (p.uid != me.uid || !own_groups) && !state.policy.is_admin() {
        return Err(WireError::new(
            ErrorCode::Denied,
            format!(
                "explaining the access of another uid, or with groups this connection does not have, \
                 needs administrator rights; uid {} may explain only its own access",
                me.uid
            ),
        ));
    }
    let action: warden_policy::Action = p
        .action
        .parse()
        .map_err(|e: String| WireError::new(ErrorCode::BadRequest, e))?;
    if p.groups.len() > warden_proto::MAX_GROUPS {
        return Err(WireError::new(ErrorCode::BadRequest, "too many groups"));
    }
    let caller = warden_policy::Caller {
        uid: p.uid,
        gid: p.gid,
        groups: p.groups,
    };
    let d = hub.current_policy().decide(&caller, action, &p.name);
    payload(json!({
        "allowed": d.allowed,
        "rule": d.rule.as_ref().map(|r| json!({"file": r.file.as_ref(), "line": r.line, "index": r.index})),
        "reason": d.reason(),
    }))
}

/// `warden.metrics`: counters and histograms for monitoring (admins only
/// by default: they describe other users' activity).
fn metrics(hub: &Hub) -> Result<Payload, WireError> {
    let methods: std::collections::BTreeMap<String, serde_json::Value> = lock(&hub.stats)
        .iter()
        .map(|(m, s)| {
            (
                m.clone(),
                json!({
                    "calls": s.calls,
                    "errors": s.errors,
                    "latency_us": {
                        "le": crate::hub::LATENCY_BUCKETS_US,
                        "counts": s.buckets,
                        "sum": s.sum_us,
                    },
                }),
            )
        })
        .collect();
    let conns: Vec<_> = lock(&hub.conns).values().cloned().collect();
    let queued_events: usize = conns
        .iter()
        .map(|c| c.ev_tx.max_capacity() - c.ev_tx.capacity())
        .sum();
    let missed: u64 = conns.iter().map(|c| c.missed.load(Ordering::Relaxed)).sum();
    let queued_bytes: u64 = lock(&hub.uids)
        .values()
        .map(|a| a.queued_bytes.load(Ordering::Relaxed))
        .sum();
    payload(json!({
        "uptime_ms": hub.started.elapsed().as_millis() as u64,
        "connections": conns.len(),
        "routed_in_flight": hub.routed_in_flight.load(Ordering::Relaxed),
        "providers": lock(&hub.providers).len(),
        "topics": lock(&hub.topics).len(),
        "queued_events": queued_events,
        "queued_bytes": queued_bytes,
        "missed_events_pending": missed,
        "methods": methods,
    }))
}

fn status(hub: &Hub) -> Result<Payload, WireError> {
    let conns: Vec<_> = {
        let map = lock(&hub.conns);
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    };
    let list: Vec<_> = conns
        .iter()
        .map(|c| {
            let since = c
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            json!({
                "id": c.id,
                "uid": c.identity.uid,
                "pid": c.identity.pid,
                "comm": c.comm,
                "connected_ms": since,
                "in_flight": c.in_flight.load(Ordering::Relaxed),
                "calls": c.calls.load(Ordering::Relaxed),
                "queued_events": c.ev_tx.max_capacity() - c.ev_tx.capacity(),
                "missed": c.missed.load(Ordering::Relaxed),
            })
        })
        .collect();
    let methods: std::collections::BTreeMap<String, serde_json::Value> = lock(&hub.stats)
        .iter()
        .map(|(m, s)| {
            let errors: u64 = s.errors.values().sum();
            (m.clone(), json!({ "calls": s.calls, "errors": errors }))
        })
        .collect();
    let mut providers: Vec<String> = lock(&hub.providers)
        .keys()
        .map(|m| m.as_str().to_owned())
        .collect();
    providers.sort();
    let topics = lock(&hub.topics).len();
    payload(json!({
        "server": crate::SERVER_NAME,
        "uptime_ms": hub.started.elapsed().as_millis() as u64,
        "connections": conns.len(),
        "draining": hub.draining.load(Ordering::Relaxed),
        "routed_in_flight": hub.routed_in_flight.load(Ordering::Relaxed),
        "methods": methods,
        "providers": providers,
        "topics": topics,
        "connection_list": list,
    }))
}
