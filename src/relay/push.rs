//! Push outputs (restream): send a source's output — its primary, with
//! the continuous timeline every player gets, so it follows every switch —
//! to a remote RTMP or SRT server.
//!
//! Targets are a balance group of ordered groups, walked by
//! [`crate::client::Failover`]: a random start group, its targets in
//! order, then the other groups, then `reconnect_delay_ms` and again; a
//! dropped connection is retried once on the same target first.
//!
//! Per attempt the worker joins the source as a player in the target's
//! format (FLV for RTMP, MPEG-TS for SRT) and connects only once the source
//! has media, so a vacant source does not hold connections open on remote
//! servers; the engine then replays the header and the current GOP, so
//! every new target connection starts with codec configuration and a
//! keyframe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::client::{self, ClientUrl, Counter, Failover, PushEnd, Step, TargetRef};
use crate::engine::{PlayerHandle, PlayerItem, SourceKey};
use crate::relay::pull::{def_error, parse_url, source_key, DefError};
use crate::relay::RelayContext;
use crate::store::push_outputs::PushOutputRow;

pub const MAX_GROUPS: usize = 16;
pub const MAX_TARGETS: usize = 64;
pub const RECONNECT_DELAY_MS: std::ops::RangeInclusive<i64> = 100..=3_600_000;
/// A connection that dropped sooner than this after connecting waits the
/// reconnect delay before its retry (damps a target that accepts and drops).
const MIN_HEALTHY: Duration = Duration::from_secs(1);
/// While the source is vacant, how often the worker looks again.
const SOURCE_POLL: Duration = Duration::from_millis(500);

/// A validated push output.
#[derive(Debug, Clone)]
pub struct OutputDef {
    pub id: Uuid,
    pub node_id: String,
    pub key: SourceKey,
    pub targets: Vec<Vec<ClientUrl>>,
    pub enabled: bool,
    pub reconnect_delay: Duration,
    pub updated_at: DateTime<Utc>,
}

impl OutputDef {
    pub fn from_row(row: &PushOutputRow) -> Result<Self, DefError> {
        let key = source_key(&row.stream, &row.source_id)?;
        let groups: Vec<Vec<Option<String>>> = serde_json::from_value(row.targets.clone())
            .map_err(|_| {
                def_error(
                    "targets",
                    "must be an array of arrays of URLs ([[url, ...], ...])",
                )
            })?;
        if groups.is_empty() || groups.len() > MAX_GROUPS {
            return Err(def_error(
                "targets",
                format!("between 1 and {MAX_GROUPS} groups are needed"),
            ));
        }
        let total: usize = groups.iter().map(Vec::len).sum();
        if total > MAX_TARGETS {
            return Err(def_error(
                "targets",
                format!("at most {MAX_TARGETS} targets in all"),
            ));
        }
        let mut targets = Vec::with_capacity(groups.len());
        for (g, group) in groups.iter().enumerate() {
            if group.is_empty() {
                return Err(def_error(format!("targets[{g}]"), "a group is empty"));
            }
            targets.push(
                group
                    .iter()
                    .enumerate()
                    .map(|(i, u)| parse_url(format!("targets[{g}][{i}]"), u.as_ref()))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        if !RECONNECT_DELAY_MS.contains(&row.reconnect_delay_ms) {
            return Err(def_error(
                "reconnect_delay_ms",
                format!(
                    "must be between {} and {}",
                    RECONNECT_DELAY_MS.start(),
                    RECONNECT_DELAY_MS.end()
                ),
            ));
        }
        Ok(Self {
            id: row.id,
            node_id: row.node_id.clone(),
            key,
            targets,
            enabled: row.enabled,
            reconnect_delay: Duration::from_millis(row.reconnect_delay_ms as u64),
            updated_at: row.updated_at,
        })
    }
}

/// What a push output is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputState {
    /// The source has no media: nothing to send, no connection held.
    Idle,
    /// Connecting to `target`.
    Connecting,
    /// Sending to `target`.
    Connected,
    /// Every target failed: waiting `reconnect_delay_ms`.
    Waiting,
    /// `enabled` is false.
    Disabled,
    /// Stopped (deleted, replaced or the node stopped).
    Stopped,
}

/// A push output's live state, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutputStatus {
    pub state: OutputState,
    /// The target being tried or sent to, secrets masked.
    pub target: Option<String>,
    /// Its position: `targets[group][index]`.
    pub target_group: Option<usize>,
    pub target_index: Option<usize>,
    /// When `state` began.
    pub since: DateTime<Utc>,
    /// Bytes sent since the output started on this node.
    pub bytes_sent: u64,
    /// Established connections that dropped.
    pub drops: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// A worker's state: the status plus the live byte counter.
#[derive(Debug, Clone)]
pub struct OutputRuntime {
    /// The source it sends (for the streams API).
    pub key: SourceKey,
    status: OutputStatus,
    bytes_done: u64,
    live: Option<Counter>,
}

impl OutputRuntime {
    pub fn new(key: SourceKey, enabled: bool) -> Self {
        Self {
            key,
            status: OutputStatus {
                state: if enabled {
                    OutputState::Idle
                } else {
                    OutputState::Disabled
                },
                target: None,
                target_group: None,
                target_index: None,
                since: Utc::now(),
                bytes_sent: 0,
                drops: 0,
                last_error: None,
                last_error_at: None,
            },
            bytes_done: 0,
            live: None,
        }
    }

