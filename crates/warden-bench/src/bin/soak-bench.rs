//! `soak-bench`: a mixed workload against a real `wardend` for
//! `--duration`, sampling wardend's VmRSS and descriptors every
//! `--sample-every`; at the end a verdict: both flat after the warm-up,
//! and no error at all. Needs root (test users, a socket under /run).
//! Exits non-zero on any error or growth.
//!
//! The parties, each in its own process: the `wardend` next to this
//! binary (release or debug: the cross test `soak` runs the debug one), a
//! provider of the routed `soak.echo` (as root), and workers, this binary
//! re-executed ([`WORKER_ARG`]) with `warden-client`:
//! - as `wdn_alice` and `wdn_bob`: **steady connections** (half of
//!   `--connections` each), subscribed to `soak.events`, each calling
//!   `warden.echo` or `soak.echo` (alternately) once per `--call-every`,
//!   every answer checked; **subscribe churn**: connections that
//!   subscribe to and unsubscribe from `soak.churn` in a loop; **connect
//!   churn**: loops that connect, subscribe, call and disconnect, over and
//!   over; bob's worker also **publishes** on `soak.events` and
//!   `soak.churn` every 100 ms (every event the broker delivers on
//!   `soak.events` must reach its subscriber);
//! - with `--learn` (needs eBPF; skipped, saying why, when `learn.start`
//!   is unavailable): alice's worker runs **learning sessions** in a loop:
//!   a short-lived child of its own (`sh`, which then fails to read
//!   /etc/shadow), `learn.start` on it, the child let go, `learn.stop`,
//!   whose answer must count the denial;
//! - with `--hosts` (needs `libwarden_example_echo.so` and `warden-host`
//!   next to this binary; skipped, saying why, otherwise): a `[[host]]`
//!   serving `example.echo`, and a worker as `wdn_admin` calling it every
//!   200 ms and restarting the host (`hosts.restart`) every 15 s, then
//!   waiting for a new host process to serve (calls while it restarts are
//!   the wait, not errors; any other failure is).
//!
//! wardend's VmRSS (`/proc/PID/status`) and descriptors (`/proc/PID/fd`)
//! are read every [`READING_GAP`]; a sample, at the start and every
//! `--sample-every`, is the lowest and the highest reading since the
//! previous sample. The lowest is the settled footprint, what a leak
//! raises; the highest is printed too (transients: a learning session's
//! eBPF load, replies queued for a reader the machine starves, a
//! connect-churn connection, a host restart). Flat: every settled sample
//! after the reference (the first one at or after `--warmup`) within
//! +10 % of it, for RSS and for descriptors.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use warden_client::{Client, ConnectOptions, Payload};
use warden_testkit::{command_as, config_text, service_user, test_users, RawConn, TestDir};

#[path = "../fleet.rs"]
#[allow(dead_code)] // some helpers are load-bench's
mod fleet;

use fleet::{
    call_error_kind, count_events, emit, lock, ErrorLog, EventCount, Footprint, Rng, Worker,
};

const WORKER_ARG: &str = "--soak-worker";
const PROVIDER_ARG: &str = "--soak-provider";

const EVENTS: &str = "soak.events";
const CHURN_TOPIC: &str = "soak.churn";
const ROUTED: &str = "soak.echo";
const ECHO: &str = "warden.echo";
const HOST_METHOD: &str = "example.echo";
const HOST_NAME: &str = "echo";
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
const SUB_CHURN: usize = 4;
const CONN_CHURN: usize = 2;
const CONN_CHURN_PAUSE: Duration = Duration::from_millis(50);
const LEARN_EVERY: Duration = Duration::from_secs(5);
const HOST_CALL_EVERY: Duration = Duration::from_millis(200);
const HOST_RESTART_EVERY: Duration = Duration::from_secs(15);
/// How long a restarted host gets to serve again.
const HOST_BACK_WITHIN: Duration = Duration::from_secs(30);
/// A worker's progress line.
const STATS_EVERY: Duration = Duration::from_secs(2);
/// The flatness bound.
const FLAT: f64 = 1.10;

const USAGE: &str = "usage: soak-bench [--duration D] [--warmup D] [--sample-every D]
                  [--connections N] [--call-every D] [--learn] [--hosts]
  (as root: test users, a socket under /run; the wardend next to this binary)
  --duration D      how long the workload runs (default 10m)
  --warmup D        the first sample at or after it is the reference (default 20s)
  --sample-every D  wardend's RSS and fds sampled this often (default 10s)
  --connections N   steady connections, over two uids (default 200)
  --call-every D    each steady connection's time between calls (default 100ms)
  --learn           learning sessions in a loop (needs eBPF; skipped with the reason
                    if learn.start is unavailable)
  --hosts           a [[host]] with the example echo module, called and restarted
                    (needs libwarden_example_echo.so and warden-host next to this
                    binary: cargo build --release -p warden-host -p warden-example-echo)";

