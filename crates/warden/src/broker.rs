//! The broker: builder, accept loop, deadlines, shutdown and drain.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use warden_policy::{Config, Limits, Policy, SlowSubscriber};
use warden_proto::{ErrorCode, Message, MethodName, WireError};
use warden_sys::PeerIdentity;

use crate::handler::Handler;
use crate::local::BrokerHandle;
use crate::registry::{lock, Registry, Settings};
use crate::router::Services;
use crate::shutdown::Shutdown;

pub use crate::transport::connection::TEST_PANIC_METHOD;

/// Why the broker stopped serving before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A task of the broker itself (a connection task, outside any
    /// handler, or the deadline sweeper) panicked. Its state (registered
    /// providers, subscriptions, routed calls) cannot be trusted any more,
    /// so the broker stops at once; the service manager restarts it.
    #[error("{task} panicked: {message}")]
    TaskPanicked {
        /// Which task.
        task: &'static str,
        /// The panic's message.
        message: String,
    },
}

impl ServeError {
    fn from_join(task: &'static str, e: tokio::task::JoinError) -> Option<ServeError> {
        if !e.is_panic() {
            return None;
        }
        let payload = e.into_panic();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        Some(ServeError::TaskPanicked { task, message })
    }
}

/// Why the broker could not serve.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A handler was registered for a name that is not a valid method
    /// name.
    #[error("cannot register handler {name:?}: {source}")]
    BadHandlerName {
        /// The name.
        name: String,
        /// Why it is not valid.
        #[source]
        source: warden_proto::NameError,
    },
    /// A handler was registered for a name in the `warden.*` namespace.
    #[error("cannot register handler {name:?}: the warden.* namespace is reserved for built-ins")]
    ReservedHandlerName {
        /// The name.
        name: String,
    },
}

/// Builds a [`Broker`].
pub struct BrokerBuilder {
    limits: Limits,
    slow: SlowSubscriber,
    policy: Arc<Policy>,
    handlers: HashMap<String, Arc<dyn Handler>>,
    heartbeat: Duration,
    test_hooks: bool,
    reloader: Option<crate::builtins::Reloader>,
    sessions: Option<Arc<dyn crate::SessionLookup>>,
    invitations: warden_policy::InvitationsSection,
}

impl std::fmt::Debug for BrokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerBuilder")
            .field("limits", &self.limits)
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl BrokerBuilder {
    /// Registers a method served in-process. The name must be valid and
    /// outside `warden.*`.
    ///
    /// # Errors
    /// [`BrokerError::BadHandlerName`] for an invalid name,
    /// [`BrokerError::ReservedHandlerName`] for one in `warden.*`.
    pub fn handler(mut self, name: &str, h: impl Handler) -> Result<Self, BrokerError> {
        let m = MethodName::try_from(name).map_err(|source| BrokerError::BadHandlerName {
            name: name.to_owned(),
            source,
        })?;
        if m.is_reserved() {
            return Err(BrokerError::ReservedHandlerName {
                name: name.to_owned(),
            });
        }
        self.handlers.insert(name.to_owned(), Arc::new(h));
        Ok(self)
    }

    /// Serves `warden.reload` with `reload`: a successful load replaces
    /// the policy (as [`Broker::set_policy`]); a failed one keeps it and
    /// answers the error. Without a reloader the built-in answers
    /// `unavailable`.
    pub fn reloader(
        mut self,
        reload: impl Fn() -> Result<Config, warden_policy::ConfigError> + Send + Sync + 'static,
    ) -> Self {
        self.reloader = Some(Arc::new(reload));
        self
    }

    /// How the broker learns a caller's login session, to route calls to
    /// per-session hosts when the caller's user has several sessions.
    pub fn session_lookup(mut self, lookup: Arc<dyn crate::SessionLookup>) -> Self {
        self.sessions = Some(lookup);
        self
    }

    /// Turns on test hooks (see [`TEST_PANIC_METHOD`]). Never in
    /// production.
    pub fn test_hooks(mut self, on: bool) -> Self {
        self.test_hooks = on;
        self
    }

    /// Finishes the broker.
    pub fn build(self) -> Broker {
        let limits = self.limits;
        let max_frame = usize::try_from(limits.max_frame_bytes)
            .unwrap_or(warden_proto::DEFAULT_MAX_FRAME_LEN)
            .min(warden_proto::ABSOLUTE_MAX_FRAME_LEN);
        let call_timeout = Duration::from_millis(limits.call_timeout_ms);
        let settings = Settings {
            limits,
            slow: self.slow,
            max_frame,
            call_timeout,
            test_hooks: self.test_hooks,
            invitations: self.invitations,
        };
        let (stall_tx, stall_rx) = tokio::sync::mpsc::channel(1);
        let (adopt_tx, adopt_rx) = tokio::sync::mpsc::channel(ADOPT_QUEUE);
        Broker {
            svc: Arc::new(Services {
                reg: Arc::new(Registry::new(settings, self.policy)),
                handlers: self.handlers,
                reloader: self.reloader,
                sessions: self.sessions,
            }),
            heartbeat_ms: Arc::new(AtomicU64::new(0)),
            heartbeat: self.heartbeat,
            stall_tx,
            stall_rx: Arc::new(Mutex::new(Some(stall_rx))),
            adopt_tx,
            adopt_rx: Arc::new(Mutex::new(Some(adopt_rx))),
        }
    }

    /// How often the accept loop proves it is alive (see
    /// [`Broker::loop_heartbeat_age`]); default 1 s.
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }
}

