//! The small stream (simulcast): a second, smaller encoding of the same video, delivered on the
//! same RTP channel as [`Layer::Small`] packets, that can be paused (nothing encoded or sent)
//! and resumed (starting with a keyframe).

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use common::*;
use rtcroom_pipelines::{
    AppVideoFormat, DecodedFrame, FrameInfo, Layer, LocalConfig, LocalOutputs, LocalPipeline,
    MediaKind, PipelineError, PipelineEvent, RawVideoFormat, RemoteConfig, RemoteOutput,
    RemotePipeline, RtpPacket, SourceKind, VideoCodec, VideoProfile, VideoTrackConfig,
};

const I420_320X240: usize = 320 * 240 * 3 / 2;

fn simulcast(source: SourceKind, big: VideoProfile, small: VideoProfile) -> LocalConfig {
    LocalConfig {
        source,
        video: Some(VideoTrackConfig {
            codec: VideoCodec::H264,
            profile: big,
            encoder: None,
        }),
        audio: None,
        realtime: false,
        rtp_queue: 100_000,
        small_video: Some(small),
    }
}

fn frames_remote() -> (RemotePipeline, std_mpsc::Receiver<DecodedFrame>) {
    let (cb, rx) = collector();
    let (remote, _events) = RemotePipeline::start(RemoteConfig {
        video: Some(VideoCodec::H264),
        audio: None,
        output: RemoteOutput::Frames(cb),
        jitter_latency: Duration::from_millis(50),
        faststart_packets: 0,
        sei: None,
    })
    .expect("remote starts");
    (remote, rx)
}

/// Reads `out` until the pipeline's EOS and the channel is drained (20 s at most).
fn drain_to_eos(
    rt: &tokio::runtime::Runtime,
    out: &mut LocalOutputs,
    mut seen: impl FnMut(RtpPacket),
) {
    let drain = async {
        loop {
            tokio::select! {
                p = out.rtp.recv() => seen(p.expect("rtp channel open while the pipeline lives")),
                ev = out.events.recv() => match ev {
                    Some(PipelineEvent::Eos) => break,
                    Some(PipelineEvent::Error(e)) => panic!("local pipeline error: {e}"),
                    _ => {}
                },
            }
        }
        while let Ok(p) = out.rtp.try_recv() {
            seen(p);
        }
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), drain).await })
        .expect("EOS in time");
}

#[test]
fn the_small_stream_is_a_second_encoding_of_the_same_video_at_the_small_size() {
    let rt = rt();
    let (local, mut out) = LocalPipeline::start(simulcast(
        SourceKind::TestPattern {
            duration: Some(Duration::from_secs(2)),
        },
        VideoProfile::P240,
        VideoProfile::new(160, 120, 15, 100),
    ))
    .expect("local starts");
    assert!(local.encoder_control().has_small());
    let (big_remote, big_frames) = frames_remote();
    let (small_remote, small_frames) = frames_remote();
    let mut ssrcs = [BTreeSet::new(), BTreeSet::new()];
    let mut markers = [0usize; 2];
    drain_to_eos(&rt, &mut out, |p| {
        assert_eq!(p.kind(), MediaKind::Video);
        assert_eq!(p.payload_type(), Some(p.codec.payload_type()));
        ssrcs[p.layer.index()].insert(p.ssrc().expect("header"));
        markers[p.layer.index()] += usize::from(p.marker());
        let remote = match p.layer {
            Layer::Big => &big_remote,
            Layer::Small => &small_remote,
        };
        remote.push_rtp(p.data).expect("push");
    });
    local.stop().expect("local stops");
    // One SSRC per layer, and they differ.
    assert_eq!(ssrcs[0].len(), 1, "{ssrcs:?}");
    assert_eq!(ssrcs[1].len(), 1, "{ssrcs:?}");
    assert_ne!(ssrcs[0], ssrcs[1]);
    // 2 s at 15 fps each.
    assert_eq!(markers, [30, 30]);
    big_remote.stop().expect("big remote drains");
    small_remote.stop().expect("small remote drains");
    for (frames, (width, height)) in [(big_frames, (320, 240)), (small_frames, (160, 120))] {
        let frames: Vec<DecodedFrame> = frames.try_iter().collect();
        assert_eq!(frames.len(), 30, "decoded {width}x{height} frames");
        for f in &frames {
            assert_eq!(f.info, FrameInfo::Video { width, height });
        }
    }
}

