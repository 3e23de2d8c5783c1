//! Catch-up benchmark: how long an isolated region takes to catch up after a heal, and how
//! many bytes it is sent, next to the raw size of what it missed and of the whole history.
//!
//! ```text
//! cargo run --release --bin walletd-catchup-bench -- [--history N] [--events N] [--clients N] [--keep DIR]
//! ```
//!
//! Starts eu, us, ap as real processes on 127.0.0.1 (this executable in node mode, so no other
//! binary needs to be built), writes `--history` deposits with everyone connected, isolates us,
//! writes `--events` deposits at eu and ap over HTTP with `--clients` concurrent clients, heals,
//! and polls us's `/v1/status` until its version vector equals the others'. The bytes are the
//! delta of us's `walletd_replication_bytes_total{direction="received"}` between the heal and
//! the catch-up (heartbeats included). The raw sizes are sums of
//! `wallet_core::wire::encode_event` over eu's stored events, read after the cluster stopped.
//! This is a benchmark that prints figures; it asserts only that the run itself worked.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wallet::cluster::{metric, wait_until, ClusterError, ClusterOptions, LocalCluster};

/// Why a benchmark run failed.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    /// Driving the cluster failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The run itself went wrong.
    #[error("{0}")]
    Failed(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

/// Hidden first argument: run one region (`__node --config FILE`).
const NODE_ARG: &str = "__node";
/// Default events written while us is isolated.
const EVENTS_DEFAULT: u64 = 100_000;
/// Default events written before the partition.
const HISTORY_DEFAULT: u64 = 50_000;
/// Default concurrent HTTP clients.
const CLIENTS_DEFAULT: u64 = 64;
/// Most concurrent clients.
const CLIENTS_MAX: u64 = 1_024;
/// Accounts the deposits are spread over.
const ACCOUNTS: u64 = 1_000;
/// Longest wait for the catch-up.
const CATCHUP_TIMEOUT_MS: u64 = 600_000;
/// Longest wait for eu and ap to hold each other's events.
const SYNC_TIMEOUT_MS: u64 = 300_000;
/// Status poll period during the catch-up.
const CATCHUP_POLL_MS: u64 = 10;
/// Attempts per request before the benchmark gives up.
const ATTEMPTS_MAX: u32 = 5;

struct Args {
    events: u64,
    history: u64,
    clients: u64,
    keep: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        events: EVENTS_DEFAULT,
        history: HISTORY_DEFAULT,
        clients: CLIENTS_DEFAULT,
        keep: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let num = |s: String| {
            s.parse::<u64>()
                .map_err(|_| format!("{flag}: {s:?} is not a number"))
        };
        match flag.as_str() {
            "--events" => a.events = num(value()?)?,
            "--history" => a.history = num(value()?)?,
            "--clients" => a.clients = num(value()?)?,
            "--keep" => a.keep = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                return Err(
                    "usage: walletd-catchup-bench [--history N] [--events N] [--clients N] [--keep DIR]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.events == 0 || a.clients == 0 || a.clients > CLIENTS_MAX {
        return Err(format!(
            "--events must be positive and --clients 1..={CLIENTS_MAX}"
        ));
    }
    Ok(a)
}

/// Node mode: exactly what `walletd run --config FILE` does.
fn node(args: &[String]) -> ExitCode {
    let [flag, path] = args else {
        eprintln!("usage: {NODE_ARG} --config FILE");
        return ExitCode::from(2);
    };
    if flag != "--config" {
        eprintln!("usage: {NODE_ARG} --config FILE");
        return ExitCode::from(2);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cfg = match wallet::config::NodeConfig::load(std::path::Path::new(path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    wallet::node::run_blocking(cfg)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some(NODE_ARG) {
        return node(argv.get(1..).unwrap_or_default());
    }
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        tokio::select! {
            r = bench(&args) => r,
            _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walletd-catchup-bench: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn err(what: impl Into<String>) -> BenchError {
    BenchError::Failed(what.into())
}

/// Writes `total` deposits spread over `targets` with `clients` concurrent clients.
async fn write_load(
    c: &LocalCluster,
    targets: &[usize],
    total: u64,
    clients: u64,
    tag: &str,
) -> Result<Duration, BenchError> {
    let next = Arc::new(AtomicU64::new(0));
    let urls: Vec<String> = targets
        .iter()
        .filter_map(|i| c.regions.get(*i).map(|r| r.http.clone()))
        .collect();
    if urls.is_empty() {
        return Err(err("no target region"));
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS_MAX as usize)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let next = next.clone();
        let urls = urls.clone();
        let http = http.clone();
        let token = c.token.clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<(), String>(());
                }
                let url = &urls[((n + k) % urls.len() as u64) as usize];
                let account = format!("{tag}-{}", n % ACCOUNTS);
                let body = json!({"type": "deposit", "amount": "1.00", "currency": "USD"});
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let r = http
                        .post(format!("{url}/v1/accounts/{account}/transactions"))
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .header("Idempotency-Key", format!("{tag}-{n}"))
                        .body(body.to_string())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 201 => break,
                        Ok(r) if attempt >= ATTEMPTS_MAX => {
                            return Err(format!("deposit {n}: HTTP {}", r.status()))
                        }
                        Err(e) if attempt >= ATTEMPTS_MAX => {
                            return Err(format!("deposit {n}: {e}"))
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        }));
    }
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(err(e)),
            Err(e) => return Err(err(e.to_string())),
        }
    }
    Ok(start.elapsed())
}

fn vv_of(status: &Value) -> BTreeMap<String, u64> {
    status["version_vector"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// An HLC string `"<ms>.<logical>"` as a comparable pair; (0, 0) if absent.
fn hlc(v: &Value) -> (u64, u64) {
    v.as_str()
        .and_then(|s| s.split_once('.'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .unwrap_or((0, 0))
}

fn rate(n: u64, d: Duration) -> u64 {
    let ms = d.as_millis().max(1) as u64;
    n.saturating_mul(1_000) / ms
}

fn ratio_x100(a: u64, b: u64) -> String {
    if b == 0 {
        return "-".into();
    }
    let r = a.saturating_mul(100) / b;
    format!("{}.{:02}", r / 100, r % 100)
}

async fn bench(args: &Args) -> Result<(), BenchError> {
    let exe = std::env::current_exe().map_err(|e| err(e.to_string()))?;
    let mut opts = ClusterOptions::new(exe, &["eu", "us", "ap"])?;
    opts.run_args = vec![NODE_ARG.into(), "--config".into()];
    opts.dir = args.keep.clone();
    // Plain HTTP and no per-token rate limit: the benchmark measures replication.
    opts.tls = false;
    opts.rate_per_second = Some(0);
    let mut c = LocalCluster::init(opts)?;
    let (eu, us, ap) = (0usize, 1usize, 2usize);
    c.start_all().await?;
    wallet::cluster::wait_all_members_up(&c, 60_000).await?;
    println!(
        "walletd-catchup-bench: eu, us, ap on 127.0.0.1; {} clients; history {} events, then {} events while us is isolated",
        args.clients, args.history, args.events
    );

    if args.history > 0 {
        let d = write_load(&c, &[eu, us, ap], args.history, args.clients, "h").await?;
        println!(
            "  history      {:>8} deposits at eu, us, ap in {:>6} ms ({} events/s)",
            args.history,
            d.as_millis(),
            rate(args.history, d)
        );
    }
    // Everyone holds the history before the partition.
    let cr = &c;
    wait_until(
        "the history to reach every region",
        SYNC_TIMEOUT_MS,
        || async move {
            let a = vv_of(&cr.status(eu).await?);
            Ok(a == vv_of(&cr.status(us).await?) && a == vv_of(&cr.status(ap).await?))
        },
    )
    .await?;

    c.isolate("us").await?;
    let us_before = vv_of(&c.status(us).await?);
    let d = write_load(&c, &[eu, ap], args.events, args.clients, "p").await?;
    println!(
        "  partitioned  {:>8} deposits at eu and ap in {:>6} ms ({} events/s)",
        args.events,
        d.as_millis(),
        rate(args.events, d)
    );
    let cr = &c;
    let synced = wait_until(
        "eu and ap to hold each other's events",
        SYNC_TIMEOUT_MS,
        || async move { Ok(vv_of(&cr.status(eu).await?) == vv_of(&cr.status(ap).await?)) },
    )
    .await?;
    let target = vv_of(&c.status(eu).await?);
    let us_now = vv_of(&c.status(us).await?);
    if us_now != us_before {
        return Err(err(format!(
            "us received events while isolated: {us_before:?} -> {us_now:?}"
        )));
    }
    let _ = synced;
    let m_us = c.metrics(us).await?;
    let m_eu = c.metrics(eu).await?;
    let m_ap = c.metrics(ap).await?;
    let recv = "walletd_replication_bytes_total{direction=\"received\"}";
    let sent = "walletd_replication_bytes_total{direction=\"sent\"}";
    let recv_msgs = "walletd_replication_messages_total{direction=\"received\"}";
    let dups = "walletd_events_duplicate_total";
    let applied = "walletd_events_remote_applied_total";
    let us_recv0 = metric(&m_us, recv).unwrap_or(0);
    let us_msgs0 = metric(&m_us, recv_msgs).unwrap_or(0);
    let us_dups0 = metric(&m_us, dups).unwrap_or(0);
    let us_applied0 = metric(&m_us, applied).unwrap_or(0);
    let others_sent0 = metric(&m_eu, sent).unwrap_or(0) + metric(&m_ap, sent).unwrap_or(0);

    let heal_clock = hlc(&c.status(eu).await?["clock"]);
    c.heal().await?;
    let healed = Instant::now();
    let deadline = healed + Duration::from_millis(CATCHUP_TIMEOUT_MS);
    let catchup = loop {
        let s = c.status(us).await?;
        if vv_of(&s) == target {
            break healed.elapsed();
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout {
                what: "us to catch up".into(),
                ms: CATCHUP_TIMEOUT_MS,
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(CATCHUP_POLL_MS)).await;
    };
    let m_us = c.metrics(us).await?;
    let m_eu = c.metrics(eu).await?;
    let m_ap = c.metrics(ap).await?;
    let us_recv = metric(&m_us, recv).unwrap_or(0).saturating_sub(us_recv0);
    let us_msgs = metric(&m_us, recv_msgs)
        .unwrap_or(0)
        .saturating_sub(us_msgs0);
    let us_dups = metric(&m_us, dups).unwrap_or(0).saturating_sub(us_dups0);
    let us_applied = metric(&m_us, applied)
        .unwrap_or(0)
        .saturating_sub(us_applied0);
    let others_sent = (metric(&m_eu, sent).unwrap_or(0) + metric(&m_ap, sent).unwrap_or(0))
        .saturating_sub(others_sent0);
    // Settlement: us's watermark passes eu's clock at the heal (every partition write).
    let cr = &c;
    let settled = wait_until(
        "us to settle everything",
        CATCHUP_TIMEOUT_MS,
        || async move { Ok(hlc(&cr.status(us).await?["watermark"]) >= heal_clock) },
    )
    .await;
    let settle_ms = healed.elapsed().as_millis();

    // Raw sizes from eu's storage, read once every region has stopped.
    for i in 0..3 {
        c.stop(i).await;
    }
    let data = c.data_dir(eu)?;
    let backend = wallet::storage::Backend::in_dir(&data);
    let (_store, loaded) =
        wallet::storage::Storage::open(&data, backend).map_err(|e| err(e.to_string()))?;
    let mut whole = 0u64;
    let mut whole_n = 0u64;
    let mut missed = 0u64;
    let mut missed_n = 0u64;
    for e in &loaded.events {
        let n = wallet_core::wire::encode_event(e).len() as u64;
        whole += n;
        whole_n += 1;
        let held = us_before.get(e.id.origin.as_str()).copied().unwrap_or(0);
        if e.id.seq > held {
            missed += n;
            missed_n += 1;
        }
    }
    println!(
        "  catch-up     us version vector equal to eu's and ap's {:>6} ms after the heal",
        catchup.as_millis()
    );
    if settled.is_ok() {
        println!(
            "  settled      us watermark past every partition write        {settle_ms:>6} ms after the heal"
        );
    }
    println!(
        "  sent to us   {us_recv:>11} B in {us_msgs} messages (received by us, heal to catch-up, heartbeats included)"
    );
    println!("  sent by eu+ap {others_sent:>10} B (to us and to each other, same interval)");
    println!("  merged by us {us_applied:>11} events applied, {us_dups} duplicates dropped");
    println!(
        "  missed raw   {missed:>11} B = {missed_n} events x {} B average encode_event",
        missed / missed_n.max(1)
    );
    println!("  history raw  {whole:>11} B = {whole_n} events (whole history)");
    println!(
        "  ratio        sent to us / missed raw = {}; sent to us / history raw = {}",
        ratio_x100(us_recv, missed),
        ratio_x100(us_recv, whole)
    );
    if missed_n != args.events {
        return Err(err(format!(
            "expected {} missed events, eu's storage shows {missed_n}",
            args.events
        )));
    }
    Ok(())
}
