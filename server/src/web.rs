//! What the server offers browsers besides signalling: the web SDK (`GET /sdk/trtc.js`, the
//! TRTC Web SDK's API over this server's protocol), a demo page (`GET /`), development
//! UserSigs (`GET /dev/usersig`, off unless configured) and the WebSocket `Origin` check.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use rtcroom_protocol::UserId;
use rtcroom_protocol::usersig::gen_user_sig;
use serde::Deserialize;

use crate::session::SessionShared;

/// The web SDK: a plain script that defines the global `TRTC`.
pub const SDK_JS: &str = include_str!("../assets/trtc.js");
/// The demo page.
pub const DEMO_HTML: &str = include_str!("../assets/index.html");
/// What turns the script into an ES module (`import TRTC from '/sdk/trtc.mjs'`).
const MODULE_TAIL: &str = "\nexport default globalThis.TRTC;\n";
/// Lifetime of a development UserSig, seconds.
pub const DEV_USERSIG_EXPIRE_S: u64 = 86_400;

fn script(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        // Any page may load the SDK (it only talks to the server the page points it at).
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// `GET /sdk/trtc.js`.
pub async fn sdk_js() -> HttpResponse {
    script(SDK_JS.to_owned())
}

/// `GET /sdk/trtc.mjs`: the same script as an ES module with a default export.
pub async fn sdk_mjs() -> HttpResponse {
    script(format!("{SDK_JS}{MODULE_TAIL}"))
}

/// `GET /`.
pub async fn demo_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(DEMO_HTML)
}

/// Query of `GET /dev/usersig`.
#[derive(Deserialize)]
pub struct DevUserSigQuery {
    #[serde(rename = "userId")]
    user_id: String,
    #[serde(rename = "sdkAppId")]
    sdk_app_id: Option<u32>,
}

fn json_error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message }))
}

/// `GET /dev/usersig?userId=alice[&sdkAppId=N]`: a UserSig for that user, signed with the
/// app's key, like TRTC's `GenerateTestUserSig`. Development only: whoever can reach it can
/// join as anyone, so it answers 404 unless `web.dev_usersig` is on (the embedded default
/// turns it on when it listens on loopback only).
pub async fn dev_usersig(
    req: HttpRequest,
    query: Option<web::Query<DevUserSigQuery>>,
    shared: web::Data<std::sync::Arc<SessionShared>>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let config = &shared.config;
    if !config.web.dev_usersig {
        return json_error(
            StatusCode::NOT_FOUND,
            "this server does not hand out development UserSigs (web.dev_usersig is off)",
        );
    }
    let Some(web::Query(q)) = query else {
        return json_error(StatusCode::BAD_REQUEST, "userId is required: ?userId=alice");
    };
    let user = match UserId::new(&q.user_id) {
        Ok(u) => u,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.message),
    };
    let app = match q.sdk_app_id {
        Some(id) => config.app(id),
        None => config.apps.first(),
    };
    let Some(app) = app else {
        return json_error(StatusCode::NOT_FOUND, "no such sdkAppId on this server");
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sig = gen_user_sig(
        u64::from(app.sdk_app_id),
        &app.secret_key,
        user.as_str(),
        DEV_USERSIG_EXPIRE_S,
        now,
    );
    let mut reply = HttpResponse::Ok();
    if let Some(origin) = allowed_origin(&req, &config.web.allowed_origins) {
        reply.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin));
        reply.insert_header((header::VARY, "Origin"));
    }
    reply.json(serde_json::json!({
        "sdkAppId": app.sdk_app_id,
        "userId": user.as_str(),
        "userSig": sig,
        "expireS": DEV_USERSIG_EXPIRE_S,
    }))
}

/// The request's `Origin` when the configuration allows it (any, with no list); `None`
/// without an `Origin` header.
fn allowed_origin(req: &HttpRequest, allowed: &[String]) -> Option<String> {
    let origin = req.headers().get(header::ORIGIN)?.to_str().ok()?;
    origin_allowed(Some(origin), allowed).then(|| origin.to_owned())
}

/// Whether a WebSocket (or CORS) request from `origin` is let in. An empty list allows any
/// origin. A request without `Origin` is not from a browser page (browsers always send it on
/// WebSocket upgrades), so the check, which protects users' browsers from other sites
/// (cross-site WebSocket hijacking), lets it through: a non-browser client could send any
/// header it liked anyway. Origins compare as RFC 6454 serialisations, case-insensitively.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        _ if allowed.is_empty() => true,
        None => true,
        Some(o) => {
            let o = o.trim_end_matches('/');
            allowed
                .iter()
                .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(o))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_only_when_listed() {
        let list = vec!["https://app.example.com".to_owned()];
        assert!(origin_allowed(Some("https://evil.example"), &[]));
        assert!(origin_allowed(Some("https://app.example.com"), &list));
        assert!(origin_allowed(Some("HTTPS://App.Example.com/"), &list));
        assert!(!origin_allowed(Some("https://app.example.com:8443"), &list));
        assert!(!origin_allowed(Some("http://app.example.com"), &list));
        assert!(!origin_allowed(Some("null"), &list));
        assert!(origin_allowed(None, &list), "non-browser clients");
        assert!(origin_allowed(Some("https://x"), &["*".to_owned()]));
    }

    #[test]
    fn the_module_form_exports_the_global() {
        assert!(SDK_JS.contains("globalThis.TRTC"));
        assert!(
            !SDK_JS.contains("\nexport "),
            "the script form must not export"
        );
        assert!(MODULE_TAIL.contains("export default globalThis.TRTC"));
    }
}
