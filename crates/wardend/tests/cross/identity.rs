//! Policy per user and the identity the broker attaches.

use std::process::Stdio;

use serde_json::{json, Value};
use warden_testkit::{
    bin_path, command_as, config_text, wardenctl, BrokerProcess, RawConn, TestDir,
};

use crate::{stderr, stdout, users, RULES};

#[test]
#[ignore = "needs root"]
fn allowed_user_calls_and_other_user_is_denied() -> anyhow::Result<()> {
    let (alice, bob, _) = users("allowed_user_calls_and_other_user_is_denied");
    let dir = TestDir::new("policy")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;

    let a = wardenctl(Some(&alice), broker.socket(), &["--json", "status"])?;
    assert_eq!(a.status.code(), Some(0), "alice: {}", stderr(&a));
    let status: Value = serde_json::from_str(&stdout(&a))?;
    assert!(status["connections"].as_u64().unwrap_or(0) >= 1);

    let b = wardenctl(Some(&bob), broker.socket(), &["status"])?;
    assert_eq!(
        b.status.code(),
        Some(1),
        "bob must be denied: {}",
        stdout(&b)
    );
    let err = stderr(&b);
    assert!(err.starts_with("error: denied: "), "{err}");
    assert!(err.contains(&format!("uid {}", bob.uid)), "{err}");
    assert!(err.contains("default deny"), "{err}");

    // The JSON form prints the error object on stdout.
    let b = wardenctl(Some(&bob), broker.socket(), &["--json", "status"])?;
    assert_eq!(b.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&b))?;
    assert_eq!(v["error"]["code"], "denied");

    // A deny rule above an allow rule wins for bob only.
    let b = wardenctl(Some(&bob), broker.socket(), &["call", "svc.secret"])?;
    assert!(stderr(&b).contains("denied by rule 4"), "{}", stderr(&b));
    let a = wardenctl(Some(&alice), broker.socket(), &["call", "svc.secret"])?;
    assert!(
        stderr(&a).starts_with("error: unknown_method"),
        "{}",
        stderr(&a)
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn whoami_reports_each_callers_real_identity() -> anyhow::Result<()> {
    let (alice, bob, _) = users("whoami_reports_each_callers_real_identity");
    let grp = warden_sys::group_by_name(warden_testkit::GROUP_A)?.unwrap_or(u32::MAX);
    let dir = TestDir::new("whoami")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    for (user, in_grp) in [(&alice, true), (&bob, false)] {
        let child = command_as(user, &bin_path("wardenctl"))
            .arg("--socket")
            .arg(broker.socket())
            .args(["--json", "whoami"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let out = child.wait_with_output()?;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out))?;
        assert_eq!(v["uid"], user.uid, "{v}");
        assert_eq!(v["gid"], user.gid, "{v}");
        assert_eq!(
            v["pid"], pid,
            "setpriv execs wardenctl, so the pid is the child's: {v}"
        );
        let groups: Vec<u64> = v["groups"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        assert_eq!(groups.contains(&u64::from(grp)), in_grp, "{v}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn payload_cannot_change_the_callers_identity() -> anyhow::Result<()> {
    let (_, bob, _) = users("payload_cannot_change_the_callers_identity");
    let dir = TestDir::new("forge")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    // A client that sends its own "caller" is refused.
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    c.send_json(&json!({"kind":"call","id":1,"method":"warden.whoami",
        "caller":{"uid":0,"gid":0,"groups":[],"pid":1}}))?;
    let e = c.recv_some()?;
    assert_eq!(e["error"]["code"], "bad_request", "{e}");
    assert_eq!(e["id"], 1);
    // Params that look like an identity change nothing.
    let out = wardenctl(
        Some(&bob),
        broker.socket(),
        &[
            "--json",
            "call",
            "warden.whoami",
            r#"{"uid":0,"gid":0,"pid":1}"#,
        ],
    )?;
    let v: Value = serde_json::from_str(&stdout(&out))?;
    assert_eq!(v["uid"], bob.uid, "{v}");
    // And the connection still works after the refusal.
    let r = c.call(2, "warden.ping", json!(null))?;
    assert_eq!(r["result"]["pong"], true, "{r}");
    Ok(())
}
