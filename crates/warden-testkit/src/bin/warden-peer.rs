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
//! `warden-peer --socket S [--invite-file F | --invite-env] script` joins
//! (with the invitation in F, or taken out of `$WARDEN_INVITATION` with
//! the client library's helper, first thing), prints `{"welcome": ...}`
//! or `{"refused": {"code", "message"}}`, then runs one command per stdin
//! line and prints one JSON line per command: `call METHOD [JSON]`,
//! `subscribe TOPIC`, `event MS` (the next event within MS ms, or
//! `{"event": null}`). It ends at the end of stdin.
//!
//! `warden-peer --socket S guess N` makes N connections, each with a
//! well-formed invitation of random id and secret, and prints how they
//! were answered: `{"denied": n, "limit_exceeded": n, "other": n}`.
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
    // Before anything else (and before any thread): the client library's
    // helper, as a program embedding it would call it.
    let env_invitation = warden_client::take_invitation_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut socket = None;
    let mut delay_ms = 0u64;
    let mut invite_file = None;
    let mut invite_env = false;
    let mut positional = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => socket = it.next(),
            "--delay-ms" => delay_ms = it.next().context("--delay-ms N")?.parse()?,
            "--invite-file" => invite_file = it.next(),
            "--invite-env" => invite_env = true,
            _ => positional.push(a),
        }
    }
    let socket = socket.context("--socket PATH is required")?;
    match positional.first().map(String::as_str) {
        Some("script") => {
            let invitation = match (invite_file, invite_env) {
                (Some(f), _) => Some(
                    warden_client::Invitation::from_file(Path::new(&f))
                        .map_err(|e| anyhow::anyhow!(e))?,
                ),
                (None, true) => env_invitation?,
                (None, false) => None,
            };
            return script(&socket, invitation);
        }
        Some("guess") => {
            let n = positional.get(1).context("guess N")?.parse()?;
            return guess(&socket, n);
        }
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
        for m in method.split(',') {
            client.provide(m).await?;
        }
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

fn script(socket: &str, invitation: Option<warden_client::Invitation>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut opts = ConnectOptions::new(socket);
        if let Some(i) = invitation {
            opts = opts.invitation(i);
        }
        let say = |v: Value| {
            println!("{v}");
            std::io::stdout().flush()
        };
        let client = match Client::connect(opts).await {
            Ok(c) => c,
            Err(warden_client::ConnectError::Refused(e)) => {
                say(json!({"refused": {"code": e.code.as_str(), "message": e.message}}))?;
                return Ok(());
            }
            Err(e) => {
                say(json!({"refused": {"code": "connect", "message": e.to_string()}}))?;
                return Ok(());
            }
        };
        say(json!({"welcome": serde_json::to_value(client.welcome())?}))?;
        let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                if tx.blocking_send(line).is_err() {
                    return;
                }
            }
        });
        loop {
            let Some(line) = lines.recv().await else {
                return Ok(());
            };
            let mut parts = line.trim().splitn(3, ' ');
            let (cmd, arg, rest) = (parts.next(), parts.next(), parts.next());
            let v = match (cmd, arg) {
                (Some("call"), Some(m)) => {
                    let params: Value = rest.map_or(Ok(Value::Null), serde_json::from_str)?;
                    match client.call_json(m, params).await {
                        Ok(r) => json!({"ok": r}),
                        Err(e) => json!({"error": {"code": e.code().map(|c| c.as_str()), "message": e.to_string()}}),
                    }
                }
                (Some("subscribe"), Some(t)) => match client.subscribe(t).await {
                    Ok(()) => json!({"ok": t}),
                    Err(e) => json!({"error": {"code": e.code().map(|c| c.as_str()), "message": e.to_string()}}),
                },
                (Some("event"), Some(ms)) => {
                    let ms: u64 = ms.parse()?;
                    match tokio::time::timeout(Duration::from_millis(ms), client.next_event()).await {
                        Ok(Some(warden_client::Event::Event { topic, data, .. })) => {
                            json!({"event": {"topic": topic.as_str(), "data": data.parse::<Value>().unwrap_or(Value::Null)}})
                        }
                        Ok(Some(other)) => json!({"event": format!("{other:?}")}),
                        Ok(None) => json!({"closed": true}),
                        Err(_) => json!({"event": null}),
                    }
                }
                _ => bail!("unknown script line {line:?}"),
            };
            say(v)?;
        }
    })
}

fn guess(socket: &str, n: u32) -> anyhow::Result<()> {
    use warden_proto::invitation::{InvitationId, Secret, Token};
    let (mut denied, mut limited, mut other) = (0u32, 0u32, 0u32);
    for i in 0..n {
        // Not random: distinct and well-formed is all a guess needs to be.
        let mut id = [0u8; 5];
        id[..4].copy_from_slice(&i.to_be_bytes());
        let mut secret = [7u8; 32];
        secret[..4].copy_from_slice(&i.to_be_bytes());
        let token = Token::new(InvitationId::from_bytes(id), Secret::from_bytes(secret));
        let mut c = RawConn::connect(Path::new(socket))?;
        c.send_json(
            &json!({"kind": "hello", "version": 1, "invitation": token.expose().as_str()}),
        )?;
        let answer = c.recv()?.unwrap_or(Value::Null);
        match answer["error"]["code"].as_str() {
            Some("denied") => denied += 1,
            Some("limit_exceeded") => limited += 1,
            _ => other += 1,
        }
    }
    println!(
        "{}",
        json!({"denied": denied, "limit_exceeded": limited, "other": other})
    );
    Ok(())
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
