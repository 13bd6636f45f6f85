//! How the SFU answers offers shaped like other stacks' (Chromium's order and attributes):
//! one video codec per publisher chosen by the offer's order, subscribers that must receive
//! it, one msid per subscription, simulcast declined, candidates of any kind ignored. Offers
//! are answered before any media flows, so these tests read the answers and events only.

mod common;

use common::*;
use rtcroom_protocol::signal::{
    ClientMessage, PublishRequest, ReplyData, ServerEvent, StreamType, SubscribeRequest, VideoCodec,
};
use rtcroom_protocol::{ErrorCode, Mode, UserId};

/// A Chromium-like offer: audio (Opus) and video with `video_pts` in that order, each
/// `(pt, rtpmap, fmtp)`, with an RTX for each; `dir` is sendonly or recvonly; `extra` lines
/// go into the video section.
fn offer(dir: &str, video: &[(u8, &str, &str)], extra: &str) -> String {
    let mut v = format!(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
         a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS s1\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=ice-ufrag:Ab12\r\na=ice-pwd:0123456789abcdefghijklmn\r\na=ice-options:trickle\r\n\
         a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n\
         a=setup:actpass\r\na=mid:0\r\na={dir}\r\na=rtcp-mux\r\n\
         a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    );
    if dir == "sendonly" {
        v.push_str("a=msid:s1 a1\r\na=ssrc:1001 cname:c1\r\n");
    }
    let pts: Vec<String> = video
        .iter()
        .flat_map(|(pt, _, _)| [pt.to_string(), (pt + 1).to_string()])
        .collect();
    v.push_str(&format!(
        "m=video 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=ice-ufrag:Ab12\r\na=ice-pwd:0123456789abcdefghijklmn\r\na=ice-options:trickle\r\n\
         a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n\
         a=setup:actpass\r\na=mid:1\r\na={dir}\r\na=rtcp-mux\r\na=rtcp-rsize\r\n",
        pts.join(" ")
    ));
    for (pt, rtpmap, fmtp) in video {
        v.push_str(&format!(
            "a=rtpmap:{pt} {rtpmap}/90000\r\na=rtcp-fb:{pt} nack\r\na=rtcp-fb:{pt} nack pli\r\n"
        ));
        if !fmtp.is_empty() {
            v.push_str(&format!("a=fmtp:{pt} {fmtp}\r\n"));
        }
        v.push_str(&format!(
            "a=rtpmap:{rtx} rtx/90000\r\na=fmtp:{rtx} apt={pt}\r\n",
            rtx = pt + 1
        ));
    }
    if dir == "sendonly" {
        v.push_str("a=msid:s1 v1\r\na=ssrc:2002 cname:c1\r\n");
    }
    v.push_str(extra);
    v
}

const VP8: (u8, &str, &str) = (96, "VP8", "");
const H264: (u8, &str, &str) = (
    102,
    "H264",
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
);
const H264_HIGH: (u8, &str, &str) = (
    112,
    "H264",
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f",
);
const VP9: (u8, &str, &str) = (98, "VP9", "profile-id=0");

fn answer_of(r: Option<ReplyData>) -> String {
    match r {
        Some(ReplyData::Answer { sdp }) => sdp,
        other => panic!("expected an SDP answer, got {other:?}"),
    }
}

/// The payload types on the answer's `m=video` line.
fn video_pts(answer: &str) -> Vec<u8> {
    let line = answer
        .lines()
        .find(|l| l.starts_with("m=video"))
        .expect("a video m-line");
    line.split_whitespace()
        .skip(3)
        .map(|p| p.parse().unwrap())
        .collect()
}

fn codec_names(answer: &str) -> Vec<String> {
    let video = &answer[answer.find("m=video").expect("video")..];
    video
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
        .collect()
}

async fn publish(c: &mut Client, sdp: String) -> Result<String, rtcroom_protocol::RtcError> {
    c.request(ClientMessage::Publish(PublishRequest {
        stream_type: StreamType::Main,
        has_audio: true,
        has_video: true,
        sdp: Some(sdp),
        layers: Vec::new(),
    }))
    .await
    .map(answer_of)
}

async fn stream_added(c: &mut Client, user: &str) -> rtcroom_protocol::signal::StreamInfo {
    loop {
        if let ServerEvent::StreamAdded(s) = c.event().await
            && s.user_id.as_str() == user
        {
            return s;
        }
    }
}

#[tokio::test]
async fn a_publisher_gets_one_codec_the_first_of_its_offer() {
    let server = start(config());
    let url = server.ws_url();
    let (mut watcher, _) = joined(&url, "watcher", "501", Mode::Rtc, None).await;
    // Chromium's default order: VP8 first.
    let (mut a, _) = joined(&url, "alice", "501", Mode::Rtc, None).await;
    let answer = publish(&mut a, offer("sendonly", &[VP8, H264, VP9], ""))
        .await
        .unwrap();
    assert_eq!(
        video_pts(&answer),
        [96, 97],
        "VP8 and its RTX only:\n{answer}"
    );
    assert_eq!(codec_names(&answer), ["VP8/90000", "rtx/90000"]);
    let s = stream_added(&mut watcher, "alice").await;
    assert_eq!(s.video_codec, Some(VideoCodec::Vp8));
    // H.264 first (setCodecPreferences): the first baseline packetization-mode 1 entry.
    let (mut b, _) = joined(&url, "bob", "501", Mode::Rtc, None).await;
    let answer = publish(&mut b, offer("sendonly", &[H264_HIGH, H264, VP8], ""))
        .await
        .unwrap();
    assert_eq!(video_pts(&answer), [102, 103], "{answer}");
    assert!(answer.contains("profile-level-id=42001f"), "{answer}");
    let s = stream_added(&mut watcher, "bob").await;
    assert_eq!(s.video_codec, Some(VideoCodec::H264));
    // The join reply of a newcomer carries the codecs too.
    let (_, reply) = joined(&url, "carol", "501", Mode::Rtc, None).await;
    let mut codecs: Vec<(String, Option<VideoCodec>)> = reply
        .streams
        .iter()
        .map(|s| (s.user_id.to_string(), s.video_codec))
        .collect();
    codecs.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        codecs,
        [
            ("alice".to_owned(), Some(VideoCodec::Vp8)),
            ("bob".to_owned(), Some(VideoCodec::H264))
        ]
    );
    server.stop().unwrap();
}

