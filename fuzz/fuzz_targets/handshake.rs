//! The handshake, both sides, against a peer that sends arbitrary frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::wire::codec::{FrameReader, FrameWriter};
use wasmgate::wire::handshake::{Peer, accept_handshake, connect_handshake};
use wasmgate_fuzz::RUNTIME;

const SECRET: &[u8] = b"the fuzzed cluster's secret";

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    RUNTIME.block_on(async {
        let mut reader = FrameReader::new(data);
        let mut writer = FrameWriter::new(tokio::io::sink());
        if which % 2 == 0 {
            let _ = accept_handshake(&mut reader, &mut writer, SECRET).await;
        } else {
            let _ = connect_handshake(&mut reader, &mut writer, SECRET, Peer::Worker).await;
        }
    });
});
