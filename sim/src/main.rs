//! `wallet-sim`: see `wallet-sim --help` and docs/simulator.md.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use wallet_sim::cli::{self, Options};
use wallet_sim::report;
use wallet_sim::run::{run, RunResult};

struct Progress {
    total: usize,
    done: AtomicUsize,
    tty: bool,
    started: Instant,
    lock: Mutex<()>,
}

impl Progress {
    fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if self.total <= 1 {
            return;
        }
        let _g = self.lock.lock();
        let mut err = std::io::stderr();
        if self.tty {
            let width = 40;
            let filled = done * width / self.total;
            let _ = write!(
                err,
                "\r[{}{}] {done}/{} runs  {:.1}s",
                "#".repeat(filled),
                ".".repeat(width - filled),
                self.total,
                self.started.elapsed().as_secs_f64()
            );
            if done == self.total {
                let _ = writeln!(err);
            }
        } else if done * 10 / self.total != (done - 1) * 10 / self.total || done == self.total {
            let _ = writeln!(err, "progress: {done}/{} runs", self.total);
        }
    }
}

fn main() -> ExitCode {
    let opts = match cli::parse(std::env::args_os().skip(1)) {
        Ok(o) => o,
        Err(cli::CliError::Clap(e)) => {
            // --help (exit 0), or a flag or value the parser refused (exit 2).
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
        Err(e) => {
            eprintln!("wallet-sim: {e}");
            eprintln!("try `wallet-sim --help`");
            return ExitCode::from(2);
        }
    };
    if opts.print_policy {
        if !opts.draw {
            eprintln!("wallet-sim: --print-policy prints drawn policies: leave --policy out");
            return ExitCode::from(2);
        }
        for seed in opts.seeds.0..=opts.seeds.1 {
            let d = wallet_sim::policygen::draw_seed_policy(
                seed,
                opts.base.workload.accounts,
                &opts.base.regions,
            );
            println!("# seed {seed}: {}\n{}", d.name, d.toml);
        }
        return ExitCode::SUCCESS;
    }
    match execute(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("wallet-sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn execute(opts: &Options) -> Result<bool, String> {
    let (a, b) = opts.seeds;
    let seeds: Vec<u64> = (a..=b).collect();
    let np = opts.policies.len();
    let jobs = seeds.len() * np;
    let started = Instant::now();
    let progress = Progress {
        total: jobs,
        done: AtomicUsize::new(0),
        tty: std::io::stderr().is_terminal(),
        started,
        lock: Mutex::new(()),
    };
    let results: Mutex<Vec<Option<RunResult>>> = Mutex::new((0..jobs).map(|_| None).collect());
    let next = AtomicUsize::new(0);
    let threads = opts.threads.min(jobs).max(1);
    let work = || loop {
        let j = next.fetch_add(1, Ordering::SeqCst);
        if j >= jobs {
            break;
        }
        let seed = seeds[j / np];
        let (label, _, policy) = &opts.policies[j % np];
        let mut cfg = opts.base.clone();
        cfg.seed = seed;
        if opts.draw_pull_limit {
            cfg.pull_limit = wallet_sim::config::draw_pull_limit(seed);
        }
        if opts.draw_lost_disk {
            cfg.draw_lost_disk(opts.args.replica.ack.is_some());
        }
        if opts.draw {
            cfg.draw_policy();
        } else {
            cfg.policy = policy.clone();
            cfg.policy_name = label.clone();
        }
        cfg.record_series = opts.report.is_some() && j / np == 0;
        let r = run(cfg, opts.timing);
        if let Ok(mut v) = results.lock() {
            v[j] = Some(r);
        }
        progress.tick();
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    let results: Vec<RunResult> = results
        .into_inner()
        .map_err(|_| "a worker thread panicked".to_string())?
        .into_iter()
        .flatten()
        .collect();
    if results.len() != jobs {
        return Err("a run did not finish".into());
    }
    let wall = started.elapsed();
    let single = jobs == 1;
    let mut all_ok = true;
    let mut out = String::new();
    for r in &results {
        if single {
            out.push_str(&report::summary(r));
        } else if !opts.quiet && !opts.compare {
            let m = &r.metrics;
            out.push_str(&format!(
                "seed {:>6}  {}  accepted {} refused {} overdrafts {} fees {} ({}) reversals {} dup-reversals {} lag p99 {} ms  partitions {} crashes {}{}\n",
                r.seed,
                if r.check.invariants.all() { "ok    " } else { "FAILED" },
                m.accepted,
                m.refused,
                m.overdrafts,
                m.fees,
                m.fee_total,
                m.reversals,
                m.duplicate_reversals,
                m.settle_lag_p99_ms,
                m.partitions,
                m.crashes,
                if m.forwarded > 0 || m.home_moves > 0 {
                    format!(
                        "  forwarded {} home-unreachable {} home-moves {}",
                        m.forwarded, m.refused_home_unreachable, m.home_moves
                    )
                } else {
                    String::new()
                }
            ));
        }
    }
    if opts.compare {
        for chunk in results.chunks(np) {
            if let Some(first) = chunk.first() {
                out.push_str(&format!(
                    "\nseed {} · {} transactions · workload {:016x}\n",
                    first.seed, first.metrics.transactions, first.workload_digest
                ));
            }
            if opts.compare_modes {
                out.push_str(&report::modes_table(chunk));
            } else {
                out.push_str(&report::compare_table(chunk));
            }
        }
    }
    let total_tx: u64 = results.iter().map(|r| r.metrics.transactions).sum();
    let passed = results.iter().filter(|r| r.check.invariants.all()).count();
    if !single {
        let us = wall.as_micros().max(1);
        out.push_str(&format!(
            "\n{} runs: {} passed, {} failed · {} simulated transactions in {:.2} s wall = {} tx/s\n",
            jobs,
            passed,
            jobs - passed,
            total_tx,
            wall.as_secs_f64(),
            u128::from(total_tx) * 1_000_000 / us
        ));
    }
    if !single {
        out.push_str(&report::compaction_summary(&results));
    }
    print!("{out}");
    for r in &results {
        if r.check.invariants.all() {
            continue;
        }
        all_ok = false;
        let path = opts
            .policies
            .iter()
            .find(|(l, _, _)| *l == r.policy)
            .and_then(|(_, p, _)| p.as_deref());
        for (name, detail) in &r.check.failures {
            println!(
                "INVARIANT FAILED: {name} (seed {}, policy {}): {detail}",
                r.seed, r.policy
            );
        }
        // A drawn policy is a function of the seed: the command reproduces it; the comment
        // names it (its TOML: policy_toml in --json, or the same command with --print-policy).
        let drawn = if opts.draw {
            format!(
                "  # policy {} drawn from the seed (TOML: add --print-policy)",
                r.policy
            )
        } else {
            String::new()
        };
        println!("  reproduce: {}{drawn}", cli::repro(opts, r.seed, path));
    }
    if let Some(path) = &opts.json {
        let text = if single {
            serde_json::to_string_pretty(&results[0].json())
        } else {
            let v: Vec<_> = results.iter().map(RunResult::json).collect();
            serde_json::to_string_pretty(&v)
        }
        .map_err(|e| format!("cannot encode JSON: {e}"))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &opts.report {
        let cmd = cli::command_line(opts);
        let html = report::html(&results[..np.min(results.len())], &cmd);
        std::fs::write(path, html).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let _ = std::io::stdout().flush();
    Ok(all_ok)
}
