//! WHIP (RFC 9725) ingest and WHEP egress: publishing into and viewing from a room with one
//! HTTP request and no SDK.
//!
//! - `POST /whip/{sdkAppId}/{userId}?roomId=123` (or `?strRoomId=class-1`, optional
//!   `&privateMapKey=…`) with an SDP offer and `Authorization: Bearer <UserSig>`: the user
//!   joins the room as a [`LinkKind::Whip`] member and publishes its main stream; the answer
//!   comes back with `201 Created` and `Location: /whip/resource/{id}`.
//! - `POST /whep/{sdkAppId}/{userId}?roomId=123&publisher=alice[&stream=main|auxiliary]`: the
//!   user joins as a [`LinkKind::Whep`] member and subscribes to that publisher's stream;
//!   `Location: /whep/resource/{id}`.
//! - `DELETE` on the resource leaves the room; `PATCH` (trickle ICE, ICE restart) is not
//!   supported: 405. `OPTIONS` answers CORS preflights on both paths.
//!
//! WHIP and WHEP members take the mode of the room they enter (rtc when it does not exist
//! yet): in a live room the publisher is an anchor and the viewer audience.
//!
//! Each resource is one entry of [`WhipResources`] plus a driver task that reads the member's
//! link: events are dropped (there is nobody to tell), and a close from the room (kicked,
//! dismissed, shutting down) ends the resource. The table is bounded
//! (`limits.max_whip_resources`); beyond it a new POST gets 503.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use rand::Rng;
use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::{
    ClientMessage, JoinRequest, MediaKind, PublishRequest, ReplyData, StreamType, SubscribeRequest,
};
use rtcroom_protocol::{ErrorCode, Mode, Role, RtcError, UserId};
use serde::Deserialize;

use crate::link::{LinkKind, LinkRx, Outgoing};
use crate::registry::Member;
use crate::session::SessionShared;

/// Resources the table holds by default (`limits.max_whip_resources`).
pub const DEFAULT_MAX_RESOURCES: usize = 1000;

/// Methods allowed on an endpoint (`/whip/{app}/{user}`).
const ENDPOINT_METHODS: &str = "POST, OPTIONS";
/// Methods allowed on a resource (`/whip/resource/{id}`); PATCH is answered 405.
const RESOURCE_METHODS: &str = "DELETE, OPTIONS";
/// Request headers a browser may send cross-origin.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, If-Match";
/// Response headers a cross-origin page may read.
const EXPOSE_HEADERS: &str = "Location, ETag, Link";

/// Which of the two protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// WHIP: the client publishes.
    Ingest,
    /// WHEP: the client views.
    Egress,
}

impl Direction {
    fn prefix(self) -> &'static str {
        match self {
            Direction::Ingest => "whip",
            Direction::Egress => "whep",
        }
    }

    fn link_kind(self) -> LinkKind {
        match self {
            Direction::Ingest => LinkKind::Whip,
            Direction::Egress => LinkKind::Whep,
        }
    }
}

struct Resource {
    direction: Direction,
    member: Member,
}

#[derive(Default)]
struct Table {
    resources: HashMap<String, Resource>,
    /// POSTs under way that hold a place in the table.
    reserved: usize,
}

/// The live WHIP/WHEP resources, shared by every HTTP worker (app data).
pub struct WhipResources {
    table: Mutex<Table>,
    max: usize,
}

/// A place in the table held by a POST under way; given back on drop unless filled.
struct Reservation<'a> {
    owner: &'a Arc<WhipResources>,
    filled: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.filled {
            self.owner.lock().reserved -= 1;
        }
    }
}

