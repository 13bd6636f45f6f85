//! Local pipelines: a source (test pattern, file, capture device, application) encoded and
//! payloaded into RTP packets for a `LocalStream`.
//!
//! ```text
//! video: src ! videoconvert ! videoscale ! videorate ! caps(WxH@fps) ! queue ! encoder
//!            [! caps(constrained-baseline)] ! rtp{h264,vp8}pay mtu=1200 ! appsink
//! audio: src ! audioconvert ! audioresample ! caps(48k, ch) ! queue ! opusenc
//!            ! rtpopuspay mtu=1200 ! appsink
//! ```
//!
//! With a small stream ([`LocalConfig::small_video`], TRTC's `enableSmallStream`) the video
//! source feeds a `tee` and is encoded twice, each branch paused or resumed on its own
//! ([`EncoderControl::set_layer_active`]) by a `valve` in front of its encoder:
//!
//! ```text
//! video: src ! tee ! videoconvert ! videoscale ! videorate ! caps(small) ! valve ! queue
//!                  ! encoder ! … ! pay ! appsink                       (Layer::Small)
//!            tee ! videoconvert ! videoscale ! videorate ! caps(profile) ! valve ! queue
//!                  ! encoder ! … ! pay ! appsink                       (Layer::Big)
//! ```
//!
//! Both encoders are of the same kind (the one chosen for the codec: hardware first), with
//! the same payloader settings. The valves sit after `videorate` (so it never sees the gap
//! of a pause and fills it with copies) and before the encode queue (so a paused branch
//! encodes and sends nothing); the part before the queue runs on the source's thread. The
//! small branch is the tee's first pad: the tee pushes each frame to it first, so a frame
//! that has left the big branch has passed (or been stopped by) the small branch's valve.
//!
//! The appsink callbacks only `try_send` into a bounded channel: a slow consumer loses
//! packets (counted in [`LocalStats::packets_dropped`]), it never stalls the encoder.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gst::prelude::*;
use tokio::sync::mpsc;

use crate::bus::{BusWatch, PipelineEvent};
use crate::codec::{AudioCodec, Codec, Layer, RTP_MTU, RtpPacket, VideoCodec};
use crate::encoder::{self, EncoderKind};
use crate::error::{PipelineError, Result};
use crate::profiles::{AudioProfile, VideoProfile};
use crate::util::{self, capsfilter, link_chain, make, set_props};

/// Default capacity of the RTP output channel (about 1 s of 720p video plus audio).
pub const DEFAULT_RTP_QUEUE: usize = 512;
/// How long `stop()` waits for the end of stream to drain through the pipeline.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Opus frame duration in milliseconds (20 ms, the WebRTC norm).
const OPUS_FRAME_MS: u32 = 20;

/// Where the media of a local stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceKind {
    /// A moving test pattern (SMPTE bars scrolling sideways, which makes the encoder reach its
    /// target bitrate like camera content does) and a 440 Hz tone.
    TestPattern {
        /// Stop (EOS) after this much media; `None` runs until `stop()`.
        duration: Option<Duration>,
    },
    /// A media file in any container GStreamer can demux; decoded and re-encoded.
    File {
        /// Path of the file.
        path: PathBuf,
        /// Restart from the beginning at the end instead of ending the stream.
        looping: bool,
    },
    /// Camera (`v4l2src`) and microphone (`pulsesrc`, else `alsasrc`).
    Capture {
        /// V4L2 device such as `/dev/video0`; `None` for the default.
        camera: Option<String>,
        /// Pulse/ALSA device name; `None` for the default.
        microphone: Option<String>,
    },
    /// Raw frames and samples pushed by the application through [`AppVideoInput`] and
    /// [`AppAudioInput`].
    App {
        /// Format of pushed video frames (required when a video track is configured).
        video: Option<AppVideoFormat>,
        /// Format of pushed audio samples (required when an audio track is configured).
        audio: Option<AppAudioFormat>,
    },
}

/// Pixel formats the application may push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawVideoFormat {
    /// Planar Y, U, V 4:2:0.
    I420,
    /// Y plane then interleaved UV 4:2:0.
    Nv12,
    /// 8-bit R, G, B, A.
    Rgba,
    /// 8-bit B, G, R, A.
    Bgra,
    /// 8-bit packed R, G, B.
    Rgb,
}

impl RawVideoFormat {
    fn gst(self) -> gst_video::VideoFormat {
        match self {
            RawVideoFormat::I420 => gst_video::VideoFormat::I420,
            RawVideoFormat::Nv12 => gst_video::VideoFormat::Nv12,
            RawVideoFormat::Rgba => gst_video::VideoFormat::Rgba,
            RawVideoFormat::Bgra => gst_video::VideoFormat::Bgra,
            RawVideoFormat::Rgb => gst_video::VideoFormat::Rgb,
        }
    }
}

/// Format of application-pushed video frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppVideoFormat {
    /// Pixel layout.
    pub format: RawVideoFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Nominal frame rate (frames are re-timed to the profile's rate).
    pub fps: u32,
}

