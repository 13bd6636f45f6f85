//! The forwarding logic of one media worker, with no I/O: a plain state machine that takes
//! `now` in every call and queues what the worker has to do ([`Router::poll_output`]).
//!
//! Ids are interned `u32`s: a [`StreamId`] names a published slot (room + user + stream type,
//! interned once per publish/subscribe by the media plane, the same on every worker) and a
//! [`LocalPeer`] names a peer on this worker (the worker's index for it). The per-packet path
//! hashes one `u32` and clones no string; the only allocation is one `Arc` per packet when
//! other workers want it.
//!
//! What the router owns, per stream:
//! - its local publisher (if it is on this worker) and the publisher's mute state,
//! - its local subscribers, each with its tracks (kind, codec, payload type, rewriter),
//! - which other workers have subscribers of it (their *interest*),
//! - the keyframe-request limiter (at most one a second; forced for a new subscriber and on
//!   unmuting video).
//!
//! A new subscriber's keyframe is asked for when it subscribes, not when it connects: the
//! publisher's next frame is encoded while the subscriber's ICE and DTLS come up, and the
//! video from that keyframe on is held for it ([`MAX_HELD`] packets at most) and written the
//! moment it connects. A subscriber that still has not seen a keyframe [`KEYFRAME_WAIT`]
//! after asking asks again (a request lost, or a keyframe that missed it).
//!
//! Simulcast (TRTC's big and small streams): a publisher's packets carry their layer (0 the
//! smallest) and the number of layers. Each subscriber with video has a [`LayerSwitch`]: it
//! gets one layer, the one it asked for ([`Router::set_video_type`]) capped by what its
//! bandwidth estimate allows ([`Router::on_estimate`], a [`LayerPolicy`]), and switches only
//! at a keyframe of the new layer, asked of the publisher for that layer alone. Its rewriter
//! sees each layer as its own source, so sequence numbers and timestamps continue across a
//! switch. The layers any subscriber (on any worker) receives or is switching to are told to
//! the publisher ([`Output::LayersWanted`], "dynacast"), so it can pause the rest; a stream
//! nobody subscribes to keeps every layer.
//!
//! A *pipe* ([`Router::add_pipe`]) is a subscriber that carries a stream to another node (see
//! [`super::pipe`]): connected at once, it takes every packet of the stream as the publisher
//! sent it (every layer, not rewritten; [`Router::poll_piped`]), wants every layer, and asks
//! for a keyframe (forced) when added, as a new video subscriber does. On the other node the
//! pipe is a plain local publisher.
//!
//! A stream's entry exists while it has a local publisher, a local subscriber (pipes
//! included) or a remote interest, and goes away with the last of them (mute state and
//! limiter included).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rtcroom_protocol::signal::{MediaKind, VideoCodec, VideoStreamType};

use super::rewrite::{KeyframeLimiter, SeqRewriter, starts_keyframe};
use super::simulcast::{Layer, LayerPolicy, LayerSwitch, Verdict, wanted_layers};

/// A published stream, interned by the media plane (the same id on every worker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// A peer on this worker: the worker's index for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalPeer(pub u32);

/// Most workers a router can address (the media plane runs at most 255).
pub const MAX_WORKERS: usize = 256;
/// Video packets held for a subscriber that is still connecting (from a keyframe on).
pub const MAX_HELD: usize = 512;
/// A subscriber that has not seen a keyframe this long after asking for one asks again.
pub const KEYFRAME_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// One track a subscriber receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackSpec {
    /// Audio or video.
    pub kind: MediaKind,
    /// The video codec negotiated with the subscriber (`None` for audio). The track gets
    /// packets of that codec only.
    pub codec: Option<VideoCodec>,
    /// The payload type the subscriber's answer named for it.
    pub pt: u8,
}

/// How a subscriber subscribes to a stream's video layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The layers the stream has as far as the media plane knows (1: no simulcast); the
    /// packets' own count wins when it differs.
    pub layers: u8,
    /// Big or small.
    pub video_type: VideoStreamType,
    /// The layers' bitrates (bits/s, smallest first), for the bandwidth policy (empty: none).
    pub bitrates: Vec<u64>,
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription {
            layers: 1,
            video_type: VideoStreamType::Big,
            bitrates: Vec::new(),
        }
    }
}

/// A packet from a local publisher, as str0m delivered it.
#[derive(Clone, Debug)]
pub struct RtpIn {
    /// Audio or video (from the packet's m-line).
    pub kind: MediaKind,
    /// Its video codec (`None` for audio).
    pub codec: Option<VideoCodec>,
    /// The publisher's SSRC.
    pub ssrc: u32,
    /// Extended sequence number.
    pub seq: u64,
    /// RTP timestamp.
    pub ts: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// The codec's clock rate (Hz).
    pub clock_rate: u32,
    /// Its simulcast layer (0: the smallest, or the only one).
    pub layer: Layer,
    /// How many layers the publisher sends (1: no simulcast).
    pub layers: u8,
    /// The payload (shared with every subscriber's send buffer).
    pub payload: Arc<[u8]>,
}

/// A publisher's packet on its way to subscribers (on this worker or another).
#[derive(Clone, Debug)]
pub struct RoutedPacket {
    /// Its stream.
    pub stream: StreamId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Its video codec (`None` for audio).
    pub codec: Option<VideoCodec>,
    /// Changes when the publisher, its SSRC or its mute state changes: subscribers' rewriters
    /// continue their output across a change.
    pub source: u64,
    /// Extended sequence number as received.
    pub seq: u64,
    /// RTP timestamp as received.
    pub ts: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// The codec's clock rate (Hz).
    pub clock_rate: u32,
    /// When the publisher's worker received it.
    pub arrival: Instant,
    /// Its simulcast layer (0: the smallest, or the only one).
    pub layer: Layer,
    /// How many layers the publisher sends (1: no simulcast).
    pub layers: u8,
    /// The payload.
    pub payload: Arc<[u8]>,
}

/// What the worker has to do.
#[derive(Clone, Debug)]
pub enum Output {
    /// Write one packet to a local subscriber's track (str0m `write_rtp`).
    Write {
        /// The subscriber.
        peer: LocalPeer,
        /// Index of the track, in the order given to [`Router::add_subscriber`].
        track: usize,
        /// Audio or video (video is kept for NACK answers).
        kind: MediaKind,
        /// Payload type to send with.
        pt: u8,
        /// Rewritten extended sequence number.
        seq: u64,
        /// Rewritten RTP timestamp.
        ts: u32,
        /// RTP marker bit.
        marker: bool,
        /// Wall-clock time of the packet (its arrival at the publisher's worker).
        wallclock: Instant,
        /// The payload.
        payload: Arc<[u8]>,
    },
    /// Hand a local publisher's packet to another worker that has subscribers of its stream.
    Forward {
        /// The worker.
        worker: usize,
        /// The packet (one allocation shared by all workers).
        packet: Arc<RoutedPacket>,
    },
    /// Ask this local publisher for a keyframe (the limiter has let it through).
    RequestKeyframe {
        /// The publisher.
        publisher: LocalPeer,
        /// Of this simulcast layer only (`None`: of every layer).
        layer: Option<Layer>,
    },
    /// A local subscriber wants a keyframe of a stream published on another worker: pass
    /// the request to the publisher's worker ([`Router::request_keyframe`] there).
    RelayKeyframe {
        /// The stream.
        stream: StreamId,
        /// Bypass the limiter (a new subscriber).
        force: bool,
        /// Of this simulcast layer only (`None`: of every layer).
        layer: Option<Layer>,
    },
    /// Tell every other worker whether this one wants `stream`'s packets
    /// ([`Router::on_interest`] there).
    Interest {
        /// The stream.
        stream: StreamId,
        /// Whether this worker has subscribers of it.
        wants: bool,
        /// The video layers they receive or are switching to (bit `l` for layer `l`; every
        /// bit while a subscriber has not seen the stream's layers yet).
        layers: u32,
    },
    /// The layer a local subscriber receives changed (at a keyframe of the new one), or it
    /// got its first.
    LayerChanged {
        /// The subscriber.
        peer: LocalPeer,
        /// The layer it receives now.
        layer: Layer,
        /// How many layers the stream has.
        layers: u8,
        /// The change followed its bandwidth estimate (else its request).
        bandwidth: bool,
    },
    /// Restart a local subscriber's bandwidth estimator at this rate: a trial of the next
    /// layer up ([`LayerPolicy::poll`]).
    ResetEstimate {
        /// The subscriber.
        peer: LocalPeer,
        /// Where the estimate starts again (bits/s).
        bps: u64,
    },
    /// The layers of a local simulcast publisher's stream that anybody receives changed
    /// (bit `l` for layer `l`): it may pause the others.
    LayersWanted {
        /// The publisher.
        publisher: LocalPeer,
        /// The layers wanted.
        layers: u32,
    },
}

/// Sizes of the router's tables (for tests and debugging).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterLen {
    /// Local peers.
    pub peers: usize,
    /// Streams with any state.
    pub streams: usize,
}

/// A set of worker indexes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct WorkerSet([u64; MAX_WORKERS / 64]);

impl WorkerSet {
    fn set(&mut self, w: usize, on: bool) {
        if let Some(word) = self.0.get_mut(w / 64) {
            if on {
                *word |= 1 << (w % 64);
            } else {
                *word &= !(1 << (w % 64));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(i, word)| {
            let mut bits = *word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(i * 64 + b)
            })
        })
    }
}

fn kind_index(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    }
}

