//! System child hosts under a real wardend: spawned as their user,
//! sandboxed, serving `example.echo` from the Rust example module,
//! restarted after a crash, failed after too many, and gone with the
//! broker however it ends (SIGTERM, or SIGKILL with a grandchild a module
//! started in its own session).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use warden_testkit::{
    bin_path, config_text, test_users, wardenctl, BrokerProcess, RawConn, TestDir, TestUser,
};

pub(crate) const LIVENESS: Duration = Duration::from_secs(20);

/// A C module whose `example.spawn` starts `sleep 300` in a session of its
/// own (out of reach of the host's process group and of PR_SET_PDEATHSIG)
/// and answers its pid: only the hosts' cgroup catches it.
const SPAWN_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
#include "warden_module.h"

static const warden_entry methods[] = {
    {"example.spawn", "Starts a detached sleep 300; answers its pid"},
    {"example.crash", "Dereferences NULL: the host dies of SIGSEGV"},
};

static void call(void *s, warden_str m, warden_str p, const warden_caller *c, const warden_answer *a) {
    char buf[64];
    int n;
    pid_t pid;
    (void)s; (void)p; (void)c;
    if (m.len == 13 && m.ptr[8] == 'c') {
        *(volatile int *)0 = 0;
    }
    pid = fork();
    if (pid == 0) {
        setsid();
        execl("/bin/sleep", "sleep", "300", (char *)0);
        _exit(127);
    }
    n = snprintf(buf, sizeof buf, "{\"pid\":%d}", (int)pid);
    a->set(a->opaque, 0, buf, (size_t)n);
}

static const warden_module module = {
    WARDEN_MODULE_ABI, "spawn", methods, 2, NULL, 0, NULL, call, NULL,
};

const warden_module *warden_module_v1(void) { return &module; }
"#;

/// The two modules, root's, in a directory only root can write.
pub(crate) fn modules(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mods = dir.join("modules");
    std::fs::create_dir(&mods)?;
    std::fs::set_permissions(&mods, std::fs::Permissions::from_mode(0o755))?;
    let echo = mods.join("libwarden_example_echo.so");
    let built = bin_path("wardend").with_file_name("libwarden_example_echo.so");
    anyhow::ensure!(
        built.is_file(),
        "{} is missing: `cargo build --workspace` builds it",
        built.display()
    );
    std::fs::copy(&built, &echo)?;
    std::fs::set_permissions(&echo, std::fs::Permissions::from_mode(0o644))?;
    let spawn = compile_module(&mods, "spawn", SPAWN_C)?;
    Ok((echo, spawn))
}

/// Builds the C module `source` as `dir/libNAME.so` (mode 0644).
pub(crate) fn compile_module(dir: &Path, name: &str, source: &str) -> anyhow::Result<PathBuf> {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source)?;
    let lib = dir.join(format!("lib{name}.so"));
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../warden-module/include");
    let out = std::process::Command::new("cc")
        .args(["-Wall", "-Werror", "-shared", "-fPIC", "-I"])
        .arg(&include)
        .arg("-o")
        .arg(&lib)
        .arg(&src)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cc {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644))?;
    Ok(lib)
}

fn config(dir: &TestDir, user: &TestUser, denied: &TestUser, echo: &Path, spawn: &Path) -> String {
    config_text(
        dir,
        &format!(
            r#"
[[host]]
name = "agent"
user = "{user}"
modules = ["{echo}", "{spawn}"]
env = ["WARDEN_T_ALLOWED"]
restart_delay_ms = 100
restart_max_delay_ms = 400
crash_limit = 3
stop_timeout_ms = 1000

[[rule]]
actions = ["provide"]
names = ["example.**"]
hosts = ["agent"]

[[rule]]
effect = "deny"
actions = ["call"]
names = ["example.spawn", "example.crash"]
users = ["{denied}"]

[[rule]]
actions = ["call"]
names = ["example.**", "warden.introspect"]
everyone = true

[[rule]]
actions = ["call"]
names = ["hosts.list", "hosts.restart"]
admins = true
"#,
            user = user.name,
            denied = denied.name,
            echo = echo.display(),
            spawn = spawn.display()
        ),
    )
}

struct Setup {
    broker: BrokerProcess,
    user: TestUser,
    /// A user the config forbids example.spawn and example.crash.
    denied: TestUser,
    _dir: TestDir,
}

