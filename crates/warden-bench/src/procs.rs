//! Helpers for the benches whose parties each run in a process of their
//! own: CPU pinning, a clock comparable across processes, children killed
//! on drop, and the line format a measuring child reports in.
//!
//! Shared by `warden-bench` and `dbus-bench` (included by path).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The tokio runtimes a measured party may run on: `multi` is what
/// `#[tokio::main]` gives (the main future on `block_on`, woken by the
/// worker thread that polls the I/O driver: one thread hop per wake-up,
/// tokio's own); `current` is `#[tokio::main(flavor = "current_thread")]`
/// (the I/O driver on the same thread: no hop).
pub const FLAVORS: [&str; 2] = ["multi", "current"];

/// Builds the tokio runtime named `flavor` (one of [`FLAVORS`]).
pub fn runtime(flavor: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match flavor {
        "multi" => tokio::runtime::Builder::new_multi_thread(),
        "current" => tokio::runtime::Builder::new_current_thread(),
        other => anyhow::bail!("unknown runtime flavor {other:?} (one of {FLAVORS:?})"),
    };
    Ok(b.enable_all().build()?)
}

/// The first two CPUs this thread may run on: the pinned modes put the
/// client on the first and the broker on the second.
pub fn two_cpus() -> anyhow::Result<(usize, usize)> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .take(2)
        .collect();
    anyhow::ensure!(
        cpus.len() == 2,
        "the pinned mode needs two CPUs, this thread may use {cpus:?}"
    );
    Ok((cpus[0], cpus[1]))
}

/// Spawns `cmd` pinned to `cpu` (unpinned for `None`): the child inherits
/// this thread's affinity, set for the spawn and restored right after.
pub fn spawn_on(cmd: &mut Command, cpu: Option<usize>) -> anyhow::Result<Child> {
    let Some(cpu) = cpu else {
        return cmd.spawn().with_context(|| format!("starting {cmd:?}"));
    };
    let me = Pid::from_raw(0);
    let old = sched_getaffinity(me)?;
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(me, &set)?;
    let r = cmd.spawn();
    sched_setaffinity(me, &old)?;
    r.with_context(|| format!("starting {cmd:?}"))
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process.
pub fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// A child process, killed and reaped when dropped.
#[derive(Debug)]
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a measuring child prints: one line of round-trip times in
/// nanoseconds, one line with its pipelined calls per second.
pub fn report(times: &[Duration], rps: f64) -> String {
    let mut s = String::from("lat");
    for t in times {
        s.push(' ');
        s.push_str(&t.as_nanos().to_string());
    }
    s.push_str(&format!("\nrps {rps}\n"));
    s
}

/// Parses [`report`]'s output.
pub fn parse_report(out: &str) -> anyhow::Result<(Vec<Duration>, f64)> {
    let mut times = Vec::new();
    let mut rps = None;
    for line in out.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("lat") => {
                for n in it {
                    times.push(Duration::from_nanos(n.parse()?));
                }
            }
            Some("rps") => rps = Some(it.next().context("rps value")?.parse()?),
            _ => {}
        }
    }
    Ok((times, rps.context("the client reported no throughput")?))
}

/// The `q`th percentile of sorted `v`.
pub fn pick(v: &[Duration], q: usize) -> Duration {
    v.get(v.len() * q / 100).copied().unwrap_or_default()
}

/// Median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs a measuring child (on `cpu`, if given) to its end and parses its
/// report; a failed child's stderr is the error.
pub fn measure(cmd: &mut Command, cpu: Option<usize>) -> anyhow::Result<(Vec<Duration>, f64)> {
    let child = spawn_on(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        cpu,
    )?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_report(&String::from_utf8_lossy(&out.stdout))
}
