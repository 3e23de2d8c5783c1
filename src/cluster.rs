//! A local cluster of real region processes on 127.0.0.1: the one harness that starts
//! `walletd` processes, used by `walletd demo`, the benchmarks in `src/bin` and the tests.
//!
//! [`LocalCluster`] writes the configs with `init`'s library function, spawns each region
//! (any executable that runs a region from `<run_args> <config>`), waits for its ready line,
//! stops it with SIGTERM or SIGKILL, runs it to its exit (a start that must fail), and talks
//! to it over HTTP ([`Client`]). Its children are killed when it is dropped, so an error, a
//! panic or Ctrl-C never leaves a region behind. With [`ClusterOptions::netns`] each region
//! runs in its own network namespace ([`crate::netns`]) and faults are injected from outside
//! ([`LocalCluster::fabric_mut`], [`LocalCluster::kill`], [`LocalCluster::pause`]);
//! [`LocalCluster::route_through_proxies`] adds latency ([`crate::latency`]) and
//! [`LocalCluster::set_env`] starts a region under libfaketime ([`crate::chaos`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wallet_core::RegionId;

use crate::init::{self, InitError, InitOptions};
use crate::netns::NetnsFabric;

/// Longest wait for a region's ready line.
pub const READY_TIMEOUT_MS: u64 = 60_000;
/// Longest wait for a region to stop after SIGTERM before it is killed.
pub const STOP_TIMEOUT_MS: u64 = 30_000;
/// Longest wait for a region that must not start to exit.
pub const EXIT_TIMEOUT_MS: u64 = 30_000;
/// Environment variable that makes [`LocalCluster::init`] write `[storage] backend = VALUE`
/// into every region's config: the tests' matrix over storage backends.
pub const TEST_STORAGE_ENV: &str = "WALLETD_TEST_STORAGE";
/// Poll period while waiting.
pub const POLL_INTERVAL_MS: u64 = 20;
/// Timeout of one HTTP request.
pub const HTTP_TIMEOUT_MS: u64 = 30_000;
/// Idle pooled connections are dropped after this (below the regions' header-read time-out,
/// which closes idle keep-alive connections).
pub const HTTP_POOL_IDLE_MS: u64 = 4_000;
/// Idle HTTP connections kept per region (load tests run many clients).
pub const HTTP_IDLE_PER_HOST_MAX: usize = 256;
/// Most log lines quoted in an error.
pub const LOG_TAIL_LINES_MAX: usize = 20;
/// Page size used to read lists.
pub const PAGE_LIMIT: usize = 1_000;
/// Most pages read for one list (bounds every loop).
pub const PAGES_MAX: usize = 10_000;

/// What can go wrong driving a [`LocalCluster`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
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
    /// The HTTP client could not be built.
    #[error("runtime: {0}")]
    Runtime(String),
    /// The network-namespace fabric ([`crate::netns`]).
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// An answer (or the request it answers) broke the API contract that the cluster's
    /// [`AnswerCheck`] holds it to (the tests: the OpenAPI document).
    #[error("{what}: breaks the API contract: {reason}")]
    Contract {
        /// The request.
        what: String,
        /// What does not match.
        reason: String,
    },
    /// The delaying proxy ([`crate::latency`]).
    #[error(transparent)]
    Latency(#[from] crate::latency::LatencyError),
}

/// One request and its answer, as an [`AnswerCheck`] sees them.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// `GET`, `POST`.
    pub method: &'a str,
    /// Path and query, as sent.
    pub path: &'a str,
    /// The request's `Content-Type`, if any.
    pub content_type: Option<&'a str>,
    /// The request body (empty for none).
    pub body: &'a str,
    /// The answer's status.
    pub status: u16,
    /// The answer's `Content-Type`, if any.
    pub answer_content_type: Option<&'a str>,
    /// The answer's body.
    pub answer: &'a str,
}

/// A check every request of a cluster's clients goes through (see
/// [`ClusterOptions::check`]); its error fails the request with [`ClusterError::Contract`].
#[derive(Clone)]
pub struct AnswerCheck(pub Arc<CheckFn>);

