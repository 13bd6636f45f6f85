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
//! Unauthenticated calls get 401 and change nothing.
//!
//! Replies follow TRTC's envelope: `{"Response": {"RequestId": "...", ...}}`, errors as
//! `{"Response": {"Error": {"Code": "...", "Message": "..."}, "RequestId": "..."}}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rtcroom_protocol::{RoomId, UserId};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

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

static REQUEST_ID: AtomicU64 = AtomicU64::new(1);

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

/// Whether the request carries valid admin credentials.
pub fn authenticated(
    cfg: &AdminConfig,
    req: &HttpRequest,
    action: &str,
    body: &[u8],
    now: u64,
) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let (Some(token), Some(auth)) = (&cfg.token, header("Authorization"))
        && let Some(given) = auth.strip_prefix("Bearer ")
        && !token.is_empty()
    {
        return ct_eq(given.trim().as_bytes(), token.as_bytes());
    }
    if let (Some(key), Some(ts), Some(sig)) = (
        &cfg.hmac_key,
        header("X-Rtcroom-Timestamp"),
        header("X-Rtcroom-Signature"),
    ) && !key.is_empty()
    {
        let Ok(ts) = ts.parse::<u64>() else {
            return false;
        };
        if ts.abs_diff(now) > MAX_SKEW_S {
            return false;
        }
        return ct_eq(
            sig.as_bytes(),
            admin_signature(key, ts, action, body).as_bytes(),
        );
    }
    false
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
    if !authenticated(&shared.config.admin, req, action, body, now) {
        return error(
            StatusCode::UNAUTHORIZED,
            "AuthFailure",
            "missing or wrong admin credentials",
        );
    }
    let string_room = match action {
        "DismissRoom" | "RemoveUser" => Some(false),
        "DismissRoomByStrRoomId" | "RemoveUserByStrRoomId" => Some(true),
        "DescribeRoomInfo" => None,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidAction",
                format!("unknown action {other:?}"),
            );
        }
    };
    let parsed: RoomBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                format!("body: {e}"),
            );
        }
    };
    let use_string = string_room.unwrap_or(parsed.room_id.is_string());
    let room_id = match RoomId::from_json(&parsed.room_id, use_string) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "InvalidParameter", e.message),
    };
    if shared.config.app(parsed.sdk_app_id).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter.SdkAppId",
            format!("sdkAppId {} is not configured", parsed.sdk_app_id),
        );
    }
    let op = match action {
        "DismissRoom" | "DismissRoomByStrRoomId" => AdminOp::Dismiss,
        "DescribeRoomInfo" => AdminOp::Describe,
        _ => {
            if parsed.user_ids.is_empty() || parsed.user_ids.len() > MAX_REMOVE_USERS {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameter.UserIds",
                    format!("UserIds must list 1 to {MAX_REMOVE_USERS} users"),
                );
            }
            let mut users = Vec::new();
            for u in &parsed.user_ids {
                match UserId::new(u) {
                    Ok(u) => users.push(u),
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "InvalidParameter.UserIds",
                            e.message,
                        );
                    }
                }
            }
            AdminOp::Remove(users)
        }
    };
    let key = RoomKey {
        sdk_app_id: parsed.sdk_app_id,
        room_id,
    };
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
}
