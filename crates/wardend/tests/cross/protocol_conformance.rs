//! docs/protocol.md, case by case, against a real wardend: each test is one
//! documented behaviour and asserts the exact frames the broker sends
//! (issue 13 item 8: "the protocol exactly as documented").

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use warden_testkit::{config_text, output_with_timeout, BrokerProcess, RawConn, TestDir};

use crate::{stderr, stdout, users, RULES};

/// Root may monitor calls (the tests run as root).
const MONITOR_RULE: &str = r#"
[[rule]]
actions = ["monitor"]
names = ["calls"]
uids = [0]
"#;

fn start(tag: &str, limits: &str) -> anyhow::Result<(TestDir, BrokerProcess)> {
    let dir = TestDir::new(tag)?;
    let conf = format!("{limits}\n{RULES}{MONITOR_RULE}");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    Ok((dir, broker))
}

fn connect(broker: &BrokerProcess) -> anyhow::Result<RawConn> {
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    Ok(c)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// Asserts `v` is an error frame with exactly `id` (absent for `None`) and
/// `code`; returns its message.
fn assert_error(v: &Value, id: Option<u64>, code: &str) -> String {
    let mut keys: Vec<&str> = v
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    let want: &[&str] = if id.is_some() {
        &["error", "id", "kind"]
    } else {
        &["error", "kind"]
    };
    assert_eq!(keys, want, "{v}");
    assert_eq!(v["kind"], "error", "{v}");
    if let Some(id) = id {
        assert_eq!(v["id"], id, "{v}");
    }
    assert_eq!(v["error"]["code"], code, "{v}");
    v["error"]["message"].as_str().unwrap_or("").to_owned()
}

/// Asserts that no frame arrives within `ms`.
fn assert_silent(c: &mut RawConn, ms: u64) {
    c.stream
        .set_read_timeout(Some(Duration::from_millis(ms)))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = c.recv();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("{e}"));
    match r {
        Err(e) => {
            let kind = e.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
            assert!(
                matches!(
                    kind,
                    Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                ),
                "{e:#}"
            );
        }
        Ok(v) => panic!("expected no frame, got {v:?}"),
    }
}

/// The connection still answers (and nothing else was waiting before the
/// answer).
fn assert_open(c: &mut RawConn, id: u64) {
    let r = c
        .call(id, "warden.ping", json!(null))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r, json!({"kind":"reply","id":id,"result":{"pong":true}}));
}

fn reply(id: u64, result: Value) -> Value {
    json!({"kind": "reply", "id": id, "result": result})
}

