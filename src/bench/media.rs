//! The `livestream` scenario: 1 anchor publishing 720p H.264 (~1.5 Mbit/s) + Opus, replayed
//! from a clip encoded once, to N audience members who decrypt and count without decoding.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use rtcroom_pipelines::{
    AudioTrackConfig, LocalConfig, LocalPipeline, MediaKind, SourceKind, VideoProfile,
    VideoTrackConfig,
};
use rtcroom_protocol::signal::{
    ClientEnvelope, ClientMessage, JoinRequest, PublishRequest, ReplyData, ReplyResult,
    ServerMessage, StreamType, SubscribeRequest, VideoLayer, VideoStreamType, decode_server,
    encode,
};
use rtcroom_protocol::{Mode, Role, UserId};
use serde_json::json;
use str0m::media::Direction;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::html::{SIDE_BY_SIDE, figure, ratio_name};
use super::janus;
use super::light::{self, LightPeer, PubStats, Recorded, SubStats};
use super::{CommonArgs, ServerKind, Target, TargetChoice, percentiles};

/// Largest audience one run may use.
pub const MAX_SUBSCRIBERS: usize = 2000;
/// Length of the pre-encoded clip that is replayed in a loop.
const CLIP: Duration = Duration::from_secs(6);

/// Encode the clip once: 720p30 H.264 at 1.5 Mbit/s + Opus, as fast as the CPU allows. The
/// Opus encoder expects `expected_loss_pct` loss, as the engine's does once receiver reports
/// say so: its in-band FEC carries data in proportion.
pub(super) fn pre_encode(expected_loss_pct: u8) -> anyhow::Result<(Vec<Recorded>, Duration)> {
    pre_encode_at(expected_loss_pct, BIG)
}

/// The big layer (and the only one without simulcast).
const BIG: VideoProfile = VideoProfile::new(1280, 720, 30, 1500);
/// The small layer of `meeting --simulcast`.
const SMALL: VideoProfile = VideoProfile::new(320, 180, 30, 300);

/// [`pre_encode`] at `profile`.
fn pre_encode_at(
    expected_loss_pct: u8,
    profile: VideoProfile,
) -> anyhow::Result<(Vec<Recorded>, Duration)> {
    rtcroom_pipelines::preload()?;
    let mut cfg = LocalConfig::new(SourceKind::TestPattern {
        duration: Some(CLIP),
    });
    cfg.video = Some(VideoTrackConfig {
        profile,
        ..Default::default()
    });
    cfg.audio = Some(AudioTrackConfig {
        expected_loss_pct,
        ..Default::default()
    });
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
            key: false,
            payload: payload.into(),
        });
    }
    mark_keyframes(&mut clip);
    pace(&mut clip, PACING_BITS_PER_S);
    clip.sort_by_key(|r| r.at);
    if clip.is_empty() {
        bail!("the encoder produced no packets");
    }
    Ok((clip, CLIP))
}

/// Mark the first packet of every video frame (packets of one RTP timestamp) that holds
/// an IDR or SPS: where a replay may jump when asked for a keyframe.
fn mark_keyframes(clip: &mut [Recorded]) {
    let video: Vec<usize> = (0..clip.len()).filter(|&i| clip[i].video).collect();
    let mut start = 0;
    while start < video.len() {
        let ts = clip[video[start]].ts;
        let end = (start..video.len())
            .find(|&k| clip[video[k]].ts != ts)
            .unwrap_or(video.len());
        if video[start..end]
            .iter()
            .any(|&i| light::is_h264_keyframe(&clip[i].payload))
        {
            clip[video[start]].key = true;
        }
        start = end;
    }
}

/// Sizes in bytes of the clip's keyframes (all packets of each keyframe's frame).
fn keyframe_sizes(clip: &[Recorded]) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut current: Option<(u32, usize)> = None;
    for r in clip.iter().filter(|r| r.video) {
        match &mut current {
            Some((ts, n)) if *ts == r.ts => *n += r.payload.len(),
            _ => {
                if let Some((_, n)) = current.take() {
                    sizes.push(n);
                }
                if r.key {
                    current = Some((r.ts, r.payload.len()));
                }
            }
        }
    }
    sizes.extend(current.map(|(_, n)| n));
    sizes
}

/// The clip's video (1.5 Mbit/s) is sent at most 2.5 times as fast, as libwebrtc's paced
/// sender does: a keyframe's packets leave over a few hundred milliseconds instead of in one
/// burst (which no browser sends, and which overruns a receiver's NACK window).
const PACING_BITS_PER_S: f64 = 2.5 * 1_500_000.0;

