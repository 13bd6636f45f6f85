//! The SFU media plane: WebRTC peers on str0m (RTP mode, ICE-lite), driven by media workers.
//!
//! Each **media worker** is a thread with its own UDP socket and a set of peers (one str0m
//! `Rtc` each). A publisher's uplink is one peer; each subscription is one peer (one downlink
//! per subscribed stream, as the TRTC v4 Web SDK does). Packets from a publisher are forwarded
//! to the subscribers on the same worker directly and to each other worker that has
//! subscribers for that stream with one message per packet per worker, so a large room's
//! fan-out (encryption and sends) is spread over all workers, i.e. all cores.
//!
//! The server never decodes. It rewrites sequence numbers and timestamps per subscriber
//! ([`rewrite::SeqRewriter`]) so a publisher restart does not break a subscriber's stream,
//! relays keyframe requests to the publisher (at most one a second per stream, plus one at
//! once for a new subscriber), and lets str0m answer NACKs from its per-stream send buffer and
//! send SR/RR reports.

pub mod rewrite;
pub mod sdp;
pub mod stun;
mod worker;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rtcroom_protocol::signal::{MediaKind, StreamType, VideoCodec};
use rtcroom_protocol::{ErrorCode, RtcError, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::room::RoomKey;
use worker::{Cmd, Worker};

/// Requested UDP socket buffer size per worker (both directions).
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

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

/// A published stream's publisher peer and what it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublisherInfo {
    /// The publisher's peer.
    pub peer: PeerId,
    /// Its video format (none: audio only).
    pub video: Option<sdp::VideoFormat>,
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
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            workers: 0,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            public_ip: None,
            connect_timeout_s: 10.0,
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
    workers: Vec<mpsc::UnboundedSender<Cmd>>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    next_worker: AtomicUsize,
    next_id: AtomicU64,
    /// Each published stream's publisher peer (for keyframe requests) and video format (for
    /// subscriptions).
    publishers: Arc<RwLock<HashMap<SlotKey, PublisherInfo>>>,
    stats: Arc<MediaStats>,
    addrs: Vec<SocketAddr>,
    peer_stats: PeerStatsTable,
}

fn worker_of(id: PeerId) -> usize {
    (id & 0xff) as usize
}

fn stream_type_name(t: StreamType) -> &'static str {
    match t {
        StreamType::Main => "main",
        StreamType::Auxiliary => "auxiliary",
    }
}

