//! Byte-level and property tests of the SIA DC-09 codec.

use super::*;
use proptest::prelude::*;

const KEY: &[u8] = b"AAAAAAAAAAAAAAAA";
/// 2021-04-22 20:45:46 UTC, the timestamp of the panic frame below.
const T_PANIC: i64 = 1_619_124_346_000;

fn codec_at(now_ms: i64) -> SiaDc09Codec {
    let keys: KeyLookup =
        Arc::new(|acct: &str| (acct == "AAAB" || acct == "K1").then(|| KEY.to_vec()));
    SiaDc09Codec::new(keys, Arc::new(move || now_ms))
}

fn one(codec: &mut SiaDc09Codec, bytes: &[u8]) -> (Frame, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    (frame, buf)
}

fn reply_ok(frame: &Frame) -> &[u8] {
    match &frame.reply {
        ReplyPlan::AfterCommit { ok, .. } => ok,
        other => panic!("no fixed reply for {}: {other:?}", frame.summary),
    }
}

#[test]
fn crc_is_crc16_arc() {
    // The check value of CRC-16/ARC.
    assert_eq!(crc16(b"123456789"), 0xBB3D);
    // fioletoven/dc09's message test, CRC F4D2.
    assert_eq!(
        crc16(br#""SIA-DCS"0001RF3L77#1234[#1234|NRR|Atest]"#),
        0xF4D2
    );
}

#[test]
fn panic_with_position_field_by_field() {
    #[rustfmt::skip]
    let frame: &[u8] = concat!(
        "\n",                          // LF: frame start
        "5B09",                        // CRC-16/ARC of everything from the first '"' to before CR
        "0059",                        // length field: says 0x59, the real length is 0x5B (kept, flagged)
        "\"SIA-DCS\"",                 // ID token: SIA DC-03 data, not encrypted
        "0004",                        // sequence number
        "L0",                          // account prefix (line) 0, no receiver number
        "#1111",                       // account 1111
        "[#1111|Nri1/PA501]",          // data: account again, new event, area 1, PA (panic) zone 501
        "[X006E07.7777777]",           // extended data: longitude 6° 07.7777777' E
        "[Y49N06.6666666]",            // extended data: latitude 49° 06.6666666' N
        "_20:45:46,04-22-2021",        // timestamp (UTC)
        "\r",                          // CR: frame end
        "\n",                          // first byte of the next frame
    ).as_bytes();
    let (f, rest) = one(&mut codec_at(T_PANIC), frame);
    assert_eq!(&rest[..], b"\n", "exactly one frame consumed");
    assert_eq!(f.raw.len(), frame.len() - 1);
    assert_eq!(f.integrity, Integrity::BadLength);
    assert_eq!(f.device.as_ref().map(DeviceId::as_str), Some("1111"));
    assert_eq!(f.serial, Some(4));
    assert_eq!(f.parse_error, None);
    assert_eq!(f.summary, "SIA-DCS PA 501 area 1");
    assert_eq!(f.observations.len(), 1);
    let o = &f.observations[0];
    assert_eq!(o.kind, EventKind::Sos);
    assert_eq!(o.code, "SIA PA");
    assert_eq!(o.device_time_ms, Some(T_PANIC as u64));
    let loc = o.location.unwrap();
    assert!((loc.lon - (6.0 + 7.777_777_7 / 60.0)).abs() < 1e-9);
    assert!((loc.lat - (49.0 + 6.666_666_6 / 60.0)).abs() < 1e-9);
    // The CRC holds, so the wrong length is a sender bug: answered, after the commit.
    // (pysiaalarm writes a literal "None" for the absent receiver: 2BD30015"ACK"0004NoneL0…)
    assert_eq!(reply_ok(&f), b"\nB2840012\"ACK\"0004L0#1111[]\r");
}

#[test]
fn contact_id_field_by_field() {
    let content = r#""ADM-CID"0247R4F39L4F39#4F39[#4F39|1101 01 057]"#;
    let wire = format!(
        "\n{:04X}{:04X}{content}\r",
        crc16(content.as_bytes()),
        content.len()
    );
    let (f, rest) = one(&mut codec_at(0), wire.as_bytes());
    assert!(rest.is_empty());
    assert_eq!(f.integrity, Integrity::Intact);
    assert_eq!(f.serial, Some(247));
    assert_eq!(f.summary, "ADM-CID 1101 group 01 zone 057");
    assert_eq!(f.observations[0].kind, EventKind::Sos); // 101 personal emergency
    assert_eq!(f.observations[0].code, "CID 1101");
    assert_eq!(f.observations[0].device_time_ms, None);
    // Echoes receiver R4F39, prefix L4F39 and account #4F39 exactly (pysiaalarm's ACK).
    assert_eq!(reply_ok(&f), b"\n2081001A\"ACK\"0247R4F39L4F39#4F39[]\r");
}

/// While the receiver cannot store, a message with events is answered DUH at
/// once (the server holds it and stores it later), echoing the same fields.
#[test]
fn a_message_with_events_has_duh_for_while_the_store_is_away() {
    let content = r#""ADM-CID"0247R4F39L4F39#4F39[#4F39|1101 01 057]"#;
    let wire = format!(
        "\n{:04X}{:04X}{content}\r",
        crc16(content.as_bytes()),
        content.len()
    );
    let (f, _) = one(&mut codec_at(0), wire.as_bytes());
    let ReplyPlan::AfterCommit { failed, .. } = &f.reply else {
        panic!("answered after the commit");
    };
    assert_eq!(
        failed.as_deref(),
        Some(&duh("0247", Some("4F39"), Some("4F39"), Some("4F39"))[..])
    );
    // A damaged copy is not answered at all, down or not: the panel repeats it.
    let zone = wire.find("057]").unwrap() + 2;
    let mut damaged = wire.into_bytes();
    damaged[zone] = b'8';
    let (f, _) = one(&mut codec_at(0), &damaged);
    assert_eq!(f.reply, ReplyPlan::None);
}

#[test]
fn restore_never_raises_an_alarm() {
    for event in [
        "100", "101", "102", "110", "120", "130", "301", "302", "999", "1A0",
    ] {
        assert!(!cid_kind(3, event).raises_alarm(), "CID 3{event}");
    }
    assert_eq!(cid_kind(3, "101"), EventKind::Cancel);
    assert_eq!(cid_kind(3, "301"), EventKind::PowerRestored);
    assert_eq!(cid_kind(1, "301"), EventKind::PowerCut);
    assert_eq!(cid_kind(6, "101"), EventKind::Sos);
    assert_eq!(cid_kind(1, "110"), OTHER_ALARM);
    assert_eq!(cid_kind(1, "102"), OTHER_ALARM);
    assert_eq!(cid_kind(1, "384"), EventKind::LowBattery);
    assert_eq!(cid_kind(1, "383"), EventKind::Tamper);
    assert_eq!(cid_kind(1, "602"), EventKind::PeriodicTest);
    assert_eq!(cid_kind(1, "401"), OTHER_INFO);
    for code in ["MH", "PR", "QR", "FR", "KR", "BR", "AR", "YR", "TR"] {
        assert!(!sia_kind(code).raises_alarm(), "SIA {code}");
    }
    assert_eq!(sia_kind("FA"), OTHER_ALARM);
    assert_eq!(sia_kind("NA"), OTHER_ALARM); // no activity
    assert_eq!(sia_kind("ZZ"), OTHER_TROUBLE);
    assert_eq!(sia_kind("CA"), OTHER_INFO);
    assert_eq!(sia_kind("YA"), OTHER_TROUBLE);
}

#[test]
fn sia_data_forms() {
    let e = parse_sia("#123456|Nri1CL0^VX FRONTE ^").unwrap();
    assert_eq!(
        (e[0].code.as_str(), e[0].address.as_str()),
        ("CL", "0^VX FRONTE ^")
    );
    assert_eq!(e[0].area.as_deref(), Some("1"));
    let e = parse_sia("Nri1/BA01/BA02^a/b^").unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e[1].address, "02^a/b^");
    let e = parse_sia("#1234|NRR|Atest").unwrap();
    assert_eq!(e[0].code, "RR");
    assert!(matches!(parse_sia(""), Err(SiaDc09Error::NoEvent(_))));
    assert!(matches!(parse_sia("#1234"), Err(SiaDc09Error::NoEvent(_))));
    assert!(matches!(parse_sia("N!!"), Err(SiaDc09Error::BadSiaData(_))));
    let c = parse_cid("#12345A|1110 00 129").unwrap();
    assert_eq!(
        (
            c.qualifier,
            c.event.as_str(),
            c.partition.as_str(),
            c.zone.as_str()
        ),
        (1, "110", "00", "129")
    );
    assert!(parse_cid("111000129").is_ok());
    assert!(parse_cid("1110 00").is_err());
}

