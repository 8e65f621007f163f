//! `load-bench`: many connections from several users at once, against a
//! real `wardend`, as users get it. Needs root (test users, a socket
//! under /run).
//!
//! One run, one table. The parties, each in its own process:
//! - **wardend**: the release build next to this binary, on a config that
//!   raises `max_connections` (10 000) and `max_connections_per_uid`
//!   (4 000), lets everyone call `warden.echo`, `warden.ping` and the
//!   routed `load.echo`, and subscribe/publish `load.events`;
//! - **a provider** of `load.echo` (`warden-client` `serve`, answering
//!   with the params);
//! - **workers**: this binary re-executed ([`WORKER_ARG`]) as the test
//!   users, one process per uid, each opening its share of the
//!   connections with `warden-client` (its soft `RLIMIT_NOFILE` raised to
//!   the hard limit first); every connection subscribes to `load.events`
//!   and then calls, once per `--interval` (each from a random offset, so
//!   the calls are spread evenly), `warden.echo` or `load.echo` (one or
//!   the other at random), for `--duration`, checking every answer;
//! - **a publisher** publishing on `load.events` once per
//!   `--publish-every`, so every connection receives events;
//! - **a probe**: one connection, calls one at a time (`warden.echo`, then
//!   `load.echo`, then a short pause), run once on the idle broker
//!   before the load and once during it: the latency ratios.
//!
//! Errors of every kind are counted (connect, subscribe, call errors,
//! wrong answers, connections that end, publish errors, events the broker
//! delivered that never arrived) and must be 0. Events the broker dropped
//! for a slow subscriber (reported as `missed`/`lagged`) are not errors;
//! they are reported. wardend's VmRSS and descriptors are sampled idle
//! (baseline), every 500 ms while the workers run (peak), and for 10 s
//! after they have left (after; wardend trims its heap once connections
//! have closed): after/baseline must be within 20 %.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use warden_client::{Client, ConnectOptions, Payload};
use warden_testkit::{command_as, config_text, service_user, test_users, TestDir, TestUser};

#[path = "../fleet.rs"]
#[allow(dead_code)] // some helpers are soak-bench's
mod fleet;

use fleet::{
    call_error_kind, count_events, emit, lock, pct, u64s, ErrorLog, EventCount, Footprint, Rng,
    Worker,
};

const WORKER_ARG: &str = "--load-worker";
const PROVIDER_ARG: &str = "--load-provider";
const PROBE_ARG: &str = "--load-probe";
const PUBLISHER_ARG: &str = "--load-publisher";

const TOPIC: &str = "load.events";
const ROUTED: &str = "load.echo";
const ECHO: &str = "warden.echo";
/// Connections a worker opens at once.
const CONNECT_CONCURRENCY: usize = 64;
/// The probe: calls per method at most, the pause between rounds.
const PROBE_SAMPLES: usize = 4_000;
const PROBE_GAP: Duration = Duration::from_micros(500);
/// The answer checked: 64 bytes of padding besides the ids.
const PAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// How long wardend gets to give memory back after the workers left.
const AFTER_WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
[limits]
max_connections = 10000
max_connections_per_uid = 4000

[[rule]]
actions = ["call"]
names = ["warden.echo", "warden.ping", "load.echo"]
everyone = true

[[rule]]
actions = ["provide"]
names = ["load.echo"]
uids = [0]

[[rule]]
actions = ["subscribe"]
names = ["load.events"]
everyone = true

[[rule]]
actions = ["publish"]
names = ["load.events"]
uids = [0]

[[rule]]
actions = ["call"]
names = ["warden.metrics"]
admins = true
"#;

const USAGE: &str = "usage: load-bench [--quick] [--connections N] [--uids K] [--duration D]
                  [--interval D] [--publish-every D]
  (as root: test users, a socket under /run; wardend is the one next to this binary:
   cargo build --release -p wardend -p warden-bench -p warden-testkit --bins)
  --connections N    connections in all, split over the uids (default 9000)
  --uids K           worker processes, one per test user (1 ..= 4; default 3)
  --duration D       how long the connections call (default 60s)
  --interval D       each connection's time between calls (default 2s)
  --publish-every D  the publisher's period on load.events (default 1s)
  --quick            600 connections for 10s (a CI-sized run); later flags override";

