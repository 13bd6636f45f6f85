//! `Registry` (one per server, shared by every session) maps (sdkAppId, roomId) to a room:
//! its state ([`RoomCore`]: the [`Room`] state machine, the members' connections, pending
//! events, media peers) behind a lock, and its `RoomActor`, which owns the room's timers and
//! carries out members' requests, admin calls and event flushes. Every step applies the
//! state machine's [`Effect`]s: events to sessions, removals, webhooks, media teardown.
//!
//! A join is the one step a session runs itself: it looks the room up (a short registry
//! lock) and joins under the room's lock on its own thread, so the reply is written without a
//! message to the room's thread and back. In a burst of joins those two hops between threads
//! (wake-ups, context switches) were most of a join's cost. Room actors are spread over a
//! pool of arbiters (threads), or live on the thread of the session that created them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::{
    BanReason, ClientMessage, MemberStats, ReplyData, ServerEvent, StreamType, encode,
};
use rtcroom_protocol::usersig::{Privilege, Privileges};
use rtcroom_protocol::{ErrorCode, Mode, RtcError, UserId};

use crate::link::{CLOSE_AWAY, CLOSE_NORMAL, CLOSE_POLICY, LinkTx, Offered};
use crate::media::{MediaPlane, PeerId, SlotKey};
use crate::metrics::Metrics;
use crate::room::{Effect, JoinInput, Joined, Room, RoomInfo, RoomKey, RoomLimits, SessionId};
use crate::webhook::{Deliver, WebhookActor};

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

/// A room's state: the [`Room`] state machine plus what its driver keeps beside it. Shared by
/// the room's actor (timers, requests, admin calls, flushes) and the sessions joining it,
/// which run their join under the lock on their own thread instead of sending it to the
/// actor and waiting for the answer: a join then costs no hop between threads, which in a
/// burst of joins was most of a join's cost. Every use holds the lock for one state-machine
/// step and the handing over of its effects (messages to other actors, never a wait).
pub struct RoomCore {
    room: Room,
    id: u64,
    ctx: RoomContext,
    registry: Arc<Registry>,
    /// The members' connections, with their events not yet handed over. Events are
    /// coalesced: a flush runs at most once per batch window ([`RoomLimits::event_batch`]),
    /// so a burst of joins costs each session one message and one frame per window, not one
    /// per event, while a lone event on a quiet room goes out at once.
    sessions: SessionMap<Connection>,
    /// Events not yet handed to their recipients' `pending` lists, oldest first. A join into
    /// a room of N members raises an event for N others; queuing it once here keeps that
    /// O(N) fan-out out of the join (which holds the room's lock while other sessions' joins
    /// wait) and does it at the next flush instead.
    log: Vec<(ByteString, Vec<SessionId>)>,
    /// Sessions with pending events, each once.
    dirty: Vec<SessionId>,
    /// A flush is scheduled.
    flush_queued: bool,
    /// When the last flush ran.
    last_flush: Option<Instant>,
    /// Media peers of published streams.
    publishers: HashMap<(UserId, StreamType), PeerId>,
    /// Media peers of subscriptions: (subscriber session, publisher, stream) → peer.
    subscriptions: HashMap<(SessionId, UserId, StreamType), PeerId>,
}

/// A room's state behind its lock.
pub type SharedRoom = Arc<std::sync::Mutex<RoomCore>>;

fn lock_room(core: &SharedRoom) -> std::sync::MutexGuard<'_, RoomCore> {
    // Nothing panics while holding the lock (state-machine steps return errors, effects are
    // messages); a poisoned lock still holds a room whose every step completed.
    core.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the driver of a [`RoomCore::step`] has left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
struct After {
    /// Schedule a flush after this long (zero: at once).
    flush_in: Option<Duration>,
    /// The room is over: stop its actor.
    stop: bool,
}

/// Drives one room: its timers, members' requests, admin calls and event flushes. Joins run
/// on the joining session's thread against the shared [`RoomCore`].
pub struct RoomActor {
    core: SharedRoom,
}

