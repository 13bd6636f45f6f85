//! `rtcroom serve`: the room server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use rtcroom_server::ServerConfig;
use rtcroom_server::config::{EmbeddedKeyFile, embedded_key_path};

/// Arguments of `rtcroom serve`.
#[derive(Args, Debug)]
#[command(
    after_help = "With no --config, runs the embedded default: loopback, one app whose key is \
kept in the key file (RTCROOM_HOME/embedded.toml, default ~/.rtcroom/embedded.toml) so other \
commands find it. RTCROOM__... environment overrides apply in both cases.\n\nExamples:\n  rtcroom serve\n  rtcroom serve --listen 127.0.0.1:0\n  \
rtcroom serve --config server.toml\n  RTCROOM__TIMEOUTS__HEARTBEAT_TIMEOUT_S=30 rtcroom serve --config server.toml\n  \
RTCROOM__TIMEOUTS__EVENT_BATCH_S=0 rtcroom serve"
)]
pub struct ServeArgs {
    /// TOML configuration file (plus RTCROOM__... environment overrides).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address, overriding the config (port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
}

/// Run the server until SIGINT/SIGTERM.
pub fn run(args: ServeArgs) -> ExitCode {
    let (mut config, key_file) = match &args.config {
        Some(path) => match ServerConfig::load(Some(path)) {
            Ok(c) => (c, None),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => {
            let path = embedded_key_path();
            let loaded = EmbeddedKeyFile::load_or_create(&path, args.listen.as_deref())
                .and_then(|k| Ok((k.server_config().with_env_overrides()?, k)));
            match loaded {
                Ok((config, k)) => (config, Some((path, k))),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    };
    if let Some(l) = &args.listen {
        config.listen.clone_from(l);
    }
    let listener = match rtcroom_server::server::bind(&config.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let (http, ws) = if config.tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    // The actual address (port 0 resolved) goes into the key file for the other commands.
    if let Some((path, mut k)) = key_file {
        // The embedded default hands out development UserSigs (for the demo page) only while
        // nothing but this machine can reach it, whatever the overrides moved.
        config.web.dev_usersig &= addr.ip().is_loopback();
        k.listen = addr.to_string();
        k.server_url = format!("{ws}://{addr}/ws");
        if let Err(e) = k.write(&path) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        println!("rtcroom embedded server");
        println!("  key file:   {}", path.display());
        println!("  sdkAppId:   {}", k.sdk_app_id);
        println!("  secretKey:  {}", k.secret_key);
        println!("  admin token: {}", k.admin_token);
    }
    println!(
        "listening: {ws}://{addr}/ws (admin {http}://{addr}/admin, metrics {http}://{addr}/metrics)"
    );
    println!("web SDK:   {http}://{addr}/sdk/trtc.js");
    if config.web.dev_usersig {
        println!("demo page: {http}://{addr}/ (open it in two tabs)");
    } else {
        println!(
            "demo page: {http}://{addr}/ (no development UserSigs here: the page needs your own)"
        );
    }
    tracing::info!(%addr, "rtcroom server listening");
    match rtcroom_server::run_until_signal(config, listener) {
        Ok(()) => {
            println!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
