//! Remote pipelines: RTP packets of one user into play, record, application frames or discard.
//!
//! ```text
//! per track: appsrc(application/x-rtp) ! rtpjitterbuffer ! depay [! caps(alignment=au)] ! …
//!   play:    … ! parse/decode ! queue ! convert ! autovideosink / autoaudiosink
//!   record:  … ! h264parse | opusparse ! queue ! {matroskamux | mp4mux (fragmented) | webmmux} ! filesink
//!   frames:  … ! decode ! convert ! caps(I420 | S16LE 48 kHz) ! appsink → FrameCallback
//!   discard: … ! fakesink
//! ```
//!
//! Recording never decodes. MKV is written as it goes and MP4 is fragmented (1 s), so a file
//! stays playable up to the last written cluster/fragment if the process is killed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gst::prelude::*;
use tokio::sync::mpsc;

use crate::bus::{BusWatch, PipelineEvent};
use crate::codec::{AudioCodec, Codec, MediaKind, VideoCodec, rtp_payload_type};
use crate::error::{PipelineError, Result};
use crate::source::STOP_TIMEOUT;
use crate::util::{self, capsfilter, link_chain, make, set_props};

/// Default jitter buffer latency.
pub const DEFAULT_JITTER_LATENCY: Duration = Duration::from_millis(200);
/// Default [`RemoteConfig::faststart_packets`].
pub const DEFAULT_FASTSTART_PACKETS: u32 = 1;
/// Fragment duration of recorded MP4 files: at most this much media is lost on a kill.
pub const MP4_FRAGMENT_MS: u32 = 1000;
/// Longest Matroska cluster, in nanoseconds.
const MAX_CLUSTER_NS: u64 = 1_000_000_000;
/// Bytes of RTP queued per track before the oldest packets are dropped.
const APPSRC_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Container of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordFormat {
    /// Matroska (H.264 or VP8, Opus). Valid as written, even if the process is killed.
    #[default]
    Mkv,
    /// Fragmented MP4 (H.264, Opus).
    Mp4,
    /// WebM (VP8, Opus).
    WebM,
}

impl RecordFormat {
    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            RecordFormat::Mkv => "mkv",
            RecordFormat::Mp4 => "mp4",
            RecordFormat::WebM => "webm",
        }
    }
}

/// A decoded frame handed to the application.
#[derive(Debug, Clone)]
pub struct DecodedFrame {
    /// Audio or video.
    pub kind: MediaKind,
    /// Presentation time (pipeline running time, derived from RTP timestamps).
    pub pts: Option<Duration>,
    /// Duration, when known.
    pub duration: Option<Duration>,
    /// The pixels (I420) or samples (S16LE interleaved); shares GStreamer's memory.
    pub data: Bytes,
    /// Layout of `data`.
    pub info: FrameInfo,
}

/// Layout of a decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameInfo {
    /// I420 video.
    Video {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// Interleaved S16LE audio at 48 kHz. Opus is signalled as 2 channels on the wire
    /// (RFC 7587), so received audio decodes to stereo even when the sender sent mono.
    Audio {
        /// Sample rate in Hz.
        rate: u32,
        /// Channel count.
        channels: u32,
    },
}

/// Receives decoded frames. Called on a GStreamer streaming thread: it must return quickly
/// (hand the frame to a channel), never block.
pub type FrameCallback = Arc<dyn Fn(DecodedFrame) + Send + Sync + 'static>;

/// What a remote pipeline does with the media.
#[derive(Clone)]
#[non_exhaustive]
pub enum RemoteOutput {
    /// Decode and play on the default video/audio outputs.
    Play,
    /// Record without decoding, audio and video of this user in one file.
    Record {
        /// Output file (created or truncated).
        path: PathBuf,
        /// Container.
        format: RecordFormat,
    },
    /// Decode and hand frames to the application.
    Frames(FrameCallback),
    /// Depayload and count, nothing else.
    Discard,
}

impl std::fmt::Debug for RemoteOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteOutput::Play => f.write_str("Play"),
            RemoteOutput::Record { path, format } => f
                .debug_struct("Record")
                .field("path", path)
                .field("format", format)
                .finish(),
            RemoteOutput::Frames(_) => f.write_str("Frames(..)"),
            RemoteOutput::Discard => f.write_str("Discard"),
        }
    }
}

