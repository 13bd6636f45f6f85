//! `rtcroom bench`: load and benchmark runs.
//!
//! With no `--server`, the bench starts the room server as a child process (`rtcroom serve` on
//! a free loopback port, with its own key file) so the server's CPU and memory come from its
//! own process accounting, separate from the load generator's.
//!
//! Scenarios: `join` (N clients join one room and leave), and the media scenarios with light
//! str0m clients replaying pre-encoded RTP (encode once, send many) to subscribers that
//! decrypt and count without decoding: `livestream` (1 anchor → N audience), `meeting`
//! (P publishers × S subscribers, rtc) and `audio-room` (P audio publishers → N listeners).

mod html;
mod janus;
mod light;
mod media;
mod netns;
mod relay;
mod soak;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use futures_util::{SinkExt, StreamExt};
use rtcroom_protocol::signal::{ClientEnvelope, ClientMessage, JoinRequest, encode};
use rtcroom_protocol::usersig::gen_user_sig;
use rtcroom_protocol::{Mode, Role, RtcError, UserId};
use rtcroom_server::EmbeddedKeyFile;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Most clients one run may use (file descriptors and ports on one machine).
pub const MAX_CLIENTS: usize = 15_000;
/// Every client step is bounded by this.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `rtcroom bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

/// Flags every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Signalling URL of a running server (default: start an embedded server).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// sdkAppId (with --server).
    #[arg(long, value_name = "N")]
    sdk_app_id: Option<u32>,
    /// Secret key the clients mint their UserSigs with (with --server).
    #[arg(
        long,
        value_name = "K",
        env = "RTCROOM_SECRET_KEY",
        hide_env_values = true
    )]
    secret_key: Option<String>,
    /// Seconds to hold the load once everyone has joined.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    duration: f64,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report (tables and plots, no network needed) here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Give the embedded server half of this machine's CPUs and the load generator the other
    /// half (CPU affinity), so the two do not compete for cores: the one-machine stand-in for
    /// a load generator on its own machine. Needs 2 CPUs or more; not used with --server.
    #[arg(long)]
    pin: bool,
    /// Run the embedded server in a network namespace of its own, reached over a veth pair
    /// (needs root); implied by --loss and --rate-kbit.
    #[arg(long)]
    netns: bool,
    /// Drop this percentage of the server's UDP datagrams at random, in each direction
    /// (iptables in the server's namespace): publishers' uplinks and subscribers' downlinks
    /// both lose it. Implies --netns.
    #[arg(long, value_name = "PCT")]
    loss: Option<f64>,
    /// Limit the server's downlink (server → clients) to this many kbit/s (tc tbf in the
    /// server's namespace). Implies --netns.
    #[arg(long, value_name = "KBIT")]
    rate_kbit: Option<u32>,
    /// Delay the media this many milliseconds each way (a userspace UDP relay between the
    /// clients and the server; this kernel has no netem). Implies --netns.
    #[arg(long, value_name = "MS")]
    delay_ms: Option<f64>,
    /// Add a uniformly random extra delay of up to this many milliseconds each way (packets
    /// may overtake each other). Implies --netns.
    #[arg(long, value_name = "MS")]
    jitter_ms: Option<f64>,
}

impl CommonArgs {
    /// The link impairment asked for, if any (`--netns` alone: an unimpaired namespace).
    fn impairment(&self) -> Option<netns::Impairment> {
        (self.netns || self.loss.is_some() || self.rate_kbit.is_some() || self.delay().is_some())
            .then(|| netns::Impairment {
                loss_pct: self.loss.unwrap_or(0.0),
                rate_kbit: self.rate_kbit,
            })
    }

    /// The delay asked for (zero: none).
    fn delay(&self) -> relay::Delay {
        relay::Delay {
            delay_ms: self.delay_ms.unwrap_or(0.0),
            jitter_ms: self.jitter_ms.unwrap_or(0.0),
        }
    }
}

/// The local address this machine sends from to reach `url`'s host (the light clients bind
/// it, so their media reaches a server in another namespace or on another machine).
fn source_ip_for(url: &str) -> anyhow::Result<std::net::IpAddr> {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or("");
    let addr = std::net::ToSocketAddrs::to_socket_addrs(rest)
        .with_context(|| format!("resolving {rest}"))?
        .next()
        .with_context(|| format!("{rest} resolves to no address"))?;
    let any: std::net::SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // Connecting a UDP socket sends nothing; it only picks the route and the source.
    let probe = std::net::UdpSocket::bind(any)?;
    probe
        .connect(addr)
        .with_context(|| format!("no route to {addr}"))?;
    Ok(probe.local_addr()?.ip())
}

