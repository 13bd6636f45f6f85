//! The bots people run rtcroom for: `publish` (broadcast bot), `record` (recording bot) and
//! `demo` (server + both bots in one process, on loopback).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args;
use rtcroom::{
    ClientConfig, ClientEvent, JoinOptions, Mode, RecordFormat, Role, RoomIdInput, SourceKind,
    StreamConfig, StreamType, SubscribeOutput, VideoCodec, VideoProfile, VideoStreamType,
};
use rtcroom_protocol::usersig::gen_user_sig;
use rtcroom_server::config::{EmbeddedKeyFile, embedded_key_path};

/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Connection flags every bot takes.
#[derive(Args, Debug, Clone)]
pub struct BotArgs {
    /// Signalling URL (default: the embedded server's address from its key file).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// sdkAppId (default: the embedded server's).
    #[arg(long, value_name = "N")]
    sdk_app_id: Option<u32>,
    /// Secret key: the bot mints its own UserSig (default: the embedded server's).
    #[arg(
        long,
        value_name = "K",
        env = "RTCROOM_SECRET_KEY",
        hide_env_values = true,
        conflicts_with = "user_sig"
    )]
    secret_key: Option<String>,
    /// A UserSig to use as is.
    #[arg(long, value_name = "S")]
    user_sig: Option<String>,
    /// Numeric room id.
    #[arg(long, value_name = "R", conflicts_with = "str_room_id")]
    room_id: Option<u32>,
    /// String room id.
    #[arg(long, value_name = "S")]
    str_room_id: Option<String>,
    /// The bot's user id.
    #[arg(long, value_name = "U")]
    user_id: Option<String>,
    /// rtc or live.
    #[arg(long, value_name = "rtc|live", default_value = "live")]
    mode: Mode,
    /// Role in live mode (publish: anchor; record: audience, i.e. invisible to the others).
    #[arg(long, value_name = "anchor|audience")]
    role: Option<Role>,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
}

