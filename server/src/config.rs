//! Server configuration: a TOML file plus `RTCROOM__…` environment overrides (the `config`
//! crate), or, with neither, the **embedded default**: loopback, one app with a generated key
//! kept in a local key file so the other CLI commands (and a restarted server) find it.
//!
//! ```toml
//! listen = "0.0.0.0:7900"
//!
//! [[apps]]
//! sdk_app_id = 1400000000
//! secret_key = "5bd2850f..."
//! require_private_map_key = false
//!
//! [limits]
//! max_rtc_members = 300
//!
//! [timeouts]
//! heartbeat_timeout_s = 90
//!
//! [webhook]
//! url = "http://127.0.0.1:9000/trtc-callback"
//! key = "callbackkey"
//! max_in_flight = 256                            # deliveries at once; beyond: dropped, counted
//!
//! [admin]
//! token = "an-admin-token"
//!
//! [web]
//! allowed_origins = ["https://app.example.com"]   # WebSocket Origin check; empty: any
//! dev_usersig = false                            # GET /dev/usersig, development only
//!
//! [tls]                                          # https:// and wss:// on `listen`
//! cert_file = "/etc/rtcroom/cert.pem"            # PEM, leaf first, then intermediates
//! key_file = "/etc/rtcroom/key.pem"              # PEM, PKCS#8, PKCS#1 or SEC1
//! ```
//!
//! Environment: `RTCROOM__LISTEN=0.0.0.0:7900`, `RTCROOM__TIMEOUTS__HEARTBEAT_TIMEOUT_S=30`,
//! `RTCROOM__ADMIN__TOKEN=...`, `RTCROOM__WEBHOOK__URL=...` (double underscore between levels),
//! `RTCROOM__WEB__ALLOWED_ORIGINS=https://a.example,https://b.example` (lists: commas).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::room::RoomLimits;

/// Default listen address of the embedded server.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7900";
/// sdkAppId of the embedded default app.
pub const EMBEDDED_SDK_APP_ID: u32 = 1_400_000_000;

/// Largest `media.connect_timeout_s`: a peer that has not connected in ten minutes will not.
pub const MAX_CONNECT_TIMEOUT_S: f64 = 600.0;

/// Errors loading or writing configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent.
    #[error("configuration: {0}")]
    Invalid(String),
    /// The embedded key file could not be read or written.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One application (sdkAppId + secret key). `Debug` shows the key as `"<redacted>"`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct AppConfig {
    /// The sdkAppId.
    pub sdk_app_id: u32,
    /// The secret key UserSigs are signed with.
    pub secret_key: String,
    /// Require a PrivateMapKey on join (TRTC's "enable permission key" switch).
    #[serde(default)]
    pub require_private_map_key: bool,
}

/// What `Debug` prints instead of a secret, so configs can be logged.
const REDACTED: &str = "<redacted>";

/// `Some("<redacted>")` for a set secret, `None` for none.
fn redact_opt(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| REDACTED)
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("sdk_app_id", &self.sdk_app_id)
            .field("secret_key", &REDACTED)
            .field("require_private_map_key", &self.require_private_map_key)
            .finish()
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("key", &REDACTED)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &redact_opt(&self.token))
            .field("hmac_key", &redact_opt(&self.hmac_key))
            .finish()
    }
}

impl std::fmt::Debug for EmbeddedKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKeyFile")
            .field("server_url", &self.server_url)
            .field("listen", &self.listen)
            .field("sdk_app_id", &self.sdk_app_id)
            .field("secret_key", &REDACTED)
            .field("admin_token", &REDACTED)
            .finish()
    }
}

/// Limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Members of an rtc room (TRTC: 300).
    pub max_rtc_members: usize,
    /// Members of a live room (TRTC: 100,000).
    pub max_live_members: usize,
    /// Concurrent publishers in a room (TRTC: 50).
    pub max_publishers: usize,
    /// Largest signalling frame, bytes.
    pub max_message_bytes: usize,
    /// Sustained signalling messages per second per connection.
    pub messages_per_second: u32,
    /// Burst of signalling messages allowed above the sustained rate.
    pub message_burst: u32,
    /// Events waiting for one member whose link is not reading them, beyond which the link
    /// is closed as a slow consumer (1008 "slow consumer"); see `link.rs`.
    pub max_pending_events: usize,
    /// WHIP/WHEP sessions held at once on this server; beyond it a new one gets 503.
    pub max_whip_resources: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_rtc_members: crate::room::DEFAULT_MAX_RTC_MEMBERS,
            max_live_members: crate::room::DEFAULT_MAX_LIVE_MEMBERS,
            max_publishers: crate::room::DEFAULT_MAX_PUBLISHERS,
            max_message_bytes: rtcroom_protocol::signal::MAX_MESSAGE_BYTES,
            messages_per_second: 50,
            message_burst: 100,
            max_pending_events: crate::link::LinkPolicy::default().max_pending_events,
            max_whip_resources: crate::whip::DEFAULT_MAX_RESOURCES,
        }
    }
}

/// Timers, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeoutsConfig {
    /// The first message must be a join within this time (TRTC: 5 s).
    pub join_timeout_s: f64,
    /// A member silent this long is evicted (TRTC: 90 s).
    pub heartbeat_timeout_s: f64,
    /// An empty live room whose last leaver was audience is kept this long (TRTC: 600 s).
    pub live_audience_linger_s: f64,
    /// Graceful shutdown bound.
    pub shutdown_timeout_s: u64,
    /// Events to one member are coalesced into at most one frame per this window; the first
    /// event after a quiet spell goes out at once. 0 flushes after every burst of room work.
    pub event_batch_s: f64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            join_timeout_s: 5.0,
            heartbeat_timeout_s: 90.0,
            live_audience_linger_s: 600.0,
            shutdown_timeout_s: 5,
            event_batch_s: crate::room::DEFAULT_EVENT_BATCH.as_secs_f64(),
        }
    }
}

/// Default `webhook.max_in_flight`.
pub const DEFAULT_WEBHOOK_MAX_IN_FLIGHT: usize = 256;
/// Largest `webhook.max_in_flight`.
pub const MAX_WEBHOOK_MAX_IN_FLIGHT: usize = 100_000;

/// Where TRTC-format webhooks go. `Debug` shows the key as `"<redacted>"`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookConfig {
    /// The receiver's URL (http).
    pub url: String,
    /// The key for the `Sign` header (base64 HMAC-SHA256 of the body).
    pub key: String,
    /// Deliveries in flight (being sent or waiting for a retry) at most; a webhook beyond
    /// that is dropped and counted in `rtcroom_webhooks_dropped_total`.
    #[serde(default = "default_webhook_max_in_flight")]
    pub max_in_flight: usize,
}

fn default_webhook_max_in_flight() -> usize {
    DEFAULT_WEBHOOK_MAX_IN_FLIGHT
}

impl WebhookConfig {
    /// Webhooks to `url` signed with `key`, the other settings default.
    pub fn new(url: impl Into<String>, key: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            key: key.into(),
            max_in_flight: DEFAULT_WEBHOOK_MAX_IN_FLIGHT,
        }
    }
}

/// Admin API credentials. With neither set, the admin API refuses every call. `Debug` shows
/// the credentials as `"<redacted>"`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// A bearer token (`Authorization: Bearer <token>`).
    pub token: Option<String>,
    /// A key for HMAC-signed requests (`X-Rtcroom-Timestamp` + `X-Rtcroom-Signature`).
    pub hmac_key: Option<String>,
}

/// Browsers: the WebSocket `Origin` check and the development UserSig endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebConfig {
    /// Page origins (`https://app.example.com`) allowed to open the signalling WebSocket;
    /// empty allows any. Requests without an `Origin` header (non-browser clients) pass.
    pub allowed_origins: Vec<String>,
    /// Serve `GET /dev/usersig?userId=…`: a UserSig for anyone who asks, like TRTC's
    /// `GenerateTestUserSig`. **Development only**: whoever reaches the server can then join
    /// as anyone. The embedded default turns it on when it listens on loopback.
    pub dev_usersig: bool,
}

