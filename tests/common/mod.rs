//! Helpers: `walletd init` into a temp dir, start real `walletd` processes, talk HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_walletd");
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub json: Value,
}

impl Cluster {
    /// `walletd init --regions <regions>` into a fresh temp dir.
    pub fn init(regions: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(BIN)
            .args(["init", "--regions", regions, "--dir"])
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
        Cluster { dir, json }
    }

    pub fn token(&self) -> String {
        self.json["token"].as_str().expect("token").to_string()
    }

    pub fn admin_token(&self) -> String {
        self.json["admin_token"]
            .as_str()
            .expect("admin")
            .to_string()
    }

    pub fn region(&self, i: usize) -> (String, PathBuf) {
        let r = &self.json["regions"][i];
        (
            r["http"].as_str().expect("http").to_string(),
            PathBuf::from(r["config"].as_str().expect("config")),
        )
    }

    pub fn data_file(&self, region: &str) -> PathBuf {
        self.dir
            .path()
            .join("data")
            .join(region)
            .join("wallet.redb")
    }

    /// Starts region `i` and waits for its ready line.
    pub fn start(&self, i: usize) -> Node {
        let (url, config) = self.region(i);
        Node::start(&config, url, self.token(), &[])
    }
}

pub struct Node {
    pub child: Child,
    pub url: String,
    pub token: String,
    pub config: PathBuf,
    pub stderr: mpsc::Receiver<String>,
}

impl Node {
    pub fn start(config: &Path, url: String, token: String, extra: &[&str]) -> Node {
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn walletd");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = etx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(" ready ") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let err: Vec<String> = erx.try_iter().collect();
                    panic!("walletd did not become ready: {}", err.join("\n"));
                }
            }
        }
        Node {
            child,
            url,
            token,
            config: config.to_path_buf(),
            stderr: erx,
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit.
    pub fn term(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let st = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "walletd did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `walletd run --config` expecting it to fail; returns (exit status, stderr).
pub fn run_expect_failure(config: &Path) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walletd");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (s, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("walletd started although it should have refused to");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Api {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
}

pub struct Resp {
    pub status: u16,
    pub json: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Api {
    pub fn new(url: &str, token: &str) -> Api {
        Api {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .build()
                .expect("client"),
            url: url.to_string(),
            token: token.to_string(),
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            json,
            headers,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(
            self.http
                .get(format!("{}{}", self.url, path))
                .bearer_auth(&self.token),
        )
        .await
    }

    pub async fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> Resp {
        let mut rb = self
            .http
            .post(format!("{}{}", self.url, path))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            rb = rb.header("Idempotency-Key", k);
        }
        self.send(rb).await
    }

    pub async fn tx(&self, account: &str, kind: &str, amount: &str, key: Option<&str>) -> Resp {
        let body = serde_json::json!({"type": kind, "amount": amount, "currency": "USD"});
        self.post_raw(
            &format!("/v1/accounts/{account}/transactions"),
            &body.to_string(),
            key,
        )
        .await
    }

    pub async fn balance(&self, account: &str, currency: &str) -> Option<(String, String)> {
        let r = self.get(&format!("/v1/accounts/{account}/balances")).await;
        assert_eq!(r.status, 200, "{}", r.json);
        r.json["balances"]
            .as_array()
            .expect("balances")
            .iter()
            .find(|b| b["currency"] == currency)
            .map(|b| {
                (
                    b["provisional"].as_str().expect("p").to_string(),
                    b["settled"].as_str().expect("s").to_string(),
                )
            })
    }

    /// Every entry of an account's history, following cursors.
    pub async fn history(&self, account: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(c) => format!("/v1/accounts/{account}/transactions?limit=1000&after={c}"),
                None => format!("/v1/accounts/{account}/transactions?limit=1000"),
            };
            let r = self.get(&path).await;
            assert_eq!(r.status, 200, "{}", r.json);
            out.extend(
                r.json["transactions"]
                    .as_array()
                    .expect("list")
                    .iter()
                    .cloned(),
            );
            match r.json["next"].as_str() {
                Some(c) => after = Some(c.to_string()),
                None => return out,
            }
        }
    }
}

#[path = "cents.rs"]
mod cents;
#[allow(unused_imports)]
pub use cents::cents;

pub fn error_code(r: &Resp) -> String {
    r.json["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {} {}", r.status, r.json))
        .to_string()
}
