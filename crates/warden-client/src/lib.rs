//! The async Rust client for the Warden broker.
//!
//! [`Client::connect`] connects to the broker's socket, checks **before
//! sending a single byte** that the process listening there runs as a
//! trusted uid (see [`ServerTrust`]), and performs the hello. A [`Client`]
//! is shared by reference (or in an `Arc`) among any number of tasks: calls
//! made concurrently are multiplexed on the one connection.
//!
//! Nothing waits forever: connecting and the hello are bounded by
//! [`ConnectOptions::connect_timeout`], and every request/reply (calls,
//! subscribe, publish, provide) by [`ConnectOptions::call_timeout`]. The
//! default call timeout is longer than the broker's own default call
//! deadline (`limits.call_timeout_ms`, 30 s), so a slow provider yields the
//! broker's `timeout` error rather than the client's. Streams
//! ([`Client::next_event`], [`Client::next_call`]) wait as long as asked.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use warden_client::{Client, ConnectOptions, Payload};
//! let client = Client::connect(ConnectOptions::new("/run/warden/warden.sock")).await?;
//! // Raw JSON in and out:
//! let pong: Payload = client.call("warden.echo", Payload::from_raw_json("[1,2]")?).await?;
//! // Any `Serialize` in, any `Deserialize` out:
//! #[derive(serde::Deserialize)]
//! struct WhoAmI { uid: u32 }
//! let who: WhoAmI = client.call_as("warden.whoami", &()).await?;
//! // serde_json values, for scripts:
//! let v = client.call_json("warden.echo", serde_json::json!({"a": 1})).await?;
//! println!("uid {}, echo {v}, {}", who.uid, pong.get());
//! # Ok(()) }
//! ```
//!
//! A provider serves calls concurrently with [`Client::serve`]:
//!
//! ```no_run
//! # async fn demo(client: warden_client::Client) -> Result<(), warden_client::CallError> {
//! use warden_client::{IncomingCall, Payload, WireError};
//! client
//!     .serve(&["net.vpn.status"], 32, |call: IncomingCall| async move {
//!         // `call.caller` is the identity the broker attached.
//!         Ok::<Payload, WireError>(call.params)
//!     })
//!     .await
//! # }
//! ```
//!
//! # How a call travels
//!
//! The hot path costs what the protocol costs: one `write` and one `read`
//! per round trip, on the caller's own task, with no thread hop of the
//! client's making.
//!
//! * **Which runtime.** Tokio's multi-thread runtime (`#[tokio::main]`)
//!   runs the main future on `block_on`, outside its worker threads; the
//!   worker that polls the I/O driver wakes it, so each answer awaited
//!   there costs a thread hop of tokio's (two context switches and a futex
//!   wake). A task spawned on that runtime, or any task on a
//!   current-thread runtime (`#[tokio::main(flavor = "current_thread")]`),
//!   is woken on the thread that saw the socket become readable. A program
//!   whose calls are awaited one at a time (a CLI, a helper) gets the
//!   lowest latency from the current-thread runtime; `warden-bench`
//!   measures both.
//! * **Sending.** A call acquires an in-flight slot (a semaphore sized from
//!   the welcome's `limits.max_in_flight`, so calls *wait* instead of
//!   getting `limit_exceeded`), encodes its frame into a reused per-thread
//!   buffer and appends it to the connection's outgoing buffer. The
//!   caller's first poll of its answer writes everything queued, unless a
//!   write is in progress: callers arriving meanwhile just append, and
//!   their frames leave in the same `write`. Calls started one after
//!   another with [`Client::start_call`] leave together at the first poll
//!   of one of their answers; a started call never waits for that, since
//!   the background writer is asked to write it as soon as the runtime
//!   gets to it. If
//!   the socket is full, a background writer finishes the job when it has
//!   room, so a caller never owns unsent bytes.
//! * **Receiving (leader/follower).** One party at a time holds the *read
//!   role*. A caller that finds nobody but the background reader holding
//!   it takes it and reads the socket itself until its own answer arrives,
//!   dispatching every other frame on the way (answers to their callers'
//!   slots, events and incoming calls to their queues). Then it hands the
//!   role to another waiting caller, or back to the background reader,
//!   which holds it whenever nobody awaits an answer (so events, incoming
//!   calls and the connection's end are noticed with no call in flight).
//!   A handover registers the new holder for read readiness rather than
//!   waking it, unless bytes are already waiting. Frames are decoded in
//!   place from one reused, never zero-filled receive buffer.
//! * **Cancel safety.** The receive buffer (with any partially read frame)
//!   and the outgoing buffer live in the shared state; a future borrows
//!   them only inside one `poll`. Dropping a call future mid-read hands the
//!   role over and loses nothing; for a call, it also sends `cancel`, and
//!   its in-flight slot is freed when the broker's answer arrives.
//! * **Errors.** An answer whose envelope or payload cannot be decoded
//!   answers its call with [`CallError::BadAnswer`]; a frame that names no
//!   request of this client is logged and dropped; broken framing (or EOF)
//!   ends the connection and every waiting call gets
//!   [`CallError::Disconnected`].
//! * **Back-pressure.** Events and incoming calls wait in bounded queues
//!   (4096 each); when one is full the client stops reading the socket
//!   until the application takes some, as the broker expects of a slow
//!   reader (it then counts dropped events as `missed`).
//!
//! # Attacker model
//! The socket path may be squatted by another user (an abstract name, or a
//! path under a world-writable directory). The server-uid check is what
//! stops a client from handing its requests to an impostor.

