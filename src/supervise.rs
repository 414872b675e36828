//! Listener supervision: the state of every listener (RTMP, SRT, HTTP),
//! which readiness and `/api/health` report, and the supervisor that
//! restarts a listener whose task ended.
//!
//! A listener is `up`, `failing` (its task runs but cannot accept, e.g.
//! out of file descriptors; set and cleared by the listener itself) or
//! `down` (its task ended, by an error or a panic, and is being rebound
//! with backoff). The node is ready only while every listener is up.
//!
//! Invariants: a supervisor never restarts a listener after its stop
//! token fired; a panic inside a listener task ends that task only; the
//! delay between restarts doubles up to a maximum and resets once a
//! listener has stayed up for [`Backoff::stable_after`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The text of a caught panic (protocol libraries run under
/// `catch_unwind` so that malformed peer input closes one session only).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Where a listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerState {
    Up,
    /// Running, but accepting fails (since `since`).
    Failing {
        reason: String,
        since: Instant,
    },
    /// Its task ended; being rebound.
    Down {
        reason: String,
        since: Instant,
    },
}

impl ListenerState {
    pub fn label(&self) -> &'static str {
        match self {
            ListenerState::Up => "up",
            ListenerState::Failing { .. } => "failing",
            ListenerState::Down { .. } => "down",
        }
    }
}

/// One listener as readiness and health see it.
#[derive(Debug, Clone)]
pub struct ListenerStatus {
    /// `rtmp`, `srt` or `http`.
    pub name: &'static str,
    pub addr: SocketAddr,
    pub state: ListenerState,
    /// Times its task ended and was started again.
    pub restarts: u64,
}

impl ListenerStatus {
    /// A one-line account of a listener that is not up.
    pub fn problem(&self) -> Option<String> {
        let what = self.name.to_ascii_uppercase();
        match &self.state {
            ListenerState::Up => None,
            ListenerState::Failing { reason, since } => Some(format!(
                "{what} listener on {} cannot accept for {} ms: {reason}",
                self.addr,
                since.elapsed().as_millis()
            )),
            ListenerState::Down { reason, since } => Some(format!(
                "{what} listener on {} down for {} ms ({reason}); rebinding",
                self.addr,
                since.elapsed().as_millis()
            )),
        }
    }
}

/// Every listener of the node. Shared by readiness, health and the
/// listeners' supervisors.
#[derive(Debug, Default)]
pub struct Listeners {
    all: Mutex<Vec<ListenerStatus>>,
}

impl Listeners {
    /// Add a listener (up) and return the handle that updates it.
    pub fn register(self: &Arc<Self>, name: &'static str, addr: SocketAddr) -> ListenerHandle {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.push(ListenerStatus {
            name,
            addr,
            state: ListenerState::Up,
            restarts: 0,
        });
        ListenerHandle {
            listeners: self.clone(),
            index: all.len() - 1,
        }
    }

    pub fn snapshot(&self) -> Vec<ListenerStatus> {
        self.all.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What keeps the node from being ready, if anything.
    pub fn problems(&self) -> Option<String> {
        let problems: Vec<String> = self.snapshot().iter().filter_map(|l| l.problem()).collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    pub fn all_up(&self) -> bool {
        self.snapshot().iter().all(|l| l.state == ListenerState::Up)
    }
}

/// Updates one listener's state.
#[derive(Debug, Clone)]
pub struct ListenerHandle {
    listeners: Arc<Listeners>,
    index: usize,
}

impl ListenerHandle {
    fn update<T>(&self, f: impl FnOnce(&mut ListenerStatus) -> T) -> T {
        let mut all = self.listeners.all.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut all[self.index])
    }

    pub fn name(&self) -> &'static str {
        self.update(|l| l.name)
    }

    pub fn state(&self) -> ListenerState {
        self.update(|l| l.state.clone())
    }

    /// Accepting has failed since `since`; a no-op when already failing.
    pub fn set_failing(&self, reason: String, since: Instant) {
        self.update(|l| {
            if !matches!(l.state, ListenerState::Failing { .. }) {
                l.state = ListenerState::Failing { reason, since };
            }
        })
    }

    /// Accepting works (again). Returns whether it was failing.
    pub fn clear_failing(&self) -> bool {
        self.update(|l| {
            let was = matches!(l.state, ListenerState::Failing { .. });
            if was {
                l.state = ListenerState::Up;
            }
            was
        })
    }

    fn set_down(&self, reason: String) {
        self.update(|l| {
            let since = match &l.state {
                ListenerState::Down { since, .. } => *since,
                _ => {
                    l.restarts += 1;
                    Instant::now()
                }
            };
            l.state = ListenerState::Down { reason, since };
        })
    }

    fn set_addr_up(&self, addr: SocketAddr) {
        self.update(|l| {
            l.addr = addr;
            l.state = ListenerState::Up;
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.update(|l| l.addr)
    }
}

/// Why a listener's task ended.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Ended(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A listener's accept loop. It returns `Ok(())` when its stop token
/// fires; any other end is a failure the supervisor repairs.
pub type ServeFuture = Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send>>;

/// Binds the listener again (on the address it had) and returns its
/// accept loop.
pub type Rebind =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = std::io::Result<ServeFuture>> + Send>> + Send>;

/// Delays between restarts, and how a stop is waited for.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// A listener up this long counts as healthy: the next failure waits
    /// `first` again.
    pub stable_after: Duration,
    /// How long a listener may take to end once its stop token fired
    /// before its task is aborted.
    pub stop_grace: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(200),
            max: Duration::from_secs(10),
            stable_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(2),
        }
    }
}

