//! Byte-level and property tests of the native codec.

use super::*;
use proptest::prelude::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn sos_with_location() -> AlarmEvent {
    AlarmEvent {
        device: DeviceId::parse("PA0001").unwrap(),
        seq: 7,
        kind: EventKind::Sos,
        device_time_ms: Some(1_764_000_000_000),
        battery_pct: Some(85),
        location: Some(Location {
            lat: 23.129_11,
            lon: 113.264_385,
            accuracy_m: Some(12),
        }),
    }
}

#[test]
fn event_frame_bytes_are_as_specified() {
    let mut buf = BytesMut::new();
    encode_event(&sos_with_location(), SECRET, &mut buf);
    #[rustfmt::skip]
    let expected_head: &[u8] = &[
        0x50, 0x41,                   // magic "PA"
        0x01,                         // version 1
        0x01,                         // type EVENT
        0x00, 0x30,                   // body length 48
        0x06,                         // device id length
        b'P', b'A', b'0', b'0', b'0', b'1',
        0x00, 0x00, 0x00, 0x07,       // seq 7
        0x01,                         // kind SOS
        0x00, 0x00, 0x01, 0x9a, 0xb6, 0x97, 0xe8, 0x00, // device time 1764000000000 ms
        0x55,                         // battery 85 %
        0x01,                         // flags: location present
        0x0d, 0xc9, 0x38, 0xdc,       // lat 23.1291100 * 1e7 = 231291100
        0x43, 0x82, 0xc6, 0x0a,       // lon 113.2643850 * 1e7 = 1132643850
        0x00, 0x0c,                   // accuracy 12 m
    ];
    assert_eq!(&buf[..expected_head.len()], expected_head);
    assert_eq!(buf.len(), expected_head.len() + TAG_LEN);
    // The tag is the first 16 bytes of HMAC-SHA256 over everything before it.
    let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
    mac.update(expected_head);
    assert_eq!(
        &buf[expected_head.len()..],
        &mac.finalize().into_bytes()[..16]
    );
}

#[test]
fn split_consumes_exactly_one_frame() {
    let mut buf = BytesMut::new();
    encode_event(&sos_with_location(), SECRET, &mut buf);
    let one = buf.len();
    buf.put_u8(b'P'); // first byte of the next frame
    let raw = split_frame(&mut buf).unwrap().unwrap();
    assert_eq!(raw.bytes.len(), one);
    assert_eq!(&buf[..], b"P");
    let frame = EventFrame::parse(&raw).unwrap();
    assert_eq!(frame.event, sos_with_location());
    assert!(frame.verify(SECRET));
    assert!(!frame.verify(b"another secret"));
}

#[test]
fn incomplete_is_not_an_error() {
    let mut full = BytesMut::new();
    encode_event(&sos_with_location(), SECRET, &mut full);
    for cut in 0..full.len() {
        let mut part = BytesMut::from(&full[..cut]);
        assert_eq!(split_frame(&mut part), Ok(None), "cut at {cut}");
        assert_eq!(part.len(), cut);
    }
}

#[test]
fn framing_errors_close_the_stream() {
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    assert_eq!(
        split_frame(&mut buf),
        Err(FramingError::BadMagic(b'G', b'E'))
    );
    let mut one = BytesMut::from(&b"X"[..]);
    assert!(split_frame(&mut one).is_err());
    #[rustfmt::skip]
    let mut huge = BytesMut::from(&[0x50, 0x41, 0x01, 0x01, 0xff, 0xff][..]);
    assert_eq!(split_frame(&mut huge), Err(FramingError::TooLong(0xffff)));
}

#[test]
fn tampered_byte_fails_verification() {
    let mut buf = BytesMut::new();
    encode_event(&sos_with_location(), SECRET, &mut buf);
    buf[17] ^= 0x02; // kind SOS -> 0x03 (medical)
    let raw = split_frame(&mut buf).unwrap().unwrap();
    let frame = EventFrame::parse(&raw).unwrap();
    assert_eq!(frame.event.kind, EventKind::Medical);
    assert!(!frame.verify(SECRET));
}

