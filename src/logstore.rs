//! The append-only log store (`[storage] backend = "log"`): one preallocated file,
//! `<data_dir>/wallet.log`, of framed records; the tables of the redb store are rebuilt in
//! memory on load by replaying it.
//!
//! ```text
//! offset 0     header (HEADER_BYTES): magic ‖ format u32 ‖ capacity u64 ‖ CRC-32 of those
//! HEADER_BYTES frame*: payload length u32 LE ‖ CRC-32 (length bytes ‖ payload) u32 LE ‖ payload
//!              zeros up to `capacity` (the file is zero-filled ahead of the records)
//! ```
//!
//! A payload is a tag byte and the record: an event (`wire::encode_event`), a meta value,
//! an idempotency result or its deletion, evidence. A commit is one `pwrite` of its frames
//! and one `fdatasync`. The file is zero-filled ahead of the records (`capacity`, recorded in
//! the header and made durable before use), so a commit's `fdatasync` changes no file size
//! and no extent: that is what makes it cheaper than a growing file
//! (docs/performance.md, the storage bench).
//!
//! On open every frame is checked (length, CRC-32, decoding, and then the same checks as the
//! redb store: ids, gaps, digests). The log ends at the first zero length, with only zeros
//! after it. A frame whose payload fails its CRC with nothing but zeros after it is a torn
//! tail (a commit cut by a crash before its `fdatasync` returned, so never acknowledged): it
//! is zeroed and the store opens. A bad frame with any non-zero byte after it, a length no
//! write makes, a file shorter than its header says (truncated) or a damaged header is
//! corruption: the store refuses to open, like the redb store. (A bit flipped in the very
//! last record cannot be told from a torn write and is dropped like one, as in any
//! write-ahead log with a checksum per record.)

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};
use wallet_core::wire::{
    decode_event, decode_snapshot, decode_value, encode_event, encode_snapshot, encode_value,
};
use wallet_core::{AccountId, Event, Evidence, Record};

use crate::storage::{IdemRecord, Loaded, StorageError, WriteOp};

/// Name of the log file inside the data directory.
pub const LOG_FILE_NAME: &str = "wallet.log";
/// Bytes reserved for the header at the start of the file.
pub const HEADER_BYTES: u64 = 4_096;
/// Log format version written in the header.
pub const LOG_FORMAT: u32 = 1;
/// Bytes a new file is zero-filled with after its header (the first growth step).
pub const INITIAL_CAPACITY: u64 = 1 << 20;
/// Most bytes one growth adds (the capacity doubles up to this step).
pub const GROWTH_MAX: u64 = 64 << 20;
/// Largest payload a frame may hold (a snapshot is one frame: its accounts and the keys
/// within retention; a larger record is a write error, never a frame the log cannot read back).
pub const FRAME_PAYLOAD_MAX: usize = 1 << 30;

const MAGIC: &[u8; 8] = b"WALLETLG";
const FRAME_HEAD: usize = 8;
const TAG_EVENT: u8 = 1;
const TAG_OTHER: u8 = 2;
/// A snapshot (`wire::encode_snapshot`, up to `SNAPSHOT_BYTES_MAX`): its own frame, since a
/// snapshot holding the keys within retention outgrows a value's 16 MiB limit (logs written
/// before kept it as `Other::Meta("snapshot")`, still read).
const TAG_SNAPSHOT: u8 = 3;

/// Every record that is not an event (events are framed as their wire encoding, the hot path).
#[derive(Debug, Serialize, Deserialize)]
enum Other {
    Meta(String, Vec<u8>),
    IdemPut(String, String, IdemRecord),
    IdemDelete(String, String),
    Evidence(Vec<u8>),
}

/// The open log.
pub struct LogStore {
    file: Arc<File>,
    path: PathBuf,
    /// Where the next frame goes.
    at: u64,
    /// Bytes zero-filled and recorded in the header.
    capacity: u64,
    /// A commit's frames (reused).
    buf: Vec<u8>,
    /// Bytes of records the last open or rewrite left (what a rewrite compares growth to).
    live: u64,
    /// Fewest bytes of records before a rewrite starts ([`REWRITE_MIN_BYTES`]).
    rewrite_min: u64,
    /// The rewrite being prepared on its own thread.
    job: Option<std::thread::JoinHandle<Result<Prepared, StorageError>>>,
    /// Where the last append ended, for the rewrite thread's catch-up copy.
    appended: Arc<AtomicU64>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogStore({}, at {})", self.path.display(), self.at)
    }
}

fn header(capacity: u64) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&LOG_FORMAT.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

pub(crate) fn frame_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&len);
    c.update(payload);
    c.finalize()
}

