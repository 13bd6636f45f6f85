//! Each source produces RTP that depayloads and decodes to the expected frames: a local
//! pipeline's RTP channel is wired straight into a remote pipeline with a frames callback.

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use common::*;
use rtcroom_pipelines::{
    AppAudioFormat, AppVideoFormat, AudioCodec, AudioProfile, AudioTrackConfig, DecodedFrame,
    FrameInfo, LocalConfig, LocalPipeline, MediaKind, PipelineError, PipelineEvent, RawVideoFormat,
    RemoteConfig, RemoteOutput, RemotePipeline, SourceKind, VideoCodec, VideoProfile,
    VideoTrackConfig, codec,
};

const I420_320X240: usize = 320 * 240 * 3 / 2;

fn local(source: SourceKind, codec: VideoCodec) -> LocalConfig {
    LocalConfig {
        source,
        video: Some(VideoTrackConfig {
            codec,
            profile: VideoProfile::P240,
            encoder: None,
        }),
        audio: Some(AudioTrackConfig::default()),
        realtime: false,
        rtp_queue: 100_000,
        small_video: None,
    }
}

fn frames_remote(codec: VideoCodec) -> (RemotePipeline, std_mpsc::Receiver<DecodedFrame>) {
    let (cb, rx) = collector();
    let (remote, _events) = RemotePipeline::start(RemoteConfig {
        video: Some(codec),
        audio: Some(AudioCodec::Opus),
        output: RemoteOutput::Frames(cb),
        jitter_latency: Duration::from_millis(50),
        faststart_packets: 0,
        sei: None,
    })
    .expect("remote starts");
    (remote, rx)
}

/// Runs `config` to its end through a frames remote; returns (video frames, audio frames).
fn round_trip(config: LocalConfig) -> (Vec<DecodedFrame>, Vec<DecodedFrame>) {
    let rt = rt();
    let codec = config.video.as_ref().map(|v| v.codec).unwrap_or_default();
    let (remote, frames) = frames_remote(codec);
    let (local, mut out) = LocalPipeline::start(config).expect("local starts");
    let mut packets = 0usize;
    let mut pts_ok = BTreeSet::new();
    pump(
        &rt,
        &mut out,
        &remote,
        Duration::from_secs(20),
        |p| {
            packets += 1;
            assert!(
                p.data.len() <= codec::RTP_MTU as usize,
                "packet over MTU: {}",
                p.data.len()
            );
            assert_eq!(p.payload_type(), Some(p.codec.payload_type()));
            pts_ok.insert(p.kind() == MediaKind::Video);
        },
        |_| false,
    );
    assert_eq!(local.stats().packets_dropped, 0);
    assert_eq!(local.stats().packets_sent as usize, packets);
    local.stop().expect("local stops");
    remote.stop().expect("remote drains");
    assert_eq!(remote.stats().packets_rejected, 0);
    let all: Vec<DecodedFrame> = frames.try_iter().collect();
    let (video, audio) = all.into_iter().partition(|f| f.kind == MediaKind::Video);
    (video, audio)
}

fn assert_video(frames: &[DecodedFrame], expected: usize) {
    assert_eq!(frames.len(), expected, "decoded video frame count");
    for f in frames {
        assert_eq!(
            f.info,
            FrameInfo::Video {
                width: 320,
                height: 240
            }
        );
        assert_eq!(f.data.len(), I420_320X240);
    }
    let pts: Vec<Duration> = frames.iter().filter_map(|f| f.pts).collect();
    assert_eq!(pts.len(), frames.len(), "every frame has a timestamp");
    assert!(pts.windows(2).all(|w| w[0] < w[1]), "timestamps increase");
}

fn audio_seconds(frames: &[DecodedFrame]) -> f64 {
    frames
        .iter()
        .map(|f| match f.info {
            FrameInfo::Audio { rate, channels } => {
                f.data.len() as f64 / (2.0 * channels as f64 * rate as f64)
            }
            FrameInfo::Video { .. } => panic!("video in audio list"),
        })
        .sum()
}

#[test]
fn test_pattern_h264_and_opus_decode_to_expected_frames() {
    let (video, audio) = round_trip(local(
        SourceKind::TestPattern {
            duration: Some(Duration::from_secs(2)),
        },
        VideoCodec::H264,
    ));
    assert_video(&video, 30);
    let secs = audio_seconds(&audio);
    assert!((1.9..=2.05).contains(&secs), "decoded {secs} s of audio");
    // Opus is signalled as stereo on the wire, so a mono sender decodes to stereo.
    assert!(audio.iter().all(|f| f.info
        == FrameInfo::Audio {
            rate: 48_000,
            channels: 2
        }));
}

