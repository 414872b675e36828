//! `startup`: seed 10,000 publish tokens and 1,000 pull-input / push-output
//! definitions (where this build has them), then SIGKILL the gateway and
//! start it again, several times: time from the new process to `/api/ready`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use diesel::{Connection, PgConnection, RunQueryDsl};
use serde_json::json;

use super::Ctx;
use crate::gateway::{free_tcp, Gateway, Settings};
use crate::report::{Figure, ScenarioReport};
use crate::stats::Summary;

pub fn run(ctx: &Ctx) -> Result<ScenarioReport> {
    let mut r = ScenarioReport::new("startup");
    let tokens = ctx.pick(10_000, 2_000);
    let definitions = ctx.pick(1_000, 100);
    let restarts = ctx.pick(10, 3);

    let mut gw = Gateway::start(&ctx.target, &Settings::default(), "startup")?;
    let empty_start = gw.started_in;
    let db = gw
        .database_url()
        .context("startup needs a gateway started by the load test (not --gateway-url)")?
        .to_owned();
    let t = Instant::now();
    seed_tokens(&db, tokens)?;
    let seed_s = t.elapsed().as_secs_f64();
    let defs = seed_definitions(&gw, definitions)?;
    match defs {
        Some(n) => r.notes.push(format!("seeded {tokens} tokens (SQL, {seed_s:.1} s) and {n} pull-input/push-output definitions (API)")),
        None => r.notes.push(format!(
            "seeded {tokens} tokens (SQL, {seed_s:.1} s); this build has no pull-input/push-output definitions API, so none were seeded"
        )),
    }

    let mut ready_ms = Vec::new();
    for _ in 0..restarts {
        let d = gw.kill9_and_restart()?;
        ready_ms.push(d.as_secs_f64() * 1000.0);
        // The gateway should serve requests right away, not just say ready.
        let (st, _) = gw.call("GET", "/api/v1/tokens?per_page=1", None)?;
        if st != 200 {
            bail!("after restart, GET /api/v1/tokens answered {st}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = Summary::of(&ready_ms);
    let what = match defs {
        Some(n) => {
            format!("SIGKILL → ready, {tokens} tokens + {n} definitions, {restarts} restarts")
        }
        None => format!(
            "SIGKILL → ready, {tokens} tokens (no definitions in this build), {restarts} restarts"
        ),
    };
    r.figures.push(Figure::judged(
        "startup",
        what,
        s.brief("ms"),
        s.max.map(|m| m <= 1000.0),
    ));
    if let Some(e) = empty_start {
        r.figures.push(Figure::info(
            "first start on an empty database (includes migrations)",
            format!("{:.0} ms", e.as_secs_f64() * 1000.0),
        ));
    }
    r.details =
        json!({ "tokens": tokens, "definitions": defs, "ready_ms": ready_ms, "summary": s });
    Ok(r)
}

/// Insert `n` token rows in one statement.
fn seed_tokens(db: &str, n: usize) -> Result<()> {
    let mut conn = PgConnection::establish(db).context("connect to the gateway's database")?;
    diesel::sql_query(format!(
        "INSERT INTO publish_tokens (id, label, priority, streams, secret_id) \
         SELECT gen_random_uuid(), 'seed-' || g, g % 1000, \
                jsonb_build_array(jsonb_build_object('name', 'seed' || g, 'is_regex', false)), \
                gen_random_uuid() \
         FROM generate_series(1, {n}) AS g"
    ))
    .execute(&mut conn)
    .context("seed tokens")?;
    Ok(())
}

/// Half pull inputs, half push outputs, through the API, pointing at a
/// closed loopback port; `None` when this build has no such API.
fn seed_definitions(gw: &Gateway, n: usize) -> Result<Option<usize>> {
    let (st, _) = gw.call("GET", "/api/v1/pull-inputs", None)?;
    if st == 404 {
        return Ok(None);
    }
    let dead = free_tcp()?;
    let mut made = 0;
    for i in 0..n {
        let (path, body) = if i % 2 == 0 {
            (
                "/api/v1/pull-inputs",
                json!({
                    "stream": format!("pull{i}"),
                    "urls": [format!("rtmp://{dead}/live/pull{i}")],
                    "priority": 10,
                    "persistent": true,
                    "retry_count": 1_000_000,
                    "reconnect_delay_ms": 10_000,
                }),
            )
        } else {
            (
                "/api/v1/outputs",
                json!({
                    "stream": format!("out{i}"),
                    "targets": [[format!("rtmp://{dead}/live/out{i}")]],
                    "enabled": true,
                    "reconnect_delay_ms": 10_000,
                }),
            )
        };
        let (st, v) = gw.call("POST", path, Some(&body))?;
        if !(200..300).contains(&st) {
            bail!("POST {path}: {st} {v}");
        }
        made += 1;
    }
    Ok(Some(made))
}
