//! The command line: what `wardenctl` accepts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::cmds::learn::LearnFormat;
use crate::error::EXIT_CODES_HELP;

/// The default `--timeout`: longer than the broker's default call
/// deadline (30 s), so a slow provider yields the broker's `timeout` error.
pub const DEFAULT_TIMEOUT: &str = "35s";

/// Parses a duration for a command-line option: a number with a unit
/// (`500ms`, `25s`, `10m`, `1h`, or sums such as `1m 30s`); a bare number
/// is refused, since its unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
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

/// Talk to the Warden broker.
#[derive(Debug, Parser)]
#[command(name = "wardenctl", version, about, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Broker socket (default: /run/warden/warden.sock, or
    /// $XDG_RUNTIME_DIR/warden/warden.sock when only that one exists).
    #[arg(long, global = true, env = "WARDEN_SOCKET", value_name = "PATH")]
    pub socket: Option<String>,
    /// Accept only a broker running as this uid (default: root, your own
    /// uid, or a system account owning a root-controlled socket directory).
    #[arg(long, global = true, value_name = "UID")]
    pub server_uid: Option<u32>,
    /// Machine-readable output: JSON on stdout (learn: on stderr, or to
    /// --output, since stdout is the command's).
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up after this long on connecting, the hello, and each
    /// request/reply (not on a stream: subscribe, monitor, top between
    /// refreshes, or the run of a command under learn). Exit status 4.
    #[arg(long, global = true, value_name = "DURATION", default_value = DEFAULT_TIMEOUT, value_parser = parse_duration)]
    pub timeout: Duration,
    /// Join with the invitation token in FILE (from `wardenctl invite
    /// create`): the connection then holds the invitation's role. Without
    /// it, the token in $WARDEN_INVITATION is used (and removed from this
    /// process's environment). Never pass a token as an argument.
    #[arg(long, global = true, value_name = "FILE")]
    pub invite_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the broker answers, and how fast.
    Ping,
    /// Capture the access denials (EACCES/EPERM) of a command, or of a
    /// running process you own, and report them or suggest a sandbox
    /// profile. The command keeps stdin and stdout: the report (JSON with
    /// --json) and errors go to stderr, or the report to --output; a
    /// profile goes only to --output. `learn -- CMD ARGS...` exits with
    /// CMD's exit status (127/126 if CMD is not found / not executable); a
    /// capture that cannot start exits 1 with the reason (3 if the broker
    /// cannot be reached, 4 if it does not answer).
    #[command(after_help = "Examples:\n  wardenctl learn -- ./myapp --flag\n  \
        wardenctl learn --format landlock-json --output myapp.json -- ./myapp\n  \
        wardenctl learn --verify myapp.json -- ./myapp\n  \
        wardenctl learn --format systemd --output myapp.conf -- ./myapp\n  \
        wardenctl learn --json --output report.json -- ./myapp\n  \
        wardenctl learn --pid 1234 --duration 30s")]
    #[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "command"])))]
    Learn {
        /// Capture this running process (yours) and its descendants
        /// instead of starting a command; until Ctrl-C, --duration, or
        /// its exit.
        #[arg(long, value_name = "PID", conflicts_with = "command")]
        pid: Option<u32>,
        /// With --pid: stop after this long (e.g. 30s, 5m).
        #[arg(long, value_name = "DURATION", requires = "pid", conflicts_with = "command", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// What to write: the report (with --json, every event), or a
        /// suggested profile (needs --output; the report then goes to
        /// stderr).
        #[arg(long, value_enum, default_value = "report",
              requires_ifs = [("landlock-json", "output"), ("systemd", "output")])]
        format: LearnFormat,
        /// Write the profile (or, with --format report, the report) to
        /// FILE, replaced atomically; never through a symlink.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
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
        /// The name the command was given as (its argv[0]); the program
        /// after -- is its resolved path.
        #[arg(long)]
        arg0: Option<String>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Show the identity the broker attached to this connection.
    Whoami,
    /// Show the broker's software and protocol version.
    Version,
    /// Show the broker's status (administrators only by default).
    Status,
    /// Watch calls, answers and publications live, and the subscriptions
    /// and publications policy refused (administrators only by default).
    /// One line per event; --json for one JSON object per line.
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
    /// When stdout is not a terminal, prints one plain table and exits;
    /// with --json, one JSON object.
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
        /// Parameters as JSON (default: null); `-` reads them from standard
        /// input, `@FILE` from FILE.
        params: Option<String>,
        /// For a method of a per-session host: the instance of this logind
        /// session (another user's needs the `target` action).
        #[arg(long, value_name = "ID", conflicts_with = "target_uid")]
        session: Option<String>,
        /// For a method of a per-session host: the instance in this user's
        /// one session that has it.
        #[arg(long = "target-uid", value_name = "UID")]
        target_uid: Option<u32>,
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
    /// Make the broker read its configuration file again, as SIGHUP does
    /// (administrators only by default). Prints the file and its rule
    /// count, or the error (file:line:column: key) and exits 1; a file
    /// that does not load leaves the broker's policy as it was.
    Reload,
    /// The methods you may call, who serves each (a built-in, the broker,
    /// a child host, a provider) and what it does.
    List,
    /// The broker's child hosts: name, state, pid, restarts, user, how the
    /// last process ended, modules (administrators only by default).
    Hosts {
        #[command(subcommand)]
        command: Option<HostsCommand>,
    },
    /// Load, unload or reload a module in a running child host (needs the
    /// `module` action on the host's name; audited). A module loaded or
    /// unloaded stays so when the host restarts, until the broker restarts.
    Module {
        #[command(subcommand)]
        command: ModuleCommand,
    },
    /// Create, list and revoke invitations: tokens with which an
    /// already-running process joins the broker with a role, for a while
    /// (see `invite create --help`).
    Invite {
        #[command(subcommand)]
        command: InviteCommand,
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
        /// Configuration to install (default: the embedded default with
        /// the system socket written out). Validated first. Over an
        /// installed configuration with other text, install refuses
        /// unless --force.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// With --config: replace an installed configuration that differs,
        /// keeping the old one as /etc/warden/warden.toml.wardenctl-old.
        #[arg(long, requires = "config")]
        force: bool,
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
    /// Print the manual page (roff) of wardenctl, or of one command
    /// (e.g. `man call`, `man policy explain`); read it with `man -l -`.
    Man {
        /// The command (empty: the whole manual).
        #[arg(value_name = "COMMAND")]
        command: Vec<String>,
    },
}

