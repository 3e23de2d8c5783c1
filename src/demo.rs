//! `walletd demo`: three real regions on 127.0.0.1, a partition, a double spend, the heal and
//! the settlement, in one command.
//!
//! ```text
//!   init (temp dir) ─> spawn `walletd run` ×3 ─> deposit 100 at eu ─> isolate us
//!     ─> purchase 100 at eu and at us (both 201) ─> heal ─> poll until every region holds
//!        the same history, balances and compensation feed ─> table ─> exit 0 / 1
//! ```
//!
//! The regions are separate processes (the current executable with `run --config`), talking
//! libp2p to each other exactly as in production; the demo only uses their HTTP API. The
//! policy is a file the user may edit (`--policy`, default `examples/demo-policy.toml`).
//!
//! [`LocalCluster`] (init, spawn, stop, HTTP helpers, fault injection) is public: the
//! catch-up benchmark and the cluster tests drive their clusters with it too. Its children
//! are killed when it is dropped, so an error, a panic or Ctrl-C never leaves a region behind.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wallet_core::{Policy, RegionId};

use crate::init::{self, InitError, InitOptions};

/// Where the demo looks for its policy, relative to the current directory and to the crate.
pub const DEMO_POLICY_PATH: &str = "examples/demo-policy.toml";
/// The demo policy compiled in, used when no file is found.
pub const DEMO_POLICY_EMBEDDED: &str = include_str!("../examples/demo-policy.toml");
/// The demo's regions; the second one is cut off.
pub const DEMO_REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// The demo account.
pub const DEMO_ACCOUNT: &str = "alice";
/// The demo amount (deposited once, spent twice).
pub const DEMO_AMOUNT: &str = "100.00";
/// Longest wait for a region's ready line.
pub const READY_TIMEOUT_MS: u64 = 60_000;
/// Longest wait for replication while connected (deposit, connections).
pub const REPLICATION_TIMEOUT_MS: u64 = 30_000;
/// Longest wait for settlement after the heal.
pub const SETTLEMENT_TIMEOUT_MS: u64 = 60_000;
/// Longest wait for a region to stop after SIGTERM before it is killed.
pub const STOP_TIMEOUT_MS: u64 = 30_000;
/// Poll period while waiting.
pub const POLL_INTERVAL_MS: u64 = 20;
/// Timeout of one HTTP request.
pub const HTTP_TIMEOUT_MS: u64 = 30_000;
/// Most log lines quoted in an error.
pub const LOG_TAIL_LINES_MAX: usize = 20;
/// Page size used to read lists.
pub const PAGE_LIMIT: usize = 1_000;
/// Most pages read for one list (bounds every loop).
pub const PAGES_MAX: usize = 10_000;

/// What can go wrong in the demo (and in [`LocalCluster`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The policy file is missing or invalid.
    #[error("policy {path}: {reason}")]
    Policy {
        /// File (or "embedded").
        path: String,
        /// Why.
        reason: String,
    },
    /// `init` failed.
    #[error(transparent)]
    Init(#[from] InitError),
    /// File system.
    #[error("{path}: {reason}")]
    Io {
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A region could not be started or died.
    #[error("region {region}: {reason}")]
    Region {
        /// Region id.
        region: String,
        /// Why (with the end of its log).
        reason: String,
    },
    /// A request could not be sent or its answer read.
    #[error("{what}: {reason}")]
    Request {
        /// The request.
        what: String,
        /// Why.
        reason: String,
    },
    /// A request got an unexpected status.
    #[error("{what}: expected HTTP {expected}, got {status}: {body}")]
    Status {
        /// The request.
        what: String,
        /// Expected status.
        expected: u16,
        /// Actual status.
        status: u16,
        /// Body.
        body: String,
    },
    /// A bounded wait ran out.
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        ms: u64,
    },
    /// The regions did not agree.
    #[error("regions disagree: {0}")]
    Disagree(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// The async runtime could not start.
    #[error("runtime: {0}")]
    Runtime(String),
}

/// `println!` that ignores a closed stdout (`walletd demo | head` must not panic).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> DemoError {
    DemoError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// How to build a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Executable to spawn for a region.
    pub exe: PathBuf,
    /// Arguments before the config path (`["run", "--config"]` for `walletd`).
    pub run_args: Vec<String>,
    /// Regions.
    pub regions: Vec<RegionId>,
    /// Directory to init into and keep; `None`: a fresh temp dir, removed on drop.
    pub dir: Option<PathBuf>,
    /// Policy text written to `DIR/policy.toml` (every region's policy file); `None` keeps
    /// `init`'s default.
    pub policy: Option<String>,
    /// `RUST_LOG` of the regions (their stderr goes to `DIR/<region>.log`).
    pub log_filter: String,
}

