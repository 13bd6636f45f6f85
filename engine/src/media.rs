//! Local streams ([`create_stream`], [`LocalStream`]) and the subscription options.
//!
//! A [`LocalStream`] is TRTC's `LocalStream`: a capture/encode pipeline (test pattern and
//! tone, a media file, camera and microphone, or frames the application pushes) whose RTP
//! goes to every uplink peer connection that publishes it. Building and stopping pipelines
//! block for tens to hundreds of milliseconds, so those steps run on threads of their own,
//! never on the engine thread that drives ICE and DTLS.

use std::sync::Arc;

use actix::Actor;
use rtcroom_actors::ClientRequest;
use rtcroom_actors::core::Call;
use rtcroom_actors::media::{LocalMedia, LocalMediaStats, LocalStreamActor, RunPipeline};
use rtcroom_pipelines::{
    AppAudioInput, AppVideoInput, AudioProfile, AudioTrackConfig, LocalConfig, LocalOutputs,
    MediaKind, SourceKind, VideoProfile, VideoTrackConfig,
};
use rtcroom_protocol::signal::{self, StreamType, VideoCodec, VideoStreamType};
use rtcroom_protocol::{ErrorCode, RtcError};
use tokio::sync::oneshot;

pub use rtcroom_actors::media::{FrameHandler, RemoteMediaStats, SubscribeOutput};
pub use rtcroom_pipelines::{
    AppAudioFormat, AppVideoFormat, DecodedFrame, FrameInfo, RawVideoFormat, RecordFormat,
};

/// What [`create_stream`] builds (TRTC's `createStream` options). `#[non_exhaustive]`: start
/// from `StreamConfig::default()` and use the `with_*` methods.
///
/// ```
/// use rtcroom::{StreamConfig, VideoProfile};
/// let config = StreamConfig::default()
///     .with_audio(false)
///     .with_video_profile(VideoProfile::new(320, 240, 30, 400));
/// assert!(config.video && !config.audio);
/// ```
///
/// ## Small stream (simulcast)
///
/// TRTC's Web SDK enables the small stream on the client (`client.enableSmallStream()` and
/// `client.setSmallStreamProfile({width, height, bitrate, frameRate})` before `publish`).
/// Here the small stream is part of the stream, because its encoder is part of the stream's
/// pipeline: [`StreamConfig::with_small_stream`] at creation (TRTC's default profile:
/// [`VideoProfile::SMALL_STREAM`], 160×120, 15 fps, 100 kbit/s), and
/// [`LocalStream::set_small_stream_profile`] later. Such a stream is published as two
/// layers of one video track (rids `h` and `l`); each subscriber receives one
/// ([`SubscribeOptions::with_video_type`], [`crate::Client::set_remote_video_stream_type`])
/// and the server pauses a layer nobody receives.
///
/// ```
/// use rtcroom::{StreamConfig, VideoProfile};
/// let config = StreamConfig::default().with_small_stream(Some(VideoProfile::SMALL_STREAM));
/// assert_eq!(config.small_stream, Some(VideoProfile::new(160, 120, 15, 100)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConfig {
    /// Capture and send audio.
    pub audio: bool,
    /// Capture and send video.
    pub video: bool,
    /// Where the media comes from.
    pub source: SourceKind,
    /// Video size, frame rate and bitrate (default TRTC `480p`).
    pub video_profile: VideoProfile,
    /// The video codec sent (default H.264, as TRTC's Web SDK v4; VP8 on request).
    /// Subscribers learn it from the stream's `video_codec`.
    pub video_codec: VideoCodec,
    /// Audio profile (default TRTC `standard`).
    pub audio_profile: AudioProfile,
    /// Main (camera/mic) or auxiliary (screen share).
    pub stream_type: StreamType,
    /// A small stream (TRTC's `enableSmallStream` / `setSmallStreamProfile`): the video
    /// encoded a second time at this profile and published as a second layer. Needs video
    /// and a bitrate below `video_profile`'s. Default `None`.
    pub small_stream: Option<VideoProfile>,
}

impl Default for StreamConfig {
    /// Audio and video from the test pattern and tone, `480p`, `standard`, main stream.
    fn default() -> Self {
        StreamConfig {
            audio: true,
            video: true,
            source: SourceKind::TestPattern { duration: None },
            video_profile: VideoProfile::default(),
            video_codec: VideoCodec::H264,
            audio_profile: AudioProfile::default(),
            stream_type: StreamType::Main,
            small_stream: None,
        }
    }
}

