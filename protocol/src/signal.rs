//! Signalling wire messages: JSON over WebSocket between an rtcroom client and room server.
//!
//! Every frame is one JSON object. Client → server frames are [`ClientEnvelope`]s:
//! `{"v":1,"id":7,"msg":{"type":"join",...}}`; the `id` is the client's request id and comes
//! back in the [`Reply`]. Server → client frames are [`ServerMessage`]s: a `reply` to a request
//! or an `event` (peer-join, stream-added, client-banned, ...).
//!
//! Decoding is bounded: frames larger than [`MAX_MESSAGE_BYTES`] are refused before parsing,
//! and a frame with another protocol version is refused with a message saying so. The room
//! server issue fills these messages out; the shapes here already carry SDP for publish and
//! subscribe so the media plane can be added without reshaping the room logic.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, RtcError, extra};
use crate::ids::{Mode, Role, RoomId, UserId};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame accepted, in bytes. An SDP offer with several media sections is ~10 KiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A client → server frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientEnvelope {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u32,
    /// Request id chosen by the client; echoed in the reply.
    pub id: u64,
    /// The request.
    pub msg: ClientMessage,
}

impl ClientEnvelope {
    /// A frame of the current version.
    pub fn new(id: u64, msg: ClientMessage) -> Self {
        ClientEnvelope {
            v: PROTOCOL_VERSION,
            id,
            msg,
        }
    }
}

/// Which of a member's two streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamType {
    /// Camera and microphone.
    Main,
    /// Screen share (TRTC's sub-stream).
    Auxiliary,
}

/// Audio or video, for mute events and subscriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

/// Which of a simulcast stream's layers a subscriber receives (TRTC's
/// `setRemoteVideoStreamType`): the biggest or the smallest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoStreamType {
    /// The biggest layer (the default).
    #[default]
    Big,
    /// The smallest layer (TRTC's small stream).
    Small,
}

/// One layer of a simulcast publication: its RTP stream id (`a=rid`) in the offer and what it
/// carries. The server orders a stream's layers by bitrate, smallest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoLayer {
    /// The layer's `a=rid` (1–16 of `A-Za-z0-9_-`).
    pub rid: String,
    /// Frame width, pixels.
    pub width: u32,
    /// Frame height, pixels.
    pub height: u32,
    /// Target bitrate, kbit/s.
    pub bitrate_kbps: u32,
}

/// Most simulcast layers in one publication.
pub const MAX_LAYERS: usize = 3;

impl VideoLayer {
    /// A layer description a server can use: a valid rid, nonzero sizes and bitrate.
    pub fn validate(&self) -> Result<(), String> {
        let rid_ok = (1..=16).contains(&self.rid.len())
            && self
                .rid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !rid_ok {
            return Err(format!(
                "layer rid {:?} is not 1-16 of A-Za-z0-9_-",
                self.rid
            ));
        }
        if self.width == 0 || self.height == 0 || self.bitrate_kbps == 0 {
            return Err(format!(
                "layer {:?} needs a nonzero width, height and bitrateKbps",
                self.rid
            ));
        }
        Ok(())
    }
}

/// The video codec of a published stream, as negotiated with its publisher. The server answers
/// a publisher with exactly one video codec (the first of the offer's that it supports), so a
/// stream has one codec for its whole life; subscribers must be able to receive it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// H.264, packetization-mode 1, (constrained) baseline profile.
    H264,
    /// VP8.
    Vp8,
}

impl VideoCodec {
    /// The codec's RTP encoding name (`a=rtpmap`), e.g. `H264`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "H264",
            VideoCodec::Vp8 => "VP8",
        }
    }
}

