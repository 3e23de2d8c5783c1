//! Policies drawn per seed (sim/src/policygen.rs), policy changes during a run, the three
//! currencies and the debits sent to the floor: the generator covers the policy language, the
//! same seed draws the same policy and gives the same JSON, changes apply from their place in
//! the total order, and debits sized to the floor settle exactly on it.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use wallet_core::{AccountId, Currency, Event, Policy, Status};
use wallet_sim::check::check;
use wallet_sim::config::{parse_currencies, region_names, Faults, SimConfig};
use wallet_sim::engine::Sim;
use wallet_sim::policygen::{draw, draw_seed_policy, ChangeOutcome, Feature};
use wallet_sim::run::{run, RunResult};
use wallet_sim::scenario::{self, Action, PolicyChange};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wallet-sim"))
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wallet-sim-policies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// A small run with a drawn seed policy.
fn small(seed: u64) -> SimConfig {
    let mut cfg = SimConfig::new(seed);
    cfg.workload.accounts = 30;
    cfg.workload.transactions = 1_500;
    // These runs count what settles: no Byzantine member (it freezes settlement).
    cfg.byzantine_ppm = 0;
    cfg.draw_policy();
    cfg
}

/// Runs `seeds` on two threads, in seed order.
fn runs(seeds: std::ops::Range<u64>, cfg: impl Fn(u64) -> SimConfig + Sync) -> Vec<RunResult> {
    let list: Vec<u64> = seeds.collect();
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<RunResult>>> = Mutex::new((0..list.len()).map(|_| None).collect());
    let work = || loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some(seed) = list.get(i) else { break };
        let r = run(cfg(*seed), false);
        out.lock().expect("lock")[i] = Some(r);
    };
    std::thread::scope(|s| {
        s.spawn(work);
        work();
    });
    let out: Vec<RunResult> = out
        .into_inner()
        .expect("lock")
        .into_iter()
        .map(|r| r.expect("ran"))
        .collect();
    let failed: Vec<String> = out
        .iter()
        .flat_map(|r| {
            r.check
                .failures
                .iter()
                .map(move |(n, d)| format!("seed {} ({}): {n}: {d}", r.seed, r.policy))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    out
}

#[test]
fn the_generator_covers_every_feature_of_the_policy_language() {
    const N: u64 = 2_000;
    let mut seen: BTreeMap<Feature, u64> = BTreeMap::new();
    for seed in 0..N {
        let d = draw_seed_policy(seed, 100, &[]);
        // The real parser read it, and the name is its hash.
        assert_eq!(Policy::from_toml(&d.toml).as_ref(), Ok(&d.policy));
        assert_eq!(d.name, format!("drawn-{}", d.policy.hash()));
        for f in d.features {
            *seen.entry(f).or_default() += 1;
        }
    }
    let table: Vec<String> = Feature::ALL
        .iter()
        .map(|f| format!("{} {}", f.as_str(), seen.get(f).copied().unwrap_or(0)))
        .collect();
    println!("features in {N} drawn policies: {}", table.join(", "));
    for f in Feature::ALL {
        let n = seen.get(&f).copied().unwrap_or(0);
        if f == Feature::Zero {
            // One possible draw, but rare.
            assert!(
                (5..=N / 25).contains(&n),
                "zero policy drawn {n} times in {N}"
            );
        } else {
            assert!(n >= 20, "{} in only {n} of {N} drawn policies", f.as_str());
        }
    }
    // Streams are separate: a change's draw is not the seed policy's.
    assert_ne!(
        draw(3, b"policy", 100, &[]).toml,
        draw(3, b"policy-change-0", 100, &[]).toml
    );
}

#[test]
fn drawn_policies_charge_ties_minimums_and_caps_in_every_currency() {
    let results = runs(1..41, |seed| {
        // Fee arithmetic: every account optimistic, as before modes were drawn.
        let mut cfg = SimConfig::new(seed);
        cfg.workload.accounts = 30;
        cfg.workload.transactions = 1_500;
        cfg.byzantine_ppm = 0;
        cfg.draw_modes = false;
        cfg.draw_policy();
        cfg.policy_changes = Some(0);
        cfg
    });
    let sum = |f: &dyn Fn(&RunResult) -> u64| results.iter().map(f).sum::<u64>();
    let ties = sum(&|r| r.metrics.fee_cases.ties);
    let at_minimum = sum(&|r| r.metrics.fee_cases.at_minimum);
    let at_cap = sum(&|r| r.metrics.fee_cases.at_cap);
    let within_grace = sum(&|r| r.metrics.fee_cases.within_grace);
    let fees = sum(&|r| r.metrics.fees);
    let reversals = sum(&|r| r.metrics.reversals);
    let debt = sum(&|r| r.metrics.debt_accounts);
    let per_currency = |c: &str| sum(&|r| r.metrics.currencies.get(c).map_or(0, |x| x.fees));
    let (usd, jpy, bhd) = (
        per_currency("USD"),
        per_currency("JPY"),
        per_currency("BHD"),
    );
    let names: std::collections::BTreeSet<&str> =
        results.iter().map(|r| r.policy.as_str()).collect();
    println!(
        "40 drawn policies ({} distinct): fees {fees} (USD {usd}, JPY {jpy}, BHD {bhd}), ties {ties}, raised to the minimum {at_minimum}, lowered to the cap {at_cap}, overdrafts within the grace {within_grace}, reversals {reversals}, accounts in debt {debt}",
        names.len()
    );
    assert_eq!(names.len(), 40, "every seed draws its own policy");
    assert!(fees > 0 && reversals > 0 && debt > 0);
    assert!(usd > 0 && jpy > 0 && bhd > 0, "fees in every currency");
    assert!(ties > 0, "no fee fell on a tie at half a minor unit");
    assert!(at_minimum > 0 && at_cap > 0 && within_grace > 0);
}

#[test]
fn the_same_seed_draws_the_same_policy_and_gives_the_same_json() {
    let args = ["--transactions", "600", "--accounts", "15", "--rate", "60"];
    let (a, b) = (tmp("a.json"), tmp("b.json"));
    for p in [&a, &b] {
        let out = bin()
            .args(["--seed", "11"])
            .args(args)
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
    let x = std::fs::read(&a).expect("a");
    assert_eq!(
        x,
        std::fs::read(&b).expect("b"),
        "same seed, different JSON"
    );
    let v: serde_json::Value = serde_json::from_slice(&x).expect("JSON");
    let toml = v["policy_toml"].as_str().expect("the drawn policy's TOML");
    let policy = Policy::from_toml(toml).expect("it parses");
    assert_eq!(v["policy_hash"], policy.hash().to_string());
    assert_eq!(v["policy"], format!("drawn-{}", policy.hash()));
    assert_eq!(
        toml,
        draw_seed_policy(11, 15, &wallet_sim::config::SimConfig::new(11).regions).toml
    );
    // --print-policy prints the same text.
    let out = bin()
        .args(["--seed", "11", "--accounts", "15", "--print-policy"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains(toml));
    // Another seed, another policy.
    let c = tmp("c.json");
    let out = bin()
        .args(["--seed", "12"])
        .args(args)
        .arg("--json")
        .arg(&c)
        .output()
        .expect("run");
    assert!(out.status.success());
    let w: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&c).expect("c")).expect("JSON");
    assert_ne!(w["policy_toml"], v["policy_toml"]);
    // --policy still pins one: named by its file, no TOML, no random change.
    let p = tmp("p.json");
    let file = format!("{}/policies/fee.toml", env!("CARGO_MANIFEST_DIR"));
    let out = bin()
        .args(["--seed", "11"])
        .args(args)
        .args(["--policy", &file, "--json"])
        .arg(&p)
        .output()
        .expect("run");
    assert!(out.status.success());
    let w: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&p).expect("p")).expect("JSON");
    assert_eq!(w["policy"], "fee.toml");
    assert!(w["policy_toml"].is_null());
    assert_eq!(w["policy_changes"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        w["workload"], v["workload"],
        "the workload does not depend on the policy"
    );
}

