//! Per-session hosts: one instance of each `scope = "session"` host for
//! every logind session of a class in `[sessions].classes`, running as
//! that session's user.
//!
//! The sessions come from logind over D-Bus (`[sessions].bus`, the system
//! bus by default): `ListSessions` when the bus is reached, then the
//! `SessionNew` and `SessionRemoved` signals; each session's `Class`,
//! `State` and `User` decide, and the user's `RuntimePath` becomes the
//! host's `XDG_RUNTIME_DIR` when it exists. A host stops when its session
//! is removed or its `State` becomes `closing` (read again every
//! [`STATE_POLL`]: logind need not signal it). Losing the bus is logged
//! and retried with backoff; the hosts already running keep running, and
//! the sessions are listed again once the bus is back, so a broker (or a
//! bus) restarted while sessions exist picks them up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use warden_policy::{HostSection, SessionsSection};
use warden_supervisor::HostHandle;
use zbus::zvariant::OwnedObjectPath;

use crate::hosts::{Launcher, SessionInfo};

/// How often the state of each session with hosts is read again.
const STATE_POLL: Duration = Duration::from_secs(2);
/// How long (in 100 ms steps) a new session's runtime directory is waited
/// for before its hosts start.
const RUNTIME_DIR_WAIT_STEPS: u32 = 30;
/// The longest wait between two attempts to reach the bus.
const MAX_RETRY: Duration = Duration::from_secs(10);

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Manager {
    fn list_sessions(&self) -> zbus::Result<Vec<(String, u32, String, String, OwnedObjectPath)>>;

    #[zbus(name = "GetSessionByPID")]
    fn get_session_by_pid(&self, pid: u32) -> zbus::Result<OwnedObjectPath>;

    #[zbus(signal)]
    fn session_new(&self, id: String, path: OwnedObjectPath) -> zbus::Result<()>;

    #[zbus(signal)]
    fn session_removed(&self, id: String, path: OwnedObjectPath) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Session",
    default_service = "org.freedesktop.login1"
)]
trait Session {
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn class(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn user(&self) -> zbus::Result<(u32, OwnedObjectPath)>;
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.User",
    default_service = "org.freedesktop.login1"
)]
trait User {
    #[zbus(property)]
    fn runtime_path(&self) -> zbus::Result<String>;
}

/// One session's hosts.
struct Live {
    path: OwnedObjectPath,
    hosts: Vec<(String, HostHandle)>,
    /// Which sighting of the session this is (a start that finds another
    /// generation, or none, was cancelled by a removal).
    generation: u64,
}

