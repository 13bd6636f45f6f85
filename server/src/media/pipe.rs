//! Node-to-node media pipes: a published slot's packets carried from the node its publisher is
//! on (the *origin*) to another node (an *edge*) that has viewers of it.
//!
//! On the origin, [`MediaPlane::pipe_out`](super::MediaPlane::pipe_out) makes the pipe a
//! subscriber of the slot that wants every simulcast layer and takes each packet as its
//! publisher sent it (not rewritten; a muted kind is not sent). On the edge,
//! [`MediaPlane::pipe_in`](super::MediaPlane::pipe_in) makes the pipe the slot's publisher: its
//! packets ([`PipeIn::send`]) go through the edge's router as a local publisher's would, so the
//! edge's subscribers get rewriting, layer switching and keyframe waiting as usual, and the
//! keyframe requests the edge's router lets through come back out to be sent to the origin
//! ([`MediaPlane::request_keyframe_layer`](super::MediaPlane::request_keyframe_layer) there).
//!
//! The link between the nodes is not this module's: it carries [`encode_pipe_frame`]'s
//! frames, each one packet of a slot numbered by the link (`tag`), and hands what it receives
//! to [`decode_pipe_frame`], which checks everything (the input is from the network).
//!
//! Wire form (big-endian), [`PIPE_HEADER`] bytes then the payload (1 to
//! [`MAX_PIPE_PAYLOAD`] bytes, the rest of the frame):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version, [`PIPE_VERSION`] |
//! | 1 | 4 | tag |
//! | 5 | 1 | flags: bit 0 video, bit 1 marker, bits 2–3 codec (0 none, 1 H.264, 2 VP8); the rest 0 |
//! | 6 | 8 | source |
//! | 14 | 8 | extended sequence number |
//! | 22 | 4 | RTP timestamp |
//! | 26 | 4 | clock rate (Hz, not 0) |
//! | 30 | 1 | layer (below layers) |
//! | 31 | 1 | layers (1 to [`MAX_PIPE_LAYERS`]) |
//!
//! Audio has no codec, video has one.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rtcroom_protocol::signal::{MediaKind, VideoCodec, VideoLayer};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::router::LocalPeer;
use super::worker::Data;
use super::{MediaStats, PeerId, sdp};

/// The wire form's version (its first byte).
pub const PIPE_VERSION: u8 = 1;
/// Bytes before the payload.
pub const PIPE_HEADER: usize = 32;
/// Largest payload a frame may carry (an RTP payload is below the MTU).
pub const MAX_PIPE_PAYLOAD: usize = 2048;
/// Most simulcast layers a frame may name (the wanted-layer sets are 32-bit masks).
pub const MAX_PIPE_LAYERS: u8 = 32;

const FLAG_VIDEO: u8 = 1;
const FLAG_MARKER: u8 = 1 << 1;
const CODEC_SHIFT: u8 = 2;
const CODEC_MASK: u8 = 0b11 << CODEC_SHIFT;
const FLAGS_KNOWN: u8 = FLAG_VIDEO | FLAG_MARKER | CODEC_MASK;

/// One packet on a node-to-node media link: a publisher's packet as the origin received it
/// (every simulcast layer, not rewritten; muted kinds are never sent).
#[derive(Clone, Debug, PartialEq)]
pub struct PipePacket {
    /// Audio or video.
    pub kind: MediaKind,
    /// Its video codec (`None` for audio).
    pub codec: Option<VideoCodec>,
    /// Its source on the origin: changes with the publisher, its SSRC and each unmute (the
    /// edge's subscribers' rewriters continue their output across a change).
    pub source: u64,
    /// Extended sequence number as received.
    pub seq: u64,
    /// RTP timestamp as received.
    pub ts: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// The codec's clock rate (Hz).
    pub clock_rate: u32,
    /// Its simulcast layer (0: the smallest, or the only one).
    pub layer: u8,
    /// How many layers the publisher sends (1: no simulcast).
    pub layers: u8,
    /// The RTP payload.
    pub payload: Arc<[u8]>,
}

