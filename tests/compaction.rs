//! Compaction in walletd (issue 13), against a real process: with `compact_every_events`, a
//! region folds its settled history into a snapshot, deletes it from its database, answers a
//! read of a compacted transaction 410 `compacted`, and restarts from the snapshot with the
//! same balances and the next seq.

mod common;

use std::time::Duration;

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
        let settled = api
            .balance("acct0", "USD")
            .await
            .is_some_and(|(p, s)| p == s);
        if r.status == 410 && settled {
            assert_eq!(error_code(&r), "compacted");
            break;
        }
        assert!(r.status == 200 || r.status == 410, "{}", r.json);
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
    assert_eq!(api.get("/v1/transactions/eu:1").await.status, 410);
    // The next id continues the sequence: no seq is reused below the snapshot.
    let r = api.tx("acct0", "deposit", "1", None).await;
    assert_eq!(r.json["id"], "eu:32");
}
