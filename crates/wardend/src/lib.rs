//! `wardend`'s command line, as a library so that `wardenctl` can
//! generate its man page from the one definition.

pub mod cli {
    //! The `wardend` command-line interface.
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
        /// Log level: error, warn, info, debug or trace (or a tracing filter).
        #[arg(long, value_name = "LEVEL", default_value = "info")]
        pub log_level: String,
        /// Log format: `text` for people, `json` (one object per line) for
        /// machines. Audit events (denials, reloads) have the target
        /// `warden::audit` and the fields uid, pid, comm, action, target, rule,
        /// result.
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
}