#[test]
fn bad_bodies_are_parse_errors_not_framing_errors() {
    let cases: Vec<(Vec<u8>, ParseError)> = vec![
        (
            vec![0x50, 0x41, 0x02, 0x01, 0x00, 0x00],
            ParseError::UnsupportedVersion(2),
        ),
        (
            vec![0x50, 0x41, 0x01, 0x01, 0x00, 0x01, 0x05],
            ParseError::Truncated("device id"),
        ),
        (
            vec![0x50, 0x41, 0x01, 0x01, 0x00, 0x02, 0x01, b' '],
            ParseError::DeviceId(DeviceIdError::BadByte(b' ')),
        ),
        (
            vec![0x50, 0x41, 0x01, 0x01, 0x00, 0x02, 0x01, b'a'],
            ParseError::Truncated("fixed fields"),
        ),
        (
            vec![0x50, 0x41, 0x01, 0x09, 0x00, 0x00],
            ParseError::UnexpectedType(9),
        ),
    ];
    for (bytes, want) in cases {
        let mut buf = BytesMut::from(&bytes[..]);
        let raw = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(EventFrame::parse(&raw), Err(want));
    }
}

#[test]
fn reserved_flags_battery_and_trailing_bytes_are_refused() {
    let base = {
        let mut b = BytesMut::new();
        let mut e = sos_with_location();
        e.location = None;
        encode_event(&e, SECRET, &mut b);
        b
    };
    // flags byte sits right before the tag
    let flags_at = base.len() - TAG_LEN - 1;
    let mut bad = base.clone();
    bad[flags_at] = 0x80;
    let raw = split_frame(&mut bad).unwrap().unwrap();
    assert_eq!(
        EventFrame::parse(&raw),
        Err(ParseError::ReservedFlags(0x80))
    );

    let mut bad = base.clone();
    bad[flags_at - 1] = 101;
    let raw = split_frame(&mut bad).unwrap().unwrap();
    assert_eq!(EventFrame::parse(&raw), Err(ParseError::Battery(101)));

    let mut long = base.clone();
    long.put_u8(0);
    let len = u16::from_be_bytes([long[4], long[5]]) + 1;
    long[4..6].copy_from_slice(&len.to_be_bytes());
    let raw = split_frame(&mut long).unwrap().unwrap();
    assert_eq!(EventFrame::parse(&raw), Err(ParseError::TrailingBytes(1)));
}

#[test]
fn ack_bytes_and_authenticity() {
    let mut buf = BytesMut::new();
    Reply::Ack {
        seq: 7,
        status: ACK_DUPLICATE,
        server_time_ms: 1,
    }
    .encode(Some(SECRET), &mut buf);
    #[rustfmt::skip]
    let head: &[u8] = &[
        0x50, 0x41, 0x01,
        0x02,                   // type ACK
        0x00, 0x1d,             // body 29 = seq 4 + status 1 + time 8 + tag 16
        0x00, 0x00, 0x00, 0x07, // seq 7
        0x01,                   // status: duplicate
        0, 0, 0, 0, 0, 0, 0, 1, // server time
    ];
    assert_eq!(&buf[..head.len()], head);
    let raw = split_frame(&mut buf).unwrap().unwrap();
    let (reply, authentic) = Reply::parse(&raw, SECRET).unwrap();
    assert!(authentic);
    assert_eq!(reply.seq(), 7);
    let (_, authentic) = Reply::parse(&raw, b"not the secret").unwrap();
    assert!(!authentic);
}

#[test]
fn unsigned_nak_has_zero_tag() {
    let mut buf = BytesMut::new();
    Reply::Nak {
        seq: 3,
        reason: NakReason::UnknownDevice,
        server_time_ms: 9,
    }
    .encode(None, &mut buf);
    assert_eq!(buf[10], 0x04);
    assert_eq!(&buf[buf.len() - TAG_LEN..], &[0u8; TAG_LEN]);
    let raw = split_frame(&mut buf).unwrap().unwrap();
    let (reply, authentic) = Reply::parse(&raw, SECRET).unwrap();
    assert!(!authentic);
    assert_eq!(
        reply,
        Reply::Nak {
            seq: 3,
            reason: NakReason::UnknownDevice,
            server_time_ms: 9
        }
    );
}

/// The server's side: what the codec makes of a frame and how it is judged.
mod as_the_server_hears_it {
    use super::*;
    use crate::Codec;

