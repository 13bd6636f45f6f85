//! `LocalMedia`: one local stream (TRTC's `LocalStream`): a capture/encode pipeline from
//! rtcroom-pipelines, the two webrtc-rs tracks its RTP goes into, mute flags and counters.
//!
//! The tracks live as long as the stream, not as long as a peer connection: every uplink
//! peer connection (the first publish, a re-publish after a re-join, a rebuild after ICE
//! failure) binds the same tracks, so the pump that copies pipeline RTP into them never has
//! to be re-pointed. A pipeline restart (new video profile) only swaps the pump's source.
//!
//! Simulcast (TRTC's small stream, [`LocalConfig::small_video`]): the video track is two
//! tracks with one track id, RTP stream ids [`BIG_RID`] and [`SMALL_RID`], which an uplink
//! sends as two encodings of one transceiver (`a=simulcast:send h;l`); the pump writes each
//! layer's packets into its own track, and the server's `layers-wanted` pauses and resumes
//! the layers' encoders ([`LocalMedia::set_active_layers`]).
//!
//! Blocking: [`LocalMedia::start`], [`LocalMedia::restart`] and [`LocalMedia::stop`] change
//! GStreamer states (tens to hundreds of ms): callers run them off the engine thread. The
//! pump ([`LocalMedia::pump`]) is an async task on the engine thread; it never blocks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use actix::Recipient;

use rtcroom_pipelines::{
    EncoderControl, Layer, LocalConfig, LocalOutputs, LocalPipeline, MediaKind, RtpPacket,
    VideoCodec, VideoProfile,
};
use rtcroom_protocol::signal::{StreamType, VideoLayer};
use rtcroom_protocol::{ErrorCode, RtcError};
use tokio::sync::mpsc;
use webrtc::api::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

/// The H.264 fmtp a receiver registers (level 3.1; see `rtcroom_pipelines::codec`).
pub use rtcroom_pipelines::codec::H264_FMTP;
/// Payload type of H.264 (as rtcroom-pipelines packetises it).
pub const H264_PT: u8 = 102;
/// Payload type of VP8 (as rtcroom-pipelines packetises it).
pub const VP8_PT: u8 = rtcroom_pipelines::codec::VP8_PAYLOAD_TYPE;
/// Payload type of Opus.
pub const OPUS_PT: u8 = 111;
/// The RTP stream id (`a=rid`) of a simulcast stream's big layer (the stream's profile).
pub const BIG_RID: &str = "h";
/// The RTP stream id (`a=rid`) of a simulcast stream's small layer.
pub const SMALL_RID: &str = "l";

/// The rid of a layer.
pub fn rid_of(layer: Layer) -> &'static str {
    match layer {
        Layer::Big => BIG_RID,
        Layer::Small => SMALL_RID,
    }
}

/// The tracks of a video of `capability`: one plain track, or with `simulcast` the big
/// layer's and the small layer's (same track id and stream id, rids [`BIG_RID`] and
/// [`SMALL_RID`]: webrtc-rs sends them as two encodings of one sender).
pub fn video_tracks(
    capability: RTCRtpCodecCapability,
    simulcast: bool,
) -> (Arc<TrackLocalStaticRTP>, Option<Arc<TrackLocalStaticRTP>>) {
    let (id, stream_id) = ("video".to_owned(), "rtcroom".to_owned());
    if !simulcast {
        return (
            Arc::new(TrackLocalStaticRTP::new(capability, id, stream_id)),
            None,
        );
    }
    let track = |rid: &str| {
        Arc::new(TrackLocalStaticRTP::new_with_rid(
            capability.clone(),
            id.clone(),
            rid.to_owned(),
            stream_id.clone(),
        ))
    };
    (track(BIG_RID), Some(track(SMALL_RID)))
}

/// The H.264 codec as registered for receiving (level 3.1).
pub fn h264_capability() -> RTCRtpCodecCapability {
    h264_capability_at(rtcroom_pipelines::codec::H264_LEVEL_3_1)
}

