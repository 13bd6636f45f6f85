//! The SFU media plane: WebRTC peers on str0m (RTP mode, ICE-lite), driven by media workers.
//!
//! Each **media worker** ([`worker`]) is a thread with its own UDP socket and a set of peers
//! (one str0m `Rtc` each). A publisher's uplink is one peer; each subscription is one peer (one
//! downlink per subscribed stream, as the TRTC v4 Web SDK does). The worker is only an I/O
//! driver: it reads the socket, finds the peer by ICE ufrag / source address, feeds str0m,
//! runs the timers, and turns str0m events into inputs of its [`router::Router`] and the
//! router's outputs into `write_rtp`, socket sends and channel sends.
//!
//! The **router** is a sans-IO state machine (every call takes `now`; tested in virtual time)
//! with interned `u32` ids: a published slot (room + user + stream type) is interned once per
//! publish/subscribe here, in [`MediaPlane`], as a [`router::StreamId`] that every worker shares
//! and that is released when the slot has neither publisher nor subscriber left; a peer is a
//! [`router::LocalPeer`], the worker's index for it. The per-packet path hashes no string. The
//! router owns the forwarding table, mute state, keyframe-request limiting (at most one a
//! second per stream; forced for a new subscriber and on unmuting video) and the per-track
//! sequence/timestamp rewriting ([`rewrite::SeqRewriter`]) that keeps a subscriber's stream
//! continuous across a publisher restart or an unmute.
//!
//! Packets from a publisher are written to the subscribers on the same worker directly and
//! sent to each other worker that has subscribers of that stream (its *interest*, announced
//! by each worker's router) with one message per packet per worker, so a large room's fan-out
//! (encryption and sends) is spread over all workers, i.e. all cores. str0m answers NACKs from
//! its per-stream send buffer and sends SR/RR reports.
//!
//! Queues are bounded: commands from here and from other workers go on a control queue,
//! forwarded packets and keyframe requests on a data queue; a full queue drops (counted in
//! [`MediaStats::worker_queue_drops`]), except that a publish or subscribe fails with "media
//! worker overloaded". A worker takes a batch of each source (control, data, socket) in turn,
//! so neither starves the others.
//!
//! A slot can be carried to another node over a *pipe* ([`pipe`]): on the origin node,
//! [`MediaPlane::pipe_out`] subscribes a channel to every packet of the slot as its publisher
//! sent it (every layer, not rewritten); on an edge node, [`MediaPlane::pipe_in`] publishes the
//! slot from those packets ([`PipeIn::send`]), so the edge's subscribers get them through its
//! own router, and hands out the keyframe requests that the edge's router lets through, for the
//! origin ([`MediaPlane::request_keyframe_layer`]). The link between the nodes is the
//! caller's; [`encode_pipe_frame`] and [`decode_pipe_frame`] are its packets' wire form.
//!
//! A peer that dies on its own (ICE disconnect, DTLS close, connect timeout, worker fault) is
//! reported as a [`MediaEvent`] on the channel [`MediaPlane::take_events`] hands out; one
//! closed on request (`unpublish`, `unsubscribe`, `close_peer`) is not. A panic in a worker is
//! caught: its peers are dropped (reason [`PeerCloseReason::WorkerFault`]) and it serves new
//! peers on the same socket ([`MediaStats::worker_restarts`]).

pub mod pipe;
pub mod rewrite;
pub mod router;
pub mod sdp;
pub mod simulcast;
pub mod stun;
mod worker;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rtcroom_protocol::signal::{MediaKind, StreamType, VideoCodec, VideoLayer, VideoStreamType};
use rtcroom_protocol::{ErrorCode, RtcError, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::room::RoomKey;
use router::StreamId;
use worker::{Cmd, Data, Worker, WorkerSetup};

pub use pipe::{
    PipeFormat, PipeIn, PipePacket, PipeWireError, decode_pipe_frame, encode_pipe_frame,
};

/// Requested UDP socket buffer size per worker (both directions).
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Capacity of each worker's control queue (publish, subscribe, remove, mute, interest).
pub const CONTROL_QUEUE: usize = 1024;
/// Capacity of each worker's data queue (packets from other workers, keyframe requests).
pub const DATA_QUEUE: usize = 4096;
/// Capacity of the [`MediaEvent`] queue.
pub const EVENT_QUEUE: usize = 1024;

/// Identifies one peer connection on the server. The low 8 bits are its worker's index.
pub type PeerId = u64;

/// A published stream: (room, member, main|auxiliary).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SlotKey {
    /// The room.
    pub room: RoomKey,
    /// The publisher.
    pub user: UserId,
    /// Which of its streams.
    pub stream_type: StreamType,
}