#[test]
fn a_scripted_policy_change_applies_from_its_place_in_the_total_order() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let path = format!("{dir}/scenarios/policy-change.txt");
    let text = std::fs::read_to_string(&path).expect("scenario");
    let mut cfg = SimConfig::new(1);
    cfg.regions = region_names(2);
    cfg.workload.transactions = 0;
    cfg.faults = Faults::none();
    cfg.scenario = scenario::parse(&text, &cfg.regions, Currency::USD).expect("valid scenario");
    cfg.scenario
        .load_policies(std::path::Path::new(&format!("{dir}/scenarios")))
        .expect("policy file");
    let mut sim = Sim::new(cfg);
    sim.run();
    let c = check(&mut sim);
    assert!(c.invariants.all(), "{:?}", c.failures);
    assert_eq!(sim.policy_outcomes.len(), 1);
    let ChangeOutcome::Issued(id) = sim.policy_outcomes[0] else {
        panic!("{:?}", sim.policy_outcomes);
    };
    assert_eq!(id.to_string(), "us:2");
    assert!(sim.policy_plan[0].name.starts_with("fee.toml-"));
    let alice = AccountId::new("alice").expect("id");
    for n in &sim.nodes {
        // us:1 overdrew by 100.00 under the zero policy (version 1): nothing. us:4 overdraws
        // by 40.00 under fee.toml (version 2): 5.00 + 4.00.
        let feed = n.replica.feed(0, 10);
        let got: Vec<(String, String, u32)> = feed
            .iter()
            .map(|c| (c.id(), c.amount_str(), c.policy_version))
            .collect();
        assert_eq!(
            got,
            [("fee:us:4".to_string(), "9.00".to_string(), 2)],
            "{}",
            n.id
        );
        let b = n.replica.balance(&alice, Currency::USD);
        assert_eq!(Currency::USD.render(b.settled), "-69.00", "{}", n.id);
        assert_eq!(n.replica.current_policy().0, 2);
    }
    // The same line with `generated` draws a policy and issues it.
    let generated = text.replace("../policies/fee.toml", "generated");
    let mut cfg = SimConfig::new(5);
    cfg.regions = region_names(2);
    cfg.workload.transactions = 0;
    cfg.faults = Faults::none();
    cfg.scenario = scenario::parse(&generated, &cfg.regions, Currency::USD).expect("valid");
    let mut sim = Sim::new(cfg);
    sim.run();
    let c = check(&mut sim);
    assert!(c.invariants.all(), "{:?}", c.failures);
    assert!(sim.policy_plan[0].name.starts_with("drawn-"));
    assert!(sim.policy_plan[0].toml.is_some());
    assert!(matches!(sim.policy_outcomes[0], ChangeOutcome::Issued(_)));
    assert_eq!(sim.nodes[0].replica.current_policy().0, 2);
}

