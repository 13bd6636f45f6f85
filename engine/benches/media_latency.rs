//! Media latency on loopback: join → publish connected, and subscribe → first decoded frame.
//!
//! Run: `cargo bench -p rtcroom --bench media_latency` (optionally
//! `-- <runs> <jitter_latency_ms>`, default 15 runs and 20 ms).
//! One rtcroom server (SFU) in the same process; per run a fresh room, a publisher client
//! and a subscriber client. The publisher's stream (test pattern + tone, H.264 320×240 @
//! 30 fps, Opus) is created before the clock starts.
//!
//! - `join → publish connected`: `join().await` + `publish().await` (WebSocket connect,
//!   join, offer with gathered candidates, publish request, answer, ICE + DTLS connected).
//! - `subscribe → first decoded frame`: from calling `subscribe()` (the subscriber is
//!   already joined and has seen `stream-added`) to the first decoded video frame handed to
//!   the application's frame callback (offer/answer, ICE + DTLS, PLI → keyframe from the
//!   publisher's encoder, SFU forwarding, jitter buffer, H.264 decode), for a stream whose
//!   media has been flowing for a second (a subscriber joining a call in progress).
//! - the same `at stream-added`: a first subscriber subscribing the moment the stream is
//!   announced (auto-subscribe), while the publisher's fresh pipeline is still starting: its
//!   first frame waits for the publisher's first one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtcroom::{
    ClientConfig, ClientEvent, DecodedFrame, FrameInfo, JoinOptions, Mode, StreamConfig,
    SubscribeOptions, SubscribeOutput, VideoProfile, create_client, create_stream,
};
use rtcroom_protocol::usersig::gen_user_sig;
use rtcroom_server::{RunningServer, ServerConfig};
use tokio::sync::oneshot;

const APP: u32 = 1_400_000_000;
const KEY: &str = "bench-key";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn client(url: &str, user: &str) -> anyhow::Result<rtcroom::Client> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let sig = gen_user_sig(u64::from(APP), KEY, user, 86_400, now);
    Ok(create_client(
        ClientConfig::new(Mode::Rtc, APP, user, sig)
            .with_server_url(url)
            .with_auto_subscribe(false),
    )?)
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: n={} p50={:.1} ms p90={:.1} ms min={:.1} ms max={:.1} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.9)),
        ms(v[0]),
        ms(v[v.len() - 1]),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(15);
    let jitter_latency =
        Duration::from_millis(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20));
    println!("runs={runs} jitter_latency={jitter_latency:?}");
    let mut config = ServerConfig::single_app("127.0.0.1:0", APP, KEY);
    config.workers = Some(1);
    let server = RunningServer::spawn(config)?;
    let url = server.ws_url();
    let mut publish = Vec::new();
    let mut first_frame = Vec::new();
    let mut subscribe_call = Vec::new();
    let mut first_frame_early = Vec::new();
    let mut subscribe_early = Vec::new();
    for run in 0..runs {
        let room = 5000 + run as u32;
        let stream = create_stream(
            StreamConfig::default().with_video_profile(VideoProfile::new(320, 240, 30, 400)),
        )
        .await?;
        let publisher = client(&url, &format!("pub{run}"))?;
        let t0 = Instant::now();
        publisher.join(JoinOptions::new(room)).await?;
        publisher.publish(&stream).await?;
        publish.push(t0.elapsed());

        let subscriber = client(&url, &format!("sub{run}"))?;
        let mut events = subscriber.events();
        subscriber.join(JoinOptions::new(room)).await?;
        let remote = loop {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(ClientEvent::StreamAdded(s))) => break s,
                Ok(Some(_)) => {}
                _ => anyhow::bail!("no stream-added"),
            }
        };
        // At once: the publisher's media has only just started.
        let (resolved, first) = subscribe(&subscriber, &remote, jitter_latency).await?;
        subscribe_early.push(resolved);
        first_frame_early.push(first);
        subscriber.leave().await?;

        // Once its media flows (1 s of frames encoded): subscribing to a stream in progress.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while stream.get_local_video_stats().frames_encoded < 30 {
            anyhow::ensure!(Instant::now() < deadline, "the publisher sends no video");
            tick.tick().await;
        }
        let late = client(&url, &format!("late{run}"))?;
        late.join(JoinOptions::new(room)).await?;
        let (resolved, first) = subscribe(&late, &remote, jitter_latency).await?;
        subscribe_call.push(resolved);
        first_frame.push(first);
        late.leave().await?;
        publisher.leave().await?;
        stream.close().await?;
    }
    report("join -> publish connected", publish);
    report("subscribe() resolved (downlink connected)", subscribe_call);
    report("subscribe -> first decoded video frame", first_frame);
    report("at stream-added: subscribe() resolved", subscribe_early);
    report(
        "at stream-added: subscribe -> first decoded video frame",
        first_frame_early,
    );
    Ok(())
}

/// Subscribe `client` to `remote` into a frame callback: how long `subscribe()` took, and
/// how long until the first decoded video frame.
async fn subscribe(
    client: &rtcroom::Client,
    remote: &rtcroom::RemoteStream,
    jitter_latency: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let (tx, rx) = oneshot::channel::<Instant>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let output = SubscribeOutput::Frames(Arc::new(move |_, _, f: DecodedFrame| {
        if matches!(f.info, FrameInfo::Video { .. })
            && let Some(tx) = tx.lock().ok().and_then(|mut t| t.take())
        {
            let _ = tx.send(Instant::now());
        }
    }));
    let t1 = Instant::now();
    client
        .subscribe(
            remote,
            SubscribeOptions::new(output).with_jitter_latency(jitter_latency),
        )
        .await?;
    let resolved = t1.elapsed();
    let first = tokio::time::timeout(Duration::from_secs(10), rx).await??;
    Ok((resolved, first - t1))
}