/// What an edge needs to publish a slot from a pipe: the origin publisher's video format and
/// layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipeFormat {
    /// The video format it sends (none: audio only).
    pub video: Option<sdp::VideoFormat>,
    /// Simulcast: its video layers, smallest first (empty: one layer).
    pub layers: Vec<VideoLayer>,
}

/// Why a pipe frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PipeWireError {
    /// Shorter than the header.
    #[error("pipe frame too short: {len} bytes, the header alone is {PIPE_HEADER}")]
    TooShort {
        /// The frame's length.
        len: usize,
    },
    /// An unknown version.
    #[error("pipe frame of unknown version {0} (this node speaks {PIPE_VERSION})")]
    Version(u8),
    /// Flag bits this version does not define.
    #[error("pipe frame with unknown flags {0:#04x}")]
    Flags(u8),
    /// A codec number this version does not define, audio with a codec or video without.
    #[error("pipe frame with codec {codec} for {kind}")]
    Codec {
        /// The codec bits.
        codec: u8,
        /// "audio" or "video".
        kind: &'static str,
    },
    /// A clock rate of 0.
    #[error("pipe frame with a clock rate of 0")]
    ClockRate,
    /// A layer outside the layer count, or a layer count of 0 or above [`MAX_PIPE_LAYERS`].
    #[error("pipe frame of layer {layer} of {layers} (1 to {MAX_PIPE_LAYERS} layers)")]
    Layer {
        /// The layer.
        layer: u8,
        /// The layer count.
        layers: u8,
    },
    /// No payload.
    #[error("pipe frame with an empty payload")]
    EmptyPayload,
    /// A payload above [`MAX_PIPE_PAYLOAD`].
    #[error("pipe frame payload of {0} bytes (at most {MAX_PIPE_PAYLOAD})")]
    PayloadTooLarge(usize),
}

fn codec_bits(codec: Option<VideoCodec>) -> u8 {
    match codec {
        None => 0,
        Some(VideoCodec::H264) => 1,
        Some(VideoCodec::Vp8) => 2,
    }
}

/// Binary wire form of one packet of the slot numbered `tag` (the link's own numbering of its
/// slots). A packet [`decode_pipe_frame`] would refuse (an empty or oversized payload, a bad
/// layer, ...) is encoded all the same and refused by the receiver.
pub fn encode_pipe_frame(tag: u32, p: &PipePacket) -> Vec<u8> {
    let mut flags = codec_bits(p.codec) << CODEC_SHIFT;
    if p.kind == MediaKind::Video {
        flags |= FLAG_VIDEO;
    }
    if p.marker {
        flags |= FLAG_MARKER;
    }
    let mut out = Vec::with_capacity(PIPE_HEADER + p.payload.len());
    out.push(PIPE_VERSION);
    out.extend_from_slice(&tag.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&p.source.to_be_bytes());
    out.extend_from_slice(&p.seq.to_be_bytes());
    out.extend_from_slice(&p.ts.to_be_bytes());
    out.extend_from_slice(&p.clock_rate.to_be_bytes());
    out.push(p.layer);
    out.push(p.layers);
    out.extend_from_slice(&p.payload);
    out
}

/// `N` bytes at `at` (the caller has checked the length).
fn take<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(b) = buf.get(at..at + N) {
        out.copy_from_slice(b);
    }
    out
}