impl std::fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.encoding_name())
    }
}

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ClientMessage {
    /// Enter a room. Must be the first message on a connection.
    Join(JoinRequest),
    /// Leave the room and close the session.
    Leave,
    /// Keep-alive, every 2 s after joining.
    Heartbeat,
    /// Publish a stream with an SDP offer.
    Publish(PublishRequest),
    /// Stop publishing a stream.
    Unpublish {
        /// Which stream.
        #[serde(rename = "streamType")]
        stream_type: StreamType,
    },
    /// Subscribe to another member's stream.
    Subscribe(SubscribeRequest),
    /// Stop a subscription.
    Unsubscribe {
        /// Whose stream.
        #[serde(rename = "userId")]
        user_id: UserId,
        /// Which stream.
        #[serde(rename = "streamType")]
        stream_type: StreamType,
    },
    /// Change role (live mode).
    SwitchRole {
        /// The new role.
        role: Role,
    },
    /// The member's media statistics as the server sees them.
    GetStats,
    /// Mute or unmute one kind of media of a published stream.
    Mute {
        /// Which stream.
        #[serde(rename = "streamType")]
        stream_type: StreamType,
        /// Audio or video.
        kind: MediaKind,
        /// `true` to mute, `false` to unmute.
        muted: bool,
    },
    /// An application message to the room's other members (TRTC's `sendCustomMessage` /
    /// `sendCustomCmdMsg`): anchors only, [`custom_message`] limits.
    CustomMessage {
        /// The application's command id, 1–10.
        #[serde(rename = "cmdId")]
        cmd_id: u8,
        /// The message (base64 on the wire), 1 byte to 1 KB.
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// Restart ICE on one of the member's peer connections: an offer with new ICE
    /// credentials for the same media, answered on the same server peer (its SSRCs, DTLS
    /// session and, for a subscription, its sequence numbers continue).
    IceRestart(IceRestartRequest),
    /// Choose the layer of a simulcast stream one subscribes to (TRTC's
    /// `setRemoteVideoStreamType`); the server switches at the layer's next keyframe and
    /// sends `video-layer-changed`.
    SetRemoteVideoStreamType {
        /// Whose stream.
        #[serde(rename = "userId")]
        user_id: UserId,
        /// Which stream.
        #[serde(rename = "streamType")]
        stream_type: StreamType,
        /// Big or small.
        #[serde(rename = "videoType")]
        video_type: VideoStreamType,
    },
}

/// Which peer connection an [`ClientMessage::IceRestart`] is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkDirection {
    /// The member's own published stream.
    Uplink,
    /// A subscription to another member's stream.
    Downlink,
}

/// Restart ICE on a link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceRestartRequest {
    /// Publish or subscription.
    pub link: LinkDirection,
    /// For a downlink: whose stream (absent for an uplink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// Which stream.
    pub stream_type: StreamType,
    /// The offer, with new `a=ice-ufrag`/`a=ice-pwd`.
    pub sdp: String,
}

/// TRTC's limits on custom messages (`sendCustomCmdMsg`): checked by the server for every
/// sender, and by the engine before it sends.
pub mod custom_message {
    use std::time::Instant;

    use crate::error::{RtcError, extra};

    /// Lowest command id.
    pub const MIN_CMD_ID: u8 = 1;
    /// Highest command id.
    pub const MAX_CMD_ID: u8 = 10;
    /// Largest message, bytes.
    pub const MAX_BYTES: usize = 1024;
    /// Messages per second per sender.
    pub const PER_SECOND: u32 = 30;
    /// Bytes per second per sender.
    pub const BYTES_PER_SECOND: usize = 8 * 1024;

    /// TRTC's per-sender limits on custom messages (30 per second, 8 KB per second; SEI
    /// messages have the same) as two token buckets that start full and refill continuously.
    #[derive(Clone, Debug)]
    pub struct MessageBudget {
        messages: f64,
        bytes: f64,
        at: Option<Instant>,
    }

    impl Default for MessageBudget {
        fn default() -> Self {
            MessageBudget {
                messages: f64::from(PER_SECOND),
                bytes: BYTES_PER_SECOND as f64,
                at: None,
            }
        }
    }

    impl MessageBudget {
        /// Take one message of `len` bytes at `now`; `false` (and nothing taken) when either
        /// budget is short.
        pub fn take(&mut self, now: Instant, len: usize) -> bool {
            let per_s = f64::from(PER_SECOND);
            let bytes_per_s = BYTES_PER_SECOND as f64;
            if let Some(at) = self.at {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                self.messages = (self.messages + dt * per_s).min(per_s);
                self.bytes = (self.bytes + dt * bytes_per_s).min(bytes_per_s);
            }
            self.at = Some(now);
            if self.messages >= 1.0 && self.bytes >= len as f64 {
                self.messages -= 1.0;
                self.bytes -= len as f64;
                true
            } else {
                false
            }
        }
    }

