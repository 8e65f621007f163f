//! `wardenctl hosts [restart NAME]` and `wardenctl module load|unload|reload
//! HOST MODULE`: the broker's child hosts (`hosts.list`, `hosts.restart`,
//! `hosts.module`).

use serde_json::{json, Value};
use warden_client::Client;

use crate::error::Error;
use crate::output::{cell, table, Align, Output};
use crate::term;

/// `wardenctl hosts`: one line per host (per session instance for a
/// per-session host): name, session, state, pid, restarts, user, how its
/// last process ended, its modules.
pub async fn list(client: &Client, out: Output) -> Result<(), Error> {
    let r = client.call_json("hosts.list", Value::Null).await?;
    out.emit(&r, |r| {
        let hosts = r["hosts"].as_array().cloned().unwrap_or_default();
        if hosts.is_empty() {
            println!("no child hosts are configured");
            return;
        }
        let rows: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                let state = match h["next_start_in_ms"].as_u64() {
                    Some(ms) if h["state"] == "waiting" => format!("waiting ({ms} ms)"),
                    _ => h["state"].as_str().unwrap_or("?").to_owned(),
                };
                let modules: Vec<String> = h["modules"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                vec![
                    cell(&h["name"]),
                    cell(&h["session"]),
                    term::escape(&state).into_owned(),
                    h["pid"]
                        .as_u64()
                        .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    cell(&h["restarts"]),
                    cell(&h["user"]),
                    h["last_exit"]
                        .as_str()
                        .map_or_else(|| "-".to_owned(), |s| term::escape(s).into_owned()),
                    term::escape(&modules.join(",")).into_owned(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    ("HOST", Align::Left),
                    ("SESSION", Align::Left),
                    ("STATE", Align::Left),
                    ("PID", Align::Right),
                    ("RESTARTS", Align::Right),
                    ("USER", Align::Left),
                    ("LAST EXIT", Align::Left),
                    ("MODULES", Align::Left),
                ],
                &rows,
            )
        );
    });
    Ok(())
}

/// `wardenctl hosts restart NAME`: starts the host again now, a failed one
/// too, forgetting its crashes.
pub async fn restart(client: &Client, out: Output, name: &str) -> Result<(), Error> {
    let r = client
        .call_json("hosts.restart", json!({ "name": name }))
        .await?;
    out.emit(&r, |_| println!("restarting {}", term::escape(name)));
    Ok(())
}

/// `wardenctl module load|unload|reload HOST MODULE`.
pub async fn module(
    client: &Client,
    out: Output,
    op: &str,
    host: &str,
    module: &str,
) -> Result<(), Error> {
    let r = client
        .call_json(
            "hosts.module",
            json!({ "host": host, "op": op, "module": module }),
        )
        .await?;
    out.emit(&r, |r| {
        let names = |k: &str| -> String {
            r[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|s| term::escape(s).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        let (name, path) = (cell(&r["module"]), cell(&r["path"]));
        let host = term::escape(host);
        match op {
            "load" => println!("loaded {name} ({path}) in {host}: {}", names("methods")),
            "unload" => {
                println!("unloaded {name} ({path}) from {host}: {} no longer served", names("methods"));
                if r["unmapped"] == false {
                    println!("note: the library stays mapped in the host (it cannot be unloaded, e.g. thread-local destructors); it is gone when the host restarts");
                }
            }
            _ => {
                println!("reloaded {name} ({path}) in {host}: {}", names("methods"));
                for (k, what) in [("added", "new"), ("removed", "no longer served")] {
                    let n = names(k);
                    if !n.is_empty() {
                        println!("  {what}: {n}");
                    }
                }
                if r["old_unmapped"] == false {
                    println!("note: the old library stays mapped in the host (it cannot be unloaded, e.g. thread-local destructors); it is gone when the host restarts");
                }
            }
        }
    });
    Ok(())
}
