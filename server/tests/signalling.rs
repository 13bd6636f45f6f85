//! End-to-end: a real server on a loopback port, real WebSocket clients.

mod common;

use common::*;
use rtcroom_protocol::signal::{
    BanReason, ClientMessage, LeaveReason, MediaKind, PublishRequest, ReplyResult, ServerEvent,
    StreamType,
};
use rtcroom_protocol::usersig::{Privileges, gen_private_map_key, gen_user_sig};
use rtcroom_protocol::{ErrorCode, Mode, Role, RoomId, UserId};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn publish(audio: bool, video: bool) -> ClientMessage {
    ClientMessage::Publish(PublishRequest {
        stream_type: StreamType::Main,
        has_audio: audio,
        has_video: video,
        sdp: None,
        layers: Vec::new(),
    })
}

#[tokio::test]
async fn join_lists_members_and_streams_and_announces() {
    let server = start(config());
    let url = server.ws_url();
    let (mut alice, r) = joined(&url, "alice", "1001", Mode::Rtc, None).await;
    assert!(r.members.is_empty());
    assert_eq!(r.room_id, RoomId::numeric(1001).unwrap());
    assert_eq!(r.heartbeat_interval_s, 2);
    alice.request(publish(true, true)).await.unwrap();

    let (mut bob, r) = joined(&url, "bob", "1001", Mode::Rtc, None).await;
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.members[0].user_id, uid("alice"));
    assert_eq!(r.streams.len(), 1);
    assert!(r.streams[0].has_video && r.streams[0].has_audio);
    assert_eq!(
        alice.event().await,
        ServerEvent::PeerJoin {
            user_id: uid("bob")
        }
    );

    // Mute, unpublish and leave are seen by the other member.
    alice
        .request(ClientMessage::Mute {
            stream_type: StreamType::Main,
            kind: MediaKind::Audio,
            muted: true,
        })
        .await
        .unwrap();
    assert_eq!(
        bob.event().await,
        ServerEvent::MuteAudio {
            user_id: uid("alice")
        }
    );
    alice
        .request(ClientMessage::Unpublish {
            stream_type: StreamType::Main,
        })
        .await
        .unwrap();
    assert_eq!(
        bob.event().await,
        ServerEvent::StreamRemoved {
            user_id: uid("alice"),
            stream_type: StreamType::Main
        }
    );
    alice.request(ClientMessage::Leave).await.unwrap();
    assert_eq!(
        alice.closed().await.map(|f| f.code),
        Some(CloseCode::Normal)
    );
    assert_eq!(
        bob.event().await,
        ServerEvent::PeerLeave {
            user_id: uid("alice"),
            reason: LeaveReason::Normal
        }
    );

    // Numeric 1001 and string "1001" are different rooms.
    let mut carol = Client::connect(&url).await;
    let mut j = join_req("carol", "1001", Mode::Rtc, None);
    j.use_string_room_id = true;
    let r = carol.join(j).await.unwrap();
    assert!(r.members.is_empty());
    server.stop().unwrap();
}

#[tokio::test]
async fn events_piling_up_within_the_batch_window_travel_in_one_frame() {
    let mut config = config();
    // A long window so the two joins below surely fall inside it.
    config.timeouts.event_batch_s = 1.0;
    let server = start(config);
    let url = server.ws_url();
    let (mut a, _) = joined(&url, "a", "707", Mode::Rtc, None).await;
    let (_b, _) = joined(&url, "b", "707", Mode::Rtc, None).await;
    // The first event on a quiet room goes out at once, on its own.
    assert_eq!(a.event().await, ServerEvent::PeerJoin { user_id: uid("b") });
    assert!(a.batches.is_empty(), "{:?}", a.batches);
    let (_c, _) = joined(&url, "c", "707", Mode::Rtc, None).await;
    let (_d, _) = joined(&url, "d", "707", Mode::Rtc, None).await;
    // The next two wait for the window and arrive together, in order.
    assert_eq!(a.event().await, ServerEvent::PeerJoin { user_id: uid("c") });
    assert_eq!(a.event().await, ServerEvent::PeerJoin { user_id: uid("d") });
    assert_eq!(a.batches, vec![2]);
    // A late joiner's reply lists everyone (the room's incrementally encoded member list).
    let (_e, r) = joined(&url, "e", "707", Mode::Rtc, None).await;
    let mut names: Vec<String> = r.members.iter().map(|m| m.user_id.to_string()).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c", "d"]);
}