/// Format of application-pushed audio: interleaved signed 16-bit little-endian samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppAudioFormat {
    /// Sample rate in Hz.
    pub rate: u32,
    /// Channel count.
    pub channels: u32,
}

/// The video track of a local stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VideoTrackConfig {
    /// H.264 or VP8.
    pub codec: VideoCodec,
    /// Size, frame rate, bitrate.
    pub profile: VideoProfile,
    /// Force an encoder factory (e.g. `"openh264enc"`); `None` chooses automatically.
    pub encoder: Option<String>,
}

/// The audio track of a local stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AudioTrackConfig {
    /// Opus.
    pub codec: AudioCodec,
    /// Channels and bitrate.
    pub profile: AudioProfile,
    /// Packet loss (percent) the Opus encoder expects at the start, until
    /// [`EncoderControl::set_expected_loss`] says otherwise: in-band FEC is always on, and
    /// carries data in proportion to this.
    pub expected_loss_pct: u8,
}

/// Configuration of a [`LocalPipeline`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// Where media comes from.
    pub source: SourceKind,
    /// Video track, if any.
    pub video: Option<VideoTrackConfig>,
    /// Audio track, if any.
    pub audio: Option<AudioTrackConfig>,
    /// Pace output in real time (the normal case). `false` runs as fast as the CPU allows and
    /// makes pushed app frames block instead of being dropped; meant for tests and batch work.
    pub realtime: bool,
    /// Capacity of the RTP output channel.
    pub rtp_queue: usize,
    /// A second, smaller encoding of the video track at this profile (simulcast: TRTC's
    /// small stream, `enableSmallStream` / `setSmallStreamProfile`). Same codec, encoder
    /// kind and payloader settings as the video track; its packets are [`Layer::Small`].
    /// Needs a video track, and a bitrate below the video track's. `None`: one encoding.
    pub small_video: Option<VideoProfile>,
}

impl LocalConfig {
    /// Video and audio from `source` with default profiles (480p H.264, standard Opus), real time.
    pub fn new(source: SourceKind) -> Self {
        Self {
            source,
            video: Some(VideoTrackConfig::default()),
            audio: Some(AudioTrackConfig::default()),
            realtime: true,
            rtp_queue: DEFAULT_RTP_QUEUE,
            small_video: None,
        }
    }

    /// Checks the small stream against the video track: it needs one, a valid profile and a
    /// bitrate below the track's (a server orders layers by bitrate, so the small one must
    /// be the smaller).
    fn check_small_video(&self) -> Result<()> {
        let Some(small) = &self.small_video else {
            return Ok(());
        };
        let Some(video) = &self.video else {
            return Err(PipelineError::Config(
                "a small stream needs a video track".into(),
            ));
        };
        small.validate()?;
        if small.bitrate_kbps >= video.profile.bitrate_kbps {
            return Err(PipelineError::Config(format!(
                "the small stream's bitrate ({} kbit/s) must be below the video's ({} kbit/s)",
                small.bitrate_kbps, video.profile.bitrate_kbps
            )));
        }
        Ok(())
    }
}

/// Counters of a local pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalStats {
    /// RTP packets handed to the channel.
    pub packets_sent: u64,
    /// RTP packets dropped because the channel was full or closed.
    pub packets_dropped: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
}

/// Pushes application video frames into a [`LocalPipeline`]. Cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct AppVideoInput {
    src: gst_app::AppSrc,
    frame_size: usize,
}

impl AppVideoInput {
    /// Pushes one frame of exactly the configured size. `pts` is the frame's presentation time
    /// since the start of the stream. In real-time mode a full queue drops the oldest frame.
    pub fn push_frame(&self, data: impl AsRef<[u8]> + Send + 'static, pts: Duration) -> Result<()> {
        if data.as_ref().len() != self.frame_size {
            return Err(PipelineError::Config(format!(
                "video frame is {} bytes, expected {}",
                data.as_ref().len(),
                self.frame_size
            )));
        }
        push(&self.src, data, pts)
    }

    /// Ends the video track.
    pub fn end_of_stream(&self) -> Result<()> {
        end_of_stream(&self.src)
    }
}

/// Pushes application audio samples into a [`LocalPipeline`]. Cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct AppAudioInput {
    src: gst_app::AppSrc,
    bytes_per_frame: usize,
}

impl AppAudioInput {
    /// Pushes interleaved S16LE samples (a whole number of sample frames) starting at `pts`.
    pub fn push_samples(
        &self,
        data: impl AsRef<[u8]> + Send + 'static,
        pts: Duration,
    ) -> Result<()> {
        let len = data.as_ref().len();
        if len == 0 || len % self.bytes_per_frame != 0 {
            return Err(PipelineError::Config(format!(
                "audio chunk of {len} bytes is not a whole number of {}-byte sample frames",
                self.bytes_per_frame
            )));
        }
        push(&self.src, data, pts)
    }

    /// Ends the audio track.
    pub fn end_of_stream(&self) -> Result<()> {
        end_of_stream(&self.src)
    }
}

fn end_of_stream(src: &gst_app::AppSrc) -> Result<()> {
    src.end_of_stream()
        .map(|_| ())
        .map_err(|e| PipelineError::Flow(format!("{e:?}")))
}

