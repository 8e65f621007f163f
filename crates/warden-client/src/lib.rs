//! The async Rust client for the Warden broker.
//!
//! [`Client::connect`] connects to the broker's socket, checks **before
//! sending a single byte** that the process listening there runs as a
//! trusted uid (see [`ServerTrust`]), performs the hello, and starts a
//! background task that routes replies to the calls waiting for them and
//! queues events and incoming calls (for providers).
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
//! use warden_client::{Client, ConnectOptions};
//! let client = Client::connect(ConnectOptions::new("/run/warden/warden.sock")).await?;
//! let who = client.call_json("warden.whoami", serde_json::json!(null)).await?;
//! println!("the broker sees me as uid {}", who["uid"]);
//! # Ok(()) }
//! ```
//!
//! # Attacker model
//! The socket path may be squatted by another user (an abstract name, or a
//! path under a world-writable directory). The server-uid check is what
//! stops a client from handing its requests to an impostor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use warden_proto::{
    ErrorCode, FrameDecoder, Hello, IdSequence, Identity, Message, MethodName, Payload, RequestId,
    TopicName, Welcome, WireError, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
pub use warden_sys::ServerTrust;

/// Events and incoming calls buffered in the client before its reader
/// waits for the application to take them.
const INBOX_LEN: usize = 4096;
/// Default time for connecting and the hello/welcome exchange.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
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
        }
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
    /// The answer could not be parsed.
    #[error("cannot parse the answer: {0}")]
    Parse(#[from] serde_json::Error),
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

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Payload, WireError>>>>;

#[derive(Debug)]
struct Shared {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    ids: IdSequence,
    max_frame: usize,
    last_error: Mutex<Option<WireError>>,
    call_timeout: Option<Duration>,
}

/// A connection to the broker.
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    welcome: Welcome,
    server_uid: u32,
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    calls: tokio::sync::Mutex<mpsc::Receiver<IncomingCall>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Connects, checks the server's uid, and performs the handshake.
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
        // A Unix connect blocks while the listener's backlog is full: do it
        // on a thread of its own, which the caller's timeout can abandon
        // (a runtime blocking task would hold up the runtime's shutdown).
        let (tx, rx) = oneshot::channel();
        let target = path.clone();
        std::thread::Builder::new()
            .name("warden-connect".into())
            .spawn(move || {
                let _ = tx.send(warden_sys::connect_unix(&target));
            })
            .map_err(|source| ConnectError::Connect {
                path: path.clone(),
                source,
            })?;
        let connected = rx
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread ended early")));
        let std_stream = connected.map_err(|source| ConnectError::Connect {
            path: path.clone(),
            source,
        })?;
        let server_uid = {
            use std::os::fd::AsFd;
            warden_sys::verify_server(std_stream.as_fd(), &path, opts.trust)?
        };
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
        let (mut read, mut write) = stream.into_split();
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: Some(opts.client_name.clone()),
            invitation: None,
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
        let frame = hello
            .to_frame(DEFAULT_MAX_FRAME_LEN)
            .ok_or_else(|| handshake_err("hello does not fit in a frame".into()))?;
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        if let Err(e) = write.write_all(&frame).await {
            // A broker that refuses a connection (connection limits,
            // shutdown) sends its reason and closes before reading the
            // hello: the reason waits in the receive buffer.
            if let Ok(Some(body)) = read_frame(&mut read, &mut decoder).await {
                if let Ok(Message::Error { error, .. }) = Message::decode(&body) {
                    return Err(ConnectError::Refused(error));
                }
            }
            return Err(caused("sending hello", e.into()));
        }
        let first = read_frame(&mut read, &mut decoder)
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
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(write),
            pending: Mutex::default(),
            ids: IdSequence::new(),
            max_frame,
            last_error: Mutex::default(),
            call_timeout: opts.call_timeout,
        });
        let (ev_tx, ev_rx) = mpsc::channel(INBOX_LEN);
        let (call_tx, call_rx) = mpsc::channel(INBOX_LEN);
        decoder = FrameDecoder::new(max_frame);
        let reader = tokio::spawn(reader_task(
            Arc::clone(&shared),
            read,
            decoder,
            ev_tx,
            call_tx,
        ));
        Ok(Client {
            shared,
            welcome,
            server_uid,
            events: tokio::sync::Mutex::new(ev_rx),
            calls: tokio::sync::Mutex::new(call_rx),
            reader,
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

    fn next_id(&self) -> RequestId {
        self.shared.ids.next_id()
    }

    async fn send(&self, msg: &Message) -> Result<(), CallError> {
        let frame = msg
            .to_frame(self.shared.max_frame)
            .ok_or(CallError::TooLarge {
                max: self.shared.max_frame,
            })?;
        let mut w = self.shared.writer.lock().await;
        w.write_all(&frame).await.map_err(|_| self.disconnected())
    }

    fn disconnected(&self) -> CallError {
        CallError::Disconnected {
            reason: lock(&self.shared.last_error).clone(),
        }
    }

    async fn request(
        &self,
        build: impl FnOnce(RequestId) -> Message,
    ) -> Result<Payload, CallError> {
        self.request_within(self.shared.call_timeout, build).await
    }

    /// Sends a request and waits for its answer, for at most `timeout`
    /// (sending included: a broker that stops reading fills the socket).
    /// Past it, the request is forgotten and a `cancel` is sent.
    async fn request_within(
        &self,
        timeout: Option<Duration>,
        build: impl FnOnce(RequestId) -> Message,
    ) -> Result<Payload, CallError> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(id.get(), tx);
        let exchange = async {
            self.send(&build(id)).await?;
            match rx.await {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(e)) => Err(CallError::Remote(e)),
                Err(_) => Err(self.disconnected()),
            }
        };
        let result = match timeout {
            None => exchange.await,
            Some(after) => match tokio::time::timeout(after, exchange).await {
                Ok(r) => r,
                Err(_) => {
                    lock(&self.shared.pending).remove(&id.get());
                    // Best effort, briefly: the broker may not be reading.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(100),
                        self.send(&Message::Cancel { id }),
                    )
                    .await;
                    return Err(CallError::Timeout { after });
                }
            },
        };
        if result.is_err() {
            lock(&self.shared.pending).remove(&id.get());
        }
        result
    }

    /// Calls a method with raw JSON params, waiting at most `timeout` for
    /// the answer instead of the connection's call timeout (`None`: no
    /// bound).
    ///
    /// # Errors
    /// As [`Client::call`]; [`CallError::Timeout`] past `timeout`.
    pub async fn call_with_timeout(
        &self,
        method: &str,
        params: Payload,
        timeout: Option<Duration>,
    ) -> Result<Payload, CallError> {
        let method = MethodName::try_from(method).map_err(|source| CallError::BadName {
            name: method.to_owned(),
            source,
        })?;
        self.request_within(timeout, |id| Message::Call {
            id,
            method,
            params,
            caller: None,
        })
        .await
    }

    /// Calls a method with raw JSON params.
    ///
    /// # Errors
    /// [`CallError::Remote`] with the broker's code (`denied`,
    /// `unknown_method`, ...), [`CallError::Timeout`] past the call
    /// timeout, or a local failure.
    pub async fn call(&self, method: &str, params: Payload) -> Result<Payload, CallError> {
        self.call_with_timeout(method, params, self.shared.call_timeout)
            .await
    }

    /// Calls a method with JSON values.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn call_json(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, CallError> {
        let p = Payload::from_value(&params)?;
        let r = self.call(method, p).await?;
        Ok(r.parse()?)
    }

    /// Subscribes to a topic; events arrive through [`Client::next_event`].
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn subscribe(&self, topic: &str) -> Result<(), CallError> {
        let topic = topic_name(topic)?;
        self.request(|id| Message::Subscribe { id, topic })
            .await
            .map(|_| ())
    }

    /// Cancels a subscription.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), CallError> {
        let topic = topic_name(topic)?;
        self.request(|id| Message::Unsubscribe { id, topic })
            .await
            .map(|_| ())
    }

    /// Publishes an event; returns the broker's `{delivered, dropped}`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn publish(
        &self,
        topic: &str,
        data: Payload,
    ) -> Result<serde_json::Value, CallError> {
        let topic = topic_name(topic)?;
        let r = self
            .request(|id| Message::Publish { id, topic, data })
            .await?;
        Ok(r.parse()?)
    }

    /// Registers this connection as the provider of `method`; calls arrive
    /// through [`Client::next_call`].
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn provide(&self, method: &str) -> Result<(), CallError> {
        let method = MethodName::try_from(method).map_err(|source| CallError::BadName {
            name: method.to_owned(),
            source,
        })?;
        self.request(|id| Message::Provide { id, method })
            .await
            .map(|_| ())
    }

    /// The next event, or `None` once the connection is closed.
    pub async fn next_event(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }

    /// The next call routed to this provider, or `None` once closed.
    pub async fn next_call(&self) -> Option<IncomingCall> {
        self.calls.lock().await.recv().await
    }

    /// Answers an incoming call.
    ///
    /// # Errors
    /// [`CallError::Disconnected`] or [`CallError::TooLarge`].
    pub async fn reply(
        &self,
        id: RequestId,
        answer: Result<Payload, WireError>,
    ) -> Result<(), CallError> {
        let msg = match answer {
            Ok(result) => Message::Reply { id, result },
            Err(error) => Message::Error {
                id: Some(id),
                error,
            },
        };
        self.send(&msg).await
    }

    /// Sends a `cancel` for one of this client's calls (by id); used with
    /// [`Client::start_call`].
    ///
    /// # Errors
    /// [`CallError::Disconnected`].
    pub async fn cancel(&self, id: RequestId) -> Result<(), CallError> {
        self.send(&Message::Cancel { id }).await
    }

    /// Sends a call and returns its id and a future answer, so the caller
    /// can cancel it meanwhile.
    ///
    /// # Errors
    /// As [`Client::call`], for the send.
    pub async fn start_call(
        &self,
        method: &str,
        params: Payload,
    ) -> Result<(RequestId, oneshot::Receiver<Result<Payload, WireError>>), CallError> {
        let method = MethodName::try_from(method).map_err(|source| CallError::BadName {
            name: method.to_owned(),
            source,
        })?;
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(id.get(), tx);
        let msg = Message::Call {
            id,
            method,
            params,
            caller: None,
        };
        if let Err(e) = self.send(&msg).await {
            lock(&self.shared.pending).remove(&id.get());
            return Err(e);
        }
        Ok((id, rx))
    }

    /// The last connection-level error the broker sent, if any.
    pub fn last_error(&self) -> Option<WireError> {
        lock(&self.shared.last_error).clone()
    }
}

