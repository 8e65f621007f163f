//! The audit log records denied requests with who, what and the rule, as
//! text for people and as JSON for machines: the same fields on every
//! record, as JSON values; a flood is rate-limited and counted.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_testkit::{bin_path, command_as, config_text, BrokerProcess, TestDir, TestUser};

use crate::{users, RULES};

/// Runs `wardenctl call svc.secret` as `user`; returns its pid.
fn denied_call(user: &TestUser, socket: &std::path::Path) -> anyhow::Result<u32> {
    let child = command_as(user, &bin_path("wardenctl"))
        .arg("--socket")
        .arg(socket)
        .args(["call", "svc.secret"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.code() == Some(1), "expected a denial");
    Ok(pid)
}

fn wait_for(broker: &BrokerProcess, what: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = broker.log();
        if let Some(line) = log.lines().find(|l| what(l)) {
            return Ok(line.to_owned());
        }
        anyhow::ensure!(Instant::now() < deadline, "not in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root"]
fn denied_call_is_audited_in_text_and_json() -> anyhow::Result<()> {
    let (_, bob, _) = users("denied_call_is_audited_in_text_and_json");
    // Text.
    let dir = TestDir::new("audit-text")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let pid = denied_call(&bob, broker.socket())?;
    let line = wait_for(&broker, |l| {
        l.contains("warden::audit") && l.contains(&format!("pid={pid}"))
    })?;
    for needle in [
        format!("uid={}", bob.uid),
        "action=\"call\"".to_owned(),
        "target=\"svc.secret\"".to_owned(),
        "denied by rule 4".to_owned(),
        "result=\"denied\"".to_owned(),
    ] {
        assert!(line.contains(&needle), "{needle} missing from: {line}");
    }

    // JSON.
    let dir = TestDir::new("audit-json")?;
    let conf = dir.path().join("warden.toml");
    std::fs::write(&conf, config_text(&dir, RULES))?;
    let broker = BrokerProcess::spawn(
        &dir,
        &[
            "--config".as_ref(),
            conf.as_os_str(),
            "--log-format".as_ref(),
            "json".as_ref(),
        ],
        dir.path().join("s/warden.sock"),
    )?;
    let pid = denied_call(&bob, broker.socket())?;
    let line = wait_for(&broker, |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["target"] == "warden::audit" && v["fields"]["pid"] == pid)
    })?;
    let v: Value = serde_json::from_str(&line)?;
    let f = &v["fields"];
    assert_eq!(f["uid"], bob.uid, "{v}");
    assert_eq!(f["action"], "call", "{v}");
    assert_eq!(f["target"], "svc.secret", "{v}");
    assert_eq!(f["result"], "denied", "{v}");
    assert!(
        f["rule"]
            .as_str()
            .unwrap_or("")
            .contains("denied by rule 4"),
        "{v}"
    );
    assert_eq!(f["comm"], "wardenctl", "{v}");
    // Every line of the JSON log is JSON.
    for l in broker.log().lines() {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
    Ok(())
}

/// The fields every audit record has, in JSON.
const COMMON: [&str; 10] = [
    "uid", "gid", "pid", "comm", "exe", "conn", "action", "target", "rule", "result",
];

/// The audit records in a JSON log.
fn audit_records(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "warden::audit")
        .collect()
}