/// Write the reports the flags ask for.
fn write_reports(common: &CommonArgs, report: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = &common.json {
        write_json(path, report)?;
    }
    if let Some(path) = &common.html {
        std::fs::write(path, html::render(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// P publishers (720p H.264 + Opus) × S subscribers in one rtc room; every subscriber
    /// subscribes to every publisher.
    #[command(
        after_help = "Example:\n  rtcroom bench meeting --publishers 4 --subscribers 20 --duration 10"
    )]
    Meeting {
        /// Publishing members.
        #[arg(long, value_name = "P", default_value_t = 4)]
        publishers: usize,
        /// Subscribing members.
        #[arg(long, value_name = "S", default_value_t = 10)]
        subscribers: usize,
        /// Subscribers started per second.
        #[arg(long, value_name = "PER_SEC", default_value_t = 50.0)]
        rate: f64,
        /// Server to measure: rtcroom, Janus VideoRoom, or both back to back (one report,
        /// side by side, with ratios).
        #[arg(long, value_enum, default_value_t = TargetChoice::Rtcroom)]
        target: TargetChoice,
        /// Publishers send a big (720p, 1.5 Mbit/s) and a small layer (320×180, 300 kbit/s);
        /// subscribers alternate small, big; then some switch layers one after another
        /// (`layer_switch_ms`: request → a keyframe of the other layer received). rtcroom
        /// only.
        #[arg(long)]
        simulcast: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// P audio-only publishers (Opus) → N listeners (live mode).
    #[command(
        name = "audio-room",
        after_help = "Example:\n  rtcroom bench audio-room --publishers 3 --subscribers 100 --duration 10"
    )]
    AudioRoom {
        /// Speaking members.
        #[arg(long, value_name = "P", default_value_t = 3)]
        publishers: usize,
        /// Listeners.
        #[arg(long, value_name = "N", default_value_t = 50)]
        subscribers: usize,
        /// Listeners started per second.
        #[arg(long, value_name = "PER_SEC", default_value_t = 100.0)]
        rate: f64,
        /// Server to measure: rtcroom, Janus VideoRoom, or both back to back (one report,
        /// side by side, with ratios).
        #[arg(long, value_enum, default_value_t = TargetChoice::Rtcroom)]
        target: TargetChoice,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// 1 anchor publishes 720p H.264 (~1.5 Mbit/s) + Opus to N audience members (live mode),
    /// who decrypt and count without decoding.
    #[command(
        after_help = "Examples:\n  rtcroom bench livestream --subscribers 50 --duration 10\n  \
        rtcroom bench livestream --subscribers 400 --duration 20 --json live.json"
    )]
    Livestream {
        /// Audience members.
        #[arg(long, value_name = "N", default_value_t = 50)]
        subscribers: usize,
        /// Embedded nodes: 1, or 2 to 4 for a cluster on a `redis-server` the bench starts
        /// (the anchor on the first node, the room's; the audience spread over all of them in
        /// turn, every other node serving its share as an edge fed by one node link).
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4))]
        nodes: usize,
        /// Subscribers started per second.
        #[arg(long, value_name = "PER_SEC", default_value_t = 100.0)]
        rate: f64,
        /// Server to measure: rtcroom, Janus VideoRoom, or both back to back (one report,
        /// side by side, with ratios).
        #[arg(long, value_enum, default_value_t = TargetChoice::Rtcroom)]
        target: TargetChoice,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Members come and go for a long time (publish, subscribe, unsubscribe, unpublish,
    /// leave, in cycles on several loops), with the server's RSS, file descriptors and
    /// threads sampled: shows whether anything accumulates.
    #[command(after_help = "Example (30 minutes):\n  \
        rtcroom bench soak --slots 8 --rooms 4 --duration 1800 --json soak.json")]
    Soak {
        /// Loops running cycles side by side.
        #[arg(long, value_name = "N", default_value_t = 8)]
        slots: usize,
        /// Rooms the loops take in turn.
        #[arg(long, value_name = "N", default_value_t = 4)]
        rooms: usize,
        /// Seconds of media per cycle.
        #[arg(long, value_name = "SECS", default_value_t = 3.0)]
        hold: f64,
        /// Seconds between samples of the server.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        sample: f64,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// N clients join one room (concurrently, or at --rate per second), hold, and leave.
    #[command(after_help = "Examples:\n  rtcroom bench join --clients 200\n  \
        rtcroom bench join --clients 10000 --mode live --rate 2000 --json join.json")]
    Join {
        /// Number of clients.
        #[arg(long, value_name = "N", default_value_t = 200)]
        clients: usize,
        /// Clients started per second (0: all connect first, then all join at once).
        #[arg(long, value_name = "PER_SEC", default_value_t = 0.0)]
        rate: f64,
        /// Room mode (default: rtc up to 300 clients, live above).
        #[arg(long, value_name = "rtc|live")]
        mode: Option<Mode>,
        /// The room to join (default: one named after this process). With a cluster, a room
        /// already placed on another node measures joins through a node that proxies them.
        #[arg(long, value_name = "ROOM")]
        room: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
}

impl Scenario {
    fn common(&self) -> &CommonArgs {
        match self {
            Scenario::Meeting { common, .. }
            | Scenario::AudioRoom { common, .. }
            | Scenario::Livestream { common, .. }
            | Scenario::Soak { common, .. }
            | Scenario::Join { common, .. } => common,
        }
    }
}

/// With `--pin`: the CPUs of the embedded server and of the load generator.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CpuSplit {
    /// The server's CPUs (the first half, rounded up).
    pub server: Vec<usize>,
    /// The load generator's CPUs (the rest).
    pub generator: Vec<usize>,
}

impl CpuSplit {
    /// Split `cpus` (those this process may use) in two; `None` with fewer than two.
    pub fn of(cpus: &[usize]) -> Option<CpuSplit> {
        if cpus.len() < 2 {
            return None;
        }
        let half = cpus.len().div_ceil(2);
        Some(CpuSplit {
            server: cpus[..half].to_vec(),
            generator: cpus[half..].to_vec(),
        })
    }
}

static CPU_SPLIT: std::sync::OnceLock<CpuSplit> = std::sync::OnceLock::new();

/// The CPUs this thread may run on (Linux affinity mask).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data (zeroed is the empty set); sched_getaffinity writes at
    // most size_of::<cpu_set_t>() bytes into it; CPU_ISSET reads it within bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The affinity mask of `cpus`.
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: as in `allowed_cpus`; CPU_SET is only given CPU numbers below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        set
    }
}

/// Run the calling thread (and the threads it starts later) on `cpus` only.
fn pin_current_thread(cpus: &[usize]) {
    let set = cpu_set(cpus);
    // SAFETY: `set` is a valid mask of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        tracing::warn!(?cpus, "could not set CPU affinity");
    }
}