    /// Check a message's command id and size (INVALID_PARAMETER with TRTC's extra code).
    pub fn check(cmd_id: u8, data: &[u8]) -> Result<(), RtcError> {
        if !(MIN_CMD_ID..=MAX_CMD_ID).contains(&cmd_id) {
            return Err(RtcError::invalid_parameter(
                Some(extra::PARAM_RANGE),
                format!("cmdId must be {MIN_CMD_ID}–{MAX_CMD_ID}, got {cmd_id}"),
            ));
        }
        if data.is_empty() {
            return Err(RtcError::invalid_parameter(
                Some(extra::EMPTY_BUFFER),
                "a custom message cannot be empty",
            ));
        }
        if data.len() > MAX_BYTES {
            return Err(RtcError::invalid_parameter(
                Some(extra::BUFFER_OVERSIZE),
                format!(
                    "a custom message is at most {MAX_BYTES} bytes, got {}",
                    data.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Bytes as standard base64 in JSON.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("data is not base64: {e}")))
    }
}

/// The join request, following TRTC v4's join body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    /// The application.
    pub sdk_app_id: u32,
    /// Who is joining (validated on decode).
    pub user_id: UserId,
    /// The UserSig ticket.
    pub user_sig: String,
    /// The room as text (TRTC v4 sends `String(roomId)`); see [`JoinRequest::room`].
    pub room_id: String,
    /// Whether `room_id` is a string room.
    #[serde(default)]
    pub use_string_room_id: bool,
    /// rtc or live.
    pub mode: Mode,
    /// Requested role (live mode); absent means audience in live mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// PrivateMapKey, when the app requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_map_key: Option<String>,
    /// Subscribe to everything published (default true).
    #[serde(default = "default_true")]
    pub auto_subscribe: bool,
}

fn default_true() -> bool {
    true
}

impl JoinRequest {
    /// The room, parsed by the `useStringRoomId` rule.
    pub fn room(&self) -> Result<RoomId, RtcError> {
        RoomId::parse(&self.room_id, self.use_string_room_id)
    }

    /// The role the member gets ([`Role::effective`]).
    pub fn effective_role(&self) -> Role {
        Role::effective(self.mode, self.role)
    }
}

/// Publish a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishRequest {
    /// Main or auxiliary.
    pub stream_type: StreamType,
    /// Whether the stream carries audio.
    pub has_audio: bool,
    /// Whether the stream carries video.
    pub has_video: bool,
    /// The SDP offer for the uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp: Option<String>,
    /// Simulcast: the video layers the offer sends (its `a=simulcast:send` rids), at most
    /// [`MAX_LAYERS`]. Empty: one layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<VideoLayer>,
}

/// Subscribe to a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeRequest {
    /// Whose stream.
    pub user_id: UserId,
    /// Which stream.
    pub stream_type: StreamType,
    /// Receive its audio.
    pub audio: bool,
    /// Receive its video.
    pub video: bool,
    /// Of a simulcast stream, the layer wanted (big by default); ignored for one layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_type: Option<VideoStreamType>,
    /// The SDP offer for the downlink, when the client offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp: Option<String>,
}

/// A server → client frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ServerMessage {
    /// The answer to a request.
    Reply(Reply),
    /// Something happened in the room.
    Event(ServerEvent),
    /// Several events, in the order they happened. Under load the server coalesces the
    /// events for one member into one frame (at most one frame per batch window, see
    /// docs/protocol.md); a client handles them exactly as the same events in separate
    /// `event` frames.
    Events {
        /// The events, oldest first.
        events: Vec<ServerEvent>,
    },
}

/// The answer to request `id`: `code` 0 on success, else TRTC's code with the extra code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Protocol version.
    pub v: u32,
    /// The request id it answers (0 when the request could not be parsed far enough).
    pub id: u64,
    /// Success payload or error.
    #[serde(flatten)]
    pub result: ReplyResult,
}

/// Success or failure of a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplyResult {
    /// The request failed.
    Err {
        /// The error.
        error: RtcError,
    },
    /// The request succeeded.
    Ok {
        /// The result, when the request has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<ReplyData>,
    },
}

/// Typed success payloads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ReplyData {
    /// The join succeeded.
    Joined(JoinResult),
    /// An SDP answer (publish, subscribe).
    Answer {
        /// The SDP.
        sdp: String,
    },
    /// The member's media statistics as the server sees them (`get-stats`).
    Stats(MemberStats),
}

/// Media statistics of one member's peer connections, measured by the server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberStats {
    /// Its published streams (what the server receives).
    pub uplinks: Vec<LinkStats>,
    /// Its subscriptions (what the server sends it).
    pub downlinks: Vec<LinkStats>,
}

