//! `Registry` (one per server) maps (sdkAppId, roomId) to a `RoomActor` (one per room). Each
//! `RoomActor` drives a [`Room`] state machine and carries out its [`Effect`]s: events to
//! sessions, removals, webhooks. Rooms are spread over a pool of arbiters (threads) so a busy
//! room does not stall the others.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::{
    BanReason, ClientMessage, JoinResult, MemberStats, ReplyData, ServerEvent, ServerMessage,
    StreamType, encode,
};
use rtcroom_protocol::usersig::{Privilege, Privileges};
use rtcroom_protocol::{ErrorCode, Mode, RtcError, UserId};

use crate::media::{MediaPlane, PeerId, SlotKey};
use crate::metrics::Metrics;
use crate::room::{Effect, JoinInput, Room, RoomInfo, RoomKey, RoomLimits, SessionId};
use crate::webhook::{Deliver, WebhookActor};

/// What a room sends to a session actor.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub enum ToSession {
    /// Text frames to forward, in order.
    Frames(Vec<ByteString>),
    /// Send these text frames (e.g. client-banned), then close the socket.
    Close {
        /// Last frames.
        last: Vec<ByteString>,
        /// Close code for the WebSocket close frame.
        code: actix_web_actors::ws::CloseCode,
        /// Close reason for the WebSocket close frame.
        reason: &'static str,
    },
}

/// Shared by the registry and all rooms.
#[derive(Clone)]
pub struct RoomContext {
    /// Limits and timers.
    pub limits: RoomLimits,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Webhook sender, when configured.
    pub webhooks: Option<Addr<WebhookActor>>,
    /// The SFU media plane, when running.
    pub media: Option<MediaPlane>,
}

// ---- room actor ------------------------------------------------------------------------------

/// Join a room (sent by the registry).
#[derive(Message)]
#[rtype(result = "Result<JoinResult, JoinFailure>")]
struct RoomJoin {
    input: JoinInput,
    recipient: Recipient<ToSession>,
}

/// Why a room refused a join.
#[derive(Debug)]
enum JoinFailure {
    /// The room was dismissed in the meantime: make a new one.
    Gone,
    /// Refused by the room's rules.
    Refused(RtcError),
}

/// A request from a joined member.
#[derive(Message)]
#[rtype(result = "Result<Option<ReplyData>, RtcError>")]
pub struct RoomRequest {
    /// Who.
    pub session: SessionId,
    /// What (not a join).
    pub msg: ClientMessage,
}

/// A member's socket closed without a leave.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomDisconnected {
    /// Who.
    pub session: SessionId,
}

/// Admin operations on one room.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<AdminReply, RtcError>")]
pub enum AdminOp {
    /// DismissRoom.
    Dismiss,
    /// RemoveUser.
    Remove(Vec<UserId>),
    /// DescribeRoomInfo.
    Describe,
}

/// Admin results.
#[derive(Debug, Clone)]
pub enum AdminReply {
    /// Done.
    Done,
    /// The room.
    Info(RoomInfo),
}

/// Close every session (server shutdown).
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct CloseAll;

/// Drives one [`Room`].
pub struct RoomActor {
    room: Room,
    id: u64,
    ctx: RoomContext,
    registry: Addr<Registry>,
    sessions: HashMap<SessionId, Recipient<ToSession>>,
    /// Event frames not yet handed to their sessions. Events are batched until the room's
    /// mailbox has been worked through (a `Flush` queued behind the pending messages), so a
    /// burst of joins costs each session one message and one socket write, not one per event.
    pending: HashMap<SessionId, Vec<ByteString>>,
    flush_queued: bool,
    /// Media peers of published streams.
    publishers: HashMap<(UserId, StreamType), PeerId>,
    /// Media peers of subscriptions: (subscriber session, publisher, stream) → peer.
    subscriptions: HashMap<(SessionId, UserId, StreamType), PeerId>,
}

/// Hand batched event frames to their sessions.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: Flush, _ctx: &mut Self::Context) {
        self.flush_queued = false;
        for (s, frames) in self.pending.drain() {
            if let Some(r) = self.sessions.get(&s) {
                r.do_send(ToSession::Frames(frames));
            }
        }
    }
}

