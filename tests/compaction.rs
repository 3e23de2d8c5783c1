//! Compaction in walletd (issue 13), against a real process: with `compact_every_events`, a
//! region folds its settled history into a snapshot, deletes it from its database, answers a
//! read of a compacted transaction 410 `compacted`, and restarts from the snapshot with the
//! same balances and the next seq.
//!
//! With the archive (`src/archive.rs`), folded history stays readable: a 3-region cluster that
//! compacts every few events under the bank workload, through a partition (overdrafts and
//! compensations) and a kill -9 of one region, passes the bank-style checks of `src/bank.rs`
//! (no loss, convergence, exactly-once, conservation), and every transaction and compensation
//! is readable by id on every region.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_compaction_keeps_balances_and_sequence() {
    let mut c = cluster(&["eu"]);
    c.rewrite_config(0, |t| format!("compact_every_events = 10\n{t}"))
        .expect("config");
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    for i in 0..30 {
        let r = api
            .tx(&format!("acct{}", i % 3), "deposit", "10.25", None)
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
    }
    assert_eq!(api.tx("acct0", "purchase", "5", None).await.status, 201);
    // Everything settles (one region: its own heartbeats) and a compaction follows.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = api.get("/v1/transactions/eu:1").await;
        let archived = archive_bytes(&c, 0) > 0;
        let settled = api
            .balance("acct0", "USD")
            .await
            .is_some_and(|(p, s)| p == s);
        if archived && settled {
            // Folded, and served from the archive.
            assert_eq!(r.status, 200, "{}", r.json);
            assert_eq!(r.json["status"], "settled", "{}", r.json);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.json);
        assert!(
            tokio::time::Instant::now() < deadline,
            "eu:1 was never compacted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before: Vec<_> = (0..3).map(|i| format!("acct{i}")).collect::<Vec<_>>();
    let mut balances = Vec::new();
    for a in &before {
        balances.push(api.balance(a, "USD").await);
    }
    assert_eq!(balances[0].clone().unwrap().0, "97.50");
    assert!(term(&mut c, 0).await, "SIGTERM must exit 0");
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    for (a, b) in before.iter().zip(&balances) {
        assert_eq!(&api.balance(a, "USD").await, b, "{a} after the restart");
    }
    let r = api.get("/v1/transactions/eu:1").await;
    assert_eq!(
        (r.status, r.json["amount"].as_str()),
        (200, Some("10.25")),
        "{}",
        r.json
    );
    // The whole history pages through: 11 entries of acct0, the first ones archived.
    assert_eq!(api.history("acct0").await.len(), 11);
    // The next id continues the sequence: no seq is reused below the snapshot.
    let r = api.tx("acct0", "deposit", "1", None).await;
    assert_eq!(r.json["id"], "eu:32");
}

/// `walletd_snapshot_total{event}` of region `i`.
async fn snapshot_metric(c: &LocalCluster, i: usize, event: &str) -> u64 {
    metric_of(
        c,
        i,
        &format!("walletd_snapshot_total{{event=\"{event}\"}}"),
    )
    .await
}

/// Every account's USD (provisional, settled) at region `i`.
async fn balances(
    c: &LocalCluster,
    i: usize,
    accounts: &[String],
) -> Vec<Option<(String, String)>> {
    let mut out = Vec::new();
    for a in accounts {
        out.push(balance(c, i, a).await);
    }
    out
}

/// The regions of `idx` hold the same version vector and the same balances, all settled.
async fn same_state(c: &LocalCluster, idx: &[usize], accounts: &[String]) -> bool {
    let mut first = None;
    for &i in idx {
        let vv = status(c, i).await["version_vector"].clone();
        let b = balances(c, i, accounts).await;
        if b.iter().flatten().any(|(p, s)| p != s) {
            return false;
        }
        match &first {
            None => first = Some((vv, b)),
            Some(f) if *f != (vv, b) => return false,
            Some(_) => {}
        }
    }
    true
}