/// The function of an [`AnswerCheck`]: `Err` says what does not match.
pub type CheckFn = dyn Fn(&Exchange<'_>) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for AnswerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerCheck")
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Io {
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
    /// Group commit in the configs written.
    pub group_commit: bool,
    /// Fault-injection endpoint enabled in the configs written.
    pub faults: bool,
    /// Serve HTTPS with `init --tls`'s local CA (the default: the tests and the demo run
    /// over TLS); the harness's client trusts that CA.
    pub tls: bool,
    /// `http.rate_per_second` in the configs (None: the default; Some(0): no limit).
    pub rate_per_second: Option<u32>,
    /// On drop, panic if a region's log or stdout holds a token (the tests turn it on: every
    /// test run greps its regions' output for the secrets).
    pub scan_secrets_on_drop: bool,
    /// Run each region in its own network namespace ([`crate::netns`]; needs root): faults
    /// are then injected from outside through [`LocalCluster::fabric_mut`].
    pub netns: bool,
    /// Every answer the cluster's [`Client`]s receive goes through this check (the tests:
    /// against the OpenAPI document, tests/common/openapi.rs).
    pub check: Option<AnswerCheck>,
}

impl ClusterOptions {
    /// `walletd run --config` children of `exe` for `regions`, in a temp dir.
    pub fn new(exe: PathBuf, regions: &[&str]) -> Result<ClusterOptions, ClusterError> {
        let regions = init::parse_regions(&regions.join(","))?;
        Ok(ClusterOptions {
            exe,
            run_args: vec!["run".into(), "--config".into()],
            regions,
            dir: None,
            policy: None,
            log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            group_commit: true,
            faults: true,
            scan_secrets_on_drop: false,
            tls: true,
            rate_per_second: None,
            netns: false,
            check: None,
        })
    }
}

/// What [`LocalCluster::adopt`] takes: files written elsewhere.
#[derive(Debug)]
pub struct Adopt {
    /// Executable to spawn for a region.
    pub exe: PathBuf,
    /// Arguments before the config path (`["run", "--config"]` for `walletd`).
    pub run_args: Vec<String>,
    /// Where the regions' logs go.
    pub dir: PathBuf,
    /// Remove `dir` on drop.
    pub remove_dir: bool,
    /// The regions (config paths as they are now), tokens and CA.
    pub file: init::ClusterFile,
    /// `RUST_LOG` of the regions.
    pub log_filter: String,
    /// See [`ClusterOptions::scan_secrets_on_drop`].
    pub scan_secrets_on_drop: bool,
    /// Region `i` runs in the fabric's namespace `i`.
    pub fabric: Option<NetnsFabric>,
    /// See [`ClusterOptions::check`].
    pub check: Option<AnswerCheck>,
    /// Host names this process resolves itself (name, address), as the operator machine's
    /// `/etc/hosts` would: for regions whose URL names a host.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
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
    /// Extra environment of its process (e.g. libfaketime's, for clock faults).
    env: Vec<(String, String)>,
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
/// library function. Dropping it kills every region (and removes a temp dir). `Debug` does
/// not show the tokens.
pub struct LocalCluster {
    /// The cluster directory (configs, keys, policy, data, logs).
    pub dir: PathBuf,
    /// A client token.
    pub token: String,
    /// An admin token.
    pub admin_token: String,
    /// With TLS: the local CA certificate the regions' certificates chain to.
    pub ca: Option<PathBuf>,
    /// With TLS: a client certificate and key signed by the CA (for mutual TLS).
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// The regions, in the order given.
    pub regions: Vec<RegionProc>,
    exe: PathBuf,
    run_args: Vec<String>,
    log_filter: String,
    remove_dir: bool,
    http: reqwest::Client,
    scan_secrets_on_drop: bool,
    check: Option<AnswerCheck>,
    /// Delaying proxies between the regions ([`Self::route_through_proxies`]); dropped
    /// (stopped) after the regions are killed, before the fabric.
    proxies: Vec<crate::latency::DelayProxy>,
    /// Declared last: dropped after the regions are killed.
    fabric: Option<NetnsFabric>,
}

/// An HTTP answer: status, headers and JSON body (a JSON string if the body is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub json: Value,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.dir)
            .field("regions", &self.regions)
            .field("exe", &self.exe)
            .finish_non_exhaustive()
    }
}

