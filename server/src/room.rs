//! The room rules, as a plain state machine: no sockets, no clock (every call takes `now`).
//!
//! A [`Room`] holds the members of one (sdkAppId, roomId), applies TRTC's rules (member and
//! publisher limits, live-mode roles, duplicate-userId kicks, heartbeat eviction, dismissal)
//! and answers every input with a list of [`Effect`]s for its driver (the room's shard, `shard.rs`) to carry
//! out: events to send, sessions to remove, webhooks to fire.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::{
    BanReason, JoinResult, LayerChangeReason, LeaveReason, MediaKind, MemberInfo, ServerEvent,
    StreamInfo, StreamType, VideoCodec, VideoLayer, VideoStreamType, custom_message, encode,
};
use rtcroom_protocol::usersig::{Privilege, Privileges};
use rtcroom_protocol::{ErrorCode, Mode, Role, RoomId, RtcError, RtcResult, UserId};

use crate::link::LinkKind;
use crate::media::PeerId;

/// One connection to the server.
pub type SessionId = u64;

/// TRTC: an rtc-mode room holds at most 300 members.
pub const DEFAULT_MAX_RTC_MEMBERS: usize = 300;
/// TRTC: a live room holds up to 100,000 members.
pub const DEFAULT_MAX_LIVE_MEMBERS: usize = 100_000;
/// TRTC: at most 50 members publish at once.
pub const DEFAULT_MAX_PUBLISHERS: usize = 50;
/// TRTC: a member that drops abnormally is removed after 90 s.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(90);
/// TRTC: a live room whose last member to leave was audience lingers 10 minutes.
pub const DEFAULT_LIVE_AUDIENCE_LINGER: Duration = Duration::from_secs(600);
/// Events to one member are coalesced into at most one frame per 10 ms (a quiet room's first
/// event goes out at once): a burst of 200 joins then costs each member a frame or two, not
/// 200, and no one notices 10 ms on a peer-join.
pub const DEFAULT_EVENT_BATCH: Duration = Duration::from_millis(10);
/// Heartbeat interval clients are told to use.
pub const HEARTBEAT_INTERVAL_S: u32 = 2;

/// A room's identity: numeric 123 and string "123" are different rooms.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    /// The application.
    pub sdk_app_id: u32,
    /// The room.
    pub room_id: RoomId,
}

impl std::fmt::Display for RoomKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.sdk_app_id, self.room_id)
    }
}

/// The limits and timers a room applies.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomLimits {
    /// Members in an rtc-mode room.
    pub max_rtc_members: usize,
    /// Members in a live-mode room.
    pub max_live_members: usize,
    /// Members publishing at once.
    pub max_publishers: usize,
    /// Silence after which a member is evicted.
    pub heartbeat_timeout: Duration,
    /// How long an empty live room whose last leaver was audience waits before dismissal.
    pub live_audience_linger: Duration,
    /// Events to one member are coalesced into at most one frame per this window (the
    /// first after a quiet spell goes out at once).
    pub event_batch: Duration,
    /// How slow links are treated.
    pub link: crate::link::LinkPolicy,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            max_rtc_members: DEFAULT_MAX_RTC_MEMBERS,
            max_live_members: DEFAULT_MAX_LIVE_MEMBERS,
            max_publishers: DEFAULT_MAX_PUBLISHERS,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            live_audience_linger: DEFAULT_LIVE_AUDIENCE_LINGER,
            event_batch: DEFAULT_EVENT_BATCH,
            link: crate::link::LinkPolicy::default(),
        }
    }
}

/// TRTC webhook event types (EventGroupId 1 room: 101–105; 2 media: 201–206).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookEvent {
    /// 101
    CreateRoom,
    /// 102
    DismissRoom,
    /// 103
    EnterRoom,
    /// 104
    ExitRoom,
    /// 105
    ChangeRole,
    /// 201
    StartVideo,
    /// 202
    StopVideo,
    /// 203
    StartAudio,
    /// 204
    StopAudio,
    /// 205
    StartSubStream,
    /// 206
    StopSubStream,
}

impl HookEvent {
    /// TRTC's EventType number.
    pub const fn event_type(self) -> u32 {
        match self {
            HookEvent::CreateRoom => 101,
            HookEvent::DismissRoom => 102,
            HookEvent::EnterRoom => 103,
            HookEvent::ExitRoom => 104,
            HookEvent::ChangeRole => 105,
            HookEvent::StartVideo => 201,
            HookEvent::StopVideo => 202,
            HookEvent::StartAudio => 203,
            HookEvent::StopAudio => 204,
            HookEvent::StartSubStream => 205,
            HookEvent::StopSubStream => 206,
        }
    }

    /// TRTC's EventGroupId (1 room, 2 media).
    pub const fn group(self) -> u32 {
        if self.event_type() < 200 { 1 } else { 2 }
    }
}

/// A webhook the driver should deliver.
#[derive(Clone, Debug, PartialEq)]
pub struct Hook {
    /// What happened.
    pub event: HookEvent,
    /// To whom (absent for room events).
    pub user_id: Option<UserId>,
    /// Their role, for enter/exit/role events.
    pub role: Option<Role>,
    /// Reason code: enter 1 normal; exit 1 normal, 2 timeout, 3 removed, 4 room dismissed;
    /// role change 1.
    pub reason: u32,
}

/// What the driver must do after an input.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send `event` to each of these sessions.
    Event {
        /// Recipients.
        to: Vec<SessionId>,
        /// The event.
        event: ServerEvent,
    },
    /// Tell the session it was removed (`client-banned`), then close it.
    Remove {
        /// The session.
        session: SessionId,
        /// Why.
        reason: BanReason,
        /// Detail for the user.
        message: String,
    },
    /// Deliver a webhook.
    Hook(Hook),
    /// A published stream ended (unpublish, role switch, the member left): stop its media.
    StreamEnded {
        /// Whose.
        user_id: UserId,
        /// Which.
        stream_type: StreamType,
        /// Its media peer, when it had one.
        peer: Option<PeerId>,
    },
    /// A member's session is gone (left, removed, or replaced by a resume): close its
    /// subscriptions' media peers.
    MemberGone {
        /// Who.
        user_id: UserId,
        /// Its session.
        session: SessionId,
        /// The media peers of its subscriptions.
        subscriptions: Vec<PeerId>,
    },
    /// Close this subscription's media peer (replaced by a new subscription to the same
    /// stream, or unsubscribed).
    Unsubscribe {
        /// The peer.
        peer: PeerId,
    },
    /// Tell the edge node behind hidden member `edge` what its audience's events cannot:
    /// remove a member (a duplicate userId, the admin's RemoveUser), or which stream a mute
    /// is of.
    Edge {
        /// The edge's hidden member.
        edge: SessionId,
        /// What the edge is told.
        order: EdgeOrder,
    },
}

/// A mute or unmute of a mirrored anchor's stream, for an edge node (TRTC's mute events name
/// no stream).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeMute {
    /// Whose.
    pub user_id: UserId,
    /// Which stream.
    pub stream_type: StreamType,
    /// Audio or video.
    pub kind: MediaKind,
    /// Muted (else unmuted).
    pub muted: bool,
}

/// An order for an edge node to remove a member of its audience (`cascade.rs` carries it).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeKick {
    /// Who.
    pub user_id: UserId,
    /// Why (`client-banned`'s reason).
    pub reason: BanReason,
    /// Detail for the user.
    pub message: String,
}

