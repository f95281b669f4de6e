//! Byte-level and property tests of the Eview codec.

use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_one(bytes: &[u8]) -> (Frame, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let f = EviewCodec::new().decode(&mut buf).unwrap().unwrap();
    (f, buf)
}

#[test]
fn ev05_position_frame_decodes_and_is_acked() {
    #[rustfmt::skip]
    let mut bytes = vec![
        0xab,                   // header
        0x10,                   // flags: bit 4 ACK requested
        0x33, 0x00,             // body length 51 (LE)
        0x36, 0x07,             // CRC-16/XMODEM of the body 0x0736 (LE)
        0x6e, 0x02,             // sequence 622 (LE)
        0x01,                   // command: data
        0x10, 0x01,             // record: 16 bytes, key 0x01 IMEI
        b'8', b'6', b'1', b'6', b'2', b'9', b'0', b'5', b'4', b'0', b'0', b'4', b'8', b'6', b'0',
        0x09, 0x24,             // record: 9 bytes, key 0x24 general data
        0x79, 0x1e, 0x76, 0x63, //   time 1668685433 s (LE)
        0x11, 0x03, 0x4b, 0x63, //   status 0x634b0311: battery 0x63 = 99 %
        0x16, 0x20,             // record: 22 bytes, key 0x20 GPS
        0x51, 0x98, 0x0a, 0x1f, //   latitude 520788049 = 52.0788049
        0x0a, 0xae, 0x0c, 0x05, //   longitude 84717066 = 8.4717066
        0x00, 0x00,             //   speed 0 km/h
        0x4e, 0x01,             //   course 334
        0x7d, 0x00,             //   altitude 125 m
        0x02, 0x00,             //   HDOP 0.2 (> 0: a fix)
        0x78, 0x02, 0x00, 0x00, //   odometer
        0x0e,                   //   satellites 14
    ];
    bytes.push(0xab); // next frame
    let (f, rest) = decode_one(&bytes);
    assert_eq!(&rest[..], &[0xab]);
    assert_eq!(f.integrity, Integrity::Intact);
    assert_eq!(f.serial, Some(622));
    assert_eq!(f.device.unwrap().as_str(), "861629054004860");
    assert_eq!(f.parse_error, None);
    assert_eq!(f.observations.len(), 1);
    let o = &f.observations[0];
    assert_eq!(o.kind, EventKind::Position);
    assert_eq!(o.battery_pct, Some(99));
    assert_eq!(o.device_time_ms, Some(1_668_685_433_000));
    let l = o.location.unwrap();
    assert!((l.lat - 52.0788049).abs() < 1e-9 && (l.lon - 8.4717066).abs() < 1e-9);
    assert_eq!(
        f.reply,
        ReplyPlan::AfterCommit {
            ok: Bytes::from(hex("ab00030008c76e027f0100")),
            failed: None
        }
    );
}

#[test]
fn ack_bytes_are_as_specified() {
    // ab | flags 00 | length 3 | CRC 0xc708 | sequence 0x001e | 7f response, record len 1, result 0
    assert_eq!(&ack(0x1e)[..], &hex("ab00030008c71e007f0100")[..]);
}

#[test]
fn every_alarm_bit_is_reported() {
    let imei = DeviceId::parse("863921039996080").unwrap();
    let mut body = vec![CMD_DATA, 16, KEY_IMEI];
    body.extend_from_slice(imei.as_str().as_bytes());
    body.extend_from_slice(&[5, KEY_ALARM]);
    body.extend_from_slice(&((1u32 << 12) | (1 << 2) | (1 << 0) | (1 << 20)).to_le_bytes());
    let (f, _) = decode_one(&encode_frame(0, 7, &body));
    let kinds: Vec<_> = f.observations.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::LowBattery,
            EventKind::Fall,
            EventKind::Sos,
            EventKind::Other(0x34)
        ]
    );
    assert_eq!(f.reply, ReplyPlan::None); // no ACK requested
}

#[test]
fn bad_crc_is_reported_but_not_acked() {
    let imei = DeviceId::parse("863921039996080").unwrap();
    let mut bytes = encode_alarm(&imei, 9, EventKind::Sos, None, None).to_vec();
    bytes[4] ^= 0xff;
    let (f, _) = decode_one(&bytes);
    assert_eq!(f.integrity, Integrity::BadChecksum);
    assert_eq!(f.observations[0].kind, EventKind::Sos);
    assert_eq!(f.reply, ReplyPlan::None);
}

#[test]
fn incomplete_garbage_and_oversize() {
    let imei = DeviceId::parse("863921039996080").unwrap();
    let full = encode_alarm(&imei, 1, EventKind::Fall, None, Some(50));
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(EviewCodec::new().decode(&mut buf), Ok(None), "cut at {cut}");
        assert_eq!(buf.len(), cut);
    }
    let mut buf = BytesMut::from(&b"xy"[..]);
    buf.extend_from_slice(&full);
    let mut codec = EviewCodec::new();
    let junk = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&junk.raw[..], b"xy");
    assert!(junk.parse_error.is_some());
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap().raw, full);
    let mut buf = BytesMut::from(&[0xab, 0x00, 0xff, 0xff][..]);
    assert_eq!(codec.decode(&mut buf).unwrap_err().reason, "too_long");
}

#[test]
fn overrunning_record_keeps_what_was_read() {
    let (f, _) = decode_one(&encode_frame(0, 1, &[CMD_DATA, 5, KEY_ALARM, 0, 0x10]));
    assert!(f.parse_error.unwrap().contains("overruns"));
    assert!(f.observations.is_empty());
}

fn kind_strategy() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        Just(EventKind::Sos),
        Just(EventKind::Fall),
        Just(EventKind::LowBattery),
        Just(EventKind::PowerCut),
        Just(EventKind::PowerRestored),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), cut in any::<usize>()) {
        let mut codec = EviewCodec::new();
        let mut buf = BytesMut::new();
        let cut = cut % (data.len() + 1);
        for piece in [&data[..cut], &data[cut..]] {
            buf.extend_from_slice(piece);
            while let Ok(Some(f)) = codec.decode(&mut buf) {
                prop_assert!(!f.raw.is_empty() && f.raw.len() <= MAX_FRAME_LEN);
            }
        }
    }

    #[test]
    fn alarm_round_trips(
        imei in "[0-9]{15}",
        seq in any::<u16>(),
        kind in kind_strategy(),
        loc in proptest::option::of((-900_000_000i32..=900_000_000, -1_800_000_000i32..=1_800_000_000)),
        battery in proptest::option::of(0u8..=100),
    ) {
        let imei = DeviceId::parse(&imei).unwrap();
        let location = loc.map(|(a, o)| Location { lat: f64::from(a) / 1e7, lon: f64::from(o) / 1e7, accuracy_m: None });
        let bytes = encode_alarm(&imei, seq, kind, location, battery);
        let (f, rest) = decode_one(&bytes);
        prop_assert!(rest.is_empty());
        prop_assert_eq!(f.integrity, Integrity::Intact);
        prop_assert_eq!(f.serial, Some(u32::from(seq)));
        prop_assert_eq!(f.device, Some(imei));
        prop_assert_eq!(f.observations.len(), 1);
        let o = &f.observations[0];
        prop_assert_eq!(o.kind, kind);
        prop_assert_eq!(o.location, location);
        prop_assert_eq!(o.battery_pct, battery);
        prop_assert_eq!(&f.reply, &ReplyPlan::AfterCommit { ok: ack(seq), failed: None });
    }
}
