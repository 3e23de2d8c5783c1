//! Chunked snapshot transfer (issue 13, replica/transfer.rs): a region that lost its disk in
//! a compacted cluster gets the history back as a peer's snapshot in many chunks, whatever
//! the network does to them (lost, reordered, duplicated), starts over when the sender's
//! snapshot changes half-way, and refuses a snapshot whose bytes or signature do not hold,
//! changing nothing.

mod common;

use common::*;
use proptest::prelude::*;
use wallet_core::message::SnapshotChunk;
use wallet_core::replica::{
    transfer_id, SnapAccount, SnapBalance, SnapshotBody, TransferError,
    SNAPSHOT_CHUNK_BYTES_DEFAULT,
};
use wallet_core::*;

const CHUNK: usize = 64;
const ACCOUNTS: usize = 24;

fn account(i: usize) -> String {
    format!("acct{i:03}")
}

/// Three regions, each taking deposits on its share of `ACCOUNTS` accounts, `rounds` times.
fn load(c: &mut Cluster, rounds: usize) {
    for round in 0..rounds {
        for i in 0..ACCOUNTS {
            let amount = format!("{}.{:02}", 1 + i, round);
            let _ = c.submit(
                i % 3,
                req(&account(i), Kind::Deposit, &amount, Currency::USD),
            );
        }
        c.persist_all();
        c.deliver_all();
    }
}

/// Settled, compacted everywhere (so history below the snapshots is served by no one),
/// persisted.
fn compact_all(c: &mut Cluster) {
    assert!(c.settle_all());
    check_snapshots_agree(c).unwrap();
    for i in 0..c.nodes.len() {
        assert!(c.nodes[i].replica.compact().is_some(), "{i} compacts");
        c.drain(i);
    }
    c.persist_all();
}

/// Three regions with `CHUNK`-byte chunks, loaded twice (not settled yet).
fn loaded_cluster() -> Cluster {
    let mut c = Cluster::new(&["eu", "us", "ap"], Policy::zero());
    c.snapshot_chunk_bytes = CHUNK;
    for i in 0..c.nodes.len() {
        c.nodes[i].replica = Replica::new(c.config(c.names[i]), Hlc::ZERO);
    }
    c.connect_all(None);
    load(&mut c, 2);
    c
}

fn compacted_cluster() -> Cluster {
    let mut c = loaded_cluster();
    compact_all(&mut c);
    c
}

/// Every account's balance at every region.
fn balances(c: &Cluster) -> Vec<Vec<String>> {
    c.nodes
        .iter()
        .map(|n| {
            (0..ACCOUNTS)
                .map(|i| {
                    let b = n.replica.balance(&acct(&account(i)), Currency::USD);
                    format!("{}/{}", b.provisional, b.settled)
                })
                .collect()
        })
        .collect()
}

/// Runs until region `i` restored and everything settled; every region then holds the same
/// balances, and region `i` passes its self-check.
fn converge(c: &mut Cluster, i: usize) {
    for _ in 0..200 {
        c.persist_all();
        c.deliver_all();
        c.tick(300);
        if !c.nodes[i].replica.is_restoring() {
            break;
        }
    }
    assert!(!c.nodes[i].replica.is_restoring(), "still restoring");
    assert!(c.settle_all());
    let b = balances(c);
    assert!(b.iter().all(|x| *x == b[0]), "{b:?}");
    assert_ne!(b[0][0], "0/0");
    c.nodes[i].replica.check_invariants().unwrap();
}

