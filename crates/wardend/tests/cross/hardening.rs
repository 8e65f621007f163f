//! Attacks on the broker and on the operators who run its tools, each
//! named after what the attacker tries (docs/security.md, "Tested
//! attacks").

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use warden_testkit::{
    bin_path, command_as, config_text, output_with_timeout, wardenctl, BrokerProcess, RawConn,
    TestDir,
};

use crate::{stderr, stdout, users, RULES};

const MONITOR_RULE: &str = r#"
[[rule]]
actions = ["monitor"]
names = ["calls"]
admins = true
"#;

// What a hostile caller names itself (in the script below): an OSC that
// retitles the terminal, a bidi override, and a "clear screen" (15 bytes,
// the most `comm` holds).

/// Bytes that must never reach a terminal from a peer-chosen string.
fn assert_inert(what: &str, out: &str) {
    assert!(!out.contains('\x1b'), "{what}: raw ESC in:\n{out:?}");
    assert!(!out.contains('\x07'), "{what}: raw BEL in:\n{out:?}");
    assert!(
        !out.contains('\u{202e}'),
        "{what}: raw bidi override in:\n{out:?}"
    );
    assert!(
        out.contains("\\x1b]0;pwn\\x07\\u{202e}\\x1b[2J"),
        "{what}: the name is not shown escaped:\n{out}"
    );
}

#[test]
#[ignore = "needs root"]
fn a_caller_named_with_escape_sequences_cannot_reach_an_admins_terminal() -> anyhow::Result<()> {
    let (_, bob, _) = users("a_caller_named_with_escape_sequences_cannot_reach_an_admins_terminal");
    let dir = TestDir::new("hostile-comm")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &format!("{RULES}{MONITOR_RULE}")))?;
    let lib_dir = crate::python::client_dir()?;
    // The attacker: renames itself, connects, and keeps calling.
    let script = format!(
        "import sys, time\n\
         sys.path.insert(0, {lib_dir:?})\n\
         open('/proc/self/comm', 'w').write('\\x1b]0;pwn\\x07\\u202e\\x1b[2J')\n\
         import warden_client\n\
         c = warden_client.Client({sock:?})\n\
         c.call('warden.ping')\n\
         print('ready', flush=True)\n\
         for _ in range(300):\n\
         \x20   c.call('warden.ping')\n\
         \x20   time.sleep(0.1)\n",
        sock = broker.socket_str(),
    );
    let mut evil = command_as(&bob, Path::new("/usr/bin/python3"))
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(
        evil.stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "the hostile client said {line:?}");

    let out = wardenctl(None, broker.socket(), &["status"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_inert("status", &stdout(&out));
    let out = wardenctl(None, broker.socket(), &["top"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_inert("top", &stdout(&out));
    let out = wardenctl(
        None,
        broker.socket(),
        &["monitor", "--user", &bob.name, "--count", "1"],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_inert("monitor", &stdout(&out));
    let _ = evil.kill();
    let _ = evil.wait();
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_deny_rule_naming_a_missing_user_cannot_weaken_the_policy() -> anyhow::Result<()> {
    let (_, bob, _) = users("a_deny_rule_naming_a_missing_user_cannot_weaken_the_policy");
    let dir = TestDir::new("deny-missing")?;
    // As during a directory outage, the deny rule's user does not resolve.
    let weakened = RULES.replace("users = [\"wdn_bob\"]", "users = [\"wdn_no_such_user\"]");
    assert_ne!(
        weakened, RULES,
        "the deny rule for wdn_bob moved: update this test"
    );
    let bad = dir.path().join("weakened.toml");
    std::fs::write(&bad, config_text(&dir, &weakened))?;
    let out = output_with_timeout(
        Command::new(bin_path("wardend"))
            .arg("--check-config")
            .arg("--config")
            .arg(&bad),
        Duration::from_secs(30),
    )?;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"wdn_no_such_user\" not found or lookup failed") && err.contains("users"),
        "{err}"
    );

    // A running broker keeps its policy when a reload would weaken it.
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let denied = || -> anyhow::Result<bool> {
        let out = wardenctl(Some(&bob), broker.socket(), &["call", "svc.secret"])?;
        Ok(stderr(&out).starts_with("error: denied:"))
    };
    assert!(denied()?, "wdn_bob is not denied svc.secret to begin with");
    std::fs::write(dir.path().join("warden.toml"), config_text(&dir, &weakened))?;
    broker.signal(nix::sys::signal::Signal::SIGHUP)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !broker.log().contains("keeping the old policy") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        broker.log().contains("not found or lookup failed"),
        "{}",
        broker.log()
    );
    assert!(
        denied()?,
        "the reload let wdn_bob through to the allow rule"
    );
    Ok(())
}

#[test]
fn a_panic_in_a_handler_answers_internal_and_the_broker_serves_on() -> anyhow::Result<()> {
    let dir = TestDir::new("panic-handler")?;
    let rules = format!(
        "{RULES}\n[[rule]]\nactions = [\"call\"]\nnames = [\"test.**\"]\neveryone = true\n"
    );
    let mut broker = BrokerProcess::start_hooks(&dir, &config_text(&dir, &rules), &[])?;
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    let r = c.call(1, "test.panic_in_handler", json!(null))?;
    assert_eq!(r["error"]["code"], "internal", "{r}");
    // The same connection and new ones are served.
    assert_eq!(
        c.call(2, "warden.ping", json!(null))?["result"]["pong"],
        true
    );
    let mut other = RawConn::connect(broker.socket())?;
    other.hello()?;
    assert_eq!(
        other.call(1, "warden.ping", json!(null))?["result"]["pong"],
        true
    );
    assert!(broker.try_wait()?.is_none(), "the broker exited");
    assert!(
        broker.log().contains("panic"),
        "the panic was not logged:\n{}",
        broker.log()
    );
    Ok(())
}

#[test]
fn a_panic_in_a_connection_task_stops_the_broker_with_status_70() -> anyhow::Result<()> {
    // Without test hooks the method is nothing special.
    let dir = TestDir::new("panic-conn-off")?;
    let mut broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    let r = c.call(1, warden::TEST_PANIC_METHOD, json!(null))?;
    assert_eq!(r["kind"], "error", "{r}");
    assert!(
        broker.try_wait()?.is_none(),
        "a broker without test hooks exited"
    );
    drop(broker);

    let dir = TestDir::new("panic-conn")?;
    let mut broker = BrokerProcess::start_hooks(&dir, &config_text(&dir, RULES), &[])?;
    let mut bystander = RawConn::connect(broker.socket())?;
    bystander.hello()?;
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    c.send_json(
        &json!({"kind": "call", "id": 1, "method": warden::TEST_PANIC_METHOD, "params": null}),
    )?;
    let status = broker.wait_exit(Duration::from_secs(20))?;
    assert_eq!(
        status.code(),
        Some(70),
        "wardend exited with {status}:\n{}",
        broker.log()
    );
    let log = broker.log();
    assert!(log.contains("a connection task panicked"), "{log}");
    // Nobody is left talking to a broker with inconsistent state.
    assert!(bystander.closed(), "the other connection is still open");
    Ok(())
}