/// Joins run on the joining session's own thread under the room's lock, from several HTTP
/// workers at once: they must still come out as if one at a time. For every pair of members
/// exactly one learns of the other from its join reply and the other from a `peer-join`, and
/// nobody hears of anyone twice.
#[tokio::test]
async fn concurrent_joins_each_learn_of_every_other_member_exactly_once() {
    const N: usize = 40;
    let mut cfg = config();
    cfg.workers = Some(4);
    let server = start(cfg);
    let url = server.ws_url();
    let names: Vec<String> = (0..N).map(|i| format!("u{i}")).collect();
    let mut clients = Vec::new();
    for _ in &names {
        clients.push(Client::connect(&url).await);
    }
    // All connected; now every join goes out before any reply is read.
    let mut ids = Vec::new();
    for (c, name) in clients.iter_mut().zip(&names) {
        ids.push(
            c.send(ClientMessage::Join(join_req(name, "808", Mode::Rtc, None)))
                .await,
        );
    }
    let mut listed: Vec<std::collections::BTreeSet<String>> = Vec::new();
    for (c, id) in clients.iter_mut().zip(&ids) {
        let reply = c.reply(*id).await;
        let ReplyResult::Ok {
            data: Some(rtcroom_protocol::signal::ReplyData::Joined(r)),
        } = reply.result
        else {
            panic!("join refused: {reply:?}");
        };
        listed.push(r.members.iter().map(|m| m.user_id.to_string()).collect());
    }
    for i in 0..N {
        assert!(!listed[i].contains(&names[i]), "{} lists itself", names[i]);
        for j in i + 1..N {
            let (i_knows_j, j_knows_i) =
                (listed[i].contains(&names[j]), listed[j].contains(&names[i]));
            assert!(
                i_knows_j != j_knows_i,
                "{} and {}: exactly one joined first (listed {i_knows_j}/{j_knows_i})",
                names[i],
                names[j]
            );
        }
    }
    // Everyone not in a member's reply is announced to it, once, and nothing else is.
    for (i, c) in clients.iter_mut().enumerate() {
        let mut heard = std::collections::BTreeSet::new();
        while heard.len() + listed[i].len() < N - 1 {
            match c.event().await {
                ServerEvent::PeerJoin { user_id } => {
                    let u = user_id.to_string();
                    assert!(
                        !listed[i].contains(&u),
                        "{}: {u} listed and announced",
                        names[i]
                    );
                    assert!(heard.insert(u.clone()), "{}: {u} announced twice", names[i]);
                }
                other => panic!("{}: unexpected {other:?}", names[i]),
            }
        }
    }
    // A last joiner is the very next event everyone sees: no duplicate was still on its way.
    let (_z, r) = joined(&url, "z", "808", Mode::Rtc, None).await;
    assert_eq!(r.members.len(), N);
    for c in &mut clients {
        assert_eq!(c.event().await, ServerEvent::PeerJoin { user_id: uid("z") });
    }
}

