//! Room rules without sockets: every test drives a `Room` with explicit instants.

use super::*;

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn room(mode: Mode) -> Room {
    Room::new(
        RoomKey {
            sdk_app_id: 1,
            room_id: RoomId::numeric(123).unwrap(),
        },
        mode,
        RoomLimits::default(),
    )
}

fn join(
    r: &mut Room,
    session: SessionId,
    user: &str,
    role: Option<Role>,
    now: Instant,
) -> RtcResult<(JoinResult, Vec<Effect>)> {
    r.join(
        JoinInput {
            session,
            user_id: uid(user),
            mode: r.mode(),
            role,
            privileges: None,
            kind: Default::default(),
        },
        now,
    )
    .map(|(joined, fx)| (joined.decoded(), fx))
}

/// Events sent, as (recipient, event) pairs.
fn events(effects: &[Effect]) -> Vec<(SessionId, ServerEvent)> {
    effects
        .iter()
        .flat_map(|e| match e {
            Effect::Event { to, event } => to.iter().map(|s| (*s, event.clone())).collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn removals(effects: &[Effect]) -> Vec<(SessionId, BanReason)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Remove {
                session, reason, ..
            } => Some((*session, *reason)),
            _ => None,
        })
        .collect()
}

fn hooks(effects: &[Effect]) -> Vec<u32> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Hook(h) => Some(h.event.event_type()),
            _ => None,
        })
        .collect()
}

#[test]
fn rtc_join_announces_and_lists_members() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    let (res, fx) = join(&mut r, 1, "alice", None, t0).unwrap();
    assert!(res.members.is_empty());
    assert_eq!(res.role, Role::Anchor);
    assert_eq!(hooks(&fx), vec![103]);
    let (res, fx) = join(&mut r, 2, "bob", Some(Role::Audience), t0).unwrap();
    // In rtc mode the role is ignored: everyone is an anchor.
    assert_eq!(res.role, Role::Anchor);
    assert_eq!(res.members.len(), 1);
    assert_eq!(res.members[0].user_id, uid("alice"));
    assert_eq!(
        events(&fx),
        vec![(
            1,
            ServerEvent::PeerJoin {
                user_id: uid("bob")
            }
        )]
    );
}

#[test]
fn rtc_room_is_full_at_300() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    for i in 0..300 {
        join(&mut r, i, &format!("u{i}"), None, t0).unwrap();
    }
    let e = join(&mut r, 999, "late", None, t0).unwrap_err();
    assert_eq!(e.code, ErrorCode::JoinRoomFailed);
    assert_eq!(e.extra_code, Some(-102052));
    // A duplicate of an existing member replaces it, so it is not refused.
    assert!(join(&mut r, 1000, "u5", None, t0).is_ok());
    assert_eq!(r.len(), 300);
}

#[test]
fn live_audience_is_invisible_and_cannot_publish() {
    let t0 = Instant::now();
    let mut r = room(Mode::Live);
    join(&mut r, 1, "anchor", Some(Role::Anchor), t0).unwrap();
    let (res, fx) = join(&mut r, 2, "viewer", None, t0).unwrap();
    assert_eq!(res.role, Role::Audience, "live default role is audience");
    assert_eq!(res.members.len(), 1);
    assert!(events(&fx).is_empty(), "audience joins are not announced");
    let (res, _) = join(&mut r, 3, "viewer2", Some(Role::Audience), t0).unwrap();
    assert_eq!(res.members.len(), 1, "audience sees anchors only");

    let e = r.publish(2, StreamType::Main, true, true).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation);
    assert_eq!(e.extra_code, Some(5107));

    // Switching to anchor makes them visible and able to publish.
    let fx = r.switch_role(2, Role::Anchor).unwrap();
    assert!(events(&fx).contains(&(
        1,
        ServerEvent::PeerJoin {
            user_id: uid("viewer")
        }
    )));
    assert_eq!(hooks(&fx), vec![105]);
    let fx = r.publish(2, StreamType::Main, true, true).unwrap();
    let ev = events(&fx);
    assert_eq!(
        ev.len(),
        2,
        "stream-added goes to everyone else, audience included"
    );
    assert!(matches!(ev[0].1, ServerEvent::StreamAdded(_)));
    assert_eq!(hooks(&fx), vec![201, 203]);

    // Back to audience: the stream goes away and others see a role-change leave.
    let fx = r.switch_role(2, Role::Audience).unwrap();
    let ev = events(&fx);
    assert!(ev.contains(&(
        1,
        ServerEvent::StreamRemoved {
            user_id: uid("viewer"),
            stream_type: StreamType::Main
        }
    )));
    assert!(ev.contains(&(
        1,
        ServerEvent::PeerLeave {
            user_id: uid("viewer"),
            reason: LeaveReason::RoleChange
        }
    )));
    assert!(r.streams().is_empty());
}