/// A member's link as its room sees it.
struct Connection {
    link: LinkTx,
    /// Encoded events not yet handed over, oldest first.
    pending: Vec<ByteString>,
}

impl Connection {
    fn close(self, code: u16, reason: &'static str) {
        self.link.close(self.pending, code, reason);
    }
}

/// Session ids hashed with one multiply (Fibonacci hashing): every event to every member
/// looks its session up, and SipHash dominated a burst of joins into a big room. The ids come
/// from a process-wide counter, not from the network, so there is nothing to flood.
#[derive(Default, Clone, Copy)]
pub struct SessionIdHasher(u64);

impl std::hash::Hasher for SessionIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by session id.
pub type SessionMap<V> = HashMap<SessionId, V, std::hash::BuildHasherDefault<SessionIdHasher>>;

/// Hand batched event frames to their sessions.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

/// Schedule a flush after this long (sent by a join that left events pending).
#[derive(Message)]
#[rtype(result = "()")]
struct FlushIn(Duration);

/// The room ended outside the actor: stop it.
#[derive(Message)]
#[rtype(result = "()")]
struct Stop;

impl Handler<Flush> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        let mut core = lock_room(&self.core);
        core.flush();
        if !core.dirty.is_empty() && !core.flush_queued {
            // Some outboxes were full: offer their (coalesced) events again a window later.
            core.flush_queued = true;
            ctx.notify_later(Flush, core.ctx.limits.event_batch);
        }
    }
}

impl Handler<FlushIn> for RoomActor {
    type Result = ();

    fn handle(&mut self, FlushIn(delay): FlushIn, ctx: &mut Self::Context) {
        ctx.notify_later(Flush, delay);
    }
}

impl Handler<Stop> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// How long to wait before flushing events that just became pending: at once (behind the
/// messages already queued) when the last flush is a whole `window` ago, else until it is.
pub fn flush_delay(last_flush: Option<Instant>, now: Instant, window: Duration) -> Duration {
    match last_flush {
        Some(last) => (last + window).saturating_duration_since(now),
        None => Duration::ZERO,
    }
}

impl RoomCore {
    fn slot(&self, user: UserId, stream_type: StreamType) -> SlotKey {
        SlotKey {
            room: self.room.key().clone(),
            user,
            stream_type,
        }
    }

    /// Close every media subscription of `session`.
    fn close_subscriptions(&mut self, session: SessionId) {
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

    /// Move the logged events into their recipients' `pending` lists.
    fn distribute(&mut self) {
        for (text, to) in std::mem::take(&mut self.log) {
            for s in &to {
                if let Some(c) = self.sessions.get_mut(s) {
                    if c.pending.is_empty() {
                        self.dirty.push(*s);
                    }
                    c.pending.push(text.clone());
                }
            }
        }
    }

    /// Hand every pending event to its link. A full outbox keeps its member's events
    /// pending (they go out coalesced at a later flush, and the member stays in `dirty`); a
    /// member with more than the policy's limit waiting is closed as a slow consumer.
    fn flush(&mut self) {
        self.distribute();
        self.flush_queued = false;
        self.last_flush = Some(Instant::now());
        let mut slow = Vec::new();
        for s in std::mem::take(&mut self.dirty) {
            let Some(c) = self.sessions.get_mut(&s) else {
                continue;
            };
            if c.pending.is_empty() {
                continue;
            }
            match c.link.offer(std::mem::take(&mut c.pending)) {
                Offered::Sent | Offered::Gone => {}
                Offered::Full(events) => {
                    c.pending = events;
                    if c.pending.len() > self.ctx.limits.link.max_pending_events {
                        slow.push(s);
                    } else {
                        self.dirty.push(s);
                    }
                }
            }
        }
        for s in slow {
            self.slow_consumer(s);
        }
    }

    /// Close a member's link as a slow consumer: it counts as disconnected (it keeps its
    /// place until its heartbeat timeout, as after any dropped connection).
    fn slow_consumer(&mut self, session: SessionId) {
        if let Some(c) = self.sessions.remove(&session) {
            Metrics::inc(&self.ctx.metrics.slow_consumers);
            tracing::info!(session, "closing a slow consumer's link");
            c.link.close(Vec::new(), CLOSE_POLICY, "slow consumer");
        }
        self.room.disconnected(session);
        self.close_subscriptions(session);
    }

    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Event { to, event } => {
                    if to.is_empty() {
                        continue;
                    }
                    self.ctx
                        .metrics
                        .messages_out
                        .fetch_add(to.len() as u64, Ordering::Relaxed);
                    self.log.push((ByteString::from(encode(&event)), to));
                }
                Effect::Remove {
                    session,
                    reason,
                    message,
                } => {
                    Metrics::inc(&self.ctx.metrics.kicks);
                    self.distribute();
                    if let Some(mut c) = self.sessions.remove(&session) {
                        let text = encode(&ServerEvent::ClientBanned { reason, message });
                        // Events queued for it go first, then the ban, then the close.
                        c.pending.push(ByteString::from(text));
                        c.close(CLOSE_NORMAL, ban_close_reason(reason));
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
                Effect::MemberGone { session, .. } => self.close_subscriptions(session),
            }
        }
    }

