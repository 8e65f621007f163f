//! Shutdown and drain without root: calls in flight at a provider (or in
//! a handler) finish within the drain timeout or get `shutting_down`; new
//! calls and connections are refused; `serve()` returns Ok.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn drain(ms: u64) -> String {
    format!("[limits]\ndrain_timeout_ms = {ms}\n{OPEN_RULES}")
}

/// Waits until the broker answers a new call on `probe` with
/// `shutting_down` (it is draining). Returns that answer.
async fn wait_draining(probe: &mut Raw) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + LIVENESS;
    let mut id = 1000;
    loop {
        id += 1;
        let v = probe.call(id, "warden.ping", Value::Null).await?;
        if err_code(&v) == Some("shutting_down") {
            return Ok(v);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never drained: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_answered_within_the_drain_timeout_reaches_its_caller() -> anyhow::Result<()> {
    let mut r = start(&drain(60_000)).await?;
    let (mut prov, _) = Raw::open(&r.socket).await?;
    prov.request(json!({"kind":"provide","id":1,"method":"test.hold"}))
        .await?;
    let (mut caller, _) = Raw::open(&r.socket).await?;
    caller
        .send(&json!({"kind":"call","id":1,"method":"test.hold"}))
        .await?;
    let routed = prov.recv_some().await?;
    let (mut probe, _) = Raw::open(&r.socket).await?;
    r.trigger.trigger();
    // New calls are refused with shutting_down, on a connection that
    // stays open meanwhile.
    let v = wait_draining(&mut probe).await?;
    assert!(v["id"].is_u64(), "{v}");
    // New connections are refused.
    let refused = tokio::time::timeout(LIVENESS, client(&r)).await?;
    assert!(
        refused.is_err(),
        "a new connection was accepted while draining"
    );
    // The provider answers in time: the caller gets the answer.
    prov.send(&json!({"kind":"reply","id":routed["id"],"result":"finished"}))
        .await?;
    let v = caller.recv_some().await?;
    assert_eq!(
        (v["id"].clone(), v["result"].clone()),
        (json!(1), json!("finished")),
        "{v}"
    );
    // Then everyone is told, and serve() returns Ok without waiting for the
    // 60 s drain timeout.
    let task = r.task.take_handle();
    let served = within("serve() after the drain", task).await??;
    assert!(served.is_ok(), "{served:?}");
    for c in [&mut caller, &mut prov, &mut probe] {
        let frames = c.recv_to_eof().await?;
        let last = frames.last().cloned().unwrap_or(Value::Null);
        assert_eq!(err_code(&last), Some("shutting_down"), "{frames:?}");
        assert!(last.get("id").is_none(), "{last}");
    }
    assert_eq!(r.broker.connection_count(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_not_answered_within_the_drain_timeout_gets_shutting_down() -> anyhow::Result<()> {
    const DRAIN_MS: u64 = 300;
    let mut r = start(&drain(DRAIN_MS)).await?;
    let prov = client(&r).await?;
    prov.provide("test.hold").await?;
    let caller = Arc::new(client(&r).await?);
    let c2 = Arc::clone(&caller);
    let pending = tokio::spawn(async move { c2.call_json("test.hold", Value::Null).await });
    assert!(within("the routed call", prov.next_call()).await?.is_some());
    let triggered = Instant::now();
    r.trigger.trigger();
    let answer = within("the drained call", pending).await??;
    let after = triggered.elapsed();
    match answer {
        Err(warden_client::CallError::Remote(e)) => {
            assert_eq!(e.code, warden_proto::ErrorCode::ShuttingDown, "{e}")
        }
        other => panic!("expected shutting_down, got {other:?}"),
    }
    assert!(
        after >= Duration::from_millis(DRAIN_MS),
        "answered after {after:?}, before the {DRAIN_MS} ms drain timeout"
    );
    let task = r.task.take_handle();
    let served = within("serve()", task).await??;
    assert!(served.is_ok(), "{served:?}");
    // The provider's connection was closed with shutting_down.
    assert!(within("the provider's close", prov.next_call())
        .await?
        .is_none());
    let last = prov.last_error().map(|e| e.code);
    assert_eq!(last, Some(warden_proto::ErrorCode::ShuttingDown));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_calls_are_drained_too() -> anyhow::Result<()> {
    let finishing = Gated::new();
    let stuck = Gated::new();
    let (f, s) = (finishing.clone(), stuck.clone());
    let mut r = start_with(&drain(1_000), move |b| {
        b.handler("test.finishing", f)?.handler("test.stuck", s)
    })
    .await?;
    let (mut c, _) = Raw::open(&r.socket).await?;
    c.send(&json!({"kind":"call","id":1,"method":"test.finishing"}))
        .await?;
    c.send(&json!({"kind":"call","id":2,"method":"test.stuck"}))
        .await?;
    let (mut probe, _) = Raw::open(&r.socket).await?;
    r.trigger.trigger();
    wait_draining(&mut probe).await?;
    finishing.open(1);
    let mut answers = std::collections::BTreeMap::new();
    // The broker's goodbye (no id) may come between them.
    while answers.len() < 2 {
        let v = c.recv_some().await?;
        if let Some(id) = v["id"].as_u64() {
            answers.insert(id, v);
        }
    }
    assert_eq!(answers[&1]["result"], json!({"done": true}), "{answers:?}");
    assert_eq!(err_code(&answers[&2]), Some("shutting_down"), "{answers:?}");
    let task = r.task.take_handle();
    let served = within("serve()", task).await??;
    assert!(served.is_ok(), "{served:?}");
    Ok(())
}

/// Taking the serve task out of a `Running` that is then dropped.
trait TakeHandle {
    fn take_handle(&mut self) -> tokio::task::JoinHandle<Result<(), warden::ServeError>>;
}

impl TakeHandle for Option<tokio::task::JoinHandle<Result<(), warden::ServeError>>> {
    fn take_handle(&mut self) -> tokio::task::JoinHandle<Result<(), warden::ServeError>> {
        self.take()
            .unwrap_or_else(|| tokio::spawn(async { Ok(()) }))
    }
}
