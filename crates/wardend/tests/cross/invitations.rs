//! Invitations (`wardenctl invite`, `hello.invitation`): real users, a
//! real broker, real joiners in their own processes.
//!
//! wdn_alice invites; wdn_bob (who may call nothing of the VPN) joins;
//! wdn_admin is an administrator and, for bindings, "another user".

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_proto::invitation::{InvitationId, Secret, Token};
use warden_testkit::{
    bin_path, command_as, config_text, wardenctl, BrokerProcess, RawConn, TestDir, TestUser,
};

use crate::{provider, stderr, stdout, users};

/// The joiner's answer to every refusal that is not a malformed token.
const REFUSED: &str = "invitation refused: it is unknown, revoked, expired, used up, not for this user, or its role is no longer available; ask for a new one";

fn rules(invite_rule: bool) -> String {
    let invite = if invite_rule {
        "[[rule]]\nactions = [\"invite\"]\nnames = [\"*\"]\nusers = [\"wdn_alice\"]\n"
    } else {
        ""
    };
    format!(
        r#"
[[role]]
name = "vpn-helper"
description = "may drive the VPN for a while"

[[role]]
name = "wide"

[[role]]
name = "carved"

[[rule]]
actions = ["call"]
names = ["warden.ping", "warden.whoami", "warden.invite.create", "warden.invite.list", "warden.invite.revoke"]
everyone = true

[[rule]]
actions = ["subscribe"]
names = ["warden.invitations"]
everyone = true

{invite}
[[rule]]
effect = "deny"
actions = ["call"]
names = ["vpn.secret"]
users = ["wdn_alice"]

[[rule]]
actions = ["call"]
names = ["vpn.**"]
users = ["wdn_alice"]

[[rule]]
actions = ["subscribe"]
names = ["vpn.events"]
users = ["wdn_alice"]

[[rule]]
actions = ["call"]
names = ["vpn.up", "vpn.down"]
roles = ["vpn-helper"]

[[rule]]
actions = ["subscribe"]
names = ["vpn.events"]
roles = ["vpn-helper"]

[[rule]]
actions = ["call"]
names = ["other.**"]
roles = ["wide"]

[[rule]]
actions = ["call"]
names = ["vpn.**"]
roles = ["carved"]

[[rule]]
actions = ["provide"]
names = ["vpn.**", "other.**"]
users = ["wdn_admin"]

[[rule]]
actions = ["monitor"]
names = ["calls", "payloads"]
admins = true

[[rule]]
actions = ["call"]
names = ["warden.status"]
admins = true
"#
    )
}