/// The broker runtime. Cheap to clone; clones share one state.
#[derive(Debug, Clone)]
pub struct Broker {
    svc: Arc<Services>,
    /// Milliseconds since the registry started at the accept loop's last
    /// turn: the service watchdog pings only while this stays fresh.
    heartbeat_ms: Arc<AtomicU64>,
    heartbeat: Duration,
    stall_tx: tokio::sync::mpsc::Sender<Duration>,
    stall_rx: Arc<Mutex<Option<tokio::sync::mpsc::Receiver<Duration>>>>,
    adopt_tx: tokio::sync::mpsc::Sender<Adopted>,
    adopt_rx: Arc<Mutex<Option<tokio::sync::mpsc::Receiver<Adopted>>>>,
}

/// A connection handed to [`Broker::adopt`], with its assigned identity
/// and the host's name.
type Adopted = (UnixStream, PeerIdentity, String, Option<String>);

/// Connections handed to [`Broker::adopt`] that the accept loop has not
/// taken yet.
const ADOPT_QUEUE: usize = 64;

/// Why [`Broker::adopt`] refused a connection.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The socket could not be made non-blocking or registered.
    #[error("cannot adopt the connection: {0}")]
    Socket(#[source] std::io::Error),
    /// The broker is not serving (never started, or stopped).
    #[error("the broker is not serving connections")]
    NotServing,
}

/// How often expiry is checked.
const INVITATION_EXPIRY_TICK: Duration = Duration::from_secs(1);

/// Announces expired invitations on [`TOPIC`] and forgets them, until the
/// broker closes.
async fn invitation_expiry(reg: Arc<Registry>, mut close: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(INVITATION_EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = close.wait_for(|v| *v) => return,
            _ = tick.tick() => {
                let due = reg
                    .invitations
                    .next_expiry()
                    .is_some_and(|t| t <= std::time::SystemTime::now());
                if due || reg.invitations.has_expired_unheld() {
                    let events = reg.invitations.sweep();
                    crate::pubsub::publish_invitation_events(&reg, events);
                }
            }
        }
    }
}

/// Aborts a task of the broker's when `serve` returns, however it does.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Pause after `accept` fails because the process or system is out of
/// file descriptors, so the loop backs off instead of spinning.
const ACCEPT_BACKOFF_FD_EXHAUSTED: Duration = Duration::from_millis(100);
/// Pause after any other `accept` failure.
const ACCEPT_BACKOFF_OTHER: Duration = Duration::from_millis(10);
/// Time connection tasks get to say goodbye after the drain, before they
/// are aborted.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// At most one log line per this long about connections refused for want
/// of file descriptors; the refusals in between are counted in it.
const FD_REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// What a client refused for want of file descriptors is told.
const OUT_OF_FDS_MESSAGE: &str = "the broker is out of file descriptors; try again later, \
     or ask its administrator to raise its open-file limit (LimitNOFILE)";

/// What [`FdReserve::shed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shed {
    /// Accepted a queued connection and told it why it is refused.
    Answered,
    /// Nothing was waiting in the listen queue.
    Empty,
    /// No descriptor could be had, even with the spare closed (or there
    /// was no spare): whoever waits in the queue stays there for now.
    Failed,
}

