//! `ClientActor`: one per client. It owns the room state and drives the join state machine
//! ([`Lifecycle`]), the room view ([`RoomState`]) and the signalling connections
//! ([`SignalingActor`], one per connection attempt).
//!
//! Everything the user asks arrives as one [`ClientRequest`] (join, leave, switch-role,
//! publish, unpublish, subscribe, unsubscribe, mute). Each request is answered through its
//! own future, so a slow join or publish never blocks a `leave()` or a server event.
//!
//! Media: each published stream (key: stream type) and each subscribed stream (key: user +
//! stream type) is a link with its current [`PeerConnectionActor`]. A link's peer connection
//! is replaced by `negotiate_link` (new actor, offer, publish/subscribe
//! request, answer, wait for connected); reports of replaced peer connections are stale by
//! id and ignored. Failures go through [`LinkHealth`] (rebuild after a delay, or give up
//! with 0x4007 / 0x4008). After a re-join every link is renegotiated.
//!
//! Supervision: the client actor supervises its signalling connection. When a
//! `SignalingActor` ends for any reason, including a panic inside it, its `Drop` reports
//! [`SignalEvent::Lost`] and the client actor treats that like a network loss: it reconnects
//! with backoff and re-joins. If the client actor itself dies, its `Drop` reports
//! `ClientEvent::Error(UNKNOWN)`, marks the client DISCONNECTED and ends the event streams;
//! the user's calls then fail with UNKNOWN. Nothing restarts a dead client actor (its room
//! state is gone): the user creates a new client. A panic in an actor never takes the
//! process down (the runtime contains it to the actor's task).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::{
    BanReason, ClientMessage, JoinRequest, JoinResult, MediaKind, PublishRequest, ReplyData,
    ServerEvent, StreamInfo, StreamType, SubscribeRequest, VideoCodec,
};
use rtcroom_protocol::{ErrorCode, Mode, Role, RoomId, RtcError, UserId};
use tokio::sync::oneshot;

use crate::backoff::{DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MISSED_HEARTBEATS, ReconnectPolicy};
use crate::error::SignalError;
use crate::event::ClientEvent;
use crate::hub::ClientHub;
use crate::lifecycle::{Lifecycle, Phase, Recovery, StateChange};
use crate::media::peer::{ApplyAnswer, ClosePc, CreateOffer, WaitConnected};
use crate::media::{
    LinkAction, LinkHealth, LinkKind, LocalMedia, PcEvent, PcEventKind, PcId, PcRole,
    PeerConnectionActor, RemoteMedia, RemoteMediaStats, SubscribeOutput,
};
use crate::requests::{DEFAULT_JOIN_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, RequestKind};
use crate::room::RoomState;
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
}

/// A user request to the client actor.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), RtcError>")]
#[non_exhaustive]
pub enum ClientRequest {
    /// Enter a room.
    Join(JoinParams),
    /// Leave the room; the client is finished afterwards.
    Leave,
    /// Change role (live mode).
    SwitchRole(Role),
    /// Publish a local stream (one uplink peer connection per stream type).
    Publish(Arc<LocalMedia>),
    /// Stop publishing a local stream.
    Unpublish(Arc<LocalMedia>),
    /// Subscribe to a remote stream (one downlink peer connection per stream).
    Subscribe(SubscribeParams),
    /// Stop a subscription.
    Unsubscribe {
        /// Whose stream.
        user_id: UserId,
        /// Which stream.
        stream_type: StreamType,
    },
    /// Tell the room that a published stream's audio or video is (un)muted.
    Mute {
        /// Which stream.
        stream_type: StreamType,
        /// Audio or video.
        kind: MediaKind,
        /// Muted or not.
        muted: bool,
    },
    /// Send a custom message to the room's other members.
    CustomMessage {
        /// Command id, 1–10.
        cmd_id: u8,
        /// The message, 1 byte to 1 KB.
        data: Vec<u8>,
    },
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

/// Which media link: a published stream (uplink) or a subscribed one (downlink).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LinkKey {
    Up(StreamType),
    Down(UserId, StreamType),
}

/// Where a link's peer connection is.
#[derive(Debug)]
enum LinkState {
    /// No peer connection: a downlink waits for its stream to be published again.
    Waiting,
    /// An offer/answer exchange is running for peer connection `PcId`.
    Negotiating,
    /// Connected (or was).
    Up(Addr<PeerConnectionActor>),
}

/// One published or subscribed stream and its current peer connection.
struct Link {
    role: PcRole,
    /// For downlinks: what was subscribed.
    audio: bool,
    video: bool,
    /// For downlinks: the subscription as asked for, and the video codec its pipeline
    /// decodes (a publisher that comes back with another codec is subscribed again).
    subscription: Option<(SubscribeParams, Option<VideoCodec>)>,
    pc_id: PcId,
    state: LinkState,
    health: LinkHealth,
    /// StreamSubscribed was reported (downlinks).
    announced: bool,
}

impl Link {
    fn close(&mut self) {
        if let LinkState::Up(pc) = std::mem::replace(&mut self.state, LinkState::Waiting) {
            pc.do_send(ClosePc);
        }
    }
}

impl Drop for Link {
    /// A link leaves the table only when it ends for good (unsubscribe, stream gone, replaced
    /// by a new subscription, leave): a downlink's pipeline stops at once, so a recording is
    /// finalised now, not when its closing peer connection lets go of it.
    fn drop(&mut self) {
        if let PcRole::Downlink { remote, .. } = &self.role {
            remote.finish();
        }
    }
}

