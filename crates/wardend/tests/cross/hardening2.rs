//! Hardening II: resources one user can make the broker spend
//! (docs/security.md, "Tested attacks").

use std::time::Duration;

use serde_json::{json, Value};
use warden_testkit::{config_text, wardenctl, BrokerProcess, RawConn, TestDir};

use crate::{stderr, stdout, users, RULES};

/// The broker's resident set, in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Sends `n` calls to distinct made-up names, 100 at a time, and checks
/// each is denied.
fn made_up_calls(c: &mut RawConn, first: u64, n: u64) -> anyhow::Result<()> {
    let mut id = first;
    while id < first + n {
        let batch = 100.min(first + n - id);
        for k in 0..batch {
            c.send_json(&json!({"kind": "call", "id": id + k, "method": format!("zz.made.up.n{}", id + k), "params": null}))?;
        }
        for _ in 0..batch {
            let r = c.recv_some()?;
            anyhow::ensure!(r["error"]["code"] == "denied", "{r}");
        }
        id += batch;
    }
    Ok(())
}

#[test]
fn denied_calls_to_made_up_names_do_not_grow_the_broker() -> anyhow::Result<()> {
    if users("denied_calls_to_made_up_names_do_not_grow_the_broker").is_none() {
        return Ok(());
    }
    let dir = TestDir::new("made-up-names")?;
    let metrics_rule =
        "\n[[rule]]\nactions = [\"call\"]\nnames = [\"warden.metrics\"]\nadmins = true\n";
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &format!("{RULES}{metrics_rule}")))?;
    let mut c = RawConn::connect(broker.socket())?;
    c.stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.hello()?;
    // Warm up the allocator and the connection's buffers first.
    made_up_calls(&mut c, 1, 10_000)?;
    let before = rss_kib(broker.pid())?;
    made_up_calls(&mut c, 10_001, 100_000)?;
    let after = rss_kib(broker.pid())?;
    assert!(
        after <= before + 2 * 1024,
        "RSS went from {before} KiB to {after} KiB over 100,000 calls to made-up names"
    );
    let out = wardenctl(None, broker.socket(), &["--json", "status"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s: Value = serde_json::from_str(stdout(&out).trim())?;
    assert!(
        s["unresolved"]["calls"].as_u64().unwrap_or(0) >= 110_000,
        "{}",
        s["unresolved"]
    );
    assert!(
        !s["methods"]
            .as_object()
            .is_some_and(|m| m.keys().any(|k| k.starts_with("zz."))),
        "made-up names got entries: {}",
        s["method_count"]
    );
    let out = wardenctl(None, broker.socket(), &["metrics", "--prometheus"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("warden_unresolved_calls_total "),
        "{}",
        stdout(&out)
    );
    Ok(())
}
