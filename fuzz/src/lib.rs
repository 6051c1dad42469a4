//! What the fuzz targets share: one runtime for the decoders that read through tokio's
//! `AsyncRead`, built once per process rather than once per input.

use std::sync::LazyLock;

/// A current-thread runtime with timers (the handshake bounds itself in time).
pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
});

/// Splits `data` into the pieces a peer's writes might arrive in: the first byte picks the
/// piece length (1..=256), so the fuzzer explores partial frames and lines.
pub fn pieces(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&n, rest)) => (usize::from(n) + 1, rest),
        None => (1, data),
    }
}
