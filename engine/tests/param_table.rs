//! The shared table of `createClient` / `join` parameter cases (`tests/data/client-params.json`)
//! run against the engine: every case the Rust API can express must end with the table's
//! TRTC code and extra code, at the table's stage. The Web SDK (`server/assets/trtc.js`) runs
//! the same table in a browser, so the two validate identically.
//!
//! How a case maps to the Rust API:
//! - `createClient` → [`ClientConfig`]: `mode` through `str::parse::<Mode>()` (as the CLI and
//!   the server take it), a missing `sdkAppId` as the default 0, `serverUrl` absent → this
//!   test's server; `userSig` directives (`{"$sig": "valid" | "wrong-key" | "other-user" |
//!   "expired"}`) become real tickets for this test's server key.
//! - `join` → [`JoinOptions`]: non-negative integer room ids → [`RoomIdInput::Number`],
//!   strings → [`RoomIdInput::String`]; anything else (1.5, -1, 1e20, null, true, missing)
//!   through [`RoomId::from_json`], which is what the engine applies; `role` through
//!   `str::parse::<Role>()`.
//! - A case whose input the Rust API cannot hold at all (a string `sdkAppId`, a missing
//!   `userId`, a numeric `privateMapKey`, the Web-only `videoCodec`, ...) must be marked
//!   `"web_only": true`, and a case marked so must really be one: both are checked.
//! - Failures expected at `"where": "join"` must come before anything is sent, so those
//!   cases run against an address where nothing listens: a client that went to the network
//!   would fail with JOIN_ROOM_FAILED instead.

mod common;

use common::*;
use rtcroom::{ClientConfig, JoinOptions, Mode, Role, RoomIdInput, RtcError, create_client};
use rtcroom_protocol::RoomId;
use rtcroom_protocol::usersig::gen_user_sig;
use serde_json::{Map, Value};

const TABLE: &str = include_str!("../../tests/data/client-params.json");

/// Nothing listens here (the discard port on loopback): a connection attempt is refused.
const DEAD_URL: &str = "ws://127.0.0.1:9/ws";

/// How a case ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    Failed {
        stage: &'static str,
        code: u32,
        extra: Option<i32>,
        message: String,
    },
}

fn failed(stage: &'static str, e: RtcError) -> Outcome {
    Outcome::Failed {
        stage,
        code: e.code.value(),
        extra: e.extra_code,
        message: e.message,
    }
}

/// Why a case cannot be given to the Rust engine.
type Inexpressible = String;

/// A `userSig` value: a literal, or a directive for a real ticket.
fn user_sig(v: &Value, app: u64, user: &str) -> Result<String, Inexpressible> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Object(o) => {
            let directive = o.get("$sig").and_then(Value::as_str).unwrap_or_else(|| {
                panic!("userSig object without a \"$sig\" directive: {v}");
            });
            let t = now();
            Ok(match directive {
                "valid" => gen_user_sig(app, KEY, user, 86_400, t),
                "wrong-key" => gen_user_sig(app, "not-the-server-key", user, 86_400, t),
                "other-user" => gen_user_sig(app, KEY, "someone_else", 86_400, t),
                "expired" => gen_user_sig(app, KEY, user, 60, t - 3_600),
                other => panic!("unknown userSig directive {other:?}"),
            })
        }
        Value::Null => Err("a missing userSig (Rust's default is \"\")".into()),
        other => Err(format!("a userSig that is not a string: {other}")),
    }
}

fn bool_field(o: &Map<String, Value>, name: &str, default: bool) -> Result<bool, Inexpressible> {
    match o.get(name) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("{name} that is not a boolean: {other}")),
    }
}

/// The case's `createClient` as a [`ClientConfig`], or the error a Rust caller would get
/// while building one (a bad mode string).
fn client_config(
    o: &Map<String, Value>,
    url: &str,
) -> Result<Result<ClientConfig, RtcError>, Inexpressible> {
    const KNOWN: [&str; 8] = [
        "mode",
        "sdkAppId",
        "userId",
        "userSig",
        "serverUrl",
        "useStringRoomId",
        "autoSubscribe",
        "videoCodec",
    ];
    if let Some(k) = o.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        panic!("createClient field {k:?} is unknown to this test; map it here");
    }
    if o.contains_key("videoCodec") {
        return Err("videoCodec (a Web SDK option; the engine publishes H.264)".into());
    }
    let mode = match o.get("mode") {
        None => Mode::Rtc,
        Some(Value::String(s)) => match s.parse::<Mode>() {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        },
        Some(other) => return Err(format!("a mode that is not a string: {other}")),
    };
    let sdk_app_id = match o.get("sdkAppId") {
        None => 0,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("an sdkAppId that is not a u32: {v}"))?,
    };
    let user_id = match o.get("userId") {
        Some(Value::String(s)) => s.clone(),
        None => return Err("a missing userId (Rust's default is \"\")".into()),
        Some(other) => return Err(format!("a userId that is not a string: {other}")),
    };
    let user_sig = user_sig(
        o.get("userSig").unwrap_or(&Value::Null),
        u64::from(sdk_app_id),
        &user_id,
    )?;
    let server_url = match o.get("serverUrl") {
        None => url.to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("a serverUrl that is not a string: {other}")),
    };
    Ok(Ok(ClientConfig::new(mode, sdk_app_id, user_id, user_sig)
        .with_server_url(server_url)
        .with_string_room_ids(bool_field(o, "useStringRoomId", false)?)
        .with_auto_subscribe(bool_field(
            o,
            "autoSubscribe",
            true,
        )?)))
}

