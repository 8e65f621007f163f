//! One connection as the rest of the broker sees it: who is on the other
//! end, what it may still be sent, and how to reach its socket.
//!
//! The socket itself belongs to the transport layer. Everything below it
//! (the registry, routed calls, pub/sub) reaches a peer's socket only
//! through the small [`Outbox`] trait, so the layers point one way: the
//! transport implements `Outbox`, nothing here knows how bytes are written.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, Notify};
use warden_proto::{IdSequence, Identity, Message, RequestId};

use crate::queue::{QueuedFrame, UidAccount};

/// The write side of a connection, as implemented by the transport.
pub(crate) trait Outbox: Send + Sync + std::fmt::Debug {
    /// Queues `frame` after every frame pending, without writing. False
    /// once the socket has failed (the frame is dropped).
    fn enqueue(&self, frame: QueuedFrame) -> bool;
    /// Writes what is pending, as far as the socket takes it now; the
    /// transport finishes the rest later.
    fn flush(&self);
}

/// Why a connection was asked to close.
#[derive(Debug, Default)]
pub(crate) struct KillSwitch {
    notify: Notify,
    killed: AtomicBool,
    reason: AtomicU8,
}

/// `KillSwitch` reason: the subscriber was too slow.
pub(crate) const KILL_SLOW: u8 = 1;

impl KillSwitch {
    /// Asks the connection's task to close it (e.g. its writes failed).
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Asks the connection's task to close it because it did not read
    /// its events fast enough.
    pub(crate) fn kill_slow(&self) {
        self.reason.store(KILL_SLOW, Ordering::Release);
        self.kill();
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    pub(crate) fn was_slow(&self) -> bool {
        self.reason.load(Ordering::Acquire) == KILL_SLOW
    }

    /// Resolves when the connection is asked to close.
    pub(crate) async fn killed(&self) {
        self.notify.notified().await;
    }
}

/// One connection, as other tasks see it.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) id: u64,
    pub(crate) identity: Identity,
    /// The peer process, pinned at connect (kept open for the life of the
    /// connection).
    pub(crate) pidfd: Option<OwnedFd>,
    pub(crate) comm: Option<String>,
    pub(crate) connected_at: SystemTime,
    /// Frames the broker sends on its own (errors, cancels): to the
    /// transport's writer.
    pub(crate) ctl_tx: mpsc::Sender<QueuedFrame>,
    /// Events (pub/sub, monitor, handler streams): bounded, dropped when
    /// full.
    pub(crate) ev_tx: mpsc::Sender<QueuedFrame>,
    /// Events dropped for this connection and not yet reported to it.
    pub(crate) missed: AtomicU64,
    pub(crate) account: Arc<UidAccount>,
    /// Calls this connection sent that are not answered yet (routed and
    /// handler calls).
    pub(crate) in_flight: AtomicU32,
    pub(crate) calls: AtomicU64,
    broker_ids: IdSequence,
    pub(crate) kill: Arc<KillSwitch>,
    pub(crate) outbox: Arc<dyn Outbox>,
    /// The login session the peer process is in, looked up once (on the
    /// pinned pid) when a call first needs it.
    pub(crate) session: tokio::sync::OnceCell<Option<String>>,
    /// Its welcome has been sent: only then may the broker send it frames
    /// of its own accord (a command to a host it adopted).
    pub(crate) greeted: std::sync::atomic::AtomicBool,
    /// The invitation it joined with, while it holds the role (set once,
    /// at the hello; cleared when the role is dropped).
    grant: std::sync::Mutex<Option<Arc<crate::invitations::Grant>>>,
}

/// What [`Peer::new`] needs.
pub(crate) struct PeerParts {
    pub(crate) id: u64,
    pub(crate) identity: Identity,
    pub(crate) pidfd: Option<OwnedFd>,
    pub(crate) comm: Option<String>,
    pub(crate) ctl_tx: mpsc::Sender<QueuedFrame>,
    pub(crate) ev_tx: mpsc::Sender<QueuedFrame>,
    pub(crate) account: Arc<UidAccount>,
    pub(crate) kill: Arc<KillSwitch>,
    pub(crate) outbox: Arc<dyn Outbox>,
}

impl Peer {
    pub(crate) fn new(p: PeerParts) -> Peer {
        Peer {
            id: p.id,
            identity: p.identity,
            pidfd: p.pidfd,
            comm: p.comm,
            connected_at: SystemTime::now(),
            ctl_tx: p.ctl_tx,
            ev_tx: p.ev_tx,
            missed: AtomicU64::new(0),
            account: p.account,
            in_flight: AtomicU32::new(0),
            calls: AtomicU64::new(0),
            broker_ids: IdSequence::new(),
            kill: p.kill,
            outbox: p.outbox,
            session: tokio::sync::OnceCell::new(),
            greeted: std::sync::atomic::AtomicBool::new(false),
            grant: std::sync::Mutex::new(None),
        }
    }

    /// The invitation this connection joined with, while it holds its role.
    pub(crate) fn grant(&self) -> Option<Arc<crate::invitations::Grant>> {
        self.grant.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets (at the hello) or clears (the role was dropped) the grant.
    pub(crate) fn set_grant(&self, grant: Option<Arc<crate::invitations::Grant>>) {
        *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = grant;
    }

    /// The role this connection holds, if it joined by invitation.
    pub(crate) fn role(&self) -> Option<String> {
        self.grant().map(|g| g.role.clone())
    }

    /// The caller as the policy sees it: its identity and its role.
    pub(crate) fn caller(&self) -> warden_policy::Caller {
        let mut c = warden_policy::Caller::from(&self.identity);
        c.role = self.role();
        c
    }

    /// Allocates the broker's next request id on this connection (for
    /// calls routed to it).
    pub(crate) fn next_id(&self) -> RequestId {
        self.broker_ids.next_id()
    }

    /// Queues `frame` and writes what the socket takes now.
    pub(crate) fn send(&self, frame: QueuedFrame) {
        if self.outbox.enqueue(frame) {
            self.outbox.flush();
        }
    }

    /// Events waiting in this connection's event queue.
    pub(crate) fn queued_events(&self) -> usize {
        self.ev_tx.max_capacity() - self.ev_tx.capacity()
    }

    /// Encodes `msg` and queues it on the ctl queue without waiting; for
    /// small frames (errors, cancels). False if the queue is full or
    /// closed, or the message does not fit in `max_frame`.
    pub(crate) fn try_send_ctl(&self, msg: &Message, max_frame: usize) -> bool {
        let Some(bytes) = msg.to_frame(max_frame) else {
            return false;
        };
        self.ctl_tx
            .try_send(QueuedFrame::force(bytes, &self.account))
            .is_ok()
    }
}

/// A reference-counted peer.
pub(crate) type PeerRef = Arc<Peer>;
