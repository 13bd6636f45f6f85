//! Real headless Chromium against a real rtcroom server, with raw WebRTC (no SDK): page A joins
//! and publishes camera + microphone (Chromium's fake devices), page B joins and subscribes,
//! and B must decode A's video and receive its audio, in the codec A preferred.
//!
//! Measured times are printed (`cargo test --test browser_raw -- --nocapture`); the asserts
//! are only generous sanity bounds. Needs Chromium (`scripts/setup-debian.sh`).

mod support;

use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use rtcroom_protocol::usersig::gen_user_sig;
use rtcroom_server::{RunningServer, ServerConfig};
use serde_json::{Value, json};
use support::browser::{Browser, Page};

const APP: u32 = 1_400_000_000;
const KEY: &str = "browser-test-key";
const ROOM: &str = "1234";
/// Bound on every wait in these tests.
const DEADLINE: Duration = Duration::from_secs(15);
/// Sanity bound asserted on each measured time (targets are for benchmarks, not tests).
const SANE_MS: f64 = 10_000.0;

/// The raw-WebRTC client injected into each page, as `window.rt`.
const CLIENT_JS: &str = r#"
window.rt = (() => {
  const rt = { nextId: 1, waiting: new Map(), events: [] };
  rt.fail = (msg) => { throw new Error(msg); };

  rt.connect = (url) => new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    rt.ws = ws;
    ws.onopen = () => resolve(true);
    ws.onerror = () => reject(new Error('WebSocket error on ' + url));
    ws.onclose = (e) => {
      rt.closed = { code: e.code, reason: e.reason };
      console.warn('signalling socket closed', e.code, e.reason);
      for (const w of rt.waiting.values()) w.reject(new Error('socket closed: ' + e.code));
      rt.waiting.clear();
    };
    ws.onmessage = (m) => {
      const f = JSON.parse(m.data);
      if (f.type === 'reply') {
        const w = rt.waiting.get(f.id);
        if (!w) { console.warn('reply nobody waits for', m.data); return; }
        rt.waiting.delete(f.id);
        if (f.error) w.reject(new Error('request ' + w.type + ' failed: ' + JSON.stringify(f.error)));
        else w.resolve(f.data ?? null);
      } else if (f.type === 'event') {
        rt.events.push(f);
      } else if (f.type === 'events') {
        for (const e of f.events) rt.events.push(e);
      }
    };
  });

  rt.request = (msg) => new Promise((resolve, reject) => {
    const id = rt.nextId++;
    rt.waiting.set(id, { resolve, reject, type: msg.type });
    rt.ws.send(JSON.stringify({ v: 1, id, msg }));
  });

  rt.join = async (url, join) => {
    await rt.connect(url);
    const t0 = performance.now();
    const reply = await rt.request(Object.assign({ type: 'join' }, join));
    const ms = performance.now() - t0;
    rt.heartbeat = setInterval(() => rt.request({ type: 'heartbeat' }).catch(() => {}), 2000);
    return { ms, reply };
  };

  // Video codecs with `codec` first: for H.264 packetization-mode=1 before mode 0, and the
  // constrained-baseline profile (42e0..) first among those.
  rt.prefer = (codecs, codec) => {
    const want = 'video/' + codec.toLowerCase();
    const rank = (c) => {
      if (c.mimeType.toLowerCase() !== want) return 9;
      if (codec !== 'H264') return 0;
      const f = c.sdpFmtpLine || '';
      if (!/packetization-mode=1/.test(f)) return 4;
      if (/profile-level-id=42e0/.test(f)) return 0;
      if (/profile-level-id=42/.test(f)) return 1;
      return 2;
    };
    return codecs.map((c, i) => [rank(c), i, c]).sort((a, b) => a[0] - b[0] || a[1] - b[1])
      .map((x) => x[2]);
  };

  const watch = (p) => {
    p.states = [];
    p.pc.onconnectionstatechange = () => {
      const s = p.pc.connectionState;
      p.states.push(s + '@' + Math.round(performance.now() - p.t0));
      if (s === 'connected' && p.connectedAt === undefined) p.connectedAt = performance.now();
    };
    p.pc.oniceconnectionstatechange = () =>
      p.states.push('ice:' + p.pc.iceConnectionState + '@' + Math.round(performance.now() - p.t0));
  };

  // Wait-for helper: ms from the request to 'connected', or throw once the pc failed.
  rt.connected = (which) => {
    const p = rt[which];
    if (p.connectedAt !== undefined) return { ms: p.connectedAt - p.t0 };
    const s = p.pc.connectionState;
    if (s === 'failed' || s === 'closed') rt.fail(which + ' peer connection ' + s + ': ' + p.states.join(', '));
    return false;
  };

  rt.publish = async (codec) => {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    const p = rt.pub = { pc: new RTCPeerConnection(), t0: performance.now() };
    watch(p);
    p.pc.addTransceiver(stream.getAudioTracks()[0], { direction: 'sendonly', streams: [stream] });
    const video = p.pc.addTransceiver(stream.getVideoTracks()[0], { direction: 'sendonly', streams: [stream] });
    let caps = RTCRtpSender.getCapabilities('video').codecs;
    try {
      video.setCodecPreferences(rt.prefer(caps, codec));
    } catch (e) {
      caps = RTCRtpReceiver.getCapabilities('video').codecs;
      video.setCodecPreferences(rt.prefer(caps, codec));
    }
    await p.pc.setLocalDescription(await p.pc.createOffer());
    p.offer = p.pc.localDescription.sdp;
    p.t0 = performance.now();
    const r = await rt.request({ type: 'publish', streamType: 'main', hasAudio: true, hasVideo: true, sdp: p.offer });
    p.answerMs = performance.now() - p.t0;
    p.answer = r.sdp;
    await p.pc.setRemoteDescription({ type: 'answer', sdp: r.sdp });
    return { answerMs: p.answerMs };
  };

  rt.subscribe = async (userId) => {
    const s = rt.sub = { pc: new RTCPeerConnection(), t0: performance.now() };
    watch(s);
    s.pc.ontrack = (e) => {
      if (e.track.kind !== 'video') return;
      const v = document.createElement('video');
      v.muted = true;
      v.autoplay = true;
      v.srcObject = new MediaStream([e.track]);
      (document.body || document.documentElement).appendChild(v);
    };
    s.pc.addTransceiver('audio', { direction: 'recvonly' });
    s.pc.addTransceiver('video', { direction: 'recvonly' });
    await s.pc.setLocalDescription(await s.pc.createOffer());
    s.offer = s.pc.localDescription.sdp;
    s.t0 = performance.now();
    const r = await rt.request({ type: 'subscribe', userId, streamType: 'main', audio: true, video: true, sdp: s.offer });
    s.answerMs = performance.now() - s.t0;
    s.answer = r.sdp;
    await s.pc.setRemoteDescription({ type: 'answer', sdp: r.sdp });
    // Time to the first decoded frame, sampled every 10 ms.
    s.poll = setInterval(async () => {
      const st = await rt.stats(s.pc);
      if (s.firstFrameAt === undefined && st.video && st.video.framesDecoded > 0) {
        s.firstFrameAt = performance.now();
        clearInterval(s.poll);
      }
    }, 10);
    return { answerMs: s.answerMs };
  };

  rt.firstFrame = () => {
    const s = rt.sub;
    if (s.firstFrameAt !== undefined) return { ms: s.firstFrameAt - s.t0 };
    rt.connected('sub');
    return false;
  };

  // RTP stats of a peer connection by kind: inbound-rtp and outbound-rtp with their codec.
  rt.stats = async (pc) => {
    const report = await pc.getStats();
    const out = {};
    report.forEach((r) => {
      if (r.type !== 'inbound-rtp' && r.type !== 'outbound-rtp') return;
      const c = r.codecId && report.get(r.codecId);
      out[r.kind] = {
        type: r.type,
        codec: c ? c.mimeType : null,
        fmtp: c ? (c.sdpFmtpLine || '') : null,
        packetsReceived: r.packetsReceived,
        packetsSent: r.packetsSent,
        framesDecoded: r.framesDecoded,
        framesEncoded: r.framesEncoded,
        keyFramesDecoded: r.keyFramesDecoded,
        frameWidth: r.frameWidth,
        frameHeight: r.frameHeight,
        encoderImplementation: r.encoderImplementation,
        decoderImplementation: r.decoderImplementation,
      };
    });
    return out;
  };

  // A counter from the server's Prometheus text (`/metrics`, same origin).
  rt.metric = async (name) => {
    const text = await (await fetch('/metrics')).text();
    const m = text.match(new RegExp('^' + name + ' (\\d+)', 'm'));
    return m ? Number(m[1]) : null;
  };

  // Everything useful after a failure.
  rt.report = async () => {
    const one = async (which) => {
      const p = rt[which];
      if (!p) return null;
      let stats = null;
      try { stats = await rt.stats(p.pc); } catch (e) { stats = String(e); }
      return {
        connectionState: p.pc.connectionState, iceConnectionState: p.pc.iceConnectionState,
        states: p.states, stats, offer: p.offer, answer: p.answer,
      };
    };
    return { pub: await one('pub'), sub: await one('sub'), events: rt.events, closed: rt.closed || null };
  };
  return rt;
})();
true
"#;

