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
    let mut c = cluster(&["eu", "us", "ap"]);
    for i in 0..3 {
        c.rewrite_config(i, |t| {
            format!("compact_every_events = 15\n{t}").replacen(
                "[storage]\n",
                "[storage]\narchive_segment_bytes = 4096\n",
                1,
            )
        })
        .expect("config");
    }
    c.start_all().await.expect("start");
    wait_connected(&c, &[0, 1, 2]).await;
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
