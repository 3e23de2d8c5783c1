//! The archive's own thread (issue 13): the archive's `fdatasync`ed appends and its reads run
//! here, off the actor, which hands them over through a bounded queue and goes on serving.
//!
//! A compaction takes two steps, so that the actor never waits for the disk and the ordering
//! rule holds (an event leaves the store only after the archive holds it durably):
//! 1. **ahead**: the batch up to the replica's compaction point now (most of what the fold
//!    will drop: `compact_every_events` events) is sent to the thread; the actor goes on.
//! 2. **fold**, once that batch is durable: the replica has settled more meanwhile, so the
//!    rest up to its compaction point now (milliseconds of events) is sent, and the replica
//!    folds at once ([`Replica::compact`]). Its `Record::Snapshot` (which lets the store drop
//!    the folded events) and every write after it are held in the actor until this batch is
//!    durable too ([`Archiver::holds_writes`]): the store never drops an event the archive
//!    does not hold.
//!
//! A failure of step 1 stops compaction (nothing was folded; the region goes on). A failure
//! of step 2 is a storage failure: the folded events are in memory only, held writes are
//! never written, and the region stops acknowledging and exits (crash-only: a restart reads
//! the store, which still holds them).
//!
//! Reads ([`crate::history::Read`]) are queued behind the appends the actor sent before them,
//! so a read against the mark the actor knows finds the archive holding it.

use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};
use wallet_core::{Replica, Snapshot};

use crate::archive::{Archive, ArchiveError};
use crate::command::Reply;
use crate::history::{self, ArchiveRead, Archived, Batch};

/// Jobs queued for the archive's thread at most (reads beyond it answer 503 `archive_busy`).
pub const ARCHIVE_JOBS_MAX: usize = 256;

/// A test seam on the archive's thread (tests only: [`Archiver::spawn`] passes none): called
/// with each append's step before it runs.
type Fault = Box<dyn FnMut(bool) -> Result<(), ArchiveError> + Send>;

enum Job {
    Append {
        batch: Batch,
        now_ms: u64,
        fold: bool,
    },
    Read(ArchiveRead, oneshot::Sender<Reply>),
    /// Host work on the archive (the backfill: serving a peer, attaching what was fetched).
    Run(Box<dyn FnOnce(&mut Archive) + Send>),
}

/// The thread's report on an append.
#[derive(Debug)]
pub struct Done {
    /// Step 2 (the fold's batch) or step 1.
    fold: bool,
    result: Result<(), ArchiveError>,
    /// Bytes of records held after it.
    bytes: u64,
    /// What the archive holds after it.
    held: Archived,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Idle,
    /// Step 1's batch is at the thread.
    Ahead,
    /// Step 2's batch is at the thread; the replica folded; writes are held.
    Fold,
}

/// The actor's handle on the archive's thread.
#[derive(Debug)]
pub struct Archiver {
    jobs: Option<mpsc::Sender<Job>>,
    /// What the archive holds once every batch sent is appended.
    known: Archived,
    bytes: u64,
    stage: Stage,
    failed: bool,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Append { batch, fold, .. } => f
                .debug_struct("Append")
                .field("records", &batch.records.len())
                .field("at", &batch.at)
                .field("fold", fold)
                .finish(),
            Job::Read(..) => f.write_str("Read"),
            Job::Run(..) => f.write_str("Run"),
        }
    }
}

impl Archiver {
    /// Starts the archive's thread over an open archive; its reports come on the receiver
    /// (the actor's loop hands them to [`Archiver::on_done`]).
    pub fn spawn(
        archive: Archive,
    ) -> Result<(Archiver, mpsc::UnboundedReceiver<Done>), ArchiveError> {
        Archiver::spawn_with(archive, None)
    }

    /// [`Archiver::spawn`] with a test seam: the thread calls `fault` with each append's step
    /// (`true`: the fold's batch) before appending; it may block (the batch stays in flight)
    /// or answer an error (the append fails and writes nothing).
    #[cfg(test)]
    pub(crate) fn spawn_faulty(
        archive: Archive,
        fault: Fault,
    ) -> Result<(Archiver, mpsc::UnboundedReceiver<Done>), ArchiveError> {
        Archiver::spawn_with(archive, Some(fault))
    }

