//! Lost disk and peer durability (SPEC §10, docs/protocol.md §12): a region rebuilt on an
//! empty disk seals its old origin epoch at the highest seq any member holds and rejoins under
//! a new one; an origin learns which of its events another member holds durably
//! (`ack = "peer"`). Unit tests on the multi-replica harness, and a property: whatever the
//! point of the loss, the cluster converges byte-identical and matches the reference model,
//! no event ever acknowledged with `ack = "peer"` is lost or replaced under its id, the old
//! epoch's events up to the cut keep their ids, and events above the cut never count.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use wallet_core::*;

fn fee_policy() -> Policy {
    Policy::from_toml("[default]\naction = \"fee\"\nfee = { flat = \"5.00\" }\n").unwrap()
}

fn deposit(c: &mut Cluster, i: usize, account: &str, amount: &str) -> EventId {
    c.submit(i, req(account, Kind::Deposit, amount, Currency::USD))
        .unwrap()
        .id()
        .unwrap()
}

/// Runs rounds until region `i` is no longer restoring (sealed); false if it did not.
fn until_sealed(c: &mut Cluster, i: usize, live: &[usize]) -> bool {
    for _ in 0..40 {
        if !c.nodes[i].replica.is_restoring() {
            return true;
        }
        c.run_among(live, 1);
    }
    !c.nodes[i].replica.is_restoring()
}

fn same(c: &Cluster, a: usize, b: usize) {
    assert_eq!(
        snapshot(&c.nodes[a].replica),
        snapshot(&c.nodes[b].replica),
        "{} and {} differ",
        c.names[a],
        c.names[b]
    );
}

/// What each region holds, for a failure message.
fn dump(c: &Cluster) -> String {
    let mut out = String::new();
    for n in &c.nodes {
        let r = &n.replica;
        out.push_str(&format!(
            "\n{}: vv {:?} wm {:?} max {:?} blocked {} restoring {} seals {:?} evidence {} reports {:?}",
            n.name,
            r.version_vector().dots,
            r.watermark(),
            c.max_hlc(),
            r.settlement_blocked(),
            r.is_restoring(),
            r.seals(),
            r.evidence().len(),
            n.reports
        ));
    }
    out
}

fn balance(c: &Cluster, i: usize, account: &str) -> String {
    c.nodes[i]
        .replica
        .balance(&acct(account), Currency::USD)
        .settled
        .to_string()
}

#[test]
fn a_rebuilt_region_seals_at_the_highest_seq_any_member_holds_and_issues_above_it() {
    let mut c = Cluster::with_durable_acks(&["eu", "us", "ap"], fee_policy());
    let (eu, us, ap) = (0, 1, 2);
    deposit(&mut c, eu, "alice", "100");
    assert!(c.settle_all());
    // ap away: us alone holds eu's next three.
    c.partition(1 << ap);
    for _ in 0..3 {
        deposit(&mut c, eu, "alice", "1");
    }
    c.run_among(&[eu, us], 2);
    assert_eq!(c.nodes[eu].replica.peer_durable_seq(), 4);
    // eu alone: two more, acknowledged locally, never sent.
    c.partition(1 << eu);
    deposit(&mut c, eu, "alice", "7");
    deposit(&mut c, eu, "alice", "7");
    c.persist_all();
    c.deliver_all(); // dropped: the links are cut
    assert_eq!(c.nodes[eu].replica.version_vector().get(&region("eu")), 6);
    assert_eq!(c.nodes[eu].replica.peer_durable_seq(), 4);
    let old: Vec<Event> = c.nodes[eu].replica.origin_events(region("eu"), 0).to_vec();

    c.lose_disk(eu);
    c.heal();
    assert!(c.nodes[eu].replica.is_restoring());
    assert!(matches!(
        c.submit(eu, req("alice", Kind::Deposit, "1", Currency::USD)),
        Err(SubmitError::Restoring)
    ));
    assert!(until_sealed(&mut c, eu, &[eu, us, ap]));
    let r = &c.nodes[eu].replica;
    assert_eq!(r.epoch(), 2);
    let seals = r.seals();
    assert_eq!(seals.len(), 1);
    assert_eq!((seals[0].epoch, seals[0].cut), (2, 4));
    assert_eq!(
        seals[0].id,
        EventId {
            origin: region("eu"),
            seq: 5
        }
    );
    // The old epoch up to the cut keeps its ids and bytes.
    assert_eq!(r.origin_events(region("eu"), 0)[..4], old[..4]);
    let next = deposit(&mut c, eu, "alice", "2");
    assert_eq!(next.seq, 6);
    assert!(c.settle_all());
    same(&c, eu, us);
    same(&c, eu, ap);
    for i in [eu, us, ap] {
        check_against_model(&c.seed, &c.nodes[i].replica).unwrap();
        assert_eq!(c.nodes[i].replica.epoch(), if i == eu { 2 } else { 1 });
        assert_eq!(c.nodes[i].replica.seals(), seals);
        assert!(c.nodes[i].replica.evidence().is_empty());
        // 100 + 3 x 1 + 2: the two events lost with the disk never count.
        assert_eq!(balance(&c, i, "alice"), "105.00");
    }
    // A restart of the rebuilt region reloads the seal and stays in epoch 2.
    c.crash(eu);
    assert_eq!(c.nodes[eu].replica.epoch(), 2);
    assert!(!c.nodes[eu].replica.is_restoring());
    assert!(c.settle_all());
    same(&c, eu, us);
}