/// Configuration of a [`RemotePipeline`].
#[derive(Clone)]
pub struct RemoteConfig {
    /// Video track codec, if the user publishes video.
    pub video: Option<VideoCodec>,
    /// Audio track codec, if the user publishes audio.
    pub audio: Option<AudioCodec>,
    /// What to do with the media.
    pub output: RemoteOutput,
    /// How long the jitter buffer waits for late or reordered packets.
    pub jitter_latency: Duration,
    /// Start playing out as soon as this many consecutive packets arrived, instead of
    /// holding the first packet for the whole `jitter_latency` (0: hold). The latency still
    /// applies to every later gap, so late and reordered packets are waited for as before.
    pub faststart_packets: u32,
    /// Receives the application SEI messages of an H.264 video track (TRTC's
    /// `sei-message`), whatever the output.
    pub sei: Option<crate::sei::SeiHandler>,
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("video", &self.video)
            .field("audio", &self.audio)
            .field("output", &self.output)
            .field("jitter_latency", &self.jitter_latency)
            .field("faststart_packets", &self.faststart_packets)
            .field("sei", &self.sei.is_some())
            .finish()
    }
}

impl RemoteConfig {
    /// H.264 video and Opus audio into `output`, default jitter latency.
    pub fn new(output: RemoteOutput) -> Self {
        Self {
            video: Some(VideoCodec::H264),
            audio: Some(AudioCodec::Opus),
            output,
            jitter_latency: DEFAULT_JITTER_LATENCY,
            faststart_packets: DEFAULT_FASTSTART_PACKETS,
            sei: None,
        }
    }
}

/// Counters of a remote pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoteStats {
    /// RTP packets accepted by `push_rtp`.
    pub packets_in: u64,
    /// RTP packets rejected by `push_rtp` (malformed, unknown payload type, stopped).
    pub packets_rejected: u64,
    /// Video frames out of the depayloader.
    pub video_frames: u64,
    /// Audio frames out of the depayloader.
    pub audio_frames: u64,
    /// Video frames out of the decoder (play and frames outputs).
    pub decoded_video_frames: u64,
    /// Audio frames out of the decoder (play and frames outputs).
    pub decoded_audio_frames: u64,
}

#[derive(Default)]
struct Counters {
    packets_in: AtomicU64,
    rejected: AtomicU64,
    video: AtomicU64,
    audio: AtomicU64,
    decoded_video: AtomicU64,
    decoded_audio: AtomicU64,
}

impl Counters {
    fn frames(&self, kind: MediaKind, decoded: bool) -> &AtomicU64 {
        match (kind, decoded) {
            (MediaKind::Video, false) => &self.video,
            (MediaKind::Audio, false) => &self.audio,
            (MediaKind::Video, true) => &self.decoded_video,
            (MediaKind::Audio, true) => &self.decoded_audio,
        }
    }
}

/// A running RTP → play/record/frames/discard pipeline for one remote user.
///
/// Constructing, stopping and dropping it block (state changes; up to [`STOP_TIMEOUT`] to
/// finalise a recording): async callers use `spawn_blocking`. [`RemotePipeline::push_rtp`]
/// never blocks.
pub struct RemotePipeline {
    pipeline: gst::Pipeline,
    watch: BusWatch,
    tracks: Vec<(u8, gst_app::AppSrc)>,
    counters: Arc<Counters>,
    /// The decoded audio's volume (Play and Frames outputs decode; Record and Discard do not).
    meter: Arc<crate::level::AudioMeter>,
    stopped: AtomicBool,
}

impl std::fmt::Debug for RemotePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePipeline")
            .field("stats", &self.stats())
            .finish()
    }
}

