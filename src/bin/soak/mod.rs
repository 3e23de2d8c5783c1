//! `walletd-bench --soak` and `--restart-at`: issue 13's bounded-storage measurements.
//!
//! - `--soak`: a [`LocalCluster`] of `--regions` real walletd processes (1 or 3) with
//!   compaction on, a short key retention and a short archive retention takes a steady keyed load from `--clients`
//!   closed-loop keep-alive connections for `--seconds`, spread over the regions: per ten
//!   requests five 0.01 USD purchases, three 0.01 USD deposits and two withdrawals far beyond
//!   any balance (refused, 422), each with a unique `Idempotency-Key`, so the core's key index
//!   and the HTTP response cache both fill and expire. Every `--sample` seconds it writes one CSV
//!   row per region: RSS (`/proc/PID/status` VmRSS), the hot store's bytes (the data dir's
//!   files), the archive's bytes (`data_dir/archive`), transactions accepted,
//!   events in memory, keys held (HTTP cache and core index), the client's answers so far and
//!   the load average. At the end it prints the log rewrites the regions reported.
//! - `--restart-at 1000000,10000000`: fills one region's data dir through walletd's own node
//!   (`wallet::node::start` in this process: the actor, the core, the storage writer; no
//!   HTTP) with keyed purchases over `--accounts` funded accounts and compaction on, and at each
//!   count stops it, times the archive's open in this process, times a real walletd process
//!   from spawn to its first `/v1/status` answer, and times reads below the archive's mark
//!   (account pages from the oldest entry and at a cursor five pages on, transactions by id).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wallet::cluster::{ClusterOptions, LocalCluster};
use wallet::command::{Command, SubmitCmd};
use wallet_core::{AccountId, Amount, Currency, Kind, TxRequest};

use super::{sample_sum, Args, Conn};

/// Compaction period of the soak's regions (settled events).
pub const SOAK_COMPACT_EVERY: u64 = 100_000;
/// Key retention of the soak's regions (ms): expiry is reached within a run.
pub const SOAK_RETENTION_MS: u64 = 60_000;
/// Archive retention of the soak's regions (`[storage] archive_retention_secs`): whole
/// archive segments older than this are deleted within a run, so the archive is bounded too.
pub const SOAK_ARCHIVE_RETENTION_SECS: u64 = 120;

