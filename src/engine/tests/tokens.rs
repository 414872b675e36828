//! The engine's side of token changes: pinned feeds capped by their
//! token's priority, live feeds re-judged against a changed token, expiry.

use super::*;
use crate::domain::FeedGrant;
use crate::engine::Recheck;

fn grant(requested: Option<i32>, token_priority: i32, may_raise: bool) -> FeedGrant {
    FeedGrant {
        secret_id: Uuid::from_u128(7),
        requested,
        token_priority: Priority(Some(token_priority)),
        may_raise,
        expires_at: None,
        revision: 1,
    }
}

/// PIN (token TA at 100, `priority=90`) on air, B (50) standing by.
fn pinned_setup() -> H {
    let mut h = H::new();
    h.join(Spec {
        pinned: true,
        token: tok(A),
        grant: Some(grant(Some(90), 100, false)),
        ..spec(PIN, 90)
    });
    h.run_to(250);
    h.join(spec(B, 50));
    h.run_to(2000);
    assert_eq!(h.primary(), Some(PIN));
    h
}

#[test]
fn lowering_a_token_below_a_pinned_feed_takes_the_air_from_it() {
    let mut h = pinned_setup();
    let report = h.reprioritize(tok(A), Some(10), true);
    assert!(
        report.affected.is_empty(),
        "a pinned feed is not disconnected"
    );
    assert_eq!(report.pinned.len(), 1);
    assert_eq!(report.pinned[0].priority, Some(10), "capped by the token");
    assert_eq!(report.pinned[0].requested_priority, Some(90));
    h.run_until(3000, |h| h.primary() == Some(B));
    no_control(h.feed_mut(PIN));
    assert_eq!(h.feed_view(PIN).unwrap().priority, Some(10));

    // Raising the token again gives back the pinned value, never more.
    h.reprioritize(tok(A), Some(1000), false);
    assert_eq!(h.feed_view(PIN).unwrap().priority, Some(90));
    h.run_until(3000, |h| h.primary() == Some(PIN));
    no_control(h.feed_mut(PIN));
}

#[test]
fn a_token_allowed_to_raise_keeps_its_pinned_feeds_above_it() {
    let mut h = H::new();
    h.join(Spec {
        pinned: true,
        token: tok(A),
        grant: Some(grant(Some(500), 50, true)),
        ..spec(PIN, 500)
    });
    h.run_to(1000);
    let report = h.reprioritize(tok(A), Some(10), true);
    assert_eq!(report.pinned[0].priority, Some(500));
    no_control(h.feed_mut(PIN));
}

#[test]
fn recheck_revokes_what_the_token_no_longer_allows_and_keeps_the_rest() {
    let mut h = H::new();
    let keep = grant(None, 100, false);
    h.join(Spec {
        token: tok(A),
        grant: Some(keep.clone()),
        ..spec(A, 100)
    });
    h.join(Spec {
        token: tok(A),
        grant: Some(keep.clone()),
        ..spec(A2, 100)
    });
    h.join(Spec {
        token: tok(A),
        pinned: true,
        grant: Some(grant(Some(500), 100, true)),
        ..spec(PIN, 500)
    });
    // A feed of another token is never judged.
    h.join(spec(B, 50));
    h.run_to(1500);
    let expiry = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut judged = Vec::new();
    let revoked = h.src.recheck_token(h.now(), tok(A), &mut |_, peer, g| {
        judged.push(peer.ip());
        if peer.ip() == std::net::IpAddr::from([192, 0, 2, A2]) {
            Recheck::Revoke("token no longer allows this address".into())
        } else {
            Recheck::Keep(FeedGrant {
                may_raise: false,
                expires_at: Some(expiry),
                revision: 2,
                ..g.clone()
            })
        }
    });
    assert_eq!(judged.len(), 3, "every feed of the token, none of another");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].view.feed_id, fid(A2).0);
    assert_eq!(revoked[0].reason, "token no longer allows this address");
    assert!(disconnected(h.feed_mut(A2)).contains("address"));
    assert!(h.feed_view(A2).is_none(), "gone from the source at once");
    no_control(h.feed_mut(A));
    no_control(h.feed_mut(PIN));
    no_control(h.feed_mut(B));
    // Raising is no longer allowed: the raised pinned feed falls back.
    assert_eq!(h.feed_view(PIN).unwrap().priority, Some(100));
    assert_eq!(h.src.next_expiry(), Some(expiry));
    let mut revs = Vec::new();
    h.src.token_revisions(&mut revs);
    revs.sort_by_key(|(t, r)| (t.0, *r));
    assert_eq!(revs, vec![(tok(A), 2), (tok(A), 2)]);
}

#[test]
fn expired_feeds_are_disconnected_and_others_stay() {
    let mut h = H::new();
    let at = chrono::Utc::now() + chrono::Duration::seconds(10);
    h.join(Spec {
        token: tok(A),
        grant: Some(FeedGrant {
            expires_at: Some(at),
            ..grant(None, 100, false)
        }),
        ..spec(A, 100)
    });
    h.join(Spec {
        token: tok(B),
        grant: Some(grant(None, 50, false)),
        ..spec(B, 50)
    });
    h.run_to(1500);
    assert_eq!(h.src.next_expiry(), Some(at));
    let early = h
        .src
        .expire(h.now(), at - chrono::Duration::milliseconds(1));
    assert!(early.is_empty());
    let gone = h.src.expire(h.now(), at);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].view.feed_id, fid(A).0);
    assert_eq!(disconnected(h.feed_mut(A)), "token has expired");
    no_control(h.feed_mut(B));
    assert_eq!(h.src.next_expiry(), None);
}