impl WhipResources {
    /// An empty table holding at most `max` resources.
    pub fn new(max: usize) -> Arc<WhipResources> {
        Arc::new(WhipResources {
            table: Mutex::new(Table::default()),
            max: max.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while holding the lock (map operations only); a poisoned lock still
        // holds a consistent map.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resources now held.
    pub fn len(&self) -> usize {
        self.lock().resources.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn reserve(self: &Arc<Self>) -> Option<Reservation<'_>> {
        let mut t = self.lock();
        if t.resources.len() + t.reserved >= self.max {
            return None;
        }
        t.reserved += 1;
        Some(Reservation {
            owner: self,
            filled: false,
        })
    }

    /// Fill a reservation: the resource's id.
    fn insert(&self, mut r: Reservation<'_>, resource: Resource) -> String {
        let id = random_token();
        let mut t = self.lock();
        t.reserved -= 1;
        r.filled = true;
        t.resources.insert(id.clone(), resource);
        id
    }

    fn remove(&self, id: &str) -> Option<Resource> {
        self.lock().resources.remove(id)
    }

    fn direction_of(&self, id: &str) -> Option<Direction> {
        self.lock().resources.get(id).map(|r| r.direction)
    }

    /// Leave the room for every resource (server shutdown is handled by the rooms; this is
    /// for completeness in tests and tools).
    pub async fn clear(&self) {
        let all: Vec<Resource> = self.lock().resources.drain().map(|(_, r)| r).collect();
        for r in all {
            let _ = r.member.request(ClientMessage::Leave).await;
        }
    }
}

/// 128 random bits, hex: a resource id (the resource URL is its own capability) or an ETag.
fn random_token() -> String {
    let n: u128 = rand::thread_rng().r#gen();
    format!("{n:032x}")
}

/// Read the member's link until the room closes it, then forget the resource.
fn drive(table: Arc<WhipResources>, id: String, mut rx: LinkRx) {
    actix_web::rt::spawn(async move {
        loop {
            match rx.recv().await {
                // Room events: a WHIP/WHEP client has no channel to hear them on.
                Some(Outgoing::Events(_)) => {}
                Some(Outgoing::Close { code, reason, .. }) => {
                    tracing::debug!(%id, code, reason, "whip/whep resource closed by its room");
                    break;
                }
                // The room dropped the member (it left through DELETE, or the room ended).
                None => break,
            }
        }
        table.remove(&id);
    });
}

// ---- errors ----------------------------------------------------------------------------------

/// An HTTP refusal carrying TRTC's error.
struct Refusal {
    status: StatusCode,
    error: RtcError,
    /// Where to go instead (a `307` to the node owning the room).
    location: Option<String>,
}

impl Refusal {
    fn new(status: StatusCode, error: RtcError) -> Refusal {
        Refusal {
            status,
            error,
            location: None,
        }
    }

    /// The room lives on another node of the cluster: the client repeats its request there
    /// (RFC 9725 lets a WHIP endpoint redirect with `307`, which keeps the method and body).
    fn elsewhere(node: &crate::cluster::RemoteNode, req: &HttpRequest) -> Refusal {
        Refusal {
            status: StatusCode::TEMPORARY_REDIRECT,
            error: RtcError::new(
                ErrorCode::JoinRoomFailed,
                format!("the room lives on node {}", node.id),
            ),
            location: Some(node.same_request(req)),
        }
    }
}

impl From<RtcError> for Refusal {
    fn from(error: RtcError) -> Refusal {
        Refusal::new(status_of(&error), error)
    }
}

/// The HTTP status for a TRTC error.
pub fn status_of(e: &RtcError) -> StatusCode {
    match e.code {
        ErrorCode::InvalidParameter | ErrorCode::NotSupported => StatusCode::BAD_REQUEST,
        ErrorCode::SignalChannelSetupFailed if e.extra_code == Some(extra::SDKAPPID_NOT_FOUND) => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::SignalChannelSetupFailed => StatusCode::UNAUTHORIZED,
        ErrorCode::RemoteStreamNotExist => StatusCode::NOT_FOUND,
        ErrorCode::JoinRoomFailed => match e.extra_code {
            Some(extra::ROOM_FULL) => StatusCode::SERVICE_UNAVAILABLE,
            Some(extra::BAD_SCENE_OR_ROLE) => StatusCode::CONFLICT,
            Some(_) => StatusCode::FORBIDDEN,
            // No server code: the server is shutting down, or the room closed meanwhile.
            None => StatusCode::SERVICE_UNAVAILABLE,
        },
        ErrorCode::InvalidOperation => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

// ---- CORS ------------------------------------------------------------------------------------

/// The request's `Origin`, or `None` without one; `Err` when the configuration refuses it.
fn origin(req: &HttpRequest, shared: &SessionShared) -> Result<Option<String>, ()> {
    let Some(o) = req.headers().get(header::ORIGIN) else {
        return Ok(None);
    };
    let o = o.to_str().map_err(|_| ())?;
    if crate::web::origin_allowed(Some(o), &shared.config.web.allowed_origins) {
        Ok(Some(o.to_owned()))
    } else {
        Err(())
    }
}

fn cors(b: &mut HttpResponseBuilder, origin: &Option<String>) {
    if let Some(o) = origin
        && let Ok(v) = HeaderValue::from_str(o)
    {
        b.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, v));
        b.insert_header((header::VARY, "Origin"));
        b.insert_header((header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS));
    }
}

fn refuse(r: Refusal, origin: &Option<String>) -> HttpResponse {
    let mut b = HttpResponse::build(r.status);
    cors(&mut b, origin);
    if r.status == StatusCode::UNAUTHORIZED {
        b.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
    }
    if r.status == StatusCode::SERVICE_UNAVAILABLE {
        b.insert_header((header::RETRY_AFTER, "5"));
    }
    if let Some(location) = &r.location {
        b.insert_header((header::LOCATION, location.as_str()));
    }
    b.json(serde_json::json!({ "error": r.error }))
}

fn forbidden_origin() -> HttpResponse {
    refuse(
        Refusal::new(
            StatusCode::FORBIDDEN,
            RtcError::invalid_operation(None, "this origin is not allowed (web.allowed_origins)"),
        ),
        &None,
    )
}

fn preflight(req: &HttpRequest, shared: &SessionShared, methods: &'static str) -> HttpResponse {
    let Ok(origin) = origin(req, shared) else {
        return forbidden_origin();
    };
    let mut b = HttpResponse::NoContent();
    cors(&mut b, &origin);
    if origin.is_some() {
        b.insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, methods));
        b.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS));
        b.insert_header((header::ACCESS_CONTROL_MAX_AGE, "86400"));
    }
    b.insert_header((header::ALLOW, methods));
    if methods == ENDPOINT_METHODS {
        b.insert_header(("Accept-Post", "application/sdp"));
    }
    b.finish()
}