#[test]
fn duplicate_user_kicks_the_older_session() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    join(&mut r, 1, "alice", None, t0).unwrap();
    join(&mut r, 2, "bob", None, t0).unwrap();
    r.publish(1, StreamType::Main, true, true).unwrap();
    let (_, fx) = join(&mut r, 3, "alice", None, t0).unwrap();
    assert_eq!(removals(&fx), vec![(1, BanReason::Kick)]);
    let ev = events(&fx);
    assert!(ev.contains(&(
        2,
        ServerEvent::StreamRemoved {
            user_id: uid("alice"),
            stream_type: StreamType::Main
        }
    )));
    assert!(ev.contains(&(
        2,
        ServerEvent::PeerJoin {
            user_id: uid("alice")
        }
    )));
    assert_eq!(r.user_of(3), Some(&uid("alice")));
    assert_eq!(r.user_of(1), None);
    assert_eq!(r.len(), 2);
}

#[test]
fn a_dropped_member_rejoins_without_anyone_noticing() {
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_secs(5);
    let mut r = room(Mode::Rtc);
    join(&mut r, 1, "alice", None, t0).unwrap();
    join(&mut r, 2, "bob", None, t0).unwrap();
    r.publish(1, StreamType::Main, true, true).unwrap();
    r.publish(2, StreamType::Main, true, false).unwrap();
    r.disconnected(1);
    let (reply, fx) = join(&mut r, 3, "alice", None, t1).unwrap();
    assert!(events(&fx).is_empty(), "nobody hears of it: {fx:?}");
    assert!(removals(&fx).is_empty());
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Hook(_))),
        "no webhook"
    );
    // The old session's subscriptions close; the new one subscribes again.
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::MemberGone { session: 1, user_id, .. } if *user_id == uid("alice")
    )));
    // The reply lists the others and their streams, not alice herself.
    let members: Vec<_> = reply.members.iter().map(|m| m.user_id.clone()).collect();
    assert_eq!(members, vec![uid("bob")]);
    let streams: Vec<_> = reply.streams.iter().map(|s| s.user_id.clone()).collect();
    assert_eq!(streams, vec![uid("bob")]);
    // Still a member with her stream, on the new session; the old one is gone.
    assert_eq!(r.user_of(3), Some(&uid("alice")));
    assert_eq!(r.user_of(1), None);
    assert_eq!(r.len(), 2);
    assert_eq!(r.streams().len(), 2);
    // Her re-publish is an update to the others, and heartbeats count again.
    let fx = r.publish(3, StreamType::Main, true, true).unwrap();
    assert!(matches!(
        events(&fx).as_slice(),
        [(2, ServerEvent::StreamUpdated(s))] if s.user_id == uid("alice")
    ));
    assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(90)));
    assert!(
        r.tick(t0 + Duration::from_secs(91))
            .iter()
            .all(|e| !matches!(e, Effect::Remove { session: 3, .. }))
    );
    // A member whose socket is still open is replaced the usual way (a kick), and a
    // dropped member coming back in another role is a new join too.
    let (_, fx) = join(&mut r, 4, "alice", None, t1).unwrap();
    assert_eq!(removals(&fx), vec![(3, BanReason::Kick)]);
}

#[test]
fn a_dropped_live_member_coming_back_in_another_role_is_a_new_join() {
    let t0 = Instant::now();
    let mut r = room(Mode::Live);
    join(&mut r, 1, "anchor", Some(Role::Anchor), t0).unwrap();
    join(&mut r, 2, "viewer", Some(Role::Audience), t0).unwrap();
    r.disconnected(1);
    let (_, fx) = join(&mut r, 3, "anchor", Some(Role::Audience), t0).unwrap();
    assert!(events(&fx).contains(&(
        2,
        ServerEvent::PeerLeave {
            user_id: uid("anchor"),
            reason: LeaveReason::Kicked
        }
    )));
}

#[test]
fn silent_members_are_evicted_with_reason_timeout() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    join(&mut r, 1, "alice", None, t0).unwrap();
    join(&mut r, 2, "bob", None, t0).unwrap();
    assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(90)));
    r.heartbeat(2, t0 + Duration::from_secs(60));
    assert!(
        r.tick(t0 + Duration::from_secs(90)).is_empty(),
        "not past the timeout yet"
    );
    let fx = r.tick(t0 + Duration::from_secs(91));
    assert_eq!(removals(&fx), vec![(1, BanReason::UserTimeOut)]);
    assert_eq!(
        events(&fx),
        vec![(
            2,
            ServerEvent::PeerLeave {
                user_id: uid("alice"),
                reason: LeaveReason::Timeout
            }
        )]
    );
    assert_eq!(r.len(), 1);
    assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(150)));
    // The last member times out: the room is dismissed.
    let fx = r.tick(t0 + Duration::from_secs(151));
    assert!(hooks(&fx).contains(&102));
    assert!(r.is_dismissed());
}

#[test]
fn dropped_socket_waits_out_the_timeout() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    join(&mut r, 1, "alice", None, t0).unwrap();
    join(&mut r, 2, "bob", None, t0).unwrap();
    r.disconnected(1);
    assert_eq!(r.len(), 2);
    assert!(r.describe().members.iter().any(|m| !m.connected));
    // Events are no longer sent to the dropped session.
    let fx = r.publish(2, StreamType::Main, true, false).unwrap();
    assert!(events(&fx).is_empty());
}

#[test]
fn rtc_room_dismissed_when_last_leaves() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    join(&mut r, 1, "alice", None, t0).unwrap();
    let fx = r.leave(1, t0);
    assert_eq!(hooks(&fx), vec![104, 102]);
    assert!(r.is_dismissed());
    assert!(join(&mut r, 2, "bob", None, t0).is_err());
}

