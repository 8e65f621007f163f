//! Per-session hosts against a real private `dbus-daemon` and a fake
//! logind that speaks the real interface: a host per user-class session,
//! running as that session's user with logind's RuntimePath, none for a
//! greeter; stopped when the session is removed or closing; picked up by
//! a broker started while sessions exist; restarted when killed, gone
//! (with what its modules started) within 2 s of a broker SIGKILL; and
//! each user's calls reach their own session's host only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_testkit::logind::{FakeLogind, PrivateBus};
use warden_testkit::{config_text, test_users, wardenctl, BrokerProcess, TestDir, TestUser};

use crate::hosts::{call, modules, LIVENESS};

fn config(
    dir: &TestDir,
    bus: &PrivateBus,
    (echo, spawn): (&Path, &Path),
    targeter: &TestUser,
) -> String {
    config_text(
        dir,
        &format!(
            r#"
[sessions]
bus = "{bus}"

[[host]]
name = "agent"
scope = "session"
modules = ["{echo}", "{spawn}"]
restart_delay_ms = 100

[[rule]]
actions = ["provide"]
names = ["example.**"]
hosts = ["agent"]

[[rule]]
actions = ["call"]
names = ["example.**", "warden.introspect"]
everyone = true

[[rule]]
actions = ["call"]
names = ["hosts.list", "hosts.session_call"]
admins = true

[[rule]]
actions = ["target"]
names = ["example.echo"]
users = ["{targeter}"]
"#,
            bus = bus.address(),
            echo = echo.display(),
            spawn = spawn.display(),
            targeter = targeter.name,
        ),
    )
}

