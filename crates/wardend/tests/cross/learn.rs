//! Learning mode end to end: a real broker loading the real eBPF programs,
//! `wardenctl learn` run as real test users, a test program that is denied
//! known operations. These need root and BPF; under CI=true they fail
//! rather than skip.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_testkit::{bin_path, command_as, config_text, BrokerProcess, TestDir, TestUser};

use crate::{stderr, stdout, users};

pub(crate) const LEARN_CONFIG: &str = r#"
[learn]
enabled = true
max_sessions_per_uid = 2

[[rule]]
actions = ["call"]
names = ["learn.start", "learn.events", "learn.stop", "warden.ping"]
everyone = true

[[rule]]
actions = ["learn"]
names = ["own"]
everyone = true
"#;

/// The directory `warden-denier` works in: a root-owned 0755 directory, a
/// 0555 directory of user A, and a file of user B.
fn denier_dir(dir: &TestDir, a: &TestUser, b: &TestUser) -> anyhow::Result<PathBuf> {
    let d = dir.path().join("denier");
    std::fs::create_dir_all(d.join("rootdir"))?;
    std::fs::create_dir_all(d.join("ro555"))?;
    std::fs::write(d.join("otherfile"), "b's")?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(d.join("rootdir"), std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(d.join("ro555"), Some(a.uid), Some(a.gid))?;
    std::fs::set_permissions(d.join("ro555"), std::fs::Permissions::from_mode(0o555))?;
    std::os::unix::fs::chown(d.join("otherfile"), Some(b.uid), Some(b.gid))?;
    std::fs::set_permissions(d.join("otherfile"), std::fs::Permissions::from_mode(0o644))?;
    Ok(d)
}

/// The `learn --json` report of a run: the JSON line on its stderr (its
/// stdout is the command's).
pub(crate) fn report_json(out: &std::process::Output) -> anyhow::Result<Value> {
    let err = stderr(out);
    err.lines()
        .rev()
        .filter(|l| l.starts_with('{'))
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("events").is_some())
        })
        .ok_or_else(|| anyhow::anyhow!("no JSON report on stderr: {err}"))
}

