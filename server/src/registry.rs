//! The front door to rooms. [`Registry`] (one per server) finds a room's owner through a
//! [`RoomDirectory`] and hands it joins, members' requests and admin calls; the owner is a
//! [`RoomShard`](crate::shard::RoomShard), which holds the room's whole state on one thread.
//!
//! The in-process directory ([`LocalDirectory`]) spreads rooms over one shard per core by a
//! hash of (sdkAppId, roomId). A join is one hop: the link's driver sends it to the room's
//! shard and awaits the reply. With several nodes ([`ClusterDirectory`], `cluster.rs`) a room
//! may live on another node: the directory says which, and the link's driver proxies the
//! client's signalling there (`session.rs`).

use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::prelude::*;
use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::{ClientMessage, ReplyData};
use rtcroom_protocol::{ErrorCode, Mode, RtcError, UserId};

use crate::cluster::{Cluster, Intent, Owner, RemoteNode};
use crate::link::LinkTx;
use crate::media::{MediaPlane, PeerId};
use crate::metrics::Metrics;
use crate::room::{JoinInput, Joined, RoomInfo, RoomKey, RoomLimits, SessionId};
use crate::shard::{self, RoomShard};
use crate::webhook::WebhookActor;

/// Shared by the registry and all shards.
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
    /// This node's part in a cluster (rooms that close release their placement).
    pub cluster: Option<Arc<Cluster>>,
}

/// Admin operations on one room.
#[derive(Clone, Debug)]
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

/// Where a room lives.
#[derive(Clone)]
#[non_exhaustive]
pub enum RoomLocation {
    /// On this node, owned by this shard.
    Local(Addr<RoomShard>),
    /// On another node of the cluster.
    Remote(RemoteNode),
}

/// A boxed future, for the directory's object-safe methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Finds the owner of a room: in-process ([`LocalDirectory`]), or across nodes through Redis
/// ([`ClusterDirectory`]).
pub trait RoomDirectory: Send + Sync + 'static {
    /// Where room `key` lives, or would be created by a join (`intent` says whether this
    /// lookup may place it).
    fn locate<'a>(
        &'a self,
        key: &'a RoomKey,
        intent: Intent,
    ) -> BoxFuture<'a, Result<RoomLocation, RtcError>>;

    /// Every shard on this node (for what concerns them all: shutdown, media events).
    fn local_shards(&self) -> Vec<Addr<RoomShard>>;
}

/// Rooms spread over this process's shards by a hash of (sdkAppId, roomId). The shards run on
/// the threads that serve connections (one per HTTP worker, see [`Registry::start_shard_here`]),
/// so a join whose room lives on its connection's own thread costs no thread switch.
pub struct LocalDirectory {
    slots: Vec<std::sync::OnceLock<Addr<RoomShard>>>,
    /// Replacements of shards whose thread went away (a restarted worker).
    replaced: std::sync::Mutex<Vec<Option<Addr<RoomShard>>>>,
    next: std::sync::atomic::AtomicUsize,
    filled: tokio::sync::Notify,
    hasher: std::hash::RandomState,
}

