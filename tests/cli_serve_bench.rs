//! `rtcroom serve` and `rtcroom bench join` as users run them: the real binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The keys scripts read at the top level of every report (issue #8).
const REPORT_KEYS: [&str; 16] = [
    "scenario",
    "clients",
    "publishers",
    "subscribers",
    "duration_s",
    "join_ms",
    "first_frame_ms",
    "join_failures",
    "packets_sent",
    "packets_received",
    "loss_pct",
    "freezes",
    "server_cpu_pct",
    "server_cpu_us_per_packet",
    "server_rss_bytes",
    "server_packets_forwarded",
];

fn assert_report_keys(r: &serde_json::Value) {
    for key in REPORT_KEYS {
        assert!(r.get(key).is_some(), "missing {key}: {r}");
    }
}

/// The child's stdout, line by line, read on a thread of its own.
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// The command's stdout, once it is checked to have succeeded (its stderr shown if not).
fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A JSON report the bench wrote.
fn read_report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn temp_home(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rtcroom-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn serve_embedded_default_writes_key_file_and_stops_on_sigterm() {
    let home = temp_home("serve");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RTCROOM_HOME", &home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    let url = loop {
        let line = rx
            .recv_timeout(deadline - Instant::now())
            .expect("server prints its address");
        lines.push(line.clone());
        if let Some(rest) = line.strip_prefix("listening: ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    let key = std::fs::read_to_string(home.join("embedded.toml")).unwrap();
    assert!(key.contains(&format!("server_url = \"{url}\"")), "{key}");
    assert!(lines.iter().any(|l| l.contains("secretKey")), "{lines:?}");

    // A user with the key file's credentials can join (through `bench`, which reads nothing
    // from the key file itself: pass the credentials explicitly).
    let parsed: toml::Value = toml::from_str(&key).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args([
            "bench",
            "join",
            "--clients",
            "3",
            "--duration",
            "0",
            "--server",
            &url,
            "--sdk-app-id",
            &parsed["sdk_app_id"].as_integer().unwrap().to_string(),
            "--secret-key",
            parsed["secret_key"].as_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "serve did not stop on SIGTERM"
        );
        std::thread::park_timeout(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn bench_join_writes_a_plausible_report() {
    let dir = temp_home("bench");
    let json = dir.join("join.json");
    let out = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args([
            "bench",
            "join",
            "--clients",
            "8",
            "--duration",
            "0.2",
            "--pin",
            "--json",
        ])
        .arg(&json)
        .env("RTCROOM_HOME", &dir)
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(stdout.contains("release           together"), "{stdout}");
    let r = read_report(&json);
    assert_report_keys(&r);
    assert_eq!(r["scenario"], "join");
    assert_eq!(r["clients"], 8);
    assert_eq!(r["join_failures"], 0);
    let p = &r["join_ms"];
    let (p50, p99, max) = (
        p["p50"].as_f64().unwrap(),
        p["p99"].as_f64().unwrap(),
        p["max"].as_f64().unwrap(),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= max && max < 30_000.0,
        "{p}"
    );
    // Released together: each join is timed from the one release, which comes before every
    // client's own send, so no client's time from the release is below its time from its
    // send (compared per percentile).
    assert_eq!(
        r["join_release"]
            .as_str()
            .map(|s| s.starts_with("together")),
        Some(true),
        "{r}"
    );
    let own = &r["join_ms_from_own_send"];
    for k in ["p50", "p99", "max"] {
        assert!(
            p[k].as_f64().unwrap() >= own[k].as_f64().unwrap(),
            "{k}: from release {p}, from own send {own}"
        );
    }
    // No media in a join run: loss and freezes are not measured, so not reported as 0.
    assert!(r["loss_pct"].is_null() && r["freezes"].is_null(), "{r}");
    // The joins' own CPU, from per-thread schedstat of each process.
    let jc = &r["join_cpu"];
    assert!(jc["server_ms"].as_f64().unwrap() > 0.0, "{jc}");
    assert!(jc["generator_ms"].as_f64().unwrap() > 0.0, "{jc}");
    // --pin: server and generator on disjoint CPUs (where there are two or more).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let split = &r["cpu_split"];
    if cpus >= 2 {
        let ids = |k: &str| -> Vec<u64> {
            split[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect()
        };
        let (server, generator) = (ids("server"), ids("generator"));
        assert!(!server.is_empty() && !generator.is_empty(), "{split}");
        assert!(server.iter().all(|c| !generator.contains(c)), "{split}");
    } else {
        assert!(split.is_null(), "{split}");
    }

    // Bad sizes are refused with a plain message.
    let out = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args(["bench", "join", "--clients", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--clients"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run a media bench `args` for 2 s with JSON and HTML reports in `dir`; returns its stdout,
/// the JSON report and the HTML page (after checking it succeeded).
fn media_bench(args: &[&str], dir: &std::path::Path) -> (String, serde_json::Value, String) {
    let json = dir.join("report.json");
    let html = dir.join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args(args)
        .args(["--duration", "2", "--json"])
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .env("RTCROOM_HOME", dir)
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    let page = std::fs::read_to_string(&html).unwrap();
    (stdout, read_report(&json), page)
}

/// Run a media scenario small and check the report's keys and that what was sent arrived.
fn media_scenario(args: &[&str], subscriptions_per_packet: u64) -> serde_json::Value {
    let dir = temp_home(args[1]);
    let (_, r, page) = media_bench(args, &dir);
    assert_report_keys(&r);
    let sent = r["packets_sent"].as_u64().unwrap();
    let received = r["packets_received"].as_u64().unwrap();
    let expected = sent * subscriptions_per_packet;
    assert!(sent > 50, "{r}");
    // Packets in flight at the window's edges make a small difference either way.
    assert!(
        received as f64 >= expected as f64 * 0.9 && received as f64 <= expected as f64 * 1.1,
        "received {received}, expected ≈ {expected}"
    );
    let forwarded = r["server_packets_forwarded"].as_u64().unwrap();
    assert!(
        forwarded as f64 >= expected as f64 * 0.9,
        "forwarded {forwarded}, expected ≈ {expected}"
    );
    assert!(r["server_cpu_us_per_packet"].as_f64().unwrap() > 0.0);
    assert!(r["series"].as_array().is_some_and(|s| !s.is_empty()));
    assert!(
        page.contains("<svg") && page.contains("Server CPU over time"),
        "{page}"
    );
    assert!(!page.contains("<script"));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

#[test]
fn bench_livestream_forwards_to_every_subscriber() {
    let r = media_scenario(&["bench", "livestream", "--subscribers", "3"], 3);
    assert_eq!(r["scenario"], "livestream");
    assert_eq!(r["subscribers"], 3);
    assert!(r["first_video_packet_ms"]["p50"].as_f64().unwrap() > 0.0);
    // The light publisher answers the server's keyframe request on subscribe at once (its
    // clip has a keyframe every 2 s: waiting for the next one would take ~1 s on average).
    assert!(
        r["publisher_keyframes_on_request"].as_u64().unwrap() > 0,
        "{r}"
    );
    let first_frame = r["first_frame_ms"]["p50"].as_f64().unwrap();
    assert!(
        first_frame > 0.0 && first_frame < 500.0,
        "subscribe → first complete keyframe: {first_frame} ms"
    );
}

#[test]
fn bench_meeting_and_audio_room() {
    // 2 publishers × 2 subscribers: each sent packet reaches 2 subscribers.
    let r = media_scenario(
        &[
            "bench",
            "meeting",
            "--publishers",
            "2",
            "--subscribers",
            "2",
        ],
        2,
    );
    assert_eq!(
        (r["publishers"].as_u64(), r["clients"].as_u64()),
        (Some(2), Some(4))
    );
    let r = media_scenario(
        &[
            "bench",
            "audio-room",
            "--publishers",
            "2",
            "--subscribers",
            "3",
        ],
        3,
    );
    assert_eq!(r["clip_video_packets"], 0);
    assert_eq!(r["scenario"], "audio-room");
}

/// `meeting --simulcast`: each subscriber gets one of the two layers (the small one carries
/// fewer packets, so fewer arrive than everything sent), loses nothing, and the layer
/// switches it times all complete.
#[test]
fn bench_meeting_with_simulcast_splits_the_layers_and_times_switches() {
    let dir = temp_home("simulcast");
    let (_, r, _) = media_bench(
        &[
            "bench",
            "meeting",
            "--publishers",
            "1",
            "--subscribers",
            "4",
            "--simulcast",
        ],
        &dir,
    );
    assert_report_keys(&r);
    assert_eq!(r["scenario"], "meeting-simulcast");
    let s = &r["simulcast"];
    assert_eq!(
        (
            s["subscribers_small"].as_u64(),
            s["subscribers_big"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(s["layer_switches"].as_u64(), Some(4), "{s}");
    assert_eq!(s["layer_switch_timeouts"].as_u64(), Some(0), "{s}");
    assert!(s["layer_switch_ms"]["p50"].as_f64().unwrap() > 0.0, "{s}");
    // Sent: both layers (and audio); each subscriber receives audio and one layer.
    let (sent, received) = (
        r["packets_sent"].as_u64().unwrap(),
        r["packets_received"].as_u64().unwrap(),
    );
    assert!(
        sent > 50 && received < sent * 4,
        "sent {sent}, received {received}"
    );
    assert!(received > sent, "sent {sent}, received {received}");
    assert!(r["loss_pct_sequence"].as_f64().unwrap() < 1.0, "{r}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server in a network namespace of its own, 10 % of its UDP datagrams dropped each way
/// (needs root, as on the CI machines): NACK/RTX repairs the video, Opus in-band FEC most of
/// the audio, and the namespace is gone afterwards.
#[test]
fn bench_over_a_lossy_link_repairs_video_and_cleans_up() {
    let dir = temp_home("lossy");
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args([
            "bench",
            "livestream",
            "--subscribers",
            "2",
            "--loss",
            "10",
            "--duration",
            "5",
            "--json",
        ])
        .arg(&json)
        .env("RTCROOM_HOME", &dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["link"]["loss_pct"], 10.0, "{r}");
    // Media went over the veth pair, not loopback.
    assert!(r["packets_received"].as_u64().unwrap() > 500, "{r}");
    // There was loss to repair, and it was repaired.
    assert!(r["nacks"].as_u64().unwrap() > 0, "{r}");
    let video = r["video_loss_pct"].as_f64().unwrap();
    assert!(video < 2.0, "video loss after NACK/RTX: {video} %");
    // Audio is never resent: about 19 % is lost over two lossy legs, and FEC recovers
    // much of it.
    let (audio, after_fec) = (
        r["audio_loss_pct"].as_f64().unwrap(),
        r["audio_loss_after_fec_pct"].as_f64().unwrap(),
    );
    assert!(
        audio > 5.0,
        "audio loss {audio} % (is the loss rule there?)"
    );
    assert!(
        after_fec < audio * 0.6,
        "FEC recovered too little: {audio} % → {after_fec} %"
    );
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.contains("rtcroom-bench-"), "namespace left: {list}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A network namespace with a veth pair to it, removed on drop (needs root, as on CI).
struct Namespace {
    name: String,
    ns_ip: String,
}

impl Namespace {
    fn new(tag: &str) -> Namespace {
        let pid = std::process::id();
        let name = format!("rtcroom-test-{tag}-{pid}");
        // A /30 in 10.128.0.0/10 from the pid (the bench's own use 10.64.0.0/10).
        let (x, y, z) = (128 + ((pid >> 14) & 63), (pid >> 6) & 255, (pid & 63) << 2);
        let host_ip = format!("10.{x}.{y}.{}", z + 1);
        let ns_ip = format!("10.{x}.{y}.{}", z + 2);
        let (hif, nif) = (format!("rt{pid}h"), format!("rt{pid}n"));
        let ns = Namespace {
            name: name.clone(),
            ns_ip: ns_ip.clone(),
        };
        for cmd in [
            format!("ip netns add {name}"),
            format!("ip link add {hif} type veth peer name {nif} netns {name}"),
            format!("ip addr add {host_ip}/30 dev {hif}"),
            format!("ip link set {hif} up"),
            format!("ip -n {name} addr add {ns_ip}/30 dev {nif}"),
            format!("ip -n {name} link set {nif} up"),
            format!("ip -n {name} link set lo up"),
        ] {
            let args: Vec<&str> = cmd.split(' ').collect();
            let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "`{cmd}` (needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ns
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `bench --server` against a server on another address (here: in a network namespace,
/// reached over a veth pair): the light clients send from the address that reaches it.
/// They once bound 127.0.0.1 whatever the server, and no media ever arrived (100 % loss).
#[test]
fn bench_against_a_server_in_another_namespace_gets_media_through() {
    let ns = Namespace::new("srv");
    let home = temp_home("netns-serve");
    let mut server = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(env!("CARGO_BIN_EXE_rtcroom"))
        .args(["serve", "--listen", &format!("{}:0", ns.ns_ip)])
        .env("RTCROOM_HOME", &home)
        .env("RTCROOM__MEDIA__BIND_IP", &ns.ns_ip)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut server);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut app, mut key, mut url) = (None, None, None);
    while url.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server prints its key and address");
        if let Some(v) = line.trim().strip_prefix("sdkAppId:") {
            app = Some(v.trim().to_owned());
        } else if let Some(v) = line.trim().strip_prefix("secretKey:") {
            key = Some(v.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("listening: ") {
            url = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    let url = url.unwrap();
    assert!(url.contains(&ns.ns_ip), "{url}");
    let dir = temp_home("netns-bench");
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args([
            "bench",
            "livestream",
            "--subscribers",
            "2",
            "--duration",
            "2",
        ])
        .args(["--server", &url])
        .args(["--sdk-app-id", &app.expect("sdkAppId printed")])
        .args(["--secret-key", &key.expect("secretKey printed")])
        .arg("--json")
        .arg(&json)
        .env("RTCROOM_HOME", &dir)
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let loss = r["loss_pct"].as_f64().unwrap();
    assert!(r["packets_received"].as_u64().unwrap() > 100, "{r}");
    assert!(loss < 5.0, "loss {loss} %");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&home);
}

/// Janus processes the bench started (their configuration lives in its temporary folder).
fn bench_janus_processes() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let c = String::from_utf8_lossy(c);
            c.starts_with("janus\0") && c.contains("rtcroom-bench-janus")
        })
        .count()
}

/// `--target both`: the same light clients against rtcroom, then Janus VideoRoom (Debian's
/// janus, started by the bench on loopback): media reaches every Janus subscriber too, both
/// reports carry the same keys, the ratios are there, and Janus is stopped afterwards.
#[test]
fn bench_livestream_against_rtcroom_and_janus_side_by_side() {
    let dir = temp_home("janus");
    let (stdout, r, page) = media_bench(
        &[
            "bench",
            "livestream",
            "--subscribers",
            "3",
            "--target",
            "both",
        ],
        &dir,
    );
    assert!(stdout.contains("janus/rtcroom"), "{stdout}");
    assert_eq!(r["target"], "both");
    for name in ["rtcroom", "janus"] {
        let t = &r[name];
        assert_report_keys(t);
        assert_eq!(t["target"], name);
        let sent = t["packets_sent"].as_u64().unwrap();
        let received = t["packets_received"].as_u64().unwrap();
        assert!(sent > 50, "{name}: {t}");
        assert!(
            received as f64 >= sent as f64 * 3.0 * 0.9,
            "{name}: received {received} of {sent} × 3"
        );
        let first_frame = t["first_frame_ms"]["p50"].as_f64().unwrap();
        assert!(first_frame > 0.0, "{name}: {t}");
        assert!(t["server_cpu_us_per_received_packet"].as_f64().unwrap() > 0.0);
        assert!(t["server_rss_bytes"].as_u64().unwrap() > 0);
    }
    assert!(
        r["janus"]["server"]
            .as_str()
            .unwrap()
            .starts_with("Janus 1"),
        "{}",
        r["janus"]["server"]
    );
    // Janus is counted by its subscribers, rtcroom by its own counter.
    assert!(r["janus"]["server_packets_forwarded"].is_null());
    assert!(r["rtcroom"]["server_packets_forwarded"].as_u64().unwrap() > 0);
    let ratio = r["janus_over_rtcroom"]["server_cpu_us_per_received_packet"]
        .as_f64()
        .unwrap();
    let expected = r["janus"]["server_cpu_us_per_received_packet"]
        .as_f64()
        .unwrap()
        / r["rtcroom"]["server_cpu_us_per_received_packet"]
            .as_f64()
            .unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
    assert!(page.contains("same run, same clients"), "{page}");
    assert_eq!(bench_janus_processes(), 0, "Janus was left running");
    let _ = std::fs::remove_dir_all(&dir);
}
