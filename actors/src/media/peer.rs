//! `PeerConnectionActor`: one webrtc-rs `RTCPeerConnection`, uplink (publishing a
//! [`LocalMedia`]) or downlink (subscribing into a [`RemoteMedia`]).
//!
//! webrtc-rs stays behind this actor's messages: the client actor asks for an offer
//! ([`CreateOffer`]), hands over the server's answer ([`ApplyAnswer`]), waits for the
//! connection ([`WaitConnected`]) and closes it ([`ClosePc`]); it hears back through
//! [`PcEvent`]s. Every webrtc-rs callback only turns into a message to this actor
//! (`do_send`), and every decision is made in a handler.
//!
//! Set-up, as the SFU expects it: H.264 on PT 102 (with nack, nack pli, ccm fir) and Opus on
//! PT 111; loopback candidates on, mDNS off, UDP4 only; the offer is sent with every ICE
//! candidate gathered (no trickle). Uplink: sendonly transceivers bound to the stream's
//! tracks; each PLI/FIR on a sender becomes a keyframe request to the encoder. A stream with
//! a small stream sends its video as two encodings of one transceiver (rids `h` and `l`,
//! `a=simulcast:send h;l`), with the `sdes:mid` and `sdes:rtp-stream-id` header extensions
//! that name each packet's layer to the server; a PLI for one layer's SSRC asks that
//! layer's encoder only. Downlink:
//! recvonly transceivers; each arriving track is read into the receive pipeline, and a PLI
//! is sent at once so the first frame comes fast.
//!
//! Supervision: when the actor stops for any reason (closed, or a panic in a handler), its
//! `Drop` reports [`PcEventKind::Gone`]; the client actor rebuilds the link unless it closed
//! it on purpose.

use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::prelude::*;
use rtcroom_protocol::{ErrorCode, RtcError};
use tokio::sync::oneshot;
use webrtc::api::APIBuilder;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_H264, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtcp;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_remote::TrackRemote;
use webrtc::util::Marshal;

use super::local::{
    H264_PT, LocalMedia, OPUS_PT, SMALL_RID, VP8_PT, h264_capability, opus_capability,
    vp8_capability,
};
use super::remote::RemoteMedia;
use rtcroom_pipelines::Layer;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpHeaderExtensionCapability;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

/// How long an offer waits for ICE gathering (loopback gathers in a few ms).
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(5);

/// Identifies one peer connection of a client (never reused).
pub type PcId = u64;

/// What a peer connection carries.
#[derive(Clone, Debug)]
pub enum PcRole {
    /// Publishes this local stream.
    Uplink(Arc<LocalMedia>),
    /// Receives a remote stream into this pipeline.
    Downlink {
        /// Where received RTP goes.
        remote: Arc<RemoteMedia>,
        /// Receive audio.
        audio: bool,
        /// Receive video.
        video: bool,
    },
}

/// What a peer connection reports to its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcEventKind {
    /// ICE and DTLS are up.
    Connected,
    /// ICE lost the path (no traffic for a while); it may come back, or an ICE restart may
    /// bring it back.
    Disconnected,
    /// ICE or DTLS failed.
    Failed,
    /// The actor stopped (closed on purpose, or crashed).
    Gone,
}

/// A report from peer connection `id`.
#[derive(Clone, Copy, Debug, Message)]
#[rtype(result = "()")]
pub struct PcEvent {
    /// Which peer connection.
    pub id: PcId,
    /// What happened.
    pub kind: PcEventKind,
}

/// Create the offer, with every candidate gathered; replies with the SDP. With
/// `ice_restart`, the offer carries new ICE credentials and candidates gathered afresh (new
/// sockets: a path that broke is not reused), for the same media.
#[derive(Debug, Message)]
#[rtype(result = "Result<String, RtcError>")]
pub struct CreateOffer {
    /// Restart ICE (RFC 8445 §9) on this peer connection.
    pub ice_restart: bool,
}

/// Apply the server's SDP answer.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), RtcError>")]
pub struct ApplyAnswer(pub String);

/// Reply `true` once connected, `false` on failure or after the timeout.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct WaitConnected(pub Duration);

/// Close the peer connection and stop the actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ClosePc;

