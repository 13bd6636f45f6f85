//! Live rooms across nodes (cascade). A live room lives on one node, its **origin**; once it
//! holds `cluster.edge_after_audience` audience members, an audience member joining through
//! another node is served by that node, an **edge**, instead of being proxied to the origin.
//!
//! An edge holds one **node link** per cascaded room: a WebSocket to the origin's
//! `/_node/cascade`, authenticated with the cluster secret (the same HMAC node credential as
//! proxied signalling). Over it:
//! - the origin joins the room on the edge's behalf as one hidden audience member
//!   ([`LinkKind::Edge`]: no webhooks, not listed by the admin API, no heartbeat) and sends
//!   what an audience member sees: a snapshot of the anchors and their streams, then every
//!   event (anchors joining and leaving, streams added, updated and removed, mutes, custom
//!   messages, the room's dismissal) as JSON text frames ([`Down`]);
//! - the origin sends each packet of each anchor stream **once per edge** as a binary frame
//!   ([`crate::media::encode_pipe_frame`]: the packet as received, every simulcast layer), from
//!   a pipe in its media plane that counts as one subscriber of the stream;
//! - the edge sends keyframe requests back ([`Up::Keyframe`]), and reports its audience coming
//!   and going ([`Up::Audience`]): the origin's room lists them in `DescribeRoomInfo`, and
//!   orders one removed ([`Down::Kick`]) on the admin's `RemoveUser` or when the same userId
//!   joins the room anywhere else (the origin, or another edge).
//!
//! The edge mirrors the room in an **edge room** on its own shard: the origin's anchors are
//! members there too ([`LinkKind::Edge`] mirrors), whose streams are published from pipes
//! into the edge's media plane; the edge's audience joins, subscribes and is evicted by the
//! ordinary room rules and media plane. So the origin's cost grows by one downlink per edge,
//! not per viewer. The edge room ends when its last audience member leaves (the link closes,
//! the origin's hidden member leaves); when the link fails (the origin went away), the edge's
//! audience is closed with 1001 and reconnects, finding the room wherever it is placed next.
//!
//! An audience member of an edge switching to anchor moves to the origin: its session joins
//! the room there as anchor and is relayed from then on (`session.rs`), and the edge mirrors
//! it as any other anchor.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures_util::{SinkExt, StreamExt};
use rtcroom_protocol::signal::{BanReason, ClientMessage, ServerEvent, StreamInfo, StreamType};
use rtcroom_protocol::{ErrorCode, Mode, Role, RoomId, RtcError, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cluster::{NODE_AUTH_HEADER, Owner, RemoteNode};
use crate::link::{LinkKind, LinkRx, Outgoing};
use crate::media::{
    MediaPlane, PeerId, PipeFormat, PipeIn, PipePacket, SlotKey, decode_pipe_frame,
    encode_pipe_frame,
};
use crate::metrics::Metrics;
use crate::registry::{Member, Registry};
use crate::room::{JoinInput, Joined, RoomKey};
use crate::session::{SessionShared, Upstream as Link, connect_upstream};
use crate::shard::{EdgeUpdate, Mirror};

/// The origin's path for node links.
pub const CASCADE_PATH: &str = "/_node/cascade";
/// How long an edge waits for its link to the origin (connect and snapshot).
pub const EDGE_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame on a node link (a snapshot of a room's anchors and streams).
const LINK_MAX_FRAME: usize = 1 << 20;
/// Packets queued per pipe on the origin before they are dropped (a slow edge).
const PIPE_QUEUE: usize = 2048;
/// Keyframe requests queued on the edge.
const KEYFRAME_QUEUE: usize = 64;

/// A stream as an edge learns it: with its pipe's number on the link and its media format
/// (none: published without media, signalling only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipedStream {
    /// The stream.
    pub info: StreamInfo,
    /// Its number on the link (binary frames carry it), when it has media.
    pub tag: Option<u32>,
    /// Its media format, when it has media.
    pub format: Option<PipeFormat>,
}

/// Origin → edge (text frames).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "camelCase")]
pub enum Down {
    /// First: the room as the edge's hidden member joined it.
    Snapshot {
        /// The anchors.
        anchors: Vec<UserId>,
        /// Their streams.
        streams: Vec<PipedStream>,
    },
    /// A stream was published or changed (its pipe is new).
    Stream(PipedStream),
    /// Any other event an audience member gets.
    Event {
        /// The event.
        event: ServerEvent,
    },
    /// Remove this member of the edge's audience (`client-banned` with this reason, then
    /// close): the same userId joined elsewhere in the room, or the admin removed it.
    Kick(crate::room::EdgeKick),
    /// An anchor muted or unmuted a stream.
    Mute(crate::room::EdgeMute),
    /// The room is full counting every node's members (the edge refuses new audience), or no
    /// longer.
    Full {
        /// Full.
        full: bool,
    },
}

/// Edge → origin (text frames).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "camelCase")]
pub enum Up {
    /// First: the room the edge mirrors.
    Open {
        /// The application.
        sdk_app_id: u32,
        /// The room.
        room_id: RoomId,
    },
    /// The edge's viewers want a keyframe of pipe `tag` (of one layer, or all).
    Keyframe {
        /// The pipe.
        tag: u32,
        /// The layer.
        layer: Option<u8>,
    },
    /// A member joined the edge's audience (`joined`) or left it.
    #[serde(rename_all = "camelCase")]
    Audience {
        /// Who.
        user_id: UserId,
        /// Joined (else left).
        joined: bool,
        /// When, in milliseconds since the Unix epoch on the edge's clock (of two members
        /// with one userId, the older is kicked).
        at_ms: u64,
    },
}

fn close(code: CloseCode, reason: impl Into<String>) -> Option<CloseReason> {
    Some(CloseReason {
        code,
        description: Some(reason.into()),
    })
}

// ---- the origin's side ------------------------------------------------------------------------

/// `GET /_node/cascade`: a node link from an edge (the node credential is required).
pub async fn origin_route(
    req: HttpRequest,
    body: web::Payload,
    shared: web::Data<Arc<SessionShared>>,
) -> Result<HttpResponse, actix_web::Error> {
    let shared = shared.get_ref().clone();
    let Some(cluster) = shared.registry.cluster() else {
        return Ok(HttpResponse::NotFound().body("not a cluster node"));
    };
    let node = req
        .headers()
        .get(NODE_AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| cluster.check_credential(c));
    let Some(node) = node else {
        return Ok(HttpResponse::Forbidden().body("a node credential is required"));
    };
    let (response, ws, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(LINK_MAX_FRAME)
        .aggregate_continuations()
        .max_continuation_size(LINK_MAX_FRAME);
    actix_web::rt::spawn(serve_edge(shared, node, ws, stream));
    Ok(response)
}

/// The pipes an origin keeps for one edge: a stream's packets go out tagged.
struct PipesOut {
    media: MediaPlane,
    key: RoomKey,
    next_tag: u32,
    /// (user, stream) → (tag, pipe peer).
    open: HashMap<(UserId, StreamType), (u32, PeerId)>,
    by_tag: HashMap<u32, SlotKey>,
    /// Every open pipe's packets, tagged (a closed pipe's stream ends and leaves the set).
    incoming: futures_util::stream::SelectAll<
        futures_util::stream::LocalBoxStream<'static, (u32, PipePacket)>,
    >,
}

impl PipesOut {
    fn slot(&self, user: UserId, stream_type: StreamType) -> SlotKey {
        SlotKey {
            room: self.key.clone(),
            user,
            stream_type,
        }
    }

    /// Start piping `info`'s stream (again, if it was); what the edge is told of it.
    async fn open(&mut self, info: StreamInfo) -> PipedStream {
        self.close(&info.user_id, info.stream_type);
        let slot = self.slot(info.user_id.clone(), info.stream_type);
        let Some(format) = self.media.pipe_format(&slot) else {
            return PipedStream {
                info,
                tag: None,
                format: None,
            };
        };
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let (tx, rx) = mpsc::channel::<PipePacket>(PIPE_QUEUE);
        let peer = match self.media.pipe_out(slot.clone(), tx).await {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(room = %self.key, error = %e, "no pipe for an edge");
                return PipedStream {
                    info,
                    tag: None,
                    format: None,
                };
            }
        };
        self.incoming.push(
            futures_util::stream::unfold(rx, move |mut rx| async move {
                rx.recv().await.map(|p| ((tag, p), rx))
            })
            .boxed_local(),
        );
        self.open
            .insert((info.user_id.clone(), info.stream_type), (tag, peer));
        self.by_tag.insert(tag, slot);
        PipedStream {
            info,
            tag: Some(tag),
            format: Some(format),
        }
    }

    fn close(&mut self, user: &UserId, stream_type: StreamType) {
        if let Some((tag, peer)) = self.open.remove(&(user.clone(), stream_type)) {
            self.by_tag.remove(&tag);
            self.media.close_peer(peer);
        }
    }

    fn keyframe(&self, tag: u32, layer: Option<u8>) {
        if let Some(slot) = self.by_tag.get(&tag) {
            self.media.request_keyframe_layer(slot, layer);
        }
    }

    fn close_all(&mut self) {
        for (_, (_, peer)) in self.open.drain() {
            self.media.close_peer(peer);
        }
        self.by_tag.clear();
    }
}

/// What ended an origin's side of a link.
enum OriginEnd {
    /// The edge closed or failed: its hidden member leaves.
    EdgeGone,
    /// The room removed the hidden member (dismissed, shutting down): close the link so.
    Removed(u16, &'static str),
}

async fn serve_edge(
    shared: Arc<SessionShared>,
    node: String,
    mut ws: actix_ws::Session,
    mut stream: impl futures_util::Stream<Item = Result<AggregatedMessage, actix_ws::ProtocolError>>
    + Unpin,
) {
    // The first frame names the room.
    let open = tokio::time::timeout(EDGE_OPEN_TIMEOUT, stream.next()).await;
    let key = match open {
        Ok(Some(Ok(AggregatedMessage::Text(t)))) => match serde_json::from_str::<Up>(&t) {
            Ok(Up::Open {
                sdk_app_id,
                room_id,
            }) => RoomKey {
                sdk_app_id,
                room_id,
            },
            _ => {
                let _ = ws.close(close(CloseCode::Protocol, "open first")).await;
                return;
            }
        },
        _ => {
            let _ = ws.close(close(CloseCode::Protocol, "open first")).await;
            return;
        }
    };
    let refuse = |e: RtcError| close(CloseCode::Again, e.message);
    let Some(media) = shared.registry.media().cloned() else {
        let _ = ws.close(close(CloseCode::Error, "no media plane")).await;
        return;
    };
    match shared.registry.route_join(&key, true).await {
        Ok(Owner::Here) => {}
        Ok(Owner::Node(n)) => {
            let _ = ws
                .close(close(
                    CloseCode::Again,
                    format!("the room lives on node {}", n.id),
                ))
                .await;
            return;
        }
        Err(e) => {
            let _ = ws.close(refuse(e)).await;
            return;
        }
    }
    let (link, mut outbox) = crate::link::link();
    let input = JoinInput {
        session: crate::auth::next_session_id(),
        user_id: UserId::reserved(&format!("edge.{node}")),
        mode: Mode::Live,
        role: Some(Role::Audience),
        privileges: None,
        kind: LinkKind::Edge,
    };
    let (joined, member) = match shared.registry.join(key.clone(), input, link).await {
        Ok(v) => v,
        Err(e) => {
            let _ = ws.close(refuse(e)).await;
            return;
        }
    };
    let metrics = shared.metrics.clone();
    metrics.cascade_edges.fetch_add(1, Ordering::Relaxed);
    tracing::info!(room = %key, edge = node, "an edge node mirrors the room");
    let mut pipes = PipesOut {
        media,
        key: key.clone(),
        next_tag: 1,
        open: HashMap::new(),
        by_tag: HashMap::new(),
        incoming: futures_util::stream::SelectAll::new(),
    };
    let end = origin_loop(
        &mut ws,
        &mut stream,
        &mut outbox,
        &mut pipes,
        &member,
        joined,
    )
    .await;
    pipes.close_all();
    metrics.cascade_edges.fetch_sub(1, Ordering::Relaxed);
    match end {
        OriginEnd::EdgeGone => {
            let _ = member.request(ClientMessage::Leave).await;
            let _ = ws.close(None).await;
        }
        OriginEnd::Removed(code, reason) => {
            let _ = ws.close(close(CloseCode::from(code), reason)).await;
        }
    }
}

async fn send_down(ws: &mut actix_ws::Session, msg: &Down) -> Result<(), ()> {
    let text = serde_json::to_string(msg).map_err(|_| ())?;
    ws.text(text).await.map_err(|_| ())
}

/// Turn the hidden member's events into the link's frames.
async fn relay_events(
    ws: &mut actix_ws::Session,
    pipes: &mut PipesOut,
    events: Vec<bytestring::ByteString>,
) -> Result<(), ()> {
    for e in events {
        let Ok(event) = serde_json::from_str::<ServerEvent>(&e) else {
            let down = match crate::room::EdgeOrder::decode(&e) {
                Some(crate::room::EdgeOrder::Kick(order)) => Down::Kick(order),
                Some(crate::room::EdgeOrder::Mute(order)) => Down::Mute(order),
                Some(crate::room::EdgeOrder::Full(full)) => Down::Full { full },
                None => continue,
            };
            send_down(ws, &down).await?;
            continue;
        };
        let msg = match event {
            ServerEvent::StreamAdded(info) | ServerEvent::StreamUpdated(info) => {
                Down::Stream(pipes.open(info).await)
            }
            ServerEvent::StreamRemoved {
                user_id,
                stream_type,
            } => {
                pipes.close(&user_id, stream_type);
                Down::Event {
                    event: ServerEvent::StreamRemoved {
                        user_id,
                        stream_type,
                    },
                }
            }
            event => Down::Event { event },
        };
        send_down(ws, &msg).await?;
    }
    Ok(())
}

async fn origin_loop(
    ws: &mut actix_ws::Session,
    stream: &mut (
             impl futures_util::Stream<Item = Result<AggregatedMessage, actix_ws::ProtocolError>> + Unpin
         ),
    outbox: &mut LinkRx,
    pipes: &mut PipesOut,
    member: &Member,
    joined: Joined,
) -> OriginEnd {
    let result = joined.decoded();
    let mut streams = Vec::with_capacity(result.streams.len());
    for info in result.streams {
        streams.push(pipes.open(info).await);
    }
    let snapshot = Down::Snapshot {
        anchors: result.members.into_iter().map(|m| m.user_id).collect(),
        streams,
    };
    if send_down(ws, &snapshot).await.is_err() {
        return OriginEnd::EdgeGone;
    }
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(AggregatedMessage::Text(t))) => match serde_json::from_str::<Up>(&t) {
                    Ok(Up::Keyframe { tag, layer }) => pipes.keyframe(tag, layer),
                    Ok(Up::Audience { user_id, joined, at_ms }) => {
                        let at = std::time::UNIX_EPOCH + Duration::from_millis(at_ms);
                        member.edge_audience(user_id, joined, at);
                    }
                    Ok(Up::Open { .. }) | Err(_) => {}
                },
                Some(Ok(AggregatedMessage::Ping(p))) => {
                    if ws.pong(&p).await.is_err() {
                        return OriginEnd::EdgeGone;
                    }
                }
                Some(Ok(AggregatedMessage::Close(_))) | Some(Err(_)) | None => {
                    return OriginEnd::EdgeGone;
                }
                Some(Ok(_)) => {}
            },
            out = outbox.recv() => match out {
                Some(Outgoing::Events(events)) => {
                    if relay_events(ws, pipes, events).await.is_err() {
                        return OriginEnd::EdgeGone;
                    }
                }
                Some(Outgoing::Close { last, code, reason }) => {
                    let _ = relay_events(ws, pipes, last).await;
                    return OriginEnd::Removed(code, reason);
                }
                None => return OriginEnd::Removed(1000, "left"),
            },
            Some((tag, packet)) = pipes.incoming.next() => {
                if ws.binary(encode_pipe_frame(tag, &packet)).await.is_err() {
                    return OriginEnd::EdgeGone;
                }
            }
        }
    }
}