#[derive(Debug)]
struct Opts {
    duration: Duration,
    warmup: Duration,
    sample_every: Duration,
    connections: usize,
    call_every: Duration,
    learn: bool,
    hosts: bool,
}

fn options(mut args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let mut o = Opts {
        duration: Duration::from_secs(600),
        warmup: Duration::from_secs(20),
        sample_every: Duration::from_secs(10),
        connections: 200,
        call_every: Duration::from_millis(100),
        learn: false,
        hosts: false,
    };
    let value = |args: &mut dyn Iterator<Item = String>, flag: &str| {
        args.next().with_context(|| format!("{flag} needs a value"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--duration" => o.duration = fleet::parse_duration(&value(&mut args, &a)?)?,
            "--warmup" => o.warmup = fleet::parse_duration(&value(&mut args, &a)?)?,
            "--sample-every" => o.sample_every = fleet::parse_duration(&value(&mut args, &a)?)?,
            "--connections" => o.connections = value(&mut args, &a)?.parse()?,
            "--call-every" => o.call_every = fleet::parse_duration(&value(&mut args, &a)?)?,
            "--learn" => o.learn = true,
            "--hosts" => o.hosts = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => anyhow::bail!("unknown argument {a:?}\n{USAGE}"),
        }
    }
    anyhow::ensure!(
        !o.sample_every.is_zero() && !o.call_every.is_zero(),
        "periods must be > 0"
    );
    anyhow::ensure!(
        o.warmup + o.sample_every <= o.duration,
        "--duration must leave at least one sample after the warm-up"
    );
    anyhow::ensure!(
        (2..=1800).contains(&o.connections),
        "--connections: 2 ..= 1800"
    );
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some(WORKER_ARG) => return worker_child(args),
        Some(PROVIDER_ARG) => return fleet::provider_child(args),
        _ => {}
    }
    let opts = options(std::env::args().skip(1))?;
    run(&opts)
}

// ---- the worker ----

/// What a worker's loops do, from the orchestrator (one JSON argument).
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Plan {
    steady: usize,
    call_every_ms: u64,
    sub_churn: usize,
    conn_churn: usize,
    publish: bool,
    learn: bool,
    hosts: bool,
    seed: u64,
}

/// Counts of a worker, under one lock.
#[derive(Debug, Default)]
struct Tally {
    ops: BTreeMap<&'static str, u64>,
    errors: ErrorLog<10>,
    delivered: u64,
    dropped: u64,
}

impl Tally {
    fn op(&mut self, what: &'static str) {
        *self.ops.entry(what).or_default() += 1;
    }

    fn error(&mut self, kind: &str, detail: impl std::fmt::Display) {
        self.errors.record(kind, detail);
    }
}

type Shared = Arc<Mutex<Tally>>;

/// A call whose answer must be its params (`warden.echo`, `soak.echo`).
async fn echo_call(c: &Client, method: &'static str, text: &str, t: &Shared) {
    let params = match Payload::from_raw_json(text) {
        Ok(p) => p,
        Err(e) => return lock(t).error("params", e),
    };
    let r = c.call(method, &params).await;
    let mut t = lock(t);
    t.op(method);
    match r {
        Ok(a) => {
            if serde_json::from_str::<Value>(a.get()).ok()
                != serde_json::from_str::<Value>(text).ok()
            {
                t.error("wrong answer", format!("{method}: {}", a.get()));
            }
        }
        Err(e) => t.error(&format!("{method} {}", call_error_kind(&e)), e),
    }
}