/// Transport counters of one peer connection, from webrtc-rs stats.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TransportStats {
    /// Round-trip time from RTCP receiver reports (uplink), when the server sent any.
    pub rtt: Option<Duration>,
    /// Bytes sent on the transport (SRTP, SRTCP, DTLS, STUN).
    pub bytes_sent: u64,
    /// Bytes received on the transport.
    pub bytes_received: u64,
}

/// Read the transport counters.
#[derive(Debug, Message)]
#[rtype(result = "TransportStats")]
pub struct GetTransportStats;

/// Fault injection for supervision tests: panic inside the actor.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CrashPc;

/// webrtc-rs callback: the connection state changed (called on a webrtc-rs task).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct StateChanged(RTCPeerConnectionState);

/// webrtc-rs callback: a remote track arrived (called on a webrtc-rs task).
#[derive(Message)]
#[rtype(result = "()")]
struct TrackArrived(Arc<TrackRemote>);

/// The peer connection actor.
pub struct PeerConnectionActor {
    id: PcId,
    pc: Arc<RTCPeerConnection>,
    role: PcRole,
    owner: Recipient<PcEvent>,
    state: RTCPeerConnectionState,
    waiters: Vec<oneshot::Sender<bool>>,
    span: tracing::Span,
}

fn ice_error(what: &str, e: impl std::fmt::Display) -> RtcError {
    RtcError::new(ErrorCode::IceTransportError, format!("{what}: {e}"))
}

/// The RTCP feedback rtcroom's video codecs are registered with (NACK, PLI, FIR).
pub fn video_feedback() -> Vec<webrtc::rtp_transceiver::RTCPFeedback> {
    let fb = |t: &str, p: &str| webrtc::rtp_transceiver::RTCPFeedback {
        typ: t.to_owned(),
        parameter: p.to_owned(),
    };
    vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")]
}

/// A webrtc-rs peer connection set up for rtcroom's SFU (also used by the CLI's WHIP
/// publisher).
pub async fn new_peer_connection() -> Result<Arc<RTCPeerConnection>, RtcError> {
    new_peer_connection_with(h264_capability()).await
}

/// As [`new_peer_connection`], with H.264 registered as `h264` (an uplink registers its
/// track's codec, whose level follows its resolution: webrtc-rs sends a track only with a
/// registered codec of the same fmtp).
pub async fn new_peer_connection_with(
    h264: RTCRtpCodecCapability,
) -> Result<Arc<RTCPeerConnection>, RtcError> {
    new_peer_connection_for(h264, false).await
}

/// As [`new_peer_connection_with`]; with `simulcast`, the video header extensions that name
/// each packet's media section and RTP stream id (`urn:ietf:params:rtp-hdrext:sdes:mid` and
/// `…:sdes:rtp-stream-id`) are registered too. webrtc-rs adds them to sent packets only when
/// they are registered (and the answer accepts them); a receiver of simulcast tells the
/// layers apart by them.
pub async fn new_peer_connection_for(
    h264: RTCRtpCodecCapability,
    simulcast: bool,
) -> Result<Arc<RTCPeerConnection>, RtcError> {
    let mut m = MediaEngine::default();
    let mut h264 = h264;
    h264.rtcp_feedback = video_feedback();
    let mut vp8 = vp8_capability();
    vp8.rtcp_feedback = video_feedback();
    // H.264 first: an offer lists codecs in this order, and an uplink narrows it to its
    // track's codec (`set_codec_preferences`), so the server answers with what is sent.
    let codecs = [
        (h264, H264_PT, RTPCodecType::Video),
        (vp8, VP8_PT, RTPCodecType::Video),
        (opus_capability(), OPUS_PT, RTPCodecType::Audio),
    ];
    for (capability, payload_type, kind) in codecs {
        m.register_codec(
            RTCRtpCodecParameters {
                capability,
                payload_type,
                ..Default::default()
            },
            kind,
        )
        .map_err(|e| ice_error("register codec", e))?;
    }
    if simulcast {
        for uri in [
            webrtc::sdp::extmap::SDES_MID_URI,
            webrtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
        ] {
            m.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: uri.to_owned(),
                },
                RTPCodecType::Video,
                None,
            )
            .map_err(|e| ice_error("register header extension", e))?;
        }
    }
    let registry = register_default_interceptors(Registry::new(), &mut m)
        .map_err(|e| ice_error("interceptors", e))?;
    let mut s = SettingEngine::default();
    s.set_include_loopback_candidate(true);
    s.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    s.set_network_types(vec![NetworkType::Udp4]);
    let api = APIBuilder::new()
        .with_media_engine(m)
        .with_interceptor_registry(registry)
        .with_setting_engine(s)
        .build();
    api.new_peer_connection(RTCConfiguration::default())
        .await
        .map(Arc::new)
        .map_err(|e| ice_error("new peer connection", e))
}

