//! One source: its election, its switch and its fan-out.
//!
//! The story of a switch: an event (a feed joins, leaves, falls silent, is
//! reprioritized) goes to the election; each decision goes to the
//! [`Switch`] state machine (`super::switch`), which changes phase
//! (vacant, on air, switching) and says what to do; [`Source::carry_out`]
//! does it — take a feed off the air, cut at a cached keyframe (`cut`:
//! rebase, header, cache), let players go — and `emit` fans each frame of
//! the feed on air out to the players. Frames ([`Switch::frame`]) and the
//! timer ([`Switch::tick`]) drive the switch the same way. What the API
//! sees is in `source/views.rs`, feeds of other nodes in
//! `source/remote.rs`, token operations in `source/tokens.rs`.
//!
//! Invariants: at most one feed is on air; every frame players receive has
//! gone through the on-air feed's `Rebase` and the source's `OutputClock`,
//! so output timestamps are continuous and monotonic across switches; a new
//! feed's header (metadata, codec configurations) reaches players before
//! its first frame; a planned switch keeps the old feed on air until the
//! new one's keyframe (make-before-break).

mod remote;
mod tokens;
mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::cause::SwitchCause;
use super::feed::FeedSlot;
use super::feed_players::FeedPlayers;
use super::loss::Silence;
use super::player::{Player, PlayerFormat, PlayerItem, Sent};
use super::switch::{Action, Cut, OnAir, Switch, SwitchParams, Target};
use super::view::{FeedView, SwitchRecord};
use super::{EngineSettings, FeedControl, FeedMedia, FeedMeta, SourceKey, WallClock};
use crate::domain::FeedId;
use crate::election::{Decision, Input, SourceElection, SwitchReason};
use crate::media::ts::mux::TsMuxer;
use crate::media::{self, Frame, OutputClock, Rebase, Track};
use crate::metrics::Metrics;

pub(super) struct Source {
    key: SourceKey,
    settings: Arc<EngineSettings>,
    metrics: Arc<Metrics>,
    election: SourceElection,
    feeds: HashMap<FeedId, FeedSlot>,
    /// Vacant, on air or switching: which feed players receive.
    switch: Switch,
    /// Wall-clock time as the engine last read it (switch records).
    wall: WallClock,
    clock: OutputClock,
    /// Metadata and codec configurations of the on-air feed, as FLV items.
    header: Vec<PlayerItem>,
    /// The MPEG-TS muxer shared by every TS player (stable PIDs and
    /// continuity counters across switches); created with the first one.
    ts: Option<TsMuxer>,
    players: Vec<Player>,
    /// Players of one feed each (cluster peers relaying it).
    feed_players: FeedPlayers,
    /// When the last frame went out (for switch gaps).
    last_emit: Option<Instant>,
    last_switch: Option<SwitchRecord>,
    switches: u64,
    /// What the engine is handling while the election decides (a feed
    /// silent, closed, reprioritized): the cause of a switch it decides.
    cause: Option<SwitchCause>,
    /// The feed last switched away from because it was silent, and when:
    /// media from it again within the failback hold is a false switch.
    lost_primary: Option<(FeedId, Instant)>,
}

/// An output frame as an FLV player item.
fn flv_item(out: &Frame) -> PlayerItem {
    let ts = out.dts as u32;
    match out.track {
        Track::Video => PlayerItem::Video {
            ts,
            body: media::flv_video_frame(out),
            keyframe: out.keyframe,
        },
        Track::Audio => PlayerItem::Audio {
            ts,
            body: media::flv_audio_frame(out),
        },
    }
}

fn reason_str(r: SwitchReason) -> &'static str {
    match r {
        SwitchReason::First => "first",
        SwitchReason::PrimaryLost => "primary_lost",
        SwitchReason::Better => "better",
        SwitchReason::Draining => "draining",
    }
}

impl Source {
    pub fn new(
        key: SourceKey,
        settings: Arc<EngineSettings>,
        metrics: Arc<Metrics>,
        wall: WallClock,
    ) -> Self {
        Self {
            switch: Switch::new(SwitchParams {
                failover_next_keyframe: settings.failover_next_keyframe,
                switch_deadline: settings.switch_deadline,
                vacant_hold: settings.vacant_hold,
            }),
            wall,
            election: SourceElection::new(settings.election.clone()),
            key,
            settings,
            metrics,
            feeds: HashMap::new(),
            clock: OutputClock::new(),
            header: Vec::new(),
            ts: None,
            players: Vec::new(),
            feed_players: FeedPlayers::default(),
            last_emit: None,
            last_switch: None,
            switches: 0,
            cause: None,
            lost_primary: None,
        }
    }