mod conn;

use std::borrow::Borrow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use warden_proto::{FrameDecoder, Hello, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION};

pub use conn::PendingCall;
use conn::Shared;
pub use warden_proto::{
    CallTarget, ErrorCode, Identity, Message, MethodName, Payload, RequestId, TopicName, Welcome,
    WelcomeLimits, WireError,
};
pub use warden_sys::ServerTrust;

/// Default time for connecting and the hello/welcome exchange.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connect is retried while the broker's listen queue is full
/// (at most half the connect timeout) before [`ConnectError::NotAccepting`].
const QUEUE_FULL_PATIENCE: Duration = Duration::from_secs(1);
/// Default time a request waits for its answer: the broker's default call
/// deadline (30 s) plus 5 s, so the broker's `timeout` answer arrives first.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(35);

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Socket path, or `@name` for an abstract socket.
    pub socket: String,
    /// Which server uids to accept.
    pub trust: ServerTrust,
    /// Client software name sent in the hello.
    pub client_name: String,
    /// Bound on connecting plus the hello/welcome exchange.
    pub connect_timeout: Duration,
    /// Bound on each request/reply; `None` waits as long as the broker
    /// keeps the connection open.
    pub call_timeout: Option<Duration>,
    /// An invitation to join with (see [`ConnectOptions::invitation`]).
    pub invitation: Option<Invitation>,
}

/// The environment variable a process may be handed its invitation in
/// (`wardenctl` reads it; so does [`take_invitation_from_env`]).
pub const INVITATION_ENV: &str = "WARDEN_INVITATION";

/// An invitation token, checked for form (prefix, length, characters,
/// version, checksum) before anything is sent. Printed as `[REDACTED]`;
/// its text is zeroized when dropped.
#[derive(Clone)]
pub struct Invitation(warden_proto::invitation::InvitationText);

impl Invitation {
    /// Checks a token's form. A mistyped or truncated token is refused
    /// here, without asking the broker.
    ///
    /// # Errors
    /// [`TokenError`](warden_proto::invitation::TokenError), which never
    /// contains the token.
    pub fn parse(token: &str) -> Result<Invitation, warden_proto::invitation::TokenError> {
        let t = warden_proto::invitation::Token::parse(token)?;
        Ok(Invitation(warden_proto::invitation::InvitationText::new(
            t.expose().to_string(),
        )))
    }

    /// Reads a token from a file (surrounding whitespace ignored), the way
    /// `wardenctl --invite-file` does.
    ///
    /// # Errors
    /// A message naming the file: it cannot be read, or is not a token.
    pub fn from_file(path: &std::path::Path) -> Result<Invitation, String> {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the invitation file {}: {e}", path.display()))?,
        );
        Invitation::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Invitation([REDACTED])")
    }
}

/// Takes the invitation out of [`INVITATION_ENV`]: reads it, removes the
/// variable, and overwrites its bytes where they lie, so
/// `/proc/PID/environ` no longer shows it (children started later do not
/// inherit it either). `Ok(None)` if the variable is not set.
///
/// **Call before starting threads** (first thing in `main`, before a
/// tokio runtime is built): the environment is process-wide, and another
/// thread reading it meanwhile is undefined behaviour in the C library.
///
/// # Errors
/// The token's form is wrong (it is removed all the same).
pub fn take_invitation_from_env() -> Result<Option<Invitation>, warden_proto::invitation::TokenError>
{
    let Some(text) = warden_sys::take_env_scrubbed(INVITATION_ENV) else {
        return Ok(None);
    };
    let text = zeroize::Zeroizing::new(text);
    Invitation::parse(&text).map(Some)
}

