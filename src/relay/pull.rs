//! Pull inputs (persistent pull streams): the gateway plays a remote
//! `rtmp://` or `srt://` URL and feeds what it receives into the election
//! as a feed like any encoder's (protocol `pull`, the input's priority).
//!
//! A worker makes **passes** over its URLs, in order. A URL that connects
//! becomes a feed until it ends (the source closes, no media for
//! `no_input_timeout_ms`, an error, or the engine disconnects it); then the
//! pass goes on with the next URL. A pass in which no URL delivered a frame
//! is a failed pass; after a pass the worker waits `reconnect_delay_ms`.
//! More than `retry_count` failed passes in a row (none = never) delete the
//! input and its row, so it is not restored again.
//!
//! Definitions are validated in one place, [`PullInputDef::from_row`], for
//! the API and for rows read at start-up alike: a stored row that fails is
//! reported and left untouched.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::client::{self, ClientUrl, Counter, PullSession};
use crate::domain::{FeedId, Priority, SourceId, StreamName, TokenId};
use crate::engine::{FeedControl, FeedMedia, FeedMeta, Protocol, PublishRefusal, SourceKey};
use crate::relay::RelayContext;
use crate::store::audit::NewAudit;
use crate::store::pull_inputs::{self as q, PullInputRow};

pub const MAX_URLS: usize = 16;
pub const NO_INPUT_MS: std::ops::RangeInclusive<i64> = 100..=3_600_000;
pub const RECONNECT_DELAY_MS: std::ops::RangeInclusive<i64> = 100..=3_600_000;
pub const MAX_RETRY_COUNT: i32 = 1_000_000;

/// A validated pull input.
#[derive(Debug, Clone)]
pub struct PullInputDef {
    pub id: Uuid,
    pub node_id: String,
    pub key: SourceKey,
    pub urls: Vec<ClientUrl>,
    pub priority: Priority,
    pub persistent: bool,
    pub retry_count: Option<u32>,
    pub no_input_timeout: Duration,
    pub reconnect_delay: Duration,
    pub updated_at: DateTime<Utc>,
}

/// Why a definition is unusable; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DefError {
    pub field: String,
    pub message: String,
}

pub(crate) fn def_error(field: impl Into<String>, message: impl Into<String>) -> DefError {
    DefError {
        field: field.into(),
        message: message.into(),
    }
}

/// Stream and source of a row.
pub(crate) fn source_key(stream: &str, source_id: &str) -> Result<SourceKey, DefError> {
    Ok(SourceKey {
        stream: stream
            .parse::<StreamName>()
            .map_err(|e| def_error("stream", e.to_string()))?,
        source: source_id
            .parse::<SourceId>()
            .map_err(|e| def_error("source_id", e.to_string()))?,
    })
}

/// One URL of a row.
pub(crate) fn parse_url(field: String, url: Option<&String>) -> Result<ClientUrl, DefError> {
    let url = url.ok_or_else(|| def_error(&field, "must not be null"))?;
    url.parse::<ClientUrl>()
        .map_err(|e| def_error(field, e.to_string()))
}

impl PullInputDef {
    pub fn from_row(row: &PullInputRow) -> Result<Self, DefError> {
        let key = source_key(&row.stream, &row.source_id)?;
        if row.urls.is_empty() || row.urls.len() > MAX_URLS {
            return Err(def_error(
                "urls",
                format!("between 1 and {MAX_URLS} URLs are needed"),
            ));
        }
        let urls = row
            .urls
            .iter()
            .enumerate()
            .map(|(i, u)| parse_url(format!("urls[{i}]"), u.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let retry_count = match row.retry_count {
            None => None,
            Some(n) if (0..=MAX_RETRY_COUNT).contains(&n) => Some(n as u32),
            Some(_) => {
                return Err(def_error(
                    "retry_count",
                    format!("must be between 0 and {MAX_RETRY_COUNT}, or null"),
                ))
            }
        };
        if !NO_INPUT_MS.contains(&row.no_input_timeout_ms) {
            return Err(def_error(
                "no_input_timeout_ms",
                format!(
                    "must be between {} and {}",
                    NO_INPUT_MS.start(),
                    NO_INPUT_MS.end()
                ),
            ));
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
            urls,
            priority: Priority(row.priority),
            persistent: row.persistent,
            retry_count,
            no_input_timeout: Duration::from_millis(row.no_input_timeout_ms as u64),
            reconnect_delay: Duration::from_millis(row.reconnect_delay_ms as u64),
            updated_at: row.updated_at,
        })
    }
}

/// What a pull input is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullState {
    /// Connecting to `url`.
    Connecting,
    /// Connected: a feed of its source.
    Receiving,
    /// Between passes (`reconnect_delay_ms`), or the node is draining.
    Waiting,
    /// `retry_count` exceeded: deleted.
    Expired,
    /// Stopped (deleted, replaced or the node stopped).
    Stopped,
}