/// eu, us and ap (peer acks) after eu's 100 settled everywhere; then us is cut off and ap
/// alone holds eu's next two deposits, eu:2 and eu:3 (unsettled: us's heartbeats do not
/// reach ap). Returns the cluster and the indexes of eu, us and ap.
fn ap_alone_holds_eus_last_two() -> (Cluster, usize, usize, usize) {
    let mut c = Cluster::with_durable_acks(&["eu", "us", "ap"], fee_policy());
    let (eu, us, ap) = (0, 1, 2);
    deposit(&mut c, eu, "alice", "100");
    assert!(c.settle_all());
    c.partition(1 << us);
    deposit(&mut c, eu, "alice", "1");
    deposit(&mut c, eu, "alice", "1");
    c.run_among(&[eu, ap], 2);
    (c, eu, us, ap)
}

#[test]
fn a_member_waived_while_down_voids_its_old_epoch_events_when_the_seal_arrives() {
    let (mut c, eu, us, ap) = ap_alone_holds_eus_last_two();
    assert_eq!(c.nodes[ap].replica.version_vector().get(&region("eu")), 3);
    // ap goes down for good; eu loses its disk and comes back beside us.
    c.partition(1 << ap);
    c.lose_disk(eu);
    c.run_among(&[eu, us], 3);
    assert!(c.nodes[eu].replica.is_restoring());
    assert_eq!(c.nodes[eu].replica.seal_missing(), vec![region("ap")]);
    // Not a member in force, or itself: refused.
    assert!(c.nodes[eu]
        .replica
        .waive_seal_answer(c.now, region("eu"))
        .is_err());
    assert!(c.nodes[eu]
        .replica
        .waive_seal_answer(c.now, region("xx"))
        .is_err());
    // The operator's override: seal without ap.
    c.nodes[eu]
        .replica
        .waive_seal_answer(c.now, region("ap"))
        .unwrap();
    c.drain(eu);
    assert!(until_sealed(&mut c, eu, &[eu, us]));
    assert_eq!(c.nodes[eu].replica.seals()[0].cut, 1);
    deposit(&mut c, eu, "alice", "5");
    // ap returns holding eu:2 and eu:3 of the old epoch: the seal (eu:2) voids them there.
    assert!(c.settle_all(), "{}", dump(&c));
    same(&c, eu, us);
    same(&c, eu, ap);
    for i in [eu, us, ap] {
        check_against_model(&c.seed, &c.nodes[i].replica).unwrap();
        assert!(c.nodes[i].replica.evidence().is_empty(), "{i}");
        assert_eq!(balance(&c, i, "alice"), "105.00");
    }
    assert!(c.nodes[ap].replica.seal_stats().old_epoch_dropped >= 2);
    assert!(c.nodes[ap].replica.membership_stats().voided >= 2);
    // ap restarts: its disk holds the voided events and the seal; the seal wins again.
    c.crash(ap);
    assert!(c.settle_all());
    same(&c, eu, ap);
}

#[test]
fn an_origin_learns_peer_durability_one_round_trip_after_its_write() {
    for acks in [true, false] {
        let mut c = if acks {
            Cluster::with_durable_acks(&["eu", "us"], fee_policy())
        } else {
            Cluster::new(&["eu", "us"], fee_policy())
        };
        let id = deposit(&mut c, 0, "alice", "10");
        c.persist(0, usize::MAX);
        assert_eq!(
            c.nodes[0].replica.peer_durable_seq(),
            0,
            "durable here only"
        );
        c.deliver_all(); // the push reaches us
        assert_eq!(
            c.nodes[0].replica.peer_durable_seq(),
            0,
            "not durable at us yet"
        );
        c.persist(1, usize::MAX);
        c.deliver_all(); // us's Durable reaches eu
        let expect = if acks { id.seq } else { 0 };
        assert_eq!(c.nodes[0].replica.peer_durable_seq(), expect, "acks {acks}");
        // Without durable acks, the next heartbeat of us tells the same.
        c.tick(300);
        c.persist_all();
        c.deliver_all();
        c.tick(300);
        c.persist_all();
        c.deliver_all();
        assert_eq!(c.nodes[0].replica.peer_durable_seq(), id.seq);
    }
}

