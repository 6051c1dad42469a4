//! Internal links' frames: a length-prefixed postcard message of each direction, read as a
//! peer's bytes arrive. Nothing may panic or allocate past the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use wasmgate::wire::codec::FrameReader;
use wasmgate::wire::messages::{FromRegister, ToGateway, ToRegister, ToWorker};
use wasmgate_fuzz::RUNTIME;

async fn drain<M: DeserializeOwned>(data: &[u8]) {
    let mut reader = FrameReader::new(data);
    while let Ok(Some(_)) = reader.recv::<M>().await {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    RUNTIME.block_on(async {
        match which % 4 {
            0 => drain::<ToWorker>(data).await,
            1 => drain::<ToGateway>(data).await,
            2 => drain::<ToRegister>(data).await,
            _ => drain::<FromRegister>(data).await,
        }
    });
});
