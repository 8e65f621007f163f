//! `wardenctl reload` (`warden.reload`): an administrator makes the broker
//! read its file again; a file that does not load is reported with its
//! file, line and key, and the old policy stays; others are refused.

use serde_json::json;
use warden_testkit::{config_text, wardenctl, BrokerProcess, RawConn, TestDir, TestUser};

use crate::{rules_without, stderr, stdout, users, RULES};

const RELOAD_RULE: &str = r#"
[[rule]]
actions = ["call"]
names = ["warden.reload"]
admins = true
"#;

/// Whether `user` may publish on news.x right now.
fn may_publish(user: &TestUser, socket: &std::path::Path) -> anyhow::Result<bool> {
    let out = wardenctl(Some(user), socket, &["publish", "news.x", "{}"])?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) if stderr(&out).starts_with("error: denied") => Ok(false),
        other => anyhow::bail!("publish exited {other:?}: {}", stderr(&out)),
    }
}

#[test]
#[ignore = "needs root"]
fn an_admin_reloads_the_file_and_a_bad_file_keeps_the_old_policy() -> anyhow::Result<()> {
    let (_, bob, admin) = users("an_admin_reloads_the_file");
    let dir = TestDir::new("reload")?;
    let conf = dir.path().join("warden.toml");
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &format!("{RULES}{RELOAD_RULE}")))?;
    let socket = broker.socket().to_path_buf();
    assert!(may_publish(&bob, &socket)?);

    // The file changes: no more publishing. The admin reloads.
    let without = config_text(
        &dir,
        &format!("{}{RELOAD_RULE}", rules_without(&["publish"])),
    );
    std::fs::write(&conf, &without)?;
    let out = wardenctl(Some(&admin), &socket, &["reload"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("reloaded {}: ", conf.display())),
        "{}",
        stdout(&out)
    );
    assert!(!may_publish(&bob, &socket)?, "the new policy is in force");

    // A file that would allow publishing again, but does not load.
    let bad = format!(
        "{}\n[limits]\nbogus = 1\n",
        config_text(&dir, &format!("{RULES}{RELOAD_RULE}"))
    );
    let line = bad.lines().position(|l| l == "bogus = 1").map(|i| i + 1);
    std::fs::write(&conf, &bad)?;
    let out = wardenctl(Some(&admin), &socket, &["reload"])?;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let where_ = format!("{}:{}:", conf.display(), line.unwrap_or(0));
    assert!(
        stderr(&out).contains(&where_) && stderr(&out).contains("limits.bogus"),
        "expected {where_} and limits.bogus in: {}",
        stderr(&out)
    );
    // As a structured error, to a program.
    let mut raw = RawConn::connect(&socket)?;
    raw.hello()?;
    let r = raw.call(1, "warden.reload", json!(null))?;
    assert_eq!(r["kind"], "error", "{r}");
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with(&where_) && msg.contains("limits.bogus"),
        "{r}"
    );
    // The old policy is still in force.
    assert!(
        !may_publish(&bob, &socket)?,
        "a failed reload changed the policy"
    );
    let log = broker.log();
    assert!(
        log.lines().any(|l| l.contains("warden::audit")
            && l.contains("action=\"policy.reload\"")
            && l.contains("result=\"failed\"")
            && l.contains(&format!("uid={}", admin.uid))),
        "{log}"
    );

    // Not an administrator: refused, whatever the file.
    std::fs::write(&conf, &without)?;
    let out = wardenctl(Some(&bob), &socket, &["reload"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: denied"),
        "{}",
        stderr(&out)
    );
    Ok(())
}