#[test]
fn a_wiped_region_bootstraps_from_a_snapshot_in_many_chunks() {
    let mut c = compacted_cluster();
    let len = wire::encode_snapshot(c.nodes[0].replica.last_snapshot().unwrap()).len();
    c.wipe(2);
    converge(&mut c, 2);
    let t = c.nodes[2].replica.snapshot_transfer_stats();
    assert_eq!(t.completed, 1, "{t:?}");
    assert_eq!(t.failed, 0, "{t:?}");
    assert_eq!(t.bytes_received, len as u64, "{t:?}");
    assert_eq!(t.chunks_received, len.div_ceil(CHUNK) as u64, "{t:?}");
    assert!(t.chunks_received >= 10, "{t:?}");
    assert_eq!(c.nodes[2].replica.stats().restores, 1);
    assert_eq!(c.nodes[2].replica.snapshot_transfer_held(), 0);
    // The senders counted what they sent.
    let sent: u64 = (0..2)
        .map(|i| c.nodes[i].replica.snapshot_transfer_stats().chunks_sent)
        .sum();
    assert!(sent >= t.chunks_received, "{sent}");
    // And it persisted the snapshot: a crash restarts from it.
    assert!(c.nodes[2].disk_snapshot.is_some());
    c.crash(2);
    assert_eq!(c.nodes[2].replica.stats().restores, 1);
    converge(&mut c, 2);
}

/// Delivers what is in flight in an order, with losses and copies, chosen by `seed`.
fn deliver_badly(c: &mut Cluster, seed: &mut u64) {
    let mut next = || {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 33) as usize
    };
    for _ in 0..2_000 {
        if c.inflight.is_empty() {
            return;
        }
        let k = next() % c.inflight.len();
        let transfer = matches!(
            c.inflight[k].2,
            Message::SnapshotChunk(_) | Message::SnapshotChunkRequest { .. }
        );
        match next() % 8 {
            0 if transfer => {
                c.inflight.remove(k);
            }
            1 if transfer => c.duplicate(k),
            _ => c.deliver(k),
        }
    }
}

fn bootstrap_through_a_bad_network(mut seed: u64) -> Result<(), TestCaseError> {
    let mut c = compacted_cluster();
    c.wipe(2);
    for _ in 0..400 {
        c.persist_all();
        deliver_badly(&mut c, &mut seed);
        c.tick(300);
        if !c.nodes[2].replica.is_restoring() {
            break;
        }
    }
    prop_assert!(!c.nodes[2].replica.is_restoring(), "still restoring");
    converge(&mut c, 2);
    let t = c.nodes[2].replica.snapshot_transfer_stats();
    prop_assert!(t.completed >= 1, "{:?}", t);
    prop_assert_eq!(t.failed, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn lost_reordered_and_duplicated_chunks_still_bootstrap(seed in any::<u64>()) {
        bootstrap_through_a_bad_network(seed)?;
    }
}

#[test]
fn a_snapshot_replaced_mid_transfer_starts_the_transfer_over() {
    // Two clusters alike up to their compaction; in the second, eu takes more deposits and
    // everything compacts again.
    let mut a = compacted_cluster();
    let mut b = compacted_cluster();
    let first = transfer_id(&wire::encode_snapshot(
        a.nodes[0].replica.last_snapshot().unwrap(),
    ));
    load(&mut b, 1);
    compact_all(&mut b);
    let second = transfer_id(&wire::encode_snapshot(
        b.nodes[0].replica.last_snapshot().unwrap(),
    ));
    assert_ne!(first, second);
    // ap loses its disk in the first: only eu answers (us is cut off from ap).
    a.partition(0b010);
    a.wipe(2);
    let mut chunks = 0;
    while chunks < 5 {
        let k = a
            .inflight
            .iter()
            .position(|(to, _, _)| *to == 2 || *to == 0)
            .expect("a transfer goes on");
        if matches!(a.inflight[k].2, Message::SnapshotChunk(_)) {
            chunks += 1;
        }
        a.deliver(k);
    }
    let held = a.nodes[2].replica.snapshot_transfer_held();
    assert!(held > 0, "part of the first snapshot held");
    // eu moves on: it is now the eu of the second cluster, with a newer snapshot. ap's next
    // chunk request names the first: eu answers with chunk 0 of its new one.
    std::mem::swap(&mut a.nodes[0], &mut b.nodes[0]);
    a.heal();
    converge(&mut a, 2);
    let t = a.nodes[2].replica.snapshot_transfer_stats();
    assert_eq!(t.restarted, 1, "{t:?}");
    assert_eq!(t.failed, 0, "{t:?}");
    assert_eq!(
        transfer_id(&wire::encode_snapshot(
            a.nodes[2].replica.last_snapshot().unwrap()
        )),
        second,
        "ap installed the second snapshot"
    );
}

/// `snap`'s encoding, cut into chunks as a sender would, with `body`'s header.
fn chunks_of(bytes: &[u8], transfer: [u8; 32], body: &SnapshotBody) -> Vec<SnapshotChunk> {
    let count = bytes.len().div_ceil(CHUNK);
    bytes
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, b)| SnapshotChunk {
            transfer,
            at: body.at,
            len: bytes.len() as u64,
            count: count as u32,
            index: i as u32,
            bytes: b.to_vec(),
            seqs: body.seqs().collect(),
        })
        .collect()
}

