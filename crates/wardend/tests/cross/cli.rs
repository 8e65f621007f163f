//! `wardenctl call` with its params from standard input (`-`) or a file
//! (`@FILE`), against a real broker.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warden_testkit::{bin_path, config_text, wardenctl, BrokerProcess, TestDir};

use crate::{stderr, stdout, users, RULES};

/// Runs `wardenctl --socket SOCKET ARGS` with `input` on its standard
/// input; kills it if it has not finished within 30 s.
fn with_stdin(
    socket: &std::path::Path,
    args: &[&str],
    input: &str,
) -> anyhow::Result<std::process::Output> {
    let mut child = Command::new(bin_path("wardenctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(input.as_bytes())?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("wardenctl {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child.wait_with_output()?)
}

#[test]
#[ignore = "needs root"]
fn call_reads_its_params_from_stdin_or_a_file() -> anyhow::Result<()> {
    let _ = users("call_reads_its_params_from_stdin_or_a_file");
    let dir = TestDir::new("callparams")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;

    let out = with_stdin(
        broker.socket(),
        &["--json", "call", "warden.echo", "-"],
        "{\"from\": \"stdin\", \"n\": [1, 2]}\n",
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v, serde_json::json!({"from": "stdin", "n": [1, 2]}));

    let file = dir.path().join("params.json");
    std::fs::write(&file, "{\"from\": \"file\"}")?;
    let at = format!("@{}", file.display());
    let out = wardenctl(
        None,
        broker.socket(),
        &["--json", "call", "warden.echo", &at],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v, serde_json::json!({"from": "file"}), "{}", stdout(&out));

    // Bad JSON on stdin: a usage error naming where it came from; the
    // broker is never asked.
    let out = with_stdin(broker.socket(), &["call", "warden.echo", "-"], "{nope")?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("standard input"), "{}", stderr(&out));
    Ok(())
}