    pub fn view(&self) -> OutputStatus {
        let mut s = self.status.clone();
        s.bytes_sent = self.bytes_done + self.live.as_ref().map_or(0, Counter::get);
        s
    }

    fn set_state(&mut self, state: OutputState) {
        if self.status.state != state {
            self.status.state = state;
            self.status.since = Utc::now();
        }
    }

    fn target(&mut self, t: Option<(TargetRef, &ClientUrl)>) {
        self.status.target = t.map(|(_, u)| u.redacted());
        self.status.target_group = t.map(|(r, _)| r.group);
        self.status.target_index = t.map(|(r, _)| r.index);
    }

    fn error(&mut self, e: String) {
        self.status.last_error = Some(e);
        self.status.last_error_at = Some(Utc::now());
    }
}

/// Join the source as a player and wait for its first item (the source has
/// media). `None` when cancelled or the engine is gone.
async fn wait_for_source(
    ctx: &RelayContext,
    key: &SourceKey,
    url: &ClientUrl,
    cancel: &CancellationToken,
) -> Option<(PlayerHandle, PlayerItem)> {
    loop {
        let mut player = ctx
            .engine
            .play(key.clone(), client::push_format(url))
            .await
            .ok()?;
        let first = tokio::select! {
            _ = cancel.cancelled() => None,
            i = player.items.recv() => i,
        };
        match first {
            Some(PlayerItem::Close { .. }) => {
                ctx.engine.unplay(key.clone(), player.id).await;
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(SOURCE_POLL) => {}
                }
            }
            Some(item) => return Some((player, item)),
            None => {
                ctx.engine.unplay(key.clone(), player.id).await;
                return None;
            }
        }
    }
}

/// The worker of one push output. Ends when cancelled.
pub async fn run(
    def: OutputDef,
    ctx: Arc<RelayContext>,
    cancel: CancellationToken,
    status: watch::Sender<OutputRuntime>,
) {
    if !def.enabled {
        status.send_modify(|s| s.set_state(OutputState::Disabled));
        cancel.cancelled().await;
        return;
    }
    let id = def.id.to_string();
    let m = &ctx.metrics;
    let shape = Failover::shape_of(&def.targets);
    let start = rand::random_range(0..shape.len());
    let Ok(mut rule) = Failover::new(&shape, start) else {
        return;
    };
    let mut step = rule.first();
    loop {
        let t = match step {
            Step::Wait => {
                status.send_modify(|s| {
                    s.set_state(OutputState::Waiting);
                    s.target(None);
                });
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(def.reconnect_delay) => {}
                }
                step = rule.waited();
                continue;
            }
            Step::Try(t) => t,
        };
        let url = &def.targets[t.group][t.index];
        status.send_modify(|s| {
            if s.status.state != OutputState::Connected {
                s.set_state(OutputState::Idle);
            }
        });
        let Some((mut player, first)) = wait_for_source(&ctx, &def.key, url, &cancel).await else {
            break;
        };
        status.send_modify(|s| {
            s.set_state(OutputState::Connecting);
            s.target(Some((t, url)));
        });
        let connected = tokio::select! {
            _ = cancel.cancelled() => None,
            r = client::push(url, &ctx.client) => Some(r),
        };
        let mut session = match connected {
            None => {
                ctx.engine.unplay(def.key.clone(), player.id).await;
                break;
            }
            Some(Err(e)) => {
                ctx.engine.unplay(def.key.clone(), player.id).await;
                tracing::info!(output = %def.id, target = %url, error = %e, "push output: target failed");
                status.send_modify(|s| s.error(format!("{url}: {e}")));
                step = rule.failed();
                continue;
            }
            Some(Ok(s)) => s,
        };
        rule.connected();
        let began = Instant::now();
        let counter = session.counter();
        tracing::info!(output = %def.id, target = %url, "push output: connected");
        m.output_connected.with_label_values(&[&id]).set(1);
        status.send_modify(|s| {
            s.set_state(OutputState::Connected);
            s.live = Some(counter.clone());
        });
        let mut reported = 0;
        let result = match session.send(first).await {
            Err(e) => Err(e),
            Ok(false) => Ok(PushEnd::Closed),
            Ok(true) => {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let pump = session.pump(&mut player.items, &cancel);
                tokio::pin!(pump);
                loop {
                    tokio::select! {
                        r = &mut pump => break r,
                        _ = tick.tick() => {
                            let now = counter.get();
                            m.output_bytes.with_label_values(&[&id]).inc_by(now - reported);
                            reported = now;
                        }
                    }
                }
            }
        };
        if matches!(result, Ok(PushEnd::Cancelled)) {
            flush(&mut session, &mut player).await;
        }
        ctx.engine.unplay(def.key.clone(), player.id).await;
        session.close().await;
        m.output_connected.with_label_values(&[&id]).set(0);
        let bytes = counter.get();
        m.output_bytes
            .with_label_values(&[&id])
            .inc_by(bytes.saturating_sub(reported));
        status.send_modify(|s| {
            s.bytes_done += bytes;
            s.live = None;
        });
        match result {
            Ok(PushEnd::Cancelled) | Ok(PushEnd::ItemsEnded) => break,
            Ok(PushEnd::Closed) => {
                // The source went away: keep the target, wait for media.
                tracing::info!(output = %def.id, target = %url, "push output: source vacant; disconnected");
                step = Step::Try(t);
            }
            Err(e) => {
                tracing::info!(output = %def.id, target = %url, error = %e, "push output: connection dropped");
                m.output_drops.with_label_values(&[&id]).inc();
                status.send_modify(|s| {
                    s.status.drops += 1;
                    s.error(format!("{url}: {e}"));
                });
                if began.elapsed() < MIN_HEALTHY {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(def.reconnect_delay) => {}
                    }
                }
                step = rule.dropped();
            }
        }
    }
    status.send_modify(|s| {
        s.set_state(OutputState::Stopped);
        s.target(None);
    });
}