/// (syscall, errno, path) of each denial in a `learn --json` report.
pub(crate) fn denials(report: &Value) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = report["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == "denial")
                .map(|e| {
                    (
                        e["syscall"].as_str().unwrap_or("?").to_owned(),
                        e["errno"].as_str().unwrap_or("?").to_owned(),
                        e["path"].as_str().unwrap_or("-").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What `warden-denier` is meant to be denied.
fn expected(d: &Path) -> Vec<(String, String, String)> {
    let p = |s: &str| d.join(s).display().to_string();
    let mut v = vec![
        ("openat".into(), "EACCES".into(), "/etc/shadow".into()),
        ("openat".into(), "EACCES".into(), p("rootdir/new")),
        ("openat".into(), "EACCES".into(), p("ro555/new")),
        ("chmod".into(), "EPERM".into(), p("otherfile")),
        ("openat".into(), "EACCES".into(), p("rootdir/rel-new")),
    ];
    v.sort();
    v
}

pub(crate) fn learn_as(user: &TestUser, socket: &Path, args: &[&str]) -> Command {
    let mut c = command_as(user, &bin_path("wardenctl"));
    c.arg("--socket").arg(socket).arg("learn").args(args);
    // cargo points the loader at the toolchain under /root; the test users
    // cannot read it and the loader's probes would show as denials.
    c.env_remove("LD_LIBRARY_PATH");
    c
}

/// `wardenctl learn ARGS -- warden-denier main DIR` as `user`.
fn learn_denier(
    user: &TestUser,
    socket: &Path,
    args: &[&std::ffi::OsStr],
    denier: &Path,
    dir: &Path,
) -> std::io::Result<std::process::Output> {
    learn_as(user, socket, &[])
        .args(args)
        .arg("--")
        .arg(denier)
        .arg("main")
        .arg(dir)
        .output()
}

fn start(test: &str) -> (TestUser, TestUser, TestDir, BrokerProcess) {
    let (a, b, _) = users(test);
    let dir = TestDir::new(test).unwrap_or_else(|e| panic!("{e:#}"));
    let broker = BrokerProcess::start(&dir, &config_text(&dir, LEARN_CONFIG))
        .unwrap_or_else(|e| panic!("{e:#}"));
    (a, b, dir, broker)
}

#[test]
#[ignore = "needs root"]
fn learn_reports_each_denial_with_syscall_errno_and_path() -> anyhow::Result<()> {
    let (a, b, dir, broker) = start("learn-report");
    let d = denier_dir(&dir, &a, &b)?;
    let denier = warden_testkit::shared_copy(&bin_path("warden-denier"))?;
    let out = learn_denier(&a, broker.socket(), &["--json".as_ref()], &denier, &d)?;
    // The command's own exit status comes through.
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let report = report_json(&out)?;
    assert_eq!(denials(&report), expected(&d), "{report:#}");
    // Each with the process that was denied: pid, comm, exe.
    let exe = denier.display().to_string();
    for e in report["events"].as_array().into_iter().flatten() {
        if e["kind"] == "denial" {
            assert_eq!(e["exe"], exe.as_str(), "{e}");
            assert_eq!(e["comm"], "warden-denier", "{e}");
            assert_eq!(e["uid"], a.uid, "{e}");
        }
    }
    // The grandchild's denial came from a third process.
    let pids: std::collections::BTreeSet<u64> = report["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "denial")
        .filter_map(|e| e["pid"].as_u64())
        .collect();
    assert_eq!(pids.len(), 2, "main and grandchild: {report:#}");
    assert_eq!(report["end"]["lost_in_kernel"], 0);
    // The plain report names each.
    let text = learn_denier(&a, broker.socket(), &[], &denier, &d)?;
    let t = stderr(&text);
    assert!(t.contains("5 denied operations"), "{t}");
    assert!(t.contains("/etc/shadow") && t.contains("chmod"), "{t}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn another_users_process_is_refused() -> anyhow::Result<()> {
    let (a, b, _dir, broker) = start("learn-other");
    let mut sleeper = command_as(&a, Path::new("/bin/sleep")).arg("30").spawn()?;
    let pid = sleeper.id().to_string();
    let out = learn_as(&b, broker.socket(), &["--pid", &pid, "--duration", "1s"]).output()?;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    // A refused capture is the broker's error: exit 1.
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("denied") && err.contains("not yours"), "{err}");
    // A process of root's too.
    let out = learn_as(&a, broker.socket(), &["--pid", "1", "--duration", "1s"]).output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("denied"), "{}", stderr(&out));
    Ok(())
}

/// Spawns `program args` as `user` with pid `want` (via ns_last_pid),
/// or returns None if another process took that pid first.
fn spawn_with_pid(
    user: &TestUser,
    want: u32,
    program: &str,
    args: &[&str],
) -> anyhow::Result<Option<std::process::Child>> {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (want - 1).to_string())?;
    let mut c = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .arg("--")
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    if c.id() == want {
        return Ok(Some(c));
    }
    let _ = c.kill();
    let _ = c.wait();
    Ok(None)
}

#[test]
#[ignore = "needs root"]
fn a_pid_recycled_between_request_and_attach_is_not_captured() -> anyhow::Result<()> {
    let (a, b, dir, _) = start("learn-race");
    // A broker that pauses 1.5 s between checking the target and attaching.
    let env: [(&str, &std::ffi::OsStr); 1] =
        [("WARDEND_TEST_LEARN_ATTACH_DELAY_MS", "1500".as_ref())];
    let dir2 = TestDir::new("learn-race2")?;
    let broker = BrokerProcess::start_hooks(&dir2, &config_text(&dir2, LEARN_CONFIG), &env)?;
    drop(dir);
    for attempt in 0..5 {
        let mut target = command_as(&a, Path::new("/bin/sleep")).arg("30").spawn()?;
        let pid = target.id();
        let learner = learn_as(&a, broker.socket(), &["--json", "--pid", &pid.to_string()])
            .arg("--duration")
            .arg("3s")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // While the broker waits, A's process dies and B's takes its pid,
        // denied over and over.
        std::thread::sleep(Duration::from_millis(500));
        target.kill()?;
        target.wait()?;
        let Some(mut impostor) = spawn_with_pid(
            &b,
            pid,
            "/bin/sh",
            &["-c", "while :; do cat /etc/shadow; sleep 0.05; done"],
        )?
        else {
            let _ = learner.wait_with_output();
            eprintln!("attempt {attempt}: pid {pid} was taken by another process; retrying");
            continue;
        };
        let out = learner.wait_with_output()?;
        let _ = impostor.kill();
        let _ = impostor.wait();
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains("exited before the capture could attach"),
            "{err}"
        );
        assert!(
            !stdout(&out).contains("shadow") && !err.contains("shadow"),
            "B's denials leaked to A"
        );
        return Ok(());
    }
    anyhow::bail!("could not recycle a pid in 5 attempts")
}

#[test]
#[ignore = "needs root"]
fn concurrent_sessions_of_two_users_see_only_their_own_events() -> anyhow::Result<()> {
    let (a, b, _dir, broker) = start("learn-two");
    let run = |u: &TestUser, file: &str| {
        learn_as(u, broker.socket(), &["--json", "--", "/bin/sh", "-c"])
            .arg(format!(
                "for i in 1 2 3 4 5 6 7 8 9 10; do cat {file} 2>/dev/null; sleep 0.05; done; true"
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let ra = run(&a, "/etc/shadow")?;
    let rb = run(&b, "/etc/gshadow")?;
    let (oa, ob) = (ra.wait_with_output()?, rb.wait_with_output()?);
    for (o, me, mine, theirs) in [
        (&oa, &a, "/etc/shadow", "/etc/gshadow"),
        (&ob, &b, "/etc/gshadow", "/etc/shadow"),
    ] {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
        let r = report_json(o)?;
        let d = denials(&r);
        assert_eq!(d.iter().filter(|x| x.2 == mine).count(), 10, "{d:?}");
        assert!(
            !d.iter().any(|x| x.2 == theirs),
            "saw the other session's events: {d:?}"
        );
        for e in r["events"].as_array().into_iter().flatten() {
            if e["kind"] == "denial" {
                assert_eq!(e["uid"], me.uid);
            }
        }
    }
    Ok(())
}

/// Our BPF objects held by `pid`: fds that are BPF programs, links or maps.
fn bpf_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("anon_inode:bpf"))
                .count()
        })
        .unwrap_or(0)
}

/// Ids of the BPF programs live processes hold (directly, or through a
/// link), from `/proc/*/fdinfo`.
fn held_program_ids() -> std::collections::BTreeSet<u64> {
    let mut ids = std::collections::BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return ids;
    };
    for p in procs.filter_map(Result::ok) {
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(text) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("prog_id:") {
                    if let Ok(id) = v.trim().parse() {
                        ids.insert(id);
                    }
                }
            }
        }
    }
    ids
}

