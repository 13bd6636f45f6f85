//! Small streams (TRTC's big and small streams, a two-layer simulcast) end to end: a real
//! rtcroom server on loopback, a publisher whose stream has a small stream, a subscriber that
//! decodes it and switches between the layers. Every wait is bounded; nothing sleeps to
//! sequence (conditions on counters are polled every 10 ms up to the deadline).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rtcroom::{
    ClientEvent, ErrorCode, JoinOptions, LayerChangeReason, LocalStream, RemoteStream,
    StreamConfig, StreamType, SubscribeOptions, VideoProfile, VideoStreamType, create_stream,
};

async fn layer_changed(c: &mut TestClient, to: VideoStreamType) -> ClientEvent {
    c.wait_for(
        &format!("video-layer-changed to {to:?}"),
        |e| matches!(e, ClientEvent::VideoLayerChanged { video_type, .. } if *video_type == to),
    )
    .await
}

/// A server whose subscribers get the layer they ask for: a bandwidth estimate misled by a
/// busy test machine must not move them meanwhile (`engine/tests/bandwidth.rs` tests that).
fn request_only() -> rtcroom_server::ServerConfig {
    let mut c = server_config("127.0.0.1:0");
    c.media.bandwidth_adaptation = false;
    c
}

/// Alice publishes a stream with a small stream in `room` (a server that switches layers on
/// request only); Bob has joined and seen it added.
struct Meeting {
    server: rtcroom_server::RunningServer,
    alice: TestClient,
    bob: TestClient,
    local: LocalStream,
    remote: RemoteStream,
}

impl Meeting {
    async fn start(room: u32) -> Meeting {
        let server = start(request_only());
        let url = server.ws_url();
        let alice = TestClient::new(config(&url, "alice", rtcroom::Mode::Rtc));
        let mut bob = TestClient::new(config(&url, "bob", rtcroom::Mode::Rtc));
        let local = small_stream().await;
        bounded(alice.join(JoinOptions::new(room)))
            .await
            .expect("join");
        bounded(alice.publish(&local)).await.expect("publish");
        bounded(bob.join(JoinOptions::new(room)))
            .await
            .expect("join");
        let remote = bob.stream_added("alice").await;
        Meeting {
            server,
            alice,
            bob,
            local,
            remote,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_stream_needs_video_and_a_smaller_bitrate() {
    for config in [
        StreamConfig::default()
            .with_video(false)
            .with_small_stream(Some(SMALL)),
        StreamConfig::default()
            .with_video_profile(BIG)
            .with_small_stream(Some(VideoProfile::new(160, 120, 15, 400))),
        StreamConfig::default().with_small_stream(Some(VideoProfile::new(161, 120, 15, 100))),
    ] {
        let e = bounded(create_stream(config.clone()))
            .await
            .expect_err("refused");
        assert_eq!(e.code, ErrorCode::InvalidParameter, "{config:?}: {e}");
    }
    // A stream without one cannot be given a small profile later.
    let plain = bounded(create_stream(
        StreamConfig::default().with_video_profile(BIG),
    ))
    .await
    .expect("starts");
    assert!(!plain.has_small_stream());
    let e = bounded(plain.set_small_stream_profile(SMALL))
        .await
        .expect_err("refused");
    assert_eq!(e.code, ErrorCode::InvalidOperation);
    let with = small_stream().await;
    assert!(with.has_small_stream());
    let e = bounded(with.set_small_stream_profile(VideoProfile::new(160, 120, 15, 500)))
        .await
        .expect_err("not below the video's bitrate");
    assert_eq!(e.code, ErrorCode::InvalidParameter);
    // Nor may the video drop to the small stream's bitrate.
    let e = bounded(with.set_video_profile(VideoProfile::new(320, 240, 30, 100)))
        .await
        .expect_err("not above the small stream's bitrate");
    assert_eq!(e.code, ErrorCode::InvalidParameter);
}

/// Alice publishes a stream with a small stream; Bob subscribes (big, the default), then
/// asks for the small layer and back: the decoded size follows, each switch is reported, and
/// Alice encodes only the layer somebody receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_switches_between_the_big_and_the_small_stream() {
    // (`_alice` keeps Alice in the room to the end.)
    let Meeting {
        server,
        alice: _alice,
        mut bob,
        local,
        remote,
    } = Meeting::start(3181).await;
    let alice_id = uid("alice");
    let rids: Vec<&str> = remote.layers.iter().map(|l| l.rid.as_str()).collect();
    assert_eq!(rids, ["l", "h"], "the stream's layers, smallest first");
    assert!(
        bob.get_remote_muted_state()
            .iter()
            .any(|s| s.user_id == alice_id && s.has_small),
        "hasSmall"
    );
    let sizes = Arc::new(Sizes::default());
    bounded(bob.subscribe(
        &remote,
        SubscribeOptions::new(sizes.output()).with_jitter_latency(Duration::from_millis(20)),
    ))
    .await
    .expect("subscribe");
    sizes.wait((BIG.width, BIG.height)).await;
    // Nobody receives the small layer: its encoder pauses.
    poll_until("the small stream paused", || {
        !local.is_small_stream_active()
    })
    .await;

    bounded(bob.set_remote_video_stream_type(&alice_id, StreamType::Main, VideoStreamType::Small))
        .await
        .expect("switch to small");
    match layer_changed(&mut bob, VideoStreamType::Small).await {
        ClientEvent::VideoLayerChanged {
            user_id,
            stream_type,
            rid,
            reason,
            ..
        } => {
            assert_eq!(user_id, alice_id);
            assert_eq!(stream_type, StreamType::Main);
            assert_eq!(rid, "l");
            assert_eq!(reason, LayerChangeReason::Request);
        }
        _ => unreachable!(),
    }
    sizes.wait((SMALL.width, SMALL.height)).await;
    assert!(local.is_small_stream_active());
    let stats = local.get_local_video_stats();
    assert!(stats.small_frames_encoded > 0, "{stats:?}");

    bounded(bob.set_remote_video_stream_type(&alice_id, StreamType::Main, VideoStreamType::Big))
        .await
        .expect("switch back to big");
    layer_changed(&mut bob, VideoStreamType::Big).await;
    sizes.wait((BIG.width, BIG.height)).await;
    assert!(
        !bob.seen.iter().any(|e| matches!(e, ClientEvent::Error(_))),
        "{:?}",
        bob.seen
    );
    drop(server);
}

/// A subscription can start on the small layer (TRTC's `smallVideo` option).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_can_start_on_the_small_stream() {
    let Meeting {
        server,
        alice: _alice,
        bob,
        local: _local,
        remote,
    } = Meeting::start(3182).await;
    let sizes = Arc::new(Sizes::default());
    bounded(
        bob.subscribe(
            &remote,
            SubscribeOptions::new(sizes.output())
                .with_jitter_latency(Duration::from_millis(20))
                .with_video_type(Some(VideoStreamType::Small)),
        ),
    )
    .await
    .expect("subscribe");
    sizes.wait((SMALL.width, SMALL.height)).await;
    drop(server);
}
