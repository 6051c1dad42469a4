//! What a GatewayWorker peer sends a gateway's internal port: GatewayProtocol packets, read
//! back to back under the size limit (a packet decoded must encode to the same bytes), and
//! the bodies of raw sends, read back into each client protocol's messages.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};
use wasmgate::config::Protocol;
use wasmgate::gatewayworker::packet::PacketCodec;
use wasmgate::gatewayworker::raw;

fuzz_target!(|data: &[u8]| {
    let mut codec = PacketCodec { max_packet: 4096 };
    let mut input = BytesMut::from(data);
    let mut consumed = 0;
    while let Ok(Some(packet)) = codec.decode(&mut input) {
        let mut again = BytesMut::new();
        codec.encode(&packet, &mut again).expect("a decoded packet encodes");
        let len = again.len();
        assert_eq!(&again[..], &data[consumed..consumed + len], "byte-exact");
        consumed += len;
    }
    let body = Bytes::copy_from_slice(data);
    for protocol in [Protocol::Ws, Protocol::Text, Protocol::Frame] {
        if let Ok(messages) = raw::messages(protocol, &body) {
            assert!(messages.len() <= raw::MAX_MESSAGES);
            assert!(messages.iter().map(Bytes::len).sum::<usize>() <= body.len());
        }
    }
});