/// Learning-mode programs loaded on the machine that no live process
/// holds (none must ever exist: nothing of ours is pinned).
fn orphan_programs() -> anyhow::Result<Vec<String>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()?;
    anyhow::ensure!(out.status.success(), "bpftool failed: {}", stderr(&out));
    let progs: Value = serde_json::from_slice(&out.stdout)?;
    let held = held_program_ids();
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("wl_")))
        .filter(|p| !p["id"].as_u64().is_some_and(|id| held.contains(&id)))
        .map(|p| p.to_string())
        .collect())
}

/// Nothing of ours in tracefs or the audit rules (we use neither; this
/// checks it stays so).
fn no_tracefs_or_audit_leftovers() -> anyhow::Result<()> {
    let tracing = Path::new("/sys/kernel/tracing");
    if !tracing.join("instances").exists() {
        let st = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status()?;
        anyhow::ensure!(st.success(), "cannot mount tracefs to inspect it");
    }
    for e in std::fs::read_dir(tracing.join("instances"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        anyhow::ensure!(
            !name.contains("warden"),
            "tracefs instance {name} left behind"
        );
    }
    let out = Command::new("auditctl").arg("-l").output()?;
    anyhow::ensure!(out.status.success(), "auditctl -l failed: {}", stderr(&out));
    anyhow::ensure!(
        !stdout(&out).contains("warden"),
        "audit rule left: {}",
        stdout(&out)
    );
    Ok(())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn nothing_remains_after_stop_client_kill_or_broker_kill() -> anyhow::Result<()> {
    let (a, _b, dir, mut broker) = start("learn-clean");
    // 1. A normal stop: the programs are unloaded with the last session.
    let out = learn_as(&a, broker.socket(), &["--", "/bin/true"]).output()?;
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the broker to drop its BPF objects", || {
        bpf_fds(broker.pid()) == 0
    })?;
    no_tracefs_or_audit_leftovers()?;
    // 2. The client is SIGKILLed mid-capture.
    let mut client = learn_as(&a, broker.socket(), &["--", "/bin/sleep", "30"])
        .stdout(Stdio::null())
        .spawn()?;
    wait_for("the capture to start", || bpf_fds(broker.pid()) > 0)?;
    client.kill()?;
    client.wait()?;
    wait_for("the session to end with its connection", || {
        bpf_fds(broker.pid()) == 0
    })?;
    no_tracefs_or_audit_leftovers()?;
    // 3. The broker is SIGKILLed mid-capture, then restarted.
    let mut client = learn_as(&a, broker.socket(), &["--", "/bin/sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_for("the capture to start", || bpf_fds(broker.pid()) > 0)?;
    broker.signal(nix::sys::signal::Signal::SIGKILL)?;
    broker.wait_exit(Duration::from_secs(5))?;
    let _ = client.kill();
    let _ = client.wait();
    // The kernel frees a dead process's programs after an RCU grace
    // period: give it time, then nothing may remain.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let orphans = orphan_programs()?;
        if orphans.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs outlived the broker: {orphans:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    no_tracefs_or_audit_leftovers()?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, LEARN_CONFIG))?;
    let out = learn_as(&a, broker.socket(), &["--", "/bin/true"]).output()?;
    assert!(out.status.success(), "after restart: {}", stderr(&out));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn the_suggested_landlock_profile_leaves_only_the_intended_denials() -> anyhow::Result<()> {
    let (a, b, dir, broker) = start("learn-verify");
    let d = denier_dir(&dir, &a, &b)?;
    let denier = warden_testkit::shared_copy(&bin_path("warden-denier"))?;
    // The profile goes to a directory of A's (it is written under a
    // fresh name there, then renamed).
    let mine = dir.path().join("a-profiles");
    std::fs::create_dir_all(&mine)?;
    std::os::unix::fs::chown(&mine, Some(a.uid), Some(a.gid))?;
    let profile = mine.join("denier.landlock.json");
    let out = learn_denier(
        &a,
        broker.socket(),
        &[
            "--format".as_ref(),
            "landlock-json".as_ref(),
            "--output".as_ref(),
            profile.as_os_str(),
        ],
        &denier,
        &d,
    )?;
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let p: Value = serde_json::from_str(&std::fs::read_to_string(&profile)?)?;
    // What it was refused is listed, not granted.
    assert!(
        !p["rules"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["path"] == "/etc/shadow")),
        "{p:#}"
    );
    assert!(
        p["refused"].as_array().is_some_and(|r| r
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("/etc/shadow")))),
        "{p:#}"
    );
    let out = learn_denier(
        &a,
        broker.socket(),
        &["--json".as_ref(), "--verify".as_ref(), profile.as_os_str()],
        &denier,
        &d,
    )?;
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let report = report_json(&out)?;
    assert_eq!(denials(&report), expected(&d), "{report:#}");
    // And a profile that grants nothing does block the program.
    let empty = dir.path().join("empty.json");
    std::fs::write(
        &empty,
        r#"{"version":1,"handled":["read_file","execute"],"rules":[]}"#,
    )?;
    let out = learn_denier(
        &a,
        broker.socket(),
        &["--json".as_ref(), "--verify".as_ref(), empty.as_os_str()],
        &denier,
        &d,
    )?;
    assert_ne!(out.status.code(), Some(7), "an empty ruleset let it run");
    Ok(())
}