#[test]
fn debits_sized_to_the_floor_settle_exactly_on_it() {
    let (mut at_floor, mut events, mut below, mut above) = (0, 0, 0, 0);
    for seed in 1..=12 {
        let mut cfg = small(seed);
        cfg.policy_changes = Some(0);
        let mut sim = Sim::new(cfg);
        sim.run();
        let c = check(&mut sim);
        assert!(c.invariants.all(), "seed {seed}: {:?}", c.failures);
        let a = wallet_sim::analysis::analyse(&sim);
        assert_eq!(a.floor.events, sim.floor_landings.len() as u64);
        assert_eq!(
            a.floor.settled_at_floor + a.floor.settled_below + a.floor.settled_above,
            a.floor.events,
            "seed {seed}: every landing settled"
        );
        events += a.floor.events;
        at_floor += a.floor.settled_at_floor;
        below += a.floor.settled_below;
        above += a.floor.settled_above;
        let r = &sim.nodes[0].replica;
        // Every event holding each key, to tell a duplicate reversal from a policy one.
        let mut by_key: BTreeMap<(String, String), Vec<&Event>> = BTreeMap::new();
        for o in &sim.cfg.regions {
            for e in r.origin_events(*o, 0) {
                if let Some(tx) = e.tx() {
                    if let Some(k) = &tx.idempotency_key {
                        by_key
                            .entry((tx.account.to_string(), k.to_string()))
                            .or_default()
                            .push(e);
                    }
                }
            }
        }
        for l in &sim.floor_landings {
            let e = r.event(l.id).expect("a landing is in the log");
            let tx = e.tx().expect("a transaction");
            assert!(tx.kind.is_debit());
            let key = (
                tx.account.to_string(),
                tx.idempotency_key.as_deref().unwrap_or("").to_string(),
            );
            let duplicate = by_key[&key].iter().any(|o| o.key() < e.key());
            // Its settled balance right after it, in total order.
            let mut bal = rust_decimal::Decimal::ZERO;
            let mut after = None;
            let mut comp = None;
            for (_, entry) in r.entries(&l.account, None, usize::MAX) {
                match entry {
                    wallet_core::Entry::Event { event, .. } => {
                        if after.is_some() {
                            break;
                        }
                        if let Some(t) = event.tx().filter(|t| t.currency == l.currency) {
                            bal += t.delta();
                            if event.id == l.id {
                                after = Some(bal);
                            }
                        }
                    }
                    wallet_core::Entry::Compensation(c) => {
                        if after.is_some() && c.cause == l.id {
                            comp = Some(c.kind);
                        }
                        if c.currency == l.currency {
                            bal += c.delta;
                        }
                    }
                }
            }
            if after == Some(l.floor) && !duplicate {
                // Exactly on the floor is not below it: no fee, no reversal.
                assert_eq!(comp, None, "seed {seed}: {} settled at the floor", l.id);
                assert!(matches!(r.status(l.id), Some((Status::Settled, _))));
            }
        }
    }
    println!(
        "{events} debits sized to the floor in 12 seeds: {at_floor} settled exactly on it, {below} below (an earlier debit of another region settled first), {above} above (an earlier credit the region had not seen)"
    );
    assert!(events >= 100, "{events}");
    // Small runs on 30 accounts: other regions' traffic often settles in between.
    assert!(
        at_floor >= 40 && at_floor * 5 >= events,
        "{at_floor} of {events} on the floor"
    );
}

