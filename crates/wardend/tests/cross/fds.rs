//! Running out of file descriptors: every client the broker cannot hold
//! is told so with `limit_exceeded` (none is left waiting in the listen
//! queue until its own timeout, none sees the socket close without a
//! word), the clients already in are still served, and once descriptors
//! are back new clients are served again.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_testkit::{config_text, BrokerProcess, RawConn, TestDir};

use crate::RULES;

/// Clients opened at once, far more than the broker can hold.
const CLIENTS: usize = 200;
/// Time every client gets to be answered (welcome or error), counted from
/// when the last one connected. A liveness bound, not a speed assertion.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// Descriptors open in process `pid`.
fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// What one client saw after its hello.
#[derive(Debug)]
enum Outcome {
    Welcomed,
    /// `limit_exceeded`, with its message.
    Refused(String),
    /// Another frame.
    Other(Value),
    /// The connection closed without a frame.
    Silent,
    /// Nothing within the bound.
    Hung,
    /// A read error other than the timeout.
    Failed(String),
}

fn outcome(c: &mut RawConn, deadline: Instant) -> anyhow::Result<Outcome> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    c.stream.set_read_timeout(Some(left))?;
    Ok(match c.recv() {
        Ok(Some(v)) if v["kind"] == "welcome" => Outcome::Welcomed,
        Ok(Some(v)) if v["kind"] == "error" && v["error"]["code"] == "limit_exceeded" => {
            Outcome::Refused(v["error"]["message"].as_str().unwrap_or("").to_owned())
        }
        Ok(Some(v)) => Outcome::Other(v),
        Ok(None) => Outcome::Silent,
        Err(e) => match e.downcast_ref::<std::io::Error>().map(std::io::Error::kind) {
            Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Outcome::Hung,
            _ => Outcome::Failed(format!("{e:#}")),
        },
    })
}

#[test]
#[ignore = "needs root"]
fn out_of_descriptors_every_refused_client_is_told_limit_exceeded() -> anyhow::Result<()> {
    warden_testkit::require_root("out_of_descriptors_every_refused_client_is_told_limit_exceeded");
    // This process holds all the clients' sockets.
    warden_sys::raise_nofile_limit()?;
    let dir = TestDir::new("fds")?;
    // The connection limits out of the way: descriptors run out first.
    let conf =
        format!("[limits]\nmax_connections = 10000\nmax_connections_per_uid = 10000\n{RULES}");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &conf))?;
    // wardend raised its soft limit to the hard one at start: lower both
    // now, leaving room for a dozen or two clients (two descriptors each:
    // the socket and the peer's pidfd).
    let pid = broker.pid();
    let open = open_fds(pid)?;
    let limit = 64.max(open + 24);
    let set = Command::new("prlimit")
        .arg(format!("--nofile={limit}:{limit}"))
        .arg(format!("--pid={pid}"))
        .output()?;
    anyhow::ensure!(
        set.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&set.stderr)
    );

    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut c = RawConn::connect(broker.socket())?;
        // A refused client may find the socket already closed (EPIPE):
        // what it reads next says how it was treated.
        let _ = c.send_json(&json!({"kind": "hello", "version": 1, "client": "fds"}));
        clients.push(c);
    }
    let deadline = Instant::now() + ANSWER_WITHIN;
    let mut admitted = Vec::new();
    let (mut refused, mut silent, mut hung) = (0usize, 0usize, 0usize);
    let mut unexpected = Vec::new();
    for mut c in clients {
        match outcome(&mut c, deadline)? {
            Outcome::Welcomed => admitted.push(c),
            Outcome::Refused(message) => {
                refused += 1;
                if !message.contains("out of file descriptors") || !message.contains("LimitNOFILE")
                {
                    unexpected.push(format!("limit_exceeded for another reason: {message}"));
                }
            }
            Outcome::Silent => silent += 1,
            Outcome::Hung => hung += 1,
            Outcome::Other(v) => unexpected.push(format!("frame {v}")),
            Outcome::Failed(e) => unexpected.push(format!("read error {e}")),
        }
    }
    println!(
        "fault: out of descriptors: {CLIENTS} clients, broker under RLIMIT_NOFILE {limit} ({open} open before): \
         accepted {}, refused with limit_exceeded {refused}, silent {silent}, hung {hung}, \
         other {}",
        admitted.len(),
        unexpected.len()
    );
    assert_eq!(silent, 0, "clients saw the socket close without a word");
    assert_eq!(hung, 0, "clients got no answer within {ANSWER_WITHIN:?}");
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    assert!(
        refused > 0,
        "the broker held all {CLIENTS} clients: it never ran out of descriptors"
    );
    assert!(!admitted.is_empty(), "no client got in");

    // The refusals were counted, not logged one by one.
    let log = broker.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("refused connections with limit_exceeded"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} log lines about {refused} refusals:\n{log}"
    );

    // The clients that got in are served as before.
    for (i, c) in admitted.iter_mut().enumerate() {
        let v = c.call(i as u64 + 1, "warden.ping", json!(null))?;
        assert_eq!(v["result"]["pong"], true, "{v}");
    }

    // Descriptors back: as many new clients as got in are served again.
    let held = admitted.len();
    drop(admitted);
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = || -> anyhow::Result<Vec<RawConn>> {
        let mut again = Vec::new();
        for i in 0..held {
            let mut c = RawConn::connect(broker.socket())?;
            c.hello()?;
            let v = c.call(i as u64 + 1, "warden.ping", json!(null))?;
            anyhow::ensure!(v["result"]["pong"] == true, "{v}");
            again.push(c);
        }
        Ok(again)
    };
    loop {
        match served() {
            Ok(again) => {
                println!(
                    "fault: out of descriptors: after the others closed, {} new clients served",
                    again.len()
                );
                break;
            }
            Err(e) => anyhow::ensure!(
                Instant::now() < deadline,
                "new clients are not served after the others closed: {e:#}\n{}",
                broker.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
