//! `RemoteMedia`: the receive side of one subscribed remote stream: a receive pipeline from
//! rtcroom-pipelines (play / record / app frames / discard) and counters. Like the local
//! side, it outlives peer connections: a re-subscribe after a re-join feeds the same
//! pipeline, so the application's frame callback keeps running.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rtcroom_pipelines::{
    AudioCodec, DecodedFrame, FrameInfo, RecordFormat, RemoteConfig, RemoteOutput, RemotePipeline,
};
use rtcroom_protocol::signal::StreamType;
use rtcroom_protocol::{ErrorCode, RtcError, UserId};

/// Receives the decoded frames of subscribed streams: whose, which stream, the frame. Called
/// on a GStreamer streaming thread: hand the frame on (a channel) and return.
pub type FrameHandler = Arc<dyn Fn(&UserId, StreamType, DecodedFrame) + Send + Sync>;

/// Where a subscribed stream's media goes.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum SubscribeOutput {
    /// Decode and play on the default outputs (needs a display for video).
    Play,
    /// Record (no transcoding) into `dir/<userId>_<main|auxiliary>.<ext>`.
    Record {
        /// Directory of the recordings.
        dir: PathBuf,
        /// Container.
        format: RecordFormat,
    },
    /// Decode and hand every frame to the application.
    Frames(FrameHandler),
    /// Receive and count only (bots that only need the stream subscribed).
    #[default]
    Discard,
}

impl std::fmt::Debug for SubscribeOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscribeOutput::Play => f.write_str("Play"),
            SubscribeOutput::Record { dir, format } => f
                .debug_struct("Record")
                .field("dir", dir)
                .field("format", format)
                .finish(),
            SubscribeOutput::Frames(_) => f.write_str("Frames(..)"),
            SubscribeOutput::Discard => f.write_str("Discard"),
        }
    }
}

