//! The connection engine: shared state, the read role (leader/follower),
//! the coalescing writer, and the two background tasks.
//!
//! See the crate documentation ("How a call travels") for the design; the
//! invariants the code below keeps are:
//!
//! * Everything shared lives in [`State`] under one `std` mutex that is
//!   never held across an `.await` or a system call.
//! * At most one party holds the *read role* ([`State::reader`]): a caller
//!   awaiting its answer, or the background reader. Only the holder reads
//!   the socket and registers its waker for read readiness, so there is
//!   never more than one readiness waker to keep track of.
//! * The receive buffer ([`ReadBuf`], with any partially read frame) lives
//!   in `State`, and is taken out only for the duration of one `poll` by the
//!   role holder and put back before that `poll` returns: dropping a future
//!   can never lose buffered bytes.
//! * Whoever gives up the role (its answer arrived, or its future was
//!   dropped) hands it to a caller still waiting, else to the background
//!   reader, in the same critical section: no window without a reader while
//!   someone waits.
//! * Outgoing frames are appended to [`State::out`]; whoever finds no write
//!   in progress writes everything queued. A write that would block leaves
//!   the rest to the background writer, so no future ever owns unsent
//!   bytes either.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{Notify, Semaphore};
use warden_proto::{IdSequence, Message, Payload, RequestId, WireError, FRAME_HEADER_LEN};

use crate::{CallError, Event, IncomingCall};

/// Events (or incoming calls) queued in the client before it stops reading
/// the socket until the application takes some.
pub(crate) const INBOX_LEN: usize = 4096;
/// Spare room kept in the receive buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Reads in one `poll` before the reader yields to its runtime.
const READ_BUDGET: usize = 64;
/// Buffers larger than this are shrunk once empty.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Who holds the read role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    /// Nobody (only before the background reader first runs).
    Nobody,
    /// The background reader task.
    Background,
    /// The caller waiting for the answer to this id.
    Call(u64),
}

/// One request waiting for its answer.
#[derive(Debug)]
struct Slot {
    answer: Option<Result<Payload, CallError>>,
    waker: Option<Waker>,
    /// Holds one in-flight permit until its answer arrives.
    counted: bool,
    /// Its future is gone; the slot stays only to release the permit when
    /// the broker's answer (or `cancelled`) arrives.
    abandoned: bool,
}

