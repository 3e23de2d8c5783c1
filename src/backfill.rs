//! Archive backfill (issue 13): a region bootstrapped from a peer's snapshot (a new region,
//! or one rebuilt after its data dir was lost) holds no archive below that snapshot. It
//! fetches that history from its peers over libp2p, in the background, and keeps it in
//! `<data_dir>/archive/below/`, an archive of its own ([`Archive`]), which reads consult
//! before this region's archive once it is complete (docs/protocol.md §11, *Backfill*;
//! docs/operations.md, "Archive backfill").
//!
//! ```text
//! <data_dir>/archive/below/target      the bootstrap snapshot's point, feed length, seqs
//! <data_dir>/archive/below/seg-*.arc   the records fetched, one batch (and mark) per chunk
//! <data_dir>/archive/below/complete    written once every record below the point is in
//! ```
//!
//! - **Unit**: archived records in entry-key order (the order of every archive, whatever
//!   its segment boundaries), `after` a key, at or below the snapshot point, about
//!   [`CHUNK_BYTES`] a chunk ([`BackfillMsg`], inside [`Message::Archive`]). The receiver
//!   re-frames them in its own segments.
//! - **Verified** ([`Checker`]): each record's CRC-32, then its decoding; keys strictly
//!   increase and stay at or below the point; every event passes its validation and its
//!   origin's signature with the key valid at its HLC (the joins and rotations met on the way
//!   bind keys, as a replica's load does), each origin's seqs strictly increase up to the
//!   snapshot's; compensations lie below the snapshot's feed length. Statuses and
//!   compensations are a member's word (an authenticated, allowlisted peer): they are not
//!   signed, and are the ones the sender's region derived.
//! - **Complete** when each origin of the snapshot reached its seq there and the
//!   compensations counted reach its feed length.
//! - **Peers**: tried in turn; one that lacks the range ([`BackfillMsg::Missing`]: its
//!   retention deleted it, or it is itself still backfilling), stops short of completion, or
//!   does not answer in time is tried again after the others (with a growing pause); one
//!   that sent a record that does not verify is tried no more. What no peer holds stays
//!   missing, and reads of it answer 410 `compacted` as before.
//! - **Bounded and resumable**: one chunk in memory at a time; each chunk is appended and
//!   made durable as a batch, so a restart resumes after the last whole chunk (the archive
//!   truncates a torn one).
//! - **Never blocks payments**: the fetch runs on its own thread; serving a peer runs on the
//!   archive's thread ([`crate::archiver`]); the actor only routes messages.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wallet_core::wire::{decode_value, encode_value};
use wallet_core::{Authenticator, Change, EntryKey, Hlc, Message, RegionId, Snapshot};

use crate::archive::{
    Archive, ArchiveError, ArchiveRecord, Expired, STATUS_REVERSED, STATUS_SETTLED,
};
use crate::archiver::Archiver;

/// The backfill's directory inside the archive's.
pub const BELOW_DIR: &str = "below";
const TARGET_FILE: &str = "target";
const COMPLETE_FILE: &str = "complete";
/// Bytes of records a chunk carries at most (about).
pub const CHUNK_BYTES: usize = 256 << 10;
/// How long a peer has to answer one chunk request.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after every peer was tried without progress doubles up to this.
pub const PAUSE_MAX: Duration = Duration::from_secs(30);
const PAUSE_MIN: Duration = Duration::from_millis(500);
/// Answers queued for the fetch thread at most.
const ANSWERS_QUEUED_MAX: usize = 4;

/// The backfill's directory under the archive directory.
pub fn below_dir(archive_dir: &Path) -> PathBuf {
    archive_dir.join(BELOW_DIR)
}

/// What the backfill must fetch: everything the bootstrap snapshot folds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// The snapshot point.
    pub at: Hlc,
    /// Feed positions below it.
    pub feed_len: u64,
    /// Each member's last seq it folds.
    pub seqs: Vec<(RegionId, u64)>,
}

/// Where the backfill of an archive directory stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BelowState {
    /// None started.
    None,
    /// Under way, below this point.
    Pending(Hlc),
    /// Complete.
    Complete,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes `bytes` (CRC-32 first) to `path` atomically.
fn write_file(dir: &Path, path: &Path, body: &[u8]) -> Result<(), ArchiveError> {
    let mut b = crc32fast::hash(body).to_le_bytes().to_vec();
    b.extend_from_slice(body);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &b)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

impl Target {
    /// What `snap` folds.
    pub fn of(snap: &Snapshot) -> Target {
        Target {
            at: snap.body.at,
            feed_len: snap.body.feed_len,
            seqs: snap.body.seqs().collect(),
        }
    }

    /// Records the target (durable) in `archive_dir/below/`.
    pub fn write(&self, archive_dir: &Path) -> Result<(), ArchiveError> {
        let dir = below_dir(archive_dir);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        write_file(&dir, &dir.join(TARGET_FILE), &encode_value(self))
    }

    /// The recorded target, if any.
    pub fn read(archive_dir: &Path) -> Result<Option<Target>, ArchiveError> {
        let path = below_dir(archive_dir).join(TARGET_FILE);
        let b = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, e)),
        };
        let (crc, body) = b.split_at(b.len().min(4));
        if crc != crc32fast::hash(body).to_le_bytes() {
            return Err(ArchiveError::Corrupt {
                path: path.display().to_string(),
                what: "CRC-32 mismatch".into(),
            });
        }
        decode_value(body)
            .map(Some)
            .map_err(|e| ArchiveError::Corrupt {
                path: path.display().to_string(),
                what: e.to_string(),
            })
    }

    /// Where the backfill of `archive_dir` stands.
    pub fn state(archive_dir: &Path) -> Result<BelowState, ArchiveError> {
        if below_dir(archive_dir).join(COMPLETE_FILE).exists() {
            return Ok(BelowState::Complete);
        }
        Ok(Target::read(archive_dir)?.map_or(BelowState::None, |t| BelowState::Pending(t.at)))
    }
}

