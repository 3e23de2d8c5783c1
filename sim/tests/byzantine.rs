//! The Byzantine fault mode: one region misbehaves with its own signing key (equivocates, or
//! breaks a signed heartbeat promise). Scripted runs where every honest region detects it,
//! the share of default seeds that draw it, and runs showing that each new invariant
//! (`detection`, `evidence_durable`) can fail.

use wallet_core::{Config, Evidence, Hlc, Policy, Replica, Report};
use wallet_sim::check::{check, CheckResult};
use wallet_sim::config::{Behaviour, ByzantinePlan, Inject, SimConfig};
use wallet_sim::engine::{draw_byzantine, Sim};

const EU: usize = 0;
const US: usize = 1;
const AP: usize = 2;

/// eu, us and ap trade for 12 s; ap crashes at 8 s and restarts at 9 s.
const SCRIPT: &str = "\
t=1s     deposit  eu alice 100.00 key=dep-1
t=1200ms deposit  us alice 50.00 key=dep-2
t=1400ms deposit  ap bob 70.00 key=dep-3
t=2s     purchase us alice 10.00 key=buy-1
t=4s     purchase us alice 5.00 key=buy-2
t=4500ms deposit  eu bob 20.00 key=dep-4
t=6s     purchase us bob 7.00 key=buy-3
t=7s     deposit  ap alice 3.00 key=dep-5
t=8s     crash    ap
t=9s     restart  ap
t=10s    purchase eu alice 1.00 key=buy-4
t=12s    deposit  us bob 2.00 key=dep-6
";

/// Three regions, no random faults (5 ms links, 1 ms fsyncs), us Byzantine from 3 s.
fn config(behaviour: Behaviour) -> SimConfig {
    let mut cfg = SimConfig::scripted(3, SCRIPT, 500, 250).expect("valid scenario");
    cfg.self_check_every = 1;
    cfg.byzantine = Some(ByzantinePlan {
        region: US,
        behaviour,
        at_ms: 3_000,
    });
    cfg
}

fn reports(sim: &Sim, kind: &str) -> u64 {
    let k = Report::KINDS
        .iter()
        .position(|x| *x == kind)
        .expect("report kind");
    sim.counters.reports[k]
}

fn run(cfg: SimConfig) -> (Sim, CheckResult) {
    let mut sim = Sim::new(cfg);
    sim.run();
    let c = check(&mut sim);
    (sim, c)
}

/// What every scripted detection must show: the lie reached both honest regions, each holds
/// evidence against us, us is frozen there (its later events are not applied), and every
/// invariant holds. The run ends with a retire of us (issue 12): settlement resumes on both
/// honest regions, at the same cut, and the evidence stays readable.
fn detected(sim: &Sim, c: &CheckResult) {
    assert!(c.invariants.all(), "{:?}", c.failures);
    assert!(sim.converged_at.is_some());
    assert_eq!(sim.byzantine_active(), Some(US));
    let byz = sim.byz.as_ref().expect("byzantine member");
    assert!(byz.forged_delivered >= 2, "{}", byz.forged_delivered);
    for r in [EU, AP] {
        assert!(byz.handed[r]);
        assert!(sim.holds_evidence(r, US), "region {r} holds no evidence");
        let us = sim.cfg.regions[US];
        assert!(sim.nodes[r]
            .replica
            .members()
            .iter()
            .any(|m| m.region == us && m.equivocated));
        // us's last deposit (12 s) is never applied by an honest region.
        assert!(
            sim.nodes[r].replica.version_vector().get(&us)
                < sim.nodes[US].replica.version_vector().get(&us)
        );
        assert!(!sim.nodes[r].replica.settlement_blocked());
        assert!(sim.nodes[r].replica.cut(us).is_some());
        assert_eq!(sim.nodes[r].replica.cut(us), sim.nodes[EU].replica.cut(us));
    }
    assert!(sim
        .membership
        .iter()
        .any(|m| m.source == "byzantine" && m.outcome.is_ok()));
    assert!(reports(sim, "equivocation") >= 2);
}

#[test]
fn an_equivocating_member_is_detected_by_every_honest_region() {
    let (sim, c) = run(config(Behaviour::Equivocate));
    detected(&sim, &c);
    let byz = sim.byz.as_ref().expect("byzantine member");
    let (orig, forged) = byz.forged_event.as_ref().expect("a forged second version");
    assert_eq!(orig.id, forged.id);
    assert_ne!(orig.body, forged.body);
    for r in [EU, AP] {
        assert!(sim.nodes[r]
            .replica
            .evidence()
            .iter()
            .any(|e| matches!(e, Evidence::Conflicting(..))));
        // us's first version had settled before its second version arrived (the member
        // signs a second version of its last durable event): an acknowledgement never
        // counts less than what its region settled, so the cut keeps the first version, and
        // the honest regions keep it.
        let us = sim.cfg.regions[US];
        let cut = sim.nodes[r].replica.cut(us).expect("a cut");
        assert!(cut >= orig.id.seq, "cut {cut}");
        assert_eq!(sim.nodes[r].replica.event(orig.id), Some(orig));
        assert!(sim.nodes[r].replica.is_settled(&orig.key()));
    }
}