/// The H.264 codec of a stream at `level_idc` (the level its resolution and frame rate need,
/// [`rtcroom_pipelines::codec::h264_level_idc`]).
pub fn h264_capability_at(level_idc: u8) -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: rtcroom_pipelines::codec::h264_fmtp(level_idc),
        rtcp_feedback: vec![],
    }
}

/// The VP8 codec as registered and sent.
pub fn vp8_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// A video codec as registered and sent, with its payload type.
pub fn video_capability(codec: VideoCodec) -> (RTCRtpCodecCapability, u8) {
    match codec {
        VideoCodec::H264 => (h264_capability(), H264_PT),
        VideoCodec::Vp8 => (vp8_capability(), VP8_PT),
    }
}

/// The codec a video track of `profile` is sent with: H.264 declares the level its
/// resolution and frame rate need (1080p is level 4.0, not 3.1). The level is fixed when the
/// stream is created; a later profile change keeps the negotiated one.
pub fn video_capability_for(codec: VideoCodec, profile: &VideoProfile) -> RTCRtpCodecCapability {
    match codec {
        VideoCodec::H264 => h264_capability_at(rtcroom_pipelines::codec::h264_level_idc(
            profile.width,
            profile.height,
            profile.fps,
        )),
        VideoCodec::Vp8 => vp8_capability(),
    }
}

/// The Opus codec as registered and sent.
pub fn opus_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Counters of a local stream (TRTC's `getLocalAudioStats` / `getLocalVideoStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalMediaStats {
    /// Audio RTP packets written to the uplink.
    pub audio_packets_sent: u64,
    /// Audio RTP bytes written (headers included).
    pub audio_bytes_sent: u64,
    /// Video RTP packets written to the uplink (the big layer's, with a small stream).
    pub video_packets_sent: u64,
    /// Video RTP bytes written (headers included; the big layer's).
    pub video_bytes_sent: u64,
    /// Encoded video frames (RTP packets with the marker bit) that left the encoder (the big
    /// layer's).
    pub video_frames_encoded: u64,
    /// Keyframe requests (PLI/FIR) received from the server (for any layer).
    pub keyframe_requests: u64,
    /// The small stream's RTP packets written (0 without one, or while it is paused).
    pub small_video_packets_sent: u64,
    /// The small stream's RTP bytes written (headers included).
    pub small_video_bytes_sent: u64,
    /// The small stream's encoded frames that were sent.
    pub small_video_frames_encoded: u64,
}

#[derive(Default)]
struct Counters {
    audio_packets: AtomicU64,
    audio_bytes: AtomicU64,
    /// By [`Layer::index`].
    video_packets: [AtomicU64; 2],
    video_bytes: [AtomicU64; 2],
    video_frames: [AtomicU64; 2],
    keyframe_requests: AtomicU64,
}

/// Keeps one track's RTP sequence numbers and timestamps continuous across what the
/// receivers must not see as a jump: packets held back while muted (no gap in sequence
/// numbers, so nobody asks for them again) and a pipeline restart (a new encoder starts at
/// random numbers). Plain and clock-free.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Continuity {
    started: bool,
    epoch: u64,
    seq_offset: u16,
    ts_offset: u32,
    last_seq: u16,
    last_ts: u32,
}

impl Continuity {
    /// The outgoing (sequence number, timestamp) of a packet of pipeline `epoch`;
    /// `ts_step` is how far after the last packet a first packet of a new pipeline goes.
    pub fn map(&mut self, epoch: u64, seq: u16, ts: u32, ts_step: u32) -> (u16, u32) {
        if !self.started {
            self.started = true;
            self.epoch = epoch;
        } else if epoch != self.epoch {
            self.epoch = epoch;
            self.seq_offset = seq.wrapping_sub(self.last_seq.wrapping_add(1));
            self.ts_offset = ts.wrapping_sub(self.last_ts.wrapping_add(ts_step));
        }
        self.last_seq = seq.wrapping_sub(self.seq_offset);
        self.last_ts = ts.wrapping_sub(self.ts_offset);
        (self.last_seq, self.last_ts)
    }

