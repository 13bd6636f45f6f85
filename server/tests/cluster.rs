//! Several nodes sharing rooms through a real `redis-server` (started here on a free loopback
//! port; `scripts/setup-debian.sh` installs it): joins through any node land in one room,
//! admin calls work through any node, a stopped node's rooms are placed again, and a Redis
//! outage keeps the rooms a node holds while refusing new placements.

mod common;

use std::time::Duration;

use common::redis_server::Redis;
use common::*;
use rtcroom_protocol::signal::{BanReason, ServerEvent};
use rtcroom_protocol::{ErrorCode, Mode, UserId};
use rtcroom_server::{RunningServer, ServerConfig};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn node_config(redis: &Redis, id: &str) -> ServerConfig {
    let mut c = config();
    c.admin.hmac_key = Some("hmac-key".into());
    redis.node(c, id)
}

/// Wait (bounded) until `cond` holds; polls a little at a time.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tick.tick().await;
    }
}

/// Read events until the client is banned; the reason.
async fn banned(c: &mut Client) -> BanReason {
    loop {
        if let ServerEvent::ClientBanned { reason, .. } = c.event().await {
            return reason;
        }
    }
}

fn metric(server: &RunningServer, name: &str) -> i64 {
    let text = server.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

#[tokio::test]
async fn joins_and_admin_calls_through_any_node_reach_one_room() {
    let redis = Redis::start();
    let n1 = start(node_config(&redis, "n1"));
    let n2 = start(node_config(&redis, "n2"));
    let n3 = start(node_config(&redis, "n3"));
    until("three nodes see each other", || {
        [&n1, &n2, &n3]
            .iter()
            .all(|n| metric(n, "rtcroom_cluster_nodes") == 3)
    })
    .await;

    // The first join places the room on the node it reached (all nodes equally empty).
    let (mut alice, r) = joined(&n1.ws_url(), "alice", "500", Mode::Rtc, None).await;
    assert!(r.members.is_empty());
    assert_eq!(redis.owner(APP, 500).as_deref(), Some("n1"));

    // Joins through the other nodes are proxied to it: one room.
    let (mut bob, r) = joined(&n2.ws_url(), "bob", "500", Mode::Rtc, None).await;
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.members[0].user_id, uid("alice"));
    assert_eq!(
        alice.event().await,
        ServerEvent::PeerJoin {
            user_id: uid("bob")
        }
    );
    let (mut carol, r) = joined(&n3.ws_url(), "carol", "500", Mode::Rtc, None).await;
    assert_eq!(r.members.len(), 2);
    assert_eq!(
        bob.event().await,
        ServerEvent::PeerJoin {
            user_id: uid("carol")
        }
    );
    assert_eq!(metric(&n1, "rtcroom_members"), 3);
    assert_eq!(metric(&n2, "rtcroom_members"), 0);
    assert_eq!(metric(&n2, "rtcroom_proxied_links"), 1);
    assert_eq!(metric(&n3, "rtcroom_proxied_links"), 1);

    // Requests and events travel through the proxy both ways.
    bob.request(rtcroom_protocol::signal::ClientMessage::Heartbeat)
        .await
        .unwrap();

    // The same userId through another node kicks the older session, as on one node.
    let (_bob2, r) = joined(&n3.ws_url(), "bob", "500", Mode::Rtc, None).await;
    assert_eq!(r.members.len(), 2);
    assert_eq!(banned(&mut bob).await, BanReason::Kick);
    assert!(bob.closed().await.is_some());
    until("n2's proxied link is gone", || {
        metric(&n2, "rtcroom_proxied_links") == 0
    })
    .await;

    // Admin calls through a node that does not hold the room act on it where it lives.
    let (status, info) = admin(
        n3.addr(),
        "DescribeRoomInfo",
        json!({"SdkAppId": APP, "RoomId": 500}),
    )
    .await;
    assert_eq!(status, 200, "{info}");
    let members = info["Response"]["RoomInfo"]["Members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{info}");
    // A WHIP publisher reaching a node without the room is redirected to the room's node.
    let path = format!("/whip/{APP}/dave?roomId=500");
    let auth = format!("Bearer {}", sig("dave"));
    let headers = [
        ("Content-Type", "application/sdp"),
        ("Authorization", auth.as_str()),
    ];
    let (status, head, body) = http_full(n2.addr(), "POST", &path, &headers, "v=0\r\n").await;
    assert_eq!(status, 307, "{body}");
    let location = format!("location: http://{}{path}", n1.addr());
    assert!(
        head.lines().any(|l| l == location.to_ascii_lowercase()),
        "{head}"
    );

    // A signed admin request is accepted once in the whole cluster, not once per node.
    let body = json!({"SdkAppId": APP, "RoomId": 500}).to_string();
    let ts = now();
    let signature =
        rtcroom_server::admin::admin_signature("hmac-key", ts, "DescribeRoomInfo", body.as_bytes());
    let ts = ts.to_string();
    let signed = [
        ("X-Rtcroom-Timestamp", ts.as_str()),
        ("X-Rtcroom-Signature", signature.as_str()),
    ];
    let path = "/admin/DescribeRoomInfo";
    let (status, text) = http(n2.addr(), "POST", path, &signed, &body).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = http(n3.addr(), "POST", path, &signed, &body).await;
    assert_eq!(status, 401, "a replay on another node: {text}");

    let (status, _) = admin(
        n2.addr(),
        "RemoveUser",
        json!({"SdkAppId": APP, "RoomId": 500, "UserIds": ["carol"]}),
    )
    .await;
    assert_eq!(status, 200);
    banned(&mut carol).await;
    assert!(carol.closed().await.is_some());

    // The next new room goes to a less loaded node once the loads have travelled.
    until("n1's load is known", || {
        metric(&n1, "rtcroom_cluster_members") == 2
    })
    .await;
    let (_dave, _) = joined(&n1.ws_url(), "dave", "501", Mode::Rtc, None).await;
    let owner = redis.owner(APP, 501).unwrap();
    assert_ne!(owner, "n1", "room 501 should go to an emptier node");
    assert_eq!(
        metric(&n1, "rtcroom_proxied_links"),
        1,
        "dave's join is proxied to {owner}"
    );

    // Leaving a proxied session closes it normally; the room's placement goes with the room.
    alice
        .request(rtcroom_protocol::signal::ClientMessage::Leave)
        .await
        .unwrap();
    assert_eq!(
        alice.closed().await.map(|f| f.code),
        Some(CloseCode::Normal)
    );
    n1.stop().unwrap();
    n2.stop().unwrap();
    n3.stop().unwrap();
}

