//! `rtcroom`: the command-line front end (server, credentials, bots, benchmarks).
//!
//! Exit codes: 0 success, 1 the operation failed (e.g. a ticket did not verify), 2 bad usage.

mod alloc;
mod bench;
mod bots;
mod serve;
mod usersig;
mod whip;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// rtcroom: a self-hosted, TRTC-compatible real-time audio/video room system.
#[derive(Parser, Debug)]
#[command(name = "rtcroom", version, about, long_about = None)]
#[command(after_help = "Examples:\n  \
    rtcroom demo --duration 10\n  \
    rtcroom serve\n  \
    rtcroom publish --room-id 1234\n  \
    rtcroom record --room-id 1234 --out recordings\n  \
    rtcroom bench join --clients 200\n  \
    rtcroom usersig gen --sdk-app-id 1400000000 --secret-key KEY --user-id denny\n  \
    rtcroom usersig verify --sdk-app-id 1400000000 --secret-key KEY --user-id denny --user-sig SIG")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the room server (embedded default with no --config).
    Serve(serve::ServeArgs),
    /// Load and benchmark runs against a room server (embedded when no --server).
    Bench(bench::BenchArgs),
    /// Broadcast bot: join as anchor and publish the test pattern and tone, or a media file.
    Publish(bots::PublishArgs),
    /// Recording bot: record every published stream, one file per user and stream type.
    Record(bots::RecordArgs),
    /// The main job on an embedded default: server, broadcast bot and recording bot in one
    /// process on loopback; leaves a playable recording.
    Demo(bots::DemoArgs),
    /// Mint and check TRTC UserSigs and PrivateMapKeys (tls-sig-api-v2 compatible).
    #[command(subcommand)]
    Usersig(usersig::UsersigCommand),
}

/// The log filter without `RUST_LOG`: warnings, except from the webrtc-rs (0.17) modules
/// that warn on every normal close of a peer connection ("Failed to accept RTP
/// SessionSRTP has been closed", "Failed to close candidate …: the agent is closed", "mux: no
/// endpoint for packet": measured on each stop of `rtcroom demo`); their errors still show.
const DEFAULT_LOG: &str = "warn,webrtc::peer_connection::peer_connection_internal=error,\
                           webrtc_ice::agent::agent_internal=error,webrtc::mux=error";

fn main() -> ExitCode {
    alloc::pin_malloc_thresholds();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Publish(args) => bots::publish(args),
        Command::Record(args) => bots::record(args),
        Command::Demo(args) => bots::demo(args),
        Command::Usersig(cmd) => usersig::run(cmd),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
