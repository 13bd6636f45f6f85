//! Shared test harness: pump RTP from a local pipeline into a remote one, collect decoded
//! frames, inspect files with gst-discoverer-1.0. Every wait has a deadline.
#![allow(dead_code)]

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtcroom_pipelines::{
    DecodedFrame, FrameCallback, LocalOutputs, PipelineEvent, RemotePipeline, RtpPacket,
};
use tokio::sync::mpsc;

/// A current-thread runtime with a clock, to await channels with a deadline.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// Receives one item, or None if the deadline passes or the channel closes.
pub fn recv_timeout<T>(
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<T>,
    d: Duration,
) -> Option<T> {
    rt.block_on(async { tokio::time::timeout(d, rx.recv()).await.ok().flatten() })
}

/// Waits for the next pipeline event, up to `d`.
pub fn next_event(
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::UnboundedReceiver<PipelineEvent>,
    d: Duration,
) -> Option<PipelineEvent> {
    rt.block_on(async { tokio::time::timeout(d, rx.recv()).await.ok().flatten() })
}

/// Forwards every RTP packet of `out` into `remote` (and to `seen`) until the local pipeline
/// reaches EOS and its channel is drained, or `stop_when` holds. Panics at the deadline.
pub fn pump(
    rt: &tokio::runtime::Runtime,
    out: &mut LocalOutputs,
    remote: &RemotePipeline,
    deadline: Duration,
    mut seen: impl FnMut(&RtpPacket),
    stop_when: impl Fn(&RemotePipeline) -> bool,
) {
    let forward = async {
        let mut eos = false;
        loop {
            if stop_when(remote) {
                return;
            }
            if eos {
                match out.rtp.try_recv() {
                    Ok(p) => {
                        seen(&p);
                        remote.push_rtp(p.data).expect("push");
                        continue;
                    }
                    Err(_) => return,
                }
            }
            tokio::select! {
                p = out.rtp.recv() => {
                    let p = p.expect("rtp channel open while the pipeline lives");
                    seen(&p);
                    remote.push_rtp(p.data).expect("push");
                }
                ev = out.events.recv() => match ev {
                    Some(PipelineEvent::Eos) => eos = true,
                    Some(PipelineEvent::Error(e)) => panic!("local pipeline error: {e}"),
                    _ => {}
                },
            }
        }
    };
    rt.block_on(async { tokio::time::timeout(deadline, forward).await })
        .unwrap_or_else(|_| panic!("pump deadline of {deadline:?} passed"));
}

/// A frame callback collecting into a std channel, and its receiving end.
pub fn collector() -> (FrameCallback, std_mpsc::Receiver<DecodedFrame>) {
    let (tx, rx) = std_mpsc::channel();
    let tx = Mutex::new(tx);
    let cb: FrameCallback = Arc::new(move |f| {
        let _ = tx.lock().expect("lock").send(f);
    });
    (cb, rx)
}

/// What gst-discoverer-1.0 reports about a file.
#[derive(Debug)]
pub struct Discovered {
    pub ok: bool,
    pub duration: Option<Duration>,
    pub has_video: bool,
    pub has_audio: bool,
    pub text: String,
}

/// Runs gst-discoverer-1.0 (10 s timeout) and parses streams and duration.
pub fn discover(path: &Path) -> Discovered {
    let out = std::process::Command::new("gst-discoverer-1.0")
        .arg("-t")
        .arg("10")
        .arg(path)
        .output()
        .expect("gst-discoverer-1.0 runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let duration = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Duration: "))
        .and_then(parse_hms);
    let has = |kind: &str| {
        text.lines()
            .any(|l| l.trim_start().starts_with(&format!("{kind} #")))
    };
    Discovered {
        ok: out.status.success() && !text.contains("An error was encountered"),
        duration,
        has_video: has("video"),
        has_audio: has("audio"),
        text,
    }
}

fn parse_hms(s: &str) -> Option<Duration> {
    let mut parts = s.trim().split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    Some(Duration::from_secs_f64(h * 3600.0 + m * 60.0 + sec))
}

/// Writes a small media file with gst-launch-like description (test helper, blocking).
pub fn make_media_file(description: &str) {
    gst::init().expect("gst init");
    use gst::prelude::*;
    let p = gst::parse::launch(description)
        .expect("parse")
        .downcast::<gst::Pipeline>()
        .expect("pipeline");
    p.set_state(gst::State::Playing).expect("play");
    let bus = p.bus().expect("bus");
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(20),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("file written in time");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    p.set_state(gst::State::Null).expect("null");
}

/// Whether an H.264 RTP packet starts or contains a keyframe (IDR slice or SPS).
pub fn h264_keyframe_start(p: &RtpPacket) -> bool {
    let Some(payload) = p.data.get(12..) else {
        return false;
    };
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        5 | 7 => true,
        24 => {
            // STAP-A: 16-bit sizes then NAL units.
            let mut i = 1;
            while i + 2 < payload.len() {
                let size = u16::from_be_bytes([payload[i], payload[i + 1]]) as usize;
                if matches!(payload[i + 2] & 0x1f, 5 | 7) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => payload
            .get(1)
            .is_some_and(|b| b & 0x80 != 0 && b & 0x1f == 5),
        _ => false,
    }
}
