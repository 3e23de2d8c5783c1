//! Archive backfill (issue 13): a region bootstrapped from a peer's snapshot (a new region,
//! or one rebuilt after its data dir was lost) holds no archive below that snapshot. It
//! fetches that history from its peers over libp2p, in the background, and keeps it in
//! `<data_dir>/archive/below/`, an archive of its own ([`Archive`]), which reads consult
//! before this region's archive once it is complete (docs/protocol.md §11.4).
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

use crate::archive::{Archive, ArchiveError, ArchiveRecord, STATUS_REVERSED, STATUS_SETTLED};
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
            | BackfillMsg::Missing { after } => *after,
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
        Ok(None) => BackfillMsg::Missing { after },
        Err(e) => {
            tracing::error!(error = %e, "archive read for a peer's backfill failed");
            BackfillMsg::Missing { after }
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
    answers: Option<mpsc::Sender<(RegionId, BackfillMsg)>>,
    progress: Arc<Mutex<Progress>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fetch {
    /// Starts the fetch of `target` into `archive_dir/below/`, resuming after what is there.
    pub fn spawn(target: Target, p: Params) -> Result<Fetch, ArchiveError> {
        let dir = below_dir(&p.archive_dir);
        let staging = Archive::open_dir(&dir, p.segment_bytes, None, 0)?;
        let (tx, rx) = mpsc::channel();
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
            let _ = a.send((from, m));
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
                return Ok(());
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
            Some(_) => {
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
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "archive backfill cannot resume"),
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
                        net.send(from, BackfillMsg::Missing { after }.to_message())
                            .await
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
            self.fetch = None;
        }
    }

    /// Where the fetch is (None: none under way in this process).
    pub fn progress(&self) -> Option<Progress> {
        self.fetch.as_ref().map(|(f, _)| f.progress())
    }
}