/// A published stream's current publisher peer (its video format is kept apart, from publish
/// to unpublish: see `SlotTable::formats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublisherInfo {
    /// The publisher's peer.
    pub peer: PeerId,
}

/// What a publisher's offer was answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The publisher's peer.
    pub peer: PeerId,
    /// The SDP answer.
    pub answer: String,
    /// The video codec it sends (none: audio only).
    pub video_codec: Option<VideoCodec>,
    /// Simulcast: its video layers, smallest first (empty: one layer).
    pub layers: Vec<VideoLayer>,
}

/// Media plane settings (`[media]` in the config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MediaConfig {
    /// Media worker threads (0: one per core).
    pub workers: usize,
    /// Address the workers' UDP sockets bind to.
    pub bind_ip: IpAddr,
    /// Address announced in ICE host candidates (default: `bind_ip`).
    pub public_ip: Option<IpAddr>,
    /// A peer that has not connected (ICE + DTLS) within this many seconds is dropped.
    pub connect_timeout_s: f64,
    /// Subscribers of simulcast streams get a bandwidth estimate that moves them between
    /// layers (on by default); off, each receives the layer it asks for, whatever its link.
    pub bandwidth_adaptation: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            workers: 0,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            public_ip: None,
            connect_timeout_s: 10.0,
            bandwidth_adaptation: true,
        }
    }
}

/// Media counters, shared with `/metrics` and the bench harness.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// RTP packets received from publishers.
    pub packets_in: AtomicU64,
    /// RTP packets written to subscribers.
    pub packets_out: AtomicU64,
    /// RTP payload bytes received.
    pub bytes_in: AtomicU64,
    /// RTP payload bytes written.
    pub bytes_out: AtomicU64,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests: AtomicU64,
    /// UDP datagrams that matched no peer or did not parse.
    pub dropped_datagrams: AtomicU64,
    /// Outgoing datagrams the socket refused (send buffer full).
    pub send_drops: AtomicU64,
    /// Peers alive.
    pub peers: AtomicU64,
    /// Peers dropped because they never connected.
    pub connect_timeouts: AtomicU64,
    /// Messages dropped because a worker's queue was full (commands, forwarded packets,
    /// keyframe requests).
    pub worker_queue_drops: AtomicU64,
    /// Workers restarted after a fault (a panic while handling something).
    pub worker_restarts: AtomicU64,
    /// [`MediaEvent`]s dropped because their queue was full (or nobody took it).
    pub event_drops: AtomicU64,
    /// ICE restarts answered.
    pub ice_restarts: AtomicU64,
    /// Packets (and keyframe requests of pipes in) dropped because a pipe's channel was full
    /// (or, for a pipe out, closed).
    pub pipe_drops: AtomicU64,
}

/// Why a peer closed on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerCloseReason {
    /// ICE lost the client (consent checks failed).
    IceDisconnected,
    /// The client closed it (DTLS close, a fatal error on its input).
    Closed,
    /// It did not connect (ICE + DTLS) within `media.connect_timeout_s`.
    ConnectTimeout,
    /// Its worker failed (a bug) and dropped all its peers.
    WorkerFault,
}

/// What the media plane tells the server about its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// A peer closed on its own (not by `unpublish`, `unsubscribe` or `close_peer`).
    PeerClosed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: PeerCloseReason,
    },
    /// The simulcast layer a subscriber peer receives changed (or it got its first).
    LayerChanged {
        /// The subscriber's peer.
        peer: PeerId,
        /// The layer, 0 the smallest.
        layer: u8,
        /// How many layers the stream has.
        layers: u8,
        /// Its bandwidth estimate moved it (else its request).
        bandwidth: bool,
    },
    /// The layers of a simulcast publisher peer's stream that anybody receives changed.
    LayersWanted {
        /// The publisher's peer.
        peer: PeerId,
        /// Bit `l` for layer `l`.
        layers: u32,
    },
}

/// The interned slots: `SlotKey` ↔ [`StreamId`], with a reference count (publisher and
/// subscriber peers, or a publish/subscribe under way) and the slot's publisher.
#[derive(Default)]
struct SlotTable {
    by_key: HashMap<SlotKey, StreamId>,
    entries: HashMap<StreamId, SlotEntry>,
    next: u32,
    /// Each published slot's video format, from its publish until its unpublish (the room
    /// announces the stream that long): a subscription made while the publisher's peer
    /// connection is being rebuilt (old peer gone, new one not yet there) still gets video.
    formats: HashMap<SlotKey, Option<sdp::VideoFormat>>,
    /// Each simulcast slot's layers, smallest first, as long as its format.
    layers: HashMap<SlotKey, Vec<VideoLayer>>,
}

struct SlotEntry {
    key: SlotKey,
    refs: usize,
    publisher: Option<PublisherInfo>,
}

