//! The simulator's incremental model folds (`prefix::PrefixFold`, issue 16) give exactly what
//! the reference model refolded from scratch gives, as the point moves forward and back.

use std::collections::BTreeMap;

use wallet_core::testing::{model_retained, ModelFold};
use wallet_core::{Event, Hlc};
use wallet_sim::config::SimConfig;
use wallet_sim::engine::Sim;
use wallet_sim::prefix::PrefixFold;

/// What a fold answers, from the model refolded over `events` at or below `at`.
fn fresh(sim: &Sim, events: &[&Event], at: Hlc) -> ModelFold {
    model_retained(
        &sim.cfg.policy,
        events.iter().copied().filter(|e| e.hlc.0 <= at.0),
        None,
        sim.cfg.retention_ms(),
    )
}

#[test]
fn a_prefix_fold_matches_the_model_refolded_from_scratch() {
    let mut cfg = SimConfig::new(11);
    cfg.workload.transactions = 3_000;
    cfg.workload.accounts = 12;
    let mut sim = Sim::new(cfg);
    sim.run();
    let origins = sim.cfg.regions.clone();
    let mut episodes = 0;
    for node in &sim.nodes {
        let r = &node.replica;
        let events: Vec<&Event> = origins
            .iter()
            .flat_map(|o| r.origin_events(*o, 0))
            .collect();
        let mut hlcs: Vec<Hlc> = events.iter().map(|e| e.hlc).collect();
        hlcs.sort();
        // Forward in steps, then back twice (a crash's regression), then forward again.
        let step = (hlcs.len() / 9).max(1);
        let mut points: Vec<Hlc> = hlcs.iter().step_by(step).copied().collect();
        points.push(hlcs[hlcs.len() / 3]);
        points.push(hlcs[hlcs.len() / 5]);
        points.push(hlcs[hlcs.len() - 1]);
        let mut fold = PrefixFold::new(&sim.cfg.policy, sim.cfg.retention_ms(), origins.len());
        for at in points {
            fold.advance(r, &origins, at);
            let m = fresh(&sim, &events, at);
            let s = fold.state();
            let got: BTreeMap<_, _> = s.balances().collect();
            assert_eq!(got, m.balances, "{} at {at:?}", node.id);
            assert_eq!(s.feed_len(), m.feed.len() as u64, "{} at {at:?}", node.id);
            assert_eq!(s.settled(), m.settled, "{} at {at:?}", node.id);
            for ((a, c), bal) in &m.balances {
                let open = m.open_episodes.get(&(a.clone(), *c)).copied();
                assert_eq!(s.pair(a.as_str(), *c), Some((*bal, open)), "{a} {c}");
                episodes += usize::from(open.is_some());
                let above: Vec<&Event> = fold.above(r, &origins);
                let want = model_retained(
                    &sim.cfg.policy,
                    events.iter().copied(),
                    Some(at),
                    sim.cfg.retention_ms(),
                )
                .provisional
                .get(&(a.clone(), *c))
                .copied();
                assert_eq!(s.provisional(a.as_str(), *c, above), want, "{a} {c}");
            }
        }
        assert_eq!(fold.rebuilds, 2, "{}: two steps back, two refolds", node.id);
    }
    assert!(episodes > 0, "the run opened overdraft episodes");
}
