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
    // The configuration, and the manifest that remembers install created
    // it (so a later --purge removes it).
    let kept: BTreeSet<PathBuf> = [
        "etc",
        "etc/warden",
        "etc/warden/warden.toml",
        "var",
        "var/lib",
        "var/lib/warden-install",
        "var/lib/warden-install/manifest.json",
    ]
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

    // `uninstall --purge` after `uninstall` still removes the
    // configuration install created: back to before.
    let out = ctl(&["uninstall", "--root", &r, "--purge"])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("etc/warden/warden.toml"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(tree(&root), before, "uninstall then uninstall --purge");

    // And --purge right away does too.
    let out = ctl(&["install", "--root", &r, "--wardend", "/usr/bin/wardend"])?;
    assert_eq!(out.status.code(), Some(0));
    let out = ctl(&["uninstall", "--root", &r, "--purge"])?;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree(&root), before, "--purge leaves nothing behind");
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[test]
fn the_installed_config_gives_the_service_account_no_admin_rights() -> anyhow::Result<()> {
    let Some(root) = offline_root("owner")? else {
        return Ok(());
    };
    let r = root.display().to_string();
    let out = ctl(&["install", "--root", &r, "--wardend", "/usr/bin/wardend"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(root.join("etc/warden/warden.toml"))?;
    assert!(text.contains("\nowner_is_admin = false\n"), "{text}");
    let config = warden_policy::Config::parse(
        &text,
        "warden.toml",
        &warden_policy::StaticResolver::default(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?
    .admit_owner(999);
    let service = warden_policy::Caller {
        uid: 999,
        gid: 999,
        groups: vec![],
        host: None,
        role: None,
    };
    assert!(!config.policy.is_admin(&service));
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

#[test]
fn install_config_over_an_installed_one_is_validated_and_refused_unless_forced(
) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("wdn-install-reconf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let r = root.display().to_string();
    let installed = root.join("etc/warden/warden.toml");
    let old_copy = root.join("etc/warden/warden.toml.wardenctl-old");
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let install = |extra: &[&str]| {
        let mut args = vec!["install", "--root", &r, "--wardend", "/usr/bin/wardend"];
        args.extend_from_slice(extra);
        ctl(&args)
    };

    // An invalid --config on a fresh root: the error names that file,
    // once, and nothing is installed.
    let bad = std::env::temp_dir().join(format!("wdn-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "[broker]\nsocket = 5\n")?;
    let bad_s = bad.display().to_string();
    let out = install(&["--config", &bad_s])?;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(stderr(&out).matches(&bad_s).count(), 1, "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("etc/warden/warden.toml"),
        "{}",
        stderr(&out)
    );
    assert!(!installed.exists());

    let out = install(&[])?;
    assert_ok(&out, "install");
    let default = std::fs::read_to_string(&installed)?;

    // A different --config over it: refused, saying how to go on, and the
    // installed file is untouched (no "wrote" for it).
    let new = root.join("new.toml");
    let new_text = "[broker]\nsocket = \"/run/warden/warden.sock\"\n\n[learn]\nenabled = false\n";
    std::fs::write(&new, new_text)?;
    let new_s = new.display().to_string();
    let out = install(&["--config", &new_s])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for needle in ["refusing to replace", &new_s, "--force", "wardenctl-old"] {
        assert!(
            stderr(&out).contains(needle),
            "{needle:?} missing: {}",
            stderr(&out)
        );
    }
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&format!("wrote {}", installed.display())),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&installed)?, default);

    // An invalid --config over it: refused too, naming that file once.
    let out = install(&["--config", &bad_s])?;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(stderr(&out).matches(&bad_s).count(), 1, "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&installed)?, default);

    // --force replaces it and keeps the old one.
    let out = install(&["--config", &new_s, "--force"])?;
    assert_ok(&out, "install --force");
    assert_eq!(std::fs::read_to_string(&installed)?, new_text);
    assert_eq!(std::fs::read_to_string(&old_copy)?, default);
    assert!(stdout_of(&out).contains("wardenctl-old"), "{}", text(&out));
    // The unit follows the new configuration (learning mode off: no
    // capabilities).
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/warden.service"))?;
    assert!(unit.contains("CapabilityBoundingSet=\n"), "{unit}");

    // The same --config again: nothing to refuse.
    let out = install(&["--config", &new_s])?;
    assert_ok(&out, "install with the installed --config");

    // --force needs --config.
    let out = install(&["--force"])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // uninstall, then uninstall --purge: the configuration goes; the old
    // copy is the operator's and stays.
    assert_ok(&ctl(&["uninstall", "--root", &r])?, "uninstall");
    assert!(installed.exists());
    assert_ok(
        &ctl(&["uninstall", "--root", &r, "--purge"])?,
        "uninstall --purge",
    );
    assert!(!installed.exists());
    assert!(old_copy.exists());
    let _ = std::fs::remove_file(&bad);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
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
fn child_hosts_add_exactly_what_spawning_needs() -> anyhow::Result<()> {
    let Some((score, caps, unit)) = install_config(
        "hosts",
        "[broker]\nsocket = \"/run/warden/warden.sock\"\n\n[learn]\nenabled = false\n\n\
         [[host]]\nname = \"agent\"\nuser = \"nobody\"\n\
         modules = [\"/usr/lib/warden/modules/libwarden_example_echo.so\"]\n\n\
         [[rule]]\nactions = [\"provide\"]\nnames = [\"example.**\"]\nhosts = [\"agent\"]\n",
    )?
    else {
        return Ok(());
    };
    assert_eq!(caps, ["CAP_SETUID", "CAP_SETGID", "CAP_KILL"]);
    for line in [
        "AmbientCapabilities=CAP_SETUID CAP_SETGID CAP_KILL",
        "# CAP_SETUID: child hosts",
        "Delegate=yes",
        "ProtectControlGroups=no",
        "SystemCallFilter=@system-service @setuid landlock_create_ruleset",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(line), "{line:?} missing: {unit}");
    }
    assert!(!unit.contains("ProtectControlGroups=yes"), "{unit}");
    assert!(
        !unit.contains("~@privileged"),
        "setuid is in @privileged: {unit}"
    );
    // Reported, and kept from growing unnoticed.
    assert!(score <= 2.0, "exposure {score} > 2.0");
    assert!(unit.contains("ProtectHome=yes\n"), "{unit}");
    eprintln!("exposure with a system host: {score}");
    Ok(())
}

#[test]
fn session_hosts_see_run_user_and_nothing_of_the_homes() -> anyhow::Result<()> {
    let Some((score, _, unit)) = install_config(
        "session-hosts",
        "[broker]\nsocket = \"/run/warden/warden.sock\"\n\n[learn]\nenabled = false\n\n\
         [[host]]\nname = \"agent\"\nscope = \"session\"\n\
         modules = [\"/usr/lib/warden/modules/libwarden_example_echo.so\"]\n\n\
         [[rule]]\nactions = [\"provide\"]\nnames = [\"example.**\"]\nhosts = [\"agent\"]\n",
    )?
    else {
        return Ok(());
    };
    for line in [
        "ProtectHome=tmpfs\n",
        "BindPaths=-/run/user\n",
        "Delegate=yes",
    ] {
        assert!(unit.contains(line), "{line:?} missing: {unit}");
    }
    assert!(!unit.contains("ProtectHome=yes\n"), "{unit}");
    eprintln!("exposure with a session host: {score}");
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

// ---------------------------------------------------------------------------
// Attacks on install and uninstall (issue 11, items 2 and 3). Each runs the
// real wardenctl as root against a root that a test user (the attacker:
// "the compromised service account", or whoever prepared the image) could
// write to.

/// The files install writes besides the configuration and the manifest.
const INSTALLED: [&str; 9] = [
    "etc/systemd/system/warden.service",
    "etc/systemd/system/warden.socket",
    "etc/sysusers.d/warden.conf",
    "etc/tmpfiles.d/warden.conf",
    "usr/share/bash-completion/completions/wardenctl",
    "usr/share/zsh/vendor-completions/_wardenctl",
    "usr/share/fish/vendor_completions.d/wardenctl.fish",
    "usr/share/man/man1/wardenctl.1",
    "usr/share/man/man8/wardend.8",
];
const NEW_MANIFEST: &str = "var/lib/warden-install/manifest.json";
const OLD_MANIFEST: &str = "var/lib/warden/install-manifest.json";

/// A fresh root-owned 0755 directory under the temp dir.
fn fresh_dir(tag: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let d = std::env::temp_dir().join(format!("wdn-attack-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d)?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    Ok(d)
}

fn chmod(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn mode_of(p: &Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::symlink_metadata(p)?.mode() & 0o7777)
}

/// A 0600 file owned by `user`, with `text`.
fn victim_file(p: &Path, user: &warden_testkit::TestUser, text: &str) -> anyhow::Result<()> {
    std::fs::write(p, text)?;
    std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid))?;
    chmod(p, 0o600)?;
    Ok(())
}

/// Runs `sh -c script` as `user` (arguments are `$1`, `$2`, ...).
fn sh_as(
    user: &warden_testkit::TestUser,
    script: &str,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let mut cmd = warden_testkit::command_as(user, Path::new("/bin/sh"));
    cmd.arg("-c").arg(script).arg("sh").args(args);
    output_with_timeout(&mut cmd, Duration::from_secs(30))
}

fn chown_tree(p: &Path, user: &warden_testkit::TestUser) -> anyhow::Result<()> {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.uid, user.gid))
        .arg(p)
        .status()?;
    anyhow::ensure!(st.success(), "chown -R {}", p.display());
    Ok(())
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &std::process::Output, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
}

/// Asserts wardenctl refused (exit 1) and its message contains every needle.
fn assert_refused(o: &std::process::Output, what: &str, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: expected a refusal: {err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "{what}: the message must name {n:?}: {err}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn a_tampered_manifest_cannot_make_uninstall_delete_outside_the_root() -> anyhow::Result<()> {
    warden_testkit::require_root(
        "a_tampered_manifest_cannot_make_uninstall_delete_outside_the_root",
    );
    let (_, bob, _) = warden_testkit::test_users()?;
    let base = fresh_dir("manifest")?;
    let root = base.join("root");
    std::fs::create_dir(&root)?;
    chmod(&root, 0o755)?;
    let r = root.display().to_string();
    // Root's files outside the install root.
    let victim = base.join("victim");
    std::fs::write(&victim, "root's file")?;
    chmod(&victim, 0o600)?;
    let abs_victim = base.join("abs-victim");
    std::fs::write(&abs_victim, "root's other file")?;
    let victim_dir = base.join("victim-dir");
    std::fs::create_dir(&victim_dir)?;
    let out = ctl(&["install", "--root", &r, "--wardend", "/usr/bin/wardend"])?;
    assert_ok(&out, "install");

    // systemd-tmpfiles and StateDirectory= hand var/lib/warden to the
    // service account; the compromised broker writes a manifest there.
    let state = root.join("var/lib/warden");
    std::fs::create_dir_all(&state)?;
    std::os::unix::fs::chown(&state, Some(bob.uid), Some(bob.gid))?;
    chmod(&state, 0o750)?;
    let evil = serde_json::json!({
        "files": ["etc/systemd/system/warden.service", "../victim", abs_victim.display().to_string()],
        "dirs": ["../victim-dir"],
        "config_created": false,
    })
    .to_string();
    let old = root.join(OLD_MANIFEST);
    let w = sh_as(
        &bob,
        "rm -f \"$1\" && printf '%s' \"$2\" > \"$1\"",
        &[&old.display().to_string(), &evil],
    )?;
    assert_ok(&w, "the service account writes the old-place manifest");
    let out = ctl(&["uninstall", "--root", &r])?;
    assert!(victim.exists(), "uninstall deleted a file outside the root");
    assert!(abs_victim.exists(), "uninstall deleted an absolute path");
    assert!(
        victim_dir.exists(),
        "uninstall removed a directory outside the root"
    );
    assert_refused(
        &out,
        "uninstall with a tampered old-place manifest",
        &["../victim"],
    );
    assert!(
        root.join(INSTALLED[0]).exists(),
        "a refused uninstall removes nothing"
    );

    // The new place is root's: the service account cannot write it.
    let new = root.join(NEW_MANIFEST);
    let w = sh_as(
        &bob,
        "printf '%s' \"$2\" > \"$1\" || rm -f \"$1\"",
        &[&new.display().to_string(), &evil],
    )?;
    assert_ne!(
        w.status.code(),
        Some(0),
        "the service account wrote the new manifest"
    );
    assert!(new.exists());
    std::fs::remove_file(&old)?;

    // Even a manifest at the new place is refused unless it is root's,
    // not group/other-writable, and lists only the names install uses.
    let good = std::fs::read_to_string(&new)?;
    std::os::unix::fs::chown(&new, Some(bob.uid), None)?;
    let out = ctl(&["uninstall", "--root", &r])?;
    assert_refused(
        &out,
        "a manifest owned by another uid",
        &[NEW_MANIFEST, "owner uid"],
    );
    std::os::unix::fs::chown(&new, Some(0), None)?;
    for mode in [0o666, 0o664, 0o646] {
        chmod(&new, mode)?;
        let out = ctl(&["uninstall", "--root", &r])?;
        assert_refused(
            &out,
            "a group/other-writable manifest",
            &[&format!("{mode:04o}")],
        );
    }
    chmod(&new, 0o644)?;
    for bad in [
        "../victim",
        abs_victim.display().to_string().as_str(),
        "etc/passwd",
        "etc/systemd/../../../victim",
    ] {
        std::fs::write(
            &new,
            serde_json::json!({"files": [bad], "dirs": [], "config_created": false}).to_string(),
        )?;
        let out = ctl(&["uninstall", "--root", &r])?;
        assert_refused(&out, "a manifest entry install does not create", &[bad]);
    }
    std::fs::write(
        &new,
        serde_json::json!({"files": [], "dirs": ["../victim-dir"], "config_created": false})
            .to_string(),
    )?;
    let out = ctl(&["uninstall", "--root", &r])?;
    assert_refused(
        &out,
        "a manifest directory install does not create",
        &["../victim-dir"],
    );
    assert!(victim.exists() && abs_victim.exists() && victim_dir.exists());

    // The genuine manifest: uninstall works.
    std::fs::write(&new, &good)?;
    let out = ctl(&["uninstall", "--root", &r])?;
    assert_ok(&out, "uninstall with the genuine manifest");
    assert!(!root.join(INSTALLED[0]).exists());

    // An install of the old layout (manifest at the old place, listing
    // only names install uses) still uninstalls, old manifest included.
    let out = ctl(&["install", "--root", &r, "--wardend", "/usr/bin/wardend"])?;
    assert_ok(&out, "install again");
    let good = std::fs::read_to_string(&new)?;
    std::fs::remove_file(&new)?;
    let w = sh_as(
        &bob,
        "printf '%s' \"$2\" > \"$1\"",
        &[&old.display().to_string(), &good],
    )?;
    assert_ok(&w, "an old-layout manifest");
    let out = ctl(&["uninstall", "--root", &r])?;
    assert_ok(&out, "uninstall with an all-known old-place manifest");
    assert!(!old.exists(), "the old manifest is removed too");
    assert!(!root.join(INSTALLED[0]).exists());
    assert!(victim.exists() && abs_victim.exists() && victim_dir.exists());
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn install_does_not_follow_a_symlink_planted_at_its_temporary_file() -> anyhow::Result<()> {
    warden_testkit::require_root("install_does_not_follow_a_symlink_planted_at_its_temporary_file");
    let (_, bob, _) = warden_testkit::test_users()?;
    let base = fresh_dir("tmpfile")?;
    let victim = base.join("victim");
    victim_file(&victim, &bob, "bob's secret")?;
    let created = base.join("created-by-root");
    // The attacker prepared the image: every directory install writes to
    // is theirs, with symlinks at the temporary names the old install
    // used and at the final names it creates.
    let root = base.join("root");
    for f in INSTALLED
        .iter()
        .chain(["etc/warden/x", "var/lib/warden-install/x"].iter())
    {
        if let Some(p) = Path::new(f).parent() {
            std::fs::create_dir_all(root.join(p))?;
        }
    }
    for f in INSTALLED {
        // (warden.service and warden.socket shared one temporary name.)
        match std::os::unix::fs::symlink(
            &victim,
            root.join(Path::new(f).with_extension("wardenctl-tmp")),
        ) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            r => r?,
        }
    }
    let config_link = root.join("etc/warden/warden.toml");
    let manifest_link = root.join(NEW_MANIFEST);
    std::os::unix::fs::symlink(&created, &config_link)?;
    std::os::unix::fs::symlink(&victim, &manifest_link)?;
    chown_tree(&root, &bob)?;
    let r = root.display().to_string();
    let untouched = |what: &str| -> anyhow::Result<()> {
        assert_eq!(
            std::fs::read_to_string(&victim)?,
            "bob's secret",
            "{what}: the victim was overwritten"
        );
        assert_eq!(mode_of(&victim)?, 0o600, "{what}: the victim was chmodded");
        assert!(
            !created.exists(),
            "{what}: root created a file through a symlink"
        );
        Ok(())
    };

    // A root another user owns is refused outright.
    let out = ctl(&["install", "--root", &r, "--wardend", "/usr/bin/wardend"])?;
    untouched("install into a user-owned root")?;
    assert_refused(
        &out,
        "install into a user-owned root",
        &[&r, "--allow-insecure-root"],
    );

    // Allowed anyway: symlinks at the final names install reads before it
    // writes them (the manifest, the configuration) are refused.
    let allowed = [
        "install",
        "--root",
        &r,
        "--wardend",
        "/usr/bin/wardend",
        "--allow-insecure-root",
    ];
    let out = ctl(&allowed)?;
    untouched("symlinked manifest")?;
    assert_refused(
        &out,
        "a symlink at the manifest",
        &[NEW_MANIFEST, "symlink"],
    );
    std::fs::remove_file(&manifest_link)?;
    let out = ctl(&allowed)?;
    untouched("symlinked config")?;
    assert_refused(
        &out,
        "a symlink at the configuration",
        &["etc/warden/warden.toml", "symlink"],
    );
    std::fs::remove_file(&config_link)?;

    // A symlinked parent (to the victim file, or to a directory elsewhere).
    let man8 = root.join("usr/share/man/man8");
    std::fs::remove_dir_all(&man8)?;
    std::os::unix::fs::symlink(&victim, &man8)?;
    let out = ctl(&[
        "install",
        "--root",
        &r,
        "--wardend",
        "/usr/bin/wardend",
        "--allow-insecure-root",
    ])?;
    assert_refused(
        &out,
        "a parent symlinked to a file",
        &["usr/share/man/man8", "symlink"],
    );
    untouched("symlinked parent")?;
    std::fs::remove_file(&man8)?;
    std::fs::create_dir(&man8)?;
    std::os::unix::fs::symlink(&victim, man8.join("wardend.wardenctl-tmp"))?;
    chown_tree(&man8, &bob)?;

    // With only the temporary-name symlinks left: install writes around
    // them, and leaves them (they are not its own).
    let out = ctl(&[
        "install",
        "--root",
        &r,
        "--wardend",
        "/usr/bin/wardend",
        "--allow-insecure-root",
    ])?;
    assert_ok(&out, "install around planted temporary-name symlinks");
    untouched("install")?;
    for f in INSTALLED {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(root.join(f))?;
        assert!(m.file_type().is_file(), "{f} is not a regular file");
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o644), "{f}");
        assert!(std::fs::symlink_metadata(
            root.join(Path::new(f).with_extension("wardenctl-tmp"))
        )?
        .file_type()
        .is_symlink());
    }
    let out = ctl(&["uninstall", "--root", &r, "--allow-insecure-root"])?;
    assert_ok(&out, "uninstall");
    untouched("uninstall")?;
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn install_refuses_a_root_writable_by_others() -> anyhow::Result<()> {
    warden_testkit::require_root("install_refuses_a_root_writable_by_others");
    let (_, bob, _) = warden_testkit::test_users()?;
    let root = fresh_dir("writable")?;
    let r = root.display().to_string();
    let install = |extra: &[&str]| {
        let mut a = vec!["install", "--root", &r, "--wardend", "/usr/bin/wardend"];
        a.extend_from_slice(extra);
        ctl(&a)
    };

    // The root itself, writable by others: refused, nothing written.
    chmod(&root, 0o777)?;
    let before = tree(&root);
    let out = install(&[])?;
    assert_refused(
        &out,
        "a 0777 root",
        &[&r, "0777", "uid 0", "--allow-insecure-root"],
    );
    assert_eq!(
        tree(&root),
        before,
        "nothing is written into a refused root"
    );

    // Allowed explicitly: install and uninstall go ahead.
    let out = install(&["--allow-insecure-root"])?;
    assert_ok(&out, "install --allow-insecure-root");
    let out = ctl(&["uninstall", "--root", &r])?;
    assert_refused(
        &out,
        "uninstall from a 0777 root",
        &[&r, "--allow-insecure-root"],
    );
    assert!(root.join(INSTALLED[0]).exists());
    let out = ctl(&[
        "uninstall",
        "--root",
        &r,
        "--allow-insecure-root",
        "--purge",
    ])?;
    assert_ok(&out, "uninstall --allow-insecure-root");
    assert_eq!(tree(&root), before);
    chmod(&root, 0o755)?;

    // A directory on the way: writable by others, group-writable by a
    // group other than root's, owned by another user.
    let etc = root.join("etc");
    std::fs::create_dir(&etc)?;
    chmod(&etc, 0o1777)?;
    let out = install(&[])?;
    assert_refused(
        &out,
        "a world-writable etc",
        &[&etc.display().to_string(), "1777"],
    );
    chmod(&etc, 0o755)?;
    let share = root.join("usr/share");
    std::fs::create_dir_all(&share)?;
    std::os::unix::fs::chown(&share, None, Some(bob.gid))?;
    chmod(&share, 0o775)?;
    let before = tree(&root);
    let out = install(&[])?;
    assert_refused(
        &out,
        "a usr/share writable by a user's group",
        &[
            &share.display().to_string(),
            "0775",
            &format!("gid {}", bob.gid),
        ],
    );
    assert_eq!(tree(&root), before);
    std::os::unix::fs::chown(&share, None, Some(0))?;
    let var = root.join("var");
    std::fs::create_dir(&var)?;
    std::os::unix::fs::chown(&var, Some(bob.uid), None)?;
    let out = install(&[])?;
    assert_refused(
        &out,
        "a var owned by a user",
        &[&var.display().to_string(), &format!("uid {}", bob.uid)],
    );
    std::os::unix::fs::chown(&var, Some(0), None)?;

    // Group-writable by root's group, and a real image's tmp/ and
    // var/tmp/ (1777, not on install's paths): fine.
    for t in ["tmp", "var/tmp"] {
        std::fs::create_dir(root.join(t))?;
        chmod(&root.join(t), 0o1777)?;
    }
    let out = install(&[])?;
    assert_ok(
        &out,
        "install with a root-group-writable usr/share and 1777 tmp dirs",
    );
    let out = ctl(&["uninstall", "--root", &r])?;
    assert_ok(&out, "uninstall");
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_symlinked_parent_directory_is_refused_not_followed() -> anyhow::Result<()> {
    warden_testkit::require_root("a_symlinked_parent_directory_is_refused_not_followed");
    let base = fresh_dir("symparent")?;
    let root = base.join("root");
    std::fs::create_dir_all(root.join("etc"))?;
    let r = root.display().to_string();
    let elsewhere = base.join("elsewhere");
    std::fs::create_dir(&elsewhere)?;

    // Installed, then etc/systemd swapped for a symlink to a copy
    // elsewhere: uninstall does not delete there.
    let out = ctl(&["install", "--root", &r, "--wardend", "/usr/bin/wardend"])?;
    assert_ok(&out, "install");
    let moved = elsewhere.join("systemd");
    std::fs::rename(root.join("etc/systemd"), &moved)?;
    std::os::unix::fs::symlink(&moved, root.join("etc/systemd"))?;
    let out = ctl(&["uninstall", "--root", &r])?;
    assert!(
        moved.join("system/warden.service").exists(),
        "uninstall deleted through the symlink"
    );
    assert!(moved.join("system/warden.socket").exists());
    assert_refused(
        &out,
        "uninstall through a symlinked etc/systemd",
        &["etc/systemd", "symlink"],
    );
    // Put back, and uninstall.
    std::fs::remove_file(root.join("etc/systemd"))?;
    std::fs::rename(&moved, root.join("etc/systemd"))?;
    let out = ctl(&["uninstall", "--root", &r, "--purge"])?;
    assert_ok(&out, "uninstall");

    // Install through a symlinked etc/systemd: refused, with or without
    // --allow-insecure-root, nothing written elsewhere.
    std::fs::create_dir_all(root.join("etc"))?;
    std::os::unix::fs::symlink(&elsewhere, root.join("etc/systemd"))?;
    for extra in [&[][..], &["--allow-insecure-root"][..]] {
        let mut a = vec!["install", "--root", &r, "--wardend", "/usr/bin/wardend"];
        a.extend_from_slice(extra);
        let out = ctl(&a)?;
        assert_eq!(
            tree(&elsewhere),
            BTreeSet::new(),
            "install wrote through the symlink"
        );
        assert_refused(
            &out,
            "install through a symlinked etc/systemd",
            &["etc/systemd", "symlink"],
        );
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
