//! The anti-entropy liveness checks (`wallet_sim::liveness`) can fail: each is shown a
//! defect through the engine's own hooks (a pull request, answer or heartbeat as a defective
//! replica or host would produce it), on a two-region run stopped while us lacks events of eu;
//! and the honest run of the same script passes every one of them.

use wallet_core::replica::pull::PULL_BACKOFF_MS_MIN;
use wallet_core::{Heartbeat, Hlc, Message, Policy, VClock};
use wallet_sim::check::check;
use wallet_sim::config::SimConfig;
use wallet_sim::engine::{Sim, CLOCK_BASE_MS};
use wallet_sim::liveness::{self, GIVE_UP_HEARTBEATS};

const EU: usize = 0;
const US: usize = 1;

/// eu's events to us are held back 3 s from 2 s on: us hears eu's heartbeats (and lacks eu:2
/// and eu:3) until they arrive at about 5.1 s.
const HELD: &str = "
t=1s     deposit eu alice 50.00 key=d1
t=2s     hold-events eu us 3000ms
t=2100ms deposit eu alice 10.00 key=d2
t=2200ms deposit eu bob 10.00 key=d3
t=6s     hold-events eu us 0ms
";

fn sim() -> Sim {
    let mut cfg = SimConfig::scripted(2, HELD, 100, 100).expect("valid scenario");
    cfg.self_check_every = 1;
    let mut sim = Sim::new(cfg);
    sim.run_until(2_700);
    let eu = sim.cfg.regions[EU];
    assert_eq!(sim.nodes[US].replica.version_vector().get(&eu), 1);
    assert_eq!(sim.nodes[EU].replica.version_vector().get(&eu), 3);
    sim
}

fn failures(sim: &Sim, name: &str) -> Vec<String> {
    sim.during
        .failures
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, d)| d.clone())
        .collect()
}

fn heartbeat(sim: &Sim) -> Message {
    Message::Heartbeat(Heartbeat {
        origin: sim.cfg.regions[EU],
        hlc: Hlc::ZERO,
        seq: 0,
        vv: VClock::new(),
        policy: Policy::zero().hash(),
    })
}

#[test]
fn the_honest_run_passes_every_liveness_check() {
    let mut sim = sim();
    sim.run();
    let c = check(&mut sim);
    assert!(c.invariants.all(), "{:?}", c.failures);
    let n = c.invariants.named();
    for name in ["no_refetch", "pull_chain", "pull_backoff", "pull_given_up"] {
        assert!(n.contains(&(name, true)), "{name} missing from {n:?}");
    }
    // us pulled eu while its events were held back, and was handed them twice.
    assert!(sim.during.counts.liveness.pull_requests > 0);
}

#[test]
fn no_refetch_fails_when_a_pull_asks_again_for_a_buffered_event() {
    let mut sim = sim();
    let eu = sim.cfg.regions[EU];
    let third = sim.nodes[EU].replica.origin_events(eu, 2).to_vec();
    assert_eq!(third.len(), 1);
    // us is handed eu:3 out of order and buffers it.
    let msg = Message::Events(third);
    let before = liveness::before_delivery(&mut sim, US, EU, &msg);
    let now_l = CLOCK_BASE_MS + sim.now;
    sim.nodes[US].replica.handle_message(now_l, eu, msg);
    liveness::after_handling(&mut sim, US, EU, &before);
    assert_eq!(sim.during.counts.liveness.events_buffered, 1);
    // The replica's own request asks only for the gap (eu:2): fine.
    let honest = sim.nodes[US].replica.pull_request(64);
    assert!(matches!(honest, Message::PullGaps { .. }));
    liveness::pull_sent(&mut sim, US, EU, &honest);
    assert!(failures(&sim, "no_refetch").is_empty());
    // A request that forgot eu:3 (a replica that dropped it) asks for it again.
    let vv = sim.nodes[US].replica.version_vector().clone();
    liveness::pull_sent(&mut sim, US, EU, &Message::Pull { vv, limit: 64 });
    let f = failures(&sim, "no_refetch");
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("us pulls eu for eu:3 again"), "{f:?}");
}

#[test]
fn pull_chain_fails_when_an_answer_that_says_more_is_not_followed_by_a_pull() {
    let mut sim = sim();
    let eu = sim.cfg.regions[EU];
    let req = sim.nodes[US].replica.pull_request(1);
    liveness::pull_sent(&mut sim, US, EU, &req);
    let events = sim.nodes[EU].replica.origin_events(eu, 1)[..1].to_vec();
    let answer = Message::PullAnswer {
        events: events.clone(),
        more: true,
    };
    // A host that hands the answer's events over as a push: applied, no chain.
    let before = liveness::before_delivery(&mut sim, US, EU, &answer);
    let now_l = CLOCK_BASE_MS + sim.now;
    sim.nodes[US].replica.handle_events(now_l, eu, events);
    liveness::after_handling(&mut sim, US, EU, &before);
    liveness::after_drain(&mut sim, US, EU, &before, true);
    assert_eq!(sim.during.counts.liveness.chain_answers, 1);
    let f = failures(&sim, "pull_chain");
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("did not pull eu again"), "{f:?}");
}

#[test]
fn pull_backoff_fails_when_a_member_is_pulled_again_right_after_an_empty_answer() {
    let mut sim = sim();
    let req = sim.nodes[US].replica.pull_request(64);
    liveness::pull_sent(&mut sim, US, EU, &req);
    // An answer that brings nothing while eu's heartbeats show eu:2 and eu:3.
    let answer = Message::PullAnswer {
        events: Vec::new(),
        more: false,
    };
    let before = liveness::before_delivery(&mut sim, US, EU, &answer);
    liveness::after_handling(&mut sim, US, EU, &before);
    liveness::after_drain(&mut sim, US, EU, &before, true);
    assert_eq!(sim.during.counts.liveness.backoffs, 1);
    // On a reconnect the core pulls whatever the back-off: not a failure.
    liveness::connecting(&mut sim, true);
    liveness::pull_sent(&mut sim, US, EU, &req);
    liveness::connecting(&mut sim, false);
    assert!(failures(&sim, "pull_backoff").is_empty());
    // Otherwise, within PULL_BACKOFF_MS_MIN: a failure.
    liveness::pull_sent(&mut sim, US, EU, &req);
    let f = failures(&sim, "pull_backoff");
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains(&format!("back-off at least {PULL_BACKOFF_MS_MIN} ms")),
        "{f:?}"
    );
}

#[test]
fn pull_given_up_fails_when_a_lost_pull_outlives_the_heartbeats_of_its_member() {
    let mut sim = sim();
    let req = sim.nodes[US].replica.pull_request(64);
    liveness::pull_sent(&mut sim, US, EU, &req);
    liveness::pull_lost(&mut sim, US, EU);
    assert_eq!(sim.during.counts.liveness.lost_pulls, 1);
    // Heartbeats of eu that show us's gap, and us never pulls again.
    let hb = heartbeat(&sim);
    for k in 1..=GIVE_UP_HEARTBEATS {
        assert!(failures(&sim, "pull_given_up").is_empty(), "at {k}");
        let before = liveness::before_delivery(&mut sim, US, EU, &hb);
        liveness::after_handling(&mut sim, US, EU, &before);
        liveness::after_drain(&mut sim, US, EU, &before, true);
    }
    let f = failures(&sim, "pull_given_up");
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("us's pull to eu was lost"), "{f:?}");
}
