//! Idempotency, concurrency, restart, kill -9 under load and corruption, against real processes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_and_conflict() {
    let mut c = cluster(&["eu"]);
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    let r = api.tx("bob", "deposit", "50", Some("dep-1")).await;
    assert_eq!(r.status, 201);
    let first = r.json.clone();
    // Same key, same body: the original response, no second event.
    for _ in 0..3 {
        let r = api.tx("bob", "deposit", "50.00", Some("dep-1")).await;
        assert_eq!(r.status, 201);
        assert_eq!(r.json, first);
        assert_eq!(r.headers["idempotent-replayed"], "true");
    }
    assert_eq!(api.history("bob").await.len(), 1);
    assert_eq!(api.balance("bob", "USD").await.unwrap().0, "50.00");
    // Same key, different body: 409.
    let r = api.tx("bob", "deposit", "51", Some("dep-1")).await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (409, "idempotency_conflict")
    );
    // Keys are scoped per account.
    let r = api.tx("carol", "deposit", "51", Some("dep-1")).await;
    assert_eq!(r.status, 201);
    // A 422 is a result too: the retry gets the same 422 even after funds arrive.
    let r = api.tx("bob", "purchase", "80", Some("buy-1")).await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (422, "insufficient_funds")
    );
    let refused = r.json.clone();
    assert_eq!(api.tx("bob", "deposit", "100", None).await.status, 201);
    let r = api.tx("bob", "purchase", "80", Some("buy-1")).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json, refused);
    assert_eq!(api.history("bob").await.len(), 2);
    // The results survive a restart.
    drop(api);
    assert!(term(&mut c, 0).await);
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    let r = api.tx("bob", "deposit", "50", Some("dep-1")).await;
    assert_eq!((r.status, &r.json), (201, &first));
    let r = api.tx("bob", "purchase", "80", Some("buy-1")).await;
    assert_eq!((r.status, &r.json), (422, &refused));
    let r = api.tx("bob", "deposit", "52", Some("dep-1")).await;
    assert_eq!(r.status, 409);
    assert_eq!(api.history("bob").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_purchases_never_break_the_floor() {
    let mut c = cluster(&["eu"]);
    start(&mut c, 0).await;
    let api = Arc::new(region_api(&c, 0));
    assert_eq!(api.tx("hot", "deposit", "100.00", None).await.status, 201);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0i64;
            for _ in 0..4 {
                let r = api.tx("hot", "purchase", "7.00", None).await;
                match r.status {
                    201 => {
                        ok += 1;
                        let p = cents(r.json["balance"]["provisional"].as_str().unwrap());
                        assert!(p >= 0, "provisional went below zero: {}", r.json);
                    }
                    422 => assert_eq!(error_code(&r), "insufficient_funds"),
                    s => panic!("unexpected {s}: {}", r.json),
                }
            }
            ok
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    assert!(
        accepted * 700 <= 10_000,
        "{accepted} purchases of 7.00 out of 100.00"
    );
    assert_eq!(accepted, 14, "exactly floor(100/7) purchases fit");
    let (p, _) = api.balance("hot", "USD").await.unwrap();
    assert_eq!(cents(&p), 10_000 - accepted * 700);
    assert_eq!(api.history("hot").await.len() as i64, 1 + accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_balances_and_events() {
    let mut c = cluster(&["eu"]);
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    for i in 0..20 {
        let r = api
            .tx(&format!("acct{}", i % 3), "deposit", "10.25", None)
            .await;
        assert_eq!(r.status, 201);
    }
    assert_eq!(api.tx("acct0", "purchase", "5", None).await.status, 201);
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(api.history(&format!("acct{i}")).await);
    }
    let bal0 = api.balance("acct0", "USD").await;
    assert!(term(&mut c, 0).await, "SIGTERM must exit 0");
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    let mut after = Vec::new();
    for i in 0..3 {
        after.push(api.history(&format!("acct{i}")).await);
    }
    let bal0 = bal0.unwrap().0;
    assert_eq!(api.balance("acct0", "USD").await.unwrap().0, bal0);
    assert_eq!(bal0, "66.75");
    // Same events, same ids; statuses may only move forward (provisional -> settled).
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        let ids = |v: &Vec<serde_json::Value>| {
            v.iter()
                .map(|t| (t["id"].clone(), t["amount"].clone(), t["hlc"].clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(b), ids(a));
    }
    // The next id continues the sequence: no seq is reused.
    let r = api.tx("acct0", "deposit", "1", None).await;
    assert_eq!(r.json["id"], "eu:22");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_loses_no_acknowledged_event() {
    let mut c = cluster(&["eu"]);
    let acked: Arc<Mutex<Vec<(String, String, i64)>>> = Arc::default();
    // Three rounds: start, load with 32 concurrent writers, SIGKILL in the middle of it.
    for round in 0..3u64 {
        start(&mut c, 0).await;
        let api = Arc::new(region_api(&c, 0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..32 {
            let (api, acked, stop) = (api.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = round * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let account = format!("k{}", w % 8);
                    let amount = format!("{}.{:02}", 1 + i % 50, i % 100);
                    let body =
                        serde_json::json!({"type": "deposit", "amount": amount, "currency": "USD"});
                    let sent = api
                        .http()
                        .post(format!("{}/v1/accounts/{account}/transactions", api.url()))
                        .bearer_auth(api.token())
                        .body(body.to_string())
                        .send()
                        .await;
                    let Ok(resp) = sent else { break };
                    if resp.status().as_u16() != 201 {
                        continue;
                    }
                    let Ok(j) = resp.json::<serde_json::Value>().await else {
                        break;
                    };
                    let id = j["id"].as_str().unwrap().to_string();
                    acked.lock().unwrap().push((id, account, cents(&amount)));
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(600 + 300 * round)).await;
        c.kill(0);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "too little load to mean anything: {}",
        acked.len()
    );

    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    let mut by_account = std::collections::BTreeMap::<String, Vec<serde_json::Value>>::new();
    for a in 0..8 {
        let account = format!("k{a}");
        by_account.insert(account.clone(), api.history(&account).await);
    }
    for (id, account, amount) in &acked {
        let h = &by_account[account];
        let t = h
            .iter()
            .find(|t| t["id"] == id.as_str())
            .unwrap_or_else(|| panic!("acknowledged {id} on {account} is lost"));
        assert_eq!(cents(t["amount"].as_str().unwrap()), *amount, "{id}");
    }
    // Balances equal the sum of the events held (conservation), and ids have no gaps.
    let mut seqs = Vec::new();
    for (account, h) in &by_account {
        let sum: i64 = h.iter().map(|t| cents(t["amount"].as_str().unwrap())).sum();
        let (p, _) = api
            .balance(account, "USD")
            .await
            .unwrap_or(("0.00".into(), "0.00".into()));
        assert_eq!(cents(&p), sum, "{account}");
        for t in h {
            seqs.push(
                t["id"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("eu:")
                    .parse::<u64>()
                    .unwrap(),
            );
        }
    }
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap in seqs"
    );
    eprintln!(
        "kill -9: {} acknowledged, {} held after restart",
        acked.len(),
        seqs.len()
    );
}

fn flip_marker(file: &std::path::Path, marker: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let mut n = 0;
    let mut i = 0;
    while i + marker.len() <= bytes.len() {
        if &bytes[i..i + marker.len()] == marker {
            bytes[i + 2] ^= 0x5a;
            n += 1;
            i += marker.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(file, bytes).unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_file_refuses_to_start() {
    let mut c = cluster(&["eu"]);
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    let body =
        r#"{"type":"deposit","amount":"12.00","currency":"USD","reference":"MARKER-corrupt-me"}"#;
    let r = api
        .post_raw("/v1/accounts/victim/transactions", body, None)
        .await;
    assert_eq!(r.status, 201);
    for _ in 0..5 {
        assert_eq!(api.tx("other", "deposit", "1", None).await.status, 201);
    }
    assert!(term(&mut c, 0).await);
    let file = c.data_file(0).unwrap();
    let n = flip_marker(&file, b"MARKER-corrupt-me");
    assert!(n >= 1, "marker not found in {}", file.display());
    let (st, err) = run_expect_failure(&mut c, 0);
    assert_ne!(st, Some(0));
    assert!(
        err.contains(&file.display().to_string()),
        "message must name the file: {err}"
    );
    assert!(
        err.contains("corrupt"),
        "message must say what is wrong: {err}"
    );
    eprintln!("refusal: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_file_refuses_to_start() {
    let mut c = cluster(&["eu"]);
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    for _ in 0..50 {
        assert_eq!(api.tx("t", "deposit", "1", None).await.status, 201);
    }
    assert!(term(&mut c, 0).await);
    let file = c.data_file(0).unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    let (st, err) = run_expect_failure(&mut c, 0);
    assert_ne!(st, Some(0));
    assert!(err.contains(&file.display().to_string()), "{err}");
    eprintln!("refusal: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_zero_and_keeps_every_acknowledged_event() {
    let mut c = cluster(&["eu"]);
    start(&mut c, 0).await;
    let api = Arc::new(region_api(&c, 0));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (api, acked) = (api.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let sent = api
                    .http()
                    .post(format!("{}/v1/accounts/term/transactions", api.url()))
                    .bearer_auth(api.token())
                    .body(r#"{"type":"deposit","amount":"1.00","currency":"USD"}"#)
                    .send()
                    .await;
                let Ok(resp) = sent else { break };
                if resp.status().as_u16() != 201 {
                    break;
                }
                let Ok(j) = resp.json::<serde_json::Value>().await else {
                    break;
                };
                acked
                    .lock()
                    .unwrap()
                    .push(j["id"].as_str().unwrap().to_string());
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let code = c.stop(0).await;
    assert_eq!(code, Some(0), "graceful shutdown must exit 0");
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "{}", acked.len());
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    let ids: std::collections::BTreeSet<String> = api
        .history("term")
        .await
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    for id in &acked {
        assert!(
            ids.contains(id),
            "acknowledged {id} lost by a graceful shutdown"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_file_or_a_foreign_data_dir_refuses_to_start() {
    let mut c = cluster(&["eu"]);
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    assert_eq!(api.tx("m", "deposit", "1", None).await.status, 201);
    assert!(term(&mut c, 0).await);
    let file = c.data_file(0).unwrap();
    // Emptied (or deleted) database next to the marker: starting afresh would reuse seqs.
    std::fs::write(&file, b"").unwrap();
    let (st, err) = run_expect_failure(&mut c, 0);
    assert_ne!(st, Some(0));
    assert!(err.contains("missing or empty"), "{err}");
    std::fs::remove_file(&file).unwrap();
    let (st, err) = run_expect_failure(&mut c, 0);
    assert_ne!(st, Some(0));
    assert!(err.contains("missing or empty"), "{err}");
    // A data dir that belongs to another region or cluster.
    let marker = file.parent().unwrap().join("walletd.marker");
    std::fs::write(&marker, "region=us cluster=other\n").unwrap();
    let (st, err) = run_expect_failure(&mut c, 0);
    assert_ne!(st, Some(0));
    assert!(err.contains("belongs to"), "{err}");
}
