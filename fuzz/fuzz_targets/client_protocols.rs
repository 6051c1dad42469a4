//! The text (`text://`) and frame (`frame://`) client protocols' decoders, fed a client's
//! bytes in pieces; every message decoded must be within the size limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use wasmgate::gateway::protocol::frame::Frames;
use wasmgate::gateway::protocol::text::Lines;
use wasmgate_fuzz::pieces;

const MAX: usize = 1024;

fn run<D: Decoder<Item = bytes::Bytes>>(mut decoder: D, data: &[u8]) {
    let (piece, data) = pieces(data);
    let mut buf = BytesMut::new();
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => assert!(message.len() <= MAX),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.decode_eof(&mut buf);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        run(Lines::new(MAX), data);
    } else {
        run(Frames::new(MAX), data);
    }
});
