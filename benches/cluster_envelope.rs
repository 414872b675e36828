//! Cost of the signed cluster envelope: sealing and opening a feed record
//! and a heartbeat the size the cluster writes (HMAC-SHA256 plus the JSON
//! around the body), and a resync's worth of records.
//!
//! `cargo bench --bench cluster_envelope`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use primacy::cluster::envelope::{Freshness, Kind, Signer};

const SECRET: &[u8] = b"bench-cluster-secret-0123456789abcdef";
const NOW: i64 = 1_700_000_000_000;

/// A feed record body as the cluster writes one (364 bytes).
fn record_body() -> String {
    serde_json::json!({"feed_id": "6f1c2a53-8c5e-4c49-9f0e-2b8f3f0a9d11",
        "token_id": "0b6a3f0e-5d7c-4b1e-8e0a-3f1d2c4b5a69", "label": "bench",
        "stream": "s123", "source_id": "", "priority": 100, "pinned": false,
        "protocol": "rtmp", "peer": "127.0.0.1:1", "node": "eu-1", "region": "eu",
        "connected_at": "2025-01-01T00:00:00.123456789Z", "eligible_since_ms": NOW - 5_000,
        "healthy": true, "draining": false, "on_air": false})
    .to_string()
}

fn bench(c: &mut Criterion) {
    let s = Signer::new(SECRET);
    let body = record_body();
    let place = "primacy:feeds:eu-1#6f1c2a53-8c5e-4c49-9f0e-2b8f3f0a9d11";
    let sealed = s.seal_text(Kind::Feed, place, "eu-1", NOW, [7; 16], body.clone());
    let fresh = Freshness::stored(20_000, 5_000);
    c.bench_function("seal feed record", |b| {
        b.iter(|| {
            s.seal_text(
                Kind::Feed,
                black_box(place),
                "eu-1",
                NOW,
                [7; 16],
                black_box(body.clone()),
            )
        })
    });
    c.bench_function("open feed record", |b| {
        b.iter(|| {
            s.open(
                Kind::Feed,
                black_box(place),
                Some("eu-1"),
                black_box(&sealed),
                NOW,
                fresh,
            )
            .expect("opens")
        })
    });
    let tampered = sealed.replacen("\\\"priority\\\":100", "\\\"priority\\\":999", 1);
    assert_ne!(tampered, sealed);
    c.bench_function("open tampered feed record (refused)", |b| {
        b.iter(|| {
            s.open(
                Kind::Feed,
                black_box(place),
                Some("eu-1"),
                black_box(&tampered),
                NOW,
                fresh,
            )
            .expect_err("refused")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
