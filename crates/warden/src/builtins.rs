//! The `warden.*` built-in methods.
//!
//! They are authorized like any other method (the default policy opens
//! ping, whoami, version, echo and explain to everyone, and status,
//! metrics and reload to administrators). `whoami` returns exactly the
//! identity the broker attached at connect, so a caller can check what the
//! broker believes. `reload` runs as a task of its own (it reads a file
//! and resolves names), the others answer at once.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use serde_json::json;
use warden_proto::{ErrorCode, Payload, WireError, PROTOCOL_VERSION};

use crate::registry::Registry;
use crate::view::CallerView;

/// Names of the built-in methods.
pub(crate) const BUILTINS: [&str; 12] = [
    "warden.ping",
    "warden.whoami",
    "warden.version",
    "warden.echo",
    "warden.status",
    "warden.explain",
    "warden.metrics",
    RELOAD,
    INTROSPECT,
    crate::invite_methods::CREATE,
    crate::invite_methods::LIST,
    crate::invite_methods::REVOKE,
];

/// The built-in that lists what the caller may call (served by the router,
/// which knows the handlers).
pub(crate) const INTROSPECT: &str = "warden.introspect";

/// One line on what each built-in does, for `warden.introspect`.
pub(crate) fn builtin_description(name: &str) -> &'static str {
    match name {
        "warden.ping" => "Answers {\"pong\": true}: is the broker there?",
        "warden.whoami" => "The identity the broker attached to this connection",
        "warden.version" => "The broker's software name and protocol version",
        "warden.echo" => "Answers with its params",
        "warden.status" => "Connections, calls and providers, for administrators",
        "warden.explain" => "What the policy decides for a subject, an action and a name, and why",
        "warden.metrics" => "Counters and latency histograms per method",
        RELOAD => "Reads the configuration file again, as SIGHUP does",
        INTROSPECT => "The methods this caller may call, what they do and who serves them",
        other => crate::invite_methods::description(other),
    }
}

/// Loads the configuration the broker was started with again, for the
/// `warden.reload` built-in: the new configuration, or the error naming
/// file, line and key. Called on a blocking thread. The embedding program
/// supplies it (`wardend`: the same load as SIGHUP's).
pub type Reloader = std::sync::Arc<
    dyn Fn() -> Result<warden_policy::Config, warden_policy::ConfigError> + Send + Sync,
>;

/// The built-in that reloads the configuration (see [`reload`]).
pub(crate) const RELOAD: &str = "warden.reload";

fn payload(v: serde_json::Value) -> Result<Payload, WireError> {
    Payload::from_value(&v).map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
}

/// Room left in a frame for the envelope around an answer.
const ENVELOPE_SLACK: usize = 1024;

/// Makes a `status`/`metrics` answer fit in one frame: cuts the
/// connection list first, then the per-method table (keeping the methods
/// with the most calls), and says so with `"truncated": true`. Counts
/// (`connections`, `method_count`) stay whole.
fn fit(mut v: serde_json::Value, max_frame: usize) -> Result<Payload, WireError> {
    let budget = max_frame.saturating_sub(ENVELOPE_SLACK);
    if json_len(&v) <= budget {
        return payload(v);
    }
    v["truncated"] = json!(true);
    if cut_array(&mut v, "connection_list", budget) {
        return payload(v);
    }
    if let Some(methods) = v.get("methods").and_then(|m| m.as_object()).cloned() {
        let mut by_calls: Vec<(String, serde_json::Value)> = methods.into_iter().collect();
        by_calls.sort_by_key(|(_, s)| std::cmp::Reverse(s["calls"].as_u64().unwrap_or(0)));
        let fits = cut_to_fit(&mut v, budget, by_calls.len(), |v, n| {
            v["methods"] = serde_json::Value::Object(by_calls[..n].iter().cloned().collect());
        });
        if fits {
            return payload(v);
        }
    }
    cut_array(&mut v, "providers", budget);
    payload(v)
}

fn json_len(v: &serde_json::Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
}

/// Finds, by bisection, the largest `n <= len` for which `v` after
/// `keep(v, n)` fits in `budget` bytes, and leaves `v` that way; true if
/// `v` then fits.
fn cut_to_fit(
    v: &mut serde_json::Value,
    budget: usize,
    len: usize,
    keep: impl Fn(&mut serde_json::Value, usize),
) -> bool {
    let (mut lo, mut hi) = (0usize, len);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        keep(v, mid);
        if json_len(v) <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    keep(v, lo);
    json_len(v) <= budget
}

