//! The archive of settled events (issue 13, SPEC §10): what compaction folds away from the
//! replica and the store stays readable on disk, outside the hot index.
//!
//! ```text
//! <data_dir>/archive/seg-00000001.arc   frames: len u32 LE ‖ CRC-32 (len ‖ payload) ‖ payload
//! <data_dir>/archive/seg-00000001.idx   sealed segment's index (written when it is rolled)
//! <data_dir>/archive/expired            what retention deleted (CRC-checked, replaced atomically)
//! ```
//!
//! A payload is a postcard [`ArchiveRecord`]: a folded event with its final status, a
//! compensation of the feed, or the [`ArchiveRecord::Mark`] that ends each compaction's batch.
//! A batch is written in the account-history order (entry keys) and made durable
//! (`fdatasync`) BEFORE the replica folds it ([`crate::actor`] calls [`Archive::append`] and
//! only then `Replica::compact`, which emits the `Record::Snapshot` that lets the store delete
//! or a log rewrite drop those events): an archive write failure stops compaction and loses
//! nothing. A batch never spans two segments; a segment is rolled once it holds
//! `segment_bytes`.
//!
//! On open, the last segment is scanned: a frame that fails its CRC, is cut by the end of the
//! file, or follows the last `Mark` (a batch cut by a crash, which the next compaction writes
//! again) is a torn tail and is truncated away. A sealed segment's damage is corruption.
//!
//! Memory stays bounded: per sealed segment only a summary ([`SegmentSummary`]: key range,
//! per-origin seq range, feed range, newest HLC) is held; its index entries (17 bytes each:
//! kind ‖ value ‖ offset, sorted, big-endian) stay in the `.idx` file and are binary-searched
//! with `pread`. Only the active segment's entries are in memory (bounded by its size).
//!
//! Retention (`[storage] archive_retention_days`): whole sealed segments whose newest record
//! is older than the retention are deleted, oldest first, after [`Expired`] records what they
//! held; reads below it answer 410 `archived_expired`.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wallet_core::wire::{decode_value, encode_value};
use wallet_core::{Compensation, EntryKey, Event, Hlc, RegionId};

use crate::logstore::{frame_crc, push_frame};

/// Name of the archive directory inside the data directory.
pub const ARCHIVE_DIR_NAME: &str = "archive";
/// Default size at which a segment is rolled.
pub const SEGMENT_BYTES_DEFAULT: u64 = 8 << 20;
/// Largest record payload.
const RECORD_BYTES_MAX: usize = 16 << 20;
const FRAME_HEAD: usize = 8;
/// Index file magic; version 2 added [`AccountFilter`] (an older `.idx` is rebuilt from
/// its segment on open).
const IDX_MAGIC: &[u8; 8] = b"WALARCI2";
const EXPIRED_FILE: &str = "expired";
/// Bytes of one index entry: kind u8 ‖ value u64 BE ‖ offset u64 BE.
const IDX_ENTRY_BYTES: usize = 17;

/// Index entry kinds.
const KIND_ID: u8 = 1;
const KIND_ACCOUNT: u8 = 2;
const KIND_FEED: u8 = 3;

/// Records served to a peer's backfill: each as archived (CRC-32 and payload), and whether
/// nothing more is held ([`Archive::records_after`]).
pub type Served = (Vec<(u32, Vec<u8>)>, bool);

/// One archived record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ArchiveRecord {
    /// A folded event and its final status: 1 settled, 2 reversed (by `comp`); `comp` is
    /// the compensation it caused, if any.
    Event {
        /// The event.
        event: Event,
        /// Final status.
        status: u8,
        /// The compensation it caused.
        comp: Option<Compensation>,
    },
    /// A compensation of the feed.
    Comp(Compensation),
    /// The end of one compaction's batch: everything at or below `at` is archived, and the
    /// feed below `feed_len`.
    Mark {
        /// The snapshot point.
        at: Hlc,
        /// Feed positions archived.
        feed_len: u64,
    },
}

/// Status byte of a settled event.
pub const STATUS_SETTLED: u8 = 1;
/// Status byte of a reversed event.
pub const STATUS_REVERSED: u8 = 2;

impl ArchiveRecord {
    /// The record's place in an account's history (None for a mark).
    pub fn entry_key(&self) -> Option<EntryKey> {
        match self {
            ArchiveRecord::Event { event, .. } => Some((event.key(), 0)),
            ArchiveRecord::Comp(c) => Some(wallet_core::comp_entry_key(c)),
            ArchiveRecord::Mark { .. } => None,
        }
    }

    /// The account whose history lists it.
    fn account(&self) -> Option<&str> {
        match self {
            ArchiveRecord::Event { event, .. } => event.tx().map(|t| t.account.as_str()),
            ArchiveRecord::Comp(c) => Some(c.account.as_str()),
            ArchiveRecord::Mark { .. } => None,
        }
    }

    /// Its transaction id and the (origin, seq) it is filed under.
    fn id(&self) -> Option<(String, RegionId, u64)> {
        match self {
            ArchiveRecord::Event { event, .. } => {
                Some((event.id.to_string(), event.id.origin, event.id.seq))
            }
            ArchiveRecord::Comp(c) => Some((c.id(), c.cause.origin, c.cause.seq)),
            ArchiveRecord::Mark { .. } => None,
        }
    }
}

/// Archive failures.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A read or write failed.
    #[error("archive {path}: {reason}")]
    Io {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// A sealed segment or an index is damaged.
    #[error("archive {path}: corrupt: {what}")]
    Corrupt {
        /// File.
        path: String,
        /// What is wrong.
        what: String,
    },
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn corrupt(path: &Path, what: impl Into<String>) -> ArchiveError {
    ArchiveError::Corrupt {
        path: path.display().to_string(),
        what: what.into(),
    }
}

/// FNV-1a, 64 bits: the index's hash of ids and accounts (collisions are filtered by
/// reading the record).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What a segment holds, kept in memory for every segment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentSummary {
    /// Segment number.
    pub number: u64,
    /// Bytes of records.
    pub bytes: u64,
    /// Records (marks included).
    pub records: u64,
    /// First and last entry keys.
    pub keys: Option<(EntryKey, EntryKey)>,
    /// Per origin: lowest and highest seq of the events (and compensations' causes).
    pub seqs: Vec<(RegionId, u64, u64)>,
    /// Lowest and highest feed position.
    pub feed: Option<(u64, u64)>,
    /// The last mark: (at, feed_len).
    pub mark: Option<(Hlc, u64)>,
    /// Newest HLC milliseconds of its events (retention).
    pub newest_ms: u64,
    /// A sealed segment's filter of the accounts it holds (written with its `.idx`): an
    /// account page opens only the indexes of the segments that may hold the account. None
    /// for the active segment (its index is in memory).
    pub accounts: Option<AccountFilter>,
}