/// Which RTCP of a sender to read: its first (or only) encoding's, or one simulcast
/// encoding's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RtcpOf {
    /// The sender's first encoding (the only one, or a simulcast sender's big layer).
    First,
    /// The encoding of a simulcast layer (by its rid).
    Rid(&'static str),
}

/// Reads RTCP from a sender's encoding (webrtc-rs needs it read for its interceptors), turns
/// each PLI/FIR into a keyframe request to `layer`'s encoder (the RTCP of an encoding is the
/// RTCP for its SSRC) and each receiver report's loss into the Opus encoder's expected loss
/// (its in-band FEC). Ends with the sender.
async fn read_sender_rtcp(
    sender: Arc<RTCRtpSender>,
    local: Weak<LocalMedia>,
    of: RtcpOf,
    layer: Layer,
) {
    loop {
        let read = match of {
            RtcpOf::First => sender.read_rtcp().await,
            RtcpOf::Rid(rid) => sender.read_rtcp_simulcast(rid).await,
        };
        let Ok((pkts, _)) = read else {
            break;
        };
        // Weak: the stream's last handle going stops its pipeline, whatever still reads.
        let Some(local) = local.upgrade() else {
            break;
        };
        for p in pkts {
            let any = p.as_any();
            if any
                .downcast_ref::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
                .is_some()
                || any
                    .downcast_ref::<rtcp::payload_feedbacks::full_intra_request::FullIntraRequest>()
                    .is_some()
            {
                local.request_keyframe_of(layer);
            }
            if let Some(rr) = any.downcast_ref::<rtcp::receiver_report::ReceiverReport>()
                && let Some(worst) = rr.reports.iter().map(|r| r.fraction_lost).max()
            {
                local.on_loss_report(worst);
            }
        }
    }
}

/// The tracks an uplink peer connection sends.
#[derive(Clone, Debug, Default)]
pub struct UplinkTracks {
    /// The video track (with a small stream: the big layer's, rid `h`).
    pub video: Option<Arc<TrackLocalStaticRTP>>,
    /// The small stream's track (rid `l`, same track id as `video`): sent as the second
    /// encoding of the video sender.
    pub small_video: Option<Arc<TrackLocalStaticRTP>>,
    /// The audio track.
    pub audio: Option<Arc<TrackLocalStaticRTP>>,
}

/// Adds one sendonly transceiver per track to `pc` (video first), the small stream as a
/// second encoding of the video's sender (before negotiation, as webrtc-rs requires), and
/// narrows the video's codecs to the track's. Returns each sender, and whether it is the
/// simulcast video's.
pub async fn add_uplink_tracks(
    pc: &RTCPeerConnection,
    tracks: &UplinkTracks,
) -> Result<Vec<(Arc<RTCRtpSender>, bool)>, RtcError> {
    let mut senders = Vec::new();
    for track in [tracks.video.clone(), tracks.audio.clone()]
        .into_iter()
        .flatten()
    {
        let capability = track.codec();
        let t = pc
            .add_transceiver_from_track(
                track as Arc<dyn TrackLocal + Send + Sync>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    send_encodings: vec![],
                }),
            )
            .await
            .map_err(|e| ice_error("add track", e))?;
        let sender = t.sender().await;
        let mut simulcast = false;
        if t.kind() == RTPCodecType::Video {
            if let Some(small) = &tracks.small_video {
                sender
                    .add_encoding(small.clone() as Arc<dyn TrackLocal + Send + Sync>)
                    .await
                    .map_err(|e| ice_error("add the small stream's encoding", e))?;
                simulcast = true;
            }
            // Offer the track's codec only: the server answers a publisher with the offer's
            // first codec it forwards, and that must be the one we send.
            let payload_type = if capability.mime_type == MIME_TYPE_VP8 {
                VP8_PT
            } else {
                H264_PT
            };
            t.set_codec_preferences(vec![RTCRtpCodecParameters {
                capability: RTCRtpCodecCapability {
                    rtcp_feedback: video_feedback(),
                    ..capability
                },
                payload_type,
                ..Default::default()
            }])
            .await
            .map_err(|e| ice_error("codec preferences", e))?;
        }
        senders.push((sender, simulcast));
    }
    Ok(senders)
}

