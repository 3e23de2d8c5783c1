//! Chunked snapshot transfer (issue 13, docs/protocol.md §10): how a signed snapshot larger
//! than one peer message reaches a region that lacks the history it folds.
//!
//! The sender encodes its last snapshot once ([`crate::wire::encode_snapshot`]) and names the
//! transfer by the SHA-256 of those bytes. A pull below its compaction point is answered with
//! chunk 0; the requester asks for each next chunk ([`Message::SnapshotChunkRequest`]) after
//! it appended the one before, so one chunk per member is in flight at a time. Every rule:
//!
//! | rule | what happens |
//! |---|---|
//! | pull below the sender's fold | chunk 0 of its current snapshot |
//! | chunk request for its current transfer | that chunk |
//! | chunk request for another transfer (its snapshot changed meanwhile) | chunk 0 of the current one: the requester starts over |
//! | chunk 0 of a new transfer (another id or header, or another member) | judged on its header (`at` and the version vector `seqs`) by the rule for a whole snapshot ([`Replica::snapshot_fit`]): folds nothing this region lacks, ignored (no answer to the pull in flight); lacking but at or below the watermark, the answer to the pull, bringing nothing; else the requester drops what it assembled and starts this one |
//! | chunk 0 of the transfer being assembled (a later pull's answer) | resume: ask for the next missing chunk |
//! | the next chunk expected | appended; the pull in flight goes on (its time-out restarts); next chunk asked for |
//! | a duplicate or out-of-order chunk | ignored (a lost chunk is asked for again when the next pull, after the pull time-out, is answered with chunk 0) |
//! | a header that does not hold (count, index, size over [`crate::wire::SNAPSHOT_BYTES_MAX`], more bytes than announced) | the transfer fails |
//! | the last chunk | hash, decode, the body's point and version vector must be the header's, then the snapshot's signature and fit ([`Replica::restore`]'s checks): installed, or the transfer fails with nothing changed |
//! | a failure | a [`TransferError`], reported ([`Report::Snapshot`]), counted, and the pull ends as an answer that brought nothing (back-off) |
//!
//! Memory: the requester holds at most the announced length, itself at most
//! [`crate::wire::SNAPSHOT_BYTES_MAX`], and never allocates ahead of the bytes received; the
//! sender holds one encoding of its snapshot.

use sha2::{Digest, Sha256};

use crate::id::{Hlc, RegionId};
use crate::message::{Message, SnapshotChunk};
use crate::snapshot::{RestoreError, Snapshot};
use crate::wire::{self, WireError, SNAPSHOT_BYTES_MAX};

use super::snapshot::Applied;
use super::{Output, Replica, Report};

/// Default size of a snapshot chunk: well under [`crate::wire::MESSAGE_BYTES_MAX`].
pub const SNAPSHOT_CHUNK_BYTES_DEFAULT: usize = 1 << 20;
/// Largest chunk a sender makes, whatever it is configured with: a chunk and its header
/// always fit in one message.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = wire::MESSAGE_BYTES_MAX - 4096;

/// Why a snapshot transfer failed. Nothing changed in the replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The announced length is over [`crate::wire::SNAPSHOT_BYTES_MAX`].
    #[error("snapshot of {0} bytes announced, the limit is {SNAPSHOT_BYTES_MAX}")]
    TooLarge(u64),
    /// The chunk's header does not hold (no chunks, an index past the count, more chunks
    /// than bytes).
    #[error("malformed snapshot chunk: {0}")]
    Malformed(String),
    /// The chunks brought more, or fewer, bytes than announced.
    #[error("snapshot chunks hold {got} bytes, {announced} were announced")]
    Length {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        announced: u64,
    },
    /// The reassembled bytes do not hash to the transfer id.
    #[error("reassembled snapshot does not match its transfer id")]
    Hash,
    /// The reassembled bytes do not decode.
    #[error("reassembled snapshot does not decode: {0}")]
    Decode(WireError),
    /// The snapshot decoded but is refused (signature, cluster, members...).
    #[error(transparent)]
    Refused(#[from] RestoreError),
}

