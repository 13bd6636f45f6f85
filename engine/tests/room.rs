//! End-to-end: real rtcroom servers on loopback, real engine clients.

mod common;

use std::time::Duration;

use common::*;
use rtcroom::{
    BanReason, ClientEvent, ConnectionState, ErrorCode, JoinOptions, LeaveReason, Mode, Role,
    create_client,
};
use rtcroom_protocol::usersig::gen_user_sig;

use ConnectionState::*;

fn state_change(prev: ConnectionState, state: ConnectionState) -> ClientEvent {
    ClientEvent::ConnectionStateChanged { prev, state }
}

#[tokio::test]
async fn two_clients_see_each_other_join_and_leave() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let mut alice = TestClient::joined(&url, "alice", Mode::Rtc, 1001, None).await;
    assert_eq!(alice.connection_state(), Connected);
    assert_eq!(alice.next().await, state_change(Disconnected, Connecting));
    assert_eq!(alice.next().await, state_change(Connecting, Connected));

    let mut bob = TestClient::joined(&url, "bob", Mode::Rtc, 1001, None).await;
    alice.wait_peer_join("bob").await;
    // Bob learns about alice from the join answer.
    bob.wait_peer_join("alice").await;
    assert_eq!(alice.remote_users(), vec![uid("bob")]);
    assert_eq!(bob.remote_users(), vec![uid("alice")]);
    assert!(
        alice.get_remote_muted_state().is_empty(),
        "nobody publishes"
    );

    bounded(bob.leave()).await.unwrap();
    assert_eq!(bob.connection_state(), Disconnected);
    bob.wait_state(Disconnected).await;
    let left = alice
        .wait_for("peer-leave bob", |e| {
            matches!(e, ClientEvent::PeerLeave { .. })
        })
        .await;
    assert_eq!(
        left,
        ClientEvent::PeerLeave {
            user_id: uid("bob"),
            reason: LeaveReason::Normal
        }
    );
    assert!(alice.remote_users().is_empty());
    bounded(alice.leave()).await.unwrap();
}

#[tokio::test]
async fn live_audience_is_hidden_until_it_becomes_anchor() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let mut anchor = TestClient::joined(&url, "anchor1", Mode::Live, 2002, None).await;
    let mut viewer =
        TestClient::joined(&url, "viewer", Mode::Live, 2002, Some(Role::Audience)).await;
    // The audience member sees the anchor...
    viewer.wait_peer_join("anchor1").await;
    // ...but the anchor does not see it: the next peer event it gets is a later anchor's.
    let _late = TestClient::joined(&url, "anchor2", Mode::Live, 2002, Some(Role::Anchor)).await;
    let first_peer = anchor
        .wait_for("a peer event", |e| {
            matches!(
                e,
                ClientEvent::PeerJoin { .. } | ClientEvent::PeerLeave { .. }
            )
        })
        .await;
    assert_eq!(
        first_peer,
        ClientEvent::PeerJoin {
            user_id: uid("anchor2")
        }
    );
    assert_eq!(anchor.remote_users(), vec![uid("anchor2")]);

    // Becoming an anchor makes it visible; going back hides it (peer-leave reason 3).
    bounded(viewer.switch_role(Role::Anchor)).await.unwrap();
    anchor.wait_peer_join("viewer").await;
    bounded(viewer.switch_role(Role::Audience)).await.unwrap();
    let left = anchor
        .wait_for("peer-leave viewer", |e| {
            matches!(e, ClientEvent::PeerLeave { .. })
        })
        .await;
    assert_eq!(
        left,
        ClientEvent::PeerLeave {
            user_id: uid("viewer"),
            reason: LeaveReason::RoleChange
        }
    );
}

