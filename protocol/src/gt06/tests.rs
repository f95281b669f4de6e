//! Byte-level and property tests of the GT06 codec.

use super::*;
use proptest::prelude::*;

/// 2024-05-17 08:30:15 UTC.
const NOW_MS: u64 = 1_715_934_615_000;

fn codec() -> Gt06Codec {
    Gt06Codec::new(Arc::new(|| NOW_MS as i64))
}

fn decode_one(codec: &mut Gt06Codec, bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty(), "left over: {buf:02x?}");
    frame
}

fn ok_reply(frame: &Frame) -> &[u8] {
    match &frame.reply {
        ReplyPlan::AfterCommit { ok, failed: None } => ok,
        other => panic!("expected a reply after commit, got {other:?}"),
    }
}

#[rustfmt::skip]
const LOGIN_FRAME: &[u8] = &[
    0x78, 0x78,                                     // start, short frame
    0x0d,                                           // length: protocol..CRC = 13
    0x01,                                           // protocol: login
    0x08, 0x64, 0x71, 0x70, 0x03, 0x28, 0x35, 0x81, // IMEI BCD 0864717003283581
    0x00, 0x09,                                     // serial 9
    0x3f, 0x04,                                     // CRC-16/X-25
    0x0d, 0x0a,                                     // stop
];

#[test]
fn login_names_the_connection_and_is_answered() {
    let mut c = codec();
    let mut buf = BytesMut::from(LOGIN_FRAME);
    buf.put_u8(0x78); // first byte of the next frame
    let frame = c.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..], &[0x78], "exactly one frame consumed");
    assert_eq!(&frame.raw[..], LOGIN_FRAME);
    assert_eq!(frame.integrity, Integrity::Intact);
    assert_eq!(
        frame.device,
        Some(DeviceId::parse("864717003283581").unwrap())
    );
    assert_eq!(frame.serial, Some(9));
    assert!(frame.observations.is_empty());
    assert_eq!(frame.parse_error, None);
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x78, 0x78, 0x05, // start, length 5
        0x01,             // login
        0x00, 0x09,       // the login's serial
        0x55, 0x94,       // CRC
        0x0d, 0x0a,
    ];
    assert_eq!(ok_reply(&frame), expected);
    assert_eq!(c.device().map(DeviceId::as_str), Some("864717003283581"));
}

#[test]
fn heartbeat_carries_battery_and_signal() {
    let mut c = codec();
    decode_one(&mut c, LOGIN_FRAME);
    #[rustfmt::skip]
    let hb: &[u8] = &[
        0x78, 0x78, 0x0a, // start, length 10
        0x13,             // status heartbeat
        0x44,             // terminal info: GPS on, charging, no alarm
        0x04,             // voltage level 4 -> 66 %
        0x03,             // GSM signal 3
        0x00, 0x02,       // no alarm, language English
        0x00, 0x07,       // serial 7
        0xe0, 0x68,       // CRC
        0x0d, 0x0a,
    ];
    let frame = decode_one(&mut c, hb);
    assert_eq!(frame.integrity, Integrity::Intact);
    assert_eq!(
        frame.device.as_ref().map(DeviceId::as_str),
        Some("864717003283581")
    );
    assert_eq!(frame.observations.len(), 1);
    let o = &frame.observations[0];
    assert_eq!(o.kind, EventKind::Heartbeat);
    assert_eq!(o.battery_pct, Some(66));
    assert_eq!(o.signal, Some(3));
    assert_eq!(o.location, None);
    assert_eq!(
        ok_reply(&frame),
        &[0x78, 0x78, 0x05, 0x13, 0x00, 0x07, 0x8c, 0xc7, 0x0d, 0x0a]
    );
    assert_eq!(&encode_heartbeat(4, 3, true, 7)[..], hb);
}