/// How long a join waits for its shard to start (only ever at server start).
const SHARD_START_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl LocalDirectory {
    /// A directory of `n` shards (at least one), started later by
    /// [`LocalDirectory::start_here`].
    pub fn new(n: usize) -> LocalDirectory {
        let n = n.max(1);
        LocalDirectory {
            slots: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
            replaced: std::sync::Mutex::new(vec![None; n]),
            next: std::sync::atomic::AtomicUsize::new(0),
            filled: tokio::sync::Notify::new(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// The slot owning `key`.
    fn slot_of(&self, key: &RoomKey) -> usize {
        // `new` makes at least one slot, so the modulus is never zero.
        (self.hasher.hash_one(key) % self.slots.len() as u64) as usize
    }

    fn shard(&self, slot: usize) -> Option<Addr<RoomShard>> {
        let replaced = self
            .replaced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(slot)
            .cloned()
            .flatten();
        replaced.or_else(|| self.slots.get(slot).and_then(|s| s.get().cloned()))
    }

    /// Start a shard on the current thread (an actix arbiter) in the next free slot; a slot
    /// whose shard has stopped (its thread was restarted) is taken over.
    pub fn start_here(&self, ctx: RoomContext) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.slots.get(i) {
            let _ = slot.set(shard::start_here(ctx, i));
        } else {
            let dead =
                (0..self.slots.len()).find(|&s| self.shard(s).is_some_and(|a| !a.connected()));
            if let Some(s) = dead {
                let addr = shard::start_here(ctx, s);
                if let Some(r) = self
                    .replaced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(s)
                {
                    *r = Some(addr);
                }
            }
        }
        self.filled.notify_waiters();
    }
}

impl RoomDirectory for LocalDirectory {
    fn locate<'a>(
        &'a self,
        key: &'a RoomKey,
        _intent: Intent,
    ) -> BoxFuture<'a, Result<RoomLocation, RtcError>> {
        let slot = self.slot_of(key);
        if let Some(shard) = self.shard(slot) {
            return Box::pin(std::future::ready(Ok(RoomLocation::Local(shard))));
        }
        // Only while the server starts: wait for the slot's shard.
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + SHARD_START_WAIT;
            loop {
                let filled = self.filled.notified();
                if let Some(shard) = self.shard(slot) {
                    return Ok(RoomLocation::Local(shard));
                }
                if tokio::time::timeout_at(deadline, filled).await.is_err() {
                    return Err(RtcError::new(
                        ErrorCode::JoinRoomFailed,
                        "the room's shard has not started",
                    ));
                }
            }
        })
    }

    fn local_shards(&self) -> Vec<Addr<RoomShard>> {
        (0..self.slots.len())
            .filter_map(|s| self.shard(s))
            .collect()
    }
}

/// Rooms placed on the nodes of a cluster through Redis ([`Cluster`]); those placed on this
/// node live in its [`LocalDirectory`].
pub struct ClusterDirectory {
    local: Arc<LocalDirectory>,
    cluster: Arc<Cluster>,
}

impl RoomDirectory for ClusterDirectory {
    fn locate<'a>(
        &'a self,
        key: &'a RoomKey,
        intent: Intent,
    ) -> BoxFuture<'a, Result<RoomLocation, RtcError>> {
        Box::pin(async move {
            match self.cluster.owner(key, intent).await? {
                Owner::Here => self.local.locate(key, intent).await,
                Owner::Node(node) => Ok(RoomLocation::Remote(node)),
            }
        })
    }

    fn local_shards(&self) -> Vec<Addr<RoomShard>> {
        self.local.local_shards()
    }
}

/// A joined member's handle on its room: what its link's driver uses to make requests.
#[derive(Clone)]
pub struct Member {
    session: SessionId,
    key: RoomKey,
    shard: Addr<RoomShard>,
}

fn elsewhere(node: &RemoteNode) -> RtcError {
    RtcError::new(
        ErrorCode::JoinRoomFailed,
        format!("the room lives on node {} ({})", node.id, node.url),
    )
}

fn room_closed() -> RtcError {
    RtcError::invalid_operation(Some(extra::NOT_ENTERED_ROOM), "the room has closed")
}

impl Member {
    /// The member's id.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The member's room.
    pub fn room(&self) -> &RoomKey {
        &self.key
    }

    /// A request from the member (anything but a join). A room that has closed answers
    /// "not in the room".
    pub async fn request(&self, msg: ClientMessage) -> Result<Option<ReplyData>, RtcError> {
        self.shard
            .send(shard::Request {
                key: self.key.clone(),
                session: self.session,
                msg,
            })
            .await
            .unwrap_or_else(|_| Err(room_closed()))
    }

    /// For an edge node's hidden member: the edge reports `user` in its audience since `at`
    /// (`joined`, the edge's clock) or gone from it.
    pub fn edge_audience(&self, user: UserId, joined: bool, at: std::time::SystemTime) {
        self.shard.do_send(shard::EdgeAudience {
            key: self.key.clone(),
            session: self.session,
            user,
            joined,
            at,
        });
    }

    /// The member's link went away without a leave.
    pub fn disconnected(&self) {
        self.shard.do_send(shard::Disconnected {
            key: self.key.clone(),
            session: self.session,
        });
    }
}