/// A debit forwarded to its home (home mode) and decided there: with `ack = "peer"` the
/// forwarding region answers its client only once it holds the home's event durably itself
/// (`Replica::durable_at_two`), not on the home's answer alone, which is only as safe as
/// `ack = "local"` at the home. Shown both ways: the answer is held while the event is
/// durable at the home only, and such an event is lost with the home's disk; once answered,
/// it survives under its id.
#[test]
fn a_forwarded_debit_is_peer_acknowledged_only_once_durable_at_the_forwarder() {
    let home_us = Policy::from_toml("[default]\nmode = \"home\"\nhome = \"us\"\n").unwrap();
    for persisted_at_eu in [false, true] {
        let mut c = Cluster::with_durable_acks(&["eu", "us", "ap"], home_us.clone());
        let (eu, us, ap) = (0, 1, 2);
        deposit(&mut c, us, "alice", "100");
        assert!(c.settle_all());
        // ap away: only eu can hold the home's next event.
        c.partition(1 << ap);
        let Ok(Submitted::Pending { request }) =
            c.submit(eu, req("alice", Kind::Purchase, "10", Currency::USD))
        else {
            panic!("a debit at eu is forwarded to its home us");
        };
        c.deliver_all(); // the forward reaches us, which decides it
        c.persist(us, usize::MAX); // durable at the home: the answer and the event leave
        c.deliver_all(); // both reach eu
        let id = EventId {
            origin: region("us"),
            seq: 2,
        };
        assert!(c.nodes[eu].replica.event(id).is_some(), "applied at eu");
        assert!(!c.nodes[eu].replica.durable_at_two(id));
        assert!(
            c.nodes[eu].decided.is_empty(),
            "accepted by the home, durable there only: not answered yet"
        );
        if persisted_at_eu {
            c.persist(eu, usize::MAX);
            assert!(c.nodes[eu].replica.durable_at_two(id));
            let (r, result) = c.nodes[eu]
                .decided
                .pop()
                .expect("answered once durable at eu");
            assert_eq!((r, result), (request, Ok(Submitted::New(id))));
        }
        let at_decision = c.nodes[us].replica.event(id).cloned().unwrap();
        // eu crashes (what it had not persisted is gone), then the home loses its disk.
        c.crash(eu);
        c.inflight.retain(|(_, from, _)| *from != us);
        c.lose_disk(us);
        c.heal(); // ap never saw the event: the links were cut
        assert!(until_sealed(&mut c, us, &[eu, us, ap]), "{}", dump(&c));
        let cut = c.nodes[us].replica.seals()[0].cut;
        assert!(c.settle_all(), "{}", dump(&c));
        for i in [eu, us, ap] {
            let held = c.nodes[i].replica.event(id).cloned();
            if persisted_at_eu {
                assert_eq!(held.as_ref(), Some(&at_decision), "{id} kept at {i}");
                assert!(cut >= id.seq);
                assert_eq!(balance(&c, i, "alice"), "90.00");
            } else {
                // Answering on the decision alone would have acknowledged a lost event.
                assert!(cut < id.seq, "cut {cut}");
                assert_ne!(held.as_ref(), Some(&at_decision), "{id} lost at {i}");
                assert_eq!(balance(&c, i, "alice"), "100.00");
            }
        }
        assert!(c.nodes[eu].decided.is_empty(), "nothing answered after");
    }
}

/// `Message::Durable` goes only to origins that announced `ack = "peer"`
/// (`Message::WantDurable`): eu (peer) hears it from us, us (local) hears none from eu, so a
/// cluster with `ack = "local"` pays nothing.
#[test]
fn durable_goes_only_to_origins_that_announced_ack_peer() {
    let mut c = Cluster::with_durable_acks(&["eu", "us"], fee_policy());
    let (eu, us) = (0, 1);
    // us acknowledges locally, but sends `Durable` where asked (walletd's setting).
    let mut cfg = c.config(region("us"));
    cfg.ack_peer = false;
    c.nodes[us].replica = Replica::new(cfg, Hlc::ZERO);
    c.inflight.clear();
    c.connect_all(None);
    c.deliver_all(); // eu's announcement reaches us
    let at_eu = deposit(&mut c, eu, "alice", "10");
    let at_us = deposit(&mut c, us, "bob", "10");
    let mut durable_to = [0usize; 2];
    for _ in 0..4 {
        c.persist_all();
        for (to, _, m) in &c.inflight {
            if matches!(m, Message::Durable { .. }) {
                durable_to[*to] += 1;
            }
        }
        c.deliver_all();
    }
    assert!(durable_to[eu] > 0, "eu (ack = peer) is told");
    assert_eq!(durable_to[us], 0, "us (ack = local) is sent no Durable");
    assert_eq!(c.nodes[eu].replica.peer_durable_seq(), at_eu.seq);
    // us still learns it from eu's heartbeats.
    for _ in 0..3 {
        c.tick(300);
        c.persist_all();
        c.deliver_all();
    }
    assert_eq!(c.nodes[us].replica.peer_durable_seq(), at_us.seq);
}

/// Region `i` loses its disk, runs beside `with` for three rounds (its seal query answered),
/// and an operator waives the answer of `waived` (down): the seal may then be issued.
fn lose_disk_and_waive(c: &mut Cluster, i: usize, with: usize, waived: &str) {
    c.lose_disk(i);
    c.run_among(&[i, with], 3);
    c.nodes[i]
        .replica
        .waive_seal_answer(c.now, region(waived))
        .unwrap();
    c.drain(i);
}

/// A seal query resent while the seal was in flight reaches a member after the seal, which
/// it holds buffered behind a gap (it lacks old-epoch events up to the cut that another member
/// held): the query must not hold the origin back again, or the events up to the cut, and
/// with them the seal, never apply (simulator `--lost-disk 50`: seed 57 with `--ack peer`,
/// 119 and 186 with `--ack local`, never converged).
#[test]
fn a_seal_query_resent_after_the_seal_does_not_block_the_events_up_to_the_cut() {
    let (mut c, eu, us, ap) = ap_alone_holds_eus_last_two();
    let old: Vec<Event> = c.nodes[ap].replica.origin_events(region("eu"), 0).to_vec();
    assert_eq!(old.len(), 3);
    // eu loses its disk and seals with ap's answer (us is waived: still cut off).
    lose_disk_and_waive(&mut c, eu, ap, "us");
    assert!(until_sealed(&mut c, eu, &[eu, ap]), "{}", dump(&c));
    let seal = c.nodes[eu].replica.origin_events(region("eu"), 0)[3].clone();
    assert_eq!(c.nodes[eu].replica.seals()[0].cut, 3);
    // At us, by hand: the query, the seal (buffered: us holds eu:1 only), the query again
    // (resent while the seal was in flight), then the old epoch's eu:2 and eu:3.
    let now = c.local_now(us);
    let from = region("eu");
    let r = &mut c.nodes[us].replica;
    r.handle_message(now, from, Message::SealQuery);
    r.handle_message(now, from, Message::Events(vec![seal.clone()]));
    r.handle_message(now, from, Message::SealQuery);
    r.handle_message(now, region("ap"), Message::Events(old[1..].to_vec()));
    assert_eq!(
        r.version_vector().get(&from),
        4,
        "eu:2, eu:3 and the seal apply at us"
    );
    assert_eq!(r.seals().len(), 1);
}

