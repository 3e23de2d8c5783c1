//! Acknowledgement latency and the cost of `Message::Durable` by `ack` level (issue 13,
//! docs/operations.md): eu, us, ap as real processes, each in its own network namespace, every
//! inter-region connection through the delaying TCP proxy (`src/latency.rs`), all three
//! configured with `ack = "local"` or all with `"peer"`. Two phases per run:
//! - `--requests` sequential keyed deposits at eu: p50 / p99 / max of their latency;
//! - `--clients` concurrent keyed deposit loops spread over the three regions for `--seconds`:
//!   throughput, p50 / p99 latency, and, from the regions' metrics over the phase, messages
//!   and bytes sent per accepted event, messages dropped, failed outbound requests.
//!
//! ```text
//! cargo build --release --bin walletd --bin walletd-ackbench
//! target/release/walletd-ackbench --walletd target/release/walletd [--requests 200]
//!     [--delays 0,50] [--clients 24] [--seconds 10]
//! ```
//!
//! `--delays` lists one-way delays in ms (50: 100 ms round trip). This is a benchmark that
//! prints figures; it asserts only that the run itself worked.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use wallet::cluster::{metric, ClusterError, ClusterOptions, LocalCluster};

struct Args {
    walletd: PathBuf,
    requests: usize,
    delays: Vec<u64>,
    clients: usize,
    seconds: u64,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        walletd: PathBuf::from("target/debug/walletd"),
        requests: 200,
        delays: vec![0, 50],
        clients: 24,
        seconds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--walletd" => a.walletd = PathBuf::from(val()?),
            "--requests" => a.requests = val()?.parse().map_err(|e| format!("--requests: {e}"))?,
            "--clients" => a.clients = val()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--seconds" => a.seconds = val()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--delays" => {
                a.delays = val()?
                    .split(',')
                    .map(|s| s.parse::<u64>().map_err(|e| format!("--delays: {e}")))
                    .collect::<Result<_, _>>()?
            }
            _ => {
                return Err(
                    "usage: walletd-ackbench [--walletd PATH] [--requests N] [--delays 0,50] \
                     [--clients N] [--seconds S]"
                        .into(),
                )
            }
        }
    }
    Ok(a)
}

/// What one run measured.
struct Run {
    /// Latencies (ms) of the sequential deposits at eu.
    sequential: Vec<f64>,
    /// Latencies (ms) of the concurrent phase's 201s.
    loaded: Vec<f64>,
    /// Answers other than 201 in the concurrent phase.
    refused: u64,
    /// Counters summed over the three regions, over the concurrent phase.
    counters: Counters,
}

/// Transport counters summed over the regions (`/metrics`).
#[derive(Default, Clone, Copy)]
struct Counters {
    messages: u64,
    bytes: u64,
    dropped: u64,
    failed: u64,
}

impl Counters {
    async fn read(c: &LocalCluster) -> Result<Counters, ClusterError> {
        let mut t = Counters::default();
        for i in 0..3 {
            let m = c.metrics(i).await?;
            let get = |name: &str| metric(&m, name).unwrap_or(0);
            t.messages += get("walletd_replication_messages_total{direction=\"sent\"}");
            t.bytes += get("walletd_replication_bytes_total{direction=\"sent\"}");
            t.dropped += get("walletd_p2p_dropped_messages_total");
            t.failed += ["dial_failure", "timeout", "connection_closed", "io"]
                .iter()
                .map(|o| {
                    get(&format!(
                        "walletd_p2p_requests_total{{direction=\"outbound\",outcome=\"{o}\"}}"
                    ))
                })
                .sum::<u64>();
        }
        Ok(t)
    }

    fn since(self, before: Counters) -> Counters {
        Counters {
            messages: self.messages.saturating_sub(before.messages),
            bytes: self.bytes.saturating_sub(before.bytes),
            dropped: self.dropped.saturating_sub(before.dropped),
            failed: self.failed.saturating_sub(before.failed),
        }
    }
}

