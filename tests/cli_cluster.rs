//! Two `rtcroom serve` processes as nodes of a cluster on a real `redis-server`: a node killed
//! with SIGKILL (no goodbye to the cluster, no close frames) loses its room to the live node
//! once its registration expires, and members connected through the live node come back
//! into the re-placed room on their own, with decoded media flowing again.

#[path = "../server/tests/common/redis_server.rs"]
mod redis_server;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis_server::Redis;
use rtcroom::{
    ClientConfig, ConnectionState, DecodedFrame, FrameInfo, JoinOptions, Mode, StreamConfig,
    SubscribeOutput, VideoProfile, create_client, create_stream,
};
use rtcroom_protocol::usersig::gen_user_sig;

const APP: u32 = 1_400_000_077;
const KEY: &str = "cli-cluster-test-key";
const DEADLINE: Duration = Duration::from_secs(30);

/// A node: `rtcroom serve --config` with the cluster's default timings; killed on drop.
struct Node {
    child: Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serve(redis: &Redis, id: &str) -> Node {
    let dir = std::env::temp_dir().join(format!("rtcroom-cli-cluster-{}-{id}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nworkers = 1\n[[apps]]\nsdk_app_id = {APP}\n\
             secret_key = \"{KEY}\"\n[cluster]\nredis_url = \"{}\"\n\
             secret = \"cli-cluster-secret-0123\"\nnode_id = \"{id}\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + DEADLINE;
    let url = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the node prints its address");
        if let Some(rest) = line.strip_prefix("listening: ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    Node { child, url, dir }
}

fn member(url: &str, user: &str) -> ClientConfig {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ClientConfig::new(
        Mode::Rtc,
        APP,
        user,
        gen_user_sig(u64::from(APP), KEY, user, 86_400, now),
    )
    .with_server_url(url)
    .with_auto_subscribe(false)
}

/// A member subscribing to everything and counting its decoded video frames in `frames`.
fn viewer(url: &str, user: &str, frames: &Arc<AtomicU64>) -> ClientConfig {
    let counter = frames.clone();
    let mut cfg = member(url, user);
    cfg.auto_subscribe = true;
    cfg.auto_subscribe_output = SubscribeOutput::Frames(Arc::new(move |_, _, f: DecodedFrame| {
        if matches!(f.info, FrameInfo::Video { .. }) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }));
    cfg
}

/// Wait (bounded, checking every 20 ms) until `cond` holds.
async fn poll_until(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !cond() {
        assert!(t.elapsed() < DEADLINE, "timed out waiting for {what}");
        tick.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_loses_its_room_to_the_live_node_and_members_come_back() {
    let redis = Redis::start();
    let mut a = serve(&redis, "a");
    let b = serve(&redis, "b");
    let registered = |id: &str| {
        redis.conn().is_ok_and(|mut c| {
            redis::cmd("EXISTS")
                .arg(format!("rtcroom:node:{id}"))
                .query::<bool>(&mut c)
                .unwrap_or(false)
        })
    };
    poll_until("both nodes registered", || {
        registered("a") && registered("b")
    })
    .await;
    let room = 77;
    let host = create_client(member(&a.url, "host")).unwrap();
    tokio::time::timeout(DEADLINE, host.join(JoinOptions::new(room)))
        .await
        .expect("join in time")
        .expect("join");
    assert_eq!(redis.owner(APP, room).as_deref(), Some("a"));
    // Alice publishes and bob watches, both through b (with TRTC's reconnect schedule, 1 s
    // unit); their media flows through a's SFU.
    let alice = create_client(member(&b.url, "alice")).unwrap();
    tokio::time::timeout(DEADLINE, alice.join(JoinOptions::new(room)))
        .await
        .expect("join in time")
        .expect("join");
    let local = tokio::time::timeout(
        DEADLINE,
        create_stream(
            StreamConfig::default().with_video_profile(VideoProfile::new(320, 240, 30, 400)),
        ),
    )
    .await
    .expect("stream in time")
    .expect("stream");
    tokio::time::timeout(DEADLINE, alice.publish(&local))
        .await
        .expect("publish in time")
        .expect("publish");
    let frames = Arc::new(AtomicU64::new(0));
    let bob = create_client(viewer(&b.url, "bob", &frames)).unwrap();
    tokio::time::timeout(DEADLINE, bob.join(JoinOptions::new(room)))
        .await
        .expect("join in time")
        .expect("join");
    poll_until("bob decodes alice through a", || {
        frames.load(Ordering::Relaxed) >= 15
    })
    .await;

    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    poll_until("alice and bob reconnecting", || {
        alice.connection_state() == ConnectionState::Reconnecting
            && bob.connection_state() == ConnectionState::Reconnecting
    })
    .await;
    let before = frames.load(Ordering::Relaxed);
    poll_until("alice and bob back in the room", || {
        alice.connection_state() == ConnectionState::Connected
            && bob.connection_state() == ConnectionState::Connected
    })
    .await;
    let rejoined = killed.elapsed();
    poll_until("bob decodes alice again", || {
        frames.load(Ordering::Relaxed) >= before + 15
    })
    .await;
    eprintln!(
        "sigkill failover: re-joined {} ms, media back {} ms after the kill",
        rejoined.as_millis(),
        killed.elapsed().as_millis()
    );
    assert_eq!(redis.owner(APP, room).as_deref(), Some("b"));
    assert!(!registered("a"), "the killed node's registration expired");
}
