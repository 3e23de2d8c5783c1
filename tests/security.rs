//! Secrets over real `walletd` processes (issue 14, docs/security.md): private files, refusal
//! to start with readable key or token files, token rotation on SIGHUP, and no token in any
//! region output.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

fn hup(c: &LocalCluster, i: usize) {
    let pid = c.regions[i].pid().expect("running");
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(st.success());
}

#[test]
fn secret_files_are_private_and_readable_ones_are_refused() {
    let mut c = cluster(&["eu", "us"]);
    assert_eq!(mode(&c.dir), 0o700, "cluster directory");
    for f in ["eu.key", "us.key", "eu.toml", "us.toml", "cluster.json"] {
        assert_eq!(mode(&c.dir.join(f)), 0o600, "{f}");
    }
    let key = c.dir.join("eu.key");
    for m in [0o644, 0o640, 0o604] {
        chmod(&key, m);
        let (code, err) = run_expect_failure(&mut c, 0);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("identity key") && err.contains("readable by group or others"),
            "{err}"
        );
    }
    chmod(&key, 0o600);
    let config = c.regions[0].config.clone();
    chmod(&config, 0o644);
    let (code, err) = run_expect_failure(&mut c, 0);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("config file") && err.contains("chmod 600"),
        "{err}"
    );
    chmod(&config, 0o600);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async { start(&mut c, 0).await });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_on_sighup_and_several_are_valid_at_once() {
    let mut c = cluster(&["eu"]);
    let config = c.regions[0].config.clone();
    let text = std::fs::read_to_string(&config).expect("config");
    let old = c.token.clone();
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    assert_eq!(api.get("/v1/status").await.status, 200);

    // Step 1: the new token is added next to the old one (in a token file), SIGHUP.
    let new_a = "rotated-token-aaaaaaaaaaaaaaaa";
    let new_b = "rotated-token-bbbbbbbbbbbbbbbb";
    let tokens_file = c.dir.join("client-tokens");
    wallet::secret::write_private(&tokens_file, format!("{new_a}\n{new_b}\n").as_bytes())
        .expect("token file");
    let step1 = text.replace(
        "\ntokens = [",
        &format!("\ntokens_file = \"{}\"\ntokens = [", tokens_file.display()),
    );
    std::fs::write(&config, &step1).expect("write");
    hup(&c, 0);
    wait_status(&api.with_token(new_a), 200).await;
    for t in [old.as_str(), new_a, new_b] {
        assert_eq!(api.with_token(t).get("/v1/status").await.status, 200, "{t}");
    }

    // Step 2: the old token is removed, SIGHUP: it is refused, the new ones stay valid.
    let step2 = step1.replace(&format!("tokens = [\"{old}\"]"), "tokens = []");
    assert_ne!(step1, step2);
    std::fs::write(&config, &step2).expect("write");
    hup(&c, 0);
    wait_status(&api.with_token(&old), 401).await;
    assert_eq!(api.with_token(new_a).get("/v1/status").await.status, 200);
    assert_eq!(api.with_token(new_b).get("/v1/status").await.status, 200);

    // A config that no longer loads keeps the running tokens (and the region).
    std::fs::write(&config, "this is not toml = = =").expect("write");
    hup(&c, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.with_token(new_a).get("/v1/status").await.status, 200);
    assert!(c.regions[0].running());
    for t in [new_a, new_b] {
        assert!(c.files_holding(t).is_empty(), "{t} leaked");
    }
}

