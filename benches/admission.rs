//! Publish admission benchmark: signature verification plus the cached
//! token row, and the cache-miss path that reads the row from PostgreSQL.
//!
//! `cargo bench --bench admission` prints criterion's estimates and then a
//! latency distribution (p50/p99/max) and single-thread throughput measured
//! over many individual checks, and the cost of the periodic token
//! re-check's revision comparison for 1,000 and 10,000 live tokens. Needs
//! PostgreSQL (`PRIMACY_TEST_DATABASE_URL`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`); it creates and
//! drops a database of its own.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use diesel::{Connection, PgConnection, RunQueryDsl};
use primacy::auth::jwt::KeySet;
use primacy::auth::publish::Admission;
use primacy::domain::{SourceId, StreamName, TokenId};
use primacy::store::tokens::TokenRow;
use primacy::store::Db;
use uuid::Uuid;

struct BenchDb {
    admin: String,
    name: String,
    url: String,
}

impl BenchDb {
    fn new() -> Self {
        let admin = std::env::var("PRIMACY_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("primacy_bench_{}", Uuid::new_v4().simple());
        let mut c = PgConnection::establish(&admin).expect("connect to PostgreSQL");
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE template0"))
            .execute(&mut c)
            .expect("create bench database");
        let url = format!(
            "{}/{name}",
            admin.rsplit_once('/').expect("url with database").0
        );
        Self { admin, name, url }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        if let Ok(mut c) = PgConnection::establish(&self.admin) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut c);
        }
    }
}

struct Fixture {
    url: String,
    _db: BenchDb,
    rt: tokio::runtime::Runtime,
    admission: Arc<Admission>,
    secret: String,
    token: TokenId,
    stream: StreamName,
    ip: IpAddr,
}

fn fixture() -> Fixture {
    let db = BenchDb::new();
    let mut conn = PgConnection::establish(&db.url).expect("connect");
    primacy::store::run_migrations(&mut conn).expect("migrate");
    let now = chrono::Utc::now();
    let row = TokenRow {
        id: Uuid::new_v4(),
        label: "bench".into(),
        priority: Some(100),
        streams: serde_json::json!([{"name": "match1", "is_regex": false}, {"name": "ev/[a-z0-9]+", "is_regex": true}]),
        allowed_ips: vec![Some("127.0.0.0/8".into())],
        expires_at: None,
        enabled: true,
        secret_id: Uuid::new_v4(),
        created_at: now,
        updated_at: now,
        allow_priority_override: false,
        revision: 1,
    };
    primacy::store::tokens::insert(&mut conn, &row).expect("insert token");
    let keys = Arc::new(KeySet::hs256(
        "bench",
        b"bench-signing-secret-0123456789abcdef",
    ));
    let secret = keys
        .sign(row.id, row.secret_id, now.timestamp())
        .expect("sign");
    let pool = Db::new(&db.url, 2, Duration::from_secs(5));
    let admission = Arc::new(Admission::new(keys, pool, Duration::from_secs(3600)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    Fixture {
        url: db.url.clone(),
        _db: db,
        rt,
        admission,
        secret,
        token: TokenId(row.id),
        stream: "ev/cam1".parse().expect("stream"),
        ip: "127.0.0.1".parse().expect("ip"),
    }
}

fn check(f: &Fixture) {
    let r = f.rt.block_on(f.admission.check(
        black_box(&f.secret),
        &f.stream,
        &SourceId::default(),
        f.ip,
        chrono::Utc::now(),
    ));
    assert!(r.is_ok(), "{r:?}");
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), *samples.last().expect("samples"))
}

/// Many individually timed checks: the distribution criterion's mean hides.
fn distribution(f: &Fixture) {
    let n = 50_000;
    check(f);
    let mut samples = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        check(f);
        samples.push(t.elapsed());
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let (p50, p99, max) = percentiles(samples);
    println!("admission cached : {n} checks, {rate:.0} checks/s on one thread, p50 {p50:?}, p99 {p99:?}, max {max:?}");

    let n = 2_000;
    let mut samples = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        f.admission.invalidate(f.token);
        let t = Instant::now();
        check(f);
        samples.push(t.elapsed());
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let (p50, p99, max) = percentiles(samples);
    println!("admission miss   : {n} checks, {rate:.0} checks/s on one thread, p50 {p50:?}, p99 {p99:?}, max {max:?}");
}

/// The periodic re-check compares the revisions of every live feed's token
/// with PostgreSQL: what one comparison costs for N live tokens, none of
/// which changed (the usual case).
fn revision_sweep(f: &Fixture) {
    let mut conn = PgConnection::establish(&f.url).expect("connect");
    diesel::sql_query(
        "INSERT INTO publish_tokens (id, label, streams, secret_id) \
         SELECT gen_random_uuid(), 'sweep', '[{\"name\": \"s\", \"is_regex\": false}]', gen_random_uuid() \
         FROM generate_series(1, 10000)",
    )
    .execute(&mut conn)
    .expect("insert tokens");
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
    }
    let ids: Vec<Id> = diesel::sql_query("SELECT id FROM publish_tokens WHERE label = 'sweep'")
        .load(&mut conn)
        .expect("ids");
    for n in [1_000, 10_000] {
        let live: Vec<(TokenId, i64)> = ids[..n].iter().map(|r| (TokenId(r.id), 1)).collect();
        let mut samples = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let stale = f.rt.block_on(f.admission.stale(&live)).expect("stale");
            samples.push(t.elapsed());
            assert!(stale.is_empty());
        }
        let (p50, p99, max) = percentiles(samples);
        println!("revision sweep   : {n} live tokens, p50 {p50:?}, p99 {p99:?}, max {max:?}");
    }
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    c.bench_function("verify_signature_only", |b| {
        b.iter(|| {
            f.admission
                .keys()
                .verify(black_box(&f.secret))
                .expect("verifies")
        })
    });
    c.bench_function("admission_cached_row", |b| b.iter(|| check(&f)));
    c.bench_function("admission_cache_miss", |b| {
        b.iter(|| {
            f.admission.invalidate(f.token);
            check(&f)
        })
    });
    // Only in a real benchmark run, not when `cargo test` smoke-runs benches.
    if std::env::args().any(|a| a == "--bench") {
        distribution(&f);
        revision_sweep(&f);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