/// When to poke the ICE agent after the answer is applied (see [`nomination_pokes`]).
const NOMINATION_POKES: [Duration; 3] = [
    Duration::from_millis(2),
    Duration::from_millis(6),
    Duration::from_millis(20),
];

/// The server is ICE-lite: it answers checks but never sends any, so webrtc-rs (the
/// controlling agent) nominates a pair only on its next check tick, a fixed 200 ms after
/// the first check (not configurable in webrtc-rs 0.17). Adding a remote candidate makes it
/// run its checks at once, and a pair that has succeeded by then is nominated then. So a
/// few ms after the answer, while ICE is not connected yet, this adds the server's own
/// address again as a lower-priority srflx / prflx / relay candidate (each a new candidate,
/// so each triggers a check; checks to it reach the same server and are answered). Cuts
/// connection set-up on a LAN from about 210 ms to a few ms. Returns the candidate lines.
pub fn nomination_pokes(answer: &str) -> Vec<(String, Option<String>)> {
    let mid = answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=mid:"))
        .map(str::to_owned);
    let Some(host) = answer.lines().find_map(|l| {
        let c = l.trim().strip_prefix("a=candidate:")?;
        let f: Vec<&str> = c.split_whitespace().collect();
        (f.len() >= 8 && f[6] == "typ" && f[7] == "host").then_some(f)
    }) else {
        return Vec::new();
    };
    let (component, transport, addr, port) = (host[1], host[2], host[4], host[5]);
    ["srflx", "prflx", "relay"]
        .iter()
        .enumerate()
        .map(|(i, typ)| {
            (
                format!(
                    "candidate:rtcroompoke{i} {component} {transport} {} {addr} {port} typ {typ} raddr 0.0.0.0 rport 0",
                    i + 1
                ),
                mid.clone(),
            )
        })
        .collect()
}

/// Poke webrtc-rs into nominating at once after an ICE-lite answer (see
/// [`nomination_pokes`]).
pub async fn poke_nomination(pc: Arc<RTCPeerConnection>, answer: String) {
    use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
    use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
    for ((candidate, sdp_mid), delay) in nomination_pokes(&answer).into_iter().zip(NOMINATION_POKES)
    {
        // A protocol timer (like a retransmission), not test sequencing.
        tokio::time::sleep(delay).await;
        if matches!(
            pc.ice_connection_state(),
            RTCIceConnectionState::Connected
                | RTCIceConnectionState::Completed
                | RTCIceConnectionState::Closed
                | RTCIceConnectionState::Failed
        ) {
            return;
        }
        let _ = pc
            .add_ice_candidate(RTCIceCandidateInit {
                candidate,
                sdp_mid,
                sdp_mline_index: Some(0),
                username_fragment: None,
            })
            .await;
    }
}

/// Copies a remote track's RTP into the receive pipeline. Ends with the track.
async fn read_track(track: Arc<TrackRemote>, remote: Arc<RemoteMedia>) {
    let video = track.kind() == RTPCodecType::Video;
    let counters = if video { &remote.video } else { &remote.audio };
    while let Ok((pkt, _)) = track.read_rtp().await {
        let seq = pkt.header.sequence_number;
        if let Ok(b) = pkt.marshal() {
            counters.count(b.len(), seq);
            remote.push_rtp(b);
        }
    }
}

