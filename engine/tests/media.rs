//! Media end to end: a real rtcroom server (SFU) on loopback, engine clients that publish a
//! test pattern + tone (H.264 320×240 @ 30 fps, Opus) and subscribe to it, decoding frames.
//! Every wait is bounded; nothing sleeps to sequence.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rtcroom::{
    ClientEvent, ConnectionState, DecodedFrame, ErrorCode, FrameInfo, JoinOptions, LocalStream,
    Mode, RemoteStream, Role, SeiOptions, StreamConfig, StreamType, SubscribeOptions,
    SubscribeOutput, VideoCodec, VideoProfile, create_stream,
};

/// Counts decoded frames per user and remembers the last video size.
#[derive(Default)]
struct Frames {
    video: AtomicU64,
    audio: AtomicU64,
    size: Mutex<Option<(u32, u32)>>,
    by_user: Mutex<HashMap<String, u64>>,
}

impl Frames {
    fn output(self: &Arc<Self>) -> SubscribeOutput {
        let me = self.clone();
        SubscribeOutput::Frames(Arc::new(move |user, _, f: DecodedFrame| match f.info {
            FrameInfo::Video { width, height } => {
                me.video.fetch_add(1, Ordering::Relaxed);
                *me.size.lock().unwrap() = Some((width, height));
                *me.by_user
                    .lock()
                    .unwrap()
                    .entry(user.to_string())
                    .or_default() += 1;
            }
            FrameInfo::Audio { .. } => {
                me.audio.fetch_add(1, Ordering::Relaxed);
            }
        }))
    }

    fn video(&self) -> u64 {
        self.video.load(Ordering::Relaxed)
    }

    fn audio(&self) -> u64 {
        self.audio.load(Ordering::Relaxed)
    }

    /// Wait (bounded, polling a counter every 10 ms) until `cond` holds.
    async fn wait(&self, what: &str, cond: impl Fn(&Frames) -> bool) {
        let t = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !cond(self) {
            assert!(
                t.elapsed() < DEADLINE,
                "timed out waiting for {what}: {} video, {} audio frames",
                self.video(),
                self.audio()
            );
            tick.tick().await;
        }
    }
}

fn test_stream() -> StreamConfig {
    StreamConfig::default().with_video_profile(VideoProfile::new(320, 240, 30, 400))
}

async fn stream() -> LocalStream {
    bounded(create_stream(test_stream()))
        .await
        .expect("test stream starts")
}

fn media_client(url: &str, user: &str, auto: Option<SubscribeOutput>) -> TestClient {
    let mut cfg = config(url, user, Mode::Rtc);
    if let Some(out) = auto {
        cfg.auto_subscribe = true;
        cfg.auto_subscribe_output = out;
    }
    TestClient::new(cfg)
}

/// Subscribe to `remote` into `output` with a 20 ms jitter buffer (first frames come soon).
async fn subscribe_fast(c: &TestClient, remote: &RemoteStream, output: SubscribeOutput) {
    bounded(c.subscribe(
        remote,
        SubscribeOptions::new(output).with_jitter_latency(Duration::from_millis(20)),
    ))
    .await
    .expect("subscribe");
}

async fn join(c: &TestClient, room: u32) {
    bounded(c.join(JoinOptions::new(room)))
        .await
        .expect("join succeeds");
}

/// Alice publishes the test stream in `room`; Bob joins it and auto-subscribes into a frame
/// counter.
async fn publisher_and_subscriber(
    url: &str,
    room: u32,
) -> (TestClient, LocalStream, Arc<Frames>, TestClient) {
    let alice = media_client(url, "alice", None);
    let local = stream().await;
    join(&alice, room).await;
    bounded(alice.publish(&local)).await.expect("publish");
    let frames = Arc::new(Frames::default());
    let bob = media_client(url, "bob", Some(frames.output()));
    join(&bob, room).await;
    (alice, local, frames, bob)
}

/// No `error` event reached `c`, before or now.
fn assert_no_errors(c: &mut TestClient) {
    let now = c.drain();
    assert!(
        !now.iter()
            .chain(c.seen.iter())
            .any(|e| matches!(e, ClientEvent::Error(_))),
        "{:?}",
        c.seen
    );
}