pub(crate) fn push_frame(
    buf: &mut Vec<u8>,
    payload: impl FnOnce(&mut Vec<u8>),
) -> Result<(), String> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEAD]);
    payload(buf);
    let n = buf.len() - start - FRAME_HEAD;
    if n > FRAME_PAYLOAD_MAX {
        buf.truncate(start);
        return Err(format!(
            "a record of {n} bytes is over the log's frame limit of {FRAME_PAYLOAD_MAX} bytes"
        ));
    }
    let len = u32::try_from(n).unwrap_or(u32::MAX);
    let crc = frame_crc(len.to_le_bytes(), &buf[start + FRAME_HEAD..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn push_other(buf: &mut Vec<u8>, o: &Other) -> Result<(), String> {
    push_frame(buf, |b| {
        b.push(TAG_OTHER);
        b.extend_from_slice(&encode_value(o));
    })
}

/// Zero-fills `file` from `from` up to `cap`, durably, then records `cap` in its header,
/// durably (a crash between the two leaves the old capacity, and the zeros past it ignored).
fn preallocate(file: &File, from: u64, cap: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut off = from;
    while off < cap {
        let n = (cap - off).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    file.sync_data()?;
    file.write_all_at(&header(cap), 0)?;
    file.sync_data()
}

/// One frame read back.
enum Frame<'a> {
    /// A valid frame's payload and the offset after it.
    Ok(&'a [u8], usize),
    /// The end of the log (a zero length).
    End,
    /// Not a valid frame (with why). `Some(end)`: a plausible length whose payload fails
    /// its CRC, ending at `end` (a torn write if only zeros follow); `None`: a length no
    /// write makes (beyond the limit or the file), which is corruption.
    Bad(String, Option<usize>),
}

fn read_frame(data: &[u8], at: usize) -> Frame<'_> {
    let Some(head) = data.get(at..at + FRAME_HEAD) else {
        return if data[at..].iter().all(|b| *b == 0) {
            Frame::End
        } else {
            Frame::Bad("a frame header cut by the end of the file".into(), None)
        };
    };
    let len = [head[0], head[1], head[2], head[3]];
    let n = u32::from_le_bytes(len) as usize;
    if n == 0 {
        return Frame::End;
    }
    if n > FRAME_PAYLOAD_MAX {
        return Frame::Bad(format!("frame length {n} is beyond the limit"), None);
    }
    let Some(payload) = data.get(at + FRAME_HEAD..at + FRAME_HEAD + n) else {
        return Frame::Bad(
            format!("frame of {n} bytes runs past the end of the file"),
            None,
        );
    };
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if crc != frame_crc(len, payload) {
        return Frame::Bad("CRC-32 mismatch".into(), Some(at + FRAME_HEAD + n));
    }
    Frame::Ok(payload, at + FRAME_HEAD + n)
}

impl LogStore {
    /// The log file for a data directory.
    pub fn file_path(dir: &Path) -> PathBuf {
        dir.join(LOG_FILE_NAME)
    }

    fn corrupt(&self, what: impl Into<String>) -> StorageError {
        crate::storage::corrupt_at(&self.path, what)
    }

    fn write_err(&self, e: impl std::fmt::Display) -> StorageError {
        crate::storage::write_err_at(&self.path, e)
    }

    /// Opens (or creates) the log and replays it, checking every frame. A corrupt file is
    /// an error, never a partial load; a torn tail is zeroed (module docs).
    pub fn open(dir: &Path) -> Result<(LogStore, Loaded), StorageError> {
        let path = LogStore::file_path(dir);
        let pstr = path.display().to_string();
        let open_err = |reason: String| StorageError::Open {
            path: pstr.clone(),
            reason,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| open_err(format!("cannot create directory {}: {e}", dir.display())))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| open_err(e.to_string()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(open_err(
                    "the file is already open in another walletd process".into(),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(open_err(e.to_string())),
        }
        let len = file.metadata().map_err(|e| open_err(e.to_string()))?.len();
        let mut store = LogStore {
            file: Arc::new(file),
            path,
            at: HEADER_BYTES,
            capacity: 0,
            buf: Vec::with_capacity(1 << 16),
            live: 0,
            rewrite_min: REWRITE_MIN_BYTES,
            job: None,
            appended: Arc::default(),
        };
        // A rewrite cut by a crash before its rename: the log itself is whole, the copy is
        // dropped (module docs).
        let partial = dir.join(REWRITE_FILE_NAME);
        if std::fs::metadata(&partial).is_ok() {
            tracing::warn!(path = %partial.display(), "dropping an unfinished log rewrite");
            std::fs::remove_file(&partial).map_err(|e| open_err(e.to_string()))?;
        }
        if len == 0 {
            store.grow(INITIAL_CAPACITY)?;
            if let Some(parent) = store.path.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| store.write_err(e))?;
            }
            let loaded = Loaded {
                fresh: true,
                ..Loaded::default()
            };
            return Ok((store, loaded));
        }
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        store
            .file
            .read_exact_at(&mut data, 0)
            .map_err(|e| open_err(e.to_string()))?;
        let loaded = store.replay(&data)?;
        Ok((store, loaded))
    }

    fn replay(&mut self, data: &[u8]) -> Result<Loaded, StorageError> {
        let h = data.get(..24).ok_or_else(|| {
            self.corrupt(format!("{} bytes: shorter than the header", data.len()))
        })?;
        if &h[..8] != MAGIC {
            return Err(self.corrupt("not a walletd log (bad magic)"));
        }
        let mut sum = [0u8; 4];
        sum.copy_from_slice(&h[20..24]);
        if u32::from_le_bytes(sum) != crc32fast::hash(&h[..20]) {
            return Err(self.corrupt("header CRC-32 mismatch"));
        }
        let mut f = [0u8; 4];
        f.copy_from_slice(&h[8..12]);
        let format = u32::from_le_bytes(f);
        if format != LOG_FORMAT {
            return Err(self.corrupt(format!(
                "log format {format}, this release reads format {LOG_FORMAT}"
            )));
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&h[12..20]);
        let capacity = u64::from_le_bytes(c);
        if (data.len() as u64) < capacity || capacity < HEADER_BYTES {
            return Err(self.corrupt(format!(
                "the file is {} bytes, its header says {capacity}: truncated",
                data.len()
            )));
        }
        self.capacity = capacity;
        // Bytes past the capacity (a growth cut by a crash before its header) are ignored.
        let data = &data[..usize::try_from(capacity).unwrap_or(usize::MAX)];
        let mut tables = Tables::default();
        let mut at = HEADER_BYTES as usize;
        loop {
            match read_frame(data, at) {
                Frame::Ok(payload, next) => {
                    tables
                        .apply(payload)
                        .map_err(|w| self.corrupt(format!("record at offset {at}: {w}")))?;
                    at = next;
                }
                Frame::End => {
                    if let Some(off) = data[at..].iter().position(|b| *b != 0) {
                        return Err(self.corrupt(format!(
                            "bytes after the end of the log at offset {}",
                            at + off
                        )));
                    }
                    break;
                }
                Frame::Bad(why, torn_end) => {
                    let end = match torn_end {
                        Some(end) if data[end..].iter().all(|b| *b == 0) => end,
                        _ => return Err(self.corrupt(format!("record at offset {at}: {why}"))),
                    };
                    tracing::warn!(path = %self.path.display(), offset = at, bytes = end - at,
                        why = %why, "torn tail of the log (a commit cut by a crash): zeroed");
                    self.file
                        .write_all_at(&vec![0u8; end - at], at as u64)
                        .and_then(|()| self.file.sync_data())
                        .map_err(|e| self.write_err(e))?;
                    break;
                }
            }
        }
        self.at = at as u64;
        self.live = self.at - HEADER_BYTES;
        tables
            .into_loaded()
            .map_err(|(place, w)| self.corrupt(format!("{place}: {w}")))
    }

    /// Zero-fills the file up to a capacity with room for `needed` more bytes, durably, then
    /// records the new capacity in the header, durably.
    fn grow(&mut self, needed: u64) -> Result<(), StorageError> {
        let step = self.capacity.clamp(INITIAL_CAPACITY, GROWTH_MAX);
        let want = self.at.saturating_add(needed);
        let mut cap = self.capacity.max(HEADER_BYTES).saturating_add(step);
        while cap < want {
            cap = cap.saturating_add(step);
        }
        preallocate(&self.file, self.capacity, cap).map_err(|e| self.write_err(e))?;
        self.capacity = cap;
        Ok(())
    }

    /// Writes the frames in `buf` after the last ones (one `pwrite`), growing the file
    /// first when they do not fit; not durable until [`LogStore::sync`].
    fn append_buf(&mut self) -> Result<(), StorageError> {
        let n = self.buf.len() as u64;
        if self.at.saturating_add(n) > self.capacity {
            self.grow(n)?;
        }
        self.file
            .write_all_at(&self.buf, self.at)
            .map_err(|e| self.write_err(e))?;
        self.at += n;
        self.appended.store(self.at, Ordering::Release);
        Ok(())
    }

    fn append_durably(&mut self) -> Result<(), StorageError> {
        self.append_buf()?;
        self.sync()
    }

    /// Makes everything appended so far durable (`fdatasync`).
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file.sync_data().map_err(|e| self.write_err(e))
    }

    /// Records the seed policy and its hash (first start only).
    pub fn record_policy(&mut self, policy: &wallet_core::Policy) -> Result<(), StorageError> {
        self.buf.clear();
        let hash = policy.hash().0.to_vec();
        push_other(&mut self.buf, &Other::Meta("policy".into(), hash))
            .map_err(|e| self.write_err(e))?;
        let doc = encode_value(policy);
        push_other(&mut self.buf, &Other::Meta("policy_doc".into(), doc))
            .map_err(|e| self.write_err(e))?;
        self.append_durably()
    }

    /// Appends the operations' frames in one write and makes them durable (one `fdatasync`).
    pub fn commit(&mut self, ops: &[&WriteOp]) -> Result<(), StorageError> {
        self.append(ops)?;
        self.sync()?;
        if self.rewrite_ready() {
            self.finish_rewrite()?;
        }
        Ok(())
    }

    /// Appends the operations' frames in one write, not yet durable: the pipelined writer
    /// ([`spawn_pipeline`]) syncs on other threads meanwhile.
    pub fn append(&mut self, ops: &[&WriteOp]) -> Result<(), StorageError> {
        self.buf.clear();
        let mut snapshot = false;
        for op in ops {
            let meta = |k: &str, v: u64| Other::Meta(k.into(), v.to_be_bytes().to_vec());
            let other = match op {
                WriteOp::Record { record, .. } => match record {
                    Record::Event(e) => {
                        push_frame(&mut self.buf, |b| {
                            b.push(TAG_EVENT);
                            b.extend_from_slice(&encode_event(e));
                        })
                        .map_err(|e| self.write_err(e))?;
                        continue;
                    }
                    Record::Ceiling(h) => meta("ceiling", h.0),
                    Record::Watermark(h) => meta("watermark", h.0),
                    Record::Evidence(ev) => Other::Evidence(encode_value(ev)),
                    // The events it folds stay in the file, skipped on load, until a
                    // rewrite drops them (`maybe_start_rewrite`, below).
                    Record::Snapshot(snap) => {
                        snapshot = true;
                        push_frame(&mut self.buf, |b| {
                            b.push(TAG_SNAPSHOT);
                            b.extend_from_slice(&encode_snapshot(snap));
                        })
                        .map_err(|e| self.write_err(e))?;
                        continue;
                    }
                },
                WriteOp::Idem { account, key, rec } => {
                    Other::IdemPut(account.as_str().into(), key.to_string(), (**rec).clone())
                }
                WriteOp::IdemDelete { account, key } => {
                    Other::IdemDelete(account.as_str().into(), key.to_string())
                }
                WriteOp::Restore(on) => meta("restore", u64::from(*on)),
            };
            push_other(&mut self.buf, &other).map_err(|e| self.write_err(e))?;
        }
        self.append_buf()?;
        if snapshot {
            self.maybe_start_rewrite();
        }
        Ok(())
    }

    /// Sets the fewest bytes of records before a rewrite starts (tests and benches).
    pub fn set_rewrite_min(&mut self, bytes: u64) {
        self.rewrite_min = bytes;
    }

    /// Bytes of the file from the header to the end of the last record.
    pub fn used(&self) -> u64 {
        self.at
    }

    /// Starts a rewrite of everything appended so far on a thread of its own when none runs
    /// and the records have grown past [`REWRITE_MIN_BYTES`] and [`REWRITE_GROWTH_FACTOR`]
    /// times what the last rewrite (or open) left. Called after a snapshot is appended: the
    /// rewrite drops the events the last snapshot in that prefix folds.
    pub fn maybe_start_rewrite(&mut self) {
        let records = self.at - HEADER_BYTES;
        if self.job.is_some()
            || records < self.rewrite_min
            || records < self.live.saturating_mul(REWRITE_GROWTH_FACTOR)
        {
            return;
        }
        let (file, path, prefix) = (self.file.clone(), self.path.clone(), self.at);
        let appended = self.appended.clone();
        let job = std::thread::Builder::new()
            .name("walletd-log-rewrite".into())
            .spawn(move || prepare_rewrite(&file, &path, prefix, &appended));
        match job {
            Ok(j) => self.job = Some(j),
            Err(e) => tracing::warn!(error = %e, "cannot start the log rewrite thread"),
        }
    }

    /// True when a rewrite's preparation has ended and [`LogStore::finish_rewrite`] may run.
    pub fn rewrite_ready(&self) -> bool {
        self.job.as_ref().is_some_and(|j| j.is_finished())
    }

    /// Installs a prepared rewrite (waiting for its preparation if it is still running):
    /// copies what was appended since its prefix, makes the copy durable, renames it over the
    /// log and makes the rename durable. Every appended byte is durable after it. A rewrite
    /// that fails before its rename is dropped with a warning and the log goes on as it was;
    /// an error is only returned once the new file is in place but not durably named, which
    /// the writer treats like a failed sync. The caller must not have a sync in flight on the
    /// old file that it still expects to cover later appends ([`Pipeline::finish`] first).
    pub fn finish_rewrite(&mut self) -> Result<Option<RewriteReport>, StorageError> {
        let Some(job) = self.job.take() else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let prepared = job
            .join()
            .unwrap_or_else(|_| Err(self.write_err("the log rewrite thread panicked")));
        let mut p = match prepared.and_then(|mut p| self.copy_tail(&mut p).map(|()| p)) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "log rewrite abandoned; the log goes on unchanged");
                let _ = std::fs::remove_file(rewrite_path(&self.path));
                return Ok(None);
            }
        };
        let before = self.at;
        if let Err(e) = std::fs::rename(&p.path, &self.path) {
            tracing::warn!(error = %e, "log rewrite abandoned at its rename; the log goes on unchanged");
            let _ = std::fs::remove_file(&p.path);
            return Ok(None);
        }
        p.path = self.path.clone();
        self.install(p, before, started)
    }

    /// Appends what the log holds past the prepared prefix to the new file, durably.
    fn copy_tail(&self, p: &mut Prepared) -> Result<(), StorageError> {
        copy_range(&self.file, p, self.at)
            .and_then(|()| p.file.sync_data())
            .map_err(|e| crate::storage::write_err_at(&p.path, e))
    }

    /// After the rename: makes it durable and switches to the new file.
    fn install(
        &mut self,
        p: Prepared,
        before: u64,
        started: std::time::Instant,
    ) -> Result<Option<RewriteReport>, StorageError> {
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.write_err(e))?;
        }
        // Closing the old file frees its blocks (it is unlinked): hundreds of MB take the
        // file system a while, so that happens off the writer.
        let old = std::mem::replace(&mut self.file, Arc::new(p.file));
        let _ = std::thread::Builder::new()
            .name("walletd-log-close".into())
            .spawn(move || drop(old));
        self.at = p.at;
        self.capacity = p.capacity;
        self.live = self.at - HEADER_BYTES;
        let report = RewriteReport {
            before,
            after: self.at,
            tail: p.at - p.compacted - p.caught_up,
            caught_up: p.caught_up,
            prepare: p.took,
            pause: started.elapsed(),
        };
        tracing::info!(
            before = report.before,
            after = report.after,
            tail = report.tail,
            caught_up = report.caught_up,
            prepare_ms = report.prepare.as_millis() as u64,
            pause_ms = report.pause.as_millis() as u64,
            "log rewritten"
        );
        Ok(Some(report))
    }
}