impl RemotePipeline {
    /// Builds and starts the pipeline; returns it with its event channel.
    pub fn start(config: RemoteConfig) -> Result<(Self, mpsc::UnboundedReceiver<PipelineEvent>)> {
        util::init()?;
        let codecs: Vec<Codec> = config
            .video
            .map(Codec::Video)
            .into_iter()
            .chain(config.audio.map(Codec::Audio))
            .collect();
        if codecs.is_empty() {
            return Err(PipelineError::Config(
                "a remote stream needs at least one track".into(),
            ));
        }
        if let RemoteOutput::Record { format, .. } = &config.output {
            check_container(*format, config.video)?;
        }
        if matches!(config.output, RemoteOutput::Play)
            && config.video.is_some()
            && !has_display(&|k| std::env::var_os(k).is_some())
        {
            // autovideosink crashes the process (SIGSEGV in GStreamer 1.22) when no display
            // exists, so refuse instead of starting it.
            return Err(PipelineError::Config(
                "playing video needs a display (DISPLAY or WAYLAND_DISPLAY); use Frames or Discard"
                    .into(),
            ));
        }
        let pipeline = gst::Pipeline::with_name("rtcroom-remote");
        let counters = Arc::<Counters>::default();
        let meter = Arc::<crate::level::AudioMeter>::default();
        let mux = match &config.output {
            RemoteOutput::Record { path, format } => Some(add_muxer(&pipeline, path, *format)?),
            _ => None,
        };
        let mut tracks = Vec::new();
        for codec in codecs {
            let appsrc = build_track(&pipeline, codec, &config, mux.as_ref(), &counters, &meter)?;
            tracks.push((codec.payload_type(), appsrc));
        }
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let watch = BusWatch::spawn(&pipeline, ev_tx, false)?;
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            let err = watch.state_change_error(e);
            let _ = pipeline.set_state(gst::State::Null);
            return Err(err);
        }
        tracing::info!(output = ?config.output, "remote pipeline started");
        Ok((
            Self {
                pipeline,
                watch,
                tracks,
                counters,
                meter,
                stopped: AtomicBool::new(false),
            },
            ev_rx,
        ))
    }

    /// Pushes one RTP packet (header included). Never blocks: when a track's queue is full,
    /// its oldest packets are dropped. Malformed packets and unknown payload types are
    /// rejected with an error and counted, never panicked on.
    pub fn push_rtp(&self, packet: Bytes) -> Result<()> {
        let result = self.push_inner(packet);
        let counter = if result.is_ok() {
            &self.counters.packets_in
        } else {
            &self.counters.rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn push_inner(&self, packet: Bytes) -> Result<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PipelineError::Stopped);
        }
        let pt = rtp_payload_type(&packet).map_err(PipelineError::BadRtp)?;
        let (_, src) = self
            .tracks
            .iter()
            .find(|(p, _)| *p == pt)
            .ok_or(PipelineError::UnknownPayloadType(pt))?;
        src.push_buffer(gst::Buffer::from_slice(packet))
            .map(|_| ())
            .map_err(|e| PipelineError::Flow(format!("{e:?}")))
    }

    /// Fault injection for supervision tests: post an element error on the pipeline's bus, as
    /// a failing decoder or sink would; its owner then sees [`PipelineEvent::Error`]. Not for
    /// production use.
    #[doc(hidden)]
    pub fn inject_error_for_test(&self) {
        util::post_test_error(&self.pipeline);
    }

    /// The loudest volume of the decoded audio (0–100) since the last call; `None` when the
    /// output does not decode audio (Record, Discard) or before any audio was decoded.
    pub fn audio_level(&self) -> Option<u8> {
        self.meter.take()
    }

    /// Counters.
    pub fn stats(&self) -> RemoteStats {
        let c = &self.counters;
        RemoteStats {
            packets_in: c.packets_in.load(Ordering::Relaxed),
            packets_rejected: c.rejected.load(Ordering::Relaxed),
            video_frames: c.video.load(Ordering::Relaxed),
            audio_frames: c.audio.load(Ordering::Relaxed),
            decoded_video_frames: c.decoded_video.load(Ordering::Relaxed),
            decoded_audio_frames: c.decoded_audio.load(Ordering::Relaxed),
        }
    }

    /// Ends every track, waits (at most [`STOP_TIMEOUT`]) until the end of stream reached the
    /// sinks (a recording is then finalised), and shuts the pipeline down. Idempotent. Blocks.
    pub fn stop(&self) -> Result<()> {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.watch.shutdown(&self.pipeline, STOP_TIMEOUT, || {
            for (_, src) in &self.tracks {
                let _ = src.end_of_stream();
            }
        })
    }
}

impl Drop for RemotePipeline {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "remote pipeline stopped uncleanly");
        }
    }
}