// ---- handshake -----------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn hello_version_above_u32_is_negotiated_down() -> anyhow::Result<()> {
    users("hello_version_above_u32_is_negotiated_down");
    let (_dir, broker) = start("pc-ver", "")?;
    for version in [2u64, 1 << 32, u64::MAX] {
        let mut c = RawConn::connect(broker.socket())?;
        c.send_json(&json!({"kind": "hello", "version": version}))?;
        let w = c.recv_some()?;
        assert_eq!(w["kind"], "welcome", "{version}: {w}");
        assert_eq!(w["version"], 1, "{version}: {w}");
        assert_open(&mut c, 1);
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn hello_version_that_is_not_an_integer_from_1_to_u64_max_is_refused() -> anyhow::Result<()> {
    users("hello_version_that_is_not_an_integer_from_1_to_u64_max_is_refused");
    let (_dir, broker) = start("pc-badver", "")?;
    for v in [
        "0",
        "18446744073709551616",
        "-1",
        "1.5",
        "1.0",
        "1e0",
        "\"1\"",
    ] {
        let mut c = RawConn::connect(broker.socket())?;
        c.send_bytes(&frame(
            format!(r#"{{"kind":"hello","version":{v}}}"#).as_bytes(),
        ))?;
        assert_error(&c.recv_some()?, None, "bad_request");
        assert!(c.closed(), "{v}: still open");
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_second_hello_is_bad_request_without_id_and_the_connection_stays() -> anyhow::Result<()> {
    users("a_second_hello_is_bad_request_without_id_and_the_connection_stays");
    let (_dir, broker) = start("pc-hello2", "")?;
    let mut c = connect(&broker)?;
    c.send_json(&json!({"kind": "hello", "version": 1}))?;
    let m = assert_error(&c.recv_some()?, None, "bad_request");
    assert!(m.contains("hello was already received"), "{m}");
    assert_open(&mut c, 1);
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn errors_before_the_hello_close_the_connection_even_with_an_id() -> anyhow::Result<()> {
    users("errors_before_the_hello_close_the_connection_even_with_an_id");
    let (_dir, broker) = start("pc-prehello", "")?;
    // A valid call as the first frame.
    let mut c = RawConn::connect(broker.socket())?;
    c.send_json(&json!({"kind": "call", "id": 4, "method": "warden.ping"}))?;
    let m = assert_error(&c.recv_some()?, Some(4), "bad_request");
    assert!(m.contains("the first frame must be a hello"), "{m}");
    assert!(c.closed());
    // An invalid envelope with a readable id as the first frame.
    let mut c = RawConn::connect(broker.socket())?;
    c.send_json(&json!({"kind": "call", "id": 3, "method": "a..b"}))?;
    assert_error(&c.recv_some()?, Some(3), "bad_request");
    assert!(c.closed());
    // A malformed invitation.
    let mut c = RawConn::connect(broker.socket())?;
    c.send_json(&json!({"kind": "hello", "version": 1, "invitation": "x"}))?;
    assert_error(&c.recv_some()?, None, "bad_request");
    assert!(c.closed());
    Ok(())
}

/// Runs the Python client as `wdn_alice` with exactly `groups`, printing
/// the welcome's identity and warden.whoami's answer.
fn identity_with_groups(
    broker: &BrokerProcess,
    user: &warden_testkit::TestUser,
    groups: &[u32],
) -> anyhow::Result<(Value, Value)> {
    let list: Vec<String> = groups.iter().map(u32::to_string).collect();
    let program = format!(
        "import json, sys\nsys.path.insert(0, {dir:?})\nimport warden_client as wc\n\
         c = wc.Client({sock:?})\n\
         print(json.dumps([c.welcome['identity'], c.call('warden.whoami')]))\n",
        dir = crate::python::client_dir()?,
        sock = broker.socket_str(),
    );
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg(format!("--groups={}", list.join(",")))
        .arg("--")
        .arg(Path::new("/usr/bin/python3"))
        .args(["-c", &program]);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(30))?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim())?;
    Ok((v[0].clone(), v[1].clone()))
}

#[test]
#[ignore = "needs root"]
fn groups_are_the_kernels_list_sorted_without_the_primary_gid() -> anyhow::Result<()> {
    let (alice, _, _) = users("groups_are_the_kernels_list_sorted_without_the_primary_gid");
    let (_dir, broker) = start("pc-groups", "")?;
    let (welcome, whoami) = identity_with_groups(&broker, &alice, &[30300, 30100, 30200, 30100])?;
    assert_eq!(welcome["uid"], alice.uid, "{welcome}");
    assert_eq!(welcome["gid"], alice.gid, "{welcome}");
    // Ascending, as the kernel keeps them; duplicates kept; the primary
    // gid only if it is also a supplementary group (here it is not).
    assert_eq!(
        welcome["groups"],
        json!([30100, 30100, 30200, 30300]),
        "{welcome}"
    );
    for k in ["uid", "gid", "groups", "pid"] {
        assert_eq!(whoami[k], welcome[k], "{k}: {whoami} vs {welcome}");
    }
    // With the primary gid in the list, it is listed like any other.
    let (welcome, _) = identity_with_groups(&broker, &alice, &[alice.gid, 5])?;
    let mut want = vec![5, alice.gid];
    want.sort_unstable();
    assert_eq!(welcome["groups"], json!(want), "{welcome}");
    Ok(())
}

// ---- errors and ids ------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn an_error_without_id_after_the_hello_leaves_the_connection_open() -> anyhow::Result<()> {
    users("an_error_without_id_after_the_hello_leaves_the_connection_open");
    let (_dir, broker) = start("pc-noid", "")?;
    let mut c = connect(&broker)?;
    c.send_bytes(&frame(b"\x00\xffnot json"))?;
    assert_error(&c.recv_some()?, None, "bad_request");
    c.send_json(&json!({"kind": "call", "id": 0, "method": "warden.ping"}))?;
    let m = assert_error(&c.recv_some()?, None, "bad_request");
    assert!(m.contains("out of range"), "{m}");
    c.send_json(&json!({"kind": "call", "id": 9_007_199_254_740_992u64, "method": "warden.ping"}))?;
    assert_error(&c.recv_some()?, None, "bad_request");
    // An error frame without id from the client gets no answer.
    c.send_json(&json!({"kind": "error", "error": {"code": "internal", "message": "x"}}))?;
    assert_silent(&mut c, 200);
    assert_open(&mut c, 1);
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn an_envelope_nested_too_deeply_gets_its_id_back() -> anyhow::Result<()> {
    users("an_envelope_nested_too_deeply_gets_its_id_back");
    let (_dir, broker) = start("pc-deep", "")?;
    let mut c = connect(&broker)?;
    // Depth 33: the envelope (1) and 32 arrays.
    let deep = format!(
        r#"{{"kind":"call","id":9,"method":"warden.echo","params":{}0{}}}"#,
        "[".repeat(32),
        "]".repeat(32)
    );
    c.send_bytes(&frame(deep.as_bytes()))?;
    let m = assert_error(&c.recv_some()?, Some(9), "bad_request");
    assert!(m.contains("nested deeper than 32"), "{m}");
    // Depth 32 is fine.
    let ok = format!(
        r#"{{"kind":"call","id":10,"method":"warden.echo","params":{}0{}}}"#,
        "[".repeat(31),
        "]".repeat(31)
    );
    c.send_bytes(&frame(ok.as_bytes()))?;
    let r = c.recv_some()?;
    assert_eq!(
        (r["kind"].clone(), r["id"].clone()),
        (json!("reply"), json!(10)),
        "{r}"
    );
    // Invalid JSON after a readable id.
    c.send_bytes(&frame(br#"{"kind":"call","id":11,"method":"#))?;
    assert_error(&c.recv_some()?, Some(11), "bad_request");
    assert_open(&mut c, 12);
    Ok(())
}

// ---- calls and providers -------------------------------------------------

#[test]
#[ignore = "needs root"]
fn providing_the_same_name_twice_on_one_connection_replies_again() -> anyhow::Result<()> {
    users("providing_the_same_name_twice_on_one_connection_replies_again");
    let (_dir, broker) = start("pc-prov2", "")?;
    let mut p = connect(&broker)?;
    for id in [1, 2] {
        p.send_json(&json!({"kind": "provide", "id": id, "method": "svc.twice"}))?;
        assert_eq!(p.recv_some()?, reply(id, json!({"method": "svc.twice"})));
    }
    // Still one provider: calls reach it.
    let mut c = connect(&broker)?;
    c.send_json(&json!({"kind": "call", "id": 5, "method": "svc.twice"}))?;
    let routed = p.recv_some()?;
    assert_eq!(routed["id"], 1, "{routed}");
    p.send_json(&reply(1, json!("ok")))?;
    assert_eq!(c.recv_some()?, reply(5, json!("ok")));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn an_answer_to_an_unknown_id_is_ignored() -> anyhow::Result<()> {
    users("an_answer_to_an_unknown_id_is_ignored");
    let (_dir, broker) = start("pc-unknownid", "")?;
    let mut c = connect(&broker)?;
    c.send_json(&reply(77, json!(1)))?;
    c.send_json(
        &json!({"kind": "error", "id": 78, "error": {"code": "internal", "message": "x"}}),
    )?;
    assert_silent(&mut c, 200);
    assert_open(&mut c, 1);
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn reusing_an_outstanding_call_id_is_bad_request_and_the_first_call_stays() -> anyhow::Result<()> {
    users("reusing_an_outstanding_call_id_is_bad_request_and_the_first_call_stays");
    let (_dir, broker) = start("pc-reuse", "")?;
    let mut p = connect(&broker)?;
    p.send_json(&json!({"kind": "provide", "id": 1, "method": "svc.hold"}))?;
    p.recv_some()?;
    let mut c = connect(&broker)?;
    c.send_json(&json!({"kind": "call", "id": 5, "method": "svc.hold", "params": 1}))?;
    let routed = p.recv_some()?;
    assert_eq!(routed["params"], 1, "{routed}");
    c.send_json(&json!({"kind": "call", "id": 5, "method": "svc.hold", "params": 2}))?;
    let m = assert_error(&c.recv_some()?, Some(5), "bad_request");
    assert!(m.contains("already in flight"), "{m}");
    assert_silent(&mut p, 200);
    // A built-in call with the same id is answered (only calls routed to
    // a provider are checked).
    assert_open(&mut c, 5);
    p.send_json(&reply(routed["id"].as_u64().unwrap_or(0), json!("first")))?;
    assert_eq!(c.recv_some()?, reply(5, json!("first")));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_cancel_from_a_provider_names_only_its_own_calls() -> anyhow::Result<()> {
    users("a_cancel_from_a_provider_names_only_its_own_calls");
    let (_dir, broker) = start("pc-pcancel", "")?;
    let mut p = connect(&broker)?;
    p.send_json(&json!({"kind": "provide", "id": 1, "method": "svc.hold"}))?;
    p.recv_some()?;
    let mut c = connect(&broker)?;
    c.send_json(&json!({"kind": "call", "id": 7, "method": "svc.hold"}))?;
    let routed = p.recv_some()?;
    let bid = routed["id"].as_u64().unwrap_or(0);
    // A cancel with the broker's id of the routed call, and one with an
    // unknown id: nothing happens, nobody gets a frame.
    p.send_json(&json!({"kind": "cancel", "id": bid}))?;
    p.send_json(&json!({"kind": "cancel", "id": 999}))?;
    assert_silent(&mut p, 200);
    assert_silent(&mut c, 100);
    // The routed call is still pending: the provider's answer arrives.
    p.send_json(&reply(bid, json!("done")))?;
    assert_eq!(c.recv_some()?, reply(7, json!("done")));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_providers_answer_too_large_once_addressed_is_too_large() -> anyhow::Result<()> {
    users("a_providers_answer_too_large_once_addressed_is_too_large");
    let (_dir, broker) = start("pc-toolarge", "[limits]\nmax_frame_bytes = 4096\n")?;
    let mut p = connect(&broker)?;
    p.send_json(&json!({"kind": "provide", "id": 1, "method": "svc.big"}))?;
    p.recv_some()?;
    let mut c = connect(&broker)?;
    let caller_id = 9_007_199_254_740_991u64;
    c.send_json(&json!({"kind": "call", "id": caller_id, "method": "svc.big"}))?;
    let routed = p.recv_some()?;
    let bid = routed["id"].as_u64().unwrap_or(0);
    // The provider's answer is exactly 4096 bytes; with the caller's
    // 16-digit id it would not fit.
    let head = format!(r#"{{"kind":"reply","id":{bid},"result":""#);
    let body = format!("{head}{}\"}}", "x".repeat(4096 - head.len() - 2));
    assert_eq!(body.len(), 4096);
    p.send_bytes(&frame(body.as_bytes()))?;
    let m = assert_error(&c.recv_some()?, Some(caller_id), "too_large");
    assert!(m.contains("frame limit"), "{m}");
    assert_open(&mut c, 1);
    assert_open(&mut p, 2);
    Ok(())
}

// ---- publish / subscribe -------------------------------------------------

#[test]
#[ignore = "needs root"]
fn unsubscribing_from_a_topic_never_subscribed_replies_with_the_topic() -> anyhow::Result<()> {
    users("unsubscribing_from_a_topic_never_subscribed_replies_with_the_topic");
    let (_dir, broker) = start("pc-unsub", "")?;
    let mut c = connect(&broker)?;
    c.send_json(&json!({"kind": "unsubscribe", "id": 1, "topic": "news.never"}))?;
    assert_eq!(c.recv_some()?, reply(1, json!({"topic": "news.never"})));
    // Even where policy would not allow subscribing.
    c.send_json(&json!({"kind": "unsubscribe", "id": 2, "topic": "secret.x"}))?;
    assert_eq!(c.recv_some()?, reply(2, json!({"topic": "secret.x"})));
    Ok(())
}

fn subscribe(c: &mut RawConn, id: u64, topic: &str) -> anyhow::Result<()> {
    c.send_json(&json!({"kind": "subscribe", "id": id, "topic": topic}))?;
    assert_eq!(c.recv_some()?, reply(id, json!({"topic": topic})));
    Ok(())
}

/// Publishes and returns (delivered, dropped).
fn publish(c: &mut RawConn, id: u64, topic: &str, data: Value) -> anyhow::Result<(u64, u64)> {
    c.send_json(&json!({"kind": "publish", "id": id, "topic": topic, "data": data}))?;
    let r = c.recv_some()?;
    assert_eq!(
        (r["kind"].clone(), r["id"].clone()),
        (json!("reply"), json!(id)),
        "{r}"
    );
    Ok((
        r["result"]["delivered"].as_u64().unwrap_or(u64::MAX),
        r["result"]["dropped"].as_u64().unwrap_or(u64::MAX),
    ))
}

#[test]
#[ignore = "needs root"]
fn drops_are_reported_in_a_lagged_frame_when_the_queue_empties() -> anyhow::Result<()> {
    users("drops_are_reported_in_a_lagged_frame_when_the_queue_empties");
    let (_dir, broker) = start("pc-lagged", "[limits]\nsubscriber_queue_len = 2\n")?;
    let mut sub = connect(&broker)?;
    subscribe(&mut sub, 1, "news.lag")?;
    let mut publ = connect(&broker)?;
    let pad = "x".repeat(8000);
    // The subscriber does not read. Paced, so that once the first event is
    // dropped (its socket, the broker's write buffer and its queue are
    // full) every later one is too.
    let (mut delivered, mut dropped) = (Vec::new(), 0u64);
    for n in 1..=200u64 {
        let (d, x) = publish(&mut publ, n, "news.lag", json!({"n": n, "pad": pad}))?;
        if d == 1 {
            assert_eq!(dropped, 0, "event {n} delivered after a drop");
            delivered.push(n);
        }
        dropped += x;
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(dropped > 0, "nothing was dropped");
    // Now it reads: the delivered events, none with `missed`, then one
    // lagged frame with the count, then nothing.
    for n in &delivered {
        let v = sub.recv_some()?;
        assert_eq!(v["kind"], "event", "{v}");
        assert_eq!(v["data"]["n"], *n, "{v}");
        assert!(v.get("missed").is_none(), "{v}");
    }
    assert_eq!(
        sub.recv_some()?,
        json!({"kind": "lagged", "missed": dropped})
    );
    assert_silent(&mut sub, 200);
    // The next event carries no count.
    assert_eq!(publish(&mut publ, 201, "news.lag", json!(1))?, (1, 0));
    let v = sub.recv_some()?;
    assert_eq!(
        (v["data"].clone(), v.get("missed")),
        (json!(1), None),
        "{v}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn drops_are_reported_in_the_next_queued_events_missed() -> anyhow::Result<()> {
    users("drops_are_reported_in_the_next_queued_events_missed");
    // The subscriber's uid may have 64 KiB waiting: a 100 KB event is
    // dropped for it while its queue is empty, so no lagged frame is sent
    // and the count rides on the next event queued.
    let (_dir, broker) = start("pc-missed", "[limits]\nmax_queued_bytes_per_uid = 65536\n")?;
    let mut sub = connect(&broker)?;
    subscribe(&mut sub, 1, "news.drop")?;
    let mut publ = connect(&broker)?;
    let publisher = publ.call(1, "warden.whoami", json!(null))?["result"].clone();
    let big = "x".repeat(100_000);
    assert_eq!(publish(&mut publ, 2, "news.drop", json!(big))?, (0, 1));
    assert_eq!(publish(&mut publ, 3, "news.drop", json!(big))?, (0, 1));
    assert_silent(&mut sub, 200);
    assert_eq!(
        publish(&mut publ, 4, "news.drop", json!({"up": false}))?,
        (1, 0)
    );
    let ident = json!({
        "uid": publisher["uid"], "gid": publisher["gid"],
        "groups": publisher["groups"], "pid": publisher["pid"],
    });
    assert_eq!(
        sub.recv_some()?,
        json!({"kind": "event", "topic": "news.drop", "data": {"up": false},
               "publisher": ident, "missed": 2})
    );
    assert_silent(&mut sub, 200);
    Ok(())
}

/// Reads `frames` frames, counting events and the drops they and lagged
/// frames report.
fn read_counting(
    sub: &mut RawConn,
    frames: usize,
    got: &mut u64,
    reported: &mut u64,
) -> anyhow::Result<()> {
    for _ in 0..frames {
        let v = sub.recv_some()?;
        match v["kind"].as_str() {
            Some("event") => {
                *got += 1;
                *reported += v["missed"].as_u64().unwrap_or(0);
            }
            Some("lagged") => *reported += v["missed"].as_u64().unwrap_or(0),
            _ => anyhow::bail!("unexpected {v}"),
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn missed_plus_lagged_adds_up_to_the_publishers_dropped() -> anyhow::Result<()> {
    users("missed_plus_lagged_adds_up_to_the_publishers_dropped");
    let (_dir, broker) = start("pc-sum", "[limits]\nsubscriber_queue_len = 8\n")?;
    let mut sub = connect(&broker)?;
    subscribe(&mut sub, 1, "news.sum")?;
    let mut publ = connect(&broker)?;
    let pad = "y".repeat(4000);
    let (mut delivered, mut dropped, mut id) = (0u64, 0u64, 1u64);
    let (mut got, mut reported) = (0u64, 0u64);
    // Not reading; then reading a little while publishing goes on; then
    // not reading again.
    for round in 0..3 {
        for _ in 0..300 {
            id += 1;
            let (d, x) = publish(&mut publ, id, "news.sum", json!({"n": id, "pad": pad}))?;
            delivered += d;
            dropped += x;
        }
        if round < 2 {
            read_counting(&mut sub, 20, &mut got, &mut reported)?;
        }
    }
    assert!(dropped > 0, "nothing was dropped");
    // Read everything that was delivered; the reports arrive at the latest
    // right after the last event.
    while got < delivered {
        read_counting(&mut sub, 1, &mut got, &mut reported)?;
    }
    // A lagged frame may still follow the last event.
    sub.stream
        .set_read_timeout(Some(Duration::from_millis(300)))?;
    while let Ok(Some(v)) = sub.recv() {
        assert_eq!(v["kind"], "lagged", "{v}");
        reported += v["missed"].as_u64().unwrap_or(0);
    }
    assert_eq!(got, delivered);
    assert_eq!(reported, dropped, "reported {reported} of {dropped} drops");
    Ok(())
}

// ---- monitoring ----------------------------------------------------------

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort_unstable();
    k
}

#[test]
#[ignore = "needs root"]
fn monitor_events_have_the_documented_fields() -> anyhow::Result<()> {
    users("monitor_events_have_the_documented_fields");
    let (dir, broker) = start("pc-monitor", "")?;
    let conf = dir.path().join("warden.toml");
    let mut mon = connect(&broker)?;
    subscribe(&mut mon, 1, "warden.monitor")?;
    let mut c = connect(&broker)?;
    let me = c.call(1, "warden.whoami", json!(null))?["result"].clone();
    let next = |mon: &mut RawConn| -> anyhow::Result<Value> {
        let v = mon.recv_some()?;
        assert_eq!(keys(&v), ["data", "kind", "topic"], "{v}");
        assert_eq!(
            (v["kind"].clone(), v["topic"].clone()),
            (json!("event"), json!("warden.monitor"))
        );
        let d = v["data"].clone();
        assert_eq!(d["conn"], me["connection"], "{d}");
        assert_eq!(d["uid"], me["uid"], "{d}");
        assert_eq!(d["gid"], me["gid"], "{d}");
        assert_eq!(d["pid"], me["pid"], "{d}");
        assert!(d["comm"].is_string() || d["comm"].is_null(), "{d}");
        assert!(
            d["time_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000),
            "{d}"
        );
        assert_eq!(d["redacted"], true, "{d}");
        Ok(d)
    };
    let allowed = |rule: &Value| {
        let r = rule.as_str().unwrap_or("");
        assert!(
            r.starts_with("allowed by rule ") && r.contains(&format!(" at {}:", conf.display())),
            "{rule}"
        );
    };
    // The whoami above: a call and its reply.
    let common = [
        "comm", "conn", "gid", "id", "kind", "method", "pid", "redacted", "rule", "time_ms", "uid",
    ];
    let d = next(&mut mon)?;
    assert_eq!(keys(&d), common, "{d}");
    assert_eq!(
        (d["kind"].clone(), d["id"].clone(), d["method"].clone()),
        (json!("call"), json!(1), json!("warden.whoami"))
    );
    allowed(&d["rule"]);
    let answer_keys: Vec<&str> = {
        let mut k = common.to_vec();
        k.extend(["code", "latency_us"]);
        k.sort_unstable();
        k
    };
    let d = next(&mut mon)?;
    assert_eq!(keys(&d), answer_keys, "{d}");
    assert_eq!(
        (d["kind"].clone(), d["code"].clone()),
        (json!("reply"), json!("ok")),
        "{d}"
    );
    assert!(d["latency_us"].is_u64(), "{d}");
    allowed(&d["rule"]);
    // A call nobody serves: the call, then an error answer.
    c.call(2, "svc.nobody", json!(null))?;
    let d = next(&mut mon)?;
    assert_eq!(d["kind"], "call", "{d}");
    let d = next(&mut mon)?;
    assert_eq!(
        (d["kind"].clone(), d["code"].clone(), d["id"].clone()),
        (json!("error"), json!("unknown_method"), json!(2)),
        "{d}"
    );
    // A denied call: only the error answer, with the default deny.
    c.call(3, "other.thing", json!(null))?;
    let d = next(&mut mon)?;
    assert_eq!(keys(&d), answer_keys, "{d}");
    assert_eq!(
        (d["kind"].clone(), d["code"].clone()),
        (json!("error"), json!("denied")),
        "{d}"
    );
    assert_eq!(d["rule"], "no rule matched: default deny", "{d}");
    // A publication.
    publish(&mut c, 4, "news.mon", json!(1))?;
    let d = next(&mut mon)?;
    assert_eq!(
        keys(&d),
        [
            "comm",
            "conn",
            "delivered",
            "dropped",
            "gid",
            "kind",
            "pid",
            "redacted",
            "rule",
            "time_ms",
            "topic",
            "uid"
        ],
        "{d}"
    );
    assert_eq!(
        (
            d["kind"].clone(),
            d["topic"].clone(),
            d["delivered"].clone(),
            d["dropped"].clone()
        ),
        (json!("publish"), json!("news.mon"), json!(0), json!(0))
    );
    allowed(&d["rule"]);
    assert_silent(&mut mon, 200);
    Ok(())
}
