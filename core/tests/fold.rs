//! Every policy knob of the settled fold, with hand-computed expected values.
//!
//! Each test runs two regions (`eu`, `us`): a shared history, then a partition in which both
//! spend from what they saw, then the heal. Time advances between submits, so the settled
//! order is the submission order, whatever the region.

mod common;

use common::*;
use wallet_core::*;

const EU: usize = 0;
const US: usize = 1;

enum Step {
    /// Submit at a region (must be accepted).
    At(usize, TxRequest),
    /// Cut the link (the final heal is automatic).
    Partition,
    /// A policy change event issued at a region.
    PolicyAt(usize, &'static str),
}
use Step::*;

fn run(policy: &str, steps: Vec<Step>) -> Cluster {
    let mut c = Cluster::new(&["eu", "us"], Policy::from_toml(policy).unwrap());
    c.tick(0);
    for step in steps {
        match step {
            At(i, r) => {
                let out = c.submit(i, r.clone());
                assert!(out.is_ok(), "{r:?} refused at {}: {out:?}", c.names[i]);
            }
            Partition => c.partition(0b10),
            PolicyAt(i, p) => {
                let now = c.local_now(i);
                c.nodes[i]
                    .replica
                    .submit_policy(now, Policy::from_toml(p).unwrap())
                    .unwrap();
                c.drain(i);
            }
        }
        c.now += 10;
        if c.connected(EU, US) {
            c.persist_all();
            c.deliver_all();
        } else {
            c.persist_all();
            c.inflight.clear();
        }
    }
    assert!(c.settle_all());
    for n in &c.nodes {
        n.replica.check_invariants().unwrap();
        check_against_model(&c.seed, &n.replica).unwrap();
    }
    assert_eq!(
        snapshot(&c.nodes[EU].replica),
        snapshot(&c.nodes[US].replica)
    );
    c
}

fn usd(account: &str, kind: Kind, amount: &str) -> TxRequest {
    req(account, kind, amount, Currency::USD)
}

/// The feed as (id, amount, policy version).
fn feed(c: &Cluster) -> Vec<(String, String, u32)> {
    c.nodes[EU]
        .replica
        .feed(0, 100)
        .iter()
        .map(|x| (x.id(), x.amount_str(), x.policy_version))
        .collect()
}

fn f(id: &str, amount: &str) -> (String, String, u32) {
    (id.to_string(), amount.to_string(), 1)
}

fn settled(c: &Cluster, account: &str, cur: Currency) -> String {
    c.nodes[EU]
        .replica
        .balance(&acct(account), cur)
        .settled
        .to_string()
}

/// eu: deposit `funds`; partition; eu spends `a`, then us spends `b` (us saw `funds`).
fn overdraw(policy: &str, funds: &str, a: &str, b: &str) -> Cluster {
    run(
        policy,
        vec![
            At(EU, usd("alice", Kind::Deposit, funds)),
            Partition,
            At(EU, usd("alice", Kind::Purchase, a)),
            At(US, usd("alice", Kind::Purchase, b)),
        ],
    )
}

#[test]
fn flat_fee() {
    // 100 - 60 - 70 = -30: us:1 overdraws by 30; fee = 5.00 flat.
    let c = overdraw("[default]\nfee = { flat = \"5\" }\n", "100", "60", "70");
    assert_eq!(feed(&c), vec![f("fee:us:1", "5.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-35.00");
}

#[test]
fn percent_fee_rounds_half_away_from_zero() {
    // Overdrawn 30.25; 10 % = 3.025 -> 3.03.
    let c = overdraw(
        "[default]\nfee = { percent = \"10\" }\n",
        "100",
        "60",
        "70.25",
    );
    assert_eq!(feed(&c), vec![f("fee:us:1", "3.03")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-33.28");
    // Overdrawn 0.05; 10 % = 0.005 -> 0.01 (the exact midpoint goes away from zero).
    let c = overdraw(
        "[default]\nfee = { percent = \"10\" }\n",
        "100",
        "60",
        "40.05",
    );
    assert_eq!(feed(&c), vec![f("fee:us:1", "0.01")]);
}

#[test]
fn overdrawn_amount_is_capped_at_the_debit() {
    // Balance 100 -> -20 by eu (withdrawal, no fee policy difference), then us spends 30:
    // floor - balance = 50, but the debit is 30, so overdrawn = 30; 10 % -> 3.00.
    let c = run(
        "[default]\nfee = { percent = \"10\" }\n",
        vec![
            At(EU, usd("alice", Kind::Deposit, "100")),
            Partition,
            At(EU, usd("alice", Kind::Purchase, "100")),
            At(US, usd("alice", Kind::Purchase, "20")),
            At(US, usd("alice", Kind::Purchase, "30")),
        ],
    );
    // us:1 overdraws by 20 -> 2.00 (balance -22); us:2: min(-22-30 -> 52, 30) = 30 -> 3.00.
    assert_eq!(feed(&c), vec![f("fee:us:1", "2.00"), f("fee:us:2", "3.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-55.00");
}

#[test]
fn minimum_raises_and_cap_lowers() {
    // Overdrawn 10: 1 + 10 % = 2.00 -> minimum 3.00.
    let p = "[default]\nfee = { flat = \"1\", percent = \"10\", minimum = \"3\", cap = \"20\" }\n";
    let c = overdraw(p, "100", "60", "50");
    assert_eq!(feed(&c), vec![f("fee:us:1", "3.00")]);
    // Overdrawn 500: 1 + 50 = 51.00 -> cap 20.00.
    let c = overdraw(p, "500", "500", "500");
    assert_eq!(feed(&c), vec![f("fee:us:1", "20.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-520.00");
}

#[test]
fn grace_charges_nothing_up_to_and_including_it() {
    let p = "[default]\nfee = { flat = \"5\", grace = \"10\" }\n";
    // Overdrawn exactly 10.00: no fee.
    let c = overdraw(p, "100", "60", "50");
    assert_eq!(feed(&c), vec![]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-10.00");
    // Overdrawn 10.01: fee.
    let c = overdraw(p, "100", "60", "50.01");
    assert_eq!(feed(&c), vec![f("fee:us:1", "5.00")]);
}

/// deposit 100; partition; eu spends 100; us spends 60 then 30.
fn two_overdraws(per: &str) -> Cluster {
    run(
        &format!("[default]\nfee = {{ flat = \"5\", per = \"{per}\" }}\n"),
        vec![
            At(EU, usd("alice", Kind::Deposit, "100")),
            Partition,
            At(EU, usd("alice", Kind::Purchase, "100")),
            At(US, usd("alice", Kind::Purchase, "60")),
            At(US, usd("alice", Kind::Purchase, "30")),
        ],
    )
}

#[test]
fn per_debit_charges_every_overdrawing_debit() {
    let c = two_overdraws("debit");
    assert_eq!(feed(&c), vec![f("fee:us:1", "5.00"), f("fee:us:2", "5.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-100.00");
}

#[test]
fn per_episode_charges_once_per_episode() {
    let c = two_overdraws("episode");
    assert_eq!(feed(&c), vec![f("fee:us:1", "5.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-95.00");
}

#[test]
fn per_episode_fee_goes_to_the_first_debit_beyond_grace() {
    // Grace 20: us:1 overdraws by 15 (no fee, but the episode opens), us:2 by 30 (fee).
    let c = run(
        "[default]\nfee = { flat = \"5\", grace = \"20\", per = \"episode\" }\n",
        vec![
            At(EU, usd("alice", Kind::Deposit, "100")),
            Partition,
            At(EU, usd("alice", Kind::Purchase, "100")),
            At(US, usd("alice", Kind::Purchase, "15")),
            At(US, usd("alice", Kind::Purchase, "30")),
            At(US, usd("alice", Kind::Purchase, "40")),
        ],
    );
    assert_eq!(feed(&c), vec![f("fee:us:2", "5.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-90.00");
}

#[test]
fn episode_closes_when_back_at_the_floor_and_fees_never_keep_it_open() {
    // Settled order: deposit 100 -> 100; eu:2 purchase 100 -> 0; us:1 purchase 60 -> -60,
    // episode opens, fee 5 -> -65; eu:3 deposit 60 -> -5, which is 0 without the episode's
    // fee: the episode closes; eu:4 purchase 1 -> -6 opens a new episode: fee 5 -> -11.
    let c = run(
        "[default]\nfee = { flat = \"5\", per = \"episode\" }\n",
        vec![
            At(EU, usd("alice", Kind::Deposit, "100")),
            Partition,
            At(EU, usd("alice", Kind::Purchase, "100")),
            At(US, usd("alice", Kind::Purchase, "60")),
            At(EU, usd("alice", Kind::Deposit, "60")),
            At(EU, usd("alice", Kind::Purchase, "1")),
        ],
    );
    assert_eq!(feed(&c), vec![f("fee:us:1", "5.00"), f("fee:eu:4", "5.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-11.00");
}

#[test]
fn episode_stays_open_while_below_the_floor() {
    // -60 (fee 5 -> -65); deposit 30 -> -35 (-30 without the fee): still open; purchase 1
    // -> -36: same episode, no second fee.
    let c = run(
        "[default]\nfee = { flat = \"5\", per = \"episode\" }\n",
        vec![
            At(EU, usd("alice", Kind::Deposit, "100")),
            Partition,
            At(EU, usd("alice", Kind::Purchase, "100")),
            At(US, usd("alice", Kind::Purchase, "60")),
            At(EU, usd("alice", Kind::Deposit, "30")),
            At(EU, usd("alice", Kind::Purchase, "1")),
        ],
    );
    assert_eq!(feed(&c), vec![f("fee:us:1", "5.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-36.00");
}

#[test]
fn reverse_cancels_the_overdrawing_purchase() {
    let c = overdraw("[default]\naction = \"reverse\"\n", "100", "60", "70");
    assert_eq!(feed(&c), vec![f("rev:us:1", "70.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "40.00");
    let r = &c.nodes[US].replica;
    let us1 = EventId::parse("us:1").unwrap();
    let (status, comp) = r.status(us1).unwrap();
    assert_eq!(status, Status::Reversed);
    assert_eq!(comp.unwrap().id(), "rev:us:1");
    assert_eq!(comp.unwrap().delta.to_string(), "70.00");
    assert_eq!(
        r.status(EventId::parse("eu:2").unwrap()).unwrap().0,
        Status::Settled
    );
}

#[test]
fn reverse_falls_back_to_a_fee_for_a_withdrawal() {
    let c = run(
        "[default]\naction = \"reverse\"\nfee = { flat = \"3\" }\n",
        vec![
            At(EU, usd("alice", Kind::Deposit, "100")),
            Partition,
            At(EU, usd("alice", Kind::Purchase, "60")),
            At(US, usd("alice", Kind::Withdrawal, "70")),
        ],
    );
    assert_eq!(feed(&c), vec![f("fee:us:1", "3.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-33.00");
    // The debt is reported.
    let debts = c.nodes[EU].replica.debts();
    assert_eq!(debts.len(), 1);
    assert_eq!(debts[0].2.to_string(), "-33.00");
}

#[test]
fn overdraft_line_local_acceptance_and_settlement() {
    let p = "[default]\naction = \"reverse\"\noverdraft_line = \"50\"\n";
    // Locally a region may go down to -50.00, not a cent further.
    let mut c = Cluster::new(&["eu", "us"], Policy::from_toml(p).unwrap());
    c.submit(EU, usd("alice", Kind::Deposit, "100")).unwrap();
    c.submit(EU, usd("alice", Kind::Purchase, "150")).unwrap();
    match c.submit(EU, usd("alice", Kind::Purchase, "0.01")) {
        Err(SubmitError::InsufficientFunds {
            available,
            requested,
            ..
        }) => {
            assert_eq!(available, "0.00");
            assert_eq!(requested, "0.01");
        }
        other => panic!("{other:?}"),
    }
    // Within the line nothing happens; beyond it, the action applies: 100 - 120 = -20
    // (inside the line), then us spends 50 -> -70 < -50: reversed.
    let c = overdraw(p, "100", "120", "50");
    assert_eq!(feed(&c), vec![f("rev:us:1", "50.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-20.00");
    // With fees beyond the line (said explicitly): overdrawn = floor - balance
    // = -50 - (-70) = 20; 10 % -> 2.00.
    let c = overdraw(
        "[default]\noverdraft_line = \"50\"\nbeyond_line = \"fee\"\nfee = { percent = \"10\" }\n",
        "100",
        "120",
        "50",
    );
    assert_eq!(feed(&c), vec![f("fee:us:1", "2.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "-72.00");
    // Saying nothing of what happens beyond the line means SPEC §6's default: reverse.
    let c = overdraw(
        "[default]\noverdraft_line = \"50\"\nfee = { percent = \"10\" }\n",
        "100",
        "120",
        "50",
    );
    assert_eq!(feed(&c), vec![f("rev:us:1", "50.00")]);
    // A line with `action = "fee"` and no `beyond_line` is ambiguous: refused, by name.
    let err = Policy::from_toml("[default]\naction = \"fee\"\noverdraft_line = \"50\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("default.beyond_line"), "{err}");
    // A tier rule that sets a line inherits the default's explicit `beyond_line`.
    let p = Policy::from_toml(
        "[default]\naction = \"fee\"\nbeyond_line = \"fee\"\n[tiers]\ngold = [\"vip-\"]\n[[rule]]\ntier = \"gold\"\noverdraft_line = \"10\"\n",
    )
    .unwrap();
    assert_eq!(p.applied("vip-1", Currency::USD).action, Action::Fee);
}

#[test]
fn rules_per_currency_and_per_tier() {
    let p = r#"
[default]
fee = { flat = "5" }
[tiers]
gold = ["vip-"]
[[rule]]
currency = "JPY"
fee = { flat = "500", percent = "1" }
[[rule]]
tier = "gold"
action = "reverse"
"#;
    let c = run(
        p,
        vec![
            At(EU, usd("bob", Kind::Deposit, "100")),
            At(EU, req("bob", Kind::Deposit, "10000", Currency::JPY)),
            At(EU, usd("vip-1", Kind::Deposit, "100")),
            Partition,
            At(EU, usd("bob", Kind::Purchase, "100")),
            At(US, usd("bob", Kind::Purchase, "10")),
            At(EU, req("bob", Kind::Purchase, "10000", Currency::JPY)),
            At(US, req("bob", Kind::Purchase, "2050", Currency::JPY)),
            At(EU, usd("vip-1", Kind::Purchase, "100")),
            At(US, usd("vip-1", Kind::Purchase, "10")),
        ],
    );
    // USD default: 5.00. JPY rule: 500 + 1 % of 2050 = 520.5 -> 521 (JPY has no minor
    // units). Gold tier: reversal.
    assert_eq!(
        feed(&c),
        vec![
            f("fee:us:1", "5.00"),
            f("fee:us:2", "521"),
            f("rev:us:3", "10.00"),
        ]
    );
    assert_eq!(settled(&c, "bob", Currency::USD), "-15.00");
    assert_eq!(settled(&c, "bob", Currency::JPY), "-2571");
    assert_eq!(settled(&c, "vip-1", Currency::USD), "0.00");
}

#[test]
fn policy_change_applies_from_its_place_in_the_total_order() {
    let c = run(
        "[default]\nfee = { flat = \"5\" }\n",
        vec![
            At(EU, usd("alice", Kind::Deposit, "100")),
            At(EU, usd("bob", Kind::Deposit, "100")),
            Partition,
            At(EU, usd("alice", Kind::Purchase, "100")),
            At(US, usd("alice", Kind::Purchase, "10")),
            PolicyAt(EU, "[default]\nfee = { flat = \"7\" }\n"),
            At(EU, usd("bob", Kind::Purchase, "100")),
            At(US, usd("bob", Kind::Purchase, "10")),
        ],
    );
    let got = feed(&c);
    assert_eq!(
        got,
        vec![
            ("fee:us:1".to_string(), "5.00".to_string(), 1),
            ("fee:us:2".to_string(), "7.00".to_string(), 2),
        ]
    );
    let (version, policy) = c.nodes[US].replica.current_policy();
    assert_eq!(version, 2);
    assert_eq!(policy.applied("x", Currency::USD).fee.flat, dec("7.00"));
}

#[test]
fn duplicate_is_reversed_before_the_floor_check_and_does_not_count_against_it() {
    // The same keyed purchase of 60 accepted in both regions. The later one in the total
    // order is a duplicate: reversed, and the balance it would have overdrawn is not
    // charged (no fee although 100 - 60 - 60 < 0).
    let p = "[default]\nfee = { flat = \"5\" }\n";
    let buy = keyed(usd("alice", Kind::Purchase, "60"), "order-1");
    let c = run(
        p,
        vec![
            At(EU, usd("alice", Kind::Deposit, "100")),
            Partition,
            At(EU, buy.clone()),
            At(US, buy.clone()),
            At(EU, usd("alice", Kind::Purchase, "40")),
        ],
    );
    assert_eq!(feed(&c), vec![f("rev:us:1", "60.00")]);
    assert_eq!(settled(&c, "alice", Currency::USD), "0.00");
    // A retry at either region now returns the surviving event.
    let mut c = c;
    for i in [EU, US] {
        let out = c.submit(i, buy.clone()).unwrap();
        assert_eq!(out, Submitted::Existing(EventId::parse("eu:2").unwrap()));
    }
}

#[test]
fn same_key_different_body_in_two_regions_is_a_conflict_not_a_reversal() {
    let c = run(
        "[default]\nfee = { flat = \"5\" }\n",
        vec![
            At(EU, usd("alice", Kind::Deposit, "100")),
            Partition,
            At(EU, keyed(usd("alice", Kind::Purchase, "10"), "k")),
            At(US, keyed(usd("alice", Kind::Purchase, "20"), "k")),
        ],
    );
    let feed = c.nodes[EU].replica.feed(0, 10);
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0].id(), "conflict:us:1");
    assert_eq!(feed[0].kind, CompKind::IdempotencyConflict);
    assert_eq!(feed[0].related, Some(EventId::parse("eu:2").unwrap()));
    assert_eq!(feed[0].amount_str(), "0.00");
    // Both stand.
    assert_eq!(settled(&c, "alice", Currency::USD), "70.00");
    // A retry at either region returns that region's own original; a third body is refused.
    let mut c = c;
    let out = c.submit(US, keyed(usd("alice", Kind::Purchase, "20"), "k"));
    assert_eq!(
        out,
        Ok(Submitted::Existing(EventId::parse("us:1").unwrap()))
    );
    let out = c.submit(EU, keyed(usd("alice", Kind::Purchase, "10"), "k"));
    assert_eq!(
        out,
        Ok(Submitted::Existing(EventId::parse("eu:2").unwrap()))
    );
    let out = c.submit(US, keyed(usd("alice", Kind::Purchase, "30"), "k"));
    assert_eq!(
        out,
        Err(SubmitError::IdempotencyConflict {
            existing: EventId::parse("eu:2").unwrap()
        })
    );
    for id in ["eu:2", "us:1"] {
        let (s, _) = c.nodes[EU]
            .replica
            .status(EventId::parse(id).unwrap())
            .unwrap();
        assert_eq!(s, Status::Settled);
    }
}

#[test]
fn recorded_policy_mismatch_reports_and_settles_nothing() {
    let p = Policy::from_toml("[default]\nfee = { flat = \"5\" }\n").unwrap();
    let other = Policy::from_toml("[default]\nfee = { flat = \"6\" }\n").unwrap();
    let names = vec![region("eu")];
    let mut cfg = Config::new(region("eu"), names, p.clone());
    cfg.recorded_policy = Some(other.hash());
    let mut r = Replica::new(cfg, Hlc::ZERO);
    let mut reports = Vec::new();
    let pump = |r: &mut Replica, reports: &mut Vec<Report>| {
        while let Some(o) = r.poll_output() {
            match o {
                Output::Persist { index, .. } => r.handle_persisted(index),
                Output::Report(x) => reports.push(x),
                _ => {}
            }
        }
    };
    pump(&mut r, &mut reports);
    assert_eq!(
        reports,
        vec![Report::PolicyMismatch {
            region: region("eu"),
            theirs: other.hash(),
            ours: p.hash(),
        }]
    );
    r.submit(1_000, usd("alice", Kind::Deposit, "10")).unwrap();
    for t in [1_000, 2_000, 3_000, 4_000] {
        r.handle_timeout(t);
        pump(&mut r, &mut reports);
    }
    assert!(r.settlement_blocked());
    assert_eq!(r.watermark(), Hlc::ZERO);
    assert_eq!(
        r.balance(&acct("alice"), Currency::USD).settled.to_string(),
        "0"
    );
    // Even a watermark restored from before the edit settles nothing.
    r.restore_watermark(Hlc::from_millis(10_000));
    assert_eq!(r.stats().settled, 0);
}

#[test]
fn peer_with_a_different_seed_policy_blocks_settlement() {
    let mut c = Cluster::new(&["eu", "us"], Policy::zero());
    // us runs another policy file.
    let mut cfg = c.config(region("us"));
    cfg.policy = Policy::from_toml("[default]\nfee = { flat = \"1\" }\n").unwrap();
    c.nodes[US].replica = Replica::new(cfg, Hlc::ZERO);
    c.submit(EU, usd("alice", Kind::Deposit, "10")).unwrap();
    assert!(!c.settle_all());
    for n in &c.nodes {
        assert_eq!(n.replica.watermark(), Hlc::ZERO);
        assert_eq!(n.replica.stats().settled, 0);
        assert!(n
            .reports
            .iter()
            .any(|r| matches!(r, Report::PolicyMismatch { .. })));
        assert_eq!(n.replica.event_count(), 1);
    }
    let eu = &c.nodes[EU].replica;
    let us = eu.members().into_iter().find(|m| m.region == region("us"));
    assert_eq!(us.unwrap().policy_matches, Some(false));
}

/// Persists every output at once; returns the events and the last watermark written.
fn pump_disk(r: &mut Replica, disk: &mut Vec<Event>, wm: &mut Hlc) {
    while let Some(o) = r.poll_output() {
        if let Output::Persist { index, record } = o {
            match record {
                Record::Event(e) => disk.push(e),
                Record::Watermark(w) => *wm = w,
                Record::Ceiling(_) | Record::Evidence(_) | Record::Snapshot(_) => {}
            }
            r.handle_persisted(index);
        }
    }
}

#[test]
fn restart_with_edited_file_keeps_settled_history_with_the_recorded_policy() {
    let recorded = Policy::from_toml("[default]\nfee = { flat = \"5\" }\n").unwrap();
    let edited = Policy::from_toml("[default]\nfee = { flat = \"6\" }\n").unwrap();
    let names = vec![region("eu")];
    let mut r = Replica::new(
        Config::new(region("eu"), names.clone(), recorded.clone()),
        Hlc::ZERO,
    );
    let (mut disk, mut wm) = (Vec::new(), Hlc::ZERO);
    r.submit(1_000, usd("alice", Kind::Deposit, "10")).unwrap();
    r.submit(1_001, usd("alice", Kind::Withdrawal, "4"))
        .unwrap();
    pump_disk(&mut r, &mut disk, &mut wm);
    for t in [2_000, 3_000, 4_000] {
        r.handle_timeout(t);
        pump_disk(&mut r, &mut disk, &mut wm);
    }
    let before = r.balance(&acct("alice"), Currency::USD);
    assert_eq!(before.settled.to_string(), "6.00");
    assert!(wm > Hlc::ZERO);
    let settled_before = r.stats().settled;
    assert_eq!(settled_before, 2);

    // Restart with the edited file: without the recorded policy nothing is settled...
    let mut cfg = Config::new(region("eu"), names.clone(), edited.clone());
    cfg.recorded_policy = Some(recorded.hash());
    let mut plain = Replica::new(cfg, Hlc::from_millis(10_000));
    plain.load(disk.clone());
    plain.restore_watermark(wm);
    assert_eq!(plain.stats().settled, 0);

    // ...with it, the settled prefix comes back exactly, and nothing new settles.
    let mut cfg = Config::new(region("eu"), names, edited);
    cfg.recorded_policy = Some(recorded.hash());
    let mut r2 = Replica::new(cfg, Hlc::from_millis(10_000));
    assert!(
        !r2.adopt_recorded_policy(Policy::zero()),
        "only the recorded policy is adopted"
    );
    assert!(r2.adopt_recorded_policy(recorded));
    r2.load(disk);
    r2.restore_watermark(wm);
    assert_eq!(r2.stats().settled, settled_before);
    assert_eq!(r2.balance(&acct("alice"), Currency::USD), before);
    assert_eq!(r2.watermark(), wm);
    assert!(r2.settlement_blocked());
    r2.submit(20_000, usd("alice", Kind::Deposit, "1")).unwrap();
    let (mut d2, mut w2) = (Vec::new(), Hlc::ZERO);
    for t in [20_000, 21_000, 22_000] {
        r2.handle_timeout(t);
        pump_disk(&mut r2, &mut d2, &mut w2);
    }
    assert_eq!(
        r2.watermark(),
        wm,
        "nothing new settles against an edited file"
    );
    assert_eq!(r2.stats().settled, settled_before);
}

#[test]
fn policy_history_records_version_hash_event_and_hlc_identically_everywhere() {
    let seed = "[default]\nfee = { flat = \"5\" }\n";
    let change = "[default]\nfee = { flat = \"7\" }\n";
    let c = run(
        seed,
        vec![
            At(EU, usd("alice", Kind::Deposit, "100")),
            PolicyAt(US, change),
            At(EU, usd("alice", Kind::Purchase, "10")),
        ],
    );
    let view = |i: usize| -> Vec<_> {
        c.nodes[i]
            .replica
            .policy_history()
            .into_iter()
            .map(|p| (p.version, p.hash, p.event, p.hlc, p.policy.clone()))
            .collect()
    };
    let h = view(EU);
    assert_eq!(h, view(US));
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].0, 1);
    assert_eq!(h[0].1, Policy::from_toml(seed).unwrap().hash());
    assert_eq!((h[0].2, h[0].3), (None, None));
    assert_eq!(h[1].0, 2);
    assert_eq!(h[1].1, Policy::from_toml(change).unwrap().hash());
    let id = h[1].2.expect("the policy event");
    assert_eq!(id.origin.to_string(), "us");
    let ev = c.nodes[EU].replica.event(id).expect("held");
    assert_eq!(h[1].3, Some(ev.hlc));
}

/// `Applied::first_overdraft` (what `walletd policy check` shows) states the fold's rule for
/// one debit: run the fold on the same shapes and compare.
#[test]
fn first_overdraft_agrees_with_the_fold() {
    let policies = [
        "[default]\nfee = { flat = \"5\" }\n",
        "[default]\nfee = { flat = \"1\", percent = \"10\", minimum = \"3\", cap = \"20\" }\n",
        "[default]\nfee = { flat = \"2\", grace = \"15\" }\n",
        "[default]\naction = \"reverse\"\n",
        "[default]\naction = \"reverse\"\nreversible = [\"withdrawal\"]\nfee = { percent = \"2.5\" }\n",
        "[default]\n",
    ];
    for p in policies {
        let applied = Policy::from_toml(p)
            .unwrap()
            .applied("alice", Currency::USD);
        for (a, b) in [
            ("60", "40.01"),
            ("60", "50"),
            ("60", "55"),
            ("60", "100"),
            ("100", "0.01"),
            ("100", "33.33"),
            ("100", "99.99"),
        ] {
            let c = overdraw(p, "100", a, b);
            let left = dec("100") - dec(a);
            let overdrawn = (dec(b) - left).min(dec(b));
            let want = match applied.first_overdraft(Kind::Purchase, overdrawn) {
                Some(Overdraft::Reversal) => vec![f("rev:us:1", b)],
                Some(Overdraft::Fee(x)) => vec![f("fee:us:1", &x.to_string())],
                Some(Overdraft::Nothing) => vec![],
                None => panic!("overflow"),
            };
            let got: Vec<_> = feed(&c)
                .into_iter()
                .map(|(id, amount, v)| (id, dec(&amount).normalize().to_string(), v))
                .collect();
            let want: Vec<_> = want
                .into_iter()
                .map(|(id, amount, v)| (id, dec(&amount).normalize().to_string(), v))
                .collect();
            assert_eq!(got, want, "policy {p:?}, second purchase {b}");
        }
    }
}
