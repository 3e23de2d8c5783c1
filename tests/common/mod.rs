//! Test helpers over the one process harness, [`wallet::cluster::LocalCluster`] (real
//! `walletd` processes, the binary under test): a cluster in a temp dir, bounded waits that
//! panic with the regions' logs, readers of status, metrics and raw JSON bodies, and [`Api`],
//! a region client whose requests panic on transport errors.
//!
//! Every answer a cluster's clients receive is checked against the OpenAPI document
//! ([`contract_check`], tests/common/openapi.rs): status, content type and body schema, and
//! the request body against its schema; a mismatch fails the request.
#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
pub use wallet::cluster::{metric, Answer, AnswerCheck, Client, ClusterOptions, LocalCluster};

#[path = "openapi.rs"]
mod openapi;
pub use openapi::Contract;

/// The API contract: the OpenAPI document the code generates (the one walletd serves; a unit
/// test keeps docs/openapi.json equal to it).
pub fn contract() -> &'static Contract {
    static C: OnceLock<Contract> = OnceLock::new();
    C.get_or_init(|| {
        Contract::new(
            serde_json::from_str(wallet::openapi::document_json()).expect("the document is JSON"),
        )
    })
}

/// The check [`cluster`] installs: every request and answer against [`contract`].
pub fn contract_check() -> AnswerCheck {
    AnswerCheck(Arc::new(|x| {
        contract().check(
            x.method,
            x.path,
            x.content_type,
            x.body,
            x.status,
            x.answer_content_type,
            x.answer,
        )
    }))
}

pub const BIN: &str = env!("CARGO_BIN_EXE_walletd");
/// Default bound of a wait.
pub const WAIT: Duration = Duration::from_secs(45);

/// `walletd init` for `regions` into a temp dir (removed when the cluster is dropped, which
/// also kills every region).
pub fn cluster(regions: &[&str]) -> LocalCluster {
    let mut o = ClusterOptions::new(BIN.into(), regions).expect("options");
    o.log_filter = "warn".into();
    o.scan_secrets_on_drop = true;
    o.check = Some(contract_check());
    LocalCluster::init(o).expect("init")
}

/// [`cluster`] with `policy` as every region's policy file.
pub fn cluster_with_policy(regions: &[&str], policy: &str) -> LocalCluster {
    let mut o = ClusterOptions::new(BIN.into(), regions).expect("options");
    o.log_filter = "warn".into();
    o.scan_secrets_on_drop = true;
    o.check = Some(contract_check());
    o.policy = Some(policy.to_string());
    LocalCluster::init(o).expect("init")
}

/// [`cluster`] of eu, us and ap, each compacting every `every` settled events into an
/// archive of `segment_bytes` segments, started and connected.
pub async fn compacting_cluster(every: u64, segment_bytes: u64) -> LocalCluster {
    let mut c = cluster(&["eu", "us", "ap"]);
    for i in 0..3 {
        c.rewrite_config(i, |t| {
            format!("compact_every_events = {every}\n{t}").replacen(
                "[storage]\n",
                &format!("[storage]\narchive_segment_bytes = {segment_bytes}\n"),
                1,
            )
        })
        .expect("config");
    }
    c.start_all().await.expect("start");
    wait_connected(&c, &[0, 1, 2]).await;
    c
}

/// A new region `name` added to the cluster, started, and joined through member #1's
/// `POST /v1/admin/members` (issue 12's path): its index.
pub async fn join_region(c: &mut LocalCluster, name: &str) -> usize {
    let (i, body) = c.add_region(name).expect("add region");
    start(c, i).await;
    let r = c
        .admin(1)
        .unwrap()
        .post(
            "/v1/admin/members",
            &serde_json::to_string(&body).unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);
    i
}

/// Starts region `i` and waits for its ready line.
pub async fn start(c: &mut LocalCluster, i: usize) {
    c.start(i).await.expect("start");
}

/// SIGTERM to region `i`; true when it exited with 0.
pub async fn term(c: &mut LocalCluster, i: usize) -> bool {
    c.stop(i).await == Some(0)
}

/// Runs region `i` expecting it to refuse to start: (exit code, stderr).
pub fn run_expect_failure(c: &mut LocalCluster, i: usize) -> (Option<i32>, String) {
    let (code, err) = c.run_to_exit(i).expect("run to exit");
    assert_ne!(
        code,
        Some(0),
        "walletd exited 0 although it should have refused to start"
    );
    (code, err)
}

/// Region `i`'s client with the client token.
pub fn region_api(c: &LocalCluster, i: usize) -> Api {
    Api(c.client(i).expect("region"))
}

/// Region `i`'s client with the admin token.
pub fn region_admin(c: &LocalCluster, i: usize) -> Api {
    Api(c.admin(i).expect("region"))
}

/// A region client for tests: every request must get an answer.
#[derive(Clone)]
pub struct Api(pub Client);

