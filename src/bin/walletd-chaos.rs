//! Randomized real-network fault schedules (issue 15), run by `scripts/chaos.sh`:
//!
//! ```text
//! walletd-chaos --runs N --seed S [--duration-s D] [--short] [--long-partitions] [--only KIND,…] [--exe PATH] [--out DIR]
//! ```
//!
//! Run `k` (0-based) uses seed `S + k`: the schedule (fault kinds, regions, times) and the
//! workload follow from it ([`wallet::chaos`]). Prints each run's one-line bank summary and,
//! at the end, a table (run, seed, seconds, faults injected, acknowledged, compensations,
//! result) and the command that repeats each failing run. Writes each run's JSON result to
//! `--out` (default `target/chaos`). Exit 0 when every run is valid, 1 when one failed,
//! 2 on bad arguments or an environment that cannot run it (not root, no namespaces).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use wallet::chaos::{self, ChaosOptions, ChaosResult, Fault};

#[derive(Parser, Debug)]
#[command(
    name = "walletd-chaos",
    about = "Randomized real-network fault schedules"
)]
struct Args {
    /// Number of runs.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Seed of the first run (run k uses seed + k).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Workload duration of each run, seconds (default: drawn from 30-60 by the seed).
    #[arg(long)]
    duration_s: Option<u64>,
    /// Short runs: shorter pauses, fewer faults (what the test suite runs).
    #[arg(long)]
    short: bool,
    /// Partitions past libp2p's ping time-out (12 s longer), so connections drop.
    #[arg(long)]
    long_partitions: bool,
    /// Only these fault kinds, comma-separated (e.g. kill9_loop,disk_full).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The walletd executable (default: `walletd` next to this one).
    #[arg(long)]
    exe: Option<PathBuf>,
    /// Directory for the JSON results (and the logs of failing runs).
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let exe = match args.exe.clone().or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("walletd")))
    }) {
        Some(p) if p.exists() => p,
        other => {
            eprintln!("walletd-chaos: no walletd executable ({other:?}); pass --exe");
            return ExitCode::from(2);
        }
    };
    let mut only = Vec::new();
    for o in &args.only {
        match Fault::ALL.into_iter().find(|f| f.name() == o) {
            Some(f) => only.push(f),
            None => {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                eprintln!(
                    "walletd-chaos: unknown fault {o:?} (one of {})",
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    }
    if let Err(e) = chaos::probe() {
        eprintln!("walletd-chaos: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walletd-chaos: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let defect = std::env::var(wallet::defects::DEFECT_ENV).unwrap_or_default();
    let mut rows: Vec<(u64, Result<ChaosResult, String>)> = Vec::new();
    for k in 0..args.runs {
        let seed = args.seed.wrapping_add(k);
        let o = ChaosOptions {
            exe: exe.clone(),
            seed,
            duration: args.duration_s.map(Duration::from_secs),
            short: args.short,
            only: only.clone(),
            long_partitions: args.long_partitions,
            out_dir: Some(args.out.clone()),
        };
        let r = rt.block_on(chaos::run(&o));
        match &r {
            Ok(res) => {
                println!("run {k} seed {seed}: {}", res.bank.summary());
                for c in res.bank.checks.iter().filter(|c| !c.ok) {
                    println!("  {} failed: {}", c.name, c.problems.join(" | "));
                }
            }
            Err(e) => println!("run {k} seed {seed}: ERROR {e}"),
        }
        rows.push((k, r.map_err(|e| e.to_string())));
    }
    println!();
    println!("| run | seed | s | faults injected | acknowledged | compensations | result |");
    println!("|---|---|---|---|---|---|---|");
    let mut failing = Vec::new();
    for (k, r) in &rows {
        let seed = args.seed.wrapping_add(*k);
        match r {
            Ok(res) => {
                let comp: usize = res.bank.compensations.values().sum();
                let verdict = if res.valid() {
                    "VALID".to_string()
                } else {
                    failing.push(seed);
                    format!("INVALID: {}", res.failed().join(","))
                };
                println!(
                    "| {k} | {seed} | {} | {} | {} | {comp} | {verdict} |",
                    res.duration_s,
                    res.injected_names(),
                    res.bank.acked,
                );
            }
            Err(e) => {
                failing.push(seed);
                println!("| {k} | {seed} | - | - | - | - | ERROR: {e} |");
            }
        }
    }
    let mut count = std::collections::BTreeMap::new();
    for res in rows.iter().filter_map(|(_, r)| r.as_ref().ok()) {
        for f in &res.injected {
            *count.entry(f.name()).or_insert(0usize) += 1;
        }
    }
    let per: Vec<String> = Fault::ALL
        .iter()
        .map(|f| format!("{}={}", f.name(), count.get(f.name()).copied().unwrap_or(0)))
        .collect();
    println!("\nruns per fault kind: {}", per.join(" "));
    let valid = rows.len() - failing.len();
    println!("{valid}/{} runs valid", rows.len());
    for seed in &failing {
        let mut cmd = String::new();
        if !defect.is_empty() {
            cmd.push_str(&format!("{}={defect} ", wallet::defects::DEFECT_ENV));
        }
        cmd.push_str(&format!("scripts/chaos.sh --runs 1 --seed {seed}"));
        if let Some(d) = args.duration_s {
            cmd.push_str(&format!(" --duration-s {d}"));
        }
        if args.short {
            cmd.push_str(" --short");
        }
        if args.long_partitions {
            cmd.push_str(" --long-partitions");
        }
        if !args.only.is_empty() {
            cmd.push_str(&format!(" --only {}", args.only.join(",")));
        }
        if !defect.is_empty() {
            cmd.push_str(" --defects");
        }
        println!("reproduce: {cmd}");
    }
    if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