#[tokio::test]
async fn join_rejections_carry_trtc_codes() {
    let mut cfg = config();
    cfg.limits.max_rtc_members = 2;
    cfg.apps.push(rtcroom_server::config::AppConfig {
        sdk_app_id: APP + 1,
        secret_key: "k2".into(),
        require_private_map_key: true,
    });
    let server = start(cfg);
    let url = server.ws_url();
    let mut c = Client::connect(&url).await;

    let code = |e: rtcroom_protocol::RtcError| (e.code, e.extra_code);
    let mut j = join_req("alice", "1", Mode::Rtc, None);
    j.user_sig = gen_user_sig(u64::from(APP), "wrong-key", "alice", 300, now());
    assert_eq!(
        code(c.join(j).await.unwrap_err()),
        (ErrorCode::SignalChannelSetupFailed, Some(70009))
    );

    let mut j = join_req("alice", "1", Mode::Rtc, None);
    j.user_sig = gen_user_sig(u64::from(APP), KEY, "alice", 10, now() - 100);
    assert_eq!(
        code(c.join(j).await.unwrap_err()),
        (ErrorCode::SignalChannelSetupFailed, Some(70001))
    );

    let mut j = join_req("alice", "1", Mode::Rtc, None);
    j.user_sig = sig("mallory");
    assert_eq!(
        code(c.join(j).await.unwrap_err()),
        (ErrorCode::SignalChannelSetupFailed, Some(70013))
    );

    let mut j = join_req("alice", "1", Mode::Rtc, None);
    j.user_sig = "not a ticket!".into();
    assert_eq!(code(c.join(j).await.unwrap_err()).1, Some(70003));

    let mut j = join_req("alice", "1", Mode::Rtc, None);
    j.sdk_app_id = 42;
    assert_eq!(
        code(c.join(j).await.unwrap_err()),
        (ErrorCode::SignalChannelSetupFailed, Some(70020))
    );

    for bad_room in ["0", "4294967295", "abc", ""] {
        let j = join_req("alice", bad_room, Mode::Rtc, None);
        assert_eq!(
            code(c.join(j).await.unwrap_err()),
            (ErrorCode::InvalidParameter, Some(5013)),
            "{bad_room:?}"
        );
    }

    // An app that requires a PrivateMapKey.
    let mut j = join_req("alice", "7", Mode::Rtc, None);
    j.sdk_app_id = APP + 1;
    j.user_sig = gen_user_sig(u64::from(APP + 1), "k2", "alice", 300, now());
    assert_eq!(
        code(c.join(j.clone()).await.unwrap_err()),
        (ErrorCode::JoinRoomFailed, Some(-100006))
    );
    let room7 = RoomId::numeric(7).unwrap();
    j.private_map_key = Some(gen_private_map_key(
        u64::from(APP + 1),
        "k2",
        "alice",
        300,
        now(),
        &room7,
        Privileges::from_bits(2),
    ));
    assert_eq!(
        code(c.join(j.clone()).await.unwrap_err()),
        (ErrorCode::JoinRoomFailed, Some(-102010)),
        "may not create"
    );
    j.private_map_key = Some(gen_private_map_key(
        u64::from(APP + 1),
        "k2",
        "alice",
        300,
        now(),
        &RoomId::numeric(8).unwrap(),
        Privileges::ALL,
    ));
    assert_eq!(
        code(c.join(j.clone()).await.unwrap_err()),
        (ErrorCode::JoinRoomFailed, Some(-102011)),
        "other room"
    );
    j.private_map_key = Some(gen_private_map_key(
        u64::from(APP + 1),
        "k2",
        "alice",
        300,
        now(),
        &room7,
        Privileges::from_bits(1 | 2 | 8 | 32),
    ));
    c.join(j)
        .await
        .expect("a key for this room with create+enter joins");
    // ...but may not send video.
    let e = c.request(publish(false, true)).await.unwrap_err();
    assert_eq!(code(e), (ErrorCode::InvalidOperation, Some(-102013)));

    // Room full at the configured limit (2).
    let (_a, _) = joined(&url, "a1", "55", Mode::Rtc, None).await;
    let (_b, _) = joined(&url, "a2", "55", Mode::Rtc, None).await;
    let mut third = Client::connect(&url).await;
    assert_eq!(
        code(
            third
                .join(join_req("a3", "55", Mode::Rtc, None))
                .await
                .unwrap_err()
        ),
        (ErrorCode::JoinRoomFailed, Some(-102052))
    );
    let metrics = server.metrics().join_failures();
    assert_eq!(metrics.get(&-102052), Some(&1));
    assert_eq!(metrics.get(&70009), Some(&1));
    server.stop().unwrap();
}

#[tokio::test]
async fn live_audience_is_hidden_and_must_switch_role_to_publish() {
    let server = start(config());
    let url = server.ws_url();
    let (mut anchor, r) = joined(&url, "anchor", "9", Mode::Live, Some(Role::Anchor)).await;
    assert_eq!(r.role, Role::Anchor);
    let (mut viewer, r) = joined(&url, "viewer", "9", Mode::Live, None).await;
    assert_eq!(
        r.role,
        Role::Audience,
        "live join without a role is audience"
    );
    assert_eq!(r.members.len(), 1);
    let e = viewer.request(publish(true, true)).await.unwrap_err();
    assert_eq!(
        (e.code, e.extra_code),
        (ErrorCode::InvalidOperation, Some(5107))
    );
    // The anchor heard nothing of the audience member; its next event is the role switch.
    viewer
        .request(ClientMessage::SwitchRole { role: Role::Anchor })
        .await
        .unwrap();
    assert_eq!(
        anchor.event().await,
        ServerEvent::PeerJoin {
            user_id: uid("viewer")
        }
    );
    viewer.request(publish(true, false)).await.unwrap();
    match anchor.event().await {
        ServerEvent::StreamAdded(s) => assert_eq!(s.user_id, uid("viewer")),
        other => panic!("expected stream-added, got {other:?}"),
    }
    server.stop().unwrap();
}

