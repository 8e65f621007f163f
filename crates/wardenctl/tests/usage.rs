//! Usage errors `wardenctl` refuses before doing anything: clap's message
//! on stderr and exit status 2, without trying to reach a broker.

use std::process::{Command, Output};
use std::time::Duration;

use warden_testkit::output_with_timeout;

/// Runs the built `wardenctl` against a socket that does not exist: a
/// command that got past argument parsing would fail to connect (exit 3).
fn ctl(args: &[&str]) -> anyhow::Result<Output> {
    output_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_wardenctl"))
            .args(["--socket", "/nonexistent/warden-usage-test.sock"])
            .args(args),
        Duration::from_secs(30),
    )
}

fn usage_error(args: &[&str]) -> anyhow::Result<String> {
    let out = ctl(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "wardenctl {args:?}: {:?}\n{stderr}",
        out.status
    );
    assert!(
        out.stdout.is_empty(),
        "wardenctl {args:?} printed on stdout"
    );
    assert!(stderr.starts_with("error: "), "not a clap error: {stderr}");
    assert!(
        !stderr.contains("cannot connect"),
        "it tried to connect: {stderr}"
    );
    Ok(stderr)
}

#[test]
fn learn_duration_without_pid_is_a_usage_error() -> anyhow::Result<()> {
    // Alone, and with a command (which --pid conflicts with).
    for args in [
        &["learn", "--duration", "5s"][..],
        &["learn", "--duration", "5s", "--", "true"][..],
    ] {
        let stderr = usage_error(args)?;
        assert!(
            stderr.contains("--duration") && stderr.contains("--pid"),
            "wardenctl {args:?} does not name both flags: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn learn_without_a_command_or_pid_is_a_usage_error() -> anyhow::Result<()> {
    let stderr = usage_error(&["learn"])?;
    assert!(
        stderr.contains("--pid <PID>") && stderr.contains("CMD"),
        "the message names neither a command nor --pid: {stderr}"
    );
    Ok(())
}

#[test]
fn learn_with_a_pid_or_a_command_gets_past_parsing() -> anyhow::Result<()> {
    // Both reach the (missing) broker: exit 3, not a usage error.
    for args in [
        &["learn", "--pid", "1", "--duration", "5s"][..],
        &["learn", "--", "true"][..],
    ] {
        let out = ctl(args)?;
        assert_eq!(out.status.code(), Some(3), "wardenctl {args:?}: {out:?}");
    }
    Ok(())
}

#[test]
fn a_missing_broker_says_how_to_start_it() -> anyhow::Result<()> {
    let out = ctl(&["ping"])?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "/nonexistent/warden-usage-test.sock",
        "is wardend running?",
        "systemctl start warden.socket",
        "--socket",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
    }
    Ok(())
}

#[test]
fn under_json_a_connection_failure_prints_the_error_object() -> anyhow::Result<()> {
    let out = ctl(&["--json", "ping"])?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| anyhow::anyhow!("no JSON on stdout ({e}): {stdout:?}"))?;
    assert_eq!(v["error"]["code"], "connect_failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/nonexistent/warden-usage-test.sock")),
        "{v}"
    );
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    Ok(())
}

#[test]
fn call_params_from_a_bad_file_or_stdin_are_usage_errors_naming_it() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("wdn-usage-params-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let missing = dir.join("missing.json");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"a\": ")?;
    for (arg, needle) in [
        (
            format!("@{}", missing.display()),
            missing.display().to_string(),
        ),
        (format!("@{}", bad.display()), bad.display().to_string()),
        // Standard input is /dev/null here: empty, which is not JSON.
        ("-".to_owned(), "standard input".to_owned()),
    ] {
        let stderr = usage_error(&["call", "svc.x", &arg])?;
        assert!(
            stderr.contains(&needle),
            "{arg}: {needle:?} missing: {stderr}"
        );
        assert_eq!(
            stderr.matches(&needle).count(),
            1,
            "{arg}: named more than once: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn learn_profile_formats_need_output_since_stdout_is_the_commands() -> anyhow::Result<()> {
    for format in ["landlock-json", "systemd"] {
        let stderr = usage_error(&["learn", "--format", format, "--", "true"])?;
        assert!(
            stderr.contains("--output <FILE>"),
            "--format {format} without --output: {stderr}"
        );
    }
    // The old flag is gone, with a usage error rather than a silent change.
    usage_error(&["learn", "--save-profile", "p.json", "--", "true"])?;
    Ok(())
}
