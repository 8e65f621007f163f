//! `wardenctl list`: what this caller may call (`warden.introspect`).

use serde_json::Value;
use warden_client::Client;

use crate::error::Error;
use crate::output::{table, Align, Output};
use crate::term;

fn served_by(v: &Value) -> String {
    match v["kind"].as_str() {
        Some("host") => format!("host {}", v["host"].as_str().unwrap_or("?")),
        Some("provider") => format!("uid {} pid {}", v["uid"], v["pid"]),
        Some(k) => k.to_owned(),
        None => "?".to_owned(),
    }
}

/// `wardenctl list`: one line per method: name, who serves it, what it
/// does.
pub async fn list(client: &Client, out: Output) -> Result<(), Error> {
    let r = client.call_json("warden.introspect", Value::Null).await?;
    out.emit(&r, |r| {
        let rows: Vec<Vec<String>> = r["methods"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        vec![
                            term::escape(m["name"].as_str().unwrap_or("?")).into_owned(),
                            term::escape(&served_by(&m["served_by"])).into_owned(),
                            term::escape(m["description"].as_str().unwrap_or("-")).into_owned(),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        print!(
            "{}",
            table(
                &[
                    ("METHOD", Align::Left),
                    ("SERVED BY", Align::Left),
                    ("DESCRIPTION", Align::Left),
                ],
                &rows,
            )
        );
        if r["truncated"] == true {
            println!("(truncated: more methods than the broker lists at once)");
        }
    });
    Ok(())
}