/// How a new room picks its node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// The node with the fewest members (ties: the node the first joiner connected to).
    #[default]
    LeastLoaded,
    /// The node the first joiner connected to.
    Local,
}

/// Default `cluster.heartbeat_s`.
pub const DEFAULT_CLUSTER_HEARTBEAT_S: f64 = 0.5;
/// Default `cluster.node_ttl_s`.
pub const DEFAULT_CLUSTER_NODE_TTL_S: f64 = 2.0;

/// Audience members a live room's node holds before other nodes serve its audience.
pub const DEFAULT_EDGE_AFTER_AUDIENCE: u32 = 500;

/// One node of several: rooms are placed on nodes through Redis (`cluster.redis_url`);
/// without it the server is a single node and needs no Redis. `Debug` shows the secret and
/// the Redis URL (which may carry a password) as `"<redacted>"`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// `redis://[:password@]host:port[/db]`; unset: a single node.
    pub redis_url: Option<String>,
    /// This node's id in the cluster (letters, digits, `-`, `_`, `.`; default: random at
    /// start).
    pub node_id: Option<String>,
    /// Where the other nodes reach this node's signalling: `ws://host:port` or
    /// `wss://host:port` (default: from the listen address, which must then be a specific
    /// address, not 0.0.0.0).
    pub advertise_url: Option<String>,
    /// The secret the nodes share to authenticate links between them (required with
    /// `redis_url`, at least 16 characters).
    pub secret: Option<String>,
    /// Seconds between a node's heartbeats in Redis.
    pub heartbeat_s: f64,
    /// Seconds after its last heartbeat that a node counts as gone (its rooms are placed
    /// again by their next join).
    pub node_ttl_s: f64,
    /// How a new room picks its node.
    pub placement: Placement,
    /// Prefix of every Redis key the cluster uses (several clusters may share one Redis).
    pub key_prefix: String,
    /// Live rooms cascade (`docs/cluster.md`): once a live room's node holds this many
    /// audience members, an audience member joining through another node is served by that
    /// node, which receives the anchors' streams once from the room's node. 0: from the
    /// first audience member.
    pub edge_after_audience: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            node_id: None,
            advertise_url: None,
            secret: None,
            heartbeat_s: DEFAULT_CLUSTER_HEARTBEAT_S,
            node_ttl_s: DEFAULT_CLUSTER_NODE_TTL_S,
            placement: Placement::LeastLoaded,
            key_prefix: "rtcroom:".into(),
            edge_after_audience: DEFAULT_EDGE_AFTER_AUDIENCE,
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &redact_opt(&self.redis_url))
            .field("node_id", &self.node_id)
            .field("advertise_url", &self.advertise_url)
            .field("secret", &redact_opt(&self.secret))
            .field("heartbeat_s", &self.heartbeat_s)
            .field("node_ttl_s", &self.node_ttl_s)
            .field("placement", &self.placement)
            .field("key_prefix", &self.key_prefix)
            .field("edge_after_audience", &self.edge_after_audience)
            .finish()
    }
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.redis_url.is_none() {
            return Ok(());
        }
        let bad = |m: String| Err(ConfigError::Invalid(format!("cluster: {m}")));
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
        {
            return bad("redis_url must start with redis://, rediss:// or unix://".into());
        }
        if self.secret.as_ref().is_none_or(|s| s.len() < 16) {
            return bad("secret (at least 16 characters) is required with redis_url".into());
        }
        if let Some(id) = &self.node_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return bad(format!(
                "node_id {id:?} must be 1-64 letters, digits, '-', '_' or '.'"
            ));
        }
        if let Some(u) = &self.advertise_url
            && !(u.starts_with("ws://") || u.starts_with("wss://"))
        {
            return bad(format!(
                "advertise_url {u:?} must start with ws:// or wss://"
            ));
        }
        if !(self.heartbeat_s.is_finite() && (0.05..=60.0).contains(&self.heartbeat_s)) {
            return bad(format!(
                "heartbeat_s must be between 0.05 and 60, got {}",
                self.heartbeat_s
            ));
        }
        if !(self.node_ttl_s.is_finite()
            && self.node_ttl_s >= 2.0 * self.heartbeat_s
            && self.node_ttl_s <= 600.0)
        {
            return bad(format!(
                "node_ttl_s must be at least twice heartbeat_s and at most 600, got {}",
                self.node_ttl_s
            ));
        }
        Ok(())
    }
}

