//! `restart`: PostgreSQL goes away under load and comes back. The
//! gateway reaches its database through a TCP proxy run here; the proxy
//! cuts every connection and refuses new ones for a while (what a database
//! restart looks like from the gateway), then lets them through again.
//! Measured: the largest freeze of players on air during the outage (none
//! may stop), whether encoders that were publishing stay on air, and the
//! time from the database's return until `/api/health` and a database-backed
//! API call answer 200 again.
//!
//! Then the same for Redis: two nodes of one cluster (eu, us) reach Redis
//! through such a proxy; an encoder publishes to each, a player on us
//! watches the eu feed (relayed). The proxy cuts every Redis connection
//! for the outage and the run's keys are deleted meanwhile (a restart
//! without persistence). Measured: the player's largest gap, encoders
//! dropped, and the time from Redis's return until both nodes list each
//! other again and elect the same feed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::{encoder, play_url, publish_url, sleep_ms, stop_all, wait_frames, Ctx, Proto};
use crate::fixtures::Quality;
use crate::gateway::{Gateway, Settings};
use crate::impair::{Impairment, Link};
use crate::player::{max_gap, now_ms, Player};
use crate::report::{Figure, ScenarioReport};

/// `host:port` of a PostgreSQL URL.
pub(super) fn authority(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let auth = rest.split('/').next()?;
    Some(if auth.contains(':') {
        auth.to_owned()
    } else {
        format!("{auth}:5432")
    })
}

pub fn run(ctx: &Ctx) -> Result<ScenarioReport> {
    let mut r = ScenarioReport::new("restart");
    let outage_s = ctx.pick(5, 2);
    let crate::gateway::Target::Spawn { admin_db, .. } = &ctx.target else {
        anyhow::bail!("restart needs a gateway started by the load test (it puts a proxy in front of its database)");
    };
    let upstream = authority(admin_db).context("the PostgreSQL URL has no host")?;
    let proxy = Link::tcp(&ctx.rt, upstream, Impairment::default())?;
    let fx = ctx.fixture(Quality::Sd)?;
    let gw = Gateway::start(
        &ctx.target,
        &Settings::default().database_via(proxy.addr),
        "restart",
    )?;
    let token = gw.token_regex("restart", "rs-.*", Some(10))?;
    let mut encs = Vec::new();
    let mut players = Vec::new();
    for i in 0..2 {
        let s = format!("rs-{i}");
        encs.push(encoder(
            ctx,
            publish_url(&gw, Proto::Rtmp, &s, &token.secret)?,
            &fx,
        ));
        gw.wait_on_air(&s, 1, None, Duration::from_secs(20))?;
        players.push(Player::spawn(
            &ctx.rt,
            play_url(&gw, Proto::Rtmp, &s)?,
            true,
        ));
    }
    let refs: Vec<&Player> = players.iter().collect();
    wait_frames(&refs, 30, Duration::from_secs(20))?;
    sleep_ms(1000);

    let t_cut = now_ms();
    proxy.cut();
    sleep_ms(outage_s * 1000);
    let health_during = gw
        .call("GET", "/api/health", None)
        .map(|(st, _)| st)
        .unwrap_or(0);
    let t_back = Instant::now();
    proxy.restore();
    // Converged: health and a database-backed call answer 200.
    let mut health_ms = None;
    let mut api_ms = None;
    while t_back.elapsed() < Duration::from_secs(30) && (health_ms.is_none() || api_ms.is_none()) {
        if health_ms.is_none()
            && gw
                .call("GET", "/api/health", None)
                .is_ok_and(|(st, _)| st == 200)
        {
            health_ms = Some(t_back.elapsed().as_secs_f64() * 1000.0);
        }
        if api_ms.is_none()
            && gw
                .call("GET", "/api/v1/tokens?per_page=1", None)
                .is_ok_and(|(st, _)| st == 200)
        {
            api_ms = Some(t_back.elapsed().as_secs_f64() * 1000.0);
        }
        sleep_ms(20);
    }
    sleep_ms(1000);
    let t_end = now_ms();
    let gaps: Vec<f64> = players
        .iter()
        .filter_map(|p| max_gap(&p.frames(), t_cut, t_end))
        .collect();
    let worst = gaps.iter().copied().fold(0.0, f64::max);
    let on_air = encs.iter().filter(|e| e.is_publishing()).count();
    let drops: u64 = encs
        .iter()
        .map(|e| e.stats.drops.load(Ordering::Relaxed))
        .sum();
    stop_all(ctx, players, encs);
    drop(proxy);

    r.figures.push(Figure::judged(
        "restart",
        format!("PostgreSQL cut for {outage_s} s under load: players' largest gap"),
        format!("{worst:.1} ms; {on_air} of 2 encoders still publishing, {drops} dropped"),
        Some(worst <= 200.0 && drops == 0),
    ));
    let conv = health_ms.zip(api_ms).map(|(a, b)| a.max(b));
    r.figures.push(Figure::judged(
        "restart",
        "PostgreSQL back → health and API answer 200 (converged)",
        format!(
            "health {}, API {} (health during the cut: {health_during})",
            super::ms(health_ms),
            super::ms(api_ms)
        ),
        conv.map(|c| c <= 2000.0),
    ));
    let redis = match redis_outage(ctx, outage_s, &mut r) {
        Ok(v) => v,
        Err(e) => {
            r.figures.push(Figure::judged(
                "restart",
                "Redis restart during load",
                format!("not measured: {e:#}"),
                None,
            ));
            json!(null)
        }
    };
    r.details = json!({
        "gaps_ms": gaps, "health_ms": health_ms, "api_ms": api_ms,
        "health_during_cut": health_during, "redis": redis,
    });
    Ok(r)
}

