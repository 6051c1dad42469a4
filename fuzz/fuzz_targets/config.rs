//! The configuration file's parser and checks: any text is a configuration or an error,
//! never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wasmgate::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml(text, Path::new("/fuzz/wasmgate.toml"));
    }
});
