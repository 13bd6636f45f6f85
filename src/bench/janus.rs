//! Janus VideoRoom as a bench target (`--target janus|both`): the same light clients, speaking
//! Janus's own API (WebSocket transport, `janus-protocol`) to Debian's `janus` (1.1.x), which
//! the bench starts with a generated configuration: signalling on loopback, media on this
//! machine's own address (`host_ipv4`), the VideoRoom plugin and the WebSocket transport
//! only, H.264 + Opus rooms, a fixed number of event loops.
//!
//! The mapping onto the scenarios (docs: janus.conf.meetecho.com/docs/videoroom):
//! - a publisher: session → attach `janus.plugin.videoroom` → `join` as `publisher` with a
//!   numeric id → `publish` with the light peer's offer → Janus's answer;
//! - a viewer: session → attach → `join` as a `publisher` that never publishes (a participant:
//!   what a Janus meeting client does, and the nearest thing to joining a TRTC room; timed as
//!   the join);
//! - a subscription: attach another handle → `join` as `subscriber` to the publisher's feed →
//!   Janus's offer → the light peer's answer in `start` (Janus offers to its subscribers).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::light::LightPeer;
use super::{EmbeddedChild, TempDir};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Every Janus request is bounded by this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Janus drops a session after 60 s without a request; keepalives go out well within it.
const KEEPALIVE: Duration = Duration::from_secs(25);

/// Where Debian (and a source build) put Janus's plugins and transports.
const LIB_DIRS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu/janus",
    "/usr/lib/aarch64-linux-gnu/janus",
    "/usr/lib/janus",
    "/usr/local/lib/janus",
    "/opt/janus/lib/janus",
];

/// The directory holding `plugins/libjanus_videoroom.so` and
/// `transports/libjanus_websockets.so` (`RTCROOM_JANUS_LIB` overrides).
fn lib_dir() -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("RTCROOM_JANUS_LIB") {
        Some(dir) => vec![dir.into()],
        None => LIB_DIRS.iter().map(PathBuf::from).collect(),
    };
    candidates
        .into_iter()
        .find(|d| {
            d.join("plugins/libjanus_videoroom.so").exists()
                && d.join("transports/libjanus_websockets.so").exists()
        })
        .context(
            "Janus's VideoRoom plugin and WebSocket transport were not found: install Debian's \
             `janus` package (scripts/setup-debian.sh) or set RTCROOM_JANUS_LIB",
        )
}

/// This machine's first IPv4 address that is not loopback, on an interface that is up.
///
/// Janus's ICE (libnice) never gathers loopback candidates, whatever `ice_enforce_list`
/// says (measured with Janus 1.1.2), so on one machine the light clients and Janus meet on
/// this address instead: the datagrams still never leave the machine (the kernel delivers
/// traffic to its own addresses over the loopback device).
pub fn host_ipv4() -> anyhow::Result<std::net::Ipv4Addr> {
    let mut found = None;
    // SAFETY: getifaddrs fills a list that is only read here, each entry's address checked
    // for null and for AF_INET before it is read as a sockaddr_in, and freed once.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return Err(std::io::Error::last_os_error()).context("listing interfaces");
        }
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
            let loopback = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
            if up
                && !loopback
                && !ifa.ifa_addr.is_null()
                && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                found = Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                break;
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found.context(
        "Janus needs an IPv4 address other than loopback on this machine (its ICE never \
         uses loopback), and there is none",
    )
}