/// The slot table, shared by the plane and the workers (locked only at command time and on
/// keyframe relays, never per packet).
#[derive(Clone, Default)]
pub(crate) struct Slots(Arc<Mutex<SlotTable>>);

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        // A worker that panicked holding the lock left the table consistent (each operation
        // is a few map updates), so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reference to `key`'s id, interning it if need be. Ids are not reused (until the
    /// `u32` wraps), so a packet still in flight for a released slot cannot reach another.
    fn acquire(&self, key: &SlotKey) -> SlotRef {
        let mut t = self.lock();
        let id = match t.by_key.get(key) {
            Some(id) => *id,
            None => {
                let mut id = StreamId(t.next);
                while t.entries.contains_key(&id) {
                    id = StreamId(id.0.wrapping_add(1));
                }
                t.next = id.0.wrapping_add(1);
                t.by_key.insert(key.clone(), id);
                t.entries.insert(
                    id,
                    SlotEntry {
                        key: key.clone(),
                        refs: 0,
                        publisher: None,
                    },
                );
                id
            }
        };
        if let Some(e) = t.entries.get_mut(&id) {
            e.refs += 1;
        }
        SlotRef {
            slots: self.clone(),
            id,
        }
    }

    fn find(&self, key: &SlotKey) -> Option<(StreamId, Option<PublisherInfo>)> {
        let t = self.lock();
        let id = *t.by_key.get(key)?;
        Some((id, t.entries.get(&id)?.publisher))
    }

    /// The publisher of `stream`, if any.
    pub(crate) fn publisher(&self, stream: StreamId) -> Option<PublisherInfo> {
        self.lock().entries.get(&stream)?.publisher
    }

    fn set_format(&self, key: &SlotKey, video: Option<sdp::VideoFormat>, layers: Vec<VideoLayer>) {
        let mut t = self.lock();
        t.formats.insert(key.clone(), video);
        if layers.is_empty() {
            t.layers.remove(key);
        } else {
            t.layers.insert(key.clone(), layers);
        }
    }

    fn layers(&self, key: &SlotKey) -> Vec<VideoLayer> {
        self.lock().layers.get(key).cloned().unwrap_or_default()
    }

    /// Whether peer `id` publishes a simulcast slot.
    fn publishes_layers(&self, id: PeerId) -> bool {
        let t = self.lock();
        t.entries
            .values()
            .find(|e| e.publisher.is_some_and(|p| p.peer == id))
            .is_some_and(|e| t.layers.contains_key(&e.key))
    }

    fn format(&self, key: &SlotKey) -> Option<sdp::VideoFormat> {
        self.lock().formats.get(key).copied().flatten()
    }

    /// `peer` stopped publishing `key`: the slot has no publisher and no format any more,
    /// unless another peer has taken it meanwhile (a re-publish, a new pipe), whose format
    /// stays.
    fn clear_publisher_of(&self, key: &SlotKey, peer: PeerId) {
        let mut t = self.lock();
        let entry = t.by_key.get(key).copied();
        let current = entry
            .and_then(|id| t.entries.get(&id))
            .and_then(|e| e.publisher)
            .map(|p| p.peer);
        if current.is_some_and(|p| p != peer) {
            return;
        }
        t.formats.remove(key);
        t.layers.remove(key);
        if let Some(e) = entry.and_then(|id| t.entries.get_mut(&id)) {
            e.publisher = None;
        }
    }

    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// One reference to an interned slot; dropping it releases it (the last one forgets the
/// slot). A peer holds one for its life, so every way a peer goes releases it exactly once.
pub(crate) struct SlotRef {
    slots: Slots,
    id: StreamId,
}

impl SlotRef {
    /// The slot's id.
    pub(crate) fn id(&self) -> StreamId {
        self.id
    }

    /// Record the slot's new publisher; returns the one it replaces (another peer).
    pub(crate) fn set_publisher(&self, info: PublisherInfo) -> Option<PeerId> {
        let mut t = self.slots.lock();
        let e = t.entries.get_mut(&self.id)?;
        let old = e.publisher.replace(info);
        old.map(|o| o.peer).filter(|p| *p != info.peer)
    }

    /// Forget the slot's publisher if it is `peer`.
    pub(crate) fn clear_publisher(&self, peer: PeerId) {
        let mut t = self.slots.lock();
        if let Some(e) = t.entries.get_mut(&self.id)
            && e.publisher.map(|p| p.peer) == Some(peer)
        {
            e.publisher = None;
        }
    }
}

