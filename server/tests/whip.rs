//! WHIP (RFC 9725) and WHEP end to end on loopback: webrtc-rs peers publish and view through
//! plain HTTP requests, signalling clients in the same rooms see them as members.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::peer::{self, Publisher};
use common::*;
use rtcroom_pipelines::{LocalConfig, LocalPipeline, SourceKind, VideoProfile, VideoTrackConfig};
use rtcroom_protocol::signal::{
    ClientMessage, PublishRequest, ReplyData, ServerEvent, StreamType, SubscribeRequest,
};
use rtcroom_protocol::{Mode, Role, UserId};
use serde_json::{Value, json};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

/// An HTTP answer: status, headers (lower case), body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// A response header's value (the head is lower-cased, so values are too).
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    }

    fn error(&self) -> Value {
        let v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("a JSON error body, got {:?}", self.body));
        v["error"].clone()
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let (status, head, body) = http_full(addr, method, path, headers, body).await;
    Answer { status, head, body }
}

/// POST an SDP offer to a WHIP/WHEP endpoint with `user`'s UserSig as the bearer token.
async fn post_offer(addr: SocketAddr, path: &str, user: &str, offer: &str) -> Answer {
    let auth = format!("Bearer {}", sig(user));
    request(
        addr,
        "POST",
        path,
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &auth),
            ("Origin", "http://page.example"),
        ],
        offer,
    )
    .await
}

async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !cond() {
        assert!(t.elapsed() < deadline, "timed out waiting for {what}");
        tick.tick().await;
    }
}

/// Read events until one matches (each read bounded by the harness's deadline).
async fn event_where(c: &mut Client, what: &str, f: impl Fn(&ServerEvent) -> bool) -> ServerEvent {
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < DEADLINE, "no {what} event in time");
        let e = c.event().await;
        if f(&e) {
            return e;
        }
    }
}

/// A WebRTC publisher fed by a real H.264 + Opus pipeline (test pattern and tone).
struct Feed {
    publisher: Arc<Publisher>,
    stop: Arc<AtomicBool>,
    _local: LocalPipeline,
}