impl RoomActor {
    fn slot(&self, user: UserId, stream_type: StreamType) -> SlotKey {
        SlotKey {
            room: self.room.key().clone(),
            user,
            stream_type,
        }
    }

    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Event { to, event } => {
                    if to.is_empty() {
                        continue;
                    }
                    let text = ByteString::from(encode(&ServerMessage::Event(event)));
                    for s in &to {
                        if self.sessions.contains_key(s) {
                            self.pending.entry(*s).or_default().push(text.clone());
                        }
                    }
                    self.ctx
                        .metrics
                        .messages_out
                        .fetch_add(to.len() as u64, Ordering::Relaxed);
                }
                Effect::Remove {
                    session,
                    reason,
                    message,
                } => {
                    Metrics::inc(&self.ctx.metrics.kicks);
                    if let Some(r) = self.sessions.remove(&session) {
                        let text = encode(&ServerMessage::Event(ServerEvent::ClientBanned {
                            reason,
                            message,
                        }));
                        // Events queued for it go first, then the ban, then the close.
                        let mut last = self.pending.remove(&session).unwrap_or_default();
                        last.push(ByteString::from(text));
                        r.do_send(ToSession::Close {
                            last,
                            code: actix_web_actors::ws::CloseCode::Normal,
                            reason: ban_close_reason(reason),
                        });
                    }
                }
                Effect::Hook(hook) => {
                    if let Some(w) = &self.ctx.webhooks {
                        w.do_send(Deliver {
                            key: self.room.key().clone(),
                            hook,
                        });
                    }
                }
                Effect::StreamEnded {
                    user_id,
                    stream_type,
                } => {
                    if let Some(peer) = self.publishers.remove(&(user_id.clone(), stream_type))
                        && let Some(media) = &self.ctx.media
                    {
                        media.unpublish(&self.slot(user_id, stream_type), peer);
                    }
                }
                Effect::MemberGone { session, .. } => {
                    let gone: Vec<_> = self
                        .subscriptions
                        .keys()
                        .filter(|(s, _, _)| *s == session)
                        .cloned()
                        .collect();
                    for k in gone {
                        if let Some(peer) = self.subscriptions.remove(&k)
                            && let Some(media) = &self.ctx.media
                        {
                            media.unsubscribe(peer);
                        }
                    }
                }
            }
        }
    }

    /// Run `f` on the room, apply its effects, keep the member gauge right, and stop when the
    /// room is over.
    fn drive<T>(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut Room) -> (T, Vec<Effect>),
    ) -> T {
        let before = self.room.len() as i64;
        let (out, effects) = f(&mut self.room);
        self.apply(effects);
        if !self.pending.is_empty() && !self.flush_queued {
            self.flush_queued = true;
            ctx.notify(Flush);
        }
        let after = self.room.len() as i64;
        self.ctx
            .metrics
            .members
            .fetch_add(after - before, Ordering::Relaxed);
        if self.room.is_dismissed() {
            for (s, r) in self.sessions.drain() {
                r.do_send(ToSession::Close {
                    last: self.pending.remove(&s).unwrap_or_default(),
                    code: actix_web_actors::ws::CloseCode::Normal,
                    reason: "room dismissed",
                });
            }
            self.registry.do_send(RoomClosed {
                key: self.room.key().clone(),
                id: self.id,
            });
            ctx.stop();
        }
        out
    }
}

fn ban_close_reason(reason: BanReason) -> &'static str {
    match reason {
        BanReason::Kick => "kick",
        BanReason::Banned => "banned",
        BanReason::RoomDisband => "room_disband",
        BanReason::UserTimeOut => "user_time_out",
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let created = self.room.created();
        self.apply(vec![created]);
        // Tick often enough that eviction happens within a quarter of the timeout (≤ 1 s).
        let every = (self.ctx.limits.heartbeat_timeout / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        ctx.run_interval(every, |act, ctx| {
            let now = Instant::now();
            act.drive(ctx, |room| ((), room.tick(now)));
        });
    }
}

impl Handler<RoomJoin> for RoomActor {
    type Result = Result<JoinResult, JoinFailure>;

    fn handle(&mut self, msg: RoomJoin, ctx: &mut Self::Context) -> Self::Result {
        if self.room.is_dismissed() {
            return Err(JoinFailure::Gone);
        }
        let session = msg.input.session;
        let now = Instant::now();
        let result = self.drive(ctx, |room| match room.join(msg.input, now) {
            Ok((res, fx)) => (Ok(res), fx),
            Err(e) => (Err(e), Vec::new()),
        });
        match result {
            Ok(res) => {
                self.sessions.insert(session, msg.recipient);
                Ok(res)
            }
            Err(e) => Err(JoinFailure::Refused(e)),
        }
    }
}

type RequestResult = Result<Option<ReplyData>, RtcError>;

/// An immediate reply (sent before the handler returns, even if the room stops).
fn ready(r: RequestResult) -> ActorResponse<RoomActor, RequestResult> {
    ActorResponse::reply(r)
}