/// An HTTP client of one region with one bearer token (cheap to clone: the connection pool
/// is shared). `Debug` does not show the token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    region: String,
    url: String,
    token: String,
    check: Option<AnswerCheck>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("region", &self.region)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The region's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bearer token it sends.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The same region with another token (empty: none).
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: token.to_string(),
            ..self.clone()
        }
    }

    /// The underlying HTTP client (for requests built by hand, e.g. under load).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Adds the bearer token (none when it is empty: health, readiness, metrics).
    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.token.is_empty() {
            rb
        } else {
            rb.bearer_auth(&self.token)
        }
    }

    /// Sends the request (`method path`, with `content_type` and `body` as given to the
    /// builder) and reads the answer: status, headers, body; the cluster's check sees both.
    async fn exchange(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<(u16, reqwest::header::HeaderMap, String), ClusterError> {
        let what = || format!("{method} {} {path}", self.region);
        let r = rb.send().await.map_err(|e| ClusterError::Request {
            what: what(),
            reason: e.to_string(),
        })?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.map_err(|e| ClusterError::Request {
            what: what(),
            reason: e.to_string(),
        })?;
        if let Some(check) = &self.check {
            let exchange = Exchange {
                method,
                path,
                content_type,
                body,
                status,
                answer_content_type: headers
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
                answer: &text,
            };
            (check.0)(&exchange).map_err(|reason| ClusterError::Contract {
                what: what(),
                reason,
            })?;
        }
        Ok((status, headers, text))
    }

    fn answer((status, headers, text): (u16, reqwest::header::HeaderMap, String)) -> Answer {
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            json,
            headers,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Answer, ClusterError> {
        let rb = self.authed(self.http.get(format!("{}{path}", self.url)));
        self.exchange("GET", path, None, "", rb)
            .await
            .map(Client::answer)
    }

    /// `GET path`: status and the body exactly as sent (for byte comparisons and text).
    pub async fn get_raw(&self, path: &str) -> Result<(u16, String), ClusterError> {
        let rb = self.authed(self.http.get(format!("{}{path}", self.url)));
        let (status, _, text) = self.exchange("GET", path, None, "", rb).await?;
        Ok((status, text))
    }

    /// `DELETE path` (no body).
    pub async fn delete(&self, path: &str) -> Result<Answer, ClusterError> {
        let rb = self.authed(self.http.delete(format!("{}{path}", self.url)));
        self.exchange("DELETE", path, None, "", rb)
            .await
            .map(Client::answer)
    }

    /// `POST path` with `body` as JSON, and an `Idempotency-Key` if given.
    pub async fn post(
        &self,
        path: &str,
        body: &str,
        key: Option<&str>,
    ) -> Result<Answer, ClusterError> {
        let mut rb = self
            .authed(self.http.post(format!("{}{path}", self.url)))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            rb = rb.header("Idempotency-Key", k);
        }
        self.exchange("POST", path, Some("application/json"), body, rb)
            .await
            .map(Client::answer)
    }

    /// `POST path` with `body` sent as is with this `Content-Type` (none if empty): e.g. a
    /// policy file to `/v1/admin/policy`.
    pub async fn post_typed(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Result<Answer, ClusterError> {
        let mut rb = self
            .authed(self.http.post(format!("{}{path}", self.url)))
            .body(body.to_string());
        let ct = (!content_type.is_empty()).then_some(content_type);
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        self.exchange("POST", path, ct, body, rb)
            .await
            .map(Client::answer)
    }

    /// Submits a transaction.
    pub async fn tx(
        &self,
        account: &str,
        kind: &str,
        amount: &str,
        currency: &str,
        key: Option<&str>,
    ) -> Result<Answer, ClusterError> {
        let body = json!({"type": kind, "amount": amount, "currency": currency});
        self.post(
            &format!("/v1/accounts/{account}/transactions"),
            &body.to_string(),
            key,
        )
        .await
    }

    /// `GET path` expecting 200.
    pub async fn get_ok(&self, path: &str) -> Result<Value, ClusterError> {
        let a = self.get(path).await?;
        expect(a, 200, || format!("GET {} {path}", self.region))
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Value, ClusterError> {
        self.get_ok("/v1/status").await
    }

    /// Every entry of an account's history (all pages).
    pub async fn history(&self, account: &str) -> Result<Vec<Value>, ClusterError> {
        self.pages(
            &format!("/v1/accounts/{account}/transactions"),
            "transactions",
            true,
        )
        .await
    }

    /// The whole compensation feed.
    pub async fn feed(&self) -> Result<Vec<Value>, ClusterError> {
        self.pages("/v1/compensations", "compensations", false)
            .await
    }

    async fn pages(
        &self,
        path: &str,
        field: &str,
        null_ends: bool,
    ) -> Result<Vec<Value>, ClusterError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let p = match &after {
                Some(c) => format!("{path}?limit={PAGE_LIMIT}&after={c}"),
                None => format!("{path}?limit={PAGE_LIMIT}"),
            };
            let v = self.get_ok(&p).await?;
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
}

impl LocalCluster {
    /// Writes configs, keys, policy and tokens; starts nothing.
    pub fn init(opts: ClusterOptions) -> Result<LocalCluster, ClusterError> {
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
        let fabric = if opts.netns {
            Some(NetnsFabric::create(opts.regions.len())?)
        } else {
            None
        };
        let file = init::init(&InitOptions {
            hosts: fabric.as_ref().map(NetnsFabric::hosts),
            regions: opts.regions,
            dir: dir.clone(),
            faults: opts.faults,
            group_commit: opts.group_commit,
            tls: opts.tls,
            rate_per_second: opts.rate_per_second,
            per_host: None,
        })?;
        let dir = dir.canonicalize().map_err(|e| io_err(&dir, e))?;
        if let Some(p) = &opts.policy {
            let path = dir.join("policy.toml");
            std::fs::write(&path, p).map_err(|e| io_err(&path, e))?;
        }
        // The test matrix over storage backends: `WALLETD_TEST_STORAGE=redb|log` (docs/testing.md).
        if let Ok(backend) = std::env::var(TEST_STORAGE_ENV) {
            for r in &file.regions {
                let path = PathBuf::from(&r.config);
                let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
                let text = text.replacen(
                    "[storage]\n",
                    &format!("[storage]\nbackend = \"{backend}\"\n"),
                    1,
                );
                crate::secret::write_private(&path, text.as_bytes())
                    .map_err(|e| io_err(&path, e))?;
            }
        }
        LocalCluster::adopt(Adopt {
            exe: opts.exe,
            run_args: opts.run_args,
            dir,
            remove_dir,
            file,
            log_filter: opts.log_filter,
            scan_secrets_on_drop: opts.scan_secrets_on_drop,
            fabric,
            check: opts.check,
            resolve: Vec::new(),
        })
    }

    /// A cluster whose files are already written (by [`LocalCluster::init`], or by
    /// `walletd init --region ...` and copied to each host's directory: the deployment test).
    /// Logs go to `DIR/<region>.log`; starts nothing.
    pub fn adopt(a: Adopt) -> Result<LocalCluster, ClusterError> {
        let Adopt {
            exe,
            run_args,
            dir,
            remove_dir,
            file,
            log_filter,
            scan_secrets_on_drop,
            fabric,
            check,
            resolve,
        } = a;
        if let Some(f) = &fabric {
            if f.regions.len() != file.regions.len() {
                return Err(ClusterError::Netns(crate::netns::NetnsError::Args(
                    format!(
                        "{} namespaces for {} regions",
                        f.regions.len(),
                        file.regions.len()
                    ),
                )));
            }
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
                env: Vec::new(),
            })
            .collect();
        let http = http_client_resolving(file.ca.as_deref().map(Path::new), None, &resolve)?;
        Ok(LocalCluster {
            dir,
            token: file.token,
            admin_token: file.admin_token,
            ca: file.ca.as_ref().map(PathBuf::from),
            client_identity: file
                .client_cert
                .as_ref()
                .zip(file.client_key.as_ref())
                .map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
            regions,
            exe,
            run_args,
            log_filter,
            remove_dir,
            http,
            scan_secrets_on_drop,
            check,
            proxies: Vec::new(),
            fabric,
        })
    }

    /// Writes a new region's config with `walletd join`'s library function (from region
    /// 0's config: same cluster, policy, tokens and CA), adds it to the cluster and returns
    /// its index and the `POST /v1/admin/members` body that adds it. Starts nothing and
    /// issues no join: the caller posts the body to a member and starts the region.
    pub fn add_region(
        &mut self,
        region: &str,
    ) -> Result<(usize, crate::join::JoinBody), ClusterError> {
        if self.fabric.is_some() {
            return Err(ClusterError::Netns(crate::netns::NetnsError::Args(
                "adding a region to a cluster in network namespaces".into(),
            )));
        }
        let from = self.region(0)?.config.clone();
        let region_id = init::parse_regions(region)?
            .into_iter()
            .next()
            .ok_or_else(|| InitError::Args("no region".into()))?;
        let j = crate::join::make_config(&crate::join::JoinOptions {
            from,
            region: region_id,
            dir: self.dir.clone(),
            http_listen: None,
            p2p_listen: None,
            advertise: None,
            ca_key: None,
        })?;
        self.regions.push(RegionProc {
            region: region.to_string(),
            http: j.http.clone(),
            config: j.config.clone(),
            log: self.dir.join(format!("{region}.log")),
            out: self.dir.join(format!("{region}.out")),
            child: None,
            env: Vec::new(),
        });
        Ok((self.regions.len() - 1, j.body))
    }

    /// Index of a region by name.
    pub fn index(&self, region: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.region == region)
    }

    fn region(&self, i: usize) -> Result<&RegionProc, ClusterError> {
        self.regions.get(i).ok_or_else(|| ClusterError::Region {
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
    pub fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
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
        let mut cmd = match &self.fabric {
            // `ip netns exec` enters the namespace and execs the region: the child's pid is
            // the region's.
            Some(f) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", f.ns(i)?]).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        let child = cmd
            .args(&self.run_args)
            .arg(&r.config)
            .env("RUST_LOG", &self.log_filter)
            .envs(r.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .map_err(|e| ClusterError::Region {
                region: r.region.clone(),
                reason: format!("cannot spawn {}: {e}", self.exe.display()),
            })?;
        if let Some(r) = self.regions.get_mut(i) {
            r.child = Some(child);
        }
        Ok(())
    }

    /// Waits for region `i`'s ready line; fails if it exits first or the wait runs out.
    pub async fn wait_ready(&mut self, i: usize) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
        loop {
            let r = self.region(i)?;
            let out = std::fs::read_to_string(&r.out).unwrap_or_default();
            if out.lines().any(|l| l.contains(" ready ")) {
                return Ok(());
            }
            if !r.running() {
                return Err(ClusterError::Region {
                    region: r.region.clone(),
                    reason: "not started".into(),
                });
            }
            let region = r.region.clone();
            if let Some(st) = self.reap(i) {
                let tail = self.log_tail(i);
                return Err(ClusterError::Region {
                    region,
                    reason: format!("exited before it was ready ({st}); log:\n{tail}"),
                });
            }
            if Instant::now() > deadline {
                let tail = self.log_tail(i);
                return Err(ClusterError::Region {
                    region,
                    reason: format!("not ready after {READY_TIMEOUT_MS} ms; log:\n{tail}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Spawns region `i` and waits until it is ready.
    pub async fn start(&mut self, i: usize) -> Result<(), ClusterError> {
        self.spawn(i)?;
        self.wait_ready(i).await
    }

    /// Spawns every region, then waits until each is ready.
    pub async fn start_all(&mut self) -> Result<(), ClusterError> {
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

    /// SIGSTOP region `i` (it keeps its sockets but answers nothing) until [`Self::resume`].
    pub fn pause(&self, i: usize) -> Result<(), ClusterError> {
        self.signal(i, "-STOP")
    }

    /// SIGCONT region `i`.
    pub fn resume(&self, i: usize) -> Result<(), ClusterError> {
        self.signal(i, "-CONT")
    }

    fn signal(&self, i: usize, sig: &str) -> Result<(), ClusterError> {
        let r = self.region(i)?;
        let pid = r.pid().ok_or_else(|| ClusterError::Region {
            region: r.region.clone(),
            reason: "not running".into(),
        })?;
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| ClusterError::Region {
                region: r.region.clone(),
                reason: format!("kill {sig}: {e}"),
            })?;
        if st.success() {
            Ok(())
        } else {
            Err(ClusterError::Region {
                region: r.region.clone(),
                reason: format!("kill {sig} {pid}: {st}"),
            })
        }
    }

    /// Sets the extra environment of region `i`'s process from its next start on (empty:
    /// none). The fault harness starts a region under libfaketime this way.
    pub fn set_env(&mut self, i: usize, env: Vec<(String, String)>) -> Result<(), ClusterError> {
        self.region(i)?;
        if let Some(r) = self.regions.get_mut(i) {
            r.env = env;
        }
        Ok(())
    }

    /// Rewrites region `i`'s config file with `f` (read at its next start).
    pub fn rewrite_config(
        &self,
        i: usize,
        f: impl FnOnce(&str) -> String,
    ) -> Result<(), ClusterError> {
        let path = &self.region(i)?.config;
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        std::fs::write(path, f(&text)).map_err(|e| io_err(path, e))
    }

    /// Relays every inter-region libp2p connection through a delaying TCP proxy
    /// ([`crate::latency`]): for each ordered pair (i, j) a proxy in `i`'s namespace, and
    /// `i`'s config names it as `j`'s address. Call before the regions start, from a tokio
    /// runtime (the proxies run on it). Needs the network-namespace fabric. The configs
    /// dial and listen on TCP only, so QUIC is not used around the proxies.
    pub fn route_through_proxies(
        &mut self,
        latency: std::sync::Arc<crate::latency::Latency>,
    ) -> Result<(), ClusterError> {
        let fabric = self.fabric.as_ref().ok_or_else(|| {
            ClusterError::Netns(crate::netns::NetnsError::Args(
                "proxies need the network-namespace fabric".into(),
            ))
        })?;
        let n = self.regions.len();
        let ports: Vec<u16> = (0..n).map(|j| self.p2p_port(j)).collect::<Result<_, _>>()?;
        let mut proxies = Vec::new();
        for i in 0..n {
            let mut rewrites = Vec::new();
            for (j, port) in ports.iter().enumerate() {
                if i == j {
                    continue;
                }
                let ip = fabric.get_region(j)?.peer_ip;
                let target = std::net::SocketAddr::from((ip, *port));
                let tag = u64::try_from(i * n + j).unwrap_or(0);
                let p =
                    crate::latency::DelayProxy::start(fabric.ns(i)?, target, latency.clone(), tag)?;
                rewrites.push((
                    format!("\"/ip4/{ip}/tcp/{port}\""),
                    format!("\"/ip4/127.0.0.1/tcp/{}\"", p.listen.port()),
                ));
                proxies.push(p);
            }
            // Only member j's entry holds j's address (i's own listen line is i's).
            self.rewrite_config(i, |t| {
                rewrites
                    .iter()
                    .fold(t.to_string(), |t, (from, to)| t.replace(from, to))
            })?;
        }
        self.proxies = proxies;
        Ok(())
    }

    /// The network-namespace fabric, when the cluster runs in namespaces.
    pub fn fabric(&self) -> Option<&NetnsFabric> {
        self.fabric.as_ref()
    }

    /// The fabric, to inject network faults; an error when the cluster has none.
    pub fn fabric_mut(&mut self) -> Result<&mut NetnsFabric, ClusterError> {
        self.fabric.as_mut().ok_or_else(|| {
            ClusterError::Netns(crate::netns::NetnsError::Args(
                "the cluster does not run in network namespaces".into(),
            ))
        })
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
            if let Some(st) = self.reap(i) {
                return st.code();
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        self.kill(i);
        None
    }

    /// The exit status of region `i` if its process has exited (it is then no longer
    /// running); `None` while it runs or when it was not started.
    pub fn reap(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let r = self.regions.get_mut(i)?;
        let st = r.child.as_mut()?.try_wait().ok().flatten()?;
        r.child = None;
        Some(st)
    }

    /// Kills every region.
    pub fn kill_all(&mut self) {
        for i in 0..self.regions.len() {
            self.kill(i);
        }
    }

    /// Region `i`'s storage directory, as its config names it.
    pub fn data_dir(&self, i: usize) -> Result<PathBuf, ClusterError> {
        let r = self.region(i)?;
        let cfg = crate::config::NodeConfig::load(&r.config).map_err(|e| ClusterError::Region {
            region: r.region.clone(),
            reason: e.to_string(),
        })?;
        Ok(cfg.data_dir)
    }

    /// Region `i`'s first libp2p listen port, as its config names it.
    pub fn p2p_port(&self, i: usize) -> Result<u16, ClusterError> {
        let r = self.region(i)?;
        let bad = |reason: String| ClusterError::Region {
            region: r.region.clone(),
            reason,
        };
        let cfg = crate::config::NodeConfig::load(&r.config).map_err(|e| bad(e.to_string()))?;
        let addr = cfg
            .p2p_listen
            .first()
            .map(|a| a.to_string())
            .ok_or_else(|| bad("no p2p.listen".into()))?;
        addr.rsplit('/')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad(format!("no TCP port in {addr}")))
    }

    /// Region `i`'s store file: the log's, or redb's if that is the one in the data dir.
    pub fn data_file(&self, i: usize) -> Result<PathBuf, ClusterError> {
        let dir = self.data_dir(i)?;
        Ok(crate::storage::Backend::in_dir(&dir).file_path(&dir))
    }

    /// Runs region `i` until it exits by itself (a start that must fail): its exit code
    /// (`None` if a signal ended it) and what it wrote to stderr. Kills it and fails if it is
    /// still running after [`EXIT_TIMEOUT_MS`].
    pub fn run_to_exit(&mut self, i: usize) -> Result<(Option<i32>, String), ClusterError> {
        let r = self.region(i)?;
        if r.running() {
            return Err(ClusterError::Region {
                region: r.region.clone(),
                reason: "already running".into(),
            });
        }
        let log = r.log.clone();
        let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        self.spawn(i)?;
        let deadline = Instant::now() + Duration::from_millis(EXIT_TIMEOUT_MS);
        loop {
            if let Some(st) = self.reap(i) {
                let bytes = std::fs::read(&log).map_err(|e| io_err(&log, e))?;
                let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
                let err = String::from_utf8_lossy(bytes.get(start..).unwrap_or_default());
                return Ok((st.code(), err.into_owned()));
            }
            if Instant::now() > deadline {
                self.kill(i);
                return Err(ClusterError::Region {
                    region: self
                        .regions
                        .get(i)
                        .map(|r| r.region.clone())
                        .unwrap_or_default(),
                    reason: format!("still running after {EXIT_TIMEOUT_MS} ms"),
                });
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// A client of region `i` with `token`.
    pub fn client_with_token(&self, i: usize, token: &str) -> Result<Client, ClusterError> {
        let r = self.region(i)?;
        Ok(Client {
            http: self.http.clone(),
            region: r.region.clone(),
            url: r.http.clone(),
            token: token.to_string(),
            check: self.check.clone(),
        })
    }

    /// A client of region `i` with the client token.
    pub fn client(&self, i: usize) -> Result<Client, ClusterError> {
        self.client_with_token(i, &self.token)
    }

    /// A client of region `i` with the admin token.
    pub fn admin(&self, i: usize) -> Result<Client, ClusterError> {
        self.client_with_token(i, &self.admin_token)
    }

    /// `GET path` on region `i` with the client token.
    pub async fn get(&self, i: usize, path: &str) -> Result<Answer, ClusterError> {
        self.client(i)?.get(path).await
    }

    /// `GET path` on region `i` with the admin token.
    pub async fn get_admin(&self, i: usize, path: &str) -> Result<Answer, ClusterError> {
        self.admin(i)?.get(path).await
    }

    /// `GET path` on region `i`: status and the body exactly as sent (for byte comparisons).
    pub async fn get_raw(&self, i: usize, path: &str) -> Result<(u16, String), ClusterError> {
        self.client(i)?.get_raw(path).await
    }

    /// `GET path` expecting 200.
    pub async fn get_ok(&self, i: usize, path: &str) -> Result<Value, ClusterError> {
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
    ) -> Result<Answer, ClusterError> {
        let c = if admin {
            self.admin(i)?
        } else {
            self.client(i)?
        };
        c.post(path, &body.to_string(), key).await
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
    ) -> Result<Answer, ClusterError> {
        self.client(i)?
            .tx(account, kind, amount, currency, key)
            .await
    }

    /// `GET /metrics` on region `i` (no token needed).
    pub async fn metrics(&self, i: usize) -> Result<String, ClusterError> {
        let (_, text) = self.client(i)?.with_token("").get_raw("/metrics").await?;
        Ok(text)
    }

    /// Cuts `region` off: every running region gets `{"isolate":[region]}` (the region
    /// itself thereby cuts itself off from all).
    pub async fn isolate(&self, region: &str) -> Result<(), ClusterError> {
        self.faults(&json!({ "isolate": [region] })).await
    }

    /// Heals every running region.
    pub async fn heal(&self) -> Result<(), ClusterError> {
        self.faults(&json!({"heal": true})).await
    }

    async fn faults(&self, body: &Value) -> Result<(), ClusterError> {
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
    pub async fn history(&self, i: usize, account: &str) -> Result<Vec<Value>, ClusterError> {
        self.client(i)?.history(account).await
    }

    /// The whole compensation feed of region `i`.
    pub async fn feed(&self, i: usize) -> Result<Vec<Value>, ClusterError> {
        self.client(i)?.feed().await
    }

    /// `GET /v1/status` on region `i`.
    pub async fn status(&self, i: usize) -> Result<Value, ClusterError> {
        self.client(i)?.status().await
    }
}

impl LocalCluster {
    /// The files (region logs and stdouts) in which `secret` appears.
    pub fn files_holding(&self, secret: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for r in &self.regions {
            for p in [&r.log, &r.out] {
                let bytes = std::fs::read(p).unwrap_or_default();
                if !secret.is_empty() && bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
                {
                    out.push(p.clone());
                }
            }
        }
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
        self.proxies.clear();
        if self.scan_secrets_on_drop && !std::thread::panicking() {
            let leaks: Vec<PathBuf> = [self.token.clone(), self.admin_token.clone()]
                .iter()
                .flat_map(|t| self.files_holding(t))
                .collect();
            if !leaks.is_empty() {
                // Keep the directory for inspection.
                panic!("a token appears in region output: {leaks:?}");
            }
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The harness's HTTP client: trusts `ca` (PEM) when given, presents `identity` (PEM
/// certificate and key) when given, and drops idle connections before the regions'
/// header-read time-out closes them.
pub fn http_client(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<reqwest::Client, ClusterError> {
    http_client_resolving(ca, identity, &[])
}

/// [`http_client`] that also resolves `names` itself (name, address).
pub fn http_client_resolving(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    names: &[(String, std::net::SocketAddr)],
) -> Result<reqwest::Client, ClusterError> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_millis(HTTP_TIMEOUT_MS))
        .pool_max_idle_per_host(HTTP_IDLE_PER_HOST_MAX)
        .pool_idle_timeout(Duration::from_millis(HTTP_POOL_IDLE_MS));
    for (name, addr) in names {
        b = b.resolve(name, *addr);
    }
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| io_err(ca, e))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| ClusterError::Runtime(format!("{}: {e}", ca.display())))?;
        b = b.add_root_certificate(cert).https_only(true);
    }
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).map_err(|e| io_err(cert, e))?;
        pem.extend(std::fs::read(key).map_err(|e| io_err(key, e))?);
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| ClusterError::Runtime(format!("client identity: {e}")))?;
        b = b.identity(id);
    }
    b.build().map_err(|e| ClusterError::Runtime(e.to_string()))
}

/// Checks an answer's status; returns its body.
pub fn expect(
    a: Answer,
    status: u16,
    what: impl FnOnce() -> String,
) -> Result<Value, ClusterError> {
    if a.status == status {
        Ok(a.json)
    } else {
        Err(ClusterError::Status {
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
) -> Result<Duration, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, ClusterError>>,
{
    let start = Instant::now();
    let deadline = start + Duration::from_millis(timeout_ms);
    loop {
        if f().await? {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout {
                what: what.to_string(),
                ms: timeout_ms,
            });
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// Waits up to `timeout_ms` until every region of `c` shows every member up
/// ([`all_members_up`]).
pub async fn wait_all_members_up(
    c: &LocalCluster,
    timeout_ms: u64,
) -> Result<Duration, ClusterError> {
    wait_until("every member connected", timeout_ms, || async move {
        for i in 0..c.regions.len() {
            if !all_members_up(&c.status(i).await?) {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_reads_exact_samples() {
        let t = "# HELP x\nwalletd_a 3\nwalletd_ab 4\nwalletd_b{direction=\"sent\"} 17\n";
        assert_eq!(metric(t, "walletd_a"), Some(3));
        assert_eq!(metric(t, "walletd_ab"), Some(4));
        assert_eq!(metric(t, "walletd_b{direction=\"sent\"}"), Some(17));
        assert_eq!(metric(t, "walletd_b"), None);
        assert_eq!(metric(t, "walletd_c"), None);
    }
}
