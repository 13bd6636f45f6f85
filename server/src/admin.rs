//! Admin REST API with TRTC's action names: `POST /admin/{Action}` (or `POST /admin` with an
//! `X-TC-Action` header) and a JSON body as TRTC's server API takes it.
//!
//! | action | body |
//! |---|---|
//! | `DismissRoom` | `{"SdkAppId": 1400000000, "RoomId": 123}` |
//! | `DismissRoomByStrRoomId` | `{"SdkAppId": 1400000000, "RoomId": "room-a"}` |
//! | `RemoveUser` | `{"SdkAppId": …, "RoomId": 123, "UserIds": ["alice"]}` (≤ 10 users) |
//! | `RemoveUserByStrRoomId` | `{"SdkAppId": …, "RoomId": "room-a", "UserIds": [...]}` |
//! | `DescribeRoomInfo` | `{"SdkAppId": …, "RoomId": 123}` or `"RoomId": "room-a"` |
//!
//! Authentication: `Authorization: Bearer <admin.token>`, or an HMAC-signed request:
//! `X-Rtcroom-Timestamp: <unix seconds>` (within 300 s of the server clock) and
//! `X-Rtcroom-Signature: base64(HMAC-SHA256(admin.hmac_key, "<timestamp>\n<Action>\n<body>"))`.
//! Unauthenticated calls get 401 and change nothing. A signed request is accepted once: the
//! same signature again within its 300 s window gets 401 `AuthFailure` "replayed request"
//! (the signature is the replay key, as the request carries no nonce; a client repeating a
//! call signs it again with a new timestamp). At most [`MAX_REPLAY_ENTRIES`] signed requests
//! are remembered per window; beyond that new signed requests get 429
//! `RequestLimitExceeded` until old ones expire (bearer-token requests are not affected).
//!
//! Replies follow TRTC's envelope: `{"Response": {"RequestId": "...", ...}}`, errors as
//! `{"Response": {"Error": {"Code": "...", "Message": "..."}, "RequestId": "..."}}`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rtcroom_protocol::{RoomId, UserId};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::cluster::{NODE_AUTH_HEADER, Owner, RemoteNode};
use crate::config::AdminConfig;
use crate::registry::{AdminOp, AdminReply};
use crate::room::RoomKey;
use crate::session::SessionShared;

/// Largest admin request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Allowed clock difference for signed requests.
pub const MAX_SKEW_S: u64 = 300;
/// TRTC's limit on users per RemoveUser call.
pub const MAX_REMOVE_USERS: usize = 10;

/// Signed requests remembered against replay, at most, within one ±[`MAX_SKEW_S`] window
/// (about 100 bytes each: ~1 MB).
pub const MAX_REPLAY_ENTRIES: usize = 10_000;

static REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// Why a signed request was not admitted by the [`ReplayCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayRefusal {
    /// This signature was already used and its window has not ended.
    Replayed,
    /// The cache holds its maximum of unexpired signatures: refuse rather than forget one
    /// (forgetting would let that request be replayed).
    Full,
}

/// Signatures of signed admin requests seen within their ±[`MAX_SKEW_S`] window. Plain
/// logic: the caller passes the wall clock `now` (unix seconds).
#[derive(Debug)]
pub struct ReplayCache {
    /// Signature → the last second at which its request is still within the window.
    seen: HashMap<String, u64>,
    /// The earliest expiry in `seen` (`u64::MAX` when empty): nothing to prune before it.
    next_expiry: u64,
    capacity: usize,
}

impl ReplayCache {
    /// A cache that remembers at most `capacity` unexpired signatures.
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache {
            seen: HashMap::new(),
            next_expiry: u64::MAX,
            capacity,
        }
    }

    /// Admit a request signed at `timestamp` with `signature` (already verified), once.
    pub fn admit(
        &mut self,
        signature: &str,
        timestamp: u64,
        now: u64,
    ) -> Result<(), ReplayRefusal> {
        self.prune(now);
        if self.seen.contains_key(signature) {
            return Err(ReplayRefusal::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(ReplayRefusal::Full);
        }
        // Accepted while |timestamp - now| <= MAX_SKEW_S: replayable until timestamp + that.
        let expiry = timestamp.saturating_add(MAX_SKEW_S);
        self.seen.insert(signature.to_owned(), expiry);
        self.next_expiry = self.next_expiry.min(expiry);
        Ok(())
    }

    /// Forget signatures whose window ended before `now`.
    fn prune(&mut self, now: u64) {
        if now <= self.next_expiry {
            return;
        }
        self.seen.retain(|_, expiry| *expiry >= now);
        self.next_expiry = self.seen.values().copied().min().unwrap_or(u64::MAX);
    }

    /// Signatures remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A server's replay cache (one per server, so several servers in one process, as in the
/// cluster tests, each keep their own as separate processes would).
pub fn replay_cache() -> Mutex<ReplayCache> {
    Mutex::new(ReplayCache::new(MAX_REPLAY_ENTRIES))
}

fn request_id() -> String {
    format!("rtcroom-{}", REQUEST_ID.fetch_add(1, Ordering::Relaxed))
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "Response": {
            "Error": { "Code": code, "Message": message.into() },
            "RequestId": request_id(),
        }
    }))
}