/// A file name `warden-denier secrets` is denied after it stopped being
/// dumpable (the constants in warden-denier.rs).
const SECRETS: [&str; 2] = [
    "warden-secret-after-prctl-5c91e7",
    "warden-secret-in-execute-only-0a7d3b",
];

#[test]
#[ignore = "needs root"]
fn a_process_that_became_non_dumpable_leaves_the_capture() -> anyhow::Result<()> {
    let (a, b, dir, broker) = start("learn-nondump");
    let d = denier_dir(&dir, &a, &b)?;
    let denier = warden_testkit::shared_copy(&bin_path("warden-denier"))?;
    // An execute-only copy: root's, 0711, in a root-owned directory. A
    // with a debugger could run it but not read it.
    let xdir = dir.path().join("xonly");
    std::fs::create_dir_all(&xdir)?;
    std::fs::set_permissions(&xdir, std::fs::Permissions::from_mode(0o755))?;
    let xonly = xdir.join("warden-xonly");
    std::fs::copy(&denier, &xonly)?;
    std::fs::set_permissions(&xonly, std::fs::Permissions::from_mode(0o711))?;
    let out = learn_as(&a, broker.socket(), &["--json", "--"])
        .arg(&denier)
        .arg("secrets")
        .arg(&d)
        .arg(&xonly)
        .output()?;
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let text = stderr(&out);
    for s in SECRETS {
        assert!(
            !text.contains(s),
            "the report shows {s}, read from a non-dumpable process: {text}"
        );
    }
    let report = report_json(&out)?;
    // The process that stayed dumpable is still captured.
    assert!(
        denials(&report).contains(&("openat".into(), "EACCES".into(), "/etc/shadow".into())),
        "{report:#}"
    );
    // Both children left, one after its prctl, one at its exec.
    let left: Vec<&Value> = report["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "left")
        .collect();
    assert_eq!(left.len(), 2, "{report:#}");
    assert!(
        left.iter().all(|e| e["reason"] == "non_dumpable"),
        "{left:?}"
    );
    // The plain report says so too.
    let plain = learn_as(&a, broker.socket(), &["--"])
        .arg(&denier)
        .arg("secrets")
        .arg(&d)
        .arg(&xonly)
        .output()?;
    let t = stderr(&plain);
    assert!(t.contains("left the capture: non_dumpable"), "{t}");
    assert!(!SECRETS.iter().any(|s| t.contains(s)), "{t}");
    // A profile session (successful opens recorded too) shows no more.
    let mine = dir.path().join("a-profiles");
    std::fs::create_dir_all(&mine)?;
    std::os::unix::fs::chown(&mine, Some(a.uid), Some(a.gid))?;
    let p_file = mine.join("p.json");
    let profile = learn_as(
        &a,
        broker.socket(),
        &["--format", "landlock-json", "--output"],
    )
    .arg(&p_file)
    .arg("--")
    .arg(&denier)
    .arg("secrets")
    .arg(&d)
    .arg(&xonly)
    .output()?;
    assert_eq!(profile.status.code(), Some(7), "{}", stderr(&profile));
    let (p_out, p_err) = (std::fs::read_to_string(&p_file)?, stderr(&profile));
    assert!(p_err.contains("left the capture: non_dumpable"), "{p_err}");
    assert!(
        !SECRETS
            .iter()
            .any(|s| p_out.contains(s) || p_err.contains(s)),
        "{p_out}\n{p_err}"
    );
    // Root could read it with a debugger: root's session keeps it.
    let out = Command::new(bin_path("wardenctl"))
        .arg("--socket")
        .arg(broker.socket())
        .args(["learn", "--json", "--"])
        .arg(&denier)
        .arg("root-nondumpable")
        .arg(&d)
        .output()?;
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let report = report_json(&out)?;
    assert_eq!(
        denials(&report),
        vec![("unlink".into(), "EPERM".into(), "/proc/version".into())],
        "{report:#}"
    );
    assert!(
        !report["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["kind"] == "left"),
        "{report:#}"
    );
    Ok(())
}
