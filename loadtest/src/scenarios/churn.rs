//! `churn`: under a steady load (two publishers, ten players, one of them
//! recording), encoders keep connecting and leaving — valid tokens that
//! publish for a moment then stop or drop, bad tokens that are refused —
//! over RTMP and SRT. Afterwards the gateway's file descriptors and memory
//! must come back to where they were, and the steady players must not have
//! noticed.

use std::time::{Duration, Instant};

use anyhow::Result;
use primacy::client::{self, ClientOptions};
use serde_json::json;

use super::{
    encoder, play_url, publish_source_url, publish_url, sleep_ms, stop_all, wait_frames, Ctx, Proto,
};
use crate::encoder::Encoder;
use crate::fixtures::Quality;
use crate::gateway::{Gateway, Settings};
use crate::player::{max_gap, now_ms, Player};
use crate::report::{Figure, ScenarioReport};

pub fn run(ctx: &Ctx) -> Result<ScenarioReport> {
    let mut r = ScenarioReport::new("churn");
    let secs = ctx.pick(40, 3);
    let workers = ctx.pick(16, 4);
    let fx = ctx.fixture(Quality::Sd)?;
    let gw = Gateway::start(&ctx.target, &Settings::default(), "churn")?;
    let steady = gw.token_regex("steady", "steady-.*", Some(100))?;
    let good = gw.token_regex("churn", "churn-.*", Some(10))?;
    let mut encs = Vec::new();
    let mut players = Vec::new();
    for i in 0..2 {
        let s = format!("steady-{i}");
        encs.push(encoder(
            ctx,
            publish_url(&gw, Proto::Rtmp, &s, &steady.secret)?,
            &fx,
        ));
        gw.wait_on_air(&s, 1, None, Duration::from_secs(20))?;
        for j in 0..5 {
            players.push(Player::spawn(
                &ctx.rt,
                play_url(&gw, Proto::Rtmp, &s)?,
                i == 0 && j == 0,
            ));
        }
    }
    let refs: Vec<&Player> = players.iter().collect();
    wait_frames(&refs, 30, Duration::from_secs(20))?;
    sleep_ms(ctx.pick(2000, 500));
    let before = gw.stat();
    // The database pool grows under load (to `database.pool_size`) and
    // keeps its connections: those are not the churn's.
    let db_port = match &ctx.target {
        crate::gateway::Target::Spawn { admin_db, .. } => super::restart::authority(admin_db)
            .and_then(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok())),
        _ => None,
    }
    .unwrap_or(5432u16);
    let db_conns = || {
        gw.pid()
            .map_or(0, |p| crate::procstat::tcp_to_port(p, db_port)) as u64
    };
    let db_before = db_conns();

    // Churn.
    let t_churn = now_ms();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut urls = Vec::new();
    for w in 0..workers {
        let proto = if w % 2 == 0 { Proto::Rtmp } else { Proto::Srt };
        let s = format!("churn-{w}");
        // Half the workers publish a second source (`sourceId`) of their
        // stream: its source state comes and goes with the churn too.
        let good_url = if w % 4 < 2 {
            publish_url(&gw, proto, &s, &good.secret)?
        } else {
            publish_source_url(&gw, proto, &s, "cam-2", &good.secret)?
        };
        urls.push((
            good_url,
            publish_url(&gw, proto, &s, "bad-token")?,
            publish_url(&gw, proto, "steady-0", &good.secret)?,
        ));
    }
    let counts = ctx.rt.block_on(async {
        let mut tasks = Vec::new();
        for (w, (good_url, bad_url, wrong_stream)) in urls.into_iter().enumerate() {
            let fx = fx.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = [0u64; 3];
                let mut k = w;
                while Instant::now() < deadline && n.iter().sum::<u64>() < 100_000 {
                    k += 1;
                    match k % 4 {
                        0 | 1 => {
                            // Publish for a moment, then leave (cleanly or not).
                            let e = Encoder::spawn(
                                &tokio::runtime::Handle::current(),
                                crate::encoder::EncoderConfig::new(good_url.clone(), fx.clone()),
                            );
                            tokio::time::sleep(Duration::from_millis(
                                200 + rand::random_range(0..800),
                            ))
                            .await;
                            if k % 8 < 4 {
                                e.stop().await;
                            } else {
                                e.kill();
                            }
                            n[0] += 1;
                        }
                        2 => {
                            if let Ok(s) = client::push(&bad_url, &ClientOptions::default()).await {
                                s.close().await;
                            }
                            n[1] += 1;
                        }
                        _ => {
                            // A valid token for a stream it may not publish.
                            if let Ok(s) =
                                client::push(&wrong_stream, &ClientOptions::default()).await
                            {
                                s.close().await;
                            }
                            n[2] += 1;
                        }
                    }
                }
                n
            }));
        }
        let mut total = [0u64; 3];
        for t in tasks {
            if let Ok(n) = t.await {
                for i in 0..3 {
                    total[i] += n[i];
                }
            }
        }
        total
    });
    let t_end = now_ms();
    // Sessions close, idle timers fire, buffers are returned.
    sleep_ms(ctx.pick(5000, 2000));
    let after = gw.stat();
    let db_after = db_conns();
    let gap = max_gap(&players[0].frames(), t_churn, t_end);
    stop_all(ctx, players, encs);

    r.figures.push(Figure::info(
        format!("churn for {secs} s, {workers} clients (RTMP and SRT)"),
        format!(
            "{} short publishes, {} bad-token attempts, {} wrong-stream attempts",
            counts[0], counts[1], counts[2]
        ),
    ));
    r.figures.push(Figure {
        target: None,
        what: "steady player's largest gap during the churn".into(),
        measured: super::ms(gap),
        met: gap.map(|g| g <= 200.0),
    });
    match (before, after) {
        (Some(b), Some(a)) => {
            let own_before = b.fds.saturating_sub(db_before);
            let own_after = a.fds.saturating_sub(db_after);
            r.figures.push(Figure {
                target: None,
                what: "gateway file descriptors (PostgreSQL pool connections apart): before → after the churn".into(),
                measured: format!(
                    "{own_before} → {own_after} (pool: {db_before} → {db_after} connections)"
                ),
                met: Some(own_after <= own_before + 2),
            });
            let d = a.rss_kib as f64 - b.rss_kib as f64;
            r.figures.push(Figure {
                target: None,
                what: "gateway resident memory: before → after the churn".into(),
                measured: format!(
                    "{:.1} → {:.1} MiB ({d:+.0} KiB)",
                    b.rss_kib as f64 / 1024.0,
                    a.rss_kib as f64 / 1024.0
                ),
                met: Some(d <= 8192.0),
            });
            r.details = json!({ "before": b, "after": a, "counts": counts, "steady_gap_ms": gap });
        }
        _ => r
            .notes
            .push("no /proc figures: the gateway is not a local process".into()),
    }
    Ok(r)
}
