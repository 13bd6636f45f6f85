//! The signalling WebSocket link: one task per connection (`actix-ws`). It checks the join
//! (credentials, ids), rate limits and size-limits frames, hands requests to the member's
//! room and writes replies and the room's events.
//!
//! One task reads the socket, the member's outbox and the join deadline, and is the only
//! writer, so replies and events go out in the order they were produced. Writes wait for the
//! socket: a client that stops reading stops this task from draining its outbox, and the room
//! then applies its slow-consumer policy (`link.rs`).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::{
    ClientEnvelope, ClientMessage, PROTOCOL_VERSION, Reply, ReplyData, ReplyResult, ServerEvent,
    ServerMessage, decode_client, decode_server, encode, events_frame, joined_reply_frame,
    request_id,
};
use rtcroom_protocol::{ErrorCode, RtcError};

use crate::cluster::{NODE_AUTH_HEADER, Owner, RemoteNode};
use crate::config::ServerConfig;
use crate::link::{LinkKind, LinkRx, Outgoing};
use crate::metrics::Metrics;
use crate::registry::{Member, Registry};
use crate::room::{RoomKey, SessionId};

/// The node owning a proxied member's room went away: the client is closed as for a server
/// going away (1001), and reconnects through its usual backoff to a re-placed room.
fn upstream_lost() -> End {
    End::Removed(CloseCode::Away, "the room's node went away".into())
}

/// Server state shared by all links.
pub struct SessionShared {
    /// The configuration.
    pub config: ServerConfig,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The room registry.
    pub registry: Arc<Registry>,
    /// Signed admin requests seen (against replay).
    pub replays: std::sync::Mutex<crate::admin::ReplayCache>,
}

/// A token bucket: `rate` per second sustained, `burst` at once. Plain logic, takes `now`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Take one token; `false` when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Watches the frame headers in a client's bytes and fails the stream as soon as one declares
/// a payload over the limit. The WebSocket codec underneath checks a frame's size only once
/// the whole frame has arrived, buffering it all until then: a header declaring a gigabyte
/// would hold the connection's memory growing for as long as the client keeps sending.
struct FrameGuard<S> {
    inner: S,
    limit: u64,
    /// Bytes of the current frame's header seen so far (at most 14).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    tripped: Rc<Cell<bool>>,
}

impl<S> FrameGuard<S> {
    fn new(inner: S, limit: usize, tripped: Rc<Cell<bool>>) -> Self {
        FrameGuard {
            inner,
            limit: limit as u64,
            header: [0; 14],
            have: 0,
            payload_left: 0,
            tripped,
        }
    }

    /// Follow the frames through `chunk`; `false` when a header declares too much.
    fn check(&mut self, chunk: &[u8]) -> bool {
        let mut i = 0;
        while i < chunk.len() {
            if self.payload_left > 0 {
                let n =
                    (chunk.len() - i).min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                i += n;
                self.payload_left -= n as u64;
                continue;
            }
            self.header[self.have] = chunk[i];
            self.have += 1;
            i += 1;
            if self.have < 2 {
                continue;
            }
            let len7 = self.header[1] & 0x7F;
            let ext = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + ext + mask {
                continue;
            }
            let len = match len7 {
                126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                127 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.header[2..10]);
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            if len > self.limit {
                return false;
            }
            self.have = 0;
            self.payload_left = len;
        }
        true
    }
}

impl<S> futures_util::Stream for FrameGuard<S>
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>>
        + Unpin,
{
    type Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.tripped.get() {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if self.check(&chunk) {
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    self.tripped.set(true);
                    Poll::Ready(Some(Err(actix_web::error::PayloadError::Overflow)))
                }
            }
            other => other,
        }
    }
}