    /// The wall clock as the engine last read it.
    pub fn set_wall(&mut self, wall: WallClock) {
        self.wall = wall;
    }

    pub fn is_idle(&self) -> bool {
        self.feeds.is_empty() && self.players.is_empty() && self.feed_players.is_empty()
    }

    /// A cluster peer plays this node's feed `feed` itself (not the
    /// primary). Refused (the player is handed back) for an unknown feed or
    /// a remote one: relays are never chained.
    pub fn play_feed(&mut self, feed: FeedId, player: Player) -> Result<(), Player> {
        match self.feeds.get(&feed) {
            Some(slot) if !slot.is_remote() && FeedPlayers::format_ok(player.format) => {
                self.feed_players.join(feed, slot, player, &self.metrics);
                Ok(())
            }
            _ => Err(player),
        }
    }

    pub fn feed_joined(
        &mut self,
        now: Instant,
        meta: FeedMeta,
        control: mpsc::Sender<FeedControl>,
    ) {
        let id = meta.id;
        let priority = meta.priority;
        tracing::info!(stream = %self.key.stream, source = %self.key.source, feed = %id, token_id = %meta.token_id,
            priority = ?priority.0, pinned = meta.pinned, peer = %meta.peer, "feed joined");
        self.feeds.insert(
            id,
            FeedSlot::new(
                now,
                self.wall.at(now),
                meta,
                control,
                self.settings.gop_cache_max_bytes,
                self.settings.loss,
            ),
        );
        self.metrics.feeds.inc();
        self.settings.changes.notify_one();
        let d = self
            .election
            .handle_input(now, Input::Joined { feed: id, priority });
        self.apply(now, d);
    }

    pub fn feed_left(&mut self, now: Instant, feed: FeedId) {
        let Some(slot) = self.feeds.remove(&feed) else {
            return;
        };
        self.feed_players.feed_gone(feed, &self.metrics);
        if slot.is_remote() {
            tracing::info!(stream = %self.key.stream, source = %self.key.source, feed = %feed, "remote feed left");
        } else {
            self.metrics.feeds.dec();
            self.settings.changes.notify_one();
            tracing::info!(stream = %self.key.stream, source = %self.key.source, feed = %feed, "feed left");
        }
        self.with_cause(SwitchCause::Closed, |s| {
            let d = s.election.handle_input(now, Input::Left { feed });
            s.apply(now, d);
            s.on_air_lost(now, feed);
        });
    }

    /// Run `f` with `cause` as what the engine is handling (the cause of
    /// any switch the election decides meanwhile).
    pub(super) fn with_cause<T>(
        &mut self,
        cause: SwitchCause,
        f: impl FnOnce(&mut Self) -> T,
    ) -> T {
        let before = self.cause.replace(cause);
        let r = f(self);
        self.cause = before;
        r
    }

    /// The feed on air left or timed out while a planned switch away from
    /// it waits for the new feed's keyframe. The election already counts the
    /// new feed as primary, so it decides nothing: fail over now (unplanned)
    /// instead of freezing until that keyframe or the switch deadline.
    fn on_air_lost(&mut self, now: Instant, feed: FeedId) {
        if let Some(d) = self.switch.on_air_lost(feed) {
            // Lost before the planned switch completed: the cause is the
            // loss (the caller's), not the reason of the planned switch.
            self.apply(now, vec![d]);
        }
    }