fn sig(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    gen_user_sig(u64::from(APP), KEY, user, 86_400, now)
}

fn start_server() -> RunningServer {
    let mut c = ServerConfig::single_app("127.0.0.1:0", APP, KEY);
    c.workers = Some(1);
    c.media.workers = 1;
    c.timeouts.shutdown_timeout_s = 1;
    RunningServer::spawn(c).expect("server starts")
}

async fn launch() -> Browser {
    Browser::launch()
        .await
        .unwrap_or_else(|e| panic!("launching Chromium: {e:#}"))
}

/// A page on the server's origin (loopback http is a secure context) with `window.rt` loaded.
async fn open_page(browser: &Browser, server: &RunningServer) -> anyhow::Result<Page> {
    let page = browser.new_page().await?;
    page.goto(&format!("{}/healthz", server.http_url())).await?;
    page.eval(CLIENT_JS).await?;
    Ok(page)
}

/// Join `ROOM` as `user` from `page`; returns the round trip in ms and the reply data.
async fn join(page: &Page, server: &RunningServer, user: &str) -> anyhow::Result<(f64, Value)> {
    let join = json!({
        "sdkAppId": APP, "userId": user, "userSig": sig(user), "roomId": ROOM, "mode": "rtc",
    });
    let r = page
        .eval(&format!("rt.join({}, {join})", json!(server.ws_url())))
        .await
        .with_context(|| format!("{user} joins"))?;
    let reply = r["reply"].clone();
    ensure!(reply["kind"] == "joined", "{user}'s join reply: {reply}");
    Ok((ms(&r)?, reply))
}

