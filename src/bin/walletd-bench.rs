//! HTTP benchmark of a real `walletd`: durable accepted transactions per second and latency
//! percentiles with N concurrent keep-alive clients, on one hot account and on many accounts,
//! with group commit on and off.
//!
//! ```text
//! cargo build --release --bin walletd --bin walletd-bench
//! target/release/walletd-bench [--seconds 5] [--clients 64] [--walletd target/release/walletd]
//! ```
//!
//! `--modes` measures the consistency modes instead (docs/modes.md): local acceptance of an
//! escrow account (within its region's rights) against an optimistic one on one region, then,
//! with two regions in network namespaces joined by delaying TCP proxies (50 ms each way,
//! [`wallet::latency`]; needs root), the latency of a debit forwarded to its home and of a
//! debit that must first fetch escrow rights, against a local one.
//!
//! `--soak` and `--restart-at N,M` measure bounded storage instead (issue 13; `soak/mod.rs`;
//! `--restart-at` also times the archive's reopen and reads below its mark;
//! docs/operations.md "Soak"):
//!
//! ```text
//! target/release/walletd-bench --soak --regions 1 --seconds 600 --clients 64 --csv soak-1.csv
//! target/release/walletd-bench --restart-at 1000000,10000000 --accounts 10000
//! ```
//!
//! Not a test: it prints figures. The client is a minimal HTTP/1.1 keep-alive client so the
//! measurement spends its CPU in the server, not in the load generator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wallet::cluster::{ClusterOptions, LocalCluster};

mod soak;