    /// A packet was held back (muted): later packets close the gap.
    pub fn skip(&mut self) {
        if self.started {
            self.seq_offset = self.seq_offset.wrapping_add(1);
        }
    }
}

/// Rewrites the sequence number and timestamp of an RTP packet (header bytes 2..8).
fn rewrite(data: &bytes::Bytes, seq: u16, ts: u32) -> bytes::Bytes {
    if data.len() < 12 || (data[2..4] == seq.to_be_bytes() && data[4..8] == ts.to_be_bytes()) {
        return data.clone();
    }
    let mut v = data.to_vec();
    v[2..4].copy_from_slice(&seq.to_be_bytes());
    v[4..8].copy_from_slice(&ts.to_be_bytes());
    bytes::Bytes::from(v)
}

/// One local stream. Shared (`Arc`) by the engine's `LocalStream` handle, the client actor
/// and the uplink peer connection actors.
pub struct LocalMedia {
    stream_type: StreamType,
    video_track: Option<Arc<TrackLocalStaticRTP>>,
    /// With a small stream: its track (rid [`SMALL_RID`]; the video track is rid [`BIG_RID`]).
    small_track: Option<Arc<TrackLocalStaticRTP>>,
    audio_track: Option<Arc<TrackLocalStaticRTP>>,
    audio_muted: AtomicBool,
    video_muted: AtomicBool,
    state: Mutex<PipelineState>,
    counters: Counters,
    /// Audio, video (big layer), small video.
    continuity: Mutex<[Continuity; 3]>,
    /// The client this stream is published by, for mute signalling.
    publisher: Mutex<Option<Recipient<crate::client::ClientRequest>>>,
}

struct PipelineState {
    config: LocalConfig,
    pipeline: Option<LocalPipeline>,
    encoders: Option<EncoderControl>,
    /// Smoothed packet loss the receivers report (percent), given to the Opus encoder.
    expected_loss: u8,
    /// With a small stream: which layers are encoded (by [`Layer::index`]), kept across
    /// pipeline restarts.
    layers_active: [bool; 2],
    /// Bumped on every restart, so an old pump stops writing.
    epoch: u64,
}

impl std::fmt::Debug for LocalMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalMedia")
            .field("stream_type", &self.stream_type)
            .field("has_audio", &self.has_audio())
            .field("has_video", &self.has_video())
            .field("stats", &self.stats())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock leaves only counters/handles behind: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pipeline_error(e: rtcroom_pipelines::PipelineError) -> RtcError {
    RtcError::new(
        ErrorCode::InitializeFailed,
        format!("local media pipeline: {e}"),
    )
}

/// The Opus encoder's expected loss (percent) after the server reported `fraction_lost`
/// (1/256 units) on this publisher's uplink. An SFU terminates RTCP, so the publisher hears
/// only of its own leg; each subscriber's downlink loses about as much again, so the
/// end-to-end loss FEC has to cover is taken as twice the reported one. Rises at once to a
/// higher figure, so FEC is there for the next burst, and decays by a quarter of the
/// difference per report (they come every second or few), so one clean interval does not
/// switch FEC off. Capped at 50 %: beyond that FEC cannot keep up and only takes bits from
/// the primary encoding.
pub fn next_expected_loss(previous: u8, fraction_lost: u8) -> u8 {
    let reported = (u32::from(fraction_lost) * 200).div_ceil(256).min(50);
    let previous = u32::from(previous.min(50));
    let next = if reported >= previous {
        reported
    } else {
        previous - (previous - reported).div_ceil(4)
    };
    // At most 50 by the two `min`s above.
    next as u8
}