/// Sleeps until `at`, or returns false at once when told to stop.
async fn pause_until(
    at: tokio::time::Instant,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep_until(at) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

async fn connect(socket: &str) -> anyhow::Result<Client> {
    Ok(Client::connect(ConnectOptions::new(socket.to_owned())).await?)
}

/// `SOCKET PLAN`: runs the plan's loops from `go` to `stop` (then says
/// `stopped`), waits on `drain` for the events to settle and prints its
/// `report`; `stats` lines every [`STATS_EVERY`] meanwhile.
fn worker_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let socket = args.next().context("socket")?;
    let plan: Plan = serde_json::from_str(&args.next().context("plan")?)?;
    fleet::raise_nofile()?;
    let mut cmds = fleet::commands()?;
    fleet::runtime_multi()?.block_on(async move {
        let tally: Shared = Arc::default();
        let ev = Arc::new(EventCount::default());
        let quitting = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

        let mut steady = Vec::new();
        for _ in 0..plan.steady {
            let c = Arc::new(connect(&socket).await?);
            c.subscribe(EVENTS).await?;
            count_events(c.clone(), EVENTS, ev.clone(), quitting.clone());
            steady.push(c);
        }
        let mut churners = Vec::new();
        for _ in 0..plan.sub_churn {
            let c = Arc::new(connect(&socket).await?);
            count_events(c.clone(), EVENTS, ev.clone(), quitting.clone());
            churners.push(c);
        }
        let publisher = if plan.publish {
            Some(Arc::new(connect(&socket).await?))
        } else {
            None
        };
        emit(&json!({"kind": "ready"}))?;
        fleet::await_command(&mut cmds, "go").await?;

        let mut tasks = tokio::task::JoinSet::new();
        let every = Duration::from_millis(plan.call_every_ms);
        for (i, c) in steady.iter().enumerate() {
            let (c, t, mut stop) = (c.clone(), tally.clone(), stop_rx.clone());
            let mut rng = Rng::new(plan.seed.wrapping_mul(7919) ^ i as u64);
            tasks.spawn(async move {
                let mut next = tokio::time::Instant::now()
                    + Duration::from_micros(rng.below(every.as_micros() as u64));
                let mut seq = 0u64;
                while pause_until(next, &mut stop).await {
                    next += every;
                    seq += 1;
                    let method = if seq % 2 == 0 { ROUTED } else { ECHO };
                    echo_call(&c, method, &format!(r#"{{"c":{i},"s":{seq}}}"#), &t).await;
                }
            });
        }
        for (i, c) in churners.iter().enumerate() {
            let (c, t, mut stop) = (c.clone(), tally.clone(), stop_rx.clone());
            tasks.spawn(async move {
                let mut next = tokio::time::Instant::now() + Duration::from_millis(5 * i as u64);
                while pause_until(next, &mut stop).await {
                    next += Duration::from_millis(20);
                    let r = async {
                        c.subscribe(CHURN_TOPIC).await?;
                        c.unsubscribe(CHURN_TOPIC).await
                    }
                    .await;
                    let mut t = lock(&t);
                    t.op("subscribe+unsubscribe");
                    if let Err(e) = r {
                        t.error(&format!("subscribe churn {}", call_error_kind(&e)), e);
                    }
                }
            });
        }
        for i in 0..plan.conn_churn {
            let (socket, t, mut stop) = (socket.clone(), tally.clone(), stop_rx.clone());
            tasks.spawn(async move {
                let mut seq = 0u64;
                let mut next = tokio::time::Instant::now();
                while pause_until(next, &mut stop).await {
                    seq += 1;
                    match connect(&socket).await {
                        Ok(c) => {
                            if let Err(e) = c.subscribe(CHURN_TOPIC).await {
                                lock(&t).error("connect churn subscribe", e);
                            }
                            let text = format!(r#"{{"churn":{i},"s":{seq}}}"#);
                            echo_call(&c, ECHO, &text, &t).await;
                            lock(&t).op("connect+disconnect");
                        }
                        Err(e) => lock(&t).error("connect churn connect", format!("{e:#}")),
                    }
                    next = tokio::time::Instant::now() + CONN_CHURN_PAUSE;
                }
            });
        }
        if let Some(p) = publisher.clone() {
            let (t, mut stop) = (tally.clone(), stop_rx.clone());
            tasks.spawn(async move {
                let mut next = tokio::time::Instant::now();
                let mut seq = 0u64;
                while pause_until(next, &mut stop).await {
                    next += PUBLISH_EVERY;
                    seq += 1;
                    let data = match Payload::from_value(&json!({"seq": seq})) {
                        Ok(d) => d,
                        Err(e) => return lock(&t).error("payload", e),
                    };
                    let strict = p.publish(EVENTS, &data).await;
                    let churn = p.publish(CHURN_TOPIC, &data).await;
                    let mut t = lock(&t);
                    t.op("publish");
                    match strict {
                        Ok(r) => {
                            t.delivered += r["delivered"].as_u64().unwrap_or(0);
                            t.dropped += r["dropped"].as_u64().unwrap_or(0);
                        }
                        Err(e) => t.error(&format!("publish {}", call_error_kind(&e)), e),
                    }
                    if let Err(e) = churn {
                        t.error(&format!("publish {}", call_error_kind(&e)), e);
                    }
                }
            });
        }
        if plan.learn {
            let (socket, t, stop) = (socket.clone(), tally.clone(), stop_rx.clone());
            tasks.spawn(learn_loop(socket, t, stop));
        }
        if plan.hosts {
            let (socket, t, stop) = (socket.clone(), tally.clone(), stop_rx.clone());
            tasks.spawn(host_loop(socket, t, stop));
        }
        // Progress lines until `stop`.
        let mut tick = tokio::time::interval(STATS_EVERY);
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd.as_deref() {
                    Some("stop") => break,
                    other => anyhow::bail!("expected stop, got {other:?}"),
                },
                _ = tick.tick() => {
                    let (ops, errors) = {
                        let t = lock(&tally);
                        (t.ops.values().sum::<u64>(), t.errors.total())
                    };
                    emit(&json!({"kind": "stats", "ops": ops, "errors": errors}))?;
                }
            }
        }
        let _ = stop_tx.send(true);
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                lock(&tally).error("task", e);
            }
        }
        emit(&json!({"kind": "stopped"}))?;
        fleet::await_command(&mut cmds, "drain").await?;
        let mut last = ev.received.load(Ordering::Relaxed);
        let t0 = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = ev.received.load(Ordering::Relaxed);
            if now == last || t0.elapsed() > Duration::from_secs(20) {
                break;
            }
            last = now;
        }
        quitting.store(true, Ordering::Relaxed);
        let report = {
            let mut t = lock(&tally);
            let ended = ev.ended.load(Ordering::Relaxed);
            if ended > 0 {
                t.error("connection ended", format!("{ended} event streams ended"));
            }
            json!({
                "kind": "report",
                "ops": t.ops,
                "errors": t.errors.counts,
                "first_errors": t.errors.first,
                "delivered": t.delivered,
                "dropped": t.dropped,
                "received": ev.received.load(Ordering::Relaxed),
                "missed": ev.missed.load(Ordering::Relaxed),
            })
        };
        emit(&report)?;
        // Leave at once: the connections close with the process.
        let _ = fleet::await_command(&mut cmds, "exit").await;
        std::process::exit(0)
    })
}

