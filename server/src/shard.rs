//! Room shards. Rooms are spread over a fixed set of [`RoomShard`] actors (one per core, each
//! on the thread of one HTTP worker), chosen by a hash of (sdkAppId, roomId) ([`crate::registry`]). A shard
//! owns its rooms outright: the [`Room`] state machine (the one record of membership and of
//! who publishes and subscribes what), the members' links and their pending events. Nothing
//! of a room is shared with another thread, so nothing is locked: every input is a message
//! to the shard, handled as one state-machine step whose [`Effect`]s the shard carries out
//! (events to links, webhooks, media teardown).
//!
//! **Supervision.** Each room step runs under `catch_unwind`. A room that panics is dropped
//! whole: its members' links are closed with 1011 "room failed" (they can join again at once
//! and get a fresh room), its media peers are closed, `rtcroom_room_faults_total` counts it,
//! and the shard and its other rooms carry on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::{
    BanReason, ClientMessage, LeaveReason, LinkDirection, MediaKind, MemberStats, ReplyData,
    ServerEvent, StreamInfo, StreamType, VideoLayer, VideoStreamType, encode,
};
use rtcroom_protocol::usersig::Privilege;
use rtcroom_protocol::{ErrorCode, Mode, RtcError, UserId};

use crate::link::{
    CLOSE_AWAY, CLOSE_INTERNAL, CLOSE_NORMAL, CLOSE_POLICY, LinkKind, LinkTx, Offered,
};
use crate::media::{MediaPlane, PeerId, SlotKey};
use crate::metrics::Metrics;
use crate::registry::{AdminOp, AdminReply, RoomContext};
use crate::room::{Effect, HookEvent, JoinInput, Joined, Room, RoomKey, SessionId};

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

/// How long to wait before flushing events that just became pending: at once when the last
/// flush is a whole `window` ago, else until it is.
pub fn flush_delay(last_flush: Option<Instant>, now: Instant, window: Duration) -> Duration {
    match last_flush {
        Some(last) => (last + window).saturating_duration_since(now),
        None => Duration::ZERO,
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

fn not_in_room(what: &str) -> RtcError {
    RtcError::invalid_operation(Some(extra::NOT_ENTERED_ROOM), what.to_owned())
}

// ---- messages ---------------------------------------------------------------------------------

/// Join room `key` (created if needed) over `link`.
#[derive(Message)]
#[rtype(result = "Result<Joined, RtcError>")]
pub struct Join {
    /// The room.
    pub key: RoomKey,
    /// The joiner, its credentials already checked.
    pub input: JoinInput,
    /// Where the room sends the member's events.
    pub link: LinkTx,
    /// Join the room this node serves as an edge of a cascaded live room (`cascade.rs`),
    /// which must be open; else a room of this node's own.
    pub edge: bool,
}

/// A change to an edge room: this node mirrors a live room of another node for the audience
/// that joined here (`cascade.rs`).
#[derive(Message)]
#[rtype(result = "Result<(), RtcError>")]
pub struct EdgeUpdate {
    /// The room.
    pub key: RoomKey,
    /// What changed.
    pub update: Mirror,
}

/// What the room's node reported to an edge.
#[derive(Debug)]
pub enum Mirror {
    /// The link to the room's node is up: create the edge room (if needed). Dropping `stop`
    /// (with the room) ends the link.
    Open {
        /// The link's stop signal.
        stop: tokio::sync::oneshot::Sender<()>,
        /// Where the edge room reports its audience coming and going (for the room's node).
        audience: AudienceTx,
    },
    /// The room's node orders a member of this node's audience removed (a duplicate userId
    /// elsewhere in the room, or the admin's RemoveUser).
    Kick(crate::room::EdgeKick),
    /// The room's node says the room is full counting every node's members (new audience
    /// is refused here too), or no longer.
    OriginFull(bool),
    /// An anchor is in the room.
    AnchorIn(UserId),
    /// An anchor left, for this reason.
    AnchorOut(UserId, LeaveReason),
    /// An anchor's stream is published (or changed), its media arriving on pipe `peer`.
    Stream {
        /// The stream.
        info: StreamInfo,
        /// Its pipe publisher in this node's media plane (none: signalling only).
        peer: Option<PeerId>,
    },
    /// An anchor's stream ended.
    StreamGone(UserId, StreamType),
    /// An anchor muted or unmuted a stream.
    Mute {
        /// Whose.
        user: UserId,
        /// Which stream.
        stream_type: StreamType,
        /// Audio or video.
        kind: MediaKind,
        /// Muted or not.
        muted: bool,
    },
    /// An event for the audience as it is (custom messages).
    Relay(ServerEvent),
    /// The link ended: the room was dismissed, or its node went away (the audience is
    /// closed with 1001 and reconnects).
    Closed {
        /// Dismissed (else gone away).
        dismissed: bool,
    },
}

/// Why a join of an edge room that is not open (any more) failed: the link to the room's node
/// is opened again and the join retried once (`cascade::join_edge`).
pub const EDGE_NOT_OPEN: &str = "the link to the room's node is not open; try again";

/// An edge room's audience changes for its link: (user, joined, when). Unbounded, but read
/// without pause by the link's task; one entry per join or leave of this node's audience.
pub type AudienceTx = tokio::sync::mpsc::UnboundedSender<(UserId, bool, std::time::SystemTime)>;

/// An edge room's tie to its link to the room's node.
struct EdgeMark {
    /// Dropped with the room: the link ends.
    _stop: tokio::sync::oneshot::Sender<()>,
    /// The room's audience coming and going, for the link.
    audience: AudienceTx,
    /// A member of this node has joined (the room ends when the last one leaves).
    had_local: bool,
}

/// A request from a joined member.
#[derive(Message)]
#[rtype(result = "Result<Option<ReplyData>, RtcError>")]
pub struct Request {
    /// The member's room.
    pub key: RoomKey,
    /// Who.
    pub session: SessionId,
    /// What (not a join).
    pub msg: ClientMessage,
}

/// A member's link closed without a leave.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnected {
    /// The member's room.
    pub key: RoomKey,
    /// Who.
    pub session: SessionId,
}

/// The edge node behind hidden member `session` reports `user` in its audience (`joined`) or
/// gone from it (`cascade.rs`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EdgeAudience {
    /// The room.
    pub key: RoomKey,
    /// The edge's hidden member.
    pub session: SessionId,
    /// Who.
    pub user: UserId,
    /// Joined (else left).
    pub joined: bool,
    /// When it joined there (the edge's clock).
    pub at: std::time::SystemTime,
}

/// An admin operation on a room.
#[derive(Message)]
#[rtype(result = "Result<AdminReply, RtcError>")]
pub struct Admin {
    /// The room.
    pub key: RoomKey,
    /// What.
    pub op: AdminOp,
}

