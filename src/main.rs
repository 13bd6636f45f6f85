//! `rtcroom`: the command-line front end (server, credentials, bots, benchmarks).
//!
//! Exit codes: 0 success, 1 the operation failed (e.g. a ticket did not verify), 2 bad usage.

mod usersig;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// rtcroom: a self-hosted, TRTC-compatible real-time audio/video room system.
#[derive(Parser, Debug)]
#[command(name = "rtcroom", version, about, long_about = None)]
#[command(after_help = "Examples:\n  \
    rtcroom usersig gen --sdk-app-id 1400000000 --secret-key KEY --user-id denny\n  \
    rtcroom usersig verify --sdk-app-id 1400000000 --secret-key KEY --user-id denny --user-sig SIG")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mint and check TRTC UserSigs and PrivateMapKeys (tls-sig-api-v2 compatible).
    #[command(subcommand)]
    Usersig(usersig::UsersigCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