/// With --pin, start the server under test (rtcroom or Janus) on the server's CPUs.
fn on_server_cpus(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    let Some(split) = CPU_SPLIT.get() else {
        return;
    };
    let set = cpu_set(&split.server);
    // SAFETY: the closure runs in the forked child before exec and makes only the
    // sched_setaffinity system call (async-signal-safe) on a mask built before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Run a scenario.
pub fn run(args: BenchArgs) -> ExitCode {
    let common = args.scenario.common();
    if common.pin && common.server.is_none() {
        match CpuSplit::of(&allowed_cpus()) {
            Some(split) => {
                // The load generator runs on its CPUs; the server under test is started on
                // the others (`on_server_cpus`).
                pin_current_thread(&split.generator);
                let _ = CPU_SPLIT.set(split);
            }
            None => eprintln!("note: --pin needs at least 2 CPUs; running unpinned"),
        }
    }
    let generator_cpus = CPU_SPLIT.get().map(|s| s.generator.clone());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(generator_cpus.as_ref().map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            Vec::len,
        ))
        .on_thread_start(move || {
            if let Some(cpus) = &generator_cpus {
                pin_current_thread(cpus);
            }
        })
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match args.scenario {
        Scenario::Join {
            clients,
            rate,
            mode,
            room,
            common,
        } => rt.block_on(join_scenario(clients, rate, mode, room, common)),
        Scenario::Livestream {
            subscribers,
            nodes,
            rate,
            target,
            common,
        } => rt.block_on(media::livestream(subscribers, nodes, rate, target, common)),
        Scenario::Soak {
            slots,
            rooms,
            hold,
            sample,
            common,
        } => rt.block_on(soak::soak(slots, rooms, hold, sample, common)),
        Scenario::Meeting {
            publishers,
            subscribers,
            rate,
            target,
            simulcast,
            common,
        } => rt.block_on(media::meeting(
            publishers,
            subscribers,
            rate,
            target,
            simulcast,
            common,
        )),
        Scenario::AudioRoom {
            publishers,
            subscribers,
            rate,
            target,
            common,
        } => rt.block_on(media::audio_room(
            publishers,
            subscribers,
            rate,
            target,
            common,
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Which server a media scenario measures (`--target`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetChoice {
    /// rtcroom's room server (embedded, or --server).
    Rtcroom,
    /// Janus VideoRoom (Debian's `janus`, started by the bench on loopback, or --server with
    /// a Janus WebSocket URL).
    Janus,
    /// rtcroom, then Janus, in one run: one report with both and the ratios.
    Both,
}

/// The kind of server a `Target` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerKind {
    Rtcroom,
    Janus,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Rtcroom => "rtcroom",
            ServerKind::Janus => "janus",
        }
    }
}

/// The room server under test.
struct Target {
    kind: ServerKind,
    url: String,
    sdk_app_id: u32,
    secret_key: String,
    child: Option<EmbeddedChild>,
    /// The address light clients bind their media sockets to.
    client_ip: std::net::IpAddr,
    /// The impairment the link to the embedded server has, if it runs in a namespace.
    link: Option<netns::Impairment>,
    /// The delaying relays the media goes through, with --delay-ms/--jitter-ms.
    relays: Option<relay::Relays>,
    /// With `--nodes N`: the other nodes (edges of the room), and the cluster's Redis.
    edges: Vec<EdgeNode>,
    _redis: Option<KillOnDrop>,
}

/// A node of an embedded cluster other than the room's.
struct EdgeNode {
    url: String,
    child: EmbeddedChild,
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An embedded server run as a child process (in its namespace, when there is one).
struct EmbeddedChild {
    child: Child,
    _home: TempDir,
    // Dropped after the child is killed (fields drop after `Drop::drop`).
    _netns: Option<netns::Netns>,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for EmbeddedChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh temporary directory, removed when dropped.
fn temp_home() -> anyhow::Result<TempDir> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let home = std::env::temp_dir().join(format!(
        "rtcroom-bench-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&home).context("temporary directory")?;
    Ok(TempDir(home))
}

/// Start `rtcroom serve` (this binary) with `RTCROOM_HOME=home` and `env`, on loopback.
fn spawn_serve(
    home: &std::path::Path,
    env: &[(&str, String)],
    args: &[&str],
) -> anyhow::Result<(Child, String)> {
    let exe = std::env::current_exe().context("locating the rtcroom binary")?;
    let mut command = Command::new(&exe);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    start_serve(command, home)
}

/// Run a prepared `rtcroom serve` command (on the server's CPUs with --pin) and wait for its
/// signalling URL.
fn start_serve(mut command: Command, home: &std::path::Path) -> anyhow::Result<(Child, String)> {
    on_server_cpus(&mut command);
    let mut child = command
        .env("RTCROOM_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the embedded server")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("listening: ") {
                let url = rest.split_whitespace().next().unwrap_or("").to_owned();
                let _ = tx.send(url);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(url) => Ok((child, url)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the embedded server did not start within 20 s")
        }
    }
}

/// Resource use of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStat {
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// CPU time a process has run, summed over its threads, in nanoseconds, from
/// `/proc/<pid>/task/*/schedstat` (Linux; nanosecond resolution where `/proc/<pid>/stat`
/// counts 10 ms ticks, too coarse for a burst of joins that lasts a few milliseconds).
pub fn proc_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        // A thread that ended between listing and reading simply no longer counts.
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat"))
            && let Some(ns) = text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    Some(total)
}

/// Read a process's CPU time and RSS from /proc (Linux).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    // Linux reports CPU time in clock ticks of 100 Hz on every mainstream configuration.
    Some(ProcStat {
        cpu_s: ticks / 100.0,
        rss_bytes: rss_kb * 1024,
    })
}

impl Target {
    async fn new(common: &CommonArgs) -> anyhow::Result<Target> {
        if let Some(url) = &common.server {
            let (Some(app), Some(key)) = (common.sdk_app_id, common.secret_key.clone()) else {
                bail!("--server needs --sdk-app-id and --secret-key (or RTCROOM_SECRET_KEY)");
            };
            if common.impairment().is_some() {
                bail!("--netns, --loss and --rate-kbit need the embedded server (no --server)");
            }
            return Ok(Target {
                kind: ServerKind::Rtcroom,
                url: url.clone(),
                sdk_app_id: app,
                secret_key: key,
                child: None,
                client_ip: source_ip_for(url)?,
                link: None,
                relays: None,
                edges: Vec::new(),
                _redis: None,
            });
        }
        let home = temp_home()?;
        let exe = std::env::current_exe().context("locating the rtcroom binary")?;
        let link = common.impairment();
        let delay = common.delay();
        delay.validate()?;
        let netns = link.as_ref().map(netns::Netns::create).transpose()?;
        // With a delay, the server announces the relays' address (the host's end).
        let relays = match &netns {
            Some(ns) if delay.is_some() => Some(relay::Relays::new(
                ns.host_ip.into(),
                ns.ns_ip.into(),
                delay,
            )),
            _ => None,
        };
        let command = match &netns {
            // `ip netns exec` execs the server: the child's pid is the server's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name])
                    .arg(&exe)
                    .args(["serve", "--listen", &format!("{}:0", ns.ns_ip)])
                    .env("RTCROOM__MEDIA__BIND_IP", ns.ns_ip.to_string());
                if relays.is_some() {
                    c.env("RTCROOM__MEDIA__PUBLIC_IP", ns.host_ip.to_string());
                }
                c
            }
            None => {
                let mut c = Command::new(&exe);
                c.args(["serve", "--listen", "127.0.0.1:0"]);
                c
            }
        };
        let (child, url) = start_serve(command, &home.0)?;
        let key = EmbeddedKeyFile::read(&home.0.join("embedded.toml"))?
            .context("the embedded server wrote no key file")?;
        Ok(Target {
            kind: ServerKind::Rtcroom,
            client_ip: source_ip_for(&url)?,
            url,
            sdk_app_id: key.sdk_app_id,
            secret_key: key.secret_key,
            child: Some(EmbeddedChild {
                child,
                _home: home,
                _netns: netns,
            }),
            link,
            relays,
            edges: Vec::new(),
            _redis: None,
        })
    }

    /// `nodes` embedded nodes on a `redis-server` started here: the first holds the room (its
    /// anchor joins there), each other serves its share of the audience as an edge.
    async fn cluster(common: &CommonArgs, nodes: usize) -> anyhow::Result<Target> {
        if common.server.is_some() || common.impairment().is_some() || common.delay().is_some() {
            bail!(
                "--nodes {nodes} runs embedded nodes on loopback (no --server, --netns, --loss, --rate-kbit, --delay-ms)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("a free port for redis-server")?
            .port();
        let redis = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting redis-server (Debian: apt-get install redis-server)")?;
        let redis = KillOnDrop(redis);
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let home = temp_home()?;
        let secret = format!("bench-cluster-secret-{}", std::process::id());
        let env = |id: &str| {
            vec![
                ("RTCROOM__CLUSTER__REDIS_URL", url.clone()),
                ("RTCROOM__CLUSTER__SECRET", secret.clone()),
                ("RTCROOM__CLUSTER__NODE_ID", id.to_owned()),
                ("RTCROOM__CLUSTER__PLACEMENT", "local".to_owned()),
                ("RTCROOM__CLUSTER__EDGE_AFTER_AUDIENCE", "0".to_owned()),
            ]
        };
        // Every node reads the one key file the first writes (the same apps on every node).
        let (origin, origin_url) = spawn_serve(&home.0, &env("origin"), &[])?;
        let mut edges = Vec::with_capacity(nodes - 1);
        for n in 1..nodes {
            let (child, url) = spawn_serve(&home.0, &env(&format!("edge{n}")), &[])?;
            edges.push(EdgeNode {
                url,
                child: EmbeddedChild {
                    child,
                    _home: temp_home()?,
                    _netns: None,
                },
            });
        }
        let key = EmbeddedKeyFile::read(&home.0.join("embedded.toml"))?
            .context("the embedded server wrote no key file")?;
        Ok(Target {
            kind: ServerKind::Rtcroom,
            client_ip: source_ip_for(&origin_url)?,
            url: origin_url,
            sdk_app_id: key.sdk_app_id,
            secret_key: key.secret_key,
            child: Some(EmbeddedChild {
                child: origin,
                _home: home,
                _netns: None,
            }),
            link: None,
            relays: None,
            edges,
            _redis: Some(redis),
        })
    }

    /// Where viewer `i` connects: the nodes in turn, the room's first.
    fn viewer_url(&self, i: usize) -> &str {
        match i % (self.edges.len() + 1) {
            0 => &self.url,
            k => &self.edges[k - 1].url,
        }
    }

    /// Each edge node's CPU and memory.
    fn edge_stats(&self) -> Vec<Option<ProcStat>> {
        self.edges
            .iter()
            .map(|e| proc_stat(e.child.child.id()))
            .collect()
    }

    /// Janus VideoRoom: at `--server` (a Janus WebSocket URL), or started on loopback.
    async fn janus(common: &CommonArgs) -> anyhow::Result<Target> {
        if common.impairment().is_some() {
            bail!(
                "--target janus runs on loopback only (no --netns, --loss, --rate-kbit, --delay-ms)"
            );
        }
        let (child, url, client_ip) = match &common.server {
            Some(url) => (None, url.clone(), source_ip_for(url)?),
            None => {
                let ip = janus::host_ipv4()?;
                let (child, url) = janus::start(ip, on_server_cpus).await?;
                (Some(child), url, ip.into())
            }
        };
        Ok(Target {
            kind: ServerKind::Janus,
            client_ip,
            url,
            sdk_app_id: 0,
            secret_key: String::new(),
            child,
            link: None,
            relays: None,
            edges: Vec::new(),
            _redis: None,
        })
    }

    fn stat(&self) -> Option<ProcStat> {
        self.child.as_ref().and_then(|c| proc_stat(c.child.id()))
    }

    fn now_unix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn join_request(&self, user: &str, room: &str, mode: Mode) -> anyhow::Result<JoinRequest> {
        Ok(JoinRequest {
            sdk_app_id: self.sdk_app_id,
            user_id: UserId::new(user).map_err(|e| anyhow::anyhow!(e.message))?,
            user_sig: gen_user_sig(
                u64::from(self.sdk_app_id),
                &self.secret_key,
                user,
                3600,
                Self::now_unix(),
            ),
            room_id: room.to_owned(),
            use_string_room_id: false,
            mode,
            role: Some(if mode == Mode::Live {
                Role::Audience
            } else {
                Role::Anchor
            }),
            private_map_key: None,
            auto_subscribe: false,
        })
    }
}

/// Percentiles of a sample, milliseconds (nearest rank).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Nearest-rank percentiles of `samples` (unsorted).
pub fn percentiles(samples: &[f64]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p / 100.0) * s.len() as f64).ceil() as usize;
        s[i.clamp(1, s.len()) - 1]
    };
    Some(Percentiles {
        p50: rank(50.0),
        p95: rank(95.0),
        p99: rank(99.0),
        max: s[s.len() - 1],
    })
}

/// What one client saw.
#[derive(Clone)]
enum JoinOutcome {
    /// `join_ms`: from the common release (or, paced, from the client's own send) to the
    /// reply; `send_ms`: from this client's own send to the reply.
    Joined {
        connect_ms: f64,
        join_ms: f64,
        send_ms: f64,
    },
    Failed {
        code: String,
    },
}

/// What every client of a join run shares with the driver.
#[derive(Clone)]
struct JoinShared {
    /// Holds the release instant once clients may send their join.
    go: tokio::sync::watch::Receiver<Option<Instant>>,
    /// Clients start on their own schedules (`--rate`), not at one release.
    paced: bool,
    /// Clients connected so far.
    connected: Arc<AtomicUsize>,
    /// Clients joined so far.
    joined: Arc<AtomicUsize>,
    /// Clients failed so far.
    failed: Arc<AtomicUsize>,
    /// Notified when clients should leave.
    release: Arc<tokio::sync::Notify>,
    /// Where each client reports its outcome.
    done: Arc<Outcomes>,
}

/// Where clients leave their outcomes: a slot each, and one wake-up for the driver when the
/// last is in. A message per client would wake the driver's thread once per join, and a
/// shared list would make clients wait on each other's lock, in the middle of a burst, on
/// the cores the server under test needs.
struct Outcomes {
    slots: Vec<std::sync::OnceLock<JoinOutcome>>,
    filled: AtomicUsize,
    all_in: tokio::sync::Notify,
}

impl Outcomes {
    fn new(expected: usize) -> Outcomes {
        Outcomes {
            slots: (0..expected).map(|_| std::sync::OnceLock::new()).collect(),
            filled: AtomicUsize::new(0),
            all_in: tokio::sync::Notify::new(),
        }
    }

    /// Client `i`'s outcome (the first one it reports counts).
    fn set(&self, i: usize, outcome: JoinOutcome) {
        let Some(slot) = self.slots.get(i) else {
            return;
        };
        if slot.set(outcome).is_ok()
            && self.filled.fetch_add(1, Ordering::AcqRel) + 1 == self.slots.len()
        {
            self.all_in.notify_one();
        }
    }

    /// Every outcome; a client that never reported counts as failed.
    fn take(&self) -> Vec<JoinOutcome> {
        self.slots
            .iter()
            .map(|s| {
                s.get().cloned().unwrap_or(JoinOutcome::Failed {
                    code: "no outcome".into(),
                })
            })
            .collect()
    }
}

/// Open a signalling WebSocket the way a lean client would: Nagle off (frames are small and
/// latency-bound) and a small read buffer (tungstenite's default 128 KiB buffer is zeroed on
/// every read, which costs the load generator more CPU than the server spends on a join).
pub(crate) async fn ws_connect(
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    Ok(ws)
}

/// If a server frame is the reply to request `id`: `Some(None)` on success, `Some(Some(e))`
/// on failure. The top-level keys are walked in order and only `type`, `id` and `error` are
/// decoded; the walk stops at `data` once `type` and `id` match (a reply carries `data` or
/// `error`, never both: docs/protocol.md), so a big room's member list is not even scanned.
/// A lean client's shortcut: the load generator shares the server's cores, and skipping a
/// ~200-member list through serde was a sixth of its CPU in a burst of joins.
fn reply_to(frame: &[u8], id: u64) -> Option<Option<RtcError>> {
    let mut p = Peek { b: frame, i: 0 };
    p.expect(b'{')?;
    let (mut is_reply, mut id_matches) = (None, None);
    let mut error: Option<&[u8]> = None;
    if p.peek()? == b'}' {
        return None;
    }
    loop {
        let key = p.string()?;
        p.expect(b':')?;
        match key {
            b"type" => is_reply = Some(p.string()? == b"reply"),
            b"id" => id_matches = Some(p.number()? == Some(id)),
            b"error" => error = Some(p.value()?),
            b"data" if is_reply == Some(true) && id_matches == Some(true) => return Some(None),
            _ => {
                p.value()?;
            }
        }
        if is_reply == Some(false) || id_matches == Some(false) {
            return None;
        }
        match p.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    match (is_reply, id_matches, error) {
        (Some(true), Some(true), Some(e)) => Some(Some(serde_json::from_slice(e).ok()?)),
        (Some(true), Some(true), None) => Some(None),
        _ => None,
    }
}

/// A forward-only walk over a JSON text for [`reply_to`]: just enough to find top-level keys
/// and skip values (strings with escapes, nested objects and arrays, scalars).
struct Peek<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Peek<'a> {
    fn skip_ws(&mut self) {
        while self.b.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// A string's raw bytes (escapes left as they are).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            match *self.b.get(self.i)? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Some(&self.b[start..self.i - 1]);
                }
                _ => self.i += 1,
            }
        }
    }

    /// An unsigned integer (`None` for any other number).
    fn number(&mut self) -> Option<Option<u64>> {
        let v = self.value()?;
        Some(std::str::from_utf8(v).ok()?.parse().ok())
    }

    /// Skip one value; returns its text.
    fn value(&mut self) -> Option<&'a [u8]> {
        let start = {
            self.skip_ws();
            self.i
        };
        match *self.b.get(self.i)? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.b.get(self.i)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while self
                    .b
                    .get(self.i)
                    .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
                {
                    self.i += 1;
                }
                if self.i == start {
                    return None;
                }
            }
        }
        Some(&self.b[start..self.i])
    }
}

