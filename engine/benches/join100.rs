//! 100 joined clients in one process, no media: join time and process memory.
//!
//! Run: `cargo bench -p rtcroom --bench join100` (optionally `-- <clients> <hold_seconds>`).
//! Clients fill rtc rooms of at most [`ROOM_SIZE`] members (TRTC caps an rtc room at 300), so
//! 1,000 clients are four rooms; `RTCROOM_BENCH_ROOM_SIZE` changes the room size.
//! By default the room server runs in the same process (its own thread), so the RSS figures
//! include its per-session state. With `RTCROOM_BENCH_URL=ws://host:port/ws` the clients use
//! an external server instead (one configured with sdkAppId 1400000000 and key `bench-key`),
//! and the figures are the engine's alone.

use std::time::{Duration, Instant};

use rtcroom::{ClientConfig, JoinOptions, Mode, create_client};
use rtcroom_protocol::usersig::gen_user_sig;
use rtcroom_server::{RunningServer, ServerConfig};

const APP: u32 = 1_400_000_000;
const KEY: &str = "bench-key";
/// Members per room (`RTCROOM_BENCH_ROOM_SIZE` to change).
const ROOM_SIZE: usize = 250;

fn room_size() -> usize {
    std::env::var("RTCROOM_BENCH_ROOM_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(ROOM_SIZE)
}

/// The room of client `i`.
fn room_of(i: usize) -> u32 {
    1 + (i / room_size()) as u32
}

/// How many members the room of client `i` has when `n` clients joined.
fn members_with(i: usize, n: usize) -> usize {
    let first = i / room_size() * room_size();
    (n - first).min(room_size())
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// As the `rtcroom` CLI does at start (see its `alloc` module): keep glibc's mmap threshold
/// at 128 KiB. `RTCROOM_MALLOC_DYNAMIC=1` leaves glibc's dynamic threshold on, to compare.
fn pin_malloc_thresholds() -> bool {
    if std::env::var_os("RTCROOM_MALLOC_DYNAMIC").is_some() {
        return false;
    }
    // SAFETY: `mallopt` only sets an allocator parameter; called first thing in `main`,
    // before the runtime starts any thread.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) == 1 }
}

fn main() -> anyhow::Result<()> {
    let pinned = pin_malloc_thresholds();
    println!(
        "glibc mmap threshold: {}",
        if pinned {
            "pinned at 128 KiB"
        } else {
            "dynamic (glibc default)"
        }
    );
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100);
    let hold_s: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);

    let rss_start = status_kib("VmRSS:");
    let mut cfg = ServerConfig::single_app("127.0.0.1:0", APP, KEY);
    cfg.workers = Some(1);
    cfg.timeouts.shutdown_timeout_s = 1;
    let external = std::env::var("RTCROOM_BENCH_URL").ok();
    let server = match &external {
        Some(_) => None,
        None => Some(RunningServer::spawn(cfg)?),
    };
    let url = match (&external, &server) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => s.ws_url(),
        (None, None) => unreachable!("a server is started when no URL is given"),
    };
    println!(
        "server: {}",
        if external.is_some() {
            "external (not in these RSS figures)"
        } else {
            "in-process (included in RSS)"
        }
    );
    let rss_server = status_kib("VmRSS:");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();

    let clients: Vec<_> = (0..n)
        .map(|i| {
            let user = format!("bench-{i}");
            let sig = gen_user_sig(u64::from(APP), KEY, &user, 86_400, now);
            create_client(ClientConfig::new(Mode::Rtc, APP, user, sig).with_server_url(url.clone()))
        })
        .collect::<Result<_, _>>()?;
    let mut events: Vec<_> = clients.iter().map(|c| c.events()).collect();

    // Phase 1: the first half joins one at a time (uncontended join latency).
    let half = n / 2;
    let mut sequential = Vec::new();
    for (i, c) in clients[..half].iter().enumerate() {
        let t = Instant::now();
        c.join(JoinOptions::new(room_of(i))).await?;
        sequential.push(t.elapsed());
    }
    // Phase 2: the rest join all at once (a join storm).
    let storm_start = Instant::now();
    let storm: Vec<_> = clients[half..]
        .iter()
        .enumerate()
        .map(|(i, c)| async move {
            let t = Instant::now();
            c.join(JoinOptions::new(room_of(half + i)))
                .await
                .map(|_| t.elapsed())
        })
        .collect();
    let mut concurrent: Vec<Duration> = futures_util::future::try_join_all(storm).await?;
    let storm_total = storm_start.elapsed();

    // Every client sees every other one of its room.
    let converge_start = Instant::now();
    for (i, (c, ev)) in clients.iter().zip(events.iter_mut()).enumerate() {
        while c.remote_users().len() < members_with(i, n) - 1 {
            tokio::time::timeout(Duration::from_secs(30), ev.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("event stream ended"))?;
        }
    }
    let converge = converge_start.elapsed();
    let rss_joined = status_kib("VmRSS:");

    // Hold joined (heartbeats every 2 s) and measure steady-state cost.
    let cpu0 = cpu_seconds();
    let hold = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(hold_s);
    for ev in events.iter_mut() {
        // Drain what is pending so buffers do not count as memory growth.
        while ev.try_recv().is_some() {}
    }
    tokio::time::sleep_until(deadline).await;
    let cpu_hold = cpu_seconds() - cpu0;
    let held = hold.elapsed();
    let rss_held = status_kib("VmRSS:");
    let connected = clients
        .iter()
        .filter(|c| c.connection_state() == rtcroom::ConnectionState::Connected)
        .count();

    sequential.sort();
    concurrent.sort();
    println!(
        "clients: {n} joined {} rtc room(s) of at most {} ({connected} CONNECTED after holding)",
        room_of(n - 1),
        room_size()
    );
    println!(
        "join, one at a time ({half}): p50 {:?}  p95 {:?}  max {:?}",
        percentile(&sequential, 0.5),
        percentile(&sequential, 0.95),
        percentile(&sequential, 1.0)
    );
    println!(
        "join, {} at once: all done in {:?}; each p50 {:?}  p95 {:?}  max {:?}",
        n - half,
        storm_total,
        percentile(&concurrent, 0.5),
        percentile(&concurrent, 0.95),
        percentile(&concurrent, 1.0)
    );
    println!("all clients see all peers of their room after another {converge:?}");
    println!(
        "RSS: start {:.1} MiB, server up {:.1} MiB, {n} joined {:.1} MiB, after {:?} held {:.1} MiB (peak {:.1} MiB)",
        mib(rss_start),
        mib(rss_server),
        mib(rss_joined),
        held,
        mib(rss_held),
        mib(status_kib("VmHWM:"))
    );
    println!(
        "growth since before the clients (held - server up): {:.1} MiB = {:.0} KiB per client",
        mib(rss_held.saturating_sub(rss_server)),
        rss_held.saturating_sub(rss_server) as f64 / n as f64
    );
    println!(
        "CPU of this process while holding: {cpu_hold:.2} s over {:?} ({:.1}% of one core)",
        held,
        cpu_hold / held.as_secs_f64() * 100.0
    );
    for c in &clients {
        c.leave().await?;
    }
    drop(clients);
    drop(server);
    Ok(())
}
