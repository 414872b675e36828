//! The engine: the one task that owns every source's election, switch and
//! fan-out (DESIGN sections 2–3).
//!
//! Sessions, the API and (later) the cluster shell talk to it only through
//! [`EngineHandle`]: bounded `mpsc` commands, answers on `oneshot`. Nothing
//! else mutates election state. Media arrives as [`crate::media`] frames;
//! players receive FLV tag bodies muxed once per source and shared (`Bytes`)
//! by every player of that source.

mod cause;
mod feed;
mod feed_players;
#[doc(hidden)]
pub mod fuzzing;
pub mod loss;
mod player;
mod remote;
mod source;
mod switch;
mod tokens;
pub mod view;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rml_rtmp::sessions::StreamMetadata;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::{FeedGrant, FeedId, Priority, SourceId, StreamName, TokenId};
use crate::media::{CodecConfig, Frame};
use crate::metrics::Metrics;
pub use player::{PlayerFormat, PlayerItem};
use remote::RemoteCommand;
pub use remote::{LocalFeed, RelayState, RemoteFeed, WantedMirror};
use source::Source;
pub use view::{FeedView, ReprioritizeReport, SourceView, SrtFeedStats, StreamView, SwitchRecord};

/// A wall-clock reading and the `Instant` it was taken at, read at the
/// engine's edge (its run loop): switch records derive their wall-clock
/// stamps from it and the `now` of the decision, so no decision reads a
/// clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    at: Instant,
    wall: chrono::DateTime<chrono::Utc>,
}

impl WallClock {
    pub(crate) fn new(at: Instant, wall: chrono::DateTime<chrono::Utc>) -> Self {
        Self { at, wall }
    }

    /// The wall-clock time at `now`.
    pub(crate) fn at(&self, now: Instant) -> chrono::DateTime<chrono::Utc> {
        let delta = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        if now >= self.at {
            self.wall + delta(now - self.at)
        } else {
            self.wall - delta(self.at - now)
        }
    }
}

/// A source: a stream name plus an optional source id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub stream: StreamName,
    pub source: SourceId,
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.source.is_default() {
            write!(f, "{}", self.stream)
        } else {
            write!(f, "{}#{}", self.stream, self.source)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Rtmp,
    Srt,
    Pull,
}

/// What the engine needs to know about a new feed.
#[derive(Debug, Clone)]
pub struct FeedMeta {
    pub id: FeedId,
    pub token_id: TokenId,
    pub label: String,
    pub priority: Priority,
    /// Set by a `priority=` publish parameter (which may only lower the
    /// token's priority unless the token allows raising): Reprioritize does
    /// not disconnect the feed, and caps it by the token's new priority.
    pub pinned: bool,
    pub protocol: Protocol,
    pub peer: SocketAddr,
    /// What the token granted this feed at admission (`None`: pull inputs
    /// and other nodes' feeds, which no token governs here).
    pub grant: Option<FeedGrant>,
}

/// What a re-check decided for one live feed of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// Still allowed; its grant brought up to date.
    Keep(FeedGrant),
    /// No longer allowed: disconnect it, with this reason.
    Revoke(String),
}

/// Judges one live feed of a token from its source, its peer address and
/// its grant. Runs inside the engine task: must be quick and must not block.
pub type TokenJudge =
    Box<dyn FnMut(&SourceKey, SocketAddr, &FeedGrant) -> Recheck + Send + 'static>;

/// A feed disconnected because its token no longer allows it.
#[derive(Debug, Clone)]
pub struct RevokedFeed {
    pub view: FeedView,
    pub reason: String,
}

/// Media from a publishing session.
#[derive(Debug, Clone)]
pub enum FeedMedia {
    Config(CodecConfig),
    Frame(Frame),
    Metadata(Arc<StreamMetadata>),
    /// Connection statistics of an SRT feed.
    SrtStats(SrtFeedStats),
}

/// Why the engine tells a publishing session to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedControl {
    Disconnect { reason: String },
}

/// Why a publish was refused by the engine (after the token check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishRefusal {
    #[error("token is banned from this source for {remaining_s} more seconds")]
    Banned { remaining_s: u64 },
    #[error("gateway is shutting down")]
    ShuttingDown,
}

/// A registered feed: the session sends media here and listens for control.
pub struct FeedHandle {
    pub id: FeedId,
    pub control: mpsc::Receiver<FeedControl>,
}