/// Name of the copy a rewrite builds beside the log, renamed over it once complete and
/// durable; one found at open is an unfinished rewrite and is removed.
pub const REWRITE_FILE_NAME: &str = "wallet.log.new";
/// Fewest bytes of records before the log is rewritten.
pub const REWRITE_MIN_BYTES: u64 = 64 << 20;
/// The log is rewritten once its records are this many times what the last rewrite left
/// (so at most about half the file is dead before it is reclaimed).
pub const REWRITE_GROWTH_FACTOR: u64 = 2;

fn rewrite_path(log: &Path) -> PathBuf {
    log.with_file_name(REWRITE_FILE_NAME)
}

/// What one rewrite did.
#[derive(Debug, Clone, Copy)]
pub struct RewriteReport {
    /// Bytes of the log before (header and records).
    pub before: u64,
    /// Bytes after.
    pub after: u64,
    /// Bytes appended during the preparation, copied by the writer at the switch.
    pub tail: u64,
    /// Bytes appended during the preparation that its thread copied (the catch-up).
    pub caught_up: u64,
    /// Time the preparation took on its own thread (the writer went on meanwhile).
    pub prepare: std::time::Duration,
    /// Time the writer spent on the switch (no append meanwhile).
    pub pause: std::time::Duration,
}

