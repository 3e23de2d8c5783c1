//! The short version of `scripts/chaos.sh` (issue 15) in the default test run: two short
//! randomized fault schedules ([`wallet::chaos`]) over three `walletd` regions in network
//! namespaces, behind delaying proxies, each checked by the bank checker and the fault
//! checks. Between them the two runs inject every fault kind. Skips, saying why, where
//! network namespaces or libfaketime are not available.

mod common;

use std::time::Duration;

use common::BIN;
use wallet::chaos::{self, ChaosOptions, Fault};

async fn short_run(seed: u64, only: &[Fault]) {
    if let Err(e) = chaos::probe() {
        println!("SKIPPED: {e}");
        return;
    }
    let o = ChaosOptions {
        exe: BIN.into(),
        seed,
        duration: Some(Duration::from_secs(12)),
        short: true,
        only: only.to_vec(),
        long_partitions: false,
        out_dir: Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos")),
    };
    let r = chaos::run(&o).await.expect("chaos run");
    println!("{}", r.bank.summary());
    println!("injected: {}; took {:.1}s", r.injected_names(), r.wall_s);
    for l in &r.bank.faults {
        println!("  {l}");
    }
    let json = serde_json::to_string_pretty(&r).expect("json");
    assert!(r.valid(), "failed {:?}: {json}", r.failed());
    assert!(r.bank.acked > 0, "nothing was acknowledged");
    for f in only {
        assert!(
            r.injected.contains(f),
            "{f:?} was scheduled, not injected: {json}"
        );
    }
}

/// One test, two runs one after the other (two clusters at once would crowd two cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_two_short_runs_inject_every_fault_kind_and_stay_valid() {
    // Latency, a kill -9 loop, a link down and a flapping link, a clock beyond the skew
    // bound, a full disk, then a corrupted file restored from the peers.
    short_run(
        1501,
        &[
            Fault::Latency,
            Fault::Kill9Loop,
            Fault::Flap,
            Fault::LinkDown,
            Fault::SkewBeyond,
            Fault::DiskFull,
            Fault::Corrupt,
        ],
    )
    .await;
    // A bridge partition, a one-way block, a pause, a clock skewed within the bound and
    // stepped, a read-only remount, then a truncated file restored from the peers.
    short_run(
        1502,
        &[
            Fault::Bridge,
            Fault::OneWay,
            Fault::Pause,
            Fault::SkewWithin,
            Fault::ClockStep,
            Fault::ReadOnly,
            Fault::Truncate,
        ],
    )
    .await;
}