/// The backfill's messages (inside [`Message::Archive`], versioned postcard).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BackfillMsg {
    /// "Send me your archived records after `after`, at or below `at`, about `max_bytes`."
    Want {
        /// The requester's snapshot point.
        at: Hlc,
        /// The last entry key it holds (None: from the start).
        after: Option<EntryKey>,
        /// Bytes it takes at most (the answerer caps it at [`CHUNK_BYTES`]).
        max_bytes: u32,
    },
    /// The answer: records as archived (CRC-32 of length ‖ payload, and the payload), in
    /// entry-key order; `done` when the answerer holds nothing more at or below `at`.
    Chunk {
        /// The request's `after`.
        after: Option<EntryKey>,
        /// The records.
        frames: Vec<(u32, Vec<u8>)>,
        /// Nothing more.
        done: bool,
    },
    /// The answerer cannot serve from `after` (retention deleted it, or it is itself still
    /// backfilling below it, or it has no archive).
    Missing {
        /// The request's `after`.
        after: Option<EntryKey>,
        /// What its retention deleted, when that is why: the requester may start above it.
        expired: Option<Expired>,
    },
}

impl BackfillMsg {
    /// The message on the wire.
    pub fn to_message(&self) -> Message {
        Message::Archive(encode_value(self))
    }

    fn after(&self) -> Option<EntryKey> {
        match self {
            BackfillMsg::Want { after, .. }
            | BackfillMsg::Chunk { after, .. }
            | BackfillMsg::Missing { after, .. } => *after,
        }
    }
}

/// A peer's request answered from `a` (on the archive's thread).
pub fn serve(a: &Archive, at: Hlc, after: Option<EntryKey>, max_bytes: u32) -> BackfillMsg {
    let max = (max_bytes as usize).clamp(1, CHUNK_BYTES);
    match a.records_after(after, at, max) {
        Ok(Some((frames, done))) => BackfillMsg::Chunk {
            after,
            frames,
            done,
        },
        // Retention deleted what follows `after` (an archive still backfilling itself says
        // only that it lacks it).
        Ok(None) => BackfillMsg::Missing {
            after,
            expired: Some(a.expired())
                .filter(|x| a.from_start() && x.key.is_some_and(|k| after.is_none_or(|a| a < k))),
        },
        Err(e) => {
            tracing::error!(error = %e, "archive read for a peer's backfill failed");
            BackfillMsg::Missing {
                after,
                expired: None,
            }
        }
    }
}

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("backfill record {index}: {why}")]
pub struct Refused {
    /// The record's place in the chunk.
    pub index: usize,
    /// What is wrong.
    pub why: String,
}

/// Verifies chunks in order and tracks how far the backfill is.
pub struct Checker {
    target: Target,
    auth: Box<dyn Authenticator>,
    cluster: String,
    last_key: Option<EntryKey>,
    /// Per origin, the highest seq held.
    tops: BTreeMap<RegionId, u64>,
    /// Compensations held.
    comps: u64,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("target", &self.target)
            .field("last_key", &self.last_key)
            .field("tops", &self.tops)
            .field("comps", &self.comps)
            .finish()
    }
}

impl Checker {
    /// A checker at the start, verifying with `auth` (the cluster's configured keys).
    pub fn new(target: Target, auth: Box<dyn Authenticator>, cluster: &str) -> Checker {
        Checker {
            target,
            auth,
            cluster: cluster.to_string(),
            last_key: None,
            tops: BTreeMap::new(),
            comps: 0,
        }
    }

    /// Resumes after what `staging` holds (read back in chunks: keys bound on the way).
    pub fn resume(
        target: Target,
        auth: Box<dyn Authenticator>,
        cluster: &str,
        staging: &Archive,
    ) -> Result<Checker, ArchiveError> {
        let mut c = Checker::new(target, auth, cluster);
        c.skip(&staging.expired());
        while let Some((frames, done)) = staging.records_after(c.last_key, c.target.at, 1 << 20)? {
            let mut n = 0;
            for r in frames
                .iter()
                .filter_map(|(_, p)| decode_value::<ArchiveRecord>(p).ok())
            {
                n += 1;
                c.note(&r);
            }
            if done || n == 0 {
                break;
            }
        }
        Ok(c)
    }

    /// Takes a verified record into account.
    fn note(&mut self, r: &ArchiveRecord) {
        self.last_key = r.entry_key().or(self.last_key);
        match r {
            ArchiveRecord::Event { event, .. } => {
                self.tops.insert(event.id.origin, event.id.seq);
                match event.change() {
                    Some(Change::Join { region, key, .. }) => {
                        self.auth.set_key(*region, event.hlc, key)
                    }
                    Some(Change::RotateKey { key }) => {
                        self.auth.set_key(event.id.origin, event.hlc, key)
                    }
                    _ => {}
                }
            }
            ArchiveRecord::Comp(_) => self.comps += 1,
            ArchiveRecord::Mark { .. } => {}
        }
    }

    /// Starts above what a peer's retention deleted (`x`): its last key, its seqs and its
    /// feed count as held (reads of them answer 410 `archived_expired`).
    pub fn skip(&mut self, x: &Expired) {
        if let Some(k) = x.key {
            self.last_key = Some(self.last_key.map_or(k, |l| l.max(k)));
        }
        for (o, hi) in &x.seqs {
            let t = self.tops.entry(*o).or_insert(0);
            *t = (*t).max(*hi);
        }
        self.comps = self.comps.max(x.feed_end);
    }

    /// The last entry key verified.
    pub fn last_key(&self) -> Option<EntryKey> {
        self.last_key
    }

    /// Compensations verified.
    pub fn comps(&self) -> u64 {
        self.comps
    }

    /// Is everything below the snapshot in?
    pub fn complete(&self) -> bool {
        self.comps >= self.target.feed_len
            && self
                .target
                .seqs
                .iter()
                .all(|(o, s)| self.tops.get(o).copied().unwrap_or(0) >= *s)
    }

