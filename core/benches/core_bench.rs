//! wallet-core benchmark: merge throughput, settled-fold throughput, balance reads at 10 vs
//! 1,000,000 events of history, resident memory per event held, and local acceptance under
//! each consistency mode (optimistic, escrow within rights, home at the home: issue 11 wants
//! escrow within 10 % of optimistic).
//!
//! Run with `cargo bench -p wallet-core --bench core_bench`. `CORE_BENCH_EVENTS=N` changes
//! the history length (default 1,000,000); `CORE_BENCH_SIG=64` gives every event a 64-byte
//! signature, as with ed25519 on the node (default: none, as in the simulator).
//!
//! Figures are printed, never asserted: timing goals live here, not in tests.

use std::hint::black_box;
use std::time::Instant;

use rust_decimal::Decimal;
use wallet_core::*;

const ACCOUNTS: usize = 10;
const BATCH: usize = 1024;
const READS: usize = 1_000_000;

/// Accepts any signature (the bench measures the core, not ed25519).
struct AnySig;
impl Authenticator for AnySig {
    fn sign(&self, _: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn verify(&self, _: RegionId, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

struct Setup {
    eu: RegionId,
    us: RegionId,
    accounts: Vec<AccountId>,
    sig_len: usize,
}

impl Setup {
    fn replica(&self) -> Replica {
        let mut cfg = Config::new(self.eu, vec![self.eu, self.us], Policy::zero());
        cfg.auth = Box::new(AnySig);
        let mut r = Replica::new(cfg, Hlc::ZERO);
        // The peer's policy must be known before anything settles; its promise is below
        // every event of the history.
        let hb = Heartbeat {
            origin: self.us,
            hlc: Hlc(1),
            seq: 0,
            vv: VClock::new(),
            policy: Policy::zero().hash(),
        };
        let sig = Box::new([]);
        r.handle_heartbeat(2_000, self.us, SignedHeartbeat { hb, sig });
        drain(&mut r);
        r
    }

    /// Event `seq` of origin `us`: deposits, purchases and refunds spread over the accounts,
    /// every tenth with an idempotency key.
    fn event(&self, seq: u64) -> Event {
        let i = seq as usize;
        let kind = match i % 4 {
            0 | 1 => Kind::Deposit,
            2 => Kind::Purchase,
            _ => Kind::Refund,
        };
        let cents = 100 + (i as i64 * 7919) % 10_000;
        Event {
            id: EventId {
                origin: self.us,
                seq,
            },
            hlc: Hlc(Hlc::from_millis(1_000).0 + seq),
            body: Body::Tx(Tx {
                account: self.accounts[i % self.accounts.len()].clone(),
                kind,
                amount: Amount::new(Decimal::new(cents, 2), Currency::USD).unwrap(),
                currency: Currency::USD,
                idempotency_key: (i % 10 == 0).then(|| format!("k-{i}").into()),
                reference: None,
            }),
            sig: vec![7u8; self.sig_len].into(),
        }
    }
}

fn drain(r: &mut Replica) {
    while let Some(o) = r.poll_output() {
        if let Output::Persist { index, .. } = o {
            r.handle_persisted(index);
        }
    }
}

/// Merges `n` remote events in batches; returns the replica and the seconds spent inside
/// `handle_events`. With `settle_as_we_go`, the replica also announces a heartbeat after
/// every batch, so the watermark follows the merge as on a live node.
fn merge(s: &Setup, n: u64, settle_as_we_go: bool) -> (Replica, f64) {
    let mut r = s.replica();
    if settle_as_we_go {
        r.handle_timeout(2_000); // clock ceiling requested
        drain(&mut r);
    }
    let mut spent = 0.0;
    let mut seq = 1;
    let mut now = 2_000;
    while seq <= n {
        let end = (seq + BATCH as u64).min(n + 1);
        let batch: Vec<Event> = (seq..end).map(|q| s.event(q)).collect();
        let t = Instant::now();
        r.handle_events(now, s.us, batch);
        spent += t.elapsed().as_secs_f64();
        // The host drains outputs after every input (persist records, dropped here).
        drain(&mut r);
        if settle_as_we_go {
            now += 1_000;
            r.handle_timeout(now);
            drain(&mut r);
        }
        seq = end;
    }
    (r, spent)
}

/// Lets the replica announce its own heartbeat, which settles everything; returns seconds.
fn settle(r: &mut Replica) -> f64 {
    r.handle_timeout(3_000); // requests a clock ceiling
    drain(r); // ceiling durable
    let t = Instant::now();
    r.handle_timeout(3_000); // announces: the watermark passes every event
    drain(r); // the watermark record is durable: the fold runs
    t.elapsed().as_secs_f64()
}

/// A restart: a fresh replica reloads every event of `held` and its watermark (the fold runs
/// again over the whole history).
fn restart(s: &Setup, held: &Replica) -> f64 {
    let events: Vec<Event> = held.origin_events(s.us, 0).to_vec();
    let mut cfg = Config::new(s.eu, vec![s.eu, s.us], Policy::zero());
    cfg.auth = Box::new(AnySig);
    let mut r = Replica::new(cfg, Hlc::ZERO);
    let t = Instant::now();
    r.load(events);
    r.restore_watermark(held.watermark());
    let spent = t.elapsed().as_secs_f64();
    assert_eq!(r.stats().settled, held.stats().settled);
    assert_eq!(r.feed_len(), held.feed_len());
    spent
}

fn balance_read_ns(r: &Replica, accounts: &[AccountId]) -> f64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let t = Instant::now();
    for _ in 0..READS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let a = &accounts[(x % accounts.len() as u64) as usize];
        black_box(r.balance(black_box(a), Currency::USD));
    }
    t.elapsed().as_secs_f64() * 1e9 / READS as f64
}

/// Local acceptance: a single-region replica takes `n` purchases of 1.00 on one account
/// (funded by one credit without a key, so escrow holds the rights here, and the home is here),
/// each persisted at once. Returns submissions per second.
fn local_accept(policy: &str, n: u64) -> f64 {
    let eu = RegionId::new("eu").unwrap();
    let policy = Policy::from_toml(policy).unwrap();
    let mut r = Replica::new(Config::new(eu, vec![eu], policy), Hlc::ZERO);
    let account = AccountId::new("acct-0000").unwrap();
    let req = |kind: Kind, cents: i64| TxRequest {
        account: account.clone(),
        kind,
        amount: Amount::new(Decimal::new(cents, 2), Currency::USD).unwrap(),
        currency: Currency::USD,
        idempotency_key: None,
        reference: None,
    };
    r.submit(1_000, req(Kind::Deposit, (n as i64 + 1) * 100))
        .unwrap();
    drain(&mut r);
    let started = Instant::now();
    for i in 0..n {
        let s = r.submit(1_000 + i, req(Kind::Purchase, 100)).unwrap();
        assert!(matches!(s, Submitted::New(_)), "decided locally");
        drain(&mut r);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let n: u64 = std::env::var("CORE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let sig_len: usize = std::env::var("CORE_BENCH_SIG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let s = Setup {
        eu: RegionId::new("eu").unwrap(),
        us: RegionId::new("us").unwrap(),
        accounts: (0..ACCOUNTS)
            .map(|i| AccountId::new(&format!("acct-{i:04}")).unwrap())
            .collect(),
        sig_len,
    };
    println!(
        "wallet-core bench: {n} events, {ACCOUNTS} accounts, {sig_len}-byte signatures, \
         size_of::<Event>() = {} bytes",
        std::mem::size_of::<Event>()
    );
    // `CORE_BENCH_ONLY=compaction`: the compaction and restart figures alone.
    if std::env::var("CORE_BENCH_ONLY").as_deref() == Ok("compaction") {
        compaction(&s);
        return;
    }

    // Memory first, in a fresh heap: merge with settlement following, as on a live node.
    let rss_before = vm_rss_bytes();
    let (mut held, _) = merge(&s, n, true);
    settle(&mut held);
    let rss_after = vm_rss_bytes();
    assert_eq!(held.stats().settled, n);
    drop(held);

    // Throughput: merge alone (nothing settles), then the fold of the whole history at once.
    let (mut big, merge_s) = merge(&s, n, false);
    let fold_s = settle(&mut big);
    assert_eq!(big.event_count(), n);
    assert_eq!(big.stats().settled, n);

    // Balance reads: same accounts, 10 vs n events; alternate and keep the best of 5.
    let restart_s = restart(&s, &big);

    let (mut small, _) = merge(&s, 10, false);
    settle(&mut small);
    assert_eq!(small.event_count(), 10);
    let (mut small_ns, mut big_ns) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        small_ns = small_ns.min(balance_read_ns(&small, &s.accounts));
        big_ns = big_ns.min(balance_read_ns(&big, &s.accounts));
    }

    println!(
        "merge (handle_events, remote events): {:>12.0} events/s  ({n} events in {:.3} s)",
        n as f64 / merge_s,
        merge_s
    );
    println!(
        "settled fold:                         {:>12.0} events/s  ({n} events in {:.3} s)",
        n as f64 / fold_s,
        fold_s
    );
    println!(
        "restart (load + restore_watermark):   {:>12.0} events/s  ({n} events in {:.3} s)",
        n as f64 / restart_s,
        restart_s
    );
    println!("balance read at 10 events:            {small_ns:>12.1} ns");
    println!("balance read at {n} events:     {big_ns:>12.1} ns");
    println!(
        "balance read ratio (big/small):       {:>12.2}",
        big_ns / small_ns
    );
    let per_event = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    println!(
        "resident memory: {} MiB before, {} MiB after -> {:.1} bytes per event held (target <= 256)",
        rss_before / (1 << 20),
        rss_after / (1 << 20),
        per_event
    );
    black_box(&big);

    // Consistency modes: local acceptance, best of 3 each.
    let accepts = (n / 10).max(1_000);
    let best = |p: &str| (0..3).map(|_| local_accept(p, accepts)).fold(0.0, f64::max);
    let optimistic = best("[default]\n");
    let escrow = best("[default]\nmode = \"escrow\"\n");
    let home = best("[default]\nmode = \"home\"\nhome = \"eu\"\n");
    println!("local accept, optimistic:             {optimistic:>12.0} submissions/s  ({accepts} debits)");
    println!(
        "local accept, escrow within rights:   {escrow:>12.0} submissions/s  ({:.1} % of optimistic; goal >= 90 %)",
        100.0 * escrow / optimistic
    );
    println!(
        "local accept, home at the home:       {home:>12.0} submissions/s  ({:.1} % of optimistic)",
        100.0 * home / optimistic
    );
    drop(big);
    compaction(&s);
}

/// Compaction (issue 13): `COMPACT_BENCH_ACCOUNTS` accounts (default 100,000) with four
/// settled events each; `us` announces holding its whole log, then `compact` folds the settled
/// history into a snapshot and drops it from memory. Prints the time, the events left in
/// memory (keyed events within the 24 h key retention stay) and the encoded snapshot's bytes
/// per account; then the restart time without compaction (reload and re-fold every event)
/// and from the snapshot (decode, `restore`, watermark). `CORE_BENCH_ONLY=compaction` runs
/// only this.
fn compaction(base: &Setup) {
    let accounts: usize = std::env::var("COMPACT_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let s = Setup {
        eu: base.eu,
        us: base.us,
        accounts: (0..accounts)
            .map(|i| AccountId::new(&format!("acct-{i:06}")).unwrap())
            .collect(),
        sig_len: base.sig_len,
    };
    let n = accounts as u64 * 4;
    let (mut r, _) = merge(&s, n, true);
    settle(&mut r);
    let mut vv = VClock::new();
    vv.dots.insert(s.us, n);
    let hb = Heartbeat {
        origin: s.us,
        hlc: s.event(n).hlc,
        seq: n,
        vv,
        policy: Policy::zero().hash(),
    };
    r.handle_heartbeat(
        4_000,
        s.us,
        SignedHeartbeat {
            hb,
            sig: Box::new([]),
        },
    );
    drain(&mut r);
    let before = r.events_in_memory();
    // A restart without compaction reloads and re-folds the whole history.
    let full_restart = restart(&s, &r);
    let t = Instant::now();
    let snap = r.compact().expect("a compaction point");
    let spent = t.elapsed().as_secs_f64();
    let bytes = wire::encode_snapshot(&snap).len();
    println!(
        "compaction of {n} settled events over {accounts} accounts: {spent:.3} s; events in \
         memory {before} -> {} (keyed ones within retention stay); snapshot {} KiB = {:.1} \
         bytes per account",
        r.events_in_memory(),
        bytes / 1024,
        bytes as f64 / accounts as f64
    );
    // A restart after compaction: decode the stored snapshot, restore from it (no event
    // after it here), then the watermark.
    let stored = wire::encode_snapshot(&snap);
    let mut cfg = Config::new(s.eu, vec![s.eu, s.us], Policy::zero());
    cfg.auth = Box::new(AnySig);
    let mut fresh = Replica::new(cfg, Hlc::ZERO);
    let t = Instant::now();
    let snap = wire::decode_snapshot(&stored).expect("decodes");
    fresh
        .restore(&snap, Vec::new())
        .expect("its own snapshot restores");
    fresh.restore_watermark(r.watermark());
    let from_snapshot = t.elapsed().as_secs_f64();
    assert_eq!(fresh.stats().settled, r.stats().settled);
    assert_eq!(fresh.all_balances().len(), r.all_balances().len());
    println!(
        "restart after {n} events over {accounts} accounts: reload every event {full_restart:.3} s; \
         from the snapshot {from_snapshot:.3} s ({:.1}x faster)",
        full_restart / from_snapshot.max(1e-9)
    );
    transfer(&s, &mut r, bytes);
}

/// Chunked snapshot transfer (issue 13, replica/transfer.rs): `us`, its disk lost, pulls
/// from `eu`, which answers with its snapshot in chunks of the default 1 MiB; each chunk is
/// handed over at once (no network). Prints the bytes, the chunks, the throughput of the
/// whole exchange (sender's chunking, receiver's reassembly, hash, decode, signature check and
/// install) and the time of the last step alone (reassemble, decode, verify, install).
fn transfer(s: &Setup, sender: &mut Replica, bytes: usize) {
    let mut cfg = Config::new(s.us, vec![s.eu, s.us], Policy::zero());
    cfg.auth = Box::new(AnySig);
    cfg.restore = true;
    let mut receiver = Replica::new(cfg, Hlc::ZERO);
    drain(&mut receiver);
    let mut to_sender = vec![receiver.pull_request(1_000)];
    let (mut last_step, mut hops) = (0.0, 0);
    let t = Instant::now();
    while !to_sender.is_empty() && receiver.stats().restores == 0 {
        hops += 1;
        let mut to_receiver = Vec::new();
        for m in to_sender.drain(..) {
            sender.handle_message(5_000, s.us, m);
        }
        while let Some(o) = sender.poll_output() {
            if let Output::Send { msg, .. } = o {
                to_receiver.push(msg);
            }
        }
        for m in to_receiver {
            let step = Instant::now();
            receiver.handle_message(5_000, s.eu, m);
            last_step = step.elapsed().as_secs_f64();
        }
        while let Some(o) = receiver.poll_output() {
            match o {
                Output::Send { msg, .. } => to_sender.push(msg),
                Output::Persist { index, .. } => receiver.handle_persisted(index),
                _ => {}
            }
        }
    }
    let spent = t.elapsed().as_secs_f64();
    let st = receiver.snapshot_transfer_stats();
    assert_eq!((st.completed, st.failed), (1, 0), "{st:?}");
    assert_eq!(st.bytes_received, bytes as u64);
    assert_eq!(receiver.stats().restores, 1);
    let moving = spent - last_step;
    println!(
        "chunked transfer of that snapshot ({} MiB in {} chunks, {hops} round trips, no \
         network): {spent:.3} s = {:.1} MB/s end to end; the chunks alone (encoding once, \
         sending, appending) {moving:.3} s = {:.1} MB/s; install (last chunk: reassemble, hash, \
         decode, verify, restore) {last_step:.3} s",
        bytes / (1 << 20),
        st.chunks_received,
        bytes as f64 / spent / 1e6,
        bytes as f64 / moving.max(1e-9) / 1e6
    );
}
