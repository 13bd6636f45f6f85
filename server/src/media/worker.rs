//! One media worker: a thread with a UDP socket, a current-thread tokio runtime and the str0m
//! peers placed on it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rtcroom_protocol::signal::{MediaKind, VideoCodec};
use rtcroom_protocol::{ErrorCode, RtcError};
use str0m::change::SdpOffer;
use str0m::crypto::dtls::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{KeyframeRequestKind, Mid, Pt};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::{mpsc, oneshot};

use super::rewrite::{KeyframeLimiter, SeqRewriter};
use super::sdp::{MediaSection, VideoFormat, answer_pts, stream_msid, unify_msid};
use super::{MediaStats, PeerId, PublisherInfo, SlotKey};

/// Longest wait between loop turns when no peer needs anything sooner.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Datagrams or commands handled per loop turn before timers are looked at.
const BATCH: usize = 64;
/// Largest UDP datagram read.
const MAX_DATAGRAM: usize = 2000;
/// How many packets a subscriber's send buffer keeps for NACK answers (video).
const SEND_BUFFER_VIDEO: usize = 300;

/// Commands to a worker.
pub(super) enum Cmd {
    AddPublisher {
        id: PeerId,
        slot: SlotKey,
        offer: SdpOffer,
        /// The one video format to answer with (none: audio only).
        video: Option<VideoFormat>,
        reply: oneshot::Sender<Result<String, RtcError>>,
    },
    AddSubscriber {
        id: PeerId,
        slot: SlotKey,
        audio: bool,
        video: bool,
        offer: SdpOffer,
        /// The offer's audio/video m-lines.
        lines: Vec<MediaSection>,
        /// The stream's video format (none: no video published with media).
        codec: Option<VideoFormat>,
        reply: oneshot::Sender<Result<String, RtcError>>,
    },
    Remove {
        id: PeerId,
    },
    /// `worker` gained (+1) or lost (-1) a subscriber of `slot`.
    Interest {
        slot: SlotKey,
        worker: usize,
        delta: i32,
    },
    /// A packet from a publisher on another worker.
    Forward {
        slot: SlotKey,
        packet: Arc<FwdPacket>,
    },
    KeyframeRequest {
        slot: SlotKey,
        force: bool,
    },
    Mute {
        slot: SlotKey,
        kind: MediaKind,
        muted: bool,
    },
    Shutdown,
}

/// A packet on its way from a publisher to subscribers.
pub(super) struct FwdPacket {
    kind: MediaKind,
    /// The video codec (`None` for audio).
    codec: Option<VideoCodec>,
    /// Changes when the publisher peer or its SSRC changes.
    source: u64,
    seq: u64,
    ts: u32,
    marker: bool,
    clock_rate: u32,
    arrival: Instant,
    payload: Arc<[u8]>,
}

struct OutTrack {
    kind: MediaKind,
    /// The video codec negotiated with the subscriber (`None` for audio).
    codec: Option<VideoCodec>,
    mid: Mid,
    /// The payload type the subscriber negotiated for it (from the answer it got).
    pt: Pt,
    rewriter: SeqRewriter,
}

enum PeerRole {
    Publisher {
        slot: SlotKey,
        /// Incoming SSRC → kind (cached from the stream's mid).
        kinds: HashMap<Ssrc, MediaKind>,
    },
    Subscriber {
        slot: SlotKey,
        audio: bool,
        video: bool,
        tracks: Vec<OutTrack>,
    },
}

struct Peer {
    rtc: Rtc,
    role: PeerRole,
    created: Instant,
    connected: bool,
    /// Our ICE password, to authenticate the first connectivity check (see [`super::stun`]).
    ice_password: String,
    /// A check has been taken as the nomination.
    nominated: bool,
    next_timeout: Instant,
    dead: bool,
}