impl Feed {
    async fn new() -> Feed {
        rtcroom_pipelines::preload().unwrap();
        let publisher = Arc::new(Publisher::new().await);
        let mut cfg = LocalConfig::new(SourceKind::TestPattern { duration: None });
        cfg.video = Some(VideoTrackConfig {
            profile: VideoProfile::new(320, 240, 30, 400),
            ..Default::default()
        });
        let (local, mut out) = tokio::task::spawn_blocking(move || LocalPipeline::start(cfg))
            .await
            .unwrap()
            .unwrap();
        let keyframes = local.encoder_control();
        publisher.on_keyframe_request(move || {
            keyframes.request_keyframe();
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (publisher.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), out.rtp.recv()).await {
                    Ok(Some(pkt)) => p.write(&pkt).await,
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
        });
        Feed {
            publisher,
            stop,
            _local: local,
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A receiving peer counting RTP packets by kind.
struct Viewer {
    pc: Arc<RTCPeerConnection>,
    video: Arc<AtomicU64>,
    audio: Arc<AtomicU64>,
}

impl Viewer {
    async fn new() -> Viewer {
        let video = Arc::new(AtomicU64::new(0));
        let audio = Arc::new(AtomicU64::new(0));
        let (v, a) = (video.clone(), audio.clone());
        let pc = peer::subscriber(Arc::new(move |kind, _| {
            match kind {
                RTPCodecType::Video => &v,
                _ => &a,
            }
            .fetch_add(1, Ordering::Relaxed);
        }))
        .await;
        Viewer { pc, video, audio }
    }

    async fn receives_media(&self, who: &str) {
        wait_for(
            &format!("{who} receives video RTP"),
            Duration::from_secs(10),
            || self.video.load(Ordering::Relaxed) >= 20,
        )
        .await;
        wait_for(
            &format!("{who} receives audio RTP"),
            Duration::from_secs(10),
            || self.audio.load(Ordering::Relaxed) >= 5,
        )
        .await;
    }
}

fn answer_of(r: Option<ReplyData>) -> String {
    match r {
        Some(ReplyData::Answer { sdp }) => sdp,
        other => panic!("expected an SDP answer, got {other:?}"),
    }
}

/// WHIP publish: 201 with Location, ETag and an answer the peer connects with; a signalling
/// member sees the WHIP user join and publish and receives its media; PATCH is 405; DELETE
/// ends it and the member sees the stream and the user go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publisher_is_a_member_whose_media_flows_until_delete() {
    let server = start(config());
    let addr = server.addr();
    let (mut bob, _) = joined(&server.ws_url(), "bob", "5000", Mode::Rtc, None).await;

    let feed = Feed::new().await;
    let offer = peer::full_offer(&feed.publisher.pc).await;
    let r = post_offer(
        addr,
        &format!("/whip/{APP}/alice?roomId=5000"),
        "alice",
        &offer,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let location = r.header("location").expect("a Location header");
    assert!(location.starts_with("/whip/resource/"), "{location}");
    assert!(r.header("etag").is_some(), "an ETag");
    assert_eq!(r.header("content-type").as_deref(), Some("application/sdp"));
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("http://page.example")
    );
    assert!(
        r.header("access-control-expose-headers")
            .is_some_and(|h| h.contains("location") && h.contains("etag")),
        "{}",
        r.head
    );
    assert!(r.body.starts_with("v=0"), "{}", r.body);
    peer::apply_answer(&feed.publisher.pc, r.body.clone()).await;
    assert!(
        peer::connected(&feed.publisher.pc, DEADLINE).await,
        "the WHIP peer connects"
    );

    event_where(
        &mut bob,
        "peer-join alice",
        |e| matches!(e, ServerEvent::PeerJoin { user_id } if *user_id == uid("alice")),
    )
    .await;
    let added = event_where(
        &mut bob,
        "stream-added alice",
        |e| matches!(e, ServerEvent::StreamAdded(s) if s.user_id == uid("alice")),
    )
    .await;
    let ServerEvent::StreamAdded(info) = added else {
        unreachable!()
    };
    assert!(info.has_audio && info.has_video, "{info:?}");
    assert_eq!(info.stream_type, StreamType::Main);

    // Bob receives alice's media through the SFU.
    let viewer = Viewer::new().await;
    let offer = peer::full_offer(&viewer.pc).await;
    let reply = bob
        .request(ClientMessage::Subscribe(SubscribeRequest {
            user_id: uid("alice"),
            stream_type: StreamType::Main,
            audio: true,
            video: true,
            sdp: Some(offer),
            video_type: None,
        }))
        .await
        .expect("bob subscribes to the WHIP stream");
    peer::apply_answer(&viewer.pc, answer_of(reply)).await;
    viewer.receives_media("bob").await;

    // No trickle ICE / ICE restart: 405 with Allow.
    let r = request(addr, "PATCH", &location, &[], "").await;
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(
        r.header("allow").is_some_and(|a| a.contains("delete")),
        "{}",
        r.head
    );

    // DELETE leaves the room.
    let r = request(addr, "DELETE", &location, &[], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    event_where(
        &mut bob,
        "stream-removed alice",
        |e| matches!(e, ServerEvent::StreamRemoved { user_id, .. } if *user_id == uid("alice")),
    )
    .await;
    event_where(
        &mut bob,
        "peer-leave alice",
        |e| matches!(e, ServerEvent::PeerLeave { user_id, .. } if *user_id == uid("alice")),
    )
    .await;
    let r = request(addr, "DELETE", &location, &[], "").await;
    assert_eq!(r.status, 404, "the resource is gone: {}", r.body);
}

/// What a WHIP endpoint refuses, and how: status, headers and TRTC's error in the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_refusals_carry_status_and_trtc_error() {
    let mut c = config();
    c.web.allowed_origins = vec!["http://good.example".into()];
    let server = start(c);
    let addr = server.addr();
    let offer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";
    let path = format!("/whip/{APP}/alice?roomId=5001");
    let good = format!("Bearer {}", sig("alice"));

    // No token: 401 with WWW-Authenticate.
    let r = request(
        addr,
        "POST",
        &path,
        &[("Content-Type", "application/sdp")],
        offer,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("bearer"));
    assert_eq!(r.error()["code"], json!(16385));
    assert_eq!(r.error()["extraCode"], json!(70002));

    // Another user's UserSig: 401, the account code names the mismatch.
    let r = post_offer(addr, &path, "mallory", offer).await;
    assert_eq!(r.status, 403, "an origin not in the list is refused first");
    let wrong = format!("Bearer {}", sig("mallory"));
    let r = request(
        addr,
        "POST",
        &path,
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &wrong),
        ],
        offer,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error()["extraCode"], json!(70013), "{}", r.body);
    assert!(r.header("www-authenticate").is_some());