/// Sim seed 366 (`--membership 100% --compact-every 50`, a lost disk drawn): us answered
/// the rebuilt eu's query with its hold (1), then eu:2 and eu:3 of the old epoch reached it
/// from ap (buffered: above the hold), and eu's seal (eu:4, cut at 3) was lost on the way.
/// Its pulls must bring the seal: asking eu only below the buffered eu:2, as for a gap,
/// brought nothing, for good.
#[test]
fn a_pull_brings_the_seal_past_the_old_epoch_run_a_seal_query_held_back() {
    let (mut c, eu, us, ap) = ap_alone_holds_eus_last_two();
    let old: Vec<Event> = c.nodes[ap].replica.origin_events(region("eu"), 0).to_vec();
    lose_disk_and_waive(&mut c, eu, ap, "us");
    assert!(until_sealed(&mut c, eu, &[eu, ap]), "{}", dump(&c));
    assert_eq!(c.nodes[eu].replica.seals()[0].cut, 3);
    c.run_among(&[eu, ap], 2);
    assert_eq!(c.nodes[ap].replica.seals().len(), 1, "{}", dump(&c));
    // At us, by hand: the query (resent: it holds us back at 1), then eu:2 and eu:3 from ap.
    let (now, from) = (c.local_now(us), region("eu"));
    let r = &mut c.nodes[us].replica;
    r.handle_message(now, from, Message::SealQuery);
    r.handle_message(now, region("ap"), Message::Events(old[1..].to_vec()));
    assert_eq!(r.version_vector().get(&from), 1, "held back at the answer");
    // us pulls ap: the request asks eu above the buffered run, and the answer brings the seal.
    let ask = r.pull_request(128);
    let ap_now = c.local_now(ap);
    c.nodes[ap]
        .replica
        .handle_message(ap_now, region("us"), ask);
    let ap_r = &mut c.nodes[ap].replica;
    let answer = std::iter::from_fn(|| ap_r.poll_output())
        .find_map(|o| match o {
            Output::Send { to, msg } if to == region("us") => Some(msg),
            _ => None,
        })
        .expect("ap answers the pull");
    let r = &mut c.nodes[us].replica;
    r.handle_message(now, region("ap"), answer);
    assert_eq!(r.seals().len(), 1, "{}", dump(&c));
    assert_eq!(c.nodes[us].replica.version_vector().get(&from), 4);
    assert!(c.settle_all(), "{}", dump(&c));
    same(&c, eu, us);
    same(&c, eu, ap);
}

/// us holds eu's old-epoch eu:3 buffered behind a gap (it lacks eu:2) when eu, rebuilt after
/// a lost disk, asks it how far it holds eu's log: us answers 1, and eu seals at 1 (ap, which
/// holds eu:2 and eu:3, is down for good and waived). Returns the cluster, eu, us and the old
/// eu:3; eu's new events are not sent yet.
fn us_holds_an_old_epoch_event_buffered_when_eu_seals() -> (Cluster, usize, usize, Event) {
    let (mut c, eu, us, ap) = ap_alone_holds_eus_last_two();
    let old = c.nodes[ap].replica.origin_events(region("eu"), 0)[2].clone();
    c.partition(1 << ap);
    let (now, from) = (c.local_now(us), region("ap"));
    c.nodes[us]
        .replica
        .handle_message(now, from, Message::Events(vec![old.clone()]));
    assert_eq!(c.nodes[us].replica.version_vector().get(&region("eu")), 1);
    lose_disk_and_waive(&mut c, eu, us, "ap");
    assert!(!c.nodes[eu].replica.is_restoring(), "{}", dump(&c));
    assert_eq!(c.nodes[eu].replica.seals()[0].cut, 1);
    (c, eu, us, old)
}

/// After the seal: us holds what eu holds, with no evidence, matching the model, and alice's
/// settled balance is `alice` (the old epoch above the cut never counts).
fn us_follows_the_new_epoch(c: &mut Cluster, eu: usize, us: usize, alice: &str) {
    let r = &c.nodes[us].replica;
    assert!(r.evidence().is_empty(), "{:?}", r.evidence());
    assert!(r.seal_stats().old_epoch_dropped >= 1);
    assert!(c.settle_all(), "{}", dump(c));
    same(c, eu, us);
    for i in [eu, us] {
        check_against_model(&c.seed, &c.nodes[i].replica).unwrap();
        assert_eq!(balance(c, i, "alice"), alice);
    }
}