/// A Bloom filter over the FNV hashes of a sealed segment's accounts, about 10 bits per
/// account (about 1 % false positives: a false positive costs one index lookup).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountFilter {
    bits: Vec<u64>,
}

/// Probes per account.
const FILTER_PROBES: u64 = 7;

impl AccountFilter {
    /// A filter holding these account hashes.
    fn of(hashes: impl Iterator<Item = u64> + Clone) -> AccountFilter {
        let n = hashes.clone().count() as u64;
        let words = (n * 10).div_ceil(64).max(1).next_power_of_two();
        let mut f = AccountFilter {
            bits: vec![0; words as usize],
        };
        for h in hashes {
            for b in f.probes(h) {
                f.bits[(b / 64) as usize] |= 1 << (b % 64);
            }
        }
        f
    }

    /// Bit positions of one hash (double hashing).
    fn probes(&self, h: u64) -> impl Iterator<Item = u64> {
        let m = self.bits.len() as u64 * 64;
        // splitmix64's finaliser: a second, independent hash.
        let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let h2 = (z ^ (z >> 31)) | 1;
        (0..FILTER_PROBES).map(move |i| h.wrapping_add(i.wrapping_mul(h2)) % m)
    }

    /// May the segment hold this account hash? (No false negatives.)
    fn may_hold(&self, h: u64) -> bool {
        !self.bits.is_empty()
            && self
                .probes(h)
                .all(|b| self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0)
    }
}

/// The summary a sealed segment's `.idx` holds: its account filter added.
fn sealed(mut s: SegmentSummary, entries: &BTreeSet<(u8, u64, u64)>) -> SegmentSummary {
    let mut accounts: Vec<u64> = entries
        .range((KIND_ACCOUNT, 0, 0)..=(KIND_ACCOUNT, u64::MAX, u64::MAX))
        .map(|(_, h, _)| *h)
        .collect();
    accounts.dedup();
    s.accounts = Some(AccountFilter::of(accounts.into_iter()));
    s
}

impl SegmentSummary {
    fn add(&mut self, r: &ArchiveRecord, bytes: u64) {
        self.bytes += bytes;
        self.records += 1;
        if let Some(k) = r.entry_key() {
            self.keys = Some(match self.keys {
                Some((first, _)) => (first, k),
                None => (k, k),
            });
        }
        if let Some((_, origin, seq)) = r.id() {
            match self.seqs.iter_mut().find(|(o, _, _)| *o == origin) {
                Some((_, lo, hi)) => {
                    *lo = (*lo).min(seq);
                    *hi = (*hi).max(seq);
                }
                None => self.seqs.push((origin, seq, seq)),
            }
        }
        match r {
            ArchiveRecord::Event { event, .. } => {
                self.newest_ms = self.newest_ms.max(event.hlc.millis());
            }
            ArchiveRecord::Comp(c) => {
                let p = c.position;
                self.feed = Some(self.feed.map_or((p, p), |(lo, hi)| (lo.min(p), hi.max(p))));
            }
            ArchiveRecord::Mark { at, feed_len } => self.mark = Some((*at, *feed_len)),
        }
    }

    fn holds_seq(&self, origin: RegionId, seq: u64) -> bool {
        self.seqs
            .iter()
            .any(|(o, lo, hi)| *o == origin && (*lo..=*hi).contains(&seq))
    }
}

/// What retention deleted: reads at or below it answer 410 `archived_expired`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Expired {
    /// Per origin, the highest seq deleted.
    pub seqs: Vec<(RegionId, u64)>,
    /// The last entry key deleted.
    pub key: Option<EntryKey>,
    /// Feed positions below this were deleted.
    pub feed_end: u64,
    /// The last mark deleted (the archive's mark when every segment holding one expired).
    pub mark: Option<(Hlc, u64)>,
}

impl Expired {
    fn absorb(&mut self, s: &SegmentSummary) {
        self.merge(&Expired {
            seqs: s.seqs.iter().map(|(o, _, hi)| (*o, *hi)).collect(),
            key: s.keys.map(|(_, last)| last),
            feed_end: s.feed.map_or(0, |(_, hi)| hi + 1),
            mark: None,
        });
        if s.mark.is_some() {
            self.mark = s.mark;
        }
    }

    /// Adds what `o` deleted.
    pub fn merge(&mut self, o: &Expired) {
        for (r, hi) in &o.seqs {
            match self.seqs.iter_mut().find(|(x, _)| x == r) {
                Some((_, top)) => *top = (*top).max(*hi),
                None => self.seqs.push((*r, *hi)),
            }
        }
        if let Some(k) = o.key {
            self.key = Some(self.key.map_or(k, |m| m.max(k)));
        }
        self.feed_end = self.feed_end.max(o.feed_end);
        if self.mark.is_none() {
            self.mark = o.mark;
        }
    }

    /// Was the event (or a compensation caused by it) `origin:seq` deleted by retention?
    pub fn seq(&self, origin: RegionId, seq: u64) -> bool {
        self.seqs.iter().any(|(o, top)| *o == origin && seq <= *top)
    }
}

/// A segment: its summary, and (active segment only) its index entries in memory.
#[derive(Debug)]
struct Segment {
    summary: SegmentSummary,
    /// The active segment's index; None for a sealed one (its `.idx` file has it).
    entries: Option<BTreeSet<(u8, u64, u64)>>,
}