/// Cuts the array `v[key]` to its longest prefix with which `v` fits in
/// `budget` bytes; true if `v` then fits.
fn cut_array(v: &mut serde_json::Value, key: &str, budget: usize) -> bool {
    let Some(list) = v.get(key).and_then(|l| l.as_array()).cloned() else {
        return json_len(v) <= budget;
    };
    cut_to_fit(v, budget, list.len(), |v, n| v[key] = json!(list[..n]))
}

pub(crate) fn call(
    reg: &Registry,
    view: &CallerView<'_>,
    method: &str,
    params: Payload,
) -> Result<Payload, WireError> {
    match method {
        "warden.ping" => payload(json!({ "pong": true })),
        "warden.whoami" => {
            let i = &view.peer.identity;
            let mut who = json!({
                "uid": i.uid,
                "gid": i.gid,
                "groups": i.groups,
                "pid": i.pid,
                "connection": view.peer.id,
            });
            if let Some(host) = &i.host {
                who["host"] = json!(host);
            }
            if let Some(g) = view.peer.grant() {
                who["role"] = json!(g.role);
                who["invitation"] = json!(g.id);
            }
            payload(who)
        }
        "warden.version" => payload(json!({
            "server": crate::SERVER_NAME,
            "protocol": PROTOCOL_VERSION,
        })),
        "warden.echo" => Ok(params),
        "warden.status" => status(reg),
        "warden.explain" => explain(reg, view, &params),
        "warden.metrics" => metrics(reg),
        other => Err(WireError::new(
            ErrorCode::UnknownMethod,
            format!(
                "{other} is not a built-in method; built-ins are {}",
                BUILTINS.join(", ")
            ),
        )),
    }
}

/// `warden.reload`: loads the configuration the broker was started with
/// again (the embedding program's [`Reloader`], the same load as
/// SIGHUP's) and swaps the new policy in; every connection recompiles its
/// snapshot. A file that does not load leaves the policy as it was, and
/// the answer is `bad_request` with the error (`FILE:LINE:COLUMN: KEY:
/// what is wrong`). Both outcomes are audited (`policy.reload`).
pub(crate) fn reload(
    reg: std::sync::Arc<Registry>,
    peer: crate::peer::PeerRef,
    reloader: Option<Reloader>,
    rule: String,
) -> crate::HandlerFuture {
    Box::pin(async move {
        let Some(reloader) = reloader else {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                "this broker has no configuration to reload (its program gave it none); \
                 restart it to change the policy",
            ));
        };
        let loaded = tokio::task::spawn_blocking(move || reloader())
            .await
            .map_err(|e| {
                WireError::new(
                    ErrorCode::Internal,
                    format!("the reload failed unexpectedly: {e}"),
                )
            })?;
        let actor = crate::audit::Actor::of_peer(&peer);
        match loaded {
            Ok(config) => {
                let rules = config.policy.rule_count();
                crate::pubsub::set_policy(&reg, std::sync::Arc::clone(&config.policy));
                crate::audit::record(crate::audit::Record {
                    actor: &actor,
                    action: "policy.reload",
                    target: config.source.as_str().into(),
                    rule: Some(&rule),
                    result: "ok",
                    message: "warden.reload: policy reloaded (limits and socket settings take \
                              effect at the next start)",
                    extra: json!({ "rules": rules, "warnings": config.warnings.len() }),
                });
                payload(json!({
                    "config": config.source,
                    "rules": rules,
                    "warnings": config.warnings,
                }))
            }
            Err(e) => {
                crate::audit::record(crate::audit::Record {
                    actor: &actor,
                    action: "policy.reload",
                    target: e.file.as_str().into(),
                    rule: Some(&rule),
                    result: "failed",
                    message: "warden.reload: the configuration is invalid, keeping the old policy",
                    extra: json!({ "error": e.to_string() }),
                });
                Err(WireError::new(
                    ErrorCode::BadRequest,
                    format!("{e} (the broker keeps its current policy)"),
                ))
            }
        }
    })
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
fn explain(reg: &Registry, view: &CallerView<'_>, params: &Payload) -> Result<Payload, WireError> {
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
    let me = &view.peer.identity;
    let own_groups = p
        .groups
        .iter()
        .chain(std::iter::once(&p.gid))
        .all(|g| *g == me.gid || me.groups.contains(g));
    if (p.uid != me.uid || !own_groups) && !view.policy.is_admin() {
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
        host: None,
        role: None,
    };
    let d = reg.current_policy().decide(&caller, action, &p.name);
    payload(d.to_json())
}