#[tokio::test]
async fn duplicate_user_id_kicks_the_older_session() {
    let server = start(config());
    let url = server.ws_url();
    let (mut first, _) = joined(&url, "dup", "77", Mode::Rtc, None).await;
    let (mut other, _) = joined(&url, "other", "77", Mode::Rtc, None).await;
    assert_eq!(
        first.event().await,
        ServerEvent::PeerJoin {
            user_id: uid("other")
        }
    );
    let (_second, r) = joined(&url, "dup", "77", Mode::Rtc, None).await;
    assert_eq!(r.members.len(), 1);
    match first.event().await {
        ServerEvent::ClientBanned { reason, message } => {
            assert_eq!(reason, BanReason::Kick);
            assert!(message.contains("duplicated"), "{message}");
        }
        other => panic!("expected client-banned, got {other:?}"),
    }
    assert!(first.closed().await.is_some());
    assert_eq!(
        other.event().await,
        ServerEvent::PeerLeave {
            user_id: uid("dup"),
            reason: LeaveReason::Kicked
        }
    );
    assert_eq!(
        other.event().await,
        ServerEvent::PeerJoin {
            user_id: uid("dup")
        }
    );
    server.stop().unwrap();
}

#[tokio::test]
async fn silent_member_is_evicted_with_reason_timeout() {
    let mut cfg = config();
    cfg.timeouts.heartbeat_timeout_s = 0.4;
    let server = start(cfg);
    let url = server.ws_url();
    let (mut silent, _) = joined(&url, "silent", "5", Mode::Rtc, None).await;
    let (mut alive, _) = joined(&url, "alive", "5", Mode::Rtc, None).await;
    assert_eq!(
        silent.event().await,
        ServerEvent::PeerJoin {
            user_id: uid("alive")
        }
    );
    // `alive` keeps heartbeating (each request counts) until it hears of the eviction.
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(50));
    let evicted = tokio::time::timeout(DEADLINE, async {
        loop {
            pace.tick().await;
            alive.request(ClientMessage::Heartbeat).await.unwrap();
            if alive.pending_events() > 0 {
                return alive.event().await;
            }
        }
    })
    .await
    .expect("eviction within the deadline");
    assert_eq!(
        evicted,
        ServerEvent::PeerLeave {
            user_id: uid("silent"),
            reason: LeaveReason::Timeout
        }
    );
    match silent.event().await {
        ServerEvent::ClientBanned { reason, .. } => assert_eq!(reason, BanReason::UserTimeOut),
        other => panic!("expected client-banned, got {other:?}"),
    }
    server.stop().unwrap();
}