#[test]
fn live_room_lingers_ten_minutes_after_audience_leaves() {
    let t0 = Instant::now();
    let mut r = room(Mode::Live);
    join(&mut r, 1, "viewer", None, t0).unwrap();
    let fx = r.leave(1, t0);
    assert_eq!(hooks(&fx), vec![104]);
    assert!(!r.is_dismissed());
    assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(600)));
    assert!(r.tick(t0 + Duration::from_secs(299)).is_empty());
    // A join during the linger keeps the room past the original deadline.
    join(&mut r, 2, "viewer2", None, t0 + Duration::from_secs(300)).unwrap();
    r.heartbeat(2, t0 + Duration::from_secs(600));
    assert!(r.tick(t0 + Duration::from_secs(601)).is_empty());
    assert!(!r.is_dismissed());
    r.leave(2, t0 + Duration::from_secs(650));
    assert!(r.tick(t0 + Duration::from_secs(1249)).is_empty());
    let fx = r.tick(t0 + Duration::from_secs(1250));
    assert_eq!(hooks(&fx), vec![102]);
    assert!(r.is_dismissed());
}

#[test]
fn live_room_dismissed_at_once_when_last_is_anchor() {
    let t0 = Instant::now();
    let mut r = room(Mode::Live);
    join(&mut r, 1, "anchor", Some(Role::Anchor), t0).unwrap();
    r.leave(1, t0);
    assert!(r.is_dismissed());
}

#[test]
fn publisher_limit_is_50() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    for i in 0..51 {
        join(&mut r, i, &format!("u{i}"), None, t0).unwrap();
    }
    for i in 0..50 {
        r.publish(i, StreamType::Main, true, true).unwrap();
    }
    // A publisher's second stream does not count twice.
    r.publish(0, StreamType::Auxiliary, false, true).unwrap();
    let e = r.publish(50, StreamType::Main, true, true).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation);
    r.unpublish(3, StreamType::Main).unwrap();
    assert!(r.publish(50, StreamType::Main, true, true).is_ok());
}

#[test]
fn mute_events_and_unpublish() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    join(&mut r, 1, "alice", None, t0).unwrap();
    join(&mut r, 2, "bob", None, t0).unwrap();
    r.publish(1, StreamType::Main, true, true).unwrap();
    let fx = r.mute(1, StreamType::Main, MediaKind::Video, true).unwrap();
    assert_eq!(
        events(&fx),
        vec![(
            2,
            ServerEvent::MuteVideo {
                user_id: uid("alice")
            }
        )]
    );
    assert_eq!(hooks(&fx), vec![202]);
    assert!(
        r.mute(1, StreamType::Main, MediaKind::Video, true)
            .unwrap()
            .is_empty()
    );
    assert!(r.streams()[0].video_muted);
    // Re-publishing the same stream type is an update.
    let fx = r.publish(1, StreamType::Main, true, false).unwrap();
    assert!(matches!(events(&fx)[0].1, ServerEvent::StreamUpdated(_)));
    assert_eq!(hooks(&fx), vec![202]);
    let fx = r.unpublish(1, StreamType::Main).unwrap();
    assert_eq!(
        events(&fx),
        vec![(
            2,
            ServerEvent::StreamRemoved {
                user_id: uid("alice"),
                stream_type: StreamType::Main
            }
        )]
    );
    assert_eq!(hooks(&fx), vec![204]);
    let e = r.unpublish(1, StreamType::Main).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation);
    let e = r
        .mute(2, StreamType::Main, MediaKind::Audio, true)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation);
}

#[test]
fn requests_from_non_members_are_invalid_operations() {
    let mut r = room(Mode::Rtc);
    let e = r.publish(7, StreamType::Main, true, true).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation);
    assert_eq!(e.extra_code, Some(5101));
    assert!(r.leave(7, Instant::now()).is_empty());
}

#[test]
fn admin_remove_and_dismiss() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    join(&mut r, 1, "alice", None, t0).unwrap();
    join(&mut r, 2, "bob", None, t0).unwrap();
    join(&mut r, 3, "carol", None, t0).unwrap();
    let fx = r.remove_users(&[uid("alice"), uid("nobody")], t0);
    assert_eq!(removals(&fx), vec![(1, BanReason::Banned)]);
    assert!(events(&fx).contains(&(
        2,
        ServerEvent::PeerLeave {
            user_id: uid("alice"),
            reason: LeaveReason::Kicked
        }
    )));
    let fx = r.dismiss();
    let mut rm = removals(&fx);
    rm.sort_by_key(|(s, _)| *s);
    assert_eq!(
        rm,
        vec![(2, BanReason::RoomDisband), (3, BanReason::RoomDisband)]
    );
    assert!(hooks(&fx).contains(&102));
    assert!(r.is_dismissed());
}