/// A registered player.
pub struct PlayerHandle {
    pub id: u64,
    pub items: mpsc::Receiver<PlayerItem>,
}

pub(crate) enum Command {
    Publish {
        key: SourceKey,
        meta: FeedMeta,
        reply: oneshot::Sender<Result<FeedHandle, PublishRefusal>>,
    },
    Media {
        feed: FeedId,
        media: FeedMedia,
    },
    Unpublish {
        feed: FeedId,
    },
    Play {
        key: SourceKey,
        format: PlayerFormat,
        reply: oneshot::Sender<PlayerHandle>,
    },
    Unplay {
        key: SourceKey,
        player: u64,
    },
    /// Play one feed of this node (a cluster peer's relay); `None` when the
    /// feed is not a local feed of that source.
    PlayFeed {
        key: SourceKey,
        feed: FeedId,
        reply: oneshot::Sender<Option<PlayerHandle>>,
    },
    Reprioritize {
        token: TokenId,
        priority: Option<i32>,
        disconnect: bool,
        reply: oneshot::Sender<ReprioritizeReport>,
    },
    TokenRevoked {
        token: TokenId,
        reason: String,
        reply: oneshot::Sender<Vec<FeedView>>,
    },
    RecheckToken {
        token: TokenId,
        judge: TokenJudge,
        reply: oneshot::Sender<Vec<RevokedFeed>>,
    },
    TokenRevisions {
        only: Option<TokenId>,
        reply: oneshot::Sender<Vec<(TokenId, i64)>>,
    },
    Kick {
        feed: FeedId,
        ban: Duration,
        reply: oneshot::Sender<Option<FeedView>>,
    },
    Snapshot {
        reply: oneshot::Sender<Vec<StreamView>>,
    },
    /// The global election (cluster shell).
    Remote(RemoteCommand),
}

/// The way in. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    changes: Arc<tokio::sync::Notify>,
}

#[derive(Debug, thiserror::Error)]
#[error("the engine has stopped")]
pub struct EngineGone;