#[test]
fn bad_crc_is_stored_flagged_and_not_answered() {
    let wire = b"\n0000004D\"SIA-DCS\"0001L0#1234[#1234|Nri1/PA501]\r";
    let (f, _) = one(&mut codec_at(0), wire);
    assert_eq!(f.integrity, Integrity::BadChecksum);
    assert_eq!(f.observations[0].kind, EventKind::Sos);
    assert_eq!(f.reply, ReplyPlan::None);
}

#[test]
fn timestamp_window_is_plus_20_minus_40() {
    let wire = encode_message(
        "1234",
        9,
        None,
        Some("0"),
        Payload::SiaDcs("#1234|Nri1/MA01"),
        None,
        Some(T_PANIC),
    )
    .unwrap();
    let at = |now: i64| {
        let (f, _) = one(&mut codec_at(now), &wire);
        assert_eq!(
            f.observations[0].kind,
            EventKind::Medical,
            "stored either way"
        );
        reply_ok(&f).to_vec()
    };
    let ack = ack("0009", None, Some("0"), Some("1234"));
    assert_eq!(at(T_PANIC + 40_000), ack); // message 40 s old: in
    assert_eq!(at(T_PANIC - 20_000), ack); // message 20 s ahead: in
    assert_eq!(at(T_PANIC + 41_000), nak(T_PANIC + 41_000));
    assert_eq!(at(T_PANIC - 21_000), nak(T_PANIC - 21_000));
    // The standard only requires the test for encrypted messages; it can be limited to them.
    let cfg = Config {
        check_plain_timestamps: false,
        ..Config::default()
    };
    let mut lax = SiaDc09Codec::with_config(Arc::new(|_: &str| None), Arc::new(|| 0), cfg);
    let (f, _) = one(&mut lax, &wire);
    assert_eq!(reply_ok(&f), &ack[..]);
}