#[tokio::test]
async fn join_errors_carry_the_servers_codes() {
    let mut cfg = server_config("127.0.0.1:0");
    cfg.limits.max_rtc_members = 1;
    let server = start(cfg);
    let url = server.ws_url();

    // Signed with another key: 0x4001 / 70009, and the client may try again.
    let mut wrong = config(&url, "mallory", Mode::Rtc);
    wrong.user_sig = gen_user_sig(u64::from(APP), "another-key", "mallory", 86_400, now());
    let mut mallory = TestClient::new(wrong);
    let e = bounded(mallory.join(JoinOptions::new(3003u32)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::SignalChannelSetupFailed, "{e}");
    assert_eq!(e.extra_code, Some(70009), "{e}");
    assert_eq!(mallory.connection_state(), Disconnected);
    assert_eq!(mallory.next().await, state_change(Disconnected, Connecting));
    assert_eq!(mallory.next().await, state_change(Connecting, Disconnected));

    // Bad room ids never leave the client: INVALID_PARAMETER with the Web SDK's codes.
    let c = TestClient::new(config(&url, "carol", Mode::Rtc));
    for (room, extra) in [
        (JoinOptions::new(0u32), 5013),
        (JoinOptions::new(4_294_967_295u64), 5013),
        (JoinOptions::new("3003"), 5016),
    ] {
        let e = bounded(c.join(room)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameter, "{e}");
        assert_eq!(e.extra_code, Some(extra), "{e}");
    }
    assert_eq!(c.connection_state(), Disconnected);

    // Room full (limit 1): 0x4004 / -102052.
    let _first = TestClient::joined(&url, "first", Mode::Rtc, 3003, None).await;
    let e = bounded(c.join(JoinOptions::new(3003u32)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::JoinRoomFailed, "{e}");
    assert_eq!(e.extra_code, Some(-102052), "{e}");
    // A failed join can be retried (another room has space).
    bounded(c.join(JoinOptions::new(3004u32))).await.unwrap();
    assert_eq!(c.connection_state(), Connected);
}

#[tokio::test]
async fn wrong_order_calls_fail_at_once_with_invalid_operation() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let c = TestClient::new(config(&url, "dora", Mode::Live));
    let invalid_op = |r: Result<(), rtcroom::RtcError>| {
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidOperation, "{e}");
    };
    // Before join.
    invalid_op(bounded(c.switch_role(Role::Anchor)).await);
    invalid_op(bounded(c.leave()).await);
    // Join twice: while the first is in flight, and after it succeeded.
    let (first, second) = tokio::join!(
        c.join(JoinOptions::new(4004u32)),
        c.join(JoinOptions::new(4004u32))
    );
    first.unwrap();
    let e = second.unwrap_err();
    assert_eq!(
        (e.code, e.extra_code),
        (ErrorCode::InvalidOperation, Some(5104))
    );
    invalid_op(bounded(c.join(JoinOptions::new(4005u32))).await);
    // switch_role in rtc mode is refused by the client.
    let rtc = TestClient::joined(&url, "rita", Mode::Rtc, 4006, None).await;
    invalid_op(bounded(rtc.switch_role(Role::Audience)).await);
    // After leave, everything but a new join.
    bounded(c.leave()).await.unwrap();
    invalid_op(bounded(c.leave()).await);
    invalid_op(bounded(c.switch_role(Role::Anchor)).await);
    assert_eq!(c.connection_state(), Disconnected);
}

/// `leave()` then `join()` on the same client: a new session, seen by the others as a leave
/// and a join, in another room or the same one.
#[tokio::test]
async fn a_client_that_left_can_join_again() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let mut bob = TestClient::joined(&url, "bob", Mode::Rtc, 4101, None).await;
    let mut alice = TestClient::joined(&url, "alice", Mode::Rtc, 4101, None).await;
    bob.wait_peer_join("alice").await;
    alice.wait_peer_join("bob").await;
    bounded(alice.leave()).await.unwrap();
    bob.wait_for(
        "peer-leave alice",
        |e| matches!(e, ClientEvent::PeerLeave { user_id, .. } if *user_id == uid("alice")),
    )
    .await;
    // Another room first: nobody there.
    bounded(alice.join(JoinOptions::new(4102u32)))
        .await
        .unwrap();
    assert_eq!(alice.connection_state(), Connected);
    assert!(alice.remote_users().is_empty());
    bounded(alice.leave()).await.unwrap();
    // Back in the first room: bob sees alice join, alice sees bob again.
    bounded(alice.join(JoinOptions::new(4101u32)))
        .await
        .unwrap();
    bob.wait_peer_join("alice").await;
    alice.wait_peer_join("bob").await;
    assert_eq!(alice.remote_users(), vec![uid("bob")]);
    bounded(alice.send_custom_message(1, b"back".to_vec()))
        .await
        .unwrap();
    bob.wait_for(
        "alice's message",
        |e| matches!(e, ClientEvent::CustomMessage { user_id, .. } if *user_id == uid("alice")),
    )
    .await;
}