#[tokio::test]
async fn a_stopped_nodes_rooms_are_placed_again_and_its_members_told_to_reconnect() {
    let redis = Redis::start();
    let n1 = start(node_config(&redis, "n1"));
    let n2 = start(node_config(&redis, "n2"));
    until("two nodes", || metric(&n2, "rtcroom_cluster_nodes") == 2).await;
    let (_alice, _) = joined(&n1.ws_url(), "alice", "700", Mode::Rtc, None).await;
    let (mut bob, _) = joined(&n2.ws_url(), "bob", "700", Mode::Rtc, None).await;
    assert_eq!(redis.owner(APP, 700).as_deref(), Some("n1"));

    n1.stop().unwrap();
    // Bob's proxied session ends as for a server going away; he reconnects through n2 and
    // the room is placed again on a live node.
    let close = bob.closed().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Away, "{close:?}");
    until("n1 is gone from n2's view", || {
        metric(&n2, "rtcroom_cluster_nodes") == 1
    })
    .await;
    let (_bob, r) = joined(&n2.ws_url(), "bob", "700", Mode::Rtc, None).await;
    assert!(r.members.is_empty());
    assert_eq!(redis.owner(APP, 700).as_deref(), Some("n2"));
    n2.stop().unwrap();
}

#[tokio::test]
async fn without_redis_a_node_keeps_its_rooms_refuses_new_ones_and_recovers() {
    let mut redis = Redis::start();
    let n1 = start(node_config(&redis, "n1"));
    let n2 = start(node_config(&redis, "n2"));
    until("two nodes", || metric(&n1, "rtcroom_cluster_nodes") == 2).await;
    let (mut alice, _) = joined(&n1.ws_url(), "alice", "600", Mode::Rtc, None).await;

    redis.kill();
    // A room this node holds is joined without Redis.
    let (_bob, r) = joined(&n1.ws_url(), "bob", "600", Mode::Rtc, None).await;
    assert_eq!(r.members.len(), 1);
    assert_eq!(
        alice.event().await,
        ServerEvent::PeerJoin {
            user_id: uid("bob")
        }
    );
    // A new room cannot be placed: a clear error.
    let mut carol = Client::connect(&n1.ws_url()).await;
    let e = carol
        .join(join_req("carol", "601", Mode::Rtc, None))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::JoinRoomFailed);
    assert!(e.message.contains("Redis"), "{}", e.message);

    // Redis comes back empty: the nodes register again and n1 claims its room again, so a
    // join through n2 finds it.
    redis.restart();
    until("room 600 is n1's again", || {
        redis.owner(APP, 600).as_deref() == Some("n1")
    })
    .await;
    until("both nodes registered again", || {
        metric(&n2, "rtcroom_cluster_nodes") == 2
    })
    .await;
    let (_dave, r) = joined(&n2.ws_url(), "dave", "600", Mode::Rtc, None).await;
    assert_eq!(r.members.len(), 2);
    let (_carol, _) = joined(&n1.ws_url(), "carol", "601", Mode::Rtc, None).await;
    assert!(redis.owner(APP, 601).is_some());
    n1.stop().unwrap();
    n2.stop().unwrap();
}

