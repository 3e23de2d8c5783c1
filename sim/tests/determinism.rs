//! Same seed, same bytes; policies compared on the identical workload.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wallet-sim"))
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wallet-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

const SMALL: [&str; 8] = [
    "--transactions",
    "600",
    "--accounts",
    "15",
    "--rate",
    "60",
    "--regions",
    "3",
];

#[test]
fn same_seed_gives_byte_identical_json() {
    let (a, b) = (tmp("a.json"), tmp("b.json"));
    for p in [&a, &b] {
        let out = bin()
            .args(["--seed", "42"])
            .args(SMALL)
            .arg("--json")
            .arg(p)
            .output()
            .expect("run wallet-sim");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let (x, y) = (std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
    assert!(!x.is_empty());
    assert_eq!(x, y, "same seed, different JSON");
    let v: serde_json::Value = serde_json::from_slice(&x).expect("JSON");
    assert_eq!(v["seed"], 42);
    assert!(v["metrics"]["wall_seconds"].is_null());
    for k in [
        "convergence",
        "no_loss",
        "exactly_once",
        "policy_holds",
        "conservation",
        "idempotency",
    ] {
        assert_eq!(v["invariants"][k], true, "{k}");
    }
    for k in [
        "transactions",
        "accepted",
        "refused",
        "overdrafts",
        "fees",
        "fee_total",
        "reversals",
        "settle_lag_p50_ms",
        "settle_lag_p99_ms",
        "bytes_replicated",
        "partitions",
        "crashes",
        "wall_seconds",
    ] {
        assert!(v["metrics"].get(k).is_some(), "metrics.{k} missing");
    }
    assert!(v["metrics"]["fee_total"].is_string());
    for k in [
        "sent",
        "answered",
        "served",
        "on_connect",
        "cleared_on_disconnect",
        "given_up",
        "timed_out",
        "on_heartbeat",
        "periodic",
        "backoffs",
    ] {
        assert!(
            v["metrics"]["anti_entropy"][k].is_u64(),
            "metrics.anti_entropy.{k}"
        );
    }
    assert!(v["metrics"]["anti_entropy"]["sent"].as_u64() > Some(0));
    for k in ["cuts", "disconnects", "connects"] {
        assert!(
            v["metrics"]["connections"][k].is_u64(),
            "metrics.connections.{k}"
        );
    }
    // A different seed gives a different run.
    let c = tmp("c.json");
    let out = bin()
        .args(["--seed", "43"])
        .args(SMALL)
        .arg("--json")
        .arg(&c)
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_ne!(std::fs::read(&c).expect("c"), x);
}

#[test]
fn a_sweep_writes_one_object_per_seed_in_order() {
    let p = tmp("sweep.json");
    let out = bin()
        .args(["--seeds", "5..8", "--threads", "2"])
        .args(SMALL)
        .arg("--json")
        .arg(&p)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&p).expect("json")).expect("JSON");
    let seeds: Vec<u64> = v
        .as_array()
        .expect("list")
        .iter()
        .map(|o| o["seed"].as_u64().expect("seed"))
        .collect();
    assert_eq!(seeds, vec![5, 6, 7, 8]);
}

fn policy(name: &str) -> String {
    format!("{}/policies/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn compared_policies_see_the_identical_workload_and_faults() {
    let p = tmp("cmp.json");
    let list = ["fee.toml", "reverse.toml", "episode.toml", "line.toml"]
        .map(policy)
        .join(",");
    let out = bin()
        .args(["--seed", "3"])
        .args(SMALL)
        .args(["--compare-policies", &list, "--json"])
        .arg(&p)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("fee.toml") && stdout.contains("line.toml"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&p).expect("json")).expect("JSON");
    let runs = v.as_array().expect("list");
    assert_eq!(runs.len(), 4);
    for r in runs {
        assert_eq!(r["workload"], runs[0]["workload"], "same request stream");
        for k in ["transactions", "partitions", "crashes"] {
            assert_eq!(r["metrics"][k], runs[0]["metrics"][k], "{k}");
        }
    }
    // The overdraft line lowers the floor: more is accepted than with a zero floor.
    let accepted = |i: usize| runs[i]["metrics"]["accepted"].as_u64().expect("n");
    assert!(accepted(3) > accepted(0));
}

#[test]
fn with_the_same_floor_and_no_overdraft_to_compensate_accepted_counts_are_identical() {
    // One region: nothing is ever accepted concurrently elsewhere, so no compensation can
    // feed back into later acceptance and the counts must match exactly.
    let p = tmp("cmp1.json");
    let list = ["fee.toml", "reverse.toml", "episode.toml"]
        .map(policy)
        .join(",");
    let out = bin()
        .args([
            "--seed",
            "9",
            "--regions",
            "1",
            "--transactions",
            "800",
            "--accounts",
            "10",
        ])
        .args(["--compare-policies", &list, "--json"])
        .arg(&p)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&p).expect("json")).expect("JSON");
    let runs = v.as_array().expect("list");
    let accepted: Vec<u64> = runs
        .iter()
        .map(|r| r["metrics"]["accepted"].as_u64().expect("n"))
        .collect();
    assert!(accepted[0] > 0);
    assert!(accepted.iter().all(|a| *a == accepted[0]), "{accepted:?}");
    let refused = runs[0]["metrics"]["refused"].as_u64().expect("n");
    assert!(refused > 0, "the workload does run into the floor");
}

#[test]
fn an_injected_host_bug_fails_an_invariant_with_a_reproduction_command() {
    // Acknowledging before fsync: crashes then lose acknowledged events.
    let out = bin()
        .args([
            "--seed",
            "1",
            "--regions",
            "3",
            "--transactions",
            "3000",
            "--rate",
            "500",
        ])
        .args([
            "--crashes",
            "8",
            "--fsync",
            "20..60",
            "--inject-bug",
            "early-ack",
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("INVARIANT FAILED: no_loss (seed 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("reproduce: cargo run --release -p wallet-sim -- --seed 1 --regions 3 --transactions 3000 --rate 500 --crashes 8 --fsync 20..60 --inject-bug early-ack"),
        "{stdout}"
    );
    // Never answering pulls: a lost push is never repaired.
    let out = bin()
        .args(["--seed", "2", "--transactions", "400", "--loss", "5"])
        .args(["--inject-bug", "no-pull-answers"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("INVARIANT FAILED: convergence (seed 2"),
        "{stdout}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = bin().args(["--seed", "x"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seed"));
    let out = bin().args(["--bogus"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}
