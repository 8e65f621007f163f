//! Syscalls the broker makes per call, by kind.
//!
//! The broker runs alone in a child process (this binary re-executed with
//! [`CHILD_ARG`]); the provider thread and the client stay in the bench
//! process. For each workload, `strace -f -c -p CHILD` attaches to every
//! thread of the child (so the counts are the broker's threads only:
//! tokio workers and blocking threads, nothing else runs there), and
//! `strace -c -p TID` to the provider thread alone; `N` calls are made,
//! both straces are interrupted and their summaries parsed. Connection
//! setup and warm-up happen before the attach.
//!
//! Writes per frame: the broker sends one frame per echo call (the reply)
//! and two per routed call (the call to the provider, the reply to the
//! caller).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use warden::{Broker, Shutdown};
use warden_policy::{Config, StaticResolver};

use crate::{frame, pipelined, provider_thread, Peer, CONFIG, WARMUP};

/// The hidden argument that makes this binary the broker child.
pub const CHILD_ARG: &str = "--syscalls-broker-child";

/// Calls per measured workload.
const CALLS: usize = 20_000;
const PAYLOAD: usize = 64;

const READS: &[&str] = &["recvmsg", "recvfrom", "read", "readv", "recvmmsg"];
const WRITES: &[&str] = &["sendmsg", "sendto", "write", "writev", "sendmmsg"];

