//! What a source shows the API: each feed's view (its election state,
//! health, rates) and the source's (primary, switch state, last switch).
//! Read-only: nothing here changes the source.

use std::time::Instant;

use super::Source;
use crate::domain::FeedId;
use crate::election::FeedState;
use crate::engine::view::{FeedView, SourceView};

impl Source {
    pub(super) fn feed_view(&self, now: Instant, id: FeedId) -> Option<FeedView> {
        let states = self.election.feeds();
        self.describe(now, id, states.iter().find(|s| s.feed == id))
    }

    /// A feed's view, given its election state (if the election knows it).
    fn describe(&self, now: Instant, id: FeedId, state: Option<&FeedState>) -> Option<FeedView> {
        let slot = self.feeds.get(&id)?;
        let primary = self.switch.is_on_air(id);
        let (eligible, label) = match state {
            _ if primary => (true, "on_air"),
            Some(s) if s.draining => (false, "draining"),
            Some(s) if s.in_flap_penalty => (false, "flap_penalty"),
            Some(s) if s.eligible => (true, "standby"),
            _ if slot.last_media.is_none() || (!slot.healthy && slot.keyframes == 0) => {
                (false, "starting")
            }
            _ => (false, "unhealthy"),
        };
        Some(FeedView {
            feed_id: id.0,
            token_id: slot.meta.token_id.0,
            label: slot.meta.label.clone(),
            stream: self.key.stream.to_string(),
            source_id: self.key.source.to_string(),
            priority: slot.meta.priority.0,
            pinned: slot.meta.pinned,
            requested_priority: slot.meta.grant.as_ref().and_then(|g| g.requested),
            protocol: match slot.meta.protocol {
                crate::engine::Protocol::Rtmp => "rtmp",
                crate::engine::Protocol::Srt => "srt",
                crate::engine::Protocol::Pull => "pull",
            }
            .into(),
            peer: slot.meta.peer.to_string(),
            node: slot
                .origin
                .as_ref()
                .map_or_else(|| self.settings.node.clone(), |o| o.node.clone()),
            region: slot
                .origin
                .as_ref()
                .map_or_else(|| self.settings.region.clone(), |o| o.region.clone()),
            connected_at: slot.connected_at,
            state: label.into(),
            eligible,
            primary,
            video_kbps: slot.video_kbps(now),
            audio_kbps: slot.audio_kbps(now),
            frames: slot.frames,
            keyframes: slot.keyframes,
            keyframe_interval_ms: slot.keyframe_interval_ms,
            frame_interval_ms: slot.interval.interval_ms(),
            loss_window_ms: slot.loss.as_ref().map(|l| l.window(now).as_millis() as u64),
            srt: slot.srt.clone(),
            relay: slot
                .origin
                .as_ref()
                .and_then(|o| o.relay)
                .map(|r| r.as_str().to_owned()),
        })
    }

    pub fn view(&self, now: Instant) -> SourceView {
        // Best first by the election order, then feeds it does not know yet.
        let states = self.election.feeds();
        let mut feeds: Vec<FeedView> = states
            .iter()
            .filter_map(|st| self.describe(now, st.feed, Some(st)))
            .collect();
        for id in self.feeds.keys() {
            if !states.iter().any(|st| st.feed == *id) {
                feeds.extend(self.describe(now, *id, None));
            }
        }
        SourceView {
            source_id: self.key.source.to_string(),
            primary: self.switch.on_air_feed().map(|f| f.0),
            elected: self.election.primary().map(|f| f.0),
            state: self.switch.label().into(),
            players: self.players.len(),
            switches: self.switches,
            last_switch: self.last_switch.clone(),
            feeds,
        }
    }
}
