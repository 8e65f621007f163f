//! `warden-bench`: one run, one table.
//!
//! Measures, for 64 B and 4 KiB payloads, the p50/p99 round trip and the
//! pipelined throughput of:
//! - **raw**: a length-prefixed echo server on a plain Unix socket (the
//!   floor: two syscalls and a copy each way);
//! - **echo**: `warden.echo` through the broker (decode, policy, encode);
//! - **routed**: a call routed through the broker to a provider connection
//!   and back (two hops);
//! - **echo+mon**: `warden.echo` while a monitor that stopped reading is
//!   attached (it must lag, not slow the caller);
//! - **echo (1k idle conns)**: `warden.echo` while 1 000 more connections
//!   (hello done) sit idle on the broker, opened for that round only.
//!
//! Then, in the same run (see `--help`):
//! - syscalls per call the broker makes (echo and routed, round trips and
//!   pipelined), counted with `strace -f -c` on a child process that runs
//!   only the broker (module `syscalls`);
//! - another user's `warden.ping` latency while two connections loop
//!   `learn.start`/`learn.stop` on a real `wardend`, as ratios to idle
//!   (module `learnping`; root, eBPF).
//!
//! - the table "as users get it": client, broker (a real `wardend`) and
//!   provider in separate processes, the client and provider on
//!   `warden-client`, with a D-Bus row (zbus through a private
//!   `dbus-daemon`, from the sibling binary `dbus-bench`), pinned and
//!   unpinned; one event fanned out to 1 000 subscribers; wardend's memory
//!   per idle connection (module `users`).
//!
//! Servers run on their own multi-threaded runtime; the client is a plain
//! blocking socket in the main thread, identical for all three. Ratios to
//! raw are what matter: the machines are shared and noisy.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use warden::{Broker, Shutdown};
use warden_policy::{Config, StaticResolver};

mod learnping;
mod procs;
mod syscalls;
mod users;

const WARMUP: usize = 1_000;
/// Round trips per round, per path and payload.
const ROUND_TRIPS: usize = 4_000;
/// Pipelined requests per round, per path and payload.
const PIPELINE_REQUESTS: usize = 20_000;
const PIPELINE_WINDOW: usize = 32;
/// Rounds; paths are interleaved within each round so that a noisy
/// neighbour hits all of them alike. Latency percentiles pool every
/// round; throughput is the median round.
const ROUNDS: usize = 7;
/// Idle connections held open during the "echo (1k idle conns)" rounds.
const IDLE_CONNS: usize = 1_000;

const CONFIG: &str = r#"
[limits]
max_in_flight_per_connection = 256
max_connections = 4096
max_connections_per_uid = 4096

[[rule]]
actions = ["call", "provide", "monitor"]
names = ["**"]
everyone = true
"#;

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn read_frame(s: &mut UnixStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    buf.resize(u32::from_be_bytes(len) as usize, 0);
    s.read_exact(buf)
}

