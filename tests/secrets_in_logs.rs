//! Secrets never reach the log or an answer. A whole session against the
//! real `primacy serve`: RTMP and SRT publishes with tokens, refused
//! publishes (a bad token, a good token with a bad `%` escape, a plain SRT
//! stream id), a connect whose application carries a token and a newline,
//! pull inputs and a push output with a credential in every URL shape we
//! accept (RTMP path key, query token, bare query value, plain SRT stream
//! id, Access Control `s=`, percent-encoded stream id, passphrase,
//! `user:password@`), and the CLI given an API URL with a password. Then
//! the process's whole log, every API answer, every refusal text and the
//! audit table are searched for every secret used.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::media::{free_tcp_port, free_udp_port, publish, publish_srt, Fixture};
use common::process::{GatewayProcess, Ports};
use common::rtmp_raw::{publish_attempt, publish_attempt_app, PublishOutcome};
use common::{run_primacy, srt_raw, TestDb, HS256};
use diesel::RunQueryDsl;
use primacy::auth::api_keys::Scope;
use serde_json::{json, Value};

#[derive(diesel::QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    text: String,
}

/// A secret that cannot be mistaken for anything else in the output.
fn secret(what: &str) -> String {
    let tag: String = what.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

/// What the session showed, by where it was shown.
#[derive(Default)]
struct Shown(BTreeMap<&'static str, String>);

impl Shown {
    fn add(&mut self, place: &'static str, text: impl AsRef<str>) {
        let t = self.0.entry(place).or_default();
        t.push_str(text.as_ref());
        t.push('\n');
    }
}

/// Wait until `f` holds, at most `timeout`.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out after {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn no_secret_in_logs_answers_or_audit() {
    let db = TestDb::migrated();
    let key = db.api_key(&[Scope::Admin]);
    let mut g = GatewayProcess::spawn(
        &db,
        Ports::free(),
        &[("PRIMACY_LOG", "info"), ("PRIMACY_LOG__BURST", "1000")],
    );
    g.wait_ready(Duration::from_secs(30));
    let mut shown = Shown::default();
    let api = |shown: &mut Shown, method: &str, path: &str, body: Option<Value>| {
        let body = body.map(|b| b.to_string());
        let (st, v) = g.http.call(method, path, Some(&key), body.as_deref());
        shown.add("API answers", v.to_string());
        (st, v)
    };

    // Every secret of the session, by name.
    let mut secrets: Vec<(String, String)> = vec![
        ("API key".into(), key.clone()),
        ("signing key".into(), HS256.into()),
    ];
    let mut token = |shown: &mut Shown, name: &str, stream: &str| {
        let (st, v) = api(
            shown,
            "POST",
            "/api/v1/tokens",
            Some(json!({"label": name, "streams": [{"name": stream}], "priority": 10})),
        );
        assert_eq!(st, 201, "{v}");
        let t = v["secret"].as_str().unwrap().to_owned();
        // The whole token, and its claims and signature on their own.
        let parts: Vec<&str> = t.split('.').collect();
        secrets.push((name.into(), t.clone()));
        secrets.push((format!("{name} claims"), parts[1].to_owned()));
        secrets.push((format!("{name} signature"), parts[2].to_owned()));
        t
    };
    // The token answer itself shows the secret once, by design: only what
    // follows is searched.
    let rtmp_token = token(&mut Shown::default(), "rtmp token", "live1");
    let srt_token = token(&mut Shown::default(), "srt token", "live2");

    // Publishes that are admitted.
    let _rtmp = publish(Fixture::A, &g.rtmp(&format!("live1?token={rtmp_token}")));
    let _srt = publish_srt(
        Fixture::A,
        &g.srt_ff(&format!("#!::r=live2,m=publish,s={srt_token}")),
    );
    wait_until("both publishes on air", Duration::from_secs(30), || {
        ["live1", "live2"].iter().all(|s| {
            let (st, v) = g
                .http
                .call("GET", &format!("/api/v1/streams/{s}"), Some(&key), None);
            st == 200 && v["sources"][0]["feeds"][0]["state"] == "on_air"
        })
    });

    // Refused publishes, each from its own address (no throttling).
    let rtmp = g.rtmp_addr();
    let bad_token = secret("BADTOKEN");
    secrets.push(("bad token".into(), bad_token.clone()));
    let app_token = secret("APPTOKEN");
    secrets.push(("token in the application".into(), app_token.clone()));
    let attempts = [
        ("127.0.0.2", format!("live1?token={bad_token}")),
        ("127.0.0.3", format!("live1?token={rtmp_token}%zz")),
        ("127.0.0.4", format!("live1?{rtmp_token}")),
    ];
    for (from, key) in &attempts {
        let from: IpAddr = from.parse().unwrap();
        let (outcome, _s) = publish_attempt(from, rtmp, key, Duration::from_secs(10));
        let PublishOutcome::Refused(why) = outcome else {
            panic!("{key}: {outcome:?}");
        };
        shown.add("refusals", why);
    }
    let forged = "FORGED-LINE ERROR the gateway is on fire";
    let (outcome, _s) = publish_attempt_app(
        rtmp,
        &format!("nolive\n{forged}?token={app_token}"),
        "live1",
        Duration::from_secs(10),
    );
    let PublishOutcome::Refused(why) = outcome else {
        panic!("odd application: {outcome:?}");
    };
    shown.add("refusals", why);
    let srt = SocketAddr::from(([127, 0, 0, 1], g.ports.srt));
    let srt_bad = secret("SRTBAD");
    secrets.push(("bad SRT stream id token".into(), srt_bad.clone()));
    for id in [
        format!("live2?token={srt_bad}%zz"),
        format!("#!::r=live2,m=publish,{srt_bad}"),
    ] {
        assert!(srt_raw::call(srt, &id, &[]).is_err(), "{id} admitted");
    }

    // Pull inputs and a push output whose URLs carry credentials, aimed
    // at loopback ports where nothing listens (they fail and log it).
    let (tcp, udp) = (free_tcp_port(), free_udp_port());
    let mut url_secret = |what: &str| {
        let s = secret(what);
        secrets.push((what.to_owned(), s.clone()));
        s
    };
    let urls = vec![
        format!(
            "rtmp://127.0.0.1:{tcp}/app2/{}",
            url_secret("RTMP path key")
        ),
        format!(
            "rtmp://127.0.0.1:{tcp}/live/x?token={}&sourceId=cam",
            url_secret("RTMP query token")
        ),
        format!(
            "rtmp://127.0.0.1:{tcp}/live/x?{}",
            url_secret("bare query value")
        ),
        format!(
            "srt://127.0.0.1:{udp}?streamid={}",
            url_secret("plain SRT stream id")
        ),
        format!(
            "srt://127.0.0.1:{udp}?streamid=%23%21%3A%3Ar%3Dx%2Cm%3Drequest%2Cs%3D{}",
            url_secret("percent-encoded SRT s=")
        ),
        format!(
            "srt://127.0.0.1:{udp}?streamid=x&passphrase={}",
            url_secret("SRT passphrase")
        ),
    ];
    let (st, v) = api(
        &mut shown,
        "POST",
        "/api/v1/pull-inputs",
        Some(json!({"stream": "pulled", "urls": urls, "reconnect_delay_ms": 60000})),
    );
    assert_eq!(st, 201, "{v}");
    let pull_id = v["id"].as_str().unwrap().to_owned();
    let access_control = url_secret("SRT s=");
    let targets = json!([
        [
            format!(
                "rtmp://127.0.0.1:{tcp}/app2/{}",
                url_secret("output path key")
            ),
            format!("srt://127.0.0.1:{udp}?streamid=#!::r=x,m=publish,s={access_control}"),
        ],
        [format!(
            "srt://127.0.0.1:{udp}?streamid={}",
            url_secret("output plain SRT stream id")
        )]
    ]);
    let (st, v) = api(
        &mut shown,
        "POST",
        "/api/v1/outputs",
        Some(json!({"stream": "live1", "targets": targets, "reconnect_delay_ms": 60000})),
    );
    assert_eq!(st, 201, "{v}");
    let output_id = v["id"].as_str().unwrap().to_owned();
    // Credentials in the authority are refused, without being repeated.
    let userinfo = url_secret("user:password@");
    let (st, v) = api(
        &mut shown,
        "POST",
        "/api/v1/pull-inputs",
        Some(
            json!({"stream": "pulled2", "urls": [format!("rtmp://user:{userinfo}@127.0.0.1:{tcp}/live/x")]}),
        ),
    );
    assert_eq!(st, 422, "{v}");
    // A URL where a list was expected: the JSON error does not repeat it.
    let misplaced = url_secret("misplaced URL");
    let (st, v) = api(
        &mut shown,
        "POST",
        "/api/v1/pull-inputs",
        Some(
            json!({"stream": "pulled3", "urls": format!("rtmp://127.0.0.1:{tcp}/live/{misplaced}")}),
        ),
    );
    assert_eq!(st, 400, "{v}");
    // A token pasted into an API query: the access log does not keep it.
    let (st, v) = api(
        &mut shown,
        "GET",
        &format!("/api/v1/tokens?stream=live1&token={rtmp_token}"),
        None,
    );
    assert_eq!(st, 400, "{v}");
    // The CLI, given an API URL with a password.
    let cli_password = url_secret("API URL password");
    let (code, out, err) = run_primacy(
        &[
            "tokens",
            "list",
            "--api",
            &format!("http://ops:{cli_password}@127.0.0.1:{tcp}"),
        ],
        &[("PRIMACY_API_KEY", &key)],
    );
    assert_ne!(code, 0, "{out}{err}");
    shown.add("CLI", format!("{out}{err}"));

    let log_has = |needle: &str, n: usize| g.log().matches(needle).count() >= n;
    wait_until(
        "every pull URL tried and a push target failed",
        Duration::from_secs(60),
        || {
            log_has("pull input: URL failed", urls.len())
                && log_has("push output: target failed", 1)
        },
    );

    // Every answer that may show them.
    for path in [
        "/api/v1/pull-inputs".to_owned(),
        format!("/api/v1/pull-inputs/{pull_id}"),
        "/api/v1/outputs".to_owned(),
        format!("/api/v1/outputs/{output_id}"),
        "/api/v1/streams".to_owned(),
        "/api/v1/streams/live1".to_owned(),
        "/api/v1/streams/live2".to_owned(),
        "/api/v1/tokens".to_owned(),
        "/api/v1/audit?limit=100".to_owned(),
    ] {
        let (st, v) = api(&mut shown, "GET", &path, None);
        assert_eq!(st, 200, "{path}: {v}");
    }
    let (_, metrics) = g
        .http
        .try_call("GET", "/metrics", None, None, "text/plain")
        .expect("metrics");
    shown.add("metrics", metrics);
    let rows: Vec<Text> = diesel::sql_query(
        "SELECT concat_ws(' ', actor, action, target, before::text, after::text) AS text \
         FROM audit_log",
    )
    .load(&mut db.connect())
    .expect("read the audit table");
    assert!(rows.len() >= 4, "{} audit rows", rows.len());
    for r in rows {
        shown.add("audit table", r.text);
    }
    let log = g.log();
    shown.add("log", &log);

    // The attacks reached the gateway.
    assert!(
        log.contains("unknown application"),
        "no line about the odd application:\n{log}"
    );
    assert!(log.contains("publish refused"), "{log}");
    // A connection's lines carry its span: the peer, then the stream and
    // the feed once known.
    for (span, line) in [("rtmp{", "publishing"), ("srt{", "SRT publishing")] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{span}peer=127.0.0.1:"))
                    && l.contains(" stream=live")
                    && l.contains(" feed=")
                    && l.contains(&format!("}}: {line}"))),
            "no {line:?} line in a {span}…}} span:\n{log}"
        );
    }
    assert!(
        log.contains("\"GET /api/v1/tokens?stream=live1&token=*** HTTP/1.1\""),
        "no access log line for the query with a token:\n{log}"
    );
    let answers = &shown.0["API answers"];
    assert!(answers.contains("***"), "nothing masked in the answers?");

    // Count every secret everywhere (and its percent-encoded form).
    let mut leaks = Vec::new();
    for (what, s) in &secrets {
        for (place, text) in &shown.0 {
            let n = text.matches(s.as_str()).count();
            if n > 0 {
                leaks.push(format!("{what} ({s}) shown {n}× in {place}"));
            }
        }
    }
    // A line that the application name forged.
    let forged_lines = log.lines().filter(|l| l.starts_with("FORGED-LINE")).count();
    if forged_lines > 0 {
        leaks.push(format!("{forged_lines} forged log line(s)"));
    }
    for l in log.lines().filter(|l| {
        [
            "unknown application",
            "URL failed",
            "target failed",
            "refused",
        ]
        .iter()
        .any(|w| l.contains(w))
    }) {
        println!("{l}");
    }
    println!(
        "{} secrets, {} places searched ({} bytes of log); {} leaks",
        secrets.len(),
        shown.0.len(),
        log.len(),
        leaks.len()
    );
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    // Untrusted text is still in the log, escaped and without the secret.
    assert!(
        log.lines()
            .all(|l| !l.contains(forged) || l.contains("\\n")),
        "{log}"
    );
}