/// Whether the Matroska file's Segment has its size written, which matroskamux does when it
/// finalises the file (an unfinished file says "unknown size").
fn matroska_finalised(path: &std::path::Path) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    let Some(at) = bytes.windows(4).position(|w| w == [0x18, 0x53, 0x80, 0x67]) else {
        return false;
    };
    bytes
        .get(at + 4..at + 12)
        .is_some_and(|size| size != [0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
}

/// A recording bot exits right after `leave()`: by then its files must be finalised (the
/// pipelines stop on threads of their own, which the process would otherwise cut short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_finalised_when_leave_returns() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let alice = media_client(&url, "alice", None);
    let mut bob = media_client(&url, "bob", None);
    let local = stream().await;
    join(&alice, 3021).await;
    bounded(alice.publish(&local)).await.expect("publish");
    join(&bob, 3021).await;
    let remote = bob.stream_added("alice").await;
    let dir = tempfile::tempdir().unwrap();
    subscribe_fast(
        &bob,
        &remote,
        SubscribeOutput::Record {
            dir: dir.path().to_owned(),
            format: rtcroom::RecordFormat::Mkv,
        },
    )
    .await;
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while bob.get_remote_stats().await.unwrap()[0]
        .stats
        .video_packets_received
        < 100
    {
        assert!(t.elapsed() < DEADLINE, "no media to record");
        tick.tick().await;
    }
    let file = dir.path().join("alice_main.mkv");
    assert!(!matroska_finalised(&file), "still being written");
    bounded(bob.client.leave()).await.expect("leave");
    assert!(
        matroska_finalised(&file),
        "the recording is finalised when leave() returns"
    );
    drop(server);
}

/// VP8, as a browser publishes by default: the engine sends it when asked, the server
/// answers with it and announces it, and a subscriber decodes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_is_published_announced_and_decoded() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let alice = media_client(&url, "alice", None);
    let mut bob = media_client(&url, "bob", None);
    let local = bounded(create_stream(
        test_stream().with_video_codec(VideoCodec::Vp8),
    ))
    .await
    .expect("VP8 stream starts");
    join(&alice, 3011).await;
    bounded(alice.publish(&local)).await.expect("publish VP8");
    join(&bob, 3011).await;
    let remote = bob.stream_added("alice").await;
    assert_eq!(remote.video_codec, Some(VideoCodec::Vp8));
    let frames = Arc::new(Frames::default());
    subscribe_fast(&bob, &remote, frames.output()).await;
    frames
        .wait("30 VP8 frames and 10 audio frames", |f| {
            f.video() >= 30 && f.audio() >= 10
        })
        .await;
    assert_eq!(*frames.size.lock().unwrap(), Some((320, 240)));
    drop(server);
}