/// A shared secret of the two nodes (loopback only, never a real one).
const CLUSTER_SECRET: &str = "loadtest-cluster-secret-0123456789abcdef";

/// One command to the Redis server at `addr` in raw RESP (no client
/// library needed for the few this scenario sends); the first line of the
/// answer.
fn redis_command(addr: &str, args: &[&str]) -> Result<String> {
    use std::io::{Read, Write};
    let mut cmd = format!("*{}\r\n", args.len());
    for arg in args {
        cmd.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut sock =
        std::net::TcpStream::connect(addr).with_context(|| format!("Redis at {addr}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.write_all(cmd.as_bytes())?;
    let mut buf = [0u8; 256];
    let n = sock.read(&mut buf)?;
    let answer = String::from_utf8_lossy(&buf[..n]);
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

/// An integer answer (`:N`) of a Redis command.
fn redis_int(addr: &str, args: &[&str]) -> Result<i64> {
    let a = redis_command(addr, args)?;
    a.strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("Redis {} answered {a:?}", args[0]))
}

/// Delete every key under `prefix` (what a restart without persistence
/// leaves of them).
fn redis_delete_prefix(addr: &str, prefix: &str) -> Result<()> {
    let script = "local n = 0 for _,k in ipairs(redis.call('KEYS', ARGV[1])) do n = n + redis.call('DEL', k) end return n";
    redis_int(addr, &["EVAL", script, "0", &format!("{prefix}*")]).map(drop)
}

/// The run's registry in Redis is whole again: both nodes in `P:nodes`,
/// and each node's feed hash holds its feed.
fn registry_whole(addr: &str, prefix: &str, nodes: [&str; 2]) -> bool {
    let members = redis_int(addr, &["SCARD", &format!("{prefix}:nodes")]);
    members.is_ok_and(|m| m == 2)
        && nodes.iter().all(|n| {
            redis_int(addr, &["HLEN", &format!("{prefix}:feeds:{n}")]).is_ok_and(|l| l >= 1)
        })
}

/// The node lists both nodes.
fn listed(n: &Gateway) -> bool {
    n.call("GET", "/api/v1/cluster/nodes", None)
        .is_ok_and(|(st, v)| st == 200 && v["nodes"].as_array().is_some_and(|a| a.len() == 2))
}

/// Both nodes list each other and elect the same (known) feed of `stream`.
fn agreed(nodes: [&Gateway; 2], stream: &str) -> bool {
    let mut elected = Vec::new();
    for n in nodes {
        if !listed(n) {
            return false;
        }
        match n.stream(stream) {
            Ok(Some(v)) if v["sources"][0]["elected"].is_string() => {
                elected.push(v["sources"][0]["elected"].clone());
            }
            _ => return false,
        }
    }
    elected[0] == elected[1]
}

/// The Redis half of the scenario; pushes its figures into `r`.
fn redis_outage(ctx: &Ctx, outage_s: u64, r: &mut ScenarioReport) -> Result<serde_json::Value> {
    crate::gateway::redis_ping(&ctx.redis_url)?;
    let upstream = ctx
        .redis_url
        .strip_prefix("redis://")
        .map(|rest| rest.rsplit_once('@').map_or(rest, |(_, h)| h))
        .and_then(|rest| rest.split('/').next())
        .map(|a| {
            if a.contains(':') {
                a.to_owned()
            } else {
                format!("{a}:6379")
            }
        })
        .context("the Redis URL has no host")?;
    let proxy = Link::tcp(&ctx.rt, upstream.clone(), Impairment::default())?;
    let prefix = format!("primacy-loadtest-{}", uuid::Uuid::new_v4().simple());
    let fx = ctx.fixture(Quality::Sd)?;
    let eu = Gateway::start(
        &ctx.target,
        &Settings::default()
            .set("PRIMACY_REDIS_URL", format!("redis://{}", proxy.addr))
            .set("PRIMACY_REDIS_KEY_PREFIX", &prefix)
            .set("PRIMACY_CLUSTER_SECRET", CLUSTER_SECRET)
            .set("PRIMACY_REGION", "eu"),
        "restart-eu",
    )?;
    let us = eu.peer(
        &Settings::default().set("PRIMACY_REGION", "us"),
        "restart-us",
    )?;
    let stream = "rs-redis";
    let a = eu.token("a", &[stream], Some(100))?;
    let b = eu.token("b", &[stream], Some(50))?;
    let end = Instant::now() + Duration::from_secs(15);
    while ![&eu, &us].iter().all(|n| listed(n)) {
        anyhow::ensure!(
            Instant::now() < end,
            "the two nodes did not see each other within 15 s"
        );
        sleep_ms(50);
    }
    let enc_b = encoder(ctx, publish_url(&us, Proto::Rtmp, stream, &b.secret)?, &fx);
    us.wait_on_air(stream, 1, None, Duration::from_secs(20))?;
    let player = Player::spawn(&ctx.rt, play_url(&us, Proto::Rtmp, stream)?, true);
    let enc_a = encoder(ctx, publish_url(&eu, Proto::Rtmp, stream, &a.secret)?, &fx);
    us.wait_on_air(stream, 2, Some(&a.id), Duration::from_secs(20))?;
    wait_frames(&[&player], 60, Duration::from_secs(20))?;
    sleep_ms(1000);

    let t_cut = now_ms();
    anyhow::ensure!(
        registry_whole(
            &upstream,
            &prefix,
            ["loadtest-restart-eu", "loadtest-restart-us"]
        ),
        "the cluster's registry in Redis is not as expected before the cut (key names changed?)"
    );
    proxy.cut();
    redis_delete_prefix(&upstream, &prefix)?;
    sleep_ms(outage_s * 1000);
    let t_back = Instant::now();
    proxy.restore();
    let mut converged_ms = None;
    while t_back.elapsed() < Duration::from_secs(30) {
        if registry_whole(
            &upstream,
            &prefix,
            ["loadtest-restart-eu", "loadtest-restart-us"],
        ) && agreed([&eu, &us], stream)
        {
            converged_ms = Some(t_back.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        sleep_ms(20);
    }
    sleep_ms(1000);
    let gap = max_gap(&player.frames(), t_cut, now_ms());
    let encs = vec![enc_a, enc_b];
    let on_air = encs.iter().filter(|e| e.is_publishing()).count();
    let drops: u64 = encs
        .iter()
        .map(|e| e.stats.drops.load(Ordering::Relaxed))
        .sum();
    stop_all(ctx, vec![player], encs);
    drop(us);
    drop(eu);
    drop(proxy);
    let _ = redis_delete_prefix(&upstream, &prefix);

    r.figures.push(Figure::judged(
        "restart",
        format!(
            "Redis cut for {outage_s} s under load (2 nodes, its keys deleted): the player on us watching the eu feed, largest gap"
        ),
        format!(
            "{}; {on_air} of 2 encoders still publishing, {drops} dropped",
            super::ms(gap)
        ),
        gap.map(|g| g <= 200.0 && drops == 0),
    ));
    r.figures.push(Figure::judged(
        "restart",
        "Redis back → registry rewritten (both nodes, their feeds), both nodes list each other and elect the same feed (converged)",
        super::ms(converged_ms),
        Some(converged_ms.is_some_and(|c| c <= 2000.0)),
    ));
    Ok(json!({ "largest_gap_ms": gap, "converged_ms": converged_ms, "drops": drops }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn authority_of_urls() {
        assert_eq!(
            super::authority("postgres://postgres@127.0.0.1:5432/postgres").as_deref(),
            Some("127.0.0.1:5432")
        );
        assert_eq!(
            super::authority("postgres://u:p@db/x").as_deref(),
            Some("db:5432")
        );
    }
}