#[test]
fn nak_bytes_match_the_standard() {
    // fioletoven/dc09's NAK test frame: 2025-09-24 16:20:01 UTC.
    let t = parse_timestamp("_16:20:01,09-24-2025").unwrap();
    assert_eq!(
        &nak(t)[..],
        b"\nE4410025\"NAK\"0000R0L0A0[]_16:20:01,09-24-2025\r"
    );
    // A NAK sent to the receiver is read, stored and never answered.
    let (f, _) = one(&mut codec_at(t), &nak(t));
    assert_eq!(f.reply, ReplyPlan::None);
    assert!(f.parse_error.unwrap().contains("answer"));
    let m = parse_message(&nak(t), None).unwrap();
    assert_eq!(
        (m.token.as_str(), m.account.as_deref(), m.line.as_deref()),
        ("NAK", None, Some("0"))
    );
}

#[test]
fn encrypted_null_and_encrypted_ack() {
    // pysiaalarm's encrypted NULL; key "AAAAAAAAAAAAAAAA"; 2020-07-05 18:24:52 UTC inside.
    let wire = b"\n76D80055\"*NULL\"0000R0L0#AAAB[B4BC8B40D0E6D959D6BEA78E88CC0B2155741A3C44FBB96D476A3E557CAD64D9\r";
    let t = parse_timestamp("_18:24:52,07-05-2020").unwrap();
    let (f, _) = one(&mut codec_at(t), wire);
    assert_eq!(f.integrity, Integrity::Intact);
    assert_eq!(f.observations[0].kind, EventKind::Heartbeat);
    assert_eq!(f.observations[0].device_time_ms, Some(t as u64));
    let ack = reply_ok(&f).to_vec();
    assert!(ack.starts_with(b"\n"));
    assert_eq!(&ack[9..29], b"\"*ACK\"0000R0L0#AAAB[");
    let m = parse_message(&ack, Some(KEY)).unwrap();
    assert_eq!(
        (m.token.as_str(), m.encrypted, m.data.as_str()),
        ("ACK", true, "")
    );
    assert_eq!(m.timestamp_ms, Some(t));
    assert!(m.crc_ok && m.length_ok);
    // Outside the window the answer is a plain NAK.
    let (f, _) = one(&mut codec_at(t + 3_600_000), wire);
    assert_eq!(reply_ok(&f), &nak(t + 3_600_000)[..]);
}