impl EngineHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineGone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| EngineGone)?;
        rx.await.map_err(|_| EngineGone)
    }

    pub async fn publish(
        &self,
        key: SourceKey,
        meta: FeedMeta,
    ) -> Result<Result<FeedHandle, PublishRefusal>, EngineGone> {
        self.ask(|reply| Command::Publish { key, meta, reply })
            .await
    }

    /// Send media of a feed; waits when the engine is busy (backpressure).
    pub async fn media(&self, feed: FeedId, media: FeedMedia) -> Result<(), EngineGone> {
        self.tx
            .send(Command::Media { feed, media })
            .await
            .map_err(|_| EngineGone)
    }

    pub async fn unpublish(&self, feed: FeedId) {
        let _ = self.tx.send(Command::Unpublish { feed }).await;
    }

    pub async fn play(
        &self,
        key: SourceKey,
        format: PlayerFormat,
    ) -> Result<PlayerHandle, EngineGone> {
        self.ask(|reply| Command::Play { key, format, reply }).await
    }

    /// Play one feed of this node itself (node-to-node relay); unplay it
    /// like any player.
    pub async fn play_feed(
        &self,
        key: SourceKey,
        feed: FeedId,
    ) -> Result<Option<PlayerHandle>, EngineGone> {
        self.ask(|reply| Command::PlayFeed { key, feed, reply })
            .await
    }

    pub async fn unplay(&self, key: SourceKey, player: u64) {
        let _ = self.tx.send(Command::Unplay { key, player }).await;
    }

    /// Apply a new token priority to live feeds (see the API's reprioritize).
    pub async fn reprioritize(
        &self,
        token: TokenId,
        priority: Option<i32>,
        disconnect: bool,
    ) -> Result<ReprioritizeReport, EngineGone> {
        self.ask(|reply| Command::Reprioritize {
            token,
            priority,
            disconnect,
            reply,
        })
        .await
    }

    /// Disconnect every feed of a token at once (disabled or deleted).
    pub async fn token_revoked(
        &self,
        token: TokenId,
        reason: &str,
    ) -> Result<Vec<FeedView>, EngineGone> {
        let reason = reason.to_owned();
        self.ask(|reply| Command::TokenRevoked {
            token,
            reason,
            reply,
        })
        .await
    }

    /// Judge every local feed of `token` with `judge` (against the token's
    /// current row): keep it, with its grant brought up to date, or
    /// disconnect it. Returns the feeds disconnected.
    pub async fn recheck_token(
        &self,
        token: TokenId,
        judge: TokenJudge,
    ) -> Result<Vec<RevokedFeed>, EngineGone> {
        self.ask(|reply| Command::RecheckToken {
            token,
            judge,
            reply,
        })
        .await
    }

    /// (token, row revision judged against) of every local feed a token
    /// governs (of `only` that token, when given), one entry per feed.
    pub async fn token_revisions(
        &self,
        only: Option<TokenId>,
    ) -> Result<Vec<(TokenId, i64)>, EngineGone> {
        self.ask(|reply| Command::TokenRevisions { only, reply })
            .await
    }

    /// Disconnect one feed and refuse its token on that source for `ban`.
    pub async fn kick(&self, feed: FeedId, ban: Duration) -> Result<Option<FeedView>, EngineGone> {
        self.ask(|reply| Command::Kick { feed, ban, reply }).await
    }

    pub async fn snapshot(&self) -> Result<Vec<StreamView>, EngineGone> {
        self.ask(|reply| Command::Snapshot { reply }).await
    }

    /// Signalled whenever a local feed's election facts may have changed
    /// (the cluster shell then reads [`EngineHandle::local_feeds`]).
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changes.clone()
    }

    async fn remote(&self, cmd: RemoteCommand) -> Result<(), EngineGone> {
        self.tx
            .send(Command::Remote(cmd))
            .await
            .map_err(|_| EngineGone)
    }

    /// Add or update a feed of another node in the election.
    pub async fn remote_upsert(&self, feed: RemoteFeed) -> Result<(), EngineGone> {
        self.remote(RemoteCommand::Upsert(Box::new(feed))).await
    }

    pub async fn remote_remove(&self, feed: FeedId) -> Result<(), EngineGone> {
        self.remote(RemoteCommand::Remove(feed)).await
    }

    /// Replace every remote feed by `feeds` (a full resync).
    pub async fn remote_replace(&self, feeds: Vec<RemoteFeed>) -> Result<(), EngineGone> {
        self.remote(RemoteCommand::Replace(feeds)).await
    }

    /// Refuse `token` on a source for `ban` (a kick with ban on another node).
    pub async fn ban(
        &self,
        token: TokenId,
        key: SourceKey,
        ban: Duration,
    ) -> Result<(), EngineGone> {
        self.remote(RemoteCommand::Ban { token, key, ban }).await
    }

    /// The relay of a remote feed changed state.
    pub async fn relay_state(
        &self,
        feed: FeedId,
        state: Option<RelayState>,
    ) -> Result<(), EngineGone> {
        self.remote(RemoteCommand::Relay { feed, state }).await
    }

    /// This node's feeds, for the registry.
    pub async fn local_feeds(&self) -> Result<Vec<LocalFeed>, EngineGone> {
        self.ask(|reply| Command::Remote(RemoteCommand::LocalFeeds(reply)))
            .await
    }

    /// Remote feeds that players here need relayed.
    pub async fn wanted_mirrors(&self, runner_up: bool) -> Result<Vec<WantedMirror>, EngineGone> {
        self.ask(|reply| Command::Remote(RemoteCommand::Wanted { runner_up, reply }))
            .await
    }
}

/// Settings the engine reads from the configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub node: String,
    pub region: String,
    pub election: crate::election::ElectionParams,
    /// Loss of signal (`None`: `election.feed_timeout_ms` is 0, no media
    /// timeout at all).
    pub loss: Option<loss::LossParams>,
    pub failover_next_keyframe: bool,
    /// Longest added latency a planned switch may take to cut at once at the
    /// new primary's cached keyframe (0: always wait for the next keyframe).
    pub planned_max_added_latency_ms: i64,
    pub switch_deadline: Duration,
    pub vacant_hold: Duration,
    pub gop_cache_max_bytes: usize,
    pub player_queue: usize,
    /// Notified when a local feed's election facts may have changed.
    pub changes: Arc<tokio::sync::Notify>,
}

