//! The one owner of the broker's shared state.
//!
//! Connections, providers, topic memberships, monitors, routed calls and
//! call statistics live here, and only the methods of [`Registry`] change
//! them. Each invariant is therefore kept in one place:
//! - a method has a provider if and only if that provider's entry lists
//!   it (`provide`, `revoke`, `remove_connection`);
//! - a connection is a topic's subscriber if and only if its entry lists
//!   the topic (`subscribe`, `unsubscribe`, `revoke`, `remove_connection`);
//! - `monitor_count` is the number of monitoring entries;
//! - a routed call is pending exactly once, reachable from its provider
//!   and (for a connection caller) from its caller, until it is taken
//!   ([`Registry::take_call`], [`Registry::take_calls_of`]).
//!
//! Locks are std mutexes held for a lookup or an update, never across an
//! `.await`, and never two at once except `state` then `calls` in
//! [`Registry::remove_connection`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, Notify};
use warden_policy::{Action, Limits, Policy, SlowSubscriber};
use warden_proto::{MethodName, Payload, RequestId, TopicName, WireError};

use crate::peer::PeerRef;
use crate::queue::UidAccount;
use crate::stats::{CallStats, MethodStats, LATENCY_BUCKETS_US};

/// Locks a mutex, recovering the data if a panicking thread poisoned it:
/// every critical section here leaves the maps consistent at each step.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Settings fixed for the broker's lifetime.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) limits: Limits,
    pub(crate) slow: SlowSubscriber,
    pub(crate) max_frame: usize,
    pub(crate) call_timeout: Duration,
    /// Test hooks: a call to [`crate::broker::TEST_PANIC_METHOD`] panics
    /// in the connection task.
    pub(crate) test_hooks: bool,
    /// The `[invitations]` section.
    pub(crate) invitations: warden_policy::InvitationsSection,
}

/// Who waits for the answer of a routed call.
#[derive(Debug)]
pub(crate) enum Answerer {
    /// A connection, under its own request id.
    Peer { peer: PeerRef, id: RequestId },
    /// Feature code in the broker (see [`crate::BrokerHandle::call`]).
    Local(oneshot::Sender<Result<Payload, WireError>>),
}

/// A call routed to a provider, waiting for its answer.
#[derive(Debug)]
pub(crate) struct PendingCall {
    pub(crate) answerer: Answerer,
    pub(crate) method: MethodName,
    /// When the call arrived (for the latency histogram).
    pub(crate) started: Instant,
    /// The rule that allowed it, kept only while someone monitors.
    pub(crate) rule: Option<String>,
}

/// A routed call's key: (provider connection, broker-assigned id).
pub(crate) type CallKey = (u64, u64);

#[derive(Debug, Default)]
struct Calls {
    pending: HashMap<CallKey, PendingCall>,
    /// Provider connection → broker ids of the calls pending at it.
    at_provider: HashMap<u64, HashSet<u64>>,
    /// Caller connection → its ids of calls pending → the calls' keys.
    of_caller: HashMap<u64, HashMap<RequestId, CallKey>>,
    /// Deadlines of pending calls; entries of calls already answered stay
    /// until they expire or the heap is compacted.
    deadlines: BinaryHeap<Reverse<(Instant, CallKey)>>,
}

/// A connection's registrations.
#[derive(Debug)]
struct Entry {
    peer: PeerRef,
    provided: HashSet<MethodName>,
    subscriptions: HashSet<TopicName>,
    /// `Some(with_payloads)` while monitoring.
    monitoring: Option<bool>,
}

/// Who provides a method.
#[derive(Debug, Clone)]
enum Providers {
    /// One connection.
    One(PeerRef),
    /// The session instances of one per-session host: connections whose
    /// identities carry the same `host` and each a `session`. A call goes
    /// to the caller's own instance ([`Registry::route`]).
    Sessions(Vec<PeerRef>),
}

impl Providers {
    /// One of them (all of a `Sessions` share a host name).
    fn any(&self) -> Option<&PeerRef> {
        match self {
            Providers::One(p) => Some(p),
            Providers::Sessions(v) => v.first(),
        }
    }
}

/// Where a call to a method goes, for a given caller.
#[derive(Debug)]
pub(crate) enum Route {
    /// Nobody provides it.
    Unknown,
    /// To this connection.
    To(PeerRef),
    /// A per-session host provides it, but no instance runs in a session
    /// of the caller's user.
    NoSession { host: String },
    /// The caller's user has several sessions with an instance: which one
    /// is not decided yet.
    Several { host: String, sessions: Vec<String> },
    /// A `target` was given, but the method is not a per-session host's.
    NotScoped,
    /// A `target` was given, and no instance matches it.
    NoInstance { host: String, target: String },
}

