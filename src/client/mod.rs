//! Outbound clients: pull a stream from an RTMP or SRT server (as media
//! the engine takes from any feed) and push the engine's player items to
//! one. Used by pull inputs, push outputs, the node-to-node relay and the
//! load generator.
//!
//! - [`pull`] connects to `rtmp://HOST[:PORT]/APP/KEY[?QUERY]` (rml_rtmp
//!   `ClientSession`, `play`) or `srt://HOST:PORT?streamid=…` (srt-tokio
//!   caller) and yields [`FeedMedia`]: codec configurations, metadata and
//!   frames, demuxed by the same code as the ingest servers
//!   ([`crate::wire::demux`]).
//! - [`push`] connects and publishes [`PlayerItem`]s, i.e. what
//!   [`EngineHandle::play`](crate::engine::EngineHandle::play) gives a
//!   player in [`PushSession::format`] (FLV bodies for RTMP, serialized by
//!   [`crate::wire::rtmp`]; MPEG-TS for SRT, sent in 7×188-byte
//!   messages).
//!
//! Sessions are cheap: no task of their own (SRT sockets have srt-tokio's
//! internal ones), a 16 KiB read buffer for RTMP, and they are driven by
//! the caller's task. Every phase is bounded: `connect_timeout` (TCP
//! connect, SRT handshake), `handshake_timeout` (RTMP handshake, connect
//! and play/publish accepted), `no_input_timeout` (pull: no media). URLs
//! are only ever logged in [`ClientUrl::redacted`] form.

pub mod balance;
mod rtmp;
mod srt;
pub mod url;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use balance::{Failover, ShapeError, Step, TargetRef};
pub use url::{ClientUrl, RtmpUrl, SrtUrl, UrlError};

use crate::engine::{FeedMedia, PlayerFormat, PlayerItem};

pub use crate::config::SRT_UDP_BUFFER_BYTES;

/// Time limits and socket sizes of a client session.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TCP connect (RTMP) or the whole SRT handshake.
    pub connect_timeout: Duration,
    /// RTMP handshake plus `connect` and `play`/`publish` accepted.
    pub handshake_timeout: Duration,
    /// Pull: the session fails when no media came for this long. SRT: also
    /// the peer idle timeout (at least 1 s).
    pub no_input_timeout: Duration,
    /// SRT latency when the URL has no `latency=`.
    pub srt_latency: Duration,
    /// Kernel receive/send buffer of an SRT client's own UDP socket
    /// (srt-tokio's default, 64 KiB, is less than one HD keyframe).
    pub srt_udp_buffer_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            no_input_timeout: Duration::from_secs(10),
            srt_latency: Duration::from_millis(120),
            srt_udp_buffer_bytes: SRT_UDP_BUFFER_BYTES,
        }
    }
}

/// Why a client session could not start or ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("RTMP handshake or play/publish request timed out")]
    HandshakeTimeout,
    /// The server's words, with our own secrets masked when it echoes
    /// them ([`ClientUrl::mask_in`]); shown escaped and cut.
    #[error("refused by the server: {}", crate::redact::Untrusted(.0))]
    Refused(String),
    #[error("protocol error: {}", crate::redact::Untrusted(.0))]
    Protocol(String),
    #[error("no media for {0} ms")]
    NoInput(u64),
    #[error("connection lost: {0}")]
    Io(#[source] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
}

impl ClientError {
    /// A short label for metrics.
    /// Mask the secrets of `url` in what the server said: a server may
    /// repeat the key it refused.
    fn masking(self, url: &ClientUrl) -> Self {
        match self {
            ClientError::Refused(text) => ClientError::Refused(url.mask_in(&text)),
            ClientError::Protocol(text) => ClientError::Protocol(url.mask_in(&text)),
            other => other,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::ConnectTimeout => "connect_timeout",
            ClientError::Connect(_) => "connect",
            ClientError::HandshakeTimeout => "handshake_timeout",
            ClientError::Refused(_) => "refused",
            ClientError::Protocol(_) => "protocol",
            ClientError::NoInput(_) => "no_input",
            ClientError::Io(_) => "io",
            ClientError::Closed => "closed",
        }
    }
}

/// Media bytes moved by a session (received by a pull, sent by a push),
/// readable from another task while the session runs.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How [`PushSession::pump`] ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushEnd {
    /// The engine closed the player (the source stayed vacant too long).
    Closed,
    /// The item channel was closed by its sender.
    ItemsEnded,
    /// The cancellation token fired.
    Cancelled,
}

enum Conn {
    Rtmp(Box<rtmp::RtmpClient>),
    Srt(Box<srt::SrtClient>),
}