/// The case's `join` as [`JoinOptions`], or the error the engine's room-id / role rules give
/// for input that never becomes `JoinOptions`.
fn join_options(
    o: &Map<String, Value>,
    use_string_room_id: bool,
) -> Result<Result<JoinOptions, RtcError>, Inexpressible> {
    if let Some(k) = o
        .keys()
        .find(|k| !["roomId", "role", "privateMapKey"].contains(&k.as_str()))
    {
        panic!("join field {k:?} is unknown to this test; map it here");
    }
    let room = o.get("roomId").unwrap_or(&Value::Null);
    let room_id = match (room, room.as_u64()) {
        (Value::String(s), _) => RoomIdInput::String(s.clone()),
        (_, Some(n)) => RoomIdInput::Number(n),
        (other, None) => {
            // Not a room id the Rust API can be handed: the engine's own rule decides.
            return match RoomId::from_json(other, use_string_room_id) {
                Err(e) => Ok(Err(e)),
                Ok(r) => Err(format!(
                    "room id {other} is valid ({r}) but has no RoomIdInput"
                )),
            };
        }
    };
    let role = match o.get("role") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.parse::<Role>() {
            Ok(r) => Some(r),
            Err(e) => return Ok(Err(e)),
        },
        Some(other) => return Err(format!("a role that is not a string: {other}")),
    };
    let private_map_key = match o.get("privateMapKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(format!("a privateMapKey that is not a string: {other}")),
    };
    let mut join = JoinOptions::new(room_id);
    join.role = role;
    join.private_map_key = private_map_key;
    Ok(Ok(join))
}

/// Run one case against the server at `url`.
async fn run(case: &Value, url: &str) -> Result<Outcome, Inexpressible> {
    let create = case["createClient"]
        .as_object()
        .expect("createClient is an object");
    // Failures expected before the network get an address where nothing listens.
    let url = if case["where"] == "join" {
        DEAD_URL
    } else {
        url
    };
    let config = match client_config(create, url)? {
        Ok(c) => c,
        Err(e) => return Ok(failed("createClient", e)),
    };
    let join = match &case["join"] {
        Value::Null => None,
        Value::Object(o) => Some(join_options(o, config.use_string_room_id)?),
        other => panic!("join must be an object or null, got {other}"),
    };
    let client = match create_client(config) {
        Ok(c) => c,
        Err(e) => return Ok(failed("createClient", e)),
    };
    let Some(join) = join else {
        return Ok(Outcome::Ok);
    };
    let options = match join {
        Ok(o) => o,
        Err(e) => return Ok(failed("join", e)),
    };
    match bounded(client.join(options)).await {
        Ok(()) => {
            bounded(client.leave()).await.expect("leave after a join");
            Ok(Outcome::Ok)
        }
        Err(e) => Ok(failed("join", e)),
    }
}

/// Whether `got` is what the case expects.
fn matches(case: &Value, got: &Outcome) -> bool {
    match (&case["expect"], got) {
        (Value::String(s), Outcome::Ok) => s == "ok",
        (
            Value::Object(e),
            Outcome::Failed {
                stage, code, extra, ..
            },
        ) => {
            let want_stage = match case["where"].as_str() {
                Some("createClient") => "createClient",
                Some("join" | "server") => "join",
                other => panic!("where must be createClient, join or server, got {other:?}"),
            };
            e.get("code").and_then(Value::as_u64) == Some(u64::from(*code))
                && e.get("extraCode").and_then(Value::as_i64) == extra.map(i64::from)
                && *stage == want_stage
        }
        _ => false,
    }
}

#[tokio::test]
async fn the_engine_validates_like_the_shared_table() {
    let cases: Vec<Value> = serde_json::from_str(TABLE).expect("the table is JSON");
    let mut names = std::collections::HashSet::new();
    for case in &cases {
        let name = case["name"].as_str().expect("every case has a name");
        assert!(names.insert(name), "duplicate case name {name:?}");
        assert!(case["why"].is_string(), "{name}: no \"why\"");
        assert!(case["web_only"].is_boolean(), "{name}: no \"web_only\"");
    }

    let server = start(server_config("127.0.0.1:0"));
    let url = server.ws_url();
    let (mut ran, mut skipped) = (0, 0);
    let mut problems = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap_or_default();
        let web_only = case["web_only"].as_bool().unwrap_or(false);
        match (run(case, &url).await, web_only) {
            (Err(_), true) => skipped += 1,
            (Err(why), false) => problems.push(format!(
                "{name}: Rust cannot express {why}; mark it \"web_only\": true"
            )),
            (Ok(got), true) => problems.push(format!(
                "{name}: marked web_only, but Rust expresses it (it gave {got:?})"
            )),
            (Ok(got), false) => {
                ran += 1;
                if !matches(case, &got) {
                    problems.push(format!(
                        "{name}: expected {} at {}, got {got:?}",
                        case["expect"], case["where"]
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} cases disagree:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
    assert!(
        ran >= 40,
        "only {ran} cases ran ({skipped} web-only): the table lost its Rust half"
    );
}