#[derive(Debug, Default)]
struct Stream {
    /// The local publisher (the latest added; a replaced one is ignored until removed).
    publisher: Option<LocalPeer>,
    /// Per kind: a generation that changes with the publisher and on each unmute (per kind:
    /// a change in the middle of a video frame would give its packets two timestamp offsets).
    generation: [u64; 2],
    muted: [bool; 2],
    /// The local publisher has sent video (a keyframe request means something).
    video_seen: bool,
    /// A keyframe is wanted as soon as the publisher sends video: a forced request came
    /// before its first video packet, or it replaced a publisher others were watching (a
    /// rebuilt peer connection carries an encoder already mid-GOP, so its first frame is
    /// not necessarily a keyframe).
    keyframe_pending: bool,
    limiter: KeyframeLimiter,
    subscribers: Vec<LocalPeer>,
    /// Other workers with subscribers of this stream.
    remote: WorkerSet,
    /// The video layers each of those workers wants ([`Output::Interest`]).
    remote_layers: Vec<(usize, u32)>,
    /// What this worker last told the others: `None` not interested, else its layers.
    interest_sent: Option<u32>,
    /// Layers the local publisher sends (1: no simulcast).
    layers: u8,
    /// The layer set last told to the local publisher.
    wanted_sent: Option<u32>,
}

impl Stream {
    fn is_unused(&self) -> bool {
        self.publisher.is_none() && self.subscribers.is_empty() && self.remote.is_empty()
    }
}

#[derive(Debug)]
struct Track {
    spec: TrackSpec,
    rewriter: SeqRewriter,
}

/// A video subscriber's simulcast state.
#[derive(Debug, Default)]
struct SubLayers {
    switch: LayerSwitch,
    /// What it asked for.
    want: VideoStreamType,
    /// What its bandwidth allows (none until it has layer bitrates and an estimate).
    policy: Option<LayerPolicy>,
    /// The stream's layer count as last seen in its packets (0: none seen yet).
    layers: u8,
    /// The last target was set by the bandwidth policy (else by the request).
    by_bandwidth: bool,
    /// The current layer last reported ([`Output::LayerChanged`]).
    reported: Option<Layer>,
}

impl SubLayers {
    /// The layer to receive out of `layers`: the one asked for, capped by the bandwidth.
    fn desired(&self, layers: u8) -> (Layer, bool) {
        let asked = match self.want {
            VideoStreamType::Big => layers.saturating_sub(1),
            VideoStreamType::Small => 0,
        };
        match self.policy.as_ref().map(LayerPolicy::chosen) {
            Some(allowed) if allowed < asked => (allowed, true),
            _ => (asked, false),
        }
    }

    /// Aim at the desired layer of `layers` (a new target asks for its keyframe: returned);
    /// `estimate`: a new bandwidth estimate is why.
    fn retarget(&mut self, layers: u8, estimate: bool, now: Instant) -> Option<Layer> {
        self.layers = layers;
        if layers <= 1 {
            return None;
        }
        if let Some(policy) = self.policy.as_mut() {
            let asked = match self.want {
                VideoStreamType::Big => layers - 1,
                VideoStreamType::Small => 0,
            };
            policy.set_ceiling(asked, now);
        }
        let (layer, by_bandwidth) = self.desired(layers);
        let ask = self.switch.set_target(layer, now);
        if ask.is_some() {
            self.by_bandwidth = by_bandwidth || estimate;
        }
        ask
    }

    /// The layers it receives or switches to.
    fn wanted(&self) -> u32 {
        if self.layers <= 1 {
            return 1;
        }
        wanted_layers([&self.switch])
    }
}

#[derive(Debug)]
enum Role {
    Publisher,
    Subscriber(Vec<Track>),
    /// A subscriber that takes every packet as it comes ([`Router::add_pipe`]).
    Pipe,
}

#[derive(Debug)]
struct PeerEntry {
    stream: StreamId,
    connected: bool,
    role: Role,
    /// A subscriber's video before it connected, from a keyframe on.
    held: Vec<RoutedPacket>,
    /// A subscriber waits for its first keyframe, asked for at this time.
    awaiting_keyframe: Option<Instant>,
    /// A subscriber with video: its simulcast layer.
    sim: Option<Box<SubLayers>>,
}

/// The forwarding state machine of one worker. See the module docs.
#[derive(Debug)]
pub struct Router {
    me: usize,
    /// Indexed by [`LocalPeer`].
    peers: Vec<Option<PeerEntry>>,
    peer_count: usize,
    streams: HashMap<StreamId, Stream>,
    next_generation: u64,
    out: VecDeque<Output>,
    /// Packets for local pipes ([`Router::poll_piped`]).
    piped: VecDeque<(LocalPeer, RoutedPacket)>,
}

impl Router {
    /// The router of worker `me`.
    pub fn new(me: usize) -> Router {
        Router {
            me,
            peers: Vec::new(),
            peer_count: 0,
            streams: HashMap::new(),
            next_generation: 1,
            out: VecDeque::new(),
            piped: VecDeque::new(),
        }
    }

    /// The next thing for the worker to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next packet for a local pipe: its packets in the order they came (every layer, not
    /// rewritten). Kept apart from [`Router::poll_output`] (the worker takes both after each
    /// input); one clone of the packet per pipe, its payload shared.
    pub fn poll_piped(&mut self) -> Option<(LocalPeer, RoutedPacket)> {
        self.piped.pop_front()
    }

    /// Sizes of the tables.
    pub fn len(&self) -> RouterLen {
        RouterLen {
            peers: self.peer_count,
            streams: self.streams.len(),
        }
    }

    /// No peer and no stream state left.
    pub fn is_empty(&self) -> bool {
        self.len() == RouterLen::default()
    }

    fn generation(&mut self) -> u64 {
        self.next_generation = self.next_generation.wrapping_add(1);
        self.next_generation
    }

    fn entry(&mut self, peer: LocalPeer) -> Option<&mut PeerEntry> {
        self.peers.get_mut(peer.0 as usize)?.as_mut()
    }

    fn insert_peer(&mut self, peer: LocalPeer, entry: PeerEntry) {
        self.remove_peer(peer);
        let i = peer.0 as usize;
        if self.peers.len() <= i {
            self.peers.resize_with(i + 1, || None);
        }
        self.peers[i] = Some(entry);
        self.peer_count += 1;
    }

    /// `peer` publishes `stream` (replacing a previous local publisher, whose packets are
    /// ignored from now on). A new publisher starts unmuted.
    pub fn add_publisher(&mut self, peer: LocalPeer, stream: StreamId) {
        self.insert_peer(
            peer,
            PeerEntry {
                stream,
                connected: false,
                role: Role::Publisher,
                held: Vec::new(),
                awaiting_keyframe: None,
                sim: None,
            },
        );
        let generation = [self.generation(), self.generation()];
        let s = self.streams.entry(stream).or_default();
        s.publisher = Some(peer);
        s.generation = generation;
        s.muted = [false; 2];
        s.video_seen = false;
        s.keyframe_pending = !s.subscribers.is_empty() || !s.remote.is_empty();
        s.layers = 1;
        s.wanted_sent = None;
    }

    /// `peer` subscribes to `stream` with `tracks` (at most one per kind is used: the first),
    /// to a stream of one layer, or of its big layer.
    pub fn add_subscriber(
        &mut self,
        peer: LocalPeer,
        stream: StreamId,
        tracks: &[TrackSpec],
        now: Instant,
    ) {
        self.add_subscriber_with(peer, stream, tracks, &Subscription::default(), now);
    }

    /// `peer` subscribes to `stream` with `tracks` (at most one per kind is used: the first).
    /// With video, its keyframe is asked for now, past the limiter (of the layer it wants,
    /// for a simulcast stream).
    pub fn add_subscriber_with(
        &mut self,
        peer: LocalPeer,
        stream: StreamId,
        tracks: &[TrackSpec],
        options: &Subscription,
        now: Instant,
    ) {
        let video = tracks.iter().any(|t| t.kind == MediaKind::Video);
        let tracks = tracks
            .iter()
            .map(|spec| Track {
                spec: *spec,
                rewriter: SeqRewriter::default(),
            })
            .collect();
        self.insert_peer(
            peer,
            PeerEntry {
                stream,
                connected: false,
                role: Role::Subscriber(tracks),
                held: Vec::new(),
                awaiting_keyframe: video.then_some(now),
                sim: None,
            },
        );
        let mut first = None;
        if video && let Some(e) = self.entry(peer) {
            let mut sim = SubLayers {
                want: options.video_type,
                ..SubLayers::default()
            };
            if options.bitrates.len() > 1 {
                let top = Layer::try_from(options.bitrates.len() - 1).unwrap_or(Layer::MAX);
                sim.policy = Some(LayerPolicy::new(options.bitrates.clone(), top));
            }
            first = sim.retarget(options.layers.max(1), false, now);
            e.sim = Some(Box::new(sim));
        }
        let s = self.streams.entry(stream).or_default();
        s.subscribers.push(peer);
        self.refresh_wanted(stream);
        if video {
            self.keyframe(stream, true, true, first, now);
        }
    }

    /// `peer` pipes `stream` to another node: connected at once, it gets every packet of the
    /// stream (every layer, as received: [`Router::poll_piped`]), counts as a subscriber that
    /// wants every layer (interest, wanted layers), and its keyframe is asked for now, past
    /// the limiter (of every layer).
    pub fn add_pipe(&mut self, peer: LocalPeer, stream: StreamId, now: Instant) {
        self.insert_peer(
            peer,
            PeerEntry {
                stream,
                connected: true,
                role: Role::Pipe,
                held: Vec::new(),
                awaiting_keyframe: None,
                sim: None,
            },
        );
        self.streams
            .entry(stream)
            .or_default()
            .subscribers
            .push(peer);
        self.refresh_wanted(stream);
        self.keyframe(stream, true, true, None, now);
    }

