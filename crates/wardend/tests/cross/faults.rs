//! Fault runs: what a caller sees when a provider dies or hangs, when the
//! broker is stopped with calls in flight or killed and restarted, and when
//! its configuration disappears under a reload. Each prints one
//! `fault: ...` line with what it measured (`scripts/fault-runs` collects
//! them); the assertions are about behaviour, with generous liveness
//! bounds, never about speed.
//!
//! Elsewhere: a killed broker leaves no host behind
//! (`hosts::broker_sigkill_leaves_no_host_nor_a_grandchild_behind`), and
//! no learning session (`learn`, "the broker is SIGKILLed mid-capture");
//! running out of descriptors (`fds`, `lifecycle::out_of_descriptors_*`).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use warden_testkit::{config_text, BrokerProcess, RawConn, TestDir};

use crate::{provider, users, RULES};

fn conn(socket: &std::path::Path) -> anyhow::Result<RawConn> {
    let mut c = RawConn::connect(socket)?;
    c.hello()?;
    Ok(c)
}

/// Reads until the answer to call `id` (skipping anything else).
fn answer(c: &mut RawConn, id: u64) -> anyhow::Result<Value> {
    loop {
        let f = c.recv_some()?;
        if f["id"] == id && (f["kind"] == "reply" || f["kind"] == "error") {
            return Ok(f);
        }
    }
}

