//! The SDP handling of publish and subscribe, as `MediaPlane::publish`/`subscribe` and the
//! worker run it on a client's offer: `prepare_offer`, `parse_media`,
//! `choose_publish_codec`, the server's str0m parse (`parse_offer`), str0m answering with
//! the worker's codec configuration, and the answer helpers on str0m's answer.

#![no_main]

use std::sync::LazyLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use rtcroom_protocol::signal::VideoCodec;
use rtcroom_server::media::parse_offer;
use rtcroom_server::media::sdp::{
    VideoFormat, answer_pts, choose_publish_codec, has_simulcast, parse_media, prepare_offer,
    simulcast_send_rids, stream_msid, unify_msid,
};
use str0m::change::SdpOffer;
use str0m::crypto::dtls::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::{Candidate, Rtc};

/// One certificate for every run, as the media plane makes one at start.
static CERT: LazyLock<DtlsCert> = LazyLock::new(|| {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("DTLS certificate")
});

enum Role {
    Publisher(Option<VideoFormat>),
    Subscriber(VideoFormat),
}

/// str0m's answer with the worker's configuration (`Worker::new_rtc` and `answer` in
/// server/src/media/worker.rs).
fn answer(offer: SdpOffer, role: &Role) -> Option<String> {
    let mut config = Rtc::builder()
        .set_rtp_mode(true)
        .set_ice_lite(true)
        .set_dtls_cert(CERT.clone())
        .clear_codecs()
        .enable_opus(true, false);
    let codecs = config.codec_config();
    match role {
        Role::Publisher(None) => {}
        Role::Publisher(Some(f)) => {
            let (pt, rtx) = (f.pt.into(), f.rtx.map(Into::into));
            match f.codec {
                VideoCodec::H264 => {
                    codecs.add_h264(pt, rtx, true, f.profile_level_id.unwrap_or(0x42001f))
                }
                VideoCodec::Vp8 => codecs.add_config(
                    pt,
                    rtx,
                    Codec::Vp8,
                    str0m::media::Frequency::NINETY_KHZ,
                    None,
                    FormatParams::default(),
                ),
            }
        }
        Role::Subscriber(f) if f.codec == VideoCodec::H264 => {
            codecs.add_h264(127.into(), Some(121.into()), true, 0x42001f);
            codecs.add_h264(108.into(), Some(109.into()), true, 0x42e01f);
        }
        Role::Subscriber(_) => codecs.enable_vp8(true),
    }
    let mut rtc = config.build(Instant::now());
    let host = Candidate::host("127.0.0.1:4000".parse().ok()?, "udp").ok()?;
    rtc.add_local_candidate(host);
    let answer = rtc.sdp_api().accept_offer(offer).ok()?;
    Some(answer.to_sdp_string())
}

fn check_answer(answer: &str) {
    let unified = unify_msid(answer, &stream_msid("denny", "main"));
    // Unifying stream ids keeps every m-line and its payload type.
    assert_eq!(answer_pts(&unified), answer_pts(answer));
}

fuzz_target!(|data: &[u8]| {
    // Offers arrive in JSON strings: always UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let offer = prepare_offer(text, false);
    assert_eq!(
        prepare_offer(&offer, false),
        offer,
        "prepare_offer is idempotent"
    );
    assert!(!has_simulcast(&offer), "simulcast left in a prepared offer");
    assert!(!offer.lines().any(|l| l.starts_with("a=candidate:")));
    // Kept for a publish that names its layers: candidates still go, simulcast stays, and
    // whatever rids it sends are read without a panic.
    let layered = prepare_offer(text, true);
    assert_eq!(prepare_offer(&layered, true), layered);
    assert!(!layered.lines().any(|l| l.starts_with("a=candidate:")));
    assert_eq!(simulcast_send_rids(&layered), simulcast_send_rids(text));

    let media = parse_media(&offer);
    for m in &media {
        assert!(!m.mid.is_empty());
        for c in &m.codecs {
            if let Some(codec) = c.video_codec() {
                assert!(m.first_of(codec).is_some());
            }
            let _ = m.rtx_for(c.pt);
        }
    }
    let video = choose_publish_codec(&media);
    if let Ok(Some(f)) = &video {
        // The chosen codec is one the offer's first sending video m-line has.
        assert!(media.iter().any(|m| {
            m.sends
                && m.codecs
                    .iter()
                    .any(|c| c.pt == f.pt && c.video_codec() == Some(f.codec))
        }));
    }

    // The answer helpers on whatever text they are given.
    let _ = answer_pts(text);
    let _ = unify_msid(text, "s");

    // What the server hands str0m, and str0m's answer for a publisher and a subscriber.
    let Ok(video) = video else { return };
    if let Ok(parsed) = parse_offer(&offer)
        && let Some(a) = answer(parsed, &Role::Publisher(video))
    {
        check_answer(&a);
    }
    let sub = video.unwrap_or(VideoFormat {
        codec: VideoCodec::Vp8,
        pt: 96,
        rtx: None,
        profile_level_id: None,
    });
    if let Ok(parsed) = parse_offer(&offer)
        && let Some(a) = answer(parsed, &Role::Subscriber(sub))
    {
        check_answer(&a);
    }
});
