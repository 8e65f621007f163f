//! Calls, in-process and without root: routing to a provider in the same
//! process, the call deadline, cancellation, provider loss, and async
//! handlers that run off the read loop.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use warden::{Handler, HandlerContext, HandlerFuture};
use warden_proto::{ErrorCode, Payload, WireError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_never_answers_gives_timeout_at_the_deadline_and_gets_a_cancel(
) -> anyhow::Result<()> {
    const TIMEOUT_MS: u64 = 300;
    let r = start(&format!(
        "[limits]\ncall_timeout_ms = {TIMEOUT_MS}\n{OPEN_RULES}"
    ))
    .await?;
    let (mut prov, _) = Raw::open(&r.socket).await?;
    prov.request(json!({"kind":"provide","id":1,"method":"test.hold"}))
        .await?;
    let (mut caller, welcome) = Raw::open(&r.socket).await?;
    assert_eq!(
        welcome["limits"]["call_timeout_ms"], TIMEOUT_MS,
        "{welcome}"
    );
    let sent = Instant::now();
    caller
        .send(&json!({"kind":"call","id":1,"method":"test.hold","params":{"q":1}}))
        .await?;
    let routed = prov.recv_some().await?;
    assert_eq!(routed["kind"], "call", "{routed}");
    assert_eq!(routed["method"], "test.hold", "{routed}");
    assert_eq!(routed["params"], json!({"q": 1}), "{routed}");
    assert_eq!(routed["caller"]["uid"], my_uid(), "{routed}");
    assert_eq!(routed["caller"]["pid"], std::process::id(), "{routed}");
    let v = caller.recv_some().await?;
    let after = sent.elapsed();
    assert_eq!(
        (v["id"].clone(), err_code(&v)),
        (json!(1), Some("timeout")),
        "{v}"
    );
    assert!(
        after >= Duration::from_millis(TIMEOUT_MS),
        "timeout after {after:?}, before the {TIMEOUT_MS} ms deadline"
    );
    assert!(after < LIVENESS, "timeout only after {after:?}");
    let c = prov.recv_some().await?;
    assert_eq!(
        (c["kind"].clone(), c["id"].clone()),
        (json!("cancel"), routed["id"].clone()),
        "{c}"
    );
    // A late answer is dropped: the caller sees nothing more for id 1, and
    // the next round trip is answered normally.
    prov.send(&json!({"kind":"reply","id":routed["id"],"result":"late"}))
        .await?;
    caller
        .send(&json!({"kind":"call","id":2,"method":"test.hold"}))
        .await?;
    let routed2 = prov.recv_some().await?;
    assert_ne!(routed2["id"], routed["id"]);
    prov.send(&json!({"kind":"reply","id":routed2["id"],"result":"fresh"}))
        .await?;
    let v = caller.recv_some().await?;
    assert_eq!(
        (v["id"].clone(), v["result"].clone()),
        (json!(2), json!("fresh")),
        "{v}"
    );
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_gets_the_brokers_timeout_code() -> anyhow::Result<()> {
    let r = start(&format!("[limits]\ncall_timeout_ms = 300\n{OPEN_RULES}")).await?;
    let prov = client(&r).await?;
    prov.provide("test.hold").await?;
    let caller = client(&r).await?;
    let e = within("the call", caller.call_json("test.hold", Value::Null))
        .await?
        .err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Timeout));
    drop(prov);
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_gives_cancelled_the_provider_a_cancel_and_a_late_reply_is_ignored(
) -> anyhow::Result<()> {
    let r = start(OPEN_RULES).await?;
    let (mut prov, _) = Raw::open(&r.socket).await?;
    prov.request(json!({"kind":"provide","id":1,"method":"test.hold"}))
        .await?;
    let (mut caller, _) = Raw::open(&r.socket).await?;
    // Two calls in flight; cancel the first.
    caller
        .send(&json!({"kind":"call","id":1,"method":"test.hold","params":"first"}))
        .await?;
    caller
        .send(&json!({"kind":"call","id":2,"method":"test.hold","params":"second"}))
        .await?;
    let mut routed = std::collections::HashMap::new();
    for _ in 0..2 {
        let c = prov.recv_some().await?;
        routed.insert(
            c["params"].as_str().unwrap_or("").to_owned(),
            c["id"].clone(),
        );
    }
    let (first, second) = (routed["first"].clone(), routed["second"].clone());
    caller.send(&json!({"kind":"cancel","id":1})).await?;
    let v = caller.recv_some().await?;
    assert_eq!(
        (v["id"].clone(), err_code(&v)),
        (json!(1), Some("cancelled")),
        "{v}"
    );
    let c = prov.recv_some().await?;
    assert_eq!(
        (c["kind"].clone(), c["id"].clone()),
        (json!("cancel"), first.clone()),
        "{c}"
    );
    // The provider answers the cancelled call anyway, then the other one.
    prov.send(&json!({"kind":"reply","id":first,"result":"late"}))
        .await?;
    prov.send(&json!({"kind":"reply","id":second,"result":"two"}))
        .await?;
    let v = caller.recv_some().await?;
    assert_eq!(
        (v["id"].clone(), v["result"].clone()),
        (json!(2), json!("two")),
        "{v}"
    );
    // Cancelling an id that is not in flight (done, or never sent) is
    // silently ignored; nothing more arrives for id 1.
    caller.send(&json!({"kind":"cancel","id":1})).await?;
    caller.send(&json!({"kind":"cancel","id":77})).await?;
    let v = caller.call(3, "warden.ping", Value::Null).await?;
    assert_eq!(v["result"]["pong"], true, "{v}");
    assert!(
        caller
            .recv_within(Duration::from_millis(200))
            .await?
            .is_none(),
        "a frame after the cancelled call was answered"
    );
    // The provider got no cancel for the answered or unknown ids.
    assert!(prov
        .recv_within(Duration::from_millis(200))
        .await?
        .is_none());
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_cancels_a_started_call() -> anyhow::Result<()> {
    let r = start(OPEN_RULES).await?;
    let prov = client(&r).await?;
    prov.provide("test.hold").await?;
    let caller = client(&r).await?;
    let (id, answer) = caller.start_call("test.hold", Payload::null()).await?;
    let incoming = within("the routed call", prov.next_call()).await?;
    assert!(incoming.is_some());
    caller.cancel(id).await?;
    let got = within("the cancelled answer", answer).await?;
    assert_eq!(got.err().and_then(|e| e.code()), Some(ErrorCode::Cancelled));
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_disconnects_mid_call_gives_unavailable_promptly() -> anyhow::Result<()> {
    let r = start(OPEN_RULES).await?;
    let prov = client(&r).await?;
    prov.provide("test.hold").await?;
    let caller = Arc::new(client(&r).await?);
    let c2 = Arc::clone(&caller);
    let pending = tokio::spawn(async move { c2.call_json("test.hold", Value::Null).await });
    let incoming = within("the routed call", prov.next_call()).await?;
    assert!(incoming.is_some());
    drop(prov);
    let answer = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s of the provider leaving"))??;
    match answer {
        Err(warden_client::CallError::Remote(e)) => {
            assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
            assert!(e.message.contains("disconnected"), "{e}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    // The name is released: nobody serves it now, and it can be provided again.
    let e = caller.call_json("test.hold", Value::Null).await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::UnknownMethod));
    let prov2 = client(&r).await?;
    prov2.provide("test.hold").await?;
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_disconnects_mid_call_makes_the_provider_get_a_cancel() -> anyhow::Result<()>
{
    let r = start(OPEN_RULES).await?;
    let (mut prov, _) = Raw::open(&r.socket).await?;
    prov.request(json!({"kind":"provide","id":1,"method":"test.hold"}))
        .await?;
    let (mut caller, _) = Raw::open(&r.socket).await?;
    caller
        .send(&json!({"kind":"call","id":1,"method":"test.hold"}))
        .await?;
    let routed = prov.recv_some().await?;
    drop(caller);
    let c = prov.recv_some().await?;
    assert_eq!(
        (c["kind"].clone(), c["id"].clone()),
        (json!("cancel"), routed["id"].clone()),
        "{c}"
    );
    // The late reply is dropped; the provider's connection is fine.
    prov.send(&json!({"kind":"reply","id":routed["id"],"result":null}))
        .await?;
    let v = prov.call(2, "warden.ping", Value::Null).await?;
    assert_eq!(v["result"]["pong"], true, "{v}");
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providing_is_exclusive_and_reserved_names_are_refused() -> anyhow::Result<()> {
    let r = start(OPEN_RULES).await?;
    let first = client(&r).await?;
    first.provide("test.svc").await?;
    let second = client(&r).await?;
    let e = second.provide("test.svc").await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Unavailable));
    let e = second.provide("warden.echo").await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Denied));
    let e = second.provide("other.svc").await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Denied));
    let e = second.call_json("test.nobody", Value::Null).await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::UnknownMethod));
    // Not allowed to call: denied, whether or not it exists.
    let e = second.call_json("other.svc", Value::Null).await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Denied));
    // A client must not send "caller".
    let (mut raw, _) = Raw::open(&r.socket).await?;
    let v = raw
        .request(json!({"kind":"call","id":1,"method":"warden.ping",
            "caller":{"uid":0,"gid":0,"groups":[0],"pid":1}}))
        .await?;
    assert_eq!(err_code(&v), Some("bad_request"), "{v}");
    let v = raw.call(2, "warden.ping", Value::Null).await?;
    assert_eq!(v["result"]["pong"], true, "{v}");
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprovide_stops_new_calls_and_the_call_in_flight_still_gets_its_answer(
) -> anyhow::Result<()> {
    let r = start(OPEN_RULES).await?;
    let (mut prov, _) = Raw::open(&r.socket).await?;
    prov.request(json!({"kind":"provide","id":1,"method":"test.svc"}))
        .await?;
    let (mut caller, _) = Raw::open(&r.socket).await?;
    caller
        .send(&json!({"kind":"call","id":7,"method":"test.svc","params":1}))
        .await?;
    let routed = prov.recv_some().await?;
    assert_eq!(routed["kind"], "call", "{routed}");
    let v = prov
        .request(json!({"kind":"unprovide","id":2,"method":"test.svc"}))
        .await?;
    assert_eq!(v["result"], json!({"method": "test.svc"}), "{v}");
    // New calls: unknown_method; another connection may provide it now.
    let v = caller.call(8, "test.svc", Value::Null).await?;
    assert_eq!(err_code(&v), Some("unknown_method"), "{v}");
    // The call routed before still takes its answer.
    prov.send(&json!({"kind":"reply","id":routed["id"],"result":"late but valid"}))
        .await?;
    let v = caller.recv_some().await?;
    assert_eq!(
        (v["id"].clone(), v["result"].clone()),
        (json!(7), json!("late but valid")),
        "{v}"
    );
    let other = client(&r).await?;
    other.provide("test.svc").await?;
    // Idempotent, and it never takes another connection's method.
    let v = prov
        .request(json!({"kind":"unprovide","id":3,"method":"test.svc"}))
        .await?;
    assert_eq!(v["kind"], "reply", "{v}");
    let third = client(&r).await?;
    let e = third.provide("test.svc").await.err();
    assert_eq!(
        e.and_then(|e| e.code()),
        Some(ErrorCode::Unavailable),
        "still the other connection's"
    );
    other.unprovide("test.svc").await?;
    let v = caller.call(9, "test.svc", Value::Null).await?;
    assert_eq!(err_code(&v), Some("unknown_method"), "{v}");
    r.stop().await
}

