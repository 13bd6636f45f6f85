//! One media worker: the I/O driver of a [`Router`]. A thread with a UDP socket, a
//! current-thread tokio runtime and the str0m peers placed on it.
//!
//! The worker owns what touches the outside: the str0m `Rtc`s, the socket, the address →
//! peer map, timers and the channels to the other workers. It turns str0m events into router
//! inputs and router outputs into `write_rtp`, socket sends and channel sends; the forwarding
//! decisions are the router's.
//!
//! Pipes ([`super::pipe`]) are no str0m peers: a pipe out (to another node) is a router
//! subscriber whose packets go on its channel, a pipe in (from another node) a router
//! publisher whose packets come on the data queue and whose keyframe requests go on its
//! channel. They take a [`LocalPeer`] index from the same space as the peers (their entry in
//! `peers` stays `None`) and are kept in `pipes`.
//!
//! A panic while handling anything (a router or str0m bug) is caught per loop turn: the
//! worker drops its peers (each gets [`MediaEvent::PeerClosed`] with
//! [`PeerCloseReason::WorkerFault`]), starts again with an empty router on the same socket,
//! and tells the other workers to forget and re-send their interest.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rtcroom_protocol::signal::{MediaKind, VideoCodec, VideoStreamType};
use rtcroom_protocol::{ErrorCode, RtcError};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::crypto::dtls::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{KeyframeRequestKind, Mid, Pt};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::pipe::PipePacket;
use super::router::{
    LocalPeer, Output as Route, RoutedPacket, Router, RtpIn, StreamId, Subscription, TrackSpec,
};
use super::sdp::{MediaSection, VideoFormat, answer_pts, unify_msid};
use super::simulcast::Layer;
use super::{
    MediaEvent, MediaStats, PeerCloseReason, PeerId, PublisherInfo, SlotRef, Slots, worker_of,
};

/// Longest wait between loop turns when no peer needs anything sooner.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Datagrams, commands or forwarded packets handled per source per loop turn.
const BATCH: usize = 64;
/// Largest UDP datagram read.
const MAX_DATAGRAM: usize = 2000;
/// How many packets a subscriber's send buffer keeps for NACK answers (video).
const SEND_BUFFER_VIDEO: usize = 300;
/// How old a packet may be and still be resent.
const RTX_MAX_AGE: Duration = Duration::from_secs(3);
/// Resends stop while they are more than this share of what a subscriber's video stream
/// sent in the last second (`rtx / (rtx + tx)`): a guard against resend storms, not a loss
/// budget. str0m's default, 0.15, is below what 10 % loss needs with its bursts (a keyframe's
/// losses, resends lost again): `bench --loss 10` then lost 0.5–8 % of the video for good.
/// 0.3 lets resends reach ~43 % of the media.
const RTX_RATIO_CAP: f32 = 0.3;

/// Control commands to a worker (from the media plane and from the other workers).
pub(super) enum Cmd {
    AddPublisher {
        id: PeerId,
        slot: SlotRef,
        offer: SdpOffer,
        /// The one video format to answer with (none: audio only).
        video: Option<VideoFormat>,
        /// Simulcast: the rids of its video layers, smallest first (empty: one layer).
        rids: Vec<String>,
        /// The answer, and the publisher peer this one replaced.
        reply: oneshot::Sender<Result<(String, Option<PeerId>), RtcError>>,
    },
    AddSubscriber {
        id: PeerId,
        slot: SlotRef,
        audio: bool,
        video: bool,
        offer: SdpOffer,
        /// The offer's audio/video m-lines.
        lines: Vec<MediaSection>,
        /// The stream's video format (none: no video published with media).
        codec: Option<VideoFormat>,
        /// The one `a=msid` stream id of the answer.
        msid: String,
        /// Its video layers.
        subscription: Subscription,
        reply: oneshot::Sender<Result<String, RtcError>>,
    },
    /// A subscriber wants the big or the small layer.
    SetVideoType {
        id: PeerId,
        want: VideoStreamType,
    },
    /// Restart ICE on a peer: accept a new offer on its `Rtc`.
    RestartIce {
        id: PeerId,
        offer: SdpOffer,
        /// A subscriber's one `a=msid` stream id.
        msid: Option<String>,
        reply: oneshot::Sender<Result<String, RtcError>>,
    },
    /// A pipe out of a slot (to another node).
    AddPipeOut {
        id: PeerId,
        slot: SlotRef,
        tx: mpsc::Sender<PipePacket>,
        reply: oneshot::Sender<Result<(), RtcError>>,
    },
    /// A pipe into a slot (from another node): the slot's publisher.
    AddPipeIn {
        id: PeerId,
        slot: SlotRef,
        keyframes: mpsc::Sender<Option<Layer>>,
        /// Its index, and the publisher peer it replaced.
        reply: oneshot::Sender<Result<(LocalPeer, Option<PeerId>), RtcError>>,
    },
    /// Close a peer on request (no [`MediaEvent`]).
    Remove {
        id: PeerId,
    },
    /// `worker` has (or no longer has) subscribers of `stream`.
    Interest {
        stream: StreamId,
        worker: usize,
        wants: bool,
        layers: u32,
    },
    /// `worker` restarted empty.
    WorkerReset {
        worker: usize,
    },
    Mute {
        stream: StreamId,
        kind: MediaKind,
        muted: bool,
    },
    /// Panic inside the worker (tests of the supervision).
    InjectFault,
    Shutdown,
}

/// Media traffic between workers (and keyframe requests).
pub(super) enum Data {
    /// A packet from a publisher on another worker.
    Forward(Arc<RoutedPacket>),
    /// Ask the stream's publisher (on this worker) for a keyframe.
    Keyframe {
        stream: StreamId,
        force: bool,
        layer: Option<Layer>,
    },
    /// A packet of pipe in `peer` (dropped unless that index is still pipe in `id`).
    PipeRtp {
        peer: LocalPeer,
        id: PeerId,
        packet: PipePacket,
    },
}

