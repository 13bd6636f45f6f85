//! `ClientActor`: one per client. It drives the client's sans-IO [`ClientCore`] (join
//! lifecycle, room view, media link table, calls, reconnection and rebuild timers) and
//! performs what the core asks: signalling connections ([`SignalingActor`], one per
//! connection attempt), requests, receive pipelines, peer connections
//! ([`PeerConnectionActor`]), events to the user ([`ClientHub`]). It decides nothing itself:
//! every input (a user call, a signalling event, a negotiation's result, a timer) goes into
//! the core with the time it happened, and every output comes out of it.
//!
//! Everything the user asks arrives as one [`ClientRequest`], a core [`Call`] given its
//! own number; the core answers it with [`Output::Reply`], so a slow join or publish never
//! blocks a `leave()` or a server event.
//!
//! Supervision: the client actor supervises its signalling connection and its peer
//! connections. When a `SignalingActor` ends for any reason, including a panic inside it,
//! its `Drop` reports [`SignalEvent::Lost`] and the core treats that like a network loss: it
//! reconnects with backoff and re-joins. A peer connection actor that dies reports it from
//! its `Drop` and its link is rebuilt ([`crate::media::LinkHealth`]). If the client actor
//! itself dies, its `Drop` reports `ClientEvent::Error(UNKNOWN)`, marks the client
//! DISCONNECTED and ends the event streams; the user's calls then fail with UNKNOWN. Nothing
//! restarts a dead client actor (its room state is gone): the user creates a new client. A
//! panic in an actor never takes the process down (the runtime contains it to the actor's
//! task).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rtcroom_protocol::signal::{ClientMessage, MediaKind, ReplyData, StreamType, VideoStreamType};
use rtcroom_protocol::{ErrorCode, Mode, Role, RoomId, RtcError, UserId};
use tokio::sync::oneshot;

use crate::backoff::{DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MISSED_HEARTBEATS, ReconnectPolicy};
use crate::core::{Call, CallId, ClientCore, Input, LinkKey, LinkMedia, Output};
use crate::error::SignalError;
use crate::event::{AudioVolume, ClientEvent};
use crate::hub::ClientHub;
use crate::lifecycle::Phase;
use crate::media::peer::{ApplyAnswer, ClosePc, CreateOffer, WaitConnected};
use crate::media::{
    LocalMedia, PcEvent, PcEventKind, PcId, PcRole, PeerConnectionActor, RemoteMedia,
    RemoteMediaStats, RemoteStreamActor, StopStream, StreamFailed, SubscribeOutput,
};
use crate::requests::{DEFAULT_JOIN_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, RequestKind};
use crate::signaling::{
    CloseSignaling, Generation, SignalEvent, SignalRequest, SignalingActor, StartHeartbeat,
    WsStream, connect,
};

/// Everything fixed for the life of a client (validated by the engine).
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// The application.
    pub sdk_app_id: u32,
    /// Who this client is.
    pub user_id: UserId,
    /// Its UserSig.
    pub user_sig: String,
    /// rtc or live.
    pub mode: Mode,
    /// Whether room ids are strings.
    pub use_string_room_id: bool,
    /// Subscribe to everything published (sent with the join; media plane).
    pub auto_subscribe: bool,
    /// The signalling URL (`ws://host:port/ws`).
    pub server_url: String,
    /// Connect + join answer within this (TRTC: 5 s), else JOIN_ROOM_FAILED.
    pub join_timeout: Duration,
    /// Other requests' timeout.
    pub request_timeout: Duration,
    /// Heartbeat interval (TRTC: 2 s).
    pub heartbeat_interval: Duration,
    /// Silent heartbeat intervals before the connection counts as lost.
    pub missed_heartbeats: u32,
    /// Reconnect schedule.
    pub reconnect: ReconnectPolicy,
    /// Where auto-subscribed streams go.
    pub auto_subscribe_output: SubscribeOutput,
    /// How long a new peer connection may take to connect (ICE + DTLS).
    pub media_connect_timeout: Duration,
    /// TLS for a `wss://` server URL (system roots plus any extra CA); `None` for `ws://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Default for [`ClientSettings::media_connect_timeout`].
pub const DEFAULT_MEDIA_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ClientSettings {
    /// Settings with TRTC's timings.
    pub fn new(
        sdk_app_id: u32,
        user_id: UserId,
        user_sig: String,
        mode: Mode,
        server_url: String,
    ) -> Self {
        ClientSettings {
            sdk_app_id,
            user_id,
            user_sig,
            mode,
            use_string_room_id: false,
            auto_subscribe: true,
            server_url,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            missed_heartbeats: DEFAULT_MISSED_HEARTBEATS,
            reconnect: ReconnectPolicy::default(),
            auto_subscribe_output: SubscribeOutput::Discard,
            media_connect_timeout: DEFAULT_MEDIA_CONNECT_TIMEOUT,
            tls: None,
        }
    }
}