/// The user's handle was dropped: leave (best effort) and stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Which kind of connection attempt is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    /// The user's join.
    Join,
    /// Reconnect attempt n: connect and re-join silently.
    Rejoin(u32),
}

type AttemptResult = Result<JoinResult, SignalError>;

/// The client actor.
pub struct ClientActor {
    settings: Arc<ClientSettings>,
    life: Lifecycle,
    room: RoomState,
    params: Option<JoinParams>,
    pending_join: Option<oneshot::Sender<Result<(), RtcError>>>,
    signaling: Option<Addr<SignalingActor>>,
    /// The current connection; reports and timers of older ones are ignored.
    generation: Generation,
    /// The current connection already reported itself lost.
    current_lost: bool,
    /// Server events that arrived before the join answer was processed.
    early_events: Vec<ServerEvent>,
    hub: Arc<ClientHub>,
    span: tracing::Span,
    clean_stop: bool,
    /// Published and subscribed streams.
    links: HashMap<LinkKey, Link>,
    next_pc_id: PcId,
    /// Downlink loss between `network-quality` reports.
    quality_loss: crate::quality::LossWindow,
}

/// The heartbeat interval: the configured one, or the server's (`heartbeatIntervalS` in the
/// join answer) when that is shorter, so a server that wants more never evicts us.
fn heartbeat_interval(configured: Duration, server_s: u32) -> Duration {
    if server_s == 0 {
        configured
    } else {
        configured.min(Duration::from_secs(u64::from(server_s)))
    }
}

fn actor_gone() -> RtcError {
    RtcError::new(ErrorCode::Unknown, "the client actor stopped")
}

impl ClientActor {
    /// A client with these settings, reporting through `hub`.
    pub fn new(settings: ClientSettings, hub: Arc<ClientHub>) -> Self {
        let span = tracing::info_span!(
            "rtcroom_client",
            user = %settings.user_id,
            room = tracing::field::Empty
        );
        ClientActor {
            life: Lifecycle::new(settings.reconnect),
            settings: Arc::new(settings),
            room: RoomState::new(),
            params: None,
            pending_join: None,
            signaling: None,
            generation: 0,
            current_lost: false,
            early_events: Vec::new(),
            hub,
            span,
            clean_stop: false,
            links: HashMap::new(),
            next_pc_id: 1,
            quality_loss: crate::quality::LossWindow::default(),
        }
    }

    fn emit(&self, event: ClientEvent) {
        tracing::debug!(parent: &self.span, ?event, "event");
        self.hub.emit(event);
    }

    fn report(&self, change: StateChange) {
        tracing::info!(parent: &self.span, prev = %change.prev, state = %change.state, "connection state");
        self.hub.update(|v| v.connection_state = change.state);
        self.emit(ClientEvent::ConnectionStateChanged {
            prev: change.prev,
            state: change.state,
        });
    }

    fn refresh_view(&self) {
        let muted = self.room.muted_state();
        let users: Vec<UserId> = self.room.members().cloned().collect();
        self.hub.update(|v| {
            v.muted = muted;
            v.remote_users = users;
        });
    }

    /// Emit room events; the view is updated first, so a user who reads the view on an
    /// event sees the state after it.
    fn emit_all(&self, events: Vec<ClientEvent>) {
        self.refresh_view();
        for e in events {
            self.emit(e);
        }
    }

    /// Emit room events, then follow them with the media plane: drop subscriptions of
    /// removed streams, resume waiting ones and auto-subscribe to new ones.
    fn emit_room_events(&mut self, ctx: &mut Context<Self>, events: Vec<ClientEvent>) {
        self.emit_room_events_inner(ctx, events, false);
    }