    fn check_one(&self, crc: u32, payload: &[u8]) -> Result<ArchiveRecord, String> {
        let len = u32::try_from(payload.len()).map_err(|_| "too long".to_string())?;
        if crate::logstore::frame_crc(len.to_le_bytes(), payload) != crc {
            return Err("CRC-32 mismatch".into());
        }
        let r: ArchiveRecord = decode_value(payload).map_err(|e| e.to_string())?;
        let Some(k) = r.entry_key() else {
            return Err("a mark is not a record to send".into());
        };
        if self.last_key.is_some_and(|l| k <= l) {
            return Err("entry keys do not increase".into());
        }
        if k.0 .0 > self.target.at {
            return Err("above the snapshot point".into());
        }
        match &r {
            ArchiveRecord::Event {
                event,
                status,
                comp,
            } => {
                event.validate().map_err(|e| e.to_string())?;
                if *status != STATUS_SETTLED && *status != STATUS_REVERSED {
                    return Err(format!("status {status}"));
                }
                if comp.as_ref().is_some_and(|c| c.cause != event.id) {
                    return Err("a compensation of another event".into());
                }
                let o = event.id.origin;
                if self.tops.get(&o).is_some_and(|t| event.id.seq <= *t) {
                    return Err(format!("{} does not follow {o}'s last seq", event.id));
                }
                if let Some((_, top)) = self.target.seqs.iter().find(|(r, _)| *r == o) {
                    if event.id.seq > *top {
                        return Err(format!("{} is above the snapshot's seq {top}", event.id));
                    }
                }
                if !self.auth.verify_event(o, event, &self.cluster) {
                    return Err(format!("{}: signature does not verify", event.id));
                }
            }
            ArchiveRecord::Comp(c) => {
                if c.position >= self.target.feed_len {
                    return Err(format!("feed position {} above the snapshot's", c.position));
                }
            }
            ArchiveRecord::Mark { .. } => {}
        }
        Ok(r)
    }

    /// Verifies a chunk: its records, or the first refusal (then nothing of it counts,
    /// except keys bound by events verified before it, which their origins did sign).
    pub fn check(&mut self, frames: &[(u32, Vec<u8>)]) -> Result<Vec<ArchiveRecord>, Refused> {
        let saved = (self.last_key, self.tops.clone(), self.comps);
        let mut out = Vec::with_capacity(frames.len());
        for (index, (crc, payload)) in frames.iter().enumerate() {
            match self.check_one(*crc, payload) {
                Ok(r) => {
                    self.note(&r);
                    out.push(r);
                }
                Err(why) => {
                    (self.last_key, self.tops, self.comps) = saved;
                    return Err(Refused { index, why });
                }
            }
        }
        Ok(out)
    }
}

/// How the fetch thread sends to a peer.
pub type Send = Box<dyn Fn(RegionId, BackfillMsg) + std::marker::Send>;

/// What the fetch thread needs.
pub struct Params {
    /// The archive directory (`<data_dir>/archive`).
    pub archive_dir: PathBuf,
    /// Segment size.
    pub segment_bytes: u64,
    /// Verifies events (the cluster's configured keys).
    pub auth: Box<dyn Authenticator>,
    /// The cluster id.
    pub cluster: String,
    /// Peers to ask, in order.
    pub peers: Vec<RegionId>,
    /// Sends a request.
    pub send: Send,
    /// How long a peer has to answer.
    pub timeout: Duration,
}

/// Where the fetch thread is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Records fetched and verified (since this process started).
    pub records: u64,
    /// Chunks appended (since this process started).
    pub chunks: u64,
    /// Peers refused for a record that did not verify.
    pub refused: Vec<RegionId>,
    /// Complete: the backfill's mark and last entry key.
    pub complete: Option<((Hlc, u64), Option<EntryKey>)>,
    /// Stopped on an archive error.
    pub failed: Option<String>,
}