fn push(
    src: &gst_app::AppSrc,
    data: impl AsRef<[u8]> + Send + 'static,
    pts: Duration,
) -> Result<()> {
    let mut buf = gst::Buffer::from_slice(data);
    {
        // A freshly created buffer has a single owner, so it is writable.
        let b = buf.get_mut().expect("new buffer is writable");
        b.set_pts(gst::ClockTime::from_nseconds(
            u64::try_from(pts.as_nanos()).unwrap_or(u64::MAX),
        ));
    }
    src.push_buffer(buf)
        .map(|_| ())
        .map_err(|e| PipelineError::Flow(format!("{e:?}")))
}

/// Steers the encoders of a running local pipeline: keyframes for the video encoders,
/// pausing and resuming the video layers of a stream with a small stream, the expected packet
/// loss for Opus in-band FEC. Cheap to clone, `Send + Sync`, callable from any thread
/// (including async tasks: nothing here blocks).
#[derive(Debug, Clone)]
pub struct EncoderControl {
    /// The video encoders, by [`Layer::index`] (the small one only with a small stream).
    video: [Option<gst::Element>; 2],
    /// The valves in front of the video encoders (only with a small stream).
    valves: [Option<gst::Element>; 2],
    audio: Option<gst::Element>,
}

impl EncoderControl {
    /// Asks every video encoder (both layers of a stream with a small stream) for a keyframe;
    /// see [`EncoderControl::request_keyframe_of`]. Returns whether one accepted it; `false`
    /// for a pipeline without video.
    pub fn request_keyframe(&self) -> bool {
        let big = self.request_keyframe_of(Layer::Big);
        let small = self.request_keyframe_of(Layer::Small);
        big || small
    }

    /// Sends a force-key-unit event (with SPS/PPS) upstream into the encoder of `layer`
    /// only (e.g. on a PLI for that layer's SSRC): its next frame is a keyframe, also when
    /// the layer is paused now (then the first frame after it resumes). Returns whether the
    /// encoder accepted it; `false` when the pipeline has no such layer.
    pub fn request_keyframe_of(&self, layer: Layer) -> bool {
        let Some(enc) = &self.video[layer.index()] else {
            return false;
        };
        let ev = gst_video::UpstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build();
        let ok = enc.static_pad("src").is_some_and(|pad| pad.send_event(ev));
        tracing::debug!(?layer, accepted = ok, "keyframe requested");
        ok
    }

    /// Pauses (`false`) or resumes (`true`) one video layer of a stream with a small stream
    /// (dynacast: a layer nobody receives is not encoded). A paused layer's frames are
    /// dropped before its encoder, so it encodes and sends nothing; a resumed layer starts
    /// with a keyframe (asked for before the first frame is let through). Returns whether
    /// the pipeline has switchable layers (`false` without a small stream).
    pub fn set_layer_active(&self, layer: Layer, active: bool) -> bool {
        let Some(valve) = &self.valves[layer.index()] else {
            return false;
        };
        // `drop` is a boolean property of every `valve` (GStreamer core), so reading and
        // setting it cannot panic.
        let was_active = !valve.property::<bool>("drop");
        if active && !was_active {
            self.request_keyframe_of(layer);
        }
        valve.set_property("drop", !active);
        if active != was_active {
            tracing::debug!(?layer, active, "video layer switched");
        }
        true
    }

    /// Whether `layer` is being encoded: `false` when paused or absent.
    pub fn is_layer_active(&self, layer: Layer) -> bool {
        match (&self.video[layer.index()], &self.valves[layer.index()]) {
            (None, _) => false,
            (Some(_), None) => true,
            // A boolean property of every `valve`: cannot panic.
            (Some(_), Some(valve)) => !valve.property::<bool>("drop"),
        }
    }

    /// The stream has a small stream (two video layers).
    pub fn has_small(&self) -> bool {
        self.video[Layer::Small.index()].is_some()
    }

    /// Tells the Opus encoder how much packet loss to expect (percent, clamped to 0..=100),
    /// e.g. from RTCP receiver reports: Opus spends bits on in-band FEC (a low-bitrate copy
    /// of each frame in the next packet, which the receiver's decoder uses for a lost one) in
    /// proportion. Returns `false` for a pipeline without audio.
    pub fn set_expected_loss(&self, pct: u8) -> bool {
        let Some(enc) = &self.audio else {
            return false;
        };
        enc.set_property("packet-loss-percentage", i32::from(pct.min(100)));
        true
    }
}

/// What a started [`LocalPipeline`] hands to its owner.
#[derive(Debug)]
pub struct LocalOutputs {
    /// RTP packets of all tracks, in production order per track.
    pub rtp: mpsc::Receiver<RtpPacket>,
    /// Typed pipeline events (EOS, errors, warnings).
    pub events: mpsc::UnboundedReceiver<PipelineEvent>,
    /// Video frame input, for [`SourceKind::App`] with a video track.
    pub app_video: Option<AppVideoInput>,
    /// Audio sample input, for [`SourceKind::App`] with an audio track.
    pub app_audio: Option<AppAudioInput>,
}

