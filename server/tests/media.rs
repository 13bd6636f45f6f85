//! SFU end to end on loopback: a webrtc-rs peer publishes real H.264 + Opus from a GStreamer
//! test source, subscribers receive it through the server, decode it and count frames.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::peer::{self, Publisher};
use common::*;
use rtcroom_pipelines::{
    DecodedFrame, FrameInfo, LocalConfig, LocalPipeline, RemoteConfig, RemoteOutput,
    RemotePipeline, SourceKind, VideoProfile, VideoTrackConfig,
};
use rtcroom_protocol::signal::{
    ClientMessage, PublishRequest, ReplyData, ServerEvent, StreamType, SubscribeRequest,
};
use rtcroom_protocol::{ErrorCode, Mode, Role, UserId};
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn answer_of(r: Option<ReplyData>) -> String {
    match r {
        Some(ReplyData::Answer { sdp }) => sdp,
        other => panic!("expected an SDP answer, got {other:?}"),
    }
}

/// Counts decoded video frames and their size.
struct Decoder {
    remote: RemotePipeline,
    video_frames: Arc<AtomicU64>,
    audio_frames: Arc<AtomicU64>,
    size: Arc<std::sync::Mutex<Option<(u32, u32)>>>,
    first_keyframe_at: Arc<std::sync::Mutex<Option<Instant>>>,
    packets: Arc<AtomicU64>,
}

impl Decoder {
    fn new() -> Arc<Decoder> {
        let video_frames = Arc::new(AtomicU64::new(0));
        let audio_frames = Arc::new(AtomicU64::new(0));
        let size = Arc::new(std::sync::Mutex::new(None));
        let (v, a, sz) = (video_frames.clone(), audio_frames.clone(), size.clone());
        let cb = Arc::new(move |f: DecodedFrame| match f.info {
            FrameInfo::Video { width, height } => {
                v.fetch_add(1, Ordering::Relaxed);
                *sz.lock().unwrap() = Some((width, height));
            }
            FrameInfo::Audio { .. } => {
                a.fetch_add(1, Ordering::Relaxed);
            }
        });
        let (remote, _events) =
            RemotePipeline::start(RemoteConfig::new(RemoteOutput::Frames(cb))).unwrap();
        Arc::new(Decoder {
            remote,
            video_frames,
            audio_frames,
            size,
            first_keyframe_at: Arc::new(std::sync::Mutex::new(None)),
            packets: Arc::new(AtomicU64::new(0)),
        })
    }

    fn sink(self: &Arc<Self>) -> Arc<dyn Fn(RTPCodecType, bytes::Bytes) + Send + Sync> {
        let me = self.clone();
        Arc::new(move |kind, b| {
            me.packets.fetch_add(1, Ordering::Relaxed);
            if kind == RTPCodecType::Video && peer::is_h264_keyframe(&b) {
                let mut k = me.first_keyframe_at.lock().unwrap();
                if k.is_none() {
                    *k = Some(Instant::now());
                }
            }
            let _ = me.remote.push_rtp(b);
        })
    }
}

/// Publish the main stream (audio and video) with this offer.
fn publish_main(sdp: impl Into<String>) -> ClientMessage {
    ClientMessage::Publish(PublishRequest {
        stream_type: StreamType::Main,
        has_audio: true,
        has_video: true,
        sdp: Some(sdp.into()),
        layers: Vec::new(),
    })
}

async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !cond() {
        assert!(t.elapsed() < deadline, "timed out waiting for {what}");
        tick.tick().await;
    }
}

/// Pump a local pipeline's RTP into the publisher's tracks until `stop` is set.
fn pump(
    publisher: Arc<Publisher>,
    mut out: rtcroom_pipelines::LocalOutputs,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), out.rtp.recv()).await {
                Ok(Some(p)) => {
                    publisher.write(&p).await;
                    n += 1;
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        n
    })
}

