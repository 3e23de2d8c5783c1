//! examples/client.py (Python, standard library only) against a real one-region cluster over
//! HTTPS with the local CA: a deposit and a purchase with idempotency keys, their retries
//! (the same event back), a reused key refused, the balance, the compensation feed paged.

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_example_runs_against_a_region() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: python3 is not installed (examples/client.py needs Python 3)");
        return;
    }
    let mut c = cluster(&["eu"]);
    start(&mut c, 0).await;
    let url = c.regions[0].http.clone();
    assert!(url.starts_with("https://"), "the harness runs TLS: {url}");
    let ca = c.ca.clone().expect("the harness writes a local CA");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/client.py");
    // The token goes in the environment (not argv, which other users can read).
    let out = Command::new("python3")
        .arg(script)
        .args(["--url", &url, "--account", "py-alice", "--page-limit", "2"])
        .arg("--ca")
        .arg(&ca)
        .env("WALLET_TOKEN", &c.token)
        .env_remove("WALLET_URL")
        .env_remove("WALLET_CA")
        .output()
        .expect("run python3 examples/client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        c.log_tail(0)
    );
    eprintln!("{stdout}");
    for line in [
        "account py-alice at https://",
        "deposit eu:1 100.00 USD balance 100.00",
        "deposit retry eu:1 replayed",
        "purchase eu:2 30.10 USD balance 69.90",
        "purchase retry eu:2 replayed",
        "reused key with another body: 409 idempotency_conflict",
        "balance USD provisional 69.90 settled",
        "compensations 0 in 1 pages, resume from ",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");

    // What the region holds: two events, whatever the retries did.
    let history = c.history(0, "py-alice").await.expect("history");
    assert_eq!(history.len(), 2, "{history:?}");

    // A wrong token: the client exits 1 with the API's error code, not a traceback.
    let out = Command::new("python3")
        .arg(script)
        .args(["--url", &url])
        .arg("--ca")
        .arg(&ca)
        .env("WALLET_TOKEN", "wrong-token-wrong-token")
        .output()
        .expect("run python3 examples/client.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("401 unauthorized") && !stderr.contains("Traceback"),
        "{stderr}"
    );
}
