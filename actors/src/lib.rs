//! # rtcroom-actors
//!
//! The client side of rtcroom as actix actors driving plain state machines. The public,
//! embeddable API is the `rtcroom` crate; this crate is its engine room.
//!
//! ## Pieces
//!
//! State machines (no sockets, no clock: they take `now` or return delays, and are unit-tested
//! deterministically):
//! - [`lifecycle`]: the join / connection state machine (New → Connecting → Joined →
//!   Reconnecting → Disconnected), TRTC's connection states, INVALID_OPERATION for calls in
//!   the wrong phase.
//! - [`backoff`]: the reconnect schedule (Fibonacci 1, 2, 3, 5, 8, then 13 s; 30 attempts by
//!   default) and heartbeat scheduling (every 2 s, dead after 3 silent intervals).
//! - [`requests`]: request/response correlation by request id with per-request deadlines
//!   (join: 5 s → JOIN_ROOM_FAILED "join room timeout").
//! - [`room`]: the members and streams a client sees; server events in, [`ClientEvent`]s out.
//! - [`core`]: the client itself as one sans-IO machine ([`core::ClientCore`]:
//!   `handle_input(input, now)` / `poll_output()` / `poll_timeout()`), built from the machines
//!   above plus the media link table, the user's calls and the reconnection/rebuild timers;
//!   tested in virtual time.
//!
//! Actors (thin drivers):
//! - [`client::ClientActor`]: one per client; drives its [`core::ClientCore`] and performs
//!   its outputs (connections, requests, pipelines, peer connections, events through
//!   [`hub::ClientHub`]); supervises its signalling connection and peer connections.
//! - [`signaling::SignalingActor`]: one per WebSocket connection; request ids, replies,
//!   events, heartbeats. Reports its end (also a panic) to the client actor, which reconnects.
//!
//! Media ([`media`]):
//! - [`media::PeerConnectionActor`]: one webrtc-rs peer connection per published stream
//!   (uplink) and per subscribed stream (downlink); webrtc-rs callbacks become messages.
//! - [`media::LocalMedia`] / [`media::RemoteMedia`]: the GStreamer pipelines
//!   (rtcroom-pipelines) and the tracks / counters around them; they outlive peer
//!   connections, so rebuilding a link does not touch the media.
//! - [`media::LinkHealth`]: rebuild a failed link, or give up with 0x4007 / 0x4008.
//!
//! The core owns the links (publish, subscribe, auto-subscribe, re-publish and re-subscribe
//! after a re-join); the client actor supervises the peer connection actors: one that dies
//! (also by panic) reports it from its `Drop`, and the core renegotiates the link.
//!
//! ## Time
//! State machines never read the clock. Actors read `Instant::now()` and schedule wake-ups
//! with `run_later` at the deadlines the machines report (`ClientCore::poll_timeout`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backoff;
pub mod client;
pub mod core;
pub mod error;
pub mod event;
pub mod hub;
pub mod lifecycle;
pub mod media;
pub mod quality;
pub mod requests;
pub mod room;
pub mod signaling;
pub mod tls;

pub use client::{
    ClientActor, ClientRequest, ClientSettings, EnableAudioVolumeEvaluation, GetRemoteStats,
    GetTransportStats, JoinParams, Shutdown, SubscribeParams,
};
#[cfg(feature = "fault-injection")]
pub use client::{CrashPeerConnections, FailRemotePipelines};
pub use error::SignalError;
pub use event::{AudioVolume, ClientEvent, RemoteMutedState, RemoteStreamInfo};
pub use hub::{ClientHub, ClientView};
pub use lifecycle::{ConnectionState, Lifecycle, Phase, StateChange};