/// A rewrite's new file, written and durable up to `at`, not yet named as the log.
#[derive(Debug)]
pub struct Prepared {
    file: File,
    path: PathBuf,
    /// Bytes of the old log it holds the live records of.
    prefix: u64,
    /// End of the compacted records (before any tail copied).
    compacted: u64,
    /// Where the next frame goes.
    at: u64,
    capacity: u64,
    /// Bytes past the first prefix the preparation's thread copied.
    caught_up: u64,
    took: std::time::Duration,
}

/// The catch-up stops once less than this is left to copy: the writer copies the rest at the
/// switch (its pause).
const CATCH_UP_LEFT: u64 = 256 << 10;
/// Most catch-up rounds (the writer may append as fast as a round copies).
const CATCH_UP_ROUNDS: usize = 8;

/// Copies the old log's bytes from the prepared prefix to `to` after the new file's last
/// ones (growing it), and moves both ends on; not durable.
fn copy_range(old: &File, p: &mut Prepared, to: u64) -> std::io::Result<()> {
    let mut tail = vec![0u8; usize::try_from(to.saturating_sub(p.prefix)).unwrap_or(usize::MAX)];
    old.read_exact_at(&mut tail, p.prefix)?;
    let want = p.at + tail.len() as u64;
    if want > p.capacity {
        let cap = want.saturating_add(INITIAL_CAPACITY);
        preallocate(&p.file, p.capacity, cap)?;
        p.capacity = cap;
    }
    p.file.write_all_at(&tail, p.at)?;
    p.at = want;
    p.prefix = p.prefix.max(to);
    Ok(())
}

/// Builds `wallet.log.new` from the first `prefix` bytes of the log (every record in them
/// appended): the live records ([`compact_into`]), zero-filled ahead like a new log, durable.
fn prepare_rewrite(
    old: &File,
    log: &Path,
    prefix: u64,
    appended: &AtomicU64,
) -> Result<Prepared, StorageError> {
    let started = std::time::Instant::now();
    let path = rewrite_path(log);
    let shown = path.clone();
    let err = |e: &dyn std::fmt::Display| crate::storage::write_err_at(&shown, e);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| err(&e))?;
    file.try_lock().map_err(|e| err(&e))?;
    let at = compact_into(old, prefix, &file).map_err(|w| crate::storage::corrupt_at(log, w))?;
    let capacity = at.saturating_add(INITIAL_CAPACITY);
    preallocate(&file, at, capacity).map_err(|e| err(&e))?;
    let mut p = Prepared {
        file,
        path,
        prefix,
        compacted: at,
        at,
        capacity,
        caught_up: 0,
        took: std::time::Duration::ZERO,
    };
    // Catch up with what the writer appended meanwhile, so the switch copies little.
    for _ in 0..CATCH_UP_ROUNDS {
        let end = appended.load(Ordering::Acquire);
        if end.saturating_sub(p.prefix) < CATCH_UP_LEFT {
            break;
        }
        let from = p.at;
        copy_range(old, &mut p, end).map_err(|e| err(&e))?;
        p.caught_up += p.at - from;
    }
    p.file.sync_data().map_err(|e| err(&e))?;
    p.took = started.elapsed();
    Ok(p)
}

/// Bytes a rewrite reads and writes at a time.
const REWRITE_CHUNK: usize = 1 << 20;

/// Reads a file's frames in order, a chunk at a time (a rewrite never holds the log in memory).
struct Frames<'a> {
    file: &'a File,
    end: u64,
    base: u64,
    buf: Vec<u8>,
}

