//! The web SDK the server hands out (`GET /sdk/trtc.js`, `GET /sdk/trtc.mjs`) in real headless
//! Chromium, end to end against a real rtcroom server on loopback:
//!
//! - a browser publishes (H.264 / VP8) and the Rust engine decodes it;
//! - a browser publishes and `rtcroom record` (the real binary) writes a finalised, playable
//!   file, across a change of the video size (`setVideoProfile('120p')` while recording);
//! - the Rust engine publishes (H.264 / VP8) and a browser decodes and plays it;
//! - two browsers call each other (mute and leave reach the other side);
//! - the sample code of Tencent's "进入房间" guide runs unchanged;
//! - every case of the shared parameter table (`tests/data/client-params.json`) gets its code;
//! - a browser survives a server restart on the same port (re-joins, re-publishes,
//!   re-subscribes by itself) and media flows again;
//! - `/sdk/trtc.mjs` works as an ES module and `checkSystemRequirements()` says yes.
//!
//! Every wait is bounded (the harness's `wait_for`, or a timeout); nothing sleeps to sequence.
//! Measured times are printed: `cargo test --test browser_sdk -- --nocapture`. Needs Chromium
//! and GStreamer (`scripts/setup-debian.sh`).
//!
//! The media tests take a permit of [`MEDIA`] (two at a time): on a small machine a dozen
//! Chromiums encoding and decoding at once starve each other and the server.

#[path = "../server/tests/common/redis_server.rs"]
mod redis_server;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rtcroom::{
    ClientConfig, ClientEvent, DecodedFrame, EventStream, FrameInfo, JoinOptions,
    LayerChangeReason, Mode, SeiOptions, StreamConfig, SubscribeOptions, SubscribeOutput,
    VideoCodec, VideoProfile, VideoStreamType, create_client, create_stream,
};
use rtcroom_protocol::usersig::gen_user_sig;
use rtcroom_server::{RunningServer, ServerConfig};
use serde_json::{Value, json};
use support::browser::{Browser, Page};
use tokio::sync::{Semaphore, SemaphorePermit};

const APP: u32 = 1_400_000_000;
const KEY: &str = "browser-sdk-test-key";
/// Bound on every wait in these tests.
const DEADLINE: Duration = Duration::from_secs(30);
/// Nothing listens here (the discard port): a client that goes to the network fails.
const DEAD_URL: &str = "ws://127.0.0.1:9/ws";
/// The shared table of createClient/join cases (also run against the engine).
const TABLE: &str = include_str!("data/client-params.json");
/// Where the seed (Tencent's guide) lies in the development workspace, when it is there.
const SEED: &str = "/work/shared/seed/000_5b17a1bd9849b933.txt";

/// Media tests running at once.
static MEDIA: Semaphore = Semaphore::const_new(2);

async fn media_permit() -> SemaphorePermit<'static> {
    MEDIA
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

/* ------------------------------------------------------------------------------------------
 * The page side: a small helper around the SDK, injected as `window.H`
 * ---------------------------------------------------------------------------------------- */

/// Records every client event, plays every subscribed stream into a div of its own, and
/// offers short calls for the tests.
const HELPER_JS: &str = r#"
window.H = (() => {
  const H = { clients: {}, locals: {}, remotes: {}, events: [] };
  const EVENTS = ['connection-state-changed', 'peer-join', 'peer-leave', 'stream-added',
    'stream-removed', 'stream-updated', 'stream-subscribed', 'mute-audio', 'unmute-audio',
    'mute-video', 'unmute-video', 'client-banned', 'error', 'sei-message', 'video-layer-changed'];

  H.err = (e) => ({
    name: e && e.name,
    isRtcError: e instanceof TRTC.RtcError,
    code: e && typeof e.getCode === 'function' ? e.getCode() : e && e.code,
    extraCode: e && typeof e.getExtraCode === 'function' ? e.getExtraCode() : undefined,
    message: String((e && e.message) || e),
  });

  H.onEvent = (name, event, p) => {
    const e = { client: name, event, t: Math.round(performance.now()) };
    if (p && p.stream) {
      e.userId = p.stream.getUserId();
      e.streamType = p.stream.getType();
      e.codec = p.stream.getVideoCodec();
    } else if (p && typeof p.userId === 'string') {
      e.userId = p.userId;
    }
    if (p && p.state) { e.state = p.state; e.prevState = p.prevState; }
    if (p && p.reason !== undefined) e.reason = p.reason;
    if (event === 'sei-message') {
      e.text = new TextDecoder().decode(p.data);
      e.seiPayloadType = p.seiPayloadType;
      e.isFromAuxiliary = p.isFromAuxiliary;
    }
    if (event === 'error') Object.assign(e, H.err(p));
    if (event === 'video-layer-changed') { e.videoType = p.videoType; e.rid = p.rid; }
    H.events.push(e);
    console.log('[H]', JSON.stringify(e));
    if (event === 'stream-subscribed') H.play(name, p.stream);
    if (event === 'stream-removed') p.stream.stop();
  };

  H.create = (name, config) => {
    const c = TRTC.createClient(config);
    H.clients[name] = c;
    for (const ev of EVENTS) c.on(ev, (p) => H.onEvent(name, ev, p));
    return true;
  };

  // As the docs' quick start does: a div per remote user, stream.play(div).
  H.play = (name, stream) => {
    H.remotes[name + '/' + stream.getUserId()] = stream;
    const id = 'view_' + name + '_' + stream.getUserId();
    let div = document.getElementById(id);
    if (!div) {
      div = document.createElement('div');
      div.id = id;
      div.style.cssText = 'width:320px;height:240px';
      (document.body || document.documentElement).appendChild(div);
    }
    stream.play(div).then(
      () => H.events.push({ client: name, event: 'played', userId: stream.getUserId() }),
      (e) => H.events.push(Object.assign({ client: name, event: 'play-failed', userId: stream.getUserId() }, H.err(e))));
  };

  // The first recorded event matching, at or after index `from`.
  H.find = (name, event, f) => H.events.find((e, i) => i >= ((f && f.from) || 0) &&
    e.client === name && e.event === event &&
    (!f || f.userId === undefined || e.userId === f.userId) &&
    (!f || f.state === undefined || e.state === f.state) &&
    (!f || f.videoType === undefined || e.videoType === f.videoType)) || null;

  H.errors = (name) => H.events.filter((e) => e.client === name && (e.event === 'error' || e.event === 'play-failed'));

  H.join = async (name, options) => {
    await H.clients[name].join(options);
    return H.clients[name]._timing.join;
  };

  H.publish = async (name, userId) => {
    const s = TRTC.createStream({ userId, audio: true, video: true });
    await s.initialize();
    H.locals[name] = s;
    await H.clients[name].publish(s);
    return H.clients[name]._timing.publish.main;
  };

  // `name`'s receive stats of `userId`'s main video (getRemoteVideoStats), or null.
  H.video = async (name, userId) => (await H.clients[name].getRemoteVideoStats())[userId] || null;
  H.frames = async (name, userId) => ((await H.video(name, userId)) || {}).framesDecoded || 0;
  H.audio = async (name, userId) => (await H.clients[name].getRemoteAudioStats())[userId] || null;

  // The <video> element `name` plays `userId`'s stream in.
  H.videoEl = (name, userId) => {
    const s = H.remotes[name + '/' + userId];
    return s ? document.getElementById('video_' + s.getId()) : null;
  };

  // Resolves with the <video>'s presentedFrames once it paints a new frame of `userId`'s
  // stream (false when none comes within a second).
  H.painted = (name, userId) => new Promise((resolve) => {
    const v = H.videoEl(name, userId);
    const s = H.remotes[name + '/' + userId];
    if (!v || !s || !v.srcObject || v.srcObject.getVideoTracks()[0] !== s.getVideoTrack()) {
      resolve(false);
      return;
    }
    const timer = setTimeout(() => resolve(false), 1000);
    v.requestVideoFrameCallback((_, meta) => { clearTimeout(timer); resolve(meta.presentedFrames || true); });
  });

  // One run of the shared parameter table: where it failed, with which code, or ok.
  H.tableCase = async (config, join) => {
    let client;
    try {
      client = TRTC.createClient(config);
    } catch (e) {
      return Object.assign({ stage: 'createClient' }, H.err(e));
    }
    if (join === null) return { ok: true };
    const t0 = performance.now();
    try {
      await client.join(join);
    } catch (e) {
      return Object.assign({ stage: 'join', ms: performance.now() - t0 }, H.err(e));
    }
    const state = client.connectionState;
    await client.leave();
    return { ok: true, state, ms: performance.now() - t0 };
  };

  // Everything useful after a failure.
  H.report = async () => {
    const out = { events: H.events, clients: {} };
    for (const [name, c] of Object.entries(H.clients)) {
      const links = [];
      for (const [key, l] of c._links) {
        links.push({
          key, state: l.state, codec: l.codec, failures: l.failures,
          pc: l.pc ? {
            connection: l.pc.connectionState, ice: l.pc.iceConnectionState,
            offer: l.pc.localDescription && l.pc.localDescription.sdp,
            answer: l.pc.remoteDescription && l.pc.remoteDescription.sdp,
          } : null,
        });
      }
      let video = null;
      try { video = await c.getRemoteVideoStats(); } catch (e) { video = String(e); }
      // What each uplink encoding sends (simulcast layers by rid), and why it is limited.
      const sent = [];
      for (const [, l] of c._links) {
        if (!l.up || !l.pc) continue;
        try {
          (await l.pc.getStats()).forEach((st) => {
            if (st.type === 'outbound-rtp' && st.kind === 'video') {
              sent.push({ rid: st.rid, active: st.active, frameWidth: st.frameWidth, framesEncoded: st.framesEncoded,
                packetsSent: st.packetsSent, qualityLimitationReason: st.qualityLimitationReason });
            }
          });
        } catch (e) { sent.push(String(e)); }
      }
      out.clients[name] = { state: c.connectionState, timing: c._timing, links, video, sent };
    }
    return out;
  };
  return H;
})();
true
"#;

