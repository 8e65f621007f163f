//! State shared between connection tasks.
//!
//! Each map sits behind its own `std::sync::Mutex`, locked for a lookup or
//! an insert and never across an `.await`. Connections are reached through
//! [`Conn`] (an `Arc`), whose queues are bounded.

use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::sync::{watch, Notify};
use warden_policy::{Limits, Policy, SlowSubscriber};
use warden_proto::{Identity, Message, MethodName, RequestId, TopicName};

use crate::handler::Handler;
use crate::queue::{QueuedFrame, UidAccount};

/// Locks a mutex, recovering the data if a panicking thread poisoned it:
/// every critical section here leaves the maps consistent at each step.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Upper bounds of the call-latency histogram buckets, in microseconds
/// (the last bucket, +Inf, is implicit).
pub(crate) const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// Method names that get statistics of their own, at most. Calls to names
/// past it, like calls to names nothing serves, are counted together as
/// `unresolved`: any caller can invent names, and a map keyed by them
/// would be memory any caller can fill.
pub const MAX_METHOD_STATS: usize = 4096;

/// Call statistics: per method for names that resolve, one bucket for the
/// rest.
#[derive(Debug, Default)]
pub(crate) struct CallStats {
    pub(crate) methods: HashMap<String, MethodStats>,
    pub(crate) unresolved: MethodStats,
}

impl CallStats {
    /// Adds one call: under `method` if it resolved and the table has a
    /// place for it, else to `unresolved`.
    pub(crate) fn record(
        &mut self,
        method: &str,
        resolved: bool,
        error: Option<warden_proto::ErrorCode>,
        bucket: usize,
        us: u64,
    ) {
        let bump = |s: &mut MethodStats| {
            s.calls += 1;
            if let Some(b) = s.buckets.get_mut(bucket) {
                *b += 1;
            }
            s.sum_us = s.sum_us.saturating_add(us);
            if let Some(code) = error {
                *s.errors.entry(code.as_str()).or_default() += 1;
            }
        };
        if resolved {
            if let Some(s) = self.methods.get_mut(method) {
                return bump(s);
            }
            if self.methods.len() < MAX_METHOD_STATS {
                return bump(self.methods.entry(method.to_owned()).or_default());
            }
        }
        bump(&mut self.unresolved);
    }
}

/// Counters for one method.
#[derive(Debug, Default, Clone)]
pub(crate) struct MethodStats {
    pub(crate) calls: u64,
    /// Failed calls by wire error code.
    pub(crate) errors: std::collections::BTreeMap<&'static str, u64>,
    /// Calls per latency bucket (not cumulative); the last is +Inf.
    pub(crate) buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
    pub(crate) sum_us: u64,
}

/// A call routed to a provider, waiting for its reply.
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) caller: Conn,
    pub(crate) caller_id: RequestId,
    pub(crate) method: MethodName,
    /// When the caller's call arrived (for the latency histogram).
    pub(crate) started: std::time::Instant,
    /// The rule that allowed it, kept only while someone monitors.
    pub(crate) rule: Option<String>,
}

/// `kill_reason`: the subscriber was too slow.
pub(crate) const KILL_SLOW: u8 = 1;

/// One connection, as other tasks see it.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) id: u64,
    pub(crate) identity: Identity,
    /// The peer process, pinned at connect (kept open for the life of the
    /// connection).
    pub(crate) pidfd: Option<std::os::fd::OwnedFd>,
    pub(crate) comm: Option<String>,
    pub(crate) connected_at: SystemTime,
    pub(crate) ctl_tx: mpsc::Sender<QueuedFrame>,
    pub(crate) ev_tx: mpsc::Sender<QueuedFrame>,
    /// Events dropped for this connection and not yet reported to it.
    pub(crate) missed: AtomicU64,
    pub(crate) account: Arc<UidAccount>,
    /// Calls this connection sent that are not answered yet.
    pub(crate) in_flight: AtomicU32,
    /// Calls routed to this connection as a provider, by broker id.
    pub(crate) routed: Mutex<HashMap<u64, Routed>>,
    /// Calls this connection sent to providers: caller id → (provider, broker id).
    pub(crate) outstanding: Mutex<HashMap<RequestId, (Weak<ConnShared>, u64)>>,
    pub(crate) broker_ids: warden_proto::IdSequence,
    /// Set to make the connection close (slow subscriber, shutdown).
    pub(crate) kill: Notify,
    pub(crate) killed: AtomicBool,
    pub(crate) kill_reason: AtomicU8,
    pub(crate) calls: AtomicU64,
    /// The socket's write side.
    pub(crate) wire: crate::connection::Wire,
}

pub(crate) type Conn = Arc<ConnShared>;

impl ConnShared {
    /// Allocates the broker's next request id on this connection.
    pub(crate) fn next_id(&self) -> RequestId {
        self.broker_ids.next_id()
    }

    /// Asks the connection's task to close it (its writer failed).
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill.notify_one();
    }

    /// Asks the connection's task to close it because it did not read its
    /// events fast enough.
    pub(crate) fn kill_slow(&self) {
        self.kill_reason.store(KILL_SLOW, Ordering::Release);
        self.kill();
    }
}

