//! A read-scope key cannot starve the database pool: many parallel
//! `GET /tokens?stream=` over many large regex rules, while an encoder's
//! publish (a token the admission cache has never seen, so it needs a
//! database connection) is admitted promptly. Excess listings get 503 with
//! `Retry-After` instead of queueing on the pool.

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::TestServer;
use diesel::RunQueryDsl;
use primacy::auth::api_keys::Scope;
use primacy::domain::{SourceId, StreamName};
use serde_json::{json, Value};

const TOKENS: usize = 24;
const RULES: usize = 64;
const LISTERS: usize = 10;

/// Tokens with 64 distinct, valid, expensive-to-compile regex rules each,
/// written straight to the database (as many API calls would).
fn seed(s: &TestServer) {
    let mut conn = s.db.connect();
    for t in 0..TOKENS {
        let rules: Vec<Value> = (0..RULES)
            .map(|r| json!({"name": format!("(?i)[a-z0-9]{{1,100}}x{t}y{r}"), "is_regex": true}))
            .collect();
        let streams = serde_json::to_string(&rules).unwrap().replace('\'', "''");
        diesel::sql_query(format!(
            "INSERT INTO publish_tokens (id, label, streams, secret_id) \
             VALUES (gen_random_uuid(), 'heavy-{t}', '{streams}', gen_random_uuid())"
        ))
        .execute(&mut conn)
        .expect("seed a heavy token");
    }
}

#[test]
fn parallel_stream_filters_do_not_starve_admissions() {
    let s = TestServer::start();
    let read = s.db.api_key(&[Scope::Read]);
    let admin = s.db.api_key(&[Scope::Admin]);
    seed(&s);
    let (st, v) = s.call(
        "POST",
        "/api/v1/tokens",
        Some(&admin),
        Some(r#"{"label": "encoder", "streams": [{"name": "match1"}], "priority": 10}"#),
    );
    assert_eq!(st, 201, "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();

    // One listing alone, for the figures.
    let t0 = Instant::now();
    let (st, v) = s.call("GET", "/api/v1/tokens?stream=abcx3y7", Some(&read), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["total"], 1, "exactly heavy-3 matches: {v}");
    let cold = t0.elapsed();
    let t0 = Instant::now();
    let (st, v) = s.call("GET", "/api/v1/tokens?stream=abcx5y9", Some(&read), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["total"], 1, "exactly heavy-5 matches: {v}");
    println!(
        "one stream-filtered listing over {} rules: {cold:?}, the next one {:?}",
        TOKENS * RULES,
        t0.elapsed()
    );

    let stop = AtomicBool::new(false);
    let ok = AtomicUsize::new(0);
    let busy = AtomicUsize::new(0);
    let starved = AtomicUsize::new(0);
    let admission = s.running().admission.clone();
    let stream: StreamName = "match1".parse().unwrap();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let admitted_after = std::thread::scope(|scope| {
        for i in 0..LISTERS {
            let (stop, ok, busy, starved, read) = (&stop, &ok, &busy, &starved, &read);
            let agent = agent.clone();
            let base = s.base.clone();
            scope.spawn(move || {
                // Bounded: at most 40 requests per lister, and only while the
                // admission is being measured.
                for n in 0..40 {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let url = format!("{base}/api/v1/tokens?stream=zz{i}q{n}");
                    let mut resp = agent
                        .get(&url)
                        .header("Authorization", &format!("Bearer {read}"))
                        .call()
                        .expect("the API answers");
                    let st = resp.status().as_u16();
                    let retry_after = resp.headers().get("retry-after").is_some();
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    match st {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        503 if text.contains("database_unavailable") => {
                            starved.fetch_add(1, Ordering::Relaxed)
                        }
                        503 => {
                            assert!(text.contains("busy"), "{text}");
                            assert!(retry_after, "a 503 without Retry-After");
                            busy.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("GET {url}: {other} {text}"),
                    };
                }
            });
        }
        // Let the listings pile up, then publish.
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let r = s.runtime().block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                admission.check(&secret, &stream, &SourceId::default(), ip, Utc::now()),
            )
            .await
            .expect("admission answered within 30 s")
        });
        let took = t0.elapsed();
        stop.store(true, Ordering::Release);
        (r, took)
    });
    let (result, took) = admitted_after;
    println!(
        "admission during {LISTERS} parallel listings: {:?} after {took:?}; listings answered 200: {}, 503 busy: {}, 503 database unavailable: {}",
        result.as_ref().map(|a| a.priority),
        ok.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed),
        starved.load(Ordering::Relaxed)
    );
    let admitted = result.expect("a valid publish is admitted while listings run");
    assert_eq!(admitted.priority.0, Some(10));
    assert!(
        took < Duration::from_millis(500),
        "admission took {took:?} while listings ran"
    );
    assert!(ok.load(Ordering::Relaxed) > 0, "some listings were served");
    assert_eq!(
        starved.load(Ordering::Relaxed),
        0,
        "listings starved each other of database connections"
    );

    assert!(
        busy.load(Ordering::Relaxed) > 0,
        "{LISTERS} parallel listings never exceeded the filter's concurrency"
    );
}
