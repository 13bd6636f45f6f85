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
        faststart_packets: 0,
        sei: None,
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
        small_video: None,
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
        faststart_packets: 0,
        sei: None,
    });
    assert!(matches!(r, Err(PipelineError::Config(_))));
    assert!(!dir.path().join("x.webm").exists());
}

/// Every RTP packet of `secs` of test-pattern H.264 at `profile` (no audio), as fast as the
/// CPU allows.
fn h264_segment(rt: &tokio::runtime::Runtime, profile: VideoProfile, secs: u64) -> Vec<Vec<u8>> {
    let (local, mut out) = LocalPipeline::start(LocalConfig {
        source: SourceKind::TestPattern {
            duration: Some(Duration::from_secs(secs)),
        },
        video: Some(VideoTrackConfig {
            codec: VideoCodec::H264,
            profile,
            encoder: None,
        }),
        audio: None,
        realtime: false,
        rtp_queue: 100_000,
        small_video: None,
    })
    .expect("source starts");
    let mut packets = Vec::new();
    let collect = async {
        let mut eos = false;
        loop {
            if eos {
                match out.rtp.try_recv() {
                    Ok(p) => packets.push(p.data.to_vec()),
                    Err(_) => return,
                }
                continue;
            }
            tokio::select! {
                p = out.rtp.recv() => packets.push(p.expect("rtp channel open").data.to_vec()),
                ev = out.events.recv() => match ev {
                    Some(rtcroom_pipelines::PipelineEvent::Eos) => eos = true,
                    Some(rtcroom_pipelines::PipelineEvent::Error(e)) => panic!("source: {e}"),
                    _ => {}
                },
            }
        }
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), collect).await })
        .expect("segment within 30 s");
    local.stop().expect("source stops");
    packets
}

/// A publisher whose encoder changes resolution mid-stream (a browser does, as its bandwidth
/// estimate moves): H.264's parameter sets change, and the recording must go on and be
/// finalised rather than fail on the muxer's refusal of new caps.
#[test]
fn an_h264_resolution_change_mid_recording_keeps_one_valid_file() {
    let rt = rt();
    let first = h264_segment(&rt, VideoProfile::P240, 2);
    let second = h264_segment(&rt, VideoProfile::P120, 2);
    // One continuous RTP stream: the second segment takes the first one's SSRC and carries
    // on its sequence numbers and timestamps, one frame (1/15 s at 90 kHz) after its end.
    let field = |p: &[u8], at: usize, n: usize| {
        p[at..at + n]
            .iter()
            .fold(0u32, |a, b| (a << 8) | u32::from(*b))
    };
    let last = first.last().expect("first segment has packets");
    let (ssrc, seq0, ts0) = (field(last, 8, 4), field(last, 2, 2), field(last, 4, 4));
    let (base_seq, base_ts) = (field(&second[0], 2, 2), field(&second[0], 4, 4));
    let second = second.into_iter().map(|mut p| {
        let seq = (seq0 + 1 + field(&p, 2, 2).wrapping_sub(base_seq)) as u16;
        let ts = ts0 + 6000 + field(&p, 4, 4).wrapping_sub(base_ts);
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("resized.mkv");
    let (remote, _events) = RemotePipeline::start(RemoteConfig {
        video: Some(VideoCodec::H264),
        audio: None,
        output: RemoteOutput::Record {
            path: path.clone(),
            format: RecordFormat::Mkv,
        },
        jitter_latency: Duration::from_millis(50),
        faststart_packets: 0,
        sei: None,
    })
    .expect("recorder starts");
    for p in first.into_iter().chain(second) {
        remote.push_rtp(p.into()).expect("push");
    }
    remote.stop().expect("the recording is finalised");
    assert_eq!(remote.stats().video_frames, 60, "{:?}", remote.stats());
    let d = discover(&path);
    assert!(d.ok && d.has_video, "{}", d.text);
    let dur = d.duration.expect("duration reported").as_secs_f64();
    assert!((dur - 4.0).abs() < 0.25, "duration {dur} s:\n{}", d.text);
}