/// One descriptor held in reserve (`/dev/null`), so that a broker out of
/// file descriptors can still accept a queued connection, tell its client
/// why it is refused (`limit_exceeded`) and close it, instead of leaving it
/// in the listen queue until the client's own timeout; and the counts
/// behind the rate-limited log of those refusals.
struct FdReserve {
    spare: Option<OwnedFd>,
    /// The error frame sent to each refused client.
    frame: Vec<u8>,
    /// Connections refused (and answered) since the last log line.
    refused: u64,
    /// Times a queued connection could not be answered since the last log
    /// line.
    unanswered: u64,
    /// Connections refused since the broker started.
    refused_total: u64,
    /// The last OS error behind an unanswered connection.
    last_error: Option<std::io::Error>,
    last_log: Option<tokio::time::Instant>,
    /// The spare could not be reopened and that was logged (logged once
    /// until it is back).
    missing_logged: bool,
}

impl FdReserve {
    fn new() -> FdReserve {
        let frame = Message::error(None, ErrorCode::LimitExceeded, OUT_OF_FDS_MESSAGE)
            .to_frame(usize::MAX)
            .unwrap_or_default();
        let mut reserve = FdReserve {
            spare: None,
            frame,
            refused: 0,
            unanswered: 0,
            refused_total: 0,
            last_error: None,
            last_log: None,
            missing_logged: false,
        };
        reserve.refill();
        reserve
    }

    /// Holds the spare again if it is not held; true if it is held.
    fn refill(&mut self) -> bool {
        if self.spare.is_some() {
            return true;
        }
        match warden_sys::open_reserve_fd() {
            Ok(fd) => {
                self.spare = Some(fd);
                if self.missing_logged {
                    tracing::info!("the reserve file descriptor is held again");
                    self.missing_logged = false;
                }
                true
            }
            Err(e) => {
                if !self.missing_logged {
                    tracing::warn!(
                        error = %e,
                        "cannot open the reserve file descriptor: until it can be, a client refused \
                         for want of descriptors may get no answer; trying again"
                    );
                    self.missing_logged = true;
                }
                false
            }
        }
    }

    /// After `accept` failed for want of file descriptors: closes the
    /// spare, accepts one queued connection (without waiting), sends it the
    /// `limit_exceeded` frame, closes it, and opens the spare again.
    async fn shed(&mut self, listener: &UnixListener) -> Shed {
        let outcome = if self.spare.take().is_some() {
            let accepted = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(match listener.poll_accept(cx) {
                    std::task::Poll::Ready(r) => Some(r),
                    std::task::Poll::Pending => None,
                })
            })
            .await;
            match accepted {
                Some(Ok((stream, _))) => {
                    self.refuse(&stream);
                    Shed::Answered
                }
                Some(Err(e)) => {
                    self.last_error = Some(e);
                    self.unanswered += 1;
                    Shed::Failed
                }
                None => Shed::Empty,
            }
        } else {
            // No spare to close: accepting would fail the same way.
            self.unanswered += 1;
            Shed::Failed
        };
        self.refill();
        self.log_if_due();
        outcome
    }

    /// Tells the client on `stream` that the broker is out of descriptors;
    /// the caller drops (closes) the stream.
    fn refuse(&mut self, stream: &UnixStream) {
        // Best effort: a fresh socket's send buffer has room for one frame.
        let _ = stream.try_write(&self.frame);
        self.refused += 1;
        self.refused_total += 1;
        self.log_if_due();
    }

    /// Logs what was counted, at most once per [`FD_REFUSAL_LOG_EVERY`]
    /// (at once the first time).
    fn log_if_due(&mut self) {
        if self.refused == 0 && self.unanswered == 0 {
            return;
        }
        let now = tokio::time::Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < FD_REFUSAL_LOG_EVERY)
        {
            return;
        }
        let since = self.last_log.map(|t| now.duration_since(t));
        if self.unanswered > 0 {
            let error = self
                .last_error
                .take()
                .map_or_else(|| "no reserve descriptor".to_owned(), |e| e.to_string());
            tracing::warn!(
                refused = self.refused,
                unanswered = self.unanswered,
                refused_total = self.refused_total,
                ?since,
                summary_every = ?FD_REFUSAL_LOG_EVERY,
                %error,
                "out of file descriptors: refused connections with limit_exceeded, and could not \
                 accept some to answer them (backing off); raise LimitNOFILE"
            );
        } else {
            tracing::warn!(
                refused = self.refused,
                refused_total = self.refused_total,
                ?since,
                summary_every = ?FD_REFUSAL_LOG_EVERY,
                "out of file descriptors: refused connections with limit_exceeded; raise LimitNOFILE"
            );
        }
        self.refused = 0;
        self.unanswered = 0;
        self.last_log = Some(now);
    }

    /// The accept loop's regular turn: takes the spare back if it could not
    /// be reopened, and logs what was counted when a log line is due.
    fn tick(&mut self) {
        self.refill();
        self.log_if_due();
    }
}