/// The raw baseline server: echoes every frame back.
async fn raw_echo_server(listener: tokio::net::UnixListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A blocking client speaking the Warden protocol with pre-encoded frames.
struct Peer {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Peer {
    fn connect(path: &Path, hello: bool) -> anyhow::Result<Peer> {
        let s = UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
        let mut p = Peer { s, buf: Vec::new() };
        if hello {
            p.s.write_all(&frame(br#"{"kind":"hello","version":1}"#))?;
            read_frame(&mut p.s, &mut p.buf)?;
        }
        Ok(p)
    }

    fn round_trip(&mut self, req: &[u8]) -> anyhow::Result<()> {
        self.s.write_all(req)?;
        read_frame(&mut self.s, &mut self.buf)?;
        Ok(())
    }
}

/// The fields of a routed call the bench provider needs.
#[derive(serde::Deserialize)]
struct RoutedCall<'a> {
    id: u64,
    #[serde(borrow)]
    params: &'a serde_json::value::RawValue,
}

/// Answers every routed call with its params, from a blocking thread.
/// Like the raw echo server, it answers everything one read brought in
/// with one write. Returns the thread's kernel thread id (for `strace`).
fn provider_thread(path: PathBuf, method: &str) -> anyhow::Result<i32> {
    let mut p = Peer::connect(&path, true)?;
    p.s.write_all(&frame(
        json!({"kind":"provide","id":1,"method":method})
            .to_string()
            .as_bytes(),
    ))?;
    read_frame(&mut p.s, &mut p.buf)?;
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tid_tx.send(nix::unistd::gettid().as_raw());
        let mut inbuf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            let n = match p.s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            inbuf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while inbuf.len() - at >= 4 {
                let len =
                    u32::from_be_bytes([inbuf[at], inbuf[at + 1], inbuf[at + 2], inbuf[at + 3]])
                        as usize;
                if inbuf.len() - at < 4 + len {
                    break;
                }
                let Ok(call) =
                    serde_json::from_slice::<RoutedCall<'_>>(&inbuf[at + 4..at + 4 + len])
                else {
                    return;
                };
                // Echo the params verbatim, as an efficient provider would.
                let reply = format!(
                    r#"{{"kind":"reply","id":{},"result":{}}}"#,
                    call.id,
                    call.params.get()
                );
                at += 4 + len;
                out.extend_from_slice(&frame(reply.as_bytes()));
            }
            inbuf.drain(..at);
            if !out.is_empty() {
                if p.s.write_all(&out).is_err() {
                    return;
                }
                out.clear();
            }
        }
    });
    Ok(tid_rx.recv()?)
}

struct Samples {
    times: Vec<Duration>,
    rps: Vec<f64>,
}

struct Row {
    name: &'static str,
    size: usize,
    p50: Duration,
    p99: Duration,
    rps: f64,
}

impl Samples {
    fn row(mut self, name: &'static str, size: usize) -> Row {
        self.times.sort();
        self.rps.sort_by(f64::total_cmp);
        let pick = |v: &[Duration], q: usize| v.get(v.len() * q / 100).copied().unwrap_or_default();
        Row {
            name,
            size,
            p50: pick(&self.times, 50),
            p99: pick(&self.times, 99),
            rps: self.rps.get(self.rps.len() / 2).copied().unwrap_or(0.0),
        }
    }
}

/// One round on one connection: round trips, then pipelined throughput.
fn round(p: &mut Peer, make: &dyn Fn(u64) -> Vec<u8>, out: &mut Samples) -> anyhow::Result<()> {
    let reqs: Vec<Vec<u8>> = (0..ROUND_TRIPS).map(|i| make(i as u64 + 1)).collect();
    for r in &reqs {
        let t = Instant::now();
        p.round_trip(r)?;
        out.times.push(t.elapsed());
    }
    let t = Instant::now();
    let done = pipelined(p, make, PIPELINE_REQUESTS, PIPELINE_WINDOW)? as f64;
    out.rps.push(done / t.elapsed().as_secs_f64());
    Ok(())
}

/// Pipelined: `window` requests in flight, written in one go, then their
/// answers read; `requests / window` times. Returns the requests made.
fn pipelined(
    p: &mut Peer,
    make: &dyn Fn(u64) -> Vec<u8>,
    requests: usize,
    window: usize,
) -> anyhow::Result<usize> {
    let batch: Vec<u8> = (0..window).flat_map(|i| make(i as u64 + 1)).collect();
    for _ in 0..requests / window {
        p.s.write_all(&batch)?;
        for _ in 0..window {
            read_frame(&mut p.s, &mut p.buf)?;
        }
    }
    Ok(requests / window * window)
}

/// Opens `n` connections and says hello on each; they then sit idle.
fn idle_connections(path: &Path, n: usize) -> anyhow::Result<Vec<Peer>> {
    (0..n)
        .map(|_| Peer::connect(path, true))
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("opening {n} idle connections"))
}

