//! Another user's `warden.ping` latency while two connections loop
//! `learn.start`/`learn.stop`, as ratios to idle.
//!
//! Needs root and eBPF: it starts the real `wardend` (embedded default
//! config: learning on, root may learn any process) on a socket of its
//! own. Two looper threads in the bench, as root, each spawn a `sleep`
//! and loop `learn.start {pid}` / `learn.stop {session}` on one
//! connection each, as fast as answers come. The pinger is this binary
//! re-executed as `nobody` (uid 65534, so another user, on its own
//! connection), pinging once per [`GAP`] for [`PHASE`]; it runs once idle
//! and once during the loops, [`ROUNDS`] times, alternating.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use crate::{frame, read_frame, Peer};

/// The hidden argument that makes this binary the pinger.
pub const CHILD_ARG: &str = "--learn-pinger-child";

const PHASE: Duration = Duration::from_millis(1500);
const GAP: Duration = Duration::from_millis(1);
const ROUNDS: usize = 6;
const NOBODY: u32 = 65534;

/// The pinger: `CHILD_ARG SOCKET MILLIS GAP_MICROS`; prints its uid, then
/// one latency in nanoseconds per ping, on one line.
pub fn ping_child(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let socket = PathBuf::from(args.next().context("socket")?);
    let millis: u64 = args.next().context("millis")?.parse()?;
    let gap: u64 = args.next().context("gap")?.parse()?;
    let mut p = Peer::connect(&socket, true)?;
    let ping = |id: u64| {
        frame(
            json!({"kind":"call","id":id,"method":"warden.ping"})
                .to_string()
                .as_bytes(),
        )
    };
    for i in 0..100 {
        p.round_trip(&ping(i + 1))?;
    }
    let mut out = nix::unistd::getuid().as_raw().to_string();
    let end = Instant::now() + Duration::from_millis(millis);
    let mut id = 1000;
    while Instant::now() < end {
        id += 1;
        let req = ping(id);
        let t = Instant::now();
        p.round_trip(&req)?;
        let ns = t.elapsed().as_nanos();
        let v: Value = serde_json::from_slice(&p.buf)?;
        anyhow::ensure!(v["kind"] == "reply", "ping answered {v}");
        out.push(' ');
        out.push_str(&ns.to_string());
        std::thread::sleep(Duration::from_micros(gap));
    }
    println!("{out}");
    Ok(())
}

/// One call; `Err` inside for an error answer. Skips events.
fn call(
    p: &mut Peer,
    id: u64,
    method: &str,
    params: Value,
) -> anyhow::Result<Result<Value, String>> {
    use std::io::Write;
    p.s.write_all(&frame(
        json!({"kind":"call","id":id,"method":method,"params":params})
            .to_string()
            .as_bytes(),
    ))?;
    loop {
        read_frame(&mut p.s, &mut p.buf)?;
        let v: Value = serde_json::from_slice(&p.buf)?;
        if v["id"] != id {
            continue;
        }
        return Ok(match v["kind"].as_str() {
            Some("reply") => Ok(v["result"].clone()),
            _ => Err(v["error"].to_string()),
        });
    }
}

#[derive(Default)]
struct Loops {
    cycles: u64,
    errors: u64,
    first_error: Option<String>,
    max_start: Duration,
    max_stop: Duration,
}

/// Loops learn.start/learn.stop on a `sleep` of its own until `stop`;
/// says so on `ready` after its first cycle (or error).
fn looper(
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) -> anyhow::Result<Loops> {
    let mut target = Command::new("/bin/sleep").arg("600").spawn()?;
    let pid = target.id();
    let r = (|| {
        let mut p = Peer::connect(&socket, true)?;
        let mut l = Loops::default();
        let mut id = 0;
        let mut said = false;
        while !stop.load(Ordering::Relaxed) {
            id += 1;
            let t = Instant::now();
            let r = call(&mut p, id, "learn.start", json!({ "pid": pid }))?;
            l.max_start = l.max_start.max(t.elapsed());
            match r {
                Ok(v) => {
                    id += 1;
                    let t = Instant::now();
                    let r = call(&mut p, id, "learn.stop", json!({ "session": v["session"] }))?;
                    l.max_stop = l.max_stop.max(t.elapsed());
                    match r {
                        Ok(_) => l.cycles += 1,
                        Err(e) => {
                            l.errors += 1;
                            l.first_error.get_or_insert(format!("learn.stop: {e}"));
                        }
                    }
                }
                Err(e) => {
                    l.errors += 1;
                    l.first_error.get_or_insert(format!("learn.start: {e}"));
                }
            }
            if !said {
                said = true;
                let _ = ready.send(());
            }
        }
        Ok(l)
    })();
    let _ = target.kill();
    let _ = target.wait();
    r
}