/// The receive buffer: bytes read and not yet decoded, from `start`.
#[derive(Debug, Default)]
pub(crate) struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
}

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
        }
    }

    /// Makes room for the next read without zeroing anything: drops the
    /// consumed prefix, and reserves enough for a partial frame's body.
    fn reserve(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf.shrink_to(READ_CHUNK);
            }
        }
        let avail = &self.buf[self.start..];
        let want = if avail.len() >= FRAME_HEADER_LEN {
            let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
            (FRAME_HEADER_LEN + len)
                .saturating_sub(avail.len())
                .max(READ_CHUNK / 4)
        } else {
            READ_CHUNK / 4
        };
        if self.buf.capacity() - self.buf.len() < want {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.reserve(want.max(READ_CHUNK));
        }
    }

    /// True if a complete frame (or a broken header) is buffered.
    fn has_frame(&self) -> bool {
        let avail = &self.buf[self.start..];
        if avail.len() < FRAME_HEADER_LEN {
            return false;
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        avail.len() >= FRAME_HEADER_LEN + len
    }

    /// The byte range of the next complete frame body, if any.
    fn next_frame(&mut self, max: usize) -> Result<Option<std::ops::Range<usize>>, String> {
        let avail = &self.buf[self.start..];
        if avail.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len == 0 {
            return Err("the broker sent an empty frame".into());
        }
        if len > max {
            return Err(format!(
                "the broker sent a frame of {len} bytes (max {max})"
            ));
        }
        if avail.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let begin = self.start + FRAME_HEADER_LEN;
        self.start = begin + len;
        Ok(Some(begin..begin + len))
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pending: HashMap<u64, Slot>,
    reader: Reader,
    /// `None` while the role holder is in the middle of a `poll`.
    read: Option<ReadBuf>,
    bg_waker: Option<Waker>,
    /// The reader, parked because an inbox is full.
    stalled: Option<Waker>,
    out: Vec<u8>,
    spare: Vec<u8>,
    writing: bool,
    write_blocked: bool,
    /// The background writer has been asked to write what is queued (see
    /// [`Shared::flush_soon`]).
    flush_asked: bool,
    pub(crate) events: VecDeque<Event>,
    pub(crate) calls: VecDeque<IncomingCall>,
    pub(crate) closed: bool,
    pub(crate) last_error: Option<WireError>,
}

impl State {
    fn inbox_full(&self) -> bool {
        self.events.len() >= INBOX_LEN || self.calls.len() >= INBOX_LEN
    }

    fn reader_waker(&self) -> Option<Waker> {
        match self.reader {
            Reader::Nobody => None,
            Reader::Background => self.bg_waker.clone(),
            Reader::Call(id) => self.pending.get(&id).and_then(|s| s.waker.clone()),
        }
    }

    /// Called after taking something out of an inbox.
    pub(crate) fn unstall(&mut self) -> Option<Waker> {
        if self.inbox_full() {
            None
        } else {
            self.stalled.take()
        }
    }
}

pub(crate) struct Shared {
    pub(crate) stream: UnixStream,
    state: Mutex<State>,
    pub(crate) permits: Semaphore,
    pub(crate) ids: IdSequence,
    pub(crate) max_frame: usize,
    pub(crate) call_timeout: Option<Duration>,
    write_ready: Notify,
    pub(crate) events_ready: Notify,
    pub(crate) calls_ready: Notify,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("max_frame", &self.max_frame)
            .field("permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Where frames are encoded before being appended to the outgoing
    /// buffer (reused: no allocation per frame).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Appends one frame (header + `body`) to `buf`, or nothing if the body
/// exceeds `max`.
pub(crate) fn encode_frame(
    buf: &mut Vec<u8>,
    max: usize,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), CallError>,
) -> Result<(), CallError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    if let Err(e) = body(buf) {
        buf.truncate(start);
        return Err(e);
    }
    let len = buf.len() - start - FRAME_HEADER_LEN;
    match u32::try_from(len) {
        Ok(n) if len <= max && len > 0 => {
            buf[start..start + FRAME_HEADER_LEN].copy_from_slice(&n.to_be_bytes());
            Ok(())
        }
        _ => {
            buf.truncate(start);
            Err(CallError::TooLarge { max })
        }
    }
}

fn lock_state(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn wake_all(wakes: &mut Vec<Waker>) {
    for w in wakes.drain(..) {
        w.wake();
    }
}

/// Just the kind of a frame that failed to decode.
#[derive(serde::Deserialize)]
struct KindOnly<'a> {
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
}

impl Shared {
    pub(crate) fn new(
        stream: UnixStream,
        max_frame: usize,
        max_in_flight: usize,
        call_timeout: Option<Duration>,
    ) -> Shared {
        Shared {
            stream,
            state: Mutex::new(State {
                pending: HashMap::new(),
                reader: Reader::Nobody,
                read: Some(ReadBuf::new()),
                bg_waker: None,
                stalled: None,
                out: Vec::with_capacity(4096),
                spare: Vec::with_capacity(4096),
                writing: false,
                write_blocked: false,
                flush_asked: false,
                events: VecDeque::new(),
                calls: VecDeque::new(),
                closed: false,
                last_error: None,
            }),
            permits: Semaphore::new(max_in_flight.clamp(1, Semaphore::MAX_PERMITS)),
            ids: IdSequence::new(),
            max_frame,
            call_timeout,
            write_ready: Notify::new(),
            events_ready: Notify::new(),
            calls_ready: Notify::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        lock_state(&self.state)
    }

    pub(crate) fn disconnected(&self) -> CallError {
        CallError::Disconnected {
            reason: self.lock().last_error.clone(),
        }
    }

    // ---------------------------------------------------------------- writing

    /// Encodes one frame and queues it for writing, then writes (unless a
    /// write is already in progress, whose writer takes it along).
    pub(crate) fn send(
        &self,
        body: impl FnOnce(&mut Vec<u8>) -> Result<(), CallError>,
    ) -> Result<(), CallError> {
        self.queue(None, body)?;
        self.flush();
        Ok(())
    }

    /// Encodes one frame and queues it; with `slot`, registers the request
    /// it carries as waiting for its answer, atomically with the queueing.
    pub(crate) fn queue(
        &self,
        slot: Option<(RequestId, bool)>,
        body: impl FnOnce(&mut Vec<u8>) -> Result<(), CallError>,
    ) -> Result<(), CallError> {
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            let encoded = encode_frame(&mut buf, self.max_frame, body);
            let queued = encoded.and_then(|()| {
                let mut st = self.lock();
                if st.closed {
                    return Err(CallError::Disconnected {
                        reason: st.last_error.clone(),
                    });
                }
                if let Some((id, counted)) = slot {
                    st.pending.insert(
                        id.get(),
                        Slot {
                            answer: None,
                            waker: None,
                            counted,
                            abandoned: false,
                        },
                    );
                }
                st.out.extend_from_slice(&buf);
                Ok(())
            });
            if buf.capacity() > KEEP_CAPACITY {
                *buf = Vec::new();
            }
            queued
        })
    }

    /// Makes sure what is queued is written soon without writing it now:
    /// the frames of calls started one after another (`start_call` in a
    /// loop) then leave in one write, made by whichever comes first: the
    /// first poll of one of their answers, or the background writer once
    /// the runtime gets to it (so a frame never waits for its answer to be
    /// awaited).
    pub(crate) fn flush_soon(&self) {
        let mut st = self.lock();
        if st.writing || st.write_blocked || st.closed || st.out.is_empty() || st.flush_asked {
            return;
        }
        st.flush_asked = true;
        drop(st);
        self.write_ready.notify_one();
    }

    /// Writes everything queued, unless someone else is writing (they will
    /// take what was queued meanwhile) or the socket is full (the
    /// background writer will).
    pub(crate) fn flush(&self) {
        let mut buf = {
            let mut st = self.lock();
            if st.writing || st.write_blocked || st.closed || st.out.is_empty() {
                return;
            }
            st.writing = true;
            let spare = std::mem::take(&mut st.spare);
            std::mem::replace(&mut st.out, spare)
        };
        loop {
            let mut pos = 0;
            let outcome = loop {
                if pos == buf.len() {
                    break Ok(true);
                }
                match self.stream.try_write(&buf[pos..]) {
                    Ok(n) => pos += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(false),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            let mut st = self.lock();
            match outcome {
                Ok(true) => {
                    buf.clear();
                    if buf.capacity() > KEEP_CAPACITY {
                        buf.shrink_to(4096);
                    }
                    if st.out.is_empty() || st.closed {
                        st.spare = buf;
                        st.writing = false;
                        return;
                    }
                    // Others queued frames while we wrote: take them along.
                    buf = std::mem::replace(&mut st.out, buf);
                }
                Ok(false) => {
                    // The socket is full: keep the rest, in order, and let
                    // the background writer wait for room.
                    buf.drain(..pos);
                    buf.extend_from_slice(&st.out);
                    st.out.clear();
                    let emptied = std::mem::replace(&mut st.out, buf);
                    st.spare = emptied;
                    st.writing = false;
                    st.write_blocked = true;
                    drop(st);
                    self.write_ready.notify_one();
                    return;
                }
                Err(e) => {
                    st.writing = false;
                    let mut wakes = Vec::new();
                    self.close(
                        &mut st,
                        &format!("writing to the broker failed: {e}"),
                        &mut wakes,
                    );
                    drop(st);
                    wake_all(&mut wakes);
                    return;
                }
            }
        }
    }

    // ---------------------------------------------------------------- reading

    /// Plays the read role for `me` (taking it if free, or from the
    /// background reader) until `me`'s answer is in (`Ready`), or the socket
    /// has nothing more for now (`Pending`, with `cx` registered for read
    /// readiness or with whoever holds the buffer). For the background
    /// reader, `Ready` means the connection is closed.
    pub(crate) fn drive(&self, me: Reader, cx: &mut Context<'_>) -> Poll<()> {
        let mut budget = READ_BUDGET;
        loop {
            let mut st = self.lock();
            match me {
                Reader::Call(id) => {
                    let closed = st.closed;
                    let Some(slot) = st.pending.get_mut(&id) else {
                        return Poll::Ready(());
                    };
                    if slot.answer.is_some() || closed {
                        return Poll::Ready(());
                    }
                    if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        slot.waker = Some(cx.waker().clone());
                    }
                }
                Reader::Background => {
                    if st.closed {
                        return Poll::Ready(());
                    }
                    if !st
                        .bg_waker
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        st.bg_waker = Some(cx.waker().clone());
                    }
                }
                Reader::Nobody => return Poll::Ready(()),
            }
            match (st.reader, me) {
                (r, m) if r == m => {}
                (Reader::Nobody | Reader::Background, Reader::Call(_))
                | (Reader::Nobody, Reader::Background) => st.reader = me,
                _ => return Poll::Pending,
            }
            // Whoever holds the buffer now wakes us when putting it back.
            let Some(mut rb) = st.read.take() else {
                return Poll::Pending;
            };
            if st.inbox_full() {
                st.stalled = Some(cx.waker().clone());
                st.read = Some(rb);
                return Poll::Pending;
            }
            drop(st);
            let outcome = self.read_some(&mut rb, me, cx, &mut budget);
            let mut st = self.lock();
            st.read = Some(rb);
            if st.reader != me {
                // The background reader was relieved while reading: let
                // the new holder in.
                let w = st.reader_waker();
                drop(st);
                if let Some(w) = w {
                    w.wake();
                }
                return Poll::Pending;
            }
            drop(st);
            // Frames queued while we read (an answer to an undecodable
            // incoming call) go out now.
            self.flush();
            match outcome {
                Poll::Ready(()) if budget == 0 => {
                    // Yield: let the runtime run others, come back soon.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(()) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Decodes what is buffered and reads more, until `me`'s answer is in,
    /// an inbox fills up, the connection ends (`Ready`), or the socket has
    /// nothing more (`Pending`).
    fn read_some(
        &self,
        rb: &mut ReadBuf,
        me: Reader,
        cx: &mut Context<'_>,
        budget: &mut usize,
    ) -> Poll<()> {
        let mut wakes = Vec::new();
        loop {
            if rb.has_frame() {
                let mut st = self.lock();
                let mut stop = false;
                loop {
                    match rb.next_frame(self.max_frame) {
                        Ok(Some(range)) => self.dispatch(&mut st, &rb.buf[range], me, &mut wakes),
                        Ok(None) => break,
                        Err(reason) => {
                            self.close(&mut st, &reason, &mut wakes);
                            stop = true;
                            break;
                        }
                    }
                    if st.inbox_full() {
                        stop = true;
                        break;
                    }
                }
                if let Reader::Call(id) = me {
                    stop |= st.pending.get(&id).is_none_or(|s| s.answer.is_some());
                }
                drop(st);
                wake_all(&mut wakes);
                if stop {
                    return Poll::Ready(());
                }
            }
            if *budget == 0 {
                return Poll::Ready(());
            }
            *budget -= 1;
            rb.reserve();
            match self.stream.try_read_buf(&mut rb.buf) {
                Ok(0) => {
                    let mut st = self.lock();
                    let reason = if rb.start < rb.buf.len() {
                        "the broker closed the connection in the middle of a frame"
                    } else {
                        "the broker closed the connection"
                    };
                    self.close(&mut st, reason, &mut wakes);
                    drop(st);
                    wake_all(&mut wakes);
                    return Poll::Ready(());
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    match self.stream.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            self.fail(&format!("reading from the broker failed: {e}"));
                            return Poll::Ready(());
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => {
                    self.fail(&format!("reading from the broker failed: {e}"));
                    return Poll::Ready(());
                }
            }
        }
    }

    fn dispatch(&self, st: &mut State, body: &[u8], me: Reader, wakes: &mut Vec<Waker>) {
        match Message::decode(body) {
            Ok(Message::Reply { id, result }) => self.answer(st, id.get(), Ok(result), me, wakes),
            Ok(Message::Error {
                id: Some(id),
                error,
            }) => self.answer(st, id.get(), Err(CallError::Remote(error)), me, wakes),
            Ok(Message::Error { id: None, error }) => {
                tracing::warn!(code = %error.code, "the broker says: {}", error.message);
                st.last_error = Some(error);
            }
            Ok(Message::Event {
                topic,
                data,
                missed,
                publisher,
            }) => {
                st.events.push_back(Event::Event {
                    topic,
                    data,
                    missed,
                    publisher,
                });
                self.events_ready.notify_one();
            }
            Ok(Message::Lagged { missed }) => {
                st.events.push_back(Event::Lagged { missed });
                self.events_ready.notify_one();
            }
            Ok(Message::Call {
                id,
                method,
                params,
                caller,
                ..
            }) => {
                st.calls.push_back(IncomingCall {
                    id,
                    method,
                    params,
                    caller,
                });
                self.calls_ready.notify_one();
            }
            Ok(other) => {
                tracing::debug!(
                    kind = other.kind(),
                    "ignoring a frame the broker should not send"
                );
            }
            Err(e) => {
                let kind = serde_json::from_slice::<KindOnly<'_>>(body).ok();
                let kind = kind.as_ref().map(|k| k.kind.as_ref());
                match (kind, e.id) {
                    (Some("call"), Some(id)) => {
                        // A call routed to us that we cannot read: say so,
                        // rather than let the caller wait for the deadline.
                        let error = e.to_wire();
                        let mut frame = Vec::new();
                        let encoded = encode_frame(&mut frame, self.max_frame, |b| {
                            write_error(b, id, &error)
                        });
                        if encoded.is_ok() {
                            st.out.extend_from_slice(&frame);
                        }
                        tracing::warn!(%id, "answered an undecodable incoming call: {e}");
                    }
                    (None | Some("reply" | "error"), Some(id))
                        if st.pending.contains_key(&id.get()) =>
                    {
                        let err = CallError::BadAnswer {
                            reason: format!("the answer could not be decoded: {}", e.reason),
                        };
                        self.answer(st, id.get(), Err(err), me, wakes);
                    }
                    _ => tracing::warn!("dropping a frame that cannot be decoded: {e}"),
                }
            }
        }
    }

    fn answer(
        &self,
        st: &mut State,
        id: u64,
        result: Result<Payload, CallError>,
        me: Reader,
        wakes: &mut Vec<Waker>,
    ) {
        let Some(slot) = st.pending.get_mut(&id) else {
            tracing::debug!(id, "dropping an answer for no pending request");
            return;
        };
        if slot.answer.is_some() {
            tracing::debug!(id, "dropping a second answer");
            return;
        }
        if std::mem::take(&mut slot.counted) {
            self.permits.add_permits(1);
        }
        if slot.abandoned {
            st.pending.remove(&id);
            return;
        }
        slot.answer = Some(result);
        if me != Reader::Call(id) {
            if let Some(w) = slot.waker.take() {
                wakes.push(w);
            }
        }
    }

    /// Ends the connection: every waiting request gets `Disconnected`.
    pub(crate) fn fail(&self, reason: &str) {
        let mut wakes = Vec::new();
        let mut st = self.lock();
        self.close(&mut st, reason, &mut wakes);
        drop(st);
        wake_all(&mut wakes);
    }

    fn close(&self, st: &mut State, reason: &str, wakes: &mut Vec<Waker>) {
        if st.closed {
            return;
        }
        tracing::debug!("connection to the broker closed: {reason}");
        st.closed = true;
        let last = st.last_error.clone();
        st.pending.retain(|_, s| !s.abandoned);
        for slot in st.pending.values_mut() {
            if slot.answer.is_none() {
                slot.answer = Some(Err(CallError::Disconnected {
                    reason: last.clone(),
                }));
                wakes.extend(slot.waker.take());
            }
        }
        wakes.extend(st.bg_waker.take());
        wakes.extend(st.stalled.take());
        self.permits.close();
        self.events_ready.notify_waiters();
        self.calls_ready.notify_waiters();
        self.write_ready.notify_one();
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.stream),
            nix::sys::socket::Shutdown::Both,
        );
    }

    // ---------------------------------------------------------------- calls

    /// Takes `id`'s answer; hands the read role on if `id` held it.
    fn finish(&self, id: u64) -> Result<Payload, CallError> {
        let mut st = self.lock();
        let answer = match st.pending.remove(&id) {
            Some(Slot {
                answer: Some(a), ..
            }) => a,
            Some(slot) => {
                if slot.counted {
                    self.permits.add_permits(1);
                }
                Err(CallError::Disconnected {
                    reason: st.last_error.clone(),
                })
            }
            None => Err(CallError::Disconnected {
                reason: st.last_error.clone(),
            }),
        };
        let w = self.hand_over(&mut st, id);
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
        answer
    }

    /// `id`'s future is gone before its answer: forget it (keeping its
    /// permit until the broker answers) and hand the read role on.
    fn abandon(&self, id: u64, cancel: bool) {
        let mut st = self.lock();
        let mut send_cancel = false;
        let closed = st.closed;
        if let Some(slot) = st.pending.get_mut(&id) {
            if slot.answer.is_some() || closed {
                st.pending.remove(&id);
            } else {
                slot.abandoned = true;
                slot.waker = None;
                send_cancel = cancel;
            }
        }
        let w = self.hand_over(&mut st, id);
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
        if send_cancel {
            if let Some(rid) = RequestId::new(id) {
                let _ = self.send(|b| {
                    write_cancel(b, rid);
                    Ok(())
                });
            }
        }
    }

    /// If `id` holds the read role, gives it to a caller still waiting,
    /// else to the background reader. Returns whom to wake: nobody if the
    /// buffer holds no complete frame and the socket is not readable yet,
    /// as then the new holder's waker is registered for read readiness
    /// instead (so a handover costs no task wake-up).
    fn hand_over(&self, st: &mut State, id: u64) -> Option<Waker> {
        if st.reader != Reader::Call(id) {
            return None;
        }
        let next = st
            .pending
            .iter()
            .find(|(_, s)| s.answer.is_none() && !s.abandoned && s.waker.is_some())
            .map(|(k, s)| (*k, s.waker.clone()));
        let waker = match next {
            Some((k, w)) => {
                st.reader = Reader::Call(k);
                w
            }
            None => {
                st.reader = Reader::Background;
                st.bg_waker.clone()
            }
        };
        let waker = waker?;
        let buffered = st.read.as_ref().is_none_or(ReadBuf::has_frame);
        if st.closed || buffered || st.stalled.is_some() {
            return Some(waker);
        }
        let mut cx = Context::from_waker(&waker);
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => None,
            Poll::Ready(_) => Some(waker),
        }
    }
}

/// Writes `{"kind":"error","id":N,"error":{...}}`.
pub(crate) fn write_error(
    b: &mut Vec<u8>,
    id: RequestId,
    error: &WireError,
) -> Result<(), CallError> {
    use std::io::Write;
    let _ = write!(b, r#"{{"kind":"error","id":{id},"error":"#);
    serde_json::to_writer(&mut *b, error).map_err(CallError::BadParams)?;
    b.push(b'}');
    Ok(())
}

/// Writes `{"kind":"cancel","id":N}`.
pub(crate) fn write_cancel(b: &mut Vec<u8>, id: RequestId) {
    use std::io::Write;
    let _ = write!(b, r#"{{"kind":"cancel","id":{id}}}"#);
}

/// Background reader: holds the read role whenever no caller does, so
/// events, incoming calls and the connection's end are noticed while no
/// call is in flight.
pub(crate) async fn background_reader(shared: Arc<Shared>) {
    std::future::poll_fn(|cx| shared.drive(Reader::Background, cx)).await;
}

/// Background writer: finishes writes that found the socket full, and
/// writes what [`Shared::flush_soon`] left queued.
pub(crate) async fn background_writer(shared: Arc<Shared>) {
    loop {
        shared.write_ready.notified().await;
        loop {
            {
                let mut st = shared.lock();
                if st.closed {
                    return;
                }
                st.flush_asked = false;
                if !st.write_blocked {
                    break;
                }
            }
            if shared.stream.writable().await.is_err() {
                shared.fail("the socket failed");
                return;
            }
            shared.lock().write_blocked = false;
            shared.flush();
        }
        shared.flush();
    }
}

/// A request on its way: resolves to its answer. Created by
/// [`Client::start_call`](crate::Client::start_call).
///
/// Dropping it before the answer forgets the request; for a call, a
/// `cancel` is sent to the broker. Its in-flight slot is freed when the
/// broker's answer (or `cancelled`) arrives.
#[derive(Debug)]
#[must_use = "a call's answer is only read by awaiting it"]
pub struct PendingCall {
    shared: Arc<Shared>,
    id: RequestId,
    cancel_on_drop: bool,
    done: bool,
    /// Polled once: the request's frame has been pushed out.
    flushed: bool,
}

impl PendingCall {
    pub(crate) fn new(shared: Arc<Shared>, id: RequestId, cancel_on_drop: bool) -> PendingCall {
        PendingCall {
            shared,
            id,
            cancel_on_drop,
            done: false,
            flushed: false,
        }
    }

    /// The request's id (for [`Client::cancel`](crate::Client::cancel)).
    pub fn id(&self) -> RequestId {
        self.id
    }
}

impl Future for PendingCall {
    type Output = Result<Payload, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.done {
            return Poll::Ready(Err(CallError::Disconnected { reason: None }));
        }
        if !self.flushed {
            self.flushed = true;
            self.shared.flush();
        }
        let id = self.id.get();
        match self.shared.drive(Reader::Call(id), cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.done = true;
                Poll::Ready(self.shared.finish(id))
            }
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.done {
            self.shared.abandon(self.id.get(), self.cancel_on_drop);
        }
    }
}