/// One run, every region on `ack`.
async fn run(a: &Args, ack: &str, delay_ms: u64) -> Result<Run, ClusterError> {
    let mut o = ClusterOptions::new(a.walletd.clone(), &["eu", "us", "ap"])?;
    o.netns = true;
    o.faults = false;
    o.log_filter = "warn".into();
    let mut c = LocalCluster::init(o)?;
    c.route_through_proxies(wallet::latency::Latency::new(delay_ms, 0, 13))?;
    for i in 0..3 {
        c.rewrite_config(i, |t| {
            t.replace(
                "restore = false",
                &format!("restore = false\nack = \"{ack}\""),
            )
        })?;
    }
    c.start_all().await?;
    wallet::cluster::wait_all_members_up(&c, 60_000).await?;
    let client = c.client(0)?;
    let mut sequential = Vec::with_capacity(a.requests);
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
        sequential.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let before = Counters::read(&c).await?;
    let stop = Instant::now() + Duration::from_secs(a.seconds);
    let mut loops = Vec::new();
    for n in 0..a.clients {
        let client = c.client(n % 3)?;
        loops.push(tokio::spawn(async move {
            let (mut lat, mut refused) = (Vec::new(), 0u64);
            let mut k = 0;
            while Instant::now() < stop {
                let t = Instant::now();
                let key = format!("c{n}-{k}");
                k += 1;
                match client
                    .tx(&format!("load-{n}"), "deposit", "1.00", "USD", Some(&key))
                    .await
                {
                    Ok(r) if r.status == 201 => lat.push(t.elapsed().as_secs_f64() * 1e3),
                    _ => refused += 1,
                }
            }
            (lat, refused)
        }));
    }
    let (mut loaded, mut refused) = (Vec::new(), 0);
    for l in loops {
        let (lat, r) = l.await.map_err(|e| ClusterError::Region {
            region: "load".into(),
            reason: e.to_string(),
        })?;
        loaded.extend(lat);
        refused += r;
    }
    // Let the last events' replication and `Durable` go out before reading.
    tokio::time::sleep(Duration::from_millis(500 + 4 * delay_ms)).await;
    let counters = Counters::read(&c).await?.since(before);
    c.kill_all();
    Ok(Run {
        sequential,
        loaded,
        refused,
        counters,
    })
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
        "walletd-ackbench: eu, us, ap in namespaces, proxied, all on one ack level; {} \
         sequential keyed deposits at eu, then {} clients over the three regions for {} s",
        a.requests, a.clients, a.seconds
    );
    let mut rows = Vec::new();
    for &d in &a.delays {
        for ack in ["local", "peer"] {
            match run(&a, ack, d).await {
                Ok(mut r) => {
                    r.sequential.sort_by(f64::total_cmp);
                    r.loaded.sort_by(f64::total_cmp);
                    let s = &r.sequential;
                    println!(
                        "sequential  {ack:<6} {d:>3} ms: p50 {:.1} p99 {:.1} max {:.1} ms",
                        pct(s, 0.5),
                        pct(s, 0.99),
                        s.last().copied().unwrap_or(f64::NAN)
                    );
                    rows.push((ack, d, r));
                }
                Err(e) => {
                    eprintln!("walletd-ackbench: {ack} at {d} ms: {e}");
                    return ExitCode::from(1);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!();
    println!("ack    one-way  seq p50  seq p99 | load/s  load p50  load p99  non-201 | msgs/ev  bytes/ev  dropped  failed");
    for (ack, d, r) in &rows {
        let n = r.loaded.len().max(1) as f64;
        let t = r.counters;
        println!(
            "{ack:<6} {d:>4} ms {:>8.1} {:>8.1} | {:>6.0} {:>9.1} {:>9.1} {:>8} | {:>7.2} {:>9.0} {:>8} {:>7}",
            pct(&r.sequential, 0.5),
            pct(&r.sequential, 0.99),
            r.loaded.len() as f64 / a.seconds.max(1) as f64,
            pct(&r.loaded, 0.5),
            pct(&r.loaded, 0.99),
            r.refused,
            t.messages as f64 / n,
            t.bytes as f64 / n,
            t.dropped,
            t.failed,
        );
    }
    ExitCode::SUCCESS
}
