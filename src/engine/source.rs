//! One source: its election, its switch and its fan-out.
//!
//! Invariants: at most one feed is on air; every frame players receive has
//! gone through the on-air feed's `Rebase` and the source's `OutputClock`,
//! so output timestamps are continuous and monotonic across switches; a new
//! feed's header (metadata, codec configurations) reaches players before
//! its first frame; a planned switch keeps the old feed on air until the
//! new one's keyframe (make-before-break).

mod tokens;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::sync::mpsc;

use super::cause::SwitchCause;
use super::feed::{FeedSlot, Origin};
use super::feed_players::FeedPlayers;
use super::loss::Silence;
use super::player::{Player, PlayerFormat, PlayerItem, Sent};
use super::remote::LocalFeed;
use super::view::{FeedView, SourceView, SwitchRecord};
use super::{EngineSettings, FeedControl, FeedMedia, FeedMeta, SourceKey};
use crate::domain::FeedId;
use crate::election::{Decision, FeedState, Input, SourceElection, SwitchReason};
use crate::media::ts::mux::TsMuxer;
use crate::media::{self, Frame, OutputClock, Rebase, Track};
use crate::metrics::Metrics;

struct OnAir {
    feed: FeedId,
    rebase: Rebase,
    /// The last audio DTS out before this feed went on air: its audio that
    /// lands before it overlaps the previous feed's and is dropped, until
    /// one frame lands after it (`None` from then on).
    audio_floor: Option<i64>,
}

struct Pending {
    to: FeedId,
    from: Option<FeedId>,
    /// Planned switches fall back to the cached keyframe at this instant.
    deadline: Option<Instant>,
    planned: bool,
    reason: SwitchReason,
    cause: SwitchCause,
    /// When the election decided (the cut may come later, at a keyframe).
    decided: chrono::DateTime<Utc>,
}

pub(super) struct Source {
    key: SourceKey,
    settings: Arc<EngineSettings>,
    metrics: Arc<Metrics>,
    election: SourceElection,
    feeds: HashMap<FeedId, FeedSlot>,
    on_air: Option<OnAir>,
    pending: Option<Pending>,
    clock: OutputClock,
    /// Metadata and codec configurations of the on-air feed, as FLV items.
    header: Vec<PlayerItem>,
    /// The MPEG-TS muxer shared by every TS player (stable PIDs and
    /// continuity counters across switches); created with the first one.
    ts: Option<TsMuxer>,
    players: Vec<Player>,
    /// Players of one feed each (cluster peers relaying it).
    feed_players: FeedPlayers,
    vacant_since: Option<Instant>,
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
    pub fn new(key: SourceKey, settings: Arc<EngineSettings>, metrics: Arc<Metrics>) -> Self {
        Self {
            election: SourceElection::new(settings.election.clone()),
            key,
            settings,
            metrics,
            feeds: HashMap::new(),
            on_air: None,
            pending: None,
            clock: OutputClock::new(),
            header: Vec::new(),
            ts: None,
            players: Vec::new(),
            feed_players: FeedPlayers::default(),
            vacant_since: None,
            last_emit: None,
            last_switch: None,
            switches: 0,
            cause: None,
            lost_primary: None,
        }
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
        if self.on_air.as_ref().is_none_or(|o| o.feed != feed) {
            return;
        }
        if let Some(p) = self.pending.take() {
            let d = Decision::Switch {
                from: Some(feed),
                to: p.to,
                planned: false,
                reason: SwitchReason::PrimaryLost,
            };
            // Lost before the planned switch completed: the cause is the
            // loss (the caller's), not the reason of the planned switch.
            self.apply(now, vec![d]);
        }
    }