/// A running source → encoder → RTP pipeline.
///
/// Constructing, stopping and dropping it block (state changes, up to [`STOP_TIMEOUT`] to
/// drain): async callers use `spawn_blocking`.
pub struct LocalPipeline {
    pipeline: gst::Pipeline,
    watch: BusWatch,
    heads: Vec<gst::Element>,
    /// Stop by sending EOS to the sources (not for files: their decodebin/looping segment
    /// handling wants it at the branch heads).
    eos_at_sources: bool,
    keyframes: EncoderControl,
    encoder: Option<EncoderKind>,
    counters: Arc<Counters>,
    /// The audio track's volume meter, if it has audio.
    meter: Option<Arc<crate::level::AudioMeter>>,
    /// H.264 video: SEI messages waiting for the next access unit.
    sei: Option<crate::sei::SeiQueue>,
    stopped: AtomicBool,
}

impl std::fmt::Debug for LocalPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPipeline")
            .field("encoder", &self.encoder)
            .field("stats", &self.stats())
            .field("stopped", &self.stopped.load(Ordering::Relaxed))
            .finish()
    }
}

impl LocalPipeline {
    /// Builds and starts the pipeline.
    pub fn start(config: LocalConfig) -> Result<(Self, LocalOutputs)> {
        util::init()?;
        if config.video.is_none() && config.audio.is_none() {
            return Err(PipelineError::Config(
                "a local stream needs at least one track".into(),
            ));
        }
        if config.rtp_queue == 0 {
            return Err(PipelineError::Config("rtp_queue must be at least 1".into()));
        }
        let pipeline = gst::Pipeline::with_name("rtcroom-local");
        let (rtp_tx, rtp_rx) = mpsc::channel(config.rtp_queue);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let counters = Arc::<Counters>::default();
        let meter = Arc::<crate::level::AudioMeter>::default();
        let mut heads = Vec::new();
        let mut encoder_kind = None;
        let mut video_el: [Option<gst::Element>; 2] = [None, None];
        let mut valves: [Option<gst::Element>; 2] = [None, None];
        let mut audio_el = None;
        let mut app_video = None;
        let mut app_audio = None;
        let mut sei = None;
        let sync = config.realtime && matches!(config.source, SourceKind::File { .. });

        config.check_small_video()?;
        if let Some(v) = &config.video {
            v.profile.validate()?;
            let kind = encoder::select_encoder(v.codec, v.encoder.as_deref())?;
            let out = Output {
                sync,
                counters: &counters,
                tx: &rtp_tx,
            };
            let simulcast = config.small_video.is_some();
            // The small branch first: the tee pushes to its pads in the order they were
            // requested (see the module documentation).
            let small = config
                .small_video
                .map(|p| build_video_branch(&pipeline, v, p, Layer::Small, kind, &config, &out))
                .transpose()?;
            let big = build_video_branch(&pipeline, v, v.profile, Layer::Big, kind, &config, &out)?;
            encoder_kind = Some(kind);
            sei = big.sei.clone();
            let head = match small {
                None => big.head.clone(),
                Some(small) => {
                    let tee = make("tee")?;
                    pipeline.add(&tee)?;
                    for branch in [&small, &big] {
                        let src = tee
                            .request_pad_simple("src_%u")
                            .ok_or_else(|| PipelineError::Build("tee gave no source pad".into()))?;
                        let sink = branch.head.static_pad("sink").ok_or_else(|| {
                            PipelineError::Build("video branch without a sink pad".into())
                        })?;
                        src.link(&sink)
                            .map_err(|e| PipelineError::Build(format!("tee -> branch: {e:?}")))?;
                    }
                    video_el[Layer::Small.index()] = Some(small.encoder);
                    valves[Layer::Small.index()] = small.valve;
                    tee
                }
            };
            video_el[Layer::Big.index()] = Some(big.encoder);
            if simulcast {
                valves[Layer::Big.index()] = big.valve;
            }
            if let Some((src, app)) = video_source(&config)? {
                pipeline.add(&src)?;
                src.link(&head)?;
                app_video = app;
            }
            heads.push(head);
        }
        if let Some(a) = &config.audio {
            a.profile.validate()?;
            let (head, enc) = build_audio_branch(&pipeline, a, sync, &counters, &rtp_tx, &meter)?;
            audio_el = Some(enc);
            if let Some((src, app)) = audio_source(&config)? {
                pipeline.add(&src)?;
                src.link(&head)?;
                app_audio = app;
            }
            heads.push(head);
        }

        let looping = matches!(config.source, SourceKind::File { looping: true, .. });
        if let SourceKind::File { path, .. } = &config.source {
            add_file_source(&pipeline, path, &config, &heads)?;
        }
        let watch = BusWatch::spawn(&pipeline, ev_tx, looping)?;
        let this = LocalPipeline {
            eos_at_sources: !matches!(config.source, SourceKind::File { .. }),
            pipeline,
            watch,
            heads,
            keyframes: EncoderControl {
                video: video_el,
                valves,
                audio: audio_el,
            },
            encoder: encoder_kind,
            counters,
            meter: config.audio.is_some().then_some(meter),
            sei,
            stopped: AtomicBool::new(false),
        };
        this.play(looping)?;
        tracing::info!(source = ?config.source, encoder = ?encoder_kind, "local pipeline started");
        Ok((
            this,
            LocalOutputs {
                rtp: rtp_rx,
                events: ev_rx,
                app_video,
                app_audio,
            },
        ))
    }