/// The mode of a room, if it exists.
#[derive(Message)]
#[rtype(result = "Option<Mode>")]
pub struct ModeOf(pub RoomKey);

/// A media peer closed on its own.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct PeerClosed(pub PeerId);

/// A simulcast event of a media peer, for whichever room of the shard holds it.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct PeerLayerEvent(pub PeerId, pub crate::room::LayerEvent);

/// Close every link and refuse new joins (server shutdown).
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct CloseAll;

/// Make the next step of room `key` panic (tests of the supervision).
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct InjectFault(pub RoomKey);

/// Hand room `key`'s pending events to their links (the room with that id, not a newer one
/// under the same key).
#[derive(Message)]
#[rtype(result = "()")]
struct Flush {
    key: RoomKey,
    id: u64,
}

// ---- one room's state -------------------------------------------------------------------------

/// A member's link as its room sees it.
struct Connection {
    link: LinkTx,
    /// Encoded events not yet handed over, oldest first.
    pending: Vec<ByteString>,
}

/// One room: the state machine plus its members' links and pending events.
struct RoomCore {
    room: Room,
    id: u64,
    /// The members' links. Events are coalesced: a flush runs at most once per batch window
    /// ([`crate::room::RoomLimits::event_batch`]), so a burst of joins costs each member one
    /// frame per window, not one per event, while a lone event on a quiet room goes out at
    /// once.
    links: SessionMap<Connection>,
    /// Events not yet handed to their recipients' `pending` lists, oldest first. A join into
    /// a room of N members raises an event for N others; queuing it once here keeps that
    /// O(N) fan-out out of the join and does it at the next flush.
    log: Vec<(ByteString, Vec<SessionId>)>,
    /// Members with pending events, each once.
    dirty: Vec<SessionId>,
    flush_queued: bool,
    last_flush: Option<Instant>,
    /// The next step panics (fault injection).
    fault: bool,
    /// This node serves the room as an edge of another node's live room.
    edge: Option<EdgeMark>,
    /// Members standing for other nodes ([`LinkKind::Edge`]): no webhooks of theirs.
    hidden: std::collections::HashSet<UserId>,
    /// This room has been flagged for cascading ([`crate::cluster::Cluster::flag_cascading`]).
    cascade_flagged: bool,
}

/// What the shard has left to do after a room step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[must_use]
struct After {
    /// Schedule a flush after this long (zero: at once).
    flush_in: Option<Duration>,
    /// The room is over: drop it.
    over: bool,
}

impl RoomCore {
    fn new(room: Room, id: u64) -> RoomCore {
        RoomCore {
            room,
            id,
            links: SessionMap::default(),
            log: Vec::new(),
            dirty: Vec::new(),
            flush_queued: false,
            last_flush: None,
            fault: false,
            edge: None,
            hidden: std::collections::HashSet::new(),
            cascade_flagged: false,
        }
    }

    fn slot(&self, user: UserId, stream_type: StreamType) -> SlotKey {
        SlotKey {
            room: self.room.key().clone(),
            user,
            stream_type,
        }
    }

    /// Move the logged events into their recipients' `pending` lists.
    fn distribute(&mut self) {
        for (text, to) in std::mem::take(&mut self.log) {
            for s in &to {
                if let Some(c) = self.links.get_mut(s) {
                    if c.pending.is_empty() {
                        self.dirty.push(*s);
                    }
                    c.pending.push(text.clone());
                }
            }
        }
    }

    /// Hand every pending event to its link. A full outbox keeps its member's events pending
    /// (they go out coalesced at a later flush, and the member stays dirty); a member with
    /// more than the policy's limit waiting is closed as a slow consumer.
    fn flush(&mut self, ctx: &RoomContext) {
        self.distribute();
        self.flush_queued = false;
        self.last_flush = Some(Instant::now());
        let mut slow = Vec::new();
        for s in std::mem::take(&mut self.dirty) {
            let Some(c) = self.links.get_mut(&s) else {
                continue;
            };
            if c.pending.is_empty() {
                continue;
            }
            match c.link.offer(std::mem::take(&mut c.pending)) {
                Offered::Sent | Offered::Gone => {}
                Offered::Full(events) => {
                    c.pending = events;
                    if c.pending.len() > ctx.limits.link.max_pending_events {
                        slow.push(s);
                    } else {
                        self.dirty.push(s);
                    }
                }
            }
        }
        for s in slow {
            if let Some(c) = self.links.remove(&s) {
                Metrics::inc(&ctx.metrics.slow_consumers);
                tracing::info!(session = s, room = %self.room.key(), "closing a slow consumer");
                c.link.close(Vec::new(), CLOSE_POLICY, "slow consumer");
            }
            // As after any dropped connection: it keeps its place until its heartbeat
            // timeout, and nobody reads its subscriptions any more.
            self.room.disconnected(s);
            let fx = self.room.end_subscriptions(s);
            self.apply(ctx, fx);
        }
    }

