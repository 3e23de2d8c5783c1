//! The core's pull scheduler (`wallet_core::replica::pull`), rule by rule, through the real
//! engine: scripted partitions and message faults make each rule fire, the replicas' own
//! counters (`Replica::pull_stats`) show it did, and every run still converges with every
//! invariant holding.

use wallet_core::replica::pull::PullStats;
use wallet_core::Currency;
use wallet_sim::check::check;
use wallet_sim::config::SimConfig;
use wallet_sim::engine::Sim;
use wallet_sim::run::run;
use wallet_sim::scenario;

const EU: usize = 0;
const US: usize = 1;

/// Two regions, no random faults, a fixed 5 ms link, detection and reconnection in 100 ms.
fn two_regions(script: &str) -> SimConfig {
    SimConfig::scripted(2, script, 100, 100).expect("valid scenario")
}

fn stats(sim: &Sim, i: usize) -> PullStats {
    sim.nodes[i].replica.pull_stats()
}

fn finish(mut sim: Sim) -> Sim {
    sim.run();
    let c = check(&mut sim);
    assert!(c.invariants.all(), "{:?}", c.failures);
    let vv = sim.nodes[EU].replica.version_vector().clone();
    assert!(sim.nodes.iter().all(|n| *n.replica.version_vector() == vv));
    sim
}

/// eu takes deposits while it is cut off from us; after the heal every pull answer is lost
/// until the workload ends (at 15 s), then answers flow again.
const ANSWERS_LOST_AFTER_THE_HEAL: &str = "
t=1s    deposit eu alice 50.00 key=d1
t=2s    isolate eu
t=3s    deposit eu alice 10.00 key=d2
t=4s    deposit eu bob 10.00 key=d3
t=6s    heal
t=15s   deposit us carol 1.00 key=d4
";

#[test]
fn a_pull_whose_answers_are_lost_is_given_up_after_two_heartbeats_and_sent_again() {
    let mut cfg = two_regions(ANSWERS_LOST_AFTER_THE_HEAL);
    cfg.faults.pull_answer_loss_ppm = 1_000_000;
    let mut sim = Sim::new(cfg);
    sim.run_until(6_000);
    // Before the partition us missed nothing (pushes arrive), so no pull was given up.
    let healed = stats(&sim, US);
    assert_eq!(healed.given_up, 0, "{healed:?}");
    sim.run_until(14_900);
    let us = stats(&sim, US);
    // us lacks eu's two deposits made during the partition (the pushes went nowhere). It
    // pulls eu on reconnect; the answer is lost; eu's heartbeats keep showing the gap, so
    // every second heartbeat gives the pull up and sends it again (at 250 ms heartbeats:
    // about 17 times in 8.6 s).
    assert_eq!(us.on_connect, 2, "at start and at the reconnect: {us:?}");
    assert!(us.given_up >= 10, "{us:?}");
    assert_eq!(us.answered, 0, "every answer was lost: {us:?}");
    // A given-up pull is sent again at once: it never lives long enough to time out.
    assert_eq!(us.timed_out, healed.timed_out, "{us:?}");
    assert!(sim.nodes[EU].replica.pull_stats().served >= us.given_up);
    assert_eq!(
        sim.nodes[US]
            .replica
            .version_vector()
            .get(&sim.nodes[EU].id),
        1
    );
    // eu lacks nothing: its pulls get no answer and no heartbeat says it should hurry, so
    // each one times out after the core's PULL_TIMEOUT_MS and the periodic pull follows.
    let eu = stats(&sim, EU);
    assert_eq!(eu.given_up, 0, "{eu:?}");
    assert!(eu.timed_out >= 3, "{eu:?}");
    assert!(eu.periodic >= 3, "{eu:?}");
    // The faults end with the workload: the next pull is answered, and all converge.
    let sim = finish(sim);
    let us = stats(&sim, US);
    assert!(us.answered >= 1, "{us:?}");
    assert_eq!(
        sim.nodes[US]
            .replica
            .version_vector()
            .get(&sim.nodes[EU].id),
        3
    );
}

