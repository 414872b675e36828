//! Links as they are in the field: a userspace proxy on loopback that sits
//! between an encoder and the gateway and impairs what crosses it — added
//! delay, jitter, random loss (UDP), a bandwidth cap — and can pull the
//! cable ("blackhole": stop forwarding in both directions without closing
//! anything) or cut every connection (TCP).
//!
//! One [`Link`] forwards one listening address to one upstream address:
//! TCP (RTMP) connection by connection, UDP (SRT) per client address with
//! an upstream socket of its own. Each direction is a FIFO: a chunk or
//! datagram read at `t` leaves at `max(t + delay ± jitter, previous
//! release, link free)`, so nothing is reordered (as with netem's
//! `rate`/`delay` in order), and a bandwidth cap spaces the chunks by their
//! size. Loss applies to UDP datagrams only (TCP has its own recovery and
//! loss on it shows as delay). Every task ends when its [`Link`] drops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// How a link impairs each direction of its traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Impairment {
    /// Added one-way delay.
    pub delay_ms: u64,
    /// Each chunk's delay is `delay_ms` ± up to this much (uniform).
    pub jitter_ms: u64,
    /// Fraction of UDP datagrams dropped, 0.0–1.0.
    pub loss: f64,
    /// Bandwidth cap in bit/s (0: none).
    pub rate_bps: u64,
}

impl Impairment {
    pub fn delay(delay_ms: u64, jitter_ms: u64) -> Self {
        Self {
            delay_ms,
            jitter_ms,
            ..Self::default()
        }
    }

    pub fn with_loss(mut self, loss: f64) -> Self {
        self.loss = loss.clamp(0.0, 1.0);
        self
    }

    pub fn with_rate(mut self, rate_bps: u64) -> Self {
        self.rate_bps = rate_bps;
        self
    }

    /// "40 ± 20 ms, 1 % loss" for reports.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("{} ± {} ms", self.delay_ms, self.jitter_ms)];
        if self.loss > 0.0 {
            parts.push(format!("{:.1} % loss", self.loss * 100.0));
        }
        if self.rate_bps > 0 {
            parts.push(format!("{:.1} Mbit/s cap", self.rate_bps as f64 / 1e6));
        }
        parts.join(", ")
    }
}

/// Release times of one direction: in order, delayed, jittered, paced.
#[derive(Debug)]
struct Pacer {
    last: Option<Instant>,
    /// When the capped link has sent everything queued so far.
    free_at: Option<Instant>,
}

impl Pacer {
    fn new() -> Self {
        Self {
            last: None,
            free_at: None,
        }
    }

    /// When `len` bytes read at `now` leave, with `jitter` drawn in
    /// `-jitter_ms..=jitter_ms`.
    fn release(&mut self, imp: &Impairment, now: Instant, len: usize, jitter_ms: i64) -> Instant {
        let delay = (imp.delay_ms as i64 + jitter_ms).max(0) as u64;
        let mut at = now + Duration::from_millis(delay);
        if let Some(last) = self.last {
            at = at.max(last);
        }
        if imp.rate_bps > 0 {
            let start = self.free_at.map_or(now, |f| f.max(now));
            let busy = Duration::from_secs_f64(len as f64 * 8.0 / imp.rate_bps as f64);
            self.free_at = Some(start + busy);
            at = at.max(start + busy + Duration::from_millis(delay));
        }
        self.last = Some(at);
        at
    }
}

/// What a link counted, both directions together.
#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_blackhole: AtomicU64,
    dropped_queue: AtomicU64,
}

/// A snapshot of a link's counters.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct LinkStats {
    pub forwarded: u64,
    pub dropped_loss: u64,
    pub dropped_blackhole: u64,
    pub dropped_queue: u64,
}

struct Shared {
    imp: Mutex<Impairment>,
    blackhole: AtomicBool,
    open: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
    counters: Counters,
}

