//! A connection's write side: the frames waiting for its socket, the
//! writer task that finishes what the socket did not take at once, and
//! the two bounded queues other tasks feed it (`ctl` and events).
//!
//! Every write happens under the wire's lock and starts with what is
//! pending, so frames never interleave and never reorder. A flush writes
//! all pending frames with one vectored write (a few, when more than
//! [`MAX_IOV`] frames or [`MAX_WRITE`] bytes wait), so a batch of routed
//! calls or answers costs one `sendmsg`, not one per frame.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};
use warden_proto::Message;

use crate::peer::{KillSwitch, Outbox, Peer};
use crate::queue::QueuedFrame;
use crate::registry::lock;

/// Frames per vectored write, at most.
const MAX_IOV: usize = 64;
/// Bytes per vectored write, at most.
const MAX_WRITE: usize = 256 * 1024;
/// Bytes the writer task gathers from its queues before one flush.
pub(crate) const WRITE_BATCH: usize = 64 * 1024;

/// The socket's write side, shared by the reader (which writes its own
/// replies directly when nothing is waiting), the writer task, and every
/// task that queues frames for this connection.
#[derive(Debug)]
pub(crate) struct Wire {
    pub(crate) stream: Arc<UnixStream>,
    state: Mutex<WireState>,
    kill: Arc<KillSwitch>,
    conn: u64,
    /// The writer has work: something is pending.
    wake: Notify,
    /// Pending became empty (or the socket failed).
    pub(crate) drained: Notify,
}

#[derive(Debug, Default)]
struct WireState {
    pending: VecDeque<QueuedFrame>,
    /// Bytes of the front frame already written.
    offset: usize,
    failed: bool,
}

impl Wire {
    pub(crate) fn new(stream: Arc<UnixStream>, kill: Arc<KillSwitch>, conn: u64) -> Wire {
        Wire {
            stream,
            state: Mutex::default(),
            kill,
            conn,
            wake: Notify::new(),
            drained: Notify::new(),
        }
    }

    /// Writes pending frames until done or the socket is full. `Ok(true)`
    /// when nothing is left.
    fn drain(&self, st: &mut WireState) -> std::io::Result<bool> {
        while !st.pending.is_empty() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(st.pending.len().min(MAX_IOV));
            let mut total = 0usize;
            for (i, f) in st.pending.iter().enumerate() {
                let bytes = if i == 0 {
                    &f.bytes()[st.offset..]
                } else {
                    f.bytes()
                };
                if i > 0 && (slices.len() >= MAX_IOV || total + bytes.len() > MAX_WRITE) {
                    break;
                }
                total += bytes.len();
                slices.push(IoSlice::new(bytes));
            }
            let written = match self.stream.try_write_vectored(&slices) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            drop(slices);
            let mut left = written;
            while left > 0 {
                let Some(front) = st.pending.front() else {
                    break;
                };
                let rest = front.len() - st.offset;
                if left >= rest {
                    left -= rest;
                    st.pending.pop_front();
                    st.offset = 0;
                } else {
                    st.offset += left;
                    left = 0;
                }
            }
            if written < total {
                // The socket took part: it is full for now.
                return Ok(false);
            }
        }
        self.drained.notify_waiters();
        Ok(true)
    }

    /// Appends frames and writes what the socket takes now; the writer
    /// task is woken for the rest. Returns false if the socket has failed.
    pub(crate) fn push(&self, frames: impl IntoIterator<Item = QueuedFrame>) -> bool {
        let mut st = lock(&self.state);
        if st.failed {
            return false;
        }
        st.pending.extend(frames);
        match self.drain(&mut st) {
            Ok(true) => true,
            Ok(false) => {
                drop(st);
                self.wake.notify_one();
                true
            }
            Err(e) => {
                st.failed = true;
                st.pending.clear();
                drop(st);
                self.drained.notify_waiters();
                tracing::debug!(conn = self.conn, error = %e, "write failed; closing");
                self.kill.kill();
                false
            }
        }
    }

    /// Frames pending, or `None` once the socket has failed.
    pub(crate) fn backlog(&self) -> Option<usize> {
        let st = lock(&self.state);
        (!st.failed).then_some(st.pending.len())
    }
}

impl Outbox for Wire {
    fn enqueue(&self, frame: QueuedFrame) -> bool {
        let mut st = lock(&self.state);
        if st.failed {
            return false;
        }
        st.pending.push_back(frame);
        true
    }

    fn flush(&self) {
        self.push(std::iter::empty());
    }
}

/// Writes what other tasks queued (`ctl` first, then events), and
/// finishes writes the socket could not take at once. Ends when `stop`
/// fires and the ctl queue is empty, or when the socket fails.
pub(crate) async fn writer(
    mut ctl_rx: mpsc::Receiver<QueuedFrame>,
    mut ev_rx: mpsc::Receiver<QueuedFrame>,
    peer: Arc<Peer>,
    wire: Arc<Wire>,
    mut stop: oneshot::Receiver<()>,
    max_frame: usize,
) {
    let mut stopping = false;
    let mut batch: Vec<QueuedFrame> = Vec::new();
    loop {
        let Some(backlog) = wire.backlog() else {
            return;
        };
        if backlog > 0 {
            // Finish what the socket did not take.
            tokio::select! {
                biased;
                r = wire.stream.writable() => {
                    if r.is_err() {
                        peer.kill.kill();
                        return;
                    }
                    if !wire.push(std::iter::empty()) {
                        return;
                    }
                }
                _ = &mut stop, if !stopping => stopping = true,
            }
            continue;
        }
        // A killed connection gets no more events: its last frames are the
        // replies and the reason it was closed.
        let events_off = stopping || peer.kill.is_killed();
        if stopping {
            match ctl_rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => return,
            }
        } else {
            tokio::select! {
                biased;
                f = ctl_rx.recv() => match f { Some(f) => batch.push(f), None => return },
                f = ev_rx.recv(), if !events_off => match f { Some(f) => batch.push(f), None => return },
                _ = wire.wake.notified() => continue,
                _ = &mut stop => { stopping = true; continue; }
            }
        }
        let mut bytes: usize = batch.iter().map(QueuedFrame::len).sum();
        while bytes < WRITE_BATCH {
            let next = match ctl_rx.try_recv() {
                Ok(f) => f,
                Err(_) if !events_off => match ev_rx.try_recv() {
                    Ok(f) => f,
                    Err(_) => break,
                },
                Err(_) => break,
            };
            bytes += next.len();
            batch.push(next);
        }
        // Drops not yet reported in an event's `missed` are reported once
        // the event queue has emptied.
        if !events_off && ev_rx.is_empty() && peer.missed.load(Ordering::Relaxed) > 0 {
            let missed = peer.missed.swap(0, Ordering::AcqRel);
            if missed > 0 {
                if let Some(f) = (Message::Lagged { missed }).to_frame(max_frame) {
                    batch.push(QueuedFrame::force(f, &peer.account));
                }
            }
        }
        if !wire.push(batch.drain(..)) {
            return;
        }
    }
}
