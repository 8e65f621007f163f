//! `warden-peer`: a test program that acts as a provider.
//!
//! `warden-peer --socket S provide METHOD [--delay-ms N]` registers METHOD,
//! prints `ready` on stdout once the broker accepted it, and answers each
//! call after N ms with `{"params": <params>, "caller": <identity the
//! broker attached>}`. Tests run it as a test user and kill it mid-call.
//!
//! `warden-peer --socket S learn-stall PID` starts a learning session on
//! PID over a raw connection, asks for its events, prints
//! `{"session": N}` and then reads nothing at all (a client that stopped
//! reading) until a line arrives on stdin. Then it reads what the broker
//! queued until the stream has been quiet for a second, calls
//! `learn.stop`, reads up to the end record and prints
//! `{"events": N, "missed": N, "end": {...}, "stop": <the learn.stop
//! answer>}`.
//!
//! `warden-peer --socket S learn-start PID...` opens one raw connection
//! per PID, sends `learn.start` for each on its own connection all at
//! once, prints one line per answer (`{"pid", "ok"}` or `{"pid",
//! "error"}`), and keeps the connections (and so the sessions) open until
//! stdin closes.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::{json, Value};
use warden_client::{Client, ConnectOptions};
use warden_proto::Payload;
use warden_testkit::RawConn;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut socket = None;
    let mut delay_ms = 0u64;
    let mut positional = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => socket = it.next(),
            "--delay-ms" => delay_ms = it.next().context("--delay-ms N")?.parse()?,
            _ => positional.push(a),
        }
    }
    let socket = socket.context("--socket PATH is required")?;
    match positional.first().map(String::as_str) {
        Some("learn-stall") => {
            let pid = positional.get(1).context("learn-stall PID")?.parse()?;
            return learn_stall(&socket, pid);
        }
        Some("learn-start") => {
            let pids = positional[1..]
                .iter()
                .map(|p| p.parse::<u32>())
                .collect::<Result<Vec<_>, _>>()?;
            return learn_start(&socket, &pids);
        }
        _ => {}
    }
    let [mode, method] = positional.as_slice() else {
        bail!("usage: warden-peer --socket S provide METHOD [--delay-ms N]");
    };
    if mode != "provide" {
        bail!("unknown mode {mode}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = std::sync::Arc::new(Client::connect(ConnectOptions::new(socket)).await?);
        client.provide(method).await?;
        println!("ready");
        std::io::stdout().flush()?;
        while let Some(call) = client.next_call().await {
            let client = std::sync::Arc::clone(&client);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let params: serde_json::Value = call.params.parse().unwrap_or_default();
                let caller = call.caller.map(|c| {
                    serde_json::json!({"uid": c.uid, "gid": c.gid, "groups": c.groups, "pid": c.pid})
                });
                let answer = Payload::from_value(&serde_json::json!({
                    "params": params,
                    "caller": caller,
                    "method": call.method.as_str(),
                }))
                .map_err(|e| warden_proto::WireError::new(warden_proto::ErrorCode::Internal, e.to_string()));
                let _ = client.reply(call.id, answer).await;
            });
        }
        anyhow::Ok(())
    })
}

/// A raw connection that has said hello.
fn raw(socket: &str) -> anyhow::Result<RawConn> {
    let mut c = RawConn::connect(Path::new(socket))?;
    c.hello()?;
    Ok(c)
}

/// Reads frames until the reply to `id`, counting learning events.
fn reply_to(c: &mut RawConn, id: u64, events: &mut u64) -> anyhow::Result<Value> {
    loop {
        let f = c.recv_some()?;
        if f["id"] == id {
            return Ok(f);
        }
        count_events(&f, events);
    }
}

fn count_events(f: &Value, events: &mut u64) {
    if let Some(a) = f["data"]["events"].as_array() {
        *events += a.len() as u64;
    }
}

/// True if a frame arrives within `ms`.
fn readable(c: &RawConn, ms: u16) -> anyhow::Result<bool> {
    let mut fds = [PollFd::new(c.stream.as_fd(), PollFlags::POLLIN)];
    Ok(poll(&mut fds, PollTimeout::from(ms))? > 0)
}

fn learn_stall(socket: &str, pid: u32) -> anyhow::Result<()> {
    let mut c = raw(socket)?;
    let mut events = 0u64;
    let mut missed = 0u64;
    c.send_json(
        &json!({"kind": "call", "id": 1, "method": "learn.start", "params": {"pid": pid}}),
    )?;
    let started = reply_to(&mut c, 1, &mut events)?;
    let session = started["result"]["session"]
        .as_u64()
        .with_context(|| format!("learn.start failed: {started}"))?;
    c.send_json(
        &json!({"kind": "call", "id": 2, "method": "learn.events", "params": {"session": session}}),
    )?;
    let answer = reply_to(&mut c, 2, &mut events)?;
    anyhow::ensure!(
        answer["result"]["session"] == session,
        "learn.events failed: {answer}"
    );
    println!("{}", json!({ "session": session }));
    std::io::stdout().flush()?;
    // Stop reading: wait for the test to say go on.
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    // Read what was queued until the stream is quiet.
    let mut end = Value::Null;
    while readable(&c, 1000)? {
        let f = c.recv_some()?;
        missed += f["missed"].as_u64().unwrap_or(0);
        count_events(&f, &mut events);
        if f["data"].get("end").is_some() {
            end = f["data"]["end"].clone();
        }
    }
    c.send_json(
        &json!({"kind": "call", "id": 3, "method": "learn.stop", "params": {"session": session}}),
    )?;
    let mut stop = Value::Null;
    while stop.is_null() || end.is_null() {
        let f = c.recv_some()?;
        missed += f["missed"].as_u64().unwrap_or(0);
        count_events(&f, &mut events);
        if f["id"] == 3 {
            stop = f;
        } else if f["data"].get("end").is_some() {
            end = f["data"]["end"].clone();
        }
    }
    println!(
        "{}",
        json!({ "events": events, "missed": missed, "end": end, "stop": stop })
    );
    Ok(())
}

fn learn_start(socket: &str, pids: &[u32]) -> anyhow::Result<()> {
    let mut conns = pids
        .iter()
        .map(|_| raw(socket))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Every call is on the wire before any answer is read.
    for (c, pid) in conns.iter_mut().zip(pids) {
        c.send_json(
            &json!({"kind": "call", "id": 1, "method": "learn.start", "params": {"pid": pid}}),
        )?;
    }
    for (c, pid) in conns.iter_mut().zip(pids) {
        let f = reply_to(c, 1, &mut 0)?;
        let line = match f.get("result") {
            Some(r) => json!({ "pid": pid, "ok": r }),
            None => json!({ "pid": pid, "error": f["error"] }),
        };
        println!("{line}");
    }
    std::io::stdout().flush()?;
    let mut rest = String::new();
    std::io::stdin().read_to_string(&mut rest)?;
    drop(conns);
    Ok(())
}
