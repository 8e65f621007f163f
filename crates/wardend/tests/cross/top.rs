//! `wardenctl top` in a real terminal (tmux) and piped.

use std::process::Command;
use std::time::{Duration, Instant};

use warden_testkit::{bin_path, config_text, in_ci, wardenctl, BrokerProcess, TestDir};

use crate::{provider, stderr, stdout, users, RULES};

#[test]
#[ignore = "needs root"]
fn top_shows_a_known_client_in_a_terminal_and_piped() -> anyhow::Result<()> {
    let (alice, _, _) = users("top_shows_a_known_client");
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(!in_ci(), "tmux is missing and CI=true forbids skipping");
        eprintln!("SKIP top_shows_a_known_client: tmux is not installed");
        return Ok(());
    }
    let dir = TestDir::new("top")?;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    // A known client: alice's provider process, which stays connected.
    let mut client = provider(&alice, broker.socket(), "svc.top", 0)?;
    let pid = client.id().to_string();

    // Piped: one plain table.
    let out = wardenctl(None, broker.socket(), &["top"])?;
    let table = stdout(&out);
    assert_eq!(out.status.code(), Some(0));
    let row = table
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == pid))
        .ok_or_else(|| anyhow::anyhow!("no row for pid {pid}:\n{table}"))?;
    assert!(row.contains(&format!("{}(wdn_alice)", alice.uid)), "{row}");
    assert!(!table.contains('\x1b'), "no escape codes when piped");

    // In a terminal: refreshing, and `q` quits.
    let session = format!("wdn-top-{}", std::process::id());
    let cmd = format!(
        "{} --socket {} top --interval 200ms",
        bin_path("wardenctl").display(),
        broker.socket().display()
    );
    let status = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "200",
            "-y",
            "40",
            &cmd,
        ])
        .status()?;
    anyhow::ensure!(status.success(), "tmux new-session failed");
    let deadline = Instant::now() + Duration::from_secs(15);
    let screen = loop {
        let cap = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()?;
        let screen = String::from_utf8_lossy(&cap.stdout).into_owned();
        if screen.contains(&pid) && screen.contains("CALLS/S") {
            break screen;
        }
        if Instant::now() > deadline {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &session])
                .status();
            anyhow::bail!("top never showed pid {pid}:\n{screen}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let row = screen
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == pid))
        .unwrap_or_default();
    assert!(
        row.contains(&format!("{}(wdn_alice)", alice.uid)),
        "{screen}"
    );
    Command::new("tmux")
        .args(["send-keys", "-t", &session, "q"])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new("tmux")
        .args(["has-session", "-t", &session])
        .output()?
        .status
        .success()
    {
        if Instant::now() > deadline {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &session])
                .status();
            anyhow::bail!("q did not quit top");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    client.kill()?;
    client.wait()?;
    Ok(())
}

/// The lines of the table that starts with the header `first` (up to the
/// first blank line).
fn table_lines<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| l.split_whitespace().next() != Some(first))
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

#[test]
#[ignore = "needs root"]
fn status_and_top_line_up_and_answer_json() -> anyhow::Result<()> {
    let (alice, _, _) = users("status_and_top_line_up_and_answer_json");
    let dir = TestDir::new("statuscols")?;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let broker = BrokerProcess::start(&dir, &config_text(&dir, RULES))?;
    let mut client = provider(
        &alice,
        broker.socket(),
        "svc.cols.a.rather.long.method.name",
        0,
    )?;
    let pid = client.id().to_string();
    // A call, so the method table has a row besides the unresolved one.
    let call = wardenctl(
        None,
        broker.socket(),
        &["call", "svc.cols.a.rather.long.method.name"],
    )?;
    assert_eq!(call.status.code(), Some(0), "{}", stderr(&call));

    // `status`: in each table, the last (right-aligned) column ends at
    // the same place on every line, the header's included.
    let out = wardenctl(None, broker.socket(), &["status"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for header in ["METHOD", "ID"] {
        let lines = table_lines(&text, header);
        assert!(lines.len() >= 2, "no {header} table:\n{text}");
        assert!(
            lines.iter().all(|l| l.len() == lines[0].len()),
            "the {header} table's columns do not line up:\n{text}"
        );
    }
    assert!(
        table_lines(&text, "ID")
            .iter()
            .any(|l| l.split_whitespace().any(|w| w == pid)),
        "no row for pid {pid}:\n{text}"
    );

    // `status --json`: when each connection opened, and for how long.
    let out = wardenctl(None, broker.socket(), &["--json", "status"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let conns = v["connection_list"].as_array().cloned().unwrap_or_default();
    let mine = conns
        .iter()
        .find(|c| c["pid"].as_u64() == Some(u64::from(client.id())))
        .ok_or_else(|| anyhow::anyhow!("no connection of pid {pid}: {v}"))?;
    let at = mine["connected_at_unix_ms"].as_u64().unwrap_or(0);
    assert!(
        before <= at && at <= after,
        "connected_at_unix_ms {at}: {mine}"
    );
    let for_ms = mine["connected_for_ms"].as_u64();
    assert!(for_ms.is_some_and(|f| f <= after - before), "{mine}");
    assert!(mine.get("connected_ms").is_none(), "{mine}");

    // `top --json`: one JSON object, not the text table.
    let out = wardenctl(None, broker.socket(), &["--json", "top"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("top --json printed no JSON ({e}):\n{}", stdout(&out)))?;
    let row = v["connection_list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["pid"].as_u64() == Some(u64::from(client.id())))
        .ok_or_else(|| anyhow::anyhow!("no row for pid {pid}: {v}"))?;
    assert_eq!(row["user"], format!("{}(wdn_alice)", alice.uid), "{row}");
    assert!(row["connected_for_ms"].is_u64(), "{row}");

    // `ping --json`: a whole number of microseconds.
    let out = wardenctl(None, broker.socket(), &["--json", "ping"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(v["rtt_us"].is_u64(), "{v}");
    assert!(v.get("rtt_ms").is_none(), "{v}");

    client.kill()?;
    client.wait()?;
    Ok(())
}
