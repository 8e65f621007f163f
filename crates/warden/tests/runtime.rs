//! The broker runtime in-process, over real Unix sockets, with the real
//! client library. These need no root: everything runs as the current
//! user in a private directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};
use warden::{Broker, Handler, HandlerContext, HandlerFuture, Shutdown, ShutdownTrigger};
use warden_client::{Client, ConnectOptions};
use warden_policy::{Config, StaticResolver};
use warden_proto::{ErrorCode, Payload, WireError};

struct Panics;
impl Handler for Panics {
    fn call(&self, _: HandlerContext, _: Payload) -> HandlerFuture {
        Box::pin(async { panic!("a handler bug") })
    }
}

struct WhoAsks;
impl Handler for WhoAsks {
    fn call(&self, ctx: HandlerContext, _: Payload) -> HandlerFuture {
        Box::pin(async move {
            Payload::from_value(&json!({"uid": ctx.caller.uid, "admin": ctx.is_admin}))
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
        })
    }
}

const CONFIG: &str = r#"
[[rule]]
actions = ["call", "provide", "subscribe", "publish"]
names = ["warden.ping", "warden.echo", "warden.whoami", "test.**"]
everyone = true
"#;

struct Running {
    socket: PathBuf,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), warden::ServeError>>,
    _dir: PathBuf,
}

async fn start() -> anyhow::Result<Running> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "warden-rt-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("b.sock");
    let config = Config::parse(CONFIG, "t.toml", &StaticResolver::default())?;
    let broker = Broker::builder(&config)
        .handler("test.panics", Panics)?
        .handler("test.whoasks", WhoAsks)?
        .build();
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(async move { broker.serve(listener, shutdown).await });
    Ok(Running {
        socket,
        trigger,
        task,
        _dir: dir,
    })
}

async fn client(r: &Running) -> anyhow::Result<Client> {
    Ok(Client::connect(ConnectOptions::new(r.socket.display().to_string())).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_is_contained_to_its_call() -> anyhow::Result<()> {
    let r = start().await?;
    let c = client(&r).await?;
    let e = c.call_json("test.panics", Value::Null).await;
    let code = e.err().and_then(|e| e.code());
    assert_eq!(code, Some(ErrorCode::Internal));
    let pong = c.call_json("warden.ping", Value::Null).await?;
    assert_eq!(pong["pong"], true);
    let who = c.call_json("test.whoasks", Value::Null).await?;
    assert_eq!(who["uid"], c.welcome().identity.uid);
    r.trigger.trigger();
    r.task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplex_and_pubsub_through_the_client_library() -> anyhow::Result<()> {
    let r = start().await?;
    let provider = std::sync::Arc::new(client(&r).await?);
    provider.provide("test.add").await?;
    let p2 = std::sync::Arc::clone(&provider);
    let serving = tokio::spawn(async move {
        while let Some(call) = p2.next_call().await {
            let v: Value = call.params.parse().unwrap_or_default();
            let sum = v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0);
            let caller_pid = call.caller.map(|c| c.pid).unwrap_or(0);
            let _ = p2
                .reply(
                    call.id,
                    Payload::from_value(&json!({"sum": sum, "caller_pid": caller_pid}))
                        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string())),
                )
                .await;
        }
    });
    let caller = client(&r).await?;
    let r1 = caller
        .call_json("test.add", json!({"a": 2, "b": 40}))
        .await?;
    assert_eq!(r1["sum"], 42);
    assert_eq!(r1["caller_pid"], std::process::id());

    caller.subscribe("test.news").await?;
    let pubr = provider
        .publish("test.news", Payload::from_value(&json!({"n": 1}))?)
        .await?;
    assert_eq!(pubr["delivered"], 1);
    match caller.next_event().await {
        Some(warden_client::Event::Event {
            topic,
            data,
            missed,
            publisher,
        }) => {
            assert_eq!(topic.as_str(), "test.news");
            assert_eq!(data.parse::<Value>()?, json!({"n": 1}));
            assert_eq!(missed, 0);
            assert_eq!(publisher.map(|p| p.pid), Some(std::process::id()));
        }
        other => panic!("unexpected {other:?}"),
    }
    // Not allowed by the policy.
    let denied = caller
        .subscribe("other.news")
        .await
        .err()
        .and_then(|e| e.code());
    assert_eq!(denied, Some(ErrorCode::Denied));
    let reserved = caller
        .provide("warden.ping")
        .await
        .err()
        .and_then(|e| e.code());
    assert_eq!(reserved, Some(ErrorCode::Denied));
    drop(caller);
    r.trigger.trigger();
    r.task.await??;
    serving.abort();
    Ok(())
}

#[test]
fn reserved_handler_names_are_refused() -> anyhow::Result<()> {
    let config = Config::parse(CONFIG, "t.toml", &StaticResolver::default())?;
    assert!(Broker::builder(&config)
        .handler("warden.evil", Panics)
        .is_err());
    assert!(Broker::builder(&config)
        .handler("bad..name", Panics)
        .is_err());
    Ok(())
}