    pub fn feed_media(&mut self, now: Instant, id: FeedId, media: FeedMedia) {
        if matches!(media, FeedMedia::Frame(_)) && self.lost_primary.is_some_and(|(f, _)| f == id) {
            self.note_comeback(now, id);
        }
        let on_air = self.switch.is_on_air(id);
        let Some(slot) = self.feeds.get_mut(&id) else {
            return;
        };
        match media {
            FeedMedia::Config(cfg) => {
                match cfg.track {
                    Track::Video => slot.video_cfg = Some(cfg),
                    Track::Audio => slot.audio_cfg = Some(cfg),
                }
                self.feed_players.header_changed(id, slot);
                if on_air {
                    self.refresh_header(false);
                }
            }
            FeedMedia::SrtStats(stats) => {
                if let Some(prev) = &slot.srt {
                    let d = |now: u64, before: u64| now.saturating_sub(before);
                    self.metrics
                        .srt_rx_packets
                        .inc_by(d(stats.rx_packets, prev.rx_packets));
                    self.metrics
                        .srt_rx_loss
                        .inc_by(d(stats.rx_loss_packets, prev.rx_loss_packets));
                    self.metrics.srt_rx_retransmitted.inc_by(d(
                        stats.rx_retransmitted_packets,
                        prev.rx_retransmitted_packets,
                    ));
                }
                slot.srt = Some(stats);
            }
            FeedMedia::Metadata(m) => {
                slot.metadata = Some(m.clone());
                self.feed_players.header_changed(id, slot);
                if on_air {
                    self.rebuild_header();
                    // Players already past the header get the new metadata now.
                    let item = [PlayerItem::Metadata(m)];
                    for p in self
                        .players
                        .iter_mut()
                        .filter(|p| p.format == PlayerFormat::Flv)
                    {
                        p.send_header(&item);
                    }
                }
            }
            FeedMedia::Frame(frame) => {
                self.metrics.bytes_in.inc_by(frame.payload.len() as u64);
                // A remote feed's eligibility comes from its node, not from
                // the media of its mirror.
                let became_healthy = slot.observe(now, &frame) && !slot.is_remote();
                self.feed_players.frame(id, slot, &frame, &self.metrics);
                let cut_point = frame.track == Track::Video && frame.keyframe
                    || (frame.track == Track::Audio && !slot.has_video());
                let switches_before = self.switches;
                if became_healthy {
                    self.health_changed(now, id, true);
                }
                if self.switches != switches_before && self.switch.is_on_air(id) {
                    // Just cut to this feed from its cache, which holds this frame.
                    return;
                }
                if let Some(cut) = self.switch.frame(id, cut_point) {
                    self.cut(now, cut);
                    return;
                }
                if self.switch.is_on_air(id) {
                    self.emit(now, &frame);
                }
            }
        }
    }

    fn health_changed(&mut self, now: Instant, feed: FeedId, healthy: bool) {
        self.settings.changes.notify_one();
        let d = self
            .election
            .handle_input(now, Input::Health { feed, healthy });
        self.apply(now, d);
    }

    /// Apply the election's decisions: each one through the switch, which
    /// says what to do.
    fn apply(&mut self, now: Instant, decisions: Vec<Decision>) {
        for d in decisions {
            let target = match &d {
                Decision::Switch { to, .. } => self.target(*to),
                Decision::Vacate { .. } => Target::default(),
            };
            let watched = !self.players.is_empty()
                || self
                    .switch
                    .on_air_feed()
                    .is_some_and(|c| self.feed_players.watching(c));
            let wall = self.wall.at(now);
            let actions = self
                .switch
                .decide(now, wall, d, self.cause, watched, target);
            self.carry_out(now, actions);
        }
    }