/// What `join()` asks for (validated by the engine).
#[derive(Clone, Debug, PartialEq)]
pub struct JoinParams {
    /// The room.
    pub room_id: RoomId,
    /// The role (live mode; TRTC v4's default is anchor).
    pub role: Role,
    /// The PrivateMapKey, when the app uses them.
    pub private_map_key: Option<String>,
}

/// What `subscribe()` asks for.
#[derive(Clone, Debug)]
pub struct SubscribeParams {
    /// Whose stream.
    pub user_id: UserId,
    /// Which stream.
    pub stream_type: StreamType,
    /// Receive its audio.
    pub audio: bool,
    /// Receive its video.
    pub video: bool,
    /// Where the media goes.
    pub output: SubscribeOutput,
    /// How long the jitter buffer waits for late or reordered packets (also the delay
    /// before the first frame comes out).
    pub jitter_latency: Duration,
    /// Of a simulcast stream, the layer to start on (`None`: the one chosen with
    /// `setRemoteVideoStreamType` for this stream, else big).
    pub video_type: Option<VideoStreamType>,
}

/// A user request to the client actor: the core's [`Call`], with the local streams and
/// receive sides as the links' media (one enum for both: the actor hands it on as it is).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), RtcError>")]
pub struct ClientRequest(pub Call<PcRole>);

impl From<Call<PcRole>> for ClientRequest {
    fn from(call: Call<PcRole>) -> Self {
        ClientRequest(call)
    }
}

impl Call<PcRole> {
    /// Publish `local` (one uplink peer connection per stream type), as its type and tracks
    /// say.
    pub fn publish(local: Arc<LocalMedia>) -> Self {
        Call::Publish {
            stream_type: local.stream_type(),
            has_audio: local.has_audio(),
            has_video: local.has_video(),
            layers: local.layers(),
            media: PcRole::Uplink(local),
        }
    }

    /// Stop publishing `local` (only if it is the stream published under its type).
    pub fn unpublish(local: Arc<LocalMedia>) -> Self {
        Call::Unpublish {
            stream_type: local.stream_type(),
            media: PcRole::Uplink(local),
        }
    }
}

/// The receive counters of every subscribed stream.
#[derive(Debug, Message)]
#[rtype(result = "Vec<(UserId, StreamType, RemoteMediaStats)>")]
pub struct GetRemoteStats;

/// The transport counters of every connected peer connection: `(uplink?, user, stream
/// type, stats)`; the user is this client's own for uplinks.
#[derive(Debug, Message)]
#[rtype(result = "Vec<(bool, UserId, StreamType, crate::media::TransportStats)>")]
pub struct GetTransportStats;

/// The user's handle was dropped: leave (best effort) and stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl LinkMedia for PcRole {
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (PcRole::Uplink(a), PcRole::Uplink(b)) => Arc::ptr_eq(a, b),
            (PcRole::Downlink { remote: a, .. }, PcRole::Downlink { remote: b, .. }) => {
                Arc::ptr_eq(a, b)
            }
            _ => false,
        }
    }
}

/// The client actor: performs what its [`ClientCore`] asks and feeds the results back.
pub struct ClientActor {
    settings: Arc<ClientSettings>,
    core: ClientCore<PcRole>,
    hub: Arc<ClientHub>,
    span: tracing::Span,
    clean_stop: bool,
    /// The current signalling connection and its generation.
    signaling: Option<(Generation, Addr<SignalingActor>)>,
    /// The user calls waiting for the core's reply.
    calls: HashMap<CallId, oneshot::Sender<Result<(), RtcError>>>,
    next_call: CallId,
    /// Connected peer connections, by id.
    pcs: HashMap<PcId, Addr<PeerConnectionActor>>,
    /// The watchers of the downlinks' receive pipelines.
    streams: HashMap<LinkKey, Addr<RemoteStreamActor>>,
    /// The wake-up set for the core's next deadline.
    timer: Option<(Instant, SpawnHandle)>,
    /// The `audio-volume` interval, when enabled.
    volume_timer: Option<SpawnHandle>,
    /// Downlink loss between `network-quality` reports.
    quality_loss: crate::quality::LossWindow,
}

fn actor_gone() -> RtcError {
    RtcError::new(ErrorCode::Unknown, "the client actor stopped")
}

fn wire_kind(kind: rtcroom_pipelines::MediaKind) -> MediaKind {
    match kind {
        rtcroom_pipelines::MediaKind::Audio => MediaKind::Audio,
        rtcroom_pipelines::MediaKind::Video => MediaKind::Video,
    }
}

