//! The pull scheduler's rules, one test each, on replicas driven by hand (no tokio, no
//! network): pull on connect, chains, clear on disconnect and re-send on reconnect, give-up
//! after heartbeats, time-out, periodic pull, back-off from a member that cannot satisfy.

mod common;

use common::*;
use wallet_core::replica::pull::PULL_TIMEOUT_MS;
use wallet_core::*;

fn mk(me: &str, batch: u32) -> Replica {
    let names = vec![region("eu"), region("us"), region("ap")];
    let mut cfg = Config::new(region(me), names, Policy::zero());
    cfg.pull_batch_events = batch;
    Replica::new(cfg, Hlc::ZERO)
}

/// Drains outputs, persisting at once; returns what is sent: (to, message), broadcasts as
/// `to = None`.
fn sends(r: &mut Replica) -> Vec<(Option<RegionId>, Message)> {
    let mut out = Vec::new();
    while let Some(o) = r.poll_output() {
        match o {
            Output::Persist { index, .. } => r.handle_persisted(index),
            Output::Send { to, msg } => out.push((Some(to), msg)),
            Output::Broadcast(m) => out.push((None, m)),
            _ => {}
        }
    }
    out
}

fn pulls_to(s: &[(Option<RegionId>, Message)], to: &str) -> usize {
    s.iter()
        .filter(|(t, m)| {
            *t == Some(region(to)) && matches!(m, Message::Pull { .. } | Message::PullGaps { .. })
        })
        .count()
}

/// `us` with `n` deposits, durable.
fn us_with(n: usize, batch: u32) -> Replica {
    let mut us = mk("us", batch);
    for i in 0..n {
        let r = req("alice", Kind::Deposit, "1", Currency::USD);
        us.submit(1_000 + i as u64, r).unwrap();
    }
    sends(&mut us);
    us
}

/// A heartbeat of `us` claiming `seq` events of its own.
fn hb(origin: &str, ms: u64, seq: u64) -> Message {
    let mut vv = VClock::new();
    if seq > 0 {
        vv.dots.insert(region(origin), seq);
    }
    Message::SignedHeartbeat(SignedHeartbeat {
        hb: Heartbeat {
            origin: region(origin),
            hlc: Hlc::from_millis(ms),
            seq,
            vv,
            policy: Policy::zero().hash(),
        },
        sig: Box::new([]),
    })
}

#[test]
fn a_connect_pulls_and_a_full_answer_chains_until_nothing_more_follows() {
    let mut us = us_with(5, 2);
    let mut eu = mk("eu", 2);
    eu.handle_connected(2_000, region("us"));
    let mut to_us = sends(&mut eu);
    assert_eq!(pulls_to(&to_us, "us"), 1);
    assert_eq!(eu.pull_stats().on_connect, 1);
    let mut rounds = 0;
    while let Some((_, msg)) = to_us.pop() {
        rounds += 1;
        assert!(rounds < 10, "the chain does not end");
        us.handle_message(2_001, region("eu"), msg);
        for (to, answer) in sends(&mut us) {
            if to == Some(region("eu")) {
                if let Message::PullAnswer { more, ref events } = answer {
                    assert!(events.len() <= 2);
                    assert_eq!(more, rounds < 3, "round {rounds}");
                }
                eu.handle_message(2_002, region("us"), answer);
                to_us = sends(&mut eu)
                    .into_iter()
                    .filter(|(t, _)| *t == Some(region("us")))
                    .collect();
            }
        }
    }
    // 2 + 2 + 1 events: three pulls, the last answer says nothing more follows.
    assert_eq!(rounds, 3);
    assert_eq!(eu.version_vector().get(&region("us")), 5);
    assert_eq!(eu.pull_stats().sent, 3);
    assert_eq!(eu.pull_stats().answered, 3);
    assert_eq!(us.pull_stats().served, 3);
}

#[test]
fn a_pull_lost_with_its_connection_is_cleared_and_sent_again_on_reconnect() {
    let mut eu = mk("eu", 100);
    eu.handle_connected(2_000, region("us"));
    eu.handle_connected(2_000, region("ap"));
    let first = sends(&mut eu);
    // One pull in flight: to us (the first to connect); ap's connect finds it busy.
    assert_eq!(pulls_to(&first, "us"), 1);
    assert_eq!(pulls_to(&first, "ap"), 0);
    eu.handle_disconnected(2_100, region("us"));
    assert_eq!(eu.pull_stats().cleared_on_disconnect, 1);
    // Cleared: nothing is busy, so the periodic pull goes to the member still connected.
    eu.handle_timeout(eu.poll_timeout());
    assert_eq!(pulls_to(&sends(&mut eu), "ap"), 1);
    // us comes back: the pull lost with it is sent again, even with ap's in flight.
    let mut eu = mk("eu", 100);
    eu.handle_connected(3_000, region("us"));
    sends(&mut eu);
    eu.handle_disconnected(3_001, region("us"));
    eu.handle_connected(3_002, region("us"));
    assert_eq!(pulls_to(&sends(&mut eu), "us"), 1);
    assert_eq!(eu.pull_stats().on_connect, 2);
}