#[test]
fn privileges_gate_enter_and_publish() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    let e = r
        .join(
            JoinInput {
                session: 1,
                user_id: uid("a"),
                mode: Mode::Rtc,
                role: None,
                privileges: Some(Privileges::from_bits(1)),
                kind: Default::default(),
            },
            t0,
        )
        .unwrap_err();
    assert_eq!(e.extra_code, Some(-102011));
    r.join(
        JoinInput {
            session: 1,
            user_id: uid("a"),
            mode: Mode::Rtc,
            role: None,
            privileges: Some(Privileges::from_bits(42)),
            kind: Default::default(),
        },
        t0,
    )
    .unwrap();
    assert_eq!(
        r.publish(1, StreamType::Main, false, true)
            .unwrap_err()
            .extra_code,
        Some(-102013)
    );
    assert_eq!(
        r.publish(1, StreamType::Main, true, false)
            .unwrap_err()
            .extra_code,
        Some(-100006)
    );
    assert_eq!(
        r.publish(1, StreamType::Auxiliary, false, true)
            .unwrap_err()
            .extra_code,
        Some(-102015)
    );
}

#[test]
fn mode_mismatch_is_refused() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    let e = r
        .join(
            JoinInput {
                session: 1,
                user_id: uid("a"),
                mode: Mode::Live,
                role: None,
                privileges: None,
                kind: Default::default(),
            },
            t0,
        )
        .unwrap_err();
    assert_eq!(e.extra_code, Some(-100011));
}

#[test]
fn join_member_lists_follow_leaves_kicks_and_role_changes() {
    let t0 = Instant::now();
    let names = |res: &JoinResult| {
        let mut v: Vec<String> = res.members.iter().map(|m| m.user_id.to_string()).collect();
        v.sort();
        v
    };
    let mut r = room(Mode::Rtc);
    for (s, u) in [(1, "a"), (2, "b"), (3, "c")] {
        join(&mut r, s, u, None, t0).unwrap();
    }
    r.leave(2, t0);
    let (res, _) = join(&mut r, 4, "d", None, t0).unwrap();
    assert_eq!(names(&res), ["a", "c"]);
    // A duplicate userId replaces the old session: listed once.
    let (res, _) = join(&mut r, 5, "a", None, t0).unwrap();
    assert_eq!(names(&res), ["c", "d"]);
    let (res, _) = join(&mut r, 6, "e", None, t0).unwrap();
    assert_eq!(names(&res), ["a", "c", "d"]);

    // Live: audience appears when it becomes an anchor and disappears when it stops.
    let mut r = room(Mode::Live);
    join(&mut r, 1, "host", Some(Role::Anchor), t0).unwrap();
    join(&mut r, 2, "viewer", None, t0).unwrap();
    let (res, _) = join(&mut r, 3, "v3", None, t0).unwrap();
    assert_eq!(names(&res), ["host"]);
    r.switch_role(2, Role::Anchor).unwrap();
    let (res, _) = join(&mut r, 4, "v4", None, t0).unwrap();
    assert_eq!(names(&res), ["host", "viewer"]);
    r.switch_role(1, Role::Audience).unwrap();
    let (res, _) = join(&mut r, 5, "v5", None, t0).unwrap();
    assert_eq!(names(&res), ["viewer"]);
}

#[test]
fn join_stream_lists_follow_publish_unpublish_leaves_kicks_and_role_changes() {
    let t0 = Instant::now();
    // (user, stream type) pairs a joiner is told about, sorted.
    let listed = |res: &JoinResult| {
        let mut v: Vec<(String, StreamType)> = res
            .streams
            .iter()
            .map(|s| (s.user_id.to_string(), s.stream_type))
            .collect();
        v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        v
    };
    let (main, aux) = (StreamType::Main, StreamType::Auxiliary);
    let mut r = room(Mode::Rtc);
    join(&mut r, 1, "a", None, t0).unwrap();
    join(&mut r, 2, "b", None, t0).unwrap();
    let (res, _) = join(&mut r, 3, "c", None, t0).unwrap();
    assert!(res.streams.is_empty());
    r.publish(1, main, true, true).unwrap();
    r.publish(1, aux, false, true).unwrap();
    r.publish(1, main, true, false).unwrap(); // an update, not a new stream
    r.publish(2, main, true, true).unwrap();
    let (res, _) = join(&mut r, 4, "d", None, t0).unwrap();
    assert_eq!(
        listed(&res),
        [("a".into(), aux), ("a".into(), main), ("b".into(), main)]
    );
    r.unpublish(1, aux).unwrap();
    assert!(r.unpublish(1, aux).is_err());
    r.leave(2, t0); // b's stream goes with b
    let (res, _) = join(&mut r, 5, "e", None, t0).unwrap();
    assert_eq!(listed(&res), [("a".into(), main)]);
    // A duplicate userId replaces a's session (and its streams); an admin removal too.
    join(&mut r, 6, "a", None, t0).unwrap();
    r.publish(5, main, true, true).unwrap();
    let (res, _) = join(&mut r, 7, "f", None, t0).unwrap();
    assert_eq!(listed(&res), [("e".into(), main)]);
    r.remove_users(&[uid("e")], t0);
    let (res, _) = join(&mut r, 8, "g", None, t0).unwrap();
    assert!(res.streams.is_empty());

    // Live: an anchor that turns audience stops publishing.
    let mut r = room(Mode::Live);
    join(&mut r, 1, "host", Some(Role::Anchor), t0).unwrap();
    r.publish(1, main, true, true).unwrap();
    let (res, _) = join(&mut r, 2, "v2", None, t0).unwrap();
    assert_eq!(listed(&res), [("host".into(), main)]);
    r.switch_role(1, Role::Audience).unwrap();
    let (res, _) = join(&mut r, 3, "v3", None, t0).unwrap();
    assert!(res.streams.is_empty());
    // Dismissal empties everything.
    r.switch_role(1, Role::Anchor).unwrap();
    r.publish(1, main, true, true).unwrap();
    r.dismiss();
    assert!(r.streams().is_empty());
}