fn ms(v: &Value) -> anyhow::Result<f64> {
    let ms = v["ms"].as_f64().ok_or_else(|| anyhow!("no `ms` in {v}"))?;
    ensure!(
        (0.0..SANE_MS).contains(&ms),
        "{ms:.0} ms is beyond the sanity bound of {SANE_MS} ms"
    );
    Ok(ms)
}

/// The timings one run measured, in ms.
#[derive(Debug)]
struct Times {
    join_a: f64,
    join_b: f64,
    publish_answer: f64,
    publish_connected: f64,
    subscribe_answer: f64,
    subscribe_connected: f64,
    first_frame: f64,
}

/// Page A publishes with `codec` first, page B subscribes; B must decode video in `codec`
/// and receive audio.
async fn publish_and_subscribe(
    server: &RunningServer,
    a: &Page,
    b: &Page,
    codec: &str,
) -> anyhow::Result<Times> {
    let (join_a, _) = join(a, server, "alice").await?;

    let r = a
        .eval(&format!("rt.publish({})", json!(codec)))
        .await
        .context("alice publishes")?;
    let publish_answer = r["answerMs"].as_f64().unwrap_or(f64::NAN);
    let publish_connected = ms(&a
        .wait_for("rt.connected('pub')", DEADLINE)
        .await
        .context("alice's uplink connects")?)?;

    // Media reaches the server: its packets-in counter grows.
    let packets_in = a
        .wait_for(
            "rt.metric('rtcroom_media_packets_in_total').then((n) => n > 50 && n)",
            DEADLINE,
        )
        .await
        .context("the server's rtcroom_media_packets_in_total grows")?;

    let (join_b, reply) = join(b, server, "bob").await?;
    let listed = reply["streams"].as_array().is_some_and(|s| {
        s.iter()
            .any(|s| s["userId"] == "alice" && s["streamType"] == "main" && s["hasVideo"] == true)
    });
    ensure!(
        listed,
        "bob's join reply does not list alice's stream: {reply}"
    );

    let r = b
        .eval("rt.subscribe('alice')")
        .await
        .context("bob subscribes")?;
    let subscribe_answer = r["answerMs"].as_f64().unwrap_or(f64::NAN);
    let subscribe_connected = ms(&b
        .wait_for("rt.connected('sub')", DEADLINE)
        .await
        .context("bob's downlink connects")?)?;
    let first_frame = ms(&b
        .wait_for("rt.firstFrame()", DEADLINE)
        .await
        .context("bob decodes a video frame")?)?;
    let audio = b
        .wait_for(
            "rt.stats(rt.sub.pc).then((s) => s.audio && s.audio.packetsReceived > 0 && s.audio)",
            DEADLINE,
        )
        .await
        .context("bob receives audio packets")?;

    // What was negotiated, for the record: the offer's candidates (none: it is sent before
    // gathering) and the video codec lines of both answers.
    let sdp = |side: &str| {
        format!(
            "({{ candidates: (rt.{side}.offer.match(/^a=candidate/mg) || []).length, \
               video: rt.{side}.answer.split('m=video')[1].split('\\r\\n')
                 .filter((l) => /^a=(rtpmap|fmtp):/.test(l)).join(' | ') }})"
        )
    };
    let pub_sdp = a.eval(&sdp("pub")).await?;
    let sub_sdp = b.eval(&sdp("sub")).await?;
    eprintln!(
        "[{codec}] publish: offer candidates {}, answer video {}\n\
         [{codec}] subscribe: offer candidates {}, answer video {}",
        pub_sdp["candidates"], pub_sdp["video"], sub_sdp["candidates"], sub_sdp["video"]
    );
    let sent = a.eval("rt.stats(rt.pub.pc)").await?;
    let got = b.eval("rt.stats(rt.sub.pc)").await?;
    eprintln!(
        "[{codec}] server packets in: {packets_in}\n[{codec}] alice sends: {sent}\n\
         [{codec}] bob receives: {got}"
    );
    let want = format!("video/{codec}");
    let sent_codec = sent["video"]["codec"].as_str().unwrap_or_default();
    ensure!(
        sent_codec.eq_ignore_ascii_case(&want),
        "alice preferred {codec} but sends {sent_codec:?}"
    );
    let got_codec = got["video"]["codec"].as_str().unwrap_or_default();
    ensure!(
        got_codec.eq_ignore_ascii_case(&want),
        "alice sends {codec} but bob decodes {got_codec:?}"
    );
    ensure!(
        got["video"]["framesDecoded"].as_u64() > Some(0),
        "bob decoded no video: {got}"
    );
    ensure!(
        audio["packetsReceived"].as_u64() > Some(0),
        "bob received no audio: {audio}"
    );
    ensure!(
        audio["codec"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("audio/opus")),
        "bob's audio is not Opus: {audio}"
    );

    Ok(Times {
        join_a,
        join_b,
        publish_answer,
        publish_connected,
        subscribe_answer,
        subscribe_connected,
        first_frame,
    })
}