    fn apply(&mut self, ctx: &RoomContext, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Event { to, event } => {
                    if to.is_empty() {
                        continue;
                    }
                    ctx.metrics
                        .messages_out
                        .fetch_add(to.len() as u64, Ordering::Relaxed);
                    self.log.push((ByteString::from(encode(&event)), to));
                }
                Effect::Remove {
                    session,
                    reason,
                    message,
                } => {
                    Metrics::inc(&ctx.metrics.kicks);
                    self.distribute();
                    if let Some(mut c) = self.links.remove(&session) {
                        let text = encode(&ServerEvent::ClientBanned { reason, message });
                        // Events queued for it go first, then the ban, then the close.
                        c.pending.push(ByteString::from(text));
                        c.link
                            .close(c.pending, CLOSE_NORMAL, ban_close_reason(reason));
                    }
                }
                Effect::Hook(hook) => {
                    // Another node's link or mirror, or an edge room's own life: the room's
                    // node sends those.
                    let hidden = match &hook.user_id {
                        Some(u) => self.hidden.contains(u),
                        None => self.edge.is_some(),
                    };
                    if hidden {
                        continue;
                    }
                    // An edge room's audience is reported to the room's node.
                    if let (Some(edge), Some(user)) = (&self.edge, &hook.user_id) {
                        let joined = match hook.event {
                            HookEvent::EnterRoom => Some(true),
                            HookEvent::ExitRoom => Some(false),
                            _ => None,
                        };
                        if let Some(joined) = joined {
                            let at = std::time::SystemTime::now();
                            let _ = edge.audience.send((user.clone(), joined, at));
                        }
                    }
                    if let Some(w) = &ctx.webhooks {
                        w.do_send(crate::webhook::Deliver {
                            key: self.room.key().clone(),
                            hook,
                        });
                    }
                }
                Effect::StreamEnded {
                    user_id,
                    stream_type,
                    peer,
                } => {
                    if let (Some(peer), Some(media)) = (peer, &ctx.media) {
                        media.unpublish(&self.slot(user_id, stream_type), peer);
                    }
                }
                Effect::MemberGone {
                    session,
                    subscriptions,
                    ..
                } => {
                    // A member that left without a request of its own (a WHIP/WHEP member
                    // whose peer closed) or a session replaced by a resume: let go of its link,
                    // which tells the link's driver it is over.
                    self.links.remove(&session);
                    if let Some(media) = &ctx.media {
                        for peer in subscriptions {
                            media.unsubscribe(peer);
                        }
                    }
                }
                Effect::Unsubscribe { peer } => {
                    if let Some(media) = &ctx.media {
                        media.unsubscribe(peer);
                    }
                }
                Effect::Edge { edge, order } => {
                    // Behind the edge's own events, on its link (`cascade.rs` reads it).
                    let text = order.encode();
                    self.log.push((ByteString::from(text), vec![edge]));
                }
            }
        }
    }

    /// Run `f` on the room and apply its effects; keeps the member gauge right and closes the
    /// links of a room that is over. Panics (a bug) propagate to the shard's `catch_unwind`.
    fn step<T>(
        &mut self,
        ctx: &RoomContext,
        f: impl FnOnce(&mut Room) -> (T, Vec<Effect>),
    ) -> (T, After) {
        if std::mem::take(&mut self.fault) {
            panic!("injected room fault");
        }
        let before = self.room.len() as i64;
        let (out, effects) = f(&mut self.room);
        self.apply(ctx, effects);
        let mut after = After::default();
        if (!self.dirty.is_empty() || !self.log.is_empty()) && !self.flush_queued {
            self.flush_queued = true;
            after.flush_in = Some(flush_delay(
                self.last_flush,
                Instant::now(),
                ctx.limits.event_batch,
            ));
        }
        let now_len = self.room.len() as i64;
        ctx.metrics
            .members
            .fetch_add(now_len - before, Ordering::Relaxed);
        if self.room.is_dismissed() {
            self.distribute();
            for (_, c) in self.links.drain() {
                c.link.close(c.pending, CLOSE_NORMAL, "room dismissed");
            }
            after.over = true;
        }
        // An edge room lasts while members of this node are in it.
        if let Some(edge) = &mut self.edge {
            if self.room.local_len() > 0 {
                edge.had_local = true;
            } else if edge.had_local {
                after.over = true;
            }
        }
        (out, after)
    }
}

// ---- the shard --------------------------------------------------------------------------------

/// Messages a shard's mailbox holds before senders wait.
const MAILBOX: usize = 65_536;

/// A shard's rooms. Owned by the shard's thread: the [`RoomShard`] actor drives it, and a
/// link driver on the same thread may run a join on it directly ([`join_here`]).
pub struct ShardCore {
    ctx: RoomContext,
    rooms: HashMap<RoomKey, RoomCore>,
    next_id: u64,
    closing: bool,
    /// Flushes to run later: (room, room id, delay). The actor turns them into timers.
    timers: Vec<(RoomKey, u64, Duration)>,
}

/// Owns a share of the server's rooms (see the module docs).
pub struct RoomShard {
    core: Rc<RefCell<ShardCore>>,
}

/// The shard of the current thread, for joins that need no message.
struct HereShard {
    slot: usize,
    core: Rc<RefCell<ShardCore>>,
    addr: Addr<RoomShard>,
}

thread_local! {
    static HERE: RefCell<Option<HereShard>> = const { RefCell::new(None) };
}

/// Start a shard for directory slot `slot` on the current thread (an actix arbiter), and make
/// it this thread's shard for [`join_here`].
pub fn start_here(ctx: RoomContext, slot: usize) -> Addr<RoomShard> {
    let core = Rc::new(RefCell::new(ShardCore::new(ctx)));
    let addr = RoomShard { core: core.clone() }.start();
    HERE.with(|h| {
        *h.borrow_mut() = Some(HereShard {
            slot,
            core,
            addr: addr.clone(),
        })
    });
    addr
}

/// Join on this thread's shard when it owns `slot`: the join runs to completion right here,
/// with no message to the shard and no wait for its answer (in a burst of joins, the hop
/// put every reply behind the reading of every other join). `Err(link)` when this thread's
/// shard is another.
#[allow(clippy::result_large_err)]
pub fn join_here(slot: usize, key: RoomKey, input: JoinInput, link: LinkTx) -> JoinedHere {
    HERE.with(|h| {
        let h = h.borrow();
        let Some(here) = h.as_ref().filter(|here| here.slot == slot) else {
            return Err((key, input, link));
        };
        // Never held across an await, and the shard's handlers do not call back into link
        // drivers, so the shard is free whenever a link driver runs.
        let Ok(mut core) = here.core.try_borrow_mut() else {
            return Err((key, input, link));
        };
        let r = core.join(key, input, link, false);
        for (key, id, delay) in core.timers.drain(..) {
            here.addr.do_send(FlushLater { key, id, delay });
        }
        Ok((r, here.addr.clone()))
    })
}

/// What [`join_here`] did: the join's result and the shard, or the join handed back.
pub type JoinedHere = Result<(Reply<Joined>, Addr<RoomShard>), (RoomKey, JoinInput, LinkTx)>;

type Reply<T> = Result<T, RtcError>;
type RequestResult = Reply<Option<ReplyData>>;

impl RoomShard {
    /// Turn the flushes the core asked for into timers.
    fn schedule(&self, ctx: &mut Context<Self>) {
        for (key, id, delay) in self.core.borrow_mut().timers.drain(..) {
            ctx.notify_later(Flush { key, id }, delay);
        }
    }
}

impl ShardCore {
    /// A shard with no rooms yet.
    pub fn new(ctx: RoomContext) -> ShardCore {
        ShardCore {
            ctx,
            rooms: HashMap::new(),
            next_id: 1,
            closing: false,
            timers: Vec::new(),
        }
    }

    /// Run one step of room `key` under `catch_unwind`, then carry out what it left to do
    /// (flush, drop the room). `None`: no such room (or it has id other than `id`), or it
    /// panicked and was dropped.
    fn step<T>(
        &mut self,
        key: &RoomKey,
        id: Option<u64>,
        f: impl FnOnce(&mut RoomCore, &RoomContext) -> (T, After),
    ) -> Option<T> {
        let core = self.rooms.get_mut(key)?;
        if id.is_some_and(|id| id != core.id) {
            return None;
        }
        let rctx = &self.ctx;
        match catch_unwind(AssertUnwindSafe(|| f(core, rctx))) {
            Ok((out, after)) => {
                self.follow_up(key, after);
                Some(out)
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(room = %key, panic = %what, "room failed; dropping it");
                self.fail_room(key);
                None
            }
        }
    }

