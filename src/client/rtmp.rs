//! The RTMP client: one TCP connection driven by rml_rtmp's sans-IO
//! `ClientSession`, playing (pull) or publishing (push) one stream.
//!
//! No task of its own: the caller's task drives it through
//! [`RtmpClient::next_media`] or [`RtmpClient::push`], so a session costs
//! one socket, one read buffer and the session state.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rml_rtmp::chunk_io::ChunkDeserializer;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, StreamMetadata,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::url::RtmpUrl;
use super::{ClientError, ClientOptions, Counter, PushEnd};
use crate::engine::{FeedMedia, PlayerItem};
use crate::media::Track;
use crate::wire::demux::FlvDemux;
use crate::wire::rtmp::write_player_item;

/// Read buffer per connection.
const READ_BUF: usize = 16 * 1024;
/// Items serialized per socket write, at most.
const BATCH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Play,
    Publish,
}

pub(super) struct RtmpClient {
    sock: TcpStream,
    peer: SocketAddr,
    session: ClientSession,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Play: a second chunk decoder over the same bytes that takes media
    /// on whatever message stream it comes (ffmpeg's listen mode sends it
    /// on a stream id other than the one it created, which rml_rtmp's
    /// `ClientSession` silently drops).
    media: Option<ChunkDeserializer>,
    demux: FlvDemux,
    pending: VecDeque<FeedMedia>,
    /// Play or publish was accepted.
    accepted: bool,
    role: Role,
    /// Set when the server ended the stream.
    ended: Option<String>,
    bytes: Counter,
}

fn protocol<E: std::fmt::Debug>(e: E) -> ClientError {
    ClientError::Protocol(format!("{e:?}"))
}

const TYPE_SET_CHUNK_SIZE: u8 = 1;
const TYPE_AUDIO: u8 = 8;
const TYPE_VIDEO: u8 = 9;
const TYPE_AMF0_DATA: u8 = 18;

/// `[@setDataFrame,] onMetaData, {…}` → metadata.
fn metadata(values: Vec<Amf0Value>) -> Option<StreamMetadata> {
    let mut it = values.into_iter().peekable();
    if matches!(it.peek(), Some(Amf0Value::Utf8String(s)) if s == "@setDataFrame") {
        it.next();
    }
    match (it.next(), it.next()) {
        (Some(Amf0Value::Utf8String(name)), Some(Amf0Value::Object(props)))
            if name == "onMetaData" =>
        {
            let mut m = StreamMetadata::new();
            m.apply_metadata_values(props);
            Some(m)
        }
        _ => None,
    }
}

/// `onStatus` codes that refuse a request or end a stream.
fn is_refusal(code: &str) -> bool {
    [
        "Failed",
        "Rejected",
        "BadName",
        "BadConnection",
        "StreamNotFound",
        "Forbidden",
    ]
    .iter()
    .any(|w| code.contains(w))
}

fn is_end(code: &str) -> bool {
    matches!(
        code,
        "NetStream.Play.Stop" | "NetStream.Play.Complete" | "NetStream.Unpublish.Success"
    )
}

impl RtmpClient {
    pub(super) async fn play(url: &RtmpUrl, opts: &ClientOptions) -> Result<Self, ClientError> {
        Self::open(url, opts, Role::Play).await
    }

    pub(super) async fn publish(url: &RtmpUrl, opts: &ClientOptions) -> Result<Self, ClientError> {
        Self::open(url, opts, Role::Publish).await
    }

