//! The history the checker keeps while regions compact (issue 13).
//!
//! A region that compacts drops the events it folded into a snapshot: its logs start above
//! a base. Those events are final on every member (a compaction point is below what every
//! member announced, and a cut or seal never goes below a settled event), so one copy serves
//! every region: [`Folded`] keeps, per origin, the events any region folded, from seq 1 on,
//! captured just before each compaction. [`Log`] is one region's whole log of one origin:
//! the folded events below its base, then what it holds in memory. Checks that read a
//! region's log from the start read it through a [`Log`], never through the compacted
//! replica alone.

use wallet_core::{Event, RegionId, Replica};

/// Per origin (index as in the region list), the events folded by any region, seqs `1..`.
#[derive(Debug, Default)]
pub struct Folded {
    per_origin: Vec<Vec<Event>>,
}

impl Folded {
    /// An empty history of `origins` origins.
    pub fn new(origins: usize) -> Folded {
        Folded {
            per_origin: vec![Vec::new(); origins],
        }
    }

    /// Events of origin `o` a region is about to fold (seqs in order from the region's base
    /// up): those beyond what is kept already are appended. False when they do not continue
    /// the kept prefix (a gap, or a different event under a kept id: folded history is final,
    /// so that is a failure).
    pub fn note(&mut self, o: usize, events: &[Event]) -> bool {
        let Some(kept) = self.per_origin.get_mut(o) else {
            return events.is_empty();
        };
        for e in events {
            let k = e.id.seq as usize;
            match k.cmp(&(kept.len() + 1)) {
                std::cmp::Ordering::Less => {
                    if kept.get(k - 1) != Some(e) {
                        return false;
                    }
                }
                std::cmp::Ordering::Equal => kept.push(e.clone()),
                std::cmp::Ordering::Greater => return false,
            }
        }
        true
    }

    /// The kept events of origin `o` with seqs in `from + 1 ..= to`.
    pub fn range(&self, o: usize, from: u64, to: u64) -> &[Event] {
        let kept = self.per_origin.get(o).map_or(&[][..], |v| v.as_slice());
        let a = usize::try_from(from).unwrap_or(usize::MAX).min(kept.len());
        let b = usize::try_from(to).unwrap_or(usize::MAX).min(kept.len());
        kept.get(a..b.max(a)).unwrap_or(&[])
    }

    /// Events of origin `o` kept (folded by some region).
    pub fn len(&self, o: usize) -> u64 {
        self.per_origin.get(o).map_or(0, |v| v.len() as u64)
    }

    /// True when no region folded anything.
    pub fn is_empty(&self) -> bool {
        self.per_origin.iter().all(Vec::is_empty)
    }

    /// Region `r`'s whole log of `origin` (index `o`).
    pub fn log<'a>(&'a self, r: &'a Replica, o: usize, origin: RegionId) -> Log<'a> {
        let mem = r.origin_events(origin, 0);
        let base = base_of(r, origin);
        let kept = self.per_origin.get(o).map_or(&[][..], |v| v.as_slice());
        let base = usize::try_from(base).unwrap_or(usize::MAX);
        let folded = &kept[..base.min(kept.len())];
        Log { base, folded, mem }
    }

    /// Region `r`'s whole logs of `origins` (the configured regions, in order).
    pub fn logs<'a>(&'a self, r: &'a Replica, origins: &[RegionId]) -> Vec<Log<'a>> {
        origins
            .iter()
            .enumerate()
            .map(|(o, origin)| self.log(r, o, *origin))
            .collect()
    }

    /// Every event of region `r`'s whole logs, origin by origin, cloned.
    pub fn all_events(&self, r: &Replica, origins: &[RegionId]) -> Vec<Event> {
        self.logs(r, origins)
            .iter()
            .flat_map(|l| l.iter_from(0).cloned())
            .collect()
    }
}

/// The seqs of `origin` region `r` folded into a snapshot and no longer holds in memory.
pub fn base_of(r: &Replica, origin: RegionId) -> u64 {
    r.version_vector()
        .get(&origin)
        .saturating_sub(r.origin_events(origin, 0).len() as u64)
}

/// The last seq of `origin` snapshot `s` folds (0: none).
pub fn folded_seq(s: &wallet_core::Snapshot, origin: RegionId) -> u64 {
    s.body
        .members
        .iter()
        .find(|m| m.region == origin)
        .map_or(0, |m| m.seq)
}

/// One region's whole log of one origin: folded events, then those in memory. Index `k` is
/// seq `k + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Log<'a> {
    /// Seqs below the memory part (`folded` holds them all unless the history lacks some,
    /// which [`Folded::note`] reports).
    base: usize,
    folded: &'a [Event],
    mem: &'a [Event],
}

impl<'a> Log<'a> {
    /// What the replica holds in memory only (a region that never compacted: all of it).
    pub fn in_memory(r: &'a Replica, origin: RegionId) -> Log<'a> {
        Log {
            base: 0,
            folded: &[],
            mem: r.origin_events(origin, 0),
        }
    }

    /// Events in the log.
    pub fn len(&self) -> usize {
        self.base + self.mem.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k`th event (seq `k + 1`).
    pub fn get(&self, k: usize) -> Option<&'a Event> {
        match k.checked_sub(self.base) {
            None => self.folded.get(k),
            Some(m) => self.mem.get(m),
        }
    }

    /// The events from the `k`th on.
    pub fn iter_from(&self, k: usize) -> impl Iterator<Item = &'a Event> + 'a {
        let f = self.folded.get(k..).unwrap_or(&[]);
        let m = self.mem.get(k.saturating_sub(self.base)..).unwrap_or(&[]);
        f.iter().chain(m.iter())
    }
}