fn start(tag: &str) -> anyhow::Result<Setup> {
    let (a, b, _) = test_users()?;
    let dir = TestDir::new(tag)?;
    let (echo, spawn) = modules(dir.path())?;
    let text = config(&dir, &a, &b, &echo, &spawn);
    let broker = BrokerProcess::start_env(
        &dir,
        &text,
        &[
            ("WARDEN_T_ALLOWED", "yes".as_ref()),
            ("WARDEN_T_SECRET", "leaked".as_ref()),
        ],
    )?;
    Ok(Setup {
        broker,
        user: a,
        denied: b,
        _dir: dir,
    })
}

pub(crate) fn call(socket: &Path, method: &str, params: Value) -> anyhow::Result<Value> {
    let mut c = RawConn::connect(socket)?;
    c.hello()?;
    c.call(1, method, params)
}

/// Calls `method` until the host serves it.
pub(crate) fn call_served(socket: &Path, method: &str, params: Value) -> anyhow::Result<Value> {
    let t = Instant::now();
    loop {
        let v = call(socket, method, params.clone())?;
        let unserved =
            v["error"]["code"] == "unknown_method" || v["error"]["code"] == "unavailable";
        if !unserved {
            anyhow::ensure!(v["kind"] == "reply", "{method}: {v}");
            return Ok(v["result"].clone());
        }
        anyhow::ensure!(t.elapsed() < LIVENESS, "{method} never served: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn hosts_list(socket: &Path) -> anyhow::Result<Value> {
    let v = call(socket, "hosts.list", Value::Null)?;
    anyhow::ensure!(v["kind"] == "reply", "{v}");
    Ok(v["result"]["hosts"][0].clone())
}

pub(crate) fn wait_host(
    socket: &Path,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let t = Instant::now();
    loop {
        let h = hosts_list(socket)?;
        if f(&h) {
            return Ok(h);
        }
        anyhow::ensure!(t.elapsed() < LIVENESS, "{what}: the host is {h}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gone: no such process, or a zombie nobody reaps yet.
fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or("")
}

#[test]
#[ignore = "needs root"]
fn a_system_host_runs_as_its_user_sandboxed_and_serves_example_echo() -> anyhow::Result<()> {
    let s = start("host-id")?;
    let socket = s.broker.socket();
    let v = call_served(socket, "example.echo", json!({"x": 1}))?;
    assert_eq!(v["params"], json!({"x": 1}), "{v}");
    // The caller's identity, as the broker saw it (this test runs as root).
    assert_eq!(v["caller"]["uid"], 0, "{v}");
    assert_eq!(v["caller"]["pid"], std::process::id(), "{v}");
    assert_eq!(v["host"]["name"], "agent", "{v}");
    assert!(
        v["host"].get("session").is_none(),
        "a system host has no session: {v}"
    );
    assert_eq!(v["host"]["uid"], s.user.uid, "{v}");
    let pid = v["host"]["pid"].as_u64().unwrap_or(0);
    // The process: its user and groups, no_new_privs, not dumpable.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = s.user.uid;
    assert_eq!(
        status_field(&status, "Uid:"),
        format!("{uid}\t{uid}\t{uid}\t{uid}"),
        "{status}"
    );
    let gid = s.user.gid;
    assert_eq!(
        status_field(&status, "Gid:"),
        format!("{gid}\t{gid}\t{gid}\t{gid}"),
        "{status}"
    );
    let mut want: Vec<u32> = warden_sys::groups_of_user(&s.user.name, gid)?;
    want.sort_unstable();
    want.dedup();
    let mut got: Vec<u32> = status_field(&status, "Groups:")
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    got.sort_unstable();
    assert_eq!(got, want, "{status}");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{status}");
    let mem_owner = std::fs::metadata(format!("/proc/{pid}/mem"))?.uid();
    assert_eq!(
        mem_owner, 0,
        "the host is dumpable: its /proc entries are its user's"
    );
    // Only the allowlisted environment.
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let vars: Vec<String> = environ
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(vars, ["WARDEN_T_ALLOWED=yes"], "the host's environment");
    // Only the expected descriptors: /dev/null on 0 and 1, the stderr
    // pipe on 2, sockets (the channel, the runtime's own), the runtime's
    // epoll/eventfd, the module files; and none of them one of the
    // broker's (the same open file in both processes), but the stderr
    // pipe the broker reads.
    let targets = |p: u32| -> anyhow::Result<Vec<(u32, String)>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(format!("/proc/{p}/fd"))? {
            let e = e?;
            let Ok(t) = std::fs::read_link(e.path()) else {
                continue;
            };
            let n: u32 = e.file_name().to_string_lossy().parse().unwrap_or(u32::MAX);
            v.push((n, t.display().to_string()));
        }
        Ok(v)
    };
    let host_fds = targets(u32::try_from(pid)?)?;
    let broker_fds: Vec<String> = targets(s.broker.pid())?
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let stderr_pipe = host_fds
        .iter()
        .find(|(n, _)| *n == 2)
        .map(|(_, t)| t.clone());
    assert!(
        stderr_pipe
            .as_deref()
            .is_some_and(|t| t.starts_with("pipe:")),
        "{host_fds:?}"
    );
    let mut sockets = 0;
    for (n, target) in &host_fds {
        match target.as_str() {
            "/dev/null" if *n <= 1 => {}
            t if t.starts_with("pipe:") || t.starts_with("anon_inode:[event") => {}
            t if t.starts_with("socket:") => sockets += 1,
            t if t.ends_with(".so") && t.contains("/modules/") => {}
            other => panic!("fd {n} of the host is {other}: {host_fds:?}"),
        }
        if Some(target) != stderr_pipe.as_ref()
            && !target.starts_with("anon_inode:")
            && target != "/dev/null"
        {
            assert!(
                !broker_fds.contains(target),
                "fd {n} of the host ({target}) is the broker's too: {host_fds:?}"
            );
        }
    }
    assert!(sockets >= 1, "the host has no channel: {host_fds:?}");
    // In its own cgroup leaf.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    assert!(
        cgroup
            .lines()
            .any(|l| l.starts_with("0::") && l.contains("/warden-hosts-") && l.ends_with("/agent")),
        "{cgroup}"
    );
    // The secret the broker had is not in the host: checked above; and
    // hosts.list reports it running.
    let h = hosts_list(socket)?;
    assert_eq!(h["state"], "running", "{h}");
    assert_eq!(h["pid"], pid, "{h}");
    assert_eq!(h["user"], s.user.name, "{h}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_killed_host_restarts_and_too_many_crashes_mark_it_failed() -> anyhow::Result<()> {
    let s = start("host-crash")?;
    let socket = s.broker.socket();
    call_served(socket, "example.echo", Value::Null)?;
    for round in 1..=3u64 {
        let h = wait_host(socket, "running", |h| h["state"] == "running")?;
        let pid = h["pid"].as_u64().unwrap_or(0);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            Signal::SIGKILL,
        )?;
        if round < 3 {
            let h = wait_host(socket, "restarted", |h| {
                h["state"] == "running" && h["pid"] != pid && h["restarts"] == round
            })?;
            assert_eq!(h["last_exit"], "killed by signal 9", "{h}");
            // Served again by the new process.
            call_served(socket, "example.echo", Value::Null)?;
        }
    }
    let h = wait_host(socket, "failed", |h| h["state"] == "failed")?;
    assert!(h["pid"].is_null(), "{h}");
    // While failed, callers get an error rather than waiting forever.
    let v = call(socket, "example.echo", Value::Null)?;
    assert_eq!(v["kind"], "error", "{v}");
    // `wardenctl hosts` says so.
    let out = wardenctl(None, socket, &["hosts"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let line = text.lines().find(|l| l.starts_with("agent")).unwrap_or("");
    assert!(
        line.contains("failed")
            && line.contains("killed by signal 9")
            && line.contains(&s.user.name),
        "{text}"
    );
    // Restarted by hand (`wardenctl hosts restart`), it serves again.
    let out = wardenctl(None, socket, &["hosts", "restart", "agent"])?;
    assert!(out.status.success(), "{out:?}");
    call_served(socket, "example.echo", Value::Null)?;
    let r = call(socket, "hosts.restart", json!({"name": "nosuch"}))?;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    // Failed again, a reload (SIGHUP) starts it too.
    for _ in 0..3 {
        let h = wait_host(socket, "running", |h| h["state"] == "running")?;
        let pid = h["pid"].as_u64().unwrap_or(0);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            Signal::SIGKILL,
        )?;
        wait_host(socket, "gone", |h| h["pid"] != pid)?;
    }
    wait_host(socket, "failed again", |h| h["state"] == "failed")?;
    s.broker.signal(Signal::SIGHUP)?;
    wait_host(socket, "running after the reload", |h| {
        h["state"] == "running"
    })?;
    call_served(socket, "example.echo", Value::Null)?;
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn broker_sigkill_leaves_no_host_nor_a_grandchild_behind() -> anyhow::Result<()> {
    let mut s = start("host-kill")?;
    let socket = s.broker.socket().to_path_buf();
    let v = call_served(&socket, "example.echo", Value::Null)?;
    let host = v["host"]["pid"].as_u64().unwrap_or(0);
    let v = call_served(&socket, "example.spawn", Value::Null)?;
    let grandchild = v["pid"].as_u64().unwrap_or(0);
    assert!(grandchild > 0 && !gone(grandchild), "{v}");
    s.broker.signal(Signal::SIGKILL)?;
    let _ = s.broker.wait_exit(LIVENESS);
    let t = Instant::now();
    while !(gone(host) && gone(grandchild)) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "2 s after the broker's SIGKILL: host {host} gone: {}, grandchild {grandchild} gone: {}",
            gone(host),
            gone(grandchild)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn broker_sigterm_stops_the_hosts_and_exits_0() -> anyhow::Result<()> {
    let mut s = start("host-term")?;
    let socket = s.broker.socket().to_path_buf();
    let v = call_served(&socket, "example.echo", Value::Null)?;
    let host = v["host"]["pid"].as_u64().unwrap_or(0);
    let v = call_served(&socket, "example.spawn", Value::Null)?;
    let grandchild = v["pid"].as_u64().unwrap_or(0);
    s.broker.signal(Signal::SIGTERM)?;
    let status = s.broker.wait_exit(LIVENESS)?;
    assert!(status.success(), "{status}: {}", s.broker.log());
    assert!(gone(host), "the host outlived the broker's SIGTERM");
    let t = Instant::now();
    while !gone(grandchild) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the module's grandchild outlived the broker"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_segfaulting_module_takes_down_only_its_host() -> anyhow::Result<()> {
    let s = start("host-segv")?;
    let socket = s.broker.socket();
    let v = call_served(socket, "example.echo", Value::Null)?;
    let host = v["host"]["pid"].as_u64().unwrap_or(0);
    // The call that crashes the host gets an error, not a hang.
    let v = call(socket, "example.crash", Value::Null)?;
    assert_eq!(v["kind"], "error", "{v}");
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    // The broker is up for everyone else.
    let v = call(socket, "hosts.list", Value::Null)?;
    assert_eq!(v["kind"], "reply", "{v}");
    // The host was restarted, and serves again from a new process.
    let h = wait_host(socket, "restarted after the crash", |h| {
        h["state"] == "running" && h["pid"] != host
    })?;
    // Not dumpable: no core dump either.
    assert_eq!(h["last_exit"], "killed by signal 11", "{h}");
    let v = call_served(socket, "example.echo", Value::Null)?;
    assert_ne!(v["host"]["pid"], host, "{v}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn introspection_lists_what_the_caller_may_call_and_nothing_else() -> anyhow::Result<()> {
    let s = start("host-list")?;
    let socket = s.broker.socket();
    call_served(socket, "example.echo", Value::Null)?;
    let list = |user: Option<&TestUser>| -> anyhow::Result<Vec<Value>> {
        let out = wardenctl(user, socket, &["--json", "list"])?;
        anyhow::ensure!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["methods"].as_array().cloned().unwrap_or_default())
    };
    let names = |m: &[Value]| -> Vec<String> {
        m.iter()
            .filter_map(|x| x["name"].as_str().map(str::to_owned))
            .collect()
    };
    let root = list(None)?;
    let echo = root
        .iter()
        .find(|m| m["name"] == "example.echo")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        echo["served_by"],
        json!({"kind": "host", "host": "agent"}),
        "{echo}"
    );
    assert_eq!(
        echo["description"], "Answers with its params, the caller's identity and the host",
        "the module's own description: {echo}"
    );
    let all = names(&root);
    for m in [
        "example.spawn",
        "example.crash",
        "hosts.list",
        "warden.introspect",
    ] {
        assert!(all.iter().any(|n| n == m), "root may call {m}: {all:?}");
    }
    // The denied user sees what it may call, and nothing else.
    let theirs = names(&list(Some(&s.denied))?);
    assert!(theirs.iter().any(|n| n == "example.echo"), "{theirs:?}");
    for m in [
        "example.spawn",
        "example.crash",
        "hosts.list",
        "hosts.restart",
    ] {
        assert!(
            !theirs.iter().any(|n| n == m),
            "{m} listed to a caller who may not call it: {theirs:?}"
        );
    }
    // The table form names the host.
    let out = wardenctl(None, socket, &["list"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("example.echo") && l.contains("host agent")),
        "{text}"
    );
    Ok(())
}

/// A C module whose `example.probe` (params: a directory, as a JSON
/// string) tries what a sandbox decides: reading a file it was granted,
/// reading one it was not, creating one where it may write, and the
/// denied `getpgid`; it answers each errno (0: it worked).
const PROBE_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "warden_module.h"

static const warden_entry methods[] = {{"example.probe", "Tries the sandbox; answers errnos"}};

static int try_open(const char *path, int flags) {
    int fd = open(path, flags, 0644);
    if (fd < 0) return errno;
    close(fd);
    return 0;
}

static void call(void *s, warden_str m, warden_str p, const warden_caller *c, const warden_answer *a) {
    char dir[256], path[320], buf[160];
    size_t n = p.len >= 2 ? p.len - 2 : 0;
    int readable, outside, write, pgid;
    (void)s; (void)m; (void)c;
    if (n >= sizeof dir) n = sizeof dir - 1;
    memcpy(dir, p.ptr + 1, n);
    dir[n] = 0;
    snprintf(path, sizeof path, "%s/readable/f", dir);
    readable = try_open(path, O_RDONLY);
    outside = try_open("/etc/hostname", O_RDONLY);
    snprintf(path, sizeof path, "%s/writable/new", dir);
    write = try_open(path, O_WRONLY | O_CREAT);
    pgid = syscall(SYS_getpgid, 0) < 0 ? errno : 0;
    n = (size_t)snprintf(buf, sizeof buf,
        "{\"readable\":%d,\"outside\":%d,\"write\":%d,\"getpgid\":%d}", readable, outside, write, pgid);
    a->set(a->opaque, 0, buf, n);
}

static const warden_module module = {
    /* Built for ABI 1 on purpose: a host still loads it. */
    1u, "probe", methods, 1, NULL, 0, NULL, call, NULL,
};

const warden_module *warden_module_v1(void) { return &module; }
"#;

#[test]
#[ignore = "needs root"]
fn a_hosts_landlock_and_seccomp_rules_hold_inside_its_modules() -> anyhow::Result<()> {
    let (a, _, _) = test_users()?;
    let dir = TestDir::new("host-sandbox")?;
    let (echo, _) = modules(dir.path())?;
    let probe = compile_module(&dir.path().join("modules"), "probe", PROBE_C)?;
    let readable = dir.path().join("readable");
    std::fs::create_dir(&readable)?;
    std::fs::write(readable.join("f"), "granted")?;
    let writable = dir.path().join("writable");
    std::fs::create_dir(&writable)?;
    nix::unistd::chown(&writable, Some(nix::unistd::Uid::from_raw(a.uid)), None)?;
    let text = config_text(
        &dir,
        &format!(
            r#"
[[host]]
name = "agent"
user = "{user}"
modules = ["{echo}", "{probe}"]
read_paths = ["{readable}"]
write_paths = ["{writable}"]
deny_syscalls = ["getpgid"]

[[rule]]
actions = ["provide"]
names = ["example.**"]
hosts = ["agent"]

[[rule]]
actions = ["call"]
names = ["example.**"]
everyone = true

[[rule]]
actions = ["call"]
names = ["hosts.module"]
admins = true

[[rule]]
actions = ["module"]
names = ["agent"]
admins = true
"#,
            user = a.name,
            echo = echo.display(),
            probe = probe.display(),
            readable = readable.display(),
            writable = writable.display(),
        ),
    );
    let broker = BrokerProcess::start(&dir, &text)?;
    let socket = broker.socket();
    // The host starts and serves under its sandbox...
    if let Err(e) = call_served(socket, "example.echo", Value::Null) {
        anyhow::bail!("{e}; wardend's log:\n{}", broker.log());
    }
    // ...and the rules hold in its modules.
    let v = call_served(
        socket,
        "example.probe",
        json!(dir.path().display().to_string()),
    )?;
    assert_eq!(v["readable"], 0, "a granted read path: {v}");
    assert_eq!(v["write"], 0, "a granted write path: {v}");
    assert_eq!(
        v["outside"], 13,
        "outside the read paths: EACCES expected: {v}"
    );
    assert_eq!(v["getpgid"], 1, "a denied system call: EPERM expected: {v}");
    assert!(writable.join("new").exists());
    // A reload (a sealed in-memory copy of the module) loads and runs under
    // the same sandbox.
    let out = wardenctl(None, socket, &["module", "reload", "agent", "probe"])?;
    assert!(
        out.status.success(),
        "reload under Landlock and seccomp: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
    let again = call(
        socket,
        "example.probe",
        json!(dir.path().display().to_string()),
    )?;
    assert_eq!(
        again["result"], v,
        "the reloaded module under the sandbox: {again}"
    );
    Ok(())
}
