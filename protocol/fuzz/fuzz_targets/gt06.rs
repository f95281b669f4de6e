//! Fuzz the GT06 codec: any bytes, split at any point, must never panic, and every frame cut must consume exactly its bytes.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pingantong_protocol::Codec;
use pingantong_protocol::gt06::{self, Gt06Codec};

fuzz_target!(|data: &[u8]| {
    let mut codec = Gt06Codec::new(Arc::new(|| 1_715_934_615_000));
    let mut buf = BytesMut::new();
    // Half the runs start logged in, so bytes that are not a frame are set aside
    // (resynchronisation) instead of closing the stream.
    if data.first().is_some_and(|b| b & 1 == 1) {
        buf.extend_from_slice(&gt06::encode_login("355488020947422", 1).unwrap());
    }
    // Feed the input in two pieces, as a TCP stream may deliver it.
    let cut = data.get(1).map_or(0, |b| *b as usize % (data.len() + 1));
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(!frame.raw.is_empty() && frame.raw.len() <= gt06::MAX_FRAME_LEN);
                    assert_eq!(before - buf.len(), frame.raw.len());
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    break;
                }
                Err(_) => return,
            }
        }
    }
});