    fn follow_up(&mut self, key: &RoomKey, after: After) {
        if after.over {
            self.drop_room(key);
            return;
        }
        match after.flush_in {
            Some(d) if d.is_zero() => self.flush(key, None),
            Some(d) => {
                if let Some(core) = self.rooms.get(key) {
                    self.timers.push((key.clone(), core.id, d));
                }
            }
            None => {}
        }
    }

    fn flush(&mut self, key: &RoomKey, id: Option<u64>) {
        let retry = self.step(key, id, |core, rctx| {
            core.flush(rctx);
            // Outboxes that were full: offer their (coalesced) events again a window later.
            let retry = !core.dirty.is_empty() && !core.flush_queued;
            if retry {
                core.flush_queued = true;
            }
            ((retry, core.id), After::default())
        });
        if let Some((true, id)) = retry {
            self.timers
                .push((key.clone(), id, self.ctx.limits.event_batch));
        }
    }

    /// A room that is over: forget it.
    fn drop_room(&mut self, key: &RoomKey) {
        if let Some(core) = self.rooms.remove(key) {
            self.ctx.metrics.rooms.fetch_sub(1, Ordering::Relaxed);
            // An edge room ends with its mirrored anchors still in it.
            self.ctx
                .metrics
                .members
                .fetch_sub(core.room.len() as i64, Ordering::Relaxed);
            if let Some(media) = &self.ctx.media {
                for peer in core.room.peers() {
                    media.close_peer(peer);
                }
            }
            if core.edge.is_none() {
                self.released(key);
            }
        }
    }

    /// A room of this node is gone: in a cluster, its placement is released.
    fn released(&self, key: &RoomKey) {
        if let Some(cluster) = &self.ctx.cluster {
            cluster.room_closed(key);
        }
    }

    /// A room that panicked: close its links (1011), release its media, forget it.
    fn fail_room(&mut self, key: &RoomKey) {
        let Some(core) = self.rooms.remove(key) else {
            return;
        };
        Metrics::inc(&self.ctx.metrics.room_faults);
        self.ctx.metrics.rooms.fetch_sub(1, Ordering::Relaxed);
        self.released(key);
        self.ctx
            .metrics
            .members
            .fetch_sub(core.room.len() as i64, Ordering::Relaxed);
        // Read what can be read of a room whose step did not finish; each read is plain
        // data, so nothing here can panic again.
        for (_, c) in core.links {
            c.link.close(Vec::new(), CLOSE_INTERNAL, "room failed");
        }
        if let Some(media) = &self.ctx.media {
            for peer in core.room.peers() {
                media.close_peer(peer);
            }
        }
    }