crate::config::with_fields!(StreamConfig {
    /// Capture and send audio.
    with_audio => audio: bool,
    /// Capture and send video.
    with_video => video: bool,
    /// Where the media comes from.
    with_source => source: SourceKind,
    /// Video size, frame rate and bitrate.
    with_video_profile => video_profile: VideoProfile,
    /// The video codec sent.
    with_video_codec => video_codec: VideoCodec,
    /// Audio profile.
    with_audio_profile => audio_profile: AudioProfile,
    /// Main or auxiliary.
    with_stream_type => stream_type: StreamType,
    /// With a small stream at this profile (`Some(VideoProfile::SMALL_STREAM)`: TRTC's
    /// default), or without one.
    with_small_stream => small_stream: Option<VideoProfile>,
});

/// A small stream's profile against its stream's video profile: valid, and a bitrate below
/// the video's (the layers are told apart by bitrate). INVALID_PARAMETER otherwise.
fn check_small_stream(video: &VideoProfile, small: &VideoProfile) -> Result<(), RtcError> {
    small
        .validate()
        .map_err(|e| RtcError::invalid_parameter(None, format!("small stream: {e}")))?;
    if small.bitrate_kbps >= video.bitrate_kbps {
        return Err(RtcError::invalid_parameter(
            None,
            format!(
                "the small stream's bitrate ({} kbit/s) must be below the video's ({} kbit/s)",
                small.bitrate_kbps, video.bitrate_kbps
            ),
        ));
    }
    Ok(())
}

impl StreamConfig {
    fn pipeline_config(&self) -> LocalConfig {
        let mut c = LocalConfig::new(self.source.clone());
        c.video = self.video.then(|| VideoTrackConfig {
            codec: match self.video_codec {
                VideoCodec::H264 => rtcroom_pipelines::VideoCodec::H264,
                VideoCodec::Vp8 => rtcroom_pipelines::VideoCodec::Vp8,
            },
            profile: self.video_profile,
            ..Default::default()
        });
        c.audio = self.audio.then(|| AudioTrackConfig {
            profile: self.audio_profile,
            ..Default::default()
        });
        c.small_video = self.small_stream.filter(|_| self.video);
        c
    }
}

/// Run blocking pipeline work on a thread of its own and await its result.
async fn off_thread<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, RtcError> + Send + 'static,
) -> Result<T, RtcError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("rtcroom-{what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| RtcError::new(ErrorCode::Unknown, format!("cannot start a thread: {e}")))?;
    rx.await.unwrap_or_else(|_| {
        Err(RtcError::new(
            ErrorCode::Unknown,
            format!("{what} panicked"),
        ))
    })
}

/// Create and start a local stream (TRTC's `TRTC.createStream` + `initialize`). Errors:
/// INVALID_PARAMETER without audio and video, with a bad profile, or with a small stream
/// without video or not smaller than the video; INITIALIZE_FAILED when the pipeline cannot
/// be built (missing device, file or encoder).
pub async fn create_stream(config: StreamConfig) -> Result<LocalStream, RtcError> {
    if !config.audio && !config.video {
        return Err(RtcError::invalid_parameter(
            None,
            "a stream needs audio or video",
        ));
    }
    if config.video
        && let Err(e) = config.video_profile.validate()
    {
        return Err(RtcError::invalid_parameter(None, e.to_string()));
    }
    if config.audio
        && let Err(e) = config.audio_profile.validate()
    {
        return Err(RtcError::invalid_parameter(None, e.to_string()));
    }
    if let Some(small) = &config.small_stream {
        if !config.video {
            return Err(RtcError::invalid_parameter(
                None,
                "a small stream needs video",
            ));
        }
        check_small_stream(&config.video_profile, small)?;
    }
    let arbiter = crate::runtime::engine()?;
    let pipeline = config.pipeline_config();
    let stream_type = config.stream_type;
    let (media, outputs) = off_thread("stream-start", move || {
        crate::runtime::preload_media();
        LocalMedia::start(pipeline, stream_type)
    })
    .await?;
    let (app_video, app_audio) = (outputs.app_video.clone(), outputs.app_audio.clone());
    let supervisor = Arc::new(std::sync::Mutex::new(None));
    run_pipeline(&arbiter, &media, &supervisor, media.epoch(), outputs);
    Ok(LocalStream {
        media,
        supervisor,
        app_video,
        app_audio,
    })
}

