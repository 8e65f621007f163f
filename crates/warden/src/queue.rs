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
    /// Bytes of this uid's routed calls waiting at each provider uid: one
    /// budget per provider uid, so this uid cannot fill a provider's
    /// queue for everyone else.
    at_provider: std::sync::Mutex<std::collections::HashMap<u32, Arc<UidAccount>>>,
}

impl UidAccount {
    /// The budget of this uid's calls waiting at `provider_uid`.
    pub(crate) fn at_provider(&self, provider_uid: u32) -> Arc<UidAccount> {
        let mut map = self.at_provider.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(provider_uid).or_default())
    }

    fn release(&self, len: u64) {
        self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
    }

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

/// Bytes a handler holds for its caller (data it will send, such as a
/// learning session's buffered events), charged to the caller's uid like
/// queued frames and released on drop. Turned into a frame with
/// [`crate::CallerChannel::push_charged`], which keeps the charge.
pub struct Charge {
    account: Arc<UidAccount>,
    max: u64,
    len: u64,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("len", &self.len)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Charge {
    /// Nothing charged yet, against `account` and its limit `max`.
    pub(crate) fn empty(account: &Arc<UidAccount>, max: u64) -> Charge {
        Charge {
            account: Arc::clone(account),
            max,
            len: 0,
        }
    }

    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The uid's limit (`max_queued_bytes_per_uid`).
    pub fn limit(&self) -> u64 {
        self.max
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Charges `len` more bytes to the uid if its total stays within
    /// `max_queued_bytes_per_uid` minus `headroom`; false (and nothing
    /// charged) otherwise.
    pub fn try_add(&mut self, len: u64, headroom: u64) -> bool {
        if !self
            .account
            .try_charge(len, self.max.saturating_sub(headroom))
        {
            return false;
        }
        self.len += len;
        true
    }

    /// Moves up to `len` of the bytes held into a charge of their own.
    pub fn split(&mut self, len: u64) -> Charge {
        let len = len.min(self.len);
        self.len -= len;
        Charge {
            account: Arc::clone(&self.account),
            max: self.max,
            len,
        }
    }

    /// Gives back `len` of the bytes held.
    pub fn release(&mut self, len: u64) {
        let len = len.min(self.len);
        self.account.release(len);
        self.len -= len;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.account.release(self.len);
    }
}

/// An encoded frame waiting for a writer, charged to a uid while it waits
/// (and, for a routed call, to its caller's budget at the provider too).
#[derive(Debug)]
pub(crate) struct QueuedFrame {
    bytes: Vec<u8>,
    account: Arc<UidAccount>,
    also: Option<Arc<UidAccount>>,
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
            also: None,
        })
    }

    /// Charges `bytes` to both accounts if each stays within its limit
    /// (a routed call: the caller's uid, and the caller's budget at the
    /// provider); else `None`, and neither is charged.
    pub(crate) fn charge_both(
        bytes: Vec<u8>,
        account: &Arc<UidAccount>,
        max: u64,
        also: &Arc<UidAccount>,
        also_max: u64,
    ) -> Option<Self> {
        let len = bytes.len() as u64;
        if !account.try_charge(len, max) {
            return None;
        }
        if !also.try_charge(len, also_max) {
            account.release(len);
            return None;
        }
        Some(QueuedFrame {
            bytes,
            account: Arc::clone(account),
            also: Some(Arc::clone(also)),
        })
    }

    /// A frame whose bytes `charge` already holds (callers make its length
    /// the frame's); the frame keeps the charge until written or dropped.
    pub(crate) fn from_charge(bytes: Vec<u8>, mut charge: Charge) -> Self {
        // Whatever the lengths, the account ends up charged with exactly
        // the frame's length, which the frame releases.
        let len = bytes.len() as u64;
        if charge.len > len {
            charge.release(charge.len - len);
        } else if charge.len < len {
            charge
                .account
                .queued_bytes
                .fetch_add(len - charge.len, Ordering::AcqRel);
        }
        charge.len = 0;
        QueuedFrame {
            bytes,
            account: Arc::clone(&charge.account),
            also: None,
        }
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
            also: None,
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
        debug_assert!(
            self.also.is_none(),
            "routed calls are queued whole, never appended to"
        );
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
        let len = self.bytes.len() as u64;
        self.account.release(len);
        if let Some(also) = &self.also {
            also.release(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routed_call_is_charged_to_both_budgets_or_neither() {
        let caller = Arc::new(UidAccount::default());
        let at_provider = caller.at_provider(1000);
        let a = QueuedFrame::charge_both(vec![0; 60], &caller, 1000, &at_provider, 100);
        assert!(a.is_some());
        // The caller's uid has room, its budget at the provider does not.
        assert!(QueuedFrame::charge_both(vec![0; 50], &caller, 1000, &at_provider, 100).is_none());
        assert_eq!(caller.queued_bytes.load(Ordering::Relaxed), 60);
        assert_eq!(at_provider.queued_bytes.load(Ordering::Relaxed), 60);
        // Another provider uid has its own budget.
        let other = caller.at_provider(1001);
        assert!(QueuedFrame::charge_both(vec![0; 50], &caller, 1000, &other, 100).is_some());
        drop(a);
        assert_eq!(at_provider.queued_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(caller.queued_bytes.load(Ordering::Relaxed), 0);
        assert!(Arc::ptr_eq(&at_provider, &caller.at_provider(1000)));
    }

    #[test]
    fn a_held_charge_becomes_a_frame_without_changing_the_total() {
        let acct = Arc::new(UidAccount::default());
        let mut held = Charge::empty(&acct, 1000);
        assert!(held.try_add(600, 100));
        // 600 + 350 > 1000 - 100: refused, nothing charged.
        assert!(!held.try_add(350, 100));
        assert!(held.try_add(300, 100));
        assert_eq!(acct.queued_bytes.load(Ordering::Relaxed), 900);
        let part = held.split(500);
        assert_eq!((part.len(), held.len()), (500, 400));
        let frame = QueuedFrame::from_charge(vec![0; 500], part);
        assert_eq!(acct.queued_bytes.load(Ordering::Relaxed), 900);
        drop(held);
        assert_eq!(acct.queued_bytes.load(Ordering::Relaxed), 500);
        drop(frame);
        assert_eq!(acct.queued_bytes.load(Ordering::Relaxed), 0);
    }

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