/// One track: appsrc ! rtpjitterbuffer ! depay ! output chain (into `mux` when recording).
fn build_track(
    pipeline: &gst::Pipeline,
    codec: Codec,
    config: &RemoteConfig,
    mux: Option<&gst::Element>,
    counters: &Arc<Counters>,
    meter: &Arc<crate::level::AudioMeter>,
) -> Result<gst_app::AppSrc> {
    let appsrc = gst_app::AppSrc::builder()
        .caps(&codec.rtp_caps())
        .format(gst::Format::Time)
        .is_live(true)
        .do_timestamp(true)
        .block(false)
        .max_bytes(APPSRC_MAX_BYTES)
        .leaky_type(gst_app::AppLeakyType::Downstream)
        .build();
    let jitter = make("rtpjitterbuffer")?;
    let latency_ms = u32::try_from(config.jitter_latency.as_millis()).unwrap_or(u32::MAX);
    // Outside of playback the media timeline matters more than the arrival clock:
    // take timestamps from RTP only, so A/V files keep their real duration.
    let mode = if matches!(config.output, RemoteOutput::Play) {
        "slave"
    } else {
        "none"
    };
    set_props(
        &jitter,
        &[
            ("latency", latency_ms.to_string()),
            ("mode", mode.into()),
            // A packet given up on becomes a gap event, which the Opus decoder fills from the
            // next packet's in-band FEC (or conceals).
            ("do-lost", (codec.kind() == MediaKind::Audio).to_string()),
            (
                "faststart-min-packets",
                config.faststart_packets.to_string(),
            ),
        ],
    )?;
    let mut chain: Vec<gst::Element> = vec![appsrc.clone().upcast(), jitter];
    match codec {
        Codec::Video(VideoCodec::H264) => {
            chain.push(make("rtph264depay")?);
            // Whole access units, so that one buffer is one frame.
            chain.push(capsfilter(
                gst::Caps::builder("video/x-h264")
                    .field("alignment", "au")
                    .build(),
            )?);
        }
        Codec::Video(VideoCodec::Vp8) => chain.push(make("rtpvp8depay")?),
        Codec::Audio(AudioCodec::Opus) => chain.push(make("rtpopusdepay")?),
    }
    // unwrap: the chain holds at least appsrc, jitterbuffer and the depayloader.
    let depay_end = chain.last().expect("chain is not empty").clone();
    count_buffers(&depay_end, counters.clone(), codec.kind(), false);
    if let (Codec::Video(VideoCodec::H264), Some(handler)) = (codec, &config.sei) {
        extract_sei(&depay_end, handler.clone());
    }
    match &config.output {
        RemoteOutput::Record { .. } => {
            match codec {
                Codec::Video(VideoCodec::H264) => {
                    chain.push(make("h264parse")?);
                    // Parameter sets in the stream (avc3), not in the caps (avc): a browser's
                    // encoder changes resolution as its bandwidth estimate moves, and
                    // matroskamux refuses new caps (codec_data) mid-stream, which failed the
                    // whole recording.
                    chain.push(capsfilter(
                        gst::Caps::builder("video/x-h264")
                            .field("stream-format", "avc3")
                            .field("alignment", "au")
                            .build(),
                    )?);
                }
                Codec::Video(VideoCodec::Vp8) => {}
                Codec::Audio(AudioCodec::Opus) => chain.push(make("opusparse")?),
            }
            chain.push(make("queue")?);
        }
        RemoteOutput::Discard => {
            let sink = make("fakesink")?;
            set_props(
                &sink,
                &[("sync", "false".into()), ("async", "false".into())],
            )?;
            chain.push(sink);
        }
        RemoteOutput::Play | RemoteOutput::Frames(_) => {
            let decoder = decoder_chain(codec)?;
            // unwrap: decoder_chain returns at least the decoder.
            let dec = decoder.last().expect("decoder chain is not empty").clone();
            chain.extend(decoder);
            count_buffers(&dec, counters.clone(), codec.kind(), true);
            if codec.kind() == MediaKind::Audio
                && let Some(pad) = dec.static_pad("src")
            {
                crate::level::meter_pad(&pad, meter.clone());
            }
            chain.push(make("queue")?);
            match &config.output {
                RemoteOutput::Frames(cb) => chain.extend(frames_chain(codec, cb.clone())?),
                _ => chain.extend(play_chain(codec)?),
            }
        }
    }
    let refs: Vec<&gst::Element> = chain.iter().collect();
    pipeline.add_many(&refs)?;
    link_chain(&refs)?;
    if let Some(mux) = mux {
        // unwrap: the record chain ends with a queue.
        let last = chain.last().expect("chain is not empty");
        last.link(mux)
            .map_err(|_| PipelineError::Build(format!("{codec} cannot go into {}", mux.name())))?;
    }
    Ok(appsrc)
}

/// Whether a video sink has a display to draw on.
fn has_display(env_set: &dyn Fn(&str) -> bool) -> bool {
    env_set("DISPLAY") || env_set("WAYLAND_DISPLAY")
}