impl ClientActor {
    /// A client with these settings, reporting through `hub`.
    pub fn new(settings: ClientSettings, hub: Arc<ClientHub>) -> Self {
        let span = tracing::info_span!(
            "rtcroom_client",
            user = %settings.user_id,
            room = tracing::field::Empty
        );
        let settings = Arc::new(settings);
        ClientActor {
            core: ClientCore::new(settings.clone(), Instant::now(), span.clone()),
            settings,
            hub,
            span,
            clean_stop: false,
            signaling: None,
            calls: HashMap::new(),
            next_call: 1,
            pcs: HashMap::new(),
            streams: HashMap::new(),
            timer: None,
            volume_timer: None,
            quality_loss: crate::quality::LossWindow::default(),
        }
    }

    /// Feed the core one input and carry out what it asks.
    fn drive(&mut self, ctx: &mut Context<Self>, input: Input<PcRole>) {
        self.core.handle_input(input, Instant::now());
        while let Some(out) = self.core.poll_output() {
            self.perform(ctx, out);
        }
        self.schedule_wake(ctx);
    }

    /// Wake the core at its next deadline (one timer, moved when the deadline moves).
    fn schedule_wake(&mut self, ctx: &mut Context<Self>) {
        let next = self.core.poll_timeout();
        if self.timer.as_ref().map(|(at, _)| *at) == next {
            return;
        }
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let delay = at.saturating_duration_since(Instant::now());
            let handle = ctx.run_later(delay, |act, ctx| {
                act.timer = None;
                act.drive(ctx, Input::Timeout);
            });
            self.timer = Some((at, handle));
        }
    }

    fn perform(&mut self, ctx: &mut Context<Self>, out: Output<PcRole>) {
        match out {
            Output::Event(event) => {
                if let ClientEvent::ConnectionStateChanged { state, .. } = &event {
                    let state = *state;
                    self.hub.update(|v| v.connection_state = state);
                }
                self.hub.emit(event);
            }
            Output::ViewMember { user_id, present } => self.hub.update(|v| {
                if present {
                    v.remote_users.insert(user_id);
                } else {
                    v.remote_users.remove(&user_id);
                }
            }),
            Output::ViewMuted { user_id, state } => self.hub.update(|v| match state {
                Some(state) => {
                    v.muted.insert(user_id, state);
                }
                None => {
                    v.muted.remove(&user_id);
                }
            }),
            Output::ViewCleared => self.hub.update(|v| {
                v.muted.clear();
                v.remote_users.clear();
            }),
            Output::Reply { call, result } => {
                if let Some(tx) = self.calls.remove(&call) {
                    let _ = tx.send(result);
                }
            }
            Output::Connect {
                generation,
                join,
                timeout,
            } => self.connect(ctx, generation, join, timeout),
            Output::StartHeartbeat { interval, missed } => {
                if let Some((_, sig)) = &self.signaling {
                    sig.do_send(StartHeartbeat { interval, missed });
                }
            }
            Output::CloseSignaling => {
                if let Some((_, sig)) = self.signaling.take() {
                    sig.do_send(CloseSignaling);
                }
            }
            Output::Leave { call, send_leave } => self.leave(ctx, call, send_leave),
            Output::Request {
                id,
                msg,
                kind,
                timeout,
            } => {
                let Some((_, sig)) = self.signaling.clone() else {
                    let result = Err(SignalError::Lost);
                    self.core
                        .handle_input(Input::Replied { id, result }, Instant::now());
                    return;
                };
                let request = sig.send(SignalRequest { msg, kind, timeout });
                ctx.spawn(
                    async move { request.await.unwrap_or(Err(SignalError::Lost)) }
                        .into_actor(self)
                        .map(move |result, act, ctx| act.drive(ctx, Input::Replied { id, result })),
                );
            }
            Output::BuildPipeline { key, pc_id, spec } => {
                // The receive side exists at once, so the link negotiates while the pipeline
                // starts (GStreamer state changes block: elsewhere); packets that arrive
                // before it is up are kept for it.
                let remote = Arc::new(RemoteMedia::new());
                let role = PcRole::Downlink {
                    remote: remote.clone(),
                    audio: spec.audio,
                    video: spec.video_codec.is_some(),
                };
                self.core.handle_input(
                    Input::PipelineBuilt {
                        key: key.clone(),
                        pc_id,
                        result: Ok(role),
                    },
                    Instant::now(),
                );
                // SEI messages in the video become `sei-message` events (from a GStreamer
                // thread: the hub only queues them).
                let sei: rtcroom_pipelines::SeiHandler = {
                    let (hub, user_id, stream_type) =
                        (self.hub.clone(), spec.user_id.clone(), spec.stream_type);
                    Arc::new(move |m: rtcroom_pipelines::SeiMessage| {
                        hub.emit(ClientEvent::SeiMessage {
                            user_id: user_id.clone(),
                            stream_type,
                            payload_type: m.payload_type,
                            data: m.data,
                        })
                    })
                };
                let build = tokio::task::spawn_blocking(move || remote.start(&spec, Some(sei)));
                ctx.spawn(build.into_actor(self).map(move |res, act, ctx| {
                    let (result, events) = match res {
                        Ok(Ok(events)) => (Ok(()), Some(events)),
                        Ok(Err(e)) => (Err(e), None),
                        Err(join) => (
                            Err(RtcError::new(
                                ErrorCode::InitializeFailed,
                                format!("remote pipeline start panicked: {join}"),
                            )),
                            None,
                        ),
                    };
                    // Watch the pipeline only while it is the link's current one.
                    let current = act.core.pipeline_of(&key) == Some(pc_id);
                    if let (true, Some(events)) = (current, events) {
                        let watcher = RemoteStreamActor::new(
                            key.clone(),
                            pc_id,
                            events,
                            ctx.address().recipient(),
                            act.span.clone(),
                        )
                        .start();
                        if let Some(old) = act.streams.insert(key.clone(), watcher) {
                            old.do_send(StopStream);
                        }
                    }
                    act.drive(
                        ctx,
                        Input::PipelineStarted {
                            key,
                            pipeline: pc_id,
                            result,
                        },
                    );
                }));
            }
            Output::Negotiate {
                key,
                pc_id,
                media,
                request,
            } => {
                let fut = negotiate(
                    Negotiation {
                        id: pc_id,
                        role: media.clone(),
                        owner: ctx.address().recipient(),
                        signaling: self.signaling.as_ref().map(|(_, s)| s.clone()),
                        request_timeout: self.settings.request_timeout,
                        connect_timeout: self.settings.media_connect_timeout,
                        span: self.span.clone(),
                    },
                    move |sdp| request.message(sdp),
                );
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                    let (result, muted) = match res {
                        Ok(pc) => {
                            act.pcs.insert(pc_id, pc);
                            let muted = match &media {
                                PcRole::Uplink(local) => [
                                    rtcroom_pipelines::MediaKind::Audio,
                                    rtcroom_pipelines::MediaKind::Video,
                                ]
                                .into_iter()
                                .filter(|k| local.is_muted(*k))
                                .map(wire_kind)
                                .collect(),
                                PcRole::Downlink { .. } => Vec::new(),
                            };
                            (Ok(()), muted)
                        }
                        Err(e) => (Err(e), Vec::new()),
                    };
                    act.drive(
                        ctx,
                        Input::Negotiated {
                            key,
                            pc_id,
                            result,
                            muted,
                        },
                    );
                }));
            }
            Output::RestartIce {
                key,
                pc_id,
                request,
            } => {
                let pc = self.pcs.get(&pc_id).cloned();
                let signaling = self.signaling.as_ref().map(|(_, s)| s.clone());
                let (request_timeout, connect_timeout) = (
                    self.settings.request_timeout,
                    self.settings.media_connect_timeout,
                );
                let fut = async move {
                    let pc = pc.ok_or_else(|| {
                        RtcError::new(ErrorCode::IceTransportError, "peer connection gone")
                    })?;
                    let exchange = Exchange {
                        pc: &pc,
                        signaling,
                        request_timeout,
                        connect_timeout,
                    };
                    exchange
                        .run(true, move |sdp| request.ice_restart_message(sdp))
                        .await
                };
                ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
                    act.drive(ctx, Input::IceRestarted { key, pc_id, result });
                }));
            }
            Output::InsertSei {
                call,
                media,
                payload_type,
                data,
            } => {
                let result = match media {
                    PcRole::Uplink(local) => local.send_sei(payload_type, data),
                    PcRole::Downlink { .. } => Err(RtcError::invalid_operation(
                        None,
                        "SEI messages go with a published stream",
                    )),
                };
                if let Some(tx) = self.calls.remove(&call) {
                    let _ = tx.send(result);
                }
            }
            Output::SetActiveLayers { media, active, .. } => {
                if let PcRole::Uplink(local) = media {
                    local.set_active_layers(&active);
                }
            }
            Output::ClosePc { pc_id } => {
                if let Some(pc) = self.pcs.remove(&pc_id) {
                    pc.do_send(ClosePc);
                }
            }
            Output::LinkUp { media, .. } => {
                if let PcRole::Uplink(local) = media {
                    local.set_publisher(Some(ctx.address().recipient()));
                }
            }
            Output::LinkEnded { key, media } => match media {
                PcRole::Uplink(local) => local.set_publisher(None),
                // The pipeline stops at once, so a recording is finalised now, not when its
                // closing peer connection lets go of it; its watcher stops first, so the
                // teardown is not mistaken for a failure.
                PcRole::Downlink { remote, .. } => {
                    if let Some(watcher) = self.streams.remove(&key) {
                        watcher.do_send(StopStream);
                    }
                    remote.finish();
                }
            },
        }
    }

    /// Open a connection for attempt `generation` and send the join on it.
    fn connect(
        &mut self,
        ctx: &mut Context<Self>,
        generation: Generation,
        join: ClientMessage,
        timeout: Duration,
    ) {
        let url = self.settings.server_url.clone();
        let tls = self.settings.tls.clone();
        let deadline = Instant::now() + timeout;
        ctx.spawn(
            async move { connect(&url, tls, timeout).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(ws) => act.send_join(ctx, generation, join, ws, deadline),
                    Err(e) => act.drive(
                        ctx,
                        Input::AttemptDone {
                            generation,
                            result: Err(e),
                        },
                    ),
                }),
        );
    }

    /// The socket is open: hand it to a new `SignalingActor` (owned by this actor from now
    /// on, so it is closed whatever happens next) and send the join.
    fn send_join(
        &mut self,
        ctx: &mut Context<Self>,
        generation: Generation,
        join: ClientMessage,
        ws: WsStream,
        deadline: Instant,
    ) {
        if generation != self.core.generation() {
            // Superseded (left or timed out meanwhile): dropping the socket closes it.
            return;
        }
        let me = ctx.address().recipient::<SignalEvent>();
        let addr = SignalingActor::new(ws, generation, me, self.span.clone()).start();
        if let Some((_, old)) = self.signaling.replace((generation, addr.clone())) {
            old.do_send(CloseSignaling);
        }
        let request = addr.send(SignalRequest {
            msg: join,
            kind: RequestKind::Join,
            timeout: deadline.saturating_duration_since(Instant::now()),
        });
        ctx.spawn(
            async move {
                match request.await.unwrap_or(Err(SignalError::Lost)) {
                    Ok(Some(ReplyData::Joined(result))) => Ok(result),
                    Ok(_) => Err(SignalError::Rejected(RtcError::new(
                        ErrorCode::JoinRoomFailed,
                        "the server answered the join without a join result",
                    ))),
                    Err(e) => Err(e),
                }
            }
            .into_actor(self)
            .map(move |result, act, ctx| act.drive(ctx, Input::AttemptDone { generation, result })),
        );
    }

    /// Leaving: send `leave` on the current connection (awaited for the user's call, fire
    /// and forget at shutdown), close it, answer the call.
    fn leave(&mut self, ctx: &mut Context<Self>, call: Option<CallId>, send_leave: bool) {
        let sig = self.signaling.take().map(|(_, s)| s);
        let timeout = self.settings.request_timeout;
        let Some(call) = call else {
            if let Some(sig) = sig {
                if send_leave {
                    // Best effort: the frame goes out before the close frame.
                    sig.do_send(SignalRequest {
                        msg: ClientMessage::Leave,
                        kind: RequestKind::Leave,
                        timeout,
                    });
                }
                sig.do_send(CloseSignaling);
            }
            return;
        };
        let tx = self.calls.remove(&call);
        ctx.spawn(
            async move {
                if let Some(sig) = sig {
                    if send_leave {
                        // Leaving succeeds locally whatever the server says.
                        let _ = sig
                            .send(SignalRequest {
                                msg: ClientMessage::Leave,
                                kind: RequestKind::Leave,
                                timeout,
                            })
                            .await;
                    }
                    sig.do_send(CloseSignaling);
                }
                if let Some(tx) = tx {
                    let _ = tx.send(Ok(()));
                }
            }
            .into_actor(self),
        );
    }
}

