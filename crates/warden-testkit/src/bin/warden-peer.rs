//! `warden-peer`: a test program that acts as a provider.
//!
//! `warden-peer --socket S provide METHOD [--delay-ms N]` registers METHOD,
//! prints `ready` on stdout once the broker accepted it, and answers each
//! call after N ms with `{"params": <params>, "caller": <identity the
//! broker attached>}`. Tests run it as a test user and kill it mid-call.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use warden_client::{Client, ConnectOptions};
use warden_proto::Payload;

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
