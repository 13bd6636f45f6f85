//! Codecs, RTP payload types and the packets exchanged with the WebRTC layer.
//!
//! The payload types, clock rates and fmtp lines are constants so that the WebRTC layer can
//! register exactly the codecs these pipelines produce and accept.

use bytes::Bytes;

/// RTP payload type for H.264 (packetization-mode 1, constrained baseline).
pub const H264_PAYLOAD_TYPE: u8 = 102;
/// RTP payload type for VP8.
pub const VP8_PAYLOAD_TYPE: u8 = 96;
/// RTP payload type for Opus.
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// RTP clock rate of every video codec.
pub const VIDEO_CLOCK_RATE: u32 = 90_000;
/// RTP clock rate of Opus (always 48 kHz on the wire, RFC 7587).
pub const OPUS_CLOCK_RATE: u32 = 48_000;
/// Opus channel count in SDP (always 2 on the wire, RFC 7587).
pub const OPUS_CHANNELS: u16 = 2;
/// SDP fmtp for H.264: constrained baseline level 3.1, non-interleaved mode (what a receiver
/// declares, and what a sender up to 1280×720 @ 30 fps sends; see [`h264_fmtp`]).
pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f";

/// H.264 level 3.1's `level_idc`, the lowest a WebRTC H.264 stream declares.
pub const H264_LEVEL_3_1: u8 = 31;

/// The lowest H.264 level (`level_idc`, 10 × the level) whose frame size and macroblock rate
/// (ITU-T H.264 Table A-1) hold `width`×`height` at `fps`, at least 3.1 (WebRTC's usual
/// floor). 1280×720 @ 30 is 3.1, 1920×1080 @ 30 is 4.0, 3840×2160 @ 30 is 5.1.
pub fn h264_level_idc(width: u32, height: u32, fps: u32) -> u8 {
    // (level_idc, max frame size in macroblocks, max macroblocks per second)
    const LEVELS: [(u8, u64, u64); 7] = [
        (31, 3_600, 108_000),
        (32, 5_120, 216_000),
        (40, 8_192, 245_760),
        (42, 8_704, 522_240),
        (50, 22_080, 589_824),
        (51, 36_864, 983_040),
        (52, 36_864, 2_073_600),
    ];
    let mbs = u64::from(width.div_ceil(16)) * u64::from(height.div_ceil(16));
    let rate = mbs * u64::from(fps.max(1));
    LEVELS
        .iter()
        .find(|(_, frame, per_s)| mbs <= *frame && rate <= *per_s)
        .map_or(52, |(idc, _, _)| *idc)
        .max(H264_LEVEL_3_1)
}

/// The H.264 fmtp of a stream at `level_idc` (same profile and mode as [`H264_FMTP`]).
pub fn h264_fmtp(level_idc: u8) -> String {
    format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4200{level_idc:02x}")
}
/// SDP fmtp for Opus.
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";
/// MTU of produced RTP packets (payload + RTP header), small enough for TURN/SRTP overhead.
pub const RTP_MTU: u32 = 1200;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// An audio track.
    Audio,
    /// A video track.
    Video,
}

/// Video codecs the pipelines can encode and decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VideoCodec {
    /// H.264 constrained baseline, packetization-mode 1.
    #[default]
    H264,
    /// VP8.
    Vp8,
}

/// Audio codecs the pipelines can encode and decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AudioCodec {
    /// Opus, 48 kHz.
    #[default]
    Opus,
}

/// Any codec, with its RTP parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// A video codec.
    Video(VideoCodec),
    /// An audio codec.
    Audio(AudioCodec),
}

impl From<VideoCodec> for Codec {
    fn from(c: VideoCodec) -> Self {
        Codec::Video(c)
    }
}

impl From<AudioCodec> for Codec {
    fn from(c: AudioCodec) -> Self {
        Codec::Audio(c)
    }
}

impl Codec {
    /// Audio or video.
    pub fn kind(self) -> MediaKind {
        match self {
            Codec::Video(_) => MediaKind::Video,
            Codec::Audio(_) => MediaKind::Audio,
        }
    }

