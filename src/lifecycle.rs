//! Start-up, readiness and drain of a gateway process (DESIGN section 7).
//!
//! Start-up runs seven steps in order, each logged with the time it took:
//! database (with backoff) → migrations (when configured) → load
//! definitions → bind listeners → start pull inputs and push outputs →
//! join the cluster → ready. `/api/ready` answers 503 until the last one.
//! A step with nothing to do yet says so in its log line.
//!
//! The drain (SIGTERM/SIGINT or `POST /api/v1/node/drain`) is one
//! cancellation tree with two tokens:
//! - the **drain** token ([`Readiness::drain_token`]): readiness goes 503
//!   and new publishes and plays are refused (RTMP `SHUTTING_DOWN`, SRT
//!   1503) at once; listeners stay open so that refusals reach the client;
//! - the **stop** token, cancelled once every session ended or
//!   `shutdown.max_wait_ms` passed: listeners close and remaining sessions
//!   (players and publishers, RTMP and SRT) are closed.
//!
//! Around them: the cluster lease is marked draining first, push outputs
//! flush after the sessions, and the lease is released last.
//!
//! Every listener (RTMP, SRT, HTTP) runs under a supervisor
//! (`supervise`): one whose task ends other than by its stop token is
//! logged as an error, makes the node not ready with the reason, and is
//! bound again on the same address with backoff.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::auth::jwt::KeySet;
use crate::auth::publish::Admission;
use crate::cluster::{self, Cluster, Membership, MembershipSlot};
use crate::config::Config;
use crate::engine::{self, EngineHandle, EngineSettings};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::relay::pull::PullInputDef;
use crate::relay::push::OutputDef;
use crate::relay::{RelayContext, Relays};
use crate::server::{self, ConnectionLimits, IngestContext};
use crate::store::{self, Db};
use crate::supervise::{self, Backoff, ListenerHandle, Rebind, ServeError, ServeFuture};
use crate::telemetry::LogLimiter;

/// A started gateway: its bound addresses and its shared parts.
pub struct Running {
    pub http_addr: SocketAddr,
    pub rtmp_addr: SocketAddr,
    pub srt_addr: SocketAddr,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    /// Closes listeners and every remaining session (end of the drain).
    stop: CancellationToken,
    /// Every RTMP and SRT connection.
    sessions: TaskTracker,
    pub readiness: Arc<Readiness>,
    pub admission: Arc<Admission>,
    pub db: Db,
    http: HttpControl,
    config: Arc<Config>,
    pub relays: Arc<Relays>,
    /// The cluster shell (when `redis.url` is set).
    pub cluster: Option<Cluster>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

const STEPS: u8 = 7;

/// One start-up step: logged when it ends, with the time it took.
struct Step {
    n: u8,
    name: &'static str,
    began: Instant,
}

impl Step {
    fn begin(n: u8, name: &'static str) -> Self {
        tracing::debug!(step = name, "start-up {n}/{STEPS}: {name}");
        Self {
            n,
            name,
            began: Instant::now(),
        }
    }

    fn elapsed_ms(&self) -> f64 {
        (self.began.elapsed().as_secs_f64() * 1e4).round() / 10.0
    }

    /// The step did its work; `detail` says what it found or did.
    fn done(self, detail: &str) {
        let elapsed_ms = self.elapsed_ms();
        tracing::info!(
            step = self.name,
            elapsed_ms,
            "start-up {}/{STEPS} {}: {detail}",
            self.n,
            self.name
        );
    }