/// The open archive.
#[derive(Debug)]
pub struct Archive {
    dir: PathBuf,
    segment_bytes: u64,
    retention_ms: Option<u64>,
    /// Oldest first; the last is the active one.
    segments: Vec<Segment>,
    active: File,
    expired: Expired,
    /// The last mark over all segments (survives the deletion of the segment holding it).
    mark: Option<(Hlc, u64)>,
    /// The last entry key archived.
    last_key: Option<EntryKey>,
    /// Sealed segments' indexes read by lookups (tests and figures).
    index_reads: std::sync::atomic::AtomicU64,
    /// The history below this region's bootstrap snapshot, fetched from a peer
    /// ([`crate::backfill`], `archive/below/`): read before this archive, once complete.
    below: Option<Box<Archive>>,
    /// A backfill is under way: this archive holds nothing at or below this point yet, and
    /// serves no peer a range that starts there.
    floor: Option<Hlc>,
}

fn seg_path(dir: &Path, n: u64, ext: &str) -> PathBuf {
    dir.join(format!("seg-{n:08}.{ext}"))
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the dir).
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    sync_dir(dir)
}

/// Reads every valid frame of a segment file: (record, offset, frame bytes), and the offset
/// after the last one; `Err((offset, why))` at the first bad frame.
type Scan = (Vec<(ArchiveRecord, u64, u64)>, u64, Option<(u64, String)>);

fn scan(data: &[u8]) -> Scan {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        if at == data.len() {
            return (out, at as u64, None);
        }
        let bad = |why: &str| Some((at as u64, why.to_string()));
        let Some(head) = data.get(at..at + FRAME_HEAD) else {
            return (
                out,
                at as u64,
                bad("a frame header cut by the end of the file"),
            );
        };
        let len = [head[0], head[1], head[2], head[3]];
        let n = u32::from_le_bytes(len) as usize;
        if n == 0 || n > RECORD_BYTES_MAX {
            return (out, at as u64, bad("a frame length no write makes"));
        }
        let Some(payload) = data.get(at + FRAME_HEAD..at + FRAME_HEAD + n) else {
            return (out, at as u64, bad("a frame cut by the end of the file"));
        };
        if u32::from_le_bytes([head[4], head[5], head[6], head[7]]) != frame_crc(len, payload) {
            return (out, at as u64, bad("CRC-32 mismatch"));
        }
        let Ok(r) = decode_value::<ArchiveRecord>(payload) else {
            return (out, at as u64, bad("a record that does not decode"));
        };
        out.push((r, at as u64, (FRAME_HEAD + n) as u64));
        at += FRAME_HEAD + n;
    }
}

/// The index entries of one record at `offset`.
fn index_entries(r: &ArchiveRecord, offset: u64) -> Vec<(u8, u64, u64)> {
    let mut v = Vec::new();
    if let Some((id, _, _)) = r.id() {
        v.push((KIND_ID, fnv(&id), offset));
    }
    if let Some(a) = r.account() {
        v.push((KIND_ACCOUNT, fnv(a), offset));
    }
    if let ArchiveRecord::Comp(c) = r {
        v.push((KIND_FEED, c.position, offset));
    }
    v
}

fn encode_idx(summary: &SegmentSummary, entries: &BTreeSet<(u8, u64, u64)>) -> Vec<u8> {
    let head = encode_value(summary);
    let mut b = Vec::with_capacity(16 + head.len() + entries.len() * IDX_ENTRY_BYTES);
    b.extend_from_slice(IDX_MAGIC);
    b.extend_from_slice(&(head.len() as u32).to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(&head).to_le_bytes());
    b.extend_from_slice(&head);
    for (k, v, o) in entries {
        b.push(*k);
        b.extend_from_slice(&v.to_be_bytes());
        b.extend_from_slice(&o.to_be_bytes());
    }
    b
}

/// Reads a sealed segment's summary and where its entries start, from its `.idx`.
fn read_idx_head(path: &Path) -> Result<(SegmentSummary, u64), ArchiveError> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut head = [0u8; 16];
    f.read_exact_at(&mut head, 0).map_err(|e| io_err(path, e))?;
    if &head[..8] != IDX_MAGIC {
        return Err(corrupt(path, "not an archive index"));
    }
    let n = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if n > RECORD_BYTES_MAX {
        return Err(corrupt(path, "index header length"));
    }
    let mut body = vec![0u8; n];
    f.read_exact_at(&mut body, 16)
        .map_err(|e| io_err(path, e))?;
    if crc32fast::hash(&body).to_le_bytes() != head[12..16] {
        return Err(corrupt(path, "index header CRC-32 mismatch"));
    }
    let s = decode_value(&body).map_err(|e| corrupt(path, e.to_string()))?;
    Ok((s, 16 + n as u64))
}

