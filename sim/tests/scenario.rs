//! A scripted scenario with a known outcome: two regions spend the same 100 USD during a
//! partition (sim/scenarios/same-100-usd.txt). After the heal both regions derive exactly
//! one compensation: a fee under the fee policy, a reversal under the reverse policy.

use wallet_core::{AccountId, CompKind, Currency, Policy};
use wallet_sim::check::check;
use wallet_sim::config::{region_names, Faults, SimConfig};
use wallet_sim::engine::Sim;
use wallet_sim::scenario;

fn run(policy_file: &str) -> Sim {
    let dir = env!("CARGO_MANIFEST_DIR");
    let text =
        std::fs::read_to_string(format!("{dir}/scenarios/same-100-usd.txt")).expect("scenario");
    let ptext = std::fs::read_to_string(format!("{dir}/policies/{policy_file}")).expect("policy");
    let mut cfg = SimConfig::new(1);
    cfg.regions = region_names(2);
    cfg.workload.transactions = 0;
    cfg.faults = Faults::none();
    cfg.scenario = scenario::parse(&text, &cfg.regions, Currency::USD).expect("valid scenario");
    cfg.policy = Policy::from_toml(&ptext).expect("valid policy");
    let mut sim = Sim::new(cfg);
    sim.run();
    let c = check(&mut sim);
    assert!(c.invariants.all(), "{:?}", c.failures);
    assert_eq!(
        sim.acked.len(),
        3,
        "deposit and both purchases acknowledged"
    );
    sim
}

#[test]
fn fee_policy_charges_exactly_one_fee_on_the_later_purchase() {
    let sim = run("fee.toml");
    let alice = AccountId::new("alice").expect("id");
    for n in &sim.nodes {
        let feed = n.replica.feed(0, 10);
        assert_eq!(feed.len(), 1, "{}: {:?}", n.id, feed);
        // eu:1 is the deposit, eu:2 eu's purchase at 3.0 s, us:1 us's purchase at 3.5 s:
        // later in the total order, so us:1 overdraws by 100.00.
        assert_eq!(feed[0].id(), "fee:us:1", "{}", n.id);
        assert_eq!(feed[0].kind, CompKind::OverdraftFee);
        // 5.00 + 10% of 100.00, under the 35.00 cap.
        assert_eq!(feed[0].amount_str(), "15.00");
        let b = n.replica.balance(&alice, Currency::USD);
        assert_eq!(Currency::USD.render(b.settled), "-115.00");
        assert_eq!(Currency::USD.render(b.provisional), "-115.00");
    }
}

#[test]
fn reverse_policy_reverses_the_later_purchase() {
    let sim = run("reverse.toml");
    let alice = AccountId::new("alice").expect("id");
    for n in &sim.nodes {
        let feed = n.replica.feed(0, 10);
        assert_eq!(feed.len(), 1, "{}: {:?}", n.id, feed);
        assert_eq!(feed[0].id(), "rev:us:1", "{}", n.id);
        assert_eq!(feed[0].kind, CompKind::Reversal);
        assert_eq!(feed[0].amount_str(), "100.00");
        let b = n.replica.balance(&alice, Currency::USD);
        assert_eq!(Currency::USD.render(b.settled), "0.00");
    }
}

#[test]
fn without_the_partition_the_second_purchase_is_refused_and_nothing_is_compensated() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let text =
        std::fs::read_to_string(format!("{dir}/scenarios/same-100-usd.txt")).expect("scenario");
    let healed: String = text
        .lines()
        .filter(|l| !l.contains("split") && !l.contains("heal"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut cfg = SimConfig::new(1);
    cfg.regions = region_names(2);
    cfg.workload.transactions = 0;
    cfg.faults = Faults::none();
    cfg.scenario = scenario::parse(&healed, &cfg.regions, Currency::USD).expect("valid");
    let mut sim = Sim::new(cfg);
    sim.run();
    assert!(check(&mut sim).invariants.all());
    assert_eq!(sim.counters.refused_funds, 1);
    assert_eq!(sim.nodes[0].replica.feed_len(), 0);
}

#[test]
fn the_checker_notices_a_feed_the_policy_does_not_explain() {
    // Run under the fee policy, then check against the reverse policy: the reference model
    // expects a reversal where the replicas charged a fee.
    let mut sim = run("fee.toml");
    let dir = env!("CARGO_MANIFEST_DIR");
    let reverse = std::fs::read_to_string(format!("{dir}/policies/reverse.toml")).expect("policy");
    sim.cfg.policy = Policy::from_toml(&reverse).expect("valid");
    let c = check(&mut sim);
    assert!(!c.invariants.exactly_once, "{:?}", c.failures);
    assert!(c
        .failures
        .iter()
        .any(|(n, d)| *n == "exactly_once" && d.contains("fee:us:1") && d.contains("rev:us:1")));
    // Against a fee policy with a different amount, the ids match but the amount does not.
    let other = "[default]\naction = \"fee\"\nfee = { flat = \"7.00\" }\n";
    sim.cfg.policy = Policy::from_toml(other).expect("valid");
    let c = check(&mut sim);
    assert!(c.invariants.exactly_once);
    assert!(!c.invariants.policy_holds, "{:?}", c.failures);
}

#[test]
fn a_retry_of_a_second_body_at_a_third_region_is_reversed_as_its_duplicate() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let text =
        std::fs::read_to_string(format!("{dir}/scenarios/key-conflict.txt")).expect("scenario");
    let mut cfg = SimConfig::new(1);
    cfg.regions = region_names(3);
    cfg.workload.transactions = 0;
    cfg.faults = Faults::none();
    cfg.scenario = scenario::parse(&text, &cfg.regions, Currency::USD).expect("valid scenario");
    let mut sim = Sim::new(cfg);
    sim.run();
    let c = check(&mut sim);
    assert!(c.invariants.all(), "{:?}", c.failures);
    // All three purchases were accepted where they were sent: nobody held the key yet.
    assert_eq!(sim.acked.len(), 4);
    let alice = AccountId::new("alice").expect("id");
    for n in &sim.nodes {
        // eu:2 holds the key first; us:1 (another body) is a conflict with it and stands;
        // ap:1 (us:1's body) is us:1's duplicate and is reversed.
        let feed = n.replica.feed(0, 10);
        let ids: Vec<String> = feed.iter().map(|c| c.id()).collect();
        assert_eq!(ids, ["conflict:us:1", "rev:ap:1"], "{}", n.id);
        assert_eq!(feed[1].kind, CompKind::Reversal);
        assert_eq!(feed[1].amount_str(), "20.00");
        // 100 - 10 - 20 (ap's 20 reversed).
        let b = n.replica.balance(&alice, Currency::USD);
        assert_eq!(Currency::USD.render(b.settled), "70.00", "{}", n.id);
    }
}
