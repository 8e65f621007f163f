//! Providers (calls in both directions on one connection) and pub/sub.

use std::process::Stdio;

use serde_json::{json, Value};
use warden_testkit::{
    bin_path, command_as, config_text, wardenctl, BrokerProcess, RawConn, TestDir,
};

use crate::{provider, stderr, stdout, users, wait_in_flight, RULES};

/// Reads events until `n` are accounted for (received or reported
/// missed); returns (received, missed).
fn drain_events(conn: &mut RawConn, n: u64) -> anyhow::Result<(u64, u64)> {
    let (mut got, mut missed) = (0, 0);
    while got + missed < n {
        let v = conn.recv_some()?;
        match v["kind"].as_str() {
            Some("event") => {
                got += 1;
                missed += v["missed"].as_u64().unwrap_or(0);
            }
            Some("lagged") => missed += v["missed"].as_u64().unwrap_or(0),
            _ => anyhow::bail!("unexpected {v}"),
        }
    }
    Ok((got, missed))
}

#[test]
#[ignore = "needs root"]
fn provider_serves_another_users_caller_with_the_callers_identity() -> anyhow::Result<()> {
    let (alice, bob, _) = users("provider_serves_another_users_caller");
    let dir = TestDir::new("duplex")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let mut p = provider(&alice, broker.socket(), "svc.echo", 0)?;
    let out = wardenctl(
        Some(&bob),
        broker.socket(),
        &["--json", "call", "svc.echo", r#"{"x":1,"uid":0}"#],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out))?;
    assert_eq!(v["caller"]["uid"], bob.uid, "{v}");
    assert_eq!(v["caller"]["gid"], bob.gid, "{v}");
    assert_eq!(v["params"], json!({"x": 1, "uid": 0}));

    // A second provider for the name, a reserved name, a forbidden name.
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    c.send_json(&json!({"kind":"provide","id":1,"method":"svc.echo"}))?;
    let r = c.recv_some()?;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    c.send_json(&json!({"kind":"provide","id":2,"method":"warden.ping"}))?;
    assert_eq!(c.recv_some()?["error"]["code"], "denied");
    let out = wardenctl(Some(&bob), broker.socket(), &["call", "svc.none"])?;
    assert!(
        stderr(&out).starts_with("error: unknown_method"),
        "{}",
        stderr(&out)
    );
    p.kill()?;
    p.wait()?;
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn provider_killed_mid_call_gives_unavailable() -> anyhow::Result<()> {
    let (alice, bob, _) = users("provider_killed_mid_call_gives_unavailable");
    let dir = TestDir::new("killprov")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let mut p = provider(&alice, broker.socket(), "svc.slow", 600_000)?;
    let caller = command_as(&bob, &bin_path("wardenctl"))
        .arg("--socket")
        .arg(broker.socket())
        .args(["call", "svc.slow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_in_flight(broker.socket(), 1)?;
    p.kill()?;
    p.wait()?;
    let out = caller.wait_with_output()?;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: unavailable:") && err.contains("disconnected"),
        "{err}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn call_deadline_and_cancel_reach_the_provider() -> anyhow::Result<()> {
    users("call_deadline_and_cancel_reach_the_provider");
    let dir = TestDir::new("deadline")?;
    let conf = format!("[limits]\ncall_timeout_ms = 300\n{RULES}");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    let mut prov = RawConn::connect(broker.socket())?;
    prov.hello()?;
    prov.send_json(&json!({"kind":"provide","id":1,"method":"svc.hold"}))?;
    assert_eq!(prov.recv_some()?["kind"], "reply");
    let mut caller = RawConn::connect(broker.socket())?;
    caller.hello()?;
    // Deadline.
    caller.send_json(&json!({"kind":"call","id":1,"method":"svc.hold"}))?;
    let routed = prov.recv_some()?;
    assert_eq!(routed["kind"], "call");
    assert_eq!(routed["caller"]["uid"], 0);
    let r = caller.recv_some()?;
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(1), json!("timeout")),
        "{r}"
    );
    let c = prov.recv_some()?;
    assert_eq!(
        (c["kind"].clone(), c["id"].clone()),
        (json!("cancel"), routed["id"].clone())
    );
    // A late answer is ignored, and the caller sees nothing more for id 1.
    prov.send_json(&json!({"kind":"reply","id":routed["id"],"result":1}))?;
    // Cancel by the caller.
    caller.send_json(&json!({"kind":"call","id":2,"method":"svc.hold"}))?;
    let routed = prov.recv_some()?;
    caller.send_json(&json!({"kind":"cancel","id":2}))?;
    let r = caller.recv_some()?;
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(2), json!("cancelled")),
        "{r}"
    );
    let c = prov.recv_some()?;
    assert_eq!(
        (c["kind"].clone(), c["id"].clone()),
        (json!("cancel"), routed["id"].clone())
    );
    // A normal round trip still works on both connections.
    caller.send_json(&json!({"kind":"call","id":3,"method":"svc.hold","params":[1]}))?;
    let routed = prov.recv_some()?;
    prov.send_json(&json!({"kind":"reply","id":routed["id"],"result":{"ok":true}}))?;
    let r = caller.recv_some()?;
    assert_eq!(
        (r["id"].clone(), r["result"].clone()),
        (json!(3), json!({"ok": true})),
        "{r}"
    );
    Ok(())
}

#[test]
fn slow_subscriber_does_not_block_and_learns_what_it_missed() -> anyhow::Result<()> {
    let dir = TestDir::new("pubsub")?;
    let conf = format!("[limits]\nsubscriber_queue_len = 32\n{RULES}");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    const N: u64 = 3000;

    let mut stalled = RawConn::connect(broker.socket())?;
    stalled.hello()?;
    stalled.send_json(&json!({"kind":"subscribe","id":1,"topic":"news.x"}))?;
    assert_eq!(stalled.recv_some()?["kind"], "reply");

    let mut reader = RawConn::connect(broker.socket())?;
    reader.hello()?;
    reader.send_json(&json!({"kind":"subscribe","id":1,"topic":"news.x"}))?;
    assert_eq!(reader.recv_some()?["kind"], "reply");
    let reading = std::thread::spawn(move || drain_events(&mut reader, N));

    let mut publisher = RawConn::connect(broker.socket())?;
    publisher.hello()?;
    let payload = "x".repeat(512);
    let (mut delivered, mut dropped) = (0, 0);
    // Publish in pipelined batches so the publisher never waits on a
    // subscriber, only on its own replies.
    for batch in 0..N / 100 {
        for i in 0..100 {
            let n = batch * 100 + i + 1;
            publisher.send_json(
                &json!({"kind":"publish","id":n,"topic":"news.x","data":{"n":n,"pad":payload}}),
            )?;
        }
        for _ in 0..100 {
            let r = publisher.recv_some()?;
            assert_eq!(r["kind"], "reply", "{r}");
            delivered += r["result"]["delivered"].as_u64().unwrap_or(0);
            dropped += r["result"]["dropped"].as_u64().unwrap_or(0);
        }
    }
    assert_eq!(delivered + dropped, 2 * N);
    assert!(
        dropped > 0,
        "the stalled subscriber must have dropped events"
    );
    let (got, missed) = reading
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    // The reader keeps up (its queue may still overflow on a busy machine,
    // but then it is told exactly how many it missed).
    assert_eq!(got + missed, N);

    // The stalled subscriber now reads everything and accounts for all N.
    let (got, missed) = drain_events(&mut stalled, N)?;
    assert_eq!(got + missed, N);
    assert!(
        missed > 0,
        "the stalled subscriber learns how many it missed"
    );
    Ok(())
}

#[test]
fn slow_subscriber_is_disconnected_when_configured() -> anyhow::Result<()> {
    let dir = TestDir::new("slowdisc")?;
    let conf =
        format!("on_slow_subscriber = \"disconnect\"\n[limits]\nsubscriber_queue_len = 8\n{RULES}");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    let mut stalled = RawConn::connect(broker.socket())?;
    stalled.hello()?;
    stalled.send_json(&json!({"kind":"subscribe","id":1,"topic":"news.x"}))?;
    assert_eq!(stalled.recv_some()?["kind"], "reply");
    let mut publisher = RawConn::connect(broker.socket())?;
    publisher.hello()?;
    let pad = "y".repeat(4096);
    let mut dropped = 0;
    for id in 1..=2000u64 {
        publisher.send_json(&json!({"kind":"publish","id":id,"topic":"news.x","data":pad}))?;
        let r = publisher.recv_some()?;
        dropped += r["result"]["dropped"].as_u64().unwrap_or(0);
        if dropped > 0 {
            break;
        }
    }
    assert!(dropped > 0, "the queue never filled");
    // The stalled subscriber finds its events, then the reason, then EOF.
    let mut errors = Vec::new();
    while let Some(v) = stalled.recv()? {
        if v["kind"] == "error" {
            errors.push(v);
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["error"]["code"], "limit_exceeded", "{errors:?}");
    assert!(errors[0]["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("on_slow_subscriber"));
    // The publisher carries on.
    assert_eq!(
        publisher.call(9999, "warden.ping", json!(null))?["result"]["pong"],
        true
    );
    Ok(())
}
