//! The engine's side of the global election: remote feeds (registry-driven
//! eligibility), their mirrors (relayed media under the remote feed's id),
//! and feed players (a cluster peer relaying one local feed).

use super::*;
use crate::engine::feed::Origin;
use crate::engine::{PlayerFormat, RelayState};

impl H {
    /// A feed of node `n2`, eligible since `since_ms` (virtual time), whose
    /// mirror sends media only once `mirror` is called.
    fn remote(&mut self, spec: Spec, since_ms: u64) -> FeedId {
        let id = fid(spec.tag);
        let meta = FeedMeta {
            id,
            token_id: spec.token,
            label: format!("remote {}", spec.tag as char),
            priority: Priority(spec.priority),
            pinned: spec.pinned,
            protocol: Protocol::Rtmp,
            peer: SocketAddr::from(([198, 51, 100, spec.tag], 40000)),
            grant: None,
        };
        let origin = Origin {
            node: "n2".into(),
            region: "r2".into(),
            eligible_since: Some(self.base + Duration::from_millis(since_ms)),
            draining: false,
            relay: None,
        };
        self.src.remote_upsert(self.now(), meta, origin);
        let (_tx, control) = mpsc::channel(4);
        self.feeds.push(Synth {
            start_ms: self.now_ms,
            spec,
            id,
            sending: false,
            next_video: 0,
            next_audio: 0,
            last_sent_ms: None,
            control,
        });
        id
    }

    /// The mirror of remote feed `tag` starts: configs, then its media
    /// from where its encoder is now (the relay joins mid-stream).
    fn mirror(&mut self, tag: u8) {
        let now = self.now();
        let id = fid(tag);
        self.src.relay_state(now, id, Some(RelayState::Live));
        self.src
            .feed_media(now, id, FeedMedia::Config(video_cfg(tag)));
        self.src
            .feed_media(now, id, FeedMedia::Config(audio_cfg(tag)));
        let now_ms = self.now_ms;
        let f = self.feed_mut(tag);
        f.start_ms = now_ms;
        f.sending = true;
        self.pump();
    }
}

#[test]
fn remote_primary_goes_on_air_when_its_mirror_delivers_a_keyframe() {
    let mut h = H::new();
    let mut p = h.player(4096);
    // Local A (50) is on air; remote B (100), eligible long ago, arrives.
    h.join(spec(A, 50));
    h.run_to(500);
    assert_eq!(h.primary(), Some(A));
    h.remote(spec(B, 100), 0);
    let bv = h.feed_view(B).expect("remote feed listed");
    assert_eq!((bv.node.as_str(), bv.region.as_str()), ("n2", "r2"));
    // The hold runs from the instant B's node reported it eligible (0), not
    // from when it was heard of here (500): the election picks B at 1000,
    // but nothing of B is here yet, so A stays on air (make-before-break).
    h.run_to(999);
    assert_eq!(h.view().elected, Some(fid(A).0));
    h.run_to(1_010);
    assert_eq!(h.view().elected, Some(fid(B).0));
    h.run_to(1_400);
    assert_eq!(h.primary(), Some(A));
    // The mirror starts: B goes on air at its first keyframe.
    h.mirror(B);
    h.run_until(100, |h| h.primary() == Some(B));
    assert_eq!(h.feed_view(B).unwrap().relay.as_deref(), Some("live"));
    h.run_to(2_000);
    let log = drain(&mut p);
    assert_headers_precede_frames(&log);
    assert_monotonic(&log);
    assert!(!videos(&log, B).is_empty());

    // Its relay breaks: unavailable here, at once back to A (unplanned).
    h.src
        .relay_state(h.now(), fid(B), Some(RelayState::Retrying));
    h.run_to(2_020);
    assert_eq!(h.primary(), Some(A));
    let sw = h.view().last_switch.expect("switch");
    assert_eq!(sw.reason, "primary_lost");
    assert_monotonic(&drain(&mut p));
}

/// The feeds `h` wants mirrored (no runner-up prefetch).
fn wanted(h: &H) -> Vec<FeedId> {
    let mut out = Vec::new();
    h.src.wanted_mirrors(false, &mut out);
    out.into_iter().map(|(_, f, _)| f).collect()
}

