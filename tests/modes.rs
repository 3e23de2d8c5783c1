//! Consistency modes (SPEC §8, docs/modes.md) with real regions over the libp2p transport:
//! escrow (and the hybrid) drained from two sides of a partition, home-mode debits answered
//! through the home (and refused `home_unreachable` while it is cut off), and a home move
//! under load.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rust_decimal::Decimal;
use serde_json::Value;

/// vault-*: escrow + refuse; card-*: the hybrid (escrow, optimistic within 30); pay-*: home eu.
const POLICY: &str = r#"
[default]
action = "fee"
overdraft_line = "0"

[tiers]
vault = ["vault-"]
card = ["card-"]
pay = ["pay-"]

[[rule]]
tier = "vault"
mode = "escrow"
fallback = "refuse"

[[rule]]
tier = "card"
mode = "escrow"
fallback = "optimistic"
risk_limit = "30"

[[rule]]
tier = "pay"
mode = "home"
home = "eu"
"#;

const RISK_LIMIT: i64 = 30;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_else(|_| panic!("not a decimal: {s:?}"))
}

/// eu and us started and connected.
async fn eu_and_us() -> LocalCluster {
    let mut c = cluster_with_policy(&["eu", "us"], POLICY);
    // us waits 2.5 s for a forwarded debit's answer: `Retry-After: 3` on a 503 from it.
    c.rewrite_config(1, |t| format!("forward_timeout_ms = 2500\n{t}"))
        .expect("config");
    start(&mut c, 0).await;
    start(&mut c, 1).await;
    wait_connected(&c, &[0, 1]).await;
    c
}