impl Handler<RoomRequest> for RoomActor {
    type Result = ActorResponse<Self, RequestResult>;

    fn handle(&mut self, msg: RoomRequest, ctx: &mut Self::Context) -> Self::Result {
        let s = msg.session;
        let now = Instant::now();
        let Some(me) = self.room.user_of(s).cloned() else {
            return ready(Err(RtcError::invalid_operation(
                Some(extra::NOT_ENTERED_ROOM),
                "not in the room (removed or timed out)",
            )));
        };
        self.room.heartbeat(s, now);
        let none = |r: Result<Vec<Effect>, RtcError>| match r {
            Ok(fx) => (Ok(None), fx),
            Err(e) => (Err(e), Vec::new()),
        };
        match msg.msg {
            ClientMessage::Heartbeat => ready(Ok(None)),
            ClientMessage::GetStats => {
                let mut stats = MemberStats::default();
                if let Some(media) = &self.ctx.media {
                    for ((user, st), peer) in &self.publishers {
                        if *user == me
                            && let Some(mut l) = media.link_stats(*peer)
                        {
                            (l.user_id, l.stream_type) = (Some(user.clone()), Some(*st));
                            stats.uplinks.push(l);
                        }
                    }
                    for ((session, user, st), peer) in &self.subscriptions {
                        if *session == s
                            && let Some(mut l) = media.link_stats(*peer)
                        {
                            (l.user_id, l.stream_type) = (Some(user.clone()), Some(*st));
                            stats.downlinks.push(l);
                        }
                    }
                }
                ready(Ok(Some(ReplyData::Stats(stats))))
            }
            ClientMessage::Leave => {
                self.sessions.remove(&s);
                ready(self.drive(ctx, |room| (Ok(None), room.leave(s, now))))
            }
            ClientMessage::Publish(p) => {
                let (st, a, v) = (p.stream_type, p.has_audio, p.has_video);
                let (Some(sdp), Some(media)) = (p.sdp, self.ctx.media.clone()) else {
                    // Signalling only (no offer): announce the stream.
                    return ready(self.drive(ctx, |room| none(room.publish(s, st, a, v))));
                };
                if let Err(e) = self.room.check_publish(s, st, a, v) {
                    return ready(Err(e));
                }
                let slot = self.slot(me.clone(), st);
                let fut = async move { (media.publish(slot.clone(), &sdp).await, slot, media) };
                ActorResponse::r#async(fut.into_actor(self).map(
                    move |(res, slot, media), act, ctx| {
                        let (peer, answer) = res?;
                        // Commit now that the media is up; the member may have left meanwhile.
                        match act.drive(ctx, |room| none(room.publish(s, st, a, v))) {
                            Ok(_) => {
                                act.publishers.insert((me, st), peer);
                                Ok(Some(ReplyData::Answer { sdp: answer }))
                            }
                            Err(e) => {
                                media.unpublish(&slot, peer);
                                Err(e)
                            }
                        }
                    },
                ))
            }
            ClientMessage::Unpublish { stream_type } => {
                ready(self.drive(ctx, |room| none(room.unpublish(s, stream_type))))
            }
            ClientMessage::Mute {
                stream_type,
                kind,
                muted,
            } => {
                let r = self.drive(ctx, |room| none(room.mute(s, stream_type, kind, muted)));
                if r.is_ok()
                    && let Some(media) = &self.ctx.media
                {
                    media.set_muted(&self.slot(me, stream_type), kind, muted);
                }
                ready(r)
            }
            ClientMessage::SwitchRole { role } => {
                ready(self.drive(ctx, |room| none(room.switch_role(s, role))))
            }
            ClientMessage::Subscribe(sub) => {
                let (user, st) = (sub.user_id.clone(), sub.stream_type);
                if let Err(e) = self
                    .room
                    .check_subscribe(s, &user, st, sub.audio, sub.video)
                {
                    return ready(Err(e));
                }
                let Some(media) = self.ctx.media.clone() else {
                    return ready(Err(RtcError::new(
                        ErrorCode::NotSupported,
                        "this server runs without the media plane",
                    )));
                };
                let Some(sdp) = sub.sdp else {
                    return ready(Err(RtcError::invalid_parameter(
                        Some(extra::PARAM_REQUIRED),
                        "subscribe needs an SDP offer (sdp) with recvonly audio/video",
                    )));
                };
                let slot = self.slot(user.clone(), st);
                let (a, v) = (sub.audio, sub.video);
                let fut = async move { (media.subscribe(slot, a, v, &sdp).await, media) };
                ActorResponse::r#async(fut.into_actor(self).map(move |(res, media), act, _ctx| {
                    let (peer, answer) = res?;
                    if act.room.user_of(s).is_none() {
                        media.unsubscribe(peer);
                        return Err(RtcError::invalid_operation(
                            Some(extra::NOT_ENTERED_ROOM),
                            "left the room while subscribing",
                        ));
                    }
                    if let Some(old) = act.subscriptions.insert((s, user, st), peer) {
                        media.unsubscribe(old);
                    }
                    Ok(Some(ReplyData::Answer { sdp: answer }))
                }))
            }
            ClientMessage::Unsubscribe {
                user_id,
                stream_type,
            } => match self.subscriptions.remove(&(s, user_id, stream_type)) {
                Some(peer) => {
                    if let Some(media) = &self.ctx.media {
                        media.unsubscribe(peer);
                    }
                    ready(Ok(None))
                }
                None => ready(Err(RtcError::invalid_operation(
                    None,
                    "not subscribed to that stream",
                ))),
            },
            ClientMessage::Join(_) => ready(Err(RtcError::invalid_operation(
                Some(extra::REPEATED_CALL),
                "already joined",
            ))),
            _ => ready(Err(RtcError::invalid_parameter(
                None,
                "unsupported request",
            ))),
        }
    }
}