/// Finds rooms' owners and hands them work. Shared (`Arc`) by every link driver and the admin
/// API.
pub struct Registry {
    /// The node links of the live rooms of other nodes this node serves as an edge.
    edges: crate::cascade::EdgeLinks,
    /// How rooms are found.
    directory: Arc<dyn RoomDirectory>,
    /// This process's shards (behind `directory`).
    local: Arc<LocalDirectory>,
    /// This node's part in a cluster, if it is one.
    cluster: Option<Arc<Cluster>>,
    ctx: RoomContext,
    closing: AtomicBool,
}

impl Registry {
    /// A registry of `shards` room shards, each started on its own thread by
    /// [`Registry::start_shard_here`] (the server does so on each HTTP worker thread).
    pub fn new(ctx: RoomContext, shards: usize) -> Arc<Registry> {
        let local = Arc::new(LocalDirectory::new(shards));
        let directory: Arc<dyn RoomDirectory> = match &ctx.cluster {
            Some(cluster) => Arc::new(ClusterDirectory {
                local: local.clone(),
                cluster: cluster.clone(),
            }),
            None => local.clone(),
        };
        Arc::new(Registry {
            edges: crate::cascade::EdgeLinks::default(),
            directory,
            local,
            cluster: ctx.cluster.clone(),
            ctx,
            closing: AtomicBool::new(false),
        })
    }

    /// This node's part in a cluster, if it is one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Where a join for room `key` goes: this node, or the node owning the room (placing
    /// the room if it has no live owner). `proxied`: the join was proxied here by another
    /// node, which found this node the owner; it claims the room if the key has gone since.
    /// A single node answers [`Owner::Here`] at once.
    pub async fn route_join(&self, key: &RoomKey, proxied: bool) -> Result<Owner, RtcError> {
        if self.cluster.is_none() {
            return Ok(Owner::Here);
        }
        let intent = if proxied {
            Intent::JoinHere
        } else {
            Intent::Join
        };
        match self.directory.locate(key, intent).await? {
            RoomLocation::Local(_) => Ok(Owner::Here),
            RoomLocation::Remote(node) => Ok(Owner::Node(node)),
        }
    }

    /// Where room `key` lives, without placing it (admin calls): this node (which answers
    /// for a room that does not exist) or another.
    pub async fn route_lookup(&self, key: &RoomKey) -> Result<Owner, RtcError> {
        if self.cluster.is_none() {
            return Ok(Owner::Here);
        }
        match self.directory.locate(key, Intent::Lookup).await? {
            RoomLocation::Local(_) => Ok(Owner::Here),
            RoomLocation::Remote(node) => Ok(Owner::Node(node)),
        }
    }

    /// The UDP addresses the media workers announce (none without a media plane).
    /// The media plane, when the server has one.
    pub fn media(&self) -> Option<&MediaPlane> {
        self.ctx.media.as_ref()
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.ctx.metrics
    }

    /// The node links of this node's edge rooms.
    pub fn edges(&self) -> &crate::cascade::EdgeLinks {
        &self.edges
    }

    /// The shard of this node that holds (or would hold) room `key`.
    pub async fn local_shard(&self, key: &RoomKey) -> Result<Addr<RoomShard>, RtcError> {
        self.shard(key).await
    }

    /// Join the edge room this node holds for `key`, a live room of another node
    /// ([`crate::cascade::join_edge`] opens it first).
    pub async fn join_edge_room(
        &self,
        key: RoomKey,
        input: JoinInput,
        link: LinkTx,
    ) -> Result<(Joined, Member), RtcError> {
        self.refuse_if_closing()?;
        self.join_on_shard(key, input, link, true).await
    }

