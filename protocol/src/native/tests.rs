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