/// Constant-time equality for secrets.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The HMAC signature an admin client sends for `action` and `body` at `timestamp`.
pub fn admin_signature(key: &str, timestamp: u64, action: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(action.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Valid admin credentials a request carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The bearer token.
    Token,
    /// A valid HMAC signature made at `timestamp` (still to be checked against replay).
    Signed {
        /// The signed `X-Rtcroom-Timestamp`.
        timestamp: u64,
        /// The `X-Rtcroom-Signature`.
        signature: String,
    },
}

/// The valid admin credentials the request carries, if any.
pub fn authenticate(
    cfg: &AdminConfig,
    req: &HttpRequest,
    action: &str,
    body: &[u8],
    now: u64,
) -> Option<Credential> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    check_credentials(
        cfg,
        header("Authorization"),
        header("X-Rtcroom-Timestamp"),
        header("X-Rtcroom-Signature"),
        action,
        body,
        now,
    )
}

/// [`authenticate`] on the header values themselves (`Authorization`,
/// `X-Rtcroom-Timestamp`, `X-Rtcroom-Signature`): plain logic, for tests and fuzzing.
#[doc(hidden)]
pub fn check_credentials(
    cfg: &AdminConfig,
    authorization: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    action: &str,
    body: &[u8],
    now: u64,
) -> Option<Credential> {
    if let (Some(token), Some(auth)) = (&cfg.token, authorization)
        && let Some(given) = auth.strip_prefix("Bearer ")
        && !token.is_empty()
    {
        return ct_eq(given.trim().as_bytes(), token.as_bytes()).then_some(Credential::Token);
    }
    if let (Some(key), Some(ts), Some(sig)) = (&cfg.hmac_key, timestamp, signature)
        && !key.is_empty()
    {
        let ts = ts.parse::<u64>().ok()?;
        if ts.abs_diff(now) > MAX_SKEW_S {
            return None;
        }
        return ct_eq(
            sig.as_bytes(),
            admin_signature(key, ts, action, body).as_bytes(),
        )
        .then(|| Credential::Signed {
            timestamp: ts,
            signature: sig.to_owned(),
        });
    }
    None
}

