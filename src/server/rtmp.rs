//! The RTMP server: one tokio task per connection around rml_rtmp's
//! sans-IO `ServerSession`.
//!
//! A connection is in one state at a time ([`State`]): idle after the
//! handshake, publishing one feed, or playing one source. Publish requests
//! are answered only after admission (`auth::publish`, behind the
//! throttle) and the engine accepted the feed; refusals carry the reason
//! in the `onStatus` description. A panic or protocol error inside
//! rml_rtmp closes that session only and is logged with the peer.
//!
//! Before a connection publishes or plays it is unauthenticated and gets
//! little: it must have its request accepted within
//! `rtmp.request_timeout_ms` of the handshake (not extended by traffic),
//! may send `rtmp.max_request_bytes` in all meanwhile, and its partial
//! messages count against `rtmp.max_buffered_bytes` shared by every
//! connection that is not publishing (players keep the per-message
//! limit). Lines about refusals and errors go through the log limiter.

pub mod guard;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::Empty;
use tracing::Instrument;

use self::guard::{InputGuard, InputRefused, Phase};
use super::url::{parse_stream_key, StreamRequest};
use super::{AdmitFailure, BufferShare, IngestContext};
use crate::auth::publish::AdmitError;
use crate::domain::FeedId;
use crate::engine::PlayerFormat;
use crate::engine::{
    FeedControl, FeedMedia, FeedMeta, PlayerItem, Protocol, PublishRefusal, SourceKey,
};
use crate::media::Track;
use crate::supervise::{ListenerHandle, ServeError};
use crate::wire::demux::FlvDemux;
use crate::wire::rtmp::{recycle_out, write_player_items, MediaChunks, ServerPlayback};

/// Read buffer of a connection until it is known to play.
const READ_BUF: usize = 16 * 1024;
/// Read buffer of a playing connection (acknowledgements and control).
const PLAY_READ_BUF: usize = 2 * 1024;

/// The first pause after a failed `accept`; it doubles up to
/// [`ACCEPT_RETRY_MAX`] while accepting keeps failing.
const ACCEPT_RETRY_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);
/// Accepting that has failed this long marks the listener failing (not
/// ready) until an `accept` succeeds again.
const ACCEPT_FAILING_AFTER: Duration = Duration::from_secs(1);

/// Accept connections until `cancel` fires; it also closes every open
/// connection (players get `NetStream.Play.Stop` first). While draining,
/// the listener stays open so that new publishes and plays are refused
/// with `SHUTTING_DOWN` rather than a reset. A failing `accept` (e.g. out
/// of file descriptors) is retried with backoff and, once it has failed
/// for a second, reported through `health` (the node is not ready).
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<IngestContext>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    health: ListenerHandle,
) -> Result<(), ServeError> {
    let mut failing_since: Option<std::time::Instant> = None;
    let mut retry = ACCEPT_RETRY_FIRST;
    loop {
        let (sock, peer) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    ctx.metrics
                        .session_errors
                        .with_label_values(&["rtmp", "accept"])
                        .inc();
                    if since.elapsed() >= ACCEPT_FAILING_AFTER
                        && !matches!(health.state(), crate::supervise::ListenerState::Failing { .. })
                    {
                        health.set_failing(format!("accept: {e}"), since);
                        tracing::error!(error = %e, "RTMP listener cannot accept connections; not ready");
                    } else if ctx.log.allow("rtmp_accept", None) {
                        tracing::warn!(error = %e, retry_in_ms = retry.as_millis() as u64, "RTMP accept failed");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(ACCEPT_RETRY_MAX);
                    continue;
                }
            },
        };
        if failing_since.take().is_some() {
            retry = ACCEPT_RETRY_FIRST;
            if health.clear_failing() {
                tracing::info!("RTMP listener accepting again; ready");
            }
        }
        let ctx = ctx.clone();
        let cancel = cancel.clone();
        // Every line of this connection carries its peer, and its stream
        // and feed once known (recorded by the session).
        let span = tracing::info_span!("rtmp", %peer, stream = Empty, feed = Empty);
        let session = async move {
            let slot = match ctx.limits.acquire(peer.ip()) {
                Ok(s) => s,
                Err(which) => {
                    ctx.metrics
                        .connections_refused
                        .with_label_values(&["rtmp", which.label()])
                        .inc();
                    if ctx.log.allow("rtmp_limit", Some(peer.ip())) {
                        tracing::warn!(
                            limit = which.label(),
                            "RTMP connection refused: limit reached"
                        );
                    }
                    return;
                }
            };
            let _ = sock.set_nodelay(true);
            match Connection::run(sock, peer, &ctx, cancel).await {
                Ok(()) => tracing::debug!("RTMP connection closed"),
                Err(e) => {
                    ctx.metrics
                        .session_errors
                        .with_label_values(&["rtmp", e.kind()])
                        .inc();
                    if ctx.log.allow("rtmp_session_error", Some(peer.ip())) {
                        tracing::warn!(error = %e, "RTMP session closed");
                    }
                }
            }
            drop(slot);
        };
        tracker.spawn(session.instrument(span));
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("rml_rtmp panicked on the peer's input: {0}")]
    Panic(String),
    #[error("RTMP message larger than {0} bytes")]
    TooLarge(usize),
    #[error("sent more than {0} bytes before publishing or playing")]
    RequestTooLarge(usize),
    #[error(
        "partial messages of connections that are not publishing exceed rtmp.max_buffered_bytes"
    )]
    BufferBudget,
    #[error("no publish or play accepted within rtmp.request_timeout_ms")]
    RequestTimeout,
    #[error("idle for too long")]
    Idle,
    #[error("the engine has stopped")]
    EngineGone,
}

