//! `walletd demo`: three real regions on 127.0.0.1, a partition, a double spend, the heal and
//! the settlement, in one command.
//!
//! ```text
//!   init (temp dir) ─> spawn `walletd run` ×3 ─> deposit 100 at eu ─> isolate us
//!     ─> purchase 100 at eu and at us (both 201) ─> heal ─> poll until every region holds
//!        the same history, balances and compensation feed ─> table ─> exit 0 / 1
//! ```
//!
//! The regions are separate processes (the current executable with `run --config`), talking
//! libp2p to each other exactly as in production; the demo only uses their HTTP API. The
//! policy is a file the user may edit (`--policy`, default `examples/demo-policy.toml`).
//!
//! The cluster is a [`LocalCluster`] (crate::cluster), the harness the benchmarks and the
//! tests use too: its children are killed when it is dropped, so an error, a panic or Ctrl-C
//! never leaves a region behind.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::Value;
use wallet_core::Policy;

use crate::cluster::{
    all_members_up, expect, metric, no_peer_connected, wait_until, ClusterError, ClusterOptions,
    LocalCluster,
};

/// Where the demo looks for its policy, relative to the current directory and to the crate.
pub const DEMO_POLICY_PATH: &str = "examples/demo-policy.toml";
/// The demo policy compiled in, used when no file is found.
pub const DEMO_POLICY_EMBEDDED: &str = include_str!("../examples/demo-policy.toml");
/// The demo's regions; the second one is cut off.
pub const DEMO_REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// The demo account.
pub const DEMO_ACCOUNT: &str = "alice";
/// The demo amount (deposited once, spent twice).
pub const DEMO_AMOUNT: &str = "100.00";
/// Longest wait for replication while connected (deposit, connections).
pub const REPLICATION_TIMEOUT_MS: u64 = 30_000;
/// Longest wait for settlement after the heal.
pub const SETTLEMENT_TIMEOUT_MS: u64 = 60_000;

/// What can go wrong in the demo.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The policy file is missing or invalid.
    #[error("policy {path}: {reason}")]
    Policy {
        /// File (or "embedded").
        path: String,
        /// Why.
        reason: String,
    },
    /// Driving the cluster failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The current executable cannot be found (the regions run it).
    #[error("current executable: {0}")]
    Exe(String),
    /// The regions did not agree.
    #[error("regions disagree: {0}")]
    Disagree(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

/// `println!` that ignores a closed stdout (`walletd demo | head` must not panic).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Options of `walletd demo`.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Policy file; default [`DEMO_POLICY_PATH`] (or the embedded copy).
    pub policy: Option<PathBuf>,
    /// Keep the cluster directory here (must not hold a cluster yet) instead of a temp dir.
    pub keep: Option<PathBuf>,
}