#[tokio::test]
async fn bad_input_gets_error_replies_or_a_clean_close() {
    let mut cfg = config();
    cfg.limits.max_message_bytes = 4096;
    cfg.limits.messages_per_second = 5;
    cfg.limits.message_burst = 10;
    let server = start(cfg);
    let url = server.ws_url();

    // Before join: any request is an invalid operation.
    let mut c = Client::connect(&url).await;
    let e = c.request(ClientMessage::Heartbeat).await.unwrap_err();
    assert_eq!(
        (e.code, e.extra_code),
        (ErrorCode::InvalidOperation, Some(5101))
    );
    // Malformed JSON, unknown type, wrong version, bad field, binary: error replies, with
    // the request's id whenever the frame has one (a client waiting on it does not hang).
    for (frame, id) in [
        (Message::text("{not json"), 0),
        (Message::text(r#"{"v":1,"id":9,"msg":{"type":"dance"}}"#), 9),
        (
            Message::text(r#"{"v":7,"id":10,"msg":{"type":"leave"}}"#),
            10,
        ),
        (
            Message::text(
                r#"{"v":1,"id":11,"msg":{"type":"join","sdkAppId":1,"userId":"u","userSig":"s","roomId":"1","mode":"party"}}"#,
            ),
            11,
        ),
        (Message::binary(vec![1u8, 2, 3]), 0),
    ] {
        c.send_raw(frame).await;
        let r = c.any_reply().await;
        assert_eq!(r.id, id);
        match r.result {
            ReplyResult::Err { error } => assert_eq!(error.code, ErrorCode::InvalidParameter),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    // Still usable: a valid join works on the same socket.
    c.join(join_req("ok", "3", Mode::Rtc, None)).await.unwrap();
    // Join twice on one connection.
    let e = c
        .join(join_req("ok", "3", Mode::Rtc, None))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.extra_code),
        (ErrorCode::InvalidOperation, Some(5104))
    );

    // Oversize frame: closed with 1009.
    let mut big = Client::connect(&url).await;
    big.send_raw(Message::text("x".repeat(10_000))).await;
    assert_eq!(big.closed().await.map(|f| f.code), Some(CloseCode::Size));

    // Flood: refused with errors, then closed with a policy violation.
    let mut flood = Client::connect(&url).await;
    for _ in 0..40 {
        flood.send(ClientMessage::Heartbeat).await;
    }
    let mut refused = 0;
    while flood.closed.is_none() {
        let frame = tokio::time::timeout(DEADLINE, flood.any_reply_or_close())
            .await
            .unwrap();
        if let Some(r) = frame
            && let ReplyResult::Err { error } = r.result
            && error.message.contains("too many")
        {
            refused += 1;
        }
    }
    assert!(refused >= 1);
    assert_eq!(
        flood.closed.clone().unwrap().map(|f| f.code),
        Some(CloseCode::Policy)
    );

    // A flood of binary frames counts against the same limit (they are answered with an
    // error each, which costs the server as much as a text frame).
    let mut binary = Client::connect(&url).await;
    for _ in 0..40 {
        binary.send_raw(Message::binary(vec![0u8; 8])).await;
    }
    while binary.closed.is_none() {
        tokio::time::timeout(DEADLINE, binary.any_reply_or_close())
            .await
            .unwrap();
    }
    let close = binary.closed.clone().unwrap().expect("a close frame");
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Policy, "message flood"),
        "binary frames bypassed the rate limiter"
    );

    // Other rooms never noticed: the first client still works.
    c.request(ClientMessage::Heartbeat).await.unwrap();
    server.stop().unwrap();
}

#[tokio::test]
async fn no_join_within_the_timeout_closes_the_socket() {
    let mut cfg = config();
    cfg.timeouts.join_timeout_s = 0.3;
    let server = start(cfg);
    let mut c = Client::connect(&server.ws_url()).await;
    let r = c.any_reply().await;
    match r.result {
        ReplyResult::Err { error } => {
            assert_eq!(error.code, ErrorCode::JoinRoomFailed);
            assert!(error.message.contains("no join"), "{}", error.message);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(c.closed().await.map(|f| f.code), Some(CloseCode::Policy));
    server.stop().unwrap();
}

#[tokio::test]
async fn health_and_metrics() {
    let server = start(config());
    let (_c, _) = joined(&server.ws_url(), "m", "1", Mode::Rtc, None).await;
    let (status, body) = http(server.addr(), "GET", "/healthz", &[], "").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http(server.addr(), "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\nrtcroom_rooms 1\n"), "{body}");
    assert!(body.contains("\nrtcroom_members 1\n"), "{body}");
    assert!(body.contains("\nrtcroom_joins_total 1\n"), "{body}");
    server.stop().unwrap();
}

#[tokio::test]
async fn shutdown_closes_sessions_within_a_bound() {
    let server = start(config());
    let (mut c, _) = joined(&server.ws_url(), "s", "1", Mode::Rtc, None).await;
    let started = std::time::Instant::now();
    let stopper = std::thread::spawn(move || server.stop());
    assert_eq!(c.closed().await.map(|f| f.code), Some(CloseCode::Away));
    stopper.join().unwrap().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
}

#[tokio::test]
async fn a_room_that_fails_closes_its_links_with_1011_and_can_be_joined_again() {
    let server = start(config());
    let url = server.ws_url();
    let (mut alice, _) = joined(&url, "alice", "2001", Mode::Rtc, None).await;
    let (mut bob, _) = joined(&url, "bob", "2001", Mode::Rtc, None).await;
    assert_eq!(
        alice.event().await,
        ServerEvent::PeerJoin {
            user_id: uid("bob")
        }
    );
    let (mut carol, _) = joined(&url, "carol", "2002", Mode::Rtc, None).await;
    let key = rtcroom_server::room::RoomKey {
        sdk_app_id: APP,
        room_id: RoomId::numeric(2001).unwrap(),
    };
    assert!(server.registry().inject_room_fault(&key).await);
    // The room's next step (this request, or its timer) panics: both members are told.
    let _ = alice.send(ClientMessage::Heartbeat).await;
    for c in [&mut alice, &mut bob] {
        let frame = c.closed().await.expect("a close frame");
        assert_eq!(frame.code, CloseCode::Error, "1011: {frame:?}");
        assert_eq!(frame.reason.as_str(), "room failed");
    }
    assert_eq!(
        server
            .metrics()
            .room_faults
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The process carries on: the other room is untouched, and the failed one can be
    // joined again (a fresh room).
    carol.request(ClientMessage::Heartbeat).await.unwrap();
    let (_alice, r) = joined(&url, "alice", "2001", Mode::Rtc, None).await;
    assert!(r.members.is_empty(), "a fresh room: {:?}", r.members);
    assert!(
        !server
            .registry()
            .inject_room_fault(&rtcroom_server::room::RoomKey {
                sdk_app_id: APP,
                room_id: RoomId::numeric(2999).unwrap(),
            })
            .await
    );
    server.stop().unwrap();
}

#[tokio::test]
async fn a_refused_first_join_creates_no_room() {
    let server = start(config());
    let url = server.ws_url();
    let room = RoomId::numeric(2101).unwrap();
    // May create the room (bit 1) but not enter it (bit 2).
    let mut j = join_req("alice", "2101", Mode::Rtc, None);
    j.private_map_key = Some(gen_private_map_key(
        u64::from(APP),
        KEY,
        "alice",
        300,
        now(),
        &room,
        Privileges::from_bits(1),
    ));
    let mut c = Client::connect(&url).await;
    let e = c.join(j).await.unwrap_err();
    assert_eq!(e.extra_code, Some(-102011), "{e:?}");
    assert_eq!(
        server
            .metrics()
            .rooms
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Nobody can enter a room that was never created without the create bit.
    let mut j = join_req("bob", "2101", Mode::Rtc, None);
    j.private_map_key = Some(gen_private_map_key(
        u64::from(APP),
        KEY,
        "bob",
        300,
        now(),
        &room,
        Privileges::from_bits(2),
    ));
    let mut c = Client::connect(&url).await;
    let e = c.join(j).await.unwrap_err();
    assert_eq!(e.extra_code, Some(-102010), "{e:?}");
    server.stop().unwrap();
}

/// Open a WebSocket over a raw TCP connection (the upgrade by hand), for frames no client
/// library would send.
async fn raw_ws(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(DEADLINE, s.read_exact(&mut b))
            .await
            .expect("handshake in time")
            .unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[tokio::test]
async fn a_frame_declaring_a_huge_payload_is_refused_from_its_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(config());
    let mut s = raw_ws(server.addr()).await;
    // FIN + text, masked, 64-bit length of 1 GiB, a mask, and only a few payload bytes.
    let mut frame = vec![0x81, 0xFF];
    frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(b"{\"v\":1");
    s.write_all(&frame).await.unwrap();
    // The close comes at once, not after a gigabyte.
    let mut head = [0u8; 4];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut head))
        .await
        .expect("a close frame in time")
        .unwrap();
    if head[0] != 0x88 {
        let mut rest = vec![0u8; usize::from(head[1]) - 2];
        s.read_exact(&mut rest).await.unwrap();
        panic!("not a close: {:?}{}", head, String::from_utf8_lossy(&rest));
    }
    assert_eq!(
        u16::from_be_bytes([head[2], head[3]]),
        1009,
        "1009 message too big"
    );
    server.stop().unwrap();
}

/// A client frame (masked with a zero key, so the payload goes as it is).
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 65536);
    let mut f = vec![first_byte];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Read one server frame (unmasked, short): (first byte, payload).
async fn server_frame(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut head))
        .await
        .expect("a frame in time")
        .unwrap();
    let len = match head[1] & 0x7F {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.unwrap();
            usize::from(u16::from_be_bytes(l))
        }
        127 => panic!("unexpectedly long frame"),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (head[0], payload)
}

