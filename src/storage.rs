//! Durable storage: the interface ([`Storage`], [`Backend`]: `[storage] backend`), the redb
//! store, and the group-commit writer thread. The default backend is the append-only log
//! ([`crate::logstore`], with its pipelined syncs); redb is the other.
//!
//! The redb store: one file, `<data_dir>/wallet.redb`, four tables (the log rebuilds the same
//! four in memory):
//! - `events`: `(origin, seq)` -> checksum ‖ `wire::encode_event(event)`;
//! - `meta`: `"ceiling"`, `"watermark"`, `"policy"` (seed policy hash recorded at first
//!   start), `"restore"` (a restore from peers is in progress), `"format"`, `"snapshot"` (the
//!   last `Record::Snapshot`, `wire::encode_snapshot`: the events it folds are deleted from
//!   `events` in the same transaction);
//! - `idempotency`: `(account, key)` -> checksum ‖ encoded [`IdemRecord`];
//! - `evidence`: `(origin, seq, SHA-256 of the payload)` -> checksum ‖
//!   `wire::encode_value(evidence)`: proof that a member broke the protocol
//!   ([`wallet_core::Evidence`]), handed back to the replica at start so the origin stays
//!   frozen across restarts.
//!
//! Every value carries its own checksum (the first 8 bytes of SHA-256 over the table name, the
//! key and the payload) on top of redb's page checksums, verified on load: a corrupted or
//! truncated file makes the node refuse to start with a message naming the file and what is
//! wrong. The writer ([`spawn_writer`]) takes everything queued (up to a bound), writes it in
//! ONE durable transaction (fsync), then reports the highest operation durable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use wallet_core::wire::{
    decode_event, decode_snapshot, decode_value, encode_event, encode_snapshot, encode_value,
};
use wallet_core::{AccountId, Event, Evidence, Hlc, PolicyHash, Record, RegionId, Snapshot};

use crate::metrics::Metrics;

const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const IDEM: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");
const EVIDENCE: TableDefinition<(&str, u64, &[u8]), &[u8]> = TableDefinition::new("evidence");

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "wallet.redb";
/// Name of the marker file that says which region and cluster own a data directory.
pub const MARKER_FILE_NAME: &str = "walletd.marker";
/// Storage format version written in `meta`.
pub const STORAGE_FORMAT: u8 = 1;
/// Bytes of the per-value checksum.
pub const CHECKSUM_BYTES: usize = 8;
/// Most write batches queued to the writer (backpressure beyond it).
pub const WRITER_QUEUE_BATCHES_MAX: usize = 256;
/// Test seam, in debug builds only (a release ignores it): while the file this variable
/// names exists, the writer holds every batch it takes, unwritten (tests/lostdisk.rs: a
/// region whose writes have not reached its disk when it is killed).
pub const TEST_HOLD_WRITES_ENV: &str = "WALLETD_TEST_HOLD_WRITES";
/// How often a held writer looks for the file again.
#[cfg(debug_assertions)]
const TEST_HOLD_WRITES_POLL_MS: u64 = 5;

/// [`TEST_HOLD_WRITES_ENV`]: returns once the file it names is gone (at once without it).
fn test_hold_writes() {
    #[cfg(debug_assertions)]
    {
        static FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
        let file = FILE.get_or_init(|| std::env::var_os(TEST_HOLD_WRITES_ENV).map(PathBuf::from));
        let Some(file) = file else {
            return;
        };
        if file.exists() {
            tracing::warn!(file = %file.display(), "test seam: writes held while this file exists");
        }
        while file.exists() {
            std::thread::sleep(std::time::Duration::from_millis(TEST_HOLD_WRITES_POLL_MS));
        }
    }
}