#[test]
fn a_member_that_breaks_its_promise_is_detected_by_every_honest_region() {
    let (sim, c) = run(config(Behaviour::BreakPromise));
    detected(&sim, &c);
    let byz = sim.byz.as_ref().expect("byzantine member");
    let (hb, e) = byz.forged_promise.as_ref().expect("a forged promise");
    // The promise denies the event us issued next (us:3, the purchase at 4 s).
    assert_eq!(e.id.seq, hb.hb.seq + 1);
    assert!(e.hlc <= hb.hb.hlc);
    assert_eq!(e.id.seq, 3);
    for r in [EU, AP] {
        let ev = sim.nodes[r].replica.evidence();
        assert!(
            ev.iter()
                .any(|x| matches!(x, Evidence::BrokenPromise { .. })),
            "{ev:?}"
        );
        // Neither honest region holds the event the promise denied, and the cut is below it.
        assert!(sim.nodes[r].replica.event(e.id).is_none());
        let us = sim.cfg.regions[US];
        assert!(sim.nodes[r].replica.cut(us).is_some_and(|c| c < e.id.seq));
    }
}

#[test]
fn about_one_default_seed_in_eight_draws_a_byzantine_member() {
    let mut counts = [0u32; 2];
    let mut drawn = 0;
    for seed in 1..=800 {
        let cfg = SimConfig::new(seed);
        if let (Some(p), _) = draw_byzantine(&cfg, 50_000) {
            drawn += 1;
            assert!(p.region < 3);
            assert!((6_250..=37_500).contains(&p.at_ms));
            counts[usize::from(p.behaviour == Behaviour::BreakPromise)] += 1;
        }
    }
    assert!((70..=130).contains(&drawn), "{drawn}");
    assert!(counts.iter().all(|c| *c >= 25), "{counts:?}");
    // Off with --byzantine 0, and never in a run with scripted faults.
    let mut cfg = SimConfig::new(1);
    cfg.byzantine_ppm = 0;
    assert!((1..=200).all(|s| {
        cfg.seed = s;
        draw_byzantine(&cfg, 50_000).0.is_none()
    }));
    let mut cfg = config(Behaviour::Equivocate);
    cfg.byzantine = None;
    cfg.byzantine_ppm = 1_000_000;
    assert!(draw_byzantine(&cfg, 50_000).0.is_none());
}

#[test]
fn detection_fails_when_an_honest_region_ends_without_evidence() {
    let (mut sim, c) = run(config(Behaviour::BreakPromise));
    assert!(c.invariants.detection);
    // Rebuild eu from its events alone, as if it had never caught us: it was handed the
    // forged promise, so the checker must object.
    let mut cfg = Config::new(sim.cfg.regions[EU], sim.cfg.regions.clone(), Policy::zero());
    cfg.cluster = "wallet-sim".into();
    let old = std::mem::replace(&mut sim.nodes[EU].replica, Replica::new(cfg, Hlc::ZERO));
    let events = old.into_logs().into_iter().flat_map(|(_, l)| l).collect();
    sim.nodes[EU].replica.load(events);
    let c = check(&mut sim);
    assert!(!c.invariants.detection);
    assert!(!c.invariants.all());
    assert!(
        c.failures
            .iter()
            .any(|(n, d)| *n == "detection" && d.contains("eu was handed")),
        "{:?}",
        c.failures
    );
}

#[test]
fn evidence_durable_fails_when_a_restart_forgets_the_evidence() {
    // ap catches us at about 4 s, reports it once the evidence is durable, crashes at 8 s;
    // a host that does not hand the stored evidence back on the restart is caught.
    let mut cfg = config(Behaviour::BreakPromise);
    cfg.inject = Some(Inject::ForgetEvidence);
    let (_, c) = run(cfg);
    assert!(!c.invariants.evidence_durable);
    assert!(
        c.failures.iter().any(|(n, d)| *n == "evidence_durable"
            && d.contains("ap announced evidence against us before its crash")),
        "{:?}",
        c.failures
    );
    // The same run with an honest host keeps every invariant.
    let (sim, c) = run(config(Behaviour::BreakPromise));
    assert!(c.invariants.all(), "{:?}", c.failures);
    assert!(sim.during.counts.restarts >= 1);
}

#[test]
fn a_byzantine_seed_replays_byte_for_byte() {
    let cfg = |seed| {
        let mut c = SimConfig::new(seed);
        c.workload.transactions = 1_500;
        c.byzantine_ppm = 1_000_000;
        c
    };
    let a = wallet_sim::run::run(cfg(3), false);
    let b = wallet_sim::run::run(cfg(3), false);
    let ja = serde_json::to_string(&a.json()).expect("json");
    let jb = serde_json::to_string(&b.json()).expect("json");
    assert_eq!(ja, jb);
    assert!(a.check.invariants.all(), "{:?}", a.check.failures);
    assert!(a.metrics.byzantine.is_some());
    assert!(ja.contains("\"detection\":true"));
}
