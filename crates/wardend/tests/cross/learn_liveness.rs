//! Learning mode must not stall the broker: `learn.start` loads and
//! attaches eBPF programs and `learn.stop` joins a reader thread, kernel
//! work that blocks. While two connections of one user start and stop
//! sessions as fast as they can, another user's pings are answered
//! promptly. Real broker, real eBPF, real test users; root only (fail
//! under CI=true).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::Duration;

use serde_json::Value;
use warden_testkit::{command_as, config_text, BrokerProcess, TestDir, TestUser};

use crate::learn::LEARN_CONFIG;
use crate::users;

/// How long the loops run.
const LOOP_SECS: f64 = 8.0;
/// The slowest ping allowed: a liveness bound, not a speed test.
const MAX_PING: Duration = Duration::from_secs(1);

/// A learner: spawns a `sleep` of its own, says `ready`, waits for a line
/// on stdin, then loops `learn.start` on it / `learn.stop` for
/// `LOOP_SECS` and prints `{"cycles", "errors", "first_errors",
/// "max_start_ms", "max_stop_ms"}`.
const LEARNER: &str = r#"
import json, subprocess, sys, time
sys.path.insert(0, LIB)
import warden_client
c = warden_client.Client(SOCK, timeout=30.0)
target = subprocess.Popen(["/bin/sleep", "120"])
time.sleep(0.2)
print("ready", flush=True)
sys.stdin.readline()
cycles, errors, first, start_s, stop_s = 0, 0, [], 0.0, 0.0
end = time.monotonic() + SECS
while time.monotonic() < end:
    try:
        t = time.monotonic()
        r = c.call("learn.start", {"pid": target.pid})
        start_s = max(start_s, time.monotonic() - t)
        t = time.monotonic()
        c.call("learn.stop", {"session": r["session"]})
        stop_s = max(stop_s, time.monotonic() - t)
        cycles += 1
    except warden_client.WardenError as e:
        errors += 1
        if len(first) < 5:
            first.append(str(e))
target.kill()
target.wait()
print(json.dumps({"cycles": cycles, "errors": errors, "first_errors": first,
                  "max_start_ms": start_s * 1000.0, "max_stop_ms": stop_s * 1000.0}), flush=True)
"#;

/// A pinger: says `ready`, waits for a line on stdin, then pings every
/// 10 ms for `LOOP_SECS` and prints `{"sent", "answered", "max_ms",
/// "errors"}`.
const PINGER: &str = r#"
import json, sys, time
sys.path.insert(0, LIB)
import warden_client
c = warden_client.Client(SOCK, timeout=10.0)
print("ready", flush=True)
sys.stdin.readline()
sent, answered, worst, errors = 0, 0, 0.0, []
end = time.monotonic() + SECS
while time.monotonic() < end:
    sent += 1
    t = time.monotonic()
    try:
        c.call("warden.ping")
        answered += 1
    except Exception as e:
        errors.append(repr(e))
        break
    worst = max(worst, time.monotonic() - t)
    time.sleep(0.01)
print(json.dumps({"sent": sent, "answered": answered, "max_ms": worst * 1000.0, "errors": errors}), flush=True)
"#;

/// A Python client program run as `user`, stdin and stdout piped.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Script {
    fn spawn(user: &TestUser, body: &str, socket: &str, lib: &str) -> anyhow::Result<Script> {
        let program = format!("LIB = {lib:?}\nSOCK = {socket:?}\nSECS = {LOOP_SECS}\n{body}");
        let mut child = command_as(user, Path::new("/usr/bin/python3"))
            .arg("-c")
            .arg(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
        );
        Ok(Script {
            child,
            stdin,
            stdout,
        })
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut l = String::new();
        self.stdout.read_line(&mut l)?;
        Ok(l.trim().to_owned())
    }

    fn go(&mut self) -> anyhow::Result<()> {
        let mut stdin = self
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("already told to go"))?;
        stdin.write_all(b"go\n")?;
        Ok(())
    }

    /// The JSON summary it prints at the end.
    fn summary(mut self) -> anyhow::Result<Value> {
        let l = self.line()?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the client failed ({status}), said {l:?}");
        serde_json::from_str(&l).map_err(|e| anyhow::anyhow!("the client said {l:?}: {e}"))
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs root"]
fn pings_stay_fast_while_two_connections_loop_learn_start_and_stop() -> anyhow::Result<()> {
    let test = "learn-liveness";
    let (alice, bob, _) = users(test);
    let dir = TestDir::new(test)?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, LEARN_CONFIG))?;
    let lib = crate::python::client_dir()?;
    let sock = broker.socket_str();
    let mut learners = vec![
        Script::spawn(&alice, LEARNER, &sock, &lib)?,
        Script::spawn(&alice, LEARNER, &sock, &lib)?,
    ];
    let mut pinger = Script::spawn(&bob, PINGER, &sock, &lib)?;
    for s in learners.iter_mut().chain(std::iter::once(&mut pinger)) {
        let l = s.line()?;
        anyhow::ensure!(l == "ready", "a client said {l:?} instead of ready");
    }
    for s in learners.iter_mut().chain(std::iter::once(&mut pinger)) {
        s.go()?;
    }
    let pings = pinger.summary()?;
    let loops = learners
        .into_iter()
        .map(Script::summary)
        .collect::<anyhow::Result<Vec<Value>>>()?;
    let cycles: Vec<u64> = loops
        .iter()
        .map(|l| l["cycles"].as_u64().unwrap_or(0))
        .collect();
    let slowest = |key: &str| {
        loops
            .iter()
            .filter_map(|l| l[key].as_f64())
            .fold(0.0, f64::max)
    };
    let max_ms = pings["max_ms"].as_f64().unwrap_or(f64::INFINITY);
    eprintln!(
        "learn liveness: start/stop cycles {cycles:?} in {LOOP_SECS} s (slowest start {:.1} \
         ms, stop {:.1} ms); {} pings sent, {} answered, slowest {max_ms:.1} ms",
        slowest("max_start_ms"),
        slowest("max_stop_ms"),
        pings["sent"],
        pings["answered"]
    );
    // Every ping answered, none slower than the bound.
    assert_eq!(pings["errors"], serde_json::json!([]), "{pings}");
    assert!(pings["sent"].as_u64().unwrap_or(0) > 0, "{pings}");
    assert_eq!(pings["answered"], pings["sent"], "{pings}");
    assert!(
        max_ms < MAX_PING.as_secs_f64() * 1000.0,
        "a ping took {max_ms:.1} ms while learning sessions started and stopped: {pings}"
    );
    // The loops ran, and no start or stop failed.
    for l in &loops {
        assert_eq!(l["errors"], 0, "a learner's calls failed: {l}");
        assert!(
            l["cycles"].as_u64().unwrap_or(0) >= 5,
            "a learner completed only {} start/stop cycles in {LOOP_SECS} s: {l}",
            l["cycles"]
        );
    }
    // The broker is still up and logged no panic or error.
    let mut broker = broker;
    assert!(broker.try_wait()?.is_none(), "{}", broker.log());
    let log = broker.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("panic") || l.contains("ERROR"))
        .collect();
    assert!(bad.is_empty(), "the broker logged errors: {bad:#?}");
    Ok(())
}