#[test]
fn a_broken_relay_keeps_retrying_beside_its_replacement_until_it_recovers() {
    let mut h = H::new();
    let _p = h.player(4096);
    // Remote B (100) on air through its mirror; remote C (50) is the backup.
    h.remote(spec(B, 100), 0);
    h.remote(spec(C, 50), 0);
    h.run_to(1_010);
    assert_eq!(wanted(&h), vec![fid(B)]);
    h.mirror(B);
    h.run_until(100, |h| h.primary() == Some(B));
    // B's node dies: its relay breaks, C is elected and mirrored, and B
    // stays wanted (retrying) so that it stays unavailable here: were it
    // dropped, it would look available again and be elected back.
    h.src
        .relay_state(h.now(), fid(B), Some(RelayState::Retrying));
    h.run_to(h.now_ms + 20);
    assert_eq!(h.view().elected, Some(fid(C).0));
    let mut w = wanted(&h);
    w.sort();
    let mut both = vec![fid(B), fid(C)];
    both.sort();
    assert_eq!(w, both);
    // Each is listed once even while B is both broken and still on air.
    assert_eq!(w.len(), 2);
    h.mirror(C);
    h.run_until(100, |h| h.primary() == Some(C));
    // B's relay comes back: B is elected again (after the failback hold)
    // and C, no longer wanted, is released.
    h.mirror(B);
    h.run_until(5_000, |h| h.primary() == Some(B));
    assert_eq!(wanted(&h), vec![fid(B)]);
}

#[test]
fn draining_feed_is_released_at_once_when_the_new_primary_is_remote_and_nobody_watches() {
    let mut h = H::new();
    h.join(spec(A, 100));
    h.run_to(300);
    h.remote(spec(B, 50), 0);
    assert_eq!(h.primary(), Some(A));
    let report = h.reprioritize(tok(A), Some(10), true);
    assert_eq!(report.affected.len(), 1);
    // No player here and no peer relays A: the switch to the remote feed
    // has nothing to wait for, so A is disconnected now.
    assert_eq!(h.view().elected, Some(fid(B).0));
    let reason = disconnected(h.feed_mut(A));
    assert!(reason.contains("reprioritized"), "{reason}");
    // A remote feed is never touched by a local reprioritize, kick or revoke.
    assert!(h.reprioritize(tok(B), Some(1), true).affected.is_empty());
    assert!(h.src.kick(h.now(), fid(B)).is_none());
}

#[test]
fn a_peer_relaying_the_draining_feed_keeps_it_until_it_switched_away() {
    let mut h = H::new();
    h.join(spec(A, 100));
    h.run_to(300);
    h.remote(spec(B, 50), 0);
    let (tx, mut peer) = mpsc::channel(4096);
    let player = crate::engine::player::Player::new(99, tx, PlayerFormat::Flv);
    assert!(h.src.play_feed(fid(A), player).is_ok());
    // A remote feed cannot be relayed onwards.
    let (tx2, _rx2) = mpsc::channel(4);
    let p2 = crate::engine::player::Player::new(98, tx2, PlayerFormat::Flv);
    assert!(h.src.play_feed(fid(B), p2).is_err());
    h.run_to(600);
    h.reprioritize(tok(A), Some(10), true);
    h.run_to(900);
    no_control(h.feed_mut(A));
    // The peer switched to B and stops relaying A: A goes now.
    h.src.player_left(h.now(), 99);
    let reason = disconnected(h.feed_mut(A));
    assert!(reason.contains("reprioritized"), "{reason}");
    // What the peer got: A's header, then A's frames with A's own
    // timestamps, starting at a keyframe.
    let log = drain(&mut peer);
    assert_eq!(&log[..3], &header(A)[..]);
    let v = videos(&log, A);
    assert!(v[0].2, "starts at a keyframe: {:?}", &v[..2]);
    let sent: Vec<u32> = h.sent_of(A, true).iter().map(|s| s.idx).collect();
    let got: Vec<u32> = v.iter().map(|x| x.0).collect();
    assert_eq!(&got[..], &sent[..got.len()], "every frame from the GOP on");
    assert_eq!(v[0].1, h.feed(A).video_dts(0), "the feed's own timestamps");
}
