//! `wardenctl monitor`: administrators watch other users' traffic, with
//! the deciding rule; payloads only with their own permission; a monitor
//! that stops reading lags instead of slowing anyone.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_testkit::{
    bin_path, command_as, config_text, wardenctl, BrokerProcess, RawConn, TestDir, TestUser,
};

use crate::{stderr, users, RULES};

const MONITOR_RULES: &str = r#"
[[rule]]
actions = ["monitor"]
names = ["calls"]
admins = true

[[rule]]
actions = ["monitor"]
names = ["payloads"]
uids = [0]
"#;

/// Runs `wardenctl --json monitor ARGS` as `user` (or root), collecting
/// lines until `want` of them arrived, while `poke` generates traffic.
fn watch(
    user: Option<&TestUser>,
    socket: &std::path::Path,
    args: &[&str],
    want: usize,
    poke: impl Fn() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Value>> {
    let bin = bin_path("wardenctl");
    let mut cmd = match user {
        Some(u) => command_as(u, &bin),
        None => std::process::Command::new(&bin),
    };
    let mut child = cmd
        .arg("--socket")
        .arg(socket)
        .args(["--json", "monitor"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines.len() < want && Instant::now() < deadline {
        poke()?;
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(serde_json::from_str::<Value>(&l)?);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(lines)
}

#[test]
#[ignore = "needs root"]
fn admin_sees_another_users_calls_with_rule_and_code_redacted() -> anyhow::Result<()> {
    let (alice, bob, admin) = users("admin_sees_another_users_calls");
    let dir = TestDir::new("monitor")?;
    let broker =
        BrokerProcess::start(&dir, &config_text(&dir, &format!("{RULES}{MONITOR_RULES}")))?;
    let socket = broker.socket().to_path_buf();
    let echo = || -> anyhow::Result<()> {
        let out = wardenctl(
            Some(&alice),
            &socket,
            &["call", "warden.echo", r#"{"secret":"s3cr3t"}"#],
        )?;
        anyhow::ensure!(out.status.code() == Some(0), "{}", stderr(&out));
        Ok(())
    };
    let lines = watch(
        Some(&admin),
        &socket,
        &["--user", "wdn_alice", "--method", "warden.*"],
        4,
        echo,
    )?;
    // A call that arrived before the monitor was subscribed has no rule
    // spelled out (the broker names rules only while someone monitors):
    // look at a reply whose call the monitor saw too.
    let reply = lines
        .iter()
        .find(|v| {
            v["kind"] == "reply"
                && lines
                    .iter()
                    .any(|c| c["kind"] == "call" && c["id"] == v["id"] && c["pid"] == v["pid"])
        })
        .ok_or_else(|| anyhow::anyhow!("no reply event with its call in {lines:?}"))?;
    assert_eq!(reply["uid"], alice.uid, "{reply}");
    assert_eq!(reply["method"], "warden.echo", "{reply}");
    assert_eq!(reply["code"], "ok", "{reply}");
    assert!(
        reply["rule"]
            .as_str()
            .unwrap_or("")
            .starts_with("allowed by rule 1 at "),
        "{reply}"
    );
    assert!(reply["latency_us"].is_u64(), "{reply}");
    assert!(
        lines
            .iter()
            .any(|v| v["kind"] == "call" && v["uid"] == alice.uid),
        "{lines:?}"
    );
    for v in &lines {
        assert_eq!(v["redacted"], true, "{v}");
        assert!(!v.to_string().contains("s3cr3t"), "payload leaked: {v}");
    }

    // With the payload permission (root here), payloads are shown.
    let lines = watch(
        None,
        &socket,
        &["--payloads", "--user", "wdn_alice"],
        2,
        echo,
    )?;
    assert!(
        lines.iter().any(|v| v.to_string().contains("s3cr3t")),
        "{lines:?}"
    );

    // A non-admin is refused.
    let out = wardenctl(Some(&bob), &socket, &["monitor", "--count", "1"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: denied"),
        "{}",
        stderr(&out)
    );
    // An admin without the payload permission is refused payloads.
    let out = wardenctl(
        Some(&admin),
        &socket,
        &["monitor", "--payloads", "--count", "1"],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("payloads"), "{}", stderr(&out));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_monitor_that_stops_reading_lags_and_learns_what_it_missed() -> anyhow::Result<()> {
    users("a_monitor_that_stops_reading_lags");
    let dir = TestDir::new("monlag")?;
    let conf = format!("[limits]\nsubscriber_queue_len = 16\n{RULES}{MONITOR_RULES}");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    let mut monitor = RawConn::connect(broker.socket())?;
    monitor.hello()?;
    monitor.send_json(&json!({"kind":"subscribe","id":1,"topic":"warden.monitor"}))?;
    assert_eq!(monitor.recv_some()?["kind"], "reply");
    // The monitor now stops reading while a client makes 2000 calls.
    const CALLS: u64 = 2000;
    let mut client = RawConn::connect(broker.socket())?;
    client.hello()?;
    for batch in 0..CALLS / 50 {
        for i in 0..50 {
            client.send_json(&json!({"kind":"call","id":batch * 50 + i + 1,"method":"warden.echo","params":"x".repeat(256)}))?;
        }
        for _ in 0..50 {
            assert_eq!(client.recv_some()?["kind"], "reply");
        }
    }
    // Every call produced two events (call, reply): received or missed.
    let (mut got, mut missed) = (0u64, 0u64);
    while got + missed < 2 * CALLS {
        let v = monitor.recv_some()?;
        match v["kind"].as_str() {
            Some("event") => {
                got += 1;
                missed += v["missed"].as_u64().unwrap_or(0);
            }
            Some("lagged") => missed += v["missed"].as_u64().unwrap_or(0),
            _ => anyhow::bail!("unexpected {v}"),
        }
    }
    assert_eq!(got + missed, 2 * CALLS);
    assert!(missed > 0, "the stalled monitor must have lagged");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn admin_sees_refused_subscriptions_and_publications() -> anyhow::Result<()> {
    let (_, bob, admin) = users("admin_sees_refused_subscriptions_and_publications");
    let dir = TestDir::new("mondeny")?;
    let broker =
        BrokerProcess::start(&dir, &config_text(&dir, &format!("{RULES}{MONITOR_RULES}")))?;
    let socket = broker.socket().to_path_buf();
    let refused = || -> anyhow::Result<()> {
        for args in [
            &["subscribe", "secret.x", "--count", "1"][..],
            &["publish", "secret.x", "{}"][..],
        ] {
            let out = wardenctl(Some(&bob), &socket, args)?;
            anyhow::ensure!(out.status.code() == Some(1), "{args:?}: {}", stderr(&out));
        }
        Ok(())
    };
    let lines = watch(
        Some(&admin),
        &socket,
        &["--user", "wdn_bob", "--topic", "secret.*"],
        2,
        refused,
    )?;
    for kind in ["subscribe_denied", "publish_denied"] {
        let v = lines
            .iter()
            .find(|v| v["kind"] == kind)
            .ok_or_else(|| anyhow::anyhow!("no {kind} event in {lines:?}"))?;
        assert_eq!(v["uid"], bob.uid, "{v}");
        assert_eq!(v["topic"], "secret.x", "{v}");
        assert_eq!(v["code"], "denied", "{v}");
        assert_eq!(v["rule"], "no rule matched: default deny", "{v}");
        assert_eq!(v["comm"], "wardenctl", "{v}");
    }
    Ok(())
}