    /// Joins are refused once the server is shutting down.
    fn refuse_if_closing(&self) -> Result<(), RtcError> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(RtcError::new(
                ErrorCode::JoinRoomFailed,
                "the server is shutting down",
            ));
        }
        Ok(())
    }

    /// Hand a join to room `key`'s shard (`edge`: its edge room) and await it.
    async fn join_on_shard(
        &self,
        key: RoomKey,
        input: JoinInput,
        link: LinkTx,
        edge: bool,
    ) -> Result<(Joined, Member), RtcError> {
        let session = input.session;
        let shard = self.shard(&key).await?;
        let joined = shard
            .send(shard::Join {
                key: key.clone(),
                input,
                link,
                edge,
            })
            .await
            .unwrap_or_else(|_| {
                Err(RtcError::new(
                    ErrorCode::JoinRoomFailed,
                    "the room's shard has stopped",
                ))
            })?;
        Ok((
            joined,
            Member {
                session,
                key,
                shard,
            },
        ))
    }

    pub fn media_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.ctx
            .media
            .as_ref()
            .map(|m| m.addrs().to_vec())
            .unwrap_or_default()
    }

    /// Start one of the registry's shards on the current thread (an actix arbiter).
    pub fn start_shard_here(&self) {
        self.local.start_here(self.ctx.clone());
    }

    /// The local shard for room `key` (rooms routed here, or looked up on a single node).
    async fn shard(&self, key: &RoomKey) -> Result<Addr<RoomShard>, RtcError> {
        match self.local.locate(key, Intent::Lookup).await? {
            RoomLocation::Local(shard) => Ok(shard),
            RoomLocation::Remote(node) => Err(elsewhere(&node)),
        }
    }

    /// Join room `key` as `input` over `link`, creating the room if needed (nothing is
    /// created, and no webhook sent, unless the join passes every check). On success, the
    /// reply for the joiner and its handle for later requests. In a cluster, a room owned by
    /// another node is refused here: the caller routes first ([`Registry::route_join`]) and
    /// proxies or redirects such a join.
    pub async fn join(
        &self,
        key: RoomKey,
        input: JoinInput,
        link: LinkTx,
    ) -> Result<(Joined, Member), RtcError> {
        self.refuse_if_closing()?;
        if let Owner::Node(node) = self.route_join(&key, false).await? {
            return Err(elsewhere(&node));
        }
        let session = input.session;
        // A room owned by this thread's shard is joined right here, to completion.
        let slot = self.local.slot_of(&key);
        let (input, link) = match shard::join_here(slot, key.clone(), input, link) {
            Ok((joined, shard)) => {
                return joined.map(|j| {
                    (
                        j,
                        Member {
                            session,
                            key,
                            shard,
                        },
                    )
                });
            }
            Err((_, input, link)) => (input, link),
        };
        self.join_on_shard(key, input, link, false).await
    }

    /// The mode of room `key` if it exists (links without a mode of their own, WHIP and
    /// WHEP, take the room's).
    pub async fn room_mode(&self, key: &RoomKey) -> Option<Mode> {
        let shard = self.shard(key).await.ok()?;
        shard.send(shard::ModeOf(key.clone())).await.ok().flatten()
    }

    /// An admin operation on a room.
    pub async fn admin(&self, key: RoomKey, op: AdminOp) -> Result<AdminReply, RtcError> {
        let shard = self.shard(&key).await?;
        shard
            .send(shard::Admin { key, op })
            .await
            .unwrap_or_else(|_| {
                Err(RtcError::with_extra(
                    ErrorCode::InvalidParameter,
                    extra::ROOM_NOT_EXIST,
                    "the room closed",
                ))
            })
    }

    /// A media peer closed on its own (ICE lost, connect timeout, worker fault): the room
    /// holding it forgets it (and a WHIP/WHEP member living by it leaves).
    pub fn peer_closed(&self, peer: PeerId) {
        for shard in self.directory.local_shards() {
            shard.do_send(shard::PeerClosed(peer));
        }
    }

    /// A simulcast event of media peer `peer`, for the room that holds it.
    pub fn peer_layer_event(&self, peer: PeerId, event: crate::room::LayerEvent) {
        for shard in self.directory.local_shards() {
            shard.do_send(shard::PeerLayerEvent(peer, event));
        }
    }

    /// Close every link and stop accepting joins.
    pub fn shutdown(&self) {
        self.closing.store(true, Ordering::Relaxed);
        for shard in self.directory.local_shards() {
            shard.do_send(shard::CloseAll);
        }
    }

    /// Make room `key`'s next step panic; `false` when there is no such room (tests of the
    /// supervision).
    #[doc(hidden)]
    pub async fn inject_room_fault(&self, key: &RoomKey) -> bool {
        match self.shard(key).await {
            Ok(shard) => shard
                .send(shard::InjectFault(key.clone()))
                .await
                .unwrap_or(false),
            Err(_) => false,
        }
    }
}
