//! RTMP output: turn the engine's player items (FLV bodies muxed once per
//! source) into RTMP chunks. The same code serves a player session on the
//! server side ([`ServerPlayback`]) and a push output or load-generating
//! publisher on the client side (rml_rtmp `ClientSession`), through
//! [`RtmpMediaSink`].
//!
//! A player's audio and video messages are chunked here ([`MediaChunks`])
//! rather than by rml_rtmp: the chunk headers are written between slices
//! of the payload the engine shares among all players, and the whole goes
//! out in vectored writes, so a player costs no copy of the media in user
//! space and no buffer the size of what it is sent (rml_rtmp serializes
//! every message into a new buffer per player). Control, command and
//! metadata messages stay with rml_rtmp's session.

use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionError, ClientSessionResult, ServerSession, ServerSessionError,
    StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::engine::PlayerItem;
use crate::media::FlvBody;

/// Items serialized per write, at most: bounds one write's size.
const BATCH: usize = 64;

/// Bytes serialized per write, at most (one message may overshoot it):
/// a joining player's catch-up (a whole cached GOP) goes out in writes of
/// this size instead of one buffer as large as the GOP.
pub const BATCH_BYTES: usize = 64 * 1024;

/// What a connection's output buffer keeps between writes. A buffer that
/// grew past it for a burst (a keyframe, a catch-up) is given back after
/// the write, so an idle or steady player does not hold a GOP-sized
/// allocation for the rest of its life.
pub const OUT_RETAIN: usize = 32 * 1024;

/// Empty `out` after its bytes were written, giving back what a burst grew.
pub fn recycle_out(out: &mut Vec<u8>) {
    out.clear();
    if out.capacity() > OUT_RETAIN {
        out.shrink_to(OUT_RETAIN);
    }
}

/// Where RTMP media messages are serialized to (appended to `out`).
pub trait RtmpMediaSink {
    type Error;
    /// Bytes serialized and not yet written (bounds a batch).
    fn queued(&self, out: &[u8]) -> usize {
        out.len()
    }
    fn metadata(&mut self, m: &StreamMetadata, out: &mut Vec<u8>) -> Result<(), Self::Error>;
    fn video(&mut self, ts: u32, body: FlvBody, out: &mut Vec<u8>) -> Result<(), Self::Error>;
    fn audio(&mut self, ts: u32, body: FlvBody, out: &mut Vec<u8>) -> Result<(), Self::Error>;
    /// The stream ended (the engine closed the player).
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Self::Error>;
}

/// Chunk stream ids of the media messages chunked by [`MediaChunks`]
/// (rml_rtmp's own messages use 2 to 6).
const VIDEO_CSID: u8 = 7;
const AUDIO_CSID: u8 = 8;
/// RTMP message types.
const TYPE_AUDIO: u8 = 8;
const TYPE_VIDEO: u8 = 9;
/// A timestamp at or above this goes in the extended timestamp field.
const EXTENDED_TS: u32 = 0x00FF_FFFF;
/// Slices per vectored write, at most.
const IOV: usize = 64;

/// One player's RTMP media messages as the segments to write, in order:
/// chunk headers (small, from one shared buffer) and slices of the shared
/// payloads. Each message starts with a full (type 0) chunk header, so the
/// chunk streams need no state shared with rml_rtmp's serializer; every
/// continuation chunk gets a type 3 header (with the extended timestamp
/// repeated, as RTMP requires, when the timestamp needs one).
#[derive(Debug)]
pub struct MediaChunks {
    chunk_size: usize,
    heads: BytesMut,
    segments: Vec<Bytes>,
    queued: usize,
}

