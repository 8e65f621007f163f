//! The client library against an in-process broker (and a fake server for
//! what a real broker never sends). Needs no root: everything runs as the
//! current user, in a private temporary directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden::{Broker, Shutdown, ShutdownTrigger};
use warden_client::{
    CallError, Client, ConnectError, ConnectOptions, ErrorCode, Event, IncomingCall, Payload,
    WireError,
};
use warden_policy::{Config, StaticResolver};

/// A liveness bound, never a speed assertion (the machine is shared).
const LIVENESS: Duration = Duration::from_secs(20);

const OPEN_RULES: &str = r#"
[[rule]]
actions = ["call"]
names = ["warden.ping", "warden.echo", "warden.whoami"]
everyone = true

[[rule]]
actions = ["call", "provide", "subscribe", "publish"]
names = ["test.**"]
everyone = true
"#;

fn temp_dir() -> anyhow::Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "warden-client-t-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

struct Running {
    socket: String,
    trigger: ShutdownTrigger,
    _broker: Broker,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.trigger.trigger();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start(limits: &str) -> anyhow::Result<Running> {
    let dir = temp_dir()?;
    let socket = dir.join("b.sock");
    let text = format!("[limits]\n{limits}\n{OPEN_RULES}");
    let config = Config::parse(&text, "t.toml", &StaticResolver::default())?;
    let broker = Broker::builder(&config).build();
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let (trigger, shutdown) = Shutdown::new();
    let serving = broker.clone();
    tokio::spawn(async move { serving.serve(listener, shutdown).await });
    Ok(Running {
        socket: socket.display().to_string(),
        trigger,
        _broker: broker,
        dir,
    })
}

async fn client(r: &Running) -> anyhow::Result<Client> {
    Ok(Client::connect(ConnectOptions::new(r.socket.clone())).await?)
}

async fn within<F: std::future::Future>(what: &str, fut: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(LIVENESS, fut)
        .await
        .with_context(|| format!("{what}: nothing within {LIVENESS:?}"))
}

fn payload(v: serde_json::Value) -> Payload {
    Payload::from_value(&v).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_get_their_own_answer() -> anyhow::Result<()> {
    let r = start("").await?;
    let c = Arc::new(client(&r).await?);
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let c = Arc::clone(&c);
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let n = t * 1000 + i;
                let got: u64 = c.call_as("warden.echo", &n).await?;
                anyhow::ensure!(got == n, "asked {n}, got {got}");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        within("the callers", t).await???;
    }
    // Raw payloads, by value and by reference, and call_json.
    let p = payload(json!({"a": [1, 2]}));
    assert_eq!(c.call("warden.echo", &p).await?, p);
    assert_eq!(c.call("warden.echo", p.clone()).await?, p);
    assert_eq!(c.call_json("warden.echo", json!([3])).await?, json!([3]));
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_calls_on_a_single_thread() -> anyhow::Result<()> {
    let r = start("").await?;
    let c = client(&r).await?;
    let calls = (0..200u64).map(|n| {
        let c = &c;
        async move {
            let got: u64 = c.call_as("warden.echo", &n).await?;
            anyhow::ensure!(got == n, "asked {n}, got {got}");
            anyhow::Ok(())
        }
    });
    let all = join_all(calls.collect());
    for r in within("the calls", all).await? {
        r?;
    }
    Ok(())
}

/// Polls every future until all are done (no `futures` dependency).
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_never_answers_times_out_both_ways() -> anyhow::Result<()> {
    let r = start("call_timeout_ms = 300").await?;
    let prov = client(&r).await?;
    prov.provide("test.never").await?;
    let caller = client(&r).await?;
    // The client's own bound.
    let started = Instant::now();
    let e = caller
        .call_with_timeout(
            "test.never",
            Payload::null(),
            Some(Duration::from_millis(100)),
        )
        .await
        .err();
    assert!(matches!(e, Some(CallError::Timeout { .. })), "{e:?}");
    assert!(started.elapsed() < LIVENESS);
    // The broker's deadline (300 ms), with no client bound.
    let e = within(
        "the broker's deadline",
        caller.call_with_timeout("test.never", Payload::null(), None),
    )
    .await?
    .err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Timeout));
    // The provider saw both calls; the connection still works.
    assert!(within("call 1", prov.next_call()).await?.is_some());
    assert!(within("call 2", prov.next_call()).await?.is_some());
    let _: serde_json::Value = caller.call_as("warden.ping", &()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_typed_decode_rejects_is_an_error() -> anyhow::Result<()> {
    let r = start("").await?;
    let prov = client(&r).await?;
    prov.provide("test.words").await?;
    let serving = tokio::spawn(async move {
        if let Some(c) = prov.next_call().await {
            let _ = prov.reply(c.id, Ok(payload(json!("not a number")))).await;
        }
        prov
    });
    let caller = client(&r).await?;
    let e = within("the answer", caller.call_as::<u64, _>("test.words", &()))
        .await?
        .err();
    assert!(matches!(e, Some(CallError::Parse(_))), "{e:?}");
    let _prov = within("the provider", serving).await??;
    Ok(())
}

/// A fake server speaking the handshake, then answering each call with
/// what `answer` makes of its id (raw frame bodies).
async fn fake_server(
    answer: impl Fn(u64) -> Vec<u8> + Send + 'static,
) -> anyhow::Result<(PathBuf, String)> {
    let dir = temp_dir()?;
    let socket = dir.join("fake.sock");
    let listener = tokio::net::UnixListener::bind(&socket)?;
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut said_welcome = false;
        loop {
            while buf.len() >= 4 {
                let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if buf.len() < 4 + n {
                    break;
                }
                let body: Vec<u8> = buf.drain(..4 + n).skip(4).collect();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let out = if !said_welcome {
                    said_welcome = true;
                    serde_json::to_vec(&json!({"kind":"welcome","version":1,"server":"fake/0",
                        "identity":{"uid":0,"gid":0,"groups":[],"pid":1},
                        "limits":{"max_frame":1048576,"max_in_flight":64,"call_timeout_ms":30000}}))
                    .unwrap_or_default()
                } else if v["kind"] == "call" {
                    answer(v["id"].as_u64().unwrap_or(0))
                } else {
                    continue;
                };
                let mut frame = (out.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&out);
                if s.write_all(&frame).await.is_err() {
                    return;
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    Ok((dir, socket.display().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_reply_envelope_answers_its_call_with_an_error() -> anyhow::Result<()> {
    // Odd ids get an envelope with an unknown field; even ids a good reply.
    let (dir, socket) = fake_server(|id| {
        if id % 2 == 1 {
            format!(r#"{{"kind":"reply","id":{id},"result":1,"bogus":true}}"#).into_bytes()
        } else {
            format!(r#"{{"kind":"reply","id":{id},"result":2}}"#).into_bytes()
        }
    })
    .await?;
    let c = Client::connect(ConnectOptions::new(socket)).await?;
    let mut bad = 0;
    let mut good = 0;
    for _ in 0..4 {
        match within("an answer", c.call("test.x", Payload::null())).await? {
            Err(CallError::BadAnswer { reason }) => {
                assert!(reason.contains("bogus"), "{reason}");
                bad += 1;
            }
            Ok(p) => {
                assert_eq!(p.get(), "2");
                good += 1;
            }
            Err(e) => anyhow::bail!("unexpected {e:?}"),
        }
    }
    assert_eq!((bad, good), (2, 2));
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_framing_fails_every_pending_call() -> anyhow::Result<()> {
    // An empty frame (length 0) cannot be resynchronised from.
    let (dir, socket) = fake_server(|_| Vec::new()).await?;
    let c = Client::connect(ConnectOptions::new(socket)).await?;
    let e = within("the answer", c.call("test.x", Payload::null()))
        .await?
        .err();
    assert!(matches!(e, Some(CallError::Disconnected { .. })), "{e:?}");
    let e = c.call("test.x", Payload::null()).await.err();
    assert!(matches!(e, Some(CallError::Disconnected { .. })), "{e:?}");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_an_in_flight_slot_instead_of_failing() -> anyhow::Result<()> {
    let r = start("max_in_flight_per_connection = 4").await?;
    let prov = Arc::new(client(&r).await?);
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let serving = {
        let (prov, now, peak) = (Arc::clone(&prov), Arc::clone(&now), Arc::clone(&peak));
        prov.provide("test.slow").await?;
        tokio::spawn(async move {
            let (now, peak) = (now, peak);
            prov.serve(&[], 64, move |call: IncomingCall| {
                let (now, peak) = (Arc::clone(&now), Arc::clone(&peak));
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok(call.params)
                }
            })
            .await
        })
    };
    let caller = Arc::new(client(&r).await?);
    assert_eq!(caller.welcome().limits.max_in_flight, 4);
    let mut tasks = Vec::new();
    for n in 0..100u64 {
        let caller = Arc::clone(&caller);
        tasks.push(tokio::spawn(async move {
            caller.call_as::<u64, _>("test.slow", &n).await
        }));
    }
    for (n, t) in tasks.into_iter().enumerate() {
        let got = within("a call", t).await???;
        assert_eq!(got, n as u64);
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&peak),
        "the provider saw {peak} calls at once"
    );
    serving.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_handlers_concurrently() -> anyhow::Result<()> {
    let r = start("").await?;
    let prov = Arc::new(client(&r).await?);
    let ready = {
        let prov = Arc::clone(&prov);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            prov.provide("test.sleepy").await?;
            let _ = tx.send(());
            prov.serve(&["test.sleepy"], 32, |call: IncomingCall| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if call.params.is_null() {
                    return Err(WireError::new(ErrorCode::BadRequest, "null"));
                }
                Ok(call.params)
            })
            .await
        });
        rx
    };
    within("provide", ready).await??;
    let caller = Arc::new(client(&r).await?);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..20u64 {
        let caller = Arc::clone(&caller);
        tasks.push(tokio::spawn(async move {
            caller.call_as::<u64, _>("test.sleepy", &n).await
        }));
    }
    for (n, t) in tasks.into_iter().enumerate() {
        assert_eq!(within("a call", t).await???, n as u64);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "20 calls of 200 ms took {took:?}"
    );
    // A handler's error reaches the caller.
    let e = caller.call("test.sleepy", Payload::null()).await.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::BadRequest));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_while_no_call_is_in_flight() -> anyhow::Result<()> {
    let r = start("").await?;
    let sub = client(&r).await?;
    sub.subscribe("test.news").await?;
    let publisher = client(&r).await?;
    for n in 0..3 {
        publisher.publish("test.news", payload(json!(n))).await?;
    }
    // Nobody on `sub` has a call in flight: its background reader reads.
    for n in 0..3 {
        match within("an event", sub.next_event()).await? {
            Some(Event::Event { topic, data, .. }) => {
                assert_eq!(topic.as_str(), "test.news");
                assert_eq!(data.get(), n.to_string());
            }
            other => anyhow::bail!("expected an event, got {other:?}"),
        }
    }
    // And between calls too.
    let _: serde_json::Value = sub.call_as("warden.ping", &()).await?;
    publisher
        .publish("test.news", payload(json!("late")))
        .await?;
    let e = within("the late event", sub.next_event()).await?;
    assert!(matches!(e, Some(Event::Event { .. })), "{e:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_mid_flight_leaves_the_client_working() -> anyhow::Result<()> {
    let r = start("max_in_flight_per_connection = 2").await?;
    let prov = client(&r).await?;
    prov.provide("test.hold").await?;
    let caller = Arc::new(client(&r).await?);
    // Several callers wait (one of them reading the socket), and are
    // dropped mid-read, repeatedly.
    for _ in 0..5 {
        let mut held = Vec::new();
        for _ in 0..2 {
            let c = Arc::clone(&caller);
            held.push(tokio::spawn(async move {
                c.call("test.hold", Payload::null()).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for h in held {
            h.abort();
        }
        // A future polled once, then dropped.
        let f = caller.call("warden.echo", payload(json!(1)));
        let _ = tokio::time::timeout(Duration::from_micros(1), f).await;
    }
    // Dropped calls were cancelled, their slots come back (2 slots only),
    // and the next calls work.
    for n in 0..20u64 {
        let got: u64 =
            within("a call after the drops", caller.call_as("warden.echo", &n)).await??;
        assert_eq!(got, n);
    }
    // The provider saw the cancels.
    let mut seen = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), prov.next_call()).await
    {
        seen += 1;
    }
    assert!(seen >= 1, "the provider saw {seen} calls");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_call_and_cancel() -> anyhow::Result<()> {
    let r = start("").await?;
    let prov = client(&r).await?;
    prov.provide("test.hold").await?;
    let caller = client(&r).await?;
    let (id, answer) = caller.start_call("test.hold", Payload::null()).await?;
    assert_eq!(answer.id(), id);
    assert!(within("the routed call", prov.next_call()).await?.is_some());
    caller.cancel(id).await?;
    let e = within("the answer", answer).await?.err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Cancelled));
    Ok(())
}

/// Calls started one after another leave in one write when their answers
/// are awaited, but a started call never waits for that: here, on a
/// single-threaded runtime, the provider receives all three while none of
/// their answers has been polled yet.
#[tokio::test(flavor = "current_thread")]
async fn started_calls_go_out_before_their_answers_are_awaited() -> anyhow::Result<()> {
    let r = start("").await?;
    let prov = client(&r).await?;
    prov.provide("test.hold").await?;
    let caller = client(&r).await?;
    // A call first, and time for the client's background tasks to settle:
    // nobody is reading or writing for this client when the calls start.
    within("a ping", caller.call("warden.ping", Payload::null())).await??;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let mut answers = Vec::new();
    for n in 0..3u64 {
        answers.push(caller.start_call("test.hold", payload(json!(n))).await?.1);
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let call = within("a started call", prov.next_call())
            .await?
            .context("the provider's connection closed")?;
        seen.push(call.params.get().to_string());
        prov.reply(call.id, Ok(call.params)).await?;
    }
    assert_eq!(seen, ["0", "1", "2"]);
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(within("an answer", answer).await??.get(), n.to_string());
    }
    Ok(())
}

/// A handler that panics answers its call `internal`; `serve` goes on
/// serving the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_internal_and_serving_goes_on() -> anyhow::Result<()> {
    let r = start("").await?;
    let prov = Arc::new(client(&r).await?);
    prov.provide("test.fragile").await?;
    let serving = {
        let prov = Arc::clone(&prov);
        tokio::spawn(async move {
            prov.serve(&[], 8, |call: IncomingCall| async move {
                if call.params.get() == "\"boom\"" {
                    panic!("the handler gave up");
                }
                Ok(call.params)
            })
            .await
        })
    };
    let caller = client(&r).await?;
    let e = within(
        "the panicking call",
        caller.call("test.fragile", payload(json!("boom"))),
    )
    .await?
    .err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Internal));
    let ok = within(
        "the next call",
        caller.call("test.fragile", payload(json!(7))),
    )
    .await??;
    assert_eq!(ok.get(), "7");
    assert!(!serving.is_finished(), "serve stopped after a panic");
    Ok(())
}

/// A frame the broker sends right behind its welcome, in the same write
/// (a command to a host it just adopted), reaches the client: the
/// handshake reads the welcome and not a byte more.
#[tokio::test(flavor = "current_thread")]
async fn a_frame_right_behind_the_welcome_is_not_lost() -> anyhow::Result<()> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let fake = tokio::spawn(async move {
        theirs.set_nonblocking(true)?;
        let mut s = tokio::net::UnixStream::from_std(theirs)?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut hello).await?;
        let welcome = br#"{"kind":"welcome","version":1,"server":"fake","identity":{"uid":1,"gid":1,"groups":[],"pid":1},"limits":{"max_frame":1048576,"max_in_flight":64,"call_timeout_ms":30000}}"#;
        let call = br#"{"kind":"call","id":5,"method":"warden.host.module","params":{"op":"unload","module":"m"}}"#;
        let mut both = Vec::new();
        for body in [&welcome[..], &call[..]] {
            both.extend_from_slice(&(body.len() as u32).to_be_bytes());
            both.extend_from_slice(body);
        }
        s.write_all(&both).await?;
        // Keep the socket open until the client has read.
        let mut rest = [0u8; 1];
        let _ = s.read(&mut rest).await;
        anyhow::Ok(())
    });
    let client = Client::over_stream(ours, ConnectOptions::new("a socketpair")).await?;
    let call = within("the call behind the welcome", client.next_call()).await?;
    let call = call.ok_or_else(|| anyhow::anyhow!("the connection closed without the call"))?;
    assert_eq!(call.method.as_str(), "warden.host.module");
    drop(client);
    fake.await??;
    Ok(())
}

/// A server whose listen queue is full (it does not accept) fails the
/// connect promptly with an error that says so, instead of leaving the
/// caller waiting until its connect timeout; once the queue has room, the
/// connect goes through to the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listen_queue_fails_the_connect_with_a_clear_error() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let socket = dir.join("full.sock");
    let path = socket.display().to_string();
    let listener = std::os::unix::net::UnixListener::bind(&socket)?;
    // listen(2) again with a backlog of 0 (Linux updates a listening
    // socket's backlog): one connection fits in the queue.
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(0)?)?;
    let mut queued = Vec::new();
    loop {
        match warden_sys::connect_unix_nonblocking(&path) {
            Ok(s) => queued.push(s),
            Err(e) if warden_sys::is_listen_queue_full(&e) => break,
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(queued.len() < 64, "the listen queue never filled");
    }
    anyhow::ensure!(!queued.is_empty(), "the queue was full before any connect");

    // A connect timeout far beyond the liveness bound: an answer within
    // the bound is not the timeout's.
    let opts = ConnectOptions::new(path.clone()).connect_timeout(LIVENESS * 3);
    let e = match within("connecting to a full queue", Client::connect(opts)).await? {
        Err(e) => e,
        Ok(_) => anyhow::bail!("connected to a server that never accepts"),
    };
    assert!(
        matches!(&e, ConnectError::NotAccepting { path: p } if *p == path),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains(&path)
            && text.contains("not accepting connections")
            && text.contains("listen queue is full")
            && text.contains("try again later"),
        "{text}"
    );

    // Room again: the connect reaches the server, which never welcomes.
    for _ in &queued {
        let _ = listener.accept()?;
    }
    let opts = ConnectOptions::new(path.clone()).connect_timeout(Duration::from_millis(300));
    let e = match within("connecting with room in the queue", Client::connect(opts)).await? {
        Err(e) => e,
        Ok(_) => anyhow::bail!("a server that never welcomes let the client in"),
    };
    assert!(matches!(e, ConnectError::Timeout { .. }), "{e:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
