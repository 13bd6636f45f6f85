//! The media router (one worker's forwarding state machine) under fuzzed RTP input,
//! keyframe requests, mute toggles, interest from other workers and peers coming and going,
//! simulcast layers, layer choices and bandwidth estimates, in virtual time. Starts from a
//! connected publisher and subscriber of one stream.
//!
//! Checked on every output: writes go only to connected subscribers of the packet's stream,
//! on a track of the packet's kind and codec with that track's payload type; keyframe
//! requests only to a current publisher; forwards only to other, valid workers; layer
//! changes only of subscribers, within the stream's layers; wanted layers only to
//! publishers. At the end,
//! removing every peer and every interest leaves the router empty.

#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rtcroom_protocol::signal::{MediaKind, VideoCodec, VideoStreamType};
use rtcroom_server::media::router::{
    LocalPeer, MAX_WORKERS, Output, RoutedPacket, Router, RtpIn, StreamId, Subscription, TrackSpec,
};

const ME: usize = 3;
const PEERS: u8 = 12;
const STREAMS: u8 = 4;

static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Audio,
    H264,
    Vp8,
}

impl Kind {
    fn media(self) -> MediaKind {
        match self {
            Kind::Audio => MediaKind::Audio,
            _ => MediaKind::Video,
        }
    }
    fn codec(self) -> Option<VideoCodec> {
        match self {
            Kind::Audio => None,
            Kind::H264 => Some(VideoCodec::H264),
            Kind::Vp8 => Some(VideoCodec::Vp8),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Rtp {
        peer: u8,
        kind: Kind,
        ssrc: u32,
        seq: u64,
        ts: u32,
        marker: bool,
        clock_rate: u32,
        len: u8,
        /// The payload's first bytes (a keyframe start, or not).
        head: [u8; 4],
        layer: u8,
        layers: u8,
    },
    Forward {
        stream: u8,
        kind: Kind,
        source: u64,
        seq: u64,
        ts: u32,
        clock_rate: u32,
        layer: u8,
        layers: u8,
    },
    KeyframeRequest {
        peer: u8,
    },
    RequestKeyframe {
        stream: u8,
        force: bool,
        layer: Option<u8>,
    },
    SetVideoType {
        peer: u8,
        small: bool,
    },
    Estimate {
        peer: u8,
        bps: u32,
    },
    Mute {
        stream: u8,
        video: bool,
        muted: bool,
    },
    Interest {
        stream: u8,
        worker: u16,
        wants: bool,
        layers: u32,
    },
    WorkerReset {
        worker: u16,
    },
    AddPublisher {
        peer: u8,
        stream: u8,
    },
    AddSubscriber {
        peer: u8,
        stream: u8,
        tracks: Vec<(Kind, u8)>,
        layers: u8,
        small: bool,
        bitrates: Vec<u32>,
    },
    Connected {
        peer: u8,
    },
    Remove {
        peer: u8,
    },
    Advance {
        ms: u16,
    },
}

#[derive(Debug)]
enum Role {
    Publisher,
    Subscriber(Vec<TrackSpec>),
}

/// What the harness knows of the router's peers.
#[derive(Default)]
struct Model {
    peers: HashMap<u32, (StreamId, Role, bool)>,
    /// (stream, worker) interests given.
    interests: BTreeSet<(u32, usize)>,
}

fn check(r: &mut Router, m: &Model, sent: Option<(StreamId, Kind)>) {
    while let Some(o) = r.poll_output() {
        match o {
            Output::Write {
                peer,
                track,
                kind,
                pt,
                ..
            } => {
                let Some((stream, Role::Subscriber(tracks), connected)) = m.peers.get(&peer.0)
                else {
                    panic!("write to {peer:?}, not a subscriber");
                };
                assert!(*connected, "write to an unconnected subscriber");
                let spec = tracks
                    .get(track)
                    .expect("write to a track it does not have");
                assert_eq!(spec.pt, pt);
                assert_eq!(spec.kind, kind);
                if let Some((s, k)) = sent {
                    assert_eq!(*stream, s, "write to a subscriber of another stream");
                    assert_eq!((spec.kind, spec.codec), (k.media(), k.codec()));
                }
            }
            Output::RequestKeyframe { publisher, .. } => {
                assert!(
                    matches!(m.peers.get(&publisher.0), Some((_, Role::Publisher, _))),
                    "keyframe request to {publisher:?}, not a publisher"
                );
            }
            Output::Forward { worker, packet } => {
                assert!(worker != ME && worker < MAX_WORKERS, "forward to {worker}");
                if let Some((s, k)) = sent {
                    assert_eq!(packet.stream, s);
                    assert_eq!(packet.kind, k.media());
                }
            }
            Output::LayerChanged {
                peer,
                layer,
                layers,
                ..
            } => {
                assert!(
                    matches!(m.peers.get(&peer.0), Some((_, Role::Subscriber(_), _))),
                    "layer change of {peer:?}, not a subscriber"
                );
                assert!(layer < layers, "layer {layer} of {layers}");
            }
            Output::ResetEstimate { peer, .. } => {
                assert!(
                    matches!(m.peers.get(&peer.0), Some((_, Role::Subscriber(_), _))),
                    "estimate reset of {peer:?}, not a subscriber"
                );
            }
            Output::LayersWanted { publisher, .. } => {
                assert!(
                    matches!(m.peers.get(&publisher.0), Some((_, Role::Publisher, _))),
                    "wanted layers told to {publisher:?}, not a publisher"
                );
            }
            Output::RelayKeyframe { .. } | Output::Interest { .. } => {}
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut r = Router::new(ME);
    let mut m = Model::default();
    let mut now = *BASE;
    let av = |pt: u8| {
        vec![
            TrackSpec {
                kind: MediaKind::Audio,
                codec: None,
                pt: 111,
            },
            TrackSpec {
                kind: MediaKind::Video,
                codec: Some(VideoCodec::H264),
                pt,
            },
        ]
    };
    // A connected publisher (peer 0) and subscriber (peer 1) of stream 0.
    r.add_publisher(LocalPeer(0), StreamId(0));
    m.peers.insert(0, (StreamId(0), Role::Publisher, false));
    r.add_subscriber(LocalPeer(1), StreamId(0), &av(102), now);
    m.peers
        .insert(1, (StreamId(0), Role::Subscriber(av(102)), false));
    for p in [0, 1] {
        r.on_connected(LocalPeer(p), now);
        if let Some(e) = m.peers.get_mut(&p) {
            e.2 = true;
        }
    }
    check(&mut r, &m, None);

    for op in ops {
        match op {
            Op::Rtp {
                peer,
                kind,
                ssrc,
                seq,
                ts,
                marker,
                clock_rate,
                len,
                head,
                layer,
                layers,
            } => {
                let peer = u32::from(peer % PEERS);
                let mut payload = vec![0xa5; usize::from(len)];
                let n = payload.len().min(head.len());
                payload[..n].copy_from_slice(&head[..n]);
                let packet = RtpIn {
                    kind: kind.media(),
                    codec: kind.codec(),
                    ssrc,
                    seq,
                    ts,
                    marker,
                    clock_rate,
                    layer,
                    layers,
                    payload: Arc::from(payload),
                };
                let taken = r.on_rtp(LocalPeer(peer), packet, now);
                let stream = m.peers.get(&peer).map(|e| e.0);
                if taken {
                    assert!(
                        matches!(m.peers.get(&peer), Some((_, Role::Publisher, _))),
                        "a packet of {peer}, not a publisher, was taken"
                    );
                }
                check(&mut r, &m, stream.filter(|_| taken).map(|s| (s, kind)));
                continue;
            }
            Op::Forward {
                stream,
                kind,
                source,
                seq,
                ts,
                clock_rate,
                layer,
                layers,
            } => {
                let stream = StreamId(u32::from(stream % STREAMS));
                r.on_forward(&RoutedPacket {
                    stream,
                    kind: kind.media(),
                    codec: kind.codec(),
                    source,
                    seq,
                    ts,
                    marker: false,
                    clock_rate,
                    arrival: now,
                    layer,
                    layers,
                    payload: Arc::from(&[1u8, 2, 3][..]),
                });
                check(&mut r, &m, Some((stream, kind)));
                continue;
            }
            Op::KeyframeRequest { peer } => {
                r.on_keyframe_request(LocalPeer(u32::from(peer % PEERS)), now)
            }
            Op::RequestKeyframe {
                stream,
                force,
                layer,
            } => r.request_keyframe(StreamId(u32::from(stream % STREAMS)), force, layer, now),
            Op::SetVideoType { peer, small } => {
                let want = if small {
                    VideoStreamType::Small
                } else {
                    VideoStreamType::Big
                };
                r.set_video_type(LocalPeer(u32::from(peer % PEERS)), want, now);
            }
            Op::Estimate { peer, bps } => {
                r.on_estimate(LocalPeer(u32::from(peer % PEERS)), u64::from(bps), now)
            }
            Op::Mute {
                stream,
                video,
                muted,
            } => {
                let kind = if video {
                    MediaKind::Video
                } else {
                    MediaKind::Audio
                };
                r.set_muted(StreamId(u32::from(stream % STREAMS)), kind, muted, now)
            }
            Op::Interest {
                stream,
                worker,
                wants,
                layers,
            } => {
                let (stream, worker) = (u32::from(stream % STREAMS), usize::from(worker % 300));
                r.on_interest(StreamId(stream), worker, wants, layers);
                if wants {
                    m.interests.insert((stream, worker));
                }
            }
            Op::WorkerReset { worker } => r.on_worker_reset(usize::from(worker % 300)),
            Op::AddPublisher { peer, stream } => {
                let (peer, stream) = (
                    u32::from(peer % PEERS),
                    StreamId(u32::from(stream % STREAMS)),
                );
                r.add_publisher(LocalPeer(peer), stream);
                m.peers.insert(peer, (stream, Role::Publisher, false));
            }
            Op::AddSubscriber {
                peer,
                stream,
                tracks,
                layers,
                small,
                bitrates,
            } => {
                let (peer, stream) = (
                    u32::from(peer % PEERS),
                    StreamId(u32::from(stream % STREAMS)),
                );
                let tracks: Vec<TrackSpec> = tracks
                    .into_iter()
                    .take(4)
                    .map(|(k, pt)| TrackSpec {
                        kind: k.media(),
                        codec: k.codec(),
                        pt,
                    })
                    .collect();
                let options = Subscription {
                    layers,
                    video_type: if small {
                        VideoStreamType::Small
                    } else {
                        VideoStreamType::Big
                    },
                    bitrates: bitrates.into_iter().take(4).map(u64::from).collect(),
                };
                r.add_subscriber_with(LocalPeer(peer), stream, &tracks, &options, now);
                m.peers
                    .insert(peer, (stream, Role::Subscriber(tracks), false));
            }
            Op::Connected { peer } => {
                let peer = u32::from(peer % PEERS);
                r.on_connected(LocalPeer(peer), now);
                if let Some(e) = m.peers.get_mut(&peer) {
                    e.2 = true;
                }
            }
            Op::Remove { peer } => {
                let peer = u32::from(peer % PEERS);
                r.remove_peer(LocalPeer(peer));
                m.peers.remove(&peer);
            }
            Op::Advance { ms } => now += Duration::from_millis(u64::from(ms)),
        }
        check(&mut r, &m, None);
        assert_eq!(r.len().peers, m.peers.len());
    }

    // Everyone leaves and every other worker loses interest: nothing may be left behind.
    // One at a time, checked as they go (a subscriber leaving tells its publisher).
    for p in 0..u32::from(PEERS) {
        r.remove_peer(LocalPeer(p));
        m.peers.remove(&p);
        check(&mut r, &m, None);
    }
    for (stream, worker) in std::mem::take(&mut m.interests) {
        r.on_interest(StreamId(stream), worker, false, 0);
    }
    check(&mut r, &m, None);
    assert!(r.is_empty(), "state left behind: {:?}", r.len());
});
