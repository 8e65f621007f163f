//! Shared by `load-bench` and `soak-bench` (included by path): a real
//! `wardend` in its own process, this binary re-executed as worker
//! processes (as the test users) that talk to the orchestrator in JSON
//! lines, wardend's RSS and descriptor count from `/proc`, the workers'
//! error and event counts, and small helpers (durations, percentiles, a
//! seeded PRNG).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use warden_client::{CallError, Client, ConnectOptions, Event, IncomingCall, Payload, WireError};
use warden_testkit::{BrokerProcess, RawConn, TestDir};

/// Locks a worker's counts; a holder that panicked left counts that are
/// still worth reporting.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A worker's errors: a count per kind, and the first `KEEP` in full.
#[derive(Debug, Default)]
pub struct ErrorLog<const KEEP: usize> {
    pub counts: BTreeMap<String, u64>,
    pub first: Vec<String>,
}

impl<const KEEP: usize> ErrorLog<KEEP> {
    pub fn record(&mut self, kind: &str, detail: impl std::fmt::Display) {
        *self.counts.entry(kind.to_owned()).or_default() += 1;
        if self.first.len() < KEEP {
            self.first.push(format!("{kind}: {detail}"));
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// The kind of a failed call, for [`ErrorLog::record`].
pub fn call_error_kind(e: &CallError) -> String {
    match e {
        CallError::Remote(w) => format!("answered {}", w.code),
        CallError::Disconnected { .. } => "disconnected".into(),
        CallError::Timeout { .. } => "client timeout".into(),
        _ => "other".into(),
    }
}

/// A worker's events: those received on the measured topic (strictly
/// accounted), those missed (`missed` and `lagged`), and event streams
/// that ended while the worker was not exiting.
#[derive(Debug, Default)]
pub struct EventCount {
    pub received: AtomicU64,
    pub missed: AtomicU64,
    pub ended: AtomicU64,
}

/// Consumes a connection's events until it closes, counting into `ev`
/// those on `topic`.
pub fn count_events(
    c: Arc<Client>,
    topic: &'static str,
    ev: Arc<EventCount>,
    quitting: Arc<AtomicBool>,
) {
    tokio::spawn(async move {
        while let Some(e) = c.next_event().await {
            let missed = match e {
                Event::Event {
                    topic: t, missed, ..
                } => {
                    if t.as_str() == topic {
                        ev.received.fetch_add(1, Ordering::Relaxed);
                    }
                    missed
                }
                Event::Lagged { missed } => missed,
            };
            ev.missed.fetch_add(missed, Ordering::Relaxed);
        }
        if !quitting.load(Ordering::Relaxed) {
            ev.ended.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// wardend's resident set (`VmRSS`), KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// wardend's open descriptors (`/proc/PID/fd`).
pub fn fd_count(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count())
}

/// One sample of wardend's footprint.
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    pub rss_kib: u64,
    pub fds: usize,
}

pub fn footprint(pid: u32) -> anyhow::Result<Footprint> {
    Ok(Footprint {
        rss_kib: rss_kib(pid)?,
        fds: fd_count(pid)?,
    })
}

/// Raises this process's soft `RLIMIT_NOFILE` to the hard limit; returns
/// the new soft limit.
pub fn raise_nofile() -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    }
    Ok(hard)
}

/// A duration written with a unit, as the project's CLIs take them:
/// `500ms`, `25s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .with_context(|| format!("duration {s:?} needs a unit (ms, s, m, h)"))?;
    let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => anyhow::bail!("bad duration unit in {s:?} (ms, s, m, h)"),
    })
}

/// Shows a duration the way [`parse_duration`] reads it.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// xorshift64*: spreads the workers' timings; not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`0` for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// `d` ± 50 %.
    pub fn jitter(&mut self, d: Duration) -> Duration {
        let us = d.as_micros() as u64;
        Duration::from_micros(us / 2 + self.below(us.max(1)))
    }
}

/// The `q`th percentile (0..=100) of sorted `v`, in nanoseconds.
pub fn pct(v: &[u64], q: usize) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[(v.len() * q / 100).min(v.len() - 1)]
}

/// A worker process: this binary re-executed (as a test user, or as
/// root), its stdin a command pipe, its stdout JSON lines read by a
/// thread. Killed and reaped when dropped.
#[derive(Debug)]
pub struct Worker {
    pub name: String,
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    /// Spawns `cmd` (stdin and stdout piped; stderr inherited, so a
    /// worker's failure is visible).
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Worker> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting worker {name}: {cmd:?}"))?;
        let stdin = child.stdin.take();
        let out = child.stdout.take().context("worker stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("read-{name}"))
            .spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            })
            .context("starting a reader thread")?;
        Ok(Worker {
            name: name.to_owned(),
            child,
            stdin,
            lines,
        })
    }

    /// Writes one command line to the worker.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{}: stdin already closed", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("telling {} {line:?}", self.name))
    }

    /// The next JSON line whose `"kind"` is `kind` (other lines are
    /// handed to `other`), within `timeout`.
    pub fn await_line(
        &mut self,
        kind: &str,
        timeout: Duration,
        other: &mut dyn FnMut(&str, Value),
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    anyhow::bail!("{}: no {kind:?} line within {timeout:?}", self.name)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    anyhow::bail!("{}: exited ({status}) before its {kind:?} line", self.name)
                }
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                eprintln!("{}: {line}", self.name);
                continue;
            };
            if v["kind"] == kind {
                return Ok(v);
            }
            other(&self.name, v);
        }
    }

    /// Lines received so far without waiting.
    pub fn drain(&mut self, other: &mut dyn FnMut(&str, Value)) {
        while let Ok(line) = self.lines.try_recv() {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                other(&self.name, v);
            }
        }
    }

    /// Waits up to `timeout` for the worker to exit.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints one JSON line on stdout (a worker's report to the orchestrator).