// ---- the room is the one record of media peers ------------------------------------------------

fn released(effects: &[Effect]) -> Vec<PeerId> {
    let mut out: Vec<PeerId> = effects
        .iter()
        .flat_map(|e| match e {
            Effect::StreamEnded { peer, .. } => peer.iter().copied().collect(),
            Effect::MemberGone { subscriptions, .. } => subscriptions.clone(),
            Effect::Unsubscribe { peer } => vec![*peer],
            _ => Vec::new(),
        })
        .collect();
    out.sort_unstable();
    out
}

fn join_kind(r: &mut Room, session: SessionId, user: &str, kind: LinkKind, now: Instant) {
    r.join(
        JoinInput {
            session,
            user_id: uid(user),
            mode: r.mode(),
            role: None,
            privileges: None,
            kind,
        },
        now,
    )
    .unwrap();
}

/// alice (1) publishes main on peer 10; bob (2) subscribes to it on peer 20.
fn alice_publishes_bob_subscribes(t0: Instant) -> Room {
    let mut r = room(Mode::Rtc);
    join(&mut r, 1, "alice", None, t0).unwrap();
    join(&mut r, 2, "bob", None, t0).unwrap();
    r.publish_media(1, StreamType::Main, true, true, None, Some(10), Vec::new())
        .unwrap();
    assert!(
        r.add_subscription(2, &uid("alice"), StreamType::Main, 20)
            .unwrap()
            .is_empty()
    );
    r
}

#[test]
fn leaving_releases_the_members_own_peers_only() {
    let t0 = Instant::now();
    let mut r = alice_publishes_bob_subscribes(t0);
    assert!(r.peer_use(10).is_some() && r.peer_use(20).is_some());
    // bob leaves: his subscription's peer, nothing of alice's.
    let fx = r.leave(2, t0);
    assert_eq!(released(&fx), vec![20]);
    assert_eq!(r.peers().collect::<Vec<_>>(), vec![10]);
    // alice leaves: her stream's peer.
    let fx = r.leave(1, t0);
    assert_eq!(released(&fx), vec![10]);
    assert_eq!(r.peers().count(), 0);
}

#[test]
fn a_second_subscription_to_a_stream_replaces_the_first() {
    let t0 = Instant::now();
    let mut r = alice_publishes_bob_subscribes(t0);
    let fx = r
        .add_subscription(2, &uid("alice"), StreamType::Main, 21)
        .unwrap();
    assert_eq!(released(&fx), vec![20]);
    assert_eq!(r.peer_use(20), None);
    let (_, down) = r.links_of(2);
    assert_eq!(down, vec![(uid("alice"), StreamType::Main, 21)]);
    assert_eq!(
        released(&r.unsubscribe(2, &uid("alice"), StreamType::Main).unwrap()),
        vec![21]
    );
    assert!(r.unsubscribe(2, &uid("alice"), StreamType::Main).is_err());
}

#[test]
fn a_subscription_to_a_stream_that_ended_meanwhile_is_refused() {
    let t0 = Instant::now();
    let mut r = alice_publishes_bob_subscribes(t0);
    let fx = r.unpublish(1, StreamType::Main).unwrap();
    assert_eq!(released(&fx), vec![10]);
    let e = r
        .add_subscription(2, &uid("alice"), StreamType::Main, 22)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RemoteStreamNotExist);
    assert_eq!(r.peer_use(22), None);
}

#[test]
fn a_dropped_signalling_link_ends_its_subscriptions_but_keeps_its_streams() {
    let t0 = Instant::now();
    let mut r = alice_publishes_bob_subscribes(t0);
    r.publish_media(2, StreamType::Main, true, false, None, Some(11), Vec::new())
        .unwrap();
    r.disconnected(2);
    assert_eq!(released(&r.end_subscriptions(2)), vec![20]);
    assert_eq!(r.links_of(2).0, vec![(uid("bob"), StreamType::Main, 11)]);
}

#[test]
fn dismissing_releases_every_peer() {
    let t0 = Instant::now();
    let mut r = alice_publishes_bob_subscribes(t0);
    assert_eq!(released(&r.dismiss()), vec![10, 20]);
    assert_eq!(r.peers().count(), 0);
}

#[test]
fn a_signalling_publishers_lost_peer_is_forgotten_and_its_stream_stays() {
    let t0 = Instant::now();
    let mut r = alice_publishes_bob_subscribes(t0);
    assert!(r.peer_closed(10, t0).is_empty());
    assert!(r.has_stream(&uid("alice"), StreamType::Main));
    assert_eq!(r.links_of(1).0, vec![]);
    // A closed peer is forgotten once; a re-publish takes a new one.
    assert!(r.peer_closed(10, t0).is_empty());
    r.publish_media(1, StreamType::Main, true, true, None, Some(12), Vec::new())
        .unwrap();
    assert_eq!(r.links_of(1).0, vec![(uid("alice"), StreamType::Main, 12)]);
}