impl Api {
    pub fn url(&self) -> &str {
        self.0.url()
    }

    pub fn token(&self) -> &str {
        self.0.token()
    }

    pub fn http(&self) -> &reqwest::Client {
        self.0.http()
    }

    /// The same region with another token.
    pub fn with_token(&self, token: &str) -> Api {
        Api(self.0.with_token(token))
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.0.get(path).await.expect("request")
    }

    pub async fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> Answer {
        self.0.post(path, body, key).await.expect("request")
    }

    /// `POST path` with a body of this `Content-Type` (none if empty).
    pub async fn post_typed(&self, path: &str, content_type: &str, body: &str) -> Answer {
        self.0
            .post_typed(path, content_type, body)
            .await
            .expect("request")
    }

    /// A USD transaction.
    pub async fn tx(&self, account: &str, kind: &str, amount: &str, key: Option<&str>) -> Answer {
        self.0
            .tx(account, kind, amount, "USD", key)
            .await
            .expect("request")
    }

    /// (provisional, settled) of an account in `currency`, if it has events in it.
    pub async fn balance(&self, account: &str, currency: &str) -> Option<(String, String)> {
        let r = self.get(&format!("/v1/accounts/{account}/balances")).await;
        assert_eq!(r.status, 200, "{}", r.json);
        balance_in(&r.json, currency)
    }

    /// Every entry of an account's history, following cursors.
    pub async fn history(&self, account: &str) -> Vec<Value> {
        self.0.history(account).await.expect("history")
    }

    /// A sample of the region's `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> u64 {
        let (status, text) = self
            .0
            .with_token("")
            .get_raw("/metrics")
            .await
            .expect("metrics");
        assert_eq!(status, 200, "{text}");
        metric(&text, name).unwrap_or(0)
    }
}