    async fn open(url: &RtmpUrl, opts: &ClientOptions, role: Role) -> Result<Self, ClientError> {
        let authority = super::ClientUrl::Rtmp(url.clone()).authority();
        let sock = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(&authority))
            .await
            .map_err(|_| ClientError::ConnectTimeout)?
            .map_err(ClientError::Connect)?;
        let _ = sock.set_nodelay(true);
        let peer = sock.peer_addr().map_err(ClientError::Connect)?;
        let mut config = ClientSessionConfig::new();
        config.tc_url = Some(format!("rtmp://{authority}/{}", url.app));
        let (session, _) = ClientSession::new(config).map_err(protocol)?;
        let mut c = Self {
            sock,
            peer,
            session,
            buf: vec![0u8; READ_BUF],
            out: Vec::with_capacity(READ_BUF),
            media: (role == Role::Play).then(ChunkDeserializer::new),
            demux: FlvDemux::new(),
            pending: VecDeque::new(),
            accepted: false,
            role,
            ended: None,
            bytes: Counter::default(),
        };
        tokio::time::timeout(opts.handshake_timeout, c.start(url))
            .await
            .map_err(|_| ClientError::HandshakeTimeout)??;
        Ok(c)
    }

    pub(super) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(super) fn counter(&self) -> Counter {
        self.bytes.clone()
    }

    /// Handshake, `connect`, then `play` or `publish` until accepted.
    async fn start(&mut self, url: &RtmpUrl) -> Result<(), ClientError> {
        let mut hs = Handshake::new(PeerType::Client);
        let p0p1 = hs.generate_outbound_p0_and_p1().map_err(protocol)?;
        self.write(&p0p1).await?;
        let remaining = loop {
            let n = self
                .sock
                .read(&mut self.buf)
                .await
                .map_err(ClientError::Io)?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "server closed during the handshake".into(),
                ));
            }
            match hs.process_bytes(&self.buf[..n]).map_err(protocol)? {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.write(&response_bytes).await?
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    self.write(&response_bytes).await?;
                    break remaining_bytes;
                }
            }
        };
        let r = self
            .session
            .request_connection(url.app.clone())
            .map_err(protocol)?;
        self.queue(r);
        self.flush().await?;
        let mut connected = false;
        if !remaining.is_empty() {
            connected |= self.input(&remaining)?;
            self.flush().await?;
        }
        while !connected {
            connected = self.read_some().await?;
        }
        let r = match self.role {
            Role::Play => self.session.request_playback(url.key.clone()),
            Role::Publish => self
                .session
                .request_publishing(url.key.clone(), PublishRequestType::Live),
        }
        .map_err(protocol)?;
        self.queue(r);
        self.flush().await?;
        while !self.accepted {
            self.read_some().await?;
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.sock.write_all(bytes).await.map_err(ClientError::Io)?;
        if self.role == Role::Publish {
            self.bytes
                .0
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let r = self.write(&out).await;
            self.out = out;
            crate::wire::rtmp::recycle_out(&mut self.out);
            r?;
        }
        Ok(())
    }

    fn queue(&mut self, r: ClientSessionResult) {
        if let ClientSessionResult::OutboundResponse(p) = r {
            self.out.extend_from_slice(&p.bytes);
        }
    }

    /// Read once, process, flush responses. Returns whether the connection
    /// request was accepted in what was read.
    async fn read_some(&mut self) -> Result<bool, ClientError> {
        let n = self
            .sock
            .read(&mut self.buf)
            .await
            .map_err(ClientError::Io)?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        let buf = std::mem::take(&mut self.buf);
        let r = self.input(&buf[..n]);
        self.buf = buf;
        let connected = r?;
        self.flush().await?;
        Ok(connected)
    }

    /// Feed bytes to rml_rtmp (guarding against its panics) and handle the
    /// results. Returns whether the connection request was accepted.
    fn input(&mut self, bytes: &[u8]) -> Result<bool, ClientError> {
        if self.role == Role::Play {
            self.bytes
                .0
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        let session = &mut self.session;
        let results = std::panic::catch_unwind(AssertUnwindSafe(|| session.handle_input(bytes)))
            .map_err(|p| {
                ClientError::Protocol(format!(
                    "rml_rtmp panicked: {}",
                    crate::supervise::panic_message(p.as_ref())
                ))
            })?
            .map_err(protocol)?;
        self.media_input(bytes)?;
        let mut connected = false;
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => self.out.extend_from_slice(&p.bytes),
                ClientSessionResult::RaisedEvent(ev) => connected |= self.event(ev)?,
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(connected)
    }

    fn event(&mut self, ev: ClientSessionEvent) -> Result<bool, ClientError> {
        match ev {
            ClientSessionEvent::ConnectionRequestAccepted => return Ok(true),
            ClientSessionEvent::ConnectionRequestRejected { description } => {
                return Err(ClientError::Refused(description))
            }
            ClientSessionEvent::PlaybackRequestAccepted
            | ClientSessionEvent::PublishRequestAccepted => self.accepted = true,
            ClientSessionEvent::UnhandleableOnStatusCode { code } => {
                if !self.accepted && is_refusal(&code) {
                    return Err(ClientError::Refused(code));
                }
                if self.accepted && (is_end(&code) || is_refusal(&code)) {
                    self.ended = Some(code);
                }
            }
            // rml_rtmp servers refuse play/publish with an `_error` whose
            // transaction id (0) the session does not track.
            ClientSessionEvent::UnknownTransactionResultReceived {
                additional_values, ..
            } if !self.accepted => {
                let field = |name: &str| {
                    additional_values.iter().find_map(|v| match v {
                        Amf0Value::Object(o) => match o.get(name) {
                            Some(Amf0Value::Utf8String(s)) => Some(s.clone()),
                            _ => None,
                        },
                        _ => None,
                    })
                };
                if let Some(code) = field("code") {
                    let why = match field("description") {
                        Some(d) if !d.is_empty() => format!("{code}: {d}"),
                        _ => code,
                    };
                    return Err(ClientError::Refused(why));
                }
            }
            // Media is taken from `media_input`.
            _ => {}
        }
        Ok(false)
    }

    /// Play: decode media messages (any message stream) into `pending`.
    fn media_input(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let Some(dec) = self.media.as_mut() else {
            return Ok(());
        };
        let mut found = Vec::new();
        let mut input = bytes;
        while let Some(p) = dec.get_next_message(input).map_err(protocol)? {
            input = &[];
            match p.type_id {
                TYPE_SET_CHUNK_SIZE => {
                    if let Ok(RtmpMessage::SetChunkSize { size }) = p.to_rtmp_message() {
                        dec.set_max_chunk_size(size as usize).map_err(protocol)?;
                    }
                }
                TYPE_AUDIO | TYPE_VIDEO | TYPE_AMF0_DATA => found.push(p),
                _ => {}
            }
        }
        for p in found {
            match p.type_id {
                TYPE_AUDIO => self.tag(Track::Audio, &p.data, p.timestamp.value),
                TYPE_VIDEO => self.tag(Track::Video, &p.data, p.timestamp.value),
                _ => {
                    if let Ok(RtmpMessage::Amf0Data { values }) = p.to_rtmp_message() {
                        if let Some(m) = metadata(values) {
                            self.pending.push_back(FeedMedia::Metadata(Arc::new(m)));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn tag(&mut self, track: Track, body: &[u8], ts: u32) {
        match self.demux.tag(track, body, ts) {
            Ok(Some(m)) => self.pending.push_back(m),
            Ok(None) => {}
            Err(e) => tracing::debug!(peer = %self.peer, ?track, error = %e, "FLV tag ignored"),
        }
    }

    /// The next media item; `Ok(None)` when the server ended the stream.
    /// Fails with [`ClientError::NoInput`] when no media came for
    /// `no_input`.
    pub(super) async fn next_media(
        &mut self,
        no_input: Duration,
    ) -> Result<Option<FeedMedia>, ClientError> {
        let deadline = Instant::now() + no_input;
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Ok(Some(m));
            }
            if self.ended.is_some() {
                return Ok(None);
            }
            match tokio::time::timeout_at(deadline, self.read_some()).await {
                Err(_) => return Err(ClientError::NoInput(no_input.as_millis() as u64)),
                Ok(Err(ClientError::Closed)) => return Ok(None),
                Ok(r) => {
                    r?;
                }
            }
        }
    }

    /// Publish the items until the engine closes the stream, `items` ends,
    /// `cancel` fires or the connection fails. Reads the socket meanwhile
    /// (acknowledgements, pings, the server closing).
    pub(super) async fn push(
        &mut self,
        items: &mut mpsc::Receiver<PlayerItem>,
        cancel: &CancellationToken,
    ) -> Result<PushEnd, ClientError> {
        loop {
            enum Wake {
                Read(std::io::Result<usize>),
                Item(Option<PlayerItem>),
                Stop,
            }
            let wake = tokio::select! {
                r = self.sock.read(&mut self.buf) => Wake::Read(r),
                i = items.recv() => Wake::Item(i),
                _ = cancel.cancelled() => Wake::Stop,
            };
            match wake {
                Wake::Read(Ok(0)) => return Err(ClientError::Closed),
                Wake::Read(Ok(n)) => {
                    let buf = std::mem::take(&mut self.buf);
                    let r = self.input(&buf[..n]);
                    self.buf = buf;
                    r?;
                    if let Some(code) = self.ended.take() {
                        return Err(ClientError::Refused(code));
                    }
                    self.flush().await?;
                }
                Wake::Read(Err(e)) => return Err(ClientError::Io(e)),
                Wake::Item(None) => return Ok(PushEnd::ItemsEnded),
                Wake::Item(Some(first)) => {
                    let mut next = Some(first);
                    let mut n = 0;
                    while let Some(item) = next.take() {
                        if !write_player_item(&mut self.session, item, &mut self.out)
                            .map_err(protocol)?
                        {
                            self.flush().await?;
                            return Ok(PushEnd::Closed);
                        }
                        n += 1;
                        if n < BATCH {
                            next = items.try_recv().ok();
                        }
                    }
                    self.flush().await?;
                }
                Wake::Stop => return Ok(PushEnd::Cancelled),
            }
        }
    }

    /// Send one item (the load generator's way in).
    pub(super) async fn send(&mut self, item: PlayerItem) -> Result<bool, ClientError> {
        let more = write_player_item(&mut self.session, item, &mut self.out).map_err(protocol)?;
        self.flush().await?;
        Ok(more)
    }

    /// End publishing or playback politely and close the socket.
    pub(super) async fn close(mut self) {
        let r = match self.role {
            Role::Publish => self.session.stop_publishing(),
            Role::Play => self.session.stop_playback(),
        };
        if let Ok(results) = r {
            for r in results {
                self.queue(r);
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let _ = self.flush().await;
            let _ = self.sock.shutdown().await;
        })
        .await;
    }
}