    /// The room for a join, created if needed; `true` when created by this join.
    fn room_for(&mut self, key: &RoomKey, input: &JoinInput) -> Reply<bool> {
        if self.closing {
            return Err(RtcError::new(
                ErrorCode::JoinRoomFailed,
                "the server is shutting down",
            ));
        }
        if self.rooms.contains_key(key) {
            return Ok(false);
        }
        if let Some(p) = input.privileges
            && !p.contains(Privilege::CreateRoom)
        {
            return Err(RtcError::with_extra(
                ErrorCode::JoinRoomFailed,
                extra::NO_PERMISSION_CREATE_ROOM,
                "the room does not exist and the privateMapKey does not grant creating it (bit 1)",
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        let room = Room::new(key.clone(), input.mode, self.ctx.limits.clone());
        self.rooms.insert(key.clone(), RoomCore::new(room, id));
        self.ctx.metrics.rooms.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn media(&self) -> Reply<MediaPlane> {
        self.ctx.media.clone().ok_or_else(|| {
            RtcError::new(
                ErrorCode::NotSupported,
                "this server runs without the media plane",
            )
        })
    }
}

impl Actor for RoomShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // actix's default mailbox holds 16 messages; past that, every sender (`Addr::send`)
        // parks and is woken one by one. A burst of joins into one room is exactly that:
        // measured, 200 joins at once cost ~2× the CPU and latency. The inputs are bounded
        // upstream (each link's rate limiter), so a deep mailbox is safe.
        ctx.set_mailbox_capacity(MAILBOX);
        // Tick often enough that eviction happens within a quarter of the timeout (≤ 1 s).
        let every = (self.core.borrow().ctx.limits.heartbeat_timeout / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        ctx.run_interval(every, |act, ctx| {
            let now = Instant::now();
            {
                let mut shard = act.core.borrow_mut();
                let keys: Vec<RoomKey> = shard.rooms.keys().cloned().collect();
                for key in keys {
                    shard.step(&key, None, |core, rctx| {
                        core.step(rctx, |room| ((), room.tick(now)))
                    });
                }
            }
            act.schedule(ctx);
        });
    }
}

impl ShardCore {
    /// Join room `key` (created if needed) over `link`; `edge`: the edge room this node
    /// serves for another node's live room (which must be open).
    fn join(&mut self, key: RoomKey, input: JoinInput, link: LinkTx, edge: bool) -> Reply<Joined> {
        match (self.rooms.get(&key).map(|c| c.edge.is_some()), edge) {
            (Some(false), true) | (None, true) => {
                return Err(RtcError::new(ErrorCode::JoinRoomFailed, EDGE_NOT_OPEN));
            }
            (Some(true), false) => {
                return Err(RtcError::new(
                    ErrorCode::JoinRoomFailed,
                    "this node serves the room for another node that just went; try again",
                ));
            }
            _ => {}
        }
        let created = self.room_for(&key, &input)?;
        let session = input.session;
        let hidden = (input.kind == LinkKind::Edge).then(|| input.user_id.clone());
        let audience = input.role != Some(rtcroom_protocol::Role::Anchor)
            && input.mode == Mode::Live
            && input.kind != LinkKind::Edge;
        let cluster = self.ctx.cluster.clone();
        let now = Instant::now();
        let result = self.step(&key, None, move |core, rctx| {
            if hidden.is_none() {
                // A member of this node taking over a mirrored anchor's userId (the room's
                // node kicks the anchor): its webhooks and reports are its own.
                core.hidden.remove(&input.user_id);
            }
            let (res, after) = core.step(rctx, |room| match room.join(input, now) {
                Ok((joined, mut fx)) => {
                    if created {
                        // Only now that every check has passed does the room exist: its
                        // creation webhook goes out first.
                        fx.insert(0, room.created());
                    }
                    (Ok(joined), fx)
                }
                Err(e) => (Err(e), Vec::new()),
            });
            if res.is_ok() {
                core.links.insert(
                    session,
                    Connection {
                        link,
                        pending: Vec::new(),
                    },
                );
                if let Some(user) = hidden {
                    core.hidden.insert(user);
                }
                // A live room of this node with this many audience members: other nodes
                // serve its audience from now on.
                if let Some(cluster) = &cluster
                    && audience
                    && core.edge.is_none()
                    && !core.cascade_flagged
                    && cluster.edge_after_audience() > 0
                    && core.room.audience_len() >= cluster.edge_after_audience() as usize
                {
                    core.cascade_flagged = true;
                    cluster.flag_cascading(core.room.key());
                }
            }
            let over = after.over || (created && res.is_err());
            (res, After { over, ..after })
        });
        // A refused first join left nothing behind: the room was dropped in the step's
        // follow-up and no webhook went out.
        result.unwrap_or_else(|| {
            Err(RtcError::new(
                ErrorCode::JoinRoomFailed,
                "the room failed while joining; try again",
            ))
        })
    }
}

impl Handler<Join> for RoomShard {
    type Result = Reply<Joined>;

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) -> Self::Result {
        let Join {
            key,
            input,
            link,
            edge,
        } = msg;
        let r = self.core.borrow_mut().join(key, input, link, edge);
        self.schedule(ctx);
        r
    }
}

impl ShardCore {
    /// Apply what the room's node reported to edge room `key`.
    fn mirror(&mut self, key: &RoomKey, update: Mirror) -> Reply<()> {
        let not_open = || {
            RtcError::new(
                ErrorCode::JoinRoomFailed,
                "the edge room is not open (its last member left)",
            )
        };
        let update = match update {
            Mirror::Open { stop, audience } => {
                if let Some(core) = self.rooms.get_mut(key) {
                    return match &mut core.edge {
                        Some(edge) => {
                            // A new link: it learns the audience already here.
                            // (Stamped now: the room's node keeps a newer member of the userId
                            // it may hold against these.)
                            let at = std::time::SystemTime::now();
                            for user in core.room.local_users() {
                                let _ = audience.send((user, true, at));
                            }
                            edge._stop = stop;
                            edge.audience = audience;
                            Ok(())
                        }
                        None => Err(RtcError::new(
                            ErrorCode::JoinRoomFailed,
                            "this node holds the room itself",
                        )),
                    };
                }
                if self.closing {
                    return Err(RtcError::new(
                        ErrorCode::JoinRoomFailed,
                        "the server is shutting down",
                    ));
                }
                let id = self.next_id;
                self.next_id += 1;
                let room = Room::new(key.clone(), Mode::Live, self.ctx.limits.clone());
                let mut core = RoomCore::new(room, id);
                core.edge = Some(EdgeMark {
                    _stop: stop,
                    audience,
                    had_local: false,
                });
                self.rooms.insert(key.clone(), core);
                self.ctx.metrics.rooms.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            other => other,
        };
        if self.rooms.get(key).is_none_or(|c| c.edge.is_none()) {
            return Err(not_open());
        }
        let now = Instant::now();
        let media = self.ctx.media.clone();
        self.step(key, None, |core, rctx| {
            let r = match update {
                Mirror::Open { .. } => Ok(()),
                Mirror::AnchorIn(user) => {
                    if core.room.mirror_session(&user).is_some() {
                        Ok(())
                    } else {
                        // The same userId in this node's audience (it joined the room's node
                        // as anchor, or switched to anchor there): kicked here as a duplicate,
                        // with its own webhooks and report, before the mirror comes in.
                        let mut kicked = After::default();
                        if core.room.session_of(&user).is_some() {
                            kicked = core
                                .step(rctx, |room| {
                                    let message = "duplicated userId joining the room".to_owned();
                                    ((), room.kick_local(&user, BanReason::Kick, message, now))
                                })
                                .1;
                            if kicked.over {
                                // It was the last member of this node: the edge room ends.
                                return (Ok(()), kicked);
                            }
                        }
                        core.hidden.insert(user.clone());
                        let input = JoinInput {
                            session: crate::auth::next_session_id(),
                            user_id: user,
                            mode: Mode::Live,
                            role: Some(rtcroom_protocol::Role::Anchor),
                            privileges: None,
                            kind: LinkKind::Edge,
                        };
                        let (r, mut after) = core.step(rctx, |room| match room.join(input, now) {
                            Ok((_, fx)) => (Ok(()), fx),
                            Err(e) => (Err(e), Vec::new()),
                        });
                        // The kick's flush, if it asked for one first.
                        after.flush_in = kicked.flush_in.or(after.flush_in);
                        return (r, after);
                    }
                }
                Mirror::AnchorOut(user, reason) => {
                    return core.step(rctx, |room| (Ok(()), room.mirror_leave(&user, reason, now)));
                }
                Mirror::Stream { info, peer } => {
                    let Some(session) = core.room.mirror_session(&info.user_id) else {
                        return (
                            Err(RtcError::invalid_operation(None, "no such anchor")),
                            After::default(),
                        );
                    };
                    let slot = core.slot(info.user_id.clone(), info.stream_type);
                    let (r, after) = core.step(rctx, |room| {
                        let mut fx = match room.publish_media(
                            session,
                            info.stream_type,
                            info.has_audio,
                            info.has_video,
                            info.video_codec,
                            peer,
                            info.layers.clone(),
                        ) {
                            Ok(fx) => fx,
                            Err(e) => return (Err(e), Vec::new()),
                        };
                        for (kind, muted) in [
                            (MediaKind::Audio, info.audio_muted),
                            (MediaKind::Video, info.video_muted),
                        ] {
                            if muted {
                                fx.extend(
                                    room.mute(session, info.stream_type, kind, true)
                                        .unwrap_or_default(),
                                );
                            }
                        }
                        (Ok(()), fx)
                    });
                    if r.is_ok()
                        && let Some(media) = &media
                    {
                        for (kind, muted) in [
                            (MediaKind::Audio, info.audio_muted),
                            (MediaKind::Video, info.video_muted),
                        ] {
                            if muted {
                                media.set_muted(&slot, kind, true);
                            }
                        }
                    }
                    return (r, after);
                }
                Mirror::StreamGone(user, stream_type) => {
                    let Some(session) = core.room.mirror_session(&user) else {
                        return (Ok(()), After::default());
                    };
                    return core.step(rctx, |room| {
                        (
                            Ok(()),
                            room.unpublish(session, stream_type).unwrap_or_default(),
                        )
                    });
                }
                Mirror::Mute {
                    user,
                    stream_type,
                    kind,
                    muted,
                } => {
                    let Some(session) = core.room.mirror_session(&user) else {
                        return (Ok(()), After::default());
                    };
                    let slot = core.slot(user, stream_type);
                    let (r, after) = core.step(rctx, |room| {
                        match room.mute(session, stream_type, kind, muted) {
                            Ok(fx) => (Ok(()), fx),
                            Err(e) => (Err(e), Vec::new()),
                        }
                    });
                    if r.is_ok()
                        && let Some(media) = &media
                    {
                        media.set_muted(&slot, kind, muted);
                    }
                    return (r, after);
                }
                Mirror::Relay(event) => {
                    return core.step(rctx, |room| (Ok(()), room.relay(event)));
                }
                Mirror::OriginFull(full) => {
                    core.room.set_origin_full(full);
                    Ok(())
                }
                Mirror::Kick(order) => {
                    return core.step(rctx, |room| {
                        let fx = room.kick_local(&order.user_id, order.reason, order.message, now);
                        (Ok(()), fx)
                    });
                }
                Mirror::Closed { dismissed } => {
                    if !dismissed {
                        // The room's node went away: the audience reconnects (TRTC's backoff)
                        // and finds the room wherever it is placed next.
                        core.distribute();
                        for (_, c) in core.links.drain() {
                            c.link
                                .close(c.pending, CLOSE_AWAY, "the room's node went away");
                        }
                    }
                    let (r, mut after) = core.step(rctx, |room| (Ok(()), room.dismiss()));
                    after.over = true;
                    return (r, after);
                }
            };
            (r, After::default())
        })
        .unwrap_or_else(|| Err(not_open()))
    }
}

impl Handler<EdgeUpdate> for RoomShard {
    type Result = Reply<()>;

    fn handle(
        &mut self,
        EdgeUpdate { key, update }: EdgeUpdate,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        let r = self.core.borrow_mut().mirror(&key, update);
        self.schedule(ctx);
        r
    }
}

/// Run a flush later (a join made on the shard's thread without a message asks for it).
#[derive(Message)]
#[rtype(result = "()")]
struct FlushLater {
    key: RoomKey,
    id: u64,
    delay: Duration,
}

impl Handler<FlushLater> for RoomShard {
    type Result = ();

    fn handle(&mut self, FlushLater { key, id, delay }: FlushLater, ctx: &mut Self::Context) {
        ctx.notify_later(Flush { key, id }, delay);
    }
}

impl Handler<Request> for RoomShard {
    type Result = ActorResponse<Self, RequestResult>;

    fn handle(&mut self, msg: Request, ctx: &mut Self::Context) -> Self::Result {
        let Request { key, session, msg } = msg;
        let gone = || not_in_room("not in the room (removed or timed out)");
        let Some(id) = self.core.borrow().rooms.get(&key).map(|c| c.id) else {
            return ActorResponse::reply(Err(gone()));
        };
        let now = Instant::now();
        let media = self.core.borrow().ctx.media.clone();
        // Synchronous requests, and the checks of those that negotiate media.
        enum Next {
            Done(RequestResult),
            Publish {
                slot: SlotKey,
                sdp: String,
                st: StreamType,
                audio: bool,
                video: bool,
                layers: Vec<VideoLayer>,
            },
            Subscribe {
                slot: SlotKey,
                sdp: String,
                audio: bool,
                video: bool,
                video_type: VideoStreamType,
            },
            IceRestart {
                peer: PeerId,
                sdp: String,
                /// A downlink's stream (its `msid` is kept in the new answer).
                downlink: Option<(UserId, StreamType)>,
            },
        }
        let media_ok = self.core.borrow().media();
        let next = self.core.borrow_mut().step(&key, Some(id), |core, rctx| {
            let Some(me) = core.room.user_of(session).cloned() else {
                return (Next::Done(Err(gone())), After::default());
            };
            core.room.heartbeat(session, now);
            let none = |r: Result<Vec<Effect>, RtcError>| match r {
                Ok(fx) => (Ok(None), fx),
                Err(e) => (Err(e), Vec::new()),
            };
            let done = |(r, after): (RequestResult, After)| (Next::Done(r), after);
            match msg {
                ClientMessage::Heartbeat => (Next::Done(Ok(None)), After::default()),
                ClientMessage::GetStats => {
                    let mut stats = MemberStats::default();
                    if let Some(media) = &media {
                        let (up, down) = core.room.links_of(session);
                        for (user, st, peer) in up {
                            if let Some(mut l) = media.link_stats(peer) {
                                (l.user_id, l.stream_type) = (Some(user), Some(st));
                                stats.uplinks.push(l);
                            }
                        }
                        for (user, st, peer) in down {
                            if let Some(mut l) = media.link_stats(peer) {
                                (l.user_id, l.stream_type) = (Some(user), Some(st));
                                stats.downlinks.push(l);
                            }
                        }
                    }
                    (
                        Next::Done(Ok(Some(ReplyData::Stats(stats)))),
                        After::default(),
                    )
                }
                ClientMessage::Leave => {
                    core.links.remove(&session);
                    done(core.step(rctx, |room| (Ok(None), room.leave(session, now))))
                }
                ClientMessage::Publish(p) => {
                    let (st, a, v) = (p.stream_type, p.has_audio, p.has_video);
                    match (p.sdp, &media) {
                        (Some(sdp), Some(_)) => match core.room.check_publish(session, st, a, v) {
                            Ok(()) => (
                                Next::Publish {
                                    slot: core.slot(me, st),
                                    sdp,
                                    st,
                                    audio: a,
                                    video: v,
                                    layers: p.layers,
                                },
                                After::default(),
                            ),
                            Err(e) => (Next::Done(Err(e)), After::default()),
                        },
                        // Signalling only (no offer, or no media plane): announce the stream.
                        _ => done(core.step(rctx, |room| none(room.publish(session, st, a, v)))),
                    }
                }
                ClientMessage::Unpublish { stream_type } => {
                    done(core.step(rctx, |room| none(room.unpublish(session, stream_type))))
                }
                ClientMessage::Mute {
                    stream_type,
                    kind,
                    muted,
                } => {
                    let (r, after) = core.step(rctx, |room| {
                        none(room.mute(session, stream_type, kind, muted))
                    });
                    if r.is_ok()
                        && let Some(media) = &media
                    {
                        media.set_muted(&core.slot(me, stream_type), kind, muted);
                    }
                    (Next::Done(r), after)
                }
                ClientMessage::SwitchRole { role } if core.edge.is_some() => {
                    // An edge serves audience only: an anchor belongs on the room's node (a
                    // member's session moves there instead of asking this: `session.rs`).
                    let r = if role == rtcroom_protocol::Role::Anchor {
                        Err(RtcError::invalid_operation(
                            None,
                            "this node serves the live room's audience for another node: \
                             join the room again as anchor to go on air",
                        ))
                    } else {
                        Ok(None)
                    };
                    (Next::Done(r), After::default())
                }
                ClientMessage::SwitchRole { role } => {
                    done(core.step(rctx, |room| none(room.switch_role(session, role))))
                }
                ClientMessage::CustomMessage { cmd_id, data } => done(core.step(rctx, |room| {
                    none(room.custom_message(session, cmd_id, data, now))
                })),
                ClientMessage::Subscribe(sub) => {
                    let (user, st) = (sub.user_id, sub.stream_type);
                    if let Err(e) = core
                        .room
                        .check_subscribe(session, &user, st, sub.audio, sub.video)
                    {
                        return (Next::Done(Err(e)), After::default());
                    }
                    if let Err(e) = &media_ok {
                        return (Next::Done(Err(e.clone())), After::default());
                    }
                    let Some(sdp) = sub.sdp else {
                        return (
                            Next::Done(Err(RtcError::invalid_parameter(
                                Some(extra::PARAM_REQUIRED),
                                "subscribe needs an SDP offer (sdp) with recvonly audio/video",
                            ))),
                            After::default(),
                        );
                    };
                    (
                        Next::Subscribe {
                            slot: core.slot(user, st),
                            sdp,
                            audio: sub.audio,
                            video: sub.video,
                            video_type: sub.video_type.unwrap_or_default(),
                        },
                        After::default(),
                    )
                }
                ClientMessage::Unsubscribe {
                    user_id,
                    stream_type,
                } => done(core.step(rctx, |room| {
                    none(room.unsubscribe(session, &user_id, stream_type))
                })),
                ClientMessage::IceRestart(r) => {
                    if let Err(e) = &media_ok {
                        return (Next::Done(Err(e.clone())), After::default());
                    }
                    let (up, down) = core.room.links_of(session);
                    let found = match (r.link, &r.user_id) {
                        (LinkDirection::Uplink, _) => up
                            .into_iter()
                            .find(|(_, st, _)| *st == r.stream_type)
                            .map(|(_, _, peer)| (peer, None)),
                        (LinkDirection::Downlink, Some(user)) => down
                            .into_iter()
                            .find(|(u, st, _)| u == user && *st == r.stream_type)
                            .map(|(u, st, peer)| (peer, Some((u, st)))),
                        (LinkDirection::Downlink, None) => {
                            return (
                                Next::Done(Err(RtcError::invalid_parameter(
                                    Some(extra::PARAM_REQUIRED),
                                    "ice-restart of a downlink needs userId",
                                ))),
                                After::default(),
                            );
                        }
                    };
                    match found {
                        Some((peer, downlink)) => (
                            Next::IceRestart {
                                peer,
                                sdp: r.sdp,
                                downlink,
                            },
                            After::default(),
                        ),
                        None => (
                            Next::Done(Err(RtcError::invalid_operation(
                                None,
                                "no such media link to restart: publish or subscribe again",
                            ))),
                            After::default(),
                        ),
                    }
                }
                ClientMessage::SetRemoteVideoStreamType {
                    user_id,
                    stream_type,
                    video_type,
                } => {
                    let (_, down) = core.room.links_of(session);
                    let peer = down
                        .into_iter()
                        .find(|(u, st, _)| *u == user_id && *st == stream_type)
                        .map(|(_, _, peer)| peer);
                    let r = match (peer, &media) {
                        (Some(peer), Some(media)) => {
                            media.set_video_type(peer, video_type);
                            Ok(None)
                        }
                        _ => Err(RtcError::invalid_operation(
                            None,
                            format!(
                                "not subscribed to {user_id}'s {} stream",
                                match stream_type {
                                    StreamType::Main => "main",
                                    StreamType::Auxiliary => "auxiliary",
                                }
                            ),
                        )),
                    };
                    (Next::Done(r), After::default())
                }
                ClientMessage::Join(_) => (
                    Next::Done(Err(RtcError::invalid_operation(
                        Some(extra::REPEATED_CALL),
                        "already joined",
                    ))),
                    After::default(),
                ),
                _ => (
                    Next::Done(Err(RtcError::invalid_parameter(
                        None,
                        "unsupported request",
                    ))),
                    After::default(),
                ),
            }
        });
        self.schedule(ctx);
        let Some(next) = next else {
            return ActorResponse::reply(Err(RtcError::new(
                ErrorCode::InvalidOperation,
                "the room failed; join again",
            )));
        };
        let media = match (&next, media) {
            (Next::Done(_), _) => None,
            (_, Some(m)) => Some(m),
            (_, None) => {
                return ActorResponse::reply(Err(RtcError::new(
                    ErrorCode::NotSupported,
                    "this server runs without the media plane",
                )));
            }
        };
        match (next, media) {
            (Next::Done(r), _) => ActorResponse::reply(r),
            (
                Next::Publish {
                    slot,
                    sdp,
                    st,
                    audio,
                    video,
                    layers,
                },
                Some(media),
            ) => {
                let fut = async move {
                    (
                        media.publish(slot.clone(), &sdp, &layers).await,
                        slot,
                        media,
                    )
                };
                ActorResponse::r#async(fut.into_actor(self).map(
                    move |(res, slot, media), act, ctx| {
                        let published = res?;
                        let peer = published.peer;
                        let codec = published.video_codec;
                        let layers = published.layers;
                        // Commit now that the media is up; the member (or the room) may have
                        // gone meanwhile.
                        let committed = act.core.borrow_mut().step(&key, Some(id), |core, rctx| {
                            core.step(rctx, |room| {
                                match room.publish_media(
                                    session,
                                    st,
                                    audio,
                                    video,
                                    codec,
                                    Some(peer),
                                    layers,
                                ) {
                                    Ok(fx) => (Ok(()), fx),
                                    Err(e) => (Err(e), Vec::new()),
                                }
                            })
                        });
                        act.schedule(ctx);
                        match committed {
                            Some(Ok(())) => Ok(Some(ReplyData::Answer {
                                sdp: published.answer,
                            })),
                            Some(Err(e)) => {
                                media.unpublish(&slot, peer);
                                Err(e)
                            }
                            None => {
                                media.unpublish(&slot, peer);
                                Err(not_in_room("the room closed while publishing"))
                            }
                        }
                    },
                ))
            }
            (
                Next::Subscribe {
                    slot,
                    sdp,
                    audio,
                    video,
                    video_type,
                },
                Some(media),
            ) => {
                let publisher = slot.user.clone();
                let st = slot.stream_type;
                let fut = async move {
                    (
                        media.subscribe(slot, audio, video, &sdp, video_type).await,
                        media,
                    )
                };
                ActorResponse::r#async(fut.into_actor(self).map(move |(res, media), act, ctx| {
                    let (peer, answer) = res?;
                    let committed = act.core.borrow_mut().step(&key, Some(id), |core, rctx| {
                        core.step(rctx, |room| {
                            match room.add_subscription(session, &publisher, st, peer) {
                                Ok(fx) => (Ok(()), fx),
                                Err(e) => (Err(e), Vec::new()),
                            }
                        })
                    });
                    act.schedule(ctx);
                    match committed {
                        Some(Ok(())) => Ok(Some(ReplyData::Answer { sdp: answer })),
                        Some(Err(e)) => {
                            media.unsubscribe(peer);
                            Err(e)
                        }
                        None => {
                            media.unsubscribe(peer);
                            Err(not_in_room("the room closed while subscribing"))
                        }
                    }
                }))
            }
            (
                Next::IceRestart {
                    peer,
                    sdp,
                    downlink,
                },
                Some(media),
            ) => ActorResponse::r#async(
                async move { media.restart_ice(peer, &sdp, downlink).await }
                    .into_actor(self)
                    .map(|res, _, _| res.map(|sdp| Some(ReplyData::Answer { sdp }))),
            ),
            (_, None) => ActorResponse::reply(Err(RtcError::new(
                ErrorCode::NotSupported,
                "this server runs without the media plane",
            ))),
        }
    }
}