/// What the room's node tells an edge node, on the link of the edge's hidden member, beside
/// the events an audience member gets (`cascade.rs`). Encoded as `{"edgeOrder":{...}}`, which
/// no [`ServerEvent`] is.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EdgeOrder {
    /// Remove a member of the edge's audience.
    Kick(EdgeKick),
    /// An anchor muted or unmuted a stream (instead of the mute event the audience gets).
    Mute(EdgeMute),
    /// The room is full (counting every edge's audience), or no longer: the edge refuses
    /// new audience while it is.
    Full(bool),
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct EdgeOrderFrame {
    edge_order: EdgeOrder,
}

impl EdgeOrder {
    /// The order as text on a member's link.
    pub fn encode(self) -> String {
        // A struct of strings and enums: serialising it cannot fail.
        serde_json::to_string(&EdgeOrderFrame { edge_order: self }).unwrap_or_default()
    }

    /// The order in `text`, if it is one.
    pub fn decode(text: &str) -> Option<EdgeOrder> {
        serde_json::from_str::<EdgeOrderFrame>(text)
            .ok()
            .map(|f| f.edge_order)
    }
}

/// What a second join with a member's userId tells the first (TRTC's `client-banned`, `kick`).
const DUPLICATE_USER: &str = "duplicated userId joining the room";
/// What an admin's RemoveUser tells the member.
const BANNED_BY_ADMIN: &str = "you got banned by the admin";

#[derive(Clone, Debug)]
struct Stream {
    has_audio: bool,
    has_video: bool,
    audio_muted: bool,
    video_muted: bool,
    video_codec: Option<VideoCodec>,
    /// The media peer carrying it (none for a signalling-only publish).
    peer: Option<PeerId>,
    /// Simulcast: its video layers, smallest first.
    layers: Vec<VideoLayer>,
}

#[derive(Clone, Debug)]
struct Member {
    session: SessionId,
    role: Role,
    /// When it joined (of two members with one userId, the newer stays).
    joined_at: Instant,
    last_seen: Instant,
    /// Whether the socket is still open (a dropped socket waits out the heartbeat timeout).
    connected: bool,
    privileges: Option<Privileges>,
    streams: BTreeMap<StreamTypeKey, Stream>,
    kind: LinkKind,
    /// Its subscriptions: (publisher, stream) → media peer.
    subscriptions: BTreeMap<(UserId, StreamTypeKey), PeerId>,
    /// Its custom messages' rate budget.
    messages: MessageBudget,
    /// Custom messages it has sent (the last one's `seq`).
    message_seq: u32,
}

pub use rtcroom_protocol::signal::custom_message::MessageBudget;

/// A member's media link: (whose stream, which stream, peer).
pub type MediaLink = (UserId, StreamType, PeerId);

/// A simulcast event of a media peer ([`Room::layer_event`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerEvent {
    /// A subscriber's layer changed.
    Changed {
        /// The layer, 0 the smallest.
        layer: u8,
        /// How many the stream has.
        layers: u8,
        /// Its bandwidth moved it.
        bandwidth: bool,
    },
    /// The layers of a publisher's stream anybody receives (bit `l` for layer `l`).
    Wanted(u32),
}

/// What a media peer carries, for the room's index of peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerUse {
    /// A published stream.
    Uplink {
        /// The publisher.
        user_id: UserId,
        /// Which stream.
        stream_type: StreamType,
    },
    /// A subscription.
    Downlink {
        /// The subscriber.
        subscriber: UserId,
        /// Whose stream.
        publisher: UserId,
        /// Which stream.
        stream_type: StreamType,
    },
}

/// `StreamType` ordered for deterministic iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum StreamTypeKey {
    Main,
    Auxiliary,
}

impl From<StreamType> for StreamTypeKey {
    fn from(t: StreamType) -> Self {
        match t {
            StreamType::Main => StreamTypeKey::Main,
            StreamType::Auxiliary => StreamTypeKey::Auxiliary,
        }
    }
}

impl From<StreamTypeKey> for StreamType {
    fn from(t: StreamTypeKey) -> Self {
        match t {
            StreamTypeKey::Main => StreamType::Main,
            StreamTypeKey::Auxiliary => StreamType::Auxiliary,
        }
    }
}

/// A join, as the room sees it (credentials already verified by the session).
#[derive(Clone, Debug)]
pub struct JoinInput {
    /// The connection.
    pub session: SessionId,
    /// Who.
    pub user_id: UserId,
    /// The client's mode.
    pub mode: Mode,
    /// The requested role (None: audience in live mode).
    pub role: Option<Role>,
    /// PrivateMapKey privileges, when one was presented.
    pub privileges: Option<Privileges>,
    /// What carries the member (signalling members heartbeat; WHIP/WHEP ones live as long
    /// as their media peer).
    pub kind: LinkKind,
}

/// Everything about a room, for the admin API.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RoomInfo {
    /// The room.
    pub room_id: RoomId,
    /// rtc / live.
    pub mode: Mode,
    /// Members.
    pub members: Vec<MemberDetail>,
}

/// A member, for the admin API.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MemberDetail {
    /// Who.
    pub user_id: UserId,
    /// Role.
    pub role: Role,
    /// Whether the socket is open.
    pub connected: bool,
    /// Published streams.
    pub streams: Vec<StreamInfo>,
}

/// One room's state.
#[derive(Debug)]
pub struct Room {
    key: RoomKey,
    mode: Mode,
    limits: RoomLimits,
    members: BTreeMap<UserId, Member>,
    sessions: HashMap<SessionId, UserId>,
    /// When an empty live room will be dismissed (last leaver was audience).
    dismiss_at: Option<Instant>,
    dismissed: bool,
    /// The visible members, encoded for the join reply.
    visible: VisibleJson,
    /// How many streams are published, so that a join into a room of thousands where nobody
    /// publishes does not walk every member to list none.
    streams_total: usize,
    /// Every media peer the room's members hold, and what it carries. The room is the one
    /// record of who publishes and subscribes what; this index finds a peer's owner in O(1).
    peers: HashMap<PeerId, PeerUse>,
    /// A cascaded live room's audience on edge nodes: user → the session of the hidden member
    /// standing for the edge that serves it, and when it joined there (as the edges report
    /// it). Listed by the admin API, removed by it, and kicked by a join of the same userId
    /// anywhere.
    edge_audience: BTreeMap<UserId, (SessionId, Instant)>,
    /// Members standing for other nodes ([`LinkKind::Edge`]).
    edge_members: usize,
    /// What the edges were last told of the room being full (none: tell them again).
    full_told: Option<bool>,
    /// On an edge: the room's node says the room is full.
    origin_full: bool,
}

/// The visible members as a join reply lists them (encoded [`MemberInfo`]s joined by commas),
/// kept incrementally: a join appends one entry; a leave or role change marks the text stale
/// and the next join rebuilds it. A burst of joins into a big room thus encodes each member
/// once rather than once per later joiner.
#[derive(Debug, Default)]
struct VisibleJson {
    text: String,
    stale: bool,
}

impl VisibleJson {
    fn push(&mut self, user_id: &UserId, role: Role) {
        if !self.text.is_empty() {
            self.text.push(',');
        }
        self.text.push_str(&encode(&MemberInfo {
            user_id: user_id.clone(),
            role,
        }));
    }
}

/// A successful join: what the reply carries.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The reply, with an empty member list: the members are in `members_json`.
    pub result: JoinResult,
    /// The other visible members, pre-encoded for
    /// [`joined_reply_frame`](rtcroom_protocol::signal::joined_reply_frame).
    pub members_json: String,
}

impl Joined {
    /// The result with its member list decoded (for tests and tools; the server sends
    /// `members_json` as it is).
    pub fn decoded(&self) -> JoinResult {
        let members = serde_json::from_str(&format!("[{}]", self.members_json)).unwrap_or_default();
        JoinResult {
            members,
            ..self.result.clone()
        }
    }
}