/// Hand pipeline `epoch` to the stream's supervisor ([`LocalStreamActor`]: it pumps the RTP
/// into the tracks and rebuilds a failed pipeline), starting a supervisor when there is none
/// (the first pipeline, or one after the previous pipeline ended and its supervisor with it).
fn run_pipeline(
    arbiter: &actix::ArbiterHandle,
    media: &Arc<LocalMedia>,
    supervisor: &std::sync::Mutex<Option<actix::Addr<LocalStreamActor>>>,
    epoch: u64,
    outputs: LocalOutputs,
) {
    let mut current = supervisor.lock().unwrap_or_else(|p| p.into_inner());
    let addr = match current.as_ref().filter(|a| a.connected()) {
        Some(a) => a.clone(),
        None => {
            let m = media.clone();
            let span = tracing::info_span!("rtcroom_local_stream");
            let a = LocalStreamActor::start_in_arbiter(arbiter, move |_| {
                LocalStreamActor::new(m, span)
            });
            *current = Some(a.clone());
            a
        }
    };
    addr.do_send(RunPipeline {
        epoch,
        rtp: outputs.rtp,
        events: outputs.events,
    });
}

/// A local stream (TRTC's `LocalStream`). Publish it with [`crate::Client::publish`].
/// Dropping the last handle stops its pipeline (on a thread of its own).
#[derive(Clone)]
pub struct LocalStream {
    pub(crate) media: Arc<LocalMedia>,
    /// The pipeline's supervisor.
    supervisor: Arc<std::sync::Mutex<Option<actix::Addr<LocalStreamActor>>>>,
    app_video: Option<AppVideoInput>,
    app_audio: Option<AppAudioInput>,
}

impl std::fmt::Debug for LocalStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStream")
            .field("media", &self.media)
            .field("app_video", &self.app_video)
            .field("app_audio", &self.app_audio)
            .finish()
    }
}

impl LocalStream {
    /// The SDP fmtp its video is sent with (H.264: the `profile-level-id` whose level
    /// follows the resolution and frame rate), if it has video with one.
    pub fn video_fmtp(&self) -> Option<String> {
        self.media
            .video_track()
            .map(|t| t.codec().sdp_fmtp_line)
            .filter(|f| !f.is_empty())
    }