#[derive(Debug, Clone)]
struct Args {
    seconds: u64,
    clients: usize,
    walletd: PathBuf,
    accounts: Vec<usize>,
    modes: Vec<bool>,
    /// Measure the consistency modes instead.
    consistency: bool,
    /// Run the soak instead (`soak/mod.rs`).
    soak: bool,
    /// Regions of the soak.
    regions: usize,
    /// The soak's CSV.
    csv: PathBuf,
    /// Seconds between the soak's samples.
    sample: u64,
    /// Measure restart times at these accepted counts instead.
    restart_at: Vec<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        seconds: 5,
        clients: 64,
        walletd: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("walletd")))
            .unwrap_or_else(|| PathBuf::from("walletd")),
        accounts: vec![1, 1000],
        modes: vec![true, false],
        consistency: false,
        soak: false,
        regions: 1,
        csv: PathBuf::from("soak.csv"),
        sample: 5,
        restart_at: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = val()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--clients" => a.clients = val()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--walletd" => a.walletd = PathBuf::from(val()?),
            "--accounts" => {
                a.accounts = val()?
                    .split(',')
                    .map(|s| s.parse::<usize>().map_err(|e| format!("--accounts: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--group-commit" => {
                a.modes = match val()?.as_str() {
                    "on" => vec![true],
                    "off" => vec![false],
                    "both" => vec![true, false],
                    o => return Err(format!("--group-commit on|off|both, not {o}")),
                }
            }
            "--modes" => a.consistency = true,
            "--soak" => a.soak = true,
            "--regions" => a.regions = val()?.parse().map_err(|e| format!("--regions: {e}"))?,
            "--csv" => a.csv = PathBuf::from(val()?),
            "--sample" => a.sample = val()?.parse().map_err(|e| format!("--sample: {e}"))?,
            "--restart-at" => {
                a.restart_at = val()?
                    .split(',')
                    .map(|s| s.parse::<u64>().map_err(|e| format!("--restart-at: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "-h" | "--help" => {
                return Err("usage: walletd-bench [--seconds N] [--clients N] [--walletd PATH] [--accounts 1,1000] [--group-commit on|off|both] [--modes] [--soak --regions N --csv PATH --sample S] [--restart-at N,M]".into())
            }
            o => return Err(format!("unknown argument {o}")),
        }
    }
    if a.clients == 0 || a.seconds == 0 || a.sample == 0 {
        return Err("--clients and --seconds must be positive".into());
    }
    Ok(a)
}

/// One region (the walletd under test) of a [`LocalCluster`], in a temp dir removed with it.
struct Server {
    cluster: LocalCluster,
    addr: String,
    token: String,
    pid: String,
}

async fn start_server(
    walletd: &Path,
    group_commit: bool,
    policy: Option<&str>,
) -> Result<Server, String> {
    let mut opts =
        ClusterOptions::new(walletd.to_path_buf(), &["eu"]).map_err(|e| e.to_string())?;
    opts.group_commit = group_commit;
    opts.policy = policy.map(str::to_string);
    opts.faults = false;
    // The benchmark measures the node: plain HTTP, no per-token rate limit.
    opts.tls = false;
    opts.rate_per_second = Some(0);
    let mut cluster = LocalCluster::init(opts).map_err(|e| e.to_string())?;
    cluster.start(0).await.map_err(|e| e.to_string())?;
    let r = cluster.regions.first().ok_or("no region")?;
    let pid = r.pid().ok_or("walletd is not running")?.to_string();
    Ok(Server {
        addr: r.http.trim_start_matches("http://").to_string(),
        token: cluster.token.clone(),
        pid,
        cluster,
    })
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    /// Where the last response's body starts in `buf`.
    body_at: usize,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(4096),
            body_at: 0,
        })
    }

    /// The last response's body.
    fn body(&self) -> &[u8] {
        self.buf.get(self.body_at..).unwrap_or_default()
    }

    /// Sends one request and reads one response; returns the status.
    async fn request(&mut self, req: &[u8]) -> std::io::Result<u16> {
        self.s.write_all(req).await?;
        self.buf.clear();
        let mut tmp = [0u8; 4096];
        loop {
            let n = self.s.read(&mut tmp).await?;
            if n == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
            self.buf.extend_from_slice(&tmp[..n]);
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).map_err(std::io::Error::other)?;
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| std::io::Error::other("bad status line"))?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let want = end + 4 + len;
                self.body_at = end + 4;
                while self.buf.len() < want {
                    let n = self.s.read(&mut tmp).await?;
                    if n == 0 {
                        return Err(std::io::Error::other("connection closed"));
                    }
                    self.buf.extend_from_slice(&tmp[..n]);
                }
                return Ok(status);
            }
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn post(addr: &str, token: &str, account: &str, kind: &str, amount: &str) -> Vec<u8> {
    let body = format!(r#"{{"type":"{kind}","amount":"{amount}","currency":"USD"}}"#);
    format!(
        "POST /v1/accounts/{account}/transactions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct Outcome {
    ok: u64,
    other: u64,
    lat_us: Vec<u32>,
    /// CPU time of the walletd process (all threads) during the measured window.
    server_cpu: Duration,
    /// CPU time of this load generator during the measured window.
    client_cpu: Duration,
}

/// CPU time used so far by every thread of a process (`/proc/<pid>/task/*/schedstat`, ns).
fn cpu_time(pid: &str) -> Duration {
    let mut ns = 0u64;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

async fn load(
    server: &Server,
    accounts: usize,
    clients: usize,
    seconds: u64,
) -> Result<(Outcome, Duration), String> {
    // Fund every account so purchases are accepted for the whole run.
    let mut c = Conn::open(&server.addr).await.map_err(|e| e.to_string())?;
    for a in 0..accounts {
        let req = post(
            &server.addr,
            &server.token,
            &format!("acct{a}"),
            "deposit",
            "1000000000.00",
        );
        let s = c.request(&req).await.map_err(|e| e.to_string())?;
        if s != 201 {
            return Err(format!("funding deposit got {s}"));
        }
    }
    let reqs: Vec<Vec<u8>> = (0..accounts)
        .map(|a| {
            post(
                &server.addr,
                &server.token,
                &format!("acct{a}"),
                "purchase",
                "0.01",
            )
        })
        .collect();
    let reqs = std::sync::Arc::new(reqs);
    let warmup = Duration::from_millis(500);
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..clients {
        let addr = server.addr.clone();
        let reqs = reqs.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome {
                ok: 0,
                other: 0,
                lat_us: Vec::with_capacity(200_000),
                server_cpu: Duration::ZERO,
                client_cpu: Duration::ZERO,
            };
            let Ok(mut c) = Conn::open(&addr).await else {
                return out;
            };
            let mut i = w;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let req = &reqs[i % reqs.len()];
                i = i.wrapping_add(clients);
                let Ok(status) = c.request(req).await else {
                    break;
                };
                if t >= measure_from {
                    let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                    if status == 201 {
                        out.ok += 1;
                        out.lat_us.push(us);
                    } else {
                        out.other += 1;
                    }
                }
            }
            out
        }));
    }
    let pid = &server.pid;
    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
    let (s0, c0) = (cpu_time(pid), cpu_time("self"));
    tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
    let (s1, c1) = (cpu_time(pid), cpu_time("self"));
    let mut total = Outcome {
        ok: 0,
        other: 0,
        lat_us: Vec::new(),
        server_cpu: s1.saturating_sub(s0),
        client_cpu: c1.saturating_sub(c0),
    };
    for t in tasks {
        let o = t.await.map_err(|e| e.to_string())?;
        total.ok += o.ok;
        total.other += o.other;
        total.lat_us.extend(o.lat_us);
    }
    Ok((total, Duration::from_secs(seconds)))
}