impl PeerConnectionActor {
    /// Builds the peer connection for `role` and starts its actor in the current arbiter
    /// (the engine thread). Reports go to `owner`.
    pub async fn create(
        id: PcId,
        role: PcRole,
        owner: Recipient<PcEvent>,
        span: tracing::Span,
    ) -> Result<Addr<PeerConnectionActor>, RtcError> {
        let h264 = match &role {
            PcRole::Uplink(local) => local
                .video_track()
                .map(|t| t.codec())
                .filter(|c| c.mime_type == MIME_TYPE_H264)
                .unwrap_or_else(h264_capability),
            PcRole::Downlink { .. } => h264_capability(),
        };
        let simulcast = matches!(&role, PcRole::Uplink(local) if local.has_small());
        let pc = new_peer_connection_for(h264, simulcast).await?;
        let mut senders = Vec::new();
        match &role {
            PcRole::Uplink(local) => {
                let tracks = UplinkTracks {
                    video: local.video_track(),
                    small_video: local.small_track(),
                    audio: local.audio_track(),
                };
                senders = add_uplink_tracks(&pc, &tracks).await?;
            }
            PcRole::Downlink { audio, video, .. } => {
                let kinds = [(*video, RTPCodecType::Video), (*audio, RTPCodecType::Audio)];
                for (_, kind) in kinds.into_iter().filter(|(on, _)| *on) {
                    pc.add_transceiver_from_kind(
                        kind,
                        Some(RTCRtpTransceiverInit {
                            direction: RTCRtpTransceiverDirection::Recvonly,
                            send_encodings: vec![],
                        }),
                    )
                    .await
                    .map_err(|e| ice_error("add transceiver", e))?;
                }
            }
        }
        let addr = PeerConnectionActor::create_actor(id, pc.clone(), role.clone(), owner, span);
        if let PcRole::Uplink(local) = &role {
            for (sender, simulcast) in senders {
                actix::spawn(read_sender_rtcp(
                    sender.clone(),
                    Arc::downgrade(local),
                    RtcpOf::First,
                    Layer::Big,
                ));
                if simulcast {
                    actix::spawn(read_sender_rtcp(
                        sender,
                        Arc::downgrade(local),
                        RtcpOf::Rid(SMALL_RID),
                        Layer::Small,
                    ));
                }
            }
        }
        let a = addr.clone();
        pc.on_peer_connection_state_change(Box::new(move |s| {
            a.do_send(StateChanged(s));
            Box::pin(async {})
        }));
        let a = addr.clone();
        pc.on_track(Box::new(move |track, _, _| {
            a.do_send(TrackArrived(track));
            Box::pin(async {})
        }));
        Ok(addr)
    }

    fn create_actor(
        id: PcId,
        pc: Arc<RTCPeerConnection>,
        role: PcRole,
        owner: Recipient<PcEvent>,
        span: tracing::Span,
    ) -> Addr<PeerConnectionActor> {
        PeerConnectionActor {
            id,
            pc,
            role,
            owner,
            state: RTCPeerConnectionState::New,
            waiters: Vec::new(),
            span,
        }
        .start()
    }

    fn settle_waiters(&mut self, ok: bool) {
        for w in self.waiters.drain(..) {
            let _ = w.send(ok);
        }
    }
}

impl Actor for PeerConnectionActor {
    type Context = Context<Self>;
}

impl Drop for PeerConnectionActor {
    fn drop(&mut self) {
        // Stopped or crashed (then this runs while unwinding): close the peer connection so
        // its tracks and ICE agent go away. Closing is async; `try_current` cannot panic, so
        // a panic while unwinding cannot turn into an abort.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let pc = self.pc.clone();
            rt.spawn(async move {
                let _ = pc.close().await;
            });
        }
        self.settle_waiters(false);
        self.owner.do_send(PcEvent {
            id: self.id,
            kind: PcEventKind::Gone,
        });
    }
}

impl Handler<CreateOffer> for PeerConnectionActor {
    type Result = ResponseFuture<Result<String, RtcError>>;

