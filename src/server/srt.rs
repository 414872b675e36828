//! The SRT listener (srt-tokio): publishers send MPEG-TS that is demuxed
//! into frames for the engine; players receive the source's shared
//! MPEG-TS output in 7×188-byte messages.
//!
//! Admission happens before a connection is accepted: the caller's address
//! must be within `srt.max_connections[_per_ip]`, the handshake must not
//! ask for encryption (not offered yet: refused with libsrt's
//! `SRT_REJ_UNSECURE`, as a libsrt listener without a passphrase does), the
//! stream id is parsed (Access Control `#!::r=…,m=…,s=…` or the free form),
//! the token is checked behind the admission throttle, and refusals use the
//! SRT reject codes of DESIGN section 4 (1400 malformed stream id, 1401 bad
//! token, 1402 connection limit or too many failed attempts, 1403 not
//! allowed, 1405 bad mode, 1503 shutting down). These are libsrt API values
//! (`SRT_REJX_*`); on the wire the handshake type carries API value + 1000,
//! which is the 2000 range srt-protocol names `ServerRejectReason` (2403 =
//! `SRT_REJX_FORBIDDEN`).
//!
//! Datagrams that are not SRT packets are counted
//! (`primacy_srt_garbage_packets_total`) from the listener's statistics and
//! logged through the log limiter; srt-protocol's own per-datagram
//! warnings are filtered out (`telemetry`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, SinkExt, StreamExt};
use srt_tokio::access::RejectReason;
use srt_tokio::options::KeySize;
use srt_tokio::{ConnectionRequest, SrtIncoming, SrtSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::Empty;
use tracing::Instrument;

use super::url::{parse_srt_stream_id, SrtMode, StreamIdError};
use super::{AdmitFailure, IngestContext};
use crate::auth::publish::{AdmitError, Refusal};
use crate::domain::FeedId;
use crate::engine::{
    FeedControl, FeedMedia, FeedMeta, PlayerFormat, PlayerItem, Protocol, PublishRefusal,
    SourceKey, SrtFeedStats,
};
use crate::media::ts::mux::chunk_1316;
use crate::supervise::ServeError;
use crate::wire::demux::TsFeedDemux;

/// Bind the listener's UDP socket with kernel receive and send buffers of
/// `bytes` (`srt.udp_buffer_bytes`). One socket carries every SRT
/// connection of the node, and tokio's `UdpSocket::bind` leaves the
/// system default (about 208 KiB on Linux, roughly 90 full packets), which
/// a few simultaneous keyframes overflow. The kernel caps the request at
/// `net.core.rmem_max` / `wmem_max`; a capped buffer is logged once.
pub fn bind_udp(
    addr: std::net::SocketAddr,
    bytes: usize,
) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A refused size is not fatal: the kernel default still works.
    let _ = socket.set_recv_buffer_size(bytes);
    let _ = socket.set_send_buffer_size(bytes);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // Linux reports twice the size it granted (the bookkeeping overhead).
    let granted = |got: usize| {
        if cfg!(target_os = "linux") {
            got / 2
        } else {
            got
        }
    };
    let recv = socket.recv_buffer_size().map(granted).unwrap_or(0);
    let send = socket.send_buffer_size().map(granted).unwrap_or(0);
    if recv < bytes || send < bytes {
        tracing::warn!(
            requested = bytes,
            recv,
            send,
            "SRT UDP buffers capped by the kernel: raise net.core.rmem_max and net.core.wmem_max \
             to at least srt.udp_buffer_bytes, or bursts of many feeds may lose packets"
        );
    } else {
        tracing::debug!(recv, send, "SRT UDP buffers");
    }
    tokio::net::UdpSocket::from_std(socket.into())
}

/// SRT reject codes (libsrt's predefined range: 1000 + HTTP-like status).
pub mod codes {
    pub const MALFORMED: i32 = 1400;
    pub const UNAUTHORIZED: i32 = 1401;
    /// `SRT_REJX_OVERLOAD`: a connection limit, or too many failed attempts.
    pub const OVERLOAD: i32 = 1402;
    pub const FORBIDDEN: i32 = 1403;
    pub const BAD_MODE: i32 = 1405;
    pub const UNAVAILABLE: i32 = 1503;
    /// libsrt's core reason `SRT_REJ_UNSECURE` (11) as it travels on the
    /// wire (+ 1000): "only one side set a passphrase".
    pub const WIRE_UNSECURE: i32 = 1011;
}