impl ClusterOptions {
    /// `walletd run --config` children of `exe` for `regions`, in a temp dir.
    pub fn new(exe: PathBuf, regions: &[&str]) -> Result<ClusterOptions, DemoError> {
        let regions = init::parse_regions(&regions.join(","))?;
        Ok(ClusterOptions {
            exe,
            run_args: vec!["run".into(), "--config".into()],
            regions,
            dir: None,
            policy: None,
            log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        })
    }
}

/// One region of a [`LocalCluster`].
#[derive(Debug)]
pub struct RegionProc {
    /// Region id.
    pub region: String,
    /// Base URL of its HTTP API.
    pub http: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its stderr log.
    pub log: PathBuf,
    out: PathBuf,
    child: Option<Child>,
}

impl RegionProc {
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// A local cluster of real region processes on 127.0.0.1, initialised with `walletd init`'s
/// library function. Dropping it kills every region (and removes a temp dir).
#[derive(Debug)]
pub struct LocalCluster {
    /// The cluster directory (configs, keys, policy, data, logs).
    pub dir: PathBuf,
    /// A client token.
    pub token: String,
    /// An admin token.
    pub admin_token: String,
    /// The regions, in the order given.
    pub regions: Vec<RegionProc>,
    exe: PathBuf,
    run_args: Vec<String>,
    log_filter: String,
    remove_dir: bool,
    http: reqwest::Client,
}

/// An HTTP answer: status and JSON body (a JSON string if the body is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub json: Value,
}