impl From<InputRefused> for SessionError {
    fn from(e: InputRefused) -> Self {
        match e {
            InputRefused::Panic(m) => SessionError::Panic(m),
            InputRefused::Protocol(m) => SessionError::Protocol(m),
            InputRefused::TooLarge(n) => SessionError::TooLarge(n),
            InputRefused::RequestTooLarge(n) => SessionError::RequestTooLarge(n),
        }
    }
}

impl SessionError {
    fn kind(&self) -> &'static str {
        match self {
            SessionError::Io(_) => "io",
            SessionError::Handshake(_) => "handshake",
            SessionError::HandshakeTimeout => "handshake_timeout",
            SessionError::Protocol(_) => "protocol",
            SessionError::Panic(_) => "panic",
            SessionError::TooLarge(_) | SessionError::RequestTooLarge(_) => "too_large",
            SessionError::BufferBudget => "buffer_budget",
            SessionError::RequestTimeout => "request_timeout",
            SessionError::Idle => "idle",
            SessionError::EngineGone => "engine",
        }
    }
}

enum State {
    /// Not publishing or playing (after the handshake, or between two
    /// requests): closed at `deadline` unless a request is accepted.
    Idle { deadline: tokio::time::Instant },
    Publishing {
        feed: FeedId,
        control: mpsc::Receiver<FeedControl>,
        demux: FlvDemux,
    },
    Playing {
        stream_id: u32,
        key: SourceKey,
        player: u64,
        items: mpsc::Receiver<PlayerItem>,
    },
}

struct Connection<'a> {
    sock: TcpStream,
    peer: SocketAddr,
    ctx: &'a IngestContext,
    session: ServerSession,
    state: State,
    out: Vec<u8>,
    /// A player's media messages, written after `out`.
    chunks: MediaChunks,
    /// Byte counters of the input (partial message, before a request).
    guard: InputGuard,
    /// The guard's held bytes against the shared budget.
    buffered: BufferShare<'a>,
    /// Set when a request was refused because the node is draining: the
    /// connection ends once the refusal is written.
    close_after_flush: bool,
}

async fn handshake(sock: &mut TcpStream, buf: &mut [u8]) -> Result<Vec<u8>, SessionError> {
    let mut hs = Handshake::new(PeerType::Server);
    loop {
        let n = sock.read(buf).await?;
        if n == 0 {
            return Err(SessionError::Handshake(
                "peer closed during the handshake".into(),
            ));
        }
        match hs
            .process_bytes(&buf[..n])
            .map_err(|e| SessionError::Handshake(format!("{e:?}")))?
        {
            HandshakeProcessResult::InProgress { response_bytes } => {
                sock.write_all(&response_bytes).await?
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                sock.write_all(&response_bytes).await?;
                return Ok(remaining_bytes);
            }
        }
    }
}

