//! The audit log records denied requests with who, what and the rule, as
//! text for people and as JSON for machines.

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
