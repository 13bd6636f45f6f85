//! # rtcroom-server
//!
//! The room server: TRTC-compatible signalling over WebSocket (`GET /ws`), TRTC's room rules,
//! an admin REST API (`POST /admin/{Action}`), TRTC-format webhooks, Prometheus metrics
//! (`GET /metrics`), a health check (`GET /healthz`), and for browsers the web SDK
//! (`GET /sdk/trtc.js`), a demo page (`GET /`) and development UserSigs ([`web`]); plain or
//! TLS (`[tls]`).
//!
//! The rules live in [`room::Room`], a clock-free state machine; the actors only drive it:
//! one `SessionActor` per connection ([`session`]), one `RoomActor` per (sdkAppId, roomId)
//! and a `Registry` that finds rooms ([`registry`]). A room's state sits behind a lock shared
//! by its actor (timers, requests, admin calls, event flushes) and the sessions joining it,
//! which run their join on their own thread. See `docs/protocol.md` for the wire protocol.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod link;
pub mod media;
pub mod metrics;
pub mod registry;
pub mod room;
pub mod server;
pub mod session;
pub mod web;
pub mod webhook;
pub mod whip;

pub use config::{EmbeddedKeyFile, ServerConfig};
pub use server::{RunningServer, run, run_until_signal, shutdown_signal};
