//! Consistency modes (SPEC §8, docs/modes.md): the policy fields, home mode (forwarding,
//! time-outs, moves and fencing), and the laws of SPEC §9.4 against the reference model
//! (`wallet_core::testing::model_modes`).

mod common;

use common::*;
use proptest::prelude::*;
use wallet_core::*;

const HOME_EU: &str = "[default]\nmode = \"home\"\nhome = \"eu\"\n";

fn region(n: &str) -> RegionId {
    RegionId::new(n).unwrap()
}

fn usd(account: &str, kind: Kind, amount: &str) -> TxRequest {
    req(account, kind, amount, Currency::USD)
}

/// Everything in flight delivered, every record durable, until nothing moves.
fn settle(c: &mut Cluster) {
    for _ in 0..20 {
        c.persist_all();
        c.deliver_all();
    }
}

#[test]
fn a_policy_without_modes_keeps_its_bytes_and_hash() {
    let p = Policy::from_toml("[default]\naction = \"reverse\"\nfee = { flat = \"5\" }\n").unwrap();
    let mut q = p.clone();
    // The same policy, built with modes and then set back to optimistic, encodes the same.
    q.rules[0].mode = Mode::Home { home: region("eu") };
    assert_ne!(p.hash(), q.hash(), "the mode is part of the hash");
    q.rules[0].mode = Mode::Optimistic;
    assert_eq!(p.hash(), q.hash());
    assert_eq!(
        wire::encode_value(&p),
        wire::encode_value(&Policy::from_toml(&p.to_toml()).unwrap())
    );
}

#[test]
fn modes_round_trip_through_the_wire_and_the_file() {
    let text = r#"
[default]
mode = "escrow"
fallback = "optimistic"
risk_limit = "50"
rights_timeout_ms = 250
[tiers]
payouts = ["pay-"]
[[rule]]
tier = "payouts"
mode = "home"
home = "us"
[[rule]]
currency = "JPY"
mode = "escrow"
fallback = "refuse"
"#;
    let p = Policy::from_toml(text).unwrap();
    assert_eq!(
        p.rules[0].mode,
        Mode::Escrow {
            fallback: Fallback::Optimistic,
            risk_limit: rust_decimal::Decimal::from(50),
            rights_timeout_ms: 250
        }
    );
    assert_eq!(p.rules[1].mode, Mode::Home { home: region("us") });
    // A refuse rule does not inherit the default's risk limit; it keeps its time-out.
    assert_eq!(
        p.rules[2].mode,
        Mode::Escrow {
            fallback: Fallback::Refuse,
            risk_limit: rust_decimal::Decimal::ZERO,
            rights_timeout_ms: 250
        }
    );
    let bytes = wire::encode_value(&p);
    let back: Policy = wire::decode_value(&bytes).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.hash(), p.hash());
    assert_eq!(Policy::from_toml(&p.to_toml()).unwrap(), p);
    // A policy event carrying modes travels as any other.
    let e = Event {
        id: EventId::parse("eu:1").unwrap(),
        hlc: Hlc::from_millis(5),
        body: Body::Policy(Box::new(p.clone())),
        sig: Box::new([]),
    };
    assert_eq!(wire::decode_event(&wire::encode_event(&e)).unwrap(), e);
}

