//! The operator console (`GET /ui`) in a real browser: headless Chromium (Debian's `chromium`)
//! loads the page from a running three-region cluster before, during and after a partition,
//! and the test reads what the page shows (`--dump-dom` after `--virtual-time-budget`, so the
//! page has polled the API a few times) and saves screenshots in `target/tmp/`. Also: the page
//! is served without a token but shows nothing without one; a refused or non-admin token
//! brings the token form back. Skips, saying why, without Chromium.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;

const EU: usize = 0;
const AP: usize = 2;
/// Virtual time the page runs before the DOM is dumped (about two polls at 1.5 s).
const BUDGET_MS: &str = "3500";
/// Longest one browser run may take.
const BROWSER_TIMEOUT_S: &str = "60";

fn browser() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser"].iter().find_map(|b| {
        let ok = Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| PathBuf::from(b))
    })
}

/// Runs the browser headless on `url` with `extra` (`--dump-dom` or `--screenshot=…`) in a
/// fresh profile; returns its stdout.
async fn run_browser(exe: &Path, url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new("timeout");
    cmd.arg(BROWSER_TIMEOUT_S)
        .arg(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            // The cluster serves HTTPS with the local CA of `walletd init --tls`.
            "--ignore-certificate-errors",
            "--window-size=1280,1020",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={BUDGET_MS}"))
        .args(extra)
        .arg(url);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("browser task")
        .expect("run the browser");
    assert!(
        out.status.success(),
        "browser failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's DOM after it ran for [`BUDGET_MS`] of virtual time.
async fn dom(exe: &Path, url: &str) -> String {
    run_browser(exe, url, &["--dump-dom".to_string()]).await
}

async fn screenshot(exe: &Path, url: &str, name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&path);
    run_browser(exe, url, &[format!("--screenshot={}", path.display())]).await;
    let png = std::fs::read(&path).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        path.display()
    );
    path
}

/// The opening tag of the element with `id`, and its text (tags stripped) up to `</tag>`.
fn element(dom: &str, tag: &str, id: &str) -> (String, String) {
    let open = format!("<{tag} id=\"{id}\"");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no {open} in the page:\n{dom}"));
    let rest = &dom[start..];
    let head_end = rest.find('>').map_or(rest.len(), |i| i + 1);
    let close = format!("</{tag}>");
    let end = rest.find(&close).unwrap_or(rest.len());
    (rest[..head_end].to_string(), text(&rest[..end]))
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

/// The HTML of `<table id="{id}">…</table>`.
fn table<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("<table id=\"{id}\"");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no {open} in the page:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find("</table>").unwrap_or(rest.len())]
}

