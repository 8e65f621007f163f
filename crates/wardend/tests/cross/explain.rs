//! `policy explain` offline, `policy explain` live, and the real action
//! through the broker agree, case by case: one policy function, no second
//! implementation.

use std::time::Duration;

use serde_json::json;
use warden_testkit::{
    bin_path, command_as_with_groups, config_text, output_with_timeout, wardenctl, BrokerProcess,
    RawConn, TestDir, TestUser,
};

use crate::{stderr, users};

const POLICY: &str = r#"
[[rule]]
actions = ["call"]
names = ["warden.ping", "warden.whoami", "warden.version", "warden.echo", "warden.explain"]
everyone = true

[[rule]]
actions = ["call"]
names = ["warden.status"]
admins = true

[[rule]]
effect = "deny"
actions = ["call", "subscribe"]
names = ["svc.secret.**"]
users = ["wdn_bob"]

[[rule]]
actions = ["call", "subscribe"]
names = ["svc.**"]
groups = ["wdn_grp"]

[[rule]]
actions = ["call"]
names = ["svc.public.*"]
everyone = true

[[rule]]
actions = ["provide"]
names = ["svc.**"]
users = ["root"]

[[rule]]
actions = ["subscribe"]
names = ["news.*"]
everyone = true

[[rule]]
actions = ["publish"]
names = ["news.*"]
admins = true
groups = ["wdn_grp"]

[[rule]]
effect = "deny"
actions = ["publish"]
names = ["news.internal"]
everyone = true

[[rule]]
actions = ["learn"]
names = ["**"]
admins = true
"#;

/// The real action's verdict: did the broker deny it?
fn real(
    user: &TestUser,
    groups: &[u32],
    socket: &std::path::Path,
    action: &str,
    name: &str,
) -> anyhow::Result<bool> {
    let args: Vec<&str> = match action {
        "call" => vec!["call", name],
        "subscribe" => vec!["subscribe", name, "--count", "0"],
        "publish" => vec!["publish", name, "{}"],
        _ => anyhow::bail!("no real check for {action}"),
    };
    let mut cmd = command_as_with_groups(user, groups, &bin_path("wardenctl"));
    cmd.arg("--socket").arg(socket).args(&args);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(30))?;
    let err = stderr(&out);
    Ok(!err.starts_with("error: denied"))
}

#[test]
#[ignore = "needs root"]
fn offline_live_and_real_decisions_agree() -> anyhow::Result<()> {
    let (alice, bob, admin) = users("offline_live_and_real_decisions_agree");
    let grp = warden_sys::group_by_name(warden_testkit::GROUP_A)?.unwrap_or(u32::MAX);
    let admins = warden_sys::group_by_name(warden_testkit::GROUP_ADMIN)?.unwrap_or(u32::MAX);
    let dir = TestDir::new("explain")?;
    let text = config_text(&dir, POLICY);
    let broker = BrokerProcess::start(&dir, &text)?;
    let conf = dir.path().join("warden.toml");
    // Root provides the svc methods, so allowed calls reach a provider.
    let mut prov = RawConn::connect(broker.socket())?;
    prov.hello()?;
    for (i, m) in ["svc.secret.x", "svc.team.y", "svc.public.z"]
        .iter()
        .enumerate()
    {
        prov.send_json(&json!({"kind":"provide","id":i + 1,"method":m}))?;
        assert_eq!(prov.recv_some()?["kind"], "reply");
    }
    let serving = std::thread::spawn(move || {
        while let Ok(Some(v)) = prov.recv() {
            if v["kind"] == "call" {
                let _ = prov.send_json(&json!({"kind":"reply","id":v["id"],"result":"ok"}));
            }
        }
    });

    // (user, its groups for the real process, extra --group for explain)
    let subjects: Vec<(&TestUser, Vec<u32>, Option<&str>)> = vec![
        (&alice, vec![alice.gid, grp], None),
        (&bob, vec![bob.gid], None),
        (&admin, vec![admin.gid, admins], None),
        (&bob, vec![bob.gid, grp], Some(warden_testkit::GROUP_A)),
    ];
    let actions: [(&str, &str); 10] = [
        ("call", "warden.ping"),
        ("call", "warden.status"),
        ("call", "svc.secret.x"),
        ("call", "svc.team.y"),
        ("call", "svc.public.z"),
        ("call", "svc.none"),
        ("subscribe", "news.a"),
        ("subscribe", "svc.secret.x"),
        ("publish", "news.a"),
        ("publish", "news.internal"),
    ];
    let explain_only: [(&str, &str); 3] = [
        ("learn", "exec"),
        ("provide", "svc.x"),
        ("monitor", "calls"),
    ];
    let mut cases = 0;
    let mut allowed_count = 0;
    for (user, groups, extra) in &subjects {
        let mut base = vec!["policy", "explain", "--user", user.name.as_str()];
        if let Some(g) = extra {
            base.extend(["--group", g]);
        }
        let conf_s = conf.display().to_string();
        for (action, name) in actions.iter().chain(explain_only.iter()) {
            let mut offline = base.clone();
            offline.extend([*action, *name, "--config", conf_s.as_str()]);
            let off = wardenctl(None, broker.socket(), &offline)?;
            let mut live = base.clone();
            live.extend([*action, *name]);
            let on = wardenctl(None, broker.socket(), &live)?;
            let off_allowed = match off.status.code() {
                Some(0) => true,
                Some(1) => false,
                other => anyhow::bail!("offline explain exited {other:?}: {}", stderr(&off)),
            };
            let on_allowed = match on.status.code() {
                Some(0) => true,
                Some(1) => false,
                other => anyhow::bail!("live explain exited {other:?}: {}", stderr(&on)),
            };
            let what = format!("{} {:?} {action} {name}", user.name, extra);
            assert_eq!(off_allowed, on_allowed, "offline vs live: {what}");
            assert_eq!(
                String::from_utf8_lossy(&off.stdout),
                String::from_utf8_lossy(&on.stdout),
                "same rule named: {what}"
            );
            if actions.contains(&(*action, *name)) {
                let r = real(user, groups, broker.socket(), action, name)?;
                assert_eq!(off_allowed, r, "explain vs the real {what}");
            }
            allowed_count += usize::from(off_allowed);
            cases += 1;
        }
    }
    assert!(cases >= 30, "{cases} cases");
    assert!(
        allowed_count > 5 && allowed_count < cases - 5,
        "a table that is not all-allow or all-deny: {allowed_count}/{cases}"
    );

    // A non-admin may not explain another user's access live.
    let out = wardenctl(
        Some(&bob),
        broker.socket(),
        &[
            "policy",
            "explain",
            "--user",
            "wdn_alice",
            "call",
            "svc.team.y",
        ],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("administrator"), "{}", stderr(&out));
    // ...nor its own with a group it is not in...
    let out = wardenctl(
        Some(&bob),
        broker.socket(),
        &[
            "policy",
            "explain",
            "--user",
            "wdn_bob",
            "--group",
            "wdn_grp",
            "call",
            "svc.team.y",
        ],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("administrator"), "{}", stderr(&out));
    // ...but may explain its own.
    let out = wardenctl(
        Some(&bob),
        broker.socket(),
        &[
            "policy",
            "explain",
            "--user",
            "wdn_bob",
            "call",
            "svc.secret.x",
        ],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("denied by rule 3"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(broker);
    let _ = serving.join();
    Ok(())
}