/// Load the served SDK into the page with a `<script src>` (as a page would), then the helper.
const LOAD_SDK_JS: &str = r#"
new Promise((resolve, reject) => {
  const s = document.createElement('script');
  s.src = '/sdk/trtc.js';
  s.onload = () => resolve(TRTC.VERSION);
  s.onerror = () => reject(new Error('loading /sdk/trtc.js failed'));
  (document.head || document.documentElement).appendChild(s);
})
"#;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

fn sig(user: &str) -> String {
    gen_user_sig(u64::from(APP), KEY, user, 86_400, now())
}

fn server_config(listen: &str) -> ServerConfig {
    let mut c = ServerConfig::single_app(listen, APP, KEY);
    c.workers = Some(1);
    c.media.workers = 1;
    c.timeouts.shutdown_timeout_s = 1;
    // The small-stream tests switch layers on request; a bandwidth estimate misled by this
    // busy machine (delays from a starved receiver) must not move them meanwhile.
    c.media.bandwidth_adaptation = false;
    c
}

fn start_server() -> RunningServer {
    RunningServer::spawn(server_config("127.0.0.1:0")).expect("the server starts")
}

async fn launch() -> Browser {
    Browser::launch()
        .await
        .unwrap_or_else(|e| panic!("launching Chromium: {e:#}"))
}

/// A page on the server's origin (loopback http is a secure context: cameras work) with the
/// served SDK and `window.H` loaded.
async fn sdk_page(browser: &Browser, server: &RunningServer) -> anyhow::Result<Page> {
    let page = browser.new_page().await?;
    page.goto(&format!("{}/healthz", server.http_url())).await?;
    let version = page.eval(LOAD_SDK_JS).await.context("loading the SDK")?;
    ensure!(
        version
            .as_str()
            .is_some_and(|v| v.starts_with("4.15.22-rtcroom.")),
        "TRTC.VERSION is {version}"
    );
    page.eval(HELPER_JS).await.context("loading the helper")?;
    Ok(page)
}

/// `createClient(config)` on `page` under `name`.
async fn create(page: &Page, name: &str, config: Value) -> anyhow::Result<()> {
    page.eval(&format!("H.create({}, {config})", json!(name)))
        .await
        .with_context(|| format!("createClient for {name}"))?;
    Ok(())
}

/// `join(options)`; returns the join's timing marks.
async fn join(page: &Page, name: &str, options: Value) -> anyhow::Result<Value> {
    page.eval(&format!("H.join({}, {options})", json!(name)))
        .await
        .with_context(|| format!("{name} joins"))
}

/// Camera + microphone (Chromium's fake devices), published; returns the publish marks.
async fn publish(page: &Page, name: &str) -> anyhow::Result<Value> {
    page.eval(&format!("H.publish({0}, {0})", json!(name)))
        .await
        .with_context(|| format!("{name} publishes"))
}

/// Wait until `name` on `page` recorded `event` (from `userId`, with `state`) at or after
/// event index `from`; returns the event.
async fn wait_event(
    page: &Page,
    name: &str,
    event: &str,
    filter: Value,
    timeout: Duration,
) -> anyhow::Result<Value> {
    page.wait_for(
        &format!("H.find({}, {}, {filter})", json!(name), json!(event)),
        timeout,
    )
    .await
    .with_context(|| format!("{name} waits for {event} {filter}"))
}

/// The SDK's name of a codec (`videoCodec`, `getVideoCodec()`).
fn sdk_codec(codec: VideoCodec) -> &'static str {
    match codec {
        VideoCodec::H264 => "h264",
        VideoCodec::Vp8 => "vp8",
    }
}

/// `ms` of a timing mark, for printing.
fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "?".to_owned(), |m| format!("{m:.0}"))
}

/// The pages' states, events, links, SDPs and stats, for a failure message.
async fn report(pages: &[(&str, &Page)]) -> String {
    let mut out = String::new();
    for (name, page) in pages {
        let r = page
            .eval("H.report()")
            .await
            .unwrap_or_else(|e| json!(format!("no report: {e:#}")));
        out.push_str(&format!(
            "\n===== page {name} =====\n{}\n--- console ---\n{}\n",
            serde_json::to_string_pretty(&r).unwrap_or_default(),
            page.console_tail(80)
        ));
    }
    out
}

/* ------------------------------------------------------------------------------------------
 * The Rust side: engine clients and frame counting
 * ---------------------------------------------------------------------------------------- */

fn engine_config(server: &RunningServer, user: &str, mode: Mode) -> ClientConfig {
    ClientConfig::new(mode, APP, user, sig(user))
        .with_server_url(server.ws_url())
        .with_auto_subscribe(false)
}

/// The engine's next `stream-added` of `user`, within [`DEADLINE`].
async fn engine_stream_added(
    events: &mut EventStream,
    user: &str,
) -> anyhow::Result<rtcroom::RemoteStream> {
    let added = engine_event(
        events,
        &format!("stream-added {user}"),
        |e| matches!(e, ClientEvent::StreamAdded(s) if s.user_id.as_str() == user),
    )
    .await?;
    match added {
        ClientEvent::StreamAdded(remote) => Ok(remote),
        _ => unreachable!("engine_event returns a matching event"),
    }
}

/// The next engine event matching `pred`, within [`DEADLINE`].
async fn engine_event(
    events: &mut EventStream,
    what: &str,
    pred: impl Fn(&ClientEvent) -> bool,
) -> anyhow::Result<ClientEvent> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) if pred(&e) => return Ok(e),
            Ok(Some(e)) => seen.push(format!("{e:?}")),
            Ok(None) => bail!("the engine's event stream ended waiting for {what}; seen {seen:#?}"),
            Err(_) => bail!("no {what} within {DEADLINE:?}; seen {seen:#?}"),
        }
    }
}

/// Decoded frames of a subscription, counted in the engine's frame callback.
#[derive(Default)]
struct Frames {
    video: AtomicU64,
    audio: AtomicU64,
    size: Mutex<Option<(u32, u32)>>,
    first_video: OnceLock<Instant>,
}

