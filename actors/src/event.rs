//! The events a client reports, one `#[non_exhaustive]` enum (TRTC v4's client events).
//!
//! Layers: the signalling connection reports [`crate::signaling::SignalEvent`]s (frames,
//! loss) to the client actor; the client actor turns server events, its own state machine's
//! changes and failures into [`ClientEvent`]s; the engine hands these to the user.

use rtcroom_protocol::RtcError;
use rtcroom_protocol::UserId;
pub use rtcroom_protocol::signal::{
    BanReason, LayerChangeReason, LeaveReason, StreamType, VideoStreamType,
};

use crate::lifecycle::ConnectionState;

/// A remote stream as the room announces it: whose (user id), which (`main` camera/mic or
/// `auxiliary` screen share), whether it has audio / video and whether those are muted.
pub use rtcroom_protocol::signal::StreamInfo as RemoteStreamInfo;

/// What happened, as TRTC v4's `client.on(...)` events report it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// `peer-join`: a member became visible: it joined after us, it was already in the room
    /// when we joined (one event per member), or it appeared while we were reconnecting. In
    /// live mode only anchors are announced (an audience member switching to anchor counts
    /// as joining).
    PeerJoin {
        /// Who.
        user_id: UserId,
    },
    /// `peer-leave`: a visible member left (reason 0), timed out (1), was removed (2) or
    /// switched to audience (3). Members found gone after a reconnect are reported with
    /// reason 1 (timed out), since the real reason was missed.
    PeerLeave {
        /// Who.
        user_id: UserId,
        /// Why.
        reason: LeaveReason,
    },
    /// `stream-added`: a remote stream was published (or was already published when we
    /// joined, or appeared while we were reconnecting).
    StreamAdded(RemoteStreamInfo),
    /// `stream-removed`: a remote stream was unpublished, its member left or switched to
    /// audience. Carries the stream as last known.
    StreamRemoved(RemoteStreamInfo),
    /// `stream-subscribed`: a subscription (explicit, automatic, or resumed after a
    /// re-join) is connected; media flows to its output.
    StreamSubscribed(RemoteStreamInfo),
    /// `stream-updated`: a remote stream gained or lost its audio or video track.
    StreamUpdated(RemoteStreamInfo),
    /// `network-quality`: every 2 s while connected, the uplink and downlink quality (TRTC's
    /// 1 excellent … 5 very bad, 6 disconnected, 0 unknown: nothing measured yet) from the
    /// last interval's packet loss and the round-trip time.
    NetworkQuality {
        /// Quality of what we send.
        uplink: u8,
        /// Quality of what we receive.
        downlink: u8,
        /// Uplink round-trip time (from the server's receiver reports), ms.
        uplink_rtt_ms: Option<f64>,
        /// Downlink loss fraction over the last interval.
        downlink_loss: Option<f64>,
    },
    /// `mute-audio`: a remote member muted its audio.
    MuteAudio {
        /// Who.
        user_id: UserId,
    },
    /// `unmute-audio`: a remote member unmuted its audio.
    UnmuteAudio {
        /// Who.
        user_id: UserId,
    },
    /// `mute-video`: a remote member muted its video.
    MuteVideo {
        /// Who.
        user_id: UserId,
    },
    /// `unmute-video`: a remote member unmuted its video.
    UnmuteVideo {
        /// Who.
        user_id: UserId,
    },
    /// `connection-state-changed`: the connection state changed (join, failed join, loss
    /// of signalling, reconnect, leave, removal, final failure).
    ConnectionStateChanged {
        /// The state before.
        prev: ConnectionState,
        /// The state now.
        state: ConnectionState,
    },
    /// `client-banned`: the server removed this client: `kick` (the same userId joined
    /// elsewhere), `banned` (admin RemoveUser) or `room_disband` (admin DismissRoom). The
    /// client is DISCONNECTED for good and does not reconnect. (`user_time_out` is not
    /// reported: the client re-joins silently, as TRTC does.)
    ClientBanned {
        /// Why.
        reason: BanReason,
        /// The server's message.
        message: String,
    },
    /// `error`: an unrecoverable failure, e.g. SIGNAL_CHANNEL_RECONNECTION_FAILED (0x4006)
    /// after the reconnect attempts ran out, the server's error when it refused the re-join,
    /// or UNKNOWN when the client's actor stopped unexpectedly. The client is DISCONNECTED.
    Error(RtcError),
    /// `custom-message`: another member's message (TRTC's `sendCustomMessage`; native
    /// `onRecvCustomCmdMsg`).
    CustomMessage {
        /// The sender.
        user_id: UserId,
        /// The sender's command id, 1–10.
        cmd_id: u8,
        /// The sender's message count in the room, from 1 (a gap: messages the server
        /// refused).
        seq: u32,
        /// The message.
        data: Vec<u8>,
    },
    /// `sei-message`: an SEI message in the video of a subscribed stream (TRTC's
    /// `sendSEIMessage`; native `onRecvSEIMsg`), delivered with the frame it rode in.
    SeiMessage {
        /// The publisher.
        user_id: UserId,
        /// Its main stream, or its auxiliary one (TRTC's `isFromAuxiliary`).
        stream_type: StreamType,
        /// The SEI payload type: 243 (TRTC's default) or 5 (user data unregistered, the
        /// 16-byte UUID first).
        payload_type: u8,
        /// The message.
        data: Vec<u8>,
    },
    /// The layer of a simulcast stream this client receives changed (TRTC's big and small
    /// streams): the layer asked for with `setRemoteVideoStreamType` (or in `subscribe`) is
    /// flowing now, from a keyframe of it on, or the server moved the subscription to another
    /// layer for its bandwidth. Also when a subscription gets its first layer.
    VideoLayerChanged {
        /// The publisher.
        user_id: UserId,
        /// Its main stream or its auxiliary one.
        stream_type: StreamType,
        /// Big (the stream's biggest layer) or small (a smaller one).
        video_type: VideoStreamType,
        /// The layer's rid, as its publisher named it.
        rid: String,
        /// Asked for, or the bandwidth's choice.
        reason: LayerChangeReason,
    },
    /// `audio-volume` (after `enable_audio_volume_evaluation`): every interval, the loudest
    /// volume of each audio stream since the last report: this client's published streams
    /// (under its own user id) and the subscriptions that decode audio (Play, Frames).
    AudioVolume(Vec<AudioVolume>),
}

/// One entry of `audio-volume`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioVolume {
    /// Whose stream (this client's own id for what it publishes).
    pub user_id: UserId,
    /// 0–100: 100 × the RMS amplitude relative to full scale.
    pub audio_volume: u8,
    /// Which stream.
    pub stream_type: StreamType,
}

/// One entry of `getRemoteMutedState()`: a remote member with a published main stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteMutedState {
    /// Who.
    pub user_id: UserId,
    /// The stream has audio.
    pub has_audio: bool,
    /// The stream has video.
    pub has_video: bool,
    /// The audio is muted.
    pub audio_muted: bool,
    /// The video is muted.
    pub video_muted: bool,
    /// The stream also sends a small video stream (TRTC's `hasSmall`: simulcast layers).
    pub has_small: bool,
}