/// Accept a WebSocket upgrade and run its session on this worker's thread.
pub async fn start(
    req: &actix_web::HttpRequest,
    body: actix_web::web::Payload,
    shared: Arc<SessionShared>,
) -> Result<actix_web::HttpResponse, actix_web::Error> {
    use actix_web::FromRequest;
    let limit = shared.config.limits.max_message_bytes;
    let tripped = Rc::new(Cell::new(false));
    let guarded = FrameGuard::new(body.into_inner(), limit, tripped.clone());
    let mut payload = actix_web::dev::Payload::Stream {
        payload: Box::pin(guarded)
            as std::pin::Pin<
                Box<
                    dyn futures_util::Stream<
                            Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>,
                        >,
                >,
            >,
    };
    let body = actix_web::web::Payload::from_request(req, &mut payload).await?;
    // A connection another node proxies here for a room it found on this node.
    let via = shared.registry.cluster().and_then(|c| {
        let credential = req.headers().get(NODE_AUTH_HEADER)?.to_str().ok()?;
        c.check_credential(credential)
    });
    let (response, ws, stream) = actix_ws::handle(req, body)?;
    // A frame whose header declares more than the limit is refused from its header; a
    // message assembled from continuation frames is bounded the same way.
    let stream = stream
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);
    actix_web::rt::spawn(Session::new(shared, ws, tripped, via).run(stream));
    Ok(response)
}

enum State {
    /// Waiting for the join.
    New,
    /// In a room; its events arrive on `outbox`.
    Joined {
        member: Member,
        outbox: Option<LinkRx>,
    },
    /// The room lives on another node: every frame is relayed to and from that node's
    /// signalling, which runs the member's session.
    Proxied { upstream: Upstream },
}

/// The WebSocket to the node owning a proxied member's room.
pub(crate) type Upstream = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// Largest frame accepted from another node (a join reply listing a full room's members).
const UPSTREAM_MAX_FRAME: usize = 16 << 20;
/// How long connecting to the room's node may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Links to a node kept open ahead of need, per worker thread (see [`UpstreamPool`]).
const POOLED_PER_NODE: usize = 2;

thread_local! {
    /// One HTTP client per worker thread for the links to other nodes: building one (its
    /// connector and TLS roots) for every proxied join cost more than the join itself.
    static UPSTREAM_CLIENT: awc::Client = awc::Client::builder()
        .timeout(UPSTREAM_CONNECT_TIMEOUT)
        .finish();
    static UPSTREAM_POOL: std::cell::RefCell<UpstreamPool> = Default::default();
}

/// WebSockets to other nodes opened before a join needs them, so a proxied join does not wait
/// for a TCP connect and an HTTP upgrade (measured on loopback: ~1.2 ms of the ~1.9 ms a
/// proxied join took). Each taken link is replaced in the background; a link older than half
/// the join timeout is dropped unused (the other node closes a connection that sends no join
/// within its join timeout).
#[derive(Default)]
struct UpstreamPool {
    idle: std::collections::HashMap<String, std::collections::VecDeque<(Upstream, Instant)>>,
    /// Connects under way per URL (so refills do not pile up).
    opening: std::collections::HashMap<String, usize>,
}

/// A WebSocket to another node at `url`, proving this node with `credential` (this worker's
/// HTTP client; frames up to 16 MiB).
pub(crate) async fn connect_upstream(url: &str, credential: String) -> Result<Upstream, String> {
    let connect = UPSTREAM_CLIENT
        .with(|c| c.clone())
        .ws(url)
        .max_frame_size(UPSTREAM_MAX_FRAME)
        .set_header(NODE_AUTH_HEADER, credential)
        .connect();
    connect.await.map(|(_, f)| f).map_err(|e| e.to_string())
}

/// A link to `url` (`ws://node/ws`): a fresh pooled one if there is one, else a new one; the
/// pool is topped up in the background either way.
async fn upstream_link(
    url: &str,
    cluster: &Arc<crate::cluster::Cluster>,
    max_age: Duration,
) -> Result<Upstream, String> {
    let now = Instant::now();
    let pooled = UPSTREAM_POOL.with(|p| {
        let mut p = p.borrow_mut();
        let idle = p.idle.entry(url.to_owned()).or_default();
        while let Some((link, at)) = idle.pop_front() {
            if now.duration_since(at) < max_age {
                return Some(link);
            }
        }
        None
    });
    refill(url.to_owned(), cluster.clone());
    match pooled {
        Some(link) => Ok(link),
        None => connect_upstream(url, cluster.credential()).await,
    }
}

