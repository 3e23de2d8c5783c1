//! The worked example of docs/reconciliation.md: two regions spend the same 100 USD during a
//! partition; after the heal both derive the same compensation.

use wallet_core::*;

struct Net {
    regions: Vec<Replica>,
    names: Vec<RegionId>,
    /// (to, from, message) in flight
    inbox: Vec<(usize, RegionId, Message)>,
    cut: bool,
}

impl Net {
    fn new(policy: &str) -> Net {
        let names: Vec<RegionId> = ["eu", "us"]
            .iter()
            .map(|n| RegionId::new(n).unwrap())
            .collect();
        let policy = Policy::from_toml(policy).unwrap();
        let regions = names
            .iter()
            .map(|me| Replica::new(Config::new(*me, names.clone(), policy.clone()), Hlc::ZERO))
            .collect();
        Net {
            regions,
            names,
            inbox: Vec::new(),
            cut: false,
        }
    }

    fn pump(&mut self, now: u64) {
        for _ in 0..50 {
            for i in 0..self.regions.len() {
                self.regions[i].handle_timeout(now);
                while let Some(o) = self.regions[i].poll_output() {
                    match o {
                        Output::Persist { index, .. } => self.regions[i].handle_persisted(index),
                        Output::Broadcast(m) => {
                            for j in 0..self.regions.len() {
                                if j != i && !self.cut {
                                    self.inbox.push((j, self.names[i], m.clone()));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            if self.inbox.is_empty() {
                break;
            }
            for (to, from, m) in std::mem::take(&mut self.inbox) {
                self.regions[to].handle_message(now, from, m);
            }
        }
    }

    fn heal(&mut self, now: u64) {
        self.cut = false;
        for i in 0..self.regions.len() {
            for j in 0..self.regions.len() {
                if i != j {
                    let vv = self.regions[j].version_vector().clone();
                    let ev = self.regions[i].missing_for(&vv, 10_000);
                    let from = self.names[i];
                    self.regions[j].handle_events(now, from, ev);
                }
            }
        }
        self.pump(now);
    }
}

fn req(kind: Kind, amt: &str) -> TxRequest {
    TxRequest {
        account: AccountId::new("alice").unwrap(),
        kind,
        amount: Amount::parse(amt, Currency::USD).unwrap(),
        currency: Currency::USD,
        idempotency_key: None,
        reference: None,
    }
}

fn run(policy: &str) -> Net {
    let mut net = Net::new(policy);
    net.pump(1_000);
    net.regions[0]
        .submit(1_000, req(Kind::Deposit, "100"))
        .unwrap();
    net.pump(1_100);
    net.cut = true;
    net.regions[0]
        .submit(2_000, req(Kind::Purchase, "100"))
        .unwrap();
    net.regions[1]
        .submit(2_000, req(Kind::Purchase, "100"))
        .unwrap();
    net.pump(3_000);
    net.heal(10_000);
    net.pump(10_500);
    net.pump(11_000);
    net
}

#[test]
fn fee_policy_charges_one_fee_everywhere() {
    let net = run("[default]\naction = \"fee\"\nfee = { flat = \"5.00\", percent = \"10\", cap = \"35.00\" }\n");
    let alice = AccountId::new("alice").unwrap();
    for r in &net.regions {
        let feed = r.feed(0, 10);
        assert_eq!(feed.len(), 1, "{:?}", feed);
        // purchases at equal HLC order by origin: eu first, so us:1 overdraws by 100.
        assert_eq!(feed[0].id(), "fee:us:1");
        assert_eq!(feed[0].amount_str(), "15.00");
        let b = r.balance(&alice, Currency::USD);
        assert_eq!(b.settled.to_string(), "-115.00");
        assert_eq!(b.provisional.to_string(), "-115.00");
    }
}

#[test]
fn reverse_policy_reverses_the_later_purchase() {
    let net = run("[default]\naction = \"reverse\"\n");
    let alice = AccountId::new("alice").unwrap();
    for r in &net.regions {
        let feed = r.feed(0, 10);
        assert_eq!(feed.len(), 1);
        assert_eq!(feed[0].id(), "rev:us:1");
        assert_eq!(feed[0].amount_str(), "100.00");
        assert_eq!(r.balance(&alice, Currency::USD).settled.to_string(), "0.00");
    }
}

#[test]
fn a_pull_does_not_fetch_again_what_is_buffered_out_of_order() {
    let eu = RegionId::new("eu").unwrap();
    let us = RegionId::new("us").unwrap();
    let mk = |me| Replica::new(Config::new(me, vec![eu, us], Policy::zero()), Hlc::ZERO);
    let (mut a, mut b) = (mk(eu), mk(us));
    let mut events = Vec::new();
    for i in 0..5u64 {
        a.submit(1_000 + i, req(Kind::Deposit, "1")).unwrap();
    }
    while let Some(o) = a.poll_output() {
        if let Output::Persist { index, record } = o {
            if let Record::Event(e) = record {
                events.push(e);
            }
            a.handle_persisted(index);
        }
    }
    assert_eq!(events.len(), 5);
    // Nothing buffered: a plain pull.
    assert!(matches!(b.pull_request(100), Message::Pull { .. }));
    // eu:2 is lost; eu:3..5 arrive and wait in the buffer.
    b.handle_events(
        2_000,
        eu,
        vec![
            events[0].clone(),
            events[2].clone(),
            events[3].clone(),
            events[4].clone(),
        ],
    );
    assert_eq!(b.version_vector().get(&eu), 1);
    let Message::PullGaps { vv, upto, limit } = b.pull_request(100) else {
        panic!("expected PullGaps");
    };
    assert_eq!(upto.get(&eu), 3);
    let answer = a.missing_for_gaps(&vv, &upto, limit as usize);
    let ids: Vec<String> = answer.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, vec!["eu:2"], "only the gap, not the buffered events");
    // A plain pull would have sent everything from the gap on.
    assert_eq!(a.missing_for(&vv, 100).len(), 4);
    // Round trip through the wire format.
    let m = Message::PullGaps { vv, upto, limit };
    assert_eq!(wire::decode_message(&wire::encode_message(&m)).unwrap(), m);
    b.handle_events(2_001, eu, answer);
    assert_eq!(b.version_vector().get(&eu), 5);
    assert!(matches!(b.pull_request(100), Message::Pull { .. }));
}