impl Handler<RoomDisconnected> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RoomDisconnected, _ctx: &mut Self::Context) {
        self.sessions.remove(&msg.session);
        self.room.disconnected(msg.session);
    }
}

impl Handler<AdminOp> for RoomActor {
    type Result = Result<AdminReply, RtcError>;

    fn handle(&mut self, msg: AdminOp, ctx: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        match msg {
            AdminOp::Describe => Ok(AdminReply::Info(self.room.describe())),
            AdminOp::Dismiss => self.drive(ctx, |room| (Ok(AdminReply::Done), room.dismiss())),
            AdminOp::Remove(users) => self.drive(ctx, |room| {
                (Ok(AdminReply::Done), room.remove_users(&users, now))
            }),
        }
    }
}

impl Handler<CloseAll> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: CloseAll, _ctx: &mut Self::Context) {
        for (s, r) in self.sessions.drain() {
            r.do_send(ToSession::Close {
                last: self.pending.remove(&s).unwrap_or_default(),
                code: actix_web_actors::ws::CloseCode::Away,
                reason: "server shutting down",
            });
        }
    }
}

// ---- registry --------------------------------------------------------------------------------

/// A join, as the session hands it over after checking credentials.
#[derive(Message)]
#[rtype(result = "Result<(JoinResult, Addr<RoomActor>), RtcError>")]
pub struct JoinRoom {
    /// The room.
    pub key: RoomKey,
    /// The joiner.
    pub input: JoinInput,
    /// Where the room sends events.
    pub recipient: Recipient<ToSession>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct RoomClosed {
    key: RoomKey,
    id: u64,
}

/// An admin operation on a room.
#[derive(Message)]
#[rtype(result = "Result<AdminReply, RtcError>")]
pub struct AdminRequest {
    /// The room.
    pub key: RoomKey,
    /// What to do.
    pub op: AdminOp,
}

/// Close every session and stop accepting joins.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

struct RoomEntry {
    id: u64,
    addr: Addr<RoomActor>,
}

/// Finds or creates rooms.
pub struct Registry {
    rooms: HashMap<RoomKey, RoomEntry>,
    ctx: RoomContext,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    next_id: u64,
    closing: bool,
}

impl Registry {
    /// A registry placing rooms round-robin on `arbiters`.
    pub fn new(ctx: RoomContext, arbiters: Vec<ArbiterHandle>) -> Registry {
        Registry {
            rooms: HashMap::new(),
            ctx,
            arbiters,
            next_arbiter: 0,
            next_id: 1,
            closing: false,
        }
    }

    fn create_room(&mut self, key: &RoomKey, mode: Mode, me: Addr<Registry>) -> Addr<RoomActor> {
        let id = self.next_id;
        self.next_id += 1;
        let room = Room::new(key.clone(), mode, self.ctx.limits.clone());
        let actor_ctx = self.ctx.clone();
        let make = move |_: &mut Context<RoomActor>| RoomActor {
            room,
            id,
            ctx: actor_ctx,
            registry: me,
            sessions: HashMap::new(),
            pending: HashMap::new(),
            flush_queued: false,
            publishers: HashMap::new(),
            subscriptions: HashMap::new(),
        };
        let addr = if self.arbiters.is_empty() {
            RoomActor::create(make)
        } else {
            let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
            self.next_arbiter += 1;
            RoomActor::start_in_arbiter(arbiter, make)
        };
        self.ctx.metrics.rooms.fetch_add(1, Ordering::Relaxed);
        self.rooms.insert(
            key.clone(),
            RoomEntry {
                id,
                addr: addr.clone(),
            },
        );
        addr
    }

