//! Client configuration (TRTC v4's `ClientConfig` plus the engine's timings) and join options.

use std::time::Duration;

use rtcroom_actors::backoff::{
    DEFAULT_BACKOFF_UNIT, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MISSED_HEARTBEATS,
    DEFAULT_RECONNECT_ATTEMPTS, ReconnectPolicy,
};
use rtcroom_actors::media::SubscribeOutput;
use rtcroom_actors::requests::{DEFAULT_JOIN_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
use rtcroom_actors::{ClientSettings, JoinParams};
use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::StreamType;
use rtcroom_protocol::{Mode, Role, RoomId, RtcError, UserId};

/// The signalling URL of the embedded default server (`rtcroom serve` on this machine).
pub const DEFAULT_SERVER_URL: &str = "ws://127.0.0.1:7900/ws";

/// What `create_client` takes: TRTC v4's `ClientConfig` fields, the server to talk to, and
/// the engine's timings (TRTC's values by default; tests shorten them).
///
/// The struct is `#[non_exhaustive]` so fields can be added without breaking anyone: build
/// it with [`ClientConfig::new`] (TRTC's required fields) and the `with_*` methods, or start
/// from `ClientConfig::default()` and set fields.
///
/// ```
/// use rtcroom::{ClientConfig, Mode};
/// let config = ClientConfig::new(Mode::Live, 1_400_000_000, "denny", "eJw...")
///     .with_server_url("ws://127.0.0.1:7900/ws")
///     .with_auto_subscribe(false);
/// assert_eq!(config.user_id, "denny");
/// assert!(!config.auto_subscribe);
/// assert_eq!(config.reconnect_attempts, 30);
/// ```
///
/// A struct literal does not compile outside this crate, so a new field never breaks a
/// caller:
///
/// ```compile_fail
/// let config = rtcroom::ClientConfig { sdk_app_id: 1, ..Default::default() };
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// `rtc` (calls, meetings) or `live` (anchors and audience). Required by TRTC; defaults
    /// to `rtc` here.
    pub mode: Mode,
    /// The application (required, non-zero).
    pub sdk_app_id: u32,
    /// Who this client is: 1–32 bytes of `A-Z a-z 0-9 _ -`.
    pub user_id: String,
    /// The UserSig for (sdk_app_id, user_id), from any tls-sig-api-v2 library.
    pub user_sig: String,
    /// Room ids are strings (TRTC v4.3+). A room id of the other type is refused at `join`.
    pub use_string_room_id: bool,
    /// Subscribe to every published stream, now and later (TRTC default true). Each such
    /// subscription takes both tracks and sends them to [`ClientConfig::auto_subscribe_output`].
    pub auto_subscribe: bool,
    /// Where auto-subscribed streams go (default: discard, so bots that only count or that
    /// subscribe explicitly pay for no decoding).
    pub auto_subscribe_output: SubscribeOutput,
    /// How long a publish or subscribe peer connection may take to connect (ICE + DTLS);
    /// default 10 s.
    pub media_connect_timeout: Duration,
    /// The signalling URL: `ws://host:port/ws`, or `wss://host/ws` for a server with TLS.
    pub server_url: String,
    /// PEM certificates to trust for `wss://`, in addition to the system's roots (e.g. the
    /// CA of a development server's self-signed certificate).
    pub extra_ca_pem: Option<String>,
    /// Connect and join answer within this, else JOIN_ROOM_FAILED "join room timeout"
    /// (TRTC: 5 s).
    pub join_timeout: Duration,
    /// Timeout of other requests (leave, switch role).
    pub request_timeout: Duration,
    /// Heartbeat interval once joined (TRTC: 2 s). The server's `heartbeatIntervalS` is used
    /// instead when it is shorter.
    pub heartbeat_interval: Duration,
    /// Heartbeat intervals without any frame from the server before the connection is
    /// treated as lost (default 3).
    pub missed_heartbeats: u32,
    /// Reconnect attempts before SIGNAL_CHANNEL_RECONNECTION_FAILED (TRTC v4: 30).
    pub reconnect_attempts: u32,
    /// One step of the Fibonacci reconnect schedule 1, 2, 3, 5, 8, 13, 13, ... (TRTC: 1 s).
    pub reconnect_backoff_unit: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            mode: Mode::Rtc,
            sdk_app_id: 0,
            user_id: String::new(),
            user_sig: String::new(),
            use_string_room_id: false,
            auto_subscribe: true,
            auto_subscribe_output: SubscribeOutput::Discard,
            media_connect_timeout: rtcroom_actors::client::DEFAULT_MEDIA_CONNECT_TIMEOUT,
            server_url: DEFAULT_SERVER_URL.to_owned(),
            extra_ca_pem: None,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            missed_heartbeats: DEFAULT_MISSED_HEARTBEATS,
            reconnect_attempts: DEFAULT_RECONNECT_ATTEMPTS,
            reconnect_backoff_unit: DEFAULT_BACKOFF_UNIT,
        }
    }
}