/// TLS for `https://` and `wss://` on the listen address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TlsConfig {
    /// The certificate chain, PEM (leaf first).
    pub cert_file: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The whole server configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// `host:port` to listen on (port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Applications accepted.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Timers.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Webhook receiver.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Admin API credentials.
    #[serde(default)]
    pub admin: AdminConfig,
    /// HTTP worker threads (default: one per core).
    #[serde(default)]
    pub workers: Option<usize>,
    /// The SFU media plane.
    #[serde(default)]
    pub media: crate::media::MediaConfig,
    /// Browsers.
    #[serde(default)]
    pub web: WebConfig,
    /// TLS; plain HTTP / WebSocket without it.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Several nodes sharing rooms through Redis; a single node without it.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_owned()
}

impl ServerConfig {
    /// A config with one app and everything else default, listening on `listen`.
    pub fn single_app(listen: &str, sdk_app_id: u32, secret_key: &str) -> ServerConfig {
        ServerConfig {
            listen: listen.to_owned(),
            apps: vec![AppConfig {
                sdk_app_id,
                secret_key: secret_key.to_owned(),
                require_private_map_key: false,
            }],
            limits: LimitsConfig::default(),
            timeouts: TimeoutsConfig::default(),
            webhook: None,
            admin: AdminConfig::default(),
            workers: None,
            media: crate::media::MediaConfig::default(),
            web: WebConfig::default(),
            tls: None,
            cluster: ClusterConfig::default(),
        }
    }

    /// Load from an optional TOML file plus `RTCROOM__…` environment variables.
    pub fn load(file: Option<&Path>) -> Result<ServerConfig, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(Self::environment(None));
        let cfg: ServerConfig = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// This config with `RTCROOM__…` environment variables laid over it (the embedded
    /// default honours them as a config file does), validated.
    pub fn with_env_overrides(self) -> Result<ServerConfig, ConfigError> {
        self.overlay(Self::environment(None))
    }

    fn environment(vars: Option<config::Map<String, String>>) -> config::Environment {
        config::Environment::with_prefix("RTCROOM")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("web.allowed_origins")
            .source(vars)
    }

