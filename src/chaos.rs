//! Randomized real-network fault schedules (issue 15): one run = three `walletd` regions in
//! network namespaces ([`crate::netns`]), every inter-region libp2p connection relayed by a
//! delaying proxy ([`crate::latency`]), the bank workload ([`crate::bank`]) over HTTPS, and a
//! seeded schedule of faults injected from outside the processes. At the end every fault is
//! undone, the bank checker runs, and so do the checks the faults themselves need
//! (`clock_skew_refused`, `clock_within_bound_accepted`, `storage_refused`,
//! `corruption_refused`, `restored`).
//!
//! Fault kinds ([`Fault`]): latency (50 ms ± 10 each way, raised midway), link down (a
//! region's bridge port), one-way block, flapping link, bridge partition (A and C cut, B sees
//! both), kill -9 loop (a random region every few seconds for the whole run, restarted after
//! a moment, as systemd would), long pause (SIGSTOP past libp2p's ping time-out, then
//! SIGCONT), clock skew within `max_clock_skew_ms`, clock skew beyond it, clock steps
//! (libfaketime), full disk (the data dir on a small tmpfs, filled), read-only remount,
//! corrupted and truncated database file at a restart (then a restore from the peers).
//!
//! The same seed gives the same schedule (the processes' timing does not repeat exactly).
//! Needs root, `ip`, `mount` and, for the clock faults, libfaketime (Debian `faketime`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::bank::{self, BankResult, CheckOutcome, Downtime, Workload};
use crate::cluster::{metric, Client, ClusterError, ClusterOptions, LocalCluster};
use crate::latency::{Latency, DELAY_MS_DEFAULT, JITTER_MS_DEFAULT};

/// Where Debian's `faketime` package puts the preload library.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// `max_clock_skew_ms` in the chaos configs (`init` writes 60 s; a small bound lets a run
/// skew beyond it and recover within seconds).
pub const CHAOS_MAX_CLOCK_SKEW_MS: u64 = 3_000;
/// What [`ChaosOptions::long_partitions`] adds to a partition: past the ping time-out
/// (10 s) plus a ping interval (5 s) after the last exchange.
pub const LONG_PARTITION_EXTRA_MS: u64 = 12_000;
/// Size of the tmpfs holding the disk-fault region's data dir.
pub const DISK_TMPFS_MB: u64 = 64;
/// A long pause: past libp2p's ping time-out (10 s, `p2p/src/net.rs`), so peers drop the
/// connection to the paused region.
pub const LONG_PAUSE_MS: u64 = 11_000;
/// A pause in a short run (shorter than the run).
pub const SHORT_PAUSE_MS: u64 = 3_000;
/// A clock beyond the bound is judged only if its region could reach a peer at least this
/// long while skewed (heartbeats go every 250 ms).
pub const BEYOND_REACH_MIN_MS: u64 = 1_000;
/// Bound of the checker's wait for convergence.
pub const CONVERGE_TIMEOUT_S: u64 = 90;
/// Bound of the wait for a restore from peers.
pub const RESTORE_TIMEOUT_MS: u64 = 90_000;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// The fault kinds a schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Delaying proxy: 50 ms ± 10 each way, raised to 120 ± 40 midway.
    Latency,
    /// A region's bridge port down.
    LinkDown,
    /// One-way block A→B.
    OneWay,
    /// A link up/down every few hundred ms.
    Flap,
    /// A and C cut from each other, B sees both.
    Bridge,
    /// kill -9 of a random region every few seconds, for the whole run.
    Kill9Loop,
    /// SIGSTOP past the ping time-out, then SIGCONT.
    Pause,
    /// One region's clock ahead, within `max_clock_skew_ms`.
    SkewWithin,
    /// One region's clock ahead, beyond `max_clock_skew_ms`.
    SkewBeyond,
    /// One region's clock stepped forward then back (within the bound).
    ClockStep,
    /// The data dir's file system full.
    DiskFull,
    /// The data dir's file system remounted read-only (across a crash: see docs/testing.md).
    ReadOnly,
    /// Database file corrupted, then restart, then restore from peers.
    Corrupt,
    /// Database file truncated, then restart, then restore from peers.
    Truncate,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 14] = [
        Fault::Latency,
        Fault::LinkDown,
        Fault::OneWay,
        Fault::Flap,
        Fault::Bridge,
        Fault::Kill9Loop,
        Fault::Pause,
        Fault::SkewWithin,
        Fault::SkewBeyond,
        Fault::ClockStep,
        Fault::DiskFull,
        Fault::ReadOnly,
        Fault::Corrupt,
        Fault::Truncate,
    ];

    /// Short name (table column).
    pub fn name(self) -> &'static str {
        match self {
            Fault::Latency => "latency",
            Fault::LinkDown => "link_down",
            Fault::OneWay => "one_way",
            Fault::Flap => "flap",
            Fault::Bridge => "bridge",
            Fault::Kill9Loop => "kill9_loop",
            Fault::Pause => "pause",
            Fault::SkewWithin => "skew_within",
            Fault::SkewBeyond => "skew_beyond",
            Fault::ClockStep => "clock_step",
            Fault::DiskFull => "disk_full",
            Fault::ReadOnly => "read_only",
            Fault::Corrupt => "corrupt",
            Fault::Truncate => "truncate",
        }
    }
}

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The walletd executable.
    pub exe: PathBuf,
    /// Seed of the schedule and the workload.
    pub seed: u64,
    /// Workload (and fault) duration; `None`: drawn from 30-60 s.
    pub duration: Option<Duration>,
    /// A short run: shorter pauses and fewer faults (the default test command).
    pub short: bool,
    /// Only these kinds (empty: drawn by the seed).
    pub only: Vec<Fault>,
    /// Partitions (link down, one-way, bridge, flap) last [`LONG_PARTITION_EXTRA_MS`] more,
    /// past libp2p's ping time-out, so the TCP connections across them are dropped (a
    /// shorter partition only delays TCP, which retransmits once the link is back); a flap
    /// keeps its link down 6 times longer than up. Off by default (the schedules of a seed do
    /// not change).
    pub long_partitions: bool,
    /// Where the JSON result goes (none: not written).
    pub out_dir: Option<PathBuf>,
}