/// `with_*` builder methods for the named fields of a `#[non_exhaustive]` options struct.
macro_rules! with_fields {
    ($ty:ty { $($(#[$doc:meta])* $name:ident => $field:ident: $t:ty),* $(,)? }) => {
        impl $ty {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $t) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}
pub(crate) use with_fields;

impl ClientConfig {
    /// TRTC's `createClient({mode, sdkAppId, userId, userSig})`; everything else default
    /// (the embedded server's URL, auto-subscribe on, TRTC's timings).
    pub fn new(
        mode: Mode,
        sdk_app_id: u32,
        user_id: impl Into<String>,
        user_sig: impl Into<String>,
    ) -> Self {
        ClientConfig {
            mode,
            sdk_app_id,
            user_id: user_id.into(),
            user_sig: user_sig.into(),
            ..ClientConfig::default()
        }
    }

    /// The signalling URL (`ws://host:port/ws` or `wss://host/ws`).
    #[must_use]
    pub fn with_server_url(mut self, url: impl Into<String>) -> Self {
        self.server_url = url.into();
        self
    }

    /// Extra PEM certificates to trust for `wss://` (e.g. a development server's CA).
    #[must_use]
    pub fn with_extra_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.extra_ca_pem = Some(pem.into());
        self
    }
}

with_fields!(ClientConfig {
    /// Room ids are strings (TRTC v4.3+).
    with_string_room_ids => use_string_room_id: bool,
    /// Subscribe to every published stream (TRTC default true).
    with_auto_subscribe => auto_subscribe: bool,
    /// Where auto-subscribed streams go.
    with_auto_subscribe_output => auto_subscribe_output: SubscribeOutput,
    /// How long a peer connection may take to connect.
    with_media_connect_timeout => media_connect_timeout: Duration,
    /// Connect + join answer within this (TRTC: 5 s).
    with_join_timeout => join_timeout: Duration,
    /// Timeout of other requests.
    with_request_timeout => request_timeout: Duration,
    /// Heartbeat interval (TRTC: 2 s).
    with_heartbeat_interval => heartbeat_interval: Duration,
    /// Silent heartbeat intervals before the connection counts as lost.
    with_missed_heartbeats => missed_heartbeats: u32,
    /// Reconnect attempts before giving up (TRTC v4: 30).
    with_reconnect_attempts => reconnect_attempts: u32,
    /// One step of the reconnect schedule (TRTC: 1 s).
    with_reconnect_backoff_unit => reconnect_backoff_unit: Duration,
});

fn invalid(extra_code: i32, message: impl Into<String>) -> RtcError {
    RtcError::invalid_parameter(Some(extra_code), message)
}

impl ClientConfig {
    /// Check every field the way TRTC's `createClient` does and build the actor settings.
    pub(crate) fn validate(&self) -> Result<ClientSettings, RtcError> {
        if self.sdk_app_id == 0 {
            return Err(invalid(extra::PARAM_REQUIRED, "sdkAppId is required"));
        }
        if !self.user_id.is_empty() && self.user_id.bytes().all(|b| b == b' ') {
            return Err(invalid(extra::PARAM_EMPTY, "userId cannot be all spaces."));
        }
        let user_id = UserId::new(&self.user_id)?;
        if self.user_sig.is_empty() {
            return Err(invalid(extra::PARAM_EMPTY, "userSig must not be empty"));
        }
        let url = self.server_url.as_str();
        let tls = match url.split_once("://") {
            Some(("ws", host)) if !host.is_empty() => None,
            Some(("wss", host)) if !host.is_empty() => Some(
                rtcroom_actors::tls::client_config(self.extra_ca_pem.as_deref())
                    .map_err(|e| invalid(extra::PARAM_TYPE, e.to_string()))?,
            ),
            _ => {
                return Err(invalid(
                    extra::PARAM_TYPE,
                    format!("serverUrl must be a ws:// or wss:// URL, got {url:?}"),
                ));
            }
        };
        for (name, d) in [
            ("joinTimeout", self.join_timeout),
            ("requestTimeout", self.request_timeout),
            ("heartbeatInterval", self.heartbeat_interval),
            ("reconnectBackoffUnit", self.reconnect_backoff_unit),
        ] {
            if d.is_zero() {
                return Err(invalid(extra::PARAM_RANGE, format!("{name} must be > 0")));
            }
        }
        let mut s = ClientSettings::new(
            self.sdk_app_id,
            user_id,
            self.user_sig.clone(),
            self.mode,
            self.server_url.clone(),
        );
        s.use_string_room_id = self.use_string_room_id;
        s.auto_subscribe = self.auto_subscribe;
        s.auto_subscribe_output = self.auto_subscribe_output.clone();
        s.media_connect_timeout = self.media_connect_timeout;
        s.tls = tls;
        s.join_timeout = self.join_timeout;
        s.request_timeout = self.request_timeout;
        s.heartbeat_interval = self.heartbeat_interval;
        s.missed_heartbeats = self.missed_heartbeats.max(1);
        s.reconnect = ReconnectPolicy {
            max_attempts: self.reconnect_attempts,
            unit: self.reconnect_backoff_unit,
        };
        Ok(s)
    }
}

/// A room id as a user passes it to `join`: a number, or a string when the client was
/// created with `use_string_room_id` (the Web SDK's `roomId: number | string`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomIdInput {
    /// A numeric room, 1..=4294967294.
    Number(u64),
    /// A string room, 1–64 bytes of TRTC's character set.
    String(String),
}

impl From<u32> for RoomIdInput {
    fn from(n: u32) -> Self {
        RoomIdInput::Number(u64::from(n))
    }
}

impl From<u64> for RoomIdInput {
    fn from(n: u64) -> Self {
        RoomIdInput::Number(n)
    }
}

impl From<&str> for RoomIdInput {
    fn from(s: &str) -> Self {
        RoomIdInput::String(s.to_owned())
    }
}

impl From<String> for RoomIdInput {
    fn from(s: String) -> Self {
        RoomIdInput::String(s)
    }
}

impl RoomIdInput {
    /// The room, checked against `use_string_room_id` as the Web SDK does (extra codes 5013
    /// range, 5012 bad string, 5016 string given for a numeric client, 5019 number given for
    /// a string client).
    pub fn to_room_id(&self, use_string_room_id: bool) -> Result<RoomId, RtcError> {
        let value = match self {
            RoomIdInput::Number(n) => serde_json::Value::from(*n),
            RoomIdInput::String(s) => serde_json::Value::from(s.as_str()),
        };
        RoomId::from_json(&value, use_string_room_id)
    }
}

/// What `send_sei_message` takes besides the data (TRTC's `{seiPayloadType, toSubStream}`):
/// [`SeiOptions::default`] (payload type 243, the main stream) and the `with_*` methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeiOptions {
    /// The SEI payload type: 243 (TRTC's default) or 5 (user data unregistered: the data
    /// starts with a 16-byte UUID).
    pub payload_type: u8,
    /// Which published stream's video carries it (TRTC's `toSubStream`: the auxiliary one).
    pub stream_type: StreamType,
}

impl Default for SeiOptions {
    fn default() -> Self {
        SeiOptions {
            payload_type: rtcroom_pipelines::sei::PAYLOAD_TRTC,
            stream_type: StreamType::Main,
        }
    }
}

with_fields!(SeiOptions {
    /// With SEI payload type 5 or 243.
    with_payload_type => payload_type: u8,
    /// In this published stream's video.
    with_stream_type => stream_type: StreamType,
});

/// What `join` takes (TRTC v4's `join({roomId, role, privateMapKey})`): build it with
/// [`JoinOptions::new`] and the `with_*` methods (`#[non_exhaustive]`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JoinOptions {
    /// The room.
    pub room_id: RoomIdInput,
    /// The role in live mode; `None` is TRTC v4's default, `anchor`. Ignored in rtc mode.
    pub role: Option<Role>,
    /// The PrivateMapKey, when the app uses them.
    pub private_map_key: Option<String>,
}