#[tokio::test]
async fn a_text_message_split_into_continuation_frames_is_answered_once() {
    use tokio::io::AsyncWriteExt;
    let server = start(config());
    let mut s = raw_ws(server.addr()).await;
    let text = rtcroom_protocol::signal::encode(&rtcroom_protocol::signal::ClientEnvelope::new(
        7,
        ClientMessage::Join(join_req("alice", "2201", Mode::Rtc, None)),
    ));
    let (a, b) = text.as_bytes().split_at(text.len() / 2);
    // Text without FIN, then a continuation with FIN.
    let mut frames = client_frame(0x01, a);
    frames.extend(client_frame(0x80, b));
    s.write_all(&frames).await.unwrap();
    let (op, payload) = server_frame(&mut s).await;
    assert_eq!(op, 0x81, "a text frame");
    let reply = String::from_utf8(payload).unwrap();
    assert!(
        reply.contains("\"id\":7") && !reply.contains("\"error\""),
        "one reply, the join's: {reply}"
    );
    // Nothing else was answered: the next reply is the heartbeat's.
    let hb = rtcroom_protocol::signal::encode(&rtcroom_protocol::signal::ClientEnvelope::new(
        8,
        ClientMessage::Heartbeat,
    ));
    s.write_all(&client_frame(0x81, hb.as_bytes()))
        .await
        .unwrap();
    let (_, payload) = server_frame(&mut s).await;
    let reply = String::from_utf8(payload).unwrap();
    assert!(reply.contains("\"id\":8"), "{reply}");
    server.stop().unwrap();
}