#[derive(Debug)]
struct Opts {
    connections: usize,
    uids: usize,
    duration: Duration,
    interval: Duration,
    publish_every: Duration,
}

fn options(mut args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let mut o = Opts {
        connections: 9000,
        uids: 3,
        duration: Duration::from_secs(60),
        interval: Duration::from_secs(2),
        publish_every: Duration::from_secs(1),
    };
    let value = |args: &mut dyn Iterator<Item = String>, flag: &str| {
        args.next().with_context(|| format!("{flag} needs a value"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                o.connections = 600;
                o.duration = Duration::from_secs(10);
            }
            "--connections" => o.connections = value(&mut args, &a)?.parse()?,
            "--uids" => o.uids = value(&mut args, &a)?.parse()?,
            "--duration" => o.duration = fleet::parse_duration(&value(&mut args, &a)?)?,
            "--interval" => o.interval = fleet::parse_duration(&value(&mut args, &a)?)?,
            "--publish-every" => {
                o.publish_every = fleet::parse_duration(&value(&mut args, &a)?)?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => anyhow::bail!("unknown argument {a:?}\n{USAGE}"),
        }
    }
    anyhow::ensure!(
        (1..=4).contains(&o.uids),
        "--uids {}: 1 ..= 4 (the test users)",
        o.uids
    );
    anyhow::ensure!(
        o.connections >= o.uids && o.connections <= 4000 * o.uids && o.connections <= 9900,
        "--connections {}: at least one per uid, at most 4000 per uid and 9900 in all \
         (the config's limits)",
        o.connections
    );
    anyhow::ensure!(
        !o.interval.is_zero() && !o.publish_every.is_zero(),
        "intervals must be > 0"
    );
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some(WORKER_ARG) => return worker_child(args),
        Some(PROVIDER_ARG) => return fleet::provider_child(args),
        Some(PROBE_ARG) => return probe_child(args),
        Some(PUBLISHER_ARG) => return publisher_child(args),
        _ => {}
    }
    let opts = options(std::env::args().skip(1))?;
    run(&opts)
}

// ---- the worker ----

/// What a worker counts; one lock, taken once per call.
#[derive(Debug, Default)]
struct Tally {
    calls: BTreeMap<&'static str, u64>,
    errors: ErrorLog<5>,
    lat_echo: Vec<u64>,
    lat_routed: Vec<u64>,
}

impl Tally {
    fn error(&mut self, kind: &str, detail: impl std::fmt::Display) {
        self.errors.record(kind, detail);
    }
}

