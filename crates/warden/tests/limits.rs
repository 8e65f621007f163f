//! The broker's limits, in-process and without root: in-flight calls,
//! connections (per uid and global), subscriptions, provided methods,
//! frame size, queued bytes per uid, and the hello/frame deadlines.

mod common;

use common::*;
use serde_json::{json, Value};
use warden_proto::ErrorCode;

fn with_limits(limits: &str) -> String {
    format!("[limits]\n{limits}\n{OPEN_RULES}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_calls_past_max_in_flight_get_limit_exceeded_and_the_others_complete(
) -> anyhow::Result<()> {
    let r = start(&with_limits("max_in_flight_per_connection = 2")).await?;
    let (mut prov, _) = Raw::open(&r.socket).await?;
    let p = prov
        .request(json!({"kind":"provide","id":1,"method":"test.hold"}))
        .await?;
    assert_eq!(p["result"]["method"], "test.hold", "{p}");
    let (mut caller, welcome) = Raw::open(&r.socket).await?;
    assert_eq!(welcome["limits"]["max_in_flight"], 2, "{welcome}");
    for id in 1..=3 {
        caller
            .send(&json!({"kind":"call","id":id,"method":"test.hold","params":{"n":id}}))
            .await?;
    }
    // The third is refused at once; the first two reach the provider.
    let v = caller.recv_some().await?;
    assert_eq!(
        (v["id"].clone(), err_code(&v)),
        (json!(3), Some("limit_exceeded")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_in_flight_per_connection"),
        "{v}"
    );
    let mut routed = Vec::new();
    for _ in 0..2 {
        let c = prov.recv_some().await?;
        assert_eq!(c["kind"], "call", "{c}");
        routed.push(c);
    }
    for c in &routed {
        prov.send(&json!({"kind":"reply","id":c["id"],"result":{"echo":c["params"]["n"]}}))
            .await?;
    }
    let mut answered = Vec::new();
    for _ in 0..2 {
        let v = caller.recv_some().await?;
        assert_eq!(v["kind"], "reply", "{v}");
        assert_eq!(v["result"]["echo"], v["id"], "{v}");
        answered.push(v["id"].as_u64().unwrap_or(0));
    }
    answered.sort_unstable();
    assert_eq!(answered, vec![1, 2]);
    // The freed slots are usable again.
    caller
        .send(&json!({"kind":"call","id":4,"method":"test.hold","params":{"n":4}}))
        .await?;
    let c = prov.recv_some().await?;
    prov.send(&json!({"kind":"reply","id":c["id"],"result":"again"}))
        .await?;
    let v = caller.recv_some().await?;
    assert_eq!(
        (v["id"].clone(), v["result"].clone()),
        (json!(4), json!("again")),
        "{v}"
    );
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_calls_count_against_max_in_flight() -> anyhow::Result<()> {
    let gate = Gated::new();
    let g = gate.clone();
    let r = start_with(&with_limits("max_in_flight_per_connection = 2"), move |b| {
        b.handler("test.gated", g)
    })
    .await?;
    let (mut c, _) = Raw::open(&r.socket).await?;
    for id in 1..=3 {
        c.send(&json!({"kind":"call","id":id,"method":"test.gated"}))
            .await?;
    }
    let v = c.recv_some().await?;
    assert_eq!(
        (v["id"].clone(), err_code(&v)),
        (json!(3), Some("limit_exceeded")),
        "{v}"
    );
    // Every call counts, built-ins too: with both slots taken by handler
    // calls, a ping is past the limit as well.
    let pong = c.call(10, "warden.ping", Value::Null).await?;
    assert_eq!(err_code(&pong), Some("limit_exceeded"), "{pong}");
    gate.open(2);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let v = c.recv_some().await?;
        assert_eq!(v["result"]["done"], true, "{v}");
        ids.push(v["id"].as_u64().unwrap_or(0));
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    gate.open(1);
    let v = c.call(4, "test.gated", Value::Null).await?;
    assert_eq!(v["result"]["done"], true, "{v}");
    let pong = c.call(11, "warden.ping", Value::Null).await?;
    assert_eq!(pong["result"]["pong"], true, "{pong}");
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_per_uid_are_refused_with_limit_exceeded(
) -> anyhow::Result<()> {
    let r = start(&with_limits("max_connections_per_uid = 3")).await?;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(client(&r).await?);
    }
    r.wait_connections(3).await?;
    // A raw connection sees the refusal frame (no id), then EOF, before
    // it sends anything.
    let mut fourth = Raw::connect(&r.socket).await?;
    let frames = fourth.recv_to_eof().await?;
    assert_eq!(frames.len(), 1, "{frames:?}");
    let v = &frames[0];
    assert_eq!(v["kind"], "error", "{v}");
    assert!(v.get("id").is_none(), "{v}");
    assert_eq!(err_code(v), Some("limit_exceeded"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_connections_per_uid"),
        "{v}"
    );
    // The refused connections are not counted; the open ones still work.
    r.wait_connections(3).await?;
    for c in &open {
        assert_eq!(c.call_json("warden.ping", Value::Null).await?["pong"], true);
    }
    // Closing one makes room again.
    drop(open.pop());
    r.wait_connections(2).await?;
    let again = client(&r).await?;
    assert_eq!(
        again.call_json("warden.ping", Value::Null).await?["pong"],
        true
    );
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_reports_a_connection_limit_as_refused() -> anyhow::Result<()> {
    let r = start(&with_limits("max_connections_per_uid = 1")).await?;
    let _only = client(&r).await?;
    r.wait_connections(1).await?;
    for _ in 0..5 {
        let opts = warden_client::ConnectOptions::new(r.socket.display().to_string());
        match warden_client::Client::connect(opts).await {
            Err(warden_client::ConnectError::Refused(e)) => {
                assert_eq!(e.code, ErrorCode::LimitExceeded, "{e}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        r.wait_connections(1).await?;
    }
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_refused_with_limit_exceeded() -> anyhow::Result<()> {
    let r = start(&with_limits("max_connections = 2")).await?;
    let a = client(&r).await?;
    let _b = client(&r).await?;
    r.wait_connections(2).await?;
    let mut third = Raw::connect(&r.socket).await?;
    let frames = third.recv_to_eof().await?;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(err_code(&frames[0]), Some("limit_exceeded"), "{frames:?}");
    assert!(frames[0].get("id").is_none(), "{frames:?}");
    assert!(
        frames[0]["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("connection limit"),
        "{frames:?}"
    );
    r.wait_connections(2).await?;
    assert_eq!(a.call_json("warden.ping", Value::Null).await?["pong"], true);
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_max_subscriptions_per_connection_get_limit_exceeded(
) -> anyhow::Result<()> {
    let r = start(&with_limits("max_subscriptions_per_connection = 2")).await?;
    let (mut c, _) = Raw::open(&r.socket).await?;
    for (id, topic) in [(1, "test.a"), (2, "test.b")] {
        let v = c
            .request(json!({"kind":"subscribe","id":id,"topic":topic}))
            .await?;
        assert_eq!(v["result"]["topic"], topic, "{v}");
    }
    let v = c
        .request(json!({"kind":"subscribe","id":3,"topic":"test.c"}))
        .await?;
    assert_eq!(err_code(&v), Some("limit_exceeded"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_subscriptions_per_connection"),
        "{v}"
    );
    // A topic already held is not a new subscription.
    let v = c
        .request(json!({"kind":"subscribe","id":4,"topic":"test.a"}))
        .await?;
    assert_eq!(v["kind"], "reply", "{v}");
    // Unsubscribing frees a place.
    let v = c
        .request(json!({"kind":"unsubscribe","id":5,"topic":"test.b"}))
        .await?;
    assert_eq!(v["kind"], "reply", "{v}");
    let v = c
        .request(json!({"kind":"subscribe","id":6,"topic":"test.c"}))
        .await?;
    assert_eq!(v["kind"], "reply", "{v}");
    // Another connection has its own count.
    let other = client(&r).await?;
    other.subscribe("test.x").await?;
    other.subscribe("test.y").await?;
    let e = other.subscribe("test.z").await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::LimitExceeded));
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provides_past_max_provided_per_connection_get_limit_exceeded() -> anyhow::Result<()> {
    let r = start(&with_limits("max_provided_per_connection = 1")).await?;
    let (mut c, _) = Raw::open(&r.socket).await?;
    let v = c
        .request(json!({"kind":"provide","id":1,"method":"test.one"}))
        .await?;
    assert_eq!(v["result"]["method"], "test.one", "{v}");
    let v = c
        .request(json!({"kind":"provide","id":2,"method":"test.two"}))
        .await?;
    assert_eq!(err_code(&v), Some("limit_exceeded"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_provided_per_connection"),
        "{v}"
    );
    // Providing the same name again is not a new one.
    let v = c
        .request(json!({"kind":"provide","id":3,"method":"test.one"}))
        .await?;
    assert_eq!(v["kind"], "reply", "{v}");
    // test.two was not registered: nobody serves it.
    let caller = client(&r).await?;
    let e = caller.call_json("test.two", Value::Null).await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::UnknownMethod));
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_gets_too_large_and_the_connection_closes() -> anyhow::Result<()> {
    let r = start(&with_limits("max_frame_bytes = 1024")).await?;
    let (mut c, welcome) = Raw::open(&r.socket).await?;
    assert_eq!(welcome["limits"]["max_frame"], 1024, "{welcome}");
    // A frame of exactly the limit is fine.
    let pad = "p".repeat(900);
    let probe =
        serde_json::to_vec(&json!({"kind":"call","id":1,"method":"warden.echo","params":pad}))?;
    let fill = "p".repeat(900 + 1024 - probe.len());
    let body =
        serde_json::to_vec(&json!({"kind":"call","id":1,"method":"warden.echo","params":fill}))?;
    assert_eq!(body.len(), 1024);
    let v = c
        .call(1, "warden.echo", Value::String(fill.clone()))
        .await?;
    assert_eq!(v["result"], Value::String(fill), "{v}");
    // One byte more: refused as soon as the length arrives, before any
    // body is sent; then the connection closes.
    c.send_bytes(&1025u32.to_be_bytes()).await?;
    let frames = c.recv_to_eof().await?;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["kind"], "error", "{frames:?}");
    assert!(frames[0].get("id").is_none(), "{frames:?}");
    assert_eq!(err_code(&frames[0]), Some("too_large"), "{frames:?}");
    // Other connections are not affected.
    let other = client(&r).await?;
    assert_eq!(
        other.call_json("warden.ping", Value::Null).await?["pong"],
        true
    );
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_length_frame_gets_bad_request_and_the_connection_closes() -> anyhow::Result<()> {
    let r = start(OPEN_RULES).await?;
    let (mut c, _) = Raw::open(&r.socket).await?;
    c.send_bytes(&0u32.to_be_bytes()).await?;
    let frames = c.recv_to_eof().await?;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(frames[0].get("id").is_none(), "{frames:?}");
    assert_eq!(err_code(&frames[0]), Some("bad_request"), "{frames:?}");
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_with_timeout_after_hello_timeout() -> anyhow::Result<()> {
    let r = start(&with_limits(
        "hello_timeout_ms = 200\nframe_timeout_ms = 200",
    ))
    .await?;
    // No hello at all.
    let started = std::time::Instant::now();
    let mut silent = Raw::connect(&r.socket).await?;
    let frames = silent.recv_to_eof().await?;
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(frames[0].get("id").is_none(), "{frames:?}");
    assert_eq!(err_code(&frames[0]), Some("timeout"), "{frames:?}");
    // After the hello, a frame left half-sent.
    let (mut half, _) = Raw::open(&r.socket).await?;
    let started = std::time::Instant::now();
    half.send_bytes(&[0, 0, 0, 50, b'{']).await?;
    let frames = half.recv_to_eof().await?;
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(err_code(&frames[0]), Some("timeout"), "{frames:?}");
    // An idle connection after the hello is not closed.
    let (mut idle, _) = Raw::open(&r.socket).await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let v = idle.call(1, "warden.ping", Value::Null).await?;
    assert_eq!(v["result"]["pong"], true, "{v}");
    r.stop().await
}

/// The exact size of the event frame the broker sends for `data` published
/// by `identity` on `topic` (fields in the broker's documented order).
fn event_frame_len(topic: &str, data: &Value, identity: &Value) -> anyhow::Result<usize> {
    let body = format!(
        "{{\"kind\":\"event\",\"topic\":{},\"data\":{},\"publisher\":{{\"uid\":{},\"gid\":{},\"groups\":{},\"pid\":{}}}}}",
        serde_json::to_string(topic)?,
        serde_json::to_string(data)?,
        identity["uid"],
        identity["gid"],
        serde_json::to_string(&identity["groups"])?,
        identity["pid"],
    );
    Ok(4 + body.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_max_queued_bytes_per_uid_are_dropped_and_counted() -> anyhow::Result<()> {
    // A long event queue, so only the bytes limit can drop events.
    const MAX_QUEUED: usize = 65536;
    let r = start(&with_limits(&format!(
        "max_queued_bytes_per_uid = {MAX_QUEUED}\nsubscriber_queue_len = 100000"
    )))
    .await?;
    let (mut stalled, _) = Raw::open(&r.socket).await?;
    let v = stalled
        .request(json!({"kind":"subscribe","id":1,"topic":"test.bytes"}))
        .await?;
    assert_eq!(v["kind"], "reply", "{v}");
    let (mut publisher, welcome) = Raw::open(&r.socket).await?;
    // Events of ~6000 bytes: the uid's budget then always keeps more than
    // 5000 bytes free when an event no longer fits, so the publisher's own
    // (same uid) replies still fit.
    let mut pad_len = 5900;
    let data = |pad_len: usize, n: u64| json!({"n": n, "pad": "e".repeat(pad_len)});
    while event_frame_len("test.bytes", &data(pad_len, 100_000), &welcome["identity"])? < 6000 {
        pad_len += 1;
    }
    const N: u64 = 600; // ~3.6 MB: more than the socket buffer plus the budget
    let mut dropped = 0;
    let mut delivered = 0;
    for n in 1..=N {
        let v = publisher
            .request(json!({"kind":"publish","id":n,"topic":"test.bytes","data":data(pad_len, 100_000 + n)}))
            .await?;
        assert_eq!(v["kind"], "reply", "publish {n}: {v}");
        delivered += v["result"]["delivered"].as_u64().unwrap_or(0);
        dropped += v["result"]["dropped"].as_u64().unwrap_or(0);
    }
    assert_eq!(delivered + dropped, N);
    assert!(
        dropped > 0,
        "the stalled subscriber's uid never reached its budget"
    );
    // The stalled subscriber reads everything and accounts for all N.
    let (mut got, mut missed) = (0, 0);
    while got + missed < N {
        let v = stalled.recv_some().await?;
        match v["kind"].as_str() {
            Some("event") => {
                got += 1;
                missed += v["missed"].as_u64().unwrap_or(0);
            }
            Some("lagged") => missed += v["missed"].as_u64().unwrap_or(0),
            _ => anyhow::bail!("unexpected {v}"),
        }
    }
    assert_eq!((got, missed), (delivered, dropped));
    // Once read, the budget is free again: the next event is delivered.
    let v = publisher
        .request(json!({"kind":"publish","id":N + 1,"topic":"test.bytes","data":1}))
        .await?;
    assert_eq!(v["result"]["delivered"], 1, "{v}");
    r.stop().await
}
