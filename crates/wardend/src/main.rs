//! `wardend`: the Warden broker daemon.
//!
//! Thin by design: arguments → configuration → endpoint → broker. The
//! logic lives in the `warden`, `warden-policy` and `warden-sys` crates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use warden::{Broker, Shutdown};
use warden_policy::{Config, DEFAULT_CONFIG};
use warden_service::wardend_cli::{Args, LogFormat};
use warden_service::SystemResolver;

mod hosts;
mod log;
mod sessions;
use log::LogSink;

/// Writes a message for the person who started wardend, before logging
/// starts or instead of it; a closed stderr is ignored (never a panic).
fn say(msg: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Writes to stdout for `--print-default-config` and `--check-config`; a
/// closed stdout gives exit status 1, not a panic.
fn print_out(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

/// Sets up logging through a [`LogSink`]: tracing-subscriber's own
/// reporting of write errors is off (it would print to the same closed
/// stderr, and panic), and panics are logged as events rather than
/// printed straight to a stderr that may be stalled.
fn init_logging(args: &Args) -> Option<LogSink> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // (main checked the level before calling this.)
    let sink = match LogSink::stderr() {
        Ok(s) => s,
        Err(e) => {
            say(format_args!(
                "wardend: cannot start logging ({e}); running without logs"
            ));
            return None;
        }
    };
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink.clone())
        .log_internal_errors(false);
    match args.log_format {
        LogFormat::Text => fmt
            .with_ansi(std::io::stderr().is_terminal())
            .map_event_format(|f| log::AuditFormat::new(f, false))
            .init(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(false)
            .map_event_format(|f| log::AuditFormat::new(f, true))
            .init(),
    }
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("?"),
            backtrace = %std::backtrace::Backtrace::capture(),
            "panic: {info}"
        );
    }));
    Some(sink)
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks `--log-level`: a level, or a tracing filter whose every
/// directive ends in `=LEVEL` (so a typo such as `inf` is an error, not a
/// filter for a target named "inf" that silently logs nothing).
fn check_log_level(spec: &str) -> Result<(), String> {
    for d in spec.split(',').map(str::trim) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("{d:?} is not a level or a TARGET=LEVEL directive"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(spec)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Loads the configuration: `--config FILE`, or the embedded default
/// (whose implicit `owner_is_admin` makes this broker's own user an
/// administrator).
fn load_config(path: Option<&PathBuf>) -> Result<Config, warden_policy::ConfigError> {
    let config = match path {
        Some(p) => Config::load(p, &SystemResolver),
        None => Config::embedded_default(&SystemResolver),
    }?;
    Ok(config.admit_owner(warden_sys::effective_uid()))
}

/// Loads the configuration the broker was started with again, for SIGHUP
/// and `warden.reload` alike. Warnings are logged once: those already
/// logged (at start or by an earlier reload) are not repeated.
#[derive(Debug)]
struct Reloader {
    path: Option<PathBuf>,
    warned: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct warnings remembered as already logged, at most (a config has
/// a few; the cap only bounds a pathological one).
const WARNED_MAX: usize = 1024;

impl Reloader {
    fn new(path: Option<PathBuf>, logged_at_start: &[String]) -> Reloader {
        Reloader {
            path,
            warned: std::sync::Mutex::new(logged_at_start.iter().cloned().collect()),
        }
    }

    fn load(&self) -> Result<Config, warden_policy::ConfigError> {
        let c = load_config(self.path.as_ref())?;
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for w in &c.warnings {
            if !warned.contains(w) {
                tracing::warn!("{w}");
                if warned.len() < WARNED_MAX {
                    warned.insert(w.clone());
                }
            }
        }
        Ok(c)
    }
}

/// The socket when neither the flag nor the config names one.
fn default_socket() -> anyhow::Result<PathBuf> {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR");
    warden_service::default_socket_path(warden_sys::effective_uid(), xdg.as_deref()).map_err(|e| {
        anyhow::anyhow!(
            "{e}: pass --socket PATH (in a directory only you can write) or set broker.socket \
             in the config"
        )
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(cgroup) = &args.reaper_for {
        // The hosts' reaper (see hosts.rs): nothing else of wardend runs.
        return match warden_supervisor::reaper_main(cgroup) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                say(format_args!("wardend --reaper-for: {e}"));
                ExitCode::from(1)
            }
        };
    }
    if args.print_default_config {
        return print_out(DEFAULT_CONFIG);
    }
    if let Err(e) = check_log_level(&args.log_level) {
        // A usage error, like any other bad argument: nothing started yet.
        say(format_args!(
            "wardend: invalid --log-level {:?}: {e}\n\
             use error, warn, info, debug or trace, or a tracing filter such as \"info,warden=debug\""
            ,args.log_level
        ));
        return ExitCode::from(2);
    }
    let sink = init_logging(&args);

    let config = match load_config(args.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            say(format_args!("wardend: invalid configuration: {e}"));
            return ExitCode::from(1);
        }
    };
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    if args.check_config {
        return print_out(&format!(
            "{}: ok ({} rules, {} warnings)\n",
            config.source,
            config.policy.rule_count(),
            config.warnings.len()
        ));
    }
    let result = run(args, config, sink.clone());
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    if let Some(sink) = &sink {
        if sink.dropped() > 0 {
            tracing::warn!(
                dropped = sink.dropped(),
                "log lines were dropped: stderr was closed or did not keep up"
            );
        }
        // Give the writer a moment to finish; a stalled stderr does not
        // hold up the exit.
        sink.flush(std::time::Duration::from_secs(1));
    } else if let Err(e) = &result {
        say(format_args!("wardend: {e:#}"));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<warden::ServeError>().is_some() => {
            ExitCode::from(EXIT_INTERNAL_PANIC)
        }
        Err(_) => ExitCode::from(1),
    }
}

/// Exit status when a task of the broker itself panicked (`EX_SOFTWARE`
/// from sysexits.h): the service manager's `Restart=on-failure` restarts
/// it with clean state.
const EXIT_INTERNAL_PANIC: u8 = 70;

/// With test hooks on, a handler that panics (to test that a handler's
/// panic stays confined to its call).
#[cfg(feature = "test-hooks")]
const TEST_PANIC_HANDLER: &str = "test.panic_in_handler";

#[cfg(feature = "test-hooks")]
struct PanickingHandler;

#[cfg(feature = "test-hooks")]
impl warden::Handler for PanickingHandler {
    fn call(&self, _: warden::HandlerContext, _: warden_proto::Payload) -> warden::HandlerFuture {
        Box::pin(async { panic!("test hook: a panic inside a handler") })
    }
}

/// Where the listening socket came from.
enum Endpoint {
    /// Bound by wardend: removed at exit.
    Bound(warden_sys::BoundEndpoint),
    /// Passed by the service manager: left alone at exit.
    Inherited,
}

/// Environment variable that enables test hooks (SIGUSR1 stalls the accept
/// loop for 5 s, the `test.panic_in_handler` handler, the broker's
/// `warden.test.panic_connection`). Read only by a wardend built with
/// `--features test-hooks` (which `scripts/test` builds into its own target
/// directory, for the cross tests); a plain build has none of this code and
/// ignores the variables.
#[cfg(feature = "test-hooks")]
const TEST_HOOKS_ENV: &str = "WARDEND_TEST_HOOKS";
/// With test hooks on: milliseconds `learn.start` waits between checking
/// the target process and attaching (to test pid-reuse races).
#[cfg(feature = "test-hooks")]
const TEST_ATTACH_DELAY_ENV: &str = "WARDEND_TEST_LEARN_ATTACH_DELAY_MS";

/// Whether the test hooks are on: only in a `test-hooks` build, and only
/// with `WARDEND_TEST_HOOKS=1`.
#[cfg(feature = "test-hooks")]
fn test_hooks_on() -> bool {
    std::env::var(TEST_HOOKS_ENV).is_ok_and(|v| v == "1")
}

/// The pause between checking a learning target and attaching (test hooks
/// only; zero otherwise).
#[cfg(feature = "test-hooks")]
fn test_attach_delay(test_hooks: bool) -> std::time::Duration {
    if !test_hooks {
        return std::time::Duration::ZERO;
    }
    std::env::var(TEST_ATTACH_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
        .unwrap_or_default()
}

/// File descriptors each connection costs the broker: its socket and the
/// pidfd that pins the peer process.
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors the broker needs besides connections (listener, runtime,
/// log, learning mode's BPF objects), with room to spare.
const FDS_BASELINE: u64 = 256;

/// Warns when `max_connections` cannot be reached under the open-file
/// limit: connections past it would be refused with "out of file
/// descriptors" instead of the documented `limit_exceeded`.
fn warn_if_nofile_too_low(nofile: u64, max_connections: u64) {
    let needed = max_connections
        .saturating_mul(FDS_PER_CONNECTION)
        .saturating_add(FDS_BASELINE);
    if nofile < needed {
        tracing::warn!(
            nofile,
            max_connections,
            needed,
            reachable = nofile.saturating_sub(FDS_BASELINE) / FDS_PER_CONNECTION,
            "limits.max_connections cannot be reached under the open-file limit \
             (each connection costs {FDS_PER_CONNECTION} descriptors): raise LimitNOFILE \
             or lower max_connections"
        );
    }
}

/// How often the broker looks whether connections went away.
const TRIM_CHECK: std::time::Duration = std::time::Duration::from_secs(2);
/// Connections closed since the last trim that make the next check give
/// memory back even while more are still closing.
const TRIM_AFTER_CLOSED: u64 = 1024;

/// Gives the heap's free memory back to the kernel once connections have
/// closed: the allocator would otherwise keep its high-water mark
/// resident. It trims at the first check after closures settle (none
/// since the previous check), and also every [`TRIM_AFTER_CLOSED`]
/// closures while they go on (then once more after they settle); nothing
/// while no connection closes. Closures are counted by the broker, so a
/// burst that opens and closes between two checks is not missed.
async fn give_back_memory(broker: Broker) {
    let mut seen = broker.connections_closed();
    let mut closed = 0u64;
    let mut settle_pending = false;
    let mut tick = tokio::time::interval(TRIM_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let total = broker.connections_closed();
        let closing = total > seen;
        closed += total - seen.min(total);
        seen = total;
        settle_pending |= closing;
        let storm = closing && closed >= TRIM_AFTER_CLOSED;
        if storm || (!closing && settle_pending) {
            broker.compact();
            // malloc_trim walks every arena: a blocking thread's job.
            let _ = tokio::task::spawn_blocking(warden_sys::release_free_heap).await;
            tracing::debug!(closed, "connections closed; gave free memory back");
            closed = 0;
            settle_pending = closing;
        }
    }
}

fn run(args: Args, config: Config, log: Option<LogSink>) -> anyhow::Result<()> {
    // Before threads: keeps glibc from raising its thresholds after a
    // burst of connections, so their memory goes back (with the trims of
    // `give_back_memory`) instead of staying resident.
    if !warden_sys::fix_heap_thresholds() {
        tracing::debug!("allocator thresholds left as they are (not glibc)");
    }
    match warden_sys::raise_nofile_limit() {
        Ok((old, new)) => {
            if old != new {
                tracing::info!(old, new, "raised the open-file limit");
            }
            warn_if_nofile_too_low(new, config.limits.max_connections);
        }
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    // Socket activation first (it edits the environment: before any
    // thread starts), else bind our own socket.
    let (std_listener, endpoint, socket) = match warden_sys::inherited_listener()
        .context("socket activation")?
    {
        Some(inherited) => {
            let shown = inherited
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("<unnamed>"));
            if let Some(flag) = &args.socket {
                if inherited.path.as_ref() != Some(flag) {
                    tracing::warn!(flag = %flag.display(), inherited = %shown.display(),
                        "--socket ignored: the service manager passed a listening socket");
                }
            }
            (inherited.listener, Endpoint::Inherited, shown)
        }
        None => {
            let socket = match args.socket.clone().or_else(|| config.broker.socket.clone()) {
                Some(s) => s,
                None => default_socket()?,
            };
            let spec = warden_sys::EndpointSpec {
                path: socket.clone(),
                mode: config.broker.socket_mode,
                group: config.broker.socket_group.as_ref().map(|(_, gid)| *gid),
                create_dir: true,
            };
            // Bind before starting any thread: binding sets the process umask.
            let mut bound = warden_sys::bind_secure(&spec)
                .with_context(|| format!("cannot listen on {}", socket.display()))?;
            if bound.reclaimed_stale() {
                tracing::info!(path = %socket.display(), "removed a stale socket left by an earlier broker");
            }
            let l = bound
                .take_listener()
                .context("the endpoint has no listener")?;
            (l, Endpoint::Bound(bound), socket)
        }
    };
    let watchdog = sd_notify::watchdog_enabled();
    #[cfg(feature = "test-hooks")]
    let test_hooks = test_hooks_on();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wardend")
        .build()
        .context("cannot start the async runtime")?;
    let reloader = std::sync::Arc::new(Reloader::new(args.config.clone(), &config.warnings));
    let result = runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(std_listener)
            .context("cannot register the listener with the runtime")?;
        let for_builtin = std::sync::Arc::clone(&reloader);
        let hosts_view = hosts::HostsView::default();
        let view = hosts_view.clone();
        let mut builder = Broker::builder(&config).reloader(move || {
            let loaded = for_builtin.load();
            if loaded.is_ok() {
                view.restart_failed();
            }
            loaded
        });
        let learn = config.learn.enabled.then(|| {
            warden_learn::service::LearnService::new(warden_learn::service::LearnSettings {
                max_sessions_per_uid: config.learn.max_sessions_per_uid,
                max_tracked_per_uid: config.learn.max_tracked_per_uid,
                #[cfg(feature = "test-hooks")]
                attach_delay: test_attach_delay(test_hooks),
                #[cfg(not(feature = "test-hooks"))]
                attach_delay: std::time::Duration::ZERO,
            })
        });
        if let Some(learn) = &learn {
            for (m, h) in learn.handlers() {
                builder = builder.handler(m, h).context("registering learning mode")?;
            }
        }
        if let Some(w) = watchdog {
            builder = builder.heartbeat_interval(w / 4);
        }
        builder = hosts::register(builder, &hosts_view)?;
        if config
            .hosts
            .iter()
            .any(|h| h.scope == warden_policy::HostScope::Session)
        {
            builder = builder.session_lookup(sessions::LogindLookup::new(&config.sessions));
        }
        #[cfg(feature = "test-hooks")]
        if test_hooks {
            builder = builder
                .test_hooks(true)
                .handler(TEST_PANIC_HANDLER, PanickingHandler)
                .context("registering the test hooks")?;
        }
        let broker = builder.build();
        let hosts = if config.hosts.is_empty() {
            None
        } else {
            Some(hosts::Hosts::start(&config.hosts, &config.sessions, &socket, &broker, &hosts_view)?)
        };
        let (trigger, shutdown) = Shutdown::new();
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut int =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
        // SIGUSR1 is caught in every build, so a stray one never kills the
        // broker (its default action): a test-hooks build with
        // WARDEND_TEST_HOOKS=1 stalls the accept loop for 5 s, any other
        // wardend ignores it.
        let mut usr1 =
            signal(SignalKind::user_defined1()).context("cannot install the SIGUSR1 handler")?;
        let signals_broker = broker.clone();
        let signals_hosts = hosts_view.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break }
                    _ = int.recv() => { tracing::info!("SIGINT: stopping"); break }
                    _ = hup.recv() => {
                        let (broker, reloader) = (signals_broker.clone(), std::sync::Arc::clone(&reloader));
                        let hosts = signals_hosts.clone();
                        // Reading the file and resolving names block.
                        let _ = tokio::task::spawn_blocking(move || reload(&broker, &reloader, &hosts)).await;
                    }
                    _ = usr1.recv() => {
                        #[cfg(feature = "test-hooks")]
                        if test_hooks {
                            signals_broker.stall_loop_for_test(std::time::Duration::from_secs(5));
                            continue;
                        }
                        tracing::debug!("SIGUSR1 ignored");
                    }
                }
            }
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            trigger.trigger();
        });
        tracing::info!(
            socket = %socket.display(),
            config = %config.source,
            server = warden::SERVER_NAME,
            watchdog_ms = watchdog.map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
            "listening"
        );
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        spawn_notifier(broker.clone(), watchdog, log);
        tokio::spawn(give_back_memory(broker.clone()));
        tokio::spawn(flush_audit());
        let served = broker.serve(listener, shutdown).await;
        if let Some(hosts) = hosts {
            hosts.stop().await;
        }
        if let Some(learn) = &learn {
            learn.stop_all().await;
        }
        served?;
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Endpoint::Bound(bound) = &endpoint {
        if let Err(e) = bound.remove_socket() {
            tracing::warn!(error = %e, "could not remove the socket");
        }
    }
    tracing::info!("stopped");
    result
}