/// `SOCKET N INTERVAL_MS DURATION_MS SEED`: opens N connections (each
/// subscribed to [`TOPIC`]), says `ready`; on `go` each calls once per
/// interval for the duration; says `stopped`; on `drain` waits for the
/// events to stop arriving and prints its `report`; on `exit` exits
/// (closing every connection at once).
fn worker_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let socket = args.next().context("socket")?;
    let n: usize = args.next().context("n")?.parse()?;
    let interval = Duration::from_millis(args.next().context("interval")?.parse()?);
    let duration = Duration::from_millis(args.next().context("duration")?.parse()?);
    let seed: u64 = args.next().context("seed")?.parse()?;
    let nofile = fleet::raise_nofile()?;
    anyhow::ensure!(
        nofile >= n as u64 + 256,
        "RLIMIT_NOFILE hard limit {nofile}: {n} connections need more"
    );
    let mut cmds = fleet::commands()?;
    fleet::runtime_multi()?.block_on(async move {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let events = Arc::new(EventCount::default());
        let exiting = Arc::new(AtomicBool::new(false));
        let sem = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (sem, socket) = (sem.clone(), socket.clone());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let c = Client::connect(ConnectOptions::new(socket))
                    .await
                    .map_err(|e| ("connect", format!("{e:#}")))?;
                c.subscribe(TOPIC)
                    .await
                    .map_err(|e| ("subscribe", format!("{e:#}")))?;
                Ok::<Client, (&str, String)>(c)
            });
        }
        let mut clients = Vec::with_capacity(n);
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(c)) => clients.push(Arc::new(c)),
                Ok(Err((kind, e))) => lock(&tally).error(kind, e),
                Err(e) => lock(&tally).error("connect task", e.to_string()),
            }
        }
        for c in &clients {
            count_events(c.clone(), TOPIC, events.clone(), exiting.clone());
        }
        emit(&json!({"kind": "ready", "connected": clients.len()}))?;
        fleet::await_command(&mut cmds, "go").await?;
        let end = Instant::now() + duration;
        let mut callers = tokio::task::JoinSet::new();
        for (i, c) in clients.iter().enumerate() {
            let rng = Rng::new(seed.wrapping_mul(1_000_003) ^ i as u64);
            callers.spawn(caller(c.clone(), i, rng, interval, end, tally.clone()));
        }
        while let Some(r) = callers.join_next().await {
            if let Err(e) = r {
                lock(&tally).error("caller task", e.to_string());
            }
        }
        emit(&json!({"kind": "stopped"}))?;
        fleet::await_command(&mut cmds, "drain").await?;
        // The publisher has stopped: wait until no event arrived for 1 s.
        let mut last = events.received.load(Ordering::Relaxed);
        let t = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = events.received.load(Ordering::Relaxed);
            if now == last || t.elapsed() > Duration::from_secs(20) {
                break;
            }
            last = now;
        }
        let report = {
            let mut t = lock(&tally);
            let ended = events.ended.load(Ordering::Relaxed);
            if ended > 0 {
                t.error(
                    "connection ended",
                    format!("{ended} connections' event streams ended"),
                );
            }
            json!({
                "kind": "report",
                "calls": t.calls,
                "errors": t.errors.counts,
                "first_errors": t.errors.first,
                "events": events.received.load(Ordering::Relaxed),
                "missed": events.missed.load(Ordering::Relaxed),
                "lat_echo": t.lat_echo,
                "lat_routed": t.lat_routed,
            })
        };
        emit(&report)?;
        fleet::await_command(&mut cmds, "exit").await?;
        exiting.store(true, Ordering::Relaxed);
        Ok(())
    })
}