/// Learning sessions on short-lived children of this worker: the child
/// (`sh`) waits for a line, then fails to read /etc/shadow (a denial)
/// and exits; `learn.stop` must count that denial.
async fn learn_loop(socket: String, t: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    let c = match connect(&socket).await {
        Ok(c) => c,
        Err(e) => return lock(&t).error("learn connect", format!("{e:#}")),
    };
    let mut next = tokio::time::Instant::now();
    while pause_until(next, &mut stop).await {
        next += LEARN_EVERY;
        if let Err(e) = learn_once(&c).await {
            lock(&t).error("learn", format!("{e:#}"));
        }
        lock(&t).op("learning session");
    }
}

async fn learn_once(c: &Client) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", "read x; cat /etc/shadow"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("spawning the child")?;
    let started = c.call_json("learn.start", json!({"pid": child.id()})).await;
    // Let the child go whatever the answer: it must not linger.
    let go = child
        .stdin
        .take()
        .map(|mut s| s.write_all(b"go\n"))
        .transpose();
    let waited = tokio::task::spawn_blocking(move || child.wait()).await;
    let session = started.context("learn.start")?["session"].clone();
    go.context("writing to the child")?;
    waited
        .context("waiting for the child")?
        .context("the child")?;
    let stopped = c
        .call_json("learn.stop", json!({"session": session}))
        .await
        .context("learn.stop")?;
    anyhow::ensure!(
        stopped["denials"].as_u64().unwrap_or(0) >= 1,
        "learn.stop counted no denial: {stopped}"
    );
    Ok(())
}