async fn one_client(url: String, index: usize, join: JoinRequest, shared: JoinShared) {
    let JoinShared {
        go,
        paced,
        connected,
        joined,
        failed,
        release,
        done,
    } = shared;
    let t0 = Instant::now();
    let fail = |code: String| JoinOutcome::Failed { code };
    let conn = tokio::time::timeout(STEP_TIMEOUT, ws_connect(&url)).await;
    let mut ws = match conn {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            failed.fetch_add(1, Ordering::Relaxed);
            done.set(index, fail(format!("connect: {e}")));
            return;
        }
        Err(_) => {
            failed.fetch_add(1, Ordering::Relaxed);
            done.set(index, fail("connect: timeout".into()));
            return;
        }
    };
    let connect_ms = t0.elapsed().as_secs_f64() * 1e3;
    // Encoded before the burst: the round trip is from sending the frame, and encoding 200
    // joins after the start signal would take CPU from the server mid-burst.
    let frame = Message::text(encode(&ClientEnvelope::new(1, ClientMessage::Join(join))));
    // Wait for the starting signal: every client connects first, then all join together, so
    // the join round-trip measures joins under concurrency rather than the connect storm.
    connected.fetch_add(1, Ordering::Relaxed);
    let mut go = go;
    let released = match tokio::time::timeout(STEP_TIMEOUT, go.wait_for(|g| g.is_some())).await {
        Ok(Ok(r)) => *r,
        _ => {
            failed.fetch_add(1, Ordering::Relaxed);
            done.set(index, fail("start: timeout".into()));
            return;
        }
    };
    let t1 = Instant::now();
    // Released together: the join is timed from the common release, so the time this
    // client's task took to wake and send counts (as it does for users who press join at the
    // same moment). Paced: from its own send.
    let t_start = match released {
        Some(r) if !paced && r <= t1 => r,
        _ => t1,
    };
    if ws.send(frame).await.is_err() {
        failed.fetch_add(1, Ordering::Relaxed);
        done.set(index, fail("send".into()));
        return;
    }
    let outcome = tokio::time::timeout(STEP_TIMEOUT, async {
        while let Some(Ok(msg)) = ws.next().await {
            // Events may come first (peer-joins of earlier joiners): peek at the type, id and
            // error without decoding the rest (the member list of a big room's reply).
            let Message::Text(t) = msg else { continue };
            let Some(error) = reply_to(t.as_bytes(), 1) else {
                continue;
            };
            let (join_ms, send_ms) = (
                t_start.elapsed().as_secs_f64() * 1e3,
                t1.elapsed().as_secs_f64() * 1e3,
            );
            return match error {
                None => JoinOutcome::Joined {
                    connect_ms,
                    join_ms,
                    send_ms,
                },
                Some(error) => JoinOutcome::Failed {
                    code: error
                        .extra_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| error.code.value().to_string()),
                },
            };
        }
        JoinOutcome::Failed {
            code: "closed".into(),
        }
    })
    .await
    .unwrap_or(JoinOutcome::Failed {
        code: "join: timeout".into(),
    });
    let ok = matches!(outcome, JoinOutcome::Joined { .. });
    if ok {
        joined.fetch_add(1, Ordering::Relaxed);
    } else {
        failed.fetch_add(1, Ordering::Relaxed);
    }
    done.set(index, outcome);
    if ok {
        // Hold the membership (answering the server, draining events) until released.
        let released = release.notified();
        tokio::pin!(released);
        loop {
            tokio::select! {
                _ = &mut released => break,
                msg = ws.next() => match msg {
                    Some(Ok(Message::Ping(p))) => { let _ = ws.send(Message::Pong(p)).await; }
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
        let leave = encode(&ClientEnvelope::new(2, ClientMessage::Leave));
        let _ = ws.send(Message::text(leave)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

async fn join_scenario(
    clients: usize,
    rate: f64,
    mode: Option<Mode>,
    room: Option<String>,
    common: CommonArgs,
) -> anyhow::Result<()> {
    if clients == 0 || clients > MAX_CLIENTS {
        bail!("--clients must be between 1 and {MAX_CLIENTS}");
    }
    if !(rate.is_finite() && rate >= 0.0) {
        bail!("--rate must be a non-negative number");
    }
    if !(common.duration.is_finite() && (0.0..=3600.0).contains(&common.duration)) {
        bail!("--duration must be between 0 and 3600 seconds");
    }
    let mode = mode.unwrap_or(if clients <= 300 {
        Mode::Rtc
    } else {
        Mode::Live
    });
    let target = Target::new(&common).await?;
    let room = room.unwrap_or_else(|| format!("{}", 1 + (std::process::id() % 1_000_000)));
    let before = target.stat();
    let started = Instant::now();
    let release = Arc::new(tokio::sync::Notify::new());
    let joined = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Outcomes::new(clients));
    let (go_tx, go_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(clients);
    // With --rate, each client starts (connects and joins) on its own schedule; without,
    // all connect first and then join at the same instant.
    let paced = rate > 0.0;
    // CPU spent on the joins themselves: from the start signal until the last outcome.
    let server_pid = target.child.as_ref().map(|c| c.child.id());
    let cpu_now = move || {
        (
            server_pid.and_then(proc_cpu_ns),
            proc_cpu_ns(std::process::id()),
        )
    };
    let mut cpu_at_go = (None, None);
    if paced {
        cpu_at_go = cpu_now();
        let _ = go_tx.send(Some(Instant::now()));
    }
    for i in 0..clients {
        if paced {
            tokio::time::sleep_until(
                tokio::time::Instant::from_std(started) + Duration::from_secs_f64(i as f64 / rate),
            )
            .await;
        }
        let join = target.join_request(&format!("bench-{i}"), &room, mode)?;
        let shared = JoinShared {
            go: go_rx.clone(),
            paced,
            connected: connected.clone(),
            joined: joined.clone(),
            failed: failed.clone(),
            release: release.clone(),
            done: done.clone(),
        };
        tasks.push(tokio::spawn(one_client(
            target.url.clone(),
            i,
            join,
            shared,
        )));
    }
    if !paced {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < clients
            && Instant::now() < deadline
        {
            tick.tick().await;
        }
        cpu_at_go = cpu_now();
        let _ = go_tx.send(Some(Instant::now()));
    }
    let mut progress = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = done.all_in.notified() => break,
            _ = progress.tick() => {
                eprint!(
                    "\rjoin: {}/{clients} joined, {} failed, {:.1} s   ",
                    joined.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
                // Every client reports before it ends; one that ended without (a panic)
                // must not hang the run.
                if tasks.iter().all(|t| t.is_finished()) {
                    break;
                }
            }
        }
    }
    let cpu_at_end = cpu_now();
    let outcomes = done.take();
    eprintln!();
    let all_joined_at = started.elapsed();
    // Hold the room full, then sample the server.
    tokio::time::sleep(Duration::from_secs_f64(common.duration)).await;
    let held = target.stat();
    release.notify_waiters();
    for t in tasks {
        let _ = tokio::time::timeout(STEP_TIMEOUT, t).await;
    }
    let total = started.elapsed();

    let mut join_ms = Vec::new();
    let mut send_ms = Vec::new();
    let mut connect_ms = Vec::new();
    let mut failures: std::collections::BTreeMap<String, usize> = Default::default();
    for o in &outcomes {
        match o {
            JoinOutcome::Joined {
                connect_ms: c,
                join_ms: j,
                send_ms: d,
            } => {
                connect_ms.push(*c);
                join_ms.push(*j);
                send_ms.push(*d);
            }
            JoinOutcome::Failed { code } => *failures.entry(code.clone()).or_default() += 1,
        }
    }
    let join_p = percentiles(&join_ms);
    let connect_p = percentiles(&connect_ms);
    let server_cpu = match (before, held) {
        (Some(b), Some(h)) => Some(h.cpu_s - b.cpu_s),
        _ => None,
    };
    let report = json!({
        "scenario": "join",
        "clients": clients,
        "publishers": 0,
        "subscribers": 0,
        "duration_s": total.as_secs_f64(),
        "join_ms": join_p,
        "join_ms_from_own_send": percentiles(&send_ms),
        "join_release": if paced { json!(format!("paced, {rate} per second, each timed from its own send")) } else { json!("together: every client connected first, then one release; each timed from the release") },
        "first_frame_ms": null,
        "join_failures": outcomes.len() - join_ms.len(),
        "join_failures_by_code": failures,
        "connect_ms": connect_p,
        "all_joined_s": all_joined_at.as_secs_f64(),
        "mode": mode.as_str(),
        "packets_sent": 0,
        "packets_received": 0,
        "loss_pct": null,
        "freezes": null,
        "server_cpu_pct": server_cpu.map(|c| 100.0 * c / (all_joined_at.as_secs_f64() + common.duration).max(1e-9)),
        "server_cpu_us_per_packet": null,
        "server_rss_bytes": held.map(|h| h.rss_bytes),
        "server_rss_bytes_per_member": held.map(|h| h.rss_bytes as f64 / clients as f64),
        "server_packets_forwarded": if target.child.is_some() { json!(0) } else { json!(null) },
        "server": if target.child.is_some() { "embedded (child process)" } else { target.url.as_str() },
        "cpu_split": CPU_SPLIT.get(),
        "join_cpu": join_cpu_json(cpu_at_go, cpu_at_end, clients),
    });
    let mut report = report;
    report["join_ms_samples"] = json!(join_ms);
    print_join_summary(&report);
    write_reports(&common, &report)?;
    if join_ms.is_empty() {
        bail!("no client joined");
    }
    Ok(())
}

fn fmt_p(v: &serde_json::Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    format!(
        "p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        v["p50"].as_f64().unwrap_or(0.0),
        v["p95"].as_f64().unwrap_or(0.0),
        v["p99"].as_f64().unwrap_or(0.0),
        v["max"].as_f64().unwrap_or(0.0)
    )
}

/// CPU time the server (embedded only) and the load generator spent from the start signal
/// to the last join outcome.
fn join_cpu_json(
    at_go: (Option<u64>, Option<u64>),
    at_end: (Option<u64>, Option<u64>),
    clients: usize,
) -> serde_json::Value {
    let ms = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e6),
        _ => None,
    };
    let server = ms(at_go.0, at_end.0);
    json!({
        "server_ms": server,
        "server_us_per_join": server.map(|ms| ms * 1e3 / clients.max(1) as f64),
        "generator_ms": ms(at_go.1, at_end.1),
    })
}

fn print_join_summary(r: &serde_json::Value) {
    println!(
        "scenario          join ({} mode)",
        r["mode"].as_str().unwrap_or("?")
    );
    println!("clients           {}", r["clients"]);
    println!(
        "release           {}",
        r["join_release"].as_str().unwrap_or("?")
    );
    println!("join              {} ms", fmt_p(&r["join_ms"]));
    println!(
        "  from own send   {} ms",
        fmt_p(&r["join_ms_from_own_send"])
    );
    println!("ws connect        {} ms", fmt_p(&r["connect_ms"]));
    println!(
        "join failures     {} {}",
        r["join_failures"], r["join_failures_by_code"]
    );
    if let Some(rss) = r["server_rss_bytes"].as_u64() {
        println!(
            "server memory     {:.1} MB RSS ({:.1} KB per member)",
            rss as f64 / 1e6,
            r["server_rss_bytes_per_member"].as_f64().unwrap_or(0.0) / 1e3
        );
    }
    if let Some(cpu) = r["server_cpu_pct"].as_f64() {
        println!("server CPU        {cpu:.1}% of a core");
    }
    let jc = &r["join_cpu"];
    if let (Some(s), Some(per)) = (jc["server_ms"].as_f64(), jc["server_us_per_join"].as_f64()) {
        println!(
            "joins' CPU        server {s:.2} ms ({per:.1} µs per join), load generator {:.2} ms",
            jc["generator_ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "duration          {:.2} s",
        r["duration_s"].as_f64().unwrap_or(0.0)
    );
}

fn write_json(path: &Path, report: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&s).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        let p = percentiles(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((p.p50, p.max), (2.0, 3.0));
        assert!(percentiles(&[]).is_none());
    }

    #[test]
    fn reply_peek_finds_the_reply_and_its_error_only() {
        let ok = r#"{"type":"reply","v":1,"id":1,"data":{"kind":"joined","members":[{"userId":"a","role":"anchor"}]}}"#;
        assert!(matches!(reply_to(ok.as_bytes(), 1), Some(None)));
        assert!(
            reply_to(ok.as_bytes(), 2).is_none(),
            "another request's reply"
        );
        let err = r#"{"type":"reply","v":1,"id":1,"error":{"code":16388,"extraCode":-102052,"message":"full"}}"#;
        let e = reply_to(err.as_bytes(), 1).unwrap().unwrap();
        assert_eq!((e.code.value(), e.extra_code), (16388, Some(-102052)));
        // Keys in any order, nested strings with brackets, quotes and escapes, whitespace.
        let shuffled = r#" { "v" : 1 , "data" : {"members":[{"userId":"a]}\"{","role":"x"}]}, "id":1, "type":"reply" } "#;
        assert!(matches!(reply_to(shuffled.as_bytes(), 1), Some(None)));
        let late_error =
            r#"{"error":{"code":16388,"message":"a \"quoted\" }"},"id":1,"type":"reply","v":1}"#;
        let e = reply_to(late_error.as_bytes(), 1).unwrap().unwrap();
        assert_eq!(e.code.value(), 16388);
        assert!(matches!(
            reply_to(br#"{"type":"reply","v":1,"id":1}"#, 1),
            Some(None)
        ));
        for other in [
            r#"{"type":"reply","v":1,"id":12,"data":{}}"#,
            r#"{"type":"reply","v":1,"id":1.5,"data":{}}"#,
            r#"{"type":"reply","v":1,"id":1,"error":{"code":"nope"}}"#,
            r#"{"type":"reply","v":1,"id":1"#,
            r#"{"type":"reply","v":1,"data":{"unterminated":"#,
            r#"{}"#,
            "",
            r#"{"type":"event","event":"peer-join","userId":"a"}"#,
            r#"{"type":"events","events":[{"event":"peer-join","userId":"a"}]}"#,
            "not json",
        ] {
            assert!(reply_to(other.as_bytes(), 1).is_none(), "{other}");
        }
    }

    #[test]
    fn outcomes_count_each_client_once_and_wake_the_driver_at_the_last() {
        let o = Outcomes::new(3);
        let joined = || JoinOutcome::Joined {
            connect_ms: 1.0,
            join_ms: 2.0,
            send_ms: 1.5,
        };
        o.set(0, joined());
        o.set(0, JoinOutcome::Failed { code: "x".into() }); // a second report is ignored
        o.set(7, joined()); // not a client
        o.set(2, joined());
        assert_eq!(o.filled.load(Ordering::Relaxed), 2);
        let codes = |v: Vec<JoinOutcome>| -> Vec<String> {
            v.into_iter()
                .map(|x| match x {
                    JoinOutcome::Joined { .. } => "ok".into(),
                    JoinOutcome::Failed { code } => code,
                })
                .collect()
        };
        assert_eq!(codes(o.take()), ["ok", "no outcome", "ok"]);
        o.set(
            1,
            JoinOutcome::Failed {
                code: "-100".into(),
            },
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let woke = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), o.all_in.notified()).await
        });
        assert!(woke.is_ok(), "the last outcome wakes the driver");
        assert_eq!(codes(o.take()), ["ok", "-100", "ok"]);
    }

    #[test]
    fn join_cpu_is_the_difference_and_null_without_a_server() {
        let j = join_cpu_json(
            (Some(1_000_000), Some(0)),
            (Some(5_000_000), Some(2_500_000)),
            200,
        );
        assert_eq!(j["server_ms"], 4.0);
        assert_eq!(j["server_us_per_join"], 20.0);
        assert_eq!(j["generator_ms"], 2.5);
        let j = join_cpu_json((None, Some(0)), (None, Some(1_000_000)), 200);
        assert!(j["server_ms"].is_null() && j["server_us_per_join"].is_null());
        assert_eq!(j["generator_ms"], 1.0);
        assert!(proc_cpu_ns(std::process::id()).is_some_and(|ns| ns > 0));
    }

    #[test]
    fn cpu_split_gives_the_server_the_first_half() {
        assert_eq!(CpuSplit::of(&[0]), None);
        assert_eq!(
            CpuSplit::of(&[0, 1]),
            Some(CpuSplit {
                server: vec![0],
                generator: vec![1]
            })
        );
        let s = CpuSplit::of(&[0, 2, 3, 5, 7]).unwrap();
        assert_eq!((s.server, s.generator), (vec![0, 2, 3], vec![5, 7]));
        assert!(!allowed_cpus().is_empty(), "this thread runs somewhere");
    }

    #[test]
    fn reads_own_process_accounting() {
        let s = proc_stat(std::process::id()).unwrap();
        assert!(s.rss_bytes > 1_000_000);
        assert!(s.cpu_s >= 0.0);
    }
}
