//! # rtcroom-server
//!
//! The room server: TRTC-compatible signalling over WebSocket, TRTC's room rules, an admin REST
//! API, TRTC-format webhooks and Prometheus metrics.
#![forbid(unsafe_code)]

pub mod room;