async fn subscribe(
    c: &mut Client,
    publisher: &str,
    decoder: &Arc<Decoder>,
) -> Arc<webrtc::peer_connection::RTCPeerConnection> {
    let pc = peer::subscriber(decoder.sink()).await;
    let offer = peer::full_offer(&pc).await;
    let reply = c
        .request(ClientMessage::Subscribe(SubscribeRequest {
            user_id: uid(publisher),
            stream_type: StreamType::Main,
            audio: true,
            video: true,
            sdp: Some(offer),
            video_type: None,
        }))
        .await
        .expect("subscribe accepted");
    peer::apply_answer(&pc, answer_of(reply)).await;
    pc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_two_subscribers_then_late_joiner_then_unpublish() {
    rtcroom_pipelines::preload().unwrap();
    let server = start(config());
    let url = server.ws_url();

    // The publisher: real H.264 (30 fps so a keyframe request is answered fast) + Opus.
    let (mut alice, _) = joined(&url, "alice", "4242", Mode::Rtc, None).await;
    let publisher = Arc::new(Publisher::new().await);
    let mut cfg = LocalConfig::new(SourceKind::TestPattern { duration: None });
    cfg.video = Some(VideoTrackConfig {
        profile: VideoProfile::new(320, 240, 30, 400),
        ..Default::default()
    });
    let (local, out) = tokio::task::spawn_blocking(move || LocalPipeline::start(cfg))
        .await
        .unwrap()
        .unwrap();
    let keyframes = local.encoder_control();
    let requests = Arc::new(AtomicU64::new(0));
    let r = requests.clone();
    publisher.on_keyframe_request(move || {
        r.fetch_add(1, Ordering::Relaxed);
        keyframes.request_keyframe();
    });
    let offer = peer::full_offer(&publisher.pc).await;
    let reply = alice
        .request(publish_main(offer))
        .await
        .expect("publish accepted");
    peer::apply_answer(&publisher.pc, answer_of(reply)).await;
    assert!(
        peer::connected(&publisher.pc, Duration::from_secs(10)).await,
        "publisher connects"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let pumping = pump(publisher.clone(), out, stop.clone());

    // Two subscribers decode it.
    let (mut bob, _) = joined(&url, "bob", "4242", Mode::Rtc, None).await;
    let (mut carol, _) = joined(&url, "carol", "4242", Mode::Rtc, None).await;
    let (db, dc) = (Decoder::new(), Decoder::new());
    let _pb = subscribe(&mut bob, "alice", &db).await;
    let _pc = subscribe(&mut carol, "alice", &dc).await;
    for d in [&db, &dc] {
        wait_for("30 decoded video frames", Duration::from_secs(15), || {
            d.video_frames.load(Ordering::Relaxed) >= 30
        })
        .await;
        wait_for("decoded audio", Duration::from_secs(5), || {
            d.audio_frames.load(Ordering::Relaxed) >= 10
        })
        .await;
        assert_eq!(*d.size.lock().unwrap(), Some((320, 240)));
    }
    assert!(
        requests.load(Ordering::Relaxed) >= 1,
        "new subscribers asked for a keyframe"
    );
    // Per-member statistics as the server sees them (reported every 2 s).
    let mut stats_tick = tokio::time::interval(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(6);
    let (up, down) = loop {
        stats_tick.tick().await;
        let a = alice.request(ClientMessage::GetStats).await.unwrap();
        let b = bob.request(ClientMessage::GetStats).await.unwrap();
        if let (Some(ReplyData::Stats(a)), Some(ReplyData::Stats(b))) = (a, b)
            && a.uplinks.first().is_some_and(|l| l.packets > 0)
            && b.downlinks.first().is_some_and(|l| l.packets > 0)
        {
            break (a.uplinks[0].clone(), b.downlinks[0].clone());
        }
        assert!(Instant::now() < deadline, "stats never reported");
    };
    assert_eq!(up.user_id, Some(uid("alice")));
    assert_eq!(
        down.user_id,
        Some(uid("alice")),
        "bob's downlink carries alice's stream"
    );
    assert!(up.bytes > 1000 && down.bytes > 1000, "{up:?} {down:?}");
    let stats = server.metrics().media().unwrap().clone();
    assert!(stats.packets_out.load(Ordering::Relaxed) > stats.packets_in.load(Ordering::Relaxed));

    // A late joiner gets a keyframe within 100 ms of its connection coming up.
    let (mut dave, _) = joined(&url, "dave", "4242", Mode::Rtc, None).await;
    let dd = Decoder::new();
    let pd = peer::subscriber(dd.sink()).await;
    let offer = peer::full_offer(&pd).await;
    let reply = dave
        .request(ClientMessage::Subscribe(SubscribeRequest {
            user_id: uid("alice"),
            stream_type: StreamType::Main,
            audio: true,
            video: true,
            sdp: Some(offer),
            video_type: None,
        }))
        .await
        .unwrap();
    let conn = {
        let pd = pd.clone();
        tokio::spawn(async move {
            let ok = peer::connected(&pd, Duration::from_secs(10)).await;
            (ok, Instant::now())
        })
    };
    peer::apply_answer(&pd, answer_of(reply)).await;
    let (ok, connected_at) = conn.await.unwrap();
    assert!(ok, "late subscriber connects");
    wait_for(
        "a keyframe at the late subscriber",
        Duration::from_secs(5),
        || dd.first_keyframe_at.lock().unwrap().is_some(),
    )
    .await;
    let first_key = dd.first_keyframe_at.lock().unwrap().unwrap();
    let wait = first_key.saturating_duration_since(connected_at);
    assert!(
        wait < Duration::from_millis(100),
        "first keyframe {wait:?} after connecting"
    );
    wait_for("late subscriber decodes", Duration::from_secs(10), || {
        dd.video_frames.load(Ordering::Relaxed) >= 5
    })
    .await;

    // Unpublish: subscribers hear stream-removed and media stops.
    alice
        .request(ClientMessage::Unpublish {
            stream_type: StreamType::Main,
        })
        .await
        .unwrap();
    loop {
        match bob.event().await {
            ServerEvent::StreamRemoved {
                user_id,
                stream_type,
            } => {
                assert_eq!((user_id, stream_type), (uid("alice"), StreamType::Main));
                break;
            }
            _ => continue,
        }
    }
    let settled = db.packets.load(Ordering::Relaxed);
    let forwarded = stats.packets_out.load(Ordering::Relaxed);
    // Keep the publisher sending for a while: nothing more may be forwarded.
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    tick.tick().await;
    tick.tick().await;
    let later = stats.packets_out.load(Ordering::Relaxed);
    assert!(
        later <= forwarded + 5,
        "forwarding stopped: {forwarded} then {later}"
    );
    assert!(db.packets.load(Ordering::Relaxed) <= settled + 5);

    stop.store(true, Ordering::Relaxed);
    assert!(pumping.await.unwrap() > 100);
    tokio::task::spawn_blocking(move || local.stop())
        .await
        .unwrap()
        .unwrap();
    server.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_publish_and_bad_sdp_get_codes() {
    let server = start(config());
    let url = server.ws_url();
    let (mut anchor, _) = joined(&url, "anchor", "7", Mode::Live, Some(Role::Anchor)).await;
    let (mut viewer, _) = joined(&url, "viewer", "7", Mode::Live, None).await;
    let publisher = Publisher::new().await;
    let offer = peer::full_offer(&publisher.pc).await;
    let e = viewer
        .request(publish_main(offer.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.extra_code),
        (ErrorCode::InvalidOperation, Some(5107))
    );

    // Malformed SDP: refused, and no stream-added reaches anyone.
    let e = anchor
        .request(publish_main("v=0\r\nthis is not sdp"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParameter);
    // Subscribing to a stream that is not published.
    let e = viewer
        .request(ClientMessage::Subscribe(SubscribeRequest {
            user_id: uid("anchor"),
            stream_type: StreamType::Main,
            audio: true,
            video: true,
            sdp: Some(offer.clone()),
            video_type: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RemoteStreamNotExist);

    // Garbage UDP to a media port changes nothing and panics nothing.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stats = server.metrics().media().unwrap().clone();
    let media_port = {
        // The answer names the worker's port; publish properly to learn it.
        let reply = anchor.request(publish_main(offer)).await.unwrap();
        let sdp = answer_of(reply);
        let line = sdp
            .lines()
            .find(|l| l.starts_with("a=candidate"))
            .unwrap()
            .to_owned();
        line.split_whitespace()
            .nth(5)
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    let before = stats.dropped_datagrams.load(Ordering::Relaxed);
    for i in 0..50u8 {
        let junk = vec![i; (i as usize) * 7 + 1];
        sock.send_to(&junk, ("127.0.0.1", media_port)).unwrap();
    }
    // Every one of them (loopback loses nothing at this rate), and only them.
    wait_for("garbage counted as dropped", Duration::from_secs(5), || {
        stats.dropped_datagrams.load(Ordering::Relaxed) >= before + 50
    })
    .await;
    assert_eq!(stats.dropped_datagrams.load(Ordering::Relaxed), before + 50);
    // The server still works.
    anchor.request(ClientMessage::Heartbeat).await.unwrap();
    server.stop().unwrap();
}

#[tokio::test]
async fn a_peer_that_never_connects_is_dropped() {
    let mut cfg = config();
    cfg.media.connect_timeout_s = 0.5;
    let server = start(cfg);
    let (mut anchor, _) = joined(&server.ws_url(), "a", "8", Mode::Rtc, None).await;
    let publisher = Publisher::new().await;
    let offer = peer::full_offer(&publisher.pc).await;
    // Accept the answer's existence but never apply it: no ICE, no DTLS.
    anchor.request(publish_main(offer)).await.unwrap();
    let stats = server.metrics().media().unwrap().clone();
    assert_eq!(stats.peers.load(Ordering::Relaxed), 1);
    wait_for(
        "the unconnected peer to be dropped",
        Duration::from_secs(5),
        || {
            stats.connect_timeouts.load(Ordering::Relaxed) == 1
                && stats.peers.load(Ordering::Relaxed) == 0
        },
    )
    .await;
    assert_eq!(stats.connect_timeouts.load(Ordering::Relaxed), 1);
    server.stop().unwrap();
}

#[tokio::test]
async fn a_member_whose_signalling_drops_loses_its_subscriptions_at_once() {
    let mut cfg = config();
    // Far beyond the test's deadline: only the disconnect can close the peer in time.
    cfg.media.connect_timeout_s = 60.0;
    let server = start(cfg);
    let url = server.ws_url();
    let (mut anchor, _) = joined(&url, "a", "9", Mode::Rtc, None).await;
    anchor
        .request(ClientMessage::Publish(PublishRequest {
            stream_type: StreamType::Main,
            has_audio: true,
            has_video: false,
            sdp: None,
            layers: Vec::new(),
        }))
        .await
        .unwrap();
    let (mut viewer, _) = joined(&url, "v", "9", Mode::Rtc, None).await;
    let pc = peer::subscriber(Arc::new(|_, _| {})).await;
    let offer = peer::full_offer(&pc).await;
    viewer
        .request(ClientMessage::Subscribe(SubscribeRequest {
            user_id: uid("a"),
            stream_type: StreamType::Main,
            audio: true,
            video: false,
            sdp: Some(offer),
            video_type: None,
        }))
        .await
        .expect("subscribe accepted");
    let stats = server.metrics().media().unwrap().clone();
    assert_eq!(stats.peers.load(Ordering::Relaxed), 1);
    // The viewer's socket closes without a leave: it stays a member for the heartbeat
    // timeout (TRTC keeps it 90 s), but its subscriptions serve nobody and close now.
    viewer
        .send_raw(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    wait_for(
        "the dropped member's subscription peer to close",
        Duration::from_secs(5),
        || stats.peers.load(Ordering::Relaxed) == 0,
    )
    .await;
    server.stop().unwrap();
}

/// The media plane on its own (no signalling): a publisher and a subscriber on one worker,
/// synthetic Opus packets between them.
mod plane {
    use super::*;
    use rtcroom_protocol::RoomId;
    use rtcroom_server::media::{MediaConfig, MediaEvent, MediaPlane, PeerCloseReason, SlotKey};
    use rtcroom_server::room::RoomKey;
    use webrtc::track::track_local::TrackLocalWriter;

    fn slot(user: &str) -> SlotKey {
        SlotKey {
            room: RoomKey {
                sdk_app_id: 1400000001,
                room_id: RoomId::numeric(9).unwrap(),
            },
            user: uid(user),
            stream_type: StreamType::Main,
        }
    }

    /// Publish and connect; returns the publisher and its peer id.
    async fn publish(plane: &MediaPlane, user: &str) -> (Publisher, u64) {
        let publisher = Publisher::new().await;
        let offer = peer::full_offer(&publisher.pc).await;
        let published = plane
            .publish(slot(user), &offer, &[])
            .await
            .expect("publish");
        peer::apply_answer(&publisher.pc, published.answer).await;
        assert!(
            peer::connected(&publisher.pc, Duration::from_secs(10)).await,
            "publisher connects"
        );
        (publisher, published.peer)
    }

    type Subscription = (
        u64,
        Arc<webrtc::peer_connection::RTCPeerConnection>,
        Arc<AtomicU64>,
    );

    /// Subscribe and connect; returns its peer id, its connection and its received-packet
    /// count.
    async fn subscribe(plane: &MediaPlane, user: &str) -> Subscription {
        let received = Arc::new(AtomicU64::new(0));
        let r = received.clone();
        let pc = peer::subscriber(Arc::new(move |_, _| {
            r.fetch_add(1, Ordering::Relaxed);
        }))
        .await;
        let offer = peer::full_offer(&pc).await;
        let (sub, answer) = plane
            .subscribe(slot(user), true, true, &offer, Default::default())
            .await
            .expect("subscribe");
        peer::apply_answer(&pc, answer).await;
        assert!(
            peer::connected(&pc, Duration::from_secs(10)).await,
            "subscriber connects"
        );
        (sub, pc, received)
    }

    async fn next_closed(
        events: &mut tokio::sync::mpsc::Receiver<MediaEvent>,
    ) -> (u64, PeerCloseReason) {
        // Simulcast events (none here: no layers) are skipped.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let e = tokio::time::timeout_at(deadline, events.recv())
                .await
                .expect("a peer-closed event")
                .expect("the channel stays open");
            if let MediaEvent::PeerClosed { peer, reason } = e {
                return (peer, reason);
            }
        }
    }

    /// Send Opus-shaped packets until the subscriber has received `n` more.
    async fn flows(publisher: &Publisher, received: &AtomicU64, n: u64) {
        let start = received.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seq = 0u16;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while received.load(Ordering::Relaxed) < start + n {
            assert!(Instant::now() < deadline, "media flows");
            tick.tick().await;
            seq = seq.wrapping_add(1);
            let pkt = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    sequence_number: seq,
                    timestamp: u32::from(seq) * 960,
                    ..Default::default()
                },
                payload: bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]),
            };
            publisher.audio.write_rtp(&pkt).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_fault_closes_its_peers_and_the_worker_serves_again() {
        // webrtc-rs's DTLS needs rustls' provider, which the server would install.
        rtcroom_server::server::install_crypto_provider();
        let plane = MediaPlane::start(&MediaConfig {
            workers: 1,
            ..Default::default()
        })
        .unwrap();
        let mut events = plane.take_events().expect("the events");
        assert!(plane.take_events().is_none(), "taken once");
        let stats = plane.stats().clone();

        let (p1, publisher) = publish(&plane, "alice").await;
        let (subscriber, _pc, received) = subscribe(&plane, "alice").await;
        flows(&p1, &received, 5).await;

        plane.inject_worker_fault(0);
        let mut closed = Vec::new();
        while closed.len() < 2 {
            let (peer, reason) = next_closed(&mut events).await;
            assert_eq!(reason, PeerCloseReason::WorkerFault);
            closed.push(peer);
        }
        closed.sort();
        let mut expected = vec![publisher, subscriber];
        expected.sort();
        assert_eq!(closed, expected);
        assert_eq!(stats.worker_restarts.load(Ordering::Relaxed), 1);
        // The events go out as the worker drops its peers; the book-keeping follows.
        wait_for(
            "the fault to release peers and slots",
            Duration::from_secs(5),
            || stats.peers.load(Ordering::Relaxed) == 0 && plane.interned_slots() == 0,
        )
        .await;

        // The same worker (and socket) serves a new publisher and subscriber.
        let (p2, publisher2) = publish(&plane, "bob").await;
        let (subscriber2, _pc2, received2) = subscribe(&plane, "bob").await;
        flows(&p2, &received2, 5).await;
        assert_eq!(stats.peers.load(Ordering::Relaxed), 2);

        // Closing on request sends no event, and leaves nothing interned.
        plane.close_peer(subscriber2);
        plane.unpublish(&slot("bob"), publisher2);
        wait_for("peers removed", Duration::from_secs(5), || {
            stats.peers.load(Ordering::Relaxed) == 0 && plane.interned_slots() == 0
        })
        .await;
        assert!(events.try_recv().is_err(), "no event for requested closes");
        plane.shutdown();
    }

    /// The publisher's worker fails while the subscriber sits on another: the subscriber
    /// stays, and a new publisher on the restarted worker reaches it (the other worker told
    /// the restarted one its interest again).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_worker_learns_the_other_workers_interest_again() {
        rtcroom_server::server::install_crypto_provider();
        let plane = MediaPlane::start(&MediaConfig {
            workers: 2,
            ..Default::default()
        })
        .unwrap();
        let mut events = plane.take_events().unwrap();
        // Peers go to the workers in turn: the publisher to 0, the subscriber to 1.
        let (p1, publisher) = publish(&plane, "alice").await;
        let (_sub, _pc, received) = subscribe(&plane, "alice").await;
        flows(&p1, &received, 5).await;
        plane.inject_worker_fault(0);
        assert_eq!(
            next_closed(&mut events).await,
            (publisher, PeerCloseReason::WorkerFault)
        );
        // The next peer goes to worker 0 again.
        let (p2, _) = publish(&plane, "alice").await;
        flows(&p2, &received, 5).await;
        assert_eq!(plane.stats().worker_restarts.load(Ordering::Relaxed), 1);
        assert!(events.try_recv().is_err(), "the subscriber lives on");
        plane.shutdown();
    }
}

/// Behind a 1:1 NAT: the workers bind 127.0.0.1, the candidates announce 127.0.0.2
/// (`media.public_ip`), and a small NAT in the test forwards 127.0.0.2:port ↔ 127.0.0.1:port.
/// The server must take the checks sent to the announced address as its own (it once gave
/// str0m the bound address, and every check was dropped: no publisher ever connected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_announcing_a_public_ip_behind_a_nat_connects() {
    let mut cfg = config();
    cfg.media.workers = 1;
    cfg.media.public_ip = Some("127.0.0.2".parse().unwrap());
    let server = start(cfg);
    let (mut anchor, _) = joined(&server.ws_url(), "a", "9", Mode::Rtc, None).await;
    let publisher = Publisher::new().await;
    let offer = peer::full_offer(&publisher.pc).await;
    let reply = anchor.request(publish_main(offer)).await.unwrap();
    let answer = answer_of(reply);
    let port: u16 = answer
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.strip_prefix("a=candidate:")?.split_whitespace().collect();
            (f.get(4) == Some(&"127.0.0.2")).then(|| f[5].parse().unwrap())
        })
        .expect("the answer announces 127.0.0.2");
    // The NAT: outside 127.0.0.2:port, inside 127.0.0.1:port, one mapping (one client).
    let outside = Arc::new(
        tokio::net::UdpSocket::bind(("127.0.0.2", port))
            .await
            .unwrap(),
    );
    let inside = Arc::new(tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap());
    inside.connect(("127.0.0.1", port)).await.unwrap();
    let client = Arc::new(std::sync::Mutex::new(None));
    let (o, i, c) = (outside.clone(), inside.clone(), client.clone());
    let out_to_in = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = o.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            let _ = i.send(&buf[..n]).await;
        }
    });
    let (o, i, c) = (outside.clone(), inside.clone(), client.clone());
    let in_to_out = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = i.recv(&mut buf).await {
            let to = *c.lock().unwrap();
            if let Some(to) = to {
                let _ = o.send_to(&buf[..n], to).await;
            }
        }
    });
    peer::apply_answer(&publisher.pc, answer).await;
    assert!(
        peer::connected(&publisher.pc, Duration::from_secs(10)).await,
        "the publisher connects through the NAT"
    );
    out_to_in.abort();
    in_to_out.abort();
    server.stop().unwrap();
}