impl JoinOptions {
    /// Join `room_id` with the default role and no PrivateMapKey.
    pub fn new(room_id: impl Into<RoomIdInput>) -> Self {
        JoinOptions {
            room_id: room_id.into(),
            role: None,
            private_map_key: None,
        }
    }

    /// With a role.
    #[must_use]
    pub fn with_role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }

    /// With a PrivateMapKey.
    #[must_use]
    pub fn with_private_map_key(mut self, key: impl Into<String>) -> Self {
        self.private_map_key = Some(key.into());
        self
    }

    pub(crate) fn validate(&self, use_string_room_id: bool) -> Result<JoinParams, RtcError> {
        let room_id = self.room_id.to_room_id(use_string_room_id)?;
        if self.private_map_key.as_deref() == Some("") {
            return Err(invalid(
                extra::PARAM_EMPTY,
                "privateMapKey must not be empty when given",
            ));
        }
        Ok(JoinParams {
            room_id,
            role: self.role.unwrap_or(Role::Anchor),
            private_map_key: self.private_map_key.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcroom_protocol::ErrorCode;

    fn good() -> ClientConfig {
        ClientConfig {
            sdk_app_id: 1_400_000_000,
            user_id: "alice".into(),
            user_sig: "sig".into(),
            ..ClientConfig::default()
        }
    }

    fn extra_of(c: ClientConfig) -> (ErrorCode, Option<i32>) {
        let e = c.validate().unwrap_err();
        (e.code, e.extra_code)
    }

    #[test]
    fn config_is_checked_at_once() {
        let s = good().validate().unwrap();
        assert_eq!(s.user_id.as_str(), "alice");
        assert_eq!(s.reconnect.max_attempts, 30);
        let p = ErrorCode::InvalidParameter;
        assert_eq!(
            extra_of(ClientConfig {
                sdk_app_id: 0,
                ..good()
            }),
            (p, Some(5001))
        );
        assert_eq!(
            extra_of(ClientConfig {
                user_id: String::new(),
                ..good()
            }),
            (p, Some(5003))
        );
        assert_eq!(
            extra_of(ClientConfig {
                user_id: "   ".into(),
                ..good()
            }),
            (p, Some(5003))
        );
        assert_eq!(
            extra_of(ClientConfig {
                user_id: "x".repeat(33),
                ..good()
            }),
            (p, Some(5008))
        );
        assert_eq!(
            extra_of(ClientConfig {
                user_id: "a b".into(),
                ..good()
            }),
            (p, None)
        );
        assert_eq!(
            extra_of(ClientConfig {
                user_sig: String::new(),
                ..good()
            }),
            (p, Some(5003))
        );
        assert_eq!(
            extra_of(ClientConfig {
                server_url: "http://x".into(),
                ..good()
            }),
            (p, Some(5002))
        );
        assert!(
            ClientConfig {
                server_url: "wss://x/ws".into(),
                ..good()
            }
            .validate()
            .unwrap()
            .tls
            .is_some()
        );
        assert_eq!(
            extra_of(ClientConfig {
                server_url: "wss://x/ws".into(),
                extra_ca_pem: Some("garbage".into()),
                ..good()
            }),
            (p, Some(5002))
        );
        assert_eq!(
            extra_of(ClientConfig {
                server_url: "ws://".into(),
                ..good()
            }),
            (p, Some(5002))
        );
        assert_eq!(
            extra_of(ClientConfig {
                join_timeout: Duration::ZERO,
                ..good()
            }),
            (p, Some(5005))
        );
    }

    #[test]
    fn room_ids_follow_the_web_sdk() {
        let extra = |o: JoinOptions, s: bool| o.validate(s).unwrap_err().extra_code;
        assert_eq!(
            JoinOptions::new(123u32).validate(false).unwrap().room_id,
            RoomId::numeric(123).unwrap()
        );
        assert_eq!(
            JoinOptions::new("123").validate(true).unwrap().room_id,
            RoomId::string("123").unwrap()
        );
        assert_eq!(extra(JoinOptions::new(0u32), false), Some(5013));
        assert_eq!(extra(JoinOptions::new(4_294_967_295u64), false), Some(5013));
        assert_eq!(extra(JoinOptions::new("123"), false), Some(5016));
        assert_eq!(extra(JoinOptions::new(123u32), true), Some(5019));
        assert_eq!(extra(JoinOptions::new("a/b"), true), Some(5012));
        let mut o = JoinOptions::new(1u32);
        o.private_map_key = Some(String::new());
        assert_eq!(extra(o, false), Some(5003));
        // TRTC v4's default role is anchor.
        assert_eq!(
            JoinOptions::new(1u32).validate(false).unwrap().role,
            Role::Anchor
        );
        assert_eq!(
            JoinOptions::new(1u32)
                .with_role(Role::Audience)
                .validate(false)
                .unwrap()
                .role,
            Role::Audience
        );
    }
}