#[test]
#[ignore = "needs root"]
fn every_audit_record_has_the_same_fields_as_json_values() -> anyhow::Result<()> {
    let (alice, bob, _) = users("every_audit_record_has_the_same_fields");
    let dir = TestDir::new("audit-fields")?;
    let conf = dir.path().join("warden.toml");
    std::fs::write(&conf, config_text(&dir, RULES))?;
    let broker = BrokerProcess::spawn(
        &dir,
        &[
            "--config".as_ref(),
            conf.as_os_str(),
            "--log-format".as_ref(),
            "json".as_ref(),
        ],
        dir.path().join("s/warden.sock"),
    )?;
    // A denial, and a reload that revokes a subscription (its target: an
    // array), from a signal (no caller: nulls).
    denied_call(&bob, broker.socket())?;
    let mut sub = command_as(&alice, &bin_path("wardenctl"))
        .arg("--socket")
        .arg(broker.socket())
        .args(["subscribe", "news.x"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut admin = warden_testkit::RawConn::connect(broker.socket())?;
    admin.hello()?;
    for id in 1.. {
        let s = admin.call(id, "warden.status", serde_json::json!(null))?;
        if s["result"]["topics"].as_u64() >= Some(1) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the subscriber never subscribed: {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(
        &conf,
        config_text(&dir, &crate::rules_without(&["subscribe"])),
    )?;
    broker.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_for(&broker, |l| l.contains("\"policy.revoke\""))?;
    wait_for(&broker, |l| l.contains("\"policy.reload\""))?;
    let _ = sub.kill();
    let _ = sub.wait();

    let log = broker.log();
    assert!(
        !log.contains("Some(") && !log.contains("None"),
        "Rust Debug text in the log:\n{log}"
    );
    let records = audit_records(&log);
    assert!(records.len() >= 3, "{log}");
    for r in &records {
        let f = r["fields"]
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("no fields: {r}"))?;
        for k in COMMON {
            assert!(f.contains_key(k), "{k} missing from {r}");
        }
        assert!(f["action"].is_string() && f["result"].is_string(), "{r}");
        assert!(f["exe"].is_string() || f["exe"].is_null(), "{r}");
    }
    let find = |action: &str| {
        records
            .iter()
            .find(|r| r["fields"]["action"] == action)
            .ok_or_else(|| anyhow::anyhow!("no {action} record in {records:?}"))
    };
    let denied = &find("call")?["fields"];
    assert_eq!(denied["uid"], bob.uid, "{denied}");
    assert_eq!(denied["gid"], bob.gid, "{denied}");
    assert_eq!(denied["result"], "denied", "{denied}");
    assert!(denied["conn"].is_u64(), "{denied}");
    // The broker runs as root here: it may read the caller's executable.
    assert!(
        denied["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("/wardenctl")),
        "{denied}"
    );
    let revoked = &find("policy.revoke")?["fields"];
    assert_eq!(revoked["uid"], alice.uid, "{revoked}");
    assert_eq!(
        revoked["target"],
        serde_json::json!(["news.x"]),
        "{revoked}"
    );
    let reload = &find("policy.reload")?["fields"];
    assert_eq!(reload["result"], "ok", "{reload}");
    assert!(
        reload["uid"].is_null() && reload["pid"].is_null(),
        "{reload}"
    );
    assert_eq!(reload["target"], conf.display().to_string(), "{reload}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_flood_of_denials_is_rate_limited_and_what_was_held_back_is_counted() -> anyhow::Result<()> {
    users("a_flood_of_denials_is_rate_limited");
    let dir = TestDir::new("audit-rate")?;
    let conf = dir.path().join("warden.toml");
    std::fs::write(&conf, config_text(&dir, RULES))?;
    let broker = BrokerProcess::spawn(
        &dir,
        &[
            "--config".as_ref(),
            conf.as_os_str(),
            "--log-format".as_ref(),
            "json".as_ref(),
        ],
        dir.path().join("s/warden.sock"),
    )?;
    const CALLS: u64 = 500;
    let mut c = warden_testkit::RawConn::connect(broker.socket())?;
    c.hello()?;
    for id in 1..=CALLS {
        let r = c.call(id, "zzz.denied", serde_json::json!(null))?;
        anyhow::ensure!(r["error"]["code"] == "denied", "{r}");
    }
    // Every denial is either written or counted in a "suppressed" record
    // (reported when its window ends: within a few windows).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = audit_records(&broker.log());
        let mine = |r: &&Value| r["fields"]["uid"] == 0 && r["fields"]["action"] == "call";
        let written = records
            .iter()
            .filter(mine)
            .filter(|r| r["fields"]["result"] == "denied")
            .count() as u64;
        let held_back: u64 = records
            .iter()
            .filter(mine)
            .filter(|r| r["fields"]["result"] == "suppressed")
            .map(|r| {
                assert!(
                    r["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.ends_with("similar events suppressed")),
                    "{r}"
                );
                r["fields"]["suppressed"].as_u64().unwrap_or(0)
            })
            .sum();
        if written + held_back == CALLS {
            assert!(
                written < CALLS / 2,
                "hardly limited: {written} of {CALLS} written"
            );
            assert!(held_back > 0);
            return Ok(());
        }
        assert!(
            written + held_back < CALLS,
            "{written} + {held_back} > {CALLS}"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "{written} written + {held_back} suppressed != {CALLS}:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root"]
fn learning_is_audited_with_the_command_it_ran_not_the_helper() -> anyhow::Result<()> {
    let (alice, _, _) = users("learning_is_audited_with_the_command");
    let dir = TestDir::new("audit-learn")?;
    let conf = dir.path().join("warden.toml");
    std::fs::write(&conf, config_text(&dir, crate::learn::LEARN_CONFIG))?;
    let broker = BrokerProcess::spawn(
        &dir,
        &[
            "--config".as_ref(),
            conf.as_os_str(),
            "--log-format".as_ref(),
            "json".as_ref(),
        ],
        dir.path().join("s/warden.sock"),
    )?;
    let out = command_as(&alice, &bin_path("wardenctl"))
        .arg("--socket")
        .arg(broker.socket())
        .args(["--json", "learn", "--", "/usr/bin/true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(&broker, |l| l.contains("\"learn.stop\""))?;
    let records = audit_records(&broker.log());
    let start = records
        .iter()
        .find(|r| r["fields"]["action"] == "learn.start")
        .ok_or_else(|| anyhow::anyhow!("no learn.start in {records:?}"))?;
    let stop = records
        .iter()
        .find(|r| r["fields"]["action"] == "learn.stop")
        .ok_or_else(|| anyhow::anyhow!("no learn.stop in {records:?}"))?;
    for r in [start, stop] {
        assert_eq!(r["fields"]["uid"], alice.uid, "{r}");
        assert_eq!(r["fields"]["comm"], "wardenctl", "{r}");
        for k in COMMON {
            assert!(r["fields"].get(k).is_some(), "{k} missing from {r}");
        }
    }
    assert_eq!(start["fields"]["result"], "allowed", "{start}");
    // The helper wardenctl started became the command: that is what the
    // session ran.
    assert_eq!(stop["fields"]["command"], "/usr/bin/true", "{stop}");
    assert_eq!(
        stop["fields"]["target"], start["fields"]["target"],
        "{stop}"
    );
    Ok(())
}
