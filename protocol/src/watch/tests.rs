//! Byte-level and property tests of the Watch codec.

use super::*;
use proptest::prelude::*;

/// Decode one frame from `bytes` followed by `[`, the first byte of a next
/// frame, and check that exactly that byte is left.
fn decode_one(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    buf.extend_from_slice(b"[");
    let frame = WatchCodec::new()
        .decode(&mut buf)
        .expect("no framing error")
        .expect("a whole frame");
    assert_eq!(&buf[..], b"[", "exactly one frame consumed");
    assert_eq!(&frame.raw[..], bytes);
    frame
}

fn ok_reply(frame: &Frame) -> &[u8] {
    match &frame.reply {
        ReplyPlan::AfterCommit { ok, failed: None } => ok,
        other => panic!("expected a reply after commit, got {other:?}"),
    }
}

fn kinds(frame: &Frame) -> Vec<EventKind> {
    frame.observations.iter().map(|o| o.kind).collect()
}

#[test]
fn lk_with_battery_is_a_heartbeat_answered_lk() {
    let bytes = concat!(
        "[",           // frame start
        "3G*",         // manufacturer
        "4700186508*", // device id
        "000B*",       // length 0x000B = 11 bytes of content
        "LK,",         // type LK
        "0,",          // steps
        "10,",         // rolls
        "100",         // battery 100 %
        "]",           // frame end
    )
    .as_bytes();
    assert_eq!(bytes, b"[3G*4700186508*000B*LK,0,10,100]");
    let frame = decode_one(bytes);
    assert_eq!(frame.integrity, Integrity::Intact);
    assert_eq!(frame.device, Some(DeviceId::parse("4700186508").unwrap()));
    assert_eq!(frame.serial, None);
    assert_eq!(frame.parse_error, None);
    assert_eq!(frame.summary, "LK");
    assert_eq!(
        frame.observations,
        vec![Observation {
            kind: EventKind::Heartbeat,
            device_time_ms: None,
            battery_pct: Some(100),
            location: None,
            signal: None,
            code: "LK".into(),
        }]
    );
    assert_eq!(ok_reply(&frame), b"[3G*4700186508*0002*LK]");
}

#[test]
fn bare_lk_and_two_value_lk_have_no_battery() {
    let frame = decode_one(b"[SG*8800000015*0002*LK]");
    assert_eq!(frame.observations[0].battery_pct, None);
    assert_eq!(ok_reply(&frame), b"[SG*8800000015*0002*LK]");
    // Real frame with a wrong length (9 for 8 bytes) and no battery value.
    let frame = decode_one(b"[SG*9081000548*0009*LK,0,100]");
    assert_eq!(frame.integrity, Integrity::BadLength);
    assert_eq!(kinds(&frame), vec![EventKind::Heartbeat]);
    assert_eq!(frame.observations[0].battery_pct, None);
    assert_eq!(ok_reply(&frame), b"[SG*9081000548*0002*LK]");
}

#[test]
fn al_lte_sos_field_by_field() {
    let bytes = concat!(
        "[",
        "3G*",         // manufacturer
        "6907919734*", // device id
        "003e*",       // length 62
        "AL_LTE,",     // alarm, LTE variant
        "170525,",     // date 17 May 2025
        "214118,",     // time 21:41:18 UTC
        "V,",          // no valid fix
        "0,N,",        // latitude
        "0,E,",        // longitude
        "0,",          // speed km/h
        "0,",          // course
        "0,",          // altitude
        "0,",          // satellites
        "0,",          // signal %
        "22,",         // battery %
        "0,",          // steps
        "0,",          // rolls
        "00010000,",   // status: bit 16 SOS
        "0,0,0",       // cells, timing advance… (not read)
        "]",
    )
    .as_bytes();
    let frame = decode_one(bytes);
    assert_eq!(frame.integrity, Integrity::Intact);
    assert_eq!(frame.parse_error, None);
    assert_eq!(frame.summary, "AL_LTE sos");
    assert_eq!(
        frame.observations,
        vec![Observation {
            kind: EventKind::Sos,
            device_time_ms: Some(1_747_518_078_000),
            battery_pct: Some(22),
            location: None,
            signal: Some(0),
            code: "AL_LTE status bit 16".into(),
        }]
    );
    // Traccar answers every AL variant with plain "AL".
    assert_eq!(ok_reply(&frame), b"[3G*6907919734*0002*AL]");
}