/// A pipe's end on this worker.
enum PipeEnd {
    /// To another node: the slot's packets go on `tx`.
    Out {
        id: PeerId,
        tx: mpsc::Sender<PipePacket>,
        /// Keeps the slot interned.
        _slot: SlotRef,
    },
    /// From another node: the slot's publisher; its keyframe requests go on `keyframes`.
    In {
        id: PeerId,
        keyframes: mpsc::Sender<Option<Layer>>,
        slot: SlotRef,
    },
}

impl PipeEnd {
    fn id(&self) -> PeerId {
        match self {
            PipeEnd::Out { id, .. } | PipeEnd::In { id, .. } => *id,
        }
    }
}

/// What one worker is given at start.
pub(super) struct WorkerSetup {
    pub idx: usize,
    pub socket: std::net::UdpSocket,
    pub announced: SocketAddr,
    pub ctl: Vec<mpsc::Sender<Cmd>>,
    pub data: Vec<mpsc::Sender<Data>>,
    pub ctl_rx: mpsc::Receiver<Cmd>,
    pub data_rx: mpsc::Receiver<Data>,
    pub events: mpsc::Sender<MediaEvent>,
    pub cert: DtlsCert,
    pub stats: Arc<MediaStats>,
    pub slots: Slots,
    pub peer_stats: super::PeerStatsTable,
    pub connect_timeout: Duration,
    pub stop: Arc<AtomicBool>,
}

/// Incoming SSRC of a publisher: what its packets are (cached from its m-line and payload
/// type).
#[derive(Clone, Copy)]
struct SsrcInfo {
    kind: MediaKind,
    pt: Pt,
    codec: Option<VideoCodec>,
    clock_rate: u32,
    /// Its simulcast layer (0 without simulcast).
    layer: Layer,
}

struct Peer {
    id: PeerId,
    /// The stream it publishes or receives (its reference keeps the id interned).
    slot: SlotRef,
    rtc: Rtc,
    publisher: bool,
    /// A publisher's incoming SSRCs.
    ssrcs: HashMap<Ssrc, SsrcInfo>,
    /// A subscriber's tracks' mids, in the order given to the router.
    mids: Vec<Mid>,
    /// A simulcast publisher's layers' rids, smallest first.
    rids: Vec<String>,
    created: Instant,
    connected: bool,
    /// Our ICE password, to authenticate the first connectivity check (see [`super::stun`]).
    ice_password: String,
    /// A check has been taken as the nomination.
    nominated: bool,
    next_timeout: Instant,
    /// The instant of its current entry in the worker's timer heap.
    scheduled: Option<Instant>,
    /// Our ICE ufrag (its key in `by_ufrag`).
    ice_ufrag: String,
    /// Why it died on its own (it is removed at the next timer turn).
    dead: Option<PeerCloseReason>,
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

/// What woke the loop.
enum Woke {
    Cmd(Option<Cmd>),
    Data(Option<Data>),
    Datagram(usize, SocketAddr),
    Nothing,
}

/// How a loop turn ended.
enum Turn {
    /// Something was handled: look again before waiting.
    Busy,
    Idle,
    Shutdown,
}

pub(super) struct Worker {
    idx: usize,
    socket: std::net::UdpSocket,
    announced: SocketAddr,
    ctl: Vec<mpsc::Sender<Cmd>>,
    data: Vec<mpsc::Sender<Data>>,
    ctl_rx: mpsc::Receiver<Cmd>,
    data_rx: mpsc::Receiver<Data>,
    events: mpsc::Sender<MediaEvent>,
    cert: DtlsCert,
    stats: Arc<MediaStats>,
    slots: Slots,
    peer_stats: super::PeerStatsTable,
    connect_timeout: Duration,
    stop: Arc<AtomicBool>,
    router: Router,
    /// Indexed by [`LocalPeer`]; freed indexes are reused. A pipe's entry is `None`.
    peers: Vec<Option<Peer>>,
    free: Vec<u32>,
    /// The pipes, by their index.
    pipes: HashMap<LocalPeer, PipeEnd>,
    ids: HashMap<PeerId, LocalPeer>,
    by_addr: HashMap<SocketAddr, LocalPeer>,
    /// Our ICE ufrag of each peer: a check from an address not seen yet names its peer here.
    by_ufrag: HashMap<String, LocalPeer>,
    /// Reused by `drain`.
    event_buf: Vec<Event>,
    /// No peer needs a timeout before this (kept as a lower bound, so the per-datagram path
    /// never scans all peers).
    earliest: Instant,
    /// When peers want their timeouts handled: (instant, peer index), earliest first. At most
    /// one entry per peer is current (`Peer::scheduled`); others are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Datagrams to send, sent together at the end of the loop turn (`sendmmsg`).
    out: Vec<(Vec<u8>, SocketAddr)>,
}

/// Datagrams sent per `sendmmsg` call (and queued at most before one).
const SEND_BATCH: usize = 64;

impl Worker {
    pub(super) fn new(s: WorkerSetup) -> Worker {
        Worker {
            idx: s.idx,
            socket: s.socket,
            announced: s.announced,
            ctl: s.ctl,
            data: s.data,
            ctl_rx: s.ctl_rx,
            data_rx: s.data_rx,
            events: s.events,
            cert: s.cert,
            stats: s.stats,
            slots: s.slots,
            peer_stats: s.peer_stats,
            connect_timeout: s.connect_timeout,
            stop: s.stop,
            router: Router::new(s.idx),
            peers: Vec::new(),
            free: Vec::new(),
            pipes: HashMap::new(),
            ids: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            event_buf: Vec::new(),
            earliest: Instant::now(),
            timers: BinaryHeap::new(),
            out: Vec::with_capacity(SEND_BATCH),
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
        let mut woke = Woke::Nothing;
        loop {
            // Everything but the wait runs under `catch_unwind`: a panic costs this worker's
            // peers, not the media plane.
            let turn = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.turn(
                    std::mem::replace(&mut woke, Woke::Nothing),
                    &socket,
                    &mut buf,
                )
            }));
            match turn {
                Ok(Turn::Shutdown) => break,
                Ok(Turn::Busy) => {
                    // Let the runtime poll its I/O driver and go round: tokio's `try_recv_from`
                    // answers from cached readiness (`Registration::try_io`), which only the
                    // driver sets again once a read has drained the socket.
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(Turn::Idle) => {}
                Err(_) => {
                    self.recover();
                    continue;
                }
            }
            let wake = self.earliest.min(Instant::now() + IDLE_WAIT);
            // No preference: whichever is ready first (at random among ready ones); the next
            // turn then takes a batch of every source in turn.
            woke = tokio::select! {
                cmd = self.ctl_rx.recv() => Woke::Cmd(cmd),
                data = self.data_rx.recv() => Woke::Data(data),
                res = socket.recv_from(&mut buf) => match res {
                    Ok((n, source)) => Woke::Datagram(n, source),
                    Err(_) => Woke::Nothing,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => Woke::Nothing,
            };
        }
        self.close_all();
    }

