//! wardend under a service manager: socket activation, notify and
//! watchdog, SIGHUP reload, prompt stop with idle clients.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use warden_testkit::{
    bin_path, config_text, output_with_timeout, wardenctl, BrokerProcess, RawConn, TestDir,
};

use crate::{stderr, users, RULES};

/// Datagrams received on `sock` until `until`.
fn collect(sock: &UnixDatagram, until: Instant) -> Vec<(Instant, String)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < until {
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let _ = sock.set_read_timeout(Some(left));
        if let Ok(n) = sock.recv(&mut buf) {
            out.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    out
}

#[test]
fn serves_on_a_socket_passed_by_systemd_socket_activate() -> anyhow::Result<()> {
    let dir = TestDir::new("activate")?;
    let conf = dir.path().join("warden.toml");
    std::fs::write(&conf, config_text(&dir, RULES))?;
    let sock = dir.path().join("activated.sock");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        .arg(bin_path("wardend"))
        .arg("--config")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "systemd-socket-activate never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = wardenctl(None, &sock, &["ping"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = wardenctl(None, &sock, &["--json", "whoami"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
        Signal::SIGTERM,
    )?;
    let _ = child.wait();
    assert!(sock.exists(), "an inherited socket is not ours to remove");
    Ok(())
}

#[test]
fn a_passed_descriptor_that_is_not_a_listening_socket_is_refused() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("wdn-act-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("warden.toml");
    std::fs::write(&conf, "")?;
    let wardend = bin_path("wardend");
    for (what, redirect) in [
        ("character device", "3</dev/null"),
        ("Datagram", "3<>/dev/log"),
    ] {
        if what == "Datagram" && !std::path::Path::new("/dev/log").exists() {
            continue;
        }
        let script = format!(
            "exec {redirect}; LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --config \"$1\" --socket /run/unused/x.sock"
        );
        let out = output_with_timeout(
            Command::new("sh")
                .arg("-c")
                .arg(&script)
                .arg(&wardend)
                .arg(&conf),
            Duration::from_secs(20),
        )?;
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("not a listening Unix stream socket") && err.contains(what),
            "{err}"
        );
    }
    let out = output_with_timeout(
        Command::new("sh")
            .arg("-c")
            .arg("LISTEN_PID=$$ LISTEN_FDS=2 exec \"$0\" --config \"$1\"")
            .arg(&wardend)
            .arg(&conf),
        Duration::from_secs(20),
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exactly one"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn watchdog_pings_while_alive_and_stops_when_the_loop_stalls() -> anyhow::Result<()> {
    let dir = TestDir::new("watchdog")?;
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path)?;
    let interval = Duration::from_millis(400);
    let usec = interval.as_micros().to_string();
    let mut broker = BrokerProcess::start_hooks(
        &dir,
        &config_text(&dir, RULES),
        &[
            ("NOTIFY_SOCKET", notify_path.as_os_str()),
            ("WATCHDOG_USEC", usec.as_ref()),
        ],
    )?;
    let start = Instant::now();
    let msgs = collect(&notify, start + Duration::from_secs(2));
    assert!(msgs.iter().any(|(_, m)| m.contains("READY=1")), "{msgs:?}");
    let pings: Vec<Instant> = msgs
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    // Half the interval is 200 ms: about 9 in 2 s. Generous bounds.
    assert!(
        pings.len() >= 3,
        "only {} pings in 2 s: {msgs:?}",
        pings.len()
    );
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let median = {
        let mut g = gaps.clone();
        g.sort();
        g.get(g.len() / 2).copied().unwrap_or_default()
    };
    assert!(
        median >= Duration::from_millis(100) && median <= Duration::from_millis(400),
        "median gap {median:?}"
    );
    assert!(
        msgs.iter().any(|(_, m)| m.contains("STATUS=serving")),
        "{msgs:?}"
    );

    // Stall the accept loop (test hook): the pings stop.
    broker.signal(Signal::SIGUSR1)?;
    // A ping sent just before the stall may still be on its way: let the
    // heartbeat go stale, then discard what was queued meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    notify.set_nonblocking(true)?;
    let mut buf = [0u8; 1024];
    while notify.recv(&mut buf).is_ok() {}
    notify.set_nonblocking(false)?;
    let t = Instant::now();
    let stalled = collect(&notify, t + Duration::from_millis(1500));
    assert!(
        !stalled.iter().any(|(_, m)| m.contains("WATCHDOG=1")),
        "pings went on while the loop was stalled: {stalled:?}"
    );
    assert!(
        !stalled.is_empty(),
        "the notifier itself kept running (STATUS lines)"
    );
    broker.signal(Signal::SIGTERM)?;
    let rest = collect(&notify, Instant::now() + Duration::from_secs(6));
    assert!(
        rest.iter().any(|(_, m)| m.contains("STOPPING=1")),
        "{rest:?}"
    );
    assert_eq!(broker.wait_exit(Duration::from_secs(10))?.code(), Some(0));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn sighup_reloads_policy_without_dropping_connections() -> anyhow::Result<()> {
    users("sighup_reloads_policy_without_dropping_connections");
    let dir = TestDir::new("reload")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let mut sub = RawConn::connect(broker.socket())?;
    sub.hello()?;
    sub.send_json(&json!({"kind":"subscribe","id":1,"topic":"news.a"}))?;
    assert_eq!(sub.recv_some()?["kind"], "reply");
    sub.send_json(&json!({"kind":"provide","id":6,"method":"svc.mine"}))?;
    assert_eq!(sub.recv_some()?["kind"], "reply");

    // The new policy keeps calls but drops every subscribe/publish and
    // provide rule.
    let without_pubsub = crate::rules_without(&["subscribe", "provide"]);
    std::fs::write(
        dir.path().join("warden.toml"),
        config_text(&dir, &without_pubsub),
    )?;
    broker.signal(Signal::SIGHUP)?;
    let notice = sub.recv_some()?;
    assert_eq!(notice["kind"], "event", "{notice}");
    assert_eq!(notice["topic"], "warden.policy.revoked", "{notice}");
    assert_eq!(
        notice["data"]["subscriptions"],
        json!(["news.a"]),
        "{notice}"
    );
    // Same connection, still served; the new policy applies to it.
    assert_eq!(
        sub.call(2, "warden.ping", json!(null))?["result"]["pong"],
        true
    );
    sub.send_json(&json!({"kind":"subscribe","id":3,"topic":"news.a"}))?;
    assert_eq!(sub.recv_some()?["error"]["code"], "denied");

    // An invalid file: the old (current) policy stays, the error is logged.
    std::fs::write(
        dir.path().join("warden.toml"),
        "[[rule]]\nactions = [\"fly\"]\nnames = [\"a\"]\neveryone = true\n",
    )?;
    broker.signal(Signal::SIGHUP)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !broker.log().contains("keeping the old policy") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no error logged:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(broker.log().contains("warden.toml:2:"), "{}", broker.log());
    assert_eq!(
        sub.call(4, "warden.ping", json!(null))?["result"]["pong"],
        true
    );
    sub.send_json(&json!({"kind":"subscribe","id":5,"topic":"news.a"}))?;
    assert_eq!(sub.recv_some()?["error"]["code"], "denied");
    Ok(())
}

