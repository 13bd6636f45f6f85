//! `SignalingActor`: one per signalling WebSocket connection.
//!
//! It owns the socket: requests go out as envelopes with ids ([`PendingRequests`]), replies
//! are routed back to the waiting request, server events go to the client actor as
//! [`SignalEvent::Server`], heartbeats go out every 2 s once the client is joined
//! ([`Heartbeat`]). It does not reconnect: when the socket closes, errors or falls silent it
//! stops, and its `Drop` reports [`SignalEvent::Lost`] to the client actor, which decides
//! whether to reconnect (by starting a new `SignalingActor`). Because the report is sent from
//! `Drop`, the client also hears of it when this actor dies of a panic.
//!
//! Writes go through an unbounded channel to a writer task that owns the socket's sink, so a
//! handler never waits on the network; the writer closes the socket (close frame) when this
//! actor goes away.

use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rtcroom_protocol::signal::{
    ClientEnvelope, ClientMessage, ReplyData, ReplyResult, ServerEvent, ServerMessage,
    decode_server, encode,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::backoff::{Heartbeat, HeartbeatAction};
use crate::error::SignalError;
use crate::requests::{PendingRequests, RequestKind};

/// Largest server message accepted, in bytes: the protocol's limit
/// ([`rtcroom_protocol::signal::MAX_MESSAGE_BYTES`], 64 KiB) with room to spare; larger frames
/// are refused by the WebSocket layer instead of being buffered.
pub const MAX_INCOMING_BYTES: usize = 4 * rtcroom_protocol::signal::MAX_MESSAGE_BYTES;

/// Initial read buffer of a signalling connection (tungstenite's default is 128 KiB).
pub const READ_BUFFER_BYTES: usize = 4096;
/// A single frame write that takes longer than this ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket type the signalling connection runs on.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Identifies one connection of a client, so reports from an old connection are ignored.
pub type Generation = u64;

/// What a signalling connection reports to its client actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum SignalEvent {
    /// A server event arrived.
    Server(Generation, ServerEvent),
    /// The connection is gone (closed by either side, errored, silent too long, or the actor
    /// stopped). Sent exactly once per connection.
    Lost(Generation, String),
}

/// Send a request and wait for its reply (or its timeout).
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<ReplyData>, SignalError>")]
pub struct SignalRequest {
    /// The request.
    pub msg: ClientMessage,
    /// Its kind (for the timeout error).
    pub kind: RequestKind,
    /// How long to wait for the reply.
    pub timeout: Duration,
}

/// Start heartbeats (after a successful join).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StartHeartbeat {
    /// The interval (TRTC: 2 s).
    pub interval: Duration,
    /// Silent intervals before the connection counts as dead.
    pub missed: u32,
}

/// Close the connection on purpose (leave, removal, client shutdown). The client is told
/// [`SignalEvent::Lost`] as always; it knows it asked.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CloseSignaling;

type Waiter = Option<oneshot::Sender<Result<Option<ReplyData>, SignalError>>>;

/// One signalling connection.
pub struct SignalingActor {
    generation: Generation,
    client: Recipient<SignalEvent>,
    out: Option<mpsc::UnboundedSender<Message>>,
    read: Option<SplitStream<WsStream>>,
    requests: PendingRequests<Waiter>,
    heartbeat: Option<Heartbeat>,
    heartbeat_timer: Option<SpawnHandle>,
    /// Why the connection ended; the first reason found wins.
    lost_reason: Option<String>,
    span: tracing::Span,
}

impl SignalingActor {
    /// Take over an open WebSocket. Start it with [`Actor::start`] on the client's arbiter.
    pub fn new(
        ws: WsStream,
        generation: Generation,
        client: Recipient<SignalEvent>,
        span: tracing::Span,
    ) -> Self {
        let (sink, read) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        // The writer task needs a runtime; `new` is called from the client actor's arbiter.
        actix::spawn(write_loop(sink, rx));
        SignalingActor {
            generation,
            client,
            out: Some(tx),
            read: Some(read),
            requests: PendingRequests::new(),
            heartbeat: None,
            heartbeat_timer: None,
            lost_reason: None,
            span,
        }
    }