/// `example.echo` on the host every [`HOST_CALL_EVERY`]; every
/// [`HOST_RESTART_EVERY`] a `hosts.restart`, then the wait for a new host
/// process to serve.
async fn host_loop(socket: String, t: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    let c = match connect(&socket).await {
        Ok(c) => c,
        Err(e) => return lock(&t).error("host connect", format!("{e:#}")),
    };
    let mut pid = match host_pid(&c).await {
        Ok(p) => p,
        Err(e) => return lock(&t).error("hosts.list", format!("{e:#}")),
    };
    let mut next_restart = tokio::time::Instant::now() + HOST_RESTART_EVERY / 3;
    let mut next = tokio::time::Instant::now();
    let mut seq = 0u64;
    while pause_until(next, &mut stop).await {
        next += HOST_CALL_EVERY;
        seq += 1;
        if let Err(e) = host_call(&c, seq, pid).await {
            lock(&t).error("host call", format!("{e:#}"));
        }
        lock(&t).op(HOST_METHOD);
        if tokio::time::Instant::now() < next_restart {
            continue;
        }
        next_restart += HOST_RESTART_EVERY;
        match restart(&c, pid).await {
            Ok(p) => pid = p,
            Err(e) => lock(&t).error("host restart", format!("{e:#}")),
        }
        lock(&t).op("host restart");
        next = tokio::time::Instant::now();
    }
}

async fn host_pid(c: &Client) -> anyhow::Result<u64> {
    let v = c.call_json("hosts.list", json!(null)).await?;
    let h = v["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == HOST_NAME))
        .with_context(|| format!("no host {HOST_NAME} in {v}"))?;
    anyhow::ensure!(h["state"] == "running", "host not running: {h}");
    h["pid"].as_u64().with_context(|| format!("no pid: {h}"))
}

/// One `example.echo`, answered by the host process `pid`.
async fn host_call(c: &Client, seq: u64, pid: u64) -> anyhow::Result<()> {
    let v = c.call_json(HOST_METHOD, json!({"seq": seq})).await?;
    anyhow::ensure!(
        v["params"]["seq"] == seq && v["host"]["pid"] == pid,
        "example.echo answered {v} (expected seq {seq} from host pid {pid})"
    );
    Ok(())
}

/// Restarts the host; returns the new process's pid once it serves.
async fn restart(c: &Client, old: u64) -> anyhow::Result<u64> {
    c.call_json("hosts.restart", json!({"name": HOST_NAME}))
        .await
        .context("hosts.restart")?;
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < HOST_BACK_WITHIN {
        tokio::time::sleep(Duration::from_millis(20)).await;
        match host_pid(c).await {
            Ok(pid) if pid != old => match host_call(c, 0, pid).await {
                Ok(()) => return Ok(pid),
                Err(e) => last = format!("{e:#}"),
            },
            Ok(_) => last = "still the old process".into(),
            Err(e) => last = format!("{e:#}"),
        }
    }
    anyhow::bail!("the host did not serve again within {HOST_BACK_WITHIN:?}: {last}")
}

// ---- the orchestrator ----

/// Why learning sessions cannot run here, if they cannot: one
/// `learn.start` on a child of ours.
fn learn_unavailable(socket: &Path) -> Option<String> {
    let mut child = match std::process::Command::new("/bin/sleep").arg("10").spawn() {
        Ok(c) => c,
        Err(e) => return Some(format!("cannot spawn sleep: {e}")),
    };
    let r = (|| -> anyhow::Result<Option<String>> {
        let mut c = RawConn::connect(socket)?;
        c.hello()?;
        let v = c.call(1, "learn.start", json!({"pid": child.id()}))?;
        if v["kind"] != "reply" {
            return Ok(Some(format!("learn.start answered {}", v["error"])));
        }
        let s = c.call(2, "learn.stop", json!({"session": v["result"]["session"]}))?;
        Ok((s["kind"] != "reply").then(|| format!("learn.stop answered {}", s["error"])))
    })();
    let _ = child.kill();
    let _ = child.wait();
    match r {
        Ok(why) => why,
        Err(e) => Some(format!("{e:#}")),
    }
}

/// The module copied where wardend accepts it (root's, in a root 0755
/// directory), or why hosts cannot run.
fn host_module(dir: &TestDir) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let built = fleet::sibling("libwarden_example_echo.so").ok_or_else(|| {
        "libwarden_example_echo.so is not next to this binary (cargo build -p \
         warden-example-echo, same profile)"
            .to_string()
    })?;
    if fleet::sibling("warden-host").is_none() {
        return Err("warden-host is not next to this binary (cargo build -p warden-host)".into());
    }
    let mods = dir.path().join("modules");
    let copy = mods.join("libwarden_example_echo.so");
    (|| -> std::io::Result<()> {
        std::fs::create_dir(&mods)?;
        std::fs::set_permissions(&mods, std::fs::Permissions::from_mode(0o755))?;
        std::fs::copy(&built, &copy)?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644))
    })()
    .map_err(|e| format!("copying the module: {e}"))?;
    Ok(copy)
}