/// Run `serve` under supervision until `stop` fires: when it ends any
/// other way (an error, a panic, or returning while not stopped) that is
/// logged as an error, the listener is marked down (readiness 503 with the
/// reason) and `rebind` is retried with backoff until it succeeds.
/// `on_restart` is called for each failure (metrics).
pub async fn supervise(
    handle: ListenerHandle,
    mut serve: ServeFuture,
    mut rebind: Rebind,
    stop: CancellationToken,
    backoff: Backoff,
    on_restart: impl Fn() + Send,
) {
    let name = handle.name();
    let mut delay = backoff.first;
    loop {
        let started = Instant::now();
        let mut task = tokio::spawn(serve);
        let outcome = tokio::select! {
            r = &mut task => r,
            _ = stop.cancelled() => {
                // A listener ends by itself on its stop token; it gets a
                // moment to close what it holds.
                if tokio::time::timeout(backoff.stop_grace, &mut task).await.is_err() {
                    task.abort();
                }
                return;
            }
        };
        if stop.is_cancelled() {
            return;
        }
        let reason = match outcome {
            Ok(Ok(())) => "its task stopped".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(&*e.into_panic())),
            Err(e) => format!("its task was cancelled: {e}"),
        };
        if started.elapsed() >= backoff.stable_after {
            delay = backoff.first;
        }
        on_restart();
        handle.set_down(reason.clone());
        tracing::error!(
            listener = name,
            addr = %handle.addr(),
            %reason,
            retry_in_ms = delay.as_millis() as u64,
            "listener ended; not ready until it is bound again"
        );
        serve = loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
            delay = (delay * 2).min(backoff.max);
            match rebind().await {
                Ok(s) => break s,
                Err(e) => {
                    handle.set_down(format!("{reason}; rebinding failed: {e}"));
                    tracing::error!(
                        listener = name,
                        addr = %handle.addr(),
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "listener could not be bound again"
                    );
                }
            }
        };
        let addr = handle.addr();
        handle.set_addr_up(addr);
        tracing::info!(listener = name, %addr, "listener bound again; ready");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fast() -> Backoff {
        Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(200),
            stable_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(2),
        }
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A real TCP listener whose accept loop panics on its first client,
    /// as a protocol library would on hostile input: the listener is down
    /// with the panic as the reason, is bound again on the same address,
    /// serves the next client, and the node's listeners are all up again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_listener_is_reported_and_rebound() {
        let listeners = Arc::new(Listeners::default());
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let handle = listeners.register("rtmp", addr);
        let served = Arc::new(AtomicUsize::new(0));
        let binds = Arc::new(AtomicUsize::new(1));

        // Generation 1 panics on its first client; later ones serve.
        fn accept_loop(
            tcp: tokio::net::TcpListener,
            generation: usize,
            served: Arc<AtomicUsize>,
        ) -> ServeFuture {
            Box::pin(async move {
                loop {
                    let (mut s, _) = tcp.accept().await?;
                    if generation == 1 {
                        panic!("hostile input in generation {generation}");
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                    use tokio::io::AsyncWriteExt;
                    let _ = s.write_all(b"ok").await;
                }
            })
        }
        let first = accept_loop(tcp, 1, served.clone());
        let rebind: Rebind = {
            let served = served.clone();
            let binds = binds.clone();
            Box::new(move || {
                let served = served.clone();
                let generation = binds.fetch_add(1, Ordering::SeqCst) + 1;
                Box::pin(async move {
                    let tcp = tokio::net::TcpListener::bind(addr).await?;
                    Ok(accept_loop(tcp, generation, served))
                })
            })
        };
        let stop = CancellationToken::new();
        let restarts = Arc::new(AtomicUsize::new(0));
        let r = restarts.clone();
        let task = tokio::spawn(supervise(
            handle.clone(),
            first,
            rebind,
            stop.clone(),
            fast(),
            move || {
                r.fetch_add(1, Ordering::SeqCst);
            },
        ));
        assert!(listeners.all_up());

        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        wait_until("the panic to be reported", || !listeners.all_up()).await;
        let problem = listeners.problems().expect("a problem");
        assert!(problem.contains("RTMP listener"), "{problem}");
        assert!(problem.contains("panicked: hostile input"), "{problem}");

        wait_until("the listener to be bound again", || listeners.all_up()).await;
        assert_eq!(restarts.load(Ordering::SeqCst), 1);
        assert_eq!(listeners.snapshot()[0].restarts, 1);
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 2];
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .expect("served within 5 s")
            .unwrap();
        assert_eq!(&buf, b"ok");
        assert_eq!(served.load(Ordering::SeqCst), 1);

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the supervisor ends with its stop token")
            .unwrap();
    }

    /// A listener whose task returns an error is rebound; while the
    /// address is taken, rebinding is retried with backoff and the
    /// listener stays down with the bind error in its reason.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rebinding_is_retried_until_the_address_is_free() {
        let listeners = Arc::new(Listeners::default());
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let handle = listeners.register("srt", addr);
        let first: ServeFuture = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(ServeError::Ended("the SRT listener task ended".into()))
        });
        // The address a rebind wants is held by someone else at first.
        let squatter = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let wanted = squatter.local_addr().unwrap();
        let squatter = Arc::new(Mutex::new(Some(squatter)));
        let attempts = Arc::new(AtomicUsize::new(0));
        let a = attempts.clone();
        let rebind: Rebind = Box::new(move || {
            a.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let s = tokio::net::UdpSocket::bind(wanted).await?;
                let serve: ServeFuture = Box::pin(async move {
                    let _s = s;
                    std::future::pending::<()>().await;
                    Ok(())
                });
                Ok(serve)
            })
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(
            handle,
            first,
            rebind,
            stop.clone(),
            fast(),
            || {},
        ));
        wait_until("a failed rebind", || {
            listeners
                .problems()
                .is_some_and(|p| p.contains("rebinding failed"))
        })
        .await;
        assert!(attempts.load(Ordering::SeqCst) >= 1);
        let problem = listeners.problems().unwrap();
        assert!(problem.contains("SRT listener"), "{problem}");
        assert!(problem.contains("the SRT listener task ended"), "{problem}");
        squatter.lock().unwrap().take();
        wait_until("the listener to be up", || listeners.all_up()).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the supervisor ends with its stop token")
            .unwrap();
    }

    #[test]
    fn failing_is_set_once_and_cleared() {
        let listeners = Arc::new(Listeners::default());
        let h = listeners.register("rtmp", "127.0.0.1:1935".parse().unwrap());
        let since = Instant::now();
        h.set_failing("Too many open files".into(), since);
        h.set_failing("again".into(), Instant::now());
        assert!(
            matches!(h.state(), ListenerState::Failing { since: s, ref reason } if s == since && reason == "Too many open files")
        );
        assert!(!listeners.all_up());
        assert!(listeners
            .problems()
            .unwrap()
            .starts_with("RTMP listener on 127.0.0.1:1935 cannot accept"));
        assert!(h.clear_failing());
        assert!(!h.clear_failing());
        assert!(listeners.all_up() && listeners.problems().is_none());
    }
}