/// Runs the pinger as nobody for one phase; returns its latencies.
fn ping_phase(exe: &Path, socket: &Path) -> anyhow::Result<Vec<Duration>> {
    let out = Command::new(exe)
        .arg(CHILD_ARG)
        .arg(socket)
        .arg(PHASE.as_millis().to_string())
        .arg(GAP.as_micros().to_string())
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .context("starting the pinger as nobody")?;
    anyhow::ensure!(
        out.status.success(),
        "pinger ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let uid: u32 = it.next().context("pinger said nothing")?.parse()?;
    anyhow::ensure!(uid == NOBODY, "pinger ran as uid {uid}");
    it.map(|n| Ok(Duration::from_nanos(n.parse()?)))
        .collect::<anyhow::Result<Vec<_>>>()
}

/// wardend, killed when dropped.
struct Wardend(std::process::Child);

impl Drop for Wardend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pick(v: &[Duration], q: usize) -> Duration {
    v.get(v.len() * q / 100).copied().unwrap_or_default()
}

/// The wardend binary: `wardend` if given, else next to `me`.
pub fn wardend_path(me: &Path, wardend: Option<&Path>) -> anyhow::Result<PathBuf> {
    let wardend = match wardend {
        Some(p) => p.to_path_buf(),
        None => me.with_file_name("wardend"),
    };
    anyhow::ensure!(
        wardend.is_file(),
        "wardend not found at {}: build it with `cargo build --release -p wardend` (same \
         CARGO_TARGET_DIR), or pass --wardend PATH (or WARDEN_BENCH_WARDEND=PATH); the --no-* \
         flags skip the tables that need it",
        wardend.display()
    );
    Ok(wardend)
}

pub fn run(wardend: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "needs root (eBPF, and the pinger runs as nobody); --no-learn skips it"
    );
    let me = std::env::current_exe()?;
    let wardend = wardend_path(&me, wardend)?;
    // The pinger binary and the socket must be reachable by nobody.
    let dir = PathBuf::from(format!("/run/wdn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let exe = dir.join("warden-bench");
    std::fs::copy(&me, &exe)?;
    let socket = dir.join("s/warden.sock");
    let log = dir.join("wardend.log");
    let _wardend = Wardend(
        Command::new(&wardend)
            .arg("--socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", wardend.display()))?,
    );
    let t = Instant::now();
    while !socket.exists() {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "wardend did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut idle: Vec<Duration> = Vec::new();
    let mut busy: Vec<Duration> = Vec::new();
    let mut loops: Vec<Loops> = Vec::new();
    let mut looped = Duration::ZERO;
    for _ in 0..ROUNDS {
        idle.extend(ping_phase(&exe, &socket)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let began = Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (s, stop, tx) = (socket.clone(), stop.clone(), tx.clone());
                std::thread::spawn(move || looper(s, stop, tx))
            })
            .collect();
        drop(tx);
        // Both loops under way (or dead) before the pings start.
        for _ in 0..2 {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
        let pinged = ping_phase(&exe, &socket);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            loops.push(
                t.join()
                    .map_err(|_| anyhow::anyhow!("a looper panicked"))??,
            );
        }
        looped += began.elapsed();
        busy.extend(pinged?);
    }
    let cycles: u64 = loops.iter().map(|l| l.cycles).sum();
    let errors: u64 = loops.iter().map(|l| l.errors).sum();
    let max_start = loops.iter().map(|l| l.max_start).max().unwrap_or_default();
    let max_stop = loops.iter().map(|l| l.max_stop).max().unwrap_or_default();
    idle.sort();
    busy.sort();
    let secs = looped.as_secs_f64();
    println!(
        "warden.ping from another user (uid {NOBODY}, own connection, one ping per {} ms) on a real \
         wardend ({}), idle vs while two root connections loop learn.start/learn.stop on a sleep \
         each; {ROUNDS} × {:.1} s per phase, alternating",
        GAP.as_millis(),
        wardend.display(),
        PHASE.as_secs_f64()
    );
    println!(
        "{:<22} {:>7} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "phase", "pings", "p50 µs", "p99 µs", "max µs", "p50 ×idle", "p99 ×idle"
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for (name, v) in [("idle", &idle), ("2 × learn start/stop", &busy)] {
        println!(
            "{:<22} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>10.2} {:>10.2}",
            name,
            v.len(),
            us(pick(v, 50)),
            us(pick(v, 99)),
            us(v.last().copied().unwrap_or_default()),
            pick(v, 50).as_secs_f64() / pick(&idle, 50).as_secs_f64(),
            pick(v, 99).as_secs_f64() / pick(&idle, 99).as_secs_f64(),
        );
    }
    println!(
        "  loops: {cycles} start/stop cycles in {secs:.0} s ({:.0}/s), {errors} errors{}; slowest \
         learn.start {:.1} ms, learn.stop {:.1} ms",
        cycles as f64 / secs,
        loops
            .iter()
            .find_map(|l| l.first_error.as_deref())
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        max_start.as_secs_f64() * 1e3,
        max_stop.as_secs_f64() * 1e3
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let bad = log_text
        .lines()
        .filter(|l| l.contains("panic") || l.contains("ERROR"))
        .count();
    println!("  wardend log: {bad} ERROR or panic lines");
    anyhow::ensure!(
        cycles > 0,
        "no learn.start/learn.stop cycle completed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Ok(())
}
