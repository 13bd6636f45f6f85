//! # rtcroom — an embeddable, TRTC-compatible real-time room client
//!
//! The API mirrors the TRTC Web SDK v4: [`create_client`] → [`Client::join`] → events
//! (`peer-join`, `stream-added`, `connection-state-changed`, `client-banned`, ...) →
//! [`Client::leave`]. It speaks rtcroom's signalling protocol (`docs/protocol.md`) to an
//! rtcroom server, with TRTC's rules: 5 s join timeout, heartbeat every 2 s, reconnection
//! with Fibonacci backoff (1, 2, 3, 5, 8, then 13 s; 30 attempts) and a silent re-join after
//! a reconnect, TRTC's error codes and extra codes.
//!
//! ```no_run
//! use rtcroom::{ClientConfig, ClientEvent, JoinOptions, Mode, Role, create_client};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), rtcroom::RtcError> {
//!     // The UserSig comes from tls-sig-api-v2 / `rtcroom usersig`.
//!     let client = create_client(
//!         ClientConfig::new(Mode::Live, 1_400_000_000, "denny", "eJw...")
//!             .with_server_url("ws://127.0.0.1:7900/ws"),
//!     )?;
//!     let mut events = client.events();
//!     client
//!         .join(JoinOptions::new(8888u32).with_role(Role::Anchor))
//!         .await?;
//!     while let Some(event) = events.recv().await {
//!         match event {
//!             ClientEvent::PeerJoin { user_id } => println!("{user_id} joined"),
//!             ClientEvent::ClientBanned { reason, .. } => { println!("removed: {reason:?}"); break }
//!             ClientEvent::Error(e) => { eprintln!("{e}"); break }
//!             _ => {}
//!         }
//!     }
//!     client.leave().await
//! }
//! ```
//!
//! ## How it runs
//!
//! Each client is a `ClientActor` driving a sans-IO `ClientCore` (join state machine, room
//! view, media link table, the user's calls, reconnection and rebuild timers:
//! `handle_input(input, now)` / `poll_output()`, tested in virtual time), with one
//! `SignalingActor` per WebSocket connection (request ids, heartbeats), one
//! `PeerConnectionActor` per media link, one `RemoteStreamActor` watching each receive
//! pipeline and one `LocalStreamActor` pumping and supervising each local stream's pipeline,
//! from the `rtcroom-actors` crate. All actors of the process run on **one dedicated engine
//! thread** with its own actix `System`, started by the first [`create_client`]; the [`Client`]
//! handle's `async fn`s send messages there and await the replies, so they work from any
//! tokio runtime (`#[tokio::main]`, multi- or current-thread) and need no actix setup. The
//! state machines take the time as input and are unit-tested without sockets.
//!
//! ## Failures and supervision
//!
//! - The client actor supervises its signalling connection: if the socket closes, errors,
//!   falls silent for 3 heartbeat intervals, or its actor dies (even by panic), the client
//!   goes RECONNECTING, reconnects with backoff and re-joins the same room with the same
//!   role, then reports CONNECTED and only what changed meanwhile (peer-join/leave,
//!   stream-added/removed). When the attempts run out: [`ClientEvent::Error`] with
//!   SIGNAL_CHANNEL_RECONNECTION_FAILED (0x4006) and DISCONNECTED.
//! - `client-banned` (kick, banned, room_disband) ends the client: [`ClientEvent::ClientBanned`]
//!   then DISCONNECTED, no reconnect. `user_time_out` is handled by a silent re-join, as TRTC
//!   does.
//! - A receive pipeline that fails (a decoder or sink error on its GStreamer bus) or whose
//!   watcher actor dies is rebuilt and its subscription renegotiated on a new peer
//!   connection, up to 3 times within 60 s; one more failure ends the subscription with
//!   DOWNLINK_RECONNECTION_FAILED (0x4008). A local pipeline that fails is rebuilt in place
//!   by its `LocalStreamActor` (same tracks, continuous RTP, no renegotiation), up to 3 times
//!   within 60 s.
//! - If a client actor dies, that client reports [`ClientEvent::Error`] (UNKNOWN) and is
//!   DISCONNECTED; other clients and the process carry on. Create a new client.
//!
//! ## Media
//!
//! [`create_stream`] builds a [`LocalStream`] (test pattern + tone, file, camera/mic, or
//! frames from the application; H.264 + Opus through GStreamer). [`Client::publish`] sends
//! it to the SFU over one webrtc-rs uplink peer connection per stream;
//! [`ClientEvent::StreamAdded`] announces remote streams and [`Client::subscribe`] receives
//! one over a downlink peer connection into a [`SubscribeOutput`] (play, record, decoded
//! frames to the application, discard). With `auto_subscribe` (default) every stream is
//! subscribed into [`ClientConfig::auto_subscribe_output`]. Mute/unmute are signalled to the
//! room and stop sending locally. After a signalling re-join, published streams are
//! published again and subscriptions resumed (a subscription whose stream is missing after
//! the re-join waits for it). A failed or crashed peer connection is rebuilt (renegotiated)
//! up to 3 times in a row, then the client reports UPLINK_RECONNECTION_FAILED (0x4007) or
//! DOWNLINK_RECONNECTION_FAILED (0x4008) and drops that stream. Pipelines are built and
//! stopped on threads of their own, never on the engine thread that drives ICE and DTLS.
//!
//! Small streams (TRTC's big and small streams, a two-layer simulcast): a stream created
//! with [`StreamConfig::with_small_stream`] encodes its video twice and publishes both
//! layers on one video transceiver (rids `h` and `l`); a subscriber receives one
//! ([`SubscribeOptions::with_video_type`], [`Client::set_remote_video_stream_type`],
//! [`ClientEvent::VideoLayerChanged`]), and the publisher pauses a layer the server says
//! nobody receives.
//!
//! ## Not here yet
//! No black/silent frames while muted (nothing is sent); no bandwidth estimation of the
//! client's own (layer choices by bandwidth are the server's).
//!
//! ## Memory in a process with many clients
//! glibc's malloc keeps freed memory when its mmap threshold has grown (it does after any
//! large block is freed): 1,000 joined clients measured 439 MiB RSS for ~70 MiB of live
//! heap. The `rtcroom` CLI pins the threshold; a service holding many clients can set
//! `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072` (167 MiB for 1,000 clients and the
//! server in one process) or use another allocator. See BENCHMARKS.md.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod config;
mod media;
mod runtime;

