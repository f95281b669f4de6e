//! Byte-level and property tests of the H02 codec.

use super::*;
use proptest::prelude::*;

fn fixed_clock() -> u64 {
    1_764_000_000_000 // 2025-11-24 16:00:00 UTC
}

fn decode_one(bytes: &[u8]) -> (Frame, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let frame = H02Codec::with_clock(fixed_clock)
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    (frame, buf)
}

#[test]
fn v1_with_sos_and_power_cut_reports_both_and_position() {
    let mut bytes =
        b"*HQ,4210209006,V1,201812,A,2608.9437,N,08016.2521,W,000.80,000,150317,FFF7FFFD#".to_vec();
    //  *HQ            manufacturer
    //  4210209006     device id
    //  V1             position report
    //  201812         time 20:18:12 UTC
    //  A              valid fix
    //  2608.9437,N    26° 08.9437' N
    //  08016.2521,W   80° 16.2521' W
    //  000.80,000     speed (knots), course
    //  150317         date 15 March 2017
    //  FFF7FFFD       status: bit 19 = 0 (power cut), bit 1 = 0 (SOS)
    bytes.push(b'*'); // first byte of the next frame
    let (f, rest) = decode_one(&bytes);
    assert_eq!(&rest[..], b"*");
    assert_eq!(f.integrity, Integrity::Intact);
    assert_eq!(f.device.unwrap().as_str(), "4210209006");
    assert_eq!(f.parse_error, None);
    let kinds: Vec<_> = f.observations.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Sos, EventKind::PowerCut, EventKind::Position]
    );
    let loc = f.observations[0].location.unwrap();
    assert!((loc.lat - (26.0 + 8.9437 / 60.0)).abs() < 1e-9);
    assert!((loc.lon + (80.0 + 16.2521 / 60.0)).abs() < 1e-9);
    assert_eq!(
        f.observations[0].device_time_ms,
        Some(1_489_609_092_000) // 2017-03-15 20:18:12 UTC
    );
    assert_eq!(
        f.reply,
        ReplyPlan::AfterCommit {
            ok: Bytes::from_static(b"*HQ,4210209006,V4,V1,20251124160000#"),
            failed: None
        }
    );
}

#[test]
fn both_sos_bits_make_one_sos() {
    let alarms = status_alarms(!((1 << 1) | (1 << 18)));
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].0, EventKind::Sos);
    assert!(alarms[0].1.contains("bit 1") && alarms[0].1.contains("bit 18"));
    assert!(status_alarms(u32::MAX).is_empty());
    assert_eq!(status_alarms(0).len(), 4); // tamper, SOS, overspeed, power cut
}

#[test]
fn heartbeat_is_echoed_and_keeps_battery() {
    let (f, rest) = decode_one(b"*HQ,135790246811220,HTBT,100#\r\n*");
    assert_eq!(&rest[..], b"\r\n*");
    assert_eq!(f.observations.len(), 1);
    assert_eq!(f.observations[0].kind, EventKind::Heartbeat);
    assert_eq!(f.observations[0].battery_pct, Some(100));
    assert_eq!(
        f.reply,
        ReplyPlan::AfterCommit {
            ok: Bytes::from_static(b"*HQ,135790246811220,HTBT#"),
            failed: None
        }
    );
    let (f, _) = decode_one(b"*HQ,135790246811220,HTBT#");
    assert!(f.observations.is_empty());
}

#[test]
fn link_carries_signal_and_battery() {
    let (f, _) = decode_one(b"*HQ,1400046168,LINK,112725,20,8,67,0,0,181018,FFFFFBFF#");
    assert_eq!(f.parse_error, None);
    assert_eq!(f.observations.len(), 1);
    let o = &f.observations[0];
    assert_eq!(
        (o.kind, o.battery_pct, o.signal),
        (EventKind::Heartbeat, Some(67), Some(20))
    );
    assert_eq!(f.reply, ReplyPlan::None);
}

#[test]
fn nbr_reports_status_alarms_without_location() {
    let (f, _) = decode_one(
        b"*HQ,353505220903211,NBR,044156,260,03,255,5,4042,17351,12,4042,17352,10,4042,17353,9,4042,17354,8,4042,17355,7,260317,FFFFFFFD#",
    );
    assert_eq!(f.parse_error, None);
    assert_eq!(f.observations.len(), 1);
    assert_eq!(f.observations[0].kind, EventKind::Sos);
    assert_eq!(f.observations[0].location, None);
    assert!(matches!(f.reply, ReplyPlan::AfterCommit { .. }));
}