/// On stop: send what the engine already queued (bounded), so the target
/// gets everything up to the moment the output stopped.
async fn flush(session: &mut client::PushSession, player: &mut PlayerHandle) {
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(item) = player.items.try_recv() {
            if !matches!(session.send(item).await, Ok(true)) {
                break;
            }
        }
    })
    .await;
}

/// A row as the audit log and the API show it (URLs with secrets masked;
/// a target that cannot be parsed is shown as a marker).
pub fn redacted_targets(targets: &serde_json::Value) -> serde_json::Value {
    match serde_json::from_value::<Vec<Vec<Option<String>>>>(targets.clone()) {
        Ok(groups) => serde_json::json!(groups
            .iter()
            .map(|g| crate::relay::pull::redacted_urls(g))
            .collect::<Vec<_>>()),
        Err(_) => serde_json::json!("<invalid targets>"),
    }
}

pub fn audit_value(row: &PushOutputRow) -> serde_json::Value {
    serde_json::json!({
        "id": row.id,
        "node_id": row.node_id,
        "stream": row.stream,
        "source_id": row.source_id,
        "targets": redacted_targets(&row.targets),
        "enabled": row.enabled,
        "reconnect_delay_ms": row.reconnect_delay_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(targets: serde_json::Value) -> PushOutputRow {
        PushOutputRow {
            id: Uuid::new_v4(),
            node_id: "n1".into(),
            stream: "cam".into(),
            source_id: String::new(),
            targets,
            enabled: true,
            reconnect_delay_ms: 1_000,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn validates_targets() {
        let ok = row(serde_json::json!([
            ["rtmp://a/live/x?key=SECRET", "rtmp://b/live/x"],
            ["srt://c:9000"]
        ]));
        let d = OutputDef::from_row(&ok).unwrap();
        assert_eq!(Failover::shape_of(&d.targets), vec![2, 1]);
        assert!(!audit_value(&ok).to_string().contains("SECRET"));
        for (targets, field) in [
            (serde_json::json!("rtmp://a/live/x"), "targets"),
            (serde_json::json!([]), "targets"),
            (serde_json::json!([[]]), "targets[0]"),
            (
                serde_json::json!([["rtmp://a/live/x"], [null]]),
                "targets[1][0]",
            ),
            (serde_json::json!([["ftp://a/b/c"]]), "targets[0][0]"),
        ] {
            let e = OutputDef::from_row(&row(targets.clone())).unwrap_err();
            assert_eq!(e.field, field, "{targets}: {e}");
        }
        let mut r = ok.clone();
        r.reconnect_delay_ms = 0;
        assert_eq!(
            OutputDef::from_row(&r).unwrap_err().field,
            "reconnect_delay_ms"
        );
    }
}