    /// Run `f` on the room, apply its effects, keep the member gauge right, and close the
    /// room when it is over; the caller schedules the flush and stops the actor as told.
    fn step<T>(&mut self, f: impl FnOnce(&mut Room) -> (T, Vec<Effect>)) -> (T, After) {
        let before = self.room.len() as i64;
        let (out, effects) = f(&mut self.room);
        self.apply(effects);
        let mut after = After {
            flush_in: None,
            stop: false,
        };
        if (!self.dirty.is_empty() || !self.log.is_empty()) && !self.flush_queued {
            self.flush_queued = true;
            after.flush_in = Some(flush_delay(
                self.last_flush,
                Instant::now(),
                self.ctx.limits.event_batch,
            ));
        }
        let now_len = self.room.len() as i64;
        self.ctx
            .metrics
            .members
            .fetch_add(now_len - before, Ordering::Relaxed);
        if self.room.is_dismissed() {
            self.distribute();
            for (_, c) in self.sessions.drain() {
                c.close(CLOSE_NORMAL, "room dismissed");
            }
            self.registry.forget(self.room.key(), self.id);
            after.stop = true;
        }
        (out, after)
    }

    /// Join under the lock, on the joiner's thread. The room's actor is told only what needs
    /// its timers: a flush later than now, or that the room is over.
    fn join(
        &mut self,
        input: JoinInput,
        link: LinkTx,
        actor: &Addr<RoomActor>,
    ) -> Result<Joined, (JoinFailure, LinkTx)> {
        if self.room.is_dismissed() {
            return Err((JoinFailure::Gone, link));
        }
        let session = input.session;
        let now = Instant::now();
        let (result, after) = self.step(|room| match room.join(input, now) {
            Ok((res, fx)) => (Ok(res), fx),
            Err(e) => (Err(e), Vec::new()),
        });
        let mut refused_link = None;
        if result.is_ok() {
            self.sessions.insert(
                session,
                Connection {
                    link,
                    pending: Vec::new(),
                },
            );
        } else {
            refused_link = Some(link);
        }
        match after.flush_in {
            Some(d) if d.is_zero() => self.flush(),
            Some(d) => actor.do_send(FlushIn(d)),
            None => {}
        }
        if after.stop {
            actor.do_send(Stop);
        }
        result.map_err(|e| {
            let link = refused_link.expect("a refused join kept its link (set just above)");
            (JoinFailure::Refused(e), link)
        })
    }
}

/// Carry out a step's follow-up from inside the room's actor.
fn follow_up(after: After, ctx: &mut Context<RoomActor>) {
    match after.flush_in {
        Some(d) if d.is_zero() => ctx.notify(Flush),
        Some(d) => {
            ctx.notify_later(Flush, d);
        }
        None => {}
    }
    if after.stop {
        ctx.stop();
    }
}

