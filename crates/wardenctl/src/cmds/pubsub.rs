//! `subscribe` and `publish`.

use serde_json::{json, Value};
use warden_client::{Client, Event};

use super::{closed, parse_json, revoked};
use crate::error::Error;
use crate::output::{json_line, Output};

/// `wardenctl subscribe TOPIC`: one JSON line per event (with or without
/// `--json`), until `--count` events or the connection ends.
pub async fn subscribe(client: &Client, topic: &str, count: Option<u64>) -> Result<(), Error> {
    client.subscribe(topic).await?;
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let Some(ev) = client.next_event().await else {
            return Err(closed(client));
        };
        if let Some(f) = revoked(&ev, topic) {
            return Err(f);
        }
        let line = match ev {
            Event::Event {
                topic,
                data,
                missed,
                publisher,
            } => {
                seen += 1;
                let data: Value = data.parse().unwrap_or(Value::Null);
                json!({
                    "topic": topic.as_str(),
                    "data": data,
                    "missed": missed,
                    "publisher": publisher.map(|p| json!({"uid": p.uid, "gid": p.gid, "pid": p.pid})),
                })
            }
            Event::Lagged { missed } => json!({ "lagged": missed }),
        };
        json_line(&line);
    }
    Ok(())
}

/// `wardenctl publish TOPIC DATA`.
pub async fn publish(client: &Client, out: Output, topic: &str, data: &str) -> Result<(), Error> {
    let d = parse_json("data", data)?;
    let r = client.publish(topic, d).await?;
    out.emit(&r, |r| {
        println!(
            "delivered to {} subscriber(s), dropped for {}",
            r["delivered"], r["dropped"]
        );
    });
    Ok(())
}
