//! `wardend`: the Warden broker daemon.
//!
//! Thin by design: arguments → configuration → endpoint → broker. The
//! logic lives in the `warden`, `warden-policy` and `warden-sys` crates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use warden::{Broker, Shutdown};
use warden_policy::{Config, Resolver, DEFAULT_CONFIG};

/// The Warden broker: a hardened local IPC broker for privileged helpers.
#[derive(Debug, Parser)]
#[command(name = "wardend", version, about, long_about = None)]
struct Args {
    /// Configuration file (TOML). Without it, the embedded default is used
    /// (see --print-default-config).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Socket path; overrides the config's broker.socket.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Validate the configuration and exit: 0 if valid, 1 if not.
    #[arg(long)]
    check_config: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Log level: error, warn, info, debug or trace (or a tracing filter).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
}

/// Resolves user and group names through the system database.
struct SystemResolver;

impl Resolver for SystemResolver {
    fn user_uid(&self, name: &str) -> Option<u32> {
        warden_sys::user_by_name(name).ok().flatten().map(|u| u.uid)
    }
    fn group_gid(&self, name: &str) -> Option<u32> {
        warden_sys::group_by_name(name).ok().flatten()
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, warden_policy::ConfigError> {
    match path {
        Some(p) => Config::load(p, &SystemResolver),
        None => Config::embedded_default(&SystemResolver),
    }
}

/// The socket when neither the flag nor the config names one.
fn default_socket() -> anyhow::Result<PathBuf> {
    if warden_sys::effective_uid() == 0 {
        return Ok(PathBuf::from("/run/warden/warden.sock"));
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir).join("warden/warden.sock")),
        _ => anyhow::bail!(
            "not running as root and XDG_RUNTIME_DIR is not set: pass --socket PATH \
             (in a directory only you can write) or set broker.socket in the config"
        ),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    let config = match load_config(args.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wardend: invalid configuration: {e}");
            return ExitCode::from(1);
        }
    };
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    if args.check_config {
        println!(
            "{}: ok ({} rules, {} warnings)",
            config.source,
            config.policy.rule_count(),
            config.warnings.len()
        );
        return ExitCode::SUCCESS;
    }
    match run(args, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wardend: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args, config: Config) -> anyhow::Result<()> {
    let socket = match args.socket.or_else(|| config.broker.socket.clone()) {
        Some(s) => s,
        None => default_socket()?,
    };
    match warden_sys::raise_nofile_limit() {
        Ok((old, new)) if old != new => tracing::info!(old, new, "raised the open-file limit"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let spec = warden_sys::EndpointSpec {
        path: socket.clone(),
        mode: config.broker.socket_mode,
        group: config.broker.socket_group.as_ref().map(|(_, gid)| *gid),
        create_dir: true,
    };
    // Bind before starting any thread: binding sets the process umask.
    let mut endpoint = warden_sys::bind_secure(&spec)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    if endpoint.reclaimed_stale() {
        tracing::info!(path = %socket.display(), "removed a stale socket left by an earlier broker");
    }
    let std_listener = endpoint
        .take_listener()
        .context("the endpoint has no listener")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wardend")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(std_listener)
            .context("cannot register the listener with the runtime")?;
        let broker = Broker::builder(&config).build();
        let (trigger, shutdown) = Shutdown::new();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot install the SIGINT handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            trigger.trigger();
        });
        tracing::info!(
            socket = %socket.display(),
            config = %config.source,
            server = warden::SERVER_NAME,
            "listening"
        );
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        broker.serve(listener, shutdown).await;
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Err(e) = endpoint.remove_socket() {
        tracing::warn!(error = %e, "could not remove the socket");
    }
    tracing::info!("stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Args::command().debug_assert();
    }
}