async fn wait_status(api: &Api, want: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = api.get("/v1/status").await.status;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "status stays {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every way a token could reach a log: requests with wrong, truncated and extended tokens, an
/// admin route with the client token, a config with a syntax error on the token's line, debug
/// logging. None of the region output may hold a token (the cluster's drop scans it too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_any_region_output() {
    let mut o = ClusterOptions::new(BIN.into(), &["eu", "us"]).expect("options");
    o.log_filter = "debug,libp2p=info,yamux=info,multistream_select=info".into();
    o.scan_secrets_on_drop = true;
    o.check = Some(contract_check());
    let mut c = LocalCluster::init(o).expect("init");
    let token = c.token.clone();
    let admin = c.admin_token.clone();
    assert!(!format!("{c:?}").contains(&token));
    c.start_all().await.expect("start");
    let eu = region_api(&c, 0);
    assert_eq!(eu.tx("alice", "deposit", "10.00", None).await.status, 201);
    let prefix = &token[..token.len() - 1];
    for t in [prefix.to_string(), format!("{token}x"), format!("x{token}")] {
        assert_eq!(eu.with_token(&t).get("/v1/status").await.status, 401);
    }
    assert_eq!(
        eu.get("/v1/admin/evidence").await.status,
        403,
        "client token on an admin route"
    );
    let cfg = wallet::config::NodeConfig::load(&c.regions[0].config).expect("config");
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains(&token) && !dbg.contains(&admin), "{dbg}");

    // A syntax error on the token's line, at start and on SIGHUP.
    c.stop(1).await;
    let config = c.regions[1].config.clone();
    let text = std::fs::read_to_string(&config).expect("config");
    let broken = text.replace(
        &format!("tokens = [\"{token}\"]"),
        &format!("tokens = [\"{token}\" \"{admin}\"]"),
    );
    assert_ne!(text, broken);
    std::fs::write(&config, &broken).expect("write");
    let (_, err) = run_expect_failure(&mut c, 1);
    assert!(err.contains("config error"), "{err}");
    assert!(
        !err.contains(&token) && !err.contains(&admin),
        "the error echoes a token: {err}"
    );
    let config0 = c.regions[0].config.clone();
    let text0 = std::fs::read_to_string(&config0).expect("config");
    std::fs::write(
        &config0,
        text0.replace(
            &format!("tokens = [\"{token}\"]"),
            &format!("tokens = [\"{token}\" oops]"),
        ),
    )
    .expect("write");
    hup(&c, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(eu.get("/v1/status").await.status, 200);
    c.stop(0).await;
    for t in [&token, &admin] {
        assert!(c.files_holding(t).is_empty(), "{:?}", c.files_holding(t));
    }
}

/// The HTTP API speaks only TLS (init --tls's local CA), and SIGHUP swaps the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_only_and_the_certificate_reloads_on_sighup() {
    let mut c = cluster(&["eu"]);
    assert!(
        c.regions[0].http.starts_with("https://"),
        "{}",
        c.regions[0].http
    );
    start(&mut c, 0).await;
    let api = region_api(&c, 0);
    assert_eq!(api.tx("alice", "deposit", "1.00", None).await.status, 201);
    // Plain HTTP to the same port gets no HTTP answer.
    let plain_url = c.regions[0].http.replace("https://", "http://");
    let plain = wallet::cluster::http_client(None, None).expect("client");
    let r = plain.get(format!("{plain_url}/healthz")).send().await;
    assert!(
        r.is_err(),
        "plain HTTP answered: {:?}",
        r.map(|r| r.status())
    );
    // A client that does not trust the local CA is refused.
    let r = plain.get(format!("{}/healthz", api.url())).send().await;
    assert!(r.is_err(), "untrusted certificate accepted");

    // Another CA's certificate for the same names, swapped in on SIGHUP.
    let mut o = ClusterOptions::new(BIN.into(), &["eu"]).expect("options");
    o.tls = true;
    let other = LocalCluster::init(o).expect("init");
    for f in ["eu.crt", "eu.tls.key"] {
        let bytes = std::fs::read(other.dir.join(f)).expect("read");
        wallet::secret::write_private(&c.dir.join(f), &bytes).expect("write");
    }
    hup(&c, 0);
    let new_ca = other.ca.clone().expect("ca");
    let old_ca = c.ca.clone().expect("ca");
    let deadline = Instant::now() + WAIT;
    loop {
        // Fresh clients: new connections, new handshakes.
        let trusts_new = wallet::cluster::http_client(Some(&new_ca), None).expect("client");
        let r = trusts_new
            .get(format!("{}/healthz", api.url()))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().as_u16() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let trusts_old = wallet::cluster::http_client(Some(&old_ca), None).expect("client");
    let r = trusts_old
        .get(format!("{}/healthz", api.url()))
        .send()
        .await;
    assert!(r.is_err(), "the old certificate is still served");
}

/// With `http.tls.client_ca`, a client without a certificate from that CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let mut c = cluster(&["eu"]);
    let config = c.regions[0].config.clone();
    let text = std::fs::read_to_string(&config).expect("config");
    let new = text.replace("# client_ca = ", "client_ca = ");
    assert_ne!(text, new);
    std::fs::write(&config, new).expect("write");
    start(&mut c, 0).await;
    let ca = c.ca.clone().expect("ca");
    let (cert, key) = c.client_identity.clone().expect("client identity");
    let anonymous = wallet::cluster::http_client(Some(&ca), None).expect("client");
    let r = anonymous
        .get(format!("{}/healthz", c.regions[0].http))
        .send()
        .await;
    assert!(r.is_err(), "a client without a certificate was served");
    let with_cert = wallet::cluster::http_client(Some(&ca), Some((&cert, &key))).expect("client");
    let r = with_cert
        .get(format!("{}/v1/status", c.regions[0].http))
        .bearer_auth(&c.token)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
}