impl Archive {
    /// Opens (or creates) the archive under `data_dir`, truncating a torn tail, and applies
    /// retention at `now_ms`.
    pub fn open(
        data_dir: &Path,
        segment_bytes: u64,
        retention_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Archive, ArchiveError> {
        let dir = data_dir.join(ARCHIVE_DIR_NAME);
        let mut a = Archive::open_dir(&dir, segment_bytes, retention_ms, now_ms)?;
        // The history below a bootstrap snapshot (`crate::backfill`): read once complete.
        match crate::backfill::Target::state(&dir) {
            Ok(crate::backfill::BelowState::Complete) => {
                let below = Archive::open_dir(
                    &crate::backfill::below_dir(&dir),
                    segment_bytes,
                    retention_ms,
                    now_ms,
                )?;
                a.set_below(below);
            }
            Ok(crate::backfill::BelowState::Pending(at)) => a.floor = Some(at),
            Ok(crate::backfill::BelowState::None) => {}
            Err(e) => return Err(e),
        }
        Ok(a)
    }

    /// Opens (or creates) an archive in `dir` itself (the backfill's `archive/below/`).
    pub fn open_dir(
        dir: &Path,
        segment_bytes: u64,
        retention_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Archive, ArchiveError> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let mut numbers: Vec<u64> = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let name = e.map_err(|e| io_err(&dir, e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_prefix("seg-")
                .and_then(|s| s.strip_suffix(".arc"))
                .and_then(|s| s.parse().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let expired_path = dir.join(EXPIRED_FILE);
        let expired = match std::fs::read(&expired_path) {
            Ok(b) => {
                let (crc, body) = b.split_at(b.len().min(4));
                if crc != crc32fast::hash(body).to_le_bytes() {
                    return Err(corrupt(&expired_path, "CRC-32 mismatch"));
                }
                decode_value(body).map_err(|e| corrupt(&expired_path, e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Expired::default(),
            Err(e) => return Err(io_err(&expired_path, e)),
        };
        if numbers.is_empty() {
            numbers.push(1);
        }
        let last = numbers.len() - 1;
        let mut segments = Vec::with_capacity(numbers.len());
        for (i, n) in numbers.iter().enumerate() {
            let arc = seg_path(&dir, *n, "arc");
            let idx = seg_path(&dir, *n, "idx");
            if i < last {
                if let Ok((summary, _)) = read_idx_head(&idx) {
                    segments.push(Segment {
                        summary,
                        entries: None,
                    });
                    continue;
                }
            }
            let data = match std::fs::read(&arc) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io_err(&arc, e)),
            };
            let (records, end, bad) = scan(&data);
            if i < last {
                if let Some((at, why)) = bad {
                    return Err(corrupt(
                        &arc,
                        format!("sealed segment, at byte {at}: {why}"),
                    ));
                }
            }
            // The active segment keeps whole batches only: a torn or cut batch is dropped
            // (the next compaction writes it again).
            let keep = if i == last {
                records
                    .iter()
                    .rposition(|(r, _, _)| matches!(r, ArchiveRecord::Mark { .. }))
                    .map_or(0, |p| p + 1)
            } else {
                records.len()
            };
            let mut summary = SegmentSummary {
                number: *n,
                ..SegmentSummary::default()
            };
            let mut entries = BTreeSet::new();
            for (r, off, len) in &records[..keep] {
                summary.add(r, *len);
                entries.extend(index_entries(r, *off));
            }
            if i == last {
                if summary.bytes != end || bad.is_some() || (data.len() as u64) != end {
                    tracing::warn!(segment = %arc.display(), kept = summary.bytes,
                        found = data.len(), "archive: torn tail truncated");
                }
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(&arc)
                    .map_err(|e| io_err(&arc, e))?;
                f.set_len(summary.bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| io_err(&arc, e))?;
                segments.push(Segment {
                    summary,
                    entries: Some(entries),
                });
            } else {
                // A sealed segment without its index (a crash while rolling, or an index of an
                // older version): write it now.
                let summary = sealed(summary, &entries);
                write_atomic(&dir, &idx, &encode_idx(&summary, &entries))?;
                segments.push(Segment {
                    summary,
                    entries: None,
                });
            }
        }
        sync_dir(&dir)?;
        let n = segments.last().map_or(1, |s| s.summary.number);
        let arc = seg_path(&dir, n, "arc");
        let active = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&arc)
            .map_err(|e| io_err(&arc, e))?;
        let mark = segments
            .iter()
            .rev()
            .find_map(|s| s.summary.mark)
            .or(expired.mark);
        let last_key = segments
            .iter()
            .rev()
            .find_map(|s| s.summary.keys.map(|(_, k)| k))
            .or(expired.key);
        let mut a = Archive {
            dir,
            segment_bytes: segment_bytes.max(1),
            retention_ms,
            segments,
            active,
            expired,
            mark,
            last_key,
            index_reads: Default::default(),
            below: None,
            floor: None,
        };
        a.expire(now_ms)?;
        Ok(a)
    }

    /// Reads the complete history below this region's bootstrap snapshot from `below` (the
    /// backfill's archive) before this one: lookups, pages and the feed span both, and a
    /// peer's backfill is served from both.
    pub fn set_below(&mut self, below: Archive) {
        self.below = Some(Box::new(below));
        self.floor = None;
    }

    /// A backfill of the history below `at` is under way: serve no peer below it.
    pub fn set_floor(&mut self, at: Hlc) {
        if self.below.is_none() {
            self.floor = Some(at);
        }
    }

    /// Does this archive (with what lies below it) hold the history from the start?
    pub fn from_start(&self) -> bool {
        self.floor.is_none()
    }

    /// The archive parts, oldest first: the backfilled history, then this region's own.
    fn parts(&self) -> impl Iterator<Item = &Archive> {
        self.below
            .as_deref()
            .into_iter()
            .chain(std::iter::once(self))
    }

    /// At most about `max_bytes` of archived records (as stored: CRC-32 and payload) whose
    /// entry keys follow `after`, at or below `at`, in entry-key order, for a peer's
    /// backfill ([`crate::backfill`]); `done` when nothing more at or below `at` is held.
    /// None when this archive cannot serve from `after`: retention deleted part of it, or it
    /// lacks the history below its own bootstrap snapshot.
    pub fn records_after(
        &self,
        after: Option<EntryKey>,
        at: Hlc,
        max_bytes: usize,
    ) -> Result<Option<Served>, ArchiveError> {
        if self.floor.is_some() {
            return Ok(None);
        }
        for p in self.parts() {
            if let Some(top) = p.expired.key {
                if after.is_none_or(|k| k < top) {
                    return Ok(None);
                }
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for p in self.parts() {
            for (i, s) in p.segments.iter().enumerate() {
                match (s.summary.keys, after) {
                    (None, _) => continue,
                    (Some((_, last)), Some(a)) if last <= a => continue,
                    _ => {}
                }
                // Read from the record `after` when this segment holds it (found through
                // the index), frame by frame: a chunk costs its own bytes, not a segment's.
                let mut off = match (s.summary.keys, after) {
                    (Some((first, _)), Some(a)) if first <= a => p.offset_of(i, a)?.unwrap_or(0),
                    _ => 0,
                };
                let path = seg_path(&p.dir, s.summary.number, "arc");
                let f = File::open(&path).map_err(|e| io_err(&path, e))?;
                while off < s.summary.bytes {
                    let (r, crc, payload) = read_frame(&f, &path, off)?;
                    off += (FRAME_HEAD + payload.len()) as u64;
                    let Some(k) = r.entry_key() else { continue };
                    if after.is_some_and(|a| k <= a) {
                        continue;
                    }
                    if k.0 .0 > at {
                        return Ok(Some((out, true)));
                    }
                    bytes += FRAME_HEAD + payload.len();
                    out.push((crc, payload));
                    if bytes >= max_bytes {
                        return Ok(Some((out, false)));
                    }
                }
            }
        }
        Ok(Some((out, true)))
    }

    /// The archive's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last compaction archived: (snapshot point, feed length). Everything at or below
    /// the point, and the feed below the length, is archived (or expired).
    pub fn mark(&self) -> Option<(Hlc, u64)> {
        self.mark
            .or_else(|| self.below.as_ref().and_then(|b| b.mark()))
    }

    /// The last entry key archived: a batch holds only what follows it.
    pub fn last_key(&self) -> Option<EntryKey> {
        self.last_key
            .or_else(|| self.below.as_ref().and_then(|b| b.last_key()))
    }

    /// What retention deleted.
    pub fn expired(&self) -> Expired {
        let mut x = self.expired.clone();
        if let Some(b) = &self.below {
            x.merge(&b.expired());
        }
        x
    }

    /// Records `x` as deleted (a backfill that starts where its peers' retention ended:
    /// reads below answer 410 `archived_expired`, as on those peers).
    pub fn skip_to(&mut self, x: &Expired) -> Result<(), ArchiveError> {
        self.expired.merge(x);
        self.write_expired()?;
        if let Some(k) = x.key {
            self.last_key = Some(self.last_key.map_or(k, |l| l.max(k)));
        }
        Ok(())
    }

    fn write_expired(&self) -> Result<(), ArchiveError> {
        let body = encode_value(&self.expired);
        let mut b = crc32fast::hash(&body).to_le_bytes().to_vec();
        b.extend_from_slice(&body);
        write_atomic(&self.dir, &self.dir.join(EXPIRED_FILE), &b)
    }

    /// Bytes of records held, over every segment.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.summary.bytes).sum()
    }

    /// Records held (marks included), over every segment.
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.summary.records).sum()
    }

    /// Segments held.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Sealed segments' indexes read by lookups so far.
    pub fn index_reads(&self) -> u64 {
        self.index_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn active_path(&self) -> PathBuf {
        seg_path(&self.dir, self.active_summary().number, "arc")
    }

    fn active_summary(&self) -> &SegmentSummary {
        // `open` always leaves an active segment.
        &self.segments[self.segments.len() - 1].summary
    }

    /// Appends one compaction's batch (records in entry-key order, then a mark at `at`,
    /// `feed_len`) and makes it durable before returning. On an error nothing is folded
    /// (the caller does not compact) and the partial batch is dropped at the next open.
    pub fn append(
        &mut self,
        records: &[ArchiveRecord],
        at: Hlc,
        feed_len: u64,
    ) -> Result<(), ArchiveError> {
        if self.active_summary().bytes >= self.segment_bytes {
            self.roll()?;
        }
        let mark = ArchiveRecord::Mark { at, feed_len };
        let mut buf = Vec::new();
        let mut frames = Vec::with_capacity(records.len() + 1);
        for r in records.iter().chain(std::iter::once(&mark)) {
            let start = buf.len();
            push_frame(&mut buf, |b| b.extend_from_slice(&encode_value(r)))
                .map_err(|e| io_err(&self.active_path(), e))?;
            frames.push((r, start as u64, (buf.len() - start) as u64));
        }
        let base = self.active_summary().bytes;
        let path = self.active_path();
        self.active
            .write_all_at(&buf, base)
            .and_then(|()| self.active.sync_data())
            .map_err(|e| io_err(&path, e))?;
        let seg = self
            .segments
            .last_mut()
            .ok_or_else(|| io_err(&path, "no active segment"))?;
        for (r, off, len) in frames {
            seg.summary.add(r, len);
            if let Some(e) = seg.entries.as_mut() {
                e.extend(index_entries(r, base + off));
            }
            if let Some(k) = r.entry_key() {
                self.last_key = Some(k);
            }
        }
        self.mark = Some((at, feed_len));
        Ok(())
    }

    /// Seals the active segment (its index to `.idx`) and starts the next.
    fn roll(&mut self) -> Result<(), ArchiveError> {
        let Some(seg) = self.segments.last_mut() else {
            return Ok(());
        };
        let n = seg.summary.number;
        let entries = seg.entries.take().unwrap_or_default();
        seg.summary = sealed(std::mem::take(&mut seg.summary), &entries);
        let idx = seg_path(&self.dir, n, "idx");
        write_atomic(&self.dir, &idx, &encode_idx(&seg.summary, &entries))?;
        let next = seg_path(&self.dir, n + 1, "arc");
        self.active = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&next)
            .map_err(|e| io_err(&next, e))?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            summary: SegmentSummary {
                number: n + 1,
                ..SegmentSummary::default()
            },
            entries: Some(BTreeSet::new()),
        });
        Ok(())
    }

    /// Deletes the oldest sealed segments whose newest event is older than the retention
    /// at `now_ms` (whole segments, oldest first; never the active one), recording what
    /// they held in [`Expired`] first. Returns how many were deleted.
    pub fn expire(&mut self, now_ms: u64) -> Result<usize, ArchiveError> {
        let Some(keep_ms) = self.retention_ms else {
            return Ok(0);
        };
        let mut n = 0;
        while self.segments.len() > 1
            && self.segments[0].summary.newest_ms.saturating_add(keep_ms) < now_ms
        {
            let s = self.segments.remove(0).summary;
            self.expired.absorb(&s);
            self.write_expired()?;
            for ext in ["arc", "idx"] {
                let p = seg_path(&self.dir, s.number, ext);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&p, e)),
                }
            }
            n += 1;
        }
        if n > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(n)
    }

    /// Reads the record at `offset` of segment `number`.
    fn read_at(&self, number: u64, offset: u64) -> Result<ArchiveRecord, ArchiveError> {
        let path = seg_path(&self.dir, number, "arc");
        let f = File::open(&path).map_err(|e| io_err(&path, e))?;
        read_frame(&f, &path, offset).map(|(r, _, _)| r)
    }

    /// The offset of the record with entry key `key` in segment `i`, found through its
    /// index (the event `origin:seq` of the key: a compensation follows its cause in
    /// the same batch), if it is there.
    fn offset_of(&self, i: usize, key: EntryKey) -> Result<Option<u64>, ArchiveError> {
        let ((_, origin, seq), _) = key;
        let h = fnv(&format!("{origin}:{seq}"));
        let number = self.segments[i].summary.number;
        for off in self.lookup(i, KIND_ID, h, h)? {
            if self.read_at(number, off)?.entry_key() == Some((key.0, 0)) {
                return Ok(Some(off));
            }
        }
        Ok(None)
    }
}