impl LocalMedia {
    /// Builds and starts the pipeline. Blocks (GStreamer state changes): run it off the
    /// engine thread. Returns the stream and the pipeline outputs; give `outputs.rtp` to
    /// [`LocalMedia::pump`].
    pub fn start(
        config: LocalConfig,
        stream_type: StreamType,
    ) -> Result<(Arc<LocalMedia>, LocalOutputs), RtcError> {
        let (video_track, small_track) = match &config.video {
            Some(v) => {
                let (big, small) = video_tracks(
                    video_capability_for(v.codec, &v.profile),
                    config.small_video.is_some(),
                );
                (Some(big), small)
            }
            None => (None, None),
        };
        let audio_track = config.audio.as_ref().map(|_| {
            Arc::new(TrackLocalStaticRTP::new(
                opus_capability(),
                "audio".into(),
                "rtcroom".into(),
            ))
        });
        let (pipeline, outputs) = LocalPipeline::start(config.clone()).map_err(pipeline_error)?;
        let encoders = Some(pipeline.encoder_control());
        let media = Arc::new(LocalMedia {
            stream_type,
            video_track,
            small_track,
            audio_track,
            audio_muted: AtomicBool::new(false),
            video_muted: AtomicBool::new(false),
            state: Mutex::new(PipelineState {
                config,
                pipeline: Some(pipeline),
                encoders,
                expected_loss: 0,
                layers_active: [true; 2],
                epoch: 0,
            }),
            counters: Counters::default(),
            continuity: Mutex::new(Default::default()),
            publisher: Mutex::new(None),
        });
        Ok((media, outputs))
    }

    /// The client this stream is published by (set by the client actor).
    pub fn publisher(&self) -> Option<Recipient<crate::client::ClientRequest>> {
        lock(&self.publisher).clone()
    }

    /// Record (or clear) the client this stream is published by.
    pub fn set_publisher(&self, client: Option<Recipient<crate::client::ClientRequest>>) {
        *lock(&self.publisher) = client;
    }

    /// Main or auxiliary.
    pub fn stream_type(&self) -> StreamType {
        self.stream_type
    }

    /// The stream has an audio track.
    pub fn has_audio(&self) -> bool {
        self.audio_track.is_some()
    }

    /// The stream has a video track.
    pub fn has_video(&self) -> bool {
        self.video_track.is_some()
    }

    /// The video track, bound by each uplink peer connection.
    pub fn video_track(&self) -> Option<Arc<TrackLocalStaticRTP>> {
        self.video_track.clone()
    }

    /// The audio track, bound by each uplink peer connection.
    pub fn audio_track(&self) -> Option<Arc<TrackLocalStaticRTP>> {
        self.audio_track.clone()
    }

    /// With a small stream: its track, sent by each uplink as the second encoding of the
    /// video track's sender.
    pub fn small_track(&self) -> Option<Arc<TrackLocalStaticRTP>> {
        self.small_track.clone()
    }

    /// The stream sends a small stream (simulcast).
    pub fn has_small(&self) -> bool {
        self.small_track.is_some()
    }

    /// The simulcast layers a publish announces: big ([`BIG_RID`], the video profile), then
    /// small ([`SMALL_RID`], the small profile), as the offer lists them; empty without a
    /// small stream. From the configuration now (a later profile change is not announced:
    /// the layers stay the publication's).
    pub fn layers(&self) -> Vec<VideoLayer> {
        let config = self.config();
        let (Some(video), Some(small)) = (config.video, config.small_video) else {
            return Vec::new();
        };
        [(BIG_RID, video.profile), (SMALL_RID, small)]
            .into_iter()
            .map(|(rid, p)| VideoLayer {
                rid: rid.to_owned(),
                width: p.width,
                height: p.height,
                bitrate_kbps: p.bitrate_kbps,
            })
            .collect()
    }

    /// Encode only the layers whose rids are in `active` (the server's `layers-wanted`);
    /// a layer that resumes starts with a keyframe. Kept across pipeline restarts. Never
    /// blocks; nothing happens without a small stream.
    pub fn set_active_layers(&self, active: &[String]) {
        if !self.has_small() {
            return;
        }
        let mut s = lock(&self.state);
        for layer in [Layer::Big, Layer::Small] {
            let on = active.iter().any(|r| r == rid_of(layer));
            s.layers_active[layer.index()] = on;
            if let Some(k) = &s.encoders {
                k.set_layer_active(layer, on);
            }
        }
    }

