//! `wardenctl metrics`: the broker's counters, for people or in the
//! Prometheus text format.

use serde_json::Value;
use warden_client::Client;

use super::status::print_truncated;
use crate::error::Error;
use crate::output::Output;

/// `wardenctl metrics [--prometheus]`. The Prometheus text is printed
/// with or without `--json`.
pub async fn metrics(client: &Client, out: Output, prometheus: bool) -> Result<(), Error> {
    let r = client.call_json("warden.metrics", Value::Null).await?;
    if prometheus {
        print!("{}", prometheus_text(&r));
    } else {
        out.emit(&r, print_metrics);
    }
    Ok(())
}

fn print_metrics(r: &Value) {
    println!(
        "uptime:        {:.1} s",
        r["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0
    );
    println!("connections:   {}", r["connections"]);
    println!("in flight:     {}", r["routed_in_flight"]);
    println!(
        "queued events: {} ({} bytes queued)",
        r["queued_events"], r["queued_bytes"]
    );
    println!(
        "\n{:<32} {:>10} {:>10} {:>12}",
        "METHOD", "CALLS", "ERRORS", "MEAN µs"
    );
    if let Some(m) = r["methods"].as_object() {
        for (name, s) in m {
            let calls = s["calls"].as_u64().unwrap_or(0);
            let errors: u64 = s["errors"]
                .as_object()
                .map(|e| e.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            let mean = s["latency_us"]["sum"]
                .as_u64()
                .unwrap_or(0)
                .checked_div(calls)
                .unwrap_or(0);
            println!("{name:<32} {calls:>10} {errors:>10} {mean:>12}");
        }
    }
    let u = &r["unresolved"];
    let u_errors: u64 = u["errors"]
        .as_object()
        .map(|e| e.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    println!(
        "{:<32} {:>10} {u_errors:>10}",
        "(unresolved names)",
        u["calls"].as_u64().unwrap_or(0)
    );
    print_truncated(r);
}
/// Renders `warden.metrics` in the Prometheus text exposition format.
fn prometheus_text(r: &Value) -> String {
    use std::fmt::Write;
    let mut text = String::from(
        "# HELP warden_uptime_seconds Time since the broker started.\n# TYPE warden_uptime_seconds gauge\n",
    );
    let _ = writeln!(
        text,
        "warden_uptime_seconds {}",
        r["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0
    );
    let gauges = [
        ("warden_connections", "connections", "Open connections."),
        (
            "warden_routed_in_flight",
            "routed_in_flight",
            "Calls routed to providers and not answered yet.",
        ),
        (
            "warden_providers",
            "providers",
            "Methods provided by connections.",
        ),
        (
            "warden_topics",
            "topics",
            "Topics with at least one subscriber.",
        ),
        (
            "warden_queued_events",
            "queued_events",
            "Events waiting in subscribers' queues.",
        ),
        (
            "warden_queued_bytes",
            "queued_bytes",
            "Bytes waiting to be written, all uids.",
        ),
        (
            "warden_missed_events_pending",
            "missed_events_pending",
            "Dropped events not yet reported to their subscribers.",
        ),
    ];
    for (name, key, help) in gauges {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            r[key].as_u64().unwrap_or(0)
        );
    }
    let empty = serde_json::Map::new();
    let methods = r["methods"].as_object().unwrap_or(&empty);
    let _ = writeln!(
        text,
        "# HELP warden_calls_total Calls answered, by method.\n# TYPE warden_calls_total counter"
    );
    for (m, s) in methods {
        let _ = writeln!(
            text,
            "warden_calls_total{{method=\"{m}\"}} {}",
            s["calls"].as_u64().unwrap_or(0)
        );
    }
    let _ = writeln!(text, "# HELP warden_call_errors_total Calls answered with an error, by method and code.\n# TYPE warden_call_errors_total counter");
    for (m, s) in methods {
        if let Some(errors) = s["errors"].as_object() {
            for (code, n) in errors {
                let _ = writeln!(
                    text,
                    "warden_call_errors_total{{method=\"{m}\",code=\"{code}\"}} {}",
                    n.as_u64().unwrap_or(0)
                );
            }
        }
    }
    let unresolved = &r["unresolved"];
    let _ = writeln!(
        text,
        "# HELP warden_unresolved_calls_total Calls to names that nothing served when they arrived (or past the per-method table's cap).\n# TYPE warden_unresolved_calls_total counter\nwarden_unresolved_calls_total {}",
        unresolved["calls"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(text, "# HELP warden_unresolved_call_errors_total Unresolved calls answered with an error, by code.\n# TYPE warden_unresolved_call_errors_total counter");
    if let Some(errors) = unresolved["errors"].as_object() {
        for (code, n) in errors {
            let _ = writeln!(
                text,
                "warden_unresolved_call_errors_total{{code=\"{code}\"}} {}",
                n.as_u64().unwrap_or(0)
            );
        }
    }
    let _ = writeln!(text, "# HELP warden_queued_bytes_by_uid Bytes waiting to be written, charged to one uid (uids with none are left out).\n# TYPE warden_queued_bytes_by_uid gauge");
    if let Some(by_uid) = r["queued_bytes_by_uid"].as_object() {
        for (uid, n) in by_uid {
            let _ = writeln!(
                text,
                "warden_queued_bytes_by_uid{{uid=\"{uid}\"}} {}",
                n.as_u64().unwrap_or(0)
            );
        }
    }
    let _ = writeln!(text, "# HELP warden_call_duration_seconds Time from a call's arrival to its answer.\n# TYPE warden_call_duration_seconds histogram");
    for (m, s) in methods {
        let lat = &s["latency_us"];
        let bounds: Vec<u64> = lat["le"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let counts: Vec<u64> = lat["counts"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let mut cumulative = 0u64;
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            let le = bounds
                .get(i)
                .map(|b| format!("{}", *b as f64 / 1e6))
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(
                text,
                "warden_call_duration_seconds_bucket{{method=\"{m}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            text,
            "warden_call_duration_seconds_sum{{method=\"{m}\"}} {}",
            lat["sum"].as_f64().unwrap_or(0.0) / 1e6
        );
        let _ = writeln!(
            text,
            "warden_call_duration_seconds_count{{method=\"{m}\"}} {cumulative}"
        );
    }
    text
}
