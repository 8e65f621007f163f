//! `install`, `uninstall`, `dump` and `completions`: the commands that
//! work on files (and systemd), not on a running broker.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde_json::{json, Value};
use warden_client::Client;
use warden_service::{ConfigOutcome, SystemResolver};

use super::{connect_options, group_name, user_name};
use crate::cli::Cli;
use crate::error::Error;
use crate::manual;
use crate::output::Output;

/// Shell completions and man pages, generated from the clap definitions,
/// with the root-relative paths `install` puts them at.
pub fn generated_docs() -> Result<Vec<(String, String)>, String> {
    use clap_complete::Shell;
    let mut out = Vec::new();
    for (shell, path) in [
        (Shell::Bash, warden_service::BASH_COMPLETION_PATH),
        (Shell::Zsh, warden_service::ZSH_COMPLETION_PATH),
        (Shell::Fish, warden_service::FISH_COMPLETION_PATH),
    ] {
        let mut buf = Vec::new();
        let mut cmd = manual::visible(&manual::command());
        clap_complete::generate(shell, &mut cmd, "wardenctl", &mut buf);
        out.push((path.to_owned(), String::from_utf8_lossy(&buf).into_owned()));
    }
    let man = |cmd: clap::Command, section: &str| -> Result<String, String> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .section(section)
            .render(&mut buf)
            .map_err(|e| format!("rendering a man page: {e}"))?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    out.push((
        warden_service::WARDENCTL_MAN_PATH.to_owned(),
        manual::man_page(&[])?,
    ));
    out.push((
        warden_service::WARDEND_MAN_PATH.to_owned(),
        man(warden_service::wardend_cli::Args::command(), "8")?,
    ));
    Ok(out)
}

/// True when systemd runs the machine (`sd_booted`): then install and
/// uninstall also talk to it.
fn systemd_running(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").is_dir()
}

fn run_systemctl(args: &[&str]) -> Result<(), Error> {
    let status = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .map_err(|e| Error::io(format!("running systemctl {}", args.join(" ")), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "systemctl {} failed ({status})",
            args.join(" ")
        )))
    }
}

/// What `wardenctl install` was asked.
#[derive(Debug, Clone, Copy)]
pub struct InstallArgs<'a> {
    /// `--root`.
    pub root: &'a Path,
    /// `--config`.
    pub config: Option<&'a Path>,
    /// `--force`.
    pub force: bool,
    /// `--wardend`.
    pub wardend: Option<&'a Path>,
    /// `--allow-insecure-root`.
    pub allow_insecure_root: bool,
}

/// `wardenctl install`.
pub fn install(out: Output, args: &InstallArgs<'_>) -> Result<(), Error> {
    let InstallArgs {
        root,
        config,
        force,
        wardend,
        allow_insecure_root,
    } = *args;
    let wardend = match wardend {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("wardend")))
            .unwrap_or_else(|| PathBuf::from("/usr/bin/wardend")),
    };
    let opts = warden_service::InstallOptions {
        root: root.to_path_buf(),
        wardend,
        config: config.map(Path::to_path_buf),
        force,
        extra: generated_docs().map_err(Error::Operation)?,
        allow_insecure_root,
    };
    let done = warden_service::install(&opts, &SystemResolver)?;
    out.emit(&serde_json::to_value(&done).unwrap_or_default(), |_| {
        for f in &done.manifest.files {
            println!("wrote {}", root.join(f).display());
        }
        let conf = root.join(warden_service::CONFIG_PATH);
        let conf = conf.display();
        match &done.config {
            ConfigOutcome::Created => println!("wrote {conf}"),
            ConfigOutcome::Kept => println!(
                "kept {conf} (installed already; `install --config FILE --force` replaces it)"
            ),
            ConfigOutcome::Unchanged => println!("kept {conf} (the same as --config)"),
            ConfigOutcome::Replaced { backup } => {
                println!("wrote {conf} (the old one is kept as {})", backup.display());
            }
        }
    });
    if systemd_running(root) {
        run_systemctl(&["daemon-reload"])?;
        for cmd in [["systemd-sysusers", ""], ["systemd-tmpfiles", "--create"]] {
            let _ = std::process::Command::new(cmd[0])
                .args(cmd[1..].iter().filter(|a| !a.is_empty()))
                .status();
        }
        run_systemctl(&["enable", "--now", warden_service::SOCKET_UNIT])?;
    } else if !out.json {
        println!(
            "systemd is not running this system (or --root was given): run these on the target system:\n  \
             systemd-sysusers && systemd-tmpfiles --create\n  \
             systemctl daemon-reload\n  \
             systemctl enable --now {}",
            warden_service::SOCKET_UNIT
        );
    }
    Ok(())
}

