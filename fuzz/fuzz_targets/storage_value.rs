//! The storage value decoder: sealed records (checksum envelope) and their payloads (events,
//! idempotency records, evidence, the recorded policy) decode or give a corruption error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wallet::storage::fuzz_decode(data);
});
