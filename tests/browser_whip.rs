//! WHIP and WHEP with a client nobody here wrote: headless Chromium and a dozen lines of plain
//! WebRTC (`RTCPeerConnection`, `fetch`), no SDK. Chromium publishes over WHIP from another
//! origin (a real CORS preflight) and `rtcroom record` records it; Chromium views over WHEP a
//! stream that `rtcroom publish` sends, and decodes it. Needs Chromium and GStreamer's tools
//! (`scripts/setup-debian.sh`).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rtcroom_protocol::usersig::gen_user_sig;
use rtcroom_server::{RunningServer, ServerConfig};
use serde_json::json;
use support::browser::{Browser, Page};
use support::discover;

const APP: u32 = 1_400_000_000;
const KEY: &str = "browser-whip-key";
/// Bound on every wait in these tests.
const DEADLINE: Duration = Duration::from_secs(20);

/// WHIP in the page: publish the fake camera and microphone to `url` with `token`.
const WHIP_JS: &str = r#"
window.whip = async (url, token) => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  const pc = window.pc = new RTCPeerConnection();
  for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: 'sendonly', streams: [stream] });
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch(url, { method: 'POST', body: pc.localDescription.sdp,
    headers: { 'Content-Type': 'application/sdp', 'Authorization': 'Bearer ' + token } });
  if (r.status !== 201) throw new Error('WHIP POST: ' + r.status + ' ' + await r.text());
  window.location_ = new URL(r.headers.get('Location'), url).href;
  await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
  return window.location_;
};
"#;

/// RTP statistics of `window.pc` for one kind, in the page.
const STATS_JS: &str = r#"
window.rtp = async (type, kind) => {
  let out = null;
  (await window.pc.getStats()).forEach((r) => { if (r.type === type && r.kind === kind) out = r; });
  return out && { framesEncoded: r0(out.framesEncoded), framesDecoded: r0(out.framesDecoded),
                   packetsReceived: r0(out.packetsReceived), packetsSent: r0(out.packetsSent) };
};
const r0 = (v) => v || 0;
"#;

/// WHEP in the page: receive audio and video from `url` with `token`.
const WHEP_JS: &str = r#"
window.whep = async (url, token) => {
  const pc = window.pc = new RTCPeerConnection();
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.ontrack = (e) => { if (e.track.kind === 'video') { const v = document.createElement('video');
    v.muted = true; v.autoplay = true; v.srcObject = e.streams[0] || new MediaStream([e.track]);
    document.body.appendChild(v); } };
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch(url, { method: 'POST', body: pc.localDescription.sdp,
    headers: { 'Content-Type': 'application/sdp', 'Authorization': 'Bearer ' + token } });
  if (r.status !== 201) throw new Error('WHEP POST: ' + r.status + ' ' + await r.text());
  window.location_ = new URL(r.headers.get('Location'), url).href;
  await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
  return window.location_;
};
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

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtcroom-whip-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A bot process, killed if the test ends before it exits; its stdout lines on a channel.
struct Bot {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Bot {
    /// A bot joining over signalling.
    fn spawn(server: &RunningServer, args: &[&str]) -> Bot {
        let app = APP.to_string();
        let url = server.ws_url();
        let mut all = args.to_vec();
        all.extend(["--server", &url, "--sdk-app-id", &app]);
        all.extend(["--secret-key", KEY, "--mode", "rtc"]);
        Bot::spawn_raw(&all)
    }

    fn spawn_raw(args: &[&str]) -> Bot {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rtcroom runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Bot {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Wait (bounded) for a stdout line containing `needle`.
    fn wait_line(&mut self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; got {:#?}", self.seen),
            }
        }
    }

    /// SIGINT, then wait (bounded) for a clean exit.
    fn interrupt(&mut self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "exit status {s}; output {:#?}", self.seen);
                return;
            }
            assert!(t.elapsed() < DEADLINE, "the bot did not exit after SIGINT");
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn launch() -> Browser {
    Browser::launch()
        .await
        .unwrap_or_else(|e| panic!("launching Chromium: {e:#}"))
}

async fn page_at(browser: &Browser, url: &str, js: &str) -> Page {
    let page = browser.new_page().await.expect("a page");
    page.goto(url).await.expect("the page loads");
    page.eval(&format!("{js}; {STATS_JS}; true"))
        .await
        .expect("the script");
    page
}

fn recordings(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "mkv" || e == "webm"))
        .collect()
}