/// Start (or change, or with a zero interval stop) `audio-volume` reports.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EnableAudioVolumeEvaluation(pub Duration);

impl Handler<EnableAudioVolumeEvaluation> for ClientActor {
    type Result = ();

    fn handle(&mut self, msg: EnableAudioVolumeEvaluation, ctx: &mut Self::Context) {
        if let Some(timer) = self.volume_timer.take() {
            ctx.cancel_future(timer);
        }
        if !msg.0.is_zero() {
            self.volume_timer = Some(ctx.run_interval(msg.0, |act, _| act.report_audio_volume()));
        }
    }
}

impl ClientActor {
    /// Emit `audio-volume` with every audio stream's loudest volume since the last report
    /// (only while in a room and when there is at least one).
    fn report_audio_volume(&mut self) {
        if self.core.phase() != Phase::Joined {
            return;
        }
        let me = &self.settings.user_id;
        let result: Vec<AudioVolume> = self
            .core
            .links()
            .filter_map(|(key, media, up)| {
                let (user_id, stream_type, level) = match (key, media) {
                    (LinkKey::Up(t), Some(PcRole::Uplink(local))) if up.is_some() => {
                        (me.clone(), *t, local.audio_level()?)
                    }
                    (LinkKey::Down(u, t), Some(PcRole::Downlink { remote, .. })) => {
                        (u.clone(), *t, remote.audio_level()?)
                    }
                    _ => return None,
                };
                Some(AudioVolume {
                    user_id,
                    audio_volume: level,
                    stream_type,
                })
            })
            .collect();
        if !result.is_empty() {
            self.hub.emit(ClientEvent::AudioVolume(result));
        }
    }
}