/// Statistics of one peer connection (audio and video together).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStats {
    /// Whose stream: the member itself for uplinks, the publisher for downlinks.
    pub user_id: Option<UserId>,
    /// Which stream.
    pub stream_type: Option<StreamType>,
    /// RTP payload bytes (received for uplinks, sent for downlinks).
    pub bytes: u64,
    /// RTP packets (received for uplinks, sent for downlinks).
    pub packets: u64,
    /// Loss fraction 0..1 (uplink: measured by the server; downlink: reported by the
    /// subscriber's receiver reports), when known.
    pub loss: Option<f32>,
    /// Interarrival jitter in RTP timestamp units of the video (uplink) or as reported by the
    /// receiver (downlink), when known.
    pub jitter: Option<u32>,
    /// Round-trip time in milliseconds, when known.
    pub rtt_ms: Option<f64>,
    /// NACKs (sent to the publisher for uplinks, received from the subscriber for downlinks).
    pub nacks: u64,
    /// PLIs (likewise).
    pub plis: u64,
}

/// What a joining member learns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResult {
    /// The room.
    pub room_id: RoomId,
    /// The role the member got.
    pub role: Role,
    /// The members it can see (anchors in live mode, everyone in rtc mode).
    pub members: Vec<MemberInfo>,
    /// Streams published in the room now.
    pub streams: Vec<StreamInfo>,
    /// Seconds between heartbeats the server expects.
    pub heartbeat_interval_s: u32,
}

/// A visible member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    /// Who.
    pub user_id: UserId,
    /// Their role.
    pub role: Role,
}

/// A published stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamInfo {
    /// Whose stream.
    pub user_id: UserId,
    /// Which stream.
    pub stream_type: StreamType,
    /// Carries audio.
    pub has_audio: bool,
    /// Carries video.
    pub has_video: bool,
    /// Audio is muted.
    #[serde(default)]
    pub audio_muted: bool,
    /// Video is muted.
    #[serde(default)]
    pub video_muted: bool,
    /// The video codec, for a stream with video published with media (absent for a
    /// signalling-only stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_codec: Option<VideoCodec>,
    /// Simulcast: the video's layers, smallest first (empty: one layer). A subscriber
    /// chooses with `videoType` / `set-remote-video-stream-type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<VideoLayer>,
}

/// Why a member left (TRTC's PEER_LEAVE_REASON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum LeaveReason {
    /// 0: left on purpose.
    Normal,
    /// 1: timed out.
    Timeout,
    /// 2: removed (kicked, banned, room dismissed).
    Kicked,
    /// 3: switched to audience.
    RoleChange,
}

impl From<LeaveReason> for u8 {
    fn from(r: LeaveReason) -> u8 {
        match r {
            LeaveReason::Normal => 0,
            LeaveReason::Timeout => 1,
            LeaveReason::Kicked => 2,
            LeaveReason::RoleChange => 3,
        }
    }
}

impl TryFrom<u8> for LeaveReason {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(LeaveReason::Normal),
            1 => Ok(LeaveReason::Timeout),
            2 => Ok(LeaveReason::Kicked),
            3 => Ok(LeaveReason::RoleChange),
            _ => Err(format!("unknown leave reason {v}")),
        }
    }
}

/// Why a member was removed (`client-banned`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BanReason {
    /// The same userId joined again elsewhere.
    Kick,
    /// An admin removed the member.
    Banned,
    /// An admin dismissed the room.
    RoomDisband,
    /// The server stopped hearing heartbeats.
    UserTimeOut,
}

impl ServerEvent {
    /// The mute event for `kind` and `muted` (TRTC's mute-audio, unmute-audio, mute-video,
    /// unmute-video).
    pub fn mute(user_id: UserId, kind: MediaKind, muted: bool) -> ServerEvent {
        match (kind, muted) {
            (MediaKind::Audio, true) => ServerEvent::MuteAudio { user_id },
            (MediaKind::Audio, false) => ServerEvent::UnmuteAudio { user_id },
            (MediaKind::Video, true) => ServerEvent::MuteVideo { user_id },
            (MediaKind::Video, false) => ServerEvent::UnmuteVideo { user_id },
        }
    }
}