/// Why a call to a per-session host's method could not be routed, in
/// words for the caller.
pub(crate) fn unroutable(method: &MethodName, uid: u32, route: &Route) -> String {
    match route {
        Route::NoSession { host } => format!(
            "{method} is served by the per-session host {host}, and none runs in a session of uid {uid}: log in (a session of a class the broker's [sessions] lists) and try again"
        ),
        Route::Several { host, sessions } => format!(
            "{method} is served by the per-session host {host}, which runs in several sessions of uid {uid} ({}), and the session manager does not place your process in one of them: name one with the call's target, {{\"session\": ID}} (wardenctl call --session ID)",
            sessions.join(", ")
        ),
        Route::NoInstance { host, target } => format!(
            "no instance of the per-session host {host} serves {target} (see wardenctl hosts)"
        ),
        Route::NotScoped => format!(
            "{method} is not served by a per-session host: a call to it takes no target"
        ),
        Route::To(_) | Route::Unknown => format!("{method} cannot be routed"),
    }
}

#[derive(Debug, Default)]
struct State {
    conns: HashMap<u64, Entry>,
    /// The most connections `conns` held since it was last compacted:
    /// what its allocation was sized for (`HashMap::capacity` is no
    /// measure of that: removals leave tombstones that lower it).
    conns_high_water: usize,
    providers: HashMap<MethodName, Providers>,
    /// What providers said their methods do (`provide`'s `description`);
    /// an entry lives exactly as long as its `providers` entry.
    descriptions: HashMap<MethodName, String>,
    topics: HashMap<TopicName, Vec<PeerRef>>,
    monitors: Vec<(PeerRef, bool)>,
}