#[test]
fn test_pattern_vp8_decodes_to_expected_frames() {
    let (video, audio) = round_trip(local(
        SourceKind::TestPattern {
            duration: Some(Duration::from_secs(2)),
        },
        VideoCodec::Vp8,
    ));
    assert_video(&video, 30);
    assert!(audio_seconds(&audio) > 1.9);
}

#[test]
fn stereo_audio_profile_round_trips_as_stereo() {
    let mut cfg = local(
        SourceKind::TestPattern {
            duration: Some(Duration::from_secs(1)),
        },
        VideoCodec::H264,
    );
    cfg.video = None;
    cfg.audio = Some(AudioTrackConfig {
        codec: AudioCodec::Opus,
        profile: AudioProfile::HIGH_STEREO,
        ..Default::default()
    });
    let rt = rt();
    let (cb, frames) = collector();
    let (remote, _ev) = RemotePipeline::start(RemoteConfig {
        video: None,
        audio: Some(AudioCodec::Opus),
        output: RemoteOutput::Frames(cb),
        jitter_latency: Duration::from_millis(50),
        faststart_packets: 0,
        sei: None,
    })
    .expect("remote");
    let (_local, mut out) = LocalPipeline::start(cfg).expect("local");
    pump(
        &rt,
        &mut out,
        &remote,
        Duration::from_secs(20),
        |_| {},
        |_| false,
    );
    remote.stop().expect("stop");
    let audio: Vec<_> = frames.try_iter().collect();
    assert!(!audio.is_empty());
    assert!(audio.iter().all(|f| f.info
        == FrameInfo::Audio {
            rate: 48_000,
            channels: 2
        }));
    assert!(audio_seconds(&audio) > 0.9);
}

fn write_test_file(dir: &std::path::Path) -> std::path::PathBuf {
    // 1 s of 640x480@30 H.264 + Opus in Matroska: the pipeline must scale and re-time it.
    let path = dir.join("in.mkv");
    make_media_file(&format!(
        "videotestsrc num-buffers=30 pattern=smpte ! video/x-raw,width=640,height=480,framerate=30/1 \
         ! x264enc ! h264parse ! matroskamux name=m ! filesink location={} \
         audiotestsrc num-buffers=50 samplesperbuffer=960 ! audio/x-raw,rate=48000 ! opusenc ! m.",
        path.display()
    ));
    path
}

#[test]
fn media_file_is_decoded_rescaled_and_reencoded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_test_file(dir.path());
    let (video, audio) = round_trip(local(
        SourceKind::File {
            path,
            looping: false,
        },
        VideoCodec::H264,
    ));
    // 1 s at 15 fps, plus the frame videorate emits at t = 1 s to cover the last input
    // frame's duration.
    assert_video(&video, 16);
    assert!(audio_seconds(&audio) > 0.9);
}

#[test]
fn looping_media_file_keeps_going_with_increasing_timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_test_file(dir.path());
    let rt = rt();
    let (remote, frames) = frames_remote(VideoCodec::H264);
    let (local, mut out) = LocalPipeline::start(local(
        SourceKind::File {
            path,
            looping: true,
        },
        VideoCodec::H264,
    ))
    .expect("local");
    // Three loops of a 15-frame file.
    pump(
        &rt,
        &mut out,
        &remote,
        Duration::from_secs(20),
        |_| {},
        |r| r.stats().decoded_video_frames >= 45,
    );
    local.stop().expect("local stops");
    remote.stop().expect("remote stops");
    let video: Vec<_> = frames
        .try_iter()
        .filter(|f| f.kind == MediaKind::Video)
        .collect();
    assert!(video.len() >= 45, "{} frames", video.len());
    let pts: Vec<Duration> = video.iter().filter_map(|f| f.pts).collect();
    assert!(
        pts.windows(2).all(|w| w[0] < w[1]),
        "timestamps keep increasing across loops"
    );
    assert!(pts.last().expect("frames") > &Duration::from_secs(2));
}

