//! Non-blocking output, pacing, discard counting, device errors and preload.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rtcroom_pipelines::{
    AudioCodec, AudioTrackConfig, LocalConfig, LocalPipeline, PipelineEvent, RemoteConfig,
    RemoteOutput, RemotePipeline, SourceKind, VideoCodec, VideoProfile, VideoTrackConfig,
};

fn video_only(source: SourceKind, realtime: bool, rtp_queue: usize) -> LocalConfig {
    LocalConfig {
        source,
        video: Some(VideoTrackConfig {
            codec: VideoCodec::H264,
            profile: VideoProfile::P120,
            encoder: None,
        }),
        audio: None,
        realtime,
        rtp_queue,
        small_video: None,
    }
}

fn wait_eos(rt: &tokio::runtime::Runtime, out: &mut rtcroom_pipelines::LocalOutputs) {
    match next_event(rt, &mut out.events, Duration::from_secs(20)) {
        Some(PipelineEvent::Eos) => {}
        other => panic!("expected EOS, got {other:?}"),
    }
}

#[test]
fn full_rtp_channel_drops_and_counts_instead_of_blocking() {
    let rt = rt();
    let (local, mut out) = LocalPipeline::start(video_only(
        SourceKind::TestPattern {
            duration: Some(Duration::from_secs(2)),
        },
        false,
        4,
    ))
    .expect("starts");
    // Nobody reads the RTP channel; the pipeline must still run to its end.
    wait_eos(&rt, &mut out);
    let stats = local.stats();
    assert_eq!(stats.packets_sent, 4);
    assert!(stats.packets_dropped > 0, "{stats:?}");
}

#[test]
fn media_file_is_paced_in_real_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("one-second.mkv");
    make_media_file(&format!(
        "videotestsrc num-buffers=15 ! video/x-raw,width=160,height=120,framerate=15/1 \
         ! x264enc ! h264parse ! matroskamux ! filesink location={}",
        path.display()
    ));
    let rt = rt();
    let started = Instant::now();
    let (_local, mut out) = LocalPipeline::start(video_only(
        SourceKind::File {
            path,
            looping: false,
        },
        true,
        1000,
    ))
    .expect("starts");
    wait_eos(&rt, &mut out);
    // 15 frames at 15 fps: the last one is due 0.93 s after the first.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "1 s file played in {took:?}"
    );
    // No frame may be lost on the way (the marker bit ends each frame).
    let mut frames = 0;
    while let Ok(p) = out.rtp.try_recv() {
        frames += usize::from(p.marker());
    }
    assert_eq!(frames, 15);
}

#[test]
fn discard_output_counts_frames() {
    let rt = rt();
    let (remote, _ev) = RemotePipeline::start(RemoteConfig {
        video: Some(VideoCodec::H264),
        audio: Some(AudioCodec::Opus),
        output: RemoteOutput::Discard,
        jitter_latency: Duration::from_millis(20),
        faststart_packets: 0,
        sei: None,
    })
    .expect("remote");
    let mut cfg = video_only(
        SourceKind::TestPattern {
            duration: Some(Duration::from_secs(1)),
        },
        false,
        100_000,
    );
    cfg.audio = Some(AudioTrackConfig::default());
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
    let s = remote.stats();
    assert_eq!(s.video_frames, 15, "{s:?}");
    assert!(s.audio_frames >= 50, "{s:?}");
    assert_eq!(s.decoded_video_frames, 0, "discard does not decode");
}

#[test]
fn missing_camera_is_a_typed_error() {
    let r = LocalPipeline::start(video_only(
        SourceKind::Capture {
            camera: Some("/dev/rtcroom-no-such-camera".into()),
            microphone: None,
        },
        true,
        10,
    ));
    let err = r.expect_err("no such device");
    // The element's own error, naming the device, not a bare state-change failure.
    match err {
        rtcroom_pipelines::PipelineError::Stream { message, debug, .. } => {
            let text = format!("{message} {debug:?}");
            assert!(text.contains("rtcroom-no-such-camera"), "{text}");
        }
        other => panic!("expected a stream error, got {other:?}"),
    }
}