/// Starts a session's hosts once its runtime directory exists (or after a
/// short wait): logind announces the session while systemd still creates
/// the user's runtime directory (user-runtime-dir@UID), and the first
/// start should already get XDG_RUNTIME_DIR.
async fn start_when_ready(
    sections: Vec<HostSection>,
    launcher: Launcher,
    live: LiveMap,
    generation: u64,
    info: SessionInfo,
    account: warden_sys::UserInfo,
    class: String,
) {
    if let Some(dir) = &info.runtime_path {
        for _ in 0..RUNTIME_DIR_WAIT_STEPS {
            if dir.is_dir() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let still_wanted = |live: &HashMap<String, Live>| {
        live.get(&info.id)
            .is_some_and(|l| l.generation == generation)
    };
    if !still_wanted(&live.lock().unwrap_or_else(|p| p.into_inner())) {
        return;
    }
    let mut hosts = Vec::new();
    for h in &sections {
        match launcher.start(h, &account, Some(info.clone())) {
            Ok(handle) => hosts.push((h.name.clone(), handle)),
            Err(e) => {
                tracing::error!(host = %h.name, session = %info.id, "cannot start the session host: {e:#}")
            }
        }
    }
    tracing::info!(session = %info.id, uid = account.uid, user = %account.name, %class, hosts = hosts.len(), "session hosts started");
    let mut map = live.lock().unwrap_or_else(|p| p.into_inner());
    match map.get_mut(&info.id) {
        Some(l) if l.generation == generation => l.hosts = hosts,
        // Removed while starting: stop what was just started.
        _ => {
            drop(map);
            for (name, handle) in hosts {
                launcher.forget_session(&name, &info.id);
                tokio::spawn(handle.stop());
            }
        }
    }
}

type LiveMap = Arc<Mutex<HashMap<String, Live>>>;

/// A logind signal, as the pump task hands it on.
enum SessionEvent {
    New(String, OwnedObjectPath),
    Removed(String),
}

/// Aborts a task when dropped (the signal pump of one bus connection).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The session hosts, following logind.
pub struct SessionHosts {
    live: LiveMap,
    task: tokio::task::JoinHandle<()>,
}

impl SessionHosts {
    /// Starts following logind's sessions on `cfg.bus`.
    pub fn start(
        cfg: &SessionsSection,
        sections: Vec<HostSection>,
        launcher: Launcher,
    ) -> SessionHosts {
        let live: LiveMap = Arc::default();
        let watcher = Watcher {
            cfg: cfg.clone(),
            sections,
            launcher,
            live: Arc::clone(&live),
            generation: AtomicU64::new(0),
        };
        let task = tokio::spawn(watcher.run());
        SessionHosts { live, task }
    }

    /// Stops following logind and hands back every session host, to be
    /// stopped.
    pub fn stop(self) -> Vec<HostHandle> {
        self.task.abort();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.drain()
            .flat_map(|(_, l)| l.hosts.into_iter().map(|(_, h)| h))
            .collect()
    }
}

struct Watcher {
    cfg: SessionsSection,
    sections: Vec<HostSection>,
    launcher: Launcher,
    live: LiveMap,
    generation: AtomicU64,
}

impl Watcher {
    async fn run(self) {
        let mut delay = Duration::from_millis(250);
        loop {
            match self.follow().await {
                Ok(()) => tracing::warn!(
                    bus = %self.cfg.bus,
                    "lost the bus logind is on; session hosts keep running, retrying"
                ),
                Err(e) => tracing::warn!(
                    bus = %self.cfg.bus,
                    "cannot follow logind's sessions: {e}; session hosts keep running, retrying in {delay:?}"
                ),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    /// Follows the sessions until the bus goes away.
    async fn follow(&self) -> zbus::Result<()> {
        let conn = zbus::connection::Builder::address(self.cfg.bus.as_str())?
            .build()
            .await?;
        let manager = ManagerProxy::new(&conn).await?;
        let mut new = manager.receive_session_new().await?;
        let mut removed = manager.receive_session_removed().await?;
        // The signal streams are drained by a task of their own, always:
        // zbus stops reading the socket while a stream's queue is full,
        // and the method replies `consider` awaits would then never come.
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    sig = new.next() => match sig {
                        Some(sig) => sig.args().ok().map(|a| SessionEvent::New(a.id.clone(), a.path.clone())),
                        None => break,
                    },
                    sig = removed.next() => match sig {
                        Some(sig) => sig.args().ok().map(|a| SessionEvent::Removed(a.id.clone())),
                        None => break,
                    },
                };
                if let Some(e) = event {
                    if tx.send(e).is_err() {
                        break;
                    }
                }
            }
        });
        let _abort_pump = AbortOnDrop(pump);
        let listed = manager.list_sessions().await?;
        tracing::info!(sessions = listed.len(), "following logind's sessions");
        let listed_ids: Vec<String> = listed.iter().map(|s| s.0.clone()).collect();
        for id in self.live_ids() {
            if !listed_ids.contains(&id) {
                self.stop_session(&id, "it is gone");
            }
        }
        for (id, _, _, _, path) in listed {
            self.consider(&conn, &id, path).await;
        }
        let mut poll = tokio::time::interval(STATE_POLL);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    // The streams ended: the bus is gone.
                    None => return Ok(()),
                    Some(SessionEvent::New(id, path)) => self.consider(&conn, &id, path).await,
                    Some(SessionEvent::Removed(id)) => self.stop_session(&id, "logind removed it"),
                },
                _ = poll.tick() => self.poll_states(&conn).await,
            }
        }
    }

    fn live_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the session's hosts if its class matches and it is not
    /// closing (and they do not run yet).
    async fn consider(&self, conn: &zbus::Connection, id: &str, path: OwnedObjectPath) {
        if self.lock().contains_key(id) {
            return;
        }
        let session = match session_proxy(conn, &path).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(session = %id, "cannot read the session: {e}");
                return;
            }
        };
        let (class, state, user) = match (
            session.class().await,
            session.state().await,
            session.user().await,
        ) {
            (Ok(c), Ok(s), Ok(u)) => (c, s, u),
            (c, s, u) => {
                let e = [c.err(), s.err(), u.err()]
                    .into_iter()
                    .flatten()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::warn!(session = %id, "cannot read the session's class, state and user: {e}");
                return;
            }
        };
        if !self.cfg.classes.contains(&class) || state == "closing" {
            tracing::debug!(session = %id, %class, %state, "no session hosts for this session");
            return;
        }
        let (uid, user_path) = user;
        let runtime_path = match user_proxy(conn, &user_path).await {
            Ok(u) => u.runtime_path().await.ok(),
            Err(_) => None,
        }
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
        let account = match warden_sys::user_by_uid(uid) {
            Ok(Some(u)) => u,
            Ok(None) => {
                tracing::warn!(session = %id, uid, "the session's user is not in the user database; no session hosts");
                return;
            }
            Err(e) => {
                tracing::warn!(session = %id, uid, "cannot look the session's user up: {e}");
                return;
            }
        };
        // Known from now on (a second SessionNew changes nothing; a
        // removal before the start below cancels it).
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id.to_owned(),
            Live {
                path,
                hosts: Vec::new(),
                generation,
            },
        );
        let info = SessionInfo {
            id: id.to_owned(),
            runtime_path,
        };
        // Off the watcher's loop: the wait below must not hold up other
        // sessions' signals.
        tokio::spawn(start_when_ready(
            self.sections.clone(),
            self.launcher.clone(),
            Arc::clone(&self.live),
            generation,
            info,
            account,
            class,
        ));
    }

    fn stop_session(&self, id: &str, why: &str) {
        let Some(live) = self.lock().remove(id) else {
            return;
        };
        tracing::info!(session = %id, "stopping the session's hosts: {why}");
        for (name, handle) in live.hosts {
            self.launcher.forget_session(&name, id);
            tokio::spawn(handle.stop());
        }
    }

    async fn poll_states(&self, conn: &zbus::Connection) {
        let sessions: Vec<(String, OwnedObjectPath)> = self
            .lock()
            .iter()
            .map(|(id, l)| (id.clone(), l.path.clone()))
            .collect();
        for (id, path) in sessions {
            let state = match session_proxy(conn, &path).await {
                Ok(s) => s.state().await,
                Err(e) => Err(e),
            };
            match state {
                Ok(s) if s == "closing" => self.stop_session(&id, "its state is closing"),
                Ok(_) => {}
                // The object is gone: the session ended and the signal was
                // missed (say, while the bus was away).
                Err(zbus::Error::MethodError(name, _, _))
                    if name.as_str().ends_with("UnknownObject")
                        || name.as_str().ends_with("UnknownMethod")
                        || name.as_str().ends_with("UnknownInterface") =>
                {
                    self.stop_session(&id, "logind no longer knows it")
                }
                Err(_) => {}
            }
        }
    }
}