/// Issue 13 over libp2p: three regions take the keyed bank workload (checked while their
/// histories are whole), compact (a restart with `compact_every_events`), take more load,
/// then a fourth joins: nobody serves the folded history any longer, so it can only start
/// from a peer's snapshot, sent in chunks of `snapshot_chunk_bytes`. It converges with the
/// three, holds no acknowledged event less (each is served, or answered 410 `compacted`),
/// keeps every balance (conservation across the fold), takes traffic, and restarts from the
/// snapshot it persisted. Then a founder loses its disk and comes back the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_region_bootstraps_from_a_snapshot_in_chunks_and_converges() {
    use wallet::bank::{self, Workload};
    const ALL: [usize; 3] = [0, 1, 2];
    let mut c = cluster(&["eu", "us", "ap"]);
    for i in ALL {
        c.rewrite_config(i, |t| format!("snapshot_chunk_bytes = 1024\n{t}"))
            .expect("config");
    }
    c.start_all().await.expect("start");
    wait_connected(&c, &ALL).await;

    // The bank workload, checked while every history is whole.
    let clients: Vec<_> = ALL.iter().map(|i| c.client(*i).unwrap()).collect();
    let w = Workload {
        seed: 13,
        duration: Duration::from_secs(4),
        ..Workload::default()
    };
    let h = bank::run_workload(clients.clone(), w)
        .await
        .expect("workload");
    let r = bank::check(&clients, &h, Duration::from_secs(40))
        .await
        .expect("checker");
    println!(
        "bank workload on the three, before compaction: {}",
        r.summary()
    );
    assert!(r.valid, "{}", serde_json::to_string_pretty(&r).unwrap());
    let bank_before = balances(&c, 0, &h.accounts).await;

    // Each region restarts compacting: it folds everything settled at once.
    for i in ALL {
        assert!(term(&mut c, i).await, "SIGTERM must exit 0");
        c.rewrite_config(i, |t| format!("compact_every_events = 20\n{t}"))
            .expect("config");
        start(&mut c, i).await;
    }
    wait_connected(&c, &ALL).await;
    let loaded: Vec<String> = (0..4).map(|k| format!("load-{k}")).collect();
    let load = deposit_load(&c, &[0, 1], &loaded);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let load_acked = load.finish().await;
    eventually(&c, "every region to compact", WAIT, || async {
        for i in ALL {
            if snapshot_metric(&c, i, "compactions").await == 0
                || metric_of(&c, i, "walletd_snapshot_at_ms").await == 0
            {
                return false;
            }
        }
        true
    })
    .await;
    // The fourth region joins (issue 12's path) and bootstraps.
    let sa = join_region(&mut c, "sa").await;
    let all4 = [0, 1, 2, sa];
    let mut accounts = h.accounts.clone();
    accounts.extend(loaded.iter().cloned());
    wait_connected(&c, &all4).await;
    eventually(&c, "sa to converge with the three", WAIT, || async {
        status(&c, sa).await["joining"] == false && same_state(&c, &all4, &accounts).await
    })
    .await;
    let chunks = snapshot_metric(&c, sa, "chunks_received").await;
    let bytes = snapshot_metric(&c, sa, "bytes_received").await;
    let completed = snapshot_metric(&c, sa, "transfers_completed").await;
    println!(
        "sa bootstrapped: {chunks} chunks, {bytes} bytes, {completed} transfers completed, {} failed",
        snapshot_metric(&c, sa, "transfers_failed").await
    );
    assert!(chunks >= 3, "{chunks} chunks");
    assert!(completed >= 1);
    assert!(snapshot_metric(&c, sa, "restores").await >= 1);

    // Conservation across the fold: the bank accounts hold what the checker saw, each load
    // account 1.00 per acknowledged deposit.
    assert_eq!(balances(&c, sa, &h.accounts).await, bank_before);
    let total: i64 = balances(&c, sa, &loaded)
        .await
        .iter()
        .flatten()
        .map(|(p, _)| cents(p))
        .sum();
    assert_eq!(
        total,
        100 * load_acked.len() as i64,
        "1.00 per acknowledged deposit"
    );
    // No loss: every acknowledged event is served at sa, or folded into its snapshot.
    let acked_bank = h
        .ops
        .iter()
        .flat_map(|o| &o.attempts)
        .filter_map(|a| (a.status == 201).then(|| a.id.clone()).flatten());
    for id in acked_bank.chain(load_acked.iter().cloned()) {
        let r = c.get(sa, &format!("/v1/transactions/{id}")).await.unwrap();
        assert!(
            r.status == 200 || (r.status == 410 && error_code_of(&r.json) == "compacted"),
            "{id} at sa: {} {}",
            r.status,
            r.json
        );
    }

    // sa takes traffic, and restarts from the snapshot it persisted.
    let r = c
        .tx(sa, "load-0", "deposit", "2", "USD", None)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    eventually(&c, "sa's deposit everywhere", WAIT, || async {
        same_state(&c, &all4, &accounts).await
    })
    .await;
    let before = balances(&c, sa, &accounts).await;
    assert!(term(&mut c, sa).await, "SIGTERM must exit 0");
    start(&mut c, sa).await;
    assert!(
        snapshot_metric(&c, sa, "restores").await >= 1,
        "started from its snapshot"
    );
    assert_eq!(balances(&c, sa, &accounts).await, before);
    wait_connected(&c, &all4).await;
    let r = c
        .tx(sa, "load-1", "deposit", "3", "USD", None)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    eventually(&c, "the four after sa's restart", WAIT, || async {
        same_state(&c, &all4, &accounts).await
    })
    .await;

    // ap loses its disk (`rm -rf`, `restore = true`): it too can only come back through a
    // snapshot in chunks, then seals its old epoch (docs/protocol.md §12) and converges.
    let before = balances(&c, 0, &accounts).await;
    rebuild(&mut c, 2).await;
    let chunks = snapshot_metric(&c, 2, "chunks_received").await;
    println!("ap rebuilt from an empty disk: {chunks} chunks");
    assert!(chunks >= 3, "{chunks} chunks");
    assert!(snapshot_metric(&c, 2, "transfers_completed").await >= 1);
    eventually(&c, "the four after ap's rebuild", WAIT, || async {
        same_state(&c, &all4, &accounts).await
    })
    .await;
    assert_eq!(balances(&c, 2, &accounts).await, before);
}