    /// Nothing to do in this step, and why.
    fn skipped(self, why: &str) {
        let elapsed_ms = self.elapsed_ms();
        tracing::info!(
            step = self.name,
            elapsed_ms,
            skipped = true,
            "start-up {}/{STEPS} {}: skipped, {why}",
            self.n,
            self.name
        );
    }
}

/// Definitions restored from PostgreSQL in step 3 and started in step 5:
/// this node's pull inputs and push outputs. Publish tokens and API keys
/// are not loaded: admission reads each token row on first use (cached), so
/// they are usable as soon as the database is.
#[derive(Debug, Default)]
struct Definitions {
    pulls: Vec<PullInputDef>,
    outputs: Vec<OutputDef>,
}

impl Definitions {
    /// Step 3. A row that cannot be parsed or validated is logged and
    /// skipped, never changed. Pull inputs that are not persistent do not
    /// survive a restart: their rows are removed.
    async fn load(db: &Db, node_id: &str, step: Step) -> Result<Self, StartError> {
        let node = node_id.to_owned();
        let (pull_rows, output_rows) = db
            .run(move |c| {
                Ok((
                    store::pull_inputs::for_node(c, &node)?,
                    store::push_outputs::for_node(c, &node)?,
                ))
            })
            .await?;
        let mut defs = Self::default();
        let mut skipped = 0;
        let mut transient = Vec::new();
        for row in &pull_rows {
            match PullInputDef::from_row(row) {
                Ok(d) if d.persistent => defs.pulls.push(d),
                Ok(d) => transient.push(d.id),
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(pull_input = %row.id, error = %e, "stored pull input cannot be used; skipped and left untouched");
                }
            }
        }
        for row in &output_rows {
            match OutputDef::from_row(row) {
                Ok(d) => defs.outputs.push(d),
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(output = %row.id, error = %e, "stored push output cannot be used; skipped and left untouched");
                }
            }
        }
        if !transient.is_empty() {
            let ids = transient.clone();
            match db
                .run(move |c| {
                    for id in &ids {
                        store::pull_inputs::delete(c, *id)?;
                    }
                    Ok(())
                })
                .await
            {
                Ok(()) => {
                    tracing::info!(count = transient.len(), ids = ?transient, "removed pull inputs that were not persistent")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not remove pull inputs that were not persistent")
                }
            }
        }
        step.done(&format!(
            "{} pull inputs, {} push outputs, {skipped} unusable rows skipped",
            defs.pulls.len(),
            defs.outputs.len()
        ));
        Ok(defs)
    }

    /// Step 5. Each definition is started on its own worker; connecting
    /// to remote sources and targets happens in the background.
    async fn start(self, relays: &Relays, step: Step) {
        let (pulls, outputs) = (self.pulls.len(), self.outputs.len());
        for d in self.pulls {
            relays.start_pull(d).await;
        }
        for d in self.outputs {
            relays.start_output(d).await;
        }
        step.done(&format!(
            "{pulls} pull inputs and {outputs} push outputs started"
        ));
    }
}