async fn session_proxy<'a>(
    conn: &zbus::Connection,
    path: &'a OwnedObjectPath,
) -> zbus::Result<SessionProxy<'a>> {
    SessionProxy::builder(conn)
        .path(path.as_ref())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

async fn user_proxy<'a>(
    conn: &zbus::Connection,
    path: &'a OwnedObjectPath,
) -> zbus::Result<UserProxy<'a>> {
    UserProxy::builder(conn)
        .path(path.as_ref())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

/// How long asking logind for a caller's session may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The broker's [`warden::SessionLookup`]: `GetSessionByPID` on logind
/// (`[sessions].bus`), over a connection made on first use and made again
/// after an error.
pub struct LogindLookup {
    bus: String,
    conn: tokio::sync::Mutex<Option<zbus::Connection>>,
}

impl LogindLookup {
    /// A lookup on `cfg.bus`.
    pub fn new(cfg: &SessionsSection) -> Arc<LogindLookup> {
        Arc::new(LogindLookup {
            bus: cfg.bus.clone(),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn ask(&self, pid: u32) -> zbus::Result<Option<String>> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            *conn = Some(
                zbus::connection::Builder::address(self.bus.as_str())?
                    .build()
                    .await?,
            );
        }
        let Some(c) = conn.as_ref() else {
            return Ok(None);
        };
        let manager = ManagerProxy::new(c).await?;
        let path = match manager.get_session_by_pid(pid).await {
            Ok(p) => p,
            // The real answer for a process in no session.
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str().ends_with("NoSessionForPID") =>
            {
                return Ok(None)
            }
            Err(e) => {
                *conn = None;
                return Err(e);
            }
        };
        let id = session_proxy(c, &path).await?.id().await?;
        Ok(Some(id))
    }
}

impl warden::SessionLookup for LogindLookup {
    fn session_of(
        &self,
        pid: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>> {
        Box::pin(async move {
            match tokio::time::timeout(LOOKUP_TIMEOUT, self.ask(pid)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(pid, "cannot ask logind for the caller's session: {e}");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        pid,
                        "logind did not say the caller's session within {LOOKUP_TIMEOUT:?}"
                    );
                    None
                }
            }
        })
    }
}