/// Chromium publishes over WHIP from another origin (`localhost` → `127.0.0.1`: the
/// `Authorization` header makes it preflight) and `rtcroom record` writes a file with video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_whip_publish_is_recorded() {
    let server = start_server();
    let out = temp_dir("rec");
    let mut recorder = Bot::spawn(
        &server,
        &[
            "record",
            "--room-id",
            "7001",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    recorder.wait_line("recording room");

    let browser = launch().await;
    let port = server.addr().port();
    let page = page_at(
        &browser,
        &format!("http://localhost:{port}/healthz"),
        WHIP_JS,
    )
    .await;
    let endpoint = format!("http://127.0.0.1:{port}/whip/{APP}/chrome?roomId=7001");
    let location = page
        .eval(&format!(
            "whip({}, {})",
            json!(endpoint),
            json!(sig("chrome"))
        ))
        .await
        .unwrap_or_else(|e| panic!("WHIP publish: {e:#}"));
    assert!(
        location
            .as_str()
            .is_some_and(|l| l.contains("/whip/resource/")),
        "{location}"
    );
    recorder.wait_line("recording chrome");
    // Three seconds of video encoded and sent, as the browser counts it.
    page.wait_for(
        "window.rtp('outbound-rtp', 'video').then((s) => s && s.framesEncoded >= 90 && s)",
        DEADLINE,
    )
    .await
    .unwrap_or_else(|e| panic!("Chromium sends video: {e:#}"));
    recorder.interrupt();

    let files = recordings(&out);
    assert_eq!(files.len(), 1, "{files:?} {:#?}", recorder.seen);
    let d = discover(&files[0]);
    assert!(d.video, "{}", d.text);
    assert!(d.duration >= 1.0, "{}", d.text);
    eprintln!("recorded from Chromium over WHIP: {}", d.text);

    // The resource ends with a DELETE from the page (cross-origin: preflighted too).
    let status = page
        .eval("fetch(window.location_, { method: 'DELETE' }).then((r) => r.status)")
        .await
        .expect("DELETE");
    assert_eq!(status, json!(200));
    let _ = std::fs::remove_dir_all(&out);
}

/// `rtcroom publish` sends H.264 into a room; Chromium views it over WHEP and decodes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_whep_viewer_decodes_rtcroom_publish() {
    let server = start_server();
    let mut publisher = Bot::spawn(
        &server,
        &[
            "publish",
            "--room-id",
            "7002",
            "--user-id",
            "bot",
            "--video-profile",
            "240p",
        ],
    );
    publisher.wait_line("publishing as");

    let browser = launch().await;
    let page = page_at(&browser, &format!("{}/healthz", server.http_url()), WHEP_JS).await;
    let endpoint = format!(
        "{}/whep/{APP}/chrome?roomId=7002&publisher=bot&stream=main",
        server.http_url()
    );
    page.eval(&format!(
        "whep({}, {})",
        json!(endpoint),
        json!(sig("chrome"))
    ))
    .await
    .unwrap_or_else(|e| panic!("WHEP view: {e:#}"));
    let video = page
        .wait_for(
            "window.rtp('inbound-rtp', 'video').then((s) => s && s.framesDecoded > 0 && s)",
            DEADLINE,
        )
        .await
        .unwrap_or_else(|e| panic!("Chromium decodes the bot's video: {e:#}"));
    let audio = page
        .wait_for(
            "window.rtp('inbound-rtp', 'audio').then((s) => s && s.packetsReceived > 0 && s)",
            DEADLINE,
        )
        .await
        .unwrap_or_else(|e| panic!("Chromium receives the bot's audio: {e:#}"));
    eprintln!("WHEP in Chromium: video {video}, audio {audio}");
    let status = page
        .eval("fetch(window.location_, { method: 'DELETE' }).then((r) => r.status)")
        .await
        .expect("DELETE");
    assert_eq!(status, json!(200));
    publisher.interrupt();
}

/// `rtcroom publish --whip` sends the test pattern and tone over WHIP; `rtcroom record`
/// (over signalling, in the same room) records both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcroom_publish_over_whip_is_recorded() {
    let server = start_server();
    let out = temp_dir("cli");
    let mut recorder = Bot::spawn(
        &server,
        &[
            "record",
            "--room-id",
            "7003",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    recorder.wait_line("recording room");
    let endpoint = format!("{}/whip/{APP}/whipbot?roomId=7003", server.http_url());
    let token = sig("whipbot");
    let mut publisher = Bot::spawn_raw(&[
        "publish",
        "--whip",
        &endpoint,
        "--token",
        &token,
        "--video-profile",
        "240p",
    ]);
    publisher.wait_line("publishing over WHIP at");
    recorder.wait_line("recording whipbot");
    // Two progress lines of the publisher: media has flowed for about two seconds.
    publisher.wait_line("packets");
    publisher.wait_line("packets");
    publisher.interrupt();
    assert!(
        publisher.seen.iter().any(|l| l.contains("/whip/resource/")),
        "{:#?}",
        publisher.seen
    );
    // The DELETE ended the WHIP member: the recorder sees its stream stop.
    recorder.wait_line("whipbot (main) stopped");
    recorder.interrupt();
    let files = recordings(&out);
    assert_eq!(files.len(), 1, "{files:?} {:#?}", recorder.seen);
    let d = discover(&files[0]);
    assert!(d.video && d.audio, "{}", d.text);
    let _ = std::fs::remove_dir_all(&out);
}

/// A WHIP token that does not verify: the bot says what the server said and exits 1.
#[test]
fn rtcroom_publish_over_whip_reports_a_refusal() {
    let server = start_server();
    let endpoint = format!("{}/whip/{APP}/whipbot?roomId=7004", server.http_url());
    let out = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args([
            "publish",
            "--whip",
            &endpoint,
            "--token",
            &sig("someone-else"),
        ])
        .output()
        .expect("rtcroom runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("70013"),
        "{stderr}"
    );
}
