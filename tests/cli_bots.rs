//! The bots as people run them: the real binary, real server, real recordings checked with
//! gst-discoverer-1.0.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::discover;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtcroom-bots-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn recordings(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "mkv" || e == "webm"))
        .collect();
    v.sort();
    v
}

#[test]
fn demo_leaves_a_playable_recording() {
    let dir = temp_dir("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args(["demo", "--duration", "5", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("joined in"), "{stdout}");
    // A normal stop is quiet: no warnings (webrtc-rs warns on every close by default).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert!(
        stdout.contains("first video frame into the recording"),
        "{stdout}"
    );
    let files = recordings(&dir);
    assert_eq!(files.len(), 1, "{stdout}");
    assert!(
        stdout.contains(&files[0].display().to_string()),
        "the path is printed"
    );
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("broadcaster_main_2"), "{name}");
    let d = discover(&files[0]);
    let (video, audio, duration) = (d.video, d.audio, d.duration);
    assert!(video && audio, "both streams in {name}");
    assert!((4.0..=6.5).contains(&duration), "about 5 s, got {duration}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn spawn(args: &[&str], home: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rtcroom"))
        .args(args)
        .env("RTCROOM_HOME", home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Wait for a line containing `needle` on the child's stdout (bounded).
fn wait_line(child: &mut Child, needle: &str) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    line_where(&rx, deadline, &format!("no line with {needle:?}"), |l| {
        l.contains(needle)
    });
    rx
}

/// Send `signal` (as `kill` spells it: "-INT", "-TERM", …) to `child`.
fn send_signal(child: &Child, signal: &str) {
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
}

/// The next line from `lines` for which `wanted` holds, before `deadline` (else panics with
/// `what`).
fn line_where(
    lines: &std::sync::mpsc::Receiver<String>,
    deadline: Instant,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect(what);
        if wanted(&line) {
            return line;
        }
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(t.elapsed() < within, "process did not exit");
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Alice sends VP8 (as browsers do by default), bob H.264; the recorder asked for WebM
/// writes alice's VP8 as WebM and bob's H.264, which WebM cannot hold, as Matroska.
#[test]
fn record_two_publishers_then_sigint_finalises_files() {
    let home = temp_dir("home");
    let out = temp_dir("rec");
    let mut server = spawn(&["serve", "--listen", "127.0.0.1:0"], &home);
    let _server_lines = wait_line(&mut server, "listening:");
    let mut recorder = spawn(
        &[
            "record",
            "--room-id",
            "77",
            "--out",
            out.to_str().unwrap(),
            "--format",
            "webm",
        ],
        &home,
    );
    // The room as the user wrote it (not `Number(77)`).
    let rec_lines = wait_line(&mut recorder, "recording room 77 into");
    let mut pubs: Vec<Child> = ["alice", "bob"]
        .iter()
        .map(|u| {
            spawn(
                &[
                    "publish",
                    "--room-id",
                    "77",
                    "--user-id",
                    u,
                    "--video-profile",
                    "240p",
                    "--duration",
                    "4",
                    "--codec",
                    if *u == "alice" { "vp8" } else { "h264" },
                ],
                &home,
            )
        })
        .collect();
    // Both streams are being recorded.
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < 2 {
        let line = rec_lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("recorder output");
        if line.starts_with("recording alice") || line.starts_with("recording bob") {
            seen += 1;
        }
    }
    for p in &mut pubs {
        assert!(wait_exit(p, Duration::from_secs(30)).success());
    }
    // SIGINT: the recorder finalises its files and exits 0.
    send_signal(&recorder, "-INT");
    assert!(wait_exit(&mut recorder, Duration::from_secs(20)).success());
    let files = recordings(&out);
    assert_eq!(files.len(), 2, "{files:?}");
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert!(
        names[0].starts_with("alice_main_") && names[0].ends_with(".webm"),
        "{names:?}"
    );
    assert!(
        names[1].starts_with("bob_main_") && names[1].ends_with(".mkv"),
        "{names:?}"
    );
    for f in &files {
        let d = discover(f);
        assert!(d.video && d.audio, "{f:?}");
        assert!(d.duration > 2.0, "{f:?}: {}", d.duration);
    }
    assert!(
        discover(&files[0]).text.contains("VP8"),
        "alice's file holds VP8"
    );
    send_signal(&server, "-TERM");
    assert!(wait_exit(&mut server, Duration::from_secs(20)).success());
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&out);
}

