//! Keeps live feeds true to their tokens' rows (DESIGN section 12: any
//! change to a token is applied to its live feeds on every node).
//!
//! [`recheck`] is the one path: it reads the token's current row and has
//! the engine judge each local live feed of the token with
//! [`crate::auth::publish::recheck`] (the admission judgement again, for
//! the secret, stream and address the feed was admitted with): a feed
//! still allowed stays, its grant brought up to date (expiry, whether
//! `priority=` may raise); a feed no longer allowed is disconnected with
//! the reason. The API runs it after every write to a token, the cluster
//! shell when another node says a token changed, and [`sweep`] every
//! `auth.token_recheck_ms` for the tokens whose row revision in PostgreSQL
//! differs from the one their feeds (or cached rows) were judged against:
//! a missed message, a change written by hand, a publish admitted from a
//! cached row while the row changed. Expiry itself is a timer in the
//! engine, not a re-check.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::auth::publish::{self, Admission, AdmitError};
use crate::domain::TokenId;
use crate::engine::{EngineGone, EngineHandle, Recheck, RevokedFeed, TokenJudge};

#[derive(Debug, thiserror::Error)]
pub enum RecheckError {
    /// The token's row (or the revisions) could not be read; nothing was
    /// judged. The next sweep tries again.
    #[error("cannot read the token rows")]
    Store(#[source] AdmitError),
    #[error(transparent)]
    Engine(#[from] EngineGone),
}

/// Judge every live feed of `token` on this node against its current row;
/// returns the feeds disconnected. Without live feeds of the token here it
/// only drops the cached row (no database read: a flood of change
/// messages for tokens this node does not serve costs nothing).
pub async fn recheck(
    admission: &Admission,
    engine: &EngineHandle,
    token: TokenId,
) -> Result<Vec<RevokedFeed>, RecheckError> {
    if engine.token_revisions(Some(token)).await?.is_empty() {
        // A publish racing this is admitted from a fresh row, or caught
        // by the periodic sweep.
        admission.invalidate(token);
        return Ok(Vec::new());
    }
    let state = admission
        .current(token)
        .await
        .map_err(RecheckError::Store)?;
    let judge: TokenJudge = Box::new(move |key, peer, grant| {
        match publish::recheck(token, &state, grant, &key.stream, peer.ip(), Utc::now()) {
            Ok(grant) => Recheck::Keep(grant),
            Err(refusal) => Recheck::Revoke(refusal.revoke_reason().to_owned()),
        }
    });
    let revoked = engine.recheck_token(token, judge).await?;
    if !revoked.is_empty() {
        tracing::info!(token_id = %token, feeds = revoked.len(),
            reasons = ?revoked.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
            "token changed: disconnected the live feeds it no longer allows");
    }
    Ok(revoked)
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Distinct tokens of live feeds compared.
    pub live_tokens: usize,
    /// Tokens whose feeds were judged again.
    pub rechecked: usize,
    /// Feeds disconnected.
    pub revoked: usize,
}

/// Compare revisions with PostgreSQL (one query per thousand tokens), drop
/// stale cached rows, and re-check the live feeds of changed tokens.
pub async fn sweep(admission: &Admission, engine: &EngineHandle) -> Result<Sweep, RecheckError> {
    let live = engine.token_revisions(None).await?;
    let mut report = Sweep {
        live_tokens: {
            let mut ids: Vec<_> = live.iter().map(|(t, _)| t.0).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len()
        },
        ..Sweep::default()
    };
    let stale = admission.stale(&live).await.map_err(RecheckError::Store)?;
    for token in stale {
        report.rechecked += 1;
        report.revoked += recheck(admission, engine, token).await?.len();
    }
    Ok(report)
}

/// Run [`sweep`] every `every` until `cancel` fires. A failing database is
/// logged once when it starts failing and once when it recovers.
pub fn spawn_sweeper(
    admission: Arc<Admission>,
    engine: EngineHandle,
    every: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            match sweep(&admission, &engine).await {
                Ok(s) => {
                    if failing {
                        tracing::info!("token re-check works again");
                        failing = false;
                    }
                    if s.rechecked > 0 {
                        tracing::info!(
                            rechecked = s.rechecked,
                            disconnected = s.revoked,
                            "periodic token re-check found changed tokens"
                        );
                    }
                }
                Err(RecheckError::Engine(_)) => break,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, source = ?std::error::Error::source(&e).map(ToString::to_string),
                            "periodic token re-check failed; live feeds are re-checked when it works again");
                        failing = true;
                    }
                }
            }
        }
    })
}