/// Run every start-up step and return once the node is ready. `cancel`
/// aborts start-up (a signal while waiting for the database).
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

    let step = Step::begin(1, "database");
    db.wait_until_up(cancel).await?;
    step.done("reachable");

    let step = Step::begin(2, "migrations");
    if config.database.migrate_on_start {
        let applied = db.run(store::run_migrations).await?;
        step.done(&format!("{} applied", applied.len()));
    } else {
        step.skipped("database.migrate_on_start is false (run `primacy migrate`)");
    }

    let definitions =
        Definitions::load(&db, &config.node_id, Step::begin(3, "load definitions")).await?;

    let readiness = Arc::new(Readiness::default());
    let admission = Arc::new(Admission::new(
        keys,
        db.clone(),
        Duration::from_millis(config.auth.token_cache_ttl_ms),
    ));
    let metrics = Arc::new(Metrics::new());
    // The engine refuses new feeds from the moment the drain begins.
    let (engine, _engine_task) = engine::spawn(
        EngineSettings::from_config(&config),
        metrics.clone(),
        readiness.drain_token(),
    );

    let membership = MembershipSlot::default();
    let stop = CancellationToken::new();
    // Pull inputs end with the sessions (stop); outputs flush after them.
    let relays = Arc::new(Relays::new(
        RelayContext::new(&config, engine.clone(), db.clone(), metrics.clone()),
        stop.clone(),
    ));

    let step = Step::begin(4, "bind listeners");
    let sessions = TaskTracker::new();
    let http = HttpControl::start(
        &config,
        web::Data::new(AppState {
            db: db.clone(),
            admission: admission.clone(),
            engine: engine.clone(),
            metrics: metrics.clone(),
            config: config.clone(),
            readiness: readiness.clone(),
            sessions: sessions.clone(),
            relays: relays.clone(),
            started: t0,
            membership: membership.clone(),
            stream_filter: Arc::new(tokio::sync::Semaphore::new(
                config.api.stream_filter_concurrency as usize,
            )),
        }),
        &readiness,
        &metrics,
    )?;
    let http_addr = http.addr;
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
        srt_limits: ConnectionLimits::new(
            config.srt.max_connections,
            config.srt.max_connections_per_ip,
        ),
        throttle: server::throttle::Throttle::new(&config.admission),
        log: Arc::new(LogLimiter::new(
            config.log.burst,
            Duration::from_millis(config.log.interval_ms),
        )),
        buffered: server::BufferBudget::new(config.rtmp.max_buffered_bytes),
        cluster_secret: config.cluster.secret.as_ref().map(|s| {
            crate::auth::cluster::ClusterSecret::new(s.expose().as_bytes())
                .with_max_skew_ms(config.cluster.max_skew_ms)
        }),
    });
    tokio::spawn(ctx.clone().housekeeping(stop.clone()));
    let rtmp_addr = bind_rtmp(&config, &ctx, &stop, &sessions).await?;
    let srt_addr = bind_srt(&config, ctx, &stop, &sessions).await?;
    step.done(&format!(
        "HTTP {http_addr}, RTMP {rtmp_addr}, SRT {srt_addr}"
    ));

    definitions
        .start(
            &relays,
            Step::begin(5, "start pull inputs and push outputs"),
        )
        .await;

    let step = Step::begin(6, "join cluster");
    // Does not wait for Redis: a node serves without it and joins when it can.
    let settings = cluster::Settings::from_config(&config, (http_addr, rtmp_addr, srt_addr));
    let cluster = Cluster::start(
        &config,
        settings.clone(),
        cluster::Parts {
            engine: engine.clone(),
            admission: admission.clone(),
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            db: db.clone(),
        },
    )?;
    match &cluster {
        None => step.skipped("single node (no redis.url)"),
        Some(_) => step.done(&format!(
            "node {} in region {}, key prefix {}",
            config.node_id, config.region, config.redis.key_prefix
        )),
    }
    let _ = membership.set(Membership {
        settings,
        cluster: cluster.clone(),
        started_at: chrono::Utc::now(),
    });

    // Live feeds follow their tokens' rows even when a change message is
    // missed (and on a single node, when a publish raced a change).
    crate::live_tokens::spawn_sweeper(
        admission.clone(),
        engine.clone(),
        Duration::from_millis(config.auth.token_recheck_ms),
        stop.clone(),
    );

    let step = Step::begin(7, "ready");
    readiness.set_ready();
    step.done(&format!(
        "ready in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    ));
    Ok(Running {
        http_addr,
        rtmp_addr,
        srt_addr,
        engine,
        metrics,
        stop,
        sessions,
        readiness,
        admission,
        db,
        http,
        config,
        relays,
        cluster,
    })
}

/// Supervise a listener: its restarts are counted per listener name.
fn supervise_listener(
    health: ListenerHandle,
    serve: ServeFuture,
    rebind: Rebind,
    stop: CancellationToken,
    backoff: Backoff,
    metrics: &Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    let restarts = metrics
        .listener_restarts
        .with_label_values(&[health.name()]);
    tokio::spawn(supervise::supervise(
        health,
        serve,
        rebind,
        stop,
        backoff,
        move || restarts.inc(),
    ))
}

/// The HTTP server (operator API, health, metrics) under supervision.
/// Its handle changes when it is bound again; the drain stops it last.
struct HttpControl {
    addr: SocketAddr,
    server: Arc<Mutex<actix_web::dev::ServerHandle>>,
    /// Cancelled before the server is stopped at the end of the drain, so
    /// that its end is not taken for a failure.
    stop: CancellationToken,
    supervisor: tokio::task::JoinHandle<()>,
}

impl HttpControl {
    fn start(
        config: &Config,
        state: web::Data<AppState>,
        readiness: &Arc<Readiness>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let bind_err = |source| StartError::Bind {
            what: "HTTP",
            addr: config.listen.http,
            source,
        };
        let settings = HttpSettings::from_config(config);
        let (addr, server) = settings
            .bind(config.listen.http, state.clone())
            .map_err(bind_err)?;
        let handle = Arc::new(Mutex::new(server.handle()));
        let health = readiness.listeners().register("http", addr);
        let rebind: Rebind = {
            let handle = handle.clone();
            Box::new(move || {
                let bound = settings.bind(addr, state.clone());
                let handle = handle.clone();
                Box::pin(async move {
                    let (_, server) = bound?;
                    *handle.lock().unwrap_or_else(|p| p.into_inner()) = server.handle();
                    Ok(serve_http(server))
                })
            })
        };
        let stop = CancellationToken::new();
        let backoff = Backoff {
            // The drain stops the server gracefully after cancelling `stop`.
            stop_grace: Duration::from_millis(config.shutdown.max_wait_ms) + CLOSE_GRACE,
            ..Backoff::default()
        };
        let supervisor = supervise_listener(
            health,
            serve_http(server),
            rebind,
            stop.clone(),
            backoff,
            metrics,
        );
        Ok(Self {
            addr,
            server: handle,
            stop,
            supervisor,
        })
    }

    /// Stop the server gracefully (open requests finish, at most
    /// `max_wait`) and its supervisor.
    async fn shutdown(&mut self, max_wait: Duration) {
        self.stop.cancel();
        let handle = self
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if tokio::time::timeout(max_wait, handle.stop(true))
            .await
            .is_err()
        {
            tracing::warn!("HTTP server did not stop within shutdown.max_wait_ms");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.supervisor).await;
    }
}

fn serve_http(server: actix_web::dev::Server) -> ServeFuture {
    Box::pin(async move { server.await.map_err(ServeError::Io) })
}

/// What building the HTTP server needs, kept for binding it again.
#[derive(Clone, Copy)]
struct HttpSettings {
    max_body: usize,
    shutdown_timeout_s: u64,
}

impl HttpSettings {
    fn from_config(config: &Config) -> Self {
        Self {
            max_body: config.api.max_body_bytes,
            shutdown_timeout_s: config.shutdown.max_wait_ms.div_ceil(1000).max(1),
        }
    }

    fn bind(
        self,
        addr: SocketAddr,
        state: web::Data<AppState>,
    ) -> std::io::Result<(SocketAddr, actix_web::dev::Server)> {
        let listener = std::net::TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let max_body = self.max_body;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(
                    // The request line with its target redacted: a token
                    // pasted into a query is not logged.
                    actix_web::middleware::Logger::new("%a \"%{request}xi\" %s %b %Dms")
                        .custom_request_replace("request", |req| {
                            let target = req.uri().path_and_query().map_or("", |pq| pq.as_str());
                            format!(
                                "{} {} {:?}",
                                req.method(),
                                crate::redact::request_target(target),
                                req.version()
                            )
                        })
                        .exclude("/api/health"),
                )
                .configure(|cfg| api::configure(cfg, max_body))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(self.shutdown_timeout_s)
        .listen(listener)?
        .run();
        Ok((addr, server))
    }
}

async fn bind_rtmp(
    config: &Config,
    ctx: &Arc<IngestContext>,
    stop: &CancellationToken,
    sessions: &TaskTracker,
) -> Result<SocketAddr, StartError> {
    let bind_err = |source| StartError::Bind {
        what: "RTMP",
        addr: config.listen.rtmp,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen.rtmp)
        .await
        .map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    let health = ctx.readiness.listeners().register("rtmp", addr);
    let serve = move |listener, health| -> ServeFuture {
        Box::pin(server::rtmp::serve(
            listener,
            ctx.clone(),
            stop.clone(),
            sessions.clone(),
            health,
        ))
    };
    let first = serve(listener, health.clone());
    let rebind: Rebind = {
        let (ctx, stop, sessions, health) =
            (ctx.clone(), stop.clone(), sessions.clone(), health.clone());
        Box::new(move || {
            let (ctx, stop, sessions, health) =
                (ctx.clone(), stop.clone(), sessions.clone(), health.clone());
            Box::pin(async move {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let serve: ServeFuture =
                    Box::pin(server::rtmp::serve(listener, ctx, stop, sessions, health));
                Ok(serve)
            })
        })
    };
    supervise_listener(
        health,
        first,
        rebind,
        stop.clone(),
        Backoff::default(),
        &ctx.metrics,
    );
    Ok(addr)
}

/// Bind the SRT listener on `addr` (its UDP socket sized by
/// `srt.udp_buffer_bytes`) and return its accept loop.
async fn srt_listener(
    config: &Config,
    addr: SocketAddr,
    ctx: Arc<IngestContext>,
    stop: CancellationToken,
    sessions: TaskTracker,
) -> std::io::Result<(SocketAddr, ServeFuture)> {
    let udp = server::srt::bind_udp(addr, config.srt.udp_buffer_bytes)?;
    let addr = udp.local_addr()?;
    let buffer = config.srt.sender_buffer_bytes();
    let (listener, incoming) = srt_tokio::SrtListener::builder()
        .latency(Duration::from_millis(config.srt.latency_ms))
        .set(|o| o.sender.buffer_size = srt_tokio::options::ByteCount(buffer as u64))
        .socket(udp)
        .bind(addr)
        .await?;
    let serve: ServeFuture = Box::pin(server::srt::serve(listener, incoming, ctx, stop, sessions));
    Ok((addr, serve))
}

async fn bind_srt(
    config: &Arc<Config>,
    ctx: Arc<IngestContext>,
    stop: &CancellationToken,
    sessions: &TaskTracker,
) -> Result<SocketAddr, StartError> {
    let bind_err = |source| StartError::Bind {
        what: "SRT",
        addr: config.listen.srt,
        source,
    };
    // Bound here so the chosen address is known (port 0 in tests).
    let (addr, first) = srt_listener(
        config,
        config.listen.srt,
        ctx.clone(),
        stop.clone(),
        sessions.clone(),
    )
    .await
    .map_err(bind_err)?;
    let health = ctx.readiness.listeners().register("srt", addr);
    let rebind: Rebind = {
        let (config, ctx, stop, sessions) =
            (config.clone(), ctx.clone(), stop.clone(), sessions.clone());
        Box::new(move || {
            let (config, ctx, stop, sessions) =
                (config.clone(), ctx.clone(), stop.clone(), sessions.clone());
            Box::pin(async move {
                let (_, serve) = srt_listener(&config, addr, ctx, stop, sessions).await?;
                Ok(serve)
            })
        })
    };
    supervise_listener(
        health,
        first,
        rebind,
        stop.clone(),
        Backoff::default(),
        &ctx.metrics,
    );
    Ok(addr)
}

/// How often the drain logs the sessions it still waits for.
const DRAIN_LOG_EVERY: Duration = Duration::from_secs(1);
/// How long closed sessions get to finish their last writes.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

impl Running {
    /// Drain and stop (see the module doc). Begins the drain if nobody did
    /// yet; returns when the node has stopped.
    pub async fn shutdown(mut self) {
        self.readiness.begin_drain();
        let began = Instant::now();
        let max_wait = Duration::from_millis(self.config.shutdown.max_wait_ms);
        tracing::info!(
            sessions = self.sessions.len(),
            max_wait_ms = self.config.shutdown.max_wait_ms,
            "drain: not ready; refusing new publishes and plays"
        );
        self.cluster_mark_draining().await;

        self.sessions.close();
        let deadline = tokio::time::Instant::now() + max_wait;
        let ended = loop {
            let tick = (tokio::time::Instant::now() + DRAIN_LOG_EVERY).min(deadline);
            tokio::select! {
                _ = self.sessions.wait() => break true,
                _ = tokio::time::sleep_until(tick) => {
                    if tick >= deadline {
                        break false;
                    }
                    tracing::info!(
                        sessions = self.sessions.len(),
                        elapsed_ms = began.elapsed().as_millis() as u64,
                        "drain: waiting for sessions to end"
                    );
                }
            }
        };
        if ended {
            tracing::info!(
                elapsed_ms = began.elapsed().as_millis() as u64,
                "drain: every session ended"
            );
        } else {
            tracing::warn!(
                sessions = self.sessions.len(),
                "drain: shutdown.max_wait_ms reached; closing the remaining sessions"
            );
        }
        // Listeners close; remaining sessions are closed.
        self.stop.cancel();
        if tokio::time::timeout(CLOSE_GRACE, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = self.sessions.len(),
                "drain: sessions still closing; leaving them"
            );
        }

        self.flush_outputs().await;

        self.http.shutdown(max_wait).await;

        self.cluster_release().await;
        tracing::info!(
            elapsed_ms = began.elapsed().as_millis() as u64,
            "drained and stopped"
        );
    }

    /// Drain, first step after readiness: mark this node's cluster lease
    /// draining so the other nodes and the Director stop offering it.
    async fn cluster_mark_draining(&self) {
        if let Some(c) = &self.cluster {
            c.set_draining();
            tracing::info!("drain: cluster lease marked draining");
        }
    }

    /// Drain, after the sessions: let push outputs send what they hold and
    /// close them.
    async fn flush_outputs(&self) {
        let n = self.relays.outputs.stop_all(CLOSE_GRACE).await;
        if n > 0 {
            tracing::info!(outputs = n, "drain: push outputs flushed and closed");
        }
    }

    /// Drain, last step: release the cluster lease so the other nodes stop
    /// counting this node's feeds at once.
    async fn cluster_release(&self) {
        if let Some(c) = &self.cluster {
            c.leave().await;
        }
    }
}

