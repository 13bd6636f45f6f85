//! `SessionActor`: one per WebSocket connection. It checks the join (credentials, ids), rate
//! limits and size-limits frames, forwards requests to its room and writes replies and events.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use bytestring::ByteString;
use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::{
    ClientEnvelope, ClientMessage, PROTOCOL_VERSION, Reply, ReplyData, ReplyResult, ServerMessage,
    decode_client, encode, events_frame, joined_reply_frame, request_id,
};
use rtcroom_protocol::{ErrorCode, RtcError};

use crate::config::ServerConfig;
use crate::link::{LinkKind, Outgoing};
use crate::metrics::Metrics;
use crate::registry::{Member, Registry};
use crate::room::SessionId;

/// Server state shared by all sessions.
pub struct SessionShared {
    /// The configuration.
    pub config: ServerConfig,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The room registry.
    pub registry: Arc<Registry>,
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

enum State {
    /// Waiting for the join.
    New,
    /// Joining (the room has not answered yet).
    Joining,
    /// In a room.
    Joined { member: Member },
    /// Left, kicked or closing.
    Closed,
}

/// One signalling connection.
pub struct SessionActor {
    id: SessionId,
    shared: Arc<SessionShared>,
    state: State,
    bucket: TokenBucket,
    /// Messages refused by the rate limiter in a row; the connection closes past the burst.
    strikes: u32,
}

impl SessionActor {
    /// A new session.
    pub fn new(shared: Arc<SessionShared>) -> Self {
        let limits = &shared.config.limits;
        let bucket = TokenBucket::new(
            limits.messages_per_second,
            limits.message_burst,
            Instant::now(),
        );
        SessionActor {
            id: crate::auth::next_session_id(),
            shared,
            state: State::New,
            bucket,
            strikes: 0,
        }
    }

    fn send(&self, ctx: &mut ws::WebsocketContext<Self>, msg: &ServerMessage) {
        self.send_text(ctx, encode(msg));
    }

    fn send_text(&self, ctx: &mut ws::WebsocketContext<Self>, text: String) {
        Metrics::inc(&self.shared.metrics.messages_out);
        ctx.text(text);
    }

    fn reply(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        id: u64,
        result: Result<Option<ReplyData>, RtcError>,
    ) {
        let result = match result {
            Ok(data) => ReplyResult::Ok { data },
            Err(error) => ReplyResult::Err { error },
        };
        self.send(
            ctx,
            &ServerMessage::Reply(Reply {
                v: PROTOCOL_VERSION,
                id,
                result,
            }),
        );
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: ws::CloseCode, reason: &str) {
        self.state = State::Closed;
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(reason.to_owned()),
        }));
        ctx.stop();
    }

    fn join_failed(&self, ctx: &mut ws::WebsocketContext<Self>, id: u64, e: RtcError) {
        let code = e
            .extra_code
            .map(i64::from)
            .unwrap_or(i64::from(e.code.value()));
        self.shared.metrics.join_failed(code);
        self.reply(ctx, id, Err(e));
    }

    fn handle_envelope(&mut self, env: ClientEnvelope, ctx: &mut ws::WebsocketContext<Self>) {
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
                    Err(e) => return self.join_failed(ctx, id, e),
                };
                let (link, outbox) = crate::link::link();
                ctx.add_stream(outbox.into_stream());
                self.state = State::Joining;
                let registry = self.shared.registry.clone();
                // Nothing else of this session is handled before the join's reply is written.
                let fut = async move { registry.join(key, input, link).await }
                    .into_actor(self)
                    .map(move |res, act, ctx| match res {
                        Ok((result, member)) => {
                            act.state = State::Joined { member };
                            Metrics::inc(&act.shared.metrics.joins);
                            let frame = joined_reply_frame(id, result.result, &result.members_json);
                            act.send_text(ctx, frame);
                        }
                        Err(e) => {
                            act.state = State::New;
                            act.join_failed(ctx, id, e);
                        }
                    });
                ctx.wait(fut);
            }
            (State::New, _) => self.reply(
                ctx,
                id,
                Err(RtcError::invalid_operation(
                    Some(extra::NOT_ENTERED_ROOM),
                    "join the room first: the first message must be a join",
                )),
            ),
            (State::Joined { .. }, ClientMessage::Join(_)) => self.reply(
                ctx,
                id,
                Err(RtcError::invalid_operation(
                    Some(extra::REPEATED_CALL),
                    "already joined on this connection",
                )),
            ),
            (State::Joined { member }, msg) => {
                let leaving = matches!(msg, ClientMessage::Leave);
                let member = member.clone();
                let fut = async move { member.request(msg).await }
                    .into_actor(self)
                    .map(move |res, act, ctx| {
                        act.reply(ctx, id, res);
                        if leaving {
                            act.close(ctx, ws::CloseCode::Normal, "left");
                        }
                    });
                ctx.wait(fut);
            }
            (State::Joining | State::Closed, _) => {}
        }
    }
}