/// Whether the request carries valid admin credentials (replays not considered).
pub fn authenticated(
    cfg: &AdminConfig,
    req: &HttpRequest,
    action: &str,
    body: &[u8],
    now: u64,
) -> bool {
    authenticate(cfg, req, action, body, now).is_some()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoomBody {
    sdk_app_id: u32,
    room_id: serde_json::Value,
    #[serde(default)]
    user_ids: Vec<String>,
}

/// `POST /admin/{action}`.
pub async fn admin_action(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    shared: web::Data<std::sync::Arc<SessionShared>>,
) -> HttpResponse {
    handle(&req, &path.into_inner(), &body, &shared).await
}

/// `POST /admin` with `X-TC-Action`.
pub async fn admin_header(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<std::sync::Arc<SessionShared>>,
) -> HttpResponse {
    let action = req
        .headers()
        .get("X-TC-Action")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    handle(&req, &action, &body, &shared).await
}

async fn handle(
    req: &HttpRequest,
    action: &str,
    body: &[u8],
    shared: &SessionShared,
) -> HttpResponse {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match authenticate(&shared.config.admin, req, action, body, now) {
        None => {
            return error(
                StatusCode::UNAUTHORIZED,
                "AuthFailure",
                "missing or wrong admin credentials",
            );
        }
        Some(Credential::Token) => {}
        Some(Credential::Signed {
            timestamp,
            signature,
        }) => {
            let cluster = shared.registry.cluster();
            let admitted = if cluster.is_some_and(|c| forwarded(req, c)) {
                // The node that forwarded it checked it against replay, here and in Redis.
                Ok(())
            } else {
                // A poisoned lock only means another request panicked while holding it; the
                // map is still a valid map.
                let local = shared
                    .replays
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .admit(&signature, timestamp, now);
                // In a cluster, once on any node: the first node to see a signed request
                // records it in Redis.
                match (local, cluster) {
                    (Ok(()), Some(c)) => c
                        .first_use(&format!("admin:{signature}"), 2 * MAX_SKEW_S)
                        .await
                        .then_some(())
                        .ok_or(ReplayRefusal::Replayed),
                    (local, _) => local,
                }
            };
            match admitted {
                Ok(()) => {}
                Err(ReplayRefusal::Replayed) => {
                    tracing::warn!(action, "admin: replayed signed request refused");
                    return error(StatusCode::UNAUTHORIZED, "AuthFailure", "replayed request");
                }
                Err(ReplayRefusal::Full) => {
                    return error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "RequestLimitExceeded",
                        format!(
                            "more than {MAX_REPLAY_ENTRIES} signed admin requests within \
                             {MAX_SKEW_S} s; retry later"
                        ),
                    );
                }
            }
        }
    }
    let request = match parse_request(action, body, |app| shared.config.app(app).is_some()) {
        Ok(r) => r,
        Err(r) => return error(r.status, r.code, r.message),
    };
    let (key, op) = (request.key, request.op);
    // In a cluster, a room on another node is acted on there (a request another node
    // forwarded here is answered here, whatever the directory says, so it cannot loop).
    let forwarded = shared.registry.cluster().is_some_and(|c| forwarded(req, c));
    if !forwarded {
        match shared.registry.route_lookup(&key).await {
            Ok(Owner::Here) => {}
            Ok(Owner::Node(node)) => return forward(req, body, &node, shared).await,
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "FailedOperation",
                    e.message,
                );
            }
        }
    }
    match shared.registry.admin(key, op).await {
        Ok(AdminReply::Done) => {
            HttpResponse::Ok().json(json!({ "Response": { "RequestId": request_id() } }))
        }
        Ok(AdminReply::Info(info)) => HttpResponse::Ok().json(json!({
            "Response": { "RoomInfo": info, "RequestId": request_id() }
        })),
        Err(e) => error(
            StatusCode::NOT_FOUND,
            "FailedOperation.RoomNotExist",
            e.message,
        ),
    }
}

/// Whether another node of the cluster forwarded this request here.
fn forwarded(req: &HttpRequest, cluster: &crate::cluster::Cluster) -> bool {
    req.headers()
        .get(NODE_AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| cluster.check_credential(v))
        .is_some()
}

/// Headers of an admin request that travel with it to the room's node.
const FORWARDED_HEADERS: [&str; 5] = [
    "authorization",
    "x-rtcroom-timestamp",
    "x-rtcroom-signature",
    "x-tc-action",
    "content-type",
];

/// Send an admin request on to the node owning its room (it checks the credentials again)
/// and answer with that node's response.
async fn forward(
    req: &HttpRequest,
    body: &[u8],
    node: &RemoteNode,
    shared: &SessionShared,
) -> HttpResponse {
    let Some(cluster) = shared.registry.cluster() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "no cluster",
        );
    };
    let url = node.same_request(req);
    let mut out = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .finish()
        .post(url.as_str())
        .insert_header((NODE_AUTH_HEADER, cluster.credential()));
    for name in FORWARDED_HEADERS {
        if let Some(v) = req.headers().get(name) {
            out = out.insert_header((name, v.clone()));
        }
    }
    let sent = out.send_body(body.to_vec()).await;
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(node = node.id, url, error = %e, "admin: room's node unreachable");
            return error(
                StatusCode::BAD_GATEWAY,
                "FailedOperation",
                format!("the room's node {} is unreachable: {e}", node.id),
            );
        }
    };
    let status = resp.status();
    let content_type = resp.headers().get("content-type").cloned();
    match resp.body().limit(MAX_BODY.max(1 << 20)).await {
        Ok(bytes) => {
            let mut b = HttpResponse::build(status);
            if let Some(ct) = content_type {
                b.insert_header(("content-type", ct));
            }
            b.body(bytes)
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            "FailedOperation",
            format!("the room's node {} answered badly: {e}", node.id),
        ),
    }
}