/// SIGHUP: load the configuration again and swap the policy in, or keep
/// the old one if the new file is invalid (the same load as
/// `warden.reload`).
fn reload(broker: &Broker, reloader: &Reloader, hosts: &hosts::HostsView) {
    use warden::audit::{record, Actor, Record};
    match reloader.load() {
        Ok(c) => {
            record(Record {
                actor: &Actor::none(),
                action: "policy.reload",
                target: c.source.as_str().into(),
                rule: None,
                result: "ok",
                message: "SIGHUP: policy reloaded (limits and socket settings take effect at the next start)",
                extra: serde_json::json!({ "rules": c.policy.rule_count(), "warnings": c.warnings.len(), "signal": "SIGHUP" }),
            });
            broker.set_policy(c.policy);
            hosts.restart_failed();
        }
        Err(e) => record(Record {
            actor: &Actor::none(),
            action: "policy.reload",
            target: e.file.as_str().into(),
            rule: None,
            result: "failed",
            message: "SIGHUP: the new configuration is invalid, keeping the old policy",
            extra: serde_json::json!({ "error": e.to_string(), "signal": "SIGHUP" }),
        }),
    }
}

/// Reports, every audit window, what the audit log's rate limit held
/// back in windows that have ended (see `warden::audit`).
async fn flush_audit() {
    let mut tick = tokio::time::interval(warden::audit::AUDIT_WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        warden::audit::flush();
    }
}

/// A thread, outside the async runtime, that sends `STATUS=` lines and,
/// when the service manager asked for it, `WATCHDOG=1` at half the
/// interval, but only while the broker's accept loop is turning.
fn spawn_notifier(broker: Broker, watchdog: Option<std::time::Duration>, log: Option<LogSink>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let every = watchdog
        .map(|w| w / 2)
        .unwrap_or(std::time::Duration::from_secs(5));
    let spawned = std::thread::Builder::new()
        .name("wardend-notify".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let mut status = format!("serving {} connections", broker.connection_count());
            if let Some(dropped) = log.as_ref().map(LogSink::dropped).filter(|&n| n > 0) {
                status.push_str(&format!(
                    "; {dropped} log lines dropped (stderr closed or slow)"
                ));
            }
            let mut states = vec![sd_notify::NotifyState::Status(&status)];
            if let Some(w) = watchdog {
                let age = broker.loop_heartbeat_age();
                if age < w * 3 / 4 {
                    states.push(sd_notify::NotifyState::Watchdog);
                } else {
                    tracing::error!(
                        ?age,
                        "the accept loop is not turning: withholding the watchdog ping"
                    );
                }
            }
            let _ = sd_notify::notify(&states);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the notification thread");
    }
}