    fn overlay(self, env: config::Environment) -> Result<ServerConfig, ConfigError> {
        let base = config::Config::try_from(&self)?;
        let cfg: ServerConfig = config::Config::builder()
            .add_source(base)
            .add_source(env)
            .build()?
            .try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.apps.is_empty() {
            return Err(ConfigError::Invalid(
                "no [[apps]] configured: add at least one sdk_app_id + secret_key".into(),
            ));
        }
        for app in &self.apps {
            if app.secret_key.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "app {} has an empty secret_key",
                    app.sdk_app_id
                )));
            }
        }
        let t = &self.timeouts;
        for (name, v) in [
            ("join_timeout_s", t.join_timeout_s),
            ("heartbeat_timeout_s", t.heartbeat_timeout_s),
            ("live_audience_linger_s", t.live_audience_linger_s),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 1e7) {
                return Err(ConfigError::Invalid(format!(
                    "timeouts.{name} must be a positive number of seconds, got {v}"
                )));
            }
        }
        if !(t.event_batch_s.is_finite() && (0.0..=1.0).contains(&t.event_batch_s)) {
            return Err(ConfigError::Invalid(format!(
                "timeouts.event_batch_s must be between 0 and 1 second, got {}",
                t.event_batch_s
            )));
        }
        let connect = self.media.connect_timeout_s;
        if !(connect.is_finite() && connect > 0.0 && connect <= MAX_CONNECT_TIMEOUT_S) {
            return Err(ConfigError::Invalid(format!(
                "media.connect_timeout_s must be a number of seconds above 0 and at most \
                 {MAX_CONNECT_TIMEOUT_S}, got {connect}"
            )));
        }
        if let Some(w) = &self.webhook
            && !(1..=MAX_WEBHOOK_MAX_IN_FLIGHT).contains(&w.max_in_flight)
        {
            return Err(ConfigError::Invalid(format!(
                "webhook.max_in_flight must be between 1 and {MAX_WEBHOOK_MAX_IN_FLIGHT}, got {}",
                w.max_in_flight
            )));
        }
        if self.limits.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_message_bytes must be at least 1024".into(),
            ));
        }
        if let Some(bad) = self.web.allowed_origins.iter().find(|o| !valid_origin(o)) {
            return Err(ConfigError::Invalid(format!(
                "web.allowed_origins: {bad:?} is not an origin like https://app.example.com \
                 (scheme, host and optional port; no path) or *"
            )));
        }
        if let Some(tls) = &self.tls {
            for (name, path) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !path.is_file() {
                    return Err(ConfigError::Invalid(format!(
                        "tls.{name} {} is not a readable file",
                        path.display()
                    )));
                }
            }
        }
        if self.limits.messages_per_second == 0 {
            return Err(ConfigError::Invalid(
                "limits.messages_per_second must be at least 1".into(),
            ));
        }
        self.cluster.validate()
    }

    /// The room limits this config sets.
    pub fn room_limits(&self) -> RoomLimits {
        RoomLimits {
            max_rtc_members: self.limits.max_rtc_members,
            max_live_members: self.limits.max_live_members,
            max_publishers: self.limits.max_publishers,
            heartbeat_timeout: Duration::from_secs_f64(self.timeouts.heartbeat_timeout_s),
            live_audience_linger: Duration::from_secs_f64(self.timeouts.live_audience_linger_s),
            event_batch: Duration::from_secs_f64(self.timeouts.event_batch_s),
            link: crate::link::LinkPolicy {
                max_pending_events: self.limits.max_pending_events.max(1),
            },
        }
    }

    /// The app with this sdkAppId.
    pub fn app(&self, sdk_app_id: u32) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.sdk_app_id == sdk_app_id)
    }
}

/// Whether `listen` (`host:port`) resolves to loopback addresses only.
pub fn listens_on_loopback(listen: &str) -> bool {
    use std::net::ToSocketAddrs;
    match listen.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.trim_end_matches('/').contains(['/', '?', '#']))
}

/// A new, empty file at `path` for secrets: on Unix created owner-only (0600), so no other
/// user can read it at any moment. A file already there (a temporary file left by a crash,
/// perhaps with wider permissions) is removed first rather than reused.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// What the embedded default server writes to its key file, so other commands can reach it.
/// `Debug` shows the key and the token as `"<redacted>"`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddedKeyFile {
    /// The signalling URL (`ws://127.0.0.1:7900/ws`).
    pub server_url: String,
    /// Listen address.
    pub listen: String,
    /// The app's sdkAppId.
    pub sdk_app_id: u32,
    /// The app's secret key.
    pub secret_key: String,
    /// The admin API token.
    pub admin_token: String,
}

