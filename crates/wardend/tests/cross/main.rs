//! Cross-process tests of `wardend`: a real broker in its own process,
//! real clients (`wardenctl`, `warden-peer`, raw sockets) in others, run
//! as real test users with their own uids.

mod audit;
mod bad_input;
mod cli;
mod duplex;
mod explain;
mod faults;
mod fds;
mod hardening;
mod hardening2;
mod host_modules;
mod hosts;
mod identity;
mod invitations;
mod learn;
mod learn_limits;
mod learn_liveness;
mod learn_workflow;
mod lifecycle;
mod logging;
mod metrics;
mod monitor;
mod owner;
mod protocol_conformance;
mod python;
mod reload;
mod service;
mod session_hosts;
mod soak;
mod squatting;
mod test_hooks;
mod timeouts;
mod top;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use warden_testkit::{bin_path, command_as, test_users, RawConn, TestUser};

/// The test users (created on first use). Fails the test without root:
/// for tests marked `#[ignore = "needs root"]`.
pub fn users(test: &str) -> (TestUser, TestUser, TestUser) {
    warden_testkit::require_root(test);
    test_users().unwrap_or_else(|e| panic!("{test}: {e:#}"))
}

/// Rules used by most tests: built-ins for everyone, status for the admin
/// group and for group wdn_grp (user A), a provider namespace for A and
/// the admin, calls into it for everyone, and topics.
pub const RULES: &str = r#"
[[rule]]
actions = ["call"]
names = ["warden.ping", "warden.whoami", "warden.version", "warden.echo"]
everyone = true

[[rule]]
actions = ["call"]
names = ["warden.status"]
admins = true
groups = ["wdn_grp"]

[[rule]]
actions = ["provide"]
names = ["svc.**"]
users = ["wdn_alice", "root"]

[[rule]]
effect = "deny"
actions = ["call"]
names = ["svc.secret"]
users = ["wdn_bob"]

[[rule]]
actions = ["call"]
names = ["svc.**"]
everyone = true

[[rule]]
actions = ["subscribe", "publish"]
names = ["news.**"]
everyone = true
"#;

/// [`RULES`] without the rules that grant any of `actions` (for reload
/// tests that take permissions away).
pub fn rules_without(actions: &[&str]) -> String {
    RULES
        .split("[[rule]]")
        .filter(|r| !actions.iter().any(|a| r.contains(&format!("\"{a}\""))))
        .collect::<Vec<_>>()
        .join("[[rule]]")
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Starts `warden-peer provide METHOD` as `user` and waits until ready.
pub fn provider(
    user: &TestUser,
    socket: &Path,
    method: &str,
    delay_ms: u64,
) -> anyhow::Result<Child> {
    let mut child = command_as(user, &bin_path("warden-peer"))
        .arg("--socket")
        .arg(socket)
        .args(["provide", method, "--delay-ms", &delay_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "provider said {line:?}");
    Ok(child)
}

/// Waits until the broker reports `n` routed calls in flight.
pub fn wait_in_flight(socket: &Path, n: u64) -> anyhow::Result<()> {
    let mut admin = RawConn::connect(socket)?;
    admin.hello()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in 1.. {
        let s = admin.call(id, "warden.status", json!(null))?;
        if s["result"]["routed_in_flight"] == n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "never reached {n} in flight: {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