    fn send_frame(&mut self, text: String) -> bool {
        match &self.out {
            Some(tx) => tx.send(Message::text(text)).is_ok(),
            None => false,
        }
    }

    fn lose(&mut self, ctx: &mut Context<Self>, reason: impl Into<String>) {
        self.note_reason(reason);
        ctx.stop();
    }

    fn note_reason(&mut self, reason: impl Into<String>) {
        if self.lost_reason.is_none() {
            self.lost_reason = Some(reason.into());
        }
    }

    fn expire_requests(&mut self) {
        for (id, kind, waiter, error) in self.requests.expire(Instant::now()) {
            tracing::debug!(parent: &self.span, id, ?kind, "request timed out");
            if let Some(w) = waiter {
                let _ = w.send(Err(SignalError::Timeout(error)));
            }
        }
    }

    fn schedule_heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Some(hb) = &self.heartbeat else { return };
        if let Some(h) = self.heartbeat_timer.take() {
            ctx.cancel_future(h);
        }
        let wait = hb.next_deadline().saturating_duration_since(Instant::now());
        self.heartbeat_timer = Some(ctx.run_later(wait, |act, ctx| {
            act.heartbeat_timer = None;
            act.on_heartbeat_timer(ctx);
        }));
    }

    fn on_heartbeat_timer(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let Some(hb) = &mut self.heartbeat else {
            return;
        };
        match hb.poll(now) {
            HeartbeatAction::Wait => {}
            HeartbeatAction::Send => {
                let timeout = hb.interval();
                let id = self
                    .requests
                    .insert(RequestKind::Heartbeat, timeout, now, None);
                let ok =
                    self.send_frame(encode(&ClientEnvelope::new(id, ClientMessage::Heartbeat)));
                if !ok {
                    return self.lose(ctx, "signalling writer stopped");
                }
                ctx.run_later(timeout, |act, _| act.expire_requests());
            }
            HeartbeatAction::Dead => {
                tracing::info!(parent: &self.span, "no frame from the server: connection dead");
                return self.lose(ctx, "signalling connection silent (heartbeat timeout)");
            }
        }
        self.schedule_heartbeat(ctx);
    }

    fn on_event(&mut self, event: ServerEvent) {
        let kicked = matches!(event, ServerEvent::ClientBanned { .. });
        self.client
            .do_send(SignalEvent::Server(self.generation, event));
        if kicked {
            // The server closes next; nothing more will come.
            self.note_reason("removed by the server");
        }
    }

    fn on_text(&mut self, text: &str) {
        if let Some(hb) = &mut self.heartbeat {
            hb.heard(Instant::now());
        }
        let msg = match decode_server(text.as_bytes()) {
            Ok(m) => m,
            Err(e) => {
                // Network input never panics: log and carry on.
                tracing::warn!(parent: &self.span, error = %e, "undecodable server frame ignored");
                return;
            }
        };
        match msg {
            ServerMessage::Reply(reply) => match self.requests.resolve(reply.id) {
                Some((_, waiter)) => {
                    let result = match reply.result {
                        ReplyResult::Ok { data } => Ok(data),
                        ReplyResult::Err { error } => Err(SignalError::Rejected(error)),
                    };
                    if let Some(w) = waiter {
                        let _ = w.send(result);
                    }
                }
                None => match reply.result {
                    ReplyResult::Err { error } => {
                        tracing::info!(parent: &self.span, id = reply.id, %error, "server error reply");
                    }
                    ReplyResult::Ok { .. } => {
                        tracing::debug!(parent: &self.span, id = reply.id, "late or unknown reply ignored");
                    }
                },
            },
            ServerMessage::Event(event) => self.on_event(event),
            // Several events coalesced into one frame: the same as one frame each, in order.
            ServerMessage::Events { events } => {
                for event in events {
                    self.on_event(event);
                }
            }
            _ => {
                tracing::debug!(parent: &self.span, "unknown server message ignored");
            }
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WsStream, Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    while let Some(msg) = rx.recv().await {
        // A peer that stops reading must not pin this task (and the socket) forever.
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
    // The actor went away: say goodbye properly. Bounded so a dead peer cannot hold us.
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

impl Actor for SignalingActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(read) = self.read.take() {
            ctx.add_stream(read);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Dropping the sender lets the writer flush and close the socket.
        self.out = None;
    }
}

impl Drop for SignalingActor {
    fn drop(&mut self) {
        for (_, _, waiter) in self.requests.drain() {
            if let Some(w) = waiter {
                let _ = w.send(Err(SignalError::Lost));
            }
        }
        let reason = self
            .lost_reason
            .take()
            .unwrap_or_else(|| "signalling connection closed".to_owned());
        tracing::debug!(parent: &self.span, %reason, "signalling connection ended");
        self.client
            .do_send(SignalEvent::Lost(self.generation, reason));
    }
}

impl StreamHandler<Result<Message, tungstenite::Error>> for SignalingActor {
    fn handle(&mut self, item: Result<Message, tungstenite::Error>, ctx: &mut Self::Context) {
        match item {
            Ok(Message::Text(text)) => self.on_text(text.as_str()),
            Ok(Message::Close(frame)) => {
                let why = frame
                    .map(|f| format!("closed by the server ({}: {})", u16::from(f.code), f.reason))
                    .unwrap_or_else(|| "closed by the server".to_owned());
                self.lose(ctx, why);
            }
            Ok(Message::Binary(_)) => {
                tracing::warn!(parent: &self.span, "binary frame from the server ignored");
            }
            Ok(_) => {
                // Ping / pong / raw frames: tungstenite answers pings itself.
                if let Some(hb) = &mut self.heartbeat {
                    hb.heard(Instant::now());
                }
            }
            Err(e) => self.lose(ctx, format!("signalling connection error: {e}")),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.lose(ctx, "signalling connection ended");
    }
}

impl Handler<SignalRequest> for SignalingActor {
    type Result = ResponseFuture<Result<Option<ReplyData>, SignalError>>;

    fn handle(&mut self, req: SignalRequest, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let id = self
            .requests
            .insert(req.kind, req.timeout, Instant::now(), Some(tx));
        let frame = encode(&ClientEnvelope::new(id, req.msg));
        if !self.send_frame(frame) {
            let _ = self.requests.resolve(id);
            return Box::pin(async { Err(SignalError::Lost) });
        }
        ctx.run_later(req.timeout, |act, _| act.expire_requests());
        Box::pin(async move { rx.await.unwrap_or(Err(SignalError::Lost)) })
    }
}

impl Handler<StartHeartbeat> for SignalingActor {
    type Result = ();

    fn handle(&mut self, msg: StartHeartbeat, ctx: &mut Self::Context) {
        self.heartbeat = Some(Heartbeat::new(msg.interval, msg.missed, Instant::now()));
        self.schedule_heartbeat(ctx);
    }
}

impl Handler<CloseSignaling> for SignalingActor {
    type Result = ();

    fn handle(&mut self, _: CloseSignaling, ctx: &mut Self::Context) {
        self.lose(ctx, "closed by the client");
    }
}

/// Fault injection for supervision tests: the actor panics. Test builds only.
#[cfg(test)]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Crash;

#[cfg(test)]
impl Handler<Crash> for SignalingActor {
    type Result = ();

    fn handle(&mut self, _: Crash, _: &mut Self::Context) {
        panic!("injected fault: SignalingActor crashes");
    }
}

/// Open a WebSocket to `url` within `timeout` (a timeout is the join's timeout error), over
/// TLS with `tls` for a `wss://` URL. Incoming messages are capped at [`MAX_INCOMING_BYTES`];
/// a bigger one ends the connection.
pub async fn connect(
    url: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<WsStream, SignalError> {
    // Signalling messages are small: tungstenite's default 128 KiB read buffer, reserved per
    // connection, was most of a joined client's memory. The buffer still grows for a large
    // message (up to the caps below).
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_INCOMING_BYTES))
        .max_frame_size(Some(MAX_INCOMING_BYTES));
    // Signalling frames are small and latency-bound: disable Nagle.
    let open = tokio_tungstenite::connect_async_tls_with_config(
        url,
        Some(config),
        true,
        tls.map(tokio_tungstenite::Connector::Rustls),
    );
    match tokio::time::timeout(timeout, open).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(e)) => Err(SignalError::Connect(e.to_string())),
        Err(_) => Err(SignalError::Timeout(RequestKind::Join.timeout_error())),
    }
}
