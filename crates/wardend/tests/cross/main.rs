//! Cross-process tests of `wardend`: a real broker in its own process,
//! real clients (`wardenctl`, `warden-peer`, raw sockets) in others, run
//! as real test users with their own uids.

mod bad_input;
mod duplex;
mod identity;
mod lifecycle;
mod python;
mod squatting;

use warden_testkit::{test_users, TestUser};

/// The test users, or `None` (after printing why) when not root outside CI.
pub fn users(test: &str) -> Option<(TestUser, TestUser, TestUser)> {
    if !warden_testkit::require_root(test) {
        return None;
    }
    match test_users() {
        Ok(u) => Some(u),
        Err(e) => panic!("{test}: {e:#}"),
    }
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

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