    /// Fault injection for supervision tests: the running pipeline reports an element
    /// error (as a failing device or encoder would); returns the pipeline's epoch before.
    /// The stream's supervisor rebuilds it. Only with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn fail_pipeline_for_test(&self) -> u64 {
        let epoch = self.media.epoch();
        self.media.inject_failure_for_test();
        epoch
    }

    /// Tells whether the stream still exists after its handles are dropped (when it goes,
    /// its pipeline stops). Only with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn liveness_for_test(&self) -> StreamLivenessForTest {
        StreamLivenessForTest(Arc::downgrade(&self.media))
    }

    /// Which pipeline the stream runs (bumped by every rebuild or profile change). Only with
    /// the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn pipeline_epoch_for_test(&self) -> u64 {
        self.media.epoch()
    }

    /// Main or auxiliary.
    pub fn stream_type(&self) -> StreamType {
        self.media.stream_type()
    }

    /// The stream has audio.
    pub fn has_audio(&self) -> bool {
        self.media.has_audio()
    }

    /// The stream has video.
    pub fn has_video(&self) -> bool {
        self.media.has_video()
    }

    /// Where to push frames, for a stream created with [`SourceKind::App`] video.
    pub fn app_video_input(&self) -> Option<&AppVideoInput> {
        self.app_video.as_ref()
    }

    /// Where to push samples, for a stream created with [`SourceKind::App`] audio.
    pub fn app_audio_input(&self) -> Option<&AppAudioInput> {
        self.app_audio.as_ref()
    }

    async fn set_muted(&self, kind: MediaKind, muted: bool) -> Result<(), RtcError> {
        let wire = match kind {
            MediaKind::Audio => signal::MediaKind::Audio,
            MediaKind::Video => signal::MediaKind::Video,
        };
        if !self.media.set_muted(kind, muted) {
            return Ok(());
        }
        match self.media.publisher() {
            Some(client) => client
                .send(ClientRequest(Call::Mute {
                    stream_type: self.stream_type(),
                    kind: wire,
                    muted,
                }))
                .await
                .unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    /// Stop sending audio (TRTC's `muteAudio`); others get `mute-audio`.
    pub async fn mute_audio(&self) -> Result<(), RtcError> {
        self.set_muted(MediaKind::Audio, true).await
    }

    /// Resume sending audio; others get `unmute-audio`.
    pub async fn unmute_audio(&self) -> Result<(), RtcError> {
        self.set_muted(MediaKind::Audio, false).await
    }

    /// Stop sending video (TRTC's `muteVideo`); others get `mute-video`.
    pub async fn mute_video(&self) -> Result<(), RtcError> {
        self.set_muted(MediaKind::Video, true).await
    }

    /// Resume sending video (starting with a keyframe); others get `unmute-video`.
    pub async fn unmute_video(&self) -> Result<(), RtcError> {
        self.set_muted(MediaKind::Video, false).await
    }

    /// Whether audio / video is muted locally.
    pub fn is_muted(&self, audio: bool) -> bool {
        self.media.is_muted(if audio {
            MediaKind::Audio
        } else {
            MediaKind::Video
        })
    }

    async fn restart(&self, config: LocalConfig) -> Result<(), RtcError> {
        if matches!(config.source, SourceKind::App { .. }) {
            return Err(RtcError::invalid_operation(
                None,
                "a stream fed by the application cannot change profile; create a new stream",
            ));
        }
        let arbiter = crate::runtime::engine()?;
        let media = self.media.clone();
        let (epoch, outputs) = off_thread("stream-restart", move || media.restart(config)).await?;
        run_pipeline(&arbiter, &self.media, &self.supervisor, epoch, outputs);
        Ok(())
    }

    /// Change the video profile (TRTC's `setVideoProfile`). The encoder pipeline is rebuilt
    /// (about 100 ms without video); the peer connections stay as they are.
    pub async fn set_video_profile(&self, profile: VideoProfile) -> Result<(), RtcError> {
        profile
            .validate()
            .map_err(|e| RtcError::invalid_parameter(None, e.to_string()))?;
        let mut config = self.media.config();
        let Some(v) = config.video.as_mut() else {
            return Err(RtcError::invalid_operation(None, "the stream has no video"));
        };
        if let Some(small) = &config.small_video {
            check_small_stream(&profile, small)?;
        }
        v.profile = profile;
        self.restart(config).await
    }

    /// Whether the stream has a small stream (created with
    /// [`StreamConfig::with_small_stream`]).
    pub fn has_small_stream(&self) -> bool {
        self.media.has_small()
    }

    /// Change the small stream's profile (TRTC's `setSmallStreamProfile`); rebuilds the
    /// pipeline like [`LocalStream::set_video_profile`] (the layers a publication announced
    /// stay as announced). INVALID_OPERATION for a stream created without a small stream;
    /// INVALID_PARAMETER for a bad profile or one not below the video's bitrate.
    pub async fn set_small_stream_profile(&self, profile: VideoProfile) -> Result<(), RtcError> {
        let mut config = self.media.config();
        let Some(video) = config.video.as_ref() else {
            return Err(RtcError::invalid_operation(None, "the stream has no video"));
        };
        if config.small_video.is_none() {
            return Err(RtcError::invalid_operation(
                None,
                "the stream has no small stream: create it with StreamConfig::with_small_stream",
            ));
        }
        check_small_stream(&video.profile, &profile)?;
        config.small_video = Some(profile);
        self.restart(config).await
    }

    /// Whether the small stream is being encoded now: the server pauses it while nobody
    /// receives it (dynacast). `false` without a small stream.
    pub fn is_small_stream_active(&self) -> bool {
        self.media.is_layer_active(rtcroom_pipelines::Layer::Small)
    }

    /// Change the audio profile (TRTC's `setAudioProfile`); rebuilds the pipeline.
    pub async fn set_audio_profile(&self, profile: AudioProfile) -> Result<(), RtcError> {
        profile
            .validate()
            .map_err(|e| RtcError::invalid_parameter(None, e.to_string()))?;
        let mut config = self.media.config();
        let Some(a) = config.audio.as_mut() else {
            return Err(RtcError::invalid_operation(None, "the stream has no audio"));
        };
        a.profile = profile;
        self.restart(config).await
    }

    /// Audio send counters (TRTC's `getLocalAudioStats`): packets and bytes sent.
    pub fn get_local_audio_stats(&self) -> LocalAudioStats {
        let s = self.media.stats();
        LocalAudioStats {
            packets_sent: s.audio_packets_sent,
            bytes_sent: s.audio_bytes_sent,
        }
    }

    /// Video send counters (TRTC's `getLocalVideoStats`): packets and bytes sent, frames
    /// encoded, keyframe requests answered; with a small stream, the big layer's and the
    /// small layer's apart.
    pub fn get_local_video_stats(&self) -> LocalVideoStats {
        let s: LocalMediaStats = self.media.stats();
        LocalVideoStats {
            packets_sent: s.video_packets_sent,
            bytes_sent: s.video_bytes_sent,
            frames_encoded: s.video_frames_encoded,
            keyframe_requests: s.keyframe_requests,
            small_packets_sent: s.small_video_packets_sent,
            small_bytes_sent: s.small_video_bytes_sent,
            small_frames_encoded: s.small_video_frames_encoded,
        }
    }

    /// Stop the pipeline now (TRTC's `close`), instead of when the last handle drops.
    pub async fn close(&self) -> Result<(), RtcError> {
        let media = self.media.clone();
        off_thread("stream-stop", move || {
            media.stop();
            Ok(())
        })
        .await
    }
}

/// Whether a [`LocalStream`] still exists; see [`LocalStream::liveness_for_test`].
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
#[derive(Debug)]
pub struct StreamLivenessForTest(std::sync::Weak<LocalMedia>);

#[cfg(feature = "fault-injection")]
impl StreamLivenessForTest {
    /// Something (a handle, a client publishing it) still holds the stream.
    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// TRTC's local audio stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalAudioStats {
    /// RTP packets sent.
    pub packets_sent: u64,
    /// RTP bytes sent.
    pub bytes_sent: u64,
}

/// TRTC's local video stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalVideoStats {
    /// RTP packets sent.
    pub packets_sent: u64,
    /// RTP bytes sent.
    pub bytes_sent: u64,
    /// Frames that left the encoder (and were sent).
    pub frames_encoded: u64,
    /// Keyframe requests (PLI/FIR) received (for either layer).
    pub keyframe_requests: u64,
    /// The small stream's RTP packets sent (0 without one, nothing while it is paused).
    pub small_packets_sent: u64,
    /// The small stream's RTP bytes sent.
    pub small_bytes_sent: u64,
    /// The small stream's frames encoded and sent.
    pub small_frames_encoded: u64,
}