impl Handler<Disconnected> for RoomShard {
    type Result = ();

    fn handle(&mut self, msg: Disconnected, ctx: &mut Self::Context) {
        let Disconnected { key, session } = msg;
        self.core.borrow_mut().step(&key, None, |core, rctx| {
            core.links.remove(&session);
            // It stays a member until its heartbeat timeout (TRTC keeps it 90 s), but nobody
            // reads its subscriptions any more: close them now (a resumed client subscribes
            // again). Its published streams stay: their media may still flow, and a resume
            // re-publishes them.
            core.step(rctx, |room| {
                room.disconnected(session);
                ((), room.end_subscriptions(session))
            })
        });
        self.schedule(ctx);
    }
}

impl Handler<EdgeAudience> for RoomShard {
    type Result = ();

    fn handle(&mut self, msg: EdgeAudience, ctx: &mut Self::Context) {
        let EdgeAudience {
            key,
            session,
            user,
            joined,
            at,
        } = msg;
        let now = Instant::now();
        // The edge's clock to this node's: how long ago (none if it reads as the future).
        let ago = std::time::SystemTime::now()
            .duration_since(at)
            .unwrap_or_default();
        let joined_at = now.checked_sub(ago).unwrap_or(now);
        self.core.borrow_mut().step(&key, None, |core, rctx| {
            core.step(rctx, |room| {
                (
                    (),
                    room.edge_audience(session, user, joined, joined_at, now),
                )
            })
        });
        self.schedule(ctx);
    }
}