#[test]
fn sigterm_with_100_idle_clients_exits_promptly() -> anyhow::Result<()> {
    let dir = TestDir::new("idle100")?;
    let conf = format!("[limits]\nmax_connections_per_uid = 200\ndrain_timeout_ms = 3000\n{RULES}");
    let mut broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    let mut clients = Vec::new();
    for _ in 0..100 {
        let mut c = RawConn::connect(broker.socket())?;
        c.hello()?;
        clients.push(c);
    }
    let t = Instant::now();
    broker.signal(Signal::SIGTERM)?;
    let status = broker.wait_exit(Duration::from_secs(10))?;
    let took = t.elapsed();
    assert_eq!(status.code(), Some(0), "{}", broker.log());
    assert!(
        took < Duration::from_secs(3),
        "stop took {took:?} (drain timeout 3 s, nothing in flight)"
    );
    for c in &mut clients {
        assert_eq!(c.recv_some()?["error"]["code"], "shutting_down");
    }
    Ok(())
}

#[test]
fn learning_methods_exist_only_when_enabled() -> anyhow::Result<()> {
    let dir = TestDir::new("learn")?;
    let conf = format!("[learn]\nenabled = true\n{RULES}\n[[rule]]\nactions = [\"call\"]\nnames = [\"learn.*\"]\neveryone = true\n");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    let out = wardenctl(None, broker.socket(), &["call", "learn.start", "{}"])?;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: bad_request:") && err.contains("pid"),
        "{err}"
    );
    drop(broker);
    let conf = format!("[learn]\nenabled = false\n{RULES}\n[[rule]]\nactions = [\"call\"]\nnames = [\"learn.*\"]\neveryone = true\n");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    let out = wardenctl(
        None,
        broker.socket(),
        &["call", "learn.start", "{\"pid\": 1}"],
    )?;
    assert!(
        stderr(&out).starts_with("error: unknown_method:"),
        "{}",
        stderr(&out)
    );
    Ok(())
}