impl ConnectOptions {
    /// Default options for a socket path.
    pub fn new(socket: impl Into<String>) -> Self {
        ConnectOptions {
            socket: socket.into(),
            trust: ServerTrust::Default,
            client_name: concat!("warden-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            invitation: None,
        }
    }

    /// Joins with this invitation: the connection holds its role (see
    /// [`Welcome::role`](warden_proto::Welcome::role)) for its lifetime. A
    /// refused invitation fails the connect with
    /// [`ConnectError::Refused`]: `bad_request` for a malformed token,
    /// `denied` for one that is unknown, revoked, expired, used up or not
    /// for this user.
    pub fn invitation(mut self, invitation: Invitation) -> Self {
        self.invitation = Some(invitation);
        self
    }

    /// Bounds connecting plus the hello (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds each request/reply (default [`DEFAULT_CALL_TIMEOUT`]; `None`:
    /// no bound).
    pub fn call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Accept only a server running as `uid`.
    pub fn server_uid(mut self, uid: u32) -> Self {
        self.trust = ServerTrust::Pin(uid);
        self
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The broker's listen queue is full: it is not accepting connections
    /// (overloaded or stuck). Reported after a short retry, well within
    /// [`ConnectOptions::connect_timeout`]; nothing was sent.
    #[error("the broker at {path} is not accepting connections (its listen queue is full): it is overloaded or stuck; try again later")]
    NotAccepting {
        /// The socket.
        path: String,
    },
    /// The server is not who it should be. Nothing was sent to it.
    #[error(transparent)]
    ServerIdentity(#[from] warden_sys::ServerCheckError),
    /// The broker refused the connection (e.g. a connection limit).
    #[error("the broker refused the connection: {0}")]
    Refused(WireError),
    /// Connecting and the hello did not finish in time: the broker is
    /// overloaded or stuck, or something else listens on the socket.
    #[error("no welcome from {path} within {after:?}: the broker is not answering")]
    Timeout {
        /// The socket.
        path: String,
        /// The bound that passed.
        after: Duration,
    },
    /// The hello/welcome exchange failed.
    #[error("handshake with {path} failed: {reason}")]
    Handshake {
        /// The socket.
        path: String,
        /// What went wrong, with the underlying error's text if there is
        /// one (so this message alone says it all).
        reason: String,
        /// The underlying error (an OS error while sending or reading, or
        /// the welcome's decoding error), if there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The broker (or the provider) answered with an error.
    #[error("{0}")]
    Remote(WireError),
    /// The connection closed before the answer arrived.
    #[error("the connection to the broker closed{}", .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Disconnected {
        /// The broker's last word, if it said one.
        reason: Option<WireError>,
    },
    /// The request does not fit in a frame.
    #[error("request too large for the frame limit of {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// A name was invalid.
    #[error("invalid name {name:?}: {source}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: warden_proto::NameError,
    },
    /// The answer could not be parsed into the type asked for.
    #[error("cannot parse the answer: {0}")]
    Parse(#[from] serde_json::Error),
    /// The params could not be serialized.
    #[error("cannot serialize the params: {0}")]
    BadParams(#[source] serde_json::Error),
    /// The broker's answer to this request could not be decoded (a
    /// malformed envelope or payload); the connection goes on.
    #[error("bad answer from the broker: {reason}")]
    BadAnswer {
        /// What was wrong with it.
        reason: String,
    },
    /// No answer within the call timeout; the request was cancelled.
    #[error("no answer from the broker within {after:?} (the request was cancelled)")]
    Timeout {
        /// The bound that passed.
        after: Duration,
    },
}

impl CallError {
    /// The wire error code, for errors that have one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Remote(e) => Some(e.code),
            _ => None,
        }
    }
}

/// An event received on a subscription.
#[derive(Debug, Clone)]
pub enum Event {
    /// An event.
    Event {
        /// Topic.
        topic: TopicName,
        /// Data.
        data: Payload,
        /// Events dropped before this one.
        missed: u64,
        /// Who published it, per the broker.
        publisher: Option<Identity>,
    },
    /// Events were dropped and not yet reported.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// A call the broker routed to this client as a provider.
#[derive(Debug)]
pub struct IncomingCall {
    /// The broker's id; answer with it.
    pub id: RequestId,
    /// The method.
    pub method: MethodName,
    /// Parameters.
    pub params: Payload,
    /// The caller, as the broker identified it.
    pub caller: Option<Identity>,
}

/// A connection to the broker.
///
/// Share it among tasks by reference or in an `Arc`: concurrent calls are
/// multiplexed, and their frames coalesced into shared writes.
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    welcome: Welcome,
    server_uid: u32,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Client {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.fail("the client was dropped");
    }
}

/// Whether a request takes an in-flight slot (only calls do: the broker
/// answers the others at once) and is cancelled when abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call,
    Other,
}

impl Client {
    /// Connects, checks the server's uid, and performs the handshake.
    ///
    /// Must be called within a Tokio runtime (with I/O and time enabled);
    /// the client spawns two small background tasks on it.
    ///
    /// # Errors
    /// [`ConnectError`]: the socket is unreachable, the server's uid is not
    /// trusted (nothing is sent then), the broker refused, or the handshake
    /// failed.
    pub async fn connect(opts: ConnectOptions) -> Result<Client, ConnectError> {
        let (path, after) = (opts.socket.clone(), opts.connect_timeout);
        match tokio::time::timeout(after, Self::connect_unbounded(opts)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout { path, after }),
        }
    }