    fn spawn_with(
        archive: Archive,
        fault: Option<Fault>,
    ) -> Result<(Archiver, mpsc::UnboundedReceiver<Done>), ArchiveError> {
        let (jobs, rx) = mpsc::channel(ARCHIVE_JOBS_MAX);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let known = Archived::of(&archive);
        let bytes = archive.bytes();
        let dir = archive.dir().to_path_buf();
        let thread = std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || work(archive, rx, done_tx, fault))
            .map_err(|e| ArchiveError::Io {
                path: dir.display().to_string(),
                reason: format!("cannot start the archive's thread: {e}"),
            })?;
        Ok((
            Archiver {
                jobs: Some(jobs),
                known,
                bytes,
                stage: Stage::Idle,
                failed: false,
                thread: Some(thread),
            },
            done_rx,
        ))
    }

    /// What the archive holds once what was sent is appended: reads join at its mark.
    pub fn known(&self) -> Archived {
        self.known
    }

    /// Bytes of records in the archive (as of the last report).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Did an append fail (compaction stopped)?
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Is a compaction under way (no new one starts)?
    pub fn busy(&self) -> bool {
        self.stage != Stage::Idle
    }

    /// Must the actor hold its writes (step 2's batch is not durable yet)?
    pub fn holds_writes(&self) -> bool {
        self.stage == Stage::Fold
    }

    fn send(&mut self, batch: Batch, now_ms: u64, fold: bool) -> bool {
        let Some(permit) = self.jobs.as_ref().and_then(|j| j.try_reserve().ok()) else {
            return false;
        };
        self.known = batch.applied(self.known);
        permit.send(Job::Append {
            batch,
            now_ms,
            fold,
        });
        true
    }

    /// Step 1: sends the batch up to the replica's compaction point, if it may compact and
    /// no compaction is under way. Returns whether a compaction started.
    pub fn start(&mut self, r: &Replica, now_ms: u64) -> bool {
        if self.failed || self.busy() {
            return false;
        }
        let Some(b) = history::next_batch(r, self.known) else {
            return false;
        };
        if !self.send(b, now_ms, false) {
            return false;
        }
        self.stage = Stage::Ahead;
        true
    }

    /// A report from the thread. After step 1: sends step 2's batch and folds the replica
    /// (Ok(Some)), or folds at once when nothing settled meanwhile. After step 2: the held
    /// writes may go. Err: step 2 failed, the fold is not durable in the archive: the caller
    /// fails storage.
    pub fn on_done(
        &mut self,
        d: Done,
        r: &mut Replica,
        now_ms: u64,
    ) -> Result<Option<Snapshot>, ArchiveError> {
        self.bytes = d.bytes;
        if let Err(e) = d.result {
            self.failed = true;
            self.stage = Stage::Idle;
            self.known = d.held;
            if d.fold {
                return Err(e);
            }
            tracing::error!(error = %e, "archive write failed: compaction stops on this \
                region (the history stays in memory and in the store); fix the disk and restart");
            return Ok(None);
        }
        if d.fold {
            self.stage = Stage::Idle;
            return Ok(None);
        }
        self.stage = Stage::Idle;
        let Some(rest) = history::next_batch(r, self.known) else {
            return Ok(None);
        };
        if Some(rest.at) == self.known.at() {
            // Nothing settled since step 1: the archive holds the fold already.
            return Ok(r.compact());
        }
        if !self.send(rest, now_ms, true) {
            // The queue is full of reads: the next compaction goes on from here.
            return Ok(None);
        }
        self.stage = Stage::Fold;
        Ok(r.compact())
    }

    /// Queues host work on the archive's thread, behind what is queued; false when the
    /// queue is full (the caller answers "busy").
    pub fn run(&self, f: Box<dyn FnOnce(&mut Archive) + Send>) -> bool {
        match self.jobs.as_ref().map(|j| j.try_reserve()) {
            Some(Ok(permit)) => {
                permit.send(Job::Run(f));
                true
            }
            _ => false,
        }
    }

    /// The backfilled history below the bootstrap snapshot (mark `at`, `feed_len`, last
    /// entry key `last`) is attached by a job queued before any read that joins at it.
    pub fn note_below(
        &mut self,
        at: wallet_core::Hlc,
        feed_len: u64,
        last: Option<wallet_core::EntryKey>,
    ) {
        if self.known.mark.is_none() {
            self.known.mark = Some((at, feed_len));
        }
        if self.known.last_key.is_none() {
            self.known.last_key = last;
        }
    }

    /// Queues the archived part of a read; its answer goes to `reply`. A full queue answers
    /// 503 `archive_busy`.
    pub fn read(&self, f: ArchiveRead, reply: oneshot::Sender<Reply>) {
        match self.jobs.as_ref().map(|j| j.try_reserve()) {
            Some(Ok(permit)) => permit.send(Job::Read(f, reply)),
            _ => {
                let _ = reply.send(Reply::error(
                    503,
                    "archive_busy",
                    "too many reads of the compacted history are queued on this region; retry",
                ));
            }
        }
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        // The thread ends once its queue is empty and closed.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn work(
    mut a: Archive,
    mut rx: mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Done>,
    mut fault: Option<Fault>,
) {
    while let Some(job) = rx.blocking_recv() {
        match job {
            Job::Append {
                batch,
                now_ms,
                fold,
            } => {
                let result = fault
                    .as_mut()
                    .map_or(Ok(()), |f| f(fold))
                    .and_then(|()| a.append(&batch.records, batch.at, batch.feed_len))
                    .and_then(|()| a.expire(now_ms).map(|_| ()));
                let _ = done.send(Done {
                    fold,
                    result,
                    bytes: a.bytes(),
                    held: Archived::of(&a),
                });
            }
            Job::Read(f, reply) => {
                let _ = reply.send(f(&a));
            }
            Job::Run(f) => f(&mut a),
        }
    }
}
