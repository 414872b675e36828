//! An RTMP connection's input through the server's guard: the handshake,
//! then chunks carrying AMF0 commands and media, as a peer could send them.
//!
//! The fuzzer's bytes are a script. The handshake is either raw bytes or a
//! real client's; after it, each step is raw bytes (anything on the chunk
//! stream, including bytes that corrupt it) or a message of a real client
//! session (connect, publish or play with a fuzzed key, metadata, audio or
//! video with a fuzzed body and timestamp), so both the chunk layer and
//! what lies behind a valid request are reached. The server side answers
//! requests as the gateway does when it admits them; media of a publish
//! goes through the same demux as a live feed's.

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionResult, PublishRequestType, ServerSession,
    ServerSessionConfig, ServerSessionEvent, ServerSessionResult, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;

use super::{chunks, Input};
use crate::config::RtmpConfig;
use crate::media::Track;
use crate::server::rtmp::guard::{InputGuard, Phase};
use crate::server::url::parse_stream_key;
use crate::wire::demux::FlvDemux;

/// Steps of one script at most (each is bounded in size by the input).
const MAX_STEPS: usize = 256;

/// Run a handshake between a server and (when `client` is set) a real
/// client; `raw` goes to the server instead of the client's bytes when
/// the client is not used. The server's leftover bytes after completion.
fn handshake(raw: Option<&[u8]>) -> Option<Vec<u8>> {
    let mut server = Handshake::new(PeerType::Server);
    match raw {
        Some(bytes) => {
            for chunk in bytes.chunks(512) {
                match server.process_bytes(chunk) {
                    Ok(HandshakeProcessResult::InProgress { .. }) => {}
                    Ok(HandshakeProcessResult::Completed {
                        remaining_bytes, ..
                    }) => return Some(remaining_bytes),
                    Err(_) => return None,
                }
            }
            None
        }
        None => {
            let mut client = Handshake::new(PeerType::Client);
            let mut to_server = client.generate_outbound_p0_and_p1().ok()?;
            for _ in 0..4 {
                match server.process_bytes(&to_server).ok()? {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        match client.process_bytes(&response_bytes).ok()? {
                            HandshakeProcessResult::InProgress { response_bytes } => {
                                to_server = response_bytes
                            }
                            HandshakeProcessResult::Completed { response_bytes, .. } => {
                                to_server = response_bytes
                            }
                        }
                    }
                    HandshakeProcessResult::Completed {
                        remaining_bytes, ..
                    } => return Some(remaining_bytes),
                }
            }
            None
        }
    }
}

struct Server {
    session: ServerSession,
    guard: InputGuard,
    phase: Phase,
    limits: RtmpConfig,
    demux: FlvDemux,
    /// Bytes for the client.
    out: Vec<u8>,
    /// Bytes the guard counts as held (partial messages).
    held: usize,
}

impl Server {
    /// Feed the server; `false` once the connection would be closed.
    fn input(&mut self, bytes: &[u8]) -> bool {
        let results = match self
            .guard
            .input(&mut self.session, self.phase, &self.limits, bytes)
        {
            Ok(r) => r,
            Err(_) => return false,
        };
        self.held = self.guard.held(self.phase);
        let bound = match self.phase {
            Phase::Publishing => 0,
            _ => self.limits.max_request_bytes,
        };
        assert!(
            self.held <= bound,
            "held {} past its bound {bound}",
            self.held
        );
        self.results(results)
    }

