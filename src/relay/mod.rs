//! Long-running relay workers: pull inputs ([`pull`]: a feed pulled from
//! a remote RTMP/SRT server into the engine) and push outputs ([`push`]: a
//! source's output pushed to remote servers), and the registry that owns
//! them.
//!
//! [`Workers`] is one task owning every worker of a kind: the API and the
//! lifecycle send it commands over a bounded channel and get answers on
//! oneshots. Each worker is a task with its own cancellation token (a child
//! of the registry's) and publishes its state on a `watch` channel, which
//! the registry reads for the API. Starting a worker under an id that runs
//! already replaces it (the old one is cancelled).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod pull;
pub mod push;

use crate::client::ClientOptions;
use crate::config::Config;
use crate::engine::EngineHandle;
use crate::metrics::Metrics;
use crate::relay::pull::{PullInputDef, PullRuntime};
use crate::relay::push::{OutputDef, OutputRuntime};
use crate::store::Db;

/// What every relay worker needs.
pub struct RelayContext {
    pub engine: EngineHandle,
    pub db: Db,
    pub metrics: Arc<Metrics>,
    pub node_id: String,
    /// Connect and handshake limits; `no_input_timeout` is per pull input.
    pub client: ClientOptions,
}

impl RelayContext {
    pub fn new(config: &Config, engine: EngineHandle, db: Db, metrics: Arc<Metrics>) -> Self {
        Self {
            engine,
            db,
            metrics,
            node_id: config.node_id.clone(),
            client: ClientOptions {
                connect_timeout: Duration::from_millis(config.relay.connect_timeout_ms),
                handshake_timeout: Duration::from_millis(config.relay.handshake_timeout_ms),
                srt_latency: Duration::from_millis(config.srt.latency_ms),
                srt_udp_buffer_bytes: config.srt.udp_buffer_bytes,
                ..ClientOptions::default()
            },
        }
    }
}

/// The pull-input and push-output registries of a node.
pub struct Relays {
    pub ctx: Arc<RelayContext>,
    pub pulls: Workers<PullRuntime>,
    pub outputs: Workers<OutputRuntime>,
}

impl Relays {
    /// `pulls_stop` ends every pull input (the end of a drain); outputs are
    /// stopped by [`Workers::stop_all`] when the drain flushes them.
    pub fn new(ctx: RelayContext, pulls_stop: CancellationToken) -> Self {
        Self {
            ctx: Arc::new(ctx),
            pulls: Workers::spawn(pulls_stop),
            outputs: Workers::spawn(CancellationToken::new()),
        }
    }
}

impl Relays {
    /// Start (or restart with a new definition) a pull input.
    pub async fn start_pull(&self, def: PullInputDef) {
        let ctx = self.ctx.clone();
        self.pulls
            .start(
                def.id,
                PullRuntime::new(def.key.clone()),
                move |cancel, status| crate::relay::pull::run(def, ctx, cancel, status),
            )
            .await
    }

    /// Start (or restart with a new definition) a push output.
    pub async fn start_output(&self, def: OutputDef) {
        let ctx = self.ctx.clone();
        self.outputs
            .start(
                def.id,
                OutputRuntime::new(def.key.clone(), def.enabled),
                move |cancel, status| crate::relay::push::run(def, ctx, cancel, status),
            )
            .await
    }
}

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

enum Command<S> {
    Start {
        id: Uuid,
        status: watch::Receiver<S>,
        cancel: CancellationToken,
        job: Job,
    },
    Stop {
        id: Uuid,
        reply: oneshot::Sender<Option<JoinHandle<()>>>,
    },
    StopAll {
        reply: oneshot::Sender<Vec<JoinHandle<()>>>,
    },
    Status {
        ids: Option<Vec<Uuid>>,
        reply: oneshot::Sender<HashMap<Uuid, S>>,
    },
    Finished {
        id: Uuid,
        generation: u64,
    },
}

struct Entry<S> {
    generation: u64,
    cancel: CancellationToken,
    status: watch::Receiver<S>,
    handle: JoinHandle<()>,
}

/// A registry of workers whose state is `S`. Cheap to clone.
pub struct Workers<S> {
    tx: mpsc::Sender<Command<S>>,
    parent: CancellationToken,
}