#[test]
fn preload_loads_the_elements_in_use() {
    let missing = rtcroom_pipelines::preload().expect("preload");
    for needed in [
        "x264enc",
        "vp8enc",
        "opusenc",
        "rtph264pay",
        "rtpjitterbuffer",
        "matroskamux",
    ] {
        assert!(!missing.contains(&needed), "{needed} missing: {missing:?}");
    }
}

#[test]
fn play_output_decodes_audio() {
    // Video playback needs a display; audio falls back to a fake sink on a headless machine
    // (autoaudiosink), so the play path is exercised with audio.
    let rt = rt();
    let (remote, _ev) = RemotePipeline::start(RemoteConfig {
        video: None,
        audio: Some(AudioCodec::Opus),
        output: RemoteOutput::Play,
        jitter_latency: Duration::from_millis(20),
        faststart_packets: 0,
        sei: None,
    })
    .expect("remote");
    let mut cfg = video_only(
        SourceKind::TestPattern {
            duration: Some(Duration::from_secs(1)),
        },
        false,
        100_000,
    );
    cfg.video = None;
    cfg.audio = Some(AudioTrackConfig::default());
    let (_local, mut out) = LocalPipeline::start(cfg).expect("local");
    pump(
        &rt,
        &mut out,
        &remote,
        Duration::from_secs(20),
        |_| {},
        |r| r.stats().decoded_audio_frames >= 50,
    );
    remote.stop().expect("stop drains the played audio");
    let s = remote.stats();
    assert!(s.decoded_audio_frames >= 50, "{s:?}");
}

/// With `faststart_packets`, playout starts with the first packets instead of holding them
/// for the whole jitter latency (which still covers later gaps): a 3 s latency does not
/// delay the first frame. Without it, nothing comes out for the latency.
#[test]
fn faststart_releases_the_first_frame_before_the_latency() {
    let rt = rt();
    let (_local, mut out) = LocalPipeline::start(video_only(
        SourceKind::TestPattern {
            duration: Some(Duration::from_secs(1)),
        },
        false,
        100_000,
    ))
    .expect("local");
    wait_eos(&rt, &mut out);
    let mut packets = Vec::new();
    while let Ok(p) = out.rtp.try_recv() {
        packets.push(p);
    }
    assert!(packets.len() > 10, "{}", packets.len());
    for (faststart, expect_frame) in [(1, true), (0, false)] {
        let (cb, frames) = collector();
        let (remote, _ev) = RemotePipeline::start(RemoteConfig {
            video: Some(VideoCodec::H264),
            audio: None,
            output: RemoteOutput::Frames(cb),
            jitter_latency: Duration::from_secs(3),
            faststart_packets: faststart,
            sei: None,
        })
        .expect("remote");
        // Paced as a live stream arrives (each packet at its media time).
        let base = packets[0].timestamp().expect("RTP");
        let t0 = Instant::now();
        for p in &packets[..packets.len() / 2] {
            let ts = p.timestamp().expect("RTP").wrapping_sub(base);
            let at = t0 + Duration::from_secs_f64(f64::from(ts) / 90_000.0);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            remote.push_rtp(p.data.clone()).expect("push");
        }
        let first = frames.recv_timeout(Duration::from_millis(1500));
        assert_eq!(
            first.is_ok(),
            expect_frame,
            "faststart {faststart}: {:?}",
            remote.stats()
        );
        // The cut-off stream ends with a gap the jitter buffer may still wait on.
        let _ = remote.stop();
    }
}