impl Room {
    /// A new, empty room. Rooms are created by their first join, so call [`Room::join`] next;
    /// [`Room::created`] gives the creation webhook.
    pub fn new(key: RoomKey, mode: Mode, limits: RoomLimits) -> Room {
        Room {
            key,
            mode,
            limits,
            members: BTreeMap::new(),
            sessions: HashMap::new(),
            dismiss_at: None,
            dismissed: false,
            visible: VisibleJson::default(),
            streams_total: 0,
            peers: HashMap::new(),
            edge_audience: BTreeMap::new(),
            edge_members: 0,
            full_told: None,
            origin_full: false,
        }
    }

    /// The webhook for the room's creation.
    pub fn created(&self) -> Effect {
        Effect::Hook(Hook {
            event: HookEvent::CreateRoom,
            user_id: None,
            role: None,
            reason: 0,
        })
    }

    /// The room's key.
    pub fn key(&self) -> &RoomKey {
        &self.key
    }

    /// The room's mode (set by its first member).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Number of members (connected or waiting out their timeout).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the room has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether the room is over: the driver should drop it.
    pub fn is_dismissed(&self) -> bool {
        self.dismissed
    }

    /// The user behind a session, if it is a member.
    pub fn user_of(&self, session: SessionId) -> Option<&UserId> {
        self.sessions.get(&session)
    }

    /// Number of members publishing at least one stream.
    pub fn publisher_count(&self) -> usize {
        self.members
            .values()
            .filter(|m| !m.streams.is_empty())
            .count()
    }

    fn visible(&self, role: Role) -> bool {
        self.mode == Mode::Rtc || role == Role::Anchor
    }

    /// Sessions of all members except `except`, connected ones only.
    fn others(&self, except: Option<SessionId>) -> Vec<SessionId> {
        self.members
            .values()
            .filter(|m| m.connected && Some(m.session) != except)
            .map(|m| m.session)
            .collect()
    }