/// How often `network-quality` is reported (TRTC: every 2 s).
pub const NETWORK_QUALITY_INTERVAL: Duration = Duration::from_secs(2);

impl Actor for ClientActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(NETWORK_QUALITY_INTERVAL, |act, ctx| {
            act.report_network_quality(ctx)
        });
    }
}

impl ClientActor {
    /// Measure the last interval and emit `network-quality` (only while in a room).
    fn report_network_quality(&mut self, ctx: &mut Context<Self>) {
        if self.core.phase() != Phase::Joined {
            return;
        }
        let (mut received, mut lost) = (0u64, 0u64);
        let mut uplinks = Vec::new();
        for (key, media, up) in self.core.links() {
            match (media, up, key) {
                (Some(PcRole::Downlink { remote, .. }), _, _) => {
                    let s = remote.stats();
                    received += s.audio_packets_received + s.video_packets_received;
                    lost += s.audio_packets_lost + s.video_packets_lost;
                }
                (_, Some(pc_id), LinkKey::Up(_)) => {
                    if let Some(pc) = self.pcs.get(&pc_id) {
                        uplinks.push(pc.clone());
                    }
                }
                _ => {}
            }
        }
        let downlink_loss = self.quality_loss.update(received, lost);
        let has_downlinks = received > 0 || lost > 0;
        let fut = async move {
            let mut rtt: Option<f64> = None;
            for pc in uplinks {
                if let Ok(s) = pc.send(crate::media::peer::GetTransportStats).await
                    && let Some(r) = s.rtt
                {
                    let ms = r.as_secs_f64() * 1000.0;
                    rtt = Some(rtt.map_or(ms, |x: f64| x.max(ms)));
                }
            }
            rtt
        };
        ctx.spawn(fut.into_actor(self).map(move |uplink_rtt_ms, act, _| {
            use crate::quality::network_quality;
            let uplink = network_quality(None, uplink_rtt_ms, true);
            let downlink = if has_downlinks {
                network_quality(downlink_loss.or(Some(0.0)), None, true)
            } else {
                0
            };
            act.hub.emit(ClientEvent::NetworkQuality {
                uplink,
                downlink,
                uplink_rtt_ms,
                downlink_loss,
            });
        }));
    }
}