/// [`RoomCore::step`] from inside the room's actor.
fn drive<T>(
    core: &mut RoomCore,
    ctx: &mut Context<RoomActor>,
    f: impl FnOnce(&mut Room) -> (T, Vec<Effect>),
) -> T {
    let (out, after) = core.step(f);
    follow_up(after, ctx);
    out
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
        // Tick often enough that eviction happens within a quarter of the timeout (≤ 1 s).
        let every = (lock_room(&self.core).ctx.limits.heartbeat_timeout / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        ctx.run_interval(every, |act, ctx| {
            let mut core = lock_room(&act.core);
            // Read the clock under the lock: joins on other threads step the same room, and
            // the state machine sees time move forward only.
            let now = Instant::now();
            drive(&mut core, ctx, |room| ((), room.tick(now)));
        });
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
        let mut guard = lock_room(&self.core);
        let core = &mut *guard;
        let s = msg.session;
        let now = Instant::now();
        let Some(me) = core.room.user_of(s).cloned() else {
            return ready(Err(RtcError::invalid_operation(
                Some(extra::NOT_ENTERED_ROOM),
                "not in the room (removed or timed out)",
            )));
        };
        core.room.heartbeat(s, now);
        let none = |r: Result<Vec<Effect>, RtcError>| match r {
            Ok(fx) => (Ok(None), fx),
            Err(e) => (Err(e), Vec::new()),
        };
        match msg.msg {
            ClientMessage::Heartbeat => ready(Ok(None)),
            ClientMessage::GetStats => {
                let mut stats = MemberStats::default();
                if let Some(media) = &core.ctx.media {
                    for ((user, st), peer) in &core.publishers {
                        if *user == me
                            && let Some(mut l) = media.link_stats(*peer)
                        {
                            (l.user_id, l.stream_type) = (Some(user.clone()), Some(*st));
                            stats.uplinks.push(l);
                        }
                    }
                    for ((session, user, st), peer) in &core.subscriptions {
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
                core.sessions.remove(&s);
                ready(drive(core, ctx, |room| (Ok(None), room.leave(s, now))))
            }
            ClientMessage::Publish(p) => {
                let (st, a, v) = (p.stream_type, p.has_audio, p.has_video);
                let (Some(sdp), Some(media)) = (p.sdp, core.ctx.media.clone()) else {
                    // Signalling only (no offer): announce the stream.
                    return ready(drive(core, ctx, |room| none(room.publish(s, st, a, v))));
                };
                if let Err(e) = core.room.check_publish(s, st, a, v) {
                    return ready(Err(e));
                }
                let slot = core.slot(me.clone(), st);
                drop(guard);
                let fut = async move { (media.publish(slot.clone(), &sdp).await, slot, media) };
                ActorResponse::r#async(fut.into_actor(self).map(
                    move |(res, slot, media), act, ctx| {
                        let published = res?;
                        let mut core = lock_room(&act.core);
                        // Commit now that the media is up; the member may have left meanwhile.
                        let codec = published.video_codec;
                        match drive(&mut core, ctx, |room| {
                            none(room.publish_media(s, st, a, v, codec))
                        }) {
                            Ok(_) => {
                                core.publishers.insert((me, st), published.peer);
                                Ok(Some(ReplyData::Answer {
                                    sdp: published.answer,
                                }))
                            }
                            Err(e) => {
                                media.unpublish(&slot, published.peer);
                                Err(e)
                            }
                        }
                    },
                ))
            }
            ClientMessage::Unpublish { stream_type } => ready(drive(core, ctx, |room| {
                none(room.unpublish(s, stream_type))
            })),
            ClientMessage::Mute {
                stream_type,
                kind,
                muted,
            } => {
                let r = drive(core, ctx, |room| {
                    none(room.mute(s, stream_type, kind, muted))
                });
                if r.is_ok()
                    && let Some(media) = &core.ctx.media
                {
                    media.set_muted(&core.slot(me, stream_type), kind, muted);
                }
                ready(r)
            }
            ClientMessage::SwitchRole { role } => {
                ready(drive(core, ctx, |room| none(room.switch_role(s, role))))
            }
            ClientMessage::Subscribe(sub) => {
                let (user, st) = (sub.user_id.clone(), sub.stream_type);
                if let Err(e) = core
                    .room
                    .check_subscribe(s, &user, st, sub.audio, sub.video)
                {
                    return ready(Err(e));
                }
                let Some(media) = core.ctx.media.clone() else {
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
                let slot = core.slot(user.clone(), st);
                let (a, v) = (sub.audio, sub.video);
                drop(guard);
                let fut = async move { (media.subscribe(slot, a, v, &sdp).await, media) };
                ActorResponse::r#async(fut.into_actor(self).map(move |(res, media), act, _ctx| {
                    let (peer, answer) = res?;
                    let mut core = lock_room(&act.core);
                    if core.room.user_of(s).is_none() {
                        media.unsubscribe(peer);
                        return Err(RtcError::invalid_operation(
                            Some(extra::NOT_ENTERED_ROOM),
                            "left the room while subscribing",
                        ));
                    }
                    // The stream may have ended while the media was negotiated.
                    if !core.room.has_stream(&user, st) {
                        media.unsubscribe(peer);
                        return Err(RtcError::new(
                            ErrorCode::RemoteStreamNotExist,
                            format!("{user}'s stream ended while subscribing"),
                        ));
                    }
                    if let Some(old) = core.subscriptions.insert((s, user, st), peer) {
                        media.unsubscribe(old);
                    }
                    Ok(Some(ReplyData::Answer { sdp: answer }))
                }))
            }
            ClientMessage::Unsubscribe {
                user_id,
                stream_type,
            } => match core.subscriptions.remove(&(s, user_id, stream_type)) {
                Some(peer) => {
                    if let Some(media) = &core.ctx.media {
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
        let mut core = lock_room(&self.core);
        core.sessions.remove(&msg.session);
        core.room.disconnected(msg.session);
        // It stays a member until its heartbeat timeout (TRTC keeps it 90 s), but nobody
        // reads its subscriptions any more: close them now (a resumed client subscribes
        // again). Its published streams stay: their media may still flow, and a resume
        // re-publishes them.
        core.close_subscriptions(msg.session);
    }
}

impl Handler<AdminOp> for RoomActor {
    type Result = Result<AdminReply, RtcError>;

    fn handle(&mut self, msg: AdminOp, ctx: &mut Self::Context) -> Self::Result {
        let mut core = lock_room(&self.core);
        let now = Instant::now();
        match msg {
            AdminOp::Describe => Ok(AdminReply::Info(core.room.describe())),
            AdminOp::Dismiss => drive(&mut core, ctx, |room| {
                (Ok(AdminReply::Done), room.dismiss())
            }),
            AdminOp::Remove(users) => drive(&mut core, ctx, |room| {
                (Ok(AdminReply::Done), room.remove_users(&users, now))
            }),
        }
    }
}

impl Handler<CloseAll> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: CloseAll, _ctx: &mut Self::Context) {
        let mut core = lock_room(&self.core);
        core.distribute();
        for (_, c) in core.sessions.drain() {
            c.close(CLOSE_AWAY, "server shutting down");
        }
    }
}