/// A pull input's live state, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PullStatus {
    pub state: PullState,
    /// Index in `urls` of the URL being tried or received.
    pub url_index: Option<usize>,
    /// That URL, secrets masked.
    pub url: Option<String>,
    /// When `state` began.
    pub since: DateTime<Utc>,
    /// The feed it is in the election as (while receiving).
    pub feed_id: Option<Uuid>,
    /// Media bytes received since the input started on this node.
    pub bytes_received: u64,
    /// Failed passes in a row.
    pub failed_passes: u32,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// A worker's state: the status plus the live byte counter of its session.
#[derive(Debug, Clone)]
pub struct PullRuntime {
    /// The source it feeds (for the streams API).
    pub key: SourceKey,
    status: PullStatus,
    bytes_done: u64,
    live: Option<Counter>,
}

impl PullRuntime {
    pub fn new(key: SourceKey) -> Self {
        Self {
            key,
            status: PullStatus {
                state: PullState::Connecting,
                url_index: None,
                url: None,
                since: Utc::now(),
                feed_id: None,
                bytes_received: 0,
                failed_passes: 0,
                last_error: None,
                last_error_at: None,
            },
            bytes_done: 0,
            live: None,
        }
    }

    pub fn view(&self) -> PullStatus {
        let mut s = self.status.clone();
        s.bytes_received = self.bytes_done + self.live.as_ref().map_or(0, Counter::get);
        s
    }

    fn set_state(&mut self, state: PullState) {
        if self.status.state != state {
            self.status.state = state;
            self.status.since = Utc::now();
        }
    }

    fn error(&mut self, e: String) {
        self.status.last_error = Some(e);
        self.status.last_error_at = Some(Utc::now());
    }
}

/// How one connected session ended.
enum SessionEnd {
    /// Received frames before it ended (with the reason it ended).
    Delivered(String),
    /// Ended before any frame (with the reason).
    Nothing(String),
    /// Cancelled, or the engine is gone or draining: stop the worker.
    Stop,
}

