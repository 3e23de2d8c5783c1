//! The wire decoder (events, messages: heartbeats, pushes, pulls, evidence, snapshots and
//! their chunks; signed snapshots alone, as stored): any bytes either decode or give an
//! error, never a panic or an unbounded allocation; whatever decodes
//! re-encodes to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wallet_core::wire::{
    decode_event, decode_message, decode_snapshot, encode_event, encode_message, encode_snapshot,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = decode_event(data) {
        let again = decode_event(&encode_event(&e)).expect("a re-encoded event decodes");
        assert_eq!(encode_event(&again), encode_event(&e));
    }
    if let Ok(m) = decode_message(data) {
        let bytes = encode_message(&m);
        let again = decode_message(&bytes).expect("a re-encoded message decodes");
        assert_eq!(encode_message(&again), bytes);
    }
    if let Ok(s) = decode_snapshot(data) {
        let bytes = encode_snapshot(&s);
        let again = decode_snapshot(&bytes).expect("a re-encoded snapshot decodes");
        assert_eq!(encode_snapshot(&again), bytes);
    }
});