/// The text of the table row `<tr data-{attr}="{value}" …>`; its opening tag too.
fn row(dom: &str, attr: &str, value: &str) -> (String, String) {
    let open = format!("<tr data-{attr}=\"{value}\"");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no row {open} in the page:\n{dom}"));
    let rest = &dom[start..];
    let head_end = rest.find('>').map_or(rest.len(), |i| i + 1);
    let end = rest.find("</tr>").unwrap_or(rest.len());
    (rest[..head_end].to_string(), text(&rest[..end]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_a_partition_and_its_heal_in_a_real_browser() {
    let Some(exe) = browser() else {
        println!(
            "SKIPPED: no chromium on PATH (Debian: apt-get install chromium; or set CHROMIUM)"
        );
        return;
    };
    let t0 = Instant::now();
    let mut c = cluster(&["eu", "us", "ap"]);
    c.start_all().await.expect("start");
    wait_connected(&c, &[0, 1, 2]).await;
    let base = c.regions[EU].http.clone();

    // The page needs no token; the API still does.
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
    let html = page.text().await.expect("body");
    assert!(html.contains("/ui/app.js") && !html.contains(&c.admin_token));
    for asset in ["/ui/app.js", "/ui/app.css"] {
        let r = http
            .get(format!("{base}{asset}"))
            .send()
            .await
            .expect(asset);
        assert_eq!(r.status(), 200, "{asset}");
    }
    let (st, _) = c
        .client(EU)
        .expect("client")
        .with_token("")
        .get_raw("/v1/status")
        .await
        .expect("status");
    assert_eq!(st, 401);

    // Without a token: the form, no data. A wrong token and a client token: refused.
    let d = dom(&exe, &format!("{base}/ui")).await;
    assert!(
        d.contains("<section id=\"login\">") && d.contains("<main id=\"main\" hidden"),
        "{d}"
    );
    let d = dom(&exe, &format!("{base}/ui#token=wrong-token-0123456789")).await;
    assert!(
        element(&d, "p", "login-error")
            .1
            .contains("The token was refused"),
        "{d}"
    );
    let d = dom(&exe, &format!("{base}/ui#token={}", c.token)).await;
    assert!(
        element(&d, "p", "login-error")
            .1
            .contains("not an admin token"),
        "{d}"
    );

    // Healthy: a deposit, settled everywhere.
    let a = c
        .tx(EU, "carol", "deposit", "100.00", "USD", Some("c-dep"))
        .await
        .expect("tx");
    assert_eq!(a.status, 201, "{}", a.json);
    let accounts = vec!["carol".to_string()];
    eventually(&c, "the deposit to settle", WAIT, || async {
        converged(&c, &[0, 1, 2], &accounts).await
    })
    .await;
    let url = format!("{base}/ui#token={}&account=carol", c.admin_token);
    let d = dom(&exe, &url).await;
    assert!(!d.contains(&c.admin_token), "the token is not in the page");
    assert!(
        element(&d, "span", "live")
            .0
            .contains("data-state=\"live\""),
        "{d}"
    );
    assert!(element(&d, "span", "region-name").1.contains("region eu"));
    let (head, _) = element(&d, "div", "settlement");
    let reasons = element(&d, "ul", "reasons").1;
    assert!(head.contains("data-state=\"flowing\""), "{head} {reasons}");
    for r in ["eu", "us", "ap"] {
        let (tr, shown) = row(&d, "region", r);
        assert!(tr.contains("data-connected=\"true\""), "{r}: {shown}");
        assert!(shown.contains("matches"), "{r}: {shown}");
    }
    assert!(element(&d, "p", "policy-summary").1.contains("version 1"));
    assert!(
        element(&d, "p", "policy-summary").1.contains("fee flat 5"),
        "{d}"
    );
    assert!(row(&d, "currency", "USD").1.contains("100.00 100.00"));
    let (tr, shown) = row(table(&d, "transactions"), "id", "eu:1");
    assert!(tr.contains("data-status=\"settled\""), "{shown}");

    // Partition ap; both sides sell carol 80.00 of her 100.00.
    c.isolate("ap").await.expect("isolate ap");
    eventually(&c, "eu to lose ap", WAIT, || async {
        member(&status(&c, EU).await, "ap")["connected"] == false
    })
    .await;
    for (i, key) in [(EU, "c-buy-eu"), (AP, "c-buy-ap")] {
        let a = c
            .tx(i, "carol", "purchase", "80.00", "USD", Some(key))
            .await
            .expect("tx");
        assert_eq!(a.status, 201, "{}", a.json);
    }
    let d = dom(&exe, &url).await;
    let (tr, shown) = row(&d, "region", "ap");
    assert!(
        tr.contains("data-connected=\"false\"") && shown.contains("disconnected"),
        "{shown}"
    );
    assert!(row(&d, "region", "us")
        .0
        .contains("data-connected=\"true\""));
    let (head, _) = element(&d, "div", "settlement");
    assert!(head.contains("data-state=\"waiting\""), "{head}");
    assert!(d.contains("<div class=\"v warn\">waiting</div>"), "{d}");
    assert!(
        element(&d, "ul", "reasons")
            .1
            .contains("waiting for ap: not connected"),
        "{d}"
    );
    let (tr, shown) = row(table(&d, "transactions"), "id", "eu:2");
    assert!(tr.contains("data-status=\"provisional\""), "{shown}");
    assert!(row(&d, "currency", "USD").1.contains("20.00 100.00"), "{d}");
    let partitioned = screenshot(&exe, &url, "console-partitioned.png").await;

    // Heal: both purchases settle, the later one overdraws and gets the 5.00 fee.
    c.heal().await.expect("heal");
    wait_connected(&c, &[0, 1, 2]).await;
    eventually(&c, "the double spend to settle", WAIT, || async {
        converged(&c, &[0, 1, 2], &accounts).await
    })
    .await;
    let feed = c.feed(EU).await.expect("feed");
    assert_eq!(feed.len(), 1, "{feed:?}");
    let fee = feed[0]["id"].as_str().expect("fee id").to_string();
    let cause = feed[0]["cause"].as_str().expect("cause").to_string();
    let d = dom(&exe, &url).await;
    let (head, _) = element(&d, "div", "settlement");
    assert!(head.contains("data-state=\"flowing\""), "{head}");
    assert!(row(&d, "region", "ap")
        .0
        .contains("data-connected=\"true\""));
    let (_, shown) = element(&d, "table", "compensations");
    assert!(
        shown.contains(&fee) && shown.contains("overdraft_fee") && shown.contains("-5.00 USD"),
        "{shown}"
    );
    let (tr, shown) = row(table(&d, "transactions"), "id", &cause);
    assert!(
        tr.contains("data-status=\"settled\"") && shown.contains(&format!("fee {fee}")),
        "{shown}"
    );
    let (tr, _) = row(table(&d, "transactions"), "id", &fee);
    assert!(tr.contains("data-status=\"settled\""));
    assert!(
        row(&d, "currency", "USD").1.contains("-65.00 -65.00"),
        "{d}"
    );
    let healed = screenshot(&exe, &url, "console-healed.png").await;
    println!(
        "console checked before, during and after a partition in {:.1}s; screenshots: {}, {}",
        t0.elapsed().as_secs_f64(),
        partitioned.display(),
        healed.display()
    );
}
