//! Temporary: sizes of the gateway's per-connection futures.
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use wasmgate::gateway::conn::{self, ConnShared};
use wasmgate::gateway::heartbeat::{HeartbeatConfig, Ping};
use wasmgate::gateway::protocol::{self, text::Lines, ws};
use wasmgate::gateway::state::GatewayState;

fn shared() -> ConnShared {
    ConnShared {
        state: Arc::new(GatewayState::new(SocketAddrV4::new([127, 0, 0, 1].into(), 1))),
        router: Arc::default(),
        listener: 0,
        shutdown: Default::default(),
        heartbeat: HeartbeatConfig { interval: Duration::ZERO, limit: 0, ping: Ping::Silent },
        send_buffer: 1 << 20,
        counters: Arc::default(),
    }
}

#[tokio::test]
async fn sizes() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (s, remote) = l.accept().await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let accept = ws::accept(s, 1 << 20);
    eprintln!("ws::accept future: {} B", std::mem::size_of_val(&accept));
    let (inbound, outbound, request) = accept.await.unwrap();
    let serve = conn::serve(shared(), remote, inbound, outbound, Some(request));
    eprintln!("conn::serve (ws) future: {} B", std::mem::size_of_val(&serve));
    let (s2, _) = { let _c2 = tokio::net::TcpStream::connect(addr).await.unwrap(); l.accept().await.unwrap() };
    let (r, w) = s2.into_split();
    let (inbound, outbound) = protocol::framed(r, w, Lines::new(1024));
    let serve = conn::serve(shared(), remote, inbound, outbound, None);
    eprintln!("conn::serve (text) future: {} B", std::mem::size_of_val(&serve));
}
