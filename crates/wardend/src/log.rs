//! Log output that can never stop the broker.
//!
//! The broker's stderr is somebody else's pipe: a terminal, `tee`, or
//! journald. Any of them can go away (Ctrl-C kills `tee`, journald
//! restarts) or stop reading. Writing to it directly from the tasks that
//! serve clients would then either fail — and tracing-subscriber's own
//! error reporting panics on a closed stderr — or block a runtime thread
//! for as long as the reader stalls.
//!
//! So formatted lines go into a bounded queue that one dedicated thread
//! writes to a duplicate of fd 2. Nothing on the serving side ever waits:
//! a line that finds the queue full, or that the thread cannot write, is
//! dropped and counted ([`LogSink::dropped`]). The count reaches the
//! service manager in the `STATUS=` line, which needs no stderr.
//!
//! The writer owns its own descriptor (a `dup` of stderr) rather than
//! `std::io::stderr()`, so a write blocked on a stalled pipe does not hold
//! std's stderr lock that a panic message or a dependency might need.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Lines queued for the writer thread before new ones are dropped.
pub const LOG_QUEUE_LINES: usize = 4096;

enum Item {
    Line(Vec<u8>),
    /// Answered once every line queued before it has been handled.
    Flush(SyncSender<()>),
}

/// A `MakeWriter` for tracing-subscriber whose writes never block or fail.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: SyncSender<Item>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// A sink writing to the process's stderr from a thread of its own.
    ///
    /// # Errors
    /// The thread could not be started or stderr could not be duplicated;
    /// the caller then has no log output.
    pub fn stderr() -> std::io::Result<LogSink> {
        use std::os::fd::AsFd;
        let fd = std::io::stderr().as_fd().try_clone_to_owned()?;
        Self::to_writer(std::fs::File::from(fd))
    }

    /// A sink writing to `out` from a thread of its own.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn to_writer(out: impl Write + Send + 'static) -> std::io::Result<LogSink> {
        let (tx, rx) = mpsc::sync_channel(LOG_QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&dropped);
        std::thread::Builder::new()
            .name("wardend-log".into())
            .spawn(move || write_lines(rx, out, &counter))?;
        Ok(LogSink { tx, dropped })
    }

    /// Lines dropped so far (queue full, or the write failed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for the lines queued so far to be written (or
    /// dropped); false if the writer did not get there in time (stderr is
    /// stalled) or the queue is full.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.tx.try_send(Item::Flush(done_tx)).is_err() {
            return false;
        }
        done_rx.recv_timeout(timeout).is_ok()
    }

    fn push(&self, line: Vec<u8>) {
        match self.tx.try_send(Item::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn write_lines(rx: Receiver<Item>, mut out: impl Write, dropped: &AtomicU64) {
    // Once a write has failed (EPIPE: the reader is gone), later lines are
    // counted without trying: the descriptor does not come back.
    let mut broken = false;
    for item in rx {
        match item {
            Item::Line(line) => {
                if broken || out.write_all(&line).is_err() {
                    broken = true;
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Item::Flush(done) => {
                let _ = out.flush();
                let _ = done.try_send(());
            }
        }
    }
}

/// One event's output: collected, then queued as one line when dropped.
#[derive(Debug)]
pub struct LineWriter {
    sink: LogSink,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.sink.push(std::mem::take(&mut self.buf));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            sink: self.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

/// The event format of the log: tracing-subscriber's own (`inner`), except
/// for audit records (target `warden::audit`), which are printed from the
/// rendering `warden::audit` made: in JSON, the record's values as JSON
/// values (`null`, arrays) under `fields`, in the same envelope as every
/// other line; in text, the record's `key=value` text.
#[derive(Debug)]
pub struct AuditFormat<F> {
    inner: F,
    json: bool,
    timer: tracing_subscriber::fmt::time::SystemTime,
}

impl<F> AuditFormat<F> {
    /// Wraps `inner`; `json` chooses how audit records are printed.
    pub fn new(inner: F, json: bool) -> Self {
        AuditFormat {
            inner,
            json,
            timer: tracing_subscriber::fmt::time::SystemTime,
        }
    }
}

/// An audit record's message and renderings, read from its event.
#[derive(Default)]
struct AuditFields {
    message: String,
    json: Option<String>,
    text: Option<String>,
}

impl tracing::field::Visit for AuditFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            warden::audit::JSON_FIELD => self.json = Some(value.to_owned()),
            warden::audit::TEXT_FIELD => self.text = Some(value.to_owned()),
            "message" => self.message = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for AuditFormat<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        let meta = event.metadata();
        if meta.target() != warden::audit::TARGET {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut f = AuditFields::default();
        event.record(&mut f);
        let (Some(json), Some(text)) = (f.json, f.text) else {
            // Not made by warden::audit: the ordinary format.
            return self.inner.format_event(ctx, writer, event);
        };
        let mut time = String::new();
        self.timer
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut time))?;
        let level = meta.level().as_str();
        if self.json {
            let message = serde_json::Value::from(f.message).to_string();
            let rest = json.strip_prefix('{').unwrap_or("}");
            let sep = if rest == "}" { "" } else { "," };
            writeln!(
                writer,
                "{{\"timestamp\":{},\"level\":\"{level}\",\"fields\":{{\"message\":{message}{sep}{rest},\"target\":\"{}\"}}",
                serde_json::Value::from(time),
                warden::audit::TARGET
            )
        } else {
            writeln!(
                writer,
                "{time} {level:>5} {}: {} {text}",
                warden::audit::TARGET,
                f.message
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer whose writes block until released, then fail.
    struct Stalled(Arc<Mutex<()>>);
    impl Write for Stalled {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _held = self.0.lock();
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(sink: &LogSink, text: &str) {
        use tracing_subscriber::fmt::MakeWriter;
        let mut w = sink.make_writer();
        let _ = w.write_all(text.as_bytes());
    }

    #[test]
    fn lines_arrive_whole_and_in_order() {
        let out = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = LogSink::to_writer(Shared(Arc::clone(&out))).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..100 {
            line(&sink, &format!("line {i}\n"));
        }
        assert!(sink.flush(Duration::from_secs(10)));
        let text =
            String::from_utf8_lossy(&out.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn a_stalled_writer_never_blocks_the_logger_and_drops_are_counted() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap_or_else(|p| p.into_inner());
        let sink = LogSink::to_writer(Stalled(Arc::clone(&gate))).unwrap_or_else(|e| panic!("{e}"));
        let n = LOG_QUEUE_LINES as u64 + 500;
        let start = std::time::Instant::now();
        for _ in 0..n {
            line(&sink, "x\n");
        }
        // Liveness, not speed: thousands of lines while the writer is stuck.
        assert!(start.elapsed() < Duration::from_secs(30));
        assert!(sink.dropped() >= 499, "dropped {}", sink.dropped());
        assert!(
            !sink.flush(Duration::from_millis(50)),
            "flush cannot finish while stalled"
        );
        drop(held);
        // Released: every write fails (EPIPE), so every line is counted.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while sink.dropped() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sink.dropped(), n);
    }
}