impl Handler<Admin> for RoomShard {
    type Result = Reply<AdminReply>;

    fn handle(&mut self, msg: Admin, ctx: &mut Self::Context) -> Self::Result {
        let Admin { key, op } = msg;
        let now = Instant::now();
        let r = self
            .core
            .borrow_mut()
            .step(&key, None, |core, rctx| match op {
                AdminOp::Describe => (Ok(AdminReply::Info(core.room.describe())), After::default()),
                AdminOp::Dismiss => core.step(rctx, |room| (Ok(AdminReply::Done), room.dismiss())),
                AdminOp::Remove(users) => core.step(rctx, |room| {
                    (Ok(AdminReply::Done), room.remove_users(&users, now))
                }),
            });
        self.schedule(ctx);
        r.unwrap_or_else(|| {
            Err(RtcError::with_extra(
                ErrorCode::InvalidParameter,
                extra::ROOM_NOT_EXIST,
                format!("room {} does not exist", key.room_id),
            ))
        })
    }
}

impl Handler<ModeOf> for RoomShard {
    type Result = Option<Mode>;

    fn handle(&mut self, ModeOf(key): ModeOf, _ctx: &mut Self::Context) -> Self::Result {
        self.core.borrow().rooms.get(&key).map(|c| c.room.mode())
    }
}