impl PartialEq for SubscribeOutput {
    /// Frame handlers are equal when they are the same handler.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SubscribeOutput::Play, SubscribeOutput::Play)
            | (SubscribeOutput::Discard, SubscribeOutput::Discard) => true,
            (
                SubscribeOutput::Record { dir, format },
                SubscribeOutput::Record {
                    dir: d2,
                    format: f2,
                },
            ) => dir == d2 && format == f2,
            (SubscribeOutput::Frames(a), SubscribeOutput::Frames(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Counters of a subscribed stream (TRTC's `getRemoteAudioStats` / `getRemoteVideoStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteMediaStats {
    /// Audio RTP packets received.
    pub audio_packets_received: u64,
    /// Audio RTP bytes received (headers included).
    pub audio_bytes_received: u64,
    /// Audio packets lost (gaps in sequence numbers).
    pub audio_packets_lost: u64,
    /// Video RTP packets received.
    pub video_packets_received: u64,
    /// Video RTP bytes received (headers included).
    pub video_bytes_received: u64,
    /// Video packets lost (gaps in sequence numbers).
    pub video_packets_lost: u64,
    /// Whole video frames reassembled from RTP (after the jitter buffer): what a recording
    /// writes, or what the decoder gets.
    pub video_frames_received: u64,
    /// Video frames out of the decoder.
    pub video_frames_decoded: u64,
    /// Audio frames out of the decoder.
    pub audio_frames_decoded: u64,
    /// Width of the last decoded video frame (0 before the first).
    pub width: u32,
    /// Height of the last decoded video frame.
    pub height: u32,
}

/// Per-track receive counters; sequence tracking for losses.
#[derive(Default)]
pub struct TrackCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    /// Last sequence number + 1, or 0 before the first packet.
    next_seq: AtomicU32,
}

impl TrackCounters {
    /// Count one received RTP packet with sequence number `seq`.
    pub fn count(&self, len: usize, seq: u16) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        let prev = self
            .next_seq
            .swap(u32::from(seq) + 1 + (1 << 16), Ordering::Relaxed);
        if prev != 0 {
            let expected = (prev - (1 << 16)) as u16;
            let gap = seq.wrapping_sub(expected);
            // Small forward jumps are losses; reordering and resets are not counted.
            if gap > 0 && gap < 1000 {
                self.lost.fetch_add(u64::from(gap), Ordering::Relaxed);
            }
        }
    }
}

/// Packets kept for a pipeline that is still starting (about 2 s of 1 Mbit/s video).
pub const EARLY_PACKETS: usize = 2048;

/// One subscribed stream's receive side. Created empty, so its peer connection can be
/// negotiated while the pipeline starts ([`RemoteMedia::start`]); packets that arrive before
/// the pipeline are kept (up to [`EARLY_PACKETS`]) and handed to it in order when it is up,
/// so the first keyframe is not lost.
pub struct RemoteMedia {
    pipeline: OnceLock<RemotePipeline>,
    /// Packets that came before the pipeline; `None` once they were handed to it.
    early: Mutex<Option<Vec<Bytes>>>,
    /// The early packets went to the pipeline: push straight to it.
    attached: AtomicBool,
    /// The subscription ended: a pipeline not started yet never starts.
    finished: AtomicBool,
    /// Video receive counters.
    pub video: TrackCounters,
    /// Audio receive counters.
    pub audio: TrackCounters,
    size: Arc<AtomicU64>,
}

impl Default for RemoteMedia {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RemoteMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMedia")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Where a recording goes: `dir/<stem>.<ext>`, or `dir/<stem>-<n>.<ext>` (n = 1, 2, …) when
/// earlier files of the same stream are there (a subscription that resumed after a re-join
/// records into a new file: one file, one timeline).
pub fn record_path(dir: &std::path::Path, stem: &str, ext: &str) -> std::path::PathBuf {
    let first = dir.join(format!("{stem}.{ext}"));
    if !first.exists() {
        return first;
    }
    (1u32..)
        .map(|n| dir.join(format!("{stem}-{n}.{ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

impl RemoteMedia {
    /// An empty receive side: packets are kept until [`start`](Self::start) succeeds.
    pub fn new() -> RemoteMedia {
        RemoteMedia {
            pipeline: OnceLock::new(),
            early: Mutex::new(Some(Vec::new())),
            attached: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            video: TrackCounters::default(),
            audio: TrackCounters::default(),
            size: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Builds and starts the receive pipeline `spec` describes (whose stream, which tracks,
    /// where to), reporting its video's SEI messages to `sei`, and hands it the packets that
    /// came meanwhile. Blocks (GStreamer state changes): run it off the engine thread. Once
    /// only.
    pub fn start(
        &self,
        spec: &crate::core::PipelineSpec,
        sei: Option<rtcroom_pipelines::SeiHandler>,
    ) -> Result<PipelineEvents, RtcError> {
        let crate::core::PipelineSpec {
            user_id: user,
            stream_type,
            audio,
            video_codec: video,
            output,
            jitter_latency,
        } = spec;
        let (stream_type, audio, video, jitter_latency) =
            (*stream_type, *audio, *video, *jitter_latency);
        if self.finished.load(Ordering::Acquire) {
            return Err(RtcError::invalid_operation(
                None,
                "the subscription ended before its pipeline started",
            ));
        }
        let size = self.size.clone();
        let out = match output {
            SubscribeOutput::Play => RemoteOutput::Play,
            SubscribeOutput::Discard => RemoteOutput::Discard,
            SubscribeOutput::Record { dir, format } => {
                let kind = match stream_type {
                    StreamType::Main => "main",
                    StreamType::Auxiliary => "auxiliary",
                };
                RemoteOutput::Record {
                    path: record_path(dir, &format!("{user}_{kind}"), format.extension()),
                    format: *format,
                }
            }
            SubscribeOutput::Frames(handler) => {
                let (handler, user, sz) = (handler.clone(), user.clone(), size);
                RemoteOutput::Frames(Arc::new(move |frame: DecodedFrame| {
                    if let FrameInfo::Video { width, height } = frame.info {
                        sz.store(
                            (u64::from(width) << 32) | u64::from(height),
                            Ordering::Relaxed,
                        );
                    }
                    handler(&user, stream_type, frame);
                }))
            }
        };
        let mut config = RemoteConfig::new(out);
        config.video = video;
        config.audio = audio.then_some(AudioCodec::Opus);
        config.jitter_latency = jitter_latency;
        config.sei = sei;
        let (pipeline, events) = RemotePipeline::start(config).map_err(|e| {
            RtcError::new(
                ErrorCode::InitializeFailed,
                format!("remote media pipeline: {e}"),
            )
        })?;
        // Hand over the early packets under the lock, so a packet that arrives meanwhile
        // waits and goes after them: the pipeline sees them in arrival order.
        let mut early = lock(&self.early);
        let Ok(()) = self.pipeline.set(pipeline) else {
            return Err(RtcError::invalid_operation(
                None,
                "the receive pipeline was started twice",
            ));
        };
        if let (Some(p), Some(packets)) = (self.pipeline.get(), early.take()) {
            for packet in packets {
                let _ = p.push_rtp(packet);
            }
        }
        self.attached.store(true, Ordering::Release);
        drop(early);
        if self.finished.load(Ordering::Acquire) {
            // Ended while starting (`finish` found no pipeline to stop): stop it here, on
            // this blocking thread.
            if let Some(p) = self.pipeline.get() {
                let _ = p.stop();
            }
            return Err(RtcError::invalid_operation(
                None,
                "the subscription ended while its pipeline started",
            ));
        }
        Ok(events)
    }

    /// Feeds one received RTP packet to the pipeline (or keeps it until the pipeline is up).
    /// Never blocks on GStreamer; malformed packets are counted and dropped by the pipeline.
    pub fn push_rtp(&self, packet: Bytes) {
        if self.attached.load(Ordering::Acquire) {
            if let Some(p) = self.pipeline.get() {
                let _ = p.push_rtp(packet);
            }
            return;
        }
        let mut early = lock(&self.early);
        match early.as_mut() {
            Some(packets) if packets.len() < EARLY_PACKETS => packets.push(packet),
            // A pipeline that takes this long to start misses the newest packets; the
            // decoder recovers at the next keyframe, which its subscription asks for.
            Some(_) => {}
            None => {
                if let Some(p) = self.pipeline.get() {
                    let _ = p.push_rtp(packet);
                }
            }
        }
    }

    /// The loudest decoded volume (0–100) since the last call; `None` when audio is not
    /// decoded (Record, Discard) or before any.
    pub fn audio_level(&self) -> Option<u8> {
        self.pipeline.get()?.audio_level()
    }

    /// Counters now.
    pub fn stats(&self) -> RemoteMediaStats {
        let p = self.pipeline.get().map(|p| p.stats()).unwrap_or_default();
        let size = self.size.load(Ordering::Relaxed);
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RemoteMediaStats {
            audio_packets_received: r(&self.audio.packets),
            audio_bytes_received: r(&self.audio.bytes),
            audio_packets_lost: r(&self.audio.lost),
            video_packets_received: r(&self.video.packets),
            video_bytes_received: r(&self.video.bytes),
            video_packets_lost: r(&self.video.lost),
            video_frames_received: p.video_frames,
            video_frames_decoded: p.decoded_video_frames,
            audio_frames_decoded: p.decoded_audio_frames,
            width: (size >> 32) as u32,
            height: (size & 0xffff_ffff) as u32,
        }
    }
}

/// Receive pipelines being stopped on threads of their own (recordings being finalised).
static STOPPING: LazyLock<tokio::sync::watch::Sender<usize>> =
    LazyLock::new(|| tokio::sync::watch::channel(0).0);

/// Stop `pipeline` (end of stream, finalise a recording) on a thread of its own: the caller
/// may be the engine thread. [`stopped_pipelines`] waits for it.
fn stop_elsewhere(pipeline: impl FnOnce() + Send + 'static) {
    STOPPING.send_modify(|n| *n += 1);
    let done = || STOPPING.send_modify(|n| *n = n.saturating_sub(1));
    let spawned = std::thread::Builder::new()
        .name("rtcroom-remote-stop".into())
        .spawn(move || {
            pipeline();
            done();
        });
    if spawned.is_err() {
        // The closure (and with it the pipeline, which stops when dropped) went with it.
        done();
    }
}

/// Waits (at most `limit`) until every receive pipeline that was ended has stopped and its
/// recording is finalised, so a process may exit after `leave()` without cutting a file short.
/// `false` when the limit passed first.
pub async fn stopped_pipelines(limit: Duration) -> bool {
    let mut rx = STOPPING.subscribe();
    tokio::time::timeout(limit, rx.wait_for(|n| *n == 0))
        .await
        .is_ok_and(|r| r.is_ok())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is a list of packets: still consistent after a panic elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The typed events (errors, end of stream) of a receive pipeline.
pub type PipelineEvents = tokio::sync::mpsc::UnboundedReceiver<rtcroom_pipelines::PipelineEvent>;

impl RemoteMedia {
    /// Fault injection: the pipeline reports an element error on its bus, as a failing
    /// decoder would.
    #[cfg(feature = "fault-injection")]
    pub fn inject_failure_for_test(&self) {
        if let Some(p) = self.pipeline.get() {
            p.inject_error_for_test();
        }
    }

    /// The subscription ended: stop the pipeline (finalising a recording) now, elsewhere,
    /// rather than when the last reference (a track reader of a closing peer connection) goes.
    pub fn finish(self: &Arc<Self>) {
        self.finished.store(true, Ordering::Release);
        if self.pipeline.get().is_some() {
            let me = self.clone();
            stop_elsewhere(move || {
                if let Some(p) = me.pipeline.get() {
                    let _ = p.stop();
                }
            });
        }
    }
}

impl Drop for RemoteMedia {
    fn drop(&mut self) {
        // The last owner may be the engine thread: stop (finalise a recording) elsewhere.
        // (After `finish`, stopping again is a no-op.)
        if let Some(p) = self.pipeline.take() {
            stop_elsewhere(move || {
                let _ = p.stop();
            });
        }
    }
}

#[cfg(test)]
mod record_path_tests {
    use super::record_path;

    #[test]
    fn a_second_recording_of_a_stream_gets_its_own_file() {
        let dir = std::env::temp_dir().join(format!("rtcroom-record-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = record_path(&dir, "alice_main", "mkv");
        assert_eq!(first, dir.join("alice_main.mkv"));
        std::fs::write(&first, b"x").unwrap();
        let second = record_path(&dir, "alice_main", "mkv");
        assert_eq!(second, dir.join("alice_main-1.mkv"));
        std::fs::write(&second, b"x").unwrap();
        assert_eq!(
            record_path(&dir, "alice_main", "mkv"),
            dir.join("alice_main-2.mkv")
        );
        // Another stream starts at its plain name.
        assert_eq!(
            record_path(&dir, "bob_main", "mkv"),
            dir.join("bob_main.mkv")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leave_can_wait_for_pipelines_stopping_elsewhere() {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        stop_elsewhere(move || {
            let _ = started_tx.send(());
            // A slow stop (a muxer finalising a big file under load).
            let _ = held.recv();
        });
        started.recv().expect("the stop runs");
        assert!(
            !stopped_pipelines(Duration::from_millis(50)).await,
            "still stopping"
        );
        release.send(()).expect("release");
        assert!(stopped_pipelines(Duration::from_secs(10)).await);
    }

    #[test]
    fn losses_are_sequence_gaps_across_the_wrap() {
        let c = TrackCounters::default();
        for seq in [65_533u16, 65_534, 1, 2, 5] {
            c.count(100, seq);
        }
        // Missing: 65535, 0, 3, 4.
        assert_eq!(c.lost.load(Ordering::Relaxed), 4);
        assert_eq!(c.packets.load(Ordering::Relaxed), 5);
        assert_eq!(c.bytes.load(Ordering::Relaxed), 500);
        // Reordering (a step back) is not a loss.
        c.count(100, 4);
        assert_eq!(c.lost.load(Ordering::Relaxed), 4);
    }
}