/// `wardenctl invite` subcommands.
#[derive(Debug, Subcommand)]
pub enum InviteCommand {
    /// Create an invitation for a role and print its token once (needs the
    /// `invite` action on the role, and the role must be within your own
    /// permissions). The joiner passes it with --invite-file or
    /// $WARDEN_INVITATION, or through the client library.
    Create {
        /// The role, as in a [[role]] section.
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// How long the invitation can be used to join (e.g. 10m, 2h);
        /// connections that joined keep the role after it expires.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
        expires: Duration,
        /// How many times it can be used to join.
        #[arg(long, value_name = "N", default_value_t = 1)]
        uses: u64,
        /// Only this user may join with it (name or uid).
        #[arg(long, value_name = "USER", conflicts_with = "for_group")]
        for_user: Option<String>,
        /// Only members of this group may join with it (name or gid).
        #[arg(long, value_name = "GROUP")]
        for_group: Option<String>,
        /// A note for `invite list` and the events (at most 128 characters).
        #[arg(long, value_name = "TEXT")]
        label: Option<String>,
        /// Write the token to FILE (created, mode 0600, never over an
        /// existing file or through a symlink, in a directory only you or
        /// root can write) instead of printing it; `-` prints it.
        #[arg(long, short = 'o', value_name = "FILE|-")]
        output: Option<PathBuf>,
    },
    /// List your invitations (an administrator: all). No secrets are shown.
    List,
    /// Revoke an invitation: it can no longer be used, and connections that
    /// joined with it lose its role at once.
    Revoke {
        /// The invitation's id (from `invite list` or `invite create`).
        id: String,
    },
}

/// `wardenctl hosts` subcommands.
#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Start a host again now (a failed one too), forgetting its crashes.
    Restart {
        /// The host's name, as in its [[host]] section.
        name: String,
    },
}

/// `wardenctl module` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// Load a module: one of the host's `modules`, or a file directly in
    /// its `module_dir` (root's, writable by nobody else). Its methods are
    /// served once this returns.
    Load {
        /// The host's name, as in its [[host]] section.
        host: String,
        /// The module file (absolute path).
        module: String,
    },
    /// Unload a module: its methods stop taking calls at once; calls
    /// already running finish first.
    Unload {
        /// The host's name.
        host: String,
        /// The module's path or its declared name.
        module: String,
    },
    /// Load a module's file again (a rebuilt library) and move its methods
    /// to the new code without a gap; the old code finishes its calls and
    /// is unloaded.
    Reload {
        /// The host's name.
        host: String,
        /// The module's path or its declared name.
        module: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
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
        /// The action: call, provide, subscribe, publish, learn, monitor, module or target.
        action: String,
        /// The method or topic name.
        name: String,
        /// Explain against this configuration file, offline.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

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