impl Actor for SessionActor {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared
            .metrics
            .connections
            .fetch_add(1, Ordering::Relaxed);
        let timeout = Duration::from_secs_f64(self.shared.config.timeouts.join_timeout_s);
        ctx.run_later(timeout, move |act, ctx| {
            if matches!(act.state, State::New) {
                act.join_failed(
                    ctx,
                    0,
                    RtcError::new(
                        ErrorCode::JoinRoomFailed,
                        format!(
                            "no join within {:.1} s of connecting",
                            timeout.as_secs_f64()
                        ),
                    ),
                );
                act.close(ctx, ws::CloseCode::Policy, "join timeout");
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.shared
            .metrics
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        if let State::Joined { member } = &self.state {
            member.disconnected();
        }
    }
}

impl StreamHandler<Outgoing> for SessionActor {
    fn handle(&mut self, msg: Outgoing, ctx: &mut Self::Context) {
        match msg {
            Outgoing::Events(events) => {
                if let Some(frame) = events_frame(&events) {
                    ctx.text(frame);
                }
            }
            Outgoing::Close { last, code, reason } => {
                if let Some(frame) = events_frame(&last) {
                    ctx.text(frame);
                }
                // The room already forgot this session: no disconnect notice needed.
                self.close(ctx, ws::CloseCode::from(code), reason);
            }
        }
    }

    /// The room dropped its end without a close: nothing to do (the socket stays open).
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for SessionActor {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let msg = match item {
            Ok(m) => m,
            Err(ws::ProtocolError::Overflow) => {
                let limit = self.shared.config.limits.max_message_bytes;
                return self.close(
                    ctx,
                    ws::CloseCode::Size,
                    &format!("frame over {limit} bytes"),
                );
            }
            Err(e) => {
                tracing::debug!(error = %e, "websocket protocol error");
                return self.close(ctx, ws::CloseCode::Protocol, "protocol error");
            }
        };
        let text: Option<ByteString> = match msg {
            ws::Message::Text(t) => Some(t),
            ws::Message::Ping(p) => return ctx.pong(&p),
            ws::Message::Pong(_) => return,
            ws::Message::Close(_) => {
                if let State::Joined { member } = &self.state {
                    member.disconnected();
                }
                self.state = State::Closed;
                ctx.close(None);
                return ctx.stop();
            }
            ws::Message::Nop => return,
            // Answered with an error below, after the rate limiter: every data frame costs
            // the server a reply, so every data frame counts against the limit.
            ws::Message::Binary(_) | ws::Message::Continuation(_) => None,
        };
        Metrics::inc(&self.shared.metrics.messages_in);
        if !self.bucket.take(Instant::now()) {
            self.strikes += 1;
            if self.strikes > self.shared.config.limits.message_burst {
                return self.close(ctx, ws::CloseCode::Policy, "message flood");
            }
            return self.reply(
                ctx,
                0,
                Err(RtcError::invalid_operation(
                    None,
                    format!(
                        "too many messages: at most {} per second",
                        self.shared.config.limits.messages_per_second
                    ),
                )),
            );
        }
        let Some(text) = text else {
            return self.reply(
                ctx,
                0,
                Err(RtcError::invalid_parameter(
                    Some(extra::PARAM_TYPE),
                    "binary frames are not part of the protocol; send JSON text frames",
                )),
            );
        };
        self.strikes = 0;
        match decode_client(text.as_bytes()) {
            Ok(env) => self.handle_envelope(env, ctx),
            Err(e) => self.reply(ctx, request_id(text.as_bytes()), Err(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