/// Run the publish/subscribe scenario with `codec` preferred; on failure panic with the
/// error, each page's SDPs, connection states, stats and console.
async fn scenario(codec: &str) {
    let server = start_server();
    let browser = launch().await;
    let a = open_page(&browser, &server)
        .await
        .unwrap_or_else(|e| panic!("page A: {e:#}"));
    let b = open_page(&browser, &server)
        .await
        .unwrap_or_else(|e| panic!("page B: {e:#}"));

    match publish_and_subscribe(&server, &a, &b, codec).await {
        Ok(t) => {
            eprintln!(
                "[{codec}] times (ms): join round trip alice {:.1}, bob {:.1}; publish → answer {:.1}, \
                 publish → connected {:.1}; subscribe → answer {:.1}, subscribe → connected {:.1}, \
                 subscribe → first decoded frame {:.1}",
                t.join_a,
                t.join_b,
                t.publish_answer,
                t.publish_connected,
                t.subscribe_answer,
                t.subscribe_connected,
                t.first_frame
            );
        }
        Err(e) => {
            let mut report = String::new();
            for (name, page) in [("A (alice, publisher)", &a), ("B (bob, subscriber)", &b)] {
                let r = page
                    .eval("rt.report()")
                    .await
                    .unwrap_or_else(|e| json!(format!("no report: {e:#}")));
                report.push_str(&format!("\n===== page {name} =====\n"));
                for side in ["pub", "sub"] {
                    let p = &r[side];
                    if p.is_null() {
                        continue;
                    }
                    report.push_str(&format!(
                        "--- {side}: connection {} ice {} states {}\n--- {side} stats: {}\n\
                         --- {side} offer ---\n{}\n--- {side} answer ---\n{}\n",
                        p["connectionState"],
                        p["iceConnectionState"],
                        p["states"],
                        p["stats"],
                        p["offer"].as_str().unwrap_or("(none)"),
                        p["answer"].as_str().unwrap_or("(none)"),
                    ));
                }
                report.push_str(&format!(
                    "--- events: {}\n--- socket closed: {}\n--- console ---\n{}\n",
                    r["events"],
                    r["closed"],
                    page.console_tail(100)
                ));
            }
            panic!("[{codec}] {e:#}\n{report}");
        }
    }
}