fn config(learn: bool, host: Option<(&Path, &str)>) -> String {
    let mut c = String::from(
        r#"
[limits]
max_connections_per_uid = 1000

[[rule]]
actions = ["call"]
names = ["warden.echo", "warden.ping", "soak.echo", "example.echo"]
everyone = true

[[rule]]
actions = ["provide"]
names = ["soak.echo"]
uids = [0]

[[rule]]
actions = ["subscribe", "publish"]
names = ["soak.**"]
everyone = true

[[rule]]
actions = ["call"]
names = ["warden.metrics", "hosts.list", "hosts.restart"]
admins = true
"#,
    );
    if learn {
        c.push_str(
            r#"
[learn]
enabled = true

[[rule]]
actions = ["call"]
names = ["learn.start", "learn.events", "learn.stop"]
everyone = true

[[rule]]
actions = ["learn"]
names = ["own"]
everyone = true

[[rule]]
actions = ["learn"]
names = ["any"]
uids = [0]
"#,
        );
    }
    if let Some((module, user)) = host {
        c.push_str(&format!(
            r#"
[[host]]
name = "{HOST_NAME}"
user = "{user}"
modules = ["{}"]
restart_delay_ms = 100
stop_timeout_ms = 1000

[[rule]]
actions = ["provide"]
names = ["example.**"]
hosts = ["{HOST_NAME}"]
"#,
            module.display()
        ));
    }
    c
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    /// The lowest of the sample's readings.
    f: Footprint,
    /// The highest.
    top: Footprint,
    conns: u64,
    ops: u64,
    errors: u64,
}

/// The time between two readings of wardend's footprint.
const READING_GAP: Duration = Duration::from_millis(500);

