//! `learn-bench`: what learning mode costs the traced program.
//!
//! Workload: 200 000 opens (and closes) of a readable file, with an open
//! of `/etc/shadow` (denied: the workload runs as `nobody`) every 1 000.
//! Run untraced, under `wardenctl learn` (denials only, and with access
//! recording for profiles), and under `strace -f -o /dev/null`, in the
//! same run, each `ROUNDS` times (strace once: it is slow); the table shows the median CPU time
//! (user + system, as the workload itself measures it: eBPF programs run
//! in the traced task and are charged to it) and wall time, as ratios to
//! the untraced run.
//!
//! Needs root (it starts `wardend` and switches the workload to
//! `nobody`). `cargo build --release --bins`, then
//! `target/release/learn-bench`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OPENS: u32 = 200_000;
const DENY_EVERY: u32 = 1_000;
const ROUNDS: usize = 5;
const ALLOWED: &str = "/etc/hostname";
const DENIED: &str = "/etc/shadow";

/// The workload: prints "cpu_us denied" when done.
fn workload() -> anyhow::Result<()> {
    let mut denied = 0u32;
    for i in 0..OPENS {
        let path = if i % DENY_EVERY == DENY_EVERY - 1 {
            DENIED
        } else {
            ALLOWED
        };
        if std::fs::File::open(path).is_err() {
            denied += 1;
        }
    }
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    println!("{} {denied}", us(u.user_time()) + us(u.system_time()));
    Ok(())
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me
        .parent()
        .map(|d| d.join(name))
        .ok_or_else(|| anyhow::anyhow!("no directory"))?;
    anyhow::ensure!(p.exists(), "{} missing: build with --bins", p.display());
    Ok(p)
}

/// Runs `prefix... learn-bench workload` as nobody; returns (cpu, wall).
fn run(prefix: &[&str], me: &Path) -> anyhow::Result<(Duration, Duration)> {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    c.args(prefix).arg(me).arg("workload");
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.env_remove("LD_LIBRARY_PATH");
    let t = Instant::now();
    let out = c.output()?;
    let wall = t.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "{prefix:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // The workload's line is the first; wardenctl's report follows.
    let line = text.lines().next().unwrap_or_default();
    let mut it = line.split_whitespace();
    let cpu: u64 = it.next().unwrap_or("0").parse()?;
    let denied: u32 = it.next().unwrap_or("0").parse()?;
    anyhow::ensure!(
        denied == OPENS / DENY_EVERY,
        "workload saw {denied} denials"
    );
    Ok((Duration::from_micros(cpu), wall))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("workload") {
        return workload();
    }
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "learn-bench needs root (it starts wardend and runs the workload as nobody)"
    );
    let me = std::env::current_exe()?;
    // The workload binary must be reachable by nobody.
    let dir = PathBuf::from(format!("/run/wdn-learn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let work = dir.join("learn-bench");
    std::fs::copy(&me, &work)?;
    let ctl = dir.join("wardenctl");
    std::fs::copy(sibling("wardenctl")?, &ctl)?;
    let socket = dir.join("s/warden.sock");
    let mut broker = Command::new(sibling("wardend")?)
        .arg("--socket")
        .arg(&socket)
        .stderr(Stdio::null())
        .spawn()?;
    let t = Instant::now();
    while !socket.exists() {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "wardend did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sock = socket.display().to_string();
    let ctl_s = ctl.display().to_string();
    let learn: Vec<&str> = vec![&ctl_s, "--socket", &sock, "learn", "--"];
    let learn_acc: Vec<&str> = vec![
        &ctl_s,
        "--socket",
        &sock,
        "learn",
        "--format",
        "systemd",
        "--output",
        "/dev/null",
        "--",
    ];
    let have_strace = Command::new("strace").arg("-V").output().is_ok();
    let modes: Vec<(&str, Vec<&str>)> = {
        let mut m = vec![
            ("untraced", vec![]),
            ("learn (denials)", learn),
            ("learn (+accesses)", learn_acc),
        ];
        if have_strace {
            m.push(("strace -f", vec!["strace", "-f", "-o", "/dev/null"]));
        }
        m
    };
    let mut results: Vec<(Vec<Duration>, Vec<Duration>)> = vec![(vec![], vec![]); modes.len()];
    // Interleave the modes, so drift on a shared machine hits all alike.
    // strace costs tens of times the workload (~90 s a run here): one run.
    for round in 0..ROUNDS {
        for (i, (name, prefix)) in modes.iter().enumerate() {
            if round > 0 && name.starts_with("strace") {
                continue;
            }
            let (cpu, wall) = run(prefix, &work)?;
            results[i].0.push(cpu);
            results[i].1.push(wall);
        }
    }
    let _ = broker.kill();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let base_cpu = median(results[0].0.clone()).as_secs_f64();
    let base_wall = median(results[0].1.clone()).as_secs_f64();
    println!(
        "learning-mode overhead: {OPENS} opens of {ALLOWED}, a denied {DENIED} every {DENY_EVERY}, \
         as nobody; median of {ROUNDS} (strace: 1 run)"
    );
    println!(
        "{:<20} {:>10} {:>8} {:>10} {:>8}",
        "mode", "cpu ms", "x cpu", "wall ms", "x wall"
    );
    for (i, (name, _)) in modes.iter().enumerate() {
        let cpu = median(results[i].0.clone()).as_secs_f64();
        let wall = median(results[i].1.clone()).as_secs_f64();
        println!(
            "{name:<20} {:>10.1} {:>8.2} {:>10.1} {:>8.2}",
            cpu * 1e3,
            cpu / base_cpu,
            wall * 1e3,
            wall / base_wall
        );
    }
    if !have_strace {
        println!("(strace not installed: its row is missing)");
    }
    Ok(())
}