/// Where the embedded key file lives: `$RTCROOM_HOME/embedded.toml`, else
/// `$HOME/.rtcroom/embedded.toml`, else `./.rtcroom/embedded.toml`.
pub fn embedded_key_path() -> PathBuf {
    let dir = std::env::var_os("RTCROOM_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".rtcroom")))
        .unwrap_or_else(|| PathBuf::from(".rtcroom"));
    dir.join("embedded.toml")
}

fn random_token(len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

impl EmbeddedKeyFile {
    /// Read the key file, if there is one.
    pub fn read(path: &Path) -> Result<Option<EmbeddedKeyFile>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("key file {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigError::KeyFile {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Read the key file, or make a new one (fresh key and admin token) and write it with
    /// owner-only permissions. `listen` overrides the address (e.g. port 0 in tests).
    pub fn load_or_create(
        path: &Path,
        listen: Option<&str>,
    ) -> Result<EmbeddedKeyFile, ConfigError> {
        let existing = Self::read(path)?;
        let mut file = existing.clone().unwrap_or_else(|| EmbeddedKeyFile {
            server_url: String::new(),
            listen: DEFAULT_LISTEN.to_owned(),
            sdk_app_id: EMBEDDED_SDK_APP_ID,
            secret_key: random_token(64),
            admin_token: random_token(32),
        });
        if let Some(l) = listen {
            l.clone_into(&mut file.listen);
        }
        file.server_url = format!("ws://{}/ws", file.listen);
        if existing.as_ref() != Some(&file) {
            file.write(path)?;
        }
        Ok(file)
    }

    /// Write the file: a temporary file created owner-only (0600 on Unix) before the secret
    /// goes in, then renamed over `path`.
    pub fn write(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |source| ConfigError::KeyFile {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            // A directory made here is owner-only too; an existing one is left as it is.
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(err)?;
        }
        let text = toml::to_string(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let tmp = path.with_extension("toml.tmp");
        let mut f = create_private(&tmp).map_err(err)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// The server config for this embedded default.
    pub fn server_config(&self) -> ServerConfig {
        let mut cfg = ServerConfig::single_app(&self.listen, self.sdk_app_id, &self.secret_key);
        cfg.admin.token = Some(self.admin_token.clone());
        // The demo page at / gets its UserSigs here: only while nobody but this machine can
        // reach the server (an RTCROOM__WEB__DEV_USERSIG override still decides).
        cfg.web.dev_usersig = listens_on_loopback(&self.listen);
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_env_load() {
        let dir = std::env::temp_dir().join(format!("rtcroom-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:0"
[[apps]]
sdk_app_id = 1400000000
secret_key = "k1"
[[apps]]
sdk_app_id = 1400000001
secret_key = "k2"
require_private_map_key = true
[timeouts]
heartbeat_timeout_s = 30
[webhook]
url = "http://127.0.0.1:9/cb"
key = "abc"
"#,
        )
        .unwrap();
        let cfg = ServerConfig::load(Some(&path)).unwrap();
        assert_eq!(cfg.apps.len(), 2);
        assert!(cfg.app(1_400_000_001).unwrap().require_private_map_key);
        assert_eq!(cfg.timeouts.heartbeat_timeout_s, 30.0);
        assert_eq!(cfg.timeouts.join_timeout_s, 5.0);
        assert_eq!(cfg.limits.max_rtc_members, 300);
        assert_eq!(cfg.webhook.as_ref().unwrap().key, "abc");
        assert_eq!(
            cfg.webhook.as_ref().unwrap().max_in_flight,
            DEFAULT_WEBHOOK_MAX_IN_FLIGHT
        );
        assert_eq!(cfg.room_limits().heartbeat_timeout, Duration::from_secs(30));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn web_and_tls_settings_are_checked() {
        let mut c = ServerConfig::single_app("127.0.0.1:0", 1, "k");
        for good in [
            "*",
            "https://app.example.com",
            "http://127.0.0.1:8080",
            "https://x/",
        ] {
            c.web.allowed_origins = vec![good.to_owned()];
            assert!(c.validate().is_ok(), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://x/path",
            "ftp://x",
            "https://",
            "https://x?a",
        ] {
            c.web.allowed_origins = vec![bad.to_owned()];
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("allowed_origins"), "{bad}: {e}");
        }
        c.web.allowed_origins.clear();
        c.tls = Some(TlsConfig {
            cert_file: "/nonexistent/cert.pem".into(),
            key_file: "/nonexistent/key.pem".into(),
        });
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("tls.cert_file")
        );
    }

    #[test]
    fn the_embedded_default_hands_out_dev_usersigs_on_loopback_only() {
        assert!(listens_on_loopback("127.0.0.1:7900"));
        assert!(listens_on_loopback("[::1]:7900"));
        assert!(!listens_on_loopback("0.0.0.0:7900"));
        assert!(!listens_on_loopback("not an address"));
        let file = |listen: &str| EmbeddedKeyFile {
            server_url: String::new(),
            listen: listen.to_owned(),
            sdk_app_id: 1,
            secret_key: "k".into(),
            admin_token: "t".into(),
        };
        assert!(file("127.0.0.1:7900").server_config().web.dev_usersig);
        assert!(!file("0.0.0.0:7900").server_config().web.dev_usersig);
        assert!(
            !ServerConfig::single_app("127.0.0.1:0", 1, "k")
                .web
                .dev_usersig
        );
    }

    #[test]
    fn environment_overrides_lay_over_an_embedded_config() {
        let mut base = ServerConfig::single_app("127.0.0.1:7900", 1_400_000_000, "k");
        base.admin.token = Some("t".into());
        let vars: config::Map<String, String> = [
            ("RTCROOM__TIMEOUTS__EVENT_BATCH_S", "0.05"),
            ("RTCROOM__WORKERS", "3"),
            (
                "RTCROOM__WEB__ALLOWED_ORIGINS",
                "https://a.example,http://127.0.0.1:8080",
            ),
            ("RTCROOM__WEB__DEV_USERSIG", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let cfg = base
            .clone()
            .overlay(ServerConfig::environment(Some(vars)))
            .unwrap();
        assert_eq!(cfg.timeouts.event_batch_s, 0.05);
        assert_eq!(cfg.workers, Some(3));
        assert_eq!(
            cfg.web.allowed_origins,
            ["https://a.example", "http://127.0.0.1:8080"]
        );
        assert!(cfg.web.dev_usersig);
        // Everything else is the embedded config's.
        assert_eq!(cfg.apps, base.apps);
        assert_eq!(cfg.admin.token.as_deref(), Some("t"));
        assert_eq!(cfg.listen, "127.0.0.1:7900");
        assert_eq!(cfg.timeouts.join_timeout_s, 5.0);
        // Overrides are validated like a file's.
        let bad: config::Map<String, String> = [(
            "RTCROOM__TIMEOUTS__EVENT_BATCH_S".to_owned(),
            "5".to_owned(),
        )]
        .into_iter()
        .collect();
        assert!(
            base.overlay(ServerConfig::environment(Some(bad)))
                .unwrap_err()
                .to_string()
                .contains("event_batch_s")
        );
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let mut cfg = ServerConfig::single_app("127.0.0.1:0", 1, "app-secret-1");
        cfg.admin.token = Some("admin-token-2".into());
        cfg.admin.hmac_key = Some("hmac-key-3".into());
        cfg.webhook = Some(WebhookConfig::new("http://127.0.0.1:9/cb", "hook-key-4"));
        let file = EmbeddedKeyFile {
            server_url: "ws://127.0.0.1:7900/ws".into(),
            listen: "127.0.0.1:7900".into(),
            sdk_app_id: 1,
            secret_key: "file-secret-5".into(),
            admin_token: "file-token-6".into(),
        };
        for text in [
            format!("{cfg:?}"),
            format!("{cfg:#?}"),
            format!("{file:?}"),
            format!("{:?}", file.server_config()),
        ] {
            for secret in [
                "app-secret-1",
                "admin-token-2",
                "hmac-key-3",
                "hook-key-4",
                "file-secret-5",
                "file-token-6",
            ] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            assert!(text.contains("<redacted>"), "{text}");
        }
        let text = format!("{cfg:?}");
        assert!(text.contains(r#"secret_key: "<redacted>""#), "{text}");
        assert!(text.contains("sdk_app_id: 1"), "the rest is shown: {text}");
        assert!(text.contains("http://127.0.0.1:9/cb"), "{text}");
        assert!(format!("{file:?}").contains("127.0.0.1:7900"));
        assert!(format!("{:?}", AdminConfig::default()).contains("token: None"));
    }

    /// Settings that become a `Duration` are refused when `Duration::from_secs_f64` would
    /// panic on them (negative, NaN, infinite, too large) or when they make no sense.
    #[test]
    fn second_settings_that_would_panic_are_refused_by_name() {
        let bad = [-1.0, 0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e30];
        let check = |cfg: &ServerConfig, key: &str, v: f64| {
            let e = cfg.validate().expect_err(key).to_string();
            assert!(e.contains(key), "{key} = {v}: {e}");
        };
        for v in bad.into_iter().chain([600.5]) {
            let mut cfg = ServerConfig::single_app("127.0.0.1:0", 1, "k");
            cfg.media.connect_timeout_s = v;
            check(&cfg, "media.connect_timeout_s", v);
        }
        for v in bad {
            for key in [
                "join_timeout_s",
                "heartbeat_timeout_s",
                "live_audience_linger_s",
            ] {
                let mut cfg = ServerConfig::single_app("127.0.0.1:0", 1, "k");
                let t = &mut cfg.timeouts;
                *match key {
                    "join_timeout_s" => &mut t.join_timeout_s,
                    "heartbeat_timeout_s" => &mut t.heartbeat_timeout_s,
                    _ => &mut t.live_audience_linger_s,
                } = v;
                check(&cfg, &format!("timeouts.{key}"), v);
            }
        }
        for v in [-0.1, f64::NAN, f64::INFINITY, 1.5] {
            let mut cfg = ServerConfig::single_app("127.0.0.1:0", 1, "k");
            cfg.timeouts.event_batch_s = v;
            check(&cfg, "timeouts.event_batch_s", v);
        }
        let mut cfg = ServerConfig::single_app("127.0.0.1:0", 1, "k");
        for good in [0.5, 10.0, 600.0] {
            cfg.media.connect_timeout_s = good;
            assert!(cfg.validate().is_ok(), "{good}");
            let _ = Duration::from_secs_f64(cfg.media.connect_timeout_s);
        }
        // Everything validate() accepts converts without a panic.
        let _ = cfg.room_limits();
    }

    #[test]
    fn webhook_max_in_flight_is_checked() {
        let mut cfg = ServerConfig::single_app("127.0.0.1:0", 1, "k");
        cfg.webhook = Some(WebhookConfig::new("http://127.0.0.1:9/cb", "k"));
        assert!(cfg.validate().is_ok());
        for bad in [0, MAX_WEBHOOK_MAX_IN_FLIGHT + 1] {
            if let Some(w) = &mut cfg.webhook {
                w.max_in_flight = bad;
            }
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains("webhook.max_in_flight"), "{bad}: {e}");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let mut cfg = ServerConfig::single_app("127.0.0.1:0", 1, "k");
        assert!(cfg.validate().is_ok());
        cfg.timeouts.heartbeat_timeout_s = -1.0;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("heartbeat_timeout_s")
        );
        cfg.timeouts.heartbeat_timeout_s = 1.0;
        cfg.apps.clear();
        assert!(cfg.validate().unwrap_err().to_string().contains("apps"));
    }

    /// The key file's temporary file is owner-only from its creation, before a byte of the
    /// secret is in it, even when a world-readable one was left behind by a crash.
    #[cfg(unix)]
    #[test]
    fn the_key_file_is_private_from_its_creation() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rtcroom-priv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("embedded.toml.tmp");
        let _ = std::fs::remove_file(&path);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let f = create_private(&path).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
        assert_eq!(mode(&path), 0o600, "fresh file");
        drop(f);
        // A stale temporary file, readable by all, is not reused as it is.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&path, "old").unwrap();
        let f = create_private(&path).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
        assert_eq!(mode(&path), 0o600, "stale file");
        drop(f);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn embedded_key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("rtcroom-key-{}", std::process::id()));
        let path = dir.join("embedded.toml");
        let _ = std::fs::remove_file(&path);
        let a = EmbeddedKeyFile::load_or_create(&path, None).unwrap();
        assert_eq!(a.secret_key.len(), 64);
        assert_eq!(a.server_url, "ws://127.0.0.1:7900/ws");
        let b = EmbeddedKeyFile::load_or_create(&path, None).unwrap();
        assert_eq!(a, b, "the key survives restarts");
        let c = EmbeddedKeyFile::load_or_create(&path, Some("127.0.0.1:9999")).unwrap();
        assert_eq!(c.secret_key, a.secret_key);
        assert_eq!(c.server_url, "ws://127.0.0.1:9999/ws");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let cfg = c.server_config();
        assert_eq!(cfg.admin.token.as_deref(), Some(a.admin_token.as_str()));
        assert!(cfg.validate().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