fn ice_ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("an a=ice-ufrag line")
        .trim()
        .to_owned()
}

fn mids(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=mid:"))
        .map(|m| m.trim().to_owned())
        .collect()
}

/// `ice-restart` answers a client's restart offer on the same server peer (new ICE
/// credentials, the same m-lines, the connection comes back) and refuses links the member
/// does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_restart_is_answered_on_the_same_peer_and_unknown_links_are_refused() {
    use rtcroom_protocol::signal::{IceRestartRequest, LinkDirection};
    use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
    let server = start(config());
    let (mut anchor, _) = joined(&server.ws_url(), "a", "11", Mode::Rtc, None).await;
    let restart = |link, user_id: Option<&str>, sdp: String| {
        ClientMessage::IceRestart(IceRestartRequest {
            link,
            user_id: user_id.map(uid),
            stream_type: StreamType::Main,
            sdp,
        })
    };
    let publisher = Publisher::new().await;
    let offer = peer::full_offer(&publisher.pc).await;
    // Nothing published yet: no uplink to restart.
    let e = anchor
        .request(restart(LinkDirection::Uplink, None, offer.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation, "{e:?}");
    // A downlink needs its publisher's user id.
    let e = anchor
        .request(restart(LinkDirection::Downlink, None, offer.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParameter, "{e:?}");
    let e = anchor
        .request(restart(LinkDirection::Downlink, Some("b"), offer.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOperation, "{e:?}");

    let first = answer_of(anchor.request(publish_main(offer)).await.unwrap());
    peer::apply_answer(&publisher.pc, first.clone()).await;
    assert!(peer::connected(&publisher.pc, Duration::from_secs(10)).await);
    let stats = server.metrics().media().unwrap().clone();
    assert_eq!(stats.ice_restarts.load(Ordering::Relaxed), 0);

    // Malformed: refused, and the peer is untouched.
    let e = anchor
        .request(restart(
            LinkDirection::Uplink,
            None,
            "v=0\r\nnot sdp".into(),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParameter, "{e:?}");

    let offer = publisher
        .pc
        .create_offer(Some(RTCOfferOptions {
            ice_restart: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut gathered = publisher.pc.gathering_complete_promise().await;
    publisher.pc.set_local_description(offer).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
    let offer = publisher.pc.local_description().await.unwrap().sdp;
    let answer = answer_of(
        anchor
            .request(restart(LinkDirection::Uplink, None, offer))
            .await
            .expect("the restart is answered"),
    );
    assert_ne!(ice_ufrag(&answer), ice_ufrag(&first), "new ICE credentials");
    assert_eq!(mids(&answer), mids(&first), "the same media");
    assert_eq!(stats.ice_restarts.load(Ordering::Relaxed), 1);
    assert_eq!(stats.peers.load(Ordering::Relaxed), 1, "no second peer");
    peer::apply_answer(&publisher.pc, answer).await;
    assert!(
        peer::connected(&publisher.pc, Duration::from_secs(10)).await,
        "connected again after the restart"
    );
    server.stop().unwrap();
}