    /// The room for a join, created if needed (checking the create privilege).
    fn room_for(
        &mut self,
        key: &RoomKey,
        mode: Mode,
        privileges: Option<Privileges>,
        me: Addr<Registry>,
    ) -> Result<Addr<RoomActor>, RtcError> {
        if let Some(e) = self.rooms.get(key) {
            return Ok(e.addr.clone());
        }
        if let Some(p) = privileges
            && !p.contains(Privilege::CreateRoom)
        {
            return Err(RtcError::with_extra(
                ErrorCode::JoinRoomFailed,
                extra::NO_PERMISSION_CREATE_ROOM,
                "the room does not exist and the privateMapKey does not grant creating it (bit 1)",
            ));
        }
        Ok(self.create_room(key, mode, me))
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

impl Handler<JoinRoom> for Registry {
    type Result = ResponseActFuture<Self, Result<(JoinResult, Addr<RoomActor>), RtcError>>;

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Self::Context) -> Self::Result {
        if self.closing {
            return Box::pin(fut::ready(Err(RtcError::new(
                ErrorCode::JoinRoomFailed,
                "the server is shutting down",
            ))));
        }
        let me = ctx.address();
        let addr = match self.room_for(&msg.key, msg.input.mode, msg.input.privileges, me) {
            Ok(a) => a,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        let JoinRoom {
            key,
            input,
            recipient,
        } = msg;
        let retry = (input.clone(), recipient.clone());
        let first = addr.clone().send(RoomJoin { input, recipient });
        Box::pin(first.into_actor(self).then(move |res, act, ctx| {
            let outcome: Pin<Box<dyn ActorFuture<Registry, Output = _>>> = match res {
                Ok(Ok(r)) => Box::pin(fut::ready(Ok((r, addr)))),
                Ok(Err(JoinFailure::Refused(e))) => Box::pin(fut::ready(Err(e))),
                Ok(Err(JoinFailure::Gone)) | Err(_) => {
                    // The room ended between lookup and join: start a fresh one.
                    if act.rooms.get(&key).is_some_and(|e| e.addr == addr) {
                        act.rooms.remove(&key);
                        act.ctx.metrics.rooms.fetch_sub(1, Ordering::Relaxed);
                    }
                    let (input, recipient) = retry;
                    match act.room_for(&key, input.mode, input.privileges, ctx.address()) {
                        Err(e) => Box::pin(fut::ready(Err(e))),
                        Ok(new_addr) => Box::pin(
                            new_addr
                                .clone()
                                .send(RoomJoin { input, recipient })
                                .into_actor(act)
                                .map(move |res, _, _| match res {
                                    Ok(Ok(r)) => Ok((r, new_addr)),
                                    Ok(Err(JoinFailure::Refused(e))) => Err(e),
                                    _ => Err(RtcError::new(
                                        ErrorCode::JoinRoomFailed,
                                        "the room closed while joining; try again",
                                    )),
                                }),
                        ),
                    }
                }
            };
            outcome
        }))
    }
}

impl Handler<RoomClosed> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RoomClosed, _ctx: &mut Self::Context) {
        if self.rooms.get(&msg.key).is_some_and(|e| e.id == msg.id) {
            self.rooms.remove(&msg.key);
            self.ctx.metrics.rooms.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Handler<AdminRequest> for Registry {
    type Result = ResponseFuture<Result<AdminReply, RtcError>>;

    fn handle(&mut self, msg: AdminRequest, _ctx: &mut Self::Context) -> Self::Result {
        let Some(entry) = self.rooms.get(&msg.key) else {
            let key = msg.key.clone();
            return Box::pin(async move {
                Err(RtcError::with_extra(
                    ErrorCode::InvalidParameter,
                    extra::ROOM_NOT_EXIST,
                    format!("room {} does not exist", key.room_id),
                ))
            });
        };
        let addr = entry.addr.clone();
        Box::pin(async move {
            addr.send(msg.op).await.unwrap_or_else(|_| {
                Err(RtcError::with_extra(
                    ErrorCode::InvalidParameter,
                    extra::ROOM_NOT_EXIST,
                    "the room closed",
                ))
            })
        })
    }
}

impl Handler<Shutdown> for Registry {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _ctx: &mut Self::Context) {
        self.closing = true;
        for e in self.rooms.values() {
            e.addr.do_send(CloseAll);
        }
    }
}