/// Initialises a cluster of the first `n` of eu, us, ap with compaction on, a short key
/// retention and (`archive_retention_secs`, when given) a short archive retention, kept in
/// `dir` (logs included).
fn soak_cluster(
    walletd: &Path,
    n: usize,
    dir: &Path,
    retention_ms: u64,
    archive_retention_secs: Option<u64>,
) -> Result<LocalCluster, String> {
    let names = ["eu", "us", "ap"];
    let regions = names.get(..n).ok_or("--regions is 1, 2 or 3")?;
    let _ = std::fs::remove_dir_all(dir);
    let mut opts =
        ClusterOptions::new(walletd.to_path_buf(), regions).map_err(|e| e.to_string())?;
    opts.dir = Some(dir.to_path_buf());
    opts.faults = false;
    opts.tls = false;
    opts.rate_per_second = Some(0);
    opts.log_filter = "warn,wallet=info".into();
    let cluster = LocalCluster::init(opts).map_err(|e| e.to_string())?;
    for i in 0..n {
        cluster
            .rewrite_config(i, |t| {
                let t = match archive_retention_secs {
                    Some(s) => t.replacen(
                        "[storage]\n",
                        &format!("[storage]\narchive_retention_secs = {s}\n"),
                        1,
                    ),
                    None => t.to_string(),
                };
                format!(
                    "idempotency_retention_ms = {retention_ms}\ncompact_every_events = {SOAK_COMPACT_EVERY}\n{t}"
                )
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(cluster)
}

/// `host:port` of region `i`.
fn addr(c: &LocalCluster, i: usize) -> String {
    c.regions[i].http.trim_start_matches("http://").to_string()
}

fn request(addr: &str, token: &str, account: &str, kind: &str, amount: &str, key: &str) -> Vec<u8> {
    let body = format!(r#"{{"type":"{kind}","amount":"{amount}","currency":"USD"}}"#);
    format!(
        "POST /v1/accounts/{account}/transactions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nIdempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(addr: &str, token: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n")
        .into_bytes()
}

/// VmRSS of a process in KiB (0 when gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes of the files directly in a directory (not recursive: a data dir's hot store; its
/// `archive/` subdirectory is measured on its own).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|f| f.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

#[derive(Default)]
struct Answers {
    created: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
}

/// The soak (module docs).
pub async fn soak(args: &Args) -> Result<(), String> {
    let dir = PathBuf::from(format!("/tmp/walletd-soak-{}", args.regions));
    let mut cluster = soak_cluster(
        &args.walletd,
        args.regions,
        &dir,
        SOAK_RETENTION_MS,
        Some(SOAK_ARCHIVE_RETENTION_SECS),
    )?;
    cluster.start_all().await.map_err(|e| e.to_string())?;
    let token = cluster.token.clone();
    let n = args.regions;
    let addrs: Vec<String> = (0..n).map(|i| addr(&cluster, i)).collect();
    let pids: Vec<u32> = (0..n)
        .map(|i| cluster.regions[i].pid().ok_or("a region is not running"))
        .collect::<Result<_, _>>()?;
    let data: Vec<PathBuf> = (0..n)
        .map(|i| cluster.data_dir(i).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let accounts = args.accounts.last().copied().unwrap_or(1000).max(1);
    {
        let mut c = Conn::open(&addrs[0]).await.map_err(|e| e.to_string())?;
        for a in 0..accounts {
            let req = request(
                &addrs[0],
                &token,
                &format!("acct{a}"),
                "deposit",
                "1000000000.00",
                &format!("fund-{a}"),
            );
            let s = c.request(&req).await.map_err(|e| e.to_string())?;
            if s != 201 {
                return Err(format!("funding deposit got {s}"));
            }
        }
    }
    println!(
        "walletd-bench --soak: {n} region(s), {} clients, {accounts} accounts, {} s, compact_every_events = {SOAK_COMPACT_EVERY}, idempotency_retention_ms = {SOAK_RETENTION_MS}, archive_retention_secs = {SOAK_ARCHIVE_RETENTION_SECS}, data in {}",
        args.clients,
        args.seconds,
        dir.display()
    );
    let answers = Arc::new(Answers::default());
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for w in 0..args.clients {
        let (addr, token, answers) = (addrs[w % n].clone(), token.clone(), answers.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = Conn::open(&addr).await else {
                return;
            };
            let mut i: u64 = 0;
            while Instant::now() < end {
                let account = format!("acct{}", (i as usize * 7919 + w) % accounts);
                let (kind, amount) = match i % 10 {
                    0..=4 => ("purchase", "0.01"),
                    5..=7 => ("deposit", "0.01"),
                    _ => ("withdrawal", "900000000000.00"),
                };
                let req = request(&addr, &token, &account, kind, amount, &format!("s{w}-{i}"));
                i += 1;
                match c.request(&req).await {
                    Ok(201) => answers.created.fetch_add(1, Ordering::Relaxed),
                    Ok(422) => answers.refused.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => answers.other.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        // Reconnect after a closed connection.
                        answers.other.fetch_add(1, Ordering::Relaxed);
                        match Conn::open(&addr).await {
                            Ok(nc) => {
                                c = nc;
                                0
                            }
                            Err(_) => return,
                        }
                    }
                };
            }
        }));
    }
    let mut csv = String::from("t_s,region,rss_kib,data_bytes,archive_bytes,accepted,events_in_memory,keys_http,keys_core,client_201,client_422,client_other,load1\n");
    let mut probes = Vec::new();
    for a in &addrs {
        probes.push(Conn::open(a).await.map_err(|e| e.to_string())?);
    }
    let mut next = started;
    loop {
        let t = next.duration_since(started).as_secs();
        for i in 0..n {
            let text = match probes[i].request(&get(&addrs[i], &token, "/metrics")).await {
                Ok(200) => String::from_utf8_lossy(probes[i].body()).into_owned(),
                _ => String::new(),
            };
            let m = |name: &str| sample_sum(&text, name) as u64;
            let row = format!(
                "{t},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                cluster.regions[i].region,
                rss_kib(pids[i]),
                dir_bytes(&data[i]),
                dir_bytes(&data[i].join(wallet::archive::ARCHIVE_DIR_NAME)),
                m("walletd_transactions_accepted_total"),
                m("walletd_events_in_memory"),
                m("walletd_idempotency_keys"),
                m("walletd_idempotency_keys_core"),
                answers.created.load(Ordering::Relaxed),
                answers.refused.load(Ordering::Relaxed),
                answers.other.load(Ordering::Relaxed),
                load1()
            );
            print!("{row}");
            csv.push_str(&row);
        }
        std::fs::write(&args.csv, &csv).map_err(|e| format!("{}: {e}", args.csv.display()))?;
        if next >= end {
            break;
        }
        next += Duration::from_secs(args.sample);
        tokio::time::sleep_until(tokio::time::Instant::from_std(next.min(end))).await;
        if next > end {
            next = end;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = answers.created.load(Ordering::Relaxed);
    println!(
        "answers: {ok} created ({:.0}/s), {} refused (422), {} other; CSV in {}",
        ok as f64 / secs,
        answers.refused.load(Ordering::Relaxed),
        answers.other.load(Ordering::Relaxed),
        args.csv.display()
    );
    for i in 0..n {
        cluster.stop(i).await;
        let log = std::fs::read_to_string(&cluster.regions[i].log).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("log rewritten")) {
            println!(
                "{}: {}",
                cluster.regions[i].region,
                l.split("log rewritten").nth(1).unwrap_or_default().trim()
            );
        }
    }
    Ok(())
}

/// Key retention of the `--restart-at` region (ms): shorter than the fill to 1M, so both
/// restarts load the keys of the same last seconds (about rate × retention), not every key.
pub const RESTART_RETENTION_MS: u64 = 10_000;

/// Submits `count` keyed purchases (keys `f{first}`, `f{first + 1}`...; after funding
/// `accounts` on the first call) through an in-process node, `window` in flight; returns how
/// many were accepted.
async fn fill(
    config: &Path,
    accounts: usize,
    fund: bool,
    first: u64,
    count: u64,
) -> Result<u64, String> {
    let cfg = wallet::config::NodeConfig::load(config).map_err(|e| e.to_string())?;
    let started = wallet::node::start(&cfg).map_err(|e| e.to_string())?;
    let commands = started.actor.commands.clone();
    let window = 1024;
    let mut inflight = VecDeque::with_capacity(window);
    let mut accepted = 0u64;
    let req = |account: usize, kind: Kind, amount: &str, key: String| {
        Ok::<_, String>(TxRequest {
            account: AccountId::new(&format!("acct{account}")).map_err(|e| e.to_string())?,
            kind,
            amount: Amount::parse(amount, Currency::USD).map_err(|e| e.to_string())?,
            currency: Currency::USD,
            idempotency_key: Some(key),
            reference: None,
        })
    };
    let funding = if fund { accounts as u64 } else { 0 };
    for i in 0..funding + count {
        let r = if i < funding {
            req(
                i as usize,
                Kind::Deposit,
                "1000000000.00",
                format!("fund{i}"),
            )?
        } else {
            req(
                (i as usize).wrapping_mul(7919) % accounts,
                Kind::Purchase,
                "0.01",
                format!("f{}", first + i),
            )?
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cmd = Command::Submit(SubmitCmd {
            req: r,
            fingerprint: [0; 32],
            reply: tx,
        });
        commands.send(cmd).await.map_err(|_| "the actor stopped")?;
        inflight.push_back(rx);
        if inflight.len() >= window {
            if let Some(rx) = inflight.pop_front() {
                accepted += u64::from(rx.await.is_ok_and(|r| r.status == 201));
            }
        }
    }
    for rx in inflight {
        accepted += u64::from(rx.await.is_ok_and(|r| r.status == 201));
    }
    drop(commands);
    started.actor.shutdown().await;
    drop(started.net);
    let _ = started.writer.join();
    Ok(accepted)
}

/// `--restart-at` (module docs).
pub fn restart(args: &Args, at: &[u64]) -> Result<(), String> {
    let dir = PathBuf::from("/tmp/walletd-restart");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut cluster = soak_cluster(&args.walletd, 1, &dir, RESTART_RETENTION_MS, None)?;
    let config = cluster.regions[0].config.clone();
    let data = cluster.data_dir(0).map_err(|e| e.to_string())?;
    let accounts = args.accounts.last().copied().unwrap_or(10_000).max(1);
    let token = cluster.token.clone();
    println!(
        "walletd-bench --restart-at: 1 region, {accounts} accounts, keyed purchases, compact_every_events = {SOAK_COMPACT_EVERY}, idempotency_retention_ms = {RESTART_RETENTION_MS}, data in {}",
        dir.display()
    );
    println!(
        "{:>12} {:>10} {:>14} {:>12} {:>12} {:>12}",
        "accepted", "fill s", "data bytes", "restart ms", "RSS KiB", "keys (core)"
    );
    let mut total = 0u64;
    let mut reads = Vec::new();
    let mut opens = Vec::new();
    for &target in at {
        let t = Instant::now();
        // A runtime per fill: dropping it closes the in-process node's sockets.
        let fill_rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        total += fill_rt.block_on(fill(
            &config,
            accounts,
            total == 0,
            total,
            target.saturating_sub(total),
        ))?;
        drop(fill_rt);
        let fill_s = t.elapsed().as_secs_f64();
        let bytes = dir_bytes(&data);
        opens.push((total, archive_open(&data)?));
        let a = addr(&cluster, 0);
        let t = Instant::now();
        cluster.spawn(0).map_err(|e| e.to_string())?;
        let ms = rt.block_on(async {
            loop {
                if let Ok(mut c) = Conn::open(&a).await {
                    if let Ok(200) = c.request(&get(&a, &token, "/v1/status")).await {
                        return Ok(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                if t.elapsed() > Duration::from_secs(600) {
                    return Err("not ready after 600 s".to_string());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })?;
        let rss = cluster.regions[0].pid().map_or(0, rss_kib);
        let keys = rt.block_on(async {
            let mut c = Conn::open(&a).await.ok()?;
            match c.request(&get(&a, &token, "/metrics")).await {
                Ok(200) => Some(sample_sum(
                    &String::from_utf8_lossy(c.body()),
                    "walletd_idempotency_keys_core",
                ) as u64),
                _ => None,
            }
        });
        let keys = keys.map_or("?".to_string(), |k| k.to_string());
        println!("{total:>12} {fill_s:>10.1} {bytes:>14} {ms:>12.1} {rss:>12} {keys:>12}");
        reads.push((
            total,
            rt.block_on(archive_reads(&a, &token, accounts, total))?,
        ));
        rt.block_on(cluster.stop(0));
    }
    println!("archive (reopened in this process, before each restart):");
    println!(
        "{:>12} {:>14} {:>9} {:>10}",
        "accepted", "archive bytes", "segments", "open ms"
    );
    for (n, (bytes, segments, ms)) in &opens {
        println!("{n:>12} {bytes:>14} {segments:>9} {ms:>10.1}");
    }
    println!(
        "reads below the archive mark after each restart, {ARCHIVE_READS} sequential GETs each (ms):"
    );
    println!(
        "{:>12} {:<44} {:>8} {:>8} {:>8}",
        "accepted", "read", "p50", "p99", "max"
    );
    for (n, rows) in &reads {
        for (what, lat) in rows {
            println!(
                "{n:>12} {what:<44} {:>8.2} {:>8.2} {:>8.2}",
                pct_ms(lat, 50),
                pct_ms(lat, 99),
                pct_ms(lat, 100)
            );
        }
    }
    Ok(())
}

/// Sequential GETs per read figure.
const ARCHIVE_READS: usize = 300;

/// The `p`-th percentile of sorted latencies (µs) in ms.
fn pct_ms(sorted: &[u32], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(0.0, |v| f64::from(*v) / 1000.0)
}

/// Opens the data dir's archive as walletd does at start (retention off): its bytes,
/// segments and the time the open took.
fn archive_open(data: &Path) -> Result<(u64, usize, f64), String> {
    let t = Instant::now();
    let a = wallet::archive::Archive::open(
        data,
        wallet::archive::SEGMENT_BYTES_DEFAULT,
        None,
        wallet::clock::now_ms(),
    )
    .map_err(|e| e.to_string())?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    Ok((a.bytes(), a.segments(), ms))
}

/// One timed GET answered 200: its latency (µs) and body.
async fn timed(
    c: &mut Conn,
    addr: &str,
    token: &str,
    path: &str,
) -> Result<(u32, serde_json::Value), String> {
    let t = Instant::now();
    let s = c
        .request(&get(addr, token, path))
        .await
        .map_err(|e| e.to_string())?;
    let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
    if s != 200 {
        return Err(format!("GET {path}: {s}"));
    }
    let body = serde_json::from_slice(c.body()).map_err(|e| e.to_string())?;
    Ok((us, body))
}

/// Reads of compacted history from a restarted region: an account's first page (its oldest
/// entries, in the archive), a page at a cursor in its middle, and single transactions by id
/// from the first tenth of the fill; latencies sorted (µs), per kind.
async fn archive_reads(
    addr: &str,
    token: &str,
    accounts: usize,
    total: u64,
) -> Result<Vec<(String, Vec<u32>)>, String> {
    let mut c = Conn::open(addr).await.map_err(|e| e.to_string())?;
    let mut first = Vec::with_capacity(ARCHIVE_READS);
    let mut middle = Vec::with_capacity(ARCHIVE_READS);
    let mut by_id = Vec::with_capacity(ARCHIVE_READS);
    for i in 0..ARCHIVE_READS {
        let account = format!("acct{}", (i * 37) % accounts);
        let path = format!("/v1/accounts/{account}/transactions?limit=50");
        let (us, body) = timed(&mut c, addr, token, &path).await?;
        first.push(us);
        // Four pages on: a cursor in the archive.
        let mut next = body["next"].as_str().map(str::to_string);
        for _ in 0..4 {
            let Some(cursor) = next.take() else { break };
            let path = format!("/v1/accounts/{account}/transactions?limit=50&after={cursor}");
            let (_, body) = timed(&mut c, addr, token, &path).await?;
            next = body["next"].as_str().map(str::to_string);
        }
        if let Some(cursor) = next {
            let path = format!("/v1/accounts/{account}/transactions?limit=50&after={cursor}");
            middle.push(timed(&mut c, addr, token, &path).await?.0);
        }
        let seq = 1 + (i as u64 * 7_919) % (total / 10).max(1);
        let path = format!("/v1/transactions/eu:{seq}");
        by_id.push(timed(&mut c, addr, token, &path).await?.0);
    }
    let mut out = vec![
        (
            "account page 1 (limit 50, oldest entries)".to_string(),
            first,
        ),
        ("account page 6 (cursor in the archive)".to_string(), middle),
        ("GET /v1/transactions/{id} (first 10 %)".to_string(), by_id),
    ];
    for (_, v) in &mut out {
        v.sort_unstable();
    }
    Ok(out)
}