/// Room events pushed to members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ServerEvent {
    /// A member (anchor, in live mode) joined.
    PeerJoin {
        /// Who.
        #[serde(rename = "userId")]
        user_id: UserId,
    },
    /// A member left.
    PeerLeave {
        /// Who.
        #[serde(rename = "userId")]
        user_id: UserId,
        /// Why.
        reason: LeaveReason,
    },
    /// A stream was published.
    StreamAdded(StreamInfo),
    /// A stream was unpublished.
    StreamRemoved {
        /// Whose.
        #[serde(rename = "userId")]
        user_id: UserId,
        /// Which.
        #[serde(rename = "streamType")]
        stream_type: StreamType,
    },
    /// A stream changed (tracks added or removed).
    StreamUpdated(StreamInfo),
    /// A member muted its audio.
    MuteAudio {
        /// Who.
        #[serde(rename = "userId")]
        user_id: UserId,
    },
    /// A member unmuted its audio.
    UnmuteAudio {
        /// Who.
        #[serde(rename = "userId")]
        user_id: UserId,
    },
    /// A member muted its video.
    MuteVideo {
        /// Who.
        #[serde(rename = "userId")]
        user_id: UserId,
    },
    /// A member unmuted its video.
    UnmuteVideo {
        /// Who.
        #[serde(rename = "userId")]
        user_id: UserId,
    },
    /// This member was removed from the room; the server closes the connection next.
    ClientBanned {
        /// Why.
        reason: BanReason,
        /// Human-readable detail.
        message: String,
    },
    /// Another member's custom message (TRTC's `custom-message` / `onRecvCustomCmdMsg`).
    CustomMessage {
        /// The sender.
        #[serde(rename = "userId")]
        user_id: UserId,
        /// The sender's command id, 1–10.
        #[serde(rename = "cmdId")]
        cmd_id: u8,
        /// The sender's message count in this room, from 1 (gaps: messages refused).
        seq: u32,
        /// The message (base64 on the wire).
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// The layer of a simulcast stream this member receives changed (at a keyframe of the
    /// new layer), on its request or because its bandwidth estimate moved.
    VideoLayerChanged {
        /// Whose stream.
        #[serde(rename = "userId")]
        user_id: UserId,
        /// Which stream.
        #[serde(rename = "streamType")]
        stream_type: StreamType,
        /// The layer's rid.
        rid: String,
        /// Big (the biggest layer) or small (any smaller one).
        #[serde(rename = "videoType")]
        video_type: VideoStreamType,
        /// Why: the subscriber asked for it, or its bandwidth.
        reason: LayerChangeReason,
    },
    /// Which layers of this member's simulcast stream anybody receives now (dynacast): the
    /// publisher may pause the others' encoders until they are wanted again.
    LayersWanted {
        /// Which stream.
        #[serde(rename = "streamType")]
        stream_type: StreamType,
        /// The rids wanted.
        rids: Vec<String>,
    },
}

/// Why a subscriber's layer changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerChangeReason {
    /// The layer it asked for (`videoType` / `set-remote-video-stream-type`).
    Request,
    /// Its bandwidth estimate (down when the layer no longer fits, up when it does again).
    Bandwidth,
}

/// Why a frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame is larger than [`MAX_MESSAGE_BYTES`].
    #[error("message is {0} bytes, larger than the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    /// The frame speaks another protocol version.
    #[error("protocol version {0} is not supported (this server speaks {PROTOCOL_VERSION})")]
    Version(u32),
    /// The frame is not a valid message (bad JSON, unknown type, bad field).
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl From<WireError> for RtcError {
    fn from(e: WireError) -> RtcError {
        let extra = match e {
            WireError::TooLarge(_) => Some(extra::PARAM_MAX),
            WireError::Version(_) | WireError::Malformed(_) => Some(extra::PARAM_TYPE),
        };
        RtcError {
            code: ErrorCode::InvalidParameter,
            extra_code: extra,
            message: e.to_string(),
        }
    }
}

fn check_size(frame: &[u8]) -> Result<(), WireError> {
    if frame.len() > MAX_MESSAGE_BYTES {
        Err(WireError::TooLarge(frame.len()))
    } else {
        Ok(())
    }
}

/// Decode a client frame, bounded in size and checked for version.
pub fn decode_client(frame: &[u8]) -> Result<ClientEnvelope, WireError> {
    check_size(frame)?;
    // Look at the version first so an old or new client gets a version error, not a parse error.
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let version: Version = serde_json::from_slice(frame)
        .map_err(|e| WireError::Malformed(format!("no version field 'v': {e}")))?;
    if version.v != PROTOCOL_VERSION {
        return Err(WireError::Version(version.v));
    }
    serde_json::from_slice(frame).map_err(|e| WireError::Malformed(e.to_string()))
}

/// The request id of a client frame that [`decode_client`] refused, so the error reply can
/// carry it: the frame's top-level `id` when the frame is a JSON object with an integer `id`
/// (e.g. a join with an unknown `mode`), else 0 (the id of replies to unparsable frames).
pub fn request_id(frame: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Id {
        id: u64,
    }
    if frame.len() > MAX_MESSAGE_BYTES {
        return 0;
    }
    serde_json::from_slice::<Id>(frame).map_or(0, |i| i.id)
}

/// Decode a server frame, bounded in size.
pub fn decode_server(frame: &[u8]) -> Result<ServerMessage, WireError> {
    check_size(frame)?;
    serde_json::from_slice(frame).map_err(|e| WireError::Malformed(e.to_string()))
}

