//! The front door to rooms. [`Registry`] (one per server) finds a room's owner through a
//! [`RoomDirectory`] and hands it joins, members' requests and admin calls; the owner is a
//! [`RoomShard`](crate::shard::RoomShard), which holds the room's whole state on one thread.
//!
//! The in-process directory ([`LocalDirectory`]) spreads rooms over one shard per core by a
//! hash of (sdkAppId, roomId). A join is one hop: the link's driver sends it to the room's
//! shard and awaits the reply. The multi-node directory (Redis) goes behind the same trait.

use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::prelude::*;
use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::{ClientMessage, ReplyData};
use rtcroom_protocol::{ErrorCode, Mode, RtcError, UserId};

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
}

/// A boxed future, for the directory's object-safe methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Finds the owner of a room. In-process today ([`LocalDirectory`]); the multi-node directory
/// places rooms on nodes through Redis behind the same trait.
pub trait RoomDirectory: Send + Sync + 'static {
    /// Where room `key` lives, or would be created by a join.
    fn locate<'a>(&'a self, key: &'a RoomKey) -> BoxFuture<'a, Result<RoomLocation, RtcError>>;

    /// Every shard on this node (for what concerns them all: shutdown, media events).
    fn local_shards(&self) -> &[Addr<RoomShard>];
}

/// Rooms spread over this process's shards by a hash of (sdkAppId, roomId).
pub struct LocalDirectory {
    shards: Vec<Addr<RoomShard>>,
    hasher: std::hash::RandomState,
}

impl LocalDirectory {
    /// A directory over `shards` (at least one).
    pub fn new(shards: Vec<Addr<RoomShard>>) -> LocalDirectory {
        assert!(!shards.is_empty(), "a directory needs at least one shard");
        LocalDirectory {
            shards,
            hasher: std::hash::RandomState::new(),
        }
    }

    /// The shard owning `key`.
    pub fn shard_of(&self, key: &RoomKey) -> &Addr<RoomShard> {
        // `new` refuses an empty list, so the modulus is never zero.
        &self.shards[(self.hasher.hash_one(key) % self.shards.len() as u64) as usize]
    }
}

impl RoomDirectory for LocalDirectory {
    fn locate<'a>(&'a self, key: &'a RoomKey) -> BoxFuture<'a, Result<RoomLocation, RtcError>> {
        let shard = self.shard_of(key).clone();
        Box::pin(std::future::ready(Ok(RoomLocation::Local(shard))))
    }

    fn local_shards(&self) -> &[Addr<RoomShard>] {
        &self.shards
    }
}

/// A joined member's handle on its room: what its link's driver uses to make requests.
#[derive(Clone)]
pub struct Member {
    session: SessionId,
    key: RoomKey,
    shard: Addr<RoomShard>,
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
    directory: Box<dyn RoomDirectory>,
    closing: AtomicBool,
}

impl Registry {
    /// A registry with one shard on each of `arbiters` (with none, one shard on the current
    /// arbiter), found through a [`LocalDirectory`].
    pub fn new(ctx: RoomContext, arbiters: &[ArbiterHandle]) -> Arc<Registry> {
        let shards: Vec<Addr<RoomShard>> = if arbiters.is_empty() {
            vec![RoomShard::new(ctx).start()]
        } else {
            arbiters
                .iter()
                .map(|a| {
                    let ctx = ctx.clone();
                    RoomShard::start_in_arbiter(a, move |_| RoomShard::new(ctx))
                })
                .collect()
        };
        Self::with_directory(Box::new(LocalDirectory::new(shards)))
    }

    /// A registry over any directory.
    pub fn with_directory(directory: Box<dyn RoomDirectory>) -> Arc<Registry> {
        Arc::new(Registry {
            directory,
            closing: AtomicBool::new(false),
        })
    }

    async fn shard(&self, key: &RoomKey) -> Result<Addr<RoomShard>, RtcError> {
        match self.directory.locate(key).await? {
            RoomLocation::Local(shard) => Ok(shard),
        }
    }

    /// Join room `key` as `input` over `link`, creating the room if needed (nothing is
    /// created, and no webhook sent, unless the join passes every check). On success, the
    /// reply for the joiner and its handle for later requests.
    pub async fn join(
        &self,
        key: RoomKey,
        input: JoinInput,
        link: LinkTx,
    ) -> Result<(Joined, Member), RtcError> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(RtcError::new(
                ErrorCode::JoinRoomFailed,
                "the server is shutting down",
            ));
        }
        let shard = self.shard(&key).await?;
        let session = input.session;
        let joined = shard
            .send(shard::Join {
                key: key.clone(),
                input,
                link,
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