    fn play(&self, looping: bool) -> Result<()> {
        let state_err = |e| self.watch.state_change_error(e);
        if looping {
            // Preroll, then replace the initial segment by a segment seek so that the end of
            // the file posts segment-done (handled by the bus thread) instead of EOS.
            self.pipeline
                .set_state(gst::State::Paused)
                .map_err(state_err)?;
            let (res, _, _) = self.pipeline.state(gst::ClockTime::from_seconds(10));
            res.map_err(state_err)?;
            self.pipeline.seek(
                1.0,
                gst::SeekFlags::FLUSH | gst::SeekFlags::SEGMENT,
                gst::SeekType::Set,
                gst::ClockTime::ZERO,
                gst::SeekType::None,
                gst::ClockTime::NONE,
            )?;
        }
        self.pipeline
            .set_state(gst::State::Playing)
            .map_err(state_err)?;
        Ok(())
    }

    /// Sends an SEI message with the next encoded video frame (H.264 only). Does not block;
    /// at most [`crate::sei::MAX_QUEUED`] wait (the oldest is dropped).
    pub fn send_sei(&self, message: crate::sei::SeiMessage) -> Result<()> {
        crate::sei::SeiMessage::check(message.payload_type, &message.data)
            .map_err(PipelineError::Config)?;
        match &self.sei {
            Some(queue) => {
                queue.push(message);
                Ok(())
            }
            None => Err(PipelineError::Config(
                "SEI messages need an H.264 video track".into(),
            )),
        }
    }

    /// Asks the video encoder for a keyframe (e.g. on RTCP PLI/FIR). Does not block.
    pub fn request_keyframe(&self) -> bool {
        self.keyframes.request_keyframe()
    }

    /// Pauses or resumes one video layer of a stream with a small stream; see
    /// [`EncoderControl::set_layer_active`]. Does not block.
    pub fn set_layer_active(&self, layer: Layer, active: bool) -> bool {
        self.keyframes.set_layer_active(layer, active)
    }

    /// A handle to steer the encoders (keyframes, expected loss) from other threads or tasks.
    pub fn encoder_control(&self) -> EncoderControl {
        self.keyframes.clone()
    }

    /// The video encoder in use, if the stream has video.
    pub fn encoder(&self) -> Option<EncoderKind> {
        self.encoder
    }

    /// The loudest volume of the audio being sent (0–100) since the last call; `None`
    /// without an audio track or before any audio passed.
    pub fn audio_level(&self) -> Option<u8> {
        self.meter.as_ref().and_then(|m| m.take())
    }

    /// Fault injection for supervision tests: post an element error on the pipeline's bus,
    /// as a failing device or encoder would; its owner then sees [`PipelineEvent::Error`].
    /// Not for production use.
    #[doc(hidden)]
    pub fn inject_error_for_test(&self) {
        util::post_test_error(&self.pipeline);
    }

    /// Packet counters.
    pub fn stats(&self) -> LocalStats {
        LocalStats {
            packets_sent: self.counters.sent.load(Ordering::Relaxed),
            packets_dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }

    /// Ends every track, waits (at most [`STOP_TIMEOUT`]) for the end of stream to drain, and
    /// shuts the pipeline down. Idempotent. Blocks.
    pub fn stop(&self) -> Result<()> {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.watch.shutdown(&self.pipeline, STOP_TIMEOUT, || {
            // Test-pattern, device and app sources get EOS at the source (as `gst-launch-1.0
            // -e` does): each pushes it from its own streaming thread after its last buffer.
            // Injecting it into the branch heads from this thread raced their streaming
            // threads, and a stream sometimes aborted with a flow error (the pipelines'
            // roundtrip tests failed about 1 run in 6 under load). File sources keep EOS at
            // the heads, which their looping segment handling needs.
            if !(self.eos_at_sources && self.pipeline.send_event(gst::event::Eos::new())) {
                for head in &self.heads {
                    if let Some(pad) = head.static_pad("sink") {
                        pad.send_event(gst::event::Eos::new());
                    }
                }
            }
        })
    }
}

impl Drop for LocalPipeline {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "local pipeline stopped uncleanly");
        }
    }
}

struct VideoBranch {
    head: gst::Element,
    encoder: gst::Element,
    /// H.264, big layer: SEI messages waiting for the next access unit.
    sei: Option<crate::sei::SeiQueue>,
    /// With a small stream: the valve in front of the encoder (open at the start).
    valve: Option<gst::Element>,
}

/// Where a branch's RTP goes: the shared channel and counters.
struct Output<'a> {
    sync: bool,
    counters: &'a Arc<Counters>,
    tx: &'a mpsc::Sender<RtpPacket>,
}