fn reject_code(r: Refusal) -> i32 {
    match r {
        Refusal::StreamNotAllowed | Refusal::IpNotAllowed => codes::FORBIDDEN,
        _ => codes::UNAUTHORIZED,
    }
}

/// Accept connection requests until `cancel` fires; it also closes every
/// open session. While draining, requests are still answered (1503).
/// `listener` is held here: dropping it would stop the listener. Returns
/// an error when srt-tokio's listener task ends on its own (a panic
/// inside it): the supervisor binds a new listener.
pub async fn serve(
    mut listener: srt_tokio::SrtListener,
    mut incoming: SrtIncoming,
    ctx: Arc<IngestContext>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), ServeError> {
    let mut stats = Some(listener.statistics().clone());
    let mut garbage_seen = 0u64;
    loop {
        let next_stats = async {
            match stats.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        let req = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            s = next_stats => {
                match s {
                    Some(s) => count_garbage(&ctx, s.rx_parse_errors, &mut garbage_seen),
                    None => stats = None,
                }
                continue;
            }
            r = incoming.incoming().next() => match r {
                Some(r) => r,
                None => {
                    return Err(ServeError::Ended(
                        "the SRT listener task ended (srt-tokio stopped handing over connection requests)"
                            .into(),
                    ))
                }
            },
        };
        let ctx = ctx.clone();
        let stop = cancel.clone();
        let peer = req.remote();
        // Every line of this connection carries its peer, and its stream
        // and feed once known (recorded by the session).
        let span = tracing::info_span!("srt", %peer, stream = Empty, feed = Empty);
        let session = async move {
            if let Err(e) = contained(handle(req, &ctx, &stop)).await {
                ctx.metrics
                    .session_errors
                    .with_label_values(&["srt", "session"])
                    .inc();
                if ctx.log.allow("srt_session_error", Some(peer.ip())) {
                    tracing::warn!(error = %e, "SRT session ended with an error");
                }
            }
        };
        tracker.spawn(session.instrument(span));
    }
}

/// Run a session, turning a panic inside it into an error, so that the
/// caller still unregisters its feed or player.
async fn contained(
    session: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    AssertUnwindSafe(session)
        .catch_unwind()
        .await
        .unwrap_or_else(|p| {
            Err(std::io::Error::other(format!(
                "panicked: {}",
                super::panic_message(p.as_ref())
            )))
        })
}

/// Datagrams the listener could not parse since it started: counted,
/// and logged (rate-limited; their senders are not known).
fn count_garbage(ctx: &IngestContext, total: u64, seen: &mut u64) {
    let new = total.saturating_sub(*seen);
    *seen = total;
    if new == 0 {
        return;
    }
    ctx.metrics.srt_garbage_packets.inc_by(new);
    if ctx.log.allow("srt_garbage", None) {
        tracing::warn!(
            datagrams = new,
            total,
            "datagrams on the SRT port that are not SRT packets"
        );
    }
}

async fn reject(
    req: ConnectionRequest,
    ctx: &IngestContext,
    code: i32,
    why: &str,
) -> std::io::Result<()> {
    let peer = req.remote();
    if ctx.log.allow("srt_refused", Some(peer.ip())) {
        tracing::info!(code, reason = why, "SRT connection refused");
    }
    // libsrt adds 1000 to the API code on the wire; sending the bare code
    // made libsrt callers read reason `code - 1000` ("Unknown or erroneous").
    let wire = RejectReason::try_from(code + 1000)
        .unwrap_or(RejectReason::ServerUnrecognized(code + 1000));
    req.reject(wire).await
}