#[tokio::test]
async fn join_times_out_when_the_server_never_answers() {
    init_tracing();
    // Accepts TCP connections and never says a word (not even the HTTP upgrade).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut cfg = config(&format!("ws://{addr}/ws"), "tim", Mode::Rtc);
    cfg.join_timeout = Duration::from_millis(300);
    let mut c = TestClient::new(cfg);
    let started = std::time::Instant::now();
    let e = bounded(c.join(JoinOptions::new(5005u32)))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code, ErrorCode::JoinRoomFailed, "{e}");
    assert_eq!(e.message, "join room timeout");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(c.next().await, state_change(Disconnected, Connecting));
    assert_eq!(c.next().await, state_change(Connecting, Disconnected));
    hold.abort();
}

#[tokio::test]
async fn a_second_join_with_the_same_user_id_bans_the_older_client() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let mut older = TestClient::joined(&url, "twin", Mode::Rtc, 6006, None).await;
    let mut newer = TestClient::joined(&url, "twin", Mode::Rtc, 6006, None).await;
    let banned = older
        .wait_for("client-banned", |e| {
            matches!(e, ClientEvent::ClientBanned { .. })
        })
        .await;
    let ClientEvent::ClientBanned { reason, message } = banned else {
        unreachable!()
    };
    assert_eq!(reason, BanReason::Kick);
    assert!(message.contains("duplicated"), "{message}");
    assert_eq!(older.next().await, state_change(Connected, Disconnected));
    assert_eq!(older.connection_state(), Disconnected);
    // No reconnect of its own: nothing more happens until the user acts.
    assert_eq!(newer.connection_state(), Connected);
    assert!(older.drain().is_empty(), "{:?}", older.seen);
    // A join is a new session, which in turn removes the newer twin (TRTC's rule).
    bounded(older.join(JoinOptions::new(6006u32)))
        .await
        .unwrap();
    assert_eq!(older.connection_state(), Connected);
    newer
        .wait_for("client-banned", |e| {
            matches!(
                e,
                ClientEvent::ClientBanned {
                    reason: BanReason::Kick,
                    ..
                }
            )
        })
        .await;
}

#[tokio::test]
async fn a_killed_and_restarted_server_is_survived() {
    let first = start(server_config("127.0.0.1:0"));
    let addr = first.addr();
    let url = first.ws_url();
    let mut alice = TestClient::joined(&url, "alice", Mode::Rtc, 7007, None).await;
    let mut bob = TestClient::joined(&url, "bob", Mode::Rtc, 7007, None).await;
    alice.wait_peer_join("bob").await;

    // Kill the server; both clients notice and start reconnecting.
    bounded(tokio::task::spawn_blocking(move || first.stop()))
        .await
        .unwrap()
        .unwrap();
    alice.wait_state(Reconnecting).await;
    bob.wait_state(Reconnecting).await;
    assert_eq!(alice.connection_state(), Reconnecting);

    // A new server on the same address, same key.
    let second = start(server_config(&addr.to_string()));
    alice.wait_state(Connected).await;
    bob.wait_state(Connected).await;
    assert_eq!(
        alice.seen[alice.seen.len() - 1],
        state_change(Reconnecting, Connected)
    );
    // Both are back in the room: a newcomer sees them, and they see each other.
    let mut carol = TestClient::joined(&second.ws_url(), "carol", Mode::Rtc, 7007, None).await;
    carol.wait_peer_join("alice").await;
    carol.wait_peer_join("bob").await;
    while !alice.remote_users().contains(&uid("bob")) {
        alice.next().await;
    }
    alice.wait_peer_join("carol").await;
    assert!(
        !alice
            .seen
            .iter()
            .any(|e| matches!(e, ClientEvent::Error(_) | ClientEvent::ClientBanned { .. })),
        "{:?}",
        alice.seen
    );
}

#[tokio::test]
async fn reconnection_gives_up_after_the_configured_attempts() {
    let server = start(server_config("127.0.0.1:0"));
    let mut cfg = config(&server.ws_url(), "gina", Mode::Rtc);
    cfg.reconnect_attempts = 3;
    cfg.reconnect_backoff_unit = Duration::from_millis(20);
    let mut c = TestClient::new(cfg);
    bounded(c.join(JoinOptions::new(8008u32))).await.unwrap();
    bounded(tokio::task::spawn_blocking(move || server.stop()))
        .await
        .unwrap()
        .unwrap();
    c.wait_state(Reconnecting).await;
    let e = c
        .wait_for("error", |e| matches!(e, ClientEvent::Error(_)))
        .await;
    let ClientEvent::Error(e) = e else {
        unreachable!()
    };
    assert_eq!(e.code, ErrorCode::SignalChannelReconnectionFailed);
    assert_eq!(c.next().await, state_change(Reconnecting, Disconnected));
    assert_eq!(c.connection_state(), Disconnected);
}