#[rustfmt::skip]
const SOS_AND_LOW_BATTERY: &[u8] = &[
    0x78, 0x78, 0x25,                   // start, length 37
    0x16,                               // GPS/LBS/status alarm packet
    0x18, 0x05, 0x11, 0x08, 0x1e, 0x0f, // 2024-05-17 08:30:15 UTC
    0xc8,                               // GPS info length 12, 8 satellites
    0x02, 0x7b, 0x42, 0x8e,             // latitude  41632398 / 1.8e6 = 23.12911
    0x0c, 0x26, 0xe6, 0x35,             // longitude 203875893 / 1.8e6 = 113.264385
    0x00,                               // speed 0 km/h
    0x14, 0x00,                         // fixed, north, east, course 0
    0x09,                               // cell block length 9
    0x01, 0xcc, 0x00,                   // MCC 460, MNC 0
    0x25, 0x1c, 0x00, 0x3a, 0x4f,       // LAC, cell id
    0x58,                               // terminal info: GPS on, bits 3-5 = 011 low battery
    0x02,                               // voltage level 2 -> 33 %
    0x03,                               // GSM signal 3
    0x01,                               // alarm: SOS
    0x02,                               // language
    0x00, 0x42,                         // serial 66
    0x36, 0x7a,                         // CRC
    0x0d, 0x0a,
];

#[test]
fn every_alarm_of_a_frame_is_reported() {
    let mut c = codec();
    decode_one(&mut c, LOGIN_FRAME);
    let frame = decode_one(&mut c, SOS_AND_LOW_BATTERY);
    assert_eq!(frame.integrity, Integrity::Intact);
    let kinds: Vec<EventKind> = frame.observations.iter().map(|o| o.kind).collect();
    assert_eq!(kinds, [EventKind::LowBattery, EventKind::Sos]);
    for o in &frame.observations {
        assert_eq!(o.device_time_ms, Some(NOW_MS));
        assert_eq!(o.battery_pct, Some(33));
        assert_eq!(o.signal, Some(3));
        let loc = o.location.unwrap();
        assert!((loc.lat - 23.129_11).abs() < 1e-9 && (loc.lon - 113.264_385).abs() < 1e-9);
    }
    assert_eq!(frame.observations[1].code, "GT06 0x16 alarm 0x01");
    assert_eq!(
        ok_reply(&frame),
        &[0x78, 0x78, 0x05, 0x16, 0x00, 0x42, 0xa0, 0xd3, 0x0d, 0x0a]
    );
}

#[test]
fn bad_checksum_is_flagged_but_the_sos_still_counts() {
    let mut c = codec();
    decode_one(&mut c, LOGIN_FRAME);
    let mut bytes = SOS_AND_LOW_BATTERY.to_vec();
    let crc_at = bytes.len() - 4;
    bytes[crc_at] ^= 0xff;
    let frame = decode_one(&mut c, &bytes);
    assert_eq!(frame.integrity, Integrity::BadChecksum);
    assert!(frame.observations.iter().any(|o| o.kind == EventKind::Sos));
    // Answered as usual: the reply carries a CRC of its own.
    assert_eq!(
        ok_reply(&frame),
        &[0x78, 0x78, 0x05, 0x16, 0x00, 0x42, 0xa0, 0xd3, 0x0d, 0x0a]
    );
}

#[test]
fn removal_and_power_cut_from_status_bits() {
    let mut c = codec();
    // Traccar test frame: terminal info 0x7c (bits 3-5 = 111 removed), voltage 0x55 = 85 %.
    let removal = hex::decode(
        "7878251613020c12141ac5027951430c2a16f60014000900000000001a00007c550300020002f1e70d0a",
    )
    .unwrap();
    let frame = decode_one(&mut c, &removal);
    assert_eq!(frame.device, None, "no login on this connection yet");
    assert_eq!(frame.observations.len(), 1);
    let o = &frame.observations[0];
    assert_eq!(o.kind, EventKind::RemovedFromWrist);
    assert_eq!(o.battery_pct, Some(85));
    assert_eq!(o.device_time_ms, Some(1_549_995_626_000)); // 2019-02-12 18:20:26 UTC
    // Power cut told twice (status bits 010 and alarm byte 0x02) is one power cut.
    let cut = hex::decode(
        "7878251610051b0f1c34c5022515d504b5dcd20738080902d4022bdf009cba5006640201006759680d0a",
    )
    .unwrap();
    let frame = decode_one(&mut c, &cut);
    assert_eq!(frame.observations.len(), 1);
    assert_eq!(frame.observations[0].kind, EventKind::PowerCut);
    assert_eq!(
        frame.observations[0].code,
        "GT06 0x16 terminal info 0x50 + GT06 0x16 alarm 0x02"
    );
}