// ---- endpoints -------------------------------------------------------------------------------

/// The query of a WHIP or WHEP endpoint.
#[derive(Debug, Default, Deserialize)]
pub struct EndpointQuery {
    #[serde(rename = "roomId")]
    room_id: Option<String>,
    #[serde(rename = "strRoomId")]
    str_room_id: Option<String>,
    #[serde(rename = "privateMapKey")]
    private_map_key: Option<String>,
    /// WHEP: whose stream.
    publisher: Option<String>,
    /// WHEP: which stream (`main`, `auxiliary`).
    stream: Option<String>,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        RtcError::invalid_parameter(None, message),
    )
}

fn bearer(req: &HttpRequest) -> Result<String, Refusal> {
    let unauthorized = |extra_code: i32, m: &str| {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            RtcError::with_extra(ErrorCode::SignalChannelSetupFailed, extra_code, m),
        )
    };
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            extra::SIG_EMPTY,
            "missing `Authorization: Bearer <UserSig>`",
        ));
    };
    let value = value.to_str().unwrap_or("").trim();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(unauthorized(
                extra::SIG_MALFORMED,
                "the Authorization header must be `Bearer <UserSig>`",
            ));
        }
    };
    if token.is_empty() {
        return Err(unauthorized(extra::SIG_EMPTY, "the bearer token is empty"));
    }
    Ok(token.to_owned())
}

fn is_sdp(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/sdp"))
}

/// The join a WHIP/WHEP POST stands for (mode and role are filled in from the room).
fn join_request(
    path: &(String, String),
    q: &EndpointQuery,
    token: String,
) -> Result<JoinRequest, Refusal> {
    let sdk_app_id: u32 = path.0.parse().map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            RtcError::invalid_parameter(
                Some(extra::PARAM_TYPE),
                format!("sdkAppId must be a number, got {:?}", truncate(&path.0)),
            ),
        )
    })?;
    let user_id = UserId::new(&path.1).map_err(Refusal::from)?;
    let (room_id, use_string_room_id) = match (&q.room_id, &q.str_room_id) {
        (Some(r), None) => (r.clone(), false),
        (None, Some(r)) => (r.clone(), true),
        (Some(_), Some(_)) => return Err(bad("give roomId or strRoomId, not both")),
        (None, None) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                RtcError::invalid_parameter(
                    Some(extra::PARAM_REQUIRED),
                    "roomId (numeric room) or strRoomId (string room) is required",
                ),
            ));
        }
    };
    Ok(JoinRequest {
        sdk_app_id,
        user_id,
        user_sig: token,
        room_id,
        use_string_room_id,
        mode: Mode::Rtc,
        role: None,
        private_map_key: q.private_map_key.clone(),
        auto_subscribe: false,
    })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether the offer sends audio / video (its m-lines that are not rejected and send).
fn offer_sends(sdp: &str) -> (bool, bool) {
    let media = crate::media::sdp::parse_media(sdp);
    let sends = |k: MediaKind| media.iter().any(|m| m.kind == k && m.sends);
    (sends(MediaKind::Audio), sends(MediaKind::Video))
}

