//! Fuzz the Watch codec: any bytes, split at any point, must never panic, never
//! cut a frame over the cap, and never leave more than the cap buffered.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pingantong_protocol::watch::{MAX_FRAME_LEN, WatchCodec};
use pingantong_protocol::{Codec, ReplyPlan};

fuzz_target!(|data: &[u8]| {
    let mut codec = WatchCodec::new();
    let mut buf = BytesMut::new();
    // Feed the input in two pieces, as a TCP stream may deliver it.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(!frame.raw.is_empty() && frame.raw.len() <= MAX_FRAME_LEN);
                    // A frame is answered only when it names its device.
                    if let ReplyPlan::AfterCommit { ok, .. } = &frame.reply {
                        assert!(frame.device.is_some());
                        assert!(ok.starts_with(b"[") && ok.ends_with(b"]"));
                    }
                    assert!(buf.len() < before, "a frame consumes bytes");
                }
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(e.reason, "bad_start");
                    assert!(buf.len() >= MAX_FRAME_LEN);
                    return;
                }
            }
        }
        assert!(buf.len() < MAX_FRAME_LEN);
    }
});