#[test]
fn with_a_host_that_never_answers_pulls_the_pulls_are_given_up_and_the_run_cannot_converge() {
    let mut cfg = two_regions(ANSWERS_LOST_AFTER_THE_HEAL);
    cfg.inject = Some(wallet_sim::config::Inject::NoPullAnswers);
    let mut sim = Sim::new(cfg);
    sim.run();
    let us = stats(&sim, US);
    assert!(us.given_up >= 10, "{us:?}");
    assert_eq!(us.answered, 0, "{us:?}");
    assert_eq!(sim.converged_at, None);
    let c = check(&mut sim);
    assert!(!c.invariants.convergence);
}

/// The link is cut while both start-up pulls are in flight (400 ms each way).
const CUT_WHILE_PULLING: &str = "
t=300ms isolate eu
t=1s    deposit eu alice 50.00 key=d1
t=2s    deposit us bob 20.00 key=d2
t=5s    heal
";

#[test]
fn a_pull_lost_with_its_connection_is_cleared_on_disconnect_and_sent_again_on_reconnect() {
    let mut cfg = two_regions(CUT_WHILE_PULLING);
    cfg.faults.delay_ms = (400, 400);
    let mut sim = Sim::new(cfg);
    sim.run_until(4_900);
    for i in [EU, US] {
        let s = stats(&sim, i);
        // The start-up pull (sent at 0, due back at 800) died with the link cut at 300;
        // the disconnect noticed at 400 cleared it, before its 2 s time-out.
        assert_eq!(s.on_connect, 1, "{s:?}");
        assert_eq!(s.cleared_on_disconnect, 1, "{s:?}");
        assert_eq!(s.answered, 0, "{s:?}");
        assert_eq!(s.timed_out, 0, "{s:?}");
        // Nobody connected to pull from meanwhile.
        assert_eq!(s.sent, 1, "{s:?}");
    }
    assert_eq!(sim.counters.disconnects, 2);
    // Healed at 5 s, reconnected at 5.1 s: both ends pull the other at once.
    sim.run_until(5_150);
    for i in [EU, US] {
        let s = stats(&sim, i);
        assert_eq!(s.on_connect, 2, "{s:?}");
        assert_eq!(s.sent, 2, "{s:?}");
    }
    sim.run_until(6_000);
    let (eu_id, us_id) = (sim.nodes[EU].id, sim.nodes[US].id);
    assert_eq!(sim.nodes[US].replica.version_vector().get(&eu_id), 1);
    assert_eq!(sim.nodes[EU].replica.version_vector().get(&us_id), 1);
    for i in [EU, US] {
        assert!(stats(&sim, i).answered >= 1);
    }
    finish(sim);
}

#[test]
fn a_crash_disconnects_every_peer_and_the_restart_reconnects_both_ends() {
    let script = "
t=1s    deposit eu alice 50.00 key=d1
t=2s    crash us
t=3s    deposit eu alice 10.00 key=d2
t=4s    restart us
t=8s    deposit eu alice 1.00 key=d3
";
    let mut sim = Sim::new(two_regions(script));
    sim.run_until(3_900);
    // eu noticed at 2.1 s; us is down.
    assert_eq!(sim.counters.disconnects, 1);
    assert_eq!(sim.nodes[EU].replica.connected_members(), vec![]);
    sim.run_until(4_200);
    // Restarted at 4 s, reconnected at 4.1 s: both ends told, and the new incarnation
    // pulled what it missed while it was down.
    let us_id = sim.nodes[US].id;
    let eu_id = sim.nodes[EU].id;
    assert_eq!(sim.nodes[EU].replica.connected_members(), vec![us_id]);
    assert_eq!(sim.nodes[US].replica.connected_members(), vec![eu_id]);
    assert_eq!(stats(&sim, US).on_connect, 1);
    assert_eq!(sim.nodes[US].replica.version_vector().get(&eu_id), 2);
    finish(sim);
}

