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
    SubscribeOutput, VideoProfile, create_stream,
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
    let counter = frames.clone();
    let mut cfg = member(&n2.ws_url(), "bob");
    cfg.auto_subscribe = true;
    cfg.auto_subscribe_output = SubscribeOutput::Frames(Arc::new(move |_, _, f: DecodedFrame| {
        if matches!(f.info, FrameInfo::Video { .. }) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }));
    let mut bob = TestClient::new(cfg);
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