/// A fresh region that verifies signatures (as `Tag`) is sent `chunks` from eu: every
/// report it makes, and it must hold nothing afterwards.
fn send_to_fresh(c: &Cluster, chunks: Vec<SnapshotChunk>) -> (Replica, Vec<Report>) {
    let mut cfg = c.config(c.names[2]);
    cfg.auth = Box::new(Tag(c.names[2]));
    let mut r = Replica::new(cfg, Hlc::ZERO);
    let mut reports = Vec::new();
    for ch in chunks {
        r.handle_message(10_000, c.names[0], Message::SnapshotChunk(ch));
        while let Some(o) = r.poll_output() {
            if let Output::Report(rep) = o {
                reports.push(rep);
            }
        }
    }
    assert_eq!(r.event_count(), 0);
    assert_eq!(r.stats().restores, 0);
    assert_eq!(r.watermark(), Hlc::ZERO);
    assert_eq!(r.snapshot_transfer_stats().completed, 0);
    (r, reports)
}

#[test]
fn a_corrupt_or_forged_snapshot_fails_the_transfer_and_changes_nothing() {
    let c = compacted_cluster();
    let mut snap = c.nodes[0].replica.last_snapshot().unwrap().clone();
    snap.sig = tag(
        snap.signer,
        &Snapshot::signing_bytes(&snap.body, snap.signer),
    )
    .into();
    let good = wire::encode_snapshot(&snap);
    let at = snap.body.at;
    // The genuine bytes, signed for real, install (the control).
    {
        let mut cfg = c.config(c.names[2]);
        cfg.auth = Box::new(Tag(c.names[2]));
        let mut r = Replica::new(cfg, Hlc::ZERO);
        for ch in chunks_of(&good, transfer_id(&good), &snap.body) {
            r.handle_message(10_000, c.names[0], Message::SnapshotChunk(ch));
        }
        assert_eq!(r.snapshot_transfer_stats().completed, 1);
        assert_eq!(r.watermark(), at);
    }
    // One byte flipped in one chunk: the hash does not match.
    let mut corrupt = chunks_of(&good, transfer_id(&good), &snap.body);
    corrupt[3].bytes[5] ^= 1;
    let (r, reports) = send_to_fresh(&c, corrupt);
    assert_eq!(r.snapshot_transfer_error(), Some(&TransferError::Hash));
    assert_eq!(r.snapshot_transfer_stats().failed, 1);
    assert!(matches!(reports.as_slice(), [Report::Snapshot { .. }]));
    // A forged balance under a consistent transfer id: the signature does not verify.
    let mut forged = snap.clone();
    forged.body.accounts[0].balances[0].settled = dec("1000000.00");
    let bytes = wire::encode_snapshot(&forged);
    let (r, reports) = send_to_fresh(&c, chunks_of(&bytes, transfer_id(&bytes), &forged.body));
    assert!(
        matches!(
            r.snapshot_transfer_error(),
            Some(TransferError::Refused(RestoreError::Signature(_)))
        ),
        "{:?}",
        r.snapshot_transfer_error()
    );
    assert!(matches!(reports.as_slice(), [Report::Snapshot { .. }]));
    // The last chunk dropped and the rest announced as complete: a length error.
    let mut short = chunks_of(&good, transfer_id(&good), &snap.body);
    let n = short.len();
    short[n - 1].bytes.pop();
    let (r, _) = send_to_fresh(&c, short);
    assert!(matches!(
        r.snapshot_transfer_error(),
        Some(TransferError::Length { .. })
    ));
    // A header announcing more than the limit.
    let mut huge = chunks_of(&good, transfer_id(&good), &snap.body);
    huge.truncate(1);
    huge[0].len = wire::SNAPSHOT_BYTES_MAX as u64 + 1;
    let (r, _) = send_to_fresh(&c, huge);
    assert!(matches!(
        r.snapshot_transfer_error(),
        Some(TransferError::TooLarge(_))
    ));
    // The genuine bytes under a header that claims more than the body folds: judged on a
    // header the body does not match, refused once assembled.
    let mut claims = chunks_of(&good, transfer_id(&good), &snap.body);
    for ch in &mut claims {
        ch.seqs[0].1 += 1;
    }
    let (r, _) = send_to_fresh(&c, claims);
    assert!(matches!(
        r.snapshot_transfer_error(),
        Some(TransferError::Malformed(_))
    ));
}