/// One connection's calls: from a random offset within the first
/// interval, one call per interval (a fixed schedule, so a slow answer
/// does not thin the load) until `end`.
async fn caller(
    c: Arc<Client>,
    idx: usize,
    mut rng: Rng,
    interval: Duration,
    end: Instant,
    tally: Arc<Mutex<Tally>>,
) {
    let mut next =
        tokio::time::Instant::now() + Duration::from_micros(rng.below(interval.as_micros() as u64));
    let end = tokio::time::Instant::from_std(end);
    let mut seq = 0u64;
    loop {
        tokio::time::sleep_until(next).await;
        if tokio::time::Instant::now() >= end {
            return;
        }
        next += interval;
        seq += 1;
        let routed = rng.below(2) == 1;
        let method = if routed { ROUTED } else { ECHO };
        let text = format!(r#"{{"c":{idx},"s":{seq},"pad":"{PAD}"}}"#);
        let params = match Payload::from_raw_json(&text) {
            Ok(p) => p,
            Err(e) => {
                lock(&tally).error("params", e);
                return;
            }
        };
        let t = Instant::now();
        let r = c.call(method, &params).await;
        let ns = t.elapsed().as_nanos() as u64;
        let mut tally = lock(&tally);
        *tally.calls.entry(method).or_default() += 1;
        match r {
            Ok(answer) => {
                let same = serde_json::from_str::<Value>(answer.get()).ok()
                    == serde_json::from_str::<Value>(&text).ok();
                if same {
                    if routed {
                        tally.lat_routed.push(ns);
                    } else {
                        tally.lat_echo.push(ns);
                    }
                } else {
                    tally.error("wrong answer", format!("{method}: {}", answer.get()));
                }
            }
            Err(e) => tally.error(
                &format!("call {}", call_error_kind(&e)),
                format!("{method}: {e}"),
            ),
        }
    }
}

// ---- the probe and the publisher ----

/// `SOCKET MAX_SAMPLES MAX_MS`: one connection; rounds of `warden.echo`
/// then `load.echo`, one call at a time, [`PROBE_GAP`] apart, until
/// MAX_SAMPLES rounds or MAX_MS; prints its `probe` line.
fn probe_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let socket = args.next().context("socket")?;
    let samples: usize = args.next().context("samples")?.parse()?;
    let max = Duration::from_millis(args.next().context("max ms")?.parse()?);
    fleet::runtime_current()?.block_on(async move {
        let c = Client::connect(ConnectOptions::new(socket)).await?;
        let text = format!(r#"{{"probe":1,"pad":"{PAD}"}}"#);
        let params = Payload::from_raw_json(&text).map_err(|e| anyhow::anyhow!(e))?;
        for _ in 0..200 {
            c.call(ECHO, &params).await?;
            c.call(ROUTED, &params).await?;
        }
        let (mut echo, mut routed) = (Vec::new(), Vec::new());
        let mut errors = 0u64;
        let mut first = Vec::new();
        let t0 = Instant::now();
        while echo.len() < samples && t0.elapsed() < max {
            for (method, out) in [(ECHO, &mut echo), (ROUTED, &mut routed)] {
                let t = Instant::now();
                match c.call(method, &params).await {
                    Ok(a) if a.get() == params.get() => out.push(t.elapsed().as_nanos() as u64),
                    Ok(a) => {
                        errors += 1;
                        if first.len() < 5 {
                            first.push(format!("wrong answer from {method}: {}", a.get()));
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if first.len() < 5 {
                            first.push(format!("{method}: {e}"));
                        }
                    }
                }
            }
            tokio::time::sleep(PROBE_GAP).await;
        }
        emit(&json!({"kind": "probe", "echo": echo, "routed": routed,
                     "errors": errors, "first_errors": first}))
    })
}

/// `SOCKET PERIOD_MS`: publishes `{"seq": n}` on [`TOPIC`] once per
/// period until the command `stop`; prints its `published` totals.
fn publisher_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let socket = args.next().context("socket")?;
    let period = Duration::from_millis(args.next().context("period")?.parse()?);
    let mut cmds = fleet::commands()?;
    fleet::runtime_current()?.block_on(async move {
        let c = Client::connect(ConnectOptions::new(socket)).await?;
        emit(&json!({"kind": "ready"}))?;
        let mut tick = tokio::time::interval(period);
        let (mut published, mut delivered, mut dropped, mut errors) = (0u64, 0u64, 0u64, 0u64);
        let mut first = Vec::new();
        loop {
            tokio::select! {
                cmd = cmds.recv() => {
                    if cmd.as_deref() == Some("stop") || cmd.is_none() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    let data = Payload::from_value(&json!({"seq": published}))?;
                    match c.publish(TOPIC, &data).await {
                        Ok(r) => {
                            published += 1;
                            delivered += r["delivered"].as_u64().unwrap_or(0);
                            dropped += r["dropped"].as_u64().unwrap_or(0);
                        }
                        Err(e) => {
                            errors += 1;
                            if first.len() < 5 {
                                first.push(e.to_string());
                            }
                        }
                    }
                }
            }
        }
        emit(
            &json!({"kind": "published", "published": published, "delivered": delivered,
                     "dropped": dropped, "errors": errors, "first_errors": first}),
        )
    })
}

// ---- the orchestrator ----

/// Latencies, sorted, in nanoseconds.
#[derive(Debug, Default)]
struct Lat {
    echo: Vec<u64>,
    routed: Vec<u64>,
}

impl Lat {
    fn from_probe(v: &Value) -> Lat {
        let mut l = Lat {
            echo: u64s(&v["echo"]),
            routed: u64s(&v["routed"]),
        };
        l.sort();
        l
    }

    fn sort(&mut self) {
        self.echo.sort_unstable();
        self.routed.sort_unstable();
    }
}

/// Errors by kind, from every party.
#[derive(Debug, Default)]
struct Errors {
    by_kind: BTreeMap<String, u64>,
    first: Vec<String>,
}

impl Errors {
    fn add(&mut self, kind: &str, n: u64) {
        if n > 0 {
            *self.by_kind.entry(kind.to_owned()).or_default() += n;
        }
    }

    fn first_from(&mut self, who: &str, v: &Value) {
        for e in v.as_array().into_iter().flatten() {
            if self.first.len() < 10 {
                self.first
                    .push(format!("{who}: {}", e.as_str().unwrap_or("?")));
            }
        }
    }

    fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

fn probe(me: &Path, socket: &Path, max: Duration, errors: &mut Errors) -> anyhow::Result<Lat> {
    let mut cmd = std::process::Command::new(me);
    cmd.arg(PROBE_ARG)
        .arg(socket)
        .arg(PROBE_SAMPLES.to_string())
        .arg(max.as_millis().to_string());
    let mut w = Worker::spawn("probe", cmd)?;
    let v = w.await_line("probe", max + Duration::from_secs(60), &mut |_, _| {})?;
    errors.add("probe call", v["errors"].as_u64().unwrap_or(0));
    errors.first_from("probe", &v["first_errors"]);
    w.wait(Duration::from_secs(10))?;
    Ok(Lat::from_probe(&v))
}

/// Samples wardend every 500 ms on a thread until told to stop; the
/// largest RSS and fd count seen.
struct PeakSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, usize)>,
}