/// `warden.metrics`: counters and histograms for monitoring (admins only
/// by default: they describe other users' activity).
fn metrics(reg: &Registry) -> Result<Payload, WireError> {
    let (methods, unresolved) = reg.method_table(|s| {
        json!({
            "calls": s.calls,
            "errors": s.errors,
            "latency_us": {
                "le": crate::stats::LATENCY_BUCKETS_US,
                "counts": s.buckets,
                "sum": s.sum_us,
            },
        })
    });
    // The unresolved bucket has no latency histogram of interest.
    let unresolved = json!({ "calls": unresolved["calls"], "errors": unresolved["errors"] });
    let conns = reg.connections();
    let queued_events: usize = conns.iter().map(|c| c.queued_events()).sum();
    let missed: u64 = conns.iter().map(|c| c.missed.load(Ordering::Relaxed)).sum();
    let by_uid = reg.queued_bytes_by_uid();
    let queued_bytes: u64 = by_uid.values().sum();
    fit(
        json!({
            "uptime_ms": reg.started.elapsed().as_millis() as u64,
            "connections": conns.len(),
            "routed_in_flight": reg.calls_in_flight(),
            "providers": reg.provider_names().len(),
            "topics": reg.topic_count(),
            "queued_events": queued_events,
            "queued_bytes": queued_bytes,
            "missed_events_pending": missed,
            "queued_bytes_by_uid": by_uid,
            "method_count": methods.len(),
            "methods": methods,
            "unresolved": unresolved,
            "truncated": false,
        }),
        reg.settings.max_frame,
    )
}

fn status(reg: &Registry) -> Result<Payload, WireError> {
    let conns = reg.connections();
    let list: Vec<_> = conns
        .iter()
        .map(|c| {
            let at = c
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            // From the wall clock too (the connection keeps no monotonic
            // start); a clock stepped back reads as 0, not as a panic.
            let for_ms = c
                .connected_at
                .elapsed()
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let mut entry = json!({
                "id": c.id,
                "uid": c.identity.uid,
                "pid": c.identity.pid,
                "comm": c.comm,
                "connected_at_unix_ms": at,
                "connected_for_ms": for_ms,
                "in_flight": c.in_flight.load(Ordering::Relaxed),
                "calls": c.calls.load(Ordering::Relaxed),
                "queued_events": c.queued_events(),
                "missed": c.missed.load(Ordering::Relaxed),
            });
            // Only for connections that joined by invitation.
            if let Some(g) = c.grant() {
                entry["role"] = json!(g.role);
                entry["invitation"] = json!(g.id);
            }
            entry
        })
        .collect();
    let (methods, unresolved) =
        reg.method_table(|s| json!({ "calls": s.calls, "errors": s.errors.values().sum::<u64>() }));
    let providers = reg.provider_names();
    let topics = reg.topic_count();
    fit(
        json!({
            "server": crate::SERVER_NAME,
            "uptime_ms": reg.started.elapsed().as_millis() as u64,
            "connections": conns.len(),
            "draining": reg.is_draining(),
            "routed_in_flight": reg.calls_in_flight(),
            "method_count": methods.len(),
            "methods": methods,
            "unresolved": unresolved,
            "providers": providers,
            "topics": topics,
            "connection_list": list,
            "truncated": false,
        }),
        reg.settings.max_frame,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_past_the_frame_limit_is_cut_and_says_so() {
        let max = 64 * 1024;
        let conns: Vec<_> = (0..5_000)
            .map(|i| json!({ "id": i, "uid": 1000, "comm": "x".repeat(15) }))
            .collect();
        let methods: serde_json::Map<String, serde_json::Value> = (0..5_000)
            .map(|i| (format!("svc.m{i}"), json!({ "calls": i, "errors": 0 })))
            .collect();
        let v = json!({
            "connections": 5_000,
            "method_count": 5_000,
            "connection_list": conns,
            "methods": methods,
            "providers": ["svc.a"],
            "truncated": false,
        });
        let answer = fit(v, max).unwrap_or_else(|e| panic!("{e}"));
        let out: serde_json::Value = answer.parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(json_len(&out) <= max - ENVELOPE_SLACK);
        assert_eq!(out["truncated"], true);
        assert_eq!(out["connections"], 5_000, "counts stay whole");
        assert_eq!(
            out["connection_list"].as_array().map(Vec::len),
            Some(0),
            "the list goes first"
        );
        let kept = out["methods"].as_object().map(|m| m.len()).unwrap_or(0);
        assert!(kept > 100 && kept < 5_000, "kept {kept}");
        assert!(
            out["methods"].get("svc.m4999").is_some(),
            "the busiest methods stay"
        );
        assert!(out["methods"].get("svc.m0").is_none());

        let small = json!({ "connection_list": [1, 2, 3], "truncated": false });
        let out: serde_json::Value = fit(small.clone(), max)
            .and_then(|p| {
                p.parse()
                    .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, small);
    }
}