/// Spread the video packets so that none leaves before the previous one's bits have left at
/// `bits_per_s` (a leaky bucket; packets keep their order and RTP timestamps; a packet never
/// leaves before its frame's time).
fn pace(clip: &mut [Recorded], bits_per_s: f64) {
    let mut free_at = Duration::ZERO;
    for r in clip.iter_mut().filter(|r| r.video) {
        r.at = r.at.max(free_at);
        free_at = r.at + Duration::from_secs_f64(r.payload.len() as f64 * 8.0 / bits_per_s);
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal signalling client: requests and their replies; events are skipped.
pub(super) struct Signal {
    ws: Ws,
    next_id: u64,
}

impl Signal {
    pub(super) async fn connect(url: &str) -> anyhow::Result<Signal> {
        let ws = tokio::time::timeout(Duration::from_secs(10), super::ws_connect(url))
            .await
            .context("connect timeout")??;
        Ok(Signal { ws, next_id: 1 })
    }

    pub(super) async fn request(
        &mut self,
        msg: ClientMessage,
    ) -> anyhow::Result<Option<ReplyData>> {
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

    /// Publish the main stream (audio, and video when `video`) from a new light peer; returns
    /// the peer with the server's answer applied.
    pub(super) async fn publish_light(
        &mut self,
        target: &Target,
        video: bool,
    ) -> anyhow::Result<LightPeer> {
        self.publish_light_with(target, video, &[]).await
    }

    /// Publish the main stream with two video layers (rids `h`: [`BIG`], `l`: [`SMALL`]).
    async fn publish_light_layers(&mut self, target: &Target) -> anyhow::Result<LightPeer> {
        self.publish_light_with(target, true, &[("h", BIG), ("l", SMALL)])
            .await
    }

    /// Publish the main stream with a new light peer sending `layers` (rid, profile) of its
    /// video, or one layer when there are none.
    async fn publish_light_with(
        &mut self,
        target: &Target,
        video: bool,
        layers: &[(&str, VideoProfile)],
    ) -> anyhow::Result<LightPeer> {
        let rids: Vec<&str> = layers.iter().map(|(rid, _)| *rid).collect();
        let (peer, offer) =
            LightPeer::with_layers(Direction::SendOnly, video, &rids, target.client_ip).await?;
        let reply = self
            .request(ClientMessage::Publish(PublishRequest {
                stream_type: StreamType::Main,
                has_audio: true,
                has_video: video,
                sdp: Some(offer),
                layers: layers
                    .iter()
                    .map(|(rid, p)| VideoLayer {
                        rid: (*rid).into(),
                        width: p.width,
                        height: p.height,
                        bitrate_kbps: p.bitrate_kbps,
                    })
                    .collect(),
            }))
            .await?;
        accept(target, peer, reply).await
    }

    /// Subscribe to `publisher`'s main stream with a new light peer; returns the peer with
    /// the answer applied, and when the request was sent (first-media times count from it).
    pub(super) async fn subscribe_light(
        &mut self,
        target: &Target,
        publisher: &str,
        video: bool,
        video_type: Option<VideoStreamType>,
    ) -> anyhow::Result<(LightPeer, Instant)> {
        let (peer, offer) = LightPeer::new(Direction::RecvOnly, video, target.client_ip).await?;
        let sent = Instant::now();
        let reply = self
            .request(ClientMessage::Subscribe(SubscribeRequest {
                user_id: UserId::new(publisher).map_err(|e| anyhow::anyhow!(e.message))?,
                stream_type: StreamType::Main,
                audio: true,
                video,
                sdp: Some(offer),
                video_type,
            }))
            .await?;
        Ok((accept(target, peer, reply).await?, sent))
    }

    /// Leave the room and close the connection (bounded).
    pub(super) async fn leave(mut self) {
        let bye = Message::text(encode(&ClientEnvelope::new(0, ClientMessage::Leave)));
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.ws.send(bye).await;
            let _ = self.ws.close(None).await;
        })
        .await;
    }

    /// Keep the socket drained (events) and alive (heartbeats) until `stop` flips, sending
    /// the requests `cmds` brings (replies not waited for).
    async fn idle_with(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut cmds: tokio::sync::mpsc::UnboundedReceiver<ClientMessage>,
    ) {
        let mut beat = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                m = self.ws.next() => if m.is_none() { return },
                Some(c) = cmds.recv() => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let _ = self.ws.send(Message::text(encode(&ClientEnvelope::new(id, c)))).await;
                }
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

pub(super) fn join(
    target: &Target,
    user: &str,
    room: &str,
    role: Role,
) -> anyhow::Result<JoinRequest> {
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

/// Apply the server's answer in `reply` to `peer`, after starting the delaying relays for
/// the ports it names (with --delay-ms/--jitter-ms).
async fn accept(
    target: &Target,
    mut peer: LightPeer,
    reply: Option<ReplyData>,
) -> anyhow::Result<LightPeer> {
    let sdp = answer(reply)?;
    if let Some(r) = &target.relays {
        r.cover(&sdp).await?;
    }
    peer.accept_answer(&sdp)?;
    Ok(peer)
}

/// Read a counter from the server's /metrics.
async fn server_counter(ws_url: &str, name: &str) -> Option<u64> {
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
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A counter of rtcroom's /metrics (Janus has none: `None`).
async fn counter(target: &Target, name: &str) -> Option<u64> {
    match target.kind {
        ServerKind::Rtcroom => server_counter(&target.url, name).await,
        ServerKind::Janus => None,
    }
}

/// A Janus room id from the bench's numeric room name.
fn janus_room(room: &str) -> anyhow::Result<u64> {
    room.parse()
        .with_context(|| format!("room {room} is not numeric"))
}

/// Who a member is: the `p`th publisher or the `i`th viewer (names and Janus ids from it).
#[derive(Clone, Copy, Debug)]
enum Who {
    Publisher(usize),
    Viewer(usize),
}

impl Who {
    fn user_id(self) -> String {
        match self {
            Who::Publisher(p) => format!("anchor-{p}"),
            Who::Viewer(i) => format!("viewer-{i}"),
        }
    }

    /// The participant id in a Janus room (publishers 1..; viewers from 1,000,000).
    fn janus_id(self) -> u64 {
        match self {
            Who::Publisher(p) => p as u64 + 1,
            Who::Viewer(i) => 1_000_000 + i as u64,
        }
    }
}

/// A room member's signalling with the server under test.
enum Member {
    Rtcroom(Signal),
    /// A Janus session and its VideoRoom participant handle.
    Janus(janus::Session, u64),
}

impl Member {
    /// Connect and join `room`; returns the member and the join's round trip in ms (the join
    /// request alone, not the connection: TRTC's join, Janus's VideoRoom `join`).
    async fn join(
        target: &Target,
        url: &str,
        room: &str,
        who: Who,
        role: Role,
    ) -> anyhow::Result<(Member, f64)> {
        let user = who.user_id();
        match target.kind {
            ServerKind::Rtcroom => {
                let mut sig = Signal::connect(url).await?;
                let request = ClientMessage::Join(join(target, &user, room, role)?);
                let t = Instant::now();
                sig.request(request).await?;
                Ok((Member::Rtcroom(sig), t.elapsed().as_secs_f64() * 1e3))
            }
            ServerKind::Janus => {
                let mut session = janus::Session::open(&target.url).await?;
                let t = Instant::now();
                let handle = session
                    .join(janus_room(room)?, who.janus_id(), &user)
                    .await?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                Ok((Member::Janus(session, handle), ms))
            }
        }
    }

    /// Publish the main stream from a new light peer; returns it with the answer applied.
    async fn publish(
        &mut self,
        target: &Target,
        video: bool,
        simulcast: bool,
    ) -> anyhow::Result<LightPeer> {
        match self {
            Member::Rtcroom(sig) if simulcast => sig.publish_light_layers(target).await,
            Member::Rtcroom(sig) => sig.publish_light(target, video).await,
            Member::Janus(session, handle) => {
                let (mut peer, offer) =
                    LightPeer::new(Direction::SendOnly, video, target.client_ip).await?;
                let answer = session.publish(*handle, offer).await?;
                peer.accept_answer(&answer)?;
                Ok(peer)
            }
        }
    }

    /// Subscribe to the `p`th publisher with a new light peer; returns it and when the
    /// request was sent.
    async fn subscribe(
        &mut self,
        target: &Target,
        room: &str,
        p: usize,
        video: bool,
        video_type: Option<VideoStreamType>,
    ) -> anyhow::Result<(LightPeer, Instant)> {
        let publisher = Who::Publisher(p);
        match self {
            Member::Rtcroom(sig) => {
                sig.subscribe_light(target, &publisher.user_id(), video, video_type)
                    .await
            }
            Member::Janus(session, _) => {
                // Timed from the request, once the room has announced the feed (rtcroom
                // accepts a subscription before the publisher's media is up; Janus does not).
                session.wait_for_feed(publisher.janus_id()).await?;
                let sent = Instant::now();
                let peer = session
                    .subscribe(janus_room(room)?, publisher.janus_id(), target.client_ip)
                    .await?;
                Ok((peer, sent))
            }
        }
    }

    /// Keep the signalling alive until `stop` flips, sending the requests `cmds` brings
    /// (rtcroom; their replies are not waited for).
    async fn idle(
        self,
        stop: watch::Receiver<bool>,
        cmds: tokio::sync::mpsc::UnboundedReceiver<ClientMessage>,
    ) {
        match self {
            Member::Rtcroom(sig) => sig.idle_with(stop, cmds).await,
            Member::Janus(session, _) => session.idle(stop).await,
        }
    }
}

/// The shape of a media run.
#[derive(Clone, Copy, Debug)]
pub struct MediaSpec {
    /// Scenario name in the report.
    pub scenario: &'static str,
    /// Room mode.
    pub mode: Mode,
    /// Publishing clients.
    pub publishers: usize,
    /// Subscribing clients (each subscribes to every publisher).
    pub subscribers: usize,
    /// Publish audio only.
    pub audio_only: bool,
    /// Subscribers started per second.
    pub rate: f64,
    /// Publishers send a big and a small layer; subscribers alternate between them.
    pub simulcast: bool,
    /// Embedded nodes (more than 1: a cluster; the audience goes to each in turn).
    pub nodes: usize,
}

/// `livestream --subscribers N`: 1 anchor (720p + Opus) → N audience, live mode.
pub async fn livestream(
    subscribers: usize,
    nodes: usize,
    rate: f64,
    target: TargetChoice,
    common: CommonArgs,
) -> anyhow::Result<()> {
    run(
        MediaSpec {
            scenario: if nodes > 1 {
                "livestream-nodes"
            } else {
                "livestream"
            },
            mode: Mode::Live,
            publishers: 1,
            subscribers,
            audio_only: false,
            rate,
            simulcast: false,
            nodes,
        },
        target,
        common,
    )
    .await
}

/// `meeting --publishers P --subscribers S`: P publishers (720p + Opus) × S subscribers, rtc.
pub async fn meeting(
    publishers: usize,
    subscribers: usize,
    rate: f64,
    target: TargetChoice,
    simulcast: bool,
    common: CommonArgs,
) -> anyhow::Result<()> {
    run(
        MediaSpec {
            scenario: if simulcast {
                "meeting-simulcast"
            } else {
                "meeting"
            },
            mode: Mode::Rtc,
            publishers,
            subscribers,
            audio_only: false,
            rate,
            simulcast,
            nodes: 1,
        },
        target,
        common,
    )
    .await
}

/// `audio-room --publishers P --subscribers N`: P audio-only publishers → N listeners, live.
pub async fn audio_room(
    publishers: usize,
    subscribers: usize,
    rate: f64,
    target: TargetChoice,
    common: CommonArgs,
) -> anyhow::Result<()> {
    run(
        MediaSpec {
            scenario: "audio-room",
            mode: Mode::Live,
            publishers,
            subscribers,
            audio_only: true,
            rate,
            simulcast: false,
            nodes: 1,
        },
        target,
        common,
    )
    .await
}

/// Most subscribers asked to switch layers in one simulcast run (one after another).
const MAX_SWITCH_SAMPLES: usize = 40;

/// After the measured window, how long the subscribers wait for the repair of what was lost
/// just before its end (plus three round trips through the delaying relays, if any).
const REPAIR_TIME: Duration = Duration::from_millis(500);

/// Most publishers one run may use (TRTC allows 50 at once).
pub const MAX_PUBLISHERS: usize = 50;
/// Most subscriptions (subscribers × publishers) one run may open.
pub const MAX_SUBSCRIPTIONS: usize = 2000;

async fn run(spec: MediaSpec, choice: TargetChoice, common: CommonArgs) -> anyhow::Result<()> {
    let (publishers, subscribers) = (spec.publishers, spec.subscribers);
    if publishers == 0 || publishers > MAX_PUBLISHERS {
        bail!("--publishers must be between 1 and {MAX_PUBLISHERS}");
    }
    if subscribers == 0 || subscribers > MAX_SUBSCRIBERS {
        bail!("--subscribers must be between 1 and {MAX_SUBSCRIBERS}");
    }
    if publishers * subscribers > MAX_SUBSCRIPTIONS {
        bail!("publishers × subscribers must be at most {MAX_SUBSCRIPTIONS} subscriptions");
    }
    if spec.mode == Mode::Rtc && publishers + subscribers > 300 {
        bail!("an rtc room holds at most 300 members: publishers + subscribers ≤ 300");
    }
    if !(common.duration.is_finite() && (1.0..=600.0).contains(&common.duration)) {
        bail!("--duration must be between 1 and 600 seconds");
    }
    eprintln!("{}: encoding the clip once...", spec.scenario);
    // What the engine's Opus encoder settles on when the server reports this uplink loss
    // (twice it, for the subscriber's leg).
    let fraction_lost = (common.loss.unwrap_or(0.0) * 2.56)
        .round()
        .clamp(0.0, 255.0) as u8;
    let expected_loss = rtcroom_actors::media::local::next_expected_loss(0, fraction_lost);
    let (mut clip, clip_len) =
        tokio::task::spawn_blocking(move || pre_encode(expected_loss)).await??;
    if spec.audio_only {
        clip.retain(|r| !r.video);
    }
    let clip = Arc::new(clip);
    let small = if spec.simulcast {
        if choice != TargetChoice::Rtcroom {
            bail!("--simulcast measures rtcroom only (the Janus scenario has no simulcast)");
        }
        eprintln!("{}: encoding the small layer's clip...", spec.scenario);
        let (small, _) =
            tokio::task::spawn_blocking(move || pre_encode_at(expected_loss, SMALL)).await??;
        Some(Arc::new(small))
    } else {
        None
    };
    let kinds: &[ServerKind] = match choice {
        TargetChoice::Rtcroom => &[ServerKind::Rtcroom],
        TargetChoice::Janus => &[ServerKind::Janus],
        TargetChoice::Both => &[ServerKind::Rtcroom, ServerKind::Janus],
    };
    let mut reports = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        reports.push(
            measure(
                &spec,
                &common,
                &clip,
                small.as_ref(),
                clip_len,
                expected_loss,
                kind,
            )
            .await?,
        );
    }
    let report = match reports.as_slice() {
        [ours, janus] => {
            let both = compare(ours, janus);
            print_comparison(&both);
            both
        }
        _ => reports.pop().context("no report")?,
    };
    super::write_reports(&common, &report)?;
    for r in [&report, &report["rtcroom"], &report["janus"]] {
        if r["packets_received"].as_u64() == Some(0) {
            bail!(
                "no media reached the subscribers ({})",
                r["target"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

/// One report holding both runs and, per compared figure (`html::SIDE_BY_SIDE`), Janus's
/// value over rtcroom's (above 1: rtcroom uses less, is faster or loses less; null where
/// rtcroom's is 0 or a figure is missing).
fn compare(ours: &serde_json::Value, janus: &serde_json::Value) -> serde_json::Value {
    let mut ratios = serde_json::Map::new();
    for (key, field, ..) in SIDE_BY_SIDE {
        let get = |r| figure(r, key, field).as_f64();
        let ratio = match (get(ours), get(janus)) {
            (Some(a), Some(b)) if a > 0.0 => Some(b / a),
            _ => None,
        };
        ratios.insert(ratio_name(key, field), json!(ratio));
    }
    json!({
        "scenario": ours["scenario"],
        "target": "both",
        "rtcroom": ours,
        "janus": janus,
        "janus_over_rtcroom": ratios,
    })
}

fn print_comparison(both: &serde_json::Value) {
    let f = |v: &serde_json::Value| {
        v.as_f64()
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    println!();
    println!(
        "{:<36} {:>12} {:>12} {:>14}",
        "same run, same clients", "rtcroom", "janus", "janus/rtcroom"
    );
    for (key, field, ..) in SIDE_BY_SIDE {
        let name = ratio_name(key, field);
        println!(
            "{:<36} {:>12} {:>12} {:>14}",
            name,
            f(figure(&both["rtcroom"], key, field)),
            f(figure(&both["janus"], key, field)),
            f(&both["janus_over_rtcroom"][&name])
        );
    }
}

/// Run one media scenario against one server and return its report (printing a summary).
#[allow(clippy::too_many_arguments)]
async fn measure(
    spec: &MediaSpec,
    common: &CommonArgs,
    clip: &Arc<Vec<Recorded>>,
    small: Option<&Arc<Vec<Recorded>>>,
    clip_len: Duration,
    expected_loss: u8,
    kind: ServerKind,
) -> anyhow::Result<serde_json::Value> {
    let MediaSpec {
        scenario,
        mode,
        publishers,
        subscribers,
        audio_only,
        rate,
        simulcast,
        nodes,
    } = *spec;
    let rate = if rate > 0.0 { rate } else { 100.0 };
    let clip_video = clip.iter().filter(|r| r.video).count();
    let keyframes = keyframe_sizes(clip);
    let clip = clip.clone();
    let target = match kind {
        ServerKind::Rtcroom if nodes > 1 => Target::cluster(common, nodes).await?,
        ServerKind::Rtcroom => Target::new(common).await?,
        ServerKind::Janus => Target::janus(common).await?,
    };
    eprintln!("{scenario}: measuring {}", kind.name());
    let room = format!("{}", 1 + (std::process::id() % 1_000_000));
    let (stop_tx, stop_rx) = watch::channel(false);
    let viewer_role = if mode == Mode::Live {
        Role::Audience
    } else {
        Role::Anchor
    };

    // Publishers: each joins as an anchor and publishes; all replay on one thread of their
    // own so the audience's load cannot starve them (a starved publisher would make the
    // generator, not the server, lose packets).
    let mut tasks = Vec::new();
    let mut pub_peers = Vec::with_capacity(publishers);
    let mut pub_stats = Vec::with_capacity(publishers);
    if kind == ServerKind::Janus {
        // Janus rooms are made by a request; every member counts as a possible publisher.
        let mut admin = janus::Session::open(&target.url).await?;
        admin
            .create_room(janus_room(&room)?, publishers + subscribers + 1)
            .await?;
        tasks.push(tokio::spawn(admin.idle(stop_rx.clone())));
    }
    for p in 0..publishers {
        let (mut member, _) =
            Member::join(&target, &target.url, &room, Who::Publisher(p), Role::Anchor).await?;
        let peer = member.publish(&target, !audio_only, simulcast).await?;
        pub_peers.push(peer);
        pub_stats.push(Arc::new(PubStats::default()));
        let (_, none) = tokio::sync::mpsc::unbounded_channel();
        tasks.push(tokio::spawn(member.idle(stop_rx.clone(), none)));
    }
    let (pub_done_tx, publishers_done) = tokio::sync::oneshot::channel();
    {
        let stats = pub_stats.clone();
        let (clip, stop) = (clip.clone(), stop_rx.clone());
        let small = small.cloned();
        std::thread::Builder::new()
            .name("bench-publishers".into())
            .spawn(move || {
                let res = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| {
                        rt.block_on(async move {
                            let runs = pub_peers.into_iter().zip(stats).map(|(peer, st)| {
                                let layers = match &small {
                                    Some(small) => {
                                        vec![(Some("h"), clip.clone()), (Some("l"), small.clone())]
                                    }
                                    None => vec![(None, clip.clone())],
                                };
                                light::run_publisher_layers(
                                    peer,
                                    layers,
                                    clip_len,
                                    st,
                                    stop.clone(),
                                )
                            });
                            for r in futures_util::future::join_all(runs).await {
                                r?;
                            }
                            Ok(())
                        })
                    });
                let _ = pub_done_tx.send(res);
            })?;
    }
    let base = target.stat();

    // Subscribers: each subscribes to every publisher (one downlink per publisher).
    let started = Instant::now();
    let mut join_ms: Vec<f64> = Vec::with_capacity(subscribers);
    let mut subs = Vec::with_capacity(subscribers * publishers);
    // Simulcast: each subscriber's layer of publisher 0, its stats there, and a way to ask
    // its signalling for another layer.
    let mut switchers = Vec::new();
    for i in 0..subscribers {
        tokio::time::sleep_until(
            tokio::time::Instant::from_std(started) + Duration::from_secs_f64(i as f64 / rate),
        )
        .await;
        let (mut member, ms) = Member::join(
            &target,
            target.viewer_url(i),
            &room,
            Who::Viewer(i),
            viewer_role,
        )
        .await?;
        join_ms.push(ms);
        let video_type = simulcast.then_some(if i % 2 == 0 {
            VideoStreamType::Small
        } else {
            VideoStreamType::Big
        });
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        for p in 0..publishers {
            let (peer, t0) = member
                .subscribe(&target, &room, p, !audio_only, video_type)
                .await?;
            let stats = Arc::new(SubStats::default());
            tasks.push(tokio::spawn(light::run_subscriber(
                peer,
                t0,
                stats.clone(),
                stop_rx.clone(),
            )));
            if p == 0
                && let Some(t) = video_type
            {
                switchers.push((t, stats.clone(), cmd_tx.clone()));
            }
            subs.push(stats);
        }
        tasks.push(tokio::spawn(member.idle(stop_rx.clone(), cmd_rx)));
        if i % 20 == 0 {
            eprint!("\r{scenario}: {}/{subscribers} subscribers", i + 1);
        }
    }
    eprintln!("\r{scenario}: {subscribers}/{subscribers} subscribers, warming up");
    // Warm up until every subscription has media (bounded).
    let warm_deadline = Instant::now() + Duration::from_secs(15);
    let has_media = |s: &SubStats| {
        if audio_only {
            s.packets.load(Ordering::Relaxed) > 0
        } else {
            s.first_video_us.load(Ordering::Relaxed) > 0
        }
    };
    while !subs.iter().all(|s| has_media(s)) && Instant::now() < warm_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent_now = || {
        pub_stats
            .iter()
            .map(|s| s.packets.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let recv_now = || {
        subs.iter()
            .map(|s| s.packets.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    // The measured window.
    let w_start = Instant::now();
    for s in &subs {
        s.opened.store(true, Ordering::Relaxed);
    }
    let cpu0 = target.stat();
    let edge_cpu0 = target.edge_stats();
    let mut edge_fwd0 = Vec::with_capacity(target.edges.len());
    for e in &target.edges {
        edge_fwd0.push(server_counter(&e.url, "rtcroom_media_packets_out_total").await);
    }
    let gen0 = super::proc_cpu_ns(std::process::id());
    let late0: u64 = pub_stats
        .iter()
        .map(|s| s.late_packets.load(Ordering::Relaxed))
        .sum();
    let fwd0 = counter(&target, "rtcroom_media_packets_out_total").await;
    let in0 = counter(&target, "rtcroom_media_packets_in_total").await;
    let (sent0, recv0) = (sent_now(), recv_now());
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    // The first tick is immediate; the series starts one second in.
    progress.tick().await;
    let mut series = Vec::new();
    let (mut last_recv, mut last_cpu, mut last_t) = (recv0, cpu0.map(|c| c.cpu_s), 0.0f64);
    while w_start.elapsed() < Duration::from_secs_f64(common.duration) {
        progress.tick().await;
        let t = w_start.elapsed().as_secs_f64();
        let recv = recv_now();
        let cpu = target.stat().map(|c| c.cpu_s);
        let dt = (t - last_t).max(1e-3);
        let bytes: u64 = subs.iter().map(|s| s.bytes.load(Ordering::Relaxed)).sum();
        series.push(json!({
            "t": t,
            "received_pps": (recv - last_recv) as f64 / dt,
            "received_bytes": bytes,
            "server_cpu_pct": match (cpu, last_cpu) { (Some(a), Some(b)) => Some(100.0 * (a - b) / dt), _ => None },
        }));
        (last_recv, last_cpu, last_t) = (recv, cpu, t);
        eprint!(
            "\r{scenario}: {:.0} s, {} packets sent, {} received   ",
            t,
            sent_now() - sent0,
            recv - recv0
        );
    }
    eprintln!();
    let window = w_start.elapsed();
    let cpu1 = target.stat();
    let edge_cpu1 = target.edge_stats();
    let mut edge_fwd1 = Vec::with_capacity(target.edges.len());
    for e in &target.edges {
        edge_fwd1.push(server_counter(&e.url, "rtcroom_media_packets_out_total").await);
    }
    let gen1 = super::proc_cpu_ns(std::process::id());
    let late: u64 = pub_stats
        .iter()
        .map(|s| s.late_packets.load(Ordering::Relaxed))
        .sum::<u64>()
        - late0;
    let fwd1 = counter(&target, "rtcroom_media_packets_out_total").await;
    let send_drops = counter(&target, "rtcroom_media_send_drops_total").await;
    let server_in = counter(&target, "rtcroom_media_packets_in_total").await;
    let keyframe_requests = counter(&target, "rtcroom_media_keyframe_requests_total").await;
    let sent = sent_now() - sent0;
    let recv = recv_now() - recv0;
    // Simulcast: subscribers in turn ask for the other layer of publisher 0; the switch is
    // done when a keyframe of another resolution (another SPS) reaches them.
    let mut switch_ms: Vec<f64> = Vec::new();
    let mut switch_timeouts = 0u32;
    for (from, stats, cmd) in switchers.iter().take(MAX_SWITCH_SAMPLES) {
        let to = match from {
            VideoStreamType::Big => VideoStreamType::Small,
            VideoStreamType::Small => VideoStreamType::Big,
        };
        let (count, sps) = (
            stats.sps_keyframes.load(Ordering::Relaxed),
            stats.last_sps.load(Ordering::Relaxed),
        );
        let asked = Instant::now();
        let request = ClientMessage::SetRemoteVideoStreamType {
            user_id: UserId::new(&Who::Publisher(0).user_id())
                .map_err(|e| anyhow::anyhow!(e.message))?,
            stream_type: StreamType::Main,
            video_type: to,
        };
        if cmd.send(request).is_err() {
            continue;
        }
        let switched = loop {
            if stats.sps_keyframes.load(Ordering::Relaxed) > count
                && stats.last_sps.load(Ordering::Relaxed) != sps
            {
                break true;
            }
            if asked.elapsed() > Duration::from_secs(5) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        if switched {
            switch_ms.push(asked.elapsed().as_secs_f64() * 1e3);
        } else {
            switch_timeouts += 1;
        }
    }
    // Loss is counted among what was sent until now; give the packets lost just before
    // the end their repair time (NACK, RTX, maybe a lost NACK's retry) before stopping.
    for s in &subs {
        s.closed.store(true, Ordering::Relaxed);
    }
    let rtt_ms = target
        .relays
        .as_ref()
        .map_or(0.0, |r| 2.0 * (r.delay().delay_ms + r.delay().jitter_ms));
    tokio::time::sleep(REPAIR_TIME + Duration::from_secs_f64(3.0 * rtt_ms / 1e3)).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(5), publishers_done).await {
        Ok(Ok(Err(e))) => eprintln!("publishers: {e:#}"),
        Ok(Err(_)) | Err(_) => eprintln!("publisher thread did not finish"),
        Ok(Ok(Ok(()))) => {}
    }
    // A task that panicked (a counting bug) would leave its figures silently short.
    let mut panicked = 0;
    for t in tasks {
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), t).await
            && e.is_panic()
        {
            panicked += 1;
        }
    }
    if panicked > 0 {
        anyhow::bail!(
            "{panicked} of the bench's client tasks panicked; its figures would be wrong"
        );
    }
    let sum = |f: fn(&SubStats) -> &AtomicU64| -> u64 {
        subs.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
    };
    // Milliseconds from microsecond counters; 0 means "never", so it is left out.
    let samples_ms = |f: fn(&SubStats) -> &AtomicU64| -> Vec<f64> {
        subs.iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .filter(|v| *v > 0)
            .map(|v| v as f64 / 1000.0)
            .collect()
    };
    let lost = sum(|s| &s.lost);
    // Loss left after repair, per media kind, over each subscription's whole life.
    let kind_loss = |lost: u64, got: u64| {
        if lost + got > 0 {
            Some(100.0 * lost as f64 / (lost + got) as f64)
        } else {
            None
        }
    };
    let video_loss = kind_loss(sum(|s| &s.video_lost), sum(|s| &s.video_packets));
    let audio_loss = kind_loss(sum(|s| &s.audio_lost), sum(|s| &s.audio_packets));
    // Audio a decoder with in-band FEC on still misses: lost packets whose successor did not
    // bring their FEC copy (it is concealed).
    let audio_loss_fec = kind_loss(
        sum(|s| &s.audio_lost) - sum(|s| &s.audio_fec_recovered),
        sum(|s| &s.audio_packets) + sum(|s| &s.audio_fec_recovered),
    );
    let received_total = sum(|s| &s.packets);
    let freezes = sum(|s| &s.freezes);
    let nacks = sum(|s| &s.nacks);
    let plis = sum(|s| &s.plis);
    let first_packet = samples_ms(|s| &s.first_video_us);
    let first_frame = samples_ms(|s| &s.first_frame_us);
    let first_audio = samples_ms(|s| &s.first_audio_us);
    let jitter: Vec<f64> = subs
        .iter()
        .map(|s| s.jitter_us.load(Ordering::Relaxed) as f64 / 1000.0)
        .collect();
    let per_subscription: Vec<serde_json::Value> = subs
        .iter()
        .map(|s| {
            let us = |a: &AtomicU64| {
                let v = a.load(Ordering::Relaxed);
                (v > 0).then(|| v as f64 / 1000.0)
            };
            json!({
                "packets": s.packets.load(Ordering::Relaxed),
                "bytes": s.bytes.load(Ordering::Relaxed),
                "lost": s.lost.load(Ordering::Relaxed),
                "video_lost": s.video_lost.load(Ordering::Relaxed),
                "audio_lost": s.audio_lost.load(Ordering::Relaxed),
                "freezes": s.freezes.load(Ordering::Relaxed),
                "first_audio_ms": us(&s.first_audio_us),
                "first_video_packet_ms": us(&s.first_video_us),
                "first_frame_ms": us(&s.first_frame_us),
                "jitter_ms": s.jitter_us.load(Ordering::Relaxed) as f64 / 1000.0,
                "nacks": s.nacks.load(Ordering::Relaxed),
                "plis": s.plis.load(Ordering::Relaxed),
            })
        })
        .collect();
    let expected = sent * subscribers as u64;
    let pct = |a: u64, b: u64| {
        if b > 0 {
            100.0 * a as f64 / b as f64
        } else {
            0.0
        }
    };
    // With simulcast a subscriber receives one layer of what is sent: only the sequence
    // numbers tell loss.
    let window_loss = if simulcast {
        0.0
    } else {
        pct(expected.saturating_sub(recv), expected)
    };
    let seq_loss = pct(lost, received_total + lost);
    let forwarded = match (fwd0, fwd1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let cpu_s = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
        _ => None,
    };
    // Per packet the subscribers received: the same count for every server (Janus has no
    // counter of its own), so the one to compare servers by.
    let per_received_us = match cpu_s {
        Some(c) if recv > 0 => Some(c * 1e6 / recv as f64),
        _ => None,
    };
    let per_packet_us = match (cpu_s, forwarded) {
        (Some(c), Some(f)) if f > 0 => Some(c * 1e6 / f as f64),
        _ if kind == ServerKind::Janus => per_received_us,
        _ => None,
    };
    let members = publishers + subscribers;
    let mem_per_sub = match (base, cpu1) {
        (Some(b), Some(a)) => Some((a.rss_bytes as f64 - b.rss_bytes as f64) / subscribers as f64),
        _ => None,
    };
    let bytes: u64 = subs.iter().map(|s| s.bytes.load(Ordering::Relaxed)).sum();
    let report = json!({
        "scenario": scenario,
        "simulcast": simulcast.then(|| json!({
            "layers": [
                {"rid": "l", "width": SMALL.width, "height": SMALL.height, "kbps": SMALL.bitrate_kbps},
                {"rid": "h", "width": BIG.width, "height": BIG.height, "kbps": BIG.bitrate_kbps},
            ],
            "subscribers_small": subscribers.div_ceil(2),
            "subscribers_big": subscribers / 2,
            "layer_switch_ms": percentiles(&switch_ms),
            "layer_switch_samples_ms": switch_ms,
            "layer_switches": switch_ms.len(),
            "layer_switch_timeouts": switch_timeouts,
        })),
        "clients": members,
        "publishers": publishers,
        "subscribers": subscribers,
        "duration_s": window.as_secs_f64(),
        "join_ms": percentiles(&join_ms),
        "first_frame_ms": percentiles(&first_frame),
        "first_video_packet_ms": percentiles(&first_packet),
        "first_audio_ms": percentiles(&first_audio),
        "jitter_ms": percentiles(&jitter),
        "nacks": nacks,
        "plis": plis,
        "join_failures": 0,
        "packets_sent": sent,
        "packets_received": recv,
        "loss_pct": window_loss.max(seq_loss),
        "loss_pct_window": window_loss,
        "loss_pct_sequence": seq_loss,
        "freezes": freezes,
        "received_kbps_per_subscription": if subs.is_empty() { 0.0 } else { bytes as f64 * 8.0 / 1000.0 / window.as_secs_f64().max(1e-9) / subs.len() as f64 },
        "clip_video_packets": clip_video,
        "packets_sent_total": sent_now(),
        "server_cpu_pct": cpu_s.map(|c| 100.0 * c / window.as_secs_f64()),
        "server_cpu_us_per_packet": per_packet_us,
        "server_rss_bytes": cpu1.map(|c| c.rss_bytes),
        "server_rss_bytes_per_member": cpu1.map(|c| c.rss_bytes as f64 / members as f64),
        "server_rss_bytes_per_subscriber": mem_per_sub,
        "server_packets_forwarded": forwarded,
        "server_packets_out_per_s": forwarded.map(|f| f as f64 / window.as_secs_f64()),
        "server_packets_in_per_s": match (in0, server_in) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / window.as_secs_f64()),
            _ => None,
        },
        "server_packets_in_total": server_in,
        "server_send_drops": send_drops,
        "server_keyframe_requests_total": keyframe_requests,
        "target": kind.name(),
        "server": match (kind, &target.child) {
            (ServerKind::Rtcroom, Some(_)) => "embedded (child process)".to_owned(),
            (ServerKind::Janus, Some(_)) => format!("{} (child process)", janus::version()),
            (_, None) => target.url.clone(),
        },
        "cpu_split": super::CPU_SPLIT.get(),
        "series": series,
        "per_subscription": per_subscription,
    });
    // The load generator's own CPU (this process) and whether it kept up: a run where it did
    // not measures the generator, not the server.
    let generator_cpus = super::CPU_SPLIT.get().map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |s| s.generator.len(),
    );
    let generator_cpu_pct = match (gen0, gen1) {
        (Some(a), Some(b)) => Some(100.0 * (b - a) as f64 / 1e9 / window.as_secs_f64()),
        _ => None,
    };
    // Unpinned, the generator shares the cores with the embedded server: the two together
    // can use them up.
    let sharing = super::CPU_SPLIT.get().is_none() && target.child.is_some();
    let server_pct = cpu_s.map_or(0.0, |c| 100.0 * c / window.as_secs_f64());
    let generator_saturated = late * 100 > sent.max(1)
        || generator_cpu_pct.is_some_and(|c| {
            let used = if sharing { c + server_pct } else { c };
            used >= 90.0 * generator_cpus as f64
        });
    // Loss after repair per kind, and the link it was measured on (a second object: one
    // `json!` this size reaches the macro's recursion limit).
    let mut report = report;
    for (k, v) in [
        ("video_loss_pct", json!(video_loss)),
        ("audio_loss_pct", json!(audio_loss)),
        ("audio_loss_after_fec_pct", json!(audio_loss_fec)),
        ("audio_expected_loss_pct", json!(expected_loss)),
        ("link", json!(target.link)),
        ("clip_keyframe_bytes", json!(keyframes)),
        ("generator_cpu_pct", json!(generator_cpu_pct)),
        ("generator_cpus", json!(generator_cpus)),
        ("publisher_late_packets", json!(late)),
        ("generator_saturated", json!(generator_saturated)),
        (
            "publisher_keyframes_on_request",
            json!(
                pub_stats
                    .iter()
                    .map(|s| s.keyframes_on_request.load(Ordering::Relaxed))
                    .sum::<u64>()
            ),
        ),
        ("delay", json!(target.relays.as_ref().map(|r| r.delay()))),
        ("server_cpu_us_per_received_packet", json!(per_received_us)),
        (
            "nodes",
            json!((!target.edges.is_empty()).then(|| {
                let n = target.edges.len() + 1;
                // Viewer i goes to node i % n.
                let viewers = |k: usize| (k..subscribers).step_by(n).count();
                let pct = |a: Option<super::ProcStat>, b: Option<super::ProcStat>| match (a, b) {
                    (Some(a), Some(b)) => Some(100.0 * (b.cpu_s - a.cpu_s) / window.as_secs_f64()),
                    _ => None,
                };
                let per_s = |a: Option<u64>, b: Option<u64>| match (a, b) {
                    (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / window.as_secs_f64()),
                    _ => None,
                };
                let edges: Vec<serde_json::Value> = (0..n - 1)
                    .map(|e| {
                        json!({
                            "viewers": viewers(e + 1),
                            "cpu_pct": pct(edge_cpu0[e], edge_cpu1[e]),
                            "packets_out_per_s": per_s(edge_fwd0[e], edge_fwd1[e]),
                        })
                    })
                    .collect();
                json!({
                    "nodes": n,
                    "origin_viewers": viewers(0),
                    "origin_cpu_pct": pct(cpu0, cpu1),
                    "origin_packets_out_per_s": forwarded.map(|f| f as f64 / window.as_secs_f64()),
                    "edges": edges,
                })
            })),
        ),
        (
            "server_packets_counted_by",
            json!(match kind {
                ServerKind::Rtcroom => "server (rtcroom_media_packets_out_total)",
                ServerKind::Janus => "subscribers (Janus has no packet counter)",
            }),
        ),
    ] {
        report[k] = v;
    }
    let f = |v: &serde_json::Value| {
        v.as_f64()
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "server                {}",
        report["server"].as_str().unwrap_or("?")
    );
    println!(
        "scenario              {scenario} ({publishers} publisher(s) → {subscribers} subscriber(s), {} mode{})",
        mode,
        if audio_only { ", audio only" } else { "" }
    );
    println!("window                {:.1} s", window.as_secs_f64());
    println!(
        "packets sent          {sent} ({:.0}/s)",
        sent as f64 / window.as_secs_f64()
    );
    println!("packets received      {recv} (expected {expected})");
    println!(
        "join                  {} ms",
        super::fmt_p(&report["join_ms"])
    );
    if let Some(link) = &target.link {
        println!(
            "link                  server in a network namespace, {}% random UDP loss each way{}",
            link.loss_pct,
            link.rate_kbit
                .map(|r| format!(", downlink {r} kbit/s"))
                .unwrap_or_default()
        );
        if let Some(d) = target.relays.as_ref().map(|r| r.delay()) {
            println!(
                "delay                 {} ms + up to {} ms jitter each way (UDP relay)",
                d.delay_ms, d.jitter_ms
            );
        }
    }
    println!("loss                  {}%", f(&report["loss_pct"]));
    println!(
        "loss after repair     video {}% (NACK/RTX), audio {}% ({}% after in-band FEC)",
        f(&report["video_loss_pct"]),
        f(&report["audio_loss_pct"]),
        f(&report["audio_loss_after_fec_pct"])
    );
    println!("freezes (>500 ms)     {freezes}");
    println!(
        "first audio packet    {} ms",
        super::fmt_p(&report["first_audio_ms"])
    );
    println!(
        "jitter                {} ms",
        super::fmt_p(&report["jitter_ms"])
    );
    println!("NACKs / PLIs sent     {nacks} / {plis}");
    if !audio_only {
        println!(
            "first video packet    {} ms",
            super::fmt_p(&report["first_video_packet_ms"])
        );
        println!(
            "first frame           {} ms (subscribe → first complete keyframe)",
            super::fmt_p(&report["first_frame_ms"])
        );
    }
    println!(
        "server CPU            {}% of a core",
        f(&report["server_cpu_pct"])
    );
    println!("server send drops     {}", report["server_send_drops"]);
    println!(
        "load generator CPU    {}% of a core ({generator_cpus} available), {late} packets sent late{}",
        f(&report["generator_cpu_pct"]),
        if generator_saturated {
            " — SATURATED: the generator (or the machine it shares with the server) limited this run"
        } else {
            ""
        }
    );
    println!(
        "server CPU/packet     {} µs per forwarded packet{}",
        f(&report["server_cpu_us_per_packet"]),
        match kind {
            ServerKind::Rtcroom => "",
            ServerKind::Janus => " (counted by the subscribers)",
        }
    );
    if let Some(m) = mem_per_sub {
        println!("server memory         {:.1} KB per subscriber", m / 1e3);
    }
    report["first_video_packet_ms_samples"] = json!(first_packet);
    if report["nodes"].is_object() {
        let n = &report["nodes"];
        println!(
            "origin node           {} viewers, CPU {}%, {} packets/s out",
            n["origin_viewers"],
            f(&n["origin_cpu_pct"]),
            f(&n["origin_packets_out_per_s"])
        );
        for (i, e) in n["edges"].as_array().into_iter().flatten().enumerate() {
            println!(
                "edge node {}           {} viewers, CPU {}%, {} packets/s out",
                i + 1,
                e["viewers"],
                f(&e["cpu_pct"]),
                f(&e["packets_out_per_s"])
            );
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(video: bool, at_ms: u64, bytes: usize) -> Recorded {
        Recorded {
            video,
            at: Duration::from_millis(at_ms),
            ts: 0,
            marker: false,
            key: false,
            payload: vec![0u8; bytes].into(),
        }
    }

    #[test]
    fn a_keyframe_is_marked_at_its_frames_first_packet() {
        let pkt = |video: bool, ts: u32, payload: &[u8]| Recorded {
            video,
            at: Duration::ZERO,
            ts,
            marker: false,
            key: false,
            payload: payload.into(),
        };
        let mut clip = vec![
            // Frame 0: an SEI, then the IDR's first fragment (FU-A start, type 5).
            pkt(true, 0, &[0x06, 1]),
            pkt(false, 0, &[1]),
            pkt(true, 0, &[0x7c, 0x85]),
            // Frame 1: a delta.
            pkt(true, 3000, &[0x41, 1]),
            // Frame 2: an SPS.
            pkt(true, 6000, &[0x67, 1]),
        ];
        mark_keyframes(&mut clip);
        let keys: Vec<bool> = clip.iter().map(|r| r.key).collect();
        assert_eq!(keys, vec![true, false, false, false, true]);
        // Frame 0's two video packets (the audio between is not counted), frame 2's one.
        assert_eq!(keyframe_sizes(&clip), vec![4, 2]);
    }

    #[test]
    fn pacing_spreads_a_burst_and_leaves_audio_alone() {
        // A 4-packet "keyframe" of 1,000 bytes each at t = 0, audio at 0, a delta at 100 ms.
        // At 8 Mbit/s, 1,000 bytes take 1 ms.
        let mut clip = vec![
            rec(true, 0, 1000),
            rec(true, 0, 1000),
            rec(false, 0, 100),
            rec(true, 0, 1000),
            rec(true, 0, 1000),
            rec(true, 100, 1000),
        ];
        pace(&mut clip, 8_000_000.0);
        let at: Vec<u64> = clip.iter().map(|r| r.at.as_millis() as u64).collect();
        assert_eq!(at, vec![0, 1, 0, 2, 3, 100]);
        // A burst longer than the gap to the next frame delays that frame's packets too.
        let mut clip = vec![rec(true, 0, 10_000), rec(true, 5, 1000)];
        pace(&mut clip, 8_000_000.0);
        assert_eq!(clip[1].at, Duration::from_millis(10));
    }
}
