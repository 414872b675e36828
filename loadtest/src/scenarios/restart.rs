//! `restart`: PostgreSQL goes away under load and comes back. The
//! gateway reaches its database through a TCP proxy run here; the proxy
//! cuts every connection and refuses new ones for a while (what a database
//! restart looks like from the gateway), then lets them through again.
//! Measured: the largest freeze of players on air during the outage (none
//! may stop), whether encoders that were publishing stay on air, and the
//! time from the database's return until `/api/health` and a database-backed
//! API call answer 200 again. Redis is not used by a single node; a Redis
//! restart needs the cluster build and is reported as not measured.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::{encoder, play_url, publish_url, sleep_ms, stop_all, wait_frames, Ctx, Proto};
use crate::fixtures::Quality;
use crate::gateway::{Gateway, Settings};
use crate::player::{max_gap, now_ms, Player};
use crate::report::{Figure, ScenarioReport};

/// A TCP proxy that can be cut.
struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    fn start(rt: &tokio::runtime::Handle, upstream: String) -> Result<Self> {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let (o, c) = (open.clone(), conns.clone());
        let accept = rt
            .spawn(async move {
                // Bounded by the scenario: aborted when the proxy drops.
                while let Ok((mut down, _)) = listener.accept().await {
                    if !o.load(Ordering::SeqCst) {
                        drop(down); // refused while cut
                        continue;
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut up) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                    if let Ok(mut v) = c.lock() {
                        v.retain(|h| !h.is_finished());
                        v.push(task.abort_handle());
                    }
                }
            })
            .abort_handle();
        Ok(Self {
            addr,
            open,
            conns,
            accept,
        })
    }

    /// Drop every connection and refuse new ones.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        if let Ok(mut v) = self.conns.lock() {
            for h in v.drain(..) {
                h.abort();
            }
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// `host:port` of a PostgreSQL URL.
fn authority(url: &str) -> Option<String> {
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
    let proxy = Proxy::start(&ctx.rt, upstream)?;
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
    r.figures.push(Figure::judged(
        "restart",
        "Redis restart during load",
        "not measured: a single node does not use Redis; a multi-node run is not implemented yet",
        None,
    ));
    r.details = json!({ "gaps_ms": gaps, "health_ms": health_ms, "api_ms": api_ms, "health_during_cut": health_during });
    Ok(r)
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