/// One run's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosResult {
    /// Seed.
    pub seed: u64,
    /// Workload duration, s.
    pub duration_s: u64,
    /// Kinds injected (actually done, not just scheduled).
    pub injected: BTreeSet<Fault>,
    /// The bank checker's result, with the fault checks appended; `faults` holds the log.
    pub bank: BankResult,
    /// Downtime windows given to the checker.
    pub downtime: Vec<Downtime>,
    /// Whole run, s.
    pub wall_s: f64,
}

impl ChaosResult {
    /// All checks passed.
    pub fn valid(&self) -> bool {
        self.bank.valid
    }

    /// Names of the failed checks.
    pub fn failed(&self) -> Vec<&'static str> {
        self.bank
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }

    /// The injected kinds, comma-separated.
    pub fn injected_names(&self) -> String {
        self.injected
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What can go wrong running a schedule (a failed check is not an error: see the result).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// The harness failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A network fault could not be injected.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// The bank workload or checker failed.
    #[error(transparent)]
    Bank(#[from] bank::BankError),
    /// The environment lacks something (namespaces, mount, libfaketime).
    #[error("chaos: {0}")]
    Env(String),
}

/// One scheduled step.
#[derive(Debug, Clone)]
enum Act {
    Latency(u64, u64),
    Isolate(usize),
    Rejoin(usize),
    Block(usize, usize),
    Unblock(usize, usize),
    Split(usize, usize),
    Unsplit(usize, usize),
    Kill(usize),
    Start(usize),
    Pause(usize),
    Resume(usize),
    /// Clock offset of a region, seconds; the fault it belongs to.
    Clock(usize, i64, Fault),
    DiskFill(usize),
    DiskFree(usize),
    /// kill -9, remount read-only, a start that must fail.
    ReadOnly(usize),
    /// remount read-write, start.
    ReadWrite(usize),
}

#[derive(Debug, Clone)]
struct Step {
    at_ms: u64,
    act: Act,
}

/// A schedule: timed steps and the post-workload restart fault.
#[derive(Debug, Clone)]
struct Schedule {
    steps: Vec<Step>,
    kinds: BTreeSet<Fault>,
    clock_region: usize,
    disk_region: usize,
    restart_fault: Option<(Fault, usize)>,
}

/// Per-region busy windows, so that two faults that take a region over (kill, pause, clock,
/// disk) do not overlap on it.
struct Busy(Vec<Vec<(u64, u64)>>);

impl Busy {
    fn free(&self, r: usize, from: u64, to: u64) -> bool {
        self.0
            .get(r)
            .is_some_and(|w| w.iter().all(|&(a, b)| to < a || from > b))
    }
    fn take(&mut self, r: usize, from: u64, to: u64) {
        if let Some(w) = self.0.get_mut(r) {
            w.push((from, to));
        }
    }
}

fn schedule(seed: u64, dur_ms: u64, short: bool, long: bool, only: &[Fault]) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = REGIONS.len();
    let kinds: BTreeSet<Fault> = if only.is_empty() {
        let p = if short { 0.35 } else { 0.5 };
        let mut k: BTreeSet<Fault> = Fault::ALL
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(p))
            .collect();
        if k.contains(&Fault::Corrupt) && k.contains(&Fault::Truncate) {
            // One restart fault per run.
            let drop = if rng.gen_bool(0.5) {
                Fault::Corrupt
            } else {
                Fault::Truncate
            };
            k.remove(&drop);
        }
        if k.is_empty() {
            k.insert(Fault::Kill9Loop);
        }
        k
    } else {
        only.iter().copied().collect()
    };
    let mut regions: Vec<usize> = (0..n).collect();
    regions.shuffle(&mut rng);
    let clock_region = regions.first().copied().unwrap_or(0);
    let disk_region = regions.get(1).copied().unwrap_or(0);
    let mut steps = Vec::new();
    let mut busy = Busy(vec![Vec::new(); n]);
    let at = |s: &mut Vec<Step>, at_ms: u64, act: Act| s.push(Step { at_ms, act });
    // A start time for a fault of `len` ms, leaving a second at each end.
    let start_for = |rng: &mut StdRng, len: u64| -> u64 {
        let hi = dur_ms.saturating_sub(len + 1_000).max(1_001);
        rng.gen_range(1_000..hi)
    };
    let scale = |ms: u64| if short { ms / 2 } else { ms };
    // Partitions: the same draws, longer when asked.
    let part = |ms: u64| {
        if long {
            scale(ms) + LONG_PARTITION_EXTRA_MS
        } else {
            scale(ms)
        }
    };

    if kinds.contains(&Fault::Latency) {
        at(
            &mut steps,
            0,
            Act::Latency(DELAY_MS_DEFAULT, JITTER_MS_DEFAULT),
        );
        at(&mut steps, dur_ms / 2, Act::Latency(120, 40));
    }
    if kinds.contains(&Fault::LinkDown) {
        let r = rng.gen_range(0..n);
        let len = part(rng.gen_range(3_000..6_000));
        let t = start_for(&mut rng, len);
        at(&mut steps, t, Act::Isolate(r));
        at(&mut steps, t + len, Act::Rejoin(r));
    }
    if kinds.contains(&Fault::OneWay) {
        let a = rng.gen_range(0..n);
        let b = (a + rng.gen_range(1..n)) % n;
        let len = part(rng.gen_range(3_000..6_000));
        let t = start_for(&mut rng, len);
        at(&mut steps, t, Act::Block(a, b));
        at(&mut steps, t + len, Act::Unblock(a, b));
    }
    if kinds.contains(&Fault::Flap) {
        let r = rng.gen_range(0..n);
        let len = part(rng.gen_range(4_000..8_000));
        let t0 = start_for(&mut rng, len);
        let mut t = t0;
        let mut down = true;
        while t < t0 + len {
            at(
                &mut steps,
                t,
                if down {
                    Act::Isolate(r)
                } else {
                    Act::Rejoin(r)
                },
            );
            down = !down;
            let d = rng.gen_range(200..500);
            // `down` now names the next step: the link is down until then.
            t += if long && !down { d * 6 } else { d };
        }
        at(&mut steps, t, Act::Rejoin(r));
    }
    if kinds.contains(&Fault::Bridge) {
        let b = rng.gen_range(0..n);
        let (a, c) = ((b + 1) % n, (b + 2) % n);
        let len = part(rng.gen_range(4_000..8_000));
        let t = start_for(&mut rng, len);
        at(&mut steps, t, Act::Split(a, c));
        at(&mut steps, t + len, Act::Unsplit(a, c));
    }
    // Region-exclusive faults: the clock region, the disk region, then pause, then kills.
    let clock_faults = [
        (Fault::SkewWithin, 1i64),
        (Fault::SkewBeyond, 8),
        (Fault::ClockStep, 2),
    ];
    // A clock beyond the bound leaves the region's HLC ahead for a while after (it never
    // goes back): when the run has one, the faults within the bound come first.
    let beyond_too = kinds.contains(&Fault::SkewBeyond)
        && (kinds.contains(&Fault::SkewWithin) || kinds.contains(&Fault::ClockStep));
    for (f, secs) in clock_faults {
        if !kinds.contains(&f) {
            continue;
        }
        let len = scale(rng.gen_range(4_000..6_000));
        for _ in 0..40 {
            let t = if !beyond_too {
                start_for(&mut rng, len)
            } else if f == Fault::SkewBeyond {
                rng.gen_range(dur_ms / 2..dur_ms.saturating_sub(len + 1_000).max(dur_ms / 2 + 1))
            } else {
                rng.gen_range(1_000..(dur_ms / 2).saturating_sub(len).max(1_001))
            };
            if busy.free(clock_region, t, t + len) {
                busy.take(clock_region, t, t + len);
                at(&mut steps, t, Act::Clock(clock_region, secs, f));
                if f == Fault::ClockStep {
                    // Forward 2 s, then back 4 s (to -2 s), then back to true time.
                    at(&mut steps, t + len / 2, Act::Clock(clock_region, -2, f));
                }
                at(&mut steps, t + len, Act::Clock(clock_region, 0, f));
                break;
            }
        }
    }
    for f in [Fault::DiskFull, Fault::ReadOnly] {
        if !kinds.contains(&f) {
            continue;
        }
        let len = scale(rng.gen_range(3_000..5_000));
        for _ in 0..20 {
            let t = start_for(&mut rng, len);
            // The region is down until its restart after the fault: keep kills away.
            if busy.free(disk_region, t, t + len + 3_000) {
                busy.take(disk_region, t, t + len + 3_000);
                let (a, b) = if f == Fault::DiskFull {
                    (Act::DiskFill(disk_region), Act::DiskFree(disk_region))
                } else {
                    (Act::ReadOnly(disk_region), Act::ReadWrite(disk_region))
                };
                at(&mut steps, t, a);
                at(&mut steps, t + len, b);
                break;
            }
        }
    }
    if kinds.contains(&Fault::Pause) {
        let len = if short { SHORT_PAUSE_MS } else { LONG_PAUSE_MS };
        for _ in 0..20 {
            let r = rng.gen_range(0..n);
            let t = start_for(&mut rng, len);
            if busy.free(r, t, t + len + 1_000) {
                busy.take(r, t, t + len + 1_000);
                at(&mut steps, t, Act::Pause(r));
                at(&mut steps, t + len, Act::Resume(r));
                break;
            }
        }
    }
    if kinds.contains(&Fault::Kill9Loop) {
        let mut t = 1_000 + rng.gen_range(0..1_000);
        while t + 2_000 < dur_ms {
            let down = rng.gen_range(300..1_500);
            let r = rng.gen_range(0..n);
            // The restart takes a moment: keep the region's window wide.
            if busy.free(r, t, t + down + 2_000) {
                busy.take(r, t, t + down + 2_000);
                at(&mut steps, t, Act::Kill(r));
                at(&mut steps, t + down, Act::Start(r));
            }
            t += rng.gen_range(2_000..5_000);
        }
    }
    steps.sort_by_key(|s| s.at_ms);
    let restart_fault = [Fault::Corrupt, Fault::Truncate]
        .into_iter()
        .find(|f| kinds.contains(f))
        .map(|f| (f, rng.gen_range(0..n)));
    Schedule {
        steps,
        kinds,
        clock_region,
        disk_region,
        restart_fault,
    }
}