    /// Subscriber `peer` wants the big or the small layer of a simulcast stream (from its
    /// next packet on when the stream's layers are not known yet). Returns whether `peer`
    /// is a subscriber with video.
    pub fn set_video_type(&mut self, peer: LocalPeer, want: VideoStreamType, now: Instant) -> bool {
        let Some(e) = self.entry(peer) else {
            return false;
        };
        let stream = e.stream;
        let Some(sim) = e.sim.as_mut() else {
            return false;
        };
        sim.want = want;
        let ask = sim.retarget(sim.layers, false, now);
        if let Some(layer) = ask {
            self.keyframe(stream, true, true, Some(layer), now);
        }
        self.refresh_wanted(stream);
        true
    }

    /// A new estimate (bits/s) of what can be sent to subscriber `peer`: it moves down a
    /// layer at once when its layer no longer fits, and up with hysteresis.
    pub fn on_estimate(&mut self, peer: LocalPeer, estimate_bps: u64, now: Instant) {
        let Some(e) = self.entry(peer) else {
            return;
        };
        let stream = e.stream;
        let Some(sim) = e.sim.as_mut() else {
            return;
        };
        let Some(policy) = sim.policy.as_mut() else {
            return;
        };
        if policy.on_estimate(estimate_bps, now).is_none() {
            return;
        }
        if let Some(layer) = sim.retarget(sim.layers, true, now) {
            self.keyframe(stream, true, true, Some(layer), now);
        }
        self.refresh_wanted(stream);
    }

    /// The layer subscriber `peer` receives now, if any.
    pub fn layer_of(&self, peer: LocalPeer) -> Option<Layer> {
        self.peers
            .get(peer.0 as usize)?
            .as_ref()?
            .sim
            .as_ref()?
            .switch
            .current()
    }

    /// Tell the other workers (if this worker's wants changed) and the local publisher (if
    /// the stream's wanted layers changed) about `stream`'s wanted layers.
    fn refresh_wanted(&mut self, stream: StreamId) {
        let Some(s) = self.streams.get(&stream) else {
            return;
        };
        let local = s
            .subscribers
            .iter()
            .filter_map(|p| self.peers.get(p.0 as usize)?.as_ref())
            .fold(0u32, |m, e| {
                m | match (&e.role, e.sim.as_deref()) {
                    (Role::Pipe, _) => u32::MAX,
                    (_, Some(sim)) => sim.wanted(),
                    (_, None) => 0,
                }
            });
        let interest = (!s.subscribers.is_empty()).then_some(local);
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.interest_sent != interest {
            s.interest_sent = interest;
            self.out.push_back(Output::Interest {
                stream,
                wants: interest.is_some(),
                layers: local,
            });
        }
        let (Some(publisher), true) = (s.publisher, s.layers > 1) else {
            return;
        };
        let all = (1u32 << s.layers.min(31)) - 1;
        let wanted = if s.subscribers.is_empty() && s.remote.is_empty() {
            all
        } else {
            s.remote_layers.iter().fold(local, |m, (_, l)| m | l) & all
        };
        if s.wanted_sent != Some(wanted) {
            s.wanted_sent = Some(wanted);
            self.out.push_back(Output::LayersWanted {
                publisher,
                layers: wanted,
            });
        }
    }

    /// `peer` has connected (ICE + DTLS). A subscriber gets the video held for it (from the
    /// keyframe asked for when it subscribed) at once; if that keyframe has not come yet, it
    /// is still on its way, and asked for again only after [`KEYFRAME_WAIT`].
    pub fn on_connected(&mut self, peer: LocalPeer, now: Instant) {
        let Some(e) = self.entry(peer) else {
            return;
        };
        e.connected = true;
        let held = std::mem::take(&mut e.held);
        let stream = e.stream;
        for packet in &held {
            self.write_to(peer, packet);
        }
        self.check_keyframe_wait(peer, stream, now);
    }

    /// Ask again for a subscriber's keyframe that has not come within [`KEYFRAME_WAIT`].
    fn check_keyframe_wait(&mut self, peer: LocalPeer, stream: StreamId, now: Instant) {
        let Some(e) = self.entry(peer) else {
            return;
        };
        let late = e
            .awaiting_keyframe
            .is_some_and(|t| now.saturating_duration_since(t) >= KEYFRAME_WAIT);
        if late {
            e.awaiting_keyframe = Some(now);
            let layer = e.sim.as_ref().and_then(|m| m.switch.target());
            self.keyframe(stream, true, true, layer, now);
        }
    }

    /// Forget `peer` and every stream state that only it kept.
    pub fn remove_peer(&mut self, peer: LocalPeer) {
        let Some(e) = self
            .peers
            .get_mut(peer.0 as usize)
            .and_then(|slot| slot.take())
        else {
            return;
        };
        self.peer_count -= 1;
        while self.peers.last().is_some_and(|p| p.is_none()) {
            self.peers.pop();
        }
        let Some(s) = self.streams.get_mut(&e.stream) else {
            return;
        };
        match e.role {
            Role::Publisher => {
                if s.publisher == Some(peer) {
                    s.publisher = None;
                }
            }
            Role::Pipe => {
                s.subscribers.retain(|p| *p != peer);
                self.piped.retain(|(p, _)| *p != peer);
                self.refresh_wanted(e.stream);
            }
            Role::Subscriber(_) => {
                s.subscribers.retain(|p| *p != peer);
                self.refresh_wanted(e.stream);
            }
        }
        self.prune(e.stream);
    }

    fn prune(&mut self, stream: StreamId) {
        if self.streams.get(&stream).is_some_and(Stream::is_unused) {
            self.streams.remove(&stream);
        }
    }

    /// A packet from local peer `from` (received at `now`): forwarded to the other workers
    /// that want its stream and written to the local subscribers. Packets of a kind that is
    /// muted, and of a publisher that has been replaced, are dropped. Returns whether the
    /// packet was taken (not dropped).
    pub fn on_rtp(&mut self, from: LocalPeer, packet: RtpIn, now: Instant) -> bool {
        let Some(e) = self.peers.get(from.0 as usize).and_then(Option::as_ref) else {
            return false;
        };
        let stream = e.stream;
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        let k = kind_index(packet.kind);
        if s.publisher != Some(from) || s.muted[k] {
            return false;
        }
        if packet.kind == MediaKind::Video {
            s.video_seen = true;
            if s.layers != packet.layers {
                s.layers = packet.layers;
                s.wanted_sent = None;
                self.refresh_wanted(stream);
                return self.on_rtp(from, packet, now);
            }
            // A pending request is answered by a first video packet that starts a keyframe
            // (a fresh encoder's first frame): asking then would only cost a second one.
            if std::mem::take(&mut s.keyframe_pending)
                && !packet
                    .codec
                    .is_some_and(|c| starts_keyframe(c, &packet.payload))
                && s.limiter.allow(now, true)
            {
                self.out.push_back(Output::RequestKeyframe {
                    publisher: from,
                    layer: None,
                });
            }
        }
        let source = (s.generation[k] << 32) ^ u64::from(packet.ssrc) ^ ((self.me as u64) << 56);
        let routed = RoutedPacket {
            stream,
            kind: packet.kind,
            codec: packet.codec,
            source,
            seq: packet.seq,
            ts: packet.ts,
            marker: packet.marker,
            clock_rate: packet.clock_rate,
            arrival: now,
            layer: packet.layer,
            layers: packet.layers,
            payload: packet.payload,
        };
        if !s.remote.is_empty() {
            let shared = Arc::new(routed.clone());
            for worker in s.remote.iter() {
                self.out.push_back(Output::Forward {
                    worker,
                    packet: shared.clone(),
                });
            }
        }
        self.deliver(&routed);
        true
    }

    /// A packet another worker forwarded: written to the local subscribers.
    pub fn on_forward(&mut self, packet: &RoutedPacket) {
        self.deliver(packet);
    }

    fn deliver(&mut self, packet: &RoutedPacket) {
        let Some(s) = self.streams.get(&packet.stream) else {
            return;
        };
        // Whether the packet starts a keyframe, looked at only for a subscriber that cares.
        let mut starts: Option<bool> = None;
        let mut keyframe = || {
            *starts.get_or_insert_with(|| {
                packet
                    .codec
                    .is_some_and(|c| starts_keyframe(c, &packet.payload))
            })
        };
        let mut late = Vec::new();
        // Simulcast: keyframes to ask for (layer), and whether anybody's layers changed.
        let mut asks: Vec<Layer> = Vec::new();
        let mut changed = false;
        for &sub in &s.subscribers {
            let Some(e) = self.peers.get_mut(sub.0 as usize).and_then(Option::as_mut) else {
                continue;
            };
            if matches!(e.role, Role::Pipe) {
                self.piped.push_back((sub, packet.clone()));
                continue;
            }
            if packet.kind == MediaKind::Video
                && let Some(sim) = e.sim.as_deref_mut()
                && (packet.layers > 1 || sim.layers != packet.layers)
            {
                if sim.layers != packet.layers {
                    asks.extend(sim.retarget(packet.layers, false, packet.arrival));
                    changed = true;
                }
                if let Some(trial) = sim.policy.as_mut().and_then(|p| p.poll(packet.arrival)) {
                    self.out.push_back(Output::ResetEstimate {
                        peer: sub,
                        bps: trial.estimate_bps,
                    });
                    asks.extend(sim.retarget(packet.layers, true, packet.arrival));
                    changed = true;
                }
                if packet.layers > 1 {
                    let (current, target) = (sim.switch.current(), sim.switch.target());
                    let kf = Some(packet.layer) == target && current != target && keyframe();
                    let (verdict, again) = sim.switch.on_packet(packet.layer, kf, packet.arrival);
                    asks.extend(again);
                    if sim.switch.current() != current {
                        changed = true;
                    }
                    if let Some(layer) = sim.switch.current()
                        && sim.reported != Some(layer)
                    {
                        sim.reported = Some(layer);
                        self.out.push_back(Output::LayerChanged {
                            peer: sub,
                            layer,
                            layers: packet.layers,
                            bandwidth: sim.by_bandwidth,
                        });
                    }
                    if verdict == Verdict::Drop {
                        continue;
                    }
                }
            }
            // Only a subscriber still connecting or waiting for its keyframe looks further
            // at a video packet (most packets go straight to the write).
            let video = packet.kind == MediaKind::Video
                && (!e.connected || e.awaiting_keyframe.is_some())
                && Self::carries(e, packet);
            if video && e.awaiting_keyframe.is_some() {
                if keyframe() {
                    e.awaiting_keyframe = None;
                } else if e.connected {
                    late.push(sub);
                }
            }
            if e.connected {
                Self::write(&mut self.out, sub, e, packet);
            } else if video && e.awaiting_keyframe.is_none() && (!e.held.is_empty() || keyframe()) {
                // Still connecting: keep its video from the keyframe on, for the connect.
                if e.held.len() < MAX_HELD {
                    e.held.push(packet.clone());
                } else {
                    e.held.clear();
                    e.awaiting_keyframe = Some(packet.arrival);
                }
            }
        }
        for sub in late {
            self.check_keyframe_wait(sub, packet.stream, packet.arrival);
        }
        asks.sort_unstable();
        asks.dedup();
        for layer in asks {
            self.keyframe(packet.stream, true, true, Some(layer), packet.arrival);
        }
        if changed {
            self.refresh_wanted(packet.stream);
        }
    }