#[test]
fn time_request_is_answered_with_the_clock() {
    let mut c = codec();
    let frame = decode_one(&mut c, &hex::decode("7878058a000688290d0a").unwrap());
    assert!(frame.observations.is_empty());
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x78, 0x78, 0x0b,                   // start, length 11
        0x8a,                               // time
        0x18, 0x05, 0x11, 0x08, 0x1e, 0x0f, // 2024-05-17 08:30:15 UTC
        0x00, 0x00,                         // serial 0, as Traccar sends it
        0xe3, 0x27,                         // CRC
        0x0d, 0x0a,
    ];
    assert_eq!(ok_reply(&frame), expected);
    let mut broken = Gt06Codec::new(Arc::new(|| -1));
    let frame = decode_one(&mut broken, &encode_time_request(1));
    assert_eq!(frame.reply, ReplyPlan::None);
}

#[test]
fn incomplete_is_not_an_error() {
    for cut in 0..SOS_AND_LOW_BATTERY.len() {
        let mut c = codec();
        let mut part = BytesMut::from(&SOS_AND_LOW_BATTERY[..cut]);
        assert_eq!(c.decode(&mut part), Ok(None), "cut at {cut}");
        assert_eq!(part.len(), cut);
    }
}

#[test]
fn garbage_before_the_first_frame_closes_the_stream() {
    let mut c = codec();
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    assert_eq!(c.decode(&mut buf).unwrap_err().reason, "bad_start");
    let mut c = codec();
    let mut buf = BytesMut::from(&[0x78, 0x79][..]);
    assert_eq!(c.decode(&mut buf).unwrap_err().reason, "bad_start");
    let mut c = codec();
    let mut buf = BytesMut::from(&[0x79, 0x79, 0xff, 0xff][..]);
    assert_eq!(c.decode(&mut buf).unwrap_err().reason, "too_long");
    let mut c = codec();
    let mut buf = BytesMut::from(&[0x78, 0x78, 0x02, 0x01][..]);
    assert_eq!(c.decode(&mut buf).unwrap_err().reason, "bad_length");
}

#[test]
fn garbage_after_a_frame_is_set_aside_and_the_stream_resyncs() {
    let mut c = codec();
    let mut buf = BytesMut::from(LOGIN_FRAME);
    buf.extend_from_slice(&[0x00, 0x13, 0x79]); // noise, with a stray start byte
    // A frame whose length byte was corrupted: no 0D 0A where it says the end is.
    let mut bad_length = SOS_AND_LOW_BATTERY.to_vec();
    bad_length[2] = 0x20;
    buf.extend_from_slice(&bad_length);
    buf.extend_from_slice(SOS_AND_LOW_BATTERY);
    let login = c.decode(&mut buf).unwrap().unwrap();
    assert_eq!(login.serial, Some(9));
    let noise = c.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&noise.raw[..], &[0x00, 0x13, 0x79]);
    assert_eq!(noise.integrity, Integrity::BadLength);
    assert!(noise.parse_error.is_some() && noise.reply == ReplyPlan::None);
    // The corrupted frame is set aside piece by piece up to the next real start.
    let mut skipped = 0;
    loop {
        let f = c.decode(&mut buf).unwrap().unwrap();
        if f.parse_error.is_none() {
            assert_eq!(&f.raw[..], SOS_AND_LOW_BATTERY);
            assert!(f.observations.iter().any(|o| o.kind == EventKind::Sos));
            break;
        }
        skipped += f.raw.len();
    }
    assert_eq!(skipped, bad_length.len());
    assert!(buf.is_empty());
}

