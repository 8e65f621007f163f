//! Policy at run time, without root: reload revocation (`set_policy`),
//! monitor rights and redaction, and `warden.explain`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use warden_client::Event;
use warden_proto::{ErrorCode, Payload};

/// Waits for the next event on `topic`, skipping others.
async fn event_on(c: &warden_client::Client, topic: &str) -> anyhow::Result<(Value, Option<u32>)> {
    loop {
        match within("an event", c.next_event()).await? {
            Some(Event::Event {
                topic: t,
                data,
                publisher,
                ..
            }) if t.as_str() == topic => return Ok((data.parse()?, publisher.map(|p| p.uid))),
            Some(_) => continue,
            None => anyhow::bail!("the connection closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_no_longer_allows_a_subscription_or_method_revokes_them() -> anyhow::Result<()>
{
    let r = start(OPEN_RULES).await?;
    let holder = client(&r).await?;
    holder.subscribe("test.news").await?;
    holder.subscribe("test.kept").await?;
    holder.provide("test.svc").await?;
    holder.provide("test.kept-svc").await?;
    let other = client(&r).await?;
    // Before: the method is routed and the topic delivered.
    let p = other.publish("test.news", Payload::from_value(&1)?).await?;
    assert_eq!(p["delivered"], 1);
    assert_eq!(event_on(&holder, "test.news").await?.0, json!(1));

    // The new rules still allow calling and publishing test.**, but no
    // longer subscribing to test.news nor providing test.svc.
    let reloaded = format!(
        r#"
[[rule]]
effect = "deny"
actions = ["subscribe"]
names = ["test.news"]
everyone = true

[[rule]]
effect = "deny"
actions = ["provide"]
names = ["test.svc"]
uids = [{uid}]

{OPEN_RULES}"#,
        uid = my_uid()
    );
    r.broker.set_policy(policy(&reloaded)?);
    let (data, publisher) = event_on(&holder, "warden.policy.revoked").await?;
    assert_eq!(publisher, None, "the broker's own event has no publisher");
    assert_eq!(
        data,
        json!({"subscriptions": ["test.news"], "provided": ["test.svc"]})
    );
    // The subscription no longer receives; the kept one does.
    let p = other.publish("test.news", Payload::from_value(&2)?).await?;
    assert_eq!(p, json!({"delivered": 0, "dropped": 0}));
    let p = other.publish("test.kept", Payload::from_value(&3)?).await?;
    assert_eq!(p["delivered"], 1);
    assert_eq!(event_on(&holder, "test.kept").await?.0, json!(3));
    // The revoked method is no longer routed: nobody serves it now.
    let e = other.call_json("test.svc", Value::Null).await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::UnknownMethod));
    // The kept one still is.
    let (id, answer) = other.start_call("test.kept-svc", Payload::null()).await?;
    let call = within("the routed call", holder.next_call())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the holder's connection closed"))?;
    assert_eq!(call.method.as_str(), "test.kept-svc");
    holder
        .reply(call.id, Ok(Payload::from_value(&"kept")?))
        .await?;
    let got = within("the answer", answer).await?;
    assert_eq!(
        got.map(|p| p.get().to_owned()).ok(),
        Some("\"kept\"".to_owned())
    );
    let _ = id;
    // The connection stays open, and later requests follow the new rules.
    assert_eq!(
        holder.call_json("warden.ping", Value::Null).await?["pong"],
        true
    );
    let e = holder.subscribe("test.news").await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Denied));
    let e = holder.provide("test.svc").await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Denied));
    // A reload that takes nothing away sends nothing.
    r.broker.set_policy(policy(&reloaded)?);
    let quiet = tokio::time::timeout(Duration::from_millis(300), holder.next_event()).await;
    assert!(quiet.is_err(), "unexpected {quiet:?}");
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_denies_calling_a_provided_method_answers_denied() -> anyhow::Result<()> {
    let r = start(OPEN_RULES).await?;
    let holder = std::sync::Arc::new(client(&r).await?);
    holder.provide("test.svc").await?;
    let h2 = std::sync::Arc::clone(&holder);
    let serving = tokio::spawn(async move {
        let mut served = 0u32;
        while let Some(c) = h2.next_call().await {
            served += 1;
            let _ = h2
                .reply(c.id, Ok(Payload::from_value(&"served").unwrap_or_default()))
                .await;
        }
        served
    });
    let caller = client(&r).await?;
    assert_eq!(
        caller.call_json("test.svc", Value::Null).await?,
        json!("served")
    );
    // Calling is denied now; providing still allowed, so nothing is revoked.
    let reloaded = format!(
        "[[rule]]\neffect = \"deny\"\nactions = [\"call\"]\nnames = [\"test.svc\"]\neveryone = true\n{OPEN_RULES}"
    );
    r.broker.set_policy(policy(&reloaded)?);
    let e = caller.call_json("test.svc", Value::Null).await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Denied));
    // The provider keeps its name and its connection.
    let e = caller.provide("test.svc").await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Unavailable));
    let quiet = tokio::time::timeout(Duration::from_millis(300), holder.next_event()).await;
    assert!(quiet.is_err(), "nothing was revoked, yet {quiet:?}");
    serving.abort();
    r.stop().await
}

