//! RTMP output: turn the engine's player items (FLV bodies muxed once per
//! source) into RTMP chunks. The same code serves a player session on the
//! server side ([`ServerPlayback`], rml_rtmp `ServerSession`) and a push
//! output or load-generating publisher on the client side (rml_rtmp
//! `ClientSession`), through [`RtmpMediaSink`].

use bytes::Bytes;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionError, ClientSessionResult, ServerSession, ServerSessionError,
    StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::sync::mpsc;

use crate::engine::PlayerItem;

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
    fn metadata(&mut self, m: &StreamMetadata, out: &mut Vec<u8>) -> Result<(), Self::Error>;
    fn video(&mut self, ts: u32, body: Bytes, out: &mut Vec<u8>) -> Result<(), Self::Error>;
    fn audio(&mut self, ts: u32, body: Bytes, out: &mut Vec<u8>) -> Result<(), Self::Error>;
    /// The stream ended (the engine closed the player).
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Self::Error>;
}

/// A playing stream of a server session.
pub struct ServerPlayback<'a> {
    pub session: &'a mut ServerSession,
    pub stream_id: u32,
}

impl RtmpMediaSink for ServerPlayback<'_> {
    type Error = ServerSessionError;

    fn metadata(&mut self, m: &StreamMetadata, out: &mut Vec<u8>) -> Result<(), Self::Error> {
        out.extend_from_slice(&self.session.send_metadata(self.stream_id, m)?.bytes);
        Ok(())
    }

    fn video(&mut self, ts: u32, body: Bytes, out: &mut Vec<u8>) -> Result<(), Self::Error> {
        let p =
            self.session
                .send_video_data(self.stream_id, body, RtmpTimestamp::new(ts), false)?;
        out.extend_from_slice(&p.bytes);
        Ok(())
    }

    fn audio(&mut self, ts: u32, body: Bytes, out: &mut Vec<u8>) -> Result<(), Self::Error> {
        let p =
            self.session
                .send_audio_data(self.stream_id, body, RtmpTimestamp::new(ts), false)?;
        out.extend_from_slice(&p.bytes);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Self::Error> {
        out.extend_from_slice(&self.session.finish_playing(self.stream_id)?.bytes);
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

    fn video(&mut self, ts: u32, body: Bytes, out: &mut Vec<u8>) -> Result<(), Self::Error> {
        client_out(
            self.publish_video_data(body, RtmpTimestamp::new(ts), false)?,
            out,
        );
        Ok(())
    }

    fn audio(&mut self, ts: u32, body: Bytes, out: &mut Vec<u8>) -> Result<(), Self::Error> {
        client_out(
            self.publish_audio_data(body, RtmpTimestamp::new(ts), false)?,
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
        if n < BATCH && out.len() < BATCH_BYTES {
            next = items.try_recv().ok();
        }
    }
    Ok(true)
}