#[test]
fn mode_fields_are_checked_and_named() {
    for (text, field) in [
        ("[default]\nmode = \"home\"\n", "default.home"),
        ("[default]\nmode = \"fast\"\n", "default.mode"),
        ("[default]\nhome = \"eu\"\n", "default.home"),
        ("[default]\nmode = \"home\"\nhome = \"EU!\"\n", "default.home"),
        ("[default]\nfallback = \"refuse\"\n", "default.fallback"),
        (
            "[default]\nmode = \"escrow\"\nrisk_limit = \"5\"\n",
            "default.risk_limit",
        ),
        (
            "[default]\nmode = \"escrow\"\nfallback = \"maybe\"\n",
            "default.fallback",
        ),
        (
            "[default]\nmode = \"escrow\"\nrights_timeout_ms = 0\n",
            "default.rights_timeout_ms",
        ),
        (
            "[default]\n[[rule]]\ncurrency = \"JPY\"\nmode = \"escrow\"\nfallback = \"optimistic\"\nrisk_limit = \"0.5\"\n",
            "rule[0].risk_limit",
        ),
    ] {
        match Policy::from_toml(text) {
            Err(PolicyError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
            other => panic!("{text}: expected an error on {field}, got {other:?}"),
        }
    }
}

#[test]
fn a_debit_elsewhere_is_forwarded_and_answered_by_the_home() {
    let mut c = Cluster::new(&["eu", "us"], Policy::from_toml(HOME_EU).unwrap());
    // Credits are taken anywhere.
    assert!(matches!(
        c.submit(1, usd("alice", Kind::Deposit, "100")),
        Ok(Submitted::New(_))
    ));
    settle(&mut c);
    let s = c.submit(1, usd("alice", Kind::Purchase, "60")).unwrap();
    let Submitted::Pending { request } = s else {
        panic!("a debit at a non-home region waits for the home: {s:?}");
    };
    // us decided nothing itself.
    assert_eq!(
        c.nodes[1]
            .replica
            .balance(&acct("alice"), Currency::USD)
            .provisional,
        dec("100.00")
    );
    settle(&mut c);
    let (r, result) = c.nodes[1].decided.pop().expect("decided");
    assert_eq!(r, request);
    let id = match result {
        Ok(Submitted::New(id)) => id,
        other => panic!("accepted by the home: {other:?}"),
    };
    assert_eq!(id.origin, region("eu"), "the event is the home's");
    // A second debit beyond what is left is refused for funds by the home.
    let Ok(Submitted::Pending { .. }) = c.submit(1, usd("alice", Kind::Purchase, "60")) else {
        panic!("pending");
    };
    settle(&mut c);
    assert!(matches!(
        c.nodes[1].decided.pop(),
        Some((_, Err(SubmitError::InsufficientFunds { .. })))
    ));
    assert_eq!(c.nodes[1].replica.mode_stats().forward_answers, 2);
}

#[test]
fn an_unreachable_home_refuses_with_a_retryable_error_never_locally() {
    let mut c = Cluster::new(&["eu", "us"], Policy::from_toml(HOME_EU).unwrap());
    c.submit(1, usd("bob", Kind::Deposit, "100")).unwrap();
    settle(&mut c);
    c.partition(0b10);
    let Ok(Submitted::Pending { .. }) = c.submit(1, usd("bob", Kind::Purchase, "10")) else {
        panic!("pending");
    };
    settle(&mut c);
    assert!(
        c.nodes[1].decided.is_empty(),
        "no answer across the partition"
    );
    c.tick(replica::modes::FORWARD_TIMEOUT_MS_DEFAULT + 1);
    assert!(matches!(
        c.nodes[1].decided.pop(),
        Some((_, Err(SubmitError::HomeUnreachable { home }))) if home == region("eu")
    ));
    // The home itself still decides alone.
    assert!(matches!(
        c.submit(0, usd("bob", Kind::Purchase, "100")),
        Ok(Submitted::New(_))
    ));
    assert_eq!(
        c.nodes[1]
            .replica
            .balance(&acct("bob"), Currency::USD)
            .provisional,
        dec("100.00")
    );
}

#[test]
fn a_home_move_fences_the_old_home_and_the_new_one_waits_for_the_move() {
    let mut c = Cluster::new(&["eu", "us", "ap"], Policy::from_toml(HOME_EU).unwrap());
    c.submit(0, usd("carol", Kind::Deposit, "100")).unwrap();
    settle(&mut c);
    // Only the home may move it.
    assert!(matches!(
        c.nodes[1].replica.move_home(c.now, acct("carol"), Currency::USD, region("ap")),
        Err(SubmitError::NotHome { home }) if home == region("eu")
    ));
    let now = c.local_now(0);
    c.nodes[0]
        .replica
        .move_home(now, acct("carol"), Currency::USD, region("us"))
        .unwrap();
    c.drain(0);
    // From the move on, eu forwards.
    assert!(matches!(
        c.submit(0, usd("carol", Kind::Purchase, "10")),
        Ok(Submitted::Pending { .. })
    ));
    // us does not hold the move yet (nothing delivered): it forwards to eu, which refuses
    // to decide (not the home any more): a retryable refusal, never a second decider.
    c.inflight.clear();
    assert!(matches!(
        c.submit(1, usd("carol", Kind::Purchase, "10")),
        Ok(Submitted::Pending { .. })
    ));
    c.persist_all();
    c.deliver_all();
    assert!(matches!(
        c.nodes[1].decided.pop(),
        Some((_, Err(SubmitError::HomeUnreachable { .. })))
    ));
    // Once us holds the move, it decides.
    c.anti_entropy(0, 1);
    assert_eq!(
        c.nodes[1].replica.home(&acct("carol"), Currency::USD),
        Some((region("us"), 1))
    );
    assert!(matches!(
        c.submit(1, usd("carol", Kind::Purchase, "10")),
        Ok(Submitted::New(_))
    ));
    settle(&mut c);
    assert!(c.settle_all());
    let events = all_events(&c.nodes[0].replica, &c.names);
    let m = testing::model_modes(&Policy::from_toml(HOME_EU).unwrap(), events.iter());
    assert!(m.violations.is_empty(), "{:?}", m.violations);
    assert!(m.home_debits >= 1);
}

#[test]
fn the_model_catches_a_debit_decided_by_a_region_that_is_not_the_home() {
    // Two regions take debits of a home-mode account during a partition, as an optimistic
    // region would: the model must name the one decided by a non-home region.
    let policy = Policy::from_toml(HOME_EU).unwrap();
    let mut c = Cluster::new(&["eu", "us"], Policy::zero());
    c.submit(0, usd("dave", Kind::Deposit, "100")).unwrap();
    settle(&mut c);
    c.partition(0b10);
    c.submit(0, usd("dave", Kind::Purchase, "80")).unwrap();
    c.submit(1, usd("dave", Kind::Purchase, "80")).unwrap();
    c.heal();
    settle(&mut c);
    let events = all_events(&c.nodes[0].replica, &c.names);
    let m = testing::model_modes(&policy, events.iter());
    assert!(
        m.violations.iter().any(|v| v.contains("us:")),
        "{:?}",
        m.violations
    );
}

fn all_events(r: &Replica, names: &[RegionId]) -> Vec<Event> {
    names
        .iter()
        .flat_map(|o| r.origin_events(*o, 0).to_vec())
        .collect()
}

fn acct(a: &str) -> AccountId {
    AccountId::new(a).unwrap()
}

fn dec(s: &str) -> rust_decimal::Decimal {
    rust_decimal::Decimal::from_str_exact(s).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("CORE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
    ))]

    /// SPEC §9.4 for home mode, under any interleaving of client debits and credits at any
    /// region, partitions, home moves and time-outs: no client debit overdraws the settled
    /// balance, and every debit was decided by the home of its time.
    #[test]
    fn home_mode_never_overdraws_and_has_one_decider(
        ops in proptest::collection::vec((0u8..6, 0u8..3, 1u32..120, 0u8..3), 1..60)
    ) {
        let policy = Policy::from_toml(HOME_EU).unwrap();
        let mut c = Cluster::new(&["eu", "us", "ap"], policy.clone());
        for (op, region, amount, account) in ops {
            let i = region as usize;
            let a = ["x", "y", "z"][account as usize];
            let text = amount.to_string();
            match op {
                0 => { let _ = c.submit(i, usd(a, Kind::Deposit, &text)); }
                1 | 2 => { let _ = c.submit(i, usd(a, Kind::Purchase, &text)); }
                3 => {
                    let now = c.local_now(i);
                    let to = c.names[(i + 1) % 3];
                    if c.nodes[i].replica.move_home(now, acct(a), Currency::USD, to).is_ok() {
                        c.drain(i);
                    }
                }
                4 => c.partition(amount as u8 & 0b111),
                _ => {
                    c.persist_all();
                    for _ in 0..(amount % 7) { c.deliver(amount as usize); }
                    c.tick(amount as u64 * 20);
                }
            }
        }
        c.heal();
        settle(&mut c);
        prop_assert!(c.settle_all());
        let events = all_events(&c.nodes[0].replica, &c.names);
        let m = testing::model_modes(&policy, events.iter());
        prop_assert!(m.violations.is_empty(), "{:?}", m.violations);
        let fold = testing::model(&policy, events.iter());
        prop_assert!(fold.feed.iter().all(|x| x.kind != CompKind::OverdraftFee));
    }
}