/// The frame at `offset` of an open segment file: its record, CRC-32 and payload.
fn read_frame(
    f: &File,
    path: &Path,
    offset: u64,
) -> Result<(ArchiveRecord, u32, Vec<u8>), ArchiveError> {
    let mut head = [0u8; FRAME_HEAD];
    f.read_exact_at(&mut head, offset)
        .map_err(|e| io_err(path, e))?;
    let len = [head[0], head[1], head[2], head[3]];
    let n = u32::from_le_bytes(len) as usize;
    if n == 0 || n > RECORD_BYTES_MAX {
        return Err(corrupt(path, format!("bad frame length at byte {offset}")));
    }
    let mut payload = vec![0u8; n];
    f.read_exact_at(&mut payload, offset + FRAME_HEAD as u64)
        .map_err(|e| io_err(path, e))?;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if crc != frame_crc(len, &payload) {
        return Err(corrupt(path, format!("CRC-32 mismatch at byte {offset}")));
    }
    let r = decode_value(&payload).map_err(|e| corrupt(path, e.to_string()))?;
    Ok((r, crc, payload))
}

impl Archive {
    /// Offsets of the index entries of `kind` with value in `lo..=hi` in segment `i`, in
    /// (value, offset) order.
    fn lookup(&self, i: usize, kind: u8, lo: u64, hi: u64) -> Result<Vec<u64>, ArchiveError> {
        let seg = &self.segments[i];
        if let Some(e) = &seg.entries {
            return Ok(e
                .range((kind, lo, 0)..=(kind, hi, u64::MAX))
                .map(|(_, _, o)| *o)
                .collect());
        }
        let path = seg_path(&self.dir, seg.summary.number, "idx");
        self.index_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (_, start) = read_idx_head(&path)?;
        let f = File::open(&path).map_err(|e| io_err(&path, e))?;
        let len = f.metadata().map_err(|e| io_err(&path, e))?.len();
        let count = len.saturating_sub(start) / IDX_ENTRY_BYTES as u64;
        let entry = |j: u64| -> Result<(u8, u64, u64), ArchiveError> {
            let mut b = [0u8; IDX_ENTRY_BYTES];
            f.read_exact_at(&mut b, start + j * IDX_ENTRY_BYTES as u64)
                .map_err(|e| io_err(&path, e))?;
            let v = u64::from_be_bytes(b[1..9].try_into().unwrap_or([0; 8]));
            let o = u64::from_be_bytes(b[9..17].try_into().unwrap_or([0; 8]));
            Ok((b[0], v, o))
        };
        // The first entry at or above (kind, lo).
        let (mut a, mut b) = (0u64, count);
        while a < b {
            let m = a + (b - a) / 2;
            let (k, v, _) = entry(m)?;
            if (k, v) < (kind, lo) {
                a = m + 1;
            } else {
                b = m;
            }
        }
        let mut out = Vec::new();
        while a < count {
            let (k, v, o) = entry(a)?;
            if (k, v) > (kind, hi) {
                break;
            }
            out.push(o);
            a += 1;
        }
        Ok(out)
    }

