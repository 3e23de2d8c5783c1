//! Live policy change over real processes (issue 12): a change posted at one region mid-run
//! under client load applies from its place in the total order on every region; a policy
//! file edited before a restart is ignored in favour of the recorded seed, and settlement
//! goes on.

mod common;

use std::time::Duration;

use common::*;
use futures::future::join_all;
use serde_json::Value;

const EU: usize = 0;
const US: usize = 1;
const AP: usize = 2;
const ALL: [usize; 3] = [EU, US, AP];

/// 7.00 flat instead of init's 5.00.
const FEE_7: &str = "[default]\naction = \"fee\"\nfee = { flat = \"7.00\", cap = \"35.00\" }\n";

fn accounts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|k| format!("{prefix}-{k}")).collect()
}

/// Deposits 100.00 into each account at eu and waits until it is settled everywhere.
async fn fund(c: &LocalCluster, accts: &[String]) {
    for a in accts {
        let r = c.tx(EU, a, "deposit", "100", "USD", None).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.json);
    }
    eventually(c, "the deposits to settle everywhere", WAIT, || async {
        for i in ALL {
            for a in accts {
                match balance(c, i, a).await {
                    Some((_, s)) if s == "100.00" => {}
                    _ => return false,
                }
            }
        }
        true
    })
    .await;
}

/// Every region cut off from all; each spends 60.00 from every account (each sees 100.00);
/// heal. Two of the three purchases per account overdraw once settled.
async fn double_spend(c: &LocalCluster, accts: &[String]) {
    cut_off_every_region(c).await;
    let mut reqs = Vec::new();
    for a in accts {
        for i in ALL {
            reqs.push((i, a.clone()));
        }
    }
    let answers =
        join_all(reqs.iter().map(|(i, a)| async move {
            c.tx(*i, a, "purchase", "60", "USD", None).await.unwrap()
        }))
        .await;
    for (r, q) in answers.iter().zip(&reqs) {
        assert_eq!(r.status, 201, "{q:?}: {}", r.json);
    }
    c.heal().await.unwrap();
}