const ESCROW: &str = "[default]\nmode = \"escrow\"\nfallback = \"refuse\"\n";
const HYBRID: &str =
    "[default]\nmode = \"escrow\"\nfallback = \"optimistic\"\nrisk_limit = \"30\"\n";

#[test]
fn escrow_spends_local_rights_asks_for_more_and_refuses_after_the_time_out() {
    let mut c = Cluster::new(&["eu", "us"], Policy::from_toml(ESCROW).unwrap());
    // A credit without a key gives its region rights at once.
    c.submit(0, usd("erin", Kind::Deposit, "100")).unwrap();
    settle(&mut c);
    assert_eq!(
        c.nodes[0].replica.rights(&acct("erin"), Currency::USD),
        dec("100.00")
    );
    assert_eq!(
        c.nodes[1].replica.rights(&acct("erin"), Currency::USD),
        dec("0")
    );
    // eu spends within its rights with no coordination.
    assert!(matches!(
        c.submit(0, usd("erin", Kind::Purchase, "30")),
        Ok(Submitted::New(_))
    ));
    // us has none: it asks, eu gives, us decides.
    let Ok(Submitted::Pending { request }) = c.submit(1, usd("erin", Kind::Purchase, "50")) else {
        panic!("us waits for rights");
    };
    settle(&mut c);
    c.tick(1);
    let (r, result) = c.nodes[1].decided.pop().expect("decided");
    assert_eq!(r, request);
    assert!(
        matches!(result, Ok(Submitted::New(id)) if id.origin == region("us")),
        "{result:?}"
    );
    assert_eq!(c.nodes[1].replica.mode_stats().rights_requests, 1);
    // Only eu's first debit was within its rights (us's came in after asking).
    assert_eq!(c.nodes[0].replica.mode_stats().escrow_local, 1);
    assert_eq!(c.nodes[1].replica.mode_stats().escrow_local, 0);
    // Across a partition nobody answers: refused for rights once the time-out passes.
    c.partition(0b10);
    let Ok(Submitted::Pending { .. }) = c.submit(1, usd("erin", Kind::Purchase, "15")) else {
        panic!("waits");
    };
    c.tick(u64::from(policy::RIGHTS_TIMEOUT_MS_DEFAULT) + 1);
    assert!(matches!(
        c.nodes[1].decided.pop(),
        Some((_, Err(SubmitError::InsufficientRights { .. })))
    ));
    for n in &c.nodes {
        n.replica.check_invariants().unwrap();
    }
}

