//! Lost disk over real processes and libp2p (docs/protocol.md §12, docs/operations.md): eu
//! runs with `ack = "peer"` under keyed load, is killed, its data dir removed (`rm -rf`), and
//! restarted with `restore = true`: it seals its old epoch at the highest seq a peer holds,
//! serves again under epoch 2, and no event it acknowledged is lost anywhere. Cut off from
//! its peers, it answers `503 peer_ack_timeout` (the event stays accepted; a retry with the
//! same key returns it). With `ack = "local"`, what it acknowledged while cut off is lost
//! with the disk.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const EU: usize = 0;

/// A keyed USD deposit at region `i`: its answer.
async fn deposit(c: &LocalCluster, i: usize, account: &str, amount: &str, key: &str) -> Answer {
    c.tx(i, account, "deposit", amount, "USD", Some(key))
        .await
        .expect("tx")
}

/// [`deposit`], expecting `201`: the event id.
async fn deposit_ok(c: &LocalCluster, i: usize, account: &str, amount: &str, key: &str) -> String {
    let r = deposit(c, i, account, amount, key).await;
    assert_eq!(r.status, 201, "{}", r.json);
    r.json["id"].as_str().expect("id").to_string()
}

/// Every event id in `accounts`' histories at region `i`.
async fn ids_at(
    c: &LocalCluster,
    i: usize,
    accounts: &[String],
) -> std::collections::BTreeSet<String> {
    let mut held = std::collections::BTreeSet::new();
    for a in accounts {
        for e in c.history(i, a).await.expect("history") {
            held.insert(e["id"].as_str().expect("id").to_string());
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_with_ack_peer_loses_its_disk_and_rejoins_under_a_new_epoch_losing_nothing() {
    let mut c = cluster(&["eu", "us", "ap"]);
    c.rewrite_config(EU, |t| {
        t.replace("restore = false", "restore = false\nack = \"peer\"")
    })
    .expect("config");
    c.start_all().await.expect("start");
    wait_connected(&c, &[0, 1, 2]).await;
    let accounts: Vec<String> = (0..3).map(|i| format!("lost-{i}")).collect();

    // Cut off: durable here only, so no 201 but a 503 after the timeout; the event stays
    // accepted, and once healed a retry with the same key returns it.
    c.isolate("eu").await.expect("isolate");
    let r = deposit(&c, EU, &accounts[0], "1.00", "cut-off").await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (503, "peer_ack_timeout"),
        "{}",
        r.json
    );
    c.heal().await.expect("heal");
    wait_connected(&c, &[0, 1, 2]).await;
    let first = deposit_ok(&c, EU, &accounts[0], "1.00", "cut-off").await;

    // Keyed load on eu until it is killed: every 201 is recorded.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let load = {
        let client = c.client(EU).expect("client");
        let (acked, accounts) = (acked.clone(), accounts.clone());
        tokio::spawn(async move {
            for n in 0.. {
                let a = &accounts[n % accounts.len()];
                let key = format!("k-{n}");
                match client.tx(a, "deposit", "1.00", "USD", Some(&key)).await {
                    Ok(r) if r.status == 201 => {
                        let id = r.json["id"].as_str().expect("id").to_string();
                        acked.lock().expect("lock").push(id);
                    }
                    Ok(r) if r.status == 503 => {}
                    Ok(r) => panic!("unexpected answer {} {}", r.status, r.json),
                    Err(_) => return, // killed
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    c.kill(EU);
    let _ = load.await;
    let mut acked = acked.lock().expect("lock").clone();
    println!(
        "{} events acknowledged with ack = \"peer\" in 4 s",
        acked.len()
    );
    assert!(acked.len() > 5, "too little load: {}", acked.len());

    acked.push(first);
    // The disk is gone: rm -rf, then a restore.
    rebuild(&mut c, EU).await;
    // New events go on above the seal.
    deposit_ok(&c, EU, &accounts[0], "1.00", "after").await;
    wait_converged(&c, "convergence after the rebuild", &[0, 1, 2], &accounts).await;
    // No loss: every event eu acknowledged (ack = "peer") is held everywhere, under its id.
    // (An event accepted but not yet acknowledged when eu died may be held too.)
    for i in 0..3 {
        let held = ids_at(&c, i, &accounts).await;
        for id in &acked {
            assert!(held.contains(id), "{id} acknowledged but not held at {i}");
        }
        assert!(held.len() > acked.len(), "region {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_local_what_a_cut_off_region_acknowledged_is_lost_with_its_disk() {
    let mut c = cluster(&["eu", "us", "ap"]);
    c.start_all().await.expect("start");
    wait_connected(&c, &[0, 1, 2]).await;
    let accounts = vec!["local-0".to_string()];
    let kept = deposit_ok(&c, EU, &accounts[0], "10.00", "kept").await;
    wait_converged(&c, "the first deposit everywhere", &[0, 1, 2], &accounts).await;
    c.isolate("eu").await.expect("isolate");
    let mut lost = Vec::new();
    for k in 0..3 {
        // ack = "local" answers at once.
        lost.push(deposit_ok(&c, EU, &accounts[0], "1.00", &format!("lost-{k}")).await);
    }
    rebuild(&mut c, EU).await;
    let after = deposit_ok(&c, EU, &accounts[0], "5.00", "after").await;
    wait_converged(&c, "convergence after the rebuild", &[0, 1, 2], &accounts).await;
    println!("acknowledged with ack = \"local\" while cut off, lost with the disk: {lost:?}");
    for i in 0..3 {
        let held = ids_at(&c, i, &accounts).await;
        assert!(held.contains(&kept));
        assert_eq!(held.len(), 2, "region {i}: {held:?}");
        assert_eq!(
            balance(&c, i, &accounts[0]).await.map(|b| b.1),
            Some("15.00".to_string()),
            "region {i}"
        );
    }
    // The lost events' seqs were issued again in epoch 2 (the seal is the first of them).
    assert!(lost.contains(&after), "{after} {lost:?}");
}

/// The seal waiver over HTTP (`POST /v1/admin/seal/waive`, docs/operations.md): eu is
/// rebuilt on an empty disk while ap is down for good; its seal waits for ap's answer (503
/// `restoring`) until an operator waives ap, then it seals and serves. The refusals: a
/// region that is not sealing (409 `not_sealing`), a name that is not another member (404
/// `not_a_member`), a malformed one (400 `invalid_region`), a client token (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_region_whose_peer_is_down_for_good_seals_after_the_waiver() {
    const AP: usize = 2;
    let mut c = cluster(&["eu", "us", "ap"]);
    c.start_all().await.expect("start");
    wait_connected(&c, &[0, 1, 2]).await;
    let accounts = vec!["waive-0".to_string()];
    let kept = deposit_ok(&c, EU, &accounts[0], "10.00", "kept").await;
    wait_converged(&c, "the first deposit everywhere", &[0, 1, 2], &accounts).await;
    let waive = |region: &str| format!("{{\"region\":\"{region}\"}}");
    // Nothing to waive on a region that is not sealing.
    let admin = c.admin(EU).expect("admin");
    let r = admin
        .post("/v1/admin/seal/waive", &waive("ap"), None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (409, "not_sealing"),
        "{}",
        r.json
    );

    c.kill(AP); // down for good
    c.kill(EU);
    std::fs::remove_dir_all(c.data_dir(EU).expect("dir")).expect("rm -rf");
    c.rewrite_config(EU, |t| t.replace("restore = false", "restore = true"))
        .expect("config");
    start(&mut c, EU).await;
    // It pulls its history back from us but waits for ap's seal answer.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = deposit(&c, EU, &accounts[0], "1.00", "while-restoring").await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (503, "restoring"),
        "{}",
        r.json
    );
    let admin = c.admin(EU).expect("admin");
    for (body, status, code) in [
        (waive("eu"), 404, "not_a_member"),
        (waive("sa"), 404, "not_a_member"),
        (waive("NOT A REGION"), 400, "invalid_region"),
        ("{}".to_string(), 400, "invalid_json"),
    ] {
        let r = admin
            .post("/v1/admin/seal/waive", &body, None)
            .await
            .unwrap();
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (status, code),
            "{body}: {}",
            r.json
        );
    }
    let client = c.client(EU).expect("client");
    let r = client
        .post("/v1/admin/seal/waive", &waive("ap"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.json);
    let r = admin
        .post("/v1/admin/seal/waive", &waive("ap"), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["waived"], "ap");
    eventually(&c, "the rebuilt region sealed and ready", WAIT, || async {
        let a = c.client(EU).unwrap().with_token("").get("/readyz").await;
        a.is_ok_and(|a| a.status == 200)
    })
    .await;
    let log = c.log_tail(EU);
    assert!(log.contains("epoch 2") || log.contains("epoch=2"), "{log}");
    let after = deposit_ok(&c, EU, &accounts[0], "5.00", "after").await;
    // ap stays down (a member in force: nothing settles until it is retired), but the new
    // epoch replicates: us holds the old epoch's deposit and the new one.
    eventually(&c, "us holds eu's events of both epochs", WAIT, || async {
        let held = ids_at(&c, 1, &accounts).await;
        held.contains(&kept) && held.contains(&after)
    })
    .await;
    assert!(ids_at(&c, EU, &accounts).await.contains(&kept));
}

/// pay-*: home eu (every debit of it is decided at eu; elsewhere it is forwarded there).
const HOME_EU: &str = r#"
[default]
action = "fee"
overdraft_line = "0"

[tiers]
pay = ["pay-"]

[[rule]]
tier = "pay"
mode = "home"
home = "eu"
"#;

/// The id of a debit answered 201 by its home.
fn forwarded(r: &Answer) -> String {
    let id = r.json["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("eu:"), "decided by {id}, not by the home");
    id
}

/// A debit forwarded to its home under `ack = "peer"` (docs/operations.md, "Debits forwarded
/// to their home"): us answers 201 only once it holds the home's event durably itself (two
/// members: eu and us). ap is cut off, so eu's events reach no member but us. Under keyed
/// forwarded load at us, then one more debit with us's writes held (the test seam
/// `WALLETD_TEST_HOLD_WRITES`: nothing more reaches us's disk), answered 201 (durable at
/// its home only) or 503 (us waits for its own disk: `home_unreachable` once the forward
/// time-out passes, or its request time-out); then us is killed (SIGKILL) and eu too, its
/// data dir removed: what us acknowledged survives only on us's disk. us restarts from it,
/// eu is rebuilt (`restore = true`, new epoch, its seal waits for us's answer), ap is
/// healed: every forwarded debit us acknowledged is held everywhere under its id, and the
/// three regions agree on every balance. Acknowledging before the event is durable at us
/// loses the last one, every run: the held writes take the race between the kill and us's
/// write out of the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_debit_acknowledged_with_ack_peer_survives_its_homes_lost_disk() {
    const US: usize = 1;
    let mut c = cluster_with_policy(&["eu", "us", "ap"], HOME_EU);
    // The level of the region the client calls is the one that counts. A request waiting
    // for us's held disk ends by the forward time-out (`home_unreachable`) or, at the
    // latest, us's request time-out.
    c.rewrite_config(US, |t| {
        t.replace("restore = false", "restore = false\nack = \"peer\"")
            .replace("[http]\n", "[http]\nrequest_timeout_ms = 3000\n")
    })
    .expect("config");
    let hold = c
        .data_dir(US)
        .expect("data dir")
        .with_file_name("us-hold-writes");
    let seam = (
        wallet::storage::TEST_HOLD_WRITES_ENV.to_string(),
        hold.display().to_string(),
    );
    c.set_env(US, vec![seam]).expect("env");
    c.start_all().await.expect("start");
    wait_connected(&c, &[0, 1, 2]).await;
    let accounts: Vec<String> = (0..4).map(|i| format!("pay-{i}")).collect();
    for a in &accounts {
        deposit_ok(&c, EU, a, "1000.00", &format!("fund-{a}")).await;
    }
    wait_converged(&c, "the funds everywhere", &[0, 1, 2], &accounts).await;
    c.isolate("ap").await.expect("isolate");

    // Forwarded debits at us, one loop per account, for 3 s: every 201 recorded.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for a in accounts.clone() {
        let client = c.client(US).expect("client");
        let (acked, stop) = (acked.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let key = format!("{a}-{n}");
                let r = client.tx(&a, "purchase", "1.00", "USD", Some(&key)).await;
                match r.expect("tx") {
                    r if r.status == 201 => acked.lock().expect("lock").push((forwarded(&r), key)),
                    r if r.status == 503 => {}
                    r => panic!("unexpected answer {} {}", r.status, r.json),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.expect("load");
    }
    let mut acked = acked.lock().expect("lock").clone();
    println!(
        "{} forwarded debits acknowledged at us with ack = \"peer\" in 3 s",
        acked.len()
    );
    assert!(acked.len() > 5, "too little load: {}", acked.len());
    // One more with us's writes held: its event reaches us's memory, never its disk. A 201
    // now is a debit durable at its home only; us is killed (SIGKILL) with its writes still
    // held, eu at once after.
    std::fs::write(&hold, b"").expect("hold us's writes");
    let r = c
        .tx(US, &accounts[0], "purchase", "1.00", "USD", Some("last"))
        .await
        .expect("tx");
    c.kill(US);
    c.kill(EU);
    std::fs::remove_file(&hold).expect("release us's writes");
    match r.status {
        201 => acked.push((forwarded(&r), "last".to_string())),
        503 => println!("the last debit, unwritten at us: {}", r.json),
        s => panic!("unexpected answer {s} {}", r.json),
    }

    start(&mut c, US).await;
    rebuild(&mut c, EU).await;
    wait_connected(&c, &[0, 1, 2]).await;
    // A debit forwarded after the rebuild is decided by the home in its new epoch.
    let r = c
        .tx(US, &accounts[0], "purchase", "1.00", "USD", Some("after"))
        .await
        .expect("tx");
    assert_eq!(r.status, 201, "{}", r.json);
    wait_converged(&c, "convergence after the rebuild", &[0, 1, 2], &accounts).await;
    // Under its id and its key: a seq lost with a disk is issued again in the new epoch.
    for i in 0..3 {
        let mut held = std::collections::BTreeSet::new();
        for a in &accounts {
            for e in c.history(i, a).await.expect("history") {
                let field = |f: &str| e[f].as_str().unwrap_or_default().to_string();
                held.insert((field("id"), field("idempotency_key")));
            }
        }
        let lost: Vec<&(String, String)> = acked.iter().filter(|k| !held.contains(*k)).collect();
        assert!(
            lost.is_empty(),
            "acknowledged but not held at {i}: {lost:?}"
        );
    }
}