#[test]
fn answers_that_say_more_follows_chain_pulls_of_pull_limit_events() {
    // 30 deposits at eu while it is isolated; us pulls them 4 at a time after the heal.
    let mut script = String::from("t=1s isolate eu\n");
    for k in 0..30 {
        script.push_str(&format!(
            "t={}ms deposit eu acct{k} 1.00 key=d{k}\n",
            2_000 + 100 * k
        ));
    }
    script.push_str("t=6s heal\nt=9s deposit us x 1.00 key=last\n");
    let mut cfg = two_regions(&script);
    cfg.pull_limit = 4;
    let mut sim = Sim::new(cfg);
    sim.run_until(6_000);
    let before = stats(&sim, US);
    sim.run_until(8_000);
    let after = stats(&sim, US);
    let eu_id = sim.nodes[EU].id;
    assert_eq!(sim.nodes[US].replica.version_vector().get(&eu_id), 30);
    // One pull on reconnect, then 7 chained ones (8 answers of at most 4 events).
    let sent = after.sent - before.sent;
    let triggered = (after.on_connect + after.on_heartbeat + after.periodic + after.given_up)
        - (before.on_connect + before.on_heartbeat + before.periodic + before.given_up);
    assert!(sent >= 8, "{before:?} -> {after:?}");
    assert!(
        sent - triggered >= 7,
        "chained pulls: {before:?} -> {after:?}"
    );
    finish(sim);
}

#[test]
fn the_periodic_pull_runs_at_the_configured_anti_entropy_interval() {
    let script = "t=10s deposit eu alice 1.00 key=d1\n";
    let count = |ms: u64| {
        let mut cfg = two_regions(script);
        cfg.anti_entropy_ms = ms;
        let mut sim = Sim::new(cfg);
        sim.run_until(10_000);
        stats(&sim, EU).periodic
    };
    let (fast, slow) = (count(500), count(2_000));
    // 10 s: about 20 periodic pulls every 500 ms, 5 every 2 s.
    assert!((18..=21).contains(&fast), "{fast}");
    assert!((4..=6).contains(&slow), "{slow}");
}

/// A small random run with pull answers lost at 30 %: every rule but back-off fires, the
/// counters reach the JSON metrics, and the run converges.
#[test]
fn random_faults_with_lost_pull_answers_converge_and_the_counters_reach_the_metrics() {
    let mut fired = PullStats::default();
    for seed in 1..=6 {
        let mut cfg = SimConfig::new(seed);
        cfg.workload.transactions = 1_500;
        cfg.workload.accounts = 20;
        cfg.workload.rate = 50;
        cfg.faults.pull_answer_loss_ppm = 300_000;
        let r = run(cfg, false);
        assert!(
            r.check.invariants.all(),
            "seed {seed}: {:?}",
            r.check.failures
        );
        let a = r.metrics.anti_entropy;
        assert!(a.sent >= a.answered && a.served >= a.answered);
        assert!(r.metrics.connections.disconnects > 0);
        assert!(r.metrics.connections.connects > 0);
        fired.on_connect += a.on_connect;
        fired.cleared_on_disconnect += a.cleared_on_disconnect;
        fired.given_up += a.given_up;
        fired.timed_out += a.timed_out;
        fired.on_heartbeat += a.on_heartbeat;
        fired.periodic += a.periodic;
    }
    println!("{fired:?}");
    assert!(fired.on_connect > 0 && fired.cleared_on_disconnect > 0);
    assert!(fired.given_up > 0 && fired.timed_out > 0);
    assert!(fired.on_heartbeat > 0 && fired.periodic > 0);
}

/// Back-off: ap's clock runs two minutes ahead for 4 s, so its peers refuse its events
/// stamped then (clock skew) until real time catches up, about two minutes later. Pulls from
/// ap return full answers (`more`) of events they cannot apply: the core backs off from ap
/// instead of pulling it again at round-trip speed (the previous simulator's own pull logic
/// replicated 106 MiB on this very run; with the back-off it is under 1 MiB).
#[test]
fn a_member_whose_answers_bring_nothing_applicable_is_backed_off() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{dir}/scenarios/bad-clock.txt")).expect("file");
    let mut cfg = SimConfig::new(1);
    cfg.workload.transactions = 2_000;
    cfg.pull_limit = 64;
    cfg.scenario = scenario::parse(&text, &cfg.regions, Currency::USD).expect("valid scenario");
    let r = run(cfg, false);
    assert!(r.check.invariants.all(), "{:?}", r.check.failures);
    let a = r.metrics.anti_entropy;
    assert!(a.backoffs >= 5, "{a:?}");
    let simulated_s = r.metrics.simulated_ms / 1_000;
    assert!(
        a.sent < 5 * simulated_s,
        "{} pulls in {simulated_s} s",
        a.sent
    );
    assert!(
        r.metrics.bytes_replicated < 10 << 20,
        "{}",
        r.metrics.bytes_replicated
    );
}