fn ms_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn run_cmd(prog: &str, args: &[&str]) -> Result<(), ChaosError> {
    let out = std::process::Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| ChaosError::Env(format!("{prog} {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ChaosError::Env(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A tmpfs mounted on a region's data dir; unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, mb: u64) -> Result<Tmpfs, ChaosError> {
        std::fs::create_dir_all(dir).map_err(|e| ChaosError::Env(format!("{dir:?}: {e}")))?;
        let d = dir.display().to_string();
        run_cmd(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mb}m,mode=0700"),
                "tmpfs",
                &d,
            ],
        )?;
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
    fn remount(&self, mode: &str) -> Result<(), ChaosError> {
        let d = self.dir.display().to_string();
        run_cmd("mount", &["-o", &format!("remount,{mode}"), &d])
    }
    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }
    /// Writes a filler file until the file system is full; bytes written.
    fn fill(&self) -> u64 {
        use std::io::Write;
        let Ok(mut f) = std::fs::File::create(self.filler()) else {
            return 0;
        };
        let chunk = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = f.sync_all();
        n
    }
    fn free(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        let _ = run_cmd("mount", &["-o", "remount,rw", &d]);
        let _ = run_cmd("umount", &["-l", &d]);
    }
}

/// libfaketime's offset file for the clock region: rewritten to step its clock.
struct FakeClock {
    file: PathBuf,
}