/// Two copies of one keyed debit wait for rights at us; once rights arrive the first is
/// accepted (a new event) and the second finds it (`Existing`): that answer too waits until
/// the event is durable (found by the simulator, seed 166: the copy was acknowledged at once,
/// the event was lost in a crash before its fsync and its seq reissued).
#[test]
fn a_waiting_copy_of_a_keyed_debit_is_answered_once_the_event_is_durable() {
    let mut c = Cluster::new(&["eu", "us"], Policy::from_toml(ESCROW).unwrap());
    c.submit(0, usd("erin", Kind::Deposit, "100")).unwrap();
    settle(&mut c);
    let debit = keyed(usd("erin", Kind::Purchase, "50"), "k1");
    for _ in 0..2 {
        let Ok(Submitted::Pending { .. }) = c.submit(1, debit.clone()) else {
            panic!("us waits for rights");
        };
    }
    settle(&mut c);
    c.tick(1);
    let n = &c.nodes[1];
    let id = match &n.decided[..] {
        [(_, Ok(Submitted::New(a))), (_, Ok(Submitted::Existing(b)))] if a == b => *a,
        other => panic!("{other:?}"),
    };
    assert!(n.replica.event(id).is_some(), "the event is held");
    // Neither answer may go out before the event's record is durable.
    assert!(
        n.decided_after.iter().all(Option::is_some),
        "{:?}",
        n.decided_after
    );
}