impl Broker {
    /// A builder from a loaded configuration.
    pub fn builder(config: &Config) -> BrokerBuilder {
        BrokerBuilder {
            limits: config.limits.clone(),
            slow: config.broker.on_slow_subscriber,
            policy: Arc::clone(&config.policy),
            handlers: HashMap::new(),
            heartbeat: Duration::from_secs(1),
            test_hooks: false,
            reloader: None,
            sessions: None,
            invitations: config.invitations.clone(),
        }
    }

    /// Serves a connection the broker made itself (one end of a socketpair
    /// it gave the child host `host`), with the identity it `assigned`: on a
    /// socketpair `SO_PEERCRED` names whoever called `socketpair()` (the
    /// broker), so the kernel's answer would be wrong, and this is the
    /// only way a connection gets an identity that is not its peer's
    /// credentials. Its identity carries the host's name, so rules match it
    /// by their `hosts` principal (never by uid: a host connection is not
    /// root, nor anyone else's, whatever user it runs as). The connection
    /// then goes through the same limits, hello and policy as an accepted
    /// one, and is drained with them.
    ///
    /// # Errors
    /// [`AdoptError`]; the stream is dropped.
    pub async fn adopt(
        &self,
        stream: std::os::unix::net::UnixStream,
        assigned: PeerIdentity,
        host: &str,
    ) -> Result<(), AdoptError> {
        self.adopt_as(stream, assigned, host, None).await
    }

    /// As [`Broker::adopt`], for the host `host` started for the logind
    /// session `session` (a per-session host): its identity carries both.
    ///
    /// # Errors
    /// [`AdoptError`]; the stream is dropped.
    pub async fn adopt_session_host(
        &self,
        stream: std::os::unix::net::UnixStream,
        assigned: PeerIdentity,
        host: &str,
        session: &str,
    ) -> Result<(), AdoptError> {
        self.adopt_as(stream, assigned, host, Some(session.to_owned()))
            .await
    }

    async fn adopt_as(
        &self,
        stream: std::os::unix::net::UnixStream,
        assigned: PeerIdentity,
        host: &str,
        session: Option<String>,
    ) -> Result<(), AdoptError> {
        stream.set_nonblocking(true).map_err(AdoptError::Socket)?;
        let stream = UnixStream::from_std(stream).map_err(AdoptError::Socket)?;
        self.adopt_tx
            .send((stream, assigned, host.to_owned(), session))
            .await
            .map_err(|_| AdoptError::NotServing)
    }

    /// Replaces the policy, atomically. Every connection recompiles its
    /// snapshot: subscriptions and provided names it no longer permits are
    /// dropped, and the client is told with an event on
    /// `warden.policy.revoked`. Connections stay open.
    pub fn set_policy(&self, policy: Arc<Policy>) {
        crate::pubsub::set_policy(&self.svc.reg, policy);
    }

