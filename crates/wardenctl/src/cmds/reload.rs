//! `wardenctl reload`: the broker reads its configuration file again
//! (`warden.reload`, the same load as SIGHUP).

use serde_json::Value;
use warden_client::Client;

use crate::error::Error;
use crate::output::Output;
use crate::term;

/// `wardenctl reload`: prints what the broker loaded, or fails with the
/// broker's error (`FILE:LINE:COLUMN: KEY: what is wrong`; the broker
/// keeps its policy then).
pub async fn reload(client: &Client, out: Output) -> Result<(), Error> {
    let r = client.call_json("warden.reload", Value::Null).await?;
    out.emit(&r, |r| {
        let warnings: Vec<&str> = r["warnings"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{}",
            term::escape(&format!(
                "reloaded {}: {} rules, {} warnings",
                r["config"].as_str().unwrap_or("?"),
                r["rules"],
                warnings.len()
            ))
        );
        for w in warnings {
            println!("warning: {}", term::escape(w));
        }
    });
    Ok(())
}