impl Drop for ClientActor {
    fn drop(&mut self) {
        if let Some((_, sig)) = self.signaling.take() {
            sig.do_send(CloseSignaling);
        }
        for (_, pc) in self.pcs.drain() {
            pc.do_send(ClosePc);
        }
        for (_, watcher) in self.streams.drain() {
            watcher.do_send(StopStream);
        }
        if !self.clean_stop {
            tracing::error!(parent: &self.span, "client actor stopped unexpectedly");
            self.hub.update(|v| {
                v.connection_state = crate::lifecycle::ConnectionState::Disconnected;
            });
            self.hub.emit(ClientEvent::Error(RtcError::new(
                ErrorCode::Unknown,
                "the client actor stopped unexpectedly",
            )));
        }
        self.hub.close();
    }
}

impl Handler<ClientRequest> for ClientActor {
    type Result = ResponseActFuture<Self, Result<(), RtcError>>;

    fn handle(&mut self, req: ClientRequest, ctx: &mut Self::Context) -> Self::Result {
        let request = req.0;
        let call = self.next_call;
        self.next_call += 1;
        let (tx, rx) = oneshot::channel();
        self.calls.insert(call, tx);
        self.drive(ctx, Input::Call { call, request });
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(actor_gone())) }.into_actor(self))
    }
}

impl Handler<SignalEvent> for ClientActor {
    type Result = ();

    fn handle(&mut self, msg: SignalEvent, ctx: &mut Self::Context) {
        let input = match msg {
            SignalEvent::Server(generation, event) => Input::Server { generation, event },
            SignalEvent::Lost(generation, reason) => {
                if self
                    .signaling
                    .as_ref()
                    .is_some_and(|(g, _)| *g == generation)
                {
                    self.signaling = None;
                }
                Input::SignalLost { generation, reason }
            }
        };
        self.drive(ctx, input);
    }
}

impl Handler<Shutdown> for ClientActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        self.clean_stop = true;
        self.drive(ctx, Input::Shutdown);
        ctx.stop();
    }
}

impl Handler<PcEvent> for ClientActor {
    type Result = ();

    fn handle(&mut self, ev: PcEvent, ctx: &mut Self::Context) {
        if matches!(ev.kind, PcEventKind::Gone) {
            self.pcs.remove(&ev.id);
        }
        self.drive(
            ctx,
            Input::Pc {
                pc_id: ev.id,
                kind: ev.kind,
            },
        );
    }
}

impl Handler<StreamFailed> for ClientActor {
    type Result = ();