#[test]
fn a_pull_without_an_answer_is_given_up_after_two_heartbeats_of_its_member() {
    let mut eu = mk("eu", 100);
    eu.handle_connected(2_000, region("us"));
    assert_eq!(pulls_to(&sends(&mut eu), "us"), 1);
    // us is alive and has 3 events eu lacks, but the pull (or its answer) was lost.
    eu.handle_message(2_300, region("us"), hb("us", 2_300, 3));
    assert_eq!(
        pulls_to(&sends(&mut eu), "us"),
        0,
        "one heartbeat is not enough"
    );
    eu.handle_message(2_600, region("us"), hb("us", 2_600, 3));
    assert_eq!(pulls_to(&sends(&mut eu), "us"), 1);
    assert_eq!(eu.pull_stats().given_up, 1);
}

#[test]
fn a_pull_times_out_and_the_periodic_pull_goes_elsewhere() {
    let mut eu = mk("eu", 100);
    eu.handle_connected(2_000, region("us"));
    eu.handle_connected(2_000, region("ap"));
    sends(&mut eu);
    assert!(eu.poll_timeout() <= 2_000 + PULL_TIMEOUT_MS);
    eu.handle_timeout(2_000 + PULL_TIMEOUT_MS);
    let s = sends(&mut eu);
    assert_eq!(eu.pull_stats().timed_out, 1);
    assert_eq!(eu.pull_stats().periodic, 1);
    assert_eq!(pulls_to(&s, "us") + pulls_to(&s, "ap"), 1);
}

#[test]
fn a_heartbeat_that_showed_a_gap_a_period_ago_triggers_a_pull() {
    let mut eu = mk("eu", 100);
    eu.handle_connected(2_000, region("us"));
    let s = sends(&mut eu);
    // Answer the connect pull with nothing: us had nothing then.
    let (_, pull) = s.into_iter().next().unwrap();
    let mut us = mk("us", 100);
    us.handle_message(2_001, region("eu"), pull);
    for (_, m) in sends(&mut us) {
        eu.handle_message(2_002, region("us"), m);
    }
    sends(&mut eu);
    // The first heartbeat showing 2 events eu lacks may race their pushes: no pull yet.
    eu.handle_message(3_200, region("us"), hb("us", 3_200, 2));
    assert_eq!(pulls_to(&sends(&mut eu), "us"), 0);
    // Still missing one heartbeat later: the pushes were lost.
    eu.handle_message(3_450, region("us"), hb("us", 3_450, 2));
    assert_eq!(pulls_to(&sends(&mut eu), "us"), 1);
    assert_eq!(eu.pull_stats().on_heartbeat, 1);
}

/// Issue 9, item 6: a member that looks ahead but whose answers bring nothing applicable
/// (here its heartbeat claims events it never sends) used to be pulled again after every
/// answer, at round-trip speed, starving the others.
#[test]
fn a_member_whose_answers_bring_nothing_is_backed_off_and_does_not_starve_the_others() {
    let mut eu = mk("eu", 100);
    // ap really holds 5 events eu lacks.
    let mut ap = mk("ap", 100);
    for i in 0..5 {
        ap.submit(900 + i, req("bob", Kind::Deposit, "1", Currency::USD))
            .unwrap();
    }
    sends(&mut ap);
    eu.handle_connected(1_000, region("us"));
    eu.handle_connected(1_000, region("ap"));
    sends(&mut eu);
    let mut pulls_us = 0;
    let mut pulls_ap = 0;
    // Three seconds of simulated time, in 10 ms steps: every pull to us is answered at once
    // with nothing, while us keeps claiming 50 events.
    let mut now = 1_000;
    let mut last_hb = 0;
    while now < 4_000 {
        now += 10;
        if now - last_hb >= 250 {
            last_hb = now;
            eu.handle_message(now, region("us"), hb("us", now, 50));
            eu.handle_message(now, region("ap"), hb("ap", now, 5));
        }
        eu.handle_timeout(now);
        let s = sends(&mut eu);
        for (to, m) in s {
            if !matches!(m, Message::Pull { .. } | Message::PullGaps { .. }) {
                continue;
            }
            if to == Some(region("us")) {
                pulls_us += 1;
                eu.handle_message(
                    now,
                    region("us"),
                    Message::PullAnswer {
                        events: vec![],
                        more: false,
                    },
                );
            } else if to == Some(region("ap")) {
                pulls_ap += 1;
                ap.handle_message(now, region("eu"), m);
                for (_, answer) in sends(&mut ap)
                    .into_iter()
                    .filter(|(t, _)| *t == Some(region("eu")))
                {
                    eu.handle_message(now, region("ap"), answer);
                }
            }
        }
    }
    println!(
        "3 s: {pulls_us} pulls to us, {pulls_ap} to ap, {} back-offs",
        eu.pull_stats().backoffs
    );
    assert!(pulls_us <= 12, "{pulls_us} pulls to us in 3 s");
    assert!(eu.pull_stats().backoffs >= 2);
    assert!(pulls_ap >= 1, "ap was starved");
    assert_eq!(
        eu.version_vector().get(&region("ap")),
        5,
        "ap's events were not repaired"
    );
}