#[test]
fn a_whip_member_leaves_when_its_peer_closes_and_is_never_evicted_for_silence() {
    let t0 = Instant::now();
    let mut r = room(Mode::Rtc);
    join(&mut r, 1, "viewer", None, t0).unwrap();
    join_kind(&mut r, 2, "obs", LinkKind::Whip, t0);
    r.publish_media(2, StreamType::Main, true, true, None, Some(30), Vec::new())
        .unwrap();
    // Long past the heartbeat timeout, only the silent signalling member is evicted.
    let later = t0 + RoomLimits::default().heartbeat_timeout * 2;
    r.heartbeat(1, later);
    assert!(r.tick(later).is_empty());
    assert_eq!(r.user_of(2), Some(&uid("obs")));
    // Its media peer closes: it leaves, and the viewer hears of it.
    let fx = r.peer_closed(30, later);
    assert_eq!(r.user_of(2), None);
    let ev = events(&fx);
    assert!(ev.iter().any(|(to, e)| *to == 1
        && matches!(e, ServerEvent::StreamRemoved { user_id, .. } if *user_id == uid("obs"))));
    assert!(ev.iter().any(|(to, e)| *to == 1
        && matches!(e, ServerEvent::PeerLeave { user_id, .. } if *user_id == uid("obs"))));
    // The closed peer is not closed a second time.
    assert!(released(&fx).is_empty());
}

#[test]
fn custom_messages_reach_the_others_in_order_within_trtcs_limits() {
    let t0 = Instant::now();
    let mut r = room(Mode::Live);
    let (a, b, c): (SessionId, SessionId, SessionId) = (1, 2, 3);
    join(&mut r, a, "anchor", Some(Role::Anchor), t0).unwrap();
    join(&mut r, b, "other-anchor", Some(Role::Anchor), t0).unwrap();
    join(&mut r, c, "viewer", Some(Role::Audience), t0).unwrap();
    // Everyone else gets it, the audience too, with the sender's sequence number.
    let fx = r.custom_message(a, 2, b"hello".to_vec(), t0).unwrap();
    let mut got = events(&fx);
    got.sort_by_key(|(s, _)| *s);
    let want = ServerEvent::CustomMessage {
        user_id: uid("anchor"),
        cmd_id: 2,
        seq: 1,
        data: b"hello".to_vec(),
    };
    assert_eq!(got, vec![(b, want.clone()), (c, want)]);
    // The audience may not send; bad ids and sizes are refused with TRTC's extra codes.
    let extra_of = |r: RtcResult<Vec<Effect>>| r.unwrap_err().extra_code;
    assert_eq!(
        extra_of(r.custom_message(c, 1, b"x".to_vec(), t0)),
        Some(extra::AUDIENCE_ROLE)
    );
    assert_eq!(
        extra_of(r.custom_message(a, 11, b"x".to_vec(), t0)),
        Some(extra::PARAM_RANGE)
    );
    assert_eq!(
        extra_of(r.custom_message(a, 1, vec![0; 1025], t0)),
        Some(extra::BUFFER_OVERSIZE)
    );
    // 30 per second: the first message and 29 more at t0 go, the 31st does not; a thirtieth
    // of a second later one more goes. Refused ones take no sequence number.
    for _ in 0..29 {
        r.custom_message(a, 1, b"x".to_vec(), t0).unwrap();
    }
    assert!(r.custom_message(a, 1, b"x".to_vec(), t0).is_err());
    let fx = r
        .custom_message(a, 1, b"x".to_vec(), t0 + Duration::from_millis(34))
        .unwrap();
    assert!(matches!(
        &events(&fx)[0].1,
        ServerEvent::CustomMessage { seq: 31, .. }
    ));
    // 8 KB per second: the other anchor sends 1 KB messages; the ninth in one instant is over.
    for _ in 0..8 {
        r.custom_message(b, 1, vec![1; 1024], t0).unwrap();
    }
    assert!(r.custom_message(b, 1, vec![1; 1024], t0).is_err());
    assert!(
        r.custom_message(b, 1, vec![1; 1024], t0 + Duration::from_millis(130))
            .is_ok()
    );
}

