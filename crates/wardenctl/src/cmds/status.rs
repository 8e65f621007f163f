//! `wardenctl status`: the broker's state, connections and per-method
//! counts.

use serde_json::Value;
use warden_client::Client;

use super::user_name;
use crate::error::Error;
use crate::output::{cell, table, Align, Output};
use crate::term;

/// `wardenctl status`.
pub async fn status(client: &Client, out: Output) -> Result<(), Error> {
    let r = client.call_json("warden.status", Value::Null).await?;
    out.emit(&r, print_status);
    Ok(())
}

/// Says so when the broker cut its answer to fit in one frame.
pub fn print_truncated(r: &Value) {
    if r["truncated"] == true {
        println!(
            "\nnote: the broker cut this answer to fit in one frame ({} connections, {} methods in all)",
            r["connections"], r["method_count"]
        );
    }
}

fn print_status(r: &Value) {
    print!("{}", status_text(r));
    print_truncated(r);
}

/// The human form of a `warden.status` answer: the summary, then the
/// method table and the connection table, each column as wide as its
/// widest cell.
fn status_text(r: &Value) -> String {
    let mut out = String::new();
    let uptime = r["uptime_ms"].as_u64().unwrap_or(0);
    out.push_str(&format!("server:      {}\n", cell(&r["server"])));
    out.push_str(&format!(
        "uptime:      {}.{} s\n",
        uptime / 1000,
        uptime % 1000 / 100
    ));
    out.push_str(&format!("connections: {}\n", cell(&r["connections"])));
    out.push_str(&format!("draining:    {}\n", cell(&r["draining"])));
    if let Some(p) = r["providers"].as_array() {
        let names: Vec<String> = p.iter().map(cell).collect();
        out.push_str(&format!(
            "providers:   {}\n",
            if names.is_empty() {
                "-".into()
            } else {
                names.join(", ")
            }
        ));
    }
    out.push_str(&format!("topics:      {}\n", cell(&r["topics"])));
    if let Some(m) = r["methods"].as_object() {
        let mut rows: Vec<Vec<String>> = m
            .iter()
            .map(|(name, s)| {
                vec![
                    term::escape(name).into_owned(),
                    cell(&s["calls"]),
                    cell(&s["errors"]),
                ]
            })
            .collect();
        rows.push(vec![
            "(unresolved names)".into(),
            cell(&r["unresolved"]["calls"]),
            cell(&r["unresolved"]["errors"]),
        ]);
        out.push('\n');
        out.push_str(&table(
            &[
                ("METHOD", Align::Left),
                ("CALLS", Align::Right),
                ("ERRORS", Align::Right),
            ],
            &rows,
        ));
    }
    if let Some(list) = r["connection_list"].as_array() {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|c| {
                vec![
                    cell(&c["id"]),
                    user_name(c["uid"].as_u64().unwrap_or(u64::MAX)),
                    cell(&c["pid"]),
                    cell(&c["comm"]),
                    since(&c["connected_for_ms"]),
                    cell(&c["calls"]),
                    cell(&c["in_flight"]),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[
                ("ID", Align::Right),
                ("USER", Align::Left),
                ("PID", Align::Right),
                ("COMM", Align::Left),
                ("SINCE", Align::Right),
                ("CALLS", Align::Right),
                ("IN-FLIGHT", Align::Right),
            ],
            &rows,
        ));
    }
    out
}

/// How long a connection has been open, in whole seconds (`-` from a
/// broker that does not say).
pub fn since(ms: &Value) -> String {
    ms.as_u64()
        .map_or_else(|| "-".into(), |ms| format!("{}s", ms / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_columns_line_up_with_their_headers() {
        let r = serde_json::json!({
            "server": "wardend/0", "uptime_ms": 1234, "connections": 2,
            "draining": false, "providers": [], "topics": 0,
            "methods": {"warden.a.very.long.method.name.indeed.yes": {"calls": 12345, "errors": 0}},
            "unresolved": {"calls": 1, "errors": 1},
            "connection_list": [
                {"id": 1, "uid": 4_000_000_000u64, "pid": 1, "comm": "x", "connected_for_ms": 5000, "calls": 1, "in_flight": 0},
                {"id": 123456, "uid": 4_000_000_001u64, "pid": 999_999, "comm": "a-long-comm-name", "connected_for_ms": 0, "calls": 1_234_567, "in_flight": 3},
            ],
        });
        let text = status_text(&r);
        for header in ["METHOD", "ID"] {
            let block: Vec<&str> = text
                .lines()
                .skip_while(|l| !l.trim_start().starts_with(header))
                .take_while(|l| !l.is_empty())
                .collect();
            assert!(block.len() >= 2, "{text}");
            // The last column is right-aligned: every line ends with it.
            assert!(
                block.iter().all(|l| l.len() == block[0].len()),
                "misaligned:\n{text}"
            );
        }
        assert!(text.contains("uptime:      1.2 s"), "{text}");
    }
}
