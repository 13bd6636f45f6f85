//! Media across a cluster of two nodes on a real `redis-server`: engine clients connected to
//! one node publish and subscribe in a room that lives on the other; when the room's node is
//! killed, they reconnect through their own node, the room is placed again, and decoded
//! frames flow again without anyone publishing or subscribing again.

mod common;
#[path = "../../server/tests/common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use redis_server::Redis;
use rtcroom::{
    ClientEvent, ConnectionState, DecodedFrame, FrameInfo, JoinOptions, Mode, StreamConfig,
    StreamType, SubscribeOptions, SubscribeOutput, VideoProfile, VideoStreamType, create_stream,
};

/// A node with the cluster's default timings (heartbeat 0.5 s, gone 2 s after the last), so
/// the failover time this test prints is what a deployment gets (BENCHMARKS.md, "Cluster").
fn node(redis: &Redis, id: &str) -> rtcroom_server::RunningServer {
    let mut c = redis.node(server_config("127.0.0.1:0"), id);
    let defaults = rtcroom_server::config::ClusterConfig::default();
    c.cluster.heartbeat_s = defaults.heartbeat_s;
    c.cluster.node_ttl_s = defaults.node_ttl_s;
    start(c)
}

/// A member with TRTC's reconnect schedule (1 s unit: 1, 2, 3, 5, … s).
fn member(url: &str, user: &str) -> rtcroom::ClientConfig {
    config(url, user, Mode::Rtc).with_reconnect_backoff_unit(Duration::from_secs(1))
}