    /// Write `packet` to subscriber `peer` (connected), if one of its tracks carries it.
    fn write_to(&mut self, peer: LocalPeer, packet: &RoutedPacket) {
        if let Some(e) = self.peers.get_mut(peer.0 as usize).and_then(Option::as_mut) {
            Self::write(&mut self.out, peer, e, packet);
        }
    }

    /// Whether one of subscriber `e`'s tracks carries `packet`.
    fn carries(e: &PeerEntry, packet: &RoutedPacket) -> bool {
        matches!(&e.role, Role::Subscriber(tracks)
            if tracks.iter().any(|t| t.spec.kind == packet.kind && t.spec.codec == packet.codec))
    }

    fn write(
        out: &mut VecDeque<Output>,
        peer: LocalPeer,
        e: &mut PeerEntry,
        packet: &RoutedPacket,
    ) {
        let Role::Subscriber(tracks) = &mut e.role else {
            return;
        };
        // A track carries the codec negotiated with its subscriber only: after a publisher
        // re-publishes with another codec, the subscriber is told (stream-updated) and
        // subscribes again; until then it gets nothing it could not decode.
        let Some((track, t)) = tracks
            .iter_mut()
            .enumerate()
            .find(|(_, t)| t.spec.kind == packet.kind && t.spec.codec == packet.codec)
        else {
            return;
        };
        let rewritten = t.rewriter.map(
            packet.source,
            packet.seq,
            packet.ts,
            packet.arrival,
            packet.clock_rate,
        );
        out.push_back(Output::Write {
            peer,
            track,
            kind: packet.kind,
            pt: t.spec.pt,
            seq: rewritten.seq,
            ts: rewritten.ts,
            marker: packet.marker,
            wallclock: packet.arrival,
            payload: packet.payload.clone(),
        });
    }

    /// A local subscriber asked for a keyframe (PLI/FIR): passed on to the publisher, rate
    /// limited.
    pub fn on_keyframe_request(&mut self, subscriber: LocalPeer, now: Instant) {
        let Some(PeerEntry {
            stream,
            role: Role::Subscriber(_),
            sim,
            ..
        }) = self.entry(subscriber)
        else {
            return;
        };
        let stream = *stream;
        // Of the layer it receives (a simulcast stream's other layers are none of its
        // business).
        let layer = sim.as_ref().and_then(|m| m.switch.current());
        self.keyframe(stream, false, true, layer, now);
    }

    /// Ask `stream`'s publisher for a keyframe if it is on this worker (from the room or a
    /// relay from another worker; never relayed further). Limited to one a second unless
    /// `force`.
    pub fn request_keyframe(
        &mut self,
        stream: StreamId,
        force: bool,
        layer: Option<Layer>,
        now: Instant,
    ) {
        self.keyframe(stream, force, false, layer, now);
    }

    fn keyframe(
        &mut self,
        stream: StreamId,
        force: bool,
        relay: bool,
        layer: Option<Layer>,
        now: Instant,
    ) {
        let local = self
            .streams
            .get_mut(&stream)
            .and_then(|s| s.publisher.map(|p| (s, p)));
        if let Some((s, publisher)) = local {
            // Before the publisher's first video packet there is nothing to ask for yet: a
            // forced request waits for that packet, the limiter untouched.
            if !s.video_seen {
                s.keyframe_pending |= force;
            } else if s.limiter.allow(now, force) {
                // A layer of a stream that has none (any more) means all of it.
                let layer = layer.filter(|l| *l < s.layers && s.layers > 1);
                self.out
                    .push_back(Output::RequestKeyframe { publisher, layer });
            }
        } else if relay {
            self.out.push_back(Output::RelayKeyframe {
                stream,
                force,
                layer,
            });
        }
    }

    /// Stop or resume forwarding `kind` of `stream` (takes effect where its publisher is).
    /// Resuming continues every subscriber's output sequence with no gap, and resuming
    /// video asks the publisher for a keyframe at once.
    pub fn set_muted(&mut self, stream: StreamId, kind: MediaKind, muted: bool, now: Instant) {
        let k = kind_index(kind);
        let generation = self.generation();
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let was = std::mem::replace(&mut s.muted[k], muted);
        if was && !muted {
            // The packets dropped while muted never reach the rewriters: a new source
            // generation makes them continue at their last output + 1 (and the timestamp
            // advanced by the time that passed) instead of jumping over the gap.
            s.generation[k] = generation;
            if kind == MediaKind::Video {
                self.keyframe(stream, true, false, None, now);
            }
        }
    }

    /// Worker `worker` has (`wants`) or no longer has subscribers of `stream`, which
    /// receive (or are switching to) video `layers`.
    pub fn on_interest(&mut self, stream: StreamId, worker: usize, wants: bool, layers: u32) {
        if worker == self.me {
            return;
        }
        if wants {
            let s = self.streams.entry(stream).or_default();
            s.remote.set(worker, true);
            match s.remote_layers.iter_mut().find(|(w, _)| *w == worker) {
                Some((_, l)) => *l = layers,
                None => s.remote_layers.push((worker, layers)),
            }
            self.refresh_wanted(stream);
        } else if let Some(s) = self.streams.get_mut(&stream) {
            s.remote.set(worker, false);
            s.remote_layers.retain(|(w, _)| *w != worker);
            self.refresh_wanted(stream);
            self.prune(stream);
        }
    }

