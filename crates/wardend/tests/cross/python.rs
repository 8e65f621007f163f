//! The Python client (written only from docs/protocol.md) against a real
//! wardend: ping, whoami, a denied call, a subscription.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use warden_testkit::{
    command_as, config_text, output_with_timeout, wardenctl, BrokerProcess, TestDir,
};

use crate::{stderr, stdout, users, RULES};

/// The client script, copied where the test users can read it.
pub(crate) fn script() -> PathBuf {
    let original =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/python/warden_client.py");
    warden_testkit::shared_copy(&original).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The directory holding [`script`], for a Python program (run as a test
/// user) that imports the client: `sys.path.insert(0, DIR)`.
pub(crate) fn client_dir() -> anyhow::Result<String> {
    let script = script();
    Ok(script
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no directory", script.display()))?
        .display()
        .to_string())
}

#[test]
#[ignore = "needs root"]
fn python_client_talks_to_a_real_broker() -> anyhow::Result<()> {
    let (alice, bob, _) = users("python_client_talks_to_a_real_broker");
    let dir = TestDir::new("python")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let py = Path::new("/usr/bin/python3");
    let sock = broker.socket_str();
    let run = |user, args: &[&str]| {
        let mut cmd = command_as(user, py);
        cmd.arg(script()).arg("--socket").arg(&sock).args(args);
        output_with_timeout(&mut cmd, Duration::from_secs(30))
    };

    let out = run(&alice, &["ping"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(&alice, &["whoami"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim())?;
    assert_eq!(v["uid"], alice.uid, "{v}");
    assert_eq!(v["gid"], alice.gid, "{v}");

    // wdn_grp (alice) may read the status; a call to a made-up name is
    // counted as unresolved, not under its name.
    let _ = run(&alice, &["call", "zz.made.up"])?;
    let out = run(&alice, &["status"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim())?;
    assert!(v["unresolved"]["calls"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert!(v["methods"].get("zz.made.up").is_none(), "{v}");
    assert_eq!(v["truncated"], false, "{v}");
    // Each connection says when it opened and for how long, in two
    // integer fields (not the old `connected_ms`).
    let conns = v["connection_list"].as_array().cloned().unwrap_or_default();
    assert!(!conns.is_empty(), "{v}");
    for c in &conns {
        assert!(
            c["connected_at_unix_ms"].as_u64().is_some_and(|t| t > 0),
            "{c}"
        );
        assert!(c["connected_for_ms"].is_u64(), "{c}");
        assert!(c.get("connected_ms").is_none(), "{c}");
    }

    let out = run(&bob, &["call", "warden.status"])?;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim())?;
    assert_eq!(v["error"]["code"], "denied", "{v}");

    // Subscribe from Python, publish from wardenctl.
    let mut sub = command_as(&bob, py)
        .arg(script())
        .args(["--socket", &sock, "subscribe", "news.py", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = sub
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    // Wait until the subscription exists before publishing.
    let mut delivered = 0;
    for _ in 0..200 {
        let p = wardenctl(
            Some(&alice),
            broker.socket(),
            &["--json", "publish", "news.py", r#"{"n":1}"#],
        )?;
        let v: Value = serde_json::from_str(stdout(&p).trim())?;
        if v["delivered"] == 1 {
            delivered = 1;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(delivered, 1, "the python subscriber never subscribed");
    let p = wardenctl(
        Some(&alice),
        broker.socket(),
        &["publish", "news.py", r#"{"n":2}"#],
    )?;
    assert_eq!(p.status.code(), Some(0));
    let lines: Vec<Value> = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let status = sub.wait()?;
    assert_eq!(status.code(), Some(0));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["data"]["n"], 1, "{lines:?}");
    assert_eq!(lines[1]["data"]["n"], 2, "{lines:?}");
    assert_eq!(lines[1]["publisher"]["uid"], alice.uid, "{lines:?}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn python_client_provides_and_unprovides() -> anyhow::Result<()> {
    let dir = TestDir::new("python-unprovide")?;
    let text = config_text(&dir, &format!("[limits]\ncall_timeout_ms = 300\n{RULES}"));
    let broker = BrokerProcess::start(&dir, &text)?;
    let lib_dir = client_dir()?;
    // Provides svc.py, says so, waits for one line, unprovides, says so.
    let script = format!(
        "import sys\n\
         sys.path.insert(0, {lib_dir:?})\n\
         import warden_client\n\
         c = warden_client.Client({sock:?})\n\
         print(c.provide('svc.py'), flush=True)\n\
         sys.stdin.readline()\n\
         print(c.unprovide('svc.py'), flush=True)\n\
         sys.stdin.readline()\n",
        sock = broker.socket_str(),
    );
    let mut py = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdin = py.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let mut lines = BufReader::new(
        py.stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .lines();
    let mut next = || -> anyhow::Result<String> {
        lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("python exited"))?
            .map_err(Into::into)
    };
    assert!(next()?.contains("svc.py"));
    // Provided: the call is routed to the Python side, which does not
    // answer it: timeout.
    let caller = call_svc_py(broker.socket())?;
    assert_eq!(caller, "timeout", "while provided");
    use std::io::Write;
    stdin.write_all(b"\n")?;
    assert!(next()?.contains("svc.py"));
    let caller = call_svc_py(broker.socket())?;
    assert_eq!(caller, "unknown_method", "after unprovide");
    stdin.write_all(b"\n")?;
    drop(stdin);
    let _ = py.wait();
    Ok(())
}

/// Calls svc.py (the broker's call timeout is 300 ms); the error code,
/// or "reply".
fn call_svc_py(socket: &Path) -> anyhow::Result<String> {
    let mut c = warden_testkit::RawConn::connect(socket)?;
    c.hello()?;
    let v = c.call(1, "svc.py", serde_json::json!({}))?;
    Ok(v["error"]["code"].as_str().unwrap_or("reply").to_owned())
}
