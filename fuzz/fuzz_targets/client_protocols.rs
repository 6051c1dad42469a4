//! The client protocols' decoders (`text://`, `frame://`, WebSocket frames), fed a client's
//! bytes in pieces; every message decoded must be within the size limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wasmgate::gateway::protocol::frame::Frames;
use wasmgate::gateway::protocol::text::Lines;
use wasmgate::gateway::protocol::ws::WsFraming;
use wasmgate::gateway::protocol::{Framing, Inbound, decode_next};
use wasmgate_fuzz::pieces;

const MAX: usize = 1024;

fn run<F: Framing>(mut framing: F, data: &[u8]) {
    let (piece, data) = pieces(data);
    let mut buf = BytesMut::new();
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decode_next(&mut framing, &mut buf) {
                Ok(Some(Inbound::Message(message))) => assert!(message.len() <= MAX),
                Ok(Some(Inbound::Ping(ping))) => assert!(ping.len() <= 125),
                Ok(Some(Inbound::Close)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => run(Lines::new(MAX), data),
        1 => run(Frames::new(MAX), data),
        _ => run(WsFraming::new(MAX), data),
    }
});