// ---- the edge's side --------------------------------------------------------------------------

/// Whether an edge room's link is up: `None` while it opens, then `Ok` or why not.
type Ready = watch::Receiver<Option<Result<(), RtcError>>>;

/// The node links of this node's edge rooms, one per room: (link number, its readiness).
#[derive(Default)]
pub struct EdgeLinks {
    links: std::sync::Mutex<HashMap<RoomKey, (u64, Ready)>>,
    next: AtomicU64,
}

impl EdgeLinks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomKey, (u64, Ready)>> {
        // A poisoned lock only means another thread panicked holding it; the map is whole.
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link for `key`, started (on this thread) if there is none.
    fn get_or_start(
        &self,
        registry: &Arc<Registry>,
        key: &RoomKey,
        origin: &RemoteNode,
    ) -> (u64, Ready) {
        let mut links = self.lock();
        if let Some((gen_, rx)) = links.get(key) {
            return (*gen_, rx.clone());
        }
        let gen_ = self.next.fetch_add(1, Ordering::Relaxed);
        let (ready, rx) = watch::channel(None);
        links.insert(key.clone(), (gen_, rx.clone()));
        drop(links);
        let (registry, key, origin) = (registry.clone(), key.clone(), origin.clone());
        actix_web::rt::spawn(async move {
            run_edge_link(&registry, &key, &origin, &ready).await;
            registry.edges().forget(&key, gen_);
        });
        (gen_, rx)
    }

