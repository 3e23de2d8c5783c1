//! Storage commit-path benchmark (issue 16): the durable commit walletd's writer makes, through
//! the storage interface (`Store::commit`, redb, one `Durability::Immediate` transaction per
//! group commit) against an append-only segment log (framed records, one `write` and one
//! `fdatasync` per group commit), at batch sizes 1, 8 and 64 events per commit.
//!
//! ```text
//! cargo build --release --bin walletd-storebench
//! target/release/walletd-storebench [--commits 400] [--batches 1,8,64] [--only redb|log|log-prealloc]
//! strace -f -c -e trace=fsync,fdatasync target/release/walletd-storebench --only redb   # syscalls
//! ```
//!
//! Not a test: it prints figures. The events are real signed-size transactions (a 64-byte
//! plain signature, or a batch signature of a 32-event batch: `--sig-bytes 234`). The segment
//! log here is the commit path only (the framing and sync walletd would do); recovery
//! (indexes rebuilt on load, torn tail truncated) is not exercised.

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
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        commits: 400,
        batches: vec![1, 8, 64],
        only: None,
        sig_bytes: 64,
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

/// A fresh directory under the system temp dir (no tempfile dependency outside tests).
fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let d = std::env::temp_dir().join(format!("walletd-storebench-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}
