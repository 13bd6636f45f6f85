//! Benchmarks for BENCHMARKS.md ("Pipelines"). Run in release:
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-pipelines cargo run --release -p rtcroom-pipelines --example bench
//! ```
//!
//! CPU time is the process's user+system time (getrusage), so it covers every GStreamer
//! thread. "Per core" numbers divide media time by CPU time: how many real-time streams one
//! core could carry.

use std::time::{Duration, Instant};

use rtcroom_pipelines::{
    AudioCodec, AudioTrackConfig, LocalConfig, LocalPipeline, PipelineEvent, RecordFormat,
    RemoteConfig, RemoteOutput, RemotePipeline, RtpPacket, SourceKind, VideoCodec, VideoProfile,
    VideoTrackConfig,
};

fn cpu_time() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes a full rusage into the pointer on success (checked below).
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: rc == 0, so the struct was initialised.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// Runs a local pipeline to its end, returning its packets, wall time and CPU time.
fn run_local(config: LocalConfig) -> (Vec<RtpPacket>, Duration, Duration) {
    let rt = rt();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let (local, mut out) = LocalPipeline::start(config).expect("local starts");
    let mut packets = Vec::new();
    rt.block_on(async {
        let mut eos = false;
        loop {
            if eos {
                while let Ok(p) = out.rtp.try_recv() {
                    packets.push(p);
                }
                break;
            }
            tokio::select! {
                p = out.rtp.recv() => packets.push(p.expect("open")),
                ev = out.events.recv() => match ev {
                    Some(PipelineEvent::Eos) => eos = true,
                    Some(PipelineEvent::Error(e)) => panic!("{e}"),
                    _ => {}
                },
                _ = tokio::time::sleep(Duration::from_secs(120)) => panic!("bench took too long"),
            }
        }
    });
    let wall = t0.elapsed();
    local.stop().expect("stop");
    let cpu = cpu_time() - cpu0;
    assert_eq!(local.stats().packets_dropped, 0);
    (packets, wall, cpu)
}

fn video_only(profile: VideoProfile, secs: u64, realtime: bool) -> LocalConfig {
    LocalConfig {
        source: SourceKind::TestPattern {
            duration: Some(Duration::from_secs(secs)),
        },
        video: Some(VideoTrackConfig {
            codec: VideoCodec::H264,
            profile,
            encoder: None,
        }),
        audio: None,
        realtime,
        rtp_queue: 1_000_000,
        small_video: None,
    }
}

fn encode_speed(name: &str, profile: VideoProfile, secs: u64) {
    let (packets, wall, cpu) = run_local(video_only(profile, secs, false));
    let media = secs as f64;
    let bytes: usize = packets.iter().map(|p| p.data.len()).sum();
    println!(
        "| {name} | {}x{}@{} {} kbit/s | {:.1}× | {:.1}× | {:.0} kbit/s |",
        profile.width,
        profile.height,
        profile.fps,
        profile.bitrate_kbps,
        media / wall.as_secs_f64(),
        media / cpu.as_secs_f64(),
        bytes as f64 * 8.0 / media / 1000.0,
    );
}

