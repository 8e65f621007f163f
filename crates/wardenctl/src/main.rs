//! `wardenctl`: the Warden command-line client.
//!
//! Thin by design: arguments → [`warden_client`] → output. Exit codes are
//! part of the interface (see `--help`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

mod learn;
mod term;
use serde_json::Value;
use warden_client::{CallError, Client, ConnectError, ConnectOptions, Event, ServerTrust};
use warden_proto::Payload;

/// Exit status: the broker answered with an error (`policy explain`:
/// deny), or a local operation (install, uninstall) failed.
const EXIT_REMOTE_ERROR: u8 = 1;
/// Exit status: usage error, or the command could not be evaluated (bad
/// flags, unreadable config, bad JSON).
const EXIT_USAGE: u8 = 2;
/// Exit status: could not connect, or the server identity check failed.
const EXIT_CONNECT: u8 = 3;
/// Exit status: the broker did not answer within `--timeout`.
const EXIT_TIMEOUT: u8 = 4;
/// Exit status: the broker revoked what the command was using (a
/// subscription, after a policy reload).
const EXIT_REVOKED: u8 = 5;

/// The default `--timeout`: longer than the broker's default call
/// deadline (30 s), so a slow provider yields the broker's `timeout` error.
const DEFAULT_TIMEOUT: &str = "35s";

/// Parses a duration for a command-line option: a number with a unit
/// (`500ms`, `25s`, `10m`, `1h`, or sums such as `1m 30s`); a bare number
/// is refused, since its unit would be a guess.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "{t:?} has no unit: write e.g. {t}s, {t}ms, {t}m or {t}h"
        ));
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| format!("{e} (write e.g. 500ms, 25s, 10m or 1h)"))?;
    if d.is_zero() {
        return Err("the duration must be more than zero".into());
    }
    Ok(d)
}

const EXIT_CODES_HELP: &str = "\
Durations (--timeout, learn --duration, top --interval): a number and a
unit: 500ms, 25s, 10m, 1h (or sums: 1m30s). A bare number is an error.

Exit status:
  0  success (policy explain: allow)
  1  the broker answered with an error (stderr: `error: <code>: <message>`;
     with --json, the error object is printed on stdout); policy explain:
     deny; learn: the capture was refused or failed; install/uninstall failed
  2  usage error, or the command could not be evaluated (bad flags,
     unreadable config, bad JSON)
  3  could not connect to the broker, or its identity check failed
  4  timed out: the broker did not answer within --timeout
  5  the broker revoked what the command was using (e.g. a subscription
     after a policy reload)
  learn -- CMD: once CMD has run, CMD's exit status (128+N for signal N)";