    fn handle(&mut self, msg: CreateOffer, _: &mut Self::Context) -> Self::Result {
        let pc = self.pc.clone();
        let options = msg.ice_restart.then(|| RTCOfferOptions {
            ice_restart: true,
            ..Default::default()
        });
        Box::pin(async move {
            let offer = pc
                .create_offer(options)
                .await
                .map_err(|e| RtcError::new(ErrorCode::CreateOfferFailed, e.to_string()))?;
            let mut gathered = pc.gathering_complete_promise().await;
            pc.set_local_description(offer)
                .await
                .map_err(|e| RtcError::new(ErrorCode::CreateOfferFailed, e.to_string()))?;
            let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await;
            pc.local_description()
                .await
                .map(|d| d.sdp)
                .ok_or_else(|| RtcError::new(ErrorCode::CreateOfferFailed, "no local description"))
        })
    }
}

impl Handler<ApplyAnswer> for PeerConnectionActor {
    type Result = ResponseFuture<Result<(), RtcError>>;

    fn handle(&mut self, msg: ApplyAnswer, _: &mut Self::Context) -> Self::Result {
        let pc = self.pc.clone();
        Box::pin(async move {
            let answer = RTCSessionDescription::answer(msg.0.clone())
                .map_err(|e| ice_error("bad answer", e))?;
            pc.set_remote_description(answer)
                .await
                .map_err(|e| ice_error("answer refused", e))?;
            actix::spawn(poke_nomination(pc, msg.0));
            Ok(())
        })
    }
}

impl Handler<WaitConnected> for PeerConnectionActor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: WaitConnected, _: &mut Self::Context) -> Self::Result {
        match self.state {
            RTCPeerConnectionState::Connected => Box::pin(async { true }),
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                Box::pin(async { false })
            }
            _ => {
                let (tx, rx) = oneshot::channel();
                self.waiters.push(tx);
                Box::pin(async move {
                    tokio::time::timeout(msg.0, rx)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(false)
                })
            }
        }
    }
}

impl Handler<GetTransportStats> for PeerConnectionActor {
    type Result = ResponseFuture<TransportStats>;

    fn handle(&mut self, _: GetTransportStats, _: &mut Self::Context) -> Self::Result {
        let pc = self.pc.clone();
        Box::pin(async move {
            let report = pc.get_stats().await;
            let mut out = TransportStats::default();
            for r in report.reports.values() {
                match r {
                    webrtc::stats::StatsReportType::Transport(t) => {
                        out.bytes_sent += t.bytes_sent as u64;
                        out.bytes_received += t.bytes_received as u64;
                    }
                    // webrtc-rs 0.17 fills no RTT on candidate pairs; RTCP receiver reports
                    // from the server give one for the uplink when it sends them.
                    webrtc::stats::StatsReportType::RemoteInboundRTP(r) => {
                        if let Some(rtt) = r
                            .round_trip_time
                            .filter(|s| s.is_finite() && *s >= 0.0)
                            .map(Duration::from_secs_f64)
                        {
                            out.rtt = Some(out.rtt.map_or(rtt, |o: Duration| o.max(rtt)));
                        }
                    }
                    _ => {}
                }
            }
            out
        })
    }
}

impl Handler<ClosePc> for PeerConnectionActor {
    type Result = ();

    fn handle(&mut self, _: ClosePc, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<CrashPc> for PeerConnectionActor {
    type Result = ();

    fn handle(&mut self, _: CrashPc, _: &mut Self::Context) {
        panic!("peer connection actor crash requested (fault injection)");
    }
}

impl Handler<StateChanged> for PeerConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: StateChanged, _: &mut Self::Context) {
        let state = msg.0;
        tracing::debug!(parent: &self.span, pc = self.id, %state, "peer connection state");
        self.state = state;
        let kind = match state {
            RTCPeerConnectionState::Connected => {
                self.settle_waiters(true);
                PcEventKind::Connected
            }
            RTCPeerConnectionState::Failed => {
                self.settle_waiters(false);
                PcEventKind::Failed
            }
            RTCPeerConnectionState::Disconnected => PcEventKind::Disconnected,
            _ => return,
        };
        self.owner.do_send(PcEvent { id: self.id, kind });
    }
}