#[tokio::test]
async fn simulcast_is_declined_and_any_candidates_are_ignored() {
    let server = start(config());
    let url = server.ws_url();
    let (mut a, _) = joined(&url, "alice", "502", Mode::Rtc, None).await;
    let extra = "a=rid:h send\r\na=rid:l send\r\na=simulcast:send h;l\r\n\
                 a=candidate:1 1 udp 2113937151 6f1e2d3c-aaaa-bbbb-cccc-0123456789ab.local 51000 typ host generation 0\r\n\
                 a=candidate:2 1 tcp 1518280447 6f1e2d3c-aaaa-bbbb-cccc-0123456789ab.local 9 typ host tcptype active\r\n\
                 a=end-of-candidates\r\n";
    let answer = publish(&mut a, offer("sendonly", &[VP8], extra))
        .await
        .unwrap();
    assert!(!answer.contains("a=simulcast"), "{answer}");
    assert!(!answer.contains("a=rid"), "{answer}");
    assert!(answer.contains("a=ice-lite"), "{answer}");
    assert!(
        answer.contains("typ host"),
        "the server's own candidate: {answer}"
    );
    // No candidates at all (sent before gathering) is just as good.
    let (mut b, _) = joined(&url, "bob", "502", Mode::Rtc, None).await;
    publish(&mut b, offer("sendonly", &[VP8], ""))
        .await
        .unwrap();
    server.stop().unwrap();
}

#[tokio::test]
async fn offers_without_a_forwardable_video_codec_are_refused_by_name() {
    let server = start(config());
    let (mut a, _) = joined(&server.ws_url(), "alice", "503", Mode::Rtc, None).await;
    let e = publish(&mut a, offer("sendonly", &[VP9, H264_HIGH], ""))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotSupported);
    assert!(e.message.contains("VP9, H264"), "{}", e.message);
    // A malformed offer is a clear error without the parser's internals.
    let e = publish(&mut a, "v=0\r\nm=video garbage\r\n".to_owned())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParameter);
    assert!(!e.message.contains("0x"), "{}", e.message);
    server.stop().unwrap();
}

#[tokio::test]
async fn a_subscriber_gets_the_streams_codec_with_its_own_payload_types_and_one_msid() {
    let server = start(config());
    let url = server.ws_url();
    let (mut a, _) = joined(&url, "alice", "504", Mode::Rtc, None).await;
    publish(&mut a, offer("sendonly", &[VP8, H264], ""))
        .await
        .unwrap();
    let (mut b, _) = joined(&url, "bob", "504", Mode::Rtc, None).await;
    let subscribe = |sdp: String| {
        ClientMessage::Subscribe(SubscribeRequest {
            user_id: UserId::new("alice").unwrap(),
            stream_type: StreamType::Main,
            audio: true,
            video: true,
            sdp: Some(sdp),
            video_type: None,
        })
    };
    // An offer that cannot receive VP8 is refused, naming it.
    let e = b
        .request(subscribe(offer("recvonly", &[H264], "")))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotSupported);
    assert!(e.message.contains("VP8"), "{}", e.message);
    // VP8 under another payload type in this subscriber's offer: the answer uses it.
    let vp8_120 = (120, "VP8", "");
    let answer = answer_of(
        b.request(subscribe(offer("recvonly", &[H264, vp8_120], "")))
            .await
            .unwrap(),
    );
    assert_eq!(video_pts(&answer), [120, 121], "{answer}");
    assert_eq!(codec_names(&answer), ["VP8/90000", "rtx/90000"]);
    // Audio and video in one stream: every msid names alice's main stream.
    let msids: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=msid:"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(msids, ["alice_main", "alice_main"], "{answer}");
    server.stop().unwrap();
}

#[tokio::test]
async fn publishing_again_with_another_codec_is_announced_as_an_update() {
    let server = start(config());
    let url = server.ws_url();
    let (mut watcher, _) = joined(&url, "watcher", "505", Mode::Rtc, None).await;
    let (mut a, _) = joined(&url, "alice", "505", Mode::Rtc, None).await;
    publish(&mut a, offer("sendonly", &[VP8], ""))
        .await
        .unwrap();
    assert_eq!(
        stream_added(&mut watcher, "alice").await.video_codec,
        Some(VideoCodec::Vp8)
    );
    publish(&mut a, offer("sendonly", &[H264], ""))
        .await
        .unwrap();
    let updated = loop {
        if let ServerEvent::StreamUpdated(s) = watcher.event().await {
            break s;
        }
    };
    assert_eq!(updated.video_codec, Some(VideoCodec::H264));
    server.stop().unwrap();
}