/// Inverse of [`encode_pipe_frame`]: the tag and the packet. Never panics; every field is
/// checked (see the module docs), and a frame that decodes encodes back to the same bytes.
pub fn decode_pipe_frame(buf: &[u8]) -> Result<(u32, PipePacket), PipeWireError> {
    let Some((&version, _)) = buf.split_first() else {
        return Err(PipeWireError::TooShort { len: 0 });
    };
    if version != PIPE_VERSION {
        return Err(PipeWireError::Version(version));
    }
    if buf.len() < PIPE_HEADER {
        return Err(PipeWireError::TooShort { len: buf.len() });
    }
    let tag = u32::from_be_bytes(take(buf, 1));
    let flags = buf[5];
    if flags & !FLAGS_KNOWN != 0 {
        return Err(PipeWireError::Flags(flags));
    }
    let kind = if flags & FLAG_VIDEO != 0 {
        MediaKind::Video
    } else {
        MediaKind::Audio
    };
    let codec_bits = (flags & CODEC_MASK) >> CODEC_SHIFT;
    let codec = match (kind, codec_bits) {
        (MediaKind::Audio, 0) => None,
        (MediaKind::Video, 1) => Some(VideoCodec::H264),
        (MediaKind::Video, 2) => Some(VideoCodec::Vp8),
        (kind, codec) => {
            return Err(PipeWireError::Codec {
                codec,
                kind: match kind {
                    MediaKind::Audio => "audio",
                    MediaKind::Video => "video",
                },
            });
        }
    };
    let source = u64::from_be_bytes(take(buf, 6));
    let seq = u64::from_be_bytes(take(buf, 14));
    let ts = u32::from_be_bytes(take(buf, 22));
    let clock_rate = u32::from_be_bytes(take(buf, 26));
    if clock_rate == 0 {
        return Err(PipeWireError::ClockRate);
    }
    let (layer, layers) = (buf[30], buf[31]);
    if layers == 0 || layers > MAX_PIPE_LAYERS || layer >= layers {
        return Err(PipeWireError::Layer { layer, layers });
    }
    let payload = &buf[PIPE_HEADER..];
    if payload.is_empty() {
        return Err(PipeWireError::EmptyPayload);
    }
    if payload.len() > MAX_PIPE_PAYLOAD {
        return Err(PipeWireError::PayloadTooLarge(payload.len()));
    }
    Ok((
        tag,
        PipePacket {
            kind,
            codec,
            source,
            seq,
            ts,
            marker: flags & FLAG_MARKER != 0,
            clock_rate,
            layer,
            layers,
            payload: Arc::from(payload),
        },
    ))
}

/// The edge end of a pipe: hand it the origin's packets. Made by
/// [`MediaPlane::pipe_in`](super::MediaPlane::pipe_in); closed by
/// [`MediaPlane::unpublish`](super::MediaPlane::unpublish) with its [`PipeIn::peer`] (dropping
/// it closes nothing).
#[derive(Clone)]
pub struct PipeIn {
    pub(super) peer: PeerId,
    pub(super) local: LocalPeer,
    pub(super) data: mpsc::Sender<Data>,
    pub(super) stats: Arc<MediaStats>,
}

impl std::fmt::Debug for PipeIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeIn").field("peer", &self.peer).finish()
    }
}