impl PeakSampler {
    fn start(pid: u32) -> anyhow::Result<PeakSampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                let (mut rss, mut fds) = (0, 0);
                while !s.load(Ordering::Relaxed) {
                    if let Ok(f) = fleet::footprint(pid) {
                        rss = rss.max(f.rss_kib);
                        fds = fds.max(f.fds);
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                (rss, fds)
            })?;
        Ok(PeakSampler { stop, thread })
    }

    fn finish(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}

fn run(o: &Opts) -> anyhow::Result<()> {
    warden_testkit::require_root("load-bench");
    fleet::raise_nofile()?;
    let me = std::env::current_exe()?;
    let (a, b, admin) = test_users()?;
    let mut users: Vec<TestUser> = vec![a, b, admin];
    if o.uids == 4 {
        users.push(service_user()?);
    }
    users.truncate(o.uids);
    let dir = TestDir::new("load-bench")?;
    let broker = fleet::start_wardend(&dir, &config_text(&dir, CONFIG), "warn")?;
    let socket = broker.socket().to_path_buf();
    let pid = broker.pid();
    let mut errors = Errors::default();

    let mut pcmd = std::process::Command::new(&me);
    pcmd.arg(PROVIDER_ARG).arg(&socket).arg(ROUTED);
    let _provider = Worker::spawn("provider", pcmd)?;
    fleet::await_served(&socket, ROUTED, Duration::from_secs(20))?;
    let base_conns = fleet::broker_connections(&socket)?;

    // Idle: the probe on the quiet broker, then the baseline footprint.
    let idle = probe(&me, &socket, Duration::from_secs(20), &mut errors)?;
    std::thread::sleep(Duration::from_secs(1));
    let baseline = fleet::footprint(pid)?;
    let base_maps = fleet::smaps(pid)?;

    // The workers connect.
    let t_connect = Instant::now();
    let mut workers = Vec::new();
    for (k, user) in users.iter().enumerate() {
        let n = o.connections / o.uids + usize::from(k < o.connections % o.uids);
        let mut cmd = command_as(user, &me);
        cmd.arg(WORKER_ARG)
            .arg(&socket)
            .arg(n.to_string())
            .arg(o.interval.as_millis().to_string())
            .arg(o.duration.as_millis().to_string())
            .arg((k as u64 + 1).to_string());
        workers.push((Worker::spawn(&user.name, cmd)?, n));
    }
    let mut connected = 0;
    let mut worker_errors = Vec::new();
    for (w, n) in &mut workers {
        let v = w.await_line("ready", Duration::from_secs(300), &mut |_, _| {})?;
        let c = v["connected"].as_u64().unwrap_or(0) as usize;
        connected += c;
        if c < *n {
            worker_errors.push(format!("{}: {c} of {n} connected", w.name));
        }
    }
    let connect_time = t_connect.elapsed();
    let broker_conns = fleet::broker_connections(&socket)?;
    let all_connected = fleet::footprint(pid)?;

    // The load.
    let mut ucmd = std::process::Command::new(&me);
    ucmd.arg(PUBLISHER_ARG)
        .arg(&socket)
        .arg(o.publish_every.as_millis().to_string());
    let mut publisher = Worker::spawn("publisher", ucmd)?;
    publisher.await_line("ready", Duration::from_secs(20), &mut |_, _| {})?;
    let sampler = PeakSampler::start(pid)?;
    let t_go = Instant::now();
    for (w, _) in &mut workers {
        w.send("go")?;
    }
    // The probe in the middle third of the run.
    std::thread::sleep(o.duration / 3);
    let loaded = probe(&me, &socket, o.duration / 3, &mut errors)?;
    for (w, _) in &mut workers {
        w.await_line(
            "stopped",
            o.duration.saturating_sub(t_go.elapsed()) + Duration::from_secs(120),
            &mut |_, _| {},
        )?;
    }
    publisher.send("stop")?;
    let pubs = publisher.await_line("published", Duration::from_secs(30), &mut |_, _| {})?;
    errors.add("publish", pubs["errors"].as_u64().unwrap_or(0));
    errors.first_from("publisher", &pubs["first_errors"]);
    let mut load = Lat::default();
    let (mut calls, mut received, mut missed) = (BTreeMap::<String, u64>::new(), 0u64, 0u64);
    for (w, _) in &mut workers {
        w.send("drain")?;
    }
    for (w, _) in &mut workers {
        let r = w.await_line("report", Duration::from_secs(60), &mut |_, _| {})?;
        for (k, v) in r["calls"].as_object().into_iter().flatten() {
            *calls.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
        for (k, v) in r["errors"].as_object().into_iter().flatten() {
            errors.add(k, v.as_u64().unwrap_or(0));
        }
        errors.first_from(&w.name, &r["first_errors"]);
        received += r["events"].as_u64().unwrap_or(0);
        missed += r["missed"].as_u64().unwrap_or(0);
        load.echo.extend(u64s(&r["lat_echo"]));
        load.routed.extend(u64s(&r["lat_routed"]));
    }
    load.sort();
    let delivered = pubs["delivered"].as_u64().unwrap_or(0);
    let dropped = pubs["dropped"].as_u64().unwrap_or(0);
    // (Connections that failed to open are counted by their workers.)
    for e in worker_errors {
        errors.first.push(e);
    }
    errors.add(
        "events delivered but not received",
        delivered.saturating_sub(received),
    );
    let (peak_rss, peak_fds) = sampler.finish();
    let before_exit = fleet::footprint(pid)?;
    let peak = Footprint {
        rss_kib: peak_rss.max(before_exit.rss_kib).max(all_connected.rss_kib),
        fds: peak_fds.max(before_exit.fds).max(all_connected.fds),
    };

    // The clients leave, all at once.
    for (w, _) in &mut workers {
        w.send("exit")?;
    }
    let t_exit = Instant::now();
    for (w, _) in &mut workers {
        let st = w.wait(Duration::from_secs(60))?;
        if !st.success() {
            errors.add("worker exit status", 1);
            errors.first.push(format!("{}: exited {st}", w.name));
        }
    }
    drop(workers);
    let mut trace = Vec::new();
    while t_exit.elapsed() < AFTER_WAIT {
        std::thread::sleep(Duration::from_secs(1));
        trace.push(fleet::footprint(pid)?);
    }
    let after = fleet::footprint(pid)?;
    let after_maps = fleet::smaps(pid)?;
    let after_conns = fleet::broker_connections(&socket)?;
    // Tells free-but-untrimmed from live: one more connection closes
    // (broker_connections above), so wardend trims once more; 5 s later.
    std::thread::sleep(Duration::from_secs(5));
    let retrimmed = fleet::footprint(pid)?;
    let grown = fleet::grown(&base_maps, &after_maps, 128);
    drop(publisher);

    print_table(
        o,
        &Report {
            connected,
            broker_conns: broker_conns.saturating_sub(base_conns),
            connect_time,
            calls,
            errors: &errors,
            published: pubs["published"].as_u64().unwrap_or(0),
            delivered,
            dropped,
            received,
            missed,
            idle: &idle,
            loaded: &loaded,
            load: &load,
            baseline,
            all_connected,
            peak,
            after,
            trace: &trace,
            after_conns,
            base_conns,
            grown: &grown,
            retrimmed,
        },
    );
    let log = broker.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    if !warnings.is_empty() {
        println!(
            "wardend logged {} warnings/errors; the first:",
            warnings.len()
        );
        for l in warnings.iter().take(5) {
            println!("  {l}");
        }
    }
    let ok_rss = after.rss_kib as f64 <= baseline.rss_kib as f64 * 1.2;
    anyhow::ensure!(errors.total() == 0, "{} errors", errors.total());
    anyhow::ensure!(
        ok_rss,
        "wardend's RSS after the clients left is {:.2} × the baseline (> 1.20)",
        after.rss_kib as f64 / baseline.rss_kib as f64
    );
    Ok(())
}

struct Report<'a> {
    connected: usize,
    broker_conns: u64,
    connect_time: Duration,
    calls: BTreeMap<String, u64>,
    errors: &'a Errors,
    published: u64,
    delivered: u64,
    dropped: u64,
    received: u64,
    missed: u64,
    idle: &'a Lat,
    loaded: &'a Lat,
    load: &'a Lat,
    baseline: Footprint,
    all_connected: Footprint,
    peak: Footprint,
    after: Footprint,
    trace: &'a [Footprint],
    after_conns: u64,
    base_conns: u64,
    /// wardend's mappings whose resident size grew from the baseline to
    /// after.
    grown: &'a [(fleet::Mapping, u64)],
    /// After one more connection came and went (another trim).
    retrimmed: Footprint,
}

