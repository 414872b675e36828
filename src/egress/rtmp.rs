//! RTMP playback: turn the engine's player items (FLV bodies muxed once
//! per source) into RTMP chunks for one player session.

use rml_rtmp::sessions::{ServerSession, ServerSessionError};
use rml_rtmp::time::RtmpTimestamp;
use tokio::sync::mpsc;

use crate::engine::PlayerItem;

/// Items serialized per write, at most: bounds one write's size.
const BATCH: usize = 64;

/// Serialize `first` and whatever else is already queued into `out`.
/// Returns false when the engine closed this player (source vacant too
/// long); the stream is then finished for the player.
pub fn write_player_items(
    session: &mut ServerSession,
    stream_id: u32,
    first: PlayerItem,
    items: &mut mpsc::Receiver<PlayerItem>,
    out: &mut Vec<u8>,
) -> Result<bool, ServerSessionError> {
    let mut next = Some(first);
    let mut n = 0;
    while let Some(item) = next.take() {
        match item {
            PlayerItem::Metadata(m) => {
                out.extend_from_slice(&session.send_metadata(stream_id, &m)?.bytes)
            }
            PlayerItem::Video { ts, body, .. } => out.extend_from_slice(
                &session
                    .send_video_data(stream_id, body, RtmpTimestamp::new(ts), false)?
                    .bytes,
            ),
            PlayerItem::Audio { ts, body } => out.extend_from_slice(
                &session
                    .send_audio_data(stream_id, body, RtmpTimestamp::new(ts), false)?
                    .bytes,
            ),
            PlayerItem::Ts { .. } => {}
            PlayerItem::Close { reason } => {
                tracing::info!(reason, "ending playback");
                out.extend_from_slice(&session.finish_playing(stream_id)?.bytes);
                return Ok(false);
            }
        }
        n += 1;
        if n < BATCH {
            next = items.try_recv().ok();
        }
    }
    Ok(true)
}
