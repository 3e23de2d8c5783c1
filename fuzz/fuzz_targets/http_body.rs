//! The HTTP transaction body parser (fast borrowed path and the precise slow path): any bytes
//! give a body or a 400, and both paths agree on every body the fast one accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wallet::http::fuzz_tx_body(data);
});
