//! The broker's stderr belongs to somebody else (a terminal, `tee`,
//! journald) and can close or stall at any moment. Neither may stop the
//! broker from answering, nor from stopping cleanly on SIGTERM.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use warden_testkit::{config_text, BrokerProcess, RawConn, TestDir};

use crate::RULES;

/// The broker's drain timeout (5 s by default) plus a generous margin.
const EXIT_BOUND: Duration = Duration::from_secs(20);

/// Makes `n` denied calls (each one writes an audit line) over a few
/// connections and checks that every one is answered with `denied`.
fn denied_calls_are_answered(broker: &BrokerProcess, n: u64) -> anyhow::Result<()> {
    let mut done = 0;
    while done < n {
        let mut c = RawConn::connect(broker.socket())?;
        c.stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.hello()?;
        for _ in 0..100.min(n - done) {
            done += 1;
            let r = c.call(done, "zzz.nobody.may.call.this", json!(null))?;
            anyhow::ensure!(r["error"]["code"] == "denied", "call {done}: {r}");
        }
    }
    Ok(())
}

/// A pipe whose ends no other test's child inherits.
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

#[test]
fn a_closed_stderr_does_not_stop_answers_or_shutdown() -> anyhow::Result<()> {
    let dir = TestDir::new("stderr-closed")?;
    let (read, write) = pipe()?;
    let mut broker =
        BrokerProcess::start_with_stderr(&dir, &config_text(&dir, RULES), Stdio::from(write))?;
    // As when `tee` dies: the reading end goes away; the next log line the
    // broker writes gets EPIPE.
    drop(read);
    denied_calls_are_answered(&broker, 300)?;
    broker.signal(nix::sys::signal::Signal::SIGTERM)?;
    let start = Instant::now();
    let status = broker.wait_exit(EXIT_BOUND)?;
    assert_eq!(status.code(), Some(0), "wardend exited with {status}");
    assert!(start.elapsed() < EXIT_BOUND);
    Ok(())
}

#[test]
fn a_stalled_stderr_does_not_stop_answers_or_shutdown() -> anyhow::Result<()> {
    let dir = TestDir::new("stderr-stalled")?;
    let (read, write) = pipe()?;
    let mut broker =
        BrokerProcess::start_with_stderr(&dir, &config_text(&dir, RULES), Stdio::from(write))?;
    // Nobody reads: the pipe (64 KiB) fills after a few hundred lines and
    // every later write would block. 3,000 audited denials are ~10 times
    // what fits.
    denied_calls_are_answered(&broker, 3000)?;
    broker.signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = broker.wait_exit(EXIT_BOUND)?;
    assert_eq!(status.code(), Some(0), "wardend exited with {status}");
    // What did get through is whole lines, and the audit lines are there.
    let mut text = Vec::new();
    std::fs::File::from(read).read_to_end(&mut text)?;
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("warden::audit"), "no audit line in:\n{text}");
    assert!(text.ends_with('\n'), "a line was cut");
    Ok(())
}

#[test]
fn an_invalid_log_level_is_a_usage_error() -> anyhow::Result<()> {
    for bad in ["bogus", "inf", "warden=loud", "info,"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wardend"))
            .args(["--log-level", bad, "--check-config"])
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: stderr: {err}");
        assert!(err.contains("invalid --log-level"), "{bad}: stderr: {err}");
        assert!(out.stdout.is_empty());
    }
    for good in ["debug", "WARN", "info,warden=debug"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wardend"))
            .args(["--log-level", good, "--check-config"])
            .output()?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{good}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