#[test]
fn a_credit_that_may_still_be_reversed_grants_rights_only_once_settled() {
    let mut c = Cluster::new(&["eu", "us"], Policy::from_toml(ESCROW).unwrap());
    let mut dep = usd("fay", Kind::Deposit, "100");
    dep.idempotency_key = Some("d1".into());
    c.submit(0, dep).unwrap();
    c.persist_all();
    assert_eq!(
        c.nodes[0].replica.rights(&acct("fay"), Currency::USD),
        dec("0")
    );
    assert!(c.settle_all());
    assert_eq!(
        c.nodes[0].replica.rights(&acct("fay"), Currency::USD),
        dec("100.00")
    );
    c.nodes[0].replica.check_invariants().unwrap();
}

#[test]
fn the_hybrid_accepts_within_its_share_of_the_risk_limit() {
    let mut c = Cluster::new(&["eu", "us"], Policy::from_toml(HYBRID).unwrap());
    c.partition(0b10);
    // Share: 30 / 2 members = 15 below zero per region.
    let Ok(Submitted::Pending { .. }) = c.submit(1, usd("gus", Kind::Purchase, "10")) else {
        panic!("waits");
    };
    let Ok(Submitted::Pending { .. }) = c.submit(1, usd("gus", Kind::Purchase, "10")) else {
        panic!("waits");
    };
    c.tick(u64::from(policy::RIGHTS_TIMEOUT_MS_DEFAULT) + 1);
    c.persist_all();
    let results: Vec<bool> = c.nodes[1].decided.iter().map(|(_, r)| r.is_ok()).collect();
    assert_eq!(
        results,
        vec![true, false],
        "the first fits the share, the second not"
    );
    assert_eq!(c.nodes[1].replica.mode_stats().fallback_accepted, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("CORE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
    ))]

    /// SPEC §9.4 for escrow (refuse and the hybrid) under any interleaving: no overdraft
    /// (refuse) or none beyond the risk limit (hybrid), rights never negative (refuse), the
    /// rights of all regions sum to the balance and match the reference model everywhere.
    #[test]
    fn escrow_laws_hold_under_partitions_and_reordering(
        hybrid in any::<bool>(),
        ops in proptest::collection::vec((0u8..7, 0u8..3, 1u32..120, 0u8..2, any::<bool>()), 1..70)
    ) {
        let policy = Policy::from_toml(if hybrid { HYBRID } else { ESCROW }).unwrap();
        let mut c = Cluster::new(&["eu", "us", "ap"], policy.clone());
        for (n, (op, region, amount, account, keyed)) in ops.into_iter().enumerate() {
            let i = region as usize;
            let a = ["x", "y"][account as usize];
            let text = amount.to_string();
            match op {
                0 | 1 => {
                    let mut r = usd(a, Kind::Deposit, &text);
                    if keyed { r.idempotency_key = Some(format!("k{}", n % 5)); }
                    let _ = c.submit(i, r);
                }
                2 | 3 => { let _ = c.submit(i, usd(a, Kind::Purchase, &text)); }
                4 => c.partition(amount as u8 & 0b111),
                5 => c.tick(amount as u64 * 5),
                _ => {
                    c.persist_all();
                    for _ in 0..(amount % 9) { c.deliver(amount as usize); }
                }
            }
            for node in &c.nodes {
                prop_assert!(node.replica.check_invariants().is_ok(), "{:?}", node.replica.check_invariants());
            }
        }
        c.heal();
        c.tick(2_000);
        settle(&mut c);
        prop_assert!(c.settle_all());
        let events = all_events(&c.nodes[0].replica, &c.names);
        let m = testing::model_modes(&policy, events.iter());
        prop_assert!(m.violations.is_empty(), "{:?}", m.violations);
        for node in &c.nodes {
            for ((a, cur), want) in &m.rights {
                let (have, unspendable) = node.replica.all_rights(a, *cur);
                prop_assert!(unspendable.is_zero());
                for (r, v) in have {
                    prop_assert_eq!(v, want.get(&r).copied().unwrap_or_default());
                }
            }
        }
    }
}