#[test]
fn encrypted_without_key_is_kept_and_not_answered() {
    let wire = encode_message(
        "77",
        1,
        None,
        Some("0"),
        Payload::SiaDcs("#77|Nri1/PA1"),
        Some(KEY),
        Some(0),
    )
    .unwrap();
    let (f, _) = one(&mut codec_at(0), &wire);
    assert_eq!(f.device.as_ref().map(DeviceId::as_str), Some("77"));
    assert!(f.observations.is_empty());
    assert_eq!(f.reply, ReplyPlan::None);
    assert!(f.parse_error.unwrap().contains("no key"));
    // A known account with another key: the plaintext is not text.
    let other: KeyLookup = Arc::new(|_: &str| Some(b"BBBBBBBBBBBBBBBB".to_vec()));
    let (f, _) = one(&mut SiaDc09Codec::new(other, Arc::new(|| 0)), &wire);
    assert_eq!(f.reply, ReplyPlan::None);
    assert!(f.parse_error.is_some());
}

/// Encrypt `pad` + `rest` as a transmitter would (the pad chosen by the test).
fn encrypted_with_pad(pad: &[u8], rest: &str, account: &str, seq: &str, token: &str) -> Bytes {
    let mut clear = pad.to_vec();
    clear.extend_from_slice(rest.as_bytes());
    assert_eq!(
        clear.len() % 16,
        0,
        "whole blocks: pad {} + {}",
        pad.len(),
        rest.len()
    );
    cbc_encrypt(KEY, &mut clear).unwrap();
    let hex: String = clear.iter().map(|b| format!("{b:02X}")).collect();
    frame(&format!("\"*{token}\"{seq}L0#{account}[{hex}"))
}