/// Storage failures. Corruption is never repaired silently.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The file cannot be opened or created.
    #[error("storage {path}: cannot open: {reason}")]
    Open {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file or a value in it is corrupt.
    #[error("storage {path}: corrupt: {what}; refusing to start (restore the file from a backup or start this region with an empty data dir and `restore = true`)")]
    Corrupt {
        /// File.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// A write failed.
    #[error("storage {path}: write failed: {reason}")]
    Write {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A stored idempotency result: what the first request with this key got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRecord {
    /// SHA-256 of the canonical request body.
    pub fingerprint: [u8; 32],
    /// HTTP status returned.
    pub status: u16,
    /// Response body returned.
    pub body: String,
    /// Wall-clock creation time (ms since the epoch), for the 24 h expiry.
    pub created_ms: u64,
}

/// Everything read back at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// All events, in (origin, seq) order, checksummed, decoded, validated, gap-free.
    pub events: Vec<Event>,
    /// Durable clock ceiling.
    pub ceiling: Hlc,
    /// Settled watermark.
    pub watermark: Hlc,
    /// Seed policy hash recorded at first start.
    pub recorded_policy: Option<PolicyHash>,
    /// The seed policy itself, recorded at first start: after a restart with an edited
    /// policy file, the settled history is still folded with it.
    pub recorded_policy_doc: Option<wallet_core::Policy>,
    /// A restore from peers was started and has not finished.
    pub restore_pending: bool,
    /// No events and no meta: a brand new disk.
    pub fresh: bool,
    /// Idempotency results.
    pub idem: Vec<(AccountId, String, IdemRecord)>,
    /// Evidence of protocol violations, by (origin, seq): hand it to
    /// [`wallet_core::Replica::restore_evidence`] before `load`.
    pub evidence: Vec<Evidence>,
    /// The last snapshot written: start with [`wallet_core::Replica::restore`] from it and
    /// `events` (which then hold only what follows it), instead of `load`.
    pub snapshot: Option<Snapshot>,
}

/// The last seq of `origin` a snapshot folds (0: none).
fn folded(s: &Snapshot, origin: &str) -> u64 {
    s.body
        .members
        .iter()
        .find(|m| m.region.as_str() == origin)
        .map_or(0, |m| m.seq)
}

/// One write.
#[derive(Debug)]
pub enum WriteOp {
    /// A replica record with its persistence index.
    Record {
        /// Persistence index.
        index: u64,
        /// The record.
        record: Record,
    },
    /// An idempotency result.
    Idem {
        /// Account.
        account: AccountId,
        /// Key.
        key: Box<str>,
        /// Result.
        rec: Arc<IdemRecord>,
    },
    /// Drop an expired idempotency result.
    IdemDelete {
        /// Account.
        account: AccountId,
        /// Key.
        key: Box<str>,
    },
    /// Set or clear the restore-in-progress flag.
    Restore(bool),
}

/// A batch of writes; `seq` is the highest operation sequence number in it.
#[derive(Debug)]
pub struct WriteBatch {
    /// Highest op sequence number in the batch.
    pub seq: u64,
    /// Operations, in order.
    pub ops: Vec<WriteOp>,
}

/// The writer's report after a durable commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskDone {
    /// Every operation with sequence `<= seq` and every record with index `<= index` is
    /// durable.
    Committed {
        /// Highest op sequence durable.
        seq: u64,
        /// Highest persistence index durable (0: none in these batches).
        index: u64,
    },
    /// The log's pipelined writer appended a batch and a sync thread is free for it: the
    /// next batch may come now (it is written, and synced, while this one's sync is in flight).
    Appended,
    /// A commit failed: nothing more can be acknowledged.
    Failed,
}

fn checksum(table: &str, key: &[u8], payload: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut h = Sha256::new();
    h.update((table.len() as u32).to_le_bytes());
    h.update(table.as_bytes());
    h.update((key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(payload);
    let d = h.finalize();
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&d[..CHECKSUM_BYTES]);
    out
}

fn seal(table: &str, key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHECKSUM_BYTES + payload.len());
    v.extend_from_slice(&checksum(table, key, payload));
    v.extend_from_slice(payload);
    v
}

fn unseal<'a>(table: &str, key: &[u8], value: &'a [u8]) -> Result<&'a [u8], String> {
    if value.len() < CHECKSUM_BYTES {
        return Err(format!(
            "value of {} bytes is shorter than its checksum",
            value.len()
        ));
    }
    let (sum, payload) = value.split_at(CHECKSUM_BYTES);
    if sum != checksum(table, key, payload) {
        return Err("checksum mismatch".into());
    }
    Ok(payload)
}

/// Fuzzing entry point (fuzz/fuzz_targets/storage_value.rs): `data[0]` picks the table,
/// the rest is a stored value. It is unsealed (checksum envelope) and, sealed or not, decoded
/// as that table's record; every outcome must be a value or an error, never a panic.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    let Some((&table, value)) = data.split_first() else {
        return;
    };
    let key = event_key_bytes("eu", 1);
    let _ = unseal("events", &key, value);
    let sealed = seal("events", &key, value);
    assert_eq!(unseal("events", &key, &sealed), Ok(value));
    match table % 4 {
        0 => {
            let _ = decode_event(value);
        }
        1 => {
            let _ = decode_value::<IdemRecord>(value);
        }
        2 => {
            if let Ok(ev) = decode_value::<Evidence>(value) {
                let _ = ev.id();
            }
        }
        _ => {
            if let Ok(p) = decode_value::<wallet_core::Policy>(value) {
                let _ = p.hash();
            }
        }
    }
}

