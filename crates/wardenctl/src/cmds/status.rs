//! `wardenctl status`: the broker's state, connections and per-method
//! counts.

use serde_json::Value;
use warden_client::Client;

use super::user_name;
use crate::error::Error;
use crate::output::Output;
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
    println!("server:      {}", r["server"].as_str().unwrap_or("?"));
    println!(
        "uptime:      {:.1} s",
        r["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0
    );
    println!("connections: {}", r["connections"]);
    println!("draining:    {}", r["draining"]);
    if let Some(p) = r["providers"].as_array() {
        let names: Vec<&str> = p.iter().filter_map(Value::as_str).collect();
        println!(
            "providers:   {}",
            if names.is_empty() {
                "-".into()
            } else {
                names.join(", ")
            }
        );
    }
    println!("topics:      {}", r["topics"]);
    if let Some(m) = r["methods"].as_object() {
        println!("\n{:<32} {:>10} {:>10}", "METHOD", "CALLS", "ERRORS");
        for (name, s) in m {
            println!("{name:<32} {:>10} {:>10}", s["calls"], s["errors"]);
        }
        println!(
            "{:<32} {:>10} {:>10}",
            "(unresolved names)", r["unresolved"]["calls"], r["unresolved"]["errors"]
        );
    }
    if let Some(list) = r["connection_list"].as_array() {
        println!(
            "\n{:>6} {:<16} {:>8} {:<16} {:>8} {:>9}",
            "ID", "USER", "PID", "COMM", "CALLS", "IN-FLIGHT"
        );
        for c in list {
            println!(
                "{:>6} {:<16} {:>8} {:<16} {:>8} {:>9}",
                c["id"],
                user_name(c["uid"].as_u64().unwrap_or(u64::MAX)),
                c["pid"],
                term::escape(c["comm"].as_str().unwrap_or("?")),
                c["calls"],
                c["in_flight"]
            );
        }
    }
    print_truncated(r);
}