/// A member that answered a seal query holds an old-epoch event buffered behind a gap; the
/// rebuilt region seals below it and issues a new event under the same id, which overtakes
/// the seal on the way (held back, or pulled from another member). Two events under one id
/// buffered while the seal is awaited are the old epoch and the new, not equivocation: the
/// old one (the lower HLC: the new epoch's are above everything the members observed) is
/// dropped. Reported as equivocation, the origin settled nothing more anywhere (simulator
/// `--lost-disk 50 --ack local`, seed 119: us held ap:1451 of the old epoch).
#[test]
fn an_old_epoch_event_buffered_at_the_query_is_not_evidence_against_the_new_epoch() {
    let (mut c, eu, us, old) = us_holds_an_old_epoch_event_buffered_when_eu_seals();
    let new = deposit(&mut c, eu, "alice", "5");
    assert_eq!(new.seq, 3);
    c.persist_all();
    // The new eu:3 reaches us before the seal, eu:2.
    c.inflight.retain(|(to, _, _)| *to != us);
    let mine = c.nodes[eu].replica.origin_events(region("eu"), 0).to_vec();
    let (seal, fresh) = (mine[1].clone(), mine[2].clone());
    assert_ne!(fresh, old);
    let (now, from) = (c.local_now(us), region("eu"));
    let r = &mut c.nodes[us].replica;
    r.handle_message(now, from, Message::Events(vec![fresh.clone()]));
    r.handle_message(now, from, Message::Events(vec![seal]));
    assert_eq!(r.version_vector().get(&from), 3);
    assert_eq!(r.event(new), Some(&fresh));
    us_follows_the_new_epoch(&mut c, eu, us, "105.00");
}

/// The same old-epoch event buffered at us, and the new epoch's first heartbeat (promising
/// nothing more at or below its HLC above the seal's seq) overtakes the seal: the buffered
/// event is the old epoch's, not a broken promise (simulator `--lost-disk 50 --ack local`,
/// seed 206: us held ap:1312 of the old epoch when ap's heartbeat for seq 1288 came).
#[test]
fn an_old_epoch_event_buffered_at_the_query_is_not_a_broken_promise_of_the_new_epoch() {
    let (mut c, eu, us, _) = us_holds_an_old_epoch_event_buffered_when_eu_seals();
    for _ in 0..3 {
        c.persist_all();
        c.tick(300);
    }
    c.persist_all();
    // What eu sends us: a heartbeat first.
    let mut to_us: Vec<Message> = Vec::new();
    c.inflight.retain(|(to, from, m)| {
        let mine = *to == us && *from == eu;
        if mine {
            to_us.push(m.clone());
        }
        !mine
    });
    to_us.sort_by_key(|m| !matches!(m, Message::SignedHeartbeat(_)));
    assert!(
        matches!(to_us.first(), Some(Message::SignedHeartbeat(h)) if h.hb.seq >= 2),
        "{to_us:?}"
    );
    let (now, from) = (c.local_now(us), region("eu"));
    for m in to_us {
        c.nodes[us].replica.handle_message(now, from, m);
    }
    c.drain(us);
    us_follows_the_new_epoch(&mut c, eu, us, "100.00");
}

/// eu (holding eu:1 and eu:2) writes eu:3 and eu:4, durable locally, and sends neither;
/// returns its log.
fn eu_writes_two_unsent(c: &mut Cluster, eu: usize) -> Vec<Event> {
    deposit(c, eu, "alice", "7");
    deposit(c, eu, "alice", "7");
    c.persist(eu, usize::MAX);
    c.inflight.retain(|(_, from, _)| *from != eu);
    let old: Vec<Event> = c.nodes[eu].replica.origin_events(region("eu"), 0).to_vec();
    assert_eq!(old.len(), 4);
    old
}

/// ap, waived while away, holds eu:1 only when eu, rebuilt, seals at us's answer (cut 2): the
/// seal (eu:3) reaches ap buffered behind the gap at eu:2, then the new epoch's heartbeat
/// (promising nothing more at or below its HLC above eu:3), then the old epoch's eu:4, sent
/// before the disk was lost and late on the way. eu:4 is of the sealed epoch (above the
/// buffered seal's cut, below its HLC): dropped, not a broken promise. Reported as one, ap froze
/// eu and settled nothing more of it.
#[test]
fn an_old_epoch_event_after_a_buffered_seal_is_not_a_broken_promise_of_the_new_epoch() {
    let (eu, us, ap) = (0, 1, 2);
    let mut c = one_away(eu, ap);
    // eu:3 and eu:4, acknowledged locally, never delivered.
    let old = eu_writes_two_unsent(&mut c, eu);
    c.partition(1 << ap);
    lose_disk_and_waive(&mut c, eu, us, "ap");
    assert!(until_sealed(&mut c, eu, &[eu, us]), "{}", dump(&c));
    assert_eq!(c.nodes[eu].replica.seals()[0].cut, 2);
    let seal = c.nodes[eu].replica.origin_events(region("eu"), 0)[2].clone();
    // The new epoch's heartbeat, as eu sends it to us.
    for _ in 0..3 {
        c.persist_all();
        c.tick(300);
    }
    c.persist_all();
    let hb = c
        .inflight
        .iter()
        .find_map(|(to, from, m)| match m {
            Message::SignedHeartbeat(h) if *to == us && *from == eu && h.hb.seq >= 3 => {
                Some(m.clone())
            }
            _ => None,
        })
        .expect("eu heartbeats");
    // At ap, by hand: the seal (buffered: ap holds eu:1), the heartbeat, the old eu:4.
    let (now, from) = (c.local_now(ap), region("eu"));
    let r = &mut c.nodes[ap].replica;
    r.handle_message(now, from, Message::Events(vec![seal]));
    assert_eq!(r.version_vector().get(&from), 1);
    r.handle_message(now, from, hb);
    r.handle_message(now, from, Message::Events(vec![old[3].clone()]));
    assert!(r.evidence().is_empty(), "{:?}", r.evidence());
    assert!(r.seal_stats().old_epoch_dropped >= 1);
    c.drain(ap);
    assert!(c.settle_all(), "{}", dump(&c));
    for i in [eu, us, ap] {
        let r = &c.nodes[i].replica;
        assert!(r.evidence().is_empty(), "{}", dump(&c));
        check_against_model(&c.seed, r).unwrap();
        // 100 + 1: the old epoch's eu:3 and eu:4 never count.
        assert_eq!(balance(&c, i, "alice"), "101.00");
    }
    same(&c, eu, ap);
    same(&c, us, ap);
}

