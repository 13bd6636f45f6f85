//! Test harness: a real rtcroom server on loopback and engine clients with short timings.
//! Every wait is bounded by [`DEADLINE`]; nothing sleeps to sequence.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtcroom::{
    Client, ClientConfig, ClientEvent, ConnectionState, EventStream, JoinOptions, Mode, Role,
    UserId, create_client,
};
use rtcroom::{
    DecodedFrame, FrameInfo, LocalStream, StreamConfig, SubscribeOutput, VideoProfile,
    create_stream,
};
use rtcroom_protocol::usersig::gen_user_sig;
use rtcroom_server::{RunningServer, ServerConfig};

pub const APP: u32 = 1_400_000_000;
pub const KEY: &str = "engine-test-key";
/// Every wait in these tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Logs go to the test's captured output; with `RTCROOM_TEST_LOG=stderr` they go straight to
/// stderr instead, so the engine's and server's own threads show too (the harness only
/// captures the test thread's).
pub fn init_tracing() {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env());
    let _ = if std::env::var("RTCROOM_TEST_LOG").is_ok_and(|v| v == "stderr") {
        builder.with_writer(std::io::stderr).try_init()
    } else {
        builder.with_test_writer().try_init()
    };
}

pub fn server_config(listen: &str) -> ServerConfig {
    let mut c = ServerConfig::single_app(listen, APP, KEY);
    c.workers = Some(1);
    c.timeouts.shutdown_timeout_s = 1;
    c
}

pub fn start(config: ServerConfig) -> RunningServer {
    init_tracing();
    RunningServer::spawn(config).expect("server starts")
}

/// Wait (bounded by [`DEADLINE`], checking every 10 ms) until `cond` holds.
pub async fn poll_until(what: &str, cond: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !cond() {
        assert!(t.elapsed() < DEADLINE, "timed out waiting for {what}");
        tick.tick().await;
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn sig(user: &str) -> String {
    gen_user_sig(u64::from(APP), KEY, user, 86_400, now())
}

pub fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

/// A config with TRTC's rules but short timings, so failures and reconnects run fast.
pub fn config(url: &str, user: &str, mode: Mode) -> ClientConfig {
    ClientConfig::new(mode, APP, user, sig(user))
        .with_server_url(url)
        .with_join_timeout(Duration::from_secs(3))
        .with_request_timeout(Duration::from_secs(3))
        .with_reconnect_attempts(40)
        .with_reconnect_backoff_unit(Duration::from_millis(50))
        // Signalling tests publish without media; media tests turn this on.
        .with_auto_subscribe(false)
}

/// A client plus its event stream and what it has seen.
pub struct TestClient {
    pub client: Client,
    pub events: EventStream,
    pub seen: Vec<ClientEvent>,
}

impl std::ops::Deref for TestClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl TestClient {
    pub fn new(config: ClientConfig) -> TestClient {
        let client = create_client(config).expect("valid config");
        let events = client.events();
        TestClient {
            client,
            events,
            seen: Vec::new(),
        }
    }

    /// Create and join `room`; panics on failure.
    pub async fn joined(url: &str, user: &str, mode: Mode, room: u32, role: Option<Role>) -> Self {
        let c = TestClient::new(config(url, user, mode));
        let mut opts = JoinOptions::new(room);
        opts.role = role;
        bounded(c.join(opts)).await.expect("join succeeds");
        c
    }

    /// The next event (bounded).
    pub async fn next(&mut self) -> ClientEvent {
        let e = tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("no event within {DEADLINE:?}; seen {:#?}", self.seen))
            .expect("event stream open");
        self.seen.push(e.clone());
        e
    }

    /// Read events until one matches (bounded); returns it.
    pub async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&ClientEvent) -> bool,
    ) -> ClientEvent {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) => panic!(
                    "event stream ended waiting for {what}; seen {:#?}",
                    self.seen
                ),
                Err(_) => panic!("no {what} within {DEADLINE:?}; seen {:#?}", self.seen),
            };
            self.seen.push(e.clone());
            if pred(&e) {
                return e;
            }
        }
    }

    /// Wait for the connection state to change to `state`.
    pub async fn wait_state(&mut self, state: ConnectionState) {
        self.wait_for(
            &format!("state {state}"),
            |e| matches!(e, ClientEvent::ConnectionStateChanged { state: s, .. } if *s == state),
        )
        .await;
    }

    pub async fn wait_peer_join(&mut self, user: &str) {
        let u = uid(user);
        self.wait_for(
            &format!("peer-join {user}"),
            |e| matches!(e, ClientEvent::PeerJoin { user_id } if *user_id == u),
        )
        .await;
    }

    /// Wait for `user`'s `stream-added`; the stream.
    pub async fn stream_added(&mut self, user: &str) -> rtcroom::RemoteStream {
        let u = uid(user);
        match self
            .wait_for(
                &format!("stream-added {user}"),
                |e| matches!(e, ClientEvent::StreamAdded(s) if s.user_id == u),
            )
            .await
        {
            ClientEvent::StreamAdded(s) => s,
            _ => unreachable!("wait_for returns a matching event"),
        }
    }

    /// Every event received so far without waiting.
    pub fn drain(&mut self) -> Vec<ClientEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.events.try_recv() {
            self.seen.push(e.clone());
            out.push(e);
        }
        out
    }
}