    fn stream_info(user_id: &UserId, t: StreamTypeKey, s: &Stream) -> StreamInfo {
        StreamInfo {
            user_id: user_id.clone(),
            stream_type: t.into(),
            has_audio: s.has_audio,
            has_video: s.has_video,
            audio_muted: s.audio_muted,
            video_muted: s.video_muted,
            video_codec: s.video_codec.filter(|_| s.has_video),
            layers: if s.has_video {
                s.layers.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// All published streams.
    pub fn streams(&self) -> Vec<StreamInfo> {
        debug_assert_eq!(
            self.streams_total,
            self.members
                .values()
                .map(|m| m.streams.len())
                .sum::<usize>()
        );
        if self.streams_total == 0 {
            return Vec::new();
        }
        self.members
            .iter()
            .flat_map(|(u, m)| {
                m.streams
                    .iter()
                    .map(move |(t, s)| Self::stream_info(u, *t, s))
            })
            .collect()
    }

    /// A member enters. On success, the reply for the joiner and the effects for everyone else.
    pub fn join(&mut self, input: JoinInput, now: Instant) -> RtcResult<(Joined, Vec<Effect>)> {
        if self.dismissed {
            return Err(RtcError::with_extra(
                ErrorCode::JoinRoomFailed,
                extra::ROOM_NOT_EXIST,
                format!("room {} has been dismissed", self.key.room_id),
            ));
        }
        if input.mode != self.mode {
            return Err(RtcError::with_extra(
                ErrorCode::JoinRoomFailed,
                extra::BAD_SCENE_OR_ROLE,
                format!(
                    "room {} is a {} room; joining it in {} mode is not allowed",
                    self.key.room_id, self.mode, input.mode
                ),
            ));
        }
        if let Some(p) = input.privileges {
            p.require(Privilege::EnterRoom).map_err(|_| {
                RtcError::with_extra(
                    ErrorCode::JoinRoomFailed,
                    extra::NO_PERMISSION_ENTER_ROOM,
                    "privateMapKey does not grant entering the room (bit 2)",
                )
            })?;
        }
        let role = Role::effective(self.mode, input.role);
        // A member whose socket dropped comes back (a client's silent re-join after a
        // network blip): as in TRTC, the others notice nothing.
        if self
            .members
            .get(&input.user_id)
            .is_some_and(|m| !m.connected && m.role == role)
        {
            return Ok(self.resume(input, now));
        }
        let mut effects = Vec::new();
        // A second join with the same userId replaces the first: the older session is kicked,
        // here or on the edge node serving it.
        let replacing = self.members.get(&input.user_id).map(|m| m.kind);
        if let Some(kind) = replacing {
            let fx = self.remove_member(
                &input.user_id,
                Some((BanReason::Kick, DUPLICATE_USER.to_owned())),
                LeaveReason::Kicked,
                3,
            );
            // A mirrored anchor replaced by a member of this node (the room's node kicks the
            // anchor itself, and sends its webhooks): no webhooks of the mirror's.
            let mirror = kind == LinkKind::Edge;
            effects.extend(
                fx.into_iter()
                    .filter(|e| !(mirror && matches!(e, Effect::Hook(_)))),
            );
        }
        if let Some((edge, _)) = self.edge_audience.remove(&input.user_id) {
            effects.push(Self::edge_kick(edge, &input.user_id, BanReason::Kick));
        }
        // The limit counts the members of every node (the edges' audience), not the links
        // standing for other nodes, which are never refused by it.
        let limit = self.member_limit();
        // (A join replacing a member here takes its place even when the room's node says full.)
        let full = self.counted_len() >= limit || (self.origin_full && replacing.is_none());
        if full && input.kind != LinkKind::Edge {
            return Err(RtcError::with_extra(
                ErrorCode::JoinRoomFailed,
                extra::ROOM_FULL,
                format!(
                    "room {} is full ({limit} members in {} mode)",
                    self.key.room_id, self.mode
                ),
            ));
        }
        self.dismiss_at = None;
        if self.visible.stale {
            let mut fresh = VisibleJson::default();
            for (u, m) in &self.members {
                if self.visible(m.role) {
                    fresh.push(u, m.role);
                }
            }
            self.visible = fresh;
        }
        let members_json = self.visible.text.clone();
        let streams = self.streams();
        if self.visible(role) {
            effects.push(Effect::Event {
                to: self.others(None),
                event: ServerEvent::PeerJoin {
                    user_id: input.user_id.clone(),
                },
            });
        }
        effects.push(Effect::Hook(Hook {
            event: HookEvent::EnterRoom,
            user_id: Some(input.user_id.clone()),
            role: Some(role),
            reason: 1,
        }));
        self.sessions.insert(input.session, input.user_id.clone());
        if self.visible(role) {
            self.visible.push(&input.user_id, role);
        }
        if input.kind == LinkKind::Edge {
            self.edge_members += 1;
            // A new edge learns whether the room is full.
            self.full_told = None;
        }
        self.members.insert(
            input.user_id,
            Member {
                session: input.session,
                role,
                joined_at: now,
                last_seen: now,
                connected: true,
                privileges: input.privileges,
                streams: BTreeMap::new(),
                kind: input.kind,
                subscriptions: BTreeMap::new(),
                messages: MessageBudget::default(),
                message_seq: 0,
            },
        );
        self.tell_edges_if_full(&mut effects);
        Ok((
            Joined {
                result: self.join_result(role, streams),
                members_json,
            },
            effects,
        ))
    }

    /// A join's reply, its member list left to the pre-encoded `members_json`.
    fn join_result(&self, role: Role, streams: Vec<StreamInfo>) -> JoinResult {
        JoinResult {
            room_id: self.key.room_id.clone(),
            role,
            members: Vec::new(),
            streams,
            heartbeat_interval_s: HEARTBEAT_INTERVAL_S,
        }
    }

    /// A disconnected member joins again on a new session (its role unchanged): it keeps its
    /// membership and its published streams (a re-publish updates them), and nobody hears of
    /// it: no peer-leave / peer-join, no webhook. Its old session's subscriptions close (the
    /// client subscribes again). The reply lists the others and their streams, not its own.
    fn resume(&mut self, input: JoinInput, now: Instant) -> (Joined, Vec<Effect>) {
        let user = input.user_id;
        let mut old = None;
        let mut subscriptions = Vec::new();
        if let Some(m) = self.members.get_mut(&user) {
            match (m.kind == LinkKind::Edge, input.kind == LinkKind::Edge) {
                (false, true) => self.edge_members += 1,
                (true, false) => self.edge_members -= 1,
                _ => {}
            }
            old = Some(std::mem::replace(&mut m.session, input.session));
            subscriptions = std::mem::take(&mut m.subscriptions).into_values().collect();
            m.connected = true;
            m.last_seen = now;
            m.privileges = input.privileges;
            m.kind = input.kind;
        }
        if let Some(old) = old {
            self.sessions.remove(&old);
        }
        self.sessions.insert(input.session, user.clone());
        self.dismiss_at = None;
        let role = self.members.get(&user).map_or(Role::Anchor, |m| m.role);
        let mut others = VisibleJson::default();
        for (u, m) in &self.members {
            if *u != user && self.visible(m.role) {
                others.push(u, m.role);
            }
        }
        let streams = self
            .streams()
            .into_iter()
            .filter(|s| s.user_id != user)
            .collect();
        for p in &subscriptions {
            self.peers.remove(p);
        }
        let effects = old
            .map(|session| Effect::MemberGone {
                user_id: user.clone(),
                session,
                subscriptions,
            })
            .into_iter()
            .collect();
        (
            Joined {
                result: self.join_result(role, streams),
                members_json: others.text,
            },
            effects,
        )
    }

    /// Remove a member; `ban` sends it `client-banned` first. `exit_reason` is the webhook's.
    fn remove_member(
        &mut self,
        user_id: &UserId,
        ban: Option<(BanReason, String)>,
        leave_reason: LeaveReason,
        exit_reason: u32,
    ) -> Vec<Effect> {
        let Some(member) = self.members.remove(user_id) else {
            return Vec::new();
        };
        if member.kind == LinkKind::Edge {
            // An edge's link: the audience it served is gone with it.
            self.edge_audience.retain(|_, (e, _)| *e != member.session);
            self.edge_members -= 1;
        }
        self.streams_total = self.streams_total.saturating_sub(member.streams.len());
        self.sessions.remove(&member.session);
        if self.visible(member.role) {
            self.visible.stale = true;
        }
        let mut effects = Vec::new();
        if let Some((reason, message)) = ban {
            effects.push(Effect::Remove {
                session: member.session,
                reason,
                message,
            });
        }
        let others = self.others(None);
        for (t, stream) in &member.streams {
            effects.push(Effect::Event {
                to: others.clone(),
                event: ServerEvent::StreamRemoved {
                    user_id: user_id.clone(),
                    stream_type: (*t).into(),
                },
            });
            effects.push(self.stream_ended(user_id, *t, stream));
        }
        effects.push(self.member_gone(user_id, &member));
        if self.visible(member.role) {
            effects.push(Effect::Event {
                to: others,
                event: ServerEvent::PeerLeave {
                    user_id: user_id.clone(),
                    reason: leave_reason,
                },
            });
        }
        effects.push(Effect::Hook(Hook {
            event: HookEvent::ExitRoom,
            user_id: Some(user_id.clone()),
            role: Some(member.role),
            reason: exit_reason,
        }));
        self.tell_edges_if_full(&mut effects);
        effects
    }

    /// The member limit of the room's mode.
    fn member_limit(&self) -> usize {
        match self.mode {
            Mode::Rtc => self.limits.max_rtc_members,
            Mode::Live => self.limits.max_live_members,
        }
    }

    /// Members of every node: this node's (not the links standing for other nodes) and the
    /// audience the edges report.
    fn counted_len(&self) -> usize {
        self.local_len() + self.edge_audience.len()
    }

    /// Tell the edges (if any) when the room became full or is no longer.
    fn tell_edges_if_full(&mut self, effects: &mut Vec<Effect>) {
        if self.edge_members == 0 {
            self.full_told = None;
            return;
        }
        let full = self.counted_len() >= self.member_limit();
        if self.full_told == Some(full) {
            return;
        }
        self.full_told = Some(full);
        effects.extend(
            self.members
                .values()
                .filter(|m| m.kind == LinkKind::Edge && m.connected)
                .map(|m| Effect::Edge {
                    edge: m.session,
                    order: EdgeOrder::Full(full),
                }),
        );
    }

    /// On an edge: the room's node says the room is full (new audience is refused) or not.
    pub fn set_origin_full(&mut self, full: bool) {
        self.origin_full = full;
    }

    /// After someone left: dismiss or schedule dismissal if the room is empty.
    fn after_leave(&mut self, last_role: Role, now: Instant, effects: &mut Vec<Effect>) {
        if !self.members.is_empty() || self.dismissed {
            return;
        }
        let linger = self.mode == Mode::Live && last_role == Role::Audience;
        if linger {
            self.dismiss_at = Some(now + self.limits.live_audience_linger);
        } else {
            self.dismiss_now(effects);
        }
    }

    fn dismiss_now(&mut self, effects: &mut Vec<Effect>) {
        self.dismissed = true;
        self.dismiss_at = None;
        effects.push(Effect::Hook(Hook {
            event: HookEvent::DismissRoom,
            user_id: None,
            role: None,
            reason: 0,
        }));
    }

    /// A member leaves on purpose.
    pub fn leave(&mut self, session: SessionId, now: Instant) -> Vec<Effect> {
        let Some(user) = self.sessions.get(&session).cloned() else {
            return Vec::new();
        };
        let role = self
            .members
            .get(&user)
            .map(|m| m.role)
            .unwrap_or(Role::Anchor);
        let mut effects = self.remove_member(&user, None, LeaveReason::Normal, 1);
        self.after_leave(role, now, &mut effects);
        effects
    }

    /// A mirrored member ([`LinkKind::Edge`]) left the room it mirrors, for `reason`: the others
    /// hear it with that reason (a switch to audience is 3, as on the room's own node).
    pub fn mirror_leave(
        &mut self,
        user: &UserId,
        reason: LeaveReason,
        now: Instant,
    ) -> Vec<Effect> {
        let Some(role) = self
            .members
            .get(user)
            .filter(|m| m.kind == LinkKind::Edge)
            .map(|m| m.role)
        else {
            return Vec::new();
        };
        let mut effects = self.remove_member(user, None, reason, 1);
        self.after_leave(role, now, &mut effects);
        effects
    }

    /// An event from elsewhere (a cascaded room's origin) for every connected member that is
    /// not a mirror itself.
    pub fn relay(&self, event: ServerEvent) -> Vec<Effect> {
        let to: Vec<SessionId> = self
            .members
            .values()
            .filter(|m| m.connected && m.kind != LinkKind::Edge)
            .map(|m| m.session)
            .collect();
        vec![Effect::Event { to, event }]
    }

    /// Members that are not mirrors ([`LinkKind::Edge`]).
    pub fn local_len(&self) -> usize {
        self.members.len().saturating_sub(self.edge_members)
    }

    /// Audience members that are not mirrors.
    pub fn audience_len(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.kind != LinkKind::Edge && m.role == Role::Audience)
            .count()
    }

    /// The session of member `user`.
    pub fn session_of(&self, user: &UserId) -> Option<SessionId> {
        self.members.get(user).map(|m| m.session)
    }

    /// The session of member `user` if it is a mirror ([`LinkKind::Edge`]) — not a member of
    /// this node that took the userId over.
    pub fn mirror_session(&self, user: &UserId) -> Option<SessionId> {
        self.members
            .get(user)
            .filter(|m| m.kind == LinkKind::Edge)
            .map(|m| m.session)
    }

    /// A member's socket closed without a leave: it stays until its heartbeat timeout, as TRTC
    /// keeps a member that drops abnormally for 90 s.
    pub fn disconnected(&mut self, session: SessionId) {
        if let Some(m) = self
            .sessions
            .get(&session)
            .and_then(|u| self.members.get_mut(u))
        {
            m.connected = false;
        }
    }

    /// A heartbeat (or any message) from a member.
    pub fn heartbeat(&mut self, session: SessionId, now: Instant) {
        if let Some(m) = self
            .sessions
            .get(&session)
            .and_then(|u| self.members.get_mut(u))
        {
            m.last_seen = now;
        }
    }

    /// The next instant at which [`Room::tick`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let eviction = self
            .members
            .values()
            .filter(|m| m.kind.heartbeats())
            .map(|m| m.last_seen + self.limits.heartbeat_timeout)
            .min();
        match (eviction, self.dismiss_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Evict members silent past the timeout, and dismiss a lingering empty room.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        let timeout = self.limits.heartbeat_timeout;
        let silent: Vec<(UserId, Role)> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.kind.heartbeats() && now.saturating_duration_since(m.last_seen) > timeout
            })
            .map(|(u, m)| (u.clone(), m.role))
            .collect();
        let mut last_role = None;
        for (user, role) in silent {
            effects.extend(self.remove_member(
                &user,
                Some((
                    BanReason::UserTimeOut,
                    format!("no heartbeat for {} s", timeout.as_secs()),
                )),
                LeaveReason::Timeout,
                2,
            ));
            last_role = Some(role);
        }
        if last_role.is_some() && self.members.is_empty() && !self.dismissed {
            // Everyone dropped: TRTC dismisses the room once the 90 s timeout has passed.
            self.dismiss_now(&mut effects);
        }
        if self.dismiss_at.is_some_and(|t| now >= t) && self.members.is_empty() {
            self.dismiss_now(&mut effects);
        }
        effects
    }