/// Whether the offer receives audio / video.
fn offer_receives(sdp: &str) -> (bool, bool) {
    let media = crate::media::sdp::parse_media(sdp);
    let recv = |k: MediaKind| media.iter().any(|m| m.kind == k && m.receives);
    (recv(MediaKind::Audio), recv(MediaKind::Video))
}

/// Join the room in its own mode (rtc when it does not exist yet): the publisher an anchor,
/// the viewer audience in a live room. A room that appears in the other mode between lookup
/// and join gets one more try.
async fn join(
    shared: &SessionShared,
    j: &JoinRequest,
    direction: Direction,
    req: &HttpRequest,
) -> Result<(rtcroom_protocol::signal::JoinResult, Member, LinkRx), Refusal> {
    let session = crate::auth::next_session_id();
    let (key, mut input) =
        crate::auth::check_join(&shared.config, j, session, direction.link_kind())?;
    if let crate::cluster::Owner::Node(node) = shared.registry.route_join(&key, false).await? {
        return Err(Refusal::elsewhere(&node, req));
    }
    let mut last = None;
    for _attempt in 0..2 {
        let mode = shared.registry.room_mode(&key).await.unwrap_or(Mode::Rtc);
        input.mode = mode;
        input.role = Some(match (direction, mode) {
            (Direction::Egress, Mode::Live) => Role::Audience,
            _ => Role::Anchor,
        });
        let (tx, rx) = crate::link::link();
        match shared.registry.join(key.clone(), input.clone(), tx).await {
            Ok((joined, member)) => return Ok((joined.decoded(), member, rx)),
            Err(e) if e.extra_code == Some(extra::BAD_SCENE_OR_ROLE) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .unwrap_or_else(|| RtcError::new(ErrorCode::JoinRoomFailed, "join failed"))
        .into())
}

async fn leave(member: &Member) {
    let _ = member.request(ClientMessage::Leave).await;
}

/// The media request after the join; on failure the member leaves again.
async fn negotiate(
    direction: Direction,
    q: &EndpointQuery,
    joined: &rtcroom_protocol::signal::JoinResult,
    member: &Member,
    offer: String,
) -> Result<String, Refusal> {
    let msg = match direction {
        Direction::Ingest => {
            let (has_audio, has_video) = offer_sends(&offer);
            ClientMessage::Publish(PublishRequest {
                stream_type: StreamType::Main,
                has_audio,
                has_video,
                sdp: Some(offer),
                layers: Vec::new(),
            })
        }
        Direction::Egress => {
            let Some(publisher) = &q.publisher else {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    RtcError::invalid_parameter(
                        Some(extra::PARAM_REQUIRED),
                        "publisher=<userId> is required",
                    ),
                ));
            };
            let publisher = UserId::new(publisher)?;
            let stream_type = match q.stream.as_deref() {
                None | Some("main") => StreamType::Main,
                Some("auxiliary") => StreamType::Auxiliary,
                Some(other) => {
                    return Err(bad(format!(
                        "stream must be main or auxiliary, got {:?}",
                        truncate(other)
                    )));
                }
            };
            let Some(stream) = joined
                .streams
                .iter()
                .find(|s| s.user_id == publisher && s.stream_type == stream_type)
            else {
                return Err(RtcError::new(
                    ErrorCode::RemoteStreamNotExist,
                    format!("{publisher} does not publish a {stream_type:?} stream in this room"),
                )
                .into());
            };
            let (audio, video) = offer_receives(&offer);
            ClientMessage::Subscribe(SubscribeRequest {
                user_id: publisher,
                stream_type,
                audio: audio && stream.has_audio,
                video: video && stream.has_video,
                sdp: Some(offer),
                video_type: None,
            })
        }
    };
    match member.request(msg).await {
        Ok(Some(ReplyData::Answer { sdp })) => Ok(sdp),
        Ok(_) => Err(RtcError::new(ErrorCode::Unknown, "the room answered without an SDP").into()),
        Err(e) => Err(e.into()),
    }
}