/// eu, us and ap (peer acks) after `origin`'s 100 settled everywhere; then `away` is cut off
/// and the other two hold `origin`'s next deposit (seq 2).
fn one_away(origin: usize, away: usize) -> Cluster {
    let mut c = Cluster::with_durable_acks(&["eu", "us", "ap"], fee_policy());
    deposit(&mut c, origin, "alice", "100");
    assert!(c.settle_all());
    c.partition(1 << away);
    deposit(&mut c, origin, "alice", "1");
    let live: Vec<usize> = (0..3).filter(|i| *i != away).collect();
    c.run_among(&live, 2);
    c
}

/// Sim seed 128 (`--lost-disk 50 --ack peer`): ap held eu:3 and eu:4 of the old epoch
/// buffered behind a gap when eu lost its disk; eu sealed at us's answer (cut 2) and issued a
/// new eu:4, which reached ap before the seal. Two events buffered under eu:4 are one of each
/// epoch, not evidence: ap must not freeze eu, and must apply the new epoch once the seal and
/// eu:2 arrive.
#[test]
fn a_new_epoch_event_that_overtakes_its_seal_is_no_evidence_against_an_old_one_buffered() {
    let (eu, us, ap) = (0, 1, 2);
    // ap away: us holds eu:2; eu:3 and eu:4 reach ap only (by hand), never us.
    let mut c = one_away(eu, ap);
    let old = eu_writes_two_unsent(&mut c, eu);
    let now = c.local_now(ap);
    c.nodes[ap]
        .replica
        .handle_message(now, region("eu"), Message::Events(old[2..].to_vec()));
    c.drain(ap);
    assert_eq!(c.nodes[ap].replica.version_vector().get(&region("eu")), 1);

    // eu loses its disk, pulls eu:1..2 back from us; ap answers its seal query by hand (1).
    c.lose_disk(eu);
    c.run_among(&[eu, us], 3);
    let r = &mut c.nodes[ap].replica;
    r.handle_message(now, region("eu"), Message::SealQuery);
    let mut answer = None;
    while let Some(out) = r.poll_output() {
        if let Output::Send { msg, .. } = out {
            if matches!(msg, Message::SealHeld { .. }) {
                answer = Some(msg);
            }
        }
    }
    let answer = answer.expect("ap answers the seal query");
    assert!(matches!(answer, Message::SealHeld { held: 1, .. }));
    let now_eu = c.local_now(eu);
    c.nodes[eu]
        .replica
        .handle_message(now_eu, region("ap"), answer);
    c.drain(eu);
    assert!(until_sealed(&mut c, eu, &[eu, us]), "{}", dump(&c));
    assert_eq!(c.nodes[eu].replica.seals()[0].cut, 2);
    deposit(&mut c, eu, "alice", "2");
    c.run_among(&[eu, us], 2);
    let new: Vec<Event> = c.nodes[eu].replica.origin_events(region("eu"), 0).to_vec();
    assert_eq!(new.len(), 4);
    assert_ne!(new[3], old[3], "eu:4 is issued again in epoch 2");

    // At ap: the new eu:4 overtakes the seal, then the seal, then eu:2.
    let r = &mut c.nodes[ap].replica;
    let now = c.now + 1;
    r.handle_message(now, region("eu"), Message::Events(vec![new[3].clone()]));
    r.handle_message(now, region("eu"), Message::Events(vec![new[2].clone()]));
    r.handle_message(now, region("us"), Message::Events(vec![new[1].clone()]));
    assert!(r.evidence().is_empty(), "ap froze eu: {:?}", r.evidence());
    assert_eq!(r.version_vector().get(&region("eu")), 4, "{}", dump(&c));
    assert!(c.settle_all(), "{}", dump(&c));
    for i in [eu, us, ap] {
        check_against_model(&c.seed, &c.nodes[i].replica).unwrap();
        assert!(c.nodes[i].replica.evidence().is_empty());
        // 100 + 1 + 2: the old epoch's eu:3 and eu:4 never count.
        assert_eq!(balance(&c, i, "alice"), "103.00");
    }
    same(&c, eu, ap);
    same(&c, us, ap);
}

/// eu loses its disk and is cut off for good; `by` retires it.
fn eu_lost_for_good_and_retired_by(c: &mut Cluster, eu: usize, by: usize) {
    c.partition(1 << eu);
    c.lose_disk(eu);
    let now = c.local_now(by);
    c.nodes[by]
        .replica
        .retire(
            now,
            [region("eu")].into_iter().collect(),
            "disk lost for good".into(),
        )
        .unwrap();
    c.drain(by);
}