    fn handle(&mut self, msg: StreamFailed, ctx: &mut Self::Context) {
        self.drive(
            ctx,
            Input::PipelineFailed {
                key: msg.key,
                pipeline: msg.pipeline,
                error: msg.error,
            },
        );
    }
}

impl Handler<GetTransportStats> for ClientActor {
    type Result = ResponseFuture<Vec<(bool, UserId, StreamType, crate::media::TransportStats)>>;

    fn handle(&mut self, _: GetTransportStats, _: &mut Self::Context) -> Self::Result {
        let me = self.settings.user_id.clone();
        let asks: Vec<_> = self
            .core
            .links()
            .filter_map(|(k, _, up)| {
                let pc = self.pcs.get(&up?)?.clone();
                Some(match k {
                    LinkKey::Up(t) => (true, me.clone(), *t, pc),
                    LinkKey::Down(u, t) => (false, u.clone(), *t, pc),
                })
            })
            .collect();
        Box::pin(async move {
            let mut out = Vec::new();
            for (up, user, t, pc) in asks {
                if let Ok(stats) = pc.send(crate::media::peer::GetTransportStats).await {
                    out.push((up, user, t, stats));
                }
            }
            out
        })
    }
}

impl Handler<GetRemoteStats> for ClientActor {
    type Result = MessageResult<GetRemoteStats>;

    fn handle(&mut self, _: GetRemoteStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.core
                .links()
                .filter_map(|(k, media, _)| match (k, media) {
                    (LinkKey::Down(u, t), Some(PcRole::Downlink { remote, .. })) => {
                        Some((u.clone(), *t, remote.stats()))
                    }
                    _ => None,
                })
                .collect(),
        )
    }
}

/// Fault injection for supervision tests: crash the peer connection actor of every link.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct CrashPeerConnections;

#[cfg(feature = "fault-injection")]
impl Handler<CrashPeerConnections> for ClientActor {
    type Result = usize;

    fn handle(&mut self, _: CrashPeerConnections, _: &mut Self::Context) -> usize {
        let mut n = 0;
        for (_, _, up) in self.core.links() {
            if let Some(pc) = up.and_then(|id| self.pcs.get(&id)) {
                pc.do_send(crate::media::peer::CrashPc);
                n += 1;
            }
        }
        n
    }
}

/// Fault injection for supervision tests: make every receive pipeline fail (an element
/// error on its bus, as a failing decoder reports) and crash every pipeline watcher when
/// `crash_watchers`. Replies with the number of pipelines.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct FailRemotePipelines {
    /// Panic the watcher actors instead.
    pub crash_watchers: bool,
}

#[cfg(feature = "fault-injection")]
impl Handler<FailRemotePipelines> for ClientActor {
    type Result = usize;

    fn handle(&mut self, msg: FailRemotePipelines, _: &mut Self::Context) -> usize {
        if msg.crash_watchers {
            for watcher in self.streams.values() {
                watcher.do_send(crate::media::stream::CrashStream);
            }
            return self.streams.len();
        }
        let mut n = 0;
        for (_, media, _) in self.core.links() {
            if let Some(PcRole::Downlink { remote, .. }) = media {
                remote.inject_failure_for_test();
                n += 1;
            }
        }
        n
    }
}

/// Fault injection for supervision tests: crash the current signalling actor.
#[cfg(test)]
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct CrashSignaling;

#[cfg(test)]
impl Handler<CrashSignaling> for ClientActor {
    type Result = ();

    fn handle(&mut self, _: CrashSignaling, _: &mut Self::Context) {
        if let Some((_, sig)) = &self.signaling {
            sig.do_send(crate::signaling::Crash);
        }
    }
}

/// One offer/answer exchange: a new peer connection actor, its offer through signalling,
/// the server's answer, and the wait for ICE + DTLS. On failure the new peer connection is
/// closed.
/// Everything one offer/answer exchange needs.
struct Negotiation {
    id: PcId,
    role: PcRole,
    owner: Recipient<PcEvent>,
    signaling: Option<Addr<SignalingActor>>,
    request_timeout: Duration,
    connect_timeout: Duration,
    span: tracing::Span,
}

async fn negotiate(
    n: Negotiation,
    message: impl FnOnce(String) -> ClientMessage,
) -> Result<Addr<PeerConnectionActor>, RtcError> {
    let Negotiation {
        id,
        role,
        owner,
        signaling,
        request_timeout,
        connect_timeout,
        span,
    } = n;
    if signaling.is_none() {
        return Err(RtcError::new(
            ErrorCode::SignalChannelError,
            "no signalling connection",
        ));
    }
    let pc = PeerConnectionActor::create(id, role, owner, span).await?;
    let exchange = Exchange {
        pc: &pc,
        signaling,
        request_timeout,
        connect_timeout,
    };
    match exchange.run(false, message).await {
        Ok(()) => Ok(pc),
        Err(e) => {
            pc.do_send(ClosePc);
            Err(e)
        }
    }
}