fn event_key_bytes(origin: &str, seq: u64) -> Vec<u8> {
    let mut k = origin.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn evidence_digest(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

fn evidence_key_bytes(origin: &str, seq: u64, digest: &[u8]) -> Vec<u8> {
    let mut k = event_key_bytes(origin, seq);
    k.extend_from_slice(digest);
    k
}

fn idem_key_bytes(account: &str, key: &str) -> Vec<u8> {
    let mut k = account.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Reads the meta values every store keeps (ceiling, watermark, restore flag, seed policy and
/// its hash) into `out`; an error names the value and what is wrong with it.
pub(crate) fn apply_meta(
    out: &mut Loaded,
    meta: &BTreeMap<String, Vec<u8>>,
) -> Result<(), (String, String)> {
    let place = |name: &str| format!("meta[{name}]");
    let u64_of = |name: &str| -> Result<Option<u64>, (String, String)> {
        match meta.get(name) {
            None => Ok(None),
            Some(v) => {
                let a: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| (place(name), format!("has {} bytes, expected 8", v.len())))?;
                Ok(Some(u64::from_be_bytes(a)))
            }
        }
    };
    out.ceiling = Hlc(u64_of("ceiling")?.unwrap_or(0));
    out.watermark = Hlc(u64_of("watermark")?.unwrap_or(0));
    out.restore_pending = u64_of("restore")?.unwrap_or(0) == 1;
    if let Some(v) = meta.get("policy") {
        let a: [u8; 32] = v.as_slice().try_into().map_err(|_| {
            (
                place("policy"),
                format!("has {} bytes, expected 32", v.len()),
            )
        })?;
        out.recorded_policy = Some(PolicyHash(a));
    }
    if let Some(v) = meta.get("policy_doc") {
        let doc: wallet_core::Policy =
            decode_value(v).map_err(|w| (place("policy_doc"), w.to_string()))?;
        if Some(doc.hash()) != out.recorded_policy {
            return Err((
                place("policy_doc"),
                "does not match the recorded policy hash".to_string(),
            ));
        }
        out.recorded_policy_doc = Some(doc);
    }
    if let Some(v) = meta.get("snapshot") {
        out.snapshot = Some(decode_snapshot(v).map_err(|w| (place("snapshot"), w.to_string()))?);
    }
    Ok(())
}

/// Checks events read back in (origin, seq) order: each is stored under its own id, and
/// each origin's log starts at 1 (after a snapshot: right after the last seq it folds) with
/// no gap.
pub(crate) struct GapCheck<'a> {
    next_seq: BTreeMap<RegionId, u64>,
    snapshot: Option<&'a Snapshot>,
}

impl<'a> GapCheck<'a> {
    pub(crate) fn after(snapshot: Option<&'a Snapshot>) -> Self {
        GapCheck {
            next_seq: BTreeMap::new(),
            snapshot,
        }
    }

    /// Whether the snapshot folds this event (a store that keeps folded events, the log,
    /// skips them on load).
    pub(crate) fn folds(&self, origin: &str, seq: u64) -> bool {
        self.snapshot.is_some_and(|s| seq <= folded(s, origin))
    }

    pub(crate) fn check(
        &mut self,
        origin: &str,
        seq: u64,
        e: &Event,
    ) -> Result<(), (String, String)> {
        let place = || format!("events[{origin}:{seq}]");
        if e.id.origin.as_str() != origin || e.id.seq != seq {
            return Err((place(), format!("holds event {}", e.id)));
        }
        let first = self.snapshot.map_or(0, |s| folded(s, origin)) + 1;
        let n = self.next_seq.entry(e.id.origin).or_insert(first);
        if e.id.seq != *n {
            return Err((
                place(),
                format!("origin {origin} has a gap: expected seq {n}"),
            ));
        }
        *n += 1;
        Ok(())
    }
}

/// Which store a data directory uses (`[storage] backend`; docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// redb: a copy-on-write B-tree, one durable transaction per group commit.
    Redb,
    /// The append-only log ([`crate::logstore`]): one write and one `fdatasync` per group
    /// commit in a preallocated file, the tables rebuilt in memory on load.
    #[default]
    Log,
}

impl Backend {
    /// Its name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::Log => "log",
        }
    }

    /// Parses a config value.
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "redb" => Some(Backend::Redb),
            "log" => Some(Backend::Log),
            _ => None,
        }
    }

    /// The store's file in a data directory.
    pub fn file_path(self, dir: &Path) -> PathBuf {
        match self {
            Backend::Redb => Store::file_path(dir),
            Backend::Log => crate::logstore::LogStore::file_path(dir),
        }
    }

    /// The backend whose file a data directory holds (redb if `wallet.redb` is there, else
    /// the log): for tools that read a data dir after the fact.
    pub fn in_dir(dir: &Path) -> Backend {
        if Backend::Redb.file_path(dir).exists() {
            Backend::Redb
        } else {
            Backend::Log
        }
    }

    fn other(self) -> Backend {
        match self {
            Backend::Redb => Backend::Log,
            Backend::Log => Backend::Redb,
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The open store, whichever the backend: what the node and the writer use.
#[derive(Debug)]
pub enum Storage {
    /// redb.
    Redb(Store),
    /// The append-only log.
    Log(crate::logstore::LogStore),
}

impl Storage {
    /// Opens (or creates) the backend's store and reads everything back, verifying it.
    pub fn open(dir: &Path, backend: Backend) -> Result<(Storage, Loaded), StorageError> {
        Ok(match backend {
            Backend::Redb => {
                let (s, l) = Store::open(dir)?;
                (Storage::Redb(s), l)
            }
            Backend::Log => {
                let (s, l) = crate::logstore::LogStore::open(dir)?;
                (Storage::Log(s), l)
            }
        })
    }

    /// Records the seed policy and its hash (first start only).
    pub fn record_policy(&mut self, policy: &wallet_core::Policy) -> Result<(), StorageError> {
        match self {
            Storage::Redb(s) => s.record_policy(policy),
            Storage::Log(s) => s.record_policy(policy),
        }
    }

    /// Makes the operations durable, in order, as one commit.
    pub fn commit(&mut self, ops: &[&WriteOp]) -> Result<(), StorageError> {
        match self {
            Storage::Redb(s) => s.commit(ops),
            Storage::Log(s) => s.commit(ops),
        }
    }

    fn describe(&self) -> String {
        match self {
            Storage::Redb(s) => s.path.display().to_string(),
            Storage::Log(s) => format!("{s:?}"),
        }
    }
}

/// A store file is corrupt.
pub(crate) fn corrupt_at(path: &Path, what: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.display().to_string(),
        what: what.into(),
    }
}

/// A write to a store file failed.
pub(crate) fn write_err_at(path: &Path, e: impl std::fmt::Display) -> StorageError {
    StorageError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Takes the batches queued behind `first` (up to `records_max` records in all) into
/// `batches`; returns the highest op sequence number and persistence index in them.
fn take_queued(
    rx: &mut mpsc::Receiver<WriteBatch>,
    first: WriteBatch,
    batches: &mut Vec<WriteBatch>,
    records_max: usize,
) -> (u64, u64) {
    let mut records = first.ops.len();
    batches.push(first);
    while records < records_max {
        match rx.try_recv() {
            Ok(b) => {
                records += b.ops.len();
                batches.push(b);
            }
            Err(_) => break,
        }
    }
    let (mut seq, mut index) = (0, 0);
    for b in batches.iter() {
        seq = seq.max(b.seq);
        for op in &b.ops {
            if let WriteOp::Record { index: i, .. } = op {
                index = index.max(*i);
            }
        }
    }
    (seq, index)
}

/// The open database.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "internal panic while reading the file".into()
    }
}