    /// Carry out what the switch decided.
    fn carry_out(&mut self, now: Instant, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Decided {
                    from,
                    reason,
                    planned,
                    cause,
                } => {
                    self.metrics
                        .switches
                        .with_label_values(&[
                            reason_str(reason),
                            if planned { "true" } else { "false" },
                            cause.label(),
                        ])
                        .inc();
                    self.lost_primary = from.filter(|_| cause.is_silence()).map(|f| (f, now));
                }
                Action::GoOffAir { feed } => self.went_off_air(feed),
                Action::CutAtCache(cut) => self.cut(now, cut),
                Action::WaitForKeyframe { to } => {
                    tracing::debug!(stream = %self.key.stream, source = %self.key.source, to = %to,
                        "planned switch: the feed on air stays until the new one's keyframe");
                }
                Action::DeadlinePassed { to } => {
                    tracing::warn!(stream = %self.key.stream, to = %to, "planned switch deadline passed; cutting at the cached keyframe");
                }
                Action::Vacated { from, cause } => {
                    let detail = cause.map_or_else(|| "vacant".to_owned(), SwitchCause::detail);
                    tracing::warn!(stream = %self.key.stream, source = %self.key.source, from = %from,
                        detail = %detail, "source vacant: no eligible feed");
                    let wall = self.wall.at(now);
                    self.record(SwitchRecord {
                        at: wall,
                        decided_at: wall,
                        from: Some(from.0),
                        to: None,
                        reason: "vacant".to_owned(),
                        detail,
                        planned: false,
                        gap_ms: None,
                        added_latency_ms: None,
                    });
                }
                Action::ReleasePlayers => {
                    let n = self.players.len();
                    for p in &mut self.players {
                        p.close("source vacant");
                    }
                    self.players.clear();
                    self.metrics.players.sub(n as i64);
                }
            }
        }
    }

    /// What `to` holds for a switch to it.
    fn target(&self, to: FeedId) -> Target {
        let Some(slot) = self.feeds.get(&to) else {
            return Target::default();
        };
        Target {
            cached: slot.gop.has_keyframe() || (!slot.has_video() && !slot.gop.is_empty()),
            empty: slot.gop.is_empty(),
            fresh_keyframe: self.cached_keyframe_fresh(to),
        }
    }

    /// May a planned switch to `to` cut at its cached keyframe now? Only
    /// when configured and the keyframe is recent enough (see
    /// `switch.planned_max_added_latency_ms`).
    fn cached_keyframe_fresh(&self, to: FeedId) -> bool {
        let max = self.settings.planned_max_added_latency_ms;
        if max <= 0 {
            return false;
        }
        self.feeds
            .get(&to)
            .is_some_and(|slot| match (slot.gop.frames().next(), slot.last_dts) {
                (Some(first), Some(last)) => first.keyframe && last - first.dts <= max,
                _ => false,
            })
    }

    /// `feed` left the air: clear its gauge; disconnect it if it was
    /// waiting for that.
    fn went_off_air(&mut self, feed: Option<FeedId>) {
        self.metrics
            .active_priority
            .remove_label_values(&[self.key.stream.as_str(), self.key.source.as_str()])
            .ok();
        if let Some(slot) = feed.and_then(|f| self.feeds.get(&f)) {
            if let Some(reason) = &slot.disconnect_after_cut {
                slot.disconnect(reason);
            }
        }
    }

    /// Cut to `cut.to` at its cached keyframe: header first, then the
    /// cached frames (just the keyframe for a live cut), all rebased so the
    /// output continues one frame interval after the last emitted frame.
    fn cut(&mut self, now: Instant, cut: Cut) {
        let Some(slot) = self.feeds.get(&cut.to) else {
            return;
        };
        let frames: Vec<Frame> = slot.gop.frames().cloned().collect();
        let Some(first) = frames.first() else {
            // Nothing to start from yet: wait for a keyframe. A feed on air
            // that is gone goes off the air now.
            if self
                .switch
                .on_air_feed()
                .is_some_and(|f| !self.feeds.contains_key(&f))
            {
                let off = self.switch.drop_on_air(cut.from);
                self.carry_out(now, vec![off]);
            }
            self.switch.wait(cut);
            return;
        };
        let gap = slot.interval.interval_ms().max(1);
        let added_latency = slot.last_dts.map(|l| l - first.dts).filter(|l| *l > 0);
        let priority = slot.meta.priority;
        let rebase = Rebase::new(first.dts, self.clock.next_base(gap));
        let audio_floor = self.clock.last_track_dts(Track::Audio);
        let replaced = self.switch.put_on_air(OnAir {
            feed: cut.to,
            rebase,
            audio_floor,
        });
        let old = replaced.or(cut.from);
        self.went_off_air(old);
        self.refresh_header(true);
        let gap_ms = if cut.planned {
            None
        } else {
            self.last_emit
                .map(|t| now.duration_since(t).as_secs_f64() * 1000.0)
        };
        if let Some(g) = gap_ms {
            self.metrics.switch_gap.observe(g / 1000.0);
        }
        for f in &frames {
            self.emit(now, f);
        }
        self.metrics
            .active_priority
            .with_label_values(&[self.key.stream.as_str(), self.key.source.as_str()])
            .set(f64::from(priority.rank()));
        let detail = cut.cause.detail();
        tracing::info!(stream = %self.key.stream, source = %self.key.source, from = ?old.map(|f| f.to_string()),
            to = %cut.to, reason = reason_str(cut.reason), detail = %detail, planned = cut.planned, gap_ms = ?gap_ms,
            cached_frames = frames.len(), "switched");
        self.record(SwitchRecord {
            at: self.wall.at(now),
            decided_at: cut.decided,
            from: old.map(|f| f.0),
            to: Some(cut.to.0),
            reason: reason_str(cut.reason).to_owned(),
            detail,
            planned: cut.planned,
            gap_ms,
            added_latency_ms: added_latency,
        });
    }

    fn record(&mut self, record: SwitchRecord) {
        self.switches += 1;
        self.last_switch = Some(record);
    }

    /// Rebuild the on-air feed's header and send it to synced FLV players;
    /// keep the TS muxer on the same configuration.
    fn refresh_header(&mut self, switched: bool) {
        self.rebuild_header();
        let header = self.header.clone();
        for p in self
            .players
            .iter_mut()
            .filter(|p| p.format == PlayerFormat::Flv)
        {
            p.send_header(&header);
        }
        self.ts_follow_on_air(switched);
    }

    fn rebuild_header(&mut self) {
        self.header.clear();
        let Some(on) = self.switch.on_air() else {
            return;
        };
        let Some(slot) = self.feeds.get(&on.feed) else {
            return;
        };
        let ts = self.clock.last_dts().unwrap_or(on.rebase.out_base).max(0) as u32;
        if let Some(m) = &slot.metadata {
            self.header.push(PlayerItem::Metadata(m.clone()));
        }
        if let Some(v) = &slot.video_cfg {
            self.header.push(PlayerItem::Video {
                ts,
                body: media::flv_video_config(v).into(),
                keyframe: true,
            });
        }
        if let Some(a) = &slot.audio_cfg {
            self.header.push(PlayerItem::Audio {
                ts,
                body: media::flv_audio_config(a).into(),
            });
        }
    }

    /// Rebase, mux once, fan out.
    fn emit(&mut self, now: Instant, frame: &Frame) {
        let Some(on) = self.switch.on_air_mut() else {
            return;
        };
        if frame.track == Track::Video {
            let gap = self
                .feeds
                .get(&on.feed)
                .map_or(1, |s| s.interval.interval_ms())
                .max(1);
            let last = self.clock.last_track_dts(Track::Video);
            if frame.dts < on.rebase.in_base
                || last.is_some_and(|l| on.rebase.map(frame.dts) < l.saturating_sub(gap))
            {
                // The feed's own clock stepped back (an encoder or a
                // playout that restarted its timeline on the same
                // connection): continue the output after what went out,
                // as at a cut, instead of dropping its frames until its
                // clock is past the cut point again.
                on.rebase = Rebase::new(frame.dts, self.clock.next_base(gap));
                on.audio_floor = self.clock.last_track_dts(Track::Audio);
            }
        }
        if frame.dts < on.rebase.in_base {
            // Belongs before the cut point (e.g. audio ahead of the keyframe).
            return;
        }
        let rebased = on.rebase.apply(frame);
        if frame.track == Track::Audio {
            if let Some(floor) = on.audio_floor {
                if rebased.dts < floor {
                    // The previous feed's audio already covered this time.
                    return;
                }
                on.audio_floor = None;
            }
        }
        let out = self.clock.enforce_monotonic(rebased);
        self.clock.observe(&out);
        self.last_emit = Some(now);
        let audio_only = self
            .header
            .iter()
            .all(|h| !matches!(h, PlayerItem::Video { .. }));
        let sync_point = match out.track {
            Track::Video => out.keyframe,
            Track::Audio => audio_only,
        };
        let want_flv = self.players.iter().any(|p| p.format == PlayerFormat::Flv);
        let want_ts = self.players.iter().any(|p| p.format == PlayerFormat::Ts);
        let flv_item = want_flv.then(|| flv_item(&out));
        let ts_item = if want_ts {
            self.ts_follow_on_air(false);
            let data = self.ts.as_mut().map(|m| m.mux(&out)).unwrap_or_default();
            (!data.is_empty()).then_some(PlayerItem::Ts {
                data,
                keyframe: sync_point,
            })
        } else {
            None
        };
        let mut bytes = 0u64;
        let mut skipped = 0u64;
        for p in &mut self.players {
            let (item, header): (&PlayerItem, &[PlayerItem]) = match (p.format, &flv_item, &ts_item)
            {
                (PlayerFormat::Flv, Some(i), _) => (i, &self.header),
                (PlayerFormat::Ts, _, Some(i)) => (i, &[]),
                _ => continue,
            };
            match p.deliver(header, item, sync_point) {
                Sent::Ok => bytes += item.payload_len() as u64,
                Sent::Skipped => skipped += 1,
            }
        }
        self.metrics.bytes_out.inc_by(bytes);
        if skipped > 0 {
            self.metrics.player_skips.inc_by(skipped);
        }
        let before = self.players.len();
        self.players.retain(|p| !p.closed);
        let gone = before - self.players.len();
        if gone > 0 {
            self.metrics.players.sub(gone as i64);
        }
    }

    /// An RTMP (FLV) player.
    #[cfg(test)]
    pub fn player_joined(&mut self, now: Instant, id: u64, tx: mpsc::Sender<PlayerItem>) {
        self.player_joined_as(now, id, tx, PlayerFormat::Flv);
    }

    pub fn player_joined_as(
        &mut self,
        now: Instant,
        id: u64,
        tx: mpsc::Sender<PlayerItem>,
        format: PlayerFormat,
    ) {
        let mut player = Player::new(id, tx, format);
        self.metrics.players.inc();
        if let Some(on) = self.switch.on_air() {
            if let Some(slot) = self.feeds.get(&on.feed) {
                // Start at once from the on-air feed's cached GOP, with the
                // timestamps those frames had when they went out.
                // Only what already went out: never past the last output of
                // its track (cached audio stamped before a step back of the
                // feed's clock would map beyond it).
                let mut clock = OutputClock::new();
                let live = &self.clock;
                let frames: Vec<Frame> = slot
                    .gop
                    .frames()
                    .filter(|f| f.dts >= on.rebase.in_base)
                    .filter(|f| {
                        live.last_track_dts(f.track)
                            .is_some_and(|l| on.rebase.map(f.dts) <= l)
                    })
                    .map(|f| {
                        let out = clock.enforce_monotonic(on.rebase.apply(f));
                        clock.observe(&out);
                        out
                    })
                    .collect();
                if !frames.is_empty() {
                    match format {
                        PlayerFormat::Flv => {
                            let items: Vec<PlayerItem> = frames.iter().map(flv_item).collect();
                            player.start(&self.header, &items);
                        }
                        PlayerFormat::Ts => {
                            // A private muxer for the catch-up (the shared one's
                            // counters must not move for other players) whose
                            // counters lead into the shared one's: create that
                            // now so the catch-up knows where it goes on.
                            let configs: Vec<&media::CodecConfig> =
                                slot.video_cfg.iter().chain(slot.audio_cfg.iter()).collect();
                            let shared = self.ts.get_or_insert_with(|| {
                                let mut m = TsMuxer::new();
                                for cfg in &configs {
                                    m.set_config(cfg);
                                }
                                m
                            });
                            let item = PlayerItem::Ts {
                                data: shared.catch_up(&configs, &frames),
                                keyframe: true,
                            };
                            player.start(&[], &[item]);
                        }
                    }
                }
            }
        } else {
            self.switch.player_joined(now);
        }
        self.players.push(player);
    }

    /// Keep the shared TS muxer's configuration on the on-air feed's; on a
    /// switch, flag the discontinuity.
    fn ts_follow_on_air(&mut self, switched: bool) {
        if !self.players.iter().any(|p| p.format == PlayerFormat::Ts) && self.ts.is_none() {
            return;
        }
        let Some(on) = self.switch.on_air() else {
            return;
        };
        let Some(slot) = self.feeds.get(&on.feed) else {
            return;
        };
        let fresh = self.ts.is_none();
        let m = self.ts.get_or_insert_with(TsMuxer::new);
        if fresh || switched {
            for cfg in slot.video_cfg.iter().chain(slot.audio_cfg.iter()) {
                m.set_config(cfg);
            }
        }
        if switched && !fresh {
            m.mark_discontinuity();
        }
    }

    pub fn player_left(&mut self, now: Instant, id: u64) {
        let before = self.players.len();
        self.players.retain(|p| p.id != id);
        if self.players.len() < before {
            self.metrics.players.dec();
        }
        if let Some(feed) = self.feed_players.leave(id, &self.metrics) {
            // The last peer relaying the feed on air here switched away: a
            // planned switch to a feed that is not here completes now (and
            // releases a feed waiting for it to be disconnected).
            if self.players.is_empty() && !self.feed_players.watching(feed) {
                let target = self
                    .switch
                    .pending()
                    .map_or_else(Target::default, |p| self.target(p.to));
                if let Some(off) = self.switch.unwatched(feed, target) {
                    self.carry_out(now, vec![off]);
                }
            }
        }
    }

    pub fn on_tick(&mut self, now: Instant) {
        // Feeds silent for their loss window lose eligibility.
        let mut lost: Vec<(FeedId, Silence)> = self
            .feeds
            .iter()
            .filter(|(_, f)| f.healthy && !f.is_remote())
            .filter_map(|(id, f)| Some((*id, f.loss.as_ref()?.lost(now)?)))
            .collect();
        if lost.iter().any(|(_, s)| !s.at_timeout) {
            // A learned window (short of feed_timeout) only counts while
            // another feed of the source is alive: available, and (a local
            // one) with media more recent than that window. When every
            // feed falls silent at once, this process or its host stalled
            // (or there is nothing to switch to): feed_timeout decides
            // then, so a stall does not switch or vacate the source.
            let available: Vec<FeedId> = self
                .election
                .feeds()
                .iter()
                .filter(|s| s.healthy && !s.draining)
                .map(|s| s.feed)
                .collect();
            let feeds = &self.feeds;
            lost.retain(|(id, s)| {
                s.at_timeout
                    || available.iter().any(|other| {
                        other != id
                            && feeds.get(other).is_some_and(|f| {
                                f.is_remote()
                                    || f.loss
                                        .as_ref()
                                        .and_then(|l| l.silent_for(now))
                                        .is_some_and(|q| q < s.window)
                            })
                    })
            });
        }
        for (id, silence) in lost {
            if let Some(f) = self.feeds.get_mut(&id) {
                f.mark_unhealthy();
            }
            let silent_ms = silence.silent.as_millis() as u64;
            let window_ms = silence.window.as_millis() as u64;
            let cause = if silence.at_timeout {
                SwitchCause::Timeout
            } else {
                SwitchCause::Silent { silent_ms }
            };
            tracing::warn!(stream = %self.key.stream, source = %self.key.source, feed = %id,
                silent_ms, window_ms, detail = %cause.detail(), "feed lost: no media for its loss window");
            self.with_cause(cause, |s| {
                s.health_changed(now, id, false);
                s.on_air_lost(now, id);
            });
        }
        if self
            .lost_primary
            .is_some_and(|(_, at)| now.duration_since(at) > self.election.params().failback_hold)
        {
            self.lost_primary = None;
        }
        if self.election.poll_timeout().is_some_and(|t| t <= now) {
            self.settings.changes.notify_one();
            let d = self.election.handle_timeout(now);
            self.apply(now, d);
        }
        // A planned switch whose new feed sent no keyframe in time cuts at
        // its cached one; players of a source vacant for too long are let go.
        let target = self
            .switch
            .pending()
            .map_or_else(Target::default, |p| self.target(p.to));
        let actions = self.switch.tick(now, target);
        self.carry_out(now, actions);
    }

    /// Media from a feed again: if the air was just taken from it for its
    /// silence (within the failback hold), that switch was false.
    fn note_comeback(&mut self, now: Instant, feed: FeedId) {
        let Some((lost, at)) = self.lost_primary else {
            return;
        };
        if lost != feed {
            return;
        }
        self.lost_primary = None;
        let after = now.duration_since(at);
        if after <= self.election.params().failback_hold {
            self.metrics.false_switches.inc();
            tracing::warn!(stream = %self.key.stream, source = %self.key.source, feed = %feed,
                after_ms = after.as_millis() as u64,
                "false switch: the primary declared lost sent media again within the failback hold");
        }
    }

    pub fn kick(&mut self, now: Instant, feed: FeedId) -> Option<FeedView> {
        if self.feeds.get(&feed).is_none_or(FeedSlot::is_remote) {
            return None;
        }
        let view = self.feed_view(now, feed)?;
        if let Some(slot) = self.feeds.get(&feed) {
            slot.disconnect("kicked by an operator");
        }
        self.feed_left(now, feed);
        Some(view)
    }
}