/// The session instances `hosts.list` shows: (session, user, state, pid).
fn instances(socket: &Path) -> anyhow::Result<Vec<(String, String, String, u64)>> {
    let v = call(socket, "hosts.list", Value::Null)?;
    anyhow::ensure!(v["kind"] == "reply", "{v}");
    let mut out: Vec<_> = v["result"]["hosts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|h| {
            (
                h["session"].as_str().unwrap_or("").to_owned(),
                h["user"].as_str().unwrap_or("").to_owned(),
                h["state"].as_str().unwrap_or("").to_owned(),
                h["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

fn wait_instances(
    socket: &Path,
    what: &str,
    f: impl Fn(&[(String, String, String, u64)]) -> bool,
) -> anyhow::Result<Vec<(String, String, String, u64)>> {
    let t = Instant::now();
    loop {
        let i = instances(socket)?;
        if f(&i) {
            return Ok(i);
        }
        anyhow::ensure!(t.elapsed() < LIVENESS, "{what}: the hosts are {i:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `example.echo` called by `user` through wardenctl: the answer, or the
/// error object.
fn echo_as(user: &TestUser, socket: &Path) -> anyhow::Result<Value> {
    echo_with(user, socket, &[])
}

/// `example.echo` called by `user` with a target (`--session ID` or
/// `--target-uid N`): the answer, or the error object.
fn echo_targeted(user: &TestUser, socket: &Path, flag: &str, value: &str) -> anyhow::Result<Value> {
    echo_with(user, socket, &[flag, value])
}

/// `wardenctl --json call [FLAGS] example.echo` as `user`.
fn echo_with(user: &TestUser, socket: &Path, flags: &[&str]) -> anyhow::Result<Value> {
    let mut args = vec!["--json", "call"];
    args.extend_from_slice(flags);
    args.push("example.echo");
    let out = wardenctl(Some(user), socket, &args)?;
    let text = if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    };
    Ok(serde_json::from_slice(text)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(text).into_owned())))
}

/// Waits until `user`'s call is served (the host has provided its names).
fn echo_served(user: &TestUser, socket: &Path) -> anyhow::Result<Value> {
    let t = Instant::now();
    loop {
        let v = echo_as(user, socket)?;
        if v["host"].is_object() {
            return Ok(v);
        }
        anyhow::ensure!(
            t.elapsed() < LIVENESS,
            "example.echo as {} never served: {v}",
            user.name
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn runtime_dir(dir: &TestDir, user: &TestUser) -> anyhow::Result<std::path::PathBuf> {
    let d = dir.path().join(format!("run-{}", user.uid));
    std::fs::create_dir(&d)?;
    nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(user.uid)), None)?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
    Ok(d)
}

fn gone(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[test]
#[ignore = "needs root"]
fn session_hosts_follow_logind_and_serve_only_their_own_user() -> anyhow::Result<()> {
    let (a, b, c) = test_users()?;
    let dir = TestDir::new("session-hosts")?;
    let (echo, spawn) = modules(dir.path())?;
    let bus = PrivateBus::start(dir.path())?;
    let mut logind = FakeLogind::start(&bus)?;
    let run_a = runtime_dir(&dir, &a)?;
    let run_b = runtime_dir(&dir, &b)?;
    // A session that exists before the broker starts.
    logind.add("c1", a.uid, &a.name, "user", &run_a, &[])?;
    let text = config(&dir, &bus, (&echo, &spawn), &c);
    let broker = BrokerProcess::start(&dir, &text)?;
    let socket = broker.socket();
    let i = wait_instances(socket, "a's host for the existing session", |i| {
        i.len() == 1 && i[0].2 == "running"
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", broker.log()))?;
    assert_eq!(
        (i[0].0.as_str(), i[0].1.as_str()),
        ("c1", a.name.as_str()),
        "{i:?}"
    );
    let pid_a = i[0].3;

    // It runs as a, with a's groups, and logind's RuntimePath.
    let status = std::fs::read_to_string(format!("/proc/{pid_a}/status"))?;
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert_eq!(
        uid_line.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![a.uid.to_string(); 4],
        "{status}"
    );
    let mut want = warden_sys::groups_of_user(&a.name, a.gid)?;
    want.sort_unstable();
    want.dedup();
    let mut got: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    got.sort_unstable();
    assert_eq!(got, want, "{status}");
    let environ = std::fs::read(format!("/proc/{pid_a}/environ"))?;
    let want_env = format!("XDG_RUNTIME_DIR={}", run_a.display());
    assert!(
        environ.split(|&b| b == 0).any(|v| v == want_env.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&environ)
    );

    // a's call reaches a's host; b, with no session, gets unavailable.
    let v = echo_served(&a, socket)?;
    assert_eq!(
        (v["host"]["uid"].clone(), v["caller"]["uid"].clone()),
        (a.uid.into(), a.uid.into()),
        "{v}"
    );
    assert_eq!(
        v["host"]["session"], "c1",
        "the module sees its session: {v}"
    );
    let v = echo_as(&b, socket)?;
    assert!(
        v.to_string().contains("unavailable"),
        "b without a session: {v}"
    );

    // A greeter session gets no host; a user session of b gets one as b.
    logind.add("g1", b.uid, &b.name, "greeter", &run_b, &[])?;
    logind.add("c2", b.uid, &b.name, "user", &run_b, &[])?;
    let i = wait_instances(socket, "b's host", |i| {
        i.len() == 2 && i.iter().all(|h| h.2 == "running")
    })?;
    assert!(i.iter().all(|h| h.0 != "g1"), "a greeter got a host: {i:?}");
    assert_eq!(
        (i[1].0.as_str(), i[1].1.as_str()),
        ("c2", b.name.as_str()),
        "{i:?}"
    );
    let pid_b = i[1].3;
    let v = echo_served(&b, socket)?;
    assert_eq!(
        (v["host"]["uid"].clone(), v["caller"]["uid"].clone()),
        (b.uid.into(), b.uid.into()),
        "{v}"
    );
    assert_eq!(v["host"]["pid"], pid_b, "{v}");
    let v = echo_served(&a, socket)?;
    assert_eq!(
        v["host"]["pid"], pid_a,
        "a is still served by its own host: {v}"
    );

    // Targets: one's own session always; another user's only with the
    // `target` action (c has it for example.echo, b does not).
    let v = echo_targeted(&a, socket, "--session", "c1")?;
    assert_eq!(v["host"]["pid"], pid_a, "a targets its own session: {v}");
    let v = echo_targeted(&b, socket, "--session", "c1")?;
    assert!(
        v.to_string().contains("denied") && v.to_string().contains("`target` action"),
        "b targets a's session: {v}"
    );
    let v = echo_targeted(&c, socket, "--session", "c2")?;
    assert_eq!(
        (v["host"]["pid"].clone(), v["caller"]["uid"].clone()),
        (pid_b.into(), c.uid.into()),
        "c targets b's session: {v}"
    );
    let v = echo_targeted(&c, socket, "--target-uid", &a.uid.to_string())?;
    assert_eq!(v["host"]["pid"], pid_a, "c targets a by uid: {v}");
    let v = echo_targeted(&a, socket, "--session", "nosuch")?;
    assert!(
        v.to_string().contains("unavailable"),
        "no such session: {v}"
    );
    let out = wardenctl(
        Some(&a),
        socket,
        &["--json", "call", "--session", "c1", "warden.introspect"],
    )?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bad_request"),
        "a target on a built-in: {out:?}"
    );
    let log = broker.log();
    assert!(
        log.contains("action=\"target\"") && log.contains("result=\"denied\""),
        "the refused target is audited:\n{log}"
    );

    // A second session of a: a process logind places in it is served by
    // that session's host; a's process in no session, with two to choose
    // from, gets unavailable naming them.
    let lib_dir = crate::python::client_dir()?;
    let script = format!(
        "import sys, os, json\n\
         sys.path.insert(0, {lib_dir:?})\n\
         import warden_client\n\
         c = warden_client.Client({sock:?})\n\
         print(os.getpid(), flush=True)\n\
         sys.stdin.readline()\n\
         print(json.dumps(c.call('example.echo')), flush=True)\n\
         print(json.dumps(c.call('example.echo', target={{'session': 'c1'}})), flush=True)\n",
        sock = broker.socket_str(),
    );
    let mut py = warden_testkit::command_as(&a, Path::new("/usr/bin/python3"))
        .arg("-c")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let mut py_in = py.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let mut py_out = std::io::BufReader::new(
        py.stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut py_out, &mut line)?;
    let py_pid: u32 = line.trim().parse()?;
    logind.add("c3", a.uid, &a.name, "user", &run_a, &[py_pid])?;
    let i = wait_instances(socket, "a's second host", |i| {
        i.len() == 3 && i.iter().all(|h| h.2 == "running")
    })?;
    let pid_a3 = i.iter().find(|h| h.0 == "c3").map_or(0, |h| h.3);
    // Wait until the new instance provides its names.
    let t = Instant::now();
    loop {
        let v = echo_as(&a, socket)?;
        if v.to_string().contains("several sessions") {
            assert!(
                v.to_string().contains("c1") && v.to_string().contains("c3"),
                "{v}"
            );
            break;
        }
        anyhow::ensure!(t.elapsed() < LIVENESS, "a with two sessions: {v}");
        std::thread::sleep(Duration::from_millis(25));
    }
    std::io::Write::write_all(&mut py_in, b"\n")?;
    line.clear();
    std::io::BufRead::read_line(&mut py_out, &mut line)?;
    let v: Value =
        serde_json::from_str(line.trim()).map_err(|e| anyhow::anyhow!("{e}: {line:?}"))?;
    assert_eq!(v["host"]["pid"], pid_a3, "the process in session c3: {v}");
    assert_eq!(v["caller"]["pid"], py_pid, "{v}");
    line.clear();
    std::io::BufRead::read_line(&mut py_out, &mut line)?;
    let v: Value =
        serde_json::from_str(line.trim()).map_err(|e| anyhow::anyhow!("{e}: {line:?}"))?;
    assert_eq!(
        v["host"]["pid"], pid_a,
        "Python with target session c1: {v}"
    );
    let _ = py.wait();
    logind.remove("c3")?;
    wait_instances(socket, "a's second host stopped", |i| i.len() == 2)?;

    // Introspection marks the method as session-scoped.
    let out = wardenctl(Some(&a), socket, &["--json", "list"])?;
    let list: Value = serde_json::from_slice(&out.stdout)?;
    let echo_entry = list["methods"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "example.echo").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(echo_entry["served_by"]["scope"], "session", "{list}");

    // Removing a's session stops a's host; b's keeps serving.
    logind.remove("c1")?;
    wait_instances(socket, "a's host stopped", |i| {
        i.len() == 1 && i[0].0 == "c2"
    })?;
    let t = Instant::now();
    while !gone(pid_a) {
        anyhow::ensure!(t.elapsed() < LIVENESS, "a's host {pid_a} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let v = echo_as(&a, socket)?;
    assert!(
        v.to_string().contains("unavailable"),
        "a after its session ended: {v}"
    );
    assert_eq!(echo_as(&b, socket)?["host"]["pid"], pid_b);

    // A killed session host is restarted for its session.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid_b)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let i = wait_instances(socket, "b's host restarted", |i| {
        i.len() == 1 && i[0].2 == "running" && i[0].3 != pid_b && i[0].3 != 0
    })?;
    assert_eq!(i[0].0, "c2", "{i:?}");
    let pid_b = i[0].3;
    let v = echo_served(&b, socket)?;
    assert_eq!(v["host"]["pid"], pid_b, "{v}");

    // A grandchild a module of b's host starts in a session of its own.
    let out = wardenctl(Some(&b), socket, &["--json", "call", "example.spawn"])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let grandchild = v["pid"].as_u64().unwrap_or(0);
    assert!(grandchild > 0 && !gone(grandchild), "example.spawn: {v}");

    // A SIGKILLed broker leaves neither within 2 s; a broker started while
    // sessions exist picks them up.
    drop(broker);
    let t = Instant::now();
    while !(gone(pid_b) && gone(grandchild)) {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(2),
            "b's host {pid_b} or its grandchild {grandchild} outlived the broker's SIGKILL by 2 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir2 = TestDir::new("session-hosts-again")?;
    let broker = BrokerProcess::start(&dir2, &config(&dir2, &bus, (&echo, &spawn), &c))?;
    let socket = broker.socket();
    let i = wait_instances(socket, "b's host after a broker restart", |i| {
        i.len() == 1 && i[0].2 == "running"
    })?;
    assert_eq!(i[0].0, "c2", "{i:?}");
    let pid_b = i[0].3;
    assert_eq!(echo_served(&b, socket)?["host"]["uid"], b.uid);

    // A session whose state becomes closing loses its host.
    logind.set_state("c2", "closing")?;
    wait_instances(socket, "b's host stopped at closing", |i| i.is_empty())?;
    let t = Instant::now();
    while !gone(pid_b) {
        anyhow::ensure!(t.elapsed() < LIVENESS, "b's host {pid_b} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn losing_the_bus_keeps_session_hosts_and_they_are_followed_again() -> anyhow::Result<()> {
    let (a, b, c) = test_users()?;
    let dir = TestDir::new("session-bus-loss")?;
    let (echo, spawn) = modules(dir.path())?;
    let run_a = runtime_dir(&dir, &a)?;
    let run_b = runtime_dir(&dir, &b)?;
    let mut bus = PrivateBus::start(dir.path())?;
    let mut logind = FakeLogind::start(&bus)?;
    logind.add("c1", a.uid, &a.name, "user", &run_a, &[])?;
    let broker = BrokerProcess::start(&dir, &config(&dir, &bus, (&echo, &spawn), &c))?;
    let socket = broker.socket();
    let i = wait_instances(socket, "a's host", |i| i.len() == 1 && i[0].2 == "running")?;
    let pid_a = i[0].3;

    // The bus goes away: logged, and a's host keeps running and serving.
    drop(logind);
    bus.kill();
    let t = Instant::now();
    while !broker.log().contains("session hosts keep running") {
        anyhow::ensure!(
            t.elapsed() < LIVENESS,
            "the loss is not logged:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!gone(pid_a), "a's host died with the bus");
    assert_eq!(echo_served(&a, socket)?["host"]["pid"], pid_a);

    // The bus is back (same address): the broker lists the sessions
    // again; b's new session gets a host, a's old one (gone from logind
    // meanwhile) is stopped.
    let bus = PrivateBus::start(dir.path())?;
    let mut logind = FakeLogind::start(&bus)?;
    logind.add("c2", b.uid, &b.name, "user", &run_b, &[])?;
    let i = wait_instances(socket, "followed again", |i| {
        i.len() == 1 && i[0].0 == "c2" && i[0].2 == "running"
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", broker.log()))?;
    assert_eq!(i[0].1, b.name, "{i:?}");
    let t = Instant::now();
    while !gone(pid_a) {
        anyhow::ensure!(t.elapsed() < LIVENESS, "a's host outlived its session");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(echo_served(&b, socket)?["host"]["uid"], b.uid);
    Ok(())
}