/// The fetch thread's handle: answers go in, progress comes out.
#[derive(Debug)]
pub struct Fetch {
    answers: Option<mpsc::SyncSender<(RegionId, BackfillMsg)>>,
    progress: Arc<Mutex<Progress>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fetch {
    /// Starts the fetch of `target` into `archive_dir/below/`, resuming after what is there.
    pub fn spawn(target: Target, p: Params) -> Result<Fetch, ArchiveError> {
        let dir = below_dir(&p.archive_dir);
        let staging = Archive::open_dir(&dir, p.segment_bytes, None, 0)?;
        // Answers wait here while a chunk is verified: a few at most (one is asked for at
        // a time; what a peer sends unasked beyond that is dropped).
        let (tx, rx) = mpsc::sync_channel(ANSWERS_QUEUED_MAX);
        let progress = Arc::new(Mutex::new(Progress::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (pr, st) = (progress.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("backfill".into())
            .spawn(move || {
                let r = fetch(target, p, staging, &rx, &pr, &st);
                if let Err(e) = r {
                    tracing::error!(error = %e, "archive backfill stopped: the history below \
                        the bootstrap snapshot stays unserved (410 compacted); fix and restart");
                    lock(&pr).failed = Some(e.to_string());
                }
            })
            .map_err(|e| io_err(&dir, e))?;
        Ok(Fetch {
            answers: Some(tx),
            progress,
            stop,
            thread: Some(thread),
        })
    }

    /// An answer from a peer.
    pub fn answer(&self, from: RegionId, m: BackfillMsg) {
        if let Some(a) = &self.answers {
            let _ = a.try_send((from, m));
        }
    }

    /// Where it is.
    pub fn progress(&self) -> Progress {
        lock(&self.progress).clone()
    }

    /// Stops the thread and waits for it (tests).
    pub fn join(mut self) {
        self.stop.store(true, Ordering::Release);
        self.answers = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        // The thread sees the channel closed at its next wait and ends (not joined: it may
        // be waiting on a peer; a chunk cut by the exit is truncated at the next open).
        self.stop.store(true, Ordering::Release);
        self.answers = None;
    }
}

fn lock(p: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fetch loop: one chunk at a time, peer by peer, until complete.
fn fetch(
    target: Target,
    p: Params,
    mut staging: Archive,
    rx: &mpsc::Receiver<(RegionId, BackfillMsg)>,
    progress: &Mutex<Progress>,
    stop: &AtomicBool,
) -> Result<(), ArchiveError> {
    let dir = below_dir(&p.archive_dir);
    let mut checker = Checker::resume(target.clone(), p.auth, &p.cluster, &staging)?;
    tracing::info!(at = ?target.at, after = ?checker.last_key(), "archive backfill started");
    let mut refused: BTreeSet<RegionId> = BTreeSet::new();
    let mut lacking: BTreeSet<RegionId> = BTreeSet::new();
    // What the peers' retention deleted above the cursor, this round.
    let mut floors: Vec<Expired> = Vec::new();
    let mut pause = PAUSE_MIN;
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        if checker.complete() {
            staging.append(&[], target.at, target.feed_len)?;
            let last = staging.last_key();
            drop(staging);
            write_file(&dir, &dir.join(COMPLETE_FILE), b"complete")?;
            tracing::info!(at = ?target.at, records = lock(progress).records,
                "archive backfill complete: the history below the bootstrap snapshot is served");
            lock(progress).complete = Some(((target.at, target.feed_len), last));
            return Ok(());
        }
        let Some(peer) = p
            .peers
            .iter()
            .copied()
            .find(|r| !refused.contains(r) && !lacking.contains(r))
        else {
            if refused.len() >= p.peers.len() {
                tracing::error!(
                    "archive backfill: every peer sent records that do not verify; stopped"
                );
                lock(progress).failed = Some("every peer sent records that do not verify".into());
                return Ok(());
            }
            // No peer holds what follows the cursor, and some deleted it by retention: start
            // above the lowest of their floors (the most history any of them kept), as
            // deleted (410 `archived_expired` below, as on those peers).
            if let Some(x) = floors.iter().min_by_key(|x| x.key).cloned() {
                tracing::warn!(peer_floor = ?x.key, "archive backfill: the history below this \
                    point was deleted by every answering peer's retention; starting above it");
                checker.skip(&x);
                staging.skip_to(&x)?;
                floors.clear();
                lacking.clear();
                continue;
            }
            // Every peer was tried without progress: pause, then try them again.
            if let Err(mpsc::RecvTimeoutError::Disconnected) = rx.recv_timeout(pause) {
                return Ok(());
            }
            pause = (pause * 2).min(PAUSE_MAX);
            lacking.clear();
            continue;
        };
        let after = checker.last_key();
        (p.send)(
            peer,
            BackfillMsg::Want {
                at: target.at,
                after,
                max_bytes: CHUNK_BYTES as u32,
            },
        );
        let deadline = Instant::now() + p.timeout;
        let answer = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((from, m)) if from == peer && m.after() == after => break Some(m),
                // A late answer to an earlier request, or another peer's.
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => break None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        };
        match answer {
            Some(BackfillMsg::Chunk { frames, done, .. }) => match checker.check(&frames) {
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e,
                        "archive backfill: a peer sent a record that does not verify; it is tried no more");
                    refused.insert(peer);
                    lock(progress).refused.push(peer);
                }
                Ok(records) if records.is_empty() && !done => {
                    tracing::warn!(peer = %peer, "archive backfill: an empty chunk that is not the last; peer tried no more");
                    refused.insert(peer);
                    lock(progress).refused.push(peer);
                }
                Ok(records) => {
                    if let Some(k) = checker.last_key().filter(|_| !records.is_empty()) {
                        staging.append(&records, k.0 .0, checker.comps())?;
                        let mut pr = lock(progress);
                        pr.records += records.len() as u64;
                        pr.chunks += 1;
                        pause = PAUSE_MIN;
                    }
                    if done && !checker.complete() {
                        tracing::info!(peer = %peer, after = ?checker.last_key(),
                            "archive backfill: the peer holds no more; trying another");
                        lacking.insert(peer);
                    }
                }
            },
            Some(BackfillMsg::Missing { expired, .. }) => {
                floors
                    .extend(expired.filter(|x| x.key.is_some_and(|k| after.is_none_or(|a| a < k))));
                lacking.insert(peer);
            }
            Some(BackfillMsg::Want { .. }) => {
                lacking.insert(peer);
            }
            None => {
                tracing::info!(peer = %peer, "archive backfill: no answer in time; trying another");
                lacking.insert(peer);
            }
        }
    }
}

/// The actor's side: starts the fetch after a peer's snapshot is installed (or at start, to
/// resume one), routes the messages, serves peers from the archive's thread, and attaches
/// the fetched history once complete.
pub struct Host {
    /// `<data_dir>`.
    pub data_dir: PathBuf,
    /// Segment size and retention of the archive.
    pub segment_bytes: u64,
    /// Archive retention.
    pub retention_ms: Option<u64>,
    /// This region.
    pub region: RegionId,
    /// The cluster id.
    pub cluster: String,
    /// The verifier (the cluster's configured keys), taken by the fetch.
    pub auth: Option<Box<dyn Authenticator>>,
    /// Peers to ask.
    pub peers: Vec<RegionId>,
    /// The transport.
    pub net: wallet_p2p::NetHandle,
    fetch: Option<(Fetch, Target)>,
    /// What the metrics show once the fetch is attached (or found complete at start).
    done: Gauges,
}

/// The backfill's gauges (`walletd_backfill_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gauges {
    /// 0 none, 1 fetching, 2 complete, 3 stopped on an error.
    pub state: u8,
    /// Records fetched and verified in this process.
    pub records: u64,
    /// Peers refused for a record that does not verify.
    pub refused_peers: u64,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("fetch", &self.fetch).finish()
    }
}