    // A bad room id: 400 with TRTC's parameter error.
    for bad in [
        "roomId=0",
        "roomId=abc",
        "strRoomId=%2F%2F",
        "",
        "roomId=1&strRoomId=a",
    ] {
        let r = request(
            addr,
            "POST",
            &format!("/whip/{APP}/alice?{bad}"),
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &good),
            ],
            offer,
        )
        .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.error()["code"], json!(4096), "{bad}: {}", r.body);
    }

    // Not SDP: 415.
    let r = request(
        addr,
        "POST",
        &path,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &good),
        ],
        "{}",
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.body);

    // An app this server does not have: 404.
    let r = request(
        addr,
        "POST",
        "/whip/1400000001/alice?roomId=5001",
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &good),
        ],
        offer,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.error()["extraCode"], json!(70020));

    // An offer without media: refused by the room's publish rule (neither audio nor video),
    // and the member it joined as is gone again (a second try is refused the same way, not
    // as a duplicate).
    for _ in 0..2 {
        let r = request(
            addr,
            "POST",
            &path,
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &good),
            ],
            offer,
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.error()["code"], json!(4096), "{}", r.body);
        assert!(!r.body.contains("RtcError"), "no Debug dump: {}", r.body);
    }
    let (status, info) = admin(
        addr,
        "DescribeRoomInfo",
        json!({"SdkAppId": APP, "RoomId": 5001}),
    )
    .await;
    assert!(
        status == 404
            || info["Response"]["RoomInfo"]["Members"]
                .as_array()
                .is_some_and(|m| m.is_empty()),
        "the refused publisher left: {status} {info}"
    );

    // CORS preflight on the endpoint and on a resource path.
    for (p, method) in [(path.as_str(), "POST"), ("/whip/resource/abc", "DELETE")] {
        let r = request(
            addr,
            "OPTIONS",
            p,
            &[
                ("Origin", "http://good.example"),
                ("Access-Control-Request-Method", method),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
            "",
        )
        .await;
        assert!(r.status == 204 || r.status == 200, "{p}: {}", r.status);
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            Some("http://good.example"),
            "{p}: {}",
            r.head
        );
        let allow_methods = r.header("access-control-allow-methods").unwrap_or_default();
        assert!(
            allow_methods.contains(&method.to_lowercase()),
            "{p}: {}",
            r.head
        );
        let allow_headers = r.header("access-control-allow-headers").unwrap_or_default();
        assert!(
            allow_headers.contains("authorization") && allow_headers.contains("content-type"),
            "{p}: {}",
            r.head
        );
        let expose = r
            .header("access-control-expose-headers")
            .unwrap_or_default();
        assert!(
            ["location", "etag", "link"]
                .iter()
                .all(|h| expose.contains(h)),
            "{p}: {}",
            r.head
        );
    }
    let r = request(
        addr,
        "OPTIONS",
        &path,
        &[
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 403, "an origin not in the list gets no preflight");
    assert!(r.header("access-control-allow-origin").is_none());

    // Unknown resources.
    let r = request(addr, "DELETE", "/whip/resource/nonesuch", &[], "").await;
    assert_eq!(r.status, 404);
    let r = request(addr, "GET", &path, &[], "").await;
    assert_eq!(r.status, 405);
    assert!(r.header("allow").is_some_and(|a| a.contains("post")));
}

