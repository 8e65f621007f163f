//! `wardenctl top`: a live table of the broker's connections.

use std::time::Duration;

use serde_json::{json, Value};
use warden_client::Client;

use super::status::since;
use super::user_name;
use crate::error::Error;
use crate::output::{cell, json_line, table, Align, Output};
use crate::term;

/// One row of `top`.
struct TopRow {
    id: u64,
    uid: u64,
    user: String,
    pid: u64,
    comm: String,
    connected_for_ms: Option<u64>,
    calls: u64,
    rate: f64,
    in_flight: u64,
    queued: u64,
    missed: u64,
}

impl TopRow {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "uid": self.uid,
            "user": self.user,
            "pid": self.pid,
            "comm": self.comm,
            "connected_for_ms": self.connected_for_ms,
            "calls": self.calls,
            "calls_per_s": self.rate,
            "in_flight": self.in_flight,
            "queued_events": self.queued,
            "missed": self.missed,
        })
    }
}

/// Rows from a `warden.status` answer, with calls/s against the previous
/// sample, busiest first.
fn top_rows(status: &Value, prev: &std::collections::HashMap<u64, u64>, secs: f64) -> Vec<TopRow> {
    let mut rows: Vec<TopRow> = status["connection_list"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| {
                    let id = c["id"].as_u64().unwrap_or(0);
                    let calls = c["calls"].as_u64().unwrap_or(0);
                    let before = prev.get(&id).copied().unwrap_or(calls);
                    let uid = c["uid"].as_u64().unwrap_or(u64::MAX);
                    TopRow {
                        id,
                        uid,
                        user: user_name(uid),
                        pid: c["pid"].as_u64().unwrap_or(0),
                        comm: term::escape(c["comm"].as_str().unwrap_or("?")).into_owned(),
                        connected_for_ms: c["connected_for_ms"].as_u64(),
                        calls,
                        rate: if secs > 0.0 {
                            calls.saturating_sub(before) as f64 / secs
                        } else {
                            0.0
                        },
                        in_flight: c["in_flight"].as_u64().unwrap_or(0),
                        queued: c["queued_events"].as_u64().unwrap_or(0),
                        missed: c["missed"].as_u64().unwrap_or(0),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by(|a, b| {
        b.rate
            .total_cmp(&a.rate)
            .then(b.in_flight.cmp(&a.in_flight))
            .then(b.calls.cmp(&a.calls))
            .then(a.id.cmp(&b.id))
    });
    rows
}

fn top_table(status: &Value, rows: &[TopRow]) -> String {
    let mut out = format!(
        "{}  up {} s  connections {}  in flight {}  providers {}  topics {}\n\n",
        cell(&status["server"]),
        status["uptime_ms"].as_u64().unwrap_or(0) / 1000,
        cell(&status["connections"]),
        cell(&status["routed_in_flight"]),
        status["providers"].as_array().map_or(0, Vec::len),
        cell(&status["topics"]),
    );
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.user.clone(),
                r.pid.to_string(),
                r.comm.clone(),
                since(&json!(r.connected_for_ms)),
                r.calls.to_string(),
                format!("{:.1}", r.rate),
                r.in_flight.to_string(),
                r.queued.to_string(),
                r.missed.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            ("CONN", Align::Right),
            ("USER", Align::Left),
            ("PID", Align::Right),
            ("COMM", Align::Left),
            ("SINCE", Align::Right),
            ("CALLS", Align::Right),
            ("CALLS/S", Align::Right),
            ("IN-FLIGHT", Align::Right),
            ("QUEUED", Align::Right),
            ("MISSED", Align::Right),
        ],
        &cells,
    ));
    out
}

/// `top --json`: one object, the summary and the rows busiest first.
fn top_json(status: &Value, rows: &[TopRow]) -> Value {
    json!({
        "server": status["server"],
        "uptime_ms": status["uptime_ms"],
        "connections": status["connections"],
        "routed_in_flight": status["routed_in_flight"],
        "providers": status["providers"].as_array().map_or(0, Vec::len),
        "topics": status["topics"],
        "connection_list": rows.iter().map(TopRow::to_json).collect::<Vec<_>>(),
        "truncated": status["truncated"],
    })
}

/// `wardenctl top`: refreshes a table of connections until `q` (or
/// Ctrl-C); on a non-terminal, prints it once; with `--json`, prints one
/// JSON object once.
pub async fn top(client: &Client, out: Output, interval: Duration) -> Result<(), Error> {
    use std::io::{IsTerminal, Write};
    let status = client.call_json("warden.status", Value::Null).await?;
    let mut prev: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    if out.json {
        json_line(&top_json(&status, &top_rows(&status, &prev, 0.0)));
        return Ok(());
    }
    if !std::io::stdout().is_terminal() {
        print!("{}", top_table(&status, &top_rows(&status, &prev, 0.0)));
        return Ok(());
    }
    let every = interval.clamp(Duration::from_millis(100), Duration::from_secs(3600));
    crossterm::terminal::enable_raw_mode().map_err(|e| Error::io("cannot use the terminal", e))?;
    let mut status = status;
    let mut last = std::time::Instant::now();
    let result = loop {
        let rows = top_rows(
            &status,
            &prev,
            last.elapsed().as_secs_f64().max(every.as_secs_f64()),
        );
        prev = rows.iter().map(|r| (r.id, r.calls)).collect();
        let text = top_table(&status, &rows).replace('\n', "\r\n");
        let mut out = std::io::stdout();
        let _ = write!(out, "\x1b[H\x1b[2J{text}\r\nq: quit");
        let _ = out.flush();
        last = std::time::Instant::now();
        // Wait for a key or the next refresh, without blocking the runtime.
        let quit = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            if crossterm::event::poll(every)? {
                if let crossterm::event::Event::Key(k) = crossterm::event::read()? {
                    use crossterm::event::{KeyCode, KeyModifiers};
                    return Ok(k.code == KeyCode::Char('q')
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL)));
                }
            }
            Ok(false)
        })
        .await;
        match quit {
            Ok(Ok(true)) => break Ok(()),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => break Err(Error::io("reading the terminal", e)),
            Err(e) => break Err(Error::Usage(format!("reading the terminal: {e}"))),
        }
        match client.call_json("warden.status", Value::Null).await {
            Ok(s) => status = s,
            Err(e) => break Err(e.into()),
        }
    };
    let _ = crossterm::terminal::disable_raw_mode();
    println!();
    result
}