/// The worker of one pull input. Ends when cancelled or expired.
pub async fn run(
    def: PullInputDef,
    ctx: Arc<RelayContext>,
    cancel: CancellationToken,
    status: watch::Sender<PullRuntime>,
) {
    let id = def.id.to_string();
    let m = &ctx.metrics;
    let mut failed_passes = 0u32;
    loop {
        let mut delivered = false;
        for (i, url) in def.urls.iter().enumerate() {
            status.send_modify(|s| {
                s.set_state(PullState::Connecting);
                s.status.url_index = Some(i);
                s.status.url = Some(url.redacted());
                s.status.feed_id = None;
            });
            let opts = client::ClientOptions {
                no_input_timeout: def.no_input_timeout,
                ..ctx.client.clone()
            };
            let session = tokio::select! {
                _ = cancel.cancelled() => break,
                r = client::pull(url, &opts) => r,
            };
            let session = match session {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(pull_input = %def.id, url = %url, error = %e, "pull input: URL failed");
                    m.pull_failures.with_label_values(&[&id]).inc();
                    status.send_modify(|s| s.error(format!("{url}: {e}")));
                    continue;
                }
            };
            match relay(&def, &ctx, url, session, &cancel, &status).await {
                SessionEnd::Delivered(why) => {
                    delivered = true;
                    tracing::info!(pull_input = %def.id, url = %url, reason = %why, "pull input: source ended");
                    status.send_modify(|s| s.error(format!("{url}: {why}")));
                }
                SessionEnd::Nothing(why) => {
                    m.pull_failures.with_label_values(&[&id]).inc();
                    tracing::info!(pull_input = %def.id, url = %url, reason = %why, "pull input: no media");
                    status.send_modify(|s| s.error(format!("{url}: {why}")));
                }
                SessionEnd::Stop => break,
            }
        }
        if cancel.is_cancelled() {
            break;
        }
        failed_passes = if delivered { 0 } else { failed_passes + 1 };
        status.send_modify(|s| s.status.failed_passes = failed_passes);
        if def.retry_count.is_some_and(|max| failed_passes > max) {
            expire(&def, &ctx, &status).await;
            return;
        }
        status.send_modify(|s| {
            s.set_state(PullState::Waiting);
            s.status.url_index = None;
            s.status.url = None;
        });
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(def.reconnect_delay) => {}
        }
    }
    status.send_modify(|s| s.set_state(PullState::Stopped));
}

/// Publish the session into the engine and relay its media until it ends.
async fn relay(
    def: &PullInputDef,
    ctx: &RelayContext,
    url: &ClientUrl,
    mut session: PullSession,
    cancel: &CancellationToken,
    status: &watch::Sender<PullRuntime>,
) -> SessionEnd {
    let meta = FeedMeta {
        id: FeedId::new_random(),
        token_id: TokenId(def.id),
        // The streams API shows pull feeds with the input's id as
        // `token_id` and the URL being received as the label.
        label: format!("pull {}", url.redacted()),
        priority: def.priority,
        pinned: false,
        protocol: Protocol::Pull,
        peer: session.peer(),
        grant: None,
    };
    let mut handle = match ctx.engine.publish(def.key.clone(), meta).await {
        Ok(Ok(h)) => h,
        Ok(Err(PublishRefusal::ShuttingDown)) | Err(_) => {
            session.close().await;
            status.send_modify(|s| s.set_state(PullState::Waiting));
            cancel.cancelled().await;
            return SessionEnd::Stop;
        }
        Ok(Err(refusal)) => {
            session.close().await;
            return SessionEnd::Nothing(format!("refused by the gateway: {refusal}"));
        }
    };
    let feed = handle.id;
    let counter = session.counter();
    status.send_modify(|s| {
        s.set_state(PullState::Receiving);
        s.status.feed_id = Some(feed.0);
        s.live = Some(counter.clone());
    });
    let id = def.id.to_string();
    ctx.metrics.pull_connected.with_label_values(&[&id]).set(1);
    let mut frames = 0u64;
    let end = loop {
        tokio::select! {
            _ = cancel.cancelled() => break None,
            c = handle.control.recv() => {
                let why = match c {
                    Some(FeedControl::Disconnect { reason }) => reason,
                    None => "engine dropped the feed".into(),
                };
                break Some(format!("disconnected by the gateway: {why}"));
            }
            m = session.next() => match m {
                Ok(Some(media)) => {
                    frames += u64::from(matches!(media, FeedMedia::Frame(_)));
                    if ctx.engine.media(feed, media).await.is_err() {
                        break None;
                    }
                }
                Ok(None) => break Some("the source ended the stream".to_owned()),
                Err(e) => break Some(e.to_string()),
            },
        }
    };
    ctx.engine.unpublish(feed).await;
    ctx.metrics.pull_connected.with_label_values(&[&id]).set(0);
    let bytes = counter.get();
    ctx.metrics
        .pull_bytes
        .with_label_values(&[&id])
        .inc_by(bytes);
    status.send_modify(|s| {
        s.bytes_done += bytes;
        s.live = None;
        s.status.feed_id = None;
    });
    session.close().await;
    match end {
        None => SessionEnd::Stop,
        Some(why) if frames > 0 => SessionEnd::Delivered(why),
        Some(why) => SessionEnd::Nothing(why),
    }
}