#[test]
fn index_variant_is_answered_with_its_index() {
    let frame = decode_one(
        b"[ZJ*014111001332708*0075*0064*AL,040418,052156,A,22.536207,N,113.938673,E,0,0,0,5,100,82,1000,50,00100000,1,255,460,0,9340,3663,35]",
    );
    assert_eq!(frame.integrity, Integrity::Intact);
    assert_eq!(frame.serial, Some(0x75));
    assert_eq!(kinds(&frame), vec![EventKind::RemovedFromWrist]);
    let o = &frame.observations[0];
    assert_eq!(o.code, "AL status bit 20");
    assert_eq!(o.battery_pct, Some(82));
    assert_eq!(o.signal, Some(100));
    assert_eq!(
        o.location,
        Some(Location {
            lat: 22.536207,
            lon: 113.938673,
            accuracy_m: None
        })
    );
    assert_eq!(ok_reply(&frame), b"[ZJ*014111001332708*0075*0002*AL]");
}

#[test]
fn sos_and_low_battery_are_two_observations_sos_first() {
    let frame = decode_one(
        b"[3G*1234567890*003e*AL,220414,134652,V,0,N,0,E,0,0,0,0,0,5,0,0,00030001,0,0,0]",
    );
    assert_eq!(kinds(&frame), vec![EventKind::Sos, EventKind::LowBattery]);
    // Bits 0 (state) and 17 (alarm) both say low battery: one observation.
    assert_eq!(frame.observations[1].code, "AL status bits 0,17");
    assert_eq!(frame.summary, "AL sos,low_battery");
}

#[test]
fn every_assigned_bit_maps_to_its_kind() {
    for (bit, kind) in [
        (0, EventKind::LowBattery),
        (1, GEOFENCE_EXIT),
        (2, GEOFENCE_ENTER),
        (14, EventKind::PowerCut),
        (16, EventKind::Sos),
        (17, EventKind::LowBattery),
        (18, GEOFENCE_EXIT),
        (19, GEOFENCE_ENTER),
        (20, EventKind::RemovedFromWrist),
        (21, EventKind::Fall),
        (22, EventKind::Fall),
    ] {
        let frame = WatchCodec::new()
            .decode(&mut BytesMut::from(
                &encode_alarm("3G", "1", 1 << bit, None, 946_684_800_000, 50)[..],
            ))
            .unwrap()
            .unwrap();
        assert_eq!(kinds(&frame), vec![kind], "bit {bit}");
    }
}

#[test]
fn al_without_alarm_bits_is_an_unspecified_alarm() {
    let frame = decode_one(
        b"[SG*9059011020*0067*AL,240123,181628,V,54.427538,N,6.409275,W,0.00,0,0,0,19,90,0,0,00000000,1,1,234,10,55C0,3B882A2,132,,10]",
    );
    assert_eq!(kinds(&frame), vec![UNSPECIFIED_ALARM]);
    assert!(UNSPECIFIED_ALARM.raises_alarm());
    assert_eq!(frame.observations[0].code, "AL status 00000000");
    // Bits 3 (worn) and 4 (moving) are states, not alarms.
    let frame =
        decode_one(b"[3G*1*003e*AL,220414,134652,V,0,N,0,E,0,0,0,0,0,5,0,0,00000018,0,0,0]");
    assert_eq!(kinds(&frame), vec![UNSPECIFIED_ALARM]);
    // An unassigned alarm-half bit in an AL is raised too, beside known ones.
    let frame =
        decode_one(b"[3G*1*003e*AL,220414,134652,V,0,N,0,E,0,0,0,0,0,5,0,0,80010000,0,0,0]");
    assert_eq!(kinds(&frame), vec![EventKind::Sos, UNSPECIFIED_ALARM]);
    assert_eq!(frame.observations[1].code, "AL status bit 31");
}

#[test]
fn wrong_length_sos_is_still_an_sos_and_answered() {
    let frame = decode_one(b"[SG*8800000015*0099*AL,220414,134652,A,22.571707,N,113.8613968,E,0.1,0.0,100,7,60,90,1000,50,00010000,4,1,460,0]");
    assert_eq!(frame.integrity, Integrity::BadLength);
    assert_eq!(frame.parse_error, None);
    assert_eq!(kinds(&frame), vec![EventKind::Sos]);
    assert_eq!(
        frame.observations[0].device_time_ms,
        Some(1_398_174_412_000)
    );
    assert_eq!(ok_reply(&frame), b"[SG*8800000015*0002*AL]");
}

