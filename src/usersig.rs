//! `rtcroom usersig gen|verify`: TRTC tickets from the command line.
//!
//! Scripts depend on these flags and outputs: `gen` prints the ticket alone on stdout;
//! `verify` prints `key: value` lines on stdout and exits 0 when the ticket is valid, or prints
//! `valid: no`, the TRTC code and the reason and exits 1 when it is not.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use rtcroom_protocol::usersig::{
    self, DEFAULT_EXPIRE_SECS, Privileges, SigError, Ticket, verify_private_map_key,
    verify_user_sig,
};
use rtcroom_protocol::{RoomId, UserId};

/// `rtcroom usersig ...`
#[derive(Subcommand, Debug)]
pub enum UsersigCommand {
    /// Generate a UserSig, or a PrivateMapKey when a room is given.
    #[command(after_help = "Examples:\n  \
        rtcroom usersig gen --sdk-app-id 1400000000 --secret-key KEY --user-id denny\n  \
        rtcroom usersig gen --sdk-app-id 1400000000 --secret-key KEY --user-id denny \\\n      \
        --room-id 10001 --privilege-map 42 --expire 300")]
    Gen(GenArgs),
    /// Verify a UserSig, or a PrivateMapKey when a room is given.
    #[command(
        after_help = "Exit status: 0 valid, 1 invalid (the TRTC code and reason are printed).\n\n\
        Example:\n  \
        rtcroom usersig verify --sdk-app-id 1400000000 --secret-key KEY --user-id denny --user-sig SIG"
    )]
    Verify(VerifyArgs),
}

/// The room a PrivateMapKey is bound to.
#[derive(Args, Debug)]
#[group(id = "room", required = false, multiple = false)]
pub struct RoomArgs {
    /// Numeric room id (1..=4294967294): makes the ticket a PrivateMapKey for that room.
    #[arg(long, value_name = "R", value_parser = parse_numeric_room)]
    room_id: Option<RoomId>,
    /// String room id (1-64 bytes of A-Z a-z 0-9, space and !#$%&()+-:;<=.>?@[]^_{}|~,).
    #[arg(long, value_name = "S", value_parser = parse_string_room)]
    str_room_id: Option<RoomId>,
}

impl RoomArgs {
    fn room(&self) -> Option<&RoomId> {
        self.room_id.as_ref().or(self.str_room_id.as_ref())
    }
}

/// Arguments of `usersig gen`.
#[derive(Args, Debug)]
pub struct GenArgs {
    /// The application's sdkAppId.
    #[arg(long, value_name = "N")]
    sdk_app_id: u32,
    /// The application's secret key (used as raw UTF-8 bytes, as the official libraries do).
    #[arg(
        long,
        value_name = "K",
        env = "RTCROOM_SECRET_KEY",
        hide_env_values = true
    )]
    secret_key: String,
    /// The user the ticket is for (1-32 bytes of A-Z a-z 0-9 _ -).
    #[arg(long, value_name = "U", value_parser = parse_user_id)]
    user_id: UserId,
    /// Validity in seconds from now.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_EXPIRE_SECS)]
    expire: u64,
    /// The clock, as unix seconds (default: the system clock).
    #[arg(long, value_name = "UNIX")]
    now: Option<u64>,
    #[command(flatten)]
    room: RoomArgs,
    /// PrivateMapKey privilege bits (0-255; 1 create, 2 enter, 4 send audio, 8 receive audio,
    /// 16 send video, 32 receive video, 64 send sub-stream, 128 receive sub-stream).
    #[arg(long, value_name = "BITS", value_parser = parse_bits, default_value = "255",
          requires = "room")]
    privilege_map: u8,
}

/// Arguments of `usersig verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The sdkAppId the ticket must be for.
    #[arg(long, value_name = "N")]
    sdk_app_id: u32,
    /// The application's secret key.
    #[arg(
        long,
        value_name = "K",
        env = "RTCROOM_SECRET_KEY",
        hide_env_values = true
    )]
    secret_key: String,
    /// The user the ticket must be for.
    #[arg(long, value_name = "U")]
    user_id: String,
    /// The ticket to check.
    #[arg(long, value_name = "SIG")]
    user_sig: String,
    /// The clock, as unix seconds (default: the system clock).
    #[arg(long, value_name = "UNIX")]
    now: Option<u64>,
    #[command(flatten)]
    room: RoomArgs,
}

fn parse_user_id(s: &str) -> Result<UserId, String> {
    UserId::new(s).map_err(|e| e.message)
}

fn parse_numeric_room(s: &str) -> Result<RoomId, String> {
    RoomId::parse(s, false).map_err(|e| e.message)
}

fn parse_string_room(s: &str) -> Result<RoomId, String> {
    RoomId::parse(s, true).map_err(|e| e.message)
}

fn parse_bits(s: &str) -> Result<u8, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => s.parse::<u8>(),
    };
    parsed.map_err(|_| format!("privilege map must be a number from 0 to 255, got {s:?}"))
}

fn system_now() -> u64 {
    // A clock before 1970 is a broken machine; treat it as 0 rather than panic.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Run a `usersig` subcommand.
pub fn run(cmd: UsersigCommand) -> ExitCode {
    match cmd {
        UsersigCommand::Gen(args) => {
            println!("{}", generate(&args));
            ExitCode::SUCCESS
        }
        UsersigCommand::Verify(args) => match verify(&args) {
            Ok(lines) => {
                println!("{lines}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                let rtc: rtcroom_protocol::RtcError = e.clone().into();
                println!(
                    "valid: no\ncode: {}\nerror: {}\nreason: {e}",
                    e.extra_code(),
                    rtc.code
                );
                ExitCode::from(1)
            }
        },
    }
}

fn generate(args: &GenArgs) -> String {
    let now = args.now.unwrap_or_else(system_now);
    let app = u64::from(args.sdk_app_id);
    let user = args.user_id.as_str();
    match args.room.room() {
        None => usersig::gen_user_sig(app, &args.secret_key, user, args.expire, now),
        Some(room) => usersig::gen_private_map_key(
            app,
            &args.secret_key,
            user,
            args.expire,
            now,
            room,
            Privileges::from_bits(args.privilege_map),
        ),
    }
}

fn ticket_lines(kind: &str, t: &Ticket) -> String {
    format!(
        "valid: yes\nkind: {kind}\nidentifier: {}\nsdk_app_id: {}\ntime: {}\nexpire: {}\nexpires_at: {}",
        t.identifier,
        t.sdk_app_id,
        t.time,
        t.expire,
        t.expires_at()
    )
}

fn verify(args: &VerifyArgs) -> Result<String, SigError> {
    let now = args.now.unwrap_or_else(system_now);
    let app = u64::from(args.sdk_app_id);
    let sig = args.user_sig.trim();
    match args.room.room() {
        None => {
            let t = verify_user_sig(sig, app, &args.secret_key, &args.user_id, now)?;
            let kind = if t.userbuf.is_some() {
                "UserSig (with userbuf)"
            } else {
                "UserSig"
            };
            Ok(ticket_lines(kind, &t))
        }
        Some(room) => {
            let k = verify_private_map_key(sig, app, &args.secret_key, &args.user_id, room, now)?;
            let room_kind = if room.is_string() {
                "string"
            } else {
                "numeric"
            };
            Ok(format!(
                "{}\nroom: {} ({room_kind})\nroom_expires_at: {}\nprivileges: {}",
                ticket_lines("PrivateMapKey", &k.ticket),
                room.wire_text(),
                k.record.expire_at,
                k.privileges()
            ))
        }
    }
}