/// `rtcroom publish --small-stream` sends a big and a small layer; `rtcroom record --layer
/// small` records the small one (160×120), and says so.
#[test]
fn the_recorder_records_the_small_stream_when_asked() {
    let home = temp_dir("home-small");
    let out = temp_dir("rec-small");
    let mut server = spawn(&["serve", "--listen", "127.0.0.1:0"], &home);
    let _server_lines = wait_line(&mut server, "listening:");
    let mut recorder = spawn(
        &[
            "record",
            "--room-id",
            "78",
            "--out",
            out.to_str().unwrap(),
            "--layer",
            "small",
        ],
        &home,
    );
    let rec_lines = wait_line(&mut recorder, "recording room 78 into");
    let mut publisher = spawn(
        &[
            "publish",
            "--room-id",
            "78",
            "--user-id",
            "alice",
            "--video-profile",
            "320x240@30:400",
            "--small-stream",
            "--duration",
            "4",
        ],
        &home,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let layer_line = line_where(&rec_lines, deadline, "recorder output", |l| {
        l.contains("layer")
    });
    assert!(
        layer_line.contains("Small layer (l)"),
        "the recorder's layer: {layer_line}"
    );
    assert!(wait_exit(&mut publisher, Duration::from_secs(30)).success());
    send_signal(&recorder, "-INT");
    assert!(wait_exit(&mut recorder, Duration::from_secs(20)).success());
    let files = recordings(&out);
    assert_eq!(files.len(), 1, "{files:?}");
    let verbose = Command::new("gst-discoverer-1.0")
        .arg("-v")
        .arg(&files[0])
        .output()
        .expect("gst-discoverer-1.0 runs");
    let text = String::from_utf8_lossy(&verbose.stdout);
    assert!(
        text.contains("Width: 160") && !text.contains("Width: 320"),
        "the small layer only: {text}"
    );
    send_signal(&server, "-TERM");
    assert!(wait_exit(&mut server, Duration::from_secs(20)).success());
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&out);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn publisher_and_recorder_survive_a_server_restart() {
    let Restarted {
        files,
        before_restart,
        ..
    } = restart_scenario("-TERM", false);
    // Media from after the restart was recorded: the recordings hold more than what was
    // published before it.
    let total: f64 = files.iter().map(|f| discover(f).duration).sum();
    assert!(
        total > before_restart + 2.0,
        "files {files:?}: {total:.1} s recorded, {before_restart:.1} s before the restart"
    );
    remove_parent(&files);
}

#[test]
fn a_server_killed_mid_recording_leaves_no_file_with_two_timelines() {
    for recorder_late in [false, true] {
        no_two_timelines("-KILL", recorder_late);
    }
}

/// A server frozen (SIGSTOP) until the publisher notices (ICE consent lost), then thawed:
/// the same process carries on, both bots get back, media flows again and the recordings
/// hold one timeline each.
#[test]
fn a_frozen_server_thawed_mid_recording_gets_media_flowing_again() {
    no_two_timelines("-STOP", false);
}

fn no_two_timelines(signal: &str, recorder_late: bool) {
    let r = restart_scenario(signal, recorder_late);
    let durations: Vec<(PathBuf, f64)> = r
        .files
        .iter()
        .map(|f| (f.clone(), discover(f).duration))
        .collect();
    let total: f64 = durations.iter().map(|(_, d)| d).sum();
    // Each file holds one timeline, so together they cover what was published before the
    // kill and after the recorder came back, less a reconnection (≤ 3 s). A file that went on
    // after the restart with timestamps from 0 again reports only the longer of its two
    // parts, seconds below this.
    let expected = r.before_restart + (r.published_for - r.back_at);
    assert!(
        total >= expected - 3.0,
        "{durations:?}: {total:.1} s recorded, {expected:.1} s expected (recorder late: \
         {recorder_late}; killed at {:.1} s, back at {:.1} s, publisher done at {:.1} s)",
        r.before_restart,
        r.back_at,
        r.published_for
    );
    remove_parent(&r.files);
}

fn remove_parent(files: &[PathBuf]) {
    if let Some(dir) = files.first().and_then(|f| f.parent()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A server stopped with `signal` and started again, under a publisher and a recorder. With
/// `recorder_late`, the recorder is frozen (SIGSTOP) across the restart and thawed only once
/// the publisher is back: it then re-joins a room where the stream is already published,
/// so it resumes its subscription instead of seeing the stream go and come back.
fn restart_scenario(signal: &str, recorder_late: bool) -> Restarted {
    let tag = format!(
        "{}{}",
        signal.trim_start_matches('-').to_lowercase(),
        if recorder_late { "-late" } else { "" }
    );
    let home = temp_dir(&format!("restart-home-{tag}"));
    let out = temp_dir(&format!("restart-rec-{tag}"));
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = spawn(&["serve", "--listen", &listen], &home);
    let _s = wait_line(&mut server, "listening:");
    let mut recorder = spawn(
        &["record", "--room-id", "88", "--out", out.to_str().unwrap()],
        &home,
    );
    let rec_lines = wait_line(&mut recorder, "recording room");
    let mut publisher = spawn(
        &[
            "publish",
            "--room-id",
            "88",
            "--user-id",
            "alice",
            "--video-profile",
            "240p",
            "--duration",
            "20",
        ],
        &home,
    );
    let pub_lines = wait_line(&mut publisher, "publishing as alice");
    let published_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    line_where(&rec_lines, deadline, "recorder output", |l| {
        l.starts_with("recording alice")
    });
    // Let a few seconds of media reach the file: the recorder's progress lines say how long
    // it has been running.
    line_where(&rec_lines, deadline, "recorder output", |l| {
        l.strip_prefix('[')
            .and_then(|l| l.split(" s]").next())
            .and_then(|t| t.trim().parse::<f64>().ok())
            .is_some_and(|t| t >= 6.0)
    });
    if recorder_late {
        send_signal(&recorder, "-STOP");
    }
    // Stop the server (as told) and start it again on the same address (same key file); or,
    // with SIGSTOP, freeze it until the publisher has noticed, and thaw it.
    send_signal(&server, signal);
    let before_restart = published_at.elapsed().as_secs_f64();
    if signal == "-STOP" {
        line_where(
            &pub_lines,
            deadline,
            "the publisher never noticed the frozen server",
            |l| l.starts_with('[') && !l.contains("Connected"),
        );
        send_signal(&server, "-CONT");
    } else {
        let status = wait_exit(&mut server, Duration::from_secs(20));
        if signal == "-TERM" {
            assert!(status.success());
        }
        server = spawn(&["serve", "--listen", &listen], &home);
        let _s = wait_line(&mut server, "listening:");
    }
    if recorder_late {
        // The publisher's progress lines: one not connected, then two connected ones.
        let mut seen_down = false;
        let mut up = 0;
        while up < 2 {
            let line = pub_lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("publisher output");
            if !line.starts_with('[') {
                continue;
            }
            if !line.contains("Connected") {
                seen_down = true;
            } else if seen_down {
                up += 1;
            }
        }
        send_signal(&recorder, "-CONT");
    }
    let back_at = published_at.elapsed().as_secs_f64();
    // Both bots reconnect by themselves; the publisher keeps publishing until its duration.
    assert!(wait_exit(&mut publisher, Duration::from_secs(40)).success());
    send_signal(&recorder, "-INT");
    assert!(wait_exit(&mut recorder, Duration::from_secs(20)).success());
    let published_for = published_at.elapsed().as_secs_f64();
    let files = recordings(&out);
    let total: f64 = files.iter().map(|f| discover(f).duration).sum();
    send_signal(&server, "-TERM");
    let _ = wait_exit(&mut server, Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&home);
    // The files stay for the caller to look at (it removes them).
    let _ = (total, &out);
    Restarted {
        files,
        before_restart,
        back_at,
        published_for,
    }
}

/// What [`restart_scenario`] saw (seconds since the publisher started).
struct Restarted {
    files: Vec<PathBuf>,
    /// When the server was stopped.
    before_restart: f64,
    /// When the recorder could come back (the server listening again, or the recorder thawed).
    back_at: f64,
    /// When the publisher stopped.
    published_for: f64,
}
