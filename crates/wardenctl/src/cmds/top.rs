//! `wardenctl top`: a live table of the broker's connections.

use std::time::Duration;

use serde_json::Value;
use warden_client::Client;

use super::user_name;
use crate::error::Error;
use crate::term;

/// One row of `top`.
struct TopRow {
    id: u64,
    user: String,
    pid: u64,
    comm: String,
    since_s: u64,
    calls: u64,
    rate: f64,
    in_flight: u64,
    queued: u64,
    missed: u64,
}

/// Rows from a `warden.status` answer, with calls/s against the previous
/// sample, busiest first.
fn top_rows(status: &Value, prev: &std::collections::HashMap<u64, u64>, secs: f64) -> Vec<TopRow> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut rows: Vec<TopRow> = status["connection_list"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| {
                    let id = c["id"].as_u64().unwrap_or(0);
                    let calls = c["calls"].as_u64().unwrap_or(0);
                    let before = prev.get(&id).copied().unwrap_or(calls);
                    TopRow {
                        id,
                        user: user_name(c["uid"].as_u64().unwrap_or(u64::MAX)),
                        pid: c["pid"].as_u64().unwrap_or(0),
                        comm: term::escape(c["comm"].as_str().unwrap_or("?")).into_owned(),
                        since_s: now_ms
                            .saturating_sub(c["connected_ms"].as_u64().unwrap_or(now_ms))
                            / 1000,
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
        "{}  up {:.0} s  connections {}  in flight {}  providers {}  topics {}\n\n",
        status["server"].as_str().unwrap_or("?"),
        status["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        status["connections"],
        status["routed_in_flight"],
        status["providers"].as_array().map_or(0, Vec::len),
        status["topics"],
    );
    out.push_str(&format!(
        "{:>6} {:<18} {:>8} {:<16} {:>8} {:>9} {:>7} {:>9} {:>7} {:>7}\n",
        "CONN", "USER", "PID", "COMM", "SINCE", "CALLS", "CALLS/S", "IN-FLIGHT", "QUEUED", "MISSED"
    ));
    for r in rows {
        out.push_str(&format!(
            "{:>6} {:<18} {:>8} {:<16} {:>7}s {:>9} {:>7.1} {:>9} {:>7} {:>7}\n",
            r.id,
            r.user,
            r.pid,
            r.comm,
            r.since_s,
            r.calls,
            r.rate,
            r.in_flight,
            r.queued,
            r.missed
        ));
    }
    out
}

/// `wardenctl top`: refreshes a table of connections until `q` (or
/// Ctrl-C); on a non-terminal, prints it once.
pub async fn top(client: &Client, interval: Duration) -> Result<(), Error> {
    use std::io::{IsTerminal, Write};
    let status = client.call_json("warden.status", Value::Null).await?;
    let mut prev: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
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