/// Credentials and address, resolved from flags and the embedded key file.
struct Resolved {
    url: String,
    sdk_app_id: u32,
    user_id: String,
    user_sig: String,
    room: RoomIdInput,
    use_string_room_id: bool,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl BotArgs {
    fn resolve(&self, default_user: &str) -> anyhow::Result<Resolved> {
        let key = if self.server.is_none()
            || self.sdk_app_id.is_none()
            || (self.secret_key.is_none() && self.user_sig.is_none())
        {
            let path = embedded_key_path();
            EmbeddedKeyFile::read(&path)?.map(|k| (k, path))
        } else {
            None
        };
        let from_key = |what: &str| {
            anyhow::anyhow!(
                "no {what} given and no embedded server key file ({}); run `rtcroom serve` first or pass --server, --sdk-app-id and --secret-key",
                embedded_key_path().display()
            )
        };
        let url = match (&self.server, &key) {
            (Some(u), _) => u.clone(),
            (None, Some((k, _))) => k.server_url.clone(),
            (None, None) => return Err(from_key("--server")),
        };
        let sdk_app_id = match (self.sdk_app_id, &key) {
            (Some(a), _) => a,
            (None, Some((k, _))) => k.sdk_app_id,
            (None, None) => return Err(from_key("--sdk-app-id")),
        };
        let user_id = self
            .user_id
            .clone()
            .unwrap_or_else(|| default_user.to_owned());
        let user_sig = match (&self.user_sig, &self.secret_key, &key) {
            (Some(s), _, _) => s.clone(),
            (None, Some(k), _) => {
                gen_user_sig(u64::from(sdk_app_id), k, &user_id, 86_400, now_unix())
            }
            (None, None, Some((k, _))) => gen_user_sig(
                u64::from(sdk_app_id),
                &k.secret_key,
                &user_id,
                86_400,
                now_unix(),
            ),
            (None, None, None) => return Err(from_key("--secret-key or --user-sig")),
        };
        let (room, use_string_room_id) = match (&self.room_id, &self.str_room_id) {
            (Some(n), _) => (RoomIdInput::from(*n), false),
            (None, Some(s)) => (RoomIdInput::from(s.as_str()), true),
            (None, None) => (RoomIdInput::from(1u32), false),
        };
        Ok(Resolved {
            url,
            sdk_app_id,
            user_id,
            user_sig,
            room,
            use_string_room_id,
        })
    }
}

/// A room for messages: `1234` or `"class-1"`.
fn room_text(r: &RoomIdInput) -> String {
    match r {
        RoomIdInput::Number(n) => n.to_string(),
        RoomIdInput::String(s) => format!("{s:?}"),
    }
}

fn client_config(r: &Resolved, mode: Mode) -> ClientConfig {
    ClientConfig::new(mode, r.sdk_app_id, r.user_id.clone(), r.user_sig.clone())
        .with_string_room_ids(r.use_string_room_id)
        .with_server_url(r.url.clone())
        .with_auto_subscribe(false)
}

/// Resolves when the duration is over, or on SIGINT/SIGTERM.
async fn until_done(duration: Option<f64>) {
    match duration {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(d.max(0.0))) => {}
                _ = rtcroom_server::shutdown_signal() => {}
            }
        }
        None => rtcroom_server::shutdown_signal().await,
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn finish(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Parse a TRTC video profile name (`120p` … `4K`) or `WxH@fps:kbps`.
fn parse_profile(s: &str) -> Result<VideoProfile, String> {
    s.parse::<VideoProfile>()
        .map_err(|e| format!("{e}; presets: 120p 180p 240p 360p 480p 720p 1080p 1440p 4K"))
}

// ---- publish ------------------------------------------------------------------------------

/// Arguments of `rtcroom publish`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  rtcroom publish --room-id 1234\n  \
    rtcroom publish --room-id 1234 --source movie.mp4 --loop --video-profile 720p\n  \
    rtcroom publish --server ws://host:7900/ws --sdk-app-id 1400000000 --secret-key KEY --str-room-id class-1 --duration 60\n  \
    rtcroom publish --whip 'http://host:7900/whip/1400000000/bot?roomId=1234' --token USERSIG")]
pub struct PublishArgs {
    #[command(flatten)]
    bot: BotArgs,
    /// `test` (pattern and tone) or a media file.
    #[arg(long, value_name = "test|FILE", default_value = "test")]
    source: String,
    /// TRTC video profile (`120p` … `1080p`, `1440p`, `4K`) or `WxH@fps:kbps`.
    #[arg(long, value_name = "PROFILE", default_value = "480p", value_parser = parse_profile)]
    video_profile: VideoProfile,
    /// Loop the file instead of stopping at its end.
    #[arg(long = "loop")]
    looping: bool,
    /// Video codec to send.
    #[arg(long, value_name = "h264|vp8", default_value = "h264", value_parser = parse_codec)]
    codec: VideoCodec,
    /// Also publish a small stream (TRTC's `enableSmallStream`: a second, smaller encoding;
    /// each subscriber receives one of the two) at this profile; `--small-stream` alone:
    /// TRTC's default 160×120, 15 fps, 100 kbit/s.
    #[arg(long, value_name = "PROFILE", num_args = 0..=1, default_missing_value = "160x120@15:100", value_parser = parse_profile)]
    small_stream: Option<VideoProfile>,
    /// Publish over WHIP (RFC 9725) to this endpoint instead of joining over signalling:
    /// `http(s)://host/whip/{sdkAppId}/{userId}?roomId=…` (the room and user are in the URL).
    #[arg(long, value_name = "URL", requires = "token")]
    whip: Option<String>,
    /// The WHIP bearer token: the user's UserSig.
    #[arg(long, value_name = "T", requires = "whip")]
    token: Option<String>,
}

fn parse_codec(s: &str) -> Result<VideoCodec, String> {
    match s.to_ascii_lowercase().as_str() {
        "h264" | "h.264" => Ok(VideoCodec::H264),
        "vp8" => Ok(VideoCodec::Vp8),
        _ => Err(format!("codec must be h264 or vp8, got {s:?}")),
    }
}

/// The media `rtcroom publish` sends.
fn publish_source(args: &PublishArgs) -> anyhow::Result<SourceKind> {
    if args.source == "test" {
        return Ok(SourceKind::TestPattern { duration: None });
    }
    let path = PathBuf::from(&args.source);
    if !path.is_file() {
        bail!("--source {}: no such file", path.display());
    }
    Ok(SourceKind::File {
        path,
        looping: args.looping,
    })
}

/// Run the broadcast bot.
pub fn publish(args: PublishArgs) -> ExitCode {
    finish(runtime().and_then(|rt| rt.block_on(run_publish(args))))
}

async fn run_publish(args: PublishArgs) -> anyhow::Result<()> {
    if let (Some(url), Some(token)) = (&args.whip, &args.token) {
        return crate::whip::publish(
            crate::whip::WhipPublish {
                url: url.clone(),
                token: token.clone(),
                source: publish_source(&args)?,
                profile: args.video_profile,
                codec: match args.codec {
                    VideoCodec::Vp8 => rtcroom_pipelines::VideoCodec::Vp8,
                    _ => rtcroom_pipelines::VideoCodec::H264,
                },
            },
            until_done(args.bot.duration),
        )
        .await;
    }
    if args.bot.mode == Mode::Live && args.bot.role == Some(Role::Audience) {
        bail!("an audience member cannot publish (TRTC 5107): use --role anchor");
    }
    let r = args.bot.resolve("publisher")?;
    let client = rtcroom::create_client(client_config(&r, args.bot.mode))?;
    let mut events = client.events();
    let t0 = Instant::now();
    client
        .join(JoinOptions::new(r.room.clone()).with_role(Role::Anchor))
        .await?;
    let joined_ms = t0.elapsed().as_secs_f64() * 1e3;
    let source = publish_source(&args)?;
    let stream = rtcroom::create_stream(
        StreamConfig::default()
            .with_source(source)
            .with_video_profile(args.video_profile)
            .with_video_codec(args.codec)
            .with_small_stream(args.small_stream),
    )
    .await?;
    client.publish(&stream).await?;
    println!(
        "publishing as {} in room {} (joined in {joined_ms:.1} ms, published in {:.1} ms)",
        r.user_id,
        room_text(&r.room),
        t0.elapsed().as_secs_f64() * 1e3 - joined_ms
    );
    let started = Instant::now();
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut last_bytes = 0u64;
    let done = until_done(args.bot.duration);
    tokio::pin!(done);
    loop {
        tokio::select! {
            _ = &mut done => break,
            _ = progress.tick() => {
                let v = stream.get_local_video_stats();
                let a = stream.get_local_audio_stats();
                let bytes = v.bytes_sent + a.bytes_sent;
                let kbps = (bytes - last_bytes.min(bytes)) as f64 * 8.0 / 1000.0 / PROGRESS_EVERY.as_secs_f64();
                last_bytes = bytes;
                println!(
                    "[{:>6.1} s] {:?}, {} in room, {kbps:.0} kbit/s, {} frames sent",
                    started.elapsed().as_secs_f64(),
                    client.connection_state(),
                    client.remote_users().len() + 1,
                    v.frames_encoded
                );
            }
            e = events.recv() => match e {
                Some(ClientEvent::ClientBanned { reason, .. }) => bail!("removed from the room: {reason:?}"),
                Some(ClientEvent::Error(e)) => bail!("{e}"),
                Some(_) => {}
                None => bail!("the client stopped"),
            },
        }
    }
    let _ = client.unpublish(&stream).await;
    let _ = stream.close().await;
    let _ = client.leave().await;
    println!("stopped after {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

// ---- record -------------------------------------------------------------------------------

/// Arguments of `rtcroom record`.
#[derive(Args, Debug)]
#[command(
    after_help = "Files: OUT/<userId>_<main|auxiliary>_<start time>.<format>, one per user and \
stream type, audio and video together, no transcoding.\n\nExamples:\n  \
rtcroom record --room-id 1234 --out recordings\n  \
rtcroom record --room-id 1234 --out recordings --format mp4 --duration 600"
)]
pub struct RecordArgs {
    #[command(flatten)]
    bot: BotArgs,
    /// Directory for the recordings (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Container.
    #[arg(long, value_name = "mkv|mp4|webm", default_value = "mkv", value_parser = parse_format)]
    format: RecordFormat,
    /// Of a stream with a small stream (simulcast), the layer to record.
    #[arg(long, value_name = "big|small", default_value = "big", value_parser = parse_layer)]
    layer: VideoStreamType,
}

fn parse_layer(s: &str) -> Result<VideoStreamType, String> {
    match s {
        "big" => Ok(VideoStreamType::Big),
        "small" => Ok(VideoStreamType::Small),
        _ => Err(format!("layer must be big or small, got {s:?}")),
    }
}

fn parse_format(s: &str) -> Result<RecordFormat, String> {
    match s {
        "mkv" => Ok(RecordFormat::Mkv),
        "mp4" => Ok(RecordFormat::Mp4),
        "webm" => Ok(RecordFormat::WebM),
        _ => Err(format!("format must be mkv, mp4 or webm, got {s:?}")),
    }
}

/// Run the recording bot.
pub fn record(args: RecordArgs) -> ExitCode {
    finish(runtime().and_then(|rt| {
        rt.block_on(async {
            let files = run_record(&args.bot, &args.out, args.format, args.layer, None).await?;
            for f in files {
                println!("recorded {}", f.display());
            }
            Ok(())
        })
    }))
}

/// Where a live recording is written, and the name it gets when it is done.
struct Recording {
    partial_dir: PathBuf,
    file_name: String,
    format: RecordFormat,
}

/// The container a stream is recorded in: the one asked for when it can hold the stream's
/// video codec (no transcoding), else Matroska, which holds both (WebM cannot hold H.264,
/// MP4 here does not take VP8).
fn container_for(requested: RecordFormat, codec: Option<VideoCodec>) -> RecordFormat {
    match (requested, codec) {
        (RecordFormat::WebM, Some(VideoCodec::H264))
        | (RecordFormat::Mp4, Some(VideoCodec::Vp8)) => RecordFormat::Mkv,
        (f, _) => f,
    }
}

fn stream_type_name(t: StreamType) -> &'static str {
    match t {
        StreamType::Main => "main",
        StreamType::Auxiliary => "auxiliary",
    }
}