#[test]
fn mirrors_of_other_nodes_are_hidden_kept_without_heartbeats_and_relayed_to() {
    let t0 = Instant::now();
    // On an edge: a mirrored anchor (1, from the room's node) and local audience (2, 3).
    let mut r = room(Mode::Live);
    r.join(
        JoinInput {
            session: 1,
            user_id: uid("anchor"),
            mode: Mode::Live,
            role: Some(Role::Anchor),
            privileges: None,
            kind: LinkKind::Edge,
        },
        t0,
    )
    .unwrap();
    r.publish_media(1, StreamType::Main, true, true, None, Some(10), Vec::new())
        .unwrap();
    join(&mut r, 2, "v2", Some(Role::Audience), t0).unwrap();
    join(&mut r, 3, "v3", Some(Role::Audience), t0).unwrap();
    assert_eq!((r.len(), r.local_len(), r.audience_len()), (3, 2, 2));
    // An event from the room's node goes to the local members only.
    let ev = events(&r.relay(ServerEvent::PeerJoin { user_id: uid("x") }));
    assert_eq!(ev.iter().map(|(to, _)| *to).collect::<Vec<_>>(), [2, 3]);
    // The admin API lists no mirror.
    let listed: Vec<String> = r
        .describe()
        .members
        .iter()
        .map(|m| m.user_id.to_string())
        .collect();
    assert_eq!(listed, ["v2", "v3"]);
    // Long past the heartbeat timeout the mirror is still there (the audience heartbeats).
    let later = t0 + RoomLimits::default().heartbeat_timeout * 2;
    r.heartbeat(2, later);
    r.heartbeat(3, later);
    assert!(r.tick(later).is_empty());
    assert_eq!(r.user_of(1), Some(&uid("anchor")));
    // A mirrored peer closing does not remove it (only WHIP/WHEP members live by their peer).
    assert!(events(&r.peer_closed(10, later)).is_empty());
    assert_eq!(r.session_of(&uid("anchor")), Some(1));
    // The anchor switching to audience on its node: the local audience hears reason 3.
    let fx = r.mirror_leave(&uid("anchor"), LeaveReason::RoleChange, later);
    let ev = events(&fx);
    assert!(ev.iter().any(|(to, e)| *to == 2
        && matches!(e, ServerEvent::PeerLeave { user_id, reason: LeaveReason::RoleChange }
            if *user_id == uid("anchor"))));
    assert!(ev.iter().any(|(to, e)| *to == 3
        && matches!(e, ServerEvent::StreamRemoved { user_id, .. } if *user_id == uid("anchor"))));
    assert_eq!(r.local_len(), 2);
}

fn edge_kicks(effects: &[Effect]) -> Vec<(SessionId, String, BanReason)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Edge {
                edge,
                order: EdgeOrder::Kick(order),
            } => Some((*edge, order.user_id.to_string(), order.reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_origin_lists_removes_and_kicks_the_audience_its_edges_report() {
    let t0 = Instant::now();
    // On the room's node: an anchor (1) and two edges' hidden members (8, 9).
    let mut r = room(Mode::Live);
    join(&mut r, 1, "anchor", Some(Role::Anchor), t0).unwrap();
    for (s, n) in [(8, "~edge.n2"), (9, "~edge.n3")] {
        r.join(
            JoinInput {
                session: s,
                user_id: UserId::reserved(&n[1..]),
                mode: Mode::Live,
                role: Some(Role::Audience),
                privileges: None,
                kind: LinkKind::Edge,
            },
            t0,
        )
        .unwrap();
    }
    // A mute tells the edges which stream it is of; members get TRTC's event.
    r.publish_media(
        1,
        StreamType::Auxiliary,
        false,
        true,
        None,
        None,
        Vec::new(),
    )
    .unwrap();
    let fx = r
        .mute(1, StreamType::Auxiliary, MediaKind::Video, true)
        .unwrap();
    let orders: Vec<(SessionId, StreamType)> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Edge {
                edge,
                order: EdgeOrder::Mute(m),
            } => Some((*edge, m.stream_type)),
            _ => None,
        })
        .collect();
    assert_eq!(
        orders,
        [(8, StreamType::Auxiliary), (9, StreamType::Auxiliary)]
    );
    assert!(events(&fx).is_empty(), "no member but the edges to tell");
    assert!(r.edge_audience(8, uid("v1"), true, t0, t0).is_empty());
    assert!(r.edge_audience(9, uid("v2"), true, t0, t0).is_empty());
    // A session that is no edge's hidden member reports nothing.
    assert!(r.edge_audience(1, uid("v9"), true, t0, t0).is_empty());
    let listed = |r: &Room| -> Vec<(String, Role)> {
        r.describe()
            .members
            .iter()
            .map(|m| (m.user_id.to_string(), m.role))
            .collect()
    };
    assert_eq!(
        listed(&r),
        [
            ("anchor".to_owned(), Role::Anchor),
            ("v1".to_owned(), Role::Audience),
            ("v2".to_owned(), Role::Audience)
        ]
    );
    // v1 reported again by the other edge: the first edge is told to kick it.
    let fx = r.edge_audience(9, uid("v1"), true, t0, t0);
    assert_eq!(edge_kicks(&fx), [(8, "v1".to_owned(), BanReason::Kick)]);
    // The first edge's late report of v1 leaving does not drop the second's v1.
    assert!(r.edge_audience(8, uid("v1"), false, t0, t0).is_empty());
    assert_eq!(listed(&r).len(), 3);
    // v1 joining here kicks it on its edge; an edge's report of the anchor's userId kicks
    // the anchor here.
    let (_, fx) = join(&mut r, 2, "v1", Some(Role::Anchor), t0).unwrap();
    assert_eq!(edge_kicks(&fx), [(9, "v1".to_owned(), BanReason::Kick)]);
    let fx = r.edge_audience(8, uid("anchor"), true, t0, t0);
    assert_eq!(removals(&fx), [(1, BanReason::Kick)]);
    assert!(edge_kicks(&fx).is_empty());
    // The admin's RemoveUser reaches the edge serving the member.
    let fx = r.remove_users(&[uid("v2"), UserId::reserved("edge.n2")], t0);
    assert_eq!(edge_kicks(&fx), [(9, "v2".to_owned(), BanReason::Banned)]);
    assert!(
        removals(&fx).is_empty(),
        "no hidden member is removed by name"
    );
    // A report that arrives after a newer join of its userId here (a member of the edge that
    // switched to anchor moved here before the edge's report of its first join came): the
    // edge's, older, is the one removed.
    let t1 = t0 + Duration::from_secs(1);
    join(&mut r, 3, "mover", Some(Role::Anchor), t1).unwrap();
    let fx = r.edge_audience(8, uid("mover"), true, t0, t1);
    assert_eq!(edge_kicks(&fx), [(8, "mover".to_owned(), BanReason::Kick)]);
    assert!(removals(&fx).is_empty(), "the newer member here stays");
    assert!(
        listed(&r).contains(&("mover".to_owned(), Role::Anchor)),
        "{:?}",
        listed(&r)
    );
    r.leave(3, t1);
    // An edge's link leaving takes its audience off the list.
    r.leave(8, t0);
    assert_eq!(
        listed(&r),
        [("v1".to_owned(), Role::Anchor)],
        "v2 was removed; the anchor userId's edge left"
    );
}