/// WHEP: a viewer subscribes to a signalling publisher and receives its RTP; a viewer of a
/// user who publishes nothing gets 404 with REMOTE_STREAM_NOT_EXIST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_viewer_receives_a_signalling_publisher() {
    let server = start(config());
    let addr = server.addr();
    let (mut alice, _) = joined(&server.ws_url(), "alice", "5002", Mode::Rtc, None).await;
    let feed = Feed::new().await;
    let offer = peer::full_offer(&feed.publisher.pc).await;
    let reply = alice
        .request(ClientMessage::Publish(PublishRequest {
            stream_type: StreamType::Main,
            has_audio: true,
            has_video: true,
            sdp: Some(offer),
            layers: Vec::new(),
        }))
        .await
        .expect("alice publishes");
    peer::apply_answer(&feed.publisher.pc, answer_of(reply)).await;
    assert!(peer::connected(&feed.publisher.pc, DEADLINE).await);

    let viewer = Viewer::new().await;
    let offer = peer::full_offer(&viewer.pc).await;
    let r = post_offer(
        addr,
        &format!("/whep/{APP}/viewer1?roomId=5002&publisher=alice&stream=main"),
        "viewer1",
        &offer,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let location = r.header("location").expect("Location");
    assert!(location.starts_with("/whep/resource/"), "{location}");
    peer::apply_answer(&viewer.pc, r.body.clone()).await;
    viewer.receives_media("the WHEP viewer").await;
    // An rtc room: the viewer is a plain member, so alice sees it join.
    event_where(
        &mut alice,
        "peer-join viewer1",
        |e| matches!(e, ServerEvent::PeerJoin { user_id } if *user_id == uid("viewer1")),
    )
    .await;

    // A WHIP resource path does not reach a WHEP resource.
    let whip_path = location.replace("/whep/", "/whip/");
    assert_eq!(
        request(addr, "DELETE", &whip_path, &[], "").await.status,
        404
    );

    // Nobody publishes as bob: 404 with TRTC's REMOTE_STREAM_NOT_EXIST, and the viewer that
    // joined to look is gone again.
    let v2 = Viewer::new().await;
    let offer = peer::full_offer(&v2.pc).await;
    let r = post_offer(
        addr,
        &format!("/whep/{APP}/viewer2?roomId=5002&publisher=bob"),
        "viewer2",
        &offer,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.error()["code"], json!(16400), "{}", r.body);
    // No publisher at all: 400.
    let r = post_offer(
        addr,
        &format!("/whep/{APP}/viewer2?roomId=5002"),
        "viewer2",
        &offer,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);

    let r = request(addr, "DELETE", &location, &[], "").await;
    assert_eq!(r.status, 200);
    event_where(
        &mut alice,
        "peer-leave viewer1",
        |e| matches!(e, ServerEvent::PeerLeave { user_id, .. } if *user_id == uid("viewer1")),
    )
    .await;
}

