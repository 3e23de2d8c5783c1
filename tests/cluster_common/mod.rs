//! Helpers for the multi-region tests: a [`LocalCluster`] of real `walletd` processes (the
//! binary under test), bounded waits that panic with the regions' logs, and readers of the
//! status, metrics and raw JSON bodies.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;
pub use wallet::demo::{metric, ClusterOptions, LocalCluster};

pub const BIN: &str = env!("CARGO_BIN_EXE_walletd");
/// Default bound of a wait.
pub const WAIT: Duration = Duration::from_secs(45);

/// `walletd init` for `regions` into a temp dir (removed when the cluster is dropped, which
/// also kills every region).
pub fn cluster(regions: &[&str]) -> LocalCluster {
    let mut o = ClusterOptions::new(BIN.into(), regions).expect("options");
    o.log_filter = "warn".into();
    LocalCluster::init(o).expect("init")
}

/// Polls `f` every 50 ms until it is true; panics with the regions' logs after `timeout`.
pub async fn eventually<F, Fut>(c: &LocalCluster, what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() > deadline {
            let mut logs = String::new();
            for (i, r) in c.regions.iter().enumerate() {
                logs.push_str(&format!("--- {} ---\n{}\n", r.region, c.log_tail(i)));
            }
            panic!("timed out after {timeout:?} waiting for {what}\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn status(c: &LocalCluster, i: usize) -> Value {
    c.status(i).await.expect("status")
}

/// The entry of `region` in a status body's members.
pub fn member(status: &Value, region: &str) -> Value {
    status["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["region"] == region).cloned())
        .unwrap_or(Value::Null)
}

/// A metric sample (0 when absent).
pub async fn metric_of(c: &LocalCluster, i: usize, name: &str) -> u64 {
    metric(&c.metrics(i).await.expect("metrics"), name).unwrap_or(0)
}

/// (provisional, settled) of an account in USD, if it has USD events.
pub async fn balance(c: &LocalCluster, i: usize, account: &str) -> Option<(String, String)> {
    let v = c
        .get_ok(i, &format!("/v1/accounts/{account}/balances"))
        .await
        .expect("balances");
    v["balances"].as_array().and_then(|l| {
        l.iter().find(|b| b["currency"] == "USD").map(|b| {
            (
                b["provisional"].as_str().unwrap_or("").to_string(),
                b["settled"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

/// True when region `i` sees every region of `peers` (names) connected, heard and with the
/// same policy.
pub async fn sees(c: &LocalCluster, i: usize, peers: &[&str]) -> bool {
    let s = status(c, i).await;
    peers.iter().all(|p| {
        let m = member(&s, p);
        m["self"] == true
            || (m["connected"] == true && m["heard"] == true && m["policy_matches"] == true)
    })
}

/// Waits until every region in `idx` sees every other one in `idx`.
pub async fn wait_connected(c: &LocalCluster, idx: &[usize]) {
    let names: Vec<String> = idx.iter().map(|i| c.regions[*i].region.clone()).collect();
    eventually(c, "the regions to connect", WAIT, || {
        let names = names.clone();
        async move {
            let peers: Vec<&str> = names.iter().map(String::as_str).collect();
            for i in idx {
                if !sees(c, *i, &peers).await {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

/// An HLC string `"<ms>.<logical>"` as a comparable pair.
pub fn hlc(v: &Value) -> (u64, u64) {
    let s = v.as_str().unwrap_or_else(|| panic!("not an HLC: {v}"));
    let (a, b) = s.split_once('.').expect("ms.logical");
    (a.parse().expect("ms"), b.parse().expect("logical"))
}

/// The raw bodies a client would compare: each account's transaction list and balances,
/// and the compensation feed.
pub async fn raw_state(c: &LocalCluster, i: usize, accounts: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for a in accounts {
        for p in [
            format!("/v1/accounts/{a}/transactions?limit=1000"),
            format!("/v1/accounts/{a}/balances"),
        ] {
            let (st, body) = c.get_raw(i, &p).await.expect("get");
            assert_eq!(st, 200, "{p}: {body}");
            out.push(body);
        }
    }
    let (st, body) = c
        .get_raw(i, "/v1/compensations?limit=1000")
        .await
        .expect("feed");
    assert_eq!(st, 200, "{body}");
    out.push(body);
    out
}

/// True when every region in `idx` holds the same version vector, every listed event is
/// settled, and the raw bodies are identical.
pub async fn converged(c: &LocalCluster, idx: &[usize], accounts: &[String]) -> bool {
    let mut first: Option<(Value, Vec<String>)> = None;
    for i in idx {
        let vv = status(c, *i).await["version_vector"].clone();
        let raw = raw_state(c, *i, accounts).await;
        for body in raw.iter().take(raw.len().saturating_sub(1)).step_by(2) {
            let v: Value = serde_json::from_str(body).expect("json");
            let all_settled = v["transactions"]
                .as_array()
                .is_some_and(|l| l.iter().all(|t| t["settled"] == true));
            if !all_settled {
                return false;
            }
        }
        match &first {
            None => first = Some((vv, raw)),
            Some((v0, r0)) => {
                if *v0 != vv || *r0 != raw {
                    return false;
                }
            }
        }
    }
    true
}

#[path = "../common/cents.rs"]
mod cents;
pub use cents::cents;