/// An admin request that [`parse_request`] accepted: the room and what to do with it.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct AdminRequest {
    /// The room.
    pub key: RoomKey,
    /// The operation.
    pub op: AdminOp,
}

/// Why [`parse_request`] refused a request: the HTTP status, TRTC's error code and a message.
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// TRTC error code (`InvalidParameter`, ...).
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Refusal {
    fn bad_request(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }
}

/// An authenticated admin request's action and body, checked: the action is known, the body
/// names a room of an app for which `app_configured` holds and, for RemoveUser, 1 to
/// [`MAX_REMOVE_USERS`] valid user ids. Plain logic (the handler's, for tests and fuzzing).
#[doc(hidden)]
pub fn parse_request(
    action: &str,
    body: &[u8],
    app_configured: impl Fn(u32) -> bool,
) -> Result<AdminRequest, Refusal> {
    let string_room = match action {
        "DismissRoom" | "RemoveUser" => Some(false),
        "DismissRoomByStrRoomId" | "RemoveUserByStrRoomId" => Some(true),
        "DescribeRoomInfo" => None,
        other => {
            return Err(Refusal::bad_request(
                "InvalidAction",
                format!("unknown action {other:?}"),
            ));
        }
    };
    let parsed: RoomBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return Err(Refusal::bad_request(
                "InvalidParameter",
                format!("body: {e}"),
            ));
        }
    };
    let use_string = string_room.unwrap_or(parsed.room_id.is_string());
    let room_id = match RoomId::from_json(&parsed.room_id, use_string) {
        Ok(r) => r,
        Err(e) => return Err(Refusal::bad_request("InvalidParameter", e.message)),
    };
    if !app_configured(parsed.sdk_app_id) {
        return Err(Refusal::bad_request(
            "InvalidParameter.SdkAppId",
            format!("sdkAppId {} is not configured", parsed.sdk_app_id),
        ));
    }
    let op = match action {
        "DismissRoom" | "DismissRoomByStrRoomId" => AdminOp::Dismiss,
        "DescribeRoomInfo" => AdminOp::Describe,
        _ => {
            if parsed.user_ids.is_empty() || parsed.user_ids.len() > MAX_REMOVE_USERS {
                return Err(Refusal::bad_request(
                    "InvalidParameter.UserIds",
                    format!("UserIds must list 1 to {MAX_REMOVE_USERS} users"),
                ));
            }
            let mut users = Vec::new();
            for u in &parsed.user_ids {
                match UserId::new(u) {
                    Ok(u) => users.push(u),
                    Err(e) => {
                        return Err(Refusal::bad_request("InvalidParameter.UserIds", e.message));
                    }
                }
            }
            AdminOp::Remove(users)
        }
    };
    Ok(AdminRequest {
        key: RoomKey {
            sdk_app_id: parsed.sdk_app_id,
            room_id,
        },
        op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn a_signature_is_admitted_once_within_its_window() {
        let ts = 1_700_000_000;
        let mut cache = ReplayCache::new(10);
        assert_eq!(cache.admit("sig-a", ts, ts), Ok(()));
        assert_eq!(
            cache.admit("sig-a", ts, ts + 1),
            Err(ReplayRefusal::Replayed)
        );
        assert_eq!(cache.admit("sig-b", ts, ts + 1), Ok(()), "another request");
        // Still refused on the window's last second (the signature is still accepted then)...
        assert_eq!(
            cache.admit("sig-a", ts, ts + MAX_SKEW_S),
            Err(ReplayRefusal::Replayed)
        );
        assert_eq!(cache.len(), 2);
        // ...and forgotten after it, when the timestamp check refuses the request anyway.
        assert_eq!(cache.admit("sig-c", ts + 301, ts + MAX_SKEW_S + 1), Ok(()));
        assert_eq!(cache.len(), 1, "sig-a and sig-b expired");
        // A timestamp from the future (within the skew) is remembered until it is stale.
        assert_eq!(cache.admit("sig-d", ts + 900, ts + 700), Ok(()));
        assert_eq!(
            cache.admit("sig-d", ts + 900, ts + 1200),
            Err(ReplayRefusal::Replayed)
        );
        assert_eq!(cache.admit("sig-e", ts + 1200, ts + 1200), Ok(()));
        assert_eq!(cache.len(), 2, "sig-c expired, sig-d kept");
    }

    #[test]
    fn a_full_replay_cache_refuses_rather_than_forgets() {
        let ts = 1_700_000_000;
        let mut cache = ReplayCache::new(2);
        assert_eq!(cache.admit("a", ts, ts), Ok(()));
        assert_eq!(cache.admit("b", ts + 10, ts + 10), Ok(()));
        assert_eq!(cache.admit("c", ts + 10, ts + 10), Err(ReplayRefusal::Full));
        assert_eq!(cache.admit("a", ts, ts + 10), Err(ReplayRefusal::Replayed));
        assert_eq!(cache.len(), 2);
        // Once "a" expires there is room again; "b" is still remembered.
        assert_eq!(cache.admit("c", ts + 301, ts + 301), Ok(()));
        assert_eq!(
            cache.admit("b", ts + 10, ts + 301),
            Err(ReplayRefusal::Replayed)
        );
        assert!(!cache.is_empty());
    }

    #[test]
    fn auth_by_token_and_signature() {
        let cfg = AdminConfig {
            token: Some("tok".into()),
            hmac_key: Some("key".into()),
        };
        let now = 1_700_000_000;
        let req = actix_web::test::TestRequest::default()
            .insert_header(("Authorization", "Bearer tok"))
            .to_http_request();
        assert!(authenticated(&cfg, &req, "DismissRoom", b"{}", now));
        let req = actix_web::test::TestRequest::default()
            .insert_header(("Authorization", "Bearer nope"))
            .to_http_request();
        assert!(!authenticated(&cfg, &req, "DismissRoom", b"{}", now));
        let sig = admin_signature("key", now, "DismissRoom", b"{}");
        let req = actix_web::test::TestRequest::default()
            .insert_header(("X-Rtcroom-Timestamp", now.to_string()))
            .insert_header(("X-Rtcroom-Signature", sig.clone()))
            .to_http_request();
        assert!(authenticated(&cfg, &req, "DismissRoom", b"{}", now));
        assert!(
            !authenticated(&cfg, &req, "RemoveUser", b"{}", now),
            "action is signed"
        );
        assert!(
            !authenticated(&cfg, &req, "DismissRoom", b"{ }", now),
            "body is signed"
        );
        assert!(
            !authenticated(&cfg, &req, "DismissRoom", b"{}", now + 301),
            "stale"
        );
        let none = actix_web::test::TestRequest::default().to_http_request();
        assert!(!authenticated(&cfg, &none, "DismissRoom", b"{}", now));
        assert!(!authenticated(
            &AdminConfig::default(),
            &none,
            "DismissRoom",
            b"{}",
            now
        ));
    }

    #[test]
    fn requests_are_checked_in_the_handlers_order() {
        let known = |app: u32| app == 1400000000;
        let code = |action: &str, body: &str| {
            parse_request(action, body.as_bytes(), known)
                .map(|r| format!("{:?} {}", r.op, r.key))
                .unwrap_or_else(|r| r.code.to_owned())
        };
        assert_eq!(code("Nope", "{}"), "InvalidAction");
        assert_eq!(code("DismissRoom", "{"), "InvalidParameter");
        assert_eq!(
            code("DismissRoom", r#"{"SdkAppId":1400000000,"RoomId":"a"}"#),
            "InvalidParameter"
        );
        assert_eq!(
            code("DismissRoom", r#"{"SdkAppId":1,"RoomId":5}"#),
            "InvalidParameter.SdkAppId"
        );
        // The app is checked before the user ids.
        assert_eq!(
            code("RemoveUser", r#"{"SdkAppId":1,"RoomId":5}"#),
            "InvalidParameter.SdkAppId"
        );
        assert_eq!(
            code("RemoveUser", r#"{"SdkAppId":1400000000,"RoomId":5}"#),
            "InvalidParameter.UserIds"
        );
        assert_eq!(
            code(
                "RemoveUserByStrRoomId",
                r#"{"SdkAppId":1400000000,"RoomId":"r","UserIds":["a b"]}"#
            ),
            "InvalidParameter.UserIds"
        );
        assert_eq!(
            code(
                "RemoveUserByStrRoomId",
                r#"{"SdkAppId":1400000000,"RoomId":"r","UserIds":["alice"]}"#
            ),
            r#"Remove([UserId("alice")]) 1400000000/"r""#
        );
        assert_eq!(
            code("DescribeRoomInfo", r#"{"SdkAppId":1400000000,"RoomId":7}"#),
            "Describe 1400000000/7"
        );
    }
}