/// Checks that a data directory belongs to this region and cluster, and that a directory
/// that once held a database still does: a missing or emptied `wallet.redb` next to a marker
/// means lost data, and starting afresh would reuse sequence numbers. Writes the marker on
/// first use.
pub fn check_data_dir(dir: &Path, owner: &str, backend: Backend) -> Result<(), StorageError> {
    let db = backend.file_path(dir);
    let other = backend.other();
    let other_file = other.file_path(dir);
    if std::fs::metadata(&other_file).is_ok_and(|m| m.len() > 0) {
        return Err(StorageError::Open {
            path: other_file.display().to_string(),
            reason: format!(
                "this data dir holds a {other} store but the config says [storage] backend = \"{backend}\": \
                 a data dir keeps the backend it was created with. Set backend = \"{other}\", or move \
                 this region to {backend} by starting it on an empty data dir with `restore = true` \
                 (it pulls its history back from its peers)"
            ),
        });
    }
    let marker = dir.join(MARKER_FILE_NAME);
    let db_len = std::fs::metadata(&db).map(|m| m.len()).ok();
    match std::fs::read_to_string(&marker) {
        Ok(text) => {
            if text.trim() != owner {
                return Err(StorageError::Corrupt {
                    path: marker.display().to_string(),
                    what: format!(
                        "this data dir belongs to {:?}, not {owner:?} (wrong data_dir in the config?)",
                        text.trim()
                    ),
                });
            }
            if db_len.unwrap_or(0) == 0 {
                return Err(StorageError::Corrupt {
                    path: db.display().to_string(),
                    what: "the store's file is missing or empty although this data dir was in use (see walletd.marker): its events are lost".into(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::Open {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
            let write = || -> std::io::Result<()> {
                use std::io::Write as _;
                let mut f = std::fs::File::create(&marker)?;
                f.write_all(owner.as_bytes())?;
                f.write_all(b"\n")?;
                f.sync_all()?;
                std::fs::File::open(dir)?.sync_all()
            };
            write().map_err(|e| StorageError::Write {
                path: marker.display().to_string(),
                reason: e.to_string(),
            })
        }
        Err(e) => Err(StorageError::Open {
            path: marker.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

impl Store {
    /// The database file for a data directory.
    pub fn file_path(dir: &Path) -> PathBuf {
        dir.join(DB_FILE_NAME)
    }

    /// Opens (or creates) the store and reads everything back, verifying every checksum.
    /// A corrupt file is an error, never a partial load.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StorageError> {
        // Silence the default panic report while reading: a panic inside redb on a damaged
        // file becomes the clear corruption error instead of a backtrace.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let result = Store::open_inner(dir);
        std::panic::set_hook(hook);
        result
    }

    fn open_inner(dir: &Path) -> Result<(Store, Loaded), StorageError> {
        let path = Store::file_path(dir);
        let pstr = path.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Open {
            path: pstr.clone(),
            reason: format!("cannot create directory {}: {e}", dir.display()),
        })?;
        // redb may panic on a file damaged outside redb in debug builds: turn that into a
        // corruption error too.
        let p2 = path.clone();
        let opened = std::panic::catch_unwind(move || {
            let mut b = Database::builder();
            b.set_check_integrity_on_open(true);
            b.create(&p2)
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(what)))) => {
                return Err(StorageError::Corrupt { path: pstr, what })
            }
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(StorageError::Open {
                    path: pstr,
                    reason: "the file is already open in another walletd process".into(),
                })
            }
            Ok(Err(e)) => {
                let what = e.to_string();
                // Anything but an I/O error on a file we could open is a damaged file.
                return Err(
                    if matches!(e, redb::DatabaseError::Storage(redb::StorageError::Io(_))) {
                        StorageError::Open {
                            path: pstr,
                            reason: what,
                        }
                    } else {
                        StorageError::Corrupt { path: pstr, what }
                    },
                );
            }
            Err(p) => {
                return Err(StorageError::Corrupt {
                    path: pstr,
                    what: format!("the database structure is damaged ({})", panic_text(&*p)),
                })
            }
        };
        let store = Store { db, path };
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.load()))
            .map_err(|p| StorageError::Corrupt {
                path: pstr.clone(),
                what: format!("the database structure is damaged ({})", panic_text(&*p)),
            })??;
        Ok((store, loaded))
    }

    fn corrupt(&self, what: impl Into<String>) -> StorageError {
        corrupt_at(&self.path, what)
    }

    fn write_err(&self, e: impl std::fmt::Display) -> StorageError {
        write_err_at(&self.path, e)
    }

    fn load(&self) -> Result<Loaded, StorageError> {
        // Make sure the tables exist (a new file), and record the format.
        {
            let txn = self.db.begin_write().map_err(|e| self.write_err(e))?;
            {
                txn.open_table(EVENTS).map_err(|e| self.write_err(e))?;
                txn.open_table(IDEM).map_err(|e| self.write_err(e))?;
                txn.open_table(EVIDENCE).map_err(|e| self.write_err(e))?;
                let mut meta = txn.open_table(META).map_err(|e| self.write_err(e))?;
                let has = meta
                    .get("format")
                    .map_err(|e| self.corrupt(e.to_string()))?
                    .is_some();
                if !has {
                    meta.insert(
                        "format",
                        seal("meta", b"format", &[STORAGE_FORMAT]).as_slice(),
                    )
                    .map_err(|e| self.write_err(e))?;
                }
            }
            txn.commit().map_err(|e| self.write_err(e))?;
        }
        let c = |e: redb::StorageError| self.corrupt(e.to_string());
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.corrupt(e.to_string()))?;
        let mut out = Loaded::default();

        let meta = txn
            .open_table(META)
            .map_err(|e| self.corrupt(e.to_string()))?;
        let mut meta_map: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for item in meta.iter().map_err(c)? {
            let (k, v) = item.map_err(c)?;
            let key = k.value().to_string();
            let payload = unseal("meta", key.as_bytes(), v.value())
                .map_err(|w| self.corrupt(format!("meta[{key}]: {w}")))?;
            meta_map.insert(key, payload.to_vec());
        }
        let format = meta_map.get("format").and_then(|v| v.first().copied());
        if format != Some(STORAGE_FORMAT) {
            return Err(self.corrupt(format!(
                "meta[format] is {format:?}, this release reads format {STORAGE_FORMAT}"
            )));
        }
        apply_meta(&mut out, &meta_map)
            .map_err(|(place, w)| self.corrupt(format!("{place}: {w}")))?;
        let events = txn
            .open_table(EVENTS)
            .map_err(|e| self.corrupt(e.to_string()))?;
        let mut gaps = GapCheck::after(out.snapshot.as_ref());
        for item in events.iter().map_err(c)? {
            let (k, v) = item.map_err(c)?;
            let (origin, seq) = k.value();
            let where_ = format!("events[{origin}:{seq}]");
            let payload = unseal("events", &event_key_bytes(origin, seq), v.value())
                .map_err(|w| self.corrupt(format!("{where_}: {w}")))?;
            let e = decode_event(payload).map_err(|w| self.corrupt(format!("{where_}: {w}")))?;
            gaps.check(origin, seq, &e)
                .map_err(|(place, w)| self.corrupt(format!("{place}: {w}")))?;
            out.events.push(e);
        }

        let idem = txn
            .open_table(IDEM)
            .map_err(|e| self.corrupt(e.to_string()))?;
        for item in idem.iter().map_err(c)? {
            let (k, v) = item.map_err(c)?;
            let (account, key) = k.value();
            let where_ = format!("idempotency[{account}/{key}]");
            let payload = unseal("idempotency", &idem_key_bytes(account, key), v.value())
                .map_err(|w| self.corrupt(format!("{where_}: {w}")))?;
            let rec: IdemRecord =
                decode_value(payload).map_err(|w| self.corrupt(format!("{where_}: {w}")))?;
            let acct =
                AccountId::new(account).map_err(|w| self.corrupt(format!("{where_}: {w}")))?;
            out.idem.push((acct, key.to_string(), rec));
        }
        let evidence = txn
            .open_table(EVIDENCE)
            .map_err(|e| self.corrupt(e.to_string()))?;
        for item in evidence.iter().map_err(c)? {
            let (k, v) = item.map_err(c)?;
            let (origin, seq, digest) = k.value();
            let where_ = format!("evidence[{origin}:{seq}]");
            let payload = unseal(
                "evidence",
                &evidence_key_bytes(origin, seq, digest),
                v.value(),
            )
            .map_err(|w| self.corrupt(format!("{where_}: {w}")))?;
            if evidence_digest(payload).as_slice() != digest {
                return Err(self.corrupt(format!("{where_}: digest does not match the value")));
            }
            let ev: Evidence =
                decode_value(payload).map_err(|w| self.corrupt(format!("{where_}: {w}")))?;
            let id = ev.id();
            if id.origin.as_str() != origin || id.seq != seq {
                return Err(self.corrupt(format!("{where_}: holds evidence about {id}")));
            }
            out.evidence.push(ev);
        }
        out.fresh =
            out.events.is_empty() && out.recorded_policy.is_none() && out.ceiling == Hlc::ZERO;
        Ok(out)
    }

    /// Records the seed policy and its hash (first start only).
    pub fn record_policy(&self, policy: &wallet_core::Policy) -> Result<(), StorageError> {
        let h = policy.hash();
        let doc = wallet_core::wire::encode_value(policy);
        let txn = self.db.begin_write().map_err(|e| self.write_err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.write_err(e))?;
            meta.insert("policy", seal("meta", b"policy", &h.0).as_slice())
                .map_err(|e| self.write_err(e))?;
            meta.insert("policy_doc", seal("meta", b"policy_doc", &doc).as_slice())
                .map_err(|e| self.write_err(e))?;
        }
        txn.commit().map_err(|e| self.write_err(e))
    }

    /// Writes operations in one durable transaction (fsync before returning). Each table is
    /// opened once per transaction.
    pub fn commit(&self, ops: &[&WriteOp]) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write().map_err(|e| self.write_err(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.write_err(e))?;
        self.apply_all(&txn, ops)?;
        txn.commit().map_err(|e| self.write_err(e))
    }

    fn apply_all(&self, txn: &WriteTransaction, ops: &[&WriteOp]) -> Result<(), StorageError> {
        let w = |e: redb::TableError| self.write_err(e);
        let s = |e: redb::StorageError| self.write_err(e);
        let mut events = txn.open_table(EVENTS).map_err(w)?;
        let mut meta = txn.open_table(META).map_err(w)?;
        let mut idem = txn.open_table(IDEM).map_err(w)?;
        let mut evidence = txn.open_table(EVIDENCE).map_err(w)?;
        for op in ops {
            match op {
                WriteOp::Record { record, .. } => match record {
                    Record::Event(e) => {
                        let origin = e.id.origin.as_str();
                        let payload = encode_event(e);
                        let v = seal("events", &event_key_bytes(origin, e.id.seq), &payload);
                        events.insert((origin, e.id.seq), v.as_slice()).map_err(s)?;
                    }
                    Record::Ceiling(h) => {
                        let v = seal("meta", b"ceiling", &h.0.to_be_bytes());
                        meta.insert("ceiling", v.as_slice()).map_err(s)?;
                    }
                    Record::Watermark(h) => {
                        let v = seal("meta", b"watermark", &h.0.to_be_bytes());
                        meta.insert("watermark", v.as_slice()).map_err(s)?;
                    }
                    Record::Snapshot(snap) => {
                        let v = seal("meta", b"snapshot", &encode_snapshot(snap));
                        meta.insert("snapshot", v.as_slice()).map_err(s)?;
                        for m in &snap.body.members {
                            let origin = m.region.as_str();
                            events
                                .retain_in((origin, 0u64)..=(origin, m.seq), |_, _| false)
                                .map_err(s)?;
                        }
                    }
                    Record::Evidence(ev) => {
                        let id = ev.id();
                        let origin = id.origin.as_str();
                        let payload = encode_value(ev);
                        let digest = evidence_digest(&payload);
                        let v = seal(
                            "evidence",
                            &evidence_key_bytes(origin, id.seq, &digest),
                            &payload,
                        );
                        evidence
                            .insert((origin, id.seq, digest.as_slice()), v.as_slice())
                            .map_err(s)?;
                    }
                },
                WriteOp::Idem { account, key, rec } => {
                    let payload = encode_value(&**rec);
                    let v = seal(
                        "idempotency",
                        &idem_key_bytes(account.as_str(), key),
                        &payload,
                    );
                    idem.insert((account.as_str(), &**key), v.as_slice())
                        .map_err(s)?;
                }
                WriteOp::IdemDelete { account, key } => {
                    idem.remove((account.as_str(), &**key)).map_err(s)?;
                }
                WriteOp::Restore(on) => {
                    let v = seal("meta", b"restore", &u64::from(*on).to_be_bytes());
                    meta.insert("restore", v.as_slice()).map_err(s)?;
                }
            }
        }
        Ok(())
    }
}

