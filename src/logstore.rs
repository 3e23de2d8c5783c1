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
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};
use wallet_core::wire::{decode_event, decode_value, encode_event, encode_snapshot, encode_value};
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
/// Largest payload a frame may hold.
pub const FRAME_PAYLOAD_MAX: usize = 16 << 20;

const MAGIC: &[u8; 8] = b"WALLETLG";
const FRAME_HEAD: usize = 8;
const TAG_EVENT: u8 = 1;
const TAG_OTHER: u8 = 2;

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

pub(crate) fn push_frame(buf: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEAD]);
    payload(buf);
    let len = u32::try_from(buf.len() - start - FRAME_HEAD).unwrap_or(u32::MAX);
    let crc = frame_crc(len.to_le_bytes(), &buf[start + FRAME_HEAD..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn push_other(buf: &mut Vec<u8>, o: &Other) {
    push_frame(buf, |b| {
        b.push(TAG_OTHER);
        b.extend_from_slice(&encode_value(o));
    });
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
        };
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
        let zeros = vec![0u8; 1 << 20];
        let mut off = self.capacity;
        while off < cap {
            let n = (cap - off).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], off)
                .map_err(|e| self.write_err(e))?;
            off += n as u64;
        }
        self.file.sync_data().map_err(|e| self.write_err(e))?;
        self.file
            .write_all_at(&header(cap), 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| self.write_err(e))?;
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
        push_other(&mut self.buf, &Other::Meta("policy".into(), hash));
        let doc = encode_value(policy);
        push_other(&mut self.buf, &Other::Meta("policy_doc".into(), doc));
        self.append_durably()
    }

    /// Appends the operations' frames in one write and makes them durable (one `fdatasync`).
    pub fn commit(&mut self, ops: &[&WriteOp]) -> Result<(), StorageError> {
        self.append(ops)?;
        self.sync()
    }

    /// Appends the operations' frames in one write, not yet durable: the pipelined writer
    /// ([`spawn_pipeline`]) syncs on other threads meanwhile.
    pub fn append(&mut self, ops: &[&WriteOp]) -> Result<(), StorageError> {
        self.buf.clear();
        for op in ops {
            let meta = |k: &str, v: u64| Other::Meta(k.into(), v.to_be_bytes().to_vec());
            let other = match op {
                WriteOp::Record { record, .. } => match record {
                    Record::Event(e) => {
                        push_frame(&mut self.buf, |b| {
                            b.push(TAG_EVENT);
                            b.extend_from_slice(&encode_event(e));
                        });
                        continue;
                    }
                    Record::Ceiling(h) => meta("ceiling", h.0),
                    Record::Watermark(h) => meta("watermark", h.0),
                    Record::Evidence(ev) => Other::Evidence(encode_value(ev)),
                    // The events it folds stay in the file (the log only grows) and are
                    // skipped on load.
                    Record::Snapshot(snap) => Other::Meta("snapshot".into(), encode_snapshot(snap)),
                },
                WriteOp::Idem { account, key, rec } => {
                    Other::IdemPut(account.as_str().into(), key.to_string(), (**rec).clone())
                }
                WriteOp::IdemDelete { account, key } => {
                    Other::IdemDelete(account.as_str().into(), key.to_string())
                }
                WriteOp::Restore(on) => meta("restore", u64::from(*on)),
            };
            push_other(&mut self.buf, &other);
        }
        self.append_buf()
    }
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
    use std::sync::atomic::{AtomicU64, Ordering};
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
}