    /// Whether `layer` is encoded now: `false` when paused, or absent.
    pub fn is_layer_active(&self, layer: Layer) -> bool {
        lock(&self.state)
            .encoders
            .as_ref()
            .is_some_and(|k| k.is_layer_active(layer))
    }

    /// Send an SEI message (payload type 5 or 243) with the next encoded video frame.
    /// Never blocks. INVALID_OPERATION without H.264 video or while the pipeline is being
    /// rebuilt.
    pub fn send_sei(&self, payload_type: u8, data: Vec<u8>) -> Result<(), RtcError> {
        let state = lock(&self.state);
        let Some(pipeline) = state.pipeline.as_ref() else {
            return Err(RtcError::invalid_operation(
                None,
                "the stream's pipeline is not running",
            ));
        };
        pipeline
            .send_sei(rtcroom_pipelines::SeiMessage { payload_type, data })
            .map_err(|e| RtcError::invalid_operation(None, e.to_string()))
    }

    /// The current pipeline configuration.
    pub fn config(&self) -> LocalConfig {
        lock(&self.state).config.clone()
    }

    /// Fault injection: the running pipeline reports an element error on its bus.
    #[cfg(feature = "fault-injection")]
    pub fn inject_failure_for_test(&self) {
        if let Some(p) = lock(&self.state).pipeline.as_ref() {
            p.inject_error_for_test();
        }
    }

    /// The current pump epoch (see [`LocalMedia::pump`]).
    pub fn epoch(&self) -> u64 {
        lock(&self.state).epoch
    }

    /// The loudest volume sent (0–100) since the last call; `None` without audio (or
    /// before any). A muted stream sends nothing: 0.
    pub fn audio_level(&self) -> Option<u8> {
        let level = lock(&self.state).pipeline.as_ref()?.audio_level()?;
        Some(if self.is_muted(MediaKind::Audio) {
            0
        } else {
            level
        })
    }

    /// Whether `kind` is muted locally (nothing of it is sent).
    pub fn is_muted(&self, kind: MediaKind) -> bool {
        match kind {
            MediaKind::Audio => self.audio_muted.load(Ordering::Relaxed),
            MediaKind::Video => self.video_muted.load(Ordering::Relaxed),
        }
    }

    /// Stop (`true`) or resume sending `kind`. Returns whether the flag changed. Resuming
    /// video asks the encoder for a keyframe so receivers recover at once.
    pub fn set_muted(&self, kind: MediaKind, muted: bool) -> bool {
        let flag = match kind {
            MediaKind::Audio => &self.audio_muted,
            MediaKind::Video => &self.video_muted,
        };
        let changed = flag.swap(muted, Ordering::Relaxed) != muted;
        if changed && !muted && kind == MediaKind::Video {
            self.request_keyframe();
        }
        changed
    }

    /// Asks the video encoders (every layer) for a keyframe. Never blocks.
    pub fn request_keyframe(&self) {
        self.counters
            .keyframe_requests
            .fetch_add(1, Ordering::Relaxed);
        if let Some(k) = &lock(&self.state).encoders {
            k.request_keyframe();
        }
    }

    /// Asks one layer's encoder for a keyframe (on RTCP PLI/FIR from the server for that
    /// layer's SSRC; a paused layer's next frame). Never blocks.
    pub fn request_keyframe_of(&self, layer: Layer) {
        self.counters
            .keyframe_requests
            .fetch_add(1, Ordering::Relaxed);
        if let Some(k) = &lock(&self.state).encoders {
            k.request_keyframe_of(layer);
        }
    }

    /// A receiver's loss report for this stream (RTCP receiver report, `fraction_lost` in
    /// 1/256): smoothed by [`next_expected_loss`] and handed to the Opus encoder, which sizes
    /// its in-band FEC by it. The path's loss is shared by the stream's tracks, so a video
    /// track's report counts too.
    pub fn on_loss_report(&self, fraction_lost: u8) {
        let mut s = lock(&self.state);
        s.expected_loss = next_expected_loss(s.expected_loss, fraction_lost);
        if let Some(k) = &s.encoders {
            k.set_expected_loss(s.expected_loss);
        }
    }

