//! `wardend`'s command line, defined here rather than in the daemon so
//! that everything that must agree with it can use the one definition:
//! the unit file's `ExecStart` (written by this crate), the daemon itself,
//! and `wardenctl`, which renders the daemon's man page at install time.
//! Keeping it here means building `wardenctl` never builds the daemon (and
//! so never needs the eBPF toolchain).

use std::path::PathBuf;

/// The Warden broker: a hardened local IPC broker for privileged helpers.
#[derive(Debug, clap::Parser)]
#[command(name = "wardend", version, about, long_about = None)]
pub struct Args {
    /// Configuration file (TOML). Without it, the embedded default is used
    /// (see --print-default-config).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Socket path; overrides the config's broker.socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Validate the configuration and exit: 0 if valid, 1 if not.
    #[arg(long)]
    pub check_config: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    pub print_default_config: bool,

    /// Internal: run as the reaper of the child hosts' cgroup CGROUP (see
    /// warden_supervisor::Reaper); wardend starts it itself.
    #[arg(long, value_name = "CGROUP", hide = true)]
    pub reaper_for: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace (or a tracing filter).
    /// Given twice, the last one counts.
    #[arg(
        long,
        value_name = "LEVEL",
        default_value = "info",
        overrides_with = "log_level"
    )]
    pub log_level: String,
    /// Log format: `text` for people, `json` (one object per line) for
    /// machines. Audit records (denials, reloads) have the target
    /// `warden::audit` and, every one, the fields uid, gid, pid, comm, exe,
    /// conn, action, target, rule, result (as JSON values: `null` when
    /// unknown), rate-limited per uid and action. Logs go to stderr through a bounded queue: when stderr is
    /// closed or does not keep up, lines are dropped and counted (the count
    /// is in the broker's status line to systemd), never waited for.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain text for people.
    Text,
    /// One JSON object per line, for machines.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn cli_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn the_unit_starts_wardend_with_flags_it_accepts() {
        // Pinned: the ExecStart line this crate writes must parse.
        let unit = crate::service_unit(
            &warden_policy::Config::embedded_default(&warden_policy::StaticResolver::default())
                .unwrap_or_else(|e| panic!("{e}")),
            std::path::Path::new("/usr/bin/wardend"),
        );
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("no ExecStart in {unit}"));
        let argv: Vec<&str> = exec.split_whitespace().collect();
        if let Err(e) = Args::try_parse_from(&argv) {
            panic!("{exec}: {e}");
        }
    }
}