pub use client::{Client, EventStream, create_client};
pub use config::{ClientConfig, DEFAULT_SERVER_URL, JoinOptions, RoomIdInput, SeiOptions};
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub use media::StreamLivenessForTest;
pub use media::{
    AppAudioFormat, AppVideoFormat, DecodedFrame, FrameHandler, FrameInfo, FrameStream,
    LocalAudioStats, LocalStream, LocalVideoStats, RawVideoFormat, RecordFormat, RemoteFrame,
    RemoteMediaStats, RemoteStreamStats, StreamConfig, SubscribeOptions, SubscribeOutput,
    TransportStats, create_stream, frame_stream,
};
pub use rtcroom_pipelines::{AudioProfile, SourceKind, VideoProfile};
/// A remote stream as `stream-added` announces it (TRTC's `RemoteStream`): `user_id`,
/// `stream_type`, `has_audio`, `has_video`.
pub type RemoteStream = RemoteStreamInfo;
pub use rtcroom_actors::{
    AudioVolume, ClientEvent, ConnectionState, RemoteMutedState, RemoteStreamInfo,
};
pub use rtcroom_protocol::signal::{
    BanReason, LayerChangeReason, LeaveReason, StreamType, VideoCodec, VideoLayer, VideoStreamType,
};
pub use rtcroom_protocol::{ErrorCode, Mode, Role, RoomId, RtcError, RtcResult, UserId};