/// Await `f` within [`DEADLINE`].
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("call did not finish within {DEADLINE:?}"))
}

/// A UDP relay in front of one media port of the server (which announces the relay's
/// address, `media.public_ip`): each client address gets a socket of its own towards the
/// server, so answers come back through it. [`PathRelay::cut`] kills the path of every
/// client address seen so far, both ways, as a network change does to a client's old
/// sockets; addresses seen later pass.
pub struct PathRelay {
    cut: std::sync::Arc<std::sync::Mutex<CutState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct CutState {
    seen: std::collections::HashSet<std::net::SocketAddr>,
    cut: std::collections::HashSet<std::net::SocketAddr>,
}

impl PathRelay {
    /// Listen on `listen` (the announced address) and relay to `server`.
    pub async fn start(listen: std::net::SocketAddr, server: std::net::SocketAddr) -> PathRelay {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};
        use tokio::net::UdpSocket;
        let front = Arc::new(UdpSocket::bind(listen).await.expect("relay binds"));
        let state = Arc::new(Mutex::new(CutState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut upstream: HashMap<std::net::SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 2048];
            while let Ok((n, client)) = front.recv_from(&mut buf).await {
                {
                    let mut s = st.lock().unwrap();
                    if s.cut.contains(&client) {
                        continue;
                    }
                    s.seen.insert(client);
                }
                let up = match upstream.get(&client) {
                    Some(u) => u.clone(),
                    None => {
                        let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        u.connect(server).await.unwrap();
                        let (u2, front2, st2) = (u.clone(), front.clone(), st.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 2048];
                            while let Ok(n) = u2.recv(&mut buf).await {
                                if st2.lock().unwrap().cut.contains(&client) {
                                    continue;
                                }
                                let _ = front2.send_to(&buf[..n], client).await;
                            }
                        });
                        upstream.insert(client, u.clone());
                        u
                    }
                };
                let _ = up.send(&buf[..n]).await;
            }
        });
        PathRelay { cut: state, task }
    }

    /// Relays for every media port of `server`, listening on `announced` (its
    /// `media.public_ip`).
    pub async fn for_server(server: &RunningServer, announced: std::net::IpAddr) -> Vec<PathRelay> {
        let mut relays = Vec::new();
        for addr in server.registry().media_addrs() {
            let target =
                std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port());
            relays.push(
                PathRelay::start(std::net::SocketAddr::new(announced, addr.port()), target).await,
            );
        }
        relays
    }

    /// Kill the path of every client address seen so far; returns how many.
    pub fn cut(&self) -> usize {
        let mut s = self.cut.lock().unwrap();
        let seen: Vec<_> = s.seen.drain().collect();
        s.cut.extend(seen.iter().copied());
        seen.len()
    }
}

impl Drop for PathRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Simulcast (TRTC's big and small streams) in the tests: the big layer's profile.
pub const BIG: VideoProfile = VideoProfile::new(320, 240, 30, 400);
/// The small layer's profile.
pub const SMALL: VideoProfile = VideoProfile::new(160, 120, 15, 100);

/// The size of the last decoded video frame and how many frames had it.
#[derive(Default)]
pub struct Sizes {
    last: Mutex<Option<((u32, u32), u64)>>,
}

impl Sizes {
    pub fn output(self: &Arc<Self>) -> SubscribeOutput {
        let me = self.clone();
        SubscribeOutput::Frames(Arc::new(move |_, _, f: DecodedFrame| {
            if let FrameInfo::Video { width, height } = f.info {
                let mut last = me.last.lock().unwrap();
                *last = match *last {
                    Some((size, n)) if size == (width, height) => Some((size, n + 1)),
                    _ => Some(((width, height), 1)),
                };
            }
        }))
    }

    /// Wait until 5 frames in a row decode at `size`.
    pub async fn wait(&self, size: (u32, u32)) {
        poll_until(
            &format!("frames of {size:?}"),
            || matches!(*self.last.lock().unwrap(), Some((s, n)) if s == size && n >= 5),
        )
        .await;
    }
}

/// A 320×240 camera stream with a 160×120 small stream.
pub async fn small_stream() -> LocalStream {
    bounded(create_stream(
        StreamConfig::default()
            .with_video_profile(BIG)
            .with_small_stream(Some(SMALL)),
    ))
    .await
    .expect("stream with a small stream starts")
}
