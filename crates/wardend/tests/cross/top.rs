//! `wardenctl top` in a real terminal (tmux) and piped.

use std::process::Command;
use std::time::{Duration, Instant};

use warden_testkit::{bin_path, config_text, in_ci, wardenctl, BrokerProcess, TestDir};

use crate::{provider, stdout, users, RULES};

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