fn run(o: &Opts) -> anyhow::Result<()> {
    warden_testkit::require_root("soak-bench");
    fleet::raise_nofile()?;
    let me = std::env::current_exe()?;
    let (alice, bob, admin) = test_users()?;
    let dir = TestDir::new("soak-bench")?;
    let mut notes = Vec::new();
    let host = if o.hosts {
        match host_module(&dir) {
            Ok(m) => Some((m, service_user()?.name)),
            Err(why) => {
                notes.push(format!("host restarts: SKIPPED: {why}"));
                None
            }
        }
    } else {
        None
    };
    let text = config_text(
        &dir,
        &config(
            o.learn,
            host.as_ref().map(|(m, u)| (m.as_path(), u.as_str())),
        ),
    );
    let mut broker = fleet::start_wardend(&dir, &text, "info")?;
    let socket = broker.socket().to_path_buf();
    let pid = broker.pid();
    let mut pcmd = std::process::Command::new(&me);
    pcmd.arg(PROVIDER_ARG).arg(&socket).arg(ROUTED);
    let provider = Worker::spawn("provider", pcmd)?;
    fleet::await_served(&socket, ROUTED, Duration::from_secs(20))?;
    let learn = o.learn
        && match learn_unavailable(&socket) {
            None => true,
            Some(why) => {
                notes.push(format!("learning sessions: SKIPPED: {why}"));
                false
            }
        };
    if host.is_some() {
        fleet::await_served(&socket, HOST_METHOD, Duration::from_secs(30))?;
    }
    for n in &notes {
        println!("{n}");
    }
    let half = o.connections / 2;
    let every = o.call_every.as_millis() as u64;
    let mut plans = vec![
        (
            alice,
            Plan {
                steady: o.connections - half,
                call_every_ms: every,
                sub_churn: SUB_CHURN,
                conn_churn: CONN_CHURN,
                publish: false,
                learn,
                hosts: false,
                seed: 1,
            },
        ),
        (
            bob,
            Plan {
                steady: half,
                call_every_ms: every,
                sub_churn: SUB_CHURN,
                conn_churn: CONN_CHURN,
                publish: true,
                learn: false,
                hosts: false,
                seed: 2,
            },
        ),
    ];
    if host.is_some() {
        plans.push((
            admin,
            Plan {
                steady: 0,
                call_every_ms: every,
                sub_churn: 0,
                conn_churn: 0,
                publish: false,
                learn: false,
                hosts: true,
                seed: 3,
            },
        ));
    }
    let mut workers = Vec::new();
    for (user, plan) in &plans {
        let mut cmd = command_as(user, &me);
        cmd.arg(WORKER_ARG)
            .arg(&socket)
            .arg(serde_json::to_string(plan)?);
        workers.push(Worker::spawn(&user.name, cmd)?);
    }
    for w in &mut workers {
        w.await_line("ready", Duration::from_secs(120), &mut |_, _| {})?;
    }
    let parts: Vec<&str> = [
        Some("calls (warden.echo, routed soak.echo)"),
        Some("publications"),
        Some("subscribe churn"),
        Some("connect churn"),
        learn.then_some("learning sessions"),
        host.is_some().then_some("host calls and restarts"),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!(
        "soak-bench: {} for {}: {} steady connections (2 uids) calling once per {}, \
         {} subscribe-churn connections, {} connect-churn loops, a publisher every {}; \
         {} wardend; samples every {}, reference the first at or after {}",
        parts.join(", "),
        fleet::show_duration(o.duration),
        o.connections,
        fleet::show_duration(o.call_every),
        2 * SUB_CHURN,
        2 * CONN_CHURN,
        fleet::show_duration(PUBLISH_EVERY),
        if me.components().any(|c| c.as_os_str() == "release") {
            "release"
        } else {
            "debug"
        },
        fleet::show_duration(o.sample_every),
        fleet::show_duration(o.warmup),
    );
    println!(
        "  (a reading every {}ms; each sample covers the readings since the previous one: \
         RSS and fds = the lowest, the settled footprint that growth raises; max = the \
         highest, transients such as a learning session's eBPF load or replies queued for \
         a slow reader; conns = what wardend counts, ops and errors = the workers' totals \
         so far)",
        READING_GAP.as_millis()
    );
    println!(
        "{:>8} {:>10} {:>10} {:>6} {:>7} {:>6} {:>10} {:>7}",
        "t", "RSS KiB", "RSS max", "fds", "fds max", "conns", "ops", "errors"
    );
    let mut latest: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let t0 = Instant::now();
    for w in &mut workers {
        w.send("go")?;
    }
    let mut samples = Vec::new();
    // A reading every READING_GAP; a sample at 0 and every sample_every,
    // the lowest and highest readings since the previous one.
    let mut window: Option<(Footprint, Footprint)> = None;
    let mut k = 0u32;
    let mut reading = 0u32;
    loop {
        let wait = (t0 + READING_GAP * reading).saturating_duration_since(Instant::now());
        std::thread::sleep(wait);
        reading += 1;
        let f = fleet::footprint(pid)?;
        window = Some(match window {
            None => (f, f),
            Some((low, high)) => (
                Footprint {
                    rss_kib: low.rss_kib.min(f.rss_kib),
                    fds: low.fds.min(f.fds),
                },
                Footprint {
                    rss_kib: high.rss_kib.max(f.rss_kib),
                    fds: high.fds.max(f.fds),
                },
            ),
        });
        let at = t0.elapsed();
        if at + READING_GAP / 2 < o.sample_every * k {
            continue;
        }
        let Some((low, high)) = window.take() else {
            continue;
        };
        for w in &mut workers {
            w.drain(&mut |name, v| {
                if v["kind"] == "stats" {
                    latest.insert(
                        name.to_owned(),
                        (
                            v["ops"].as_u64().unwrap_or(0),
                            v["errors"].as_u64().unwrap_or(0),
                        ),
                    );
                }
            });
        }
        let s = Sample {
            at,
            f: low,
            top: high,
            conns: fleet::broker_connections(&socket)?,
            ops: latest.values().map(|v| v.0).sum(),
            errors: latest.values().map(|v| v.1).sum(),
        };
        println!(
            "{:>7.0}s {:>10} {:>10} {:>6} {:>7} {:>6} {:>10} {:>7}",
            s.at.as_secs_f64(),
            s.f.rss_kib,
            s.top.rss_kib,
            s.f.fds,
            s.top.fds,
            s.conns,
            s.ops,
            s.errors
        );
        std::io::stdout().flush()?;
        samples.push(s);
        k += 1;
        if o.sample_every * k > o.duration {
            break;
        }
    }

    for w in &mut workers {
        w.send("stop")?;
    }
    for w in &mut workers {
        w.await_line("stopped", Duration::from_secs(120), &mut |_, _| {})?;
    }
    for w in &mut workers {
        w.send("drain")?;
    }
    let mut ops: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut first = Vec::new();
    let (mut delivered, mut dropped, mut received, mut missed) = (0, 0, 0, 0);
    for w in &mut workers {
        let r = w.await_line("report", Duration::from_secs(60), &mut |_, _| {})?;
        for (k, v) in r["ops"].as_object().into_iter().flatten() {
            *ops.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
        for (k, v) in r["errors"].as_object().into_iter().flatten() {
            *errors.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
        for e in r["first_errors"].as_array().into_iter().flatten() {
            first.push(format!("{}: {}", w.name, e.as_str().unwrap_or("?")));
        }
        delivered += r["delivered"].as_u64().unwrap_or(0);
        dropped += r["dropped"].as_u64().unwrap_or(0);
        received += r["received"].as_u64().unwrap_or(0);
        missed += r["missed"].as_u64().unwrap_or(0);
    }
    if delivered != received {
        *errors
            .entry("events delivered ≠ received".into())
            .or_default() += delivered.abs_diff(received);
        first.push(format!(
            "{EVENTS}: wardend delivered {delivered}, the subscribers received {received}"
        ));
    }
    for w in &mut workers {
        let _ = w.send("exit");
        let st = w.wait(Duration::from_secs(30))?;
        if !st.success() {
            *errors.entry("worker exit status".into()).or_default() += 1;
            first.push(format!("{}: exited {st}", w.name));
        }
    }
    drop(workers);
    if let Some(st) = broker.try_wait()? {
        *errors.entry("wardend exited".into()).or_default() += 1;
        first.push(format!("wardend exited: {st}"));
    }
    drop(provider);

    let total_errors: u64 = errors.values().sum();
    let summary: Vec<String> = ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("done: {}", summary.join(", "));
    println!(
        "events on {EVENTS}: {delivered} delivered by wardend, {received} received; \
         {dropped} dropped for slow subscribers, {missed} reported missed/lagged (not errors)"
    );
    let kinds: Vec<String> = errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "errors: {total_errors}{}",
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        }
    );
    for e in first.iter().take(10) {
        println!("  {e}");
    }
    let verdict = verdict(&samples, o.warmup);
    let ok = verdict.is_ok() && total_errors == 0;
    match &verdict {
        Ok(v) | Err(v) => println!("{v}"),
    }
    println!(
        "verdict: {} (settled RSS and fds flat within +{:.0} % of the reference after the \
         warm-up: {}; \
         errors {total_errors}: {})",
        if ok { "ok" } else { "FAILED" },
        (FLAT - 1.0) * 100.0,
        if verdict.is_ok() { "yes" } else { "NO" },
        if total_errors == 0 { "none" } else { "NOT 0" }
    );
    anyhow::ensure!(ok, "the soak failed");
    Ok(())
}

/// The flatness line: `Ok` when flat, `Err` when not (or too few samples).
fn verdict(samples: &[Sample], warmup: Duration) -> Result<String, String> {
    let Some(r) = samples
        .iter()
        .position(|s| s.at + Duration::from_millis(500) >= warmup)
    else {
        return Err("flatness: no sample after the warm-up".into());
    };
    let reference = samples[r];
    let later = &samples[r + 1..];
    if later.is_empty() {
        return Err("flatness: no sample after the reference".into());
    }
    let max_rss = later.iter().map(|s| s.f.rss_kib).max().unwrap_or(0);
    let min_rss = later.iter().map(|s| s.f.rss_kib).min().unwrap_or(0);
    let max_fds = later.iter().map(|s| s.f.fds).max().unwrap_or(0);
    let min_fds = later.iter().map(|s| s.f.fds).min().unwrap_or(0);
    let last = later[later.len() - 1];
    let rr = |v: u64| v as f64 / reference.f.rss_kib.max(1) as f64;
    let fr = |v: usize| v as f64 / reference.f.fds.max(1) as f64;
    let flat = rr(max_rss) <= FLAT && fr(max_fds) <= FLAT;
    let line = format!(
        "flatness: reference at {:.0} s: RSS {} KiB, {} fds; the {} samples after it \
         (settled): RSS {:.3} .. {:.3} × (last {:.3} ×), fds {:.3} .. {:.3} × (last {:.3} ×); \
         highest single reading: RSS {:.3} ×, fds {:.3} ×",
        reference.at.as_secs_f64(),
        reference.f.rss_kib,
        reference.f.fds,
        later.len(),
        rr(min_rss),
        rr(max_rss),
        rr(last.f.rss_kib),
        fr(min_fds),
        fr(max_fds),
        fr(last.f.fds),
        rr(later.iter().map(|s| s.top.rss_kib).max().unwrap_or(0)),
        fr(later.iter().map(|s| s.top.fds).max().unwrap_or(0)),
    );
    if flat {
        Ok(line)
    } else {
        Err(line)
    }
}
