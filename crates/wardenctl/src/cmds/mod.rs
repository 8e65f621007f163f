//! The subcommands, one module per noun, and what they share: the
//! connection to the broker, and names for uids and gids.

use serde_json::Value;
use warden_client::{Client, ConnectOptions, Event, ServerTrust};
use warden_proto::Payload;

use crate::cli::Cli;
use crate::error::Error;

pub mod basic;
pub mod hosts;
pub mod install;
pub mod invite;
pub mod learn;
pub mod list;
pub mod metrics;
pub mod monitor;
pub mod policy;
pub mod pubsub;
pub mod reload;
pub mod status;
pub mod top;

fn default_socket() -> String {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR");
    warden_service::client_socket_path(xdg.as_deref())
        .to_string_lossy()
        .into_owned()
}

/// The invitation `main` took out of `$WARDEN_INVITATION` before
/// anything else ran (see [`take_env_invitation`]).
static ENV_INVITATION: std::sync::OnceLock<
    Result<Option<warden_client::Invitation>, warden_proto::invitation::TokenError>,
> = std::sync::OnceLock::new();

/// Takes the invitation out of `$WARDEN_INVITATION` (removing it from the
/// environment and overwriting its bytes, so `/proc/PID/environ` no longer
/// shows it). `main` calls it first, before any thread exists.
pub fn take_env_invitation() {
    let _ = ENV_INVITATION.set(warden_client::take_invitation_from_env());
}

/// The invitation to join with: `--invite-file`, else the environment's.
fn invitation(cli: &Cli) -> Result<Option<warden_client::Invitation>, Error> {
    if let Some(path) = &cli.invite_file {
        return warden_client::Invitation::from_file(path)
            .map(Some)
            .map_err(Error::Usage);
    }
    match ENV_INVITATION.get() {
        None | Some(Ok(None)) => Ok(None),
        Some(Ok(Some(i))) => Ok(Some(i.clone())),
        Some(Err(e)) => Err(Error::Usage(format!(
            "${}: {e}",
            warden_client::INVITATION_ENV
        ))),
    }
}

/// How to reach the broker: `--socket`, `--timeout`, `--server-uid`, and
/// the invitation to join with (`--invite-file`, `$WARDEN_INVITATION`).
pub fn connect_options(cli: &Cli) -> Result<ConnectOptions, Error> {
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let mut opts = ConnectOptions::new(socket)
        .connect_timeout(cli.timeout)
        .call_timeout(Some(cli.timeout));
    opts.client_name = concat!("wardenctl/", env!("CARGO_PKG_VERSION")).to_owned();
    if let Some(uid) = cli.server_uid {
        opts.trust = ServerTrust::Pin(uid);
    }
    if let Some(i) = invitation(cli)? {
        opts = opts.invitation(i);
    }
    Ok(opts)
}

/// Connects to the broker.
pub async fn connect(cli: &Cli) -> Result<Client, Error> {
    Ok(Client::connect(connect_options(cli)?).await?)
}

/// The failure of a stream whose connection closed.
pub fn closed(client: &Client) -> Error {
    Error::Closed {
        reason: client.last_error(),
    }
}

/// The topic on which the broker announces what a policy reload took away
/// from this connection.
const REVOKED_TOPIC: &str = "warden.policy.revoked";

/// If `ev` says a reload revoked the subscription to `topic`, the failure
/// that ends the command.
pub fn revoked(ev: &Event, topic: &str) -> Option<Error> {
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
        Error::Revoked(format!(
            "the broker revoked the subscription to {topic}: a policy reload no longer allows it"
        ))
    })
}

/// JSON from the command line (`what`: which argument).
pub fn parse_json(what: &str, text: &str) -> Result<Payload, Error> {
    Payload::from_raw_json(text).map_err(|e| Error::Usage(format!("{what}: {e}")))
}

/// `uid(name)`, or the bare uid when it has no name.
pub fn user_name(uid: u64) -> String {
    u32::try_from(uid)
        .ok()
        .and_then(|u| warden_sys::user_by_uid(u).ok().flatten())
        .map(|u| format!("{uid}({})", u.name))
        .unwrap_or_else(|| uid.to_string())
}

/// `gid(name)`, or the bare gid when it has no name.
pub fn group_name(gid: u64) -> String {
    u32::try_from(gid)
        .ok()
        .and_then(|g| warden_sys::group_name(g).ok().flatten())
        .map(|n| format!("{gid}({n})"))
        .unwrap_or_else(|| gid.to_string())
}
