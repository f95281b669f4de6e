//! Micro-benchmarks: every codec's decode and encode of an SOS frame, and the
//! routing decision. `cargo bench --bench codecs`; results in benches/RESULTS.md.

use std::hint::black_box;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use pingantong::routing;
use pingantong::store::CarerCandidate;
use pingantong_protocol::codec::Codec;
use pingantong_protocol::{
    AlarmEvent, DeviceId, EventKind, Location, eview, gt06, h02, native, sia_dc09, watch,
};

const T: u64 = 1_764_000_000_000;
const HOME: Location = Location {
    lat: 23.1291,
    lon: 113.2644,
    accuracy_m: Some(10),
};

fn decode_all(c: &mut dyn Codec, frame: &[u8]) -> usize {
    let mut buf = BytesMut::from(frame);
    let mut n = 0;
    while let Ok(Some(f)) = c.decode(&mut buf) {
        n += f.observations.len();
    }
    n
}

fn codecs(c: &mut Criterion) {
    let secret = b"0123456789abcdef0123456789abcdef";
    let event = AlarmEvent {
        device: DeviceId::parse("PA000001").unwrap(),
        seq: 7,
        kind: EventKind::Sos,
        device_time_ms: Some(T),
        battery_pct: Some(80),
        location: Some(HOME),
    };
    let mut g = c.benchmark_group("native");
    g.bench_function("encode", |b| {
        b.iter(|| {
            let mut buf = BytesMut::with_capacity(64);
            native::encode_event(black_box(&event), secret, &mut buf);
            buf
        })
    });
    let mut frame = BytesMut::new();
    native::encode_event(&event, secret, &mut frame);
    g.bench_function("decode+verify", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(&frame[..]));
            let raw = native::split_frame(&mut buf).unwrap().unwrap();
            let f = native::EventFrame::parse(&raw).unwrap();
            f.verify(secret)
        })
    });
    g.finish();

    let imei = "864717003283581";
    let gt06_frame = gt06::encode_alarm(EventKind::Sos, Some(HOME), T, 9).unwrap();
    let login = gt06::encode_login(imei, 1).unwrap();
    let mut g = c.benchmark_group("gt06");
    g.bench_function("encode", |b| {
        b.iter(|| gt06::encode_alarm(EventKind::Sos, Some(HOME), black_box(T), 9))
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut codec = gt06::Gt06Codec::with_system_clock();
            decode_all(&mut codec, &login);
            decode_all(&mut codec, black_box(&gt06_frame))
        })
    });
    g.finish();

    let watch_frame = watch::encode_alarm("SG", "9059011020", 1 << 16, Some(HOME), T, 80);
    let mut g = c.benchmark_group("watch");
    g.bench_function("encode", |b| {
        b.iter(|| watch::encode_alarm("SG", "9059011020", 1 << 16, Some(HOME), black_box(T), 80))
    });
    g.bench_function("decode", |b| {
        b.iter(|| decode_all(&mut watch::WatchCodec::new(), black_box(&watch_frame)))
    });
    g.finish();

    let id = DeviceId::parse("4970105243").unwrap();
    let h02_frame = h02::encode_v1(&id, T, HOME, &[EventKind::Sos]);
    let mut g = c.benchmark_group("h02");
    g.bench_function("encode", |b| {
        b.iter(|| h02::encode_v1(&id, black_box(T), HOME, &[EventKind::Sos]))
    });
    g.bench_function("decode", |b| {
        b.iter(|| decode_all(&mut h02::H02Codec::new(), black_box(&h02_frame)))
    });
    g.finish();

    let imei_id = DeviceId::parse(imei).unwrap();
    let eview_frame = eview::encode_alarm(&imei_id, 30, EventKind::Sos, Some(HOME), Some(70));
    let mut g = c.benchmark_group("eview");
    g.bench_function("encode", |b| {
        b.iter(|| {
            eview::encode_alarm(
                &imei_id,
                black_box(30),
                EventKind::Sos,
                Some(HOME),
                Some(70),
            )
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| decode_all(&mut eview::EviewCodec::new(), black_box(&eview_frame)))
    });
    g.finish();

    let key = b"0123456789ABCDEF".to_vec();
    let now = T as i64;
    let keys: sia_dc09::KeyLookup = {
        let key = key.clone();
        Arc::new(move |_: &str| Some(key.clone()))
    };
    let clock: sia_dc09::Clock = Arc::new(move || now);
    let payload = "#4F21|1101 01 015";
    let plain = sia_dc09::encode_message(
        "4F21",
        7,
        Some("12"),
        Some("3"),
        sia_dc09::Payload::AdmCid(payload),
        None,
        Some(now),
    )
    .unwrap();
    let secret_msg = sia_dc09::encode_message(
        "4F21",
        7,
        Some("12"),
        Some("3"),
        sia_dc09::Payload::AdmCid(payload),
        Some(&key),
        Some(now),
    )
    .unwrap();
    let mut g = c.benchmark_group("sia_dc09");
    g.bench_function("encode", |b| {
        b.iter(|| {
            sia_dc09::encode_message(
                "4F21",
                7,
                Some("12"),
                Some("3"),
                sia_dc09::Payload::AdmCid(payload),
                None,
                black_box(Some(now)),
            )
        })
    });
    g.bench_function("encode_encrypted", |b| {
        b.iter(|| {
            sia_dc09::encode_message(
                "4F21",
                7,
                Some("12"),
                Some("3"),
                sia_dc09::Payload::AdmCid(payload),
                Some(&key),
                black_box(Some(now)),
            )
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            decode_all(
                &mut sia_dc09::SiaDc09Codec::new(Arc::clone(&keys), Arc::clone(&clock)),
                black_box(&plain),
            )
        })
    });
    g.bench_function("decode_encrypted", |b| {
        b.iter(|| {
            decode_all(
                &mut sia_dc09::SiaDc09Codec::new(Arc::clone(&keys), Arc::clone(&clock)),
                black_box(&secret_msg),
            )
        })
    });
    g.finish();
}

fn route(c: &mut Criterion) {
    // Three providers over a district, 20 on-duty carers each, scattered around.
    let candidates: Vec<CarerCandidate> = (0..60)
        .map(|i| CarerCandidate {
            provider_id: i % 3,
            carer_id: Some(i),
            lat: Some(23.10 + (i as f64 * 0.0013) % 0.06),
            lon: Some(113.24 + (i as f64 * 0.0029) % 0.06),
            street: None,
            rank: i % 3,
            capacity: 0,
            active_jobs: 0,
        })
        .collect();
    c.bench_function("routing/choose_60_carers", |b| {
        b.iter(|| routing::choose(black_box(Some((23.1291, 113.2644))), black_box(&candidates)))
    });
}

criterion_group!(benches, codecs, route);
criterion_main!(benches);