fn encode_queue(leaky: bool) -> Result<gst::Element> {
    let q = make("queue")?;
    if leaky {
        // A slow encoder drops old raw frames instead of adding latency.
        set_props(
            &q,
            &[
                ("leaky", "downstream".into()),
                ("max-size-buffers", "3".into()),
                ("max-size-bytes", "0".into()),
                ("max-size-time", "0".into()),
            ],
        )?;
    }
    Ok(q)
}

/// One encoding of the video track: `p` is its profile, `layer` which one it is. SEI
/// messages ride the big layer only; the valve exists with a small stream only.
fn build_video_branch(
    pipeline: &gst::Pipeline,
    v: &VideoTrackConfig,
    p: VideoProfile,
    layer: Layer,
    kind: EncoderKind,
    config: &LocalConfig,
    out: &Output<'_>,
) -> Result<VideoBranch> {
    let convert = make("videoconvert")?;
    let scale = make("videoscale")?;
    let rate = make("videorate")?;
    let raw_caps = capsfilter(
        gst::Caps::builder("video/x-raw")
            .field("width", p.width as i32)
            .field("height", p.height as i32)
            .field("framerate", gst::Fraction::new(p.fps as i32, 1))
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .build(),
    )?;
    // Live sources push at their own pace: drop rather than queue when the encoder lags. A
    // file is paced by the appsink clock sync downstream, so its queue must not leak.
    let live = config.realtime && !matches!(config.source, SourceKind::File { .. });
    let queue = encode_queue(live)?;
    let enc = encoder::build_encoder(kind, &p)?;
    let mut chain = vec![convert, scale, rate, raw_caps];
    let valve = match config.small_video {
        Some(_) => {
            let valve = make("valve")?;
            set_props(&valve, &[("drop", "false".into())])?;
            chain.push(valve.clone());
            Some(valve)
        }
        None => None,
    };
    chain.extend([queue, enc.clone()]);
    let mut sei = None;
    let codec = Codec::Video(v.codec);
    let pay = match v.codec {
        VideoCodec::H264 => {
            chain.push(capsfilter(
                gst::Caps::builder("video/x-h264")
                    .field("profile", "constrained-baseline")
                    .field("stream-format", "byte-stream")
                    .field("alignment", "au")
                    .build(),
            )?);
            let pay = make("rtph264pay")?;
            set_props(
                &pay,
                &[
                    ("config-interval", "-1".into()),
                    ("aggregate-mode", "zero-latency".into()),
                ],
            )?;
            if layer == Layer::Big
                && let Some(pad) = pay.static_pad("sink")
            {
                let queue = crate::sei::SeiQueue::default();
                insert_sei(&pad, queue.clone());
                sei = Some(queue);
            }
            pay
        }
        VideoCodec::Vp8 => {
            let pay = make("rtpvp8pay")?;
            set_props(&pay, &[("picture-id-mode", "15-bit".into())])?;
            pay
        }
    };
    set_props(
        &pay,
        &[
            ("pt", codec.payload_type().to_string()),
            ("mtu", RTP_MTU.to_string()),
        ],
    )?;
    chain.push(pay);
    chain.push(rtp_appsink(codec, layer, out)?);
    let refs: Vec<&gst::Element> = chain.iter().collect();
    pipeline.add_many(&refs)?;
    link_chain(&refs)?;
    Ok(VideoBranch {
        head: chain[0].clone(),
        encoder: enc,
        sei,
        valve,
    })
}

/// Put the queued SEI messages in front of the first slice of each access unit that reaches
/// `pad` (H.264 byte-stream, one access unit per buffer), so they leave with that frame.
fn insert_sei(pad: &gst::Pad, queue: crate::sei::SeiQueue) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if queue.is_empty() {
            return gst::PadProbeReturn::Ok;
        }
        let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let messages = queue.take();
        let nal = crate::sei::encode_nal(&messages);
        let bytes = match buffer.map_readable() {
            Ok(map) => crate::sei::insert_annexb(&map, &nal),
            Err(_) => return gst::PadProbeReturn::Ok,
        };
        let mut out = gst::Buffer::from_mut_slice(bytes);
        if let Some(o) = out.get_mut() {
            o.set_pts(buffer.pts());
            o.set_dts(buffer.dts());
            o.set_duration(buffer.duration());
            o.set_flags(buffer.flags());
        }
        *buffer = out;
        gst::PadProbeReturn::Ok
    });
}