    /// Forget link `gen_` of `key` (it ended).
    fn forget(&self, key: &RoomKey, gen_: u64) {
        let mut links = self.lock();
        if links.get(key).is_some_and(|(g, _)| *g == gen_) {
            links.remove(key);
        }
    }

    /// Rooms this node serves as an edge.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// None.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Join `key`, a live room of node `origin`, as audience served on this node (its edge room,
/// opened with its link if needed). Returns the member and its outbox.
pub async fn join_edge(
    registry: &Arc<Registry>,
    key: RoomKey,
    origin: RemoteNode,
    input: JoinInput,
) -> Result<(Joined, Member, LinkRx), RtcError> {
    // A link that is just ending (its room's last member left) is waited out once.
    let mut tries = 2;
    loop {
        tries -= 1;
        let (gen_, mut ready) = registry.edges().get_or_start(registry, &key, &origin);
        let opened = tokio::time::timeout(EDGE_OPEN_TIMEOUT, ready.wait_for(Option::is_some))
            .await
            .map_err(|_| {
                RtcError::new(
                    ErrorCode::JoinRoomFailed,
                    format!("the room's node {} did not answer in time", origin.id),
                )
            })?
            .map_err(|_| {
                RtcError::new(
                    ErrorCode::JoinRoomFailed,
                    "the link to the room's node failed",
                )
            })?
            .clone();
        if let Some(Err(e)) = opened {
            return Err(e);
        }
        let (link, outbox) = crate::link::link();
        match registry
            .join_edge_room(key.clone(), input.clone(), link)
            .await
        {
            Ok((joined, member)) => return Ok((joined, member, outbox)),
            // Only a room that closed under the join: any other refusal (a PrivateMapKey, a
            // full room) is the member's, and the room's link is fine.
            Err(e) if tries > 0 && e.message == crate::shard::EDGE_NOT_OPEN => {
                tracing::debug!(room = %key, error = %e, "edge room closing; opening again");
                registry.edges().forget(&key, gen_);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The edge's pipes: tag → the pipe publishing that stream here.
struct PipesIn {
    media: MediaPlane,
    key: RoomKey,
    by_tag: HashMap<u32, (PipeIn, SlotKey)>,
    keyframes: mpsc::Sender<(u32, Option<u8>)>,
}

impl PipesIn {
    /// Publish a piped stream here; its pipe peer (none without media).
    async fn open(&mut self, s: &PipedStream) -> Option<PeerId> {
        let slot = SlotKey {
            room: self.key.clone(),
            user: s.info.user_id.clone(),
            stream_type: s.info.stream_type,
        };
        // The stream's previous pipe (a re-publish) is replaced by the new one.
        self.by_tag.retain(|_, (_, sk)| *sk != slot);
        let (Some(tag), Some(format)) = (s.tag, s.format.clone()) else {
            return None;
        };
        let (tx, mut rx) = mpsc::channel::<Option<u8>>(KEYFRAME_QUEUE);
        let pipe = match self.media.pipe_in(slot.clone(), format, tx).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(room = %self.key, error = %e, "no pipe from the room's node");
                return None;
            }
        };
        let out = self.keyframes.clone();
        actix_web::rt::spawn(async move {
            while let Some(layer) = rx.recv().await {
                if out.send((tag, layer)).await.is_err() {
                    break;
                }
            }
        });
        let peer = pipe.peer();
        self.by_tag.insert(tag, (pipe, slot));
        Some(peer)
    }

    fn packet(&self, frame: &[u8], metrics: &Metrics) {
        match decode_pipe_frame(frame) {
            Ok((tag, packet)) => {
                if let Some((pipe, _)) = self.by_tag.get(&tag) {
                    pipe.send(packet);
                }
            }
            Err(e) => {
                Metrics::inc(&metrics.cascade_bad_frames);
                tracing::debug!(room = %self.key, error = %e, "bad frame from the room's node");
            }
        }
    }

    fn gone(&mut self, user: &UserId, stream_type: StreamType) {
        self.by_tag
            .retain(|_, (_, sk)| !(sk.user == *user && sk.stream_type == stream_type));
    }

    fn close_all(&mut self) {
        for (_, (pipe, slot)) in self.by_tag.drain() {
            self.media.unpublish(&slot, pipe.peer());
        }
    }
}

/// Run one edge room's link until the room ends or the link fails; `ready` says when the room
/// is open (or why it could not be).
async fn run_edge_link(
    registry: &Arc<Registry>,
    key: &RoomKey,
    origin: &RemoteNode,
    ready: &watch::Sender<Option<Result<(), RtcError>>>,
) {
    let failed = |e: String| {
        RtcError::new(
            ErrorCode::JoinRoomFailed,
            format!("the room's node {} is unreachable: {e}", origin.id),
        )
    };
    let (Some(cluster), Some(media)) = (registry.cluster().cloned(), registry.media().cloned())
    else {
        let _ = ready.send(Some(Err(failed(
            "this node is not a cluster node with media".into(),
        ))));
        return;
    };
    let url = format!("{}{CASCADE_PATH}", origin.url);
    let mut link = match connect_upstream(&url, cluster.credential()).await {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Some(Err(failed(e))));
            return;
        }
    };
    let open = Up::Open {
        sdk_app_id: key.sdk_app_id,
        room_id: key.room_id.clone(),
    };
    if let Err(e) = send_up(&mut link, &open).await {
        let _ = ready.send(Some(Err(failed(e.to_string()))));
        return;
    }
    let snapshot = match tokio::time::timeout(EDGE_OPEN_TIMEOUT, next_down(&mut link)).await {
        Ok(Ok(Some(Down::Snapshot { anchors, streams }))) => (anchors, streams),
        Ok(Ok(_)) => {
            let _ = ready.send(Some(Err(failed("no snapshot".into()))));
            return;
        }
        Ok(Err(why)) => {
            let _ = ready.send(Some(Err(RtcError::new(ErrorCode::JoinRoomFailed, why))));
            return;
        }
        Err(_) => {
            let _ = ready.send(Some(Err(failed("no snapshot in time".into()))));
            return;
        }
    };
    let shard = match registry.local_shard(key).await {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Some(Err(e)));
            return;
        }
    };
    let update = |update: Mirror| EdgeUpdate {
        key: key.clone(),
        update,
    };
    let (stop, mut stopped) = oneshot::channel();
    let (audience, mut audience_rx) = mpsc::unbounded_channel();
    let opened = shard
        .send(update(Mirror::Open { stop, audience }))
        .await
        .unwrap_or_else(|_| Err(failed("the shard stopped".into())));
    if let Err(e) = opened {
        let _ = ready.send(Some(Err(e)));
        return;
    }
    let (kf_tx, mut keyframes) = mpsc::channel(KEYFRAME_QUEUE);
    let mut pipes = PipesIn {
        media,
        key: key.clone(),
        by_tag: HashMap::new(),
        keyframes: kf_tx,
    };
    let (anchors, streams) = snapshot;
    for a in anchors {
        let _ = shard.send(update(Mirror::AnchorIn(a))).await;
    }
    for s in streams {
        let peer = pipes.open(&s).await;
        let _ = shard
            .send(update(Mirror::Stream { info: s.info, peer }))
            .await;
    }
    let _ = ready.send(Some(Ok(())));
    let metrics = registry.metrics().clone();
    metrics.cascade_links.fetch_add(1, Ordering::Relaxed);
    // Until the room ends here (`stopped`) or the link fails.
    let dismissed = loop {
        tokio::select! {
            frame = link.next() => {
                use awc::ws::Frame;
                match frame {
                    Some(Ok(Frame::Binary(b))) => pipes.packet(&b, &metrics),
                    Some(Ok(Frame::Text(t))) => {
                        let Ok(msg) = serde_json::from_slice::<Down>(&t) else {
                            Metrics::inc(&metrics.cascade_bad_frames);
                            continue;
                        };
                        if let Some(dismissed) = apply(&shard, key, &mut pipes, msg).await {
                            break Some(dismissed);
                        }
                    }
                    Some(Ok(Frame::Ping(p))) => {
                        let _ = link.send(awc::ws::Message::Pong(p)).await;
                    }
                    Some(Ok(Frame::Close(reason))) => {
                        break Some(reason.is_some_and(|r| {
                            r.description.as_deref() == Some("room dismissed")
                        }));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break Some(false),
                }
            }
            Some((tag, layer)) = keyframes.recv() => {
                if send_up(&mut link, &Up::Keyframe { tag, layer }).await.is_err() {
                    break Some(false);
                }
            }
            Some((user_id, joined, at)) = audience_rx.recv() => {
                let at_ms = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let up = Up::Audience { user_id, joined, at_ms };
                if send_up(&mut link, &up).await.is_err() {
                    break Some(false);
                }
            }
            _ = &mut stopped => break None,
        }
    };
    metrics.cascade_links.fetch_sub(1, Ordering::Relaxed);
    pipes.close_all();
    match dismissed {
        // The room's node ended the link: the edge room ends too.
        Some(dismissed) => {
            let _ = shard.send(update(Mirror::Closed { dismissed })).await;
        }
        // The edge room ended (its last member left): the origin's hidden member leaves.
        None => {
            let _ = link.send(awc::ws::Message::Close(None)).await;
        }
    }
    let _ = link.close().await;
}