/// The child: a broker on `socket` (same config and runtime shape as the
/// in-process one), until stdin closes.
pub fn broker_child(socket: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let config = Config::parse(CONFIG, "<bench>", &StaticResolver::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let broker = Broker::builder(&config).build();
    let (trigger, shutdown) = Shutdown::new();
    {
        let _g = runtime.enter();
        let l = tokio::net::UnixListener::bind(socket)?;
        let b = broker.clone();
        runtime.spawn(async move { b.serve(l, shutdown).await });
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    trigger.trigger();
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Syscall counts from one `strace -c` summary.
#[derive(Default, Clone)]
struct Counts {
    /// name → (calls, errors)
    by_name: BTreeMap<String, (u64, u64)>,
}

impl Counts {
    fn sum(&self, names: Option<&[&str]>) -> u64 {
        self.by_name
            .iter()
            .filter(|(n, _)| names.is_none_or(|ns| ns.contains(&n.as_str())))
            .map(|(_, (c, _))| c)
            .sum()
    }
    fn reads(&self) -> u64 {
        self.sum(Some(READS))
    }
    fn read_errors(&self) -> u64 {
        self.by_name
            .iter()
            .filter(|(n, _)| READS.contains(&n.as_str()))
            .map(|(_, (_, e))| e)
            .sum()
    }
    fn writes(&self) -> u64 {
        self.sum(Some(WRITES))
    }
    fn total(&self) -> u64 {
        self.sum(None)
    }

    /// `strace -c` table: `% time, seconds, usecs/call, calls, [errors],
    /// syscall`; the `total` line is left out (recomputed).
    fn parse(text: &str) -> Counts {
        let mut c = Counts::default();
        for line in text.lines() {
            let t: Vec<&str> = line.split_whitespace().collect();
            if t.len() < 5 || t[0].parse::<f64>().is_err() {
                continue;
            }
            let name = t[t.len() - 1];
            if name == "total" {
                continue;
            }
            let calls = t[3].parse().unwrap_or(0);
            let errors = if t.len() >= 6 {
                t[4].parse().unwrap_or(0)
            } else {
                0
            };
            let e = c.by_name.entry(name.to_owned()).or_default();
            e.0 += calls;
            e.1 += errors;
        }
        c
    }

    /// The counts of the names of `set` seen: "sendmsg 20000".
    fn list(&self, set: &[&str]) -> String {
        self.by_name
            .iter()
            .filter(|(k, _)| set.contains(&k.as_str()))
            .map(|(k, (c, e))| {
                if *e > 0 {
                    format!("{k} {c} ({e} failed)")
                } else {
                    format!("{k} {c}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The biggest entries, per call: "epoll_wait 1.02, futex 0.40".
    fn top(&self, per: f64, skip: &[&str], n: usize) -> String {
        let mut v: Vec<(&String, u64)> = self
            .by_name
            .iter()
            .filter(|(k, (c, _))| !skip.contains(&k.as_str()) && *c as f64 / per >= 0.005)
            .map(|(k, (c, _))| (k, *c))
            .collect();
        v.sort_by_key(|(_, c)| std::cmp::Reverse(*c));
        v.iter()
            .take(n)
            .map(|(k, c)| format!("{k} {:.2}", *c as f64 / per))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A running `strace -c`, attached.
struct Strace {
    child: Child,
    out: PathBuf,
}

impl Strace {
    /// Attaches to `pid` (`follow`: every thread of the process) and
    /// returns once strace reports every thread attached.
    fn attach(pid: u32, follow: bool, out: PathBuf) -> anyhow::Result<Strace> {
        let threads = if follow {
            std::fs::read_dir(format!("/proc/{pid}/task"))?.count()
        } else {
            1
        };
        let mut c = Command::new("strace");
        c.arg("-c").arg("-o").arg(&out);
        if follow {
            c.arg("-f");
        }
        let mut child = c
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting strace (is it installed?)")?;
        let stderr = child.stderr.take().context("strace stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut attached = 0;
        let mut said = Vec::new();
        let t = Instant::now();
        while attached < threads {
            let left = Duration::from_secs(10).saturating_sub(t.elapsed());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    // "Process N attached", or with -f on a process
                    // "Process N attached with K threads".
                    if let Some((_, k)) = l.split_once("attached with ") {
                        attached += k
                            .split_whitespace()
                            .next()
                            .and_then(|k| k.parse::<usize>().ok())
                            .unwrap_or(1);
                    } else if l.contains("attached") {
                        attached += 1;
                    } else {
                        said.push(l);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    anyhow::bail!(
                        "strace attached {attached} of {threads} threads of {pid}: {}",
                        said.join("; ")
                    );
                }
            }
        }
        Ok(Strace { child, out })
    }

    /// Detaches (SIGINT) and returns the summary.
    fn finish(mut self) -> anyhow::Result<Counts> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        let status = self.child.wait()?;
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("strace ({status}) wrote no summary"))?;
        Ok(Counts::parse(&text))
    }
}

/// The broker child, ended (stdin closed) when dropped.
struct BrokerChild(Child);

impl Drop for BrokerChild {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Measured {
    path: &'static str,
    window: usize,
    frames_per_call: u64,
    broker: Counts,
    provider: Option<Counts>,
}

pub fn run(dir: &Path) -> anyhow::Result<()> {
    let socket = dir.join("syscalls.sock");
    let me = std::env::current_exe()?;
    let mut child = BrokerChild(
        Command::new(&me)
            .arg(CHILD_ARG)
            .arg(&socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().context("child stdout")?).read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "broker child said {line:?}");
    let pid = child.0.id();
    let provider_tid = provider_thread(socket.clone(), "bench.echo")?;

    let pad = "x".repeat(PAYLOAD);
    let make = |method: &'static str| {
        let pad = pad.clone();
        move |id: u64| {
            frame(
                json!({"kind":"call","id":id,"method":method,"params":pad})
                    .to_string()
                    .as_bytes(),
            )
        }
    };
    let mut results = Vec::new();
    for (path, method, frames_per_call) in [("echo", "warden.echo", 1), ("routed", "bench.echo", 2)]
    {
        let make = make(method);
        let mut p = Peer::connect(&socket, true)?;
        for i in 0..WARMUP {
            p.round_trip(&make(i as u64 + 1))?;
        }
        for window in [1usize, 32] {
            // Settle: nothing left over from the warm-up or the last run.
            std::thread::sleep(Duration::from_millis(50));
            let broker = Strace::attach(pid, true, dir.join("strace-broker.txt"))?;
            let provider = if path == "routed" {
                Some(Strace::attach(
                    provider_tid as u32,
                    false,
                    dir.join("strace-provider.txt"),
                )?)
            } else {
                None
            };
            let done = pipelined(&mut p, &make, CALLS, window)?;
            anyhow::ensure!(done == CALLS, "{done} calls made, not {CALLS}");
            let broker = broker.finish()?;
            let provider = provider.map(Strace::finish).transpose()?;
            results.push(Measured {
                path,
                window,
                frames_per_call,
                broker,
                provider,
            });
        }
    }
    drop(child);

    println!(
        "syscalls per call: {CALLS} calls of {PAYLOAD} B per row; broker alone in a child process \
         (strace -f -c -p, all its threads), provider thread in the bench (strace -c -p TID)"
    );
    println!(
        "{:<8} {:>6} {:>9} {:>10} {:>9} {:>9} {:>10} {:>10} {:>10}  {:<}",
        "path",
        "window",
        "reads",
        "(failed)",
        "writes",
        "total",
        "frames/wr",
        "prov r+w",
        "b+p total",
        "broker, other syscalls per call"
    );
    let n = CALLS as f64;
    for m in &results {
        let b = &m.broker;
        let prov = m
            .provider
            .as_ref()
            .map(|p| format!("{:.2}+{:.2}", p.reads() as f64 / n, p.writes() as f64 / n))
            .unwrap_or_else(|| "-".into());
        let both = b.total() + m.provider.as_ref().map_or(0, Counts::total);
        let mut rw: Vec<&str> = READS.to_vec();
        rw.extend_from_slice(WRITES);
        println!(
            "{:<8} {:>6} {:>9.2} {:>10.2} {:>9.2} {:>9.2} {:>10.2} {:>10} {:>10.2}  {}",
            m.path,
            m.window,
            b.reads() as f64 / n,
            b.read_errors() as f64 / n,
            b.writes() as f64 / n,
            b.total() as f64 / n,
            (m.frames_per_call * CALLS as u64) as f64 / b.writes().max(1) as f64,
            prov,
            both as f64 / n,
            b.top(n, &rw, 4)
        );
    }
    println!(
        "  reads/writes/total: the broker's, per call; (failed): reads that found nothing (EAGAIN); \
         frames/wr: frames the broker sent (1 per echo, 2 per routed call) per write; prov r+w: \
         the provider thread's reads+writes per call; b+p total: every syscall of the broker \
         and the provider thread, per call. Under strace every syscall is slower, so \
         batching may differ a little from an untraced run."
    );
    for m in &results {
        let b = &m.broker;
        println!(
            "  {} ×{}: broker, {CALLS} calls: reads {} [{}], writes {} [{}], all syscalls {}",
            m.path,
            m.window,
            b.reads(),
            b.list(READS),
            b.writes(),
            b.list(WRITES),
            b.total()
        );
    }
    Ok(())
}
