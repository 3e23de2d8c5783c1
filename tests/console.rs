//! The operator console (`GET /ui`) in a real browser: headless Chromium (Debian's `chromium`,
//! driven over WebDriver by Debian's `chromium-driver`, with plain HTTP requests) keeps one
//! page open on a running three-region cluster through a partition and a heal, and the test
//! reads what the page shows as it refreshes itself; then a cluster whose settlement is blocked
//! by a policy mismatch, and why; screenshots go to `target/tmp/`. Also:
//! the page is served without a token but shows nothing without one; a refused or non-admin
//! token brings the token form back. Skips, saying why, without Chromium or its driver.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

const EU: usize = 0;
const AP: usize = 2;
/// Longest wait for the page to show something.
const PAGE_WAIT: Duration = Duration::from_secs(40);
/// Navigations tried before giving up on a browser error page.
const NAVIGATION_TRIES: u32 = 5;
/// The page's sessionStorage key (src/console/app.js).
const TOKEN_KEY: &str = "walletd-console-token";

fn found(exe: &str) -> bool {
    Command::new(exe)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One WebDriver session of a chromedriver this test started (in its own process group, so
/// dropping it ends the driver and the browser it started, by that group's id).
struct Browser {
    driver: Child,
    http: reqwest::Client,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Browser {
        use std::os::unix::process::CommandExt as _;
        let port = wallet::init::free_port().expect("a free port");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut b = Browser {
            driver,
            http: reqwest::Client::new(),
            url: format!("http://127.0.0.1:{port}"),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = match b.http.get(format!("{}/status", b.url)).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .map(|v| v["value"]["ready"] == true),
                Err(_) => None,
            };
            if ready == Some(true) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1160",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", b._profile.path().display())])
        .collect::<Vec<_>>();
        let mut opts = json!({ "args": args });
        if let Ok(bin) = std::env::var("CHROMIUM") {
            opts["binary"] = json!(bin);
        }
        // The cluster serves HTTPS with the local CA of `walletd init --tls`.
        let caps = json!({"capabilities": {"alwaysMatch": {
            "acceptInsecureCerts": true, "goog:chromeOptions": opts}}});
        let v = b.call(reqwest::Method::POST, "/session", Some(caps)).await;
        let id = v["sessionId"].as_str().expect("a session id").to_string();
        b.url = format!("{}/session/{id}", b.url);
        b
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("webdriver request");
        let status = resp.status();
        let v: Value = resp.json().await.expect("webdriver json");
        assert!(status.is_success(), "webdriver {path}: {status} {v}");
        v["value"].clone()
    }

    /// Navigates to a console URL; retries (a few times, saying why) when the browser shows
    /// its own error page instead of the console.
    async fn goto(&self, url: &str) {
        for attempt in 1..=NAVIGATION_TRIES {
            self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
                .await;
            let ours = self
                .js("return document.getElementById('live') !== null")
                .await;
            if ours == json!(true) {
                return;
            }
            let shown = self
                .js("return document.body ? document.body.innerText.slice(0, 300) : ''")
                .await;
            assert!(
                attempt < NAVIGATION_TRIES,
                "the browser did not load the console: {shown}"
            );
            eprintln!("navigation {attempt}: not the console ({shown}); again");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn js(&self, script: &str) -> Value {
        let body = json!({"script": script, "args": []});
        self.call(reqwest::Method::POST, "/execute/sync", Some(body))
            .await
    }

    async fn html(&self) -> String {
        let v = self.js("return document.documentElement.outerHTML").await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Waits until the page's HTML passes `check` (which says what is still missing);
    /// returns that HTML.
    async fn wait_for(&self, what: &str, check: impl Fn(&str) -> Result<(), String>) -> String {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let html = self.html().await;
            match check(&html) {
                Ok(()) => return html,
                Err(missing) if Instant::now() > deadline => {
                    panic!("the page never showed {what}: {missing}\n{html}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64"))
            .expect("decode the screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    async fn quit(self) {
        self.call(reqwest::Method::DELETE, "", None).await;
    }
}

/// Text of an HTML fragment: tags dropped, runs of whitespace made one space.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for ch in html.chars() {
        match ch {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The opening tag of the first element starting with `open` (e.g. `<tr data-id="eu:1"`) and
/// its text up to the next `close`.
fn find(html: &str, open: &str, close: &str) -> Result<(String, String), String> {
    let start = html.find(open).ok_or_else(|| format!("no {open}"))?;
    let rest = &html[start..];
    let head_end = rest.find('>').map_or(rest.len(), |i| i + 1);
    let end = rest.find(close).unwrap_or(rest.len());
    Ok((rest[..head_end].to_string(), text(&rest[..end])))
}

/// The element `<tag id="id" …>`: its opening tag and its text (up to the first `</tag>`).
fn by_id(html: &str, tag: &str, id: &str) -> Result<(String, String), String> {
    find(html, &format!("<{tag} id=\"{id}\""), &format!("</{tag}>"))
}

/// The HTML of `<table id="id">…</table>`.
fn table<'a>(html: &'a str, id: &str) -> Result<&'a str, String> {
    let open = format!("<table id=\"{id}\"");
    let start = html.find(&open).ok_or_else(|| format!("no {open}"))?;
    let rest = &html[start..];
    Ok(&rest[..rest.find("</table>").unwrap_or(rest.len())])
}

/// The row `<tr data-{attr}="{value}" …>`: its opening tag and its text.
fn row(html: &str, attr: &str, value: &str) -> Result<(String, String), String> {
    find(html, &format!("<tr data-{attr}=\"{value}\""), "</tr>")
}

/// `Err(what)` unless `ok`.
fn need(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn settlement_is(html: &str, state: &str) -> Result<(), String> {
    let (head, _) = by_id(html, "div", "settlement")?;
    need(head.contains(&format!("data-state=\"{state}\"")), || {
        format!("settlement {state}: {head}")
    })
}

fn region_connected(html: &str, region: &str, connected: bool) -> Result<(), String> {
    let (tr, shown) = row(html, "region", region)?;
    need(
        tr.contains(&format!("data-connected=\"{connected}\"")),
        || format!("{region} connected={connected}: {shown}"),
    )
}

fn tx_status(html: &str, id: &str, status: &str) -> Result<String, String> {
    let (tr, shown) = row(table(html, "transactions")?, "id", id)?;
    need(tr.contains(&format!("data-status=\"{status}\"")), || {
        format!("{id} {status}: {shown}")
    })?;
    Ok(shown)
}

fn usd_balance(html: &str, provisional: &str, settled: &str) -> Result<(), String> {
    let (_, shown) = row(table(html, "balances")?, "currency", "USD")?;
    need(shown.contains(&format!("{provisional} {settled}")), || {
        format!("USD {provisional} / {settled}: {shown}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_follows_a_partition_and_its_heal_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").is_ok() || found("chromium");
    if !chromium || !found("chromedriver") {
        println!(
            "SKIPPED: needs chromium and chromedriver on the PATH \
             (Debian: apt-get install chromium chromium-driver)"
        );
        return;
    }
    let t0 = Instant::now();
    let mut c = cluster(&["eu", "us", "ap"]);
    c.start_all().await.expect("start");
    wait_connected(&c, &[0, 1, 2]).await;
    let base = c.regions[EU].http.clone();

    // The page needs no token and carries no data; the API still needs one.
    let http = c.client(EU).expect("client").http().clone();
    let page = http
        .get(format!("{base}/ui"))
        .send()
        .await
        .expect("GET /ui");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(page.text().await.expect("body").contains("/ui/app.js"));
    for asset in ["/ui/app.js", "/ui/app.css"] {
        let r = http
            .get(format!("{base}{asset}"))
            .send()
            .await
            .expect(asset);
        assert_eq!(r.status(), 200, "{asset}");
    }
    let anonymous = c.client(EU).expect("client").with_token("");
    assert_eq!(
        anonymous.get_raw("/v1/status").await.expect("status").0,
        401
    );

    let b = Browser::start().await;
    // Without a token: the form, no data. A wrong token and a client token: refused.
    b.goto(&format!("{base}/ui")).await;
    b.wait_for("the token form", |h| {
        need(
            h.contains("<section id=\"login\">") && h.contains("<main id=\"main\" hidden"),
            || "login shown, main hidden".into(),
        )
    })
    .await;
    b.goto(&format!("{base}/ui?try=1#token=wrong-token-0123456789"))
        .await;
    b.wait_for("a refused token", |h| {
        let (_, t) = by_id(h, "p", "login-error")?;
        need(t.contains("The token was refused"), || t.clone())
    })
    .await;
    b.goto(&format!("{base}/ui?try=2#token={}", c.token)).await;
    b.wait_for("a client token refused", |h| {
        let (_, t) = by_id(h, "p", "login-error")?;
        need(t.contains("not an admin token"), || t.clone())
    })
    .await;

    // Healthy: a deposit, settled everywhere.
    let a = c
        .tx(EU, "carol", "deposit", "100.00", "USD", Some("c-dep"))
        .await
        .expect("tx");
    assert_eq!(a.status, 201, "{}", a.json);
    let accounts = vec!["carol".to_string()];
    wait_converged(&c, "the deposit to settle", &[0, 1, 2], &accounts).await;
    b.goto(&format!("{base}/ui#token={}", c.admin_token)).await;
    b.wait_for("the console without an account", |h| {
        settlement_is(h, "flowing")?;
        let (_, t) = by_id(h, "div", "account")?;
        need(t.contains("Enter an account id"), || t.clone())
    })
    .await;
    // The account lookup, as an operator uses it: type the id, submit the form.
    b.js("document.getElementById('account-input').value = 'carol'; \
          document.getElementById('account-form').requestSubmit(); return true")
        .await;
    let h = b
        .wait_for("a healthy cluster", |h| {
            settlement_is(h, "flowing")?;
            for r in ["eu", "us", "ap"] {
                region_connected(h, r, true)?;
            }
            tx_status(h, "eu:1", "settled")?;
            usd_balance(h, "100.00", "100.00")
        })
        .await;
    assert!(by_id(&h, "span", "live")
        .expect("live")
        .0
        .contains("data-state=\"live\""));
    assert!(by_id(&h, "span", "region-name")
        .expect("name")
        .1
        .contains("region eu"));
    for r in ["eu", "us", "ap"] {
        assert!(
            row(&h, "region", r).expect("row").1.contains("matches"),
            "{r}"
        );
    }
    let policy = by_id(&h, "p", "policy-summary").expect("policy").1;
    assert!(
        policy.contains("version 1") && policy.contains("fee flat 5"),
        "{policy}"
    );
    // The token left the address bar for the tab's session storage, and is not in the page.
    let href = b.js("return location.href").await;
    assert_eq!(href, json!(format!("{base}/ui#account=carol")));
    let kept = b
        .js(&format!("return sessionStorage.getItem('{TOKEN_KEY}')"))
        .await;
    assert_eq!(kept, json!(c.admin_token));
    assert!(!h.contains(&c.admin_token));

    // Partition ap; both sides sell carol 80.00 of her 100.00. The same page follows.
    c.isolate("ap").await.expect("isolate ap");
    for (i, key) in [(EU, "c-buy-eu"), (AP, "c-buy-ap")] {
        let a = c
            .tx(i, "carol", "purchase", "80.00", "USD", Some(key))
            .await
            .expect("tx");
        assert_eq!(a.status, 201, "{}", a.json);
    }
    b.wait_for("the partition", |h| {
        region_connected(h, "ap", false)?;
        region_connected(h, "us", true)?;
        settlement_is(h, "waiting")?;
        let (_, reasons) = by_id(h, "ul", "reasons")?;
        need(reasons.contains("waiting for ap: not connected"), || {
            reasons.clone()
        })?;
        tx_status(h, "eu:2", "provisional")?;
        usd_balance(h, "20.00", "100.00")
    })
    .await;
    let partitioned = b.screenshot("console-partitioned.png").await;

    // Heal: both purchases settle, the later one overdraws and gets the 5.00 fee.
    c.heal().await.expect("heal");
    wait_converged(&c, "the double spend to settle", &[0, 1, 2], &accounts).await;
    let feed = c.feed(EU).await.expect("feed");
    assert_eq!(feed.len(), 1, "{feed:?}");
    let fee = feed[0]["id"].as_str().expect("fee id").to_string();
    let cause = feed[0]["cause"].as_str().expect("cause").to_string();
    b.wait_for("the heal and the fee", |h| {
        settlement_is(h, "flowing")?;
        region_connected(h, "ap", true)?;
        let (_, comps) = by_id(h, "table", "compensations")?;
        need(
            comps.contains(&fee) && comps.contains("overdraft_fee") && comps.contains("-5.00 USD"),
            || comps.clone(),
        )?;
        let shown = tx_status(h, &cause, "settled")?;
        need(shown.contains(&format!("fee {fee}")), || shown.clone())?;
        tx_status(h, &fee, "settled")?;
        usd_balance(h, "-65.00", "-65.00")
    })
    .await;
    let healed = b.screenshot("console-healed.png").await;
    // Blocked, and why: a second cluster whose us was first started with another seed policy.
    let mut m = cluster(&["eu", "us"]);
    let policy = std::fs::read_to_string(m.dir.join("policy.toml")).expect("policy");
    std::fs::write(
        m.dir.join("policy-b.toml"),
        policy.replace("flat = \"5.00\"", "flat = \"7.00\""),
    )
    .expect("policy b");
    let cfg = m.regions[1].config.clone();
    let text = std::fs::read_to_string(&cfg).expect("us config");
    assert_eq!(text.matches("policy.toml\"").count(), 1);
    std::fs::write(&cfg, text.replace("policy.toml\"", "policy-b.toml\"")).expect("us config");
    m.start_all().await.expect("start the mismatched cluster");
    b.goto(&format!(
        "{}/ui#token={}",
        m.regions[EU].http, m.admin_token
    ))
    .await;
    b.wait_for("settlement blocked by the policy mismatch", |h| {
        settlement_is(h, "blocked")?;
        let (_, reasons) = by_id(h, "ul", "reasons")?;
        need(
            reasons.contains("policy mismatch: us was first started with another seed policy"),
            || reasons.clone(),
        )?;
        let (_, us) = row(h, "region", "us")?;
        need(us.contains("MISMATCH"), || us.clone())?;
        need(h.contains("nothing settled yet"), || {
            "lag: nothing settled yet".into()
        })
    })
    .await;
    let blocked = b.screenshot("console-blocked.png").await;
    drop(m);

    // "Forget token": the form again, nothing kept.
    b.js("document.getElementById('forget').click(); return true")
        .await;
    b.wait_for("the token forgotten", |h| {
        let (_, t) = by_id(h, "p", "login-error")?;
        need(
            t.contains("Token forgotten") && h.contains("<main id=\"main\" hidden"),
            || t.clone(),
        )
    })
    .await;
    let kept = b
        .js(&format!("return sessionStorage.getItem('{TOKEN_KEY}')"))
        .await;
    assert_eq!(kept, Value::Null);
    b.quit().await;
    println!(
        "one console page followed the cluster through a partition and a heal, then showed a \
         blocked cluster, in {:.1}s; screenshots: {}, {}, {}",
        t0.elapsed().as_secs_f64(),
        partitioned.display(),
        healed.display(),
        blocked.display()
    );
}