/// Talk to the Warden broker.
#[derive(Debug, Parser)]
#[command(name = "wardenctl", version, about, after_help = EXIT_CODES_HELP)]
struct Cli {
    /// Broker socket (default: /run/warden/warden.sock, or
    /// $XDG_RUNTIME_DIR/warden/warden.sock when only that one exists).
    #[arg(long, global = true, env = "WARDEN_SOCKET", value_name = "PATH")]
    socket: Option<String>,
    /// Accept only a broker running as this uid (default: root, your own
    /// uid, or a system account owning a root-controlled socket directory).
    #[arg(long, global = true, value_name = "UID")]
    server_uid: Option<u32>,
    /// Machine-readable output: JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Give up after this long on connecting, the hello, and each
    /// request/reply (not on a stream: subscribe, monitor, top between
    /// refreshes, or the run of a command under learn). Exit status 4.
    #[arg(long, global = true, value_name = "DURATION", default_value = DEFAULT_TIMEOUT, value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the broker answers, and how fast.
    Ping,
    /// Capture the access denials (EACCES/EPERM) of a command, or of a
    /// running process you own, and report them or suggest a sandbox
    /// profile. `learn -- CMD ARGS...` exits with CMD's exit status; a
    /// capture that cannot start exits 1 with the reason (3 if the broker
    /// cannot be reached, 4 if it does not answer).
    #[command(after_help = "Examples:\n  wardenctl learn -- ./myapp --flag\n  \
        wardenctl learn --format landlock-json -- ./myapp > myapp.landlock.json\n  \
        wardenctl learn --verify myapp.landlock.json -- ./myapp\n  \
        wardenctl learn --pid 1234 --duration 30s")]
    Learn {
        /// Capture this running process (yours) and its descendants
        /// instead of starting a command; until Ctrl-C, --duration, or
        /// its exit.
        #[arg(long, value_name = "PID", conflicts_with = "command")]
        pid: Option<u32>,
        /// With --pid: stop after this long (e.g. 30s, 5m).
        #[arg(long, value_name = "DURATION", requires = "pid", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// What to print on stdout: the report (with --json, every
        /// event), or a suggested profile (the report then goes to stderr).
        #[arg(long, value_enum, default_value = "report")]
        format: learn::LearnFormat,
        /// Also write the suggested Landlock profile (JSON) to FILE.
        #[arg(long, value_name = "FILE")]
        save_profile: Option<PathBuf>,
        /// Run the command under this Landlock profile (from
        /// --format landlock-json) and report the denials that remain.
        #[arg(long, value_name = "PROFILE", conflicts_with = "pid")]
        verify: Option<PathBuf>,
        /// The command and its arguments (after --).
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// (internal) The helper `learn` starts: waits for the capture, then
    /// runs the command.
    #[command(hide = true)]
    LearnExec {
        #[arg(long)]
        gate_fd: i32,
        #[arg(long)]
        landlock: Option<PathBuf>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Show the identity the broker attached to this connection.
    Whoami,
    /// Show the broker's software and protocol version.
    Version,
    /// Show the broker's status (administrators only by default).
    Status,
    /// Watch calls, answers and publications live (administrators only by
    /// default). One line per event; --json for one JSON object per line.
    Monitor {
        /// Only methods matching this pattern (e.g. `net.**`).
        #[arg(long, value_name = "GLOB")]
        method: Option<String>,
        /// Only publications on topics matching this pattern.
        #[arg(long, value_name = "GLOB")]
        topic: Option<String>,
        /// Only this user's traffic (name or uid).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Show payloads (needs the monitor permission on `payloads`).
        #[arg(long)]
        payloads: bool,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// A live view of the broker's connections, busiest first (`q` quits).
    /// When stdout is not a terminal, prints one plain table and exits.
    Top {
        /// Time between refreshes (e.g. 500ms, 2s).
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
    },
    /// Show the broker's metrics (administrators only by default).
    Metrics {
        /// Print the Prometheus text format (for a node-exporter textfile
        /// collector or a cron job; the broker opens no network listener).
        #[arg(long)]
        prometheus: bool,
    },
    /// Call a method.
    Call {
        /// Method name, e.g. net.vpn.connect.
        method: String,
        /// Parameters as JSON (default: null).
        params: Option<String>,
    },
    /// Subscribe to a topic and print one JSON line per event.
    Subscribe {
        /// Topic name.
        topic: String,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Publish an event.
    Publish {
        /// Topic name.
        topic: String,
        /// Event data as JSON.
        data: String,
    },
    /// Inspect the policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Install Warden as a systemd service (units, service user, config).
    Install {
        /// Install into this root instead of the running system (an offline
        /// image, like `systemctl --root`).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Configuration to install if none exists yet (default: the
        /// embedded default with the system socket written out).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The wardend binary the unit starts, as a path inside the root
        /// (default: the wardend next to this wardenctl). Nothing is copied.
        #[arg(long, value_name = "PATH")]
        wardend: Option<PathBuf>,
        /// Install even if the root, or a directory on the paths install
        /// writes, is not root's or is writable by group or others (an
        /// image another account can write). Symlinks are still refused.
        #[arg(long)]
        allow_insecure_root: bool,
    },
    /// Remove what install created (configuration kept unless --purge).
    Uninstall {
        /// The root install used.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Also remove the configuration install created.
        #[arg(long)]
        purge: bool,
        /// Uninstall even if the root, or a directory on the paths
        /// uninstall removes from, is not root's or is writable by group or
        /// others. Symlinks are still refused.
        #[arg(long)]
        allow_insecure_root: bool,
    },
    /// Show what is installed, the effective configuration and privileges,
    /// and the running broker's status if it answers.
    Dump {
        /// The root install used.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Explain what the policy decides for a user, an action and a name,
    /// and which rule decides it. Exit 0 for allow, 1 for deny. With
    /// --config, offline against that file; otherwise live, against the
    /// running broker's policy (another user's access: administrators only).
    Explain {
        /// The user (name or uid); their groups come from the system database.
        #[arg(long, value_name = "USER")]
        user: String,
        /// An extra group (name or gid), as if the user were a member.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// The action: call, provide, subscribe, publish, learn or monitor.
        action: String,
        /// The method or topic name.
        name: String,
        /// Explain against this configuration file, offline.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// A subject for `policy explain`: a user with their groups.
struct Subject {
    name: String,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

fn subject(user: &str, extra: &[String]) -> Result<Subject, Failure> {
    let info = match user.parse::<u32>() {
        Ok(uid) => warden_sys::user_by_uid(uid),
        Err(_) => warden_sys::user_by_name(user),
    }
    .map_err(|e| Failure::Local(format!("looking up user {user}: {e}")))?
    .ok_or_else(|| Failure::Local(format!("no such user: {user}")))?;
    let mut groups = warden_sys::groups_of_user(&info.name, info.gid)
        .map_err(|e| Failure::Local(format!("looking up the groups of {}: {e}", info.name)))?;
    for g in extra {
        let gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => warden_sys::group_by_name(g)
                .map_err(|e| Failure::Local(format!("looking up group {g}: {e}")))?
                .ok_or_else(|| Failure::Local(format!("no such group: {g}")))?,
        };
        groups.push(gid);
    }
    groups.retain(|&g| g != info.gid);
    groups.sort_unstable();
    groups.dedup();
    Ok(Subject {
        name: info.name,
        uid: info.uid,
        gid: info.gid,
        groups,
    })
}

/// Prints a decision; returns the failure that sets exit status 1 for deny.
fn print_decision(
    cli: &Cli,
    who: &Subject,
    action: &str,
    name: &str,
    v: &Value,
) -> Result<(), Failure> {
    let allowed = v["allowed"].as_bool().unwrap_or(false);
    if cli.json {
        let mut out = v.clone();
        out["user"] = Value::from(who.name.clone());
        out["uid"] = Value::from(who.uid);
        out["action"] = Value::from(action);
        out["name"] = Value::from(name);
        print_json(&out);
    } else {
        println!(
            "{}: {} may {} {}: {}",
            if allowed { "allow" } else { "deny" },
            who.name,
            action,
            name,
            v["reason"].as_str().unwrap_or("?")
        );
    }
    if allowed {
        Ok(())
    } else {
        Err(Failure::Denied)
    }
}

/// A failure, with the exit status it maps to.
enum Failure {
    Connect(String),
    /// No answer within `--timeout`.
    Timeout(String),
    /// The broker revoked what the command used.
    Revoked(String),
    Remote(warden_proto::WireError),
    Local(String),
    /// A local operation (install, uninstall, dump) failed.
    Operation(String),
    /// `policy explain` decided deny (exit 1, nothing more to print).
    Denied,
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Remote(w) => Failure::Remote(w),
            CallError::Disconnected { reason } => Failure::Connect(format!(
                "the connection to the broker closed{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            )),
            CallError::Timeout { .. } => Failure::Timeout(format!(
                "{e}: the broker is overloaded or stuck; `--timeout` sets how long to wait"
            )),
            other => Failure::Local(other.to_string()),
        }
    }
}

fn default_socket() -> String {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR");
    warden_service::client_socket_path(xdg.as_deref())
        .to_string_lossy()
        .into_owned()
}

fn parse_json(what: &str, text: &str) -> Result<Payload, Failure> {
    Payload::from_raw_json(text).map_err(|e| Failure::Local(format!("{what}: {e}")))
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Pretty JSON for people: serde escapes C0 controls inside strings but
/// not C1 or bidi controls, which a provider's answer may carry.
fn print_pretty(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    println!("{}", term::escape_text(&text));
}

fn connect_options(cli: &Cli) -> ConnectOptions {
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let mut opts = ConnectOptions::new(socket)
        .connect_timeout(cli.timeout)
        .call_timeout(Some(cli.timeout));
    opts.client_name = concat!("wardenctl/", env!("CARGO_PKG_VERSION")).to_owned();
    if let Some(uid) = cli.server_uid {
        opts.trust = ServerTrust::Pin(uid);
    }
    opts
}

async fn connect(cli: &Cli) -> Result<Client, Failure> {
    Client::connect(connect_options(cli))
        .await
        .map_err(|e| match e {
            ConnectError::Refused(w) => Failure::Remote(w),
            ConnectError::Timeout { .. } => {
                Failure::Timeout(format!("{e}; `--timeout` sets how long to wait"))
            }
            other => Failure::Connect(error_chain(&other)),
        })
}

/// The topic on which the broker announces what a policy reload took away
/// from this connection.
const REVOKED_TOPIC: &str = "warden.policy.revoked";

/// If `ev` says a reload revoked the subscription to `topic`, the failure
/// that ends the command.
fn revoked(ev: &Event, topic: &str) -> Option<Failure> {
    let Event::Event { topic: t, data, .. } = ev else {
        return None;
    };
    if t.as_str() != REVOKED_TOPIC {
        return None;
    }
    let v: Value = data.parse().unwrap_or(Value::Null);
    let lost = v["subscriptions"]
        .as_array()
        .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(topic)));
    lost.then(|| {
        Failure::Revoked(format!(
            "the broker revoked the subscription to {topic}: a policy reload no longer allows it"
        ))
    })
}

/// `e`'s message followed by its causes'. A cause whose text the message
/// already ends with (an error that also keeps the cause as its `source`)
/// is not repeated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

fn user_name(uid: u64) -> String {
    u32::try_from(uid)
        .ok()
        .and_then(|u| warden_sys::user_by_uid(u).ok().flatten())
        .map(|u| format!("{uid}({})", u.name))
        .unwrap_or_else(|| uid.to_string())
}

fn group_name(gid: u64) -> String {
    u32::try_from(gid)
        .ok()
        .and_then(|g| warden_sys::group_name(g).ok().flatten())
        .map(|n| format!("{gid}({n})"))
        .unwrap_or_else(|| gid.to_string())
}

/// Shell completions and man pages, generated from the clap definitions,
/// with the root-relative paths `install` puts them at.
fn generated_docs() -> Result<Vec<(String, String)>, String> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let mut out = Vec::new();
    for (shell, path) in [
        (Shell::Bash, warden_service::BASH_COMPLETION_PATH),
        (Shell::Zsh, warden_service::ZSH_COMPLETION_PATH),
        (Shell::Fish, warden_service::FISH_COMPLETION_PATH),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "wardenctl", &mut buf);
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
        man(Cli::command(), "1")?,
    ));
    out.push((
        warden_service::WARDEND_MAN_PATH.to_owned(),
        man(warden_service::wardend_cli::Args::command(), "8")?,
    ));
    Ok(out)
}

/// True when systemd runs the machine (`sd_booted`): then install and
/// uninstall also talk to it.
fn systemd_running(root: &std::path::Path) -> bool {
    root == std::path::Path::new("/") && std::path::Path::new("/run/systemd/system").is_dir()
}

fn run_systemctl(args: &[&str]) -> Result<(), Failure> {
    let status = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .map_err(|e| Failure::Local(format!("running systemctl {}: {e}", args.join(" "))))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::Local(format!(
            "systemctl {} failed ({status})",
            args.join(" ")
        )))
    }
}

/// The commands that work on files, not on a running broker.
fn run_local(cli: &Cli) -> Option<Result<(), Failure>> {
    use warden_service::SystemResolver;
    let failed = |e: warden_service::ServiceError| Failure::Operation(error_chain(&e));
    match &cli.command {
        Command::Install {
            root,
            config,
            wardend,
            allow_insecure_root,
        } => Some((|| {
            let wardend = match wardend {
                Some(p) => p.clone(),
                None => std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("wardend")))
                    .unwrap_or_else(|| PathBuf::from("/usr/bin/wardend")),
            };
            let opts = warden_service::InstallOptions {
                root: root.clone(),
                wardend,
                config: config.clone(),
                extra: generated_docs().map_err(Failure::Operation)?,
                allow_insecure_root: *allow_insecure_root,
            };
            let manifest = warden_service::install(&opts, &SystemResolver).map_err(failed)?;
            if cli.json {
                print_json(&serde_json::to_value(&manifest).unwrap_or_default());
            } else {
                for f in &manifest.files {
                    println!("wrote {}", root.join(f).display());
                }
                if manifest.config_created {
                    println!("wrote {}", root.join(warden_service::CONFIG_PATH).display());
                }
            }
            if systemd_running(root) {
                run_systemctl(&["daemon-reload"])?;
                for cmd in [["systemd-sysusers", ""], ["systemd-tmpfiles", "--create"]] {
                    let _ = std::process::Command::new(cmd[0])
                        .args(cmd[1..].iter().filter(|a| !a.is_empty()))
                        .status();
                }
                run_systemctl(&["enable", "--now", warden_service::SOCKET_UNIT])?;
            } else if !cli.json {
                println!(
                    "systemd is not running this system (or --root was given): run these on the target system:\n  \
                     systemd-sysusers && systemd-tmpfiles --create\n  \
                     systemctl daemon-reload\n  \
                     systemctl enable --now {}",
                    warden_service::SOCKET_UNIT
                );
            }
            Ok(())
        })()),
        Command::Uninstall {
            root,
            purge,
            allow_insecure_root,
        } => Some((|| {
            let opts = warden_service::UninstallOptions {
                root: root.clone(),
                purge: *purge,
                allow_insecure_root: *allow_insecure_root,
            };
            // Refuse before stopping anything: a refused uninstall leaves
            // the service as it was.
            let installed = warden_service::uninstall_check(&opts).map_err(failed)?;
            if installed && systemd_running(root) {
                let _ = run_systemctl(&[
                    "disable",
                    "--now",
                    warden_service::SOCKET_UNIT,
                    warden_service::SERVICE_UNIT,
                ]);
            }
            let removed = warden_service::uninstall(&opts).map_err(failed)?;
            if systemd_running(root) {
                run_systemctl(&["daemon-reload"])?;
            }
            if cli.json {
                let list: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
                print_json(&serde_json::json!({ "removed": list }));
            } else if removed.is_empty() {
                println!(
                    "nothing to remove: Warden is not installed under {}",
                    root.display()
                );
            } else {
                for p in &removed {
                    println!("removed {}", p.display());
                }
            }
            Ok(())
        })()),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "wardenctl", &mut std::io::stdout());
            Some(Ok(()))
        }
        Command::Dump { root } => Some((|| {
            let state = warden_service::installed_state(root, &SystemResolver).map_err(failed)?;
            let opts = connect_options(cli);
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
            if cli.json {
                let mut v = serde_json::to_value(&state).unwrap_or_default();
                v["broker"] = status.unwrap_or(Value::Null);
                print_json(&v);
            } else {
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
                match status {
                    Some(s) => println!(
                        "broker: {} up {:.1} s, {} connections",
                        s["server"].as_str().unwrap_or("?"),
                        s["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                        s["connections"]
                    ),
                    None => println!("broker: not running, or its status is not open to you"),
                }
            }
            Ok(())
        })()),
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    user,
                    groups,
                    action,
                    name,
                    config: Some(path),
                },
        } => Some((|| {
            let who = subject(user, groups)?;
            let act: warden_policy::Action = action.parse().map_err(Failure::Local)?;
            let config = warden_policy::Config::load(path, &SystemResolver)
                .map_err(|e| Failure::Local(e.to_string()))?;
            let caller = warden_policy::Caller {
                uid: who.uid,
                gid: who.gid,
                groups: who.groups.clone(),
            };
            // The same rendering as the broker's `warden.explain`.
            let v = config.policy.decide(&caller, act, name).to_json();
            print_decision(cli, &who, action, name, &v)
        })()),
        _ => None,
    }
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    let client = connect(cli).await?;
    match &cli.command {
        Command::Ping => {
            let t = Instant::now();
            let r = client.call_json("warden.ping", Value::Null).await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if cli.json {
                print_json(
                    &serde_json::json!({ "pong": r["pong"], "rtt_ms": ms, "server": client.welcome().server }),
                );
            } else {
                println!("pong from {} in {ms:.3} ms", client.welcome().server);
            }
        }
        Command::Whoami => {
            let r = client.call_json("warden.whoami", Value::Null).await?;
            if cli.json {
                print_json(&r);
            } else {
                let groups: Vec<String> = r["groups"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).map(group_name).collect())
                    .unwrap_or_default();
                println!(
                    "uid={} gid={} groups={} pid={}",
                    user_name(r["uid"].as_u64().unwrap_or(u64::MAX)),
                    group_name(r["gid"].as_u64().unwrap_or(u64::MAX)),
                    groups.join(","),
                    r["pid"]
                );
            }
        }
        Command::Version => {
            let r = client.call_json("warden.version", Value::Null).await?;
            if cli.json {
                print_json(&r);
            } else {
                println!(
                    "client: wardenctl/{}\nserver: {}\nprotocol: {}",
                    env!("CARGO_PKG_VERSION"),
                    r["server"].as_str().unwrap_or("?"),
                    r["protocol"]
                );
            }
        }
        Command::Status => {
            let r = client.call_json("warden.status", Value::Null).await?;
            if cli.json {
                print_json(&r);
            } else {
                print_status(&r);
            }
        }
        Command::Monitor {
            method,
            topic,
            user,
            payloads,
            count,
        } => {
            let pattern =
                |p: &Option<String>| -> Result<Option<warden_policy::NamePattern>, Failure> {
                    p.as_deref()
                        .map(warden_policy::NamePattern::parse)
                        .transpose()
                        .map_err(|e| Failure::Local(format!("invalid pattern: {e}")))
                };
            let (method_p, topic_p) = (pattern(method)?, pattern(topic)?);
            let uid = match user {
                Some(u) => Some(subject(u, &[])?.uid),
                None => None,
            };
            let monitor_topic = if *payloads {
                "warden.monitor.payloads"
            } else {
                "warden.monitor"
            };
            client.subscribe(monitor_topic).await?;
            let mut seen = 0u64;
            while count.is_none_or(|c| seen < c) {
                let Some(ev) = client.next_event().await else {
                    return Err(Failure::Connect(format!(
                        "the connection to the broker closed{}",
                        client
                            .last_error()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )));
                };
                if let Some(f) = revoked(&ev, monitor_topic) {
                    return Err(f);
                }
                let (v, missed) = match ev {
                    Event::Event {
                        topic,
                        data,
                        missed,
                        ..
                    } if topic.as_str().starts_with("warden.monitor") => {
                        (data.parse::<Value>().unwrap_or(Value::Null), missed)
                    }
                    Event::Event { .. } => continue,
                    Event::Lagged { missed } => (Value::Null, missed),
                };
                if missed > 0 {
                    if cli.json {
                        print_json(&serde_json::json!({ "lagged": missed }));
                    } else {
                        println!("-- {missed} events missed (this monitor did not keep up) --");
                    }
                }
                if v.is_null() {
                    continue;
                }
                if uid.is_some_and(|u| v["uid"].as_u64() != Some(u64::from(u))) {
                    continue;
                }
                let name_ok = |p: &Option<warden_policy::NamePattern>, key: &str| {
                    p.as_ref()
                        .is_none_or(|p| v[key].as_str().is_some_and(|n| p.matches(n)))
                };
                let is_publish = v["kind"] == "publish";
                if (is_publish && (method_p.is_some() || !name_ok(&topic_p, "topic")))
                    || (!is_publish && (topic_p.is_some() || !name_ok(&method_p, "method")))
                {
                    continue;
                }
                seen += 1;
                if cli.json {
                    print_json(&v);
                } else {
                    print_monitor_line(&v);
                }
            }
        }
        Command::Top { interval } => {
            top(&client, *interval).await?;
        }
        Command::Metrics { prometheus } => {
            let r = client.call_json("warden.metrics", Value::Null).await?;
            if *prometheus {
                print!("{}", prometheus_text(&r));
            } else if cli.json {
                print_json(&r);
            } else {
                print_metrics(&r);
            }
        }
        Command::Call { method, params } => {
            let p = match params {
                Some(t) => parse_json("params", t)?,
                None => Payload::null(),
            };
            let r = client.call(method, p).await?;
            let v: Value = r
                .parse()
                .map_err(|e| Failure::Local(format!("reply: {e}")))?;
            if cli.json {
                print_json(&v);
            } else {
                print_pretty(&v);
            }
        }
        Command::Subscribe { topic, count } => {
            client.subscribe(topic).await?;
            let mut seen = 0u64;
            while count.is_none_or(|c| seen < c) {
                let Some(ev) = client.next_event().await else {
                    return Err(Failure::Connect(format!(
                        "the connection to the broker closed{}",
                        client
                            .last_error()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )));
                };
                if let Some(f) = revoked(&ev, topic) {
                    return Err(f);
                }
                let line = match ev {
                    Event::Event {
                        topic,
                        data,
                        missed,
                        publisher,
                    } => {
                        seen += 1;
                        let data: Value = data.parse().unwrap_or(Value::Null);
                        serde_json::json!({
                            "topic": topic.as_str(),
                            "data": data,
                            "missed": missed,
                            "publisher": publisher.map(|p| serde_json::json!({"uid": p.uid, "gid": p.gid, "pid": p.pid})),
                        })
                    }
                    Event::Lagged { missed } => serde_json::json!({ "lagged": missed }),
                };
                print_json(&line);
            }
        }
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    user,
                    groups,
                    action,
                    name,
                    config: None,
                },
        } => {
            let who = subject(user, groups)?;
            let params = serde_json::json!({
                "uid": who.uid, "gid": who.gid, "groups": who.groups,
                "action": action, "name": name,
            });
            let v = client.call_json("warden.explain", params).await?;
            print_decision(cli, &who, action, name, &v)?;
        }
        Command::Install { .. }
        | Command::Uninstall { .. }
        | Command::Dump { .. }
        | Command::Completions { .. }
        | Command::Policy { .. }
        | Command::Learn { .. }
        | Command::LearnExec { .. } => {
            return Err(Failure::Local(
                "this command is handled before connecting; this is a bug in wardenctl".into(),
            ));
        }
        Command::Publish { topic, data } => {
            let d = parse_json("data", data)?;
            let r = client.publish(topic, d).await?;
            if cli.json {
                print_json(&r);
            } else {
                println!(
                    "delivered to {} subscriber(s), dropped for {}",
                    r["delivered"], r["dropped"]
                );
            }
        }
    }
    Ok(())
}