#[test]
fn unknown_packets_are_kept_and_acknowledged() {
    let mut c = codec();
    // 0x99 is no GT06 packet we know, but it is a well-formed frame.
    let raw = packet(false, 0x99, &[1, 2, 3], 5);
    let frame = decode_one(&mut c, &raw);
    assert!(frame.observations.is_empty());
    assert_eq!(
        frame.parse_error.as_deref(),
        Some("packet type 0x99 is not supported")
    );
    assert_eq!(ok_reply(&frame), &ack(0x99, 5, false)[..]);
    // A truncated alarm packet is a parse error, not a framing error.
    let raw = packet(false, ALARM, &[0x18, 0x05], 6);
    let frame = decode_one(&mut c, &raw);
    assert!(frame.parse_error.unwrap().contains("GPS block"));
    // Long frames are cut by their 2-byte length and answered in the long form.
    let raw = packet(true, HEARTBEAT, &[0x40, 0x01, 0xa4, 0x04], 8);
    let frame = decode_one(&mut c, &raw);
    assert_eq!(frame.observations[0].kind, EventKind::Heartbeat);
    assert_eq!(frame.observations[0].battery_pct, Some(100)); // 4.20 V
    assert_eq!(ok_reply(&frame), &ack(HEARTBEAT, 8, true)[..]);
    assert_eq!(&ok_reply(&frame)[..4], &[0x79, 0x79, 0x00, 0x05]);
}

#[test]
fn address_requests_and_information_uploads() {
    let mut c = codec();
    let frame = decode_one(&mut c, &packet(false, ADDRESS_REQUEST, &[0; 4], 3));
    #[rustfmt::skip]
    let expected_head: &[u8] = &[
        0x79, 0x79, 0x00, 0x15, // long frame, length 21
        0x97,                   // address response
        0x0b,                   // text length 11
        0x00, 0x00, 0x00, 0x00, // server flag
    ];
    let reply = ok_reply(&frame);
    assert_eq!(&reply[..expected_head.len()], expected_head);
    assert_eq!(
        &reply[expected_head.len()..expected_head.len() + 11],
        b"NA&&NA&&0##"
    );
    assert_eq!(reply.len(), expected_head.len() + 11 + 2 + 2 + 2);
    // The device expects no answer to an information upload.
    let frame = decode_one(&mut c, &packet(true, INFO, &[0x0a, 1, 2, 3], 4));
    assert_eq!(frame.reply, ReplyPlan::None);
    assert_eq!(frame.parse_error, None);
}

#[test]
fn unfixed_positions_are_not_reported_as_locations() {
    let mut c = codec();
    let raw = encode_alarm(EventKind::Sos, None, NOW_MS, 3).unwrap();
    let frame = decode_one(&mut c, &raw);
    assert_eq!(frame.observations.len(), 1);
    assert_eq!(frame.observations[0].kind, EventKind::Sos);
    assert_eq!(frame.observations[0].location, None);
}

#[test]
fn encoders_refuse_what_gt06_cannot_say() {
    assert!(matches!(
        encode_login("12345", 1),
        Err(Gt06Error::BadImei(_))
    ));
    assert!(matches!(
        encode_login("86471700328358a", 1),
        Err(Gt06Error::BadImei(_))
    ));
    assert!(matches!(
        encode_alarm(EventKind::Cancel, None, NOW_MS, 1),
        Err(Gt06Error::UnsupportedKind(_))
    ));
    assert!(matches!(
        encode_alarm(EventKind::Sos, None, 0, 1),
        Err(Gt06Error::TimeOutOfRange(0))
    ));
    let far = Location {
        lat: 91.0,
        lon: 0.0,
        accuracy_m: None,
    };
    assert!(matches!(
        encode_position(far, NOW_MS, 1),
        Err(Gt06Error::Location(..))
    ));
}

#[test]
fn calendar_edges() {
    assert_eq!(ms_from_civil([0, 1, 1, 0, 0, 0]), Some(946_684_800_000));
    assert_eq!(ms_from_civil([24, 2, 29, 0, 0, 0]), Some(1_709_164_800_000));
    assert_eq!(ms_from_civil([23, 2, 29, 0, 0, 0]), None);
    assert_eq!(ms_from_civil([0, 0, 0, 0, 0, 0]), None);
    assert_eq!(ms_from_civil([24, 1, 1, 24, 0, 0]), None);
    assert_eq!(civil_from_ms(946_684_799_999), None);
    assert_eq!(
        civil_from_ms(NOW_MS),
        Some([0x18, 0x05, 0x11, 0x08, 0x1e, 0x0f])
    );
}

fn alarm_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        Just(EventKind::Sos),
        Just(EventKind::Fall),
        Just(EventKind::LowBattery),
        Just(EventKind::PowerCut),
        Just(EventKind::Tamper),
        Just(EventKind::RemovedFromWrist),
    ]
}