/// The recording bot: subscribe to every stream that is or becomes published, one file per
/// user and stream type. Returns the finished files. `first_frame` is notified when the first
/// whole video frame (reassembled from RTP, after the jitter buffer) goes to a recording.
async fn run_record(
    bot: &BotArgs,
    out: &Path,
    format: RecordFormat,
    layer: VideoStreamType,
    first_frame: Option<tokio::sync::oneshot::Sender<Instant>>,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let r = bot.resolve("recorder")?;
    let mut config = client_config(&r, bot.mode);
    config.auto_subscribe = false;
    let client = rtcroom::create_client(config)?;
    let mut events = client.events();
    // In live mode the recorder is audience: invisible to the others.
    let role = if bot.mode == Mode::Live {
        Role::Audience
    } else {
        Role::Anchor
    };
    client
        .join(JoinOptions::new(r.room.clone()).with_role(role))
        .await?;
    println!(
        "recording room {} into {} ({format:?})",
        room_text(&r.room),
        out.display()
    );
    let mut active: std::collections::HashMap<(String, StreamType), Recording> = Default::default();
    let mut finished = Vec::new();
    let mut first_frame = first_frame;
    let started = Instant::now();
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    // Until the first frame is recorded, look often (the demo reports when).
    let mut first_poll = tokio::time::interval(Duration::from_millis(10));
    let done = until_done(bot.duration);
    tokio::pin!(done);
    // A stream's recording may be in several files: after a re-join the engine records the
    // resumed subscription into a new one (`<user>_<type>-1.<ext>`, …), so that no file
    // holds two timelines. Each becomes `<user>_<type>_<start>[-N].<ext>`.
    let finalize = |rec: Recording, user: &str, t: StreamType, finished: &mut Vec<PathBuf>| {
        let ext = rec.format.extension();
        let stem = format!("{user}_{}", stream_type_name(t));
        let mut parts: Vec<(String, PathBuf)> = std::fs::read_dir(&rec.partial_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let suffix = name
                    .strip_prefix(stem.as_str())?
                    .strip_suffix(&format!(".{ext}"))?
                    .to_owned();
                (suffix.is_empty() || suffix.starts_with('-')).then(|| (suffix, e.path()))
            })
            .collect();
        // "" first, then -1, -2, … in order.
        parts.sort_by_key(|(suffix, _)| {
            suffix
                .trim_start_matches('-')
                .parse::<u32>()
                .map_or(0, |n| n + 1)
        });
        let base = rec
            .file_name
            .strip_suffix(&format!(".{ext}"))
            .unwrap_or(&rec.file_name)
            .to_owned();
        for (suffix, from) in parts {
            let to = out.join(format!("{base}{suffix}.{ext}"));
            if std::fs::rename(&from, &to).is_ok() {
                finished.push(to);
            }
        }
        let _ = std::fs::remove_dir(&rec.partial_dir);
    };
    loop {
        tokio::select! {
            _ = &mut done => break,
            _ = first_poll.tick(), if first_frame.is_some() => {
                let stats = client.get_remote_stats().await?;
                if stats.iter().any(|s| s.stats.video_frames_received > 0)
                    && let Some(tx) = first_frame.take()
                {
                    let _ = tx.send(Instant::now());
                }
            }
            _ = progress.tick() => {
                let stats = client.get_remote_stats().await?;
                let bytes: u64 = stats.iter().map(|s| s.stats.audio_bytes_received + s.stats.video_bytes_received).sum();
                println!(
                    "[{:>6.1} s] {:?}, recording {} stream(s), {:.1} MB received",
                    started.elapsed().as_secs_f64(), client.connection_state(), active.len(), bytes as f64 / 1e6
                );
            }
            e = events.recv() => match e {
                Some(ClientEvent::StreamAdded(s)) => {
                    let user = s.user_id.to_string();
                    let key = (user.clone(), s.stream_type);
                    if active.contains_key(&key) {
                        continue;
                    }
                    let stamp = chrono_stamp();
                    let partial_dir = out.join(format!(".partial-{user}-{}-{stamp}", stream_type_name(s.stream_type)));
                    std::fs::create_dir_all(&partial_dir)?;
                    let container = container_for(format, s.video_codec);
                    if container != format {
                        println!(
                            "{user} ({}) sends {}, which {format:?} cannot hold: recording it as {container:?}",
                            stream_type_name(s.stream_type),
                            s.video_codec.map_or("?".to_owned(), |c| c.to_string()),
                        );
                    }
                    let options = rtcroom::SubscribeOptions::new(
                        SubscribeOutput::Record { dir: partial_dir.clone(), format: container })
                        .with_video_type(Some(layer));
                    match client.subscribe(&s, options).await {
                        Ok(()) => {
                            let codec = s.video_codec.map_or(String::new(), |c| format!(", {c}"));
                            println!("recording {user} ({}{codec})", stream_type_name(s.stream_type));
                            active.insert(key, Recording {
                                partial_dir,
                                file_name: format!("{user}_{}_{stamp}.{}", stream_type_name(s.stream_type), container.extension()),
                                format: container,
                            });
                        }
                        Err(e) => eprintln!("cannot record {user}: {e}"),
                    }
                }
                Some(ClientEvent::VideoLayerChanged { user_id, stream_type, video_type, rid, reason }) => {
                    println!(
                        "recording {user_id} ({}): its {video_type:?} layer ({rid}) from here on ({reason:?})",
                        stream_type_name(stream_type)
                    );
                }
                Some(ClientEvent::StreamRemoved(s)) => {
                    let user = s.user_id.to_string();
                    if let Some(rec) = active.remove(&(user.clone(), s.stream_type)) {
                        let _ = client.unsubscribe(&s).await;
                        finalize(rec, &user, s.stream_type, &mut finished);
                        println!("{user} ({}) stopped: file closed", stream_type_name(s.stream_type));
                    }
                }
                Some(ClientEvent::ClientBanned { reason, .. }) => {
                    eprintln!("removed from the room: {reason:?}");
                    break;
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    // Leaving stops every subscription, which finalises the files.
    let _ = client.leave().await;
    for ((user, t), rec) in active.drain() {
        finalize(rec, &user, t, &mut finished);
    }
    Ok(finished)
}

/// UTC time as `YYYYmmddTHHMMSSZ` (for file names).
fn chrono_stamp() -> String {
    let secs = now_unix();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

// ---- demo ---------------------------------------------------------------------------------

/// Arguments of `rtcroom demo`.
#[derive(Args, Debug)]
#[command(
    after_help = "Starts a room server in this process on loopback (its own fresh key), a \
broadcast bot publishing the test pattern and tone, and a recording bot; prints when the first \
video frame went into the recording and leaves a playable recording.\n\nExample:\n  rtcroom demo --duration 10 --out demo-out"
)]
pub struct DemoArgs {
    /// How long to run, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Where the recording goes.
    #[arg(long, value_name = "DIR", default_value = "rtcroom-demo")]
    out: PathBuf,
}

/// Run the demo.
pub fn demo(args: DemoArgs) -> ExitCode {
    finish(runtime().and_then(|rt| rt.block_on(run_demo(args))))
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    if !(args.duration.is_finite() && (1.0..=3600.0).contains(&args.duration)) {
        bail!("--duration must be between 1 and 3600 seconds");
    }
    let key = format!("demo-{}", now_unix());
    let mut config = rtcroom_server::ServerConfig::single_app("127.0.0.1:0", 1_400_000_000, &key);
    config.workers = Some(2);
    let server = rtcroom_server::RunningServer::spawn(config).context("starting the server")?;
    println!("server: {} (in process)", server.ws_url());
    let bot = |user: &str, duration: f64| BotArgs {
        server: Some(server.ws_url()),
        sdk_app_id: Some(1_400_000_000),
        secret_key: Some(key.clone()),
        user_sig: None,
        room_id: Some(1234),
        str_room_id: None,
        user_id: Some(user.to_owned()),
        mode: Mode::Live,
        role: None,
        duration: Some(duration),
    };
    // The recorder first, so it sees the stream appear; it runs a little longer than the
    // publisher so the file holds the whole broadcast.
    let recorder_args = bot("recorder", args.duration + 1.5);
    let out = args.out.clone();
    let (ff_tx, ff_rx) = tokio::sync::oneshot::channel();
    let recorder = tokio::spawn(async move {
        run_record(
            &recorder_args,
            &out,
            RecordFormat::Mkv,
            VideoStreamType::Big,
            Some(ff_tx),
        )
        .await
    });
    let publisher_args = PublishArgs {
        bot: bot("broadcaster", args.duration),
        source: "test".into(),
        video_profile: VideoProfile::P360,
        looping: false,
        codec: VideoCodec::H264,
        small_stream: None,
        whip: None,
        token: None,
    };
    let publish_started = Instant::now();
    let publisher = tokio::spawn(run_publish(publisher_args));
    if let Ok(Ok(at)) = tokio::time::timeout(Duration::from_secs_f64(args.duration), ff_rx).await {
        println!(
            "first video frame into the recording: {:.0} ms after the broadcaster started \
             (a whole frame out of the recorder's jitter buffer)",
            at.duration_since(publish_started).as_secs_f64() * 1e3
        );
    }
    publisher.await.context("publisher task")??;
    let files = recorder.await.context("recorder task")??;
    if files.is_empty() {
        bail!("no recording was made");
    }
    for f in &files {
        println!(
            "recording: {} (play it with: gst-play-1.0 {})",
            f.display(),
            f.display()
        );
    }
    drop(server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse() {
        assert_eq!(parse_profile("720p").unwrap(), VideoProfile::P720);
        assert_eq!(parse_profile("4k").unwrap(), VideoProfile::P4K);
        assert!(parse_profile("999p").is_err());
        assert_eq!(parse_format("webm").unwrap(), RecordFormat::WebM);
        use RecordFormat::{Mkv, Mp4, WebM};
        let (h264, vp8) = (Some(VideoCodec::H264), Some(VideoCodec::Vp8));
        assert_eq!(container_for(WebM, vp8), WebM);
        assert_eq!(container_for(WebM, h264), Mkv);
        assert_eq!(container_for(WebM, None), WebM);
        assert_eq!(container_for(Mp4, h264), Mp4);
        assert_eq!(container_for(Mp4, vp8), Mkv);
        assert_eq!(container_for(Mkv, vp8), Mkv);
        assert!(parse_format("avi").is_err());
    }

    #[test]
    fn stamps_are_utc_civil_time() {
        let s = chrono_stamp();
        assert_eq!(s.len(), 16);
        assert!(s.starts_with("20") && s.ends_with('Z'));
    }
}
