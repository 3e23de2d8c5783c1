//! Real-network faults (issue 15): three `walletd` regions, each in its own network
//! namespace, faults injected from outside the processes (a bridge port taken down, kill -9,
//! SIGSTOP/SIGCONT), a bank workload over HTTPS during the faults, and the bank checker at
//! the end ([`wallet::bank`]). Skips, saying why, where network namespaces are not permitted.

mod common;

use std::time::{Duration, Instant};

use common::*;
use wallet::bank::{self, Downtime, Workload};

const EU: usize = 0;
const US: usize = 1;
const AP: usize = 2;

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_survives_link_down_partition_kill9_and_pause_in_namespaces() {
    if let Err(e) = wallet::netns::probe() {
        println!("SKIPPED: {e}");
        return;
    }
    let t0 = Instant::now();
    let mut o = ClusterOptions::new(BIN.into(), &["eu", "us", "ap"]).expect("options");
    o.netns = true;
    o.faults = false;
    o.log_filter = "warn".into();
    o.scan_secrets_on_drop = true;
    o.check = Some(contract_check());
    let mut c = LocalCluster::init(o).expect("init in namespaces");
    c.start_all().await.expect("start");
    wait_connected(&c, &[EU, US, AP]).await;
    let started = t0.elapsed();

    let ports: Vec<u16> = (0..3).map(|i| c.p2p_port(i).expect("port")).collect();
    let probe = |c: &LocalCluster, from: usize, to: usize| {
        c.fabric()
            .expect("fabric")
            .tcp_reachable(from, to, ports[to])
            .expect("probe")
    };
    // Reachable: a link just brought up (or a loaded machine) may take a few probes.
    let reach = |c: &LocalCluster, from: usize, to: usize| (0..10).any(|_| probe(c, from, to));
    assert!(
        reach(&c, EU, AP) && reach(&c, AP, US),
        "the fabric connects the regions"
    );

    let clients: Vec<Client> = (0..3).map(|i| c.client(i).expect("client")).collect();
    let w = Workload {
        seed: 15,
        duration: Duration::from_secs(12),
        ..Workload::default()
    };
    let wt0 = w.t0;
    let ms = move || u64::try_from(wt0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut downtime = Vec::new();
    let window = |region, from_ms, what: &str| Downtime {
        region,
        from_ms,
        to_ms: ms(),
        what: what.into(),
    };
    let workload = tokio::spawn(bank::run_workload(clients.clone(), w));
    let mut faults = Vec::new();
    let mut log = |what: String| {
        faults.push(format!("{:.1}s {what}", t0.elapsed().as_secs_f64()));
    };

    sleep_ms(1_000).await;
    c.fabric_mut()
        .expect("fabric")
        .isolate(AP)
        .expect("isolate");
    log("ap isolated (bridge port down)".into());
    assert!(!probe(&c, EU, AP) && !probe(&c, AP, US), "ap is cut off");
    sleep_ms(2_000).await;
    let from = ms();
    c.kill(US);
    log("us kill -9".into());
    sleep_ms(1_500).await;
    c.start(US).await.expect("restart us");
    downtime.push(window(US, from, "kill -9"));
    log("us restarted".into());
    sleep_ms(1_000).await;
    let from = ms();
    c.pause(EU).expect("pause");
    log("eu SIGSTOP".into());
    sleep_ms(1_500).await;
    c.resume(EU).expect("resume");
    downtime.push(window(EU, from, "SIGSTOP"));
    log("eu SIGCONT".into());
    sleep_ms(1_000).await;
    // The partition was real: while ap was away, neither side got the other's new events.
    let ap_st = status(&c, AP).await;
    let us_st = status(&c, US).await;
    let (ap_of_us, us_of_us) = (
        &ap_st["version_vector"]["us"],
        &us_st["version_vector"]["us"],
    );
    let (us_of_ap, ap_of_ap) = (
        &us_st["version_vector"]["ap"],
        &ap_st["version_vector"]["ap"],
    );
    println!(
        "before heal: ap holds us:{ap_of_us} of {us_of_us}, us holds ap:{us_of_ap} of {ap_of_ap}"
    );
    assert!(ap_of_us.as_u64() < us_of_us.as_u64() && us_of_ap.as_u64() < ap_of_ap.as_u64());
    c.fabric_mut().expect("fabric").heal().expect("heal");
    log("healed (links up)".into());
    // A one-way block: eu's packets to us are dropped (us's reach eu, unanswered).
    c.fabric_mut()
        .expect("fabric")
        .block(EU, US)
        .expect("block");
    log("eu->us blocked (blackhole route)".into());
    assert!(
        !probe(&c, EU, US) && reach(&c, EU, AP),
        "only eu->us is blocked"
    );
    sleep_ms(1_000).await;
    c.fabric_mut()
        .expect("fabric")
        .unblock(EU, US)
        .expect("unblock");
    log("eu->us unblocked".into());

    let h = workload.await.expect("workload task").expect("workload");
    wait_connected(&c, &[EU, US, AP]).await;
    let mut r = bank::check_with_downtime(&clients, &h, Duration::from_secs(30), &downtime)
        .await
        .expect("checker");
    r.faults = faults;
    let json = serde_json::to_string_pretty(&r).expect("json");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("netns-bank-result.json");
    std::fs::write(&path, &json).expect("write result");
    println!("{}", r.summary());
    println!(
        "faults: {:?}; cluster up in {:.1}s, whole run {:.1}s; result: {}",
        r.faults,
        started.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        path.display()
    );
    assert!(r.valid, "{json}");
    assert!(r.acked > 0, "nothing was acknowledged");
}