#[test]
fn any_pad_the_standard_allows_is_read() {
    // DC-09-2026 §5.4.4.3: pad bytes are anything but `[`, `]` and `|`. One
    // transmitter pads with binary (0–255), another with control characters.
    let t = parse_timestamp("_10:00:00,01-02-2026").unwrap();
    let rest = "|#K1|1101 01 001]_10:00:00,01-02-2026"; // 37 bytes
    let pads: [Vec<u8>; 4] = [
        (0u8..=26)
            .map(|i| i.wrapping_mul(97).wrapping_add(128))
            .collect(), // binary, high bytes
        vec![
            0x14, 0x1b, 0x00, 0x7f, 0x0a, 0x0d, 0x1f, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x01,
            0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0b, 0x0c, 0x0e, 0x0f, 0x10,
        ],
        b"QWERTYUIOPASDFGHJKLZXCVBNMQ".to_vec(),
        vec![0xff; 27],
    ];
    for pad in &pads {
        assert!(!pad.iter().any(|b| matches!(b, b'[' | b']' | b'|')));
        let wire = encrypted_with_pad(pad, rest, "K1", "0042", "ADM-CID");
        let (f, _) = one(&mut codec_at(t), &wire);
        assert_eq!(f.parse_error, None, "pad {pad:02x?}");
        assert_eq!(f.observations.len(), 1);
        assert_eq!(f.observations[0].kind, EventKind::Sos);
        let ack = parse_message(reply_ok(&f), Some(KEY)).unwrap();
        assert_eq!((ack.token.as_str(), ack.seq_text.as_str()), ("ACK", "0042"));
    }
    // A NULL has no data and no separator: the pad ends at the `]`.
    let null_rest = "]_10:00:00,01-02-2026"; // 21 bytes
    let wire = encrypted_with_pad(
        &[
            0x80, 0x00, 0x7b, 0xfe, 0x01, 0x1b, 0x90, 0xa0, 0xb0, 0xc0, 0x0d,
        ],
        null_rest,
        "K1",
        "0043",
        "NULL",
    );
    let (f, _) = one(&mut codec_at(t), &wire);
    assert_eq!(f.parse_error, None);
    assert_eq!(f.observations[0].kind, EventKind::Heartbeat);
    assert!(matches!(f.reply, ReplyPlan::AfterCommit { .. }));
}

#[test]
fn a_wrong_key_is_told_by_the_structure_after_the_pad() {
    let t = parse_timestamp("_10:00:00,01-02-2026").unwrap();
    let wire = encrypted_with_pad(
        &[0x80; 27],
        "|#K1|1101 01 001]_10:00:00,01-02-2026",
        "K1",
        "0044",
        "ADM-CID",
    );
    for other in [b"BBBBBBBBBBBBBBBB", b"AAAAAAAAAAAAAAAB"] {
        let keys: KeyLookup = Arc::new(move |_: &str| Some(other.to_vec()));
        let (f, _) = one(&mut SiaDc09Codec::new(keys, Arc::new(move || t)), &wire);
        assert!(f.observations.is_empty());
        assert_eq!(f.reply, ReplyPlan::None, "a wrong key is never answered");
        assert!(f.parse_error.unwrap().contains("wrong key"));
    }
}

#[test]
fn a_retransmission_has_the_same_event_key_and_a_new_event_another() {
    let t = parse_timestamp("_10:00:00,01-02-2026").unwrap();
    let send = |seq: u16, data: &'static str, at: i64, key: Option<&[u8]>| {
        let wire = encode_message(
            "K1",
            seq,
            None,
            Some("0"),
            Payload::AdmCid(data),
            key,
            Some(at),
        )
        .unwrap();
        let (f, _) = one(&mut codec_at(at), &wire);
        (wire, f.event_key.expect("DC-09 names its event"))
    };
    let (w1, first) = send(3010, "#K1|1602 00 000", t, Some(KEY));
    let (w2, resent) = send(3010, "#K1|1602 00 000", t + 7_000, Some(KEY));
    assert_ne!(w1, w2, "a new send time (and pad): other bytes");
    assert_eq!(first, resent, "the same event");
    let (_, sos) = send(3010, "#K1|1101 01 001", t + 9_000, Some(KEY));
    assert_ne!(first, sos, "a reused sequence number with another event");
    let (_, next) = send(3011, "#K1|1602 00 000", t + 9_000, Some(KEY));
    assert_ne!(first, next, "the same event under the next sequence number");
    let (_, plain) = send(3010, "#K1|1602 00 000", t + 60_000, None);
    assert_eq!(
        first, plain,
        "plain or encrypted, the event is what it says"
    );
}

#[test]
fn encrypted_without_timestamp_gets_nak() {
    // Hand-built: pad | data ] and no timestamp.
    let hex = encrypt_block("|#K1|Nri1/QA1]", KEY, b"x").unwrap();
    let content = format!("\"*SIA-DCS\"0002L0#K1[{hex}");
    let wire = frame(&content);
    let (f, _) = one(&mut codec_at(5_000), &wire);
    assert_eq!(
        f.observations[0].kind,
        EventKind::Sos,
        "kept for the record"
    );
    assert_eq!(reply_ok(&f), &nak(5_000)[..]);
}