/// Sim seed 37 (`--lost-disk 50 --ack peer`): us answered the seal query of a rebuilt eu
/// (holding eu:1, eu:3 buffered behind a gap), eu never sealed and was retired, its cut at
/// eu:3 (ap's acknowledgement). The query's hold must end with the cut: us applies eu:2 and
/// eu:3 and settles, instead of holding eu's log at its answer for good.
#[test]
fn a_retire_cut_ends_the_hold_of_a_seal_query_that_was_never_followed_by_a_seal() {
    let (mut c, eu, us, ap) = ap_alone_holds_eus_last_two();
    let old: Vec<Event> = c.nodes[ap].replica.origin_events(region("eu"), 0).to_vec();
    assert_eq!(old.len(), 3);
    // At us, by hand: eu:3 (buffered behind the gap at eu:2), then the rebuilt eu's query.
    let now = c.local_now(us);
    let r = &mut c.nodes[us].replica;
    r.handle_message(now, region("ap"), Message::Events(vec![old[2].clone()]));
    r.handle_message(now, region("eu"), Message::SealQuery);
    c.drain(us);
    // eu lost its disk and is gone for good: us retires it.
    eu_lost_for_good_and_retired_by(&mut c, eu, us);
    c.run_among(&[us, ap], 6);
    for i in [us, ap] {
        let r = &c.nodes[i].replica;
        assert_eq!(r.cut(region("eu")), Some(3), "{}", dump(&c));
        assert_eq!(r.version_vector().get(&region("eu")), 3, "{}", dump(&c));
        assert!(!r.settlement_blocked(), "{}", dump(&c));
        r.check_invariants().unwrap();
    }
    same(&c, us, ap);
}

/// Sim seed 157 (`--membership 100% --compact-every 50`, a lost disk drawn): the region being
/// retired lost its disk and kept asking the others how far they hold its log. A member that
/// already applied the retire's cut (3) but held the region's log only up to 1 answered the
/// query with a hold at 1, which no seal and no cut would ever end: it never applied eu:2
/// and eu:3 (folded elsewhere meanwhile) and never converged. A query of a region whose cut
/// is known sets no hold.
#[test]
fn a_seal_query_after_the_retire_cut_sets_no_hold() {
    let (mut c, eu, us, ap) = ap_alone_holds_eus_last_two();
    // eu loses its disk and is gone; ap retires it. us learns the retire and its cut through
    // the membership events alone: none of eu's events reach it.
    eu_lost_for_good_and_retired_by(&mut c, eu, ap);
    let eu_name = region("eu");
    for _ in 0..20 {
        c.persist_all();
        c.tick(300);
        c.persist_all();
        let flight = std::mem::take(&mut c.inflight);
        for (to, from, m) in flight {
            if to == eu || from == eu {
                continue;
            }
            let m = match m {
                Message::Events(v) => {
                    Message::Events(v.into_iter().filter(|e| e.id.origin != eu_name).collect())
                }
                Message::PullAnswer { events, more } => Message::PullAnswer {
                    events: events
                        .into_iter()
                        .filter(|e| e.id.origin != eu_name)
                        .collect(),
                    more,
                },
                m => m,
            };
            let now = c.local_now(to);
            let name = c.names[from];
            c.nodes[to].replica.handle_message(now, name, m);
            c.drain(to);
        }
        if c.nodes[us].replica.cut(eu_name).is_some() {
            break;
        }
    }
    assert_eq!(c.nodes[us].replica.cut(eu_name), Some(3), "{}", dump(&c));
    assert_eq!(c.nodes[us].replica.version_vector().get(&eu_name), 1);
    // The rebuilt eu's query reaches us now (it asks again every heartbeat period).
    let now = c.local_now(us);
    c.nodes[us]
        .replica
        .handle_message(now, eu_name, Message::SealQuery);
    c.drain(us);
    c.run_among(&[us, ap], 6);
    for i in [us, ap] {
        let r = &c.nodes[i].replica;
        assert_eq!(r.version_vector().get(&eu_name), 3, "{}", dump(&c));
        assert!(!r.settlement_blocked(), "{}", dump(&c));
        r.check_invariants().unwrap();
    }
    same(&c, us, ap);
}

/// Sim seed 450 (`--lost-disk 50 --ack peer`): ap alone held us's last events durably (peer
/// acknowledged), us lost its disk, and eu retired ap meanwhile. While ap is connected the
/// seal must wait for its answer: sealing at eu's answer, once us had pulled that much back,
/// lost the acknowledged events, and ap then held two events under their ids. A member being
/// retired that is cut off is not waited for (its retire waits for us, after the seal: the
/// wait would never end).
#[test]
fn a_member_being_retired_is_asked_before_a_seal() {
    let (eu, us, ap) = (0, 1, 2);
    // eu away: ap alone holds us:2 and us:3, acknowledged with ack = peer.
    let mut c = one_away(us, eu);
    deposit(&mut c, us, "alice", "2");
    c.run_among(&[us, ap], 2);
    assert_eq!(c.nodes[us].replica.peer_durable_seq(), 3);
    let acked: Vec<Event> = c.nodes[us].replica.origin_events(region("us"), 0).to_vec();
    // us loses its disk; eu, still cut off, retires ap.
    c.lose_disk(us);
    let now = c.local_now(eu);
    c.nodes[eu]
        .replica
        .retire(now, [region("ap")].into_iter().collect(), "leaving".into())
        .unwrap();
    c.drain(eu);
    c.persist(eu, usize::MAX);
    // The rebuilt us hears of the retire first (by hand), then everything heals.
    let retire: Vec<Event> = c.nodes[eu].replica.origin_events(region("eu"), 0).to_vec();
    let now = c.local_now(us);
    c.nodes[us]
        .replica
        .handle_message(now, region("eu"), Message::Events(retire));
    c.drain(us);
    assert!(c.nodes[us].replica.retiring().contains(&region("ap")));
    // ap is connected: eu's answer (us:1) is not enough, us waits for ap's too.
    let missing = c.nodes[us].replica.seal_missing();
    assert!(missing.contains(&region("ap")), "{missing:?}");
    // Cut off, it is not waited for (its retire waits for us, after the seal).
    c.partition(1 << ap);
    assert_eq!(c.nodes[us].replica.seal_missing(), vec![region("eu")]);
    c.heal();
    assert!(until_sealed(&mut c, us, &[eu, us, ap]), "{}", dump(&c));
    assert_eq!(c.nodes[us].replica.seals()[0].cut, 3, "{}", dump(&c));
    c.run_among(&[eu, us, ap], 6);
    for i in [eu, us, ap] {
        let r = &c.nodes[i].replica;
        assert!(
            r.evidence().is_empty(),
            "{}: {:?}",
            c.names[i],
            r.evidence()
        );
        assert_eq!(
            r.origin_events(region("us"), 0)[..3],
            acked[..],
            "{}",
            c.names[i]
        );
    }
    same(&c, eu, us);
}