/// GET /v1/policy's raw body at region `i`.
async fn policy_raw(c: &LocalCluster, i: usize) -> String {
    let (st, body) = c.get_raw(i, "/v1/policy").await.expect("policy");
    assert_eq!(st, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_mid_run_applies_from_its_place_in_the_total_order() {
    let mut c = cluster(&["eu", "us", "ap"]);
    c.start_all().await.expect("start");
    wait_connected(&c, &ALL).await;
    let loaded = accounts("load", 6);
    let before = accounts("v1", 3);
    let after = accounts("v2", 3);
    let all: Vec<usize> = (0..c.regions.len()).collect();
    let traffic = deposit_load(&c, &all, &loaded);

    // Version 1 (init's 5.00 fee): a double spend on every `v1-*` account.
    fund(&c, &before).await;
    double_spend(&c, &before).await;

    // The change, posted at us while the load runs.
    let r = c
        .admin(US)
        .unwrap()
        .post_typed("/v1/admin/policy", "application/toml", FEE_7)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    let policy_id = r.json["id"].as_str().unwrap().to_string();
    let policy_hash = r.json["hash"].as_str().unwrap().to_string();
    println!(
        "policy change {policy_id} hash {policy_hash} hlc {}",
        r.json["hlc"]
    );
    eventually(&c, "version 2 to be in force everywhere", WAIT, || async {
        for i in ALL {
            if c.get_ok(i, "/v1/policy").await.unwrap()["version"] != 2 {
                return false;
            }
        }
        true
    })
    .await;

    // Version 2: the same double spend on the `v2-*` accounts.
    fund(&c, &after).await;
    double_spend(&c, &after).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = traffic.finish().await;

    let mut all = loaded.clone();
    all.extend(before.iter().cloned());
    all.extend(after.iter().cloned());
    eventually(&c, "the three regions to converge", WAIT, || {
        converged(&c, &ALL, &all)
    })
    .await;

    // No loss: every acknowledged load event is in every region's history (the histories
    // are byte-identical, checked by `converged`).
    let mut held = std::collections::BTreeSet::new();
    for a in &loaded {
        for e in c.history(EU, a).await.unwrap() {
            held.insert(e["id"].as_str().unwrap().to_string());
        }
    }
    for id in &acked {
        assert!(held.contains(id), "{id} acknowledged but not held");
    }
    assert_eq!(held.len(), acked.len());

    // The feed: 2 fees per account; 5.00 with version 1 before the change, 7.00 with
    // version 2 after it; the same on every region.
    let feed = c.feed(EU).await.unwrap();
    let (mut v1, mut v2) = (0, 0);
    for f in &feed {
        assert_eq!(f["type"], "overdraft_fee", "{f}");
        let account = f["account"].as_str().unwrap();
        if account.starts_with("v1-") {
            assert_eq!(
                (f["amount"].as_str(), f["policy_version"].as_u64()),
                (Some("5.00"), Some(1)),
                "{f}"
            );
            v1 += 1;
        } else {
            assert!(account.starts_with("v2-"), "{f}");
            assert_eq!(
                (f["amount"].as_str(), f["policy_version"].as_u64()),
                (Some("7.00"), Some(2)),
                "{f}"
            );
            v2 += 1;
        }
    }
    assert_eq!((v1, v2), (2 * before.len(), 2 * after.len()));
    for i in [US, AP] {
        assert_eq!(c.feed(i).await.unwrap(), feed, "region {i}");
    }

    // The same policy history everywhere: the seed, then the event posted at us.
    let p = policy_raw(&c, EU).await;
    for i in [US, AP] {
        assert_eq!(policy_raw(&c, i).await, p, "region {i}");
    }
    let p: Value = serde_json::from_str(&p).unwrap();
    assert_eq!(p["version"], 2);
    assert_eq!(p["hash"], policy_hash.as_str());
    let h = p["history"].as_array().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[0]["version"].as_u64(), &h[0]["event"]),
        (Some(1), &Value::Null)
    );
    assert_eq!(h[1]["event"], policy_id.as_str());
    assert_eq!(h[1]["origin"], "us");
    for i in ALL {
        let s = status(&c, i).await;
        assert_eq!(s["policy_version"], 2);
        assert_eq!(s["settlement_blocked"], false);
    }
    println!(
        "acknowledged load events {}, fees v1 {v1}, fees v2 {v2}, feed {}",
        acked.len(),
        feed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_policy_file_is_ignored_at_restart_and_settlement_continues() {
    let mut c = cluster(&["eu", "us", "ap"]);
    c.start_all().await.expect("start");
    wait_connected(&c, &ALL).await;
    let first = accounts("a", 2);
    fund(&c, &first).await;
    let recorded_hash = status(&c, US).await["policy_hash"]
        .as_str()
        .unwrap()
        .to_string();

    // us's policy file is edited on disk (7.00 instead of 5.00); us restarts.
    c.stop(US).await;
    let path = c.dir.join("policy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("flat = \"5.00\""));
    let edited = c.dir.join("policy-edited.toml");
    std::fs::write(&edited, text.replace("flat = \"5.00\"", "flat = \"7.00\"")).unwrap();
    let cfg = c.regions[US].config.clone();
    let ctext = std::fs::read_to_string(&cfg).unwrap();
    assert_eq!(ctext.matches("policy.toml\"").count(), 1);
    std::fs::write(&cfg, ctext.replace("policy.toml\"", "policy-edited.toml\"")).unwrap();
    c.start(US).await.expect("restart us");
    wait_connected(&c, &ALL).await;

    // The status says the file is ignored, naming both hashes; nothing is blocked.
    let s = status(&c, US).await;
    let ignored = &s["policy_file_ignored"];
    println!("us status policy_file_ignored: {ignored}");
    assert_eq!(ignored["recorded_hash"], recorded_hash.as_str(), "{s}");
    let file_hash = ignored["file_hash"]
        .as_str()
        .expect("file hash")
        .to_string();
    assert_ne!(file_hash, recorded_hash);
    assert_eq!(s["policy_hash"], recorded_hash.as_str());
    assert_eq!(s["settlement_blocked"], false);
    let p = c.get_ok(US, "/v1/policy").await.unwrap();
    assert_eq!(p["policy_file_ignored"], *ignored);
    assert_eq!(p["history"][0]["hash"], recorded_hash.as_str());
    // The metrics say so too (what WalletdPolicyFileIgnored alerts on), on us only.
    eventually(&c, "walletd_policy_file_ignored on us", WAIT, || async {
        metric_of(&c, US, "walletd_policy_file_ignored").await == 1
    })
    .await;
    assert_eq!(metric_of(&c, EU, "walletd_policy_file_ignored").await, 0);
    let info = format!("walletd_policy_info{{version=\"1\",hash=\"{recorded_hash}\"}}");
    for i in ALL {
        assert_eq!(metric_of(&c, i, &info).await, 1, "region {i}: {info}");
    }
    // The warning names both hashes.
    let log = c.log_tail(US);
    assert!(
        log.contains(&file_hash) && log.contains(&recorded_hash),
        "{log}"
    );
    eventually(&c, "every member to match", WAIT, || async {
        for i in ALL {
            let s = status(&c, i).await;
            let members = s["members"].as_array().unwrap().clone();
            if s["settlement_blocked"] != false
                || members.iter().any(|m| m["policy_matches"] != true)
            {
                return false;
            }
        }
        true
    })
    .await;

    // Settlement continues: a new double spend settles with the recorded policy (5.00, v1).
    let second = accounts("b", 2);
    fund(&c, &second).await;
    double_spend(&c, &second).await;
    let mut all = first.clone();
    all.extend(second.iter().cloned());
    eventually(&c, "the three regions to converge", WAIT, || {
        converged(&c, &ALL, &all)
    })
    .await;
    let feed = c.feed(US).await.unwrap();
    assert_eq!(feed.len(), 2 * second.len());
    for f in &feed {
        assert_eq!(
            (f["amount"].as_str(), f["policy_version"].as_u64()),
            (Some("5.00"), Some(1)),
            "{f}"
        );
    }
    println!(
        "after the restart: {} fees settled, all 5.00 with version 1",
        feed.len()
    );
}