#[test]
fn unprocessable_messages_get_duh() {
    // fioletoven/dc09's SIA-DCS with empty data.
    let (f, _) = one(&mut codec_at(0), b"\n96ED0016\"SIA-DCS\"0001L0#1234[]\r");
    assert_eq!(reply_ok(&f), b"\n251F0012\"DUH\"0001L0#1234[]\r");
    assert!(f.observations.is_empty());
    let content = r#""XYZ-99"0003L0#1234[foo]"#;
    let (f, _) = one(&mut codec_at(0), &frame(content));
    assert!(f.parse_error.as_deref().unwrap().contains("not supported"));
    assert_eq!(
        reply_ok(&f),
        &duh("0003", None, Some("0"), Some("1234"))[..]
    );
}

#[test]
fn framing_resyncs_and_waits() {
    let wire = encode_message("1234", 1, None, Some("0"), Payload::Null, None, None).unwrap();
    // Incomplete: nothing consumed.
    for cut in 1..wire.len() {
        let mut buf = BytesMut::from(&wire[..cut]);
        assert_eq!(codec_at(0).decode(&mut buf), Ok(None), "cut at {cut}");
        assert_eq!(buf.len(), cut);
    }
    // Garbage before the LF is handed over as its own frame, then the message follows.
    let mut buf = BytesMut::from(&b"junk"[..]);
    buf.extend_from_slice(&wire);
    let mut c = codec_at(0);
    let g = c.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&g.raw[..], b"junk");
    assert!(g.parse_error.is_some());
    let f = c.decode(&mut buf).unwrap().unwrap();
    assert_eq!(f.observations[0].kind, EventKind::Heartbeat);
    assert!(buf.is_empty());
    // Line noise alone is dropped.
    let mut buf = BytesMut::from(&b"\r\r\n\r \0"[..]);
    assert_eq!(c.decode(&mut buf), Ok(None));
    assert!(buf.is_empty());
    // A message without its LF is still read (the CRC guards it).
    let (f, _) = one(&mut c, &wire[1..]);
    assert_eq!(f.integrity, Integrity::Intact);
    // No CR within the cap: the stream cannot be resynchronised.
    let mut buf = BytesMut::from(&b"\n"[..]);
    buf.extend_from_slice(&vec![b'A'; MAX_FRAME_LEN]);
    assert_eq!(c.decode(&mut buf).unwrap_err().reason, "too_long");
}

#[test]
fn timestamps_round_trip() {
    assert_eq!(parse_timestamp("_00:00:00,01-01-1970"), Ok(0));
    assert_eq!(format_timestamp(T_PANIC), "_20:45:46,04-22-2021");
    assert!(parse_timestamp("_24:00:00,01-01-2020").is_err());
    assert!(parse_timestamp("_12:00:00,02-30-2020").is_err());
    assert_eq!(
        parse_timestamp("_12:00:00,02-29-2020").map(format_timestamp),
        Ok("_12:00:00,02-29-2020".into())
    );
}

fn arb_payload() -> impl Strategy<Value = (u8, String)> {
    (0u8..3, "[A-Za-z0-9#|/ ^.]{0,40}")
}