    /// Worker `worker` restarted with no state: forget its interest, and tell it again which
    /// streams this worker wants ([`Output::Interest`] for each).
    pub fn on_worker_reset(&mut self, worker: usize) {
        let mut wanted = Vec::new();
        let mut touched = Vec::new();
        self.streams.retain(|id, s| {
            s.remote.set(worker, false);
            let before = s.remote_layers.len();
            s.remote_layers.retain(|(w, _)| *w != worker);
            if s.remote_layers.len() != before {
                touched.push(*id);
            }
            if let Some(layers) = s.interest_sent {
                wanted.push((*id, layers));
            }
            !s.is_unused()
        });
        wanted.sort();
        for (stream, layers) in wanted {
            self.out.push_back(Output::Interest {
                stream,
                wants: true,
                layers,
            });
        }
        touched.sort();
        for stream in touched {
            self.refresh_wanted(stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: StreamId = StreamId(7);
    const PUB: LocalPeer = LocalPeer(0);

    fn base() -> Instant {
        // A fixed base: every test time is an offset from it.
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn at(ms: u64) -> Instant {
        base() + Duration::from_millis(ms)
    }

    /// An H.264 packet that starts a keyframe (an IDR slice).
    fn video(seq: u64, ts: u32) -> RtpIn {
        RtpIn {
            kind: MediaKind::Video,
            codec: Some(VideoCodec::H264),
            ssrc: 1111,
            seq,
            ts,
            marker: false,
            clock_rate: 90_000,
            layer: 0,
            layers: 1,
            payload: Arc::from(&[0x65u8, 0x88, 0x84][..]),
        }
    }

    /// An H.264 packet of a delta frame.
    fn delta(seq: u64, ts: u32) -> RtpIn {
        RtpIn {
            payload: Arc::from(&[0x41u8, 0x9a, 0x02][..]),
            ..video(seq, ts)
        }
    }

    fn audio(seq: u64, ts: u32) -> RtpIn {
        RtpIn {
            kind: MediaKind::Audio,
            codec: None,
            ssrc: 2222,
            seq,
            ts,
            marker: false,
            clock_rate: 48_000,
            layer: 0,
            layers: 1,
            payload: Arc::from(&[9u8][..]),
        }
    }

    fn outputs(r: &mut Router) -> Vec<Output> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    /// (peer, track, pt, seq, ts) of each write.
    fn writes(out: &[Output]) -> Vec<(u32, usize, u8, u64, u32)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Write {
                    peer,
                    track,
                    pt,
                    seq,
                    ts,
                    ..
                } => Some((peer.0, *track, *pt, *seq, *ts)),
                _ => None,
            })
            .collect()
    }

    fn keyframes(out: &[Output]) -> usize {
        out.iter()
            .filter(|o| matches!(o, Output::RequestKeyframe { publisher, .. } if *publisher == PUB))
            .count()
    }

    fn av(video_pt: u8) -> [TrackSpec; 2] {
        [
            TrackSpec {
                kind: MediaKind::Audio,
                codec: None,
                pt: 111,
            },
            TrackSpec {
                kind: MediaKind::Video,
                codec: Some(VideoCodec::H264),
                pt: video_pt,
            },
        ]
    }

    /// A router with a connected publisher of `S` and `n` connected subscribers (peers 1..=n,
    /// video payload type 100 + i), outputs drained.
    fn room(n: u32) -> Router {
        let mut r = Router::new(0);
        r.add_publisher(PUB, S);
        r.on_connected(PUB, at(0));
        for i in 1..=n {
            r.add_subscriber(LocalPeer(i), S, &av(100 + i as u8), at(0));
            r.on_connected(LocalPeer(i), at(0));
        }
        outputs(&mut r);
        r
    }

    #[test]
    fn forwards_to_every_connected_subscriber_with_its_payload_type() {
        let mut r = room(3);
        // A subscriber that has not connected yet gets nothing.
        r.add_subscriber(LocalPeer(9), S, &av(127), at(0));
        outputs(&mut r);
        assert!(r.on_rtp(PUB, video(70_000, 1000), at(10)));
        let w = writes(&outputs(&mut r));
        let start = 70_000 & 0xffff;
        assert_eq!(
            w,
            vec![
                (1, 1, 101, start, 1000),
                (2, 1, 102, start, 1000),
                (3, 1, 103, start, 1000)
            ]
        );
        assert!(r.on_rtp(PUB, audio(5, 960), at(20)));
        let w = writes(&outputs(&mut r));
        assert_eq!(w.len(), 3);
        assert!(
            w.iter()
                .all(|(_, track, pt, seq, _)| (*track, *pt, *seq) == (0, 111, 5))
        );
        // Packets from a peer that is not the stream's publisher go nowhere.
        assert!(!r.on_rtp(LocalPeer(1), video(1, 1), at(30)));
        assert!(outputs(&mut r).is_empty());
    }

    #[test]
    fn a_track_only_gets_its_negotiated_codec() {
        let mut r = room(0);
        r.add_subscriber(LocalPeer(1), S, &av(102), at(0));
        let vp8 = [TrackSpec {
            kind: MediaKind::Video,
            codec: Some(VideoCodec::Vp8),
            pt: 96,
        }];
        r.add_subscriber(LocalPeer(2), S, &vp8, at(0));
        r.on_connected(LocalPeer(1), at(0));
        r.on_connected(LocalPeer(2), at(0));
        outputs(&mut r);
        r.on_rtp(PUB, video(1, 0), at(1));
        assert_eq!(writes(&outputs(&mut r)), vec![(1, 1, 102, 1, 0)]);
        // The publisher re-publishes with VP8 (same stream): only the VP8 subscriber gets it.
        let mut p = video(1, 0);
        p.codec = Some(VideoCodec::Vp8);
        r.on_rtp(PUB, p, at(2));
        assert_eq!(writes(&outputs(&mut r)), vec![(2, 0, 96, 1, 0)]);
        // Audio: subscriber 2 has no audio track.
        r.on_rtp(PUB, audio(1, 0), at(3));
        assert_eq!(writes(&outputs(&mut r)), vec![(1, 0, 111, 1, 0)]);
    }

    #[test]
    fn a_replaced_publisher_continues_the_sequence_and_timestamps() {
        let mut r = room(1);
        for i in 0..10u64 {
            r.on_rtp(PUB, video(500 + i, (i * 3000) as u32), at(33 * i));
        }
        let last = *writes(&outputs(&mut r)).last().unwrap();
        // The new publisher (another peer, SSRC, sequence and timestamp base) is added
        // before the old one is removed; the old one's late packets are ignored.
        let new = LocalPeer(5);
        r.add_publisher(new, S);
        r.on_connected(new, at(400));
        assert!(!r.on_rtp(PUB, video(510, 30_000), at(400)));
        let mut p = video(40_000, 123_456_789);
        p.ssrc = 9999;
        assert!(r.on_rtp(new, p, at(430)));
        r.remove_peer(PUB);
        let w = writes(&outputs(&mut r));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].3, last.3 + 1, "no sequence gap");
        // 430 ms - 297 ms = 133 ms at 90 kHz.
        assert_eq!(
            w[0].4,
            last.4 + 11_970,
            "timestamp advanced by the wall time"
        );
    }

    #[test]
    fn keyframe_requests_are_limited_to_one_a_second_and_forced_for_a_new_subscriber() {
        let mut r = room(1);
        // No video yet: nothing to ask for (the subscription's request is remembered).
        r.on_keyframe_request(LocalPeer(1), at(0));
        assert_eq!(keyframes(&outputs(&mut r)), 0);
        r.on_rtp(PUB, delta(1, 0), at(0));
        assert_eq!(
            keyframes(&outputs(&mut r)),
            1,
            "the subscription asks with the first video"
        );
        r.on_keyframe_request(LocalPeer(1), at(1010));
        r.on_keyframe_request(LocalPeer(1), at(1500));
        assert_eq!(keyframes(&outputs(&mut r)), 1, "one a second");
        // A new subscriber: forced past the limiter when it subscribes, not again when it
        // connects (the keyframe is on its way).
        r.add_subscriber(LocalPeer(2), S, &av(100), at(1600));
        assert_eq!(keyframes(&outputs(&mut r)), 1, "forced on subscribe");
        r.on_connected(LocalPeer(2), at(1610));
        assert_eq!(keyframes(&outputs(&mut r)), 0, "not again on connect");
        r.on_keyframe_request(LocalPeer(1), at(2500));
        assert_eq!(keyframes(&outputs(&mut r)), 0, "the forced one counts");
        r.request_keyframe(S, false, None, at(2700));
        assert_eq!(keyframes(&outputs(&mut r)), 1);
        // A publisher's own peer asking is no subscriber asking.
        r.on_keyframe_request(PUB, at(5000));
        assert_eq!(keyframes(&outputs(&mut r)), 0);
    }

    #[test]
    fn a_keyframe_is_asked_of_a_replacing_publisher_and_for_a_request_before_video() {
        let mut r = room(1);
        // Forced before any video: asked for with the first video packet.
        r.request_keyframe(S, true, None, at(0));
        assert_eq!(keyframes(&outputs(&mut r)), 0, "nothing to ask yet");
        r.on_rtp(PUB, delta(1, 0), at(5));
        assert_eq!(keyframes(&outputs(&mut r)), 1, "asked with the first video");
        r.on_rtp(PUB, delta(2, 0), at(6));
        assert_eq!(keyframes(&outputs(&mut r)), 0, "once");
        // A first video packet that is itself a keyframe answers a pending request.
        let fresh = LocalPeer(7);
        r.add_publisher(fresh, S);
        outputs(&mut r);
        r.on_rtp(fresh, video(1, 0), at(2000));
        assert_eq!(
            keyframes(&outputs(&mut r)),
            0,
            "a fresh encoder's keyframe suffices"
        );
        // The publisher's peer connection is rebuilt (a new peer replaces it) while a
        // subscriber watches: its encoder is mid-GOP, so its first video asks for a keyframe
        // even though no subscriber asked (their decoders may wait for one in silence).
        let new_pub = LocalPeer(9);
        r.add_publisher(new_pub, S);
        outputs(&mut r);
        r.on_rtp(new_pub, delta(1, 0), at(3000));
        assert!(
            outputs(&mut r).iter().any(
                |o| matches!(o, Output::RequestKeyframe { publisher, .. } if *publisher == new_pub)
            ),
            "the replacing publisher is asked for a keyframe"
        );
    }

    #[test]
    fn cross_worker_forwarding_follows_interest() {
        // Worker 0 publishes; workers 2 and 3 subscribe.
        let mut a = room(0);
        let mut b = Router::new(2);
        b.add_subscriber(LocalPeer(0), S, &av(100), at(0));
        // Interest, and its keyframe request to the publisher's worker, forced.
        assert!(matches!(
            outputs(&mut b)[..],
            [
                Output::Interest {
                    stream: S,
                    wants: true,
                    ..
                },
                Output::RelayKeyframe {
                    stream: S,
                    force: true,
                    ..
                }
            ]
        ));
        // Its second subscriber changes nothing for the others (it asks for its keyframe).
        b.add_subscriber(LocalPeer(1), S, &av(100), at(0));
        assert!(matches!(
            outputs(&mut b)[..],
            [Output::RelayKeyframe {
                stream: S,
                force: true,
                ..
            }]
        ));
        a.on_interest(S, 2, true, 1);
        a.on_interest(S, 3, true, 1);
        a.on_interest(S, 0, true, 1); // itself: ignored
        a.on_rtp(PUB, video(1, 0), at(0));
        let out = outputs(&mut a);
        let to: Vec<usize> = out
            .iter()
            .filter_map(|o| match o {
                Output::Forward { worker, .. } => Some(*worker),
                _ => None,
            })
            .collect();
        assert_eq!(to, vec![2, 3]);
        // Worker 2 writes the forwarded packet to its connected subscriber.
        b.on_connected(LocalPeer(0), at(1));
        assert!(outputs(&mut b).is_empty());
        let Some(Output::Forward { packet, .. }) = out.first() else {
            panic!("forward");
        };
        b.on_forward(packet);
        assert_eq!(writes(&outputs(&mut b)), vec![(0, 1, 100, 1, 0)]);
        // Its last subscriber leaves: interest withdrawn, and the publisher's worker stops.
        b.remove_peer(LocalPeer(0));
        assert!(outputs(&mut b).is_empty());
        b.remove_peer(LocalPeer(1));
        assert!(matches!(
            outputs(&mut b)[..],
            [Output::Interest {
                stream: S,
                wants: false,
                ..
            }]
        ));
        assert!(b.is_empty());
        a.on_interest(S, 2, false, 1);
        a.on_rtp(PUB, video(2, 0), at(2));
        let out = outputs(&mut a);
        assert!(
            matches!(out[..], [Output::Forward { worker: 3, .. }]),
            "{out:?}"
        );
        // Worker 3 restarts: its interest is forgotten.
        a.on_worker_reset(3);
        a.on_rtp(PUB, video(3, 0), at(3));
        assert!(outputs(&mut a).is_empty());
    }

    #[test]
    fn a_reset_worker_is_told_the_interest_again() {
        let mut b = Router::new(1);
        b.add_subscriber(LocalPeer(0), StreamId(3), &av(100), at(0));
        b.add_subscriber(LocalPeer(1), StreamId(1), &av(100), at(0));
        outputs(&mut b);
        b.on_worker_reset(0);
        let again: Vec<u32> = outputs(&mut b)
            .iter()
            .filter_map(|o| match o {
                Output::Interest {
                    stream,
                    wants: true,
                    ..
                } => Some(stream.0),
                _ => None,
            })
            .collect();
        assert_eq!(again, vec![1, 3]);
    }

    /// Defect caught: the old worker dropped muted packets before the rewriter and never
    /// told it, so after unmuting the subscriber's sequence jumped over every packet dropped
    /// while muted (here 10) and it NACKed packets that would never come; and unmuting video
    /// asked for no keyframe, so the picture stayed frozen until the next one.
    #[test]
    fn unmuting_continues_the_sequence_and_asks_for_a_keyframe() {
        let mut r = room(1);
        for i in 0..10u64 {
            r.on_rtp(PUB, delta(100 + i, (i * 3000) as u32), at(33 * i));
        }
        let last = *writes(&outputs(&mut r)).last().unwrap();
        r.set_muted(S, MediaKind::Video, true, at(330));
        for i in 10..20u64 {
            assert!(!r.on_rtp(PUB, video(100 + i, (i * 3000) as u32), at(33 * i)));
        }
        assert!(writes(&outputs(&mut r)).is_empty(), "nothing while muted");
        // Audio is not muted.
        assert!(r.on_rtp(PUB, audio(1, 0), at(600)));
        outputs(&mut r);
        // The limiter let a request through at 0 (the subscriber connected before the first
        // video) and refuses one now: unmuting forces one anyway.
        r.on_keyframe_request(LocalPeer(1), at(640));
        assert_eq!(keyframes(&outputs(&mut r)), 0);
        r.set_muted(S, MediaKind::Video, false, at(660));
        assert_eq!(keyframes(&outputs(&mut r)), 1, "keyframe on unmute");
        r.on_rtp(PUB, video(120, 60_000), at(660));
        r.on_rtp(PUB, video(121, 63_000), at(693));
        let w = writes(&outputs(&mut r));
        assert_eq!(w[0].3, last.3 + 1, "no sequence gap after unmuting");
        assert_eq!(w[1].3, last.3 + 2);
        // 660 ms - 297 ms = 363 ms at 90 kHz, then the publisher's own deltas.
        assert_eq!(w[0].4, last.4 + 32_670);
        assert_eq!(w[1].4, last.4 + 32_670 + 3000);
        // Unmuting what is not muted changes nothing (no keyframe, no new source).
        r.set_muted(S, MediaKind::Video, false, at(700));
        r.on_rtp(PUB, video(122, 66_000), at(726));
        let out = outputs(&mut r);
        assert_eq!(keyframes(&out), 0);
        assert_eq!(writes(&out)[0].3, last.3 + 3);
        // A new publisher starts unmuted.
        r.set_muted(S, MediaKind::Audio, true, at(800));
        r.add_publisher(LocalPeer(8), S);
        assert!(r.on_rtp(LocalPeer(8), audio(1, 0), at(810)));
    }

    /// Defect caught: the old worker's per-slot `limiters` and `muted` entries (keyed by the
    /// slot's strings) were never removed, so every stream ever published or muted stayed in
    /// memory for the worker's life.
    #[test]
    fn removal_leaves_nothing_behind() {
        let mut r = Router::new(0);
        for round in 0..50u32 {
            let stream = StreamId(round);
            let publisher = LocalPeer(round % 4);
            r.add_publisher(publisher, stream);
            r.on_connected(publisher, at(0));
            let subs: Vec<LocalPeer> = (0..3).map(|i| LocalPeer(10 + i + round % 7)).collect();
            for s in &subs {
                r.add_subscriber(*s, stream, &av(100), at(0));
                r.on_connected(*s, at(u64::from(round)));
            }
            r.on_rtp(publisher, video(1, 0), at(u64::from(round)));
            r.on_keyframe_request(subs[0], at(u64::from(round)));
            r.set_muted(stream, MediaKind::Audio, true, at(1));
            r.set_muted(stream, MediaKind::Video, true, at(1));
            r.set_muted(stream, MediaKind::Video, false, at(2));
            r.on_interest(stream, 3, true, 1);
            assert_eq!(
                r.len(),
                RouterLen {
                    peers: 4,
                    streams: 1
                }
            );
            // Remove in a different order each round.
            if round % 2 == 0 {
                r.remove_peer(publisher);
            }
            for s in &subs {
                r.remove_peer(*s);
            }
            r.remove_peer(publisher);
            r.on_interest(stream, 3, false, 0);
            outputs(&mut r);
            assert!(r.is_empty(), "round {round}: {:?}", r.len());
        }
        // Removing an unknown peer is harmless; interest alone keeps a stream until withdrawn.
        r.remove_peer(LocalPeer(99));
        r.on_interest(S, 1, true, 1);
        assert_eq!(r.len().streams, 1);
        r.on_interest(S, 1, false, 1);
        assert!(r.is_empty());
        assert!(r.peers.is_empty(), "the peer table shrinks");
    }

    /// The keyframe asked for at subscribe time is encoded while the subscriber connects:
    /// its video from that keyframe on is held and written the moment it connects, so its
    /// first frame does not wait for a request made at the connect.
    #[test]
    fn a_new_subscribers_keyframe_is_asked_for_at_once_and_held_until_it_connects() {
        let mut r = room(0);
        r.on_rtp(PUB, delta(10, 0), at(0));
        outputs(&mut r);
        r.add_subscriber(LocalPeer(1), S, &av(101), at(10));
        assert_eq!(keyframes(&outputs(&mut r)), 1, "asked at subscribe");
        // Deltas before the keyframe are of no use to it; audio starts at the connect.
        r.on_rtp(PUB, delta(11, 3000), at(15));
        r.on_rtp(PUB, audio(50, 960), at(16));
        r.on_rtp(PUB, video(12, 6000), at(20));
        r.on_rtp(PUB, delta(13, 6000), at(21));
        r.on_rtp(PUB, delta(14, 9000), at(25));
        assert!(
            writes(&outputs(&mut r)).is_empty(),
            "nothing before the connect"
        );
        r.on_connected(LocalPeer(1), at(30));
        let out = outputs(&mut r);
        assert_eq!(keyframes(&out), 0, "its keyframe came: not asked again");
        assert_eq!(
            writes(&out),
            vec![
                (1, 1, 101, 12, 6000),
                (1, 1, 101, 13, 6000),
                (1, 1, 101, 14, 9000)
            ],
            "the held video from the keyframe on, in order"
        );
        r.on_rtp(PUB, delta(15, 12_000), at(40));
        r.on_rtp(PUB, audio(51, 1920), at(41));
        assert_eq!(
            writes(&outputs(&mut r)),
            vec![(1, 1, 101, 15, 12_000), (1, 0, 111, 51, 1920)],
            "then live, continuing the sequence"
        );
        // Nothing asked later either: it has had its keyframe.
        r.on_rtp(PUB, delta(16, 15_000), at(900));
        assert_eq!(keyframes(&outputs(&mut r)), 0);
    }

    /// A keyframe that does not reach the new subscriber (its request was lost, or the
    /// publisher was slow) is asked for again once [`KEYFRAME_WAIT`] has passed, not before,
    /// and not once one came.
    #[test]
    fn a_subscriber_still_without_a_keyframe_asks_again_after_the_wait() {
        let mut r = room(0);
        r.on_rtp(PUB, delta(1, 0), at(0));
        r.add_subscriber(LocalPeer(1), S, &av(101), at(0));
        r.on_connected(LocalPeer(1), at(10));
        assert_eq!(keyframes(&outputs(&mut r)), 1, "once, at subscribe");
        r.on_rtp(PUB, delta(2, 3000), at(100));
        r.on_rtp(PUB, delta(3, 6000), at(499));
        assert_eq!(keyframes(&outputs(&mut r)), 0, "within the wait");
        r.on_rtp(PUB, delta(4, 9000), at(500));
        assert_eq!(keyframes(&outputs(&mut r)), 1, "after the wait");
        r.on_rtp(PUB, delta(5, 12_000), at(700));
        assert_eq!(keyframes(&outputs(&mut r)), 0, "the wait starts again");
        r.on_rtp(PUB, video(6, 15_000), at(800));
        r.on_rtp(PUB, delta(7, 18_000), at(1400));
        assert_eq!(keyframes(&outputs(&mut r)), 0, "it came");
        // One that connects long after subscribing, its keyframe missed: asked at once.
        r.add_subscriber(LocalPeer(2), S, &av(102), at(2000));
        outputs(&mut r);
        r.on_rtp(PUB, delta(8, 21_000), at(2100));
        r.on_connected(LocalPeer(2), at(2600));
        assert_eq!(keyframes(&outputs(&mut r)), 1, "asked again at the connect");
        // Too much video held before a connect: dropped, and the next keyframe is waited for.
        r.add_subscriber(LocalPeer(3), S, &av(103), at(3000));
        outputs(&mut r);
        r.on_rtp(PUB, video(100, 0), at(3001));
        for i in 0..MAX_HELD as u64 {
            r.on_rtp(PUB, delta(101 + i, 0), at(3002));
        }
        r.on_rtp(PUB, video(2000, 0), at(3003));
        r.on_rtp(PUB, delta(2001, 0), at(3003));
        outputs(&mut r);
        r.on_connected(LocalPeer(3), at(3004));
        let held: Vec<u64> = writes(&outputs(&mut r))
            .iter()
            .filter(|w| w.0 == 3)
            .map(|w| w.3)
            .collect();
        assert_eq!(
            held,
            vec![2000, 2001],
            "from the keyframe after the overflow"
        );
    }

    /// A packet of simulcast layer `layer` (of two; SSRC 100 + layer), a keyframe start or not.
    fn layered(layer: Layer, seq: u64, ts: u32, key: bool) -> RtpIn {
        let base = if key { video(seq, ts) } else { delta(seq, ts) };
        RtpIn {
            ssrc: 100 + u32::from(layer),
            layer,
            layers: 2,
            ..base
        }
    }

    fn wanted(out: &[Output]) -> Vec<u32> {
        out.iter()
            .filter_map(|o| match o {
                Output::LayersWanted { publisher, layers } if *publisher == PUB => Some(*layers),
                _ => None,
            })
            .collect()
    }

    fn layer_requests(out: &[Output]) -> Vec<Option<Layer>> {
        out.iter()
            .filter_map(|o| match o {
                Output::RequestKeyframe { layer, .. } => Some(*layer),
                _ => None,
            })
            .collect()
    }

    fn changes(out: &[Output]) -> Vec<(u32, Layer, bool)> {
        out.iter()
            .filter_map(|o| match o {
                Output::LayerChanged {
                    peer,
                    layer,
                    bandwidth,
                    ..
                } => Some((peer.0, *layer, *bandwidth)),
                _ => None,
            })
            .collect()
    }

    fn two_layers() -> Subscription {
        Subscription {
            layers: 2,
            ..Subscription::default()
        }
    }

    #[test]
    fn a_subscriber_switches_layers_only_at_a_keyframe_and_its_stream_stays_continuous() {
        let mut r = room(0);
        r.add_subscriber_with(LocalPeer(1), S, &av(101), &two_layers(), at(0));
        r.on_connected(LocalPeer(1), at(0));
        let out = outputs(&mut r);
        // Big by default: the big layer's keyframe is asked for (the publisher has sent no
        // video yet, so it is asked with its first packet).
        assert!(layer_requests(&out).is_empty());
        // Small-layer packets are not for it; the big layer's delta frame neither (no
        // reference yet); the big keyframe starts it.
        r.on_rtp(PUB, layered(0, 10, 500, true), at(10));
        r.on_rtp(PUB, layered(1, 70, 9000, false), at(11));
        let out = outputs(&mut r);
        assert!(writes(&out).is_empty(), "{out:?}");
        r.on_rtp(PUB, layered(1, 71, 12_000, true), at(40));
        r.on_rtp(PUB, layered(1, 72, 12_000, false), at(41));
        r.on_rtp(PUB, layered(0, 11, 3500, false), at(42));
        let out = outputs(&mut r);
        assert_eq!(
            writes(&out),
            vec![(1, 1, 101, 71, 12_000), (1, 1, 101, 72, 12_000)]
        );
        assert_eq!(changes(&out), vec![(1, 1, false)]);
        // It asks for the small layer: that layer's keyframe is asked for, at once.
        assert!(r.set_video_type(LocalPeer(1), VideoStreamType::Small, at(100)));
        assert_eq!(layer_requests(&outputs(&mut r)), vec![Some(0)]);
        // Until it comes, the big layer flows and small deltas are dropped.
        r.on_rtp(PUB, layered(0, 12, 6500, false), at(110));
        r.on_rtp(PUB, layered(1, 73, 15_000, false), at(111));
        let w = writes(&outputs(&mut r));
        assert_eq!(w, vec![(1, 1, 101, 73, 15_000)]);
        // The small keyframe: the switch. The output goes on at 74, its timestamp advanced
        // by the wall time since the last big packet (22 ms = 1980 ticks), then follows the
        // small layer's own spacing.
        r.on_rtp(PUB, layered(0, 13, 9500, true), at(133));
        r.on_rtp(PUB, layered(1, 74, 18_000, false), at(134));
        r.on_rtp(PUB, layered(0, 14, 12_500, false), at(166));
        let out = outputs(&mut r);
        assert_eq!(
            writes(&out),
            vec![
                (1, 1, 101, 74, 15_000 + 1980),
                (1, 1, 101, 75, 15_000 + 1980 + 3000)
            ]
        );
        assert_eq!(changes(&out), vec![(1, 0, false)]);
        assert_eq!(r.layer_of(LocalPeer(1)), Some(0));
        // Audio is never filtered by layer.
        r.on_rtp(PUB, audio(1, 960), at(170));
        assert_eq!(writes(&outputs(&mut r)).len(), 1);
    }

    #[test]
    fn a_switch_whose_keyframe_does_not_come_asks_again() {
        let mut r = room(0);
        r.add_subscriber_with(LocalPeer(1), S, &av(101), &two_layers(), at(0));
        r.on_connected(LocalPeer(1), at(0));
        r.on_rtp(PUB, layered(1, 1, 0, true), at(10));
        outputs(&mut r);
        r.set_video_type(LocalPeer(1), VideoStreamType::Small, at(20));
        assert_eq!(layer_requests(&outputs(&mut r)), vec![Some(0)]);
        r.on_rtp(PUB, layered(0, 1, 0, false), at(300));
        assert!(layer_requests(&outputs(&mut r)).is_empty(), "not yet");
        r.on_rtp(PUB, layered(0, 2, 0, false), at(520));
        assert_eq!(
            layer_requests(&outputs(&mut r)),
            vec![Some(0)],
            "500 ms later"
        );
    }

    #[test]
    fn the_publisher_is_told_which_layers_anybody_receives() {
        let mut r = room(0);
        // Nobody subscribes: every layer is wanted.
        r.on_rtp(PUB, layered(0, 1, 0, true), at(0));
        assert_eq!(wanted(&outputs(&mut r)), vec![0b11]);
        // One small subscriber: only the small layer.
        let small = Subscription {
            video_type: VideoStreamType::Small,
            ..two_layers()
        };
        r.add_subscriber_with(LocalPeer(1), S, &av(101), &small, at(10));
        assert_eq!(wanted(&outputs(&mut r)), vec![0b01]);
        // A big one too: both (and its keyframe is of the big layer).
        r.add_subscriber_with(LocalPeer(2), S, &av(102), &two_layers(), at(20));
        let out = outputs(&mut r);
        assert_eq!(wanted(&out), vec![0b11]);
        assert_eq!(layer_requests(&out), vec![Some(1)]);
        // The small one leaves: the big layer only.
        r.remove_peer(LocalPeer(1));
        assert_eq!(wanted(&outputs(&mut r)), vec![0b10]);
        // A subscriber on worker 2 receives the small layer: both again; it goes: big only.
        r.on_interest(S, 2, true, 0b01);
        assert_eq!(wanted(&outputs(&mut r)), vec![0b11]);
        r.on_interest(S, 2, false, 0);
        assert_eq!(wanted(&outputs(&mut r)), vec![0b10]);
        // Switching to small: both while switching, the small one alone after.
        r.on_connected(LocalPeer(2), at(30));
        r.on_rtp(PUB, layered(1, 1, 0, true), at(40));
        r.set_video_type(LocalPeer(2), VideoStreamType::Small, at(50));
        assert_eq!(wanted(&outputs(&mut r)), vec![0b11]);
        r.on_rtp(PUB, layered(0, 2, 3000, true), at(60));
        assert_eq!(wanted(&outputs(&mut r)), vec![0b01]);
        // The last subscriber leaves: every layer again. Nothing for a stream of one layer.
        r.remove_peer(LocalPeer(2));
        assert_eq!(wanted(&outputs(&mut r)), vec![0b11]);
        let mut one = room(1);
        one.on_rtp(PUB, video(1, 0), at(0));
        assert!(wanted(&outputs(&mut one)).is_empty());
    }

    #[test]
    fn a_remote_worker_tells_the_layers_its_subscribers_want() {
        let mut b = Router::new(2);
        let small = Subscription {
            video_type: VideoStreamType::Small,
            ..two_layers()
        };
        b.add_subscriber_with(LocalPeer(0), S, &av(100), &small, at(0));
        let out = outputs(&mut b);
        assert!(
            matches!(
                out[..],
                [
                    Output::Interest {
                        stream: S,
                        wants: true,
                        layers: 0b01
                    },
                    Output::RelayKeyframe {
                        stream: S,
                        force: true,
                        layer: Some(0)
                    }
                ]
            ),
            "{out:?}"
        );
        b.set_video_type(LocalPeer(0), VideoStreamType::Big, at(10));
        let out = outputs(&mut b);
        assert!(
            out.iter().any(|o| matches!(
                o,
                Output::Interest {
                    layers: 0b10,
                    wants: true,
                    ..
                }
            )),
            "{out:?}"
        );
    }

    #[test]
    fn the_bandwidth_estimate_moves_a_subscriber_down_at_once_and_up_with_hysteresis() {
        let mut r = room(0);
        let sub = Subscription {
            bitrates: vec![150_000, 1_200_000],
            ..two_layers()
        };
        r.add_subscriber_with(LocalPeer(1), S, &av(101), &sub, at(0));
        r.on_connected(LocalPeer(1), at(0));
        r.on_rtp(PUB, layered(1, 1, 0, true), at(10));
        assert_eq!(changes(&outputs(&mut r)), vec![(1, 1, false)]);
        // Plenty: nothing changes.
        r.on_estimate(LocalPeer(1), 3_000_000, at(100));
        assert!(layer_requests(&outputs(&mut r)).is_empty());
        // The estimate falls below the big layer: the small layer's keyframe at once.
        r.on_estimate(LocalPeer(1), 400_000, at(200));
        assert_eq!(layer_requests(&outputs(&mut r)), vec![Some(0)]);
        r.on_rtp(PUB, layered(0, 5, 0, true), at(230));
        assert_eq!(changes(&outputs(&mut r)), vec![(1, 0, true)]);
        // Room again: up only after it has lasted 3 s (with 25% headroom).
        r.on_estimate(LocalPeer(1), 1_600_000, at(1000));
        r.on_estimate(LocalPeer(1), 1_600_000, at(3900));
        assert!(layer_requests(&outputs(&mut r)).is_empty(), "held");
        r.on_estimate(LocalPeer(1), 1_600_000, at(4000));
        assert_eq!(layer_requests(&outputs(&mut r)), vec![Some(1)]);
        r.on_rtp(PUB, layered(1, 9, 0, true), at(4030));
        assert_eq!(changes(&outputs(&mut r)), vec![(1, 1, true)]);
        // An estimate never lifts it above what it asked for.
        r.set_video_type(LocalPeer(1), VideoStreamType::Small, at(5000));
        r.on_rtp(PUB, layered(0, 10, 0, true), at(5030));
        assert_eq!(changes(&outputs(&mut r)), vec![(1, 0, false)]);
        r.on_estimate(LocalPeer(1), 5_000_000, at(6000));
        r.on_estimate(LocalPeer(1), 5_000_000, at(9000));
        assert!(layer_requests(&outputs(&mut r)).is_empty());
    }

    /// (peer, kind, layer, seq, ts) of each packet for a pipe.
    fn piped(r: &mut Router) -> Vec<(u32, MediaKind, Layer, u64, u32)> {
        std::iter::from_fn(|| r.poll_piped())
            .map(|(p, k)| (p.0, k.kind, k.layer, k.seq, k.ts))
            .collect()
    }

    fn sources(r: &mut Router) -> Vec<u64> {
        std::iter::from_fn(|| r.poll_piped())
            .map(|(_, k)| k.source)
            .collect()
    }

    /// A pipe takes every packet of every layer as the publisher sent it (a subscriber of
    /// the small layer beside it gets that layer only, rewritten), shares its payload, and
    /// gets nothing of a muted kind; a new publisher or an unmute shows as a new source.
    #[test]
    fn a_pipe_gets_every_layer_as_received_and_no_muted_kind() {
        let mut r = room(0);
        let small = Subscription {
            video_type: VideoStreamType::Small,
            ..two_layers()
        };
        r.add_subscriber_with(LocalPeer(1), S, &av(101), &small, at(0));
        r.on_connected(LocalPeer(1), at(0));
        r.add_pipe(LocalPeer(2), S, at(0));
        outputs(&mut r);
        let key = layered(0, 10, 500, true);
        let payload = key.payload.clone();
        r.on_rtp(PUB, key, at(10));
        r.on_rtp(PUB, layered(1, 70, 9000, false), at(11));
        r.on_rtp(PUB, audio(5, 960), at(12));
        let out = outputs(&mut r);
        assert_eq!(
            writes(&out),
            vec![(1, 1, 101, 10, 500), (1, 0, 111, 5, 960)]
        );
        let got: Vec<_> = std::iter::from_fn(|| r.poll_piped()).collect();
        assert_eq!(
            got.iter()
                .map(|(p, k)| (p.0, k.kind, k.layer, k.layers, k.seq, k.ts))
                .collect::<Vec<_>>(),
            vec![
                (2, MediaKind::Video, 0, 2, 10, 500),
                (2, MediaKind::Video, 1, 2, 70, 9000),
                (2, MediaKind::Audio, 0, 1, 5, 960)
            ]
        );
        assert!(
            Arc::ptr_eq(&got[0].1.payload, &payload),
            "the payload is shared"
        );
        assert!(got.iter().all(|(_, k)| k.stream == S));
        let video_source = got[0].1.source;
        assert_eq!(got[1].1.source, video_source ^ 1, "each layer its SSRC");

        // Muted video is not piped; audio still is.
        r.set_muted(S, MediaKind::Video, true, at(20));
        r.on_rtp(PUB, layered(0, 11, 3500, false), at(21));
        r.on_rtp(PUB, audio(6, 1920), at(22));
        outputs(&mut r);
        assert_eq!(piped(&mut r), vec![(2, MediaKind::Audio, 0, 6, 1920)]);
        // Unmuted: a new source, sequence numbers as received.
        r.set_muted(S, MediaKind::Video, false, at(30));
        r.on_rtp(PUB, layered(0, 40, 9000, true), at(31));
        outputs(&mut r);
        let s = sources(&mut r);
        assert_eq!(s.len(), 1);
        assert_ne!(s[0], video_source, "a new source after the unmute");

        // A new publisher: the pipe gets its numbers as they are (the subscriber's continue).
        r.add_publisher(LocalPeer(3), S);
        r.on_rtp(LocalPeer(3), layered(0, 5000, 123, true), at(40));
        let out = outputs(&mut r);
        assert_eq!(piped(&mut r), vec![(2, MediaKind::Video, 0, 5000, 123)]);
        assert_eq!(
            writes(&out).iter().map(|w| w.3).collect::<Vec<_>>(),
            vec![12]
        );
    }

    /// A pipe wants every layer (the publisher is told so) and gets its keyframe at once,
    /// past the limiter; before the publisher's first video, with its first packet.
    #[test]
    fn a_pipe_wants_every_layer_and_its_keyframe_is_forced() {
        let mut r = room(0);
        r.on_rtp(PUB, layered(0, 1, 0, true), at(0));
        assert_eq!(wanted(&outputs(&mut r)), vec![0b11]);
        let small = Subscription {
            video_type: VideoStreamType::Small,
            ..two_layers()
        };
        r.add_subscriber_with(LocalPeer(1), S, &av(101), &small, at(10));
        let out = outputs(&mut r);
        assert_eq!(wanted(&out), vec![0b01]);
        assert_eq!(layer_requests(&out), vec![Some(0)]);
        // 10 ms later: the limiter would refuse, a new pipe's request is forced.
        r.add_pipe(LocalPeer(2), S, at(20));
        let out = outputs(&mut r);
        assert_eq!(wanted(&out), vec![0b11]);
        assert_eq!(layer_requests(&out), vec![None], "every layer's keyframe");
        assert!(
            out.iter().any(|o| matches!(
                o,
                Output::Interest {
                    wants: true,
                    layers: u32::MAX,
                    ..
                }
            )),
            "the other workers are told: every layer ({out:?})"
        );
        // Gone: the small subscriber's layer only, nothing more for the pipe.
        r.remove_peer(LocalPeer(2));
        assert_eq!(wanted(&outputs(&mut r)), vec![0b01]);
        r.on_rtp(PUB, layered(1, 2, 0, false), at(30));
        outputs(&mut r);
        assert!(r.poll_piped().is_none());

        // A publisher that has sent no video yet: asked with its first packet.
        let mut r = Router::new(0);
        r.add_publisher(PUB, S);
        r.add_pipe(LocalPeer(1), S, at(0));
        assert_eq!(keyframes(&outputs(&mut r)), 0);
        r.on_rtp(PUB, delta(1, 0), at(5));
        assert_eq!(keyframes(&outputs(&mut r)), 1);
        assert_eq!(piped(&mut r), vec![(1, MediaKind::Video, 0, 1, 0)]);
    }

    /// On a worker without the publisher, a pipe announces an interest in every layer and
    /// relays its forced keyframe request; it gets the forwarded packets; removed, it
    /// leaves nothing behind.
    #[test]
    fn a_pipe_on_another_worker_announces_every_layer_and_leaves_nothing() {
        let mut b = Router::new(2);
        b.add_pipe(LocalPeer(0), S, at(0));
        let out = outputs(&mut b);
        assert!(
            matches!(
                out[..],
                [
                    Output::Interest {
                        stream: S,
                        wants: true,
                        layers: u32::MAX
                    },
                    Output::RelayKeyframe {
                        stream: S,
                        force: true,
                        layer: None
                    }
                ]
            ),
            "{out:?}"
        );
        b.on_forward(&RoutedPacket {
            stream: S,
            kind: MediaKind::Video,
            codec: Some(VideoCodec::Vp8),
            source: 42,
            seq: 9,
            ts: 99,
            marker: true,
            clock_rate: 90_000,
            arrival: at(1),
            layer: 2,
            layers: 3,
            payload: Arc::from(&[1u8][..]),
        });
        assert!(outputs(&mut b).is_empty());
        let (peer, p) = b.poll_piped().expect("the forwarded packet");
        assert_eq!(peer, LocalPeer(0));
        assert_eq!(
            (p.source, p.seq, p.ts, p.marker, p.layer),
            (42, 9, 99, true, 2)
        );
        // Queued packets of a pipe that goes are dropped with it.
        b.on_forward(&p);
        b.remove_peer(LocalPeer(0));
        let out = outputs(&mut b);
        assert!(
            matches!(
                out[..],
                [Output::Interest {
                    stream: S,
                    wants: false,
                    ..
                }]
            ),
            "{out:?}"
        );
        assert!(b.poll_piped().is_none());
        assert!(b.is_empty(), "{:?}", b.len());

        // The publisher's worker: that interest asks for every layer it has.
        let mut r = room(0);
        r.on_rtp(PUB, layered(0, 1, 0, true), at(0));
        r.add_subscriber_with(
            LocalPeer(1),
            S,
            &av(101),
            &Subscription {
                video_type: VideoStreamType::Small,
                ..two_layers()
            },
            at(0),
        );
        outputs(&mut r);
        r.on_interest(S, 2, true, u32::MAX);
        assert_eq!(wanted(&outputs(&mut r)), vec![0b11]);
        // A pipe here too, then everything goes: nothing left.
        r.add_pipe(LocalPeer(2), S, at(5));
        for p in [1, 2, 0] {
            r.remove_peer(LocalPeer(p));
        }
        r.on_interest(S, 2, false, 0);
        outputs(&mut r);
        assert!(r.is_empty(), "{:?}", r.len());
    }
}
