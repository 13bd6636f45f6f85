//! Bandwidth adaptation end to end through a real bandwidth limit (issue #18): the server on
//! one end of a veth pair, both engine clients in a network namespace of this test on the
//! other, and `tc` (a token bucket, `tbf`, for UDP) on the server's end limiting the media it
//! sends them.
//! Bob subscribes to the big layer of Alice's two-layer stream; at 400 kbit/s his downlink
//! cannot hold it and the server moves him to the small layer on its own (str0m's TWCC
//! estimate); when the limit is lifted it moves him back up.
//!
//! The clients run on a thread that entered the namespace (`setns`) before the engine's
//! first use, so the engine thread and every socket it opens live there; this file holds this
//! one test so that no other test starts the engine first. Needs root (CI runs as root); the
//! namespace and its veth pair are removed however the test ends.

mod common;

use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rtcroom::{
    ClientEvent, DecodedFrame, FrameInfo, JoinOptions, LayerChangeReason, Mode, StreamConfig,
    SubscribeOptions, SubscribeOutput, VideoProfile, VideoStreamType, create_stream,
};

/// The limit while constrained.
const LIMIT: &str = "400kbit";
/// The big layer's bitrate (what the publisher announces and encodes).
const BIG_KBPS: u32 = 600;

/// A network namespace with a veth pair to this one, removed on drop.
struct Netns {
    name: String,
    /// Our end's name.
    veth: String,
    /// Our end's address.
    host: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn new() -> Result<Netns, String> {
        let id = std::process::id() % 10_000;
        let net = 1 + std::process::id() % 250;
        let ns = Netns {
            name: format!("rtcroom-bw-{id}"),
            veth: format!("rbw{id}a"),
            host: format!("10.213.{net}.1"),
        };
        let peer = format!("rbw{id}b");
        let client = format!("10.213.{net}.2/24");
        run(&["ip", "netns", "add", &ns.name])?;
        run(&[
            "ip", "link", "add", &ns.veth, "type", "veth", "peer", "name", &peer,
        ])?;
        run(&["ip", "link", "set", &peer, "netns", &ns.name])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", ns.host),
            "dev",
            &ns.veth,
        ])?;
        run(&["ip", "link", "set", &ns.veth, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", ns.name.as_str()];
            all.extend_from_slice(args);
            run(&all)
        };
        inside(&["ip", "addr", "add", &client, "dev", &peer])?;
        inside(&["ip", "link", "set", &peer, "up"])?;
        inside(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Limit the UDP this end sends into the namespace (the server's media to the clients)
    /// to `rate`; TCP (signalling) passes by the limit, so what the server tells Alice (the
    /// publisher, who shares the namespace but not, in the world this stands for, Bob's
    /// downlink) is not stuck behind Bob's media.
    fn limit(&self, rate: &str) -> Result<(), String> {
        let dev = self.veth.as_str();
        run(&["tc", "qdisc", "del", "dev", dev, "root"]).ok();
        // (This kernel has htb and tbf but no prio qdisc.) Class 1:10 for TCP, unlimited;
        // 1:20 for the rest, at `rate` with a 100 ms queue.
        run(&[
            "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20",
        ])?;
        run(&[
            "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate",
            "1gbit",
        ])?;
        run(&[
            "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate",
            rate, "ceil", rate,
        ])?;
        run(&[
            "tc", "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "tbf", "rate",
            rate, "burst", "16kbit", "latency", "100ms",
        ])?;
        run(&[
            "tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
            "u32", "match", "ip", "protocol", "6", "0xff", "flowid", "1:10",
        ])
    }

    fn lift(&self) -> Result<(), String> {
        run(&["tc", "qdisc", "del", "dev", &self.veth, "root"])
    }

    /// Move the calling thread into the namespace.
    fn enter(name: &str) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/var/run/netns/{name}"))
            .map_err(|e| format!("open netns {name}: {e}"))?;
        // SAFETY: setns on a namespace file descriptor this function keeps open for the
        // call; it changes only the calling thread's network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("setns: {}", std::io::Error::last_os_error()))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it ours.
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// What the client thread asks of the test's main thread (which is outside the namespace).
enum Ask {
    Limit,
    Lift,
}

/// Decoded video frames: arrival times and sizes.
#[derive(Default)]
struct Video {
    frames: Mutex<Vec<(Instant, u32)>>,
}

impl Video {
    fn output(self: &Arc<Self>) -> SubscribeOutput {
        let me = self.clone();
        SubscribeOutput::Frames(Arc::new(move |_, _, f: DecodedFrame| {
            if let FrameInfo::Video { width, .. } = f.info {
                me.frames.lock().unwrap().push((Instant::now(), width));
            }
        }))
    }

    fn count(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    /// The longest gap between decoded frames from `since` to now.
    fn longest_gap(&self, since: Instant) -> Duration {
        let f = self.frames.lock().unwrap();
        let mut last = since;
        let mut gap = Duration::ZERO;
        for (t, _) in f.iter().filter(|(t, _)| *t >= since) {
            gap = gap.max(t.saturating_duration_since(last));
            last = *t;
        }
        gap.max(Instant::now().saturating_duration_since(last))
    }

    /// Wait until a frame `width` wide is decoded; then `n` more frames.
    async fn wait_width(&self, width: u32, n: usize, what: &str) {
        let t = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            let seen = self
                .frames
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(1)
                .any(|f| f.1 == width);
            if seen {
                break;
            }
            assert!(
                t.elapsed() < DEADLINE,
                "timed out waiting for {what}: widths {:?}",
                self.widths()
            );
            tick.tick().await;
        }
        self.wait_frames(n, what).await;
    }

    /// The decoded widths in order, each with how many frames in a row.
    fn widths(&self) -> Vec<(u32, usize)> {
        let mut out: Vec<(u32, usize)> = Vec::new();
        for (_, w) in self.frames.lock().unwrap().iter() {
            match out.last_mut() {
                Some((last, n)) if last == w => *n += 1,
                _ => out.push((*w, 1)),
            }
        }
        out
    }

    async fn wait_frames(&self, n: usize, what: &str) {
        let start = self.count();
        let t = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while self.count() < start + n {
            assert!(t.elapsed() < DEADLINE, "timed out waiting for {what}");
            tick.tick().await;
        }
    }
}

/// The next layer change of `c` (any other event is kept in `c.seen`).
async fn layer_change(c: &mut TestClient, what: &str) -> (VideoStreamType, LayerChangeReason) {
    match c
        .wait_for(what, |e| matches!(e, ClientEvent::VideoLayerChanged { .. }))
        .await
    {
        ClientEvent::VideoLayerChanged {
            video_type, reason, ..
        } => (video_type, reason),
        _ => unreachable!(),
    }
}

/// The clients' side, in the namespace: returns the measurements.
async fn clients(url: String, ask: mpsc::Sender<Ask>, done: mpsc::Receiver<()>) -> String {
    let config = |user: &str| config(&url, user, Mode::Rtc);
    let alice = TestClient::new(config("alice"));
    let video = Arc::new(Video::default());
    let mut bob = TestClient::new(config("bob"));
    let local = bounded(create_stream(
        StreamConfig::default()
            .with_video_profile(VideoProfile::new(640, 360, 30, BIG_KBPS))
            .with_small_stream(Some(VideoProfile::SMALL_STREAM)),
    ))
    .await
    .expect("a stream with a small stream");
    bounded(alice.join(JoinOptions::new(4801u32)))
        .await
        .expect("alice joins");
    bounded(alice.publish(&local)).await.expect("publish");
    bounded(bob.join(JoinOptions::new(4801u32)))
        .await
        .expect("bob joins");
    let remote = bob.stream_added("alice").await;
    assert_eq!(remote.layers.len(), 2, "two layers announced: {remote:?}");
    bounded(bob.subscribe(&remote, SubscribeOptions::new(video.output())))
        .await
        .expect("subscribe");
    let first = layer_change(&mut bob, "the first layer").await;
    assert_eq!(first.0, VideoStreamType::Big, "{first:?}");
    video.wait_frames(30, "big frames").await;

    // Constrained: down to the small layer, without a long freeze.
    ask.send(Ask::Limit).expect("the main thread listens");
    done.recv().expect("limited");
    let limited = Instant::now();
    let down = layer_change(&mut bob, "the move to the small layer").await;
    let down_after = limited.elapsed();
    assert_eq!(
        down,
        (VideoStreamType::Small, LayerChangeReason::Bandwidth),
        "after {down_after:?}"
    );
    video.wait_width(160, 15, "small frames").await;
    let small_after = limited.elapsed();
    let freeze = video.longest_gap(limited);
    // The bounds: on the small layer within 3 s, no freeze over 500 ms.
    assert!(
        down_after <= Duration::from_secs(3),
        "switched after {down_after:?}"
    );
    assert!(
        freeze <= Duration::from_millis(500),
        "a {freeze:?} freeze: widths {:?}",
        video.widths()
    );

    // Lifted: back up to the big layer.
    ask.send(Ask::Lift).expect("the main thread listens");
    done.recv().expect("lifted");
    let lifted = Instant::now();
    let up = layer_change(&mut bob, "the move back to the big layer").await;
    let up_after = lifted.elapsed();
    assert_eq!(up, (VideoStreamType::Big, LayerChangeReason::Bandwidth));
    video.wait_width(640, 15, "big frames again").await;
    let big_after = lifted.elapsed();
    assert!(
        !bob.seen.iter().any(|e| matches!(e, ClientEvent::Error(_))),
        "{:?}",
        bob.seen
    );
    let _ = bounded(bob.leave()).await;
    let _ = bounded(alice.leave()).await;
    format!(
        "after the {LIMIT} limit: switched to small {down_after:?}, small frames decoded \
         {small_after:?} (longest gap between decoded frames {freeze:?}); after lifting it: \
         switched to big {up_after:?}, big frames {big_after:?}; widths {:?}",
        video.widths()
    )
}

#[test]
fn a_constrained_subscriber_moves_to_the_small_layer_and_back() {
    let net = Netns::new().unwrap_or_else(|e| {
        panic!("this test makes a network namespace and needs root (CI runs as root): {e}")
    });
    let mut cfg = server_config(&format!("{}:0", net.host));
    cfg.media.bind_ip = net.host.parse().expect("an IPv4 address");
    let server = start(cfg);
    let url = server.ws_url();
    let name = net.name.clone();
    let (ask_tx, ask_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let client = std::thread::spawn(move || {
        Netns::enter(&name).expect("enter the namespace");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(clients(url, ask_tx, done_rx))
    });
    // Serve the client thread's asks until it ends (its sender drops).
    for a in ask_rx {
        match a {
            Ask::Limit => net.limit(LIMIT).expect("tc limit"),
            Ask::Lift => net.lift().expect("tc lift"),
        }
        let _ = done_tx.send(());
    }
    match client.join() {
        Ok(report) => eprintln!("[bandwidth] {report}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
    drop(server);
}