/// Snapshot transfer counters (monotonic), for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransferStats {
    /// Chunks sent.
    pub chunks_sent: u64,
    /// Chunk bytes sent.
    pub bytes_sent: u64,
    /// Chunks received and appended.
    pub chunks_received: u64,
    /// Chunk bytes received and appended.
    pub bytes_received: u64,
    /// Transfers completed (the snapshot verified; installed when it folds what was lacking).
    pub completed: u64,
    /// Transfers failed ([`TransferError`]).
    pub failed: u64,
    /// Transfers dropped half-way for a new one (the sender's snapshot changed, or another
    /// member's came).
    pub restarted: u64,
}

/// The encoding of this region's last snapshot, made once, sent chunk by chunk.
#[derive(Debug)]
struct Outbound {
    /// Which snapshot: its point and signer.
    of: (Hlc, RegionId),
    transfer: [u8; 32],
    bytes: Vec<u8>,
    /// Its version vector, for each chunk's header.
    seqs: Vec<(RegionId, u64)>,
}

/// A snapshot being reassembled.
#[derive(Debug)]
struct Inbound {
    from: RegionId,
    transfer: [u8; 32],
    at: Hlc,
    len: u64,
    count: u32,
    seqs: Vec<(RegionId, u64)>,
    /// The next chunk expected.
    next: u32,
    bytes: Vec<u8>,
}

/// Both sides of snapshot transfers.
#[derive(Debug, Default)]
pub(crate) struct Transfers {
    outbound: Option<Outbound>,
    inbound: Option<Inbound>,
    last_error: Option<TransferError>,
    stats: TransferStats,
}