    fn results(&mut self, results: Vec<ServerSessionResult>) -> bool {
        for r in results {
            match r {
                ServerSessionResult::OutboundResponse(p) => self.out.extend_from_slice(&p.bytes),
                ServerSessionResult::RaisedEvent(ev) => {
                    if !self.event(ev) {
                        return false;
                    }
                }
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        true
    }

    fn accept(&mut self, request_id: u32) -> bool {
        match self.session.accept_request(request_id) {
            Ok(results) => self.results(results),
            Err(_) => false,
        }
    }

    /// What the connection task does with an event, minus admission
    /// (every well-formed request is admitted here).
    fn event(&mut self, ev: ServerSessionEvent) -> bool {
        match ev {
            ServerSessionEvent::ConnectionRequested { request_id, .. } => self.accept(request_id),
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => {
                if self.phase != Phase::Idle || parse_stream_key(&stream_key).is_err() {
                    return self
                        .session
                        .reject_request(request_id, "NetStream.Publish.BadName", "refused")
                        .is_ok_and(|r| self.results(r));
                }
                self.phase = Phase::Publishing;
                self.demux = FlvDemux::new();
                self.accept(request_id)
            }
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                stream_key,
                ..
            } => {
                if self.phase != Phase::Idle || parse_stream_key(&stream_key).is_err() {
                    return false;
                }
                self.phase = Phase::Playing;
                self.accept(request_id)
            }
            ServerSessionEvent::PublishStreamFinished { .. }
            | ServerSessionEvent::PlayStreamFinished { .. } => {
                self.phase = Phase::Idle;
                self.guard.idle_again();
                true
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => self.media(Track::Video, &data, timestamp.value),
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => self.media(Track::Audio, &data, timestamp.value),
            _ => true,
        }
    }

    fn media(&mut self, track: Track, data: &[u8], ts: u32) -> bool {
        if self.phase != Phase::Publishing {
            // The connection task ignores media it did not accept.
            return true;
        }
        // A tag that does not parse is dropped; the feed goes on.
        let _ = self.demux.tag(track, data, ts);
        true
    }
}

/// One script; see the module documentation.
pub fn rtmp_session(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let raw_handshake = flags & 1 == 1;
    let remaining = if raw_handshake {
        let n = usize::from(input.u16()) % 4096;
        handshake(Some(input.take(n)))
    } else {
        handshake(None)
    };
    let Some(remaining) = remaining else { return };
    let (session, initial) = match ServerSession::new(ServerSessionConfig::new()) {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut limits = RtmpConfig::default();
    if flags & 2 == 2 {
        // The smallest limits the configuration allows.
        limits.max_request_bytes = 4096;
        limits.max_message_bytes = 64 * 1024;
    }
    let mut server = Server {
        session,
        guard: InputGuard::new(),
        phase: Phase::Idle,
        limits,
        demux: FlvDemux::new(),
        out: Vec::new(),
        held: 0,
    };
    if !server.results(initial) || (!remaining.is_empty() && !server.input(&remaining)) {
        return;
    }
    let Ok((mut client, _)) = ClientSession::new(ClientSessionConfig::new()) else {
        return;
    };
    let mut client_ok = true;
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        // The server's answers reach the client (which may then send).
        let answers = std::mem::take(&mut server.out);
        let mut to_server = Vec::new();
        if client_ok && !answers.is_empty() {
            match client.handle_input(&answers) {
                Ok(results) => collect(results, &mut to_server),
                Err(_) => client_ok = false,
            }
        }
        let step = input.u8();
        let seed = input.u8();
        let sent: Option<Result<Vec<ClientSessionResult>, _>> = match step % 10 {
            0..=2 => {
                to_server.extend_from_slice(input.long());
                None
            }
            3 => Some(
                client
                    .request_connection(text(input.short()))
                    .map(|r| vec![r]),
            ),
            4 => Some(
                client
                    .request_publishing(text(input.short()), PublishRequestType::Live)
                    .map(|r| vec![r]),
            ),
            5 => Some(
                client
                    .request_playback(text(input.short()))
                    .map(|r| vec![r]),
            ),
            6 => {
                let mut m = StreamMetadata::new();
                m.video_width = Some(input.u32());
                m.encoder = Some(text(input.short()));
                Some(client.publish_metadata(&m).map(|r| vec![r]))
            }
            7 => {
                let ts = RtmpTimestamp::new(input.u32());
                Some(
                    client
                        .publish_video_data(Bytes::copy_from_slice(input.long()), ts, false)
                        .map(|r| vec![r]),
                )
            }
            8 => {
                let ts = RtmpTimestamp::new(input.u32());
                Some(
                    client
                        .publish_audio_data(Bytes::copy_from_slice(input.long()), ts, false)
                        .map(|r| vec![r]),
                )
            }
            _ => Some(if seed & 1 == 0 {
                client.stop_publishing()
            } else {
                client.stop_playback()
            }),
        };
        if let Some(Ok(r)) = sent {
            collect(r, &mut to_server);
        }
        for chunk in chunks(&to_server, seed) {
            if !server.input(chunk) {
                return;
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn collect(results: Vec<ClientSessionResult>, out: &mut Vec<u8>) {
    for r in results {
        if let ClientSessionResult::OutboundResponse(p) = r {
            out.extend_from_slice(&p.bytes);
        }
    }
}
