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
#[ignore = "needs root"]
fn denied_calls_to_made_up_names_do_not_grow_the_broker() -> anyhow::Result<()> {
    users("denied_calls_to_made_up_names_do_not_grow_the_broker");
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
    eprintln!("broker RSS: {before} KiB before, {after} KiB after 100,000 calls to made-up names");
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

#[test]
#[ignore = "needs root"]
fn one_caller_cannot_fill_a_busy_providers_queue_for_everyone() -> anyhow::Result<()> {
    let (alice, bob, _) = users("one_caller_cannot_fill_a_busy_providers_queue_for_everyone");
    let dir = TestDir::new("busy-provider")?;
    // 4 MiB per uid, so 1 MiB per caller at a provider by default.
    let limits = "[limits]\nmax_queued_bytes_per_uid = 4194304\ncall_timeout_ms = 60000\n";
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &format!("{limits}{RULES}")))?;
    // The provider (root) registers and then stops reading: busy.
    let mut provider = RawConn::connect(broker.socket())?;
    provider.hello()?;
    provider.send_json(&json!({"kind": "provide", "id": 1, "method": "svc.busy"}))?;
    assert_eq!(provider.recv_some()?["kind"], "reply");
    // The attacker (bob) sends 40 calls of 200 KB (8 MB) without waiting.
    let lib_dir = crate::python::client_dir()?;
    let script = format!(
        "import sys, json\n\
         sys.path.insert(0, {lib_dir:?})\n\
         import warden_client\n\
         c = warden_client.Client({sock:?})\n\
         for i in range(40):\n\
         \x20   c._send({{'kind': 'call', 'id': 1000 + i, 'method': 'svc.busy', 'params': 'x' * 200000}})\n\
         c.sock.settimeout(3)\n\
         codes = []\n\
         try:\n\
         \x20   while len(codes) < 40:\n\
         \x20       env = c._recv()\n\
         \x20       if env.get('kind') == 'error':\n\
         \x20           codes.append(env['error']['code'])\n\
         except OSError:\n\
         \x20   pass\n\
         print(json.dumps(codes), flush=True)\n",
        sock = broker.socket_str(),
    );
    let out = warden_testkit::output_with_timeout(
        warden_testkit::command_as(&bob, std::path::Path::new("/usr/bin/python3"))
            .arg("-c")
            .arg(&script),
        Duration::from_secs(60),
    )?;
    let codes: Vec<String> = serde_json::from_str(stdout(&out).trim())
        .map_err(|e| anyhow::anyhow!("{e}: {} {}", stdout(&out), stderr(&out)))?;
    let refused = codes.iter().filter(|c| *c == "limit_exceeded").count();

    // Another caller still reaches the provider: its call waits for the
    // busy provider instead of being refused at once.
    let out = wardenctl(
        Some(&alice),
        broker.socket(),
        &["--timeout", "2s", "call", "svc.busy", "{\"small\":true}"],
    )?;
    assert_eq!(
        out.status.code(),
        Some(4),
        "alice's call was not queued for the provider: {}",
        stderr(&out)
    );
    // And the provider's uid (root) is still answered on other connections.
    let mut other = RawConn::connect(broker.socket())?;
    other.hello()?;
    let r = other.call(1, "warden.ping", json!(null))?;
    assert_eq!(r["result"]["pong"], true, "{r}");
    // Bob was held to his own budget at the provider (1 MiB of 8 MB).
    eprintln!("bob's calls refused: {refused} of 40");
    assert!(refused >= 30, "bob was not held to his budget: {codes:?}");
    drop(provider);
    Ok(())
}