// ---- registry --------------------------------------------------------------------------------

/// A joined member's handle on its room: what its link's driver uses to make requests.
#[derive(Clone)]
pub struct Member {
    session: SessionId,
    room: Addr<RoomActor>,
}

impl Member {
    /// The member's id.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// A request from the member (anything but a join). A room that has closed answers
    /// "not in the room".
    pub async fn request(&self, msg: ClientMessage) -> Result<Option<ReplyData>, RtcError> {
        self.room
            .send(RoomRequest {
                session: self.session,
                msg,
            })
            .await
            .unwrap_or_else(|_| {
                Err(RtcError::invalid_operation(
                    Some(extra::NOT_ENTERED_ROOM),
                    "the room has closed",
                ))
            })
    }

    /// The member's link went away without a leave.
    pub fn disconnected(&self) {
        self.room.do_send(RoomDisconnected {
            session: self.session,
        });
    }
}

struct RoomEntry {
    id: u64,
    addr: Addr<RoomActor>,
    core: SharedRoom,
}

#[derive(Default)]
struct Rooms {
    rooms: HashMap<RoomKey, RoomEntry>,
    next_arbiter: usize,
    next_id: u64,
    closing: bool,
}

/// Finds or creates rooms. Shared (`Arc`) by every session, the admin API and the rooms
/// themselves; every operation holds its lock for a map lookup or insert only.
pub struct Registry {
    rooms: std::sync::Mutex<Rooms>,
    ctx: RoomContext,
    arbiters: Vec<ArbiterHandle>,
}