pub(super) struct Worker {
    idx: usize,
    socket: std::net::UdpSocket,
    local: SocketAddr,
    announced: SocketAddr,
    workers: Vec<mpsc::UnboundedSender<Cmd>>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    cert: DtlsCert,
    stats: Arc<MediaStats>,
    publishers: Arc<RwLock<HashMap<SlotKey, PublisherInfo>>>,
    peer_stats: super::PeerStatsTable,
    connect_timeout: Duration,
    peers: HashMap<PeerId, Peer>,
    by_addr: HashMap<SocketAddr, PeerId>,
    /// Local publisher peer per slot.
    publisher_of: HashMap<SlotKey, PeerId>,
    /// Local subscriber peers per slot.
    subscribers_of: HashMap<SlotKey, Vec<PeerId>>,
    /// Subscriber counts per slot per worker (all workers).
    interest: HashMap<SlotKey, Vec<i32>>,
    limiters: HashMap<SlotKey, KeyframeLimiter>,
    muted: HashSet<(SlotKey, MediaKindKey)>,
    /// No peer needs a timeout before this (kept as a lower bound, so the per-datagram path
    /// never scans all peers).
    earliest: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum MediaKindKey {
    Audio,
    Video,
}

impl From<MediaKind> for MediaKindKey {
    fn from(k: MediaKind) -> Self {
        match k {
            MediaKind::Audio => MediaKindKey::Audio,
            MediaKind::Video => MediaKindKey::Video,
        }
    }
}

fn kind_of(k: str0m::media::MediaKind) -> MediaKind {
    match k {
        str0m::media::MediaKind::Audio => MediaKind::Audio,
        str0m::media::MediaKind::Video => MediaKind::Video,
    }
}

/// Which video codecs a new peer speaks.
enum VideoCodecs {
    /// None (audio only, or a subscription to a stream without media video).
    None,
    /// A publisher: exactly the format chosen from its offer.
    Publisher(VideoFormat),
    /// A subscriber: the stream's format (as its publisher sends it).
    Subscriber(VideoFormat),
}

/// Events a drain produced that need the other peers (so they are handled after the drain).
enum Routed {
    Packet(SlotKey, Arc<FwdPacket>),
    /// A subscriber wants a keyframe; `true` bypasses the rate limit.
    Keyframe(SlotKey, bool),
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        idx: usize,
        socket: std::net::UdpSocket,
        announced: SocketAddr,
        workers: Vec<mpsc::UnboundedSender<Cmd>>,
        rx: mpsc::UnboundedReceiver<Cmd>,
        cert: DtlsCert,
        stats: Arc<MediaStats>,
        publishers: Arc<RwLock<HashMap<SlotKey, PublisherInfo>>>,
        peer_stats: super::PeerStatsTable,
        connect_timeout: Duration,
    ) -> Worker {
        // The socket is bound, so it has a local address.
        let local = socket.local_addr().unwrap_or(announced);
        Worker {
            idx,
            socket,
            local,
            announced,
            workers,
            rx,
            cert,
            stats,
            publishers,
            peer_stats,
            connect_timeout,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            publisher_of: HashMap::new(),
            subscribers_of: HashMap::new(),
            interest: HashMap::new(),
            limiters: HashMap::new(),
            muted: HashSet::new(),
            earliest: Instant::now(),
        }
    }