    /// The archived event or compensation with this id (`eu:12`, `fee:eu:12`), filed under
    /// `origin:seq` (the event's, or the compensation's cause).
    pub fn find(
        &self,
        id: &str,
        origin: RegionId,
        seq: u64,
    ) -> Result<Option<ArchiveRecord>, ArchiveError> {
        for p in self.parts() {
            if let Some(r) = p.find_here(id, origin, seq)? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    fn find_here(
        &self,
        id: &str,
        origin: RegionId,
        seq: u64,
    ) -> Result<Option<ArchiveRecord>, ArchiveError> {
        let h = fnv(id);
        for (i, s) in self.segments.iter().enumerate() {
            if !s.summary.holds_seq(origin, seq) {
                continue;
            }
            for off in self.lookup(i, KIND_ID, h, h)? {
                let r = self.read_at(s.summary.number, off)?;
                if r.id().is_some_and(|(rid, _, _)| rid == id) {
                    return Ok(Some(r));
                }
            }
        }
        Ok(None)
    }

    /// At most `limit` records of an account's history after `after`, in entry-key order.
    pub fn account_page(
        &self,
        account: &str,
        after: Option<EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, ArchiveRecord)>, ArchiveError> {
        let mut out = Vec::new();
        for p in self.parts() {
            if out.len() >= limit {
                break;
            }
            out.extend(p.account_page_here(account, after, limit - out.len())?);
        }
        Ok(out)
    }

    fn account_page_here(
        &self,
        account: &str,
        after: Option<EntryKey>,
        limit: usize,
    ) -> Result<Vec<(EntryKey, ArchiveRecord)>, ArchiveError> {
        let h = fnv(account);
        let mut out = Vec::new();
        for (i, s) in self.segments.iter().enumerate() {
            if out.len() >= limit {
                break;
            }
            match (s.summary.keys, after) {
                (None, _) => continue,
                (Some((_, last)), Some(a)) if last <= a => continue,
                _ => {}
            }
            if s.summary.accounts.as_ref().is_some_and(|f| !f.may_hold(h)) {
                continue;
            }
            let mut offs = self.lookup(i, KIND_ACCOUNT, h, h)?;
            // One account's entries in file order, which is entry-key order.
            offs.sort_unstable();
            for off in offs {
                let r = self.read_at(s.summary.number, off)?;
                let Some(k) = r.entry_key() else { continue };
                if r.account() != Some(account) || after.is_some_and(|a| k <= a) {
                    continue;
                }
                out.push((k, r));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// At most `limit` compensations of the feed from position `from`, in feed order,
    /// stopping at the first position the archive does not hold.
    pub fn feed_page(&self, from: u64, limit: usize) -> Result<Vec<Compensation>, ArchiveError> {
        let mut out: Vec<Compensation> = Vec::new();
        for p in self.parts() {
            if out.len() >= limit {
                break;
            }
            let next = out.last().map_or(from, |c| c.position + 1);
            out.extend(p.feed_page_here(next, limit - out.len())?);
        }
        Ok(out)
    }

    fn feed_page_here(&self, from: u64, limit: usize) -> Result<Vec<Compensation>, ArchiveError> {
        let mut out: Vec<Compensation> = Vec::new();
        let mut next = from;
        for (i, s) in self.segments.iter().enumerate() {
            let Some((lo, hi)) = s.summary.feed else {
                continue;
            };
            if hi < next || out.len() >= limit {
                continue;
            }
            if lo > next {
                break;
            }
            for off in self.lookup(i, KIND_FEED, next, hi)? {
                if let ArchiveRecord::Comp(c) = self.read_at(s.summary.number, off)? {
                    if c.position != next {
                        return Ok(out);
                    }
                    next += 1;
                    out.push(c);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_core::{AccountId, CompKind, Currency, EventId};

    fn region(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    /// A folded deposit `origin:seq` at HLC ms `ms` on `account`, with its final status.
    fn ev(origin: &str, seq: u64, ms: u64, account: &str) -> ArchiveRecord {
        let e = Event {
            id: EventId {
                origin: region(origin),
                seq,
            },
            hlc: Hlc::from_millis(ms),
            body: wallet_core::Body::Tx(wallet_core::Tx {
                account: AccountId::new(account).unwrap(),
                kind: wallet_core::Kind::Deposit,
                amount: wallet_core::Amount::parse("1.00", Currency::USD).unwrap(),
                currency: Currency::USD,
                idempotency_key: None,
                reference: None,
            }),
            sig: Box::new([]),
        };
        ArchiveRecord::Event {
            event: e,
            status: STATUS_SETTLED,
            comp: None,
        }
    }

    fn fee(origin: &str, seq: u64, ms: u64, account: &str, position: u64) -> ArchiveRecord {
        ArchiveRecord::Comp(Compensation {
            kind: CompKind::OverdraftFee,
            cause: EventId {
                origin: region(origin),
                seq,
            },
            hlc: Hlc::from_millis(ms),
            account: AccountId::new(account).unwrap(),
            currency: Currency::USD,
            delta: rust_decimal::Decimal::new(-100, 2),
            policy_version: 1,
            position,
            related: None,
        })
    }

    /// Batch `b` (0-based) of 10 events on two accounts and a fee on the last: HLC ms
    /// 100·b + i.
    fn batch(b: u64) -> (Vec<ArchiveRecord>, Hlc) {
        let mut v: Vec<ArchiveRecord> = (0..10)
            .map(|i| {
                let acct = if i % 2 == 0 { "alice" } else { "bob" };
                ev("eu", b * 10 + i + 1, 100 * b + i + 1, acct)
            })
            .collect();
        v.push(fee("eu", b * 10 + 10, 100 * b + 10, "bob", b));
        (v, Hlc::from_millis(100 * b + 10))
    }

    fn fill(a: &mut Archive, batches: std::ops::Range<u64>) {
        for b in batches {
            let (v, at) = batch(b);
            a.append(&v, at, b + 1).unwrap();
        }
    }

    #[test]
    fn lookups_and_paging_span_rolled_segments_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        // A tiny segment size: one batch per segment.
        let mut a = Archive::open(dir.path(), 1, None, 0).unwrap();
        fill(&mut a, 0..5);
        assert_eq!(a.segments(), 5);
        for reopen in [false, true] {
            if reopen {
                a = Archive::open(dir.path(), 1, None, 0).unwrap();
                assert_eq!(a.segments(), 5);
            }
            let r = a.find("eu:23", region("eu"), 23).unwrap().unwrap();
            assert_eq!(r, ev("eu", 23, 203, "alice"));
            assert_eq!(a.find("eu:99", region("eu"), 99).unwrap(), None);
            let f = a.find("fee:eu:30", region("eu"), 30).unwrap().unwrap();
            assert_eq!(f, fee("eu", 30, 210, "bob", 2));
            // Alice's 25 events, paged 7 at a time, in order, across segments.
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = a.account_page("alice", after, 7).unwrap();
                if page.is_empty() {
                    break;
                }
                after = page.last().map(|(k, _)| *k);
                seen.extend(page.into_iter().map(|(k, _)| k));
            }
            assert_eq!(seen.len(), 25);
            assert!(seen.windows(2).all(|w| w[0] < w[1]));
            // Bob's history has its fees right after their causes.
            let bob = a.account_page("bob", None, 100).unwrap();
            assert_eq!(bob.len(), 30);
            assert!(matches!(bob[5].1, ArchiveRecord::Comp(_)));
            let feed = a.feed_page(1, 3).unwrap();
            let pos: Vec<u64> = feed.iter().map(|c| c.position).collect();
            assert_eq!(pos, vec![1, 2, 3]);
            assert_eq!(a.feed_page(5, 3).unwrap(), vec![]);
            assert_eq!(a.mark(), Some((Hlc::from_millis(410), 5)));
        }
    }

    #[test]
    fn an_account_page_reads_only_the_indexes_of_segments_holding_the_account() {
        let dir = tempfile::tempdir().unwrap();
        // One batch per segment; batch b holds accounts `a{b}-0` and `a{b}-1` only.
        let mut a = Archive::open(dir.path(), 1, None, 0).unwrap();
        for b in 0..40u64 {
            let v: Vec<ArchiveRecord> = (0..10)
                .map(|i| {
                    ev(
                        "eu",
                        b * 10 + i + 1,
                        100 * b + i + 1,
                        &format!("a{b}-{}", i % 2),
                    )
                })
                .collect();
            a.append(&v, Hlc::from_millis(100 * b + 10), 0).unwrap();
        }
        assert_eq!(a.segments(), 40);
        let check = |a: &Archive| {
            for b in [0u64, 7, 38] {
                let before = a.index_reads();
                let page = a.account_page(&format!("a{b}-1"), None, 100).unwrap();
                assert_eq!(page.len(), 5);
                // Its own segment, and at most one false positive of the filter.
                let reads = a.index_reads() - before;
                assert!(
                    (1..=2).contains(&reads),
                    "{reads} indexes read for one account"
                );
            }
            let before = a.index_reads();
            assert!(a.account_page("nobody", None, 100).unwrap().is_empty());
            assert!(a.index_reads() - before <= 1);
        };
        check(&a);
        // The filters are in the `.idx` files: a reopen reads them back.
        drop(a);
        let a = Archive::open(dir.path(), 1, None, 0).unwrap();
        check(&a);
        // An index of the older version (no filter) is rebuilt from its segment on open.
        let idx = seg_path(a.dir(), 7, "idx");
        drop(a);
        let mut b = std::fs::read(&idx).unwrap();
        b[..8].copy_from_slice(b"WALARCIX");
        std::fs::write(&idx, &b).unwrap();
        let a = Archive::open(dir.path(), 1, None, 0).unwrap();
        assert_eq!(&std::fs::read(&idx).unwrap()[..8], IDX_MAGIC);
        check(&a);
    }

    #[test]
    fn a_torn_tail_and_a_cut_batch_are_truncated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Archive::open(dir.path(), SEGMENT_BYTES_DEFAULT, None, 0).unwrap();
        fill(&mut a, 0..2);
        let whole = a.bytes();
        let path = a.active_path();
        drop(a);
        // A third batch cut before its mark, then half a frame.
        let mut cut = Vec::new();
        let (v, _) = batch(2);
        for r in &v[..4] {
            push_frame(&mut cut, |b| b.extend_from_slice(&encode_value(r))).unwrap();
        }
        let mut data = std::fs::read(&path).unwrap();
        data.extend_from_slice(&cut);
        data.extend_from_slice(&cut[..cut.len() / 3]);
        std::fs::write(&path, &data).unwrap();
        let mut a = Archive::open(dir.path(), SEGMENT_BYTES_DEFAULT, None, 0).unwrap();
        assert_eq!(a.bytes(), whole);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        assert_eq!(a.find("eu:21", region("eu"), 21).unwrap(), None);
        assert_eq!(a.last_key(), batch(1).0.last().and_then(|r| r.entry_key()));
        // The batch is written again by the next compaction, whole.
        fill(&mut a, 2..3);
        assert!(a.find("eu:21", region("eu"), 21).unwrap().is_some());
        // A flipped byte inside a complete batch of the last segment is a torn tail too
        // (it cannot be told from a torn write): the batch goes, the earlier ones stay.
        let mut data = std::fs::read(&path).unwrap();
        let n = data.len();
        data[n - 20] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let a = Archive::open(dir.path(), SEGMENT_BYTES_DEFAULT, None, 0).unwrap();
        assert_eq!(a.bytes(), whole);
    }

    #[test]
    fn damage_to_a_sealed_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Archive::open(dir.path(), 1, None, 0).unwrap();
        fill(&mut a, 0..3);
        let first = seg_path(a.dir(), 1, "arc");
        let idx = seg_path(a.dir(), 1, "idx");
        drop(a);
        let mut data = std::fs::read(&first).unwrap();
        data[30] ^= 0xff;
        std::fs::write(&first, &data).unwrap();
        // Its index is gone too, so the segment is scanned.
        std::fs::remove_file(&idx).unwrap();
        let e = Archive::open(dir.path(), 1, None, 0).unwrap_err();
        assert!(e.to_string().contains("sealed segment"), "{e}");
    }

    #[test]
    fn retention_deletes_whole_old_segments_and_remembers_them() {
        let dir = tempfile::tempdir().unwrap();
        let day = 86_400_000;
        let mut a = Archive::open(dir.path(), 1, Some(day), 0).unwrap();
        fill(&mut a, 0..4);
        // Segments' newest events: 10, 110, 210, 310 ms. At day + 150 the first two go.
        assert_eq!(a.expire(day + 150).unwrap(), 2);
        assert_eq!(a.segments(), 2);
        assert!(!seg_path(a.dir(), 1, "arc").exists());
        assert!(a.expired().seq(region("eu"), 20));
        assert!(!a.expired().seq(region("eu"), 21));
        assert_eq!(a.expired().feed_end, 2);
        assert_eq!(a.find("eu:5", region("eu"), 5).unwrap(), None);
        // The active segment is never deleted, and a reopen remembers.
        let a = Archive::open(dir.path(), 1, Some(day), 10 * day).unwrap();
        assert_eq!(a.segments(), 1);
        assert!(a.expired().seq(region("eu"), 30));
        assert_eq!(a.last_key(), batch(3).0.last().and_then(|r| r.entry_key()));
        assert_eq!(a.mark(), Some((Hlc::from_millis(310), 4)));
        // A batch cut by a crash in a fresh segment, after the segments with marks expired:
        // the mark is still known (the next batch's feed starts after it).
        let mut a = a;
        a.roll().unwrap();
        let (v, at) = batch(4);
        a.append(&v, at, 5).unwrap();
        assert_eq!(a.expire(20 * day).unwrap(), 1);
        let path = a.active_path();
        drop(a);
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..data.len() - 10]).unwrap();
        let a = Archive::open(dir.path(), 1, Some(day), 20 * day).unwrap();
        assert_eq!(a.bytes(), 0);
        assert_eq!(a.mark(), Some((Hlc::from_millis(310), 4)));
        // No retention: nothing goes.
        let dir = tempfile::tempdir().unwrap();
        let mut a = Archive::open(dir.path(), 1, None, 0).unwrap();
        fill(&mut a, 0..4);
        assert_eq!(a.expire(100 * day).unwrap(), 0);
    }
}