/// Starts the writer thread. It owns the store; it stops when every sender is dropped,
/// after committing everything queued.
pub fn spawn_writer(
    mut store: Storage,
    group_commit: bool,
    batch_records_max: usize,
    metrics: Arc<Metrics>,
    done: mpsc::UnboundedSender<DiskDone>,
) -> Result<(mpsc::Sender<WriteBatch>, std::thread::JoinHandle<()>), StorageError> {
    let (tx, mut rx) = mpsc::channel::<WriteBatch>(WRITER_QUEUE_BATCHES_MAX);
    let path = store.describe();
    let handle = std::thread::Builder::new()
        .name("walletd-writer".into())
        .spawn(move || {
            if let (Storage::Log(log), true) = (&mut store, group_commit) {
                pipelined_writer(log, &mut rx, batch_records_max, &metrics, done);
                return;
            }
            let mut batches: Vec<WriteBatch> = Vec::new();
            while let Some(first) = rx.blocking_recv() {
                test_hold_writes();
                // Without group commit, one batch (then one commit per op) at a time.
                let max = if group_commit { batch_records_max } else { 1 };
                let (seq, index) = take_queued(&mut rx, first, &mut batches, max);
                let started = Instant::now();
                let result = if group_commit {
                    let ops: Vec<&WriteOp> = batches.iter().flat_map(|b| b.ops.iter()).collect();
                    let r = store.commit(&ops);
                    metrics.observe_commit(ops.len(), started.elapsed());
                    r
                } else {
                    let mut r = Ok(());
                    for op in batches.iter().flat_map(|b| b.ops.iter()) {
                        let t = Instant::now();
                        r = store.commit(&[op]);
                        metrics.observe_commit(1, t.elapsed());
                        if r.is_err() {
                            break;
                        }
                    }
                    r
                };
                batches.clear();
                match result {
                    Ok(()) => {
                        if done.send(DiskDone::Committed { seq, index }).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "storage commit failed; no further acknowledgements");
                        let _ = done.send(DiskDone::Failed);
                        break;
                    }
                }
            }
            tracing::debug!("storage writer stopped");
        });
    let h = handle.map_err(|e| StorageError::Write {
        path,
        reason: format!("cannot start the writer thread: {e}"),
    })?;
    Ok((tx, h))
}

