//! Storage commit-path benchmark (issue 16): the durable commit walletd's writer makes, through
//! the storage interface (`Store::commit`, redb, one `Durability::Immediate` transaction per
//! group commit) against an append-only segment log (framed records, one `write` and one
//! `fdatasync` per group commit), at batch sizes 1, 8 and 64 events per commit.
//!
//! ```text
//! cargo build --release --bin walletd-storebench
//! target/release/walletd-storebench [--commits 400] [--batches 1,8,64] [--only redb|log|log-prealloc]
//! target/release/walletd-storebench --archive 1000000 [--sig-bytes 234]   # the archive (issue 13)
//! strace -f -c -e trace=fsync,fdatasync target/release/walletd-storebench --only redb   # syscalls
//! ```
//!
//! Not a test: it prints figures. The events are real signed-size transactions (a 64-byte
//! plain signature, or a batch signature of a 32-event batch: `--sig-bytes 234`). The segment
//! log here is the commit path only (the framing and sync walletd would do); recovery
//! (indexes rebuilt on load, torn tail truncated) is not exercised.
//!
//! `--archive N` measures the archive of compacted history instead ([`wallet::archive`]): N
//! folded events appended in compaction batches of 1,000 (8 MiB segments), then the bytes per
//! event on disk (segments and their indexes) and the latency of reading a folded transaction
//! by id and a page of 50 of an account's history, at random, after a reopen.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wallet::storage::{Store, WriteOp};
use wallet_core::event::{Body, Tx};
use wallet_core::wire::encode_event;
use wallet_core::{AccountId, Amount, Currency, Event, EventId, Hlc, Kind, Record, RegionId};

/// Size of a preallocated segment (zero-filled, so an `fdatasync` inside it changes no
/// file size and no extent).
const SEGMENT_BYTES: u64 = 64 << 20;

struct Args {
    commits: usize,
    batches: Vec<usize>,
    only: Option<String>,
    sig_bytes: usize,
    archive: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        commits: 400,
        batches: vec![1, 8, 64],
        only: None,
        sig_bytes: 64,
        archive: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--commits" => a.commits = val()?.parse().map_err(|e| format!("--commits: {e}"))?,
            "--sig-bytes" => {
                a.sig_bytes = val()?.parse().map_err(|e| format!("--sig-bytes: {e}"))?
            }
            "--only" => a.only = Some(val()?),
            "--archive" => a.archive = Some(val()?.parse().map_err(|e| format!("--archive: {e}"))?),
            "--batches" => {
                a.batches = val()?
                    .split(',')
                    .map(|s| s.parse::<usize>().map_err(|e| format!("--batches: {e}")))
                    .collect::<Result<_, _>>()?
            }
            o => return Err(format!("unknown flag {o}")),
        }
    }
    Ok(a)
}

fn event(seq: u64, sig_bytes: usize) -> Result<Event, String> {
    let origin = RegionId::new("eu").map_err(|e| e.to_string())?;
    Ok(Event {
        id: EventId { origin, seq },
        hlc: Hlc::from_millis(1_700_000_000_000 + seq),
        body: Body::Tx(Tx {
            account: AccountId::new(&format!("acct-{:04}", seq % 1000))
                .map_err(|e| e.to_string())?,
            kind: Kind::Purchase,
            amount: Amount::parse("0.01", Currency::USD).map_err(|e| e.to_string())?,
            currency: Currency::USD,
            idempotency_key: None,
            reference: None,
        }),
        sig: vec![7u8; sig_bytes].into(),
    })
}

/// The commit path of an append-only segment log: each record framed as length (u32 LE) ‖
/// the first 8 bytes of SHA-256 over the payload ‖ payload; one write and one fdatasync per
/// commit.
struct SegmentLog {
    file: File,
    at: u64,
    buf: Vec<u8>,
    fsyncs: u64,
}

impl SegmentLog {
    fn create(path: &Path, prealloc: bool) -> std::io::Result<SegmentLog> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        if prealloc {
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..(SEGMENT_BYTES >> 20) {
                file.write_all(&zeros)?;
            }
            file.sync_all()?;
            file.seek(SeekFrom::Start(0))?;
        }
        Ok(SegmentLog {
            file,
            at: 0,
            buf: Vec::with_capacity(1 << 16),
            fsyncs: 0,
        })
    }

    fn commit(&mut self, ops: &[&WriteOp]) -> std::io::Result<()> {
        self.buf.clear();
        for op in ops {
            if let WriteOp::Record {
                record: Record::Event(e),
                ..
            } = op
            {
                let payload = encode_event(e);
                self.buf
                    .extend_from_slice(&(payload.len() as u32).to_le_bytes());
                self.buf.extend_from_slice(&Sha256::digest(&payload)[..8]);
                self.buf.extend_from_slice(&payload);
            }
        }
        self.file.write_all_at(&self.buf, self.at)?;
        self.at += self.buf.len() as u64;
        self.file.sync_data()?;
        self.fsyncs += 1;
        Ok(())
    }
}

struct Figures {
    commits_per_s: f64,
    us_per_event: f64,
    us_per_commit_p50: f64,
    us_per_commit_p99: f64,
}

