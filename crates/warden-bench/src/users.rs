//! What users get: client, broker and provider in separate processes.
//!
//! - **The table "as users get it"**: a real `wardend` process (release,
//!   found as the learnping table finds it) with [`CONFIG`] written under
//!   /run; the client is this binary re-executed ([`CLIENT_ARG`]) using
//!   `warden-client` as its docs show (`client.call(..).await` on the
//!   main future), on each of the two tokio runtimes a program gets from
//!   `#[tokio::main]` ([`crate::procs::FLAVORS`]: multi-thread, and
//!   current-thread); the providers are third processes ([`PROVIDER_ARG`])
//!   on `warden-client` connections using `serve`, one per flavor, each
//!   row's client reaching the provider of its own flavor (D-Bus likewise).
//!   Raw is a blocking echo-server process ([`RAW_SERVER_ARG`]) and a
//!   blocking raw client process ([`RAW_CLIENT_ARG`]); D-Bus comes from the
//!   sibling binary `dbus-bench`. p50/p99 one call at a time, then
//!   pipelined: [`WINDOW`] calls started together (`start_call`), then
//!   awaited, over and over. Two modes: **pinned** (client and provider on
//!   the first CPU, wardend, the raw echo server and dbus-daemon on the
//!   second, with `sched_setaffinity` inherited at spawn) and
//!   **unpinned**.
//! - **Fan-out**: one event published to [`FANOUT_SUBSCRIBERS`]
//!   subscribers (`warden-client` connections in [`FANOUT_PROCS`]
//!   subscriber processes), publish to the last receipt (CLOCK_MONOTONIC
//!   across processes), vs. one raw one-way send between two processes.
//! - **Memory**: wardend's VmRSS and fds with [`MEM_CONNS`] idle
//!   authenticated connections, per connection, and 10 s after they close.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use warden_client::{Client, ConnectOptions, Event, IncomingCall, Payload, WireError};

use crate::procs::{
    measure, median, now_ns, parse_report, pick, report, runtime, spawn_on, two_cpus, Kill,
};
use crate::{frame, pipelined, read_frame, Peer};

pub const RAW_SERVER_ARG: &str = "--users-raw-echo-child";
pub const RAW_CLIENT_ARG: &str = "--users-raw-client-child";
pub const CLIENT_ARG: &str = "--users-client-child";
pub const PROVIDER_ARG: &str = "--users-provider-child";
pub const SUBSCRIBERS_ARG: &str = "--users-subscribers-child";
pub const ONEWAY_ARG: &str = "--users-oneway-reader-child";

const CONFIG: &str = r#"
[limits]
max_connections = 4096
max_connections_per_uid = 4096
max_in_flight_per_connection = 256

[[rule]]
actions = ["call", "provide", "subscribe", "publish"]
names = ["bench.**"]
everyone = true

[[rule]]
actions = ["call"]
names = ["warden.echo", "warden.ping"]
everyone = true
"#;

const SIZES: [usize; 2] = [64, 4096];
const WARMUP: usize = 500;
const ROUND_TRIPS: usize = 2_000;
const PIPELINED: usize = 8_000;
const WINDOW: usize = 32;
/// Rounds per mode; paths interleaved within a round.
const ROUNDS: usize = 5;

const FANOUT_PROCS: usize = 4;
const FANOUT_SUBSCRIBERS: usize = 1_000;
const FANOUT_PUBLISHES: usize = 50;
const FANOUT_WARMUP: usize = 5;
const FANOUT_TOPIC: &str = "bench.fanout";
const ONEWAY_SENDS: usize = 500;

pub const MEM_CONNS: usize = 3_000;
const MEM_TRIALS: usize = 3;

fn pad_frame(size: usize) -> Vec<u8> {
    frame(
        json!({"kind":"call","id":1,"method":"warden.echo","params":"x".repeat(size)})
            .to_string()
            .as_bytes(),
    )
}

// ---- children ----

