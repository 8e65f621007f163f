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

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc::error::TrySendError;
use warden_proto::{Message, Payload, TopicName};

use crate::hub::ConnShared;
use crate::queue::QueuedFrame;

/// A handle on the caller's connection, given to handlers in
/// [`crate::HandlerContext`]. Holding it does not keep the connection open.
#[derive(Clone)]
pub struct CallerChannel {
    conn: Weak<ConnShared>,
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
    pub(crate) fn new(conn: &Arc<ConnShared>, max_frame: usize, max_queued: u64) -> Self {
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
            .is_none_or(|c| c.ev_tx.is_closed() || c.killed.load(Ordering::Acquire))
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

    fn frame(&self, conn: &ConnShared, topic: &TopicName, data: Payload) -> Option<QueuedFrame> {
        let missed = conn.missed.swap(0, Ordering::AcqRel);
        let bytes = Message::Event {
            topic: topic.clone(),
            data,
            missed,
            publisher: None,
        }
        .to_frame(self.max_frame);
        let queued = bytes.and_then(|b| QueuedFrame::charge(b, &conn.account, self.max_queued));
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
        let missed = conn.missed.swap(0, Ordering::AcqRel);
        let Some(bytes) = (Message::Event {
            topic: topic.clone(),
            data,
            missed,
            publisher: None,
        })
        .to_frame(self.max_frame) else {
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