/// Which codecs each container takes; checked before anything is built.
fn check_container(format: RecordFormat, video: Option<VideoCodec>) -> Result<()> {
    match (format, video) {
        (RecordFormat::WebM, Some(VideoCodec::H264)) => Err(PipelineError::Config(
            "WebM cannot hold H.264; use MKV or MP4".into(),
        )),
        (RecordFormat::Mp4, Some(VideoCodec::Vp8)) => Err(PipelineError::Config(
            "MP4 cannot hold VP8; use MKV or WebM".into(),
        )),
        _ => Ok(()),
    }
}

fn add_muxer(
    pipeline: &gst::Pipeline,
    path: &std::path::Path,
    format: RecordFormat,
) -> Result<gst::Element> {
    let mux = match format {
        RecordFormat::Mkv => make("matroskamux")?,
        RecordFormat::WebM => make("webmmux")?,
        RecordFormat::Mp4 => {
            let m = make("mp4mux")?;
            set_props(&m, &[("fragment-duration", MP4_FRAGMENT_MS.to_string())])?;
            m
        }
    };
    if matches!(format, RecordFormat::Mkv | RecordFormat::WebM) {
        set_props(
            &mux,
            &[
                ("writing-app", "rtcroom".into()),
                // Timestamps start at the first packet's arrival; start the file at 0.
                ("offset-to-zero", "true".into()),
                // Close a cluster at least every second, so a killed file loses little.
                ("max-cluster-duration", MAX_CLUSTER_NS.to_string()),
            ],
        )?;
    }
    let sink = make("filesink")?;
    let location = path
        .to_str()
        .ok_or_else(|| PipelineError::Config(format!("path is not UTF-8: {}", path.display())))?;
    set_props(
        &sink,
        &[
            ("location", location.to_owned()),
            ("sync", "false".into()),
            ("async", "false".into()),
            // Write each muxed chunk at once: a killed process leaves everything muxed so far.
            ("buffer-mode", "unbuffered".into()),
        ],
    )?;
    pipeline.add_many([&mux, &sink])?;
    link_chain(&[&mux, &sink])?;
    Ok(mux)
}

/// Parser and decoder for a codec (the decoder is last).
fn decoder_chain(codec: Codec) -> Result<Vec<gst::Element>> {
    Ok(match codec {
        Codec::Video(VideoCodec::H264) => {
            let dec = ["avdec_h264", "openh264dec"]
                .into_iter()
                .find(|f| util::installed(f))
                .ok_or_else(|| PipelineError::MissingElement("avdec_h264 or openh264dec".into()))?;
            vec![make("h264parse")?, make(dec)?]
        }
        Codec::Video(VideoCodec::Vp8) => vec![make("vp8dec")?],
        Codec::Audio(AudioCodec::Opus) => {
            let dec = make("opusdec")?;
            // Recover a lost frame from the next packet's FEC; conceal what FEC cannot.
            set_props(
                &dec,
                &[("use-inband-fec", "true".into()), ("plc", "true".into())],
            )?;
            vec![dec]
        }
    })
}

fn play_chain(codec: Codec) -> Result<Vec<gst::Element>> {
    Ok(match codec.kind() {
        MediaKind::Video => vec![make("videoconvert")?, make("autovideosink")?],
        MediaKind::Audio => vec![
            make("audioconvert")?,
            make("audioresample")?,
            make("autoaudiosink")?,
        ],
    })
}