/// A WHIP publisher entering an existing live room becomes an anchor that an audience SDK
/// client sees; a WHEP viewer there is audience. When the room removes the WHIP user (admin
/// RemoveUser) its resource ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_into_a_live_room_is_an_anchor_and_whep_is_audience() {
    let server = start(config());
    let addr = server.addr();
    let (mut carol, _) = joined(
        &server.ws_url(),
        "carol",
        "5003",
        Mode::Live,
        Some(Role::Audience),
    )
    .await;

    let feed = Feed::new().await;
    let offer = peer::full_offer(&feed.publisher.pc).await;
    let r = post_offer(
        addr,
        &format!("/whip/{APP}/alice?roomId=5003"),
        "alice",
        &offer,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let whip = r.header("location").expect("Location");
    peer::apply_answer(&feed.publisher.pc, r.body.clone()).await;
    assert!(peer::connected(&feed.publisher.pc, DEADLINE).await);
    event_where(
        &mut carol,
        "peer-join alice (an anchor)",
        |e| matches!(e, ServerEvent::PeerJoin { user_id } if *user_id == uid("alice")),
    )
    .await;
    event_where(
        &mut carol,
        "stream-added alice",
        |e| matches!(e, ServerEvent::StreamAdded(s) if s.user_id == uid("alice")),
    )
    .await;

    let viewer = Viewer::new().await;
    let offer = peer::full_offer(&viewer.pc).await;
    let r = post_offer(
        addr,
        &format!("/whep/{APP}/dave?roomId=5003&publisher=alice"),
        "dave",
        &offer,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    peer::apply_answer(&viewer.pc, r.body.clone()).await;
    viewer.receives_media("the live WHEP viewer").await;

    let (status, info) = admin(
        addr,
        "DescribeRoomInfo",
        json!({"SdkAppId": APP, "RoomId": 5003}),
    )
    .await;
    assert_eq!(status, 200, "{info}");
    let room = &info["Response"]["RoomInfo"];
    assert_eq!(room["Mode"], json!("live"), "{info}");
    let role = |user: &str| {
        room["Members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["UserId"] == user))
            .map(|m| m["Role"].clone())
    };
    assert_eq!(role("alice"), Some(json!("anchor")), "{info}");
    assert_eq!(role("dave"), Some(json!("audience")), "{info}");

    // The room removes alice: her resource ends on its own (PATCH answers 404, not 405).
    let (status, _) = admin(
        addr,
        "RemoveUser",
        json!({"SdkAppId": APP, "RoomId": 5003, "UserIds": ["alice"]}),
    )
    .await;
    assert_eq!(status, 200);
    let t = Instant::now();
    loop {
        let s = request(addr, "PATCH", &whip, &[], "").await.status;
        if s == 404 {
            break;
        }
        assert_eq!(s, 405);
        assert!(t.elapsed() < DEADLINE, "the removed WHIP resource ends");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_publisher_whose_peer_closes_leaves_the_room_and_its_resource_ends() {
    let server = start(config());
    let addr = server.addr();
    let (mut bob, _) = joined(&server.ws_url(), "bob", "5100", Mode::Rtc, None).await;
    let feed = Feed::new().await;
    let offer = peer::full_offer(&feed.publisher.pc).await;
    let r = post_offer(
        addr,
        &format!("/whip/{APP}/alice?roomId=5100"),
        "alice",
        &offer,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let location = r.header("location").expect("a Location header");
    peer::apply_answer(&feed.publisher.pc, r.body.clone()).await;
    assert!(peer::connected(&feed.publisher.pc, DEADLINE).await);
    event_where(
        &mut bob,
        "stream-added alice",
        |e| matches!(e, ServerEvent::StreamAdded(s) if s.user_id == uid("alice")),
    )
    .await;
    // The encoder goes away without a DELETE (a crashed OBS): its DTLS close reaches the
    // server, whose room lets the member go, with no heartbeat timeout to wait out.
    feed.publisher.pc.close().await.unwrap();
    event_where(
        &mut bob,
        "peer-leave alice",
        |e| matches!(e, ServerEvent::PeerLeave { user_id, .. } if *user_id == uid("alice")),
    )
    .await;
    // The resource ended with it (PATCH, which changes nothing, answers 405 while it lives
    // and 404 once it is gone).
    let mut status = 0;
    for _ in 0..250 {
        status = request(addr, "PATCH", &location, &[], "").await.status;
        if status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 404, "the resource is gone");
}
