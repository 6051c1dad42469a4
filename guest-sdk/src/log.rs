//! Levelled log lines in the host's `tracing` output, tagged with the plugin's name.
//!
//! `log::info("joined")`, or `log::info(format!("{n} clients"))`.

pub use crate::bindings::wasmgate::plugin::log::log;
pub use crate::bindings::wasmgate::plugin::types::Level;

/// Logs very detailed diagnostics.
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message.as_ref());
}

/// Logs diagnostics.
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message.as_ref());
}

/// Logs normal operation.
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message.as_ref());
}

/// Logs something unexpected that the plugin recovered from.
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message.as_ref());
}

/// Logs a failure.
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message.as_ref());
}
