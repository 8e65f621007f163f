//! The test hooks exist only in a wardend built with `--features
//! test-hooks`: a plain build has none of their code and ignores the
//! variables that turn them on.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use warden_testkit::{config_text, BrokerProcess, RawConn, TestDir};

use crate::RULES;

/// A new connection's hello and ping, answered within `bound`.
fn ping_within(socket: &std::path::Path, bound: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut c = RawConn::connect(socket)?;
    c.stream.set_read_timeout(Some(bound))?;
    c.hello()?;
    let r = c.call(1, "warden.ping", json!(null))?;
    anyhow::ensure!(r["result"]["pong"] == true, "{r}");
    let took = start.elapsed();
    anyhow::ensure!(took < bound, "the ping took {took:?}");
    Ok(took)
}

#[test]
fn plain_wardend_ignores_test_hooks() -> anyhow::Result<()> {
    let Some(wardend) = warden_testkit::plain_release_wardend("plain_wardend_ignores_test_hooks")
    else {
        return Ok(());
    };
    // The hooks' code is not in the binary at all (the name of the
    // variable that would turn them on included).
    let image = std::fs::read(&wardend)?;
    assert!(
        !image.windows(18).any(|w| w == b"WARDEND_TEST_HOOKS"),
        "{} mentions WARDEND_TEST_HOOKS: built with the test-hooks feature?",
        wardend.display()
    );

    let dir = TestDir::new("plain-hooks")?;
    // Everyone may call the test names: what answers is the broker's
    // method table, not the policy.
    let rules = format!(
        "{RULES}\n[[rule]]\nactions = [\"call\"]\nnames = [\"test.**\", \"warden.test.**\"]\neveryone = true\n"
    );
    let mut broker = BrokerProcess::start_program(
        &wardend,
        &dir,
        &config_text(&dir, &rules),
        &[
            ("WARDEND_TEST_HOOKS", "1".as_ref()),
            ("WARDEND_TEST_LEARN_ATTACH_DELAY_MS", "1500".as_ref()),
        ],
    )?;
    let mut c = RawConn::connect(broker.socket())?;
    c.hello()?;

    // The broker's panic hook is an ordinary unknown name: an error
    // answer, and the broker goes on (with the hooks it exits with 70).
    let r = c.call(1, warden::TEST_PANIC_METHOD, json!(null))?;
    assert_eq!(r["kind"], "error", "{r}");
    let code = r["error"]["code"].as_str().unwrap_or_default();
    assert!(
        code == "unknown_method" || code == "denied",
        "{}: {r}",
        warden::TEST_PANIC_METHOD
    );
    // The panicking handler is not registered.
    let r = c.call(2, "test.panic_in_handler", json!(null))?;
    assert_eq!(r["error"]["code"], "unknown_method", "{r}");
    assert_eq!(
        c.call(3, "warden.ping", json!(null))?["result"]["pong"],
        true
    );
    assert!(broker.try_wait()?.is_none(), "the broker exited");

    // SIGUSR1 (which would stall the accept loop for 5 s with the hooks)
    // is caught and ignored: it neither kills the broker (its default
    // action) nor stalls it. New connections are answered at once.
    broker.signal(Signal::SIGUSR1)?;
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        broker.try_wait()?.is_none(),
        "SIGUSR1 stopped the broker:\n{}",
        broker.log()
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        ping_within(broker.socket(), Duration::from_secs(1))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    // The connection from before is served as well.
    assert_eq!(
        c.call(4, "warden.ping", json!(null))?["result"]["pong"],
        true
    );

    broker.signal(Signal::SIGTERM)?;
    let status = broker.wait_exit(Duration::from_secs(20))?;
    assert_eq!(
        status.code(),
        Some(0),
        "wardend exited with {status}:\n{}",
        broker.log()
    );
    Ok(())
}