async fn post(
    direction: Direction,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    shared: web::Data<Arc<SessionShared>>,
    table: web::Data<Arc<WhipResources>>,
) -> HttpResponse {
    let Ok(origin) = origin(&req, &shared) else {
        return forbidden_origin();
    };
    match post_inner(direction, &req, &path, body, &shared, &table).await {
        Ok((id, etag, answer)) => {
            let mut b = HttpResponse::Created();
            cors(&mut b, &origin);
            b.insert_header((
                header::LOCATION,
                format!("/{}/resource/{id}", direction.prefix()),
            ))
            .insert_header((header::ETAG, format!("\"{etag}\"")))
            .content_type("application/sdp")
            .body(answer)
        }
        Err(r) => {
            tracing::debug!(
                kind = direction.prefix(),
                status = r.status.as_u16(),
                error = %r.error,
                "whip/whep request refused"
            );
            refuse(r, &origin)
        }
    }
}

async fn post_inner(
    direction: Direction,
    req: &HttpRequest,
    path: &(String, String),
    body: web::Bytes,
    shared: &SessionShared,
    table: &Arc<WhipResources>,
) -> Result<(String, String, String), Refusal> {
    if !is_sdp(req) {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RtcError::invalid_parameter(
                Some(extra::PARAM_TYPE),
                "the body must be an SDP offer with Content-Type: application/sdp",
            ),
        ));
    }
    let token = bearer(req)?;
    let q = web::Query::<EndpointQuery>::from_query(req.query_string())
        .map_err(|e| bad(format!("bad query: {e}")))?
        .into_inner();
    let j = join_request(path, &q, token)?;
    let offer = String::from_utf8(body.to_vec()).map_err(|_| bad("the SDP is not UTF-8"))?;
    if !offer.trim_start().starts_with("v=0") {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            RtcError::invalid_parameter(Some(extra::PARAM_TYPE), "the body is not an SDP offer"),
        ));
    }
    let Some(reservation) = table.reserve() else {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            RtcError::new(
                ErrorCode::JoinRoomFailed,
                "too many WHIP/WHEP sessions on this server (limits.max_whip_resources)",
            ),
        ));
    };
    let (joined, member, rx) = join(shared, &j, direction, req).await?;
    let answer = match negotiate(direction, &q, &joined, &member, offer).await {
        Ok(a) => a,
        Err(e) => {
            leave(&member).await;
            return Err(e);
        }
    };
    let etag = random_token();
    let id = table.insert(reservation, Resource { direction, member });
    drive(table.clone(), id.clone(), rx);
    Ok((id, etag, answer))
}

/// `POST /whip/{sdkAppId}/{userId}`.
pub async fn whip_post(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    shared: web::Data<Arc<SessionShared>>,
    table: web::Data<Arc<WhipResources>>,
) -> HttpResponse {
    post(Direction::Ingest, req, path, body, shared, table).await
}

/// `POST /whep/{sdkAppId}/{userId}`.
pub async fn whep_post(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    shared: web::Data<Arc<SessionShared>>,
    table: web::Data<Arc<WhipResources>>,
) -> HttpResponse {
    post(Direction::Egress, req, path, body, shared, table).await
}

/// `OPTIONS` on an endpoint.
pub async fn endpoint_options(
    req: HttpRequest,
    shared: web::Data<Arc<SessionShared>>,
) -> HttpResponse {
    preflight(&req, &shared, ENDPOINT_METHODS)
}

/// Any other method on an endpoint.
pub async fn endpoint_other(req: HttpRequest) -> HttpResponse {
    method_not_allowed(&req, ENDPOINT_METHODS)
}

fn method_not_allowed(req: &HttpRequest, allow: &'static str) -> HttpResponse {
    let mut b = HttpResponse::MethodNotAllowed();
    b.insert_header((header::ALLOW, allow));
    b.json(serde_json::json!({ "error": RtcError::new(
        ErrorCode::NotSupported,
        format!("{} is not supported here; allowed: {allow}", req.method()),
    )}))
}

// ---- resources -------------------------------------------------------------------------------

fn resource_direction(req: &HttpRequest) -> Direction {
    if req.path().starts_with("/whep/") {
        Direction::Egress
    } else {
        Direction::Ingest
    }
}

fn not_found(id: &str, origin: &Option<String>) -> HttpResponse {
    refuse(
        Refusal::new(
            StatusCode::NOT_FOUND,
            RtcError::invalid_operation(
                Some(extra::NOT_ENTERED_ROOM),
                format!("no session {:?} (ended, or never created)", truncate(id)),
            ),
        ),
        origin,
    )
}

