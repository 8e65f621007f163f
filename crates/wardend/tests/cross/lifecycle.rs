//! Limits, graceful shutdown and configuration errors.

use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use warden_testkit::{
    bin_path, config_text, output_with_timeout, wardenctl, BrokerProcess, RawConn, TestDir,
};

use crate::{provider, stderr, stdout, users, wait_in_flight, RULES};

#[test]
#[ignore = "needs root"]
fn connections_per_uid_and_in_flight_calls_are_limited() -> anyhow::Result<()> {
    let (_, bob, _) = users("connections_per_uid_and_in_flight_calls_are_limited");
    let dir = TestDir::new("limits")?;
    let conf =
        format!("[limits]\nmax_connections_per_uid = 3\nmax_in_flight_per_connection = 2\n{RULES}");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    // The broker counts a connection until its task has finished, a moment
    // after the peer closes it (e.g. the start-up probe): retry briefly.
    let connect_retrying = || -> anyhow::Result<RawConn> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut c = RawConn::connect(broker.socket())?;
            match c.hello() {
                Ok(_) => return Ok(c),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    };
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(connect_retrying()?);
    }
    let mut fourth = RawConn::connect(broker.socket())?;
    let v = fourth.recv_some()?;
    assert_eq!(v["error"]["code"], "limit_exceeded", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("max_connections_per_uid"));
    assert!(fourth.closed());
    // Another uid is not affected.
    let out = wardenctl(Some(&bob), broker.socket(), &["ping"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // In-flight: a provider that never answers; the third call is refused.
    let (prov, caller) = conns.split_at_mut(1);
    let prov = &mut prov[0];
    prov.send_json(&json!({"kind":"provide","id":1,"method":"svc.hold"}))?;
    assert_eq!(prov.recv_some()?["kind"], "reply");
    let caller = &mut caller[0];
    for id in 1..=3 {
        caller.send_json(&json!({"kind":"call","id":id,"method":"svc.hold"}))?;
    }
    let v = caller.recv_some()?;
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (json!(3), json!("limit_exceeded")),
        "{v}"
    );
    // Freed capacity is usable again once a call is answered.
    let routed = prov.recv_some()?;
    prov.send_json(&json!({"kind":"reply","id":routed["id"],"result":"done"}))?;
    let v = caller.recv_some()?;
    assert_eq!(v["result"], "done", "{v}");
    drop(conns);
    // After closing, the uid may connect again.
    connect_retrying()?;
    Ok(())
}