/// Read `c`'s events until a video mute; whose.
async fn until_video_mute(c: &mut Client) -> UserId {
    loop {
        if let ServerEvent::MuteVideo { user_id } = c.event().await {
            return user_id;
        }
    }
}

/// The members `DescribeRoomInfo` (asked of `node`) lists in room `room` (`"user role"`),
/// sorted.
async fn listed(node: &RunningServer, room: u32) -> Vec<String> {
    let (status, info) = admin(
        node.addr(),
        "DescribeRoomInfo",
        json!({"SdkAppId": APP, "RoomId": room}),
    )
    .await;
    assert_eq!(status, 200, "{info}");
    let mut users: Vec<String> = info["Response"]["RoomInfo"]["Members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{} {}",
                m["UserId"].as_str().unwrap(),
                m["Role"].as_str().unwrap()
            )
        })
        .collect();
    users.sort();
    users
}

/// Ask `node` for room `room`'s members until they are `want` (the edges report theirs over
/// their links, a moment after the join).
async fn until_listed(node: &RunningServer, room: u32, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let users = listed(node, room).await;
        if users == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "room {room} lists {users:?}, not {want:?}"
        );
        tick.tick().await;
    }
}

#[tokio::test]
async fn a_live_rooms_audience_on_edges_is_listed_removed_and_kicked_by_duplicates_anywhere() {
    use rtcroom_protocol::Role;
    let redis = Redis::start();
    let edge_node = |id: &str| {
        let mut c = node_config(&redis, id);
        // Every audience member reaching another node is served there, as an edge.
        c.cluster.edge_after_audience = 0;
        // Room for what the test needs, so that it can fill the room at the end.
        c.limits.max_live_members = 4;
        start(c)
    };
    let (n1, n2, n3) = (edge_node("n1"), edge_node("n2"), edge_node("n3"));
    until("three nodes see each other", || {
        [&n1, &n2, &n3]
            .iter()
            .all(|n| metric(n, "rtcroom_cluster_nodes") == 3)
    })
    .await;
    let room = "520";
    let audience = Some(Role::Audience);
    let (mut anchor, _) =
        joined(&n1.ws_url(), "anchor", room, Mode::Live, Some(Role::Anchor)).await;
    assert_eq!(redis.owner(APP, 520).as_deref(), Some("n1"));
    let (mut v1, r) = joined(&n2.ws_url(), "v1", room, Mode::Live, audience).await;
    assert_eq!(r.members.len(), 1, "the edge mirrors the anchor");
    let (mut v2, _) = joined(&n3.ws_url(), "v2", room, Mode::Live, audience).await;
    assert_eq!(metric(&n2, "rtcroom_cascade_links"), 1);
    assert_eq!(metric(&n3, "rtcroom_cascade_links"), 1);
    assert_eq!(metric(&n2, "rtcroom_proxied_links"), 0);
    assert_eq!(metric(&n1, "rtcroom_media_pipe_drops_total"), 0);

    // The room's node lists the edges' audience, asked through any node.
    until_listed(&n2, 520, &["anchor anchor", "v1 audience", "v2 audience"]).await;

    // v1 again through another edge: the first v1 (on n2) is kicked as on one node.
    let (mut v1b, _) = joined(&n3.ws_url(), "v1", room, Mode::Live, audience).await;
    assert_eq!(banned(&mut v1).await, BanReason::Kick);
    assert!(v1.closed().await.is_some());
    // v2 again as an anchor on the room's node: the edge's v2 is kicked.
    let (mut v2_anchor, _) = joined(&n1.ws_url(), "v2", room, Mode::Live, Some(Role::Anchor)).await;
    assert_eq!(banned(&mut v2).await, BanReason::Kick);
    until_listed(&n1, 520, &["anchor anchor", "v1 audience", "v2 anchor"]).await;
    // And that anchor joining an edge's audience kicks it on the room's node.
    let (mut v2_edge, _) = joined(&n2.ws_url(), "v2", room, Mode::Live, audience).await;
    assert_eq!(banned(&mut v2_anchor).await, BanReason::Kick);
    until_listed(&n1, 520, &["anchor anchor", "v1 audience", "v2 audience"]).await;

    // RemoveUser through any node removes a member wherever it is served.
    let (status, _) = admin(
        n3.addr(),
        "RemoveUser",
        json!({"SdkAppId": APP, "RoomId": 520, "UserIds": ["v2"]}),
    )
    .await;
    assert_eq!(status, 200);
    eprintln!(
        "DEBUG after remove: {:?} links n2={} n3={} edges n1={}",
        listed(&n1, 520).await,
        metric(&n2, "rtcroom_cascade_links"),
        metric(&n3, "rtcroom_cascade_links"),
        metric(&n1, "rtcroom_cascade_edges")
    );
    assert_eq!(banned(&mut v2_edge).await, BanReason::Banned);
    assert!(v2_edge.closed().await.is_some());
    until_listed(&n1, 520, &["anchor anchor", "v1 audience"]).await;

    // The anchor mutes the video of its screen share (auxiliary), not of its camera: the
    // edge applies it to that stream (TRTC's mute event names none).
    use rtcroom_protocol::signal::{ClientMessage, MediaKind, PublishRequest, StreamType};
    for stream_type in [StreamType::Main, StreamType::Auxiliary] {
        anchor
            .request(ClientMessage::Publish(PublishRequest {
                stream_type,
                has_audio: stream_type == StreamType::Main,
                has_video: true,
                sdp: None,
                layers: Vec::new(),
            }))
            .await
            .unwrap();
    }
    anchor
        .request(ClientMessage::Mute {
            stream_type: StreamType::Auxiliary,
            kind: MediaKind::Video,
            muted: true,
        })
        .await
        .unwrap();
    let viewer = until_video_mute(&mut v1b).await;
    assert_eq!(viewer, uid("anchor"));
    let (_late, r) = joined(&n3.ws_url(), "late", room, Mode::Live, audience).await;
    let muted: Vec<(StreamType, bool)> = r
        .streams
        .iter()
        .map(|s| (s.stream_type, s.video_muted))
        .collect();
    assert_eq!(
        muted,
        [(StreamType::Main, false), (StreamType::Auxiliary, true)],
        "the edge's late joiner sees the screen share muted, the camera not"
    );

    // The limit (4) counts every node's members: with a fourth on an edge the room is full,
    // on the room's node and, once it is told, on the other edge.
    let (_fill, _) = joined(&n2.ws_url(), "fill", room, Mode::Live, audience).await;
    until_listed(
        &n1,
        520,
        &[
            "anchor anchor",
            "fill audience",
            "late audience",
            "v1 audience",
        ],
    )
    .await;
    let full = |e: &rtcroom_protocol::RtcError| {
        e.extra_code == Some(rtcroom_protocol::error::extra::ROOM_FULL)
    };
    let mut c = Client::connect(&n1.ws_url()).await;
    let e = c
        .join(join_req("x", room, Mode::Live, Some(Role::Anchor)))
        .await
        .expect_err("full on the room's node");
    assert!(full(&e), "{e:?}");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut c = Client::connect(&n3.ws_url()).await;
        match c.join(join_req("y", room, Mode::Live, audience)).await {
            Err(e) if full(&e) => break,
            Err(e) => panic!("{e:?}"),
            // The order is on its way to n3: out again, and once more.
            Ok(_) => {
                c.request(ClientMessage::Leave).await.unwrap();
                assert!(tokio::time::Instant::now() < deadline, "n3 never refused");
            }
        }
    }
    n1.stop().unwrap();
    n2.stop().unwrap();
    n3.stop().unwrap();
}
