//! Membership change over real processes (issue 12): a region isolated and killed is retired
//! at another region under client load; the remaining two acknowledge, the cut is known,
//! settlement resumes without the retired region, nothing the remaining regions acknowledged
//! is lost, and they converge.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const EU: usize = 0;
const US: usize = 1;
const AP: usize = 2;
const ALL: [usize; 3] = [EU, US, AP];
const REMAINING: [usize; 2] = [EU, US];

fn accounts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|k| format!("{prefix}-{k}")).collect()
}

async fn members(c: &LocalCluster, i: usize) -> Value {
    let a = c.get_admin(i, "/v1/admin/members").await.expect("members");
    assert_eq!(a.status, 200, "{}", a.json);
    a.json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_retired_while_partitioned_no_longer_stalls_settlement() {
    let mut c = cluster(&["eu", "us", "ap"]);
    c.start_all().await.expect("start");
    wait_connected(&c, &ALL).await;
    let loaded = accounts("load", 6);
    let traffic = deposit_load(&c, &REMAINING, &loaded);

    // ap takes traffic and settles with the others, then is cut off and killed.
    for k in 0..3 {
        let r = c
            .tx(
                AP,
                "ap-acct",
                "deposit",
                "10",
                "USD",
                Some(&format!("ap-{k}")),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.json);
    }
    eventually(&c, "ap's deposits to settle at eu", WAIT, || async {
        matches!(balance(&c, EU, "ap-acct").await, Some((_, s)) if s == "30.00")
    })
    .await;
    c.isolate("ap").await.unwrap();
    // Acknowledged at ap while it is cut off: never replicated, lost with ap (SPEC §10).
    let lost = c
        .tx(AP, "ap-acct", "deposit", "5", "USD", None)
        .await
        .unwrap();
    assert_eq!(lost.status, 201, "{}", lost.json);
    c.kill(AP);

    // Settlement is stalled on ap: a deposit at eu stays provisional.
    probe_stays_provisional(
        &c,
        Duration::from_secs(2),
        "settlement should be stalled on ap before the retire",
    )
    .await;
    let stalled_wm = hlc(&status(&c, EU).await["watermark"]);

    // Refusals: a region cannot retire itself; a name that is not a region; not a member.
    let admin = c.admin(US).unwrap();
    let me = admin.delete("/v1/admin/members/us").await.unwrap();
    assert_eq!(
        (me.status, error_code_of(&me.json)),
        (409, "membership_refused".into())
    );
    let bad = admin
        .delete("/v1/admin/members/NOT_A_REGION")
        .await
        .unwrap();
    assert_eq!(
        (bad.status, error_code_of(&bad.json)),
        (400, "invalid_region".into())
    );
    let unknown = admin.delete("/v1/admin/members/sa").await.unwrap();
    assert_eq!(
        (unknown.status, error_code_of(&unknown.json)),
        (404, "not_a_member".into())
    );
    let client = c.client(US).unwrap();
    let forbidden = client.delete("/v1/admin/members/ap").await.unwrap();
    assert_eq!(forbidden.status, 403, "{}", forbidden.json);

    // The retire, issued at us while the load runs.
    let r = admin.delete("/v1/admin/members/ap").await.unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    println!("retire answer: {}", r.json);
    let retire_id = r.json["id"].as_str().unwrap().to_string();
    assert_eq!(r.json["retire"]["regions"], json!(["ap"]));
    assert_eq!(r.json["retire"]["remaining"], json!(["eu", "us"]));
    // A second retire of ap while the first is pending (or done) is refused.
    let again = admin.delete("/v1/admin/members/ap").await.unwrap();
    // (409 while pending, 404 if the cut is known already.)
    assert!(
        matches!(
            (again.status, error_code_of(&again.json).as_str()),
            (409, "membership_refused") | (404, "not_a_member")
        ),
        "second retire: {} {}",
        again.status,
        again.json
    );

    // Both remaining members acknowledge; the cut is known and the same on both.
    eventually(&c, "the cut of ap at eu and us", WAIT, || async {
        for i in REMAINING {
            if members(&c, i).await["cuts"]["ap"].as_u64().is_none() {
                return false;
            }
        }
        true
    })
    .await;
    let m_eu = members(&c, EU).await;
    let m_us = members(&c, US).await;
    println!("members at eu: {m_eu}");
    assert_eq!(m_eu["in_force"], json!(["eu", "us"]));
    assert_eq!(m_eu["cuts"], m_us["cuts"]);
    assert_eq!(m_eu["retires"], m_us["retires"]);
    let retire = &m_eu["retires"][0];
    assert_eq!(retire["id"], retire_id.as_str());
    assert_eq!(retire["missing"], json!([]));
    // ap's three settled deposits are history; the one acknowledged while cut off is not.
    assert_eq!(m_eu["cuts"]["ap"].as_u64(), Some(3));

    // Once retired, ap is not a member in force any more.
    let done = admin.delete("/v1/admin/members/ap").await.unwrap();
    assert_eq!(
        (done.status, error_code_of(&done.json)),
        (404, "not_a_member".into())
    );

    // Settlement resumes: the probe settles, the watermark moves past the stall.
    eventually(&c, "the probe to settle at eu", WAIT, || async {
        matches!(balance(&c, EU, "probe").await, Some((_, s)) if s == "1.00")
    })
    .await;
    assert!(hlc(&status(&c, EU).await["watermark"]) > stalled_wm);

    // The allowlist: ap is no longer connected (and not dialed) at eu and us.
    for i in REMAINING {
        let s = status(&c, i).await;
        assert_eq!(member(&s, "ap")["connected"], false, "{s}");
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = traffic.finish().await;
    let mut all = loaded.clone();
    all.push("ap-acct".into());
    all.push("probe".into());
    wait_converged(&c, "eu and us to converge", &REMAINING, &all).await;

    // No loss: every acknowledged load event is in both histories.
    assert_no_loss(&c, US, &loaded, &acked).await;
    assert_eq!(
        balance(&c, US, "ap-acct").await,
        Some(("30.00".into(), "30.00".into()))
    );
    for i in REMAINING {
        assert_eq!(status(&c, i).await["settlement_blocked"], false);
    }

    // ap comes back: eu and us no longer dial it and refuse its connections (the
    // allowlist follows the applied retire); ap:4 never enters their history.
    let refused_before: Vec<u64> = {
        let mut v = Vec::new();
        for i in REMAINING {
            v.push(metric_of(&c, i, "walletd_p2p_refused_peers_total").await);
        }
        v
    };
    start(&mut c, AP).await;
    eventually(&c, "eu and us to refuse ap's connections", WAIT, || async {
        for (k, i) in REMAINING.iter().enumerate() {
            if metric_of(&c, *i, "walletd_p2p_refused_peers_total").await <= refused_before[k] {
                return false;
            }
        }
        true
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in REMAINING {
        let s = status(&c, i).await;
        assert_eq!(member(&s, "ap")["connected"], false, "{s}");
        assert_eq!(s["version_vector"]["ap"], 3, "{s}");
    }
    // ap's side: each redial is authenticated and then dropped by eu's and us's allowlist, so
    // ap may see a connection for a moment; it holds none for long.
    eventually(
        &c,
        "ap to hold no connection to eu and us",
        WAIT,
        || async {
            let s = status(&c, AP).await;
            ["eu", "us"]
                .iter()
                .all(|r| member(&s, r)["connected"] == false)
        },
    )
    .await;
    wait_converged(&c, "eu and us to stay converged", &REMAINING, &all).await;
    println!(
        "acknowledged load events {} (eu and us), cut of ap {}, lost at ap {}, refused peers before ap's restart {:?}",
        acked.len(),
        m_eu["cuts"]["ap"],
        lost.json["id"],
        refused_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_region_retired_learns_its_cut_and_refuses_with_region_retired() {
    let mut c = cluster(&["eu", "us", "ap"]);
    c.start_all().await.expect("start");
    wait_connected(&c, &ALL).await;
    let r = c.tx(AP, "a", "deposit", "10", "USD", None).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    // eu and us hold ap:1 before the retire (else the cut may rightly leave it out: on a
    // loaded machine the retire can overtake ap's push).
    eventually(&c, "eu and us to hold ap:1", WAIT, || async {
        for i in REMAINING {
            if status(&c, i).await["version_vector"]["ap"] != 1 {
                return false;
            }
        }
        true
    })
    .await;

    let r = c
        .admin(US)
        .unwrap()
        .delete("/v1/admin/members/ap")
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    // ap is alive: it applies the retire, acknowledges nothing (it is the one retired),
    // learns its cut from eu's and us's acknowledgements, and refuses clients.
    eventually(&c, "ap to know it is retired", WAIT, || async {
        members(&c, AP).await["retired"] == true
    })
    .await;
    let refused = c.tx(AP, "a", "deposit", "1", "USD", None).await.unwrap();
    assert_eq!(
        (refused.status, error_code_of(&refused.json)),
        (409, "region_retired".into()),
        "{}",
        refused.json
    );
    println!("a transaction at retired ap: {}", refused.json);
    // Its history up to the cut stays: ap:1 is settled at eu and us.
    eventually(&c, "ap's deposit to settle at eu and us", WAIT, || async {
        for i in REMAINING {
            if !matches!(balance(&c, i, "a").await, Some((_, s)) if s == "10.00") {
                return false;
            }
        }
        true
    })
    .await;
    // After the grace period eu and us drop ap from their allowlist.
    eventually(&c, "eu and us to disconnect ap", WAIT, || async {
        for i in REMAINING {
            if member(&status(&c, i).await, "ap")["connected"] != false {
                return false;
            }
        }
        true
    })
    .await;
    let r = c.tx(EU, "a", "deposit", "1", "USD", None).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    wait_converged(&c, "eu and us to converge", &REMAINING, &["a".to_string()]).await;
}

/// Every file under `dir` whose name ends with `suffix`.
fn files_ending(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_ending(&p, suffix));
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_under_load_verifies_at_the_peers_and_survives_a_restart() {
    let mut c = cluster(&["eu", "us", "ap"]);
    c.start_all().await.expect("start");
    wait_connected(&c, &ALL).await;
    let loaded = accounts("load", 6);
    let traffic = deposit_load(&c, &ALL, &loaded);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let admin = c.admin(EU).unwrap();
    let r = admin.post_typed("/v1/admin/key", "", "").await.unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    println!("rotation: {}", r.json);
    let rotation = r.json["id"].as_str().unwrap().to_string();
    let rotation_seq: u64 = rotation.trim_start_matches("eu:").parse().unwrap();
    let forbidden = c
        .client(EU)
        .unwrap()
        .post_typed("/v1/admin/key", "", "")
        .await
        .unwrap();
    assert_eq!(forbidden.status, 403, "{}", forbidden.json);
    // The new key is kept 0600 for a restart.
    let files = files_ending(&c.dir, ".rotated");
    assert_eq!(files.len(), 1, "{files:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{files:?}");
    }

    // eu's events after the rotation (signed with the new key) are accepted and settle at
    // us and ap.
    let after = c
        .tx(EU, "after", "deposit", "3", "USD", None)
        .await
        .unwrap();
    assert_eq!(after.status, 201, "{}", after.json);
    let after_seq: u64 = after.json["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("eu:")
        .parse()
        .unwrap();
    assert!(after_seq > rotation_seq);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = traffic.finish().await;
    let mut all = loaded.clone();
    all.push("after".into());
    wait_converged(
        &c,
        "the three regions to converge after the rotation",
        &ALL,
        &all,
    )
    .await;
    for i in [US, AP] {
        let vv = status(&c, i).await["version_vector"]["eu"]
            .as_u64()
            .unwrap();
        assert!(vv >= after_seq, "region {i} holds eu up to {vv}");
    }

    // eu restarts: it signs with the rotated key again (replayed from its log and the key
    // file), and its new events still verify at the peers.
    assert!(term(&mut c, EU).await);
    start(&mut c, EU).await;
    wait_connected(&c, &ALL).await;
    let again = c
        .tx(EU, "restart", "deposit", "4", "USD", None)
        .await
        .unwrap();
    assert_eq!(again.status, 201, "{}", again.json);
    all.push("restart".into());
    wait_converged(
        &c,
        "the three regions to converge after eu's restart",
        &ALL,
        &all,
    )
    .await;

    // No loss.
    assert_no_loss(&c, AP, &loaded, &acked).await;
    for i in ALL {
        assert_eq!(status(&c, i).await["settlement_blocked"], false);
    }
    println!(
        "rotation {rotation}; acknowledged load events {}; after rotation {}, after restart {}",
        acked.len(),
        after.json["id"],
        again.json["id"]
    );
}

fn error_code_of(v: &Value) -> String {
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

/// No loss: region `i` holds, settled, exactly the load events acknowledged on `accounts`.
async fn assert_no_loss(c: &LocalCluster, i: usize, accounts: &[String], acked: &[String]) {
    let mut held = std::collections::BTreeSet::new();
    for a in accounts {
        for e in c.history(i, a).await.unwrap() {
            assert_eq!(e["settled"], true, "{e}");
            held.insert(e["id"].as_str().unwrap().to_string());
        }
    }
    for id in acked {
        assert!(held.contains(id), "{id} acknowledged but not held");
    }
    assert_eq!(held.len(), acked.len());
}

/// `/readyz` of region `i`: status and error code (empty when ready).
async fn readiness(c: &LocalCluster, i: usize) -> (u16, String) {
    let a = c
        .client(i)
        .unwrap()
        .with_token("")
        .get("/readyz")
        .await
        .unwrap();
    (a.status, error_code_of(&a.json))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_grows_from_three_to_five_under_load_and_each_new_region_takes_traffic() {
    use wallet::bank::{self, Workload};
    let mut c = cluster(&["eu", "us", "ap"]);
    c.start_all().await.expect("start");
    wait_connected(&c, &ALL).await;

    // The bank workload (transfers with overdrafts, duplicates sent to two regions) runs
    // on the three founding regions while the fourth joins.
    let clients: Vec<_> = ALL.iter().map(|i| c.client(*i).unwrap()).collect();
    let w = Workload {
        seed: 12,
        duration: Duration::from_secs(6),
        ..Workload::default()
    };
    let workload = tokio::spawn(bank::run_workload(clients.clone(), w));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // `walletd join`'s library function writes sa's config from eu's.
    let (sa, body) = c.add_region("sa").expect("add region");
    let body = serde_json::to_value(&body).unwrap();
    println!("join request: {body}");
    let admin = c.admin(US).unwrap();
    // Refusals: not admin; a key that is not the peer id's; a member's name; a peer id in
    // use; a body that is not a join.
    let forbidden = c
        .client(US)
        .unwrap()
        .post("/v1/admin/members", &body.to_string(), None)
        .await
        .unwrap();
    assert_eq!(forbidden.status, 403, "{}", forbidden.json);
    let mut bad_key = body.clone();
    bad_key["public_key"] = json!(hex::encode(wallet_p2p::membership_key_of(
        &libp2p::identity::Keypair::generate_ed25519()
    )));
    let mut dup = body.clone();
    dup["region"] = json!("us");
    let eu_cfg = wallet::config::NodeConfig::load(&c.regions[EU].config).unwrap();
    let eu_peer = json!(eu_cfg.members[EU].peer_id.to_string());
    let mut reused = body.clone();
    reused["region"] = json!("xx");
    reused["peer_id"] = eu_peer.clone();
    reused.as_object_mut().unwrap().remove("public_key");
    for (b, want) in [
        (bad_key, (400, "invalid_key")),
        (dup, (409, "already_member")),
        (reused, (409, "peer_id_in_use")),
        (json!({"region": "sa"}), (400, "invalid_json")),
    ] {
        let r = admin
            .post("/v1/admin/members", &b.to_string(), None)
            .await
            .unwrap();
        assert_eq!(
            (r.status, error_code_of(&r.json).as_str()),
            want,
            "{b}: {}",
            r.json
        );
    }

    // sa starts first: it dials the members, which refuse it until they apply the join;
    // it is not ready and refuses clients meanwhile.
    start(&mut c, sa).await;
    assert_eq!(readiness(&c, sa).await, (503, "joining".into()));
    let early = c
        .tx(sa, "early", "deposit", "1", "USD", None)
        .await
        .unwrap();
    assert_eq!(
        (early.status, error_code_of(&early.json)),
        (503, "joining".into()),
        "{}",
        early.json
    );
    assert_eq!(status(&c, sa).await["joining"], true);

    // The join, issued at us under load.
    let r = admin
        .post("/v1/admin/members", &body.to_string(), None)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    println!("join answer: {}", r.json);
    let join_id = r.json["id"].as_str().unwrap().to_string();
    let again = admin
        .post("/v1/admin/members", &body.to_string(), None)
        .await
        .unwrap();
    assert_eq!(
        (again.status, error_code_of(&again.json)),
        (409, "already_member".into())
    );

    // Every founding region applies the join and dials sa; sa pulls the history, applies
    // its own join and becomes ready.
    eventually(&c, "sa to be ready", WAIT, || async {
        readiness(&c, sa).await.0 == 200
    })
    .await;
    let all4 = [EU, US, AP, sa];
    wait_connected(&c, &all4).await;
    for i in all4 {
        let m = members(&c, i).await;
        assert_eq!(m["in_force"], json!(["ap", "eu", "sa", "us"]), "{m}");
        assert_eq!(m["joins"][0]["id"], join_id.as_str(), "{m}");
        assert_eq!(m["joins"][0]["peer_id"], body["peer_id"], "{m}");
    }

    let h = workload.await.expect("workload task").expect("workload");
    // Caught up: the four regions show the same events, balances and compensations, every
    // event settled (sa included: it took no traffic yet).
    let all_clients: Vec<_> = all4.iter().map(|i| c.client(*i).unwrap()).collect();
    let r = bank::check(&all_clients, &h, Duration::from_secs(40))
        .await
        .expect("checker");
    println!(
        "bank workload (eu, us, ap), checked on the four: {}",
        r.summary()
    );
    assert!(r.valid, "{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(r.acked > 0);
    let wm_before = hlc(&status(&c, sa).await["watermark"]);

    // sa takes traffic itself, with eu; its events settle everywhere.
    let loaded = accounts("grow", 4);
    let traffic = deposit_load(&c, &[sa, EU], &loaded);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked = traffic.finish().await;
    assert!(acked.iter().any(|id| id.starts_with("sa:")), "{acked:?}");
    wait_converged(&c, "the four regions to converge", &all4, &loaded).await;
    assert_no_loss(&c, US, &loaded, &acked).await;
    let wm_after = hlc(&status(&c, sa).await["watermark"]);
    assert!(wm_after > wm_before, "{wm_before:?} -> {wm_after:?}");
    for i in all4 {
        assert_eq!(status(&c, i).await["settlement_blocked"], false);
    }

    // eu restarts: its config does not name sa; the join in its history does (it allows
    // and dials sa again).
    assert!(term(&mut c, EU).await);
    start(&mut c, EU).await;
    wait_connected(&c, &all4).await;
    let r = c
        .tx(sa, "grow-0", "deposit", "2", "USD", None)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    wait_converged(&c, "the four regions after eu's restart", &all4, &loaded).await;

    // A fifth region, written from eu's config (which does not name sa) and joined at sa:
    // it learns of sa from sa's join in the history, dials it, and converges with all.
    let (af, body5) = c.add_region("af").expect("add af");
    let r = c
        .admin(sa)
        .unwrap()
        .post(
            "/v1/admin/members",
            &serde_json::to_string(&body5).unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    start(&mut c, af).await;
    let all5 = [EU, US, AP, sa, af];
    wait_connected(&c, &all5).await;
    eventually(&c, "af to be ready", WAIT, || async {
        readiness(&c, af).await.0 == 200
    })
    .await;
    let r = c
        .tx(af, "grow-1", "deposit", "3", "USD", None)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    wait_converged(&c, "the five regions", &all5, &loaded).await;
    println!(
        "join {join_id}; sa's acknowledged deposits {}, all {}; sa watermark {wm_before:?} -> {wm_after:?}",
        acked.iter().filter(|id| id.starts_with("sa:")).count(),
        acked.len()
    );
}

/// Deposits 1.00 USD on `probe` at eu and checks, `wait` later, that it is still provisional
/// (settlement is stalled: `why`).
async fn probe_stays_provisional(c: &LocalCluster, wait: Duration, why: &str) {
    let probe = c
        .tx(EU, "probe", "deposit", "1", "USD", None)
        .await
        .unwrap();
    assert_eq!(probe.status, 201, "{}", probe.json);
    tokio::time::sleep(wait).await;
    assert_eq!(
        balance(c, EU, "probe").await,
        Some(("1.00".into(), "0.00".into())),
        "{why}"
    );
}

/// The evidence region `i` holds (admin).
async fn evidence_at(c: &LocalCluster, i: usize) -> Vec<Value> {
    let a = c.get_admin(i, "/v1/admin/evidence").await.unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    a.json["evidence"].as_array().expect("evidence").clone()
}

/// `POST /v1/admin/faults` with `body` at region `i`.
async fn faults_at(c: &LocalCluster, i: usize, body: Value) {
    let a = c
        .post(i, "/v1/admin/faults", &body, None, true)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_region_restored_from_an_old_backup_is_retired_and_settlement_resumes() {
    let mut c = cluster(&["eu", "us", "ap"]);
    c.start_all().await.expect("start");
    wait_connected(&c, &ALL).await;
    let loaded = accounts("load", 6);
    let traffic = deposit_load(&c, &REMAINING, &loaded);

    // ap:1..2, settled everywhere; then a backup of ap's data directory (ap stopped).
    for _ in 0..2 {
        let r = c
            .tx(AP, "ap-old", "deposit", "10", "USD", None)
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.json);
    }
    eventually(&c, "ap:1..2 to settle at eu", WAIT, || async {
        matches!(balance(&c, EU, "ap-old").await, Some((_, s)) if s == "20.00")
    })
    .await;
    assert!(term(&mut c, AP).await);
    let data = c.data_dir(AP).unwrap();
    let backup = c.dir.join("ap-backup");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&backup)
        .status()
        .unwrap();
    assert!(cp.success());

    // ap runs on and issues ap:3..4, which eu and us hold.
    start(&mut c, AP).await;
    wait_connected(&c, &ALL).await;
    for _ in 0..2 {
        let r = c
            .tx(AP, "ap-new", "deposit", "7", "USD", None)
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.json);
    }
    eventually(&c, "eu and us to hold ap:4", WAIT, || async {
        status(&c, EU).await["version_vector"]["ap"] == 4
            && status(&c, US).await["version_vector"]["ap"] == 4
    })
    .await;

    // ap is restored from the old backup and, before it hears from anyone (eu and us drop
    // its traffic), issues a different ap:3: the same id, signed by ap's key.
    assert!(term(&mut c, AP).await);
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::rename(&backup, &data).unwrap();
    for i in REMAINING {
        faults_at(&c, i, json!({"isolate": ["ap"]})).await;
    }
    start(&mut c, AP).await;
    let fork = c
        .tx(AP, "ap-fork", "deposit", "9", "USD", None)
        .await
        .unwrap();
    assert_eq!(fork.status, 201, "{}", fork.json);
    assert_eq!(fork.json["id"], "ap:3", "{}", fork.json);
    for i in REMAINING {
        faults_at(&c, i, json!({"heal": true})).await;
    }

    // eu and us learn of the two ap:3 (evidence), freeze ap, and settlement stops.
    eventually(
        &c,
        "eu and us to hold evidence against ap",
        WAIT,
        || async {
            for i in REMAINING {
                if evidence_at(&c, i).await.is_empty()
                    || status(&c, i).await["settlement_blocked"] != true
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let mut before = Vec::new();
    for i in REMAINING {
        before.push(evidence_at(&c, i).await);
    }
    let evidence = before[0].clone();
    println!("evidence at eu: {}", Value::Array(evidence.clone()));
    // Two ap:3 (conflicting events), or a heartbeat of the restored ap contradicting ap:3 or
    // ap:4 (a broken promise), whichever arrives first: all against ap.
    assert!(!evidence.is_empty() && evidence.iter().all(|e| e["origin"] == "ap"));
    c.kill(AP);
    probe_stays_provisional(
        &c,
        Duration::from_secs(1),
        "settlement is blocked by the evidence",
    )
    .await;

    // The operator retires ap. The cut is the last trusted seq: eu and us settled ap:1..4
    // before the fork reached them, so those stay; the fork (never applied) is not history.
    let r = c
        .admin(US)
        .unwrap()
        .delete("/v1/admin/members/ap")
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    eventually(&c, "the cut of ap at eu and us", WAIT, || async {
        for i in REMAINING {
            if members(&c, i).await["cuts"]["ap"].as_u64().is_none() {
                return false;
            }
        }
        true
    })
    .await;
    let m_eu = members(&c, EU).await;
    assert_eq!(m_eu["cuts"], members(&c, US).await["cuts"]);
    println!("cut after the equivocation: {}", m_eu["cuts"]);

    // Settlement resumes on eu and us; the evidence stays readable.
    eventually(&c, "the probe to settle at eu", WAIT, || async {
        matches!(balance(&c, EU, "probe").await, Some((_, s)) if s == "1.00")
    })
    .await;
    let acked = traffic.finish().await;
    let mut all = loaded.clone();
    all.extend(["ap-old", "ap-new", "ap-fork", "probe"].map(String::from));
    wait_converged(
        &c,
        "eu and us to converge after the retire",
        &REMAINING,
        &all,
    )
    .await;
    assert_no_loss(&c, US, &loaded, &acked).await;
    for (k, i) in REMAINING.iter().copied().enumerate() {
        assert_eq!(status(&c, i).await["settlement_blocked"], false);
        // Every proof held before the retire is still listed (heartbeats of ap in flight
        // when it was killed may have added more).
        let after = evidence_at(&c, i).await;
        for e in &before[k] {
            assert!(after.contains(e), "region {i} lost evidence {e}");
        }
        assert!(c.history(i, "ap-fork").await.unwrap().is_empty());
    }
    println!(
        "acknowledged load events {}; cut of ap {}; evidence kept {}",
        acked.len(),
        m_eu["cuts"]["ap"],
        evidence.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_down_at_once_are_retired_by_one_call_and_their_names_are_not_reused() {
    let mut c = cluster(&["eu", "us", "ap", "sa"]);
    let sa = 3;
    let all4 = [EU, US, AP, sa];
    c.start_all().await.expect("start");
    wait_connected(&c, &all4).await;
    let loaded = accounts("load", 4);
    let traffic = deposit_load(&c, &REMAINING, &loaded);
    for i in [AP, sa] {
        let r = c.tx(i, "far", "deposit", "5", "USD", None).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.json);
    }
    eventually(
        &c,
        "ap's and sa's deposits to settle at eu",
        WAIT,
        || async { matches!(balance(&c, EU, "far").await, Some((_, s)) if s == "10.00") },
    )
    .await;
    // ap and sa die together: one retire of one of them would wait for the other's
    // acknowledgement forever; one retire of both needs only eu's and us's.
    c.kill(AP);
    c.kill(sa);
    let admin = c.admin(EU).unwrap();
    let bad = admin.delete("/v1/admin/members/ap,,sa").await.unwrap();
    assert_eq!(
        (bad.status, error_code_of(&bad.json)),
        (400, "invalid_region".into())
    );
    let r = admin.delete("/v1/admin/members/ap,sa").await.unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["retire"]["regions"], json!(["ap", "sa"]));
    assert_eq!(r.json["retire"]["remaining"], json!(["eu", "us"]));
    eventually(&c, "the cuts of ap and sa at eu and us", WAIT, || async {
        for i in REMAINING {
            let m = members(&c, i).await;
            if m["cuts"]["ap"].as_u64().is_none() || m["cuts"]["sa"].as_u64().is_none() {
                return false;
            }
        }
        true
    })
    .await;
    let m = members(&c, US).await;
    assert_eq!(m["in_force"], json!(["eu", "us"]));
    assert_eq!(m["cuts"], json!({"ap": 1, "sa": 1}));
    assert_eq!(members(&c, EU).await["cuts"], m["cuts"]);

    // A retired region's name is not reused.
    let kp = libp2p::identity::Keypair::generate_ed25519();
    let join = json!({"region": "ap", "peer_id": wallet_p2p::peer_id_of(&kp).to_string()});
    let r = admin
        .post("/v1/admin/members", &join.to_string(), None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, error_code_of(&r.json)),
        (409, "region_was_retired".into()),
        "{}",
        r.json
    );

    // Settlement goes on without them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = traffic.finish().await;
    let mut all = loaded.clone();
    all.push("far".into());
    wait_converged(
        &c,
        "eu and us to converge without ap and sa",
        &REMAINING,
        &all,
    )
    .await;
    assert_no_loss(&c, EU, &loaded, &acked).await;
    println!(
        "retired ap and sa in one call: cuts {}; acknowledged load events {}",
        m["cuts"],
        acked.len()
    );
}

#[test]
fn walletd_join_writes_a_joining_config_and_prints_the_call() {
    let c = cluster(&["eu", "us"]);
    let out_dir = c.dir.join("new-region");
    let run = |region: &str| {
        std::process::Command::new(BIN)
            .args(["join", "--region", region, "--from"])
            .arg(&c.regions[0].config)
            .arg("--dir")
            .arg(&out_dir)
            .output()
            .unwrap()
    };
    let o = run("sa");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    println!("{stdout}");
    assert!(stdout.contains("/v1/admin/members"), "{stdout}");
    assert!(stdout.contains("$WALLET_ADMIN_TOKEN"), "{stdout}");
    assert!(
        !stdout.contains(&c.admin_token),
        "the admin token is not printed"
    );
    let cfg = wallet::config::NodeConfig::load(&out_dir.join("sa.toml")).unwrap();
    let eu = wallet::config::NodeConfig::load(&c.regions[0].config).unwrap();
    assert!(cfg.join);
    assert_eq!(cfg.cluster, eu.cluster);
    assert_eq!(cfg.policy.hash(), eu.policy.hash());
    assert!(cfg.tls.is_some());
    let names: Vec<String> = cfg.members.iter().map(|m| m.region.to_string()).collect();
    assert_eq!(names, ["eu", "us", "sa"]);
    let body_line = stdout.lines().find(|l| l.contains("curl")).unwrap();
    assert!(
        body_line.contains(&cfg.members[2].peer_id.to_string()),
        "{body_line}"
    );
    // A member's name, or a directory that already holds the region, is refused.
    let o = run("us");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already a member"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!run("sa").status.success());
}