impl<'a> Frames<'a> {
    fn new(file: &'a File, end: u64) -> Frames<'a> {
        Frames {
            file,
            end,
            base: 0,
            buf: Vec::new(),
        }
    }

    /// The bytes `[at, at + len)`, read ahead by a chunk when not in the buffer.
    fn get(&mut self, at: u64, len: usize) -> Result<&[u8], String> {
        let want = at.saturating_add(len as u64);
        if want > self.end {
            return Err(format!("record at offset {at} runs past the rewrite's end"));
        }
        if at < self.base || want > self.base + self.buf.len() as u64 {
            let n = (self.end - at).min(len.max(REWRITE_CHUNK) as u64) as usize;
            self.buf.resize(n, 0);
            self.file
                .read_exact_at(&mut self.buf, at)
                .map_err(|e| e.to_string())?;
            self.base = at;
        }
        let off = (at - self.base) as usize;
        Ok(&self.buf[off..off + len])
    }

    /// Calls `f(offset, frame, payload)` for each frame from the header to the end.
    fn each(
        &mut self,
        mut f: impl FnMut(u64, &[u8], &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut at = HEADER_BYTES;
        while at < self.end {
            let head = self.get(at, FRAME_HEAD)?;
            let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let frame = self.get(at, FRAME_HEAD + n)?;
            match read_frame(frame, 0) {
                Frame::Ok(payload, len) => {
                    f(at, &frame[..len], payload)?;
                    at += len as u64;
                }
                Frame::End => break,
                Frame::Bad(why, _) => return Err(format!("record at offset {at}: {why}")),
            }
        }
        Ok(())
    }
}

/// Appends to a file from the header on, a chunk at a time.
struct Out<'a> {
    file: &'a File,
    at: u64,
    buf: Vec<u8>,
}

impl Out<'_> {
    fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= REWRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        self.file
            .write_all_at(&self.buf, self.at)
            .map_err(|e| e.to_string())?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Writes the live records of the log's first `prefix` bytes (every frame in them whole) to
/// `out` after its header, as frames, and returns where they end: every event the last
/// snapshot among them does not fold, the last value of each meta key, the idempotency results
/// not deleted, every evidence record. Replaying them gives the same tables as replaying the
/// prefix, less the folded events. Two passes over the prefix (the first finds the last
/// snapshot and the live results, by offset), a chunk in memory at a time.
fn compact_into(old: &File, prefix: u64, out: &File) -> Result<u64, String> {
    let mut meta: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut idem: BTreeMap<(String, String), (u64, usize)> = BTreeMap::new();
    let mut evidence: Vec<(u64, usize)> = Vec::new();
    let mut frames = Frames::new(old, prefix);
    frames.each(|at, frame, payload| {
        let body = match payload.split_first() {
            Some((&TAG_OTHER, body)) => body,
            Some((&TAG_SNAPSHOT, body)) => {
                meta.insert("snapshot".into(), body.to_vec());
                return Ok(());
            }
            _ => return Ok(()),
        };
        match decode_value::<Other>(body).map_err(|e| format!("record at offset {at}: {e}"))? {
            Other::Meta(k, v) => {
                meta.insert(k, v);
            }
            Other::IdemPut(a, k, _) => {
                idem.insert((a, k), (at, frame.len()));
            }
            Other::IdemDelete(a, k) => {
                idem.remove(&(a, k));
            }
            Other::Evidence(_) => evidence.push((at, frame.len())),
        }
        Ok(())
    })?;
    let snapshot = match meta.get("snapshot") {
        Some(v) => Some(decode_snapshot(v).map_err(|e| format!("meta[snapshot]: {e}"))?),
        None => None,
    };
    let gaps = crate::storage::GapCheck::after(snapshot.as_ref());
    let mut w = Out {
        file: out,
        at: HEADER_BYTES,
        buf: Vec::with_capacity(2 * REWRITE_CHUNK),
    };
    frames.each(|at, frame, payload| match payload.split_first() {
        Some((&TAG_EVENT, body)) => {
            let e = decode_event(body).map_err(|e| format!("record at offset {at}: {e}"))?;
            if gaps.folds(e.id.origin.as_str(), e.id.seq) {
                return Ok(());
            }
            w.push(frame)
        }
        Some((&TAG_OTHER | &TAG_SNAPSHOT, _)) => Ok(()),
        _ => Err(format!("record at offset {at}: unknown record tag")),
    })?;
    let mut one = Vec::new();
    for (k, v) in meta {
        one.clear();
        if k == "snapshot" {
            push_frame(&mut one, |b| {
                b.push(TAG_SNAPSHOT);
                b.extend_from_slice(&v);
            })?;
        } else {
            push_other(&mut one, &Other::Meta(k, v))?;
        }
        w.push(&one)?;
    }
    // The kept results and evidence, read back in file order.
    let mut kept: Vec<(u64, usize)> = idem.into_values().chain(evidence).collect();
    kept.sort_unstable();
    for (at, len) in kept {
        let frame = frames.get(at, len)?.to_vec();
        w.push(&frame)?;
    }
    w.flush()?;
    Ok(w.at)
}

/// Threads that run `fdatasync` for the pipelined writer, at most this many at once: a
/// write that lands while one sync is in flight starts its own at once instead of waiting
/// for it (docs/performance.md, step 1).
pub const SYNC_THREADS: usize = 2;

/// What the writer appended and what is durable, shared with the sync threads.
#[derive(Debug, Default)]
struct SyncState {
    /// Highest (op seq, persistence index) appended.
    written: (u64, u64),
    /// Highest appended that a sync in flight or done covers.
    claimed: (u64, u64),
    /// Highest made durable (reported).
    durable: (u64, u64),
    /// Syncs in flight.
    syncing: usize,
    /// The writer stopped: the threads end once everything appended is synced.
    stop: bool,
    /// A sync failed: the threads end at once.
    failed: bool,
}

/// The pipelined commit path of the log: the caller's thread appends batches (one `pwrite`
/// each) as they come, and up to [`SYNC_THREADS`] threads make them durable; each sync
/// covers everything appended before it started and reports it (`report(seq, index)`, in
/// increasing order) the moment it returns. A batch waits for no timer and no other batch:
/// it is written at once and synced as soon as a sync thread is free.
pub struct Pipeline {
    state: Arc<(Mutex<SyncState>, Condvar)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the sync threads over `store`'s file. `report` is called with the highest
    /// (seq, index) durable after each sync, or `None` once when a sync failed.
    pub fn start(
        store: &LogStore,
        report: impl Fn(Option<(u64, u64)>) -> bool + Send + Sync + 'static,
    ) -> Result<Pipeline, StorageError> {
        let state: Arc<(Mutex<SyncState>, Condvar)> = Arc::default();
        let report = Arc::new(report);
        let mut threads = Vec::with_capacity(SYNC_THREADS);
        for i in 0..SYNC_THREADS {
            let (state, report, file) = (state.clone(), report.clone(), store.file.clone());
            let path = store.path.display().to_string();
            let t = std::thread::Builder::new()
                .name(format!("walletd-sync-{i}"))
                .spawn(move || sync_loop(&state, &file, &path, &*report))
                .map_err(|e| store.write_err(format!("cannot start a sync thread: {e}")))?;
            threads.push(t);
        }
        Ok(Pipeline { state, threads })
    }

    /// True once a sync failed (nothing more will be reported).
    pub fn failed(&self) -> bool {
        let (m, _) = &*self.state;
        m.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .failed
    }

    /// Hands the sync threads everything appended up to (seq, index). True when a sync
    /// thread is free to start on it at once; false when every one is busy (then it is
    /// synced when the first returns, and a batch sent meanwhile would wait just as long).
    pub fn appended(&self, seq: u64, index: u64) -> bool {
        let (m, cv) = &*self.state;
        let mut st = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        st.written = (st.written.0.max(seq), st.written.1.max(index));
        cv.notify_one();
        st.syncing < SYNC_THREADS
    }