    /// RTP payload type used on the wire.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Video(VideoCodec::H264) => H264_PAYLOAD_TYPE,
            Codec::Video(VideoCodec::Vp8) => VP8_PAYLOAD_TYPE,
            Codec::Audio(AudioCodec::Opus) => OPUS_PAYLOAD_TYPE,
        }
    }

    /// RTP clock rate.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Video(_) => VIDEO_CLOCK_RATE,
            Codec::Audio(AudioCodec::Opus) => OPUS_CLOCK_RATE,
        }
    }

    /// SDP channel count (audio only).
    pub fn channels(self) -> Option<u16> {
        match self {
            Codec::Video(_) => None,
            Codec::Audio(AudioCodec::Opus) => Some(OPUS_CHANNELS),
        }
    }

    /// RTP encoding name, as in SDP `a=rtpmap` and GStreamer `encoding-name`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Video(VideoCodec::H264) => "H264",
            Codec::Video(VideoCodec::Vp8) => "VP8",
            Codec::Audio(AudioCodec::Opus) => "OPUS",
        }
    }

    /// SDP MIME type, as webrtc stacks name codecs (`video/H264`).
    pub fn mime_type(self) -> &'static str {
        match self {
            Codec::Video(VideoCodec::H264) => "video/H264",
            Codec::Video(VideoCodec::Vp8) => "video/VP8",
            Codec::Audio(AudioCodec::Opus) => "audio/opus",
        }
    }

    /// SDP fmtp line, if the codec has one.
    pub fn fmtp(self) -> Option<&'static str> {
        match self {
            Codec::Video(VideoCodec::H264) => Some(H264_FMTP),
            Codec::Video(VideoCodec::Vp8) => None,
            Codec::Audio(AudioCodec::Opus) => Some(OPUS_FMTP),
        }
    }

    /// The codec for an RTP payload type, if it is one of ours.
    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        [
            Codec::Video(VideoCodec::H264),
            Codec::Video(VideoCodec::Vp8),
            Codec::Audio(AudioCodec::Opus),
        ]
        .into_iter()
        .find(|c| c.payload_type() == pt)
    }

    /// `application/x-rtp` caps describing this codec's RTP stream.
    pub(crate) fn rtp_caps(self) -> gst::Caps {
        let media = match self.kind() {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        };
        gst::Caps::builder("application/x-rtp")
            .field("media", media)
            .field("clock-rate", self.clock_rate() as i32)
            .field("encoding-name", self.encoding_name())
            .field("payload", self.payload_type() as i32)
            .build()
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.encoding_name())
    }
}

/// Which encoding of a local stream a packet belongs to. A stream with a small stream
/// (simulcast, TRTC's `enableSmallStream`: [`crate::LocalConfig::small_video`]) encodes its
/// video twice, at its own profile ([`Layer::Big`]) and at the small profile
/// ([`Layer::Small`]); everything else (audio, and the video of a stream without a small
/// stream) is [`Layer::Big`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layer {
    /// The stream's own encoding (its video profile; every audio packet).
    #[default]
    Big,
    /// The small video encoding.
    Small,
}

impl Layer {
    /// Index for per-layer arrays: big 0, small 1.
    pub fn index(self) -> usize {
        match self {
            Layer::Big => 0,
            Layer::Small => 1,
        }
    }
}

/// One RTP packet (header included) produced by a local pipeline.
///
/// `data` shares the GStreamer buffer's memory: no copy is made on the way out.
#[derive(Debug, Clone)]
pub struct RtpPacket {
    /// The whole RTP packet, header included.
    pub data: Bytes,
    /// The codec, which gives payload type, clock rate and kind.
    pub codec: Codec,
    /// The encoding it belongs to (the small video encoding's packets are
    /// [`Layer::Small`]; each layer has its own SSRC and sequence numbers).
    pub layer: Layer,
}

impl RtpPacket {
    /// Audio or video.
    pub fn kind(&self) -> MediaKind {
        self.codec.kind()
    }