impl Frames {
    fn output(self: &Arc<Self>) -> SubscribeOutput {
        let me = self.clone();
        SubscribeOutput::Frames(Arc::new(move |_, _, f: DecodedFrame| match f.info {
            FrameInfo::Video { width, height } => {
                let _ = me.first_video.set(Instant::now());
                me.video.fetch_add(1, Ordering::Relaxed);
                *me.size.lock().unwrap() = Some((width, height));
            }
            FrameInfo::Audio { .. } => {
                me.audio.fetch_add(1, Ordering::Relaxed);
            }
        }))
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.video.load(Ordering::Relaxed),
            self.audio.load(Ordering::Relaxed),
        )
    }

    /// Wait (bounded; a 10 ms tick reads the counters) until `video` and `audio` frames came.
    async fn wait(&self, video: u64, audio: u64) -> anyhow::Result<()> {
        let t = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            let (v, a) = self.counts();
            if v >= video && a >= audio {
                return Ok(());
            }
            ensure!(
                t.elapsed() < DEADLINE,
                "timed out after {DEADLINE:?} waiting for {video} video and {audio} audio \
                 frames: got {v} video, {a} audio"
            );
            tick.tick().await;
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * 1. The browser publishes, the Rust engine decodes
 * ---------------------------------------------------------------------------------------- */

/// The browser (`videoCodec: codec`) joins and publishes camera + microphone; an engine client
/// sees `stream-added` with that codec, subscribes with a frame callback and decodes 30 video
/// and 10 audio frames. `engine_first`: the engine is in the room before the browser joins
/// (it learns of the stream from `stream-added`), else after it published (from its join
/// answer).
async fn browser_to_engine(codec: VideoCodec, room: u32, engine_first: bool) {
    let _permit = media_permit().await;
    let tag = format!("browser→engine {codec}");
    let server = start_server();
    let browser = launch().await;
    let page = sdk_page(&browser, &server)
        .await
        .unwrap_or_else(|e| panic!("[{tag}] page: {e:#}"));
    if let Err(e) = browser_to_engine_run(&server, &page, codec, room, engine_first, &tag).await {
        panic!("[{tag}] {e:#}\n{}", report(&[("web", &page)]).await);
    }
}

async fn browser_to_engine_run(
    server: &RunningServer,
    page: &Page,
    codec: VideoCodec,
    room: u32,
    engine_first: bool,
    tag: &str,
) -> anyhow::Result<()> {
    let engine = create_client(engine_config(server, "engine", Mode::Rtc))?;
    let mut events = engine.events();
    if engine_first {
        engine.join(JoinOptions::new(room)).await?;
    }
    create(
        page,
        "web",
        json!({"mode": "rtc", "sdkAppId": APP, "userId": "web", "userSig": sig("web"),
               "videoCodec": sdk_codec(codec), "enableSEI": true}),
    )
    .await?;
    let joined = join(page, "web", json!({ "roomId": room })).await?;
    let published = publish(page, "web").await?;
    if !engine_first {
        engine.join(JoinOptions::new(room)).await?;
    }
    let remote = engine_stream_added(&mut events, "web").await?;
    ensure!(
        remote.has_audio && remote.has_video,
        "stream-added without both tracks: {remote:?}"
    );
    ensure!(
        remote.video_codec == Some(codec),
        "the browser published with videoCodec {codec} but the stream is announced as {:?}",
        remote.video_codec
    );
    // What the browser's uplink settled on (the answer's first video codec).
    let sent = page
        .eval("H.clients.web._links.get('up|main').codec")
        .await?;
    ensure!(
        sent.as_str() == Some(sdk_codec(codec)),
        "the browser's uplink negotiated {sent}, not {codec}"
    );

    let frames = Arc::new(Frames::default());
    let t0 = Instant::now();
    engine
        .subscribe(
            &remote,
            SubscribeOptions::new(frames.output()).with_jitter_latency(Duration::from_millis(20)),
        )
        .await?;
    let connected = t0.elapsed();
    frames.wait(30, 10).await?;
    let first = frames
        .first_video
        .get()
        .map(|t| t.duration_since(t0).as_secs_f64() * 1e3);
    let (v, a) = frames.counts();
    let size = *frames.size.lock().unwrap();
    let local = page.eval("H.clients.web.getLocalVideoStats()").await?;
    ensure!(
        local["web"]["framesEncoded"].as_u64() > Some(0),
        "the browser reports no encoded frames: {local}"
    );

    // The SDK's ICE restart (what it does when its uplink goes 'disconnected'), on the
    // browser's own stack: the server answers Chromium's restart offer on the same peer,
    // Chromium takes the answer, and the engine keeps decoding the same subscription.
    let ice_restarts = || {
        server
            .metrics()
            .media()
            .map_or(0, |m| m.ice_restarts.load(Ordering::Relaxed))
    };
    ensure!(ice_restarts() == 0, "an ICE restart before asking for one");
    let restarted = page
        .eval(
            "(async () => { const c = H.clients.web; const l = c._links.get('up|main'); \
             const pc = l.pc; const ufrag = (s) => /a=ice-ufrag:(\\S+)/.exec(s)[1]; \
             const before = ufrag(pc.remoteDescription.sdp); \
             await c._restartIce(l, l.pcId); \
             return { same: l.pc === pc, changed: ufrag(pc.remoteDescription.sdp) !== before }; })()",
        )
        .await?;
    ensure!(
        restarted == json!({"same": true, "changed": true}),
        "the ICE restart: {restarted}"
    );
    ensure!(
        ice_restarts() == 1,
        "the server answered {} ICE restarts",
        ice_restarts()
    );
    let (v0, a0) = frames.counts();
    frames.wait(v0 + 30, a0 + 10).await?;
    let state = page
        .eval("H.clients.web._links.get('up|main').pc.connectionState")
        .await?;
    ensure!(
        state == json!("connected"),
        "after the ICE restart: {state}"
    );

    // SEI messages from the browser (encoded transforms) reach the engine in order; VP8
    // video cannot carry them.
    let sent = page
        .eval(
            "(() => { try { for (const t of ['sei 0', 'sei 1', 'sei 2']) \
               H.clients.web.sendSEIMessage(new TextEncoder().encode(t).buffer); return null; } \
               catch (e) { return H.err(e); } })()",
        )
        .await?;
    if codec == VideoCodec::H264 {
        ensure!(sent.is_null(), "sendSEIMessage threw {sent}");
        let mut got = Vec::new();
        while got.len() < 3 {
            let ev = engine_event(&mut events, "sei-message from web", |e| {
                matches!(e, ClientEvent::SeiMessage { .. })
            })
            .await?;
            if let ClientEvent::SeiMessage {
                user_id,
                payload_type,
                data,
                ..
            } = ev
            {
                ensure!(
                    user_id.as_str() == "web" && payload_type == 243,
                    "sei-message from {user_id}, type {payload_type}"
                );
                got.push(String::from_utf8_lossy(&data).into_owned());
            }
        }
        ensure!(got == ["sei 0", "sei 1", "sei 2"], "the engine got {got:?}");
    } else {
        ensure!(
            sent["code"] == json!(4097),
            "sendSEIMessage on VP8 video: {sent}"
        );
    }
    eprintln!(
        "[{tag}] times (ms): browser join round trip {}, publish → connected {}; engine \
         subscribe → connected {:.0}, → first decoded frame {}; decoded {v} video frames \
         {size:?}, {a} audio frames; browser sent {}",
        ms(&joined["ms"]),
        ms(&published["ms"]),
        connected.as_secs_f64() * 1e3,
        first.map_or_else(|| "?".to_owned(), |f| format!("{f:.0}")),
        local["web"]
    );
    engine.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_publishes_h264_and_the_engine_decodes_it() {
    browser_to_engine(VideoCodec::H264, 4101, true).await;
}

/// Wait until `node` sees two live nodes in its cluster (it places rooms on itself until it
/// has read the other's registration).
async fn two_nodes(node: &RunningServer, tag: &str) {
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while node.metrics().cluster_nodes.load(Ordering::Relaxed) < 2 {
        assert!(t.elapsed() < DEADLINE, "[{tag}] n2 never saw n1");
        tick.tick().await;
    }
}

/// Two nodes of a cluster on a real Redis: the room lives on n1 (the engine joined it there
/// first); the browser loads the SDK from n2 and joins through it, so its signalling (join,
/// publish, ICE restart) is proxied to n1 while its media goes straight to n1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_another_node_publishes_vp8_into_the_room_and_the_engine_decodes_it() {
    let _permit = media_permit().await;
    let tag = "browser via n2 → engine on n1";
    let redis = redis_server::Redis::start();
    let owner = RunningServer::spawn(redis.node(server_config("127.0.0.1:0"), "n1"))
        .expect("the server starts");
    let edge = RunningServer::spawn(redis.node(server_config("127.0.0.1:0"), "n2"))
        .expect("the server starts");
    two_nodes(&edge, tag).await;
    let browser = launch().await;
    let page = sdk_page(&browser, &edge)
        .await
        .unwrap_or_else(|e| panic!("[{tag}] page: {e:#}"));
    if let Err(e) = browser_to_engine_run(&owner, &page, VideoCodec::Vp8, 1890, true, tag).await {
        panic!("[{tag}] {e:#}\n{}", report(&[("web", &page)]).await);
    }
    assert_eq!(
        edge.metrics().proxied_links.load(Ordering::Relaxed),
        1,
        "[{tag}] the browser's signalling is proxied by n2"
    );
    assert_eq!(redis.owner(APP, 1890).as_deref(), Some("n1"));
}

/// A live room on n1 with an engine anchor publishing H.264; the browser loads the SDK from
/// n2 and joins as audience, so n2 serves it as the room's edge (`edge_after_audience = 0`):
/// the anchor's stream reaches n2 once over the node link and the browser subscribes to n2's
/// own media, decoding the H.264 it negotiated there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_in_the_audience_on_an_edge_node_decodes_the_anchors_h264() {
    let _permit = media_permit().await;
    let tag = "engine anchor on n1 → browser audience on the edge n2";
    let redis = redis_server::Redis::start();
    let node = |id: &str| {
        let mut c = redis.node(server_config("127.0.0.1:0"), id);
        c.cluster.edge_after_audience = 0;
        RunningServer::spawn(c).expect("the server starts")
    };
    let (origin, edge) = (node("n1"), node("n2"));
    two_nodes(&edge, tag).await;
    let browser = launch().await;
    let page = sdk_page(&browser, &edge)
        .await
        .unwrap_or_else(|e| panic!("[{tag}] page: {e:#}"));
    if let Err(e) = edge_audience_run(&origin, &edge, &page, 1891).await {
        panic!("[{tag}] {e:#}\n{}", report(&[("web", &page)]).await);
    }
    assert_eq!(redis.owner(APP, 1891).as_deref(), Some("n1"));
}

/// Wait until the page's client `web` has decoded 10 frames of the engine's video, 320×240;
/// its receive stats.
async fn web_decodes_engine_320x240(page: &Page) -> anyhow::Result<Value> {
    let stats = page
        .wait_for(
            "H.video('web', 'engine').then((v) => v && v.framesDecoded >= 10 && v)",
            DEADLINE,
        )
        .await
        .context("the browser decodes 10 frames")?;
    ensure!(
        (stats["frameWidth"].as_u64(), stats["frameHeight"].as_u64()) == (Some(320), Some(240)),
        "decoded frames are not 320×240: {stats}"
    );
    Ok(stats)
}