/// Parse an offer for str0m. The error says what is wrong without str0m's parser internals
/// (its `Display` names a byte offset as a pointer, which is no use to a client).
fn parse_offer(sdp: &str) -> Result<str0m::change::SdpOffer, RtcError> {
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
        let publishers = Arc::new(RwLock::new(HashMap::new()));
        let peer_stats: PeerStatsTable = Arc::new(RwLock::new(HashMap::new()));
        let mut txs = Vec::with_capacity(n);
        let mut rxs = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            txs.push(tx);
            rxs.push(rx);
        }
        let mut threads = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        for (idx, rx) in rxs.into_iter().enumerate() {
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
            let worker = Worker::new(
                idx,
                socket,
                announced,
                txs.clone(),
                rx,
                cert.clone(),
                stats.clone(),
                publishers.clone(),
                peer_stats.clone(),
                Duration::from_secs_f64(config.connect_timeout_s),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("rtcroom-media-{idx}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(MediaPlane {
            inner: Arc::new(Inner {
                workers: txs,
                threads: std::sync::Mutex::new(threads),
                next_worker: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                publishers,
                stats,
                addrs,
                peer_stats,
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

    fn new_peer(&self) -> (PeerId, usize) {
        let w = self.inner.next_worker.fetch_add(1, Ordering::Relaxed) % self.inner.workers.len();
        let id = (self.inner.next_id.fetch_add(1, Ordering::Relaxed) << 8) | w as u64;
        (id, w)
    }

    fn send(&self, worker: usize, cmd: Cmd) {
        if let Some(tx) = self.inner.workers.get(worker) {
            let _ = tx.send(cmd);
        }
    }

    fn broadcast(&self, make: impl Fn() -> Cmd) {
        for tx in &self.inner.workers {
            let _ = tx.send(make());
        }
    }

    async fn ask(
        &self,
        worker: usize,
        make: impl FnOnce(oneshot::Sender<Result<String, RtcError>>) -> Cmd,
    ) -> Result<String, RtcError> {
        let (tx, rx) = oneshot::channel();
        self.send(worker, make(tx));
        rx.await.unwrap_or_else(|_| {
            Err(RtcError::new(
                ErrorCode::Unknown,
                "the media worker stopped",
            ))
        })
    }

    /// Accept a publisher's SDP offer for `slot`. The answer carries exactly one video codec:
    /// the first of the offer's that the server forwards ([`sdp::choose_publish_codec`]). A
    /// previous publisher peer of the same slot is replaced (subscribers continue).
    pub async fn publish(&self, slot: SlotKey, offer: &str) -> Result<Published, RtcError> {
        let offer = sdp::prepare_offer(offer);
        let video = sdp::choose_publish_codec(&sdp::parse_media(&offer))
            .map_err(|e| RtcError::new(ErrorCode::NotSupported, e))?;
        let parsed = parse_offer(&offer)?;
        let (id, w) = self.new_peer();
        let old = self
            .inner
            .publishers
            .read()
            .ok()
            .and_then(|p| p.get(&slot).map(|i| i.peer));
        let answer = self
            .ask(w, |reply| Cmd::AddPublisher {
                id,
                slot: slot.clone(),
                offer: parsed,
                video,
                reply,
            })
            .await?;
        if let Ok(mut p) = self.inner.publishers.write() {
            p.insert(slot, PublisherInfo { peer: id, video });
        }
        if let Some(old) = old {
            self.send(worker_of(old), Cmd::Remove { id: old });
        }
        Ok(Published {
            peer: id,
            answer,
            video_codec: video.map(|v| v.codec),
        })
    }

    /// Accept a subscriber's SDP offer (recvonly) for `slot`'s audio and/or video.
    pub async fn subscribe(
        &self,
        slot: SlotKey,
        audio: bool,
        video: bool,
        offer: &str,
    ) -> Result<(PeerId, String), RtcError> {
        if !audio && !video {
            return Err(RtcError::invalid_operation(
                None,
                "subscribe needs audio, video or both",
            ));
        }
        let offer = sdp::prepare_offer(offer);
        let lines = sdp::parse_media(&offer);
        let codec = self
            .inner
            .publishers
            .read()
            .ok()
            .and_then(|p| p.get(&slot).and_then(|i| i.video));
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
        let (id, w) = self.new_peer();
        let answer = self
            .ask(w, |reply| Cmd::AddSubscriber {
                id,
                slot: slot.clone(),
                audio,
                video,
                offer: parsed,
                lines,
                codec,
                reply,
            })
            .await?;
        // The worker has told every worker that it now wants the slot's packets; it asks the
        // publisher for a keyframe once the subscriber has connected.
        Ok((id, answer))
    }

    /// Ask the publisher of `slot` for a keyframe (rate-limited unless `force`).
    pub fn request_keyframe(&self, slot: &SlotKey, force: bool) {
        let publisher = self
            .inner
            .publishers
            .read()
            .ok()
            .and_then(|p| p.get(slot).map(|i| i.peer));
        if let Some(p) = publisher {
            self.send(
                worker_of(p),
                Cmd::KeyframeRequest {
                    slot: slot.clone(),
                    force,
                },
            );
        }
    }

    /// Close a publisher peer (unpublish).
    pub fn unpublish(&self, slot: &SlotKey, id: PeerId) {
        if let Ok(mut p) = self.inner.publishers.write()
            && p.get(slot).map(|i| i.peer) == Some(id)
        {
            p.remove(slot);
        }
        self.send(worker_of(id), Cmd::Remove { id });
    }

    /// Close a subscriber peer (unsubscribe).
    pub fn unsubscribe(&self, id: PeerId) {
        self.send(worker_of(id), Cmd::Remove { id });
    }

    /// Stop or resume forwarding one kind of a stream (mute / unmute).
    pub fn set_muted(&self, slot: &SlotKey, kind: MediaKind, muted: bool) {
        self.broadcast(|| Cmd::Mute {
            slot: slot.clone(),
            kind,
            muted,
        });
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
        self.broadcast(|| Cmd::Shutdown);
        let threads = match self.inner.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for t in threads {
            let _ = t.join();
        }
    }
}