#[test]
fn ud_is_a_position_with_hemispheres_applied_and_no_reply() {
    let frame = decode_one(
        b"[SG*9059011020*006b*UD2,240123,162011,A,54.427621,N,6.409190,W,0.00,0,0,8,19,88,0,0,00000000,1,1,FFFF,FFFF,FFFE,3B882A2,132,,00]",
    );
    assert_eq!(frame.integrity, Integrity::Intact);
    assert_eq!(kinds(&frame), vec![EventKind::Position]);
    let o = &frame.observations[0];
    assert_eq!(
        o.location.map(|l| (l.lat, l.lon)),
        Some((54.427621, -6.40919))
    );
    assert_eq!((o.battery_pct, o.signal), (Some(88), Some(19)));
    assert_eq!(frame.reply, ReplyPlan::None);
    // A negative value with W stays west; an empty hemisphere keeps the sign.
    assert_eq!(coordinate("-84.1422119", "W", 180.0), Some(-84.1422119));
    assert_eq!(coordinate("-84.1422119", "", 180.0), Some(-84.1422119));
    assert_eq!(coordinate("91.0", "N", 90.0), None);
    assert_eq!(coordinate("1.0", "X", 90.0), None);
}

#[test]
fn ud_with_sos_bit_reports_position_and_sos() {
    let frame =
        decode_one(b"[3G*1*0000*UD,220414,134652,V,0,N,0,E,0,0,0,0,0,5,0,0,80010000,0,0,0]");
    // The unknown bit 31 counts only in an AL.
    assert_eq!(kinds(&frame), vec![EventKind::Position, EventKind::Sos]);
    assert_eq!(frame.reply, ReplyPlan::None);
}

#[test]
fn tkq_and_init_are_answered_health_is_not() {
    let frame = decode_one(b"[3G*8800000015*0003*TKQ]");
    assert_eq!(ok_reply(&frame), b"[3G*8800000015*0003*TKQ]");
    assert!(frame.observations.is_empty());
    let frame = decode_one(b"[3G*8800000015*0004*TKQ2]");
    assert_eq!(ok_reply(&frame), b"[3G*8800000015*0004*TKQ2]");
    let frame = decode_one(b"[3G*8800000015*0004*INIT]");
    assert_eq!(ok_reply(&frame), b"[3G*8800000015*0006*INIT,1]");
    let frame = decode_one(b"[3G*4700609403*0013*bphrt,120,79,73,,,,]");
    assert_eq!(frame.reply, ReplyPlan::None);
    assert!(frame.observations.is_empty());
    assert_eq!(frame.summary, "bphrt: blood pressure 120/79, heart rate 73");
    let frame = decode_one(b"[ZJ*5678901234*0001*0009*TEMP,36.5]");
    assert_eq!(frame.serial, Some(1));
    assert_eq!(frame.summary, "TEMP: body temperature 36.5 °C");
    let frame = decode_one(b"[3G*1*0007*CONFIG]");
    assert_eq!(frame.summary, "CONFIG (not decoded)");
    assert_eq!(frame.integrity, Integrity::BadLength);
}

#[test]
fn escaped_content_is_unescaped_and_either_length_is_accepted() {
    // "TK,}\x03" carries the audio byte ']' escaped: 5 bytes on the wire, 4 meant.
    for len in [b"0005", b"0004"] {
        let mut bytes = b"[3G*1*".to_vec();
        bytes.extend_from_slice(len);
        bytes.extend_from_slice(b"*TK,}\x03]");
        let frame = decode_one(&bytes);
        assert_eq!(frame.integrity, Integrity::Intact);
        assert_eq!(frame.summary, "TK (not decoded)");
    }
    assert_eq!(
        unescape(b"a}\x01}\x02}\x03}\x04}\x05}\x09}"),
        b"a}[],*}\x09}"
    );
}

#[test]
fn every_prefix_is_incomplete_and_left_alone() {
    let full = b"[ZJ*689466020014198*0003*0113*AL,221121,085515,V,00.000000,N,000.000000,E,0,0,0,0,0,44,0,0,00100000,1,255]";
    for cut in 0..full.len() {
        let mut part = BytesMut::from(&full[..cut]);
        assert_eq!(
            WatchCodec::new().decode(&mut part),
            Ok(None),
            "cut at {cut}"
        );
        assert_eq!(part.len(), cut);
    }
}

#[test]
fn garbage_before_a_frame_is_cut_and_kept_filler_is_dropped() {
    let mut buf = BytesMut::from(&b"\r\nHELLO[SG*1*0002*LK]\r\n"[..]);
    let mut codec = WatchCodec::new();
    let garbage = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&garbage.raw[..], b"HELLO");
    assert_eq!(
        garbage.parse_error.as_deref(),
        Some("5 bytes outside any frame")
    );
    assert_eq!(garbage.reply, ReplyPlan::None);
    let lk = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&lk.raw[..], b"[SG*1*0002*LK]");
    // The trailing CRLF is consumed so that an idle link looks idle.
    assert_eq!(codec.decode(&mut buf), Ok(None));
    assert!(buf.is_empty());
}

