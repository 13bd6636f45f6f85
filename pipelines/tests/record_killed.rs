//! A recorder killed with SIGKILL halfway through leaves a shorter, valid file.
//!
//! This test binary has its own `main`: run without arguments it is the parent, which starts
//! itself again as a child recorder (`RTCROOM_RECORD_CHILD=<path>:<format>`), waits until the
//! child reports 2.5 s of video recorded, SIGKILLs it and inspects the file.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use common::*;
use rtcroom_pipelines::{
    AudioTrackConfig, LocalConfig, LocalPipeline, RecordFormat, RemoteConfig, RemoteOutput,
    RemotePipeline, SourceKind, VideoCodec, VideoProfile, VideoTrackConfig,
};

const CHILD_ENV: &str = "RTCROOM_RECORD_CHILD";
/// 2.5 s of 15 fps video.
const KILL_AFTER_FRAMES: u64 = 38;

fn main() {
    if let Ok(arg) = std::env::var(CHILD_ENV) {
        child(&arg);
        return;
    }
    for format in [RecordFormat::Mkv, RecordFormat::Mp4] {
        let started = Instant::now();
        let (duration, frames) = killed_recording_is_valid(format);
        println!(
            "test killed_{format:?}_recording_is_valid ... ok (file: {duration:?}, {frames} frames decode; took {:?})",
            started.elapsed()
        );
    }
}

fn killed_recording_is_valid(format: RecordFormat) -> (Option<Duration>, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("killed.{}", format.extension()));
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .env(
            CHILD_ENV,
            format!("{}:{}", path.display(), format.extension()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("child reports progress in time");
        let frames: u64 = line
            .strip_prefix("frames ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if frames >= KILL_AFTER_FRAMES {
            break;
        }
    }
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix.
    let status = child.wait().expect("reaped");
    assert!(!status.success(), "child was killed, not finished");
    let d = discover(&path);
    assert!(
        d.ok,
        "killed {format:?} recording is not valid:\n{}",
        d.text
    );
    assert!(
        d.has_video && d.has_audio,
        "both streams expected:\n{}",
        d.text
    );
    if let Some(dur) = d.duration.filter(|d| !d.is_zero()) {
        let secs = dur.as_secs_f64();
        assert!(
            (1.0..4.5).contains(&secs),
            "killed file lasts {secs} s:\n{}",
            d.text
        );
    }
    // Killed after 2.5 s: at least 1 s (15 frames) must have reached the disk (MP4 loses the
    // open fragment, up to MP4_FRAGMENT_MS; MKV loses at most the unwritten tail).
    let frames = assert_decodes_frames(&path, 15);
    (d.duration, frames)
}

/// Decodes the file to the end and checks that at least `min` video frames come out.
fn assert_decodes_frames(path: &Path, min: u64) -> u64 {
    gst::init().expect("gst");
    use gst::prelude::*;
    let p = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! video/x-raw ! fakesink name=sink",
        path.display()
    ))
    .expect("parse")
    .downcast::<gst::Pipeline>()
    .expect("pipeline");
    let sink = p.by_name("sink").expect("sink");
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let f = frames.clone();
    sink.static_pad("sink")
        .expect("pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            f.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    p.set_state(gst::State::Playing).expect("play");
    let msg = p
        .bus()
        .expect("bus")
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(20),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("decoded in time");
    p.set_state(gst::State::Null).expect("null");
    let n = frames.load(std::sync::atomic::Ordering::Relaxed);
    // A truncated last cluster/fragment may end in an error; the frames before it must decode.
    assert!(
        n >= min,
        "only {n} frames decode from the killed file ({msg:?})"
    );
    n
}

/// Child: records a live test pattern until killed, printing the recorded frame count.
fn child(arg: &str) {
    let (path, ext) = arg.rsplit_once(':').expect("path:format");
    let format = if ext == "mp4" {
        RecordFormat::Mp4
    } else {
        RecordFormat::Mkv
    };
    let rt = rt();
    let (remote, _ev) = RemotePipeline::start(RemoteConfig {
        output: RemoteOutput::Record {
            path: path.into(),
            format,
        },
        ..RemoteConfig::new(RemoteOutput::Discard)
    })
    .expect("recorder");
    let (_local, mut out) = LocalPipeline::start(LocalConfig {
        source: SourceKind::TestPattern { duration: None },
        video: Some(VideoTrackConfig {
            codec: VideoCodec::H264,
            profile: VideoProfile::P240,
            encoder: None,
        }),
        audio: Some(AudioTrackConfig::default()),
        realtime: true,
        rtp_queue: 1000,
        small_video: None,
    })
    .expect("source");
    let mut last = 0;
    let end = Instant::now() + Duration::from_secs(30);
    let mut stdout = std::io::stdout();
    while Instant::now() < end {
        let Some(p) = recv_timeout(&rt, &mut out.rtp, Duration::from_secs(5)) else {
            break;
        };
        remote.push_rtp(p.data).expect("push");
        let n = remote.stats().video_frames;
        if n != last {
            last = n;
            let _ = writeln!(stdout, "frames {n}");
            let _ = stdout.flush();
        }
    }
}