fn refill(url: String, cluster: Arc<crate::cluster::Cluster>) {
    let wanted = UPSTREAM_POOL.with(|p| {
        let mut p = p.borrow_mut();
        let have =
            p.idle.get(&url).map_or(0, |q| q.len()) + p.opening.get(&url).copied().unwrap_or(0);
        let wanted = POOLED_PER_NODE.saturating_sub(have);
        *p.opening.entry(url.clone()).or_default() += wanted;
        wanted
    });
    for _ in 0..wanted {
        let (url, cluster) = (url.clone(), cluster.clone());
        actix_web::rt::spawn(async move {
            let link = connect_upstream(&url, cluster.credential()).await;
            UPSTREAM_POOL.with(|p| {
                let mut p = p.borrow_mut();
                if let Some(n) = p.opening.get_mut(&url) {
                    *n = n.saturating_sub(1);
                }
                if let Ok(link) = link {
                    p.idle
                        .entry(url)
                        .or_default()
                        .push_back((link, Instant::now()));
                }
            });
        });
    }
}

/// How a session ended.
enum End {
    /// Close with this code and reason; tell the room the member dropped if it still has it.
    Close(CloseCode, String),
    /// The room removed the member (kick, dismissal, shutdown, failure) or it left: close
    /// without telling the room.
    Removed(CloseCode, String),
    /// The socket is gone (client closed or write failed).
    Gone,
}

/// One signalling connection.
struct Session {
    id: SessionId,
    shared: Arc<SessionShared>,
    ws: actix_ws::Session,
    state: State,
    bucket: TokenBucket,
    /// Messages refused by the rate limiter in a row; the connection closes past the burst.
    strikes: u32,
    /// The frame guard refused a frame's declared size.
    oversized: Rc<Cell<bool>>,
    /// The node that proxies this connection here (cluster), if one does.
    via: Option<String>,
    /// For audience served here as an edge of another node's live room: that node and the
    /// member's join (a switch to anchor moves the session there).
    edge_of: Option<(RemoteNode, rtcroom_protocol::signal::JoinRequest)>,
}

