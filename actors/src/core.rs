//! `ClientCore`: everything a client decides, without sockets, actors or a clock.
//!
//! The core owns the join lifecycle ([`Lifecycle`]), the room view ([`RoomState`]), the
//! media link table (one link per published stream and per subscribed stream, each with its
//! peer connection id and [`LinkHealth`]), the user's calls waiting for an outcome, the
//! signalling requests it asked for, and the reconnection and rebuild timers. It is driven
//! like str0m's `Rtc` and the server's `Room`:
//!
//! - [`ClientCore::handle_input`] takes one [`Input`] (a user call, a signalling result or
//!   event, a media result, or [`Input::Timeout`]) with the time it happened;
//! - [`ClientCore::poll_output`] hands out what to do, in order ([`Output`]): events for the
//!   user, replies to calls, connections to open or close, requests to send, pipelines to
//!   build, offers to negotiate, peer connections to close;
//! - [`ClientCore::poll_timeout`] says when it next wants [`Input::Timeout`].
//!
//! The [`crate::client::ClientActor`] only performs the outputs and feeds their results back;
//! every decision (what a lost connection, a failed link, a re-join, a leave in the middle of a
//! join mean) is here, and is tested in virtual time below.
//!
//! The core is generic over the media handle `M` a link carries (the actor uses
//! [`crate::media::PcRole`]: the local pipeline of an uplink, the receive pipeline of a
//! downlink), so tests drive it with plain values.
//!
//! Staleness: every connection attempt has a generation, every negotiation a peer connection
//! id, every pipeline build the id it reserved. A result whose id is no longer current is
//! ignored (a peer connection that connected too late is closed).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::custom_message::MessageBudget;
use rtcroom_protocol::signal::{
    BanReason, ClientMessage, IceRestartRequest, JoinRequest, JoinResult, LinkDirection,
    MAX_LAYERS, MediaKind, PublishRequest, ReplyData, ServerEvent, StreamInfo, StreamType,
    SubscribeRequest, VideoCodec, VideoLayer, VideoStreamType,
};
use rtcroom_protocol::{ErrorCode, Mode, Role, RtcError, UserId};

use crate::client::{ClientSettings, JoinParams, SubscribeParams};
use crate::error::SignalError;
use crate::event::{ClientEvent, RemoteMutedState};
use crate::lifecycle::{Lifecycle, Phase, Recovery, StateChange};
use crate::media::{
    LinkAction, LinkHealth, LinkKind, PcEventKind, PcId, RestartBudget, SubscribeOutput,
};
use crate::requests::RequestKind;
use crate::room::RoomState;
use crate::signaling::Generation;

/// A user call waiting for its outcome ([`Output::Reply`]); the driver numbers them.
pub type CallId = u64;

/// A signalling request the core asked for ([`Output::Request`] → [`Input::Replied`]).
pub type RequestId = u64;

/// Which media link: a published stream (uplink) or a subscribed one (downlink).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LinkKey {
    /// This client's stream of that type.
    Up(StreamType),
    /// That user's stream of that type.
    Down(UserId, StreamType),
}

/// What a link's offer is sent as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkRequest {
    /// `publish` with the local stream's tracks.
    Publish {
        /// Which stream.
        stream_type: StreamType,
        /// It has audio.
        has_audio: bool,
        /// It has video.
        has_video: bool,
        /// Simulcast: its video layers, as the offer's `a=simulcast:send` names them (empty:
        /// one layer).
        layers: Vec<VideoLayer>,
    },
    /// `subscribe` to a remote stream's tracks.
    Subscribe {
        /// Whose stream.
        user_id: UserId,
        /// Which stream.
        stream_type: StreamType,
        /// Receive its audio.
        audio: bool,
        /// Receive its video.
        video: bool,
        /// Of a simulcast stream, the layer asked for (`None`: the server's default, big).
        video_type: Option<VideoStreamType>,
    },
}

impl LinkRequest {
    /// The `ice-restart` request that carries the restart offer `sdp` for this link.
    pub fn ice_restart_message(&self, sdp: String) -> ClientMessage {
        let (link, user_id, stream_type) = match self {
            LinkRequest::Publish { stream_type, .. } => (LinkDirection::Uplink, None, *stream_type),
            LinkRequest::Subscribe {
                user_id,
                stream_type,
                ..
            } => (LinkDirection::Downlink, Some(user_id.clone()), *stream_type),
        };
        ClientMessage::IceRestart(IceRestartRequest {
            link,
            user_id,
            stream_type,
            sdp,
        })
    }

    /// The request that carries the offer `sdp`.
    pub fn message(&self, sdp: String) -> ClientMessage {
        match self.clone() {
            LinkRequest::Publish {
                stream_type,
                has_audio,
                has_video,
                layers,
            } => ClientMessage::Publish(PublishRequest {
                stream_type,
                has_audio,
                has_video,
                sdp: Some(sdp),
                layers,
            }),
            LinkRequest::Subscribe {
                user_id,
                stream_type,
                audio,
                video,
                video_type,
            } => ClientMessage::Subscribe(SubscribeRequest {
                user_id,
                stream_type,
                audio,
                video,
                sdp: Some(sdp),
                video_type,
            }),
        }
    }
}

pub use crate::media::link::{PIPELINE_RESTART_WINDOW, PIPELINE_RESTARTS};

/// What a downlink's receive pipeline is built for ([`Output::BuildPipeline`]).
#[derive(Clone, Debug)]
pub struct PipelineSpec {
    /// Whose stream.
    pub user_id: UserId,
    /// Which stream.
    pub stream_type: StreamType,
    /// Receive audio.
    pub audio: bool,
    /// The video codec to decode, when receiving video.
    pub video_codec: Option<rtcroom_pipelines::VideoCodec>,
    /// Where the media goes.
    pub output: SubscribeOutput,
    /// The jitter buffer's latency.
    pub jitter_latency: Duration,
}

/// The media handle a link carries.
pub trait LinkMedia: Clone {
    /// The same stream (for `unpublish`: only the stream that was published ends).
    fn same(&self, other: &Self) -> bool;
}

/// A user's request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Call<M> {
    /// Enter a room.
    Join(JoinParams),
    /// Leave the room.
    Leave,
    /// Change role (live mode).
    SwitchRole(Role),
    /// Publish a local stream.
    Publish {
        /// The local stream.
        media: M,
        /// Its type.
        stream_type: StreamType,
        /// It has audio.
        has_audio: bool,
        /// It has video.
        has_video: bool,
        /// Simulcast (a small stream): its video layers, as its offer names them (empty: one
        /// layer). Sent with the publish; the server's `layers-wanted` about them becomes
        /// [`Output::SetActiveLayers`].
        layers: Vec<VideoLayer>,
    },
    /// Stop publishing a local stream.
    Unpublish {
        /// The local stream.
        media: M,
        /// Its type.
        stream_type: StreamType,
    },
    /// Subscribe to a remote stream.
    Subscribe(SubscribeParams),
    /// Stop a subscription.
    Unsubscribe {
        /// Whose stream.
        user_id: UserId,
        /// Which stream.
        stream_type: StreamType,
    },
    /// A published stream's audio or video was (un)muted.
    Mute {
        /// Which stream.
        stream_type: StreamType,
        /// Audio or video.
        kind: MediaKind,
        /// Muted or not.
        muted: bool,
    },
    /// Send a custom message to the room.
    CustomMessage {
        /// Command id, 1–10.
        cmd_id: u8,
        /// The message.
        data: Vec<u8>,
    },
    /// Send an SEI message in a published stream's video; answered by the driver after
    /// [`Output::InsertSei`] (or by the core when refused).
    SendSei {
        /// Which published stream.
        stream_type: StreamType,
        /// SEI payload type, 5 or 243.
        payload_type: u8,
        /// The message.
        data: Vec<u8>,
    },
    /// Receive the big or the small layer of a remote simulcast stream (TRTC's
    /// `setRemoteVideoStreamType`): told to the server for a subscription of a stream with
    /// layers, and kept for the stream's later subscriptions.
    SetRemoteVideoStreamType {
        /// Whose stream.
        user_id: UserId,
        /// Which stream.
        stream_type: StreamType,
        /// Big or small.
        video_type: VideoStreamType,
    },
}

/// Something that happened, for [`ClientCore::handle_input`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Input<M> {
    /// The user asked for something; answered by [`Output::Reply`] with the same `call`
    /// (except [`Call::Leave`], answered by the driver after [`Output::Leave`]).
    Call {
        /// The call's number.
        call: CallId,
        /// What it asks.
        request: Call<M>,
    },
    /// A connection attempt ([`Output::Connect`]) ended: the join answer, or why not.
    AttemptDone {
        /// The attempt's generation.
        generation: Generation,
        /// The answer.
        result: Result<JoinResult, SignalError>,
    },
    /// The server sent an event on connection `generation`.
    Server {
        /// The connection.
        generation: Generation,
        /// The event.
        event: ServerEvent,
    },
    /// Connection `generation` is gone.
    SignalLost {
        /// The connection.
        generation: Generation,
        /// Why.
        reason: String,
    },
    /// The reply to [`Output::Request`] `id`.
    Replied {
        /// The request.
        id: RequestId,
        /// Its reply.
        result: Result<Option<ReplyData>, SignalError>,
    },
    /// A downlink's receive side ([`Output::BuildPipeline`]) exists, or could not be made.
    /// Its pipeline may still be starting: the link negotiates meanwhile, and
    /// [`Input::PipelineStarted`] follows.
    PipelineBuilt {
        /// The link.
        key: LinkKey,
        /// The id the build was asked with.
        pc_id: PcId,
        /// The receive side.
        result: Result<M, RtcError>,
    },
    /// A downlink's pipeline started (or could not): a subscription is answered once its
    /// pipeline started and its peer connection connected.
    PipelineStarted {
        /// The link.
        key: LinkKey,
        /// The id the build was asked with.
        pipeline: PcId,
        /// Started, or why not.
        result: Result<(), RtcError>,
    },
    /// A negotiation ([`Output::Negotiate`]) ended: on success the driver holds peer
    /// connection `pc_id`, connected.
    Negotiated {
        /// The link.
        key: LinkKey,
        /// The peer connection.
        pc_id: PcId,
        /// Connected, or why not.
        result: Result<(), RtcError>,
        /// For uplinks: the kinds muted locally now (the server starts a stream unmuted).
        muted: Vec<MediaKind>,
    },
    /// A downlink's receive pipeline failed (or its watcher died): the core rebuilds it
    /// within [`PIPELINE_RESTARTS`] per [`PIPELINE_RESTART_WINDOW`] and renegotiates.
    PipelineFailed {
        /// The link.
        key: LinkKey,
        /// Which pipeline (the id of its [`Output::BuildPipeline`]).
        pipeline: PcId,
        /// What failed.
        error: String,
    },
    /// An ICE restart ([`Output::RestartIce`]) ended: on success the peer connection is
    /// connected again (same tracks, same pipeline).
    IceRestarted {
        /// The link.
        key: LinkKey,
        /// Its peer connection.
        pc_id: PcId,
        /// Connected again, or why not.
        result: Result<(), RtcError>,
    },
    /// A peer connection reports.
    Pc {
        /// Which.
        pc_id: PcId,
        /// What.
        kind: PcEventKind,
    },
    /// A deadline from [`ClientCore::poll_timeout`] passed.
    Timeout,
    /// The user's handle is gone: leave (best effort), close everything.
    Shutdown,
}

/// What the driver must do, from [`ClientCore::poll_output`], in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output<M> {
    /// Tell the user.
    Event(ClientEvent),
    /// The room view changed (before the events that changed it): a member became visible
    /// or went away. Views are updated one change at a time, never copied whole: a join into
    /// a room of N members is N changes, not N copies of N members.
    ViewMember {
        /// Who.
        user_id: UserId,
        /// Visible now.
        present: bool,
    },
    /// A member's main stream mute state changed, or its main stream went away (`None`).
    ViewMuted {
        /// Whose.
        user_id: UserId,
        /// Its state now.
        state: Option<RemoteMutedState>,
    },
    /// The room view is empty now (left, removed, gave up).
    ViewCleared,
    /// Answer a user call.
    Reply {
        /// The call.
        call: CallId,
        /// Its outcome.
        result: Result<(), RtcError>,
    },
    /// Open a signalling connection, send `join` on it within `timeout` (connect included),
    /// and report [`Input::AttemptDone`]. Events and loss on it carry `generation`.
    Connect {
        /// The connection's generation.
        generation: Generation,
        /// The join request.
        join: ClientMessage,
        /// Connect + answer within this.
        timeout: Duration,
    },
    /// Start heartbeats on the current connection.
    StartHeartbeat {
        /// Interval.
        interval: Duration,
        /// Silent intervals before the connection counts as lost.
        missed: u32,
    },
    /// Close the current signalling connection, if any (its late reports are stale).
    CloseSignaling,
    /// Leaving: take the current connection, send `leave` on it when `send_leave` (awaiting
    /// the reply only when there is a `call`), close it, then answer `call` with success
    /// (leaving succeeds locally whatever the server says).
    Leave {
        /// The user's `leave()`, or `None` at shutdown.
        call: Option<CallId>,
        /// Tell the server first.
        send_leave: bool,
    },
    /// Send a request on the current connection and report [`Input::Replied`] (a lost or
    /// missing connection: `SignalError::Lost`).
    Request {
        /// The request's id.
        id: RequestId,
        /// The request.
        msg: ClientMessage,
        /// Its kind (timeout error).
        kind: RequestKind,
        /// Its timeout.
        timeout: Duration,
    },
    /// Make a downlink's receive side and report [`Input::PipelineBuilt`] at once, then
    /// start its pipeline (blocking, elsewhere) and report [`Input::PipelineStarted`].
    BuildPipeline {
        /// The link.
        key: LinkKey,
        /// Reserved id, to report back.
        pc_id: PcId,
        /// What to build.
        spec: PipelineSpec,
    },
    /// Create peer connection `pc_id` for `media`, send its offer as `request`, apply the
    /// answer, wait until connected, and report [`Input::Negotiated`].
    Negotiate {
        /// The link.
        key: LinkKey,
        /// The new peer connection's id.
        pc_id: PcId,
        /// The link's media.
        media: M,
        /// What the offer is sent as.
        request: LinkRequest,
    },
    /// Restart ICE on the link's peer connection `pc_id` (it lost its path): make an offer
    /// with new ICE credentials, send it as `request`'s `ice-restart`, apply the answer,
    /// wait until connected again, and report [`Input::IceRestarted`].
    RestartIce {
        /// The link.
        key: LinkKey,
        /// Its peer connection.
        pc_id: PcId,
        /// The link's request (names the link to the server).
        request: LinkRequest,
    },
    /// Queue an SEI message for the next frame of `media` (an uplink's local stream) and
    /// answer `call` with the outcome.
    InsertSei {
        /// The user's call.
        call: CallId,
        /// The published stream.
        media: M,
        /// SEI payload type.
        payload_type: u8,
        /// The message.
        data: Vec<u8>,
    },
    /// Encode only these layers of an uplink's simulcast video (the server's `layers-wanted`,
    /// dynacast), pause the others; a layer that resumes starts with a keyframe. Every layer
    /// again when the link negotiates a new peer connection (the server starts a new
    /// publication with every layer wanted).
    SetActiveLayers {
        /// The link.
        key: LinkKey,
        /// Its local stream.
        media: M,
        /// The rids of the layers to encode (a subset of the published ones, in their order;
        /// may be empty: nobody receives the video).
        active: Vec<String>,
    },
    /// Close peer connection `pc_id`.
    ClosePc {
        /// Which.
        pc_id: PcId,
    },
    /// A link's peer connection is up (an uplink's stream now goes to the room).
    LinkUp {
        /// The link.
        key: LinkKey,
        /// Its media.
        media: M,
    },
    /// A link ended for good (its pipeline stops now: a recording is finalised).
    LinkEnded {
        /// The link.
        key: LinkKey,
        /// Its media.
        media: M,
    },
}