#[test]
fn app_frames_and_samples_are_published() {
    let mut cfg = local(
        SourceKind::App {
            video: Some(AppVideoFormat {
                format: RawVideoFormat::Rgba,
                width: 160,
                height: 120,
                fps: 15,
            }),
            audio: Some(AppAudioFormat {
                rate: 48_000,
                channels: 2,
            }),
        },
        VideoCodec::H264,
    );
    cfg.realtime = false;
    let rt = rt();
    let (remote, frames) = frames_remote(VideoCodec::H264);
    let (local, mut out) = LocalPipeline::start(cfg).expect("local");
    let video_in = out.app_video.take().expect("app video input");
    let audio_in = out.app_audio.take().expect("app audio input");
    // Wrong sizes are typed errors, not panics.
    assert!(matches!(
        video_in.push_frame(vec![0u8; 3], Duration::ZERO),
        Err(PipelineError::Config(_))
    ));
    assert!(matches!(
        audio_in.push_samples(vec![0u8; 3], Duration::ZERO),
        Err(PipelineError::Config(_))
    ));
    let feeder = std::thread::spawn(move || {
        for i in 0..30u64 {
            let pts = Duration::from_nanos(i * 1_000_000_000 / 15);
            let shade = (i * 8) as u8;
            video_in
                .push_frame(vec![shade; 160 * 120 * 4], pts)
                .expect("push frame");
        }
        video_in.end_of_stream().expect("eos");
        for i in 0..100u64 {
            // 20 ms of stereo S16LE.
            audio_in
                .push_samples(vec![0u8; 960 * 4], Duration::from_millis(i * 20))
                .expect("push audio");
        }
        audio_in.end_of_stream().expect("eos");
    });
    pump(
        &rt,
        &mut out,
        &remote,
        Duration::from_secs(20),
        |_| {},
        |_| false,
    );
    feeder.join().expect("feeder");
    local.stop().expect("local stops");
    remote.stop().expect("remote stops");
    let (video, audio): (Vec<_>, Vec<_>) =
        frames.try_iter().partition(|f| f.kind == MediaKind::Video);
    assert_video(&video, 30);
    assert!(audio_seconds(&audio) > 1.9);
}

#[test]
fn keyframe_request_forces_an_idr_on_the_next_frame() {
    // App source, no pacing: frames are pushed in two batches and the request is made between
    // them, once frame 8 is out (videorate may still hold frame 9). The GOP is 30 frames, so
    // without the request there would be no keyframe before frame 30.
    let mut cfg = local(
        SourceKind::App {
            video: Some(AppVideoFormat {
                format: RawVideoFormat::I420,
                width: 320,
                height: 240,
                fps: 15,
            }),
            audio: None,
        },
        VideoCodec::H264,
    );
    cfg.audio = None;
    let rt = rt();
    let (local, mut out) = LocalPipeline::start(cfg).expect("local");
    let input = out.app_video.take().expect("input");
    let requester = local.encoder_control();
    // Frame index of a relative RTP timestamp (rounded: the clock conversion may be 1 tick off).
    let frame_of = |rel: u32| (u64::from(rel) * 15 + 45_000) / 90_000;
    let mut keyframe_ts = BTreeSet::new();
    let mut first_ts = None;
    let mut push_and_wait =
        |range: std::ops::Range<u64>, out: &mut rtcroom_pipelines::LocalOutputs| {
            for i in range.clone() {
                // A still grey picture with a small moving bar: no scene cut for x264 to key on.
                let mut frame = vec![128u8; I420_320X240];
                let x = (i as usize * 8) % 300;
                for row in 100..116 {
                    frame[row * 320 + x..row * 320 + x + 16].fill(235);
                }
                input
                    .push_frame(frame, Duration::from_nanos(i * 1_000_000_000 / 15))
                    .expect("push");
            }
            // Wait for the marker packet of the last-but-one pushed frame (videorate holds the
            // newest frame until it sees the next one).
            let last = range.end - 2;
            loop {
                let p =
                    recv_timeout(&rt, &mut out.rtp, Duration::from_secs(10)).expect("rtp in time");
                let ts = p.timestamp().expect("header");
                let base = *first_ts.get_or_insert(ts);
                let rel = ts.wrapping_sub(base);
                if h264_keyframe_start(&p) {
                    keyframe_ts.insert(frame_of(rel));
                }
                if p.marker() && frame_of(rel) == last {
                    break;
                }
            }
        };
    push_and_wait(0..10, &mut out);
    assert!(requester.request_keyframe(), "encoder accepted the request");
    push_and_wait(10..20, &mut out);
    let keyframes: Vec<u64> = keyframe_ts.into_iter().collect();
    assert_eq!(keyframes.len(), 2, "{keyframes:?}");
    assert_eq!(keyframes[0], 0);
    assert!([9, 10].contains(&keyframes[1]), "{keyframes:?}");
    input.end_of_stream().expect("eos");
    local.stop().expect("stop");
}

