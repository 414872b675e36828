//! The outbound client (`primacy::client`) against real peers: ffmpeg and
//! ffprobe listening for RTMP and SRT, and the gateway itself.

mod common;

use std::time::{Duration, Instant};

use common::gateway::Gateway;
use common::media::{self, ffmpeg_source, free_tcp_port, free_udp_port, Fixture, Player};
use primacy::client::{self, ClientError, ClientOptions, ClientUrl, PullSession, PushEnd};
use primacy::domain::{SourceId, StreamName};
use primacy::engine::{FeedMedia, SourceKey};
use primacy::media::{Codec, Track};
use tokio_util::sync::CancellationToken;

fn opts() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(5),
        no_input_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

fn url(s: &str) -> ClientUrl {
    s.parse().expect("valid client URL")
}

fn key(stream: &str) -> SourceKey {
    SourceKey {
        stream: stream.parse::<StreamName>().unwrap(),
        source: SourceId::default(),
    }
}

/// Pull until it connects (the listener may not be up yet), for at most 15 s.
async fn pull_retrying(u: &ClientUrl) -> PullSession {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        match client::pull(u, &opts()).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < end, "could not pull {u}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a pull delivered in its first `frames` frames.
#[derive(Debug, Default)]
struct Seen {
    configs: Vec<Codec>,
    metadata: bool,
    video: usize,
    audio: usize,
    keyframes: usize,
    first_is_keyframe: Option<bool>,
}

async fn collect(s: &mut PullSession, frames: usize) -> Seen {
    let mut seen = Seen::default();
    let mut last_video_dts = i64::MIN;
    while seen.video + seen.audio < frames {
        let m = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("media within 10 s")
            .expect("pull session healthy")
            .expect("stream not ended");
        match m {
            FeedMedia::Config(c) => seen.configs.push(c.codec),
            FeedMedia::Metadata(_) => seen.metadata = true,
            FeedMedia::Frame(f) if f.track == Track::Video => {
                seen.first_is_keyframe.get_or_insert(f.keyframe);
                assert!(f.dts > last_video_dts, "video dts went backwards");
                last_video_dts = f.dts;
                seen.video += 1;
                seen.keyframes += usize::from(f.keyframe);
            }
            FeedMedia::Frame(_) => seen.audio += 1,
            FeedMedia::SrtStats(_) => {}
        }
    }
    seen
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn assert_av(seen: &Seen) {
    assert!(seen.configs.contains(&Codec::H264), "{seen:?}");
    assert!(seen.configs.contains(&Codec::Aac), "{seen:?}");
    assert!(seen.video >= 30 && seen.audio >= 30, "{seen:?}");
    assert!(seen.keyframes >= 1, "{seen:?}");
}

#[test]
fn pulls_from_ffmpeg_rtmp_and_srt_listeners() {
    let rt = runtime();
    let port = free_tcp_port();
    let _src = ffmpeg_source(
        Fixture::A,
        "flv",
        &format!("rtmp://127.0.0.1:{port}/live/src"),
    );
    let u = url(&format!("rtmp://127.0.0.1:{port}/live/src"));
    rt.block_on(async {
        let mut s = pull_retrying(&u).await;
        let seen = collect(&mut s, 150).await;
        assert_av(&seen);
        assert!(seen.metadata, "{seen:?}");
        assert!(s.counter().get() > 10_000);
        s.close().await;
    });

    let port = free_udp_port();
    let _src = ffmpeg_source(
        Fixture::A,
        "mpegts",
        &format!("srt://127.0.0.1:{port}?mode=listener&latency=120000"),
    );
    let u = url(&format!("srt://127.0.0.1:{port}"));
    rt.block_on(async {
        let mut s = pull_retrying(&u).await;
        let seen = collect(&mut s, 150).await;
        assert_av(&seen);
        assert!(s.counter().get() > 10_000);
        s.close().await;
    });
}

#[test]
fn connect_failures_are_reported_quickly() {
    let rt = runtime();
    rt.block_on(async {
        // Nothing listens: refused at once.
        let port = free_tcp_port();
        let t = Instant::now();
        let e = client::pull(&url(&format!("rtmp://127.0.0.1:{port}/live/x")), &opts())
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, ClientError::Connect(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        // A TCP server that never answers the handshake.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let o = ClientOptions {
            handshake_timeout: Duration::from_millis(300),
            ..opts()
        };
        let e = client::push(&url(&format!("rtmp://{addr}/live/x")), &o)
            .await
            .err()
            .expect("timed out");
        assert!(matches!(e, ClientError::HandshakeTimeout), "{e}");
        hold.abort();
        // No SRT listener: the caller gives up after connect_timeout.
        let port = free_udp_port();
        let o = ClientOptions {
            connect_timeout: Duration::from_millis(500),
            ..opts()
        };
        let t = Instant::now();
        let e = client::pull(&url(&format!("srt://127.0.0.1:{port}")), &o)
            .await
            .err()
            .expect("timed out");
        assert!(matches!(e, ClientError::ConnectTimeout), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
    });
}

#[test]
fn pulls_from_the_gateway_over_rtmp_and_srt() {
    let g = Gateway::start();
    let (_, secret) = g.token(&["cam"], 10);
    let _enc = media::publish(Fixture::A, &g.rtmp(&format!("cam?token={secret}")));
    g.wait_feeds("cam", 1, None);
    let rtmp = url(&g.rtmp("cam"));
    let srt = url(&format!(
        "srt://{}?streamid=%23!::r=cam,m=request",
        g.s.running().srt_addr
    ));
    g.s.runtime().block_on(async {
        for u in [rtmp, srt] {
            let mut s = pull_retrying(&u).await;
            let seen = collect(&mut s, 120).await;
            assert_av(&seen);
            assert_eq!(seen.first_is_keyframe, Some(true), "{u}: {seen:?}");
            s.close().await;
        }
    });
    // A refused pull names the reason.
    let bad = url(&g.rtmp("bad%20name"));
    let e =
        g.s.runtime()
            .block_on(client::pull(&bad, &opts()))
            .err()
            .expect("refused");
    assert!(matches!(e, ClientError::Refused(_)), "{e}");
}

/// Push a source of the gateway to `target` with the client while a
/// player reads the target; returns the player's packets.
fn push_to_listener(g: &Gateway, target: &str, player_url: &str, listen: &[&str]) {
    let player = Player::start_with(player_url, listen);
    let u = url(target);
    let engine = g.s.running().engine.clone();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let task = g.s.runtime().spawn(async move {
        let end = Instant::now() + Duration::from_secs(15);
        let mut session = loop {
            match client::push(&u, &opts()).await {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < end, "push to {u}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut p = engine
            .play(key("cam"), client::push_format(&u))
            .await
            .unwrap();
        let r = session.pump(&mut p.items, &stop).await;
        let sent = session.counter().get();
        session.close().await;
        (r.map_err(|e| e.to_string()), sent)
    });
    player.wait_packets(90, Duration::from_secs(20));
    let packets = player.snapshot();
    media::check_monotonic(&packets);
    assert!(packets[0].keyframe, "the push starts on a keyframe");
    cancel.cancel();
    let (r, sent) = g.s.runtime().block_on(task).unwrap();
    assert_eq!(r, Ok(PushEnd::Cancelled));
    assert!(sent > 50_000, "bytes sent: {sent}");
}

#[test]
fn pushes_to_ffmpeg_rtmp_and_srt_listeners() {
    let g = Gateway::start();
    let (_, secret) = g.token(&["cam"], 10);
    let _enc = media::publish(Fixture::A, &g.rtmp(&format!("cam?token={secret}")));
    g.wait_feeds("cam", 1, None);
    let port = free_tcp_port();
    let rtmp = format!("rtmp://127.0.0.1:{port}/live/out");
    push_to_listener(&g, &rtmp, &rtmp, &["-listen", "1"]);
    let port = free_udp_port();
    push_to_listener(
        &g,
        &format!("srt://127.0.0.1:{port}"),
        &format!("srt://127.0.0.1:{port}?mode=listener&latency=120000"),
        &[],
    );
}

#[test]
fn pushes_into_the_gateway_with_a_token() {
    // The gateway relays its own stream `cam` into `copy` through the
    // client, over RTMP and then SRT.
    let g = Gateway::start();
    let (_, secret) = g.token(&["cam", "copy"], 10);
    let _enc = media::publish(Fixture::A, &g.rtmp(&format!("cam?token={secret}")));
    g.wait_feeds("cam", 1, None);
    for target in [
        g.rtmp(&format!("copy?token={secret}")),
        format!(
            "srt://{}?streamid=%23!::r=copy,m=publish,s={secret}",
            g.s.running().srt_addr
        ),
    ] {
        let u = url(&target);
        let engine = g.s.running().engine.clone();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = g.s.runtime().spawn(async move {
            let mut session = client::push(&u, &opts()).await.expect("push accepted");
            let mut p = engine
                .play(key("cam"), client::push_format(&u))
                .await
                .unwrap();
            let r = session.pump(&mut p.items, &stop).await;
            session.close().await;
            r.map_err(|e| e.to_string())
        });
        let v = g.wait_feeds("copy", 1, None);
        let feed = &v["sources"][0]["feeds"][0];
        assert_eq!(feed["state"], "on_air", "{v}");
        cancel.cancel();
        assert_eq!(
            g.s.runtime().block_on(task).unwrap(),
            Ok(PushEnd::Cancelled)
        );
        // The feed leaves when the push ends.
        let end = Instant::now() + Duration::from_secs(10);
        while g.stream("copy")["sources"][0]["feeds"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            assert!(Instant::now() < end, "copy feed still there");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A publish with a bad token is refused with the gateway's reason.
    let u = url(&g.rtmp("copy?token=nope"));
    let e =
        g.s.runtime()
            .block_on(client::push(&u, &opts()))
            .err()
            .expect("refused");
    assert!(matches!(e, ClientError::Refused(_)), "{e}");
}