    /// Waits until everything appended is durable (or a sync failed), then stops the threads.
    pub fn finish(self) {
        {
            let (m, cv) = &*self.state;
            let mut st = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            st.stop = true;
            cv.notify_all();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn sync_loop(
    state: &(Mutex<SyncState>, Condvar),
    file: &File,
    path: &str,
    report: &(dyn Fn(Option<(u64, u64)>) -> bool + Send + Sync),
) {
    let (m, cv) = state;
    let mut st = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        if st.failed {
            return;
        }
        if st.written != st.claimed {
            let target = st.written;
            st.claimed = target;
            st.syncing += 1;
            drop(st);
            let result = file.sync_data();
            st = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            st.syncing -= 1;
            match result {
                Ok(()) => {
                    // A later sync may have returned first: report only progress, in order.
                    if target.0 > st.durable.0 || target.1 > st.durable.1 {
                        st.durable = (st.durable.0.max(target.0), st.durable.1.max(target.1));
                        if !report(Some(st.durable)) {
                            st.failed = true;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(path, error = %e, "storage sync failed; no further acknowledgements");
                    report(None);
                    st.failed = true;
                }
            }
            cv.notify_all();
            continue;
        }
        if st.stop {
            return;
        }
        st = cv
            .wait(st)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}

/// The tables, rebuilt from the log (later records win, like a redb insert).
#[derive(Default)]
struct Tables {
    meta: BTreeMap<String, Vec<u8>>,
    events: BTreeMap<(String, u64), Event>,
    idem: BTreeMap<(String, String), IdemRecord>,
    evidence: BTreeMap<(String, u64, [u8; 32]), Evidence>,
}

impl Tables {
    fn apply(&mut self, payload: &[u8]) -> Result<(), String> {
        let (&tag, body) = payload.split_first().ok_or("empty record")?;
        match tag {
            TAG_EVENT => {
                let e = decode_event(body).map_err(|e| e.to_string())?;
                self.events
                    .insert((e.id.origin.as_str().to_string(), e.id.seq), e);
            }
            TAG_SNAPSHOT => {
                self.meta.insert("snapshot".into(), body.to_vec());
            }
            TAG_OTHER => match decode_value::<Other>(body).map_err(|e| e.to_string())? {
                Other::Meta(k, v) => {
                    self.meta.insert(k, v);
                }
                Other::IdemPut(a, k, rec) => {
                    self.idem.insert((a, k), rec);
                }
                Other::IdemDelete(a, k) => {
                    self.idem.remove(&(a, k));
                }
                Other::Evidence(bytes) => {
                    let ev: Evidence = decode_value(&bytes).map_err(|e| e.to_string())?;
                    let id = ev.id();
                    let digest = crate::storage::evidence_digest(&bytes);
                    self.evidence
                        .insert((id.origin.as_str().to_string(), id.seq, digest), ev);
                }
            },
            t => return Err(format!("unknown record tag {t}")),
        }
        Ok(())
    }

    fn into_loaded(self) -> Result<Loaded, (String, String)> {
        let mut out = Loaded::default();
        crate::storage::apply_meta(&mut out, &self.meta)?;
        let mut gaps = crate::storage::GapCheck::after(out.snapshot.as_ref());
        for ((origin, seq), e) in self.events {
            if gaps.folds(&origin, seq) {
                continue;
            }
            gaps.check(&origin, seq, &e)?;
            out.events.push(e);
        }
        for ((account, key), rec) in self.idem {
            let acct = AccountId::new(&account)
                .map_err(|w| (format!("idempotency[{account}/{key}]"), w.to_string()))?;
            out.idem.push((acct, key, rec));
        }
        out.evidence = self.evidence.into_values().collect();
        out.fresh = out.events.is_empty() && out.recorded_policy.is_none() && out.ceiling.0 == 0;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_core::{
        Amount, Config, Currency, Hlc, Kind, Output, Policy, RegionId, Replica, TxRequest,
    };

    fn events(n: usize) -> Vec<Event> {
        let eu = RegionId::new("eu").unwrap();
        let mut r = Replica::new(Config::new(eu, vec![eu], Policy::zero()), Hlc::ZERO);
        let mut out = Vec::new();
        for i in 0..n {
            r.submit(
                1_000 + i as u64,
                TxRequest {
                    account: AccountId::new("alice").unwrap(),
                    kind: Kind::Deposit,
                    amount: Amount::parse("10", Currency::USD).unwrap(),
                    currency: Currency::USD,
                    idempotency_key: Some(format!("k{i}")),
                    reference: Some("MARKER".into()),
                },
            )
            .unwrap();
            while let Some(o) = r.poll_output() {
                if let Output::Persist {
                    record: Record::Event(e),
                    ..
                } = o
                {
                    out.push(e);
                }
            }
        }
        out
    }

    fn op(i: u64, e: &Event) -> WriteOp {
        WriteOp::Record {
            index: i,
            record: Record::Event(e.clone()),
        }
    }

    fn write(dir: &Path, evs: &[Event]) {
        let (mut s, loaded) = LogStore::open(dir).unwrap();
        assert!(loaded.fresh);
        s.record_policy(&Policy::zero()).unwrap();
        for (i, e) in evs.iter().enumerate() {
            let rec = Arc::new(IdemRecord {
                fingerprint: [i as u8; 32],
                status: 201,
                body: "{}".into(),
                created_ms: 5,
            });
            let account = AccountId::new("alice").unwrap();
            let ops = [
                op(i as u64 + 1, e),
                WriteOp::Idem {
                    account: account.clone(),
                    key: format!("k{i}").into(),
                    rec,
                },
                WriteOp::Record {
                    index: 0,
                    record: Record::Ceiling(Hlc(100 + i as u64)),
                },
            ];
            s.commit(&ops.iter().collect::<Vec<_>>()).unwrap();
        }
        let del = WriteOp::IdemDelete {
            account: AccountId::new("alice").unwrap(),
            key: "k0".into(),
        };
        s.commit(&[&del]).unwrap();
    }

    fn open_err(dir: &Path) -> String {
        match LogStore::open(dir) {
            Ok(_) => panic!("opened a damaged log"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn round_trip_rebuilds_every_table_across_growth() {
        let dir = tempfile::tempdir().unwrap();
        // Enough records to grow past the initial capacity.
        let evs = events(4_000);
        write(dir.path(), &evs);
        let len = std::fs::metadata(LogStore::file_path(dir.path()))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > INITIAL_CAPACITY, "the file grew: {len}");
        let (_s, l) = LogStore::open(dir.path()).unwrap();
        assert_eq!(l.events, evs);
        assert_eq!(l.ceiling, Hlc(100 + evs.len() as u64 - 1));
        assert_eq!(l.recorded_policy, Some(Policy::zero().hash()));
        assert_eq!(l.idem.len(), evs.len() - 1, "k0 was deleted");
        assert!(!l.fresh);
    }

    fn flip(dir: &Path, at: u64) {
        let path = LogStore::file_path(dir);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at as usize] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
    }

    #[test]
    fn a_flipped_byte_before_the_last_record_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &events(5));
        let bytes = std::fs::read(LogStore::file_path(dir.path())).unwrap();
        let marker = bytes
            .windows(6)
            .position(|w| w == b"MARKER")
            .unwrap_or_else(|| panic!("marker not found"));
        flip(dir.path(), marker as u64);
        let err = open_err(dir.path());
        assert!(
            err.contains("corrupt") && err.contains("CRC-32 mismatch"),
            "{err}"
        );
        assert!(err.contains("wallet.log"), "{err}");
    }

    #[test]
    fn a_torn_tail_is_zeroed_and_the_rest_opens() {
        let dir = tempfile::tempdir().unwrap();
        let evs = events(3);
        write(dir.path(), &evs);
        let (s, _) = LogStore::open(dir.path()).unwrap();
        let end = s.at;
        drop(s);
        // A last commit cut by a crash: its frame is there, its payload half written.
        let (mut s, _) = LogStore::open(dir.path()).unwrap();
        let more = events(4);
        s.commit(&[&op(4, &more[3])]).unwrap();
        let written = s.at;
        drop(s);
        let path = LogStore::file_path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let half = (end + (written - end) / 2) as usize;
        bytes[half..written as usize]
            .iter_mut()
            .for_each(|b| *b = 0);
        std::fs::write(&path, &bytes).unwrap();
        let (s, l) = LogStore::open(dir.path()).unwrap();
        assert_eq!(l.events, evs, "the torn record is dropped, the rest kept");
        assert_eq!(s.at, end);
        drop(s);
        let after = std::fs::read(&path).unwrap();
        assert!(
            after[end as usize..].iter().all(|b| *b == 0),
            "the tail was zeroed"
        );
        // Reopening again finds a clean log.
        let (_s, l) = LogStore::open(dir.path()).unwrap();
        assert_eq!(l.events, evs);
    }

    #[test]
    fn truncation_a_bad_header_and_bytes_past_the_end_refuse_to_open() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &events(5));
        let path = LogStore::file_path(dir.path());
        let good = std::fs::read(&path).unwrap();
        // Truncated.
        std::fs::write(&path, &good[..good.len() / 3]).unwrap();
        assert!(open_err(dir.path()).contains("truncated"));
        // A damaged header.
        let mut bad = good.clone();
        bad[13] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(open_err(dir.path()).contains("header CRC-32 mismatch"));
        // Garbage after the end of the log.
        let mut bad = good.clone();
        let last = bad.len() - 10;
        bad[last] = 7;
        std::fs::write(&path, &bad).unwrap();
        assert!(open_err(dir.path()).contains("after the end of the log"));
        // A length no write makes, in the middle.
        let mut bad = good;
        bad[HEADER_BYTES as usize + 3] = 0x7f;
        std::fs::write(&path, &bad).unwrap();
        assert!(open_err(dir.path()).contains("beyond the limit"));
    }

    /// A snapshot with a few hundred thousand keys within retention is one frame of tens
    /// of MiB (the soak wrote one of 19 MB when the limit was 16 MiB, and its log could no
    /// longer be opened): what is written must read back.
    #[test]
    fn a_frame_of_tens_of_mib_reads_back() {
        let mut buf = Vec::new();
        push_frame(&mut buf, |b| b.resize(b.len() + (24 << 20), 7)).unwrap();
        buf.extend_from_slice(&[0u8; 16]);
        match read_frame(&buf, 0) {
            Frame::Ok(p, end) => assert_eq!((p.len(), end), (24 << 20, FRAME_HEAD + (24 << 20))),
            Frame::End => panic!("end"),
            Frame::Bad(why, _) => panic!("{why}"),
        }
    }

    /// The soak's snapshots (600k keys within retention, 19 MB) outgrew a value's 16 MiB
    /// decoding limit: the log could not be opened, nor rewritten. A snapshot is its own frame.
    #[test]
    fn a_snapshot_over_16_mib_reads_back_and_survives_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        compacted_log(dir.path());
        let (mut s, l) = LogStore::open(dir.path()).unwrap();
        let mut snap = l.snapshot.expect("a snapshot");
        snap.body.ext.push(("pad".into(), vec![7; 20 << 20]));
        let op = WriteOp::Record {
            index: 0,
            record: Record::Snapshot(Box::new(snap.clone())),
        };
        s.commit(&[&op]).unwrap();
        drop(s);
        let (mut s, l) = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            l.snapshot.map(|x| encode_snapshot(&x)),
            Some(encode_snapshot(&snap))
        );
        s.set_rewrite_min(0);
        s.live = 0;
        s.maybe_start_rewrite();
        assert!(s.finish_rewrite().unwrap().is_some());
        drop(s);
        let (_s, l) = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            l.snapshot.map(|x| encode_snapshot(&x)),
            Some(encode_snapshot(&snap))
        );
    }