impl EngineSettings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            node: c.node_id.clone(),
            region: c.region.clone(),
            election: c.election.params(),
            loss: (c.election.feed_timeout_ms > 0).then(|| loss::LossParams {
                floor: Duration::from_millis(c.election.loss_floor_ms),
                k: c.election.loss_k,
                gap_factor: c.election.loss_gap_factor,
                memory: Duration::from_millis(c.election.loss_memory_ms),
                warmup: Duration::from_millis(c.election.loss_warmup_ms),
                timeout: Duration::from_millis(c.election.feed_timeout_ms),
            }),
            failover_next_keyframe: c.switch.failover_switch
                == crate::config::FailoverSwitch::NextKeyframe,
            planned_max_added_latency_ms: i64::try_from(c.switch.planned_max_added_latency_ms)
                .unwrap_or(i64::MAX),
            switch_deadline: Duration::from_millis(c.switch.switch_deadline_ms),
            vacant_hold: Duration::from_millis(c.switch.vacant_hold_ms),
            gop_cache_max_bytes: c.switch.gop_cache_max_bytes,
            player_queue: 1024,
            changes: Arc::default(),
        }
    }
}

/// How often timers (loss windows, feed timeouts, holds, deadlines) are
/// checked: fine enough for a loss window of 150 ms to fail over within
/// about one more tick.
const TICK: Duration = Duration::from_millis(10);