fn error_code_of(v: &serde_json::Value) -> String {
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

/// Bytes in region `i`'s archive segments.
fn archive_bytes(c: &wallet::cluster::LocalCluster, i: usize) -> u64 {
    let dir = c
        .data_dir(i)
        .expect("data dir")
        .join(wallet::archive::ARCHIVE_DIR_NAME);
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".arc"))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_checks_hold_across_compaction_a_partition_and_a_kill() {
    use wallet::bank::{self, Downtime, Workload};
    const EU: usize = 0;
    const US: usize = 1;
    let mut c = compacting_cluster(15, 4096).await;
    let clients: Vec<_> = (0..3).map(|i| c.client(i).unwrap()).collect();
    let w = Workload {
        seed: 13,
        duration: Duration::from_secs(9),
        ..Workload::default()
    };
    let t0 = w.t0;
    let ms = move || u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let workload = tokio::spawn(bank::run_workload(clients.clone(), w));
    // Compactions start under load.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A partition: ap sells what eu and us sell too (overdrafts, then compensations).
    c.isolate("ap").await.expect("isolate");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    c.heal().await.expect("heal");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // kill -9 of us while the others compact, and its restart from snapshot + archive.
    let killed = ms();
    c.kill(US);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    start(&mut c, US).await;
    let up = ms();
    let h = workload.await.expect("workload task").expect("workload");
    let downtime = [Downtime {
        region: US,
        from_ms: killed,
        to_ms: up,
        what: "kill -9".into(),
    }];
    let r = bank::check_with_downtime(&clients, &h, Duration::from_secs(60), &downtime)
        .await
        .expect("checker");
    println!("bank workload across compaction: {}", r.summary());
    assert!(r.valid, "{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(r.acked > 50, "{}", r.summary());
    // Every region compacted into its archive, and serves all the history from it.
    let started = Instant::now();
    for i in 0..3 {
        assert!(archive_bytes(&c, i) > 0, "region #{i} never compacted");
        let api = region_api(&c, i);
        let mut ids = Vec::new();
        for o in &h.ops {
            ids.extend(o.attempts.iter().filter_map(|a| a.id.clone()));
        }
        for a in &h.accounts {
            for e in api.history(a).await {
                ids.push(e["id"].as_str().expect("id").to_string());
            }
        }
        ids.sort();
        ids.dedup();
        for id in &ids {
            let r = api.get(&format!("/v1/transactions/{id}")).await;
            assert_eq!(r.status, 200, "region #{i} {id}: {}", r.json);
            assert_eq!(r.json["id"], id.as_str());
        }
        let first = api.get("/v1/transactions/eu:1").await;
        assert_eq!(first.status, 200, "{}", first.json);
        if i == EU {
            println!("{} ids read by id on each region", ids.len());
        }
    }
    println!("reads by id took {:?}", started.elapsed());
}