impl Drop for SlotRef {
    fn drop(&mut self) {
        let mut t = self.slots.lock();
        let Some(e) = t.entries.get_mut(&self.id) else {
            return;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0
            && let Some(e) = t.entries.remove(&self.id)
        {
            t.by_key.remove(&e.key);
        }
    }
}

/// Per-mid statistics of one peer, as str0m last reported them.
#[derive(Clone, Debug, Default)]
pub struct MidStats {
    /// Bytes (received on an uplink, sent on a downlink).
    pub bytes: u64,
    /// Packets (likewise).
    pub packets: u64,
    /// Loss fraction, when known.
    pub loss: Option<f32>,
    /// Jitter, when known.
    pub jitter: Option<u32>,
    /// Round-trip time, when known.
    pub rtt: Option<Duration>,
    /// NACKs.
    pub nacks: u64,
    /// PLIs.
    pub plis: u64,
}

/// Statistics of every peer, by peer, then by mid (updated every stats interval).
pub type PeerStatsTable = Arc<RwLock<HashMap<PeerId, HashMap<String, MidStats>>>>;

/// How often peers report statistics.
pub const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// Handle to the media workers. Cheap to clone.
#[derive(Clone)]
pub struct MediaPlane {
    inner: Arc<Inner>,
}

struct Inner {
    /// Each worker's control queue.
    ctl: Vec<mpsc::Sender<Cmd>>,
    /// Each worker's data queue.
    data: Vec<mpsc::Sender<Data>>,
    events: Mutex<Option<mpsc::Receiver<MediaEvent>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    next_worker: AtomicUsize,
    next_id: AtomicU64,
    /// The interned slots, with each one's publisher peer (for keyframe requests and mute)
    /// and video format (for subscriptions).
    slots: Slots,
    stats: Arc<MediaStats>,
    addrs: Vec<SocketAddr>,
    peer_stats: PeerStatsTable,
    /// Set by `shutdown`.
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// `media.bandwidth_adaptation`.
    adaptation: bool,
}

/// The worker a peer lives on.
pub(crate) fn worker_of(id: PeerId) -> usize {
    (id & 0xff) as usize
}

fn stream_type_name(t: StreamType) -> &'static str {
    match t {
        StreamType::Main => "main",
        StreamType::Auxiliary => "auxiliary",
    }
}

fn overloaded() -> RtcError {
    RtcError::new(ErrorCode::ServerTimeout, "media worker overloaded")
}

/// Parse an offer for str0m. The error says what is wrong without str0m's parser internals
/// (its `Display` names a byte offset as a pointer, which is no use to a client). Public for
/// the fuzz targets only.
#[doc(hidden)]
pub fn parse_offer(sdp: &str) -> Result<str0m::change::SdpOffer, RtcError> {
    str0m::change::SdpOffer::from_sdp_string(sdp).map_err(|e| {
        tracing::debug!(error = %e, "unparsable SDP offer");
        RtcError::new(
            ErrorCode::InvalidParameter,
            "malformed SDP offer: it does not parse as SDP (RFC 8866)",
        )
    })
}