/// Takes every batch queued (up to `batch_records_max` records, like the redb writer) and
/// appends it to the log at once; the log's sync threads make it durable and report
/// ([`crate::logstore::Pipeline`]): the next batch is written while a sync is in flight.
fn pipelined_writer(
    log: &mut crate::logstore::LogStore,
    rx: &mut mpsc::Receiver<WriteBatch>,
    batch_records_max: usize,
    metrics: &Arc<Metrics>,
    done: mpsc::UnboundedSender<DiskDone>,
) {
    let failed = done.clone();
    let start = |log: &crate::logstore::LogStore| {
        let done = done.clone();
        crate::logstore::Pipeline::start(log, move |d| {
            let msg = match d {
                Some((seq, index)) => DiskDone::Committed { seq, index },
                None => DiskDone::Failed,
            };
            done.send(msg).is_ok()
        })
    };
    let mut pipeline = match start(log) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "storage writer could not start");
            let _ = failed.send(DiskDone::Failed);
            return;
        }
    };
    let mut batches: Vec<WriteBatch> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        test_hold_writes();
        let (seq, index) = take_queued(rx, first, &mut batches, batch_records_max);
        let started = Instant::now();
        let ops: Vec<&WriteOp> = batches.iter().flat_map(|b| b.ops.iter()).collect();
        let result = log.append(&ops);
        // For the log, the commit metric times the append (its sync runs on a sync thread).
        metrics.observe_commit(ops.len(), started.elapsed());
        drop(ops);
        batches.clear();
        if let Err(e) = result {
            tracing::error!(error = %e, "storage append failed; no further acknowledgements");
            // What was appended before is still made durable and reported, then the failure.
            pipeline.finish();
            let _ = failed.send(DiskDone::Failed);
            return;
        }
        if pipeline.failed() {
            break;
        }
        // A log rewrite prepared off this thread is switched to between two appends: the
        // syncs in flight end first, then the switch makes everything appended durable.
        if log.rewrite_ready() {
            pipeline.finish();
            let switched = log.finish_rewrite().and_then(|_| start(log));
            pipeline = match switched {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "log rewrite failed; no further acknowledgements");
                    let _ = failed.send(DiskDone::Failed);
                    return;
                }
            };
            let _ = failed.send(DiskDone::Committed { seq, index });
        }
        // The actor may send the next batch now if a sync thread is free for it; otherwise
        // it gathers until a sync returns (larger batches, one signature each).
        if pipeline.appended(seq, index) && failed.send(DiskDone::Appended).is_err() {
            break;
        }
    }
    pipeline.finish();
    tracing::debug!("storage writer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_core::{Amount, Config, Currency, Kind, Output, Policy, Replica, TxRequest};

    fn one_event() -> Event {
        let eu = RegionId::new("eu").unwrap();
        let mut r = Replica::new(Config::new(eu, vec![eu], Policy::zero()), Hlc::ZERO);
        r.submit(
            1_000,
            TxRequest {
                account: AccountId::new("alice").unwrap(),
                kind: Kind::Deposit,
                amount: Amount::parse("10", Currency::USD).unwrap(),
                currency: Currency::USD,
                idempotency_key: Some("k".into()),
                reference: None,
            },
        )
        .unwrap();
        loop {
            match r.poll_output() {
                Some(Output::Persist {
                    record: Record::Event(e),
                    ..
                }) => return e,
                Some(_) => {}
                None => panic!("no event"),
            }
        }
    }

    /// Writes every record the replica asks for, one commit each, and acknowledges it.
    fn pump(r: &mut Replica, store: &mut Storage) {
        while let Some(o) = r.poll_output() {
            if let Output::Persist { index, record } = o {
                store.commit(&[&WriteOp::Record { index, record }]).unwrap();
                r.handle_persisted(index);
            }
        }
    }

    #[test]
    fn a_snapshot_folds_its_events_and_a_start_restores_from_it_on_both_backends() {
        for backend in [Backend::Redb, Backend::Log] {
            a_snapshot_folds_its_events_and_a_start_restores_from_it(backend);
        }
    }

    fn a_snapshot_folds_its_events_and_a_start_restores_from_it(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let eu = RegionId::new("eu").unwrap();
        let cfg = || Config::new(eu, vec![eu], Policy::zero());
        let alice = AccountId::new("alice").unwrap();
        let deposit = |r: &mut Replica, now: u64, amount: &str| {
            r.submit(
                now,
                TxRequest {
                    account: alice.clone(),
                    kind: Kind::Deposit,
                    amount: Amount::parse(amount, Currency::USD).unwrap(),
                    currency: Currency::USD,
                    idempotency_key: None,
                    reference: None,
                },
            )
            .unwrap();
        };
        let last = {
            let (mut store, _) = Storage::open(dir.path(), backend).unwrap();
            let mut r = Replica::new(cfg(), Hlc::ZERO);
            for (i, amount) in ["1", "2", "3"].iter().enumerate() {
                deposit(&mut r, 1_000 + i as u64, amount);
                pump(&mut r, &mut store);
            }
            for now in [2_000, 3_000, 4_000] {
                r.handle_timeout(now);
                pump(&mut r, &mut store);
            }
            let snap = r.compact().expect("everything is settled");
            assert_eq!(snap.body.members[0].seq, 3);
            pump(&mut r, &mut store);
            deposit(&mut r, 5_000, "4");
            pump(&mut r, &mut store);
            r.event_count()
        };
        let (_, loaded) = Storage::open(dir.path(), backend).unwrap();
        let snap = loaded.snapshot.expect("stored");
        // Only what follows the snapshot is loaded (redb deleted the rest; the log skips it).
        let seqs: Vec<u64> = loaded.events.iter().map(|e| e.id.seq).collect();
        assert_eq!(seqs, vec![4]);
        let mut r = Replica::new(cfg(), loaded.ceiling);
        r.restore(&snap, loaded.events).unwrap();
        r.restore_watermark(loaded.watermark);
        assert_eq!(r.event_count(), last);
        let b = r.balance(&alice, Currency::USD);
        assert_eq!(
            (b.provisional.to_string(), b.settled.to_string()),
            ("10.00".into(), "6.00".into())
        );
    }

    #[test]
    fn round_trip_then_a_bad_value_checksum_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let e = one_event();
        {
            let (store, loaded) = Store::open(dir.path()).unwrap();
            assert!(loaded.fresh);
            let op = WriteOp::Record {
                index: 1,
                record: Record::Event(e.clone()),
            };
            let ceiling = WriteOp::Record {
                index: 2,
                record: Record::Ceiling(Hlc(77)),
            };
            store.commit(&[&op, &ceiling]).unwrap();
        }
        {
            let (store, loaded) = Store::open(dir.path()).unwrap();
            assert_eq!(loaded.events, vec![e.clone()]);
            assert_eq!(loaded.ceiling, Hlc(77));
            assert!(!loaded.fresh);
            // Tamper with the stored value behind redb's back: a valid redb write of bytes
            // whose checksum does not match.
            let mut bytes = seal("events", &event_key_bytes("eu", 1), &encode_event(&e));
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
            let txn = store.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(EVENTS).unwrap();
                t.insert(("eu", 1), bytes.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        assert!(err.contains("events[eu:1]: checksum mismatch"), "{err}");
        assert!(err.contains("wallet.redb"), "{err}");
    }

    #[test]
    fn a_gap_in_an_origin_log_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = one_event();
        e.id.seq = 2;
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            // Written raw (valid checksum) under seq 2 with no seq 1.
            let v = seal("events", &event_key_bytes("eu", 2), &encode_event(&e));
            let txn = store.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(EVENTS).unwrap();
                t.insert(("eu", 2), v.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("gap"), "{err}");
    }

    #[test]
    fn evidence_round_trips_and_a_damaged_one_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let a = one_event();
        let mut b = a.clone();
        b.hlc = Hlc(a.hlc.0 + 1);
        let ev = Evidence::Conflicting(a.clone(), b);
        {
            let (store, loaded) = Store::open(dir.path()).unwrap();
            assert!(loaded.evidence.is_empty());
            let ops = [
                WriteOp::Record {
                    index: 1,
                    record: Record::Event(a),
                },
                WriteOp::Record {
                    index: 2,
                    record: Record::Evidence(ev.clone()),
                },
                // Written twice (a retry): kept once.
                WriteOp::Record {
                    index: 3,
                    record: Record::Evidence(ev.clone()),
                },
            ];
            store.commit(&ops.iter().collect::<Vec<_>>()).unwrap();
        }
        let payload = encode_value(&ev);
        let digest = evidence_digest(&payload);
        {
            let (store, loaded) = Store::open(dir.path()).unwrap();
            assert_eq!(loaded.evidence, vec![ev.clone()]);
            assert!(!loaded.fresh);
            // Validly sealed bytes stored under another id.
            let key = evidence_key_bytes("eu", 2, &digest);
            let v = seal("evidence", &key, &payload);
            let txn = store.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(EVIDENCE).unwrap();
                t.insert(("eu", 2, digest.as_slice()), v.as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("evidence[eu:2]: holds evidence about eu:1"),
            "{err}"
        );
        {
            // A flipped bit under the right key fails its checksum.
            let db = Database::create(Store::file_path(dir.path())).unwrap();
            let key = evidence_key_bytes("eu", 1, &digest);
            let mut v = seal("evidence", &key, &payload);
            let last = v.len() - 1;
            v[last] ^= 1;
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(EVIDENCE).unwrap();
                t.remove(("eu", 2, digest.as_slice())).unwrap();
                t.insert(("eu", 1, digest.as_slice()), v.as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("evidence[eu:1]: checksum mismatch"), "{err}");
    }

    #[test]
    fn a_data_dir_keeps_its_backend() {
        let dir = tempfile::tempdir().unwrap();
        let owner = "region=eu cluster=c";
        check_data_dir(dir.path(), owner, Backend::Redb).unwrap();
        let (_s, _) = Storage::open(dir.path(), Backend::Redb).unwrap();
        let err = check_data_dir(dir.path(), owner, Backend::Log)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds a redb store"), "{err}");
        assert!(err.contains("backend = \"log\""), "{err}");
        check_data_dir(dir.path(), owner, Backend::Redb).unwrap();
        assert_eq!(Backend::in_dir(dir.path()), Backend::Redb);
    }

    #[test]
    fn seal_and_unseal_detect_flips() {
        let v = seal("events", b"k", b"payload");
        assert_eq!(unseal("events", b"k", &v).unwrap(), b"payload");
        let mut bad = v.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(unseal("events", b"k", &bad).is_err());
        // Same bytes under another key do not verify.
        assert!(unseal("events", b"j", &v).is_err());
        assert!(unseal("events", b"k", &v[..3]).is_err());
    }
}