impl MediaChunks {
    /// `chunk_size` must be the outbound chunk size the session announced.
    pub fn new(chunk_size: u32) -> Self {
        Self {
            chunk_size: (chunk_size as usize).max(128),
            heads: BytesMut::new(),
            segments: Vec::new(),
            queued: 0,
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Queue bytes serialized elsewhere (rml_rtmp), keeping their order
    /// among the media messages.
    pub fn raw(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.push(Bytes::copy_from_slice(bytes));
        }
    }

    /// Queue one audio or video message of message stream `stream_id`:
    /// the body's head is written beside the first chunk header, its
    /// payload goes out as slices of the shared buffer.
    pub fn message(&mut self, type_id: u8, stream_id: u32, ts: u32, body: &FlvBody) {
        let csid = if type_id == TYPE_VIDEO {
            VIDEO_CSID
        } else {
            AUDIO_CSID
        };
        let extended = ts >= EXTENDED_TS;
        let head = body.head();
        let payload = body.payload();
        let len = body.len().min(0x00FF_FFFF);
        self.head_room();
        self.heads.put_u8(csid); // format 0, one-byte basic header
        self.heads.put_uint(u64::from(ts.min(EXTENDED_TS)), 3);
        self.heads.put_uint(len as u64, 3);
        self.heads.put_u8(type_id);
        self.heads.put_u32_le(stream_id);
        if extended {
            self.heads.put_u32(ts);
        }
        // The head (≤ 8 bytes) always fits the first chunk (≥ 128 bytes).
        let h = head.len().min(len);
        self.heads.put_slice(&head[..h]);
        let first = self.heads.split().freeze();
        self.push(first);
        // `at` counts message bytes; payload byte `i` is message byte `h + i`.
        let mut at = 0;
        while at < len {
            if at > 0 {
                self.head_room();
                self.heads.put_u8(0xC0 | csid); // format 3
                if extended {
                    self.heads.put_u32(ts);
                }
                let cont = self.heads.split().freeze();
                self.push(cont);
            }
            let end = (at + self.chunk_size).min(len);
            let (from, to) = (at.saturating_sub(h), end.saturating_sub(h));
            if to > from {
                self.push(payload.slice(from..to));
            }
            at = end;
        }
    }

    fn head_room(&mut self) {
        // A first chunk's header (12), extended timestamp (4), FLV head (8).
        if self.heads.capacity() < 24 {
            self.heads.reserve(1024);
        }
    }

    fn push(&mut self, b: Bytes) {
        self.queued += b.len();
        self.segments.push(b);
    }

    /// Write every queued segment (vectored, partial writes resumed).
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        let mut i = 0;
        while i < self.segments.len() {
            let mut n = {
                let mut io = [IoSlice::new(&[]); IOV];
                let k = (self.segments.len() - i).min(IOV);
                for (slot, seg) in io.iter_mut().zip(&self.segments[i..i + k]) {
                    *slot = IoSlice::new(seg);
                }
                w.write_vectored(&io[..k]).await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 && i < self.segments.len() {
                let seg = &mut self.segments[i];
                if n >= seg.len() {
                    n -= seg.len();
                    i += 1;
                } else {
                    seg.advance(n);
                    n = 0;
                }
            }
        }
        self.segments.clear();
        self.queued = 0;
        if self.segments.capacity() > 4 * IOV {
            self.segments.shrink_to(IOV);
        }
        Ok(())
    }

    /// The queued bytes in one buffer (tests).
    pub fn to_vec(&self) -> Vec<u8> {
        self.segments
            .iter()
            .flat_map(|b| b.iter().copied())
            .collect()
    }
}

/// A playing stream of a server session: media into [`MediaChunks`],
/// metadata and the end of the stream through rml_rtmp (queued in order).
pub struct ServerPlayback<'a> {
    pub session: &'a mut ServerSession,
    pub stream_id: u32,
    pub chunks: &'a mut MediaChunks,
}

impl RtmpMediaSink for ServerPlayback<'_> {
    type Error = ServerSessionError;

    fn queued(&self, out: &[u8]) -> usize {
        out.len() + self.chunks.queued()
    }

    fn metadata(&mut self, m: &StreamMetadata, _out: &mut Vec<u8>) -> Result<(), Self::Error> {
        let p = self.session.send_metadata(self.stream_id, m)?;
        self.chunks.raw(&p.bytes);
        Ok(())
    }

    fn video(&mut self, ts: u32, body: FlvBody, _out: &mut Vec<u8>) -> Result<(), Self::Error> {
        self.chunks.message(TYPE_VIDEO, self.stream_id, ts, &body);
        Ok(())
    }

    fn audio(&mut self, ts: u32, body: FlvBody, _out: &mut Vec<u8>) -> Result<(), Self::Error> {
        self.chunks.message(TYPE_AUDIO, self.stream_id, ts, &body);
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<u8>) -> Result<(), Self::Error> {
        let p = self.session.finish_playing(self.stream_id)?;
        self.chunks.raw(&p.bytes);
        Ok(())
    }
}