/// Chunk 0 is judged by the rule for a whole snapshot (`Replica::snapshot_fit`), from the
/// version vector in its header: a region that holds every event the snapshot folds, though
/// it has not settled them (its watermark is below the point), asks for no chunk and holds no
/// byte; a region that lacks them starts the transfer.
#[test]
fn chunk_0_of_a_snapshot_that_folds_nothing_lacking_moves_no_bytes() {
    let mut c = loaded_cluster();
    assert!(c.settle_all());
    let events = all_events(&c.nodes[2].replica);
    let snap = c.nodes[0].replica.compact().expect("eu compacts");
    let bytes = wire::encode_snapshot(&snap);
    let first = chunks_of(&bytes, transfer_id(&bytes), &snap.body).remove(0);
    let (eu, ap) = (c.names[0], c.names[2]);
    // ap restarted with every event, before any heartbeat: nothing settled yet.
    let mut holder = Replica::new(c.config(ap), Hlc::ZERO);
    holder.load(events);
    assert!(holder.watermark() < snap.body.at);
    holder.handle_message(10_000, eu, Message::SnapshotChunk(first.clone()));
    while let Some(o) = holder.poll_output() {
        assert!(!matches!(o, Output::Send { .. }), "{o:?}");
    }
    assert_eq!(holder.snapshot_transfer_held(), 0);
    assert_eq!(holder.snapshot_transfer_stats().chunks_received, 0);
    // A fresh region lacks them: it appends chunk 0 and asks for chunk 1.
    let mut fresh = Replica::new(c.config(ap), Hlc::ZERO);
    fresh.handle_message(10_000, eu, Message::SnapshotChunk(first));
    assert_eq!(fresh.snapshot_transfer_held(), CHUNK as u64);
    let mut asked = false;
    while let Some(o) = fresh.poll_output() {
        if let Output::Send {
            msg: Message::SnapshotChunkRequest { index: 1, .. },
            ..
        } = o
        {
            asked = true;
        }
    }
    assert!(asked);
}

#[test]
fn a_region_that_lost_its_disk_seals_its_epoch_after_a_chunked_bootstrap() {
    let mut c = compacted_cluster();
    c.lose_disk(2);
    converge(&mut c, 2);
    let t = c.nodes[2].replica.snapshot_transfer_stats();
    assert_eq!((t.completed, t.failed), (1, 0), "{t:?}");
    assert!(t.chunks_received >= 10, "{t:?}");
    // It issues again, under its new epoch, and everyone settles it.
    c.submit(2, req(&account(2), Kind::Deposit, "5.00", Currency::USD))
        .unwrap();
    assert!(c.settle_all());
    let b = balances(&c);
    assert!(b.iter().all(|x| *x == b[0]), "{b:?}");
}

/// Delivers only what is in flight now (what the deliveries send waits for the next step),
/// persists, and lets 10 ms pass: one step is one network hop.
fn hop(c: &mut Cluster) {
    let n = c.inflight.len();
    for _ in 0..n {
        c.deliver(0);
    }
    c.persist_all();
    c.tick(10);
}