/// One offer/answer exchange on an existing peer connection: offer (an ICE restart's, or
/// the first), send it in a request, apply the answer, wait until connected.
struct Exchange<'a> {
    pc: &'a Addr<PeerConnectionActor>,
    signaling: Option<Addr<SignalingActor>>,
    request_timeout: Duration,
    connect_timeout: Duration,
}

impl Exchange<'_> {
    async fn run(
        self,
        ice_restart: bool,
        message: impl FnOnce(String) -> ClientMessage,
    ) -> Result<(), RtcError> {
        let Exchange {
            pc,
            signaling,
            request_timeout,
            connect_timeout,
        } = self;
        let signaling = signaling.ok_or_else(|| {
            RtcError::new(ErrorCode::SignalChannelError, "no signalling connection")
        })?;
        let gone = |_| {
            RtcError::new(
                ErrorCode::IceTransportError,
                "peer connection actor stopped",
            )
        };
        let offer = pc.send(CreateOffer { ice_restart }).await.map_err(gone)??;
        let reply = signaling
            .send(SignalRequest {
                msg: message(offer),
                kind: RequestKind::Other,
                timeout: request_timeout,
            })
            .await
            .unwrap_or(Err(SignalError::Lost))
            .map_err(|e| e.into_rtc_error(ErrorCode::SignalChannelError))?;
        let Some(ReplyData::Answer { sdp }) = reply else {
            return Err(RtcError::new(
                ErrorCode::IceTransportError,
                "the server answered without an SDP answer",
            ));
        };
        pc.send(ApplyAnswer(sdp)).await.map_err(gone)??;
        if !pc
            .send(WaitConnected(connect_timeout))
            .await
            .unwrap_or(false)
        {
            return Err(RtcError::new(
                ErrorCode::IceTransportError,
                format!("the peer connection did not connect within {connect_timeout:?}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::heartbeat_interval;
    use crate::lifecycle::ConnectionState;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    /// A server that accepts every join and answers every request; reports each join.
    async fn answering_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        actix::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                actix::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(WsMessage::Text(t))) = ws.next().await {
                        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                        let id = v["id"].as_u64().unwrap();
                        let reply = if v["msg"]["type"] == "join" {
                            let _ = tx.send(());
                            serde_json::json!({"type":"reply","v":1,"id":id,"data":{
                                "kind":"joined","roomId":1,"role":"anchor","members":[],
                                "streams":[],"heartbeatIntervalS":2}})
                        } else {
                            serde_json::json!({"type":"reply","v":1,"id":id})
                        };
                        if ws.send(WsMessage::text(reply.to_string())).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, rx)
    }

    #[test]
    fn heartbeats_follow_the_shorter_of_config_and_server() {
        let s = Duration::from_secs(1);
        assert_eq!(heartbeat_interval(2 * s, 2), 2 * s);
        assert_eq!(heartbeat_interval(30 * s, 2), 2 * s);
        assert_eq!(heartbeat_interval(s / 10, 2), s / 10);
        assert_eq!(heartbeat_interval(2 * s, 0), 2 * s);
    }

    #[actix::test]
    async fn a_crashed_signaling_actor_is_replaced_and_the_client_rejoins() {
        let (url, mut joins) = answering_server().await;
        let hub = Arc::new(ClientHub::new());
        let mut events = hub.subscribe();
        let mut settings = ClientSettings::new(
            1_400_000_000,
            UserId::new("sup").unwrap(),
            "sig".into(),
            Mode::Rtc,
            url,
        );
        settings.reconnect.unit = Duration::from_millis(10);
        let client = ClientActor::new(settings, hub.clone()).start();
        client
            .send(ClientRequest(Call::Join(JoinParams {
                room_id: RoomId::numeric(1).unwrap(),
                role: Role::Anchor,
                private_map_key: None,
            })))
            .await
            .unwrap()
            .unwrap();
        joins.recv().await.unwrap();
        client.do_send(CrashSignaling);
        let states = async {
            let mut seen = Vec::new();
            while let Some(e) = events.recv().await {
                if let ClientEvent::ConnectionStateChanged { state, .. } = e {
                    seen.push(state);
                    if seen.ends_with(&[ConnectionState::Reconnecting, ConnectionState::Connected])
                    {
                        return seen;
                    }
                }
            }
            seen
        };
        let seen = tokio::time::timeout(Duration::from_secs(10), states)
            .await
            .expect("reconnected in time");
        assert_eq!(
            seen,
            [
                ConnectionState::Connecting,
                ConnectionState::Connected,
                ConnectionState::Reconnecting,
                ConnectionState::Connected
            ]
        );
        // The replacement connection joined again; the client actor survived the crash.
        tokio::time::timeout(Duration::from_secs(10), joins.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hub.view().connection_state, ConnectionState::Connected);
        assert!(client.connected());
    }
}
