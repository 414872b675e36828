//! Repeated failed admissions: an address that keeps presenting bad
//! tokens, and a dead token presented from many addresses, are refused at
//! once for a growing time (without verifying or reading the token), the
//! throttle metric counts it, and the log holds a few lines, not one per
//! attempt. Others are admitted as promptly as ever.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::process::{GatewayProcess, Ports};
use common::rtmp_raw::{publish_attempt, PublishOutcome};
use common::srt_raw;
use common::TestDb;
use primacy::auth::api_keys::Scope;
use serde_json::json;

fn metric(g: &GatewayProcess, needle: &str) -> f64 {
    let (_, m) = g
        .http
        .try_call("GET", "/metrics", None, None, "text/plain")
        .expect("metrics");
    m.lines()
        .filter(|l| l.starts_with(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn attempt(addr: SocketAddr, from: IpAddr, key: &str) -> PublishOutcome {
    publish_attempt(from, addr, key, Duration::from_secs(10)).0
}

#[test]
fn bad_tokens_from_one_address_are_throttled() {
    let db = TestDb::migrated();
    let key = db.api_key(&[Scope::Admin]);
    // Default throttle and log burst; a short log interval for the summary.
    let mut g = GatewayProcess::spawn(&db, Ports::free(), &[("PRIMACY_LOG__INTERVAL_MS", "3000")]);
    g.wait_ready(Duration::from_secs(30));
    let (_, good) = g.token(&key, &["live1"], 10);
    let addr = g.rtmp_addr();
    let attacker = ip("127.0.0.1");
    let log_before = g.log().lines().count();

    let mut refused = 0;
    let mut throttled = 0;
    for i in 0..40 {
        match attempt(addr, attacker, &format!("live1?token=garbage{i}")) {
            PublishOutcome::Refused(why) if why.contains("invalid token") => refused += 1,
            PublishOutcome::Refused(why) if why.contains("too many failed attempts") => {
                throttled += 1
            }
            other => panic!("attempt {i}: {other:?}"),
        }
    }
    println!(
        "40 bad tokens from one address: {refused} checked and refused, {throttled} throttled"
    );
    assert!(throttled >= 20, "{throttled} of 40 throttled");
    assert!(metric(&g, "primacy_admission_throttled_total{key=\"ip\"") >= 20.0);

    // A valid token from another address is admitted promptly.
    let t0 = Instant::now();
    let (o, _publisher) = publish_attempt(
        ip("127.0.0.2"),
        addr,
        &format!("live1?token={good}"),
        Duration::from_secs(5),
    );
    let took = t0.elapsed();
    println!("valid publish from another address admitted in {took:?}");
    assert_eq!(o, PublishOutcome::Accepted);
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // The blocked address is refused at once, over SRT too (1402).
    let srt = SocketAddr::from(([127, 0, 0, 1], g.ports.srt));
    let r = srt_raw::call(srt, &format!("#!::r=live2,m=publish,s={good}"), &[]);
    assert_eq!(r.err(), Some(2402), "SRT from the blocked address");

    // The log holds a few lines about the attacker, not one per attempt,
    // and a summary of the rest once the interval (3 s here) ended.
    let end = Instant::now() + Duration::from_secs(10);
    while !g.log().contains("suppressed") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = g.log();
    let lines: Vec<&str> = log
        .lines()
        .skip(log_before)
        .filter(|l| l.contains("127.0.0.1"))
        .collect();
    println!("log lines about the attacker:\n{}", lines.join("\n"));
    let refusals = lines
        .iter()
        .filter(|l| l.contains("publish refused"))
        .count();
    assert!(
        refusals <= 10,
        "{refusals} refusal lines for 40 refusals from one address"
    );
    assert!(
        lines.iter().any(|l| l.contains("suppressed")),
        "no summary of the suppressed lines"
    );
}

#[test]
fn a_dead_token_from_many_addresses_is_throttled() {
    let db = TestDb::migrated();
    let key = db.api_key(&[Scope::Admin]);
    let mut g = GatewayProcess::spawn(&db, Ports::free(), &[]);
    g.wait_ready(Duration::from_secs(30));
    let (id, dead) = g.token(&key, &["live1"], 10);
    let (_, good) = g.token(&key, &["live1"], 10);
    let (st, v) = g.http.call(
        "PATCH",
        &format!("/api/v1/tokens/{id}"),
        Some(&key),
        Some(&json!({"enabled": false}).to_string()),
    );
    assert_eq!(st, 200, "{v}");
    let addr = g.rtmp_addr();
    let mut throttled = 0;
    for i in 0..30 {
        let from = ip(&format!("127.0.0.{}", 10 + i));
        match attempt(addr, from, &format!("live1?token={dead}")) {
            PublishOutcome::Refused(why) if why.contains("too many failed attempts") => {
                throttled += 1
            }
            PublishOutcome::Refused(why) if why.contains("disabled") => {}
            other => panic!("attempt {i}: {other:?}"),
        }
    }
    println!("a disabled token from 30 addresses: {throttled} throttled");
    assert!(throttled >= 15, "{throttled} of 30 throttled");
    assert!(metric(&g, "primacy_admission_throttled_total{key=\"token\"") >= 15.0);
    // Those addresses are not blocked for other tokens.
    let (o, _p) = publish_attempt(
        ip("127.0.0.30"),
        addr,
        &format!("live1?token={good}"),
        Duration::from_secs(5),
    );
    assert_eq!(o, PublishOutcome::Accepted);
}