    /// Counters now.
    pub fn stats(&self) -> LocalMediaStats {
        let c = &self.counters;
        LocalMediaStats {
            audio_packets_sent: c.audio_packets.load(Ordering::Relaxed),
            audio_bytes_sent: c.audio_bytes.load(Ordering::Relaxed),
            video_packets_sent: c.video_packets[0].load(Ordering::Relaxed),
            video_bytes_sent: c.video_bytes[0].load(Ordering::Relaxed),
            video_frames_encoded: c.video_frames[0].load(Ordering::Relaxed),
            keyframe_requests: c.keyframe_requests.load(Ordering::Relaxed),
            small_video_packets_sent: c.video_packets[1].load(Ordering::Relaxed),
            small_video_bytes_sent: c.video_bytes[1].load(Ordering::Relaxed),
            small_video_frames_encoded: c.video_frames[1].load(Ordering::Relaxed),
        }
    }

    /// Copies the pipeline's RTP into the tracks until the pipeline ends, a restart
    /// replaces it (`epoch` is then stale) or the stream is gone. Muted kinds are counted
    /// out, not sent. Runs as an async task; `write` on a track without a bound peer
    /// connection is a no-op.
    ///
    /// It holds the stream weakly: the pipeline owns the sender of `rtp`, so a strong
    /// reference here would keep the stream, and so the pipeline, alive for ever (its
    /// capture and encoders running after every handle was dropped).
    pub async fn pump(media: Weak<Self>, mut rtp: mpsc::Receiver<RtpPacket>, epoch: u64) {
        while let Some(packet) = rtp.recv().await {
            let Some(this) = media.upgrade() else {
                break;
            };
            if !this.forward(packet, epoch).await {
                break;
            }
        }
    }

    /// Writes one packet of pipeline `epoch` to its track; `false` once `epoch` is stale.
    async fn forward(&self, packet: RtpPacket, epoch: u64) -> bool {
        if self.epoch() != epoch {
            return false;
        }
        let kind = packet.kind();
        let (idx, ts_step) = match (kind, packet.layer) {
            // About one frame at 30 fps, one 20 ms Opus frame.
            (MediaKind::Video, Layer::Big) => (1, 3_000),
            (MediaKind::Video, Layer::Small) => (2, 3_000),
            (MediaKind::Audio, _) => (0, 960),
        };
        if self.is_muted(kind) {
            lock(&self.continuity)[idx].skip();
            return true;
        }
        let (Some(seq), Some(ts)) = (packet.sequence_number(), packet.timestamp()) else {
            return true;
        };
        let (seq, ts) = lock(&self.continuity)[idx].map(epoch, seq, ts, ts_step);
        let data = rewrite(&packet.data, seq, ts);
        let layer = packet.layer.index();
        let (track, packets, bytes) = match kind {
            MediaKind::Video => (
                match packet.layer {
                    Layer::Big => &self.video_track,
                    Layer::Small => &self.small_track,
                },
                &self.counters.video_packets[layer],
                &self.counters.video_bytes[layer],
            ),
            MediaKind::Audio => (
                &self.audio_track,
                &self.counters.audio_packets,
                &self.counters.audio_bytes,
            ),
        };
        let Some(track) = track else { return true };
        packets.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if kind == MediaKind::Video && packet.marker() {
            self.counters.video_frames[layer].fetch_add(1, Ordering::Relaxed);
        }
        // Errors only mean that no peer connection is bound right now.
        let _ = track.write(&data).await;
        true
    }

