//! `session-bench`: what per-session hosts cost, measured from outside
//! with a real wardend (release build next to this binary), a private
//! `dbus-daemon` and the fake logind of the tests (it speaks the real
//! interface; this machine has no logind). Needs root.
//!
//! Prints, in one run:
//! - the time from `SessionNew` to the session's host answering a call
//!   (`hosts.session_call` to `example.echo`, polled every 1 ms), next to
//!   the time to start the same `warden-host` binary by hand and see it
//!   exit (fork, exec, the loader, its usage error): the broker's share is
//!   the difference;
//! - wardend's RSS with no session hosts and with 100 supervised.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use warden_testkit::logind::{FakeLogind, PrivateBus};
use warden_testkit::{bin_path, config_text, test_users, BrokerProcess, RawConn, TestDir};

const ROUNDS: usize = 20;
const MANY: usize = 100;
const LIVENESS: Duration = Duration::from_secs(60);

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn running(c: &mut RawConn, id: &mut u64) -> anyhow::Result<usize> {
    *id += 1;
    let v = c.call(*id, "hosts.list", Value::Null)?;
    Ok(v["result"]["hosts"]
        .as_array()
        .map_or(0, |h| h.iter().filter(|h| h["state"] == "running").count()))
}

fn wait_running(c: &mut RawConn, id: &mut u64, n: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let now = running(c, id)?;
        if now == n {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < LIVENESS,
            "never {n} running session hosts ({now} now)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    warden_testkit::require_root("session-bench");
    let (a, _, _) = test_users()?;
    let dir = TestDir::new("session-bench")?;
    let mods = dir.path().join("modules");
    std::fs::create_dir(&mods)?;
    std::fs::set_permissions(&mods, std::fs::Permissions::from_mode(0o755))?;
    let echo = mods.join("libwarden_example_echo.so");
    std::fs::copy(bin_path("libwarden_example_echo.so"), &echo)
        .context("build it: cargo build --release -p warden-example-echo")?;
    let bus = PrivateBus::start(dir.path())?;
    let mut logind = FakeLogind::start(&bus)?;
    let text = config_text(
        &dir,
        &format!(
            "[limits]\nmax_connections_per_uid = 1000\n\n[sessions]\nbus = \"{}\"\n\n\
             [[host]]\nname = \"agent\"\nscope = \"session\"\nmodules = [\"{}\"]\n\n\
             [[rule]]\nactions = [\"provide\"]\nnames = [\"example.**\"]\nhosts = [\"agent\"]\n\n\
             [[rule]]\nactions = [\"call\"]\nnames = [\"hosts.list\", \"hosts.session_call\"]\nadmins = true\n",
            bus.address(),
            echo.display()
        ),
    );
    let broker = BrokerProcess::start(&dir, &text)?;
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;
    let mut id = 0;
    // The user's runtime directory, as systemd would have made it.
    let runtime = dir.path().join("run-user");
    std::fs::create_dir(&runtime)?;
    nix::unistd::chown(&runtime, Some(nix::unistd::Uid::from_raw(a.uid)), None)?;

    // The peer: warden-host started by hand, to its exit.
    let host = bin_path("warden-host");
    let mut bare = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let _ = std::process::Command::new(&host)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        bare.push(t.elapsed());
    }

    // SessionNew → the session's host answers.
    let mut to_serving = Vec::new();
    for i in 0..ROUNDS {
        let sid = format!("s{i}");
        let t = Instant::now();
        logind.add(&sid, a.uid, &a.name, "user", &runtime, &[])?;
        loop {
            id += 1;
            let v = c
                .call(
                    id,
                    "hosts.session_call",
                    json!({"host": "agent", "session": sid, "method": "example.echo"}),
                )
                .map_err(|e| anyhow::anyhow!("{e}; wardend's log:\n{}", broker.log()))?;
            if v["kind"] == "reply" {
                break;
            }
            if t.elapsed() > LIVENESS {
                let log = broker.log();
                let mine: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains("hosts.session_call") && !l.contains("DEBUG"))
                    .collect();
                let from = mine.len().saturating_sub(25);
                anyhow::bail!(
                    "session {sid} never served: {v}; wardend's log ends:\n{}",
                    mine[from..].join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        to_serving.push(t.elapsed());
        logind.remove(&sid)?;
        wait_running(&mut c, &mut id, 0)?;
    }

    // Memory with 100 session hosts.
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = rss_kib(broker.pid())?;
    for i in 0..MANY {
        logind.add(&format!("m{i}"), a.uid, &a.name, "user", &runtime, &[])?;
    }
    wait_running(&mut c, &mut id, MANY).map_err(|e| {
        let log = broker.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        anyhow::anyhow!(
            "{e}; wardend's log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = rss_kib(broker.pid())?;
    for i in 0..MANY {
        logind.remove(&format!("m{i}"))?;
    }
    wait_running(&mut c, &mut id, 0)?;
    std::thread::sleep(Duration::from_millis(500));
    let rss2 = rss_kib(broker.pid())?;

    let bare_p50 = median(&mut bare);
    let serving_p50 = median(&mut to_serving);
    let serving_max = to_serving.iter().max().copied().unwrap_or_default();
    println!("per-session hosts: real wardend, private dbus-daemon, fake logind (the real interface), {ROUNDS} sessions one at a time, then {MANY} at once");
    println!("{:<52} {:>10} {:>10}", "", "p50 ms", "× peer");
    println!(
        "{:<52} {:>10.2} {:>10.2}",
        "peer: warden-host started by hand, to its exit",
        bare_p50.as_secs_f64() * 1e3,
        1.0
    );
    println!(
        "{:<52} {:>10.2} {:>10.2}",
        "SessionNew → the session's host answers a call",
        serving_p50.as_secs_f64() * 1e3,
        serving_p50.as_secs_f64() / bare_p50.as_secs_f64()
    );
    println!(
        "{:<52} {:>10.2} {:>10.2}",
        "  (slowest of the rounds)",
        serving_max.as_secs_f64() * 1e3,
        serving_max.as_secs_f64() / bare_p50.as_secs_f64()
    );
    println!(
        "wardend RSS: {rss0} KiB with no session host, {rss1} KiB with {MANY} ({:.1} KiB per supervised host, ×{:.2}), {rss2} KiB after they stopped (×{:.2})",
        (rss1.saturating_sub(rss0)) as f64 / MANY as f64,
        rss1 as f64 / rss0 as f64,
        rss2 as f64 / rss0 as f64
    );
    Ok(())
}