    /// One loop turn: what woke the loop, then at most [`BATCH`] of each source (commands,
    /// forwarded packets, datagrams) in turn, then due timers.
    fn turn(&mut self, woke: Woke, socket: &tokio::net::UdpSocket, buf: &mut [u8]) -> Turn {
        if self.stop.load(Ordering::Relaxed) {
            return Turn::Shutdown;
        }
        let mut busy = false;
        match woke {
            Woke::Cmd(None | Some(Cmd::Shutdown)) => return Turn::Shutdown,
            Woke::Cmd(Some(cmd)) => self.handle_cmd(cmd),
            Woke::Data(Some(d)) => self.handle_data(d),
            Woke::Datagram(n, source) => {
                if let Some(d) = buf.get(..n) {
                    self.handle_datagram(d, source);
                }
            }
            Woke::Data(None) | Woke::Nothing => {}
        }
        for _ in 0..BATCH {
            match self.ctl_rx.try_recv() {
                Ok(Cmd::Shutdown) => return Turn::Shutdown,
                Ok(cmd) => {
                    busy = true;
                    self.handle_cmd(cmd);
                }
                Err(_) => break,
            }
        }
        for _ in 0..BATCH {
            match self.data_rx.try_recv() {
                Ok(d) => {
                    busy = true;
                    self.handle_data(d);
                }
                Err(_) => break,
            }
        }
        for _ in 0..BATCH {
            match socket.try_recv_from(buf) {
                Ok((n, source)) => {
                    busy = true;
                    if let Some(d) = buf.get(..n) {
                        self.handle_datagram(d, source);
                    }
                }
                Err(_) => break,
            }
        }
        let now = Instant::now();
        if now >= self.earliest {
            self.handle_timeouts(now);
        }
        self.flush_sends();
        if busy { Turn::Busy } else { Turn::Idle }
    }