pub fn emit(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

/// The orchestrator's commands on stdin, one per line, as a tokio channel
/// (read by a plain thread; EOF closes the channel).
pub fn commands() -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<String>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("commands".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { return };
                if tx.send(line.trim().to_owned()).is_err() {
                    return;
                }
            }
        })
        .context("starting the command reader")?;
    Ok(rx)
}

/// Waits for the command `want`; any other command, or EOF, fails.
pub async fn await_command(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    want: &str,
) -> anyhow::Result<()> {
    match rx.recv().await {
        Some(c) if c == want => Ok(()),
        Some(c) => anyhow::bail!("expected the command {want:?}, got {c:?}"),
        None => anyhow::bail!("stdin closed while waiting for {want:?}"),
    }
}

pub fn runtime_multi() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn runtime_current() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The provider mode: `SOCKET METHOD...`: serves each METHOD on one
/// `warden-client` connection (`serve`), answering with the params.
pub fn provider_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let socket = args.next().context("socket")?;
    let methods: Vec<String> = args.collect();
    anyhow::ensure!(!methods.is_empty(), "provider: no method");
    runtime_multi()?.block_on(async {
        let client = Client::connect(ConnectOptions::new(socket)).await?;
        let names: Vec<&str> = methods.iter().map(String::as_str).collect();
        client
            .serve(&names, 256, |call: IncomingCall| async move {
                Ok::<Payload, WireError>(call.params)
            })
            .await?;
        Ok(())
    })
}

/// Calls `method` (raw connection) until it answers with a reply.
pub fn await_served(socket: &Path, method: &str, timeout: Duration) -> anyhow::Result<()> {
    let mut c = RawConn::connect(socket)?;
    c.hello()?;
    let t = Instant::now();
    for id in 1.. {
        let v = c.call(id, method, json!(1))?;
        if v["kind"] == "reply" {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < timeout,
            "{method} not served within {timeout:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The connections wardend counts (`warden.metrics`, as root: an
/// administrator).
pub fn broker_connections(socket: &Path) -> anyhow::Result<u64> {
    let mut c = RawConn::connect(socket)?;
    c.hello()?;
    let v = c.call(1, "warden.metrics", json!(null))?;
    v["result"]["connections"]
        .as_u64()
        .with_context(|| format!("warden.metrics answered {v}"))
}

/// Starts the `wardend` next to this binary on `config` (written to
/// `dir/warden.toml`; the socket is `dir/s/warden.sock`), logging at
/// `log_level` into the test dir.
pub fn start_wardend(
    dir: &TestDir,
    config: &str,
    log_level: &str,
) -> anyhow::Result<BrokerProcess> {
    let me = std::env::current_exe()?;
    let wardend = me.with_file_name("wardend");
    anyhow::ensure!(
        wardend.is_file(),
        "{} not found: build it into the same target directory (`cargo build --release -p \
         wardend`, or `cargo build --workspace` for the debug one)",
        wardend.display()
    );
    let conf = dir.path().join("warden.toml");
    std::fs::write(&conf, config)?;
    let level = format!("--log-level={log_level}");
    BrokerProcess::spawn(
        dir,
        &[
            "--config".as_ref(),
            conf.as_os_str(),
            std::ffi::OsStr::new(&level),
        ],
        dir.path().join("s/warden.sock"),
    )
}

/// A file next to this binary, if it was built.
pub fn sibling(name: &str) -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.with_file_name(name);
    p.is_file().then_some(p)
}

/// A JSON array of numbers as `u64`s.
pub fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// One mapping of `/proc/PID/smaps`: its address range, name (empty for
/// anonymous memory), size and resident KiB.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub range: String,
    pub name: String,
    pub size_kib: u64,
    pub rss_kib: u64,
}

/// `/proc/PID/smaps`, parsed.
pub fn smaps(pid: u32) -> anyhow::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                // perms, offset, dev, inode, then the name (if any).
                let name = f.nth(4).unwrap_or("").to_owned();
                out.push(Mapping {
                    range: first.to_owned(),
                    name,
                    size_kib: b.saturating_sub(a) / 1024,
                    rss_kib: 0,
                });
                continue;
            }
        }
        if first == "Rss:" {
            if let (Some(m), Some(v)) = (out.last_mut(), f.next().and_then(|v| v.parse().ok())) {
                m.rss_kib = v;
            }
        }
    }
    Ok(out)
}

/// The mappings whose resident size grew by at least `min_kib` from
/// `before` to `after` (matched by address range; a new one counts from
/// 0), largest growth first: (mapping after, growth KiB).
pub fn grown(before: &[Mapping], after: &[Mapping], min_kib: u64) -> Vec<(Mapping, u64)> {
    let mut v: Vec<(Mapping, u64)> = after
        .iter()
        .filter_map(|m| {
            let was = before
                .iter()
                .find(|b| b.range == m.range)
                .map_or(0, |b| b.rss_kib);
            let g = m.rss_kib.saturating_sub(was);
            (g >= min_kib).then(|| (m.clone(), g))
        })
        .collect();
    v.sort_by_key(|(_, g)| std::cmp::Reverse(*g));
    v
}