fn build_audio_branch(
    pipeline: &gst::Pipeline,
    a: &AudioTrackConfig,
    sync: bool,
    counters: &Arc<Counters>,
    tx: &mpsc::Sender<RtpPacket>,
    meter: &Arc<crate::level::AudioMeter>,
) -> Result<(gst::Element, gst::Element)> {
    let p = a.profile;
    let convert = make("audioconvert")?;
    let resample = make("audioresample")?;
    let raw_caps = capsfilter(
        gst::Caps::builder("audio/x-raw")
            .field("rate", p.sample_rate as i32)
            .field("channels", p.channels as i32)
            .build(),
    )?;
    let queue = encode_queue(false)?;
    let enc = make("opusenc")?;
    set_props(
        &enc,
        &[
            ("bitrate", (u64::from(p.bitrate_kbps) * 1000).to_string()),
            ("frame-size", OPUS_FRAME_MS.to_string()),
            ("inband-fec", "true".into()),
            // What WebRTC stacks use (libwebrtc's OPUS_APPLICATION_VOIP): speech-first mode
            // decisions, and the SILK layer (the one that carries FEC) at any expected loss,
            // where "generic" keeps music-like input in CELT (no FEC) below ~8 % loss.
            ("audio-type", "voice".into()),
            (
                "packet-loss-percentage",
                a.expected_loss_pct.min(100).to_string(),
            ),
        ],
    )?;
    let codec = Codec::Audio(a.codec);
    let pay = make("rtpopuspay")?;
    set_props(
        &pay,
        &[
            ("pt", codec.payload_type().to_string()),
            ("mtu", RTP_MTU.to_string()),
        ],
    )?;
    let out = Output { sync, counters, tx };
    let sink = rtp_appsink(codec, Layer::Big, &out)?;
    if let Some(pad) = raw_caps.static_pad("src") {
        crate::level::meter_pad(&pad, meter.clone());
    }
    let chain = [&convert, &resample, &raw_caps, &queue, &enc, &pay, &sink];
    pipeline.add_many(chain)?;
    link_chain(&chain)?;
    Ok((convert, enc))
}

/// The appsink that hands RTP packets of `layer` to the channel without ever blocking.
fn rtp_appsink(codec: Codec, layer: Layer, out: &Output<'_>) -> Result<gst::Element> {
    let counters = out.counters.clone();
    let tx = out.tx.clone();
    let sink = gst_app::AppSink::builder()
        .sync(out.sync)
        .async_(false)
        .callbacks(
            gst_app::AppSinkCallbacks::builder()
                // Runs on the streaming thread: only try_send, never block.
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buffer) = sample.buffer_owned() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let Ok(mapped) = buffer.into_mapped_buffer_readable() else {
                        return Err(gst::FlowError::Error);
                    };
                    let packet = RtpPacket {
                        data: Bytes::from_owner(mapped),
                        codec,
                        layer,
                    };
                    match tx.try_send(packet) {
                        Ok(()) => counters.sent.fetch_add(1, Ordering::Relaxed),
                        Err(_) => counters.dropped.fetch_add(1, Ordering::Relaxed),
                    };
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        )
        .build();
    Ok(sink.upcast())
}

/// The video source element, and the push handle when it is an appsrc.
fn video_source(config: &LocalConfig) -> Result<Option<(gst::Element, Option<AppVideoInput>)>> {
    let live = config.realtime;
    let Some(p) = config.video.as_ref().map(|v| v.profile) else {
        return Ok(None);
    };
    let src = match &config.source {
        SourceKind::TestPattern { duration } => {
            let src = make("videotestsrc")?;
            let mut props = vec![
                ("pattern", "smpte".to_string()),
                ("horizontal-speed", "4".into()),
                ("is-live", live.to_string()),
            ];
            if let Some(d) = duration {
                props.push(("num-buffers", frames_in(*d, p.fps).to_string()));
            }
            set_props(&src, &props)?;
            src
        }
        SourceKind::File { .. } => return Ok(None),
        SourceKind::Capture { camera, .. } => {
            let src = make("v4l2src")?;
            if let Some(dev) = camera {
                set_props(&src, &[("device", dev.clone())])?;
            }
            src
        }
        SourceKind::App { video, .. } => {
            let fmt = video.ok_or_else(|| {
                PipelineError::Config("app source with a video track needs a video format".into())
            })?;
            let info = gst_video::VideoInfo::builder(fmt.format.gst(), fmt.width, fmt.height)
                .fps(gst::Fraction::new(fmt.fps.max(1) as i32, 1))
                .build()
                .map_err(|_| PipelineError::Config(format!("bad app video format {fmt:?}")))?;
            let src = app_src(&info.to_caps()?, live, 3)?;
            let input = AppVideoInput {
                src: src.clone(),
                frame_size: info.size(),
            };
            return Ok(Some((src.upcast(), Some(input))));
        }
    };
    Ok(Some((src, None)))
}