impl<S> Clone for Workers<S> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            parent: self.parent.clone(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Workers<S> {
    /// Start the registry task; every worker's token is a child of `parent`.
    /// The task ends when every handle is gone.
    pub fn spawn(parent: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(Self::run(rx, tx.downgrade()));
        Self { tx, parent }
    }

    async fn run(mut rx: mpsc::Receiver<Command<S>>, me: mpsc::WeakSender<Command<S>>) {
        let mut entries: HashMap<Uuid, Entry<S>> = HashMap::new();
        let mut generation = 0u64;
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Start {
                    id,
                    status,
                    cancel,
                    job,
                } => {
                    generation += 1;
                    let g = generation;
                    let me = me.clone();
                    let handle = tokio::spawn(async move {
                        job.await;
                        if let Some(tx) = me.upgrade() {
                            let _ = tx.send(Command::Finished { id, generation: g }).await;
                        }
                    });
                    let entry = Entry {
                        generation: g,
                        cancel,
                        status,
                        handle,
                    };
                    if let Some(old) = entries.insert(id, entry) {
                        old.cancel.cancel();
                    }
                }
                Command::Stop { id, reply } => {
                    let handle = entries.remove(&id).map(|e| {
                        e.cancel.cancel();
                        e.handle
                    });
                    let _ = reply.send(handle);
                }
                Command::StopAll { reply } => {
                    let handles = entries
                        .drain()
                        .map(|(_, e)| {
                            e.cancel.cancel();
                            e.handle
                        })
                        .collect();
                    let _ = reply.send(handles);
                }
                Command::Status { ids, reply } => {
                    let out = match ids {
                        None => entries
                            .iter()
                            .map(|(id, e)| (*id, e.status.borrow().clone()))
                            .collect(),
                        Some(ids) => ids
                            .into_iter()
                            .filter_map(|id| {
                                entries.get(&id).map(|e| (id, e.status.borrow().clone()))
                            })
                            .collect(),
                    };
                    let _ = reply.send(out);
                }
                Command::Finished { id, generation } => {
                    if entries.get(&id).is_some_and(|e| e.generation == generation) {
                        entries.remove(&id);
                    }
                }
            }
        }
    }

    /// Start (or replace) worker `id`: `job` gets its cancellation token and
    /// the sender of its state, which starts as `initial`.
    pub async fn start<F, Fut>(&self, id: Uuid, initial: S, job: F)
    where
        F: FnOnce(CancellationToken, watch::Sender<S>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (status_tx, status) = watch::channel(initial);
        let cancel = self.parent.child_token();
        let job = Box::pin(job(cancel.clone(), status_tx));
        let _ = self
            .tx
            .send(Command::Start {
                id,
                status,
                cancel,
                job,
            })
            .await;
    }

    /// Stop worker `id` and wait for it to end (at most `wait`). Returns
    /// whether it was running.
    pub async fn stop(&self, id: Uuid, wait: Duration) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Stop { id, reply }).await.is_err() {
            return false;
        }
        match rx.await {
            Ok(Some(handle)) => {
                let _ = tokio::time::timeout(wait, handle).await;
                true
            }
            _ => false,
        }
    }

    /// Stop every worker and wait for them (at most `wait` in all).
    pub async fn stop_all(&self, wait: Duration) -> usize {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::StopAll { reply }).await.is_err() {
            return 0;
        }
        let handles = rx.await.unwrap_or_default();
        let n = handles.len();
        let _ = tokio::time::timeout(wait, futures::future::join_all(handles)).await;
        n
    }

    /// The state of the given workers (all when `None`) that are running.
    pub async fn status(&self, ids: Option<Vec<Uuid>>) -> HashMap<Uuid, S> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Status { ids, reply }).await.is_err() {
            return HashMap::new();
        }
        rx.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_replace_stop_and_finish() {
        let w: Workers<u32> = Workers::spawn(CancellationToken::new());
        let id = Uuid::new_v4();
        w.start(id, 1, |cancel, tx| async move {
            tx.send_replace(2);
            cancel.cancelled().await;
        })
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(w.status(None).await.get(&id), Some(&2));
        // Replacing cancels the first one.
        let (seen_tx, seen) = oneshot::channel();
        w.start(id, 10, |cancel, _| async move {
            cancel.cancelled().await;
            let _ = seen_tx.send(());
        })
        .await;
        assert_eq!(w.status(Some(vec![id])).await.get(&id), Some(&10));
        assert!(w.stop(id, Duration::from_secs(1)).await);
        seen.await.expect("the worker saw its cancellation");
        assert!(!w.stop(id, Duration::from_secs(1)).await);
        // A worker that ends by itself leaves the registry.
        let other = Uuid::new_v4();
        w.start(other, 0, |_, _| async {}).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(w.status(None).await.is_empty());
        // The parent token stops everything.
        let parent = CancellationToken::new();
        let w: Workers<u32> = Workers::spawn(parent.clone());
        let (done_tx, done) = oneshot::channel();
        w.start(id, 0, |cancel, _| async move {
            cancel.cancelled().await;
            let _ = done_tx.send(());
        })
        .await;
        parent.cancel();
        done.await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(w.stop_all(Duration::from_secs(1)).await, 0);
    }
}