    fn member_mut(&mut self, session: SessionId) -> RtcResult<(UserId, &mut Member)> {
        let user = self.sessions.get(&session).cloned().ok_or_else(|| {
            RtcError::invalid_operation(Some(extra::NOT_ENTERED_ROOM), "not in the room")
        })?;
        let m = self.members.get_mut(&user).ok_or_else(|| {
            RtcError::invalid_operation(Some(extra::NOT_ENTERED_ROOM), "not in the room")
        })?;
        Ok((user, m))
    }

    /// Check a publish without doing it (the media plane negotiates in between).
    pub fn check_publish(
        &self,
        session: SessionId,
        stream_type: StreamType,
        has_audio: bool,
        has_video: bool,
    ) -> RtcResult<()> {
        if !has_audio && !has_video {
            return Err(RtcError::invalid_parameter(
                Some(extra::PARAM_REQUIRED),
                "publish needs audio, video or both",
            ));
        }
        let not_in =
            || RtcError::invalid_operation(Some(extra::NOT_ENTERED_ROOM), "not in the room");
        let user = self.sessions.get(&session).ok_or_else(not_in)?;
        let m = self.members.get(user).ok_or_else(not_in)?;
        if self.mode == Mode::Live && m.role == Role::Audience {
            return Err(RtcError::invalid_operation(
                Some(extra::AUDIENCE_ROLE),
                "no permission to publish() under live/audience; switch_role(anchor) first",
            ));
        }
        if let Some(p) = m.privileges {
            let need: &[(bool, Privilege, i32)] = match stream_type {
                StreamType::Main => &[
                    (has_audio, Privilege::SendAudio, extra::PRIVILEGE_FLAG_ERROR),
                    (
                        has_video,
                        Privilege::SendVideo,
                        extra::NO_PERMISSION_PUSH_VIDEO,
                    ),
                ],
                StreamType::Auxiliary => &[(
                    true,
                    Privilege::SendSubStream,
                    extra::NO_PERMISSION_SUB_STREAM,
                )],
            };
            for (wanted, privilege, code) in need {
                if *wanted && !p.contains(*privilege) {
                    return Err(RtcError::with_extra(
                        ErrorCode::InvalidOperation,
                        *code,
                        format!("privateMapKey does not grant {}", privilege.name()),
                    ));
                }
            }
        }
        let max_publishers = self.limits.max_publishers;
        if m.streams.is_empty() && self.publisher_count() >= max_publishers {
            return Err(RtcError::invalid_operation(
                None,
                format!("the room already has {max_publishers} publishers, TRTC's limit"),
            ));
        }
        Ok(())
    }

    /// Whether `user` has `stream_type` published.
    pub fn has_stream(&self, user: &UserId, stream_type: StreamType) -> bool {
        self.members
            .get(user)
            .is_some_and(|m| m.streams.contains_key(&StreamTypeKey::from(stream_type)))
    }

    /// Publish (or update) a stream without media (signalling only).
    pub fn publish(
        &mut self,
        session: SessionId,
        stream_type: StreamType,
        has_audio: bool,
        has_video: bool,
    ) -> RtcResult<Vec<Effect>> {
        self.publish_media(
            session,
            stream_type,
            has_audio,
            has_video,
            None,
            None,
            Vec::new(),
        )
    }

