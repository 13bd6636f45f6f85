//! # rtcroom-server
//!
//! The room server: TRTC-compatible signalling over WebSocket (`GET /ws`), TRTC's room rules,
//! an admin REST API (`POST /admin/{Action}`), TRTC-format webhooks, Prometheus metrics
//! (`GET /metrics`), a health check (`GET /healthz`), and for browsers the web SDK
//! (`GET /sdk/trtc.js`), a demo page (`GET /`) and development UserSigs ([`web`]); plain or
//! TLS (`[tls]`).
//!
//! The rules live in [`room::Room`], a clock-free state machine; actors only drive it. Rooms
//! are owned by room shards ([`shard`], one per core, by hash of (sdkAppId, roomId)), found
//! through a [`registry::RoomDirectory`]; members are links with bounded outboxes ([`link`]):
//! a signalling WebSocket ([`session`]), and later WHIP/WHEP. Media goes through the SFU's
//! sans-IO router ([`media`]). See `docs/protocol.md` for the wire protocol.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cascade;
pub mod cluster;
pub mod config;
pub mod link;
pub mod media;
pub mod metrics;
pub mod registry;
pub mod room;
pub mod server;
pub mod session;
pub mod shard;
pub mod web;
pub mod webhook;
pub mod whip;

pub use config::{EmbeddedKeyFile, ServerConfig};
pub use server::{RunningServer, run, run_until_signal, shutdown_signal};