    /// The worker thread's body.
    pub(super) fn run(self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "media worker cannot start its runtime");
                return;
            }
        };
        rt.block_on(self.run_async());
    }

    async fn run_async(mut self) {
        let socket = match self
            .socket
            .try_clone()
            .and_then(tokio::net::UdpSocket::from_std)
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "media worker socket");
                return;
            }
        };
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let now = Instant::now();
            let wake = self.earliest.min(now + IDLE_WAIT);
            tokio::select! {
                biased;
                cmd = self.rx.recv() => match cmd {
                    Some(Cmd::Shutdown) | None => break,
                    Some(cmd) => {
                        self.handle_cmd(cmd);
                        // Take what else is queued without going round the loop.
                        for _ in 0..BATCH {
                            match self.rx.try_recv() {
                                Ok(Cmd::Shutdown) => return self.close_all(),
                                Ok(cmd) => self.handle_cmd(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                },
                res = socket.recv_from(&mut buf) => {
                    if let Ok((n, source)) = res {
                        self.handle_datagram(&buf[..n], source);
                    }
                    // Drain what the socket already holds before anything else.
                    for _ in 0..BATCH {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, source)) => self.handle_datagram(&buf[..n], source),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
            let now = Instant::now();
            if now >= self.earliest {
                self.handle_timeouts(now);
            }
        }
        self.close_all();
    }

    fn close_all(&mut self) {
        for (_, mut p) in self.peers.drain() {
            p.rtc.disconnect();
        }
    }

    fn send_to(&self, contents: &[u8], dest: SocketAddr) {
        // Non-blocking: a full socket buffer drops the datagram (WebRTC recovers via NACK/PLI).
        if self.socket.send_to(contents, dest).is_err() {
            self.stats.send_drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drain one peer's output; returns events that involve other peers.
    fn drain(&mut self, id: PeerId, routed: &mut Vec<Routed>) {
        // Datagrams go out as they come (no copy); events are rare and handled after.
        let mut events = Vec::new();
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        loop {
            match peer.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    peer.next_timeout = t;
                    self.earliest = self.earliest.min(t);
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    // Non-blocking: a full socket buffer drops the datagram (WebRTC recovers
                    // via NACK/PLI).
                    if self.socket.send_to(&t.contents, t.destination).is_err() {
                        self.stats.send_drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Output::Event(e)) => events.push(e),
                Err(e) => {
                    tracing::debug!(peer = id, error = %e, "peer failed");
                    peer.dead = true;
                    break;
                }
            }
        }
        for e in events {
            self.handle_event(id, e, routed);
        }
    }

    fn handle_event(&mut self, id: PeerId, e: Event, routed: &mut Vec<Routed>) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match e {
            Event::Connected => {
                peer.connected = true;
                // A new subscriber gets a keyframe at once (not rate-limited), asked for when
                // it can receive it so its first frame does not wait a whole GOP.
                if let PeerRole::Subscriber { slot, .. } = &peer.role {
                    routed.push(Routed::Keyframe(slot.clone(), true));
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => peer.dead = true,
            Event::Closed => peer.dead = true,
            Event::RtpPacket(pkt) => {
                let PeerRole::Publisher { slot, kinds } = &mut peer.role else {
                    return;
                };
                let ssrc = pkt.header.ssrc;
                let kind = match kinds.get(&ssrc) {
                    Some(k) => *k,
                    None => {
                        let mut api = peer.rtc.direct_api();
                        let Some(mid) = api.stream_rx(&ssrc).map(|s| s.mid()) else {
                            return;
                        };
                        let Some(kind) = peer.rtc.media(mid).map(|m| kind_of(m.kind())) else {
                            return;
                        };
                        kinds.insert(ssrc, kind);
                        kind
                    }
                };
                let pt = pkt.header.payload_type;
                let Some(spec) = peer
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .find(|p| p.pt() == pt)
                    .map(|p| p.spec())
                else {
                    return;
                };
                let codec = match spec.codec {
                    Codec::H264 => Some(VideoCodec::H264),
                    Codec::Vp8 => Some(VideoCodec::Vp8),
                    _ => None,
                };
                self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes_in
                    .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
                let packet = Arc::new(FwdPacket {
                    kind,
                    codec,
                    source: id ^ (u64::from(*ssrc) << 16),
                    seq: *pkt.seq_no,
                    ts: pkt.header.timestamp,
                    marker: pkt.header.marker,
                    clock_rate: spec.clock_rate.get(),
                    arrival: pkt.timestamp,
                    payload: pkt.payload,
                });
                routed.push(Routed::Packet(slot.clone(), packet));
            }
            Event::MediaIngressStats(st) => {
                self.record_stats(id, st.mid, |m| {
                    m.bytes = st.bytes;
                    m.packets = st.packets;
                    m.loss = st.loss;
                    m.jitter = Some(st.jitter);
                    m.rtt = st.rtt;
                    m.nacks = st.nacks;
                    m.plis = st.plis;
                });
            }
            Event::MediaEgressStats(st) => {
                self.record_stats(id, st.mid, |m| {
                    m.bytes = st.bytes;
                    m.packets = st.packets;
                    m.loss = st.loss;
                    m.jitter = st.remote.as_ref().map(|r| r.jitter);
                    m.rtt = st.rtt;
                    m.nacks = st.nacks;
                    m.plis = st.plis;
                });
            }
            Event::KeyframeRequest(_) => {
                if let PeerRole::Subscriber { slot, .. } = &peer.role {
                    routed.push(Routed::Keyframe(slot.clone(), false));
                }
            }
            _ => {}
        }
    }

    fn record_stats(&self, id: PeerId, mid: Mid, f: impl FnOnce(&mut super::MidStats)) {
        if let Ok(mut table) = self.peer_stats.write() {
            f(table
                .entry(id)
                .or_default()
                .entry(mid.to_string())
                .or_default());
        }
    }

    fn route(&mut self, routed: Vec<Routed>) {
        for r in routed {
            match r {
                Routed::Packet(slot, packet) => {
                    if let Some(counts) = self.interest.get(&slot) {
                        for (w, n) in counts.iter().enumerate() {
                            if *n > 0
                                && w != self.idx
                                && let Some(tx) = self.workers.get(w)
                            {
                                let _ = tx.send(Cmd::Forward {
                                    slot: slot.clone(),
                                    packet: packet.clone(),
                                });
                            }
                        }
                    }
                    self.deliver(&slot, &packet);
                }
                Routed::Keyframe(slot, force) => {
                    let publisher = self
                        .publishers
                        .read()
                        .ok()
                        .and_then(|p| p.get(&slot).map(|i| i.peer));
                    if let Some(p) = publisher {
                        let w = (p & 0xff) as usize;
                        if w == self.idx {
                            self.keyframe_request(&slot, force);
                        } else if let Some(tx) = self.workers.get(w) {
                            let _ = tx.send(Cmd::KeyframeRequest { slot, force });
                        }
                    }
                }
            }
        }
    }

    /// Write a packet to every local subscriber of `slot`.
    fn deliver(&mut self, slot: &SlotKey, packet: &FwdPacket) {
        if self.muted.contains(&(slot.clone(), packet.kind.into())) {
            return;
        }
        let Some(subs) = self.subscribers_of.get_mut(slot) else {
            return;
        };
        // Borrow the list out for the loop (drain needs `&mut self`); put it back after.
        let subs = std::mem::take(subs);
        let mut routed = Vec::new();
        for &id in &subs {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if !peer.connected {
                continue;
            }
            let PeerRole::Subscriber { tracks, .. } = &mut peer.role else {
                continue;
            };
            // A track carries the codec negotiated with its subscriber only: after a publisher
            // re-publishes with another codec, the subscriber is told (stream-updated) and
            // subscribes again; until then it gets nothing it could not decode.
            let Some(track) = tracks
                .iter_mut()
                .find(|t| t.kind == packet.kind && t.codec == packet.codec)
            else {
                continue;
            };
            let pt = track.pt;
            let out = track.rewriter.map(
                packet.source,
                packet.seq,
                packet.ts,
                packet.arrival,
                packet.clock_rate,
            );
            let mid = track.mid;
            let nackable = packet.kind == MediaKind::Video;
            let mut api = peer.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                continue;
            };
            tx.write_rtp(
                RtpWrite::new(
                    pt,
                    out.seq.into(),
                    out.ts,
                    packet.arrival,
                    packet.payload.clone(),
                )
                .marker(packet.marker)
                .nackable(nackable),
            );
            self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_out
                .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
            // Single-mutation invariant: drain after each write (this sends the packet).
            self.drain(id, &mut routed);
        }
        if let Some(v) = self.subscribers_of.get_mut(slot) {
            *v = subs;
        }
        self.route(routed);
    }

    fn keyframe_request(&mut self, slot: &SlotKey, force: bool) {
        let now = Instant::now();
        let allowed = self
            .limiters
            .entry(slot.clone())
            .or_default()
            .allow(now, force);
        if !allowed {
            return;
        }
        let Some(id) = self.publisher_of.get(slot).copied() else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let video_mids: Vec<Mid> = {
            let PeerRole::Publisher { .. } = &peer.role else {
                return;
            };
            let mut api = peer.rtc.direct_api();
            let ssrcs: Vec<Ssrc> = if let PeerRole::Publisher { kinds, .. } = &peer.role {
                kinds
                    .iter()
                    .filter(|(_, k)| **k == MediaKind::Video)
                    .map(|(s, _)| *s)
                    .collect()
            } else {
                Vec::new()
            };
            ssrcs
                .iter()
                .filter_map(|s| api.stream_rx(s).map(|r| r.mid()))
                .collect()
        };
        let mut requested = false;
        for mid in video_mids {
            if let Some(rx) = peer.rtc.direct_api().stream_rx_by_mid(mid, None) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                requested = true;
            }
        }
        if requested {
            self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
            let mut routed = Vec::new();
            self.drain(id, &mut routed);
            self.route(routed);
        } else if force {
            // No video seen yet: let the next request through as soon as video exists.
            self.limiters.remove(slot);
        }
    }

    /// A peer that speaks Opus and `video` only, so its answer carries exactly that codec.
    fn new_rtc(&self, video: &VideoCodecs) -> Rtc {
        let mut config = Rtc::builder()
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .set_dtls_cert(self.cert.clone())
            .clear_codecs()
            .enable_opus(true, false)
            .set_send_buffer_video(SEND_BUFFER_VIDEO)
            .set_stats_interval(Some(super::STATS_INTERVAL));
        let codecs = config.codec_config();
        match video {
            VideoCodecs::None => {}
            VideoCodecs::Publisher(f) => {
                let (pt, rtx) = (Pt::from(f.pt), f.rtx.map(Pt::from));
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
            VideoCodecs::Subscriber(f) if f.codec == VideoCodec::H264 => {
                // Baseline and constrained baseline carry the same bitstream from WebRTC
                // encoders (constrained baseline is a subset); accept either in the offer,
                // the publisher's own first, so the answer names it where the offer has it.
                let mut profiles = [0x42001f, 0x42e01f];
                if f.profile_level_id.map(|p| p >> 8) == Some(0x42e0) {
                    profiles.reverse();
                }
                codecs.add_h264(127.into(), Some(121.into()), true, profiles[0]);
                codecs.add_h264(108.into(), Some(109.into()), true, profiles[1]);
            }
            VideoCodecs::Subscriber(_) => codecs.enable_vp8(true),
        }
        config.build(Instant::now())
    }

    fn accept(
        &mut self,
        id: PeerId,
        offer: SdpOffer,
        video: &VideoCodecs,
        mut role: PeerRole,
        lines: &[MediaSection],
    ) -> Result<String, RtcError> {
        let mut rtc = self.new_rtc(video);
        let candidate = Candidate::host(self.announced, "udp")
            .map_err(|e| RtcError::new(ErrorCode::Unknown, format!("host candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let mut answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| {
                RtcError::new(
                    ErrorCode::InvalidParameter,
                    format!("SDP offer refused: {e}"),
                )
            })?
            .to_sdp_string();
        // A subscriber's tracks come from its offer's receiving m-lines that str0m accepted,
        // each sent with the payload type its answer names.
        if let PeerRole::Subscriber {
            slot,
            audio,
            video: want_video,
            tracks,
        } = &mut role
        {
            let stream_type = match slot.stream_type {
                rtcroom_protocol::signal::StreamType::Main => "main",
                rtcroom_protocol::signal::StreamType::Auxiliary => "auxiliary",
            };
            answer = unify_msid(&answer, &stream_msid(slot.user.as_str(), stream_type));
            let pts = answer_pts(&answer);
            for m in lines {
                let wanted = match m.kind {
                    MediaKind::Audio => *audio,
                    MediaKind::Video => *want_video,
                };
                let mid = Mid::from(m.mid.as_str());
                let usable = rtc.media(mid).is_some_and(|m| !m.disabled());
                let pt = pts.iter().find(|(x, _)| *x == m.mid).map(|(_, pt)| *pt);
                let codec = match (m.kind, video) {
                    (MediaKind::Video, VideoCodecs::Subscriber(f)) => Some(f.codec),
                    _ => None,
                };
                if let Some(pt) = pt
                    && wanted
                    && m.receives
                    && usable
                    && !tracks.iter().any(|t| t.kind == m.kind)
                {
                    tracks.push(OutTrack {
                        kind: m.kind,
                        codec,
                        mid,
                        pt: pt.into(),
                        rewriter: SeqRewriter::default(),
                    });
                }
            }
        }
        let ice_password = rtc.direct_api().local_ice_credentials().pass;
        let now = Instant::now();
        self.peers.insert(
            id,
            Peer {
                rtc,
                role,
                created: now,
                connected: false,
                ice_password,
                nominated: false,
                next_timeout: now,
                dead: false,
            },
        );
        self.stats.peers.fetch_add(1, Ordering::Relaxed);
        let mut routed = Vec::new();
        self.drain(id, &mut routed);
        self.route(routed);
        Ok(answer)
    }

    fn handle_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::AddPublisher {
                id,
                slot,
                offer,
                video,
                reply,
            } => {
                let video = video.map_or(VideoCodecs::None, VideoCodecs::Publisher);
                let res = self.accept(
                    id,
                    offer,
                    &video,
                    PeerRole::Publisher {
                        slot: slot.clone(),
                        kinds: HashMap::new(),
                    },
                    &[],
                );
                if res.is_ok() {
                    self.publisher_of.insert(slot, id);
                }
                let _ = reply.send(res);
            }
            Cmd::AddSubscriber {
                id,
                slot,
                audio,
                video,
                offer,
                lines,
                codec,
                reply,
            } => {
                let codecs = codec.map_or(VideoCodecs::None, VideoCodecs::Subscriber);
                let res = self.accept(
                    id,
                    offer,
                    &codecs,
                    PeerRole::Subscriber {
                        slot: slot.clone(),
                        audio,
                        video,
                        tracks: Vec::new(),
                    },
                    &lines,
                );
                let res = res.and_then(|answer| {
                    let has_tracks = matches!(
                        self.peers.get(&id).map(|p| &p.role),
                        Some(PeerRole::Subscriber { tracks, .. }) if !tracks.is_empty()
                    );
                    if has_tracks {
                        Ok(answer)
                    } else {
                        self.remove_peer(id);
                        Err(RtcError::new(
                            ErrorCode::InvalidParameter,
                            "the offer has no receivable audio or video m-line with a supported codec (Opus, H.264, VP8)",
                        ))
                    }
                });
                if res.is_ok() {
                    self.subscribers_of
                        .entry(slot.clone())
                        .or_default()
                        .push(id);
                    for tx in &self.workers {
                        let _ = tx.send(Cmd::Interest {
                            slot: slot.clone(),
                            worker: self.idx,
                            delta: 1,
                        });
                    }
                }
                let _ = reply.send(res);
            }
            Cmd::Remove { id } => self.remove_peer(id),
            Cmd::Interest {
                slot,
                worker,
                delta,
            } => {
                let n = self.workers.len();
                let counts = self
                    .interest
                    .entry(slot.clone())
                    .or_insert_with(|| vec![0; n]);
                if let Some(c) = counts.get_mut(worker) {
                    *c = (*c + delta).max(0);
                }
                if counts.iter().all(|c| *c == 0) {
                    self.interest.remove(&slot);
                }
            }
            Cmd::Forward { slot, packet } => self.deliver(&slot, &packet),
            Cmd::KeyframeRequest { slot, force } => self.keyframe_request(&slot, force),
            Cmd::Mute { slot, kind, muted } => {
                if muted {
                    self.muted.insert((slot, kind.into()));
                } else {
                    self.muted.remove(&(slot, kind.into()));
                }
            }
            Cmd::Shutdown => {}
        }
    }

    fn remove_peer(&mut self, id: PeerId) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        self.stats.peers.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut table) = self.peer_stats.write() {
            table.remove(&id);
        }
        peer.rtc.disconnect();
        // Flush the goodbye (RTCP BYE / DTLS close) best effort.
        while let Ok(out) = peer.rtc.poll_output() {
            match out {
                Output::Transmit(t) => self.send_to(&t.contents, t.destination),
                Output::Timeout(_) => break,
                Output::Event(_) => {}
            }
        }
        self.by_addr.retain(|_, p| *p != id);
        match peer.role {
            PeerRole::Publisher { slot, .. } => {
                if self.publisher_of.get(&slot) == Some(&id) {
                    self.publisher_of.remove(&slot);
                }
            }
            PeerRole::Subscriber { slot, .. } => {
                if let Some(v) = self.subscribers_of.get_mut(&slot) {
                    v.retain(|p| *p != id);
                    if v.is_empty() {
                        self.subscribers_of.remove(&slot);
                    }
                }
                for tx in &self.workers {
                    let _ = tx.send(Cmd::Interest {
                        slot: slot.clone(),
                        worker: self.idx,
                        delta: -1,
                    });
                }
            }
        }
    }

    fn handle_datagram(&mut self, data: &[u8], source: SocketAddr) {
        let now = Instant::now();
        let destination = self.local;
        let receive = |contents| {
            Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination,
                    contents,
                },
            )
        };
        let Ok(contents) = data.try_into() else {
            self.stats.dropped_datagrams.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let input = receive(contents);
        let id = match self.by_addr.get(&source) {
            Some(id) => Some(*id),
            None => {
                let found = self
                    .peers
                    .iter()
                    .find(|(_, p)| !p.dead && p.rtc.accepts(&input))
                    .map(|(id, _)| *id);
                if let Some(id) = found {
                    self.by_addr.insert(source, id);
                }
                found
            }
        };
        let Some(id) = id else {
            self.stats.dropped_datagrams.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        // A new peer's first authenticated check is its nomination (see `super::stun`), so
        // DTLS answers go out at once instead of waiting for the client's own nomination.
        let nominated = (!peer.nominated && !peer.connected && super::stun::is_stun(data))
            .then(|| super::stun::with_use_candidate(data, &peer.ice_password))
            .flatten();
        let result = match nominated.as_deref().map(DatagramRecv::try_from) {
            Some(Ok(contents)) => {
                peer.nominated = true;
                peer.rtc.handle_input(receive(contents))
            }
            _ => peer.rtc.handle_input(input),
        };
        if let Err(e) = result {
            tracing::debug!(peer = id, error = %e, "bad input from peer");
            peer.dead = true;
        }
        let mut routed = Vec::new();
        self.drain(id, &mut routed);
        self.route(routed);
    }

    fn handle_timeouts(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next_timeout <= now || p.dead)
            .map(|(id, _)| *id)
            .collect();
        // Recomputed below from every peer's next timeout (drain lowers it as it goes).
        self.earliest = self
            .peers
            .values()
            .filter(|p| p.next_timeout > now)
            .map(|p| p.next_timeout)
            .min()
            .unwrap_or(now + IDLE_WAIT);
        let mut routed = Vec::new();
        let mut remove = Vec::new();
        for id in due {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if !peer.dead
                && !peer.connected
                && now.saturating_duration_since(peer.created) > self.connect_timeout
            {
                self.stats.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                peer.dead = true;
            }
            if peer.dead || !peer.rtc.is_alive() {
                remove.push(id);
                continue;
            }
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(peer = id, error = %e, "peer timeout handling failed");
                peer.dead = true;
            }
            self.drain(id, &mut routed);
        }
        self.route(routed);
        for id in remove {
            self.remove_peer(id);
        }
    }
}