/// What to subscribe to and where it goes (TRTC's `subscribe(stream, {audio, video})`,
/// plus the output). `#[non_exhaustive]`: start from [`SubscribeOptions::new`] (or
/// `default()`) and use the `with_*` methods.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Receive audio.
    pub audio: bool,
    /// Receive video.
    pub video: bool,
    /// Play, record, hand frames to the application, or discard.
    pub output: SubscribeOutput,
    /// How long the jitter buffer waits for late or reordered packets; also the delay
    /// before the first frame comes out. Default 200 ms (for real networks); on a LAN or
    /// loopback 20 ms is plenty.
    pub jitter_latency: std::time::Duration,
    /// Of a stream with a small stream, the layer to start on (TRTC's `smallVideo` option of
    /// `subscribe`); `None` (default): the one chosen with
    /// [`crate::Client::set_remote_video_stream_type`] for that stream, else big. Ignored for
    /// a stream of one layer.
    pub video_type: Option<VideoStreamType>,
}

impl Default for SubscribeOptions {
    /// Audio and video, discarded.
    fn default() -> Self {
        SubscribeOptions {
            audio: true,
            video: true,
            output: SubscribeOutput::Discard,
            jitter_latency: rtcroom_pipelines::DEFAULT_JITTER_LATENCY,
            video_type: None,
        }
    }
}

impl SubscribeOptions {
    /// Audio and video into `output`.
    pub fn new(output: SubscribeOutput) -> Self {
        SubscribeOptions {
            output,
            ..SubscribeOptions::default()
        }
    }
}

crate::config::with_fields!(SubscribeOptions {
    /// Receive audio.
    with_audio => audio: bool,
    /// Receive video.
    with_video => video: bool,
    /// Where the media goes.
    with_output => output: SubscribeOutput,
    /// The jitter buffer's latency.
    with_jitter_latency => jitter_latency: std::time::Duration,
    /// Start on this layer of a stream with a small stream.
    with_video_type => video_type: Option<VideoStreamType>,
});