#[test]
fn no_frame_start_within_the_cap_is_a_framing_error() {
    let mut buf = BytesMut::from(&vec![b'x'; MAX_FRAME_LEN - 1][..]);
    let mut codec = WatchCodec::new();
    assert_eq!(codec.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"x");
    let err = codec.decode(&mut buf).unwrap_err();
    assert_eq!(err.reason, "bad_start");
    assert_eq!(err.reply, None);
    // A '[' beyond the cap does not make the garbage before it a frame.
    buf.extend_from_slice(b"[SG*1*0002*LK]");
    assert_eq!(codec.decode(&mut buf).unwrap_err().reason, "bad_start");
}

#[test]
fn oversize_frame_is_skipped_to_its_end_and_the_link_carries_on() {
    let mut codec = WatchCodec::new();
    let mut buf = BytesMut::from(&b"[3G*1234567890*2710*img,"[..]);
    let body = vec![b'A'; 10_000 - 4];
    // Deliver in pieces, as TCP would; the buffer never grows past the cap.
    for chunk in body.chunks(1500) {
        buf.extend_from_slice(chunk);
        assert_eq!(codec.decode(&mut buf), Ok(None));
        assert!(buf.len() < MAX_FRAME_LEN);
    }
    buf.extend_from_slice(b"][3G*1234567890*0002*LK]");
    let img = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(img.raw.len(), MAX_FRAME_LEN);
    assert_eq!(img.device, Some(DeviceId::parse("1234567890").unwrap()));
    assert_eq!(img.integrity, Integrity::BadLength);
    assert_eq!(img.reply, ReplyPlan::None);
    let why = img.parse_error.unwrap();
    assert!(why.contains("10021 bytes"), "{why}");
    let lk = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(ok_reply(&lk), b"[3G*1234567890*0002*LK]");
    assert!(buf.is_empty());
}

#[test]
fn frame_cut_short_by_the_next_one_still_reports_its_alarm_unanswered() {
    let mut codec = WatchCodec::new();
    let mut buf = BytesMut::from(&b"[3G*1234567890*003e*AL,170525,2141[3G*1234567890*0002*LK]"[..]);
    let cut = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&cut.raw[..], b"[3G*1234567890*003e*AL,170525,2141");
    assert_eq!(cut.integrity, Integrity::BadLength);
    assert_eq!(kinds(&cut), vec![UNSPECIFIED_ALARM]);
    assert_eq!(cut.reply, ReplyPlan::None);
    assert!(cut.parse_error.unwrap().contains("cut short"));
    let lk = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(kinds(&lk), vec![EventKind::Heartbeat]);
}

#[test]
fn bad_headers_are_parse_errors_not_framing_errors() {
    for (bytes, why) in [
        (&b"[]"[..], "no '*' after the manufacturer"),
        (b"[SG]", "no '*' after the manufacturer"),
        (b"[S G*1*0002*LK]", "manufacturer \"S G\""),
        (b"[SG*1]", "no '*' after the device id"),
        (b"[SG*1*0002]", "no length field"),
    ] {
        let frame = decode_one(bytes);
        assert!(
            frame.parse_error.as_deref().unwrap().contains(why),
            "{frame:?}"
        );
        assert_eq!(frame.reply, ReplyPlan::None);
        assert!(frame.observations.is_empty());
    }
    // A bad device id: the alarm is still reported, but not answered.
    let frame = decode_one(b"[SG*a b*0002*AL]");
    assert_eq!(frame.device, None);
    assert_eq!(kinds(&frame), vec![UNSPECIFIED_ALARM]);
    assert_eq!(frame.reply, ReplyPlan::None);
}

#[test]
fn device_time_handles_calendar_edges() {
    assert_eq!(device_time("010100", "000000"), Some(946_684_800_000));
    assert_eq!(device_time("311299", "235959"), Some(4_102_444_799_000));
    assert_eq!(device_time("290224", "000000"), Some(1_709_164_800_000));
    assert_eq!(device_time("290223", "000000"), None);
    assert_eq!(device_time("000000", "000000"), None);
    assert_eq!(device_time("170525", "246000"), None);
    assert_eq!(device_time("17052", "214118"), None);
    assert_eq!(device_time("1+0525", "214118"), None);
}