/// Start the engine task; it stops when `cancel` fires and every handle is gone.
pub fn spawn(
    settings: EngineSettings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> (EngineHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(8192);
    let changes = settings.changes.clone();
    let engine = Engine {
        settings: Arc::new(settings),
        metrics,
        sources: HashMap::new(),
        feed_index: HashMap::new(),
        bans: HashMap::new(),
        next_player: 1,
        draining: false,
        next_expiry: None,
        wall: WallClock::new(Instant::now(), chrono::Utc::now()),
    };
    let task = tokio::spawn(engine.run(rx, cancel));
    (EngineHandle { tx, changes }, task)
}

struct Engine {
    settings: Arc<EngineSettings>,
    metrics: Arc<Metrics>,
    sources: HashMap<SourceKey, Source>,
    feed_index: HashMap<FeedId, SourceKey>,
    /// (token, source) → banned until.
    bans: HashMap<(TokenId, SourceKey), Instant>,
    next_player: u64,
    draining: bool,
    /// The earliest token expiry among local feeds (may be stale-early:
    /// then the next look finds nothing to expire and recomputes it).
    next_expiry: Option<chrono::DateTime<chrono::Utc>>,
    /// The wall clock as last read by the run loop.
    wall: WallClock,
}

impl Engine {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        let now = self.read_clocks();
                        self.handle(cmd, now);
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    let now = self.read_clocks();
                    self.on_tick(now);
                }
                _ = cancel.cancelled(), if !self.draining => {
                    self.draining = true;
                }
            }
        }
        tracing::debug!("engine stopped");
    }

    /// The edge: the one place the engine reads the clocks.
    fn read_clocks(&mut self) -> Instant {
        let now = Instant::now();
        self.wall = WallClock::new(now, chrono::Utc::now());
        now
    }

    fn source_mut(&mut self, key: &SourceKey) -> &mut Source {
        let settings = self.settings.clone();
        let metrics = self.metrics.clone();
        let wall = self.wall;
        self.sources
            .entry(key.clone())
            .or_insert_with(|| Source::new(key.clone(), settings, metrics, wall))
    }

    fn handle(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Publish { key, meta, reply } => {
                if self.draining {
                    let _ = reply.send(Err(PublishRefusal::ShuttingDown));
                    return;
                }
                if let Some(until) = self.bans.get(&(meta.token_id, key.clone())) {
                    if *until > now {
                        let remaining_s = (*until - now).as_secs().max(1);
                        let _ = reply.send(Err(PublishRefusal::Banned { remaining_s }));
                        return;
                    }
                }
                let (ctl_tx, ctl_rx) = mpsc::channel(4);
                let id = meta.id;
                self.note_expiry(meta.grant.as_ref().and_then(|g| g.expires_at));
                self.feed_index.insert(id, key.clone());
                self.source_mut(&key).feed_joined(now, meta, ctl_tx);
                let _ = reply.send(Ok(FeedHandle {
                    id,
                    control: ctl_rx,
                }));
            }
            Command::Media { feed, media } => {
                if let Some(key) = self.feed_index.get(&feed) {
                    if let Some(src) = self.sources.get_mut(key) {
                        src.feed_media(now, feed, media);
                    }
                }
            }
            Command::Unpublish { feed } => {
                if let Some(key) = self.feed_index.remove(&feed) {
                    if let Some(src) = self.sources.get_mut(&key) {
                        src.feed_left(now, feed);
                    }
                    self.gc(&key);
                }
            }
            Command::Play { key, format, reply } => {
                let id = self.next_player;
                self.next_player += 1;
                let (tx, rx) = mpsc::channel(self.settings.player_queue);
                self.source_mut(&key).player_joined_as(now, id, tx, format);
                let _ = reply.send(PlayerHandle { id, items: rx });
            }
            Command::PlayFeed { key, feed, reply } => {
                let id = self.next_player;
                let (tx, rx) = mpsc::channel(self.settings.player_queue);
                let player = player::Player::new(id, tx, PlayerFormat::Flv);
                let ok = self
                    .sources
                    .get_mut(&key)
                    .is_some_and(|s| s.play_feed(feed, player).is_ok());
                if ok {
                    self.next_player += 1;
                }
                let _ = reply.send(ok.then_some(PlayerHandle { id, items: rx }));
            }
            Command::Unplay { key, player } => {
                if let Some(src) = self.sources.get_mut(&key) {
                    src.player_left(now, player);
                }
                self.gc(&key);
            }
            Command::Reprioritize {
                token,
                priority,
                disconnect,
                reply,
            } => {
                let mut report = ReprioritizeReport::default();
                for src in self.sources.values_mut() {
                    src.reprioritize(now, token, priority, disconnect, &mut report);
                }
                let _ = reply.send(report);
            }
            Command::TokenRevoked {
                token,
                reason,
                reply,
            } => {
                let mut gone = Vec::new();
                for src in self.sources.values_mut() {
                    gone.extend(src.disconnect_token(now, token, &reason));
                }
                let _ = reply.send(gone);
            }
            Command::RecheckToken {
                token,
                mut judge,
                reply,
            } => {
                let revoked = self.recheck_token(now, token, &mut *judge);
                let _ = reply.send(revoked);
            }
            Command::TokenRevisions { only, reply } => {
                let mut out = Vec::new();
                for src in self.sources.values() {
                    src.token_revisions(&mut out);
                }
                if let Some(t) = only {
                    out.retain(|(token, _)| *token == t);
                }
                let _ = reply.send(out);
            }
            Command::Kick { feed, ban, reply } => {
                let Some(key) = self.feed_index.get(&feed).cloned() else {
                    let _ = reply.send(None);
                    return;
                };
                let view = self.sources.get_mut(&key).and_then(|s| s.kick(now, feed));
                if let Some(v) = &view {
                    if !ban.is_zero() {
                        self.bans
                            .insert((TokenId(v.token_id), key.clone()), now + ban);
                    }
                }
                let _ = reply.send(view);
            }
            Command::Snapshot { reply } => {
                let mut streams: HashMap<StreamName, Vec<SourceView>> = HashMap::new();
                for (key, src) in &self.sources {
                    streams
                        .entry(key.stream.clone())
                        .or_default()
                        .push(src.view(now));
                }
                let mut out: Vec<StreamView> = streams
                    .into_iter()
                    .map(|(name, mut sources)| {
                        sources.sort_by(|a, b| a.source_id.cmp(&b.source_id));
                        StreamView {
                            name: name.to_string(),
                            sources,
                        }
                    })
                    .collect();
                out.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(out);
            }
            Command::Remote(cmd) => self.handle_remote(cmd, now),
        }
    }

    fn on_tick(&mut self, now: Instant) {
        self.expire_tokens(now);
        let mut empty = Vec::new();
        for (key, src) in self.sources.iter_mut() {
            src.set_wall(self.wall);
            src.on_tick(now);
            if src.is_idle() {
                empty.push(key.clone());
            }
        }
        for key in empty {
            self.sources.remove(&key);
        }
        self.bans.retain(|_, until| *until > now);
    }

    /// Drop a source with neither feeds nor players.
    fn gc(&mut self, key: &SourceKey) {
        if self.sources.get(key).is_some_and(Source::is_idle) {
            self.sources.remove(key);
        }
    }
}