/// Waits for the gate, then answers `{"slow": true}`.
struct Slow(Arc<tokio::sync::Notify>);
impl Handler for Slow {
    fn call(&self, _: HandlerContext, _: Payload) -> HandlerFuture {
        let gate = Arc::clone(&self.0);
        Box::pin(async move {
            gate.notified().await;
            // An await on a timer too, as real handlers do.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Payload::from_value(&json!({"slow": true}))
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_async_handler_does_not_delay_pings_on_the_same_connection() -> anyhow::Result<()> {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = Arc::clone(&gate);
    let r = start_with(OPEN_RULES, move |b| b.handler("test.slow", Slow(g))).await?;
    let (mut c, _) = Raw::open(&r.socket).await?;
    c.send(&json!({"kind":"call","id":1,"method":"test.slow"}))
        .await?;
    c.send(&json!({"kind":"call","id":2,"method":"warden.ping"}))
        .await?;
    // The handler cannot finish before the gate opens, and the gate opens
    // only once the ping is answered: if the handler ran on the read loop,
    // the ping would never be answered.
    let first = c.recv_some().await?;
    assert_eq!(
        (first["id"].clone(), first["result"]["pong"].clone()),
        (json!(2), json!(true)),
        "{first}"
    );
    // More requests on the same connection meanwhile.
    let v = c.call(3, "warden.echo", json!({"x": 3})).await?;
    assert_eq!(v["result"], json!({"x": 3}), "{v}");
    gate.notify_one();
    let v = c.recv_some().await?;
    assert_eq!(
        (v["id"].clone(), v["result"].clone()),
        (json!(1), json!({"slow": true})),
        "{v}"
    );
    r.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_slow_handler_answers_after_a_ping_sent_after_it() -> anyhow::Result<()> {
    struct Sleeps;
    impl Handler for Sleeps {
        fn call(&self, _: HandlerContext, _: Payload) -> HandlerFuture {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                Payload::from_value(&json!("slept"))
                    .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
            })
        }
    }
    let r = start_with(OPEN_RULES, |b| b.handler("test.sleeps", Sleeps)).await?;
    let (mut c, _) = Raw::open(&r.socket).await?;
    c.send(&json!({"kind":"call","id":1,"method":"test.sleeps"}))
        .await?;
    c.send(&json!({"kind":"call","id":2,"method":"warden.ping"}))
        .await?;
    let first = c.recv_some().await?;
    assert_eq!(
        first["id"], 2,
        "the ping waited for the sleeping handler: {first}"
    );
    assert_eq!(first["result"]["pong"], true, "{first}");
    let second = c.recv_some().await?;
    assert_eq!(
        (second["id"].clone(), second["result"].clone()),
        (json!(1), json!("slept")),
        "{second}"
    );
    r.stop().await
}

/// Panics after an await (on a later poll, not on the first).
struct PanicsLater;
impl Handler for PanicsLater {
    fn call(&self, _: HandlerContext, _: Payload) -> HandlerFuture {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("a handler bug after an await")
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_after_an_await_is_internal_and_frees_its_in_flight_slot(
) -> anyhow::Result<()> {
    let r = start_with(
        &format!("[limits]\nmax_in_flight_per_connection = 1\n{OPEN_RULES}"),
        |b| b.handler("test.panics", PanicsLater),
    )
    .await?;
    let c = client(&r).await?;
    for _ in 0..3 {
        let e = within(
            "the panicking call",
            c.call_json("test.panics", Value::Null),
        )
        .await?
        .err();
        assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Internal));
    }
    assert_eq!(c.call_json("warden.ping", Value::Null).await?["pong"], true);
    r.stop().await
}