/// The transfer id of encoded snapshot bytes.
pub fn transfer_id(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// How many chunks of `chunk` bytes `len` bytes make (at least one).
fn chunk_count(len: usize, chunk: usize) -> usize {
    len.div_ceil(chunk.max(1)).max(1)
}

impl Replica {
    /// Snapshot transfer counters.
    pub fn snapshot_transfer_stats(&self) -> TransferStats {
        self.transfer.stats
    }

    /// Why the last snapshot transfer failed, if one did.
    pub fn snapshot_transfer_error(&self) -> Option<&TransferError> {
        self.transfer.last_error.as_ref()
    }

    /// Bytes of a snapshot being reassembled now (0: none).
    pub fn snapshot_transfer_held(&self) -> u64 {
        self.transfer
            .inbound
            .as_ref()
            .map_or(0, |i| i.bytes.len() as u64)
    }

    // ---- sender ---------------------------------------------------------------------------

    /// Sends chunk `index` of this region's last snapshot to `to` (chunk 0 when `transfer` is
    /// given and is not that snapshot's). False when there is no snapshot.
    pub(super) fn send_snapshot_chunk(
        &mut self,
        to: RegionId,
        transfer: Option<[u8; 32]>,
        index: u32,
    ) -> bool {
        let Some(snap) = self.snapshot.as_deref() else {
            return false;
        };
        let of = (snap.body.at, snap.signer);
        if self.transfer.outbound.as_ref().is_none_or(|o| o.of != of) {
            let bytes = wire::encode_snapshot(snap);
            self.transfer.outbound = Some(Outbound {
                of,
                transfer: transfer_id(&bytes),
                bytes,
                seqs: snap.body.seqs().collect(),
            });
        }
        let Some(out) = self.transfer.outbound.as_ref() else {
            return false;
        };
        let size = self
            .cfg
            .snapshot_chunk_bytes
            .clamp(1, SNAPSHOT_CHUNK_BYTES_MAX);
        let count = chunk_count(out.bytes.len(), size);
        let index = match transfer {
            Some(t) if t == out.transfer => index as usize,
            _ => 0,
        };
        if index >= count {
            return true;
        }
        let from = index.saturating_mul(size);
        let bytes = out
            .bytes
            .get(from..from.saturating_add(size).min(out.bytes.len()))
            .unwrap_or_default()
            .to_vec();
        let chunk = SnapshotChunk {
            transfer: out.transfer,
            at: of.0,
            len: out.bytes.len() as u64,
            count: u32::try_from(count).unwrap_or(u32::MAX),
            index: u32::try_from(index).unwrap_or(u32::MAX),
            bytes,
            seqs: out.seqs.clone(),
        };
        self.transfer.stats.chunks_sent += 1;
        self.transfer.stats.bytes_sent += chunk.bytes.len() as u64;
        self.outputs.push_back(Output::Send {
            to,
            msg: Message::SnapshotChunk(chunk),
        });
        true
    }

    /// A member asks for a chunk of a transfer.
    pub(super) fn handle_chunk_request(&mut self, from: RegionId, transfer: [u8; 32], index: u32) {
        if !self.is_peer(from) {
            self.report(Report::UnknownMember { from });
            return;
        }
        self.send_snapshot_chunk(from, Some(transfer), index);
    }

    // ---- receiver -------------------------------------------------------------------------

    /// A chunk of a snapshot from a member: see the module's rules.
    pub(super) fn handle_snapshot_chunk(&mut self, now_ms: u64, from: RegionId, c: SnapshotChunk) {
        if !self.is_peer(from) {
            self.report(Report::UnknownMember { from });
            return;
        }
        if let Err(e) = check_header(&c) {
            self.transfer_failed(now_ms, from, e);
            return;
        }
        // A transfer is its sender and its whole header: a sender restarted with another
        // chunk size starts a new one.
        let same = self.transfer.inbound.as_ref().is_some_and(|i| {
            (i.from, i.transfer, i.at, i.len, i.count, &i.seqs)
                == (from, c.transfer, c.at, c.len, c.count, &c.seqs)
        });
        if !same {
            if c.index != 0 {
                return; // the rest of a transfer dropped or finished: stale
            }
            // Judged on the header by the rule for a whole snapshot (the body must match it).
            match self.snapshot_fit(c.at, c.seqs.iter().copied()) {
                Applied::Installed => {}
                // A copy, or a late answer to an earlier pull: not the answer to the pull in
                // flight (simulator seed 168), and none of its bytes are needed.
                Applied::NotLacking => return,
                // Nothing in it this region can install: the answer, bringing nothing.
                Applied::Below => {
                    self.handle_pull_answer(now_ms, from, Vec::new(), true);
                    return;
                }
            }
            if self.transfer.inbound.is_some() {
                self.transfer.stats.restarted += 1;
            }
            self.transfer.inbound = Some(Inbound {
                from,
                transfer: c.transfer,
                at: c.at,
                len: c.len,
                count: c.count,
                seqs: c.seqs.clone(),
                next: 0,
                bytes: Vec::new(),
            });
        }
        let Some(inb) = self.transfer.inbound.as_mut() else {
            return;
        };
        if c.index != inb.next {
            if c.index == 0 {
                // A later pull answered with the start of this transfer: resume.
                let (transfer, index) = (inb.transfer, inb.next);
                self.pull_goes_on(now_ms, from);
                self.request_chunk(from, transfer, index);
            }
            return; // a duplicate, or ahead of a lost chunk
        }
        let got = (inb.bytes.len() as u64).saturating_add(c.bytes.len() as u64);
        let last = c.index.saturating_add(1) == c.count;
        if got > inb.len || (last && got != inb.len) {
            let announced = inb.len;
            self.transfer_failed(now_ms, from, TransferError::Length { got, announced });
            return;
        }
        inb.bytes.extend_from_slice(&c.bytes);
        inb.next += 1;
        self.transfer.stats.chunks_received += 1;
        self.transfer.stats.bytes_received += c.bytes.len() as u64;
        if !last {
            let (transfer, index) = (inb.transfer, inb.next);
            self.pull_goes_on(now_ms, from);
            self.request_chunk(from, transfer, index);
            return;
        }
        let Some(inb) = self.transfer.inbound.take() else {
            return;
        };
        match reassemble(&inb) {
            Ok(snap) => self.transfer_complete(now_ms, from, snap),
            Err(e) => self.transfer_failed(now_ms, from, e),
        }
    }

    fn request_chunk(&mut self, to: RegionId, transfer: [u8; 32], index: u32) {
        self.outputs.push_back(Output::Send {
            to,
            msg: Message::SnapshotChunkRequest { transfer, index },
        });
    }

    /// The whole snapshot is in and decodes: verified and installed like a
    /// [`Message::Snapshot`] (installing replaces the replica's state: the transfer state,
    /// this region's own, carries over).
    fn transfer_complete(&mut self, now_ms: u64, from: RegionId, snap: Snapshot) {
        let mine = std::mem::take(&mut self.transfer);
        let applied = self.apply_peer_snapshot(&snap);
        self.transfer = mine;
        match applied {
            Ok(Applied::NotLacking) => {
                // A copy, or a transfer this region no longer needs: not the answer to the
                // pull in flight (as for a whole snapshot: simulator seed 168).
                self.transfer.stats.completed += 1;
            }
            Ok(_) => {
                self.transfer.stats.completed += 1;
                self.handle_pull_answer(now_ms, from, Vec::new(), true);
            }
            Err(RestoreError::Retired) => {
                // Settles nothing more: keeps what it settled, and stops this chain.
                self.handle_pull_answer(now_ms, from, Vec::new(), false);
            }
            Err(e) => self.transfer_failed(now_ms, from, e.into()),
        }
    }

    /// A transfer failed: dropped, reported and counted; the pull ends with nothing
    /// brought.
    fn transfer_failed(&mut self, now_ms: u64, from: RegionId, e: TransferError) {
        if self
            .transfer
            .inbound
            .as_ref()
            .is_some_and(|i| i.from == from)
        {
            self.transfer.inbound = None;
        }
        self.transfer.stats.failed += 1;
        self.report(Report::Snapshot {
            from,
            reason: e.to_string(),
        });
        self.transfer.last_error = Some(e);
        self.handle_pull_answer(now_ms, from, Vec::new(), true);
    }
}

/// The header on its own: a count that covers the index, a length within the limit.
fn check_header(c: &SnapshotChunk) -> Result<(), TransferError> {
    if c.len > SNAPSHOT_BYTES_MAX as u64 {
        return Err(TransferError::TooLarge(c.len));
    }
    if c.count == 0 || c.index >= c.count || u64::from(c.count) > c.len.max(1) {
        return Err(TransferError::Malformed(format!(
            "chunk {} of {} for {} bytes",
            c.index, c.count, c.len
        )));
    }
    Ok(())
}

/// The reassembled bytes: their hash, their decoding, and a body that matches the header it
/// was judged on (the signature is checked when the snapshot is applied).
fn reassemble(inb: &Inbound) -> Result<Snapshot, TransferError> {
    if transfer_id(&inb.bytes) != inb.transfer {
        return Err(TransferError::Hash);
    }
    let snap = wire::decode_snapshot(&inb.bytes).map_err(TransferError::Decode)?;
    if snap.body.at != inb.at || !snap.body.seqs().eq(inb.seqs.iter().copied()) {
        return Err(TransferError::Malformed(
            "the snapshot's point or version vector is not its header's".into(),
        ));
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(index: u32, count: u32, len: u64) -> SnapshotChunk {
        SnapshotChunk {
            transfer: [0; 32],
            at: Hlc::ZERO,
            len,
            count,
            index,
            bytes: Vec::new(),
            seqs: Vec::new(),
        }
    }

    #[test]
    fn headers_that_cannot_hold_are_refused() {
        assert!(check_header(&chunk(0, 1, 10)).is_ok());
        assert!(check_header(&chunk(2, 3, 10)).is_ok());
        assert!(matches!(
            check_header(&chunk(3, 3, 10)),
            Err(TransferError::Malformed(_))
        ));
        assert!(matches!(
            check_header(&chunk(0, 0, 10)),
            Err(TransferError::Malformed(_))
        ));
        assert!(matches!(
            check_header(&chunk(0, 11, 10)),
            Err(TransferError::Malformed(_))
        ));
        assert!(matches!(
            check_header(&chunk(0, 1, SNAPSHOT_BYTES_MAX as u64 + 1)),
            Err(TransferError::TooLarge(_))
        ));
    }

    #[test]
    fn chunk_counts_cover_the_bytes() {
        assert_eq!(chunk_count(0, 4), 1);
        assert_eq!(chunk_count(4, 4), 1);
        assert_eq!(chunk_count(5, 4), 2);
        assert_eq!(chunk_count(5, 0), 5);
    }
}