    /// `rejoin`: the events are the difference found by a re-join. A stream missing then
    /// may only not be published again yet (the server restarted): its subscription waits
    /// for it instead of ending.
    fn emit_room_events_inner(
        &mut self,
        ctx: &mut Context<Self>,
        events: Vec<ClientEvent>,
        rejoin: bool,
    ) {
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
        self.emit_all(events);
        for e in media {
            match e {
                ClientEvent::StreamAdded(info) => self.on_stream_added(ctx, info),
                ClientEvent::StreamUpdated(info) => self.on_stream_updated(ctx, info),
                ClientEvent::StreamRemoved(_) if rejoin => {}
                ClientEvent::StreamRemoved(info) => {
                    let key = LinkKey::Down(info.user_id, info.stream_type);
                    if let Some(mut link) = self.links.remove(&key) {
                        link.close();
                    }
                }
                _ => {}
            }
        }
    }

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
        self.current_lost = false;
        self.early_events.clear();
        if let Some(sig) = self.signaling.take() {
            sig.do_send(CloseSignaling);
        }
    }

    /// Open a connection and join on it (the user's join, or a silent re-join).
    fn start_attempt(&mut self, ctx: &mut Context<Self>, attempt: Attempt) {
        self.drop_connection();
        let generation = self.generation;
        tracing::info!(parent: &self.span, ?attempt, "connecting");
        let url = self.settings.server_url.clone();
        let tls = self.settings.tls.clone();
        let timeout = self.settings.join_timeout;
        let deadline = Instant::now() + timeout;
        ctx.spawn(
            async move { connect(&url, tls, timeout).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(ws) => act.send_join(ctx, generation, attempt, ws, deadline),
                    Err(e) => act.attempt_done(ctx, generation, attempt, Err(e)),
                }),
        );
    }

    /// The socket is open: hand it to a new `SignalingActor` (owned by this actor from now
    /// on, so it is closed whatever happens next) and send the join.
    fn send_join(
        &mut self,
        ctx: &mut Context<Self>,
        generation: Generation,
        attempt: Attempt,
        ws: WsStream,
        deadline: Instant,
    ) {
        if generation != self.generation {
            // Superseded (left meanwhile): dropping the socket closes it.
            return;
        }
        let Some(join) = self.join_request() else {
            // Attempts only start after a join stored its parameters.
            tracing::error!(parent: &self.span, "connection attempt without join parameters");
            return;
        };
        let me = ctx.address().recipient::<SignalEvent>();
        let addr = SignalingActor::new(ws, generation, me, self.span.clone()).start();
        self.signaling = Some(addr.clone());
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
            .map(move |res, act, ctx| act.attempt_done(ctx, generation, attempt, res)),
        );
    }

    fn attempt_done(
        &mut self,
        ctx: &mut Context<Self>,
        generation: Generation,
        attempt: Attempt,
        res: AttemptResult,
    ) {
        if generation != self.generation {
            // Superseded (left meanwhile); its connection was closed then.
            return;
        }
        match res {
            Ok(result) => {
                let change = match attempt {
                    Attempt::Join => self.life.join_succeeded(),
                    Attempt::Rejoin(_) => self.life.rejoined(),
                };
                let Some(change) = change else {
                    self.drop_connection();
                    return;
                };
                if let Some(sig) = &self.signaling {
                    sig.do_send(StartHeartbeat {
                        interval: heartbeat_interval(
                            self.settings.heartbeat_interval,
                            result.heartbeat_interval_s,
                        ),
                        missed: self.settings.missed_heartbeats,
                    });
                }
                self.report(change);
                let events = self.room.joined(&result);
                let rejoin = matches!(attempt, Attempt::Rejoin(_));
                if rejoin {
                    self.resume_media(ctx);
                }
                self.emit_room_events_inner(ctx, events, rejoin);
                if let Some(tx) = self.pending_join.take() {
                    let _ = tx.send(Ok(()));
                }
                for event in std::mem::take(&mut self.early_events) {
                    self.on_server_event(ctx, event);
                }
                if self.current_lost {
                    // The connection died between the answer and now.
                    self.on_lost(ctx, "lost right after joining".to_owned());
                }
            }
            Err(error) => {
                if let Some(sig) = self.signaling.take() {
                    sig.do_send(CloseSignaling);
                }
                self.early_events.clear();
                match attempt {
                    Attempt::Join => {
                        if let Some(change) = self.life.join_failed() {
                            let e = error.into_join_error();
                            tracing::info!(parent: &self.span, error = %e, "join failed");
                            self.report(change);
                            if let Some(tx) = self.pending_join.take() {
                                let _ = tx.send(Err(e));
                            }
                        }
                    }
                    Attempt::Rejoin(n) if error.is_retryable() => {
                        tracing::info!(parent: &self.span, attempt = n, %error, "reconnect attempt failed");
                        let recovery = self.life.reconnect_failed();
                        self.recover(ctx, recovery);
                    }
                    Attempt::Rejoin(_) => {
                        if let Some(change) = self.life.rejoin_refused() {
                            let e = error.into_join_error();
                            tracing::warn!(parent: &self.span, error = %e, "re-join refused");
                            self.emit(ClientEvent::Error(e));
                            self.report(change);
                            self.close_media();
                            self.room.clear();
                            self.refresh_view();
                        }
                    }
                }
            }
        }
    }

    fn recover(&mut self, ctx: &mut Context<Self>, recovery: Recovery) {
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
                let generation = self.generation;
                tracing::info!(parent: &self.span, attempt, ?delay, "reconnecting");
                ctx.run_later(delay, move |act, ctx| {
                    if act.generation == generation
                        && act.life.phase() == (Phase::Reconnecting { attempt })
                    {
                        act.start_attempt(ctx, Attempt::Rejoin(attempt));
                    }
                });
            }
            Recovery::GiveUp { error, change } => {
                tracing::warn!(parent: &self.span, %error, "giving up");
                self.drop_connection();
                self.emit(ClientEvent::Error(error));
                self.report(change);
                self.close_media();
                self.room.clear();
                self.refresh_view();
            }
        }
    }

    fn on_lost(&mut self, ctx: &mut Context<Self>, reason: String) {
        self.current_lost = true;
        if self.life.phase() == Phase::Joined {
            tracing::info!(parent: &self.span, %reason, "signalling lost");
            self.signaling = None;
            let recovery = self.life.signal_lost();
            self.recover(ctx, recovery);
        }
        // While connecting or reconnecting the attempt's own future reports the failure.
    }

    fn on_server_event(&mut self, ctx: &mut Context<Self>, event: ServerEvent) {
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
                tracing::info!(parent: &self.span, %message, "timed out by the server; re-joining");
                if let Some(sig) = self.signaling.take() {
                    sig.do_send(CloseSignaling);
                }
                self.on_lost(ctx, "timed out by the server".to_owned());
            }
            ServerEvent::ClientBanned { reason, message } => {
                if let Some(change) = self.life.banned() {
                    tracing::info!(parent: &self.span, ?reason, %message, "removed from the room");
                    self.drop_connection();
                    self.close_media();
                    self.room.clear();
                    self.refresh_view();
                    self.emit(ClientEvent::ClientBanned { reason, message });
                    self.report(change);
                }
            }
            other => {
                let events = self.room.apply(other);
                self.emit_room_events(ctx, events);
            }
        }
    }

    fn join(
        &mut self,
        ctx: &mut Context<Self>,
        params: JoinParams,
    ) -> Result<oneshot::Receiver<Result<(), RtcError>>, RtcError> {
        let change = self.life.join()?;
        self.span
            .record("room", tracing::field::display(&params.room_id));
        self.params = Some(params);
        self.report(change);
        let (tx, rx) = oneshot::channel();
        self.pending_join = Some(tx);
        self.start_attempt(ctx, Attempt::Join);
        Ok(rx)
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
        if self.life.phase() != Phase::Joined {
            return;
        }
        let (mut received, mut lost) = (0u64, 0u64);
        let mut uplinks = Vec::new();
        for (k, l) in &self.links {
            match (&l.role, &l.state, k) {
                (PcRole::Downlink { remote, .. }, _, _) => {
                    let s = remote.stats();
                    received += s.audio_packets_received + s.video_packets_received;
                    lost += s.audio_packets_lost + s.video_packets_lost;
                }
                (_, LinkState::Up(pc), LinkKey::Up(_)) => uplinks.push(pc.clone()),
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
            act.emit(ClientEvent::NetworkQuality {
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
        if let Some(sig) = self.signaling.take() {
            sig.do_send(CloseSignaling);
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
        let _enter = self.span.clone().entered();
        match req {
            ClientRequest::Join(params) => match self.join(ctx, params) {
                Ok(rx) => Box::pin(
                    async move { rx.await.unwrap_or_else(|_| Err(actor_gone())) }.into_actor(self),
                ),
                Err(e) => Box::pin(fut::ready(Err(e))),
            },
            ClientRequest::Leave => {
                let plan = match self.life.leave() {
                    Ok(p) => p,
                    Err(e) => return Box::pin(fut::ready(Err(e))),
                };
                let sig = self.signaling.take();
                self.drop_connection();
                if plan.cancel_join
                    && let Some(tx) = self.pending_join.take()
                {
                    let _ = tx.send(Err(RtcError::new(
                        ErrorCode::JoinRoomFailed,
                        "join cancelled by leave()",
                    )));
                }
                self.close_media();
                self.room.clear();
                self.refresh_view();
                self.report(plan.change);
                let timeout = self.settings.request_timeout;
                Box::pin(
                    async move {
                        if let Some(sig) = sig {
                            if plan.send_leave {
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
                        Ok(())
                    }
                    .into_actor(self),
                )
            }
            ClientRequest::SwitchRole(role) => {
                if let Err(e) = self.life.require_joined("switchRole") {
                    return Box::pin(fut::ready(Err(e)));
                }
                if self.settings.mode != Mode::Live {
                    return Box::pin(fut::ready(Err(RtcError::invalid_operation(
                        None,
                        "switchRole() is only available in live mode",
                    ))));
                }
                let Some(sig) = self.signaling.clone() else {
                    return Box::pin(fut::ready(Err(RtcError::new(
                        ErrorCode::SwitchRoleFailed,
                        "no signalling connection",
                    ))));
                };
                let timeout = self.settings.request_timeout;
                let generation = self.generation;
                Box::pin(
                    async move {
                        sig.send(SignalRequest {
                            msg: ClientMessage::SwitchRole { role },
                            kind: RequestKind::SwitchRole,
                            timeout,
                        })
                        .await
                        .unwrap_or(Err(SignalError::Lost))
                        .map(|_| ())
                        .map_err(|e| e.into_rtc_error(ErrorCode::SwitchRoleFailed))
                    }
                    .into_actor(self)
                    .map(move |res, act, _| {
                        if res.is_ok() && act.generation == generation {
                            // A re-join after a reconnect keeps the new role.
                            if let Some(p) = &mut act.params {
                                p.role = role;
                            }
                        }
                        res
                    }),
                )
            }
            ClientRequest::Publish(local) => self.publish(ctx, local),
            ClientRequest::Unpublish(local) => self.unpublish(local),
            ClientRequest::Subscribe(params) => self.subscribe(ctx, params, true),
            ClientRequest::Unsubscribe {
                user_id,
                stream_type,
            } => self.unsubscribe(user_id, stream_type),
            ClientRequest::Mute {
                stream_type,
                kind,
                muted,
            } => self.mute(stream_type, kind, muted),
            ClientRequest::CustomMessage { cmd_id, data } => self.custom_message(cmd_id, data),
        }
    }
}

impl Handler<SignalEvent> for ClientActor {
    type Result = ();

    fn handle(&mut self, msg: SignalEvent, ctx: &mut Self::Context) {
        match msg {
            SignalEvent::Server(generation, event) if generation == self.generation => {
                self.on_server_event(ctx, event);
            }
            SignalEvent::Lost(generation, reason) if generation == self.generation => {
                self.on_lost(ctx, reason);
            }
            _ => {}
        }
    }
}

impl Handler<Shutdown> for ClientActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        self.clean_stop = true;
        if self.life.phase() == Phase::Joined
            && let Some(sig) = &self.signaling
        {
            // Best effort: the frame goes out before the close frame.
            sig.do_send(SignalRequest {
                msg: ClientMessage::Leave,
                kind: RequestKind::Leave,
                timeout: self.settings.request_timeout,
            });
        }
        self.drop_connection();
        self.close_media();
        ctx.stop();
    }
}

type Reply = ResponseActFuture<ClientActor, Result<(), RtcError>>;

fn ready(r: Result<(), RtcError>) -> Reply {
    Box::pin(fut::ready(r))
}

/// The offer/answer request a link sends with `sdp`.
fn link_message(
    key: &LinkKey,
    role: &PcRole,
    audio: bool,
    video: bool,
    sdp: String,
) -> ClientMessage {
    match key {
        LinkKey::Up(stream_type) => {
            let (has_audio, has_video) = match role {
                PcRole::Uplink(local) => (local.has_audio(), local.has_video()),
                PcRole::Downlink { .. } => (audio, video),
            };
            ClientMessage::Publish(PublishRequest {
                stream_type: *stream_type,
                has_audio,
                has_video,
                sdp: Some(sdp),
            })
        }
        LinkKey::Down(user_id, stream_type) => ClientMessage::Subscribe(SubscribeRequest {
            user_id: user_id.clone(),
            stream_type: *stream_type,
            audio,
            video,
            sdp: Some(sdp),
        }),
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
    let signaling = signaling
        .ok_or_else(|| RtcError::new(ErrorCode::SignalChannelError, "no signalling connection"))?;
    let pc = PeerConnectionActor::create(id, role, owner, span).await?;
    let gone = |_| {
        RtcError::new(
            ErrorCode::IceTransportError,
            "peer connection actor stopped",
        )
    };
    let exchange = async {
        let offer = pc.send(CreateOffer).await.map_err(gone)??;
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
    };
    match exchange.await {
        Ok(()) => Ok(pc),
        Err(e) => {
            pc.do_send(ClosePc);
            Err(e)
        }
    }
}

impl ClientActor {
    fn next_pc(&mut self) -> PcId {
        self.next_pc_id += 1;
        self.next_pc_id
    }

    /// Close every peer connection and forget every link (leave, removal, final failure).
    fn close_media(&mut self) {
        for (_, mut link) in self.links.drain() {
            if let PcRole::Uplink(local) = &link.role {
                local.set_publisher(None);
            }
            link.close();
        }
    }

    fn stream_info(&self, user_id: &UserId, stream_type: StreamType) -> Option<StreamInfo> {
        self.room
            .streams()
            .find(|s| s.user_id == *user_id && s.stream_type == stream_type)
            .cloned()
    }

    /// Start a new peer connection for the link `key` (first negotiation, rebuild, or
    /// resume after a re-join). Any current peer connection is closed; reports of old ones
    /// are ignored from here on (their id is stale). `reply` gets the outcome.
    fn negotiate_link(
        &mut self,
        ctx: &mut Context<Self>,
        key: LinkKey,
        reply: Option<oneshot::Sender<Result<(), RtcError>>>,
    ) {
        let id = self.next_pc();
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        link.close();
        link.pc_id = id;
        link.state = LinkState::Negotiating;
        let role = link.role.clone();
        let (msg_key, msg_role, audio, video) = (key.clone(), role.clone(), link.audio, link.video);
        let fut = negotiate(
            Negotiation {
                id,
                role,
                owner: ctx.address().recipient(),
                signaling: self.signaling.clone(),
                request_timeout: self.settings.request_timeout,
                connect_timeout: self.settings.media_connect_timeout,
                span: self.span.clone(),
            },
            move |sdp| link_message(&msg_key, &msg_role, audio, video, sdp),
        );
        ctx.spawn(
            fut.into_actor(self)
                .map(move |res, act, ctx| act.negotiated(ctx, key, id, res, reply)),
        );
    }

    fn negotiated(
        &mut self,
        ctx: &mut Context<Self>,
        key: LinkKey,
        id: PcId,
        res: Result<Addr<PeerConnectionActor>, RtcError>,
        reply: Option<oneshot::Sender<Result<(), RtcError>>>,
    ) {
        let current = self.links.get(&key).is_some_and(|l| l.pc_id == id);
        let res = match res {
            Ok(pc) if !current => {
                // Unpublished, unsubscribed or superseded meanwhile.
                pc.do_send(ClosePc);
                Err(RtcError::invalid_operation(
                    None,
                    "the stream was unpublished or unsubscribed meanwhile",
                ))
            }
            Ok(pc) => {
                let me = ctx.address().recipient();
                let mut announce = None;
                if let Some(link) = self.links.get_mut(&key) {
                    link.state = LinkState::Up(pc);
                    link.health.connected();
                    match &link.role {
                        PcRole::Uplink(local) => {
                            local.set_publisher(Some(me));
                            // A (re-)published stream starts unmuted on the server.
                            for (kind, wire) in [
                                (rtcroom_pipelines::MediaKind::Audio, MediaKind::Audio),
                                (rtcroom_pipelines::MediaKind::Video, MediaKind::Video),
                            ] {
                                if local.is_muted(kind)
                                    && let Some(sig) = &self.signaling
                                {
                                    sig.do_send(SignalRequest {
                                        msg: ClientMessage::Mute {
                                            stream_type: local.stream_type(),
                                            kind: wire,
                                            muted: true,
                                        },
                                        kind: RequestKind::Other,
                                        timeout: self.settings.request_timeout,
                                    });
                                }
                            }
                        }
                        PcRole::Downlink { .. } if !link.announced => {
                            link.announced = true;
                            announce = Some(key.clone());
                        }
                        PcRole::Downlink { .. } => {}
                    }
                }
                if let Some(LinkKey::Down(user, stream_type)) = announce {
                    let info = self
                        .stream_info(&user, stream_type)
                        .unwrap_or_else(|| RoomState::unknown_stream(&user, stream_type));
                    self.emit(ClientEvent::StreamSubscribed(info));
                }
                tracing::info!(parent: &self.span, ?key, pc = id, "media link connected");
                Ok(())
            }
            Err(e) => {
                tracing::info!(parent: &self.span, ?key, pc = id, error = %e, "media negotiation failed");
                let gone = e.code == ErrorCode::RemoteStreamNotExist;
                if current {
                    if gone && reply.is_none() {
                        // The stream went away meanwhile: wait for it to come back.
                        if let Some(link) = self.links.get_mut(&key) {
                            link.state = LinkState::Waiting;
                        }
                    } else if reply.is_some() {
                        // The user's own publish/subscribe failed: report it, keep nothing.
                        self.links.remove(&key);
                    } else {
                        self.link_failed(ctx, key);
                    }
                }
                Err(e)
            }
        };
        if let Some(tx) = reply {
            let _ = tx.send(res);
        }
    }

    /// A link's peer connection failed or died: rebuild it later, or give up.
    fn link_failed(&mut self, ctx: &mut Context<Self>, key: LinkKey) {
        if self.life.phase() != Phase::Joined {
            // Signalling is down: the re-join renegotiates every link.
            if let Some(link) = self.links.get_mut(&key) {
                link.close();
            }
            return;
        }
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        link.close();
        match link.health.failed() {
            LinkAction::Rebuild { attempt, delay } => {
                let id = link.pc_id;
                tracing::info!(parent: &self.span, ?key, attempt, ?delay, "rebuilding media link");
                ctx.run_later(delay, move |act, ctx| {
                    let still = act
                        .links
                        .get(&key)
                        .is_some_and(|l| l.pc_id == id && !matches!(l.state, LinkState::Up(_)));
                    if still && act.life.phase() == Phase::Joined {
                        act.negotiate_link(ctx, key, None);
                    }
                });
            }
            LinkAction::GiveUp(error) => {
                tracing::warn!(parent: &self.span, ?key, %error, "media link given up");
                if let Some(link) = self.links.remove(&key)
                    && let PcRole::Uplink(local) = &link.role
                {
                    local.set_publisher(None);
                }
                self.emit(ClientEvent::Error(error));
            }
        }
    }

    /// After a re-join: publish every local stream again and re-subscribe every remote
    /// stream that is still published (the others wait for their stream to come back).
    fn resume_media(&mut self, ctx: &mut Context<Self>) {
        let keys: Vec<LinkKey> = self.links.keys().cloned().collect();
        for key in keys {
            let present = match &key {
                LinkKey::Up(_) => true,
                LinkKey::Down(user, stream_type) => {
                    self.stream_info(user, stream_type.to_owned()).is_some()
                }
            };
            // A recording continues in a new file: the media after a re-join is another
            // RTP session (new sequence numbers and timestamps from the server), and one
            // file must never hold two timelines. Subscribing again builds a new pipeline
            // (the old one finalises its file as it goes).
            let recording = self.links.get(&key).and_then(|l| {
                l.subscription
                    .as_ref()
                    .filter(|(p, _)| matches!(p.output, SubscribeOutput::Record { .. }))
                    .map(|(p, _)| p.clone())
            });
            if let Some(link) = self.links.get_mut(&key) {
                link.health.connected();
                link.close();
                if !present {
                    continue;
                }
            }
            match recording {
                Some(params) => {
                    let _ = self.subscribe(ctx, params, false);
                }
                None => self.negotiate_link(ctx, key, None),
            }
        }
    }

    /// A subscribed stream now sends another video codec (its publisher published again with
    /// another one): the server sends a subscription only the codec it negotiated, so
    /// subscribe again, the same way, with a pipeline for the new codec.
    fn on_stream_updated(&mut self, ctx: &mut Context<Self>, info: StreamInfo) {
        let key = LinkKey::Down(info.user_id.clone(), info.stream_type);
        let Some((params, codec)) = self.links.get(&key).and_then(|l| l.subscription.clone())
        else {
            return;
        };
        if params.video && info.has_video && info.video_codec != codec {
            tracing::info!(parent: &self.span, user = %info.user_id, from = ?codec, to = ?info.video_codec,
                "the stream changed its video codec: subscribing again");
            let _ = self.subscribe(ctx, params, false);
        }
    }

    fn on_stream_added(&mut self, ctx: &mut Context<Self>, info: StreamInfo) {
        let key = LinkKey::Down(info.user_id.clone(), info.stream_type);
        match self.links.get(&key) {
            Some(link) if matches!(link.state, LinkState::Waiting) => {
                self.negotiate_link(ctx, key, None);
            }
            Some(_) => {}
            None if self.settings.auto_subscribe => {
                let params = SubscribeParams {
                    user_id: info.user_id.clone(),
                    stream_type: info.stream_type,
                    audio: info.has_audio,
                    video: info.has_video,
                    output: self.settings.auto_subscribe_output.clone(),
                    jitter_latency: rtcroom_pipelines::DEFAULT_JITTER_LATENCY,
                };
                // Auto-subscribe failures are logged, not reported (nobody asked).
                let _ = self.subscribe(ctx, params, false);
            }
            None => {}
        }
    }

    fn publish(&mut self, ctx: &mut Context<Self>, local: Arc<LocalMedia>) -> Reply {
        if let Err(e) = self.life.require_joined("publish") {
            return ready(Err(e));
        }
        let role = self.params.as_ref().map(|p| p.role).unwrap_or(Role::Anchor);
        if self.settings.mode == Mode::Live && role == Role::Audience {
            return ready(Err(RtcError::invalid_operation(
                Some(extra::AUDIENCE_ROLE),
                "an audience member cannot publish: switchRole('anchor') first",
            )));
        }
        let key = LinkKey::Up(local.stream_type());
        if self.links.contains_key(&key) {
            return ready(Err(RtcError::invalid_operation(
                Some(extra::REPEATED_CALL),
                format!("a {:?} stream is already published", local.stream_type()),
            )));
        }
        self.links.insert(
            key.clone(),
            Link {
                role: PcRole::Uplink(local),
                audio: false,
                video: false,
                subscription: None,
                pc_id: 0,
                state: LinkState::Waiting,
                health: LinkHealth::new(LinkKind::Uplink),
                announced: true,
            },
        );
        let (tx, rx) = oneshot::channel();
        self.negotiate_link(ctx, key, Some(tx));
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(actor_gone())) }.into_actor(self))
    }

    fn unpublish(&mut self, local: Arc<LocalMedia>) -> Reply {
        if let Err(e) = self.life.require_joined("unpublish") {
            return ready(Err(e));
        }
        let key = LinkKey::Up(local.stream_type());
        let published_here = matches!(
            self.links.get(&key).map(|l| &l.role),
            Some(PcRole::Uplink(l)) if Arc::ptr_eq(l, &local)
        );
        if !published_here {
            return ready(Err(RtcError::invalid_operation(
                Some(extra::REPEATED_CALL),
                "this stream is not published",
            )));
        }
        if let Some(mut link) = self.links.remove(&key) {
            link.close();
        }
        local.set_publisher(None);
        self.signal_best_effort(ClientMessage::Unpublish {
            stream_type: local.stream_type(),
        })
    }

    /// Send a request whose failure changes nothing locally (the server cleans up itself
    /// when the peer connection goes away).
    fn signal_best_effort(&self, msg: ClientMessage) -> Reply {
        let Some(sig) = self.signaling.clone() else {
            return ready(Ok(()));
        };
        let timeout = self.settings.request_timeout;
        Box::pin(
            async move {
                let _ = sig
                    .send(SignalRequest {
                        msg,
                        kind: RequestKind::Other,
                        timeout,
                    })
                    .await;
                Ok(())
            }
            .into_actor(self),
        )
    }

    fn subscribe(
        &mut self,
        ctx: &mut Context<Self>,
        params: SubscribeParams,
        user_call: bool,
    ) -> Reply {
        if let Err(e) = self.life.require_joined("subscribe") {
            return ready(Err(e));
        }
        if !params.audio && !params.video {
            return ready(Err(RtcError::invalid_operation(
                None,
                "subscribe() needs audio or video (or both)",
            )));
        }
        let Some(info) = self.stream_info(&params.user_id, params.stream_type) else {
            return ready(Err(RtcError::new(
                ErrorCode::RemoteStreamNotExist,
                format!(
                    "{} has no {:?} stream published",
                    params.user_id, params.stream_type
                ),
            )));
        };
        let audio = params.audio && info.has_audio;
        let video = params.video && info.has_video;
        // The stream's codec, as the server negotiated it with the publisher (H.264 for a
        // server that does not say).
        let video_codec = video.then_some(match info.video_codec {
            Some(rtcroom_protocol::signal::VideoCodec::Vp8) => rtcroom_pipelines::VideoCodec::Vp8,
            Some(rtcroom_protocol::signal::VideoCodec::H264) | None => {
                rtcroom_pipelines::VideoCodec::H264
            }
        });
        if !audio && !video {
            return ready(Err(RtcError::invalid_operation(
                None,
                "the stream has none of the tracks asked for",
            )));
        }
        let key = LinkKey::Down(params.user_id.clone(), params.stream_type);
        if let Some(mut old) = self.links.remove(&key) {
            old.close();
        }
        // Reserve the link so a second subscribe replaces this one.
        let reserve = self.next_pc();
        self.links.insert(
            key.clone(),
            Link {
                role: PcRole::Downlink {
                    // Replaced as soon as the pipeline is built.
                    remote: Arc::new(RemoteMedia::empty()),
                    audio,
                    video,
                },
                audio,
                video,
                subscription: Some((params.clone(), info.video_codec)),
                pc_id: reserve,
                state: LinkState::Negotiating,
                health: LinkHealth::new(LinkKind::Downlink),
                announced: false,
            },
        );
        let (tx, rx) = oneshot::channel();
        let (user, stream_type, output) = (params.user_id, params.stream_type, params.output);
        let jitter = params.jitter_latency;
        let build = tokio::task::spawn_blocking(move || {
            RemoteMedia::start(&user, stream_type, audio, video_codec, &output, jitter)
        });
        let span = self.span.clone();
        ctx.spawn(build.into_actor(self).map(move |res, act, ctx| {
            let current = act.links.get(&key).is_some_and(|l| l.pc_id == reserve);
            let media = match res {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    if current {
                        act.links.remove(&key);
                    }
                    let _ = tx.send(Err(e));
                    return;
                }
                Err(join) => {
                    if current {
                        act.links.remove(&key);
                    }
                    let _ = tx.send(Err(RtcError::new(
                        ErrorCode::InitializeFailed,
                        format!("remote pipeline start panicked: {join}"),
                    )));
                    return;
                }
            };
            if !current {
                let _ = tx.send(Err(RtcError::invalid_operation(
                    None,
                    "unsubscribed while subscribing",
                )));
                return;
            }
            if let Some(link) = act.links.get_mut(&key) {
                link.role = PcRole::Downlink {
                    remote: Arc::new(media),
                    audio,
                    video,
                };
            }
            act.negotiate_link(ctx, key, Some(tx));
        }));
        Box::pin(
            async move {
                let res = rx.await.unwrap_or_else(|_| Err(actor_gone()));
                if let Err(e) = &res
                    && !user_call
                {
                    tracing::warn!(parent: &span, error = %e, "auto-subscribe failed");
                }
                res
            }
            .into_actor(self),
        )
    }

    fn unsubscribe(&mut self, user_id: UserId, stream_type: StreamType) -> Reply {
        if let Err(e) = self.life.require_joined("unsubscribe") {
            return ready(Err(e));
        }
        let Some(mut link) = self
            .links
            .remove(&LinkKey::Down(user_id.clone(), stream_type))
        else {
            return ready(Err(RtcError::invalid_operation(
                None,
                format!("not subscribed to {user_id}'s {stream_type:?} stream"),
            )));
        };
        link.close();
        self.signal_best_effort(ClientMessage::Unsubscribe {
            user_id,
            stream_type,
        })
    }

    fn mute(&mut self, stream_type: StreamType, kind: MediaKind, muted: bool) -> Reply {
        if self.life.phase() != Phase::Joined || !self.links.contains_key(&LinkKey::Up(stream_type))
        {
            // Not published (or reconnecting): the local flag is all there is.
            return ready(Ok(()));
        }
        let Some(sig) = self.signaling.clone() else {
            return ready(Ok(()));
        };
        self.room_request(
            sig,
            ClientMessage::Mute {
                stream_type,
                kind,
                muted,
            },
        )
    }

    /// Send a room request whose reply carries nothing; a lost signalling connection or a
    /// timeout is SIGNAL_CHANNEL_ERROR, the server's refusal its own error.
    fn room_request(&self, sig: Addr<SignalingActor>, msg: ClientMessage) -> Reply {
        let timeout = self.settings.request_timeout;
        Box::pin(
            async move {
                sig.send(SignalRequest {
                    msg,
                    kind: RequestKind::Other,
                    timeout,
                })
                .await
                .unwrap_or(Err(SignalError::Lost))
                .map(|_| ())
                .map_err(|e| e.into_rtc_error(ErrorCode::SignalChannelError))
            }
            .into_actor(self),
        )
    }

    /// Send a custom message: checked here first (INVALID_PARAMETER), then by the server
    /// (role, rate); only when joined.
    fn custom_message(&mut self, cmd_id: u8, data: Vec<u8>) -> Reply {
        if let Err(e) = rtcroom_protocol::signal::custom_message::check(cmd_id, &data) {
            return ready(Err(e));
        }
        if let Err(e) = self.life.require_joined("sendCustomMessage") {
            return ready(Err(e));
        }
        let Some(sig) = self.signaling.clone() else {
            return ready(Err(RtcError::invalid_operation(
                Some(extra::NOT_ENTERED_ROOM),
                "not connected to the room",
            )));
        };
        self.room_request(sig, ClientMessage::CustomMessage { cmd_id, data })
    }
}

impl Handler<PcEvent> for ClientActor {
    type Result = ();

    fn handle(&mut self, ev: PcEvent, ctx: &mut Self::Context) {
        let Some((key, up)) = self
            .links
            .iter()
            .find(|(_, l)| l.pc_id == ev.id)
            .map(|(k, l)| (k.clone(), matches!(l.state, LinkState::Up(_))))
        else {
            return; // a closed or superseded peer connection
        };
        match ev.kind {
            PcEventKind::Connected => {
                if let Some(l) = self.links.get_mut(&key) {
                    l.health.connected();
                }
            }
            // While negotiating, the negotiation's own result decides.
            PcEventKind::Failed | PcEventKind::Gone if up => {
                tracing::info!(parent: &self.span, ?key, pc = ev.id, kind = ?ev.kind, "media link lost");
                self.link_failed(ctx, key);
            }
            _ => {}
        }
    }
}

impl Handler<GetTransportStats> for ClientActor {
    type Result = ResponseFuture<Vec<(bool, UserId, StreamType, crate::media::TransportStats)>>;

    fn handle(&mut self, _: GetTransportStats, _: &mut Self::Context) -> Self::Result {
        let me = self.settings.user_id.clone();
        let asks: Vec<_> = self
            .links
            .iter()
            .filter_map(|(k, l)| match (&l.state, k) {
                (LinkState::Up(pc), LinkKey::Up(t)) => Some((true, me.clone(), *t, pc.clone())),
                (LinkState::Up(pc), LinkKey::Down(u, t)) => {
                    Some((false, u.clone(), *t, pc.clone()))
                }
                _ => None,
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
            self.links
                .iter()
                .filter_map(|(k, l)| match (k, &l.role) {
                    (LinkKey::Down(u, t), PcRole::Downlink { remote, .. }) => {
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
        for l in self.links.values() {
            if let LinkState::Up(pc) = &l.state {
                pc.do_send(crate::media::peer::CrashPc);
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
        if let Some(sig) = &self.signaling {
            sig.do_send(crate::signaling::Crash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            .send(ClientRequest::Join(JoinParams {
                room_id: RoomId::numeric(1).unwrap(),
                role: Role::Anchor,
                private_map_key: None,
            }))
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