fn topic_name(topic: &str) -> Result<TopicName, CallError> {
    TopicName::try_from(topic).map_err(|source| CallError::BadName {
        name: topic.to_owned(),
        source,
    })
}

async fn read_frame(
    read: &mut OwnedReadHalf,
    decoder: &mut FrameDecoder,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 16 * 1024];
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

async fn reader_task(
    shared: Arc<Shared>,
    mut read: OwnedReadHalf,
    mut decoder: FrameDecoder,
    ev_tx: mpsc::Sender<Event>,
    call_tx: mpsc::Sender<IncomingCall>,
) {
    loop {
        let body = match read_frame(&mut read, &mut decoder).await {
            Ok(Some(b)) => b,
            Ok(None) | Err(_) => break,
        };
        let msg = match Message::decode(&body) {
            Ok(m) => m,
            Err(_) => continue,
        };
        match msg {
            Message::Reply { id, result } => {
                if let Some(tx) = lock(&shared.pending).remove(&id.get()) {
                    let _ = tx.send(Ok(result));
                }
            }
            Message::Error {
                id: Some(id),
                error,
            } => {
                if let Some(tx) = lock(&shared.pending).remove(&id.get()) {
                    let _ = tx.send(Err(error));
                }
            }
            Message::Error { id: None, error } => {
                *lock(&shared.last_error) = Some(error);
            }
            Message::Event {
                topic,
                data,
                missed,
                publisher,
            } => {
                let _ = ev_tx
                    .send(Event::Event {
                        topic,
                        data,
                        missed,
                        publisher,
                    })
                    .await;
            }
            Message::Lagged { missed } => {
                let _ = ev_tx.send(Event::Lagged { missed }).await;
            }
            Message::Call {
                id,
                method,
                params,
                caller,
            } => {
                let _ = call_tx
                    .send(IncomingCall {
                        id,
                        method,
                        params,
                        caller,
                    })
                    .await;
            }
            Message::Cancel { .. } | Message::Hello(_) | Message::Welcome(_) => {}
            Message::Subscribe { .. }
            | Message::Unsubscribe { .. }
            | Message::Publish { .. }
            | Message::Provide { .. } => {}
        }
    }
    // Fail every call still waiting.
    lock(&shared.pending).clear();
}