/// Raw echo server: a blocking thread per connection echoing what it reads.
pub fn raw_server_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let listener = UnixListener::bind(args.next().context("socket")?)?;
    println!("ready");
    std::io::stdout().flush()?;
    for s in listener.incoming() {
        let mut s = s?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// Raw client: blocking round trips then pipelined windows; prints a report.
pub fn raw_client_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let socket = PathBuf::from(args.next().context("socket")?);
    let size: usize = args.next().context("size")?.parse()?;
    let mut p = Peer::connect(&socket, false)?;
    let req = pad_frame(size);
    for _ in 0..WARMUP {
        p.round_trip(&req)?;
    }
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        p.round_trip(&req)?;
        times.push(t.elapsed());
    }
    let t = Instant::now();
    let done = pipelined(&mut p, &|_| req.clone(), PIPELINED, WINDOW)?;
    print!(
        "{}",
        report(&times, done as f64 / t.elapsed().as_secs_f64())
    );
    Ok(())
}

fn payload(size: usize) -> anyhow::Result<Payload> {
    Payload::from_raw_json(&serde_json::to_string(&"x".repeat(size))?)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// warden-client caller: `SOCKET METHOD SIZE FLAVOR`; prints a report.
pub fn client_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let socket = args.next().context("socket")?;
    let method = args.next().context("method")?;
    let size: usize = args.next().context("size")?.parse()?;
    let flavor = args.next().context("runtime flavor")?;
    runtime(&flavor)?.block_on(async {
        let client = Client::connect(ConnectOptions::new(socket)).await?;
        let params = payload(size)?;
        for _ in 0..WARMUP {
            client.call(&method, &params).await?;
        }
        let mut times = Vec::with_capacity(ROUND_TRIPS);
        for _ in 0..ROUND_TRIPS {
            let t = Instant::now();
            let answer = client.call(&method, &params).await?;
            times.push(t.elapsed());
            // Echoes answer the params (a host's example.echo wraps them).
            anyhow::ensure!(answer.get().len() >= params.get().len(), "short answer");
        }
        let t = Instant::now();
        let mut pending = Vec::with_capacity(WINDOW);
        for _ in 0..PIPELINED / WINDOW {
            for _ in 0..WINDOW {
                pending.push(client.start_call(&method, &params).await?.1);
            }
            for p in pending.drain(..) {
                p.await?;
            }
        }
        let rps = (PIPELINED / WINDOW * WINDOW) as f64 / t.elapsed().as_secs_f64();
        print!("{}", report(&times, rps));
        Ok(())
    })
}

/// warden-client provider: `SOCKET METHOD FLAVOR`; serves METHOD (params
/// back) with `serve`.
pub fn provider_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let socket = args.next().context("socket")?;
    let method = args.next().context("method")?;
    let flavor = args.next().context("runtime flavor")?;
    runtime(&flavor)?.block_on(async {
        let client = Client::connect(ConnectOptions::new(socket)).await?;
        client
            .serve(&[method.as_str()], 64, |call: IncomingCall| async move {
                Ok::<Payload, WireError>(call.params)
            })
            .await?;
        Ok(())
    })
}

/// Fan-out subscribers: `SOCKET N EVENTS`. N connections subscribe to
/// [`FANOUT_TOPIC`], then `ready`; for each event (data: its sequence
/// number) prints `got SEQ NS` once all N have it, NS the last receipt.
pub fn subscribers_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let socket = args.next().context("socket")?;
    let n: usize = args.next().context("n")?.parse()?;
    let events: usize = args.next().context("events")?.parse()?;
    runtime("multi")?.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let c = Client::connect(ConnectOptions::new(socket.clone())).await?;
            c.subscribe(FANOUT_TOPIC).await?;
            clients.push(c);
        }
        for c in clients {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(e) = c.next_event().await {
                    let at = now_ns();
                    if let Event::Event { data, .. } = e {
                        if let Ok(seq) = data.parse::<u64>() {
                            let _ = tx.send((seq, at));
                        }
                    }
                }
            });
        }
        drop(tx);
        println!("ready");
        std::io::stdout().flush()?;
        let mut got: std::collections::HashMap<u64, (usize, u64)> = Default::default();
        let mut done = 0;
        while done < events {
            let Some((seq, at)) = rx.recv().await else {
                anyhow::bail!("subscribers closed");
            };
            let e = got.entry(seq).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(at);
            if e.0 == n {
                println!("got {seq} {}", e.1);
                std::io::stdout().flush()?;
                done += 1;
            }
        }
        Ok(())
    })
}

