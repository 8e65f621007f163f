//! `wardenctl install/uninstall/dump` into an offline root, checked with
//! systemd's own offline tools.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use warden_testkit::{bin_path, in_ci, output_with_timeout};

fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.insert(
                p.strip_prefix(root)
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            );
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

fn ctl(args: &[&str]) -> anyhow::Result<std::process::Output> {
    output_with_timeout(
        Command::new(bin_path("wardenctl")).args(args),
        Duration::from_secs(60),
    )
}

/// A root with what `systemd-analyze verify --root` needs: the stock units,
/// the binaries the unit names.
fn offline_root(tag: &str) -> anyhow::Result<Option<PathBuf>> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !in_ci(),
            "systemd-analyze is missing and CI=true forbids skipping"
        );
        eprintln!("SKIP {tag}: systemd-analyze is not installed");
        return Ok(None);
    }
    let root = std::env::temp_dir().join(format!("wdn-install-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("usr/lib/systemd"))?;
    std::fs::create_dir_all(root.join("usr/bin"))?;
    let cp = Command::new("cp")
        .arg("-r")
        .arg("/usr/lib/systemd/system")
        .arg(root.join("usr/lib/systemd/"))
        .status()?;
    anyhow::ensure!(cp.success(), "copying the stock units");
    std::fs::copy("/usr/bin/kill", root.join("usr/bin/kill"))?;
    std::fs::copy(bin_path("wardend"), root.join("usr/bin/wardend"))?;
    Ok(Some(root))
}

#[test]
fn install_verifies_and_uninstall_removes_exactly_what_it_created() -> anyhow::Result<()> {
    let Some(root) = offline_root("verify")? else {
        return Ok(());
    };
    let r = root.display().to_string();
    let before = tree(&root);

    let out = ctl(&["install", "--root", &r, "--wardend", "/usr/bin/wardend"])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("systemctl enable --now warden.socket"));
    let service = root.join("etc/systemd/system/warden.service");
    let socket = root.join("etc/systemd/system/warden.socket");
    let config = std::fs::read_to_string(root.join("etc/warden/warden.toml"))?;
    assert!(
        config.contains("socket = \"/run/warden/warden.sock\""),
        "{config}"
    );

    let verify = output_with_timeout(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={r}"))
            .arg(&service)
            .arg(&socket),
        Duration::from_secs(60),
    )?;
    let err = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );

    let security = output_with_timeout(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(format!("--root={r}"))
            .arg("warden.service"),
        Duration::from_secs(60),
    )?;
    let text = String::from_utf8_lossy(&security.stdout);
    let err = String::from_utf8_lossy(&security.stderr);
    assert!(
        err.trim().is_empty(),
        "systemd-analyze security complained: {err}"
    );
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for warden.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no exposure score in: {text}"))?;
    println!("systemd-analyze security exposure (embedded default, learning mode on): {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0");

    // Completions and man pages, generated from the clap definitions.
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/wardenctl"))?;
    assert!(
        bash.contains("complete") && bash.contains("subscribe"),
        "{bash}"
    );
    assert!(root
        .join("usr/share/zsh/vendor-completions/_wardenctl")
        .exists());
    assert!(root
        .join("usr/share/fish/vendor_completions.d/wardenctl.fish")
        .exists());
    let man1 = std::fs::read_to_string(root.join("usr/share/man/man1/wardenctl.1"))?;
    assert!(
        man1.starts_with(".ie") || man1.contains(".TH wardenctl 1"),
        "{man1}"
    );
    let man8 = std::fs::read_to_string(root.join("usr/share/man/man8/wardend.8"))?;
    assert!(
        man8.contains(".TH wardend 8") && man8.contains("check\\-config"),
        "{man8}"
    );

    // dump --json after install.
    let dump = ctl(&["--json", "dump", "--root", &r])?;
    let v: Value = serde_json::from_slice(&dump.stdout)?;
    assert_eq!(v["installed"], true, "{v}");
    // The embedded default has learning mode on: exactly its three.
    let caps: Vec<&str> = v["capabilities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(caps, ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"], "{v}");
    let paths = v["paths"].as_array().cloned().unwrap_or_default();
    assert!(paths.iter().all(|p| p["exists"] == true), "{v}");

    // Install again: idempotent.
    let again = ctl(&["install", "--root", &r, "--wardend", "/usr/bin/wardend"])?;
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // An edited config survives uninstall without --purge.
    std::fs::write(
        root.join("etc/warden/warden.toml"),
        format!("{config}\n# edited\n"),
    )?;
    let out = ctl(&["uninstall", "--root", &r])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: BTreeSet<PathBuf> = tree(&root);
    let kept: BTreeSet<PathBuf> = ["etc", "etc/warden", "etc/warden/warden.toml"]
        .iter()
        .map(PathBuf::from)
        .collect();
    let expected: BTreeSet<PathBuf> = before.union(&kept).cloned().collect();
    assert_eq!(
        after, expected,
        "uninstall must remove exactly what install created"
    );
    assert!(std::fs::read_to_string(root.join("etc/warden/warden.toml"))?.contains("# edited"));

    // A second uninstall is a no-op.
    let out = ctl(&["uninstall", "--root", &r])?;
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to remove"));
    assert_eq!(tree(&root), expected);

    let dump = ctl(&["--json", "dump", "--root", &r])?;
    let v: Value = serde_json::from_slice(&dump.stdout)?;
    assert_eq!(v["installed"], false, "{v}");

    // --purge removes the configuration install created, back to before.
    std::fs::remove_file(root.join("etc/warden/warden.toml"))?;
    std::fs::remove_dir(root.join("etc/warden"))?;
    std::fs::remove_dir(root.join("etc"))?;
    assert_eq!(tree(&root), before);
    let out = ctl(&["install", "--root", &r, "--wardend", "/usr/bin/wardend"])?;
    assert_eq!(out.status.code(), Some(0));
    let out = ctl(&["uninstall", "--root", &r, "--purge"])?;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&root), before, "--purge leaves nothing behind");
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[test]
fn install_refuses_to_overwrite_what_it_did_not_create() -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("wdn-install-occupied-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("etc/systemd/system"))?;
    std::fs::write(root.join("etc/systemd/system/warden.service"), "mine")?;
    let out = ctl(&["install", "--root", &root.display().to_string()])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/systemd/system/warden.service"))?,
        "mine"
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// Installs `config` into a fresh root; checks the unit verifies, prints
/// the exposure, and returns (exposure, capability names, unit text).
fn install_config(tag: &str, config: &str) -> anyhow::Result<Option<(f64, Vec<String>, String)>> {
    let Some(root) = offline_root(tag)? else {
        return Ok(None);
    };
    let r = root.display().to_string();
    let conf = root.join("learn.toml");
    std::fs::write(&conf, config)?;
    let out = ctl(&[
        "install",
        "--root",
        &r,
        "--wardend",
        "/usr/bin/wardend",
        "--config",
        &conf.display().to_string(),
    ])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/warden.service"))?;
    let verify = output_with_timeout(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={r}"))
            .arg(root.join("etc/systemd/system/warden.service")),
        Duration::from_secs(60),
    )?;
    let err = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
    let security = output_with_timeout(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(format!("--root={r}"))
            .arg("warden.service"),
        Duration::from_secs(60),
    )?;
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for warden.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no exposure score in: {text}"))?;
    println!("systemd-analyze security exposure ({tag}): {score}");
    let dump = ctl(&["--json", "dump", "--root", &r])?;
    let v: Value = serde_json::from_slice(&dump.stdout)?;
    let caps: Vec<String> = v["capabilities"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&root);
    Ok(Some((score, caps, unit)))
}

#[test]
fn core_only_config_needs_no_capabilities() -> anyhow::Result<()> {
    let Some((score, caps, unit)) = install_config(
        "core",
        "[broker]\nsocket = \"/run/warden/warden.sock\"\n\n[learn]\nenabled = false\n",
    )?
    else {
        return Ok(());
    };
    assert!(caps.is_empty(), "{caps:?}");
    assert!(unit.contains("CapabilityBoundingSet=\n"), "{unit}");
    assert!(score <= 2.0, "exposure {score} > 2.0");
    Ok(())
}

#[test]
fn learning_mode_adds_exactly_the_capabilities_it_needs() -> anyhow::Result<()> {
    let Some((score, caps, unit)) = install_config(
        "learn",
        "[broker]\nsocket = \"/run/warden/warden.sock\"\n\n[learn]\nenabled = true\n\n[[rule]]\nactions = [\"call\"]\nnames = [\"learn.*\"]\neveryone = true\n",
    )?
    else {
        return Ok(());
    };
    assert_eq!(caps, ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"]);
    assert!(
        unit.contains("AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_SYS_PTRACE"),
        "{unit}"
    );
    assert!(
        unit.contains("# CAP_BPF: learning mode"),
        "each capability carries its reason: {unit}"
    );
    assert!(score <= 2.0, "exposure {score} > 2.0");
    Ok(())
}

#[test]
fn completions_are_printed_for_each_shell() -> anyhow::Result<()> {
    for shell in ["bash", "zsh", "fish"] {
        let out = ctl(&["completions", shell])?;
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("wardenctl") && text.contains("policy"),
            "{shell}: {text}"
        );
    }
    let out = ctl(&["completions", "tcsh"])?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    Ok(())
}
