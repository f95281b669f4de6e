//! Fuzz the SIA DC-09 decoder: any bytes, split at any point, must never panic,
//! every frame cut must be within the cap, and every answer must read back.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pingantong_protocol::sia_dc09::{self, MAX_FRAME_LEN, SiaDc09Codec};
use pingantong_protocol::{Codec, ReplyPlan};

const KEY: &[u8] = b"0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let keys: sia_dc09::KeyLookup =
        Arc::new(|acct: &str| acct.starts_with('1').then(|| KEY.to_vec()));
    // A clock inside the years the fuzzer's timestamps can name, so ACK and NAK both occur.
    let mut codec = SiaDc09Codec::new(keys, Arc::new(|| 1_700_000_000_000));
    let mut buf = BytesMut::new();
    // Feed the input in two pieces, as a TCP stream may deliver it.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            assert!(!frame.raw.is_empty() && frame.raw.len() <= MAX_FRAME_LEN);
            if let ReplyPlan::AfterCommit { ok, .. } = &frame.reply {
                // Every answer we would send is a well-formed DC-09 message.
                let answer = sia_dc09::parse_message(ok, Some(KEY)).unwrap();
                assert!(answer.crc_ok && answer.length_ok);
                assert!(matches!(answer.token.as_str(), "ACK" | "NAK" | "DUH"));
            }
        }
    }
    let _ = sia_dc09::parse_message(data, Some(KEY));
});