impl Host {
    /// A host that starts nothing yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        data_dir: PathBuf,
        segment_bytes: u64,
        retention_ms: Option<u64>,
        region: RegionId,
        cluster: String,
        auth: Box<dyn Authenticator>,
        peers: Vec<RegionId>,
        net: wallet_p2p::NetHandle,
    ) -> Host {
        Host {
            data_dir,
            segment_bytes,
            retention_ms,
            region,
            cluster,
            auth: Some(auth),
            peers,
            net,
            fetch: None,
            done: Gauges::default(),
        }
    }

    /// Its gauges.
    pub fn gauges(&self) -> Gauges {
        let Some((f, _)) = &self.fetch else {
            return self.done;
        };
        let p = f.progress();
        Gauges {
            state: if p.failed.is_some() {
                3
            } else if p.complete.is_some() {
                2
            } else {
                1
            },
            records: p.records,
            refused_peers: p.refused.len() as u64,
        }
    }

    fn archive_dir(&self) -> PathBuf {
        self.data_dir.join(crate::archive::ARCHIVE_DIR_NAME)
    }

    fn start(&mut self, target: Target) {
        let Some(auth) = self.auth.take() else {
            return;
        };
        let net = self.net.clone();
        let rt = tokio::runtime::Handle::current();
        let send: Send = Box::new(move |to, m| {
            let net = net.clone();
            rt.spawn(async move { net.send(to, m.to_message()).await });
        });
        let p = Params {
            archive_dir: self.archive_dir(),
            segment_bytes: self.segment_bytes,
            auth,
            cluster: self.cluster.clone(),
            peers: self.peers.clone(),
            send,
            timeout: ANSWER_TIMEOUT,
        };
        match Fetch::spawn(target.clone(), p) {
            Ok(f) => self.fetch = Some((f, target)),
            Err(e) => tracing::error!(error = %e, "archive backfill could not start"),
        }
    }

    /// At start: resumes a backfill under way.
    pub fn resume(&mut self) {
        match Target::read(&self.archive_dir()) {
            Ok(Some(t))
                if Target::state(&self.archive_dir()).ok() != Some(BelowState::Complete) =>
            {
                self.start(t)
            }
            Ok(Some(_)) => self.done.state = 2,
            Ok(None) => {}
            Err(e) => {
                self.done.state = 3;
                tracing::error!(error = %e, "archive backfill cannot resume")
            }
        }
    }

    /// The replica persists a snapshot: one signed by a peer, installed while this region's
    /// archive holds nothing (a bootstrap), starts the backfill of what it folds. The
    /// archive is opened for it if this region does not compact.
    pub fn on_snapshot(&mut self, snap: &Snapshot, archiver: &mut Option<Archiver>) {
        if snap.signer == self.region || self.fetch.is_some() || snap.body.at == Hlc::ZERO {
            return;
        }
        if archiver.as_ref().is_some_and(|a| a.known().mark.is_some()) {
            return;
        }
        let dir = self.archive_dir();
        if Target::state(&dir).map_or(true, |s| s != BelowState::None) {
            return;
        }
        let target = Target::of(snap);
        if let Err(e) = target.write(&dir) {
            tracing::error!(error = %e, "archive backfill could not start");
            return;
        }
        if archiver.is_none() {
            let opened = Archive::open(
                &self.data_dir,
                self.segment_bytes,
                self.retention_ms,
                crate::clock::now_ms(),
            )
            .and_then(Archiver::spawn);
            match opened {
                // This region does not compact: no append reports come.
                Ok((a, _done)) => *archiver = Some(a),
                Err(e) => {
                    tracing::error!(error = %e, "archive backfill: the archive does not open");
                    return;
                }
            }
        } else if let Some(a) = archiver.as_ref() {
            let at = target.at;
            a.run(Box::new(move |a: &mut Archive| a.set_floor(at)));
        }
        self.start(target);
    }

    /// A backfill message from a peer: a request is served on the archive's thread (or
    /// answered `Missing` without an archive, or when its queue is full), an answer goes to
    /// the fetch. Bytes that do not decode are dropped.
    pub fn on_message(&self, from: RegionId, bytes: &[u8], archiver: Option<&Archiver>) {
        let m: BackfillMsg = match decode_value(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(peer = %from, error = %e, "undecodable backfill message dropped");
                return;
            }
        };
        match m {
            BackfillMsg::Want {
                at,
                after,
                max_bytes,
            } => {
                let net = self.net.clone();
                let rt = tokio::runtime::Handle::current();
                let job = Box::new(move |a: &mut Archive| {
                    let answer = serve(a, at, after, max_bytes).to_message();
                    rt.spawn(async move { net.send(from, answer).await });
                });
                if !archiver.is_some_and(|a| a.run(job)) {
                    let net = self.net.clone();
                    tokio::spawn(async move {
                        let m = BackfillMsg::Missing {
                            after,
                            expired: None,
                        };
                        net.send(from, m.to_message()).await
                    });
                }
            }
            answer => {
                if let Some((f, _)) = &self.fetch {
                    f.answer(from, answer);
                }
            }
        }
    }

    /// Checks the fetch (the actor's timer): once complete, the fetched archive is attached
    /// below this region's own, behind the jobs queued, and reads join at its mark.
    pub fn poll(&mut self, archiver: &mut Option<Archiver>) {
        let Some((f, _)) = &self.fetch else { return };
        let Some(((at, feed_len), last)) = f.progress().complete else {
            return;
        };
        let Some(a) = archiver.as_mut() else { return };
        let dir = below_dir(&self.archive_dir());
        let (seg, keep) = (self.segment_bytes, self.retention_ms);
        let attach = Box::new(move |a: &mut Archive| {
            match Archive::open_dir(&dir, seg, keep, crate::clock::now_ms()) {
                Ok(b) => a.set_below(b),
                Err(e) => tracing::error!(error = %e, "the backfilled archive does not open"),
            }
        });
        if a.run(attach) {
            a.note_below(at, feed_len, last);
            self.done = Gauges {
                state: 2,
                ..self.gauges()
            };
            self.fetch = None;
        }
    }

    /// Where the fetch is (None: none under way in this process).
    pub fn progress(&self) -> Option<Progress> {
        self.fetch.as_ref().map(|(f, _)| f.progress())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;
    use proptest::prelude::*;
    use wallet_core::{AccountId, Amount, Body, CompKind, Compensation, Currency, Event, EventId};
    use wallet_p2p::{peer_id_of, Ed25519Auth};

    const CLUSTER: &str = "c1";

    fn region(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    /// eu's and us's keys, and a verifier knowing both.
    struct Keys {
        eu: Ed25519Auth,
        us: Ed25519Auth,
        members: Vec<(RegionId, libp2p::PeerId)>,
    }

    impl Keys {
        fn new() -> Keys {
            let (eu, us) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
            let members = vec![
                (region("eu"), peer_id_of(&eu)),
                (region("us"), peer_id_of(&us)),
            ];
            Keys {
                eu: Ed25519Auth::new(eu, &members).unwrap(),
                us: Ed25519Auth::new(us, &members).unwrap(),
                members,
            }
        }

        fn verifier(&self) -> Box<dyn Authenticator> {
            Box::new(Ed25519Auth::new(Keypair::generate_ed25519(), &self.members).unwrap())
        }
    }

    /// eu's deposit `seq` at HLC ms `10·seq` on account `a{seq % 3}`, signed by `signer`.
    fn event(seq: u64, cents: i64, signer: &Ed25519Auth) -> Event {
        let mut e = Event {
            id: EventId {
                origin: region("eu"),
                seq,
            },
            hlc: Hlc::from_millis(10 * seq),
            body: Body::Tx(wallet_core::Tx {
                account: AccountId::new(&format!("a{}", seq % 3)).unwrap(),
                kind: wallet_core::Kind::Deposit,
                amount: Amount::parse(
                    &format!("{}.{:02}", cents / 100, cents % 100),
                    Currency::USD,
                )
                .unwrap(),
                currency: Currency::USD,
                idempotency_key: None,
                reference: None,
            }),
            sig: Box::new([]),
        };
        e.sig = signer.sign_event(&e, CLUSTER).into();
        e
    }

    fn fee(e: &Event, position: u64) -> Compensation {
        Compensation {
            kind: CompKind::OverdraftFee,
            cause: e.id,
            hlc: e.hlc,
            account: e.tx().unwrap().account.clone(),
            currency: Currency::USD,
            delta: rust_decimal::Decimal::new(-100, 2),
            policy_version: 1,
            position,
            related: None,
        }
    }

    /// A founder's archive of eu:1..=n in batches of 5 (every 4th event caused a fee), in
    /// segments of one batch: its records, and the target of a snapshot at eu:`upto`.
    fn founder(
        dir: &Path,
        keys: &Keys,
        n: u64,
        upto: u64,
    ) -> (Archive, Vec<ArchiveRecord>, Target) {
        let mut a = Archive::open_dir(dir, 1, None, 0).unwrap();
        let mut all = Vec::new();
        let mut feed = 0;
        let mut feed_at_upto = 0;
        for b in 0..n.div_ceil(5) {
            let mut batch = Vec::new();
            for seq in (5 * b + 1)..=(5 * b + 5).min(n) {
                let e = event(seq, 100 + seq as i64, &keys.eu);
                let comp = (seq % 4 == 0).then(|| fee(&e, feed));
                batch.push(ArchiveRecord::Event {
                    event: e,
                    status: STATUS_SETTLED,
                    comp: comp.clone(),
                });
                if let Some(c) = comp {
                    batch.push(ArchiveRecord::Comp(c));
                    feed += 1;
                }
                if seq == upto {
                    feed_at_upto = feed;
                }
            }
            let at = Hlc::from_millis(10 * (5 * b + 5).min(n));
            a.append(&batch, at, feed).unwrap();
            all.extend(batch);
        }
        let target = Target {
            at: Hlc::from_millis(10 * upto),
            feed_len: feed_at_upto,
            seqs: vec![(region("eu"), upto), (region("us"), 0)],
        };
        (a, all, target)
    }

    /// Frames of a chunk as `serve` sends them.
    fn frames(m: BackfillMsg) -> (Vec<(u32, Vec<u8>)>, bool) {
        match m {
            BackfillMsg::Chunk { frames, done, .. } => (frames, done),
            other => panic!("{other:?}"),
        }
    }

    fn frame(r: &ArchiveRecord) -> (u32, Vec<u8>) {
        let p = encode_value(r);
        let len = (p.len() as u32).to_le_bytes();
        (crate::logstore::frame_crc(len, &p), p)
    }

    #[test]
    fn chunks_served_from_segments_rebuild_the_history_below_the_snapshot_and_read_below() {
        let keys = Keys::new();
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // The founder archived eu:1..=40; the snapshot is at eu:30.
        let (a, all, target) = founder(src.path(), &keys, 40, 30);
        assert!(a.segments() >= 8);
        let mut staging = Archive::open_dir(&below_dir(dst.path()), 1, None, 0).unwrap();
        let mut c = Checker::new(target.clone(), keys.verifier(), CLUSTER);
        let mut chunks = 0;
        loop {
            // Small chunks: a few records each, across segment boundaries.
            let (f, done) = frames(serve(&a, target.at, c.last_key(), 300));
            let recs = c.check(&f).unwrap();
            if let Some(k) = c.last_key().filter(|_| !recs.is_empty()) {
                staging.append(&recs, k.0 .0, c.comps()).unwrap();
                chunks += 1;
            }
            if done {
                break;
            }
        }
        assert!(chunks > 5, "{chunks} chunks");
        assert!(c.complete(), "{c:?}");
        // Exactly the records at or below the snapshot, in order.
        let below: Vec<&ArchiveRecord> = all
            .iter()
            .filter(|r| r.entry_key().unwrap().0 .0 <= target.at)
            .collect();
        let (got, _) = staging
            .records_after(None, Hlc::from_millis(u64::MAX >> 20), 1 << 20)
            .unwrap()
            .unwrap();
        let got: Vec<ArchiveRecord> = got.iter().map(|(_, p)| decode_value(p).unwrap()).collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), below);
        staging.append(&[], target.at, target.feed_len).unwrap();
        // A resume rebuilds the checker's state from what is staged.
        let again = Checker::resume(target.clone(), keys.verifier(), CLUSTER, &staging).unwrap();
        assert_eq!((again.last_key(), again.comps()), (c.last_key(), c.comps()));
        assert!(again.complete());
        drop(staging);
        // Attached below this region's own archive (eu:31.. as if it compacted after its
        // bootstrap): lookups, account pages and the feed span both parts.
        std::fs::write(below_dir(dst.path()).join(COMPLETE_FILE), b"x").unwrap();
        let mut own = Archive::open_dir(dst.path(), 1, None, 0).unwrap();
        let above: Vec<ArchiveRecord> = all
            .iter()
            .filter(|r| r.entry_key().unwrap().0 .0 > target.at)
            .cloned()
            .collect();
        own.append(&above, Hlc::from_millis(400), 10).unwrap();
        drop(own);
        let mut merged = Archive::open_dir(dst.path(), 1, None, 0).unwrap();
        merged.set_below(Archive::open_dir(&below_dir(dst.path()), 1, None, 0).unwrap());
        for id in [1u64, 12, 30, 31, 40] {
            assert!(merged
                .find(&format!("eu:{id}"), region("eu"), id)
                .unwrap()
                .is_some());
        }
        for acct in ["a0", "a1", "a2"] {
            let want: Vec<_> = a.account_page(acct, None, 1000).unwrap();
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let p = merged.account_page(acct, after, 4).unwrap();
                let Some((k, _)) = p.last() else { break };
                after = Some(*k);
                got.extend(p);
            }
            assert_eq!(got, want, "{acct}");
        }
        assert_eq!(
            merged.feed_page(0, 100).unwrap(),
            a.feed_page(0, 100).unwrap()
        );
        assert_eq!(merged.mark(), Some((Hlc::from_millis(400), 10)));
        // A peer's backfill is served from both parts too.
        let (f, done) = frames(serve(&merged, Hlc::from_millis(400), None, u32::MAX));
        assert!(done);
        assert_eq!(f.len(), all.len());
    }

    #[test]
    fn a_forged_or_damaged_record_is_refused_and_nothing_of_its_chunk_counts() {
        let keys = Keys::new();
        let src = tempfile::tempdir().unwrap();
        let (a, _, target) = founder(src.path(), &keys, 20, 20);
        let (good, _) = frames(serve(&a, target.at, None, u32::MAX));
        let fresh = || Checker::new(target.clone(), keys.verifier(), CLUSTER);
        assert!(fresh().check(&good).is_ok());
        let refused = |f: Vec<(u32, Vec<u8>)>| -> String {
            let mut c = fresh();
            let e = c.check(&f).unwrap_err();
            assert_eq!((c.last_key(), c.comps()), (None, 0), "nothing counts");
            e.why
        };
        // A flipped byte: the CRC.
        let mut f = good.clone();
        f[3].1[10] ^= 1;
        assert!(refused(f).contains("CRC"));
        // Bytes that do not decode (with a matching CRC).
        let mut f = good.clone();
        f[2] = {
            let p = vec![1, 0xff, 0xff, 0xff];
            (
                crate::logstore::frame_crc((p.len() as u32).to_le_bytes(), &p),
                p,
            )
        };
        assert!(!refused(f).is_empty());
        // An amount changed by the sender (the CRC made to match): the signature.
        let mut f = good.clone();
        let mut e = event(3, 100_000, &keys.eu);
        e.sig = event(3, 103, &keys.eu).sig;
        f[2] = frame(&ArchiveRecord::Event {
            event: e,
            status: STATUS_SETTLED,
            comp: None,
        });
        assert!(refused(f).contains("signature"), "the forged event");
        // eu's event signed with us's key.
        let mut f = good.clone();
        f[2] = frame(&ArchiveRecord::Event {
            event: event(3, 103, &keys.us),
            status: STATUS_SETTLED,
            comp: None,
        });
        assert!(refused(f).contains("signature"));
        // Out of order, a repeat, a mark, a bad status.
        let mut f = good.clone();
        f.swap(1, 2);
        assert!(refused(f).contains("increase"));
        let mut f = good.clone();
        f.insert(2, f[1].clone());
        assert!(refused(f).contains("increase"));
        let mut f = good.clone();
        f.push(frame(&ArchiveRecord::Mark {
            at: Hlc::ZERO,
            feed_len: 0,
        }));
        assert!(refused(f).contains("mark"));
        let mut f = good.clone();
        f[0] = frame(&ArchiveRecord::Event {
            event: event(1, 101, &keys.eu),
            status: 7,
            comp: None,
        });
        assert!(refused(f).contains("status"));
        // Above the snapshot: its point, its seqs, its feed.
        let small = Target {
            at: Hlc::from_millis(100),
            feed_len: 1,
            seqs: vec![(region("eu"), 10)],
        };
        let mut c = Checker::new(small, keys.verifier(), CLUSTER);
        let e = c.check(&good).unwrap_err();
        assert!(e.why.contains("above"), "{e}");
        assert_eq!(c.last_key(), None);
    }

    #[test]
    fn target_and_state_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Target::state(dir.path()).unwrap(), BelowState::None);
        let t = Target {
            at: Hlc::from_millis(77),
            feed_len: 3,
            seqs: vec![(region("eu"), 9)],
        };
        t.write(dir.path()).unwrap();
        assert_eq!(Target::read(dir.path()).unwrap(), Some(t.clone()));
        assert_eq!(
            Target::state(dir.path()).unwrap(),
            BelowState::Pending(t.at)
        );
        // A damaged target is an error, not a panic and not a silent restart.
        let p = below_dir(dir.path()).join(TARGET_FILE);
        let mut b = std::fs::read(&p).unwrap();
        b[6] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(Target::read(dir.path()).is_err());
    }

    /// The fetch thread against in-process peers: `answer(peer, request)` plays each peer.
    fn run_fetch(
        dir: &Path,
        target: &Target,
        keys: &Keys,
        peers: &[&str],
        mut answer: impl FnMut(RegionId, Option<EntryKey>) -> Option<BackfillMsg>,
        stop_after: Option<usize>,
    ) -> (Progress, Vec<(RegionId, Option<EntryKey>)>) {
        let (req_tx, req_rx) = mpsc::channel();
        let send: Send = Box::new(move |to, m| {
            let _ = req_tx.send((to, m));
        });
        let f = Fetch::spawn(
            target.clone(),
            Params {
                archive_dir: dir.to_path_buf(),
                segment_bytes: 1,
                auth: keys.verifier(),
                cluster: CLUSTER.into(),
                peers: peers.iter().map(|p| region(p)).collect(),
                send,
                timeout: Duration::from_millis(200),
            },
        )
        .unwrap();
        let mut asked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while f.progress().complete.is_none() && Instant::now() < deadline {
            if stop_after.is_some_and(|n| f.progress().chunks as usize >= n) {
                break;
            }
            let Ok((to, m)) = req_rx.recv_timeout(Duration::from_millis(50)) else {
                continue;
            };
            let BackfillMsg::Want { after, .. } = m else {
                panic!("{m:?}")
            };
            asked.push((to, after));
            if let Some(a) = answer(to, after) {
                f.answer(to, a);
            }
        }
        let p = f.progress();
        f.join();
        (p, asked)
    }

    #[test]
    fn the_fetch_refuses_a_forging_peer_for_good_skips_a_lacking_one_and_resumes() {
        let keys = Keys::new();
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, all, target) = founder(src.path(), &keys, 60, 50);
        target.write(dst.path()).unwrap();
        let (us, ap) = (region("us"), region("ap"));
        // us forges its second chunk; ap lacks the range (it is backfilling itself); eu
        // answers nothing at first (timed out), then honestly. Stopped after 3 chunks.
        let mut us_chunks = 0;
        let mut eu_calls = 0;
        let serve_all = |after| serve(&a, target.at, after, 200);
        let (p, asked) = run_fetch(
            dst.path(),
            &target,
            &keys,
            &["us", "ap", "eu"],
            |to, after| {
                if to == us {
                    us_chunks += 1;
                    let (mut f, done) = frames(serve_all(after));
                    if us_chunks == 2 {
                        // The chunk's first event with its amount changed, its signature
                        // kept (the CRC made to match).
                        let Ok(ArchiveRecord::Event {
                            event: e,
                            status,
                            comp,
                        }) = decode_value::<ArchiveRecord>(&f[0].1)
                        else {
                            panic!("an event first")
                        };
                        let mut forged = event(e.id.seq, 99_999, &keys.eu);
                        forged.sig = e.sig;
                        f[0] = frame(&ArchiveRecord::Event {
                            event: forged,
                            status,
                            comp,
                        });
                    }
                    Some(BackfillMsg::Chunk {
                        after,
                        frames: f,
                        done,
                    })
                } else if to == ap {
                    Some(BackfillMsg::Missing {
                        after,
                        expired: None,
                    })
                } else {
                    eu_calls += 1;
                    (eu_calls > 1).then(|| serve_all(after))
                }
            },
            Some(3),
        );
        assert_eq!(p.refused, vec![us], "the forging peer");
        assert!(p.complete.is_none());
        assert!(p.chunks >= 3, "{p:?}");
        // us is asked no more after its forged chunk.
        let last_us = asked.iter().rposition(|(r, _)| *r == us).unwrap();
        assert_eq!(asked.iter().filter(|(r, _)| *r == us).count(), 2);
        assert!(asked[last_us + 1..].iter().all(|(r, _)| *r != us));
        assert!(asked.iter().any(|(r, _)| *r == ap));
        // A restart resumes after the last chunk appended: the first request starts there.
        let staged = Archive::open_dir(&below_dir(dst.path()), 1, None, 0).unwrap();
        let resume_at = staged.last_key();
        assert!(resume_at.is_some());
        drop(staged);
        let (p, asked) = run_fetch(
            dst.path(),
            &target,
            &keys,
            &["eu"],
            |_, after| Some(serve_all(after)),
            None,
        );
        assert_eq!(asked[0].1, resume_at);
        let ((at, feed_len), _) = p.complete.expect("complete");
        assert_eq!((at, feed_len), (target.at, target.feed_len));
        assert_eq!(Target::state(dst.path()).unwrap(), BelowState::Complete);
        // Every record below the snapshot once, in order.
        let staged = Archive::open_dir(&below_dir(dst.path()), 1, None, 0).unwrap();
        let (got, _) = staged
            .records_after(None, target.at, usize::MAX)
            .unwrap()
            .unwrap();
        let got: Vec<ArchiveRecord> = got.iter().map(|(_, p)| decode_value(p).unwrap()).collect();
        let want: Vec<ArchiveRecord> = all
            .into_iter()
            .filter(|r| r.entry_key().unwrap().0 .0 <= target.at)
            .collect();
        assert_eq!(got, want);
        assert_eq!(staged.mark(), Some((target.at, target.feed_len)));
    }

    #[test]
    fn a_backfilling_region_serves_missing_and_a_fetch_starts_above_the_peers_retention() {
        let keys = Keys::new();
        let src = tempfile::tempdir().unwrap();
        let (mut a, _, target) = founder(src.path(), &keys, 20, 20);
        a.set_floor(Hlc::from_millis(100));
        assert_eq!(
            serve(&a, target.at, None, 1000),
            BackfillMsg::Missing {
                after: None,
                expired: None
            }
        );
        // A peer whose retention deleted all but its active segment (eu:16..=20).
        let src = tempfile::tempdir().unwrap();
        let mut a = Archive::open_dir(src.path(), 1, Some(1), 0).unwrap();
        let (_, all, _) = founder(tempfile::tempdir().unwrap().path(), &keys, 20, 20);
        let mut feed = 0;
        for r in all.chunks(6) {
            feed += r
                .iter()
                .filter(|r| matches!(r, ArchiveRecord::Comp(_)))
                .count() as u64;
            a.append(r, r.last().unwrap().entry_key().unwrap().0 .0, feed)
                .unwrap();
        }
        assert!(a.expire(u64::MAX >> 4).unwrap() > 0);
        let floor = a.expired();
        assert!(floor.key.is_some());
        match serve(&a, target.at, None, 1000) {
            BackfillMsg::Missing {
                expired: Some(x), ..
            } => assert_eq!(x, floor),
            other => panic!("{other:?}"),
        }
        // The fetch starts above it: what the peer kept, once; the rest recorded as deleted.
        let dst = tempfile::tempdir().unwrap();
        target.write(dst.path()).unwrap();
        let (p, asked) = run_fetch(
            dst.path(),
            &target,
            &keys,
            &["us"],
            |_, after| Some(serve(&a, target.at, after, 300)),
            None,
        );
        assert!(p.complete.is_some(), "{p:?}");
        assert_eq!(asked[0].1, None);
        assert_eq!(asked[1].1, floor.key);
        let staged = Archive::open_dir(&below_dir(dst.path()), 1, None, 0).unwrap();
        assert_eq!(staged.expired(), floor);
        let kept = a
            .records_after(floor.key, target.at, usize::MAX)
            .unwrap()
            .unwrap();
        let got = staged
            .records_after(floor.key, target.at, usize::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(got.0, kept.0);
        assert!(!got.0.is_empty());
    }

    proptest! {
        /// Bytes a peer sends never crash the receiver: a message that does not decode is an
        /// error, and frames of any content are refused or verified, never a panic.
        #[test]
        fn arbitrary_bytes_from_a_peer_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            crc in any::<u32>(),
            fix_crc in any::<bool>(),
        ) {
            let _ = decode_value::<BackfillMsg>(&bytes);
            let mut with_version = vec![1u8];
            with_version.extend_from_slice(&bytes);
            let _ = decode_value::<BackfillMsg>(&with_version);
            let crc = if fix_crc {
                crate::logstore::frame_crc((with_version.len() as u32).to_le_bytes(), &with_version)
            } else {
                crc
            };
            let t = Target { at: Hlc::from_millis(1 << 40), feed_len: 5, seqs: vec![] };
            let keys_members: Vec<(RegionId, libp2p::PeerId)> = Vec::new();
            let auth = Ed25519Auth::new(Keypair::generate_ed25519(), &keys_members).unwrap();
            let mut c = Checker::new(t, Box::new(auth), CLUSTER);
            let _ = c.check(&[(crc, with_version)]);
        }
    }
}
