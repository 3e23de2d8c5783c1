//! Archive backfill over real processes and libp2p (issue 13, `src/backfill.rs`,
//! docs/protocol.md §11.4): three regions compact into their archives under a workload with
//! overdrafts (compensations); ap then loses its disk (`rm -rf`, `restore = true`) and comes
//! back from a peer's snapshot. Without the backfill it would answer 410 `compacted` for the
//! history below that snapshot; with it, it fetches that history from its peers in chunks,
//! verifies it, and serves every account's full history, every transaction by id and the
//! whole compensation feed exactly as a founder does, also after a restart. A fourth region
//! that joins (and does not compact) bootstraps the same way and backfills too.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const EU: usize = 0;
const AP: usize = 2;

/// Every account's full history and the whole feed at region `i` (None: a read failed).
async fn everything(c: &LocalCluster, i: usize, accounts: &[String]) -> Option<Vec<Value>> {
    let client = c.client(i).ok()?;
    let mut out = Vec::new();
    for a in accounts {
        out.push(Value::Array(client.history(a).await.ok()?));
    }
    out.push(Value::Array(client.feed().await.ok()?));
    Some(out)
}

/// The first page of `account`'s history at region `i`, `limit` entries, and the next one
/// after its cursor: (status, body) each.
async fn two_pages(c: &LocalCluster, i: usize, account: &str, limit: usize) -> Vec<(u16, String)> {
    let path = format!("/v1/accounts/{account}/transactions?limit={limit}");
    let first = c.client(i).unwrap().get_raw(&path).await.unwrap();
    let mut out = vec![first.clone()];
    let v: Value = serde_json::from_str(&first.1).unwrap_or(Value::Null);
    if let Some(next) = v["next"].as_str() {
        let p = format!("{path}&after={next}");
        out.push(c.client(i).unwrap().get_raw(&p).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_and_a_new_region_backfill_the_history_below_their_snapshots() {
    use wallet::bank::{self, Workload};
    let mut c = compacting_cluster(15, 4096).await;
    let clients: Vec<_> = (0..3).map(|i| c.client(i).unwrap()).collect();
    let w = Workload {
        seed: 13,
        duration: Duration::from_secs(5),
        ..Workload::default()
    };
    let workload = tokio::spawn(bank::run_workload(clients.clone(), w));
    // A partition: ap sells what eu and us sell too (overdrafts, then compensations).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.isolate("ap").await.expect("isolate");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.heal().await.expect("heal");
    let h = workload.await.expect("workload task").expect("workload");
    let accounts = h.accounts.clone();
    let before = eventually_everything(&c, &accounts).await;
    let feed_len = before.last().and_then(Value::as_array).map_or(0, Vec::len);
    println!(
        "{} accounts, {} compensations in the feed",
        accounts.len(),
        feed_len
    );
    eventually(&c, "every region to compact", WAIT, || async {
        for i in 0..3 {
            if metric_of(&c, i, "walletd_snapshot_total{event=\"compactions\"}").await == 0 {
                return false;
            }
        }
        true
    })
    .await;

    // ap loses its disk and comes back from a peer's snapshot.
    rebuild(&mut c, AP).await;
    wait_connected(&c, &[0, 1, 2]).await;
    let started = std::time::Instant::now();
    serves_as_eu(&c, AP, &accounts).await;
    println!(
        "ap serves the whole history {:?} after its rebuild",
        started.elapsed()
    );
    assert_backfilled(&c, AP);
    let records = metric_of(&c, AP, "walletd_backfill_records").await;
    println!("ap backfilled {records} records");
    assert!(records > 0);
    assert_eq!(metric_of(&c, AP, "walletd_backfill_state").await, 2);
    assert_eq!(metric_of(&c, AP, "walletd_backfill_refused_peers").await, 0);
    // Pages of a few entries, with their cursors, byte for byte.
    for a in accounts.iter().take(3) {
        assert_eq!(two_pages(&c, AP, a, 3).await, two_pages(&c, EU, a, 3).await);
    }
    // Every transaction by id, the first ones (below ap's snapshot) included.
    let mut ids: Vec<String> = Vec::new();
    for a in &accounts {
        for e in c.client(EU).unwrap().history(a).await.unwrap() {
            ids.push(e["id"].as_str().expect("id").to_string());
        }
    }
    assert!(ids.iter().any(|i| i == "eu:1"), "eu:1 in the histories");
    for id in &ids {
        let (x, y) = (
            c.get(AP, &format!("/v1/transactions/{id}")).await.unwrap(),
            c.get(EU, &format!("/v1/transactions/{id}")).await.unwrap(),
        );
        assert_eq!(x.status, 200, "{id} at ap: {}", x.json);
        assert_eq!(x.json, y.json, "{id}");
    }
    println!("{} ids read at ap, as at eu", ids.len());

    // A restart keeps it (the backfilled archive is opened below ap's own).
    assert!(term(&mut c, AP).await, "SIGTERM must exit 0");
    start(&mut c, AP).await;
    let r = c.get(AP, "/v1/transactions/eu:1").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(metric_of(&c, AP, "walletd_backfill_state").await, 2);
    assert_eq!(
        everything(&c, AP, &accounts).await,
        everything(&c, EU, &accounts).await
    );

    // A fourth region joins (it does not compact: its archive opens for the backfill) and
    // bootstraps from a snapshot: it too serves the whole history, ap being one of its
    // peers (a backfilled archive is served on).
    let started = std::time::Instant::now();
    let sa = join_region(&mut c, "sa").await;
    wait_connected(&c, &[0, 1, 2, sa]).await;
    serves_as_eu(&c, sa, &accounts).await;
    println!(
        "sa serves the whole history {:?} after its start",
        started.elapsed()
    );
    assert_backfilled(&c, sa);
    let r = c.get(sa, "/v1/transactions/eu:1").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.json);
}

/// It was the backfill: region `i`'s archive below its snapshot is complete.
fn assert_backfilled(c: &LocalCluster, i: usize) {
    let below = c
        .data_dir(i)
        .expect("data dir")
        .join(wallet::archive::ARCHIVE_DIR_NAME)
        .join(wallet::backfill::BELOW_DIR);
    assert!(below.join("complete").exists(), "{}", below.display());
}

/// Waits until region `i` serves every read as eu does.
async fn serves_as_eu(c: &LocalCluster, i: usize, accounts: &[String]) {
    eventually(
        c,
        "the region to serve the whole history as eu does",
        WAIT,
        || async {
            let (Some(a), Some(e)) = (
                everything(c, i, accounts).await,
                everything(c, EU, accounts).await,
            ) else {
                return false;
            };
            a == e
        },
    )
    .await;
}

/// Every read of the three regions, once they agree.
async fn eventually_everything(c: &LocalCluster, accounts: &[String]) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let e = everything(c, EU, accounts).await;
        if let Some(v) = &e {
            if everything(c, 1, accounts).await == e && everything(c, AP, accounts).await == e {
                return v.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the three regions never agreed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