    /// After a panic: drop every peer (each its `WorkerFault` event), start an empty router,
    /// and have the other workers forget this one's interest and re-send theirs.
    fn recover(&mut self) {
        tracing::error!(
            worker = self.idx,
            "media worker fault: dropping its peers and restarting"
        );
        self.stats.worker_restarts.fetch_add(1, Ordering::Relaxed);
        let peers: Vec<Peer> = self.peers.drain(..).flatten().collect();
        let pipes: Vec<PipeEnd> = self.pipes.drain().map(|(_, p)| p).collect();
        self.free.clear();
        self.ids.clear();
        self.by_addr.clear();
        self.by_ufrag.clear();
        self.timers.clear();
        self.out.clear();
        self.router = Router::new(self.idx);
        self.earliest = Instant::now();
        for peer in peers {
            self.forget(&peer);
            self.emit(peer.id, PeerCloseReason::WorkerFault);
            // Dropping the peer releases its stream reference.
        }
        for pipe in pipes {
            if let PipeEnd::In { id, slot, .. } = &pipe {
                slot.clear_publisher(*id);
            }
            self.emit(pipe.id(), PeerCloseReason::WorkerFault);
            // Dropping it closes its channel and releases its stream reference.
        }
        for (w, tx) in self.ctl.iter().enumerate() {
            if w != self.idx && tx.try_send(Cmd::WorkerReset { worker: self.idx }).is_err() {
                self.stats
                    .worker_queue_drops
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Book-keeping of a peer that goes: counters, statistics, the publisher record.
    fn forget(&self, peer: &Peer) {
        self.stats.peers.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut table) = self.peer_stats.write() {
            table.remove(&peer.id);
        }
        if peer.publisher {
            peer.slot.clear_publisher(peer.id);
        }
    }

    fn emit(&self, peer: PeerId, reason: PeerCloseReason) {
        self.send_event(MediaEvent::PeerClosed { peer, reason });
    }

    fn send_event(&self, event: MediaEvent) {
        if self.events.try_send(event).is_err() {
            self.stats.event_drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn close_all(&mut self) {
        self.pipes.clear();
        for mut p in self.peers.drain(..).flatten() {
            p.rtc.disconnect();
        }
        self.flush_sends();
    }

    /// Queue a datagram; it goes out with the turn's others (or at once if the batch is full).
    fn send_to(&mut self, contents: Vec<u8>, dest: SocketAddr) {
        self.out.push((contents, dest));
        if self.out.len() >= SEND_BATCH {
            self.flush_sends();
        }
    }

    /// Send the queued datagrams, [`SEND_BATCH`] per system call. Non-blocking: a datagram the
    /// socket refuses (send buffer full) is dropped and counted; WebRTC recovers via NACK/PLI.
    fn flush_sends(&mut self) {
        let mut start = 0;
        while start < self.out.len() {
            let end = (start + SEND_BATCH).min(self.out.len());
            let batch = &self.out[start..end];
            let addrs: Vec<SocketAddrAny> = batch.iter().map(|(_, a)| (*a).into()).collect();
            let iovs: Vec<[IoSlice<'_>; 1]> =
                batch.iter().map(|(d, _)| [IoSlice::new(d)]).collect();
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = batch
                .iter()
                .map(|_| SendAncillaryBuffer::default())
                .collect();
            let mut msgs: Vec<MMsgHdr<'_>> = addrs
                .iter()
                .zip(&iovs)
                .zip(controls.iter_mut())
                .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
                .collect();
            let sent = sendmmsg(&self.socket, &mut msgs, SendFlags::DONTWAIT).unwrap_or(0);
            // The kernel stops at the first datagram it refuses: drop that one, go on.
            if sent < batch.len() {
                self.stats.send_drops.fetch_add(1, Ordering::Relaxed);
            }
            start += sent + usize::from(sent < batch.len());
        }
        self.out.clear();
    }

    fn peer_mut(&mut self, lp: LocalPeer) -> Option<&mut Peer> {
        self.peers.get_mut(lp.0 as usize)?.as_mut()
    }

    fn mark_dead(&mut self, lp: LocalPeer, reason: PeerCloseReason) {
        if let Some(p) = self.peer_mut(lp)
            && p.dead.is_none()
        {
            p.dead = Some(reason);
        }
        // Removed at the next timer turn, which is now.
        let now = Instant::now();
        self.timers.push(Reverse((now, lp.0)));
        self.earliest = now;
    }

    /// Drain one peer's output: datagrams go out as they come, events go to the router.
    fn drain(&mut self, lp: LocalPeer) {
        // Every received RTP packet is an event: collect them in a kept buffer, not a new
        // `Vec` per datagram (taken out so handling may use `self`).
        let mut events = std::mem::take(&mut self.event_buf);
        let Some(peer) = self.peers.get_mut(lp.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let mut failed = false;
        loop {
            match peer.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    peer.next_timeout = t;
                    // One current heap entry per peer: a later timeout keeps the earlier
                    // entry, which re-schedules when it comes due.
                    if peer.scheduled.is_none_or(|at| t < at) {
                        self.timers.push(Reverse((t, lp.0)));
                        peer.scheduled = Some(t);
                    }
                    self.earliest = self.earliest.min(t);
                    break;
                }
                Ok(Output::Transmit(t)) => self.out.push((t.contents.into(), t.destination)),
                Ok(Output::Event(e)) => events.push(e),
                Err(e) => {
                    tracing::debug!(peer = peer.id, error = %e, "peer failed");
                    failed = true;
                    break;
                }
            }
        }
        if self.out.len() >= SEND_BATCH {
            self.flush_sends();
        }
        if failed {
            self.mark_dead(lp, PeerCloseReason::Closed);
        }
        for e in events.drain(..) {
            self.handle_event(lp, e);
        }
        self.event_buf = events;
    }

    fn handle_event(&mut self, lp: LocalPeer, e: Event) {
        let Some(peer) = self.peers.get_mut(lp.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        match e {
            Event::Connected => {
                peer.connected = true;
                self.router.on_connected(lp, Instant::now());
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.mark_dead(lp, PeerCloseReason::IceDisconnected)
            }
            Event::Closed => self.mark_dead(lp, PeerCloseReason::Closed),
            Event::RtpPacket(pkt) => {
                if !peer.publisher {
                    return;
                }
                let ssrc = pkt.header.ssrc;
                let pt = pkt.header.payload_type;
                let info = match peer.ssrcs.get(&ssrc) {
                    Some(i) if i.pt == pt => *i,
                    _ => {
                        let Some(info) = ssrc_info(&mut peer.rtc, ssrc, pt, &peer.rids) else {
                            return;
                        };
                        peer.ssrcs.insert(ssrc, info);
                        info
                    }
                };
                self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes_in
                    .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
                self.router.on_rtp(
                    lp,
                    RtpIn {
                        kind: info.kind,
                        codec: info.codec,
                        ssrc: *ssrc,
                        seq: *pkt.seq_no,
                        ts: pkt.header.timestamp,
                        marker: pkt.header.marker,
                        clock_rate: info.clock_rate,
                        layer: info.layer,
                        layers: u8::try_from(peer.rids.len().max(1)).unwrap_or(u8::MAX),
                        payload: pkt.payload,
                    },
                    pkt.timestamp,
                );
            }
            Event::MediaIngressStats(st) => {
                let id = peer.id;
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
                let id = peer.id;
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
            Event::KeyframeRequest(_) => self.router.on_keyframe_request(lp, Instant::now()),
            Event::EgressBitrateEstimate(BweKind::Twcc {
                estimate,
                can_probe,
            }) => {
                tracing::trace!(peer = peer.id, %estimate, can_probe, "egress estimate");
                self.router
                    .on_estimate(lp, estimate.as_u64(), Instant::now());
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

    /// Carry out everything the router has queued (writing may drain peers, whose events
    /// queue more: this runs until the queue is empty).
    fn pump(&mut self) {
        loop {
            self.pipe_packets();
            let Some(out) = self.router.poll_output() else {
                break;
            };
            match out {
                Route::Write {
                    peer: lp,
                    track,
                    kind,
                    pt,
                    seq,
                    ts,
                    marker,
                    wallclock,
                    payload,
                } => {
                    let Some(peer) = self.peers.get_mut(lp.0 as usize).and_then(Option::as_mut)
                    else {
                        continue;
                    };
                    let Some(mid) = peer.mids.get(track).copied() else {
                        continue;
                    };
                    let mut api = peer.rtc.direct_api();
                    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                        continue;
                    };
                    let len = payload.len() as u64;
                    tx.write_rtp(
                        RtpWrite::new(pt.into(), seq.into(), ts, wallclock, payload)
                            .marker(marker)
                            .nackable(kind == MediaKind::Video),
                    );
                    self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
                    self.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
                    // Single-mutation invariant: drain after each write (this sends it).
                    self.drain(lp);
                }
                Route::Forward { worker, packet } => {
                    let sent = self
                        .data
                        .get(worker)
                        .is_some_and(|tx| tx.try_send(Data::Forward(packet)).is_ok());
                    if !sent {
                        self.stats
                            .worker_queue_drops
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Route::RequestKeyframe { publisher, layer } => {
                    self.request_keyframe(publisher, layer)
                }
                Route::RelayKeyframe {
                    stream,
                    force,
                    layer,
                } => {
                    let Some(publisher) = self.slots.publisher(stream) else {
                        continue;
                    };
                    let w = worker_of(publisher.peer);
                    if w == self.idx {
                        self.router
                            .request_keyframe(stream, force, layer, Instant::now());
                        continue;
                    }
                    let sent = self.data.get(w).is_some_and(|tx| {
                        tx.try_send(Data::Keyframe {
                            stream,
                            force,
                            layer,
                        })
                        .is_ok()
                    });
                    if !sent {
                        self.stats
                            .worker_queue_drops
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Route::LayerChanged {
                    peer,
                    layer,
                    layers,
                    bandwidth,
                } => {
                    if let Some(p) = self.peers.get(peer.0 as usize).and_then(Option::as_ref) {
                        self.send_event(MediaEvent::LayerChanged {
                            peer: p.id,
                            layer,
                            layers,
                            bandwidth,
                        });
                    }
                }
                Route::ResetEstimate { peer, bps } => {
                    if let Some(p) = self.peers.get_mut(peer.0 as usize).and_then(Option::as_mut) {
                        p.rtc.bwe().reset(Bitrate::from(bps));
                    }
                    self.drain(peer);
                }
                Route::LayersWanted { publisher, layers } => {
                    // A pipe in has no peer here: its origin's publisher hears from the
                    // origin's own subscribers (the pipe out there wants every layer).
                    if let Some(p) = self
                        .peers
                        .get(publisher.0 as usize)
                        .and_then(Option::as_ref)
                    {
                        self.send_event(MediaEvent::LayersWanted { peer: p.id, layers });
                    }
                }
                Route::Interest {
                    stream,
                    wants,
                    layers,
                } => {
                    for (w, tx) in self.ctl.iter().enumerate() {
                        if w != self.idx
                            && tx
                                .try_send(Cmd::Interest {
                                    stream,
                                    worker: self.idx,
                                    wants,
                                    layers,
                                })
                                .is_err()
                        {
                            self.stats
                                .worker_queue_drops
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    /// PLI on every video stream a local publisher sends (of one simulcast layer: on that
    /// layer's stream only).
    fn request_keyframe(&mut self, lp: LocalPeer, layer: Option<Layer>) {
        if let Some(PipeEnd::In { keyframes, .. }) = self.pipes.get(&lp) {
            // For the origin (a closed channel: nobody there wants them).
            match keyframes.try_send(layer) {
                Ok(()) => {
                    self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Full(_)) => {
                    self.stats.pipe_drops.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Closed(_)) => {}
            }
            return;
        }
        let Some(peer) = self.peers.get_mut(lp.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let mut requested = false;
        for (ssrc, info) in &peer.ssrcs {
            if info.kind != MediaKind::Video || layer.is_some_and(|l| l != info.layer) {
                continue;
            }
            if let Some(rx) = peer.rtc.direct_api().stream_rx(ssrc) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                requested = true;
            }
        }
        if requested {
            self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
            self.drain(lp);
        }
    }

    /// A peer that speaks Opus and `video` only, so its answer carries exactly that codec.
    fn new_rtc(&self, video: &VideoCodecs, bwe: Option<u64>) -> Rtc {
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
                // The level is the publisher's (what is sent: a 1080p stream is 4.0); str0m
                // matches an offer of another level (a level is negotiable, RFC 6184 8.2.2).
                let level = f.profile_level_id.map_or(0x1f, |p| p & 0xff);
                let mut profiles = [0x420000 | level, 0x42e000 | level];
                if f.profile_level_id.map(|p| p >> 8) == Some(0x42e0) {
                    profiles.reverse();
                }
                codecs.add_h264(127.into(), Some(121.into()), true, profiles[0]);
                codecs.add_h264(108.into(), Some(109.into()), true, profiles[1]);
            }
            VideoCodecs::Subscriber(_) => codecs.enable_vp8(true),
        }
        if let Some(initial) = bwe {
            config = config.enable_bwe(Some(Bitrate::from(initial)));
        }
        config.build(Instant::now())
    }

    /// A new peer's `Rtc` with our host candidate, and its answer to `offer`.
    fn answer(
        &self,
        offer: SdpOffer,
        video: &VideoCodecs,
        bwe: Option<u64>,
    ) -> Result<(Rtc, String), RtcError> {
        let mut rtc = self.new_rtc(video, bwe);
        let candidate = Candidate::host(self.announced, "udp")
            .map_err(|e| RtcError::new(ErrorCode::Unknown, format!("host candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| {
                RtcError::new(
                    ErrorCode::InvalidParameter,
                    format!("SDP offer refused: {e}"),
                )
            })?
            .to_sdp_string();
        Ok((rtc, answer))
    }

    /// Place a peer whose offer was accepted; returns its index.
    fn insert(
        &mut self,
        id: PeerId,
        slot: SlotRef,
        mut rtc: Rtc,
        publisher: bool,
        mids: Vec<Mid>,
    ) -> LocalPeer {
        let credentials = rtc.direct_api().local_ice_credentials();
        let (ice_ufrag, ice_password) = (credentials.ufrag, credentials.pass);
        let now = Instant::now();
        let peer = Peer {
            id,
            slot,
            rtc,
            publisher,
            ssrcs: HashMap::new(),
            mids,
            rids: Vec::new(),
            created: now,
            connected: false,
            ice_password,
            nominated: false,
            next_timeout: now,
            scheduled: Some(now),
            ice_ufrag: ice_ufrag.clone(),
            dead: None,
        };
        let lp = match self.free.pop() {
            Some(i) => {
                if let Some(p) = self.peers.get_mut(i as usize) {
                    *p = Some(peer);
                }
                LocalPeer(i)
            }
            None => {
                // At most 2^32 peers on one worker at once: a u32 index suffices.
                let i = u32::try_from(self.peers.len()).unwrap_or(u32::MAX);
                self.peers.push(Some(peer));
                LocalPeer(i)
            }
        };
        self.ids.insert(id, lp);
        self.by_ufrag.insert(ice_ufrag, lp);
        // Its first timeout at once, and a look when its time to connect is up.
        self.timers.push(Reverse((now, lp.0)));
        self.timers
            .push(Reverse((now + self.connect_timeout, lp.0)));
        self.earliest = now;
        self.stats.peers.fetch_add(1, Ordering::Relaxed);
        lp
    }

    fn add_publisher(
        &mut self,
        id: PeerId,
        slot: SlotRef,
        offer: SdpOffer,
        video: Option<VideoFormat>,
        rids: Vec<String>,
    ) -> Result<(String, Option<PeerId>), RtcError> {
        let codecs = video.map_or(VideoCodecs::None, VideoCodecs::Publisher);
        let (rtc, answer) = self.answer(offer, &codecs, None)?;
        let stream = slot.id();
        let replaced = slot.set_publisher(PublisherInfo { peer: id });
        let lp = self.insert(id, slot, rtc, true, Vec::new());
        if let Some(p) = self.peer_mut(lp) {
            p.rids = rids;
        }
        self.router.add_publisher(lp, stream);
        self.drain(lp);
        self.pump();
        Ok((answer, replaced))
    }

    #[allow(clippy::too_many_arguments)]
    fn add_subscriber(
        &mut self,
        id: PeerId,
        slot: SlotRef,
        audio: bool,
        video: bool,
        offer: SdpOffer,
        lines: &[MediaSection],
        codec: Option<VideoFormat>,
        msid: &str,
        subscription: &Subscription,
    ) -> Result<String, RtcError> {
        let codecs = codec.map_or(VideoCodecs::None, VideoCodecs::Subscriber);
        // A simulcast stream's subscriber is estimated (TWCC), starting from what its
        // biggest layer needs, so that its layer can follow its bandwidth.
        let bwe = (video && subscription.bitrates.len() > 1).then(|| {
            subscription.bitrates.iter().copied().max().unwrap_or(0)
                + super::simulcast::AUDIO_RESERVE_BPS
        });
        let (mut rtc, answer) = self.answer(offer, &codecs, bwe)?;
        let answer = unify_msid(&answer, msid);
        // Its tracks come from its offer's receiving m-lines that str0m accepted, each sent
        // with the payload type its answer names.
        let pts = answer_pts(&answer);
        let mut tracks: Vec<TrackSpec> = Vec::new();
        let mut mids = Vec::new();
        for m in lines {
            let wanted = match m.kind {
                MediaKind::Audio => audio,
                MediaKind::Video => video,
            };
            let mid = Mid::from(m.mid.as_str());
            let usable = rtc.media(mid).is_some_and(|m| !m.disabled());
            let pt = pts.iter().find(|(x, _)| *x == m.mid).map(|(_, pt)| *pt);
            let track_codec = match (m.kind, &codecs) {
                (MediaKind::Video, VideoCodecs::Subscriber(f)) => Some(f.codec),
                _ => None,
            };
            if let Some(pt) = pt
                && wanted
                && m.receives
                && usable
                && !tracks.iter().any(|t| t.kind == m.kind)
            {
                tracks.push(TrackSpec {
                    kind: m.kind,
                    codec: track_codec,
                    pt,
                });
                mids.push(mid);
            }
        }
        if tracks.is_empty() {
            rtc.disconnect();
            return Err(RtcError::new(
                ErrorCode::InvalidParameter,
                "the offer has no receivable audio or video m-line with a supported codec (Opus, H.264, VP8)",
            ));
        }
        let mut api = rtc.direct_api();
        for (track, mid) in tracks.iter().zip(&mids) {
            if track.kind == MediaKind::Video
                && let Some(tx) = api.stream_tx_by_mid(*mid, None)
            {
                tx.set_rtx_cache(SEND_BUFFER_VIDEO, RTX_MAX_AGE, Some(RTX_RATIO_CAP));
            }
        }
        let stream = slot.id();
        let lp = self.insert(id, slot, rtc, false, mids);
        if let (Some(p), Some(top)) = (self.peer_mut(lp), bwe) {
            // Probe up to the biggest layer (with headroom) from a smaller one.
            let desired = Bitrate::from(top.saturating_mul(3) / 2);
            p.rtc.bwe().set_bitrate(Bitrate::from(0u64), desired);
        }
        self.router
            .add_subscriber_with(lp, stream, &tracks, subscription, Instant::now());
        self.drain(lp);
        self.pump();
        Ok(answer)
    }

    /// A client's ICE restart: the same `Rtc` accepts the new offer (str0m sees the new
    /// remote credentials and restarts its agent with new local ones, keeping our
    /// candidate), so the peer's SSRCs, DTLS session and router state carry on. Checks with
    /// the new ufrag, from whatever address, find the peer again.
    fn restart_ice(
        &mut self,
        id: PeerId,
        offer: SdpOffer,
        msid: Option<&str>,
    ) -> Result<String, RtcError> {
        let Some(lp) = self.ids.get(&id).copied() else {
            return Err(RtcError::invalid_operation(
                None,
                "the link's media peer is gone: publish or subscribe again",
            ));
        };
        let Some(peer) = self.peer_mut(lp).filter(|p| p.dead.is_none()) else {
            return Err(RtcError::invalid_operation(
                None,
                "the link's media peer is closing: publish or subscribe again",
            ));
        };
        let answer = peer
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| {
                RtcError::new(
                    ErrorCode::InvalidParameter,
                    format!("ICE restart offer refused: {e}"),
                )
            })?
            .to_sdp_string();
        let answer = match msid {
            Some(msid) => unify_msid(&answer, msid),
            None => answer,
        };
        let credentials = peer.rtc.direct_api().local_ice_credentials();
        let old = std::mem::replace(&mut peer.ice_ufrag, credentials.ufrag.clone());
        peer.ice_password = credentials.pass;
        if old != credentials.ufrag {
            self.by_ufrag.remove(&old);
            self.by_ufrag.insert(credentials.ufrag, lp);
        }
        self.drain(lp);
        self.pump();
        Ok(answer)
    }

    fn handle_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::AddPublisher {
                id,
                slot,
                offer,
                video,
                rids,
                reply,
            } => {
                let res = self.add_publisher(id, slot, offer, video, rids);
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
                msid,
                subscription,
                reply,
            } => {
                let res = self.add_subscriber(
                    id,
                    slot,
                    audio,
                    video,
                    offer,
                    &lines,
                    codec,
                    &msid,
                    &subscription,
                );
                let _ = reply.send(res);
            }
            Cmd::SetVideoType { id, want } => {
                if let Some(lp) = self.ids.get(&id).copied() {
                    self.router.set_video_type(lp, want, Instant::now());
                    self.pump();
                }
            }
            Cmd::RestartIce {
                id,
                offer,
                msid,
                reply,
            } => {
                let res = self.restart_ice(id, offer, msid.as_deref());
                let _ = reply.send(res);
            }
            Cmd::AddPipeOut {
                id,
                slot,
                tx,
                reply,
            } => {
                self.add_pipe_out(id, slot, tx);
                let _ = reply.send(Ok(()));
            }
            Cmd::AddPipeIn {
                id,
                slot,
                keyframes,
                reply,
            } => {
                let res = self.add_pipe_in(id, slot, keyframes);
                let _ = reply.send(Ok(res));
            }
            Cmd::Remove { id } => {
                if let Some(lp) = self.ids.get(&id).copied() {
                    self.remove_peer(lp, None);
                }
            }
            Cmd::Interest {
                stream,
                worker,
                wants,
                layers,
            } => {
                self.router.on_interest(stream, worker, wants, layers);
                self.pump();
            }
            Cmd::WorkerReset { worker } => {
                self.router.on_worker_reset(worker);
                self.pump();
            }
            Cmd::Mute {
                stream,
                kind,
                muted,
            } => {
                self.router.set_muted(stream, kind, muted, Instant::now());
                self.pump();
            }
            Cmd::InjectFault => panic!("media worker {}: injected fault", self.idx),
            Cmd::Shutdown => {}
        }
    }

    fn handle_data(&mut self, d: Data) {
        match d {
            Data::Forward(packet) => self.router.on_forward(&packet),
            Data::Keyframe {
                stream,
                force,
                layer,
            } => self
                .router
                .request_keyframe(stream, force, layer, Instant::now()),
            Data::PipeRtp { peer, id, packet } => self.pipe_rtp(peer, id, packet),
        }
        self.pump();
    }

    /// A packet of pipe in `lp` (`id`), from another node: into the router as a local
    /// publisher's.
    fn pipe_rtp(&mut self, lp: LocalPeer, id: PeerId, p: PipePacket) {
        // The pipe closed (its index possibly taken by another peer since): not its packet.
        if !matches!(self.pipes.get(&lp), Some(PipeEnd::In { id: i, .. }) if *i == id) {
            return;
        }
        self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_in
            .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
        self.router.on_rtp(
            lp,
            RtpIn {
                kind: p.kind,
                codec: p.codec,
                // The origin's source (publisher, SSRC, unmute generation) as this node's
                // SSRC: a change of it is a new source for the subscribers' rewriters.
                ssrc: (p.source as u32) ^ ((p.source >> 32) as u32),
                seq: p.seq,
                ts: p.ts,
                marker: p.marker,
                clock_rate: p.clock_rate,
                layer: p.layer,
                layers: p.layers,
                payload: p.payload,
            },
            Instant::now(),
        );
    }

    /// A free index for a pipe (its `peers` entry stays `None`).
    fn pipe_index(&mut self) -> LocalPeer {
        match self.free.pop() {
            Some(i) => LocalPeer(i),
            None => {
                // At most 2^32 peers on one worker at once: a u32 index suffices.
                let i = u32::try_from(self.peers.len()).unwrap_or(u32::MAX);
                self.peers.push(None);
                LocalPeer(i)
            }
        }
    }

    /// A pipe out of `slot`: a router subscriber of every layer whose packets go on `tx`.
    fn add_pipe_out(&mut self, id: PeerId, slot: SlotRef, tx: mpsc::Sender<PipePacket>) {
        let lp = self.pipe_index();
        let stream = slot.id();
        self.pipes.insert(
            lp,
            PipeEnd::Out {
                id,
                tx,
                _slot: slot,
            },
        );
        self.ids.insert(id, lp);
        self.router.add_pipe(lp, stream, Instant::now());
        self.pump();
    }

    /// A pipe into `slot`: its publisher (replacing the one returned), connected at once.
    fn add_pipe_in(
        &mut self,
        id: PeerId,
        slot: SlotRef,
        keyframes: mpsc::Sender<Option<Layer>>,
    ) -> (LocalPeer, Option<PeerId>) {
        let lp = self.pipe_index();
        let stream = slot.id();
        let replaced = slot.set_publisher(PublisherInfo { peer: id });
        self.pipes.insert(
            lp,
            PipeEnd::In {
                id,
                keyframes,
                slot,
            },
        );
        self.ids.insert(id, lp);
        self.router.add_publisher(lp, stream);
        self.router.on_connected(lp, Instant::now());
        self.pump();
        (lp, replaced)
    }

    /// Close a pipe; `reason` is set when it died on its own (an event tells the server).
    fn remove_pipe(&mut self, lp: LocalPeer, pipe: PipeEnd, reason: Option<PeerCloseReason>) {
        self.free.push(lp.0);
        self.ids.remove(&pipe.id());
        self.router.remove_peer(lp);
        if let PipeEnd::In { id, slot, .. } = &pipe {
            slot.clear_publisher(*id);
        }
        if let Some(reason) = reason {
            self.emit(pipe.id(), reason);
        }
        // Dropping it closes its channel and releases its stream reference.
        drop(pipe);
        self.pump();
    }

    /// Hand the router's packets for pipes out to their channels. A full channel drops the
    /// packet; a closed one (nobody takes them any more) closes the pipe.
    fn pipe_packets(&mut self) {
        let mut closed = Vec::new();
        while let Some((lp, p)) = self.router.poll_piped() {
            let Some(PipeEnd::Out { tx, .. }) = self.pipes.get(&lp) else {
                continue;
            };
            // Video of no codec the server forwards reaches no subscriber, here or there.
            if p.kind == MediaKind::Video && p.codec.is_none() {
                continue;
            }
            let packet = PipePacket {
                kind: p.kind,
                codec: p.codec,
                source: p.source,
                seq: p.seq,
                ts: p.ts,
                marker: p.marker,
                clock_rate: p.clock_rate,
                layer: p.layer,
                layers: p.layers,
                payload: p.payload,
            };
            match tx.try_send(packet) {
                Ok(()) => {}
                Err(e) => {
                    self.stats.pipe_drops.fetch_add(1, Ordering::Relaxed);
                    if matches!(e, TrySendError::Closed(_)) && !closed.contains(&lp) {
                        closed.push(lp);
                    }
                }
            }
        }
        for lp in closed {
            self.remove_peer(lp, Some(PeerCloseReason::Closed));
        }
    }

    /// Close a peer; `reason` is set when it died on its own (an event tells the server).
    fn remove_peer(&mut self, lp: LocalPeer, reason: Option<PeerCloseReason>) {
        if let Some(pipe) = self.pipes.remove(&lp) {
            self.remove_pipe(lp, pipe, reason);
            return;
        }
        let Some(mut peer) = self.peers.get_mut(lp.0 as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(lp.0);
        self.ids.remove(&peer.id);
        self.by_ufrag.remove(&peer.ice_ufrag);
        self.by_addr.retain(|_, p| *p != lp);
        self.router.remove_peer(lp);
        self.forget(&peer);
        peer.rtc.disconnect();
        // Flush the goodbye (RTCP BYE / DTLS close) best effort.
        while let Ok(out) = peer.rtc.poll_output() {
            match out {
                Output::Transmit(t) => self.send_to(t.contents.into(), t.destination),
                Output::Timeout(_) => break,
                Output::Event(_) => {}
            }
        }
        if let Some(reason) = reason {
            self.emit(peer.id, reason);
        }
        // Dropping the peer releases its stream reference.
        drop(peer);
        self.pump();
    }

    fn handle_datagram(&mut self, data: &[u8], source: SocketAddr) {
        let now = Instant::now();
        // The address the datagram was sent to, as ICE knows it: our announced candidate.
        // Behind a 1:1 NAT (`media.public_ip`), that is not the address the socket is bound
        // to, and str0m drops checks to an address it has no candidate for.
        let destination = self.announced;
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
        let lp = match self.by_addr.get(&source) {
            Some(lp) => Some(*lp),
            None => {
                // A new address: its first datagram is a connectivity check naming our ufrag.
                let found = super::stun::local_ufrag(data)
                    .and_then(|u| self.by_ufrag.get(u).copied())
                    .filter(|lp| {
                        self.peers
                            .get(lp.0 as usize)
                            .and_then(Option::as_ref)
                            .is_some_and(|p| p.dead.is_none() && p.rtc.accepts(&input))
                    });
                if let Some(lp) = found {
                    self.by_addr.insert(source, lp);
                }
                found
            }
        };
        let Some(lp) = lp else {
            self.stats.dropped_datagrams.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(peer) = self.peer_mut(lp) else {
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
            tracing::debug!(peer = peer.id, error = %e, "bad input from peer");
            self.mark_dead(lp, PeerCloseReason::Closed);
        }
        self.drain(lp);
        self.pump();
    }

    fn handle_timeouts(&mut self, now: Instant) {
        // The peers due now, each once (a peer's drain may schedule it for `now` again: that
        // waits for the next turn).
        let mut due: Vec<u32> = Vec::new();
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(peer) = self.peers.get_mut(i as usize).and_then(Option::as_mut) else {
                continue;
            };
            if peer.scheduled == Some(at) {
                peer.scheduled = None;
            }
            let connect_due = !peer.connected
                && now.saturating_duration_since(peer.created) > self.connect_timeout;
            if peer.next_timeout > now && peer.dead.is_none() && !connect_due {
                // Stale: its timeout moved later. Keep one entry for it.
                let next = peer.next_timeout;
                if peer.scheduled.is_none_or(|s| next < s) {
                    self.timers.push(Reverse((next, i)));
                    peer.scheduled = Some(next);
                }
                continue;
            }
            if !due.contains(&i) {
                due.push(i);
            }
        }
        for i in due {
            let lp = LocalPeer(i);
            let Some(peer) = self.peers.get_mut(i as usize).and_then(Option::as_mut) else {
                continue;
            };
            let mut dead = peer.dead;
            if dead.is_none()
                && !peer.connected
                && now.saturating_duration_since(peer.created) > self.connect_timeout
            {
                dead = Some(PeerCloseReason::ConnectTimeout);
            }
            if dead.is_none() && !peer.rtc.is_alive() {
                dead = Some(PeerCloseReason::Closed);
            }
            if let Some(reason) = dead {
                self.remove_peer(lp, Some(reason));
                // Counted once the peer is gone, so that a reader who sees the
                // timeout also sees the peer count without it.
                if reason == PeerCloseReason::ConnectTimeout {
                    self.stats.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(peer = peer.id, error = %e, "peer timeout handling failed");
                self.mark_dead(lp, PeerCloseReason::Closed);
            }
            self.drain(lp);
            self.pump();
        }
        self.earliest = self
            .timers
            .peek()
            .map_or(now + IDLE_WAIT, |Reverse((at, _))| *at);
    }
}

/// What a publisher's packets on `ssrc` with payload type `pt` are (`None`: not ours to
/// forward).
fn ssrc_info(rtc: &mut Rtc, ssrc: Ssrc, pt: Pt, rids: &[String]) -> Option<SsrcInfo> {
    let (mid, rid) = rtc
        .direct_api()
        .stream_rx(&ssrc)
        .map(|s| (s.mid(), s.rid()))?;
    // A layer the publish did not name is not forwarded (it would be mixed into another).
    let layer = match rid {
        None => 0,
        Some(rid) => {
            let i = rids.iter().position(|r| r.as_str() == &*rid)?;
            Layer::try_from(i).ok()?
        }
    };
    let kind = rtc.media(mid).map(|m| kind_of(m.kind()))?;
    let spec = rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.pt() == pt)
        .map(|p| p.spec())?;
    let codec = match spec.codec {
        Codec::H264 => Some(VideoCodec::H264),
        Codec::Vp8 => Some(VideoCodec::Vp8),
        _ => None,
    };
    Some(SsrcInfo {
        kind,
        pt,
        codec,
        clock_rate: spec.clock_rate.get(),
        layer,
    })
}