impl PipeIn {
    /// Its peer id (the slot's publisher on this node).
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Queue one packet for the local subscribers. `false` (counted in
    /// [`MediaStats::worker_queue_drops`]) when the worker's data queue is full or the worker
    /// is gone. A packet that arrives after the pipe closed is dropped by the worker.
    pub fn send(&self, packet: PipePacket) -> bool {
        let sent = self
            .data
            .try_send(Data::PipeRtp {
                peer: self.local,
                id: self.peer,
                packet,
            })
            .is_ok();
        if !sent {
            self.stats
                .worker_queue_drops
                .fetch_add(1, Ordering::Relaxed);
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet() -> PipePacket {
        PipePacket {
            kind: MediaKind::Video,
            codec: Some(VideoCodec::H264),
            source: 0x0102_0304_0506_0708,
            seq: 70_000,
            ts: 0xdead_beef,
            marker: true,
            clock_rate: 90_000,
            layer: 1,
            layers: 2,
            payload: Arc::from(&[0x65u8, 0x88, 0x84][..]),
        }
    }

    #[test]
    fn frames_round_trip() {
        let audio = PipePacket {
            kind: MediaKind::Audio,
            codec: None,
            marker: false,
            clock_rate: 48_000,
            layer: 0,
            layers: 1,
            payload: Arc::from(vec![7u8; MAX_PIPE_PAYLOAD]),
            ..packet()
        };
        let vp8 = PipePacket {
            codec: Some(VideoCodec::Vp8),
            layer: 31,
            layers: 32,
            ..packet()
        };
        for (tag, p) in [(0, packet()), (u32::MAX, audio), (77, vp8)] {
            let frame = encode_pipe_frame(tag, &p);
            assert_eq!(frame.len(), PIPE_HEADER + p.payload.len());
            assert_eq!(decode_pipe_frame(&frame), Ok((tag, p)));
        }
        // The layout is the documented one.
        let frame = encode_pipe_frame(0x0a0b_0c0d, &packet());
        assert_eq!(
            frame[..PIPE_HEADER],
            [
                1, 0x0a, 0x0b, 0x0c, 0x0d, 0b0111, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 1, 0x11,
                0x70, 0xde, 0xad, 0xbe, 0xef, 0, 1, 0x5f, 0x90, 1, 2
            ]
        );
    }

    #[test]
    fn every_malformed_frame_is_refused_with_its_reason() {
        let good = encode_pipe_frame(5, &packet());
        let with = |at: usize, b: u8| {
            let mut f = good.clone();
            f[at] = b;
            decode_pipe_frame(&f).unwrap_err()
        };
        assert_eq!(
            decode_pipe_frame(&[]),
            Err(PipeWireError::TooShort { len: 0 })
        );
        assert_eq!(with(0, 2), PipeWireError::Version(2));
        assert_eq!(with(0, 0), PipeWireError::Version(0));
        assert_eq!(with(5, 0b0111 | 0x10), PipeWireError::Flags(0x17));
        assert_eq!(with(5, 0x80), PipeWireError::Flags(0x80));
        // Video without a codec, with an unknown one; audio with one.
        assert!(matches!(
            with(5, 0b0001),
            PipeWireError::Codec { codec: 0, .. }
        ));
        assert!(matches!(
            with(5, 0b1101),
            PipeWireError::Codec { codec: 3, .. }
        ));
        assert!(matches!(
            with(5, 0b0100),
            PipeWireError::Codec {
                codec: 1,
                kind: "audio"
            }
        ));
        let mut f = good.clone();
        f[26..30].copy_from_slice(&[0; 4]);
        assert_eq!(decode_pipe_frame(&f), Err(PipeWireError::ClockRate));
        assert_eq!(
            with(30, 2),
            PipeWireError::Layer {
                layer: 2,
                layers: 2
            }
        );
        assert_eq!(
            with(31, 0),
            PipeWireError::Layer {
                layer: 1,
                layers: 0
            }
        );
        let mut f = good.clone();
        f[30] = 0;
        f[31] = 33;
        assert_eq!(
            decode_pipe_frame(&f),
            Err(PipeWireError::Layer {
                layer: 0,
                layers: 33
            })
        );
        assert_eq!(
            decode_pipe_frame(&good[..PIPE_HEADER]),
            Err(PipeWireError::EmptyPayload)
        );
        let mut big = good[..PIPE_HEADER].to_vec();
        big.resize(PIPE_HEADER + MAX_PIPE_PAYLOAD + 1, 0);
        assert_eq!(
            decode_pipe_frame(&big),
            Err(PipeWireError::PayloadTooLarge(MAX_PIPE_PAYLOAD + 1))
        );
        // Every truncation into the header is refused (none panics), and the errors read well
        // (a shorter payload is a valid frame: the link frames each one).
        for n in 0..=PIPE_HEADER {
            let e = decode_pipe_frame(&good[..n]).unwrap_err();
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(
            PipeWireError::TooShort { len: 3 }.to_string(),
            "pipe frame too short: 3 bytes, the header alone is 32"
        );
    }

    #[test]
    fn any_bytes_decode_without_panicking_and_decoded_frames_encode_back() {
        // A cheap stand-in for the fuzz target: every one-byte change of a valid frame.
        let good = encode_pipe_frame(9, &packet());
        for at in 0..good.len() {
            for b in 0..=255u8 {
                let mut f = good.clone();
                f[at] = b;
                if let Ok((tag, p)) = decode_pipe_frame(&f) {
                    assert_eq!(encode_pipe_frame(tag, &p), f);
                }
            }
        }
    }
}