impl<'a> Connection<'a> {
    async fn run(
        mut sock: TcpStream,
        peer: SocketAddr,
        ctx: &'a IngestContext,
        cancel: CancellationToken,
    ) -> Result<(), SessionError> {
        let mut buf = vec![0u8; READ_BUF];
        let hs_timeout = Duration::from_millis(ctx.rtmp.handshake_timeout_ms);
        let remaining = tokio::time::timeout(hs_timeout, handshake(&mut sock, &mut buf))
            .await
            .map_err(|_| SessionError::HandshakeTimeout)??;
        let config = ServerSessionConfig::new();
        let chunk_size = config.chunk_size;
        let (session, initial) =
            ServerSession::new(config).map_err(|e| SessionError::Protocol(format!("{e:?}")))?;
        let mut conn = Connection {
            sock,
            peer,
            ctx,
            session,
            state: State::Idle {
                deadline: Self::request_deadline(ctx),
            },
            out: Vec::new(),
            chunks: MediaChunks::new(chunk_size),
            guard: InputGuard::new(),
            buffered: ctx.buffered.share(),
            close_after_flush: false,
        };
        // A panic anywhere in the session (rml_rtmp outside `input`, our
        // own code) closes this connection only, and the engine still
        // hears that it is gone.
        let result = AssertUnwindSafe(conn.serve(initial, remaining, &mut buf, cancel))
            .catch_unwind()
            .await
            .unwrap_or_else(|p| Err(SessionError::Panic(super::panic_message(p.as_ref()))));
        conn.finish().await;
        result
    }

