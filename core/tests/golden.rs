//! Format stability: v1 bytes checked in under tests/golden/ must keep decoding to the same
//! values, and encoding those values must keep producing the same bytes. If this fails, the
//! wire/disk format changed: add a decoder for the old version instead of editing the files.

use wallet_core::wire::*;
use wallet_core::*;

fn golden(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.trim();
    assert!(text.len() % 2 == 0, "{path}: odd number of hex digits");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn purchase() -> Event {
    Event {
        id: EventId::parse("eu:42").unwrap(),
        hlc: Hlc(Hlc::from_millis(1_700_000_000_123).0 + 7),
        body: Body::Tx(Tx {
            account: AccountId::new("alice").unwrap(),
            kind: Kind::Purchase,
            amount: Amount::parse("100.25", Currency::USD).unwrap(),
            currency: Currency::USD,
            idempotency_key: Some("order-7".into()),
            reference: Some("coffee".into()),
        }),
        sig: vec![0xAB; 4].into(),
    }
}

#[test]
fn v1_event_bytes_keep_decoding() {
    let bytes = golden("event_v1.hex");
    assert_eq!(bytes[0], 1, "version byte");
    let e = decode_event(&bytes).unwrap();
    assert_eq!(e, purchase());
    assert_eq!(e.id.to_string(), "eu:42");
    assert_eq!(e.hlc.millis(), 1_700_000_000_123);
    assert_eq!(e.hlc.logical(), 7);
    let tx = e.tx().unwrap();
    assert_eq!(tx.amount.to_string(), "100.25");
    assert_eq!(tx.idempotency_key.as_deref(), Some("order-7"));
    assert_eq!(encode_event(&e), bytes);
}

#[test]
fn v1_message_bytes_keep_decoding() {
    let bytes = golden("message_events_v1.hex");
    let Message::Events(events) = decode_message(&bytes).unwrap() else {
        panic!("not an Events message");
    };
    assert_eq!(events.len(), 2);
    assert_eq!(events[0], purchase());
    let Body::Policy(p) = &events[1].body else {
        panic!("not a policy event");
    };
    let want =
        Policy::from_toml("[default]\naction = \"reverse\"\nfee = { flat = \"5\" }\n").unwrap();
    assert_eq!(**p, want);
    assert_eq!(events[1].id.to_string(), "us:3");
    assert_eq!(encode_message(&Message::Events(events)), bytes);

    let bytes = golden("message_heartbeat_v1.hex");
    let Message::Heartbeat(hb) = decode_message(&bytes).unwrap() else {
        panic!("not a heartbeat");
    };
    assert_eq!(hb.origin, RegionId::new("eu").unwrap());
    assert_eq!(hb.hlc, Hlc::from_millis(1_700_000_000_200));
    assert_eq!(hb.seq, 42);
    assert_eq!(hb.vv.get(&RegionId::new("us").unwrap()), 1);
    // The seed policy hash is part of the protocol too.
    assert_eq!(hb.policy, Policy::zero().hash());
    assert_eq!(encode_message(&Message::Heartbeat(hb)), bytes);
}