/// One server frame carrying `events` in order, each already encoded on its own with
/// [`encode`] (`{"event":"peer-join",...}`): an `event` frame for one, an `events` frame for
/// several, `None` for none. The frame is spliced from the encoded events, so a room encodes
/// each event once however many members receive it; the result decodes with
/// [`decode_server`] exactly as the serde form of [`ServerMessage::Event`] /
/// [`ServerMessage::Events`] does.
pub fn events_frame<S: AsRef<str>>(events: &[S]) -> Option<String> {
    match events {
        [] => None,
        [one] => {
            // `{"event":...}` → `{"type":"event","event":...}`. An encoded ServerEvent always
            // starts with `{` followed by its tag field.
            let body = one.as_ref().strip_prefix('{').unwrap_or(one.as_ref());
            let mut s = String::with_capacity(body.len() + 16);
            s.push_str(r#"{"type":"event","#);
            s.push_str(body);
            Some(s)
        }
        many => {
            let len: usize = many.iter().map(|e| e.as_ref().len() + 1).sum();
            let mut s = String::with_capacity(len + 32);
            s.push_str(r#"{"type":"events","events":["#);
            for (i, e) in many.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(e.as_ref());
            }
            s.push_str("]}");
            Some(s)
        }
    }
}

/// The reply frame to a successful join (request `id`) whose member list comes pre-encoded:
/// `members_json` is the members' [`MemberInfo`] objects as [`encode`] writes them, joined by
/// commas (no brackets); `result.members` must be empty and is replaced by it. A room keeps
/// that list encoded as members come and go, so a join into a big room copies it instead of
/// encoding every member again. The frame decodes exactly as the serde form of the same reply.
pub fn joined_reply_frame(id: u64, result: JoinResult, members_json: &str) -> String {
    debug_assert!(result.members.is_empty());
    let mut text = encode(&ServerMessage::Reply(Reply {
        v: PROTOCOL_VERSION,
        id,
        result: ReplyResult::Ok {
            data: Some(ReplyData::Joined(result)),
        },
    }));
    // Inside an encoded JSON string every `"` is escaped, so this quoted key can only be the
    // `members` field itself. Without it (impossible with the derived encoding) the reply
    // goes out without the list rather than not at all.
    const SLOT: &str = r#""members":["#;
    if let Some(at) = text.find(SLOT) {
        text.insert_str(at + SLOT.len(), members_json);
    }
    text
}

/// Encode any message as a JSON text frame.
pub fn encode<T: Serialize>(msg: &T) -> String {
    // Our message types hold only strings, numbers, bools and maps with string keys, so
    // serialisation cannot fail.
    serde_json::to_string(msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn join() -> ClientEnvelope {
        ClientEnvelope::new(
            1,
            ClientMessage::Join(JoinRequest {
                sdk_app_id: 1_400_000_000,
                user_id: UserId::new("denny").unwrap(),
                user_sig: "sig".into(),
                room_id: "123".into(),
                use_string_room_id: false,
                mode: Mode::Live,
                role: None,
                private_map_key: None,
                auto_subscribe: true,
            }),
        )
    }

    #[test]
    fn join_round_trips_and_reads_as_documented() {
        let frame = encode(&join());
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["msg"]["type"], "join");
        assert_eq!(v["msg"]["sdkAppId"], 1_400_000_000);
        assert_eq!(v["msg"]["roomId"], "123");
        assert_eq!(decode_client(frame.as_bytes()).unwrap(), join());
        let ClientMessage::Join(j) = join().msg else {
            unreachable!()
        };
        assert_eq!(j.room().unwrap().as_numeric(), Some(123));
        assert_eq!(j.effective_role(), Role::Audience);
    }

    #[test]
    fn ice_restart_requests_name_their_link_as_documented() {
        let up = json!({"v":1,"id":4,"msg":{"type":"ice-restart","link":"uplink",
            "streamType":"main","sdp":"v=0"}});
        let env = decode_client(up.to_string().as_bytes()).unwrap();
        assert_eq!(
            env.msg,
            ClientMessage::IceRestart(IceRestartRequest {
                link: LinkDirection::Uplink,
                user_id: None,
                stream_type: StreamType::Main,
                sdp: "v=0".into(),
            })
        );
        let down = ClientMessage::IceRestart(IceRestartRequest {
            link: LinkDirection::Downlink,
            user_id: Some(UserId::new("bob").unwrap()),
            stream_type: StreamType::Auxiliary,
            sdp: "v=0".into(),
        });
        assert_eq!(
            serde_json::to_value(&down).unwrap(),
            json!({"type":"ice-restart","link":"downlink","userId":"bob",
                "streamType":"auxiliary","sdp":"v=0"})
        );
        let sideways = json!({"v":1,"id":4,"msg":{"type":"ice-restart","link":"sideways",
            "streamType":"main","sdp":"v=0"}});
        assert!(decode_client(sideways.to_string().as_bytes()).is_err());
    }

    #[test]
    fn custom_messages_carry_base64_and_are_checked() {
        let frame = json!({"v":1,"id":9,"msg":{"type":"custom-message","cmdId":3,"data":"aGk="}});
        let env = decode_client(frame.to_string().as_bytes()).unwrap();
        assert_eq!(
            env.msg,
            ClientMessage::CustomMessage {
                cmd_id: 3,
                data: b"hi".to_vec()
            }
        );
        let back: serde_json::Value = serde_json::from_str(&encode(&env)).unwrap();
        assert_eq!(back["msg"]["data"], "aGk=");
        let not_b64 = json!({"v":1,"id":9,"msg":{"type":"custom-message","cmdId":3,"data":"!!"}});
        assert!(decode_client(not_b64.to_string().as_bytes()).is_err());
        let ev = ServerEvent::CustomMessage {
            user_id: UserId::new("ann").unwrap(),
            cmd_id: 1,
            seq: 7,
            data: vec![0, 255],
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v,
            json!({"event":"custom-message","userId":"ann","cmdId":1,"seq":7,"data":"AP8="})
        );
        assert_eq!(serde_json::from_value::<ServerEvent>(v).unwrap(), ev);
        use custom_message::check;
        assert!(check(1, b"x").is_ok() && check(10, &[0; 1024]).is_ok());
        let code = |r: Result<(), RtcError>| r.unwrap_err().extra_code;
        assert_eq!(code(check(0, b"x")), Some(extra::PARAM_RANGE));
        assert_eq!(code(check(11, b"x")), Some(extra::PARAM_RANGE));
        assert_eq!(code(check(1, b"")), Some(extra::EMPTY_BUFFER));
        assert_eq!(code(check(1, &[0; 1025])), Some(extra::BUFFER_OVERSIZE));
    }

    #[test]
    fn defaults_apply() {
        let frame = json!({"v":1,"id":3,"msg":{"type":"join","sdkAppId":1,"userId":"u",
            "userSig":"s","roomId":"r","useStringRoomId":true,"mode":"rtc"}});
        let env = decode_client(frame.to_string().as_bytes()).unwrap();
        let ClientMessage::Join(j) = env.msg else {
            panic!("not a join")
        };
        assert!(j.auto_subscribe);
        assert_eq!(j.room().unwrap().as_str(), Some("r"));
    }

    #[test]
    fn refused_requests_keep_their_id() {
        let bad_mode = br#"{"v":1,"id":42,"msg":{"type":"join","sdkAppId":1,"userId":"u",
            "userSig":"s","roomId":"1","mode":"party"}}"#;
        assert!(decode_client(bad_mode).is_err());
        assert_eq!(request_id(bad_mode), 42);
        let bad_role = br#"{"v":1,"id":7,"msg":{"type":"switch-role","role":"king"}}"#;
        assert!(decode_client(bad_role).is_err());
        assert_eq!(request_id(bad_role), 7);
        assert_eq!(request_id(br#"{"v":1,"msg":{"type":"leave"}}"#), 0);
        assert_eq!(request_id(br#"{"id":"7"}"#), 0);
        assert_eq!(request_id(b"not json"), 0);
        assert_eq!(request_id(b"[1,2]"), 0);
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            decode_client(&big),
            Err(WireError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
        assert_eq!(
            decode_client(br#"{"v":2,"id":1,"msg":{"type":"leave"}}"#),
            Err(WireError::Version(2))
        );
        for bad in [
            &b"not json"[..],
            br#"{"id":1}"#,
            br#"{"v":1,"id":1,"msg":{"type":"dance"}}"#,
            br#"{"v":1,"id":1,"msg":{"type":"join","userId":"a b"}}"#,
            br#"{"v":1,"id":-1,"msg":{"type":"leave"}}"#,
        ] {
            let e = decode_client(bad).unwrap_err();
            assert!(matches!(e, WireError::Malformed(_)), "{e:?}");
            let rtc: RtcError = e.into();
            assert_eq!(rtc.code, ErrorCode::InvalidParameter);
        }
    }

    #[test]
    fn server_messages_round_trip() {
        let msgs = vec![
            ServerMessage::Reply(Reply {
                v: 1,
                id: 1,
                result: ReplyResult::Ok {
                    data: Some(ReplyData::Joined(JoinResult {
                        room_id: RoomId::string("123").unwrap(),
                        role: Role::Anchor,
                        members: vec![MemberInfo {
                            user_id: UserId::new("a").unwrap(),
                            role: Role::Anchor,
                        }],
                        streams: vec![],
                        heartbeat_interval_s: 2,
                    })),
                },
            }),
            ServerMessage::Reply(Reply {
                v: 1,
                id: 2,
                result: ReplyResult::Ok { data: None },
            }),
            ServerMessage::Reply(Reply {
                v: 1,
                id: 3,
                result: ReplyResult::Err {
                    error: RtcError::with_extra(ErrorCode::JoinRoomFailed, -102052, "room full"),
                },
            }),
            ServerMessage::Event(ServerEvent::PeerLeave {
                user_id: UserId::new("a").unwrap(),
                reason: LeaveReason::Timeout,
            }),
            ServerMessage::Event(ServerEvent::ClientBanned {
                reason: BanReason::RoomDisband,
                message: "the room has been disbanded by the admin".into(),
            }),
        ];
        for m in msgs {
            let text = encode(&m);
            assert_eq!(decode_server(text.as_bytes()).unwrap(), m, "{text}");
        }
        let text = encode(&ServerMessage::Event(ServerEvent::ClientBanned {
            reason: BanReason::RoomDisband,
            message: String::new(),
        }));
        assert!(text.contains("\"room_disband\""), "{text}");
        assert!(text.contains("\"client-banned\""), "{text}");
    }

    #[test]
    fn spliced_join_reply_matches_serde() {
        let members = vec![
            MemberInfo {
                user_id: UserId::new("alice").unwrap(),
                role: Role::Anchor,
            },
            MemberInfo {
                user_id: UserId::new("bob").unwrap(),
                role: Role::Audience,
            },
        ];
        let full = JoinResult {
            // A room id holding the slot's text must not confuse the splice.
            room_id: RoomId::string("members:[]").unwrap(),
            role: Role::Anchor,
            members: members.clone(),
            streams: vec![],
            heartbeat_interval_s: 2,
        };
        let want = encode(&ServerMessage::Reply(Reply {
            v: PROTOCOL_VERSION,
            id: 9,
            result: ReplyResult::Ok {
                data: Some(ReplyData::Joined(full.clone())),
            },
        }));
        let empty = JoinResult {
            members: vec![],
            ..full.clone()
        };
        for n in 0..=members.len() {
            let json: Vec<String> = members[..n].iter().map(encode).collect();
            let got = joined_reply_frame(9, empty.clone(), &json.join(","));
            let decoded = decode_server(got.as_bytes()).unwrap();
            let expect = JoinResult {
                members: members[..n].to_vec(),
                ..full.clone()
            };
            assert_eq!(
                decoded,
                ServerMessage::Reply(Reply {
                    v: PROTOCOL_VERSION,
                    id: 9,
                    result: ReplyResult::Ok {
                        data: Some(ReplyData::Joined(expect)),
                    },
                }),
                "{got}"
            );
            if n == members.len() {
                assert_eq!(got, want, "byte for byte the serde encoding");
            }
        }
    }

    #[test]
    fn spliced_event_frames_decode_like_serde() {
        let events = vec![
            ServerEvent::PeerJoin {
                user_id: UserId::new("a_b").unwrap(),
            },
            ServerEvent::PeerLeave {
                user_id: UserId::new("c").unwrap(),
                reason: LeaveReason::Kicked,
            },
            ServerEvent::ClientBanned {
                reason: BanReason::Kick,
                message: "bye {\"x\"}".into(),
            },
        ];
        let encoded: Vec<String> = events.iter().map(encode).collect();
        assert_eq!(events_frame::<String>(&[]), None);
        let one = events_frame(&encoded[..1]).unwrap();
        assert_eq!(
            decode_server(one.as_bytes()).unwrap(),
            ServerMessage::Event(events[0].clone())
        );
        let all = events_frame(&encoded).unwrap();
        let want = ServerMessage::Events {
            events: events.clone(),
        };
        assert_eq!(decode_server(all.as_bytes()).unwrap(), want);
        // The serde form of the batch decodes the same way.
        assert_eq!(decode_server(encode(&want).as_bytes()).unwrap(), want);
        let two = events_frame(&encoded[1..]).unwrap();
        assert_eq!(
            decode_server(two.as_bytes()).unwrap(),
            ServerMessage::Events {
                events: events[1..].to_vec()
            }
        );
    }
}