async fn edge_audience_run(
    origin: &RunningServer,
    edge: &RunningServer,
    page: &Page,
    room: u32,
) -> anyhow::Result<()> {
    let engine = create_client(engine_config(origin, "engine", Mode::Live))?;
    let local = create_stream(
        StreamConfig::default()
            .with_video_profile(VideoProfile::new(320, 240, 30, 400))
            .with_video_codec(VideoCodec::H264),
    )
    .await?;
    engine
        .join(JoinOptions::new(room).with_role(rtcroom::Role::Anchor))
        .await?;
    engine.publish(&local).await?;
    create(
        page,
        "web",
        json!({"mode": "live", "sdkAppId": APP, "userId": "web", "userSig": sig("web")}),
    )
    .await?;
    join(page, "web", json!({ "roomId": room, "role": "audience" })).await?;
    wait_event(
        page,
        "web",
        "stream-subscribed",
        json!({"userId": "engine"}),
        DEADLINE,
    )
    .await?;
    web_decodes_engine_320x240(page).await?;
    let down = page
        .eval("H.clients.web._links.get('down|engine|main').codec")
        .await?;
    ensure!(
        down.as_str() == Some("h264"),
        "the downlink negotiated {down}"
    );
    let (links, proxied) = (
        edge.metrics().cascade_links.load(Ordering::Relaxed),
        edge.metrics().proxied_links.load(Ordering::Relaxed),
    );
    ensure!(
        links == 1 && proxied == 0,
        "n2 serves the browser itself: {links} cascade link(s), {proxied} proxied"
    );
    ensure!(
        origin.metrics().cascade_edges.load(Ordering::Relaxed) == 1,
        "n1 feeds one edge"
    );

    // The browser goes on air (`switchRole('anchor')`): its session moves to n1, it is told
    // the anchor's stream was removed and added, subscribes again (now on n1's media), and
    // what it publishes then reaches the engine anchor on n1.
    let mut events = engine.events();
    let from = page.eval("H.events.length").await?;
    page.eval("H.clients.web.switchRole('anchor').then(() => true)")
        .await
        .context("switchRole('anchor') on the edge")?;
    wait_event(
        page,
        "web",
        "stream-subscribed",
        json!({"userId": "engine", "from": from}),
        DEADLINE,
    )
    .await?;
    ensure!(
        edge.metrics().proxied_links.load(Ordering::Relaxed) == 1,
        "n2 relays the browser's session to n1 once it is an anchor"
    );
    web_decodes_engine_320x240(page)
        .await
        .context("the browser decodes the anchor again, from n1")?;
    publish(page, "web").await?;
    let remote = engine_stream_added(&mut events, "web").await?;
    let frames = Arc::new(Frames::default());
    engine
        .subscribe(
            &remote,
            SubscribeOptions::new(frames.output()).with_jitter_latency(Duration::from_millis(20)),
        )
        .await?;
    frames.wait(10, 5).await?;
    let errors = page.eval("H.errors('web')").await?;
    ensure!(errors == json!([]), "errors on the page: {errors}");
    engine.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_publishes_vp8_and_the_engine_decodes_it() {
    browser_to_engine(VideoCodec::Vp8, 4102, false).await;
}

/* ------------------------------------------------------------------------------------------
 * 2. The browser publishes, `rtcroom record` writes a file
 * ---------------------------------------------------------------------------------------- */

/// What a Matroska/WebM file decodes to.
struct Decoded {
    video: usize,
    audio: usize,
    /// The decoded video sizes, in order of appearance.
    sizes: Vec<(u32, u32)>,
}

/// Decode a Matroska/WebM file: demux, decode, and count the buffers each fakesink gets
/// (`gst-launch-1.0 -v` prints one `last-message = chain` each, and every caps it takes).
fn decode_file(file: &Path) -> anyhow::Result<Decoded> {
    let out = Command::new("timeout")
        .arg("60")
        .arg("gst-launch-1.0")
        .arg("-v")
        .arg("filesrc")
        .arg(format!("location={}", file.display()))
        .args(["!", "matroskademux", "name=d"])
        .args(["d.video_0", "!", "queue", "!", "decodebin", "!"])
        .args(["fakesink", "name=v", "silent=false"])
        .args(["d.audio_0", "!", "queue", "!", "decodebin", "!"])
        .args(["fakesink", "name=a", "silent=false"])
        .output()
        .context("running gst-launch-1.0")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "gst-launch-1.0 failed ({}): {}\n{}",
        out.status,
        text.lines().rev().take(20).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |sink: &str| {
        text.lines()
            .filter(|l| l.contains(&format!("GstFakeSink:{sink}: last-message = chain")))
            .count()
    };
    let field = |line: &str, name: &str| -> Option<u32> {
        let rest = &line[line.find(&format!("{name}=(int)"))? + name.len() + 6..];
        rest[..rest.find(|c: char| !c.is_ascii_digit())?]
            .parse()
            .ok()
    };
    let mut sizes = Vec::new();
    for l in text
        .lines()
        .filter(|l| l.contains("GstFakeSink:v.GstPad:sink: caps = video/x-raw"))
    {
        if let (Some(w), Some(h)) = (field(l, "width"), field(l, "height"))
            && sizes.last() != Some(&(w, h))
        {
            sizes.push((w, h));
        }
    }
    Ok(Decoded {
        video: count("v"),
        audio: count("a"),
        sizes,
    })
}

/// The one file `rtcroom record` left in `out`: named for the browser's stream, finalised,
/// with `codec` video and Opus audio, over 2 s, decoding to enough frames. Returns its name,
/// duration and what it decodes to.
fn check_recording(
    out: &Path,
    codec: VideoCodec,
    format: &str,
) -> anyhow::Result<(String, f64, Decoded)> {
    let files: Vec<PathBuf> = std::fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    ensure!(
        files.len() == 1,
        "expected one recording in {}, got {files:?}",
        out.display()
    );
    let file = &files[0];
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    ensure!(
        name.starts_with("web_main_") && name.ends_with(&format!(".{format}")),
        "recording named {name}"
    );
    ensure!(
        matroska_finalised(file)?,
        "{name} was not finalised: its Matroska Segment has an unknown size (no duration, no \
         cues), so the muxer never got the end of stream before rtcroom record exited"
    );
    let support::Discovered {
        video,
        audio,
        duration,
        text,
    } = support::discover(file);
    ensure!(video && audio, "{name} lacks video or audio:\n{text}");
    ensure!(duration > 2.0, "{name} lasts {duration} s:\n{text}");
    let want = match codec {
        VideoCodec::H264 => "video #1: H.264",
        VideoCodec::Vp8 => "VP8",
    };
    ensure!(
        text.contains(want) && text.contains("Opus"),
        "{name} does not hold {want} and Opus:\n{text}"
    );
    let d = decode_file(file)?;
    ensure!(
        d.video >= 30 && d.audio >= 100,
        "{name} ({duration:.1} s) decodes to only {} video and {} audio frames",
        d.video,
        d.audio
    );
    // The profile switch during the recording: frames before it and 160×120 ones after.
    ensure!(
        d.sizes.len() >= 2 && d.sizes.last() == Some(&(160, 120)),
        "{name} should hold frames of the size before the switch to 120p and 160×120 after \
         it; it decodes to sizes {:?}",
        d.sizes
    );
    Ok((name.into_owned(), duration, d))
}

/// Whether a Matroska/WebM file was finalised: its Segment has a known size (the muxer
/// writes it, with the duration and the cues, when it gets the end of stream; a file whose
/// writer never finished has a Segment of "unknown" size).
fn matroska_finalised(file: &Path) -> anyhow::Result<bool> {
    let mut head = vec![0u8; 64];
    let n = std::io::Read::read(&mut std::fs::File::open(file)?, &mut head)?;
    head.truncate(n);
    // An EBML variable-size integer at `i`: (value, length, all value bits set).
    let vint = |i: usize| -> Option<(u64, usize, bool)> {
        let first = *head.get(i)?;
        let len = first.leading_zeros() as usize + 1;
        if len > 8 || i + len > head.len() {
            return None;
        }
        let mut v = u64::from(first) & (0xff >> len);
        for b in &head[i + 1..i + len] {
            v = (v << 8) | u64::from(*b);
        }
        Some((v, len, v == (1u64 << (7 * len)) - 1))
    };
    // EBML header (ID 1A45DFA3, 4 bytes), then the Segment (ID 18538067).
    let (ebml_size, l) = vint(4).map(|(v, l, _)| (v, l)).context("no EBML header")?;
    let seg = 4 + l + usize::try_from(ebml_size)?;
    ensure!(
        head.get(seg..seg + 4) == Some(&[0x18, 0x53, 0x80, 0x67][..]),
        "no Matroska Segment after the EBML header"
    );
    let (_, _, unknown) = vint(seg + 4).context("no Segment size")?;
    Ok(!unknown)
}

/// Wait (bounded; a 50 ms tick looks at the files) until a file under `dir` (the recorder's
/// partial recording) holds `bytes`.
async fn wait_recording_grows(dir: &Path, bytes: u64) -> anyhow::Result<()> {
    fn largest(dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => largest(&e.path()),
                _ => e.metadata().map(|m| m.len()).unwrap_or(0),
            })
            .max()
            .unwrap_or(0)
    }
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        if largest(dir) >= bytes {
            return Ok(());
        }
        ensure!(
            t.elapsed() < DEADLINE,
            "no recording of {bytes} bytes under {} within {DEADLINE:?}",
            dir.display()
        );
        tick.tick().await;
    }
}

/// A fresh temp dir for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtcroom-browser-sdk-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating a temp dir");
    d
}

