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
    // Whole microseconds: a float of milliseconds carried noise digits.
    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
    let server = &client.welcome().server;
    let v = json!({ "pong": r["pong"], "rtt_us": us, "server": server });
    out.emit(&v, |_| {
        println!("pong from {server} in {}.{:03} ms", us / 1000, us % 1000);
    });
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

/// The params of `wardenctl call`: JSON on the command line, `-` for
/// standard input, `@FILE` for a file, or `null` without one. Read before
/// connecting, so a bad file is a usage error whether or not a broker
/// answers.
///
/// # Errors
/// [`Error::Usage`] (exit 2) for an unreadable or oversized source or
/// bad JSON, naming the source.
pub fn read_params(params: Option<&str>) -> Result<Payload, Error> {
    let Some(arg) = params else {
        return Ok(Payload::null());
    };
    let (source, text) = if arg == "-" {
        let what = "params from standard input";
        (what.to_owned(), read_capped(std::io::stdin().lock(), what)?)
    } else if let Some(path) = arg.strip_prefix('@') {
        let what = format!("params file {path}");
        let file = std::fs::File::open(path)
            .map_err(|e| Error::Usage(format!("cannot read the {what}: {e}")))?;
        (what.clone(), read_capped(file, &what)?)
    } else {
        return parse_json("params", arg);
    };
    parse_json(&source, &text)
}

/// All of `r` as UTF-8 text, refusing more than a frame can ever carry.
fn read_capped(r: impl std::io::Read, what: &str) -> Result<String, Error> {
    use std::io::Read as _;
    let max = warden_proto::ABSOLUTE_MAX_FRAME_LEN;
    let mut text = String::new();
    r.take(max as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::Usage(format!("cannot read the {what}: {e}")))?;
    if text.len() > max {
        return Err(Error::Usage(format!(
            "the {what} is too large (more than {max} bytes, the most a frame carries)"
        )));
    }
    Ok(text)
}

/// `wardenctl call METHOD [PARAMS]`, with the params [`read_params`]
/// read.
pub async fn call(
    client: &Client,
    out: Output,
    method: &str,
    params: Payload,
    target: Option<warden_client::CallTarget>,
) -> Result<(), Error> {
    let r = match &target {
        None => client.call(method, params).await?,
        Some(t) => client.call_targeted(method, params, t).await?,
    };
    let v: Value = r.parse().map_err(|e| Error::Usage(format!("reply: {e}")))?;
    out.emit_pretty(&v);
    Ok(())
}