#[test]
fn a_paused_small_layer_sends_nothing_and_resumes_with_a_keyframe() {
    // App source, no pacing, 30 fps in and out of both layers (one frame in, one frame out of
    // each). The pause and the resume are made between batches of frames, once the big layer
    // has sent the last-but-one frame of the batch: by then the small layer's valve has
    // decided every frame up to the one before that (videorate holds one frame back, and the
    // tee serves the small branch first; the margins below do not depend on the latter).
    let fps = 30;
    let rt = rt();
    let (local, mut out) = LocalPipeline::start(simulcast(
        SourceKind::App {
            video: Some(AppVideoFormat {
                format: RawVideoFormat::I420,
                width: 320,
                height: 240,
                fps,
            }),
            audio: None,
        },
        VideoProfile::new(320, 240, fps, 400),
        VideoProfile::new(160, 120, fps, 100),
    ))
    .expect("local starts");
    let input = out.app_video.take().expect("app input");
    let control = local.encoder_control();
    // Frame index of a layer's relative RTP timestamp (90 kHz; rounded).
    let ticks = u64::from(90_000 / fps);
    let frame_of = |rel: u32| (u64::from(rel) + ticks / 2) / ticks;
    let mut first_ts: [Option<u32>; 2] = [None, None];
    // Per layer: (frame index, starts a keyframe) of each packet, in order.
    let mut packets: [Vec<(u64, bool)>; 2] = [Vec::new(), Vec::new()];
    let mut record = |p: &RtpPacket| {
        let i = p.layer.index();
        let ts = p.timestamp().expect("header");
        let base = *first_ts[i].get_or_insert(ts);
        let frame = frame_of(ts.wrapping_sub(base));
        packets[i].push((frame, h264_keyframe_start(p)));
        (p.layer, frame, p.marker())
    };
    let push = |range: std::ops::Range<u64>| {
        for i in range {
            // A still picture: nothing for x264 to cut a scene on.
            input
                .push_frame(
                    vec![128u8; I420_320X240],
                    Duration::from_nanos(i * 1_000_000_000 / u64::from(fps)),
                )
                .expect("push");
        }
    };
    let mut wait_big_frame = |last: u64, out: &mut LocalOutputs| loop {
        let p = recv_timeout(&rt, &mut out.rtp, Duration::from_secs(10)).expect("rtp in time");
        if let (Layer::Big, frame, true) = record(&p)
            && frame == last
        {
            break;
        }
    };
    push(0..20);
    wait_big_frame(18, &mut out);
    assert!(control.is_layer_active(Layer::Small));
    assert!(control.set_layer_active(Layer::Small, false), "switchable");
    assert!(!control.is_layer_active(Layer::Small));
    assert!(control.is_layer_active(Layer::Big));
    push(20..40);
    wait_big_frame(38, &mut out);
    assert!(local.set_layer_active(Layer::Small, true));
    assert!(control.is_layer_active(Layer::Small));
    push(40..60);
    input.end_of_stream().expect("eos");
    drain_to_eos(&rt, &mut out, |p| {
        record(&p);
    });
    local.stop().expect("stop");

    let frames = |layer: Layer| -> BTreeSet<u64> {
        packets[layer.index()].iter().map(|(f, _)| *f).collect()
    };
    let big = frames(Layer::Big);
    assert_eq!(big, (0..60).collect(), "the big layer never paused");
    let small = frames(Layer::Small);
    for f in (0..=17).chain(40..60) {
        assert!(small.contains(&f), "small frame {f} sent: {small:?}");
    }
    for f in 20..=37 {
        assert!(
            !small.contains(&f),
            "small frame {f} sent while paused: {small:?}"
        );
    }
    // The first small packet after the pause starts a keyframe (the encoder's own GOP is 60
    // frames, and a still picture has no scene cut: only the resume can have asked for it).
    let after = packets[Layer::Small.index()]
        .iter()
        .find(|(f, _)| *f >= 20)
        .expect("small packets after the resume");
    assert!(
        after.1,
        "the small layer resumed with a keyframe: {after:?}"
    );
    let small_keyframes: BTreeSet<u64> = packets[Layer::Small.index()]
        .iter()
        .filter(|(_, key)| *key)
        .map(|(f, _)| *f)
        .collect();
    assert_eq!(
        small_keyframes.len(),
        2,
        "the first frame and the resume's: {small_keyframes:?}"
    );
}

#[test]
fn a_small_stream_needs_a_video_track_and_a_smaller_bitrate() {
    let test_pattern = SourceKind::TestPattern {
        duration: Some(Duration::from_millis(100)),
    };
    let mut no_video = simulcast(
        test_pattern.clone(),
        VideoProfile::P240,
        VideoProfile::new(160, 120, 15, 100),
    );
    no_video.video = None;
    no_video.audio = Some(Default::default());
    assert!(matches!(
        LocalPipeline::start(no_video),
        Err(PipelineError::Config(_))
    ));
    let too_big = simulcast(
        test_pattern.clone(),
        VideoProfile::P240,
        VideoProfile::new(160, 120, 15, 400),
    );
    assert!(matches!(
        LocalPipeline::start(too_big),
        Err(PipelineError::Config(_))
    ));
    let odd = simulcast(
        test_pattern.clone(),
        VideoProfile::P240,
        VideoProfile::new(161, 120, 15, 100),
    );
    assert!(matches!(
        LocalPipeline::start(odd),
        Err(PipelineError::Config(_))
    ));
    // Without a small stream there is nothing to switch.
    let mut one = simulcast(test_pattern, VideoProfile::P240, VideoProfile::P120);
    one.small_video = None;
    let (local, _out) = LocalPipeline::start(one).expect("starts");
    let control = local.encoder_control();
    assert!(!control.has_small());
    assert!(!control.set_layer_active(Layer::Small, false));
    assert!(!control.set_layer_active(Layer::Big, false));
    assert!(control.is_layer_active(Layer::Big));
    assert!(!control.is_layer_active(Layer::Small));
    local.stop().expect("stop");
}
