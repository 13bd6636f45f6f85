//! Recording: test audio+video into one file per user, checked with gst-discoverer-1.0.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use rtcroom_pipelines::{
    AudioCodec, AudioTrackConfig, LocalConfig, LocalPipeline, PipelineError, RecordFormat,
    RemoteConfig, RemoteOutput, RemotePipeline, SourceKind, VideoCodec, VideoProfile,
    VideoTrackConfig,
};

/// Records `secs` of test pattern + tone. The source runs faster than real time: the jitter
/// buffer takes timestamps from RTP, so the file still holds `secs` of media.
fn record(path: &Path, format: RecordFormat, codec: VideoCodec, secs: u64, stop: bool) {
    let rt = rt();
    let (remote, _events) = RemotePipeline::start(RemoteConfig {
        video: Some(codec),
        audio: Some(AudioCodec::Opus),
        output: RemoteOutput::Record {
            path: path.to_owned(),
            format,
        },
        jitter_latency: Duration::from_millis(50),
    })
    .expect("recorder starts");
    let (local, mut out) = LocalPipeline::start(LocalConfig {
        source: SourceKind::TestPattern {
            duration: Some(Duration::from_secs(secs)),
        },
        video: Some(VideoTrackConfig {
            codec,
            profile: VideoProfile::P240,
            encoder: None,
        }),
        audio: Some(AudioTrackConfig::default()),
        realtime: false,
        rtp_queue: 100_000,
    })
    .expect("source starts");
    pump(
        &rt,
        &mut out,
        &remote,
        Duration::from_secs(30),
        |_| {},
        |_| false,
    );
    local.stop().expect("source stops");
    if stop {
        remote.stop().expect("recorder finalises");
        let stats = remote.stats();
        assert_eq!(stats.video_frames, secs * 15, "{stats:?}");
    } else {
        drop(remote); // Drop must finalise the file as well.
    }
}

fn assert_file(path: &Path, secs: f64) {
    let d = discover(path);
    assert!(d.ok, "discoverer failed:\n{}", d.text);
    assert!(
        d.has_video && d.has_audio,
        "both streams expected:\n{}",
        d.text
    );
    let dur = d.duration.expect("duration reported").as_secs_f64();
    assert!(
        (dur - secs).abs() < 0.25,
        "duration {dur} s, expected ~{secs} s:\n{}",
        d.text
    );
}

#[test]
fn five_seconds_of_h264_and_opus_into_mkv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("user.mkv");
    record(&path, RecordFormat::Mkv, VideoCodec::H264, 5, true);
    assert_file(&path, 5.0);
    let d = discover(&path);
    assert!(d.text.contains("Constrained Baseline"), "{}", d.text);
}

#[test]
fn fragmented_mp4_with_h264_and_opus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("user.mp4");
    record(&path, RecordFormat::Mp4, VideoCodec::H264, 2, true);
    assert_file(&path, 2.0);
    let bytes = std::fs::read(&path).expect("read");
    assert!(bytes.windows(4).any(|w| w == b"moof"), "MP4 is fragmented");
}

#[test]
fn webm_with_vp8_and_opus_finalised_on_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("user.webm");
    record(&path, RecordFormat::WebM, VideoCodec::Vp8, 2, false);
    assert_file(&path, 2.0);
}

#[test]
fn container_codec_mismatch_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = RemotePipeline::start(RemoteConfig {
        video: Some(VideoCodec::H264),
        audio: Some(AudioCodec::Opus),
        output: RemoteOutput::Record {
            path: dir.path().join("x.webm"),
            format: RecordFormat::WebM,
        },
        jitter_latency: Duration::from_millis(50),
    });
    assert!(matches!(r, Err(PipelineError::Config(_))));
    assert!(!dir.path().join("x.webm").exists());
}