fn frames_chain(codec: Codec, cb: FrameCallback) -> Result<Vec<gst::Element>> {
    let kind = codec.kind();
    let mut chain = match kind {
        MediaKind::Video => vec![
            make("videoconvert")?,
            capsfilter(
                gst::Caps::builder("video/x-raw")
                    .field("format", "I420")
                    .build(),
            )?,
        ],
        MediaKind::Audio => vec![
            make("audioconvert")?,
            make("audioresample")?,
            capsfilter(
                gst::Caps::builder("audio/x-raw")
                    .field("format", "S16LE")
                    .field("layout", "interleaved")
                    .field("rate", 48_000i32)
                    .build(),
            )?,
        ],
    };
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .callbacks(
            gst_app::AppSinkCallbacks::builder()
                // Runs on the streaming thread; the callback contract says it does not block.
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(frame) = decoded_frame(kind, &sample) {
                        cb(frame);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        )
        .build();
    chain.push(sink.upcast());
    Ok(chain)
}

fn decoded_frame(kind: MediaKind, sample: &gst::Sample) -> Option<DecodedFrame> {
    let caps = sample.caps()?;
    let info = match kind {
        MediaKind::Video => {
            let v = gst_video::VideoInfo::from_caps(caps).ok()?;
            FrameInfo::Video {
                width: v.width(),
                height: v.height(),
            }
        }
        MediaKind::Audio => {
            let s = caps.structure(0)?;
            FrameInfo::Audio {
                rate: u32::try_from(s.get::<i32>("rate").ok()?).ok()?,
                channels: u32::try_from(s.get::<i32>("channels").ok()?).ok()?,
            }
        }
    };
    let buffer = sample.buffer_owned()?;
    let pts = buffer.pts().map(|t| Duration::from_nanos(t.nseconds()));
    let duration = buffer
        .duration()
        .map(|t| Duration::from_nanos(t.nseconds()));
    let mapped = buffer.into_mapped_buffer_readable().ok()?;
    Some(DecodedFrame {
        kind,
        pts,
        duration,
        data: Bytes::from_owner(mapped),
        info,
    })
}

/// Counts buffers leaving `element` (one buffer is one frame after depayloading/decoding).
/// Hand the application SEI messages of each access unit leaving `element` (H.264, Annex B
/// or AVC as negotiated) to `handler`.
fn extract_sei(element: &gst::Element, handler: crate::sei::SeiHandler) {
    let Some(pad) = element.static_pad("src") else {
        return;
    };
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let avc = pad.current_caps().is_some_and(|caps| {
            caps.structure(0)
                .and_then(|s| s.get::<&str>("stream-format").ok())
                .is_some_and(|f| f.starts_with("avc"))
        });
        if let Ok(map) = buffer.map_readable() {
            let messages = if avc {
                crate::sei::parse_avc(&map, 4)
            } else {
                crate::sei::parse_annexb(&map)
            };
            for m in messages {
                handler(m);
            }
        }
        gst::PadProbeReturn::Ok
    });
}

fn count_buffers(element: &gst::Element, counters: Arc<Counters>, kind: MediaKind, decoded: bool) {
    let Some(pad) = element.static_pad("src") else {
        return;
    };
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_, info| {
            let n = match &info.data {
                Some(gst::PadProbeData::BufferList(l)) => l.len() as u64,
                _ => 1,
            };
            counters
                .frames(kind, decoded)
                .fetch_add(n, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_reject_codecs_they_cannot_hold() {
        assert!(check_container(RecordFormat::WebM, Some(VideoCodec::H264)).is_err());
        assert!(check_container(RecordFormat::Mp4, Some(VideoCodec::Vp8)).is_err());
        assert!(check_container(RecordFormat::WebM, Some(VideoCodec::Vp8)).is_ok());
        assert!(check_container(RecordFormat::Mkv, Some(VideoCodec::H264)).is_ok());
        assert!(check_container(RecordFormat::Mkv, Some(VideoCodec::Vp8)).is_ok());
        assert!(check_container(RecordFormat::Mp4, None).is_ok());
        assert_eq!(RecordFormat::default().extension(), "mkv");
    }

    #[test]
    fn video_playback_needs_a_display() {
        assert!(has_display(&|k| k == "DISPLAY"));
        assert!(has_display(&|k| k == "WAYLAND_DISPLAY"));
        assert!(!has_display(&|_| false));
    }

    #[test]
    fn push_rtp_rejects_bad_input_without_panicking() {
        let (p, _ev) = RemotePipeline::start(RemoteConfig {
            video: None,
            audio: Some(AudioCodec::Opus),
            output: RemoteOutput::Discard,
            jitter_latency: Duration::from_millis(10),
            faststart_packets: 0,
            sei: None,
        })
        .expect("discard pipeline starts");
        assert_eq!(
            p.push_rtp(Bytes::new()),
            Err(PipelineError::BadRtp("shorter than the 12-byte RTP header"))
        );
        assert!(matches!(
            p.push_rtp(Bytes::from_static(&[0u8; 12])),
            Err(PipelineError::BadRtp(_))
        ));
        let mut h264 = [0u8; 20];
        h264[0] = 0x80;
        h264[1] = 102;
        assert_eq!(
            p.push_rtp(Bytes::copy_from_slice(&h264)),
            Err(PipelineError::UnknownPayloadType(102))
        );
        assert_eq!(p.stats().packets_rejected, 3);
        p.stop().expect("stops");
        let mut opus = [0u8; 20];
        opus[0] = 0x80;
        opus[1] = 111;
        assert_eq!(
            p.push_rtp(Bytes::copy_from_slice(&opus)),
            Err(PipelineError::Stopped)
        );
    }
}