/// Janus's configuration files for a bench run: `ws_port` on 127.0.0.1, ICE on `ice_ip`
/// only, `event_loops` threads for the handles (0: Janus's default, one per handle),
/// folders under `home`.
pub fn config_files(
    home: &Path,
    ws_port: u16,
    ice_ip: std::net::Ipv4Addr,
    event_loops: usize,
) -> Vec<(PathBuf, String)> {
    let dir = |d: &str| home.join(d).display().to_string();
    let main = format!(
        r#"general: {{
	configs_folder = "{conf}"
	plugins_folder = "{plugins}"
	transports_folder = "{transports}"
	events_folder = "{none}"
	loggers_folder = "{none}"
	debug_level = 3
{loops}	session_timeout = 60
}}
media: {{
	rtp_port_range = "20000-60000"
}}
nat: {{
	ice_enforce_list = "{ice_ip}"
}}
plugins: {{
}}
transports: {{
}}
events: {{
	broadcast = false
}}
"#,
        conf = dir("conf"),
        plugins = dir("plugins"),
        transports = dir("transports"),
        none = dir("none"),
        // 0: leave Janus's default (a thread per handle).
        loops = if event_loops > 0 {
            format!("\tevent_loops = {event_loops}\n")
        } else {
            String::new()
        },
    );
    let ws = format!(
        "general: {{\n\tjson = \"plain\"\n\tws = true\n\tws_port = {ws_port}\n\tws_ip = \"127.0.0.1\"\n\twss = false\n}}\nadmin: {{\n\tadmin_ws = false\n}}\n"
    );
    vec![
        (home.join("conf/janus.jcfg"), main),
        (
            home.join("conf/janus.plugin.videoroom.jcfg"),
            "general: {\n}\n".to_owned(),
        ),
        (home.join("conf/janus.transport.websockets.jcfg"), ws),
    ]
}

