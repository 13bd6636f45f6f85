//! Admission: checking a join's credentials (UserSig, PrivateMapKey) and ids, whatever the
//! link that carries it (signalling WebSocket, WHIP, WHEP).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rtcroom_protocol::error::extra;
use rtcroom_protocol::signal::JoinRequest;
use rtcroom_protocol::usersig::{verify_private_map_key, verify_user_sig};
use rtcroom_protocol::{ErrorCode, RtcError};

use crate::config::ServerConfig;
use crate::link::LinkKind;
use crate::room::{JoinInput, RoomKey, SessionId};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A new member id (process-wide, never reused).
pub fn next_session_id() -> SessionId {
    NEXT_SESSION.fetch_add(1, Ordering::Relaxed)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Check a join's credentials and ids for member `session` arriving over a `kind` link; on
/// success, the room and what the room needs.
pub fn check_join(
    config: &ServerConfig,
    j: &JoinRequest,
    session: SessionId,
    kind: LinkKind,
) -> Result<(RoomKey, JoinInput), RtcError> {
    let app = config.app(j.sdk_app_id).ok_or_else(|| {
        RtcError::with_extra(
            ErrorCode::SignalChannelSetupFailed,
            extra::SDKAPPID_NOT_FOUND,
            format!("sdkAppId {} is not configured on this server", j.sdk_app_id),
        )
    })?;
    let room_id = j.room()?;
    let now = unix_now();
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
            session,
            user_id: j.user_id.clone(),
            mode: j.mode,
            role: j.role,
            privileges,
            kind,
        },
    ))
}