    pub fn feed_media(&mut self, now: Instant, id: FeedId, media: FeedMedia) {
        if matches!(media, FeedMedia::Frame(_)) && self.lost_primary.is_some_and(|(f, _)| f == id) {
            self.note_comeback(now, id);
        }
        let on_air = self.on_air.as_ref().map(|o| o.feed) == Some(id);
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
                if self.switches != switches_before
                    && self.on_air.as_ref().map(|o| o.feed) == Some(id)
                {
                    // Just cut to this feed from its cache, which holds this frame.
                    return;
                }
                if cut_point && self.pending.as_ref().is_some_and(|p| p.to == id) {
                    let p = self.pending.take().expect("checked");
                    self.cut(now, id, p.from, p.planned, (p.reason, p.cause), p.decided);
                    return;
                }
                if self.on_air.as_ref().map(|o| o.feed) == Some(id) {
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

    /// Apply the election's decisions.
    fn apply(&mut self, now: Instant, decisions: Vec<Decision>) {
        for d in decisions {
            match d {
                Decision::Switch {
                    from,
                    to,
                    planned,
                    reason,
                } => {
                    let cause = SwitchCause::of(reason, self.cause);
                    if self.on_air.as_ref().is_some_and(|o| o.feed == to) {
                        // Back to the feed still on air (the target of a
                        // pending planned switch left or failed before its
                        // keyframe): nothing changes on air, nothing to cut.
                        self.pending = None;
                        continue;
                    }
                    self.metrics
                        .switches
                        .with_label_values(&[
                            reason_str(reason),
                            if planned { "true" } else { "false" },
                            cause.label(),
                        ])
                        .inc();
                    self.lost_primary = from.filter(|_| cause.is_silence()).map(|f| (f, now));
                    // Something to cut to: a keyframe, or audio of an audio-only
                    // feed (a remote feed without a mirror has neither).
                    let has_cache = self.feeds.get(&to).is_some_and(|f| {
                        f.gop.has_keyframe() || (!f.has_video() && !f.gop.is_empty())
                    });
                    let current = self.on_air.as_ref().map(|o| o.feed);
                    let relayed = current.is_some_and(|c| self.feed_players.watching(c));
                    if !has_cache && self.players.is_empty() && !relayed {
                        // Nobody watches here (typically: the new primary is
                        // a feed of another node): the old feed goes off the
                        // air now, so a feed waiting for that is released.
                        self.off_air(now, from);
                        self.pending = Some(Pending {
                            to,
                            from,
                            deadline: None,
                            planned,
                            reason,
                            cause,
                            decided: Utc::now(),
                        });
                    } else if planned
                        && current.is_some()
                        && current != Some(to)
                        && !self.cached_keyframe_fresh(to)
                    {
                        // Make-before-break: the old feed stays on air until the new keyframe.
                        self.pending = Some(Pending {
                            to,
                            from,
                            deadline: Some(now + self.settings.switch_deadline),
                            planned: true,
                            reason,
                            cause,
                            decided: Utc::now(),
                        });
                    } else if has_cache
                        && (!self.settings.failover_next_keyframe || reason == SwitchReason::First)
                    {
                        self.pending = None;
                        self.cut(now, to, from, planned, (reason, cause), Utc::now());
                    } else {
                        // Freeze until the new feed's next keyframe.
                        self.off_air(now, from);
                        self.pending = Some(Pending {
                            to,
                            from,
                            deadline: None,
                            planned,
                            reason,
                            cause,
                            decided: Utc::now(),
                        });
                    }
                }
                Decision::Vacate { from } => {
                    self.pending = None;
                    self.off_air(now, Some(from));
                    self.vacant_since = Some(now);
                    let detail = self
                        .cause
                        .map_or_else(|| "vacant".to_owned(), SwitchCause::detail);
                    tracing::warn!(stream = %self.key.stream, source = %self.key.source, from = %from,
                        detail = %detail, "source vacant: no eligible feed");
                    self.record(
                        Some(from),
                        None,
                        ("vacant", detail),
                        false,
                        None,
                        None,
                        Utc::now(),
                    );
                }
            }
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

    /// Take the current feed off the air; disconnect it if it was waiting for that.
    fn off_air(&mut self, _now: Instant, from: Option<FeedId>) {
        let old = self.on_air.take().map(|o| o.feed).or(from);
        self.metrics
            .active_priority
            .remove_label_values(&[self.key.stream.as_str(), self.key.source.as_str()])
            .ok();
        if let Some(old) = old {
            if let Some(slot) = self.feeds.get(&old) {
                if let Some(reason) = &slot.disconnect_after_cut {
                    slot.disconnect(reason);
                }
            }
        }
    }

    /// Cut to `to` at its cached keyframe: header first, then the cached
    /// frames (just the keyframe for a live cut), all rebased so the output
    /// continues one frame interval after the last emitted frame.
    #[allow(clippy::too_many_arguments)]
    fn cut(
        &mut self,
        now: Instant,
        to: FeedId,
        from: Option<FeedId>,
        planned: bool,
        (reason, cause): (SwitchReason, SwitchCause),
        decided: chrono::DateTime<Utc>,
    ) {
        let Some(slot) = self.feeds.get(&to) else {
            return;
        };
        let frames: Vec<Frame> = slot.gop.frames().cloned().collect();
        let Some(first) = frames.first() else {
            // Nothing to start from yet: wait for a keyframe. A feed on air
            // that is gone goes off the air now.
            if self
                .on_air
                .as_ref()
                .is_some_and(|o| !self.feeds.contains_key(&o.feed))
            {
                self.off_air(now, from);
            }
            self.pending = Some(Pending {
                to,
                from,
                deadline: None,
                planned,
                reason,
                cause,
                decided,
            });
            return;
        };
        let gap = slot.interval.interval_ms().max(1);
        let added_latency = slot.last_dts.map(|l| l - first.dts).filter(|l| *l > 0);
        let priority = slot.meta.priority;
        let rebase = Rebase::new(first.dts, self.clock.next_base(gap));
        let old = self.on_air.as_ref().map(|o| o.feed).or(from);
        self.off_air(now, from);
        let audio_floor = self.clock.last_track_dts(Track::Audio);
        self.on_air = Some(OnAir {
            feed: to,
            rebase,
            audio_floor,
        });
        self.vacant_since = None;
        self.refresh_header(true);
        let gap_ms = if planned {
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
        let added = added_latency;
        let detail = cause.detail();
        tracing::info!(stream = %self.key.stream, source = %self.key.source, from = ?old.map(|f| f.to_string()),
            to = %to, reason = reason_str(reason), detail = %detail, planned, gap_ms = ?gap_ms,
            cached_frames = frames.len(), "switched");
        self.record(
            old,
            Some(to),
            (reason_str(reason), detail),
            planned,
            gap_ms,
            added,
            decided,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        from: Option<FeedId>,
        to: Option<FeedId>,
        (reason, detail): (&str, String),
        planned: bool,
        gap_ms: Option<f64>,
        added_latency_ms: Option<i64>,
        decided_at: chrono::DateTime<Utc>,
    ) {
        self.switches += 1;
        self.last_switch = Some(SwitchRecord {
            at: Utc::now(),
            decided_at,
            from: from.map(|f| f.0),
            to: to.map(|f| f.0),
            reason: reason.to_owned(),
            detail,
            planned,
            gap_ms,
            added_latency_ms,
        });
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
        let Some(on) = &self.on_air else { return };
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
        let Some(on) = self.on_air.as_mut() else {
            return;
        };
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
    #[cfg_attr(not(test), allow(dead_code))]
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
        if let Some(on) = &self.on_air {
            if let Some(slot) = self.feeds.get(&on.feed) {
                // Start at once from the on-air feed's cached GOP, with the
                // timestamps those frames had when they went out.
                let mut clock = OutputClock::new();
                let frames: Vec<Frame> = slot
                    .gop
                    .frames()
                    .filter(|f| f.dts >= on.rebase.in_base)
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
        } else if self.vacant_since.is_none() && self.pending.is_none() {
            self.vacant_since = Some(now);
        }
        self.players.push(player);
    }

    /// Keep the shared TS muxer's configuration on the on-air feed's; on a
    /// switch, flag the discontinuity.
    fn ts_follow_on_air(&mut self, switched: bool) {
        if !self.players.iter().any(|p| p.format == PlayerFormat::Ts) && self.ts.is_none() {
            return;
        }
        let Some(on) = &self.on_air else { return };
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
            let unwatched = self.players.is_empty() && !self.feed_players.watching(feed);
            if unwatched
                && self.on_air.as_ref().is_some_and(|o| o.feed == feed)
                && self
                    .pending
                    .as_ref()
                    .is_some_and(|p| self.feeds.get(&p.to).is_some_and(|f| f.gop.is_empty()))
            {
                self.off_air(now, Some(feed));
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
        // A planned switch whose new feed sent no keyframe in time cuts at its cached one.
        if let Some(p) = &self.pending {
            if p.deadline.is_some_and(|d| d <= now) {
                let p = self.pending.take().expect("checked");
                tracing::warn!(stream = %self.key.stream, to = %p.to, "planned switch deadline passed; cutting at the cached keyframe");
                if self.feeds.get(&p.to).is_some_and(|f| f.gop.is_empty()) {
                    // Nothing to cut to yet (a remote feed whose mirror has
                    // not delivered): the old feed goes now, players wait.
                    self.off_air(now, p.from);
                }
                self.cut(now, p.to, p.from, false, (p.reason, p.cause), p.decided);
            }
        }
        // Players of a source vacant for too long are let go.
        if let Some(since) = self.vacant_since {
            if self.on_air.is_none()
                && self.pending.is_none()
                && now.duration_since(since) >= self.settings.vacant_hold
            {
                let n = self.players.len();
                for p in &mut self.players {
                    p.close("source vacant");
                }
                self.players.clear();
                self.metrics.players.sub(n as i64);
                self.vacant_since = None;
            }
        }
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

    fn feed_view(&self, now: Instant, id: FeedId) -> Option<FeedView> {
        let states = self.election.feeds();
        self.describe(now, id, states.iter().find(|s| s.feed == id))
    }

    /// A feed's view, given its election state (if the election knows it).
    fn describe(&self, now: Instant, id: FeedId, state: Option<&FeedState>) -> Option<FeedView> {
        let slot = self.feeds.get(&id)?;
        let primary = self.on_air.as_ref().map(|o| o.feed) == Some(id);
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
                super::Protocol::Rtmp => "rtmp",
                super::Protocol::Srt => "srt",
                super::Protocol::Pull => "pull",
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
            primary: self.on_air.as_ref().map(|o| o.feed.0),
            elected: self.election.primary().map(|f| f.0),
            state: if self.on_air.is_some() {
                "on_air"
            } else if self.pending.is_some() {
                "switching"
            } else {
                "vacant"
            }
            .into(),
            players: self.players.len(),
            switches: self.switches,
            last_switch: self.last_switch.clone(),
            feeds,
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

    /// Add or update a feed of another node (global election).
    pub fn remote_upsert(&mut self, now: Instant, meta: FeedMeta, origin: Origin) {
        let id = meta.id;
        let priority = meta.priority;
        let mut inputs = Vec::new();
        match self.feeds.get_mut(&id) {
            Some(slot) if !slot.is_remote() => return,
            Some(slot) => {
                let old = slot.origin.clone().expect("remote");
                let origin = Origin {
                    relay: old.relay,
                    ..origin
                };
                if slot.meta.priority != priority {
                    inputs.push(Input::PriorityChanged { feed: id, priority });
                }
                slot.meta = meta;
                if origin.draining && !old.draining {
                    inputs.push(Input::Drain { feed: id });
                }
                if origin.effective_since() != old.effective_since() {
                    inputs.push(Input::Remote {
                        feed: id,
                        since: origin.effective_since(),
                    });
                }
                slot.origin = Some(origin);
            }
            None => {
                tracing::info!(stream = %self.key.stream, source = %self.key.source, feed = %id,
                    node = %origin.node, region = %origin.region, priority = ?priority.0, "remote feed joined");
                // Nobody controls a remote feed from here: its control
                // channel has no receiver.
                let (control, _) = mpsc::channel(1);
                let mut slot =
                    FeedSlot::new(now, meta, control, self.settings.gop_cache_max_bytes, None);
                inputs.push(Input::Joined { feed: id, priority });
                if origin.draining {
                    inputs.push(Input::Drain { feed: id });
                }
                inputs.push(Input::Remote {
                    feed: id,
                    since: origin.eligible_since,
                });
                slot.origin = Some(origin);
                self.feeds.insert(id, slot);
            }
        }
        for input in inputs {
            let cause = match input {
                Input::PriorityChanged { .. } => SwitchCause::Reprioritized,
                Input::Drain { .. } => SwitchCause::Drained,
                _ => SwitchCause::Unavailable,
            };
            self.with_cause(cause, |s| {
                let d = s.election.handle_input(now, input);
                s.apply(now, d);
            });
        }
    }

    /// The mirror of a remote feed changed state.
    pub fn relay_state(&mut self, now: Instant, feed: FeedId, state: Option<super::RelayState>) {
        let Some(slot) = self.feeds.get_mut(&feed) else {
            return;
        };
        let Some(origin) = slot.origin.as_mut() else {
            return;
        };
        let before = origin.effective_since();
        origin.relay = state;
        let after = origin.effective_since();
        if matches!(state, None | Some(super::RelayState::Retrying)) {
            // Its cache is stale from now on: cut to it only from fresh media.
            slot.mark_unhealthy();
        }
        if before != after {
            self.with_cause(SwitchCause::Unavailable, |s| {
                let d = s
                    .election
                    .handle_input(now, Input::Remote { feed, since: after });
                s.apply(now, d);
            });
        }
    }

    /// The ids of this source's remote feeds.
    pub fn remote_ids(&self) -> impl Iterator<Item = FeedId> + '_ {
        self.feeds
            .iter()
            .filter(|(_, f)| f.is_remote())
            .map(|(id, _)| *id)
    }

    /// What the registry publishes about this source's local feeds.
    pub fn local_records(&self, out: &mut Vec<LocalFeed>) {
        let states = self.election.feeds();
        for st in &states {
            let Some(slot) = self.feeds.get(&st.feed) else {
                continue;
            };
            if slot.is_remote() {
                continue;
            }
            out.push(LocalFeed {
                key: self.key.clone(),
                meta: slot.meta.clone(),
                connected_at: slot.connected_at,
                eligible_since: st.eligible_since,
                healthy: st.healthy,
                draining: st.draining,
                on_air: self.on_air.as_ref().is_some_and(|o| o.feed == st.feed),
            });
        }
    }

    /// Remote feeds this node should mirror: the primary when it is remote
    /// and someone watches here, (`runner_up`) the best other remote feed,
    /// and every remote feed whose relay is broken while its node still
    /// reports it eligible. The last keeps the broken relay retrying (and
    /// the feed unavailable here) until it recovers or leaves the registry:
    /// stopping it would forget the breakage, make the feed look available
    /// again, elect it back and stop the relay to its replacement, over and
    /// over, until its node's lease expired.
    pub fn wanted_mirrors(&self, runner_up: bool, out: &mut Vec<(SourceKey, FeedId, String)>) {
        if self.players.is_empty() {
            return;
        }
        let first = out.len();
        let states = self.election.feeds();
        let primary = self.election.primary();
        // The feed still on air during a planned switch away from it.
        if let Some(on) = self.on_air.as_ref().filter(|o| Some(o.feed) != primary) {
            if let Some(o) = self.feeds.get(&on.feed).and_then(|f| f.origin.as_ref()) {
                out.push((self.key.clone(), on.feed, o.node.clone()));
            }
        }
        let mut taken = 0;
        for st in states
            .iter()
            .filter(|s| s.eligible || Some(s.feed) == primary)
        {
            let is_primary = Some(st.feed) == primary;
            if !is_primary && (!runner_up || taken >= 1) {
                continue;
            }
            if !is_primary {
                taken += 1;
            }
            if let Some(o) = self.feeds.get(&st.feed).and_then(|f| f.origin.as_ref()) {
                out.push((self.key.clone(), st.feed, o.node.clone()));
            }
        }
        for (id, slot) in &self.feeds {
            let Some(o) = slot.origin.as_ref() else {
                continue;
            };
            let broken = o.relay == Some(super::RelayState::Retrying) && o.eligible_since.is_some();
            if broken && !out[first..].iter().any(|(_, f, _)| f == id) {
                out.push((self.key.clone(), *id, o.node.clone()));
            }
        }
    }
}