#[tokio::test]
async fn a_member_that_stops_reading_is_closed_as_a_slow_consumer() {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::atomic::Ordering;
    let mut cfg = config();
    cfg.limits.max_pending_events = 16;
    cfg.limits.messages_per_second = 1_000_000;
    cfg.limits.message_burst = 1_000_000;
    let server = start(cfg);
    let url = server.ws_url();
    // The victim: a small receive buffer, and it stops reading after its join.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(server.addr()).await.unwrap();
    let (mut victim, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .unwrap();
    let join = rtcroom_protocol::signal::encode(&rtcroom_protocol::signal::ClientEnvelope::new(
        1,
        ClientMessage::Join(join_req("victim", "2301", Mode::Rtc, None)),
    ));
    victim.send(Message::text(join)).await.unwrap();
    let reply = tokio::time::timeout(DEADLINE, victim.next()).await.unwrap();
    assert!(matches!(reply, Some(Ok(Message::Text(_)))), "{reply:?}");
    // The talker makes events for the victim (mute toggles) until the server gives up on it.
    let (mut talker, _) = joined(&url, "talker", "2301", Mode::Rtc, None).await;
    talker.request(publish(true, true)).await.unwrap();
    let slow = &server.metrics().slow_consumers;
    let mut toggles = 0u32;
    while slow.load(Ordering::Relaxed) == 0 {
        assert!(
            toggles < 400_000,
            "no slow-consumer close after {toggles} events"
        );
        let mut ids = Vec::new();
        for _ in 0..500 {
            toggles += 1;
            ids.push(
                talker
                    .send(ClientMessage::Mute {
                        stream_type: StreamType::Main,
                        kind: MediaKind::Audio,
                        muted: toggles % 2 == 1,
                    })
                    .await,
            );
        }
        for id in ids {
            talker.reply(id).await;
        }
    }
    // The talker is unaffected; the victim, once it reads again, finds the close.
    talker.request(ClientMessage::Heartbeat).await.unwrap();
    let close = tokio::time::timeout(DEADLINE, async {
        loop {
            match victim.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the close in time")
    .expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason.as_str(), "slow consumer");
    assert_eq!(slow.load(Ordering::Relaxed), 1);
    server.stop().unwrap();
}