fn print_table(o: &Opts, r: &Report<'_>) {
    let us = |ns: u64| ns as f64 / 1e3;
    println!(
        "load-bench: {} connections ({} uids × ~{}, one warden-client worker process per uid, \
         {CONNECT_CONCURRENCY} connects at a time), each subscribed to {TOPIC} and calling \
         {ECHO} or the routed {ROUTED} (at random) once per {} for {}; one publisher on \
         {TOPIC} every {}; a real release wardend (max_connections 10000, per uid 4000)",
        o.connections,
        o.uids,
        o.connections / o.uids,
        fleet::show_duration(o.interval),
        fleet::show_duration(o.duration),
        fleet::show_duration(o.publish_every),
    );
    println!(
        "connected: {} of {} ({} counted by wardend) in {:.1} s",
        r.connected,
        o.connections,
        r.broker_conns,
        r.connect_time.as_secs_f64()
    );
    let kinds: Vec<String> = r
        .errors
        .by_kind
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "errors: {}{}",
        r.errors.total(),
        if kinds.is_empty() {
            " (connect, subscribe, call, wrong answer, connection ended, publish, probe, \
             undelivered events: none)"
                .to_string()
        } else {
            format!(" ({})", kinds.join(", "))
        }
    );
    for e in &r.errors.first {
        println!("  {e}");
    }
    let total: u64 = r.calls.values().sum();
    let per: Vec<String> = r.calls.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "calls: {total} ({}); {:.0} calls/s",
        per.join(", "),
        total as f64 / o.duration.as_secs_f64()
    );
    println!(
        "events: {} published, {} delivered by wardend, {} received by the connections; \
         dropped for slow subscribers: {} (wardend), {} reported missed/lagged (not errors)",
        r.published, r.delivered, r.received, r.dropped, r.missed
    );
    println!();
    println!(
        "latency (one call at a time per connection; idle = the probe, one connection, \
         before the load)"
    );
    println!(
        "{:<34} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "", "samples", "p50 µs", "p99 µs", "", "p50 ×idle", "p99 ×idle"
    );
    let rows: [(&str, &[u64], &[u64]); 6] = [
        ("idle probe, warden.echo", &r.idle.echo, &r.idle.echo),
        ("idle probe, routed", &r.idle.routed, &r.idle.routed),
        (
            "probe under load, warden.echo",
            &r.loaded.echo,
            &r.idle.echo,
        ),
        ("probe under load, routed", &r.loaded.routed, &r.idle.routed),
        (
            "the load's own calls, warden.echo",
            &r.load.echo,
            &r.idle.echo,
        ),
        (
            "the load's own calls, routed",
            &r.load.routed,
            &r.idle.routed,
        ),
    ];
    for (name, v, base) in rows {
        let (b50, b99) = (pct(base, 50).max(1), pct(base, 99).max(1));
        println!(
            "{:<34} {:>8} {:>9.1} {:>9.1} {:>9} {:>10.2} {:>10.2}",
            name,
            v.len(),
            us(pct(v, 50)),
            us(pct(v, 99)),
            "",
            pct(v, 50) as f64 / b50 as f64,
            pct(v, 99) as f64 / b99 as f64
        );
    }
    println!();
    println!("wardend (VmRSS, open descriptors)");
    println!(
        "{:<34} {:>10} {:>8} {:>11} {:>11}",
        "", "RSS KiB", "fds", "RSS ×base", "fds ×base"
    );
    let b = r.baseline;
    for (name, f) in [
        ("baseline (idle)", r.baseline),
        ("all connected, before the load", r.all_connected),
        ("peak (under load)", r.peak),
        ("after the clients left (10 s)", r.after),
        ("after one more trim (+5 s)", r.retrimmed),
    ] {
        println!(
            "{:<34} {:>10} {:>8} {:>11.2} {:>11.2}",
            name,
            f.rss_kib,
            f.fds,
            f.rss_kib as f64 / b.rss_kib.max(1) as f64,
            f.fds as f64 / b.fds.max(1) as f64
        );
    }
    let trace: Vec<String> = r.trace.iter().map(|f| f.rss_kib.to_string()).collect();
    println!(
        "  after the exit, RSS each second: {} KiB; wardend counts {} connections (baseline {})",
        trace.join(" → "),
        r.after_conns,
        r.base_conns
    );
    let per_conn =
        (r.all_connected.rss_kib.saturating_sub(b.rss_kib)) * 1024 / r.connected.max(1) as u64;
    let fds_per = (r.all_connected.fds as f64 - b.fds as f64) / r.connected.max(1) as f64;
    println!(
        "  per connection (all connected − baseline): {:.1} KiB, {fds_per:.2} fds",
        per_conn as f64 / 1024.0
    );
    if !r.grown.is_empty() {
        println!("  where after − baseline is (mappings whose RSS grew ≥ 128 KiB):");
        for (m, g) in r.grown.iter().take(6) {
            println!(
                "    {} {}: {} KiB mapped, {} KiB resident (+{g} KiB){}",
                m.range,
                if m.name.is_empty() { "[anon]" } else { &m.name },
                m.size_kib,
                m.rss_kib,
                if m.name.is_empty() && m.rss_kib * 10 >= m.size_kib * 9 {
                    " — resident in full: one live allocation above malloc's mmap \
                     threshold (a table's high-water capacity?), not free heap a trim \
                     could return"
                } else {
                    ""
                }
            );
        }
    }
    let ratio = r.after.rss_kib as f64 / b.rss_kib.max(1) as f64;
    println!(
        "  RSS after/baseline {ratio:.2} [≤ 1.20: {}]; errors {} [= 0: {}]",
        if ratio <= 1.2 { "ok" } else { "MISSED" },
        r.errors.total(),
        if r.errors.total() == 0 {
            "ok"
        } else {
            "MISSED"
        }
    );
}