/// The audio source element, and the push handle when it is an appsrc.
fn audio_source(config: &LocalConfig) -> Result<Option<(gst::Element, Option<AppAudioInput>)>> {
    let live = config.realtime;
    if config.audio.is_none() {
        return Ok(None);
    }
    let src = match &config.source {
        SourceKind::TestPattern { duration } => {
            let src = make("audiotestsrc")?;
            let spb = 48_000 * OPUS_FRAME_MS / 1000;
            let mut props = vec![
                ("wave", "sine".to_string()),
                ("freq", "440".into()),
                ("is-live", live.to_string()),
                ("samplesperbuffer", spb.to_string()),
            ];
            if let Some(d) = duration {
                let buffers = (d.as_millis() / u128::from(OPUS_FRAME_MS)).max(1);
                props.push(("num-buffers", buffers.to_string()));
            }
            set_props(&src, &props)?;
            src
        }
        SourceKind::File { .. } => return Ok(None),
        SourceKind::Capture { microphone, .. } => {
            let factory = microphone_factory(&util::installed)
                .ok_or_else(|| PipelineError::MissingElement("pulsesrc or alsasrc".into()))?;
            let src = make(factory)?;
            if let Some(dev) = microphone {
                set_props(&src, &[("device", dev.clone())])?;
            }
            set_props(&src, &[("do-timestamp", "true".into())])?;
            src
        }
        SourceKind::App { audio, .. } => {
            let fmt = audio.ok_or_else(|| {
                PipelineError::Config("app source with an audio track needs an audio format".into())
            })?;
            if !(1..=8).contains(&fmt.channels) || !(8_000..=192_000).contains(&fmt.rate) {
                return Err(PipelineError::Config(format!(
                    "bad app audio format {fmt:?}"
                )));
            }
            let caps = gst::Caps::builder("audio/x-raw")
                .field("format", "S16LE")
                .field("layout", "interleaved")
                .field("rate", fmt.rate as i32)
                .field("channels", fmt.channels as i32)
                .build();
            let src = app_src(&caps, live, 50)?;
            let input = AppAudioInput {
                src: src.clone(),
                bytes_per_frame: 2 * fmt.channels as usize,
            };
            return Ok(Some((src.upcast(), Some(input))));
        }
    };
    Ok(Some((src, None)))
}

/// Which microphone element to use: PulseAudio (also PipeWire's pulse server), else ALSA.
pub fn microphone_factory(installed: &dyn Fn(&str) -> bool) -> Option<&'static str> {
    ["pulsesrc", "alsasrc"].into_iter().find(|f| installed(f))
}

fn frames_in(d: Duration, fps: u32) -> u64 {
    (d.as_millis() * u128::from(fps) / 1000).max(1) as u64
}

fn app_src(caps: &gst::Caps, realtime: bool, max_buffers: u64) -> Result<gst_app::AppSrc> {
    let mut b = gst_app::AppSrc::builder()
        .caps(caps)
        .format(gst::Format::Time)
        .is_live(true)
        .max_buffers(max_buffers)
        .max_bytes(0)
        .max_time(gst::ClockTime::ZERO);
    b = if realtime {
        b.block(false).leaky_type(gst_app::AppLeakyType::Downstream)
    } else {
        b.block(true)
    };
    Ok(b.build())
}

fn add_file_source(
    pipeline: &gst::Pipeline,
    path: &std::path::Path,
    config: &LocalConfig,
    heads: &[gst::Element],
) -> Result<()> {
    let abs = std::fs::canonicalize(path)
        .map_err(|e| PipelineError::Config(format!("media file {}: {e}", path.display())))?;
    let uri = gst::glib::filename_to_uri(&abs, None)
        .map_err(|e| PipelineError::Config(format!("media file {}: {e}", path.display())))?;
    let decode = make("uridecodebin")?;
    set_props(&decode, &[("uri", uri.to_string())])?;
    pipeline.add(&decode)?;
    // heads[0] is video when configured, then audio.
    let mut it = heads.iter();
    let video_head = config.video.as_ref().and_then(|_| it.next()).cloned();
    let audio_head = config.audio.as_ref().and_then(|_| it.next()).cloned();
    let (vh, ah) = (video_head.clone(), audio_head.clone());
    // Runs on a streaming thread: link decoded pads to the matching branch.
    decode.connect_pad_added(move |_, pad| {
        let caps = pad.current_caps().or_else(|| Some(pad.query_caps(None)));
        let is_video = caps
            .as_ref()
            .and_then(|c| c.structure(0))
            .is_some_and(|s| s.name().starts_with("video/"));
        let is_audio = caps
            .as_ref()
            .and_then(|c| c.structure(0))
            .is_some_and(|s| s.name().starts_with("audio/"));
        let head = if is_video {
            vh.as_ref()
        } else if is_audio {
            ah.as_ref()
        } else {
            None
        };
        if let Some(sink) = head.and_then(|h| h.static_pad("sink"))
            && !sink.is_linked()
            && let Err(e) = pad.link(&sink)
        {
            tracing::warn!(error = ?e, "cannot link decoded file pad");
        }
    });
    // A configured track the file lacks gets EOS, so the other track can run and end.
    decode.connect_no_more_pads(move |_| {
        for head in [video_head.as_ref(), audio_head.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Some(sink) = head.static_pad("sink")
                && !sink.is_linked()
            {
                tracing::warn!(branch = %head.name(), "media file lacks this track; ending it");
                sink.send_event(gst::event::Eos::new());
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microphone_prefers_pulse_then_alsa() {
        assert_eq!(
            microphone_factory(&|n| n == "pulsesrc" || n == "alsasrc"),
            Some("pulsesrc")
        );
        assert_eq!(microphone_factory(&|n| n == "alsasrc"), Some("alsasrc"));
        assert_eq!(microphone_factory(&|_| false), None);
    }

    #[test]
    fn frame_counts() {
        assert_eq!(frames_in(Duration::from_secs(2), 15), 30);
        assert_eq!(frames_in(Duration::from_millis(1), 15), 1);
    }
}