/// An entry in the deadline heap: (deadline, provider, broker id).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Deadline(
    pub(crate) std::cmp::Reverse<(Instant, u64)>,
    pub(crate) WeakConn,
);

/// A weak connection handle ordered by nothing (the heap orders by time).
#[derive(Debug)]
pub(crate) struct WeakConn(pub(crate) Weak<ConnShared>);

impl PartialEq for WeakConn {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for WeakConn {}
impl PartialOrd for WeakConn {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for WeakConn {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// Settings fixed for the broker's lifetime.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) limits: Limits,
    pub(crate) slow: SlowSubscriber,
    pub(crate) max_frame: usize,
    pub(crate) call_timeout: Duration,
    /// Test hooks (wardend's `WARDEND_TEST_HOOKS=1`): a call to
    /// [`crate::broker::TEST_PANIC_METHOD`] panics in the connection task.
    pub(crate) test_hooks: bool,
}

/// Everything the connection tasks share.
pub(crate) struct Hub {
    pub(crate) settings: Settings,
    /// The current policy; connections watch it and recompile their
    /// snapshot when it changes (SIGHUP reload).
    pub(crate) policy_tx: watch::Sender<Arc<Policy>>,
    /// Milliseconds since `started` at the accept loop's last turn: the
    /// service watchdog pings only while this stays fresh.
    pub(crate) heartbeat_ms: AtomicU64,
    pub(crate) handlers: HashMap<String, Arc<dyn Handler>>,
    pub(crate) started: Instant,
    pub(crate) conns: Mutex<HashMap<u64, Conn>>,
    pub(crate) conn_count: AtomicUsize,
    pub(crate) next_conn_id: AtomicU64,
    pub(crate) uids: Mutex<HashMap<u32, Arc<UidAccount>>>,
    pub(crate) providers: Mutex<HashMap<MethodName, Conn>>,
    pub(crate) topics: Mutex<HashMap<TopicName, Vec<Conn>>>,
    /// Monitoring connections, and whether each may see payloads.
    pub(crate) monitors: Mutex<Vec<(Conn, bool)>>,
    pub(crate) monitor_count: AtomicUsize,
    pub(crate) deadlines: Mutex<BinaryHeap<Deadline>>,
    pub(crate) deadline_added: Notify,
    pub(crate) stats: Mutex<CallStats>,
    /// Routed calls in flight, broker-wide (for the drain at shutdown).
    pub(crate) routed_in_flight: AtomicUsize,
    pub(crate) routed_idle: Notify,
    pub(crate) draining: AtomicBool,
    /// Tells every connection to say `shutting_down` and close.
    pub(crate) close_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.conn_count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub(crate) fn uid_account(&self, uid: u32) -> Arc<UidAccount> {
        Arc::clone(lock(&self.uids).entry(uid).or_default())
    }

    pub(crate) fn current_policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy_tx.borrow())
    }

    /// True if `method` names a built-in, a handler or a current provider.
    pub(crate) fn resolves(&self, method: &str) -> bool {
        crate::builtins::BUILTINS.contains(&method)
            || self.handlers.contains_key(method)
            || lock(&self.providers).contains_key(method)
    }

    /// Records one finished call of `method`: its outcome and latency,
    /// under its own name if `resolved` (it named something that serves
    /// calls when it arrived) and the table has room, else as unresolved.
    pub(crate) fn count(
        &self,
        method: &str,
        resolved: bool,
        error: Option<warden_proto::ErrorCode>,
        started: std::time::Instant,
    ) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        lock(&self.stats).record(method, resolved, error, bucket, us);
    }

    /// Encodes `msg` and queues it on `conn`'s ctl queue without waiting;
    /// used for small frames (errors, cancels). Returns false if the queue
    /// is full or closed.
    pub(crate) fn try_send_ctl(&self, conn: &ConnShared, msg: &Message) -> bool {
        let Some(bytes) = msg.to_frame(self.settings.max_frame) else {
            return false;
        };
        conn.ctl_tx
            .try_send(QueuedFrame::force(bytes, &conn.account))
            .is_ok()
    }

    pub(crate) fn routed_done(&self) {
        if self.routed_in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.routed_idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resolved_names_get_entries_and_the_table_is_capped() {
        let mut stats = CallStats::default();
        for i in 0..10_000 {
            stats.record(
                &format!("made.up.{i}"),
                false,
                Some(warden_proto::ErrorCode::Denied),
                0,
                1,
            );
        }
        assert!(stats.methods.is_empty());
        assert_eq!(stats.unresolved.calls, 10_000);
        assert_eq!(stats.unresolved.errors.get("denied"), Some(&10_000));
        for i in 0..MAX_METHOD_STATS + 10 {
            stats.record(&format!("real.{i}"), true, None, 0, 1);
        }
        assert_eq!(stats.methods.len(), MAX_METHOD_STATS);
        assert_eq!(stats.unresolved.calls, 10_010);
        // Names already in the table keep counting there.
        stats.record("real.0", true, None, 0, 1);
        assert_eq!(stats.methods.get("real.0").map(|s| s.calls), Some(2));
    }
}