async fn send_up(link: &mut Link, msg: &Up) -> Result<(), awc::error::WsProtocolError> {
    // Ids, numbers and flags: serialising cannot fail.
    let text = serde_json::to_string(msg).unwrap_or_default();
    link.send(awc::ws::Message::Text(text.into())).await
}

/// The next message from the origin (`Ok(None)`: a frame that is not one; `Err`: the link
/// closed, with why).
async fn next_down(link: &mut Link) -> Result<Option<Down>, String> {
    use awc::ws::Frame;
    match link.next().await {
        Some(Ok(Frame::Text(t))) => Ok(serde_json::from_slice(&t).ok()),
        Some(Ok(Frame::Close(reason))) => Err(reason
            .and_then(|r| r.description)
            .unwrap_or_else(|| "the room's node closed the link".into())),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the room's node closed the link".into()),
    }
}

/// Apply one message from the origin to the edge room; `Some(dismissed)` when it ends the link.
async fn apply(
    shard: &actix::Addr<crate::shard::RoomShard>,
    key: &RoomKey,
    pipes: &mut PipesIn,
    msg: Down,
) -> Option<bool> {
    let update = |update: Mirror| EdgeUpdate {
        key: key.clone(),
        update,
    };
    let mirror = match msg {
        Down::Snapshot { .. } => return None,
        Down::Stream(s) => {
            let peer = pipes.open(&s).await;
            Mirror::Stream { info: s.info, peer }
        }
        Down::Kick(order) => Mirror::Kick(order),
        Down::Full { full } => Mirror::OriginFull(full),
        Down::Mute(m) => Mirror::Mute {
            user: m.user_id,
            stream_type: m.stream_type,
            kind: m.kind,
            muted: m.muted,
        },
        Down::Event { event } => match event {
            ServerEvent::PeerJoin { user_id } => Mirror::AnchorIn(user_id),
            ServerEvent::PeerLeave { user_id, reason } => Mirror::AnchorOut(user_id, reason),
            ServerEvent::StreamRemoved {
                user_id,
                stream_type,
            } => {
                pipes.gone(&user_id, stream_type);
                Mirror::StreamGone(user_id, stream_type)
            }
            ServerEvent::ClientBanned { reason, .. } => {
                return Some(reason == BanReason::RoomDisband);
            }
            e @ ServerEvent::CustomMessage { .. } => Mirror::Relay(e),
            _ => return None,
        },
    };
    if let Ok(Err(e)) = shard.send(update(mirror)).await {
        tracing::debug!(room = %key, error = %e, "edge room update refused");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down_kick(d: Down) -> crate::room::EdgeKick {
        match d {
            Down::Kick(k) => k,
            other => panic!("not a kick: {other:?}"),
        }
    }
    use rtcroom_protocol::signal::LeaveReason;

    #[test]
    fn link_messages_round_trip_as_json() {
        let up = Up::Keyframe {
            tag: 7,
            layer: Some(1),
        };
        let text = serde_json::to_string(&up).unwrap();
        assert_eq!(text, r#"{"t":"keyframe","tag":7,"layer":1}"#);
        assert_eq!(serde_json::from_str::<Up>(&text).unwrap(), up);
        let open = Up::Open {
            sdk_app_id: 1400000001,
            room_id: RoomId::string("live room").unwrap(),
        };
        let text = serde_json::to_string(&open).unwrap();
        assert_eq!(serde_json::from_str::<Up>(&text).unwrap(), open);
        let down = Down::Event {
            event: ServerEvent::PeerLeave {
                user_id: UserId::new("anchor").unwrap(),
                reason: LeaveReason::RoleChange,
            },
        };
        let text = serde_json::to_string(&down).unwrap();
        assert_eq!(serde_json::from_str::<Down>(&text).unwrap(), down);
        assert!(serde_json::from_str::<Down>(r#"{"t":"nonsense"}"#).is_err());
        let up = Up::Audience {
            user_id: UserId::new("v1").unwrap(),
            joined: true,
            at_ms: 1_764_000_000_000,
        };
        let text = serde_json::to_string(&up).unwrap();
        assert_eq!(
            text,
            r#"{"t":"audience","userId":"v1","joined":true,"atMs":1764000000000}"#
        );
        assert_eq!(serde_json::from_str::<Up>(&text).unwrap(), up);
        let kick = crate::room::EdgeKick {
            user_id: UserId::new("v1").unwrap(),
            reason: BanReason::Kick,
            message: "duplicated userId joining the room".into(),
        };
        let down = Down::Kick(kick.clone());
        let text = serde_json::to_string(&down).unwrap();
        assert_eq!(serde_json::from_str::<Down>(&text).unwrap(), down);
        // The room's order on the hidden member's link is no event, and reads back whole.
        let order = crate::room::EdgeOrder::Kick(kick).encode();
        assert!(serde_json::from_str::<ServerEvent>(&order).is_err());
        assert_eq!(
            crate::room::EdgeOrder::decode(&order),
            Some(crate::room::EdgeOrder::Kick(down_kick(down)))
        );
    }
}