fn main() {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    rtcroom_pipelines::preload().expect("preload");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("cores: {cores}\n");

    println!(
        "## x264 encode speed (test pattern: SMPTE bars scrolling, `horizontal-speed=4`, no pacing, video only)\n"
    );
    println!(
        "| profile | settings | × real time (wall, all cores) | × real time per core (media / CPU) | RTP bitrate |"
    );
    println!("|---|---|---|---|---|");
    encode_speed(
        "720p30 (custom)",
        VideoProfile::new(1280, 720, 30, 1500),
        10,
    );
    encode_speed("TRTC 720p", VideoProfile::P720, 10);
    encode_speed("TRTC 480p", VideoProfile::P480, 10);
    encode_speed("TRTC 1080p", VideoProfile::P1080, 10);

    println!("\n## CPU per published stream (live, paced in real time, 10 s)\n");
    println!("| stream | CPU (% of one core) |");
    println!("|---|---|");
    for (name, profile) in [
        (
            "720p30 H.264 + Opus standard",
            VideoProfile::new(1280, 720, 30, 1500),
        ),
        (
            "TRTC 720p (15 fps) H.264 + Opus standard",
            VideoProfile::P720,
        ),
        ("TRTC 480p H.264 + Opus standard", VideoProfile::P480),
    ] {
        let mut cfg = video_only(profile, 10, true);
        cfg.audio = Some(AudioTrackConfig::default());
        let (_, wall, cpu) = run_local(cfg);
        println!(
            "| {name} | {:.1}% |",
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
        );
    }
    // What the test source itself costs, to separate it from encoding.
    let (_, wall, cpu) = run_source_only();
    println!(
        "| (of which the 720p30 `videotestsrc pattern=smpte horizontal-speed=4` source alone) | {:.1}% |",
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );

    // Pre-encode 10 s of TRTC 720p (1.5 Mbit/s) + Opus, then feed the same RTP to the remote
    // pipelines in real time: CPU seconds per media second = share of a core per stream.
    let secs = 10u64;
    let mut cfg = video_only(VideoProfile::P720, secs, false);
    cfg.audio = Some(AudioTrackConfig::default());
    let (packets, _, _) = run_local(cfg);
    let bytes: usize = packets.iter().map(|p| p.data.len()).sum();
    println!(
        "\n## Remote pipelines (input: {secs} s of TRTC 720p H.264 1.5 Mbit/s + Opus 40 kbit/s, {} RTP packets, {:.0} kbit/s)\n",
        packets.len(),
        bytes as f64 * 8.0 / secs as f64 / 1000.0
    );
    println!("| output | CPU per real-time stream (% of one core) | × real time per core |");
    println!("|---|---|---|");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, output) in [
        (
            "record MKV (no transcode)",
            RemoteOutput::Record {
                path: dir.path().join("r.mkv"),
                format: RecordFormat::Mkv,
            },
        ),
        (
            "record fragmented MP4 (no transcode)",
            RemoteOutput::Record {
                path: dir.path().join("r.mp4"),
                format: RecordFormat::Mp4,
            },
        ),
        (
            "decode to app frames (avdec_h264 + opusdec)",
            RemoteOutput::Frames(std::sync::Arc::new(|_| {})),
        ),
        ("discard (depayload + count)", RemoteOutput::Discard),
    ] {
        let cpu = feed_remote(&packets, output, secs * 15);
        let share = cpu.as_secs_f64() / secs as f64;
        println!("| {name} | {:.2}% | {:.0}× |", 100.0 * share, 1.0 / share);
    }
}

fn feed_remote(
    packets: &[RtpPacket],
    output: RemoteOutput,
    expected_video_frames: u64,
) -> Duration {
    let cpu0 = cpu_time();
    let (remote, _ev) = RemotePipeline::start(RemoteConfig {
        video: Some(VideoCodec::H264),
        audio: Some(AudioCodec::Opus),
        output,
        jitter_latency: Duration::from_millis(200),
        faststart_packets: 0,
        sei: None,
    })
    .expect("remote");
    // Real-time pacing: each packet is pushed at its media time (from its RTP timestamp).
    let t0 = Instant::now();
    let mut first: std::collections::HashMap<u8, u32> = Default::default();
    for p in packets {
        let ts = p.timestamp().expect("RTP header");
        let base = *first.entry(p.codec.payload_type()).or_insert(ts);
        let at = Duration::from_secs_f64(
            f64::from(ts.wrapping_sub(base)) / f64::from(p.codec.clock_rate()),
        );
        if let Some(wait) = (t0 + at).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        remote.push_rtp(p.data.clone()).expect("push");
    }
    remote.stop().expect("stop");
    let cpu = cpu_time() - cpu0;
    let stats = remote.stats();
    assert_eq!(
        stats.video_frames, expected_video_frames,
        "no frame lost: {stats:?}"
    );
    cpu
}

fn run_source_only() -> ((), Duration, Duration) {
    use gst::prelude::*;
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let p = gst::parse::launch(
        "videotestsrc is-live=true pattern=smpte horizontal-speed=4 num-buffers=300 ! video/x-raw,width=1280,height=720,framerate=30/1 ! fakesink",
    )
    .expect("parse")
    .downcast::<gst::Pipeline>()
    .expect("pipeline");
    p.set_state(gst::State::Playing).expect("play");
    p.bus()
        .expect("bus")
        .timed_pop_filtered(gst::ClockTime::from_seconds(30), &[gst::MessageType::Eos])
        .expect("eos");
    p.set_state(gst::State::Null).expect("null");
    ((), t0.elapsed(), cpu_time() - cpu0)
}
