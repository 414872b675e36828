//! The SRT listener (srt-tokio): publishers send MPEG-TS that is demuxed
//! into frames for the engine; players receive the source's shared
//! MPEG-TS output in 7×188-byte messages.
//!
//! Admission happens before a connection is accepted: the stream id is
//! parsed (Access Control `#!::r=…,m=…,s=…` or the free form), the token is
//! checked, and refusals use the SRT reject codes of DESIGN section 4 (1400
//! malformed stream id, 1401 bad token, 1403 not allowed, 1405 bad mode,
//! 1503 shutting down). These are libsrt API values (`SRT_REJX_*`); on the
//! wire the handshake type carries API value + 1000, which is the 2000
//! range srt-protocol names `ServerRejectReason` (2403 = `SRT_REJX_FORBIDDEN`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use srt_tokio::access::RejectReason;
use srt_tokio::{ConnectionRequest, SrtIncoming, SrtSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::demux::TsFeedDemux;
use super::url::{parse_srt_stream_id, SrtMode, StreamIdError};
use super::IngestContext;
use crate::auth::publish::{AdmitError, Refusal};
use crate::domain::FeedId;
use crate::engine::{
    FeedControl, FeedMedia, FeedMeta, PlayerFormat, PlayerItem, Protocol, PublishRefusal,
    SourceKey, SrtFeedStats,
};
use crate::media::ts::mux::chunk_1316;

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
    pub const FORBIDDEN: i32 = 1403;
    pub const BAD_MODE: i32 = 1405;
    pub const UNAVAILABLE: i32 = 1503;
}

fn reject_code(r: Refusal) -> i32 {
    match r {
        Refusal::StreamNotAllowed | Refusal::IpNotAllowed => codes::FORBIDDEN,
        _ => codes::UNAUTHORIZED,
    }
}

/// Accept connection requests until `cancel` fires; it also closes every
/// open session. While draining, requests are still answered (1503).
/// `listener` is held here: dropping it would stop the listener.
pub async fn serve(
    listener: srt_tokio::SrtListener,
    mut incoming: SrtIncoming,
    ctx: Arc<IngestContext>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let _listener = listener;
    loop {
        let req = tokio::select! {
            _ = cancel.cancelled() => break,
            r = incoming.incoming().next() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let ctx = ctx.clone();
        let stop = cancel.clone();
        tracker.spawn(async move {
            let peer = req.remote();
            if let Err(e) = handle(req, &ctx, &stop).await {
                tracing::warn!(%peer, error = %e, "SRT session ended with an error");
            }
        });
    }
}

async fn reject(req: ConnectionRequest, code: i32, why: &str) -> std::io::Result<()> {
    tracing::info!(peer = %req.remote(), code, reason = why, "SRT connection refused");
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
    let raw = req.stream_id().map(|s| s.to_string());
    let (mode, sreq) = match parse_srt_stream_id(raw.as_deref()) {
        Ok(v) => v,
        Err(e @ StreamIdError::BadMode(_)) => {
            ctx.metrics
                .admission_refusals
                .with_label_values(&["bad_mode"])
                .inc();
            return reject(req, codes::BAD_MODE, &e.to_string()).await;
        }
        Err(e) => {
            ctx.metrics
                .admission_refusals
                .with_label_values(&["bad_request"])
                .inc();
            return reject(req, codes::MALFORMED, &e.to_string()).await;
        }
    };
    if ctx.readiness.is_draining() {
        ctx.metrics
            .admission_refusals
            .with_label_values(&["shutting_down"])
            .inc();
        return reject(req, codes::UNAVAILABLE, "shutting down").await;
    }
    let needs_token = mode == SrtMode::Publish || ctx.srt.play_requires_token;
    let admitted = if needs_token {
        let Some(token) = sreq.token.as_deref() else {
            ctx.metrics
                .admission_refusals
                .with_label_values(&["missing_token"])
                .inc();
            return reject(req, codes::UNAUTHORIZED, "missing token (s=)").await;
        };
        match ctx
            .admission
            .check(
                token,
                &sreq.stream,
                &sreq.source,
                peer.ip(),
                chrono::Utc::now(),
            )
            .await
        {
            Ok(a) => Some(a),
            Err(AdmitError::Refused(r)) => {
                ctx.metrics
                    .admission_refusals
                    .with_label_values(&[r.code()])
                    .inc();
                return reject(req, reject_code(r), r.code()).await;
            }
            Err(AdmitError::Unavailable(e)) => {
                ctx.metrics
                    .admission_refusals
                    .with_label_values(&["unavailable"])
                    .inc();
                return reject(req, codes::UNAVAILABLE, &e).await;
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
                    return reject(req, code, &refusal.to_string()).await;
                }
                Err(_) => return reject(req, codes::UNAVAILABLE, "engine stopped").await,
            };
            let socket = req.accept(None).await?;
            tracing::info!(%peer, stream = %key.stream, source = %key.source, feed = %handle.id, "SRT publishing");
            let result = publish(socket, handle.id, handle.control, ctx, stop).await;
            ctx.engine.unpublish(handle.id).await;
            result
        }
        (SrtMode::Request, _) => {
            let socket = req.accept(None).await?;
            let player = match ctx.engine.play(key.clone(), PlayerFormat::Ts).await {
                Ok(p) => p,
                Err(_) => return Ok(()),
            };
            tracing::info!(%peer, stream = %key.stream, source = %key.source, "SRT playing");
            let result = play(socket, player.items, stop).await;
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