impl LocalCluster {
    /// Writes configs, keys, policy and tokens; starts nothing.
    pub fn init(opts: ClusterOptions) -> Result<LocalCluster, DemoError> {
        let (dir, remove_dir) = match opts.dir {
            Some(d) => (d, false),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "walletd-cluster-{}-{}",
                    std::process::id(),
                    &init::random_token()[..12]
                ));
                (d, true)
            }
        };
        let file = init::init(&InitOptions {
            regions: opts.regions,
            dir: dir.clone(),
            faults: true,
            group_commit: true,
        })?;
        let dir = dir.canonicalize().map_err(|e| io_err(&dir, e))?;
        if let Some(p) = &opts.policy {
            let path = dir.join("policy.toml");
            std::fs::write(&path, p).map_err(|e| io_err(&path, e))?;
        }
        let regions = file
            .regions
            .iter()
            .map(|r| RegionProc {
                region: r.region.clone(),
                http: r.http.clone(),
                config: PathBuf::from(&r.config),
                log: dir.join(format!("{}.log", r.region)),
                out: dir.join(format!("{}.out", r.region)),
                child: None,
            })
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(HTTP_TIMEOUT_MS))
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| DemoError::Runtime(e.to_string()))?;
        Ok(LocalCluster {
            dir,
            token: file.token,
            admin_token: file.admin_token,
            regions,
            exe: opts.exe,
            run_args: opts.run_args,
            log_filter: opts.log_filter,
            remove_dir,
            http,
        })
    }

    /// Index of a region by name.
    pub fn index(&self, region: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.region == region)
    }

    fn region(&self, i: usize) -> Result<&RegionProc, DemoError> {
        self.regions.get(i).ok_or_else(|| DemoError::Region {
            region: format!("#{i}"),
            reason: "no such region".into(),
        })
    }

    /// The last lines of a region's log.
    pub fn log_tail(&self, i: usize) -> String {
        let Some(r) = self.regions.get(i) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&r.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES_MAX);
        lines.get(from..).unwrap_or_default().join("\n")
    }

    /// Spawns region `i` (does not wait for it).
    pub fn spawn(&mut self, i: usize) -> Result<(), DemoError> {
        let r = self.region(i)?;
        if r.running() {
            return Ok(());
        }
        let out = std::fs::File::create(&r.out).map_err(|e| io_err(&r.out, e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&r.log)
            .map_err(|e| io_err(&r.log, e))?;
        let child = Command::new(&self.exe)
            .args(&self.run_args)
            .arg(&r.config)
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .map_err(|e| DemoError::Region {
                region: r.region.clone(),
                reason: format!("cannot spawn {}: {e}", self.exe.display()),
            })?;
        if let Some(r) = self.regions.get_mut(i) {
            r.child = Some(child);
        }
        Ok(())
    }

    /// Waits for region `i`'s ready line; fails if it exits first or the wait runs out.
    pub async fn wait_ready(&mut self, i: usize) -> Result<(), DemoError> {
        let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
        loop {
            let tail = self.log_tail(i);
            let r = self.regions.get_mut(i).ok_or_else(|| DemoError::Region {
                region: format!("#{i}"),
                reason: "no such region".into(),
            })?;
            let out = std::fs::read_to_string(&r.out).unwrap_or_default();
            if out.lines().any(|l| l.contains(" ready ")) {
                return Ok(());
            }
            let exited = match r.child.as_mut() {
                Some(c) => c.try_wait().ok().flatten(),
                None => {
                    return Err(DemoError::Region {
                        region: r.region.clone(),
                        reason: "not started".into(),
                    })
                }
            };
            if let Some(st) = exited {
                r.child = None;
                return Err(DemoError::Region {
                    region: r.region.clone(),
                    reason: format!("exited before it was ready ({st}); log:\n{tail}"),
                });
            }
            if Instant::now() > deadline {
                return Err(DemoError::Region {
                    region: r.region.clone(),
                    reason: format!("not ready after {READY_TIMEOUT_MS} ms; log:\n{tail}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Spawns region `i` and waits until it is ready.
    pub async fn start(&mut self, i: usize) -> Result<(), DemoError> {
        self.spawn(i)?;
        self.wait_ready(i).await
    }

    /// Spawns every region, then waits until each is ready.
    pub async fn start_all(&mut self) -> Result<(), DemoError> {
        for i in 0..self.regions.len() {
            self.spawn(i)?;
        }
        for i in 0..self.regions.len() {
            self.wait_ready(i).await?;
        }
        Ok(())
    }

    /// SIGKILL region `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(c) = self.regions.get_mut(i).and_then(|r| r.child.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(r) = self.regions.get_mut(i) {
            r.child = None;
        }
    }

    /// SIGTERM region `i` and wait for it to exit (SIGKILL after [`STOP_TIMEOUT_MS`]).
    /// Returns its exit code if it exited by itself.
    pub async fn stop(&mut self, i: usize) -> Option<i32> {
        let pid = self.regions.get(i).and_then(|r| r.pid())?;
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
        while Instant::now() < deadline {
            let st = self
                .regions
                .get_mut(i)
                .and_then(|r| r.child.as_mut())
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(st) = st {
                if let Some(r) = self.regions.get_mut(i) {
                    r.child = None;
                }
                return st.code();
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        self.kill(i);
        None
    }

    /// Kills every region.
    pub fn kill_all(&mut self) {
        for i in 0..self.regions.len() {
            self.kill(i);
        }
    }

    async fn send(&self, what: String, rb: reqwest::RequestBuilder) -> Result<Answer, DemoError> {
        let r = rb.send().await.map_err(|e| DemoError::Request {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(|e| DemoError::Request {
            what,
            reason: e.to_string(),
        })?;
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, json })
    }

    /// `GET path` on region `i` with the client token.
    pub async fn get(&self, i: usize, path: &str) -> Result<Answer, DemoError> {
        let r = self.region(i)?;
        let what = format!("GET {} {path}", r.region);
        self.send(
            what,
            self.http
                .get(format!("{}{path}", r.http))
                .bearer_auth(&self.token),
        )
        .await
    }

    /// `GET path` on region `i` with the admin token.
    pub async fn get_admin(&self, i: usize, path: &str) -> Result<Answer, DemoError> {
        let r = self.region(i)?;
        let what = format!("GET {} {path} (admin)", r.region);
        self.send(
            what,
            self.http
                .get(format!("{}{path}", r.http))
                .bearer_auth(&self.admin_token),
        )
        .await
    }

    /// `GET path` on region `i`: status and the body exactly as sent (for byte comparisons).
    pub async fn get_raw(&self, i: usize, path: &str) -> Result<(u16, String), DemoError> {
        let r = self.region(i)?;
        let what = format!("GET {} {path}", r.region);
        let a = self
            .http
            .get(format!("{}{path}", r.http))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| DemoError::Request {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        let status = a.status().as_u16();
        let text = a.text().await.map_err(|e| DemoError::Request {
            what,
            reason: e.to_string(),
        })?;
        Ok((status, text))
    }

    /// `GET path` expecting 200.
    pub async fn get_ok(&self, i: usize, path: &str) -> Result<Value, DemoError> {
        let a = self.get(i, path).await?;
        expect(a, 200, || format!("GET {path} on #{i}"))
    }

    /// `POST path` with a JSON body on region `i`; `admin` picks the admin token.
    pub async fn post(
        &self,
        i: usize,
        path: &str,
        body: &Value,
        key: Option<&str>,
        admin: bool,
    ) -> Result<Answer, DemoError> {
        let r = self.region(i)?;
        let what = format!("POST {} {path}", r.region);
        let token = if admin {
            &self.admin_token
        } else {
            &self.token
        };
        let mut rb = self
            .http
            .post(format!("{}{path}", r.http))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            rb = rb.header("Idempotency-Key", k);
        }
        self.send(what, rb).await
    }

    /// Submits a transaction on region `i`.
    pub async fn tx(
        &self,
        i: usize,
        account: &str,
        kind: &str,
        amount: &str,
        currency: &str,
        key: Option<&str>,
    ) -> Result<Answer, DemoError> {
        let body = json!({"type": kind, "amount": amount, "currency": currency});
        self.post(
            i,
            &format!("/v1/accounts/{account}/transactions"),
            &body,
            key,
            false,
        )
        .await
    }

    /// `GET /metrics` on region `i`.
    pub async fn metrics(&self, i: usize) -> Result<String, DemoError> {
        let r = self.region(i)?;
        let what = format!("GET {} /metrics", r.region);
        let a = self
            .http
            .get(format!("{}/metrics", r.http))
            .send()
            .await
            .map_err(|e| DemoError::Request {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        a.text().await.map_err(|e| DemoError::Request {
            what,
            reason: e.to_string(),
        })
    }

    /// Cuts `region` off: every running region gets `{"isolate":[region]}` (the region
    /// itself thereby cuts itself off from all).
    pub async fn isolate(&self, region: &str) -> Result<(), DemoError> {
        self.faults(&json!({ "isolate": [region] })).await
    }

    /// Heals every running region.
    pub async fn heal(&self) -> Result<(), DemoError> {
        self.faults(&json!({"heal": true})).await
    }

    async fn faults(&self, body: &Value) -> Result<(), DemoError> {
        for (i, r) in self.regions.iter().enumerate() {
            if !r.running() {
                continue;
            }
            let a = self.post(i, "/v1/admin/faults", body, None, true).await?;
            expect(a, 200, || {
                format!("POST {} /v1/admin/faults {body}", r.region)
            })?;
        }
        Ok(())
    }

    /// Every entry of an account's history on region `i` (all pages).
    pub async fn history(&self, i: usize, account: &str) -> Result<Vec<Value>, DemoError> {
        self.pages(
            i,
            &format!("/v1/accounts/{account}/transactions"),
            "transactions",
            true,
        )
        .await
    }

    /// The whole compensation feed of region `i`.
    pub async fn feed(&self, i: usize) -> Result<Vec<Value>, DemoError> {
        self.pages(i, "/v1/compensations", "compensations", false)
            .await
    }

    async fn pages(
        &self,
        i: usize,
        path: &str,
        field: &str,
        null_ends: bool,
    ) -> Result<Vec<Value>, DemoError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let p = match &after {
                Some(c) => format!("{path}?limit={PAGE_LIMIT}&after={c}"),
                None => format!("{path}?limit={PAGE_LIMIT}"),
            };
            let v = self.get_ok(i, &p).await?;
            let list = v[field].as_array().cloned().unwrap_or_default();
            let n = list.len();
            out.extend(list);
            // A list's `next` is null on its last page; the feed's is always a cursor, and a
            // short page is its last.
            let last = if null_ends { false } else { n < PAGE_LIMIT };
            match v["next"].as_str() {
                Some(c) if !last => after = Some(c.to_string()),
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// `GET /v1/status` on region `i`.
    pub async fn status(&self, i: usize) -> Result<Value, DemoError> {
        self.get_ok(i, "/v1/status").await
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Checks an answer's status; returns its body.
pub fn expect(a: Answer, status: u16, what: impl FnOnce() -> String) -> Result<Value, DemoError> {
    if a.status == status {
        Ok(a.json)
    } else {
        Err(DemoError::Status {
            what: what(),
            expected: status,
            status: a.status,
            body: a.json.to_string(),
        })
    }
}

/// The value of one sample in Prometheus text (`name` includes its labels exactly as
/// rendered, e.g. `walletd_replication_bytes_total{direction="sent"}`). Integers only.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let v = rest.strip_prefix(' ')?;
        v.trim().parse().ok()
    })
}

/// Polls `f` every [`POLL_INTERVAL_MS`] until it returns true; returns how long it took.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout_ms: u64,
    mut f: F,
) -> Result<Duration, DemoError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, DemoError>>,
{
    let start = Instant::now();
    let deadline = start + Duration::from_millis(timeout_ms);
    loop {
        if f().await? {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout {
                what: what.to_string(),
                ms: timeout_ms,
            });
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// True when every member in a status body is connected, heard and runs our policy.
pub fn all_members_up(status: &Value) -> bool {
    status["members"].as_array().is_some_and(|ms| {
        ms.iter().all(|m| {
            m["self"] == true
                || (m["connected"] == true && m["heard"] == true && m["policy_matches"] == true)
        })
    })
}

/// True when no peer in a status body is connected.
pub fn no_peer_connected(status: &Value) -> bool {
    status["members"].as_array().is_some_and(|ms| {
        ms.iter()
            .all(|m| m["self"] == true || m["connected"] == false)
    })
}

/// Options of `walletd demo`.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Policy file; default [`DEMO_POLICY_PATH`] (or the embedded copy).
    pub policy: Option<PathBuf>,
    /// Keep the cluster directory here (must not hold a cluster yet) instead of a temp dir.
    pub keep: Option<PathBuf>,
}

/// Finds and validates the demo policy: returns (where it came from, text).
pub fn load_policy(arg: Option<&Path>) -> Result<(String, String), DemoError> {
    let read = |p: &Path| -> Result<(String, String), DemoError> {
        let text = std::fs::read_to_string(p).map_err(|e| DemoError::Policy {
            path: p.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok((p.display().to_string(), text))
    };
    let (source, text) = match arg {
        Some(p) => read(p)?,
        None => {
            let candidates = [
                PathBuf::from(DEMO_POLICY_PATH),
                Path::new(env!("CARGO_MANIFEST_DIR")).join(DEMO_POLICY_PATH),
            ];
            match candidates.iter().find(|p| p.is_file()) {
                Some(p) => read(p)?,
                None => (
                    "embedded copy of examples/demo-policy.toml".to_string(),
                    DEMO_POLICY_EMBEDDED.to_string(),
                ),
            }
        }
    };
    Policy::from_toml(&text).map_err(|e| DemoError::Policy {
        path: source.clone(),
        reason: e.to_string(),
    })?;
    Ok((source, text))
}

/// One region's view after settlement.
#[derive(Debug, Clone)]
struct View {
    provisional: String,
    settled: String,
    history: Vec<Value>,
    feed: Vec<Value>,
    vv: Value,
    events: u64,
}

async fn view(c: &LocalCluster, i: usize) -> Result<View, DemoError> {
    let b = c
        .get_ok(i, &format!("/v1/accounts/{DEMO_ACCOUNT}/balances"))
        .await?;
    let usd = b["balances"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["currency"] == "USD").cloned())
        .unwrap_or(Value::Null);
    let s = c.status(i).await?;
    Ok(View {
        provisional: usd["provisional"].as_str().unwrap_or("-").to_string(),
        settled: usd["settled"].as_str().unwrap_or("-").to_string(),
        history: c.history(i, DEMO_ACCOUNT).await?,
        feed: c.feed(i).await?,
        vv: s["version_vector"].clone(),
        events: s["events"].as_u64().unwrap_or(0),
    })
}

/// Why the views disagree, or `None` when every region holds the same settled state.
fn disagreement(views: &[View], names: &[String], ids: &[String]) -> Option<String> {
    let first = views.first()?;
    for (v, n) in views.iter().zip(names) {
        for id in ids {
            if !v.history.iter().any(|e| e["id"] == id.as_str()) {
                return Some(format!("{n} does not hold {id} yet"));
            }
        }
        if let Some(e) = v.history.iter().find(|e| e["settled"] != true) {
            return Some(format!("{n}: {} is not settled yet", e["id"]));
        }
        if v.history != first.history {
            return Some(format!("{n}'s history differs from {}'s", names[0]));
        }
        if v.feed != first.feed {
            return Some(format!(
                "{n}'s compensation feed differs from {}'s",
                names[0]
            ));
        }
        if (&v.provisional, &v.settled) != (&first.provisional, &first.settled) {
            return Some(format!(
                "{n} has {}/{} where {} has {}/{}",
                v.provisional, v.settled, names[0], first.provisional, first.settled
            ));
        }
        if v.vv != first.vv {
            return Some(format!("{n}'s version vector {} differs", v.vv));
        }
    }
    None
}

fn comp_summary(feed: &[Value]) -> String {
    if feed.is_empty() {
        return "none".into();
    }
    feed.iter()
        .map(|c| {
            format!(
                "{} {}",
                c["id"].as_str().unwrap_or("?"),
                c["amount"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn step(label: &str, text: &str, ms: Option<u128>) {
    match ms {
        Some(ms) => out!("  {label:<12} {text:<62} {ms:>6} ms"),
        None => out!("  {label:<12} {text}"),
    }
}

/// The demo itself; prints as it goes and returns the final verdict.
pub async fn run(opts: &DemoOptions) -> Result<(), DemoError> {
    let (source, policy) = load_policy(opts.policy.as_deref())?;
    let exe = std::env::current_exe().map_err(|e| DemoError::Io {
        path: "current executable".into(),
        reason: e.to_string(),
    })?;
    let mut copts = ClusterOptions::new(exe, &DEMO_REGIONS)?;
    copts.dir = opts.keep.clone();
    copts.policy = Some(policy);
    let mut c = LocalCluster::init(copts)?;
    let names: Vec<String> = c.regions.iter().map(|r| r.region.clone()).collect();
    let (eu, us) = (0usize, 1usize);
    out!(
        "walletd demo: regions {} on 127.0.0.1, policy {source}",
        names.join(", ")
    );
    if opts.keep.is_some() {
        out!("  cluster dir  {} (logs: <region>.log)", c.dir.display());
    }

    // 1. Start and wait until every region sees every other one.
    let t = Instant::now();
    c.start_all().await?;
    let cr = &c;
    let n = names.len();
    wait_until(
        "every region to connect to every other",
        REPLICATION_TIMEOUT_MS,
        || async move {
            for i in 0..n {
                if !all_members_up(&cr.status(i).await?) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    step(
        "start",
        &format!("{n} processes ready, every member connected"),
        Some(t.elapsed().as_millis()),
    );

    // 2. Deposit and wait until every region holds it, settled.
    let t = Instant::now();
    let a = c
        .tx(
            eu,
            DEMO_ACCOUNT,
            "deposit",
            DEMO_AMOUNT,
            "USD",
            Some("demo-deposit"),
        )
        .await?;
    let dep = expect(a, 201, || "deposit at eu".into())?;
    let dep_id = dep["id"].as_str().unwrap_or("?").to_string();
    let cr = &c;
    wait_until(
        "every region to see the deposit",
        REPLICATION_TIMEOUT_MS,
        || async move {
            for i in 0..n {
                let b = cr
                    .get_ok(i, &format!("/v1/accounts/{DEMO_ACCOUNT}/balances"))
                    .await?;
                let ok = b["balances"].as_array().is_some_and(|l| {
                    l.iter().any(|x| {
                        x["currency"] == "USD"
                            && x["provisional"] == DEMO_AMOUNT
                            && x["settled"] == DEMO_AMOUNT
                    })
                });
                if !ok {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    step(
        "deposit",
        &format!("{DEMO_ACCOUNT} +{DEMO_AMOUNT} USD at eu ({dep_id}), settled in every region"),
        Some(t.elapsed().as_millis()),
    );

    // 3. Partition: us is cut off from everyone.
    c.isolate(&names[us]).await?;
    let cr = &c;
    let others: Vec<usize> = (0..n).filter(|i| *i != us).collect();
    let us_name = names[us].clone();
    wait_until("us to be cut off", REPLICATION_TIMEOUT_MS, || {
        let others = others.clone();
        let us_name = us_name.clone();
        async move {
            if !no_peer_connected(&cr.status(us).await?) {
                return Ok(false);
            }
            for i in others {
                let s = cr.status(i).await?;
                let cut = s["members"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .any(|m| m["region"] == us_name.as_str() && m["connected"] == false)
                });
                if !cut {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await?;
    step(
        "partition",
        "us cut off from eu and ap (POST /v1/admin/faults)",
        None,
    );

    // 4. The double spend.
    let a = c
        .tx(
            eu,
            DEMO_ACCOUNT,
            "purchase",
            DEMO_AMOUNT,
            "USD",
            Some("demo-eu"),
        )
        .await?;
    let pe = expect(a, 201, || "purchase at eu during the partition".into())?;
    let a = c
        .tx(
            us,
            DEMO_ACCOUNT,
            "purchase",
            DEMO_AMOUNT,
            "USD",
            Some("demo-us"),
        )
        .await?;
    let pu = expect(a, 201, || "purchase at us during the partition".into())?;
    let ids = vec![
        dep_id,
        pe["id"].as_str().unwrap_or("?").to_string(),
        pu["id"].as_str().unwrap_or("?").to_string(),
    ];
    step(
        "double spend",
        &format!(
            "purchase {DEMO_AMOUNT} USD at eu -> 201 {}, at us -> 201 {}",
            ids[1], ids[2]
        ),
        None,
    );

    // 5. Heal and wait for every region to settle the same state.
    c.heal().await?;
    let healed = Instant::now();
    let cr = &c;
    let names_r = &names;
    let ids_r = &ids;
    let settle = wait_until(
        "every region to settle the same history, balances and feed",
        SETTLEMENT_TIMEOUT_MS,
        || async move {
            let mut views = Vec::new();
            for i in 0..n {
                views.push(view(cr, i).await?);
            }
            Ok(disagreement(&views, names_r, ids_r).is_none())
        },
    )
    .await;
    let settle_ms = healed.elapsed().as_millis();
    let mut views = Vec::new();
    for i in 0..n {
        views.push(view(&c, i).await?);
    }
    if let Err(e) = settle {
        let why = disagreement(&views, &names, &ids).unwrap_or_else(|| e.to_string());
        return Err(DemoError::Disagree(format!("{e}: {why}")));
    }
    step(
        "heal",
        "settled; same history, balances and feed everywhere",
        Some(settle_ms),
    );

    // 6. The table.
    out!();
    out!(
        "  {:<6} {:>11} {:>9}  {:<22} {:>6} {:>7} {:>10} {:>10}",
        "region",
        "provisional",
        "settled",
        "compensation",
        "events",
        "applied",
        "sent B",
        "recv B"
    );
    for (i, v) in views.iter().enumerate() {
        let m = c.metrics(i).await?;
        let get = |k: &str| metric(&m, k).map(|x| x.to_string()).unwrap_or("-".into());
        out!(
            "  {:<6} {:>11} {:>9}  {:<22} {:>6} {:>7} {:>10} {:>10}",
            names[i],
            v.provisional,
            v.settled,
            comp_summary(&v.feed),
            v.events,
            get("walletd_events_remote_applied_total"),
            get("walletd_replication_bytes_total{direction=\"sent\"}"),
            get("walletd_replication_bytes_total{direction=\"received\"}"),
        );
    }
    out!("  (events: held; applied: merged from peers; bytes: p2p messages incl. heartbeats)");
    // Final check on the very values printed.
    if let Some(why) = disagreement(&views, &names, &ids) {
        return Err(DemoError::Disagree(why));
    }
    let first = &views[0];
    let mut verdict = String::new();
    let _ = write!(
        verdict,
        "OK: all {n} regions agree: {DEMO_ACCOUNT} settled {} USD, compensations: {}, settled {settle_ms} ms after the heal",
        first.settled,
        comp_summary(&first.feed)
    );
    out!("\n{verdict}");
    c.kill_all();
    Ok(())
}

/// `walletd demo`: runs [`run`] on its own runtime, stops on Ctrl-C; exit 0 only if every
/// region agrees.
pub fn main(opts: DemoOptions) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walletd demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The cluster lives inside `run`'s future: dropping the future (Ctrl-C) kills it.
    let res = rt.block_on(async {
        tokio::select! {
            r = run(&opts) => r,
            _ = tokio::signal::ctrl_c() => Err(DemoError::Interrupted),
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(DemoError::Interrupted) => {
            eprintln!("walletd demo: interrupted; every region stopped");
            ExitCode::from(130)
        }
        Err(e @ DemoError::Policy { .. }) => {
            eprintln!("walletd demo: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("walletd demo: FAILED: {e}");
            if let Some(k) = &opts.keep {
                eprintln!("walletd demo: logs and data kept in {}", k.display());
            } else {
                eprintln!("walletd demo: rerun with --keep DIR to keep the logs");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_policy_parses() {
        assert!(Policy::from_toml(DEMO_POLICY_EMBEDDED).is_ok());
    }

    #[test]
    fn metric_reads_exact_samples() {
        let t = "# HELP x\nwalletd_a 3\nwalletd_ab 4\nwalletd_b{direction=\"sent\"} 17\n";
        assert_eq!(metric(t, "walletd_a"), Some(3));
        assert_eq!(metric(t, "walletd_ab"), Some(4));
        assert_eq!(metric(t, "walletd_b{direction=\"sent\"}"), Some(17));
        assert_eq!(metric(t, "walletd_b"), None);
        assert_eq!(metric(t, "walletd_c"), None);
    }

    #[test]
    fn a_missing_policy_file_is_an_error_and_a_bad_one_too() {
        let r = load_policy(Some(Path::new("/nonexistent/policy.toml")));
        assert!(matches!(r, Err(DemoError::Policy { .. })), "{r:?}");
        let dir = std::env::temp_dir().join(format!("walletd-demo-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("bad.toml");
        let _ = std::fs::write(&p, "[default]\naction = \"maybe\"\n");
        let r = load_policy(Some(&p));
        assert!(matches!(r, Err(DemoError::Policy { .. })), "{r:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn disagreement_names_the_difference() {
        let v = View {
            provisional: "1.00".into(),
            settled: "1.00".into(),
            history: vec![json!({"id": "eu:1", "settled": true})],
            feed: vec![],
            vv: json!({"eu": 1}),
            events: 1,
        };
        let mut w = v.clone();
        let names = vec!["eu".to_string(), "us".to_string()];
        let ids = vec!["eu:1".to_string()];
        assert_eq!(disagreement(&[v.clone(), w.clone()], &names, &ids), None);
        w.settled = "0.00".into();
        assert!(disagreement(&[v.clone(), w], &names, &ids).is_some());
        let mut u = v.clone();
        u.history = vec![json!({"id": "eu:1", "settled": false})];
        assert!(disagreement(&[v.clone(), u], &names, &ids).is_some());
        let ids2 = vec!["us:1".to_string()];
        assert!(disagreement(&[v.clone(), v], &names, &ids2).is_some());
    }
}