#[test]
fn on_an_edge_a_local_member_takes_a_mirrors_userid_and_mirror_updates_leave_it_alone() {
    let t0 = Instant::now();
    let mut r = room(Mode::Live);
    join_kind(&mut r, 1, "a", LinkKind::Edge, t0);
    join(&mut r, 2, "v", Some(Role::Audience), t0).unwrap();
    // The local join of the mirror's userId replaces it without the mirror's webhooks.
    let (_, fx) = join(&mut r, 3, "a", Some(Role::Audience), t0).unwrap();
    assert_eq!(removals(&fx), [(1, BanReason::Kick)]);
    assert_eq!(hooks(&fx), [HookEvent::EnterRoom.event_type()]);
    assert_eq!(r.mirror_session(&uid("a")), None);
    assert_eq!(r.session_of(&uid("a")), Some(3));
    // The room's node then kicks its anchor "a": the mirror's leave is not the local member's.
    assert!(
        r.mirror_leave(&uid("a"), LeaveReason::Kicked, t0)
            .is_empty()
    );
    assert_eq!(r.session_of(&uid("a")), Some(3));
    // An edge's kick order removes only members of this node.
    let fx = r.kick_local(&uid("a"), BanReason::Banned, "x".into(), t0);
    assert_eq!(removals(&fx), [(3, BanReason::Banned)]);
    assert_eq!(r.local_users(), [uid("v")]);
}

fn full_orders(effects: &[Effect]) -> Vec<(SessionId, bool)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Edge {
                edge,
                order: EdgeOrder::Full(full),
            } => Some((*edge, *full)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_member_limit_counts_every_nodes_members_and_edges_are_told_when_it_is_reached() {
    let t0 = Instant::now();
    let mut r = Room::new(
        RoomKey {
            sdk_app_id: 1,
            room_id: RoomId::numeric(7).unwrap(),
        },
        Mode::Live,
        RoomLimits {
            max_live_members: 3,
            ..RoomLimits::default()
        },
    );
    join(&mut r, 1, "anchor", Some(Role::Anchor), t0).unwrap();
    // An edge's link is not a member: the room is not full with it, and it is told so.
    let (_, fx) = r
        .join(
            JoinInput {
                session: 8,
                user_id: UserId::reserved("edge.n2"),
                mode: Mode::Live,
                role: Some(Role::Audience),
                privileges: None,
                kind: LinkKind::Edge,
            },
            t0,
        )
        .unwrap();
    assert_eq!(full_orders(&fx), [(8, false)]);
    assert!(r.edge_audience(8, uid("v1"), true, t0, t0).is_empty());
    // The third member, on the edge: full, and the edge is told once.
    let fx = r.edge_audience(8, uid("v2"), true, t0, t0);
    assert_eq!(full_orders(&fx), [(8, true)]);
    let e = join(&mut r, 2, "late", Some(Role::Audience), t0).unwrap_err();
    assert_eq!(e.extra_code, Some(extra::ROOM_FULL));
    // One leaves the edge: room again, and the edge hears it.
    let fx = r.edge_audience(8, uid("v1"), false, t0, t0);
    assert_eq!(full_orders(&fx), [(8, false)]);
    let (_, fx) = join(&mut r, 2, "late", Some(Role::Audience), t0).unwrap();
    assert_eq!(full_orders(&fx), [(8, true)]);

    // On an edge: while the room's node says full, only mirrors and replacing joins get in.
    let mut e = room(Mode::Live);
    join(&mut e, 1, "v", Some(Role::Audience), t0).unwrap();
    e.set_origin_full(true);
    let err = join(&mut e, 2, "w", Some(Role::Audience), t0).unwrap_err();
    assert_eq!(err.extra_code, Some(extra::ROOM_FULL));
    join(&mut e, 3, "v", Some(Role::Audience), t0).expect("a replacing join");
    join_kind(&mut e, 4, "a", LinkKind::Edge, t0);
    e.set_origin_full(false);
    join(&mut e, 2, "w", Some(Role::Audience), t0).unwrap();
    assert_eq!(e.local_len(), 2);
}
