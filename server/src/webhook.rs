//! TRTC-format webhooks ("Room & Media callbacks").
//!
//! Body: `{EventGroupId, EventType, CallbackTs, EventInfo{RoomId, EventTs, EventMsTs, UserId,
//! UniqueId, Role, TerminalType, UserType, Reason}}`; headers `Content-Type:
//! application/json`, `Sign: base64(HMAC-SHA256(key, body))`, `SdkAppId`. Delivery: 5 s
//! timeout, one immediate retry, then every 10 s, giving up one minute after the first try.
//! Delivery runs on its own actor, so a slow receiver never blocks a room; at most
//! `webhook.max_in_flight` deliveries (default 256) are in flight (sending or waiting for a
//! retry) at once, and a webhook beyond that is dropped and counted
//! (`rtcroom_webhooks_dropped_total`), with a warning for the first and then every
//! [`DROP_WARN_EVERY`]th drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::config::WebhookConfig;
use crate::metrics::Metrics;
use crate::room::{Hook, RoomKey};

/// Per-attempt timeout.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval between retries after the immediate one.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// Give up this long after the first attempt.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// A warning is logged for the first dropped webhook and then once per this many drops.
pub const DROP_WARN_EVERY: u64 = 100;

/// When to make attempt number `attempt` (0-based), as an offset from the first attempt;
/// `None` once the schedule is over. Attempts: 0 s, 0 s (immediate retry), 10 s, 20 s, … 60 s.
pub fn attempt_offset(attempt: u32) -> Option<Duration> {
    let offset = match attempt {
        0 | 1 => Duration::ZERO,
        n => RETRY_INTERVAL * (n - 1),
    };
    (offset <= GIVE_UP_AFTER).then_some(offset)
}

/// `Sign` header value: base64(HMAC-SHA256(key, body)).
pub fn sign(key: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Body<'a> {
    event_group_id: u32,
    event_type: u32,
    callback_ts: u64,
    event_info: EventInfo<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EventInfo<'a> {
    room_id: &'a rtcroom_protocol::RoomId,
    event_ts: u64,
    event_ms_ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    unique_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<u8>,
    /// rtcroom reports terminal type 0 (not TRTC's native/web values, which are unconfirmed).
    terminal_type: u32,
    /// 0 likewise.
    user_type: u32,
    reason: u32,
}

static UNIQUE: AtomicU64 = AtomicU64::new(1);

/// The JSON body for a hook, stamped with the wall clock `now_ms`.
pub fn body(key: &RoomKey, hook: &Hook, now_ms: u64) -> Vec<u8> {
    let b = Body {
        event_group_id: hook.event.group(),
        event_type: hook.event.event_type(),
        callback_ts: now_ms,
        event_info: EventInfo {
            room_id: &key.room_id,
            event_ts: now_ms / 1000,
            event_ms_ts: now_ms,
            user_id: hook.user_id.as_ref().map(|u| u.as_str()),
            unique_id: UNIQUE.fetch_add(1, Ordering::Relaxed),
            role: hook.role.map(|r| r.trtc_role()),
            terminal_type: 0,
            user_type: 0,
            reason: hook.reason,
        },
    };
    // A struct of numbers and strings always serialises.
    serde_json::to_vec(&b).unwrap_or_default()
}

/// Wall clock in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A webhook to deliver.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    /// Which room.
    pub key: RoomKey,
    /// What happened.
    pub hook: Hook,
}

/// Delivers webhooks; runs on its own arbiter.
pub struct WebhookActor {
    config: Arc<WebhookConfig>,
    metrics: Arc<Metrics>,
    in_flight: Arc<AtomicU64>,
    dropped: u64,
    client: Option<awc::Client>,
}

impl WebhookActor {
    /// A sender to `config`'s URL.
    pub fn new(config: WebhookConfig, metrics: Arc<Metrics>) -> Self {
        WebhookActor {
            config: Arc::new(config),
            metrics,
            in_flight: Arc::new(AtomicU64::new(0)),
            dropped: 0,
            client: None,
        }
    }
}