/// A remote stream's receive stats (TRTC's `getRemoteAudioStats` / `getRemoteVideoStats`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteStreamStats {
    /// Whose stream.
    pub user_id: rtcroom_protocol::UserId,
    /// Which stream.
    pub stream_type: StreamType,
    /// The counters.
    pub stats: RemoteMediaStats,
}

/// One peer connection's transport stats (TRTC's `getTransportStats`).
#[derive(Clone, Debug, PartialEq)]
pub struct TransportStats {
    /// `true` for a published stream's uplink, `false` for a subscription's downlink.
    pub uplink: bool,
    /// This client's user (uplink) or the remote publisher (downlink).
    pub user_id: rtcroom_protocol::UserId,
    /// Which stream.
    pub stream_type: StreamType,
    /// Round-trip time to the server, when measured (RTCP receiver reports on the uplink;
    /// webrtc-rs 0.17 measures none on ICE candidate pairs).
    pub rtt: Option<std::time::Duration>,
    /// Bytes sent on this transport.
    pub bytes_sent: u64,
    /// Bytes received on this transport.
    pub bytes_received: u64,
}

/// A decoded frame of a subscription, with whose stream it is.
#[derive(Debug, Clone)]
pub struct RemoteFrame {
    /// The publisher.
    pub user_id: rtcroom_protocol::UserId,
    /// Main or auxiliary stream.
    pub stream_type: StreamType,
    /// The frame.
    pub frame: DecodedFrame,
}

/// Decoded frames as an async [`Stream`](futures_util::Stream) (the other way to receive
/// them than a [`FrameHandler`] callback). Made by [`frame_stream`].
#[derive(Debug)]
pub struct FrameStream {
    rx: tokio::sync::mpsc::Receiver<RemoteFrame>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl FrameStream {
    /// The next frame; `None` once the output and everything holding it (its subscriptions,
    /// the client that may resubscribe with it) are gone and the queued frames are read.
    pub async fn recv(&mut self) -> Option<RemoteFrame> {
        self.rx.recv().await
    }

    /// Frames dropped because the queue was full (the reader was slower than the media).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl futures_util::Stream for FrameStream {
    type Item = RemoteFrame;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<RemoteFrame>> {
        self.rx.poll_recv(cx)
    }
}

/// A subscription output that delivers decoded frames to a [`FrameStream`], which holds at
/// most `capacity` (at least 1) unread frames: a frame that finds it full is dropped and
/// counted ([`FrameStream::dropped`]), never blocking the decoder (live media does not wait
/// for a slow reader). The same output may serve several subscriptions.
pub fn frame_stream(capacity: usize) -> (SubscribeOutput, FrameStream) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = dropped.clone();
    let handler: FrameHandler = Arc::new(move |user_id, stream_type, frame| {
        let item = RemoteFrame {
            user_id: user_id.clone(),
            stream_type,
            frame,
        };
        if tx.try_send(item).is_err() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    (
        SubscribeOutput::Frames(handler),
        FrameStream { rx, dropped },
    )
}

#[cfg(test)]
mod frame_stream_tests {
    use super::*;
    use futures_util::StreamExt as _;

    fn frame() -> DecodedFrame {
        DecodedFrame {
            kind: rtcroom_pipelines::MediaKind::Audio,
            pts: None,
            duration: None,
            data: Default::default(),
            info: FrameInfo::Audio {
                rate: 48_000,
                channels: 2,
            },
        }
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_a_full_queue_drops_and_counts() {
        let (output, mut frames) = frame_stream(2);
        let SubscribeOutput::Frames(handler) = output else {
            panic!("a frames output");
        };
        let alice = rtcroom_protocol::UserId::new("alice").unwrap();
        for _ in 0..3 {
            handler(&alice, StreamType::Main, frame());
        }
        assert_eq!(frames.dropped(), 1);
        let first = frames.next().await.unwrap();
        assert_eq!(
            (first.user_id.as_str(), first.stream_type),
            ("alice", StreamType::Main)
        );
        assert!(frames.recv().await.is_some());
        // Once the output (the only sender) is gone, the stream ends.
        drop(handler);
        assert!(frames.next().await.is_none());
    }
}