impl RoomShard {
    /// The room of this shard that holds media peer `peer` (each room answers from its own
    /// index of peers in O(1)).
    fn room_of_peer(&self, peer: PeerId) -> Option<RoomKey> {
        self.core
            .borrow()
            .rooms
            .iter()
            .find(|(_, c)| c.room.peer_use(peer).is_some())
            .map(|(k, _)| k.clone())
    }
}

impl Handler<PeerClosed> for RoomShard {
    type Result = ();

    /// Rare (ICE lost, connect timeout, worker fault), so every room of the shard is asked;
    /// each answers from its own index of peers in O(1).
    fn handle(&mut self, PeerClosed(peer): PeerClosed, ctx: &mut Self::Context) {
        let Some(key) = self.room_of_peer(peer) else {
            return;
        };
        let now = Instant::now();
        self.core.borrow_mut().step(&key, None, |core, rctx| {
            core.step(rctx, |room| ((), room.peer_closed(peer, now)))
        });
        self.schedule(ctx);
    }
}

impl Handler<PeerLayerEvent> for RoomShard {
    type Result = ();

    /// Like a closed peer's, asked of every room of the shard (layer changes come with
    /// switches, not with packets).
    fn handle(&mut self, PeerLayerEvent(peer, event): PeerLayerEvent, ctx: &mut Self::Context) {
        let Some(key) = self.room_of_peer(peer) else {
            return;
        };
        self.core.borrow_mut().step(&key, None, |core, rctx| {
            core.step(rctx, |room| ((), room.layer_event(peer, event)))
        });
        self.schedule(ctx);
    }
}

impl Handler<CloseAll> for RoomShard {
    type Result = ();

    fn handle(&mut self, _: CloseAll, _ctx: &mut Self::Context) {
        let mut shard = self.core.borrow_mut();
        shard.closing = true;
        for core in shard.rooms.values_mut() {
            core.distribute();
            for (_, c) in core.links.drain() {
                c.link.close(c.pending, CLOSE_AWAY, "server shutting down");
            }
        }
    }
}

impl Handler<InjectFault> for RoomShard {
    type Result = bool;

    fn handle(&mut self, InjectFault(key): InjectFault, _ctx: &mut Self::Context) -> bool {
        match self.core.borrow_mut().rooms.get_mut(&key) {
            Some(core) => {
                core.fault = true;
                true
            }
            None => false,
        }
    }
}

impl Handler<Flush> for RoomShard {
    type Result = ();

    fn handle(&mut self, Flush { key, id }: Flush, ctx: &mut Self::Context) {
        self.core.borrow_mut().flush(&key, Some(id));
        self.schedule(ctx);
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