/// Which kind of connection attempt is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    /// The user's join.
    Join,
    /// Reconnect attempt n: connect and re-join silently.
    Rejoin(u32),
}

/// Where a link's peer connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkPhase {
    /// No peer connection: a downlink waits for its stream to be published again, or a
    /// failed link waits for its rebuild.
    Waiting,
    /// A downlink's pipeline is being built.
    Building,
    /// An offer/answer exchange is running.
    Negotiating,
    /// Connected (or was, until reported otherwise).
    Up,
}

/// One published or subscribed stream.
struct Link<M> {
    /// `None` only while a downlink's pipeline is built.
    media: Option<M>,
    request: LinkRequest,
    /// For downlinks: the subscription as asked for, and the codec its pipeline decodes.
    subscription: Option<(SubscribeParams, Option<VideoCodec>)>,
    pc_id: PcId,
    phase: LinkPhase,
    health: LinkHealth,
    /// StreamSubscribed was reported (downlinks; uplinks start `true`).
    announced: bool,
    /// The user's publish/subscribe, answered when the link first connects or fails.
    call: Option<CallId>,
    /// Downlinks: the id the current pipeline was built with (0 for uplinks).
    pipeline: PcId,
    /// Downlinks: the pipeline's restart budget (carried over its rebuilds).
    restarts: RestartBudget,
    /// The pipeline started (always true for uplinks).
    pipeline_ready: bool,
    /// An ICE restart of the current peer connection is running.
    restarting_ice: bool,
    /// Uplinks with simulcast: the rids encoded now, when the server paused some (`None`:
    /// every layer).
    active_layers: Option<Vec<String>>,
}

/// A timer the core set.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Timer {
    /// Run reconnect attempt `attempt` if still in that phase on that generation.
    Reconnect {
        generation: Generation,
        attempt: u32,
    },
    /// Rebuild the link if its peer connection is still `pc_id` and not up.
    Rebuild { key: LinkKey, pc_id: PcId },
    /// The attempt of that generation has run out of time.
    JoinDeadline { generation: Generation },
}

/// What a pending signalling request answers.
#[derive(Debug)]
enum Pending {
    /// switch-role: on success the role is kept for re-joins.
    SwitchRole {
        call: CallId,
        role: Role,
        generation: Generation,
    },
    /// A room request whose refusal is the user's error (mute, custom message).
    Room { call: Option<CallId> },
    /// A request whose failure changes nothing (unpublish, unsubscribe).
    BestEffort { call: Option<CallId> },
}

/// The heartbeat interval: the configured one, or the server's (`heartbeatIntervalS` in the
/// join answer) when that is shorter, so a server that wants more never evicts us.
pub fn heartbeat_interval(configured: Duration, server_s: u32) -> Duration {
    if server_s == 0 {
        configured
    } else {
        configured.min(Duration::from_secs(u64::from(server_s)))
    }
}

/// A publication's simulcast layers: none, or 2 to [`MAX_LAYERS`] valid layers with distinct
/// rids, of a stream with video. INVALID_PARAMETER otherwise.
fn check_layers(has_video: bool, layers: &[VideoLayer]) -> Result<(), RtcError> {
    if layers.is_empty() {
        return Ok(());
    }
    let bad = |why: String| Err(RtcError::invalid_parameter(None, why));
    if !has_video {
        return bad("simulcast layers need a video track".into());
    }
    if layers.len() < 2 || layers.len() > MAX_LAYERS {
        return bad(format!(
            "{} simulcast layers: 2 to {MAX_LAYERS} are possible",
            layers.len()
        ));
    }
    for (i, layer) in layers.iter().enumerate() {
        layer.validate().or_else(bad)?;
        if layers[..i].iter().any(|l| l.rid == layer.rid) {
            return bad(format!("the layer rid {:?} is repeated", layer.rid));
        }
    }
    Ok(())
}

/// Output queue capacity an idle core keeps.
const OUTPUT_QUEUE_KEPT: usize = 16;

/// The client's logic; see the module documentation.
pub struct ClientCore<M> {
    settings: Arc<ClientSettings>,
    life: Lifecycle,
    room: RoomState,
    params: Option<JoinParams>,
    /// The user's join, answered when the first attempt ends.
    pending_join: Option<CallId>,
    /// The current connection; reports and timers of older ones are ignored.
    generation: Generation,
    /// The attempt running on the current generation.
    in_flight: Option<Attempt>,
    /// A joined signalling connection is up (requests can be sent).
    signaling_up: bool,
    /// The current connection already reported itself lost.
    current_lost: bool,
    /// Server events that arrived before the join answer was processed.
    early_events: Vec<ServerEvent>,
    links: HashMap<LinkKey, Link<M>>,
    next_pc_id: PcId,
    requests: HashMap<RequestId, Pending>,
    next_request: RequestId,
    timers: Vec<(Instant, Timer)>,
    out: VecDeque<Output<M>>,
    /// TRTC's limits on SEI messages sent.
    sei_budget: MessageBudget,
    /// `setRemoteVideoStreamType` choices, for subscriptions made later (this session).
    remote_video_types: HashMap<(UserId, StreamType), VideoStreamType>,
    now: Instant,
    span: tracing::Span,
}

impl<M: LinkMedia + std::fmt::Debug> ClientCore<M> {
    /// A client with these settings; `now` starts its clock. Logs go to `span`.
    pub fn new(settings: Arc<ClientSettings>, now: Instant, span: tracing::Span) -> Self {
        ClientCore {
            life: Lifecycle::new(settings.reconnect),
            settings,
            room: RoomState::new(),
            params: None,
            pending_join: None,
            generation: 0,
            in_flight: None,
            signaling_up: false,
            current_lost: false,
            early_events: Vec::new(),
            links: HashMap::new(),
            next_pc_id: 1,
            requests: HashMap::new(),
            next_request: 1,
            timers: Vec::new(),
            out: VecDeque::new(),
            sei_budget: MessageBudget::default(),
            remote_video_types: HashMap::new(),
            now,
            span,
        }
    }

    /// The join phase.
    pub fn phase(&self) -> Phase {
        self.life.phase()
    }

    /// The current connection's generation (a connection opened for an older one is stale).
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The links: key, media (none while a pipeline is built), and the peer connection id
    /// when connected.
    pub fn links(&self) -> impl Iterator<Item = (&LinkKey, Option<&M>, Option<PcId>)> {
        self.links.iter().map(|(k, l)| {
            (
                k,
                l.media.as_ref(),
                (l.phase == LinkPhase::Up).then_some(l.pc_id),
            )
        })
    }

    /// The id of a downlink's current pipeline (see [`Output::BuildPipeline`]).
    pub fn pipeline_of(&self, key: &LinkKey) -> Option<PcId> {
        self.links
            .get(key)
            .filter(|_| matches!(key, LinkKey::Down(..)))
            .map(|l| l.pipeline)
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output<M>> {
        let out = self.out.pop_front();
        if out.is_none() && self.out.capacity() > OUTPUT_QUEUE_KEPT {
            // A join into a full room queues hundreds of events once; do not keep the room
            // for them in every idle client.
            self.out.shrink_to(OUTPUT_QUEUE_KEPT);
        }
        out
    }

    /// When the core next wants [`Input::Timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().map(|(at, _)| *at).min()
    }

    /// Take one input that happened at `now`.
    pub fn handle_input(&mut self, input: Input<M>, now: Instant) {
        self.now = self.now.max(now);
        let _enter = self.span.clone().entered();
        match input {
            Input::Call { call, request } => self.call(call, request),
            Input::AttemptDone { generation, result } => self.attempt_done(generation, result),
            Input::Server { generation, event } if generation == self.generation => {
                self.on_server_event(event)
            }
            Input::SignalLost { generation, reason } if generation == self.generation => {
                self.on_lost(reason)
            }
            Input::Server { .. } | Input::SignalLost { .. } => {}
            Input::Replied { id, result } => self.replied(id, result),
            Input::PipelineBuilt { key, pc_id, result } => self.pipeline_built(key, pc_id, result),
            Input::PipelineStarted {
                key,
                pipeline,
                result,
            } => self.pipeline_started(key, pipeline, result),
            Input::Negotiated {
                key,
                pc_id,
                result,
                muted,
            } => self.negotiated(key, pc_id, result, muted),
            Input::PipelineFailed {
                key,
                pipeline,
                error,
            } => self.pipeline_failed(key, pipeline, error),
            Input::IceRestarted { key, pc_id, result } => self.ice_restarted(key, pc_id, result),
            Input::Pc { pc_id, kind } => self.on_pc(pc_id, kind),
            Input::Timeout => self.fire_timers(),
            Input::Shutdown => self.shutdown(),
        }
    }

    // ---- outputs -------------------------------------------------------------------

    fn emit(&mut self, event: ClientEvent) {
        tracing::debug!(?event, "event");
        self.out.push_back(Output::Event(event));
    }

    fn report(&mut self, change: StateChange) {
        tracing::info!(prev = %change.prev, state = %change.state, "connection state");
        self.emit(ClientEvent::ConnectionStateChanged {
            prev: change.prev,
            state: change.state,
        });
    }

    /// The view after the room was cleared.
    fn refresh_view(&mut self) {
        self.out.push_back(Output::ViewCleared);
    }

    /// The view changes `events` (from the room state, already applied) stand for.
    fn view_changes(&mut self, events: &[ClientEvent]) {
        for e in events {
            let muted_of = match e {
                ClientEvent::PeerJoin { user_id } | ClientEvent::PeerLeave { user_id, .. } => {
                    let present = matches!(e, ClientEvent::PeerJoin { .. });
                    self.out.push_back(Output::ViewMember {
                        user_id: user_id.clone(),
                        present,
                    });
                    continue;
                }
                ClientEvent::StreamAdded(s)
                | ClientEvent::StreamRemoved(s)
                | ClientEvent::StreamUpdated(s)
                    if s.stream_type == StreamType::Main =>
                {
                    &s.user_id
                }
                ClientEvent::MuteAudio { user_id }
                | ClientEvent::UnmuteAudio { user_id }
                | ClientEvent::MuteVideo { user_id }
                | ClientEvent::UnmuteVideo { user_id } => user_id,
                _ => continue,
            };
            self.out.push_back(Output::ViewMuted {
                user_id: muted_of.clone(),
                state: self.room.muted_state_of(muted_of),
            });
        }
    }

