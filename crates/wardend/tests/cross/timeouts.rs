//! `wardenctl` never waits forever, and says why it stopped with its own
//! exit status: 4 when the broker does not answer within `--timeout`, 5
//! when the broker revokes what the command was using.

use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use warden_testkit::{
    bin_path, command_as, config_text, wardenctl, BrokerProcess, RawConn, TestDir,
};

use crate::{provider, stderr, users, wait_in_flight, RULES};

/// A server on `path` that accepts every connection and never writes a
/// byte (a hung broker, or something else listening there).
fn silent_server(path: &std::path::Path) -> anyhow::Result<()> {
    let listener = UnixListener::bind(path)?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            match conn {
                Ok(c) => held.push(c),
                Err(_) => return,
            }
        }
    });
    Ok(())
}

/// Runs `cmd`, returning its output and how long it took; kills it past
/// `bound`.
fn timed(cmd: &mut Command, bound: Duration) -> anyhow::Result<(std::process::Output, Duration)> {
    let start = Instant::now();
    let out = warden_testkit::output_with_timeout(cmd, bound)?;
    Ok((out, start.elapsed()))
}

#[test]
fn a_server_that_never_answers_the_hello_times_out_with_exit_4() -> anyhow::Result<()> {
    let dir = TestDir::new("silent")?;
    let socket = dir.path().join("silent.sock");
    silent_server(&socket)?;
    for args in [
        &["ping"][..],
        &["--json", "whoami"],
        &["call", "warden.echo", "{}"],
    ] {
        let (out, took) = timed(
            Command::new(bin_path("wardenctl"))
                .arg("--socket")
                .arg(&socket)
                .args(["--timeout", "1s"])
                .args(args),
            Duration::from_secs(10),
        )?;
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", stderr(&out));
        assert!(
            took >= Duration::from_secs(1),
            "{args:?}: gave up after {took:?}"
        );
        let err = stderr(&out);
        assert!(
            err.contains("no welcome") && err.contains("--timeout"),
            "{args:?}: {err}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_provider_that_never_answers_times_out_each_call_and_the_call_is_cancelled(
) -> anyhow::Result<()> {
    let (alice, bob, _) =
        users("a_provider_that_never_answers_times_out_each_call_and_the_call_is_cancelled");
    let dir = TestDir::new("calltimeout")?;
    let limits = "[limits]\ncall_timeout_ms = 600000\n";
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &format!("{limits}{RULES}")))?;
    let mut p = provider(&alice, broker.socket(), "svc.stuck", 600_000)?;
    let start = Instant::now();
    let out = wardenctl(
        Some(&bob),
        broker.socket(),
        &["--timeout", "1500ms", "call", "svc.stuck"],
    )?;
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        took >= Duration::from_millis(1500),
        "gave up after {took:?}"
    );
    assert!(stderr(&out).contains("no answer"), "{}", stderr(&out));
    // wardenctl cancelled the call on its way out: the broker no longer
    // holds it for the provider.
    wait_in_flight(broker.socket(), 0)?;
    p.kill()?;
    p.wait()?;
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn by_default_a_slow_provider_yields_the_brokers_timeout_error() -> anyhow::Result<()> {
    let (alice, bob, _) = users("by_default_a_slow_provider_yields_the_brokers_timeout_error");
    let dir = TestDir::new("brokertimeout")?;
    let limits = "[limits]\ncall_timeout_ms = 1000\n";
    let broker = BrokerProcess::start(&dir, &config_text(&dir, &format!("{limits}{RULES}")))?;
    let mut p = provider(&alice, broker.socket(), "svc.slow", 600_000)?;
    let out = wardenctl(Some(&bob), broker.socket(), &["call", "svc.slow"])?;
    // The broker's answer (exit 1, code timeout), not the client's (4).
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: timeout:"),
        "{}",
        stderr(&out)
    );
    p.kill()?;
    p.wait()?;
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_subscription_revoked_by_a_reload_exits_5() -> anyhow::Result<()> {
    let (_, bob, _) = users("a_subscription_revoked_by_a_reload_exits_5");
    let dir = TestDir::new("revoked")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let sub = command_as(&bob, &bin_path("wardenctl"))
        .arg("--socket")
        .arg(broker.socket())
        .args(["--json", "subscribe", "news.a"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Wait until the broker has the subscription.
    let mut admin = RawConn::connect(broker.socket())?;
    admin.hello()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in 1.. {
        let s = admin.call(id, "warden.status", json!(null))?;
        if s["result"]["topics"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "never subscribed: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let without_pubsub = crate::rules_without(&["subscribe"]);
    std::fs::write(
        dir.path().join("warden.toml"),
        config_text(&dir, &without_pubsub),
    )?;
    broker.signal(nix::sys::signal::Signal::SIGHUP)?;
    let mut sub = sub;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sub.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = sub.kill();
            anyhow::bail!("wardenctl subscribe kept running after its subscription was revoked");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = sub.wait_with_output()?;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("revoked the subscription to news.a"),
        "{}",
        stderr(&out)
    );
    // Under --json, the last line on stdout says so too.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("no JSON error object ({e}): {text:?}"))?;
    assert_eq!(last["error"]["code"], "revoked", "{last}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_caller_the_socket_mode_shuts_out_is_told_which_group_to_join() -> anyhow::Result<()> {
    let (alice, bob, _) = users("a_caller_the_socket_mode_shuts_out_is_told_which_group_to_join");
    let dir = TestDir::new("sockgroup")?;
    let config = config_text(&dir, RULES).replace(
        "socket_mode = \"0666\"",
        "socket_mode = \"0660\"\nsocket_group = \"wdn_grp\"",
    );
    let broker = BrokerProcess::start(&dir, &config)?;
    // bob is not in wdn_grp: the kernel refuses his connect (EACCES).
    let out = wardenctl(Some(&bob), broker.socket(), &["ping"])?;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    for needle in [
        "mode 0660",
        "wdn_grp",
        "sudo usermod -aG wdn_grp $USER",
        "log in again",
    ] {
        assert!(err.contains(needle), "{needle:?} missing: {err}");
    }
    // alice is: the same command works for her.
    let out = wardenctl(Some(&alice), broker.socket(), &["ping"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    Ok(())
}
