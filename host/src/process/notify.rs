//! systemd's readiness protocol (`Type=notify`), which `wasmgate start -d` also uses to learn
//! that its daemon is up.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tells the service manager named by `NOTIFY_SOCKET`, if any, `state` (`READY=1` …); a
/// failure is only logged, since the server runs fine without one.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = notify_addr(&target).and_then(|addr| {
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    });
    if let Err(e) = sent {
        tracing::warn!(notify_socket = ?target, "cannot notify the service manager: {e}");
    }
}

/// A `NOTIFY_SOCKET` value as an address: a path, or `@name` for the abstract namespace.
pub fn notify_addr(target: &OsStr) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match target.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(target),
    }
}
