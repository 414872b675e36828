//! `admission`: publish attempts as fast as a few concurrent clients can
//! make them, with valid tokens (accepted, then closed at once), tokens with
//! a bad signature and garbage tokens (refused), over RTMP and SRT. The
//! latency is the client's: connect → accepted or refused (TCP + RTMP
//! handshake + connect + publish, or the SRT handshake), an upper bound of
//! the admission itself; the rate per gateway CPU-second is a lower bound of
//! the verifications a core can make.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use primacy::client::{self, ClientError, ClientOptions, ClientUrl};
use serde_json::json;

use super::{publish_url, Ctx, Proto};
use crate::gateway::{Gateway, Settings};
use crate::report::{Figure, ScenarioReport};
use crate::stats::Summary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Valid,
    BadSignature,
    Garbage,
}

#[derive(Debug, serde::Serialize)]
struct Run {
    proto: Proto,
    kind: Kind,
    attempts: usize,
    /// Answers that were not what the token deserved.
    wrong: usize,
    seconds: f64,
    per_second: f64,
    gateway_cpu_s: f64,
    attempts_per_cpu_s: Option<f64>,
    latency: Summary,
}

pub fn run(ctx: &Ctx) -> Result<ScenarioReport> {
    let mut r = ScenarioReport::new("admission");
    let secs = ctx.pick(6, 1);
    let workers = ctx.pick(16, 4);
    let n_tokens = 50;
    let gw = Gateway::start(&ctx.target, &Settings::default(), "admission")?;
    let mut tokens = Vec::new();
    for i in 0..n_tokens {
        tokens.push(gw.token(&format!("adm-{i}"), &[&format!("adm-{i}")], Some(10))?);
    }
    let mut runs = Vec::new();
    let protos: Vec<Proto> = ctx.pick(vec![Proto::Rtmp, Proto::Srt], vec![Proto::Rtmp]);
    for proto in protos {
        for kind in [Kind::Valid, Kind::BadSignature, Kind::Garbage] {
            // One URL per worker and token: streams differ so accepted
            // publishes do not take each other's air.
            let mut urls = Vec::new();
            for (i, t) in tokens.iter().enumerate() {
                let secret = match kind {
                    Kind::Valid => t.secret.clone(),
                    Kind::BadSignature => {
                        // Same header and claims, another signature.
                        let (head, sig) = t.secret.rsplit_once('.').unwrap_or((&t.secret, ""));
                        let mut sig: Vec<char> = sig.chars().collect();
                        if let Some(c) = sig.get_mut(2) {
                            *c = if *c == 'A' { 'B' } else { 'A' };
                        }
                        format!("{head}.{}", sig.into_iter().collect::<String>())
                    }
                    Kind::Garbage => format!("not-a-token-{i}"),
                };
                urls.push(publish_url(&gw, proto, &format!("adm-{i}"), &secret)?);
            }
            runs.push(attempts(ctx, &gw, proto, kind, urls, workers, secs)?);
        }
    }
    for run in &runs {
        if run.wrong > 0 {
            r.notes.push(format!(
                "{} {:?}: {} of {} attempts got the wrong answer",
                run.proto.name(),
                run.kind,
                run.wrong,
                run.attempts
            ));
        }
    }
    // Judge on the RTMP runs (the target is about the token check).
    let rtmp: Vec<&Run> = runs.iter().filter(|x| x.proto == Proto::Rtmp).collect();
    let p99 = rtmp
        .iter()
        .filter_map(|x| x.latency.p99)
        .fold(0.0, f64::max);
    let rate = rtmp
        .iter()
        .filter_map(|x| x.attempts_per_cpu_s)
        .fold(f64::INFINITY, f64::min);
    r.figures.push(Figure::judged(
        "admission",
        "publish admission p99, whole RTMP publish handshake (upper bound), worst kind",
        format!("{p99:.2} ms"),
        Some(p99 <= 5.0),
    ));
    r.figures.push(Figure::judged(
        "admission",
        "publish attempts per gateway CPU-second, whole RTMP session (lower bound of verifications/s per core)",
        format!("{rate:.0} /CPU-s"),
        Some(rate >= 20_000.0),
    ));
    for run in &runs {
        r.figures.push(Figure::info(
            format!("{} {:?} ({} workers)", run.proto.name(), run.kind, workers),
            format!(
                "{:.0} attempts/s, {} /CPU-s; {}",
                run.per_second,
                run.attempts_per_cpu_s
                    .map_or("–".into(), |x| format!("{x:.0}")),
                run.latency.brief("ms")
            ),
        ));
    }
    r.notes.push(
        "the token check alone (signature + cached row) is measured by `cargo bench --bench admission`; \
         here every attempt also pays the TCP and RTMP handshakes (or the SRT handshake) and a session on both sides"
            .into(),
    );
    r.details = json!({ "runs": runs });
    Ok(r)
}

fn attempts(
    ctx: &Ctx,
    gw: &Gateway,
    proto: Proto,
    kind: Kind,
    urls: Vec<ClientUrl>,
    workers: usize,
    secs: u64,
) -> Result<Run> {
    let urls = Arc::new(urls);
    let lat = Arc::new(Mutex::new(Vec::<f64>::new()));
    let wrong = Arc::new(Mutex::new(0usize));
    let c0 = gw.stat().map(|s| s.cpu_s);
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    ctx.rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..workers {
            let urls = urls.clone();
            let lat = lat.clone();
            let wrong = wrong.clone();
            tasks.push(tokio::spawn(async move {
                let opts = ClientOptions::default();
                let mut i = w;
                let mut mine = Vec::new();
                let mut bad = 0;
                // Bounded by time, and by count (100k attempts per worker).
                while tokio::time::Instant::now() < deadline && mine.len() < 100_000 {
                    let url = &urls[i % urls.len()];
                    i += workers;
                    let t = Instant::now();
                    let res = client::push(url, &opts).await;
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    let ok = matches!(
                        (&res, kind),
                        (Ok(_), Kind::Valid)
                            | (
                                Err(ClientError::Refused(_)),
                                Kind::BadSignature | Kind::Garbage
                            )
                    );
                    if ok {
                        mine.push(ms);
                    } else {
                        bad += 1;
                    }
                    if let Ok(s) = res {
                        s.close().await;
                    }
                }
                if let Ok(mut l) = lat.lock() {
                    l.extend(mine);
                }
                if let Ok(mut b) = wrong.lock() {
                    *b += bad;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = match (c0, gw.stat().map(|s| s.cpu_s)) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let lat = lat.lock().map(|l| l.clone()).unwrap_or_default();
    let wrong = *wrong.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    if lat.is_empty() {
        bail!(
            "{} {kind:?}: no attempt got the expected answer ({wrong} wrong)",
            proto.name()
        );
    }
    let attempts = lat.len() + wrong;
    Ok(Run {
        proto,
        kind,
        attempts,
        wrong,
        seconds,
        per_second: attempts as f64 / seconds,
        gateway_cpu_s: cpu,
        attempts_per_cpu_s: (cpu > 0.0).then(|| attempts as f64 / cpu),
        latency: Summary::of(&lat),
    })
}