/// Finds and validates the demo policy: returns (where it came from, text).
pub fn load_policy(arg: Option<&Path>) -> Result<(String, String), DemoError> {
    let read = |p: &Path| -> Result<(String, String), DemoError> {
        let text = std::fs::read_to_string(p).map_err(|e| DemoError::Policy {
            path: p.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok((p.display().to_string(), text))
    };
    let (source, text) = match arg {
        Some(p) => read(p)?,
        None => {
            let candidates = [
                PathBuf::from(DEMO_POLICY_PATH),
                Path::new(env!("CARGO_MANIFEST_DIR")).join(DEMO_POLICY_PATH),
            ];
            match candidates.iter().find(|p| p.is_file()) {
                Some(p) => read(p)?,
                None => (
                    "embedded copy of examples/demo-policy.toml".to_string(),
                    DEMO_POLICY_EMBEDDED.to_string(),
                ),
            }
        }
    };
    Policy::from_toml(&text).map_err(|e| DemoError::Policy {
        path: source.clone(),
        reason: e.to_string(),
    })?;
    Ok((source, text))
}

/// One region's view after settlement.
#[derive(Debug, Clone)]
struct View {
    provisional: String,
    settled: String,
    history: Vec<Value>,
    feed: Vec<Value>,
    vv: Value,
    events: u64,
}

async fn view(c: &LocalCluster, i: usize) -> Result<View, ClusterError> {
    let b = c
        .get_ok(i, &format!("/v1/accounts/{DEMO_ACCOUNT}/balances"))
        .await?;
    let usd = b["balances"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["currency"] == "USD").cloned())
        .unwrap_or(Value::Null);
    let s = c.status(i).await?;
    Ok(View {
        provisional: usd["provisional"].as_str().unwrap_or("-").to_string(),
        settled: usd["settled"].as_str().unwrap_or("-").to_string(),
        history: c.history(i, DEMO_ACCOUNT).await?,
        feed: c.feed(i).await?,
        vv: s["version_vector"].clone(),
        events: s["events"].as_u64().unwrap_or(0),
    })
}

/// Why the views disagree, or `None` when every region holds the same settled state.
fn disagreement(views: &[View], names: &[String], ids: &[String]) -> Option<String> {
    let first = views.first()?;
    for (v, n) in views.iter().zip(names) {
        for id in ids {
            if !v.history.iter().any(|e| e["id"] == id.as_str()) {
                return Some(format!("{n} does not hold {id} yet"));
            }
        }
        if let Some(e) = v.history.iter().find(|e| e["settled"] != true) {
            return Some(format!("{n}: {} is not settled yet", e["id"]));
        }
        if v.history != first.history {
            return Some(format!("{n}'s history differs from {}'s", names[0]));
        }
        if v.feed != first.feed {
            return Some(format!(
                "{n}'s compensation feed differs from {}'s",
                names[0]
            ));
        }
        if (&v.provisional, &v.settled) != (&first.provisional, &first.settled) {
            return Some(format!(
                "{n} has {}/{} where {} has {}/{}",
                v.provisional, v.settled, names[0], first.provisional, first.settled
            ));
        }
        if v.vv != first.vv {
            return Some(format!("{n}'s version vector {} differs", v.vv));
        }
    }
    None
}

fn comp_summary(feed: &[Value]) -> String {
    if feed.is_empty() {
        return "none".into();
    }
    feed.iter()
        .map(|c| {
            format!(
                "{} {}",
                c["id"].as_str().unwrap_or("?"),
                c["amount"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn step(label: &str, text: &str, ms: Option<u128>) {
    match ms {
        Some(ms) => out!("  {label:<12} {text:<62} {ms:>6} ms"),
        None => out!("  {label:<12} {text}"),
    }
}

/// The demo itself; prints as it goes and returns the final verdict.
pub async fn run(opts: &DemoOptions) -> Result<(), DemoError> {
    let (source, policy) = load_policy(opts.policy.as_deref())?;
    let exe = std::env::current_exe().map_err(|e| DemoError::Exe(e.to_string()))?;
    let mut copts = ClusterOptions::new(exe, &DEMO_REGIONS)?;
    copts.dir = opts.keep.clone();
    copts.policy = Some(policy);
    let mut c = LocalCluster::init(copts)?;
    let names: Vec<String> = c.regions.iter().map(|r| r.region.clone()).collect();
    let (eu, us) = (0usize, 1usize);
    out!(
        "walletd demo: regions {} on 127.0.0.1, policy {source}",
        names.join(", ")
    );
    if opts.keep.is_some() {
        out!("  cluster dir  {} (logs: <region>.log)", c.dir.display());
    }

    // 1. Start and wait until every region sees every other one.
    let t = Instant::now();
    c.start_all().await?;
    let cr = &c;
    let n = names.len();
    wait_until(
        "every region to connect to every other",
        REPLICATION_TIMEOUT_MS,
        || async move {
            for i in 0..n {
                if !all_members_up(&cr.status(i).await?) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    step(
        "start",
        &format!("{n} processes ready, every member connected"),
        Some(t.elapsed().as_millis()),
    );

    // 2. Deposit and wait until every region holds it, settled.
    let t = Instant::now();
    let a = c
        .tx(
            eu,
            DEMO_ACCOUNT,
            "deposit",
            DEMO_AMOUNT,
            "USD",
            Some("demo-deposit"),
        )
        .await?;
    let dep = expect(a, 201, || "deposit at eu".into())?;
    let dep_id = dep["id"].as_str().unwrap_or("?").to_string();
    let cr = &c;
    wait_until(
        "every region to see the deposit",
        REPLICATION_TIMEOUT_MS,
        || async move {
            for i in 0..n {
                let b = cr
                    .get_ok(i, &format!("/v1/accounts/{DEMO_ACCOUNT}/balances"))
                    .await?;
                let ok = b["balances"].as_array().is_some_and(|l| {
                    l.iter().any(|x| {
                        x["currency"] == "USD"
                            && x["provisional"] == DEMO_AMOUNT
                            && x["settled"] == DEMO_AMOUNT
                    })
                });
                if !ok {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    step(
        "deposit",
        &format!("{DEMO_ACCOUNT} +{DEMO_AMOUNT} USD at eu ({dep_id}), settled in every region"),
        Some(t.elapsed().as_millis()),
    );

    // 3. Partition: us is cut off from everyone.
    c.isolate(&names[us]).await?;
    let cr = &c;
    let others: Vec<usize> = (0..n).filter(|i| *i != us).collect();
    let us_name = names[us].clone();
    wait_until("us to be cut off", REPLICATION_TIMEOUT_MS, || {
        let others = others.clone();
        let us_name = us_name.clone();
        async move {
            if !no_peer_connected(&cr.status(us).await?) {
                return Ok(false);
            }
            for i in others {
                let s = cr.status(i).await?;
                let cut = s["members"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .any(|m| m["region"] == us_name.as_str() && m["connected"] == false)
                });
                if !cut {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await?;
    step(
        "partition",
        "us cut off from eu and ap (POST /v1/admin/faults)",
        None,
    );

    // 4. The double spend.
    let a = c
        .tx(
            eu,
            DEMO_ACCOUNT,
            "purchase",
            DEMO_AMOUNT,
            "USD",
            Some("demo-eu"),
        )
        .await?;
    let pe = expect(a, 201, || "purchase at eu during the partition".into())?;
    let a = c
        .tx(
            us,
            DEMO_ACCOUNT,
            "purchase",
            DEMO_AMOUNT,
            "USD",
            Some("demo-us"),
        )
        .await?;
    let pu = expect(a, 201, || "purchase at us during the partition".into())?;
    let ids = vec![
        dep_id,
        pe["id"].as_str().unwrap_or("?").to_string(),
        pu["id"].as_str().unwrap_or("?").to_string(),
    ];
    step(
        "double spend",
        &format!(
            "purchase {DEMO_AMOUNT} USD at eu -> 201 {}, at us -> 201 {}",
            ids[1], ids[2]
        ),
        None,
    );

    // 5. Heal and wait for every region to settle the same state.
    c.heal().await?;
    let healed = Instant::now();
    let cr = &c;
    let names_r = &names;
    let ids_r = &ids;
    let settle = wait_until(
        "every region to settle the same history, balances and feed",
        SETTLEMENT_TIMEOUT_MS,
        || async move {
            let mut views = Vec::new();
            for i in 0..n {
                views.push(view(cr, i).await?);
            }
            Ok(disagreement(&views, names_r, ids_r).is_none())
        },
    )
    .await;
    let settle_ms = healed.elapsed().as_millis();
    let mut views = Vec::new();
    for i in 0..n {
        views.push(view(&c, i).await?);
    }
    if let Err(e) = settle {
        let why = disagreement(&views, &names, &ids).unwrap_or_else(|| e.to_string());
        return Err(DemoError::Disagree(format!("{e}: {why}")));
    }
    step(
        "heal",
        "settled; same history, balances and feed everywhere",
        Some(settle_ms),
    );

    // 6. The table.
    out!();
    out!(
        "  {:<6} {:>11} {:>9}  {:<22} {:>6} {:>7} {:>10} {:>10}",
        "region",
        "provisional",
        "settled",
        "compensation",
        "events",
        "applied",
        "sent B",
        "recv B"
    );
    for (i, v) in views.iter().enumerate() {
        let m = c.metrics(i).await?;
        let get = |k: &str| metric(&m, k).map(|x| x.to_string()).unwrap_or("-".into());
        out!(
            "  {:<6} {:>11} {:>9}  {:<22} {:>6} {:>7} {:>10} {:>10}",
            names[i],
            v.provisional,
            v.settled,
            comp_summary(&v.feed),
            v.events,
            get("walletd_events_remote_applied_total"),
            get("walletd_replication_bytes_total{direction=\"sent\"}"),
            get("walletd_replication_bytes_total{direction=\"received\"}"),
        );
    }
    out!("  (events: held; applied: merged from peers; bytes: p2p messages incl. heartbeats)");
    // Final check on the very values printed.
    if let Some(why) = disagreement(&views, &names, &ids) {
        return Err(DemoError::Disagree(why));
    }
    let first = &views[0];
    let mut verdict = String::new();
    let _ = write!(
        verdict,
        "OK: all {n} regions agree: {DEMO_ACCOUNT} settled {} USD, compensations: {}, settled {settle_ms} ms after the heal",
        first.settled,
        comp_summary(&first.feed)
    );
    out!("\n{verdict}");
    c.kill_all();
    Ok(())
}

/// `walletd demo`: runs [`run`] on its own runtime, stops on Ctrl-C; exit 0 only if every
/// region agrees.
pub fn main(opts: DemoOptions) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walletd demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The cluster lives inside `run`'s future: dropping the future (Ctrl-C) kills it.
    let res = rt.block_on(async {
        tokio::select! {
            r = run(&opts) => r,
            _ = tokio::signal::ctrl_c() => Err(DemoError::Interrupted),
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(DemoError::Interrupted) => {
            eprintln!("walletd demo: interrupted; every region stopped");
            ExitCode::from(130)
        }
        Err(e @ DemoError::Policy { .. }) => {
            eprintln!("walletd demo: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("walletd demo: FAILED: {e}");
            if let Some(k) = &opts.keep {
                eprintln!("walletd demo: logs and data kept in {}", k.display());
            } else {
                eprintln!("walletd demo: rerun with --keep DIR to keep the logs");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embedded_policy_parses() {
        assert!(Policy::from_toml(DEMO_POLICY_EMBEDDED).is_ok());
    }

    #[test]
    fn a_missing_policy_file_is_an_error_and_a_bad_one_too() {
        let r = load_policy(Some(Path::new("/nonexistent/policy.toml")));
        assert!(matches!(r, Err(DemoError::Policy { .. })), "{r:?}");
        let dir = std::env::temp_dir().join(format!("walletd-demo-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("bad.toml");
        let _ = std::fs::write(&p, "[default]\naction = \"maybe\"\n");
        let r = load_policy(Some(&p));
        assert!(matches!(r, Err(DemoError::Policy { .. })), "{r:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn disagreement_names_the_difference() {
        let v = View {
            provisional: "1.00".into(),
            settled: "1.00".into(),
            history: vec![json!({"id": "eu:1", "settled": true})],
            feed: vec![],
            vv: json!({"eu": 1}),
            events: 1,
        };
        let mut w = v.clone();
        let names = vec!["eu".to_string(), "us".to_string()];
        let ids = vec!["eu:1".to_string()];
        assert_eq!(disagreement(&[v.clone(), w.clone()], &names, &ids), None);
        w.settled = "0.00".into();
        assert!(disagreement(&[v.clone(), w], &names, &ids).is_some());
        let mut u = v.clone();
        u.history = vec![json!({"id": "eu:1", "settled": false})];
        assert!(disagreement(&[v.clone(), u], &names, &ids).is_some());
        let ids2 = vec!["us:1".to_string()];
        assert!(disagreement(&[v.clone(), v], &names, &ids2).is_some());
    }
}
