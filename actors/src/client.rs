//! `ClientActor`: one per client. It owns the room state and drives the join state machine
//! ([`Lifecycle`]), the room view ([`RoomState`]) and the signalling connections
//! ([`SignalingActor`], one per connection attempt).
//!
//! Everything the user asks arrives as one [`ClientRequest`] (join, leave, switch-role; the
//! media engine will add publish / subscribe variants and a `PeerConnectionActor` beside the
//! signalling one). Each request is answered through its own future, so a slow join never
//! blocks a `leave()` or a server event.
//!
//! Supervision: the client actor supervises its signalling connection. When a
//! `SignalingActor` ends for any reason, including a panic inside it, its `Drop` reports
//! [`SignalEvent::Lost`] and the client actor treats that like a network loss: it reconnects
//! with backoff and re-joins. If the client actor itself dies, its `Drop` reports
//! `ClientEvent::Error(UNKNOWN)`, marks the client DISCONNECTED and ends the event streams;
//! the user's calls then fail with UNKNOWN. Nothing restarts a dead client actor (its room
//! state is gone): the user creates a new client. A panic in an actor never takes the
//! process down (the runtime contains it to the actor's task).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rtcroom_protocol::signal::{
    BanReason, ClientMessage, JoinRequest, JoinResult, ReplyData, ServerEvent,
};
use rtcroom_protocol::{ErrorCode, Mode, Role, RoomId, RtcError, UserId};
use tokio::sync::oneshot;

use crate::backoff::{DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MISSED_HEARTBEATS, ReconnectPolicy};
use crate::error::SignalError;
use crate::event::ClientEvent;
use crate::hub::ClientHub;
use crate::lifecycle::{Lifecycle, Phase, Recovery, StateChange};
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
}

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

/// A user request to the client actor. Media requests will be added here.
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
        let timeout = self.settings.join_timeout;
        let deadline = Instant::now() + timeout;
        ctx.spawn(
            async move { connect(&url, timeout).await }
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
                self.emit_all(events);
                // Media seam: after a re-join the PeerConnection actor re-publishes and
                // re-subscribes here.
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
                    self.room.clear();
                    self.refresh_view();
                    self.emit(ClientEvent::ClientBanned { reason, message });
                    self.report(change);
                }
            }
            other => {
                let events = self.room.apply(other);
                self.emit_all(events);
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

impl Actor for ClientActor {
    type Context = Context<Self>;
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
        ctx.stop();
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