/// A rebuilt region (docs/protocol.md §12) that seals while a pull of its restore is in
/// flight still chains: the answer's events of other origins are progress, though the pull
/// was sent counting its own history coming back (the restore ended in between).
#[test]
fn a_chain_goes_on_across_the_seal_that_ends_a_restore() {
    let two = |me: &str, restore: bool| {
        let mut cfg = Config::new(region(me), vec![region("eu"), region("us")], Policy::zero());
        cfg.pull_batch_events = 2;
        cfg.restore = restore;
        cfg.seal_on_restore = restore;
        Replica::new(cfg, Hlc::ZERO)
    };
    let deposits = |r: &mut Replica, n: u64| {
        for i in 0..n {
            r.submit(1_000 + i, req("alice", Kind::Deposit, "1", Currency::USD))
                .unwrap();
        }
        sends(r)
    };
    // eu's three events reach us; then eu loses its disk. us has five of its own.
    let mut old_eu = two("eu", false);
    let mut us = two("us", false);
    for (_, m) in deposits(&mut old_eu, 3) {
        us.handle_message(1_100, region("eu"), m);
    }
    deposits(&mut us, 5);
    let mut eu = two("eu", true);
    assert!(eu.is_restoring());
    eu.handle_connected(2_000, region("us"));
    // Chain until eu holds its own history back; the pull sent then stays in flight.
    let mut pull = None;
    for _ in 0..10 {
        let to_us: Vec<Message> = sends(&mut eu)
            .into_iter()
            .filter(|(t, m)| {
                *t == Some(region("us"))
                    && matches!(m, Message::Pull { .. } | Message::PullGaps { .. })
            })
            .map(|(_, m)| m)
            .collect();
        let Some(p) = to_us.into_iter().next() else {
            break;
        };
        if eu.version_vector().get(&region("eu")) == 3 {
            pull = Some(p);
            break;
        }
        us.handle_message(2_001, region("eu"), p);
        for (_, a) in sends(&mut us) {
            eu.handle_message(2_002, region("us"), a);
        }
    }
    let pull = pull.expect("a pull in flight once eu's history is back");
    let others = eu.event_count() - 3;
    assert!(others < 5, "us's events still to come");
    // The seal query's round trip ends the restore while the pull is out.
    eu.handle_timeout(eu.poll_timeout().max(2_003));
    for (_, q) in sends(&mut eu) {
        if matches!(q, Message::SealQuery) {
            us.handle_message(2_004, region("eu"), q);
        }
    }
    for (_, a) in sends(&mut us) {
        eu.handle_message(2_005, region("us"), a);
    }
    assert!(!eu.is_restoring());
    assert_eq!(eu.epoch(), 2);
    sends(&mut eu);
    let sent = eu.pull_stats().sent;
    // The answer brings us's events and says more follows: eu pulls us again at once.
    us.handle_message(2_006, region("eu"), pull);
    let answer = sends(&mut us)
        .into_iter()
        .find(|(_, m)| matches!(m, Message::PullAnswer { more: true, .. }))
        .map(|(_, m)| m)
        .expect("an answer that says more follows");
    eu.handle_message(2_007, region("us"), answer);
    assert!(
        eu.event_count() - 4 > others,
        "the answer brought us's events"
    );
    assert_eq!(pulls_to(&sends(&mut eu), "us"), 1);
    assert_eq!(eu.pull_stats().sent, sent + 1);
}