/// Run `rtcroom record` for 8 s while the browser publishes, switching to 120p once the
/// recording is under way; check the file (finalised, both tracks, the codec, frames of both
/// sizes).
/// `live`: the browser joins live mode as anchor and the recorder keeps its default (live,
/// audience: invisible); else both are in rtc mode (`--mode rtc`).
async fn browser_to_recorder(codec: VideoCodec, room: u32, live: bool) {
    let _permit = media_permit().await;
    let tag = format!("browser→record {codec}");
    let server = start_server();
    let browser = launch().await;
    let page = sdk_page(&browser, &server)
        .await
        .unwrap_or_else(|e| panic!("[{tag}] page: {e:#}"));
    let dir = temp_dir(&format!("rec-{codec}"));
    if let Err(e) = browser_to_recorder_run(&server, &page, codec, room, live, &dir, &tag).await {
        panic!("[{tag}] {e:#}\n{}", report(&[("web", &page)]).await);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn browser_to_recorder_run(
    server: &RunningServer,
    page: &Page,
    codec: VideoCodec,
    room: u32,
    live: bool,
    dir: &Path,
    tag: &str,
) -> anyhow::Result<()> {
    let mode = if live { "live" } else { "rtc" };
    create(
        page,
        "web",
        json!({"mode": mode, "sdkAppId": APP, "userId": "web", "userSig": sig("web"),
               "videoCodec": sdk_codec(codec)}),
    )
    .await?;
    let joined = join(page, "web", json!({"roomId": room, "role": "anchor"})).await?;
    let published = publish(page, "web").await?;

    let format = match codec {
        VideoCodec::H264 => "mkv",
        VideoCodec::Vp8 => "webm",
    };
    let out = dir.join("out");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtcroom"));
    cmd.arg("record")
        .args(["--server", &server.ws_url()])
        .args(["--sdk-app-id", &APP.to_string()])
        .args(["--secret-key", KEY])
        .args(["--room-id", &room.to_string()])
        .arg("--out")
        .arg(&out)
        .args(["--format", format, "--duration", "8"])
        .env("RTCROOM_HOME", dir.join("home"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !live {
        cmd.args(["--mode", "rtc"]);
    }
    let child = cmd.spawn().context("starting rtcroom record")?;
    let pid = child.id();
    let t0 = Instant::now();
    // Once the recording is under way, the browser switches to 120p (TRTC's setVideoProfile
    // while publishing): the encoder's output changes size mid-recording, as it also does by
    // itself when Chromium adapts to bandwidth or CPU.
    let switched = async {
        // Enough that the file holds decodable frames of the first size: the keyframe that
        // answers the recorder's request comes a round trip and an encode after the first
        // packets (under load, 20 KB was sometimes only the deltas before it).
        wait_recording_grows(&out, 60_000).await?;
        let before = page.eval("H.clients.web.getLocalVideoStats()").await?;
        page.eval("H.locals.web.setVideoProfile('120p')").await?;
        page.wait_for(
            "H.clients.web.getLocalVideoStats().then((s) => \
                   s.web && s.web.frameWidth === 160 && s.web.frameHeight === 120 && s.web)",
            Duration::from_secs(5),
        )
        .await
        .context("the browser sends 160×120 after setVideoProfile('120p')")?;
        anyhow::Ok((before, t0.elapsed()))
    }
    .await;
    let switched = match switched {
        Ok(s) => s,
        Err(e) => {
            // SAFETY: a plain syscall on the child this test started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            return Err(e);
        }
    };
    let waited = tokio::time::timeout(
        Duration::from_secs(40),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let output = match waited {
        Ok(r) => r??,
        Err(_) => {
            // SAFETY: a plain syscall on the child this test started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            bail!("rtcroom record (8 s) did not exit within 40 s");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "rtcroom record failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let recorder_ran = t0.elapsed();
    if !live {
        // In rtc mode the recorder is a member like any other.
        wait_event(
            page,
            "web",
            "peer-join",
            json!({"userId": "recorder"}),
            Duration::from_secs(1),
        )
        .await?;
    }

    let (name, duration, decoded) = check_recording(&out, codec, format).with_context(|| {
        format!(
            "the browser sent {}×{} before the switch, at {:.1} s; rtcroom record printed:\n\
             {stdout}{stderr}",
            switched.0["web"]["frameWidth"],
            switched.0["web"]["frameHeight"],
            switched.1.as_secs_f64()
        )
    })?;
    eprintln!(
        "[{tag}] browser join round trip {} ms, publish → connected {} ms; rtcroom record \
         ran {:.1} s; switched to 120p {:.1} s in (sending {}×{} before); {name}: \
         {duration:.2} s, {} video frames of sizes {:?}, {} audio frames decoded",
        ms(&joined["ms"]),
        ms(&published["ms"]),
        recorder_ran.as_secs_f64(),
        switched.1.as_secs_f64(),
        switched.0["web"]["frameWidth"],
        switched.0["web"]["frameHeight"],
        decoded.video,
        decoded.sizes,
        decoded.audio
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_publishes_h264_and_rtcroom_record_writes_mkv() {
    browser_to_recorder(VideoCodec::H264, 4201, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_publishes_vp8_and_rtcroom_record_writes_webm() {
    browser_to_recorder(VideoCodec::Vp8, 4202, true).await;
}

/* ------------------------------------------------------------------------------------------
 * 3. The Rust engine publishes, the browser decodes
 * ---------------------------------------------------------------------------------------- */

/// The engine publishes the test pattern (320×240 @ 30 fps) in `codec`; the browser
/// (autoSubscribe on) gets `stream-subscribed`, plays it into a div and decodes it.
/// `publish_first`: the engine publishes before the browser joins (the browser learns of the
/// stream from its join answer), else after (from `stream-added`).
async fn engine_to_browser(codec: VideoCodec, room: u32, publish_first: bool) {
    let _permit = media_permit().await;
    let tag = format!("engine→browser {codec}");
    let server = start_server();
    let browser = launch().await;
    let page = sdk_page(&browser, &server)
        .await
        .unwrap_or_else(|e| panic!("[{tag}] page: {e:#}"));
    if let Err(e) = engine_to_browser_run(&server, &page, codec, room, publish_first, &tag).await {
        panic!("[{tag}] {e:#}\n{}", report(&[("web", &page)]).await);
    }
}

async fn engine_to_browser_run(
    server: &RunningServer,
    page: &Page,
    codec: VideoCodec,
    room: u32,
    publish_first: bool,
    tag: &str,
) -> anyhow::Result<()> {
    let engine = create_client(engine_config(server, "engine", Mode::Rtc))?;
    let local = create_stream(
        StreamConfig::default()
            .with_video_profile(VideoProfile::new(320, 240, 30, 400))
            .with_video_codec(codec),
    )
    .await?;
    engine.join(JoinOptions::new(room)).await?;
    if publish_first {
        engine.publish(&local).await?;
    }
    create(
        page,
        "web",
        json!({"mode": "rtc", "sdkAppId": APP, "userId": "web", "userSig": sig("web"),
               "enableSEI": true}),
    )
    .await?;
    let joined = join(page, "web", json!({ "roomId": room })).await?;
    if !publish_first {
        engine.publish(&local).await?;
    }
    let subscribed = wait_event(
        page,
        "web",
        "stream-subscribed",
        json!({"userId": "engine"}),
        DEADLINE,
    )
    .await?;
    ensure!(
        subscribed["codec"].as_str() == Some(sdk_codec(codec)),
        "getVideoCodec() of the engine's stream is {}, not {codec}",
        subscribed["codec"]
    );
    let stats = web_decodes_engine_320x240(page).await?;
    // Played: the <video> the SDK made shows the frames.
    let shown = page
        .wait_for(
            "(() => { const v = H.videoEl('web', 'engine'); \
               return v && v.videoWidth > 0 && !v.paused && [v.videoWidth, v.videoHeight]; })()",
            DEADLINE,
        )
        .await
        .context("the <video> plays")?;
    ensure!(shown == json!([320, 240]), "the <video> shows {shown}");
    let audio = page
        .wait_for(
            "H.audio('web', 'engine').then((a) => a && a.packetsReceived > 0 && a)",
            DEADLINE,
        )
        .await
        .context("the browser receives audio")?;
    let down = page
        .eval("H.clients.web._links.get('down|engine|main').codec")
        .await?;
    ensure!(
        down.as_str() == Some(sdk_codec(codec)),
        "the browser's downlink negotiated {down}, not {codec}"
    );
    let sub = page
        .wait_for(
            "(() => { const s = H.clients.web._timing.subscribe['engine/main']; \
               return s && s.firstFrameMs !== undefined && s; })()",
            DEADLINE,
        )
        .await?;
    // An SEI message from the engine's H.264 video reaches the browser's 'sei-message'.
    if codec == VideoCodec::H264 {
        engine
            .send_sei_message(b"from the engine".to_vec(), SeiOptions::default())
            .await?;
        let ev = wait_event(
            page,
            "web",
            "sei-message",
            json!({"userId": "engine"}),
            DEADLINE,
        )
        .await?;
        ensure!(
            ev["text"] == json!("from the engine")
                && ev["seiPayloadType"] == json!(243)
                && ev["isFromAuxiliary"] == json!(false),
            "sei-message {ev}"
        );
    }
    let errors = page.eval("H.errors('web')").await?;
    ensure!(errors == json!([]), "errors on the page: {errors}");
    eprintln!(
        "[{tag}] times (ms): browser join round trip {}; subscribe → connected {}, → first \
         decoded frame {}, → first rendered frame {}; decoded {stats}; audio {audio}",
        ms(&joined["ms"]),
        ms(&sub["ms"]),
        ms(&sub["firstFrameMs"]),
        ms(&sub["renderedMs"])
    );
    engine.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_publishes_h264_and_the_browser_decodes_it() {
    engine_to_browser(VideoCodec::H264, 4301, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_publishes_vp8_and_the_browser_decodes_it() {
    engine_to_browser(VideoCodec::Vp8, 4302, false).await;
}

/* ------------------------------------------------------------------------------------------
 * 4. Browser ↔ browser
 * ---------------------------------------------------------------------------------------- */

/// Alice (H.264) and bob (VP8), two pages, both publish; each decodes the other; alice's
/// mute/unmute reaches bob; alice leaves and bob gets `peer-leave` and `stream-removed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_call_each_other() {
    let _permit = media_permit().await;
    let server = start_server();
    let browser = launch().await;
    let a = sdk_page(&browser, &server).await.expect("page A");
    let b = sdk_page(&browser, &server).await.expect("page B");
    if let Err(e) = two_browsers_run(&a, &b).await {
        panic!(
            "[browser↔browser] {e:#}\n{}",
            report(&[("alice", &a), ("bob", &b)]).await
        );
    }
}

async fn two_browsers_run(a: &Page, b: &Page) -> anyhow::Result<()> {
    const ROOM: u32 = 4401;
    let pages = [(a, "alice", "bob", "h264"), (b, "bob", "alice", "vp8")];
    let mut times = Vec::new();
    for (page, me, _, codec) in pages {
        create(
            page,
            me,
            json!({"mode": "rtc", "sdkAppId": APP, "userId": me, "userSig": sig(me),
                   "videoCodec": codec}),
        )
        .await?;
        let j = join(page, me, json!({ "roomId": ROOM })).await?;
        let p = publish(page, me).await?;
        times.push(format!(
            "{me}: join round trip {} ms, publish → connected {} ms",
            ms(&j["ms"]),
            ms(&p["ms"])
        ));
    }
    for (page, me, other, _) in pages {
        let other_codec = if other == "alice" { "h264" } else { "vp8" };
        let ev = wait_event(
            page,
            me,
            "stream-subscribed",
            json!({ "userId": other }),
            DEADLINE,
        )
        .await?;
        ensure!(
            ev["codec"] == other_codec,
            "{me} sees {other}'s codec as {}",
            ev["codec"]
        );
        page.wait_for(
            &format!(
                "H.frames({}, {}).then((n) => n >= 5 && n)",
                json!(me),
                json!(other)
            ),
            DEADLINE,
        )
        .await
        .with_context(|| format!("{me} decodes {other}'s video"))?;
        let sub = page
            .wait_for(
                &format!(
                    "(() => {{ const s = H.clients[{}]._timing.subscribe[{}]; \
                       return s && s.firstFrameMs !== undefined && s; }})()",
                    json!(me),
                    json!(format!("{other}/main"))
                ),
                DEADLINE,
            )
            .await?;
        times.push(format!(
            "{me} ← {other}: subscribe → connected {} ms, → first decoded frame {} ms",
            ms(&sub["ms"]),
            ms(&sub["firstFrameMs"])
        ));
    }

    // Alice mutes and unmutes her camera: bob is told both times.
    let muted = a.eval("H.locals.alice.muteVideo()").await?;
    ensure!(muted == json!(true), "muteVideo() returned {muted}");
    wait_event(b, "bob", "mute-video", json!({"userId": "alice"}), DEADLINE).await?;
    let state = b.eval("H.clients.bob.getRemoteMutedState()").await?;
    ensure!(
        state[0]["userId"] == "alice" && state[0]["videoMuted"] == true,
        "bob's getRemoteMutedState() after alice muted: {state}"
    );
    a.eval("H.locals.alice.unmuteVideo()").await?;
    wait_event(
        b,
        "bob",
        "unmute-video",
        json!({"userId": "alice"}),
        DEADLINE,
    )
    .await?;

    // Alice leaves.
    a.eval("H.clients.alice.leave().then(() => H.clients.alice.connectionState)")
        .await?;
    let left = wait_event(b, "bob", "peer-leave", json!({"userId": "alice"}), DEADLINE).await?;
    ensure!(left["reason"] == 0, "peer-leave reason {}", left["reason"]);
    wait_event(
        b,
        "bob",
        "stream-removed",
        json!({"userId": "alice"}),
        DEADLINE,
    )
    .await?;
    for (page, me, _, _) in pages {
        let errors = page.eval(&format!("H.errors({})", json!(me))).await?;
        ensure!(errors == json!([]), "errors on {me}'s page: {errors}");
    }
    eprintln!("[browser↔browser] {}", times.join("; "));
    Ok(())
}

/// Alice's browser publishes a big and a small stream (Chromium simulcast, VP8); Bob's
/// browser receives the big one, switches to the small one and back
/// (`setRemoteVideoStreamType`), each switch reported by `video-layer-changed` and seen in
/// the decoded frame size, with frames decoded throughout; while Bob receives only the small
/// layer, Alice's big encoding is paused (dynacast).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_switches_between_the_big_and_the_small_stream_of_another() {
    let _permit = media_permit().await;
    let server = start_server();
    let browser = launch().await;
    let a = sdk_page(&browser, &server).await.expect("page A");
    let b = sdk_page(&browser, &server).await.expect("page B");
    if let Err(e) = small_stream_run(&a, &b).await {
        panic!(
            "[small stream] {e:#}\n{}",
            report(&[("alice", &a), ("bob", &b)]).await
        );
    }
}

async fn small_stream_run(a: &Page, b: &Page) -> anyhow::Result<()> {
    const ROOM: u32 = 4402;
    for (page, me) in [(a, "alice"), (b, "bob")] {
        create(
            page,
            me,
            json!({"mode": "rtc", "sdkAppId": APP, "userId": me, "userSig": sig(me),
                   "videoCodec": "vp8"}),
        )
        .await?;
    }
    let supported = a.eval("TRTC.isSmallStreamSupported()").await?;
    ensure!(
        supported == json!(true),
        "isSmallStreamSupported() = {supported}"
    );
    a.eval("H.clients.alice.enableSmallStream().then(() => true)")
        .await
        .context("enableSmallStream")?;
    a.eval("H.clients.alice.setSmallStreamProfile({width: 160, height: 120, bitrate: 100, frameRate: 15}) || true")
        .await?;
    join(a, "alice", json!({ "roomId": ROOM })).await?;
    publish(a, "alice").await?;
    join(b, "bob", json!({ "roomId": ROOM })).await?;
    wait_event(
        b,
        "bob",
        "stream-subscribed",
        json!({"userId": "alice"}),
        DEADLINE,
    )
    .await?;
    // Bob decodes frames of the layer (and keeps decoding): returns the time waited. The
    // small layer is 160 wide; the big one wider than 240 (640, or less while Chromium's own
    // estimate still limits it).
    let decodes = |small: bool| async move {
        let t = std::time::Instant::now();
        let fits = if small {
            "v.frameWidth <= 160"
        } else {
            "v.frameWidth > 240"
        };
        let v = b
            .wait_for(
                &format!(
                    "H.video('bob', 'alice').then((v) => v && {fits} && v.framesDecoded > 0 && v)"
                ),
                DEADLINE,
            )
            .await
            .with_context(|| format!("bob decodes alice's video ({fits})"))?;
        let frames = v["framesDecoded"].as_u64().unwrap_or(0);
        b.wait_for(
            &format!(
                "H.frames('bob', 'alice').then((n) => n >= {} && n)",
                frames + 5
            ),
            DEADLINE,
        )
        .await
        .with_context(|| format!("bob keeps decoding ({fits})"))?;
        anyhow::Ok(t.elapsed())
    };
    decodes(false).await.context("the big layer by default")?;
    let first = wait_event(
        b,
        "bob",
        "video-layer-changed",
        json!({"userId": "alice"}),
        DEADLINE,
    )
    .await?;
    ensure!(
        first["videoType"] == "big" && first["rid"] == "h",
        "first layer: {first}"
    );

    let mut switches = Vec::new();
    for (to, small, rid) in [("small", true, "l"), ("big", false, "h")] {
        let from = b.eval("H.events.length").await?;
        b.eval(&format!(
            "H.clients.bob.setRemoteVideoStreamType(H.remotes['bob/alice'], '{to}').then(() => true)"
        ))
        .await
        .with_context(|| format!("setRemoteVideoStreamType {to}"))?;
        let ev = wait_event(
            b,
            "bob",
            "video-layer-changed",
            json!({"userId": "alice", "videoType": to, "from": from}),
            DEADLINE,
        )
        .await?;
        ensure!(ev["rid"] == rid && ev["reason"] == "request", "{to}: {ev}");
        switches.push(format!("{to}: {:?}", decodes(small).await?));
        if to == "small" {
            // Nobody receives the big layer: alice's browser stops encoding it.
            a.wait_for(
                "(() => { const l = H.clients.alice._links.get('up|main');                    const s = l && l.pc && l.pc.getSenders().find((x) => x.track && x.track.kind === 'video');                    const e = s && s.getParameters().encodings.find((x) => x.rid === 'h');                    return e && e.active === false; })()",
                DEADLINE,
            )
            .await
            .context("alice pauses the big layer nobody receives")?;
        }
    }
    for (page, me) in [(a, "alice"), (b, "bob")] {
        let errors = page.eval(&format!("H.errors({})", json!(me))).await?;
        ensure!(errors == json!([]), "errors on {me}'s page: {errors}");
    }
    eprintln!(
        "[small stream] request → decoding the new size: {}",
        switches.join(", ")
    );
    Ok(())
}

/// Chromium publishes a big and a small stream (`enableSmallStream`, browser simulcast,
/// VP8); the Rust engine subscribes, gets the big layer, switches to the small one and
/// back (`set_remote_video_stream_type`), each switch reported (`VideoLayerChanged`) and seen
/// in the decoded frame size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browsers_small_stream_reaches_the_engine_which_switches_layers() {
    let _permit = media_permit().await;
    let server = start_server();
    let browser = launch().await;
    let page = sdk_page(&browser, &server).await.expect("page");
    if let Err(e) = browser_small_stream_to_engine(&server, &page).await {
        panic!(
            "[browser small stream → engine] {e:#}\n{}",
            report(&[("web", &page)]).await
        );
    }
}

async fn browser_small_stream_to_engine(server: &RunningServer, page: &Page) -> anyhow::Result<()> {
    const ROOM: u32 = 4403;
    create(
        page,
        "web",
        json!({"mode": "rtc", "sdkAppId": APP, "userId": "web", "userSig": sig("web"),
               "videoCodec": "vp8"}),
    )
    .await?;
    page.eval("H.clients.web.enableSmallStream().then(() => true)")
        .await
        .context("enableSmallStream")?;
    join(page, "web", json!({ "roomId": ROOM })).await?;
    publish(page, "web").await?;
    let engine = create_client(engine_config(server, "engine", Mode::Rtc))?;
    let mut events = engine.events();
    engine.join(JoinOptions::new(ROOM)).await?;
    let remote = engine_stream_added(&mut events, "web").await?;
    let rids: Vec<&str> = remote.layers.iter().map(|l| l.rid.as_str()).collect();
    ensure!(
        rids == ["l", "h"],
        "the layers announced: {:?}",
        remote.layers
    );
    let frames = Arc::new(Frames::default());
    engine
        .subscribe(
            &remote,
            SubscribeOptions::new(frames.output()).with_jitter_latency(Duration::from_millis(20)),
        )
        .await?;
    // Frames of the layer decoded, then 10 more: the small layer is 160 wide; the big one
    // is wider than 240 (640, or less while Chromium's own estimate still limits it).
    let decodes = |small: bool| {
        let frames = frames.clone();
        let fits = move |size: Option<(u32, u32)>| {
            size.is_some_and(|(w, _)| if small { w <= 160 } else { w > 240 })
        };
        async move {
            let t = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !fits(*frames.size.lock().unwrap()) {
                ensure!(
                    t.elapsed() < DEADLINE,
                    "no frame of the {} layer within {DEADLINE:?}; last size {:?}",
                    if small { "small" } else { "big" },
                    frames.size.lock().unwrap()
                );
                tick.tick().await;
            }
            let (v, a) = frames.counts();
            frames.wait(v + 10, a).await?;
            ensure!(
                fits(*frames.size.lock().unwrap()),
                "the layer went on changing: {:?}",
                frames.size.lock().unwrap()
            );
            anyhow::Ok(t.elapsed())
        }
    };
    let layer = |e: &ClientEvent, want: VideoStreamType| matches!(e, ClientEvent::VideoLayerChanged { video_type, .. } if *video_type == want);
    engine_event(&mut events, "the big layer", |e| {
        layer(e, VideoStreamType::Big)
    })
    .await?;
    decodes(false).await.context("the big layer")?;
    let mut took = Vec::new();
    for (to, small) in [
        (VideoStreamType::Small, true),
        (VideoStreamType::Big, false),
    ] {
        engine
            .set_remote_video_stream_type(&remote.user_id, remote.stream_type, to)
            .await?;
        let ev = engine_event(&mut events, "the layer change", |e| layer(e, to)).await?;
        ensure!(
            matches!(
                &ev,
                ClientEvent::VideoLayerChanged {
                    reason: LayerChangeReason::Request,
                    ..
                }
            ),
            "{ev:?}"
        );
        took.push(format!("{to:?} {:?}", decodes(small).await?));
    }
    let errors = page.eval("H.errors('web')").await?;
    ensure!(errors == json!([]), "errors on the page: {errors}");
    eprintln!(
        "[browser small stream → engine] switch → new size decoded: {}",
        took.join(", ")
    );
    let _ = engine.leave().await;
    Ok(())
}

/* ------------------------------------------------------------------------------------------
 * 5. The seed's sample code, unchanged
 * ---------------------------------------------------------------------------------------- */

/// Verbatim from Tencent's "进入房间" guide (the seed), step 1.
const SEED_CREATE_RTC: &str = "// 实时通话模式下创建客户端对象
const client = TRTC.createClient({
  mode: 'rtc',
  sdkAppId,
  userId,
  userSig
});";

const SEED_CREATE_LIVE: &str = "// 互动直播模式下创建客户端对象
const client = TRTC.createClient({
  mode: 'live',
  sdkAppId,
  userId,
  userSig
});";

/// Step 2, the three forms.
const SEED_JOIN_PROMISE: &str = "// 使用 Promise 的语法
client
  .join({ roomId })
  .then(() => {
    console.log('进房成功');
  })
  .catch(error => {
    console.error('进房失败，请稍后再试' + error);
  });";

const SEED_JOIN_AWAIT: &str = "// 建议使用 async/await 的语法，实现同样的效果
try {
  await client.join({ roomId });
  console.log('进房成功');
} catch (error) {
  console.error('进房失败，请稍后再试' + error);
}";

const SEED_JOIN_ANCHOR: &str = "// 以主播角色进入房间
try {
  await client.join({ 
    roomId,
    role: 'anchor' 
  });
  console.log('进房成功');
} catch (error) {
  console.error('进房失败，请稍后再试' + error);
}";

/// Records what the samples log (`console.log` / `console.error`, still printed as well),
/// attributed to the case that runs.
const SEED_LOG_JS: &str = r#"
window.__seed = { case: null, logs: [], errors: [], clients: {} };
(() => {
  const log = console.log.bind(console);
  const error = console.error.bind(console);
  const text = (a) => a.map((x) => String(x)).join(' ');
  console.log = (...a) => { __seed.logs.push({ case: __seed.case, text: text(a) }); log(...a); };
  console.error = (...a) => { __seed.errors.push({ case: __seed.case, text: text(a) }); error(...a); };
})();
true
"#;

/// Each form of the guide's join, in rtc and in live mode, runs in a page with `sdkAppId`,
/// `userId`, `userSig` and `roomId` defined, and logs '进房成功' (never the failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_sample_code_runs_unchanged() {
    // The copies here are the guide's text, when the guide is at hand.
    if let Ok(seed) = std::fs::read_to_string(SEED) {
        for s in [
            SEED_CREATE_RTC,
            SEED_CREATE_LIVE,
            SEED_JOIN_PROMISE,
            SEED_JOIN_AWAIT,
            SEED_JOIN_ANCHOR,
        ] {
            assert!(seed.contains(s), "not verbatim in {SEED}:\n{s}");
        }
    }
    let server = start_server();
    let browser = launch().await;
    let page = sdk_page(&browser, &server).await.expect("page");
    page.eval(SEED_LOG_JS).await.expect("console recorder");
    let mut results = Vec::new();
    for (mode, create_snippet, room) in [
        ("rtc", SEED_CREATE_RTC, 3364),
        ("live", SEED_CREATE_LIVE, 3365),
    ] {
        for (form, join_snippet) in [
            ("promise", SEED_JOIN_PROMISE),
            ("await", SEED_JOIN_AWAIT),
            ("anchor", SEED_JOIN_ANCHOR),
        ] {
            let case = format!("{mode}-{form}");
            let user = format!("seed_{mode}_{form}");
            // The snippets run inside an async function (they use `await` and each declares
            // `const client`), after the variables they expect.
            let js = format!(
                "(() => {{
  __seed.case = {case};
  const sdkAppId = {APP};
  const userId = {user};
  const userSig = {sig};
  const roomId = {room};
  (async () => {{
{create_snippet}
__seed.clients[{case}] = client;
{join_snippet}
  }})().catch((e) => __seed.errors.push({{ case: {case}, text: 'uncaught: ' + e }}));
  return true;
}})()",
                case = json!(case),
                user = json!(user),
                sig = json!(sig(&user)),
            );
            page.eval(&js)
                .await
                .unwrap_or_else(|e| panic!("{case}: {e:#}"));
            let outcome = page
                .wait_for(
                    &format!(
                        "(() => {{ const c = {0}; \
                           const ok = __seed.logs.some((l) => l.case === c && l.text === '进房成功'); \
                           const bad = __seed.errors.filter((l) => l.case === c); \
                           return (ok || bad.length) && {{ ok, bad, \
                             state: __seed.clients[c] && __seed.clients[c].connectionState, \
                             ms: __seed.clients[c] && __seed.clients[c]._timing.join.ms }}; }})()",
                        json!(case)
                    ),
                    DEADLINE,
                )
                .await
                .unwrap_or_else(|e| panic!("{case}: {e:#}"));
            assert!(
                outcome["ok"] == true && outcome["bad"] == json!([]),
                "{case}: {outcome}"
            );
            assert_eq!(outcome["state"], "CONNECTED", "{case}: {outcome}");
            results.push(format!("{case} {} ms", ms(&outcome["ms"])));
            page.eval(&format!("__seed.clients[{}].leave()", json!(case)))
                .await
                .unwrap_or_else(|e| panic!("{case} leaves: {e:#}"));
        }
    }
    let failures: Vec<String> = page
        .console()
        .into_iter()
        .filter(|l| l.contains("进房失败"))
        .collect();
    assert!(failures.is_empty(), "failure logged: {failures:?}");
    eprintln!("[seed] joined (join round trip): {}", results.join(", "));
}

/* ------------------------------------------------------------------------------------------
 * 6. The shared parameter table
 * ---------------------------------------------------------------------------------------- */

/// A `userSig` directive of the table as a real ticket for this test's server.
fn table_sig(directive: &str, app: u64, user: &str) -> String {
    let t = now();
    match directive {
        "valid" => gen_user_sig(app, KEY, user, 86_400, t),
        "wrong-key" => gen_user_sig(app, "not-the-server-key", user, 86_400, t),
        "other-user" => gen_user_sig(app, KEY, "someone_else", 86_400, t),
        "expired" => gen_user_sig(app, KEY, user, 60, t - 3_600),
        other => panic!("unknown userSig directive {other:?}"),
    }
}

/// Every case of `tests/data/client-params.json` through the SDK: the config as given (UserSig
/// directives replaced with real tickets), `join` cases expected to fail before the network
/// pointed at a dead address, and the outcome compared with the table's code / extraCode /
/// stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_of_the_parameter_table_gets_its_code() {
    let cases: Vec<Value> = serde_json::from_str(TABLE).expect("the table is JSON");
    let server = start_server();
    let browser = launch().await;
    let page = sdk_page(&browser, &server).await.expect("page");
    let mut problems = Vec::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let t0 = Instant::now();
    for case in &cases {
        let name = case["name"].as_str().expect("every case has a name");
        let stage = case["where"].as_str().unwrap_or("ok");
        let mut config = case["createClient"].clone();
        if let Some(directive) = config["userSig"]["$sig"].as_str() {
            let app = config["sdkAppId"].as_u64().expect("a numeric sdkAppId");
            let user = config["userId"].as_str().expect("a userId").to_owned();
            config["userSig"] = json!(table_sig(directive, app, &user));
        }
        if stage == "join" && config.get("serverUrl").is_none() {
            config["serverUrl"] = json!(DEAD_URL);
        }
        let got = page
            .eval(&format!("H.tableCase({config}, {})", case["join"]))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let ok = match &case["expect"] {
            Value::String(s) if s == "ok" => got["ok"] == true,
            Value::Object(e) => {
                let want_stage = if stage == "createClient" {
                    "createClient"
                } else {
                    "join"
                };
                got["stage"] == want_stage
                    && got["isRtcError"] == true
                    && got["name"] == "RtcError"
                    && got["code"] == e["code"]
                    && got.get("extraCode").unwrap_or(&Value::Null)
                        == e.get("extraCode").unwrap_or(&Value::Null)
            }
            other => panic!("{name}: expect must be \"ok\" or an object, got {other}"),
        };
        *counts.entry(stage.to_owned()).or_default() += 1;
        if !ok {
            problems.push(format!(
                "{name}: expected {} at {stage}, got {got}",
                case["expect"]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} cases disagree:\n{}\n--- console ---\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n"),
        page.console_tail(40)
    );
    assert!(
        cases.len() >= 50,
        "the table has only {} cases",
        cases.len()
    );
    eprintln!(
        "[params] {} cases ({counts:?}) in {:.1} s",
        cases.len(),
        t0.elapsed().as_secs_f64()
    );
}

/* ------------------------------------------------------------------------------------------
 * 7. A server restart
 * ---------------------------------------------------------------------------------------- */

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free port")
        .port()
}

/// Alice and bob (two pages) call each other; the server stops and a new one starts on the
/// same port; both pages go RECONNECTING → CONNECTED, publish and subscribe again by
/// themselves, and each decodes the other again (on new peer connections, frames growing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_survives_a_server_restart() {
    let _permit = media_permit().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let first = RunningServer::spawn(server_config(&listen)).expect("the first server starts");
    let browser = launch().await;
    let a = sdk_page(&browser, &first).await.expect("page A");
    let b = sdk_page(&browser, &first).await.expect("page B");
    let mut second = None;
    if let Err(e) = restart_run(&a, &b, first, &listen, &mut second).await {
        panic!(
            "[restart] {e:#}\n{}",
            report(&[("alice", &a), ("bob", &b)]).await
        );
    }
}

async fn restart_run(
    a: &Page,
    b: &Page,
    first: RunningServer,
    listen: &str,
    second: &mut Option<RunningServer>,
) -> anyhow::Result<()> {
    const ROOM: u32 = 4701;
    let pages = [(a, "alice", "bob"), (b, "bob", "alice")];
    for (page, me, _) in pages {
        create(
            page,
            me,
            json!({"mode": "rtc", "sdkAppId": APP, "userId": me, "userSig": sig(me)}),
        )
        .await?;
        join(page, me, json!({ "roomId": ROOM })).await?;
        publish(page, me).await?;
    }
    for (page, me, other) in pages {
        page.wait_for(
            &format!(
                "H.frames({}, {}).then((n) => n >= 5 && n)",
                json!(me),
                json!(other)
            ),
            DEADLINE,
        )
        .await
        .with_context(|| format!("{me} decodes {other} before the restart"))?;
        // Remember the peer connections, to tell the new ones apart.
        page.eval(&format!(
            "(() => {{ const c = H.clients[{0}]; \
               window.__before = {{ up: c._links.get('up|main').pc, \
                 down: c._links.get('down|' + {1} + '|main').pc, events: H.events.length }}; \
               return true; }})()",
            json!(me),
            json!(other)
        ))
        .await?;
    }

    let stopped_at = Instant::now();
    tokio::task::spawn_blocking(move || first.stop())
        .await?
        .context("stopping the first server")?;
    let stop_ms = stopped_at.elapsed().as_secs_f64() * 1e3;
    for (page, me, _) in pages {
        page.wait_for(
            &format!(
                "H.find({}, 'connection-state-changed', {{ state: 'RECONNECTING', from: __before.events }})",
                json!(me)
            ),
            DEADLINE,
        )
        .await
        .with_context(|| format!("{me} goes RECONNECTING"))?;
    }
    let restarted_at = Instant::now();
    *second =
        Some(RunningServer::spawn(server_config(listen)).context("the second server starts")?);
    let mut times = vec![format!("stopping the server took {stop_ms:.0} ms")];
    for (page, me, other) in pages {
        page.wait_for(
            &format!(
                "(() => {{ const r = H.find({0}, 'connection-state-changed', \
                     {{ state: 'RECONNECTING', from: __before.events }}); \
                   return r && H.find({0}, 'connection-state-changed', \
                     {{ state: 'CONNECTED', from: H.events.indexOf(r) }}); }})()",
                json!(me)
            ),
            DEADLINE,
        )
        .await
        .with_context(|| format!("{me} is CONNECTED again"))?;
        // Published again by itself: a new, connected uplink.
        page.wait_for(
            &format!(
                "(() => {{ const l = H.clients[{}]._links.get('up|main'); \
                   return l && l.state === 'up' && l.pc && l.pc !== __before.up \
                     && l.pc.connectionState === 'connected'; }})()",
                json!(me)
            ),
            DEADLINE,
        )
        .await
        .with_context(|| format!("{me} publishes again"))?;
        // Subscribed again by itself: a new downlink that decodes, more and more.
        let down = format!(
            "H.clients[{}]._links.get('down|' + {} + '|main')",
            json!(me),
            json!(other)
        );
        let n = page
            .wait_for(
                &format!(
                    "(() => {{ const l = {down}; \
                       return l && l.state === 'up' && l.pc && l.pc !== __before.down \
                         && H.frames({0}, {1}).then((n) => n >= 5 && n); }})()",
                    json!(me),
                    json!(other)
                ),
                DEADLINE,
            )
            .await
            .with_context(|| format!("{me} decodes {other} after the restart"))?;
        let n = n.as_u64().unwrap_or(0);
        page.wait_for(
            &format!(
                "H.frames({}, {}).then((m) => m >= {} && m)",
                json!(me),
                json!(other),
                n + 10
            ),
            DEADLINE,
        )
        .await
        .with_context(|| format!("{me}'s frames from {other} keep growing"))?;
        // The page plays the new tracks (the same element, or the one made for a stream
        // announced anew) and paints new frames. Only the tab in front is painted.
        page.call("Page.bringToFront", json!({})).await?;
        page.wait_for(
            &format!("H.painted({}, {})", json!(me), json!(other)),
            DEADLINE,
        )
        .await
        .with_context(|| format!("{me}'s page paints {other}'s video after the restart"))?;
        let r = page
            .eval(&format!(
                "(() => {{ const c = H.clients[{}]; return {{ reconnects: c._timing.reconnects, \
                   resub: c._timing.subscribe[{}], \
                   events: H.events.slice(__before.events).map((e) => e.event + \
                     (e.userId ? ' ' + e.userId : '') + (e.state ? ' ' + e.state : '')) }}; }})()",
                json!(me),
                json!(format!("{other}/main"))
            ))
            .await?;
        let rec = &r["reconnects"][0];
        times.push(format!(
            "{me}: lost ({}) → re-joined {} ms after {} attempt(s); re-subscribed → first frame {} ms; \
             events since: {}",
            rec["reason"].as_str().unwrap_or("?"),
            ms(&rec["ms"]),
            rec["attempts"],
            ms(&r["resub"]["firstFrameMs"]),
            r["events"]
        ));
    }
    times.push(format!(
        "media in both directions {:.1} s after the new server started",
        restarted_at.elapsed().as_secs_f64()
    ));
    for (page, me, _) in pages {
        let errors = page.eval(&format!("H.errors({})", json!(me))).await?;
        ensure!(errors == json!([]), "errors on {me}'s page: {errors}");
    }
    eprintln!("[restart] {}", times.join("; "));
    Ok(())
}

/* ------------------------------------------------------------------------------------------
 * The ES module, and checkSystemRequirements
 * ---------------------------------------------------------------------------------------- */

/// `import TRTC from '/sdk/trtc.mjs'` in a module script: the default export is the SDK,
/// `checkSystemRequirements()` resolves with `result: true`, and a client made there joins
/// (the module finds the server from the page's origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_es_module_works_and_chromium_meets_the_requirements() {
    let server = start_server();
    let browser = launch().await;
    let page = browser.new_page().await.expect("page");
    page.goto(&format!("{}/healthz", server.http_url()))
        .await
        .expect("goto");
    let module = format!(
        "import TRTC from '/sdk/trtc.mjs';
try {{
  const requirements = await TRTC.checkSystemRequirements();
  const client = TRTC.createClient({{ mode: 'rtc', sdkAppId: {APP}, userId: 'module_user', userSig: {sig} }});
  await client.join({{ roomId: 4801 }});
  const state = client.connectionState;
  await client.leave();
  window.__module.done({{ version: TRTC.VERSION, isGlobal: TRTC === globalThis.TRTC,
    requirements, state, serverUrl: client._cfg.serverUrl, joinMs: client._timing.join.ms }});
}} catch (e) {{
  window.__module.fail(e);
}}",
        sig = json!(sig("module_user"))
    );
    let js = format!(
        "new Promise((resolve, reject) => {{
  window.__module = {{ done: resolve, fail: (e) => reject(new Error('module: ' + (e && e.message || e))) }};
  const s = document.createElement('script');
  s.type = 'module';
  s.onerror = () => reject(new Error('the module script failed to load'));
  s.textContent = {};
  (document.body || document.documentElement).appendChild(s);
}})",
        json!(module)
    );
    let got = page.eval(&js).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        got["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("4.15.22-rtcroom.")),
        "{got}"
    );
    assert_eq!(got["isGlobal"], true, "{got}");
    let req = &got["requirements"];
    assert_eq!(req["result"], true, "checkSystemRequirements(): {req}");
    for k in [
        "isBrowserSupported",
        "isWebRTCSupported",
        "isMediaDevicesSupported",
        "isH264EncodeSupported",
        "isH264DecodeSupported",
        "isVp8EncodeSupported",
        "isVp8DecodeSupported",
    ] {
        assert_eq!(req["detail"][k], true, "{k} in {req}");
    }
    assert_eq!(got["state"], "CONNECTED", "{got}");
    assert_eq!(got["serverUrl"], json!(server.ws_url()), "{got}");
    eprintln!(
        "[module] {} via /sdk/trtc.mjs, server {} (from the page's origin), join round trip {} \
         ms; checkSystemRequirements: {}",
        got["version"].as_str().unwrap_or("?"),
        got["serverUrl"].as_str().unwrap_or("?"),
        ms(&got["joinMs"]),
        req["detail"]
    );
}

/* ------------------------------------------------------------------------------------------
 * Custom messages between the browser SDK and the Rust engine
 * ---------------------------------------------------------------------------------------- */

/// `sendCustomMessage({cmdId, data})` from the browser reaches an engine client as
/// `CustomMessage`, the engine's `send_custom_message` reaches the browser as
/// `custom-message` with the bytes intact, and a bad `cmdId` fails in the browser with TRTC's
/// INVALID_PARAMETER 5005.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_messages_between_the_browser_and_the_engine() {
    let server = start_server();
    let browser = launch().await;
    let page = sdk_page(&browser, &server).await.expect("page");
    if let Err(e) = custom_messages_run(&page, &server).await {
        panic!(
            "[custom messages] {e:#}\n{}",
            report(&[("web", &page)]).await
        );
    }
}

async fn custom_messages_run(page: &Page, server: &RunningServer) -> anyhow::Result<()> {
    const ROOM: u32 = 4501;
    create(
        page,
        "web",
        json!({"mode": "rtc", "sdkAppId": APP, "userId": "web", "userSig": sig("web")}),
    )
    .await?;
    page.eval(
        "H.clients.web.on('custom-message', (p) => H.events.push({client: 'web', \
         event: 'custom-message', userId: p.userId, cmdId: p.cmdId, seq: p.seq, \
         text: new TextDecoder().decode(p.data)})) || true",
    )
    .await?;
    join(page, "web", json!({ "roomId": ROOM })).await?;
    let engine = create_client(engine_config(server, "rust", Mode::Rtc))?;
    let mut events = engine.events();
    tokio::time::timeout(DEADLINE, engine.join(JoinOptions::new(ROOM)))
        .await
        .context("engine join timed out")??;
    // Engine → browser.
    tokio::time::timeout(
        DEADLINE,
        engine.send_custom_message(4, "from rust ✓".as_bytes()),
    )
    .await
    .context("send timed out")??;
    let got = wait_event(
        page,
        "web",
        "custom-message",
        json!({"userId": "rust"}),
        DEADLINE,
    )
    .await?;
    ensure!(
        got["cmdId"] == 4 && got["seq"] == 1 && got["text"] == "from rust ✓",
        "the browser got {got}"
    );
    // Browser → engine.
    page.eval(
        "H.clients.web.sendCustomMessage({cmdId: 7, \
         data: new TextEncoder().encode('from web').buffer}).then(() => true)",
    )
    .await
    .context("the browser sends")?;
    let e = engine_event(&mut events, "a custom message", |e| {
        matches!(e, ClientEvent::CustomMessage { .. })
    })
    .await?;
    let ClientEvent::CustomMessage {
        user_id,
        cmd_id,
        seq,
        data,
    } = e
    else {
        bail!("not a custom message");
    };
    ensure!(
        (user_id.as_str(), cmd_id, seq, data.as_slice()) == ("web", 7, 1, b"from web".as_slice()),
        "the engine got {user_id} {cmd_id} {seq} {data:?}"
    );
    // A bad command id fails in the browser, with TRTC's code.
    let err = page
        .eval(
            "H.clients.web.sendCustomMessage({cmdId: 0, data: new Uint8Array([1])})\
             .then(() => null, (e) => H.err(e))",
        )
        .await?;
    ensure!(
        err["code"] == 0x1000 && err["extraCode"] == 5005,
        "cmdId 0 gave {err}"
    );
    Ok(())
}