impl Shared {
    fn impairment(&self) -> Impairment {
        *self.imp.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blackholed(&self) -> bool {
        self.blackhole.load(Ordering::SeqCst)
    }

    fn track(&self, h: AbortHandle) {
        let mut v = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        v.retain(|t| !t.is_finished());
        v.push(h);
    }

    fn abort_all(&self) {
        let mut v = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for h in v.drain(..) {
            h.abort();
        }
    }

    fn jitter(&self, imp: &Impairment) -> i64 {
        if imp.jitter_ms == 0 {
            0
        } else {
            let j = imp.jitter_ms as i64;
            rand::random_range(-j..=j)
        }
    }

    /// Decide a chunk's fate on entry: `Some(release)` to forward it.
    fn admit(&self, pacer: &mut Pacer, len: usize, lossy: bool) -> Option<Instant> {
        if self.blackholed() {
            self.counters
                .dropped_blackhole
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let imp = self.impairment();
        if lossy && imp.loss > 0.0 && rand::random::<f64>() < imp.loss {
            self.counters.dropped_loss.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let jitter = self.jitter(&imp);
        Some(pacer.release(&imp, Instant::now(), len, jitter))
    }

    /// Whether a chunk due now still leaves (a cable pulled meanwhile takes
    /// what was in flight with it).
    fn leaves(&self) -> bool {
        if self.blackholed() {
            self.counters
                .dropped_blackhole
                .fetch_add(1, Ordering::Relaxed);
            false
        } else {
            self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
            true
        }
    }
}

/// Chunks queued per direction before a UDP datagram is dropped (a full
/// router queue) or a TCP reader waits (back-pressure).
const QUEUE: usize = 4096;
/// UDP clients one link forwards at most.
const MAX_UDP_CLIENTS: usize = 256;

/// One impaired link: listen on [`Link::addr`], forward to the upstream.
pub struct Link {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl Link {
    fn shared(imp: Impairment) -> Arc<Shared> {
        Arc::new(Shared {
            imp: Mutex::new(imp),
            blackhole: AtomicBool::new(false),
            open: AtomicBool::new(true),
            tasks: Mutex::new(Vec::new()),
            counters: Counters::default(),
        })
    }

    /// A TCP link (RTMP, PostgreSQL, Redis) to `upstream`.
    pub fn tcp(rt: &tokio::runtime::Handle, upstream: String, imp: Impairment) -> Result<Self> {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let shared = Self::shared(imp);
        let s = shared.clone();
        let accept = rt
            .spawn(async move {
                // Ends when the link drops (aborted).
                while let Ok((down, _)) = listener.accept().await {
                    if !s.open.load(Ordering::SeqCst) {
                        drop(down); // refused while cut
                        continue;
                    }
                    let Ok(up) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let a = tcp_direction(s.clone(), dr, uw);
                    let b = tcp_direction(s.clone(), ur, dw);
                    for h in a.into_iter().chain(b) {
                        s.track(h);
                    }
                }
            })
            .abort_handle();
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// A UDP link (SRT) to `upstream`: each client address gets an
    /// upstream socket of its own, so the gateway sees one peer per client.
    pub fn udp(rt: &tokio::runtime::Handle, upstream: SocketAddr, imp: Impairment) -> Result<Self> {
        let sock = Arc::new(rt.block_on(UdpSocket::bind("127.0.0.1:0"))?);
        let addr = sock.local_addr()?;
        let shared = Self::shared(imp);
        let s = shared.clone();
        let accept = rt
            .spawn(async move {
                // Per client: the queue towards upstream and its pacer.
                let mut clients: HashMap<SocketAddr, (mpsc::Sender<(Instant, Bytes)>, Pacer)> =
                    HashMap::new();
                let mut buf = vec![0u8; 65_536];
                // Ends when the link drops (aborted).
                while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                    if !clients.contains_key(&from) {
                        if clients.len() >= MAX_UDP_CLIENTS {
                            continue;
                        }
                        let Ok(tx) = udp_client(&s, sock.clone(), from, upstream).await else {
                            continue;
                        };
                        clients.insert(from, (tx, Pacer::new()));
                    }
                    let Some((tx, pacer)) = clients.get_mut(&from) else {
                        continue;
                    };
                    if let Some(at) = s.admit(pacer, n, true) {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        if tx.try_send((at, chunk)).is_err() {
                            s.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .abort_handle();
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// Pull the cable (`true`): nothing crosses in either direction, nothing
    /// is closed; `false` plugs it back in.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// Drop every connection (and UDP client) and refuse new TCP ones.
    pub fn cut(&self) {
        self.shared.open.store(false, Ordering::SeqCst);
        self.shared.abort_all();
    }

    /// Accept new connections again after [`Link::cut`].
    pub fn restore(&self) {
        self.shared.open.store(true, Ordering::SeqCst);
    }

    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        LinkStats {
            forwarded: c.forwarded.load(Ordering::Relaxed),
            dropped_loss: c.dropped_loss.load(Ordering::Relaxed),
            dropped_blackhole: c.dropped_blackhole.load(Ordering::Relaxed),
            dropped_queue: c.dropped_queue.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.abort_all();
    }
}

/// Forward one TCP direction: a reader that stamps each chunk with its
/// release time and a writer that sends it then. A close on either side
/// shuts the other's write half (a clean goodbye crosses, as it should).
fn tcp_direction(
    s: Arc<Shared>,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) -> [AbortHandle; 2] {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Bytes>)>(QUEUE);
    let s2 = s.clone();
    let reader = tokio::spawn(async move {
        let mut pacer = Pacer::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            if n == 0 {
                // The close travels like data (after what was sent before it).
                let at = pacer.last.unwrap_or_else(Instant::now);
                let _ = tx.send((at, None)).await;
                return;
            }
            if let Some(at) = s2.admit(&mut pacer, n, false) {
                if tx
                    .send((at, Some(Bytes::copy_from_slice(&buf[..n]))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            match chunk {
                Some(c) => {
                    if s.leaves() && to.write_all(&c).await.is_err() {
                        return;
                    }
                }
                None => {
                    if !s.blackholed() {
                        let _ = to.shutdown().await;
                    }
                    return;
                }
            }
        }
    });
    [reader.abort_handle(), writer.abort_handle()]
}

/// A new UDP client `client` of the link on `down`: an upstream socket
/// connected to `upstream`, a paced writer towards it, and a reader of its
/// answers paced back to the client. Returns the queue towards upstream.
async fn udp_client(
    s: &Arc<Shared>,
    down: Arc<UdpSocket>,
    client: SocketAddr,
    upstream: SocketAddr,
) -> Result<mpsc::Sender<(Instant, Bytes)>> {
    let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    up.connect(upstream).await?;
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(QUEUE);
    let (s1, up1) = (s.clone(), up.clone());
    let towards_upstream = tokio::spawn(async move {
        while let Some((at, d)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if s1.leaves() {
                let _ = up1.send(&d).await;
            }
        }
    });
    let (back_tx, mut back_rx) = mpsc::channel::<(Instant, Bytes)>(QUEUE);
    let s2 = s.clone();
    let from_upstream = tokio::spawn(async move {
        let mut pacer = Pacer::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = up.recv(&mut buf).await {
            if let Some(at) = s2.admit(&mut pacer, n, true) {
                if back_tx
                    .try_send((at, Bytes::copy_from_slice(&buf[..n])))
                    .is_err()
                {
                    s2.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let s3 = s.clone();
    let towards_client = tokio::spawn(async move {
        while let Some((at, d)) = back_rx.recv().await {
            tokio::time::sleep_until(at).await;
            if s3.leaves() {
                let _ = down.send_to(&d, client).await;
            }
        }
    });
    for h in [towards_upstream, from_upstream, towards_client] {
        s.track(h.abort_handle());
    }
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(p: &mut Pacer, imp: &Impairment, now: Instant, len: usize, j: i64) -> u64 {
        (p.release(imp, now, len, j) - now).as_millis() as u64
    }

    #[test]
    fn delay_and_jitter_keep_order() {
        let imp = Impairment::delay(40, 20);
        let mut p = Pacer::new();
        let t0 = Instant::now();
        assert_eq!(at(&mut p, &imp, t0, 100, 20), 60);
        // Read 1 ms later with the smallest jitter: still not before the first.
        let t1 = t0 + Duration::from_millis(1);
        let r = p.release(&imp, t1, 100, -20);
        assert!(r >= t0 + Duration::from_millis(60));
        // Jitter never makes a delay negative.
        let mut q = Pacer::new();
        assert_eq!(at(&mut q, &Impairment::delay(5, 20), t0, 1, -20), 0);
    }

    #[test]
    fn rate_cap_spaces_chunks_by_size() {
        // 1 Mbit/s: 12,500 bytes take 100 ms on the wire.
        let imp = Impairment::default().with_rate(1_000_000);
        let mut p = Pacer::new();
        let t0 = Instant::now();
        assert_eq!(at(&mut p, &imp, t0, 12_500, 0), 100);
        assert_eq!(at(&mut p, &imp, t0, 12_500, 0), 200);
        // After an idle second the link is free again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(at(&mut p, &imp, later, 12_500, 0), 100);
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// A TCP echo server behind a delayed link: bytes come back after about
    /// two delays; blackholed, nothing comes back and nothing is closed;
    /// plugged back in, the link carries data again.
    #[test]
    fn tcp_link_delays_and_blackholes() {
        let rt = rt();
        let echo = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let upstream = echo.local_addr().unwrap().to_string();
        rt.spawn(async move {
            while let Ok((mut c, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = c.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let link = Link::tcp(rt.handle(), upstream, Impairment::delay(50, 0)).unwrap();
        rt.block_on(async {
            let mut c = TcpStream::connect(link.addr).await.unwrap();
            let mut buf = [0u8; 5];
            let t = Instant::now();
            c.write_all(b"hello").await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf, b"hello");
            assert!(
                t.elapsed() >= Duration::from_millis(100),
                "{:?}",
                t.elapsed()
            );

            link.blackhole(true);
            c.write_all(b"lost!").await.unwrap();
            let r = tokio::time::timeout(Duration::from_millis(400), c.read(&mut buf)).await;
            assert!(r.is_err(), "blackholed link answered: {r:?}");

            link.blackhole(false);
            c.write_all(b"again").await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf, b"again");
        });
        let st = link.stats();
        assert!(st.dropped_blackhole >= 1 && st.forwarded >= 4, "{st:?}");
    }

    /// A UDP echo behind a lossy link: about the configured share of
    /// round trips is lost, the rest come back delayed.
    #[test]
    fn udp_link_loses_and_delays() {
        let rt = rt();
        let echo = rt.block_on(UdpSocket::bind("127.0.0.1:0")).unwrap();
        let upstream = echo.local_addr().unwrap();
        rt.spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        let imp = Impairment::delay(10, 5).with_loss(0.2);
        let link = Link::udp(rt.handle(), upstream, imp).unwrap();
        let got = rt.block_on(async {
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            c.connect(link.addr).await.unwrap();
            for i in 0..500u32 {
                c.send(&i.to_be_bytes()).await.unwrap();
                if i % 25 == 24 {
                    // Paced, so no socket buffer on the way overflows: the
                    // losses counted are the link's own.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let mut got = 0;
            let mut buf = [0u8; 16];
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(500), c.recv(&mut buf)).await
            {
                got += 1;
            }
            got
        });
        // Both directions lose 20 %: 64 % of 500 = 320 expected.
        assert!((220..=420).contains(&got), "{got} of 500 came back");
        let st = link.stats();
        assert!(st.dropped_loss > 100, "{st:?}");
    }
}