    /// Replaces the pipeline by one built from `config` (same tracks: a new video profile
    /// needs no renegotiation). Blocks: run it off the engine thread. Returns the new epoch
    /// and outputs for a new [`LocalMedia::pump`].
    pub fn restart(&self, config: LocalConfig) -> Result<(u64, LocalOutputs), RtcError> {
        if config.video.is_some() != self.has_video()
            || config.audio.is_some() != self.has_audio()
            || (config.video.is_some() && config.small_video.is_some() != self.has_small())
        {
            return Err(RtcError::invalid_operation(
                None,
                "a profile change cannot add or remove tracks (or the small stream)",
            ));
        }
        let (pipeline, outputs) = LocalPipeline::start(config.clone()).map_err(pipeline_error)?;
        let old = {
            let mut s = lock(&self.state);
            s.epoch += 1;
            s.config = config;
            s.encoders = Some(pipeline.encoder_control());
            if let Some(k) = &s.encoders {
                k.set_expected_loss(s.expected_loss);
                // The server's last `layers-wanted` still holds for the new encoders.
                for layer in [Layer::Big, Layer::Small] {
                    if !s.layers_active[layer.index()] {
                        k.set_layer_active(layer, false);
                    }
                }
            }
            s.pipeline.replace(pipeline)
        };
        if let Some(old) = old {
            let _ = old.stop();
        }
        // The new encoder starts with a keyframe anyway; receivers get it at once.
        Ok((self.epoch(), outputs))
    }

    /// Stops the pipeline (idempotent). Blocks: run it off the engine thread.
    pub fn stop(&self) {
        let old = {
            let mut s = lock(&self.state);
            s.epoch += 1;
            s.encoders = None;
            s.pipeline.take()
        };
        if let Some(old) = old {
            let _ = old.stop();
        }
    }
}

impl Drop for LocalMedia {
    fn drop(&mut self) {
        // The last owner may be the engine thread: stop the pipeline on a thread of its own.
        let pipeline = lock(&self.state).pipeline.take();
        if let Some(p) = pipeline {
            let _ = std::thread::Builder::new()
                .name("rtcroom-local-stop".into())
                .spawn(move || {
                    let _ = p.stop();
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_loss_rises_at_once_and_decays_slowly() {
        // 10 % uplink loss is 26/256: about 20 % end to end over two such legs.
        assert_eq!(next_expected_loss(0, 26), 21);
        assert_eq!(next_expected_loss(21, 0), 15);
        assert_eq!(next_expected_loss(15, 0), 11);
        assert_eq!(next_expected_loss(15, 26), 21);
        let mut e = 21;
        for _ in 0..20 {
            e = next_expected_loss(e, 0);
        }
        assert_eq!(e, 0, "clean reports bring it back to 0");
        assert_eq!(next_expected_loss(3, 255), 50, "capped");
        assert_eq!(
            next_expected_loss(200, 0),
            37,
            "a previous value above the cap is capped"
        );
    }

    #[test]
    fn continuity_closes_mute_gaps_and_restart_jumps() {
        let mut c = Continuity::default();
        assert_eq!(c.map(0, 100, 9_000, 3_000), (100, 9_000));
        assert_eq!(c.map(0, 101, 12_000, 3_000), (101, 12_000));
        // Two packets held back while muted: no gap on the wire.
        c.skip();
        c.skip();
        assert_eq!(c.map(0, 104, 21_000, 3_000), (102, 21_000));
        // A new pipeline starts anywhere; the output goes on where it was.
        assert_eq!(c.map(1, 60_000, 5, 3_000), (103, 24_000));
        assert_eq!(c.map(1, 60_001, 3_005, 3_000), (104, 27_000));
        // Wrapping.
        assert_eq!(
            c.map(1, 65_535, 10, 3_000).0,
            104u16.wrapping_add(65_535 - 60_001)
        );
    }

    #[test]
    fn rewrite_changes_only_sequence_and_timestamp() {
        let pkt = bytes::Bytes::from(vec![0x80, 102, 0, 1, 0, 0, 0, 2, 9, 9, 9, 9, 42]);
        let out = rewrite(&pkt, 7, 8);
        assert_eq!(&out[..], &[0x80, 102, 0, 7, 0, 0, 0, 8, 9, 9, 9, 9, 42]);
        // Too short to be RTP: untouched.
        let short = bytes::Bytes::from_static(&[1, 2, 3]);
        assert_eq!(rewrite(&short, 7, 8), short);
    }
}