    fn judgement(auth: Option<AuthStatus>, fate: Fate, key: Option<&[u8]>) -> Judgement<'_> {
        Judgement {
            serial: Some(7),
            auth,
            fate,
            clock_skew: false,
            key,
            server_time_ms: 1_764_000_000_500,
        }
    }

    fn reply_of(bytes: &[u8], secret: &[u8]) -> (Reply, bool) {
        let raw = split_frame(&mut BytesMut::from(bytes)).unwrap().unwrap();
        Reply::parse(&raw, secret).unwrap()
    }

    #[test]
    fn an_event_is_one_observation_answered_once_judged() {
        let mut wire = BytesMut::new();
        encode_event(&sos_with_location(), SECRET, &mut wire);
        let whole = wire.clone();
        let mut codec = NativeCodec;
        let mut half = wire.split_to(10);
        assert_eq!(codec.decode(&mut half).unwrap(), None, "half a frame waits");
        half.unsplit(wire);
        let frame = codec.decode(&mut half).unwrap().unwrap();
        assert!(half.is_empty());
        assert_eq!(frame.raw, whole.freeze());
        assert_eq!(frame.device.as_ref().map(|d| d.as_str()), Some("PA0001"));
        assert_eq!(frame.serial, Some(7));
        assert_eq!(frame.reply, ReplyPlan::Judged);
        assert_eq!(frame.parse_error, None);
        let [o] = &frame.observations[..] else {
            panic!("one observation: {:?}", frame.observations);
        };
        assert_eq!(o.kind, EventKind::Sos);
        assert_eq!(o.device_time_ms, Some(1_764_000_000_000));
        assert_eq!(o.battery_pct, Some(85));
        assert_eq!(o.location.unwrap().accuracy_m, Some(12));
    }

    #[test]
    fn the_tag_decides_who_sent_it() {
        let mut wire = BytesMut::new();
        encode_event(&sos_with_location(), SECRET, &mut wire);
        let frame = NativeCodec.decode(&mut wire).unwrap().unwrap();
        let judge = NativeCodec.judge();
        assert_eq!(
            judge.authenticate(&frame, Some(SECRET)),
            AuthStatus::Verified
        );
        assert_eq!(
            judge.authenticate(&frame, Some(b"another")),
            AuthStatus::BadTag
        );
        assert_eq!(judge.authenticate(&frame, None), AuthStatus::UnknownDevice);
    }

    #[test]
    fn answers_say_what_became_of_the_frame() {
        let judge = NativeCodec.judge();
        let answer = |j: Judgement<'_>| judge.answer(&j).unwrap();
        let verified = Some(AuthStatus::Verified);
        let (ack, authentic) = reply_of(
            &answer(judgement(verified, Fate::Stored, Some(SECRET))),
            SECRET,
        );
        assert!(authentic, "a known device's answer is signed");
        assert_eq!(
            ack,
            Reply::Ack {
                seq: 7,
                status: 0,
                server_time_ms: 1_764_000_000_500
            }
        );
        let mut j = judgement(verified, Fate::Duplicate, Some(SECRET));
        j.clock_skew = true;
        let (ack, _) = reply_of(&answer(j), SECRET);
        assert_eq!(
            ack,
            Reply::Ack {
                seq: 7,
                status: ACK_DUPLICATE | ACK_CLOCK_SKEW,
                server_time_ms: 1_764_000_000_500
            }
        );
        let nak = |auth, fate, key| match reply_of(&answer(judgement(auth, fate, key)), SECRET) {
            (Reply::Nak { reason, .. }, authentic) => (reason, authentic),
            other => panic!("a NAK expected: {other:?}"),
        };
        assert_eq!(
            nak(verified, Fate::NotStored, Some(SECRET)),
            (NakReason::Unavailable, true)
        );
        assert_eq!(
            nak(None, Fate::Stored, None),
            (NakReason::Unavailable, false)
        );
        assert_eq!(
            nak(Some(AuthStatus::BadTag), Fate::Stored, Some(SECRET)),
            (NakReason::BadTag, true)
        );
        assert_eq!(
            nak(Some(AuthStatus::UnknownDevice), Fate::Stored, None),
            (NakReason::UnknownDevice, false)
        );
    }

    #[test]
    fn a_frame_that_does_not_parse_is_refused_and_the_stream_goes_on() {
        let mut wire = BytesMut::new();
        encode_event(&sos_with_location(), SECRET, &mut wire);
        wire[2] = 9; // a version this server does not speak
        let mut next = BytesMut::new();
        encode_event(&sos_with_location(), SECRET, &mut next);
        wire.unsplit(next);
        let mut codec = NativeCodec;
        let bad = codec.decode(&mut wire).unwrap().unwrap();
        assert!(
            bad.parse_error.as_deref().unwrap().contains("version 9"),
            "{bad:?}"
        );
        assert!(bad.observations.is_empty() && bad.device.is_none());
        assert_eq!(codec.unparsed_reason(&bad), "unsupported_version");
        let ReplyPlan::AfterCommit { ok, failed: None } = &bad.reply else {
            panic!("answered at once: {:?}", bad.reply);
        };
        let (reply, _) = reply_of(ok, SECRET);
        assert!(
            matches!(
                reply,
                Reply::Nak {
                    seq: 0,
                    reason: NakReason::UnsupportedVersion,
                    ..
                }
            ),
            "{reply:?}"
        );
        let good = codec.decode(&mut wire).unwrap().unwrap();
        assert_eq!(good.parse_error, None);
    }

    #[test]
    fn a_stream_that_cannot_be_framed_is_answered_then_closed() {
        let mut wire = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        let e = NativeCodec.decode(&mut wire).unwrap_err();
        assert_eq!(e.reason, "framing");
        let (reply, _) = reply_of(&e.reply.unwrap(), SECRET);
        assert!(
            matches!(
                reply,
                Reply::Nak {
                    reason: NakReason::Malformed,
                    ..
                }
            ),
            "{reply:?}"
        );
    }
}