fn monitor_rules(what: &str) -> String {
    format!(
        r#"
[[rule]]
actions = ["monitor"]
names = [{what}]
uids = [{uid}]

{OPEN_RULES}"#,
        uid = my_uid()
    )
}

/// Reads monitor events until one of `kind` for `method` from `conn`.
async fn monitor_event(
    m: &warden_client::Client,
    topic: &str,
    kind: &str,
    method: &str,
    conn: &Value,
) -> anyhow::Result<Value> {
    loop {
        let (data, _) = event_on(m, topic).await?;
        if data["kind"] == kind && data["method"] == method && &data["conn"] == conn {
            return Ok(data);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_without_payload_rights_sees_calls_redacted() -> anyhow::Result<()> {
    let r = start(&monitor_rules("\"calls\"")).await?;
    let m = client(&r).await?;
    let e = m.subscribe("warden.monitor.payloads").await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Denied));
    m.subscribe("warden.monitor").await?;
    let c = client(&r).await?;
    let me = c.call_json("warden.whoami", Value::Null).await?;
    let echoed = c
        .call_json("warden.echo", json!({"secret": "s3cr3t"}))
        .await?;
    assert_eq!(echoed, json!({"secret": "s3cr3t"}));
    let call = monitor_event(
        &m,
        "warden.monitor",
        "call",
        "warden.echo",
        &me["connection"],
    )
    .await?;
    assert_eq!(call["redacted"], true, "{call}");
    assert!(call.get("params").is_none(), "{call}");
    assert_eq!(call["uid"], my_uid(), "{call}");
    assert_eq!(call["pid"], std::process::id(), "{call}");
    assert!(
        call["rule"].as_str().unwrap_or("").contains("allowed by"),
        "{call}"
    );
    let answer = monitor_event(
        &m,
        "warden.monitor",
        "reply",
        "warden.echo",
        &me["connection"],
    )
    .await?;
    assert_eq!(answer["redacted"], true, "{answer}");
    assert_eq!(answer["code"], "ok", "{answer}");
    assert!(answer.get("result").is_none(), "{answer}");
    assert!(answer["latency_us"].is_u64(), "{answer}");
    assert!(!answer.to_string().contains("s3cr3t"), "{answer}");
    // A refused call shows as an error with its code.
    let _ = c.call_json("other.thing", Value::Null).await;
    let err = monitor_event(
        &m,
        "warden.monitor",
        "error",
        "other.thing",
        &me["connection"],
    )
    .await?;
    assert_eq!(err["code"], "denied", "{err}");
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_with_payload_rights_sees_params_and_results() -> anyhow::Result<()> {
    let r = start(&monitor_rules("\"calls\", \"payloads\"")).await?;
    let m = client(&r).await?;
    m.subscribe("warden.monitor.payloads").await?;
    let c = client(&r).await?;
    let me = c.call_json("warden.whoami", Value::Null).await?;
    c.call_json("warden.echo", json!({"secret": "s3cr3t"}))
        .await?;
    let topic = "warden.monitor.payloads";
    let call = monitor_event(&m, topic, "call", "warden.echo", &me["connection"]).await?;
    assert_eq!(call["params"], json!({"secret": "s3cr3t"}), "{call}");
    assert!(call.get("redacted").is_none(), "{call}");
    let answer = monitor_event(&m, topic, "reply", "warden.echo", &me["connection"]).await?;
    assert_eq!(answer["result"], json!({"secret": "s3cr3t"}), "{answer}");
    // Publications too, with their data.
    c.publish("test.topic", Payload::from_value(&json!({"d": 1}))?)
        .await?;
    loop {
        let (data, _) = event_on(&m, topic).await?;
        if data["kind"] == "publish" && data["topic"] == "test.topic" {
            assert_eq!(data["data"], json!({"d": 1}), "{data}");
            assert_eq!(data["delivered"], 0, "{data}");
            break;
        }
    }
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_monitor_rights_is_denied() -> anyhow::Result<()> {
    let r = start(OPEN_RULES).await?;
    let m = client(&r).await?;
    for topic in ["warden.monitor", "warden.monitor.payloads"] {
        let e = m.subscribe(topic).await.err();
        assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Denied), "{topic}");
    }
    // And it sees nothing of the traffic.
    let c = client(&r).await?;
    c.call_json("warden.echo", json!({"secret": 1})).await?;
    let quiet = tokio::time::timeout(Duration::from_millis(300), m.next_event()).await;
    assert!(quiet.is_err(), "unexpected {quiet:?}");
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_answers_for_the_callers_own_uid_with_allowed_rule_and_reason() -> anyhow::Result<()>
{
    let text = format!(
        r#"
[[rule]]
actions = ["call"]
names = ["warden.explain"]
everyone = true

[[rule]]
actions = ["call"]
names = ["test.mine.*"]
uids = [{uid}]
"#,
        uid = my_uid()
    );
    let r = start(&text).await?;
    let c = client(&r).await?;
    let id = c.welcome().identity.clone();
    assert_eq!(id.uid, my_uid());
    let ask = |action: &str, name: &str| json!({"uid": id.uid, "gid": id.gid, "groups": id.groups, "action": action, "name": name});
    let v = c
        .call_json("warden.explain", ask("call", "test.mine.x"))
        .await?;
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(
        v["rule"],
        json!({"file": "t.toml", "line": 7, "index": 2}),
        "{v}"
    );
    assert_eq!(v["reason"], "allowed by rule 2 at t.toml:7", "{v}");
    let v = c
        .call_json("warden.explain", ask("publish", "test.mine.x"))
        .await?;
    assert_eq!(
        v,
        json!({"allowed": false, "rule": null, "reason": "no rule matched: default deny"})
    );
    // The answer matches what the broker really does.
    let e = c.call_json("test.mine.x", Value::Null).await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::UnknownMethod));
    let e = c.publish("test.mine.x", Payload::null()).await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Denied));
    // Malformed parameters.
    let e = c
        .call_json("warden.explain", json!({"uid": id.uid}))
        .await
        .err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::BadRequest));
    let e = c
        .call_json("warden.explain", ask("fly", "test.mine.x"))
        .await
        .err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::BadRequest));
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_for_another_uid_needs_admin_rights() -> anyhow::Result<()> {
    let r = start(OPEN_RULES).await?;
    let c = client(&r).await?;
    let id = c.welcome().identity.clone();
    let other_uid = if id.uid == 12345 { 12346 } else { 12345 };
    let other = json!({"uid": other_uid, "gid": other_uid, "groups": [], "action": "call", "name": "test.x"});
    // Own uid, but a group this connection does not have: also refused.
    let foreign_group = (1..u32::MAX)
        .map(|g| g + 54320)
        .find(|g| *g != id.gid && !id.groups.contains(g))
        .unwrap_or(99_999);
    let own_uid_other_group = json!({"uid": id.uid, "gid": id.gid, "groups": [foreign_group],
        "action": "call", "name": "test.x"});
    for params in [other, own_uid_other_group] {
        let answer = c.call_json("warden.explain", params.clone()).await;
        if is_root() {
            // Root is always an administrator: it may explain anyone.
            let v = answer?;
            assert_eq!(v["allowed"], true, "{v}");
            assert_eq!(v["rule"]["index"], 2, "{v}");
        } else {
            let e = answer.err();
            assert_eq!(
                e.and_then(|e| e.code()),
                Some(ErrorCode::Denied),
                "{params}"
            );
        }
    }
    // The connection stays usable.
    assert_eq!(c.call_json("warden.ping", Value::Null).await?["pong"], true);
    r.stop().await
}