impl Conn {
    fn peer(&self) -> SocketAddr {
        match self {
            Conn::Rtmp(c) => c.peer(),
            Conn::Srt(c) => c.peer(),
        }
    }

    fn counter(&self) -> Counter {
        match self {
            Conn::Rtmp(c) => c.counter(),
            Conn::Srt(c) => c.counter(),
        }
    }

    async fn close(self) {
        match self {
            Conn::Rtmp(c) => c.close().await,
            Conn::Srt(c) => c.close().await,
        }
    }
}

/// A playing session: media from a remote server.
pub struct PullSession {
    conn: Conn,
    no_input: Duration,
}

/// Connect to `url` and start playing it.
pub async fn pull(url: &ClientUrl, opts: &ClientOptions) -> Result<PullSession, ClientError> {
    let conn = match url {
        ClientUrl::Rtmp(u) => Conn::Rtmp(Box::new(
            rtmp::RtmpClient::play(u, opts)
                .await
                .map_err(|e| e.masking(url))?,
        )),
        ClientUrl::Srt(u) => Conn::Srt(Box::new(
            srt::SrtClient::open(u, opts)
                .await
                .map_err(|e| e.masking(url))?,
        )),
    };
    Ok(PullSession {
        conn,
        no_input: opts.no_input_timeout,
    })
}

impl PullSession {
    /// The next media item, `Ok(None)` when the server ended the stream;
    /// [`ClientError::NoInput`] after `no_input_timeout` without media.
    pub async fn next(&mut self) -> Result<Option<FeedMedia>, ClientError> {
        match &mut self.conn {
            Conn::Rtmp(c) => c.next_media(self.no_input).await,
            Conn::Srt(c) => c.next_media(self.no_input).await,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.conn.peer()
    }

    /// Bytes received so far (live).
    pub fn counter(&self) -> Counter {
        self.conn.counter()
    }

    /// Stop playing and close the connection (bounded to 0.5 s).
    pub async fn close(self) {
        self.conn.close().await
    }
}

/// A publishing session: player items out to a remote server.
pub struct PushSession {
    conn: Conn,
}

/// The player format a push to `url` needs from the engine.
pub fn push_format(url: &ClientUrl) -> PlayerFormat {
    match url {
        ClientUrl::Rtmp(_) => PlayerFormat::Flv,
        ClientUrl::Srt(_) => PlayerFormat::Ts,
    }
}

/// Connect to `url` and start publishing to it.
pub async fn push(url: &ClientUrl, opts: &ClientOptions) -> Result<PushSession, ClientError> {
    let conn = match url {
        ClientUrl::Rtmp(u) => Conn::Rtmp(Box::new(
            rtmp::RtmpClient::publish(u, opts)
                .await
                .map_err(|e| e.masking(url))?,
        )),
        ClientUrl::Srt(u) => Conn::Srt(Box::new(
            srt::SrtClient::open(u, opts)
                .await
                .map_err(|e| e.masking(url))?,
        )),
    };
    Ok(PushSession { conn })
}

impl PushSession {
    /// What the items must be: [`PlayerFormat::Flv`] for RTMP,
    /// [`PlayerFormat::Ts`] for SRT (items of the other format are skipped).
    pub fn format(&self) -> PlayerFormat {
        match self.conn {
            Conn::Rtmp(_) => PlayerFormat::Flv,
            Conn::Srt(_) => PlayerFormat::Ts,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.conn.peer()
    }

    /// Bytes sent so far (live).
    pub fn counter(&self) -> Counter {
        self.conn.counter()
    }

    /// Send one item. Returns false after the engine's `Close` item (the
    /// stream is then finished).
    pub async fn send(&mut self, item: PlayerItem) -> Result<bool, ClientError> {
        match &mut self.conn {
            Conn::Rtmp(c) => c.send(item).await,
            Conn::Srt(c) => c.send(item).await,
        }
    }

    /// Send items as they come until the stream ends, `cancel` fires or the
    /// connection fails; watches the connection meanwhile, so a server
    /// that goes away is noticed even while no item flows.
    pub async fn pump(
        &mut self,
        items: &mut mpsc::Receiver<PlayerItem>,
        cancel: &CancellationToken,
    ) -> Result<PushEnd, ClientError> {
        match &mut self.conn {
            Conn::Rtmp(c) => c.push(items, cancel).await,
            Conn::Srt(c) => c.push(items, cancel).await,
        }
    }

    /// Stop publishing and close the connection (bounded to 0.5 s).
    pub async fn close(self) {
        self.conn.close().await
    }
}