/// `retry_count` exceeded: delete the row (if nobody rewrote it meanwhile)
/// with an audit record, and stop.
async fn expire(def: &PullInputDef, ctx: &RelayContext, status: &watch::Sender<PullRuntime>) {
    let (id, updated_at) = (def.id, def.updated_at);
    let last_error = status.borrow().status.last_error.clone();
    let r = ctx
        .db
        .run(move |c| {
            use diesel::Connection;
            c.transaction(|c| {
                let row = q::delete_unchanged(c, id, updated_at)?;
                if let Some(row) = &row {
                    crate::store::audit::record(
                        c,
                        NewAudit {
                            actor: "system",
                            action: "pull_input.expired",
                            target: &format!("pull_input:{id}"),
                            before: Some(audit_value(row)),
                            after: Some(serde_json::json!({ "last_error": last_error })),
                        },
                    )?;
                }
                Ok(row.is_some())
            })
        })
        .await;
    match r {
        Ok(true) => {
            tracing::warn!(pull_input = %def.id, retry_count = ?def.retry_count, "pull input deleted: retry_count exceeded")
        }
        Ok(false) => {
            tracing::info!(pull_input = %def.id, "pull input expired; its row was already changed or deleted")
        }
        Err(e) => {
            tracing::error!(pull_input = %def.id, error = %e, "pull input expired but its row could not be deleted; it will be restored at the next start")
        }
    }
    ctx.metrics.forget_pull(&def.id.to_string());
    status.send_modify(|s| s.set_state(PullState::Expired));
}

/// A row as the audit log records it (URLs with secrets masked).
pub fn audit_value(row: &PullInputRow) -> serde_json::Value {
    serde_json::json!({
        "id": row.id,
        "node_id": row.node_id,
        "stream": row.stream,
        "source_id": row.source_id,
        "urls": redacted_urls(&row.urls),
        "priority": row.priority,
        "persistent": row.persistent,
        "retry_count": row.retry_count,
        "no_input_timeout_ms": row.no_input_timeout_ms,
        "reconnect_delay_ms": row.reconnect_delay_ms,
    })
}

/// URLs as shown outside: redacted, or a marker for an unusable one.
pub fn redacted_urls(urls: &[Option<String>]) -> Vec<String> {
    urls.iter()
        .map(|u| match u.as_deref().map(str::parse::<ClientUrl>) {
            Some(Ok(u)) => u.redacted(),
            _ => "<invalid URL>".to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> PullInputRow {
        PullInputRow {
            id: Uuid::new_v4(),
            node_id: "n1".into(),
            stream: "cam".into(),
            source_id: String::new(),
            urls: vec![
                Some("rtmp://127.0.0.1/live/a?token=x".into()),
                Some("srt://127.0.0.1:9000".into()),
            ],
            priority: Some(5),
            persistent: true,
            retry_count: Some(3),
            no_input_timeout_ms: 5_000,
            reconnect_delay_ms: 1_000,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn validates_every_field() {
        let d = PullInputDef::from_row(&row()).unwrap();
        assert_eq!(d.urls.len(), 2);
        assert_eq!(d.retry_count, Some(3));
        let bad = |f: fn(&mut PullInputRow), field: &str| {
            let mut r = row();
            f(&mut r);
            let e = PullInputDef::from_row(&r).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        };
        bad(|r| r.stream = "a b".into(), "stream");
        bad(|r| r.source_id = "a/b".into(), "source_id");
        bad(|r| r.urls.clear(), "urls");
        bad(|r| r.urls[1] = None, "urls[1]");
        bad(|r| r.urls[0] = Some("http://x/a/b".into()), "urls[0]");
        bad(|r| r.retry_count = Some(-1), "retry_count");
        bad(|r| r.no_input_timeout_ms = 0, "no_input_timeout_ms");
        bad(|r| r.reconnect_delay_ms = -5, "reconnect_delay_ms");
        let v = audit_value(&row());
        assert!(!v.to_string().contains("token=x"), "{v}");
    }
}
