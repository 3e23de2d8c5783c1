//! The reference model fed one region's settled prefix as it grows (issue 16).
//!
//! Refolding the model over a region's whole history at every question (a credit back to
//! the floor, a snapshot) made the run quadratic. A [`PrefixFold`] keeps the model's own
//! incremental state ([`ModelState`], the one fold of `core/src/testing.rs`) and feeds it
//! only the events the cut-off point passed since the last call, in total order. It gives
//! exactly what a fresh [`wallet_core::testing::model_retained`] of the same events would:
//! when the logs lost what it consumed (a crash), the point went back, or a new event would
//! not come last in the total order, it starts afresh from the whole history.

use wallet_core::testing::{model_order, ModelState};
use wallet_core::{Event, Hlc, Policy, RegionId, Replica};

use crate::history::Log;

/// One region's settled prefix (every event of the configured origins at or below a point,
/// an HLC), folded by the reference model.
pub struct PrefixFold {
    policy: Policy,
    retention_ms: u64,
    state: ModelState,
    /// Per configured origin: events consumed (from the start of its log) and the last
    /// one's seq and HLC.
    cursors: Vec<(usize, Option<(u64, Hlc)>)>,
    /// The point folded up to.
    upto: Hlc,
    /// Times it started afresh.
    pub rebuilds: u64,
}

impl PrefixFold {
    /// An empty fold under `policy` (the seed policy) and the key retention.
    pub fn new(policy: &Policy, retention_ms: u64, origins: usize) -> Self {
        PrefixFold {
            policy: policy.clone(),
            retention_ms,
            state: ModelState::new(policy, retention_ms, false),
            cursors: vec![(0, None); origins],
            upto: Hlc::ZERO,
            rebuilds: 0,
        }
    }

    /// The model's state: every event of `origins` in `r`'s logs at or below the last point.
    pub fn state(&self) -> &ModelState {
        &self.state
    }

    /// The events of `origins` in `r`'s logs above the point, in each origin's order
    /// (`r`'s logs in memory: a region that never compacted).
    pub fn above<'r>(&self, r: &'r Replica, origins: &[RegionId]) -> Vec<&'r Event> {
        let logs: Vec<Log<'r>> = origins.iter().map(|o| Log::in_memory(r, *o)).collect();
        self.above_logs(&logs)
    }

    /// The events of `logs` (one per origin, whole: [`crate::history::Folded::logs`]) above
    /// the point, in each origin's order.
    pub fn above_logs<'r>(&self, logs: &[Log<'r>]) -> Vec<&'r Event> {
        logs.iter()
            .zip(&self.cursors)
            .flat_map(|(l, (n, _))| l.iter_from(*n))
            .collect()
    }

    /// Folds up to `upto`: every event of `origins` in `r`'s logs (in memory) with an HLC at
    /// or below it.
    pub fn advance(&mut self, r: &Replica, origins: &[RegionId], upto: Hlc) {
        let logs: Vec<Log<'_>> = origins.iter().map(|o| Log::in_memory(r, *o)).collect();
        self.advance_logs(&logs, upto);
    }

    /// Folds up to `upto`: every event of `logs` (one per origin, whole) with an HLC at or
    /// below it.
    pub fn advance_logs(&mut self, logs: &[Log<'_>], upto: Hlc) {
        if upto.0 < self.upto.0 || !self.intact(logs) || !self.feed(logs, upto) {
            self.rebuilds += 1;
            self.state = ModelState::new(&self.policy, self.retention_ms, false);
            self.cursors.iter_mut().for_each(|c| *c = (0, None));
            // From nothing every event comes last: cannot fail.
            self.feed(logs, upto);
        }
        self.upto = upto;
    }

    /// Each origin's log still holds the events consumed (only a log's tail is ever lost: its
    /// last consumed event is the same).
    fn intact(&self, logs: &[Log<'_>]) -> bool {
        logs.iter().zip(&self.cursors).all(|(log, (n, last))| {
            match (n.checked_sub(1).and_then(|k| log.get(k)), last) {
                (None, None) => *n == 0,
                (Some(e), Some((seq, hlc))) => e.id.seq == *seq && e.hlc == *hlc,
                _ => false,
            }
        })
    }

    /// Feeds the new events in total order; false (nothing fed) when one would not come
    /// after every event already folded.
    fn feed(&mut self, logs: &[Log<'_>], upto: Hlc) -> bool {
        let mut new: Vec<&Event> = Vec::new();
        let mut ends = Vec::with_capacity(logs.len());
        for (log, (n, _)) in logs.iter().zip(&self.cursors) {
            let before = new.len();
            new.extend(log.iter_from(*n).take_while(|e| e.hlc.0 <= upto.0));
            ends.push(n + (new.len() - before));
        }
        new.sort_by(|a, b| model_order(a, b));
        if new.first().is_some_and(|e| !self.state.follows(e)) {
            return false;
        }
        for e in &new {
            self.state.settle(e);
        }
        for ((log, c), end) in logs.iter().zip(self.cursors.iter_mut()).zip(ends) {
            let last = end
                .checked_sub(1)
                .and_then(|k| log.get(k))
                .map(|e| (e.id.seq, e.hlc));
            *c = (end, last);
        }
        true
    }
}