/// `sendSEIMessage`: messages ride the publisher's next frames and reach the subscriber as
/// `sei-message` events, in order; TRTC's limits are enforced before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sei_messages_reach_subscribers_in_order_within_trtcs_limits() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let alice = media_client(&url, "alice", None);
    let mut bob = media_client(&url, "bob", None);
    let local = stream().await;
    join(&alice, 3012).await;
    let code = |r: Result<(), rtcroom::RtcError>| r.unwrap_err().code;
    // Nothing published yet: nothing to carry it.
    assert_eq!(
        code(bounded(alice.send_sei_message(b"early".to_vec(), SeiOptions::default())).await),
        ErrorCode::InvalidOperation
    );
    bounded(alice.publish(&local)).await.expect("publish");
    join(&bob, 3012).await;
    let remote = bob.stream_added("alice").await;
    let frames = Arc::new(Frames::default());
    subscribe_fast(&bob, &remote, frames.output()).await;
    frames.wait("first frames", |f| f.video() >= 5).await;
    assert_eq!(
        code(bounded(alice.send_sei_message(vec![1; 1025], SeiOptions::default())).await),
        ErrorCode::InvalidParameter
    );
    assert_eq!(
        code(
            bounded(
                alice.send_sei_message(b"x".to_vec(), SeiOptions::default().with_payload_type(6))
            )
            .await
        ),
        ErrorCode::InvalidParameter
    );
    // A burst: what the limits let through (the core's tests pin the limits down in
    // virtual time; here the clock is real) arrives complete and in order, and what they
    // refused never arrives.
    let mut accepted = Vec::new();
    for i in 0..40 {
        let text = format!("m{i}");
        match bounded(alice.send_sei_message(text.clone().into_bytes(), SeiOptions::default()))
            .await
        {
            Ok(()) => accepted.push(text),
            Err(e) => assert_eq!(e.code, ErrorCode::InvalidOperation, "{e}"),
        }
    }
    assert!(
        accepted.len() >= 30,
        "the first 30 fit the limits: {accepted:?}"
    );
    let alice_id = uid("alice");
    let mut got = Vec::new();
    while got.len() < accepted.len() {
        match bob
            .wait_for("sei-message", |e| {
                matches!(e, ClientEvent::SeiMessage { .. })
            })
            .await
        {
            ClientEvent::SeiMessage {
                user_id,
                stream_type,
                payload_type,
                data,
            } => {
                assert_eq!(
                    (&user_id, stream_type, payload_type),
                    (&alice_id, StreamType::Main, 243)
                );
                got.push(String::from_utf8(data).unwrap());
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(got, accepted);
    // Nothing more: the next frames carry none.
    let at = frames.video();
    frames.wait("more frames", |f| f.video() >= at + 10).await;
    assert!(
        !bob.drain()
            .iter()
            .any(|e| matches!(e, ClientEvent::SeiMessage { .. })),
        "a refused message was sent"
    );
    drop(server);
}

/// `audio-volume`: the publisher hears its own tone, the subscriber the decoded one; a
/// muted publisher reports 0; a zero interval stops the reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_volume_reports_the_sent_and_the_decoded_tone() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let mut alice = media_client(&url, "alice", None);
    let mut bob = media_client(&url, "bob", None);
    let local = stream().await;
    join(&alice, 3013).await;
    bounded(alice.publish(&local)).await.expect("publish");
    join(&bob, 3013).await;
    let remote = bob.stream_added("alice").await;
    let frames = Arc::new(Frames::default());
    subscribe_fast(&bob, &remote, frames.output()).await;
    frames.wait("audio frames", |f| f.audio() >= 10).await;
    let loud = |who: &'static str| {
        move |e: &ClientEvent| {
            matches!(e, ClientEvent::AudioVolume(v)
                if v.iter().any(|a| a.user_id == uid(who) && a.audio_volume >= 10))
        }
    };
    alice.enable_audio_volume_evaluation(Duration::from_millis(100));
    bob.enable_audio_volume_evaluation(Duration::from_millis(100));
    alice
        .wait_for("alice hears her own tone", loud("alice"))
        .await;
    bob.wait_for("bob hears alice's tone", loud("alice")).await;
    bounded(local.mute_audio()).await.expect("mute");
    alice
        .wait_for("alice's muted stream reports 0", |e| {
            matches!(e, ClientEvent::AudioVolume(v)
                if v.iter().any(|a| a.user_id == uid("alice") && a.audio_volume == 0))
        })
        .await;
    // Stopped: once the actor has taken the request (a later request's reply says so), no
    // report comes in four intervals.
    bob.enable_audio_volume_evaluation(Duration::ZERO);
    bounded(bob.get_transport_stats()).await.expect("stats");
    bob.drain();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !bob.drain()
            .iter()
            .any(|e| matches!(e, ClientEvent::AudioVolume(_))),
        "reports after stopping"
    );
    drop(server);
}