fn cluster_nodes(n: &rtcroom_server::RunningServer) -> i64 {
    n.metrics()
        .cluster_nodes
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_rooms_node_dies_its_members_on_other_nodes_get_media_again() {
    let redis = Redis::start();
    let n1 = node(&redis, "n1");
    let n2 = node(&redis, "n2");
    poll_until("two nodes", || cluster_nodes(&n2) == 2).await;
    let room = 4100;

    // The room is placed on n1 by a join there; alice and bob reach it through n2.
    let host = TestClient::new(config(&n1.ws_url(), "host", Mode::Rtc));
    bounded(host.join(JoinOptions::new(room)))
        .await
        .expect("join");
    assert_eq!(redis.owner(APP, room).as_deref(), Some("n1"));
    let mut alice = TestClient::new(member(&n2.ws_url(), "alice"));
    bounded(alice.join(JoinOptions::new(room)))
        .await
        .expect("join");
    let local = bounded(create_stream(
        StreamConfig::default().with_video_profile(VideoProfile::new(320, 240, 30, 400)),
    ))
    .await
    .expect("stream");
    bounded(alice.publish(&local)).await.expect("publish");
    let frames = Arc::new(AtomicU64::new(0));
    let mut bob = counting(member(&n2.ws_url(), "bob"), &frames);
    bounded(bob.join(JoinOptions::new(room)))
        .await
        .expect("join");
    poll_until("frames through the proxied room", || {
        frames.load(Ordering::Relaxed) >= 15
    })
    .await;
    assert_eq!(
        n2.metrics().proxied_links.load(Ordering::Relaxed),
        2,
        "alice's and bob's signalling is proxied to n1"
    );

    let killed = Instant::now();
    bounded(tokio::task::spawn_blocking(move || n1.kill()))
        .await
        .unwrap()
        .unwrap();
    alice.wait_state(ConnectionState::Reconnecting).await;
    bob.wait_state(ConnectionState::Reconnecting).await;
    let before = frames.load(Ordering::Relaxed);
    alice.wait_state(ConnectionState::Connected).await;
    bob.wait_state(ConnectionState::Connected).await;
    poll_until("frames after the failover", || {
        frames.load(Ordering::Relaxed) >= before + 15
    })
    .await;
    let back = killed.elapsed();
    eprintln!(
        "failover: media back {} ms after the kill (node TTL 2 s, TRTC's backoff)",
        back.as_millis()
    );
    assert_eq!(redis.owner(APP, room).as_deref(), Some("n2"));
    assert!(
        !alice
            .seen
            .iter()
            .chain(bob.seen.iter())
            .any(|e| matches!(e, ClientEvent::Error(_))),
        "no error reaches the members: {:?} {:?}",
        alice.seen,
        bob.seen
    );
    n2.stop().unwrap();
}

/// A node (default timings) whose live rooms cascade once they hold `edge_after` audience
/// members (0: every audience member joining through another node is served there, as the
/// room's edge).
fn live_node(
    redis: &Redis,
    id: &str,
    edge_after: u32,
    tweak: fn(&mut rtcroom_server::ServerConfig),
) -> rtcroom_server::RunningServer {
    let mut c = redis.node(server_config("127.0.0.1:0"), id);
    let defaults = rtcroom_server::config::ClusterConfig::default();
    c.cluster.heartbeat_s = defaults.heartbeat_s;
    c.cluster.node_ttl_s = defaults.node_ttl_s;
    c.cluster.edge_after_audience = edge_after;
    tweak(&mut c);
    start(c)
}

/// Two live nodes ([`live_node`], n1 and n2) that see each other.
async fn live_pair(
    redis: &Redis,
    edge_after: u32,
) -> (rtcroom_server::RunningServer, rtcroom_server::RunningServer) {
    live_pair_with(redis, edge_after, |_| {}).await
}

/// [`live_pair`], each node's configuration changed by `tweak` first.
async fn live_pair_with(
    redis: &Redis,
    edge_after: u32,
    tweak: fn(&mut rtcroom_server::ServerConfig),
) -> (rtcroom_server::RunningServer, rtcroom_server::RunningServer) {
    let (n1, n2) = (
        live_node(redis, "n1", edge_after, tweak),
        live_node(redis, "n2", edge_after, tweak),
    );
    poll_until("two nodes", || {
        cluster_nodes(&n1) == 2 && cluster_nodes(&n2) == 2
    })
    .await;
    (n1, n2)
}

/// A client of `cfg` that subscribes to everything and counts its decoded video frames in
/// `frames`.
fn counting(mut cfg: rtcroom::ClientConfig, frames: &Arc<AtomicU64>) -> TestClient {
    let counter = frames.clone();
    cfg.auto_subscribe = true;
    cfg.auto_subscribe_output = SubscribeOutput::Frames(Arc::new(move |_, _, f: DecodedFrame| {
        if matches!(f.info, FrameInfo::Video { .. }) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }));
    TestClient::new(cfg)
}

/// The anchor of live room `room`, joined at `url` and publishing 320×240 video (keep the
/// stream).
async fn live_anchor(url: &str, room: u32) -> (TestClient, rtcroom::LocalStream) {
    let local = bounded(create_stream(
        StreamConfig::default().with_video_profile(VideoProfile::new(320, 240, 30, 400)),
    ))
    .await
    .expect("stream");
    live_anchor_with(url, room, local).await
}

/// The anchor of live room `room`, joined at `url` and publishing `local`.
async fn live_anchor_with(
    url: &str,
    room: u32,
    local: rtcroom::LocalStream,
) -> (TestClient, rtcroom::LocalStream) {
    let anchor = TestClient::new(config(url, "anchor", Mode::Live));
    bounded(anchor.join(JoinOptions::new(room).with_role(rtcroom::Role::Anchor)))
        .await
        .expect("join");
    bounded(anchor.publish(&local)).await.expect("publish");
    (anchor, local)
}

/// Wait until each viewer counting in `counts` has decoded 15 video frames.
async fn all_decode(counts: &[Arc<AtomicU64>]) {
    for (i, c) in counts.iter().enumerate() {
        poll_until(&format!("viewer {} decodes the anchor", i + 1), || {
            c.load(Ordering::Relaxed) >= 15
        })
        .await;
    }
}

/// A live-room member on `url` (TRTC's reconnect schedule) counting its frames in `frames`.
fn viewer(url: &str, user: &str, frames: &Arc<AtomicU64>) -> TestClient {
    counting(
        config(url, user, Mode::Live).with_reconnect_backoff_unit(Duration::from_secs(1)),
        frames,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_rooms_audience_on_another_node_is_fed_by_one_node_link() {
    let redis = Redis::start();
    let (n1, n2) = live_pair(&redis, 0).await;
    let room = 4200;

    // The anchor places the live room on n1 and publishes there.
    let (anchor, _local) = live_anchor(&n1.ws_url(), room).await;
    assert_eq!(redis.owner(APP, room).as_deref(), Some("n1"));

    // One viewer on the room's node, two on the edge.
    let counts: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let origin_viewer = viewer(&n1.ws_url(), "v1", &counts[0]);
    let mut edge_viewers = vec![
        viewer(&n2.ws_url(), "v2", &counts[1]),
        viewer(&n2.ws_url(), "v3", &counts[2]),
    ];
    let audience = || JoinOptions::new(room).with_role(rtcroom::Role::Audience);
    bounded(origin_viewer.join(audience())).await.expect("join");
    for v in &edge_viewers {
        bounded(v.join(audience())).await.expect("join");
    }
    all_decode(&counts).await;
    // The edge serves its viewers itself: nothing proxied, one node link for both.
    assert_eq!(n2.metrics().proxied_links.load(Ordering::Relaxed), 0);
    assert_eq!(n2.metrics().cascade_links.load(Ordering::Relaxed), 1);
    assert_eq!(n1.metrics().cascade_edges.load(Ordering::Relaxed), 1);
    // The edge's viewers see the room as the origin's do: the anchor, and its custom messages.
    for v in &mut edge_viewers {
        v.wait_peer_join("anchor").await;
    }
    bounded(anchor.send_custom_message(1, b"hello edge".to_vec()))
        .await
        .expect("custom message");
    for v in &mut edge_viewers {
        v.wait_for(
            "the anchor's custom message",
            |e| matches!(e, ClientEvent::CustomMessage { data, .. } if data == b"hello edge"),
        )
        .await;
    }
    // The anchor leaves: the edge's viewers hear it.
    bounded(anchor.leave()).await.expect("leave");
    for v in &mut edge_viewers {
        v.wait_for(
            "the anchor leaving",
            |e| matches!(e, ClientEvent::PeerLeave { user_id, .. } if user_id.as_str() == "anchor"),
        )
        .await;
    }
    // The edge's last viewer leaving closes the node link on both nodes.
    for v in &edge_viewers {
        bounded(v.leave()).await.expect("leave");
    }
    poll_until("the node link closed", || {
        n2.metrics().cascade_links.load(Ordering::Relaxed) == 0
            && n1.metrics().cascade_edges.load(Ordering::Relaxed) == 0
    })
    .await;
    assert!(
        !edge_viewers
            .iter()
            .flat_map(|v| v.seen.iter())
            .any(|e| matches!(e, ClientEvent::Error(_))),
        "no error reaches the edge's viewers"
    );
    n1.stop().unwrap();
    n2.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_live_rooms_node_dies_its_edge_audience_reconnects_to_the_room_placed_again() {
    let redis = Redis::start();
    let (n1, n2) = live_pair(&redis, 0).await;
    let room = 4300u32;
    let (anchor, _local) = live_anchor(&n1.ws_url(), room).await;
    let frames = Arc::new(AtomicU64::new(0));
    let mut viewer = viewer(&n2.ws_url(), "viewer", &frames);
    bounded(viewer.join(JoinOptions::new(room).with_role(rtcroom::Role::Audience)))
        .await
        .expect("join");
    poll_until("the edge's viewer decodes the anchor", || {
        frames.load(Ordering::Relaxed) >= 15
    })
    .await;
    assert_eq!(n2.metrics().cascade_links.load(Ordering::Relaxed), 1);

    // The room's node dies: the edge loses its link, closes its audience with 1001, and the
    // viewer's reconnection finds the room placed again (on n2, the live node).
    bounded(tokio::task::spawn_blocking(move || n1.kill()))
        .await
        .unwrap()
        .unwrap();
    viewer.wait_state(ConnectionState::Reconnecting).await;
    viewer.wait_state(ConnectionState::Connected).await;
    assert_eq!(redis.owner(APP, room).as_deref(), Some("n2"));
    assert_eq!(n2.metrics().cascade_links.load(Ordering::Relaxed), 0);
    assert!(
        !viewer
            .seen
            .iter()
            .any(|e| matches!(e, ClientEvent::Error(_))),
        "no error reaches the viewer: {:?}",
        viewer.seen
    );
    drop(anchor);
    n2.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_audience_threshold_a_live_room_sends_new_audience_to_another_node() {
    let redis = Redis::start();
    let (n1, n2) = live_pair(&redis, 1).await;
    let room = 4400;
    let (_anchor, _local) = live_anchor(&n1.ws_url(), room).await;
    let audience = || JoinOptions::new(room).with_role(rtcroom::Role::Audience);
    let counts: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    // The first viewer on n1 takes the room to its threshold (1): n1 holds it.
    let first = viewer(&n1.ws_url(), "v1", &counts[0]);
    bounded(first.join(audience())).await.expect("join");
    assert_eq!(n1.metrics().proxied_links.load(Ordering::Relaxed), 0);
    // The next one reaching n1 is sent to n2, which serves it as the room's edge (n1 relays
    // its signalling only); one reaching n2 is served there too.
    let second = viewer(&n1.ws_url(), "v2", &counts[1]);
    bounded(second.join(audience())).await.expect("join");
    let third = viewer(&n2.ws_url(), "v3", &counts[2]);
    bounded(third.join(audience())).await.expect("join");
    all_decode(&counts).await;
    assert_eq!(n1.metrics().proxied_links.load(Ordering::Relaxed), 1);
    assert_eq!(n2.metrics().proxied_links.load(Ordering::Relaxed), 0);
    assert_eq!(n2.metrics().cascade_links.load(Ordering::Relaxed), 1);
    assert_eq!(n1.metrics().cascade_edges.load(Ordering::Relaxed), 1);
    n1.stop().unwrap();
    n2.stop().unwrap();
}

/// Simulcast through a node link: the origin pipes every layer of the anchor's stream, and a
/// viewer on the edge switches between the big and the small stream on the edge's own SFU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_viewer_switches_between_the_anchors_big_and_small_streams() {
    let redis = Redis::start();
    // Layers move on request only (a busy machine's estimate must not move them).
    let (n1, n2) = live_pair_with(&redis, 0, |c| c.media.bandwidth_adaptation = false).await;
    let room = 4500u32;
    let (_anchor, _local) = live_anchor_with(&n1.ws_url(), room, small_stream().await).await;
    let mut viewer = TestClient::new(config(&n2.ws_url(), "viewer", Mode::Live));
    bounded(viewer.join(JoinOptions::new(room).with_role(rtcroom::Role::Audience)))
        .await
        .expect("join");
    let anchor_id = uid("anchor");
    let remote = viewer.stream_added("anchor").await;
    let rids: Vec<&str> = remote.layers.iter().map(|l| l.rid.as_str()).collect();
    assert_eq!(rids, ["l", "h"], "the edge knows the stream's layers");
    let sizes = Arc::new(Sizes::default());
    bounded(viewer.subscribe(
        &remote,
        SubscribeOptions::new(sizes.output()).with_jitter_latency(Duration::from_millis(20)),
    ))
    .await
    .expect("subscribe");
    sizes.wait((BIG.width, BIG.height)).await;
    for (to, size) in [(VideoStreamType::Small, SMALL), (VideoStreamType::Big, BIG)] {
        bounded(viewer.set_remote_video_stream_type(&anchor_id, StreamType::Main, to))
            .await
            .expect("switch");
        viewer
            .wait_for(
                &format!("video-layer-changed to {to:?}"),
                |e| matches!(e, ClientEvent::VideoLayerChanged { video_type, .. } if *video_type == to),
            )
            .await;
        sizes.wait((size.width, size.height)).await;
    }
    assert_eq!(n2.metrics().proxied_links.load(Ordering::Relaxed), 0);
    assert_eq!(n2.metrics().cascade_links.load(Ordering::Relaxed), 1);
    n1.stop().unwrap();
    n2.stop().unwrap();
}

/// An audience member served by an edge switches to anchor: an anchor belongs on the room's
/// node, so its session moves there; it keeps receiving the anchor (told the stream was removed
/// and added, it subscribes again there), and what it then publishes reaches the edge's other
/// viewers through the node link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_viewer_switching_to_anchor_moves_to_the_rooms_node_and_is_seen_on_the_edge() {
    let redis = Redis::start();
    let (n1, n2) = live_pair(&redis, 0).await;
    let room = 4400u32;
    let (_anchor, _anchor_stream) = live_anchor(&n1.ws_url(), room).await;
    let audience = || JoinOptions::new(room).with_role(rtcroom::Role::Audience);
    let mover_frames = Arc::new(AtomicU64::new(0));
    let mut mover = viewer(&n2.ws_url(), "mover", &mover_frames);
    bounded(mover.join(audience())).await.expect("join");
    // The watcher counts the anchor's frames and the mover's apart.
    let (of_anchor, of_mover) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut cfg = config(&n2.ws_url(), "watcher", Mode::Live);
    cfg.auto_subscribe = true;
    let (a, m) = (of_anchor.clone(), of_mover.clone());
    cfg.auto_subscribe_output = SubscribeOutput::Frames(Arc::new(
        move |user: &rtcroom::UserId, _, f: DecodedFrame| {
            if matches!(f.info, FrameInfo::Video { .. }) {
                let n = if user.as_str() == "mover" { &m } else { &a };
                n.fetch_add(1, Ordering::Relaxed);
            }
        },
    ));
    let watcher = TestClient::new(cfg);
    bounded(watcher.join(audience())).await.expect("join");
    all_decode(&[mover_frames.clone(), of_anchor.clone()]).await;
    assert_eq!(n2.metrics().proxied_links.load(Ordering::Relaxed), 0);

    bounded(mover.switch_role(rtcroom::Role::Anchor))
        .await
        .expect("switch to anchor");
    assert_eq!(
        n2.metrics().proxied_links.load(Ordering::Relaxed),
        1,
        "the mover's session is relayed to the room's node"
    );
    // Its subscription was on the edge: the stream is removed and added again.
    let anchor_id = uid("anchor");
    mover
        .wait_for(
            "stream-removed anchor",
            |e| matches!(e, ClientEvent::StreamRemoved(s) if s.user_id == anchor_id),
        )
        .await;
    mover
        .wait_for(
            "stream-added anchor",
            |e| matches!(e, ClientEvent::StreamAdded(s) if s.user_id == anchor_id),
        )
        .await;
    let before = mover_frames.load(Ordering::Relaxed);
    poll_until("the mover decodes the anchor again", || {
        mover_frames.load(Ordering::Relaxed) >= before + 15
    })
    .await;
    let local = bounded(create_stream(
        StreamConfig::default().with_video_profile(VideoProfile::new(320, 240, 30, 400)),
    ))
    .await
    .expect("stream");
    bounded(mover.publish(&local))
        .await
        .expect("publish as anchor");
    poll_until("the edge's watcher decodes the mover", || {
        of_mover.load(Ordering::Relaxed) >= 15
    })
    .await;
    assert_eq!(n2.metrics().cascade_links.load(Ordering::Relaxed), 1);
    mover.drain();
    assert!(
        !mover
            .seen
            .iter()
            .any(|e| matches!(e, ClientEvent::Error(_) | ClientEvent::ClientBanned { .. })),
        "the move is seamless: {:?}",
        mover.seen
    );
    n1.stop().unwrap();
    n2.stop().unwrap();
}