fn spawn_call(socket: &std::path::Path, method: &str) -> anyhow::Result<std::process::Child> {
    Ok(Command::new(bin_path("wardenctl"))
        .arg("--socket")
        .arg(socket)
        .args(["--json", "call", method, "[42]"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

#[test]
#[ignore = "needs root"]
fn sigterm_lets_in_flight_calls_finish_and_removes_the_socket() -> anyhow::Result<()> {
    let (alice, _, _) = users("sigterm_lets_in_flight_calls_finish");
    let dir = TestDir::new("term")?;
    let mut broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let mut provider = provider(&alice, broker.socket(), "svc.slow", 800)?;
    // An idle client stays connected throughout: it must not hold up stop.
    let mut idle = RawConn::connect(broker.socket())?;
    idle.hello()?;
    let call = spawn_call(broker.socket(), "svc.slow")?;
    wait_in_flight(broker.socket(), 1)?;
    broker.signal(Signal::SIGTERM)?;
    let out = call.wait_with_output()?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "the in-flight call completes: {}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("42"), "{}", stdout(&out));
    let status = broker.wait_exit(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(0), "{}", broker.log());
    assert!(!broker.socket().exists(), "socket removed");
    let bye = idle.recv_some()?;
    assert_eq!(bye["error"]["code"], "shutting_down", "{bye}");
    let _ = provider.kill();
    let _ = provider.wait();
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn sigterm_past_the_drain_timeout_answers_shutting_down() -> anyhow::Result<()> {
    let (alice, _, _) = users("sigterm_past_the_drain_timeout");
    let dir = TestDir::new("drain")?;
    let conf = format!("[limits]\ndrain_timeout_ms = 300\n{RULES}");
    let mut broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    let mut provider = provider(&alice, broker.socket(), "svc.stuck", 600000)?;
    let call = spawn_call(broker.socket(), "svc.stuck")?;
    wait_in_flight(broker.socket(), 1)?;
    let t = Instant::now();
    broker.signal(Signal::SIGTERM)?;
    let out = call.wait_with_output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: shutting_down"),
        "{}",
        stderr(&out)
    );
    let status = broker.wait_exit(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(0), "{}", broker.log());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(!broker.socket().exists());
    let _ = provider.kill();
    let _ = provider.wait();
    Ok(())
}

#[test]
fn config_errors_name_file_line_and_key() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("wdn-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[broker]\nsocket_mode = \"0660\"\n\n[limits]\nmax_frame_bytez = 5\n",
    )?;
    let out = output_with_timeout(
        Command::new(bin_path("wardend"))
            .arg("--check-config")
            .arg("--config")
            .arg(&bad),
        Duration::from_secs(20),
    )?;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:5:", bad.display())), "{err}");
    assert!(err.contains("limits.max_frame_bytez"), "{err}");

    let bad_rule = dir.join("rule.toml");
    std::fs::write(
        &bad_rule,
        "[[rule]]\nactions = [\"call\"]\nnames = [\"a.**.b\"]\neveryone = true\n",
    )?;
    let out = output_with_timeout(
        Command::new(bin_path("wardend"))
            .arg("--check-config")
            .arg("--config")
            .arg(&bad_rule),
        Duration::from_secs(20),
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(":3:") && stderr(&out).contains("rule[1].names[0]"),
        "{}",
        stderr(&out)
    );

    let good = dir.join("good.toml");
    let default = output_with_timeout(
        Command::new(bin_path("wardend")).arg("--print-default-config"),
        Duration::from_secs(20),
    )?;
    std::fs::write(&good, &default.stdout)?;
    let out = output_with_timeout(
        Command::new(bin_path("wardend"))
            .arg("--check-config")
            .arg("--config")
            .arg(&good),
        Duration::from_secs(20),
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn notify_socket_gets_ready_and_stopping() -> anyhow::Result<()> {
    let dir = TestDir::new("notify")?;
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut broker = BrokerProcess::start_env(
        &dir,
        &config_text(&dir, RULES),
        &[("NOTIFY_SOCKET", notify_path.as_os_str())],
    )?;
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf)?;
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    broker.signal(Signal::SIGTERM)?;
    let n = notify.recv(&mut buf)?;
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert_eq!(broker.wait_exit(Duration::from_secs(10))?.code(), Some(0));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn global_cap_and_per_connection_subscription_and_provide_limits() -> anyhow::Result<()> {
    users("global_cap_and_per_connection_limits");
    let dir = TestDir::new("caps")?;
    let conf = format!(
        "[limits]\nmax_connections = 3\nmax_subscriptions_per_connection = 2\nmax_provided_per_connection = 1\n{RULES}"
    );
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut conns = Vec::new();
    while conns.len() < 3 {
        let mut c = RawConn::connect(broker.socket())?;
        match c.hello() {
            Ok(_) => conns.push(c),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut over = RawConn::connect(broker.socket())?;
    let v = over.recv_some()?;
    assert_eq!(v["error"]["code"], "limit_exceeded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("connection limit"),
        "{v}"
    );

    let c = &mut conns[0];
    for (id, topic) in [(1, "news.a"), (2, "news.b")] {
        c.send_json(&json!({"kind":"subscribe","id":id,"topic":topic}))?;
        assert_eq!(c.recv_some()?["kind"], "reply");
    }
    c.send_json(&json!({"kind":"subscribe","id":3,"topic":"news.c"}))?;
    let v = c.recv_some()?;
    assert_eq!(v["error"]["code"], "limit_exceeded", "{v}");
    // Subscribing again to a topic already held is not a new subscription.
    c.send_json(&json!({"kind":"subscribe","id":4,"topic":"news.a"}))?;
    assert_eq!(c.recv_some()?["kind"], "reply");

    c.send_json(&json!({"kind":"provide","id":5,"method":"svc.one"}))?;
    assert_eq!(c.recv_some()?["kind"], "reply");
    c.send_json(&json!({"kind":"provide","id":6,"method":"svc.two"}))?;
    let v = c.recv_some()?;
    assert_eq!(v["error"]["code"], "limit_exceeded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_provided_per_connection"),
        "{v}"
    );
    Ok(())
}

#[test]
fn out_of_descriptors_the_accept_loop_backs_off_and_recovers() -> anyhow::Result<()> {
    let dir = TestDir::new("emfile")?;
    let conf = dir.path().join("warden.toml");
    std::fs::write(&conf, config_text(&dir, RULES))?;
    let socket = dir.path().join("s/warden.sock");
    // A hard limit of 32 descriptors: the broker raises its soft limit to
    // it and no further, so a few dozen clients exhaust it.
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=32:32")
        .arg(bin_path("wardend"))
        .arg("--config")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("emfile.log"))?)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while RawConn::connect(&socket)
        .and_then(|mut c| c.hello().map_err(std::io::Error::other))
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "wardend did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = || -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))?;
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        Ok(f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
    };
    // Hold 60 connections: the later ones wait in the backlog while
    // accept fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..60 {
        if let Ok(c) = std::os::unix::net::UnixStream::connect(&socket) {
            held.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu()?;
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu()? - before;
    // Clock ticks (100 per second): a spinning accept loop burns ~100.
    assert!(
        used < 30,
        "the broker used {used} ticks in 1 s while out of descriptors"
    );
    let log = std::fs::read_to_string(dir.path().join("emfile.log"))?;
    assert!(log.contains("out of file descriptors"), "{log}");
    // And it said so at start: 32 descriptors cannot hold the configured
    // max_connections (2 descriptors each).
    assert!(
        log.contains("limits.max_connections cannot be reached under the open-file limit")
            && log.contains("raise LimitNOFILE"),
        "no start-up warning about the open-file limit: {log}"
    );
    // Freed descriptors: the broker serves again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let ping = || -> anyhow::Result<Value> {
        let mut c = RawConn::connect(&socket)?;
        c.hello()?;
        c.call(1, "warden.ping", json!(null))
    };
    loop {
        match ping() {
            Ok(v) => {
                assert_eq!(v["result"]["pong"], true, "{v}");
                break;
            }
            Err(e) => anyhow::ensure!(
                Instant::now() < deadline,
                "the broker did not recover: {e:#}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