impl Registry {
    /// A registry placing rooms' actors round-robin on `arbiters`; with none, each room's
    /// actor runs on the arbiter (thread) of the session that creates it.
    pub fn new(ctx: RoomContext, arbiters: Vec<ArbiterHandle>) -> Arc<Registry> {
        Arc::new(Registry {
            rooms: std::sync::Mutex::new(Rooms {
                next_id: 1,
                ..Rooms::default()
            }),
            ctx,
            arbiters,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        // Nothing panics while holding the lock (map operations and actor spawns only); a
        // poisoned lock still holds a consistent map.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room for a join, created if needed (checking the create privilege). Lock order:
    /// a room's lock may be held while taking the registry's (a dismissed room forgets
    /// itself), never the other way round, so nothing here locks a room.
    fn room_for(
        self: &Arc<Self>,
        key: &RoomKey,
        mode: Mode,
        privileges: Option<Privileges>,
    ) -> Result<(Addr<RoomActor>, SharedRoom), RtcError> {
        let mut rooms = self.lock();
        if rooms.closing {
            return Err(RtcError::new(
                ErrorCode::JoinRoomFailed,
                "the server is shutting down",
            ));
        }
        if let Some(e) = rooms.rooms.get(key) {
            return Ok((e.addr.clone(), e.core.clone()));
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
        let id = rooms.next_id;
        rooms.next_id += 1;
        let room = Room::new(key.clone(), mode, self.ctx.limits.clone());
        let created = room.created();
        let mut core = RoomCore {
            room,
            id,
            ctx: self.ctx.clone(),
            registry: self.clone(),
            sessions: SessionMap::default(),
            log: Vec::new(),
            dirty: Vec::new(),
            flush_queued: false,
            last_flush: None,
            publishers: HashMap::new(),
            subscriptions: HashMap::new(),
        };
        // Before the first join is applied, so the room-created webhook goes out first.
        core.apply(vec![created]);
        let core: SharedRoom = Arc::new(std::sync::Mutex::new(core));
        let actor_core = core.clone();
        let make = move |_: &mut Context<RoomActor>| RoomActor { core: actor_core };
        let addr = if self.arbiters.is_empty() {
            RoomActor::create(make)
        } else {
            let arbiter = &self.arbiters[rooms.next_arbiter % self.arbiters.len()];
            rooms.next_arbiter += 1;
            RoomActor::start_in_arbiter(arbiter, make)
        };
        self.ctx.metrics.rooms.fetch_add(1, Ordering::Relaxed);
        rooms.rooms.insert(
            key.clone(),
            RoomEntry {
                id,
                addr: addr.clone(),
                core: core.clone(),
            },
        );
        Ok((addr, core))
    }

    /// Forget room `id` under `key` (it ended); a newer room under the same key stays.
    fn forget(&self, key: &RoomKey, id: u64) {
        let mut rooms = self.lock();
        if rooms.rooms.get(key).is_some_and(|e| e.id == id) {
            rooms.rooms.remove(key);
            self.ctx.metrics.rooms.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Join room `key` as `input` over `link`, creating the room if needed. On success, the
    /// reply for the joiner and its handle for later requests.
    pub async fn join(
        self: &Arc<Self>,
        key: RoomKey,
        input: JoinInput,
        link: LinkTx,
    ) -> Result<(Joined, Member), RtcError> {
        let session = input.session;
        let mut link = Some(link);
        for _attempt in 0..2 {
            let (addr, core) = self.room_for(&key, input.mode, input.privileges)?;
            let Some(l) = link.take() else { break };
            let joined = lock_room(&core).join(input.clone(), l, &addr);
            match joined {
                Ok(r) => {
                    return Ok((
                        r,
                        Member {
                            session,
                            room: addr,
                        },
                    ));
                }
                Err((JoinFailure::Refused(e), _)) => return Err(e),
                // The room ended between lookup and join. The step that ended it already
                // took it out of the registry, so the next lookup makes a fresh one.
                Err((JoinFailure::Gone, l)) => link = Some(l),
            }
        }
        Err(RtcError::new(
            ErrorCode::JoinRoomFailed,
            "the room closed while joining; try again",
        ))
    }

    /// The mode of room `key` if it exists (links without a mode of their own, WHIP and
    /// WHEP, take the room's).
    pub async fn room_mode(&self, key: &RoomKey) -> Option<Mode> {
        let core = self.lock().rooms.get(key).map(|e| e.core.clone())?;
        Some(lock_room(&core).room.mode())
    }

    /// An admin operation on a room.
    pub async fn admin(&self, key: RoomKey, op: AdminOp) -> Result<AdminReply, RtcError> {
        let gone = |what: String| {
            RtcError::with_extra(ErrorCode::InvalidParameter, extra::ROOM_NOT_EXIST, what)
        };
        let addr = self.lock().rooms.get(&key).map(|e| e.addr.clone());
        let Some(addr) = addr else {
            return Err(gone(format!("room {} does not exist", key.room_id)));
        };
        addr.send(op)
            .await
            .unwrap_or_else(|_| Err(gone("the room closed".into())))
    }

    /// A media peer closed on its own (ICE lost, connect timeout, worker fault): forget it
    /// wherever a room records it. Rare, so every room is looked at.
    pub fn peer_closed(&self, peer: PeerId) {
        let cores: Vec<SharedRoom> = self.lock().rooms.values().map(|e| e.core.clone()).collect();
        for core in cores {
            let mut core = lock_room(&core);
            core.publishers.retain(|_, p| *p != peer);
            core.subscriptions.retain(|_, p| *p != peer);
        }
    }

    /// Close every session and stop accepting joins.
    pub fn shutdown(&self) {
        let mut rooms = self.lock();
        rooms.closing = true;
        for e in rooms.rooms.values() {
            e.addr.do_send(CloseAll);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_at_once_after_a_quiet_spell_else_at_the_end_of_the_window() {
        let t0 = Instant::now();
        let w = Duration::from_millis(10);
        assert_eq!(flush_delay(None, t0, w), Duration::ZERO);
        assert_eq!(
            flush_delay(Some(t0), t0 + Duration::from_millis(3), w),
            Duration::from_millis(7)
        );
        assert_eq!(flush_delay(Some(t0), t0 + w, w), Duration::ZERO);
        assert_eq!(
            flush_delay(Some(t0), t0 + Duration::from_secs(5), w),
            Duration::ZERO
        );
        assert_eq!(flush_delay(Some(t0), t0, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn session_ids_spread_over_buckets() {
        use std::hash::BuildHasher;
        let b = std::hash::BuildHasherDefault::<SessionIdHasher>::default();
        let mut low: std::collections::HashSet<u64> = Default::default();
        let mut top: std::collections::HashSet<u64> = Default::default();
        for id in 1..=1024u64 {
            let h = b.hash_one(id);
            low.insert(h & 1023);
            top.insert(h >> 57);
        }
        // Sequential ids fill every low-bit bucket and use all 7-bit tags.
        assert_eq!(low.len(), 1024);
        assert_eq!(top.len(), 128);
    }
}