#[test]
#[ignore = "needs root"]
fn a_provider_killed_mid_call_is_answered_unavailable_at_once() -> anyhow::Result<()> {
    let (alice, _, _) = users("a_provider_killed_mid_call_is_answered_unavailable");
    let dir = TestDir::new("fault-kill")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let mut p = provider(&alice, broker.socket(), "svc.slow", 20_000)?;
    let mut c = conn(broker.socket())?;
    c.send_json(&json!({"kind": "call", "id": 1, "method": "svc.slow"}))?;
    crate::wait_in_flight(broker.socket(), 1)?;
    let killed = Instant::now();
    p.kill()?;
    let a = answer(&mut c, 1)?;
    let after = killed.elapsed();
    let _ = p.wait();
    assert_eq!(a["error"]["code"], "unavailable", "{a}");
    assert!(after < Duration::from_secs(10), "answered after {after:?}");
    // The broker serves on, the caller's connection too.
    assert_eq!(
        c.call(2, "warden.ping", json!(null))?["result"]["pong"],
        true
    );
    eprintln!(
        "fault: provider SIGKILLed mid-call: the caller got unavailable {} ms after the kill",
        after.as_millis()
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_silent_provider_times_out_at_the_deadline_and_is_sent_cancel() -> anyhow::Result<()> {
    users("a_silent_provider_times_out_at_the_deadline");
    let dir = TestDir::new("fault-silent")?;
    let conf = format!("[limits]\ncall_timeout_ms = 500\n{RULES}");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    // A provider (root may provide svc.**) that reads calls and never answers.
    let mut prov = conn(broker.socket())?;
    prov.send_json(&json!({"kind": "provide", "id": 1, "method": "svc.silent"}))?;
    assert_eq!(prov.recv_some()?["kind"], "reply");
    let mut c = conn(broker.socket())?;
    let sent = Instant::now();
    c.send_json(&json!({"kind": "call", "id": 7, "method": "svc.silent"}))?;
    let routed = prov.recv_some()?;
    assert_eq!(routed["kind"], "call", "{routed}");
    let a = answer(&mut c, 7)?;
    let waited = sent.elapsed();
    assert_eq!(a["error"]["code"], "timeout", "{a}");
    assert!(
        waited >= Duration::from_millis(450),
        "answered before the deadline: {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // The provider is told to stop: a cancel naming the broker's id of the call.
    let cancel = prov.recv_some()?;
    assert_eq!(cancel["kind"], "cancel", "{cancel}");
    assert_eq!(cancel["id"], routed["id"], "{cancel}");
    // A late answer is dropped, not delivered.
    prov.send_json(&json!({"kind": "reply", "id": routed["id"], "result": "late"}))?;
    assert_eq!(
        c.call(8, "warden.ping", json!(null))?["result"]["pong"],
        true
    );
    eprintln!(
        "fault: provider never answers: timeout after {} ms (call_timeout_ms 500), provider sent cancel",
        waited.as_millis()
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn sigterm_with_100_calls_in_flight_answers_every_one_and_exits_0() -> anyhow::Result<()> {
    let (alice, _, _) = users("sigterm_with_100_calls_in_flight");
    let dir = TestDir::new("fault-term")?;
    let conf = format!("[limits]\ndrain_timeout_ms = 5000\n{RULES}");
    let mut broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    let _p = provider(&alice, broker.socket(), "svc.slow", 1000)?;
    let mut callers = [conn(broker.socket())?, conn(broker.socket())?];
    for (i, c) in callers.iter_mut().enumerate() {
        for k in 0..50u64 {
            let id = 1 + k + 100 * i as u64;
            c.send_json(&json!({"kind": "call", "id": id, "method": "svc.slow", "params": id}))?;
        }
    }
    crate::wait_in_flight(broker.socket(), 100)?;
    let term = Instant::now();
    broker.signal(Signal::SIGTERM)?;
    let (mut ok, mut other) = (0, Vec::new());
    for (i, c) in callers.iter_mut().enumerate() {
        for k in 0..50u64 {
            let id = 1 + k + 100 * i as u64;
            let a = answer(c, id)?;
            if a["kind"] == "reply" && a["result"]["params"] == id {
                ok += 1;
            } else {
                other.push(a);
            }
        }
    }
    let st = broker.wait_exit(Duration::from_secs(20))?;
    let took = term.elapsed();
    assert!(other.is_empty(), "not answered by the provider: {other:?}");
    assert_eq!(ok, 100);
    assert_eq!(st.code(), Some(0));
    assert!(!broker.socket().exists(), "the socket is removed");
    eprintln!("fault: SIGTERM with 100 calls in flight: {ok}/100 answered by the provider, exit 0 after {} ms", took.as_millis());
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_broker_killed_with_sigkill_restarts_on_its_stale_socket() -> anyhow::Result<()> {
    let (alice, _, _) = users("a_broker_killed_with_sigkill_restarts");
    let dir = TestDir::new("fault-sigkill")?;
    let text = config_text(&dir, RULES);
    let mut broker = BrokerProcess::start(&dir, &text)?;
    let mut p = provider(&alice, broker.socket(), "svc.x", 0)?;
    let mut c = conn(broker.socket())?;
    broker.signal(Signal::SIGKILL)?;
    let _ = broker.wait_exit(Duration::from_secs(10))?;
    // The socket file is left behind, and the clients see their
    // connections end.
    assert!(broker.socket().exists(), "SIGKILL leaves the socket file");
    assert!(c.closed());
    let _ = p.wait();
    drop(broker);
    let restarted = Instant::now();
    let broker = BrokerProcess::start(&dir, &text)?;
    let up = restarted.elapsed();
    assert!(broker.log().contains("stale"), "{}", broker.log());
    let mut c = conn(broker.socket())?;
    assert_eq!(
        c.call(1, "warden.ping", json!(null))?["result"]["pong"],
        true
    );
    // Nothing of the old broker's registry survives: the method has no
    // provider until one connects again.
    let r = c.call(2, "svc.x", json!(null))?;
    assert_eq!(r["error"]["code"], "unknown_method", "{r}");
    let _p = provider(&alice, broker.socket(), "svc.x", 0)?;
    assert_eq!(c.call(3, "svc.x", json!(1))?["kind"], "reply");
    eprintln!(
        "fault: SIGKILL then restart: stale socket reclaimed, serving again {} ms after the start",
        up.as_millis()
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn sighup_with_the_config_deleted_or_unreadable_keeps_the_policy() -> anyhow::Result<()> {
    users("sighup_with_the_config_deleted_or_unreadable");
    let dir = TestDir::new("fault-hup")?;
    let conf = dir.path().join("warden.toml");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let mut c = conn(broker.socket())?;
    let subscribe = |c: &mut RawConn, id: u64| -> anyhow::Result<Value> {
        c.send_json(&json!({"kind": "subscribe", "id": id, "topic": "news.x"}))?;
        answer(c, id)
    };
    assert_eq!(subscribe(&mut c, 1)?["kind"], "reply");
    let wait_log = |needle: &str, count: usize| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while broker.log().matches(needle).count() < count {
            anyhow::ensure!(
                Instant::now() < deadline,
                "never logged {needle:?}:\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    // Deleted.
    std::fs::remove_file(&conf)?;
    broker.signal(Signal::SIGHUP)?;
    wait_log("keeping the old policy", 1)?;
    assert!(
        broker.log().contains("cannot read the config file"),
        "{}",
        broker.log()
    );
    // Unreadable even for root: a directory in its place.
    std::fs::create_dir(&conf)?;
    broker.signal(Signal::SIGHUP)?;
    wait_log("keeping the old policy", 2)?;
    // The connection, its subscription and the policy are as they were.
    assert_eq!(
        c.call(2, "warden.ping", json!(null))?["result"]["pong"],
        true
    );
    assert_eq!(subscribe(&mut c, 3)?["kind"], "reply");
    let mut fresh = conn(broker.socket())?;
    assert_eq!(
        subscribe(&mut fresh, 1)?["kind"],
        "reply",
        "new connections get the old policy"
    );
    eprintln!("fault: SIGHUP with the config deleted, then a directory in its place: old policy kept both times, connections untouched");
    Ok(())
}