/// The test tone's volume is measured where it is sent and where it is decoded; a remote
/// output that does not decode reports none.
#[test]
fn audio_volume_is_metered_on_both_ends() {
    let rt = rt();
    let mut cfg = video_only(
        SourceKind::TestPattern {
            duration: Some(Duration::from_secs(1)),
        },
        false,
        100_000,
    );
    cfg.video = None;
    cfg.audio = Some(AudioTrackConfig::default());
    for (output, decodes) in [
        (RemoteOutput::Frames(collector().0), true),
        (RemoteOutput::Discard, false),
    ] {
        let (remote, _ev) = RemotePipeline::start(RemoteConfig {
            video: None,
            audio: Some(AudioCodec::Opus),
            output,
            jitter_latency: Duration::from_millis(20),
            faststart_packets: 1,
            sei: None,
        })
        .expect("remote");
        // (It runs from `start` on, so nothing can be said of its level before the pump.)
        let (local, mut out) = LocalPipeline::start(cfg.clone()).expect("local");
        pump(
            &rt,
            &mut out,
            &remote,
            Duration::from_secs(20),
            |_| {},
            |_| false,
        );
        remote.stop().expect("stop");
        let sent = local.audio_level().expect("the tone was measured");
        assert!((10..=100).contains(&sent), "{sent}");
        match remote.audio_level() {
            Some(got) if decodes => assert!((10..=100).contains(&got), "{got}"),
            None if !decodes => {}
            other => panic!("decodes {decodes}: {other:?}"),
        }
    }
    // A stream without audio has no level to report.
    let silent = video_only(SourceKind::TestPattern { duration: None }, true, 100);
    let (local, _out) = LocalPipeline::start(silent).expect("video only");
    assert_eq!(local.audio_level(), None);
}

#[test]
fn sei_messages_ride_the_next_frames_and_come_out_of_the_receiver() {
    use rtcroom_pipelines::SeiMessage;
    use std::sync::{Arc, Mutex};
    let rt = rt();
    let got = Arc::new(Mutex::new(Vec::<SeiMessage>::new()));
    let sink = got.clone();
    let mut config = RemoteConfig::new(RemoteOutput::Discard);
    config.audio = None;
    config.jitter_latency = Duration::from_millis(20);
    config.sei = Some(Arc::new(move |m| sink.lock().unwrap().push(m)));
    let (remote, _ev) = RemotePipeline::start(config).expect("remote");
    // Real time, so the messages sent now go with the first frames, not after the last.
    let (local, mut out) = LocalPipeline::start(video_only(
        SourceKind::TestPattern {
            duration: Some(Duration::from_secs(1)),
        },
        true,
        10_000,
    ))
    .expect("local");
    let mut uuid = vec![0x5a; 16];
    uuid.extend_from_slice(b"with a uuid");
    let sent = vec![
        SeiMessage {
            payload_type: 243,
            data: b"first".to_vec(),
        },
        SeiMessage {
            payload_type: 5,
            data: uuid,
        },
        SeiMessage {
            payload_type: 243,
            // Bytes that need emulation prevention.
            data: vec![0, 0, 1, 0, 0, 0, 0, 0, 3],
        },
    ];
    for m in &sent {
        local.send_sei(m.clone()).expect("queued");
    }
    // Out of range: refused at once.
    assert!(
        local
            .send_sei(SeiMessage {
                payload_type: 243,
                data: vec![1; 1025],
            })
            .is_err()
    );
    pump(
        &rt,
        &mut out,
        &remote,
        Duration::from_secs(20),
        |_| {},
        |_| false,
    );
    remote.stop().expect("stop");
    // Each exactly once, in order (x264's own SEI on the first keyframe is not reported).
    assert_eq!(*got.lock().unwrap(), sent);

    // No H.264 video, no SEI.
    let mut vp8 = video_only(SourceKind::TestPattern { duration: None }, true, 100);
    if let Some(v) = vp8.video.as_mut() {
        v.codec = VideoCodec::Vp8;
    }
    let (local, _out) = LocalPipeline::start(vp8).expect("vp8");
    assert!(
        local
            .send_sei(SeiMessage {
                payload_type: 243,
                data: b"x".to_vec(),
            })
            .is_err()
    );
}