fn client_out(r: ClientSessionResult, out: &mut Vec<u8>) {
    if let ClientSessionResult::OutboundResponse(p) = r {
        out.extend_from_slice(&p.bytes);
    }
}

/// A publishing client session (after `PublishRequestAccepted`).
impl RtmpMediaSink for ClientSession {
    type Error = ClientSessionError;

    fn metadata(&mut self, m: &StreamMetadata, out: &mut Vec<u8>) -> Result<(), Self::Error> {
        client_out(self.publish_metadata(m)?, out);
        Ok(())
    }

    fn video(&mut self, ts: u32, body: FlvBody, out: &mut Vec<u8>) -> Result<(), Self::Error> {
        client_out(
            self.publish_video_data(body.to_bytes(), RtmpTimestamp::new(ts), false)?,
            out,
        );
        Ok(())
    }

    fn audio(&mut self, ts: u32, body: FlvBody, out: &mut Vec<u8>) -> Result<(), Self::Error> {
        client_out(
            self.publish_audio_data(body.to_bytes(), RtmpTimestamp::new(ts), false)?,
            out,
        );
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Self::Error> {
        for r in self.stop_publishing()? {
            client_out(r, out);
        }
        Ok(())
    }
}

/// Serialize one item into `out`. Returns false when it was the engine's
/// `Close` (the stream is then finished). MPEG-TS items are ignored.
pub fn write_player_item<S: RtmpMediaSink>(
    sink: &mut S,
    item: PlayerItem,
    out: &mut Vec<u8>,
) -> Result<bool, S::Error> {
    match item {
        PlayerItem::Metadata(m) => sink.metadata(&m, out)?,
        PlayerItem::Video { ts, body, .. } => sink.video(ts, body, out)?,
        PlayerItem::Audio { ts, body } => sink.audio(ts, body, out)?,
        PlayerItem::Ts { .. } => {}
        PlayerItem::Close { reason } => {
            tracing::info!(reason, "ending RTMP stream");
            sink.finish(out)?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// Serialize `first` and whatever else is already queued into `out`, up
/// to [`BATCH`] items or [`BATCH_BYTES`] bytes; the rest stays queued for
/// the next write.
/// Returns false when the engine closed this player (source vacant too
/// long); the stream is then finished for the player.
pub fn write_player_items<S: RtmpMediaSink>(
    sink: &mut S,
    first: PlayerItem,
    items: &mut mpsc::Receiver<PlayerItem>,
    out: &mut Vec<u8>,
) -> Result<bool, S::Error> {
    let mut next = Some(first);
    let mut n = 0;
    while let Some(item) = next.take() {
        if !write_player_item(sink, item, out)? {
            return Ok(false);
        }
        n += 1;
        if n < BATCH && sink.queued(out) < BATCH_BYTES {
            next = items.try_recv().ok();
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use rml_rtmp::chunk_io::ChunkDeserializer;

    use super::*;

    fn body(len: usize, seed: u8) -> FlvBody {
        payload(len, seed).into()
    }

    fn payload(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// A frame's FLV body: a head of 5 (H.264), 8 (H.265) or 2 (AAC) bytes
    /// before the shared payload.
    fn frame_body(codec: crate::media::Codec, len: usize, seed: u8) -> FlvBody {
        crate::media::flv_frame(&crate::media::Frame {
            track: codec.track(),
            codec,
            dts: 0,
            pts: 40,
            keyframe: seed.is_multiple_of(2),
            payload: payload(len, seed),
        })
    }

    /// Parse what [`MediaChunks`] queued with rml_rtmp's own deserializer
    /// (what the other end of a connection does).
    fn parse(chunks: &MediaChunks, chunk_size: usize) -> Vec<(u8, u32, u32, Bytes)> {
        let mut d = ChunkDeserializer::new();
        d.set_max_chunk_size(chunk_size).unwrap();
        let wire = chunks.to_vec();
        let mut got = Vec::new();
        let mut input: &[u8] = &wire;
        while let Some(m) = d.get_next_message(input).unwrap() {
            got.push((m.type_id, m.message_stream_id, m.timestamp.value, m.data));
            input = &[];
        }
        got
    }

    #[test]
    fn media_messages_chunk_and_parse_back() {
        let mut c = MediaChunks::new(4096);
        let sent = [
            (TYPE_VIDEO, 1000, body(10_000, 1)),
            (TYPE_AUDIO, 1010, body(300, 2)),
            (TYPE_VIDEO, 1033, body(4096, 3)),
            (TYPE_VIDEO, 1066, body(4097, 4)),
            (TYPE_AUDIO, 1070, Bytes::new().into()),
            // Past 4.6 hours: the extended timestamp, repeated in every
            // continuation chunk.
            (TYPE_VIDEO, 0x0100_0000, body(9_000, 5)),
            (TYPE_AUDIO, EXTENDED_TS, body(50, 6)),
        ];
        for (t, ts, b) in &sent {
            c.message(*t, 1, *ts, b);
        }
        c.raw(&[]);
        let total: usize = sent.iter().map(|s| s.2.len()).sum();
        assert!(c.queued() > total);
        let got = parse(&c, 4096);
        assert_eq!(got.len(), sent.len());
        for ((t, ts, b), (gt, sid, gts, gb)) in sent.iter().zip(&got) {
            assert_eq!((t, ts, 1u32), (gt, gts, *sid));
            assert_eq!(b.to_bytes(), gb);
        }
    }

    #[test]
    fn bodies_with_a_head_chunk_and_parse_back_at_every_boundary() {
        use crate::media::Codec;
        for chunk in [128usize, 4096] {
            let mut c = MediaChunks::new(chunk as u32);
            let mut sent = Vec::new();
            let mut ts = 0u32;
            for codec in [Codec::H264, Codec::H265, Codec::Aac] {
                // Around one and two chunks, counting the head.
                for len in [
                    0,
                    1,
                    chunk - 9,
                    chunk - 8,
                    chunk - 5,
                    chunk - 2,
                    chunk,
                    chunk + 1,
                ]
                .into_iter()
                .chain([2 * chunk - 8, 2 * chunk - 5, 2 * chunk + 3])
                {
                    let b = frame_body(codec, len, len as u8);
                    let t = if codec == Codec::Aac {
                        TYPE_AUDIO
                    } else {
                        TYPE_VIDEO
                    };
                    c.message(t, 1, ts, &b);
                    sent.push((t, ts, b.to_bytes()));
                    ts += 33;
                }
            }
            let got = parse(&c, chunk);
            assert_eq!(got.len(), sent.len(), "chunk size {chunk}");
            for ((t, ts, b), (gt, _, gts, gb)) in sent.iter().zip(&got) {
                assert_eq!((t, ts), (gt, gts));
                assert_eq!(b, gb, "chunk size {chunk}, {} bytes", b.len());
            }
        }
    }

    #[test]
    fn payloads_are_shared_not_copied() {
        let mut c = MediaChunks::new(4096);
        let b = frame_body(crate::media::Codec::H264, 10_000, 9);
        c.message(TYPE_VIDEO, 1, 0, &b);
        // header and head, 4091, header, 4096, header, 1813: payload slices
        // point into the frame's own payload.
        let p = b.payload();
        let slices: Vec<&Bytes> = c.segments.iter().filter(|s| s.len() > 17).collect();
        assert_eq!(slices.len(), 3);
        assert_eq!(slices[0].as_ptr(), p.as_ptr());
        assert_eq!(slices[1].as_ptr(), p[4091..].as_ptr());
        assert_eq!(slices[2].as_ptr(), p[8187..].as_ptr());
    }

    #[tokio::test]
    async fn vectored_writes_resume_after_partial_writes() {
        // A small pipe: the writer is blocked until the reader drains it,
        // so writes come back partial.
        let (mut tx, mut rx) = tokio::io::duplex(1000);
        let mut c = MediaChunks::new(128);
        for i in 0..20u32 {
            c.message(TYPE_VIDEO, 1, i * 33, &body(700 + i as usize * 13, i as u8));
        }
        let expect = c.to_vec();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut rx, &mut all)
                .await
                .unwrap();
            all
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), c.write_to(&mut tx))
            .await
            .expect("written within 10 s")
            .unwrap();
        assert!(c.is_empty());
        assert_eq!(c.queued(), 0);
        drop(tx);
        assert_eq!(reader.await.unwrap(), expect);
        let mut d = ChunkDeserializer::new();
        d.set_max_chunk_size(128).unwrap();
        let mut n = 0;
        let mut input: &[u8] = &expect;
        while let Some(m) = d.get_next_message(input).unwrap() {
            assert_eq!(m.timestamp.value, n * 33);
            n += 1;
            input = &[];
        }
        assert_eq!(n, 20);
    }
}