    /// Payload type field of the RTP header, if the packet has a header.
    pub fn payload_type(&self) -> Option<u8> {
        self.data.get(1).map(|b| b & 0x7f)
    }

    /// Timestamp field of the RTP header, if the packet has a header.
    pub fn timestamp(&self) -> Option<u32> {
        let b = self.data.get(4..8)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Sequence number of the RTP header, if the packet has a header.
    pub fn sequence_number(&self) -> Option<u16> {
        let b = self.data.get(2..4)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// SSRC field of the RTP header, if the packet has a header.
    pub fn ssrc(&self) -> Option<u32> {
        let b = self.data.get(8..12)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Marker bit (last packet of a video frame).
    pub fn marker(&self) -> bool {
        self.data.get(1).is_some_and(|b| b & 0x80 != 0)
    }
}

/// Checks the fixed RTP header and returns the payload type. Never panics.
pub(crate) fn rtp_payload_type(data: &[u8]) -> Result<u8, &'static str> {
    if data.len() < 12 {
        return Err("shorter than the 12-byte RTP header");
    }
    if data[0] >> 6 != 2 {
        return Err("RTP version is not 2");
    }
    Ok(data[1] & 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_types_round_trip() {
        for c in [
            Codec::Video(VideoCodec::H264),
            Codec::Video(VideoCodec::Vp8),
            Codec::Audio(AudioCodec::Opus),
        ] {
            assert_eq!(Codec::from_payload_type(c.payload_type()), Some(c));
        }
        assert_eq!(Codec::from_payload_type(0), None);
        assert_eq!(Codec::Audio(AudioCodec::Opus).clock_rate(), 48_000);
        assert_eq!(Codec::Audio(AudioCodec::Opus).channels(), Some(2));
        assert!(H264_FMTP.contains("profile-level-id=42001f"));
        assert_eq!(h264_fmtp(H264_LEVEL_3_1), H264_FMTP);
        assert!(H264_FMTP.contains("packetization-mode=1"));
    }

    #[test]
    fn header_parsing_never_panics() {
        assert!(rtp_payload_type(&[]).is_err());
        assert!(rtp_payload_type(&[0x80; 11]).is_err());
        assert!(rtp_payload_type(&[0x00; 12]).is_err());
        let mut p = [0u8; 12];
        p[0] = 0x80;
        p[1] = 0x80 | 102;
        p[2..4].copy_from_slice(&7u16.to_be_bytes());
        p[4..8].copy_from_slice(&9000u32.to_be_bytes());
        assert_eq!(rtp_payload_type(&p), Ok(102));
        let pkt = RtpPacket {
            data: Bytes::copy_from_slice(&p),
            codec: Codec::Video(VideoCodec::H264),
            layer: Layer::Big,
        };
        assert_eq!(pkt.payload_type(), Some(102));
        assert_eq!(pkt.sequence_number(), Some(7));
        assert_eq!(pkt.timestamp(), Some(9000));
        assert!(pkt.marker());
        let empty = RtpPacket {
            data: Bytes::new(),
            codec: Codec::Audio(AudioCodec::Opus),
            layer: Layer::Big,
        };
        assert_eq!(empty.payload_type(), None);
        assert_eq!(empty.timestamp(), None);
        assert!(!empty.marker());
    }

    #[test]
    fn h264_level_follows_the_resolution_and_frame_rate() {
        for (w, h, fps, level) in [
            (160, 120, 15, 31),
            (640, 480, 30, 31),
            (1280, 720, 30, 31),
            (1280, 720, 60, 32),
            (1920, 1080, 15, 40),
            (1920, 1080, 30, 40),
            (1920, 1080, 60, 42),
            (2560, 1440, 30, 50),
            (3840, 2160, 30, 51),
            (3840, 2160, 60, 52),
            (7680, 4320, 30, 52),
        ] {
            assert_eq!(h264_level_idc(w, h, fps), level, "{w}x{h}@{fps}");
        }
        assert!(h264_fmtp(40).ends_with("profile-level-id=420028"));
    }
}
