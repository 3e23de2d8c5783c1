//! The generated workload reuses idempotency keys with another body during partitions, and
//! the runs reach the case a fold comparing a key only with its first holder gets wrong: a
//! retry of the second body at a third region, which must be reversed as a duplicate.

use std::collections::BTreeMap;

use wallet_core::{Event, Status};
use wallet_sim::check::check;
use wallet_sim::config::SimConfig;
use wallet_sim::engine::Sim;
use wallet_sim::workload::Attempt;

fn config(seed: u64) -> SimConfig {
    let mut cfg = SimConfig::new(seed);
    cfg.workload.transactions = 3_000;
    cfg.workload.accounts = 30;
    cfg.record_series = true;
    // These runs check what settles: no Byzantine member (it freezes settlement).
    cfg.byzantine_ppm = 0;
    cfg
}

#[test]
fn key_conflicts_are_sent_across_partitions_and_retried_at_a_third_region() {
    let mut triples = 0;
    for seed in 1..=10 {
        let mut sim = Sim::new(config(seed));
        sim.run();
        let w = &sim.workload;
        let partitions = &sim.series.partitions;
        let first: BTreeMap<&str, usize> = w
            .submissions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.attempt == Attempt::First)
            .filter_map(|(i, s)| Some((w.keys[s.logical as usize].as_deref()?, i)))
            .collect();
        for (k, s) in w.submissions.iter().enumerate() {
            if s.attempt != Attempt::Conflict {
                continue;
            }
            triples += 1;
            let key = w.keys[s.logical as usize].as_deref().expect("a key");
            let a = &w.submissions[first[key]];
            // Same key and account, another body, another region, 0-100 ms later, during a
            // partition.
            assert_eq!(a.account, s.account);
            assert_ne!(a.amount, s.amount);
            assert_ne!(a.region, s.region);
            assert_ne!(a.logical, s.logical);
            assert!(s.at_ms >= a.at_ms && s.at_ms <= a.at_ms + 100);
            assert!(
                partitions
                    .iter()
                    .any(|(from, to, _)| *from <= a.at_ms && a.at_ms < *to),
                "seed {seed}: request {} at {} ms is in no partition",
                a.logical,
                a.at_ms
            );
            // Retried once, same body, at a third region.
            let retries: Vec<_> = w.submissions[k..]
                .iter()
                .filter(|r| r.logical == s.logical && r.attempt == Attempt::ConflictRetry)
                .collect();
            assert_eq!(retries.len(), 1);
            let r = retries[0];
            assert_eq!((r.account, r.kind, r.amount), (s.account, s.kind, s.amount));
            assert!(r.region != s.region && r.region != a.region);
            assert!(r.at_ms >= s.at_ms && r.at_ms <= s.at_ms + 300);
        }
        let c = check(&mut sim);
        assert!(c.invariants.all(), "seed {seed}: {:?}", c.failures);
    }
    println!("{triples} conflicting requests in 10 seeds");
    // 1 % of the requests sent during partitions (about a quarter of the time).
    assert!(triples >= 20, "{triples} conflicting requests in 10 seeds");
}

#[test]
fn some_retries_of_a_second_body_settle_as_duplicates_behind_a_key_holder_with_another_body() {
    let mut found = 0;
    for seed in 1..=10 {
        let mut cfg = config(seed);
        // Every copy below is within the key retention (24 h): the rule without its edge.
        cfg.idempotency_retention_ms = Some(wallet_core::replica::IDEMPOTENCY_RETENTION_MS_DEFAULT);
        let mut sim = Sim::new(cfg);
        sim.run();
        let r = &sim.nodes[0].replica;
        let mut by_key: BTreeMap<(String, String), Vec<&Event>> = BTreeMap::new();
        for o in &sim.cfg.regions {
            for e in r.origin_events(*o, 0) {
                if let Some(k) = e.tx().and_then(|t| t.idempotency_key.as_deref()) {
                    let acct = e.tx().map(|t| t.account.to_string()).unwrap_or_default();
                    by_key.entry((acct, k.to_string())).or_default().push(e);
                }
            }
        }
        for evs in by_key.values_mut() {
            evs.sort_by_key(|e| e.key());
            let Some(holder) = evs.first().and_then(|e| e.tx()) else {
                continue;
            };
            // A later event whose body differs from the first holder's but equals an earlier
            // non-first event's: a duplicate the fold must reverse.
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
    println!("{found} duplicates of a second body in 10 seeds");
    assert!(
        found >= 3,
        "{found} duplicates of a second body in 10 seeds"
    );
}

#[test]
fn locality_sends_an_accounts_first_requests_to_its_usual_region_and_leaves_the_rest_alone() {
    let mut cfg = config(3);
    let uniform = wallet_sim::workload::Workload::generate(&cfg);
    cfg.workload.locality_ppm = 1_000_000;
    let local = wallet_sim::workload::Workload::generate(&cfg);
    let regions = cfg.regions.len();
    let firsts = |w: &wallet_sim::workload::Workload| -> Vec<(u32, usize)> {
        w.submissions
            .iter()
            .filter(|s| s.attempt == Attempt::First)
            .map(|s| (s.account, s.region))
            .collect()
    };
    let (u, l) = (firsts(&uniform), firsts(&local));
    assert_eq!(u.len(), l.len());
    // Same accounts in the same order (the region comes from its own stream)...
    assert!(u.iter().zip(&l).all(|(a, b)| a.0 == b.0));
    // ...every first send at the account's usual region, which the uniform draw is not.
    assert!(l.iter().all(|(a, r)| *r == *a as usize % regions));
    assert!(u.iter().any(|(a, r)| *r != *a as usize % regions));
}