/// Raw one-way reader: `SOCKET N`; reads N 64-byte messages whose first 8
/// bytes are the send time; prints their latencies as a report.
pub fn oneway_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let mut s = UnixStream::connect(args.next().context("socket")?)?;
    let n: usize = args.next().context("n")?.parse()?;
    let mut times = Vec::with_capacity(n);
    let mut msg = [0u8; 64];
    for _ in 0..n {
        s.read_exact(&mut msg)?;
        let at = now_ns();
        let sent = u64::from_le_bytes(msg[..8].try_into()?);
        times.push(Duration::from_nanos(at.saturating_sub(sent)));
    }
    print!("{}", report(&times, 0.0));
    Ok(())
}

// ---- the orchestrator ----

/// A row of the table; `missing` instead of numbers when it could not run.
struct URow {
    mode: &'static str,
    name: &'static str,
    size: usize,
    p50: Duration,
    p99: Duration,
    rps: f64,
    missing: Option<String>,
}

impl URow {
    /// A row that could not be measured, and why.
    fn missing(mode: &'static str, name: &'static str, size: usize, why: String) -> URow {
        URow {
            mode,
            name,
            size,
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            rps: 0.0,
            missing: Some(why),
        }
    }
}

fn wait_for(path: &Path, what: &str, log: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    while !path.exists() {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "{what} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn start_wardend(
    wardend: &Path,
    dir: &Path,
    tag: &str,
    cpu: Option<usize>,
    extra: &str,
) -> anyhow::Result<(Kill, PathBuf, PathBuf)> {
    let config = dir.join(format!("wardend-{tag}.toml"));
    std::fs::write(&config, format!("{CONFIG}{extra}"))?;
    let socket = dir.join(format!("{tag}.sock"));
    let log = dir.join(format!("wardend-{tag}.log"));
    let child = spawn_on(
        Command::new(wardend)
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?),
        cpu,
    )?;
    let k = Kill(child);
    wait_for(&socket, "wardend", &log)?;
    Ok((k, socket, log))
}

fn read_ready(out: ChildStdout, what: &str) -> anyhow::Result<BufReader<ChildStdout>> {
    let mut r = BufReader::new(out);
    let mut line = String::new();
    r.read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "{what} did not start");
    Ok(r)
}