    #[test]
    fn a_second_process_cannot_open_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let _first = LogStore::open(dir.path()).unwrap();
        assert!(open_err(dir.path()).contains("already open"));
    }

    #[test]
    fn the_pipeline_reports_every_append_durable_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = LogStore::open(dir.path()).unwrap();
        let durable = Arc::new(AtomicU64::new(0));
        let d = durable.clone();
        let p = Pipeline::start(&s, move |r| {
            let (seq, _) = r.unwrap_or_else(|| panic!("sync failed"));
            assert!(seq > d.swap(seq, Ordering::SeqCst), "reports go forward");
            true
        })
        .unwrap();
        let evs = events(50);
        for (i, e) in evs.iter().enumerate() {
            s.append(&[&op(i as u64 + 1, e)]).unwrap();
            p.appended(i as u64 + 1, i as u64 + 1);
        }
        p.finish();
        assert_eq!(durable.load(Ordering::SeqCst), 50);
        drop(s);
        let (_s, l) = LogStore::open(dir.path()).unwrap();
        assert_eq!(l.events, evs);
    }

    /// Persists what the replica asks for, one commit each, with an idempotency result for
    /// `key`.
    fn pump(r: &mut Replica, s: &mut LogStore, key: Option<String>) {
        while let Some(o) = r.poll_output() {
            if let Output::Persist { index, record } = o {
                let rec = WriteOp::Record { index, record };
                let idem = key.clone().map(|k| WriteOp::Idem {
                    account: AccountId::new("alice").unwrap(),
                    key: k.into(),
                    rec: Arc::new(IdemRecord {
                        fingerprint: [7; 32],
                        status: 201,
                        body: "{}".into(),
                        created_ms: 5,
                    }),
                });
                let mut ops = vec![&rec];
                ops.extend(idem.as_ref());
                s.commit(&ops).unwrap();
                r.handle_persisted(index);
            }
        }
    }

    fn deposit(r: &mut Replica, s: &mut LogStore, i: u64) {
        r.submit(
            1_000 + i,
            TxRequest {
                account: AccountId::new("alice").unwrap(),
                kind: Kind::Deposit,
                amount: Amount::parse("1", Currency::USD).unwrap(),
                currency: Currency::USD,
                idempotency_key: None,
                reference: Some("MARKER".into()),
            },
        )
        .unwrap();
        pump(r, s, Some(format!("k{i}")));
    }

    /// A log with a policy, 40 keyed deposits (keys k0..k39, k0 then deleted), a snapshot
    /// folding the first 30 (persisted after them), then 10 more deposits.
    fn compacted_log(dir: &Path) {
        let eu = RegionId::new("eu").unwrap();
        let mut r = Replica::new(Config::new(eu, vec![eu], Policy::zero()), Hlc::ZERO);
        let (mut s, _) = LogStore::open(dir).unwrap();
        s.record_policy(&Policy::zero()).unwrap();
        for i in 0..30 {
            deposit(&mut r, &mut s, i);
        }
        for now in [2_000, 3_000, 4_000] {
            r.handle_timeout(now);
            pump(&mut r, &mut s, None);
        }
        let snap = r.compact().expect("everything is settled");
        assert_eq!(snap.body.members[0].seq, 30);
        pump(&mut r, &mut s, None);
        for i in 30..40 {
            deposit(&mut r, &mut s, i);
        }
        s.commit(&[&delete("k0")]).unwrap();
    }

    /// What a load reads back, comparable.
    fn summary(l: &Loaded) -> String {
        let snap = l.snapshot.as_ref().map(encode_snapshot);
        format!(
            "events {:?} idem {:?} ceiling {:?} watermark {:?} policy {:?} doc {} snapshot {} evidence {}",
            l.events,
            l.idem,
            l.ceiling,
            l.watermark,
            l.recorded_policy,
            l.recorded_policy_doc.is_some(),
            snap.map_or(0, |b| crc32fast::hash(&b)),
            l.evidence.len()
        )
    }

    fn copy_dir(from: &Path, to: &Path) {
        for f in std::fs::read_dir(from).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }

    #[test]
    fn a_rewrite_drops_the_folded_events_and_loads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        compacted_log(dir.path());
        let (mut s, before) = LogStore::open(dir.path()).unwrap();
        assert_eq!(before.events.len(), 10, "the 30 folded events are skipped");
        let old_used = s.used();
        s.set_rewrite_min(0);
        s.live = 0;
        s.maybe_start_rewrite();
        let report = s.finish_rewrite().unwrap().expect("a rewrite ran");
        assert_eq!(report.before, old_used);
        assert!(report.after < old_used, "{report:?}");
        drop(s);
        let bytes = std::fs::read(LogStore::file_path(dir.path())).unwrap();
        let markers = bytes.windows(6).filter(|w| *w == b"MARKER").count();
        assert_eq!(markers, 10, "only the events after the snapshot are left");
        let (_s, after) = LogStore::open(dir.path()).unwrap();
        assert_eq!(summary(&after), summary(&before));
        assert_eq!(after.idem.len(), 39, "k0 stays deleted");
    }

    fn delete(key: &str) -> WriteOp {
        WriteOp::IdemDelete {
            account: AccountId::new("alice").unwrap(),
            key: key.into(),
        }
    }

    /// What a log that got `ops` committed after [`compacted_log`] loads, without a rewrite.
    fn expected_after(base: &Path, ops: &[&WriteOp]) -> String {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base, dir.path());
        let (mut s, _) = LogStore::open(dir.path()).unwrap();
        for op in ops {
            s.commit(&[op]).unwrap();
        }
        drop(s);
        summary(&LogStore::open(dir.path()).unwrap().1)
    }

    /// A crash at each step of a rewrite leaves a log that loads exactly what it held, the
    /// records appended during the rewrite included, and appends go on after it.
    #[test]
    fn a_rewrite_cut_at_any_step_loads_the_same() {
        let base = tempfile::tempdir().unwrap();
        compacted_log(base.path());
        let (during, later) = (delete("k1"), delete("k2"));
        let want = expected_after(base.path(), &[&during]);
        let want_later = expected_after(base.path(), &[&during, &later]);
        assert_ne!(want, want_later);
        // Cut after: 0 the copy half written, 1 the copy written and durable, 2 the tail
        // copied, 3 the rename (the rewrite done); 4 done and appended to after.
        for step in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(base.path(), dir.path());
            let (mut s, _) = LogStore::open(dir.path()).unwrap();
            let mut p = prepare_rewrite(&s.file, &s.path, s.at, &AtomicU64::new(0)).unwrap();
            // Appended while the copy was prepared: it reaches the new file as the tail.
            s.commit(&[&during]).unwrap();
            let copy = rewrite_path(&s.path);
            if step == 0 {
                let len = std::fs::metadata(&copy).unwrap().len();
                let f = OpenOptions::new().write(true).open(&copy).unwrap();
                f.set_len(len / 2).unwrap();
            }
            if step >= 2 {
                s.copy_tail(&mut p).unwrap();
            }
            if step >= 3 {
                std::fs::rename(&p.path, &s.path).unwrap();
                p.path = s.path.clone();
                s.install(p, 0, std::time::Instant::now()).unwrap();
            } else {
                drop(p);
            }
            if step == 4 {
                s.commit(&[&later]).unwrap();
            }
            drop(s);
            let (_s, l) = LogStore::open(dir.path()).unwrap();
            assert!(!copy.exists(), "step {step}: an unfinished copy is removed");
            let want = if step == 4 { &want_later } else { &want };
            assert_eq!(&summary(&l), want, "step {step}");
            let folded_left = std::fs::read(LogStore::file_path(dir.path()))
                .unwrap()
                .windows(6)
                .filter(|w| *w == b"MARKER")
                .count();
            assert_eq!(folded_left, if step >= 3 { 10 } else { 40 }, "step {step}");
        }
    }

    #[test]
    fn a_rewrite_of_a_log_larger_than_its_chunk_keeps_every_live_record() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &events(10_000));
        let (mut s, before) = LogStore::open(dir.path()).unwrap();
        assert!(s.used() > REWRITE_CHUNK as u64, "{}", s.used());
        s.set_rewrite_min(0);
        s.live = 0;
        s.maybe_start_rewrite();
        let report = s.finish_rewrite().unwrap().expect("a rewrite ran");
        // Nothing is folded: only the overwritten meta values and the deleted key go.
        assert!(report.after < report.before, "{report:?}");
        drop(s);
        let (_s, after) = LogStore::open(dir.path()).unwrap();
        assert_eq!(summary(&after), summary(&before));
    }

    /// What the writer appended while the copy was prepared is copied by the preparing
    /// thread (the catch-up), not at the switch.
    #[test]
    fn the_preparation_catches_up_with_later_appends() {
        let base = tempfile::tempdir().unwrap();
        compacted_log(base.path());
        let ops: Vec<WriteOp> = (0..12_000).map(|i| delete(&format!("gone{i}"))).collect();
        let refs: Vec<&WriteOp> = ops.iter().collect();
        let want = expected_after(base.path(), &refs);
        let (mut s, _) = LogStore::open(base.path()).unwrap();
        let prefix = s.at;
        s.commit(&refs).unwrap();
        assert!(s.at - prefix >= CATCH_UP_LEFT, "{}", s.at - prefix);
        let mut p = prepare_rewrite(&s.file, &s.path, prefix, &s.appended).unwrap();
        assert_eq!(
            p.caught_up,
            s.at - prefix,
            "everything appended was caught up"
        );
        s.copy_tail(&mut p).unwrap();
        std::fs::rename(&p.path, &s.path).unwrap();
        p.path = s.path.clone();
        let report = s.install(p, 0, std::time::Instant::now()).unwrap();
        assert_eq!(
            report.map(|r| r.tail),
            Some(0),
            "nothing left for the switch"
        );
        drop(s);
        let (_s, l) = LogStore::open(base.path()).unwrap();
        assert_eq!(summary(&l), want);
    }

    #[test]
    fn a_rewrite_starts_only_after_enough_growth() {
        let dir = tempfile::tempdir().unwrap();
        compacted_log(dir.path());
        let (mut s, _) = LogStore::open(dir.path()).unwrap();
        s.maybe_start_rewrite();
        assert!(s.job.is_none(), "below REWRITE_MIN_BYTES");
        s.set_rewrite_min(0);
        s.maybe_start_rewrite();
        assert!(s.job.is_none(), "not yet twice what the open left");
        s.live = (s.at - HEADER_BYTES) / 2;
        s.maybe_start_rewrite();
        assert!(s.job.is_some());
        assert!(s.finish_rewrite().unwrap().is_some());
    }
}