/// `primacy serve`: start, run until SIGTERM/SIGINT or `POST
/// /api/v1/node/drain`, drain, return (exit status 0). A second signal
/// exits at once with 128 + the signal number (143 SIGTERM, 130 SIGINT).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let signalled = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(signalled.clone()));
    let started = tokio::select! {
        r = start(config, &signalled) => Some(r),
        _ = signalled.cancelled() => None,
    };
    let running = match started {
        Some(Ok(running)) => running,
        Some(Err(e)) if !signalled.is_cancelled() => return Err(e.into()),
        // A signal ended start-up (waiting for the database then ends
        // with an error).
        _ => {
            tracing::info!("shutdown requested during start-up; exiting");
            return Ok(());
        }
    };
    let drain = running.readiness.drain_token();
    tokio::select! {
        _ = signalled.cancelled() => {}
        _ = drain.cancelled() => {}
    }
    running.shutdown().await;
    signals.abort();
    Ok(())
}

/// The first SIGTERM/SIGINT cancels `first`; the next one exits the process.
async fn watch_signals(first: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut seen = 0;
    loop {
        let (name, code) = tokio::select! {
            _ = term.recv() => ("SIGTERM", 143),
            _ = int.recv() => ("SIGINT", 130),
        };
        seen += 1;
        if seen == 1 {
            tracing::info!(
                signal = name,
                "shutdown requested: draining (a second signal exits at once)"
            );
            first.cancel();
        } else {
            tracing::warn!(
                signal = name,
                exit_code = code,
                "second signal: exiting now"
            );
            std::process::exit(code);
        }
    }
}