/// A directory `user` owns, mode 0700, for its token files.
fn private_dir(dir: &TestDir, user: &TestUser) -> anyhow::Result<PathBuf> {
    let p = dir.path().join(&user.name);
    std::fs::create_dir(&p)?;
    nix::unistd::chown(
        &p,
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
    Ok(p)
}

/// Hands a token to `user`: a copy in its private directory, its own,
/// mode 0600 (as an administrator would pass it on).
fn hand_over(token: &str, user: &TestUser, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n"))?;
    nix::unistd::chown(
        &p,
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    Ok(p)
}

/// `wardenctl invite create` as `user`, printing the token (JSON).
fn create(user: &TestUser, socket: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let mut a = vec!["--json", "invite", "create"];
    a.extend_from_slice(args);
    let out = wardenctl(Some(user), socket, &a)?;
    anyhow::ensure!(
        out.status.success(),
        "invite create {args:?} failed: {} {}",
        stdout(&out),
        stderr(&out)
    );
    Ok(serde_json::from_str(&stdout(&out))?)
}

/// `warden-peer script`, one JSON line per command.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Script {
    fn start(
        user: &TestUser,
        socket: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Script> {
        let mut cmd = command_as(user, &bin_path("warden-peer"));
        cmd.arg("--socket").arg(socket).args(args).arg("script");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(Script {
            child,
            stdin,
            lines,
        })
    }

    fn next(&self) -> anyhow::Result<Value> {
        let l = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .map_err(|e| anyhow::anyhow!("no line from warden-peer: {e}"))?;
        Ok(serde_json::from_str(&l)?)
    }

    fn run(&mut self, line: &str) -> anyhow::Result<Value> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("stdin closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        self.next()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Joins as `user` with the token file and returns the refusal, or
/// `None` if it was welcomed.
fn join_refusal(user: &TestUser, socket: &Path, file: &Path) -> anyhow::Result<Option<Value>> {
    let f = file.to_string_lossy().into_owned();
    let s = Script::start(user, socket, &["--invite-file", &f], &[])?;
    let first = s.next()?;
    Ok(first.get("refused").cloned())
}

/// Reads `w`'s invitation events until one of `kind` (for invitation
/// `id`, if given) arrives; fails after 10 s.
fn wait_for(w: &mut Script, kind: &str, id: Option<&Value>) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = w.run("event 500")?;
        let d = &e["event"]["data"];
        if d["event"] == kind && id.is_none_or(|i| &d["id"] == i) {
            return Ok(e);
        }
        anyhow::ensure!(Instant::now() < deadline, "no {kind} event (last: {e})");
    }
}

/// A well-formed token that no invitation has.
fn made_up_token(id: Option<&str>) -> String {
    let id = id
        .and_then(|i| i.parse::<InvitationId>().ok())
        .unwrap_or_else(|| InvitationId::from_bytes([9, 8, 7, 6, 5]));
    Token::new(id, Secret::from_bytes([42; 32]))
        .expose()
        .to_string()
}

#[test]
#[ignore = "needs root"]
fn an_invited_user_can_call_exactly_the_role_until_revoked() -> anyhow::Result<()> {
    let (alice, bob, admin) = users("an_invited_user_can_call_exactly_the_role");
    let dir = TestDir::new("invite")?;
    let broker = BrokerProcess::spawn(
        &dir,
        &[
            "--config".as_ref(),
            {
                let conf = dir.path().join("warden.toml");
                std::fs::write(&conf, config_text(&dir, &rules(true)))?;
                conf
            }
            .as_os_str(),
            "--log-level=trace".as_ref(),
        ],
        dir.path().join("s/warden.sock"),
    )?;
    let socket = broker.socket().to_path_buf();
    let _vpn = provider(&admin, &socket, "vpn.up,vpn.down,vpn.secret,other.x", 0)?;
    let alice_dir = private_dir(&dir, &alice)?;
    let bob_dir = private_dir(&dir, &bob)?;
    let mut secrets: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();

    // Watchers: the admin and alice see invitation events, bob none; the
    // admin's monitor sees calls with payloads.
    let mut admin_events = Script::start(&admin, &socket, &[], &[])?;
    assert!(admin_events.next()?.get("welcome").is_some());
    admin_events.run("subscribe warden.invitations")?;
    let mut alice_events = Script::start(&alice, &socket, &[], &[])?;
    alice_events.next()?;
    alice_events.run("subscribe warden.invitations")?;
    let mut bob_events = Script::start(&bob, &socket, &[], &[])?;
    bob_events.next()?;
    bob_events.run("subscribe warden.invitations")?;
    let mut monitor = command_as(&admin, &bin_path("wardenctl"))
        .arg("--socket")
        .arg(&socket)
        .args(["--json", "monitor", "--payloads"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));

    // Without an invitation bob may not touch the VPN.
    let out = wardenctl(Some(&bob), &socket, &["call", "vpn.up"])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: denied"),
        "{}",
        stderr(&out)
    );

    // Alice invites, to a file.
    let file = alice_dir.join("vpn.token");
    let out = wardenctl(
        Some(&alice),
        &socket,
        &[
            "invite",
            "create",
            "--role",
            "vpn-helper",
            "--expires",
            "1h",
            "--uses",
            "3",
            "--label",
            "for bob",
            "--output",
            &file.to_string_lossy(),
        ],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let meta = std::fs::metadata(&file)?;
    assert_eq!(meta.mode() & 0o777, 0o600, "the token file is 0600");
    assert_eq!(meta.uid(), alice.uid);
    let token = std::fs::read_to_string(&file)?.trim().to_owned();
    assert!(
        token.starts_with("wdn_inv_1") && token.len() == 76,
        "{token}"
    );
    secrets.push(token.clone());
    seen.push(stdout(&out));
    seen.push(stderr(&out));
    assert!(
        !stdout(&out).contains(&token),
        "written to the file, not printed"
    );
    let id = token[9..17].to_owned();

    // The list has it, without its secret.
    let out = wardenctl(Some(&alice), &socket, &["--json", "invite", "list"])?;
    let list: Value = serde_json::from_str(&stdout(&out))?;
    seen.push(stdout(&out));
    let inv = &list["invitations"][0];
    assert_eq!(inv["id"], id.as_str());
    assert_eq!(inv["role"], "vpn-helper");
    assert_eq!(inv["uses_left"], 3);
    assert_eq!(inv["label"], "for bob");
    assert_eq!(inv["creator"]["uid"], alice.uid);
    let out = wardenctl(Some(&alice), &socket, &["invite", "list"])?;
    seen.push(stdout(&out));
    assert!(
        stdout(&out).contains(&id) && stdout(&out).contains("vpn-helper"),
        "{}",
        stdout(&out)
    );
    // Bob (not its creator, not an admin) does not see it; the admin does.
    let out = wardenctl(Some(&bob), &socket, &["--json", "invite", "list"])?;
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out))?["invitations"],
        json!([])
    );
    let out = wardenctl(Some(&admin), &socket, &["--json", "invite", "list"])?;
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out))?["invitations"][0]["id"],
        id.as_str()
    );

    // Bob joins (the token in his environment, taken out by the client
    // library's helper) and gets exactly the role.
    let mut b = Script::start(
        &bob,
        &socket,
        &["--invite-env"],
        &[("WARDEN_INVITATION", &token)],
    )?;
    let welcome = b.next()?;
    assert_eq!(welcome["welcome"]["role"], "vpn-helper", "{welcome}");
    assert_eq!(welcome["welcome"]["identity"]["uid"], bob.uid);
    for m in ["vpn.up", "vpn.down"] {
        let r = b.run(&format!("call {m}"))?;
        assert_eq!(r["ok"]["method"], m, "{r}");
    }
    for m in ["vpn.secret", "other.x"] {
        let r = b.run(&format!("call {m}"))?;
        assert_eq!(r["error"]["code"], "denied", "{m}: {r}");
    }
    let r = b.run("subscribe vpn.events")?;
    assert_eq!(r["ok"], "vpn.events", "{r}");
    let r = b.run("call warden.whoami")?;
    assert_eq!(r["ok"]["role"], "vpn-helper", "{r}");
    // An invited connection cannot invite, not even for its own role.
    let r = b.run(r#"call warden.invite.create {"role": "vpn-helper", "expires_secs": 60}"#)?;
    assert_eq!(r["error"]["code"], "denied", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("joined by invitation cannot invite"),
        "{r}"
    );
    // The secret is gone from the joiner's environment and was never on
    // its command line.
    for what in ["environ", "cmdline"] {
        let bytes = std::fs::read(format!("/proc/{}/{what}", b.pid()))?;
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&token[17..69]),
            "/proc/PID/{what} shows the secret"
        );
        // The block itself cannot shrink: the name stays, its value is
        // overwritten with NULs.
        assert!(
            !text.contains("WARDEN_INVITATION=wdn_inv_"),
            "/proc/PID/{what}: the value is overwritten"
        );
    }

    // The admin's `dump` (and `status`) show which connection holds which
    // role, and never a secret.
    let empty_root = dir.path().join("root");
    std::fs::create_dir(&empty_root)?;
    let out = wardenctl(
        Some(&admin),
        &socket,
        &["--json", "dump", "--root", &empty_root.to_string_lossy()],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dump: Value = serde_json::from_str(&stdout(&out))?;
    let holds = dump["broker"]["connection_list"]
        .as_array()
        .is_some_and(|l| {
            l.iter().any(|c| {
                c["pid"] == b.pid() && c["role"] == "vpn-helper" && c["invitation"] == id.as_str()
            })
        });
    assert!(holds, "{dump}");
    seen.push(stdout(&out));

    // The creator and the admin heard it was used, by bob; bob heard nothing.
    for w in [&mut admin_events, &mut alice_events] {
        let e = w.run("event 5000")?;
        assert_eq!(e["event"]["topic"], "warden.invitations", "{e}");
        assert_eq!(e["event"]["data"]["event"], "used", "{e}");
        assert_eq!(e["event"]["data"]["id"], id.as_str(), "{e}");
        assert_eq!(e["event"]["data"]["uid"], bob.uid, "{e}");
        assert_eq!(e["event"]["data"]["pid"], b.pid(), "{e}");
        seen.push(e.to_string());
    }
    assert_eq!(bob_events.run("event 300")?["event"], Value::Null);

    // wardenctl joins the same way, with the variable: subscribes (a
    // second use) and stays connected.
    let mut ctl = command_as(&bob, &bin_path("wardenctl"))
        .arg("--socket")
        .arg(&socket)
        .args(["subscribe", "vpn.events"])
        .env("WARDEN_INVITATION", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_for(&mut admin_events, "used", None)?;
    for what in ["environ", "cmdline"] {
        let bytes = std::fs::read(format!("/proc/{}/{what}", ctl.id()))?;
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&token[17..69]),
            "wardenctl's /proc/PID/{what} shows the secret"
        );
    }

    // Alice revokes: both live connections lose the role at once.
    let out = wardenctl(Some(&alice), &socket, &["invite", "revoke", &id])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 connection(s) lost the role"),
        "{}",
        stdout(&out)
    );
    let e = b.run("event 5000")?;
    assert_eq!(e["event"]["topic"], "warden.policy.revoked", "{e}");
    assert_eq!(e["event"]["data"]["role"], "vpn-helper", "{e}");
    assert_eq!(
        e["event"]["data"]["subscriptions"],
        json!(["vpn.events"]),
        "{e}"
    );
    let r = b.run("call vpn.up")?;
    assert_eq!(r["error"]["code"], "denied", "after revoke: {r}");
    let st = ctl.wait()?;
    assert_eq!(st.code(), Some(5), "wardenctl subscribe ends as revoked");
    wait_for(&mut alice_events, "revoked", Some(&json!(id)))?;

    // Joining with it now is refused, like every other failure below.
    let bob_file = hand_over(&token, &bob, &bob_dir, "revoked.token")?;
    let mut refusals = vec![("revoked", join_refusal(&bob, &socket, &bob_file)?)];

    // Used up: one use, then refused.
    let once = create(&alice, &socket, &["--role", "vpn-helper", "--uses", "1"])?;
    let once_token = once["token"].as_str().unwrap_or("").to_owned();
    secrets.push(once_token.clone());
    let once_file = hand_over(&once_token, &bob, &bob_dir, "once.token")?;
    assert_eq!(join_refusal(&bob, &socket, &once_file)?, None);
    wait_for(&mut admin_events, "used", Some(&once["id"]))?;
    wait_for(&mut admin_events, "exhausted", Some(&once["id"]))?;
    refusals.push(("used up", join_refusal(&bob, &socket, &once_file)?));

    // Expired: it worked, then its time passed.
    let short = create(
        &alice,
        &socket,
        &["--role", "vpn-helper", "--uses", "5", "--expires", "2s"],
    )?;
    let short_token = short["token"].as_str().unwrap_or("").to_owned();
    secrets.push(short_token.clone());
    let short_file = hand_over(&short_token, &bob, &bob_dir, "short.token")?;
    let mut early = Script::start(
        &bob,
        &socket,
        &["--invite-file", &short_file.to_string_lossy()],
        &[],
    )?;
    assert_eq!(early.next()?["welcome"]["role"], "vpn-helper");
    std::thread::sleep(Duration::from_millis(3000));
    refusals.push(("expired", join_refusal(&bob, &socket, &short_file)?));
    // Expiry does not end a live connection.
    let r = early.run("call vpn.up")?;
    assert_eq!(
        r["ok"]["method"], "vpn.up",
        "expiry keeps live connections: {r}"
    );
    wait_for(&mut alice_events, "expired", Some(&short["id"]))?;

    // Wrong secret for a live id, and an id nobody issued.
    let live = create(&alice, &socket, &["--role", "vpn-helper", "--uses", "5"])?;
    secrets.push(live["token"].as_str().unwrap_or("").to_owned());
    let wrong = hand_over(
        &made_up_token(live["id"].as_str()),
        &bob,
        &bob_dir,
        "wrong.token",
    )?;
    refusals.push(("wrong secret", join_refusal(&bob, &socket, &wrong)?));
    let unknown = hand_over(&made_up_token(None), &bob, &bob_dir, "unknown.token")?;
    refusals.push(("unknown id", join_refusal(&bob, &socket, &unknown)?));

    for (why, r) in &refusals {
        let r = r.as_ref().ok_or_else(|| anyhow::anyhow!("{why}: joined"))?;
        assert_eq!(r["code"], "denied", "{why}: {r}");
        assert_eq!(r["message"], REFUSED, "{why}: one identical message");
        seen.push(r.to_string());
    }

    // The secret is nowhere: logs (trace level), monitor output, lists,
    // events, errors.
    let _ = monitor.kill();
    let mon = monitor.wait_with_output()?;
    let mon_text = String::from_utf8_lossy(&mon.stdout).into_owned();
    assert!(
        mon_text.contains("warden.invite.create"),
        "the monitor saw the calls: {mon_text}"
    );
    seen.push(mon_text);
    seen.push(broker.log());
    assert!(
        broker.log().contains("refused an invitation"),
        "failures are logged"
    );
    for s in &secrets {
        let secret = &s[17..69];
        for (i, text) in seen.iter().enumerate() {
            assert!(
                !text.contains(secret),
                "a secret leaked into output #{i}: {text}"
            );
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn bindings_containment_throttling_and_malformed_tokens() -> anyhow::Result<()> {
    let (alice, bob, admin) = users("bindings_containment_throttling");
    let dir = TestDir::new("invite2")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &rules(true)))?;
    let socket = broker.socket().to_path_buf();
    let _vpn = provider(&admin, &socket, "vpn.up", 0)?;
    let bob_dir = private_dir(&dir, &bob)?;
    let admin_dir = private_dir(&dir, &admin)?;
    let alice_dir = private_dir(&dir, &alice)?;

    // Bound to bob: useless to the admin (another user).
    let for_bob = create(
        &alice,
        &socket,
        &[
            "--role",
            "vpn-helper",
            "--uses",
            "5",
            "--for-user",
            &bob.name,
        ],
    )?;
    assert_eq!(for_bob["bound"]["uid"], bob.uid);
    let t = for_bob["token"].as_str().unwrap_or("");
    assert_eq!(
        join_refusal(
            &admin,
            &socket,
            &hand_over(t, &admin, &admin_dir, "b.token")?
        )?
        .map(|r| r["code"].clone()),
        Some(json!("denied"))
    );
    assert_eq!(
        join_refusal(&bob, &socket, &hand_over(t, &bob, &bob_dir, "b.token")?)?,
        None
    );
    // The Python client joins the same way (a second use of bob's).
    let py = |args: &[&str]| {
        let mut cmd = command_as(&bob, Path::new("/usr/bin/python3"));
        cmd.arg(crate::python::script())
            .arg("--socket")
            .arg(&socket)
            .args(args);
        warden_testkit::output_with_timeout(&mut cmd, Duration::from_secs(30))
    };
    let bob_file = bob_dir.join("b.token").to_string_lossy().into_owned();
    let out = py(&["--invite-file", &bob_file, "whoami"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let who: Value = serde_json::from_str(stdout(&out).trim())?;
    assert_eq!(who["role"], "vpn-helper", "{who}");
    let out = py(&["--invite-file", &bob_file, "call", "vpn.up"])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "python with the role calls vpn.up: {}",
        stdout(&out)
    );
    // Bound to wdn_grp: alice is a member, bob is not.
    let for_grp = create(
        &alice,
        &socket,
        &[
            "--role",
            "vpn-helper",
            "--uses",
            "5",
            "--for-group",
            "wdn_grp",
        ],
    )?;
    let t = for_grp["token"].as_str().unwrap_or("");
    assert_eq!(
        join_refusal(&bob, &socket, &hand_over(t, &bob, &bob_dir, "g.token")?)?
            .map(|r| r["code"].clone()),
        Some(json!("denied"))
    );
    assert_eq!(
        join_refusal(
            &alice,
            &socket,
            &hand_over(t, &alice, &alice_dir, "g.token")?
        )?,
        None
    );

    // Containment: wider than alice (other.**), and wider through her
    // deny carve-out (vpn.** includes vpn.secret, which she may not call).
    for (role, needle) in [("wide", "other."), ("carved", "vpn.secret")] {
        let out = wardenctl(Some(&alice), &socket, &["invite", "create", "--role", role])?;
        assert_eq!(out.status.code(), Some(1), "{role}: {}", stdout(&out));
        let e = stderr(&out);
        assert!(e.starts_with("error: denied"), "{role}: {e}");
        assert!(
            e.contains("wider than your own permissions") && e.contains(needle),
            "{role}: {e}"
        );
    }
    // Without the invite action, nothing.
    let out = wardenctl(
        Some(&bob),
        &socket,
        &["invite", "create", "--role", "vpn-helper"],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("may not invite for role vpn-helper"),
        "{}",
        stderr(&out)
    );
    // Nothing was created by the refusals.
    let out = wardenctl(Some(&alice), &socket, &["--json", "invite", "list"])?;
    let list: Value = serde_json::from_str(&stdout(&out))?;
    assert_eq!(
        list["invitations"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );

    // Malformed tokens: bad_request, the connection closed, nothing else
    // disturbed.
    let good = for_bob["token"].as_str().unwrap_or("").to_owned();
    let mut typo = good.clone().into_bytes();
    typo[40] = if typo[40] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo)?;
    for bad in [
        "x",
        "wdn_inv_1",
        &good[..60],
        &typo,
        &good.replacen("wdn_inv_1", "wdn_inv_9", 1),
    ] {
        let mut c = RawConn::connect(&socket)?;
        c.send_json(&json!({"kind": "hello", "version": 1, "invitation": bad}))?;
        let r = c.recv_some()?;
        assert_eq!(r["error"]["code"], "bad_request", "{bad}: {r}");
        let m = r["error"]["message"].as_str().unwrap_or("");
        assert!(m.starts_with("malformed invitation"), "{m}");
        assert!(
            !m.contains(&good[17..40]),
            "the error never echoes the token: {m}"
        );
        assert!(c.closed(), "closed after a malformed invitation");
    }
    // wardenctl and the Python client check the form themselves, before
    // connecting.
    let typo_file = hand_over(&typo, &bob, &bob_dir, "typo.token")?;
    let out = wardenctl(
        Some(&bob),
        &socket,
        &["--invite-file", &typo_file.to_string_lossy(), "ping"],
    )?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));
    let out = py(&["--invite-file", &typo_file.to_string_lossy(), "ping"])?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));

    // 1,000 wrong guesses from bob are throttled; alice's calls and joins
    // are still answered meanwhile.
    let guesser = command_as(&bob, &bin_path("warden-peer"))
        .arg("--socket")
        .arg(&socket)
        .args(["guess", "1000"])
        .stdout(Stdio::piped())
        .spawn()?;
    let t = for_grp["token"].as_str().unwrap_or("");
    let alice_file = hand_over(t, &alice, &alice_dir, "g2.token")?;
    for _ in 0..5 {
        let out = wardenctl(Some(&alice), &socket, &["ping"])?;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert_eq!(
        join_refusal(&alice, &socket, &alice_file)?,
        None,
        "another uid joins while bob is throttled"
    );
    let out = guesser.wait_with_output()?;
    let counts: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())?;
    let denied = counts["denied"].as_u64().unwrap_or(0);
    let limited = counts["limit_exceeded"].as_u64().unwrap_or(0);
    assert_eq!(counts["other"], 0, "{counts}");
    assert_eq!(denied + limited, 1000, "{counts}");
    assert!(
        limited >= 900,
        "most guesses are refused unchecked: {counts}"
    );
    // Bob's own valid invitation waits for the throttle too (his uid is
    // throttled, unchecked); alice is unaffected.
    let r = join_refusal(&bob, &socket, &bob_dir.join("b.token"))?;
    assert_eq!(r.map(|r| r["code"].clone()), Some(json!("limit_exceeded")));
    let out = wardenctl(Some(&alice), &socket, &["ping"])?;
    assert_eq!(out.status.code(), Some(0));
    let log = broker.log();
    assert!(
        log.contains(&format!("uid={}", bob.uid)) || log.contains(&format!("\"uid\":{}", bob.uid)),
        "failures logged with the uid"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn the_token_file_is_created_safely_or_not_at_all() -> anyhow::Result<()> {
    let (alice, _, _) = users("the_token_file_is_created_safely");
    let dir = TestDir::new("invite3")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &rules(true)))?;
    let socket = broker.socket().to_path_buf();
    let alice_dir = private_dir(&dir, &alice)?;
    let count = |who: &TestUser| -> anyhow::Result<usize> {
        let out = wardenctl(Some(who), &socket, &["--json", "invite", "list"])?;
        let v: Value = serde_json::from_str(&stdout(&out))?;
        Ok(v["invitations"].as_array().map_or(0, Vec::len))
    };

    // A planted symlink (to a file alice may write) and an existing file:
    // refused, both untouched, and no invitation created.
    let target = alice_dir.join("target");
    std::fs::write(&target, "keep me")?;
    nix::unistd::chown(&target, Some(nix::unistd::Uid::from_raw(alice.uid)), None)?;
    let link = alice_dir.join("link.token");
    std::os::unix::fs::symlink(&target, &link)?;
    for path in [&link, &target] {
        let out = wardenctl(
            Some(&alice),
            &socket,
            &[
                "invite",
                "create",
                "--role",
                "vpn-helper",
                "--output",
                &path.to_string_lossy(),
            ],
        )?;
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("already there"), "{}", stderr(&out));
    }
    assert_eq!(std::fs::read_to_string(&target)?, "keep me");
    assert!(std::fs::symlink_metadata(&link)?.file_type().is_symlink());
    assert_eq!(count(&alice)?, 0);
    // A directory others can write (/tmp): refused.
    let out = wardenctl(
        Some(&alice),
        &socket,
        &[
            "invite",
            "create",
            "--role",
            "vpn-helper",
            "--output",
            "/tmp/wdn-invite.token",
        ],
    )?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("writable by others"),
        "{}",
        stderr(&out)
    );
    assert!(!Path::new("/tmp/wdn-invite.token").exists());
    // `-` prints it; a fresh name creates it 0600.
    let out = wardenctl(
        Some(&alice),
        &socket,
        &["invite", "create", "--role", "vpn-helper", "--output", "-"],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).trim().starts_with("wdn_inv_1"));
    let fresh = alice_dir.join("fresh.token");
    let out = wardenctl(
        Some(&alice),
        &socket,
        &[
            "invite",
            "create",
            "--role",
            "vpn-helper",
            "--output",
            &fresh.to_string_lossy(),
        ],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&fresh)?.mode() & 0o7777, 0o600);
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_reload_that_shrinks_the_role_drops_it_and_persisted_invitations_survive_a_restart(
) -> anyhow::Result<()> {
    let (alice, bob, _) = users("a_reload_that_shrinks_the_role");
    let dir = TestDir::new("invite4")?;
    let state = dir.path().join("state");
    let persist = format!(
        "[invitations]\npersist = true\nstate_dir = \"{}\"\n",
        state.display()
    );
    let conf = dir.path().join("warden.toml");
    let text = config_text(&dir, &format!("{persist}{}", rules(true)));
    let mut broker = BrokerProcess::start(&dir, &text)?;
    let socket = broker.socket().to_path_buf();
    let bob_dir = private_dir(&dir, &bob)?;
    let inv = create(&alice, &socket, &["--role", "vpn-helper", "--uses", "3"])?;
    let token = inv["token"].as_str().unwrap_or("").to_owned();
    let meta = std::fs::metadata(state.join("invitations.json"))?;
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert!(
        !std::fs::read_to_string(state.join("invitations.json"))?.contains(&token[17..69]),
        "only the hash is stored"
    );

    // A restart keeps it.
    broker.signal(nix::sys::signal::Signal::SIGTERM)?;
    broker.wait_exit(Duration::from_secs(10))?;
    drop(broker);
    let broker = BrokerProcess::start(&dir, &text)?;
    let file = hand_over(&token, &bob, &bob_dir, "p.token")?;
    let mut b = Script::start(
        &bob,
        &socket,
        &["--invite-file", &file.to_string_lossy()],
        &[],
    )?;
    assert_eq!(b.next()?["welcome"]["role"], "vpn-helper");
    assert_eq!(b.run("call warden.whoami")?["ok"]["role"], "vpn-helper");

    // Alice loses `invite`: after the reload the role no longer fits its
    // creator, and bob's live connection loses it.
    std::fs::write(
        &conf,
        config_text(&dir, &format!("{persist}{}", rules(false))),
    )?;
    broker.signal(nix::sys::signal::Signal::SIGHUP)?;
    let e = b.run("event 5000")?;
    assert_eq!(e["event"]["topic"], "warden.policy.revoked", "{e}");
    assert_eq!(e["event"]["data"]["role"], "vpn-helper", "{e}");
    let r = b.run("call warden.whoami")?;
    assert!(r["ok"].get("role").is_none(), "{r}");
    assert_eq!(
        join_refusal(&bob, &socket, &file)?.map(|r| r["code"].clone()),
        Some(json!("denied"))
    );
    Ok(())
}