impl FakeClock {
    fn set(&self, secs: i64) -> Result<(), ChaosError> {
        let text = if secs >= 0 {
            format!("+{secs}s\n")
        } else {
            format!("{secs}s\n")
        };
        std::fs::write(&self.file, text)
            .map_err(|e| ChaosError::Env(format!("{}: {e}", self.file.display())))
    }
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), LIBFAKETIME.into()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.file.display().to_string(),
            ),
            // Only the wall clock (what walletd reads for HLCs, src/clock.rs); tokio's
            // timers keep the true monotonic clock.
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
        ]
    }
}

/// Each region's `clock_skew` report count (`None`: no answer within 2 s).
async fn skew_reports(clients: &[Client]) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for c in clients {
        let text =
            tokio::time::timeout(Duration::from_secs(2), c.with_token("").get_raw("/metrics"))
                .await;
        out.push(match text {
            Ok(Ok((200, t))) => {
                Some(metric(&t, "walletd_reports_total{kind=\"clock_skew\"}").unwrap_or(0))
            }
            _ => None,
        });
    }
    out
}

/// Watches the peers of the skewed region for `clock_skew` reports while a clock fault
/// lasts (beyond the bound: until the run ends, since the region's HLC stays ahead for a
/// while after its clock is set right). A count that drops is a restart: it only resets
/// the baseline.
struct SkewWatch {
    fault: Fault,
    region: usize,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl SkewWatch {
    async fn start(clients: Vec<Client>, region: usize, fault: Fault) -> SkewWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let first = skew_reports(&clients).await;
        let st = stop.clone();
        let task = tokio::spawn(async move {
            let mut last = first;
            let mut grew = Vec::new();
            loop {
                let done = st.load(Ordering::Acquire);
                let now = skew_reports(&clients).await;
                for (i, (l, n)) in last.iter_mut().zip(now).enumerate() {
                    if i == region {
                        continue;
                    }
                    if let (Some(a), Some(b)) = (*l, n) {
                        if b > a {
                            grew.push(format!("#{i}: {a}->{b}"));
                        }
                    }
                    if n.is_some() {
                        *l = n;
                    }
                }
                if done {
                    return grew;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        SkewWatch {
            fault,
            region,
            stop,
            task,
        }
    }

    /// Stops watching: the peers' report increases seen.
    async fn finish(self) -> (Fault, usize, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        let grew = self.task.await.unwrap_or_default();
        (self.fault, self.region, grew)
    }
}

/// The harness state of one run.
struct Run {
    /// Declared first: unmounted before the cluster's drop removes its directory (the
    /// regions are killed before: [`run`] does it, or the lazy unmount lets them finish).
    tmpfs: Option<Tmpfs>,
    c: LocalCluster,
    t0: Instant,
    log: Vec<String>,
    injected: BTreeSet<Fault>,
    downtime: Vec<Downtime>,
    /// Open downtime per region: (from_ms, what).
    down_since: Vec<Option<(u64, String)>>,
    latency: Arc<Latency>,
    clock: Option<FakeClock>,
    /// Clock faults being watched.
    watches: Vec<SkewWatch>,
    /// Regions whose link is down, and one-way blocks in force (for `reachable`).
    isolated: BTreeSet<usize>,
    blocked: BTreeSet<(usize, usize)>,
    /// The region skewed beyond the bound, while it is; how long it could reach a peer.
    beyond: Option<usize>,
    beyond_reach_ms: u64,
    tick_at: u64,
    /// Every region's client.
    clients: Vec<Client>,
    extra: Vec<CheckOutcome>,
}

impl Run {
    fn note(&mut self, what: String) {
        let line = format!("{:.1}s {what}", self.t0.elapsed().as_secs_f64());
        self.log.push(line);
    }

    fn down(&mut self, r: usize, what: &str) {
        if let Some(slot) = self.down_since.get_mut(r) {
            if slot.is_none() {
                *slot = Some((ms_since(self.t0), what.to_string()));
            }
        }
    }

    fn up(&mut self, r: usize) {
        if let Some(slot) = self.down_since.get_mut(r) {
            if let Some((from_ms, what)) = slot.take() {
                self.downtime.push(Downtime {
                    region: r,
                    from_ms,
                    to_ms: ms_since(self.t0),
                    what,
                });
            }
        }
    }

    /// Starts region `r` (again) and closes its downtime; a failed start is logged and
    /// retried by the caller's next step or the final heal.
    async fn restart(&mut self, r: usize) -> bool {
        if self.c.regions.get(r).is_some_and(|p| p.running()) {
            self.up(r);
            return true;
        }
        match self.c.start(r).await {
            Ok(()) => {
                self.up(r);
                true
            }
            Err(e) => {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or("").to_string();
                self.note(format!("{} start failed: {first}", REGIONS[r]));
                false
            }
        }
    }

    /// Region `r` is running and not paused, nor taken down by a fault.
    fn is_up(&self, r: usize) -> bool {
        self.down_since.get(r).is_some_and(Option::is_none)
            && self.c.regions.get(r).is_some_and(|p| p.running())
    }

    /// Region `r` can exchange messages with at least one peer that is up.
    fn reachable(&self, r: usize) -> bool {
        self.is_up(r)
            && !self.isolated.contains(&r)
            && (0..self.c.regions.len()).any(|p| {
                p != r
                    && self.is_up(p)
                    && !self.isolated.contains(&p)
                    && !self.blocked.contains(&(r, p))
                    && !self.blocked.contains(&(p, r))
            })
    }

    /// Accounts the time since the last step: how long the region skewed beyond the bound
    /// could reach a peer (other faults may have cut it off for the whole window).
    fn tick(&mut self) {
        let now = ms_since(self.t0);
        if let Some(r) = self.beyond {
            if self.reachable(r) {
                self.beyond_reach_ms += now.saturating_sub(self.tick_at);
            }
        }
        self.tick_at = now;
    }

    /// The verdict of a clock fault from the peers' `clock_skew` reports.
    fn judge(&mut self, f: Fault, r: usize, grew: Vec<String>) {
        let name = REGIONS.get(r).copied().unwrap_or("?");
        if f == Fault::SkewBeyond {
            let reach = self.beyond_reach_ms;
            let p = if !grew.is_empty() {
                Vec::new()
            } else if reach < BEYOND_REACH_MIN_MS {
                // Cut off from every peer (partitions, pauses, kills) nearly all the time it
                // was skewed: nobody could refuse anything. Not judged, and said so.
                self.note(format!(
                    "{name} beyond the bound not judged: it could reach a peer for only {reach} ms of it"
                ));
                Vec::new()
            } else {
                vec![format!(
                    "{name} more than {CHAOS_MAX_CLOCK_SKEW_MS} ms ahead for a while it could reach a peer ({reach} ms), and no peer refused its events or heartbeats"
                )]
            };
            self.note(format!(
                "{name} beyond the bound: peers' clock_skew reports {grew:?}"
            ));
            self.check("clock_skew_refused", p);
        } else {
            let p = if grew.is_empty() {
                Vec::new()
            } else {
                vec![format!(
                    "{name} within the bound ({}), yet peers refused: {grew:?}",
                    f.name()
                )]
            };
            self.check("clock_within_bound_accepted", p);
        }
    }

    /// Stops every clock watch still running and judges it.
    async fn finish_watches(&mut self) {
        for w in std::mem::take(&mut self.watches) {
            let (f, r, grew) = w.finish().await;
            self.judge(f, r, grew);
        }
    }

    fn check(&mut self, name: &'static str, problems: Vec<String>) {
        self.extra.push(CheckOutcome {
            name,
            ok: problems.is_empty(),
            problems,
        });
    }

    async fn apply(&mut self, act: Act) -> Result<(), ChaosError> {
        let name = |r: usize| REGIONS.get(r).copied().unwrap_or("?");
        self.tick();
        match act {
            Act::Latency(d, j) => {
                self.latency.set(d, j);
                self.injected.insert(Fault::Latency);
                self.note(format!("latency {d}±{j} ms each way"));
            }
            Act::Isolate(r) => {
                self.c.fabric_mut()?.isolate(r)?;
                self.isolated.insert(r);
                self.note(format!("{} link down", name(r)));
            }
            Act::Rejoin(r) => {
                self.c.fabric_mut()?.rejoin(r)?;
                self.isolated.remove(&r);
                self.note(format!("{} link up", name(r)));
            }
            Act::Block(a, b) => {
                self.c.fabric_mut()?.block(a, b)?;
                self.blocked.insert((a, b));
                self.injected.insert(Fault::OneWay);
                self.note(format!("{}->{} blocked", name(a), name(b)));
            }
            Act::Unblock(a, b) => {
                self.c.fabric_mut()?.unblock(a, b)?;
                self.blocked.remove(&(a, b));
                self.note(format!("{}->{} unblocked", name(a), name(b)));
            }
            Act::Split(a, c) => {
                self.c.fabric_mut()?.split_pair(a, c)?;
                self.blocked.insert((a, c));
                self.blocked.insert((c, a));
                self.injected.insert(Fault::Bridge);
                self.note(format!("bridge: {} and {} cut", name(a), name(c)));
            }
            Act::Unsplit(a, c) => {
                self.c.fabric_mut()?.unsplit_pair(a, c)?;
                self.blocked.remove(&(a, c));
                self.blocked.remove(&(c, a));
                self.note(format!("bridge: {} and {} rejoined", name(a), name(c)));
            }
            Act::Kill(r) => {
                if self.c.regions.get(r).is_some_and(|p| p.running()) {
                    self.down(r, "kill -9");
                    self.c.kill(r);
                    self.injected.insert(Fault::Kill9Loop);
                    self.note(format!("{} kill -9", name(r)));
                }
            }
            Act::Start(r) => {
                let down = self.c.regions.get(r).is_some_and(|p| !p.running());
                if down && self.restart(r).await {
                    self.note(format!("{} restarted", name(r)));
                }
            }
            Act::Pause(r) => {
                if self.c.pause(r).is_ok() {
                    self.down(r, "SIGSTOP");
                    self.injected.insert(Fault::Pause);
                    self.note(format!("{} SIGSTOP", name(r)));
                }
            }
            Act::Resume(r) => {
                if self.c.resume(r).is_ok() {
                    self.up(r);
                    self.note(format!("{} SIGCONT", name(r)));
                }
            }
            Act::Clock(r, secs, f) => {
                let starting = secs != 0 && !(f == Fault::ClockStep && secs < 0);
                if starting && self.clock.is_some() {
                    let w = SkewWatch::start(self.clients.clone(), r, f).await;
                    self.watches.push(w);
                    if f == Fault::SkewBeyond {
                        self.tick();
                        self.beyond = Some(r);
                        self.beyond_reach_ms = 0;
                    }
                }
                if secs == 0 && f == Fault::SkewBeyond {
                    self.beyond = None;
                }
                let Some(clock) = &self.clock else {
                    return Ok(());
                };
                clock.set(secs)?;
                self.note(format!("{} clock {secs:+} s ({})", name(r), f.name()));
                if starting {
                    self.injected.insert(f);
                }
                if secs == 0 && f != Fault::SkewBeyond {
                    // Within the bound: no peer may have refused anything meanwhile.
                    if let Some(k) = self.watches.iter().position(|w| w.fault == f) {
                        let w = self.watches.remove(k);
                        let (f, r, grew) = w.finish().await;
                        self.judge(f, r, grew);
                    }
                }
            }
            Act::DiskFill(r) => {
                if self.tmpfs.is_some() {
                    self.down(r, "disk full");
                    let n = self.tmpfs.as_ref().map_or(0, Tmpfs::fill);
                    self.injected.insert(Fault::DiskFull);
                    self.note(format!("{} disk full ({} MB filler)", name(r), n >> 20));
                }
            }
            Act::DiskFree(r) => {
                if let Some(t) = &self.tmpfs {
                    t.free();
                    let exit = self.c.reap(r).map(|s| s.code());
                    let running = self.c.regions.get(r).is_some_and(|p| p.running());
                    self.note(format!(
                        "{} disk freed; the region {}",
                        name(r),
                        match exit {
                            Some(code) => format!("had exited ({code:?})"),
                            None if running => "kept running".into(),
                            None => "was down".into(),
                        }
                    ));
                    if let Some(code) = exit {
                        let p = if code == Some(crate::actor::STORAGE_FAILURE_EXIT_CODE) {
                            Vec::new()
                        } else {
                            vec![format!(
                                "{} exited {code:?} on a full disk, expected {}",
                                name(r),
                                crate::actor::STORAGE_FAILURE_EXIT_CODE
                            )]
                        };
                        self.check("storage_refused", p);
                    }
                    if self.restart(r).await {
                        self.note(format!("{} restarted after the disk fault", name(r)));
                    }
                }
            }
            Act::ReadOnly(r) => {
                if self.tmpfs.is_some() {
                    self.down(r, "read-only remount");
                    self.c.kill(r);
                    if let Some(t) = &self.tmpfs {
                        t.remount("ro")?;
                    }
                    self.injected.insert(Fault::ReadOnly);
                    let c = &mut self.c;
                    let res = tokio::task::block_in_place(|| c.run_to_exit(r));
                    let p = match res {
                        Ok((code, err)) if code != Some(0) => {
                            let line = err
                                .lines()
                                .find(|l| l.contains("storage") || l.contains("Read-only"))
                                .unwrap_or("")
                                .to_string();
                            self.note(format!(
                                "{} kill -9, remount ro: start refused ({code:?}) {line}",
                                name(r)
                            ));
                            if line.is_empty() {
                                vec![format!("no clear message: {err}")]
                            } else {
                                Vec::new()
                            }
                        }
                        Ok((code, _)) => vec![format!(
                            "exit {code:?} on a read-only disk: a clean stop, no refusal"
                        )],
                        Err(e) => vec![format!("start on a read-only disk: {e}")],
                    };
                    self.check("storage_refused", p);
                }
            }
            Act::ReadWrite(r) => {
                if let Some(t) = &self.tmpfs {
                    t.remount("rw")?;
                    self.note(format!("{} remount rw", name(r)));
                    if self.restart(r).await {
                        self.note(format!("{} restarted after the read-only fault", name(r)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Undoes every fault and starts every region that is down.
    async fn heal_all(&mut self) -> Result<(), ChaosError> {
        self.tick();
        self.beyond = None;
        self.c.fabric_mut()?.heal()?;
        self.isolated.clear();
        self.blocked.clear();
        if let Some(c) = &self.clock {
            c.set(0)?;
        }
        if let Some(t) = &self.tmpfs {
            t.free();
            t.remount("rw")?;
        }
        for r in 0..self.c.regions.len() {
            let _ = self.c.resume(r);
            let _ = self.c.reap(r);
            for _ in 0..3 {
                if self.restart(r).await {
                    break;
                }
            }
        }
        for r in 0..self.c.regions.len() {
            self.up(r);
        }
        self.note("healed: links up, blocks removed, clocks true, disks free, all running".into());
        Ok(())
    }

    /// Corrupts or truncates region `r`'s database file after a clean stop, checks that it
    /// refuses to start, then restores it from its peers.
    async fn restart_fault(&mut self, f: Fault, r: usize) -> Result<(), ChaosError> {
        let name = REGIONS.get(r).copied().unwrap_or("?");
        self.c.stop(r).await;
        let file = self.c.data_file(r)?;
        let bytes = std::fs::read(&file).map_err(|e| ChaosError::Env(format!("{file:?}: {e}")))?;
        let mut bytes = bytes;
        let what = if f == Fault::Corrupt {
            let marker = b"bank-";
            let mut n = 0;
            let mut i = 0;
            while i + marker.len() <= bytes.len() {
                if bytes.get(i..i + marker.len()) == Some(&marker[..]) {
                    if let Some(b) = bytes.get_mut(i + 2) {
                        *b ^= 0x5a;
                    }
                    n += 1;
                    i += marker.len();
                } else {
                    i += 1;
                }
            }
            format!("{n} account names flipped")
        } else {
            let len = bytes.len() / 3;
            bytes.truncate(len);
            format!("truncated to {len} bytes")
        };
        std::fs::write(&file, &bytes).map_err(|e| ChaosError::Env(format!("{file:?}: {e}")))?;
        self.injected.insert(f);
        self.note(format!("{name} stopped, database {what}"));
        let c = &mut self.c;
        let res = tokio::task::block_in_place(|| c.run_to_exit(r));
        let file_s = file.display().to_string();
        let p = match res {
            Ok((code, err)) if code != Some(0) => {
                let line = err
                    .lines()
                    .find(|l| l.contains(&file_s))
                    .unwrap_or("")
                    .to_string();
                self.note(format!("{name} refused to start ({code:?}): {line}"));
                if line.is_empty() {
                    vec![format!("the refusal does not name {file_s}: {err}")]
                } else {
                    Vec::new()
                }
            }
            Ok((code, _)) => vec![format!(
                "exit {code:?} on a damaged file: a clean stop, no refusal"
            )],
            Err(e) => vec![format!("{e}")],
        };
        self.check("corruption_refused", p);
        // Restore from the peers: an empty data dir and `restore = true`.
        let dir = self.c.data_dir(r)?;
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        self.c
            .rewrite_config(r, |t| t.replace("restore = false", "restore = true"))?;
        let mut p = Vec::new();
        if self.restart(r).await {
            let admin = self.c.client(r)?.with_token("");
            let waited = crate::cluster::wait_until("restore", RESTORE_TIMEOUT_MS, || {
                let admin = admin.clone();
                async move { Ok(admin.get("/readyz").await.is_ok_and(|a| a.status == 200)) }
            })
            .await;
            match waited {
                Ok(d) => self.note(format!(
                    "{name} restored from its peers in {:.1}s",
                    d.as_secs_f64()
                )),
                Err(e) => p.push(e.to_string()),
            }
        } else {
            p.push(format!("{name} did not start with restore = true"));
        }
        self.c
            .rewrite_config(r, |t| t.replace("restore = true", "restore = false"))?;
        self.check("restored", p);
        Ok(())
    }
}

/// Checks that this machine can run a schedule (namespaces, mount, libfaketime).
pub fn probe() -> Result<(), ChaosError> {
    crate::netns::probe().map_err(|e| ChaosError::Env(e.to_string()))?;
    if !Path::new(LIBFAKETIME).exists() {
        return Err(ChaosError::Env(format!(
            "{LIBFAKETIME} missing (Debian package `faketime`)"
        )));
    }
    Ok(())
}

/// Runs one schedule.
pub async fn run(o: &ChaosOptions) -> Result<ChaosResult, ChaosError> {
    let wall = Instant::now();
    let mut rng = StdRng::seed_from_u64(o.seed ^ 0x5eed);
    let dur = o
        .duration
        .unwrap_or_else(|| Duration::from_secs(rng.gen_range(30..=60)));
    let dur_ms = u64::try_from(dur.as_millis()).unwrap_or(u64::MAX);
    let sch = schedule(o.seed, dur_ms, o.short, o.long_partitions, &o.only);

    let mut opts = ClusterOptions::new(o.exe.clone(), &REGIONS)?;
    opts.netns = true;
    opts.faults = false;
    opts.log_filter = "warn".into();
    opts.scan_secrets_on_drop = true;
    let mut c = LocalCluster::init(opts)?;
    for i in 0..REGIONS.len() {
        c.rewrite_config(i, |t| {
            t.replace(
                "max_clock_skew_ms = 60000",
                &format!("max_clock_skew_ms = {CHAOS_MAX_CLOCK_SKEW_MS}"),
            )
        })?;
    }
    let latency = Latency::new(0, 0, o.seed);
    c.route_through_proxies(latency.clone())?;
    let clock_faults = [Fault::SkewWithin, Fault::SkewBeyond, Fault::ClockStep];
    let clock = if clock_faults.iter().any(|f| sch.kinds.contains(f)) {
        let fc = FakeClock {
            file: c.dir.join("faketime.offset"),
        };
        fc.set(0)?;
        c.set_env(sch.clock_region, fc.env())?;
        Some(fc)
    } else {
        None
    };
    let tmpfs = if sch.kinds.contains(&Fault::DiskFull) || sch.kinds.contains(&Fault::ReadOnly) {
        Some(Tmpfs::mount(&c.data_dir(sch.disk_region)?, DISK_TMPFS_MB)?)
    } else {
        None
    };
    c.start_all().await?;
    crate::cluster::wait_until("regions connected", 60_000, || {
        let clients: Vec<_> = (0..REGIONS.len())
            .filter_map(|i| c.client(i).ok())
            .collect();
        async move {
            for cl in &clients {
                if !crate::cluster::all_members_up(&cl.status().await?) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await?;

    let clients: Vec<_> = (0..REGIONS.len())
        .map(|i| c.client(i))
        .collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    let w = Workload {
        seed: o.seed,
        duration: dur,
        t0,
        ..Workload::default()
    };
    let workload = tokio::spawn(bank::run_workload(clients.clone(), w));
    let mut run = Run {
        c,
        t0,
        log: Vec::new(),
        injected: BTreeSet::new(),
        downtime: Vec::new(),
        down_since: vec![None; REGIONS.len()],
        latency,
        tmpfs,
        clock,
        watches: Vec::new(),
        clients: clients.clone(),
        isolated: BTreeSet::new(),
        blocked: BTreeSet::new(),
        beyond: None,
        beyond_reach_ms: 0,
        tick_at: 0,
        extra: Vec::new(),
    };
    let mut flap_seen = 0usize;
    for s in sch.steps.clone() {
        let now = ms_since(t0);
        if s.at_ms > now {
            tokio::time::sleep(Duration::from_millis(s.at_ms - now)).await;
        }
        if matches!(s.act, Act::Isolate(_)) {
            flap_seen += 1;
        }
        run.apply(s.act).await?;
    }
    // Isolate steps: one is a link-down fault, several are a flap.
    if sch.kinds.contains(&Fault::LinkDown) && flap_seen >= 1 {
        run.injected.insert(Fault::LinkDown);
    }
    if sch.kinds.contains(&Fault::Flap) && flap_seen >= 3 {
        run.injected.insert(Fault::Flap);
    }
    let h = workload
        .await
        .map_err(|e| ChaosError::Env(format!("workload task: {e}")))??;
    run.heal_all().await?;
    let mut r = bank::check_with_downtime(
        &clients,
        &h,
        Duration::from_secs(CONVERGE_TIMEOUT_S),
        &run.downtime,
    )
    .await?;
    run.finish_watches().await;
    if let Some((f, region)) = sch.restart_fault {
        if r.valid {
            run.restart_fault(f, region).await?;
            r = bank::check_with_downtime(
                &clients,
                &h,
                Duration::from_secs(CONVERGE_TIMEOUT_S),
                &run.downtime,
            )
            .await?;
        } else {
            run.note(format!("{} skipped: the run had already failed", f.name()));
        }
    }
    r.checks.append(&mut run.extra);
    r.valid = r.checks.iter().all(|c| c.ok);
    r.faults = std::mem::take(&mut run.log);
    let res = ChaosResult {
        seed: o.seed,
        duration_s: dur.as_secs(),
        injected: std::mem::take(&mut run.injected),
        bank: r,
        downtime: std::mem::take(&mut run.downtime),
        wall_s: wall.elapsed().as_secs_f64(),
    };
    if let Some(dir) = &o.out_dir {
        let _ = std::fs::create_dir_all(dir);
        let path = dir.join(format!("chaos-{}.json", o.seed));
        if let Ok(json) = serde_json::to_string_pretty(&res) {
            let _ = std::fs::write(&path, json);
        }
        if !res.valid() {
            // Keep the regions' logs of a failing run.
            let keep = dir.join(format!("chaos-{}-logs", o.seed));
            let _ = std::fs::create_dir_all(&keep);
            for p in &run.c.regions {
                if let Some(n) = p.log.file_name() {
                    let _ = std::fs::copy(&p.log, keep.join(n));
                }
            }
        }
    }
    // Kill the regions before the tmpfs under one of them is unmounted.
    run.c.kill_all();
    drop(run);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_and_busy_windows_do_not_overlap() {
        for seed in 0..50 {
            let a = schedule(seed, 45_000, false, false, &[]);
            let b = schedule(seed, 45_000, false, false, &[]);
            assert_eq!(a.kinds, b.kinds);
            assert_eq!(
                format!("{:?}", a.steps),
                format!("{:?}", b.steps),
                "seed {seed}"
            );
            assert!(!a.kinds.is_empty());
            assert!(!(a.kinds.contains(&Fault::Corrupt) && a.kinds.contains(&Fault::Truncate)));
            // Every kill is followed by a start of the same region, before any other kill of it.
            let mut down = [false; 3];
            for s in &a.steps {
                match s.act {
                    Act::Kill(r) => {
                        assert!(!down[r], "seed {seed}: double kill");
                        down[r] = true;
                    }
                    Act::Start(r) => down[r] = false,
                    _ => {}
                }
            }
            assert_eq!(down, [false; 3], "seed {seed}: a region left down");
            // Clock faults within the bound come before the one beyond it.
            let clock_at = |want: Fault| {
                a.steps.iter().filter_map(move |s| match s.act {
                    Act::Clock(_, _, f) if f == want => Some(s.at_ms),
                    _ => None,
                })
            };
            if let Some(b) = clock_at(Fault::SkewBeyond).min() {
                for f in [Fault::SkewWithin, Fault::ClockStep] {
                    assert!(
                        clock_at(f).all(|t| t < b),
                        "seed {seed}: {f:?} after beyond"
                    );
                }
            }
        }
    }

    #[test]
    fn long_partitions_outlast_the_ping_time_out() {
        let only = [Fault::LinkDown, Fault::OneWay, Fault::Bridge];
        for seed in 0..20 {
            let a = schedule(seed, 40_000, false, true, &only);
            let at = |f: &dyn Fn(&Act) -> bool| a.steps.iter().find(|s| f(&s.act)).map(|s| s.at_ms);
            let pairs = [
                (
                    at(&|x| matches!(x, Act::Isolate(_))),
                    at(&|x| matches!(x, Act::Rejoin(_))),
                ),
                (
                    at(&|x| matches!(x, Act::Block(..))),
                    at(&|x| matches!(x, Act::Unblock(..))),
                ),
                (
                    at(&|x| matches!(x, Act::Split(..))),
                    at(&|x| matches!(x, Act::Unsplit(..))),
                ),
            ];
            for (from, to) in pairs {
                let (Some(from), Some(to)) = (from, to) else {
                    panic!("seed {seed}: a partition is missing");
                };
                assert!(to - from >= LONG_PARTITION_EXTRA_MS, "seed {seed}");
            }
        }
    }

    #[test]
    fn thirty_seeds_cover_every_kind_five_times() {
        let mut count = std::collections::BTreeMap::new();
        for seed in 1..=30 {
            for k in schedule(seed, 45_000, false, false, &[]).kinds {
                *count.entry(k).or_insert(0) += 1;
            }
        }
        for f in Fault::ALL {
            assert!(count.get(&f).copied().unwrap_or(0) >= 5, "{f:?}: {count:?}");
        }
    }
}