/// A 1080p H.264 stream declares level 4.0 (its track's codec, the codec the uplink
/// registers, and the server's answers to publisher and subscriber); it is published,
/// forwarded and decoded at its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1080p_h264_stream_is_negotiated_at_level_4_and_decoded() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let alice = media_client(&url, "alice", None);
    let mut bob = media_client(&url, "bob", None);
    let local = bounded(create_stream(
        StreamConfig::default()
            .with_audio(false)
            .with_video_profile(VideoProfile::new(1920, 1080, 15, 1500)),
    ))
    .await
    .expect("1080p stream starts");
    assert!(
        local
            .video_fmtp()
            .is_some_and(|f| f.contains("profile-level-id=420028")),
        "{:?}",
        local.video_fmtp()
    );
    join(&alice, 3012).await;
    bounded(alice.publish(&local)).await.expect("publish 1080p");
    join(&bob, 3012).await;
    let remote = bob.stream_added("alice").await;
    let frames = Arc::new(Frames::default());
    subscribe_fast(&bob, &remote, frames.output()).await;
    frames.wait("10 1080p frames", |f| f.video() >= 10).await;
    assert_eq!(*frames.size.lock().unwrap(), Some((1920, 1080)));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_decode_mute_unpublish() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let alice = media_client(&url, "alice", None);
    let mut bob = media_client(&url, "bob", None);
    let local = stream().await;
    join(&alice, 3001).await;
    bounded(alice.publish(&local)).await.expect("publish");
    join(&bob, 3001).await;
    let remote = bob.stream_added("alice").await;
    assert_eq!(remote.stream_type, StreamType::Main);
    assert!(remote.has_audio && remote.has_video);
    assert_eq!(remote.video_codec, Some(VideoCodec::H264));

    let frames = Arc::new(Frames::default());
    subscribe_fast(&bob, &remote, frames.output()).await;
    bob.wait_for(
        "stream-subscribed",
        |e| matches!(e, ClientEvent::StreamSubscribed(s) if s.user_id == uid("alice")),
    )
    .await;
    frames
        .wait("30 video and 10 audio frames", |f| {
            f.video() >= 30 && f.audio() >= 10
        })
        .await;
    assert_eq!(*frames.size.lock().unwrap(), Some((320, 240)));

    // Stats on both sides.
    let sent = local.get_local_video_stats();
    assert!(sent.packets_sent > 0 && sent.bytes_sent > 0 && sent.frames_encoded > 0);
    assert!(local.get_local_audio_stats().packets_sent > 0);
    let stats = bob.get_remote_stats().await.unwrap();
    assert_eq!(stats.len(), 1);
    let s = stats[0].stats;
    assert!(s.video_packets_received > 0 && s.audio_packets_received > 0);
    assert!(s.video_frames_decoded >= 30);
    assert_eq!((s.width, s.height), (320, 240));
    let transport = bob.get_transport_stats().await.unwrap();
    assert_eq!(transport.len(), 1);
    assert!(!transport[0].uplink && transport[0].bytes_received > 0);
    let up = alice.get_transport_stats().await.unwrap();
    assert!(up.len() == 1 && up[0].uplink && up[0].bytes_sent > 0);

    // Mute and unmute are seen on the other side; video resumes after unmute.
    bounded(local.mute_video()).await.unwrap();
    bob.wait_for(
        "mute-video",
        |e| matches!(e, ClientEvent::MuteVideo { user_id } if *user_id == uid("alice")),
    )
    .await;
    bounded(local.mute_audio()).await.unwrap();
    bob.wait_for(
        "mute-audio",
        |e| matches!(e, ClientEvent::MuteAudio { user_id } if *user_id == uid("alice")),
    )
    .await;
    assert!(bob.get_remote_muted_state()[0].video_muted);
    bounded(local.unmute_video()).await.unwrap();
    bounded(local.unmute_audio()).await.unwrap();
    bob.wait_for(
        "unmute-video",
        |e| matches!(e, ClientEvent::UnmuteVideo { user_id } if *user_id == uid("alice")),
    )
    .await;
    let after_unmute = frames.video();
    frames
        .wait("frames after unmute", |f| f.video() >= after_unmute + 10)
        .await;

    // Unpublish: stream-removed, and the stream cannot be subscribed any more.
    bounded(alice.unpublish(&local)).await.expect("unpublish");
    bob.wait_for(
        "stream-removed",
        |e| matches!(e, ClientEvent::StreamRemoved(s) if s.user_id == uid("alice")),
    )
    .await;
    let e = bounded(bob.subscribe(&remote, SubscribeOptions::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RemoteStreamNotExist);
    assert_eq!(e.code.value(), 0x4010);
    assert!(bob.get_remote_stats().await.unwrap().is_empty());
    // Unpublishing twice is a wrong-order call.
    let e = bounded(alice.unpublish(&local)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_order_calls_fail_with_invalid_operation() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let local = stream().await;

    // Publish before join.
    let alice = media_client(&url, "alice", None);
    let e = bounded(alice.publish(&local)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation);

    // A live audience member cannot publish (extra 5107).
    let viewer = TestClient::joined(&url, "viewer", Mode::Live, 3002, Some(Role::Audience)).await;
    let e = bounded(viewer.publish(&local)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation);
    assert_eq!(e.extra_code, Some(5107));

    // Publishing the same stream type twice.
    let mut anchor = TestClient::joined(&url, "anchor", Mode::Live, 3002, Some(Role::Anchor)).await;
    bounded(anchor.publish(&local)).await.expect("publish");
    let e = bounded(anchor.publish(&local)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation);

    // All-false subscribe; subscribe to a stream that does not exist.
    let mut v = TestClient::joined(&url, "viewer2", Mode::Live, 3002, Some(Role::Audience)).await;
    let remote = v.stream_added("anchor").await;
    let none = SubscribeOptions::default()
        .with_audio(false)
        .with_video(false);
    let e = bounded(v.subscribe(&remote, none)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation);
    let mut ghost = remote.clone();
    ghost.stream_type = StreamType::Auxiliary;
    let e = bounded(v.subscribe(&ghost, SubscribeOptions::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RemoteStreamNotExist);
    // Unsubscribe without a subscription.
    let e = bounded(v.unsubscribe(&remote)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation);
    // An audience member may subscribe.
    bounded(v.subscribe(&remote, SubscribeOptions::default()))
        .await
        .expect("audience subscribes");
    bounded(v.unsubscribe(&remote)).await.expect("unsubscribe");
    let _ = anchor.drain();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_subscribe_receives_streams_published_before_and_after_join() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let alice = media_client(&url, "alice", None);
    let a_stream = stream().await;
    join(&alice, 3003).await;
    bounded(alice.publish(&a_stream)).await.expect("publish");

    let frames = Arc::new(Frames::default());
    let mut carol = media_client(&url, "carol", Some(frames.output()));
    join(&carol, 3003).await;
    carol
        .wait_for(
            "auto stream-subscribed alice",
            |e| matches!(e, ClientEvent::StreamSubscribed(s) if s.user_id == uid("alice")),
        )
        .await;

    // A stream published after carol joined is subscribed too.
    let dave = media_client(&url, "dave", None);
    let d_stream = stream().await;
    join(&dave, 3003).await;
    bounded(dave.publish(&d_stream)).await.expect("publish");
    carol
        .wait_for(
            "auto stream-subscribed dave",
            |e| matches!(e, ClientEvent::StreamSubscribed(s) if s.user_id == uid("dave")),
        )
        .await;
    frames
        .wait("frames of both publishers", |f| {
            let by = f.by_user.lock().unwrap();
            by.get("alice").copied().unwrap_or(0) >= 20
                && by.get("dave").copied().unwrap_or(0) >= 20
        })
        .await;
    assert_eq!(*frames.size.lock().unwrap(), Some((320, 240)));
    // Receiving over loopback: network-quality reports a good downlink (every 2 s).
    let q = carol
        .wait_for(
            "network-quality with a measured downlink",
            |e| matches!(e, ClientEvent::NetworkQuality { downlink, .. } if *downlink > 0),
        )
        .await;
    match q {
        ClientEvent::NetworkQuality {
            downlink,
            downlink_loss,
            ..
        } => {
            assert!(
                (1..=2).contains(&downlink),
                "{downlink} with loss {downlink_loss:?}"
            );
        }
        _ => unreachable!(),
    }
}

/// Wait (bounded) until `stream` is gone.
async fn wait_gone(what: &str, stream: &rtcroom::StreamLivenessForTest) {
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while stream.is_alive() {
        assert!(t.elapsed() < DEADLINE, "{what}: the stream is still alive");
        tick.tick().await;
    }
}

/// A local stream (its capture and encoders) goes when nothing holds it any more: neither a
/// handle nor a client publishing it. (Its pipeline used to hold it, through the task
/// copying its RTP and its supervisor: every stream ran until the process ended.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_holds_stops() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();

    let never_published = stream().await;
    let live = never_published.liveness_for_test();
    drop(never_published);
    wait_gone("never published, handle dropped", &live).await;

    // Published: the client holds it after its handle is dropped, until the client goes.
    let alice = media_client(&url, "alice", None);
    join(&alice, 3030).await;
    let published = stream().await;
    let live = published.liveness_for_test();
    bounded(alice.publish(&published)).await.expect("publish");
    drop(published);
    assert!(live.is_alive(), "the publishing client holds the stream");
    drop(alice);
    wait_gone("published, handle and client dropped", &live).await;

    // Unpublished, then the handle dropped.
    let mut carol = media_client(&url, "carol", None);
    join(&carol, 3030).await;
    let published = stream().await;
    let live = published.liveness_for_test();
    bounded(carol.publish(&published)).await.expect("publish");
    bounded(carol.unpublish(&published))
        .await
        .expect("unpublish");
    drop(published);
    wait_gone("unpublished, handle dropped", &live).await;
    assert!(
        carol
            .drain()
            .iter()
            .all(|e| !matches!(e, ClientEvent::Error(_))),
        "no errors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_peer_connections_are_rebuilt_and_frames_flow_again() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let (alice, _local, frames, mut bob) = publisher_and_subscriber(&url, 3004).await;
    frames.wait("first frames", |f| f.video() >= 15).await;

    // Panic the publisher's and the subscriber's peer connection actors.
    assert_eq!(alice.crash_peer_connections_for_test().await, 1);
    assert_eq!(bob.crash_peer_connections_for_test().await, 1);
    let before = frames.video();
    frames
        .wait("frames after the rebuild", |f| f.video() >= before + 30)
        .await;
    assert_no_errors(&mut bob);
}

/// Both links lose their path (every socket they used is cut off, as when a client's
/// network changes): each comes back by an ICE restart on the same peer connection: the
/// subscription's packet counters carry on (a rebuilt link would count from zero), the
/// server answered two ICE restarts and nobody saw an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_whose_path_dies_come_back_by_ice_restart_on_the_same_peer_connection() {
    let announced: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut config = server_config("127.0.0.1:0");
    config.media.public_ip = Some(announced);
    let server = start(config);
    let relays = PathRelay::for_server(&server, announced).await;
    let url = server.ws_url();
    let (_alice, _local, frames, mut bob) = publisher_and_subscriber(&url, 3010).await;
    frames.wait("first frames", |f| f.video() >= 30).await;
    let video_packets = || async {
        let stats = bounded(bob.get_remote_stats()).await.unwrap();
        assert_eq!(stats.len(), 1, "one subscription: {stats:?}");
        stats[0].stats.video_packets_received
    };
    let restarts = || {
        server
            .metrics()
            .media()
            .map_or(0, |m| m.ice_restarts.load(Ordering::Relaxed))
    };
    assert_eq!(restarts(), 0);

    let cut: usize = relays.iter().map(PathRelay::cut).sum();
    assert!(
        cut >= 2,
        "both clients' paths went through the relays ({cut})"
    );
    let received = video_packets().await;
    let at_cut = frames.video();
    frames
        .wait("frames after the path died", |f| f.video() >= at_cut + 30)
        .await;
    assert_eq!(restarts(), 2, "one ICE restart per link");
    let now_received = video_packets().await;
    assert!(
        now_received > received,
        "the same receive side carries on ({now_received} ≤ {received})"
    );
    assert_no_errors(&mut bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_receive_pipelines_are_rebuilt_renegotiated_and_frames_flow_again() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let (_alice, _local, frames, mut bob) = publisher_and_subscriber(&url, 3006).await;
    let video_packets = || async {
        let stats = bounded(bob.get_remote_stats()).await.unwrap();
        assert_eq!(stats.len(), 1, "one subscription: {stats:?}");
        stats[0].stats.video_packets_received
    };

    // The decoder pipeline fails (an element error on its bus); then the actor watching the
    // new one panics. Each time the pipeline is rebuilt on a new peer connection: its
    // counters start again from zero, and frames flow again.
    for crash_watchers in [false, true] {
        let before = frames.video();
        frames
            .wait("frames from the current pipeline", |f| {
                f.video() >= before + 60
            })
            .await;
        let received = video_packets().await;
        assert_eq!(
            bob.fail_remote_pipelines_for_test(crash_watchers).await,
            1,
            "crash_watchers: {crash_watchers}"
        );
        let failed_at = frames.video();
        frames
            .wait("frames after the rebuild", |f| f.video() >= failed_at + 20)
            .await;
        let fresh = video_packets().await;
        assert!(
            fresh < received,
            "crash_watchers {crash_watchers}: a new pipeline counts from zero ({fresh} ≥ {received})"
        );
    }
    assert_no_errors(&mut bob);
}

/// A local pipeline that fails (an element error on its bus, as an unplugged device would
/// give) is rebuilt in place by its supervisor: the same tracks carry on, the subscriber
/// keeps decoding without resubscribing, nobody sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_local_pipeline_is_rebuilt_in_place() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let mut alice = media_client(&url, "alice", None);
    let local = stream().await;
    join(&alice, 3007).await;
    bounded(alice.publish(&local)).await.expect("publish");
    let frames = Arc::new(Frames::default());
    let mut bob = media_client(&url, "bob", Some(frames.output()));
    join(&bob, 3007).await;
    frames.wait("first frames", |f| f.video() >= 15).await;
    for _ in 0..2 {
        let before = local.fail_pipeline_for_test();
        let failed_at = frames.video();
        frames
            .wait("frames from the rebuilt pipeline", |f| {
                f.video() >= failed_at + 30
            })
            .await;
        assert!(
            local.pipeline_epoch_for_test() > before,
            "the pipeline was rebuilt"
        );
    }
    for c in [&mut alice, &mut bob] {
        c.drain();
        assert!(
            !c.seen.iter().any(|e| matches!(e, ClientEvent::Error(_))),
            "{:?}",
            c.seen
        );
    }
    let subscribed = bob
        .seen
        .iter()
        .filter(|e| matches!(e, ClientEvent::StreamSubscribed(_)))
        .count();
    assert!(subscribed <= 1, "no resubscription: {:?}", bob.seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_streams_are_republished_and_resubscribed() {
    let first = start(server_config("127.0.0.1:0"));
    let addr = first.addr();
    let url = first.ws_url();
    let mut alice = media_client(&url, "alice", None);
    let local = stream().await;
    join(&alice, 3005).await;
    bounded(alice.publish(&local)).await.expect("publish");
    let frames = Arc::new(Frames::default());
    let mut bob = media_client(&url, "bob", None);
    join(&bob, 3005).await;
    let remote = bob.stream_added("alice").await;
    bounded(bob.subscribe(&remote, SubscribeOptions::new(frames.output())))
        .await
        .expect("subscribe");
    frames.wait("first frames", |f| f.video() >= 15).await;

    bounded(tokio::task::spawn_blocking(move || first.stop()))
        .await
        .unwrap()
        .unwrap();
    alice.wait_state(ConnectionState::Reconnecting).await;
    bob.wait_state(ConnectionState::Reconnecting).await;
    let before = frames.video();
    let _second = start(server_config(&addr.to_string()));
    alice.wait_state(ConnectionState::Connected).await;
    bob.wait_state(ConnectionState::Connected).await;
    // Nobody calls publish or subscribe again.
    frames
        .wait("frames after the restart", |f| f.video() >= before + 30)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_video_profile_reaches_the_subscriber_without_renegotiation() {
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let (_alice, local, frames, _bob) = publisher_and_subscriber(&url, 3006).await;
    frames.wait("first frames", |f| f.video() >= 10).await;
    assert_eq!(*frames.size.lock().unwrap(), Some((320, 240)));

    bounded(local.set_video_profile(VideoProfile::new(160, 120, 30, 200)))
        .await
        .expect("new profile");
    frames
        .wait("frames of the new size", |f| {
            *f.size.lock().unwrap() == Some((160, 120))
        })
        .await;
    let e = bounded(local.set_video_profile(VideoProfile::new(0, 0, 0, 0)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParameter);
}

/// Decoded frames as an async stream (`frame_stream`) instead of a callback: a subscriber
/// reads the publisher's video and audio frames with `next().await`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_frames_arrive_as_an_async_stream() {
    use futures_util::StreamExt as _;
    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let alice = media_client(&url, "alice", None);
    let mut bob = media_client(&url, "bob", None);
    let local = stream().await;
    join(&alice, 3017).await;
    bounded(alice.publish(&local)).await.expect("publish");
    join(&bob, 3017).await;
    let remote = bob.stream_added("alice").await;
    let (output, mut frames) = rtcroom::frame_stream(64);
    subscribe_fast(&bob, &remote, output).await;
    let (mut video, mut audio) = (0, 0);
    while video < 30 || audio < 10 {
        let f = bounded(frames.next()).await.expect("frames keep coming");
        assert_eq!(f.user_id.as_str(), "alice");
        match f.frame.info {
            FrameInfo::Video { width, height } => {
                assert_eq!((width, height), (320, 240));
                video += 1;
            }
            FrameInfo::Audio { .. } => audio += 1,
        }
    }
}