fn run(
    commits: usize,
    batch: usize,
    sig_bytes: usize,
    mut commit: impl FnMut(&[&WriteOp]) -> Result<(), String>,
) -> Result<Figures, String> {
    let mut seq = 0u64;
    let mut lat = Vec::with_capacity(commits);
    let started = Instant::now();
    for _ in 0..commits {
        let ops: Vec<WriteOp> = (0..batch)
            .map(|_| {
                seq += 1;
                event(seq, sig_bytes).map(|e| WriteOp::Record {
                    index: seq,
                    record: Record::Event(e),
                })
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&WriteOp> = ops.iter().collect();
        let t = Instant::now();
        commit(&refs)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    Ok(Figures {
        commits_per_s: commits as f64 / secs,
        us_per_event: secs * 1e6 / (commits * batch) as f64,
        us_per_commit_p50: pct(0.50),
        us_per_commit_p99: pct(0.99),
    })
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("walletd-storebench: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    let a = parse_args()?;
    let dir = tempfile_dir()?;
    if let Some(n) = a.archive {
        let r = archive_bench(&dir, n, a.sig_bytes);
        let _ = std::fs::remove_dir_all(&dir);
        return r;
    }
    println!(
        "| store | events/commit | commits/s | events/s | µs/event | commit p50 µs | commit p99 µs | fsyncs/commit |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &batch in &a.batches {
        for name in ["redb", "log", "log-prealloc"] {
            if a.only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let sub = dir.join(format!("{name}-{batch}"));
            std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
            let (f, fsyncs) = match name {
                "redb" => {
                    let (store, _) = Store::open(&sub).map_err(|e| e.to_string())?;
                    let f = run(a.commits, batch, a.sig_bytes, |ops| {
                        store.commit(ops).map_err(|e| e.to_string())
                    })?;
                    (f, "see strace".to_string())
                }
                _ => {
                    let mut log = SegmentLog::create(&sub.join("seg-0"), name == "log-prealloc")
                        .map_err(|e| e.to_string())?;
                    let f = run(a.commits, batch, a.sig_bytes, |ops| {
                        log.commit(ops).map_err(|e| e.to_string())
                    })?;
                    (f, format!("{:.1}", log.fsyncs as f64 / a.commits as f64))
                }
            };
            println!(
                "| {name} | {batch} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {fsyncs} |",
                f.commits_per_s,
                f.commits_per_s * batch as f64,
                f.us_per_event,
                f.us_per_commit_p50,
                f.us_per_commit_p99,
            );
            let _ = std::fs::remove_dir_all(&sub);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `--archive N`: bytes per archived event and read latency of folded history.
fn archive_bench(dir: &Path, n: u64, sig_bytes: usize) -> Result<(), String> {
    use wallet::archive::{Archive, ArchiveRecord, SEGMENT_BYTES_DEFAULT, STATUS_SETTLED};
    const BATCH: u64 = 1_000;
    let e = |x: wallet::archive::ArchiveError| x.to_string();
    let mut a = Archive::open(dir, SEGMENT_BYTES_DEFAULT, None, 0).map_err(e)?;
    let started = Instant::now();
    let mut seq = 0;
    while seq < n {
        let mut recs = Vec::with_capacity(BATCH as usize);
        for _ in 0..BATCH.min(n - seq) {
            seq += 1;
            recs.push(ArchiveRecord::Event {
                event: event(seq, sig_bytes)?,
                status: STATUS_SETTLED,
                comp: None,
            });
        }
        let at = Hlc::from_millis(1_700_000_000_000 + seq);
        a.append(&recs, at, 0).map_err(e)?;
    }
    let append_s = started.elapsed().as_secs_f64();
    let on_disk: u64 = std::fs::read_dir(a.dir())
        .map_err(|x| x.to_string())?
        .flatten()
        .map(|f| f.metadata().map_or(0, |m| m.len()))
        .sum();
    drop(a);
    let t = Instant::now();
    let a = Archive::open(dir, SEGMENT_BYTES_DEFAULT, None, 0).map_err(e)?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let origin = RegionId::new("eu").map_err(|x| x.to_string())?;
    // A fixed LCG: the same ids every run.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        x >> 33
    };
    let mut by_id = Vec::new();
    let mut pages = Vec::new();
    for _ in 0..2_000 {
        let s = next() % n + 1;
        let t = Instant::now();
        let found = a.find(&format!("eu:{s}"), origin, s).map_err(e)?;
        by_id.push(t.elapsed().as_secs_f64() * 1e6);
        if found.is_none() {
            return Err(format!("eu:{s} not found"));
        }
    }
    for _ in 0..200 {
        let acct = format!("acct-{:04}", next() % 1000);
        let t = Instant::now();
        let page = a.account_page(&acct, None, 50).map_err(e)?;
        pages.push(t.elapsed().as_secs_f64() * 1e6);
        if page.is_empty() {
            return Err(format!("{acct}: empty page"));
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 - 1.0) * p) as usize]
    };
    println!("| archived events | segments | bytes/event (records) | bytes/event (on disk, with indexes) | append µs/event | reopen ms | by id p50/p99 µs | page of 50 p50/p99 µs |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {} | {:.1} | {:.1} | {:.2} | {open_ms:.1} | {:.0} / {:.0} | {:.0} / {:.0} |",
        a.segments(),
        a.bytes() as f64 / n as f64,
        on_disk as f64 / n as f64,
        append_s * 1e6 / n as f64,
        pct(&mut by_id, 0.5),
        pct(&mut by_id, 0.99),
        pct(&mut pages, 0.5),
        pct(&mut pages, 0.99),
    );
    Ok(())
}

/// A fresh directory under the system temp dir (no tempfile dependency outside tests).
fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let d = std::env::temp_dir().join(format!("walletd-storebench-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}