/// Janus's `event_loops`: `RTCROOM_JANUS_EVENT_LOOPS` if set (0: Janus's own default, a
/// thread per handle), else one per CPU.
fn event_loops() -> anyhow::Result<usize> {
    match std::env::var("RTCROOM_JANUS_EVENT_LOOPS") {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n <= 1024)
            .with_context(|| format!("RTCROOM_JANUS_EVENT_LOOPS={v}: a number from 0 to 1024")),
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// Start Janus on loopback with a generated configuration; returns the child (killed on drop)
/// and its WebSocket URL once it answers.
pub async fn start(
    ice_ip: std::net::Ipv4Addr,
    configure: impl FnOnce(&mut Command),
) -> anyhow::Result<(EmbeddedChild, String)> {
    let lib = lib_dir()?;
    let home = std::env::temp_dir().join(format!(
        "rtcroom-bench-janus-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    for d in ["conf", "plugins", "transports", "none"] {
        std::fs::create_dir_all(home.join(d)).context("temporary directory")?;
    }
    let home = TempDir(home);
    std::os::unix::fs::symlink(
        lib.join("plugins/libjanus_videoroom.so"),
        home.0.join("plugins/libjanus_videoroom.so"),
    )?;
    std::os::unix::fs::symlink(
        lib.join("transports/libjanus_websockets.so"),
        home.0.join("transports/libjanus_websockets.so"),
    )?;
    // A free port: bound by the OS, released, then given to Janus (nothing else on loopback
    // races for it in a bench run).
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let loops = event_loops()?;
    for (path, text) in config_files(&home.0, port, ice_ip, loops) {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let log_path = home.0.join("janus.log");
    let log = std::fs::File::create(&log_path)?;
    let mut command = Command::new("janus");
    command
        .arg("-F")
        .arg(home.0.join("conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    configure(&mut command);
    let child = command
        .spawn()
        .context("starting `janus`: install Debian's janus package (scripts/setup-debian.sh)")?;
    let mut child = EmbeddedChild {
        child,
        _home: home,
        _netns: None,
    };
    let url = format!("ws://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ws) = connect(&url).await {
            drop(ws);
            return Ok((child, url));
        }
        let exited = child.child.try_wait()?.is_some();
        if exited || Instant::now() > deadline {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "Janus {} on port {port}; its log ends:\n{}",
                if exited {
                    "exited"
                } else {
                    "did not answer within 20 s"
                },
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `janus --version`'s first line ("Janus version: 1102 (1.1.2)"), or "janus".
pub fn version() -> String {
    Command::new("janus")
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| {
                    // "Janus version: 1102 (1.1.2)" → "Janus 1.1.2".
                    let v = l.split_once('(')?.1.split_once(')')?.0;
                    Some(format!("Janus {v}"))
                })
        })
        .unwrap_or_else(|| "janus".to_owned())
}

/// A WebSocket to Janus with its subprotocol.
async fn connect(url: &str) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "janus-protocol"
            .parse()
            .map_err(|e| anyhow!("header: {e}"))?,
    );
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024);
    let (ws, _) = tokio::time::timeout(
        REPLY_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .context("connect timeout")??;
    Ok(ws)
}

/// What a Janus request ended with: the plugin's data (or the core's `data`) and any JSEP.
#[derive(Debug)]
pub struct Reply {
    /// `plugindata.data` for plugin messages, `data` for core requests.
    pub data: Value,
    /// The SDP Janus sent with it.
    pub jsep: Option<Value>,
}

/// Decide whether `msg` ends the request `transaction`: `None` if it is not (another
/// transaction, an `ack`, an asynchronous event), else its outcome.
pub fn final_reply(msg: &Value, transaction: &str) -> Option<anyhow::Result<Reply>> {
    if msg["transaction"].as_str() != Some(transaction) {
        return None;
    }
    match msg["janus"].as_str() {
        Some("ack") => None,
        Some("error") => Some(Err(anyhow!(
            "Janus error {}: {}",
            msg["error"]["code"],
            msg["error"]["reason"].as_str().unwrap_or("?")
        ))),
        Some("success" | "event") => {
            let plugin = &msg["plugindata"]["data"];
            if !plugin.is_null() {
                if let Some(code) = plugin.get("error_code") {
                    return Some(Err(anyhow!(
                        "Janus VideoRoom error {code}: {}",
                        plugin["error"].as_str().unwrap_or("?")
                    )));
                }
                return Some(Ok(Reply {
                    data: plugin.clone(),
                    jsep: msg.get("jsep").cloned(),
                }));
            }
            Some(Ok(Reply {
                data: msg["data"].clone(),
                jsep: msg.get("jsep").cloned(),
            }))
        }
        _ => None,
    }
}

/// One Janus session on its own WebSocket.
pub struct Session {
    ws: Ws,
    id: u64,
    next: u64,
    /// Feeds the room has announced as published (join replies and `publishers` events).
    feeds: std::collections::HashSet<u64>,
}

impl Session {
    /// Connect and create a session.
    pub async fn open(url: &str) -> anyhow::Result<Session> {
        let mut s = Session {
            ws: connect(url).await?,
            id: 0,
            next: 1,
            feeds: Default::default(),
        };
        let r = s.call(json!({"janus": "create"})).await?;
        s.id = r.data["id"].as_u64().context("Janus gave no session id")?;
        Ok(s)
    }

    /// Send a request with a new transaction (and the session, once there is one); returns
    /// the transaction.
    async fn send(&mut self, mut body: Value) -> anyhow::Result<String> {
        let transaction = format!("t{}", self.next);
        self.next += 1;
        body["transaction"] = json!(transaction);
        if self.id != 0 {
            body["session_id"] = json!(self.id);
        }
        self.ws.send(Message::text(body.to_string())).await?;
        Ok(transaction)
    }

    /// The next JSON message from Janus, with the feeds it announces noted.
    async fn next_json(&mut self) -> anyhow::Result<Value> {
        while let Some(m) = self.ws.next().await {
            if let Message::Text(t) = m?
                && let Ok(v) = serde_json::from_str::<Value>(t.as_str())
            {
                note_feeds(&mut self.feeds, &v);
                return Ok(v);
            }
        }
        bail!("Janus closed the connection")
    }

    /// Send a request and wait for its outcome.
    async fn call(&mut self, body: Value) -> anyhow::Result<Reply> {
        let what = match body["body"]["request"].as_str() {
            Some(r) => format!("VideoRoom {r}"),
            None => body["janus"].as_str().unwrap_or("?").to_owned(),
        };
        let transaction = self.send(body).await?;
        tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                if let Some(outcome) = final_reply(&self.next_json().await?, &transaction) {
                    return outcome;
                }
            }
        })
        .await
        .with_context(|| format!("no reply from Janus to {what} within {REPLY_TIMEOUT:?}"))?
    }

    /// Attach a VideoRoom handle.
    pub async fn attach(&mut self) -> anyhow::Result<u64> {
        let r = self
            .call(json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))
            .await?;
        r.data["id"].as_u64().context("Janus gave no handle id")
    }

    /// A VideoRoom request on `handle`, with an SDP when `jsep` is given.
    pub async fn message(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Reply> {
        let mut req = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(j) = jsep {
            req["jsep"] = j;
        }
        self.call(req).await
    }

    /// Tell Janus this handle's candidates are all in its SDP (half-trickle). Janus only
    /// acks a trickle, so nothing is awaited.
    async fn candidates_done(&mut self, handle: u64) -> anyhow::Result<()> {
        self.send(
            json!({"janus": "trickle", "handle_id": handle, "candidate": {"completed": true}}),
        )
        .await
        .map(drop)
    }

    /// Create VideoRoom `room` for up to `participants` (H.264 + Opus, no bitrate cap).
    pub async fn create_room(&mut self, room: u64, participants: usize) -> anyhow::Result<()> {
        let handle = self.attach().await?;
        self.message(
            handle,
            json!({
                "request": "create",
                "room": room,
                "publishers": participants,
                "videocodec": "h264",
                "audiocodec": "opus",
                "bitrate": 0,
                "fir_freq": 0,
                "notify_joining": false,
            }),
            None,
        )
        .await
        .map(drop)
    }

    /// Join `room` as participant `id` (a publisher that has not published yet); returns the
    /// handle.
    pub async fn join(&mut self, room: u64, id: u64, display: &str) -> anyhow::Result<u64> {
        let handle = self.attach().await?;
        let r = self
            .message(
                handle,
                json!({"request": "join", "ptype": "publisher", "room": room, "id": id, "display": display}),
                None,
            )
            .await?;
        if r.data["videoroom"] != "joined" {
            bail!("Janus join: unexpected reply {}", r.data);
        }
        Ok(handle)
    }

    /// Publish on `handle` with `offer`; returns Janus's answer.
    pub async fn publish(&mut self, handle: u64, offer: String) -> anyhow::Result<String> {
        let r = self
            .message(
                handle,
                json!({"request": "publish"}),
                Some(json!({"type": "offer", "sdp": offer})),
            )
            .await?;
        let answer = sdp_of(&r, "answer")?;
        self.candidates_done(handle).await?;
        Ok(answer)
    }

    /// Wait until the room has announced `feed` as published (Janus refuses a subscription
    /// to a publisher whose media is not up yet: "No such feed"), as a Janus client
    /// subscribes on the `publishers` event.
    pub async fn wait_for_feed(&mut self, feed: u64) -> anyhow::Result<()> {
        tokio::time::timeout(REPLY_TIMEOUT, async {
            while !self.feeds.contains(&feed) {
                self.next_json().await?;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .with_context(|| format!("Janus did not announce feed {feed} within {REPLY_TIMEOUT:?}"))?
    }

    /// Subscribe to `feed` in `room` with a new light peer bound to `bind_ip` (call
    /// `wait_for_feed` first).
    pub async fn subscribe(
        &mut self,
        room: u64,
        feed: u64,
        bind_ip: std::net::IpAddr,
    ) -> anyhow::Result<LightPeer> {
        let handle = self.attach().await?;
        let r = self
            .message(
                handle,
                json!({"request": "join", "ptype": "subscriber", "room": room, "streams": [{"feed": feed}]}),
                None,
            )
            .await?;
        let offer = sdp_of(&r, "offer")?;
        let (peer, answer) = LightPeer::answer(&offer, bind_ip).await?;
        let r = self
            .message(
                handle,
                json!({"request": "start"}),
                Some(json!({"type": "answer", "sdp": answer})),
            )
            .await?;
        if r.data["started"] != "ok" {
            bail!("Janus start: unexpected reply {}", r.data);
        }
        self.candidates_done(handle).await?;
        Ok(peer)
    }

    /// Keep the socket drained (events) and the session alive until `stop` flips; then
    /// destroy the session.
    pub async fn idle(mut self, mut stop: watch::Receiver<bool>) {
        let mut beat = tokio::time::interval(KEEPALIVE);
        loop {
            tokio::select! {
                m = self.ws.next() => if m.is_none() { return },
                _ = beat.tick() => {
                    let _ = self.send(json!({"janus": "keepalive"})).await;
                }
                _ = stop.changed() => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.send(json!({"janus": "destroy"})).await;
            let _ = self.ws.close(None).await;
        })
        .await;
    }
}

/// Track the feeds a VideoRoom message announces (`publishers` in a join reply or event) or
/// withdraws (`unpublished`, `leaving`).
pub fn note_feeds(feeds: &mut std::collections::HashSet<u64>, msg: &Value) {
    let data = &msg["plugindata"]["data"];
    if let Some(list) = data["publishers"].as_array() {
        feeds.extend(list.iter().filter_map(|p| p["id"].as_u64()));
    }
    for gone in ["unpublished", "leaving"] {
        if let Some(id) = data[gone].as_u64() {
            feeds.remove(&id);
        }
    }
}

/// The SDP of `kind` ("offer"/"answer") in a reply.
fn sdp_of(r: &Reply, kind: &str) -> anyhow::Result<String> {
    let jsep = r
        .jsep
        .as_ref()
        .with_context(|| format!("Janus sent no {kind} (reply {})", r.data))?;
    if jsep["type"] != kind {
        bail!("Janus sent a {} where an {kind} was expected", jsep["type"]);
    }
    jsep["sdp"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("Janus's {kind} has no SDP"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_ends_at_its_own_success_event_or_error_not_at_an_ack() {
        let t = "t7";
        assert!(final_reply(&json!({"janus": "ack", "transaction": t}), t).is_none());
        assert!(final_reply(&json!({"janus": "success", "transaction": "t8"}), t).is_none());
        assert!(final_reply(&json!({"janus": "webrtcup", "session_id": 1}), t).is_none());
        let ok = final_reply(
            &json!({"janus": "success", "transaction": t, "data": {"id": 42}}),
            t,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.data["id"], 42);
        let ev = final_reply(
            &json!({"janus": "event", "transaction": t,
                    "plugindata": {"plugin": "janus.plugin.videoroom", "data": {"videoroom": "joined"}},
                    "jsep": {"type": "answer", "sdp": "v=0"}}),
            t,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ev.data["videoroom"], "joined");
        assert_eq!(sdp_of(&ev, "answer").unwrap(), "v=0");
        assert!(sdp_of(&ev, "offer").is_err());
        let core = final_reply(
            &json!({"janus": "error", "transaction": t, "error": {"code": 458, "reason": "No such session"}}),
            t,
        )
        .unwrap();
        assert!(core.unwrap_err().to_string().contains("No such session"));
        let plugin = final_reply(
            &json!({"janus": "event", "transaction": t,
                    "plugindata": {"data": {"videoroom": "event", "error_code": 426, "error": "No such room"}}}),
            t,
        )
        .unwrap();
        assert!(plugin.unwrap_err().to_string().contains("426"));
    }

    #[test]
    fn feeds_are_tracked_from_publishers_lists_and_withdrawals() {
        let mut feeds = std::collections::HashSet::new();
        let ev = |data: Value| json!({"janus": "event", "plugindata": {"data": data}});
        note_feeds(
            &mut feeds,
            &ev(json!({"videoroom": "joined", "publishers": [{"id": 1}, {"id": 2}]})),
        );
        note_feeds(
            &mut feeds,
            &ev(json!({"videoroom": "event", "publishers": [{"id": 3}]})),
        );
        note_feeds(
            &mut feeds,
            &ev(json!({"videoroom": "event", "unpublished": 2})),
        );
        note_feeds(&mut feeds, &ev(json!({"videoroom": "event", "leaving": 9})));
        note_feeds(&mut feeds, &json!({"janus": "webrtcup"}));
        let mut got: Vec<u64> = feeds.into_iter().collect();
        got.sort();
        assert_eq!(got, vec![1, 3]);
    }

    #[test]
    fn the_configuration_loads_only_what_the_bench_uses_on_loopback() {
        let files = config_files(Path::new("/tmp/x"), 18188, [192, 0, 2, 7].into(), 2);
        let text = |name: &str| {
            files
                .iter()
                .find(|(p, _)| p.ends_with(name))
                .map(|(_, t)| t.clone())
                .unwrap()
        };
        let main = text("janus.jcfg");
        assert!(main.contains("plugins_folder = \"/tmp/x/plugins\""));
        assert!(main.contains("event_loops = 2"));
        let default = &config_files(Path::new("/tmp/x"), 1, [192, 0, 2, 7].into(), 0)[0].1;
        assert!(!default.contains("event_loops"), "{default}");
        assert!(main.contains("ice_enforce_list = \"192.0.2.7\""));
        let ws = text("janus.transport.websockets.jcfg");
        assert!(ws.contains("ws_port = 18188"));
        assert!(ws.contains("ws_ip = \"127.0.0.1\""));
    }
}