async fn faults(c: &LocalCluster, body: &str) {
    let r = region_admin(c, 0)
        .post_raw("/v1/admin/faults", body, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    if body.contains("heal") {
        wait_connected(c, &[0, 1]).await;
    } else {
        eventually(c, "eu to be cut off", WAIT, || async {
            wallet::cluster::no_peer_connected(&status(c, 0).await)
        })
        .await;
    }
}

/// The USD entry of an account's balances at region `i`.
async fn usd_entry(c: &LocalCluster, i: usize, account: &str) -> Value {
    let v = c
        .get_ok(i, &format!("/v1/accounts/{account}/balances"))
        .await
        .expect("balances");
    v["balances"]
        .as_array()
        .and_then(|l| l.iter().find(|b| b["currency"] == "USD").cloned())
        .unwrap_or(Value::Null)
}

/// Debits `amount` at `api` until refused; the number accepted and the refusal's code.
async fn drain(api: &Api, account: &str, amount: &str) -> (u32, String) {
    let mut accepted = 0;
    loop {
        let r = api.tx(account, "purchase", amount, None).await;
        if r.status == 201 {
            accepted += 1;
            assert!(accepted < 1_000, "never refused");
            continue;
        }
        return (accepted, format!("{} {}", r.status, error_code(&r)));
    }
}

/// Waits until both regions hold the same settled balance and the same rights for
/// `account`, every event settled; returns the entry (the same on both).
async fn settled_alike(c: &LocalCluster, account: &str) -> Value {
    let accounts = vec![account.to_string()];
    wait_converged(c, "the regions to converge", &[0, 1], &accounts).await;
    let e = usd_entry(c, 0, account).await;
    assert_eq!(e, usd_entry(c, 1, account).await);
    assert_eq!(e["provisional"], e["settled"], "{e}");
    e
}

/// The compensations of the feed on `account`.
async fn compensations_of(c: &LocalCluster, i: usize, account: &str) -> Vec<Value> {
    let v = c
        .get_ok(i, "/v1/compensations?limit=1000")
        .await
        .expect("feed");
    v["compensations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|x| x["account"] == account)
        .collect()
}

fn rights_sum(entry: &Value) -> Decimal {
    let regions: BTreeMap<String, String> =
        serde_json::from_value(entry["rights"]["regions"].clone()).expect("rights by region");
    regions.values().map(|v| dec(v)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escrow_drained_from_both_sides_of_a_partition_never_goes_below_the_floor() {
    let c = eu_and_us().await;
    let (eu, us) = (region_api(&c, 0), region_api(&c, 1));
    for acct in ["vault-1", "card-1"] {
        let amount = if acct == "vault-1" { "100" } else { "20" };
        assert_eq!(eu.tx(acct, "deposit", amount, None).await.status, 201);
    }
    // A deposit without a key gives its region the rights at once.
    let e = usd_entry(&c, 0, "vault-1").await;
    assert_eq!(e["mode"], "escrow", "{e}");
    assert_eq!(e["rights"]["regions"]["eu"], "100.00", "{e}");
    // us holds no rights: its first debit asks eu over p2p and is decided when they come.
    eventually(&c, "us to hold the deposit", WAIT, || async {
        usd_entry(&c, 1, "vault-1").await["provisional"] == "100.00"
    })
    .await;
    let r = us.tx("vault-1", "purchase", "1", None).await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert!(
        region_api(&c, 1)
            .metric("walletd_modes_total{event=\"rights_requests\"}")
            .await
            >= 1
    );
    assert!(
        region_api(&c, 0)
            .metric("walletd_modes_total{event=\"transfers_given\"}")
            .await
            >= 1
    );

    // Partition: each side spends only its own rights.
    faults(&c, r#"{"isolate":["eu"]}"#).await;
    let (eu_n, eu_why) = drain(&eu, "vault-1", "7").await;
    let (us_n, us_why) = drain(&us, "vault-1", "7").await;
    assert_eq!(eu_why, "422 insufficient_rights");
    assert_eq!(us_why, "422 insufficient_rights");
    assert!(eu_n >= 1, "eu spent nothing");
    // The hybrid: beyond its rights each side may go its share (15) of the risk limit below.
    let (ceu, _) = drain(&eu, "card-1", "10").await;
    let (cus, _) = drain(&us, "card-1", "10").await;
    assert!(
        ceu + cus >= 3,
        "the hybrid accepted nothing past the rights ({ceu}, {cus})"
    );
    eprintln!(
        "partition: vault-1 debits {eu_n} at eu, {us_n} at us; card-1 {ceu} at eu, {cus} at us"
    );
    // Heal: nobody overdrew the vault; no fee, no reversal; rights sum to the balance.
    faults(&c, r#"{"heal":true}"#).await;
    let v = settled_alike(&c, "vault-1").await;
    let settled = dec(v["settled"].as_str().unwrap());
    assert!(
        settled >= Decimal::ZERO,
        "the vault went below the floor: {v}"
    );
    assert_eq!(
        settled,
        Decimal::from(100 - 1 - 7 * i64::from(eu_n + us_n)),
        "{v} ({eu_n} at eu, {us_n} at us)"
    );
    assert_eq!(rights_sum(&v), settled, "{v}");
    for i in 0..2 {
        assert_eq!(
            compensations_of(&c, i, "vault-1").await,
            Vec::<Value>::new()
        );
    }
    // The hybrid's overdraft stays within the risk limit (fees aside).
    let k = settled_alike(&c, "card-1").await;
    let fees: Decimal = compensations_of(&c, 0, "card-1")
        .await
        .iter()
        .filter(|x| x["type"] == "overdraft_fee")
        .map(|x| dec(x["amount"].as_str().unwrap()).abs())
        .sum();
    let before_fees = dec(k["settled"].as_str().unwrap()) + fees;
    assert_eq!(
        before_fees,
        Decimal::from(20 - 10 * i64::from(ceu + cus)),
        "{k}"
    );
    assert!(
        before_fees >= Decimal::from(-RISK_LIMIT),
        "the hybrid overdrew past its risk limit: {k}"
    );
    assert_eq!(rights_sum(&k), dec(k["settled"].as_str().unwrap()), "{k}");
    let m = region_api(&c, 1)
        .metric("walletd_transactions_refused_total{reason=\"insufficient_rights\"}")
        .await;
    assert!(m >= 2, "insufficient_rights refusals counted: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_debit_elsewhere_is_answered_by_the_home_and_refused_while_it_is_cut_off() {
    let c = eu_and_us().await;
    let us = region_api(&c, 1);
    // A home must be a member.
    let r = region_admin(&c, 0)
        .post_typed(
            "/v1/admin/policy",
            "application/toml",
            &POLICY.replace("home = \"eu\"", "home = \"ap\""),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.json);
    assert_eq!(error_code(&r), "invalid_policy");
    // Credits are taken anywhere.
    assert_eq!(us.tx("pay-1", "deposit", "50", None).await.status, 201);
    let e = usd_entry(&c, 1, "pay-1").await;
    assert_eq!(e["mode"], "home", "{e}");
    assert_eq!(e["home"], serde_json::json!({"region": "eu", "epoch": 0}));
    eventually(&c, "the home to hold the deposit", WAIT, || async {
        usd_entry(&c, 0, "pay-1").await["provisional"] == "50.00"
    })
    .await;
    // A debit at us goes to eu over p2p: the event is the home's. A `503 home_unreachable`
    // is retryable with the same key (the API's contract); CI saw one first attempt get it
    // right after start, while the home was connected (open: docs/modes.md), so the client
    // retries a few times as a real one would, and the key keeps the debit single.
    let mut r = us.tx("pay-1", "purchase", "20", Some("p1")).await;
    for _ in 0..5 {
        if r.status != 503 {
            break;
        }
        assert_eq!(error_code(&r), "home_unreachable", "{}", r.json);
        tokio::time::sleep(Duration::from_millis(500)).await;
        r = us.tx("pay-1", "purchase", "20", Some("p1")).await;
    }
    assert_eq!(r.status, 201, "{}", r.json);
    let id = r.json["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("eu:"), "decided by {id}, not by the home");
    // A retry with the key is the same debit, at either region.
    for i in [1, 0] {
        let again = region_api(&c, i)
            .tx("pay-1", "purchase", "20", Some("p1"))
            .await;
        assert_eq!(again.status, 201, "{}", again.json);
        assert_eq!(again.json["id"], id.as_str());
    }
    // More than the home holds: the home refuses it.
    let r = us.tx("pay-1", "purchase", "40", None).await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (422, "insufficient_funds")
    );

    // The home cut off: 503 home_unreachable with Retry-After, never accepted at us.
    faults(&c, r#"{"isolate":["eu"]}"#).await;
    let r = us.tx("pay-1", "purchase", "5", Some("p2")).await;
    assert_eq!(r.status, 503, "{}", r.json);
    assert_eq!(error_code(&r), "home_unreachable");
    let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(
        after, 3,
        "Retry-After is us's forward_timeout_ms rounded up"
    );
    assert_eq!(usd_entry(&c, 1, "pay-1").await["provisional"], "30.00");
    assert!(
        us.metric("walletd_transactions_refused_total{reason=\"home_unreachable\"}")
            .await
            >= 1
    );
    assert!(
        us.metric("walletd_modes_total{event=\"forward_timeouts\"}")
            .await
            >= 1
    );
    // The 503 was not kept as the key's result: after the heal the retry is decided, once.
    faults(&c, r#"{"heal":true}"#).await;
    let r = us.tx("pay-1", "purchase", "5", Some("p2")).await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert!(r.json["id"].as_str().unwrap().starts_with("eu:"));
    let e = settled_alike(&c, "pay-1").await;
    assert_eq!(e["settled"], "25.00", "{e}");
    assert_eq!(compensations_of(&c, 0, "pay-1").await, Vec::<Value>::new());
    let s = us.get("/v1/status").await;
    assert!(
        s.json["modes"]["forwarded"].as_u64().unwrap() >= 4,
        "{}",
        s.json
    );
}

/// Debits of 1.00 with fresh keys at `api` until `stop`; a `home_unreachable` is retried
/// with the same key (as a client should). Returns (key, acknowledged id) per debit.
async fn keyed_debits(
    api: Api,
    account: &'static str,
    tag: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(String, String)> {
    let mut acked = Vec::new();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let key = format!("{tag}-{n}");
        for _ in 0..50 {
            let r = api.tx(account, "purchase", "1", Some(&key)).await;
            match r.status {
                201 => {
                    acked.push((key.clone(), r.json["id"].as_str().unwrap().to_string()));
                    break;
                }
                503 if error_code(&r) == "home_unreachable" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => panic!("debit {key} at {tag}: {} {}", r.status, r.json),
            }
        }
    }
    acked
}

/// A home move of pay-2 at a region that is not its home: 409 `not_home`, naming `home`.
async fn refused_not_home(admin: &Api, home: &str) {
    let r = admin
        .post_raw(
            "/v1/admin/accounts/pay-2/home",
            r#"{"region":"eu","currency":"USD"}"#,
            None,
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.json);
    assert_eq!(error_code(&r), "not_home");
    let msg = r.json["error"]["message"].as_str().unwrap_or("");
    assert!(msg.ends_with(&format!("its home is {home}")), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_move_under_load_leaves_no_debit_decided_twice() {
    let c = eu_and_us().await;
    let (eu, us, eu_admin) = (region_api(&c, 0), region_api(&c, 1), region_admin(&c, 0));
    assert_eq!(eu.tx("pay-2", "deposit", "1000", None).await.status, 201);
    eventually(&c, "us to hold the deposit", WAIT, || async {
        usd_entry(&c, 1, "pay-2").await["provisional"] == "1000.00"
    })
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = [
        tokio::spawn(keyed_debits(eu.clone(), "pay-2", "eu", stop.clone())),
        tokio::spawn(keyed_debits(us.clone(), "pay-2", "us", stop.clone())),
    ];
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Only the home may move it; us is not the home yet.
    let body = r#"{"region":"us","currency":"USD"}"#;
    refused_not_home(&region_admin(&c, 1), "eu").await;
    let r = eu_admin
        .post_raw("/v1/admin/accounts/pay-2/home", body, None)
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(
        (r.json["home"].as_str(), r.json["epoch"].as_u64()),
        (Some("us"), Some(1))
    );
    let move_id = r.json["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in load {
        acked.extend(t.await.expect("load task"));
    }
    assert!(acked.len() >= 10, "too little load: {}", acked.len());
    eprintln!("home move under load: {} debits acknowledged", acked.len());
    // The old home is fenced: it no longer moves the account.
    refused_not_home(&eu_admin, "us").await;

    let e = settled_alike(&c, "pay-2").await;
    assert_eq!(
        e["home"],
        serde_json::json!({"region": "us", "epoch": 1}),
        "{e}"
    );
    // Every acknowledged debit is in the history exactly once, under its key; no key twice.
    let h = eu.history("pay-2").await;
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in h.iter().filter(|t| t["type"] == "purchase") {
        let key = t["idempotency_key"].as_str().unwrap_or("").to_string();
        by_key
            .entry(key)
            .or_default()
            .push(t["id"].as_str().unwrap().to_string());
    }
    for (key, id) in &acked {
        assert_eq!(by_key.get(key), Some(&vec![id.clone()]), "debit {key}");
    }
    assert_eq!(
        by_key.len(),
        acked.len(),
        "debits nobody acknowledged: {by_key:?}"
    );
    // Decided by eu before the move, by us after it (HLC order).
    let move_view = eu.get(&format!("/v1/transactions/{move_id}")).await.json;
    assert_eq!(
        (
            &move_view["type"],
            &move_view["account"],
            &move_view["currency"]
        ),
        (
            &Value::from("home_move"),
            &Value::from("pay-2"),
            &Value::from("USD")
        ),
        "{move_view}"
    );
    let move_hlc = hlc(&move_view["hlc"]);
    for t in h.iter().filter(|t| t["type"] == "purchase") {
        let id = t["id"].as_str().unwrap();
        if hlc(&t["hlc"]) < move_hlc {
            assert!(id.starts_with("eu:"), "{id} before the move");
        } else {
            assert!(id.starts_with("us:"), "{id} after the move");
        }
    }
    let settled = dec(e["settled"].as_str().unwrap());
    assert_eq!(settled, Decimal::from(1000 - acked.len() as i64));
    assert!(settled >= Decimal::ZERO);
    assert_eq!(compensations_of(&c, 0, "pay-2").await, Vec::<Value>::new());
}