impl Handler<TrackArrived> for PeerConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: TrackArrived, _: &mut Self::Context) {
        let PcRole::Downlink { remote, .. } = &self.role else {
            return;
        };
        let track = msg.0;
        tracing::debug!(parent: &self.span, pc = self.id, kind = %track.kind(), "remote track");
        if track.kind() == RTPCodecType::Video {
            // Ask for a keyframe at once, so decoding starts without waiting for the GOP.
            let pc = self.pc.clone();
            let media_ssrc = track.ssrc();
            actix::spawn(async move {
                let pli = rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                };
                let _ = pc.write_rtcp(&[Box::new(pli)]).await;
            });
        }
        actix::spawn(read_track(track, remote.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pokes_repeat_the_servers_host_candidate_with_other_types() {
        let answer = "v=0\r\na=ice-lite\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\n\
                      a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n";
        let pokes = nomination_pokes(answer);
        assert_eq!(pokes.len(), 3);
        assert_eq!(
            pokes[0].0,
            "candidate:rtcroompoke0 1 udp 1 127.0.0.1 40000 typ srflx raddr 0.0.0.0 rport 0"
        );
        assert_eq!(pokes[0].1.as_deref(), Some("0"));
        assert!(pokes[2].0.contains("typ relay"));
    }

    #[test]
    fn no_host_candidate_no_pokes() {
        assert!(nomination_pokes("v=0\r\na=candidate:garbage\r\n").is_empty());
        assert!(nomination_pokes("").is_empty());
    }

    use crate::media::local::{opus_capability, video_tracks};
    use webrtc::rtp::packet::Packet;
    use webrtc::track::track_local::TrackLocalWriter;

    /// The `m=` section of `kind` in `sdp`.
    fn section<'a>(sdp: &'a str, kind: &str) -> &'a str {
        sdp.split("m=")
            .find(|m| m.starts_with(kind))
            .unwrap_or_else(|| panic!("no {kind} section in {sdp}"))
    }

    async fn offer_of(pc: &RTCPeerConnection) -> String {
        let offer = pc.create_offer(None).await.expect("offer");
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(offer)
            .await
            .expect("local description");
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await;
        pc.local_description().await.expect("described").sdp
    }

    fn audio_track() -> Arc<TrackLocalStaticRTP> {
        Arc::new(TrackLocalStaticRTP::new(
            opus_capability(),
            "audio".into(),
            "rtcroom".into(),
        ))
    }

    #[tokio::test]
    async fn a_small_stream_is_offered_as_two_encodings_of_one_video_transceiver() {
        let (big, small) = video_tracks(h264_capability(), true);
        let pc = new_peer_connection_for(h264_capability(), true)
            .await
            .expect("pc");
        let senders = add_uplink_tracks(
            &pc,
            &UplinkTracks {
                video: Some(big),
                small_video: small,
                audio: Some(audio_track()),
            },
        )
        .await
        .expect("tracks");
        let simulcast: Vec<bool> = senders.iter().map(|(_, s)| *s).collect();
        assert_eq!(simulcast, [true, false], "video, then audio");
        let sdp = offer_of(&pc).await;
        assert_eq!(sdp.matches("m=video").count(), 1, "{sdp}");
        let video = section(&sdp, "video");
        for line in [
            "a=rid:h send",
            "a=rid:l send",
            "a=simulcast:send h;l",
            "urn:ietf:params:rtp-hdrext:sdes:mid",
            "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "a=sendonly",
            "H264/90000",
        ] {
            assert!(video.contains(line), "{line} in {video}");
        }
        assert!(!video.contains("VP8"), "only the track's codec: {video}");
        let audio = section(&sdp, "audio");
        assert!(!audio.contains("a=rid"), "{audio}");
        let _ = pc.close().await;

        // Without a small stream: one encoding, no rids, no extensions.
        let (plain, none) = video_tracks(h264_capability(), false);
        assert!(none.is_none());
        let pc = new_peer_connection_for(h264_capability(), false)
            .await
            .expect("pc");
        let senders = add_uplink_tracks(
            &pc,
            &UplinkTracks {
                video: Some(plain),
                ..Default::default()
            },
        )
        .await
        .expect("tracks");
        assert!(!senders[0].1);
        let sdp = offer_of(&pc).await;
        for absent in ["a=rid:", "a=simulcast", "sdes:rtp-stream-id"] {
            assert!(!sdp.contains(absent), "{absent} in {sdp}");
        }
        let _ = pc.close().await;
    }

    /// What webrtc-rs really puts on the wire: a webrtc-rs receiver of simulcast (which tells
    /// layers apart only by the `sdes:mid` and `sdes:rtp-stream-id` header extensions of the
    /// packets, not by SSRCs) gets one track per rid, and a PLI for the small layer's SSRC
    /// reaches the small encoding's RTCP.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_layer_goes_out_with_its_rid_header_extension_and_gets_its_own_rtcp() {
        // webrtc-rs's DTLS needs a process-wide rustls provider (DEVELOPERS.md).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let (big, small) = video_tracks(h264_capability(), true);
        let small = small.expect("small track");
        let offerer = new_peer_connection_for(h264_capability(), true)
            .await
            .expect("pc");
        let senders = add_uplink_tracks(
            &offerer,
            &UplinkTracks {
                video: Some(big.clone()),
                small_video: Some(small.clone()),
                audio: None,
            },
        )
        .await
        .expect("tracks");
        let sender = senders[0].0.clone();
        let answerer = new_peer_connection_for(h264_capability(), true)
            .await
            .expect("pc");
        answerer
            .add_transceiver_from_kind(
                RTPCodecType::Video,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: vec![],
                }),
            )
            .await
            .expect("transceiver");
        let (tx, mut tracks) = tokio::sync::mpsc::unbounded_channel();
        answerer.on_track(Box::new(move |track, _, _| {
            let _ = tx.send((track.rid().to_owned(), track.ssrc()));
            Box::pin(async {})
        }));
        let offer = offer_of(&offerer).await;
        answerer
            .set_remote_description(RTCSessionDescription::offer(offer).expect("offer"))
            .await
            .expect("offer applied");
        let answer = answerer.create_answer(None).await.expect("answer");
        let mut gathered = answerer.gathering_complete_promise().await;
        answerer
            .set_local_description(answer)
            .await
            .expect("local description");
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await;
        let answer = answerer.local_description().await.expect("described");
        assert!(
            answer.sdp.contains("a=simulcast:recv h;l"),
            "{}",
            answer.sdp
        );
        offerer
            .set_remote_description(answer)
            .await
            .expect("answer applied");
        // Media: a packet per layer every 20 ms (nothing is sent until the tracks are bound).
        let writer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0u16.. {
                tick.tick().await;
                for track in [&big, &small] {
                    let packet = Packet {
                        header: webrtc::rtp::header::Header {
                            version: 2,
                            payload_type: H264_PT,
                            sequence_number: i,
                            timestamp: u32::from(i) * 3_000,
                            marker: true,
                            ..Default::default()
                        },
                        payload: bytes::Bytes::from_static(&[0x65, 0x88, 0x84, 0x00]),
                    };
                    let _ = track.write_rtp(&packet).await;
                }
            }
        });
        let mut rids = std::collections::BTreeMap::new();
        while rids.len() < 2 {
            let (rid, ssrc) = tokio::time::timeout(Duration::from_secs(10), tracks.recv())
                .await
                .expect("a track per layer in time")
                .expect("answerer alive");
            rids.insert(rid, ssrc);
        }
        assert_eq!(
            rids.keys().map(String::as_str).collect::<Vec<_>>(),
            ["h", "l"]
        );
        assert_ne!(rids["h"], rids["l"], "one SSRC per layer");
        // A PLI for the small layer's SSRC is read from the small encoding's RTCP.
        let pli = rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: rids["l"],
        };
        answerer
            .write_rtcp(&[Box::new(pli)])
            .await
            .expect("PLI sent");
        let got_pli = async {
            loop {
                let (pkts, _) = sender
                    .read_rtcp_simulcast(SMALL_RID)
                    .await
                    .expect("small encoding's RTCP");
                if pkts.iter().any(|p| {
                    p.as_any()
                        .downcast_ref::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
                        .is_some_and(|p| p.media_ssrc == rids["l"])
                }) {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), got_pli)
            .await
            .expect("the PLI reached the small encoding");
        writer.abort();
        let _ = offerer.close().await;
        let _ = answerer.close().await;
    }
}
