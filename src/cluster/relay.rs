//! Node-to-node relay: a node whose players watch a source whose elected
//! feed is on another node pulls that feed from its node (RTMP, with a
//! cluster credential, never a publish token) and feeds it into the local
//! engine under the remote feed's own id: a *mirror* that the local switch
//! cuts to like any feed. With `cluster.prefetch_runner_up` the best other
//! remote feed is mirrored too, so a cross-node failover finds a cached
//! keyframe like a local one.
//!
//! Invariants: at most one relay per remote feed; a relay runs only while
//! the engine wants it (checked every [`CHECK`]); a broken relay is retried
//! with backoff ([`BACKOFF_MIN`]..[`BACKOFF_MAX`]) and reported to the
//! engine (the feed is unavailable *here* meanwhile) and in the streams API;
//! URLs are logged redacted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::registry::wall_ms;
use super::Inner;
use crate::client::{self, ClientOptions, ClientUrl};
use crate::domain::FeedId;
use crate::engine::{RelayState, WantedMirror};

/// How often the wanted mirrors are compared with the running relays.
const CHECK: Duration = Duration::from_millis(50);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

struct Running {
    cancel: CancellationToken,
}

pub(super) async fn relay_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut running: HashMap<FeedId, Running> = HashMap::new();
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(wanted) = inner
            .engine
            .wanted_mirrors(inner.settings.prefetch_runner_up)
            .await
        else {
            break;
        };
        let want: HashMap<FeedId, WantedMirror> = wanted.into_iter().map(|w| (w.feed, w)).collect();
        running.retain(|id, r| {
            let keep = want.contains_key(id);
            if !keep {
                r.cancel.cancel();
            }
            keep
        });
        for (id, w) in want {
            if running.contains_key(&id) {
                continue;
            }
            let Some(addr) = inner.peer_rtmp(&w.node) else {
                continue;
            };
            let cancel = stop.child_token();
            running.insert(
                id,
                Running {
                    cancel: cancel.clone(),
                },
            );
            tokio::spawn(relay(inner.clone(), w, addr, cancel));
        }
    }
    for r in running.values() {
        r.cancel.cancel();
    }
}

fn relay_url(inner: &Inner, w: &WantedMirror, addr: &str) -> Option<ClientUrl> {
    let credential = inner.secret.issue(&inner.settings.node, w.feed, wall_ms());
    let mut url = format!(
        "rtmp://{addr}/live/{}?feed={}&cluster={credential}",
        w.key.stream, w.feed
    );
    if !w.key.source.is_default() {
        url.push_str(&format!("&sourceId={}", w.key.source));
    }
    url.parse().ok()
}

/// One relay: pull, feed the engine, retry with backoff until cancelled.
async fn relay(inner: Arc<Inner>, w: WantedMirror, addr: String, cancel: CancellationToken) {
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        no_input_timeout: Duration::from_millis(1_500),
        srt_udp_buffer_bytes: inner.settings.srt_udp_buffer_bytes,
        ..ClientOptions::default()
    };
    let gauge = |state: &str, d: i64| {
        inner
            .metrics
            .cluster_relays
            .with_label_values(&[state])
            .add(d);
    };
    let mut backoff = BACKOFF_MIN;
    let mut state = RelayState::Connecting;
    let set = |from: &mut RelayState, to: RelayState| {
        if *from != to {
            gauge(from.as_str(), -1);
            gauge(to.as_str(), 1);
            *from = to;
        }
    };
    gauge(state.as_str(), 1);
    let _ = inner.engine.relay_state(w.feed, Some(state)).await;
    tracing::info!(feed = %w.feed, node = %w.node, stream = %w.key.stream, "relay: mirroring a remote feed");
    'outer: while !cancel.is_cancelled() {
        let Some(url) = relay_url(&inner, &w, &addr) else {
            tracing::warn!(feed = %w.feed, node = %w.node, "relay: cannot build the URL");
            break;
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => break 'outer,
            s = client::pull(&url, &opts) => s,
        };
        let why = match outcome {
            Ok(mut session) => {
                let mut live = false;
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => {
                            session.close().await;
                            break 'outer;
                        }
                        m = session.next() => m,
                    };
                    match next {
                        Ok(Some(media)) => {
                            if !live {
                                live = true;
                                backoff = BACKOFF_MIN;
                                set(&mut state, RelayState::Live);
                                let _ = inner.engine.relay_state(w.feed, Some(state)).await;
                            }
                            if inner.engine.media(w.feed, media).await.is_err() {
                                break 'outer;
                            }
                        }
                        Ok(None) => break "the feed ended on its node".to_owned(),
                        Err(e) => break e.to_string(),
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        set(&mut state, RelayState::Retrying);
        let _ = inner.engine.relay_state(w.feed, Some(state)).await;
        tracing::warn!(feed = %w.feed, node = %w.node, url = %url.redacted(), reason = %why,
            retry_in_ms = backoff.as_millis() as u64, "relay broke; retrying");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    gauge(state.as_str(), -1);
    let _ = inner.engine.relay_state(w.feed, None).await;
    tracing::info!(feed = %w.feed, node = %w.node, "relay stopped");
}
