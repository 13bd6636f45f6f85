//! Browsers on loopback: headless Chromium with the served web SDK (`/sdk/trtc.js`) against an
//! in-process rtcroom server.
//!
//! Run: `cargo bench --bench browser -- [runs] [warm_ms]` (default 20 runs, 0 ms). Per run, in
//! a fresh room: page A creates a client, joins, and publishes its (already initialised) fake
//! camera and microphone; `warm_ms` later (a publisher that has been sending a while, as in a
//! room one joins, versus one that has just started) page B joins without auto-subscribe,
//! waits for `stream-added`, subscribes and plays the stream. Every figure is read from the SDK's own marks (`client._timing`, see
//! `docs/web-sdk.md`), i.e. `performance.now()` inside the page:
//!
//! - `join round trip`: the join request sent on the open WebSocket → its reply.
//! - `join() total`: `join()` called → resolved (adds the WebSocket connect).
//! - `publish → connected`: `publish()` called → the uplink RTCPeerConnection `connected`
//!   (offer, `publish` request, answer, ICE, DTLS).
//! - `subscribe → connected`: `subscribe()` called → the downlink RTCPeerConnection
//!   `connected`.
//! - `subscribe → first decoded frame`: `subscribe()` called → `getStats()` first shows
//!   `framesDecoded > 0` (polled every 20 ms by the SDK, so up to 20 ms late).
//! - `subscribe → first rendered frame`: `subscribe()` called → the first frame painted in the
//!   playing `<video>` (`requestVideoFrameCallback`).

#[path = "../tests/support/browser.rs"]
mod browser;

use std::time::Duration;

use rtcroom_protocol::usersig::gen_user_sig;
use rtcroom_server::{RunningServer, ServerConfig};
use serde_json::{Value, json};

const APP: u32 = 1_400_000_000;
const KEY: &str = "bench-key";
const DEADLINE: Duration = Duration::from_secs(30);

fn sig(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    gen_user_sig(u64::from(APP), KEY, user, 86_400, now)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50={:.1} ms p90={:.1} ms min={:.1} ms max={:.1} ms",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
    );
}

async fn load_sdk(page: &browser::Page, base: &str) -> anyhow::Result<()> {
    page.goto(&format!("{base}/healthz")).await?;
    page.eval(
        "new Promise((ok, fail) => { const s = document.createElement('script'); \
         s.src = '/sdk/trtc.js'; s.onload = ok; s.onerror = () => fail(new Error('no sdk')); \
         document.head.appendChild(s); })",
    )
    .await?;
    Ok(())
}

fn f(v: &Value, key: &str) -> anyhow::Result<f64> {
    v[key]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("no {key} in {v}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = numbers.first().copied().unwrap_or(20) as usize;
    let warm = Duration::from_millis(numbers.get(1).copied().unwrap_or(0));
    let mut config = ServerConfig::single_app("127.0.0.1:0", APP, KEY);
    config.workers = Some(1);
    config.media.workers = 1;
    let server = RunningServer::spawn(config)?;
    let base = server.http_url();
    let ws = server.ws_url();
    let chromium = browser::Browser::launch().await?;
    println!(
        "runs={runs} warm={warm:?} browser={} server={base}",
        chromium.version().await?
    );
    let a = chromium.new_page().await?;
    let b = chromium.new_page().await?;
    load_sdk(&a, &base).await?;
    load_sdk(&b, &base).await?;
    let (mut join_rtt, mut join_total, mut publish) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sub_connected, mut decoded, mut rendered) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let room = 7000 + run;
        let (pub_user, sub_user) = (format!("pub{run}"), format!("sub{run}"));
        let args = json!({
            "ws": ws, "room": room, "app": APP,
            "pub": pub_user, "pubSig": sig(&pub_user),
            "sub": sub_user, "subSig": sig(&sub_user),
        });
        // A: a stream initialised before the clock, then join + publish.
        let marks = a
            .eval_timeout(
                &format!(
                    "(async () => {{ const a = {args};
                    const stream = TRTC.createStream({{userId: a.pub, audio: true, video: true}});
                    await stream.initialize();
                    const c = TRTC.createClient({{mode: 'rtc', sdkAppId: a.app, userId: a.pub,
                        userSig: a.pubSig, serverUrl: a.ws}});
                    await c.join({{roomId: a.room}});
                    await c.publish(stream);
                    window.benchPub = {{c, stream}};
                    const t = c._timing;
                    return {{rtt: t.join.ms, total: t.join.totalMs, publish: t.publish.main.ms}};
                    }})()"
                ),
                DEADLINE,
            )
            .await
            .map_err(|e| a.with_console(e))?;
        join_rtt.push(f(&marks, "rtt")?);
        join_total.push(f(&marks, "total")?);
        publish.push(f(&marks, "publish")?);
        // Models a publisher that has been in the room a while (a benchmark's pause, not a
        // test's sequencing).
        tokio::time::sleep(warm).await;
        // B: join, wait for the stream, subscribe and play it.
        let marks = b
            .eval_timeout(
                &format!(
                    "(async () => {{ const a = {args};
                    const c = TRTC.createClient({{mode: 'rtc', sdkAppId: a.app, userId: a.sub,
                        userSig: a.subSig, serverUrl: a.ws, autoSubscribe: false}});
                    const added = new Promise(ok => c.on('stream-added', e => ok(e.stream)));
                    await c.join({{roomId: a.room}});
                    const remote = await added;
                    const box = document.createElement('div');
                    box.id = 'box' + a.room; document.body.appendChild(box);
                    c.on('stream-subscribed', e => e.stream.play(box));
                    await c.subscribe(remote);
                    const key = a.pub + '/main';
                    const deadline = performance.now() + 20000;
                    while (performance.now() < deadline) {{
                        const m = c._timing.subscribe[key];
                        if (m && m.firstFrameMs != null && m.renderedMs != null) {{
                            window.benchSub = c;
                            return {{decoded: m.firstFrameMs, rendered: m.renderedMs,
                                connected: m.ms}};
                        }}
                        await new Promise(ok => setTimeout(ok, 20));
                    }}
                    throw new Error('no first frame: ' + JSON.stringify(c._timing.subscribe));
                    }})()"
                ),
                DEADLINE,
            )
            .await
            .map_err(|e| b.with_console(e))?;
        sub_connected.push(f(&marks, "connected")?);
        decoded.push(f(&marks, "decoded")?);
        rendered.push(f(&marks, "rendered")?);
        b.eval("(async () => { await window.benchSub.leave(); })()")
            .await?;
        a.eval(
            "(async () => { await window.benchPub.c.leave(); window.benchPub.stream.close(); })()",
        )
        .await?;
    }
    report("join round trip", join_rtt);
    report("join() total (connect + join)", join_total);
    report("publish -> connected", publish);
    report("subscribe -> connected", sub_connected);
    report("subscribe -> first decoded frame", decoded);
    report("subscribe -> first rendered frame", rendered);
    drop(chromium);
    server.stop()?;
    Ok(())
}