#[derive(Debug, Clone)]
enum Op {
    Submit {
        at: usize,
        acct: u8,
        amount: u8,
        debit: bool,
    },
    Deliver(usize),
    Persist(usize),
    Pull(usize, usize),
    Tick,
    Isolate(usize),
    Heal,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3, 0u8..3, 1u8..60, any::<bool>())
            .prop_map(|(at, acct, amount, debit)| Op::Submit { at, acct, amount, debit }),
        4 => any::<usize>().prop_map(Op::Deliver),
        3 => (0usize..3).prop_map(Op::Persist),
        2 => (0usize..3, 0usize..3).prop_map(|(a, b)| Op::Pull(a, b)),
        2 => Just(Op::Tick),
        1 => (0usize..3).prop_map(Op::Isolate),
        1 => Just(Op::Heal),
    ]
}

fn apply(c: &mut Cluster, op: &Op) {
    match *op {
        Op::Submit {
            at,
            acct,
            amount,
            debit,
        } => {
            let kind = if debit { Kind::Purchase } else { Kind::Deposit };
            let account = ["alice", "bob", "carol"][usize::from(acct)];
            let _ = c.submit(at, req(account, kind, &amount.to_string(), Currency::USD));
        }
        Op::Deliver(k) => c.deliver(k),
        Op::Persist(i) => c.persist(i, usize::MAX),
        Op::Pull(a, b) => c.anti_entropy(a, b),
        Op::Tick => c.tick(300),
        Op::Isolate(i) => c.partition(1 << i),
        Op::Heal => c.heal(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// eu loses its disk at a random point of a random run (partitions, partial persists,
    /// reordered deliveries), then rejoins under epoch 2. After healing and settling: every
    /// region is byte-identical and matches the reference model; every event eu acknowledged
    /// with `ack = "peer"` (own seq at or below `peer_durable_seq`, in either epoch) is held
    /// under its id, unchanged, everywhere; the old epoch's events up to the cut keep their
    /// ids; nothing above the cut of the old epoch counts (the logs hold exactly the old
    /// epoch up to the cut, the seal, and the new epoch's events).
    #[test]
    fn a_lost_disk_at_any_point_keeps_every_peer_acknowledged_event(
        before in prop::collection::vec(op(), 5..60),
        after in prop::collection::vec(op(), 0..40),
        lost_in_flight in any::<bool>(),
    ) {
        let mut c = Cluster::with_durable_acks(&["eu", "us", "ap"], fee_policy());
        let eu = 0;
        let me = region("eu");
        let mut peer_acked: BTreeMap<EventId, Event> = BTreeMap::new();
        let note = |c: &Cluster, acked: &mut BTreeMap<EventId, Event>| {
            let r = &c.nodes[eu].replica;
            let upto = r.peer_durable_seq();
            for e in r.origin_events(me, 0) {
                if e.id.seq <= upto {
                    acked.insert(e.id, e.clone());
                }
            }
        };
        for o in &before {
            apply(&mut c, o);
            note(&c, &mut peer_acked);
        }
        let old: Vec<Event> = c.nodes[eu].replica.origin_events(me, 0).to_vec();
        if lost_in_flight {
            // What eu had sent but no one received yet is lost too.
            c.inflight.retain(|(_, from, _)| *from != eu);
        }
        c.lose_disk(eu);
        for o in &after {
            apply(&mut c, o);
            if !c.nodes[eu].replica.is_restoring() {
                note(&c, &mut peer_acked);
            }
        }
        c.heal();
        prop_assert!(until_sealed(&mut c, eu, &[0, 1, 2]), "eu never sealed");
        deposit(&mut c, eu, "alice", "3");
        prop_assert!(c.settle_all(), "no convergence: {}", dump(&c));
        note(&c, &mut peer_acked);
        let seal = c.nodes[eu].replica.seals()[0];
        prop_assert_eq!(seal.epoch, 2);
        for i in 0..3 {
            let r = &c.nodes[i].replica;
            check_against_model(&c.seed, r).map_err(TestCaseError::fail)?;
            prop_assert!(r.evidence().is_empty());
            prop_assert_eq!(snapshot(r), snapshot(&c.nodes[0].replica));
            let log = r.origin_events(me, 0);
            for (id, e) in &peer_acked {
                prop_assert_eq!(log.get(id.seq as usize - 1), Some(e), "{} lost at {}", id, i);
            }
            // Up to the cut: the old epoch, unchanged; then the seal; then the new epoch.
            prop_assert!(seal.cut as usize <= old.len() || seal.cut == 0);
            prop_assert_eq!(&log[..seal.cut as usize], &old[..seal.cut as usize]);
            prop_assert_eq!(log[seal.cut as usize].id, seal.id);
            prop_assert!(log[seal.cut as usize + 1..].iter().all(|e| e.hlc > seal.hlc));
        }
    }
}