impl State {
    fn leave_topic(&mut self, topic: &TopicName, conn: u64) {
        if let Some(subs) = self.topics.get_mut(topic) {
            subs.retain(|c| c.id != conn);
            if subs.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    fn unprovide(&mut self, method: &MethodName, conn: u64) {
        let gone = match self.providers.get_mut(method) {
            Some(Providers::One(p)) => p.id == conn,
            Some(Providers::Sessions(v)) => {
                v.retain(|p| p.id != conn);
                v.is_empty()
            }
            None => false,
        };
        if gone {
            self.providers.remove(method);
            self.descriptions.remove(method);
        }
    }
}

/// Why `provide` was refused.
#[derive(Debug)]
pub(crate) enum ProvideRefused {
    /// The connection is at `max_provided_per_connection`.
    Limit(u64),
    /// Another connection provides it: (uid, pid).
    Taken(u32, u32),
}

/// What a connection's removal left to finish.
#[derive(Debug, Default)]
pub(crate) struct Removed {
    /// Calls routed to it, now without a provider.
    pub(crate) routed_to_it: Vec<PendingCall>,
    /// Calls it made that are still at providers: (provider, broker id,
    /// the call).
    pub(crate) its_calls: Vec<(CallKey, PendingCall)>,
}

/// What a policy reload took from a connection.
#[derive(Debug, Default)]
pub(crate) struct Revoked {
    pub(crate) topics: Vec<TopicName>,
    pub(crate) methods: Vec<MethodName>,
}

/// Shared broker state; see the module docs.
pub(crate) struct Registry {
    pub(crate) settings: Settings,
    pub(crate) started: Instant,
    /// The current policy; connections watch it and recompile their
    /// snapshot when it changes (SIGHUP reload).
    pub(crate) policy_tx: watch::Sender<Arc<Policy>>,
    /// Tells every connection (and handler call) that the broker closes.
    pub(crate) close_tx: watch::Sender<bool>,
    pub(crate) draining: AtomicBool,
    state: Mutex<State>,
    monitor_count: AtomicUsize,
    conn_count: AtomicUsize,
    /// Connections closed since the start (a slot given back), for
    /// whoever acts on closures (wardend's heap trim) without sampling.
    closed_total: AtomicU64,
    next_conn_id: AtomicU64,
    uids: Mutex<HashMap<u32, Arc<UidAccount>>>,
    stats: Mutex<CallStats>,
    calls: Mutex<Calls>,
    /// Calls in flight broker-wide, routed or at handlers (for the drain).
    in_flight: AtomicUsize,
    idle: Notify,
    /// An earlier deadline than the sweeper sleeps for was added.
    pub(crate) deadline_added: Notify,
    /// Invitations and the throttle of failed joins.
    pub(crate) invitations: crate::invitations::Invitations,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("connections", &self.conn_count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A connection's slot in the global and per-uid counts, released on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    registry: Arc<Registry>,
    pub(crate) account: Arc<UidAccount>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.conn_count.fetch_sub(1, Ordering::AcqRel);
        self.registry.closed_total.fetch_add(1, Ordering::AcqRel);
        self.account.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Registry {
    pub(crate) fn new(settings: Settings, policy: Arc<Policy>) -> Registry {
        let invitations = crate::invitations::Invitations::new(settings.invitations.clone());
        Registry {
            invitations,
            settings,
            started: Instant::now(),
            policy_tx: watch::channel(policy).0,
            close_tx: watch::channel(false).0,
            draining: AtomicBool::new(false),
            state: Mutex::default(),
            monitor_count: AtomicUsize::new(0),
            conn_count: AtomicUsize::new(0),
            closed_total: AtomicU64::new(0),
            next_conn_id: AtomicU64::new(1),
            uids: Mutex::default(),
            stats: Mutex::default(),
            calls: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            deadline_added: Notify::new(),
        }
    }

    pub(crate) fn current_policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy_tx.borrow())
    }

    /// Has every connection recompile its policy snapshot under the same
    /// policy (after an invitation was revoked: those holding it drop the
    /// role).
    pub(crate) fn reapply_policy(&self) {
        self.policy_tx.send_modify(|_| {});
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    // ---- connections ------------------------------------------------

    /// Takes a connection slot for `uid`; returns it with the totals
    /// (global, this uid's) including it.
    pub(crate) fn take_slot(self: &Arc<Self>, uid: u32) -> (Slot, usize, usize) {
        let account = Arc::clone(lock(&self.uids).entry(uid).or_default());
        let total = self.conn_count.fetch_add(1, Ordering::AcqRel) + 1;
        let per_uid = account.connections.fetch_add(1, Ordering::AcqRel) + 1;
        (
            Slot {
                registry: Arc::clone(self),
                account,
            },
            total,
            per_uid,
        )
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.conn_count.load(Ordering::Relaxed)
    }

    pub(crate) fn connections_closed(&self) -> u64 {
        self.closed_total.load(Ordering::Acquire)
    }

    pub(crate) fn add_connection(&self, peer: PeerRef) {
        let mut st = lock(&self.state);
        st.conns.insert(
            peer.id,
            Entry {
                peer,
                provided: HashSet::new(),
                subscriptions: HashSet::new(),
                monitoring: None,
            },
        );
        st.conns_high_water = st.conns_high_water.max(st.conns.len());
    }

    /// Gives the tables' high-water capacity back (a table that grew for
    /// many connections keeps its allocation after they leave, out of
    /// malloc_trim's reach): called before the heap trim, after closures.
    pub(crate) fn compact(&self) {
        let mut st = lock(&self.state);
        // Only once under a quarter of the high-water mark, so a table that
        // breathes with its load is not rehashed at every trim.
        if st.conns_high_water > 256 && st.conns.len() * 4 < st.conns_high_water {
            let keep = st.conns.len() * 2;
            st.conns.shrink_to(keep);
            st.conns_high_water = st.conns.len();
        }
        st.topics.shrink_to_fit();
        drop(st);
        let mut c = lock(&self.calls);
        c.pending.shrink_to_fit();
        c.at_provider.shrink_to_fit();
        c.of_caller.shrink_to_fit();
    }

    /// Removes a connection with everything it registered: its provided
    /// methods, subscriptions, monitoring, and the routed calls to it and
    /// from it (returned, to be answered or withdrawn by the caller).
    pub(crate) fn remove_connection(&self, id: u64) -> Removed {
        {
            let mut st = lock(&self.state);
            if let Some(e) = st.conns.remove(&id) {
                for m in &e.provided {
                    st.unprovide(m, id);
                }
                for t in &e.subscriptions {
                    st.leave_topic(t, id);
                }
                if e.monitoring.is_some() {
                    st.monitors.retain(|(c, _)| c.id != id);
                    self.monitor_count.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        let mut calls = lock(&self.calls);
        let to_it: Vec<CallKey> = calls
            .at_provider
            .get(&id)
            .map(|ids| ids.iter().map(|b| (id, *b)).collect())
            .unwrap_or_default();
        let mut removed = Removed::default();
        for k in to_it {
            if let Some(c) = take_locked(&mut calls, k) {
                removed.routed_to_it.push(c);
            }
        }
        let from_it: Vec<CallKey> = calls
            .of_caller
            .get(&id)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        for k in from_it {
            if let Some(c) = take_locked(&mut calls, k) {
                removed.its_calls.push((k, c));
            }
        }
        removed
    }

    /// Every open connection, by id.
    pub(crate) fn connections(&self) -> Vec<PeerRef> {
        let st = lock(&self.state);
        let mut v: Vec<PeerRef> = st.conns.values().map(|e| Arc::clone(&e.peer)).collect();
        v.sort_by_key(|p| p.id);
        v
    }

    pub(crate) fn peer(&self, id: u64) -> Option<PeerRef> {
        lock(&self.state)
            .conns
            .get(&id)
            .map(|e| Arc::clone(&e.peer))
    }

    // ---- providers --------------------------------------------------

    /// Registers `conn` as the provider of `method` (idempotent for the
    /// same connection).
    pub(crate) fn provide(
        &self,
        conn: u64,
        method: &MethodName,
        description: Option<String>,
    ) -> Result<(), ProvideRefused> {
        let max = self.settings.limits.max_provided_per_connection;
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let Some(entry) = st.conns.get_mut(&conn) else {
            return Ok(());
        };
        if entry.provided.contains(method) {
            return Ok(());
        }
        if entry.provided.len() as u64 >= max {
            return Err(ProvideRefused::Limit(max));
        }
        let me = &entry.peer.identity;
        let session_host = me.session.is_some() && me.host.is_some();
        match st.providers.get_mut(method) {
            None if session_host => {
                st.providers.insert(
                    method.clone(),
                    Providers::Sessions(vec![Arc::clone(&entry.peer)]),
                );
            }
            None => {
                st.providers
                    .insert(method.clone(), Providers::One(Arc::clone(&entry.peer)));
            }
            // Another session's instance of the same host: both serve it,
            // each for its own session.
            Some(Providers::Sessions(v))
                if session_host && v.first().is_some_and(|p| p.identity.host == me.host) =>
            {
                v.push(Arc::clone(&entry.peer));
            }
            Some(other) => {
                let (uid, pid) = other
                    .any()
                    .map_or((0, 0), |p| (p.identity.uid, p.identity.pid));
                return Err(ProvideRefused::Taken(uid, pid));
            }
        }
        if let Some(d) = description {
            st.descriptions.insert(method.clone(), d);
        }
        entry.provided.insert(method.clone());
        Ok(())
    }

    /// Withdraws `conn` as the provider of `method`; false if it was not.
    pub(crate) fn unprovide(&self, conn: u64, method: &MethodName) -> bool {
        let mut st = lock(&self.state);
        let was = st
            .conns
            .get_mut(&conn)
            .is_some_and(|e| e.provided.remove(method));
        if was {
            st.unprovide(method, conn);
        }
        was
    }

    /// The connection adopted as the child host `name` (for `session`,
    /// if given: that per-session instance), if it is connected.
    pub(crate) fn host_connection(&self, name: &str, session: Option<&str>) -> Option<PeerRef> {
        lock(&self.state)
            .conns
            .values()
            .find(|e| {
                e.peer.identity.host.as_deref() == Some(name)
                    && (session.is_none() || e.peer.identity.session.as_deref() == session)
                    // Not before its welcome: a frame ahead of it would
                    // break the host's handshake.
                    && e.peer.greeted.load(std::sync::atomic::Ordering::Acquire)
            })
            .map(|e| Arc::clone(&e.peer))
    }

    /// For a caller whose user has several sessions with instances of a
    /// per-session host: the instance in `session`, the caller's own (as
    /// the session manager reported it for the caller's pid).
    pub(crate) fn route_in_session(
        &self,
        method: &MethodName,
        caller: &warden_proto::Identity,
        session: Option<&str>,
    ) -> Route {
        if let (Some(sid), Some(Providers::Sessions(v))) =
            (session, lock(&self.state).providers.get(method))
        {
            if let Some(p) = v.iter().find(|p| {
                p.identity.uid == caller.uid && p.identity.session.as_deref() == Some(sid)
            }) {
                return Route::To(Arc::clone(p));
            }
        }
        self.route(method, caller)
    }

    /// Where a call to `method` with an explicit `target` goes (who may
    /// send it is the router's to decide).
    pub(crate) fn route_target(
        &self,
        method: &MethodName,
        target: &warden_proto::CallTarget,
    ) -> Route {
        use warden_proto::CallTarget;
        let st = lock(&self.state);
        let v = match st.providers.get(method) {
            None => return Route::Unknown,
            Some(Providers::One(_)) => return Route::NotScoped,
            Some(Providers::Sessions(v)) => v,
        };
        let host = v
            .first()
            .and_then(|p| p.identity.host.clone())
            .unwrap_or_default();
        let matching: Vec<&PeerRef> = v
            .iter()
            .filter(|p| match target {
                CallTarget::Session(id) => p.identity.session.as_deref() == Some(id.as_str()),
                CallTarget::Uid(uid) => p.identity.uid == *uid,
            })
            .collect();
        match matching.as_slice() {
            [one] => Route::To(Arc::clone(one)),
            [] => Route::NoInstance {
                host,
                target: match target {
                    CallTarget::Session(id) => format!("session {id}"),
                    CallTarget::Uid(uid) => format!("a session of uid {uid}"),
                },
            },
            several => Route::Several {
                host,
                sessions: several
                    .iter()
                    .filter_map(|p| p.identity.session.clone())
                    .collect(),
            },
        }
    }

    /// Where `caller`'s call to `method` goes: its provider, or for a
    /// per-session host the instance in a session of the caller's user
    /// (never another user's).
    pub(crate) fn route(&self, method: &MethodName, caller: &warden_proto::Identity) -> Route {
        let st = lock(&self.state);
        match st.providers.get(method) {
            None => Route::Unknown,
            Some(Providers::One(p)) => Route::To(Arc::clone(p)),
            Some(Providers::Sessions(v)) => {
                let host = v
                    .first()
                    .and_then(|p| p.identity.host.clone())
                    .unwrap_or_default();
                let mine: Vec<&PeerRef> =
                    v.iter().filter(|p| p.identity.uid == caller.uid).collect();
                match mine.as_slice() {
                    [] => Route::NoSession { host },
                    [one] => Route::To(Arc::clone(one)),
                    several => Route::Several {
                        host,
                        sessions: several
                            .iter()
                            .filter_map(|p| p.identity.session.clone())
                            .collect(),
                    },
                }
            }
        }
    }

    pub(crate) fn has_provider(&self, method: &str) -> bool {
        lock(&self.state).providers.contains_key(method)
    }

    /// Every provided method: its provider and what the provider said it
    /// does.
    pub(crate) fn providers_described(&self) -> Vec<(String, PeerRef, Option<String>)> {
        let st = lock(&self.state);
        st.providers
            .iter()
            .filter_map(|(m, p)| {
                Some((
                    m.as_str().to_owned(),
                    Arc::clone(p.any()?),
                    st.descriptions.get(m).cloned(),
                ))
            })
            .collect()
    }

    pub(crate) fn provider_names(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.state)
            .providers
            .keys()
            .map(|m| m.as_str().to_owned())
            .collect();
        v.sort();
        v
    }

    // ---- topics -----------------------------------------------------

    /// Subscribes `conn` to `topic`; `Err(max)` at
    /// `max_subscriptions_per_connection`. Idempotent.
    pub(crate) fn subscribe(&self, conn: u64, topic: &TopicName) -> Result<(), u64> {
        let max = self.settings.limits.max_subscriptions_per_connection;
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let Some(entry) = st.conns.get_mut(&conn) else {
            return Ok(());
        };
        if entry.subscriptions.contains(topic) {
            return Ok(());
        }
        if entry.subscriptions.len() as u64 >= max {
            return Err(max);
        }
        entry.subscriptions.insert(topic.clone());
        st.topics
            .entry(topic.clone())
            .or_default()
            .push(Arc::clone(&entry.peer));
        Ok(())
    }

    /// Unsubscribes `conn` from `topic`; true if it was subscribed.
    pub(crate) fn unsubscribe(&self, conn: u64, topic: &TopicName) -> bool {
        let mut st = lock(&self.state);
        let was = st
            .conns
            .get_mut(&conn)
            .is_some_and(|e| e.subscriptions.remove(topic));
        if was {
            st.leave_topic(topic, conn);
        }
        was
    }

    pub(crate) fn subscribers(&self, topic: &TopicName) -> Vec<PeerRef> {
        lock(&self.state)
            .topics
            .get(topic)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn topic_count(&self) -> usize {
        lock(&self.state).topics.len()
    }

    // ---- monitors ---------------------------------------------------

    /// Makes `conn` a monitor (the first topic it monitors decides whether
    /// it sees payloads). False if it already was one.
    pub(crate) fn start_monitor(&self, conn: u64, payloads: bool) -> bool {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let Some(entry) = st.conns.get_mut(&conn) else {
            return false;
        };
        if entry.monitoring.is_some() {
            return false;
        }
        entry.monitoring = Some(payloads);
        st.monitors.push((Arc::clone(&entry.peer), payloads));
        self.monitor_count.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub(crate) fn stop_monitor(&self, conn: u64) {
        let mut st = lock(&self.state);
        if st
            .conns
            .get_mut(&conn)
            .and_then(|e| e.monitoring.take())
            .is_some()
        {
            st.monitors.retain(|(c, _)| c.id != conn);
            self.monitor_count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// True if anyone monitors (one relaxed load: checked on every call).
    pub(crate) fn monitoring(&self) -> bool {
        self.monitor_count.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn monitors(&self) -> Vec<(PeerRef, bool)> {
        lock(&self.state).monitors.clone()
    }

    // ---- policy reload ----------------------------------------------

    /// Drops the subscriptions and provided methods of `conn` that
    /// `allowed` no longer permits, and says which.
    pub(crate) fn revoke(
        &self,
        conn: u64,
        mut allowed: impl FnMut(Action, &str) -> bool,
    ) -> Revoked {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let Some(entry) = st.conns.get_mut(&conn) else {
            return Revoked::default();
        };
        let mut r = Revoked {
            topics: entry
                .subscriptions
                .iter()
                .filter(|t| !allowed(Action::Subscribe, t.as_str()))
                .cloned()
                .collect(),
            methods: entry
                .provided
                .iter()
                .filter(|m| !allowed(Action::Provide, m.as_str()))
                .cloned()
                .collect(),
        };
        r.topics.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        r.methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        for t in &r.topics {
            entry.subscriptions.remove(t);
        }
        for m in &r.methods {
            entry.provided.remove(m);
        }
        for t in &r.topics {
            st.leave_topic(t, conn);
        }
        for m in &r.methods {
            st.unprovide(m, conn);
        }
        r
    }

    // ---- routed calls -----------------------------------------------

    /// True if the connection `caller` has a routed call with id `id` in
    /// flight.
    pub(crate) fn caller_has_call(&self, caller: u64, id: RequestId) -> bool {
        lock(&self.calls)
            .of_caller
            .get(&caller)
            .is_some_and(|m| m.contains_key(&id))
    }

    /// Records a routed call as pending at `key` until `deadline`.
    pub(crate) fn add_call(&self, key: CallKey, call: PendingCall, deadline: Instant) {
        if let Answerer::Peer { peer, .. } = &call.answerer {
            peer.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let mut calls = lock(&self.calls);
        if let Answerer::Peer { peer, id } = &call.answerer {
            calls.of_caller.entry(peer.id).or_default().insert(*id, key);
        }
        calls.at_provider.entry(key.0).or_default().insert(key.1);
        calls.pending.insert(key, call);
        // Compact when stale entries outnumber live calls, so a high call
        // rate cannot grow the heap without bound.
        if calls.deadlines.len() > 4 * calls.pending.len() + 4096 {
            let old = std::mem::take(&mut calls.deadlines);
            let live: BinaryHeap<_> = old
                .into_iter()
                .filter(|Reverse((_, k))| calls.pending.contains_key(k))
                .collect();
            calls.deadlines = live;
        }
        let earliest = calls
            .deadlines
            .peek()
            .is_none_or(|Reverse((t, _))| deadline < *t);
        calls.deadlines.push(Reverse((deadline, key)));
        drop(calls);
        if earliest {
            self.deadline_added.notify_one();
        }
    }

    /// Takes a pending call (its answer arrived, or it is withdrawn).
    /// `None` if it was already answered.
    pub(crate) fn take_call(&self, key: CallKey) -> Option<PendingCall> {
        take_locked(&mut lock(&self.calls), key)
    }

    /// Takes the call `caller` sent with id `id`, with its key.
    pub(crate) fn take_call_of(
        &self,
        caller: u64,
        id: RequestId,
    ) -> Option<(CallKey, PendingCall)> {
        let mut calls = lock(&self.calls);
        let key = *calls.of_caller.get(&caller)?.get(&id)?;
        take_locked(&mut calls, key).map(|c| (key, c))
    }

    /// Takes every pending call (at shutdown, past the drain timeout).
    pub(crate) fn take_all_calls(&self) -> Vec<PendingCall> {
        let mut calls = lock(&self.calls);
        calls.of_caller.clear();
        calls.at_provider.clear();
        calls.deadlines.clear();
        calls.pending.drain().map(|(_, c)| c).collect()
    }

    /// The earliest deadline, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        lock(&self.calls).deadlines.peek().map(|Reverse((t, _))| *t)
    }

    /// Pops the keys of calls whose deadline passed by `now` (answered or
    /// not: [`Registry::take_call`] tells).
    pub(crate) fn expired(&self, now: Instant) -> Vec<CallKey> {
        let mut calls = lock(&self.calls);
        let mut out = Vec::new();
        while let Some(Reverse((t, k))) = calls.deadlines.peek() {
            if *t > now {
                break;
            }
            out.push(*k);
            calls.deadlines.pop();
        }
        out
    }

    /// Counts a call in flight at a handler (routed calls are counted by
    /// [`Registry::add_call`]).
    pub(crate) fn handler_call_started(&self, caller: &PeerRef) {
        caller.in_flight.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A call counted in flight finished (answered); `caller` is the
    /// connection that made it, if any.
    pub(crate) fn call_finished(&self, caller: Option<&PeerRef>) {
        if let Some(c) = caller {
            c.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn calls_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once no call is in flight (at once if none is).
    pub(crate) async fn calls_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.calls_in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }

    // ---- statistics -------------------------------------------------

    /// Records one finished call of `method`: its outcome and latency,
    /// under its own name if `resolved` (it named something that serves
    /// calls when it arrived) and the table has room, else as unresolved.
    pub(crate) fn record_call(
        &self,
        method: &str,
        resolved: bool,
        error: Option<warden_proto::ErrorCode>,
        started: Instant,
    ) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        lock(&self.stats).record(method, resolved, error, bucket, us);
    }

    /// The per-method table and the `unresolved` bucket, each rendered by
    /// `render`, read under one lock.
    pub(crate) fn method_table<T>(
        &self,
        render: impl Fn(&MethodStats) -> T,
    ) -> (std::collections::BTreeMap<String, T>, T) {
        let stats = lock(&self.stats);
        let methods = stats
            .methods
            .iter()
            .map(|(m, s)| (m.clone(), render(s)))
            .collect();
        (methods, render(&stats.unresolved))
    }

    /// Bytes queued per uid (uids with none left out).
    pub(crate) fn queued_bytes_by_uid(&self) -> std::collections::BTreeMap<String, u64> {
        lock(&self.uids)
            .iter()
            .map(|(uid, a)| (uid.to_string(), a.queued_bytes.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

fn take_locked(calls: &mut Calls, key: CallKey) -> Option<PendingCall> {
    let call = calls.pending.remove(&key)?;
    if let Some(ids) = calls.at_provider.get_mut(&key.0) {
        ids.remove(&key.1);
        if ids.is_empty() {
            calls.at_provider.remove(&key.0);
        }
    }
    if let Answerer::Peer { peer, id } = &call.answerer {
        if let Some(m) = calls.of_caller.get_mut(&peer.id) {
            m.remove(id);
            if m.is_empty() {
                calls.of_caller.remove(&peer.id);
            }
        }
    }
    Some(call)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{KillSwitch, Outbox, Peer, PeerParts};
    use crate::queue::QueuedFrame;
    use warden_proto::Identity;

    /// An outbox that keeps nothing (these tests look at the registry
    /// only).
    #[derive(Debug)]
    struct Nowhere;
    impl Outbox for Nowhere {
        fn enqueue(&self, _: QueuedFrame) -> bool {
            true
        }
        fn flush(&self) {}
    }

    fn registry() -> Arc<Registry> {
        let config = warden_policy::Config::parse(
            "[limits]\nmax_provided_per_connection = 2\nmax_subscriptions_per_connection = 2\n",
            "t.toml",
            &warden_policy::StaticResolver::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let settings = Settings {
            limits: config.limits.clone(),
            slow: SlowSubscriber::Drop,
            max_frame: 65536,
            call_timeout: Duration::from_secs(1),
            test_hooks: false,
            invitations: config.invitations.clone(),
        };
        Arc::new(Registry::new(settings, Arc::clone(&config.policy)))
    }

    fn peer(reg: &Arc<Registry>, id: u64) -> PeerRef {
        let (ctl_tx, _) = tokio::sync::mpsc::channel(4);
        let (ev_tx, _) = tokio::sync::mpsc::channel(4);
        let (slot, _, _) = reg.take_slot(1000);
        let p = Arc::new(Peer::new(PeerParts {
            id,
            identity: Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![],
                pid: 1,
                host: None,
                session: None,
            },
            pidfd: None,
            comm: None,
            ctl_tx,
            ev_tx,
            account: Arc::clone(&slot.account),
            kill: Arc::new(KillSwitch::default()),
            outbox: Arc::new(Nowhere),
        }));
        std::mem::forget(slot);
        reg.add_connection(Arc::clone(&p));
        p
    }

    fn name(s: &str) -> MethodName {
        MethodName::try_from(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn topic(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn compact_gives_back_the_capacity_of_connections_that_left() {
        let reg = registry();
        let capacity = || lock(&reg.state).conns.capacity();
        let peers: Vec<PeerRef> = (1..=3000).map(|id| peer(&reg, id)).collect();
        let grown = capacity();
        assert!(grown >= 3000, "{grown}");
        // A table still a third full keeps its allocation (no rehash
        // churn): compacting changes nothing, not even the tombstones'
        // share of `capacity()`.
        for p in &peers[1000..] {
            reg.remove_connection(p.id);
        }
        let before = capacity();
        reg.compact();
        assert_eq!(capacity(), before);
        assert_eq!(lock(&reg.state).conns_high_water, 3000);
        // Under a quarter full: shrunk to about twice what is left.
        for p in &peers[10..1000] {
            reg.remove_connection(p.id);
        }
        reg.compact();
        let shrunk = capacity();
        assert!(shrunk < 64, "capacity {shrunk} after compacting 10 entries");
        for p in &peers[..10] {
            assert!(reg.peer(p.id).is_some(), "connection {} kept", p.id);
        }
        assert!(reg.peer(peers[10].id).is_none());
    }

    #[test]
    fn a_provider_is_registered_once_and_removed_with_its_connection() {
        let reg = registry();
        let (a, b) = (peer(&reg, 1), peer(&reg, 2));
        assert!(reg.provide(a.id, &name("svc.x"), None).is_ok());
        assert!(
            reg.provide(a.id, &name("svc.x"), None).is_ok(),
            "idempotent"
        );
        assert!(matches!(
            reg.provide(b.id, &name("svc.x"), None),
            Err(ProvideRefused::Taken(1000, 1))
        ));
        assert!(reg.provide(a.id, &name("svc.y"), None).is_ok());
        assert!(matches!(
            reg.provide(a.id, &name("svc.z"), None),
            Err(ProvideRefused::Limit(2))
        ));
        reg.remove_connection(a.id);
        assert!(reg.provider_names().is_empty());
        // The name is free again.
        assert!(reg.provide(b.id, &name("svc.x"), None).is_ok());
    }

    #[test]
    fn revoke_takes_exactly_what_is_no_longer_allowed() {
        let reg = registry();
        let a = peer(&reg, 1);
        let _ = reg.provide(a.id, &name("svc.keep"), None);
        let _ = reg.provide(a.id, &name("svc.lose"), None);
        let _ = reg.subscribe(a.id, &topic("t.keep"));
        let _ = reg.subscribe(a.id, &topic("t.lose"));
        let r = reg.revoke(a.id, |_, n| n.ends_with("keep"));
        assert_eq!(r.methods, vec![name("svc.lose")]);
        assert_eq!(r.topics, vec![topic("t.lose")]);
        assert_eq!(reg.provider_names(), vec!["svc.keep".to_owned()]);
        assert!(reg.subscribers(&topic("t.lose")).is_empty());
        assert_eq!(reg.subscribers(&topic("t.keep")).len(), 1);
        // The freed places count again.
        assert!(reg.subscribe(a.id, &topic("t.new")).is_ok());
        assert_eq!(reg.topic_count(), 2);
    }

    #[test]
    fn pending_calls_are_taken_once_and_with_either_connection() {
        let reg = registry();
        let (caller, provider) = (peer(&reg, 1), peer(&reg, 2));
        let id = RequestId::new(7).unwrap_or_else(|| panic!("id"));
        let call = |reg: &Registry, bid: u64| {
            reg.add_call(
                (provider.id, bid),
                PendingCall {
                    answerer: Answerer::Peer {
                        peer: Arc::clone(&caller),
                        id,
                    },
                    method: name("svc.x"),
                    started: Instant::now(),
                    rule: None,
                },
                Instant::now() + Duration::from_secs(60),
            )
        };
        call(&reg, 1);
        assert!(reg.caller_has_call(caller.id, id));
        assert_eq!(reg.calls_in_flight(), 1);
        assert!(reg.take_call((provider.id, 1)).is_some());
        assert!(reg.take_call((provider.id, 1)).is_none(), "answered once");
        assert!(!reg.caller_has_call(caller.id, id));
        // Gone with the provider, or with the caller.
        call(&reg, 2);
        let r = reg.remove_connection(provider.id);
        assert_eq!((r.routed_to_it.len(), r.its_calls.len()), (1, 0));
        let p2 = peer(&reg, 3);
        reg.add_call(
            (p2.id, 3),
            PendingCall {
                answerer: Answerer::Peer {
                    peer: Arc::clone(&caller),
                    id,
                },
                method: name("svc.x"),
                started: Instant::now(),
                rule: None,
            },
            Instant::now() + Duration::from_secs(60),
        );
        let r = reg.remove_connection(caller.id);
        assert_eq!((r.routed_to_it.len(), r.its_calls.len()), (0, 1));
        assert!(reg.take_call((p2.id, 3)).is_none());
    }
}