    /// Publish (or update) a stream whose media was negotiated with `video_codec` on media
    /// peer `peer` (which replaces the stream's previous peer: the media plane closed that
    /// one when it took the new one), in simulcast `layers` (smallest first) if any.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_media(
        &mut self,
        session: SessionId,
        stream_type: StreamType,
        has_audio: bool,
        has_video: bool,
        video_codec: Option<VideoCodec>,
        peer: Option<PeerId>,
        layers: Vec<VideoLayer>,
    ) -> RtcResult<Vec<Effect>> {
        self.check_publish(session, stream_type, has_audio, has_video)?;
        let (user, m) = self.member_mut(session)?;
        let key = StreamTypeKey::from(stream_type);
        let previous = m.streams.insert(
            key,
            Stream {
                has_audio,
                has_video,
                audio_muted: false,
                video_muted: false,
                video_codec,
                peer,
                layers,
            },
        );
        let info = Self::stream_info(&user, key, &m.streams[&key]);
        if previous.is_none() {
            self.streams_total += 1;
        }
        if let Some(old) = previous.as_ref().and_then(|p| p.peer) {
            self.peers.remove(&old);
        }
        if let Some(p) = peer {
            self.peers.insert(
                p,
                PeerUse::Uplink {
                    user_id: user.clone(),
                    stream_type,
                },
            );
        }
        let mut effects = Vec::new();
        let others = self.others(Some(session));
        let (had_audio, had_video) = previous
            .as_ref()
            .map(|s| (s.has_audio, s.has_video))
            .unwrap_or((false, false));
        effects.push(Effect::Event {
            to: others,
            event: if previous.is_some() {
                ServerEvent::StreamUpdated(info)
            } else {
                ServerEvent::StreamAdded(info)
            },
        });
        let hooks = media_hooks(stream_type, (had_audio, had_video), (has_audio, has_video));
        effects.extend(hooks.into_iter().map(|event| {
            Effect::Hook(Hook {
                event,
                user_id: Some(user.clone()),
                role: None,
                reason: 0,
            })
        }));
        Ok(effects)
    }

    /// Stop publishing a stream.
    pub fn unpublish(
        &mut self,
        session: SessionId,
        stream_type: StreamType,
    ) -> RtcResult<Vec<Effect>> {
        let (user, m) = self.member_mut(session)?;
        let Some(old) = m.streams.remove(&StreamTypeKey::from(stream_type)) else {
            return Err(RtcError::invalid_operation(
                Some(extra::REPEATED_CALL),
                format!("no {stream_type:?} stream is published"),
            ));
        };
        self.streams_total = self.streams_total.saturating_sub(1);
        let mut effects = vec![
            Effect::Event {
                to: self.others(Some(session)),
                event: ServerEvent::StreamRemoved {
                    user_id: user.clone(),
                    stream_type,
                },
            },
            self.stream_ended(&user, StreamTypeKey::from(stream_type), &old),
        ];
        effects.extend(
            media_hooks(stream_type, (old.has_audio, old.has_video), (false, false))
                .into_iter()
                .map(|event| {
                    Effect::Hook(Hook {
                        event,
                        user_id: Some(user.clone()),
                        role: None,
                        reason: 0,
                    })
                }),
        );
        Ok(effects)
    }

    /// A custom message from `session` to every other member (TRTC's `sendCustomCmdMsg`):
    /// anchors only (INVALID_OPERATION 5107 for the audience), command id 1–10, 1 byte to
    /// 1 KB (INVALID_PARAMETER 5005 / 5017 / 5018), at most 30 messages and 8 KB per second
    /// per sender (over it: INVALID_OPERATION, the message is not sent).
    pub fn custom_message(
        &mut self,
        session: SessionId,
        cmd_id: u8,
        data: Vec<u8>,
        now: Instant,
    ) -> RtcResult<Vec<Effect>> {
        custom_message::check(cmd_id, &data)?;
        let (user, m) = self.member_mut(session)?;
        if m.role != Role::Anchor {
            return Err(RtcError::invalid_operation(
                Some(extra::AUDIENCE_ROLE),
                "only anchors can send custom messages",
            ));
        }
        if !m.messages.take(now, data.len()) {
            return Err(RtcError::invalid_operation(
                None,
                format!(
                    "over {} custom messages or {} bytes per second",
                    custom_message::PER_SECOND,
                    custom_message::BYTES_PER_SECOND
                ),
            ));
        }
        m.message_seq += 1;
        let seq = m.message_seq;
        Ok(vec![Effect::Event {
            to: self.others(Some(session)),
            event: ServerEvent::CustomMessage {
                user_id: user,
                cmd_id,
                seq,
                data,
            },
        }])
    }

    /// Mute or unmute audio or video of a published stream.
    pub fn mute(
        &mut self,
        session: SessionId,
        stream_type: StreamType,
        kind: MediaKind,
        muted: bool,
    ) -> RtcResult<Vec<Effect>> {
        let (user, m) = self.member_mut(session)?;
        let Some(s) = m.streams.get_mut(&StreamTypeKey::from(stream_type)) else {
            return Err(RtcError::invalid_operation(
                None,
                format!("no {stream_type:?} stream is published"),
            ));
        };
        let flag = match kind {
            MediaKind::Audio => &mut s.audio_muted,
            MediaKind::Video => &mut s.video_muted,
        };
        if *flag == muted {
            return Ok(Vec::new());
        }
        *flag = muted;
        let hook = match (stream_type, kind, muted) {
            (StreamType::Auxiliary, _, true) => HookEvent::StopSubStream,
            (StreamType::Auxiliary, _, false) => HookEvent::StartSubStream,
            (_, MediaKind::Audio, true) => HookEvent::StopAudio,
            (_, MediaKind::Audio, false) => HookEvent::StartAudio,
            (_, MediaKind::Video, true) => HookEvent::StopVideo,
            (_, MediaKind::Video, false) => HookEvent::StartVideo,
        };
        // Edges' hidden members are told which stream it is; the others get TRTC's event.
        let (edges, to): (Vec<&Member>, Vec<&Member>) = self
            .members
            .values()
            .filter(|m| m.connected && m.session != session)
            .partition(|m| m.kind == LinkKind::Edge);
        let mut effects = vec![Effect::Event {
            to: to.iter().map(|m| m.session).collect(),
            event: ServerEvent::mute(user.clone(), kind, muted),
        }];
        effects.extend(edges.iter().map(|m| Effect::Edge {
            edge: m.session,
            order: EdgeOrder::Mute(EdgeMute {
                user_id: user.clone(),
                stream_type,
                kind,
                muted,
            }),
        }));
        effects.push(Effect::Hook(Hook {
            event: hook,
            user_id: Some(user),
            role: None,
            reason: 0,
        }));
        Ok(effects)
    }

    /// Whether `session` may subscribe to `user`'s `stream_type` (audio and/or video): the
    /// stream must be published and a PrivateMapKey must grant receiving it.
    pub fn check_subscribe(
        &self,
        session: SessionId,
        user: &UserId,
        stream_type: StreamType,
        audio: bool,
        video: bool,
    ) -> RtcResult<()> {
        let me = self.sessions.get(&session).ok_or_else(|| {
            RtcError::invalid_operation(Some(extra::NOT_ENTERED_ROOM), "not in the room")
        })?;
        if !audio && !video {
            return Err(RtcError::invalid_operation(
                None,
                "subscribe needs audio, video or both",
            ));
        }
        let published = self
            .members
            .get(user)
            .and_then(|m| m.streams.get(&StreamTypeKey::from(stream_type)));
        if published.is_none() {
            return Err(RtcError::new(
                ErrorCode::RemoteStreamNotExist,
                format!("{user} has no {stream_type:?} stream published"),
            ));
        }
        if let Some(p) = self.members.get(me).and_then(|m| m.privileges) {
            let needs: &[(bool, Privilege)] = match stream_type {
                StreamType::Main => &[
                    (audio, Privilege::ReceiveAudio),
                    (video, Privilege::ReceiveVideo),
                ],
                StreamType::Auxiliary => &[(true, Privilege::ReceiveSubStream)],
            };
            for (wanted, privilege) in needs {
                if *wanted && !p.contains(*privilege) {
                    return Err(RtcError::with_extra(
                        ErrorCode::InvalidOperation,
                        extra::PRIVILEGE_FLAG_ERROR,
                        format!("privateMapKey does not grant {}", privilege.name()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Change role (live mode). Anchor → audience unpublishes and leaves others' view
    /// (peer-leave reason 3); audience → anchor appears (peer-join).
    pub fn switch_role(&mut self, session: SessionId, role: Role) -> RtcResult<Vec<Effect>> {
        let mode = self.mode;
        let (user, m) = self.member_mut(session)?;
        if mode == Mode::Rtc {
            return Err(RtcError::invalid_operation(
                None,
                "switch_role is only meaningful in live mode",
            ));
        }
        if m.role == role {
            return Ok(Vec::new());
        }
        m.role = role;
        let removed: BTreeMap<StreamTypeKey, Stream> = if role == Role::Audience {
            std::mem::take(&mut m.streams)
        } else {
            BTreeMap::new()
        };
        self.streams_total = self.streams_total.saturating_sub(removed.len());
        let others = self.others(Some(session));
        let mut effects = Vec::new();
        for (t, stream) in &removed {
            effects.push(Effect::Event {
                to: others.clone(),
                event: ServerEvent::StreamRemoved {
                    user_id: user.clone(),
                    stream_type: (*t).into(),
                },
            });
            effects.push(self.stream_ended(&user, *t, stream));
        }
        effects.push(Effect::Event {
            to: others,
            event: match role {
                Role::Anchor => ServerEvent::PeerJoin {
                    user_id: user.clone(),
                },
                Role::Audience => ServerEvent::PeerLeave {
                    user_id: user.clone(),
                    reason: LeaveReason::RoleChange,
                },
            },
        });
        effects.push(Effect::Hook(Hook {
            event: HookEvent::ChangeRole,
            user_id: Some(user),
            role: Some(role),
            reason: 1,
        }));
        // Live mode: the member appears in or disappears from the visible list.
        self.visible.stale = true;
        Ok(effects)
    }

    /// Admin RemoveUser: each named member gets `client-banned` reason `banned`, here or on
    /// the edge node serving it.
    pub fn remove_users(&mut self, users: &[UserId], now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut last_role = None;
        for u in users {
            if let Some((edge, _)) = self.edge_audience.remove(u) {
                effects.push(Self::edge_kick(edge, u, BanReason::Banned));
                self.tell_edges_if_full(&mut effects);
            }
            if let Some(role) = self
                .members
                .get(u)
                .filter(|m| m.kind != LinkKind::Edge)
                .map(|m| m.role)
            {
                effects.extend(self.remove_member(
                    u,
                    Some((BanReason::Banned, BANNED_BY_ADMIN.to_owned())),
                    LeaveReason::Kicked,
                    3,
                ));
                last_role = Some(role);
            }
        }
        if let Some(role) = last_role {
            self.after_leave(role, now, &mut effects);
        }
        effects
    }

    /// The order for edge `edge` to remove `user` for `reason` (a duplicate or the admin).
    fn edge_kick(edge: SessionId, user: &UserId, reason: BanReason) -> Effect {
        let message = match reason {
            BanReason::Kick => DUPLICATE_USER,
            _ => BANNED_BY_ADMIN,
        };
        Effect::Edge {
            edge,
            order: EdgeOrder::Kick(EdgeKick {
                user_id: user.clone(),
                reason,
                message: message.to_owned(),
            }),
        }
    }

    /// The edge node behind hidden member `edge` reports `user` in its audience since
    /// `joined_at` (`joined`), or gone from it. Of two members with that userId — here, or in
    /// another edge's audience — the one that joined first is kicked, as by a duplicate join:
    /// reports travel on the node link and joins on their own links, so a report may arrive
    /// after a newer join of the same userId here (a member of the edge that switched to
    /// anchor and moved here), which then stays.
    pub fn edge_audience(
        &mut self,
        edge: SessionId,
        user: UserId,
        joined: bool,
        joined_at: Instant,
        now: Instant,
    ) -> Vec<Effect> {
        if !self
            .user_of(edge)
            .and_then(|u| self.members.get(u))
            .is_some_and(|m| m.kind == LinkKind::Edge)
        {
            return Vec::new();
        }
        if !joined {
            let mut effects = Vec::new();
            if self
                .edge_audience
                .get(&user)
                .is_some_and(|(e, _)| *e == edge)
            {
                self.edge_audience.remove(&user);
                self.tell_edges_if_full(&mut effects);
            }
            return effects;
        }
        let mut effects = Vec::new();
        let local = self
            .members
            .get(&user)
            .filter(|m| m.kind != LinkKind::Edge)
            .map(|m| (m.role, m.joined_at));
        let other = self.edge_audience.get(&user).copied();
        let newer_elsewhere = local.is_some_and(|(_, at)| at > joined_at)
            || other.is_some_and(|(e, at)| e != edge && at > joined_at);
        if newer_elsewhere {
            // This one is the older: the edge reporting it removes it.
            effects.push(Self::edge_kick(edge, &user, BanReason::Kick));
            return effects;
        }
        if let Some((role, _)) = local {
            effects.extend(self.remove_member(
                &user,
                Some((BanReason::Kick, DUPLICATE_USER.to_owned())),
                LeaveReason::Kicked,
                3,
            ));
            self.after_leave(role, now, &mut effects);
        }
        if let Some((other, _)) = self.edge_audience.insert(user.clone(), (edge, joined_at))
            && other != edge
        {
            effects.push(Self::edge_kick(other, &user, BanReason::Kick));
        }
        self.tell_edges_if_full(&mut effects);
        effects
    }

    /// Admin DismissRoom: everyone gets `client-banned` reason `room_disband`.
    pub fn dismiss(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        // The edges' audience goes with their links (their hidden members are removed here).
        self.edge_audience.clear();
        let users: Vec<UserId> = self.members.keys().cloned().collect();
        for u in &users {
            if let Some(m) = self.members.remove(u) {
                if m.kind == LinkKind::Edge {
                    self.edge_members -= 1;
                }
                self.streams_total = self.streams_total.saturating_sub(m.streams.len());
                self.sessions.remove(&m.session);
                effects.push(Effect::Remove {
                    session: m.session,
                    reason: BanReason::RoomDisband,
                    message: "the room has been disbanded by the admin".to_owned(),
                });
                for (t, stream) in &m.streams {
                    effects.push(self.stream_ended(u, *t, stream));
                }
                effects.push(self.member_gone(u, &m));
                effects.push(Effect::Hook(Hook {
                    event: HookEvent::ExitRoom,
                    user_id: Some(u.clone()),
                    role: Some(m.role),
                    reason: 4,
                }));
            }
        }
        if !self.dismissed {
            self.dismiss_now(&mut effects);
        }
        effects
    }

    /// The effect of a stream's end, forgetting its peer.
    fn stream_ended(&mut self, user: &UserId, t: StreamTypeKey, stream: &Stream) -> Effect {
        if let Some(p) = stream.peer {
            self.peers.remove(&p);
        }
        Effect::StreamEnded {
            user_id: user.clone(),
            stream_type: t.into(),
            peer: stream.peer,
        }
    }

    /// The effect of a member's session ending, forgetting its subscriptions' peers.
    fn member_gone(&mut self, user: &UserId, m: &Member) -> Effect {
        let subscriptions: Vec<PeerId> = m.subscriptions.values().copied().collect();
        for p in &subscriptions {
            self.peers.remove(p);
        }
        Effect::MemberGone {
            user_id: user.clone(),
            session: m.session,
            subscriptions,
        }
    }

    /// Record a subscription of `session` to `publisher`'s stream on media peer `peer`, once
    /// the media is negotiated. Re-checks that the member is still here and the stream still
    /// published (either may have gone while the media was negotiated). A previous
    /// subscription to the same stream is replaced: its peer comes back in an
    /// [`Effect::Unsubscribe`].
    pub fn add_subscription(
        &mut self,
        session: SessionId,
        publisher: &UserId,
        stream_type: StreamType,
        peer: PeerId,
    ) -> RtcResult<Vec<Effect>> {
        if !self.has_stream(publisher, stream_type) {
            return Err(RtcError::new(
                ErrorCode::RemoteStreamNotExist,
                format!("{publisher}'s stream ended while subscribing"),
            ));
        }
        let (user, m) = self.member_mut(session)?;
        let old = m
            .subscriptions
            .insert((publisher.clone(), stream_type.into()), peer);
        self.peers.insert(
            peer,
            PeerUse::Downlink {
                subscriber: user,
                publisher: publisher.clone(),
                stream_type,
            },
        );
        Ok(old
            .map(|old| {
                self.peers.remove(&old);
                Effect::Unsubscribe { peer: old }
            })
            .into_iter()
            .collect())
    }

    /// End `session`'s subscription to `publisher`'s stream.
    pub fn unsubscribe(
        &mut self,
        session: SessionId,
        publisher: &UserId,
        stream_type: StreamType,
    ) -> RtcResult<Vec<Effect>> {
        let (_, m) = self.member_mut(session)?;
        let Some(peer) = m
            .subscriptions
            .remove(&(publisher.clone(), stream_type.into()))
        else {
            return Err(RtcError::invalid_operation(
                None,
                "not subscribed to that stream",
            ));
        };
        self.peers.remove(&peer);
        Ok(vec![Effect::Unsubscribe { peer }])
    }

    /// End every subscription of `session` (its signalling dropped: nobody reads them).
    pub fn end_subscriptions(&mut self, session: SessionId) -> Vec<Effect> {
        let Ok((_, m)) = self.member_mut(session) else {
            return Vec::new();
        };
        let peers: Vec<PeerId> = std::mem::take(&mut m.subscriptions).into_values().collect();
        peers
            .into_iter()
            .map(|peer| {
                self.peers.remove(&peer);
                Effect::Unsubscribe { peer }
            })
            .collect()
    }

    /// What media peer `peer` carries, if a member of this room holds it.
    pub fn peer_use(&self, peer: PeerId) -> Option<&PeerUse> {
        self.peers.get(&peer)
    }

    /// Every media peer the room's members hold.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    /// `session`'s media peers: (publisher, stream, peer) of its published streams and of its
    /// subscriptions.
    pub fn links_of(&self, session: SessionId) -> (Vec<MediaLink>, Vec<MediaLink>) {
        let Some((user, m)) = self
            .sessions
            .get(&session)
            .and_then(|u| self.members.get(u).map(|m| (u, m)))
        else {
            return (Vec::new(), Vec::new());
        };
        let up = m
            .streams
            .iter()
            .filter_map(|(t, s)| s.peer.map(|p| (user.clone(), StreamType::from(*t), p)))
            .collect();
        let down = m
            .subscriptions
            .iter()
            .map(|((u, t), p)| (u.clone(), StreamType::from(*t), *p))
            .collect();
        (up, down)
    }

    /// A simulcast media event for peer `peer`: a subscriber's layer changed
    /// (`video-layer-changed` to it), or which layers of a publisher's stream are wanted
    /// (`layers-wanted` to it). Nothing for a peer the room does not hold.
    pub fn layer_event(&self, peer: PeerId, event: LayerEvent) -> Vec<Effect> {
        let (member, publisher, stream_type) = match self.peers.get(&peer) {
            Some(PeerUse::Uplink {
                user_id,
                stream_type,
            }) => (user_id, user_id, *stream_type),
            Some(PeerUse::Downlink {
                subscriber,
                publisher,
                stream_type,
            }) => (subscriber, publisher, *stream_type),
            None => return Vec::new(),
        };
        let Some(session) = self.members.get(member).map(|m| m.session) else {
            return Vec::new();
        };
        let layers = self
            .members
            .get(publisher)
            .and_then(|m| m.streams.get(&StreamTypeKey::from(stream_type)))
            .map(|s| s.layers.as_slice())
            .unwrap_or_default();
        let event = match event {
            LayerEvent::Changed {
                layer,
                layers: count,
                bandwidth,
            } => {
                let Some(l) = layers.get(usize::from(layer)) else {
                    return Vec::new();
                };
                ServerEvent::VideoLayerChanged {
                    user_id: publisher.clone(),
                    stream_type,
                    rid: l.rid.clone(),
                    video_type: if layer + 1 >= count {
                        VideoStreamType::Big
                    } else {
                        VideoStreamType::Small
                    },
                    reason: if bandwidth {
                        LayerChangeReason::Bandwidth
                    } else {
                        LayerChangeReason::Request
                    },
                }
            }
            LayerEvent::Wanted(mask) => ServerEvent::LayersWanted {
                stream_type,
                rids: layers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i < 32 && mask & (1 << i) != 0)
                    .map(|(_, l)| l.rid.clone())
                    .collect(),
            },
        };
        vec![Effect::Event {
            to: vec![session],
            event,
        }]
    }

    /// A media peer closed on its own (ICE lost, connect timeout, worker fault): forget it.
    /// A signalling member's published stream stays announced (its client rebuilds the peer
    /// and publishes again); a WHIP or WHEP member, which lives by its media, leaves.
    pub fn peer_closed(&mut self, peer: PeerId, now: Instant) -> Vec<Effect> {
        let Some(usage) = self.peers.remove(&peer) else {
            return Vec::new();
        };
        let owner = match &usage {
            PeerUse::Uplink {
                user_id,
                stream_type,
            } => {
                if let Some(s) = self
                    .members
                    .get_mut(user_id)
                    .and_then(|m| m.streams.get_mut(&StreamTypeKey::from(*stream_type)))
                    && s.peer == Some(peer)
                {
                    s.peer = None;
                }
                user_id
            }
            PeerUse::Downlink {
                subscriber,
                publisher,
                stream_type,
            } => {
                if let Some(m) = self.members.get_mut(subscriber) {
                    let k = (publisher.clone(), StreamTypeKey::from(*stream_type));
                    if m.subscriptions.get(&k) == Some(&peer) {
                        m.subscriptions.remove(&k);
                    }
                }
                subscriber
            }
        };
        match self.members.get(owner) {
            Some(m) if m.kind.lives_by_peer() => {
                let session = m.session;
                self.leave(session, now)
            }
            _ => Vec::new(),
        }
    }

    /// The room's members (with the audience its edge nodes serve) and streams.
    pub fn describe(&self) -> RoomInfo {
        let mut members: Vec<MemberDetail> = self
            .members
            .iter()
            .filter(|(_, m)| m.kind != LinkKind::Edge)
            .map(|(u, m)| MemberDetail {
                user_id: u.clone(),
                role: m.role,
                connected: m.connected,
                streams: m
                    .streams
                    .iter()
                    .map(|(t, s)| Self::stream_info(u, *t, s))
                    .collect(),
            })
            .collect();
        members.extend(self.edge_audience.keys().map(|u| MemberDetail {
            user_id: u.clone(),
            role: Role::Audience,
            connected: true,
            streams: Vec::new(),
        }));
        members.sort_by(|a, b| a.user_id.as_str().cmp(b.user_id.as_str()));
        RoomInfo {
            room_id: self.key.room_id.clone(),
            mode: self.mode,
            members,
        }
    }

    /// The members of this node (not mirrors), for an edge room's link.
    pub fn local_users(&self) -> Vec<UserId> {
        self.members
            .iter()
            .filter(|(_, m)| m.kind != LinkKind::Edge)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// An edge's order: remove member `user` (of this node, not a mirror), for `reason`.
    pub fn kick_local(
        &mut self,
        user: &UserId,
        reason: BanReason,
        message: String,
        now: Instant,
    ) -> Vec<Effect> {
        let Some(role) = self
            .members
            .get(user)
            .filter(|m| m.kind != LinkKind::Edge)
            .map(|m| m.role)
        else {
            return Vec::new();
        };
        let mut effects = self.remove_member(user, Some((reason, message)), LeaveReason::Kicked, 3);
        self.after_leave(role, now, &mut effects);
        effects
    }
}

/// The media webhooks for a change of a stream's tracks.
fn media_hooks(
    stream_type: StreamType,
    before: (bool, bool),
    after: (bool, bool),
) -> Vec<HookEvent> {
    let mut out = Vec::new();
    match stream_type {
        StreamType::Auxiliary => {
            let (b, a) = (before.0 || before.1, after.0 || after.1);
            if !b && a {
                out.push(HookEvent::StartSubStream);
            } else if b && !a {
                out.push(HookEvent::StopSubStream);
            }
        }
        StreamType::Main => {
            if !before.1 && after.1 {
                out.push(HookEvent::StartVideo);
            }
            if before.1 && !after.1 {
                out.push(HookEvent::StopVideo);
            }
            if !before.0 && after.0 {
                out.push(HookEvent::StartAudio);
            }
            if before.0 && !after.0 {
                out.push(HookEvent::StopAudio);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
