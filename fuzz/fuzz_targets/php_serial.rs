//! The PHP `serialize()` decoder GatewayWorker's packets reach, and the session conversion:
//! whatever decodes must encode to bytes that decode to the same value, and a session must
//! survive the way back to PHP and in again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::gatewayworker::php_serial::{Limits, decode, encode};
use wasmgate::gatewayworker::session;

/// Small bounds, so the fuzzer reaches each limit quickly.
const LIMITS: Limits = Limits {
    max_depth: 8,
    max_string: 4096,
    max_elements: 1024,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode(data, LIMITS) {
        let bytes = encode(&value);
        let again = decode(&bytes, Limits::DEFAULT).expect("an encoded value decodes");
        assert_eq!(encode(&again), bytes, "encoding is stable");
    }
    if let Ok(session) = session::from_php(data, LIMITS) {
        let php = session::to_php(&session);
        let back = session::from_php(&php, Limits::DEFAULT).expect("a session's PHP decodes");
        assert_eq!(back, session, "a session survives PHP");
    }
});