#[tokio::test]
async fn a_server_heartbeat_timeout_is_followed_by_a_silent_rejoin() {
    let mut cfg = server_config("127.0.0.1:0");
    cfg.timeouts.heartbeat_timeout_s = 0.5;
    let server = start(cfg);
    let url = server.ws_url();
    // The server evicts after 0.5 s of silence but asks for heartbeats every 2 s, so this
    // client is always too slow: it gets `user_time_out`.
    let mut slow_cfg = config(&url, "sloth", Mode::Rtc);
    slow_cfg.heartbeat_interval = Duration::from_secs(30);
    let mut sloth = TestClient::new(slow_cfg);
    bounded(sloth.join(JoinOptions::new(9009u32)))
        .await
        .unwrap();
    sloth.wait_state(Connected).await;
    sloth.wait_state(Reconnecting).await;
    sloth.wait_state(Connected).await;
    assert!(
        !sloth
            .seen
            .iter()
            .any(|e| matches!(e, ClientEvent::ClientBanned { .. } | ClientEvent::Error(_))),
        "user_time_out is not reported: {:?}",
        sloth.seen
    );
}

#[tokio::test]
async fn events_stream_ends_when_the_client_is_dropped() {
    let server = start(server_config("127.0.0.1:0"));
    let c = create_client(config(&server.ws_url(), "ed", Mode::Rtc)).unwrap();
    let mut events = c.events();
    bounded(c.join(JoinOptions::new(9100u32))).await.unwrap();
    drop(c);
    let mut n = 0;
    while bounded(events.recv()).await.is_some() {
        n += 1;
    }
    assert_eq!(n, 2, "CONNECTING and CONNECTED, then the end");
}

#[tokio::test]
async fn leave_during_a_pending_join_cancels_it() {
    init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut c = TestClient::new(config(&format!("ws://{addr}/ws"), "lea", Mode::Rtc));
    let mut ev = c.client.events();
    let join = c.client.join(JoinOptions::new(5006u32));
    let leave = async {
        // Leave as soon as the join is under way (CONNECTING).
        ev.recv().await;
        c.client.leave().await
    };
    let (joined, left) = bounded(async { tokio::join!(join, leave) }).await;
    let e = joined.unwrap_err();
    assert_eq!(e.code, ErrorCode::JoinRoomFailed, "{e}");
    assert!(e.message.contains("leave"), "{e}");
    left.unwrap();
    assert_eq!(c.connection_state(), Disconnected);
    assert_eq!(c.next().await, state_change(Disconnected, Connecting));
    assert_eq!(c.next().await, state_change(Connecting, Disconnected));
    hold.abort();
}

/// Custom messages through a real server: an anchor's reach the audience in order with the
/// sender's sequence numbers; the audience may not send; bad ids are refused before sending.
#[tokio::test]
async fn custom_messages_reach_the_room_in_order() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let anchor = TestClient::joined(&url, "anchor", Mode::Live, 2077, Some(Role::Anchor)).await;
    let mut viewer =
        TestClient::joined(&url, "viewer", Mode::Live, 2077, Some(Role::Audience)).await;
    for i in 1..=3u8 {
        bounded(anchor.send_custom_message(i, vec![i; 100]))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = viewer
            .wait_for("a custom message", |e| {
                matches!(e, ClientEvent::CustomMessage { .. })
            })
            .await;
        if let ClientEvent::CustomMessage {
            user_id,
            cmd_id,
            seq,
            data,
        } = e
        {
            assert_eq!(user_id, uid("anchor"));
            assert_eq!(data, vec![cmd_id; 100]);
            got.push((cmd_id, seq));
        }
    }
    assert_eq!(got, vec![(1, 1), (2, 2), (3, 3)]);
    let e = bounded(viewer.send_custom_message(1, b"hi".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.extra_code),
        (ErrorCode::InvalidOperation, Some(5107))
    );
    let e = bounded(anchor.send_custom_message(11, b"hi".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.extra_code),
        (ErrorCode::InvalidParameter, Some(5005))
    );
}