/// The harness itself: values, exceptions with their stack, rejected promises, console capture,
/// and a `wait_for` that times out with the last value and the console.
#[tokio::test]
async fn harness_reports_values_errors_and_console() {
    let browser = launch().await;
    eprintln!("browser: {}", browser.version().await.expect("version"));
    let page = browser.new_page().await.expect("page");
    page.goto("about:blank").await.expect("goto");

    assert_eq!(page.eval("1 + 1").await.unwrap(), json!(2));
    assert_eq!(page.eval("undefined").await.unwrap(), Value::Null);
    assert_eq!(
        page.eval("Promise.resolve({a: [1, 'x']})").await.unwrap(),
        json!({"a": [1, "x"]})
    );

    let e = page
        .eval("(function thrower() { throw new Error('boom'); })()")
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("Error: boom") && text.contains("thrower"),
        "{text}"
    );

    let e = page
        .eval("new Promise((_, reject) => setTimeout(() => reject(new Error('late')), 10))")
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("Error: late"), "{e:#}");

    page.eval("console.log('hello', 42, {k: 1}); window.n = 0; true")
        .await
        .unwrap();
    let n = page
        .wait_for("++window.n >= 3 && window.n", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(n, json!(3));
    let e = page
        .wait_for("window.n > 1000 ? 1 : 0", Duration::from_millis(300))
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("timed out") && text.contains("last value: 0") && text.contains("hello 42"),
        "{text}"
    );
    assert!(
        page.console()
            .iter()
            .any(|l| l == "[console.log] hello 42 Object"),
        "{:?}",
        page.console()
    );
    page.close().await.expect("close");
}

#[tokio::test]
async fn browser_publishes_h264_and_another_decodes_it() {
    scenario("H264").await;
}

#[tokio::test]
async fn browser_publishes_vp8_and_another_decodes_it() {
    scenario("VP8").await;
}
