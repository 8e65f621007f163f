//! Outgoing frames and per-uid byte accounting.
//!
//! Frames for a connection wait in its wire (see `connection::Wire`) or in
//! one of two bounded queues to its writer task: `ctl` for errors and
//! cancels the broker sends on its own, and `events` (dropped when full,
//! with the drop counted). Every waiting frame is charged to its
//! recipient's uid until written, and released when written or dropped, so
//! the bytes one uid can make the broker hold are bounded.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Per-uid resource accounting.
#[derive(Debug, Default)]
pub(crate) struct UidAccount {
    pub(crate) connections: AtomicUsize,
    pub(crate) queued_bytes: AtomicU64,
}

impl UidAccount {
    /// Adds `len` queued bytes if that keeps the total within `max`.
    fn try_charge(&self, len: u64, max: u64) -> bool {
        let mut cur = self.queued_bytes.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(len) > max {
                return false;
            }
            match self.queued_bytes.compare_exchange_weak(
                cur,
                cur + len,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// An encoded frame waiting for a writer, charged to a uid while it waits.
#[derive(Debug)]
pub(crate) struct QueuedFrame {
    bytes: Vec<u8>,
    account: Arc<UidAccount>,
}

impl QueuedFrame {
    /// Charges `bytes` to `account` if that keeps it within `max`; else
    /// returns `None` and charges nothing.
    pub(crate) fn charge(bytes: Vec<u8>, account: &Arc<UidAccount>, max: u64) -> Option<Self> {
        if !account.try_charge(bytes.len() as u64, max) {
            return None;
        }
        Some(QueuedFrame {
            bytes,
            account: Arc::clone(account),
        })
    }

    /// Charges without a limit check (for small control frames that must
    /// go out, such as errors).
    pub(crate) fn force(bytes: Vec<u8>, account: &Arc<UidAccount>) -> Self {
        account
            .queued_bytes
            .fetch_add(bytes.len() as u64, Ordering::AcqRel);
        QueuedFrame {
            bytes,
            account: Arc::clone(account),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends another frame, charging it to the same account; `force`
    /// skips the limit check. Returns false (appending nothing) if the
    /// limit would be exceeded.
    pub(crate) fn append(&mut self, bytes: &[u8], max: u64, force: bool) -> bool {
        let len = bytes.len() as u64;
        if force {
            self.account.queued_bytes.fetch_add(len, Ordering::AcqRel);
        } else if !self.account.try_charge(len, max) {
            return false;
        }
        self.bytes.extend_from_slice(bytes);
        true
    }
}

impl Drop for QueuedFrame {
    fn drop(&mut self) {
        self.account
            .queued_bytes
            .fetch_sub(self.bytes.len() as u64, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_and_release() {
        let acct = Arc::new(UidAccount::default());
        let a = QueuedFrame::charge(vec![0; 60], &acct, 100);
        assert!(a.is_some());
        assert!(QueuedFrame::charge(vec![0; 50], &acct, 100).is_none());
        assert_eq!(acct.queued_bytes.load(Ordering::Relaxed), 60);
        drop(a);
        assert_eq!(acct.queued_bytes.load(Ordering::Relaxed), 0);
        let mut f = QueuedFrame::force(vec![0; 500], &acct);
        assert_eq!(f.bytes().len(), 500);
        assert!(!f.append(&[0; 10], 505, false));
        assert!(f.append(&[0; 10], 510, false));
        assert!(f.append(&[0; 10], 0, true));
        assert_eq!(acct.queued_bytes.load(Ordering::Relaxed), 520);
        assert_eq!(f.len(), 520);
        drop(f);
        assert_eq!(acct.queued_bytes.load(Ordering::Relaxed), 0);
    }
}