async fn handle(
    req: ConnectionRequest,
    ctx: &IngestContext,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    let peer = req.remote();
    let _slot = match ctx.srt_limits.acquire(peer.ip()) {
        Ok(slot) => slot,
        Err(which) => {
            ctx.metrics
                .connections_refused
                .with_label_values(&["srt", which.label()])
                .inc();
            let why = match which {
                super::LimitExceeded::Total => "connection limit reached (srt.max_connections)",
                super::LimitExceeded::PerIp => {
                    "connection limit of this address reached (srt.max_connections_per_ip)"
                }
            };
            return reject(req, ctx, codes::OVERLOAD, why).await;
        }
    };
    if req.key_size() != KeySize::Unspecified {
        // A passphrase: encryption is not offered yet. libsrt's listener
        // without a passphrase answers SRT_REJ_UNSECURE; so do we, before
        // the token is even looked at.
        ctx.metrics
            .admission_refusals
            .with_label_values(&["encryption"])
            .inc();
        if ctx.log.allow("srt_refused", Some(peer.ip())) {
            tracing::info!(
                reason = "encryption requested; not supported",
                "SRT connection refused"
            );
        }
        let wire = RejectReason::try_from(codes::WIRE_UNSECURE)
            .unwrap_or(RejectReason::CoreUnrecognized(codes::WIRE_UNSECURE));
        return req.reject(wire).await;
    }
    let raw = req.stream_id().map(|s| s.to_string());
    let (mode, sreq) = match parse_srt_stream_id(raw.as_deref()) {
        Ok(v) => v,
        Err(e @ StreamIdError::BadMode(_)) => {
            ctx.metrics
                .admission_refusals
                .with_label_values(&["bad_mode"])
                .inc();
            return reject(req, ctx, codes::BAD_MODE, &e.to_string()).await;
        }
        Err(e) => {
            ctx.metrics
                .admission_refusals
                .with_label_values(&["bad_request"])
                .inc();
            return reject(req, ctx, codes::MALFORMED, &e.to_string()).await;
        }
    };
    if ctx.readiness.is_draining() {
        ctx.metrics
            .admission_refusals
            .with_label_values(&["shutting_down"])
            .inc();
        return reject(req, ctx, codes::UNAVAILABLE, "shutting down").await;
    }
    let needs_token = mode == SrtMode::Publish || ctx.srt.play_requires_token;
    let admitted = if needs_token {
        let Some(token) = sreq.token.as_deref() else {
            ctx.metrics
                .admission_refusals
                .with_label_values(&["missing_token"])
                .inc();
            return reject(req, ctx, codes::UNAUTHORIZED, "missing token (s=)").await;
        };
        match ctx
            .admit(token, &sreq.stream, &sreq.source, peer.ip())
            .await
        {
            Ok(a) => Some(a),
            Err(AdmitFailure::Throttled(b)) => {
                let why = format!("too many failed attempts ({} blocked)", b.key.kind());
                return reject(req, ctx, codes::OVERLOAD, &why).await;
            }
            Err(AdmitFailure::Check(AdmitError::Refused(r))) => {
                ctx.metrics
                    .admission_refusals
                    .with_label_values(&[r.code()])
                    .inc();
                return reject(req, ctx, reject_code(r), r.code()).await;
            }
            Err(AdmitFailure::Check(AdmitError::Unavailable(e))) => {
                ctx.metrics
                    .admission_refusals
                    .with_label_values(&["unavailable"])
                    .inc();
                return reject(req, ctx, codes::UNAVAILABLE, &e).await;
            }
        }
    } else {
        None
    };
    let key = SourceKey {
        stream: sreq.stream.clone(),
        source: sreq.source.clone(),
    };
    match (mode, admitted) {
        (SrtMode::Publish, Some(a)) => {
            let a = a.with_requested_priority(sreq.priority);
            let meta = FeedMeta {
                id: FeedId::new_random(),
                token_id: a.token_id,
                label: a.label,
                priority: a.priority,
                pinned: a.pinned,
                protocol: Protocol::Srt,
                peer,
                grant: Some(a.grant),
            };
            let handle = match ctx.engine.publish(key.clone(), meta).await {
                Ok(Ok(h)) => h,
                Ok(Err(refusal)) => {
                    let code = match refusal {
                        PublishRefusal::Banned { .. } => codes::FORBIDDEN,
                        PublishRefusal::ShuttingDown => codes::UNAVAILABLE,
                    };
                    return reject(req, ctx, code, &refusal.to_string()).await;
                }
                Err(_) => return reject(req, ctx, codes::UNAVAILABLE, "engine stopped").await,
            };
            // The feed is registered: it must be removed again if the
            // handshake fails now (srt-protocol may still refuse it).
            let socket = match req.accept(None).await {
                Ok(socket) => socket,
                Err(e) => {
                    ctx.engine.unpublish(handle.id).await;
                    return Err(e);
                }
            };
            tracing::Span::current()
                .record("stream", tracing::field::display(&key.stream))
                .record("feed", tracing::field::display(handle.id));
            tracing::info!(source = %key.source, "SRT publishing");
            let result = contained(publish(socket, handle.id, handle.control, ctx, stop)).await;
            ctx.engine.unpublish(handle.id).await;
            result
        }
        (SrtMode::Request, _) => {
            let socket = req.accept(None).await?;
            let player = match ctx.engine.play(key.clone(), PlayerFormat::Ts).await {
                Ok(p) => p,
                Err(_) => return Ok(()),
            };
            // Anyone may play (unless play_requires_token): limited like refusals.
            tracing::Span::current().record("stream", tracing::field::display(&key.stream));
            if ctx.log.allow("srt_play", Some(peer.ip())) {
                tracing::info!(source = %key.source, "SRT playing");
            }
            let result = contained(play(socket, player.items, stop)).await;
            ctx.engine.unplay(key, player.id).await;
            result
        }
        (SrtMode::Publish, None) => unreachable!("publish always needs a token"),
    }
}