    async fn connect_unbounded(opts: ConnectOptions) -> Result<Client, ConnectError> {
        let path = opts.socket.clone();
        let std_stream = Self::connect_socket(&path, opts.connect_timeout).await?;
        let server_uid = {
            use std::os::fd::AsFd;
            warden_sys::verify_server(std_stream.as_fd(), &path, opts.trust)?
        };
        Self::handshake(std_stream, server_uid, opts).await
    }

    /// Connects without blocking. While the broker's listen queue is full
    /// (it is not accepting as fast as clients come, or not at all) the
    /// connect fails at once with `EAGAIN`; it is retried for a moment, to
    /// ride out a burst, then reported as [`ConnectError::NotAccepting`]
    /// (a blocking connect would wait there, silently, until the timeout).
    async fn connect_socket(
        path: &str,
        connect_timeout: Duration,
    ) -> Result<std::os::unix::net::UnixStream, ConnectError> {
        let patience = (connect_timeout / 2).min(QUEUE_FULL_PATIENCE);
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            match warden_sys::connect_unix_nonblocking(path) {
                Ok(s) => return Ok(s),
                Err(e) if warden_sys::is_listen_queue_full(&e) => {
                    if started.elapsed() + pause > patience {
                        return Err(ConnectError::NotAccepting {
                            path: path.to_owned(),
                        });
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(source) => {
                    return Err(ConnectError::Connect {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
    }

    /// Speaks the protocol over a socket that is already connected and
    /// whose other end is trusted by construction: the channel a child host
    /// inherits from the broker that made it (one end of a `socketpair`;
    /// there is no path anyone could have bound first, so there is no
    /// server check). `opts.socket` only names the channel in errors (e.g.
    /// "stdin"); the hello is bounded by `opts.connect_timeout`.
    ///
    /// # Errors
    /// As [`Client::connect`], less the server check.
    pub async fn over_stream(
        stream: std::os::unix::net::UnixStream,
        opts: ConnectOptions,
    ) -> Result<Client, ConnectError> {
        let (path, after) = (opts.socket.clone(), opts.connect_timeout);
        let server_uid = {
            use std::os::fd::AsFd;
            warden_sys::server_uid(stream.as_fd()).map_err(|source| ConnectError::Connect {
                path: path.clone(),
                source,
            })?
        };
        match tokio::time::timeout(after, Self::handshake(stream, server_uid, opts)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout { path, after }),
        }
    }

    /// The hello and welcome on a connected socket.
    async fn handshake(
        std_stream: std::os::unix::net::UnixStream,
        server_uid: u32,
        opts: ConnectOptions,
    ) -> Result<Client, ConnectError> {
        let path = opts.socket.clone();
        std_stream
            .set_nonblocking(true)
            .map_err(|source| ConnectError::Connect {
                path: path.clone(),
                source,
            })?;
        let stream = UnixStream::from_std(std_stream).map_err(|source| ConnectError::Connect {
            path: path.clone(),
            source,
        })?;
        let mut stream = stream;
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: Some(opts.client_name.clone()),
            invitation: opts.invitation.as_ref().map(|i| i.0.clone()),
        });
        let handshake_err = |reason: String| ConnectError::Handshake {
            path: path.clone(),
            reason,
            source: None,
        };
        let caused =
            |what: &str, e: Box<dyn std::error::Error + Send + Sync>| ConnectError::Handshake {
                path: path.clone(),
                reason: format!("{what}: {e}"),
                source: Some(e),
            };
        // The hello may carry a secret: its bytes are zeroized when sent.
        let frame = zeroize::Zeroizing::new(
            hello
                .to_frame(DEFAULT_MAX_FRAME_LEN)
                .ok_or_else(|| handshake_err("hello does not fit in a frame".into()))?,
        );
        drop(hello);
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        if let Err(e) = stream.write_all(&frame[..]).await {
            // A broker that refuses a connection (connection limits,
            // shutdown) sends its reason and closes before reading the
            // hello: the reason waits in the receive buffer.
            if let Ok(Some(body)) = read_frame(&mut stream, &mut decoder).await {
                if let Ok(Message::Error { error, .. }) = Message::decode(&body) {
                    return Err(ConnectError::Refused(error));
                }
            }
            return Err(caused("sending hello", e.into()));
        }
        // Exactly the welcome's bytes: the broker may send the next frame
        // right behind it (a call to a host it just adopted), and that one
        // belongs to the background reader.
        let first = read_one_frame(&mut stream, DEFAULT_MAX_FRAME_LEN)
            .await
            .map_err(|e| caused("reading welcome", e.into()))?;
        let Some(body) = first else {
            return Err(handshake_err("the broker closed the connection".into()));
        };
        let welcome = match Message::decode(&body) {
            Ok(Message::Welcome(w)) => w,
            Ok(Message::Error { error, .. }) => return Err(ConnectError::Refused(error)),
            Ok(other) => {
                return Err(handshake_err(format!(
                    "expected welcome, got {:?}",
                    other.kind()
                )))
            }
            Err(e) => return Err(caused("invalid welcome", e.into())),
        };
        let max_frame = usize::try_from(welcome.limits.max_frame).unwrap_or(DEFAULT_MAX_FRAME_LEN);
        let max_in_flight = usize::try_from(welcome.limits.max_in_flight).unwrap_or(usize::MAX);
        let shared = Arc::new(Shared::new(
            stream,
            max_frame,
            max_in_flight,
            opts.call_timeout,
        ));
        let tasks = [
            tokio::spawn(conn::background_reader(Arc::clone(&shared))),
            tokio::spawn(conn::background_writer(Arc::clone(&shared))),
        ];
        Ok(Client {
            shared,
            welcome,
            server_uid,
            tasks,
        })
    }

    /// The broker's welcome: protocol version, limits, and the identity it
    /// attached to this connection.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The uid the server runs as (checked at connect).
    pub fn server_uid(&self) -> u32 {
        self.server_uid
    }

    /// Queues a request built by `body` (given its id), registering it as
    /// waiting for its answer; calls first wait for an in-flight slot.
    /// Starts a request: waits for an in-flight slot (calls), queues the
    /// frame and registers its answer slot. With `soon`, asks for the frame
    /// to be written even if the answer is not awaited at once
    /// ([`conn::Shared::flush_soon`]); without, the caller awaits the
    /// answer straight away and its first poll writes the frame.
    async fn begin(
        &self,
        kind: Kind,
        soon: bool,
        body: impl FnOnce(&mut Vec<u8>, RequestId) -> Result<(), CallError>,
    ) -> Result<PendingCall, CallError> {
        let counted = kind == Kind::Call;
        if counted {
            match self.shared.permits.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => return Err(self.shared.disconnected()),
            }
        }
        let id = self.shared.ids.next_id();
        if let Err(e) = self.shared.queue(Some((id, counted)), |b| body(b, id)) {
            if counted {
                self.shared.permits.add_permits(1);
            }
            return Err(e);
        }
        if soon {
            self.shared.flush_soon();
        }
        Ok(PendingCall::new(Arc::clone(&self.shared), id, counted))
    }

    /// Sends a request and waits for its answer, for at most `timeout`
    /// (waiting for an in-flight slot included). Past it, the request is
    /// forgotten and, for a call, a `cancel` is sent.
    async fn exchange(
        &self,
        timeout: Option<Duration>,
        kind: Kind,
        body: impl Fn(&mut Vec<u8>, RequestId) -> Result<(), CallError>,
    ) -> Result<Payload, CallError> {
        let attempt = async { self.begin(kind, false, &body).await?.await };
        match timeout {
            None => attempt.await,
            Some(after) => tokio::time::timeout(after, attempt)
                .await
                .unwrap_or(Err(CallError::Timeout { after })),
        }
    }

    /// Calls a method with a raw JSON payload (a [`Payload`] or a
    /// reference to one), waiting at most `timeout` for the answer instead
    /// of the connection's call timeout (`None`: no bound).
    ///
    /// ```no_run
    /// # async fn demo(client: &warden_client::Client) -> Result<(), warden_client::CallError> {
    /// use std::time::Duration;
    /// use warden_client::{CallError, Payload};
    /// let params = Payload::null();
    /// match client.call_with_timeout("test.slow", &params, Some(Duration::from_secs(1))).await {
    ///     Err(CallError::Timeout { .. }) => println!("gave up (and sent a cancel)"),
    ///     other => println!("{:?}", other?),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::call`]; [`CallError::Timeout`] past `timeout`.
    pub async fn call_with_timeout(
        &self,
        method: &str,
        params: impl Borrow<Payload>,
        timeout: Option<Duration>,
    ) -> Result<Payload, CallError> {
        check_name(method)?;
        let raw = params.borrow().get();
        self.exchange(timeout, Kind::Call, |b, id| {
            write_call(b, id, method, |b| {
                b.extend_from_slice(raw.as_bytes());
                Ok(())
            })
        })
        .await
    }

    /// Calls a method of a per-session host in a chosen session: `target`
    /// names the session (`CallTarget::Session`) or its user
    /// (`CallTarget::Uid`, when that user has one such session). Your own
    /// sessions always; another user's only if the policy gives you the
    /// `target` action on the method.
    ///
    /// ```no_run
    /// # async fn demo(client: &warden_client::Client) -> Result<(), warden_client::CallError> {
    /// use warden_client::{CallTarget, Payload};
    /// let answer = client
    ///     .call_targeted("example.echo", &Payload::null(), &CallTarget::Session("c2".into()))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::call`]; `denied` for another user's session without
    /// the `target` action, `unavailable` when no instance serves the
    /// target, `bad_request` when the method is not a per-session host's.
    pub async fn call_targeted(
        &self,
        method: &str,
        params: impl Borrow<Payload>,
        target: &CallTarget,
    ) -> Result<Payload, CallError> {
        check_name(method)?;
        let raw = params.borrow().get();
        let target = serde_json::to_string(target).map_err(CallError::BadParams)?;
        self.exchange(self.shared.call_timeout, Kind::Call, |b, id| {
            write_call(b, id, method, |b| {
                b.extend_from_slice(raw.as_bytes());
                b.extend_from_slice(b",\"target\":");
                b.extend_from_slice(target.as_bytes());
                Ok(())
            })
        })
        .await
    }

    /// Calls a method with a raw JSON payload (a [`Payload`] or a
    /// reference to one).
    ///
    /// # Errors
    /// [`CallError::Remote`] with the broker's code (`denied`,
    /// `unknown_method`, ...), [`CallError::Timeout`] past the call
    /// timeout, [`CallError::BadAnswer`] for an answer that cannot be
    /// decoded, or a local failure.
    pub async fn call(
        &self,
        method: &str,
        params: impl Borrow<Payload>,
    ) -> Result<Payload, CallError> {
        self.call_with_timeout(method, params, self.shared.call_timeout)
            .await
    }

    /// Calls a method with any `Serialize` params (written straight into
    /// the frame) and parses the answer as `R`.
    ///
    /// ```no_run
    /// # async fn demo(client: &warden_client::Client) -> Result<(), warden_client::CallError> {
    /// let echoed: Vec<u32> = client.call_as("warden.echo", &[1, 2, 3]).await?;
    /// assert_eq!(echoed, [1, 2, 3]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::call`]; [`CallError::BadParams`] if `params` fails to
    /// serialize, [`CallError::Parse`] if the answer is not an `R`.
    pub async fn call_as<R: DeserializeOwned, P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, CallError> {
        check_name(method)?;
        let answer = self
            .exchange(self.shared.call_timeout, Kind::Call, |b, id| {
                write_call(b, id, method, |b| {
                    serde_json::to_writer(&mut *b, params).map_err(CallError::BadParams)
                })
            })
            .await?;
        Ok(answer.parse()?)
    }

    /// Calls a method with JSON values (any `Serialize` in, a
    /// `serde_json::Value` out).
    ///
    /// # Errors
    /// As [`Client::call_as`].
    pub async fn call_json(
        &self,
        method: &str,
        params: impl Serialize,
    ) -> Result<serde_json::Value, CallError> {
        self.call_as(method, &params).await
    }

    /// Subscribes to a topic; events arrive through [`Client::next_event`].
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn subscribe(&self, topic: &str) -> Result<(), CallError> {
        let topic = topic_name(topic)?;
        self.request(|id| Message::Subscribe {
            id,
            topic: topic.clone(),
        })
        .await
    }

    /// Sends a control request (subscribe, unsubscribe, provide) made by
    /// `make` for its id, and waits for the broker's acknowledgement.
    async fn request(&self, make: impl Fn(RequestId) -> Message) -> Result<(), CallError> {
        self.exchange(self.shared.call_timeout, Kind::Other, |b, id| {
            b.extend_from_slice(&make(id).encode());
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Cancels a subscription.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), CallError> {
        let topic = topic_name(topic)?;
        self.request(|id| Message::Unsubscribe {
            id,
            topic: topic.clone(),
        })
        .await
    }

    /// Publishes an event; returns the broker's `{delivered, dropped}`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn publish(
        &self,
        topic: &str,
        data: impl Borrow<Payload>,
    ) -> Result<serde_json::Value, CallError> {
        check_name(topic)?;
        let raw = data.borrow().get();
        let r = self
            .exchange(self.shared.call_timeout, Kind::Other, |b, id| {
                use std::io::Write;
                let _ = write!(
                    b,
                    r#"{{"kind":"publish","id":{id},"topic":"{topic}","data":{raw}}}"#
                );
                Ok(())
            })
            .await?;
        Ok(r.parse()?)
    }

    /// Registers this connection as the provider of `method`; calls arrive
    /// through [`Client::next_call`] (or use [`Client::serve`]).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn provide(&self, method: &str) -> Result<(), CallError> {
        self.provide_described(method, None).await
    }

    /// As [`Client::provide`], with a one-line description of what the
    /// method does (shown to callers by `warden.introspect`): at most
    /// 256 bytes, no control characters.
    ///
    /// # Errors
    /// As [`Client::provide`]; the broker refuses a description that is
    /// too long or has control characters (`bad_request`).
    pub async fn provide_described(
        &self,
        method: &str,
        description: Option<&str>,
    ) -> Result<(), CallError> {
        let method = method_name(method)?;
        self.request(|id| Message::Provide {
            id,
            method: method.clone(),
            description: description.map(str::to_owned),
        })
        .await
    }

    /// Stops providing `method`: the broker routes no new call to it
    /// (callers get `unknown_method`); calls already routed here still
    /// take their answers. Idempotent.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn unprovide(&self, method: &str) -> Result<(), CallError> {
        let method = method_name(method)?;
        self.request(|id| Message::Unprovide {
            id,
            method: method.clone(),
        })
        .await
    }

    /// The next event, or `None` once the connection is closed (and every
    /// event received before has been taken).
    pub async fn next_event(&self) -> Option<Event> {
        let shared = &self.shared;
        loop {
            let notified = shared.events_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = shared.lock();
                if let Some(e) = st.events.pop_front() {
                    let w = st.unstall();
                    drop(st);
                    if let Some(w) = w {
                        w.wake();
                    }
                    return Some(e);
                }
                if st.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Takes up to `max` queued incoming calls, waiting for at least one;
    /// empty once the connection is closed.
    async fn next_calls(&self, max: usize) -> Vec<IncomingCall> {
        let shared = &self.shared;
        loop {
            let notified = shared.calls_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = shared.lock();
                if !st.calls.is_empty() {
                    let n = st.calls.len().min(max.max(1));
                    let calls: Vec<IncomingCall> = st.calls.drain(..n).collect();
                    let w = st.unstall();
                    drop(st);
                    if let Some(w) = w {
                        w.wake();
                    }
                    return calls;
                }
                if st.closed {
                    return Vec::new();
                }
            }
            notified.await;
        }
    }

    /// The next call routed to this provider, or `None` once closed.
    /// Answer it with [`Client::reply`]; [`Client::serve`] does both,
    /// concurrently.
    pub async fn next_call(&self) -> Option<IncomingCall> {
        self.next_calls(1).await.pop()
    }

    /// Answers an incoming call. The answer is queued and written at once
    /// (with whatever else is queued); this does not wait for the socket.
    ///
    /// # Errors
    /// [`CallError::Disconnected`] or [`CallError::TooLarge`].
    pub async fn reply(
        &self,
        id: RequestId,
        answer: Result<Payload, WireError>,
    ) -> Result<(), CallError> {
        self.shared.send(|b| write_answer(b, id, &answer))
    }

    /// Serves calls to `methods` (registering each with
    /// [`Client::provide`] first) until the connection closes, with up to
    /// `concurrency` handlers running at once. Answers that are ready
    /// together leave in one write.
    ///
    /// The handlers' futures run on the task that awaits `serve`,
    /// concurrently but not in parallel: a call goes from the socket to its
    /// handler and its answer back to the socket with no task spawned and
    /// no thread hop. A handler with CPU-heavy or blocking work hands it to
    /// [`tokio::task::spawn_blocking`] (or spawns a task) and awaits it.
    /// A handler that panics answers `internal`; the others go on.
    ///
    /// ```no_run
    /// # async fn demo(client: warden_client::Client) -> Result<(), warden_client::CallError> {
    /// use warden_client::{ErrorCode, IncomingCall, Payload, WireError};
    /// client
    ///     .serve(&["test.double"], 64, |call: IncomingCall| async move {
    ///         let n: u64 = call
    ///             .params
    ///             .parse()
    ///             .map_err(|e| WireError::new(ErrorCode::BadRequest, e.to_string()))?;
    ///         Payload::from_value(&(2 * n))
    ///             .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
    ///     })
    ///     .await
    /// # }
    /// ```
    ///
    /// # Errors
    /// A failed `provide` ([`CallError::Remote`] with `denied`,
    /// `unavailable`...). Once serving, `Ok(())` when the connection closes.
    pub async fn serve<F, Fut>(
        &self,
        methods: &[&str],
        concurrency: usize,
        mut handler: F,
    ) -> Result<(), CallError>
    where
        F: FnMut(IncomingCall) -> Fut,
        Fut: Future<Output = Result<Payload, WireError>>,
    {
        use futures_util::{FutureExt, StreamExt};
        for m in methods {
            self.provide(m).await?;
        }
        let concurrency = concurrency.max(1);
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut answers: Vec<(RequestId, Result<Payload, WireError>)> = Vec::new();
        let mut closed = false;
        let handler_failed = || Err(WireError::new(ErrorCode::Internal, "the handler failed"));
        loop {
            if closed && running.is_empty() {
                return Ok(());
            }
            let room = concurrency - running.len();
            tokio::select! {
                // Finished handlers first: their answers leave together.
                biased;
                Some(done) = running.next(), if !running.is_empty() => {
                    answers.push(done);
                    while let Some(Some(done)) = running.next().now_or_never() {
                        answers.push(done);
                    }
                    self.send_answers(&mut answers);
                }
                calls = self.next_calls(room), if room > 0 && !closed => {
                    if calls.is_empty() {
                        closed = true;
                    }
                    for call in calls {
                        let id = call.id;
                        let started = std::panic::catch_unwind(AssertUnwindSafe(|| handler(call)));
                        match started {
                            Ok(fut) => running.push(
                                AssertUnwindSafe(fut)
                                    .catch_unwind()
                                    .map(move |r| (id, r.unwrap_or_else(|_| handler_failed()))),
                            ),
                            Err(_) => answers.push((id, handler_failed())),
                        }
                    }
                    if !answers.is_empty() {
                        self.send_answers(&mut answers);
                    }
                }
            }
        }
    }

    /// Queues every answer, then writes them together.
    fn send_answers(&self, answers: &mut Vec<(RequestId, Result<Payload, WireError>)>) {
        for (id, answer) in answers.drain(..) {
            if let Err(e) = self.shared.queue(None, |b| write_answer(b, id, &answer)) {
                let fallback = Err(WireError::new(ErrorCode::Internal, e.to_string()));
                let _ = self.shared.queue(None, |b| write_answer(b, id, &fallback));
            }
        }
        self.shared.flush();
    }

    /// Sends a `cancel` for one of this client's calls (by id); used with
    /// [`Client::start_call`].
    ///
    /// # Errors
    /// [`CallError::Disconnected`].
    pub async fn cancel(&self, id: RequestId) -> Result<(), CallError> {
        self.shared.send(|b| {
            conn::write_cancel(b, id);
            Ok(())
        })
    }

    /// Sends a call and returns its id and its answer to come (a
    /// [`PendingCall`], which resolves to the answer), so the caller can
    /// cancel it meanwhile. The connection's call timeout does not apply;
    /// dropping the `PendingCall` cancels the call.
    ///
    /// ```no_run
    /// # async fn demo(client: &warden_client::Client) -> Result<(), warden_client::CallError> {
    /// use warden_client::Payload;
    /// let (id, answer) = client.start_call("test.hold", Payload::null()).await?;
    /// client.cancel(id).await?;
    /// let err = answer.await.unwrap_err(); // `cancelled`
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::call`], for the send.
    pub async fn start_call(
        &self,
        method: &str,
        params: impl Borrow<Payload>,
    ) -> Result<(RequestId, PendingCall), CallError> {
        check_name(method)?;
        let raw = params.borrow().get();
        let pending = self
            .begin(Kind::Call, true, |b, id| {
                write_call(b, id, method, |b| {
                    b.extend_from_slice(raw.as_bytes());
                    Ok(())
                })
            })
            .await?;
        Ok((pending.id(), pending))
    }

    /// The last connection-level error the broker sent, if any.
    pub fn last_error(&self) -> Option<WireError> {
        self.shared.lock().last_error.clone()
    }
}

/// Writes a call envelope; `method` must have been checked (a valid name
/// needs no JSON escaping).
fn write_call(
    b: &mut Vec<u8>,
    id: RequestId,
    method: &str,
    params: impl FnOnce(&mut Vec<u8>) -> Result<(), CallError>,
) -> Result<(), CallError> {
    use std::io::Write;
    let _ = write!(
        b,
        r#"{{"kind":"call","id":{id},"method":"{method}","params":"#
    );
    params(b)?;
    b.push(b'}');
    Ok(())
}

/// Writes a `reply` or an `error` answering `id`.
fn write_answer(
    b: &mut Vec<u8>,
    id: RequestId,
    answer: &Result<Payload, WireError>,
) -> Result<(), CallError> {
    use std::io::Write;
    match answer {
        Ok(result) => {
            let _ = write!(
                b,
                r#"{{"kind":"reply","id":{id},"result":{}}}"#,
                result.get()
            );
            Ok(())
        }
        Err(error) => conn::write_error(b, id, error),
    }
}

/// Validates a method or topic name without copying it.
fn check_name(name: &str) -> Result<(), CallError> {
    warden_proto::name::validate_name(name).map_err(|source| CallError::BadName {
        name: name.to_owned(),
        source,
    })
}

fn method_name(method: &str) -> Result<MethodName, CallError> {
    MethodName::try_from(method).map_err(|source| CallError::BadName {
        name: method.to_owned(),
        source,
    })
}

fn topic_name(topic: &str) -> Result<TopicName, CallError> {
    TopicName::try_from(topic).map_err(|source| CallError::BadName {
        name: topic.to_owned(),
        source,
    })
}

/// Reads one frame during the handshake.
/// Reads one frame and not a byte more (`None` at a clean end of stream
/// before it).
async fn read_one_frame(read: &mut UnixStream, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match read.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {n} bytes exceeds the limit of {max}"),
        ));
    }
    let mut body = vec![0u8; n];
    read.read_exact(&mut body).await?;
    Ok(Some(body))
}

async fn read_frame(
    read: &mut UnixStream,
    decoder: &mut FrameDecoder,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 4096];
    loop {
        match decoder.next_frame() {
            Ok(Some(f)) => return Ok(Some(f)),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        let n = read.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        decoder.push(&buf[..n]);
    }
}
