//! Writes the seed corpus of the wire and storage fuzz targets (fuzz/seeds/): encoded events
//! (transactions, a policy event), event pushes, heartbeats, pulls and snapshot chunks.
//!
//! `cargo run -p wallet-core --example fuzz_seeds -- fuzz/seeds`

use std::path::{Path, PathBuf};

use wallet_core::event::{Body, Kind, Tx};
use wallet_core::id::{AccountId, EventId, Hlc, RegionId};
use wallet_core::money::{Amount, Currency};
use wallet_core::replica::Heartbeat;
use wallet_core::wire::{encode_event, encode_message, encode_value};
use wallet_core::{Event, Message, Policy, VClock};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    let eu = RegionId::new("eu")?;
    let us = RegionId::new("us")?;
    let tx = |origin: RegionId,
              seq: u64,
              kind: Kind,
              amount: &str,
              cur: Currency,
              key: Option<&str>|
     -> Result<Event, Box<dyn std::error::Error>> {
        Ok(Event {
            id: EventId { origin, seq },
            hlc: Hlc::from_millis(1_000 + seq),
            body: Body::Tx(Tx {
                account: AccountId::new("acct-0001")?,
                kind,
                amount: Amount::parse(amount, cur)?,
                currency: cur,
                idempotency_key: key.map(Into::into),
                reference: Some("order 7".into()),
            }),
            sig: vec![9u8; 64].into(),
        })
    };
    let policy = Policy::from_toml(
        "[default]\naction = \"fee\"\nfee = { flat = \"5.00\", percent = \"0\", minimum = \"0\", cap = \"35.00\", grace = \"0\", per = \"debit\" }\n",
    )?;
    let events = vec![
        tx(eu, 1, Kind::Deposit, "100.00", Currency::USD, Some("k1"))?,
        tx(eu, 2, Kind::Purchase, "12.34", Currency::USD, None)?,
        tx(us, 1, Kind::Withdrawal, "500", Currency::JPY, Some("key-2"))?,
        tx(us, 2, Kind::Refund, "0.01", Currency::USD, None)?,
        Event {
            id: EventId { origin: eu, seq: 3 },
            hlc: Hlc::from_millis(2_000),
            body: Body::Policy(Box::new(policy.clone())),
            sig: Box::new([]),
        },
    ];
    let mut vv = VClock::new();
    vv.dots.insert(eu, 3);
    vv.dots.insert(us, 2);
    let messages = [
        Message::Events(Vec::new()),
        Message::Events(events.clone()),
        Message::Heartbeat(Heartbeat {
            origin: eu,
            hlc: Hlc::from_millis(5_000),
            seq: 3,
            vv: vv.clone(),
            policy: policy.hash(),
        }),
        Message::Pull { vv, limit: 4096 },
        Message::SnapshotChunk(wallet_core::message::SnapshotChunk {
            transfer: [7; 32],
            at: Hlc::from_millis(4_000),
            len: 10,
            count: 2,
            index: 1,
            bytes: vec![1, 2, 3, 4, 5],
            seqs: vec![(eu, 3)],
        }),
        Message::SnapshotChunkRequest {
            transfer: [7; 32],
            index: 1,
        },
    ];
    let wire = out.join("wire");
    let storage = out.join("storage_value");
    for (i, e) in events.iter().enumerate() {
        let b = encode_event(e);
        write(&wire, &format!("event-{i}"), &b)?;
        write(
            &storage,
            &format!("event-{i}"),
            &[[0u8].as_slice(), &b].concat(),
        )?;
    }
    for (i, m) in messages.iter().enumerate() {
        write(&wire, &format!("message-{i}"), &encode_message(m))?;
    }
    write(
        &storage,
        "policy",
        &[[3u8].as_slice(), &encode_value(&policy)].concat(),
    )?;
    println!("seeds written to {}", out.display());
    Ok(())
}