/// Once the last chunk is in and the snapshot installed, the region pulls the events after
/// it from the same member at once (no back-off: the install is progress): with one network
/// hop per step they arrive one round trip after the install, long before a heartbeat
/// (250 ms) or a back-off could send the next pull.
#[test]
fn after_installing_a_snapshot_the_events_after_it_arrive_one_round_trip_later() {
    let mut c = compacted_cluster();
    load(&mut c, 1);
    c.persist_all();
    c.deliver_all();
    let target = c.nodes[0].replica.version_vector().clone();
    c.wipe(2);
    let mut installed = None;
    for step in 0..200 {
        hop(&mut c);
        let r = &c.nodes[2].replica;
        if installed.is_none() && r.stats().restores == 1 {
            assert_ne!(*r.version_vector(), target, "the snapshot alone");
            installed = Some(step);
        }
        if *r.version_vector() == target {
            let after = installed.map(|i| step - i);
            assert_eq!(after, Some(2), "steps from the install to every event");
            assert_eq!(r.pull_stats().backoffs, 0);
            return;
        }
    }
    panic!("never caught up");
}

/// What SPEC §10 needs and one message could not do: a snapshot larger than
/// `MESSAGE_BYTES_MAX` (here 250,000 accounts with 64-byte names) reaches a region in chunks that each fit
/// in a message, and installs there. The accounts are added to a real snapshot's body (no
/// signatures in this harness, so the body stays valid).
#[test]
fn a_snapshot_over_the_message_limit_travels_in_chunks_that_each_fit() {
    let c = compacted_cluster();
    let mut snap = c.nodes[0].replica.last_snapshot().unwrap().clone();
    let one = snap.body.accounts[0].balances[0].clone();
    snap.body.accounts.extend((0..250_000).map(|i| SnapAccount {
        account: acct(&format!("zz-{}-{i:09}", "customer-account".repeat(3))),
        balances: vec![SnapBalance {
            settled: dec("1.00"),
            ..one.clone()
        }],
    }));
    let len = wire::encode_snapshot(&snap).len();
    assert!(len > wire::MESSAGE_BYTES_MAX, "{len} bytes");
    // The sender holds it (restored from it); the receiver lacks everything it folds.
    let (eu, ap) = (c.names[0], c.names[2]);
    let mut sender = Replica::new(Config::new(eu, c.names.clone(), Policy::zero()), Hlc::ZERO);
    sender.restore(&snap, Vec::new()).unwrap();
    let mut receiver = Replica::new(Config::new(ap, c.names.clone(), Policy::zero()), Hlc::ZERO);
    let mut to_sender = vec![receiver.pull_request(1_000)];
    let mut largest = 0;
    for _ in 0..100 {
        let mut to_receiver = Vec::new();
        for m in to_sender.drain(..) {
            sender.handle_message(20_000, ap, m);
        }
        while let Some(o) = sender.poll_output() {
            if let Output::Send { msg, .. } = o {
                largest = largest.max(wire::encoded_message_len(&msg));
                to_receiver.push(msg);
            }
        }
        for m in to_receiver {
            receiver.handle_message(20_000, eu, m);
        }
        while let Some(o) = receiver.poll_output() {
            match o {
                Output::Send { msg, .. } => to_sender.push(msg),
                Output::Persist { index, .. } => receiver.handle_persisted(index),
                _ => {}
            }
        }
        if to_sender.is_empty() {
            break;
        }
    }
    let t = receiver.snapshot_transfer_stats();
    assert_eq!((t.completed, t.failed), (1, 0), "{t:?}");
    assert_eq!(t.bytes_received, len as u64);
    assert_eq!(
        t.chunks_received,
        len.div_ceil(SNAPSHOT_CHUNK_BYTES_DEFAULT) as u64
    );
    assert!(largest <= wire::MESSAGE_BYTES_MAX, "{largest}");
    assert_eq!(
        receiver
            .balance(
                &acct(&format!("zz-{}-000249999", "customer-account".repeat(3))),
                Currency::USD
            )
            .settled,
        dec("1.00")
    );
    assert_eq!(receiver.watermark(), snap.body.at);
}
