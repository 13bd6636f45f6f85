//! The `livestream` scenario: 1 anchor publishing 720p H.264 (~1.5 Mbit/s) + Opus, replayed
//! from a clip encoded once, to N audience members who decrypt and count without decoding.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use rtcroom_pipelines::{
    AudioTrackConfig, LocalConfig, LocalPipeline, MediaKind, SourceKind, VideoProfile,
    VideoTrackConfig,
};
use rtcroom_protocol::signal::{
    ClientEnvelope, ClientMessage, JoinRequest, PublishRequest, ReplyData, ReplyResult,
    ServerMessage, StreamType, SubscribeRequest, decode_server, encode,
};
use rtcroom_protocol::{Mode, Role, UserId};
use serde_json::json;
use str0m::media::Direction;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::light::{self, LightPeer, PubStats, Recorded, SubStats};
use super::{CommonArgs, Target, percentiles, write_json};

/// Largest audience one run may use.
pub const MAX_SUBSCRIBERS: usize = 2000;
/// Length of the pre-encoded clip that is replayed in a loop.
const CLIP: Duration = Duration::from_secs(6);

/// Encode the clip once: 720p30 H.264 at 1.5 Mbit/s + Opus, as fast as the CPU allows.
fn pre_encode() -> anyhow::Result<(Vec<Recorded>, Duration)> {
    rtcroom_pipelines::preload()?;
    let mut cfg = LocalConfig::new(SourceKind::TestPattern {
        duration: Some(CLIP),
    });
    cfg.video = Some(VideoTrackConfig {
        profile: VideoProfile::new(1280, 720, 30, 1500),
        ..Default::default()
    });
    cfg.audio = Some(AudioTrackConfig::default());
    cfg.realtime = false;
    let (local, mut out) = LocalPipeline::start(cfg)?;
    let mut packets = Vec::new();
    // Collect until the finite source reaches its end (EOS), bounded in time.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        while let Ok(p) = out.rtp.try_recv() {
            packets.push(p);
        }
        match out.events.try_recv() {
            Ok(rtcroom_pipelines::PipelineEvent::Eos) => break,
            Ok(rtcroom_pipelines::PipelineEvent::Error(e)) => return Err(e.into()),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("encoding the clip took over 120 s");
        }
        std::thread::park_timeout(Duration::from_millis(5));
    }
    while let Ok(p) = out.rtp.try_recv() {
        packets.push(p);
    }
    local.stop()?;
    let mut first: [Option<u32>; 2] = [None, None];
    let mut clip = Vec::with_capacity(packets.len());
    for p in &packets {
        let Some((_, _, ts, marker, payload)) = light::parse_rtp(&p.data) else {
            continue;
        };
        let video = p.kind() == MediaKind::Video;
        let rate = if video { 90_000.0 } else { 48_000.0 };
        let base = *first[usize::from(video)].get_or_insert(ts);
        let rel = ts.wrapping_sub(base);
        clip.push(Recorded {
            video,
            at: Duration::from_secs_f64(f64::from(rel) / rate),
            ts: rel,
            marker,
            payload: payload.into(),
        });
    }
    clip.sort_by_key(|r| r.at);
    if clip.is_empty() {
        bail!("the encoder produced no packets");
    }
    Ok((clip, CLIP))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal signalling client: requests and their replies; events are skipped.
struct Signal {
    ws: Ws,
    next_id: u64,
}

impl Signal {
    async fn connect(url: &str) -> anyhow::Result<Signal> {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .context("connect timeout")??;
        Ok(Signal { ws, next_id: 1 })
    }

    async fn request(&mut self, msg: ClientMessage) -> anyhow::Result<Option<ReplyData>> {
        let id = self.next_id;
        self.next_id += 1;
        self.ws
            .send(Message::text(encode(&ClientEnvelope::new(id, msg))))
            .await?;
        let reply = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(Ok(m)) = self.ws.next().await {
                if let Message::Text(t) = m
                    && let Ok(ServerMessage::Reply(r)) = decode_server(t.as_bytes())
                    && r.id == id
                {
                    return Some(r);
                }
            }
            None
        })
        .await
        .context("reply timeout")?
        .context("connection closed")?;
        match reply.result {
            ReplyResult::Ok { data } => Ok(data),
            ReplyResult::Err { error } => Err(anyhow::anyhow!("{error}")),
        }
    }

    /// Keep the socket drained (events) and alive (heartbeats) until `stop` flips.
    async fn idle(mut self, mut stop: watch::Receiver<bool>) {
        let mut beat = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                m = self.ws.next() => if m.is_none() { return },
                _ = beat.tick() => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let _ = self.ws.send(Message::text(encode(&ClientEnvelope::new(id, ClientMessage::Heartbeat)))).await;
                }
                _ = stop.changed() => {
                    let _ = self.ws.send(Message::text(encode(&ClientEnvelope::new(0, ClientMessage::Leave)))).await;
                    return;
                }
            }
        }
    }
}