/// Keeps the open-connections gauge right however the task ends.
struct Counted(Arc<Metrics>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Session {
    fn new(
        shared: Arc<SessionShared>,
        ws: actix_ws::Session,
        oversized: Rc<Cell<bool>>,
        via: Option<String>,
    ) -> Session {
        let limits = &shared.config.limits;
        let bucket = TokenBucket::new(
            limits.messages_per_second,
            limits.message_burst,
            Instant::now(),
        );
        Session {
            id: crate::auth::next_session_id(),
            shared,
            ws,
            state: State::New,
            bucket,
            strikes: 0,
            oversized,
            via,
            edge_of: None,
        }
    }

    async fn run(
        mut self,
        mut stream: impl futures_util::Stream<Item = Result<AggregatedMessage, ProtocolError>> + Unpin,
    ) {
        use futures_util::StreamExt;
        self.shared
            .metrics
            .connections
            .fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(self.shared.metrics.clone());
        let join_timeout = Duration::from_secs_f64(self.shared.config.timeouts.join_timeout_s);
        let join_deadline = tokio::time::Instant::now() + join_timeout;
        let end = loop {
            let joining = matches!(self.state, State::New);
            let (outbox, upstream) = match &mut self.state {
                State::Joined {
                    outbox: Some(rx), ..
                } => (Some(rx), None),
                State::Proxied { upstream } => (None, Some(upstream)),
                _ => (None, None),
            };
            let step = tokio::select! {
                msg = stream.next() => match msg {
                    // Boxed: a request's future (a join's, a publish's) lives only while it
                    // runs, instead of sizing every connection's task for the largest one
                    // (measured: 2.4 KB → 1.3 KB per connection).
                    Some(msg) => Box::pin(self.incoming(msg)).await,
                    None => Err(End::Gone),
                },
                out = async { outbox.expect("polled only when present").recv().await },
                    if outbox.is_some() => self.outgoing(out).await,
                frame = async { upstream.expect("polled only when present").next().await },
                    if upstream.is_some() => self.upstream_frame(frame).await,
                () = tokio::time::sleep_until(join_deadline), if joining => {
                    self.join_failed(
                        0,
                        RtcError::new(
                            ErrorCode::JoinRoomFailed,
                            format!(
                                "no join within {:.1} s of connecting",
                                join_timeout.as_secs_f64()
                            ),
                        ),
                    )
                    .await;
                    Err(End::Close(CloseCode::Policy, "join timeout".into()))
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        let (code, reason, tell_room) = match end {
            End::Close(code, reason) => (Some(code), reason, true),
            End::Removed(code, reason) => (Some(code), reason, false),
            End::Gone => (None, String::new(), true),
        };
        if tell_room && let State::Joined { member, .. } = &self.state {
            member.disconnected();
        }
        if let State::Proxied { upstream } = &mut self.state {
            self.shared
                .metrics
                .proxied_links
                .fetch_sub(1, Ordering::Relaxed);
            if tell_room {
                // The owner sees the client leave as this node saw it.
                use futures_util::SinkExt;
                let close = code.map(|code| CloseReason {
                    code,
                    description: Some(reason.clone()),
                });
                let _ = upstream.send(awc::ws::Message::Close(close)).await;
            }
        }
        if let Some(code) = code {
            let _ = self
                .ws
                .close(Some(CloseReason {
                    code,
                    description: Some(reason),
                }))
                .await;
        }
    }

    async fn send_text(&mut self, text: impl Into<ByteString>) -> Result<(), End> {
        Metrics::inc(&self.shared.metrics.messages_out);
        self.ws.text(text).await.map_err(|_| End::Gone)
    }

    async fn reply(
        &mut self,
        id: u64,
        result: Result<Option<ReplyData>, RtcError>,
    ) -> Result<(), End> {
        let result = match result {
            Ok(data) => ReplyResult::Ok { data },
            Err(error) => ReplyResult::Err { error },
        };
        let text = encode(&ServerMessage::Reply(Reply {
            v: PROTOCOL_VERSION,
            id,
            result,
        }));
        self.send_text(text).await
    }

    async fn join_failed(&mut self, id: u64, e: RtcError) {
        let code = e
            .extra_code
            .map(i64::from)
            .unwrap_or(i64::from(e.code.value()));
        self.shared.metrics.join_failed(code);
        let _ = self.reply(id, Err(e)).await;
    }

    /// Events or a close from the room.
    async fn outgoing(&mut self, out: Option<Outgoing>) -> Result<(), End> {
        match out {
            Some(Outgoing::Events(events)) => match events_frame(&events) {
                Some(frame) => self.ws.text(frame).await.map_err(|_| End::Gone),
                None => Ok(()),
            },
            Some(Outgoing::Close { last, code, reason }) => {
                if let Some(frame) = events_frame(&last) {
                    self.ws.text(frame).await.map_err(|_| End::Gone)?;
                }
                Err(End::Removed(CloseCode::from(code), reason.to_owned()))
            }
            None => {
                // The room let go of the link without a close (it has no more events for
                // it); the socket stays open for the member's remaining requests.
                if let State::Joined { outbox, .. } = &mut self.state {
                    *outbox = None;
                }
                Ok(())
            }
        }
    }

    /// A frame from the client.
    async fn incoming(
        &mut self,
        item: Result<AggregatedMessage, ProtocolError>,
    ) -> Result<(), End> {
        let limit = self.shared.config.limits.max_message_bytes;
        let msg = match item {
            Ok(m) => m,
            Err(ProtocolError::Overflow) | Err(ProtocolError::Io(_)) if self.oversized.get() => {
                return Err(End::Close(
                    CloseCode::Size,
                    format!("frame over {limit} bytes"),
                ));
            }
            Err(ProtocolError::Overflow) => {
                return Err(End::Close(
                    CloseCode::Size,
                    format!("frame over {limit} bytes"),
                ));
            }
            Err(ProtocolError::Io(e)) if e.to_string().contains("continuation size") => {
                return Err(End::Close(
                    CloseCode::Size,
                    format!("message over {limit} bytes"),
                ));
            }
            Err(e) => {
                tracing::debug!(error = %e, "websocket protocol error");
                return Err(End::Close(CloseCode::Protocol, "protocol error".into()));
            }
        };
        let text: Option<ByteString> = match msg {
            AggregatedMessage::Text(t) => Some(t),
            AggregatedMessage::Ping(p) => return self.ws.pong(&p).await.map_err(|_| End::Gone),
            AggregatedMessage::Pong(_) => return Ok(()),
            AggregatedMessage::Close(_) => {
                return Err(End::Close(CloseCode::Normal, String::new()));
            }
            // Answered with an error below, after the rate limiter: every data frame costs
            // the server a reply, so every data frame counts against the limit.
            AggregatedMessage::Binary(_) => None,
        };
        Metrics::inc(&self.shared.metrics.messages_in);
        if !self.bucket.take(Instant::now()) {
            self.strikes += 1;
            if self.strikes > self.shared.config.limits.message_burst {
                return Err(End::Close(CloseCode::Policy, "message flood".into()));
            }
            let rate = self.shared.config.limits.messages_per_second;
            return self
                .reply(
                    0,
                    Err(RtcError::invalid_operation(
                        None,
                        format!("too many messages: at most {rate} per second"),
                    )),
                )
                .await;
        }
        let Some(text) = text else {
            return self
                .reply(
                    0,
                    Err(RtcError::invalid_parameter(
                        Some(extra::PARAM_TYPE),
                        "binary frames are not part of the protocol; send JSON text frames",
                    )),
                )
                .await;
        };
        self.strikes = 0;
        if let State::Proxied { upstream } = &mut self.state {
            use futures_util::SinkExt;
            return upstream
                .send(awc::ws::Message::Text(text))
                .await
                .map_err(|_| upstream_lost());
        }
        match decode_client(text.as_bytes()) {
            Ok(env) => self.envelope(env, text).await,
            Err(e) => self.reply(request_id(text.as_bytes()), Err(e.into())).await,
        }
    }

    /// A frame from the node owning a proxied member's room.
    async fn upstream_frame(
        &mut self,
        frame: Option<Result<awc::ws::Frame, awc::error::WsProtocolError>>,
    ) -> Result<(), End> {
        use awc::ws::Frame;
        use futures_util::SinkExt;
        match frame {
            Some(Ok(Frame::Text(bytes))) => match ByteString::try_from(bytes) {
                Ok(text) => self.send_text(text).await,
                Err(_) => Err(upstream_lost()),
            },
            Some(Ok(Frame::Ping(p))) => {
                if let State::Proxied { upstream } = &mut self.state {
                    upstream
                        .send(awc::ws::Message::Pong(p))
                        .await
                        .map_err(|_| upstream_lost())?;
                }
                Ok(())
            }
            Some(Ok(Frame::Pong(_))) => Ok(()),
            Some(Ok(Frame::Close(reason))) => {
                // The owner ended the member's session (left, kicked, dismissed, shut
                // down): the client is closed the same way, and the owner needs no close.
                let (code, description) = reason
                    .map(|r| (r.code, r.description.unwrap_or_default()))
                    .unwrap_or((CloseCode::Normal, String::new()));
                Err(End::Removed(code, description))
            }
            Some(Ok(_)) | Some(Err(_)) | None => Err(upstream_lost()),
        }
    }

    /// Relay this join, and from now on every frame, to the node owning the room. `Err`: the
    /// node could not be reached (the join has not been answered).
    async fn proxy(
        &mut self,
        key: &RoomKey,
        node: RemoteNode,
        join: ByteString,
    ) -> Result<(), RtcError> {
        use futures_util::SinkExt;
        let Some(cluster) = self.shared.registry.cluster() else {
            return Err(RtcError::new(ErrorCode::JoinRoomFailed, "not in a cluster"));
        };
        let url = format!("{}/ws", node.url);
        let max_age = Duration::from_secs_f64(self.shared.config.timeouts.join_timeout_s / 2.0);
        let unreachable = |e: &dyn std::fmt::Display| {
            RtcError::new(
                ErrorCode::JoinRoomFailed,
                format!("the room's node {} is unreachable: {e}", node.id),
            )
        };
        let mut upstream = match upstream_link(&url, cluster, max_age).await {
            Ok(link) => link,
            Err(e) => {
                cluster.forget(key);
                tracing::warn!(node = node.id, url, error = %e, "room's node unreachable");
                return Err(unreachable(&e));
            }
        };
        if let Err(e) = upstream.send(awc::ws::Message::Text(join)).await {
            return Err(unreachable(&e));
        }
        self.shared
            .metrics
            .proxied_links
            .fetch_add(1, Ordering::Relaxed);
        self.state = State::Proxied { upstream };
        Ok(())
    }

    /// An audience member of an edge room switches to anchor: an anchor belongs on the room's
    /// node, so its session moves there. The member joins the room's node as anchor (its own
    /// join again, role anchor: the room's node checks its credentials), then leaves the edge
    /// room, and from then on its frames are relayed as a proxied member's. Its subscriptions
    /// were on this node's SFU: it is told each stream was removed and added again (TRTC's
    /// `stream-removed` / `stream-added`), and subscribes anew on the room's node. Refused (the
    /// member stays an edge viewer) when the room's node refuses or cannot be reached.
    async fn anchor_on_origin(&mut self, id: u64) -> Result<(), End> {
        use awc::ws::Frame;
        use futures_util::{SinkExt, StreamExt};
        let (Some((origin, join)), Some(cluster)) = (
            self.edge_of.clone(),
            self.shared.registry.cluster().cloned(),
        ) else {
            return self
                .reply(
                    id,
                    Err(RtcError::invalid_operation(None, "not an edge member")),
                )
                .await;
        };
        let failed = |e: &dyn std::fmt::Display| {
            RtcError::new(
                ErrorCode::SwitchRoleFailed,
                format!("the room's node {} is unreachable: {e}", origin.id),
            )
        };
        let me = join.user_id.clone();
        let text = encode(&ClientEnvelope {
            v: PROTOCOL_VERSION,
            id,
            msg: ClientMessage::Join(rtcroom_protocol::signal::JoinRequest {
                role: Some(rtcroom_protocol::Role::Anchor),
                ..join
            }),
        });
        let url = format!("{}/ws", origin.url);
        let join_timeout = Duration::from_secs_f64(self.shared.config.timeouts.join_timeout_s);
        let mut upstream = match upstream_link(&url, &cluster, join_timeout / 2).await {
            Ok(link) => link,
            Err(e) => return self.reply(id, Err(failed(&e))).await,
        };
        if let Err(e) = upstream.send(awc::ws::Message::Text(text.into())).await {
            return self.reply(id, Err(failed(&e))).await;
        }
        // The first frame on a new link is the join's reply.
        let joined = match tokio::time::timeout(join_timeout, upstream.next()).await {
            Ok(Some(Ok(Frame::Text(bytes)))) => match decode_server(&bytes) {
                Ok(ServerMessage::Reply(Reply {
                    result:
                        ReplyResult::Ok {
                            data: Some(ReplyData::Joined(joined)),
                        },
                    ..
                })) => joined,
                Ok(ServerMessage::Reply(Reply {
                    result: ReplyResult::Err { error },
                    ..
                })) => {
                    let mut error = error;
                    error.code = ErrorCode::SwitchRoleFailed;
                    return self.reply(id, Err(error)).await;
                }
                _ => return self.reply(id, Err(failed(&"an unexpected answer"))).await,
            },
            Ok(_) => return self.reply(id, Err(failed(&"the link closed"))).await,
            Err(_) => return self.reply(id, Err(failed(&"no answer in time"))).await,
        };
        refill(url, cluster);
        // In the room's node now: leave the edge room (its link learns the member left).
        if let State::Joined { member, .. } = &self.state {
            let _ = member.request(ClientMessage::Leave).await;
        }
        self.edge_of = None;
        self.shared
            .metrics
            .proxied_links
            .fetch_add(1, Ordering::Relaxed);
        self.state = State::Proxied { upstream };
        self.reply(id, Ok(None)).await?;
        for stream in joined.streams.into_iter().filter(|s| s.user_id != me) {
            let removed = ServerEvent::StreamRemoved {
                user_id: stream.user_id.clone(),
                stream_type: stream.stream_type,
            };
            for event in [removed, ServerEvent::StreamAdded(stream)] {
                self.send_text(encode(&ServerMessage::Event(event))).await?;
            }
        }
        Ok(())
    }

    /// Whether this join is of live-room audience that a cluster node with media may serve
    /// as an edge.
    fn edge_audience(&self, j: &rtcroom_protocol::signal::JoinRequest) -> bool {
        j.mode == rtcroom_protocol::Mode::Live
            && j.effective_role() == rtcroom_protocol::Role::Audience
            && self.shared.registry.media().is_some()
    }

    /// Whether this audience join of `owner`'s live room is served here, as an edge of the
    /// room (`cascade.rs`): one that reached this node once the room cascades, or one the
    /// room's node itself sent here for that. A join another node proxied here is the room's
    /// own.
    async fn serves_edge(
        &self,
        j: &rtcroom_protocol::signal::JoinRequest,
        key: &RoomKey,
        owner: &RemoteNode,
    ) -> bool {
        let Some(cluster) = self.shared.registry.cluster() else {
            return false;
        };
        if !self.edge_audience(j) {
            return false;
        }
        match &self.via {
            Some(via) => *via == owner.id,
            None => cluster.serves_edge(key).await,
        }
    }

    /// The node to serve this audience join of a live room of this node, when the room has
    /// audience enough here ([`crate::cluster::Cluster::edge_for`]).
    fn edge_elsewhere(
        &self,
        j: &rtcroom_protocol::signal::JoinRequest,
        key: &RoomKey,
    ) -> Option<RemoteNode> {
        if self.via.is_some() || !self.edge_audience(j) {
            return None;
        }
        self.shared.registry.cluster()?.edge_for(key)
    }

    /// Join another node's live room as audience served by this node.
    async fn join_edge(
        &mut self,
        id: u64,
        key: RoomKey,
        origin: RemoteNode,
        input: crate::room::JoinInput,
    ) -> Result<(), End> {
        let joined = crate::cascade::join_edge(&self.shared.registry, key, origin, input).await;
        self.joined(id, joined).await
    }

    /// Answer join `id` with how it went; joined, the member's events arrive on `outbox`.
    async fn joined(
        &mut self,
        id: u64,
        joined: Result<(crate::room::Joined, Member, LinkRx), RtcError>,
    ) -> Result<(), End> {
        match joined {
            Ok((result, member, outbox)) => {
                self.state = State::Joined {
                    member,
                    outbox: Some(outbox),
                };
                Metrics::inc(&self.shared.metrics.joins);
                let frame = joined_reply_frame(id, result.result, &result.members_json);
                self.send_text(frame).await
            }
            Err(e) => {
                self.join_failed(id, e).await;
                Ok(())
            }
        }
    }

    async fn envelope(&mut self, env: ClientEnvelope, raw: ByteString) -> Result<(), End> {
        let id = env.id;
        match (&self.state, env.msg) {
            (State::New, ClientMessage::Join(j)) => {
                let (key, input) = match crate::auth::check_join(
                    &self.shared.config,
                    &j,
                    self.id,
                    LinkKind::Signalling,
                ) {
                    Ok(v) => v,
                    Err(e) => {
                        self.join_failed(id, e).await;
                        return Ok(());
                    }
                };
                // Nothing else of this session is handled before the join's reply is written
                // (or, for a room on another node, before the join is relayed there).
                // A room whose node does not answer (a remembered node that has stopped) is
                // looked up once more in the directory.
                let mut tries = 2;
                loop {
                    tries -= 1;
                    let routed = self
                        .shared
                        .registry
                        .route_join(&key, self.via.is_some())
                        .await;
                    let failed = match routed {
                        Ok(Owner::Here) => {
                            // A live room with audience enough here: another node serves this
                            // member as the room's edge (this node relays its signalling).
                            if let Some(edge) = self.edge_elsewhere(&j, &key) {
                                match self.proxy(&key, edge, raw.clone()).await {
                                    Ok(()) => return Ok(()),
                                    Err(e) => {
                                        tracing::debug!(error = %e.message, "serving here");
                                    }
                                }
                            }
                            break;
                        }
                        Ok(Owner::Node(node)) if self.serves_edge(&j, &key, &node).await => {
                            let origin = node.clone();
                            self.join_edge(id, key, node, input).await?;
                            if matches!(self.state, State::Joined { .. }) {
                                self.edge_of = Some((origin, j));
                            }
                            return Ok(());
                        }
                        Ok(Owner::Node(node)) => match self.proxy(&key, node, raw.clone()).await {
                            Ok(()) => return Ok(()),
                            Err(e) => e,
                        },
                        Err(e) => e,
                    };
                    if tries == 0 {
                        self.join_failed(id, failed).await;
                        return Ok(());
                    }
                }
                let (link, outbox) = crate::link::link();
                let joined = self.shared.registry.join(key, input, link).await;
                self.joined(id, joined.map(|(result, member)| (result, member, outbox)))
                    .await
            }
            (State::New, _) => {
                self.reply(
                    id,
                    Err(RtcError::invalid_operation(
                        Some(extra::NOT_ENTERED_ROOM),
                        "join the room first: the first message must be a join",
                    )),
                )
                .await
            }
            // Proxied frames never reach here (`incoming` relays them).
            (State::Proxied { .. }, _) => Ok(()),
            (State::Joined { .. }, ClientMessage::Join(_)) => {
                self.reply(
                    id,
                    Err(RtcError::invalid_operation(
                        Some(extra::REPEATED_CALL),
                        "already joined on this connection",
                    )),
                )
                .await
            }
            (
                State::Joined { .. },
                ClientMessage::SwitchRole {
                    role: rtcroom_protocol::Role::Anchor,
                },
            ) if self.edge_of.is_some() => self.anchor_on_origin(id).await,
            (State::Joined { member, .. }, msg) => {
                let leaving = matches!(msg, ClientMessage::Leave);
                let member = member.clone();
                let res = member.request(msg).await;
                self.reply(id, res).await?;
                if leaving {
                    return Err(End::Removed(CloseCode::Normal, "left".into()));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(limit: usize) -> FrameGuard<()> {
        FrameGuard::new((), limit, Rc::new(Cell::new(false)))
    }

    /// A masked client frame header declaring `len` bytes.
    fn header(len: u64) -> Vec<u8> {
        let mut h = vec![0x81];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len < 65536 {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[9, 9, 9, 9]);
        h
    }

    #[test]
    fn the_guard_follows_frames_and_refuses_a_header_over_the_limit() {
        let mut g = guard(1000);
        // Two small frames and a 1000-byte one, cut at every awkward place.
        let mut bytes = header(5);
        bytes.extend_from_slice(b"hello");
        bytes.extend(header(300));
        bytes.extend(vec![7u8; 300]);
        bytes.extend(header(1000));
        bytes.extend(vec![7u8; 1000]);
        for chunk in bytes.chunks(3) {
            assert!(g.check(chunk));
        }
        assert_eq!((g.have, g.payload_left), (0, 0), "between frames");
        // One byte over, declared with the 16-bit and the 64-bit length forms.
        assert!(!guard(1000).check(&header(1001)));
        let big = header(1 << 30);
        let mut g = guard(1000);
        assert!(g.check(&big[..5]), "not known yet");
        assert!(!g.check(&big[5..]), "known from the header alone");
        // Payload bytes that look like headers are not read as headers.
        let mut g = guard(1000);
        let mut bytes = header(10);
        bytes.extend(vec![0xFF; 10]);
        bytes.extend(header(0));
        assert!(g.check(&bytes));
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        for _ in 0..5 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(160)));
        assert!(!b.take(t0 + Duration::from_millis(160)));
        // Refills up to the burst only.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..5 {
            assert!(b.take(later));
        }
        assert!(!b.take(later));
    }
}
