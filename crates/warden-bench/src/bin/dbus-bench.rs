//! `dbus-bench`: the D-Bus row of warden-bench's "as users get it" table.
//!
//! A private `dbus-daemon` (its own config, a unix:path listen address in
//! a temp dir under /run), a server process exposing `Echo(s) -> s` with
//! zbus's `interface` macro, and a client process calling it through the
//! daemon with zbus on tokio: p50/p99 one call at a time, then pipelined
//! throughput ([`WINDOW`] concurrent calls on one connection, awaited
//! together, over and over). A binary of its own, so that only the bench
//! build pays for zbus.
//!
//! `dbus-bench [--pinned]` prints one machine-readable line per payload
//! size, `row MODE SIZE P50_NS P99_NS CALLS_PER_S`, which warden-bench
//! merges into its table. Pinned: client and server on the first CPU,
//! dbus-daemon on the second (as warden-bench pins client, provider and
//! broker).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

#[path = "../procs.rs"]
#[allow(dead_code)] // now_ns is for warden-bench's fan-out
mod procs;

use procs::{measure, median, pick, report, runtime, spawn_on, two_cpus, Kill, FLAVORS};

const SERVER_ARG: &str = "--server";
const CLIENT_ARG: &str = "--client";
const NAME: &str = "org.warden.Bench";
const PATH: &str = "/org/warden/Bench";
const SIZES: [usize; 2] = [64, 4096];
const WARMUP: usize = 500;
const ROUND_TRIPS: usize = 2_000;
const PIPELINED: usize = 8_000;
const WINDOW: usize = 32;
const ROUNDS: usize = 5;

struct Echo;

#[zbus::interface(name = "org.warden.Bench")]
impl Echo {
    fn echo(&self, s: String) -> String {
        s
    }
}

/// The server: owns [`NAME`], serves [`Echo`] at [`PATH`], says `ready`.
fn server(address: &str, flavor: &str) -> anyhow::Result<()> {
    runtime(flavor)?.block_on(async {
        let _conn = zbus::connection::Builder::address(address)?
            .name(NAME)?
            .serve_at(PATH, Echo)?
            .build()
            .await?;
        println!("ready");
        std::future::pending::<()>().await;
        Ok(())
    })
}

async fn echo(conn: &zbus::Connection, s: &str) -> anyhow::Result<()> {
    let reply = conn
        .call_method(Some(NAME), PATH, Some(NAME), "Echo", &(s,))
        .await?;
    let back: String = reply.body().deserialize()?;
    anyhow::ensure!(back.len() == s.len(), "Echo answered {} bytes", back.len());
    Ok(())
}

/// The client: round trips, then pipelined windows; prints a report.
fn client(address: &str, size: usize, flavor: &str) -> anyhow::Result<()> {
    runtime(flavor)?.block_on(async {
        let conn = zbus::connection::Builder::address(address)?.build().await?;
        let pad = "x".repeat(size);
        for _ in 0..WARMUP {
            echo(&conn, &pad).await?;
        }
        let mut times = Vec::with_capacity(ROUND_TRIPS);
        for _ in 0..ROUND_TRIPS {
            let t = Instant::now();
            echo(&conn, &pad).await?;
            times.push(t.elapsed());
        }
        let t = Instant::now();
        for _ in 0..PIPELINED / WINDOW {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..WINDOW {
                let (conn, pad) = (conn.clone(), pad.clone());
                set.spawn(async move { echo(&conn, &pad).await });
            }
            while let Some(r) = set.join_next().await {
                r??;
            }
        }
        let rps = (PIPELINED / WINDOW * WINDOW) as f64 / t.elapsed().as_secs_f64();
        print!("{}", report(&times, rps));
        Ok(())
    })
}

fn bus_config(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

fn find_dbus_daemon() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("dbus-daemon"))
        .find(|p| p.is_file())
}

fn run(pinned: bool) -> anyhow::Result<()> {
    let daemon = find_dbus_daemon().context(
        "dbus-daemon not found: install it with `apt-get install dbus` (the D-Bus row needs it)",
    )?;
    let (client_cpu, bus_cpu) = if pinned {
        let (a, b) = two_cpus()?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let dir = PathBuf::from(format!("/run/wdn-dbus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let socket = dir.join("bus");
    let config = dir.join("bus.conf");
    std::fs::write(&config, bus_config(&socket))?;
    let log = dir.join("dbus-daemon.log");
    let _daemon = Kill(spawn_on(
        Command::new(&daemon)
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?),
        bus_cpu,
    )?);
    let t = Instant::now();
    while !socket.exists() {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "dbus-daemon did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let address = format!("unix:path={}", socket.display());
    let me = std::env::current_exe()?;
    let mode = if pinned { "pinned" } else { "unpinned" };
    for flavor in FLAVORS {
        // One server at a time owns NAME: the client and the server run on
        // the same runtime flavor, as the Warden rows' client and provider.
        let mut server = Kill(spawn_on(
            Command::new(&me)
                .arg(SERVER_ARG)
                .arg(&address)
                .arg(flavor)
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
            client_cpu,
        )?);
        let mut line = String::new();
        std::io::BufReader::new(server.0.stdout.take().context("server stdout")?)
            .read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "ready", "the zbus server did not start");

        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); SIZES.len()];
        let mut rps: Vec<Vec<f64>> = vec![Vec::new(); SIZES.len()];
        for _ in 0..ROUNDS {
            for (i, size) in SIZES.iter().enumerate() {
                let (t, r) = measure(
                    Command::new(&me)
                        .arg(CLIENT_ARG)
                        .arg(&address)
                        .arg(size.to_string())
                        .arg(flavor),
                    client_cpu,
                )
                .context("zbus client")?;
                times[i].extend(t);
                rps[i].push(r);
            }
        }
        for (i, size) in SIZES.iter().enumerate() {
            times[i].sort();
            println!(
                "row {mode} {flavor} {size} {} {} {:.0}",
                pick(&times[i], 50).as_nanos(),
                pick(&times[i], 99).as_nanos(),
                median(&mut rps[i])
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some(SERVER_ARG) => {
            let address = args.next().context("address")?;
            server(&address, &args.next().context("flavor")?)
        }
        Some(CLIENT_ARG) => {
            let address = args.next().context("address")?;
            let size = args.next().context("size")?.parse()?;
            client(&address, size, &args.next().context("flavor")?)
        }
        Some("--pinned") => run(true),
        None => run(false),
        Some(a) => anyhow::bail!("usage: dbus-bench [--pinned] (unknown argument {a:?})"),
    }
}