    fn answer(&mut self, call: Option<CallId>, result: Result<(), RtcError>) {
        match call {
            Some(call) => self.out.push_back(Output::Reply { call, result }),
            None => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "a request nobody waits for failed (auto-subscribe, re-sent mute)");
                }
            }
        }
    }

    fn request(&mut self, msg: ClientMessage, kind: RequestKind, pending: Pending) {
        let id = self.next_request;
        self.next_request += 1;
        self.requests.insert(id, pending);
        self.out.push_back(Output::Request {
            id,
            msg,
            kind,
            timeout: self.settings.request_timeout,
        });
    }

    // ---- calls ---------------------------------------------------------------------

    fn call(&mut self, call: CallId, request: Call<M>) {
        match request {
            Call::Join(params) => self.join(call, params),
            Call::Leave => self.leave(call),
            Call::SwitchRole(role) => self.switch_role(call, role),
            Call::Publish {
                media,
                stream_type,
                has_audio,
                has_video,
                layers,
            } => {
                let request = LinkRequest::Publish {
                    stream_type,
                    has_audio,
                    has_video,
                    layers,
                };
                self.publish(call, media, request)
            }
            Call::Unpublish { media, stream_type } => self.unpublish(call, media, stream_type),
            Call::Subscribe(params) => self.subscribe(params, Some(call)),
            Call::Unsubscribe {
                user_id,
                stream_type,
            } => self.unsubscribe(call, user_id, stream_type),
            Call::Mute {
                stream_type,
                kind,
                muted,
            } => self.mute(call, stream_type, kind, muted),
            Call::CustomMessage { cmd_id, data } => self.custom_message(call, cmd_id, data),
            Call::SendSei {
                stream_type,
                payload_type,
                data,
            } => self.send_sei(call, stream_type, payload_type, data),
            Call::SetRemoteVideoStreamType {
                user_id,
                stream_type,
                video_type,
            } => self.set_remote_video_stream_type(call, user_id, stream_type, video_type),
        }
    }

    fn join(&mut self, call: CallId, params: JoinParams) {
        let change = match self.life.join() {
            Ok(c) => c,
            Err(e) => return self.answer(Some(call), Err(e)),
        };
        self.span
            .record("room", tracing::field::display(&params.room_id));
        self.params = Some(params);
        self.report(change);
        self.pending_join = Some(call);
        self.start_attempt(Attempt::Join);
    }

    fn leave(&mut self, call: CallId) {
        let plan = match self.life.leave() {
            Ok(p) => p,
            Err(e) => return self.answer(Some(call), Err(e)),
        };
        // The driver takes the connection before the drop below would close it.
        self.out.push_back(Output::Leave {
            call: Some(call),
            send_leave: plan.send_leave && self.signaling_up,
        });
        self.drop_connection();
        if plan.cancel_join
            && let Some(join) = self.pending_join.take()
        {
            self.answer(
                Some(join),
                Err(RtcError::new(
                    ErrorCode::JoinRoomFailed,
                    "join cancelled by leave()",
                )),
            );
        }
        self.close_media();
        self.room.clear();
        self.remote_video_types.clear();
        self.refresh_view();
        self.report(plan.change);
    }

    fn shutdown(&mut self) {
        if self.life.phase() == Phase::Joined && self.signaling_up {
            self.out.push_back(Output::Leave {
                call: None,
                send_leave: true,
            });
        }
        self.drop_connection();
        self.close_media();
        self.timers.clear();
    }

    fn switch_role(&mut self, call: CallId, role: Role) {
        if let Err(e) = self.life.require_joined("switchRole") {
            return self.answer(Some(call), Err(e));
        }
        if self.settings.mode != Mode::Live {
            return self.answer(
                Some(call),
                Err(RtcError::invalid_operation(
                    None,
                    "switchRole() is only available in live mode",
                )),
            );
        }
        if !self.signaling_up {
            return self.answer(
                Some(call),
                Err(RtcError::new(
                    ErrorCode::SwitchRoleFailed,
                    "no signalling connection",
                )),
            );
        }
        let generation = self.generation;
        self.request(
            ClientMessage::SwitchRole { role },
            RequestKind::SwitchRole,
            Pending::SwitchRole {
                call,
                role,
                generation,
            },
        );
    }

    /// `request` is a [`LinkRequest::Publish`].
    fn publish(&mut self, call: CallId, media: M, request: LinkRequest) {
        let LinkRequest::Publish {
            stream_type,
            has_video,
            layers,
            ..
        } = &request
        else {
            return;
        };
        let stream_type = *stream_type;
        if let Err(e) = check_layers(*has_video, layers) {
            return self.answer(Some(call), Err(e));
        }
        if let Err(e) = self.life.require_joined("publish") {
            return self.answer(Some(call), Err(e));
        }
        let role = self.params.as_ref().map(|p| p.role).unwrap_or(Role::Anchor);
        if self.settings.mode == Mode::Live && role == Role::Audience {
            return self.answer(
                Some(call),
                Err(RtcError::invalid_operation(
                    Some(extra::AUDIENCE_ROLE),
                    "an audience member cannot publish: switchRole('anchor') first",
                )),
            );
        }
        let key = LinkKey::Up(stream_type);
        if self.links.contains_key(&key) {
            return self.answer(
                Some(call),
                Err(RtcError::invalid_operation(
                    Some(extra::REPEATED_CALL),
                    format!("a {stream_type:?} stream is already published"),
                )),
            );
        }
        self.links.insert(
            key.clone(),
            Link {
                media: Some(media),
                request,
                subscription: None,
                pc_id: 0,
                phase: LinkPhase::Waiting,
                health: LinkHealth::new(LinkKind::Uplink),
                announced: true,
                call: Some(call),
                pipeline: 0,
                restarts: RestartBudget::default(),
                pipeline_ready: true,
                restarting_ice: false,
                active_layers: None,
            },
        );
        self.negotiate_link(key);
    }

    fn unpublish(&mut self, call: CallId, media: M, stream_type: StreamType) {
        if let Err(e) = self.life.require_joined("unpublish") {
            return self.answer(Some(call), Err(e));
        }
        let key = LinkKey::Up(stream_type);
        let published_here = self
            .links
            .get(&key)
            .and_then(|l| l.media.as_ref())
            .is_some_and(|m| m.same(&media));
        if !published_here {
            return self.answer(
                Some(call),
                Err(RtcError::invalid_operation(
                    Some(extra::REPEATED_CALL),
                    "this stream is not published",
                )),
            );
        }
        self.remove_link(&key);
        self.best_effort(call, ClientMessage::Unpublish { stream_type });
    }

    /// Send a request whose failure changes nothing locally (the server cleans up itself
    /// when the peer connection goes away).
    fn best_effort(&mut self, call: CallId, msg: ClientMessage) {
        if self.signaling_up {
            self.request(
                msg,
                RequestKind::Other,
                Pending::BestEffort { call: Some(call) },
            );
        } else {
            self.answer(Some(call), Ok(()));
        }
    }

    fn stream_info(&self, user_id: &UserId, stream_type: StreamType) -> Option<StreamInfo> {
        self.room
            .streams()
            .find(|s| s.user_id == *user_id && s.stream_type == stream_type)
            .cloned()
    }

    /// Subscribe (the user's call, an auto-subscription, or subscribing again): builds the
    /// pipeline, then negotiates. A subscription of the same stream is replaced.
    fn subscribe(&mut self, params: SubscribeParams, call: Option<CallId>) {
        if let Err(e) = self.life.require_joined("subscribe") {
            return self.answer(call, Err(e));
        }
        if !params.audio && !params.video {
            return self.answer(
                call,
                Err(RtcError::invalid_operation(
                    None,
                    "subscribe() needs audio or video (or both)",
                )),
            );
        }
        let Some(info) = self.stream_info(&params.user_id, params.stream_type) else {
            return self.answer(
                call,
                Err(RtcError::new(
                    ErrorCode::RemoteStreamNotExist,
                    format!(
                        "{} has no {:?} stream published",
                        params.user_id, params.stream_type
                    ),
                )),
            );
        };
        let audio = params.audio && info.has_audio;
        let video = params.video && info.has_video;
        if !audio && !video {
            return self.answer(
                call,
                Err(RtcError::invalid_operation(
                    None,
                    "the stream has none of the tracks asked for",
                )),
            );
        }
        // The stream's codec, as the server negotiated it with the publisher (H.264 for a
        // server that does not say).
        let video_codec = video.then_some(match info.video_codec {
            Some(VideoCodec::Vp8) => rtcroom_pipelines::VideoCodec::Vp8,
            Some(VideoCodec::H264) | None => rtcroom_pipelines::VideoCodec::H264,
        });
        let key = LinkKey::Down(params.user_id.clone(), params.stream_type);
        self.remove_link(&key);
        let reserve = self.next_pc();
        let spec = PipelineSpec {
            user_id: params.user_id.clone(),
            stream_type: params.stream_type,
            audio,
            video_codec,
            output: params.output.clone(),
            jitter_latency: params.jitter_latency,
        };
        self.links.insert(
            key.clone(),
            Link {
                media: None,
                request: LinkRequest::Subscribe {
                    user_id: params.user_id.clone(),
                    stream_type: params.stream_type,
                    audio,
                    video,
                    video_type: params.video_type.or_else(|| {
                        self.remote_video_types
                            .get(&(params.user_id.clone(), params.stream_type))
                            .copied()
                    }),
                },
                subscription: Some((params, info.video_codec)),
                pc_id: reserve,
                phase: LinkPhase::Building,
                health: LinkHealth::new(LinkKind::Downlink),
                announced: false,
                call,
                pipeline: reserve,
                restarts: RestartBudget::default(),
                pipeline_ready: false,
                restarting_ice: false,
                active_layers: None,
            },
        );
        self.out.push_back(Output::BuildPipeline {
            key,
            pc_id: reserve,
            spec,
        });
    }

    fn unsubscribe(&mut self, call: CallId, user_id: UserId, stream_type: StreamType) {
        if let Err(e) = self.life.require_joined("unsubscribe") {
            return self.answer(Some(call), Err(e));
        }
        if !self.remove_link(&LinkKey::Down(user_id.clone(), stream_type)) {
            return self.answer(
                Some(call),
                Err(RtcError::invalid_operation(
                    None,
                    format!("not subscribed to {user_id}'s {stream_type:?} stream"),
                )),
            );
        }
        self.best_effort(
            call,
            ClientMessage::Unsubscribe {
                user_id,
                stream_type,
            },
        );
    }

    fn mute(&mut self, call: CallId, stream_type: StreamType, kind: MediaKind, muted: bool) {
        if self.life.phase() != Phase::Joined
            || !self.links.contains_key(&LinkKey::Up(stream_type))
            || !self.signaling_up
        {
            // Not published (or reconnecting): the local flag is all there is.
            return self.answer(Some(call), Ok(()));
        }
        self.request(
            ClientMessage::Mute {
                stream_type,
                kind,
                muted,
            },
            RequestKind::Other,
            Pending::Room { call: Some(call) },
        );
    }

    /// Checked here first (INVALID_PARAMETER), then by the server (role, rate).
    fn custom_message(&mut self, call: CallId, cmd_id: u8, data: Vec<u8>) {
        if let Err(e) = rtcroom_protocol::signal::custom_message::check(cmd_id, &data) {
            return self.answer(Some(call), Err(e));
        }
        if let Err(e) = self.life.require_joined("sendCustomMessage") {
            return self.answer(Some(call), Err(e));
        }
        if !self.signaling_up {
            return self.answer(
                Some(call),
                Err(RtcError::invalid_operation(
                    Some(extra::NOT_ENTERED_ROOM),
                    "not connected to the room",
                )),
            );
        }
        self.request(
            ClientMessage::CustomMessage { cmd_id, data },
            RequestKind::Other,
            Pending::Room { call: Some(call) },
        );
    }

    /// An SEI message rides the next frame of a published stream's H.264 video: checked
    /// (type, size: INVALID_PARAMETER), limited like custom messages (30 and 8 KB per second:
    /// INVALID_OPERATION, not sent) and handed to the stream.
    fn send_sei(&mut self, call: CallId, stream_type: StreamType, payload_type: u8, data: Vec<u8>) {
        if let Err(e) = rtcroom_pipelines::SeiMessage::check(payload_type, &data) {
            return self.answer(
                Some(call),
                Err(RtcError::invalid_parameter(Some(extra::PARAM_RANGE), e)),
            );
        }
        if let Err(e) = self.life.require_joined("sendSEIMessage") {
            return self.answer(Some(call), Err(e));
        }
        let media = self
            .links
            .get(&LinkKey::Up(stream_type))
            .filter(|l| {
                l.phase == LinkPhase::Up
                    && matches!(
                        l.request,
                        LinkRequest::Publish {
                            has_video: true,
                            ..
                        }
                    )
            })
            .and_then(|l| l.media.clone());
        let Some(media) = media else {
            return self.answer(
                Some(call),
                Err(RtcError::invalid_operation(
                    None,
                    "SEI messages ride the video: publish a stream with H.264 video first",
                )),
            );
        };
        if !self.sei_budget.take(self.now, data.len()) {
            return self.answer(
                Some(call),
                Err(RtcError::invalid_operation(
                    None,
                    "over TRTC's SEI limits (30 messages and 8 KB per second); not sent",
                )),
            );
        }
        self.out.push_back(Output::InsertSei {
            call,
            media,
            payload_type,
            data,
        });
    }

    /// TRTC's `setRemoteVideoStreamType`: kept for this stream's subscriptions from now on
    /// (a subscription made later asks for that layer, and so does a subscription made
    /// again), and told to the server at once for a subscription of a stream with layers
    /// (its refusal is the caller's error). A stream without layers has nothing to switch:
    /// nothing is sent, as TRTC's SDK only switches a stream that has a small one.
    fn set_remote_video_stream_type(
        &mut self,
        call: CallId,
        user_id: UserId,
        stream_type: StreamType,
        video_type: VideoStreamType,
    ) {
        if let Err(e) = self.life.require_joined("setRemoteVideoStreamType") {
            return self.answer(Some(call), Err(e));
        }
        self.remote_video_types
            .insert((user_id.clone(), stream_type), video_type);
        let has_layers = self
            .stream_info(&user_id, stream_type)
            .is_some_and(|s| !s.layers.is_empty());
        let signaling_up = self.signaling_up;
        let key = LinkKey::Down(user_id.clone(), stream_type);
        let Some(link) = self.links.get_mut(&key) else {
            return self.answer(Some(call), Ok(()));
        };
        if let Some((params, _)) = link.subscription.as_mut() {
            params.video_type = Some(video_type);
        }
        let LinkRequest::Subscribe {
            video,
            video_type: asked,
            ..
        } = &mut link.request
        else {
            return self.answer(Some(call), Ok(()));
        };
        *asked = Some(video_type);
        // Only a subscription that the server knows (its offer went out) is switched by a
        // request; one still to be negotiated asks for the layer in its `subscribe`.
        let known = matches!(link.phase, LinkPhase::Negotiating | LinkPhase::Up);
        if !(*video && known && has_layers && signaling_up) {
            return self.answer(Some(call), Ok(()));
        }
        self.request(
            ClientMessage::SetRemoteVideoStreamType {
                user_id,
                stream_type,
                video_type,
            },
            RequestKind::Other,
            Pending::Room { call: Some(call) },
        );
    }

    /// The server's `layers-wanted` for a published simulcast stream: encode the layers it
    /// names (the others' encoders pause), when that changes anything. Rids the stream does
    /// not publish are ignored; an empty list pauses all of its video (nobody receives it).
    fn layers_wanted(&mut self, stream_type: StreamType, rids: Vec<String>) {
        let key = LinkKey::Up(stream_type);
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        let LinkRequest::Publish { layers, .. } = &link.request else {
            return;
        };
        if layers.is_empty() {
            return;
        }
        let active: Vec<String> = layers
            .iter()
            .filter(|l| rids.contains(&l.rid))
            .map(|l| l.rid.clone())
            .collect();
        let all = active.len() == layers.len();
        let now = if all { None } else { Some(active.clone()) };
        if now == link.active_layers {
            return;
        }
        link.active_layers = now;
        let Some(media) = link.media.clone() else {
            return;
        };
        tracing::info!(?stream_type, ?active, "layers wanted by the server");
        self.out
            .push_back(Output::SetActiveLayers { key, media, active });
    }

    fn replied(&mut self, id: RequestId, result: Result<Option<ReplyData>, SignalError>) {
        match self.requests.remove(&id) {
            None => {}
            Some(Pending::SwitchRole {
                call,
                role,
                generation,
            }) => {
                let result = result
                    .map(|_| ())
                    .map_err(|e| e.into_rtc_error(ErrorCode::SwitchRoleFailed));
                if result.is_ok()
                    && generation == self.generation
                    && let Some(p) = &mut self.params
                {
                    // A re-join after a reconnect keeps the new role.
                    p.role = role;
                }
                self.answer(Some(call), result);
            }
            Some(Pending::Room { call }) => {
                let result = result
                    .map(|_| ())
                    .map_err(|e| e.into_rtc_error(ErrorCode::SignalChannelError));
                self.answer(call, result);
            }
            Some(Pending::BestEffort { call }) => self.answer(call, Ok(())),
        }
    }

    // ---- connection ----------------------------------------------------------------

    fn join_request(&self) -> Option<ClientMessage> {
        let p = self.params.as_ref()?;
        let s = &self.settings;
        Some(ClientMessage::Join(JoinRequest {
            sdk_app_id: s.sdk_app_id,
            user_id: s.user_id.clone(),
            user_sig: s.user_sig.clone(),
            room_id: p.room_id.wire_text(),
            use_string_room_id: p.room_id.is_string(),
            mode: s.mode,
            role: Some(p.role),
            private_map_key: p.private_map_key.clone(),
            auto_subscribe: s.auto_subscribe,
        }))
    }

    /// Drop the current connection (on purpose) and make its late reports stale.
    fn drop_connection(&mut self) {
        self.generation += 1;
        self.in_flight = None;
        self.signaling_up = false;
        self.current_lost = false;
        self.early_events.clear();
        self.out.push_back(Output::CloseSignaling);
    }

    /// Open a connection and join on it (the user's join, or a silent re-join).
    fn start_attempt(&mut self, attempt: Attempt) {
        self.drop_connection();
        let Some(join) = self.join_request() else {
            // Attempts only start after a join stored its parameters.
            tracing::error!("connection attempt without join parameters");
            return;
        };
        let generation = self.generation;
        tracing::info!(?attempt, "connecting");
        self.in_flight = Some(attempt);
        let timeout = self.settings.join_timeout;
        self.timers
            .push((self.now + timeout, Timer::JoinDeadline { generation }));
        self.out.push_back(Output::Connect {
            generation,
            join,
            timeout,
        });
    }

    fn attempt_done(&mut self, generation: Generation, res: Result<JoinResult, SignalError>) {
        if generation != self.generation {
            // Superseded (left meanwhile); its connection was closed then.
            return;
        }
        let Some(attempt) = self.in_flight.take() else {
            // Already decided (timed out).
            return;
        };
        self.timers
            .retain(|(_, t)| *t != Timer::JoinDeadline { generation });
        match res {
            Ok(result) => self.attempt_succeeded(attempt, result),
            Err(error) => self.attempt_failed(attempt, error),
        }
    }

    fn attempt_succeeded(&mut self, attempt: Attempt, result: JoinResult) {
        let change = match attempt {
            Attempt::Join => self.life.join_succeeded(),
            Attempt::Rejoin(_) => self.life.rejoined(),
        };
        let Some(change) = change else {
            self.drop_connection();
            return;
        };
        self.signaling_up = true;
        self.out.push_back(Output::StartHeartbeat {
            interval: heartbeat_interval(
                self.settings.heartbeat_interval,
                result.heartbeat_interval_s,
            ),
            missed: self.settings.missed_heartbeats,
        });
        self.report(change);
        let events = self.room.joined(&result);
        let rejoin = matches!(attempt, Attempt::Rejoin(_));
        if rejoin {
            self.resume_media();
        }
        self.emit_room_events(events, rejoin);
        if let Some(call) = self.pending_join.take() {
            self.answer(Some(call), Ok(()));
        }
        for event in std::mem::take(&mut self.early_events) {
            self.on_server_event(event);
        }
        if self.current_lost {
            // The connection died between the answer and now.
            self.on_lost("lost right after joining".to_owned());
        }
    }

    fn attempt_failed(&mut self, attempt: Attempt, error: SignalError) {
        // Its connection's late reports (and a socket that opens after a timeout) are stale.
        self.drop_connection();
        match attempt {
            Attempt::Join => {
                if let Some(change) = self.life.join_failed() {
                    let e = error.into_join_error();
                    tracing::info!(error = %e, "join failed");
                    self.report(change);
                    let call = self.pending_join.take();
                    self.answer(call, Err(e));
                }
            }
            Attempt::Rejoin(n) if error.is_retryable() => {
                tracing::info!(attempt = n, %error, "reconnect attempt failed");
                let recovery = self.life.reconnect_failed();
                self.recover(recovery);
            }
            Attempt::Rejoin(_) => {
                if let Some(change) = self.life.rejoin_refused() {
                    let e = error.into_join_error();
                    tracing::warn!(error = %e, "re-join refused");
                    self.emit(ClientEvent::Error(e));
                    self.report(change);
                    self.close_media();
                    self.room.clear();
                    self.refresh_view();
                }
            }
        }
    }

    fn recover(&mut self, recovery: Recovery) {
        match recovery {
            Recovery::Ignore => {}
            Recovery::Retry {
                attempt,
                delay,
                change,
            } => {
                if let Some(change) = change {
                    self.report(change);
                }
                tracing::info!(attempt, ?delay, "reconnecting");
                let generation = self.generation;
                self.timers.push((
                    self.now + delay,
                    Timer::Reconnect {
                        generation,
                        attempt,
                    },
                ));
            }
            Recovery::GiveUp { error, change } => {
                tracing::warn!(%error, "giving up");
                self.drop_connection();
                self.emit(ClientEvent::Error(error));
                self.report(change);
                self.close_media();
                self.room.clear();
                self.refresh_view();
            }
        }
    }

    fn on_lost(&mut self, reason: String) {
        self.current_lost = true;
        if self.life.phase() == Phase::Joined {
            tracing::info!(%reason, "signalling lost");
            self.signaling_up = false;
            self.out.push_back(Output::CloseSignaling);
            let recovery = self.life.signal_lost();
            self.recover(recovery);
        }
        // While connecting or reconnecting the attempt's own result reports the failure.
    }

    fn on_server_event(&mut self, event: ServerEvent) {
        match self.life.phase() {
            Phase::Joined => {}
            Phase::Connecting | Phase::Reconnecting { .. } => {
                // Sent after the join answer, which is still on its way to us.
                self.early_events.push(event);
                return;
            }
            Phase::New | Phase::Disconnected(_) => return,
        }
        match event {
            ServerEvent::ClientBanned {
                reason: BanReason::UserTimeOut,
                message,
            } => {
                // TRTC re-joins silently after a heartbeat timeout.
                tracing::info!(%message, "timed out by the server; re-joining");
                self.on_lost("timed out by the server".to_owned());
            }
            ServerEvent::ClientBanned { reason, message } => {
                if let Some(change) = self.life.banned() {
                    tracing::info!(?reason, %message, "removed from the room");
                    self.drop_connection();
                    self.close_media();
                    self.room.clear();
                    self.refresh_view();
                    self.emit(ClientEvent::ClientBanned { reason, message });
                    self.report(change);
                }
            }
            ServerEvent::LayersWanted { stream_type, rids } => {
                self.layers_wanted(stream_type, rids)
            }
            ServerEvent::VideoLayerChanged {
                user_id,
                stream_type,
                rid,
                video_type,
                reason,
            } => {
                // Only for a subscription this client has (a late event for one that ended
                // is not news to anybody).
                if self
                    .links
                    .contains_key(&LinkKey::Down(user_id.clone(), stream_type))
                {
                    self.emit(ClientEvent::VideoLayerChanged {
                        user_id,
                        stream_type,
                        video_type,
                        rid,
                        reason,
                    });
                }
            }
            other => {
                let events = self.room.apply(other);
                self.emit_room_events(events, false);
            }
        }
    }

    /// Emit room events (after the view they lead to), then follow them with the media
    /// plane: drop subscriptions of removed streams, resume waiting ones, auto-subscribe to
    /// new ones. `rejoin`: the events are the difference found by a re-join; a stream missing
    /// then may only not be published again yet (the server restarted), so its subscription
    /// waits for it instead of ending.
    fn emit_room_events(&mut self, events: Vec<ClientEvent>, rejoin: bool) {
        let media: Vec<ClientEvent> = events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    ClientEvent::StreamAdded(_)
                        | ClientEvent::StreamRemoved(_)
                        | ClientEvent::StreamUpdated(_)
                )
            })
            .cloned()
            .collect();
        self.view_changes(&events);
        for e in events {
            self.emit(e);
        }
        for e in media {
            match e {
                ClientEvent::StreamAdded(info) => self.on_stream_added(info),
                ClientEvent::StreamUpdated(info) => self.on_stream_updated(info),
                ClientEvent::StreamRemoved(_) if rejoin => {}
                ClientEvent::StreamRemoved(info) => {
                    self.remove_link(&LinkKey::Down(info.user_id, info.stream_type));
                }
                _ => {}
            }
        }
    }

    // ---- media links ---------------------------------------------------------------

    fn next_pc(&mut self) -> PcId {
        self.next_pc_id += 1;
        self.next_pc_id
    }

    /// Close the link's peer connection, if it has one up (a negotiating one is closed when
    /// its stale result comes back).
    fn close_link_pc(out: &mut VecDeque<Output<M>>, link: &mut Link<M>) {
        if link.phase == LinkPhase::Up {
            out.push_back(Output::ClosePc { pc_id: link.pc_id });
        }
        if link.phase != LinkPhase::Building {
            link.phase = LinkPhase::Waiting;
        }
        link.restarting_ice = false;
    }

    /// End a link for good: close its peer connection, answer its waiting call, stop its
    /// media. Returns whether there was one.
    fn remove_link(&mut self, key: &LinkKey) -> bool {
        let Some(link) = self.links.remove(key) else {
            return false;
        };
        self.end_link(key.clone(), link);
        true
    }

    fn end_link(&mut self, key: LinkKey, mut link: Link<M>) {
        Self::close_link_pc(&mut self.out, &mut link);
        if let Some(call) = link.call.take() {
            self.answer(
                Some(call),
                Err(RtcError::invalid_operation(
                    None,
                    "the stream was unpublished or unsubscribed meanwhile",
                )),
            );
        }
        if let Some(media) = link.media {
            self.out.push_back(Output::LinkEnded { key, media });
        }
    }

    /// Close every link (leave, removal, final failure).
    fn close_media(&mut self) {
        let links: Vec<(LinkKey, Link<M>)> = self.links.drain().collect();
        for (key, link) in links {
            self.end_link(key, link);
        }
    }

    /// Start a new peer connection for the link (first negotiation, rebuild, resume after a
    /// re-join). Any current peer connection is closed; results of older ones are stale from
    /// here on. A waiting call stays with the link and is answered by this negotiation.
    fn negotiate_link(&mut self, key: LinkKey) {
        let id = self.next_pc();
        let signaling_up = self.signaling_up;
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        Self::close_link_pc(&mut self.out, link);
        let Some(media) = link.media.clone() else {
            // A downlink's pipeline is still being built; it negotiates when built.
            return;
        };
        link.pc_id = id;
        link.phase = LinkPhase::Negotiating;
        if link.active_layers.take().is_some()
            && let LinkRequest::Publish { layers, .. } = &link.request
        {
            // A new peer connection is a new publication: the server wants every layer
            // until it says otherwise.
            self.out.push_back(Output::SetActiveLayers {
                key: key.clone(),
                media: media.clone(),
                active: layers.iter().map(|l| l.rid.clone()).collect(),
            });
        }
        if !signaling_up {
            self.negotiated(
                key,
                id,
                Err(RtcError::new(
                    ErrorCode::SignalChannelError,
                    "no signalling connection",
                )),
                Vec::new(),
            );
            return;
        }
        let request = link.request.clone();
        self.out.push_back(Output::Negotiate {
            key,
            pc_id: id,
            media,
            request,
        });
    }

    fn pipeline_built(&mut self, key: LinkKey, pc_id: PcId, res: Result<M, RtcError>) {
        let current = self
            .links
            .get(&key)
            .is_some_and(|l| l.pc_id == pc_id && l.phase == LinkPhase::Building);
        if !current {
            // Replaced or ended meanwhile (its call was answered then); the pipeline built
            // for it is dropped here.
            return;
        }
        match res {
            Ok(media) => {
                if let Some(link) = self.links.get_mut(&key) {
                    link.media = Some(media);
                    link.phase = LinkPhase::Waiting;
                }
                self.negotiate_link(key);
            }
            Err(e) => {
                let call = self.links.remove(&key).and_then(|mut l| l.call.take());
                self.answer(call, Err(e));
            }
        }
    }

    fn negotiated(
        &mut self,
        key: LinkKey,
        id: PcId,
        res: Result<(), RtcError>,
        muted: Vec<MediaKind>,
    ) {
        let current = self
            .links
            .get(&key)
            .is_some_and(|l| l.pc_id == id && l.phase == LinkPhase::Negotiating);
        match res {
            Ok(()) if !current => {
                // Unpublished, unsubscribed or superseded meanwhile.
                self.out.push_back(Output::ClosePc { pc_id: id });
            }
            Ok(()) => self.link_connected(key, id, muted),
            Err(e) if !current => {
                tracing::debug!(?key, pc = id, error = %e, "stale negotiation failed");
            }
            Err(e) => {
                tracing::info!(?key, pc = id, error = %e, "media negotiation failed");
                let gone = e.code == ErrorCode::RemoteStreamNotExist;
                let Some(link) = self.links.get_mut(&key) else {
                    return;
                };
                match link.call.take() {
                    // The user's own publish/subscribe failed: report it, keep nothing.
                    Some(call) => {
                        if let Some(link) = self.links.remove(&key) {
                            self.end_link(key, link);
                        }
                        self.answer(Some(call), Err(e));
                    }
                    // The stream went away meanwhile: wait for it to come back.
                    None if gone => link.phase = LinkPhase::Waiting,
                    None => self.link_failed(key),
                }
            }
        }
    }

    fn link_connected(&mut self, key: LinkKey, id: PcId, muted: Vec<MediaKind>) {
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        link.phase = LinkPhase::Up;
        link.health.connected();
        // A subscription is answered when its pipeline has started too.
        let call = if link.pipeline_ready {
            link.call.take()
        } else {
            None
        };
        let announce = !link.announced;
        link.announced = true;
        if let Some(media) = link.media.clone() {
            self.out.push_back(Output::LinkUp {
                key: key.clone(),
                media,
            });
        }
        match &key {
            LinkKey::Up(stream_type) => {
                // A (re-)published stream starts unmuted on the server.
                for kind in muted {
                    if self.signaling_up {
                        self.request(
                            ClientMessage::Mute {
                                stream_type: *stream_type,
                                kind,
                                muted: true,
                            },
                            RequestKind::Other,
                            Pending::Room { call: None },
                        );
                    }
                }
            }
            LinkKey::Down(user, stream_type) if announce => {
                let info = self
                    .stream_info(user, *stream_type)
                    .unwrap_or_else(|| RoomState::unknown_stream(user, *stream_type));
                self.emit(ClientEvent::StreamSubscribed(info));
            }
            LinkKey::Down(..) => {}
        }
        tracing::info!(?key, pc = id, "media link connected");
        if let Some(call) = call {
            self.answer(Some(call), Ok(()));
        }
    }

    /// A downlink's pipeline started, or could not: answer its subscription when the link
    /// is up too; a pipeline that cannot start ends the subscription.
    fn pipeline_started(&mut self, key: LinkKey, pipeline: PcId, result: Result<(), RtcError>) {
        let Some(link) = self
            .links
            .get_mut(&key)
            .filter(|l| l.pipeline == pipeline && !l.pipeline_ready)
        else {
            return; // replaced or ended meanwhile
        };
        match result {
            Ok(()) => {
                link.pipeline_ready = true;
                if link.phase == LinkPhase::Up {
                    let call = link.call.take();
                    if let Some(call) = call {
                        self.answer(Some(call), Ok(()));
                    }
                }
            }
            Err(e) => {
                tracing::info!(?key, error = %e, "receive pipeline did not start");
                let call = link.call.take();
                self.remove_link(&key);
                self.answer(call, Err(e));
            }
        }
    }

    /// A receive pipeline failed: subscribe again the same way (a new pipeline and a new
    /// peer connection, which asks for a keyframe), unless it is crash-looping.
    fn pipeline_failed(&mut self, key: LinkKey, pipeline: PcId, error: String) {
        let now = self.now;
        let Some(link) = self
            .links
            .get_mut(&key)
            .filter(|l| l.pipeline == pipeline && l.media.is_some())
        else {
            return; // a pipeline replaced or ended meanwhile
        };
        if !link.restarts.allow(now) {
            let n = link.restarts.recent() + 1;
            tracing::warn!(?key, %error, "receive pipeline keeps failing; giving up");
            self.remove_link(&key);
            self.emit(ClientEvent::Error(RtcError::new(
                ErrorCode::DownlinkReconnectionFailed,
                format!(
                    "the receive pipeline failed {n} times within {}s: {error}",
                    PIPELINE_RESTART_WINDOW.as_secs()
                ),
            )));
            return;
        }
        let history = link.restarts.clone();
        let call = link.call.take();
        let Some((params, _)) = link.subscription.clone() else {
            return;
        };
        tracing::info!(?key, %error, restart = history.recent(), "rebuilding the receive pipeline");
        let announced = link.announced;
        self.subscribe(params, call);
        if let Some(l) = self.links.get_mut(&key) {
            l.restarts = history;
            // The user saw stream-subscribed already; this is the same subscription.
            l.announced = announced;
        }
    }

    fn on_pc(&mut self, pc_id: PcId, kind: PcEventKind) {
        let Some((key, up)) = self
            .links
            .iter()
            .find(|(_, l)| l.pc_id == pc_id)
            .map(|(k, l)| (k.clone(), l.phase == LinkPhase::Up))
        else {
            return; // a closed or superseded peer connection
        };
        match kind {
            PcEventKind::Connected => {
                if let Some(l) = self.links.get_mut(&key) {
                    l.health.connected();
                }
            }
            // The path went quiet: restart ICE on the same peer connection first (its
            // tracks, SSRCs and pipeline carry on); rebuilding is for when that fails.
            PcEventKind::Disconnected if up => self.restart_ice(key),
            // While negotiating, the negotiation's own result decides.
            PcEventKind::Failed | PcEventKind::Gone if up => {
                tracing::info!(?key, pc = pc_id, ?kind, "media link lost");
                self.link_failed(key);
            }
            _ => {}
        }
    }

    /// Ask for an ICE restart of the link's peer connection, unless one is running or the
    /// signalling is down (then the re-join renegotiates every link anyway).
    fn restart_ice(&mut self, key: LinkKey) {
        if self.life.phase() != Phase::Joined || !self.signaling_up {
            return;
        }
        let Some(link) = self
            .links
            .get_mut(&key)
            .filter(|l| l.phase == LinkPhase::Up && !l.restarting_ice)
        else {
            return;
        };
        link.restarting_ice = true;
        tracing::info!(
            ?key,
            pc = link.pc_id,
            "media link disconnected; restarting ICE"
        );
        self.out.push_back(Output::RestartIce {
            key,
            pc_id: link.pc_id,
            request: link.request.clone(),
        });
    }

    /// An ICE restart ended: the link is back on the same peer connection, or it is rebuilt
    /// (a new peer connection) as a failed link is.
    fn ice_restarted(&mut self, key: LinkKey, pc_id: PcId, result: Result<(), RtcError>) {
        let Some(link) = self
            .links
            .get_mut(&key)
            .filter(|l| l.pc_id == pc_id && l.phase == LinkPhase::Up && l.restarting_ice)
        else {
            return; // the link was rebuilt, re-negotiated or ended meanwhile
        };
        link.restarting_ice = false;
        match result {
            Ok(()) => {
                link.health.connected();
                tracing::info!(?key, pc = pc_id, "ICE restart brought the media link back");
            }
            Err(e) => {
                tracing::info!(?key, pc = pc_id, error = %e, "ICE restart failed; rebuilding");
                self.link_failed(key);
            }
        }
    }

    /// A link's peer connection failed or died: rebuild it later, or give up.
    fn link_failed(&mut self, key: LinkKey) {
        let joined = self.life.phase() == Phase::Joined;
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        Self::close_link_pc(&mut self.out, link);
        if !joined {
            // Signalling is down: the re-join renegotiates every link.
            return;
        }
        match link.health.failed() {
            LinkAction::Rebuild { attempt, delay } => {
                let pc_id = link.pc_id;
                tracing::info!(?key, attempt, ?delay, "rebuilding media link");
                self.timers
                    .push((self.now + delay, Timer::Rebuild { key, pc_id }));
            }
            LinkAction::GiveUp(error) => {
                tracing::warn!(?key, %error, "media link given up");
                self.remove_link(&key);
                self.emit(ClientEvent::Error(error));
            }
        }
    }

    /// After a re-join: publish every local stream again and re-subscribe every remote
    /// stream that is still published (the others wait for their stream to come back).
    fn resume_media(&mut self) {
        let keys: Vec<LinkKey> = self.links.keys().cloned().collect();
        for key in keys {
            let present = match &key {
                LinkKey::Up(_) => true,
                LinkKey::Down(user, stream_type) => self.stream_info(user, *stream_type).is_some(),
            };
            // A recording continues in a new file: the media after a re-join is another RTP
            // session (new sequence numbers and timestamps from the server), and one file
            // must never hold two timelines. Subscribing again builds a new pipeline (the
            // old one finalises its file as it ends).
            let recording = self.links.get(&key).and_then(|l| {
                l.subscription
                    .as_ref()
                    .filter(|(p, _)| matches!(p.output, SubscribeOutput::Record { .. }))
                    .map(|(p, _)| p.clone())
            });
            if let Some(link) = self.links.get_mut(&key) {
                link.health.connected();
                Self::close_link_pc(&mut self.out, link);
                if !present {
                    continue;
                }
            }
            match recording {
                Some(params) => {
                    let call = self.links.get_mut(&key).and_then(|l| l.call.take());
                    self.subscribe(params, call);
                }
                None => self.negotiate_link(key),
            }
        }
    }

    /// A subscribed stream changed its tracks or its video codec (its publisher added or
    /// removed a track, or published again with another codec): the server sends a
    /// subscription only what it negotiated, so subscribe again, the same way, with a
    /// pipeline for what the stream has now. The user already saw `stream-subscribed`.
    fn on_stream_updated(&mut self, info: StreamInfo) {
        let key = LinkKey::Down(info.user_id.clone(), info.stream_type);
        let Some(link) = self.links.get(&key) else {
            return;
        };
        let (Some((params, codec)), LinkRequest::Subscribe { audio, video, .. }) =
            (link.subscription.clone(), &link.request)
        else {
            return;
        };
        let wants_audio = params.audio && info.has_audio;
        let wants_video = params.video && info.has_video;
        let codec_changed = wants_video && *video && info.video_codec != codec;
        if (wants_audio, wants_video) == (*audio, *video) && !codec_changed {
            return;
        }
        if !wants_audio && !wants_video {
            return; // nothing asked for is left; the stream's removal ends it
        }
        tracing::info!(user = %info.user_id, audio = wants_audio, video = wants_video,
            from = ?codec, to = ?info.video_codec, "the stream changed: subscribing again");
        let announced = link.announced;
        let call = self.links.get_mut(&key).and_then(|l| l.call.take());
        self.subscribe(params, call);
        if let Some(l) = self.links.get_mut(&key) {
            l.announced = announced;
        }
    }

    fn on_stream_added(&mut self, info: StreamInfo) {
        let key = LinkKey::Down(info.user_id.clone(), info.stream_type);
        match self.links.get(&key).map(|l| l.phase) {
            Some(LinkPhase::Waiting) => self.negotiate_link(key),
            Some(_) => {}
            None if self.settings.auto_subscribe => {
                // Everything the stream has, now and later (a track added later is
                // subscribed then).
                let params = SubscribeParams {
                    user_id: info.user_id.clone(),
                    stream_type: info.stream_type,
                    audio: true,
                    video: true,
                    output: self.settings.auto_subscribe_output.clone(),
                    jitter_latency: rtcroom_pipelines::DEFAULT_JITTER_LATENCY,
                    video_type: None,
                };
                // Auto-subscribe failures are logged, not reported (nobody asked).
                self.subscribe(params, None);
            }
            None => {}
        }
    }

    // ---- timers --------------------------------------------------------------------

    fn fire_timers(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timers)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.timers = later;
        for (_, timer) in due {
            match timer {
                Timer::Reconnect {
                    generation,
                    attempt,
                } => {
                    if generation == self.generation
                        && self.life.phase() == (Phase::Reconnecting { attempt })
                    {
                        self.start_attempt(Attempt::Rejoin(attempt));
                    }
                }
                Timer::Rebuild { key, pc_id } => {
                    let still = self
                        .links
                        .get(&key)
                        .is_some_and(|l| l.pc_id == pc_id && l.phase == LinkPhase::Waiting);
                    if still && self.life.phase() == Phase::Joined {
                        self.negotiate_link(key);
                    }
                }
                Timer::JoinDeadline { generation } => {
                    if generation == self.generation && self.in_flight.is_some() {
                        self.attempt_done(
                            generation,
                            Err(SignalError::Timeout(RequestKind::Join.timeout_error())),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The client in virtual time: no sockets, no actors, no clock; every output checked.
    use super::*;
    use crate::lifecycle::ConnectionState;
    use rtcroom_protocol::RoomId;

    /// A media handle: a number.
    #[derive(Clone, Debug, PartialEq)]
    struct Media(u32);

    impl LinkMedia for Media {
        fn same(&self, other: &Self) -> bool {
            self == other
        }
    }

    type Out = Output<Media>;

    struct Sim {
        core: ClientCore<Media>,
        now: Instant,
        next_call: CallId,
    }

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    fn stream(of: &str, codec: VideoCodec) -> StreamInfo {
        StreamInfo {
            user_id: user(of),
            stream_type: StreamType::Main,
            has_audio: true,
            has_video: true,
            audio_muted: false,
            video_muted: false,
            video_codec: Some(codec),
            layers: Vec::new(),
        }
    }

    fn joined(streams: &[StreamInfo]) -> JoinResult {
        let members: Vec<_> = streams
            .iter()
            .map(|s| serde_json::json!({"userId": s.user_id, "role": "anchor"}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "roomId": 7, "role": "anchor", "members": members,
            "streams": streams, "heartbeatIntervalS": 1,
        }))
        .unwrap()
    }

    fn subscription(of: &str) -> SubscribeParams {
        SubscribeParams {
            user_id: user(of),
            stream_type: StreamType::Main,
            audio: true,
            video: true,
            output: SubscribeOutput::Discard,
            jitter_latency: Duration::from_millis(50),
            video_type: None,
        }
    }

    impl Sim {
        fn new(mode: Mode, auto_subscribe: bool) -> Sim {
            let mut settings = ClientSettings::new(
                1_400_000_000,
                user("me"),
                "sig".into(),
                mode,
                "ws://never.used/ws".into(),
            );
            settings.auto_subscribe = auto_subscribe;
            let now = Instant::now();
            Sim {
                core: ClientCore::new(Arc::new(settings), now, tracing::Span::none()),
                now,
                next_call: 1,
            }
        }

        fn input(&mut self, input: Input<Media>) -> Vec<Out> {
            self.core.handle_input(input, self.now);
            std::iter::from_fn(|| self.core.poll_output()).collect()
        }

        fn call(&mut self, request: Call<Media>) -> (CallId, Vec<Out>) {
            let call = self.next_call;
            self.next_call += 1;
            (call, self.input(Input::Call { call, request }))
        }

        /// Let `d` pass, firing every deadline on the way at its own time.
        /// Report the negotiation of `key` on `pc` as connected; its outputs.
        fn connect(&mut self, key: LinkKey, pc: PcId) -> Vec<Out> {
            self.input(Input::Negotiated {
                key,
                pc_id: pc,
                result: Ok(()),
                muted: vec![],
            })
        }
        /// Publish media 1 as the main stream and connect its uplink: its peer connection.
        fn published(&mut self) -> PcId {
            let (_, outs) = publish(self, 1);
            let [(_, pc)] = negotiations(&outs)[..] else {
                panic!("{outs:?}")
            };
            self.connect(UP, pc);
            pc
        }
        fn advance(&mut self, d: Duration) -> Vec<Out> {
            let end = self.now + d;
            let mut outs = Vec::new();
            while let Some(at) = self.core.poll_timeout().filter(|at| *at <= end) {
                self.now = self.now.max(at);
                outs.extend(self.input(Input::Timeout));
            }
            self.now = end;
            outs
        }

        /// Join room 7 and answer it with `streams`; returns the outputs of the answer.
        fn join(&mut self, streams: &[StreamInfo]) -> Vec<Out> {
            let (call, outs) = self.call(Call::Join(JoinParams {
                room_id: RoomId::numeric(7).unwrap(),
                role: Role::Anchor,
                private_map_key: None,
            }));
            let generation = connect_of(&outs).expect("a connection is opened");
            let outs = self.input(Input::AttemptDone {
                generation,
                result: Ok(joined(streams)),
            });
            assert_eq!(reply_of(&outs, call), Some(Ok(())));
            outs
        }
    }

    fn connect_of(outs: &[Out]) -> Option<Generation> {
        outs.iter().find_map(|o| match o {
            Output::Connect { generation, .. } => Some(*generation),
            _ => None,
        })
    }

    fn reply_of(outs: &[Out], call: CallId) -> Option<Result<(), RtcError>> {
        outs.iter().find_map(|o| match o {
            Output::Reply { call: c, result } if *c == call => Some(result.clone()),
            _ => None,
        })
    }

    fn states(outs: &[Out]) -> Vec<ConnectionState> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Event(ClientEvent::ConnectionStateChanged { state, .. }) => Some(*state),
                _ => None,
            })
            .collect()
    }

    fn negotiations(outs: &[Out]) -> Vec<(LinkKey, PcId)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Negotiate { key, pc_id, .. } => Some((key.clone(), *pc_id)),
                _ => None,
            })
            .collect()
    }

    /// The `publish` message the negotiation in `outs` sends (with the SDP "offer").
    fn negotiated_publish(outs: &[Out]) -> PublishRequest {
        let request = outs
            .iter()
            .find_map(|o| match o {
                Output::Negotiate { request, .. } => Some(request.clone()),
                _ => None,
            })
            .expect("negotiates");
        let ClientMessage::Publish(p) = request.message("offer".into()) else {
            panic!("{request:?}")
        };
        p
    }

    fn builds(outs: &[Out]) -> Vec<(LinkKey, PcId)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::BuildPipeline { key, pc_id, .. } => Some((key.clone(), *pc_id)),
                _ => None,
            })
            .collect()
    }

    fn closed_pcs(outs: &[Out]) -> Vec<PcId> {
        outs.iter()
            .filter_map(|o| match o {
                Output::ClosePc { pc_id } => Some(*pc_id),
                _ => None,
            })
            .collect()
    }

    fn requests(outs: &[Out]) -> Vec<(RequestId, ClientMessage)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Request { id, msg, .. } => Some((*id, msg.clone())),
                _ => None,
            })
            .collect()
    }

    fn one<T: std::fmt::Debug>(v: Vec<T>) -> T {
        assert_eq!(v.len(), 1, "{v:?}");
        v.into_iter().next().unwrap()
    }

    const UP: LinkKey = LinkKey::Up(StreamType::Main);

    fn publish(sim: &mut Sim, media: u32) -> (CallId, Vec<Out>) {
        sim.call(Call::Publish {
            media: Media(media),
            stream_type: StreamType::Main,
            has_audio: true,
            has_video: true,
            layers: Vec::new(),
        })
    }

    #[test]
    fn a_join_connects_answers_the_call_and_starts_heartbeats_at_the_servers_pace() {
        let mut sim = Sim::new(Mode::Rtc, true);
        let (call, outs) = sim.call(Call::Join(JoinParams {
            room_id: RoomId::numeric(7).unwrap(),
            role: Role::Anchor,
            private_map_key: None,
        }));
        assert_eq!(states(&outs), [ConnectionState::Connecting]);
        let Some(Output::Connect {
            generation,
            join,
            timeout,
        }) = outs.iter().find(|o| matches!(o, Output::Connect { .. }))
        else {
            panic!("no connection opened: {outs:?}");
        };
        assert_eq!(*timeout, crate::requests::DEFAULT_JOIN_TIMEOUT);
        assert!(matches!(join, ClientMessage::Join(j) if j.room_id == "7" && j.auto_subscribe));
        assert_eq!(
            reply_of(&outs, call),
            None,
            "answered before the server did"
        );
        let outs = sim.input(Input::AttemptDone {
            generation: *generation,
            result: Ok(joined(&[])),
        });
        assert_eq!(states(&outs), [ConnectionState::Connected]);
        assert_eq!(reply_of(&outs, call), Some(Ok(())));
        // The server asks for 1 s, shorter than our 2 s: its pace wins.
        assert!(outs.iter().any(|o| matches!(o,
            Output::StartHeartbeat { interval, .. } if *interval == Duration::from_secs(1))));
        assert_eq!(sim.core.phase(), Phase::Joined);
    }

    #[test]
    fn a_join_nobody_answers_fails_at_its_deadline_and_a_late_socket_is_stale() {
        let mut sim = Sim::new(Mode::Rtc, true);
        let (call, outs) = sim.call(Call::Join(JoinParams {
            room_id: RoomId::numeric(7).unwrap(),
            role: Role::Anchor,
            private_map_key: None,
        }));
        let generation = connect_of(&outs).unwrap();
        let outs = sim.advance(crate::requests::DEFAULT_JOIN_TIMEOUT - Duration::from_millis(1));
        assert!(outs.is_empty(), "{outs:?}");
        let outs = sim.advance(Duration::from_millis(1));
        let err = reply_of(&outs, call).unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::JoinRoomFailed);
        assert_eq!(states(&outs), [ConnectionState::Disconnected]);
        assert!(outs.iter().any(|o| matches!(o, Output::CloseSignaling)));
        // The socket opened after all, too late: its connection is not the current one.
        assert_ne!(sim.core.generation(), generation);
        let outs = sim.input(Input::AttemptDone {
            generation,
            result: Ok(joined(&[])),
        });
        assert!(outs.is_empty(), "{outs:?}");
        assert_eq!(sim.core.phase(), Phase::New);
    }

    #[test]
    fn events_sent_before_the_join_answer_is_processed_are_applied_after_it() {
        let mut sim = Sim::new(Mode::Rtc, false);
        let (call, outs) = sim.call(Call::Join(JoinParams {
            room_id: RoomId::numeric(7).unwrap(),
            role: Role::Anchor,
            private_map_key: None,
        }));
        let generation = connect_of(&outs).unwrap();
        let early = sim.input(Input::Server {
            generation,
            event: ServerEvent::PeerJoin {
                user_id: user("bob"),
            },
        });
        assert!(early.is_empty(), "{early:?}");
        let outs = sim.input(Input::AttemptDone {
            generation,
            result: Ok(joined(&[])),
        });
        let connected = outs
            .iter()
            .position(|o| matches!(o, Output::Reply { .. }))
            .unwrap();
        let peer = outs
            .iter()
            .position(|o| matches!(o, Output::Event(ClientEvent::PeerJoin { user_id }) if *user_id == user("bob")))
            .expect("the early peer-join is delivered");
        assert!(connected < peer);
        assert_eq!(reply_of(&outs, call), Some(Ok(())));
    }

    #[test]
    fn a_lost_connection_reconnects_on_the_backoff_schedule_and_renegotiates_every_link() {
        let mut sim = Sim::new(Mode::Rtc, true);
        let outs = sim.join(&[stream("bob", VideoCodec::Vp8)]);
        // Auto-subscribe: a pipeline first, then the negotiation.
        let (down, reserved) = one(builds(&outs));
        assert_eq!(down, LinkKey::Down(user("bob"), StreamType::Main));
        let outs = sim.input(Input::PipelineBuilt {
            key: down.clone(),
            pc_id: reserved,
            result: Ok(Media(2)),
        });
        let [(_, down_pc)] = negotiations(&outs)[..] else {
            panic!("{outs:?}")
        };
        let outs = sim.connect(down.clone(), down_pc);
        assert!(outs.iter().any(|o| matches!(o, Output::Event(ClientEvent::StreamSubscribed(s)) if s.user_id == user("bob"))));
        let (call, outs) = publish(&mut sim, 1);
        let [(_, up_pc)] = negotiations(&outs)[..] else {
            panic!("{outs:?}")
        };
        let outs = sim.input(Input::Negotiated {
            key: UP,
            pc_id: up_pc,
            result: Ok(()),
            muted: vec![MediaKind::Video],
        });
        assert_eq!(reply_of(&outs, call), Some(Ok(())));
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::LinkUp {
                key: UP,
                media: Media(1)
            }
        )));
        // The server starts a stream unmuted: the local mute is sent again.
        assert!(matches!(
            &requests(&outs)[..],
            [(
                _,
                ClientMessage::Mute {
                    kind: MediaKind::Video,
                    muted: true,
                    ..
                }
            )]
        ));

        // The connection drops.
        let generation = sim.core.generation();
        let outs = sim.input(Input::SignalLost {
            generation,
            reason: "reset".into(),
        });
        assert_eq!(states(&outs), [ConnectionState::Reconnecting]);
        // Fibonacci backoff: attempt 1 after 1 s, nothing before.
        assert!(sim.advance(Duration::from_millis(999)).is_empty());
        let outs = sim.advance(Duration::from_millis(1));
        let generation = connect_of(&outs).expect("attempt 1");
        let outs = sim.input(Input::AttemptDone {
            generation,
            result: Err(SignalError::Connect("refused".into())),
        });
        assert!(connect_of(&outs).is_none());
        // Attempt 2 after 2 s more.
        assert!(connect_of(&sim.advance(Duration::from_millis(1999))).is_none());
        let generation = connect_of(&sim.advance(Duration::from_millis(1))).expect("attempt 2");
        let outs = sim.input(Input::AttemptDone {
            generation,
            result: Ok(joined(&[stream("bob", VideoCodec::Vp8)])),
        });
        assert_eq!(states(&outs), [ConnectionState::Connected]);
        // Both links get new peer connections; the old ones are closed.
        let renegotiated = negotiations(&outs);
        assert_eq!(renegotiated.len(), 2, "{outs:?}");
        assert!(renegotiated.iter().any(|(k, id)| *k == UP && *id != up_pc));
        assert!(
            renegotiated
                .iter()
                .any(|(k, id)| *k == down && *id != down_pc)
        );
        let mut closed = closed_pcs(&outs);
        closed.sort();
        let mut old = vec![up_pc, down_pc];
        old.sort();
        assert_eq!(closed, old);
        // The re-join found bob's stream again: no stream-subscribed twice, no removal.
        assert!(!outs.iter().any(|o| matches!(o, Output::LinkEnded { .. })));
    }

    #[test]
    fn a_failed_link_is_rebuilt_after_its_delay_and_given_up_after_its_budget() {
        use crate::media::link::{DEFAULT_MAX_REBUILDS, DEFAULT_REBUILD_DELAY};
        let mut sim = Sim::new(Mode::Rtc, false);
        sim.join(&[]);
        let mut pc = sim.published();
        // The connected link fails.
        let outs = sim.input(Input::Pc {
            pc_id: pc,
            kind: PcEventKind::Failed,
        });
        assert_eq!(closed_pcs(&outs), [pc]);
        // A late report of the dead one changes nothing.
        assert!(
            sim.input(Input::Pc {
                pc_id: pc,
                kind: PcEventKind::Gone
            })
            .is_empty()
        );
        for attempt in 1..=DEFAULT_MAX_REBUILDS {
            // Rebuilt after attempt × the delay, not before.
            let delay = DEFAULT_REBUILD_DELAY * attempt;
            let early = sim.advance(delay - Duration::from_millis(1));
            assert!(
                negotiations(&early).is_empty(),
                "attempt {attempt}: {early:?}"
            );
            let outs = sim.advance(Duration::from_millis(1));
            let [(_, next)] = negotiations(&outs)[..] else {
                panic!("attempt {attempt}: {outs:?}")
            };
            assert_ne!(next, pc);
            pc = next;
            // The rebuild does not connect either.
            let outs = sim.input(Input::Negotiated {
                key: UP,
                pc_id: pc,
                result: Err(RtcError::new(ErrorCode::IceTransportError, "no ICE")),
                muted: vec![],
            });
            if attempt < DEFAULT_MAX_REBUILDS {
                assert!(outs.is_empty(), "attempt {attempt}: {outs:?}");
            } else {
                assert!(
                    outs.iter()
                        .any(|o| matches!(o, Output::Event(ClientEvent::Error(e))
                        if e.code == ErrorCode::UplinkReconnectionFailed)),
                    "{outs:?}"
                );
                assert!(outs.iter().any(|o| matches!(
                    o,
                    Output::LinkEnded {
                        key: UP,
                        media: Media(1)
                    }
                )));
            }
        }
        assert!(sim.advance(Duration::from_secs(60)).is_empty());
        assert_eq!(sim.core.links().count(), 0);
        // A success in between resets the budget: publish again, fail once, connect, fail.
        sim.published();
        for _ in 0..DEFAULT_MAX_REBUILDS + 2 {
            let pc = sim
                .core
                .links()
                .find_map(|(_, _, up)| up)
                .expect("connected");
            sim.input(Input::Pc {
                pc_id: pc,
                kind: PcEventKind::Failed,
            });
            let outs = sim.advance(DEFAULT_REBUILD_DELAY);
            let [(_, next)] = negotiations(&outs)[..] else {
                panic!("{outs:?}")
            };
            sim.connect(UP, next);
        }
    }

    fn ice_restarts(outs: &[Output<Media>]) -> Vec<(PcId, ClientMessage)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::RestartIce { pc_id, request, .. } => {
                    Some((*pc_id, request.ice_restart_message("offer".into())))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_disconnected_link_restarts_ice_on_its_peer_connection_before_any_rebuild() {
        use crate::media::link::DEFAULT_REBUILD_DELAY;
        let mut sim = Sim::new(Mode::Rtc, false);
        sim.join(&[]);
        let pc = sim.published();
        let disconnected = || Input::Pc {
            pc_id: pc,
            kind: PcEventKind::Disconnected,
        };
        // The path goes quiet: an ICE restart of the same peer connection, named to the
        // server as the uplink; nothing is closed or rebuilt.
        let outs = sim.input(disconnected());
        let restart = ClientMessage::IceRestart(IceRestartRequest {
            link: LinkDirection::Uplink,
            user_id: None,
            stream_type: StreamType::Main,
            sdp: "offer".into(),
        });
        assert_eq!(ice_restarts(&outs), [(pc, restart.clone())], "{outs:?}");
        assert!(closed_pcs(&outs).is_empty());
        // A second report while it runs starts no second restart.
        assert!(ice_restarts(&sim.input(disconnected())).is_empty());
        // It worked: the link is up on the same peer connection, nothing else happens.
        let outs = sim.input(Input::IceRestarted {
            key: UP,
            pc_id: pc,
            result: Ok(()),
        });
        assert!(outs.is_empty(), "{outs:?}");
        assert!(sim.advance(DEFAULT_REBUILD_DELAY * 4).is_empty());
        assert_eq!(sim.core.links().find_map(|(_, _, up)| up), Some(pc));

        // Quiet again later: another restart, which fails this time: the link is rebuilt
        // on a new peer connection after its delay, as a failed link is.
        assert_eq!(ice_restarts(&sim.input(disconnected())).len(), 1);
        let outs = sim.input(Input::IceRestarted {
            key: UP,
            pc_id: pc,
            result: Err(RtcError::new(ErrorCode::IceTransportError, "no path")),
        });
        assert_eq!(closed_pcs(&outs), [pc]);
        let outs = sim.advance(DEFAULT_REBUILD_DELAY);
        let [(_, rebuilt)] = negotiations(&outs)[..] else {
            panic!("{outs:?}")
        };
        assert_ne!(rebuilt, pc);
        // The old peer connection's late reports change nothing.
        assert!(sim.input(disconnected()).is_empty());
        assert!(
            sim.input(Input::IceRestarted {
                key: UP,
                pc_id: pc,
                result: Ok(()),
            })
            .is_empty()
        );
        sim.connect(UP, rebuilt);

        // A peer connection that fails while its restart runs is rebuilt at once; the
        // restart's late result is stale.
        assert_eq!(
            ice_restarts(&sim.input(Input::Pc {
                pc_id: rebuilt,
                kind: PcEventKind::Disconnected,
            }))
            .len(),
            1
        );
        let outs = sim.input(Input::Pc {
            pc_id: rebuilt,
            kind: PcEventKind::Failed,
        });
        assert_eq!(closed_pcs(&outs), [rebuilt]);
        assert!(
            sim.input(Input::IceRestarted {
                key: UP,
                pc_id: rebuilt,
                result: Err(RtcError::new(ErrorCode::IceTransportError, "closed")),
            })
            .is_empty()
        );
        assert_eq!(negotiations(&sim.advance(DEFAULT_REBUILD_DELAY)).len(), 1);
    }

    #[test]
    fn a_disconnected_downlink_names_its_stream_and_waits_for_signalling_to_restart() {
        let mut sim = Sim::new(Mode::Rtc, false);
        sim.join(&[]);
        let request = LinkRequest::Subscribe {
            user_id: UserId::new("bob").unwrap(),
            stream_type: StreamType::Auxiliary,
            audio: false,
            video: true,
            video_type: None,
        };
        assert_eq!(
            request.ice_restart_message("o".into()),
            ClientMessage::IceRestart(IceRestartRequest {
                link: LinkDirection::Downlink,
                user_id: Some(UserId::new("bob").unwrap()),
                stream_type: StreamType::Auxiliary,
                sdp: "o".into(),
            })
        );
        // Signalling lost: the re-join renegotiates every link; no ICE restart meanwhile.
        let pc = sim.published();
        let generation = sim.core.generation();
        sim.input(Input::SignalLost {
            generation,
            reason: "reset".into(),
        });
        let outs = sim.input(Input::Pc {
            pc_id: pc,
            kind: PcEventKind::Disconnected,
        });
        assert!(ice_restarts(&outs).is_empty(), "{outs:?}");
    }

    #[test]
    fn sei_messages_go_to_a_published_video_stream_within_trtcs_limits() {
        let mut sim = Sim::new(Mode::Rtc, false);
        let sei = |sim: &mut Sim, stream_type, payload_type, len: usize| {
            sim.call(Call::SendSei {
                stream_type,
                payload_type,
                data: vec![7; len],
            })
        };
        let refused = |(call, outs): (CallId, Vec<Out>)| {
            assert!(
                !outs.iter().any(|o| matches!(o, Output::InsertSei { .. })),
                "{outs:?}"
            );
            reply_of(&outs, call).expect("answered").unwrap_err().code
        };
        // Before joining, and joined but with nothing published.
        assert_eq!(
            refused(sei(&mut sim, StreamType::Main, 243, 8)),
            ErrorCode::InvalidOperation
        );
        sim.join(&[]);
        assert_eq!(
            refused(sei(&mut sim, StreamType::Main, 243, 8)),
            ErrorCode::InvalidOperation
        );
        // Bad messages are the caller's error whatever the state.
        assert_eq!(
            refused(sei(&mut sim, StreamType::Main, 6, 8)),
            ErrorCode::InvalidParameter
        );
        assert_eq!(
            refused(sei(&mut sim, StreamType::Main, 243, 1025)),
            ErrorCode::InvalidParameter
        );
        assert_eq!(
            refused(sei(&mut sim, StreamType::Main, 5, 15)),
            ErrorCode::InvalidParameter
        );
        let (_, outs) = publish(&mut sim, 1);
        let [(_, pc)] = negotiations(&outs)[..] else {
            panic!("{outs:?}")
        };
        // Not connected yet: nothing carries it.
        assert_eq!(
            refused(sei(&mut sim, StreamType::Main, 243, 8)),
            ErrorCode::InvalidOperation
        );
        sim.connect(UP, pc);
        // The auxiliary stream is not published.
        assert_eq!(
            refused(sei(&mut sim, StreamType::Auxiliary, 243, 8)),
            ErrorCode::InvalidOperation
        );
        // 30 at once, each handed to the stream's media with its call.
        for i in 0..30 {
            let (call, outs) = sei(&mut sim, StreamType::Main, 243, 10);
            assert!(
                matches!(
                    &outs[..],
                    [Output::InsertSei { call: c, media: Media(1), payload_type: 243, data }]
                        if *c == call && data.len() == 10
                ),
                "message {i}: {outs:?}"
            );
        }
        // The 31st in the same second is refused; a second later there is room again.
        assert_eq!(
            refused(sei(&mut sim, StreamType::Main, 243, 10)),
            ErrorCode::InvalidOperation
        );
        sim.advance(Duration::from_secs(1));
        let (_, outs) = sei(&mut sim, StreamType::Main, 5, 16);
        assert!(
            matches!(
                &outs[..],
                [Output::InsertSei {
                    payload_type: 5,
                    ..
                }]
            ),
            "{outs:?}"
        );
        // 8 KB per second: eight 1 KB messages pass, the ninth does not.
        sim.advance(Duration::from_secs(2));
        for _ in 0..8 {
            let (_, outs) = sei(&mut sim, StreamType::Main, 243, 1024);
            assert_eq!(outs.len(), 1, "{outs:?}");
        }
        assert_eq!(
            refused(sei(&mut sim, StreamType::Main, 243, 1024)),
            ErrorCode::InvalidOperation
        );
    }

    #[test]
    fn unsubscribing_while_the_pipeline_is_built_answers_the_call_and_drops_the_late_pipeline() {
        let mut sim = Sim::new(Mode::Rtc, false);
        sim.join(&[stream("bob", VideoCodec::H264)]);
        let (sub, outs) = sim.call(Call::Subscribe(subscription("bob")));
        let (key, reserved) = one(builds(&outs));
        let (unsub, outs) = sim.call(Call::Unsubscribe {
            user_id: user("bob"),
            stream_type: StreamType::Main,
        });
        assert_eq!(
            reply_of(&outs, sub).unwrap().unwrap_err().code,
            ErrorCode::InvalidOperation
        );
        let [(id, ClientMessage::Unsubscribe { .. })] = requests(&outs)[..] else {
            panic!("{outs:?}")
        };
        let outs = sim.input(Input::Replied {
            id,
            result: Err(SignalError::Lost),
        });
        assert_eq!(reply_of(&outs, unsub), Some(Ok(())), "best effort");
        let outs = sim.input(Input::PipelineBuilt {
            key,
            pc_id: reserved,
            result: Ok(Media(9)),
        });
        assert!(outs.is_empty(), "the late pipeline went nowhere: {outs:?}");
        assert_eq!(sim.core.links().count(), 0);
    }

    #[test]
    fn a_peer_connection_that_connects_after_being_superseded_is_closed() {
        let mut sim = Sim::new(Mode::Rtc, false);
        sim.join(&[]);
        let (call, outs) = publish(&mut sim, 1);
        let [(_, first)] = negotiations(&outs)[..] else {
            panic!()
        };
        // Unpublished before it connected.
        let (unpub, outs) = sim.call(Call::Unpublish {
            media: Media(1),
            stream_type: StreamType::Main,
        });
        assert!(reply_of(&outs, call).unwrap().is_err());
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::LinkEnded {
                key: UP,
                media: Media(1)
            }
        )));
        let [(id, _)] = requests(&outs)[..] else {
            panic!()
        };
        assert_eq!(
            reply_of(
                &sim.input(Input::Replied {
                    id,
                    result: Ok(None)
                }),
                unpub
            ),
            Some(Ok(()))
        );
        let outs = sim.connect(UP, first);
        assert_eq!(closed_pcs(&outs), [first]);
        // Unpublishing another stream of the same type is refused.
        let (_, outs) = publish(&mut sim, 1);
        assert_eq!(negotiations(&outs).len(), 1);
        let (c, outs) = sim.call(Call::Unpublish {
            media: Media(2),
            stream_type: StreamType::Main,
        });
        assert_eq!(
            reply_of(&outs, c).unwrap().unwrap_err().extra_code,
            Some(extra::REPEATED_CALL)
        );
    }

    #[test]
    fn leave_during_a_join_cancels_the_join_and_every_later_report_is_stale() {
        let mut sim = Sim::new(Mode::Rtc, true);
        let (join, outs) = sim.call(Call::Join(JoinParams {
            room_id: RoomId::numeric(7).unwrap(),
            role: Role::Anchor,
            private_map_key: None,
        }));
        let generation = connect_of(&outs).unwrap();
        let (leave, outs) = sim.call(Call::Leave);
        assert!(outs.iter().any(|o| matches!(o,
            Output::Leave { call: Some(c), send_leave: false } if *c == leave)));
        assert_eq!(
            reply_of(&outs, join).unwrap().unwrap_err().code,
            ErrorCode::JoinRoomFailed
        );
        assert_eq!(states(&outs), [ConnectionState::Disconnected]);
        for input in [
            Input::AttemptDone {
                generation,
                result: Ok(joined(&[])),
            },
            Input::Server {
                generation,
                event: ServerEvent::PeerJoin {
                    user_id: user("bob"),
                },
            },
            Input::SignalLost {
                generation,
                reason: "closed".into(),
            },
        ] {
            assert!(sim.input(input).is_empty());
        }
        assert!(sim.advance(Duration::from_secs(60)).is_empty());
        // And the same client joins again.
        sim.join(&[]);
        assert_eq!(sim.core.phase(), Phase::Joined);
    }

    #[test]
    fn a_switched_role_is_kept_for_the_rejoin_and_an_audience_cannot_publish() {
        let mut sim = Sim::new(Mode::Live, false);
        sim.join(&[]);
        let (call, outs) = sim.call(Call::SwitchRole(Role::Audience));
        let [
            (
                id,
                ClientMessage::SwitchRole {
                    role: Role::Audience,
                },
            ),
        ] = requests(&outs)[..]
        else {
            panic!("{outs:?}")
        };
        assert_eq!(
            reply_of(
                &sim.input(Input::Replied {
                    id,
                    result: Ok(None)
                }),
                call
            ),
            Some(Ok(()))
        );
        let (call, outs) = publish(&mut sim, 1);
        assert_eq!(
            reply_of(&outs, call).unwrap().unwrap_err().extra_code,
            Some(extra::AUDIENCE_ROLE)
        );
        let outs = sim.input(Input::SignalLost {
            generation: sim.core.generation(),
            reason: "reset".into(),
        });
        assert_eq!(states(&outs), [ConnectionState::Reconnecting]);
        let outs = sim.advance(Duration::from_secs(1));
        let Some(Output::Connect {
            join: ClientMessage::Join(j),
            ..
        }) = outs.iter().find(|o| matches!(o, Output::Connect { .. }))
        else {
            panic!("{outs:?}")
        };
        assert_eq!(j.role, Some(Role::Audience));
    }

    #[test]
    fn a_refused_rejoin_ends_the_session_and_closes_every_link() {
        let mut sim = Sim::new(Mode::Rtc, false);
        sim.join(&[]);
        sim.published();
        sim.input(Input::SignalLost {
            generation: sim.core.generation(),
            reason: "x".into(),
        });
        let generation = connect_of(&sim.advance(Duration::from_secs(1))).unwrap();
        let refused = RtcError::with_extra(ErrorCode::SignalChannelSetupFailed, 70001, "expired");
        let outs = sim.input(Input::AttemptDone {
            generation,
            result: Err(SignalError::Rejected(refused.clone())),
        });
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::Event(ClientEvent::Error(e)) if *e == refused))
        );
        assert_eq!(states(&outs), [ConnectionState::Disconnected]);
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::LinkEnded { key: UP, .. }))
        );
        assert!(
            sim.advance(Duration::from_secs(60)).is_empty(),
            "no more attempts"
        );
    }

    #[test]
    fn a_removed_stream_ends_its_subscription_but_a_rejoin_that_misses_it_waits_for_it() {
        let mut sim = Sim::new(Mode::Rtc, true);
        let outs = sim.join(&[stream("bob", VideoCodec::Vp8)]);
        let (down, reserved) = one(builds(&outs));
        let outs = sim.input(Input::PipelineBuilt {
            key: down.clone(),
            pc_id: reserved,
            result: Ok(Media(2)),
        });
        let [(_, pc)] = negotiations(&outs)[..] else {
            panic!()
        };
        sim.connect(down.clone(), pc);
        // Re-join without bob's stream (the server restarted): the link waits.
        sim.input(Input::SignalLost {
            generation: sim.core.generation(),
            reason: "x".into(),
        });
        let generation = connect_of(&sim.advance(Duration::from_secs(1))).unwrap();
        let outs = sim.input(Input::AttemptDone {
            generation,
            result: Ok(joined(&[])),
        });
        assert_eq!(closed_pcs(&outs), [pc]);
        assert!(negotiations(&outs).is_empty());
        assert!(!outs.iter().any(|o| matches!(o, Output::LinkEnded { .. })));
        // Bob publishes again: the same subscription (same pipeline) negotiates.
        let outs = sim.input(Input::Server {
            generation,
            event: ServerEvent::StreamAdded(stream("bob", VideoCodec::Vp8)),
        });
        let (key, again) = one(negotiations(&outs));
        assert_eq!(key, down);
        assert!(builds(&outs).is_empty(), "the pipeline is kept");
        sim.connect(down.clone(), again);
        // Now bob unpublishes: the subscription ends and its pipeline stops.
        let outs = sim.input(Input::Server {
            generation,
            event: ServerEvent::StreamRemoved {
                user_id: user("bob"),
                stream_type: StreamType::Main,
            },
        });
        assert_eq!(closed_pcs(&outs), [again]);
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::LinkEnded {
                media: Media(2),
                ..
            }
        )));
        // Bob comes back with audio only (auto-subscribed: audio), then adds H.264 video:
        // the auto-subscription is made again with a pipeline that decodes video too, and
        // the user is not told "stream-subscribed" twice.
        let audio_only = StreamInfo {
            has_video: false,
            video_codec: None,
            ..stream("bob", VideoCodec::Vp8)
        };
        let outs = sim.input(Input::Server {
            generation,
            event: ServerEvent::StreamAdded(audio_only),
        });
        let specs: Vec<_> = outs
            .iter()
            .filter_map(|o| match o {
                Output::BuildPipeline { pc_id, spec, .. } => Some((*pc_id, spec.clone())),
                _ => None,
            })
            .collect();
        let [(reserved, spec)] = &specs[..] else {
            panic!("auto-subscribed: {outs:?}")
        };
        assert!(spec.audio && spec.video_codec.is_none(), "{spec:?}");
        let outs = sim.input(Input::PipelineBuilt {
            key: down.clone(),
            pc_id: *reserved,
            result: Ok(Media(3)),
        });
        let [(_, pc)] = negotiations(&outs)[..] else {
            panic!()
        };
        let outs = sim.connect(down.clone(), pc);
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::Event(ClientEvent::StreamSubscribed(_))))
        );
        let outs = sim.input(Input::Server {
            generation,
            event: ServerEvent::StreamUpdated(stream("bob", VideoCodec::H264)),
        });
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::LinkEnded {
                media: Media(3),
                ..
            }
        )));
        let specs: Vec<_> = outs
            .iter()
            .filter_map(|o| match o {
                Output::BuildPipeline { pc_id, spec, .. } => Some((*pc_id, spec.clone())),
                _ => None,
            })
            .collect();
        let [(reserved, spec)] = &specs[..] else {
            panic!("{outs:?}")
        };
        assert_eq!(
            spec.video_codec,
            Some(rtcroom_pipelines::VideoCodec::H264),
            "{spec:?}"
        );
        let outs = sim.input(Input::PipelineBuilt {
            key: down.clone(),
            pc_id: *reserved,
            result: Ok(Media(4)),
        });
        let [(_, pc)] = negotiations(&outs)[..] else {
            panic!()
        };
        let outs = sim.connect(down.clone(), pc);
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, Output::Event(ClientEvent::StreamSubscribed(_)))),
            "{outs:?}"
        );
        // Video goes away again: audio only once more.
        let outs = sim.input(Input::Server {
            generation,
            event: ServerEvent::StreamUpdated(StreamInfo {
                has_video: false,
                video_codec: None,
                ..stream("bob", VideoCodec::H264)
            }),
        });
        let [(_, _)] = builds(&outs)[..] else {
            panic!("{outs:?}")
        };
    }

    /// Subscribe to bob and bring the link up on `media`; returns its pipeline id.
    fn subscribed(sim: &mut Sim, media: u32) -> PcId {
        let (_, outs) = sim.call(Call::Subscribe(subscription("bob")));
        let (key, pipeline) = one(builds(&outs));
        let outs = sim.input(Input::PipelineBuilt {
            key: key.clone(),
            pc_id: pipeline,
            result: Ok(Media(media)),
        });
        let [(_, pc)] = negotiations(&outs)[..] else {
            panic!("{outs:?}")
        };
        sim.input(Input::Negotiated {
            key,
            pc_id: pc,
            result: Ok(()),
            muted: vec![],
        });
        pipeline
    }

    #[test]
    fn a_failed_receive_pipeline_is_rebuilt_and_renegotiated_until_it_crash_loops() {
        let mut sim = Sim::new(Mode::Rtc, false);
        sim.join(&[stream("bob", VideoCodec::H264)]);
        let down = LinkKey::Down(user("bob"), StreamType::Main);
        let mut pipeline = subscribed(&mut sim, 1);
        let mut media = 1;
        for restart in 1..=PIPELINE_RESTARTS {
            // A report about an older pipeline is stale.
            let stale = sim.input(Input::PipelineFailed {
                key: down.clone(),
                pipeline: pipeline - 1,
                error: "old".into(),
            });
            assert!(stale.is_empty(), "{stale:?}");
            let outs = sim.input(Input::PipelineFailed {
                key: down.clone(),
                pipeline,
                error: "decoder error".into(),
            });
            // The old pipeline ends, its peer connection closes, a new one is built.
            assert!(
                outs.iter()
                    .any(|o| matches!(o, Output::LinkEnded { media: Media(m), .. } if *m == media)),
                "restart {restart}: {outs:?}"
            );
            assert_eq!(closed_pcs(&outs).len(), 1);
            let (_, next) = one(builds(&outs));
            media += 1;
            let outs = sim.input(Input::PipelineBuilt {
                key: down.clone(),
                pc_id: next,
                result: Ok(Media(media)),
            });
            let [(_, pc)] = negotiations(&outs)[..] else {
                panic!("{outs:?}")
            };
            let outs = sim.connect(down.clone(), pc);
            // The user already knew the stream was subscribed.
            assert!(
                !outs
                    .iter()
                    .any(|o| matches!(o, Output::Event(ClientEvent::StreamSubscribed(_)))),
                "{outs:?}"
            );
            pipeline = next;
            sim.advance(Duration::from_secs(1));
        }
        // One failure too many within the window: the subscription ends with an error.
        let outs = sim.input(Input::PipelineFailed {
            key: down.clone(),
            pipeline,
            error: "decoder error".into(),
        });
        assert!(builds(&outs).is_empty(), "{outs:?}");
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::Event(ClientEvent::Error(e))
            if e.code == ErrorCode::DownlinkReconnectionFailed))
        );
        assert_eq!(sim.core.links().count(), 0);

        // Failures spread out beyond the window are not a crash loop.
        let mut pipeline = subscribed(&mut sim, 100);
        for n in 0..PIPELINE_RESTARTS + 2 {
            sim.advance(PIPELINE_RESTART_WINDOW);
            let outs = sim.input(Input::PipelineFailed {
                key: down.clone(),
                pipeline,
                error: "decoder error".into(),
            });
            let (_, next) = one(builds(&outs));
            let outs = sim.input(Input::PipelineBuilt {
                key: down.clone(),
                pc_id: next,
                result: Ok(Media(200 + n as u32)),
            });
            assert_eq!(negotiations(&outs).len(), 1);
            pipeline = next;
        }
    }

    /// The view a handle sees, rebuilt from the outputs alone.
    #[derive(Default)]
    struct Mirror {
        members: std::collections::BTreeSet<UserId>,
        muted: std::collections::BTreeMap<UserId, RemoteMutedState>,
    }

    impl Mirror {
        fn apply(&mut self, outs: &[Out]) {
            for o in outs {
                match o {
                    Output::ViewMember { user_id, present } => {
                        if *present {
                            self.members.insert(user_id.clone());
                        } else {
                            self.members.remove(user_id);
                        }
                    }
                    Output::ViewMuted { user_id, state } => match state {
                        Some(s) => {
                            self.muted.insert(user_id.clone(), s.clone());
                        }
                        None => {
                            self.muted.remove(user_id);
                        }
                    },
                    Output::ViewCleared => {
                        self.members.clear();
                        self.muted.clear();
                    }
                    _ => {}
                }
            }
        }

        fn check(&self, room: &RoomState, when: &str) {
            let members: Vec<_> = room.members().cloned().collect();
            assert_eq!(
                self.members.iter().cloned().collect::<Vec<_>>(),
                members,
                "{when}"
            );
            assert_eq!(
                self.muted.values().cloned().collect::<Vec<_>>(),
                room.muted_state(),
                "{when}"
            );
        }
    }

    #[test]
    fn the_view_follows_the_room_change_by_change() {
        let mut sim = Sim::new(Mode::Rtc, false);
        let mut mirror = Mirror::default();
        let outs = sim.join(&[
            stream("bob", VideoCodec::H264),
            stream("carol", VideoCodec::Vp8),
        ]);
        mirror.apply(&outs);
        mirror.check(&sim.core.room, "joined");
        assert_eq!(mirror.members.len(), 2);
        let g = sim.core.generation();
        let aux = StreamInfo {
            stream_type: StreamType::Auxiliary,
            ..stream("dave", VideoCodec::H264)
        };
        let steps = vec![
            (
                "dave joins",
                ServerEvent::PeerJoin {
                    user_id: user("dave"),
                },
            ),
            ("dave shares a screen", ServerEvent::StreamAdded(aux)),
            (
                "dave publishes",
                ServerEvent::StreamAdded(stream("dave", VideoCodec::H264)),
            ),
            (
                "bob mutes",
                ServerEvent::MuteAudio {
                    user_id: user("bob"),
                },
            ),
            (
                "carol mutes video",
                ServerEvent::MuteVideo {
                    user_id: user("carol"),
                },
            ),
            (
                "carol drops video",
                ServerEvent::StreamUpdated(StreamInfo {
                    has_video: false,
                    video_codec: None,
                    ..stream("carol", VideoCodec::Vp8)
                }),
            ),
            (
                "bob unmutes",
                ServerEvent::UnmuteAudio {
                    user_id: user("bob"),
                },
            ),
            (
                "bob unpublishes",
                ServerEvent::StreamRemoved {
                    user_id: user("bob"),
                    stream_type: StreamType::Main,
                },
            ),
            (
                "dave leaves without unpublishing",
                ServerEvent::PeerLeave {
                    user_id: user("dave"),
                    reason: rtcroom_protocol::signal::LeaveReason::Timeout,
                },
            ),
        ];
        for (when, event) in steps {
            let outs = sim.input(Input::Server {
                generation: g,
                event,
            });
            mirror.apply(&outs);
            mirror.check(&sim.core.room, when);
        }
        assert_eq!(mirror.members.len(), 2);
        assert_eq!(mirror.muted.len(), 1, "only carol has a main stream");
        // Leaving clears it.
        let (_, outs) = sim.call(Call::Leave);
        mirror.apply(&outs);
        assert!(mirror.members.is_empty() && mirror.muted.is_empty());
    }

    #[test]
    fn a_subscription_negotiates_while_its_pipeline_starts_and_is_answered_when_both_are_done() {
        let mut sim = Sim::new(Mode::Rtc, false);
        sim.join(&[stream("bob", VideoCodec::H264)]);
        for pipeline_first in [true, false] {
            let (call, outs) = sim.call(Call::Subscribe(subscription("bob")));
            let (key, pipeline) = one(builds(&outs));
            // The receive side exists at once: negotiation starts before the pipeline is up.
            let outs = sim.input(Input::PipelineBuilt {
                key: key.clone(),
                pc_id: pipeline,
                result: Ok(Media(7)),
            });
            let [(_, pc)] = negotiations(&outs)[..] else {
                panic!("{outs:?}")
            };
            let started = |sim: &mut Sim| {
                sim.input(Input::PipelineStarted {
                    key: key.clone(),
                    pipeline,
                    result: Ok(()),
                })
            };
            let connected = |sim: &mut Sim| sim.connect(key.clone(), pc);
            let (first, second) = if pipeline_first {
                let a = started(&mut sim);
                (a, connected(&mut sim))
            } else {
                let a = connected(&mut sim);
                (a, started(&mut sim))
            };
            assert_eq!(
                reply_of(&first, call),
                None,
                "pipeline first: {pipeline_first}"
            );
            assert_eq!(reply_of(&second, call), Some(Ok(())));
        }
        // A pipeline that cannot start fails the call and ends the link, even once connected.
        let (call, outs) = sim.call(Call::Subscribe(subscription("bob")));
        let (key, pipeline) = one(builds(&outs));
        let outs = sim.input(Input::PipelineBuilt {
            key: key.clone(),
            pc_id: pipeline,
            result: Ok(Media(8)),
        });
        let [(_, pc)] = negotiations(&outs)[..] else {
            panic!("{outs:?}")
        };
        sim.connect(key.clone(), pc);
        let no_display = RtcError::new(ErrorCode::InitializeFailed, "no display");
        let outs = sim.input(Input::PipelineStarted {
            key: key.clone(),
            pipeline,
            result: Err(no_display.clone()),
        });
        assert_eq!(reply_of(&outs, call), Some(Err(no_display)));
        assert_eq!(closed_pcs(&outs), [pc]);
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::LinkEnded {
                media: Media(8),
                ..
            }
        )));
        assert_eq!(sim.core.links().count(), 0);
        // A late report about it changes nothing.
        assert!(
            sim.input(Input::PipelineStarted {
                key,
                pipeline,
                result: Ok(())
            })
            .is_empty()
        );
    }

    // ---- simulcast (TRTC's big and small streams) ----------------------------------

    fn layer(rid: &str, width: u32, height: u32, bitrate_kbps: u32) -> VideoLayer {
        VideoLayer {
            rid: rid.into(),
            width,
            height,
            bitrate_kbps,
        }
    }

    fn two_layers() -> Vec<VideoLayer> {
        vec![layer("h", 640, 480, 900), layer("l", 160, 120, 100)]
    }

    impl Sim {
        fn server(&mut self, event: ServerEvent) -> Vec<Out> {
            let generation = self.core.generation();
            self.input(Input::Server { generation, event })
        }
    }

    fn active_layers(outs: &[Out]) -> Vec<Vec<String>> {
        outs.iter()
            .filter_map(|o| match o {
                Output::SetActiveLayers {
                    key: UP,
                    media: Media(1),
                    active,
                } => Some(active.clone()),
                Output::SetActiveLayers { .. } => panic!("another link: {o:?}"),
                _ => None,
            })
            .collect()
    }

    fn wanted(rids: &[&str]) -> ServerEvent {
        ServerEvent::LayersWanted {
            stream_type: StreamType::Main,
            rids: rids.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// Publish media 1 with `layers` and connect it: its peer connection.
    fn published_with(sim: &mut Sim, layers: Vec<VideoLayer>) -> PcId {
        let (_, outs) = sim.call(Call::Publish {
            media: Media(1),
            stream_type: StreamType::Main,
            has_audio: true,
            has_video: true,
            layers,
        });
        let [(_, pc)] = negotiations(&outs)[..] else {
            panic!("{outs:?}")
        };
        sim.connect(UP, pc);
        pc
    }

    #[test]
    fn a_publish_with_a_small_stream_announces_its_layers_and_bad_layers_are_refused() {
        let mut sim = Sim::new(Mode::Rtc, false);
        sim.join(&[]);
        let publish_with = |sim: &mut Sim, has_video: bool, layers: Vec<VideoLayer>| {
            sim.call(Call::Publish {
                media: Media(1),
                stream_type: StreamType::Main,
                has_audio: true,
                has_video,
                layers,
            })
        };
        // Layers need video, at least two, at most MAX_LAYERS, valid, distinct rids.
        let h = layer("h", 640, 480, 900);
        for bad in [
            (false, two_layers()),
            (true, vec![h.clone()]),
            (true, vec![h.clone(); 2]),
            (true, vec![h.clone(), layer("l", 0, 120, 100)]),
            (true, vec![h.clone(), layer("l l", 160, 120, 100)]),
            (
                true,
                (0..=MAX_LAYERS)
                    .map(|i| layer(&format!("r{i}"), 160, 120, 100))
                    .collect(),
            ),
        ] {
            let (call, outs) = publish_with(&mut sim, bad.0, bad.1.clone());
            assert!(negotiations(&outs).is_empty(), "{bad:?}: {outs:?}");
            let e = reply_of(&outs, call).expect("answered").unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidParameter, "{bad:?}");
        }
        let (_, outs) = publish_with(&mut sim, true, two_layers());
        let p = negotiated_publish(&outs);
        assert_eq!(p.layers, two_layers());
        assert_eq!(p.sdp.as_deref(), Some("offer"));
        // Without a small stream: no layers on the wire.
        let mut plain = Sim::new(Mode::Rtc, false);
        plain.join(&[]);
        let (_, outs) = publish(&mut plain, 1);
        assert!(negotiated_publish(&outs).layers.is_empty());
    }

    #[test]
    fn layers_wanted_pauses_and_resumes_the_published_layers_and_a_new_publication_has_all() {
        let mut sim = Sim::new(Mode::Rtc, false);
        sim.join(&[]);
        let pc = published_with(&mut sim, two_layers());
        // Everything wanted, as at the start: nothing to do.
        assert!(active_layers(&sim.server(wanted(&["h", "l"]))).is_empty());
        // Nobody receives the small layer.
        assert_eq!(active_layers(&sim.server(wanted(&["h"]))), [vec!["h"]]);
        assert!(
            active_layers(&sim.server(wanted(&["h"]))).is_empty(),
            "no change"
        );
        // Only the small one; an unknown rid is ignored; the list keeps the publication's order.
        assert_eq!(active_layers(&sim.server(wanted(&["x", "l"]))), [vec!["l"]]);
        // Nobody receives the video at all.
        assert_eq!(
            active_layers(&sim.server(wanted(&[]))),
            [Vec::<String>::new()]
        );
        // Both again.
        assert_eq!(
            active_layers(&sim.server(wanted(&["l", "h"]))),
            [vec!["h", "l"]]
        );
        // Another stream type, not published: nothing.
        let outs = sim.server(ServerEvent::LayersWanted {
            stream_type: StreamType::Auxiliary,
            rids: vec![],
        });
        assert!(active_layers(&outs).is_empty(), "{outs:?}");
        // Paused again, then the link fails and is rebuilt: the new publication starts with
        // every layer (before its offer goes out), as the server expects.
        assert_eq!(active_layers(&sim.server(wanted(&["h"]))), [vec!["h"]]);
        sim.input(Input::Pc {
            pc_id: pc,
            kind: PcEventKind::Failed,
        });
        let outs = sim.advance(Duration::from_secs(30));
        let layers_at = outs
            .iter()
            .position(|o| matches!(o, Output::SetActiveLayers { .. }))
            .expect("every layer again");
        let negotiate_at = outs
            .iter()
            .position(|o| matches!(o, Output::Negotiate { .. }))
            .expect("renegotiated");
        assert!(layers_at < negotiate_at, "{outs:?}");
        assert_eq!(active_layers(&outs), [vec!["h", "l"]]);
        // A publication without layers ignores the event.
        let mut plain = Sim::new(Mode::Rtc, false);
        plain.join(&[]);
        plain.published();
        let outs = plain.server(wanted(&["h"]));
        assert!(active_layers(&outs).is_empty(), "{outs:?}");
    }

    fn simulcast_stream(of: &str) -> StreamInfo {
        StreamInfo {
            layers: vec![layer("l", 160, 120, 100), layer("h", 640, 480, 900)],
            ..stream(of, VideoCodec::H264)
        }
    }

    #[test]
    fn a_subscriptions_layer_change_is_reported_as_an_event() {
        let changed = ServerEvent::VideoLayerChanged {
            user_id: user("bob"),
            stream_type: StreamType::Main,
            rid: "l".into(),
            video_type: VideoStreamType::Small,
            reason: rtcroom_protocol::signal::LayerChangeReason::Request,
        };
        let mut sim = Sim::new(Mode::Rtc, false);
        sim.join(&[simulcast_stream("bob")]);
        // Not subscribed: not news.
        let outs = sim.server(changed.clone());
        assert!(
            !outs.iter().any(|o| matches!(o, Output::Event(_))),
            "{outs:?}"
        );
        subscribed(&mut sim, 1);
        let outs = sim.server(changed);
        let events: Vec<&ClientEvent> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(
            events,
            [&ClientEvent::VideoLayerChanged {
                user_id: user("bob"),
                stream_type: StreamType::Main,
                video_type: VideoStreamType::Small,
                rid: "l".into(),
                reason: rtcroom_protocol::signal::LayerChangeReason::Request,
            }]
        );
    }

    #[test]
    fn the_remote_video_stream_type_is_asked_for_in_subscriptions_and_switched_on_the_server() {
        let set = |sim: &mut Sim, user_id: &str, video_type| {
            sim.call(Call::SetRemoteVideoStreamType {
                user_id: user(user_id),
                stream_type: StreamType::Main,
                video_type,
            })
        };
        let mut sim = Sim::new(Mode::Rtc, false);
        // Before joining: the caller's error.
        let (call, outs) = set(&mut sim, "bob", VideoStreamType::Small);
        assert_eq!(
            reply_of(&outs, call).expect("answered").unwrap_err().code,
            ErrorCode::InvalidOperation
        );
        let mut carol = stream("carol", VideoCodec::H264);
        carol.user_id = user("carol");
        sim.join(&[simulcast_stream("bob"), carol]);
        // Not subscribed yet: kept for the subscription, nothing sent.
        let (call, outs) = set(&mut sim, "bob", VideoStreamType::Small);
        assert_eq!(reply_of(&outs, call), Some(Ok(())));
        assert!(requests(&outs).is_empty(), "{outs:?}");
        let (_, outs) = sim.call(Call::Subscribe(subscription("bob")));
        let (key, pipeline) = one(builds(&outs));
        let outs = sim.input(Input::PipelineBuilt {
            key: key.clone(),
            pc_id: pipeline,
            result: Ok(Media(1)),
        });
        let (request, pc) = outs
            .iter()
            .find_map(|o| match o {
                Output::Negotiate { request, pc_id, .. } => Some((request.clone(), *pc_id)),
                _ => None,
            })
            .expect("negotiates");
        let ClientMessage::Subscribe(sub) = request.message("offer".into()) else {
            panic!("{request:?}")
        };
        assert_eq!(sub.video_type, Some(VideoStreamType::Small));
        sim.connect(key.clone(), pc);
        // Subscribed: the server switches it; its refusal is the caller's error.
        let (call, outs) = set(&mut sim, "bob", VideoStreamType::Big);
        let (id, msg) = one(requests(&outs));
        assert_eq!(
            msg,
            ClientMessage::SetRemoteVideoStreamType {
                user_id: user("bob"),
                stream_type: StreamType::Main,
                video_type: VideoStreamType::Big,
            }
        );
        assert_eq!(reply_of(&outs, call), None, "answered by the server");
        let outs = sim.input(Input::Replied {
            id,
            result: Err(SignalError::Rejected(RtcError::invalid_operation(
                None, "refused",
            ))),
        });
        assert_eq!(
            reply_of(&outs, call).expect("answered").unwrap_err().code,
            ErrorCode::InvalidOperation
        );
        // A new subscription of the same stream (a pipeline rebuild) asks for the last choice.
        let outs = sim.input(Input::PipelineFailed {
            key: key.clone(),
            pipeline,
            error: "decoder".into(),
        });
        let (key, pipeline) = one(builds(&outs));
        let outs = sim.input(Input::PipelineBuilt {
            key,
            pc_id: pipeline,
            result: Ok(Media(2)),
        });
        let request = outs
            .iter()
            .find_map(|o| match o {
                Output::Negotiate { request, .. } => Some(request.clone()),
                _ => None,
            })
            .expect("negotiates again");
        let ClientMessage::Subscribe(sub) = request.message("offer".into()) else {
            panic!("{request:?}")
        };
        assert_eq!(sub.video_type, Some(VideoStreamType::Big));
        // A stream without layers has nothing to switch: nothing is sent.
        let mut carol_sub = subscription("carol");
        carol_sub.video_type = None;
        let (_, outs) = sim.call(Call::Subscribe(carol_sub));
        let (key, pipeline) = one(builds(&outs));
        let outs = sim.input(Input::PipelineBuilt {
            key: key.clone(),
            pc_id: pipeline,
            result: Ok(Media(3)),
        });
        let [(_, pc)] = negotiations(&outs)[..] else {
            panic!("{outs:?}")
        };
        sim.connect(key, pc);
        let (call, outs) = set(&mut sim, "carol", VideoStreamType::Small);
        assert_eq!(reply_of(&outs, call), Some(Ok(())));
        assert!(requests(&outs).is_empty(), "{outs:?}");
    }
}
