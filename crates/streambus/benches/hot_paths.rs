//! Criterion benches of the pure functions on the hot paths: building an
//! envelope (UUID, timestamp, JSON check), decoding one, and parsing entry ids
//! and timestamps. `cargo bench -p streambus`; the whole-system figures come
//! from `streambus bench` (BENCHMARKS.md).

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use streambus::envelope::{format_timestamp, parse_timestamp};
use streambus::{EntryId, Envelope, Message};

/// The bench payload: 200 bytes of JSON, like the reference envelope's `data`.
fn data() -> String {
    let head = r#"{"t":"00000000000000000001","seq":"000000000001","source":"streambus-bench","severity":"high","pad":""#;
    let mut s = head.to_owned();
    s.push_str(&"x".repeat(200 - head.len() - 2));
    s.push_str("\"}");
    assert_eq!(s.len(), 200);
    s
}

fn envelope(c: &mut Criterion) {
    let text = data();
    c.bench_function("envelope/encode json_text (200 B)", |b| {
        b.iter(|| Message::json_text(black_box(text.clone())).unwrap())
    });
    let fields = Message::json_text(text.clone()).unwrap().to_fields();
    c.bench_function("envelope/decode from_fields", |b| {
        b.iter(|| Envelope::from_fields(black_box(&fields)).unwrap())
    });
    let t = UNIX_EPOCH + Duration::from_micros(1_767_225_045_123_456);
    c.bench_function("envelope/format_timestamp", |b| {
        b.iter(|| format_timestamp(black_box(t)))
    });
    let ts = format_timestamp(SystemTime::now());
    c.bench_function("envelope/parse_timestamp", |b| {
        b.iter(|| parse_timestamp(black_box(&ts)))
    });
}

fn ids(c: &mut Criterion) {
    c.bench_function("id/from_bytes", |b| {
        b.iter(|| EntryId::from_bytes(black_box(b"1767225045123-42")).unwrap())
    });
    c.bench_function("id/from_str", |b| {
        b.iter(|| black_box("1767225045123-42").parse::<EntryId>().unwrap())
    });
    let id = EntryId::new(1_767_225_045_123, 42);
    c.bench_function("id/to_string", |b| b.iter(|| black_box(id).to_string()));
}

criterion_group!(benches, envelope, ids);
criterion_main!(benches);