#[test]
fn binary_frame_is_cut_and_decoded() {
    #[rustfmt::skip]
    let mut bytes = vec![
        0x24,                               // '$' binary marker
        0x41, 0x06, 0x00, 0x08, 0x26,       // id 4106000826 (BCD)
        0x21, 0x53, 0x21,                   // time 21:53:21
        0x31, 0x08, 0x15,                   // date 31/08/15
        0x04, 0x41, 0x93, 0x90,             // latitude 04° 41.9390'
        0x06,                               // battery level 6 -> 100 %
        0x07, 0x40, 0x41, 0x83, 0x06,       // longitude 074° 04.1830', flags 0x6: valid, N, W
        0x00, 0x00, 0x00,                   // speed 000, course 000
        0xff, 0xff, 0xfb, 0xfd,             // status: bit 1 = 0 (SOS)
        0xff, 0x00, 0x15, 0x06, 0x00, 0x00, 0x00, 0x2c, 0x02, 0xdc, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x1f, // tail
    ];
    assert_eq!(bytes.len(), BINARY_LONG_LEN);
    bytes.push(b'$'); // next frame
    let (f, rest) = decode_one(&bytes);
    assert_eq!(&rest[..], b"$");
    assert_eq!(f.device.unwrap().as_str(), "4106000826");
    let kinds: Vec<_> = f.observations.iter().map(|o| o.kind).collect();
    assert_eq!(kinds, [EventKind::Sos, EventKind::Position]);
    let o = &f.observations[1];
    let loc = o.location.unwrap();
    assert!((loc.lat - 4.69898).abs() < 1e-5 && (loc.lon + 74.06971).abs() < 1e-5);
    assert_eq!(o.battery_pct, Some(100));
    assert_eq!(o.device_time_ms, Some(1_441_058_001_000));
    assert_eq!(f.reply, ReplyPlan::None);
}

#[test]
fn incomplete_text_waits_and_garbage_resyncs() {
    let full = b"*HQ,1,V1,201812,A,2608.9437,N,08016.2521,W,0,0,150317,FFFFFFFF#";
    let mut codec = H02Codec::new();
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(codec.decode(&mut buf), Ok(None), "cut at {cut}");
        assert_eq!(buf.len(), cut);
    }
    let mut buf = BytesMut::from(&b"junk*HQ,1,HTBT#"[..]);
    let junk = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&junk.raw[..], b"junk");
    assert!(junk.parse_error.is_some());
    let f = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(f.summary, "HTBT");
    // A frame cut short by the next '*' is kept apart.
    let mut buf = BytesMut::from(&b"*HQ,1,V1,20*HQ,1,HTBT#"[..]);
    let cut = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&cut.raw[..], b"*HQ,1,V1,20");
    assert!(cut.parse_error.is_some());
    assert_eq!(&buf[..], b"*HQ,1,HTBT#");
}

#[test]
fn malformed_fields_give_a_reason() {
    let (f, _) = decode_one(b"*HQ,1,V1,201812,A,26x8.9437,N,08016.2521,W,0,0,150317,FFFFFFFF#");
    assert!(f.parse_error.unwrap().contains("coordinate"));
    let (f, _) = decode_one(b"*HQ,1,V1,201812,A,2608.9437,N,08016.2521,W,0,0,150317,FFFFFFFG#");
    assert!(f.parse_error.unwrap().contains("status"));
    let (f, _) = decode_one(b"*HQ,a b,V1#");
    assert!(f.parse_error.unwrap().contains("device id"));
}

#[test]
fn unterminated_text_over_the_cap_is_a_framing_error() {
    let mut buf = BytesMut::from(&b"*HQ,"[..]);
    buf.extend_from_slice(&[b'1'; MAX_TEXT_LEN]);
    let e = H02Codec::new().decode(&mut buf).unwrap_err();
    assert_eq!(e.reason, "too_long");
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), cut in any::<usize>()) {
        let mut codec = H02Codec::new();
        let mut buf = BytesMut::new();
        let cut = cut % (data.len() + 1);
        for piece in [&data[..cut], &data[cut..]] {
            buf.extend_from_slice(piece);
            while let Ok(Some(f)) = codec.decode(&mut buf) {
                prop_assert!(!f.raw.is_empty() && f.raw.len() <= MAX_TEXT_LEN);
            }
        }
    }

    #[test]
    fn v1_round_trips(
        id in "[0-9]{10,15}",
        secs in 946_684_800u64..4_102_444_799,
        lat in -89.9f64..89.9,
        lon in -179.9f64..179.9,
        sos in any::<bool>(),
        cut in any::<bool>(),
        tamper in any::<bool>(),
    ) {
        let id = DeviceId::parse(&id).unwrap();
        let mut alarms = Vec::new();
        if tamper { alarms.push(EventKind::Tamper); }
        if sos { alarms.push(EventKind::Sos); }
        if cut { alarms.push(EventKind::PowerCut); }
        let loc = Location { lat, lon, accuracy_m: None };
        let bytes = encode_v1(&id, secs * 1000, loc, &alarms);
        let (f, rest) = decode_one(&bytes);
        prop_assert!(rest.is_empty());
        prop_assert_eq!(f.parse_error, None);
        prop_assert_eq!(f.device, Some(id));
        let kinds: Vec<_> = f.observations.iter().map(|o| o.kind).collect();
        let mut expected = alarms.clone();
        expected.push(EventKind::Position);
        prop_assert_eq!(kinds, expected);
        for o in &f.observations {
            prop_assert_eq!(o.device_time_ms, Some(secs * 1000));
            let l = o.location.unwrap();
            // The text carries 1/10000 of a minute: 1.7e-6 degrees.
            prop_assert!((l.lat - lat).abs() < 2e-6 && (l.lon - lon).abs() < 2e-6);
        }
    }

    #[test]
    fn heartbeat_round_trips(id in "[0-9]{15}", battery in 0u8..=100) {
        let id = DeviceId::parse(&id).unwrap();
        let (f, _) = decode_one(&encode_heartbeat(&id, Some(battery)));
        prop_assert_eq!(f.device, Some(id));
        prop_assert_eq!(f.observations.len(), 1);
        prop_assert_eq!(f.observations[0].battery_pct, Some(battery));
    }
}