#[test]
fn broken_media_file_reports_a_typed_error_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("garbage.mkv");
    std::fs::write(&path, vec![0x42u8; 64 * 1024]).expect("write");
    let rt = rt();
    let (_local, mut out) = LocalPipeline::start(local(
        SourceKind::File {
            path,
            looping: false,
        },
        VideoCodec::H264,
    ))
    .expect("starts");
    match next_event(&rt, &mut out.events, Duration::from_secs(10)) {
        Some(PipelineEvent::Error(PipelineError::Stream { .. })) => {}
        other => panic!("expected a stream error, got {other:?}"),
    }
    let missing = LocalPipeline::start(local(
        SourceKind::File {
            path: "/nonexistent/x.mp4".into(),
            looping: false,
        },
        VideoCodec::H264,
    ));
    assert!(matches!(missing, Err(PipelineError::Config(_))));
}

#[test]
fn forced_encoder_is_used_or_refused() {
    let mut cfg = local(
        SourceKind::TestPattern {
            duration: Some(Duration::from_millis(200)),
        },
        VideoCodec::H264,
    );
    cfg.audio = None;
    cfg.video.as_mut().expect("video").encoder = Some("openh264enc".into());
    let (l, _out) = LocalPipeline::start(cfg.clone()).expect("openh264 forced");
    assert_eq!(l.encoder(), Some(rtcroom_pipelines::EncoderKind::OpenH264));
    drop(l);
    // And what it produces decodes: 200 ms at 15 fps.
    let (video, _) = round_trip(cfg.clone());
    assert_video(&video, 3);
    cfg.video.as_mut().expect("video").encoder = Some("nvh264enc".into());
    assert_eq!(
        LocalPipeline::start(cfg).err(),
        Some(PipelineError::EncoderNotInstalled("nvh264enc".into()))
    );
    let (auto, _o) = LocalPipeline::start(local(
        SourceKind::TestPattern {
            duration: Some(Duration::from_millis(200)),
        },
        VideoCodec::H264,
    ))
    .expect("auto");
    assert_eq!(
        auto.encoder(),
        Some(rtcroom_pipelines::EncoderKind::X264),
        "no hardware here: x264"
    );
    auto.stop().expect("stop");
}

/// Opus's TOC configuration (RFC 6716 §3.1) of an RTP packet with a 12-byte header; 16 and
/// up is CELT-only, which carries no in-band FEC; below is SILK or hybrid, which can.
fn opus_config(p: &rtcroom_pipelines::RtpPacket) -> u8 {
    p.data[12] >> 3
}

#[test]
fn the_expected_loss_puts_opus_into_a_mode_that_carries_fec() {
    // Our test tone is music to Opus: CELT-only (no FEC) while no loss is expected. Told to
    // expect 20 % loss mid-stream (as receiver reports do), it switches to hybrid, the mode
    // whose SILK layer carries FEC.
    let mut cfg = local(
        SourceKind::TestPattern {
            duration: Some(Duration::from_secs(3)),
        },
        VideoCodec::H264,
    );
    cfg.video = None;
    cfg.realtime = true;
    let rt = rt();
    let (local, mut out) = LocalPipeline::start(cfg).expect("local");
    let control = local.encoder_control();
    let mut configs = Vec::new();
    while configs.len() < 60 {
        let p = recv_timeout(&rt, &mut out.rtp, Duration::from_secs(10)).expect("rtp in time");
        configs.push(opus_config(&p));
    }
    assert!(
        control.set_expected_loss(20),
        "the pipeline has an Opus encoder"
    );
    // 3 s of 20 ms packets: 150 (the last few may stay in the encoder at the end).
    while configs.len() < 140 {
        let p = recv_timeout(&rt, &mut out.rtp, Duration::from_secs(10)).expect("rtp in time");
        configs.push(opus_config(&p));
    }
    local.stop().expect("stop");
    let celt = |s: &[u8]| s.iter().filter(|&&c| c >= 16).count();
    // The encoder starts in hybrid for its first ~17 packets whatever it is told.
    let before = &configs[20..58];
    let after = &configs[configs.len() - 40..];
    assert!(celt(before) >= 34, "before: {before:?}");
    assert!(celt(after) <= 4, "after: {after:?}");
}