fn pct(sorted: &[u32], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    if !args.restart_at.is_empty() {
        if let Err(e) = soak::restart(&args, &args.restart_at) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    if args.soak {
        if let Err(e) = rt.block_on(soak::soak(&args)) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    if args.consistency {
        if let Err(e) = rt.block_on(modes_bench(&args)) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    println!(
        "walletd-bench: {} clients, {} s per run (after 0.5 s warm-up), purchases of 0.01 USD, walletd={}",
        args.clients,
        args.seconds,
        args.walletd.display()
    );
    println!(
        "{:<14} {:>9} {:>12} {:>9} {:>9} {:>9} {:>8} {:>14} {:>14}",
        "group_commit",
        "accounts",
        "accepted/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "server cpu/tx",
        "client cpu/tx"
    );
    let mut rates: Vec<(bool, usize, f64)> = Vec::new();
    for &gc in &args.modes {
        for &accounts in &args.accounts {
            let server = match rt.block_on(start_server(&args.walletd, gc, None)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            };
            match rt.block_on(load(&server, accounts, args.clients, args.seconds)) {
                Ok((mut o, d)) => {
                    o.lat_us.sort_unstable();
                    let rate = o.ok as f64 / d.as_secs_f64();
                    rates.push((gc, accounts, rate));
                    let per_tx = |d: Duration| {
                        if o.ok == 0 {
                            0.0
                        } else {
                            d.as_secs_f64() * 1e6 / o.ok as f64
                        }
                    };
                    println!(
                        "{:<14} {:>9} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>11.1} us {:>11.1} us",
                        if gc { "on" } else { "off" },
                        accounts,
                        rate,
                        pct(&o.lat_us, 50),
                        pct(&o.lat_us, 99),
                        o.lat_us
                            .last()
                            .map(|v| f64::from(*v) / 1000.0)
                            .unwrap_or(0.0),
                        o.other,
                        per_tx(o.server_cpu),
                        per_tx(o.client_cpu),
                    );
                }
                Err(e) => eprintln!("run failed: {e}"),
            }
            let mut server = server;
            // SIGTERM, as an operator would stop it (the temp dir goes with the cluster).
            rt.block_on(server.cluster.stop(0));
        }
    }
    println!(
        "server cpu/tx: CPU time of walletd (all threads) per accepted transaction; \
         2 cores / that bounds what the server could sustain on 2 cores of its own"
    );
    for &accounts in &args.accounts {
        let on = rates.iter().find(|r| r.0 && r.1 == accounts).map(|r| r.2);
        let off = rates.iter().find(|r| !r.0 && r.1 == accounts).map(|r| r.2);
        if let (Some(on), Some(off)) = (on, off) {
            if off > 0.0 {
                println!(
                    "group commit gain on {accounts} account(s): {:.1}x",
                    on / off
                );
            }
        }
    }
}

/// Every `acct*` account (the load's) in escrow mode; `h-*` homed at eu; `e-*` escrow.
const MODES_POLICY: &str = r#"
[default]
action = "fee"
overdraft_line = "0"

[tiers]
load = ["acct"]
home = ["h-"]
escrow = ["e-"]

[[rule]]
tier = "load"
mode = "escrow"

[[rule]]
tier = "home"
mode = "home"
home = "eu"

[[rule]]
tier = "escrow"
mode = "escrow"
rights_timeout_ms = 5000
"#;

/// One-way delay of the proxies between the regions, ms.
const PROXY_DELAY_MS: u64 = 50;
/// Sequential debits per latency figure.
const ROUND_TRIP_SAMPLES: usize = 30;

/// `--modes`: escrow local acceptance against optimistic, then the synchronous paths' cost
/// over delaying proxies.
async fn modes_bench(args: &Args) -> Result<(), String> {
    let accounts = args.accounts.first().copied().unwrap_or(1);
    println!(
        "walletd-bench --modes: local acceptance, {} clients, {} s per run, {accounts} account(s), group commit on, walletd={}",
        args.clients,
        args.seconds,
        args.walletd.display()
    );
    println!(
        "{:<12} {:>12} {:>9} {:>9} {:>8}",
        "mode", "accepted/s", "p50 ms", "p99 ms", "errors"
    );
    let mut rates = Vec::new();
    for (name, policy) in [("optimistic", None), ("escrow", Some(MODES_POLICY))] {
        let mut server = start_server(&args.walletd, true, policy).await?;
        let (mut o, d) = load(&server, accounts, args.clients, args.seconds).await?;
        o.lat_us.sort_unstable();
        let rate = o.ok as f64 / d.as_secs_f64();
        rates.push(rate);
        println!(
            "{name:<12} {rate:>12.0} {:>9.2} {:>9.2} {:>8}",
            pct(&o.lat_us, 50),
            pct(&o.lat_us, 99),
            o.other
        );
        server.cluster.stop(0).await;
    }
    if let [opt, esc] = rates[..] {
        if opt > 0.0 {
            println!("escrow / optimistic: {:.1} %", esc / opt * 100.0);
        }
    }
    round_trips(&args.walletd).await
}

/// Median and p99 of the accepted ones of sequential debits (ms), and the refused ones by
/// code.
async fn sequential(
    c: &wallet::cluster::Client,
    accounts: impl Fn(usize) -> String,
    amount: &str,
) -> Result<(f64, f64, BTreeMap<String, u32>), String> {
    let mut lat = Vec::with_capacity(ROUND_TRIP_SAMPLES);
    let mut refused = BTreeMap::new();
    for i in 0..ROUND_TRIP_SAMPLES {
        let t = Instant::now();
        let a = c
            .tx(&accounts(i), "purchase", amount, "USD", None)
            .await
            .map_err(|e| e.to_string())?;
        if a.status == 201 {
            lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        } else {
            let code = a.json["error"]["code"].as_str().unwrap_or("?").to_string();
            *refused.entry(format!("{} {code}", a.status)).or_insert(0) += 1;
        }
    }
    lat.sort_unstable();
    Ok((pct(&lat, 50), pct(&lat, 99), refused))
}

/// eu and us in network namespaces, every p2p connection through a proxy delaying each
/// direction by [`PROXY_DELAY_MS`]: debits at us that are local, forwarded to the home eu,
/// or that fetch escrow rights from eu.
async fn round_trips(walletd: &Path) -> Result<(), String> {
    let e = |e: wallet::cluster::ClusterError| e.to_string();
    let mut opts = ClusterOptions::new(walletd.to_path_buf(), &["eu", "us"]).map_err(e)?;
    opts.netns = true;
    opts.faults = false;
    opts.rate_per_second = Some(0);
    opts.policy = Some(MODES_POLICY.to_string());
    let mut c = LocalCluster::init(opts).map_err(e)?;
    let latency = wallet::latency::Latency::new(PROXY_DELAY_MS, 0, 1);
    c.route_through_proxies(latency).map_err(e)?;
    c.start_all().await.map_err(e)?;
    let (eu, us) = (c.client(0).map_err(e)?, c.client(1).map_err(e)?);
    let n = ROUND_TRIP_SAMPLES;
    for (client, account) in [(&us, "o-1".to_string()), (&eu, "h-1".to_string())] {
        let a = client
            .tx(&account, "deposit", "1000", "USD", None)
            .await
            .map_err(e)?;
        if a.status != 201 {
            return Err(format!("deposit {account}: {} {}", a.status, a.json));
        }
    }
    for i in 0..n {
        eu.tx(&format!("e-{i}"), "deposit", "10", "USD", None)
            .await
            .map_err(e)?;
    }
    // us must hold every deposit (the home's, for the home's own check it is eu's anyway).
    let last = format!("/v1/accounts/e-{}/balances", n - 1);
    wallet::cluster::wait_until("us to hold the deposits", 60_000, || async {
        let v = us.get_ok(&last).await?;
        Ok(v["balances"][0]["provisional"] == "10.00")
    })
    .await
    .map_err(e)?;
    println!(
        "synchronous paths at us, {PROXY_DELAY_MS} ms each way between the regions \
         (one round trip = {} ms), {n} sequential debits each:",
        2 * PROXY_DELAY_MS
    );
    println!(
        "{:<34} {:>9} {:>9}  refused",
        "debit at us", "p50 ms", "p99 ms"
    );
    let rows = [
        (
            "local (optimistic)",
            sequential(&us, |_| "o-1".into(), "0.01").await?,
        ),
        (
            "forwarded to the home eu",
            sequential(&us, |_| "h-1".into(), "0.01").await?,
        ),
        (
            "escrow, rights fetched from eu",
            sequential(&us, |i| format!("e-{i}"), "1.00").await?,
        ),
    ];
    for (what, (p50, p99, refused)) in rows {
        println!("{what:<34} {p50:>9.1} {p99:>9.1}  {refused:?}");
    }
    // Where the time goes: the link's round trip (libp2p ping) and a batch's (sent until
    // acknowledged: a member sends one batch at a time).
    let text = c.metrics(1).await.map_err(e)?;
    for (what, name) in [
        ("ping round trip", "libp2p_ping_rtt_seconds"),
        ("p2p batch round trip", "walletd_p2p_batch_duration_seconds"),
    ] {
        let sum = sample_sum(&text, &format!("{name}_sum"));
        let count = sample_sum(&text, &format!("{name}_count"));
        if count > 0.0 {
            println!(
                "us: mean {what}: {:.1} ms ({count} samples)",
                sum / count * 1000.0
            );
        }
    }
    for i in 0..2 {
        c.stop(i).await;
    }
    Ok(())
}

/// The sum of a metric's samples over its label sets (0 when absent).
fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
