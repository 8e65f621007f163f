//! Learning mode under load, as an attacker would use it: a learner that
//! stops reading while its program floods denials, concurrent
//! `learn.start` calls racing the per-uid session limit, and one user
//! forking enough to crowd others out of the shared tracking table. Real
//! broker, real eBPF, real test users; root only (fail under CI=true).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_testkit::{
    bin_path, command_as, config_text, BrokerProcess, RawConn, TestDir, TestUser,
};

use crate::learn::{denials, learn_as, report_json, LEARN_CONFIG};
use crate::{stderr, users};

/// Waits until `pid` runs `comm` as `user` (setpriv has changed uid and
/// exec'd), so the broker sees the user's own, dumpable process.
fn wait_running_as(pid: u32, comm: &str, user: &TestUser) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid_line = format!("Uid:\t{0}\t{0}\t{0}\t{0}", user.uid);
        if c.trim() == comm && status.lines().any(|l| l == uid_line) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{pid} never became {comm}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills and reaps a child, ignoring whether it already exited.
fn reap(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

const QUEUE_LIMIT: u64 = 256 * 1024;

#[test]
#[ignore = "needs root"]
fn a_learner_that_stops_reading_stays_within_its_queued_bytes_limit() -> anyhow::Result<()> {
    let test = "learn-stall";
    let (a, _b, _) = users(test);
    let dir = TestDir::new(test)?;
    let config = format!(
        "{LEARN_CONFIG}\n[[rule]]\nactions = [\"call\"]\nnames = [\"warden.metrics\"]\n\
         admins = true\n\n[limits]\nmax_queued_bytes_per_uid = {QUEUE_LIMIT}\n"
    );
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &config))?;
    // A's program: a tight loop of failing opens (no forks), thousands of
    // denials a second.
    let flood = command_as(&a, Path::new("/bin/sh"))
        .args(["-c", "while :; do true < /etc/shadow; done 2>/dev/null"])
        .spawn()?;
    let pid = flood.id();
    wait_running_as(pid, "sh", &a)?;
    // A's client starts the session, asks for the events, then stops
    // reading its socket.
    let mut learner = command_as(&a, &bin_path("warden-peer"))
        .arg("--socket")
        .arg(broker.socket())
        .args(["learn-stall", &pid.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(
        learner
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    );
    let mut line = String::new();
    out.read_line(&mut line)?;
    let started: Value = serde_json::from_str(line.trim())
        .map_err(|e| anyhow::anyhow!("learn-stall said {line:?}: {e}"))?;
    anyhow::ensure!(started["session"].is_u64(), "{started}");

    let rss_start = rss(broker.pid());
    let mut admin = RawConn::connect(broker.socket())?;
    admin.hello()?;
    let key = a.uid.to_string();
    let (mut max_queued, mut max_rss) = (0u64, rss_start);
    let deadline = Instant::now() + Duration::from_secs(4);
    for id in 1.. {
        let m = admin.call(id, "warden.metrics", json!(null))?;
        let by_uid = &m["result"]["queued_bytes_by_uid"];
        anyhow::ensure!(by_uid.is_object(), "no queued_bytes_by_uid: {m}");
        max_queued = max_queued.max(by_uid[&key].as_u64().unwrap_or(0));
        max_rss = max_rss.max(rss(broker.pid()));
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stop the flood, let the client read again and stop the session.
    reap(flood);
    let mut stdin = learner
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    stdin.write_all(b"go\n")?;
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest)?;
    let status = learner.wait()?;
    assert!(
        max_queued <= QUEUE_LIMIT,
        "uid {} had {max_queued} bytes queued, more than max_queued_bytes_per_uid = {QUEUE_LIMIT}",
        a.uid
    );
    assert!(
        max_queued > 0,
        "the stalled learner never had anything queued"
    );
    assert!(
        max_rss < rss_start + 64 * 1024 * 1024,
        "the broker grew from {rss_start} to {max_rss} bytes of RSS"
    );
    assert!(status.success(), "learn-stall failed: {rest}");
    let report: Value = serde_json::from_str(rest.trim())
        .map_err(|e| anyhow::anyhow!("learn-stall printed {rest:?}: {e}"))?;
    eprintln!(
        "stalled learner: at most {max_queued} bytes queued (limit {QUEUE_LIMIT}), broker RSS \
         {rss_start} -> {max_rss}, afterwards {}",
        report["end"]
    );
    let lost = report["end"]["lost_in_broker"].as_u64().unwrap_or(0);
    assert!(lost > 0, "nothing counted as lost in the broker: {report}");
    assert_eq!(
        report["stop"]["result"]["lost_in_broker"], lost,
        "learn.stop and the end record disagree: {report}"
    );
    assert!(
        report["events"].as_u64().unwrap_or(0) > 0,
        "the client got no events at all: {report}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn concurrent_learn_starts_cannot_beat_max_sessions_per_uid() -> anyhow::Result<()> {
    let test = "learn-concurrent";
    let (a, _b, _) = users(test);
    let dir = TestDir::new(test)?;
    // Enough runtime threads for every call to be handled at once, and a
    // pause between the limit check and the attach to widen the window.
    let env: [(&str, &std::ffi::OsStr); 2] = [
        ("TOKIO_WORKER_THREADS", "8".as_ref()),
        ("WARDEND_TEST_LEARN_ATTACH_DELAY_MS", "300".as_ref()),
    ];
    let broker = BrokerProcess::start_hooks(&dir, &config_text(&dir, LEARN_CONFIG), &env)?;
    let mut sleepers = Vec::new();
    for _ in 0..8 {
        let s = command_as(&a, Path::new("/bin/sleep")).arg("30").spawn()?;
        sleepers.push(s);
    }
    for s in &sleepers {
        wait_running_as(s.id(), "sleep", &a)?;
    }
    let pids: Vec<String> = sleepers.iter().map(|s| s.id().to_string()).collect();
    let mut racer = command_as(&a, &bin_path("warden-peer"))
        .arg("--socket")
        .arg(broker.socket())
        .arg("learn-start")
        .args(&pids)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = BufReader::new(
        racer
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    );
    let answers: Vec<Value> = out
        .lines()
        .take(pids.len())
        .map(|l| Ok(serde_json::from_str(&l?)?))
        .collect::<anyhow::Result<_>>()?;
    drop(racer.stdin.take());
    let _ = racer.wait();
    for s in sleepers {
        reap(s);
    }
    let ok = answers.iter().filter(|a| a.get("ok").is_some()).count();
    let limited = answers
        .iter()
        .filter(|a| a["error"]["code"] == "limit_exceeded")
        .count();
    assert_eq!(answers.len(), 8, "{answers:#?}");
    assert_eq!(
        ok, 2,
        "max_sessions_per_uid = 2, yet {ok} sessions started: {answers:#?}"
    );
    assert_eq!(limited, 6, "{answers:#?}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn one_user_cannot_fill_the_tracking_table_for_others() -> anyhow::Result<()> {
    let test = "learn-share";
    let (a, b, _) = users(test);
    let dir = TestDir::new(test)?;
    let config = LEARN_CONFIG.replace(
        "max_sessions_per_uid = 2\n",
        "max_sessions_per_uid = 2\nmax_tracked_per_uid = 8\n",
    );
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &config))?;
    // A forks fifty long-lived children: more than its share of 8.
    let hog = learn_as(&a, broker.socket(), &["--json", "--", "/bin/sh", "-c"])
        .arg("for i in $(seq 50); do sleep 5 & done; wait")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Until all fifty run.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sleeping = std::fs::read_dir("/proc")?
            .filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "sleep")
                    && std::fs::read_to_string(e.path().join("status")).is_ok_and(|s| {
                        s.lines()
                            .any(|l| l.starts_with(&format!("Uid:\t{}\t", a.uid)))
                    })
            })
            .count();
        if sleeping >= 50 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "A's children never all started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Meanwhile B's session still follows B's grandchild.
    let out = learn_as(&b, broker.socket(), &["--json", "--", "/bin/sh", "-c"])
        .arg("/bin/sh -c 'cat /etc/shadow; true'; true")
        .output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rb: Value = report_json(&out)?;
    assert!(
        denials(&rb).iter().any(|d| d.2 == "/etc/shadow"),
        "B's grandchild was not captured: {rb:#}"
    );
    assert_eq!(rb["end"]["untracked_children"], 0, "{rb:#}");
    let oa = hog.wait_with_output()?;
    assert_eq!(oa.status.code(), Some(0), "{}", stderr(&oa));
    let ra: Value = report_json(&oa)?;
    let untracked = ra["end"]["untracked_children"].as_u64().unwrap_or(0);
    assert!(
        untracked >= 40,
        "A's children past its share of 8 were tracked anyway ({untracked} untracked): {}",
        ra["end"]
    );
    Ok(())
}