/// One delivery in flight: counted from its start until it is delivered, given up or
/// cancelled (the task dropped at shutdown).
struct InFlight {
    count: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl InFlight {
    fn start(count: &Arc<AtomicU64>, metrics: &Arc<Metrics>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        metrics.webhooks_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            count: count.clone(),
            metrics: metrics.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .webhooks_in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Actor for WebhookActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.client = Some(awc::Client::builder().timeout(ATTEMPT_TIMEOUT).finish());
    }
}

impl Handler<Deliver> for WebhookActor {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _ctx: &mut Self::Context) {
        // Only this actor starts deliveries, so the count cannot grow between the check and
        // the start below.
        if self.in_flight.load(Ordering::Relaxed) >= self.config.max_in_flight as u64 {
            Metrics::inc(&self.metrics.webhooks_dropped);
            self.dropped += 1;
            if self.dropped % DROP_WARN_EVERY == 1 {
                tracing::warn!(
                    dropped = self.dropped,
                    max_in_flight = self.config.max_in_flight,
                    url = %self.config.url,
                    "webhooks dropped: too many deliveries in flight (receiver slow or down)"
                );
            }
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        let in_flight = InFlight::start(&self.in_flight, &self.metrics);
        let body = body(&msg.key, &msg.hook, now_ms());
        let signature = sign(&self.config.key, &body);
        let url = self.config.url.clone();
        let app = msg.key.sdk_app_id.to_string();
        let metrics = self.metrics.clone();
        actix::spawn(async move {
            let _in_flight = in_flight;
            let start = tokio::time::Instant::now();
            let mut attempt = 0;
            let delivered = loop {
                let Some(offset) = attempt_offset(attempt) else {
                    break false;
                };
                tokio::time::sleep_until(start + offset).await;
                let res = client
                    .post(&url)
                    .insert_header(("Content-Type", "application/json"))
                    .insert_header(("Sign", signature.as_str()))
                    .insert_header(("SdkAppId", app.as_str()))
                    .send_body(body.clone())
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => break true,
                    Ok(r) => tracing::debug!(status = %r.status(), attempt, "webhook refused"),
                    Err(e) => tracing::debug!(error = %e, attempt, "webhook failed"),
                }
                attempt += 1;
            };
            if delivered {
                Metrics::inc(&metrics.webhooks_delivered);
            } else {
                tracing::warn!(url, "webhook given up after retries");
                Metrics::inc(&metrics.webhooks_failed);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::HookEvent;
    use rtcroom_protocol::{Role, RoomId, UserId};

    /// A receiver that accepts connections and never answers holds every delivery in
    /// flight: past `max_in_flight` new webhooks are dropped and counted.
    #[test]
    fn deliveries_in_flight_are_bounded_and_drops_counted() {
        // awc's client needs the process's rustls provider, as in the server.
        crate::server::install_crypto_provider();
        actix_web::rt::System::new().block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
            let silent = tokio::task::spawn_local(async move {
                let mut held = Vec::new();
                while let Ok((sock, _)) = listener.accept().await {
                    held.push(sock);
                    let _ = accepted_tx.send(());
                }
            });
            let metrics = Arc::new(Metrics::default());
            let mut config = WebhookConfig::new(format!("http://{addr}/cb"), "k");
            config.max_in_flight = 2;
            let actor = WebhookActor::new(config, metrics.clone()).start();
            let key = RoomKey {
                sdk_app_id: 1,
                room_id: RoomId::numeric(7).unwrap(),
            };
            for _ in 0..5 {
                let hook = Hook {
                    event: HookEvent::EnterRoom,
                    user_id: Some(UserId::new("alice").unwrap()),
                    role: Some(Role::Anchor),
                    reason: 0,
                };
                // `send` returns once the actor has handled the message.
                actor
                    .send(Deliver {
                        key: key.clone(),
                        hook,
                    })
                    .await
                    .unwrap();
            }
            assert_eq!(metrics.webhooks_dropped.load(Ordering::Relaxed), 3);
            assert_eq!(metrics.webhooks_in_flight.load(Ordering::Relaxed), 2);
            // The two in flight really reach the receiver.
            for _ in 0..2 {
                tokio::time::timeout(Duration::from_secs(10), accepted.recv())
                    .await
                    .expect("a delivery connects in time")
                    .unwrap();
            }
            assert_eq!(metrics.webhooks_delivered.load(Ordering::Relaxed), 0);
            assert_eq!(metrics.webhooks_failed.load(Ordering::Relaxed), 0);
            let text = metrics.render();
            assert!(
                text.contains("\nrtcroom_webhooks_dropped_total 3\n"),
                "{text}"
            );
            assert!(text.contains("\nrtcroom_webhooks_in_flight 2\n"), "{text}");
            silent.abort();
        });
    }

    #[test]
    fn retry_schedule_is_trtcs() {
        let offsets: Vec<u64> = (0..20)
            .map_while(attempt_offset)
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(offsets, vec![0, 0, 10, 20, 30, 40, 50, 60]);
    }

    #[test]
    fn sign_is_base64_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            base64::engine::general_purpose::STANDARD.encode(hex_decode(
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
            ))
        );
    }

    fn hex_decode(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn body_has_trtcs_fields() {
        let key = RoomKey {
            sdk_app_id: 1,
            room_id: RoomId::string("r1").unwrap(),
        };
        let hook = Hook {
            event: HookEvent::EnterRoom,
            user_id: Some(UserId::new("alice").unwrap()),
            role: Some(Role::Audience),
            reason: 1,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&body(&key, &hook, 1_700_000_000_123)).unwrap();
        assert_eq!(v["EventGroupId"], 1);
        assert_eq!(v["EventType"], 103);
        assert_eq!(v["CallbackTs"], 1_700_000_000_123u64);
        assert_eq!(v["EventInfo"]["RoomId"], "r1");
        assert_eq!(v["EventInfo"]["EventTs"], 1_700_000_000u64);
        assert_eq!(v["EventInfo"]["UserId"], "alice");
        assert_eq!(v["EventInfo"]["Role"], 21);
        assert_eq!(v["EventInfo"]["Reason"], 1);
        let key = RoomKey {
            sdk_app_id: 1,
            room_id: RoomId::numeric(42).unwrap(),
        };
        let hook = Hook {
            event: HookEvent::StartVideo,
            user_id: None,
            role: None,
            reason: 0,
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&key, &hook, 0)).unwrap();
        assert_eq!(v["EventGroupId"], 2);
        assert_eq!(v["EventInfo"]["RoomId"], 42);
    }
}