    fn request_deadline(ctx: &IngestContext) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ctx.rtmp.request_timeout_ms)
    }

    /// Back to idle (after unpublishing or stopping playback).
    fn become_idle(&mut self) -> State {
        self.guard.idle_again();
        std::mem::replace(
            &mut self.state,
            State::Idle {
                deadline: Self::request_deadline(self.ctx),
            },
        )
    }

    async fn serve(
        &mut self,
        initial: Vec<ServerSessionResult>,
        remaining: Vec<u8>,
        buf: &mut Vec<u8>,
        cancel: CancellationToken,
    ) -> Result<(), SessionError> {
        self.process(initial).await?;
        if !remaining.is_empty() {
            let results = self.input(&remaining)?;
            self.process(results).await?;
        }
        self.flush().await?;
        let idle = Duration::from_millis(self.ctx.rtmp.idle_timeout_ms);
        loop {
            // Idle: the request deadline, which reads do not move.
            // Publishing: no data for `idle` closes. Playing: none.
            let read_deadline = match self.state {
                State::Idle { deadline } => Some(deadline),
                State::Publishing { .. } => Some(tokio::time::Instant::now() + idle),
                State::Playing { .. } => None,
            };
            enum Wake {
                Read(usize),
                Control(Option<FeedControl>),
                Item(Option<PlayerItem>),
                Idle,
                Stop,
            }
            let wake = {
                let sleep = async {
                    match read_deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                let state = &mut self.state;
                let from_engine = async move {
                    match state {
                        State::Publishing { control, .. } => Wake::Control(control.recv().await),
                        State::Playing { items, .. } => Wake::Item(items.recv().await),
                        State::Idle { .. } => std::future::pending().await,
                    }
                };
                let sock = &mut self.sock;
                tokio::select! {
                    r = sock.read(&mut buf[..]) => Wake::Read(r?),
                    w = from_engine => w,
                    _ = sleep => Wake::Idle,
                    _ = cancel.cancelled() => Wake::Stop,
                }
            };
            match wake {
                Wake::Read(0) => return Ok(()),
                Wake::Read(n) => {
                    let results = self.input(&buf[..n])?;
                    self.process(results).await?;
                    self.flush().await?;
                    if matches!(self.state, State::Playing { .. }) && buf.len() > PLAY_READ_BUF {
                        // A player only sends acknowledgements and control
                        // messages from here on.
                        *buf = vec![0u8; PLAY_READ_BUF];
                    }
                    if self.close_after_flush {
                        return Ok(());
                    }
                }
                Wake::Control(c) => {
                    let reason = match c {
                        Some(FeedControl::Disconnect { reason }) => reason,
                        None => "engine dropped the feed".into(),
                    };
                    tracing::info!(%reason, "disconnecting publisher");
                    return Ok(());
                }
                Wake::Item(Some(first)) => {
                    if !self.play_items(first)? {
                        self.flush().await?;
                        return Ok(());
                    }
                    self.flush().await?;
                }
                Wake::Item(None) => return Ok(()),
                Wake::Idle => {
                    return Err(match self.state {
                        State::Idle { .. } => SessionError::RequestTimeout,
                        _ => SessionError::Idle,
                    })
                }
                Wake::Stop => {
                    if let State::Playing { stream_id, .. } = self.state {
                        let r = self.session.finish_playing(stream_id);
                        if let Ok(p) = r {
                            self.out.extend_from_slice(&p.bytes);
                        }
                        self.flush().await?;
                    }
                    tracing::debug!("RTMP session closed: node shut down");
                    return Ok(());
                }
            }
        }
    }

    /// Feed bytes to rml_rtmp through the guard, then account what the
    /// session holds against the budget shared by connections that are
    /// not publishing.
    fn input(&mut self, bytes: &[u8]) -> Result<Vec<ServerSessionResult>, SessionError> {
        let phase = match self.state {
            State::Idle { .. } => Phase::Idle,
            State::Publishing { .. } => Phase::Publishing,
            State::Playing { .. } => Phase::Playing,
        };
        let results = self
            .guard
            .input(&mut self.session, phase, &self.ctx.rtmp, bytes)?;
        self.buffered
            .set(self.guard.held(phase))
            .map_err(|_| SessionError::BufferBudget)?;
        Ok(results)
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            self.sock.write_all(&self.out).await?;
            recycle_out(&mut self.out);
        }
        if !self.chunks.is_empty() {
            self.chunks.write_to(&mut self.sock).await?;
        }
        Ok(())
    }

    async fn process(&mut self, results: Vec<ServerSessionResult>) -> Result<(), SessionError> {
        for r in results {
            match r {
                ServerSessionResult::OutboundResponse(p) => self.out.extend_from_slice(&p.bytes),
                ServerSessionResult::RaisedEvent(ev) => self.event(ev).await?,
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    fn push_results(
        &mut self,
        r: Result<Vec<ServerSessionResult>, rml_rtmp::sessions::ServerSessionError>,
    ) -> Result<(), SessionError> {
        for r in r.map_err(|e| SessionError::Protocol(format!("{e:?}")))? {
            if let ServerSessionResult::OutboundResponse(p) = r {
                self.out.extend_from_slice(&p.bytes);
            }
        }
        Ok(())
    }

    async fn event(&mut self, ev: ServerSessionEvent) -> Result<(), SessionError> {
        match ev {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name == "live" || app_name.starts_with("live/") {
                    let r = self.session.accept_request(request_id);
                    self.push_results(r)?;
                } else {
                    if self.may_log() {
                        tracing::info!(app = %crate::redact::key(&app_name), "RTMP connect refused: unknown application");
                    }
                    let r = self.session.reject_request(
                        request_id,
                        "NetConnection.Connect.Rejected",
                        "unknown application; use rtmp://HOST/live/STREAM",
                    );
                    self.push_results(r)?;
                }
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => {
                self.publish_requested(request_id, &app_name, &stream_key)
                    .await?
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                if matches!(self.state, State::Publishing { .. }) {
                    if let State::Publishing { feed, .. } = self.become_idle() {
                        self.ctx.engine.unpublish(feed).await;
                    }
                }
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                if let State::Publishing { feed, .. } = &self.state {
                    let feed = *feed;
                    self.send_media(feed, FeedMedia::Metadata(Arc::new(metadata)))
                        .await?;
                }
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => self.flv_tag(Track::Video, &data, timestamp.value).await?,
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => self.flv_tag(Track::Audio, &data, timestamp.value).await?,
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                app_name,
                stream_key,
                stream_id,
                ..
            } => {
                self.play_requested(request_id, &app_name, &stream_key, stream_id)
                    .await?
            }
            ServerSessionEvent::PlayStreamFinished { .. } => {
                if matches!(self.state, State::Playing { .. }) {
                    if let State::Playing { key, player, .. } = self.become_idle() {
                        self.ctx.engine.unplay(key, player).await;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Demux one FLV audio or video tag of the feed being published.
    async fn flv_tag(&mut self, track: Track, data: &[u8], ts: u32) -> Result<(), SessionError> {
        let State::Publishing { feed, demux, .. } = &mut self.state else {
            return Ok(());
        };
        let feed = *feed;
        match demux.tag(track, data, ts) {
            Ok(Some(media)) => self.send_media(feed, media).await,
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::debug!(?track, error = %e, "FLV tag ignored");
                Ok(())
            }
        }
    }

    async fn send_media(&mut self, feed: FeedId, media: FeedMedia) -> Result<(), SessionError> {
        self.ctx
            .engine
            .media(feed, media)
            .await
            .map_err(|_| SessionError::EngineGone)
    }

    /// Whether a line about a refusal of this peer may be written now (see
    /// `telemetry::LogLimiter`); metrics count every refusal regardless.
    fn may_log(&self) -> bool {
        self.ctx.log.allow("rtmp_refused", Some(self.peer.ip()))
    }

    fn refuse_publish(
        &mut self,
        request_id: u32,
        code: &str,
        reason: &str,
    ) -> Result<(), SessionError> {
        let r = self.session.reject_request(request_id, code, reason);
        self.push_results(r)
    }

    /// `app` may carry part of the stream name (`live/event` + `cam1`).
    fn full_key(app: &str, stream_key: &str) -> String {
        match app.strip_prefix("live/") {
            Some(prefix) if !prefix.is_empty() => format!("{prefix}/{stream_key}"),
            _ => stream_key.to_owned(),
        }
    }

    async fn publish_requested(
        &mut self,
        request_id: u32,
        app: &str,
        stream_key: &str,
    ) -> Result<(), SessionError> {
        if !matches!(self.state, State::Idle { .. }) {
            return self.refuse_publish(
                request_id,
                "NetStream.Publish.BadConnection",
                "this connection is already in use",
            );
        }
        if self.ctx.readiness.is_draining() {
            if self.may_log() {
                tracing::info!("publish refused: shutting down");
            }
            self.ctx
                .metrics
                .admission_refusals
                .with_label_values(&["shutting_down"])
                .inc();
            self.close_after_flush = true;
            return self.refuse_publish(request_id, "NetStream.Publish.Rejected", "SHUTTING_DOWN");
        }
        let req = match parse_stream_key(&Self::full_key(app, stream_key)) {
            Ok(r) => r,
            Err(e) => {
                if self.may_log() {
                    tracing::info!(error = %e, "publish refused: bad stream key");
                }
                self.ctx
                    .metrics
                    .admission_refusals
                    .with_label_values(&["bad_request"])
                    .inc();
                return self.refuse_publish(
                    request_id,
                    "NetStream.Publish.BadName",
                    &e.to_string(),
                );
            }
        };
        let StreamRequest {
            stream,
            source,
            token,
            priority,
            ..
        } = req;
        let Some(token) = token else {
            self.ctx
                .metrics
                .admission_refusals
                .with_label_values(&["missing_token"])
                .inc();
            if self.may_log() {
                tracing::info!(stream = %stream, "publish refused: no token");
            }
            return self.refuse_publish(
                request_id,
                "NetStream.Publish.BadName",
                "missing ?token= in the stream key",
            );
        };
        let admitted = match self
            .ctx
            .admit(&token, &stream, &source, self.peer.ip())
            .await
        {
            Ok(a) => a,
            Err(AdmitFailure::Throttled(b)) => {
                if self.may_log() {
                    tracing::info!(stream = %stream, blocked = b.key.kind(), retry_in_ms = b.retry_in.as_millis() as u64, "publish refused: too many failed attempts");
                }
                return self.refuse_publish(
                    request_id,
                    "NetStream.Publish.Rejected",
                    AdmitFailure::Throttled(b).public_message(),
                );
            }
            Err(AdmitFailure::Check(AdmitError::Refused(r))) => {
                self.ctx
                    .metrics
                    .admission_refusals
                    .with_label_values(&[r.code()])
                    .inc();
                if self.may_log() {
                    tracing::info!(stream = %stream, source = %source, reason = r.code(), "publish refused");
                }
                return self.refuse_publish(
                    request_id,
                    "NetStream.Publish.BadName",
                    r.public_message(),
                );
            }
            Err(AdmitFailure::Check(AdmitError::Unavailable(e))) => {
                self.ctx
                    .metrics
                    .admission_refusals
                    .with_label_values(&["unavailable"])
                    .inc();
                tracing::warn!(stream = %stream, error = %e, "publish refused: token store unavailable");
                return self.refuse_publish(
                    request_id,
                    "NetStream.Publish.Rejected",
                    "token check unavailable; retry",
                );
            }
        };
        let admitted = admitted.with_requested_priority(priority);
        let meta = FeedMeta {
            id: FeedId::new_random(),
            token_id: admitted.token_id,
            label: admitted.label,
            priority: admitted.priority,
            pinned: admitted.pinned,
            protocol: Protocol::Rtmp,
            peer: self.peer,
            grant: Some(admitted.grant),
        };
        let key = SourceKey {
            stream: stream.clone(),
            source,
        };
        match self
            .ctx
            .engine
            .publish(key, meta)
            .await
            .map_err(|_| SessionError::EngineGone)?
        {
            Ok(handle) => {
                let r = self.session.accept_request(request_id);
                self.push_results(r)?;
                tracing::Span::current()
                    .record("stream", tracing::field::display(&stream))
                    .record("feed", tracing::field::display(handle.id));
                tracing::info!("publishing");
                self.state = State::Publishing {
                    feed: handle.id,
                    control: handle.control,
                    demux: FlvDemux::new(),
                };
                Ok(())
            }
            Err(refusal) => {
                let code = match refusal {
                    PublishRefusal::Banned { .. } => "banned",
                    PublishRefusal::ShuttingDown => "shutting_down",
                };
                self.ctx
                    .metrics
                    .admission_refusals
                    .with_label_values(&[code])
                    .inc();
                if self.may_log() {
                    tracing::info!(stream = %stream, reason = %refusal, "publish refused");
                }
                let text = match refusal {
                    PublishRefusal::ShuttingDown => "SHUTTING_DOWN".to_owned(),
                    other => other.to_string(),
                };
                self.refuse_publish(request_id, "NetStream.Publish.Rejected", &text)
            }
        }
    }

    async fn play_requested(
        &mut self,
        request_id: u32,
        app: &str,
        stream_key: &str,
        stream_id: u32,
    ) -> Result<(), SessionError> {
        let refuse = |this: &mut Self, reason: &str| {
            let r = this
                .session
                .reject_request(request_id, "NetStream.Play.Failed", reason);
            this.push_results(r)
        };
        if !matches!(self.state, State::Idle { .. }) {
            return refuse(self, "this connection is already in use");
        }
        if self.ctx.readiness.is_draining() {
            if self.may_log() {
                tracing::info!("play refused: shutting down");
            }
            self.close_after_flush = true;
            return refuse(self, "SHUTTING_DOWN");
        }
        let req = match parse_stream_key(&Self::full_key(app, stream_key)) {
            Ok(r) => r,
            Err(e) => {
                if self.may_log() {
                    tracing::info!(error = %e, "play refused: bad stream key");
                }
                return refuse(self, &e.to_string());
            }
        };
        if let Some(feed) = req.feed {
            return self
                .relay_play_requested(request_id, req, feed, stream_id)
                .await;
        }
        if self.ctx.rtmp.play_requires_token {
            let Some(token) = &req.token else {
                return refuse(self, "missing ?token= in the play URL");
            };
            if let Err(e) = self
                .ctx
                .admit(token, &req.stream, &req.source, self.peer.ip())
                .await
            {
                let msg = e.public_message();
                if self.may_log() {
                    tracing::info!(stream = %req.stream, "play refused: {msg}");
                }
                return refuse(self, msg);
            }
        }
        let r = self.session.accept_request(request_id);
        self.push_results(r)?;
        let key = SourceKey {
            stream: req.stream,
            source: req.source,
        };
        let handle = self
            .ctx
            .engine
            .play(key.clone(), PlayerFormat::Flv)
            .await
            .map_err(|_| SessionError::EngineGone)?;
        tracing::Span::current().record("stream", tracing::field::display(&key.stream));
        // Anyone may play (unless play_requires_token): limited like refusals.
        if self.ctx.log.allow("rtmp_play", Some(self.peer.ip())) {
            tracing::info!(source = %key.source, "playing");
        }
        self.state = State::Playing {
            stream_id,
            key,
            player: handle.id,
            items: handle.items,
        };
        Ok(())
    }

    /// A cluster peer pulls one feed of this node (node-to-node relay),
    /// authorized by a cluster credential for that feed.
    async fn relay_play_requested(
        &mut self,
        request_id: u32,
        req: crate::server::url::StreamRequest,
        feed: crate::domain::FeedId,
        stream_id: u32,
    ) -> Result<(), SessionError> {
        let refuse = |this: &mut Self, reason: &str| {
            let r = this
                .session
                .reject_request(request_id, "NetStream.Play.Failed", reason);
            this.push_results(r)
        };
        let verified = match (&self.ctx.cluster_secret, &req.cluster) {
            (Some(secret), Some(c)) => secret
                .verify(c, feed, crate::clock::wall_ms())
                .map_err(|e| e.to_string()),
            (None, _) => Err("this node is not in a cluster".to_owned()),
            (_, None) => Err("missing cluster credential".to_owned()),
        };
        let peer_node = match verified {
            Ok(n) => n,
            Err(why) => {
                if self.may_log() {
                    tracing::info!(feed = %feed, reason = %why, "relay play refused");
                }
                return refuse(self, "invalid cluster credential");
            }
        };
        let key = SourceKey {
            stream: req.stream,
            source: req.source,
        };
        let Some(handle) = self
            .ctx
            .engine
            .play_feed(key.clone(), feed)
            .await
            .map_err(|_| SessionError::EngineGone)?
        else {
            return refuse(self, "no such feed on this node");
        };
        let r = self.session.accept_request(request_id);
        self.push_results(r)?;
        tracing::Span::current()
            .record("stream", tracing::field::display(&key.stream))
            .record("feed", tracing::field::display(feed));
        tracing::info!(node = %peer_node, "relaying a feed to a cluster peer");
        self.state = State::Playing {
            stream_id,
            key,
            player: handle.id,
            items: handle.items,
        };
        Ok(())
    }

    /// Serialize the first item and whatever else is queued. Returns false
    /// when the engine closed the source for this player.
    fn play_items(&mut self, first: PlayerItem) -> Result<bool, SessionError> {
        let State::Playing {
            stream_id, items, ..
        } = &mut self.state
        else {
            return Ok(true);
        };
        let mut sink = ServerPlayback {
            session: &mut self.session,
            stream_id: *stream_id,
            chunks: &mut self.chunks,
        };
        write_player_items(&mut sink, first, items, &mut self.out)
            .map_err(|e| SessionError::Protocol(format!("{e:?}")))
    }

    /// Tell the engine this connection is gone.
    async fn finish(&mut self) {
        match self.become_idle() {
            State::Publishing { feed, .. } => self.ctx.engine.unpublish(feed).await,
            State::Playing { key, player, .. } => self.ctx.engine.unplay(key, player).await,
            State::Idle { .. } => {}
        }
        let _ = self.sock.shutdown().await;
    }
}