/// Locations exactly representable on the wire, so a round trip is exact.
fn wire_location() -> impl Strategy<Value = Location> {
    (-162_000_000i64..=162_000_000, -324_000_000i64..=324_000_000).prop_map(|(la, lo)| Location {
        lat: la as f64 / 1_800_000.0,
        lon: lo as f64 / 1_800_000.0,
        accuracy_m: None,
    })
}

/// Whole seconds from 2000-01-01 to 2255-12-31.
fn wire_time() -> impl Strategy<Value = u64> {
    (946_684_800u64..9_015_148_799).prop_map(|s| s * 1000)
}

proptest! {
    #[test]
    fn alarm_round_trip(
        kind in alarm_kind(),
        location in proptest::option::of(wire_location()),
        time in wire_time(),
        serial in any::<u16>(),
    ) {
        let mut c = codec();
        decode_one(&mut c, &encode_login("355488020947422", 1).unwrap());
        let frame = decode_one(&mut c, &encode_alarm(kind, location, time, serial).unwrap());
        prop_assert_eq!(frame.integrity, Integrity::Intact);
        prop_assert_eq!(frame.serial, Some(u32::from(serial)));
        prop_assert_eq!(frame.device.as_ref().map(DeviceId::as_str), Some("355488020947422"));
        prop_assert_eq!(frame.observations.len(), 1);
        let o = &frame.observations[0];
        prop_assert_eq!(o.kind, kind);
        prop_assert_eq!(o.device_time_ms, Some(time));
        prop_assert_eq!(o.location, location);
        prop_assert_eq!(o.battery_pct, Some(100));
        prop_assert_eq!(o.signal, Some(4));
        prop_assert_eq!(ok_reply(&frame), &ack(ALARM, serial, false)[..]);
    }

    #[test]
    fn position_and_login_round_trip(
        location in wire_location(),
        time in wire_time(),
        imei in "[0-9]{15}",
        serial in any::<u16>(),
    ) {
        let mut c = codec();
        let login = decode_one(&mut c, &encode_login(&imei, serial).unwrap());
        prop_assert_eq!(login.device.as_ref().map(DeviceId::as_str), Some(imei.as_str()));
        let frame = decode_one(&mut c, &encode_position(location, time, serial).unwrap());
        prop_assert_eq!(frame.observations.len(), 1);
        prop_assert_eq!(frame.observations[0].kind, EventKind::Position);
        prop_assert_eq!(frame.observations[0].location, Some(location));
        prop_assert_eq!(frame.observations[0].device_time_ms, Some(time));
    }

    #[test]
    fn calendar_round_trip(time in wire_time()) {
        let t = civil_from_ms(time).unwrap();
        prop_assert_eq!(ms_from_civil(t), Some(time));
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        synced in any::<bool>(),
        cut in any::<usize>(),
    ) {
        let mut c = codec();
        let mut buf = BytesMut::new();
        if synced {
            buf.extend_from_slice(LOGIN_FRAME);
        }
        // Bias towards frame-like input: a start and a plausible length.
        let cut = cut % (bytes.len() + 1);
        for piece in [&bytes[..cut], &bytes[cut..]] {
            buf.extend_from_slice(piece);
            loop {
                let before = buf.len();
                match c.decode(&mut buf) {
                    Ok(Some(f)) => {
                        prop_assert!(!f.raw.is_empty() && f.raw.len() <= MAX_FRAME_LEN);
                        prop_assert_eq!(before - buf.len(), f.raw.len());
                    }
                    Ok(None) => {
                        prop_assert_eq!(buf.len(), before);
                        break;
                    }
                    Err(_) => return Ok(()),
                }
            }
        }
    }

    #[test]
    fn frames_with_random_content_never_panic(
        long in any::<bool>(),
        protocol in any::<u8>(),
        content in proptest::collection::vec(any::<u8>(), 0..200),
        serial in any::<u16>(),
    ) {
        let mut c = codec();
        decode_one(&mut c, LOGIN_FRAME);
        let frame = decode_one(&mut c, &packet(long, protocol, &content, serial));
        prop_assert_eq!(frame.integrity, Integrity::Intact);
        prop_assert_eq!(frame.serial, Some(u32::from(serial)));
    }
}
