//! How the receive pipeline's jitter buffer settings behave under network jitter, for
//! BENCHMARKS.md ("Choosing the jitter buffer default"). Run in release:
//!
//! ```sh
//! cargo run --release -p rtcroom-pipelines --example jitter [-- <seconds per run>]
//! ```
//!
//! A test-pattern H.264 stream (640×360 @ 30 fps, keyframe every 2 s) is encoded once. Each
//! run plays it into a receive pipeline (decoded frames to a callback) in real time, every
//! packet delayed by a pseudo-random 0..J ms (uniform, seeded: the same delays for every
//! setting), so packets arrive late and out of order as on a jittery network, then measures:
//! the first decoded frame after the first packet, frames decoded, and freezes (a gap of more
//! than 100 ms between decoded frames, 3 frame intervals). The settings are the jitter
//! buffer's latency and `faststart_packets`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtcroom_pipelines::{
    DecodedFrame, LocalConfig, LocalPipeline, MediaKind, PipelineEvent, RemoteConfig, RemoteOutput,
    RemotePipeline, RtpPacket, SourceKind, VideoCodec, VideoProfile, VideoTrackConfig,
};

const FREEZE: Duration = Duration::from_millis(100);

fn encode(secs: u64) -> Vec<RtpPacket> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (local, mut out) = LocalPipeline::start(LocalConfig {
        source: SourceKind::TestPattern {
            duration: Some(Duration::from_secs(secs)),
        },
        video: Some(VideoTrackConfig {
            codec: VideoCodec::H264,
            profile: VideoProfile::new(640, 360, 30, 800),
            encoder: None,
        }),
        audio: None,
        realtime: false,
        rtp_queue: 1_000_000,
        small_video: None,
    })
    .expect("local starts");
    let mut packets = Vec::new();
    rt.block_on(async {
        loop {
            tokio::select! {
                p = out.rtp.recv() => match p {
                    Some(p) => packets.push(p),
                    None => break,
                },
                ev = out.events.recv() => match ev {
                    Some(PipelineEvent::Eos) => {
                        while let Ok(p) = out.rtp.try_recv() {
                            packets.push(p);
                        }
                        break;
                    }
                    Some(PipelineEvent::Error(e)) => panic!("{e}"),
                    _ => {}
                },
                _ = tokio::time::sleep(Duration::from_secs(120)) => panic!("encoding took too long"),
            }
        }
    });
    local.stop().expect("stop");
    packets
}

/// xorshift64*: the same delays for every setting.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Outcome {
    first_frame: Option<Duration>,
    frames: usize,
    freezes: usize,
    frozen: Duration,
}

fn run(packets: &[RtpPacket], jitter_ms: u64, latency_ms: u64, faststart: u32) -> Outcome {
    let times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let sink = times.clone();
    let (remote, _ev) = RemotePipeline::start(RemoteConfig {
        video: Some(VideoCodec::H264),
        audio: None,
        output: RemoteOutput::Frames(Arc::new(move |f: DecodedFrame| {
            if f.kind == MediaKind::Video {
                sink.lock().expect("not poisoned").push(Instant::now());
            }
        })),
        jitter_latency: Duration::from_millis(latency_ms),
        faststart_packets: faststart,
        sei: None,
    })
    .expect("remote starts");
    // Arrival schedule: media time (from the RTP timestamp) + a random delay; sorted, so a
    // packet delayed more than the next one arrives after it.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base = packets[0].timestamp().expect("RTP");
    let mut schedule: Vec<(Duration, &RtpPacket)> = packets
        .iter()
        .map(|p| {
            let ts = p.timestamp().expect("RTP").wrapping_sub(base);
            let media = Duration::from_secs_f64(f64::from(ts) / 90_000.0);
            let delay = Duration::from_secs_f64(rng.next_f64() * jitter_ms as f64 / 1000.0);
            (media + delay, p)
        })
        .collect();
    schedule.sort_by_key(|(at, _)| *at);
    let t0 = Instant::now();
    for (at, p) in &schedule {
        if let Some(wait) = (t0 + *at).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        remote.push_rtp(p.data.clone()).expect("push");
    }
    // Let the last frames out.
    std::thread::sleep(Duration::from_millis(latency_ms + 300));
    let times = times.lock().expect("not poisoned").clone();
    remote.stop().expect("stop");
    let first_frame = times.first().map(|t| t.duration_since(t0));
    let mut freezes = 0;
    let mut frozen = Duration::ZERO;
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        if gap > FREEZE {
            freezes += 1;
            frozen += gap;
        }
    }
    Outcome {
        first_frame,
        frames: times.len(),
        freezes,
        frozen,
    }
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(6);
    let packets = encode(secs);
    let frames = packets.iter().filter(|p| p.marker()).count();
    println!(
        "{} packets, {frames} frames, {secs} s per run",
        packets.len()
    );
    println!();
    println!(
        "| network jitter | latency | faststart | first frame | frames decoded | freezes > 100 ms | frozen |"
    );
    println!("|---|---|---|---|---|---|---|");
    for jitter in [0u64, 20, 50, 100] {
        for (latency, faststart) in [(20, 0), (50, 0), (200, 0), (50, 1), (100, 1), (200, 1)] {
            let o = run(&packets, jitter, latency, faststart);
            println!(
                "| 0–{jitter} ms | {latency} ms | {faststart} | {} | {}/{frames} | {} | {} ms |",
                o.first_frame.map_or("none".into(), |d| format!(
                    "{:.1} ms",
                    d.as_secs_f64() * 1e3
                )),
                o.frames,
                o.freezes,
                o.frozen.as_millis()
            );
        }
    }
}
