//! Fuzz the native decoder: any bytes, split at any point, must never panic,
//! and every frame cut must consume exactly what its header announced.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pingantong_protocol::native::{self, EventFrame, HEADER_LEN, MAX_FRAME_LEN, Reply};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::new();
    // Feed the input in two pieces, as a TCP stream may deliver it.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        while let Ok(Some(raw)) = native::split_frame(&mut buf) {
            assert!(raw.bytes.len() >= HEADER_LEN && raw.bytes.len() <= MAX_FRAME_LEN);
            if let Ok(frame) = EventFrame::parse(&raw) {
                let _ = frame.verify(b"fuzz");
                // A parsed event re-encodes to a frame that parses to the same event.
                let mut again = BytesMut::new();
                native::encode_event(&frame.event, b"fuzz", &mut again);
                let raw2 = native::split_frame(&mut again).unwrap().unwrap();
                assert_eq!(EventFrame::parse(&raw2).unwrap().event, frame.event);
            }
            let _ = Reply::parse(&raw, b"fuzz");
        }
    }
});