    /// Time since the accept loop last turned. The service watchdog pings
    /// only while this stays below its interval, so a stalled loop stops
    /// the pings.
    pub fn loop_heartbeat_age(&self) -> Duration {
        let now = self.svc.reg.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Acquire)))
    }

    /// Test hook: blocks the accept loop's thread for `d`, as a hung loop
    /// would. Used to prove that the watchdog stops pinging.
    pub fn stall_loop_for_test(&self, d: Duration) {
        let _ = self.stall_tx.try_send(d);
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.svc.reg.connection_count()
    }

    /// Gives the registry's high-water table capacity back (wardend calls
    /// it before its heap trim).
    pub fn compact(&self) {
        self.svc.reg.compact();
    }

    /// Connections closed since the broker started (refused ones
    /// included), counted after each one's memory was freed.
    pub fn connections_closed(&self) -> u64 {
        self.svc.reg.connections_closed()
    }

    /// A handle for feature code: calls into connections that provide
    /// methods ([`BrokerHandle::call`]).
    pub fn handle(&self) -> BrokerHandle {
        BrokerHandle::new(Arc::clone(&self.svc.reg))
    }

    /// Serves connections from `listener` until `shutdown` fires, then
    /// stops accepting, lets routed calls finish for up to the drain
    /// timeout, answers what is left with `shutting_down`, tells every
    /// client `shutting_down`, and returns.
    ///
    /// # Errors
    /// [`ServeError`] when a task of the broker itself panicked: it stops
    /// at once (connections are dropped, nothing is drained), since the
    /// shared state that task kept can no longer be trusted.
    pub async fn serve(
        &self,
        listener: UnixListener,
        mut shutdown: Shutdown,
    ) -> Result<(), ServeError> {
        let reg = &self.svc.reg;
        let mut tasks = JoinSet::new();
        let mut stall_rx = lock(&self.stall_rx).take();
        let mut adopt_rx = lock(&self.adopt_rx).take();
        let mut reserve = FdReserve::new();
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweeper = tokio::spawn(crate::calls::deadline_sweeper(
            Arc::clone(reg),
            reg.close_tx.subscribe(),
        ));
        let _expiry = AbortOnDrop(tokio::spawn(invitation_expiry(
            Arc::clone(reg),
            reg.close_tx.subscribe(),
        )));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.requested() => break,
                done = &mut sweeper => {
                    let fatal = match done {
                        Err(e) => ServeError::from_join("the deadline sweeper", e),
                        Ok(()) => None,
                    };
                    let error = fatal.unwrap_or(ServeError::TaskPanicked {
                        task: "the deadline sweeper",
                        message: "it stopped before shutdown".into(),
                    });
                    tracing::error!(error = %error, "stopping the broker at once");
                    return Err(error);
                }
                _ = heartbeat.tick() => {
                    self.heartbeat_ms.store(reg.started.elapsed().as_millis() as u64, Ordering::Release);
                    reserve.tick();
                }
                Some(d) = async { match stall_rx.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    tracing::warn!(?d, "test hook: stalling the accept loop");
                    std::thread::sleep(d);
                }
                Some((stream, peer, host, session)) = async { match adopt_rx.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    let svc = Arc::clone(&self.svc);
                    tasks.spawn(crate::transport::connection::run(svc, stream, peer, Some((host, session))));
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Some(error) = done.err().and_then(|e| ServeError::from_join("a connection task", e)) {
                        tracing::error!(error = %error, "stopping the broker at once");
                        return Err(error);
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        match warden_sys::peer_identity(stream.as_fd()) {
                            Ok(peer) => {
                                let svc = Arc::clone(&self.svc);
                                tasks.spawn(crate::transport::connection::run(svc, stream, peer, None));
                            }
                            Err(e) if e.is_fd_exhaustion() => {
                                // Fail closed (no identity, no connection),
                                // but say why (the write needs no
                                // descriptor; counted, logged in summary).
                                // No pause: each turn takes one client off
                                // the queue.
                                reserve.refuse(&stream);
                            }
                            Err(e) => {
                                // Fail closed: no identity, no connection.
                                tracing::warn!(error = %e, "refused a connection: cannot read its credentials");
                            }
                        }
                    }
                    Err(e) => {
                        let pause = if warden_sys::is_fd_exhaustion(&e) {
                            // Answer the queued clients one by one with the
                            // spare descriptor; back off once the queue is
                            // drained or no descriptor can be had.
                            if reserve.shed(&listener).await == Shed::Answered {
                                continue;
                            }
                            ACCEPT_BACKOFF_FD_EXHAUSTED
                        } else {
                            tracing::warn!(error = %e, "accept failed");
                            ACCEPT_BACKOFF_OTHER
                        };
                        tokio::select! {
                            _ = shutdown.requested() => break,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
        }
        drop(listener);
        tracing::info!(
            connections = reg.connection_count(),
            in_flight = reg.calls_in_flight(),
            "shutting down: no longer accepting; draining in-flight calls"
        );
        reg.draining.store(true, Ordering::Release);
        let drain = Duration::from_millis(reg.settings.limits.drain_timeout_ms);
        if tokio::time::timeout(drain, reg.calls_idle()).await.is_err() {
            tracing::warn!(
                left = reg.calls_in_flight(),
                "drain timeout: answering the calls still in flight with shutting_down"
            );
        }
        // Routed calls are answered here; calls at handlers when they see
        // the close below.
        crate::calls::fail_all(
            reg,
            &WireError::new(
                ErrorCode::ShuttingDown,
                "the broker is shutting down and the call did not finish within the drain timeout",
            ),
        );
        reg.close_tx.send_replace(true);
        let grace = tokio::time::Instant::now() + CLOSE_GRACE;
        while !tasks.is_empty() {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = tokio::time::sleep_until(grace) => {
                    tracing::warn!(left = tasks.len(), "connections did not close in time; aborting them");
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                }
            }
        }
        sweeper.abort();
        Ok(())
    }
}