async fn publish(
    mut socket: SrtSocket,
    feed: FeedId,
    mut control: tokio::sync::mpsc::Receiver<FeedControl>,
    ctx: &IngestContext,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    let mut demux = TsFeedDemux::new();
    let idle = Duration::from_millis(ctx.srt.idle_timeout_ms);
    let mut stats = socket.statistics().clone();
    loop {
        tokio::select! {
            Some(s) = stats.next() => {
                let view = SrtFeedStats {
                    rtt_ms: s.rx_average_rtt.as_secs_f64() * 1000.0,
                    rx_packets: s.rx_data,
                    rx_loss_packets: s.rx_loss_data,
                    rx_retransmitted_packets: s.rx_retransmit_data,
                    rx_dropped_packets: s.rx_dropped_data,
                    rx_buffer_ms: s.rx_acknowledged_time.as_secs_f64() * 1000.0,
                    rx_buffer_available_bytes: s.rx_buffer_available_bytes,
                };
                if ctx.engine.media(feed, FeedMedia::SrtStats(view)).await.is_err() {
                    return Ok(());
                }
            }
            msg = tokio::time::timeout(idle, socket.next()) => match msg {
                Err(_) => {
                    tracing::info!(feed = %feed, "SRT publisher idle; closing");
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::info!(feed = %feed, error = %e, "SRT publisher connection lost");
                    break;
                }
                Ok(Some(Ok((_, data)))) => {
                    for media in demux.push(&data) {
                        if ctx.engine.media(feed, media).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            },
            c = control.recv() => {
                let reason = match c {
                    Some(FeedControl::Disconnect { reason }) => reason,
                    None => "engine dropped the feed".into(),
                };
                tracing::info!(feed = %feed, %reason, "disconnecting SRT publisher");
                break;
            }
            _ = stop.cancelled() => {
                tracing::debug!(feed = %feed, "SRT publisher closed: node shut down");
                break;
            }
        }
    }
    let _ = socket.close().await;
    Ok(())
}

async fn play(
    mut socket: SrtSocket,
    mut items: tokio::sync::mpsc::Receiver<PlayerItem>,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    loop {
        tokio::select! {
            item = items.recv() => match item {
                Some(PlayerItem::Ts { data, .. }) => {
                    for chunk in chunk_1316(&data) {
                        if socket.send((Instant::now(), chunk)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Some(PlayerItem::Close { reason }) => {
                    tracing::info!(reason, "ending SRT playback");
                    break;
                }
                Some(_) => {}
                None => break,
            },
            // A player sends nothing but control; its end closes the stream.
            msg = socket.next() => if msg.is_none() { return Ok(()) },
            _ = stop.cancelled() => {
                tracing::debug!("SRT player closed: node shut down");
                break;
            }
        }
    }
    let _ = socket.close().await;
    Ok(())
}
