//! The in-process call API (`BrokerHandle::call`): feature code in the
//! broker calls a method a connection provides, acting for a caller, with
//! a deadline and cancel-on-drop. The provider is a real client
//! connection over the broker's socket. No root needed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use warden::{CallOptions, Handler, HandlerContext, HandlerFuture};
use warden_proto::{ErrorCode, Identity, Payload, WireError};

/// A handler that relays its call to `test.svc` through the in-process
/// API, acting for its caller, and answers with what came back.
struct Relay {
    timeout: Duration,
}

impl Handler for Relay {
    fn call(&self, ctx: HandlerContext, params: Payload) -> HandlerFuture {
        let timeout = self.timeout;
        Box::pin(async move {
            let opts = CallOptions::acting_for(ctx.caller.clone()).timeout(timeout);
            ctx.broker.call("test.svc", params, opts).await
        })
    }
}

/// A handler that gives up on its in-process call after 200 ms by
/// dropping the future (the call must be withdrawn).
struct Impatient;

impl Handler for Impatient {
    fn call(&self, ctx: HandlerContext, params: Payload) -> HandlerFuture {
        Box::pin(async move {
            let opts = CallOptions::acting_for(ctx.caller.clone());
            let call = ctx.broker.call("test.svc", params, opts);
            match tokio::time::timeout(Duration::from_millis(200), call).await {
                Ok(answer) => answer,
                Err(_) => Err(WireError::new(ErrorCode::Timeout, "gave up")),
            }
        })
    }
}

async fn broker(timeout: Duration) -> anyhow::Result<Running> {
    start_with(OPEN_RULES, move |b| {
        b.handler("test.relay", Relay { timeout })?
            .handler("test.impatient", Impatient)
    })
    .await
}

fn identity(v: &Option<Identity>) -> (u32, u32) {
    v.as_ref().map_or((u32::MAX, 0), |i| (i.uid, i.pid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_call_reaches_the_provider_as_the_caller_and_gets_its_answer(
) -> anyhow::Result<()> {
    let r = broker(Duration::from_secs(10)).await?;
    let provider = client(&r).await?;
    provider.provide("test.svc").await?;
    let caller = client(&r).await?;
    let serve = tokio::spawn(async move {
        let call = provider.next_call().await;
        let Some(call) = call else {
            return Err(anyhow::anyhow!("the provider got no call"));
        };
        let params: Value = call.params.parse()?;
        let who = identity(&call.caller);
        let answer = Payload::from_value(&json!({"echo": params, "uid": who.0, "pid": who.1}))?;
        provider.reply(call.id, Ok(answer)).await?;
        Ok::<_, anyhow::Error>(provider)
    });
    let answer = within(
        "the relayed answer",
        caller.call_json("test.relay", json!({"n": 7})),
    )
    .await??;
    assert_eq!(answer["echo"], json!({"n": 7}));
    assert_eq!(
        answer["uid"],
        my_uid(),
        "the provider sees the caller it acts for"
    );
    assert_eq!(answer["pid"], std::process::id());
    let _provider = within("the provider task", serve).await???;

    // Also straight from a broker handle, acting for an identity of the
    // feature code's choosing.
    let handle = r.broker.handle();
    assert!(handle.is_provided("test.svc"));
    let unknown = handle
        .call(
            "test.nobody",
            Payload::default(),
            CallOptions::acting_for(Identity {
                uid: 4242,
                gid: 4242,
                groups: vec![],
                pid: 1,
                host: None,
                session: None,
            }),
        )
        .await;
    assert_eq!(
        unknown.err().map(|e| e.code),
        Some(ErrorCode::UnknownMethod)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_call_past_its_deadline_gets_timeout_and_the_provider_a_cancel(
) -> anyhow::Result<()> {
    let r = broker(Duration::from_millis(300)).await?;
    let (mut provider, _) = common::Raw::open(&r.socket).await?;
    provider
        .send(&json!({"kind": "provide", "id": 1, "method": "test.svc"}))
        .await?;
    let provided = provider.recv_some().await?;
    assert_eq!(provided["kind"], "reply");
    let caller = client(&r).await?;
    let started = Instant::now();
    let call = tokio::spawn(async move { caller.call_json("test.relay", json!(1)).await });
    let routed = within("the routed call", provider.recv_some()).await??;
    assert_eq!(routed["kind"], "call");
    assert_eq!(routed["method"], "test.svc");
    assert_eq!(routed["caller"]["uid"], my_uid());
    // The provider never answers.
    let answer = within("the timeout", call).await??;
    let elapsed = started.elapsed();
    assert_eq!(
        answer.as_ref().err().and_then(code_of),
        Some(ErrorCode::Timeout),
        "{answer:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(300),
        "timed out after {elapsed:?}"
    );
    let cancel = within("the cancel", provider.recv_some()).await??;
    assert_eq!(cancel, json!({"kind": "cancel", "id": routed["id"]}));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_call_whose_provider_goes_away_gets_unavailable() -> anyhow::Result<()> {
    let r = broker(Duration::from_secs(30)).await?;
    let (mut provider, _) = common::Raw::open(&r.socket).await?;
    provider
        .send(&json!({"kind": "provide", "id": 1, "method": "test.svc"}))
        .await?;
    provider.recv_some().await?;
    let caller = client(&r).await?;
    let call = tokio::spawn(async move { caller.call_json("test.relay", json!(1)).await });
    let routed = within("the routed call", provider.recv_some()).await??;
    assert_eq!(routed["kind"], "call");
    let started = Instant::now();
    drop(provider);
    let answer = within("the answer after the provider left", call).await??;
    let e = answer.err();
    assert_eq!(
        e.as_ref().and_then(code_of),
        Some(ErrorCode::Unavailable),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "unavailable came only after {:?}",
        started.elapsed()
    );
    assert!(!r.broker.handle().is_provided("test.svc"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_in_process_call_withdraws_it_with_a_cancel() -> anyhow::Result<()> {
    let r = broker(Duration::from_secs(30)).await?;
    let (mut provider, _) = common::Raw::open(&r.socket).await?;
    provider
        .send(&json!({"kind": "provide", "id": 1, "method": "test.svc"}))
        .await?;
    provider.recv_some().await?;
    let caller = client(&r).await?;
    let call = tokio::spawn(async move { caller.call_json("test.impatient", json!(1)).await });
    let routed = within("the routed call", provider.recv_some()).await??;
    let cancel = within("the cancel after the drop", provider.recv_some()).await??;
    assert_eq!(cancel, json!({"kind": "cancel", "id": routed["id"]}));
    let answer = within("the handler's own answer", call).await??;
    assert_eq!(
        answer.err().as_ref().and_then(code_of),
        Some(ErrorCode::Timeout)
    );
    // A late answer from the provider is ignored; the broker still serves.
    provider
        .send(&json!({"kind": "reply", "id": routed["id"], "result": "late"}))
        .await?;
    let c2 = client(&r).await?;
    let pong = within("a ping", c2.call_json("warden.ping", Value::Null)).await??;
    assert_eq!(pong["pong"], true);
    Ok(())
}
