//! The multi-host walk-through of docs/deployment.md, on this machine: three network
//! namespaces stand in for three hosts ([`wallet::netns::NetnsFabric`]), this process for the
//! operator's machine on their network. `walletd init --tls --region eu=ADDR ...` (the binary,
//! as the guide runs it) writes one directory per host; each is copied (`cp -a`) to a different
//! path, as a copy to another machine would; each region runs in its namespace from its copy.
//! ap is named by host name (a hosts file in each namespace stands in for DNS). Checked: the
//! configs carry no path of the machine that wrote them; every region binds 0.0.0.0 (TCP and
//! QUIC) and advertises its host's address or name; the three connect (ap dialed by name); a deposit at
//! eu and a purchase at us replicate to every region and settle with the same balances; then the
//! guide's rolling upgrade (each region stopped and started in turn while the others take
//! payments) and its backup procedure (copies of stopped regions, all restored together).
//! Skips, saying why, where network namespaces are not permitted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use wallet::cluster::Adopt;
use wallet::init::{ClusterFile, HOST_CONFIG_NAME, HTTP_PORT_DEFAULT, P2P_PORT_DEFAULT};
use wallet::netns::NetnsFabric;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// ap's host name (the others are given by address).
const AP_HOST: &str = "ap-1.wallet.test";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ss` in namespace `ns`: the listening sockets (`-t` TCP or `-u` UDP).
fn listening(ns: &str, proto: &str) -> String {
    run(Command::new("ip").args(["netns", "exec", ns, "ss", "-Hln", proto]))
}

/// Waits until every region sees every other connected, heard and with the same policy.
async fn all_connected(c: &LocalCluster, what: &str) {
    eventually(c, what, WAIT, || async {
        let mut all = true;
        for i in 0..REGIONS.len() {
            all &= sees(c, i, &REGIONS).await;
        }
        all
    })
    .await;
}

/// Waits until the three regions converge with `dep-alice` settled, then asserts its USD
/// balance is `amount` (provisional and settled) on each.
async fn settled_everywhere(c: &LocalCluster, what: &str, amount: &str) {
    let accounts = vec!["dep-alice".to_string()];
    wait_converged(c, what, &[0, 1, 2], &accounts).await;
    for (k, region) in REGIONS.iter().enumerate() {
        assert_eq!(
            balance(c, k, "dep-alice").await,
            Some((amount.to_string(), amount.to_string())),
            "{region}: {what}"
        );
    }
}

/// Stops every region with SIGTERM; each must exit 0.
async fn stop_all(c: &mut LocalCluster) {
    for (k, region) in REGIONS.iter().enumerate() {
        assert_eq!(c.stop(k).await, Some(0), "{region}: SIGTERM exits 0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_in_namespaces_follow_the_deployment_guide() {
    if let Err(e) = wallet::netns::probe() {
        println!("SKIPPED: {e}");
        return;
    }
    let mut fabric = NetnsFabric::create(REGIONS.len()).expect("three namespaces");
    // The operator's machine (this process) on the hosts' network.
    let me = fabric
        .join_region_network()
        .expect("join the region network");
    let ips: Vec<std::net::Ipv4Addr> = fabric.regions.iter().map(|r| r.peer_ip).collect();
    // eu and us are given by address, ap by host name: the hosts resolve it (a hosts file
    // in every namespace, as DNS would), and so does this process.
    fabric
        .set_hosts(&[(AP_HOST.to_string(), ips[2])])
        .expect("hosts files");
    let addrs: Vec<String> = vec![ips[0].to_string(), ips[1].to_string(), AP_HOST.to_string()];
    let advertised: Vec<String> = vec![
        format!("/ip4/{}", ips[0]),
        format!("/ip4/{}", ips[1]),
        format!("/dns/{AP_HOST}"),
    ];
    let work = tempfile::tempdir().expect("temp dir");

    // 1. On the operator's machine: one directory per host.
    let admin = work.path().join("admin");
    let mut init = Command::new(BIN);
    init.args(["init", "--tls", "--dir"]).arg(&admin);
    for (r, a) in REGIONS.iter().zip(&addrs) {
        init.args(["--region", &format!("{r}={a}")]);
    }
    let printed = run(&mut init);
    println!("operator at {me}; walletd init printed:\n{printed}");
    let cluster_json = std::fs::read_to_string(admin.join("cluster.json")).expect("cluster.json");
    let mut file: ClusterFile = serde_json::from_str(&cluster_json).expect("cluster.json parses");

    // 2. "Copy" each host's directory to that host: another path, modes kept.
    let admin_prefix = admin.display().to_string();
    let mut copies: Vec<PathBuf> = Vec::new();
    for (k, r) in REGIONS.iter().enumerate() {
        let src = admin.join(r);
        let host_root = work.path().join(format!("host-{k}")).join("etc");
        std::fs::create_dir_all(&host_root).expect("host root");
        let dst = host_root.join("walletd");
        run(Command::new("cp").arg("-a").arg(&src).arg(&dst));
        let cfg_path = dst.join(HOST_CONFIG_NAME);
        let cfg = std::fs::read_to_string(&cfg_path).expect("the copied config");
        assert!(
            !cfg.contains(&admin_prefix) && !cfg.contains(&work.path().display().to_string()),
            "{r}: the config names a path of the machine that wrote it:\n{cfg}"
        );
        for needle in [
            format!("listen = \"0.0.0.0:{HTTP_PORT_DEFAULT}\""),
            format!("\"/ip4/0.0.0.0/tcp/{P2P_PORT_DEFAULT}\""),
            format!("\"/ip4/0.0.0.0/udp/{P2P_PORT_DEFAULT}/quic-v1\""),
            format!("\"{}/tcp/{P2P_PORT_DEFAULT}\"", advertised[(k + 1) % 3]),
            format!(
                "\"{}/udp/{P2P_PORT_DEFAULT}/quic-v1\"",
                advertised[(k + 2) % 3]
            ),
        ] {
            assert!(cfg.contains(&needle), "{r}: no {needle} in\n{cfg}");
        }
        for f in [
            format!("{r}.key"),
            format!("{r}.crt"),
            format!("{r}.tls.key"),
            "ca.crt".into(),
            "policy.toml".into(),
        ] {
            assert!(
                dst.join(&f).is_file(),
                "{r}: {f} is not in the host directory"
            );
        }
        assert!(
            !dst.join("ca.key").exists(),
            "the CA key stays on the operator's machine"
        );
        // The region is started from the copy; the original is moved away to prove it.
        std::fs::rename(&src, admin.join(format!("{r}.sent"))).expect("move the original");
        if let Some(reg) = file.regions.get_mut(k) {
            reg.config = cfg_path.display().to_string();
        }
        copies.push(dst);
    }

    // 3. Start each region on its "host" from its copy.
    let mut c = LocalCluster::adopt(Adopt {
        exe: BIN.into(),
        // JSON logs with libp2p's DNS resolution traced: they show who resolved ap's name.
        run_args: ["run", "--log-format", "json", "--config"]
            .map(String::from)
            .to_vec(),
        dir: work.path().to_path_buf(),
        remove_dir: false,
        file,
        log_filter: "warn,libp2p_dns=trace".into(),
        scan_secrets_on_drop: true,
        fabric: Some(fabric),
        // Every answer the test receives is checked against the OpenAPI document, as in every
        // cluster test (tests/common).
        check: Some(contract_check()),
        resolve: vec![(
            AP_HOST.to_string(),
            std::net::SocketAddr::from((ips[2], HTTP_PORT_DEFAULT)),
        )],
    })
    .expect("adopt the copied hosts");
    c.start_all().await.expect("start the three hosts");
    for (k, r) in REGIONS.iter().enumerate() {
        assert_eq!(
            c.regions[k].http,
            format!("https://{}:{HTTP_PORT_DEFAULT}", addrs[k]),
            "{r}: clients reach it at its host address"
        );
        let ns = c.fabric().expect("fabric").ns(k).expect("ns").to_string();
        let tcp = listening(&ns, "-t");
        let udp = listening(&ns, "-u");
        assert!(
            tcp.contains(&format!("0.0.0.0:{HTTP_PORT_DEFAULT}"))
                && tcp.contains(&format!("0.0.0.0:{P2P_PORT_DEFAULT}")),
            "{r}: HTTP and libp2p bind 0.0.0.0 over TCP:\n{tcp}"
        );
        assert!(
            udp.contains(&format!("0.0.0.0:{P2P_PORT_DEFAULT}")),
            "{r}: libp2p binds 0.0.0.0 over UDP (QUIC):\n{udp}"
        );
        assert!(
            c.data_dir(k).expect("data dir").starts_with(&copies[k]),
            "{r}: its database is in its copied directory"
        );
    }
    wait_connected(&c, &[0, 1, 2]).await;
    // eu and us dialed ap by its name, resolved on their hosts.
    let resolved = format!("\"resolved\":\"/ip4/{}\"", ips[2]);
    for k in [0, 1] {
        let log = std::fs::read_to_string(&c.regions[k].log).expect("log");
        assert!(
            log.contains(&resolved) && log.contains(&format!("/dns/{AP_HOST}")),
            "{}: no {resolved} for {AP_HOST} in its log:\n{log}",
            REGIONS[k]
        );
    }

    // 4. A payment: a deposit at eu, then a purchase at us once us has the deposit.
    let a = c
        .tx(0, "dep-alice", "deposit", "100.00", "USD", Some("dep-1"))
        .await
        .expect("deposit");
    assert_eq!(a.status, 201, "{}", a.json);
    eventually(&c, "us to hold the deposit", WAIT, || async {
        balance(&c, 1, "dep-alice").await.map(|b| b.0) == Some("100.00".into())
    })
    .await;
    let a = c
        .tx(1, "dep-alice", "purchase", "30.00", "USD", Some("buy-1"))
        .await
        .expect("purchase");
    assert_eq!(a.status, 201, "{}", a.json);
    let accounts = vec!["dep-alice".to_string()];
    wait_converged(
        &c,
        "every host to settle the payment",
        &[0, 1, 2],
        &accounts,
    )
    .await;
    for (k, r) in REGIONS.iter().enumerate() {
        assert_eq!(
            balance(&c, k, "dep-alice").await,
            Some(("70.00".into(), "70.00".into())),
            "{r}: provisional and settled"
        );
        let h = c.history(k, "dep-alice").await.expect("history");
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.iter().all(|t| t["status"] == "settled"), "{h:?}");
    }
    println!(
        "three hosts connected; deposit at eu and purchase at us settled everywhere: 70.00 USD"
    );
    assert!(Path::new(&copies[0]).join("data").is_dir());

    // 5. "Upgrading one region at a time": each region in turn stopped with SIGTERM (exit 0),
    // a payment taken by another region while it is away, the region started again from its
    // directory, and back (connected, heard) on every region before the next one. (The binary
    // is the same one: what is exercised is the procedure, not a format change.)
    for (k, region) in REGIONS.iter().enumerate() {
        assert_eq!(c.stop(k).await, Some(0), "{}: SIGTERM exits 0", region);
        let other = (k + 1) % REGIONS.len();
        let a = c
            .tx(
                other,
                "dep-alice",
                "purchase",
                "1.00",
                "USD",
                Some(&format!("upgrade-{k}")),
            )
            .await
            .expect("purchase while a region is away");
        assert_eq!(
            a.status, 201,
            "{} accepts while {} is away: {}",
            REGIONS[other], region, a.json
        );
        c.start(k).await.expect("start the upgraded region");
        all_connected(&c, "every region to see the upgraded one back").await;
    }
    settled_everywhere(&c, "after the rolling upgrade", "67.00").await;
    println!("rolling upgrade: each region stopped (exit 0) and back in turn; 3 payments taken meanwhile; 67.00 USD settled everywhere");

    // 6. "Backups of a live database", for what they are for (losing every region at once):
    // copies taken with the regions stopped, a payment after them, then every region restored
    // from its copy and started together: they converge on what the copies hold.
    let mut backups = Vec::new();
    stop_all(&mut c).await;
    for k in 0..REGIONS.len() {
        let data = c.data_dir(k).expect("data dir");
        let backup = PathBuf::from(format!("{}.backup", data.display()));
        run(Command::new("cp").arg("-a").arg(&data).arg(&backup));
        backups.push((data, backup));
    }
    c.start_all().await.expect("start after the backup");
    all_connected(&c, "every region connected after the backup").await;
    let a = c
        .tx(
            0,
            "dep-alice",
            "purchase",
            "5.00",
            "USD",
            Some("after-backup"),
        )
        .await
        .expect("purchase after the backup");
    assert_eq!(a.status, 201, "{}", a.json);
    wait_converged(
        &c,
        "the payment after the backup to settle",
        &[0, 1, 2],
        &accounts,
    )
    .await;
    assert_eq!(
        balance(&c, 2, "dep-alice").await,
        Some(("62.00".into(), "62.00".into()))
    );
    stop_all(&mut c).await;
    for (data, backup) in &backups {
        std::fs::remove_dir_all(data).expect("remove the lost data dir");
        run(Command::new("cp").arg("-a").arg(backup).arg(data));
    }
    c.start_all()
        .await
        .expect("start every region from its backup");
    settled_everywhere(
        &c,
        "restored from the backup (the later 5.00 purchase is lost)",
        "67.00",
    )
    .await;
    for k in 0..REGIONS.len() {
        let h = c.history(k, "dep-alice").await.expect("history");
        assert_eq!(h.len(), 5, "{h:?}");
    }
    println!("backup: copies of three stopped regions, a payment after them, every region restored from its copy: 67.00 USD everywhere, the later payment gone");
}
