//! `wardenctl module load|unload|reload` against a running host: unload
//! lets calls in flight finish, reload swaps in a rebuilt library while
//! the other module keeps answering, loads come only from the host's
//! `modules` or its `module_dir` (checked again by the host), and only
//! callers with the `module` action may do any of it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_testkit::{config_text, test_users, wardenctl, BrokerProcess, RawConn, TestDir};

use crate::hosts::{call, call_served, compile_module, hosts_list, modules, wait_host};

/// A C module whose answers carry the VERSION it was built with:
/// `example.version`, `example.slow` (answers after 1.5 s), and with
/// VERSION 2 also `example.added`.
const VERSIONED_C: &str = r#"
#include <stdio.h>
#include <time.h>
#include "warden_module.h"

static const warden_entry methods[] = {
    {"example.version", "Answers the version this build was made with"},
    {"example.slow", "Answers the version after 1.5 s"},
#if VERSION >= 2
    {"example.added", "Only in version 2"},
#endif
};

static void call(void *s, warden_str m, warden_str p, const warden_caller *c, const warden_answer *a) {
    char buf[64];
    int n;
    (void)s; (void)p; (void)c;
    if (m.len == 12 && m.ptr[8] == 's') {
        struct timespec t = {1, 500000000};
        nanosleep(&t, NULL);
    }
    n = snprintf(buf, sizeof buf, "{\"version\":%d}", VERSION);
    a->set(a->opaque, 0, buf, (size_t)n);
}

static const warden_module module = {
    WARDEN_MODULE_ABI, "versioned", methods, sizeof methods / sizeof methods[0],
    NULL, 0, NULL, call, NULL,
};

const warden_module *warden_module_v1(void) { return &module; }
"#;

/// Another C module, for the module directory.
const EXTRA_C: &str = r#"
#include "warden_module.h"
static const warden_entry methods[] = {{"example.extra", "Answers true"}};
static void call(void *s, warden_str m, warden_str p, const warden_caller *c, const warden_answer *a) {
    (void)s; (void)m; (void)p; (void)c;
    a->set(a->opaque, 0, "true", 4);
}
static const warden_module module = {WARDEN_MODULE_ABI, "extra", methods, 1, NULL, 0, NULL, call, NULL};
const warden_module *warden_module_v1(void) { return &module; }
"#;

fn versioned(dir: &Path, version: u32) -> anyhow::Result<std::path::PathBuf> {
    let src = VERSIONED_C.replace(
        "#include <stdio.h>",
        &format!("#define VERSION {version}\n#include <stdio.h>"),
    );
    compile_module(dir, "versioned", &src)
}