/// Renders `warden.metrics` in the Prometheus text exposition format.
fn prometheus_text(r: &Value) -> String {
    use std::fmt::Write;
    let mut text = String::from(
        "# HELP warden_uptime_seconds Time since the broker started.\n# TYPE warden_uptime_seconds gauge\n",
    );
    let _ = writeln!(
        text,
        "warden_uptime_seconds {}",
        r["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0
    );
    let gauges = [
        ("warden_connections", "connections", "Open connections."),
        (
            "warden_routed_in_flight",
            "routed_in_flight",
            "Calls routed to providers and not answered yet.",
        ),
        (
            "warden_providers",
            "providers",
            "Methods provided by connections.",
        ),
        (
            "warden_topics",
            "topics",
            "Topics with at least one subscriber.",
        ),
        (
            "warden_queued_events",
            "queued_events",
            "Events waiting in subscribers' queues.",
        ),
        (
            "warden_queued_bytes",
            "queued_bytes",
            "Bytes waiting to be written, all uids.",
        ),
        (
            "warden_missed_events_pending",
            "missed_events_pending",
            "Dropped events not yet reported to their subscribers.",
        ),
    ];
    for (name, key, help) in gauges {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            r[key].as_u64().unwrap_or(0)
        );
    }
    let empty = serde_json::Map::new();
    let methods = r["methods"].as_object().unwrap_or(&empty);
    let _ = writeln!(
        text,
        "# HELP warden_calls_total Calls answered, by method.\n# TYPE warden_calls_total counter"
    );
    for (m, s) in methods {
        let _ = writeln!(
            text,
            "warden_calls_total{{method=\"{m}\"}} {}",
            s["calls"].as_u64().unwrap_or(0)
        );
    }
    let _ = writeln!(text, "# HELP warden_call_errors_total Calls answered with an error, by method and code.\n# TYPE warden_call_errors_total counter");
    for (m, s) in methods {
        if let Some(errors) = s["errors"].as_object() {
            for (code, n) in errors {
                let _ = writeln!(
                    text,
                    "warden_call_errors_total{{method=\"{m}\",code=\"{code}\"}} {}",
                    n.as_u64().unwrap_or(0)
                );
            }
        }
    }
    let unresolved = &r["unresolved"];
    let _ = writeln!(
        text,
        "# HELP warden_unresolved_calls_total Calls to names that nothing served when they arrived (or past the per-method table's cap).\n# TYPE warden_unresolved_calls_total counter\nwarden_unresolved_calls_total {}",
        unresolved["calls"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(text, "# HELP warden_unresolved_call_errors_total Unresolved calls answered with an error, by code.\n# TYPE warden_unresolved_call_errors_total counter");
    if let Some(errors) = unresolved["errors"].as_object() {
        for (code, n) in errors {
            let _ = writeln!(
                text,
                "warden_unresolved_call_errors_total{{code=\"{code}\"}} {}",
                n.as_u64().unwrap_or(0)
            );
        }
    }
    let _ = writeln!(text, "# HELP warden_queued_bytes_by_uid Bytes waiting to be written, charged to one uid (uids with none are left out).\n# TYPE warden_queued_bytes_by_uid gauge");
    if let Some(by_uid) = r["queued_bytes_by_uid"].as_object() {
        for (uid, n) in by_uid {
            let _ = writeln!(
                text,
                "warden_queued_bytes_by_uid{{uid=\"{uid}\"}} {}",
                n.as_u64().unwrap_or(0)
            );
        }
    }
    let _ = writeln!(text, "# HELP warden_call_duration_seconds Time from a call's arrival to its answer.\n# TYPE warden_call_duration_seconds histogram");
    for (m, s) in methods {
        let lat = &s["latency_us"];
        let bounds: Vec<u64> = lat["le"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let counts: Vec<u64> = lat["counts"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let mut cumulative = 0u64;
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            let le = bounds
                .get(i)
                .map(|b| format!("{}", *b as f64 / 1e6))
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(
                text,
                "warden_call_duration_seconds_bucket{{method=\"{m}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            text,
            "warden_call_duration_seconds_sum{{method=\"{m}\"}} {}",
            lat["sum"].as_f64().unwrap_or(0.0) / 1e6
        );
        let _ = writeln!(
            text,
            "warden_call_duration_seconds_count{{method=\"{m}\"}} {cumulative}"
        );
    }
    text
}

fn print_monitor_line(v: &Value) {
    let time = v["time_ms"].as_u64().unwrap_or(0);
    let (secs, ms) = (time / 1000, time % 1000);
    let clock = format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    );
    let who = format!(
        "{} pid={} {}",
        user_name(v["uid"].as_u64().unwrap_or(u64::MAX)),
        v["pid"],
        v["comm"].as_str().unwrap_or("?")
    );
    let kind = v["kind"].as_str().unwrap_or("?");
    let name = v["method"].as_str().or(v["topic"].as_str()).unwrap_or("?");
    let detail = match kind {
        "call" => String::new(),
        "publish" => format!("delivered={} dropped={}", v["delivered"], v["dropped"]),
        _ => format!(
            "{} {} µs",
            v["code"].as_str().unwrap_or("?"),
            v["latency_us"]
        ),
    };
    let rule = v["rule"].as_str().unwrap_or("");
    let payload = ["params", "result", "data"]
        .iter()
        .find_map(|k| {
            v.get(*k)
                .filter(|p| !p.is_null())
                .map(|p| format!(" {k}={p}"))
        })
        .unwrap_or_default();
    let line = format!("{clock} {who:<32} {kind:<7} {name:<28} {detail} [{rule}]{payload}");
    println!("{}", term::escape(&line));
}

/// One row of `top`.
struct TopRow {
    id: u64,
    user: String,
    pid: u64,
    comm: String,
    since_s: u64,
    calls: u64,
    rate: f64,
    in_flight: u64,
    queued: u64,
    missed: u64,
}

/// Rows from a `warden.status` answer, with calls/s against the previous
/// sample, busiest first.
fn top_rows(status: &Value, prev: &std::collections::HashMap<u64, u64>, secs: f64) -> Vec<TopRow> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut rows: Vec<TopRow> = status["connection_list"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| {
                    let id = c["id"].as_u64().unwrap_or(0);
                    let calls = c["calls"].as_u64().unwrap_or(0);
                    let before = prev.get(&id).copied().unwrap_or(calls);
                    TopRow {
                        id,
                        user: user_name(c["uid"].as_u64().unwrap_or(u64::MAX)),
                        pid: c["pid"].as_u64().unwrap_or(0),
                        comm: term::escape(c["comm"].as_str().unwrap_or("?")).into_owned(),
                        since_s: now_ms
                            .saturating_sub(c["connected_ms"].as_u64().unwrap_or(now_ms))
                            / 1000,
                        calls,
                        rate: if secs > 0.0 {
                            calls.saturating_sub(before) as f64 / secs
                        } else {
                            0.0
                        },
                        in_flight: c["in_flight"].as_u64().unwrap_or(0),
                        queued: c["queued_events"].as_u64().unwrap_or(0),
                        missed: c["missed"].as_u64().unwrap_or(0),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by(|a, b| {
        b.rate
            .total_cmp(&a.rate)
            .then(b.in_flight.cmp(&a.in_flight))
            .then(b.calls.cmp(&a.calls))
            .then(a.id.cmp(&b.id))
    });
    rows
}

fn top_table(status: &Value, rows: &[TopRow]) -> String {
    let mut out = format!(
        "{}  up {:.0} s  connections {}  in flight {}  providers {}  topics {}\n\n",
        status["server"].as_str().unwrap_or("?"),
        status["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        status["connections"],
        status["routed_in_flight"],
        status["providers"].as_array().map_or(0, Vec::len),
        status["topics"],
    );
    out.push_str(&format!(
        "{:>6} {:<18} {:>8} {:<16} {:>8} {:>9} {:>7} {:>9} {:>7} {:>7}\n",
        "CONN", "USER", "PID", "COMM", "SINCE", "CALLS", "CALLS/S", "IN-FLIGHT", "QUEUED", "MISSED"
    ));
    for r in rows {
        out.push_str(&format!(
            "{:>6} {:<18} {:>8} {:<16} {:>7}s {:>9} {:>7.1} {:>9} {:>7} {:>7}\n",
            r.id,
            r.user,
            r.pid,
            r.comm,
            r.since_s,
            r.calls,
            r.rate,
            r.in_flight,
            r.queued,
            r.missed
        ));
    }
    out
}

/// `wardenctl top`: refreshes a table of connections until `q` (or
/// Ctrl-C); on a non-terminal, prints it once.
async fn top(client: &Client, interval: Duration) -> Result<(), Failure> {
    use std::io::{IsTerminal, Write};
    let status = client.call_json("warden.status", Value::Null).await?;
    let mut prev: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    if !std::io::stdout().is_terminal() {
        print!("{}", top_table(&status, &top_rows(&status, &prev, 0.0)));
        return Ok(());
    }
    let every = interval.clamp(Duration::from_millis(100), Duration::from_secs(3600));
    crossterm::terminal::enable_raw_mode()
        .map_err(|e| Failure::Local(format!("cannot use the terminal: {e}")))?;
    let mut status = status;
    let mut last = std::time::Instant::now();
    let result = loop {
        let rows = top_rows(
            &status,
            &prev,
            last.elapsed().as_secs_f64().max(every.as_secs_f64()),
        );
        prev = rows.iter().map(|r| (r.id, r.calls)).collect();
        let text = top_table(&status, &rows).replace('\n', "\r\n");
        let mut out = std::io::stdout();
        let _ = write!(out, "\x1b[H\x1b[2J{text}\r\nq: quit");
        let _ = out.flush();
        last = std::time::Instant::now();
        // Wait for a key or the next refresh, without blocking the runtime.
        let quit = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            if crossterm::event::poll(every)? {
                if let crossterm::event::Event::Key(k) = crossterm::event::read()? {
                    use crossterm::event::{KeyCode, KeyModifiers};
                    return Ok(k.code == KeyCode::Char('q')
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL)));
                }
            }
            Ok(false)
        })
        .await;
        match quit {
            Ok(Ok(true)) => break Ok(()),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => break Err(Failure::Local(format!("reading the terminal: {e}"))),
            Err(e) => break Err(Failure::Local(format!("reading the terminal: {e}"))),
        }
        match client.call_json("warden.status", Value::Null).await {
            Ok(s) => status = s,
            Err(e) => break Err(e.into()),
        }
    };
    let _ = crossterm::terminal::disable_raw_mode();
    println!();
    result
}

fn print_metrics(r: &Value) {
    println!(
        "uptime:        {:.1} s",
        r["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0
    );
    println!("connections:   {}", r["connections"]);
    println!("in flight:     {}", r["routed_in_flight"]);
    println!(
        "queued events: {} ({} bytes queued)",
        r["queued_events"], r["queued_bytes"]
    );
    println!(
        "\n{:<32} {:>10} {:>10} {:>12}",
        "METHOD", "CALLS", "ERRORS", "MEAN µs"
    );
    if let Some(m) = r["methods"].as_object() {
        for (name, s) in m {
            let calls = s["calls"].as_u64().unwrap_or(0);
            let errors: u64 = s["errors"]
                .as_object()
                .map(|e| e.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            let mean = s["latency_us"]["sum"]
                .as_u64()
                .unwrap_or(0)
                .checked_div(calls)
                .unwrap_or(0);
            println!("{name:<32} {calls:>10} {errors:>10} {mean:>12}");
        }
    }
    let u = &r["unresolved"];
    let u_errors: u64 = u["errors"]
        .as_object()
        .map(|e| e.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    println!(
        "{:<32} {:>10} {u_errors:>10}",
        "(unresolved names)",
        u["calls"].as_u64().unwrap_or(0)
    );
    print_truncated(r);
}

/// Says so when the broker cut its answer to fit in one frame.
fn print_truncated(r: &Value) {
    if r["truncated"] == true {
        println!(
            "\nnote: the broker cut this answer to fit in one frame ({} connections, {} methods in all)",
            r["connections"], r["method_count"]
        );
    }
}

fn print_status(r: &Value) {
    println!("server:      {}", r["server"].as_str().unwrap_or("?"));
    println!(
        "uptime:      {:.1} s",
        r["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0
    );
    println!("connections: {}", r["connections"]);
    println!("draining:    {}", r["draining"]);
    if let Some(p) = r["providers"].as_array() {
        let names: Vec<&str> = p.iter().filter_map(Value::as_str).collect();
        println!(
            "providers:   {}",
            if names.is_empty() {
                "-".into()
            } else {
                names.join(", ")
            }
        );
    }
    println!("topics:      {}", r["topics"]);
    if let Some(m) = r["methods"].as_object() {
        println!("\n{:<32} {:>10} {:>10}", "METHOD", "CALLS", "ERRORS");
        for (name, s) in m {
            println!("{name:<32} {:>10} {:>10}", s["calls"], s["errors"]);
        }
        println!(
            "{:<32} {:>10} {:>10}",
            "(unresolved names)", r["unresolved"]["calls"], r["unresolved"]["errors"]
        );
    }
    if let Some(list) = r["connection_list"].as_array() {
        println!(
            "\n{:>6} {:<16} {:>8} {:<16} {:>8} {:>9}",
            "ID", "USER", "PID", "COMM", "CALLS", "IN-FLIGHT"
        );
        for c in list {
            println!(
                "{:>6} {:<16} {:>8} {:<16} {:>8} {:>9}",
                c["id"],
                user_name(c["uid"].as_u64().unwrap_or(u64::MAX)),
                c["pid"],
                term::escape(c["comm"].as_str().unwrap_or("?")),
                c["calls"],
                c["in_flight"]
            );
        }
    }
    print_truncated(r);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::LearnExec {
        gate_fd,
        landlock,
        command,
    } = &cli.command
    {
        return learn::exec_helper(*gate_fd, landlock.as_deref(), command);
    }
    if let Some(result) = run_local(&cli) {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(f) => report(&cli, f),
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Command::Learn {
        pid,
        duration,
        format,
        save_profile,
        verify,
        command,
    } = &cli.command
    {
        return runtime.block_on(async {
            let client = match connect(&cli).await {
                Ok(c) => c,
                Err(f) => return report(&cli, f),
            };
            let args = learn::LearnArgs {
                pid: *pid,
                duration: *duration,
                format: *format,
                save_profile: save_profile.as_deref(),
                verify: verify.as_deref(),
                command,
                json: cli.json,
            };
            learn::run(&client, &args).await
        });
    }
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(&cli, f),
    }
}

fn report(cli: &Cli, failure: Failure) -> ExitCode {
    match failure {
        Failure::Operation(m) => {
            eprintln!("error: {m}");
            ExitCode::from(EXIT_REMOTE_ERROR)
        }
        Failure::Denied => ExitCode::from(EXIT_REMOTE_ERROR),
        Failure::Remote(w) => {
            if cli.json {
                print_json(
                    &serde_json::json!({ "error": { "code": w.code.as_str(), "message": w.message } }),
                );
            }
            eprintln!("error: {}: {}", w.code, term::escape(&w.message));
            ExitCode::from(EXIT_REMOTE_ERROR)
        }
        Failure::Connect(m) => {
            eprintln!("error: {m}");
            ExitCode::from(EXIT_CONNECT)
        }
        Failure::Timeout(m) => {
            eprintln!("error: {m}");
            ExitCode::from(EXIT_TIMEOUT)
        }
        Failure::Revoked(m) => {
            eprintln!("error: {m}");
            ExitCode::from(EXIT_REVOKED)
        }
        Failure::Local(m) => {
            eprintln!("error: {m}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for (code, text) in [
            (0, "0  success"),
            (EXIT_REMOTE_ERROR, "1  the broker"),
            (EXIT_USAGE, "2  usage"),
            (EXIT_CONNECT, "3  could not connect"),
            (EXIT_TIMEOUT, "4  timed out"),
            (EXIT_REVOKED, "5  the broker revoked"),
        ] {
            assert!(help.contains(text), "{text} missing from --help");
            assert!(
                text.starts_with(&code.to_string()),
                "{text} is not exit {code}"
            );
        }
    }

    #[test]
    fn the_man_page_carries_the_exit_code_table() {
        let docs = generated_docs().unwrap_or_else(|e| panic!("{e}"));
        let man = docs
            .iter()
            .find(|(path, _)| path.ends_with("man1/wardenctl.1"))
            .map(|(_, text)| text.replace("\\-", "-"))
            .unwrap_or_else(|| panic!("no wardenctl.1 among {} generated files", docs.len()));
        for text in [
            "0  success",
            "3  could not connect",
            "4  timed out",
            "5  the broker revoked",
        ] {
            assert!(man.contains(text), "{text} missing from the man page");
        }
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["30", "1.5", "", "0s", "soon", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("30").is_err_and(|e| e.contains("30s")));
    }

    #[test]
    fn the_default_timeout_outlasts_the_brokers_call_deadline() {
        let default = parse_duration(DEFAULT_TIMEOUT).unwrap_or_default();
        let config =
            warden_policy::Config::embedded_default(&warden_policy::StaticResolver::default())
                .unwrap_or_else(|e| panic!("{e}"));
        let broker = Duration::from_millis(config.limits.call_timeout_ms);
        assert!(default > broker, "{default:?} <= {broker:?}");
    }
}