/// Calls `method` until its provider has registered it.
fn await_provider(socket: &Path, method: &str) -> anyhow::Result<()> {
    let mut p = Peer::connect(socket, true)?;
    let t = Instant::now();
    for id in 1.. {
        p.round_trip(&frame(
            json!({"kind":"call","id":id,"method":method,"params":1})
                .to_string()
                .as_bytes(),
        ))?;
        let v: serde_json::Value = serde_json::from_slice(&p.buf)?;
        if v["kind"] == "reply" {
            return Ok(());
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "no provider: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs `dbus-bench` (next to this binary) and returns its rows, or why not.
fn dbus_rows(me: &Path, pinned: bool) -> Result<Vec<DbusRow>, String> {
    let exe = me.with_file_name("dbus-bench");
    if !exe.is_file() {
        return Err(format!(
            "{} not found: `cargo build --release -p warden-bench` builds it",
            exe.display()
        ));
    }
    let mut cmd = Command::new(&exe);
    if pinned {
        cmd.arg("--pinned");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<_> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["row", _, flavor, size, p50, p99, rps] => Some((
                    flavor.to_string(),
                    size.parse().ok()?,
                    Duration::from_nanos(p50.parse().ok()?),
                    Duration::from_nanos(p99.parse().ok()?),
                    rps.parse().ok()?,
                )),
                _ => None,
            }
        })
        .collect();
    if rows.is_empty() {
        return Err(format!("dbus-bench printed no rows: {text}"));
    }
    Ok(rows)
}

/// A D-Bus row from `dbus-bench`: runtime flavor, size, p50, p99, rps.
type DbusRow = (String, usize, Duration, Duration, f64);

/// The measured paths: row name, method ("" = raw), runtime flavor of the
/// client (and of the provider it reaches).
const PATHS: [(&str, &str, &str); 7] = [
    ("raw", "", ""),
    ("echo, multi-thread rt", "warden.echo", "multi"),
    ("echo, current-thread rt", "warden.echo", "current"),
    ("routed, multi-thread rt", "bench.echo", "multi"),
    ("routed, current-thread rt", "bench.echo_ct", "current"),
    ("host module, multi-thread rt", HOST_METHOD, "multi"),
    ("host module, current-thread rt", HOST_METHOD, "current"),
];
/// The method the child host's example module serves.
const HOST_METHOD: &str = "example.echo";

/// A `[[host]]` serving [`HOST_METHOD`] from the example module (copied,
/// root's, into `dir`), running as `nobody`; or why there cannot be one:
/// `warden-host` and `libwarden_example_echo.so` must sit next to
/// `wardend` (`cargo build --release -p warden-host -p warden-example-echo`).
fn host_section(wardend: &Path, dir: &Path) -> Result<String, String> {
    let host = wardend.with_file_name("warden-host");
    let module = wardend.with_file_name("libwarden_example_echo.so");
    for f in [&host, &module] {
        if !f.is_file() {
            return Err(format!(
                "{} not found: cargo build --release -p warden-host -p warden-example-echo",
                f.display()
            ));
        }
    }
    if nix::unistd::geteuid().as_raw() != 0 {
        return Err("a host needs a root broker (run the bench as root)".into());
    }
    let mods = dir.join("modules");
    std::fs::create_dir_all(&mods).map_err(|e| e.to_string())?;
    let copy = mods.join("libwarden_example_echo.so");
    std::fs::copy(&module, &copy).map_err(|e| e.to_string())?;
    Ok(format!(
        r#"
[[host]]
name = "bench"
user = "nobody"
modules = ["{}"]

[[rule]]
actions = ["provide"]
names = ["example.**"]
hosts = ["bench"]

[[rule]]
actions = ["call"]
names = ["example.**"]
everyone = true
"#,
        copy.display()
    ))
}

/// The provider processes: method served, runtime flavor.
const PROVIDERS: [(&str, &str); 2] = [("bench.echo", "multi"), ("bench.echo_ct", "current")];
/// The D-Bus rows, by flavor.
const DBUS_ROWS: [(&str, &str); 2] = [
    ("multi", "D-Bus (zbus), multi-thread rt"),
    ("current", "D-Bus (zbus), current-thread rt"),
];

/// One mode: its rows, measured against a wardend of its own.
fn table_mode(
    me: &Path,
    wardend: &Path,
    dir: &Path,
    pinned: bool,
    dbus: bool,
    rows: &mut Vec<URow>,
) -> anyhow::Result<()> {
    let mode = if pinned { "pinned" } else { "unpinned" };
    let (client_cpu, broker_cpu) = if pinned {
        let (a, b) = two_cpus()?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let host = host_section(wardend, dir);
    let (_wardend, socket, _log) = start_wardend(
        wardend,
        dir,
        mode,
        broker_cpu,
        host.as_deref().unwrap_or(""),
    )?;
    if host.is_ok() {
        await_provider(&socket, HOST_METHOD)?;
    }
    let raw_socket = dir.join(format!("raw-{mode}.sock"));
    let mut raw = Kill(spawn_on(
        Command::new(me)
            .arg(RAW_SERVER_ARG)
            .arg(&raw_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
        broker_cpu,
    )?);
    read_ready(raw.0.stdout.take().context("stdout")?, "raw echo server")?;
    let mut _providers = Vec::new();
    for (method, flavor) in PROVIDERS {
        _providers.push(Kill(spawn_on(
            Command::new(me)
                .arg(PROVIDER_ARG)
                .arg(&socket)
                .arg(method)
                .arg(flavor)
                .stdin(Stdio::null()),
            client_cpu,
        )?));
        await_provider(&socket, method)?;
    }

    let mut times = vec![vec![Vec::new(); PATHS.len()]; SIZES.len()];
    let mut rps = vec![vec![Vec::new(); PATHS.len()]; SIZES.len()];
    for _ in 0..ROUNDS {
        for (si, size) in SIZES.iter().enumerate() {
            for (pi, (_, method, flavor)) in PATHS.iter().enumerate() {
                if *method == HOST_METHOD && host.is_err() {
                    continue;
                }
                let mut cmd = Command::new(me);
                if method.is_empty() {
                    cmd.arg(RAW_CLIENT_ARG)
                        .arg(&raw_socket)
                        .arg(size.to_string());
                } else {
                    cmd.arg(CLIENT_ARG)
                        .arg(&socket)
                        .arg(method)
                        .arg(size.to_string())
                        .arg(flavor);
                }
                let (t, r) = measure(&mut cmd, client_cpu)?;
                times[si][pi].extend(t);
                rps[si][pi].push(r);
            }
        }
    }
    let dbus = if dbus {
        let r = dbus_rows(me, pinned);
        if let Err(e) = &r {
            println!("D-Bus row ({mode}): MISSING: {e}");
        }
        r
    } else {
        Err("skipped (--no-dbus)".into())
    };
    for (si, &size) in SIZES.iter().enumerate() {
        for (pi, (name, method, _)) in PATHS.iter().enumerate() {
            if let (true, Err(why)) = (*method == HOST_METHOD, &host) {
                rows.push(URow::missing(mode, name, size, why.clone()));
                continue;
            }
            let t = &mut times[si][pi];
            t.sort();
            rows.push(URow {
                mode,
                name,
                size,
                p50: pick(t, 50),
                p99: pick(t, 99),
                rps: median(&mut rps[si][pi]),
                missing: None,
            });
        }
        for (flavor, name) in DBUS_ROWS {
            let d = match &dbus {
                Ok(v) => v
                    .iter()
                    .find(|r| r.0 == flavor && r.1 == size)
                    .map(|r| (r.2, r.3, r.4))
                    .ok_or("no row".to_string()),
                Err(e) => Err(e.clone()),
            };
            rows.push(match d {
                Ok((p50, p99, r)) => URow {
                    mode,
                    name,
                    size,
                    p50,
                    p99,
                    rps: r,
                    missing: None,
                },
                Err(e) => URow::missing(mode, name, size, e),
            });
        }
    }
    Ok(())
}

fn print_table(rows: &[URow], cpus: Option<(usize, usize)>) {
    println!(
        "as users get it: client, broker and provider in separate processes (real wardend, \
         warden-client, provider via serve(); client and provider on the tokio runtime the row \
         names: multi-thread = #[tokio::main], current-thread = flavor = \"current_thread\"); {ROUNDS} rounds \
         × {ROUND_TRIPS} calls one at a time + {PIPELINED} pipelined ({WINDOW} started together \
         with start_call, then awaited); raw = blocking client → blocking echo-server process; \
         host module = example.echo from the example module in a child host wardend started \
         (warden-host, as nobody, on its own multi-thread runtime, the module called on a \
         blocking thread; the row's flavor is the client's)"
    );
    if let Some((a, b)) = cpus {
        println!(
            "  pinned: client and provider (and the zbus server) on CPU {a}; wardend (and its \
             child host), the raw echo server and dbus-daemon on CPU {b}. unpinned: the \
             scheduler's choice"
        );
    }
    println!(
        "{:<9} {:<31} {:>7} {:>9} {:>9} {:>12} {:>9} {:>9} {:>10}",
        "mode",
        "path",
        "payload",
        "p50 µs",
        "p99 µs",
        "pipelined/s",
        "p50 ×raw",
        "p99 ×raw",
        "tput %raw"
    );
    for r in rows {
        if let Some(why) = &r.missing {
            println!(
                "{:<9} {:<31} {:>6}B   MISSING ({})",
                r.mode,
                r.name,
                r.size,
                why.lines().next().unwrap_or("")
            );
            continue;
        }
        let Some(base) = rows
            .iter()
            .find(|b| b.name == "raw" && b.size == r.size && b.mode == r.mode)
        else {
            continue;
        };
        println!(
            "{:<9} {:<31} {:>6}B {:>9.1} {:>9.1} {:>12.0} {:>9.2} {:>9.2} {:>9.0}%",
            r.mode,
            r.name,
            r.size,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.rps,
            r.p50.as_secs_f64() / base.p50.as_secs_f64(),
            r.p99.as_secs_f64() / base.p99.as_secs_f64(),
            100.0 * r.rps / base.rps
        );
    }
}

/// Fan-out against `socket`: p50/p90/max publish → last receipt.
fn fanout(me: &Path, socket: &Path, dir: &Path) -> anyhow::Result<()> {
    let per = FANOUT_SUBSCRIBERS / FANOUT_PROCS;
    let events = FANOUT_WARMUP + FANOUT_PUBLISHES;
    let mut subs = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..FANOUT_PROCS {
        let mut c = Kill(
            Command::new(me)
                .arg(SUBSCRIBERS_ARG)
                .arg(socket)
                .arg(per.to_string())
                .arg(events.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()?,
        );
        readers.push(c.0.stdout.take().context("stdout")?);
        subs.push(c);
    }
    let mut readers = readers
        .into_iter()
        .map(|r| read_ready(r, "a subscriber process"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let publisher = rt.block_on(Client::connect(ConnectOptions::new(
        socket.to_string_lossy().into_owned(),
    )))?;
    let mut lat = Vec::new();
    for seq in 0..events as u64 {
        std::thread::sleep(Duration::from_millis(20));
        let data = Payload::from_value(&seq)?;
        let t0 = now_ns();
        let r = rt.block_on(publisher.publish(FANOUT_TOPIC, &data))?;
        anyhow::ensure!(
            r["delivered"] == FANOUT_SUBSCRIBERS as u64,
            "publish reached {r}, expected {FANOUT_SUBSCRIBERS} subscribers"
        );
        let mut last = 0;
        for r in &mut readers {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let f: Vec<&str> = line.split_whitespace().collect();
            anyhow::ensure!(
                f.len() == 3 && f[0] == "got" && f[1] == seq.to_string(),
                "subscriber said {line:?} for event {seq}"
            );
            last = last.max(f[2].parse::<u64>()?);
        }
        if seq as usize >= FANOUT_WARMUP {
            lat.push(Duration::from_nanos(last.saturating_sub(t0)));
        }
    }
    drop(publisher);
    drop(subs);
    lat.sort();

    // Raw: one message written to a Unix socket, read by another process.
    let oneway_socket = dir.join("oneway.sock");
    let listener = UnixListener::bind(&oneway_socket)?;
    let child = Command::new(me)
        .arg(ONEWAY_ARG)
        .arg(&oneway_socket)
        .arg(ONEWAY_SENDS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let (mut s, _) = listener.accept()?;
    for _ in 0..ONEWAY_SENDS {
        std::thread::sleep(Duration::from_millis(2));
        let mut msg = [0u8; 64];
        msg[..8].copy_from_slice(&now_ns().to_le_bytes());
        s.write_all(&msg)?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "one-way reader: {}", out.status);
    let (mut raw, _) = parse_report(&String::from_utf8_lossy(&out.stdout))?;
    raw.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "fan-out: one event published (warden-client publish) to {FANOUT_SUBSCRIBERS} subscribers \
         ({FANOUT_PROCS} processes × {per} warden-client connections), publish → last \
         subscriber's next_event, {FANOUT_PUBLISHES} publishes 20 ms apart, unpinned"
    );
    println!(
        "  p50 {:.1} µs, p90 {:.1} µs, max {:.1} µs; raw one-way send (64 B written to a Unix \
         socket → read by another process, p50 of {ONEWAY_SENDS}) {:.1} µs; p50 ×raw {:.0}",
        us(pick(&lat, 50)),
        us(pick(&lat, 90)),
        us(lat.last().copied().unwrap_or_default()),
        us(pick(&raw, 50)),
        pick(&lat, 50).as_secs_f64() / pick(&raw, 50).as_secs_f64()
    );
    println!(
        "  per subscriber: p50 / {FANOUT_SUBSCRIBERS} = {:.2} µs, {:.2} × one raw one-way send",
        us(pick(&lat, 50)) / FANOUT_SUBSCRIBERS as f64,
        pick(&lat, 50).as_secs_f64() / FANOUT_SUBSCRIBERS as f64 / pick(&raw, 50).as_secs_f64()
    );
    Ok(())
}

fn status_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

fn fd_count(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn ping(id: u64) -> Vec<u8> {
    frame(
        json!({"kind":"call","id":id,"method":"warden.ping"})
            .to_string()
            .as_bytes(),
    )
}

/// Memory per idle authenticated connection: [`MEM_TRIALS`] trials, each
/// on a fresh wardend of its own.
fn memory(wardend: &Path, dir: &Path) -> anyhow::Result<()> {
    let (nofile, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    anyhow::ensure!(
        nofile >= MEM_CONNS as u64 + 256,
        "RLIMIT_NOFILE {nofile}: {MEM_CONNS} connections need more"
    );
    println!(
        "memory: real wardend, baseline = VmRSS after start + one warm-up connection (hello + \
         ping); then {MEM_CONNS} idle authenticated connections from one uid (hello + one ping \
         each), then all closed; {MEM_TRIALS} trials, a fresh wardend each; \"after close\" = \
         VmRSS every 2 s after the close, the last at 10 s"
    );
    let mut missed = 0;
    for trial in 1..=MEM_TRIALS {
        let (wd, socket, _log) = start_wardend(wardend, dir, &format!("memory{trial}"), None, "")?;
        let pid = wd.0.id();
        let mut warm = Peer::connect(&socket, true)?;
        warm.round_trip(&ping(1))?;
        std::thread::sleep(Duration::from_millis(500));
        let (base, base_fd) = (status_kib(pid)?, fd_count(pid)?);
        let mut conns = (0..MEM_CONNS)
            .map(|_| Peer::connect(&socket, true))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // One round trip on each, so that every connection has read a request.
        let req = ping(2);
        for p in &mut conns {
            p.s.write_all(&req)?;
        }
        for p in &mut conns {
            read_frame(&mut p.s, &mut p.buf)?;
        }
        std::thread::sleep(Duration::from_secs(1));
        let (peak, peak_fd) = (status_kib(pid)?, fd_count(pid)?);
        drop(conns);
        let mut trace = Vec::new();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_secs(2));
            trace.push(status_kib(pid)?.to_string());
        }
        let (after, after_fd) = (status_kib(pid)?, fd_count(pid)?);
        let per_conn = (peak.saturating_sub(base)) * 1024 / MEM_CONNS as u64;
        let fds = (peak_fd as f64 - base_fd as f64) / MEM_CONNS as f64;
        let back = (after as f64 - base as f64) * 100.0 / base as f64;
        let ok_conn = per_conn <= 16 * 1024;
        let ok_back = (after as f64) <= base as f64 * 1.2 + 1024.0;
        missed += usize::from(!ok_conn) + usize::from(!ok_back);
        println!(
            "  trial {trial}: baseline {base} KiB, with {MEM_CONNS} connections {peak} KiB: \
             {per_conn} B ({:.1} KiB) per connection [≤ 16 KiB: {}], {fds:.2} fds per \
             connection; after close {} KiB: {after} KiB at 10 s = {back:+.1} % of baseline \
             ({after_fd} fds vs {base_fd}) [≤ +20 % + 1 MiB: {}]",
            per_conn as f64 / 1024.0,
            if ok_conn { "ok" } else { "MISSED" },
            trace.join(" → "),
            if ok_back { "ok" } else { "MISSED" }
        );
        drop(warm);
    }
    if missed > 0 {
        println!("  {missed} target(s) missed");
    }
    Ok(())
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub table: bool,
    pub dbus: bool,
    pub fanout: bool,
    pub memory: bool,
}

/// Runs the parts asked for; the names of those that failed.
pub fn run(wardend: Option<&Path>, parts: Parts) -> anyhow::Result<Vec<&'static str>> {
    let me = std::env::current_exe()?;
    let wardend = crate::learnping::wardend_path(&me, wardend)?;
    let dir = PathBuf::from(format!("/run/wdn-users-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let mut failed = Vec::new();
    if parts.table {
        let mut rows = Vec::new();
        let mut r = Ok(());
        for pinned in [true, false] {
            r = table_mode(&me, &wardend, &dir, pinned, parts.dbus, &mut rows);
            if r.is_err() {
                break;
            }
        }
        print_table(&rows, two_cpus().ok());
        if let Err(e) = r {
            println!("as users get it: FAILED: {e:#}");
            failed.push("users");
        }
    }
    if parts.fanout {
        println!();
        let r = start_wardend(&wardend, &dir, "fanout", None, "")
            .and_then(|(_w, socket, _)| fanout(&me, &socket, &dir));
        if let Err(e) = r {
            println!("fan-out: FAILED: {e:#}");
            failed.push("fanout");
        }
    }
    if parts.memory {
        println!();
        if let Err(e) = memory(&wardend, &dir) {
            println!("memory: FAILED: {e:#}");
            failed.push("memory");
        }
    }
    Ok(failed)
}
