//! The SRT caller (srt-tokio): receives MPEG-TS and demuxes it (pull), or
//! sends the engine's shared MPEG-TS output in 7×188-byte messages (push).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use srt_tokio::SrtSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::url::SrtUrl;
use super::{ClientError, ClientOptions, Counter, PushEnd};
use crate::engine::{FeedMedia, PlayerItem};
use crate::media::ts::mux::chunk_1316;
use crate::wire::demux::TsFeedDemux;

pub(super) struct SrtClient {
    socket: SrtSocket,
    peer: SocketAddr,
    demux: TsFeedDemux,
    pending: VecDeque<FeedMedia>,
    bytes: Counter,
}

impl SrtClient {
    pub(super) async fn open(url: &SrtUrl, opts: &ClientOptions) -> Result<Self, ClientError> {
        let authority = super::ClientUrl::Srt(url.clone()).authority();
        let connect_timeout = opts.connect_timeout;
        let idle = opts.no_input_timeout.max(Duration::from_secs(1));
        let udp = srt_tokio::options::ByteCount(opts.srt_udp_buffer_bytes as u64);
        let mut builder = SrtSocket::builder()
            .latency(url.latency.unwrap_or(opts.srt_latency))
            .set(|o| {
                o.connect.timeout = connect_timeout;
                o.session.peer_idle_timeout = idle;
                o.connect.udp_recv_buffer_size = udp;
                o.connect.udp_send_buffer_size = udp;
            });
        if let Some(p) = &url.passphrase {
            builder = builder.encryption(0, p.clone());
        }
        // srt-tokio enforces its own connect timeout; the outer one also
        // bounds name resolution.
        let socket = tokio::time::timeout(
            connect_timeout + Duration::from_millis(500),
            builder.call(authority.as_str(), url.stream_id.as_deref()),
        )
        .await
        .map_err(|_| ClientError::ConnectTimeout)?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => ClientError::ConnectTimeout,
            std::io::ErrorKind::ConnectionRefused => ClientError::Refused(e.to_string()),
            _ => ClientError::Connect(e),
        })?;
        let peer = socket.settings().remote;
        Ok(Self {
            socket,
            peer,
            demux: TsFeedDemux::new(),
            pending: VecDeque::new(),
            bytes: Counter::default(),
        })
    }

    pub(super) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(super) fn counter(&self) -> Counter {
        self.bytes.clone()
    }

    pub(super) async fn next_media(
        &mut self,
        no_input: Duration,
    ) -> Result<Option<FeedMedia>, ClientError> {
        let deadline = tokio::time::Instant::now() + no_input;
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Ok(Some(m));
            }
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Err(ClientError::NoInput(no_input.as_millis() as u64)),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(ClientError::Io(e)),
                Ok(Some(Ok((_, data)))) => {
                    self.bytes.0.fetch_add(data.len() as u64, Ordering::Relaxed);
                    self.pending.extend(self.demux.push(&data));
                }
            }
        }
    }

    /// Send one item; false after the engine's `Close`. FLV items are
    /// ignored (an SRT push plays the source as MPEG-TS).
    pub(super) async fn send(&mut self, item: PlayerItem) -> Result<bool, ClientError> {
        match item {
            PlayerItem::Ts { data, .. } => {
                for chunk in chunk_1316(&data) {
                    let n = chunk.len() as u64;
                    self.socket
                        .feed((Instant::now(), chunk))
                        .await
                        .map_err(ClientError::Io)?;
                    self.bytes.0.fetch_add(n, Ordering::Relaxed);
                }
                self.socket.flush().await.map_err(ClientError::Io)?;
                Ok(true)
            }
            PlayerItem::Close { .. } => Ok(false),
            _ => Ok(true),
        }
    }

    pub(super) async fn push(
        &mut self,
        items: &mut mpsc::Receiver<PlayerItem>,
        cancel: &CancellationToken,
    ) -> Result<PushEnd, ClientError> {
        loop {
            tokio::select! {
                item = items.recv() => match item {
                    None => return Ok(PushEnd::ItemsEnded),
                    Some(item) => if !self.send(item).await? {
                        return Ok(PushEnd::Closed);
                    },
                },
                // A receiver sends only control packets; the end of its
                // stream is the connection closing.
                msg = self.socket.next() => match msg {
                    None => return Err(ClientError::Closed),
                    Some(Err(e)) => return Err(ClientError::Io(e)),
                    Some(Ok(_)) => {}
                },
                _ = cancel.cancelled() => return Ok(PushEnd::Cancelled),
            }
        }
    }

    pub(super) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.socket.close()).await;
    }
}
