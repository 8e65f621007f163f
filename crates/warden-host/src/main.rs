//! `warden-host --name NAME MODULE…`: the child host process.
//!
//! wardend starts it (see `warden-supervisor`) as the host's configured
//! user, with its channel to the broker on stdin (one end of a
//! `socketpair`: no path anyone could squat). The host:
//!
//! 1. makes itself non-dumpable, so the account it runs as cannot ptrace
//!    it and borrow its connection;
//! 2. moves the channel off fd 0 to a close-on-exec descriptor (a
//!    module's children do not inherit it) and says hello over it; the
//!    broker gave the connection the identity it assigned at spawn;
//! 3. opens each module with [`warden_sys::open_trusted_file`] (root's,
//!    writable by nobody else, no symlink, from `/` down) and loads it by
//!    that descriptor (`/proc/self/fd/N`), so the file checked is the
//!    file loaded; checks its ABI version; calls its `init`;
//! 4. registers every method the modules declare (`provide`) and serves
//!    them: each call runs the module's `call` on a blocking thread with
//!    the caller's identity as the broker attached it;
//! 5. loads, unloads and reloads modules when the broker says so (see
//!    [`modules`]).
//!
//! A module that crashes the process takes down only this host; the
//! broker's supervisor restarts it and callers get `unavailable`
//! meanwhile. Logs go to stderr, which the broker reads into its own log.
#![expect(
    unsafe_code,
    reason = "loading a module and calling through its C ABI; each block says why it is sound"
)]

mod module;
mod modules;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use warden_client::{Client, ConnectOptions, ErrorCode, IncomingCall, WireError};

use crate::module::HostContext;
use crate::modules::ModuleSet;

/// Calls a host runs at once (each on a blocking thread).
const CONCURRENCY: usize = 64;

struct Args {
    name: String,
    modules: Vec<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args_os().skip(1);
    let mut name = None;
    let mut modules = Vec::new();
    while let Some(a) = args.next() {
        if a == "--name" {
            let v = args.next().ok_or("--name needs a value")?;
            name = Some(v.into_string().map_err(|_| "--name is not UTF-8")?);
        } else if a.to_str().is_some_and(|s| s.starts_with('-')) {
            return Err(format!("unknown option {a:?}"));
        } else {
            modules.push(PathBuf::from(a));
        }
    }
    let name = name.ok_or("--name NAME is required")?;
    Ok(Args { name, modules })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("warden-host: {e}\nusage: warden-host --name NAME MODULE... (started by wardend, with its channel on stdin)");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = warden_sys::make_non_dumpable() {
        tracing::error!("cannot make the host non-dumpable: {e}");
        return ExitCode::from(1);
    }
    let channel = match warden_sys::take_stdin_socket() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    // I/O and timers only: no signal driver (its socketpair would be one
    // more descriptor in every host).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(args, channel)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(args: Args, channel: std::os::unix::net::UnixStream) -> Result<(), String> {
    let client = Client::over_stream(channel, ConnectOptions::new("the broker channel (stdin)"))
        .await
        .map_err(|e| format!("hello to the broker: {e}"))?;
    let client = Arc::new(client);
    let session = client.welcome().identity.session.clone();
    let ctx = HostContext::new(
        &args.name,
        session.as_deref(),
        Arc::clone(&client),
        tokio::runtime::Handle::current(),
    );
    let modules = ModuleSet::new(ctx, Arc::clone(&client));
    modules.load_initial(&args.modules).await?;
    client
        .serve(&[], CONCURRENCY, |call: IncomingCall| {
            let modules = Arc::clone(&modules);
            async move {
                if call.method.as_str() == modules::CONTROL_METHOD {
                    // Only the broker sends reserved names (see modules.rs).
                    return modules.control(&call.params).await;
                }
                let Some(module) = modules.serving(call.method.as_str()) else {
                    return Err(WireError::new(
                        ErrorCode::UnknownMethod,
                        format!("no module of this host serves {}", call.method.as_str()),
                    ));
                };
                if module.quick {
                    // The module says its calls never block: no handoff.
                    return module.call(&call);
                }
                tokio::task::spawn_blocking(move || module.call(&call))
                    .await
                    .map_err(|_| WireError::new(ErrorCode::Internal, "the module call failed"))?
            }
        })
        .await
        .map_err(|e| format!("serving: {e}"))?;
    tracing::info!("the broker closed the channel; exiting");
    drop(modules);
    Ok(())
}
