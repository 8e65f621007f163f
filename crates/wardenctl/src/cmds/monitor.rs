//! `wardenctl monitor`: calls, answers and publications, live.

use serde_json::{json, Value};
use warden_client::{Client, Event};
use warden_policy::NamePattern;

use super::{closed, policy::subject, revoked, user_name};
use crate::error::Error;
use crate::output::Output;
use crate::term;

/// What `monitor` shows.
#[derive(Debug)]
pub struct Filter<'a> {
    /// Only methods matching this pattern.
    pub method: Option<&'a str>,
    /// Only publications on topics matching this pattern.
    pub topic: Option<&'a str>,
    /// Only this user's traffic.
    pub user: Option<&'a str>,
    /// Show payloads.
    pub payloads: bool,
    /// Exit after this many events.
    pub count: Option<u64>,
}

/// `wardenctl monitor`: one line (or JSON object) per event.
pub async fn monitor(client: &Client, out: Output, f: &Filter<'_>) -> Result<(), Error> {
    let pattern = |p: Option<&str>| -> Result<Option<NamePattern>, Error> {
        p.map(NamePattern::parse)
            .transpose()
            .map_err(|e| Error::Usage(format!("invalid pattern: {e}")))
    };
    let (method_p, topic_p) = (pattern(f.method)?, pattern(f.topic)?);
    let uid = match f.user {
        Some(u) => Some(subject(u, &[])?.uid),
        None => None,
    };
    let monitor_topic = if f.payloads {
        "warden.monitor.payloads"
    } else {
        "warden.monitor"
    };
    client.subscribe(monitor_topic).await?;
    let mut seen = 0u64;
    while f.count.is_none_or(|c| seen < c) {
        let Some(ev) = client.next_event().await else {
            return Err(closed(client));
        };
        if let Some(e) = revoked(&ev, monitor_topic) {
            return Err(e);
        }
        let (v, missed) = match ev {
            Event::Event {
                topic,
                data,
                missed,
                ..
            } if topic.as_str().starts_with("warden.monitor") => {
                (data.parse::<Value>().unwrap_or(Value::Null), missed)
            }
            Event::Event { .. } => continue,
            Event::Lagged { missed } => (Value::Null, missed),
        };
        if missed > 0 {
            out.emit(&json!({ "lagged": missed }), |_| {
                println!("-- {missed} events missed (this monitor did not keep up) --");
            });
        }
        if v.is_null() {
            continue;
        }
        if uid.is_some_and(|u| v["uid"].as_u64() != Some(u64::from(u))) {
            continue;
        }
        let name_ok = |p: &Option<NamePattern>, key: &str| {
            p.as_ref()
                .is_none_or(|p| v[key].as_str().is_some_and(|n| p.matches(n)))
        };
        let is_publish = v["kind"] == "publish";
        if (is_publish && (method_p.is_some() || !name_ok(&topic_p, "topic")))
            || (!is_publish && (topic_p.is_some() || !name_ok(&method_p, "method")))
        {
            continue;
        }
        seen += 1;
        out.emit(&v, print_monitor_line);
    }
    Ok(())
}

fn print_monitor_line(v: &Value) {
    let time = v["time_ms"].as_u64().unwrap_or(0);
    let (secs, ms) = (time / 1000, time % 1000);
    let clock = format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    );
    let who = format!(
        "{} pid={} {}",
        user_name(v["uid"].as_u64().unwrap_or(u64::MAX)),
        v["pid"],
        v["comm"].as_str().unwrap_or("?")
    );
    let kind = v["kind"].as_str().unwrap_or("?");
    let name = v["method"].as_str().or(v["topic"].as_str()).unwrap_or("?");
    let detail = match kind {
        "call" => String::new(),
        "publish" => format!("delivered={} dropped={}", v["delivered"], v["dropped"]),
        _ => format!(
            "{} {} µs",
            v["code"].as_str().unwrap_or("?"),
            v["latency_us"]
        ),
    };
    let rule = v["rule"].as_str().unwrap_or("");
    let payload = ["params", "result", "data"]
        .iter()
        .find_map(|k| {
            v.get(*k)
                .filter(|p| !p.is_null())
                .map(|p| format!(" {k}={p}"))
        })
        .unwrap_or_default();
    let line = format!("{clock} {who:<32} {kind:<7} {name:<28} {detail} [{rule}]{payload}");
    println!("{}", term::escape(&line));
}