#[test]
fn key_conflicts_and_third_region_retries_work_with_drawn_policies() {
    let mut found = 0;
    let mut conflicts = 0;
    for seed in 1..=10 {
        let mut cfg = small(seed);
        cfg.workload.transactions = 3_000;
        cfg.policy_changes = Some(0);
        // Every copy below is within the key retention (24 h): the rule without its edge.
        cfg.idempotency_retention_ms = Some(wallet_core::replica::IDEMPOTENCY_RETENTION_MS_DEFAULT);
        let mut sim = Sim::new(cfg);
        sim.run();
        let c = check(&mut sim);
        assert!(c.invariants.all(), "seed {seed}: {:?}", c.failures);
        conflicts += c.outcome.conflicts;
        let r = &sim.nodes[0].replica;
        let mut by_key: BTreeMap<(String, String), Vec<&Event>> = BTreeMap::new();
        for o in &sim.cfg.regions {
            for e in r.origin_events(*o, 0) {
                if let Some(tx) = e.tx() {
                    if let Some(k) = &tx.idempotency_key {
                        by_key
                            .entry((tx.account.to_string(), k.to_string()))
                            .or_default()
                            .push(e);
                    }
                }
            }
        }
        for evs in by_key.values_mut() {
            evs.sort_by_key(|e| e.key());
            let Some(holder) = evs.first().and_then(|e| e.tx()) else {
                continue;
            };
            for (i, e) in evs.iter().enumerate().skip(2) {
                let Some(tx) = e.tx() else { continue };
                let dup_of_second = evs[1..i]
                    .iter()
                    .any(|p| p.tx().is_some_and(|p| p.same_body(tx)));
                if !holder.same_body(tx) && dup_of_second {
                    found += 1;
                    assert!(
                        matches!(r.status(e.id), Some((Status::Reversed, _))),
                        "seed {seed}: {} is a duplicate and stands",
                        e.id
                    );
                }
            }
        }
    }
    println!("{found} duplicates of a second body, {conflicts} conflicts in 10 seeds");
    assert!(
        found >= 3 && conflicts > 0,
        "{found} duplicates, {conflicts} conflicts"
    );
}