fn arb_kind() -> impl Strategy<Value = EventKind> {
    any::<u8>().prop_map(kind_from_code)
}

fn arb_event() -> impl Strategy<Value = AlarmEvent> {
    (
        "[A-Za-z0-9._:-]{1,32}",
        any::<u32>(),
        arb_kind(),
        proptest::option::of(1u64..),
        proptest::option::of(0u8..=100),
        proptest::option::of((
            -900_000_000i32..=900_000_000,
            -1_800_000_000i32..=1_800_000_000,
            proptest::option::of(0u16..0xFFFF),
        )),
    )
        .prop_map(|(id, seq, kind, time, battery, loc)| AlarmEvent {
            device: DeviceId::parse(&id).unwrap(),
            seq,
            kind,
            device_time_ms: time,
            battery_pct: battery,
            location: loc.map(|(lat, lon, acc)| Location {
                lat: lat as f64 / 1e7,
                lon: lon as f64 / 1e7,
                accuracy_m: acc,
            }),
        })
}

proptest! {
    #[test]
    fn event_round_trips(event in arb_event(), secret in proptest::collection::vec(any::<u8>(), 1..64)) {
        let mut buf = BytesMut::new();
        encode_event(&event, &secret, &mut buf);
        let raw = split_frame(&mut buf).unwrap().unwrap();
        prop_assert!(buf.is_empty());
        let frame = EventFrame::parse(&raw).unwrap();
        prop_assert!(frame.verify(&secret));
        prop_assert_eq!(frame.event, event);
    }

    #[test]
    fn reply_round_trips(seq in any::<u32>(), status in any::<u8>(), time in any::<u64>(), nak in any::<bool>()) {
        let reply = if nak {
            Reply::Nak { seq, reason: NakReason::from_u8(status % 5 + 1).unwrap(), server_time_ms: time }
        } else {
            Reply::Ack { seq, status, server_time_ms: time }
        };
        let mut buf = BytesMut::new();
        reply.encode(Some(SECRET), &mut buf);
        let raw = split_frame(&mut buf).unwrap().unwrap();
        prop_assert_eq!(Reply::parse(&raw, SECRET).unwrap(), (reply, true));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(raw)) = split_frame(&mut buf) {
            let _ = EventFrame::parse(&raw).map(|f| f.verify(SECRET));
            let _ = Reply::parse(&raw, SECRET);
        }
    }
}
