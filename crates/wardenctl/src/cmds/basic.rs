//! `ping`, `whoami`, `version` and `call`: one request, one answer.

use std::time::Instant;

use serde_json::{json, Value};
use warden_client::Client;
use warden_proto::Payload;

use super::{group_name, parse_json, user_name};
use crate::error::Error;
use crate::output::Output;

/// `wardenctl ping`: the round trip of `warden.ping`.
pub async fn ping(client: &Client, out: Output) -> Result<(), Error> {
    let t = Instant::now();
    let r = client.call_json("warden.ping", Value::Null).await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let server = &client.welcome().server;
    let v = json!({ "pong": r["pong"], "rtt_ms": ms, "server": server });
    out.emit(&v, |_| println!("pong from {server} in {ms:.3} ms"));
    Ok(())
}

/// `wardenctl whoami`: the identity the broker attached to this connection.
pub async fn whoami(client: &Client, out: Output) -> Result<(), Error> {
    let r = client.call_json("warden.whoami", Value::Null).await?;
    out.emit(&r, |r| {
        let groups: Vec<String> = r["groups"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).map(group_name).collect())
            .unwrap_or_default();
        println!(
            "uid={} gid={} groups={} pid={}",
            user_name(r["uid"].as_u64().unwrap_or(u64::MAX)),
            group_name(r["gid"].as_u64().unwrap_or(u64::MAX)),
            groups.join(","),
            r["pid"]
        );
    });
    Ok(())
}

/// `wardenctl version`: this client's and the broker's versions.
pub async fn version(client: &Client, out: Output) -> Result<(), Error> {
    let r = client.call_json("warden.version", Value::Null).await?;
    out.emit(&r, |r| {
        println!(
            "client: wardenctl/{}\nserver: {}\nprotocol: {}",
            env!("CARGO_PKG_VERSION"),
            r["server"].as_str().unwrap_or("?"),
            r["protocol"]
        );
    });
    Ok(())
}

/// `wardenctl call METHOD [PARAMS]`.
pub async fn call(
    client: &Client,
    out: Output,
    method: &str,
    params: Option<&str>,
) -> Result<(), Error> {
    let p = match params {
        Some(t) => parse_json("params", t)?,
        None => Payload::null(),
    };
    let r = client.call(method, p).await?;
    let v: Value = r.parse().map_err(|e| Error::Usage(format!("reply: {e}")))?;
    out.emit_pretty(&v);
    Ok(())
}