#[test]
fn currencies_and_policy_lines_parse() {
    assert_eq!(
        parse_currencies("USD:8,JPY:1,BHD:1"),
        Ok(vec![
            (Currency::USD, 8),
            (Currency::JPY, 1),
            (Currency::BHD, 1)
        ])
    );
    assert_eq!(parse_currencies("JPY"), Ok(vec![(Currency::JPY, 1)]));
    assert!(parse_currencies("XXX").is_err());
    assert!(parse_currencies("USD,USD").is_err());
    assert!(parse_currencies("USD:0").is_err());
    let regions = region_names(3);
    let s = scenario::parse(
        "t=1s purchase eu alice 500 JPY key=k\nt=2s policy us generated\nt=3s policy ap p.toml\n",
        &regions,
        Currency::USD,
    )
    .expect("valid");
    assert!(matches!(
        &s.steps[0].action,
        Action::Tx { currency, amount, .. } if *currency == Currency::JPY && amount.value().to_string() == "500"
    ));
    assert_eq!(
        s.steps[1].action,
        Action::Policy(1, PolicyChange::Generated)
    );
    assert_eq!(
        s.steps[2].action,
        Action::Policy(2, PolicyChange::File("p.toml".into(), None))
    );
    assert!(!s.has_faults(), "a policy line is not a fault");
    for (text, reason) in [
        ("t=1s policy us\n", "expected `policy <region>"),
        ("t=1s policy mars generated\n", "unknown region \"mars\""),
        ("t=1s purchase eu alice 5.5 JPY\n", "decimal places"),
        ("t=1s purchase eu alice 5 XYZ\n", "XYZ"),
    ] {
        let e = scenario::parse(text, &regions, Currency::USD).expect_err(text);
        assert!(e.reason.contains(reason), "{text:?}: {}", e.reason);
    }
    // A missing policy file is refused with its line.
    let mut s =
        scenario::parse("\nt=1s policy us nowhere.toml\n", &regions, Currency::USD).expect("valid");
    let e = s
        .load_policies(std::path::Path::new("/nonexistent"))
        .expect_err("missing file");
    assert_eq!(e.line, 2);
    // A scripted transaction in BHD keeps its three places.
    let s =
        scenario::parse("t=1s deposit eu bob 1.005 BHD\n", &regions, Currency::USD).expect("valid");
    assert!(matches!(
        &s.steps[0].action,
        Action::Tx { currency, .. } if *currency == Currency::BHD
    ));
}

#[test]
fn random_policy_changes_are_replicated_and_applied() {
    // Two changes per run, at random times and regions, drawn from the generator.
    let results = runs(1..31, |seed| {
        let mut cfg = small(seed);
        cfg.policy_changes = Some(2);
        cfg
    });
    let changes: Vec<_> = results.iter().flat_map(|r| &r.policy_changes).collect();
    assert_eq!(changes.len(), 60);
    let issued = changes
        .iter()
        .filter(|c| c.outcome.starts_with("issued"))
        .count();
    let later = results
        .iter()
        .filter(|r| r.metrics.compensations_after_change > 0)
        .count();
    let versions: u32 = results.iter().map(|r| r.metrics.policy_versions).sum();
    println!(
        "30 runs, 60 changes: {issued} issued, {versions} versions settled, {later} runs with compensations under a version above 1"
    );
    assert!(changes
        .iter()
        .all(|c| c.source == "random" && c.toml.is_some()));
    assert!(
        issued >= 50,
        "{issued} of 60 issued (the others hit a down region)"
    );
    assert!(
        later >= 15,
        "only {later} runs show a compensation of a later version"
    );
    // By default a drawn policy gets 0, 1 or 2 changes.
    let mut counts = [0u32; 3];
    for seed in 1..=60 {
        let mut cfg = small(seed);
        cfg.workload.transactions = 100;
        let sim = Sim::new(cfg);
        counts[sim.policy_plan.len()] += 1;
    }
    println!("default changes per run over 60 seeds (0, 1, 2): {counts:?}");
    assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
}