fn location() -> impl Strategy<Value = Option<Location>> {
    // Micro-degrees, as the watches write them: these survive the text exactly.
    proptest::option::of(
        (-90_000_000i64..=90_000_000, -180_000_000i64..=180_000_000).prop_map(|(lat, lon)| {
            Location {
                lat: lat as f64 / 1e6,
                lon: lon as f64 / 1e6,
                accuracy_m: None,
            }
        }),
    )
}

proptest! {
    #[test]
    fn alarm_round_trips(
        status in any::<u32>(),
        loc in location(),
        secs in 946_684_800u64..4_102_444_800,
        battery in 0u8..=100,
    ) {
        let time_ms = secs * 1000;
        let bytes = encode_alarm("3G", "8800000015", status, loc, time_ms, battery);
        let frame = decode_one(&bytes);
        prop_assert_eq!(frame.integrity, Integrity::Intact);
        prop_assert_eq!(&frame.parse_error, &None);
        prop_assert_eq!(ok_reply(&frame), b"[3G*8800000015*0002*AL]");
        prop_assert!(!frame.observations.is_empty());
        let mut expected: Vec<EventKind> = Vec::new();
        for bit in 0..32u8 {
            if status & (1 << bit) != 0 {
                let kind = STATUS_BITS.iter().find(|(b, _)| *b == bit).map(|(_, k)| *k)
                    .or((bit >= ALARM_HALF).then_some(UNSPECIFIED_ALARM));
                if let Some(k) = kind.filter(|k| !expected.contains(k)) {
                    expected.push(k);
                }
            }
        }
        if expected.is_empty() {
            expected.push(UNSPECIFIED_ALARM);
        }
        let mut got = kinds(&frame);
        got.sort_by_key(|k| k.name());
        expected.sort_by_key(|k| k.name());
        prop_assert_eq!(got, expected);
        for o in &frame.observations {
            prop_assert_eq!(o.device_time_ms, Some(time_ms));
            prop_assert_eq!(o.battery_pct, Some(battery));
            prop_assert_eq!(o.location, loc);
        }
    }

    #[test]
    fn position_round_trips(
        loc in location(),
        secs in 946_684_800u64..4_102_444_800,
        battery in 0u8..=100,
    ) {
        let bytes = encode_position("SG", "9059011020", loc, secs * 1000, battery);
        let frame = decode_one(&bytes);
        prop_assert_eq!(frame.integrity, Integrity::Intact);
        prop_assert_eq!(frame.reply, ReplyPlan::None);
        prop_assert_eq!(frame.observations.len(), 1);
        let o = &frame.observations[0];
        prop_assert_eq!(o.kind, EventKind::Position);
        prop_assert_eq!(o.location, loc);
        prop_assert_eq!(o.device_time_ms, Some(secs * 1000));
        prop_assert_eq!(o.battery_pct, Some(battery));
    }

    #[test]
    fn lk_round_trips(battery in proptest::option::of(0u8..=100)) {
        let frame = decode_one(&encode_lk("SG", "9081000548", battery));
        prop_assert_eq!(frame.integrity, Integrity::Intact);
        prop_assert_eq!(kinds(&frame), vec![EventKind::Heartbeat]);
        prop_assert_eq!(frame.observations[0].battery_pct, battery);
        prop_assert_eq!(ok_reply(&frame), b"[SG*9081000548*0002*LK]");
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..9000), cut in any::<usize>()) {
        let mut codec = WatchCodec::new();
        let mut buf = BytesMut::new();
        let cut = cut % (data.len() + 1);
        for piece in [&data[..cut], &data[cut..]] {
            buf.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        prop_assert!(!frame.raw.is_empty() && frame.raw.len() <= MAX_FRAME_LEN);
                    }
                    Ok(None) => break,
                    // The server closes the connection: nothing more is read.
                    Err(e) => {
                        prop_assert_eq!(e.reason, "bad_start");
                        return Ok(());
                    }
                }
            }
            prop_assert!(buf.len() < MAX_FRAME_LEN);
        }
    }

    #[test]
    fn bracketed_noise_never_panics(
        inner in proptest::collection::vec(prop_oneof![
            Just(b'*'), Just(b','), Just(b'}'), Just(b'A'), Just(b'L'), Just(b'0'), Just(b'1'),
            Just(b'.'), Just(b'N'), Just(b'W'), Just(b'-'), any::<u8>()
        ], 0..120),
    ) {
        let mut bytes = b"[".to_vec();
        bytes.extend(inner.iter().copied().filter(|b| *b != b'[' && *b != b']'));
        bytes.push(b']');
        let frame = decode_one(&bytes);
        prop_assert_eq!(frame.raw.len(), bytes.len());
    }
}