fn module_cmd(
    user: Option<&warden_testkit::TestUser>,
    socket: &Path,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let mut all = vec!["module"];
    all.extend_from_slice(args);
    let out = wardenctl(user, socket, &all)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A thread that calls `method` over one connection until told to stop,
/// counting answers and anything that was not a reply.
struct Caller {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<Value>>,
}

impl Caller {
    fn start(socket: &Path, method: &'static str) -> anyhow::Result<Caller> {
        let mut c = RawConn::connect(socket)?;
        c.hello()?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let (s, n) = (Arc::clone(&stop), Arc::clone(&answered));
        let thread = std::thread::spawn(move || {
            let mut bad = Vec::new();
            let mut id = 1;
            while !s.load(Ordering::Relaxed) {
                match c.call(id, method, Value::Null) {
                    Ok(v) if v["kind"] == "reply" => {}
                    Ok(v) => bad.push(v),
                    Err(e) => {
                        bad.push(json!(e.to_string()));
                        break;
                    }
                }
                n.fetch_add(1, Ordering::Relaxed);
                id += 1;
            }
            bad
        });
        Ok(Caller {
            stop,
            answered,
            thread,
        })
    }

    fn finish(self) -> (usize, Vec<Value>) {
        self.stop.store(true, Ordering::Relaxed);
        let bad = self
            .thread
            .join()
            .unwrap_or_else(|_| vec![json!("the caller thread panicked")]);
        (self.answered.load(Ordering::Relaxed), bad)
    }
}

#[test]
#[ignore = "needs root"]
fn modules_are_unloaded_after_their_calls_and_reloaded_without_a_gap() -> anyhow::Result<()> {
    let (a, b, _) = test_users()?;
    let dir = TestDir::new("host-modules")?;
    let (echo, _) = modules(dir.path())?;
    let mods = dir.path().join("modules");
    let lib = versioned(&mods, 1)?;
    let extra_dir = dir.path().join("extra");
    std::fs::create_dir(&extra_dir)?;
    std::fs::set_permissions(&extra_dir, std::fs::Permissions::from_mode(0o755))?;
    let extra = compile_module(&extra_dir, "extra", EXTRA_C)?;
    let text = config_text(
        &dir,
        &format!(
            r#"
[[host]]
name = "agent"
user = "{user}"
modules = ["{echo}", "{lib}"]
module_dir = "{extra_dir}"
restart_delay_ms = 100

[[rule]]
actions = ["provide"]
names = ["example.**"]
hosts = ["agent"]

[[rule]]
actions = ["call"]
names = ["example.**", "hosts.list", "hosts.module"]
everyone = true

[[rule]]
actions = ["module"]
names = ["agent"]
admins = true
"#,
            user = a.name,
            echo = echo.display(),
            lib = lib.display(),
            extra_dir = extra_dir.display(),
        ),
    );
    let broker = BrokerProcess::start(&dir, &text)?;
    let socket = broker.socket();
    let lib_s = lib.display().to_string();
    if let Err(e) = call_served(socket, "example.version", Value::Null) {
        anyhow::bail!("{e}; wardend's log:\n{}", broker.log());
    }
    assert_eq!(
        call_served(socket, "example.version", Value::Null)?["version"],
        1
    );

    // Unload with a call in flight: the call finishes with its answer,
    // the unload returns after it, and the methods are gone.
    let slow_socket = socket.to_owned();
    let slow = std::thread::spawn(move || call(&slow_socket, "example.slow", Value::Null));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (ok, out, err) = module_cmd(None, socket, &["unload", "agent", "versioned"])?;
    let waited = t.elapsed();
    assert!(ok, "unload: {out}{err}\n{}", broker.log());
    assert!(out.contains("unloaded versioned"), "{out}");
    let in_flight = slow
        .join()
        .map_err(|_| anyhow::anyhow!("the slow caller panicked"))??;
    assert_eq!(
        in_flight["result"]["version"], 1,
        "the call in flight: {in_flight}"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "unload returned after {waited:?}, before the call in flight ended"
    );
    let v = call(socket, "example.version", Value::Null)?;
    assert_eq!(v["error"]["code"], "unknown_method", "after unload: {v}");
    assert_eq!(call(socket, "example.echo", Value::Null)?["kind"], "reply");
    let h = hosts_list(socket)?;
    assert_eq!(h["modules"], json!([echo]), "{h}");

    // Load it again (one of the host's modules).
    let (ok, out, err) = module_cmd(None, socket, &["load", "agent", &lib_s])?;
    assert!(ok, "load: {out}{err}");
    assert_eq!(
        call(socket, "example.version", Value::Null)?["result"]["version"],
        1
    );

    // Rebuild it and reload while example.echo is called without pause and
    // a slow call runs on the old build.
    let echoes = Caller::start(socket, "example.echo")?;
    let slow_socket = socket.to_owned();
    let slow = std::thread::spawn(move || call(&slow_socket, "example.slow", Value::Null));
    std::thread::sleep(Duration::from_millis(300));
    versioned(&mods, 2)?;
    let (ok, out, err) = module_cmd(None, socket, &["reload", "agent", &lib_s])?;
    assert!(ok, "reload: {out}{err}\n{}", broker.log());
    assert!(out.contains("new: example.added"), "{out}");
    let in_flight = slow
        .join()
        .map_err(|_| anyhow::anyhow!("the slow caller panicked"))??;
    assert_eq!(
        in_flight["result"]["version"], 1,
        "old build's call: {in_flight}"
    );
    let (answered, bad) = echoes.finish();
    assert!(bad.is_empty(), "example.echo during the reload: {bad:?}");
    assert!(
        answered > 0,
        "example.echo was not answered during the reload"
    );
    assert_eq!(
        call(socket, "example.version", Value::Null)?["result"]["version"],
        2
    );
    assert_eq!(
        call(socket, "example.added", Value::Null)?["result"]["version"],
        2
    );

    // --json: the answer as an object.
    let out = wardenctl(
        None,
        socket,
        &["--json", "module", "reload", "agent", "versioned"],
    )?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["op"], "reload", "{v}");
    assert_eq!(v["methods"].as_array().map(Vec::len), Some(3), "{v}");
    // A C module holds nothing the loader must keep: the old build is
    // unmapped, not just unused.
    assert_eq!(v["old_unmapped"], true, "{v}");

    // From the module directory; it stays loaded across a host restart.
    let (ok, out, err) = module_cmd(
        None,
        socket,
        &["load", "agent", &extra.display().to_string()],
    )?;
    assert!(ok, "load from module_dir: {out}{err}");
    assert_eq!(call(socket, "example.extra", Value::Null)?["result"], true);
    let pid = hosts_list(socket)?["pid"].as_i64().unwrap_or(0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    wait_host(socket, "restarted", |h| {
        h["state"] == "running" && h["pid"].as_i64().is_some_and(|p| p != pid)
    })?;
    assert_eq!(call_served(socket, "example.extra", Value::Null)?, true);
    assert_eq!(
        call_served(socket, "example.version", Value::Null)?["version"],
        2
    );

    // Refused: a path outside the allowed set, a file in the directory
    // that others could have changed, a user without the module action.
    let outside = dir.path().join("libversioned.so");
    std::fs::copy(&lib, &outside)?;
    let (ok, _, err) = module_cmd(
        None,
        socket,
        &["load", "agent", &outside.display().to_string()],
    )?;
    assert!(!ok && err.contains("module_dir"), "outside: {err}");
    let loose = extra_dir.join("libloose.so");
    std::fs::copy(&extra, &loose)?;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666))?;
    let (ok, _, err) = module_cmd(
        None,
        socket,
        &["load", "agent", &loose.display().to_string()],
    )?;
    assert!(
        !ok && err.contains("writable"),
        "group/other-writable: {err}"
    );
    let (ok, _, err) = module_cmd(Some(&b), socket, &["unload", "agent", "versioned"])?;
    assert!(!ok && err.contains("`module` action"), "not allowed: {err}");
    assert_eq!(
        call(socket, "example.version", Value::Null)?["result"]["version"],
        2
    );
    let (ok, _, err) = module_cmd(None, socket, &["unload", "agent", "nosuch"])?;
    assert!(
        !ok && err.contains("no module \"nosuch\""),
        "unknown module: {err}"
    );

    // Every request is in the audit log, the refused ones too.
    let log = broker.log();
    for needle in [
        "action=\"module.load\"",
        "action=\"module.unload\"",
        "action=\"module.reload\"",
        "result=\"denied\"",
        "result=\"refused\"",
    ] {
        assert!(log.contains(needle), "no {needle} in the log:\n{log}");
    }
    Ok(())
}