/// `DELETE /whip/resource/{id}` (and `/whep/`): leave the room.
pub async fn resource_delete(
    req: HttpRequest,
    id: web::Path<String>,
    shared: web::Data<Arc<SessionShared>>,
    table: web::Data<Arc<WhipResources>>,
) -> HttpResponse {
    let Ok(origin) = origin(&req, &shared) else {
        return forbidden_origin();
    };
    let direction = resource_direction(&req);
    if table.direction_of(&id) != Some(direction) {
        return not_found(&id, &origin);
    }
    let Some(r) = table.remove(&id) else {
        return not_found(&id, &origin);
    };
    leave(&r.member).await;
    let mut b = HttpResponse::Ok();
    cors(&mut b, &origin);
    b.finish()
}

/// `PATCH /whip/resource/{id}`: trickle ICE and ICE restart are not supported (RFC 9725
/// §4.3.1 allows 405 for that).
pub async fn resource_patch(
    req: HttpRequest,
    id: web::Path<String>,
    shared: web::Data<Arc<SessionShared>>,
    table: web::Data<Arc<WhipResources>>,
) -> HttpResponse {
    let Ok(origin) = origin(&req, &shared) else {
        return forbidden_origin();
    };
    if table.direction_of(&id) != Some(resource_direction(&req)) {
        return not_found(&id, &origin);
    }
    let mut r = method_not_allowed(&req, RESOURCE_METHODS);
    if let Some(o) = origin
        .as_deref()
        .and_then(|o| HeaderValue::from_str(o).ok())
    {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    r
}

/// `OPTIONS` on a resource.
pub async fn resource_options(
    req: HttpRequest,
    shared: web::Data<Arc<SessionShared>>,
) -> HttpResponse {
    preflight(&req, &shared, RESOURCE_METHODS)
}

/// Any other method on a resource.
pub async fn resource_other(req: HttpRequest) -> HttpResponse {
    method_not_allowed(&req, RESOURCE_METHODS)
}

/// Register the WHIP and WHEP routes (resource paths first: `/whip/resource/x` would match
/// the endpoint pattern too).
pub fn configure(cfg: &mut web::ServiceConfig) {
    for prefix in ["whip", "whep"] {
        cfg.service(
            web::resource(format!("/{prefix}/resource/{{id}}"))
                .route(web::delete().to(resource_delete))
                .route(web::method(Method::PATCH).to(resource_patch))
                .route(web::method(Method::OPTIONS).to(resource_options))
                .default_service(web::to(resource_other)),
        );
    }
    cfg.service(
        web::resource("/whip/{app}/{user}")
            .route(web::post().to(whip_post))
            .route(web::method(Method::OPTIONS).to(endpoint_options))
            .default_service(web::to(endpoint_other)),
    );
    cfg.service(
        web::resource("/whep/{app}/{user}")
            .route(web::post().to(whep_post))
            .route(web::method(Method::OPTIONS).to(endpoint_options))
            .default_service(web::to(endpoint_other)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses() {
        let e = |c, x: Option<i32>| match x {
            Some(x) => RtcError::with_extra(c, x, ""),
            None => RtcError::new(c, ""),
        };
        assert_eq!(
            status_of(&e(
                ErrorCode::SignalChannelSetupFailed,
                Some(extra::SIG_KEY_MISMATCH)
            )),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status_of(&e(
                ErrorCode::SignalChannelSetupFailed,
                Some(extra::SDKAPPID_NOT_FOUND)
            )),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(&e(ErrorCode::InvalidParameter, Some(extra::ROOM_ID_RANGE))),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(&e(ErrorCode::RemoteStreamNotExist, None)),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(&e(ErrorCode::JoinRoomFailed, Some(extra::ROOM_FULL))),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_of(&e(
                ErrorCode::JoinRoomFailed,
                Some(extra::PRIVILEGE_FLAG_ERROR)
            )),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status_of(&e(ErrorCode::Unknown, None)),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn offers_say_what_they_send_and_receive() {
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
                     a=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
                     a=recvonly\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(offer_sends(offer), (true, false));
        assert_eq!(offer_receives(offer), (false, true));
        let rejected = "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n";
        assert_eq!(offer_sends(rejected), (false, false));
    }

    #[test]
    fn the_table_is_bounded_and_reservations_are_given_back() {
        let t = WhipResources::new(2);
        let a = t.reserve().expect("first");
        let b = t.reserve().expect("second");
        assert!(t.reserve().is_none(), "two places only");
        drop(a);
        let c = t.reserve().expect("a dropped reservation frees its place");
        drop((b, c));
        assert_eq!(t.lock().reserved, 0);
        assert!(t.is_empty());
    }

    #[test]
    fn tokens_are_128_bit_hex_and_differ() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