/// (provisional, settled) in `currency` from a balances body.
pub fn balance_in(balances: &Value, currency: &str) -> Option<(String, String)> {
    balances["balances"].as_array().and_then(|l| {
        l.iter().find(|b| b["currency"] == currency).map(|b| {
            (
                b["provisional"].as_str().unwrap_or("").to_string(),
                b["settled"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

pub fn error_code(r: &Answer) -> String {
    r.json["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {} {}", r.status, r.json))
        .to_string()
}

/// Polls `f` every 50 ms until it is true; panics with the regions' logs after `timeout`.
pub async fn eventually<F, Fut>(c: &LocalCluster, what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() > deadline {
            let mut logs = String::new();
            for (i, r) in c.regions.iter().enumerate() {
                logs.push_str(&format!("--- {} ---\n{}\n", r.region, c.log_tail(i)));
            }
            panic!("timed out after {timeout:?} waiting for {what}\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn status(c: &LocalCluster, i: usize) -> Value {
    c.status(i).await.expect("status")
}

/// The entry of `region` in a status body's members.
pub fn member(status: &Value, region: &str) -> Value {
    status["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["region"] == region).cloned())
        .unwrap_or(Value::Null)
}

/// A metric sample (0 when absent).
pub async fn metric_of(c: &LocalCluster, i: usize, name: &str) -> u64 {
    metric(&c.metrics(i).await.expect("metrics"), name).unwrap_or(0)
}

/// (provisional, settled) of an account in USD, if it has USD events.
pub async fn balance(c: &LocalCluster, i: usize, account: &str) -> Option<(String, String)> {
    let v = c
        .get_ok(i, &format!("/v1/accounts/{account}/balances"))
        .await
        .expect("balances");
    balance_in(&v, "USD")
}

/// True when region `i` sees every region of `peers` (names) connected, heard and with the
/// same policy.
pub async fn sees(c: &LocalCluster, i: usize, peers: &[&str]) -> bool {
    let s = status(c, i).await;
    peers.iter().all(|p| {
        let m = member(&s, p);
        m["self"] == true
            || (m["connected"] == true && m["heard"] == true && m["policy_matches"] == true)
    })
}

/// Waits until every region in `idx` sees every other one in `idx`.
pub async fn wait_connected(c: &LocalCluster, idx: &[usize]) {
    let names: Vec<String> = idx.iter().map(|i| c.regions[*i].region.clone()).collect();
    eventually(c, "the regions to connect", WAIT, || {
        let names = names.clone();
        async move {
            let peers: Vec<&str> = names.iter().map(String::as_str).collect();
            for i in idx {
                if !sees(c, *i, &peers).await {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

/// An HLC string `"<ms>.<logical>"` as a comparable pair.
pub fn hlc(v: &Value) -> (u64, u64) {
    let s = v.as_str().unwrap_or_else(|| panic!("not an HLC: {v}"));
    let (a, b) = s.split_once('.').expect("ms.logical");
    (a.parse().expect("ms"), b.parse().expect("logical"))
}

/// The raw bodies a client would compare: each account's transaction list and balances,
/// and the compensation feed.
pub async fn raw_state(c: &LocalCluster, i: usize, accounts: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for a in accounts {
        for p in [
            format!("/v1/accounts/{a}/transactions?limit=1000"),
            format!("/v1/accounts/{a}/balances"),
        ] {
            let (st, body) = c.get_raw(i, &p).await.expect("get");
            assert_eq!(st, 200, "{p}: {body}");
            out.push(body);
        }
    }
    let (st, body) = c
        .get_raw(i, "/v1/compensations?limit=1000")
        .await
        .expect("feed");
    assert_eq!(st, 200, "{body}");
    out.push(body);
    out
}

/// Waits until [`converged`] holds for `idx` and `accounts`; panics with the regions' logs
/// after [`WAIT`].
pub async fn wait_converged(c: &LocalCluster, what: &str, idx: &[usize], accounts: &[String]) {
    eventually(c, what, WAIT, || async {
        converged(c, idx, accounts).await
    })
    .await;
}

/// True when every region in `idx` holds the same version vector, every listed event is
/// settled, and the raw bodies are identical.
pub async fn converged(c: &LocalCluster, idx: &[usize], accounts: &[String]) -> bool {
    let mut first: Option<(Value, Vec<String>)> = None;
    for i in idx {
        let vv = status(c, *i).await["version_vector"].clone();
        let raw = raw_state(c, *i, accounts).await;
        for body in raw.iter().take(raw.len().saturating_sub(1)).step_by(2) {
            let v: Value = serde_json::from_str(body).expect("json");
            let all_settled = v["transactions"]
                .as_array()
                .is_some_and(|l| l.iter().all(|t| t["settled"] == true));
            if !all_settled {
                return false;
            }
        }
        match &first {
            None => first = Some((vv, raw)),
            Some((v0, r0)) => {
                if *v0 != vv || *r0 != raw {
                    return false;
                }
            }
        }
    }
    true
}

#[path = "cents.rs"]
mod cents;
#[allow(unused_imports)]
pub use cents::cents;

/// Full partition through each region's own fault endpoint: every region cuts itself off from
/// all (`{"isolate": [itself]}`); returns once no region sees a peer connected.
pub async fn cut_off_every_region(c: &LocalCluster) {
    for (i, r) in c.regions.iter().enumerate() {
        let body = serde_json::json!({ "isolate": [r.region] });
        let a = c
            .post(i, "/v1/admin/faults", &body, None, true)
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.json);
    }
    eventually(c, "every region to be alone", WAIT, || async {
        for i in 0..c.regions.len() {
            if !wallet::cluster::no_peer_connected(&status(c, i).await) {
                return false;
            }
        }
        true
    })
    .await;
}

/// Client load: 1.00 USD deposits on `accts` (in turn) at the regions `at` (in turn) until
/// [`Load::finish`]; every acknowledged id is recorded. A refused or failed deposit panics:
/// the loaded regions must stay up.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

pub fn deposit_load(c: &LocalCluster, at: &[usize], accts: &[String]) -> Load {
    use std::sync::atomic::Ordering;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    // The harness's client: it trusts the cluster's local CA (the regions serve HTTPS).
    let http = c.client(0).expect("client").http().clone();
    let urls: Vec<String> = at.iter().map(|i| c.regions[*i].http.clone()).collect();
    let token = c.token.clone();
    let accts = accts.to_vec();
    let task = {
        let (stop, acked) = (stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let url = &urls[n % urls.len()];
                let a = &accts[n % accts.len()];
                n += 1;
                let r = http
                    .post(format!("{url}/v1/accounts/{a}/transactions"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"type": "deposit", "amount": "1.00", "currency": "USD"}))
                    .send()
                    .await
                    .expect("the loaded regions stay up");
                assert_eq!(r.status().as_u16(), 201);
                let body: Value = r.json().await.expect("json");
                acked
                    .lock()
                    .expect("lock")
                    .push(body["id"].as_str().expect("id").to_string());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    Load { stop, acked, task }
}

impl Load {
    /// Stops the load and returns every acknowledged id.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("load");
        let v = self.acked.lock().expect("lock").clone();
        v
    }
}

/// Kills region `i`, removes its data dir, restarts it with `restore = true`, heals the
/// faults, and waits until it has sealed its old epoch and is ready.
pub async fn rebuild(c: &mut LocalCluster, i: usize) {
    c.kill(i);
    std::fs::remove_dir_all(c.data_dir(i).expect("dir")).expect("rm -rf");
    c.rewrite_config(i, |t| t.replace("restore = false", "restore = true"))
        .expect("config");
    start(c, i).await;
    c.heal().await.expect("heal");
    eventually(c, "the rebuilt region sealed and ready", WAIT, || async {
        let a = c.client(i).unwrap().with_token("").get("/readyz").await;
        a.is_ok_and(|a| a.status == 200)
    })
    .await;
    let log = c.log_tail(i);
    assert!(log.contains("epoch 2") || log.contains("epoch=2"), "{log}");
}
