//! Every endpoint and every error code, against a real `walletd` process.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_error_codes() {
    let mut c = cluster(&["eu"]);
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    let raw = api.http().clone();

    // Health, readiness, OpenAPI, metrics need no token.
    for p in [
        "/healthz",
        "/readyz",
        "/v1/openapi.json",
        "/openapi.json",
        "/metrics",
    ] {
        let r = raw.get(format!("{}{p}", api.url())).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{p}");
    }
    let oa: Value = raw
        .get(format!("{}/openapi.json", api.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(oa["openapi"].as_str().unwrap().starts_with("3."));
    assert!(oa["paths"]["/v1/accounts/{account}/transactions"].is_object());

    // Auth: none, wrong, client token on an admin route.
    let r = raw
        .get(format!("{}/v1/status", api.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["error"]["code"], "unauthorized");
    let bad = api.with_token("wrong-token-wrong-token");
    let r = bad.get("/v1/accounts/a/balances").await;
    assert_eq!((r.status, error_code(&r).as_str()), (401, "unauthorized"));
    let r = api
        .post_raw("/v1/admin/faults", r#"{"heal":true}"#, None)
        .await;
    assert_eq!((r.status, error_code(&r).as_str()), (403, "forbidden"));
    let admin = region_admin(&c, 0);
    let r = admin
        .post_raw("/v1/admin/faults", r#"{"isolate":["eu"]}"#, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["isolated"][0], "eu");
    let r = admin
        .post_raw("/v1/admin/faults", r#"{"heal":true}"#, None)
        .await;
    assert_eq!(r.status, 200);
    let r = admin
        .post_raw("/v1/admin/faults", r#"{"isolate":["EU"]}"#, None)
        .await;
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_region"));
    let r = admin
        .post_raw("/v1/admin/faults", r#"{"what":1}"#, None)
        .await;
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_json"));
    // Evidence: admins only, read-only, empty on a region that caught nobody.
    let r = api.get("/v1/admin/evidence").await;
    assert_eq!((r.status, error_code(&r).as_str()), (403, "forbidden"));
    let r = admin.get("/v1/admin/evidence").await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        r.json,
        serde_json::json!({"evidence": [], "settlement_blocked": false})
    );
    let r = admin.post_raw("/v1/admin/evidence", "{}", None).await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (405, "method_not_allowed")
    );
    assert!(oa["paths"]["/v1/admin/evidence"]["get"].is_object());

    // Unknown route and method: JSON errors.
    let r = api.get("/v1/nope").await;
    assert_eq!((r.status, error_code(&r).as_str()), (404, "not_found"));
    let r = api.post_raw("/v1/status", "{}", None).await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (405, "method_not_allowed")
    );

    // An account with no events: empty balances and history.
    let r = api.get("/v1/accounts/nobody/balances").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["balances"], serde_json::json!([]));
    let r = api.get("/v1/accounts/nobody/transactions").await;
    assert_eq!(r.json["transactions"], serde_json::json!([]));
    assert!(r.json["next"].is_null());

    // 201 with the documented shape, amounts rendered with minor units.
    let r = api.tx("alice", "deposit", "100", None).await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["id"], "eu:1");
    assert_eq!(r.json["account"], "alice");
    assert_eq!(r.json["type"], "deposit");
    assert_eq!(r.json["amount"], "100.00");
    assert_eq!(r.json["currency"], "USD");
    assert!(r.json["hlc"].is_string());
    assert_eq!(r.json["balance"]["provisional"], "100.00");
    let r = api
        .post_raw(
            "/v1/accounts/alice/transactions",
            r#"{"type":"deposit","amount":"5000","currency":"JPY","reference":"order 7"}"#,
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["amount"], "5000");
    assert_eq!(r.json["reference"], "order 7");
    let r = api.tx("alice", "purchase", "30.10", None).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json["balance"]["provisional"], "69.90");

    // 422 means insufficient funds, and only that.
    let r = api.tx("alice", "withdrawal", "69.91", None).await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (422, "insufficient_funds")
    );

    // Validation errors: each has its own code.
    let p = "/v1/accounts/alice/transactions";
    let cases: &[(&str, u16, &str)] = &[
        (
            r#"{"type":"deposit","amount":"1.001","currency":"USD"}"#,
            400,
            "amount_scale",
        ),
        (
            r#"{"type":"deposit","amount":"1.5","currency":"JPY"}"#,
            400,
            "amount_scale",
        ),
        (
            r#"{"type":"deposit","amount":"abc","currency":"USD"}"#,
            400,
            "invalid_amount",
        ),
        (
            r#"{"type":"deposit","amount":"0","currency":"USD"}"#,
            400,
            "invalid_amount",
        ),
        (
            r#"{"type":"deposit","amount":"-5","currency":"USD"}"#,
            400,
            "invalid_amount",
        ),
        (
            r#"{"type":"deposit","amount":"1e3","currency":"USD"}"#,
            400,
            "invalid_amount",
        ),
        (
            r#"{"type":"deposit","amount":"10000000000000","currency":"USD"}"#,
            400,
            "invalid_amount",
        ),
        (
            r#"{"type":"deposit","amount":100,"currency":"USD"}"#,
            400,
            "invalid_amount",
        ),
        (
            r#"{"type":"deposit","amount":"1","currency":"XXX"}"#,
            400,
            "unknown_currency",
        ),
        (
            r#"{"type":"deposit","amount":"1","currency":"usd"}"#,
            400,
            "unknown_currency",
        ),
        (
            r#"{"type":"gift","amount":"1","currency":"USD"}"#,
            400,
            "invalid_type",
        ),
        (
            r#"{"type":"reversal","amount":"1","currency":"USD"}"#,
            400,
            "invalid_type",
        ),
        (
            r#"{"type":5,"amount":"1","currency":"USD"}"#,
            400,
            "invalid_json",
        ),
        (r#"{"amount":"1","currency":"USD"}"#, 400, "invalid_json"),
        (
            r#"{"type":"deposit","amount":"1","currency":"USD","extra":1}"#,
            400,
            "invalid_json",
        ),
        (
            r#"{"type":"deposit","amount":"1","currency":"USD""#,
            400,
            "invalid_json",
        ),
        (r#"[1,2]"#, 400, "invalid_json"),
        ("", 400, "invalid_json"),
        (
            r#"{"type":"deposit","amount":"1","currency":"USD","reference":"a\u0001b"}"#,
            400,
            "invalid_reference",
        ),
    ];
    for (body, status, code) in cases {
        let r = api.post_raw(p, body, None).await;
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (*status, *code),
            "{body}"
        );
        assert!(r.json["error"]["message"].as_str().unwrap().len() > 3);
    }
    // Body over the limit (16 KiB by default).
    let big = format!(
        r#"{{"type":"deposit","amount":"1","currency":"USD","reference":"{}"}}"#,
        "x".repeat(20_000)
    );
    let r = api.post_raw(p, &big, None).await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (413, "payload_too_large")
    );
    // Account ids.
    let long = "a".repeat(65);
    for bad in [long.as_str(), "a%20b", "a$b"] {
        let r = api
            .post_raw(
                &format!("/v1/accounts/{bad}/transactions"),
                r#"{"type":"deposit","amount":"1","currency":"USD"}"#,
                None,
            )
            .await;
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (400, "invalid_account"),
            "{bad}"
        );
        let r = api.get(&format!("/v1/accounts/{bad}/balances")).await;
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (400, "invalid_account"),
            "{bad}"
        );
    }
    let ok = "A.b_c:d-9";
    let r = api.tx(ok, "deposit", "1", None).await;
    assert_eq!(r.status, 201, "{}", r.json);
    // Idempotency keys.
    let r = api
        .post_raw(
            p,
            r#"{"type":"deposit","amount":"1","currency":"USD"}"#,
            Some(&"k".repeat(256)),
        )
        .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (400, "invalid_idempotency_key")
    );

    // Balances list both currencies.
    let r = api.get("/v1/accounts/alice/balances").await;
    assert_eq!(r.json["account"], "alice");
    let b = r.json["balances"].as_array().unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0]["currency"], "JPY");
    assert_eq!(b[0]["provisional"], "5000");
    assert_eq!(b[1]["currency"], "USD");
    assert_eq!(b[1]["provisional"], "69.90");
    assert!(b[1]["settled"].is_string());

    // History: pages with opaque cursors, total order, status fields.
    let r = api.get("/v1/accounts/alice/transactions?limit=2").await;
    assert_eq!(r.status, 200);
    let page1 = r.json["transactions"].as_array().unwrap().clone();
    assert_eq!(page1.len(), 2);
    let next = r.json["next"].as_str().unwrap().to_string();
    let r = api
        .get(&format!(
            "/v1/accounts/alice/transactions?limit=2&after={next}"
        ))
        .await;
    let page2 = r.json["transactions"].as_array().unwrap().clone();
    assert_eq!(page2.len(), 1);
    assert!(r.json["next"].is_null());
    let ids: Vec<&str> = page1
        .iter()
        .chain(&page2)
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["eu:1", "eu:2", "eu:3"]);
    for t in page1.iter().chain(&page2) {
        assert!(
            t["status"] == "provisional" || t["status"] == "settled",
            "{t}"
        );
        assert!(t["settled"].is_boolean());
        assert!(t["hlc"].is_string());
    }
    for q in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "limit=+5",
        "after=zz",
        "after=00",
        "bogus=1",
    ] {
        let r = api
            .get(&format!("/v1/accounts/alice/transactions?{q}"))
            .await;
        assert_eq!(r.status, 400, "{q}");
        let code = error_code(&r);
        assert!(
            ["invalid_limit", "invalid_cursor", "invalid_query"].contains(&code.as_str()),
            "{q}: {code}"
        );
    }

    // One transaction by id; its status settles (single region: the watermark follows the clock).
    let mut settled = false;
    for _ in 0..100 {
        let r = api.get("/v1/transactions/eu:1").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json["account"], "alice");
        assert_eq!(r.json["amount"], "100.00");
        if r.json["status"] == "settled" {
            settled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(settled, "eu:1 never settled");
    let r = api.get("/v1/transactions/eu:999").await;
    assert_eq!((r.status, error_code(&r).as_str()), (404, "not_found"));
    let r = api.get("/v1/transactions/nonsense").await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (400, "invalid_transaction_id")
    );

    // Compensations feed: empty, but `next` is always a cursor to resume from.
    let r = api.get("/v1/compensations").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["compensations"], serde_json::json!([]));
    let next = r.json["next"].as_str().unwrap().to_string();
    let r = api
        .get(&format!("/v1/compensations?after={next}&limit=10"))
        .await;
    assert_eq!(r.status, 200);
    let r = api.get("/v1/compensations?after=nope").await;
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_cursor"));

    // Status.
    let r = api.get("/v1/status").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["region"], "eu");
    assert_eq!(r.json["restoring"], false);
    assert_eq!(r.json["members"][0]["region"], "eu");
    assert_eq!(r.json["members"][0]["held"], 4);
    assert!(r.json["watermark"].is_string());
    assert!(r.json["settlement_lag_ms"].is_u64());
    assert_eq!(r.json["policy_hash"].as_str().unwrap().len(), 64);

    // Metrics mention the routes and the accepted count.
    let m = raw
        .get(format!("{}/metrics", api.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "walletd_http_requests_total{route=\"/v1/accounts/{account}/transactions\",method=\"POST\",status=\"201\"} 4",
        "walletd_transactions_accepted_total 4",
        "walletd_transactions_refused_total{reason=\"insufficient_funds\"} 1",
        "walletd_events{origin=\"eu\"} 4",
        "walletd_storage_commit_records_bucket",
        "walletd_replication_bytes_total{direction=\"sent\"}",
        "walletd_watermark_lag_ms",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_endpoint_is_off_unless_enabled() {
    let mut c = cluster(&["eu"]);
    let config = c.regions[0].config.clone();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[faults]\nenabled = true", "[faults]\nenabled = false"),
    )
    .unwrap();
    start(&mut c, 0).await;
    let admin = region_admin(&c, 0);
    let r = admin
        .post_raw("/v1/admin/faults", r#"{"heal":true}"#, None)
        .await;
    assert_eq!((r.status, error_code(&r).as_str()), (404, "not_found"));
}

#[test]
fn bad_config_fails_with_field_and_reason() {
    let mut c = cluster(&["eu"]);
    let config = c.regions[0].config.clone();
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("peer_id = \"").unwrap() + "peer_id = \"".len();
    let end = start + text[start..].find('"').unwrap();
    let bad = format!("{}xyz{}", &text[..start], &text[end..]);
    std::fs::write(&config, bad).unwrap();
    let (st, err) = run_expect_failure(&mut c, 0);
    assert_ne!(st, Some(0));
    assert!(
        err.contains("config error: members[0].peer_id: \"xyz\" is not a valid peer id"),
        "{err}"
    );
    std::fs::write(
        &config,
        text.replace("listen = \"127.0.0.1:", "listen = \"nowhere:"),
    )
    .unwrap();
    let (st, err) = run_expect_failure(&mut c, 0);
    assert_ne!(st, Some(0));
    assert!(err.contains("config error: http.listen"), "{err}");
    // A p2p budget below what a member's largest batch needs on each connection.
    std::fs::write(
        &config,
        text.replace("\n[p2p]\n", "\n[p2p]\npeer_inbound_bytes_max = 1048576\n"),
    )
    .unwrap();
    let (st, err) = run_expect_failure(&mut c, 0);
    assert_ne!(st, Some(0));
    assert!(
        err.contains("config error: p2p.peer_inbound_bytes_max: must be between 33554432 and"),
        "{err}"
    );
}

#[test]
fn walletd_init_writes_a_cluster_file_and_configs_that_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(BIN)
        .args(["init", "--regions", "eu,us", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run walletd init");
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("cluster.json")).expect("cluster.json");
    let json: Value = serde_json::from_str(&text).expect("cluster.json is JSON");
    assert!(
        json["token"].as_str().is_some_and(|t| t.len() >= 16),
        "{json}"
    );
    assert!(json["admin_token"].is_string(), "{json}");
    let regions = json["regions"].as_array().expect("regions");
    assert_eq!(regions.len(), 2, "{json}");
    for (r, name) in regions.iter().zip(["eu", "us"]) {
        assert_eq!(r["region"], name);
        let cfg = wallet::config::NodeConfig::load(std::path::Path::new(
            r["config"].as_str().expect("config path"),
        ))
        .expect("the written config loads");
        assert_eq!(cfg.region.as_str(), name);
        assert_eq!(cfg.members.len(), 2);
        // Fault injection is off unless asked for (`--faults`).
        assert!(!cfg.faults_enabled);
    }
    // `--faults` (and `--faults=true`) turn it on; `--no-faults` and `--faults=false` keep it
    // off; `--group-commit=false` and `--no-group-commit` turn group commit off (each spelling
    // documented in docs/operations.md, through the binary).
    for (flag, on, gc_flag, gc_on) in [
        ("--faults", true, "--group-commit=false", false),
        ("--faults=true", true, "--no-group-commit", false),
        ("--faults=false", false, "--group-commit=true", true),
        ("--no-faults", false, "--group-commit", true),
    ] {
        let d = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(BIN)
            .args(["init", "--regions", "eu", flag, gc_flag, "--dir"])
            .arg(d.path())
            .output()
            .expect("run walletd init");
        assert!(
            out.status.success(),
            "init {flag} {gc_flag} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg = wallet::config::NodeConfig::load(&d.path().join("eu.toml")).expect("loads");
        assert_eq!(cfg.faults_enabled, on, "{flag}");
        assert_eq!(cfg.group_commit, gc_on, "{gc_flag}");
    }
    // A second init into the same directory refuses to overwrite it.
    let again = std::process::Command::new(BIN)
        .args(["init", "--regions", "eu", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run walletd init");
    assert!(!again.status.success());
}

const FEE_7: &str = "[default]\naction = \"fee\"\nfee = { flat = \"7.00\", cap = \"35.00\" }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_routes_refuse_bad_bodies_and_apply_a_change() {
    let mut c = cluster(&["eu"]);
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    let admin = region_admin(&c, 0);

    // GET /v1/policy with a client token: version 1, the seed, as JSON in the file's shape.
    let r = api.get("/v1/policy").await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["version"], 1);
    let seed_hash = r.json["hash"].as_str().unwrap().to_string();
    assert_eq!(seed_hash.len(), 64);
    assert_eq!(r.json["policy"]["default"]["fee"]["flat"], "5");
    assert_eq!(r.json["history"].as_array().unwrap().len(), 1);
    assert_eq!(r.json["history"][0]["event"], Value::Null);
    assert_eq!(r.json["policy_file_ignored"], Value::Null);

    // A client token may not change it.
    let r = api
        .post_typed("/v1/admin/policy", "application/toml", FEE_7)
        .await;
    assert_eq!((r.status, error_code(&r).as_str()), (403, "forbidden"));
    // Invalid TOML.
    let r = admin
        .post_typed(
            "/v1/admin/policy",
            "application/toml",
            "[default\naction = ",
        )
        .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (400, "invalid_policy"),
        "{}",
        r.json
    );
    println!("invalid TOML: {}", r.json);
    // An invalid field: the error names it.
    let r = admin
        .post_typed(
            "/v1/admin/policy",
            "text/plain",
            "[default]\nfee = { percent = \"101\" }\n",
        )
        .await;
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_policy"));
    let msg = r.json["error"]["message"].as_str().unwrap();
    assert!(msg.contains("default.fee.percent"), "{msg}");
    // JSON: an unknown field, a wrong type, an invalid value; each named.
    for (body, field) in [
        (r#"{"default":{"fee":{"flatt":"1"}}}"#, "flatt"),
        (r#"{"default":{"fee":{"flat":5}}}"#, "default.fee.flat"),
        (r#"{"default":{"action":"refund"}}"#, "default.action"),
        (
            r#"{"default":{},"rule":[{"currency":"XXX"}]}"#,
            "rule[0].currency",
        ),
    ] {
        let r = admin
            .post_typed("/v1/admin/policy", "application/json", body)
            .await;
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (400, "invalid_policy"),
            "{body}"
        );
        let msg = r.json["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{body}: {msg}");
    }
    // Not JSON at all with a JSON type; an unsupported type; a body over the limit.
    let r = admin
        .post_typed("/v1/admin/policy", "application/json", "{not json")
        .await;
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_policy"));
    let r = admin
        .post_typed("/v1/admin/policy", "image/png", FEE_7)
        .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (415, "unsupported_media_type")
    );
    let big = format!("{FEE_7}# {}\n", "x".repeat(20_000));
    let r = admin
        .post_typed("/v1/admin/policy", "text/plain", &big)
        .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (413, "payload_too_large")
    );
    // Nothing was written.
    assert_eq!(api.get("/v1/policy").await.json["version"], 1);

    // A valid change as TOML: 201 with the event id, hash and HLC, once durable.
    let r = admin
        .post_typed("/v1/admin/policy", "application/toml", FEE_7)
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let id = r.json["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("eu:"), "{id}");
    let hash = r.json["hash"].as_str().unwrap().to_string();
    assert_ne!(hash, seed_hash);
    hlc(&r.json["hlc"]);
    eventually(&c, "the change to be in force", WAIT, || async {
        api.get("/v1/policy").await.json["version"] == 2
    })
    .await;
    let p = api.get("/v1/policy").await.json;
    assert_eq!(p["hash"], hash.as_str());
    assert_eq!(p["history"][1]["event"], id.as_str());
    assert_eq!(p["history"][1]["origin"], "eu");
    assert_eq!(p["history"][1]["hlc"], r.json["hlc"]);
    assert_eq!(p["policy"]["default"]["fee"]["flat"], "7");
    // The JSON it shows is accepted back (same fields): the same policy, the same hash.
    let r = admin
        .post_typed(
            "/v1/admin/policy",
            "application/json",
            &p["policy"].to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["hash"], hash.as_str());
    // The policy event is readable by id; the status shows the version.
    let t = api.get(&format!("/v1/transactions/{id}")).await;
    assert_eq!(t.status, 200, "{}", t.json);
    assert_eq!(t.json["type"], "policy");
    eventually(&c, "version 3 to be in force", WAIT, || async {
        api.get("/v1/status").await.json["policy_version"] == 3
    })
    .await;
}

#[test]
fn policy_check_validates_and_shows_what_changes() {
    let mut c = cluster(&["eu"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(start(&mut c, 0));
    let good = c.dir.join("fee7.toml");
    std::fs::write(&good, FEE_7).unwrap();
    let bad = c.dir.join("bad.toml");
    std::fs::write(&bad, "[default]\nfee = { cap = \"1\", minimum = \"2\" }\n").unwrap();
    let url = c.regions[0].http.clone();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["policy", "check"])
        .arg(&good)
        .args(["--url", &url, "--token", &c.token]);
    if let Some(ca) = &c.ca {
        cmd.arg("--ca").arg(ca);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("version 1"), "{stdout}");
    // 10, 100, 1000 USD overdrawn: 5.00 today, 7.00 after. (JPY loses its own rule: the new
    // file has none, so it moves from 500 to 7 yen.)
    assert!(
        stdout.contains("5.00 / 5.00 / 5.00 -> 7.00 / 7.00 / 7.00"),
        "{stdout}"
    );
    assert!(stdout.contains("500 / 500 / 500 -> 7 / 7 / 7"), "{stdout}");
    assert!(stdout.contains("4 line(s) change"), "{stdout}");
    let out = std::process::Command::new(BIN)
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("default.fee.cap"), "{stderr}");
    // Against a config (its seed file).
    let out = std::process::Command::new(BIN)
        .args(["policy", "check"])
        .arg(&good)
        .arg("--config")
        .arg(&c.regions[0].config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("-> 7.00"));
}

/// One request by hand (any method), checked against the contract like every other answer.
async fn request(api: &Api, method: &str, path: &str) -> (u16, String) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = api
        .http()
        .request(m, format!("{}{path}", api.url()))
        .bearer_auth(api.token());
    let body = if method == "GET" { "" } else { "{}" };
    let ct = (!body.is_empty()).then_some("application/json");
    if let Some(ct) = ct {
        rb = rb.header("content-type", ct).body(body);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let answer_ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = r.text().await.expect("body");
    if let Err(e) = contract().check(method, path, ct, body, status, answer_ct.as_deref(), &text) {
        panic!("{method} {path}: {e}");
    }
    (status, text)
}

/// The OpenAPI document against the running router: every documented (path, method) is
/// served, every other method on a documented path is `405`, an unknown path `404`; the
/// document is served without a token, and it is the generated one and the checked-in one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_and_router_agree() {
    let mut c = cluster(&["eu"]);
    start(&mut c, 0).await;
    let admin = region_admin(&c, 0);
    let anon = admin.with_token("");
    for p in ["/v1/openapi.json", "/openapi.json"] {
        let (status, body) = anon.0.get_raw(p).await.expect("get");
        assert_eq!(status, 200, "{p}: {body}");
        assert!(
            body == wallet::openapi::document_json(),
            "{p} is not the generated document"
        );
    }
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
        .expect("docs/openapi.json");
    assert!(
        file == wallet::openapi::document_json(),
        "docs/openapi.json is stale: UPDATE_OPENAPI=1 cargo test -p wallet --lib openapi"
    );

    let paths = contract().doc()["paths"]
        .as_object()
        .expect("paths")
        .clone();
    let mut served = Vec::new();
    for (template, item) in &paths {
        let path = template
            .replace("{account}", "probe")
            .replace("{id}", "eu:1");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let documented = item.get(method.to_ascii_lowercase()).is_some();
            let (status, body) = request(&admin, method, &path).await;
            let routed = status != 405 && !(status == 404 && body.contains("no route for"));
            assert_eq!(
                routed, documented,
                "{method} {path}: documented {documented}, answered {status} {body}"
            );
            if documented {
                served.push(format!("{method} {template}"));
            }
        }
    }
    assert_eq!(served.len(), 21, "{served:?}");
    for p in ["/v1/nope", "/nope", "/v1/accounts/a/nope", "/v1/accounts/a"] {
        let (status, body) = request(&admin, "GET", p).await;
        assert_eq!(status, 404, "{p}: {body}");
    }
}
