//! A webrtc-rs peer for the media tests: publishes RTP from a GStreamer pipeline, or
//! subscribes and hands received RTP to a callback.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use webrtc::api::APIBuilder;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtcp;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};
use webrtc::track::track_remote::TrackRemote;
use webrtc::util::Marshal;

pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f";

fn h264() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: H264_FMTP.to_owned(),
        rtcp_feedback: vec![],
    }
}

fn opus() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// A peer connection set up for loopback: loopback candidates on, mDNS off, UDP4 only,
/// H.264 (PT 102) and Opus (PT 111) as rtcroom-pipelines produces them.
pub async fn new_pc() -> Arc<RTCPeerConnection> {
    let mut m = MediaEngine::default();
    let fb = |t: &str, p: &str| webrtc::rtp_transceiver::RTCPFeedback {
        typ: t.to_owned(),
        parameter: p.to_owned(),
    };
    let mut video = h264();
    video.rtcp_feedback = vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")];
    m.register_codec(
        RTCRtpCodecParameters {
            capability: video,
            payload_type: 102,
            ..Default::default()
        },
        RTPCodecType::Video,
    )
    .unwrap();
    m.register_codec(
        RTCRtpCodecParameters {
            capability: opus(),
            payload_type: 111,
            ..Default::default()
        },
        RTPCodecType::Audio,
    )
    .unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut m).unwrap();
    let mut s = SettingEngine::default();
    s.set_include_loopback_candidate(true);
    s.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    s.set_network_types(vec![NetworkType::Udp4]);
    let api = APIBuilder::new()
        .with_media_engine(m)
        .with_interceptor_registry(registry)
        .with_setting_engine(s)
        .build();
    Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .unwrap(),
    )
}

/// Create the offer with all candidates gathered (no trickle).
pub async fn full_offer(pc: &RTCPeerConnection) -> String {
    let offer = pc.create_offer(None).await.unwrap();
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
    pc.local_description().await.unwrap().sdp
}

pub async fn apply_answer(pc: &RTCPeerConnection, sdp: String) {
    pc.set_remote_description(RTCSessionDescription::answer(sdp).unwrap())
        .await
        .unwrap();
}

/// Resolves when the peer connection is connected (or fails after the deadline).
pub async fn connected(pc: &RTCPeerConnection, deadline: Duration) -> bool {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    pc.on_peer_connection_state_change(Box::new(move |s| {
        let _ = tx.send(s);
        Box::pin(async {})
    }));
    if pc.connection_state() == RTCPeerConnectionState::Connected {
        return true;
    }
    tokio::time::timeout(deadline, async {
        while let Some(s) = rx.recv().await {
            if s == RTCPeerConnectionState::Connected {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// A publishing peer: sendonly H.264 + Opus tracks.
pub struct Publisher {
    pub pc: Arc<RTCPeerConnection>,
    pub video: Arc<TrackLocalStaticRTP>,
    pub audio: Arc<TrackLocalStaticRTP>,
    pub video_sender: Arc<RTCRtpSender>,
}

impl Publisher {
    pub async fn new() -> Publisher {
        let pc = new_pc().await;
        let video = Arc::new(TrackLocalStaticRTP::new(
            h264(),
            "video".into(),
            "rtcroom".into(),
        ));
        let audio = Arc::new(TrackLocalStaticRTP::new(
            opus(),
            "audio".into(),
            "rtcroom".into(),
        ));
        let init = || {
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                send_encodings: vec![],
            })
        };
        let t = pc
            .add_transceiver_from_track(video.clone() as Arc<dyn TrackLocal + Send + Sync>, init())
            .await
            .unwrap();
        pc.add_transceiver_from_track(audio.clone() as Arc<dyn TrackLocal + Send + Sync>, init())
            .await
            .unwrap();
        let video_sender = t.sender().await;
        Publisher {
            pc,
            video,
            audio,
            video_sender,
        }
    }

    /// Calls `on_keyframe_request` for every PLI/FIR the server sends.
    pub fn on_keyframe_request(&self, f: impl Fn() + Send + Sync + 'static) {
        let sender = self.video_sender.clone();
        tokio::spawn(async move {
            while let Ok((pkts, _)) = sender.read_rtcp().await {
                for p in pkts {
                    let any = p.as_any();
                    if any
                        .downcast_ref::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
                        .is_some()
                        || any
                            .downcast_ref::<rtcp::payload_feedbacks::full_intra_request::FullIntraRequest>()
                            .is_some()
                    {
                        f();
                    }
                }
            }
        });
    }

    /// Write one RTP packet (as produced by rtcroom-pipelines) to the matching track.
    pub async fn write(&self, packet: &rtcroom_pipelines::RtpPacket) {
        let track = match packet.kind() {
            rtcroom_pipelines::MediaKind::Video => &self.video,
            rtcroom_pipelines::MediaKind::Audio => &self.audio,
        };
        let _ = track.write(&packet.data).await;
    }
}

/// A subscribing peer with recvonly audio and video transceivers. Every received RTP packet
/// goes to `on_rtp(kind, bytes)`.
pub async fn subscriber(
    on_rtp: Arc<dyn Fn(RTPCodecType, bytes::Bytes) + Send + Sync>,
) -> Arc<RTCPeerConnection> {
    let pc = new_pc().await;
    for kind in [RTPCodecType::Video, RTPCodecType::Audio] {
        pc.add_transceiver_from_kind(
            kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                send_encodings: vec![],
            }),
        )
        .await
        .unwrap();
    }
    pc.on_track(Box::new(move |track: Arc<TrackRemote>, _, _| {
        let on_rtp = on_rtp.clone();
        Box::pin(async move {
            let kind = track.kind();
            tokio::spawn(async move {
                while let Ok((pkt, _)) = track.read_rtp().await {
                    if let Ok(b) = pkt.marshal() {
                        on_rtp(kind, b);
                    }
                }
            });
        })
    }));
    pc
}

/// Whether an H.264 RTP payload starts or carries a keyframe (IDR or SPS).
pub fn is_h264_keyframe(rtp: &[u8]) -> bool {
    let Ok(pkt) =
        <webrtc::rtp::packet::Packet as webrtc::util::Unmarshal>::unmarshal(&mut &rtp[..])
    else {
        return false;
    };
    let p = &pkt.payload;
    let Some(&first) = p.first() else {
        return false;
    };
    match first & 0x1f {
        5 | 7 => true,
        24 => p.get(3).is_some_and(|b| matches!(b & 0x1f, 5 | 7)),
        28 => p
            .get(1)
            .is_some_and(|b| b & 0x80 != 0 && matches!(b & 0x1f, 5 | 7)),
        _ => false,
    }
}
