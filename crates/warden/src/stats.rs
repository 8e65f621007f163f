//! Call statistics, kept by the registry: per method for names that
//! resolve, one bucket for the rest, so callers inventing names cannot
//! grow the table.

use std::collections::HashMap;

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
