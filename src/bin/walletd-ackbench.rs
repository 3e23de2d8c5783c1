//! Acknowledgement latency by `ack` level (issue 13, docs/operations.md): eu, us, ap as real
//! processes, each in its own network namespace, every inter-region connection through the
//! delaying TCP proxy (`src/latency.rs`), eu configured with `ack = "local"` or `"peer"`;
//! `--requests` sequential keyed deposits at eu, and the p50 / p99 / max of their latency.
//!
//! ```text
//! cargo build --bin walletd --bin walletd-ackbench
//! target/debug/walletd-ackbench [--walletd target/debug/walletd] [--requests 200] [--delays 0,50]
//! ```
//!
//! `--delays` lists one-way delays in ms (50: 100 ms round trip). This is a benchmark that
//! prints figures; it asserts only that the run itself worked.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use wallet::cluster::{ClusterError, ClusterOptions, LocalCluster};

struct Args {
    walletd: PathBuf,
    requests: usize,
    delays: Vec<u64>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        walletd: PathBuf::from("target/debug/walletd"),
        requests: 200,
        delays: vec![0, 50],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--walletd" => a.walletd = PathBuf::from(val()?),
            "--requests" => a.requests = val()?.parse().map_err(|e| format!("--requests: {e}"))?,
            "--delays" => {
                a.delays = val()?
                    .split(',')
                    .map(|s| s.parse::<u64>().map_err(|e| format!("--delays: {e}")))
                    .collect::<Result<_, _>>()?
            }
            _ => {
                return Err(
                    "usage: walletd-ackbench [--walletd PATH] [--requests N] [--delays 0,50]"
                        .into(),
                )
            }
        }
    }
    Ok(a)
}

/// One run: the latencies (ms) of `requests` sequential deposits at eu.
async fn run(a: &Args, ack: &str, delay_ms: u64) -> Result<Vec<f64>, ClusterError> {
    let mut o = ClusterOptions::new(a.walletd.clone(), &["eu", "us", "ap"])?;
    o.netns = true;
    o.faults = false;
    o.log_filter = "warn".into();
    let mut c = LocalCluster::init(o)?;
    c.route_through_proxies(wallet::latency::Latency::new(delay_ms, 0, 13))?;
    c.rewrite_config(0, |t| {
        t.replace(
            "restore = false",
            &format!("restore = false\nack = \"{ack}\""),
        )
    })?;
    c.start_all().await?;
    wallet::cluster::wait_all_members_up(&c, 60_000).await?;
    let client = c.client(0)?;
    let mut lat = Vec::with_capacity(a.requests);
    for n in 0..a.requests {
        let t = Instant::now();
        let r = client
            .tx(
                &format!("ack-{}", n % 8),
                "deposit",
                "1.00",
                "USD",
                Some(&format!("k{n}")),
            )
            .await?;
        if r.status != 201 {
            return Err(ClusterError::Region {
                region: "eu".into(),
                reason: format!("deposit answered {}: {}", r.status, r.json),
            });
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    c.kill_all();
    Ok(lat)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = wallet::netns::probe() {
        eprintln!("walletd-ackbench: needs network namespaces: {e}");
        return ExitCode::from(1);
    }
    println!(
        "walletd-ackbench: eu, us, ap in namespaces, proxied; {} sequential keyed deposits at eu",
        a.requests
    );
    println!("ack    one-way delay   p50 ms   p99 ms   max ms");
    for &d in &a.delays {
        for ack in ["local", "peer"] {
            match run(&a, ack, d).await {
                Ok(mut l) => {
                    l.sort_by(f64::total_cmp);
                    println!(
                        "{ack:<6} {d:>7} ms     {:>7.1}  {:>7.1}  {:>7.1}",
                        pct(&l, 0.5),
                        pct(&l, 0.99),
                        l.last().copied().unwrap_or(f64::NAN)
                    );
                }
                Err(e) => {
                    eprintln!("walletd-ackbench: {ack} at {d} ms: {e}");
                    return ExitCode::from(1);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    ExitCode::SUCCESS
}