proptest! {
    #[test]
    fn encode_parse_round_trips(
        account in "[0-9A-F]{1,16}",
        seq in 0u16..=9999,
        receiver in proptest::option::of("[0-9A-F]{1,6}"),
        line in proptest::option::of("[0-9A-F]{1,6}"),
        (kind, data) in arb_payload(),
        key_len in prop_oneof![Just(0usize), Just(16), Just(24), Just(32)],
        key_byte in any::<u8>(),
        ts in proptest::option::of(0i64..4_102_444_800_000),
    ) {
        let payload = match kind {
            0 => Payload::SiaDcs(&data),
            1 => Payload::AdmCid(&data),
            _ => Payload::Null,
        };
        let key = (key_len > 0).then(|| vec![key_byte; key_len]);
        let ts = if key.is_some() { Some(ts.unwrap_or(0)) } else { ts };
        let wire = encode_message(&account, seq, receiver.as_deref(), line.as_deref(), payload, key.as_deref(), ts).unwrap();
        let m = parse_message(&wire, key.as_deref()).unwrap();
        prop_assert_eq!(m.token.as_str(), payload.token());
        prop_assert_eq!(m.encrypted, key.is_some());
        prop_assert_eq!(m.seq, seq);
        prop_assert_eq!(m.receiver, receiver);
        prop_assert_eq!(m.line, line);
        prop_assert_eq!(m.account, Some(account));
        prop_assert_eq!(m.data.as_str(), payload.data());
        prop_assert_eq!(m.timestamp_ms, ts.map(|t| t / 1000 * 1000));
        prop_assert!(m.crc_ok && m.length_ok);
    }

    #[test]
    fn codec_round_trips_and_acks(
        seq in 0u16..=9999,
        zone in 0u16..1000,
        encrypted in any::<bool>(),
        ts in 1_600_000_000_000i64..1_900_000_000_000,
    ) {
        let data = format!("#K1|Nri1/QA{zone:03}");
        let key = encrypted.then_some(KEY);
        let wire = encode_message("K1", seq, Some("12"), Some("3"), Payload::SiaDcs(&data), key, Some(ts)).unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        buf.extend_from_slice(b"\n12");
        let f = codec_at(ts).decode(&mut buf).unwrap().unwrap();
        prop_assert_eq!(&buf[..], b"\n12");
        prop_assert_eq!(f.serial, Some(u32::from(seq)));
        prop_assert_eq!(f.observations[0].kind, EventKind::Sos);
        let reply = parse_message(reply_ok(&f), key).unwrap();
        prop_assert_eq!(reply.token.as_str(), "ACK");
        prop_assert_eq!(reply.encrypted, encrypted);
        prop_assert_eq!(reply.seq, seq);
        prop_assert_eq!(reply.receiver.as_deref(), Some("12"));
        prop_assert_eq!(reply.line.as_deref(), Some("3"));
        prop_assert_eq!(reply.account.as_deref(), Some("K1"));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in any::<usize>()) {
        let mut c = codec_at(0);
        let mut buf = BytesMut::new();
        let cut = cut % (bytes.len() + 1);
        for piece in [&bytes[..cut], &bytes[cut..]] {
            buf.extend_from_slice(piece);
            while let Ok(Some(f)) = c.decode(&mut buf) {
                prop_assert!(!f.raw.is_empty() && f.raw.len() <= MAX_FRAME_LEN);
            }
        }
        let _ = parse_message(&bytes, Some(KEY));
    }

    #[test]
    fn text_like_bytes_never_panic(s in "[\n\r\"#\\[\\]|_:,0-9A-F*NLRSIADCM-]{0,200}") {
        let mut c = codec_at(0);
        let mut buf = BytesMut::from(s.as_bytes());
        while let Ok(Some(_)) = c.decode(&mut buf) {}
        let _ = parse_message(s.as_bytes(), Some(KEY));
    }
}

#[test]
fn account_only_in_the_data_block() {
    let (f, _) = one(
        &mut codec_at(0),
        &frame(r#""SIA-DCS"4738R0001L0001[#006969|Nri04/OP001NM]"#),
    );
    assert_eq!(f.device.as_ref().map(DeviceId::as_str), Some("006969"));
    assert_eq!(f.observations[0].code, "SIA OP");
    // The header is echoed as it came: without an account.
    assert_eq!(
        reply_ok(&f),
        &ack("4738", Some("0001"), Some("0001"), None)[..]
    );
    assert!(reply_ok(&f).ends_with(b"\"ACK\"4738R0001L0001[]\r"));
}