/// `wardenctl uninstall`.
pub fn uninstall(
    out: Output,
    root: &Path,
    purge: bool,
    allow_insecure_root: bool,
) -> Result<(), Error> {
    let opts = warden_service::UninstallOptions {
        root: root.to_path_buf(),
        purge,
        allow_insecure_root,
    };
    // Refuse before stopping anything: a refused uninstall leaves
    // the service as it was.
    let installed = warden_service::uninstall_check(&opts)?;
    if installed && systemd_running(root) {
        let _ = run_systemctl(&[
            "disable",
            "--now",
            warden_service::SOCKET_UNIT,
            warden_service::SERVICE_UNIT,
        ]);
    }
    let removed = warden_service::uninstall(&opts)?;
    if systemd_running(root) {
        run_systemctl(&["daemon-reload"])?;
    }
    let list: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
    out.emit(&json!({ "removed": list }), |_| {
        if removed.is_empty() {
            println!(
                "nothing to remove: Warden is not installed under {}",
                root.display()
            );
        } else {
            for p in &removed {
                println!("removed {}", p.display());
            }
        }
    });
    Ok(())
}

/// `wardenctl completions SHELL`.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = manual::visible(&manual::command());
    clap_complete::generate(shell, &mut cmd, "wardenctl", &mut std::io::stdout());
}

/// `wardenctl dump`: what is installed, and the broker's status if it
/// answers.
pub fn dump(cli: &Cli, out: Output, root: &Path) -> Result<(), Error> {
    let state = warden_service::installed_state(root, &SystemResolver)?;
    let opts = connect_options(cli)?;
    let status = std::thread::scope(|_| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let c = Client::connect(opts).await.ok()?;
            c.call_json("warden.status", Value::Null).await.ok()
        })
    });
    let mut v = serde_json::to_value(&state).unwrap_or_default();
    v["broker"] = status.clone().unwrap_or(Value::Null);
    out.emit(&v, |_| {
        println!("installed: {}", if state.installed { "yes" } else { "no" });
        for p in &state.paths {
            match (&p.mode, p.uid, p.gid) {
                (Some(mode), Some(uid), Some(gid)) => println!(
                    "  {:<48} {mode} {}:{}",
                    p.path,
                    user_name(u64::from(uid)),
                    group_name(u64::from(gid))
                ),
                _ => println!("  {:<48} (absent)", p.path),
            }
        }
        println!(
            "service user {}: {}",
            warden_service::SERVICE_USER,
            if state.service_user_exists {
                "exists"
            } else {
                "not created yet (systemd-sysusers creates it)"
            }
        );
        println!(
            "configuration: {} (socket {}, mode {}, {} rules, learning mode {})",
            state.config_source,
            state.config.socket.as_deref().unwrap_or("default"),
            state.config.socket_mode,
            state.config.rules,
            if state.config.learn { "on" } else { "off" }
        );
        for w in &state.config.warnings {
            println!("  warning: {w}");
        }
        if state.capabilities.is_empty() {
            println!("capabilities: none (the core broker needs none; it runs as the warden user)");
        } else {
            for c in &state.capabilities {
                println!("capability {}: {}", c.name, c.reason);
            }
        }
        match &status {
            Some(s) => println!(
                "broker: {} up {:.1} s, {} connections",
                s["server"].as_str().unwrap_or("?"),
                s["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                s["connections"]
            ),
            None => println!("broker: not running, or its status is not open to you"),
        }
    });
    Ok(())
}
