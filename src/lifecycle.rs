//! Start-up, readiness and shutdown of a gateway process (DESIGN section 7).
//!
//! Start-up, logged step by step with timings: database (with backoff) →
//! migrations (when configured) → bind listeners → ready. Shutdown is one
//! cancellation tree: the caller cancels the token, readiness goes 503
//! first, then the HTTP server stops gracefully within `shutdown.max_wait_ms`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Readiness};
use crate::auth::jwt::KeySet;
use crate::auth::publish::Admission;
use crate::config::Config;
use crate::engine::{self, EngineHandle, EngineSettings};
use crate::ingest::{self, ConnectionLimits, IngestContext};
use crate::metrics::Metrics;
use crate::store::{self, Db};
use tokio_util::task::TaskTracker;

/// A started gateway: its bound addresses and its shared parts.
pub struct Running {
    pub http_addr: SocketAddr,
    pub rtmp_addr: SocketAddr,
    pub srt_addr: SocketAddr,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    cancel: CancellationToken,
    sessions: TaskTracker,
    pub readiness: Arc<Readiness>,
    pub admission: Arc<Admission>,
    pub db: Db,
    server: actix_web::dev::ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    config: Arc<Config>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Run every start-up step and return once the node is ready.
pub async fn start(config: Config, cancel: &CancellationToken) -> Result<Running, StartError> {
    let t0 = Instant::now();
    config.validate_for_serve()?;
    let config = Arc::new(config);
    tracing::info!(node = %config.node_id, region = %config.region, "starting");

    let keys = Arc::new(KeySet::from_config(&config.auth)?);
    let db = Db::new(
        config.database.url.expose(),
        config.database.pool_size,
        Duration::from_millis(config.database.connect_timeout_ms),
    );
    let step = Instant::now();
    db.wait_until_up(cancel).await?;
    tracing::info!(
        elapsed_ms = step.elapsed().as_millis() as u64,
        "database reachable"
    );

    if config.database.migrate_on_start {
        let step = Instant::now();
        db.run(store::run_migrations).await?;
        tracing::info!(
            elapsed_ms = step.elapsed().as_millis() as u64,
            "migrations checked"
        );
    }

    let readiness = Arc::new(Readiness::default());
    let admission = Arc::new(Admission::new(
        keys,
        db.clone(),
        Duration::from_millis(config.auth.token_cache_ttl_ms),
    ));

    let metrics = Arc::new(Metrics::new());
    let cancel = cancel.child_token();
    let (engine, _engine_task) = engine::spawn(
        EngineSettings::from_config(&config),
        metrics.clone(),
        cancel.clone(),
    );

    let step = Instant::now();
    let rtmp_listener = tokio::net::TcpListener::bind(config.listen.rtmp)
        .await
        .map_err(|source| StartError::Bind {
            what: "RTMP",
            addr: config.listen.rtmp,
            source,
        })?;
    let rtmp_addr = rtmp_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "RTMP",
            addr: config.listen.rtmp,
            source,
        })?;
    let listener =
        std::net::TcpListener::bind(config.listen.http).map_err(|source| StartError::Bind {
            what: "HTTP",
            addr: config.listen.http,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
        what: "HTTP",
        addr: config.listen.http,
        source,
    })?;
    let state = web::Data::new(AppState {
        db: db.clone(),
        admission: admission.clone(),
        engine: engine.clone(),
        metrics: metrics.clone(),
        config: config.clone(),
        readiness: readiness.clone(),
        started: t0,
    });
    let max_body = config.api.max_body_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(actix_web::middleware::Logger::new("%a \"%r\" %s %b %Dms").exclude("/api/health"))
            .configure(|cfg| api::configure(cfg, max_body))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(config.shutdown.max_wait_ms.div_ceil(1000).max(1))
    .listen(listener)
    .map_err(|source| StartError::Bind {
        what: "HTTP",
        addr: config.listen.http,
        source,
    })?
    .run();
    let handle = server.handle();
    let server_task = tokio::spawn(server);
    let sessions = TaskTracker::new();
    let ctx = Arc::new(IngestContext {
        engine: engine.clone(),
        admission: admission.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        rtmp: config.rtmp.clone(),
        srt: config.srt.clone(),
        limits: ConnectionLimits::new(
            config.rtmp.max_connections,
            config.rtmp.max_connections_per_ip,
        ),
    });
    tokio::spawn(ingest::rtmp::serve(
        rtmp_listener,
        ctx.clone(),
        cancel.clone(),
        sessions.clone(),
    ));
    let buffer = config.srt.sender_buffer_bytes();
    let srt_bind_err = |source| StartError::Bind {
        what: "SRT",
        addr: config.listen.srt,
        source,
    };
    // Bound here so the chosen address is known (port 0 in tests).
    let udp = tokio::net::UdpSocket::bind(config.listen.srt)
        .await
        .map_err(srt_bind_err)?;
    let srt_addr = udp.local_addr().map_err(srt_bind_err)?;
    let (srt_listener, srt_incoming) = srt_tokio::SrtListener::builder()
        .latency(Duration::from_millis(config.srt.latency_ms))
        .set(|o| o.sender.buffer_size = srt_tokio::options::ByteCount(buffer as u64))
        .socket(udp)
        .bind(srt_addr)
        .await
        .map_err(srt_bind_err)?;
    tokio::spawn(ingest::srt::serve(
        srt_listener,
        srt_incoming,
        ctx,
        cancel.clone(),
        sessions.clone(),
    ));
    tracing::info!(http = %http_addr, rtmp = %rtmp_addr, srt = %srt_addr, elapsed_ms = step.elapsed().as_millis() as u64, "listeners bound");

    readiness.set_ready();
    tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "ready");
    Ok(Running {
        http_addr,
        rtmp_addr,
        srt_addr,
        engine,
        metrics,
        cancel,
        sessions,
        readiness,
        admission,
        db,
        server: handle,
        server_task,
        config,
    })
}

impl Running {
    /// Drain and stop: readiness 503 at once, then stop the HTTP server
    /// gracefully (bounded by `shutdown.max_wait_ms`).
    pub async fn shutdown(self) {
        self.readiness.set_draining();
        tracing::info!("draining");
        let wait = Duration::from_millis(self.config.shutdown.max_wait_ms);
        // New publishes and plays are refused (readiness); listeners stop;
        // existing sessions may finish within the deadline.
        self.cancel.cancel();
        self.sessions.close();
        if tokio::time::timeout(wait, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.sessions.len(),
                "sessions still open at shutdown.max_wait_ms; closing them"
            );
        }
        let stop = self.server.stop(true);
        if tokio::time::timeout(wait, stop).await.is_err() {
            tracing::warn!("HTTP server did not stop within shutdown.max_wait_ms");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.server_task).await;
        tracing::info!("stopped");
    }
}

/// `primacy serve`: start, wait for SIGTERM/SIGINT, drain, exit. A second
/// signal exits at once.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(cancel.clone()));
    let running = tokio::select! {
        r = start(config, &cancel) => r?,
        _ = cancel.cancelled() => {
            tracing::info!("shutdown requested during start-up");
            return Ok(());
        }
    };
    cancel.cancelled().await;
    running.shutdown().await;
    signals.abort();
    Ok(())
}

async fn watch_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
    cancel.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}
