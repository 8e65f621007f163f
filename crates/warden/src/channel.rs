//! What an in-process handler can do with its caller's connection beyond
//! answering the call: push events to that one connection (a stream the
//! handler produces, such as learning mode's captured denials), notice
//! when the connection closes, and reach the caller's pidfd.
//!
//! Pushed events take the same bounded queue as pub/sub events and the
//! same per-uid byte accounting, so a handler's stream cannot grow the
//! broker's memory without bound: when the queue is full the event is
//! dropped and counted, and the next event delivered carries the count in
//! its `missed` field, exactly as for a lagging subscriber.
//!
//! A handler that buffers data for its caller before sending it (learning
//! mode's captured events) holds it as a [`Charge`] on the caller's uid,
//! within the same `max_queued_bytes_per_uid`, and sends it with
//! [`CallerChannel::push_charged`]: what the broker holds for one uid,
//! buffered or queued, stays within that uid's limit.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc::error::TrySendError;
use warden_proto::{Message, Payload, TopicName};

use crate::peer::Peer;
use crate::queue::{Charge, QueuedFrame};

/// How often [`CallerChannel::push_charged`] looks again for room in the
/// uid's budget while the caller is not reading.
const BUDGET_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// A handle on the caller's connection, given to handlers in
/// [`crate::HandlerContext`]. Holding it does not keep the connection open.
#[derive(Clone)]
pub struct CallerChannel {
    conn: Weak<Peer>,
    max_frame: usize,
    max_queued: u64,
}

impl std::fmt::Debug for CallerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerChannel")
            .field("open", &!self.is_closed())
            .finish_non_exhaustive()
    }
}

/// What became of a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the connection.
    Queued,
    /// The connection's event queue (or its uid's byte budget) was full:
    /// dropped, counted in the next event's `missed`.
    Dropped,
    /// The connection has closed.
    Closed,
}

impl CallerChannel {
    pub(crate) fn new(conn: &Arc<Peer>, max_frame: usize, max_queued: u64) -> Self {
        CallerChannel {
            conn: Arc::downgrade(conn),
            max_frame,
            max_queued,
        }
    }

    /// True once the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.conn
            .upgrade()
            .is_none_or(|c| c.ev_tx.is_closed() || c.kill.is_killed())
    }

    /// The largest frame the broker sends (`limits.max_frame_bytes`).
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// An empty [`Charge`] on the caller's uid, to hold data the handler
    /// buffers for the caller; `None` once the connection has closed.
    pub fn charge(&self) -> Option<Charge> {
        let conn = self.conn.upgrade()?;
        Some(Charge::empty(&conn.account, self.max_queued))
    }

    /// Queues an event whose data `charge` already holds (taken from a
    /// [`Charge`] of this channel), waiting for room in the connection's
    /// queue. The frame's envelope is charged on top, within
    /// `max_queued_bytes_per_uid`, waiting while the uid has no room (so
    /// the data to charge `charge` with must leave headroom for it). The
    /// frame keeps the charge until written. Gives up when the connection
    /// closes; `Dropped` if the event exceeds the frame limit.
    pub async fn push_charged(
        &self,
        topic: &TopicName,
        data: Payload,
        mut charge: Charge,
    ) -> Pushed {
        let Some(conn) = self.conn.upgrade() else {
            return Pushed::Closed;
        };
        let Some((bytes, _)) = self.event_frame(&conn, topic, data) else {
            return Pushed::Dropped;
        };
        let tx = conn.ev_tx.clone();
        drop(conn);
        let len = bytes.len() as u64;
        if charge.len() > len {
            charge.release(charge.len() - len);
        }
        while charge.len() < len {
            if charge.try_add(len - charge.len(), 0) {
                break;
            }
            if self.is_closed() {
                return Pushed::Closed;
            }
            tokio::time::sleep(BUDGET_RETRY).await;
        }
        match tx.send(QueuedFrame::from_charge(bytes, charge)).await {
            Ok(()) => Pushed::Queued,
            Err(_) => Pushed::Closed,
        }
    }

    /// Resolves when the connection closes.
    pub async fn closed(&self) {
        let Some(tx) = self.conn.upgrade().map(|c| c.ev_tx.clone()) else {
            return;
        };
        tx.closed().await;
    }

    /// Runs `f` with the pidfd the broker took for the caller at connect,
    /// if the connection is still open and the caller had a pid.
    pub fn with_caller_pidfd<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
        let conn = self.conn.upgrade()?;
        let fd = conn.pidfd.as_ref()?;
        Some(f(fd.as_fd()))
    }

    /// Encodes an event that carries (and resets) the connection's count
    /// of missed events, returning the frame and that count; if the event
    /// does not fit in a frame, the count is put back and `None` returned.
    fn event_frame(&self, conn: &Peer, topic: &TopicName, data: Payload) -> Option<(Vec<u8>, u64)> {
        let missed = conn.missed.swap(0, Ordering::AcqRel);
        let bytes = Message::Event {
            topic: topic.clone(),
            data,
            missed,
            publisher: None,
        }
        .to_frame(self.max_frame);
        if bytes.is_none() {
            conn.missed.fetch_add(missed, Ordering::AcqRel);
        }
        bytes.map(|b| (b, missed))
    }

    fn frame(&self, conn: &Peer, topic: &TopicName, data: Payload) -> Option<QueuedFrame> {
        let Some((bytes, missed)) = self.event_frame(conn, topic, data) else {
            // This event is missed too.
            conn.missed.fetch_add(1, Ordering::AcqRel);
            return None;
        };
        let queued = QueuedFrame::charge(bytes, &conn.account, self.max_queued);
        if queued.is_none() {
            conn.missed.fetch_add(missed + 1, Ordering::AcqRel);
        }
        queued
    }

    /// Offers an event to the connection without waiting.
    pub fn push(&self, topic: &TopicName, data: Payload) -> Pushed {
        let Some(conn) = self.conn.upgrade() else {
            return Pushed::Closed;
        };
        let Some(frame) = self.frame(&conn, topic, data) else {
            return Pushed::Dropped;
        };
        match conn.ev_tx.try_send(frame) {
            Ok(()) => Pushed::Queued,
            Err(TrySendError::Full(_)) => {
                conn.missed.fetch_add(1, Ordering::AcqRel);
                Pushed::Dropped
            }
            Err(TrySendError::Closed(_)) => Pushed::Closed,
        }
    }

    /// Queues an event, waiting for room (for the last event of a stream,
    /// which must not be lost). Gives up when the connection closes.
    pub async fn push_wait(&self, topic: &TopicName, data: Payload) -> Pushed {
        let Some(conn) = self.conn.upgrade() else {
            return Pushed::Closed;
        };
        let Some((bytes, _)) = self.event_frame(&conn, topic, data) else {
            return Pushed::Dropped;
        };
        let tx = conn.ev_tx.clone();
        let frame = QueuedFrame::force(bytes, &conn.account);
        drop(conn);
        match tx.send(frame).await {
            Ok(()) => Pushed::Queued,
            Err(_) => Pushed::Closed,
        }
    }
}
