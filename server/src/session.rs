//! `SessionActor`: one per WebSocket connection. It checks the join (credentials, ids), rate
//! limits and size-limits frames, forwards requests to its room and writes replies and events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_web_actors::ws;
use bytestring::ByteString;
use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::{
    ClientEnvelope, ClientMessage, JoinRequest, PROTOCOL_VERSION, Reply, ReplyData, ReplyResult,
    ServerMessage, decode_client, encode, events_frame, joined_reply_frame, request_id,
};
use rtcroom_protocol::usersig::{verify_private_map_key, verify_user_sig};
use rtcroom_protocol::{ErrorCode, RtcError};

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::registry::{JoinRoom, Registry, RoomActor, RoomDisconnected, RoomRequest, ToSession};
use crate::room::{JoinInput, RoomKey, SessionId};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

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
    /// In a room.
    Joined { room: Addr<RoomActor> },
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
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
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

    /// Check the join's credentials and ids; on success, what the room needs.
    fn check_join(&self, j: &JoinRequest) -> Result<(RoomKey, JoinInput), RtcError> {
        let config = &self.shared.config;
        let app = config.app(j.sdk_app_id).ok_or_else(|| {
            RtcError::with_extra(
                ErrorCode::SignalChannelSetupFailed,
                extra::SDKAPPID_NOT_FOUND,
                format!("sdkAppId {} is not configured on this server", j.sdk_app_id),
            )
        })?;
        let room_id = j.room()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let app_id = u64::from(j.sdk_app_id);
        verify_user_sig(
            &j.user_sig,
            app_id,
            &app.secret_key,
            j.user_id.as_str(),
            now,
        )?;
        let privileges = match &j.private_map_key {
            Some(key) => Some(
                verify_private_map_key(
                    key,
                    app_id,
                    &app.secret_key,
                    j.user_id.as_str(),
                    &room_id,
                    now,
                )?
                .privileges(),
            ),
            None if app.require_private_map_key => {
                return Err(RtcError::with_extra(
                    ErrorCode::JoinRoomFailed,
                    extra::PRIVILEGE_FLAG_ERROR,
                    "this app requires a privateMapKey to join",
                ));
            }
            None => None,
        };
        Ok((
            RoomKey {
                sdk_app_id: j.sdk_app_id,
                room_id,
            },
            JoinInput {
                session: self.id,
                user_id: j.user_id.clone(),
                mode: j.mode,
                role: j.role,
                privileges,
            },
        ))
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
                let (key, input) = match self.check_join(&j) {
                    Ok(v) => v,
                    Err(e) => return self.join_failed(ctx, id, e),
                };
                // The join runs to completion here (no await): nothing else of this session
                // is handled before its reply is written.
                let req = JoinRoom {
                    key,
                    input,
                    recipient: ctx.address().recipient(),
                };
                match self.shared.registry.join(req) {
                    Ok((result, room)) => {
                        self.state = State::Joined { room };
                        Metrics::inc(&self.shared.metrics.joins);
                        let frame = joined_reply_frame(id, result.result, &result.members_json);
                        self.send_text(ctx, frame);
                    }
                    Err(e) => self.join_failed(ctx, id, e),
                }
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
            (State::Joined { room }, msg) => {
                let leaving = matches!(msg, ClientMessage::Leave);
                let fut = room
                    .send(RoomRequest {
                        session: self.id,
                        msg,
                    })
                    .into_actor(self)
                    .map(move |res, act, ctx| {
                        let res = res.unwrap_or_else(|_| {
                            Err(RtcError::invalid_operation(
                                Some(extra::NOT_ENTERED_ROOM),
                                "the room has closed",
                            ))
                        });
                        act.reply(ctx, id, res);
                        if leaving {
                            act.close(ctx, ws::CloseCode::Normal, "left");
                        }
                    });
                ctx.wait(fut);
            }
            (State::Closed, _) => {}
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
        if let State::Joined { room } = &self.state {
            room.do_send(RoomDisconnected { session: self.id });
        }
    }
}

impl Handler<ToSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            ToSession::Events(events) => {
                if let Some(frame) = events_frame(&events) {
                    ctx.text(frame);
                }
            }
            ToSession::Close { last, code, reason } => {
                if let Some(frame) = events_frame(&last) {
                    ctx.text(frame);
                }
                // The room already forgot this session: no disconnect notice needed.
                self.close(ctx, code, reason);
            }
        }
    }
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
                if let State::Joined { room } = &self.state {
                    room.do_send(RoomDisconnected { session: self.id });
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