fn join(target: &Target, user: &str, room: &str, role: Role) -> anyhow::Result<JoinRequest> {
    let mut j = target.join_request(user, room, Mode::Live)?;
    j.role = Some(role);
    Ok(j)
}

fn answer(r: Option<ReplyData>) -> anyhow::Result<String> {
    match r {
        Some(ReplyData::Answer { sdp }) => Ok(sdp),
        other => bail!("expected an SDP answer, got {other:?}"),
    }
}

/// Read `rtcroom_media_packets_out_total` from the server's /metrics.
async fn packets_forwarded(ws_url: &str) -> Option<u64> {
    let host = ws_url.strip_prefix("ws://")?.split('/').next()?.to_owned();
    let mut s = tokio::net::TcpStream::connect(&host).await.ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("rtcroom_media_packets_out_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// Run the scenario.
pub async fn livestream(subscribers: usize, rate: f64, common: CommonArgs) -> anyhow::Result<()> {
    if subscribers == 0 || subscribers > MAX_SUBSCRIBERS {
        bail!("--subscribers must be between 1 and {MAX_SUBSCRIBERS}");
    }
    if !(common.duration.is_finite() && (1.0..=600.0).contains(&common.duration)) {
        bail!("--duration must be between 1 and 600 seconds");
    }
    let rate = if rate > 0.0 { rate } else { 100.0 };
    eprintln!("livestream: encoding the 720p clip once...");
    let (clip, clip_len) = tokio::task::spawn_blocking(pre_encode).await??;
    let clip_video = clip.iter().filter(|r| r.video).count();
    let target = Target::new(&common).await?;
    let room = format!("{}", 1 + (std::process::id() % 1_000_000));
    let (stop_tx, stop_rx) = watch::channel(false);

    // The anchor.
    let mut anchor = Signal::connect(&target.url).await?;
    anchor
        .request(ClientMessage::Join(join(
            &target,
            "anchor",
            &room,
            Role::Anchor,
        )?))
        .await?;
    let (mut peer, offer) = LightPeer::new(Direction::SendOnly).await?;
    let reply = anchor
        .request(ClientMessage::Publish(PublishRequest {
            stream_type: StreamType::Main,
            has_audio: true,
            has_video: true,
            sdp: Some(offer),
        }))
        .await?;
    peer.accept_answer(&answer(reply)?)?;
    let pub_stats = Arc::new(PubStats::default());
    let publisher = tokio::spawn(light::run_publisher(
        peer,
        Arc::new(clip),
        clip_len,
        pub_stats.clone(),
        stop_rx.clone(),
    ));
    let mut tasks = vec![tokio::spawn(anchor.idle(stop_rx.clone()))];
    let base = target.stat();

    // The audience.
    let started = Instant::now();
    let mut subs = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        tokio::time::sleep_until(
            tokio::time::Instant::from_std(started) + Duration::from_secs_f64(i as f64 / rate),
        )
        .await;
        let mut sig = Signal::connect(&target.url).await?;
        sig.request(ClientMessage::Join(join(
            &target,
            &format!("viewer-{i}"),
            &room,
            Role::Audience,
        )?))
        .await?;
        let (mut peer, offer) = LightPeer::new(Direction::RecvOnly).await?;
        let t0 = Instant::now();
        let reply = sig
            .request(ClientMessage::Subscribe(SubscribeRequest {
                user_id: UserId::new("anchor").map_err(|e| anyhow::anyhow!(e.message))?,
                stream_type: StreamType::Main,
                audio: true,
                video: true,
                sdp: Some(offer),
            }))
            .await?;
        peer.accept_answer(&answer(reply)?)?;
        let stats = Arc::new(SubStats::default());
        tasks.push(tokio::spawn(light::run_subscriber(
            peer,
            t0,
            stats.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(sig.idle(stop_rx.clone())));
        subs.push(stats);
        if i % 20 == 0 {
            eprint!("\rlivestream: {}/{subscribers} subscribed", i + 1);
        }
    }
    eprintln!("\rlivestream: {subscribers}/{subscribers} subscribed, warming up");
    // Warm up until every subscriber has video (first keyframe), bounded.
    let warm_deadline = Instant::now() + Duration::from_secs(15);
    while subs
        .iter()
        .any(|s| s.first_video_us.load(Ordering::Relaxed) == 0)
        && Instant::now() < warm_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The measured window.
    let w_start = Instant::now();
    let cpu0 = target.stat();
    let fwd0 = packets_forwarded(&target.url).await;
    let sent0 = pub_stats.packets.load(Ordering::Relaxed);
    let recv0: u64 = subs.iter().map(|s| s.packets.load(Ordering::Relaxed)).sum();
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    while w_start.elapsed() < Duration::from_secs_f64(common.duration) {
        progress.tick().await;
        let recv: u64 = subs.iter().map(|s| s.packets.load(Ordering::Relaxed)).sum();
        eprint!(
            "\rlivestream: {:.0} s, {} packets sent, {} received   ",
            w_start.elapsed().as_secs_f64(),
            pub_stats.packets.load(Ordering::Relaxed) - sent0,
            recv - recv0
        );
    }
    eprintln!();
    let window = w_start.elapsed();
    let cpu1 = target.stat();
    let fwd1 = packets_forwarded(&target.url).await;
    let sent = pub_stats.packets.load(Ordering::Relaxed) - sent0;
    let recv: u64 = subs
        .iter()
        .map(|s| s.packets.load(Ordering::Relaxed))
        .sum::<u64>()
        - recv0;
    let _ = stop_tx.send(true);
    match publisher.await {
        Ok(Err(e)) => eprintln!("publisher: {e:#}"),
        Err(e) => eprintln!("publisher task: {e}"),
        Ok(Ok(())) => {}
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let lost: u64 = subs.iter().map(|s| s.lost.load(Ordering::Relaxed)).sum();
    let received_total: u64 = subs.iter().map(|s| s.packets.load(Ordering::Relaxed)).sum();
    let freezes: u64 = subs.iter().map(|s| s.freezes.load(Ordering::Relaxed)).sum();
    let first_packet: Vec<f64> = subs
        .iter()
        .map(|s| s.first_video_us.load(Ordering::Relaxed))
        .filter(|v| *v > 0)
        .map(|v| v as f64 / 1000.0)
        .collect();
    let first_frame: Vec<f64> = subs
        .iter()
        .map(|s| s.first_keyframe_us.load(Ordering::Relaxed))
        .filter(|v| *v > 0)
        .map(|v| v as f64 / 1000.0)
        .collect();
    let expected = sent * subscribers as u64;
    let window_loss = if expected > 0 {
        100.0 * (expected.saturating_sub(recv)) as f64 / expected as f64
    } else {
        0.0
    };
    let seq_loss = if received_total + lost > 0 {
        100.0 * lost as f64 / (received_total + lost) as f64
    } else {
        0.0
    };
    let forwarded = match (fwd0, fwd1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let cpu_s = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
        _ => None,
    };
    let per_packet_us = match (cpu_s, forwarded) {
        (Some(c), Some(f)) if f > 0 => Some(c * 1e6 / f as f64),
        _ => None,
    };
    let mem_per_sub = match (base, cpu1) {
        (Some(b), Some(a)) => Some((a.rss_bytes as f64 - b.rss_bytes as f64) / subscribers as f64),
        _ => None,
    };
    let report = json!({
        "scenario": "livestream",
        "clients": subscribers + 1,
        "publishers": 1,
        "subscribers": subscribers,
        "duration_s": window.as_secs_f64(),
        "join_ms": null,
        "first_frame_ms": percentiles(&first_frame),
        "first_video_packet_ms": percentiles(&first_packet),
        "join_failures": 0,
        "packets_sent": sent,
        "packets_received": recv,
        "loss_pct": window_loss.max(seq_loss),
        "loss_pct_window": window_loss,
        "loss_pct_sequence": seq_loss,
        "freezes": freezes,
        "clip_video_packets": clip_video,
        "server_cpu_pct": cpu_s.map(|c| 100.0 * c / window.as_secs_f64()),
        "server_cpu_us_per_packet": per_packet_us,
        "server_rss_bytes": cpu1.map(|c| c.rss_bytes),
        "server_rss_bytes_per_subscriber": mem_per_sub,
        "server_packets_forwarded": forwarded,
        "server": if target.child.is_some() { "embedded (child process)" } else { target.url.as_str() },
    });
    let f = |v: &serde_json::Value| {
        v.as_f64()
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    println!("scenario              livestream (1 anchor → {subscribers} audience)");
    println!("window                {:.1} s", window.as_secs_f64());
    println!(
        "packets sent          {sent} ({:.0}/s)",
        sent as f64 / window.as_secs_f64()
    );
    println!("packets received      {recv} (expected {expected})");
    println!("loss                  {}%", f(&report["loss_pct"]));
    println!("freezes (>500 ms)     {freezes}");
    println!(
        "first video packet    {} ms",
        super::fmt_p(&report["first_video_packet_ms"])
    );
    println!(
        "first keyframe        {} ms (the clip is replayed as encoded: keyframes every 2 s)",
        super::fmt_p(&report["first_frame_ms"])
    );
    println!(
        "server CPU            {}% of a core",
        f(&report["server_cpu_pct"])
    );
    println!(
        "server CPU/packet     {} µs per forwarded packet",
        f(&report["server_cpu_us_per_packet"])
    );
    if let Some(m) = mem_per_sub {
        println!("server memory         {:.1} KB per subscriber", m / 1e3);
    }
    if let Some(path) = &common.json {
        write_json(path, &report)?;
    }
    Ok(())
}