impl MediaPlane {
    /// Start the workers.
    pub fn start(config: &MediaConfig) -> std::io::Result<MediaPlane> {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let n = if config.workers == 0 {
            cores
        } else {
            config.workers
        }
        .clamp(1, 255);
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| std::io::Error::other("cannot generate the DTLS certificate"))?;
        let stats = Arc::new(MediaStats::default());
        let slots = Slots::default();
        let peer_stats: PeerStatsTable = Arc::new(RwLock::new(HashMap::new()));
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (mut ctl, mut ctl_rxs, mut data, mut data_rxs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
            ctl.push(tx);
            ctl_rxs.push(rx);
            let (tx, rx) = mpsc::channel(DATA_QUEUE);
            data.push(tx);
            data_rxs.push(rx);
        }
        let mut threads = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        for (idx, (ctl_rx, data_rx)) in ctl_rxs.into_iter().zip(data_rxs).enumerate() {
            let socket = std::net::UdpSocket::bind(SocketAddr::new(config.bind_ip, 0))?;
            socket.set_nonblocking(true)?;
            // One socket carries every peer of the worker: give it room for bursts (the
            // kernel caps this at net.core.{r,w}mem_max).
            let sock = socket2::SockRef::from(&socket);
            let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
            let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
            let local = socket.local_addr()?;
            let announced =
                SocketAddr::new(config.public_ip.unwrap_or(config.bind_ip), local.port());
            addrs.push(announced);
            let worker = Worker::new(WorkerSetup {
                idx,
                socket,
                announced,
                ctl: ctl.clone(),
                data: data.clone(),
                ctl_rx,
                data_rx,
                events: events_tx.clone(),
                cert: cert.clone(),
                stats: stats.clone(),
                slots: slots.clone(),
                peer_stats: peer_stats.clone(),
                connect_timeout: Duration::from_secs_f64(config.connect_timeout_s),
                stop: stop.clone(),
            });
            threads.push(
                std::thread::Builder::new()
                    .name(format!("rtcroom-media-{idx}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(MediaPlane {
            inner: Arc::new(Inner {
                ctl,
                data,
                events: Mutex::new(Some(events_rx)),
                threads: Mutex::new(threads),
                next_worker: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                slots,
                stats,
                addrs,
                peer_stats,
                stop,
                adaptation: config.bandwidth_adaptation,
            }),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<MediaStats> {
        &self.inner.stats
    }

    /// The UDP addresses the workers announce.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.inner.addrs
    }

    /// The peer events ([`MediaEvent`]); the first call gets the receiver, later ones `None`.
    /// Until it is taken (and while its queue of [`EVENT_QUEUE`] is full) events are dropped
    /// and counted in [`MediaStats::event_drops`].
    pub fn take_events(&self) -> Option<mpsc::Receiver<MediaEvent>> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn new_peer(&self) -> (PeerId, usize) {
        let w = self.inner.next_worker.fetch_add(1, Ordering::Relaxed) % self.inner.ctl.len();
        let id = (self.inner.next_id.fetch_add(1, Ordering::Relaxed) << 8) | w as u64;
        (id, w)
    }

    /// Queue a control command; a full queue drops it (counted).
    fn send(&self, worker: usize, cmd: Cmd) -> bool {
        let sent = self
            .inner
            .ctl
            .get(worker)
            .is_some_and(|tx| tx.try_send(cmd).is_ok());
        if !sent {
            self.inner
                .stats
                .worker_queue_drops
                .fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Queue a command that carries a reply and wait for it; a full queue is an error, never
    /// a silent drop.
    async fn ask<T>(
        &self,
        worker: usize,
        make: impl FnOnce(oneshot::Sender<Result<T, RtcError>>) -> Cmd,
    ) -> Result<T, RtcError> {
        let (tx, rx) = oneshot::channel();
        if !self.send(worker, make(tx)) {
            return Err(overloaded());
        }
        rx.await.unwrap_or_else(|_| {
            Err(RtcError::new(
                ErrorCode::Unknown,
                "the media worker stopped or failed",
            ))
        })
    }

    /// Accept a publisher's SDP offer for `slot`. The answer carries exactly one video codec:
    /// the first of the offer's that the server forwards ([`sdp::choose_publish_codec`]). A
    /// previous publisher peer of the same slot is replaced (subscribers continue).
    ///
    /// With `layers` (simulcast), the offer's video m-line must send each of their rids
    /// (`a=simulcast:send`); the answer receives them all and each subscriber gets one. Without,
    /// simulcast in the offer is declined (one layer is sent).
    pub async fn publish(
        &self,
        slot: SlotKey,
        offer: &str,
        layers: &[VideoLayer],
    ) -> Result<Published, RtcError> {
        let layers =
            sdp::check_layers(offer, layers).map_err(|e| RtcError::invalid_parameter(None, e))?;
        let offer = sdp::prepare_offer(offer, !layers.is_empty());
        let video = sdp::choose_publish_codec(&sdp::parse_media(&offer))
            .map_err(|e| RtcError::new(ErrorCode::NotSupported, e))?;
        let parsed = parse_offer(&offer)?;
        let (id, w) = self.new_peer();
        let key = slot.clone();
        let slot = self.inner.slots.acquire(&slot);
        let (answer, replaced) = self
            .ask(w, |reply| Cmd::AddPublisher {
                id,
                slot,
                offer: parsed,
                video,
                rids: layers.iter().map(|l| l.rid.clone()).collect(),
                reply,
            })
            .await?;
        self.inner.slots.set_format(&key, video, layers.clone());
        if let Some(old) = replaced {
            self.send(worker_of(old), Cmd::Remove { id: old });
        }
        Ok(Published {
            peer: id,
            answer,
            video_codec: video.map(|v| v.codec),
            layers,
        })
    }

    /// Accept a subscriber's SDP offer (recvonly) for `slot`'s audio and/or video (of a
    /// simulcast stream: the `video_type` layer, capped by its bandwidth).
    pub async fn subscribe(
        &self,
        slot: SlotKey,
        audio: bool,
        video: bool,
        offer: &str,
        video_type: VideoStreamType,
    ) -> Result<(PeerId, String), RtcError> {
        if !audio && !video {
            return Err(RtcError::invalid_operation(
                None,
                "subscribe needs audio, video or both",
            ));
        }
        let offer = sdp::prepare_offer(offer, false);
        let lines = sdp::parse_media(&offer);
        let codec = self.inner.slots.format(&slot);
        let layers = self.inner.slots.layers(&slot);
        let subscription = router::Subscription {
            layers: u8::try_from(layers.len().max(1)).unwrap_or(u8::MAX),
            video_type,
            // No bitrates, no estimate: the layer asked for, whatever the link.
            bitrates: if self.inner.adaptation {
                layers
                    .iter()
                    .map(|l| u64::from(l.bitrate_kbps) * 1000)
                    .collect()
            } else {
                Vec::new()
            },
        };
        if video && let Some(codec) = codec.map(|f| f.codec) {
            let receivable = lines
                .iter()
                .any(|m| m.kind == MediaKind::Video && m.receives && m.first_of(codec).is_some());
            if !receivable {
                return Err(RtcError::new(
                    ErrorCode::NotSupported,
                    format!(
                        "{}'s {} stream is {codec}{}, which the offer cannot receive: offer \
                         a recvonly video m-line with {codec}",
                        slot.user,
                        stream_type_name(slot.stream_type),
                        if codec == VideoCodec::H264 {
                            " (packetization-mode=1, baseline or constrained baseline)"
                        } else {
                            ""
                        },
                    ),
                ));
            }
        }
        let parsed = parse_offer(&offer)?;
        let msid = sdp::stream_msid(slot.user.as_str(), stream_type_name(slot.stream_type));
        let (id, w) = self.new_peer();
        let slot = self.inner.slots.acquire(&slot);
        let answer = self
            .ask(w, |reply| Cmd::AddSubscriber {
                id,
                slot,
                audio,
                video,
                offer: parsed,
                lines,
                codec,
                msid,
                subscription,
                reply,
            })
            .await?;
        // The worker's router has told every worker that it now wants the slot's packets; it
        // asks the publisher for a keyframe once the subscriber has connected.
        Ok((id, answer))
    }

    /// Restart ICE on peer `id` (publisher or subscriber): accept the client's new offer on
    /// the same `Rtc`, so its SSRCs, DTLS session and forwarding state continue; the answer
    /// carries new ICE credentials. `downlink` names a subscription's stream, whose `msid`
    /// the answer keeps.
    pub async fn restart_ice(
        &self,
        id: PeerId,
        offer: &str,
        downlink: Option<(UserId, StreamType)>,
    ) -> Result<String, RtcError> {
        // A simulcast publisher's new offer keeps its layers.
        let layered = downlink.is_none() && self.inner.slots.publishes_layers(id);
        let offer = parse_offer(&sdp::prepare_offer(offer, layered))?;
        let msid = downlink.map(|(user, st)| sdp::stream_msid(user.as_str(), stream_type_name(st)));
        let answer = self
            .ask(worker_of(id), |reply| Cmd::RestartIce {
                id,
                offer,
                msid,
                reply,
            })
            .await?;
        self.inner
            .stats
            .ice_restarts
            .fetch_add(1, Ordering::Relaxed);
        Ok(answer)
    }

    /// Ask the publisher of `slot` for a keyframe (rate-limited unless `force`).
    pub fn request_keyframe(&self, slot: &SlotKey, force: bool) {
        self.keyframe(slot, force, None);
    }

    /// Origin of a pipe: a keyframe request from an edge (forced past the one-a-second
    /// limiter: the edge has limited it already), of one simulcast layer (`Some`) or all.
    pub fn request_keyframe_layer(&self, slot: &SlotKey, layer: Option<u8>) {
        self.keyframe(slot, true, layer);
    }

    fn keyframe(&self, slot: &SlotKey, force: bool, layer: Option<u8>) {
        let Some((stream, Some(publisher))) = self.inner.slots.find(slot) else {
            return;
        };
        let sent = self
            .inner
            .data
            .get(worker_of(publisher.peer))
            .is_some_and(|tx| {
                tx.try_send(Data::Keyframe {
                    stream,
                    force,
                    layer,
                })
                .is_ok()
            });
        if !sent {
            self.inner
                .stats
                .worker_queue_drops
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Origin of a pipe: send every packet of `slot` (every simulcast layer, as received; no
    /// muted kind) to `tx`. `try_send`: a full channel drops the packet (counted in
    /// [`MediaStats::pipe_drops`]); a closed one closes the pipe (a
    /// [`MediaEvent::PeerClosed`] follows). The slot needs no publisher yet: whoever publishes
    /// it, now or later, is piped. Its publisher is asked for a keyframe at once (forced, as
    /// for a new subscriber; if it has not sent video yet, when it does). The pipe counts as a
    /// subscriber of the slot that wants every layer. Returns its peer id: close it with
    /// [`MediaPlane::close_peer`]. Its worker's fault closes it too (the channel closes and a
    /// [`MediaEvent::PeerClosed`] follows).
    pub async fn pipe_out(
        &self,
        slot: SlotKey,
        tx: mpsc::Sender<PipePacket>,
    ) -> Result<PeerId, RtcError> {
        let (id, w) = self.new_peer();
        let slot = self.inner.slots.acquire(&slot);
        self.ask(w, |reply| Cmd::AddPipeOut {
            id,
            slot,
            tx,
            reply,
        })
        .await?;
        Ok(id)
    }

    /// Origin of a pipe: the slot's current format, for [`MediaPlane::pipe_in`] on the edge
    /// (`None` when nobody publishes it: from a publish to its unpublish, as subscriptions
    /// see it).
    pub fn pipe_format(&self, slot: &SlotKey) -> Option<PipeFormat> {
        let t = self.inner.slots.lock();
        let video = *t.formats.get(slot)?;
        Some(PipeFormat {
            video,
            layers: t.layers.get(slot).cloned().unwrap_or_default(),
        })
    }

    /// Edge of a pipe: publish `slot` from a pipe, replacing any previous publisher of the
    /// slot (subscribers continue, as with [`MediaPlane::publish`]). The slot's format is set
    /// from `format`, so local subscriptions negotiate as for a WebRTC publisher of it. The
    /// keyframe requests the router lets through for this publisher go on `keyframes`
    /// (`try_send`; the layer, `None` for all). Close it with
    /// [`MediaPlane::unpublish`]`(&slot, pipe.peer())`; a publisher that replaces it closes it
    /// too, and so does its worker's fault (with a [`MediaEvent::PeerClosed`]): either way
    /// `keyframes` closes.
    pub async fn pipe_in(
        &self,
        slot: SlotKey,
        format: PipeFormat,
        keyframes: mpsc::Sender<Option<u8>>,
    ) -> Result<PipeIn, RtcError> {
        let (id, w) = self.new_peer();
        let data = self.inner.data.get(w).cloned().ok_or_else(overloaded)?;
        let key = slot.clone();
        let slot = self.inner.slots.acquire(&slot);
        let (local, replaced) = self
            .ask(w, |reply| Cmd::AddPipeIn {
                id,
                slot,
                keyframes,
                reply,
            })
            .await?;
        self.inner
            .slots
            .set_format(&key, format.video, format.layers);
        if let Some(old) = replaced {
            self.send(worker_of(old), Cmd::Remove { id: old });
        }
        Ok(PipeIn {
            peer: id,
            local,
            data,
            stats: self.inner.stats.clone(),
        })
    }

    /// Subscriber peer `id` wants the big or the small layer of its simulcast stream (it
    /// switches at that layer's next keyframe, asked for now). Nothing changes for a stream
    /// of one layer.
    pub fn set_video_type(&self, id: PeerId, want: VideoStreamType) {
        self.send(worker_of(id), Cmd::SetVideoType { id, want });
    }

    /// Close a publisher peer (unpublish).
    pub fn unpublish(&self, slot: &SlotKey, id: PeerId) {
        self.inner.slots.clear_publisher_of(slot, id);
        self.send(worker_of(id), Cmd::Remove { id });
    }

    /// Close a subscriber peer (unsubscribe).
    pub fn unsubscribe(&self, id: PeerId) {
        self.close_peer(id);
    }

    /// Close any peer (publisher or subscriber). No [`MediaEvent`] follows.
    pub fn close_peer(&self, id: PeerId) {
        self.send(worker_of(id), Cmd::Remove { id });
    }

    /// Stop or resume forwarding one kind of a stream (mute / unmute). Resuming continues
    /// each subscriber's stream with no sequence gap and, for video, asks for a keyframe. A
    /// new publisher of the slot starts unmuted.
    pub fn set_muted(&self, slot: &SlotKey, kind: MediaKind, muted: bool) {
        let Some((stream, Some(publisher))) = self.inner.slots.find(slot) else {
            return;
        };
        self.send(
            worker_of(publisher.peer),
            Cmd::Mute {
                stream,
                kind,
                muted,
            },
        );
    }

    /// Make `worker` panic inside its loop (tests of the supervision).
    #[doc(hidden)]
    pub fn inject_worker_fault(&self, worker: usize) {
        self.send(worker, Cmd::InjectFault);
    }

    /// How many slots are interned (for tests: none once every peer is gone).
    #[doc(hidden)]
    pub fn interned_slots(&self) -> usize {
        self.inner.slots.len()
    }

    /// Statistics of one peer, summed over its audio and video (loss, jitter and RTT: the
    /// worst of them).
    pub fn link_stats(&self, id: PeerId) -> Option<rtcroom_protocol::signal::LinkStats> {
        let table = self.inner.peer_stats.read().ok()?;
        let mids = table.get(&id)?;
        let mut out = rtcroom_protocol::signal::LinkStats::default();
        for m in mids.values() {
            out.bytes += m.bytes;
            out.packets += m.packets;
            out.nacks += m.nacks;
            out.plis += m.plis;
            out.loss = match (out.loss, m.loss) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            out.jitter = match (out.jitter, m.jitter) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let rtt = m.rtt.map(|d| d.as_secs_f64() * 1000.0);
            out.rtt_ms = match (out.rtt_ms, rtt) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        Some(out)
    }

    /// Stop the workers and wait for them.
    pub fn shutdown(&self) {
        // A worker whose queue is full is busy and sees the flag at its next turn.
        self.inner.stop.store(true, Ordering::Relaxed);
        for tx in &self.inner.ctl {
            let _ = tx.try_send(Cmd::Shutdown);
        }
        let threads =
            std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcroom_protocol::RoomId;

    /// A plane with one worker that never reads its queues (of `capacity` each).
    fn stalled(capacity: usize) -> (MediaPlane, mpsc::Receiver<Cmd>, mpsc::Receiver<Data>) {
        let (ctl, ctl_rx) = mpsc::channel(capacity);
        let (data, data_rx) = mpsc::channel(capacity);
        let (_, events) = mpsc::channel(1);
        let plane = MediaPlane {
            inner: Arc::new(Inner {
                ctl: vec![ctl],
                data: vec![data],
                events: Mutex::new(Some(events)),
                threads: Mutex::new(Vec::new()),
                next_worker: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                slots: Slots::default(),
                stats: Arc::new(MediaStats::default()),
                addrs: Vec::new(),
                peer_stats: Arc::new(RwLock::new(HashMap::new())),
                stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                adaptation: true,
            }),
        };
        (plane, ctl_rx, data_rx)
    }

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\n\
        a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=setup:actpass\r\n\
        a=mid:0\r\na=sendonly\r\na=rtcp-mux\r\na=msid:s1 a1\r\na=ssrc:1 cname:x\r\n\
        a=rtpmap:111 opus/48000/2\r\n";

    fn slot() -> SlotKey {
        SlotKey {
            room: RoomKey {
                sdk_app_id: 1,
                room_id: RoomId::numeric(1).unwrap(),
            },
            user: UserId::new("u").unwrap(),
            stream_type: StreamType::Main,
        }
    }

    #[test]
    fn a_full_worker_queue_refuses_publish_and_counts_drops() {
        let (plane, _ctl, _data) = stalled(1);
        let drops = || plane.stats().worker_queue_drops.load(Ordering::Relaxed);
        plane.close_peer(1 << 8);
        assert_eq!(drops(), 0);
        plane.close_peer(2 << 8);
        assert_eq!(drops(), 1, "a full queue drops and counts");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt.block_on(plane.publish(slot(), OFFER, &[])).unwrap_err();
        assert_eq!(e.message, "media worker overloaded");
        assert_eq!(e.code, ErrorCode::ServerTimeout);
        assert_eq!(drops(), 2);
        assert_eq!(
            plane.interned_slots(),
            0,
            "the refused publish holds no slot"
        );
    }

    #[test]
    fn slot_ids_are_refcounted_and_not_reused() {
        let slots = Slots::default();
        let a = slots.acquire(&slot());
        let b = slots.acquire(&slot());
        assert_eq!(a.id(), b.id());
        assert_eq!(a.set_publisher(PublisherInfo { peer: 5 }), None);
        assert_eq!(b.set_publisher(PublisherInfo { peer: 6 }), Some(5));
        a.clear_publisher(5);
        assert_eq!(slots.publisher(a.id()).map(|p| p.peer), Some(6));
        let first = a.id();
        drop(a);
        assert_eq!(slots.len(), 1);
        drop(b);
        assert_eq!(slots.len(), 0);
        let c = slots.acquire(&slot());
        assert_ne!(c.id(), first, "a released id is not handed out again");
    }

    #[test]
    fn a_replaced_publishers_late_unpublish_keeps_the_new_ones_format() {
        let slots = Slots::default();
        let s = slots.acquire(&slot());
        let format = |codec| {
            Some(sdp::VideoFormat {
                codec,
                pt: 96,
                rtx: None,
                profile_level_id: None,
            })
        };
        s.set_publisher(PublisherInfo { peer: 5 });
        slots.set_format(&slot(), format(VideoCodec::Vp8), Vec::new());
        // Peer 6 takes the slot (a re-publish, a new pipe); peer 5's unpublish comes after.
        s.set_publisher(PublisherInfo { peer: 6 });
        slots.set_format(&slot(), format(VideoCodec::H264), Vec::new());
        slots.clear_publisher_of(&slot(), 5);
        assert_eq!(
            slots.format(&slot()).map(|f| f.codec),
            Some(VideoCodec::H264)
        );
        assert_eq!(slots.publisher(s.id()).map(|p| p.peer), Some(6));
        // Its own unpublish clears both.
        slots.clear_publisher_of(&slot(), 6);
        assert_eq!(slots.format(&slot()), None);
        assert_eq!(slots.publisher(s.id()), None);
    }
}