/// Waits until the broker counts `n` connections: the idle connections of
/// a round are all gone (or all there) before anything is measured.
fn await_connections(broker: &Broker, n: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    while broker.connection_count() != n {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(20),
            "the broker counts {} connections, expected {n}",
            broker.connection_count()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: the idle
/// connections need 2 000 descriptors in this process (both ends).
fn raise_nofile() -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let need = (2 * IDLE_CONNS).max(users::MEM_CONNS) as u64 + 256;
    anyhow::ensure!(
        hard >= need,
        "RLIMIT_NOFILE hard limit {hard} < {need}: the 1k idle connections need more descriptors"
    );
    Ok(hard)
}

/// Command-line options.
struct Options {
    main: bool,
    syscalls: bool,
    learn: bool,
    users: users::Parts,
    wardend: Option<PathBuf>,
}

const USAGE: &str = "usage: warden-bench [--no-main] [--no-syscalls] [--no-learn] [--no-users]
                    [--no-dbus] [--no-fanout] [--no-memory] [--wardend PATH]
  --no-main       skip the latency/throughput table (in-process broker)
  --no-syscalls   skip the syscalls-per-call table (strace)
  --no-learn      skip the ping-while-learning table (needs root, eBPF, wardend)
  --no-users      skip the \"as users get it\" table (separate processes, wardend)
  --no-dbus       leave out its D-Bus row (dbus-bench, dbus-daemon)
  --no-fanout     skip the 1 000-subscriber fan-out (wardend)
  --no-memory     skip wardend's memory per idle connection
  --wardend PATH  the wardend binary (default: $WARDEN_BENCH_WARDEND, else next to
                  this binary; build it with `cargo build --release -p wardend`; the
                  host-module rows also need -p warden-host -p warden-example-echo)";

fn options(mut args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut o = Options {
        main: true,
        syscalls: true,
        learn: true,
        users: users::Parts {
            table: true,
            dbus: true,
            fanout: true,
            memory: true,
        },
        wardend: std::env::var_os("WARDEN_BENCH_WARDEND").map(PathBuf::from),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-main" => o.main = false,
            "--no-syscalls" => o.syscalls = false,
            "--no-learn" => o.learn = false,
            "--no-users" => o.users.table = false,
            "--no-dbus" => o.users.dbus = false,
            "--no-fanout" => o.users.fanout = false,
            "--no-memory" => o.users.memory = false,
            "--wardend" => {
                o.wardend = Some(PathBuf::from(
                    args.next().context("--wardend needs a path")?,
                ));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => anyhow::bail!("unknown argument {a:?}\n{USAGE}"),
        }
    }
    Ok(o)
}

type MakeFn = Box<dyn Fn(u64) -> Vec<u8>>;

const IDLE_ROW: &str = "echo (1k idle conns)";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    // Hidden modes: this binary re-executed as a child of the bench.
    match args.next().as_deref() {
        Some(syscalls::CHILD_ARG) => {
            return syscalls::broker_child(&PathBuf::from(args.next().context("socket path")?))
        }
        Some(learnping::CHILD_ARG) => return learnping::ping_child(args),
        Some(users::RAW_SERVER_ARG) => return users::raw_server_child(args),
        Some(users::RAW_CLIENT_ARG) => return users::raw_client_child(args),
        Some(users::CLIENT_ARG) => return users::client_child(args),
        Some(users::PROVIDER_ARG) => return users::provider_child(args),
        Some(users::SUBSCRIBERS_ARG) => return users::subscribers_child(args),
        Some(users::ONEWAY_ARG) => return users::oneway_child(args),
        _ => {}
    }
    let opts = options(std::env::args().skip(1))?;
    raise_nofile()?;
    let dir = std::env::temp_dir().join(format!("warden-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let raw_path = dir.join("raw.sock");
    let broker_path = dir.join("warden.sock");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let config = Config::parse(CONFIG, "<bench>", &StaticResolver::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let broker = Broker::builder(&config).build();
    let (trigger, shutdown) = Shutdown::new();
    {
        let _g = runtime.enter();
        let raw = tokio::net::UnixListener::bind(&raw_path)?;
        let bl = tokio::net::UnixListener::bind(&broker_path)?;
        runtime.spawn(raw_echo_server(raw));
        let b = broker.clone();
        runtime.spawn(async move { b.serve(bl, shutdown).await });
    }
    provider_thread(broker_path.clone(), "bench.echo")?;

    let mut rows = Vec::new();
    let sizes: &[usize] = if opts.main { &[64, 4096] } else { &[] };
    for &size in sizes {
        let pad = "x".repeat(size);
        let raw_body = frame(
            json!({"kind":"call","id":1,"method":"warden.echo","params":pad})
                .to_string()
                .as_bytes(),
        );
        let call = |method: &'static str, pad: String| -> MakeFn {
            Box::new(move |id| {
                frame(
                    json!({"kind":"call","id":id,"method":method,"params":pad})
                        .to_string()
                        .as_bytes(),
                )
            })
        };
        let paths: [(&'static str, &Path, bool, MakeFn); 5] = [
            ("raw", &raw_path, false, Box::new(move |_| raw_body.clone())),
            ("echo", &broker_path, true, call("warden.echo", pad.clone())),
            (
                "routed",
                &broker_path,
                true,
                call("bench.echo", pad.clone()),
            ),
            // warden.echo while a monitor that never reads is attached.
            (
                "echo+mon",
                &broker_path,
                true,
                call("warden.echo", pad.clone()),
            ),
            // warden.echo while IDLE_CONNS more connections sit idle.
            (
                IDLE_ROW,
                &broker_path,
                true,
                call("warden.echo", pad.clone()),
            ),
        ];
        let mut peers = Vec::new();
        for (_, path, hello, make) in &paths {
            let mut p = Peer::connect(path, *hello)?;
            for i in 0..WARMUP {
                p.round_trip(&make(i as u64 + 1))?;
            }
            peers.push(p);
        }
        // The provider and the peers: what the broker counts between
        // rounds once a round's extra connections are gone.
        let base_conns = broker.connection_count();
        let mut samples: Vec<Samples> = (0..paths.len())
            .map(|_| Samples {
                times: Vec::new(),
                rps: Vec::new(),
            })
            .collect();
        for _ in 0..ROUNDS {
            for (i, (name, _, _, make)) in paths.iter().enumerate() {
                // A stalled monitor for this round only: it subscribes to
                // every call and answer, then never reads again.
                let _monitor = if *name == "echo+mon" {
                    let mut m = Peer::connect(&broker_path, true)?;
                    m.s.write_all(&frame(
                        br#"{"kind":"subscribe","id":1,"topic":"warden.monitor"}"#,
                    ))?;
                    read_frame(&mut m.s, &mut m.buf)?;
                    Some(m)
                } else {
                    None
                };
                // Idle connections for this round only; the broker has
                // them all before the round and none after it.
                let idle = if *name == IDLE_ROW {
                    await_connections(&broker, base_conns)?;
                    let idle = idle_connections(&broker_path, IDLE_CONNS)?;
                    await_connections(&broker, base_conns + IDLE_CONNS)?;
                    Some(idle)
                } else {
                    None
                };
                round(&mut peers[i], make.as_ref(), &mut samples[i])?;
                if let Some(idle) = idle {
                    drop(idle);
                    await_connections(&broker, base_conns)?;
                }
            }
        }
        for ((name, ..), s) in paths.iter().zip(samples) {
            rows.push(s.row(name, size));
        }
    }
    trigger.trigger();
    runtime.shutdown_timeout(Duration::from_secs(2));

    if opts.main {
        print_table(&rows);
    }
    // The other tables; a failure is reported after all that could run.
    let mut failed = Vec::new();
    if opts.syscalls {
        println!();
        if let Err(e) = syscalls::run(&dir) {
            println!("syscalls per call: FAILED: {e:#}");
            failed.push("syscalls");
        }
    }
    if opts.learn {
        println!();
        if let Err(e) = learnping::run(opts.wardend.as_deref()) {
            println!("ping while learning: FAILED: {e:#}");
            failed.push("learn");
        }
    }
    let u = opts.users;
    if u.table || u.fanout || u.memory {
        println!();
        match users::run(opts.wardend.as_deref(), u) {
            Ok(f) => failed.extend(f),
            Err(e) => {
                println!("as users get it: FAILED: {e:#}");
                failed.push("users");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<20} {:>7} {:>10} {:>10} {:>12} {:>9} {:>9} {:>10}",
        "path", "payload", "p50 µs", "p99 µs", "pipelined/s", "p50 ×raw", "p99 ×raw", "tput %raw"
    );
    for r in rows {
        let Some(base) = rows.iter().find(|b| b.name == "raw" && b.size == r.size) else {
            continue;
        };
        println!(
            "{:<20} {:>6}B {:>10.1} {:>10.1} {:>12.0} {:>9.2} {:>9.2} {:>9.0}%",
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
