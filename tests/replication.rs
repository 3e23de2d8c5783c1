//! Two real regions over the libp2p transport: replication, partition via the fault
//! endpoint, heal, and the same compensation on both sides.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// eu and us started, with clients of both and eu's admin client.
async fn eu_and_us() -> (LocalCluster, Api, Api, Api) {
    let mut c = cluster(&["eu", "us"]);
    start(&mut c, 0).await;
    start(&mut c, 1).await;
    let (eu, us, eu_admin) = (region_api(&c, 0), region_api(&c, 1), region_admin(&c, 0));
    (c, eu, us, eu_admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_replicate_partition_heal_and_agree_on_the_fee() {
    let (_cluster, eu, us, eu_admin) = eu_and_us().await;

    assert_eq!(eu.tx("dana", "deposit", "100", None).await.status, 201);
    wait_for(
        "the deposit to reach us",
        Duration::from_secs(30),
        || async { us.balance("dana", "USD").await.map(|b| b.0) == Some("100.00".into()) },
    )
    .await;

    // Partition: eu cuts itself off; both regions keep accepting.
    let r = eu_admin
        .post_raw("/v1/admin/faults", r#"{"isolate":["eu"]}"#, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = eu.tx("dana", "purchase", "100", None).await;
    let b = us.tx("dana", "purchase", "100", None).await;
    assert_eq!((a.status, b.status), (201, 201), "{} {}", a.json, b.json);

    // Heal: both converge on the same events and exactly one fee with the same id.
    let r = eu_admin
        .post_raw("/v1/admin/faults", r#"{"heal":true}"#, None)
        .await;
    assert_eq!(r.status, 200);
    let feed = |api: &Api| {
        let api = api.clone();
        async move {
            let r = api.get("/v1/compensations?limit=100").await;
            r.json["compensations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    wait_for(
        "one compensation on both regions",
        Duration::from_secs(60),
        || async { feed(&eu).await.len() == 1 && feed(&us).await.len() == 1 },
    )
    .await;
    let fe: Vec<Value> = feed(&eu).await;
    let fu: Vec<Value> = feed(&us).await;
    assert_eq!(fe, fu);
    assert_eq!(fe[0]["type"], "overdraft_fee");
    assert_eq!(fe[0]["amount"], "5.00");
    assert_eq!(fe[0]["account"], "dana");
    let cause = fe[0]["cause"].as_str().unwrap().to_string();
    assert_eq!(fe[0]["id"], format!("fee:{cause}"));
    wait_for(
        "settled balances to agree",
        Duration::from_secs(30),
        || async {
            let x = eu.balance("dana", "USD").await;
            x.is_some()
                && x == us.balance("dana", "USD").await
                && x.as_ref().map(|b| b.1.as_str()) == Some("-105.00")
        },
    )
    .await;
    // The compensation is readable by id and listed in the account history after its cause.
    let r = us.get(&format!("/v1/transactions/fee:{cause}")).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["cause"], cause.as_str());
    let h = us.history("dana").await;
    let pos_cause = h.iter().position(|t| t["id"] == cause.as_str()).unwrap();
    assert_eq!(h[pos_cause + 1]["id"], format!("fee:{cause}"));
    assert_eq!(h[pos_cause]["compensation"], format!("fee:{cause}"));
    assert_eq!(h.len(), 4);
    let s = eu.get("/v1/status").await;
    let us_member = s.json["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["region"] == "us")
        .cloned()
        .unwrap();
    assert_eq!(us_member["connected"], true);
    assert_eq!(us_member["policy_matches"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_restores_its_history_from_peers_after_losing_its_disk() {
    let mut c = cluster(&["eu", "us"]);
    start(&mut c, 0).await;
    start(&mut c, 1).await;
    let eu = region_api(&c, 0);
    let us = region_api(&c, 1);
    for i in 0..5 {
        let r = eu
            .tx(
                "erin",
                "deposit",
                &format!("{}.00", i + 1),
                Some(&format!("d{i}")),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    wait_for(
        "eu's events to reach us",
        Duration::from_secs(30),
        || async { us.balance("erin", "USD").await.map(|b| b.0) == Some("15.00".into()) },
    )
    .await;
    // eu loses its disk.
    c.kill(0);
    std::fs::remove_dir_all(c.data_file(0).unwrap().parent().unwrap()).unwrap();
    let config = c.regions[0].config.clone();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("restore = false", "restore = true")).unwrap();
    start(&mut c, 0).await;
    let eu = region_api(&c, 0);
    // It pulls its own history back, seals its old epoch at eu:5 with the seal as eu:6
    // (docs/protocol.md §12), then accepts again, continuing its own sequence.
    wait_for(
        "eu to finish restoring",
        Duration::from_secs(60),
        || async {
            let r = eu.http().get(format!("{}/readyz", eu.url())).send().await;
            r.is_ok_and(|r| r.status().as_u16() == 200)
        },
    )
    .await;
    assert_eq!(eu.balance("erin", "USD").await.unwrap().0, "15.00");
    let r = eu.tx("erin", "purchase", "1.00", None).await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["id"], "eu:7", "a restored region never reuses a seq");
    let seal = eu.get("/v1/transactions/eu:6").await;
    assert_eq!(
        seal.json["type"], "membership",
        "eu:6 is the seal: {}",
        seal.json
    );
    // A retry of an event issued before the disk loss finds the original.
    let r = eu.tx("erin", "deposit", "1.00", Some("d0")).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json["id"], "eu:1");
    wait_for("us to see eu:7", Duration::from_secs(30), || async {
        us.get("/v1/transactions/eu:7").await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restoring_region_refuses_transactions_and_is_not_ready() {
    // Restore from an empty disk while the only peer is down: the region must wait.
    let mut c = cluster(&["eu", "us"]);
    let config = c.regions[0].config.clone();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("restore = false", "restore = true")).unwrap();
    start(&mut c, 0).await;
    let eu = region_api(&c, 0);
    let r = eu
        .http()
        .get(format!("{}/readyz", eu.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["error"]["code"], "restoring");
    let r = eu.tx("fay", "deposit", "1", None).await;
    assert_eq!((r.status, error_code(&r).as_str()), (503, "restoring"));
    let s = eu.get("/v1/status").await;
    assert_eq!(s.json["restoring"], true);
    // Reads still work.
    assert_eq!(eu.get("/v1/accounts/fay/balances").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_policy_and_cross_region_duplicates_show_reversed_status() {
    let mut c = cluster(&["eu", "us"]);
    let policy = c.dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[default]\naction = \"reverse\"\noverdraft_line = \"0\"\nreversible = [\"purchase\"]\n",
    )
    .unwrap();
    start(&mut c, 0).await;
    start(&mut c, 1).await;
    let eu = region_api(&c, 0);
    let us = region_api(&c, 1);
    let eu_admin = region_admin(&c, 0);
    assert_eq!(eu.tx("gus", "deposit", "100", None).await.status, 201);
    wait_for(
        "the deposit to reach us",
        Duration::from_secs(30),
        || async { us.balance("gus", "USD").await.is_some() },
    )
    .await;
    let r = eu_admin
        .post_raw("/v1/admin/faults", r#"{"isolate":["eu"]}"#, None)
        .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A double spend, and the same keyed deposit accepted by both sides of the partition.
    assert_eq!(eu.tx("gus", "purchase", "100", None).await.status, 201);
    assert_eq!(us.tx("gus", "purchase", "100", None).await.status, 201);
    let a = eu.tx("hal", "deposit", "50", Some("dup-1")).await;
    let b = us.tx("hal", "deposit", "50", Some("dup-1")).await;
    assert_eq!((a.status, b.status), (201, 201));
    assert_ne!(a.json["id"], b.json["id"], "two regions, two events");
    eu_admin
        .post_raw("/v1/admin/faults", r#"{"heal":true}"#, None)
        .await;
    wait_for(
        "two reversals everywhere",
        Duration::from_secs(60),
        || async {
            let n = |api: &Api| {
                let api = api.clone();
                async move {
                    api.get("/v1/compensations").await.json["compensations"]
                        .as_array()
                        .map(|v| v.len())
                        .unwrap_or(0)
                }
            };
            n(&eu).await == 2 && n(&us).await == 2
        },
    )
    .await;
    let fe = eu.get("/v1/compensations").await.json;
    let fu = us.get("/v1/compensations").await.json;
    assert_eq!(
        fe["compensations"], fu["compensations"],
        "same feed, same order"
    );
    for c in fe["compensations"].as_array().unwrap() {
        assert_eq!(c["type"], "reversal");
        let cause = c["cause"].as_str().unwrap();
        let t = us.get(&format!("/v1/transactions/{cause}")).await;
        assert_eq!(t.json["status"], "reversed", "{}", t.json);
        assert_eq!(t.json["reversed_by"], format!("rev:{cause}"));
    }
    // The settled balances: the later purchase and the later duplicate are reversed.
    wait_for("settled balances", Duration::from_secs(30), || async {
        eu.balance("gus", "USD").await.map(|b| b.1) == Some("0.00".into())
            && us.balance("hal", "USD").await.map(|b| b.1) == Some("50.00".into())
    })
    .await;
    // Replication traffic shows up in the metrics.
    let m = eu
        .http()
        .get(format!("{}/metrics", eu.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sent: u64 = m
        .lines()
        .find(|l| l.starts_with("walletd_replication_bytes_total{direction=\"sent\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(sent > 0);
    assert!(
        m.contains("walletd_compensations_total{kind=\"reversal\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensation_counters_survive_a_restart_unchanged() {
    const FEES: &str = "walletd_compensations_total{kind=\"overdraft_fee\"}";
    let (mut c, eu, us, eu_admin) = eu_and_us().await;
    // Two accounts overdrawn during a partition: two fees once healed and settled.
    for a in ["kim", "lou"] {
        assert_eq!(eu.tx(a, "deposit", "100", None).await.status, 201);
    }
    wait_for(
        "the deposits to reach us",
        Duration::from_secs(30),
        || async { us.balance("lou", "USD").await.map(|b| b.0) == Some("100.00".into()) },
    )
    .await;
    let r = eu_admin
        .post_raw("/v1/admin/faults", r#"{"isolate":["eu"]}"#, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for a in ["kim", "lou"] {
        assert_eq!(eu.tx(a, "purchase", "100", None).await.status, 201);
        assert_eq!(us.tx(a, "purchase", "100", None).await.status, 201);
    }
    let r = eu_admin
        .post_raw("/v1/admin/faults", r#"{"heal":true}"#, None)
        .await;
    assert_eq!(r.status, 200);
    wait_for(
        "two fees counted at eu",
        Duration::from_secs(60),
        || async { eu.metric(FEES).await >= 2 },
    )
    .await;
    // Settling goes on in the background: let it finish, then read the counter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = eu.metric(FEES).await;
    assert_eq!(before, 2);
    assert!(term(&mut c, 0).await);

    start(&mut c, 0).await;
    let eu = region_api(&c, 0);
    // Many heartbeat periods: anything counted again (or not at all) would show by now.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after = eu.metric(FEES).await;
    println!(
        "walletd_compensations_total{{kind=\"overdraft_fee\"}} at eu: {before} before the restart, {after} after"
    );
    assert_eq!(after, before);
    let feed = eu.get("/v1/compensations").await;
    assert_eq!(feed.json["compensations"].as_array().map(Vec::len), Some(2));
}
